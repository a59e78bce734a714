//! The reference app: `cargo run -p reference-app`. The binary is a thin `main`; this library
//! holds the app so the integration tests can drive the same router.
//!
//! With no configuration it starts a throwaway PostgreSQL (or uses `DATABASE_URL`), migrates it
//! as the owner role, serves as the least-privilege runtime role, generates a development
//! certificate and keys into `.reference-app/` (0600 files, reused), seeds two demo workspaces
//! and a staff member, and serves HTTPS. See `docs/reference-app.md`.

mod agent;
mod checkpoints;
pub mod config;
mod devdata;
mod notes;
mod redirect;
mod schema;
mod seed;
mod state;
mod tls;
mod web;

use secrecy::ExposeSecret;
use std::sync::{Arc, OnceLock};

use audit_log::scrub::{PseudonymKey, ScrubPolicy, Scrubber};
use audit_log::{AuditLog, CheckpointSigner};
use egress_guard::{EgressPolicy, GuardedClient};
use field_crypto::{BlindIndexKey, KeyMaterial, Keyring};
use magic_auth::totp::{TotpConfig, TotpService};
use magic_auth::{LinkConfig, MagicLinks, SessionConfig, SessionStore};
use rls_guard::TenantPool;
use secrecy::{SecretBox, SecretString};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tenant_scope::CrossTenantAuthority;
use tool_sandbox::model::{Model, OpenAiCompatible};
use tool_sandbox::{ApprovalKey, ApprovalPolicy, Gate};
use zeroize::Zeroizing;

pub use crate::config::Config;
use crate::config::ModelSource;
use crate::state::{AppMailer, AppState, ConsoleOutbox, Directory, Services, Visits};

/// Any start-up failure.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The app's keys: from the development data directory, or (production) derived from the
/// key-encryption key in the environment.
#[derive(Clone)]
struct Keys {
    field: Zeroizing<[u8; 32]>,
    blind: Zeroizing<[u8; 32]>,
    pseudonym: Zeroizing<[u8; 32]>,
    checkpoint: Zeroizing<[u8; 32]>,
    approval: Zeroizing<[u8; 32]>,
    session: Zeroizing<[u8; 32]>,
}

impl Keys {
    fn development(dev: &devdata::DevData) -> Self {
        Self {
            field: dev.field_key.clone(),
            blind: dev.blind_key.clone(),
            pseudonym: dev.pseudonym_key.clone(),
            checkpoint: dev.checkpoint_key.clone(),
            approval: dev.approval_key.clone(),
            session: dev.session_key.clone(),
        }
    }

    /// One independent key per purpose, each HKDF-Expand(SHA-256) of the key-encryption key
    /// with the purpose as its info (a single output block): the same KEK gives the same keys
    /// on every start and every replica, and no derived key reveals another or the KEK.
    fn derive(kek: &[u8; 32]) -> Self {
        use hmac::{Hmac, Mac};
        let expand = |purpose: &str| {
            let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(kek)
                .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
            mac.update(b"tenantguard reference-app v1 ");
            mac.update(purpose.as_bytes());
            mac.update(&[1]);
            let mut key = Zeroizing::new([0u8; 32]);
            key.copy_from_slice(&mac.finalize().into_bytes());
            key
        };
        Self {
            field: expand("field-crypto kek"),
            blind: expand("blind index"),
            pseudonym: expand("audit pseudonym"),
            checkpoint: expand("audit checkpoint"),
            approval: expand("tool approval"),
            session: expand("session rows"),
        }
    }
}

/// Where the app's data lives.
#[derive(Clone)]
enum Database {
    /// A throwaway database from testkit (development).
    Throwaway(Arc<testkit::TestDb>),
    /// The configured database (production): the runtime role's connection.
    External(Box<PgConnectOptions>),
}

impl Database {
    /// A pool of the runtime role's connections.
    async fn runtime_pool(&self, max: u32) -> Result<sqlx::PgPool, BoxError> {
        match self {
            Self::Throwaway(db) => Ok(connect(db.options(testkit::Role::Runtime), max).await?),
            Self::External(options) => Ok(connect((**options).clone(), max).await?),
        }
    }
}

/// The settings of every pool the app makes: at most `max` connections, a 10 s acquire timeout,
/// and no ping before each acquire. sqlx already pings every connection as it goes back to the
/// pool (and closes it when that fails), so the ping before each acquire only catches a
/// connection that died while idle — at the price of a round trip on every request. Without
/// it, such a connection fails its one request (503, as for any outage) and is discarded.
#[doc(hidden)]
#[must_use]
pub fn pool_options(max: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(std::time::Duration::from_secs(10))
        .test_before_acquire(false)
}

/// A pool of `max` connections made with `options` (production: verified TLS).
async fn connect(options: PgConnectOptions, max: u32) -> Result<sqlx::PgPool, sqlx::Error> {
    pool_options(max).connect_with(options).await
}

/// A started app without listeners: what [`run`] serves, and what the integration tests drive.
pub struct App {
    /// The whole router (serve it over TLS, or call it in-process).
    pub router: axum::Router,
    /// The configuration it runs with.
    pub config: Config,
    routes: authz_matrix::RouteRecord,
    services: Arc<Services>,
    tls: Arc<rustls::ServerConfig>,
    keys: Keys,
    db: Database,
    runtime_role: String,
    /// Chains queued audit events while the app lives (stopped when it is dropped).
    _sequencer: audit_log::SequencerHandle,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl App {
    /// Every message in the development outbox, oldest first: (recipient, subject). Empty in
    /// production.
    #[must_use]
    #[doc(hidden)]
    pub fn outbox_messages(&self) -> Vec<(String, String)> {
        self.services
            .mailer
            .outbox()
            .into_iter()
            .flat_map(|m| m.messages())
            .map(|m| (m.to.as_str().to_owned(), m.subject))
            .collect()
    }

    /// The development outbox's sign-in links, oldest first.
    #[must_use]
    pub fn outbox_links(&self) -> Vec<String> {
        self.services
            .mailer
            .outbox()
            .into_iter()
            .flat_map(|m| m.messages())
            .filter_map(|m| {
                m.body
                    .expose_secret()
                    .lines()
                    .find(|l| l.starts_with("https://"))
                    .map(str::to_owned)
            })
            .collect()
    }

    /// The throwaway database of the development profile (tests use its admin and owner roles
    /// to check isolation from outside); `None` in production.
    #[must_use]
    pub fn database(&self) -> Option<&testkit::TestDb> {
        match &self.db {
            Database::Throwaway(db) => Some(db),
            Database::External(_) => None,
        }
    }

    /// Serves the app over TLS on `listener` (its address must match `config.base_url`) until
    /// the future is dropped.
    pub async fn serve(&self, listener: tokio::net::TcpListener) {
        tls::serve_https(listener, self.tls.clone(), self.router.clone()).await;
    }

    /// A second instance of the app on the same database: its own pools, session store, rate
    /// limiters and gate (nothing shared in memory but the process-wide cross-tenant authority),
    /// as a second replica behind a load balancer would be.
    ///
    /// # Errors
    /// As [`start`].
    pub async fn second_instance(&self) -> Result<Self, BoxError> {
        let runtime = self.db.runtime_pool(8).await?;
        let pool = TenantPool::new(runtime.clone())
            .await?
            .with_session_liveness(magic_auth::session_liveness())
            .await?
            .with_read_connections(3)?
            .with_transaction_connections(4)?;
        let services = build(
            &self.config,
            pool,
            self.services.checkpointer.clone(),
            runtime,
            &self.keys,
            Some(self.services.cross_tenant.clone()),
        )?;
        let (router, routes) = web::router(AppState(services.clone()))?;
        Ok(Self {
            router,
            config: self.config.clone(),
            routes,
            services,
            tls: self.tls.clone(),
            keys: self.keys.clone(),
            db: self.db.clone(),
            runtime_role: self.runtime_role.clone(),
            // Every replica runs a sequencer; they take turns under the database's lock.
            _sequencer: audit_log::Sequencer::new(self.services.checkpointer.pool().clone())
                .spawn(),
        })
    }

    /// The record of every route the router serves (its paths, recorded as the router was
    /// built): [`served`](authz_matrix::RouteRecord::served) probes which methods each path
    /// answers, and the authorization matrix checks the table against it both ways.
    #[must_use]
    pub fn routes(&self) -> &authz_matrix::RouteRecord {
        &self.routes
    }

    /// A session for a seeded account, made directly in the session store (for tests that
    /// need many signed-in clients, such as the authorization matrix): the `Cookie` header
    /// value. `two_factors` makes it `aal2`.
    ///
    /// # Errors
    /// When the workspace or the account does not exist, or the store fails.
    #[doc(hidden)]
    pub async fn mint_session(
        &self,
        workspace: &str,
        email: &str,
        two_factors: bool,
    ) -> Result<String, BoxError> {
        self.mint_aged_session(workspace, email, two_factors, std::time::Duration::ZERO)
            .await
    }

    /// [`mint_session`](Self::mint_session) for a session made `age` ago: its second factor
    /// that old (tests of the step-up window).
    ///
    /// # Errors
    /// As `mint_session`.
    #[doc(hidden)]
    pub async fn mint_aged_session(
        &self,
        workspace: &str,
        email: &str,
        two_factors: bool,
        age: std::time::Duration,
    ) -> Result<String, BoxError> {
        use magic_auth::AccountDirectory;
        let tenant = self
            .services
            .tenant_by_slug(workspace)
            .await?
            .ok_or("no such workspace")?;
        let directory = Directory {
            pool: self.services.pool.clone(),
        };
        let address = magic_auth::EmailAddress::parse(email)?;
        let account = directory
            .find(tenant.id, &address)
            .await?
            .ok_or("no such account")?;
        let new = magic_auth::NewSession::new(
            account.user,
            account.kind,
            if two_factors {
                magic_auth::Assurance::Aal2
            } else {
                magic_auth::Assurance::Aal1
            },
        );
        let (session, token) = self
            .services
            .sessions
            .create_aged(tenant.id, &new, age)
            .await?;
        let cookie = magic_auth::session_cookie(&token, &session);
        Ok(cookie
            .to_str()?
            .split(';')
            .next()
            .unwrap_or_default()
            .to_owned())
    }

    /// The load benchmark's baseline, **never to be served**: `GET /baseline/notes?tenant=<id>`
    /// answers the same JSON as `GET /api/notes` from the same query and decryption, but with
    /// no session, no tenant scope, no row-level security and no transaction, on `pool`
    /// (a superuser's). It exists so `examples/load-bench` can measure what the guards cost.
    #[doc(hidden)]
    pub fn unguarded_baseline(&self, pool: sqlx::PgPool) -> axum::Router {
        web::unguarded_baseline(self.services.clone(), pool)
    }

    /// The load benchmark's write baseline, **never to be served**: the whole app plus
    /// `POST /baseline/members/{user}/role`, the JSON role change behind the same layers and
    /// checks as `POST /api/admin/members/{user}/role` but without `AuditLayer` and without its
    /// audit record. It exists so `examples/load-bench` can measure what auditing costs.
    ///
    /// # Errors
    /// When the router cannot be built (as for the app itself).
    #[doc(hidden)]
    pub fn unaudited_write_baseline(&self) -> Result<axum::Router, BoxError> {
        Ok(web::router_with(AppState(self.services.clone()), true)?.0)
    }

    /// Signs a checkpoint of every tenant's audit chain now (the serving app does so every few
    /// minutes); how many were signed.
    ///
    /// # Errors
    /// When the directory, the audit log or the checkpoint file fails.
    #[doc(hidden)]
    pub async fn sign_checkpoints(&self) -> Result<usize, BoxError> {
        Ok(checkpoints::sign_all(&self.services).await?)
    }

    /// Chains every audit event queued so far, now (tests read the chain right after a
    /// request; the running sequencer would chain them within milliseconds); how many.
    ///
    /// # Errors
    /// When the sequencer's call fails.
    #[doc(hidden)]
    pub async fn sequence_audit(&self) -> Result<u64, BoxError> {
        let pool = self.services.checkpointer.pool().clone();
        Ok(audit_log::Sequencer::new(pool).drain().await?)
    }

    /// The runtime role the app serves as.
    #[must_use]
    pub fn runtime_role(&self) -> &str {
        &self.runtime_role
    }
}

/// Starts the app: keys and certificate, database, migrations, services, seed data.
///
/// Development (no `--production`): a throwaway database and the development data directory.
/// Production: the certificate given, keys derived from `REFERENCE_APP_KEK`, migrations over
/// the owner role's verified-TLS connection, the runtime role's verified-TLS connection (refused
/// when it is a superuser, can bypass RLS or owns the tables), and the SMTP relay.
///
/// # Errors
/// Any start-up failure (data directory, certificate, database, a refused runtime role).
pub async fn start(mut config: Config) -> Result<App, BoxError> {
    let (keys, tls, db, runtime, owner, checkpointer) = match &config.production {
        None => {
            let dev = devdata::DevData::load_or_create(&config.data_dir, "localhost")?;
            tracing::info!(dir = %config.data_dir.display(), "development keys and certificate ready");
            // A throwaway database (or DATABASE_URL), migrated as the owner role.
            let migrations = schema::migrations(schema::RUNTIME_ROLE, testkit::CHECKPOINTER_ROLE)?;
            let db =
                testkit::try_fresh_database(&testkit::Template::new("reference_app", migrations))
                    .await?;
            let owner = connect(db.options(testkit::Role::Owner), 2).await?;
            let runtime = connect(db.options(testkit::Role::Runtime), 16).await?;
            let checkpointer = connect(db.options(testkit::Role::Checkpointer), 4).await?;
            (
                Keys::development(&dev),
                tls::server_config(&dev.tls_cert_pem, &dev.tls_key_pem)?,
                Database::Throwaway(Arc::new(db)),
                runtime,
                owner,
                checkpointer,
            )
        }
        Some(production) => {
            let tls = tls::production_config(&config)?;
            // Both connections (verified TLS) and the runtime role's attributes are checked
            // before anything is migrated.
            let runtime_options: PgConnectOptions = production.database_url.parse()?;
            let runtime = connect(runtime_options.clone(), 16)
                .await
                .map_err(|e| format!("the runtime role's database connection failed: {e}"))?;
            let owner = connect(production.owner_database_url.parse()?, 2)
                .await
                .map_err(|e| format!("the owner role's database connection failed: {e}"))?;
            let checkpointer_options: PgConnectOptions =
                production.checkpointer_database_url.parse()?;
            let checkpointer = connect(checkpointer_options.clone(), 4)
                .await
                .map_err(|e| format!("the checkpointer role's database connection failed: {e}"))?;
            // The role's own attributes before migrating; objects and privileges in the
            // database (which the migrations set) are checked by TenantPool::new afterwards.
            match rls_guard::verify_runtime_role(&mut *runtime.acquire().await?).await {
                Err(rls_guard::RlsError::UnsafeRuntimeRole { role, problems })
                    if problems.iter().any(rls_guard::RoleProblem::is_attribute) =>
                {
                    let problems = problems
                        .into_iter()
                        .filter(rls_guard::RoleProblem::is_attribute)
                        .collect();
                    return Err(rls_guard::RlsError::UnsafeRuntimeRole { role, problems }.into());
                }
                Ok(()) | Err(rls_guard::RlsError::UnsafeRuntimeRole { .. }) => {}
                Err(other) => return Err(other.into()),
            }
            schema::migrate(
                &owner,
                runtime_options.get_username(),
                checkpointer_options.get_username(),
            )
            .await?;
            (
                Keys::derive(&production.kek),
                tls,
                Database::External(Box::new(runtime_options)),
                runtime,
                owner,
                checkpointer,
            )
        }
    };
    let runtime_role: (String,) = sqlx::query_as("SELECT current_user::text")
        .fetch_one(&runtime)
        .await?;
    // Refuses a runtime role that is superuser, BYPASSRLS, or owns tenant tables.
    // Every statement made for a signed-in request asks the database whether its session is
    // still live, in the statement that binds the tenant. Of the runtime role's 16
    // connections, 6 are kept for bound reads (one round trip each, no release check) and 8
    // for transactions (no release check after the commit; the audit records of refused
    // requests are transactions too, so they share these with the writes); the other 2 serve
    // the few queries made on the raw pool.
    let pool = TenantPool::new(runtime.clone())
        .await?
        .with_session_liveness(magic_auth::session_liveness())
        .await?
        .with_read_connections(6)?
        .with_transaction_connections(8)?;
    // The same role chains queued audit events (it may only call `audit.sequence`, see
    // `schema::migrations`), polling the queue: one connection sequences, the checkpoint job
    // uses the rest.
    let sequencer = audit_log::Sequencer::new(checkpointer.clone()).spawn();
    // The checkpointer passes the same start-up check as the runtime role.
    let checkpointer = TenantPool::new(checkpointer).await?;
    let services = build(&config, pool, checkpointer, runtime, &keys, None)?;
    // Development always seeds; production only with --seed-demo.
    if config.production.as_ref().is_none_or(|p| p.seed_demo) {
        seed::seed(&owner, &services).await?;
    }
    drop(owner);
    // The owner's credentials were for migrations: the serving process keeps none.
    if let Some(production) = &mut config.production {
        production.owner_database_url = Zeroizing::new(String::new());
    }

    let (router, routes) = web::router(AppState(services.clone()))?;
    Ok(App {
        router,
        routes,
        config,
        services,
        tls,
        keys,
        db,
        runtime_role: runtime_role.0,
        _sequencer: sequencer,
    })
}

/// Starts the app and serves it: HTTPS, and plain HTTP that redirects to it, until Ctrl-C.
///
/// # Errors
/// As [`start`], and when a listener cannot be bound.
pub async fn run(config: Config) -> Result<(), BoxError> {
    let app = start(config).await?;
    let https = tls::bind(app.config.https, "--https").await?;
    let http = tls::bind(app.config.http, "--http").await?;
    tokio::spawn(axum::serve(http, tls::redirect_app(app.config.base_url.clone())).into_future());
    banner(&app.config);
    // Signed checkpoints of every tenant's audit chain, in the database and in the data
    // directory, every few minutes while serving.
    let services = app.services.clone();
    tokio::spawn(async move {
        loop {
            match checkpoints::sign_all(&services).await {
                Ok(n) => tracing::debug!(signed = n, "audit checkpoints"),
                Err(error) => tracing::warn!(%error, "audit checkpoints could not be signed"),
            }
            tokio::time::sleep(checkpoints::EVERY).await;
        }
    });
    tokio::select! {
        () = tls::serve_https(https, app.tls.clone(), app.router.clone()) => {}
        _ = tokio::signal::ctrl_c() => tracing::info!("shutting down"),
    }
    drop(app);
    Ok(())
}

/// The one redirect check (exposed for tests): `raw` read relative to `base_url` as a browser
/// reads a `Location`, answered as the normalised same-origin path and query it may send a
/// browser to, or `None` when it is refused. See `docs/reference-app.md`.
#[doc(hidden)]
#[must_use]
pub fn redirect_target(raw: &str, base_url: &str) -> Option<String> {
    redirect::LocalTarget::parse(raw, base_url)
        .ok()
        .map(|t| t.as_str().to_owned())
}

/// The redirecting plain-HTTP app (exposed for tests).
pub fn redirect_app(base_url: String) -> axum::Router {
    tls::redirect_app(base_url)
}

/// The services, with the mailer of the profile: a development outbox (each instance its own),
/// or the SMTP relay over TLS.
fn build(
    config: &Config,
    pool: TenantPool,
    checkpointer: TenantPool,
    raw: sqlx::PgPool,
    keys: &Keys,
    cross_tenant: Option<Arc<CrossTenantAuthority<AuditLog>>>,
) -> Result<Arc<Services>, BoxError> {
    let mailer = match &config.production {
        None => AppMailer::Development(ConsoleOutbox::default()),
        Some(production) => {
            let smtp = &production.smtp;
            AppMailer::Smtp(Box::new(magic_auth::mailer::SmtpMailer::tls(
                &smtp.host,
                smtp.port,
                smtp.credentials.clone(),
                &smtp.from,
            )?))
        }
    };

    let mut keyring = Keyring::new();
    keyring.add_key(1, &KeyMaterial::from_bytes(Box::new(*keys.field)))?;
    keyring.promote(1)?;
    let keyring = Arc::new(keyring);
    let scrubber = Scrubber::new(
        ScrubPolicy::new(),
        vec![PseudonymKey::new(1, Box::new(*keys.pseudonym))],
    )?;
    let audit = AuditLog::new(pool.clone(), scrubber);
    let checkpoints = CheckpointSigner::from_secret(
        if config.production.is_some() {
            "reference-app"
        } else {
            "reference-app-dev"
        },
        &SecretBox::new(Box::new(*keys.checkpoint)),
    )?;
    let events: Arc<dyn magic_auth::AuthEvents> = Arc::new(audit.clone());
    // The session layer answers from a per-instance cache that every instance's revocations
    // clear through LISTEN/NOTIFY (fails closed: nothing is served while the listener is not
    // listening, and no entry is older than five seconds); data statements still ask the
    // database (the pool's session liveness check).
    let sessions = SessionStore::new(
        pool.clone(),
        SessionConfig::default(),
        Box::new(*keys.session),
    )?
    .with_events(events.clone())
    .with_cache(magic_auth::SessionCacheConfig::default())?;
    let mailer = Arc::new(mailer);
    let links = Arc::new(
        MagicLinks::new(
            pool.clone(),
            Arc::new(Directory { pool: pool.clone() }),
            mailer.clone(),
            LinkConfig::new(&config.base_url)?,
            Box::new(*keys.session),
        )?
        .with_events(events.clone()),
    );
    let totp = Arc::new(
        TotpService::new(
            pool.clone(),
            keyring.clone(),
            TotpConfig::new(web::TOTP_ISSUER),
        )?
        .with_events(events),
    );
    // The assistant's network tools reach only public hosts on 80/443.
    let egress = GuardedClient::builder(EgressPolicy::new("assistant"))
        .caller("assistant")
        .body_limit(1024 * 1024)
        .build()?;
    let cell: agent::ServicesCell = Arc::new(OnceLock::new());
    let registry = Arc::new(agent::registry(&cell, &mailer)?);
    let gate = Gate::builder(
        registry,
        pool.clone(),
        audit.clone(),
        ApprovalKey::from_bytes(Box::new(*keys.approval))?,
    )
    .approvals(ApprovalPolicy::default())
    .egress(egress)
    .build()?;
    let model: Arc<dyn Model> = match &config.model {
        ModelSource::Scripted => Arc::new(agent::DemoModel),
        ModelSource::OpenAi { base_url, model } => {
            let mut client = OpenAiCompatible::new(base_url, model)?;
            if let Ok(key) = std::env::var("REFERENCE_APP_MODEL_API_KEY") {
                client = client.api_key(SecretString::from(key));
            }
            Arc::new(client)
        }
    };
    let services = Arc::new(Services {
        visits: Visits::default(),
        pool,
        raw,
        sessions,
        links,
        totp,
        keyring,
        blind: BlindIndexKey::new(&KeyMaterial::from_bytes(Box::new(*keys.blind)))?,
        audit: audit.clone(),
        checkpoints,
        checkpointer,
        checkpoint_file: config.data_dir.join(checkpoints::FILE),
        gate,
        mailer,
        // One authority per process (tenant-scope refuses a second): a second instance in the
        // same process shares it.
        cross_tenant: match cross_tenant {
            Some(shared) => shared,
            None => Arc::new(CrossTenantAuthority::install(audit)?),
        },
        model,
        base_url: config.base_url.clone(),
        development: config.production.is_none(),
    });
    let _ = cell.set(Arc::downgrade(&services));
    Ok(services)
}

fn banner(config: &Config) {
    if config.production.is_some() {
        tracing::info!(url = %config.base_url, http = %config.http, "serving (production)");
        return;
    }
    #[allow(clippy::print_stdout)]
    {
        println!(
            "\n  TenantGuard reference app is running at {url}\n\
             \n  Sign in: open {url}, pick a workspace and enter a demo address\n\
             \x20   alice@acme.test (Acme admin), bob@acme.test, carol@globex.test,\n\
             \x20   or sam@ops.test in \"Operators\" for the staff console.\n\
             \x20 The sign-in link is printed here and kept at {url}/dev/outbox.\n\
             \x20 The certificate is self-signed ({dir}/tls-cert.pem): accept it in your browser.\n\
             \x20 Plain HTTP on {http} redirects to HTTPS. Ctrl-C stops the app.\n",
            url = config.base_url,
            dir = config.data_dir.display(),
            http = config.http,
        );
    }
}
