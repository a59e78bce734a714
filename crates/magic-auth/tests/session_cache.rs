//! The per-instance session cache: served from memory only while its listener listens, every
//! change to a session forgets it on every instance (a trigger's NOTIFY, at commit), an entry
//! lives at most its maximum age, and staff sessions are never held.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use magic_auth::secrecy::ExposeSecret;
use sha2::Digest as _;
use std::time::{Duration, Instant};

use magic_auth::{
    Assurance, NewSession, SessionCacheConfig, SessionConfig, SessionStore, SessionToken,
};
use rls_guard::TenantPool;
use rls_guard::schema::SUPPORT_SQL;
use tenant_scope::{ActorId, ActorKind, TenantId};
use testkit::{Role, Template, TestDb, fresh_database};

fn template() -> Template {
    let sql = format!(
        "{SUPPORT_SQL}\n{}",
        magic_auth::schema::schema_sql("testkit_runtime").unwrap()
    );
    Template::new("magic_auth_sessions", sql)
}

async fn store(db: &TestDb) -> SessionStore {
    let pool = TenantPool::new(db.pool(Role::Runtime, 2).await)
        .await
        .unwrap();
    SessionStore::new(pool, SessionConfig::default(), Box::new([7; 32])).unwrap()
}

async fn cached(db: &TestDb, max_age: Duration) -> SessionStore {
    let mut config = SessionCacheConfig::default();
    config.max_age = max_age;
    let store = store(db).await.with_cache(config).unwrap();
    wait_listening(&store).await;
    store
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

fn new(kind: ActorKind) -> NewSession {
    NewSession::new(ActorId::new_random(), kind, Assurance::Aal2)
}

/// Revokes `id` as the superuser with triggers off: no notice is sent, so only the cache's
/// own rules (maximum age, listening) can end a cached entry.
async fn revoke_silently(db: &TestDb, tenant: TenantId, id: uuid::Uuid) {
    let admin = db.pool(Role::Admin, 1).await;
    let sql = format!(
        "BEGIN; SET LOCAL session_replication_role = replica; \
         SET LOCAL app.tenant_id = '{tenant}'; SET LOCAL app.commit_binding = '{tenant}:'; \
         UPDATE auth.sessions SET revoked_at = now() WHERE id = '{id}'; COMMIT"
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

#[tokio::test]
async fn an_entry_lives_at_most_its_maximum_age_and_a_wrong_secret_never_hits() {
    let db = fresh_database(&template()).await;
    let cache = cached(&db, Duration::from_millis(800)).await;
    let uncached = store(&db).await;
    let tenant = TenantId::new_random();
    let (session, token) = cache.create(tenant, &new(ActorKind::User)).await.unwrap();
    assert!(valid(&cache, &token).await);
    revoke_silently(&db, tenant, session.id).await;
    // Control: the database already says no; the cache still holds the entry (it is used).
    assert!(!valid(&uncached, &token).await);
    assert!(
        valid(&cache, &token).await,
        "the entry was not served from memory"
    );
    // The same id with another secret is not a hit.
    let cookie = token.to_cookie_value();
    let cookie = cookie.expose_secret();
    let (head, secret) = cookie.rsplit_once('.').unwrap();
    let last = if secret.ends_with('0') { '1' } else { '0' };
    let flipped = format!("{head}.{}{last}", &secret[..secret.len() - 1]);
    assert_ne!(flipped.as_str(), cookie);
    assert!(
        cache
            .validate_cached(flipped.as_str())
            .await
            .unwrap()
            .is_none()
    );
    // `validate` always asks the database.
    assert!(
        cache
            .validate(token.to_cookie_value().expose_secret())
            .await
            .unwrap()
            .is_none()
    );
    // Past the maximum age the database answers.
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(!valid(&cache, &token).await);
}

#[tokio::test]
async fn a_revocation_on_one_instance_is_refused_by_the_others_layer_within_milliseconds() {
    let db = fresh_database(&template()).await;
    let a = store(&db).await;
    let b = cached(&db, Duration::from_secs(60)).await;
    let tenant = TenantId::new_random();
    let mut waits = Vec::new();
    for _ in 0..20 {
        let (session, token) = a.create(tenant, &new(ActorKind::User)).await.unwrap();
        assert!(valid(&b, &token).await);
        assert!(valid(&b, &token).await, "live control");
        a.revoke(tenant, session.id).await.unwrap();
        let revoked = Instant::now();
        while valid(&b, &token).await {
            assert!(
                revoked.elapsed() < Duration::from_secs(2),
                "B kept a revoked session"
            );
            tokio::task::yield_now().await;
        }
        waits.push(revoked.elapsed());
    }
    waits.sort();
    assert!(waits[waits.len() - 1] < Duration::from_secs(1), "{waits:?}");
    // Every other kind of ending announces itself too: sign out everywhere, disabling.
    for end in 0..2 {
        let (session, token) = a.create(tenant, &new(ActorKind::User)).await.unwrap();
        assert!(valid(&b, &token).await);
        if end == 0 {
            a.revoke_all(tenant, session.user, None).await.unwrap();
        } else {
            a.disable_account(tenant, session.user).await.unwrap();
        }
        let revoked = Instant::now();
        while valid(&b, &token).await {
            assert!(
                revoked.elapsed() < Duration::from_secs(2),
                "ending {end} was not announced"
            );
            tokio::task::yield_now().await;
        }
    }
}

#[tokio::test]
async fn without_its_listener_the_cache_serves_nothing_and_forgets_everything() {
    let db = fresh_database(&template()).await;
    let cache = cached(&db, Duration::from_secs(60)).await;
    let tenant = TenantId::new_random();
    let (first, first_token) = cache.create(tenant, &new(ActorKind::User)).await.unwrap();
    assert!(valid(&cache, &first_token).await);
    // Control: held while listening (a silent revocation is not seen).
    revoke_silently(&db, tenant, first.id).await;
    assert!(valid(&cache, &first_token).await);
    let (second, second_token) = cache.create(tenant, &new(ActorKind::User)).await.unwrap();
    assert!(valid(&cache, &second_token).await);
    // The listener's connection ends: from then on the database answers.
    let admin = db.pool(Role::Admin, 1).await;
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = current_database() AND query ILIKE 'LISTEN%'",
    )
    .fetch_one(&admin)
    .await
    .unwrap();
    assert_eq!(killed, 1);
    let start = Instant::now();
    while valid(&cache, &first_token).await {
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "a lost listener kept serving"
        );
        tokio::task::yield_now().await;
    }
    // It listens again, and what it held before is gone: the second session, revoked silently
    // now, is not served from memory.
    wait_listening(&cache).await;
    revoke_silently(&db, tenant, second.id).await;
    assert!(!valid(&cache, &second_token).await);
    // And it serves again once listening.
    let (_, third) = cache.create(tenant, &new(ActorKind::User)).await.unwrap();
    assert!(valid(&cache, &third).await);
}

#[tokio::test]
async fn staff_sessions_always_ask_the_database() {
    let db = fresh_database(&template()).await;
    let cache = cached(&db, Duration::from_secs(60)).await;
    let tenant = TenantId::new_random();
    let (staff, staff_token) = cache.create(tenant, &new(ActorKind::Staff)).await.unwrap();
    let (user, user_token) = cache.create(tenant, &new(ActorKind::User)).await.unwrap();
    assert!(valid(&cache, &staff_token).await);
    assert!(valid(&cache, &user_token).await);
    revoke_silently(&db, tenant, staff.id).await;
    revoke_silently(&db, tenant, user.id).await;
    assert!(!valid(&cache, &staff_token).await);
    assert!(
        valid(&cache, &user_token).await,
        "control: the user's session was cached"
    );
}

#[tokio::test]
async fn a_cache_outside_a_runtime_or_with_bad_settings_is_refused() {
    let db = fresh_database(&template()).await;
    let s = store(&db).await;
    let mut config = SessionCacheConfig::default();
    config.max_age = Duration::from_secs(61);
    assert!(s.clone().with_cache(config).is_err());
    let handle = std::thread::spawn(move || s.with_cache(SessionCacheConfig::default()).is_err());
    assert!(handle.join().unwrap());
}

/// How many backends wait for a lock on `auth.sessions`.
async fn waiting(db: &TestDb) -> i64 {
    let admin = db.pool(Role::Admin, 1).await;
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE wait_event_type = 'Lock' AND datname = current_database()",
    )
    .fetch_one(&admin)
    .await
    .unwrap()
}

/// Waits until `n` backends wait for a lock.
async fn until_waiting(db: &TestDb, n: i64) {
    let start = Instant::now();
    while waiting(db).await < n {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no lookup waited"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A lookup made while another session's lookup is under way is still held: refreshing one
/// session's entry is no change to any session, so under concurrency the cache still fills (it
/// used to count every refresh as a change, and at 128 concurrent requests almost every request
/// went to the database). The lookups are held mid-flight by a lock on the table; once they
/// complete, a silent revocation shows whether the first one's answer was held. The control:
/// a real change (a notice) during the lookup keeps its answer out of the cache.
#[tokio::test]
async fn concurrent_lookups_of_different_sessions_are_all_held() {
    let db = fresh_database(&template()).await;
    // Connections for the listener and both lookups.
    let pool = TenantPool::new(db.pool(Role::Runtime, 4).await)
        .await
        .unwrap();
    let store = SessionStore::new(pool, SessionConfig::default(), Box::new([7; 32]))
        .unwrap()
        .with_cache(SessionCacheConfig::default())
        .unwrap();
    wait_listening(&store).await;
    let admin = db.pool(Role::Admin, 1).await;
    let tenant = TenantId::new_random();
    let cookie = |t: &SessionToken| t.to_cookie_value().expose_secret().to_owned();
    for notice in [false, true] {
        let (first, first_token) = store.create(tenant, &new(ActorKind::User)).await.unwrap();
        let (second, second_token) = store.create(tenant, &new(ActorKind::User)).await.unwrap();
        let mut lock = admin.begin().await.unwrap();
        sqlx::query("LOCK TABLE auth.sessions IN ACCESS EXCLUSIVE MODE")
            .execute(&mut *lock)
            .await
            .unwrap();
        let a = {
            let (store, cookie) = (store.clone(), cookie(&first_token));
            tokio::spawn(async move { store.validate(cookie.as_str()).await })
        };
        until_waiting(&db, 1).await;
        let b = {
            let (store, cookie) = (store.clone(), cookie(&second_token));
            tokio::spawn(async move { store.validate(cookie.as_str()).await })
        };
        until_waiting(&db, 2).await;
        if notice {
            // A change to the first session, announced while its lookup waits.
            sqlx::query("SELECT pg_notify('magic_auth_sessions', $1)")
                .bind(hex::encode(sha2::Sha256::digest(
                    format!("magic-auth/session-change/v1:{}", first.id).as_bytes(),
                )))
                .execute(&db.pool(Role::Admin, 1).await)
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        lock.commit().await.unwrap();
        assert!(a.await.unwrap().unwrap().is_some());
        assert!(b.await.unwrap().unwrap().is_some());
        revoke_silently(&db, tenant, first.id).await;
        revoke_silently(&db, tenant, second.id).await;
        if notice {
            assert!(
                !valid(&store, &first_token).await,
                "a lookup overlapping a notice of its session was held"
            );
        } else {
            assert!(
                valid(&store, &first_token).await,
                "the first lookup was not held"
            );
            assert!(
                valid(&store, &second_token).await,
                "the second lookup was not held"
            );
        }
    }
}
