//! TOTP against a real PostgreSQL: enrolment, replay protection, the ±1 window, lockout and
//! sealed seeds.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::code_at;

use magic_auth::secrecy::ExposeSecret;
use std::sync::Arc;

use field_crypto::{KeyMaterial, Keyring};
use magic_auth::AuthError;
use magic_auth::secrecy::SecretString;
use magic_auth::totp::{CodeCheck, TotpConfig, TotpService};
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
    k.add_key(1, &KeyMaterial::from_bytes(Box::new([byte; 32])))
        .unwrap();
    k.promote(1).unwrap();
    Arc::new(k)
}

async fn service(db: &TestDb, key: u8) -> TotpService {
    service_with(db, key, TotpConfig::new("Tenantguard")).await
}

async fn service_with(db: &TestDb, key: u8, config: TotpConfig) -> TotpService {
    let pool = TenantPool::new(db.pool(Role::Runtime, 4).await)
        .await
        .unwrap();
    TotpService::new(pool, keyring(key), config).unwrap()
}

/// Enrols and confirms `user` at step NOW-60s; returns the seed.
async fn enrolled(s: &TotpService, t: TenantId, user: ActorId) -> Vec<u8> {
    let e = s.enroll(t, user, "ada@example.com").await.unwrap();
    let seed = totp_rs::Secret::try_from_base32(e.secret_base32.expose_secret())
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
    let url = e.otpauth_url.expose_secret();
    assert!(url.starts_with("otpauth://totp/"), "{url}");
    assert!(url.contains("issuer=Tenantguard"));
    assert!(url.contains(e.secret_base32.expose_secret()));
    assert!(!format!("{e:?}").contains(e.secret_base32.expose_secret()));
    // Each secret handed out is a SecretString: its Debug shows none of it.
    let shown = format!(
        "{:?} {:?} {:?}",
        e.otpauth_url,
        e.secret_base32,
        e.qr_svg().unwrap()
    );
    assert!(
        !shown.contains(e.secret_base32.expose_secret())
            && !shown.contains("otpauth")
            && !shown.contains("<svg"),
        "{shown}"
    );
    // The QR code: an inline <svg> (no XML declaration), different for another secret.
    let qr = e.qr_svg().unwrap();
    let qr = qr.expose_secret();
    assert!(
        qr.starts_with("<svg") && qr.trim_end().ends_with("</svg>"),
        "{}",
        &qr[..40]
    );
    let other = s
        .enroll(t, ActorId::new_random(), "bo@example.com")
        .await
        .unwrap();
    assert_ne!(other.qr_svg().unwrap().expose_secret(), qr);
    let seed = totp_rs::Secret::try_from_base32(e.secret_base32.expose_secret()).unwrap();
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
    let seed = totp_rs::Secret::try_from_base32(e.secret_base32.expose_secret())
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
    let seed = totp_rs::Secret::try_from_base32(e.secret_base32.expose_secret())
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
    let mut tx = common::bound_admin_tx(&admin, t).await;
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
    let store = magic_auth::SessionStore::new(
        pool,
        magic_auth::SessionConfig::default(),
        Box::new([7; 32]),
    )
    .unwrap();
    store
        .create(
            tenant,
            &magic_auth::NewSession::new(user, tenant_scope::ActorKind::User, assurance),
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
    assert!(!format!("{codes:?}").contains(codes.codes()[0].expose_secret()));
    assert!(!format!("{:?}", codes.codes()).contains(codes.codes()[0].expose_secret()));
    // Stored hashed.
    let admin = db.pool(Role::Admin, 1).await;
    let rows: Vec<String> = sqlx::query_scalar("SELECT r::text FROM auth.recovery_codes r")
        .fetch_all(&admin)
        .await
        .unwrap();
    for code in codes.codes() {
        let code = code.expose_secret();
        let bare = code.replace('-', "");
        assert!(rows.iter().all(|r| !r.contains(&bare) && !r.contains(code)));
    }
    // Each works once, typed loosely (case, dashes).
    let first: SecretString = codes.codes()[0]
        .expose_secret()
        .to_uppercase()
        .replace('-', " ")
        .into();
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
            s.use_recovery_code(t, user, &"wrong-code".into(), NOW)
                .await
                .unwrap(),
            CodeCheck::Rejected { .. }
        ));
    }
    assert!(matches!(
        s.use_recovery_code(t, user, &"wrong-code".into(), NOW)
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

/// A wrong code for `seed` at `now`: none of the codes of the ±1 window.
fn wrong_code(seed: &[u8], now: u64, salt: u64) -> String {
    let window: Vec<String> = [now - 30, now, now + 30]
        .iter()
        .map(|t| code_at(seed, *t).unwrap())
        .collect();
    (salt..)
        .map(|n| format!("{:06}", n % 1_000_000))
        .find(|c| !window.contains(c))
        .unwrap()
}

fn unix(at: time::OffsetDateTime) -> u64 {
    u64::try_from(at.unix_timestamp()).unwrap()
}

/// The consecutive-failure count and the hard-lock mark, read back as the owner.
async fn stored_lock(db: &TestDb, user: ActorId) -> (i32, bool) {
    let admin = db.pool(Role::Admin, 1).await;
    sqlx::query_as(
        "SELECT failed_attempts, hard_locked_at IS NOT NULL FROM auth.totp WHERE user_id = $1",
    )
    .bind(user.as_uuid())
    .fetch_one(&admin)
    .await
    .unwrap()
}

#[derive(Default)]
struct Recorder(std::sync::Mutex<Vec<magic_auth::AuthEvent>>);

impl magic_auth::AuthEvents for Recorder {
    fn record(&self, event: &magic_auth::AuthEvent) {
        self.0.lock().unwrap().push(event.clone());
    }
}

impl Recorder {
    fn kinds(&self) -> Vec<magic_auth::AuthEventKind> {
        self.0.lock().unwrap().iter().map(|e| e.kind).collect()
    }
}

/// 150 wrong codes, each lock waited out: the locks grow, the count never resets, the hard limit
/// (here the highest allowed, 100) then holds however long the attacker waits, and no code is
/// ever accepted on the way — the right one included. A recovery code opens it again.
#[tokio::test]
async fn wrong_codes_spread_over_lock_periods_never_lead_to_acceptance() {
    let db = fresh_database(&template()).await;
    let mut config = TotpConfig::new("Tenantguard");
    config.hard_limit = magic_auth::totp::MAX_HARD_LIMIT;
    let s = service_with(&db, 1, config).await;
    let (t, user) = (TenantId::new_random(), ActorId::new_random());
    let seed = enrolled(&s, t, user).await;
    let aal2 = session_for(&db, t, user, magic_auth::Assurance::Aal2).await;
    let recovery = s
        .regenerate_recovery_codes(&aal2, std::time::Duration::from_secs(600))
        .await
        .unwrap();
    let mut now = NOW;
    let (mut rejected, mut hard) = (0, 0);
    let mut locks: Vec<i64> = Vec::new();
    for i in 0..150u64 {
        let verdict = s
            .verify(t, user, &wrong_code(&seed, now, i * 7919), now)
            .await
            .unwrap();
        match verdict {
            CodeCheck::Rejected { .. } => rejected += 1,
            CodeCheck::Locked { until } => {
                locks.push(
                    (until - time::OffsetDateTime::from_unix_timestamp(now as i64).unwrap())
                        .whole_seconds(),
                );
                // The right code is refused while locked, and does not count.
                let right = code_at(&seed, now).unwrap();
                assert!(matches!(
                    s.verify(t, user, &right, now).await.unwrap(),
                    CodeCheck::Locked { .. }
                ));
                // The attacker waits the lock out.
                now = unix(until) + 1;
            }
            CodeCheck::HardLocked => {
                hard += 1;
                // Waiting does not help: a month later the right code is still refused.
                let later = now + 30 * 24 * 3600;
                let right = code_at(&seed, later).unwrap();
                assert_eq!(
                    s.verify(t, user, &right, later).await.unwrap(),
                    CodeCheck::HardLocked
                );
                now += 31;
            }
            other => panic!("wrong code {i} gave {other:?}"),
        }
    }
    // 100 counted failures (the count is not reset by a lock), then the hard limit.
    assert_eq!(rejected + locks.len(), 99);
    assert_eq!(hard, 51);
    assert_eq!(stored_lock(&db, user).await, (100, true));
    // The ladder: 15 minutes, doubling, capped at 24 hours.
    assert_eq!(&locks[..4], &[900, 1800, 3600, 7200]);
    assert!(locks.windows(2).all(|w| w[0] <= w[1]), "{locks:?}");
    assert_eq!(*locks.last().unwrap(), 24 * 3600);
    // A recovery code unlocks; then the right code is accepted again.
    assert!(matches!(
        s.use_recovery_code(t, user, &recovery.codes()[0], now)
            .await
            .unwrap(),
        CodeCheck::RecoveryAccepted { .. }
    ));
    assert_eq!(stored_lock(&db, user).await, (0, false));
    let right = code_at(&seed, now).unwrap();
    assert!(matches!(
        s.verify(t, user, &right, now).await.unwrap(),
        CodeCheck::Accepted { .. }
    ));
}

#[tokio::test]
async fn a_lock_does_not_reset_the_count() {
    let db = fresh_database(&template()).await;
    let s = service(&db, 1).await;
    let (t, user) = (TenantId::new_random(), ActorId::new_random());
    let seed = enrolled(&s, t, user).await;
    for i in 0..4 {
        s.verify(t, user, &wrong_code(&seed, NOW, i), NOW)
            .await
            .unwrap();
    }
    let CodeCheck::Locked { until } = s
        .verify(t, user, &wrong_code(&seed, NOW, 9), NOW)
        .await
        .unwrap()
    else {
        panic!("not locked");
    };
    let after = unix(until) + 1;
    // After the first lock, the next wrong code is the sixth in a row: four more to the next.
    assert_eq!(
        s.verify(t, user, &wrong_code(&seed, after, 1), after)
            .await
            .unwrap(),
        CodeCheck::Rejected { remaining: 4 }
    );
    assert_eq!(stored_lock(&db, user).await, (6, false));
    // The control: the right code after the lock resets the count.
    let right = code_at(&seed, after).unwrap();
    assert!(matches!(
        s.verify(t, user, &right, after).await.unwrap(),
        CodeCheck::Accepted { .. }
    ));
    assert_eq!(stored_lock(&db, user).await, (0, false));
}

#[tokio::test]
async fn the_hard_limit_holds_until_an_operator_unlocks_and_the_unlock_is_reported() {
    let db = fresh_database(&template()).await;
    let hook = Arc::new(Recorder::default());
    let s = service(&db, 1).await.with_events(hook.clone());
    let (t, user) = (TenantId::new_random(), ActorId::new_random());
    let seed = enrolled(&s, t, user).await;
    // Unlocking someone without TOTP is an error, and nothing is reported.
    assert!(matches!(
        s.unlock(t, ActorId::new_random()).await,
        Err(AuthError::NotEnrolled)
    ));
    let mut now = NOW;
    let mut failures = 0;
    loop {
        match s
            .verify(t, user, &wrong_code(&seed, now, failures), now)
            .await
            .unwrap()
        {
            CodeCheck::Rejected { .. } => {}
            CodeCheck::Locked { until } => now = unix(until) + 1,
            CodeCheck::HardLocked => break,
            other => panic!("{other:?}"),
        }
        failures += 1;
        assert!(failures < 20, "no hard lock at the default limit");
    }
    assert_eq!(stored_lock(&db, user).await, (20, true));
    assert!(
        hook.kinds()
            .contains(&magic_auth::AuthEventKind::HardLockedOut)
    );
    // Another instance sees it; a year later it still holds.
    let other = service(&db, 1).await;
    let later = now + 365 * 24 * 3600;
    assert_eq!(
        other
            .verify(t, user, &code_at(&seed, later).unwrap(), later)
            .await
            .unwrap(),
        CodeCheck::HardLocked
    );
    s.unlock(t, user).await.unwrap();
    let unlocks: Vec<_> = hook
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.kind == magic_auth::AuthEventKind::MfaUnlocked)
        .cloned()
        .collect();
    assert_eq!(unlocks.len(), 1);
    assert_eq!((unlocks[0].tenant, unlocks[0].user), (t, Some(user)));
    assert_eq!(stored_lock(&db, user).await, (0, false));
    assert!(matches!(
        s.verify(t, user, &code_at(&seed, later).unwrap(), later)
            .await
            .unwrap(),
        CodeCheck::Accepted { .. }
    ));
}

/// The attempt is counted before the seed is opened: a check that fails with an error still
/// counts, so errors are no way around the lockout.
#[tokio::test]
async fn an_attempt_that_ends_in_an_error_is_still_counted() {
    let db = fresh_database(&template()).await;
    let s = service(&db, 1).await;
    let (t, user) = (TenantId::new_random(), ActorId::new_random());
    let seed = enrolled(&s, t, user).await;
    let wrong_key = service(&db, 2).await;
    let right = code_at(&seed, NOW).unwrap();
    for _ in 0..5 {
        assert!(matches!(
            wrong_key.verify(t, user, &right, NOW).await,
            Err(AuthError::Crypto)
        ));
    }
    assert_eq!(stored_lock(&db, user).await.0, 5);
    // Locked now, for the right key and the right code too.
    assert!(matches!(
        s.verify(t, user, &right, NOW).await.unwrap(),
        CodeCheck::Locked { .. }
    ));
    // The control: with the right key, after the lock, the right code is accepted.
    let later = NOW + 3600;
    assert!(matches!(
        s.verify(t, user, &code_at(&seed, later).unwrap(), later)
            .await
            .unwrap(),
        CodeCheck::Accepted { .. }
    ));
}

#[tokio::test]
async fn a_clock_beyond_the_calendar_is_an_error_not_a_panic() {
    let db = fresh_database(&template()).await;
    let s = service(&db, 1).await;
    let (t, user) = (TenantId::new_random(), ActorId::new_random());
    let seed = enrolled(&s, t, user).await;
    for now in [u64::MAX, i64::MAX as u64, 253_402_300_800] {
        assert!(matches!(
            s.verify(t, user, &code_at(&seed, NOW).unwrap(), now).await,
            Err(AuthError::InvalidConfig(_))
        ));
    }
    // Nothing was checked, nothing counted.
    assert_eq!(stored_lock(&db, user).await, (0, false));
}

#[tokio::test]
async fn nonsensical_totp_configs_are_refused_when_the_service_is_built() {
    use std::time::Duration;
    let db = fresh_database(&template()).await;
    let pool = TenantPool::new(db.pool(Role::Runtime, 1).await)
        .await
        .unwrap();
    let build = |config: TotpConfig| TotpService::new(pool.clone(), keyring(1), config);
    // The control: the defaults, and the extremes still allowed, build.
    let ok = TotpConfig::new("Tenantguard");
    assert!(build(ok.clone()).is_ok());
    let mut edge = ok.clone();
    edge.hard_limit = 100;
    edge.max_failures = 1;
    edge.lockout = Duration::from_secs(1);
    edge.max_lockout = magic_auth::totp::MAX_LOCKOUT;
    assert!(build(edge).is_ok());
    type Edit = Box<dyn Fn(&mut TotpConfig)>;
    let edits: Vec<(&str, Edit)> = vec![
        ("hard limit over 100", Box::new(|c| c.hard_limit = 101)),
        ("hard limit u32::MAX", Box::new(|c| c.hard_limit = u32::MAX)),
        ("hard limit 0", Box::new(|c| c.hard_limit = 0)),
        ("max failures 0", Box::new(|c| c.max_failures = 0)),
        (
            "max failures over the hard limit",
            Box::new(|c| c.max_failures = 21),
        ),
        ("zero lockout", Box::new(|c| c.lockout = Duration::ZERO)),
        (
            "sub-second lockout",
            Box::new(|c| c.lockout = Duration::from_millis(500)),
        ),
        (
            "overflowing lockout",
            Box::new(|c| {
                c.lockout = Duration::MAX;
                c.max_lockout = Duration::MAX;
            }),
        ),
        (
            "lockout over max_lockout",
            Box::new(|c| c.lockout = Duration::from_secs(2 * 24 * 3600)),
        ),
        (
            "max_lockout over 30 days",
            Box::new(|c| c.max_lockout = Duration::from_secs(31 * 24 * 3600)),
        ),
        ("empty issuer", Box::new(|c| c.issuer = String::new())),
        (
            "issuer with a colon",
            Box::new(|c| c.issuer = "Evil:Bank".into()),
        ),
        (
            "issuer with a newline",
            Box::new(|c| c.issuer = "Bank\n".into()),
        ),
    ];
    for (what, edit) in edits {
        let mut config = ok.clone();
        edit(&mut config);
        assert!(
            matches!(build(config), Err(AuthError::InvalidConfig(_))),
            "{what} was accepted"
        );
    }
}
