//! Attacks on session liveness by an adversary who holds the runtime role (SQL injection, a
//! compromised application server): switching the check off with settings, shadowing what it
//! calls, planting connection state that blinds a later check, and statement shapes that might
//! read before the check. Each attack is paired with the legitimate operation in the same setup.
// Integration tests: a failed unwrap is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use rls_guard::{RlsError, SessionLiveness, TenantPool};
use sqlx::PgPool;
use tenant_scope::{Actor, ActorId, ActorKind, TenantContext, TenantId};
use testkit::{Role, TestDb};
use uuid::Uuid;

/// A session table of the fixture's own and the honest check over it (as in `liveness.rs`).
const SESSIONS_SQL: &str = "
CREATE SCHEMA sess;
GRANT USAGE ON SCHEMA sess TO testkit_runtime;
CREATE TABLE sess.sessions (
    tenant_id uuid NOT NULL,
    id uuid NOT NULL,
    revoked boolean NOT NULL DEFAULT false,
    PRIMARY KEY (tenant_id, id)
);
GRANT SELECT, INSERT, UPDATE ON sess.sessions TO testkit_runtime;
CREATE FUNCTION sess.is_live(tenant uuid, session uuid) RETURNS boolean
    LANGUAGE sql STABLE
    AS $$ SELECT EXISTS (SELECT 1 FROM sess.sessions s
                         WHERE s.tenant_id = tenant AND s.id = session AND NOT s.revoked) $$;
";

fn template(signed: bool) -> testkit::Template {
    let sessions = rls_guard::schema::tenant_table_sql("sess.sessions").unwrap();
    let signing = if signed {
        rls_guard::schema::ENABLE_SIGNED_BINDINGS_SQL
    } else {
        ""
    };
    testkit::Template::new(
        "rls_guard_liveness_attacks",
        format!(
            "{}\n{SESSIONS_SQL}\n{sessions}\n{signing}",
            common::schema_sql()
        ),
    )
}

struct Fixture {
    db: TestDb,
    raw: PgPool,
    /// With the liveness check.
    pool: TenantPool,
}

async fn fixture(signed: bool, max_connections: u32) -> Fixture {
    let db = testkit::fresh_database(&template(signed)).await;
    let raw = db.pool(Role::Runtime, max_connections).await;
    let plain = if signed {
        let mut owner = db.pool(Role::Owner, 1).await.acquire().await.unwrap();
        let key = rls_guard::schema::binding_key(&mut owner).await.unwrap();
        TenantPool::with_binding_key(raw.clone(), key)
            .await
            .unwrap()
    } else {
        TenantPool::new(raw.clone()).await.unwrap()
    };
    let pool = plain
        .with_session_liveness(SessionLiveness::function("sess.is_live").unwrap())
        .await
        .unwrap();
    Fixture { db, raw, pool }
}

async fn start_session(pool: &TenantPool, tenant: TenantId) -> Uuid {
    let id = Uuid::new_v4();
    let mut tx = pool.begin(&common::ctx(tenant)).await.unwrap();
    sqlx::query("INSERT INTO sess.sessions (tenant_id, id) VALUES ($1, $2)")
        .bind(tenant.as_uuid())
        .bind(id)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    id
}

async fn revoke(pool: &TenantPool, tenant: TenantId, session: Uuid) {
    let mut tx = pool.begin(&common::ctx(tenant)).await.unwrap();
    let n = sqlx::query("UPDATE sess.sessions SET revoked = true WHERE id = $1")
        .bind(session)
        .execute(&mut *tx)
        .await
        .unwrap()
        .rows_affected();
    assert_eq!(n, 1);
    tx.commit().await.unwrap();
}

fn session_ctx(tenant: TenantId, session: Uuid) -> TenantContext {
    TenantContext::for_actor(
        Actor::new(ActorKind::User, ActorId::new_random(), tenant).with_session(session),
    )
}

/// The isolation level a transaction made for `ctx` runs at.
async fn isolation_of(pool: &TenantPool, ctx: &TenantContext) -> String {
    let mut tx = pool.begin(ctx).await.unwrap();
    let level: String = sqlx::query_scalar("SELECT current_setting('transaction_isolation')")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    level
}

/// The runtime role gives itself a session default (`ALTER ROLE CURRENT_USER IN DATABASE ..
/// SET default_transaction_isolation`, which any role may do for itself, after the start-up
/// check has passed) and ends its own other connections so the pool opens new ones. At
/// `REPEATABLE READ` or `SERIALIZABLE` every statement of a transaction reads the snapshot its
/// first statement took — the binding's own liveness check — so the check repeated at `COMMIT`
/// would see the session as it was at `BEGIN` and let a revoked session's write commit.
async fn planted_isolation_default_does_not_blind_the_commit_check(signed: bool, level: &str) {
    let f = fixture(signed, 3).await;
    let tenant = TenantId::new_random();
    let kept = start_session(&f.pool, tenant).await;
    let session = start_session(&f.pool, tenant).await;
    // The attack, as the runtime role.
    let attacker = f.db.pool(Role::Runtime, 1).await;
    sqlx::raw_sql(&format!(
        "ALTER ROLE CURRENT_USER IN DATABASE \"{}\" SET default_transaction_isolation = '{level}'",
        f.db.name()
    ))
    .execute(&attacker)
    .await
    .unwrap();
    sqlx::raw_sql(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = current_database() AND usename = current_user \
           AND pid <> pg_backend_pid()",
    )
    .execute(&attacker)
    .await
    .unwrap();
    // The plant took: new connections default to the planted level.
    let mut seen = String::new();
    for _ in 0..5 {
        if let Ok(level) = sqlx::query_scalar::<_, String>("SHOW default_transaction_isolation")
            .fetch_one(&f.raw)
            .await
        {
            seen = level;
            break;
        }
    }
    assert_eq!(seen, level, "the planted default never reached the pool");
    // Control: a live session's write commits.
    common::insert_project(&f.pool, &session_ctx(tenant, kept), "live-write")
        .await
        .unwrap();
    // The attack's target: a write in flight when the session is revoked.
    let ctx = session_ctx(tenant, session);
    let mut tx = f.pool.begin(&ctx).await.unwrap();
    sqlx::query("INSERT INTO projects (tenant_id, name) VALUES ($1, 'after-revocation')")
        .bind(tenant.as_uuid())
        .execute(&mut *tx)
        .await
        .unwrap();
    revoke(&f.pool, tenant, session).await;
    let committed = tx.commit().await;
    assert!(
        matches!(committed, Err(RlsError::SessionEnded)),
        "{level} (signed: {signed}): {committed:?}"
    );
    assert_eq!(common::projects_named(&f.db, "after-revocation").await, 0);
    assert_eq!(common::projects_named(&f.db, "live-write").await, 1);
    // A writing transaction runs at READ COMMITTED whatever the default, so its COMMIT reads
    // the session afresh.
    assert_eq!(
        isolation_of(&f.pool, &session_ctx(tenant, kept)).await,
        "read committed"
    );
    assert_eq!(
        isolation_of(&f.pool, &common::ctx(tenant)).await,
        "read committed"
    );
    drop(f.raw);
}

#[tokio::test]
async fn a_repeatable_read_default_planted_by_the_runtime_role_does_not_let_a_revoked_session_commit()
 {
    planted_isolation_default_does_not_blind_the_commit_check(false, "repeatable read").await;
}

#[tokio::test]
async fn a_serializable_default_planted_by_the_runtime_role_does_not_let_a_revoked_session_commit()
{
    planted_isolation_default_does_not_blind_the_commit_check(false, "serializable").await;
}

#[tokio::test]
async fn a_planted_isolation_default_does_not_blind_the_commit_check_with_signed_bindings() {
    planted_isolation_default_does_not_blind_the_commit_check(true, "repeatable read").await;
}

/// What SQL injected into a session's transaction tries, to switch the check off for later
/// statements on the same (only) pooled connection, or to shadow what it calls. The settings
/// are accepted by PostgreSQL (any role may set them) and change nothing; the rest is refused.
const PLANTS: &[(&str, bool)] = &[
    ("SET app.require_live_session = 'off'", true),
    (
        "SELECT set_config('app.require_live_session', 'off', false)",
        true,
    ),
    ("SET search_path = public, pg_temp, sess, app", true),
    ("SET SESSION search_path = pg_temp", true),
    ("SET plpgsql.check_asserts = off", true),
    (
        "SET default_transaction_isolation = 'repeatable read'",
        true,
    ),
    ("SET session_replication_role = replica", false),
    ("SET ROLE testkit_owner", false),
    ("SET SESSION AUTHORIZATION testkit_owner", false),
    (
        "CREATE TEMP TABLE sessions (tenant_id uuid, id uuid)",
        false,
    ),
    (
        "CREATE FUNCTION pg_temp.is_live(uuid, uuid) RETURNS boolean \
         LANGUAGE sql AS 'SELECT true'",
        false,
    ),
    (
        "CREATE FUNCTION public.is_live(uuid, uuid) RETURNS boolean \
         LANGUAGE sql AS 'SELECT true'",
        false,
    ),
    (
        "CREATE OR REPLACE FUNCTION sess.is_live(tenant uuid, session uuid) RETURNS boolean \
         LANGUAGE sql STABLE AS 'SELECT true'",
        false,
    ),
    (
        "CREATE OR REPLACE FUNCTION app.require_live_session(live boolean) RETURNS boolean \
         LANGUAGE sql AS 'SELECT true'",
        false,
    ),
    (
        "CREATE OPERATOR public.= (LEFTARG = uuid, RIGHTARG = uuid, FUNCTION = uuid_ne)",
        false,
    ),
    (
        "ALTER TABLE sess.sessions DISABLE ROW LEVEL SECURITY",
        false,
    ),
];

async fn injected_settings_do_not_switch_the_check_off(signed: bool) {
    // One connection: every statement below runs on the connection the attack ran on.
    let f = fixture(signed, 1).await;
    let tenant = TenantId::new_random();
    let session = start_session(&f.pool, tenant).await;
    let other = start_session(&f.pool, tenant).await;
    let ctx = session_ctx(tenant, session);
    common::add_project(&f.pool, tenant, "existing").await;
    for (sql, accepted) in PLANTS {
        let mut tx = f.pool.begin(&ctx).await.unwrap();
        let ran = sqlx::raw_sql(sql).execute(&mut *tx).await;
        assert_eq!(ran.is_ok(), *accepted, "{sql}: {ran:?}");
        if ran.is_ok() {
            tx.commit().await.unwrap();
        } else {
            tx.rollback().await.unwrap();
        }
    }
    // Mid-flight: the session is revoked while injected SQL turns "the check" off for the rest
    // of the transaction; its write does not commit.
    let mut tx = f.pool.begin(&ctx).await.unwrap();
    sqlx::raw_sql(
        "SET LOCAL app.require_live_session = 'off'; \
         SET LOCAL search_path = pg_temp, public; \
         SELECT set_config('app.require_live_session', 'false', true)",
    )
    .execute(&mut *tx)
    .await
    .unwrap();
    sqlx::query("INSERT INTO projects (tenant_id, name) VALUES ($1, 'injected-write')")
        .bind(tenant.as_uuid())
        .execute(&mut *tx)
        .await
        .unwrap();
    // The revocation needs the (only) connection: it is made on a connection of its own.
    let revoker = if signed {
        let mut owner = f.db.pool(Role::Owner, 1).await.acquire().await.unwrap();
        let key = rls_guard::schema::binding_key(&mut owner).await.unwrap();
        TenantPool::with_binding_key(f.db.pool(Role::Runtime, 1).await, key)
            .await
            .unwrap()
    } else {
        TenantPool::new(f.db.pool(Role::Runtime, 1).await)
            .await
            .unwrap()
    };
    revoke(&revoker, tenant, session).await;
    assert!(matches!(tx.commit().await, Err(RlsError::SessionEnded)));
    assert_eq!(common::projects_named(&f.db, "injected-write").await, 0);
    // Every later statement for the revoked session is refused on that same connection.
    assert!(matches!(
        common::read_names(&f.pool, &ctx).await,
        Err(RlsError::SessionEnded)
    ));
    assert!(matches!(
        common::insert_project(&f.pool, &ctx, "later-write").await,
        Err(RlsError::SessionEnded)
    ));
    assert!(matches!(
        f.pool.begin_read_only(&ctx).await,
        Err(RlsError::SessionEnded)
    ));
    assert_eq!(common::projects_named(&f.db, "later-write").await, 0);
    // Control: the tenant's other session reads and writes on the same connection.
    let live = session_ctx(tenant, other);
    common::insert_project(&f.pool, &live, "other-session")
        .await
        .unwrap();
    assert_eq!(
        common::read_names(&f.pool, &live).await.unwrap(),
        ["existing", "other-session"]
    );
}

#[tokio::test]
async fn settings_and_objects_planted_by_injected_sql_do_not_switch_the_check_off() {
    injected_settings_do_not_switch_the_check_off(false).await;
}

#[tokio::test]
async fn settings_and_objects_planted_by_injected_sql_do_not_switch_the_check_off_signed() {
    injected_settings_do_not_switch_the_check_off(true).await;
}

/// Statement shapes whose parts PostgreSQL might run before the wrapper's liveness check: an
/// uncorrelated sub-select (an init plan), a CTE of the statement's own, a set operation, row
/// locks, a `LIMIT`, a function scan. Each reads for a live session and is refused for a
/// revoked one.
#[tokio::test]
async fn no_statement_shape_lets_a_bound_read_run_before_the_check() {
    let f = fixture(false, 2).await;
    let tenant = TenantId::new_random();
    common::add_project(&f.pool, tenant, "secret-project").await;
    let session = start_session(&f.pool, tenant).await;
    let other = start_session(&f.pool, tenant).await;
    let revoked = session_ctx(tenant, session);
    let live = session_ctx(tenant, other);
    revoke(&f.pool, tenant, session).await;
    let shapes: &[&'static str] = &[
        "SELECT name FROM projects",
        "SELECT (SELECT string_agg(name, ',') FROM projects) AS name",
        "WITH p AS MATERIALIZED (SELECT name FROM projects) SELECT name FROM p",
        "SELECT name FROM projects UNION ALL SELECT name FROM projects",
        "SELECT name FROM projects FOR SHARE",
        "SELECT name FROM projects FOR UPDATE",
        "SELECT name FROM projects LIMIT 1",
        "SELECT name FROM projects ORDER BY name OFFSET 0",
        "SELECT n AS name FROM unnest(ARRAY(SELECT name FROM projects)) AS n",
        "SELECT name FROM projects WHERE EXISTS (SELECT 1 FROM projects)",
    ];
    for sql in shapes {
        let read: Vec<(String,)> = f.pool.read(&live, sql).fetch_all().await.unwrap();
        assert!(
            read.iter().any(|(n,)| n.contains("secret-project")),
            "control: {sql}"
        );
        let refused = f.pool.read(&revoked, sql).fetch_all::<(String,)>().await;
        assert!(
            matches!(refused, Err(RlsError::SessionEnded)),
            "{sql}: {refused:?}"
        );
    }
}

/// Documented (threat model §4): statements inside a transaction bound before a revocation are
/// not asked again until its `COMMIT`. A read-only transaction so begun reads on, but it cannot
/// be turned into one that writes: its mode is fixed by the binding's own statement, and its
/// end is a `ROLLBACK`.
#[tokio::test]
async fn a_read_only_transaction_begun_before_revocation_cannot_write_after_it() {
    let f = fixture(false, 3).await;
    let tenant = TenantId::new_random();
    common::add_project(&f.pool, tenant, "seen").await;
    let session = start_session(&f.pool, tenant).await;
    let ctx = session_ctx(tenant, session);
    let mut tx = f.pool.begin_read_only(&ctx).await.unwrap();
    revoke(&f.pool, tenant, session).await;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM projects")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(n, 1, "the documented window: a read inside the transaction");
    // Its mode cannot be changed after the binding's statement, and a write is refused.
    for sql in [
        "SET TRANSACTION READ WRITE",
        "SET transaction_read_only = off",
        "INSERT INTO projects (tenant_id, name) \
         VALUES (current_setting('app.tenant_id')::uuid, 'ro-write')",
    ] {
        sqlx::raw_sql("SAVEPOINT attempt")
            .execute(&mut *tx)
            .await
            .unwrap();
        assert!(sqlx::raw_sql(sql).execute(&mut *tx).await.is_err(), "{sql}");
        sqlx::raw_sql("ROLLBACK TO SAVEPOINT attempt")
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    // A new transaction or read for the revoked session is refused from the revocation on.
    assert!(matches!(
        f.pool.begin_read_only(&ctx).await,
        Err(RlsError::SessionEnded)
    ));
    assert_eq!(common::projects_named(&f.db, "ro-write").await, 0);
}

/// `signed_binding` hands out a binding for statements the caller writes itself, which would
/// not ask whether the session is live: a revoked session's context could write through it.
/// It is refused for every context carrying a session (live or not), and still given for work
/// without one.
async fn own_statement_binding_is_refused_for_a_session(signed: bool) {
    let f = fixture(signed, 2).await;
    let tenant = TenantId::new_random();
    let live = start_session(&f.pool, tenant).await;
    let revoked = start_session(&f.pool, tenant).await;
    revoke(&f.pool, tenant, revoked).await;
    for session in [live, revoked] {
        let refused = f.pool.signed_binding(&session_ctx(tenant, session)).await;
        assert!(
            matches!(refused, Err(RlsError::SessionBindingRefused)),
            "signed: {signed}: {refused:?}"
        );
    }
    // Control: a context without a session gets its binding, and it binds a write.
    let job = common::ctx(tenant);
    let binding = f.pool.signed_binding(&job).await.unwrap();
    assert_eq!(binding.is_some(), signed);
    if let Some(b) = binding {
        let mut tx = f.raw.begin().await.unwrap();
        sqlx::query("SELECT app.bind($1, $2, $3, $4)")
            .bind(&b.tenant)
            .bind(&b.actor)
            .bind(&b.issued_at)
            .bind(&b.signature)
            .execute(&mut *tx)
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO projects (tenant_id, name) VALUES (app.current_tenant_id(), 'own-bind')",
        )
        .execute(&mut *tx)
        .await
        .unwrap();
        sqlx::raw_sql(&format!(
            "SET LOCAL app.commit_binding = '{tenant}:{}'",
            b.actor
        ))
        .execute(&mut *tx)
        .await
        .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(common::projects_named(&f.db, "own-bind").await, 1);
    }
}

#[tokio::test]
async fn a_binding_for_own_statements_is_not_handed_out_for_a_session() {
    own_statement_binding_is_refused_for_a_session(false).await;
}

#[tokio::test]
async fn a_signed_binding_for_own_statements_is_not_handed_out_for_a_session() {
    own_statement_binding_is_refused_for_a_session(true).await;
}
