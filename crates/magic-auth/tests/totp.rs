//! TOTP against a real PostgreSQL: enrolment, replay protection, the ±1 window, lockout and
//! sealed seeds.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use field_crypto::{KeyMaterial, Keyring};
use magic_auth::AuthError;
use magic_auth::totp::{CodeCheck, TotpConfig, TotpService, code_at};
use rls_guard::TenantPool;
use rls_guard::schema::SUPPORT_SQL;
use tenant_scope::{ActorId, TenantId};
use testkit::{Role, Template, TestDb, fresh_database};

/// A fixed "now": 2026-11-29T06:00:15Z, the middle of a 30-second step.
const NOW: u64 = 1_795_845_615;

fn template() -> Template {
    let sql = format!(
        "{SUPPORT_SQL}\n{}",
        magic_auth::schema::schema_sql("testkit_runtime").unwrap()
    );
    Template::new("magic_auth_totp", sql)
}

fn keyring(byte: u8) -> Arc<Keyring> {
    let mut k = Keyring::new();
    k.add_key(1, &KeyMaterial::from_bytes([byte; 32])).unwrap();
    k.promote(1).unwrap();
    Arc::new(k)
}

async fn service(db: &TestDb, key: u8) -> TotpService {
    let pool = TenantPool::new(db.pool(Role::Runtime, 4).await)
        .await
        .unwrap();
    TotpService::new(pool, keyring(key), TotpConfig::new("Tenantguard"))
}

/// Enrols and confirms `user` at step NOW-60s; returns the seed.
async fn enrolled(s: &TotpService, t: TenantId, user: ActorId) -> Vec<u8> {
    let e = s.enroll(t, user, "ada@example.com").await.unwrap();
    let seed = totp_rs::Secret::try_from_base32(e.secret_base32.as_str())
        .unwrap()
        .as_bytes()
        .to_vec();
    let code = code_at(&seed, NOW - 60).unwrap();
    assert!(matches!(
        s.confirm(t, user, &code, NOW - 60).await.unwrap(),
        CodeCheck::Accepted { .. }
    ));
    seed
}

#[tokio::test]
async fn enrolment_gives_an_otpauth_url_and_stores_the_seed_sealed() {
    let db = fresh_database(&template()).await;
    let s = service(&db, 1).await;
    let (t, user) = (TenantId::new_random(), ActorId::new_random());
    let e = s.enroll(t, user, "ada@example.com").await.unwrap();
    assert!(
        e.otpauth_url.starts_with("otpauth://totp/"),
        "{}",
        e.otpauth_url.as_str()
    );
    assert!(e.otpauth_url.contains("issuer=Tenantguard"));
    assert!(e.otpauth_url.contains(e.secret_base32.as_str()));
    assert!(!format!("{e:?}").contains(e.secret_base32.as_str()));
    // The QR code: an inline <svg> (no XML declaration), different for another secret.
    let qr = e.qr_svg().unwrap();
    assert!(
        qr.starts_with("<svg") && qr.trim_end().ends_with("</svg>"),
        "{}",
        &qr[..40]
    );
    let other = s
        .enroll(t, ActorId::new_random(), "bo@example.com")
        .await
        .unwrap();
    assert_ne!(*other.qr_svg().unwrap(), *qr);
    let seed = totp_rs::Secret::try_from_base32(e.secret_base32.as_str()).unwrap();
    assert_eq!(seed.as_bytes().len(), 20, "160-bit seed");
    let admin = db.pool(Role::Admin, 1).await;
    let (stored,): (Vec<u8>,) = sqlx::query_as("SELECT seed FROM auth.totp")
        .fetch_one(&admin)
        .await
        .unwrap();
    assert!(
        !stored.windows(20).any(|w| w == seed.as_bytes()),
        "the seed is stored in clear"
    );
    // Pending: it cannot be used to sign in until confirmed.
    let code = code_at(seed.as_bytes(), NOW).unwrap();
    assert!(matches!(
        s.verify(t, user, &code, NOW).await,
        Err(AuthError::NotEnrolled)
    ));
}

#[tokio::test]
async fn the_enrolment_code_cannot_be_reused_to_sign_in() {
    let db = fresh_database(&template()).await;
    let s = service(&db, 1).await;
    let (t, user) = (TenantId::new_random(), ActorId::new_random());
    let e = s.enroll(t, user, "ada").await.unwrap();
    let seed = totp_rs::Secret::try_from_base32(e.secret_base32.as_str())
        .unwrap()
        .as_bytes()
        .to_vec();
    let code = code_at(&seed, NOW).unwrap();
    assert!(matches!(
        s.confirm(t, user, &code, NOW).await.unwrap(),
        CodeCheck::Accepted { .. }
    ));
    assert!(matches!(
        s.verify(t, user, &code, NOW).await.unwrap(),
        CodeCheck::Rejected { .. }
    ));
    // Re-enrolling an active factor is refused (it needs step-up and a separate reset).
    assert!(matches!(
        s.enroll(t, user, "ada").await,
        Err(AuthError::AlreadyEnrolled)
    ));
}

#[tokio::test]
async fn a_code_is_accepted_once_and_never_an_older_step_after_a_newer_one() {
    let db = fresh_database(&template()).await;
    let s = service(&db, 1).await;
    let (t, user) = (TenantId::new_random(), ActorId::new_random());
    let seed = enrolled(&s, t, user).await;
    let now_code = code_at(&seed, NOW).unwrap();
    assert!(matches!(
        s.verify(t, user, &now_code, NOW).await.unwrap(),
        CodeCheck::Accepted { .. }
    ));
    // The same code again, in the same step: replay.
    assert!(matches!(
        s.verify(t, user, &now_code, NOW + 5).await.unwrap(),
        CodeCheck::Rejected { .. }
    ));
    // The previous step's code is inside the ±1 window but older than the accepted one.
    let older = code_at(&seed, NOW - 30).unwrap();
    assert!(matches!(
        s.verify(t, user, &older, NOW).await.unwrap(),
        CodeCheck::Rejected { .. }
    ));
    // The next step's code is newer: accepted.
    let newer = code_at(&seed, NOW + 30).unwrap();
    assert!(matches!(
        s.verify(t, user, &newer, NOW).await.unwrap(),
        CodeCheck::Accepted { .. }
    ));
}

#[tokio::test]
async fn the_window_is_plus_minus_one_step() {
    let db = fresh_database(&template()).await;
    let s = service(&db, 1).await;
    let t = TenantId::new_random();
    for (offset, accepted) in [
        (-60i64, false),
        (60, false),
        (-30, true),
        (30, true),
        (0, true),
    ] {
        let user = ActorId::new_random();
        let seed = enrolled(&s, t, user).await;
        let at = NOW.checked_add_signed(offset).unwrap();
        let code = code_at(&seed, at).unwrap();
        // Codes from two steps away must not collide with the window by chance in this test.
        let window: Vec<String> = [-30i64, 0, 30]
            .iter()
            .map(|d| code_at(&seed, NOW.checked_add_signed(*d).unwrap()).unwrap())
            .collect();
        if !accepted && window.contains(&code) {
            continue;
        }
        let verdict = s.verify(t, user, &code, NOW).await.unwrap();
        assert_eq!(
            matches!(verdict, CodeCheck::Accepted { .. }),
            accepted,
            "offset {offset}: {verdict:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_replays_of_one_code_are_accepted_exactly_once() {
    let db = fresh_database(&template()).await;
    let s = Arc::new(service(&db, 1).await);
    let (t, user) = (TenantId::new_random(), ActorId::new_random());
    let seed = enrolled(&s, t, user).await;
    let code = code_at(&seed, NOW).unwrap();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (s, code) = (s.clone(), code.clone());
        tasks.push(tokio::spawn(async move {
            s.verify(t, user, &code, NOW).await.unwrap()
        }));
    }
    let mut accepted = 0;
    for task in tasks {
        if matches!(task.await.unwrap(), CodeCheck::Accepted { .. }) {
            accepted += 1;
        }
    }
    assert_eq!(accepted, 1);
}

#[tokio::test]
async fn five_wrong_codes_lock_the_account_even_against_the_right_code() {
    let db = fresh_database(&template()).await;
    let s = service(&db, 1).await;
    let (t, user) = (TenantId::new_random(), ActorId::new_random());
    let seed = enrolled(&s, t, user).await;
    let right = code_at(&seed, NOW).unwrap();
    let wrong = if right == "000000" {
        "000001"
    } else {
        "000000"
    };
    for remaining in (1..=4).rev() {
        assert_eq!(
            s.verify(t, user, wrong, NOW).await.unwrap(),
            CodeCheck::Rejected { remaining }
        );
    }
    let CodeCheck::Locked { until } = s.verify(t, user, "not a code", NOW).await.unwrap() else {
        panic!("not locked after five failures");
    };
    assert!(matches!(
        s.verify(t, user, &right, NOW).await.unwrap(),
        CodeCheck::Locked { .. }
    ));
    // Another instance sees the same lock.
    let other = service(&db, 1).await;
    assert!(matches!(
        other.verify(t, user, &right, NOW + 1).await.unwrap(),
        CodeCheck::Locked { .. }
    ));
    // After the lockout, the current code works again.
    let later = u64::try_from(until.unix_timestamp()).unwrap() + 1;
    let code = code_at(&seed, later).unwrap();
    assert!(matches!(
        s.verify(t, user, &code, later).await.unwrap(),
        CodeCheck::Accepted { .. }
    ));
}

#[tokio::test]
async fn a_clock_near_zero_does_not_panic() {
    let db = fresh_database(&template()).await;
    let s = service(&db, 1).await;
    let (t, user) = (TenantId::new_random(), ActorId::new_random());
    let e = s.enroll(t, user, "ada").await.unwrap();
    let seed = totp_rs::Secret::try_from_base32(e.secret_base32.as_str())
        .unwrap()
        .as_bytes()
        .to_vec();
    let code = code_at(&seed, 0).unwrap();
    assert!(matches!(
        s.confirm(t, user, &code, 0).await.unwrap(),
        CodeCheck::Accepted { step: 0 }
    ));
    for now in [0u64, 1, 29, 30, 31, 59] {
        let code = code_at(&seed, now).unwrap();
        let verdict = s.verify(t, user, &code, now).await.unwrap();
        // Step 0 is used up; steps 1 (from 30 s on) are new once.
        assert_eq!(
            matches!(verdict, CodeCheck::Accepted { .. }),
            now == 30,
            "{now}: {verdict:?}"
        );
    }
}

#[tokio::test]
async fn a_seed_is_unreadable_with_the_wrong_key() {
    let db = fresh_database(&template()).await;
    let s = service(&db, 1).await;
    let (t, user) = (TenantId::new_random(), ActorId::new_random());
    let seed = enrolled(&s, t, user).await;
    let wrong_key = service(&db, 2).await;
    let code = code_at(&seed, NOW).unwrap();
    assert!(matches!(
        wrong_key.verify(t, user, &code, NOW).await,
        Err(AuthError::Crypto)
    ));
    // Nor for another user's row: copy the ciphertext over.
    let victim = ActorId::new_random();
    enrolled(&s, t, victim).await;
    let admin = db.pool(Role::Admin, 1).await;
    let mut tx = admin.begin().await.unwrap();
    sqlx::raw_sql(&format!(
        "SET LOCAL app.tenant_id = '{t}'; SET LOCAL app.commit_binding = '{t}:'"
    ))
    .execute(&mut *tx)
    .await
    .unwrap();
    sqlx::query(
        "UPDATE auth.totp SET seed = (SELECT seed FROM auth.totp WHERE user_id = $1) WHERE user_id = $2",
    )
    .bind(user.as_uuid())
    .bind(victim.as_uuid())
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert!(matches!(
        s.verify(t, victim, &code, NOW).await,
        Err(AuthError::Crypto)
    ));
}

async fn session_for(
    db: &TestDb,
    tenant: TenantId,
    user: ActorId,
    assurance: magic_auth::Assurance,
) -> magic_auth::Session {
    let pool = TenantPool::new(db.pool(Role::Runtime, 1).await)
        .await
        .unwrap();
    let store = magic_auth::SessionStore::new(pool, magic_auth::SessionConfig::default()).unwrap();
    store
        .create(
            tenant,
            &magic_auth::NewSession {
                user,
                kind: tenant_scope::ActorKind::User,
                assurance,
                user_agent: None,
                ip: None,
            },
        )
        .await
        .unwrap()
        .0
}

#[tokio::test]
async fn recovery_codes_work_once_are_stored_hashed_and_need_step_up_to_regenerate() {
    let db = fresh_database(&template()).await;
    let s = service(&db, 1).await;
    let (t, user) = (TenantId::new_random(), ActorId::new_random());
    enrolled(&s, t, user).await;
    let step_up = std::time::Duration::from_secs(600);
    // Only a fresh aal2 session may regenerate them.
    let aal1 = session_for(&db, t, user, magic_auth::Assurance::Aal1).await;
    assert!(matches!(
        s.regenerate_recovery_codes(&aal1, step_up).await,
        Err(AuthError::StepUpRequired)
    ));
    let aal2 = session_for(&db, t, user, magic_auth::Assurance::Aal2).await;
    let codes = s.regenerate_recovery_codes(&aal2, step_up).await.unwrap();
    assert_eq!(codes.codes().len(), 10);
    assert!(!format!("{codes:?}").contains(&codes.codes()[0]));
    // Stored hashed.
    let admin = db.pool(Role::Admin, 1).await;
    let rows: Vec<String> = sqlx::query_scalar("SELECT r::text FROM auth.recovery_codes r")
        .fetch_all(&admin)
        .await
        .unwrap();
    for code in codes.codes() {
        let bare = code.replace('-', "");
        assert!(
            rows.iter()
                .all(|r| !r.contains(&bare) && !r.contains(code.as_str()))
        );
    }
    // Each works once, typed loosely (case, dashes).
    let first = codes.codes()[0].to_uppercase().replace('-', " ");
    assert_eq!(
        s.use_recovery_code(t, user, &first, NOW).await.unwrap(),
        CodeCheck::RecoveryAccepted { codes_left: 9 }
    );
    assert!(matches!(
        s.use_recovery_code(t, user, &first, NOW).await.unwrap(),
        CodeCheck::Rejected { .. }
    ));
    // Regenerating voids the old ones.
    let fresh = s.regenerate_recovery_codes(&aal2, step_up).await.unwrap();
    assert!(matches!(
        s.use_recovery_code(t, user, &codes.codes()[1], NOW)
            .await
            .unwrap(),
        CodeCheck::Rejected { .. }
    ));
    assert!(matches!(
        s.use_recovery_code(t, user, &fresh.codes()[1], NOW)
            .await
            .unwrap(),
        CodeCheck::RecoveryAccepted { .. }
    ));
    // Wrong codes count towards the lockout.
    for _ in 0..4 {
        assert!(matches!(
            s.use_recovery_code(t, user, "wrong-code", NOW)
                .await
                .unwrap(),
            CodeCheck::Rejected { .. }
        ));
    }
    assert!(matches!(
        s.use_recovery_code(t, user, "wrong-code", NOW)
            .await
            .unwrap(),
        CodeCheck::Locked { .. }
    ));
    // Locked: even a valid recovery code is refused, and not used up.
    assert!(matches!(
        s.use_recovery_code(t, user, &fresh.codes()[2], NOW)
            .await
            .unwrap(),
        CodeCheck::Locked { .. }
    ));
}
