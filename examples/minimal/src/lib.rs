//! The smallest service wired from tenantguard's crates, the one `docs/wiring.md` walks through:
//! notes that belong to a workspace (tenant), with row-level security under every statement,
//! the ready-made sign-in routes (magic link + TOTP), sessions in the database, and an audited
//! admin action behind a fresh step-up.
//!
//! [`migrations`] is step 1 of the page, [`app`] steps 2 to 4 (and the router the authorization
//! matrix checks), the handlers step 5. `members.rs` and `notes.rs` are what a service has of its
//! own: accounts, workspaces and its handlers; `keys.rs` the keys it is given.

// The root README's code compiles (as a doctest of this crate, which is never published).
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct RootReadme;

mod error;
mod keys;
pub mod members;
mod notes;

use std::sync::Arc;
use std::time::Duration;

use audit_log::scrub::{PseudonymKey, ScrubPolicy, Scrubber};
use audit_log::{Action, AuditLayer, AuditLog};
use authz_matrix::{RecordingRouter, RouteRecord};
use axum::extract::FromRef;
use axum::routing::{delete, get};
use field_crypto::{KeyMaterial, Keyring};
use magic_auth::mailer::Mailer;
use magic_auth::routes::{SignInConfig, SignInRoutes};
use magic_auth::totp::{TotpConfig, TotpService};
use magic_auth::{Guard, LinkConfig, MagicLinks, SessionConfig, SessionManagerLayer, SessionStore};
use rls_guard::TenantPool;
use tenant_scope::{ActorResolver, TenantLayer};

pub use error::Error;
pub use keys::Keys;
pub use members::{Members, Workspaces};
use notes::{create_note, delete_note, list_notes, me, show_note};
use tower::ServiceBuilder;

/// How old the last second-factor check may be for the admin action.
pub const STEP_UP_MAX_AGE: Duration = Duration::from_secs(10 * 60);

/// Step 1: the migrations, in order, run once as the owner role. `runtime` is the role the
/// service connects as, `sequencer` the one that chains recorded audit events.
///
/// # Errors
/// When a role name is not a plain lowercase identifier.
pub fn migrations(runtime: &str, sequencer: &str) -> Result<String, Error> {
    Ok([
        rls_guard::schema::SUPPORT_SQL.to_owned(),
        audit_log::schema::schema_sql(runtime)?,
        audit_log::schema::sequencer_sql(sequencer)?,
        magic_auth::schema::schema_sql(runtime)?,
        members::schema_sql(runtime),
        rls_guard::schema::tenant_table_sql("minimal.members")?,
        rls_guard::schema::tenant_table_sql("minimal.notes")?,
    ]
    .join("\n"))
}

/// What the handlers reach through `FromRef`.
#[derive(Clone)]
struct AppState {
    pool: TenantPool,
}

impl FromRef<AppState> for TenantPool {
    fn from_ref(state: &AppState) -> Self {
        state.pool.clone()
    }
}

/// Steps 2 to 4: the pools checked at start-up, the services, and the router with its layers,
/// beside the record of every route it serves (for the authorization matrix, `tests/`).
/// `runtime` connects as the runtime role; links point at `base_url`.
///
/// # Errors
/// When the runtime role could bypass row-level security, the schema differs from the crates',
/// or a configuration value is unusable: the service does not start.
pub async fn app<M: Mailer>(
    runtime: sqlx::PgPool,
    base_url: &str,
    keys: &Keys,
    workspaces: Workspaces,
    mailer: Arc<M>,
) -> Result<(axum::Router, RouteRecord), Error> {
    use secrecy::ExposeSecret;
    // Step 2: refuses a role that could bypass RLS; every statement made for a session asks
    // the database whether that session is still live.
    let pool = TenantPool::new(runtime)
        .await?
        .with_session_liveness(magic_auth::session_liveness())
        .await?;
    // Signs every session and sign-in link row, so rows injected SQL writes are no sign-in.
    let row_key = || Box::new(*keys.session.expose_secret());
    let sessions = SessionStore::new(pool.clone(), SessionConfig::default(), row_key())?;
    let mut keyring = Keyring::new();
    keyring.add_key(
        1,
        &KeyMaterial::from_bytes(Box::new(*keys.field.expose_secret())),
    )?;
    keyring.promote(1)?;
    let totp = TotpService::new(pool.clone(), Arc::new(keyring), TotpConfig::new("Minimal"))?;
    let members = Arc::new(Members::new(pool.clone()));
    let config = LinkConfig::new(base_url)?;
    let links = MagicLinks::new(pool.clone(), members, mailer, config, row_key())?;
    let pseudonyms = vec![PseudonymKey::new(
        1,
        Box::new(*keys.pseudonym.expose_secret()),
    )];
    let audit = AuditLog::new(pool.clone(), Scrubber::new(ScrubPolicy::new(), pseudonyms)?);
    let sign_in = SignInRoutes::new(
        workspaces,
        Arc::new(links),
        sessions.clone(),
        Arc::new(totp),
        SignInConfig::new().after_sign_in("/notes"),
    )?;

    // Step 4: each `ServiceBuilder` lists its layers in the order a request meets them. Every
    // route goes through `RecordingRouter`, which records it for the authorization matrix.
    let admin = RecordingRouter::new()
        .route("/admin/notes/{id}", delete(delete_note))
        .layer(
            ServiceBuilder::new()
                .layer(AuditLayer::new(audit, Action::new("note.deleted")?))
                .layer(Guard::require_step_up(STEP_UP_MAX_AGE)),
        );
    let notes = RecordingRouter::new()
        .route("/me", get(me))
        .route("/notes", get(list_notes).post(create_note))
        .route("/notes/{id}", get(show_note))
        .merge(admin)
        .layer(
            ServiceBuilder::new()
                .layer(Guard::require_two_factors())
                .layer(TenantLayer::new(ActorResolver)),
        );
    // magic-auth's sign-in routes one by one under `/auth`, so the record has them too.
    let mut app = RecordingRouter::new().merge(notes);
    for (path, route) in sign_in.into_routes() {
        app = app.route(&format!("/auth{path}"), route);
    }
    let origin = base_url.trim_end_matches('/');
    Ok(app
        .layer(
            ServiceBuilder::new()
                .layer(SessionManagerLayer::new(sessions))
                .layer(Guard::same_origin(&[origin])),
        )
        .with_state(AppState { pool })
        // The router and the record of its routes: add only layers to the router from here on.
        .into_parts())
}
