//! The per-process test server, its two roles, migrated templates and per-test databases.

use std::collections::HashSet;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection};
use tokio::sync::{Mutex, OnceCell};

use crate::cluster::ADMIN_ROLE;
use crate::{PgCluster, TestkitError, sys};

/// The owner/migrator role: owns the tables it creates, is neither superuser nor BYPASSRLS.
pub const OWNER_ROLE: &str = "testkit_owner";
/// The runtime role: LOGIN, NOSUPERUSER, NOBYPASSRLS, NOINHERIT, owns nothing. Tests connect as
/// this role to prove what the application can and cannot see.
pub const RUNTIME_ROLE: &str = "testkit_runtime";
/// A third least-privilege role for jobs that write what the runtime role may not (an audit
/// log's checkpoints): LOGIN, NOSUPERUSER, NOBYPASSRLS, NOINHERIT, owns nothing, and holds only
/// what the migrations grant it.
pub const CHECKPOINTER_ROLE: &str = "testkit_checkpointer";
/// The password of both roles on an external server (`DATABASE_URL`); unused on throwaway
/// clusters, which trust their private socket.
pub(crate) const ROLE_PASSWORD: &str = "testkit";

enum Backend {
    Throwaway(Box<PgCluster>),
    External(Box<PgConnectOptions>),
}

/// The PostgreSQL server this test process uses: `DATABASE_URL` when set, otherwise a
/// throwaway cluster started on first use and stopped when the process exits.
pub struct TestServer {
    backend: Backend,
}

impl std::fmt::Debug for TestServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.backend {
            Backend::Throwaway(c) => f.debug_tuple("TestServer").field(c).finish(),
            Backend::External(_) => f.write_str("TestServer(DATABASE_URL)"),
        }
    }
}

static SHARED: OnceCell<TestServer> = OnceCell::const_new();
static TEMPLATES: Mutex<Option<HashSet<String>>> = Mutex::const_new(None);
static NEXT_DB: AtomicU64 = AtomicU64::new(0);

extern "C" fn stop_shared_at_exit() {
    let _ = std::panic::catch_unwind(|| {
        if let Some(TestServer {
            backend: Backend::Throwaway(cluster),
        }) = SHARED.get()
        {
            cluster.stop();
        }
    });
}

impl TestServer {
    /// The process's server, started (and its roles created) on first use.
    ///
    /// # Errors
    /// [`TestkitError`] with a message that says how to fix the machine.
    pub async fn shared() -> Result<&'static Self, TestkitError> {
        SHARED.get_or_try_init(Self::start).await
    }

    async fn start() -> Result<Self, TestkitError> {
        let server = match std::env::var("DATABASE_URL") {
            Ok(url) if !url.trim().is_empty() => {
                let options = PgConnectOptions::from_str(&url)
                    .map_err(|e| TestkitError::DatabaseUrl(e.to_string()))?;
                Self {
                    backend: Backend::External(Box::new(options)),
                }
            }
            _ => {
                let cluster = PgCluster::start()?;
                sys::run_at_exit(stop_shared_at_exit);
                Self {
                    backend: Backend::Throwaway(Box::new(cluster)),
                }
            }
        };
        server.create_roles().await?;
        Ok(server)
    }

    /// Connection options for `role` on `database`.
    #[must_use]
    pub fn options(&self, role: Role, database: &str) -> PgConnectOptions {
        let options = match &self.backend {
            Backend::Throwaway(cluster) => cluster.connect_options(ADMIN_ROLE, database),
            Backend::External(admin) => (**admin).clone().database(database),
        };
        let options = match role {
            Role::Admin => options,
            Role::Owner => options.username(OWNER_ROLE).password(ROLE_PASSWORD),
            Role::Runtime => options.username(RUNTIME_ROLE).password(ROLE_PASSWORD),
            Role::Checkpointer => options.username(CHECKPOINTER_ROLE).password(ROLE_PASSWORD),
        };
        options.disable_statement_logging()
    }

    /// A connection URL for the owner or runtime role on `database` (for command-line tools).
    #[must_use]
    pub fn url(&self, role: Role, database: &str) -> String {
        let options = self.options(role, database);
        let user = options.get_username();
        let port = options.get_port();
        match &self.backend {
            Backend::Throwaway(cluster) if !cluster.is_tcp() => {
                let socket = cluster
                    .socket_dir()
                    .display()
                    .to_string()
                    .replace('/', "%2F");
                format!("postgres://{user}@localhost:{port}/{database}?host={socket}")
            }
            Backend::Throwaway(_) => format!("postgres://{user}@127.0.0.1:{port}/{database}"),
            Backend::External(_) => {
                let host = options.get_host();
                let password = if role == Role::Admin {
                    ""
                } else {
                    ROLE_PASSWORD
                };
                format!("postgres://{user}:{password}@{host}:{port}/{database}")
            }
        }
    }

    async fn admin(&self, database: &str) -> Result<PgConnection, TestkitError> {
        self.options(Role::Admin, database)
            .connect()
            .await
            .map_err(TestkitError::sql("connect as the test superuser"))
    }

    async fn create_roles(&self) -> Result<(), TestkitError> {
        let mut admin = self.admin("postgres").await?;
        for (role, extra) in [
            (OWNER_ROLE, ""),
            (RUNTIME_ROLE, " NOINHERIT"),
            (CHECKPOINTER_ROLE, " NOINHERIT"),
        ] {
            // Concurrent test processes on one external server may race: a duplicate is fine.
            let sql = format!(
                "DO $$ BEGIN CREATE ROLE {role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE \
                 NOREPLICATION NOBYPASSRLS{extra} PASSWORD '{ROLE_PASSWORD}'; \
                 EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$"
            );
            sqlx::raw_sql(&sql)
                .execute(&mut admin)
                .await
                .map_err(TestkitError::sql(format!("create role {role}")))?;
        }
        let _ = admin.close().await;
        Ok(())
    }

    /// Creates (once per process) the template database for `template`, migrated as the owner
    /// role, and returns its name.
    async fn template_database(&self, template: &Template) -> Result<String, TestkitError> {
        let name = template.database_name();
        let mut created = TEMPLATES.lock().await;
        let created = created.get_or_insert_with(HashSet::new);
        if created.contains(&name) {
            return Ok(name);
        }
        let mut admin = self.admin("postgres").await?;
        let exists: Option<bool> =
            sqlx::query_scalar("SELECT datistemplate FROM pg_database WHERE datname = $1")
                .bind(&name)
                .fetch_optional(&mut admin)
                .await
                .map_err(TestkitError::sql("look up template database"))?;
        if exists != Some(true) {
            let build = format!("tplbuild_{}", unique_token());
            exec(
                &mut admin,
                &format!("CREATE DATABASE {build} OWNER {OWNER_ROLE}"),
                "create template database",
            )
            .await?;
            let mut owner =
                self.options(Role::Owner, &build)
                    .connect()
                    .await
                    .map_err(TestkitError::sql(
                        "connect as owner to migrate the template",
                    ))?;
            sqlx::raw_sql(&template.sql)
                .execute(&mut owner)
                .await
                .map_err(TestkitError::sql(format!(
                    "migrate template `{}`",
                    template.name
                )))?;
            owner
                .close()
                .await
                .map_err(TestkitError::sql("disconnect after migrating"))?;
            exec(
                &mut admin,
                &format!("ALTER DATABASE {build} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false"),
                "mark template",
            )
            .await?;
            let renamed = exec_when_idle(
                &mut admin,
                &format!("ALTER DATABASE {build} RENAME TO {name}"),
            )
            .await;
            if let Err(error) = renamed {
                // Another process built the same template first; use theirs, drop ours.
                let _ = exec(
                    &mut admin,
                    &format!("ALTER DATABASE {build} IS_TEMPLATE false"),
                    "",
                )
                .await;
                let _ = exec(&mut admin, &format!("DROP DATABASE IF EXISTS {build}"), "").await;
                let now: Option<bool> =
                    sqlx::query_scalar("SELECT datistemplate FROM pg_database WHERE datname = $1")
                        .bind(&name)
                        .fetch_optional(&mut admin)
                        .await
                        .map_err(TestkitError::sql("look up template database"))?;
                if now != Some(true) {
                    return Err(TestkitError::sql("install template database")(error));
                }
            }
        }
        let _ = admin.close().await;
        created.insert(name.clone());
        Ok(name)
    }

    /// A fresh database copied from `template`, owned by the owner role.
    ///
    /// # Errors
    /// [`TestkitError`] when the server cannot be reached or the template cannot be migrated.
    pub async fn fresh_database(
        &'static self,
        template: &Template,
    ) -> Result<TestDb, TestkitError> {
        let template_name = self.template_database(template).await?;
        let name = format!("t_{}", unique_token());
        let mut admin = self.admin("postgres").await?;
        let sql = format!(
            "CREATE DATABASE {name} TEMPLATE {template_name} OWNER {OWNER_ROLE} STRATEGY FILE_COPY"
        );
        exec_when_idle(&mut admin, &sql)
            .await
            .map_err(TestkitError::sql("create test database"))?;
        // A new database grants TEMPORARY to PUBLIC (the template's ACL is not copied); the
        // runtime role must not hold it (rls-guard's start-up check refuses a role that can
        // leave temporary objects on a pooled connection).
        exec(
            &mut admin,
            &format!("REVOKE TEMPORARY ON DATABASE {name} FROM PUBLIC"),
            "revoke TEMPORARY from PUBLIC",
        )
        .await?;
        let _ = admin.close().await;
        Ok(TestDb { server: self, name })
    }

    /// Whether this is a throwaway cluster (as opposed to `DATABASE_URL`).
    #[must_use]
    pub const fn is_throwaway(&self) -> bool {
        matches!(self.backend, Backend::Throwaway(_))
    }

    /// The throwaway cluster, if this is one.
    #[must_use]
    pub const fn cluster(&self) -> Option<&PgCluster> {
        match &self.backend {
            Backend::Throwaway(c) => Some(c),
            Backend::External(_) => None,
        }
    }
}

async fn exec(conn: &mut PgConnection, sql: &str, context: &str) -> Result<(), TestkitError> {
    sqlx::raw_sql(sql)
        .execute(conn)
        .await
        .map(drop)
        .map_err(TestkitError::sql(context))
}

/// Runs `sql`, retrying while PostgreSQL reports the source database busy (a just-closed
/// session's backend can linger for a few milliseconds).
async fn exec_when_idle(conn: &mut PgConnection, sql: &str) -> Result<(), sqlx::Error> {
    let mut attempts = 0;
    loop {
        match sqlx::raw_sql(sql).execute(&mut *conn).await {
            Err(sqlx::Error::Database(e))
                if e.code().as_deref() == Some("55006") && attempts < 200 =>
            {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            other => return other.map(drop),
        }
    }
}

fn unique_token() -> String {
    format!(
        "{}_{}",
        std::process::id(),
        NEXT_DB.fetch_add(1, Ordering::Relaxed)
    )
}

/// Which role to connect as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The test superuser (only to set up attacks such as a BYPASSRLS role).
    Admin,
    /// The owner/migrator role.
    Owner,
    /// The least-privilege runtime role.
    Runtime,
    /// The checkpoint job's role ([`CHECKPOINTER_ROLE`]).
    Checkpointer,
}

/// The schema every test database starts with: SQL run once per process as the owner role.
#[derive(Debug, Clone)]
pub struct Template {
    name: String,
    sql: String,
}

impl Template {
    /// A template called `name` built by `sql` (several statements allowed).
    #[must_use]
    pub fn new(name: &str, sql: impl Into<String>) -> Self {
        Self {
            name: name.to_owned(),
            sql: sql.into(),
        }
    }

    fn database_name(&self) -> String {
        let mut hasher = DefaultHasher::new();
        self.sql.hash(&mut hasher);
        let slug: String = self
            .name
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(30)
            .collect::<String>()
            .to_ascii_lowercase();
        format!("tpl_{slug}_{:016x}", hasher.finish())
    }
}

/// A database of its own for one test. On an external server it is dropped with the handle; a
/// throwaway cluster is removed whole when the process exits.
#[derive(Debug)]
pub struct TestDb {
    server: &'static TestServer,
    name: String,
}

impl TestDb {
    /// The database name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The server.
    #[must_use]
    pub const fn server(&self) -> &'static TestServer {
        self.server
    }

    /// Connection options for `role` on this database.
    #[must_use]
    pub fn options(&self, role: Role) -> PgConnectOptions {
        self.server.options(role, &self.name)
    }

    /// A connection URL for `role` on this database.
    #[must_use]
    pub fn url(&self, role: Role) -> String {
        self.server.url(role, &self.name)
    }

    /// A pool of up to `max` connections as `role`.
    ///
    /// # Panics
    /// When the database cannot be reached: this is test support, and a test without its
    /// database must fail loudly.
    pub async fn pool(&self, role: Role, max: u32) -> PgPool {
        PgPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(self.options(role))
            .await
            .unwrap_or_else(|e| panic!("testkit: connect to {} as {role:?}: {e}", self.name))
    }

    /// Runs `sql` as the test superuser (to set up an attack, such as a BYPASSRLS role).
    ///
    /// # Panics
    /// When the statement fails.
    pub async fn as_admin(&self, sql: &str) {
        let mut admin = self
            .server
            .admin(&self.name)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        sqlx::raw_sql(sql)
            .execute(&mut admin)
            .await
            .unwrap_or_else(|e| panic!("testkit: as admin `{sql}`: {e}"));
        let _ = admin.close().await;
    }

    /// Creates a login role with `attributes` (for example `"BYPASSRLS"`) and returns options
    /// to connect to this database as it. The role name is unique to this call.
    ///
    /// # Panics
    /// When the role cannot be created.
    pub async fn create_login_role(&self, prefix: &str, attributes: &str) -> PgConnectOptions {
        let name = format!("{prefix}_{}", unique_token());
        self.as_admin(&format!(
            "CREATE ROLE {name} LOGIN {attributes} PASSWORD '{ROLE_PASSWORD}'; \
             GRANT CONNECT ON DATABASE {db} TO {name};",
            db = self.name
        ))
        .await;
        self.options(Role::Admin)
            .username(&name)
            .password(ROLE_PASSWORD)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if self.server.is_throwaway() {
            return;
        }
        let options = self.server.options(Role::Admin, "postgres");
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        // Drop cannot await; a short-lived thread with its own runtime does the cleanup.
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                if let Ok(mut conn) = options.connect().await {
                    let _ = sqlx::raw_sql(&sql).execute(&mut conn).await;
                    let _ = conn.close().await;
                }
            });
        })
        .join();
    }
}

/// A fresh database for one test, from the process's shared server.
///
/// When no PostgreSQL is available the test process stops with one line that says how to fix
/// the machine ([`missing_prerequisite`](crate::missing_prerequisite)): tests that need a
/// database fail, they never skip.
///
/// # Panics
/// When the database cannot be made for another reason.
pub async fn fresh_database(template: &Template) -> TestDb {
    crate::require(try_fresh_database(template).await)
}

/// [`fresh_database`] returning the error instead of panicking.
///
/// # Errors
/// [`TestkitError`] with a message that says how to fix the machine.
pub async fn try_fresh_database(template: &Template) -> Result<TestDb, TestkitError> {
    TestServer::shared().await?.fresh_database(template).await
}
