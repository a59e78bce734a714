//! Revocation is final under every race: a rotation, step-up, recovery or link sign-in running
//! at the same moment as a revoke, a revoke-all, a lockout or a disable never leaves a live
//! session behind. Each race runs many times, both sides spawned on a multi-thread runtime
//! with a pool of several connections, released together; the invariant is checked after both
//! finish (what is stored, and every token either side got back), so the outcome does not
//! depend on which side won. Each race has its legitimate control in the same setup.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::code_at;

use magic_auth::secrecy::ExposeSecret;
use std::sync::Arc;
use std::time::Duration;

use common::{Fixture, NOW, fixture, wrong_code};
use magic_auth::totp::CodeCheck;
use magic_auth::{Assurance, AuthError, NewSession, Session, SessionToken};
use tenant_scope::{ActorId, ActorKind};
use tokio::sync::Barrier;

const ROUNDS: usize = 100;
const CONNECTIONS: u32 = 8;

fn aal1(user: ActorId) -> NewSession {
    NewSession::new(user, ActorKind::User, Assurance::Aal1)
}

/// Runs `a` and `b` at the same moment and returns both results. Which is spawned first
/// alternates, and one side starts up to 3 ms after the other in some rounds, so the rounds
/// cover many interleavings; the assertions hold for every one of them.
async fn race<A, B, RA, RB>(round: usize, a: A, b: B) -> (RA, RB)
where
    A: Future<Output = RA> + Send + 'static,
    B: Future<Output = RB> + Send + 'static,
    RA: Send + 'static,
    RB: Send + 'static,
{
    let gate = Arc::new(Barrier::new(2));
    let (ga, gb) = (gate.clone(), gate);
    let stagger = Duration::from_millis((round % 4) as u64);
    let (delay_a, delay_b) = if round % 8 < 4 {
        (Duration::ZERO, stagger)
    } else {
        (stagger, Duration::ZERO)
    };
    let a = async move {
        ga.wait().await;
        tokio::time::sleep(delay_a).await;
        a.await
    };
    let b = async move {
        gb.wait().await;
        tokio::time::sleep(delay_b).await;
        b.await
    };
    if round.is_multiple_of(2) {
        let a = tokio::spawn(a);
        let b = tokio::spawn(b);
        (a.await.unwrap(), b.await.unwrap())
    } else {
        let b = tokio::spawn(b);
        let a = tokio::spawn(a);
        (a.await.unwrap(), b.await.unwrap())
    }
}

/// After both sides: nothing live is stored for `user`, and no token either side got works.
async fn assert_nothing_live(f: &Fixture, user: ActorId, tokens: &[SessionToken], what: &str) {
    assert_eq!(
        f.live_sessions(user).await,
        0,
        "{what}: a live session was left"
    );
    for token in tokens {
        assert!(
            f.sessions
                .validate(token.to_cookie_value().expose_secret())
                .await
                .unwrap()
                .is_none(),
            "{what}: a token still validates"
        );
    }
}

/// A rotation refused because its session was revoked (or the account's lock saw it).
fn refused(result: &Result<(Session, SessionToken), AuthError>) -> bool {
    matches!(result, Err(AuthError::InvalidToken))
}

/// What the sign-in side of a race got: the tokens it was given, and whether it was refused
/// where a refusal is the expected answer.
type SignInSide = Result<Vec<SessionToken>, AuthError>;

/// A rotation (after a factor check, or alone): the new token, or a refusal that must be
/// `InvalidToken` (its session was revoked first).
fn rotation_side(
    round: usize,
    rotation: Result<(Session, SessionToken), AuthError>,
) -> Vec<SessionToken> {
    match rotation {
        Ok((_, token)) => vec![token],
        ref refusal => {
            assert!(refused(refusal), "round {round}: {refusal:?}");
            Vec::new()
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotate_racing_revoke_never_leaves_a_live_session() {
    let f = fixture(CONNECTIONS).await;
    // Control: a rotation alone replaces the session with a live aal2 one.
    let user = ActorId::new_random();
    let (session, _) = f.sessions.create(f.tenant, &aal1(user)).await.unwrap();
    let (rotated, token) = f.sessions.rotate(&session, Assurance::Aal2).await.unwrap();
    assert_eq!(rotated.assurance, Assurance::Aal2);
    assert!(
        f.sessions
            .validate(token.to_cookie_value().expose_secret())
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(f.live_sessions(user).await, 1);

    let mut rotated_first = 0;
    for round in 0..ROUNDS {
        let user = ActorId::new_random();
        let (session, token) = f.sessions.create(f.tenant, &aal1(user)).await.unwrap();
        let (sessions, revoker, tenant, id) =
            (f.sessions.clone(), f.sessions.clone(), f.tenant, session.id);
        let (rotation, revoked) = race(
            round,
            async move { sessions.rotate(&session, Assurance::Aal2).await },
            async move { revoker.revoke(tenant, id).await },
        )
        .await;
        // Whichever committed first, the revocation ended a live session.
        assert!(revoked.unwrap(), "round {round}");
        let mut tokens = rotation_side(round, rotation);
        rotated_first += tokens.len();
        tokens.push(token);
        assert_nothing_live(&f, user, &tokens, &format!("round {round}")).await;
    }
    eprintln!("rotate vs revoke: rotation first in {rotated_first}/{ROUNDS} rounds");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotate_racing_disable_never_leaves_a_live_session() {
    let f = fixture(CONNECTIONS).await;
    let mut rotated_first = 0;
    for round in 0..ROUNDS {
        let user = ActorId::new_random();
        let (session, token) = f.sessions.create(f.tenant, &aal1(user)).await.unwrap();
        if round == 0 {
            // Control: the rotation alone succeeds (then the race on a fresh session).
            let (_, rotated) = f.sessions.rotate(&session, Assurance::Aal2).await.unwrap();
            assert!(
                f.sessions
                    .validate(rotated.to_cookie_value().expose_secret())
                    .await
                    .unwrap()
                    .is_some()
            );
            f.sessions.revoke_all(f.tenant, user, None).await.unwrap();
            continue;
        }
        let (sessions, disabler, tenant) = (f.sessions.clone(), f.sessions.clone(), f.tenant);
        let (rotation, disabled) = race(
            round,
            async move { sessions.rotate(&session, Assurance::Aal2).await },
            async move { disabler.disable_account(tenant, user).await },
        )
        .await;
        disabled.unwrap();
        let mut tokens = rotation_side(round, rotation);
        rotated_first += tokens.len();
        tokens.push(token);
        assert_nothing_live(&f, user, &tokens, &format!("round {round}")).await;
    }
    eprintln!("rotate vs disable: rotation first in {rotated_first}/{ROUNDS} rounds");
}

/// A second-factor step-up: the code, then the rotation to `aal2` if it was accepted.
async fn step_up(
    f: &Fixture,
    session: Session,
    seed: Vec<u8>,
) -> impl Future<
    Output = (
        Result<CodeCheck, AuthError>,
        Option<Result<(Session, SessionToken), AuthError>>,
    ),
> + Send
+ 'static {
    let (totp, sessions, tenant) = (f.totp.clone(), f.sessions.clone(), f.tenant);
    async move {
        let code = code_at(&seed, NOW).unwrap();
        let check = totp.verify(tenant, session.user, &code, NOW).await;
        let rotation = match check {
            Ok(CodeCheck::Accepted { .. }) => {
                Some(sessions.rotate(&session, Assurance::Aal2).await)
            }
            _ => None,
        };
        (check, rotation)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn step_up_racing_revoke_all_never_leaves_a_live_session() {
    let f = fixture(CONNECTIONS).await;
    // Control: the step-up alone reaches a live aal2 session.
    let user = ActorId::new_random();
    let seed = f.enrolled(user).await;
    let (session, _) = f.sessions.create(f.tenant, &aal1(user)).await.unwrap();
    let (check, rotation) = step_up(&f, session, seed).await.await;
    assert!(matches!(check, Ok(CodeCheck::Accepted { .. })));
    assert_eq!(rotation.unwrap().unwrap().0.assurance, Assurance::Aal2);
    assert_eq!(f.live_sessions(user).await, 1);

    let mut rotated_first = 0;
    for round in 0..ROUNDS {
        let user = ActorId::new_random();
        let seed = f.enrolled(user).await;
        let (session, token) = f.sessions.create(f.tenant, &aal1(user)).await.unwrap();
        let (revoker, tenant) = (f.sessions.clone(), f.tenant);
        let ((check, rotation), revoked) =
            race(round, step_up(&f, session, seed).await, async move {
                revoker.revoke_all(tenant, user, None).await
            })
            .await;
        revoked.unwrap();
        assert!(
            matches!(check, Ok(CodeCheck::Accepted { .. })),
            "round {round}"
        );
        let mut tokens = rotation_side(round, rotation.unwrap());
        rotated_first += tokens.len();
        tokens.push(token);
        assert_nothing_live(&f, user, &tokens, &format!("round {round}")).await;
    }
    eprintln!("step-up vs revoke_all: rotation first in {rotated_first}/{ROUNDS} rounds");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn recovery_racing_revoke_all_never_leaves_a_live_session() {
    let f = fixture(CONNECTIONS).await;
    let mut rotated_first = 0;
    for round in 0..=ROUNDS {
        let user = ActorId::new_random();
        f.enrolled(user).await;
        let (fresh, fresh_token) = f
            .sessions
            .create(
                f.tenant,
                &NewSession::new(user, ActorKind::User, Assurance::Aal2),
            )
            .await
            .unwrap();
        let codes = f
            .totp
            .regenerate_recovery_codes(&fresh, Duration::from_secs(600))
            .await
            .unwrap();
        let code = codes.codes()[0].clone();
        let (session, token) = f.sessions.create(f.tenant, &aal1(user)).await.unwrap();
        let (totp, sessions, tenant) = (f.totp.clone(), f.sessions.clone(), f.tenant);
        let recovery = async move {
            let check = totp.use_recovery_code(tenant, user, &code, NOW).await;
            let rotation = match check {
                Ok(CodeCheck::RecoveryAccepted { .. }) => {
                    Some(sessions.rotate(&session, Assurance::Aal2).await)
                }
                _ => None,
            };
            (check, rotation)
        };
        if round == ROUNDS {
            // Control, last: the recovery alone reaches a live aal2 session.
            let (check, rotation) = recovery.await;
            assert!(matches!(check, Ok(CodeCheck::RecoveryAccepted { .. })));
            let (rotated, _) = rotation.unwrap().unwrap();
            assert_eq!(rotated.assurance, Assurance::Aal2);
            assert_eq!(
                f.live_sessions(user).await,
                2,
                "the new session and `fresh`"
            );
            break;
        }
        let revoker = f.sessions.clone();
        let ((check, rotation), revoked) = race(round, recovery, async move {
            revoker.revoke_all(tenant, user, None).await
        })
        .await;
        revoked.unwrap();
        assert!(
            matches!(check, Ok(CodeCheck::RecoveryAccepted { .. })),
            "round {round}"
        );
        let mut tokens = rotation_side(round, rotation.unwrap());
        rotated_first += tokens.len();
        tokens.extend([token, fresh_token]);
        assert_nothing_live(&f, user, &tokens, &format!("round {round}")).await;
    }
    eprintln!("recovery vs revoke_all: rotation first in {rotated_first}/{ROUNDS} rounds");
}

/// A link sign-in: confirm, then the session for it.
fn link_sign_in(
    f: &Fixture,
    token: String,
    verifier: String,
) -> impl Future<Output = SignInSide> + Send + 'static {
    let (links, sessions) = (f.links.clone(), f.sessions.clone());
    async move {
        let sign_in = links.confirm(token.clone(), verifier.clone()).await?;
        let (_, token) = sessions.sign_in(&sign_in, None, None).await?;
        Ok(vec![token])
    }
}

fn link_side(round: usize, side: SignInSide) -> Vec<SessionToken> {
    match side {
        Ok(tokens) => tokens,
        Err(AuthError::InvalidLink) => Vec::new(),
        Err(other) => panic!("round {round}: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn link_confirmation_racing_disable_never_leaves_a_live_session() {
    let f = fixture(CONNECTIONS).await;
    // Control: the link alone signs in.
    let user = f.account("control@example.com", ActorKind::User);
    let (token, verifier) = f.link_for("control@example.com").await;
    assert_eq!(link_sign_in(&f, token, verifier).await.unwrap().len(), 1);
    assert_eq!(f.live_sessions(user).await, 1);

    let mut signed_in_first = 0;
    for round in 0..ROUNDS {
        let email = format!("user{round}@example.com");
        let user = f.account(&email, ActorKind::User);
        let (token, verifier) = f.link_for(&email).await;
        let (directory, disabler, tenant) = (f.directory.clone(), f.sessions.clone(), f.tenant);
        let (side, disabled) = race(round, link_sign_in(&f, token, verifier), async move {
            // The operator's disable: the directory's flag, then magic-auth's.
            directory.edit(tenant, user, |a| a.disabled = true);
            disabler.disable_account(tenant, user).await
        })
        .await;
        disabled.unwrap();
        let tokens = link_side(round, side);
        signed_in_first += tokens.len();
        assert_nothing_live(&f, user, &tokens, &format!("round {round}")).await;
        assert_eq!(f.pending_links(user).await, 0, "round {round}");
    }
    eprintln!("confirm vs disable: sign-in first in {signed_in_first}/{ROUNDS} rounds");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn link_confirmation_racing_revoke_all_never_leaves_a_live_session() {
    let f = fixture(CONNECTIONS).await;
    // Control: the link alone signs in.
    let user = f.account("control@example.com", ActorKind::User);
    let (token, verifier) = f.link_for("control@example.com").await;
    assert_eq!(link_sign_in(&f, token, verifier).await.unwrap().len(), 1);
    assert_eq!(f.live_sessions(user).await, 1);

    let mut signed_in_first = 0;
    for round in 0..ROUNDS {
        let email = format!("user{round}@example.com");
        let user = f.account(&email, ActorKind::User);
        let (token, verifier) = f.link_for(&email).await;
        let (revoker, tenant) = (f.sessions.clone(), f.tenant);
        let (side, revoked) = race(round, link_sign_in(&f, token, verifier), async move {
            revoker.revoke_all(tenant, user, None).await
        })
        .await;
        revoked.unwrap();
        let tokens = link_side(round, side);
        signed_in_first += tokens.len();
        assert_nothing_live(&f, user, &tokens, &format!("round {round}")).await;
        assert_eq!(f.pending_links(user).await, 0, "round {round}");
    }
    eprintln!("confirm vs revoke_all: sign-in first in {signed_in_first}/{ROUNDS} rounds");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lockout_racing_step_up_never_leaves_a_live_session() {
    let f = fixture(CONNECTIONS).await;
    let (mut locked_first, mut stepped_up_first) = (0, 0);
    for round in 0..ROUNDS {
        let user = ActorId::new_random();
        let seed = f.enrolled(user).await;
        // Four wrong codes: the next one locks the factor (and signs the account out).
        let wrong = wrong_code(&seed, NOW);
        for _ in 0..4 {
            assert!(matches!(
                f.totp.verify(f.tenant, user, &wrong, NOW).await.unwrap(),
                CodeCheck::Rejected { .. }
            ));
        }
        let (session, token) = f.sessions.create(f.tenant, &aal1(user)).await.unwrap();
        let (totp, tenant) = (f.totp.clone(), f.tenant);
        let ((check, rotation), attack) =
            race(round, step_up(&f, session, seed).await, async move {
                totp.verify(tenant, user, &wrong, NOW).await
            })
            .await;
        match attack.unwrap() {
            CodeCheck::Locked { .. } => {
                // The lockout won: the step-up was refused or its session ended with the rest.
                locked_first += 1;
                let mut tokens = match rotation {
                    Some(rotation) => rotation_side(round, rotation),
                    None => {
                        assert!(
                            matches!(check, Ok(CodeCheck::Locked { .. })),
                            "round {round}"
                        );
                        Vec::new()
                    }
                };
                tokens.push(token);
                assert_nothing_live(&f, user, &tokens, &format!("round {round}")).await;
            }
            CodeCheck::Rejected { .. } => {
                // The right code came first and reset the count: no lockout happened, and the
                // legitimate step-up stands (the control, in the same race).
                stepped_up_first += 1;
                assert!(
                    matches!(check, Ok(CodeCheck::Accepted { .. })),
                    "round {round}"
                );
                let (_, new) = rotation.unwrap().unwrap();
                assert!(
                    f.sessions
                        .validate(new.to_cookie_value().expose_secret())
                        .await
                        .unwrap()
                        .is_some()
                );
                assert_eq!(f.live_sessions(user).await, 1, "round {round}");
            }
            other => panic!("round {round}: {other:?}"),
        }
    }
    eprintln!(
        "lockout vs step-up: lockout first in {locked_first}, step-up first in \
         {stepped_up_first} of {ROUNDS} rounds"
    );
    // A lockout without a race ends the account's sessions (the control for the other branch).
    let user = ActorId::new_random();
    let seed = f.enrolled(user).await;
    let (_, token) = f.sessions.create(f.tenant, &aal1(user)).await.unwrap();
    let wrong = wrong_code(&seed, NOW);
    for _ in 0..5 {
        f.totp.verify(f.tenant, user, &wrong, NOW).await.unwrap();
    }
    assert_nothing_live(&f, user, &[token], "lockout alone").await;
}
