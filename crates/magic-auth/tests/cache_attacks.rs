//! Attacks on the session cache and on `auth.session_is_live` by an adversary who holds the
//! runtime role: forged and flooding notices on the cache's channel, `LISTEN`/`UNLISTEN`,
//! cancelling and terminating the cache's listener, a session the cache still serves after its
//! revocation, and an assurance level changed under a cached session. Each attack is paired
//! with the legitimate operation in the same setup.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use magic_auth::secrecy::ExposeSecret;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use axum::routing::get;
use magic_auth::{
    Assurance, Guard, NewSession, SESSION_COOKIE, SessionCacheConfig, SessionConfig,
    SessionManagerLayer, SessionStore, SessionToken, session_liveness,
};
use rls_guard::schema::SUPPORT_SQL;
use rls_guard::{RlsError, TenantPool};
use sha2::{Digest, Sha256};
use tenant_scope::{ActorId, ActorKind, TenantContext, TenantId};
use testkit::{Role, Template, TestDb, fresh_database};
use tower::ServiceExt;
use uuid::Uuid;

fn template() -> Template {
    let sql = format!(
        "{SUPPORT_SQL}\n{}",
        magic_auth::schema::schema_sql("testkit_runtime").unwrap()
    );
    Template::new("magic_auth_sessions", sql)
}

/// One "instance": its own pool (with the liveness check) and session store, with a cache
/// (waited on until it listens) when `max_age` is given.
async fn instance(db: &TestDb, max_age: Option<Duration>) -> (TenantPool, SessionStore) {
    let pool = TenantPool::new(db.pool(Role::Runtime, 3).await)
        .await
        .unwrap()
        .with_session_liveness(session_liveness())
        .await
        .unwrap();
    let store =
        SessionStore::new(pool.clone(), SessionConfig::default(), Box::new([7; 32])).unwrap();
    let store = match max_age {
        None => store,
        Some(max_age) => {
            let mut config = SessionCacheConfig::default();
            config.max_age = max_age;
            let store = store.with_cache(config).unwrap();
            wait_listening(&store).await;
            store
        }
    };
    (pool, store)
}

async fn wait_listening(store: &SessionStore) {
    let start = Instant::now();
    while store.cache_listening() != Some(true) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the listener never listened"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn new(kind: ActorKind, assurance: Assurance) -> NewSession {
    NewSession::new(ActorId::new_random(), kind, assurance)
}

/// Runs `update` on the session `id` as the superuser, bound as a data fix must be; with
/// `notify` false the triggers are off, so no notice is sent.
async fn admin_update(db: &TestDb, tenant: TenantId, id: Uuid, set: &str, notify: bool) {
    let admin = db.pool(Role::Admin, 1).await;
    let replica = if notify {
        ""
    } else {
        "SET LOCAL session_replication_role = replica;"
    };
    let sql = format!(
        "BEGIN; {replica} \
         SET LOCAL app.tenant_id = '{tenant}'; SET LOCAL app.commit_binding = '{tenant}:'; \
         UPDATE auth.sessions SET {set} WHERE id = '{id}'; COMMIT"
    );
    sqlx::raw_sql(&sql).execute(&admin).await.unwrap();
}

async fn valid(store: &SessionStore, token: &SessionToken) -> bool {
    store
        .validate_cached(token.to_cookie_value().expose_secret())
        .await
        .unwrap()
        .is_some()
}

/// Waits until `store` refuses `token`; panics after `within`.
async fn refused_within(store: &SessionStore, token: &SessionToken, within: Duration, what: &str) {
    let start = Instant::now();
    while valid(store, token).await {
        assert!(start.elapsed() < within, "{what}: still served");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The notice key the trigger sends for session `id`.
fn notice_key(id: Uuid) -> String {
    hex::encode(Sha256::digest(
        format!("magic-auth/session-change/v1:{id}").as_bytes(),
    ))
}

/// That the cache serves from memory again: a session revoked silently (no notice) is still
/// let through, as only a cached entry can be. Retries while notices still arrive (each one
/// keeps the lookup overlapping it from being cached).
async fn assert_caching(db: &TestDb, a: &SessionStore, b: &SessionStore, tenant: TenantId) {
    for _ in 0..50 {
        let (session, token) = a
            .create(tenant, &new(ActorKind::User, Assurance::Aal1))
            .await
            .unwrap();
        assert!(valid(b, &token).await);
        admin_update(db, tenant, session.id, "revoked_at = now()", false).await;
        if valid(b, &token).await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the cache never served from memory again");
}

/// The runtime role may `NOTIFY` on the cache's channel. A flood of forged notices (thousands,
/// payloads of 7,994 bytes, the keys of live sessions, empty and non-ASCII ones) sent just
/// before a real revocation neither breaks the listener nor delays the real notice past the
/// bound: the revoked session is refused, the listener keeps listening, and the cache serves
/// again once the flood is drained.
#[tokio::test]
async fn a_flood_of_forged_notices_does_not_keep_a_revoked_session_cached() {
    let db = fresh_database(&template()).await;
    let (_, a) = instance(&db, None).await;
    let (_, b) = instance(&db, Some(Duration::from_secs(60))).await;
    let tenant = TenantId::new_random();
    let (victim, victim_token) = a
        .create(tenant, &new(ActorKind::User, Assurance::Aal2))
        .await
        .unwrap();
    let (bystander, bystander_token) = a
        .create(tenant, &new(ActorKind::User, Assurance::Aal1))
        .await
        .unwrap();
    assert!(valid(&b, &victim_token).await);
    assert!(valid(&b, &bystander_token).await);
    // Control: the cache holds the victim (a silent change is not seen).
    assert_caching(&db, &a, &b, tenant).await;

    let attacker = db.pool(Role::Runtime, 1).await;
    let forged = [
        String::new(),
        "é ünïcode ✓".to_owned(),
        notice_key(victim.id).to_uppercase(),
        notice_key(bystander.id),
        "x".repeat(7999),
    ];
    for payload in &forged {
        sqlx::query("SELECT pg_notify('magic_auth_sessions', $1)")
            .bind(payload)
            .execute(&attacker)
            .await
            .unwrap();
    }
    // A payload of 8,000 bytes is refused by PostgreSQL itself.
    assert!(
        sqlx::query("SELECT pg_notify('magic_auth_sessions', repeat('x', 8000))")
            .execute(&attacker)
            .await
            .is_err()
    );
    sqlx::raw_sql(
        "SELECT count(pg_notify('magic_auth_sessions', i::text || repeat('x', 7990))) \
         FROM generate_series(1, 3000) AS i",
    )
    .execute(&attacker)
    .await
    .unwrap();
    // The real revocation, queued behind the flood.
    assert!(a.revoke(tenant, victim.id).await.unwrap());
    refused_within(
        &b,
        &victim_token,
        Duration::from_secs(5),
        "revoked behind a flood",
    )
    .await;
    assert_eq!(
        b.cache_listening(),
        Some(true),
        "the flood broke the listener"
    );
    // Control: the bystander is still signed in, and the cache serves from memory again.
    assert!(valid(&b, &bystander_token).await);
    assert_caching(&db, &a, &b, tenant).await;
}

/// The runtime role may `LISTEN` and `UNLISTEN` on its own connections, and cancel or
/// terminate the backends of its own role — the cache's listener among them. `UNLISTEN` and a
/// cancel change nothing for the listener; terminating it makes the cache serve nothing and
/// forget everything until it listens again (a session revoked meanwhile, with its notice
/// lost, is not served).
#[tokio::test]
async fn the_runtime_role_cannot_silence_the_listener_only_stop_the_cache() {
    let db = fresh_database(&template()).await;
    let (_, a) = instance(&db, None).await;
    let (_, b) = instance(&db, Some(Duration::from_secs(60))).await;
    let tenant = TenantId::new_random();
    let user = new(ActorKind::User, Assurance::Aal1);
    let (first, first_token) = a.create(tenant, &user).await.unwrap();
    let (second, second_token) = a.create(tenant, &user).await.unwrap();
    assert!(valid(&b, &first_token).await);
    assert!(valid(&b, &second_token).await);

    let attacker = db.pool(Role::Runtime, 1).await;
    let mut conn = attacker.acquire().await.unwrap();
    sqlx::raw_sql(
        "LISTEN magic_auth_sessions; UNLISTEN *; UNLISTEN magic_auth_sessions; \
         LISTEN magic_auth_sessions; UNLISTEN magic_auth_sessions",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    let listener = "SELECT pid FROM pg_stat_activity \
                    WHERE datname = current_database() AND usename = current_user \
                      AND query ILIKE 'LISTEN%' AND pid <> pg_backend_pid()";
    let cancelled: bool = sqlx::query_scalar(&format!(
        "SELECT bool_and(pg_cancel_backend(pid)) FROM ({listener}) AS l"
    ))
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    assert!(cancelled, "the runtime role can signal the listener");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(b.cache_listening(), Some(true));
    // The listener still hears: a revocation reaches it.
    assert!(a.revoke(tenant, first.id).await.unwrap());
    refused_within(&b, &first_token, Duration::from_secs(2), "after UNLISTEN").await;
    assert!(valid(&b, &second_token).await, "live control");

    // Terminated: the notice of a revocation in the gap is lost, and nothing held is served.
    let terminated: i64 = sqlx::query_scalar(&format!(
        "SELECT count(pg_terminate_backend(pid)) FROM ({listener}) AS l"
    ))
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    assert_eq!(terminated, 1);
    admin_update(&db, tenant, second.id, "revoked_at = now()", false).await;
    refused_within(
        &b,
        &second_token,
        Duration::from_secs(2),
        "after the listener was terminated",
    )
    .await;
    wait_listening(&b).await;
    assert!(!valid(&b, &second_token).await);
    // Control: it serves from memory again once listening.
    assert_caching(&db, &a, &b, tenant).await;
}

/// A revocation that commits between the layer's cached answer and the request's data
/// statement: the cache still lets the session through (its notice is lost here: the
/// revocation is silent), but the database refuses every statement made for it, and a write
/// begun before the revocation does not commit.
#[tokio::test]
async fn a_session_the_cache_still_serves_reads_and_writes_nothing_once_revoked() {
    let db = fresh_database(&template()).await;
    let (_, a) = instance(&db, None).await;
    let (pool, b) = instance(&db, Some(Duration::from_secs(60))).await;
    let tenant = TenantId::new_random();
    let (_, token) = a
        .create(tenant, &new(ActorKind::User, Assurance::Aal1))
        .await
        .unwrap();
    let session = b
        .validate_cached(token.to_cookie_value().expose_secret())
        .await
        .unwrap()
        .unwrap();
    let context = TenantContext::for_actor(session.actor());
    // Control: live, it reads (its own session row); a write is begun.
    let rows: Vec<(Uuid,)> = pool
        .read(&context, "SELECT id FROM auth.sessions")
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    let mut in_flight = pool.begin(&context).await.unwrap();
    sqlx::query(
        "INSERT INTO auth.rate_limits (tenant_id, key, window_start, hits) \
         VALUES ($1, 'in-flight', now(), 1)",
    )
    .bind(tenant.as_uuid())
    .execute(&mut *in_flight)
    .await
    .unwrap();
    admin_update(&db, tenant, session.id, "revoked_at = now()", false).await;
    assert!(
        valid(&b, &token).await,
        "the cache still serves the session (the premise)"
    );
    assert!(matches!(
        in_flight.commit().await,
        Err(RlsError::SessionEnded)
    ));
    let read = pool
        .read(&context, "SELECT id FROM auth.sessions")
        .fetch_all::<(Uuid,)>()
        .await;
    assert!(matches!(read, Err(RlsError::SessionEnded)), "{read:?}");
    assert!(matches!(
        pool.begin(&context).await,
        Err(RlsError::SessionEnded)
    ));
    assert!(matches!(
        pool.begin_read_only(&context).await,
        Err(RlsError::SessionEnded)
    ));
    let admin = db.pool(Role::Admin, 1).await;
    let written: i64 =
        sqlx::query_scalar("SELECT count(*) FROM auth.rate_limits WHERE key = 'in-flight'")
            .fetch_one(&admin)
            .await
            .unwrap();
    assert_eq!(written, 0, "the in-flight write committed");
}

fn step_up_router(store: SessionStore) -> Router {
    Router::new()
        .route("/sensitive", get(|| async { "sensitive" }))
        .layer(Guard::require_step_up(Duration::from_secs(600)))
        .layer(SessionManagerLayer::new(store))
}

async fn get_sensitive(router: &Router, token: &SessionToken) -> StatusCode {
    let request = Request::builder()
        .method("GET")
        .uri("/sensitive")
        .header(
            header::COOKIE,
            format!(
                "{SESSION_COOKIE}={}",
                token.to_cookie_value().expose_secret()
            ),
        )
        .body(Body::empty())
        .unwrap();
    router.clone().oneshot(request).await.unwrap().status()
}

/// A step-up route that changes nothing (`GET`) is answered from the cache. The cache cannot
/// make an assurance fresher than the database's (a step-up makes a new session), and the one
/// change a session's row may take in place, its end, is announced and reaches the guard within
/// milliseconds. (Lowering its level or backdating its factor in place is refused by the schema
/// outright, even for the superuser: `sessions_fixed`.)
#[tokio::test]
async fn a_downgrade_in_place_reaches_a_step_up_guard_served_from_the_cache() {
    let db = fresh_database(&template()).await;
    let (_, a) = instance(&db, None).await;
    let (_, b) = instance(&db, Some(Duration::from_secs(60))).await;
    let router = step_up_router(b.clone());
    let tenant = TenantId::new_random();
    let user = new(ActorKind::User, Assurance::Aal2);
    for (set, why) in [("revoked_at = now()", "revoked")] {
        let (session, token) = a.create(tenant, &user).await.unwrap();
        // Control: fresh aal2 passes, and the second request is the cache's answer.
        assert_eq!(get_sensitive(&router, &token).await, StatusCode::OK);
        assert_eq!(get_sensitive(&router, &token).await, StatusCode::OK);
        admin_update(&db, tenant, session.id, set, true).await;
        let start = Instant::now();
        while get_sensitive(&router, &token).await == StatusCode::OK {
            assert!(
                start.elapsed() < Duration::from_secs(2),
                "{why}: the cached assurance was still served"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    // An aal1 session never passes, cached or not.
    let (_, aal1) = a
        .create(tenant, &new(ActorKind::User, Assurance::Aal1))
        .await
        .unwrap();
    assert!(valid(&b, &aal1).await);
    assert_eq!(get_sensitive(&router, &aal1).await, StatusCode::FORBIDDEN);
}

/// Staff sessions are never held, by behaviour through the layer: a staff session revoked
/// silently (no notice) is refused at once, while a user session revoked the same way is still
/// let through from memory (the control that the cache is in use).
#[tokio::test]
async fn a_silently_revoked_staff_session_is_refused_at_once_through_the_layer() {
    let db = fresh_database(&template()).await;
    let (_, a) = instance(&db, None).await;
    let (_, b) = instance(&db, Some(Duration::from_secs(60))).await;
    let router = step_up_router(b.clone());
    let tenant = TenantId::new_random();
    let (staff, staff_token) = a
        .create(tenant, &new(ActorKind::Staff, Assurance::Aal2))
        .await
        .unwrap();
    let (user, user_token) = a
        .create(tenant, &new(ActorKind::User, Assurance::Aal2))
        .await
        .unwrap();
    for _ in 0..2 {
        assert_eq!(get_sensitive(&router, &staff_token).await, StatusCode::OK);
        assert_eq!(get_sensitive(&router, &user_token).await, StatusCode::OK);
    }
    admin_update(&db, tenant, staff.id, "revoked_at = now()", false).await;
    admin_update(&db, tenant, user.id, "revoked_at = now()", false).await;
    assert_eq!(
        get_sensitive(&router, &staff_token).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get_sensitive(&router, &user_token).await,
        StatusCode::OK,
        "control: the user's session was cached"
    );
}

/// What the runtime role can do to a session's row through its own `UPDATE` on `auth.sessions`
/// (within the tenant it binds): revive a revoked session, or raise a live one's kind,
/// assurance or factor time in place. The `sessions_fixed` trigger refuses each; ending a
/// session and recording its use (what the library does) still work. (Inserting a new row is a
/// separate path, not closed by this trigger.)
#[tokio::test]
async fn the_runtime_role_cannot_revive_a_session_or_raise_it_in_place() {
    let db = fresh_database(&template()).await;
    let (pool, a) = instance(&db, None).await;
    let tenant = TenantId::new_random();
    let (session, token) = a
        .create(tenant, &new(ActorKind::User, Assurance::Aal1))
        .await
        .unwrap();
    assert!(a.revoke(tenant, session.id).await.unwrap());
    let job = TenantContext::for_job(tenant, None, "attack").unwrap();
    let mut tx = pool.begin(&job).await.unwrap();
    let revived = sqlx::query(
        "UPDATE auth.sessions SET revoked_at = NULL, actor_kind = 'staff', aal = 2, \
         authenticated_at = now() WHERE id = $1",
    )
    .bind(session.id)
    .execute(&mut *tx)
    .await;
    let _ = tx.commit().await;
    assert!(
        revived.is_err() || revived.as_ref().is_ok_and(|r| r.rows_affected() == 0),
        "{revived:?}"
    );
    assert!(
        a.validate(token.to_cookie_value().expose_secret())
            .await
            .unwrap()
            .is_none()
    );

    // A live session: each raise in place is refused, one statement at a time.
    let (live, live_token) = a
        .create(tenant, &new(ActorKind::User, Assurance::Aal1))
        .await
        .unwrap();
    for change in [
        "actor_kind = 'staff'",
        "aal = 2",
        "authenticated_at = now()",
        "absolute_expires_at = absolute_expires_at + interval '1 day'",
        "secret_hash = sha256(secret_hash)",
        "user_id = gen_random_uuid()",
    ] {
        let mut tx = pool.begin(&job).await.unwrap();
        let raised = sqlx::query(&format!("UPDATE auth.sessions SET {change} WHERE id = $1"))
            .bind(live.id)
            .execute(&mut *tx)
            .await;
        let error = raised.expect_err(change).to_string();
        assert!(error.contains("fixed"), "{change}: {error}");
        drop(tx);
    }
    let seen = a
        .validate(live_token.to_cookie_value().expose_secret())
        .await
        .unwrap()
        .expect("the live session is untouched");
    assert_eq!(
        (seen.kind, seen.assurance),
        (ActorKind::User, Assurance::Aal1)
    );

    // Positive control: what the library itself writes still goes through: using it (the idle
    // expiry slides) and ending it.
    let mut tx = pool.begin(&job).await.unwrap();
    let used = sqlx::query(
        "UPDATE auth.sessions SET last_seen_at = now(), \
         idle_expires_at = LEAST(now() + interval '10 minutes', absolute_expires_at) WHERE id = $1",
    )
    .bind(live.id)
    .execute(&mut *tx)
    .await
    .unwrap();
    assert_eq!(used.rows_affected(), 1);
    tx.commit().await.unwrap();
    assert!(a.revoke(tenant, live.id).await.unwrap());
    assert!(
        a.validate(live_token.to_cookie_value().expose_secret())
            .await
            .unwrap()
            .is_none()
    );
}

/// The runtime role gives itself `default_transaction_isolation = 'repeatable read'` (after the
/// start-up check) and ends its connections so the pool opens new ones. "Sign out everywhere"
/// and a sign-in take turns on the account's row, and the one that goes second must see what
/// the first committed — which a transaction at `REPEATABLE READ` does not: its snapshot is
/// taken before it waits for the lock. A sign-in holding the lock when "sign out everywhere"
/// starts would leave a live session behind it.
#[tokio::test]
async fn a_planted_isolation_default_does_not_let_a_sign_in_outlive_sign_out_everywhere() {
    let db = fresh_database(&template()).await;
    let (pool, store) = instance(&db, None).await;
    let tenant = TenantId::new_random();
    let user = new(ActorKind::User, Assurance::Aal1);
    // The account's row exists (an earlier sign-in).
    let (_, earlier) = store.create(tenant, &user).await.unwrap();

    let attacker = db.pool(Role::Runtime, 1).await;
    sqlx::raw_sql(&format!(
        "ALTER ROLE CURRENT_USER IN DATABASE \"{}\" SET default_transaction_isolation = 'repeatable read'",
        db.name()
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
    let mut planted = String::new();
    for _ in 0..5 {
        if let Ok(level) = sqlx::query_scalar::<_, String>("SHOW default_transaction_isolation")
            .fetch_one(pool.pool())
            .await
        {
            planted = level;
            break;
        }
    }
    assert_eq!(
        planted, "repeatable read",
        "the plant did not reach the pool"
    );

    // Someone holds the account's lock; a sign-in queues for it, then "sign out everywhere".
    let holder_pool = db.pool(Role::Runtime, 1).await;
    let mut holder = holder_pool.acquire().await.unwrap();
    sqlx::raw_sql(&format!(
        "BEGIN; SET LOCAL app.tenant_id = '{tenant}'; \
         SELECT 1 FROM auth.accounts WHERE user_id = '{}' FOR UPDATE",
        user.user.as_uuid()
    ))
    .execute(&mut *holder)
    .await
    .unwrap();
    let sign_in = {
        let store = store.clone();
        let user = user.clone();
        tokio::spawn(async move { store.create(tenant, &user).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sign_out = {
        let store = store.clone();
        let id = user.user;
        tokio::spawn(async move { store.revoke_all(tenant, id, None).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    sqlx::raw_sql("ROLLBACK")
        .execute(&mut *holder)
        .await
        .unwrap();
    let (_, concurrent) = sign_in.await.unwrap().unwrap();
    let ended = sign_out.await.unwrap().unwrap();
    assert_eq!(ended, 2, "sign out everywhere ended {ended} session(s)");
    for (token, what) in [
        (&earlier, "the earlier session"),
        (&concurrent, "the concurrent sign-in"),
    ] {
        assert!(
            store
                .validate(token.to_cookie_value().expose_secret())
                .await
                .unwrap()
                .is_none(),
            "{what} outlived sign out everywhere"
        );
    }
    // Control: a sign-in after it is live.
    let (_, after) = store.create(tenant, &user).await.unwrap();
    assert!(
        store
            .validate(after.to_cookie_value().expose_secret())
            .await
            .unwrap()
            .is_some()
    );
}

/// A cache whose pool goes through a transaction-pooling PgBouncer (a misconfiguration its
/// documentation warns of): its `LISTEN` is made on a server connection that other clients
/// then use, so it hears no notice. It must not serve from memory: its listener's probe notice
/// never arrives, so it never starts listening.
#[tokio::test]
async fn a_listener_that_hears_no_notice_never_serves() {
    let db = fresh_database(&template()).await;
    let (_, a) = instance(&db, None).await;
    // One server connection: every statement of every client runs on it, in turn.
    let bouncer = testkit::require(testkit::PgBouncer::start(
        db.server(),
        testkit::PoolMode::Transaction,
        1,
        &[testkit::RUNTIME_ROLE],
    ));
    let raw = sqlx::postgres::PgPoolOptions::new()
        .max_connections(3)
        .connect_with(bouncer.options(testkit::RUNTIME_ROLE, db.name()))
        .await
        .unwrap();
    let mut config = SessionCacheConfig::default();
    config.max_age = Duration::from_secs(60);
    let b = SessionStore::new(
        TenantPool::new(raw).await.unwrap(),
        SessionConfig::default(),
        Box::new([7; 32]),
    )
    .unwrap()
    .with_cache(config)
    .unwrap();
    // Control: the same cache made directly listens (and serves, see `assert_caching`).
    let (_, direct) = instance(&db, Some(Duration::from_secs(60))).await;
    let tenant = TenantId::new_random();
    assert_caching(&db, &a, &direct, tenant).await;
    // (Lookups through this PgBouncer, 1.18, cannot run outside a transaction: what is judged
    // is whether the cache would serve — it serves only while listening, see
    // `session_cache.rs`.)
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        assert_eq!(b.cache_listening(), Some(false), "it believes it listens");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(bouncer);
}

/// The runtime role inserts session rows of its own (it may `INSERT` into `auth.sessions`): a
/// staff `aal2` session for a user of the tenant, with a secret it chose and so a cookie it can
/// present. Without the store's row key it cannot sign the row, and an unsigned row, one with a
/// made-up MAC, or one carrying a genuine row's MAC is no session, at the layer's check or in
/// the cache. Positive control: a session the store made, in the same tenant, is one.
#[tokio::test]
async fn the_runtime_role_cannot_insert_a_session_of_its_own() {
    let db = fresh_database(&template()).await;
    let (pool, a) = instance(&db, Some(Duration::from_secs(60))).await;
    let tenant = TenantId::new_random();
    let victim = ActorId::new_random();
    let (genuine, genuine_token) = a
        .create(
            tenant,
            &NewSession::new(victim, ActorKind::User, Assurance::Aal2),
        )
        .await
        .unwrap();
    assert!(
        valid(&a, &genuine_token).await,
        "control: a genuine session"
    );
    let (genuine_mac,): (Vec<u8>,) =
        sqlx::query_as("SELECT row_mac FROM auth.sessions WHERE id = $1")
            .bind(genuine.id)
            .fetch_one(&db.pool(Role::Admin, 1).await)
            .await
            .unwrap();

    let job = TenantContext::for_job(tenant, None, "attack").unwrap();
    for (label, mac) in [
        ("no MAC", None),
        ("a made-up MAC", Some(vec![0x42; 32])),
        ("a genuine row's MAC", Some(genuine_mac)),
    ] {
        // The attacker's own secret, hashed as the library hashes it (the scheme is public).
        let id = Uuid::new_v4();
        let secret = [0x5a_u8; 32];
        let mut hasher = Sha256::new();
        hasher.update(b"magic-auth/session/v1\n");
        hasher.update(secret);
        let hash = hasher.finalize().to_vec();
        let mut tx = pool.begin(&job).await.unwrap();
        sqlx::query(
            "INSERT INTO auth.sessions (tenant_id, id, user_id, actor_kind, secret_hash, aal, \
             created_at, authenticated_at, last_seen_at, idle_expires_at, absolute_expires_at, \
             family_id, row_mac) \
             VALUES ($1, $2, $3, 'staff', $4, 2, now(), now(), now(), now() + interval '1 hour', \
                     now() + interval '2 hours', $2, $5)",
        )
        .bind(tenant.as_uuid())
        .bind(id)
        .bind(victim.as_uuid())
        .bind(&hash)
        .bind(mac.as_deref())
        .execute(&mut *tx)
        .await
        .unwrap();
        tx.commit().await.unwrap();
        let cookie = format!(
            "v1.{}.{}.{}",
            tenant.as_uuid().simple(),
            id.simple(),
            hex::encode(secret)
        );
        let forged = SessionToken::parse(&cookie.into()).expect("a well-formed token");
        assert!(
            a.validate(forged.to_cookie_value())
                .await
                .unwrap()
                .is_none(),
            "{label}: the inserted row was taken for a session"
        );
        assert!(!valid(&a, &forged).await, "{label}: served from the cache");
    }
    assert!(valid(&a, &genuine_token).await, "control: still a session");
}
