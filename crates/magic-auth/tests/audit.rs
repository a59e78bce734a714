//! Authentication events land in the tenant's audit chain (feature `audit-log`).
#![cfg(feature = "audit-log")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use magic_auth::secrecy::ExposeSecret;
use std::sync::Arc;
use std::time::Duration;

use audit_log::scrub::{ScrubPolicy, Scrubber};
use audit_log::{AuditLog, AuditQuery, TrustedKeys};
use field_crypto::{KeyMaterial, Keyring};
use magic_auth::totp::{CodeCheck, TotpConfig, TotpService, code_at};
use magic_auth::{Assurance, NewSession, SessionConfig, SessionStore};
use rls_guard::TenantPool;
use rls_guard::schema::SUPPORT_SQL;
use tenant_scope::{ActorId, ActorKind, TenantId};
use testkit::{Role, Template, fresh_database};

const NOW: u64 = 1_795_845_615;

#[tokio::test]
async fn sign_in_failures_lockouts_and_revocations_are_audited_without_secrets() {
    let sql = format!(
        "{SUPPORT_SQL}\n{}\n{}",
        magic_auth::schema::schema_sql("testkit_runtime").unwrap(),
        audit_log::schema::schema_sql("testkit_runtime").unwrap()
    );
    let db = fresh_database(&Template::new("magic_auth_audit", sql)).await;
    let raw = db.pool(Role::Runtime, 4).await;
    let pool = TenantPool::new(raw.clone()).await.unwrap();
    let log = AuditLog::new(
        pool.clone(),
        Scrubber::new(ScrubPolicy::new(), Vec::new()).unwrap(),
    );
    let hook = Arc::new(log.clone());
    let mut keyring = Keyring::new();
    keyring
        .add_key(1, &KeyMaterial::from_bytes(Box::new([3; 32])))
        .unwrap();
    keyring.promote(1).unwrap();
    let totp = TotpService::new(pool.clone(), Arc::new(keyring), TotpConfig::new("Audit"))
        .unwrap()
        .with_events(hook.clone());
    let sessions = SessionStore::new(pool, SessionConfig::default(), Box::new([7; 32]))
        .unwrap()
        .with_events(hook);
    let (t, user) = (TenantId::new_random(), ActorId::new_random());

    let e = totp.enroll(t, user, "ops@example.com").await.unwrap();
    let seed = totp_rs::Secret::try_from_base32(e.secret_base32.expose_secret())
        .unwrap()
        .as_bytes()
        .to_vec()
        .into();
    let code = code_at(&seed, NOW).unwrap();
    assert!(matches!(
        totp.confirm(t, user, code.expose_secret(), NOW)
            .await
            .unwrap(),
        CodeCheck::Accepted { .. }
    ));
    for _ in 0..5 {
        totp.verify(t, user, "000000", NOW + 30).await.unwrap();
    }
    // An operator unlocks the factor: audited like the rest.
    totp.unlock(t, user).await.unwrap();
    let (session, _) = sessions
        .create(t, &NewSession::new(user, ActorKind::Staff, Assurance::Aal1))
        .await
        .unwrap();
    sessions.revoke(t, session.id).await.unwrap();

    // The hook writes from tasks of its own: wait for the 9 records (queued, then chained here
    // as the superuser; an application runs `audit_log::Sequencer`).
    let admin = db.pool(Role::Admin, 1).await;
    let mut stored = Vec::new();
    for _ in 0..200 {
        let _: i32 = sqlx::query_scalar("SELECT audit.sequence(1000)")
            .fetch_one(&admin)
            .await
            .unwrap();
        stored = AuditQuery::new(t).fetch(&raw).await.unwrap();
        if stored.len() >= 9 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let mut actions: Vec<(String, String)> = stored
        .iter()
        .rev()
        .map(|e| (e.action.clone(), e.outcome.clone()))
        .collect();
    actions.sort();
    let mut want: Vec<(String, String)> = [
        ("authn.mfa_enrolled", "allowed"),
        ("authn.code_failed", "denied"),
        ("authn.code_failed", "denied"),
        ("authn.code_failed", "denied"),
        ("authn.code_failed", "denied"),
        ("authn.locked_out", "denied"),
        ("authn.mfa_unlocked", "allowed"),
        ("authn.login_succeeded", "allowed"),
        ("session.revoked", "allowed"),
    ]
    .iter()
    .map(|(a, o)| ((*a).to_owned(), (*o).to_owned()))
    .collect();
    want.sort();
    assert_eq!(actions, want, "{stored:#?}");
    let created = stored
        .iter()
        .find(|e| e.action == "authn.login_succeeded")
        .unwrap();
    assert_eq!(created.actor_kind, "staff");
    let failed = stored
        .iter()
        .find(|e| e.action == "authn.code_failed")
        .unwrap();
    assert_eq!(failed.actor_kind, "account");
    for r in &stored {
        let text = String::from_utf8(r.record.clone()).unwrap();
        assert!(
            !text.contains(e.secret_base32.expose_secret()) && !text.contains("ops@example.com"),
            "{text}"
        );
    }
    let report = audit_log::verify(&raw, t, &TrustedKeys::new(), &[])
        .await
        .unwrap();
    assert!(report.is_intact(), "{:?}", report.result);
}
