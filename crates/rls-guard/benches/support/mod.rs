//! Shared set-up of the rls-guard benchmarks: a loopback-TCP cluster with an RLS table and an
//! identical plain table, and the three transaction shapes being compared.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use rls_guard::TenantPool;
use rls_guard::schema::{SUPPORT_SQL, tenant_table_sql};
use sqlx::postgres::PgPoolOptions;
use sqlx::{ConnectOptions, Connection};
use tenant_scope::{Actor, ActorId, ActorKind, TenantContext, TenantId};
use testkit::{ADMIN_ROLE, PgCluster};
use uuid::Uuid;

const TENANTS: usize = 20;
const ROWS_PER_TENANT: usize = 500;

pub struct Fixture {
    pub plain: sqlx::PgPool,
    pub scoped: TenantPool,
    /// The same schema and rows in a database that enforces signed bindings.
    pub signed: TenantPool,
    pub context: TenantContext,
    pub tenant: TenantId,
    pub id: Uuid,
}

impl Fixture {
    pub async fn new(cluster: &PgCluster) -> Self {
        let (plain, scoped, tenant, id, _) = setup(cluster).await;
        let signed = setup_signed(cluster, tenant).await;
        // A signed-in user's request: tenant and actor are both bound.
        let actor = Actor::new(ActorKind::User, ActorId::new_random(), tenant);
        let context = TenantContext::for_actor(actor);
        Self {
            plain,
            scoped,
            signed,
            context,
            tenant,
            id,
        }
    }

    fn actor(&self) -> String {
        self.context
            .actor()
            .map(|a| a.id().to_string())
            .unwrap_or_default()
    }

    /// BEGIN; SELECT by primary key on the plain table; COMMIT.
    pub async fn plain_tx(&self) -> (Uuid, String) {
        let mut tx = self.plain.begin().await.unwrap();
        let row = sqlx::query_as("SELECT id, name FROM plain_projects WHERE id = $1")
            .bind(self.id)
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        row
    }

    /// rls-guard: tenant-bound BEGIN; the same SELECT on the RLS table; checked COMMIT.
    pub async fn tenant_tx(&self) -> (Uuid, String) {
        self.select_in(self.scoped.begin(&self.context).await.unwrap())
            .await
    }

    /// rls-guard, read-only: `BEGIN READ ONLY` + binding; the same SELECT; `ROLLBACK` + reset.
    pub async fn tenant_tx_read_only(&self) -> (Uuid, String) {
        self.select_in(self.scoped.begin_read_only(&self.context).await.unwrap())
            .await
    }

    /// The primary-key SELECT on the RLS table inside `tx`, then `tx.commit()`.
    async fn select_in(&self, mut tx: rls_guard::TenantTx) -> (Uuid, String) {
        let row = sqlx::query_as("SELECT id, name FROM projects WHERE id = $1")
            .bind(self.id)
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        row
    }

    /// `tenant_tx` on the database that enforces signed bindings (`BEGIN`, then `app.bind`).
    pub async fn tenant_tx_signed(&self) -> (Uuid, String) {
        self.select_in(self.signed.begin(&self.context).await.unwrap())
            .await
    }

    /// `bound_read` on the database that enforces signed bindings.
    pub async fn bound_read_signed(&self) -> (Uuid, String) {
        self.signed
            .read(&self.context, "SELECT id, name FROM projects WHERE id = $1")
            .bind(self.id)
            .fetch_optional()
            .await
            .unwrap()
            .unwrap()
    }

    /// The SELECT by primary key on the plain table, on its own (autocommit): one round trip.
    pub async fn plain_select(&self) -> (Uuid, String) {
        sqlx::query_as("SELECT id, name FROM plain_projects WHERE id = $1")
            .bind(self.id)
            .fetch_one(&self.plain)
            .await
            .unwrap()
    }

    /// rls-guard's one-statement bound read of the same row on the RLS table: one round trip.
    pub async fn bound_read(&self) -> (Uuid, String) {
        self.scoped
            .read(&self.context, "SELECT id, name FROM projects WHERE id = $1")
            .bind(self.id)
            .fetch_optional()
            .await
            .unwrap()
            .unwrap()
    }

    /// Only the binding: tenant-bound BEGIN, the SELECT on the plain table, plain COMMIT.
    pub async fn bound_tx_plain_table(&self) -> (Uuid, String) {
        self.bound_tx_raw("plain_projects").await
    }

    /// The same binding and RLS query with a plain COMMIT (no restated binding, no reset), to
    /// show what rls-guard's commit protocol costs.
    pub async fn bound_tx_without_commit_protocol(&self) -> (Uuid, String) {
        self.bound_tx_raw("projects").await
    }

    /// rls-guard's BEGIN + binding by hand, the primary-key SELECT on `table`, plain COMMIT.
    async fn bound_tx_raw(&self, table: &str) -> (Uuid, String) {
        let bind = format!(
            "BEGIN; SET LOCAL app.tenant_id = '{}'; SET LOCAL app.actor_id = '{}'",
            self.tenant,
            self.actor()
        );
        let mut tx = self.scoped.pool().begin_with(bind).await.unwrap();
        let row = sqlx::query_as(&format!("SELECT id, name FROM {table} WHERE id = $1"))
            .bind(self.id)
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        row
    }
}

pub async fn setup(cluster: &PgCluster) -> (sqlx::PgPool, TenantPool, TenantId, Uuid, Uuid) {
    let mut admin = cluster
        .connect_options(ADMIN_ROLE, "postgres")
        .connect()
        .await
        .unwrap();
    sqlx::raw_sql("CREATE ROLE bench_owner LOGIN; CREATE ROLE bench_runtime LOGIN NOINHERIT")
        .execute(&mut admin)
        .await
        .unwrap();
    // CREATE DATABASE cannot share a (multi-statement, hence transactional) simple query.
    sqlx::raw_sql("CREATE DATABASE bench OWNER bench_owner")
        .execute(&mut admin)
        .await
        .unwrap();
    let mut owner = cluster
        .connect_options("bench_owner", "bench")
        .connect()
        .await
        .unwrap();
    let sql = format!(
        "{SUPPORT_SQL}
         CREATE TABLE projects (tenant_id uuid NOT NULL, id uuid NOT NULL, name text NOT NULL,
                                PRIMARY KEY (tenant_id, id));
         {}
         CREATE TABLE plain_projects (tenant uuid NOT NULL, id uuid PRIMARY KEY, name text NOT NULL);
         GRANT SELECT ON projects, plain_projects TO bench_runtime;",
        tenant_table_sql("projects").unwrap()
    );
    sqlx::raw_sql(&sql).execute(&mut owner).await.unwrap();
    let mut tenants = Vec::new();
    for _ in 0..TENANTS {
        let tenant = TenantId::new_random();
        tenants.push(tenant);
        // Seed both tables with identical rows (the owner sets the binding for the RLS table).
        sqlx::raw_sql(&format!(
            "BEGIN; SET LOCAL app.tenant_id = '{tenant}'; SET LOCAL app.commit_binding = '{tenant}:';
             INSERT INTO projects SELECT '{tenant}', gen_random_uuid(), 'project ' || g
                 FROM generate_series(1, {ROWS_PER_TENANT}) g;
             INSERT INTO plain_projects SELECT * FROM projects WHERE tenant_id = '{tenant}';
             COMMIT;"
        ))
        .execute(&mut owner)
        .await
        .unwrap();
    }
    sqlx::raw_sql("ANALYZE projects; ANALYZE plain_projects;")
        .execute(&mut owner)
        .await
        .unwrap();
    let tenant = tenants[TENANTS / 2];
    let plain_id: Uuid =
        sqlx::query_scalar("SELECT id FROM plain_projects WHERE tenant = $1 LIMIT 1")
            .bind(tenant.as_uuid())
            .fetch_one(&mut owner)
            .await
            .unwrap();
    let _ = owner.close().await;
    let runtime_options = cluster
        .connect_options("bench_runtime", "bench")
        .disable_statement_logging();
    let plain = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(runtime_options.clone())
        .await
        .unwrap();
    let scoped_raw = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(runtime_options)
        .await
        .unwrap();
    let scoped = TenantPool::new(scoped_raw).await.unwrap();
    // The same row, looked up through each table.
    (plain, scoped, tenant, plain_id, plain_id)
}

/// A second database, `bench_signed`, with the RLS table only, signed bindings enforced, and
/// `tenant`'s rows copied with their ids from `bench` (so the same primary key finds one row).
async fn setup_signed(cluster: &PgCluster, tenant: TenantId) -> TenantPool {
    let mut admin = cluster
        .connect_options(ADMIN_ROLE, "postgres")
        .connect()
        .await
        .unwrap();
    sqlx::raw_sql("CREATE DATABASE bench_signed OWNER bench_owner")
        .execute(&mut admin)
        .await
        .unwrap();
    let mut source = cluster
        .connect_options("bench_owner", "bench")
        .connect()
        .await
        .unwrap();
    let rows: Vec<(Uuid, String)> =
        sqlx::query_as("SELECT id, name FROM plain_projects WHERE tenant = $1")
            .bind(tenant.as_uuid())
            .fetch_all(&mut source)
            .await
            .unwrap();
    let mut owner = cluster
        .connect_options("bench_owner", "bench_signed")
        .connect()
        .await
        .unwrap();
    let sql = format!(
        "{SUPPORT_SQL}
         CREATE TABLE projects (tenant_id uuid NOT NULL, id uuid NOT NULL, name text NOT NULL,
                                PRIMARY KEY (tenant_id, id));
         {}
         GRANT SELECT ON projects TO bench_runtime;
         {}",
        tenant_table_sql("projects").unwrap(),
        rls_guard::schema::ENABLE_SIGNED_BINDINGS_SQL
    );
    sqlx::raw_sql(&sql).execute(&mut owner).await.unwrap();
    let mut tx = owner.begin().await.unwrap();
    sqlx::query("SELECT app.bind_trusted($1, '')")
        .bind(tenant.to_string())
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("SELECT set_config('app.commit_binding', $1 || ':', true)")
        .bind(tenant.to_string())
        .execute(&mut *tx)
        .await
        .unwrap();
    for (id, name) in rows {
        sqlx::query("INSERT INTO projects VALUES ($1, $2, $3)")
            .bind(tenant.as_uuid())
            .bind(id)
            .bind(name)
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    sqlx::raw_sql("ANALYZE projects")
        .execute(&mut owner)
        .await
        .unwrap();
    let key = rls_guard::schema::binding_key(&mut owner).await.unwrap();
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(
            cluster
                .connect_options("bench_runtime", "bench_signed")
                .disable_statement_logging(),
        )
        .await
        .unwrap();
    TenantPool::with_binding_key(pool, key).await.unwrap()
}
