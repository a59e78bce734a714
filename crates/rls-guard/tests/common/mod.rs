//! Shared fixtures: a schema of two tenant tables made safe with `rls_guard::schema`.
#![allow(dead_code, unreachable_pub)]

use rls_guard::TenantPool;
use rls_guard::schema::{SUPPORT_SQL, tenant_table_sql};
use sqlx::PgPool;
use tenant_scope::{Actor, ActorId, ActorKind, TenantContext, TenantId};
use testkit::{Role, Template, TestDb, fresh_database};
use uuid::Uuid;

pub fn template() -> Template {
    Template::new("rls_guard_isolation", schema_sql())
}

pub fn schema_sql() -> String {
    format!(
        "{SUPPORT_SQL}
        CREATE TABLE projects (
            tenant_id uuid NOT NULL,
            id uuid NOT NULL DEFAULT gen_random_uuid(),
            name text NOT NULL,
            PRIMARY KEY (tenant_id, id),
            UNIQUE (tenant_id, name)
        );
        CREATE TABLE tasks (
            tenant_id uuid NOT NULL,
            id uuid NOT NULL DEFAULT gen_random_uuid(),
            project_id uuid NOT NULL,
            title text NOT NULL,
            PRIMARY KEY (tenant_id, id),
            FOREIGN KEY (tenant_id, project_id) REFERENCES projects (tenant_id, id)
        );
        {}
        {}
        GRANT SELECT, INSERT, UPDATE, DELETE ON projects, tasks TO testkit_runtime;",
        tenant_table_sql("projects").unwrap(),
        tenant_table_sql("tasks").unwrap(),
    )
}

/// The isolation schema with signed tenant bindings enforced.
pub fn signed_template() -> Template {
    Template::new(
        "rls_guard_signed",
        format!(
            "{}\n{}",
            schema_sql(),
            rls_guard::schema::ENABLE_SIGNED_BINDINGS_SQL
        ),
    )
}

/// A fixture on a database that enforces signed bindings, its pool built with the key the owner
/// reads.
pub async fn signed_fixture(max_connections: u32) -> Fixture {
    let db = fresh_database(&signed_template()).await;
    let mut owner = db.pool(Role::Owner, 1).await.acquire().await.unwrap();
    let key = rls_guard::schema::binding_key(&mut owner).await.unwrap();
    drop(owner);
    let (raw, bouncer) = runtime_pool(&db, max_connections).await;
    let pool = TenantPool::with_binding_key(raw.clone(), key)
        .await
        .unwrap();
    Fixture {
        db,
        raw,
        pool,
        bouncer,
    }
}

pub struct Fixture {
    pub db: TestDb,
    /// Raw runtime-role pool: connections without any binding (what a bug would use).
    pub raw: PgPool,
    pub pool: TenantPool,
    /// The PgBouncer the pools go through, in the `isolation_pgbouncer` suite.
    pub bouncer: Option<testkit::PgBouncer>,
}

/// Whether this test binary is `tests/isolation_pgbouncer.rs`: the isolation suite with every
/// runtime connection going through PgBouncer in transaction-pooling mode.
pub fn via_pgbouncer() -> bool {
    env!("CARGO_CRATE_NAME").ends_with("_pgbouncer")
}

pub async fn fixture(max_connections: u32) -> Fixture {
    let db = fresh_database(&template()).await;
    let (raw, bouncer) = runtime_pool(&db, max_connections).await;
    let pool = TenantPool::new(raw.clone()).await.unwrap();
    Fixture {
        db,
        raw,
        pool,
        bouncer,
    }
}

/// The raw runtime-role pool, through PgBouncer in the `*_pgbouncer` suites.
async fn runtime_pool(db: &TestDb, max_connections: u32) -> (PgPool, Option<testkit::PgBouncer>) {
    if via_pgbouncer() {
        // Fewer server connections than clients: consecutive transactions of one client land
        // on different server connections, and every server connection serves many clients.
        let server_connections = max_connections.div_ceil(4);
        let bouncer = testkit::require(testkit::PgBouncer::start(
            db.server(),
            testkit::PoolMode::Transaction,
            server_connections,
            &[testkit::RUNTIME_ROLE],
        ));
        let raw = sqlx::postgres::PgPoolOptions::new()
            .max_connections(max_connections)
            .connect_with(bouncer.options(testkit::RUNTIME_ROLE, db.name()))
            .await
            .unwrap();
        (raw, Some(bouncer))
    } else {
        (db.pool(Role::Runtime, max_connections).await, None)
    }
}

pub fn ctx(tenant: TenantId) -> TenantContext {
    let actor = Actor::new(ActorKind::User, ActorId::new_random(), tenant);
    TenantContext::for_actor(actor)
}

pub async fn add_project(pool: &TenantPool, tenant: TenantId, name: &str) -> Uuid {
    let mut tx = pool.begin(&ctx(tenant)).await.unwrap();
    let id: Uuid =
        sqlx::query_scalar("INSERT INTO projects (tenant_id, name) VALUES ($1, $2) RETURNING id")
            .bind(tenant.as_uuid())
            .bind(name)
            .fetch_one(&mut *tx)
            .await
            .unwrap();
    tx.commit().await.unwrap();
    id
}

/// `n` tenants, the i-th with i + 1 projects; and how many rows each has.
pub async fn seed_ladder(
    pool: &TenantPool,
    n: usize,
) -> (Vec<TenantId>, std::collections::HashMap<TenantId, usize>) {
    let tenants: Vec<TenantId> = (0..n).map(|_| TenantId::new_random()).collect();
    let mut expected = std::collections::HashMap::new();
    for (i, t) in tenants.iter().enumerate() {
        for j in 0..=i {
            add_project(pool, *t, &format!("p{j}")).await;
        }
        expected.insert(*t, i + 1);
    }
    (tenants, expected)
}

/// Every project a tenant-bound transaction can see, as (tenant_id, name).
pub async fn visible(pool: &TenantPool, tenant: TenantId) -> Vec<(Uuid, String)> {
    let mut tx = pool.begin(&ctx(tenant)).await.unwrap();
    let rows = sqlx::query_as("SELECT tenant_id, name FROM projects ORDER BY name")
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    rows
}

/// Total rows, counted by the test superuser (bypassing RLS) to prove nothing was written.
pub async fn count_all(db: &TestDb, table: &str) -> i64 {
    let admin = db.pool(Role::Admin, 1).await;
    sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(&admin)
        .await
        .unwrap()
}

pub fn is_rls_violation(err: &sqlx::Error) -> bool {
    err.as_database_error()
        .and_then(|e| e.code())
        .is_some_and(|c| c == "42501")
        && err.to_string().contains("row-level security")
}

/// What an unbound connection sees and may do: nothing. Simple-protocol statements only, so
/// the check also runs through a transaction-pooling PgBouncer outside any transaction.
pub async fn assert_unbound_sees_and_changes_nothing(conn: &mut sqlx::PgConnection, db: &TestDb) {
    use sqlx::Row;
    let setting: Option<String> = sqlx::raw_sql("SELECT current_setting('app.tenant_id', true)")
        .fetch_one(&mut *conn)
        .await
        .unwrap()
        .get(0);
    assert!(
        setting.as_deref().unwrap_or("").is_empty(),
        "binding leaked: {setting:?}"
    );
    let n: i64 = sqlx::raw_sql("SELECT count(*) FROM projects")
        .fetch_one(&mut *conn)
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "unbound connection saw rows");
    let before = count_all(db, "projects").await;
    let err = sqlx::raw_sql(
        "INSERT INTO projects (tenant_id, name) VALUES (gen_random_uuid(), 'sneaky')",
    )
    .execute(&mut *conn)
    .await
    .unwrap_err();
    assert!(is_rls_violation(&err), "{err}");
    let updated = sqlx::raw_sql("UPDATE projects SET name = 'pwned'")
        .execute(&mut *conn)
        .await
        .unwrap()
        .rows_affected();
    let deleted = sqlx::raw_sql("DELETE FROM projects")
        .execute(&mut *conn)
        .await
        .unwrap()
        .rows_affected();
    assert_eq!((updated, deleted), (0, 0));
    assert_eq!(count_all(db, "projects").await, before);
}

/// Inserts a project named `name` in a transaction bound to `ctx` and commits it.
pub async fn insert_project(
    pool: &TenantPool,
    ctx: &TenantContext,
    name: &str,
) -> Result<(), rls_guard::RlsError> {
    let mut tx = pool.begin(ctx).await?;
    sqlx::query("INSERT INTO projects (tenant_id, name) VALUES ($1, $2)")
        .bind(ctx.tenant().as_uuid())
        .bind(name)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// The project names `ctx` sees, through a bound read.
pub async fn read_names(
    pool: &TenantPool,
    ctx: &TenantContext,
) -> Result<Vec<String>, rls_guard::RlsError> {
    pool.read(ctx, "SELECT name FROM projects ORDER BY name")
        .fetch_all::<(String,)>()
        .await
        .map(|rows| rows.into_iter().map(|(n,)| n).collect())
}

/// How many projects named `name` exist in any tenant (as the superuser).
pub async fn projects_named(db: &TestDb, name: &str) -> i64 {
    let admin = db.pool(Role::Admin, 1).await;
    sqlx::query_scalar("SELECT count(*) FROM projects WHERE name = $1")
        .bind(name)
        .fetch_one(&admin)
        .await
        .unwrap()
}

/// An error that never happens (the audit hooks of these tests cannot fail).
#[derive(Debug)]
pub struct Never;

impl std::fmt::Display for Never {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("never")
    }
}

impl std::error::Error for Never {}

/// A cross-tenant audit hook that accepts every event.
pub struct Accept;

impl tenant_scope::CrossTenantAudit for Accept {
    type Error = Never;

    async fn record(&self, _event: &tenant_scope::CrossTenantEvent) -> Result<(), Never> {
        Ok(())
    }
}

/// The backend process id of the transaction's connection.
pub async fn backend(tx: &mut rls_guard::TenantTx) -> i32 {
    sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut **tx)
        .await
        .unwrap()
}

/// `pg_stat_activity.state` of backend `pid`, waiting (at most 2 s) for it to settle out of
/// `active`; `None` when the backend is gone.
pub async fn state(admin: &PgPool, pid: i32) -> Option<String> {
    let started = std::time::Instant::now();
    loop {
        let s: Option<String> =
            sqlx::query_scalar("SELECT state FROM pg_stat_activity WHERE pid = $1")
                .bind(pid)
                .fetch_optional(admin)
                .await
                .unwrap()
                .flatten();
        if s.as_deref() != Some("active") || started.elapsed() > std::time::Duration::from_secs(2) {
            return s;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Waits (at most 5 s) until backend `pid` is gone.
pub async fn gone(admin: &PgPool, pid: i32) {
    let started = std::time::Instant::now();
    while state(admin, pid).await.is_some() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "backend {pid} still open"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// `rls-guard check --runtime-role testkit_runtime`, connected as the superuser.
pub async fn coverage(db: &TestDb) -> Vec<rls_guard::Finding> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect_with(&db.options(Role::Admin))
        .await
        .unwrap();
    rls_guard::CoverageCheck::new()
        .runtime_role(testkit::RUNTIME_ROLE)
        .run(&mut conn)
        .await
        .unwrap()
}
