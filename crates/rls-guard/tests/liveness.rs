//! Session liveness at the database: a context whose actor acts through a session is bound only
//! while the database says the session is live, in the binding's own statement, for
//! transactions (at `BEGIN` and again at `COMMIT`) and bound reads, with signed bindings or
//! without. Every refusal has its live control in the same setup.
// Integration tests: a failed unwrap is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use rls_guard::{RlsError, SessionLiveness, TenantPool};
use sqlx::PgPool;
use tenant_scope::{Actor, ActorId, ActorKind, TenantContext, TenantId};
use testkit::{Role, TestDb};
use uuid::Uuid;

/// A session table of the fixture's own and checks over it: one honest, three broken.
pub(crate) const SESSIONS_SQL: &str = "
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
CREATE FUNCTION sess.always(tenant uuid, session uuid) RETURNS boolean
    LANGUAGE sql STABLE AS $$ SELECT true $$;
CREATE FUNCTION sess.unknown(tenant uuid, session uuid) RETURNS boolean
    LANGUAGE sql STABLE AS $$ SELECT NULL::boolean $$;
CREATE FUNCTION sess.frozen(tenant uuid, session uuid) RETURNS boolean
    LANGUAGE sql IMMUTABLE AS $$ SELECT false $$;
CREATE FUNCTION sess.wrong(session uuid) RETURNS boolean
    LANGUAGE sql STABLE AS $$ SELECT false $$;
CREATE FUNCTION sess.live_rows(tenant uuid, session uuid) RETURNS SETOF boolean
    LANGUAGE sql STABLE ROWS 1
    AS $$ SELECT true FROM sess.sessions s
          WHERE s.tenant_id = $1 AND s.id = $2 AND NOT s.revoked $$;
CREATE FUNCTION sess.always_rows(tenant uuid, session uuid) RETURNS SETOF boolean
    LANGUAGE sql STABLE AS $$ SELECT true $$;
CREATE FUNCTION sess.null_rows(tenant uuid, session uuid) RETURNS SETOF boolean
    LANGUAGE sql STABLE AS $$ VALUES (false), (NULL::boolean) $$;
CREATE FUNCTION sess.mixed_rows(tenant uuid, session uuid) RETURNS SETOF boolean
    LANGUAGE sql STABLE
    AS $$ SELECT t.v FROM sess.sessions s, (VALUES (true), (false)) AS t(v)
          WHERE s.tenant_id = $1 AND s.id = $2 AND NOT s.revoked $$;
CREATE FUNCTION sess.unknown_rows(tenant uuid, session uuid) RETURNS SETOF boolean
    LANGUAGE sql STABLE
    AS $$ SELECT t.v FROM sess.sessions s, (VALUES (true), (NULL::boolean)) AS t(v)
          WHERE s.tenant_id = $1 AND s.id = $2 AND NOT s.revoked $$;
";

fn template(signed: bool) -> testkit::Template {
    let sessions = rls_guard::schema::tenant_table_sql("sess.sessions").unwrap();
    let signing = if signed {
        rls_guard::schema::ENABLE_SIGNED_BINDINGS_SQL
    } else {
        ""
    };
    testkit::Template::new(
        "rls_guard_liveness",
        format!(
            "{}\n{SESSIONS_SQL}\n{sessions}\n{signing}",
            common::schema_sql()
        ),
    )
}

struct Fixture {
    db: TestDb,
    raw: PgPool,
    /// Without a liveness check.
    plain: TenantPool,
}

async fn fixture(signed: bool) -> Fixture {
    let db = testkit::fresh_database(&template(signed)).await;
    let raw = db.pool(Role::Runtime, 4).await;
    let plain = if signed {
        let mut owner = db.pool(Role::Owner, 1).await.acquire().await.unwrap();
        let key = rls_guard::schema::binding_key(&mut owner).await.unwrap();
        TenantPool::with_binding_key(raw.clone(), key)
            .await
            .unwrap()
    } else {
        TenantPool::new(raw.clone()).await.unwrap()
    };
    Fixture { db, raw, plain }
}

async fn checked(pool: &TenantPool) -> TenantPool {
    checked_by(pool, "sess.is_live").await
}

async fn checked_by(pool: &TenantPool, function: &str) -> TenantPool {
    pool.clone()
        .with_session_liveness(SessionLiveness::function(function).unwrap())
        .await
        .unwrap()
}

/// A session row of `tenant` (written by a binding without a session, as a sign-in would).
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

async fn insert_project(
    pool: &TenantPool,
    ctx: &TenantContext,
    name: &str,
) -> Result<(), RlsError> {
    let mut tx = pool.begin(ctx).await?;
    sqlx::query("INSERT INTO projects (tenant_id, name) VALUES ($1, $2)")
        .bind(ctx.tenant().as_uuid())
        .bind(name)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

async fn read_names(pool: &TenantPool, ctx: &TenantContext) -> Result<Vec<String>, RlsError> {
    pool.read(ctx, "SELECT name FROM projects ORDER BY name")
        .fetch_all::<(String,)>()
        .await
        .map(|rows| rows.into_iter().map(|(n,)| n).collect())
}

async fn projects_named(db: &TestDb, name: &str) -> i64 {
    let admin = db.pool(Role::Admin, 1).await;
    sqlx::query_scalar("SELECT count(*) FROM projects WHERE name = $1")
        .bind(name)
        .fetch_one(&admin)
        .await
        .unwrap()
}

#[tokio::test]
async fn the_check_function_is_judged_by_what_it_answers() {
    let f = fixture(false).await;
    // The honest checks are accepted: scalar, and set-returning (no row when not live).
    checked(&f.plain).await;
    checked_by(&f.plain, "sess.live_rows").await;
    checked_by(&f.plain, "sess.mixed_rows").await;
    checked_by(&f.plain, "sess.unknown_rows").await;
    for (name, why) in [
        ("sess.always", "does not answer false"),
        ("sess.always_rows", "does not answer false"),
        ("sess.null_rows", "does not answer false"),
        ("sess.unknown", "does not answer false"),
        ("sess.frozen", "IMMUTABLE"),
        ("sess.wrong", "no such function"),
        ("sess.missing", "no such function"),
    ] {
        let refused = f
            .plain
            .clone()
            .with_session_liveness(SessionLiveness::function(name).unwrap())
            .await
            .unwrap_err();
        match refused {
            RlsError::SessionLivenessRefused(message) => {
                assert!(message.contains(why), "{name}: {message}");
            }
            other => panic!("{name}: {other:?}"),
        }
    }
    assert!(matches!(
        SessionLiveness::function("sess.is_live; SELECT 1"),
        Err(RlsError::InvalidIdentifier(_))
    ));
}

#[tokio::test]
async fn a_session_without_a_check_is_refused_before_anything_is_sent() {
    let f = fixture(false).await;
    let tenant = TenantId::new_random();
    let session = start_session(&f.plain, tenant).await;
    // Control: the same pool binds a context without a session.
    insert_project(&f.plain, &common::ctx(tenant), "no-session")
        .await
        .unwrap();
    let ctx = session_ctx(tenant, session);
    assert!(matches!(
        insert_project(&f.plain, &ctx, "unchecked").await,
        Err(RlsError::SessionLivenessUnconfigured)
    ));
    assert!(matches!(
        read_names(&f.plain, &ctx).await,
        Err(RlsError::SessionLivenessUnconfigured)
    ));
    assert_eq!(projects_named(&f.db, "unchecked").await, 0);
}

async fn revoked_session_touches_nothing(signed: bool, function: &str) {
    let f = fixture(signed).await;
    let pool = checked_by(&f.plain, function).await;
    let tenant = TenantId::new_random();
    let session = start_session(&pool, tenant).await;
    let ctx = session_ctx(tenant, session);
    // Live: writes and reads.
    insert_project(&pool, &ctx, "while-live").await.unwrap();
    assert_eq!(read_names(&pool, &ctx).await.unwrap(), ["while-live"]);
    let tx = pool.begin_read_only(&ctx).await.unwrap();
    tx.commit().await.unwrap();
    // Another session of the same tenant, and a session of another tenant with the same id
    // shape, stay unaffected by the revocation below.
    let other = start_session(&pool, tenant).await;
    revoke(&pool, tenant, session).await;
    assert!(matches!(
        insert_project(&pool, &ctx, "after-revocation").await,
        Err(RlsError::SessionEnded)
    ));
    assert!(matches!(
        read_names(&pool, &ctx).await,
        Err(RlsError::SessionEnded)
    ));
    assert!(matches!(
        pool.begin_read_only(&ctx).await,
        Err(RlsError::SessionEnded)
    ));
    // A read that would return no row is refused too: the check does not hang on a row.
    let empty = pool
        .read(&ctx, "SELECT name FROM projects WHERE name = $1")
        .bind("nothing-matches")
        .fetch_optional::<(String,)>()
        .await;
    assert!(matches!(empty, Err(RlsError::SessionEnded)), "{empty:?}");
    assert_eq!(projects_named(&f.db, "after-revocation").await, 0);
    // Control: the other session still works, as does work without a session.
    let live = session_ctx(tenant, other);
    insert_project(&pool, &live, "other-session").await.unwrap();
    assert_eq!(
        read_names(&pool, &live).await.unwrap(),
        ["other-session", "while-live"]
    );
    // A session id that exists in another tenant is not live here.
    let elsewhere = TenantId::new_random();
    let foreign = start_session(&pool, elsewhere).await;
    assert!(matches!(
        read_names(&pool, &session_ctx(tenant, foreign)).await,
        Err(RlsError::SessionEnded)
    ));
    // The connections went back clean: a later context without a session binds as usual.
    for _ in 0..8 {
        assert_eq!(common::visible(&pool, tenant).await.len(), 2);
    }
    drop(f.raw);
}

#[tokio::test]
async fn a_revoked_session_reads_and_writes_nothing() {
    revoked_session_touches_nothing(false, "sess.is_live").await;
}

#[tokio::test]
async fn a_revoked_session_reads_and_writes_nothing_with_a_set_returning_check() {
    revoked_session_touches_nothing(false, "sess.live_rows").await;
    revoked_session_touches_nothing(true, "sess.live_rows").await;
}

/// A set-returning check is live only when every row it answers is true: a `false` or a `NULL`
/// row among `true` ones refuses the session (the control: the same session, same statements,
/// under the honest set-returning check).
#[tokio::test]
async fn one_false_or_unknown_row_of_a_set_returning_check_refuses_the_session() {
    let f = fixture(false).await;
    let honest = checked_by(&f.plain, "sess.live_rows").await;
    let tenant = TenantId::new_random();
    let session = start_session(&honest, tenant).await;
    let ctx = session_ctx(tenant, session);
    insert_project(&honest, &ctx, "honest").await.unwrap();
    assert_eq!(read_names(&honest, &ctx).await.unwrap(), ["honest"]);
    for function in ["sess.mixed_rows", "sess.unknown_rows"] {
        let pool = checked_by(&f.plain, function).await;
        assert!(
            matches!(
                insert_project(&pool, &ctx, "refused").await,
                Err(RlsError::SessionEnded)
            ),
            "{function}"
        );
        assert!(
            matches!(read_names(&pool, &ctx).await, Err(RlsError::SessionEnded)),
            "{function}"
        );
        assert!(
            matches!(
                pool.begin_read_only(&ctx).await,
                Err(RlsError::SessionEnded)
            ),
            "{function}"
        );
    }
    assert_eq!(projects_named(&f.db, "refused").await, 0);
}

#[tokio::test]
async fn a_revoked_session_reads_and_writes_nothing_with_signed_bindings() {
    revoked_session_touches_nothing(true, "sess.is_live").await;
}

async fn revocation_during_a_transaction_stops_its_commit(signed: bool, function: &str) {
    let f = fixture(signed).await;
    let pool = checked_by(&f.plain, function).await;
    let tenant = TenantId::new_random();
    // Control: a transaction of a live session commits its write.
    let kept = start_session(&pool, tenant).await;
    insert_project(&pool, &session_ctx(tenant, kept), "committed")
        .await
        .unwrap();
    let session = start_session(&pool, tenant).await;
    let ctx = session_ctx(tenant, session);
    let mut tx = pool.begin(&ctx).await.unwrap();
    sqlx::query("INSERT INTO projects (tenant_id, name) VALUES ($1, 'mid-flight')")
        .bind(tenant.as_uuid())
        .execute(&mut *tx)
        .await
        .unwrap();
    revoke(&pool, tenant, session).await;
    assert!(matches!(tx.commit().await, Err(RlsError::SessionEnded)));
    assert_eq!(projects_named(&f.db, "mid-flight").await, 0);
    assert_eq!(projects_named(&f.db, "committed").await, 1);
}

#[tokio::test]
async fn a_revocation_during_a_transaction_stops_its_commit() {
    revocation_during_a_transaction_stops_its_commit(false, "sess.is_live").await;
    revocation_during_a_transaction_stops_its_commit(false, "sess.live_rows").await;
}

#[tokio::test]
async fn a_revocation_during_a_transaction_stops_its_commit_with_signed_bindings() {
    revocation_during_a_transaction_stops_its_commit(true, "sess.is_live").await;
    revocation_during_a_transaction_stops_its_commit(true, "sess.live_rows").await;
}

#[tokio::test]
async fn the_refusal_is_its_own_sqlstate() {
    let f = fixture(false).await;
    let mut conn = f.raw.acquire().await.unwrap();
    let error = sqlx::query("SELECT app.require_live_session(false)")
        .execute(&mut *conn)
        .await
        .unwrap_err();
    assert_eq!(
        error.as_database_error().and_then(|e| e.code()).as_deref(),
        Some("TB401")
    );
    for unknown in ["SELECT app.require_live_session(NULL)"] {
        assert!(sqlx::query(unknown).execute(&mut *conn).await.is_err());
    }
    let ok: bool = sqlx::query_scalar("SELECT app.require_live_session(true)")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert!(ok);
}

/// Staff acting in another tenant under a grant: the session is checked in the staff member's
/// own tenant (where its row is), for transactions and reads, signed or not. The only test in
/// this binary that installs the process's cross-tenant authority.
#[tokio::test]
async fn a_cross_tenant_context_is_checked_in_the_staff_members_own_tenant() {
    let authority = tenant_scope::CrossTenantAuthority::install(common::Accept).unwrap();
    for signed in [false, true] {
        let f = fixture(signed).await;
        let pool = checked(&f.plain).await;
        let home = TenantId::new_random();
        let target = TenantId::new_random();
        common::add_project(&pool, target, "target-project").await;
        let session = start_session(&pool, home).await;
        let staff = Actor::new(ActorKind::Staff, ActorId::new_random(), home).with_session(session);
        let ctx = authority
            .grant(&staff, target, "investigating a ticket")
            .await
            .unwrap();
        // Live: the grant reads and writes the target tenant (and only it).
        assert_eq!(read_names(&pool, &ctx).await.unwrap(), ["target-project"]);
        insert_project(&pool, &ctx, "by-staff").await.unwrap();
        assert_eq!(
            read_names(&pool, &ctx).await.unwrap(),
            ["by-staff", "target-project"]
        );
        // The same session id in the target tenant would not make it live: a session row
        // planted in the tenant acted in counts for nothing once the home one is revoked.
        let mut tx = pool.begin(&common::ctx(target)).await.unwrap();
        sqlx::query("INSERT INTO sess.sessions (tenant_id, id) VALUES ($1, $2)")
            .bind(target.as_uuid())
            .bind(session)
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        revoke(&pool, home, session).await;
        assert!(
            matches!(read_names(&pool, &ctx).await, Err(RlsError::SessionEnded)),
            "signed: {signed}"
        );
        assert!(matches!(
            insert_project(&pool, &ctx, "after-revocation").await,
            Err(RlsError::SessionEnded)
        ));
        assert_eq!(projects_named(&f.db, "after-revocation").await, 0);
        // Control: the tenant's own work goes on.
        assert_eq!(common::visible(&pool, target).await.len(), 2);
    }
}
