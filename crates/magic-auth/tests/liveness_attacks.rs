//! Attacks by the runtime role on the inlined `auth.session_is_live` check: planted role
//! defaults, a live twin row in another tenant, shadows in `pg_temp`. Each attack has a positive
//! control in the same setup.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use magic_auth::{Assurance, NewSession, SessionConfig, SessionStore, session_liveness};
use rls_guard::schema::SUPPORT_SQL;
use rls_guard::{RlsError, TenantPool};
use sqlx::postgres::PgPoolOptions;
use tenant_scope::{ActorId, ActorKind, TenantContext, TenantId};
use testkit::{Role, Template, TestDb, fresh_database};
use uuid::Uuid;

fn template() -> Template {
    let sql = format!(
        "{SUPPORT_SQL}\n{}",
        magic_auth::schema::schema_sql("testkit_runtime").unwrap()
    );
    Template::new("magic_auth_sessions", sql)
}

fn new_user() -> NewSession {
    NewSession::new(ActorId::new_random(), ActorKind::User, Assurance::Aal1)
}

/// A pool whose every connection is closed on release, so each acquisition opens a new one
/// (which picks up whatever role defaults are in place at that moment).
async fn fresh_conn_pool(db: &TestDb) -> TenantPool {
    let raw = PgPoolOptions::new()
        .max_connections(2)
        .min_connections(0)
        .after_release(|_, _| Box::pin(async { Ok(false) }))
        .connect_with(db.options(Role::Runtime))
        .await
        .unwrap();
    TenantPool::new(raw)
        .await
        .unwrap()
        .with_session_liveness(session_liveness())
        .await
        .unwrap()
}

/// A bound read, a read-only transaction and a writing transaction (its commit) for `ctx`.
async fn use_session(pool: &TenantPool, ctx: &TenantContext) -> Result<usize, RlsError> {
    // Several runs of the bound read, so a cached (generic) plan is used too.
    let mut n = 0;
    for _ in 0..7 {
        let rows: Vec<(Uuid,)> = pool
            .read(ctx, "SELECT id FROM auth.sessions")
            .fetch_all()
            .await?;
        n = rows.len();
    }
    let tx = pool.begin_read_only(ctx).await?;
    tx.commit().await?;
    let mut tx = pool.begin(ctx).await?;
    sqlx::query(
        "INSERT INTO auth.rate_limits (tenant_id, key, window_start, hits) \
         VALUES (app.current_tenant_id(), gen_random_uuid()::text, now(), 1)",
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(n)
}

/// Role defaults the runtime role plants for itself on this database (`ALTER ROLE CURRENT_USER
/// IN DATABASE .. SET`) while the application's pool runs: every connection the pool opens
/// afterwards starts with them. Planner switches (generic plans, no index/bitmap scans, no
/// nested loops, parallelism forced), search_path with pg_temp first, a default tenant,
/// transform_null_equals, old string escapes, serializable default isolation.
/// Role defaults the runtime role may plant for itself: `(name, value as SQL)`. Every one must
/// take, but for the parallel-query switch, which has one name before PostgreSQL 16 and another
/// after (exactly one of the two takes).
const PLANTS: &[(&str, &str)] = &[
    ("plan_cache_mode", "'force_generic_plan'"),
    ("enable_indexscan", "off"),
    ("enable_indexonlyscan", "off"),
    ("enable_bitmapscan", "off"),
    ("enable_nestloop", "off"),
    ("enable_hashjoin", "off"),
    ("parallel_setup_cost", "0"),
    ("parallel_tuple_cost", "0"),
    ("min_parallel_table_scan_size", "0"),
    ("force_parallel_mode", "on"),
    ("debug_parallel_query", "on"),
    // A list, not one quoted name: `pg_temp` really comes first.
    ("search_path", "pg_temp, public, auth"),
    ("transform_null_equals", "on"),
    ("standard_conforming_strings", "off"),
    ("default_transaction_isolation", "'serializable'"),
    ("jit", "off"),
    ("from_collapse_limit", "1"),
    ("join_collapse_limit", "1"),
    ("geqo_threshold", "2"),
];

/// The binding itself, which the runtime role must not be able to plant as a default.
const BINDING_PLANT: (&str, &str) = ("app.tenant_id", "'00000000-0000-4000-8000-000000000001'");

#[tokio::test]
async fn planted_role_defaults_do_not_let_a_revoked_session_pass_the_inlined_check() {
    let db = fresh_database(&template()).await;
    let pool = fresh_conn_pool(&db).await;
    let store =
        SessionStore::new(pool.clone(), SessionConfig::default(), Box::new([7; 32])).unwrap();
    let tenant = TenantId::new_random();
    let (revoked, _) = store.create(tenant, &new_user()).await.unwrap();
    let (live, _) = store.create(tenant, &new_user()).await.unwrap();
    let revoked_ctx = TenantContext::for_actor(revoked.actor());
    let live_ctx = TenantContext::for_actor(live.actor());
    // Control before the attack: both sessions read and write.
    use_session(&pool, &revoked_ctx).await.unwrap();
    use_session(&pool, &live_ctx).await.unwrap();

    // The attack: role defaults for every later connection of the runtime role here.
    let attacker = db.pool(Role::Runtime, 1).await;
    let dbname: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&attacker)
        .await
        .unwrap();
    let mut planted = Vec::new();
    let plant = |(name, value): (&str, &str)| {
        format!("ALTER ROLE CURRENT_USER IN DATABASE \"{dbname}\" SET {name} = {value}")
    };
    for &(name, value) in PLANTS {
        if sqlx::raw_sql(&plant((name, value)))
            .execute(&attacker)
            .await
            .is_ok()
        {
            planted.push(name);
        }
    }
    let parallel = ["force_parallel_mode", "debug_parallel_query"];
    assert_eq!(
        planted.len(),
        PLANTS.len() - 1,
        "every plant takes but one parallel switch: {planted:?}"
    );
    assert_eq!(
        parallel.iter().filter(|p| planted.contains(p)).count(),
        1,
        "{planted:?}"
    );
    // The binding cannot be planted as a default (the premise of every check above).
    let refused = sqlx::raw_sql(&plant(BINDING_PLANT))
        .execute(&attacker)
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("permission denied"),
        "{refused}"
    );
    assert!(store.revoke(tenant, revoked.id).await.unwrap());

    // The plants are in effect on the pool's new connections.
    let seen: String = sqlx::query_scalar("SHOW plan_cache_mode")
        .fetch_one(pool.pool())
        .await
        .unwrap();
    assert_eq!(seen, "force_generic_plan");
    let seen: String = sqlx::query_scalar("SHOW search_path")
        .fetch_one(pool.pool())
        .await
        .unwrap();
    assert!(seen.starts_with("pg_temp,"), "{seen}");

    // Attack: the revoked session's bound read / transactions.
    let r = use_session(&pool, &revoked_ctx).await;
    assert!(matches!(r, Err(RlsError::SessionEnded)), "{r:?}");
    let r = pool
        .read(&revoked_ctx, "SELECT id FROM auth.sessions")
        .fetch_all::<(Uuid,)>()
        .await;
    assert!(matches!(r, Err(RlsError::SessionEnded)), "{r:?}");
    assert!(matches!(
        pool.begin(&revoked_ctx).await,
        Err(RlsError::SessionEnded)
    ));
    // Control: the live session still reads and writes under the same plants.
    assert_eq!(use_session(&pool, &live_ctx).await.unwrap(), 2);

    // row_security = off planted on top: fails closed (an error), never a pass.
    sqlx::raw_sql(&format!(
        "ALTER ROLE CURRENT_USER IN DATABASE \"{dbname}\" SET row_security = off"
    ))
    .execute(&attacker)
    .await
    .unwrap();
    let r = use_session(&pool, &revoked_ctx).await;
    assert!(r.is_err(), "row_security=off: {r:?}");
    let control = use_session(&pool, &live_ctx).await;
    eprintln!("row_security=off, live session: {control:?}");
    let admin = db.pool(Role::Admin, 1).await;
    sqlx::raw_sql(&format!(
        "ALTER ROLE testkit_runtime IN DATABASE \"{dbname}\" RESET ALL"
    ))
    .execute(&admin)
    .await
    .unwrap();
}

/// The runtime role writes a live row with the revoked session's id in another tenant (it may
/// bind any tenant), and tries a second row in the session's own tenant and shadows in pg_temp.
#[tokio::test]
async fn a_live_twin_row_or_temp_shadow_does_not_revive_a_revoked_session() {
    let db = fresh_database(&template()).await;
    let pool = fresh_conn_pool(&db).await;
    let store =
        SessionStore::new(pool.clone(), SessionConfig::default(), Box::new([7; 32])).unwrap();
    let tenant = TenantId::new_random();
    let other = TenantId::new_random();
    let (revoked, _) = store.create(tenant, &new_user()).await.unwrap();
    let ctx = TenantContext::for_actor(revoked.actor());
    use_session(&pool, &ctx).await.unwrap();
    assert!(store.revoke(tenant, revoked.id).await.unwrap());

    let attacker = db.pool(Role::Runtime, 1).await;
    let twin = |t: TenantId| {
        format!(
            "BEGIN; SET LOCAL app.tenant_id = '{t}'; SET LOCAL app.commit_binding = '{t}:'; \
             INSERT INTO auth.sessions (tenant_id, id, user_id, actor_kind, secret_hash, aal, \
               created_at, authenticated_at, last_seen_at, idle_expires_at, absolute_expires_at) \
             VALUES ('{t}', '{}', '{}', 'user', '\\x{}', 1, now(), now(), now(), \
               now() + interval '1 hour', now() + interval '1 hour'); COMMIT",
            revoked.id,
            revoked.user.as_uuid(),
            "00".repeat(32)
        )
    };
    // Control: the twin in another tenant is accepted (the runtime role may write sessions).
    sqlx::raw_sql(&twin(other))
        .execute(&attacker)
        .await
        .unwrap();
    // A second row of the same (tenant, id): the primary key refuses it.
    let dup = sqlx::raw_sql(&twin(tenant)).execute(&attacker).await;
    assert!(dup.is_err(), "{dup:?}");
    let _ = sqlx::raw_sql("ROLLBACK").execute(&attacker).await;
    // Temporary shadows: TEMPORARY is not held.
    for sql in [
        "CREATE TEMP TABLE sessions (tenant_id uuid, id uuid, revoked_at timestamptz)",
        "CREATE FUNCTION pg_temp.session_is_live(uuid, uuid) RETURNS SETOF boolean \
         LANGUAGE sql AS 'SELECT true'",
        "CREATE FUNCTION public.bool_and(boolean) RETURNS boolean LANGUAGE sql AS 'SELECT true'",
    ] {
        let r = sqlx::raw_sql(sql).execute(&attacker).await;
        assert!(r.is_err(), "{sql}: accepted");
    }
    let r = use_session(&pool, &ctx).await;
    assert!(matches!(r, Err(RlsError::SessionEnded)), "{r:?}");
    // Control: a live session of the tenant works.
    let (live, _) = store.create(tenant, &new_user()).await.unwrap();
    use_session(&pool, &TenantContext::for_actor(live.actor()))
        .await
        .unwrap();
}
