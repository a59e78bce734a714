//! Links follow the account: a pending link is refused once the account is disabled, its
//! sessions revoked or its links invalidated, and a confirmation signs in as what the account
//! is at that moment. Supersession is atomic under a burst of requests; the schema upgrade
//! cleans up what older versions left. Each attack next to its legitimate control.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Fixture, fixture, template};
use magic_auth::secrecy::ExposeSecret;
use magic_auth::{AuthError, AuthEventKind, NewSession};
use sqlx::Connection;
use tenant_scope::{ActorKind, TenantId};
use testkit::{Role, fresh_database};

async fn signed_in_sessions_for_link(
    f: &Fixture,
    token: &str,
    verifier: &str,
) -> Result<(), AuthError> {
    let sign_in = f.links.confirm(token, verifier).await?;
    f.sessions.sign_in(&sign_in, None, None).await?;
    Ok(())
}

#[tokio::test]
async fn a_pending_link_is_refused_after_the_account_is_disabled() {
    let f = fixture(4).await;
    // Control: a link for an enabled account signs in.
    let ok = f.account("ok@example.com", ActorKind::User);
    let (token, verifier) = f.link_for("ok@example.com").await;
    signed_in_sessions_for_link(&f, &token, &verifier)
        .await
        .unwrap();
    assert_eq!(f.live_sessions(ok).await, 1);

    // Disabled through magic-auth (as an operator would, with the directory flag set too).
    let ada = f.account("ada@example.com", ActorKind::User);
    let (token, verifier) = f.link_for("ada@example.com").await;
    f.events.clear();
    f.sessions.disable_account(f.tenant, ada).await.unwrap();
    assert!(f.events.kinds().contains(&AuthEventKind::AccountDisabled));
    assert!(f.events.kinds().contains(&AuthEventKind::LinksInvalidated));
    assert_eq!(f.pending_links(ada).await, 0);
    assert!(matches!(
        f.links.confirm(token.clone(), verifier.clone()).await,
        Err(AuthError::InvalidLink)
    ));
    // No new link is sent, and no session is made for it by any path.
    let sent = f.outbox.messages().len();
    let request = f
        .links
        .request(f.tenant, "ada@example.com", None)
        .await
        .unwrap();
    assert_eq!(
        request.delivery.await.unwrap().unwrap(),
        magic_auth::Delivery::NoAccount
    );
    assert_eq!(f.outbox.messages().len(), sent);
    let new = NewSession::new(ada, ActorKind::User, magic_auth::Assurance::Aal1);
    assert!(matches!(
        f.sessions.create(f.tenant, &new).await,
        Err(AuthError::AccountDisabled)
    ));
    assert_eq!(f.all_sessions(ada).await, 0);

    // Enabled again: a new link works (the old one stays dead).
    assert!(f.sessions.enable_account(f.tenant, ada).await.unwrap());
    assert!(f.events.kinds().contains(&AuthEventKind::AccountEnabled));
    assert!(matches!(
        f.links.confirm(token.clone(), verifier.clone()).await,
        Err(AuthError::InvalidLink)
    ));
    let (token, verifier) = f.link_for("ada@example.com").await;
    signed_in_sessions_for_link(&f, &token, &verifier)
        .await
        .unwrap();
    assert_eq!(f.live_sessions(ada).await, 1);
}

#[tokio::test]
async fn a_pending_link_is_refused_once_the_directory_disables_the_account() {
    let f = fixture(4).await;
    let ada = f.account("ada@example.com", ActorKind::User);
    let (token, verifier) = f.link_for("ada@example.com").await;
    // Only the application's directory says so: the confirmation reads it again.
    f.directory.edit(f.tenant, ada, |a| a.disabled = true);
    assert!(matches!(
        f.links.confirm(token.clone(), verifier.clone()).await,
        Err(AuthError::InvalidLink)
    ));
    assert_eq!(f.all_sessions(ada).await, 0);
    // An account gone from the directory is refused the same way.
    f.directory.edit(f.tenant, ada, |a| a.disabled = false);
    let (token, verifier) = f.link_for("ada@example.com").await;
    let bob = f.account("bob@example.com", ActorKind::User);
    f.directory.edit(f.tenant, ada, |a| a.user = bob);
    assert!(matches!(
        f.links.confirm(token.clone(), verifier.clone()).await,
        Err(AuthError::InvalidLink)
    ));
    // Control: back as it was, a new link signs in.
    f.directory.edit(f.tenant, bob, |a| a.user = ada);
    let (token, verifier) = f.link_for("ada@example.com").await;
    signed_in_sessions_for_link(&f, &token, &verifier)
        .await
        .unwrap();
    assert_eq!(f.live_sessions(ada).await, 1);
}

#[tokio::test]
async fn a_pending_link_is_refused_after_revoke_all_and_invalidate_links() {
    let f = fixture(4).await;
    let ada = f.account("ada@example.com", ActorKind::User);
    let (token, verifier) = f.link_for("ada@example.com").await;
    f.events.clear();
    f.sessions.revoke_all(f.tenant, ada, None).await.unwrap();
    assert_eq!(f.events.kinds(), vec![AuthEventKind::LinksInvalidated]);
    assert!(matches!(
        f.links.confirm(token.clone(), verifier.clone()).await,
        Err(AuthError::InvalidLink)
    ));

    let (token, verifier) = f.link_for("ada@example.com").await;
    f.events.clear();
    assert_eq!(f.links.invalidate_links(f.tenant, ada).await.unwrap(), 1);
    assert_eq!(f.events.kinds(), vec![AuthEventKind::LinksInvalidated]);
    assert_eq!(f.pending_links(ada).await, 0);
    assert!(matches!(
        f.links.confirm(token.clone(), verifier.clone()).await,
        Err(AuthError::InvalidLink)
    ));
    assert_eq!(f.all_sessions(ada).await, 0);

    // Control: a link requested after both signs in.
    let (token, verifier) = f.link_for("ada@example.com").await;
    signed_in_sessions_for_link(&f, &token, &verifier)
        .await
        .unwrap();
    assert_eq!(f.live_sessions(ada).await, 1);
}

#[tokio::test]
async fn a_link_confirmed_just_before_a_revocation_gets_no_session() {
    let f = fixture(4).await;
    let ada = f.account("ada@example.com", ActorKind::User);
    // Control: confirmed, then signed in.
    let (token, verifier) = f.link_for("ada@example.com").await;
    let sign_in = f
        .links
        .confirm(token.clone(), verifier.clone())
        .await
        .unwrap();
    f.sessions.sign_in(&sign_in, None, None).await.unwrap();
    assert_eq!(f.live_sessions(ada).await, 1);

    // Confirmed, then every session revoked, then the session asked for: refused.
    for end in ["revoke_all", "invalidate_links", "disable"] {
        let (token, verifier) = f.link_for("ada@example.com").await;
        let sign_in = f
            .links
            .confirm(token.clone(), verifier.clone())
            .await
            .unwrap();
        match end {
            "revoke_all" => {
                f.sessions.revoke_all(f.tenant, ada, None).await.unwrap();
            }
            "invalidate_links" => {
                f.links.invalidate_links(f.tenant, ada).await.unwrap();
            }
            _ => f.sessions.disable_account(f.tenant, ada).await.unwrap(),
        }
        let before = f.all_sessions(ada).await;
        assert!(
            matches!(
                f.sessions.sign_in(&sign_in, None, None).await,
                Err(AuthError::InvalidLink)
            ),
            "{end}"
        );
        assert_eq!(f.all_sessions(ada).await, before, "{end}: nothing written");
        assert_eq!(f.live_sessions(ada).await, 0, "{end}");
    }
}

#[tokio::test]
async fn a_demoted_account_signs_in_as_what_it_is_now() {
    let f = fixture(4).await;
    // Control: staff signs in as staff.
    let ops = f.account("ops@example.com", ActorKind::Staff);
    let (token, verifier) = f.link_for("ops@example.com").await;
    let sign_in = f
        .links
        .confirm(token.clone(), verifier.clone())
        .await
        .unwrap();
    assert_eq!(sign_in.kind, ActorKind::Staff);

    // Demoted between the request and the click: the session is a user's, not staff's.
    let (token, verifier) = f.link_for("ops@example.com").await;
    f.directory
        .edit(f.tenant, ops, |a| a.kind = ActorKind::User);
    let sign_in = f
        .links
        .confirm(token.clone(), verifier.clone())
        .await
        .unwrap();
    assert_eq!(sign_in.kind, ActorKind::User);
    let (session, token) = f.sessions.sign_in(&sign_in, None, None).await.unwrap();
    assert_eq!(session.kind, ActorKind::User);
    let checked = f
        .sessions
        .validate(token.to_cookie_value().expose_secret())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(checked.actor().kind(), ActorKind::User);
    let (stored,): (String,) = sqlx::query_as("SELECT actor_kind FROM auth.sessions WHERE id = $1")
        .bind(session.id)
        .fetch_one(&f.admin)
        .await
        .unwrap();
    assert_eq!(stored, "user");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_requests_for_one_address_leave_exactly_one_live_link() {
    let f = fixture(8).await;
    let ada = f.account("ada@example.com", ActorKind::User);
    for round in 0..5 {
        let mut requests = Vec::new();
        for _ in 0..50 {
            let links = f.links.clone();
            let tenant = f.tenant;
            requests.push(tokio::spawn(async move {
                links.request(tenant, "ada@example.com", None).await
            }));
        }
        let mut verifiers = Vec::new();
        for request in requests {
            let request = request.await.unwrap().unwrap();
            // Every request is delivered: they take turns, none fails on the unique index.
            assert_eq!(
                request.delivery.await.unwrap().unwrap(),
                magic_auth::Delivery::Sent,
                "round {round}"
            );
            verifiers.push(request.verifier.expose_secret().to_owned());
        }
        assert_eq!(f.pending_links(ada).await, 1, "round {round}");
        // Control: the one live link signs in, from the one browser it belongs to.
        let (live,): (uuid::Uuid,) = sqlx::query_as(
            "SELECT id FROM auth.login_links WHERE tenant_id = $1 AND user_id = $2 \
             AND consumed_at IS NULL AND invalidated_at IS NULL",
        )
        .bind(f.tenant.as_uuid())
        .bind(ada.as_uuid())
        .fetch_one(&f.admin)
        .await
        .unwrap();
        let messages = f.outbox.messages();
        let tokens: Vec<String> = messages[messages.len() - 50..]
            .iter()
            .map(|m| common::token_in_body(m.body.expose_secret()))
            .collect();
        let live_token = tokens
            .iter()
            .find(|t| t.contains(&live.simple().to_string()))
            .unwrap();
        let mut confirmed = 0;
        for verifier in &verifiers {
            if f.links
                .confirm(live_token.clone(), verifier.clone())
                .await
                .is_ok()
            {
                confirmed += 1;
            }
        }
        assert_eq!(confirmed, 1, "round {round}");
        // Every superseded link is refused, even from the browser that asked for it.
        for token in tokens.iter().filter(|t| *t != live_token).take(5) {
            for verifier in &verifiers {
                assert!(
                    f.links
                        .confirm(token.clone(), verifier.clone())
                        .await
                        .is_err()
                );
            }
        }
        assert_eq!(f.pending_links(ada).await, 0);
    }
}

#[tokio::test]
async fn the_schema_upgrade_keeps_only_the_newest_of_duplicate_pending_links() {
    let db = fresh_database(&template()).await;
    let tenant = TenantId::new_random();
    let (user, other) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    {
        // A database from before the unique index, with three pending links for one account.
        let mut admin = sqlx::PgConnection::connect_with(&db.options(Role::Admin))
            .await
            .unwrap();
        sqlx::raw_sql(
            "DROP INDEX auth.login_links_one_pending; SET session_replication_role = replica;",
        )
        .execute(&mut admin)
        .await
        .unwrap();
        for (who, age) in [(user, 30), (user, 20), (user, 10), (other, 5)] {
            sqlx::query(
                "INSERT INTO auth.login_links (tenant_id, id, user_id, actor_kind, secret_hash, \
                 verifier_hash, created_at, expires_at) \
                 VALUES ($1, $2, $3, 'user', $4, $4, now() - make_interval(secs => $5), \
                         now() + interval '10 minutes')",
            )
            .bind(tenant.as_uuid())
            .bind(uuid::Uuid::new_v4())
            .bind(who)
            .bind(vec![0u8; 32])
            .bind(f64::from(age))
            .execute(&mut admin)
            .await
            .unwrap();
        }
    }
    let schema = magic_auth::schema::schema_sql("testkit_runtime").unwrap();
    let owner = db.pool(Role::Owner, 1).await;
    // Twice: idempotent.
    sqlx::raw_sql(&schema).execute(&owner).await.unwrap();
    sqlx::raw_sql(&schema).execute(&owner).await.unwrap();
    let admin = db.pool(Role::Admin, 1).await;
    let pending: Vec<(uuid::Uuid, f64)> = sqlx::query_as(
        "SELECT user_id, extract(epoch FROM now() - created_at)::float8 FROM auth.login_links \
         WHERE consumed_at IS NULL AND invalidated_at IS NULL ORDER BY user_id",
    )
    .fetch_all(&admin)
    .await
    .unwrap();
    let mut by_user: Vec<(uuid::Uuid, i64)> = pending
        .iter()
        .map(|(u, age)| (*u, age.round() as i64))
        .collect();
    by_user.sort();
    let mut expected = vec![(user, 10), (other, 5)];
    expected.sort();
    assert_eq!(by_user, expected);
    // The index is in place and row-level security forced again.
    let (forced, indexed): (bool, bool) = sqlx::query_as(
        "SELECT c.relforcerowsecurity, to_regclass('auth.login_links_one_pending') IS NOT NULL \
         FROM pg_class c WHERE c.oid = 'auth.login_links'::regclass",
    )
    .fetch_one(&admin)
    .await
    .unwrap();
    assert!(forced && indexed);
    let (disabled,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'auth.login_links'::regclass \
         AND tgenabled = 'D'",
    )
    .fetch_one(&admin)
    .await
    .unwrap();
    assert_eq!(disabled, 0, "no trigger left disabled");
}

#[tokio::test]
async fn the_auth_schema_passes_the_coverage_check_and_grants_no_more_than_it_needs() {
    let db = fresh_database(&template()).await;
    let mut conn = sqlx::PgConnection::connect_with(&db.options(Role::Admin))
        .await
        .unwrap();
    // Untrusted, the library's own triggers are the findings; declared, none is left.
    let findings = rls_guard::CoverageCheck::new()
        .runtime_role(testkit::RUNTIME_ROLE)
        .run(&mut conn)
        .await
        .unwrap();
    let triggers = [
        "sessions_notify_change",
        "sessions_fixed",
        "login_links_fixed",
        "email_changes_fixed",
        "recovery_codes_fixed",
        "totp_forward_only",
        "accounts_forward_only",
    ];
    assert_eq!(findings.len(), triggers.len(), "{findings:#?}");
    for trigger in triggers {
        assert!(
            findings.iter().any(|f| f.detail.contains(trigger)),
            "{findings:#?}"
        );
    }
    let findings = magic_auth::schema::coverage_trust(
        rls_guard::CoverageCheck::new().runtime_role(testkit::RUNTIME_ROLE),
    )
    .run(&mut conn)
    .await
    .unwrap();
    assert!(findings.is_empty(), "{findings:#?}");
    let grants: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_name::text, privilege_type::text FROM information_schema.role_table_grants \
         WHERE grantee = 'testkit_runtime' AND table_schema = 'auth' \
         AND privilege_type NOT IN ('SELECT', 'INSERT', 'UPDATE')",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert!(grants.is_empty(), "{grants:?}");
    let (accounts,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM information_schema.role_table_grants \
         WHERE grantee = 'testkit_runtime' AND table_schema = 'auth' AND table_name = 'accounts'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(accounts, 3);
}
