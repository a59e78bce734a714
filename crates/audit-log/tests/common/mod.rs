//! Shared fixtures: the audit schema on a fresh database, a runtime-role audit log, tampering
//! as a superuser.
#![allow(dead_code, unreachable_pub)]

use audit_log::scrub::{PseudonymKey, ScrubPolicy, Scrubber};
use audit_log::{
    Action, AuditActor, AuditEvent, AuditLog, CheckpointSigner, Outcome, Queued, Sequencer, Target,
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
    /// The sequencer role's sequencer: the only identity that chains queued events.
    pub sequencer: Sequencer,
    pub signer: CheckpointSigner,
    pub keys: TrustedKeys,
}

pub fn scrubber() -> Scrubber {
    Scrubber::new(
        ScrubPolicy::new(),
        vec![PseudonymKey::new(1, Box::new([7; 32]))],
    )
    .unwrap()
}

pub async fn fixture(max_connections: u32) -> Fixture {
    let db = fresh_database(&template()).await;
    let raw = db.pool(Role::Runtime, max_connections).await;
    let pool = TenantPool::new(raw.clone()).await.unwrap();
    let log = AuditLog::new(pool, scrubber());
    let checkpointer = checkpointer(&db).await;
    let sequencer = Sequencer::new(sequencer_pool(&db).await);
    let signer = CheckpointSigner::generate("test-key").unwrap();
    let keys = TrustedKeys::new().with(signer.verifying_key());
    Fixture {
        db,
        raw,
        log,
        checkpointer,
        sequencer,
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

/// A sequencer role of its own on `db`, with the crate's grants, and a pool of it.
pub async fn sequencer_pool(db: &TestDb) -> PgPool {
    let options = db
        .create_login_role("seq", "NOSUPERUSER NOBYPASSRLS NOCREATEROLE NOINHERIT")
        .await;
    let role = options.get_username().to_owned();
    db.as_admin(&audit_log::schema::sequencer_sql(&role).unwrap())
        .await;
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect_with(options)
        .await
        .unwrap()
}

/// Chains everything queued so far.
pub async fn sequence_all(f: &Fixture) -> u64 {
    f.sequencer.drain().await.unwrap()
}

/// Where a queued event landed once chained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chained {
    pub id: u64,
    pub seq: u64,
    pub hash: audit_log::ChainHash,
}

/// Chains everything queued, then finds where each of `queued` landed.
pub async fn chained(f: &Fixture, queued: &[Queued]) -> Vec<Chained> {
    sequence_all(f).await;
    let admin = f.db.pool(Role::Admin, 1).await;
    let mut out = Vec::new();
    for q in queued {
        let (seq, hash): (i64, Vec<u8>) = sqlx::query_as(
            "SELECT seq, hash FROM audit.events WHERE tenant_id = $1 AND queue_id = $2",
        )
        .bind(q.tenant.as_uuid())
        .bind(q.id as i64)
        .fetch_one(&admin)
        .await
        .unwrap();
        out.push(Chained {
            id: q.id,
            seq: seq as u64,
            hash: hash.try_into().unwrap(),
        });
    }
    admin.close().await;
    out
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

/// Records `n` events of `tenant` and chains them.
pub async fn append_n(f: &Fixture, tenant: TenantId, n: u64) -> Vec<Chained> {
    let mut queued = Vec::new();
    for i in 1..=n {
        queued.push(f.log.record(event(tenant, i)).await.unwrap());
    }
    chained(f, &queued).await
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
        "ALTER TABLE audit.events ENABLE ALWAYS TRIGGER sequenced_only;
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

/// The owner (triggers off) puts a row at position 2 of `tenant`'s chain, a copy of the first
/// that links to its own hash: the next batch of that tenant fails at the chain's keys.
pub async fn plant_second_row(db: &TestDb, tenant: TenantId) {
    let mut tx = begin_tamper(db).await;
    sqlx::query(
        "INSERT INTO audit.events (tenant_id, seq, occurred_at, actor_kind, action, outcome, \
             event, prev_hash, hash) \
         SELECT tenant_id, 2, occurred_at, actor_kind, action, outcome, event, hash, hash \
         FROM audit.events WHERE tenant_id = $1 AND seq = 1",
    )
    .bind(tenant.as_uuid())
    .execute(&mut *tx)
    .await
    .unwrap();
    end_tamper(tx).await;
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

/// A raw INSERT as the runtime role (what SQL injection can run): the row's own columns and its
/// record bytes, into the queue (the only audit table it may insert into).
pub const RAW_INSERT: &str = "INSERT INTO audit.pending
    (tenant_id, occurred_at, actor_kind, actor_id, action, outcome, request_id, event)
    VALUES ($1, $2, $3, $4, $5, 'allowed', $6, $7)";

/// A minimal record matching the columns `("user", "a.b", no actor id, no request id)`, with
/// `@T@` for the tenant and `@TS@` for the row's time (see [`raw_insert`]).
pub const BASE: &str = r#"{"action":"a.b","actor":{"kind":"user"},"occurred_at":"@TS@","outcome":{"status":"allowed"},"schema":1,"tenant":"@T@"}"#;

/// What became of a raw INSERT.
#[derive(Debug, PartialEq, Eq)]
pub enum Fate {
    /// The database refused the insert.
    Refused,
    /// Accepted, and the chain still verifies.
    Intact,
    /// Accepted, and the chain no longer verifies: one statement poisoned it.
    Poisoned(String),
}

/// The columns of a raw INSERT (outcome is always `allowed`).
#[derive(Debug, Clone, Copy)]
pub struct Columns<'a> {
    pub kind: &'a str,
    pub action: &'a str,
    pub actor_id: Option<uuid::Uuid>,
    pub request_id: Option<&'a str>,
    /// Seconds the row's time (and its record's) is from now.
    pub shift_secs: i64,
}

impl<'a> Columns<'a> {
    /// The columns [`BASE`] matches.
    pub const BASE: Columns<'static> = Columns {
        kind: "user",
        action: "a.b",
        actor_id: None,
        request_id: None,
        shift_secs: 0,
    };

    pub const fn new(kind: &'a str, action: &'a str, request_id: Option<&'a str>) -> Self {
        Self {
            kind,
            action,
            actor_id: None,
            request_id,
            shift_secs: 0,
        }
    }
}

/// `template` with every `@T@` replaced by `tenant` and every `@TS@` by `at` as records spell
/// it; works on bytes, so a template may hold bytes that are not UTF-8.
pub fn fill(template: &[u8], tenant: TenantId, at: time::OffsetDateTime) -> Vec<u8> {
    let ts = audit_log::format_time(at).unwrap();
    let t = tenant.to_string();
    let mut out = Vec::with_capacity(template.len() + 64);
    let mut rest = template;
    while !rest.is_empty() {
        if let Some(tail) = rest.strip_prefix(b"@TS@") {
            out.extend_from_slice(ts.as_bytes());
            rest = tail;
        } else if let Some(tail) = rest.strip_prefix(b"@T@") {
            out.extend_from_slice(t.as_bytes());
            rest = tail;
        } else {
            out.push(rest[0]);
            rest = &rest[1..];
        }
    }
    out
}

/// Now, to the microsecond PostgreSQL stores.
pub fn now_micros() -> time::OffsetDateTime {
    let now = time::OffsetDateTime::now_utc();
    now.replace_nanosecond(now.nanosecond() / 1_000 * 1_000)
        .unwrap()
}

/// Appends one honest event, raw-inserts `template` (see [`fill`]) as the runtime role with
/// `kind`, `action` and `request_id` as its columns and commits, appends another honest event,
/// then verifies.
pub async fn raw_insert(
    f: &Fixture,
    template: &str,
    kind: &str,
    action: &str,
    request_id: Option<&str>,
) -> (TenantId, Fate) {
    raw_insert_bytes(
        f,
        template.as_bytes(),
        Columns::new(kind, action, request_id),
    )
    .await
}

/// [`raw_insert`] with a record of any bytes and any columns.
pub async fn raw_insert_bytes(
    f: &Fixture,
    template: &[u8],
    columns: Columns<'_>,
) -> (TenantId, Fate) {
    raw_insert_with(f, f.log.pool(), RAW_INSERT, template, columns).await
}

/// [`raw_insert`] through `pool` with `sql`, which takes the parameters of [`RAW_INSERT`]
/// (tenant, time, kind, actor id, action, request id, record).
pub async fn raw_insert_with(
    f: &Fixture,
    pool: &TenantPool,
    sql: &str,
    template: &[u8],
    columns: Columns<'_>,
) -> (TenantId, Fate) {
    let (t, fate, _) = raw_insert_coded(f, pool, sql, template, columns).await;
    (t, fate)
}

/// [`raw_insert_with`], also giving the SQLSTATE of a refusal.
pub async fn raw_insert_coded(
    f: &Fixture,
    pool: &TenantPool,
    sql: &str,
    template: &[u8],
    columns: Columns<'_>,
) -> (TenantId, Fate, Option<String>) {
    let t = TenantId::new_random();
    append_n(f, t, 1).await;
    let at = now_micros() + time::Duration::seconds(columns.shift_secs);
    let record = fill(template, t, at);
    let ctx = tenant_scope::TenantContext::for_job(t, None, "review").unwrap();
    let mut tx = pool.begin(&ctx).await.unwrap();
    let inserted = sqlx::query(sql)
        .bind(t.as_uuid())
        .bind(at)
        .bind(columns.kind)
        .bind(columns.actor_id)
        .bind(columns.action)
        .bind(columns.request_id)
        .bind(record)
        .execute(&mut *tx)
        .await;
    if let Err(e) = inserted {
        tx.rollback().await.unwrap();
        let code = e
            .as_database_error()
            .and_then(|d| d.code())
            .map(|c| c.into_owned());
        return (t, Fate::Refused, code);
    }
    tx.commit().await.unwrap();
    f.log.record(event(t, 9)).await.unwrap();
    sequence_all(f).await;
    (t, fate(f, t).await, None)
}

/// Whether `t`'s chain verifies intact (with nothing left in the queue).
pub async fn fate(f: &Fixture, t: TenantId) -> Fate {
    sequence_all(f).await;
    let report = verify(f, t).await;
    match report.result {
        Ok(()) if report.pending > 0 => Fate::Poisoned(format!("{} left queued", report.pending)),
        Ok(()) if report.is_intact() => Fate::Intact,
        Ok(()) => Fate::Poisoned("not intact".into()),
        Err(b) => Fate::Poisoned(format!("{b}")),
    }
}

/// SQLSTATE `insufficient_privilege`.
pub const PRIVILEGE: &str = "42501";

/// The one number `sql` (with `$1` = `t`) counts, as `admin` sees it.
pub async fn count(admin: &PgPool, sql: &str, t: TenantId) -> i64 {
    sqlx::query_scalar(sql)
        .bind(t.as_uuid())
        .fetch_one(admin)
        .await
        .unwrap()
}

/// How many of `t`'s events are chained.
pub async fn chained_count(admin: &PgPool, t: TenantId) -> i64 {
    count(
        admin,
        "SELECT count(*) FROM audit.events WHERE tenant_id = $1",
        t,
    )
    .await
}

/// How many of `t`'s events wait in the queue.
pub async fn queued_count(admin: &PgPool, t: TenantId) -> i64 {
    count(
        admin,
        "SELECT count(*) FROM audit.pending WHERE tenant_id = $1",
        t,
    )
    .await
}
