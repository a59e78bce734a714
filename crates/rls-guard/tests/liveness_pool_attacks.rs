//! Attacks on the inlined session-liveness check where the ordinary tenant-bound pool is not
//! the whole story: staff acting in another tenant under a grant (the check is made under a
//! binding to the staff member's own tenant, then the target is bound), and pools whose
//! bindings are signed. The adversary holds the runtime role (SQL injection, a compromised
//! application server without the binding key) or a session that has been revoked or has
//! expired. The check is the set-returning, inlinable form `magic-auth` installs (mirrored
//! here on a session table of the fixture's own, with the same "an ended session stays ended"
//! trigger), so the liveness answer is planned into each statement and cached with its plan.
//! Every attack is paired with the legitimate operation in the same setup.
// Integration tests: a failed unwrap is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::LazyLock;

use rls_guard::{BindingKey, RlsError, SessionLiveness, TenantPool};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tenant_scope::{Actor, ActorId, ActorKind, CrossTenantAuthority, TenantContext, TenantId};
use testkit::{Role, TestDb};
use uuid::Uuid;

/// Sessions that can only be ended (as `auth.sessions` under `magic-auth`'s `sessions_fixed`
/// trigger), and the check over them in the inlinable form of `auth.session_is_live`: one SQL
/// `SELECT`, `STABLE`, no `SET` clause, every name qualified, one `true` row when live.
const SESSIONS_SQL: &str = "
CREATE SCHEMA sess;
GRANT USAGE ON SCHEMA sess TO testkit_runtime;
CREATE TABLE sess.sessions (
    tenant_id uuid NOT NULL,
    id uuid NOT NULL,
    revoked_at timestamptz,
    expires_at timestamptz NOT NULL DEFAULT now() + interval '1 hour',
    PRIMARY KEY (tenant_id, id)
);
GRANT SELECT, INSERT, UPDATE ON sess.sessions TO testkit_runtime;
CREATE FUNCTION sess.fixed() RETURNS trigger
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
    AS $fixed$
BEGIN
    IF NEW.tenant_id IS DISTINCT FROM OLD.tenant_id OR NEW.id IS DISTINCT FROM OLD.id
       OR (OLD.revoked_at IS NOT NULL AND NEW.revoked_at IS DISTINCT FROM OLD.revoked_at)
       OR NEW.expires_at > OLD.expires_at THEN
        RAISE EXCEPTION 'a session may only be ended';
    END IF;
    RETURN NEW;
END
$fixed$;
CREATE TRIGGER sessions_fixed BEFORE UPDATE ON sess.sessions
    FOR EACH ROW EXECUTE FUNCTION sess.fixed();
ALTER TABLE sess.sessions ENABLE ALWAYS TRIGGER sessions_fixed;
CREATE FUNCTION sess.session_is_live(tenant uuid, session uuid) RETURNS SETOF boolean
    LANGUAGE sql STABLE SECURITY INVOKER ROWS 1
    AS $live$
SELECT true FROM sess.sessions s
WHERE s.tenant_id OPERATOR(pg_catalog.=) $1 AND s.id OPERATOR(pg_catalog.=) $2
  AND s.revoked_at IS NULL
  AND s.expires_at OPERATOR(pg_catalog.>) pg_catalog.statement_timestamp()
$live$;
REVOKE ALL ON FUNCTION sess.session_is_live(uuid, uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sess.session_is_live(uuid, uuid) TO testkit_runtime;
";

const CHECK: &str = "sess.session_is_live";

fn template(signed: bool) -> testkit::Template {
    let sessions = rls_guard::schema::tenant_table_sql("sess.sessions").unwrap();
    let signing = if signed {
        rls_guard::schema::ENABLE_SIGNED_BINDINGS_SQL
    } else {
        ""
    };
    testkit::Template::new(
        if signed {
            "rls_guard_liveness_pool_attacks_signed"
        } else {
            "rls_guard_liveness_pool_attacks"
        },
        format!(
            "{}\n{SESSIONS_SQL}\n{sessions}\n{signing}",
            common::schema_sql()
        ),
    )
}

/// The process's one cross-tenant authority, shared by every test of this binary.
static AUTHORITY: LazyLock<CrossTenantAuthority<common::Accept>> =
    LazyLock::new(|| CrossTenantAuthority::install(common::Accept).unwrap());

struct Fixture {
    db: TestDb,
    /// The pool with the inlined liveness check (signed bindings when the fixture is signed).
    pool: TenantPool,
    /// The binding key, when signed.
    key: Option<BindingKey>,
    /// A second pool of the same kind, of one connection: for sign-ins and revocations while
    /// `pool`'s connections are held by a transaction.
    other: TenantPool,
}

async fn database(signed: bool) -> (TestDb, Option<BindingKey>) {
    let db = testkit::fresh_database(&template(signed)).await;
    let key = if signed {
        let mut owner = db.pool(Role::Owner, 1).await.acquire().await.unwrap();
        Some(rls_guard::schema::binding_key(&mut owner).await.unwrap())
    } else {
        None
    };
    (db, key)
}

/// The application's pool over `raw`: signed when `key` is given, with the inlined check.
async fn app_pool(raw: PgPool, key: Option<&BindingKey>) -> TenantPool {
    let plain = match key {
        Some(key) => TenantPool::with_binding_key(raw, key.clone())
            .await
            .unwrap(),
        None => TenantPool::new(raw).await.unwrap(),
    };
    plain
        .with_session_liveness(SessionLiveness::function(CHECK).unwrap())
        .await
        .unwrap()
}

/// A fixture whose pool holds at most `max` connections (with 1, every statement of the test
/// runs on the same server connection, so its cached plans are the ones used).
async fn fixture(signed: bool, max: u32) -> Fixture {
    let (db, key) = database(signed).await;
    let pool = app_pool(db.pool(Role::Runtime, max).await, key.as_ref()).await;
    let other = app_pool(db.pool(Role::Runtime, 1).await, key.as_ref()).await;
    Fixture {
        db,
        pool,
        key,
        other,
    }
}

/// A fixture whose pool closes every connection on release, so each acquisition opens a new
/// one (which starts with whatever role defaults are in place at that moment).
async fn fresh_connection_fixture(signed: bool) -> Fixture {
    let (db, key) = database(signed).await;
    let raw = PgPoolOptions::new()
        .max_connections(2)
        .min_connections(0)
        .after_release(|_, _| Box::pin(async { Ok(false) }))
        .connect_with(db.options(Role::Runtime))
        .await
        .unwrap();
    let pool = app_pool(raw, key.as_ref()).await;
    let other = app_pool(db.pool(Role::Runtime, 1).await, key.as_ref()).await;
    Fixture {
        db,
        pool,
        key,
        other,
    }
}

/// A session row of `tenant`, written as a sign-in would (a binding without a session).
async fn start_session(pool: &TenantPool, tenant: TenantId) -> Uuid {
    let id = Uuid::new_v4();
    plant_row(pool, tenant, id).await.unwrap();
    id
}

/// A live session row `(tenant, id)` written in a transaction bound to `tenant` for work
/// without a session: what SQL injected into any such transaction can do as the runtime role.
async fn plant_row(pool: &TenantPool, tenant: TenantId, id: Uuid) -> Result<(), RlsError> {
    let mut tx = pool.begin(&common::ctx(tenant)).await?;
    sqlx::query("INSERT INTO sess.sessions (tenant_id, id) VALUES ($1, $2)")
        .bind(tenant.as_uuid())
        .bind(id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// Runs `sql` (with `$1` = the session id) in a transaction bound to `tenant` without a session.
async fn change_session(pool: &TenantPool, tenant: TenantId, session: Uuid, sql: &str) -> u64 {
    let mut tx = pool.begin(&common::ctx(tenant)).await.unwrap();
    let n = sqlx::query(sql)
        .bind(session)
        .execute(&mut *tx)
        .await
        .unwrap()
        .rows_affected();
    tx.commit().await.unwrap();
    n
}

async fn revoke(pool: &TenantPool, tenant: TenantId, session: Uuid) {
    let n = change_session(
        pool,
        tenant,
        session,
        "UPDATE sess.sessions SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL",
    )
    .await;
    assert_eq!(n, 1, "revocation");
}

async fn expire(pool: &TenantPool, tenant: TenantId, session: Uuid) {
    let n = change_session(
        pool,
        tenant,
        session,
        "UPDATE sess.sessions SET expires_at = now() - interval '1 second' WHERE id = $1",
    )
    .await;
    assert_eq!(n, 1, "expiry");
}

fn staff_actor(home: TenantId, session: Uuid) -> Actor {
    Actor::new(ActorKind::Staff, ActorId::new_random(), home).with_session(session)
}

/// A staff member of `home` acting through `session`, granted `target`.
async fn staff_in(home: TenantId, session: Uuid, target: TenantId) -> TenantContext {
    AUTHORITY
        .grant(
            &staff_actor(home, session),
            target,
            "investigating support ticket 4711",
        )
        .await
        .unwrap()
}

/// A bound read that matches no row: the check must not hang on the statement having rows.
async fn read_nothing(pool: &TenantPool, ctx: &TenantContext) -> Result<Option<String>, RlsError> {
    pool.read(ctx, "SELECT name FROM projects WHERE name = $1")
        .bind("no-such-project")
        .fetch_optional::<(String,)>()
        .await
        .map(|row| row.map(|(n,)| n))
}

async fn read_in_transaction(pool: &TenantPool, ctx: &TenantContext) -> Result<i64, RlsError> {
    let mut tx = pool.begin_read_only(ctx).await?;
    let n = sqlx::query_scalar("SELECT count(*) FROM projects")
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(n)
}

/// Every way the application reaches data for `ctx`; `Ok` with what the bound read saw.
/// The bound read runs eight times first, so its plan is cached (generic after five runs).
async fn every_path(
    pool: &TenantPool,
    ctx: &TenantContext,
    name: &str,
) -> Result<Vec<String>, RlsError> {
    for _ in 0..8 {
        common::read_names(pool, ctx).await?;
    }
    assert_eq!(read_nothing(pool, ctx).await?, None);
    read_in_transaction(pool, ctx).await?;
    common::insert_project(pool, ctx, name).await?;
    common::read_names(pool, ctx).await
}

/// Each path on its own must refuse `ctx` with `SessionEnded`, and `name` is never written.
async fn assert_refused(f: &Fixture, ctx: &TenantContext, name: &str, why: &str) {
    let r = common::read_names(&f.pool, ctx).await;
    assert!(
        matches!(r, Err(RlsError::SessionEnded)),
        "{why}: read {r:?}"
    );
    let r = read_nothing(&f.pool, ctx).await;
    assert!(
        matches!(r, Err(RlsError::SessionEnded)),
        "{why}: empty read {r:?}"
    );
    let r = read_in_transaction(&f.pool, ctx).await;
    assert!(
        matches!(r, Err(RlsError::SessionEnded)),
        "{why}: read-only transaction {r:?}"
    );
    let r = common::insert_project(&f.pool, ctx, name).await;
    assert!(
        matches!(r, Err(RlsError::SessionEnded)),
        "{why}: write {r:?}"
    );
    let r = f.pool.signed_binding(ctx).await;
    assert!(
        matches!(r, Err(RlsError::SessionBindingRefused)),
        "{why}: own-statement binding {r:?}"
    );
    assert_eq!(
        common::projects_named(&f.db, name).await,
        0,
        "{why}: written"
    );
}

async fn session_rows(db: &TestDb, id: Uuid) -> i64 {
    let admin = db.pool(Role::Admin, 1).await;
    sqlx::query_scalar("SELECT count(*) FROM sess.sessions WHERE id = $1")
        .bind(id)
        .fetch_one(&admin)
        .await
        .unwrap()
}

/// A revoked and an expired staff session, each under a live grant, reach nothing in the
/// tenant granted: not through a bound read (its plan cached while the session was live, on
/// the same connection), a read that matches no row, a read-only transaction, a write, or a
/// binding for the caller's own statements. Control: the same staff member's live session
/// does all of it, and sees the target tenant only.
async fn ended_staff_sessions_reach_nothing(signed: bool) {
    let f = fixture(signed, 1).await;
    let home = TenantId::new_random();
    let target = TenantId::new_random();
    common::add_project(&f.pool, home, "home-project").await;
    common::add_project(&f.pool, target, "target-secret").await;
    let revoked = start_session(&f.pool, home).await;
    let expired = start_session(&f.pool, home).await;
    let kept = start_session(&f.pool, home).await;
    let revoked_ctx = staff_in(home, revoked, target).await;
    let expired_ctx = staff_in(home, expired, target).await;
    let kept_ctx = staff_in(home, kept, target).await;
    // Live: every path works, in the target tenant only.
    assert_eq!(
        every_path(&f.pool, &revoked_ctx, "by-revoked-while-live")
            .await
            .unwrap(),
        ["by-revoked-while-live", "target-secret"]
    );
    every_path(&f.pool, &expired_ctx, "by-expired-while-live")
        .await
        .unwrap();
    revoke(&f.pool, home, revoked).await;
    expire(&f.pool, home, expired).await;
    assert_refused(&f, &revoked_ctx, "after-revocation", "revoked").await;
    assert_refused(&f, &expired_ctx, "after-expiry", "expired").await;
    // A new grant for the ended session changes nothing: the session is what is checked.
    let regranted = staff_in(home, revoked, target).await;
    assert_refused(&f, &regranted, "regranted", "regranted").await;
    // Control, on the same connection: the live session goes on, and the tenant's own work.
    let seen = every_path(&f.pool, &kept_ctx, "by-kept").await.unwrap();
    assert_eq!(
        seen,
        [
            "by-expired-while-live",
            "by-kept",
            "by-revoked-while-live",
            "target-secret"
        ]
    );
    assert_eq!(common::visible(&f.pool, home).await.len(), 1);
}

#[tokio::test]
async fn a_revoked_or_expired_staff_session_reaches_nothing_in_the_granted_tenant() {
    ended_staff_sessions_reach_nothing(false).await;
}

#[tokio::test]
async fn a_revoked_or_expired_staff_session_reaches_nothing_in_the_granted_tenant_signed() {
    ended_staff_sessions_reach_nothing(true).await;
}

/// The runtime role writes live rows carrying the revoked staff session's id in the tenant
/// acted in and in a third tenant, and tries one in the staff member's own tenant (refused by
/// the key) and to revive the revoked row (refused by the trigger). None makes the cross-tenant
/// check pass: it asks about the session's own tenant, under that tenant's binding. Nor does a
/// staff context naming, as its session, a live session that exists only in the target tenant
/// (a target user's), or only in a third one. Control: the planted rows are there (the
/// premise), and a live staff session works in the same setup.
async fn planted_rows_do_not_revive_a_staff_session(signed: bool) {
    let f = fixture(signed, 2).await;
    let home = TenantId::new_random();
    let target = TenantId::new_random();
    let third = TenantId::new_random();
    common::add_project(&f.pool, target, "target-secret").await;
    let session = start_session(&f.pool, home).await;
    let kept = start_session(&f.pool, home).await;
    let ctx = staff_in(home, session, target).await;
    every_path(&f.pool, &ctx, "while-live").await.unwrap();
    revoke(&f.pool, home, session).await;

    plant_row(&f.pool, target, session).await.unwrap();
    plant_row(&f.pool, third, session).await.unwrap();
    let twin = plant_row(&f.pool, home, session).await;
    assert!(twin.is_err(), "a second row of (home, id): {twin:?}");
    let mut tx = f.pool.begin(&common::ctx(home)).await.unwrap();
    let revived = sqlx::query("UPDATE sess.sessions SET revoked_at = NULL WHERE id = $1")
        .bind(session)
        .execute(&mut *tx)
        .await;
    assert!(revived.is_err(), "revived: {revived:?}");
    tx.rollback().await.unwrap();
    assert_eq!(session_rows(&f.db, session).await, 3, "premise: the plants");

    assert_refused(&f, &ctx, "after-plants", "twins in other tenants").await;
    // A staff context naming a session that is live only in the target tenant (a target
    // user's), or only in a third tenant.
    let targets_own = start_session(&f.pool, target).await;
    let ctx = staff_in(home, targets_own, target).await;
    assert_refused(&f, &ctx, "target-session", "a target tenant's session").await;
    let elsewhere = start_session(&f.pool, third).await;
    let ctx = staff_in(home, elsewhere, target).await;
    assert_refused(&f, &ctx, "third-session", "a third tenant's session").await;
    // Control: the target user's session works in its own tenant, and a live staff session
    // works across.
    let user = TenantContext::for_actor(
        Actor::new(ActorKind::User, ActorId::new_random(), target).with_session(targets_own),
    );
    assert_eq!(
        common::read_names(&f.pool, &user).await.unwrap(),
        ["target-secret", "while-live"]
    );
    let live = staff_in(home, kept, target).await;
    every_path(&f.pool, &live, "by-kept").await.unwrap();
}

#[tokio::test]
async fn live_rows_planted_in_other_tenants_do_not_revive_a_staff_session() {
    planted_rows_do_not_revive_a_staff_session(false).await;
}

#[tokio::test]
async fn live_rows_planted_in_other_tenants_do_not_revive_a_staff_session_signed() {
    planted_rows_do_not_revive_a_staff_session(true).await;
}

/// Role defaults the runtime role gives itself for this database (`ALTER ROLE CURRENT_USER IN
/// DATABASE .. SET`, after the pool's start-up check) that every later connection of the pool
/// starts with: generic plans forced, planner switches, parallel query forced (named
/// `force_parallel_mode` before PostgreSQL 16, `debug_parallel_query` after; whichever the
/// server knows is planted), pg_temp and the session schema first on the search path,
/// serializable isolation, `transform_null_equals`. The test adds a default tenant, actor and
/// binding proof.
const PLANTS: &[(&str, &str)] = &[
    ("plan_cache_mode", "force_generic_plan"),
    ("enable_indexscan", "off"),
    ("enable_indexonlyscan", "off"),
    ("enable_bitmapscan", "off"),
    ("enable_seqscan", "off"),
    ("enable_nestloop", "off"),
    ("enable_hashjoin", "off"),
    ("enable_mergejoin", "off"),
    ("enable_material", "off"),
    ("enable_memoize", "off"),
    ("parallel_setup_cost", "0"),
    ("parallel_tuple_cost", "0"),
    ("min_parallel_table_scan_size", "0"),
    ("debug_parallel_query", "on"),
    ("force_parallel_mode", "on"),
    ("search_path", "pg_temp, sess, public, app"),
    ("transform_null_equals", "on"),
    ("default_transaction_isolation", "serializable"),
    ("from_collapse_limit", "1"),
    ("join_collapse_limit", "1"),
    ("jit", "off"),
];

async fn planted_defaults_do_not_pass_a_revoked_staff_session(signed: bool) {
    let f = fresh_connection_fixture(signed).await;
    let home = TenantId::new_random();
    let target = TenantId::new_random();
    common::add_project(&f.pool, target, "target-secret").await;
    let session = start_session(&f.pool, home).await;
    let kept = start_session(&f.pool, home).await;
    let ctx = staff_in(home, session, target).await;
    let live = staff_in(home, kept, target).await;
    every_path(&f.pool, &ctx, "before-plants").await.unwrap();

    let attacker = f.db.pool(Role::Runtime, 1).await;
    let mut plants: Vec<(String, String)> = PLANTS
        .iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect();
    // The session's own tenant and actor as defaults (a check that read the setting instead
    // of the binding would see the home tenant) and a default proof: PostgreSQL refuses these
    // (a non-superuser may not give itself a default for an unregistered parameter), tried
    // anyway.
    plants.push(("app.tenant_id".into(), home.to_string()));
    plants.push(("app.actor_id".into(), ctx.actor().unwrap().id().to_string()));
    plants.push(("app.binding_proof".into(), "0".repeat(64)));
    let mut planted = Vec::new();
    let mut refused = Vec::new();
    for (name, value) in &plants {
        // A list of names, unquoted (quoted, it would be one schema named after the list).
        let value = if name == "search_path" {
            value.clone()
        } else {
            format!("'{value}'")
        };
        let sql = format!(
            "ALTER ROLE CURRENT_USER IN DATABASE \"{}\" SET {name} = {value}",
            f.db.name()
        );
        match sqlx::raw_sql(&sql).execute(&attacker).await {
            Ok(_) => planted.push(name.clone()),
            Err(e) => refused.push(format!("{name}: {e}")),
        }
    }
    for needed in [
        "plan_cache_mode",
        "search_path",
        "enable_nestloop",
        "default_transaction_isolation",
    ] {
        assert!(
            planted.iter().any(|p| p == needed),
            "premise: {planted:?}, refused: {refused:?}"
        );
    }
    let seen: String = sqlx::query_scalar("SHOW plan_cache_mode")
        .fetch_one(f.pool.pool())
        .await
        .unwrap();
    assert_eq!(seen, "force_generic_plan", "the plants reach the pool");
    let seen: String = sqlx::query_scalar("SHOW search_path")
        .fetch_one(f.pool.pool())
        .await
        .unwrap();
    assert_eq!(
        seen, "pg_temp, sess, public, app",
        "the plants reach the pool"
    );

    revoke(&f.pool, home, session).await;
    assert_refused(&f, &ctx, "after-plants", "planted defaults").await;
    // Control: a live staff session reads and writes across under the same plants.
    let seen = every_path(&f.pool, &live, "by-kept").await.unwrap();
    assert_eq!(seen, ["before-plants", "by-kept", "target-secret"]);
    let admin = f.db.pool(Role::Admin, 1).await;
    sqlx::raw_sql(&format!(
        "ALTER ROLE testkit_runtime IN DATABASE \"{}\" RESET ALL",
        f.db.name()
    ))
    .execute(&admin)
    .await
    .unwrap();
}

#[tokio::test]
async fn role_defaults_planted_by_the_runtime_role_do_not_pass_a_revoked_staff_session() {
    planted_defaults_do_not_pass_a_revoked_staff_session(false).await;
}

#[tokio::test]
async fn role_defaults_planted_by_the_runtime_role_do_not_pass_a_revoked_staff_session_signed() {
    planted_defaults_do_not_pass_a_revoked_staff_session(true).await;
}

/// SQL injected into a live staff member's cross-tenant transaction leaves what it can on the
/// (only) pooled connection for later: session-level settings (the home tenant and actor, a
/// search path with pg_temp and the session schema first, generic plans), and a prepared
/// statement. The staff session is then revoked; every later statement for it on that same
/// connection is refused. Control: another live staff session works on it.
async fn injected_state_does_not_outlive_a_staff_revocation(signed: bool) {
    let f = fixture(signed, 1).await;
    let home = TenantId::new_random();
    let target = TenantId::new_random();
    common::add_project(&f.pool, target, "target-secret").await;
    let session = start_session(&f.pool, home).await;
    let kept = start_session(&f.pool, home).await;
    let ctx = staff_in(home, session, target).await;
    let actor = ctx.actor().unwrap().id();
    let plants = [
        format!("SELECT set_config('app.tenant_id', '{home}', false)"),
        format!("SELECT set_config('app.actor_id', '{actor}', false)"),
        "SET search_path = pg_temp, sess, public".to_owned(),
        "SET plan_cache_mode = force_generic_plan".to_owned(),
        "SET default_transaction_isolation = 'repeatable read'".to_owned(),
        "SELECT set_config('app.binding_proof', \
         coalesce(current_setting('app.binding_proof', true), ''), false)"
            .to_owned(),
    ];
    for sql in &plants {
        let mut tx = f.pool.begin(&ctx).await.unwrap();
        sqlx::raw_sql(sql).execute(&mut *tx).await.unwrap();
        tx.commit().await.unwrap();
    }
    // A statement prepared by SQL fails the hand-back: the connection is closed, not reused.
    let mut tx = f.pool.begin(&ctx).await.unwrap();
    sqlx::raw_sql("PREPARE planted AS SELECT true")
        .execute(&mut *tx)
        .await
        .unwrap();
    assert!(tx.commit().await.is_err(), "a prepared statement survived");
    every_path(&f.pool, &ctx, "while-live").await.unwrap();
    revoke(&f.pool, home, session).await;
    assert_refused(&f, &ctx, "after-plants", "injected session state").await;
    // Control: another live staff session, same connection.
    let live = staff_in(home, kept, target).await;
    assert_eq!(
        every_path(&f.pool, &live, "by-kept").await.unwrap(),
        ["by-kept", "target-secret", "while-live"]
    );
}

#[tokio::test]
async fn state_injected_into_a_staff_transaction_does_not_outlive_the_revocation() {
    injected_state_does_not_outlive_a_staff_revocation(false).await;
}

#[tokio::test]
async fn state_injected_into_a_staff_transaction_does_not_outlive_the_revocation_signed() {
    injected_state_does_not_outlive_a_staff_revocation(true).await;
}

/// Signed bindings: SQL injected into a live staff member's cross-tenant transaction copies
/// the binding it is under (tenant, actor, proof) and, once the staff session is revoked,
/// replays it: in a later transaction of another tenant's user on the same server connection,
/// and on a connection of its own. The proof is tied to the backend and the transaction, so
/// the replay binds nothing: no tenant, no rows, no write. Control: inside the transaction it
/// was copied from, the same values bind the target tenant.
#[tokio::test]
async fn a_staff_binding_copied_out_of_its_transaction_binds_nothing_later() {
    let f = fixture(true, 1).await;
    let home = TenantId::new_random();
    let target = TenantId::new_random();
    let other = TenantId::new_random();
    common::add_project(&f.pool, target, "target-secret").await;
    common::add_project(&f.pool, other, "other-project").await;
    let session = start_session(&f.pool, home).await;
    let user_session = start_session(&f.pool, other).await;
    let ctx = staff_in(home, session, target).await;

    let mut tx = f.pool.begin(&ctx).await.unwrap();
    let (tenant, actor, proof): (String, String, String) = sqlx::query_as(
        "SELECT current_setting('app.tenant_id'), current_setting('app.actor_id'), \
                current_setting('app.binding_proof')",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    assert_eq!(tenant, target.to_string());
    // Control: under the copied values, in their own transaction, the target is bound.
    let (bound, n): (Option<Uuid>, i64) =
        sqlx::query_as("SELECT app.current_tenant_id(), (SELECT count(*) FROM projects)")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
    assert_eq!((bound, n), (Some(*target.as_uuid()), 1));
    tx.commit().await.unwrap();
    revoke(&f.pool, home, session).await;

    let replay = format!(
        "SELECT set_config('app.tenant_id', '{tenant}', true), \
                set_config('app.actor_id', '{actor}', true), \
                set_config('app.binding_proof', '{proof}', true)"
    );
    let insert = format!("INSERT INTO projects (tenant_id, name) VALUES ('{target}', 'replayed')");
    // In another tenant's live user's transaction, same server connection.
    let user = TenantContext::for_actor(
        Actor::new(ActorKind::User, ActorId::new_random(), other).with_session(user_session),
    );
    let mut tx = f.pool.begin(&user).await.unwrap();
    let own: i64 = sqlx::query_scalar("SELECT count(*) FROM projects")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(own, 1, "control: the user's own tenant is bound");
    sqlx::raw_sql(&replay).execute(&mut *tx).await.unwrap();
    let (bound, n): (Option<Uuid>, i64) =
        sqlx::query_as("SELECT app.current_tenant_id(), (SELECT count(*) FROM projects)")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
    assert_eq!((bound, n), (None, 0), "the replay bound a tenant");
    assert!(sqlx::raw_sql(&insert).execute(&mut *tx).await.is_err());
    tx.rollback().await.unwrap();
    // On a connection of its own.
    let attacker = f.db.pool(Role::Runtime, 1).await;
    let mut conn = attacker.begin().await.unwrap();
    sqlx::raw_sql(&replay).execute(&mut *conn).await.unwrap();
    let (bound, n): (Option<Uuid>, i64) =
        sqlx::query_as("SELECT app.current_tenant_id(), (SELECT count(*) FROM projects)")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
    assert_eq!((bound, n), (None, 0), "the replay bound a tenant");
    assert!(sqlx::raw_sql(&insert).execute(&mut *conn).await.is_err());
    conn.rollback().await.unwrap();
    assert_eq!(common::projects_named(&f.db, "replayed").await, 0);
    assert_refused(&f, &ctx, "after-revocation", "revoked, signed").await;
}

/// Whether `text` holds a run of 64 hex digits (a signature's shape).
fn holds_signature(text: &str) -> bool {
    let mut run = 0;
    for c in text.chars() {
        if c.is_ascii_hexdigit() {
            run += 1;
            if run >= 64 {
                return true;
            }
        } else {
            run = 0;
        }
    }
    false
}

/// The statements of other connections of the runtime role that call `app.bind`, as
/// `pg_stat_activity` shows them to the runtime role.
async fn observed(attacker: &PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT query FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid() \
           AND query LIKE '%app.bind(%'",
    )
    .fetch_all(attacker)
    .await
    .unwrap()
}

/// Signed bindings: what the runtime role can read of other connections (their statements in
/// `pg_stat_activity`) never holds a signature it could replay within its freshness window,
/// for either of the two bindings of a cross-tenant transaction or read (home and target).
/// Control: the statements are there to be read (the observation works), and each binds.
#[tokio::test]
async fn a_cross_tenant_statement_shows_the_runtime_role_no_signature() {
    let f = fixture(true, 1).await;
    assert!(f.key.is_some());
    // Control: the detector finds a real signature (one handed out for work without a session).
    let job = f
        .pool
        .signed_binding(&common::ctx(TenantId::new_random()))
        .await
        .unwrap()
        .unwrap();
    assert!(holds_signature(&format!("app.bind('{}')", job.signature)));
    let home = TenantId::new_random();
    let target = TenantId::new_random();
    common::add_project(&f.pool, target, "target-secret").await;
    let session = start_session(&f.pool, home).await;
    let ctx = staff_in(home, session, target).await;
    let attacker = f.db.pool(Role::Runtime, 1).await;
    // A transaction, held open: its backend shows the binding statement as its last.
    let mut tx = f.pool.begin(&ctx).await.unwrap();
    let seen_tx = observed(&attacker).await;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM projects")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(n, 1);
    tx.commit().await.unwrap();
    // A bound read: the idle connection shows it as its last statement.
    assert_eq!(
        common::read_names(&f.pool, &ctx).await.unwrap(),
        ["target-secret"]
    );
    let seen_read = observed(&attacker).await;
    for (what, seen) in [("transaction", &seen_tx), ("read", &seen_read)] {
        assert!(!seen.is_empty(), "{what}: nothing observed (the control)");
        for text in seen {
            assert!(
                !holds_signature(text),
                "{what}: a signature in the statement text: {text}"
            );
            assert!(
                !text.contains(&home.to_string()) && !text.contains(&target.to_string()),
                "{what}: values in the statement text: {text}"
            );
        }
    }
}

/// A staff write transaction in another tenant, open when its session is revoked: its
/// `COMMIT` binds the staff member's own tenant again to ask, refuses, and nothing it wrote
/// stays. The control: the same transaction of a live session commits, in the tenant it acts
/// in, and a second live staff session's open transaction commits beside a revocation of the
/// first.
async fn an_open_staff_transaction_dies_with_its_session(signed: bool) {
    let f = fixture(signed, 4).await;
    let home = TenantId::new_random();
    let target = TenantId::new_random();
    let ended = start_session(&f.pool, home).await;
    let live = start_session(&f.pool, home).await;
    let ended_ctx = staff_in(home, ended, target).await;
    let live_ctx = staff_in(home, live, target).await;

    // Both open a transaction in the target tenant and write in it.
    let mut doomed = f.pool.begin(&ended_ctx).await.unwrap();
    let mut kept = f.pool.begin(&live_ctx).await.unwrap();
    for (tx, name) in [
        (&mut doomed, "written-before-revocation"),
        (&mut kept, "written-live"),
    ] {
        sqlx::query("INSERT INTO projects (tenant_id, name) VALUES ($1, $2)")
            .bind(target.as_uuid())
            .bind(name)
            .execute(&mut **tx)
            .await
            .unwrap();
    }
    // The revocation commits while both are open.
    revoke(&f.pool, home, ended).await;

    let r = doomed.commit().await;
    assert!(matches!(r, Err(RlsError::SessionEnded)), "{r:?}");
    assert_eq!(
        common::projects_named(&f.db, "written-before-revocation").await,
        0
    );
    // Control: the live session's transaction commits, and its row is the target's.
    kept.commit().await.unwrap();
    assert_eq!(common::projects_named(&f.db, "written-live").await, 1);
    assert_eq!(
        common::read_names(&f.pool, &live_ctx).await.unwrap(),
        vec!["written-live"]
    );
    // The pool's connections are usable afterwards (nothing left bound or aborted).
    for _ in 0..4 {
        assert_eq!(
            common::read_names(&f.pool, &live_ctx).await.unwrap().len(),
            1
        );
        assert!(matches!(
            common::read_names(&f.pool, &ended_ctx).await,
            Err(RlsError::SessionEnded)
        ));
    }
    // Control: a live staff transaction that wrote nothing commits too.
    let quiet = staff_in(home, start_session(&f.pool, home).await, target).await;
    let tx = f.pool.begin(&quiet).await.unwrap();
    tx.commit().await.unwrap();
}

#[tokio::test]
async fn a_staff_write_transaction_open_at_revocation_does_not_commit() {
    an_open_staff_transaction_dies_with_its_session(false).await;
}

#[tokio::test]
async fn a_staff_write_transaction_open_at_revocation_does_not_commit_signed() {
    an_open_staff_transaction_dies_with_its_session(true).await;
}

// ---------------------------------------------------------------------------------------------
// The check a cross-tenant write transaction repeats at its `COMMIT` (`AtCommit::Cross` in
// `pool.rs`): unsigned, the commit binds the staff member's own tenant, asks, and binds the
// tenant acted in again, in the commit's round trip; signed, a freshly signed home/check/target
// statement runs first (a prepared statement, cached by the driver). SQL injected inside the
// staff member's transaction tries to make that commit pass after the session is revoked.

/// Rows named `name` in `tenant` (as the superuser).
async fn rows_in(db: &TestDb, tenant: TenantId, name: &str) -> i64 {
    let admin = db.pool(Role::Admin, 1).await;
    let n = sqlx::query_scalar("SELECT count(*) FROM projects WHERE tenant_id = $1 AND name = $2")
        .bind(tenant.as_uuid())
        .bind(name)
        .fetch_one(&admin)
        .await
        .unwrap();
    admin.close().await;
    n
}

async fn insert(
    tx: &mut sqlx::PgConnection,
    tenant: TenantId,
    name: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO projects (tenant_id, name) VALUES ($1, $2)")
        .bind(tenant.as_uuid())
        .bind(name)
        .execute(tx)
        .await
        .map(drop)
}

/// What SQL injected into a staff write transaction leaves behind for its `COMMIT`: an open
/// savepoint, a search path with `pg_temp` and the session schema first, generic plans, the
/// actor changed, the commit binding forged ahead of time, the transaction made read-only
/// after its write, an isolation default for later transactions. `{home}`, `{target}` and
/// `{actor}` are filled in.
const COMMIT_PLANTS: &[&str] = &[
    "SAVEPOINT injected",
    "SAVEPOINT a; SAVEPOINT b; RELEASE SAVEPOINT b",
    "SET LOCAL search_path = pg_temp, sess, app, public",
    "SET LOCAL plan_cache_mode = force_generic_plan",
    "SET LOCAL enable_indexscan = off; SET LOCAL enable_bitmapscan = off; SET LOCAL enable_seqscan = off",
    "SELECT set_config('app.actor_id', gen_random_uuid()::text, true)",
    "SELECT set_config('app.commit_binding', '{target}:{actor}', true)",
    "SET TRANSACTION READ ONLY",
    "SET LOCAL default_transaction_isolation = 'serializable'",
    "SELECT set_config('app.tenant_id', '{home}', false); \
     SELECT set_config('app.tenant_id', '{target}', true)",
];

/// Each plant, injected after the staff member's write in the target tenant: with the session
/// revoked before `COMMIT`, the commit is refused (the session has ended) and the row is not
/// there; with the session live (the control), the same transaction commits its row, in the
/// target tenant. One pooled connection, so whatever a plant leaves at session level meets
/// every later transaction.
async fn plants_do_not_pass_a_revoked_commit(signed: bool) {
    let f = fixture(signed, 1).await;
    let home = TenantId::new_random();
    let target = TenantId::new_random();
    for (i, plant) in COMMIT_PLANTS.iter().enumerate() {
        for revoked in [false, true] {
            let session = start_session(&f.other, home).await;
            let ctx = staff_in(home, session, target).await;
            let actor = ctx.actor().unwrap().id();
            let sql = plant
                .replace("{home}", &home.to_string())
                .replace("{target}", &target.to_string())
                .replace("{actor}", &actor.to_string());
            let name = format!("plant-{i}-{revoked}");
            let mut tx = f.pool.begin(&ctx).await.unwrap();
            insert(&mut tx, target, &name).await.unwrap();
            sqlx::raw_sql(&sql)
                .execute(&mut *tx)
                .await
                .unwrap_or_else(|e| panic!("{plant}: {e}"));
            if revoked {
                revoke(&f.other, home, session).await;
            }
            let r = tx.commit().await;
            if revoked {
                assert!(matches!(r, Err(RlsError::SessionEnded)), "{plant}: {r:?}");
                assert_eq!(rows_in(&f.db, target, &name).await, 0, "{plant}");
                assert_eq!(common::projects_named(&f.db, &name).await, 0, "{plant}");
            } else {
                r.unwrap_or_else(|e| panic!("control, {plant}: {e}"));
                assert_eq!(rows_in(&f.db, target, &name).await, 1, "control, {plant}");
                assert_eq!(rows_in(&f.db, home, &name).await, 0, "control, {plant}");
            }
        }
    }
}

#[tokio::test]
async fn state_planted_in_a_staff_write_transaction_does_not_pass_its_commit_after_revocation() {
    plants_do_not_pass_a_revoked_commit(false).await;
}

#[tokio::test]
async fn state_planted_in_a_staff_write_transaction_does_not_pass_its_commit_after_revocation_signed()
 {
    plants_do_not_pass_a_revoked_commit(true).await;
}

/// The commit binds the staff member's own tenant for a moment, to ask. SQL injected into the
/// transaction binds the home tenant itself and writes there (unsigned, `set_config` binds
/// it; signed, it binds nothing and the write is refused at once): no such write commits, not
/// even with the session live, and the staff member's legitimate write in the target tenant,
/// made in the same transaction, goes with it. Control: the same transaction without the
/// switch commits its target row.
async fn a_home_write_does_not_ride_the_commits_home_binding(signed: bool) {
    let f = fixture(signed, 2).await;
    let home = TenantId::new_random();
    let target = TenantId::new_random();
    let session = start_session(&f.other, home).await;
    let ctx = staff_in(home, session, target).await;
    let actor = ctx.actor().unwrap().id();

    // Control.
    let mut tx = f.pool.begin(&ctx).await.unwrap();
    insert(&mut tx, target, "control").await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(rows_in(&f.db, target, "control").await, 1);

    for local in [true, false] {
        let mut tx = f.pool.begin(&ctx).await.unwrap();
        insert(&mut tx, target, "alongside").await.unwrap();
        sqlx::raw_sql(&format!(
            "SELECT set_config('app.tenant_id', '{home}', {local}); \
             SELECT set_config('app.actor_id', '{actor}', {local})"
        ))
        .execute(&mut *tx)
        .await
        .unwrap();
        let wrote = insert(&mut tx, home, "in-home").await;
        if signed {
            assert!(
                wrote.is_err(),
                "signed: an injected set_config bound the home tenant"
            );
            drop(tx);
        } else {
            wrote.unwrap();
            let r = tx.commit().await;
            assert!(matches!(r, Err(RlsError::BindingChanged)), "{r:?}");
        }
        assert_eq!(common::projects_named(&f.db, "in-home").await, 0);
        assert_eq!(common::projects_named(&f.db, "alongside").await, 0);
    }
    // The pool still works for the staff member afterwards, in the target only.
    common::insert_project(&f.pool, &ctx, "after")
        .await
        .unwrap();
    assert_eq!(rows_in(&f.db, target, "after").await, 1);
    assert_eq!(rows_in(&f.db, home, "after").await, 0);
}

#[tokio::test]
async fn a_write_in_the_home_tenant_does_not_commit_through_the_commits_home_binding() {
    a_home_write_does_not_ride_the_commits_home_binding(false).await;
}

#[tokio::test]
async fn a_write_in_the_home_tenant_does_not_commit_through_the_commits_home_binding_signed() {
    a_home_write_does_not_ride_the_commits_home_binding(true).await;
}

/// Signed: the commit's home/check/target statement is a prepared statement the driver made at
/// `BEGIN` and reuses by name. SQL injected into the transaction finds its name, deallocates it
/// and prepares one of its own under that name with the same parameters that only binds the
/// target (no home binding, no check). At the commit the driver runs the impostor, which binds
/// the target with the fresh signature; the commit's statement must still refuse (a
/// statement prepared by SQL exists), so the revoked session's write does not commit and the
/// connection is not reused. Control: a live session's transaction without the swap commits,
/// and without the swap the revoked session is refused by the check itself.
#[tokio::test]
async fn a_prepared_statement_swapped_in_for_the_signed_commit_check_does_not_commit() {
    let f = fixture(true, 1).await;
    let home = TenantId::new_random();
    let target = TenantId::new_random();

    // Control: live, no swap.
    let session = start_session(&f.other, home).await;
    let ctx = staff_in(home, session, target).await;
    let mut tx = f.pool.begin(&ctx).await.unwrap();
    insert(&mut tx, target, "live").await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(rows_in(&f.db, target, "live").await, 1);
    // Control: revoked, no swap: refused by the check.
    let mut tx = f.pool.begin(&ctx).await.unwrap();
    insert(&mut tx, target, "revoked-plain").await.unwrap();
    revoke(&f.other, home, session).await;
    let r = tx.commit().await;
    assert!(matches!(r, Err(RlsError::SessionEnded)), "{r:?}");
    assert_eq!(common::projects_named(&f.db, "revoked-plain").await, 0);

    // The attack.
    let session = start_session(&f.other, home).await;
    let ctx = staff_in(home, session, target).await;
    let mut tx = f.pool.begin(&ctx).await.unwrap();
    insert(&mut tx, target, "revoked-swapped").await.unwrap();
    let name: String = sqlx::query_scalar(
        "SELECT name FROM pg_prepared_statements \
         WHERE NOT from_sql AND starts_with(statement, 'SELECT app.bind($6, ')",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    sqlx::raw_sql(&format!(
        "DEALLOCATE \"{name}\"; \
         PREPARE \"{name}\"(text, text, text, text, text, text, text, text, text) AS \
         SELECT app.bind($6, $7, $8, $9)"
    ))
    .execute(&mut *tx)
    .await
    .unwrap();
    revoke(&f.other, home, session).await;
    let r = tx.commit().await;
    // The impostor ran (no `SessionEnded`); the commit's own statement refused.
    match &r {
        Err(RlsError::Database(e)) => {
            assert!(e.to_string().contains("division by zero"), "{e}");
        }
        other => panic!("the swap was not what stopped the commit: {other:?}"),
    }
    assert_eq!(common::projects_named(&f.db, "revoked-swapped").await, 0);
    // The connection was closed, not reused: a live staff member works on a fresh one, and the
    // revoked one is refused.
    let live = staff_in(home, start_session(&f.other, home).await, target).await;
    common::insert_project(&f.pool, &live, "after")
        .await
        .unwrap();
    assert_eq!(rows_in(&f.db, target, "after").await, 1);
    assert!(matches!(
        common::insert_project(&f.pool, &ctx, "revoked-after").await,
        Err(RlsError::SessionEnded)
    ));
}

/// Signed: SQL injected into a staff write transaction (before any write) ends it and opens
/// another at `REPEATABLE READ`, pinning a snapshot taken while the session is live; the
/// session is then revoked and the application writes, then commits. The commit's freshly
/// signed check reads the pinned snapshot, but the transaction it would commit was never bound
/// (the proof belongs to the transaction that ended), so the write is refused when it is made
/// and nothing commits. Control: the same transaction without the injection commits.
#[tokio::test]
async fn a_snapshot_pinned_by_an_injected_commit_writes_nothing_for_a_revoked_staff_session_signed()
{
    let f = fixture(true, 1).await;
    let home = TenantId::new_random();
    let target = TenantId::new_random();
    let session = start_session(&f.other, home).await;
    let ctx = staff_in(home, session, target).await;
    let mut tx = f.pool.begin(&ctx).await.unwrap();
    insert(&mut tx, target, "control").await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(rows_in(&f.db, target, "control").await, 1);

    let mut tx = f.pool.begin(&ctx).await.unwrap();
    sqlx::raw_sql(
        "COMMIT; BEGIN ISOLATION LEVEL REPEATABLE READ; \
         SELECT count(*) FROM sess.sessions; \
         SELECT set_config('app.tenant_id', current_setting('app.tenant_id', true), true)",
    )
    .execute(&mut *tx)
    .await
    .unwrap();
    revoke(&f.other, home, session).await;
    let wrote = insert(&mut tx, target, "after-revocation").await;
    let committed = tx.commit().await;
    assert!(
        wrote.is_err() || committed.is_err(),
        "the write after the revocation committed"
    );
    assert_eq!(common::projects_named(&f.db, "after-revocation").await, 0);
}
