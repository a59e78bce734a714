//! Shared fixtures: the audit schema on a fresh database, a runtime-role audit log, tampering
//! as a superuser.
#![allow(dead_code, unreachable_pub)]

use audit_log::scrub::{PseudonymKey, ScrubPolicy, Scrubber};
use audit_log::{
    Action, Appended, AuditActor, AuditEvent, AuditLog, CheckpointSigner, Outcome, Target,
    TrustedKeys, VerifyReport,
};
use rls_guard::TenantPool;
use rls_guard::schema::SUPPORT_SQL;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use tenant_scope::{Actor, ActorId, ActorKind, TenantId};
use testkit::{Role, Template, TestDb, fresh_database};

pub fn template() -> Template {
    let sql = format!(
        "{SUPPORT_SQL}
        {}
        CREATE TABLE notes (
            tenant_id uuid NOT NULL,
            id bigserial,
            body text NOT NULL,
            PRIMARY KEY (tenant_id, id)
        );
        {}
        GRANT SELECT, INSERT, UPDATE, DELETE ON notes TO testkit_runtime;
        GRANT USAGE ON SEQUENCE notes_id_seq TO testkit_runtime;",
        audit_log::schema::schema_sql("testkit_runtime").unwrap(),
        rls_guard::schema::tenant_table_sql("notes").unwrap(),
    );
    Template::new("audit_log", sql)
}

pub struct Fixture {
    pub db: TestDb,
    /// The runtime role's raw pool (what `verify` and exports may use).
    pub raw: PgPool,
    pub log: AuditLog,
    /// The checkpointer role's pool: the only runtime identity that may write checkpoints.
    pub checkpointer: TenantPool,
    pub signer: CheckpointSigner,
    pub keys: TrustedKeys,
}

pub fn scrubber() -> Scrubber {
    Scrubber::new(ScrubPolicy::new(), vec![PseudonymKey::new(1, [7; 32])]).unwrap()
}

pub async fn fixture(max_connections: u32) -> Fixture {
    let db = fresh_database(&template()).await;
    let raw = db.pool(Role::Runtime, max_connections).await;
    let pool = TenantPool::new(raw.clone()).await.unwrap();
    let log = AuditLog::new(pool, scrubber());
    let checkpointer = checkpointer(&db).await;
    let signer = CheckpointSigner::generate("test-key").unwrap();
    let keys = TrustedKeys::new().with(signer.verifying_key());
    Fixture {
        db,
        raw,
        log,
        checkpointer,
        signer,
        keys,
    }
}

/// A checkpointer role of its own on `db`, with the crate's grants.
pub async fn checkpointer(db: &TestDb) -> TenantPool {
    let options = db
        .create_login_role("ckpt", "NOSUPERUSER NOBYPASSRLS NOCREATEROLE NOINHERIT")
        .await;
    let role = options.get_username().to_owned();
    db.as_admin(&audit_log::schema::checkpointer_sql(&role).unwrap())
        .await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect_with(options)
        .await
        .unwrap();
    TenantPool::new(pool).await.unwrap()
}

pub fn actor(tenant: TenantId) -> Actor {
    Actor::new(ActorKind::User, ActorId::new_random(), tenant)
}

/// The `n`th test event of `tenant`.
pub fn event(tenant: TenantId, n: u64) -> AuditEvent {
    AuditEvent::new(
        tenant,
        AuditActor::from_actor(&actor(tenant)),
        Action::new("note.updated").unwrap(),
        Outcome::Allowed,
    )
    .with_target(Target::new("note", &n.to_string()))
    .unwrap()
    .with_request_id(&format!("req-{n}"))
    .with_metadata(serde_json::json!({ "n": n }))
    .unwrap()
}

pub async fn append_n(f: &Fixture, tenant: TenantId, n: u64) -> Vec<Appended> {
    let mut out = Vec::new();
    for i in 1..=n {
        out.push(f.log.record(event(tenant, i)).await.unwrap());
    }
    out
}

pub async fn verify(f: &Fixture, tenant: TenantId) -> VerifyReport {
    audit_log::verify(&f.raw, tenant, &f.keys, &[])
        .await
        .unwrap()
}

/// A superuser transaction with the audit triggers off: what an attacker with owner or
/// superuser rights does. [`end_tamper`] turns them back on (as `ENABLE ALWAYS`) and commits.
pub async fn begin_tamper(db: &TestDb) -> Transaction<'static, Postgres> {
    let admin = db.pool(Role::Admin, 1).await;
    let mut tx = admin.begin().await.unwrap();
    sqlx::raw_sql(
        "ALTER TABLE audit.events DISABLE TRIGGER USER;
         ALTER TABLE audit.anchors DISABLE TRIGGER USER;
         ALTER TABLE audit.checkpoints DISABLE TRIGGER USER;",
    )
    .execute(&mut *tx)
    .await
    .unwrap();
    tx
}

pub async fn end_tamper(mut tx: Transaction<'static, Postgres>) {
    sqlx::raw_sql(
        "ALTER TABLE audit.events ENABLE ALWAYS TRIGGER chain_append;
         ALTER TABLE audit.events ENABLE ALWAYS TRIGGER append_only;
         ALTER TABLE audit.events ENABLE ALWAYS TRIGGER append_only_truncate;
         ALTER TABLE audit.events ENABLE ALWAYS TRIGGER tenant_binding_check;
         ALTER TABLE audit.anchors ENABLE ALWAYS TRIGGER append_only_truncate;
         ALTER TABLE audit.anchors ENABLE ALWAYS TRIGGER tenant_binding_check;
         ALTER TABLE audit.checkpoints ENABLE ALWAYS TRIGGER append_only;
         ALTER TABLE audit.checkpoints ENABLE ALWAYS TRIGGER append_only_truncate;
         ALTER TABLE audit.checkpoints ENABLE ALWAYS TRIGGER tenant_binding_check;",
    )
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
}

/// One stored row's raw columns: (event, prev_hash, hash).
pub async fn row(
    conn: &mut PgConnection,
    tenant: TenantId,
    seq: i64,
) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    sqlx::query_as(
        "SELECT event, prev_hash, hash FROM audit.events WHERE tenant_id = $1 AND seq = $2",
    )
    .bind(tenant.as_uuid())
    .bind(seq)
    .fetch_one(conn)
    .await
    .unwrap()
}

/// Whether `err` is SQLSTATE `code`.
pub fn is_sqlstate(err: &sqlx::Error, code: &str) -> bool {
    err.as_database_error()
        .and_then(|e| e.code())
        .is_some_and(|c| c == code)
}
