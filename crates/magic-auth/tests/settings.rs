//! Settings flows: replacing the authenticator, disabling the account and changing its e-mail
//! address. Each attack test names what it stops, asserts that nothing was written, and has its
//! legitimate control.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::code_at;

use magic_auth::secrecy::ExposeSecret;
use std::time::Duration;

use common::{NOW, fixture, wrong_code};
use magic_auth::mailer::Notice;
use magic_auth::totp::{CodeCheck, EnrolmentState, ReplaceProof};
use magic_auth::{
    Assurance, AuthError, AuthEventKind, EmailAddress, NewSession, Session, SessionToken,
};
use tenant_scope::{ActorId, ActorKind};

const MAX_AGE: Duration = Duration::from_secs(10 * 60);
const STEP_UP: ReplaceProof<'static> = ReplaceProof::StepUp { max_age: MAX_AGE };

async fn session(f: &common::Fixture, user: ActorId, assurance: Assurance) -> (Session, String) {
    let (session, token) = f
        .sessions
        .create(f.tenant, &NewSession::new(user, ActorKind::User, assurance))
        .await
        .unwrap();
    (session, token.to_cookie_value().expose_secret().to_owned())
}

/// The stored replacement: (seed present, started by).
async fn replacement(f: &common::Fixture, user: ActorId) -> (bool, Option<uuid::Uuid>) {
    sqlx::query_as(
        "SELECT replacement_seed IS NOT NULL, replacement_session FROM auth.totp \
         WHERE tenant_id = $1 AND user_id = $2",
    )
    .bind(f.tenant.as_uuid())
    .bind(user.as_uuid())
    .fetch_one(&f.admin)
    .await
    .unwrap()
}

/// ada, enrolled, with recovery codes made by a fresh session.
async fn with_recovery_codes(f: &common::Fixture) -> (ActorId, magic_auth::totp::RecoveryCodes) {
    let user = f.account("ada@example.com", ActorKind::User);
    f.enrolled(user).await;
    let (fresh, _) = session(f, user, Assurance::Aal2).await;
    let codes = f
        .totp
        .regenerate_recovery_codes(&fresh, MAX_AGE)
        .await
        .unwrap();
    (user, codes)
}

fn seed_of(enrolment: &magic_auth::totp::Enrolment) -> Vec<u8> {
    totp_rs::Secret::try_from_base32(enrolment.secret_base32.expose_secret())
        .unwrap()
        .as_bytes()
        .to_vec()
}

#[tokio::test]
async fn replacing_the_authenticator_without_fresh_step_up_or_recovery_code_is_refused() {
    let f = fixture(4).await;
    let user = f.account("ada@example.com", ActorKind::User);
    let old_seed = f.enrolled(user).await;
    let (fresh, _) = session(&f, user, Assurance::Aal2).await;
    f.totp
        .regenerate_recovery_codes(&fresh, MAX_AGE)
        .await
        .unwrap();
    f.events.clear();

    // One factor only, and two factors checked 11 minutes ago: no step-up.
    let (one_factor, _) = session(&f, user, Assurance::Aal1).await;
    let mut stale = fresh.clone();
    stale.authenticated_at -= time::Duration::minutes(11);
    for s in [&one_factor, &stale] {
        let refused = f.totp.start_replacement(s, STEP_UP, "ada", NOW).await;
        assert!(
            matches!(refused, Err(AuthError::StepUpRequired)),
            "{refused:?}"
        );
    }
    // A wrong recovery code is refused too (and counted like any wrong code).
    let refused = f
        .totp
        .start_replacement(
            &one_factor,
            ReplaceProof::RecoveryCode(&"aaaa-bbbb-cccc-dddd".into()),
            "ada",
            NOW,
        )
        .await;
    assert!(matches!(refused, Err(AuthError::StepUpRequired)));
    assert_eq!(replacement(&f, user).await, (false, None), "nothing stored");
    assert!(
        !f.events
            .kinds()
            .contains(&AuthEventKind::MfaReplacementStarted)
    );
    // The old authenticator is untouched.
    assert!(matches!(
        f.totp
            .verify(f.tenant, user, &code_at(&old_seed, NOW).unwrap(), NOW)
            .await
            .unwrap(),
        CodeCheck::Accepted { .. }
    ));

    // Positive control: the fresh session may start it.
    f.totp
        .start_replacement(&fresh, STEP_UP, "ada", NOW)
        .await
        .unwrap();
    assert_eq!(replacement(&f, user).await, (true, Some(fresh.id)));
    assert!(
        f.events
            .kinds()
            .contains(&AuthEventKind::MfaReplacementStarted)
    );
}

#[tokio::test]
async fn a_recovery_code_authorises_one_replacement_and_is_used_up() {
    let f = fixture(4).await;
    let (user, codes) = with_recovery_codes(&f).await;
    let code = codes.codes()[0].clone();
    // Lost phone: a session with the link only, and a recovery code.
    let (one_factor, _) = session(&f, user, Assurance::Aal1).await;
    let proof = ReplaceProof::RecoveryCode(&code);
    assert!(
        !format!("{proof:?}").contains(code.expose_secret()),
        "Debug hides the code"
    );
    f.totp
        .start_replacement(&one_factor, proof, "ada", NOW)
        .await
        .unwrap();
    assert_eq!(replacement(&f, user).await, (true, Some(one_factor.id)));
    // The same code again: used up.
    let again = f
        .totp
        .start_replacement(&one_factor, proof, "ada", NOW)
        .await;
    assert!(matches!(again, Err(AuthError::StepUpRequired)), "{again:?}");
}

#[tokio::test]
async fn old_codes_stop_working_and_other_sessions_and_links_end_when_the_replacement_completes() {
    let f = fixture(4).await;
    let user = f.account("ada@example.com", ActorKind::User);
    let old_seed = f.enrolled(user).await;
    let (mine, my_cookie) = session(&f, user, Assurance::Aal2).await;
    let (other, other_cookie) = session(&f, user, Assurance::Aal2).await;
    f.link_for("ada@example.com").await;
    assert_eq!(f.pending_links(user).await, 1);
    let enrolment = f
        .totp
        .start_replacement(&mine, STEP_UP, "ada", NOW)
        .await
        .unwrap();
    let new_seed = seed_of(&enrolment);
    assert_ne!(new_seed, old_seed);
    // Until it completes, the old authenticator still works and nobody is signed out.
    assert!(matches!(
        f.totp
            .verify(
                f.tenant,
                user,
                &code_at(&old_seed, NOW - 30).unwrap(),
                NOW - 30
            )
            .await
            .unwrap(),
        CodeCheck::Accepted { .. }
    ));
    assert_eq!(f.live_sessions(user).await, 2);

    // Another session (someone else holding a session of the account) cannot complete it.
    let stolen = f
        .totp
        .complete_replacement(&other, &code_at(&new_seed, NOW).unwrap(), NOW)
        .await;
    assert!(matches!(stolen, Err(AuthError::NotEnrolled)), "{stolen:?}");
    // A wrong code (an old-authenticator code among them) changes nothing.
    for wrong in [wrong_code(&new_seed, NOW), code_at(&old_seed, NOW).unwrap()] {
        assert!(
            !f.totp
                .complete_replacement(&mine, &wrong, NOW)
                .await
                .unwrap()
        );
    }
    assert_eq!(f.live_sessions(user).await, 2);
    assert_eq!(replacement(&f, user).await, (true, Some(mine.id)));
    f.events.clear();

    // Positive: the new authenticator's code completes it.
    assert!(
        f.totp
            .complete_replacement(&mine, &code_at(&new_seed, NOW).unwrap(), NOW)
            .await
            .unwrap()
    );
    assert_eq!(replacement(&f, user).await, (false, None));
    // Other sessions and the pending link ended; this one lives.
    assert!(!live(&f, &other_cookie).await);
    assert!(live(&f, &my_cookie).await);
    assert_eq!(f.live_sessions(user).await, 1);
    assert_eq!(f.pending_links(user).await, 0);
    // Old codes no longer work; the new authenticator's next code does.
    let old = f
        .totp
        .verify(
            f.tenant,
            user,
            &code_at(&old_seed, NOW + 30).unwrap(),
            NOW + 30,
        )
        .await
        .unwrap();
    assert!(matches!(old, CodeCheck::Rejected { .. }), "{old:?}");
    // The completing code's step is used up.
    let replay = f
        .totp
        .verify(f.tenant, user, &code_at(&new_seed, NOW).unwrap(), NOW)
        .await
        .unwrap();
    assert!(matches!(replay, CodeCheck::Rejected { .. }), "{replay:?}");
    assert!(matches!(
        f.totp
            .verify(
                f.tenant,
                user,
                &code_at(&new_seed, NOW + 60).unwrap(),
                NOW + 60
            )
            .await
            .unwrap(),
        CodeCheck::Accepted { .. }
    ));
    let kinds = f.events.kinds();
    for kind in [
        AuthEventKind::MfaReplaced,
        AuthEventKind::SessionsRevoked,
        AuthEventKind::LinksInvalidated,
    ] {
        assert!(kinds.contains(&kind), "{kind:?} in {kinds:?}");
    }
    // Completed once: nothing left to complete.
    let again = f
        .totp
        .complete_replacement(&mine, &code_at(&new_seed, NOW + 90).unwrap(), NOW + 90)
        .await;
    assert!(matches!(again, Err(AuthError::NotEnrolled)));
}

#[tokio::test]
async fn a_replacement_cannot_complete_after_its_session_was_revoked_or_the_account_disabled() {
    let f = fixture(4).await;
    let user = f.account("ada@example.com", ActorKind::User);
    let old_seed = f.enrolled(user).await;
    for end in ["revoke_all", "disable"] {
        let (mine, _) = session(&f, user, Assurance::Aal2).await;
        let enrolment = f
            .totp
            .start_replacement(&mine, STEP_UP, "ada", NOW)
            .await
            .unwrap();
        if end == "revoke_all" {
            f.sessions.revoke_all(f.tenant, user, None).await.unwrap();
        } else {
            f.sessions.disable_account(f.tenant, user).await.unwrap();
        }
        let refused = f
            .totp
            .complete_replacement(&mine, &code_at(&seed_of(&enrolment), NOW).unwrap(), NOW)
            .await;
        assert!(
            matches!(refused, Err(AuthError::InvalidToken)),
            "{end}: {refused:?}"
        );
        // Nothing replaced: a step-up with the old authenticator still works (after enabling).
        f.sessions.enable_account(f.tenant, user).await.unwrap();
        assert_eq!(replacement(&f, user).await, (true, Some(mine.id)));
    }
    assert!(matches!(
        f.totp
            .verify(f.tenant, user, &code_at(&old_seed, NOW).unwrap(), NOW)
            .await
            .unwrap(),
        CodeCheck::Accepted { .. }
    ));
    // Positive control: a live session's replacement completes.
    let (mine, _) = session(&f, user, Assurance::Aal2).await;
    let enrolment = f
        .totp
        .start_replacement(&mine, STEP_UP, "ada", NOW)
        .await
        .unwrap();
    assert!(
        f.totp
            .complete_replacement(
                &mine,
                &code_at(&seed_of(&enrolment), NOW + 30).unwrap(),
                NOW + 30
            )
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn disabling_ends_every_session_and_link_and_is_reported() {
    let f = fixture(4).await;
    let user = f.account("ada@example.com", ActorKind::User);
    let bystander = f.account("bea@example.com", ActorKind::User);
    let (_, cookie) = session(&f, user, Assurance::Aal2).await;
    let (_, bystander_cookie) = session(&f, bystander, Assurance::Aal2).await;
    let (token, verifier) = f.link_for("ada@example.com").await;
    f.events.clear();
    f.sessions.disable_account(f.tenant, user).await.unwrap();
    assert!(!live(&f, &cookie).await);
    assert_eq!(f.live_sessions(user).await, 0);
    assert_eq!(f.pending_links(user).await, 0);
    assert!(matches!(
        f.links.confirm(token.clone(), verifier.clone()).await,
        Err(AuthError::InvalidLink)
    ));
    let kinds = f.events.kinds();
    for kind in [
        AuthEventKind::AccountDisabled,
        AuthEventKind::SessionsRevoked,
        AuthEventKind::LinksInvalidated,
    ] {
        assert!(kinds.contains(&kind), "{kind:?} in {kinds:?}");
    }
    // Control: another account of the tenant is untouched.
    assert!(live(&f, &bystander_cookie).await);
    let _ = SessionToken::parse(&bystander_cookie.into()).unwrap();
}

#[test]
fn notices_carry_no_link_and_no_secret() {
    for notice in [
        Notice::AuthenticatorReplaced,
        Notice::AccountDisabled,
        Notice::EmailChangeRequested,
        Notice::EmailChanged,
        Notice::RecoveryCodesRegenerated,
    ] {
        let message = notice.message(EmailAddress::parse("ada@example.com").unwrap());
        assert_eq!(message.to.as_str(), "ada@example.com");
        assert!(!message.body.expose_secret().contains("http"), "{notice:?}");
        assert!(!format!("{message:?}").contains(message.body.expose_secret()));
    }
}

/// (recipient, subject) of every message so far.
fn mail(f: &common::Fixture) -> Vec<(String, String)> {
    f.outbox
        .messages()
        .into_iter()
        .map(|m| (m.to.as_str().to_owned(), m.subject))
        .collect()
}

async fn found(f: &common::Fixture, email: &str) -> Option<ActorId> {
    use magic_auth::AccountDirectory;
    f.directory
        .find(f.tenant, &EmailAddress::parse(email).unwrap())
        .await
        .unwrap()
        .map(|a| a.user)
}

async fn pending_changes(f: &common::Fixture, user: ActorId) -> i64 {
    let (n,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM auth.email_changes WHERE tenant_id = $1 AND user_id = $2 \
         AND consumed_at IS NULL AND invalidated_at IS NULL",
    )
    .bind(f.tenant.as_uuid())
    .bind(user.as_uuid())
    .fetch_one(&f.admin)
    .await
    .unwrap();
    n
}

#[tokio::test]
async fn changing_the_email_without_a_fresh_step_up_is_refused_and_sends_nothing() {
    let f = fixture(4).await;
    let user = f.account("ada@example.com", ActorKind::User);
    let (fresh, _) = session(&f, user, Assurance::Aal2).await;
    let (one_factor, _) = session(&f, user, Assurance::Aal1).await;
    let mut stale = fresh.clone();
    stale.authenticated_at -= time::Duration::minutes(11);
    for s in [&one_factor, &stale] {
        let refused = f
            .links
            .request_email_change(s, "ada@new.example", MAX_AGE)
            .await;
        assert!(
            matches!(refused, Err(AuthError::StepUpRequired)),
            "{refused:?}"
        );
    }
    assert!(mail(&f).is_empty(), "nothing sent");
    assert_eq!(pending_changes(&f, user).await, 0);
    // Its own address is no change.
    let same = f
        .links
        .request_email_change(&fresh, "ADA@example.com", MAX_AGE)
        .await;
    assert!(matches!(same, Err(AuthError::EmailUnavailable)), "{same:?}");
    assert!(mail(&f).is_empty());

    // Positive control: a fresh session asks; the old address is told, the new one gets the
    // link, and nothing changes yet.
    f.links
        .request_email_change(&fresh, "ada@new.example", MAX_AGE)
        .await
        .unwrap();
    assert_eq!(
        mail(&f),
        vec![
            (
                "ada@example.com".to_owned(),
                "A change of your e-mail address was requested".to_owned()
            ),
            (
                "ada@new.example".to_owned(),
                "Confirm your new e-mail address".to_owned()
            ),
        ]
    );
    assert!(
        !f.outbox.messages()[0]
            .body
            .expose_secret()
            .contains("new.example"),
        "the notice names no address"
    );
    assert_eq!(found(&f, "ada@example.com").await, Some(user));
    assert_eq!(found(&f, "ada@new.example").await, None);
    assert!(
        f.events
            .kinds()
            .contains(&AuthEventKind::EmailChangeRequested)
    );
}

#[tokio::test]
async fn the_confirmation_link_works_once_only_for_its_own_session_and_ends_other_sessions() {
    let f = fixture(4).await;
    let user = f.account("ada@example.com", ActorKind::User);
    let bea = f.account("bea@example.com", ActorKind::User);
    let (mine, my_cookie) = session(&f, user, Assurance::Aal2).await;
    let (other, other_cookie) = session(&f, user, Assurance::Aal2).await;
    let (beas, _) = session(&f, bea, Assurance::Aal2).await;
    f.link_for("ada@example.com").await;
    f.links
        .request_email_change(&mine, "ada@new.example", MAX_AGE)
        .await
        .unwrap();
    let token = f.newest_token();
    f.events.clear();

    // Another session of the account, another account, a tampered secret: refused, nothing
    // changed and the token not used up.
    let mut tampered = token.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == '0' { '1' } else { '0' });
    for (s, t) in [(&other, &token), (&beas, &token), (&mine, &tampered)] {
        let refused = f.links.confirm_email_change(s, t.clone()).await;
        assert!(
            matches!(refused, Err(AuthError::InvalidLink)),
            "{refused:?}"
        );
    }
    // A sign-in link is no confirmation token, nor the reverse.
    let sign_in_token = token_of_kind(&f, "l1");
    assert!(matches!(
        f.links
            .confirm_email_change(&mine, sign_in_token.clone())
            .await,
        Err(AuthError::InvalidLink)
    ));
    assert_eq!(found(&f, "ada@example.com").await, Some(user));
    assert_eq!(pending_changes(&f, user).await, 1);
    assert_eq!(f.live_sessions(user).await, 2);

    // Positive: the session that asked confirms.
    let new = f
        .links
        .confirm_email_change(&mine, token.clone())
        .await
        .unwrap();
    assert_eq!(new.as_str(), "ada@new.example");
    assert_eq!(found(&f, "ada@new.example").await, Some(user));
    assert_eq!(found(&f, "ada@example.com").await, None);
    assert!(live(&f, &my_cookie).await);
    assert!(!live(&f, &other_cookie).await);
    assert_eq!(f.pending_links(user).await, 0);
    assert_eq!(
        mail(&f).last().unwrap(),
        &(
            "ada@example.com".to_owned(),
            "Your e-mail address was changed".to_owned()
        )
    );
    let kinds = f.events.kinds();
    for kind in [AuthEventKind::EmailChanged, AuthEventKind::SessionsRevoked] {
        assert!(kinds.contains(&kind), "{kind:?} in {kinds:?}");
    }

    // Replayed: refused, and nothing changes back or again.
    let replay = f.links.confirm_email_change(&mine, token.clone()).await;
    assert!(matches!(replay, Err(AuthError::InvalidLink)), "{replay:?}");
    assert_eq!(found(&f, "ada@new.example").await, Some(user));
}

/// The newest token of the given prefix in the outbox.
fn token_of_kind(f: &common::Fixture, prefix: &str) -> String {
    f.outbox
        .messages()
        .iter()
        .rev()
        .filter(|m| m.body.expose_secret().contains("https://"))
        .map(|m| common::token_in_body(m.body.expose_secret()))
        .find(|t| t.starts_with(prefix))
        .unwrap()
}

#[tokio::test]
async fn an_expired_or_superseded_confirmation_link_is_refused() {
    let f = fixture(4).await;
    let user = f.account("ada@example.com", ActorKind::User);
    let (mine, _) = session(&f, user, Assurance::Aal2).await;
    // A service with one-second links on the same database.
    let pool = rls_guard::TenantPool::new(f.db.pool(testkit::Role::Runtime, 2).await)
        .await
        .unwrap();
    let mut config = magic_auth::LinkConfig::new("https://app.example.test").unwrap();
    config.ttl = Duration::from_secs(1);
    let short = magic_auth::MagicLinks::new(
        pool,
        f.directory.clone(),
        f.outbox.clone(),
        config,
        Box::new([7; 32]),
    )
    .unwrap();
    short
        .request_email_change(&mine, "ada@new.example", MAX_AGE)
        .await
        .unwrap();
    let expired = f.newest_token();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let refused = short.confirm_email_change(&mine, expired.clone()).await;
    assert!(
        matches!(refused, Err(AuthError::InvalidLink)),
        "{refused:?}"
    );
    // Superseded: a newer request voids the older link.
    f.links
        .request_email_change(&mine, "ada@first.example", MAX_AGE)
        .await
        .unwrap();
    let first = f.newest_token();
    f.links
        .request_email_change(&mine, "ada@second.example", MAX_AGE)
        .await
        .unwrap();
    let second = f.newest_token();
    assert!(matches!(
        f.links.confirm_email_change(&mine, first.clone()).await,
        Err(AuthError::InvalidLink)
    ));
    assert_eq!(found(&f, "ada@example.com").await, Some(user));
    // Positive control: the newest, in time, works.
    f.links
        .confirm_email_change(&mine, second.clone())
        .await
        .unwrap();
    assert_eq!(found(&f, "ada@second.example").await, Some(user));
}

#[tokio::test]
async fn an_address_taken_by_another_account_by_confirmation_is_not_applied() {
    let f = fixture(4).await;
    let user = f.account("ada@example.com", ActorKind::User);
    let (mine, _) = session(&f, user, Assurance::Aal2).await;
    f.links
        .request_email_change(&mine, "shared@example.com", MAX_AGE)
        .await
        .unwrap();
    let token = f.newest_token();
    let bea = f.account("shared@example.com", ActorKind::User);
    let taken = f.links.confirm_email_change(&mine, token.clone()).await;
    assert!(
        matches!(taken, Err(AuthError::EmailUnavailable)),
        "{taken:?}"
    );
    assert_eq!(found(&f, "shared@example.com").await, Some(bea));
    assert_eq!(found(&f, "ada@example.com").await, Some(user));
    assert_eq!(f.live_sessions(user).await, 1, "nobody signed out");
}

fn secret(state: &EnrolmentState) -> Option<String> {
    match state {
        EnrolmentState::Pending(e) => Some(e.secret_base32.expose_secret().to_owned()),
        _ => None,
    }
}

#[tokio::test]
async fn a_pending_enrolment_is_shown_again_as_started_and_a_moved_seed_is_refused() {
    let f = fixture(4).await;
    let ada = f.account("ada@example.com", ActorKind::User);
    let bob = f.account("bob@example.com", ActorKind::User);
    let state = f.totp.enrolment_state(f.tenant, ada, "ada").await.unwrap();
    assert!(matches!(state, EnrolmentState::NotStarted), "{state:?}");
    let started = f.totp.enroll(f.tenant, ada, "ada").await.unwrap();
    // Read twice: the same key and URL as at the start, and reading changes nothing.
    for _ in 0..2 {
        let state = f.totp.enrolment_state(f.tenant, ada, "ada").await.unwrap();
        assert_eq!(
            secret(&state).as_deref(),
            Some(started.secret_base32.expose_secret())
        );
        let EnrolmentState::Pending(shown) = state else {
            unreachable!()
        };
        assert_eq!(
            shown.otpauth_url.expose_secret(),
            started.otpauth_url.expose_secret()
        );
        assert!(!format!("{shown:?}").contains(started.secret_base32.expose_secret()));
    }
    // Attack: ada's sealed pending seed copied into bob's row (a runtime-role write, or a
    // restore gone wrong) does not open for bob: refused, never shown as bob's.
    let bob_started = f.totp.enroll(f.tenant, bob, "bob").await.unwrap();
    let t = f.tenant;
    let mut tx = common::bound_admin_tx(&f.admin, t).await;
    sqlx::query(
        "UPDATE auth.totp SET seed = (SELECT seed FROM auth.totp WHERE tenant_id = $1 AND user_id = $2) \
         WHERE tenant_id = $1 AND user_id = $3",
    )
    .bind(t.as_uuid())
    .bind(ada.as_uuid())
    .bind(bob.as_uuid())
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let moved = f.totp.enrolment_state(f.tenant, bob, "bob").await;
    assert!(matches!(moved, Err(AuthError::Crypto)), "{moved:?}");
    assert_ne!(
        bob_started.secret_base32.expose_secret(),
        started.secret_base32.expose_secret()
    );
    // Confirmed: active, and the key is no longer shown.
    let seed = seed_of(&started);
    assert!(matches!(
        f.totp
            .confirm(f.tenant, ada, &code_at(&seed, NOW).unwrap(), NOW)
            .await
            .unwrap(),
        CodeCheck::Accepted { .. }
    ));
    let state = f.totp.enrolment_state(f.tenant, ada, "ada").await.unwrap();
    assert!(matches!(state, EnrolmentState::Active), "{state:?}");
}

#[tokio::test]
async fn a_pending_replacement_is_shown_only_to_the_session_that_started_it() {
    let f = fixture(4).await;
    let user = f.account("ada@example.com", ActorKind::User);
    f.enrolled(user).await;
    let (mine, _) = session(&f, user, Assurance::Aal2).await;
    let (other, _) = session(&f, user, Assurance::Aal2).await;
    assert!(
        f.totp
            .pending_replacement(&mine, "ada")
            .await
            .unwrap()
            .is_none()
    );
    let started = f
        .totp
        .start_replacement(&mine, STEP_UP, "ada", NOW)
        .await
        .unwrap();
    let shown = f
        .totp
        .pending_replacement(&mine, "ada")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        shown.secret_base32.expose_secret(),
        started.secret_base32.expose_secret()
    );
    assert_eq!(
        shown.otpauth_url.expose_secret(),
        started.otpauth_url.expose_secret()
    );
    // Another session of the same account does not see it.
    assert!(
        f.totp
            .pending_replacement(&other, "ada")
            .await
            .unwrap()
            .is_none()
    );
    // Completed: nothing pending any more.
    assert!(
        f.totp
            .complete_replacement(&mine, &code_at(&seed_of(&started), NOW).unwrap(), NOW)
            .await
            .unwrap()
    );
    assert!(
        f.totp
            .pending_replacement(&mine, "ada")
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn recovery_codes_are_not_regenerated_for_a_revoked_session_or_a_disabled_account() {
    let f = fixture(4).await;
    let (user, kept) = with_recovery_codes(&f).await;
    for end in ["revoke_all", "disable"] {
        let (mine, _) = session(&f, user, Assurance::Aal2).await;
        if end == "revoke_all" {
            f.sessions.revoke_all(f.tenant, user, None).await.unwrap();
        } else {
            f.sessions.disable_account(f.tenant, user).await.unwrap();
        }
        let refused = f.totp.regenerate_recovery_codes(&mine, MAX_AGE).await;
        assert!(
            matches!(refused, Err(AuthError::InvalidToken)),
            "{end}: {refused:?}"
        );
        f.sessions.enable_account(f.tenant, user).await.unwrap();
    }
    // The codes made before still work: the refused calls changed nothing.
    assert!(matches!(
        f.totp
            .use_recovery_code(f.tenant, user, &kept.codes()[0], NOW)
            .await
            .unwrap(),
        CodeCheck::RecoveryAccepted { codes_left: 9 }
    ));
    // Positive control: a live, fresh session regenerates, and the old codes stop working.
    let (live, _) = session(&f, user, Assurance::Aal2).await;
    let fresh = f
        .totp
        .regenerate_recovery_codes(&live, MAX_AGE)
        .await
        .unwrap();
    assert_eq!(fresh.codes().len(), magic_auth::totp::RECOVERY_CODES);
    let old = f
        .totp
        .use_recovery_code(f.tenant, user, &kept.codes()[1], NOW)
        .await
        .unwrap();
    assert!(matches!(old, CodeCheck::Rejected { .. }), "{old:?}");
}

/// Whether `cookie` is a live session's.
async fn live(f: &common::Fixture, cookie: &str) -> bool {
    f.sessions.validate(cookie).await.unwrap().is_some()
}

/// A `Session` value that claims more than the store records — a higher assurance than the
/// session has, or a later factor check — passes no step-up: new recovery codes, replacing the
/// authenticator and changing the e-mail address each ask the stored session, in the same
/// transaction. (A value is whatever code holds it; the store is what was proven.) The control:
/// the stored two-factor session passes each.
#[tokio::test]
async fn a_session_value_claiming_more_than_the_store_passes_no_step_up() {
    let f = fixture(4).await;
    let user = f.account("ada@example.com", ActorKind::User);
    f.enrolled(user).await;
    let now = time::OffsetDateTime::now_utc();
    // A link-only session, claimed as two factors just now.
    let (one_factor, _) = session(&f, user, Assurance::Aal1).await;
    let mut raised = one_factor.clone();
    raised.assurance = Assurance::Aal2;
    raised.authenticated_at = now;
    // Two factors 11 minutes ago, claimed as just now.
    let (aged, _) = f
        .sessions
        .create_aged(
            f.tenant,
            &NewSession::new(user, ActorKind::User, Assurance::Aal2),
            Duration::from_secs(11 * 60),
        )
        .await
        .unwrap();
    let mut refreshed = aged.clone();
    refreshed.authenticated_at = now;
    for (label, forged) in [("raised", &raised), ("refreshed", &refreshed)] {
        assert!(forged.is_fresh(MAX_AGE), "{label}: the value itself passes");
        let codes = f.totp.regenerate_recovery_codes(forged, MAX_AGE).await;
        assert!(codes.is_err(), "{label}: new recovery codes");
        let started = f.totp.start_replacement(forged, STEP_UP, "ada", NOW).await;
        assert!(started.is_err(), "{label}: a replacement started");
        let changed = f
            .links
            .request_email_change(forged, "ada@new.example", MAX_AGE)
            .await;
        assert!(changed.is_err(), "{label}: an e-mail change");
    }
    assert_eq!(replacement(&f, user).await, (false, None));
    assert_eq!(pending_changes(&f, user).await, 0);
    assert!(mail(&f).is_empty(), "nothing sent");
    // The stored two-factor session passes each.
    let (fresh, _) = session(&f, user, Assurance::Aal2).await;
    f.totp
        .regenerate_recovery_codes(&fresh, MAX_AGE)
        .await
        .unwrap();
    f.links
        .request_email_change(&fresh, "ada@new.example", MAX_AGE)
        .await
        .unwrap();
    f.totp
        .start_replacement(&fresh, STEP_UP, "ada", NOW)
        .await
        .unwrap();
    assert_eq!(replacement(&f, user).await, (true, Some(fresh.id)));
    assert_eq!(pending_changes(&f, user).await, 1);
}
