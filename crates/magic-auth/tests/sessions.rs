//! Sessions against a real PostgreSQL: storage, validation, expiry and revocation.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use magic_auth::secrecy::ExposeSecret;
use std::time::Duration;

use magic_auth::{Assurance, NewSession, SessionConfig, SessionStore};
use rls_guard::TenantPool;
use rls_guard::schema::SUPPORT_SQL;
use sha2::{Digest, Sha256};
use tenant_scope::{ActorId, ActorKind, TenantId};
use testkit::{Role, Template, TestDb, fresh_database};

fn template() -> Template {
    let sql = format!(
        "{SUPPORT_SQL}\n{}",
        magic_auth::schema::schema_sql("testkit_runtime").unwrap()
    );
    Template::new("magic_auth_sessions", sql)
}

async fn store(db: &TestDb, config: SessionConfig) -> SessionStore {
    let pool = TenantPool::new(db.pool(Role::Runtime, 4).await)
        .await
        .unwrap();
    SessionStore::new(pool, config, Box::new([7; 32])).unwrap()
}

fn user(kind: ActorKind, assurance: Assurance) -> NewSession {
    NewSession::new(ActorId::new_random(), kind, assurance).from_client(
        Some("Mozilla/5.0 test".into()),
        Some("192.0.2.7".parse().unwrap()),
    )
}

#[tokio::test]
async fn a_session_validates_and_only_a_hash_of_its_secret_is_stored() {
    let db = fresh_database(&template()).await;
    let s = store(&db, SessionConfig::default()).await;
    let t = TenantId::new_random();
    let new = user(ActorKind::Staff, Assurance::Aal2);
    let (session, token) = s.create(t, &new).await.unwrap();
    let cookie = token.to_cookie_value();
    let cookie = cookie.expose_secret();
    let valid = s.validate(cookie).await.unwrap().unwrap();
    assert_eq!(valid, session);
    assert_eq!(valid.actor().kind(), ActorKind::Staff);
    assert_eq!(valid.actor().tenant(), t);
    assert_eq!(valid.assurance, Assurance::Aal2);

    let admin = db.pool(Role::Admin, 1).await;
    let (stored,): (Vec<u8>,) = sqlx::query_as("SELECT secret_hash FROM auth.sessions")
        .fetch_one(&admin)
        .await
        .unwrap();
    let secret_hex = cookie.rsplit('.').next().unwrap();
    let secret = hex::decode(secret_hex).unwrap();
    let mut h = Sha256::new();
    h.update(b"magic-auth/session/v1\n");
    h.update(&secret);
    assert_eq!(stored, h.finalize().to_vec());
    // Nothing in the row is the secret itself.
    let (row_text,): (String,) = sqlx::query_as("SELECT s::text FROM auth.sessions s")
        .fetch_one(&admin)
        .await
        .unwrap();
    assert!(!row_text.contains(secret_hex), "{row_text}");
}

#[tokio::test]
async fn tampered_malformed_and_over_long_tokens_are_all_just_invalid() {
    let db = fresh_database(&template()).await;
    let s = store(&db, SessionConfig::default()).await;
    let t = TenantId::new_random();
    let (_, token) = s
        .create(t, &user(ActorKind::User, Assurance::Aal1))
        .await
        .unwrap();
    let good = token.to_cookie_value().expose_secret().to_owned();
    let other_tenant = TenantId::new_random().as_uuid().simple().to_string();
    let flip = |i: usize| {
        let mut b = good.clone().into_bytes();
        b[i] = if b[i] == b'0' { b'1' } else { b'0' };
        String::from_utf8(b).unwrap()
    };
    let cases = [
        format!("v1.{other_tenant}{}", &good[35..]), // the same session id and secret, another tenant
        flip(40),                                    // another session id
        flip(good.len() - 1),                        // another secret
        String::new(),
        "garbage".into(),
        "v1.".repeat(10_000),
        good.replace('.', "\0"),
    ];
    for case in cases {
        assert!(
            s.validate(case.as_str()).await.unwrap().is_none(),
            "{case:.40}"
        );
    }
    assert!(s.validate(good.as_str()).await.unwrap().is_some());
}

#[tokio::test]
async fn revocation_takes_effect_on_the_next_request_on_another_instance() {
    let db = fresh_database(&template()).await;
    let one = store(&db, SessionConfig::default()).await;
    let two = store(&db, SessionConfig::default()).await; // a second app instance
    let t = TenantId::new_random();
    let (session, token) = one
        .create(t, &user(ActorKind::User, Assurance::Aal2))
        .await
        .unwrap();
    let cookie = token.to_cookie_value();
    let cookie = cookie.expose_secret();
    assert!(two.validate(cookie).await.unwrap().is_some());
    assert!(one.revoke(t, session.id).await.unwrap());
    assert!(two.validate(cookie).await.unwrap().is_none());
    assert!(
        !one.revoke(t, session.id).await.unwrap(),
        "revoking twice reports nothing revoked"
    );
}

#[tokio::test]
async fn revoke_all_can_keep_the_current_session_and_stays_in_its_tenant() {
    let db = fresh_database(&template()).await;
    let s = store(&db, SessionConfig::default()).await;
    let (t, other) = (TenantId::new_random(), TenantId::new_random());
    let new = user(ActorKind::User, Assurance::Aal2);
    let (current, current_token) = s.create(t, &new).await.unwrap();
    let mut others = Vec::new();
    for _ in 0..3 {
        others.push(s.create(t, &new).await.unwrap().1);
    }
    // A session of the same user id in another tenant is not touched.
    let (_, elsewhere) = s.create(other, &new).await.unwrap();
    assert_eq!(s.list(t, new.user).await.unwrap().len(), 4);
    assert_eq!(
        s.revoke_all(t, new.user, Some(current.id)).await.unwrap(),
        3
    );
    assert!(
        s.validate(current_token.to_cookie_value().expose_secret())
            .await
            .unwrap()
            .is_some()
    );
    for token in &others {
        assert!(
            s.validate(token.to_cookie_value().expose_secret())
                .await
                .unwrap()
                .is_none()
        );
    }
    assert!(
        s.validate(elsewhere.to_cookie_value().expose_secret())
            .await
            .unwrap()
            .is_some()
    );
    let listed = s.list(t, new.user).await.unwrap();
    assert_eq!(
        listed.iter().map(|l| l.id).collect::<Vec<_>>(),
        vec![current.id]
    );
    assert_eq!(listed[0].ip, Some("192.0.2.7".parse().unwrap()));
    // A disabled user: everything goes.
    assert_eq!(s.revoke_all(t, new.user, None).await.unwrap(), 1);
    assert!(
        s.validate(current_token.to_cookie_value().expose_secret())
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn an_idle_session_expires_and_activity_never_passes_the_absolute_limit() {
    let db = fresh_database(&template()).await;
    let config = {
        let mut c = SessionConfig::default();
        c.idle = Duration::from_millis(1500);
        c.absolute = Duration::from_millis(3000);
        c.touch_after = Duration::ZERO;
        c
    };
    let s = store(&db, config).await;
    let t = TenantId::new_random();
    // Idle: unused for longer than the idle timeout.
    let (_, idle) = s
        .create(t, &user(ActorKind::User, Assurance::Aal1))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1700)).await;
    assert!(
        s.validate(idle.to_cookie_value().expose_secret())
            .await
            .unwrap()
            .is_none()
    );

    // Absolute: used every 0.5 s, still over after 3 s.
    let (created, active) = s
        .create(t, &user(ActorKind::User, Assurance::Aal1))
        .await
        .unwrap();
    let cookie = active.to_cookie_value();
    let cookie = cookie.expose_secret();
    let deadline = created.absolute_expires_at;
    let mut seen_alive = 0;
    loop {
        match s.validate(cookie).await.unwrap() {
            Some(session) => {
                assert!(session.idle_expires_at <= deadline);
                seen_alive += 1;
            }
            None => break,
        }
        assert!(seen_alive < 20, "the session outlived its absolute limit");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(seen_alive >= 4, "{seen_alive}");
    assert!(time::OffsetDateTime::now_utc() >= deadline);
}

#[tokio::test]
async fn a_store_that_cannot_be_reached_is_an_error_never_a_session() {
    let db = fresh_database(&template()).await;
    let pool = TenantPool::new(db.pool(Role::Runtime, 1).await)
        .await
        .unwrap();
    let s = SessionStore::new(pool.clone(), SessionConfig::default(), Box::new([7; 32])).unwrap();
    let t = TenantId::new_random();
    let (_, token) = s
        .create(t, &user(ActorKind::User, Assurance::Aal1))
        .await
        .unwrap();
    pool.pool().close().await;
    let err = s
        .validate(token.to_cookie_value().expose_secret())
        .await
        .unwrap_err();
    assert!(err.is_unavailable(), "{err}");
}

#[tokio::test]
async fn the_runtime_role_sees_no_other_tenants_sessions_and_cannot_delete() {
    let db = fresh_database(&template()).await;
    let s = store(&db, SessionConfig::default()).await;
    let (a, b) = (TenantId::new_random(), TenantId::new_random());
    let new = user(ActorKind::User, Assurance::Aal1);
    s.create(a, &new).await.unwrap();
    assert!(s.list(b, new.user).await.unwrap().is_empty());
    let raw = db.pool(Role::Runtime, 1).await;
    let unbound: i64 = sqlx::query_scalar("SELECT count(*) FROM auth.sessions")
        .fetch_one(&raw)
        .await
        .unwrap();
    assert_eq!(unbound, 0);
    let err = sqlx::query("DELETE FROM auth.sessions")
        .execute(&raw)
        .await
        .unwrap_err();
    assert_eq!(
        err.as_database_error().and_then(|e| e.code()).as_deref(),
        Some("42501"),
        "{err}"
    );
}

#[tokio::test]
async fn invalid_lifetimes_are_refused() {
    let db = fresh_database(&template()).await;
    let pool = TenantPool::new(db.pool(Role::Runtime, 1).await)
        .await
        .unwrap();
    for (idle, absolute) in [(10, 5), (0, 5), (5, 0)] {
        let config = {
            let mut c = SessionConfig::default();
            c.idle = Duration::from_secs(idle);
            c.absolute = Duration::from_secs(absolute);
            c.touch_after = Duration::ZERO;
            c
        };
        assert!(matches!(
            SessionStore::new(pool.clone(), config, Box::new([7; 32])),
            Err(magic_auth::AuthError::InvalidConfig(_))
        ));
    }
    // Values that cannot be represented, or make no sense, are refused at build time too —
    // so no request can meet them.
    let day = Duration::from_secs(24 * 3600);
    for (what, config) in [
        ("overflowing lifetimes", {
            let mut c = SessionConfig::default();
            c.idle = Duration::MAX;
            c.absolute = Duration::MAX;
            c.touch_after = Duration::ZERO;
            c
        }),
        ("absolute over 400 days", {
            let mut c = SessionConfig::default();
            c.absolute = day * 401;
            c
        }),
        ("sub-second idle", {
            let mut c = SessionConfig::default();
            c.idle = Duration::from_millis(10);
            c
        }),
        ("touch_after not below idle", {
            let mut c = SessionConfig::default();
            c.touch_after = Duration::from_secs(30 * 60);
            c
        }),
        ("overflowing touch_after", {
            let mut c = SessionConfig::default();
            c.touch_after = Duration::MAX;
            c
        }),
    ] {
        assert!(
            matches!(
                SessionStore::new(pool.clone(), config, Box::new([7; 32])),
                Err(magic_auth::AuthError::InvalidConfig(_))
            ),
            "{what} was accepted"
        );
    }
    // The control: the defaults and the longest lifetime allowed build.
    assert!(SessionStore::new(pool.clone(), SessionConfig::default(), Box::new([7; 32])).is_ok());
    let longest = {
        let mut c = SessionConfig::default();
        c.idle = magic_auth::MAX_SESSION_LIFETIME;
        c.absolute = magic_auth::MAX_SESSION_LIFETIME;
        c.touch_after = Duration::from_secs(60);
        c
    };
    assert!(SessionStore::new(pool, longest, Box::new([7; 32])).is_ok());
}

#[tokio::test]
async fn a_tenant_admin_lists_every_live_session_of_the_tenant_and_no_other() {
    let db = fresh_database(&template()).await;
    let s = store(&db, SessionConfig::default()).await;
    let (t, other) = (TenantId::new_random(), TenantId::new_random());
    let (alice, bob) = (
        user(ActorKind::User, Assurance::Aal1),
        user(ActorKind::Staff, Assurance::Aal2),
    );
    let (a, _) = s.create(t, &alice).await.unwrap();
    let (b, _) = s.create(t, &bob).await.unwrap();
    let (gone, _) = s.create(t, &alice).await.unwrap();
    s.revoke(t, gone.id).await.unwrap();
    s.create(other, &alice).await.unwrap();
    let listed = s.list_tenant(t).await.unwrap();
    let mut ids: Vec<_> = listed.iter().map(|l| (l.id, l.user)).collect();
    ids.sort();
    let mut want = vec![(a.id, alice.user), (b.id, bob.user)];
    want.sort();
    assert_eq!(ids, want);
}

#[tokio::test]
async fn the_lookup_binds_its_tenant_for_its_own_statement_only() {
    let db = fresh_database(&template()).await;
    // One connection: whatever the lookup leaves behind, the next statement sees.
    let raw = db.pool(Role::Runtime, 1).await;
    let s = SessionStore::new(
        TenantPool::new(raw.clone()).await.unwrap(),
        SessionConfig::default(),
        Box::new([7; 32]),
    )
    .unwrap();
    let t = TenantId::new_random();
    let (_, token) = s
        .create(t, &user(ActorKind::User, Assurance::Aal2))
        .await
        .unwrap();
    assert!(
        s.validate(token.to_cookie_value().expose_secret())
            .await
            .unwrap()
            .is_some()
    );
    let (setting, visible): (Option<String>, i64) = sqlx::query_as(
        "SELECT current_setting('app.tenant_id', true), (SELECT count(*) FROM auth.sessions)",
    )
    .fetch_one(&raw)
    .await
    .unwrap();
    assert!(
        setting.unwrap_or_default().is_empty(),
        "the binding outlived the lookup"
    );
    assert_eq!(
        visible, 0,
        "an unbound statement sees sessions after a lookup"
    );
    // And the runtime role has no lookup function to call with someone else's tenant.
    let exists: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_proc WHERE proname = 'session_lookup')",
    )
    .fetch_one(&raw)
    .await
    .unwrap();
    assert!(!exists);
}
