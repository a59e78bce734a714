//! The runtime role, or SQL injected into it, writing the rows the library turns into sign-ins
//! and factors: links, recovery codes, authenticators and accounts. It may `INSERT` and
//! `UPDATE` them (the library does, as that role), and knows every hashing scheme. A row it
//! writes or changes must sign no one in and count as no factor; each attack has its control,
//! the same operation done by the library in the same setup.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use magic_auth::secrecy::SecretString;
use magic_auth::totp::CodeCheck;
use magic_auth::{Assurance, AuthError, NewSession};
use rls_guard::TenantPool;
use sha2::{Digest, Sha256};
use tenant_scope::{ActorKind, TenantContext};
use testkit::Role;
use uuid::Uuid;

use common::{Fixture, NOW, code_at, fixture};

/// The runtime role's pool, as injected SQL would use it.
async fn runtime(f: &Fixture) -> TenantPool {
    TenantPool::new(f.db.pool(Role::Runtime, 1).await)
        .await
        .unwrap()
}

/// Runs `sql` (parameters: the tenant, then `binds`) as the runtime role in a transaction bound
/// to the fixture's tenant; the SQLSTATE it failed with, if it did.
async fn as_runtime(f: &Fixture, sql: &str, binds: &[Uuid]) -> Option<String> {
    let pool = runtime(f).await;
    let job = TenantContext::for_job(f.tenant, None, "attack").unwrap();
    let mut tx = pool.begin(&job).await.unwrap();
    let mut query = sqlx::query(sql).bind(f.tenant.as_uuid());
    for b in binds {
        query = query.bind(*b);
    }
    match query.execute(&mut *tx).await {
        Ok(_) => {
            tx.commit().await.unwrap();
            None
        }
        Err(e) => {
            tx.rollback().await.unwrap();
            Some(
                e.as_database_error()
                    .and_then(|d| d.code())
                    .map(|c| c.into_owned())
                    .unwrap_or_else(|| e.to_string()),
            )
        }
    }
}

/// The id a link token names (`l1.<tenant>.<id>.<secret>`).
fn link_id(token: &str) -> Uuid {
    Uuid::parse_str(token.split('.').nth(2).unwrap()).unwrap()
}

fn sha(domain: &[u8], secret: &[u8]) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(domain);
    h.update(secret);
    h.finalize().to_vec()
}

/// A link row the runtime role points at another account, or inserts with secrets it chose
/// (the hashing scheme is public), signs no one in: the row's MAC is under a key the database
/// never sees. A used link cannot be revived, nor a link's owner changed, at all. Controls: the
/// attacker's own link, and a staff member's genuine link, each sign their own account in.
#[tokio::test]
async fn a_link_row_the_runtime_role_writes_or_redirects_signs_no_one_in() {
    let f = fixture(4).await;
    let boss = f.account("boss@example.com", ActorKind::Staff);
    let me = f.account("me@example.com", ActorKind::User);

    // Redirecting my own pending link to the staff account is refused outright.
    let (mine, my_verifier) = f.link_for("me@example.com").await;
    assert_eq!(
        as_runtime(
            &f,
            "UPDATE auth.login_links SET user_id = $2, actor_kind = 'staff' \
             WHERE tenant_id = $1 AND id = $3",
            &[*boss.as_uuid(), link_id(&mine)],
        )
        .await
        .as_deref(),
        Some("MA003"),
        "the owner of a link changed"
    );
    // Nor can its life be extended (only shortened, which grants nothing).
    assert_eq!(
        as_runtime(
            &f,
            "UPDATE auth.login_links SET expires_at = expires_at + interval '1 day' \
             WHERE tenant_id = $1 AND id = $2",
            &[link_id(&mine)],
        )
        .await
        .as_deref(),
        Some("MA003"),
        "a link's life extended"
    );
    // Control: my link still signs me in, as me.
    let signed = f.links.confirm(mine.clone(), my_verifier).await.unwrap();
    assert_eq!((signed.user, signed.kind), (me, ActorKind::User));
    // A used link cannot be revived.
    assert_eq!(
        as_runtime(
            &f,
            "UPDATE auth.login_links SET consumed_at = NULL WHERE tenant_id = $1 AND id = $2",
            &[link_id(&mine)],
        )
        .await
        .as_deref(),
        Some("MA003"),
        "a used link revived"
    );

    // Control: the staff member's genuine link signs them in (and a MAC to copy exists).
    let (theirs, their_verifier) = f.link_for("boss@example.com").await;
    let (genuine_mac,): (Vec<u8>,) =
        sqlx::query_as("SELECT row_mac FROM auth.login_links WHERE tenant_id = $1 AND id = $2")
            .bind(f.tenant.as_uuid())
            .bind(link_id(&theirs))
            .fetch_one(&f.admin)
            .await
            .unwrap();
    let signed = f.links.confirm(theirs, their_verifier).await.unwrap();
    assert_eq!((signed.user, signed.kind), (boss, ActorKind::Staff));

    // Links of the attacker's making for the staff account, with secrets it knows.
    for (label, mac) in [
        ("no MAC", None),
        ("a made-up MAC", Some(vec![0x42; 32])),
        ("a genuine row's MAC", Some(genuine_mac)),
    ] {
        let id = Uuid::new_v4();
        let secret = [0x5a_u8; 32];
        let verifier = "v".repeat(64);
        let pool = runtime(&f).await;
        let job = TenantContext::for_job(f.tenant, None, "attack").unwrap();
        let mut tx = pool.begin(&job).await.unwrap();
        sqlx::query(
            "INSERT INTO auth.login_links (tenant_id, id, user_id, actor_kind, secret_hash, \
             verifier_hash, created_at, expires_at, row_mac) \
             VALUES ($1, $2, $3, 'staff', $4, $5, now(), now() + interval '15 minutes', $6)",
        )
        .bind(f.tenant.as_uuid())
        .bind(id)
        .bind(boss.as_uuid())
        .bind(sha(b"magic-auth/link/v1\n", &secret))
        .bind(sha(b"magic-auth/link-verifier/v1\n", verifier.as_bytes()))
        .bind(mac)
        .execute(&mut *tx)
        .await
        .unwrap();
        tx.commit().await.unwrap();
        let token = format!(
            "l1.{}.{}.{}",
            f.tenant.as_uuid().simple(),
            id.simple(),
            hex::encode(secret)
        );
        let before = f.all_sessions(boss).await;
        let refused = f.links.confirm(token, verifier).await;
        assert!(
            matches!(refused, Err(AuthError::InvalidLink)),
            "{label}: {refused:?}"
        );
        assert_eq!(f.all_sessions(boss).await, before, "{label}");
        // The forged row is pending (one per account): out of the way for the next case.
        assert_eq!(
            as_runtime(
                &f,
                "UPDATE auth.login_links SET invalidated_at = now() \
                 WHERE tenant_id = $1 AND id = $2",
                &[id],
            )
            .await,
            None,
            "{label}: invalidating a link is allowed"
        );
    }
}

/// Recovery codes the runtime role inserts (the hash of a code is no secret) are no factor,
/// and a used one cannot be revived; an authenticator cannot be un-confirmed (which would show
/// its active seed as a pending enrolment) nor its last accepted step moved back (which would
/// accept an old code again); an account's sign-in generation cannot be moved back. Controls: a
/// genuine recovery code is accepted once, and the authenticator's genuine code is accepted.
#[tokio::test]
async fn factor_rows_the_runtime_role_writes_grant_nothing() {
    let f = fixture(4).await;
    let user = f.account("ada@example.com", ActorKind::User);
    let seed = f.enrolled(user).await;
    let (fresh, _) = f
        .sessions
        .create(
            f.tenant,
            &NewSession::new(user, ActorKind::User, Assurance::Aal2),
        )
        .await
        .unwrap();
    let codes = f
        .totp
        .regenerate_recovery_codes(&fresh, std::time::Duration::from_secs(600))
        .await
        .unwrap();

    // A code of the attacker's choosing, hashed as the library hashes it, with no seal, a
    // made-up one, and a genuine code's seal.
    let (genuine_seal,): (Vec<u8>,) = sqlx::query_as(
        "SELECT sealed FROM auth.recovery_codes WHERE tenant_id = $1 AND user_id = $2 LIMIT 1",
    )
    .bind(f.tenant.as_uuid())
    .bind(user.as_uuid())
    .fetch_one(&f.admin)
    .await
    .unwrap();
    for (i, (label, seal)) in [
        ("no seal", None),
        ("a made-up seal", Some(vec![1u8; 80])),
        ("a genuine code's seal", Some(genuine_seal)),
    ]
    .into_iter()
    .enumerate()
    {
        let code = format!("aaaa-bbbb-cccc-ddd{i}");
        let normalised: String = code.chars().filter(|c| *c != '-').collect();
        let mut h = Sha256::new();
        h.update(b"magic-auth/recovery/v1\n");
        h.update(f.tenant.as_uuid().as_bytes());
        h.update(user.as_uuid().as_bytes());
        h.update(normalised.as_bytes());
        let hash = h.finalize().to_vec();
        let pool = runtime(&f).await;
        let job = TenantContext::for_job(f.tenant, None, "attack").unwrap();
        let mut tx = pool.begin(&job).await.unwrap();
        sqlx::query(
            "INSERT INTO auth.recovery_codes (tenant_id, user_id, code_hash, created_at, sealed) \
             VALUES ($1, $2, $3, now(), $4)",
        )
        .bind(f.tenant.as_uuid())
        .bind(user.as_uuid())
        .bind(&hash)
        .bind(seal)
        .execute(&mut *tx)
        .await
        .unwrap();
        tx.commit().await.unwrap();
        let check = f
            .totp
            .use_recovery_code(f.tenant, user, &SecretString::from(code), NOW)
            .await
            .unwrap();
        assert!(
            !matches!(check, CodeCheck::RecoveryAccepted { .. }),
            "{label}: {check:?}"
        );
    }
    // Control: a genuine code is accepted, once.
    let genuine = &codes.codes()[0];
    let check = f
        .totp
        .use_recovery_code(f.tenant, user, genuine, NOW)
        .await
        .unwrap();
    assert!(
        matches!(check, CodeCheck::RecoveryAccepted { .. }),
        "{check:?}"
    );
    // Used codes, authenticators and generations only move forward.
    for (label, sql, code) in [
        (
            "a used recovery code revived",
            "UPDATE auth.recovery_codes SET used_at = NULL WHERE tenant_id = $1 AND user_id = $2",
            "MA003",
        ),
        (
            "an authenticator un-confirmed",
            "UPDATE auth.totp SET confirmed_at = NULL WHERE tenant_id = $1 AND user_id = $2",
            "MA002",
        ),
        (
            "an authenticator's last step moved back",
            "UPDATE auth.totp SET last_step = last_step - 10 WHERE tenant_id = $1 AND user_id = $2",
            "MA002",
        ),
        (
            "an authenticator's last step cleared while its seed is swapped out",
            "UPDATE auth.totp SET seed = seed || '\\x00'::bytea, last_step = NULL \
             WHERE tenant_id = $1 AND user_id = $2",
            "MA002",
        ),
        (
            "an account's generation jumped to the largest (every later sign-out would fail)",
            "UPDATE auth.accounts SET generation = 9223372036854775807 \
             WHERE tenant_id = $1 AND user_id = $2",
            "MA002",
        ),
        (
            "an account's generation moved back",
            "UPDATE auth.accounts SET generation = generation - 1 \
             WHERE tenant_id = $1 AND user_id = $2",
            "MA002",
        ),
    ] {
        assert_eq!(
            as_runtime(&f, sql, &[*user.as_uuid()]).await.as_deref(),
            Some(code),
            "{label}"
        );
    }
    // Control: the authenticator still takes its genuine, newer code.
    let check = f
        .totp
        .verify(f.tenant, user, &code_at(&seed, NOW + 60).unwrap(), NOW + 60)
        .await
        .unwrap();
    assert!(matches!(check, CodeCheck::Accepted { .. }), "{check:?}");
}

/// An e-mail change row the runtime role inserts, for a live session of the account that never
/// took the step-up, with an address and a token of its choosing, changes nothing: the row's
/// MAC is under the row key. Control: the change the library makes for a fresh `aal2` session
/// goes through.
#[tokio::test]
async fn an_email_change_row_the_runtime_role_writes_changes_nothing() {
    let f = fixture(4).await;
    let user = f.account("ada@example.com", ActorKind::User);
    let (one_factor, _) = f
        .sessions
        .create(
            f.tenant,
            &NewSession::new(user, ActorKind::User, Assurance::Aal1),
        )
        .await
        .unwrap();
    let secret = [0x3c_u8; 32];
    // The hash of a secret it knows, and a made-up MAC.
    let id2 = Uuid::new_v4();
    let pool = runtime(&f).await;
    let job = TenantContext::for_job(f.tenant, None, "attack").unwrap();
    let mut tx = pool.begin(&job).await.unwrap();
    sqlx::query(
        "INSERT INTO auth.email_changes (tenant_id, id, user_id, session_id, new_email, \
         secret_hash, created_at, expires_at, row_mac) \
         VALUES ($1, $2, $3, $4, 'mallory@evil.example', $5, now(), \
                 now() + interval '15 minutes', $6)",
    )
    .bind(f.tenant.as_uuid())
    .bind(id2)
    .bind(user.as_uuid())
    .bind(one_factor.id)
    .bind(sha(b"magic-auth/email-change/v1\n", &secret))
    .bind(vec![0x42_u8; 32])
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let token = format!(
        "e1.{}.{}.{}",
        f.tenant.as_uuid().simple(),
        id2.simple(),
        hex::encode(secret)
    );
    let refused = f.links.confirm_email_change(&one_factor, token).await;
    assert!(
        matches!(refused, Err(AuthError::InvalidLink)),
        "{refused:?}"
    );
    assert!(
        f.directory
            .find_sync(f.tenant, "mallory@evil.example")
            .is_none()
    );
    assert!(f.directory.find_sync(f.tenant, "ada@example.com").is_some());

    // Control: a fresh two-factor session asks, and its own token confirms.
    let (fresh, _) = f
        .sessions
        .create(
            f.tenant,
            &NewSession::new(user, ActorKind::User, Assurance::Aal2),
        )
        .await
        .unwrap();
    f.links
        .request_email_change(
            &fresh,
            "ada@new.example",
            std::time::Duration::from_secs(600),
        )
        .await
        .unwrap();
    let confirmed = f
        .links
        .confirm_email_change(&fresh, f.newest_token())
        .await
        .unwrap();
    assert_eq!(confirmed.as_str(), "ada@new.example");
}
