//! Changing the e-mail address through the real router: it needs a fresh second factor, the
//! old address is told, the change is applied only when the link sent to the new address is
//! confirmed from the session that asked — once, before it expires — and every other session
//! ends then. Each attack checks that nothing changed, next to its positive control.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use axum::http::{StatusCode, header};
use common::{Browser, as_admin_in, audited, start};
use sqlx::PgPool;

async fn address_of(admin: &PgPool, user: uuid::Uuid) -> String {
    let (email,): (String,) =
        sqlx::query_as("SELECT email FROM workspace.members WHERE user_id = $1")
            .bind(user)
            .fetch_one(admin)
            .await
            .unwrap();
    email
}

fn mail_to(app: &reference_app::App, to: &str, subject: &str) -> usize {
    app.outbox_messages()
        .iter()
        .filter(|(t, s)| t == to && s == subject)
        .count()
}

/// The settings page's form, as the browser sends it to magic-auth's route.
fn email_form(email: &str) -> Vec<(&str, &str)> {
    vec![
        ("email", email),
        ("next", "/settings?done=email-sent"),
        ("back", "/settings"),
    ]
}

/// The confirmation page's form, as the browser sends it.
fn confirm_form(token: &str) -> Vec<(&str, &str)> {
    vec![
        ("token", token),
        ("next", "/settings?done=email"),
        ("back", "/settings"),
    ]
}

/// The path of the newest e-mail change confirmation link.
fn confirmation_path(app: &reference_app::App) -> String {
    let link = app
        .outbox_links()
        .into_iter()
        .rev()
        .find(|l| l.contains("/settings/email/confirm"))
        .unwrap();
    link.trim_start_matches(app.config.base_url.as_str())
        .to_owned()
}

#[tokio::test]
async fn the_address_changes_only_on_confirmation_from_the_asking_session() {
    let app = start().await;
    let admin = app.database().unwrap().pool(testkit::Role::Admin, 2).await;
    let (bob_id,): (uuid::Uuid,) =
        sqlx::query_as("SELECT user_id FROM workspace.members WHERE email = 'bob@acme.test'")
            .fetch_one(&admin)
            .await
            .unwrap();
    let mut bob = Browser::new(&app);
    bob.sign_in("acme", "bob@acme.test").await;
    let mut other = Browser::signed_in(&app, "acme", "bob@acme.test").await;

    // Attack: a second factor 11 minutes old asks for a change. Refused; nothing sent.
    let mut stale = Browser::signed_in(&app, "acme", "bob@acme.test").await;
    stale.stale_second_factor("acme", "bob@acme.test").await;
    let refused = stale
        .post("/api/auth/email", &email_form("bob.new@acme.test"))
        .await;
    assert_eq!(refused.status, StatusCode::SEE_OTHER, "{}", refused.body);
    assert_eq!(refused.location(), "/settings?error=step_up_required");
    let page = stale.get(refused.location()).await;
    assert!(
        page.body.contains("within the last 10 minutes"),
        "{}",
        page.body
    );
    assert!(
        app.outbox_messages()
            .iter()
            .all(|(to, _)| to != "bob.new@acme.test")
    );

    // Positive: bob's fresh session asks. The old address is told; nothing changes yet.
    let asked = bob
        .post("/api/auth/email", &email_form("bob.new@acme.test"))
        .await;
    assert_eq!(asked.status, StatusCode::SEE_OTHER, "{}", asked.body);
    assert_eq!(asked.location(), "/settings?done=email-sent");
    assert_eq!(
        mail_to(
            &app,
            "bob@acme.test",
            "A change of your e-mail address was requested"
        ),
        1
    );
    assert_eq!(
        mail_to(&app, "bob.new@acme.test", "Confirm your new e-mail address"),
        1
    );
    assert_eq!(address_of(&admin, bob_id).await, "bob@acme.test");
    let path = confirmation_path(&app);
    let token = path.split("token=").nth(1).unwrap().to_owned();

    // The link opened without a session, or by another session of the account: refused.
    let mut stranger = Browser::new(&app);
    assert_eq!(stranger.get(&path).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        stranger
            .post("/api/auth/email/confirm", &[("token", &token)])
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    let landing = other.get(&path).await;
    assert_eq!(landing.status, StatusCode::OK);
    let refused = other
        .post("/api/auth/email/confirm", &confirm_form(&token))
        .await;
    assert_eq!(
        refused.location(),
        "/settings?error=link_invalid",
        "{}",
        refused.body
    );
    assert!(
        other
            .get(refused.location())
            .await
            .body
            .contains("does not work")
    );
    assert_eq!(address_of(&admin, bob_id).await, "bob@acme.test");
    assert_eq!(other.get("/notes").await.status, StatusCode::OK);

    // The asking session confirms: the page only shows a button, its POST applies the change.
    let landing = bob.get(&path).await;
    assert_eq!(landing.status, StatusCode::OK);
    assert_eq!(landing.headers[header::REFERRER_POLICY], "no-referrer");
    assert_eq!(
        address_of(&admin, bob_id).await,
        "bob@acme.test",
        "a GET changed it"
    );
    let done = bob
        .post("/api/auth/email/confirm", &confirm_form(&token))
        .await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
    assert_eq!(done.location(), "/settings?done=email");
    assert_eq!(address_of(&admin, bob_id).await, "bob.new@acme.test");
    for browser in [&mut other, &mut stale] {
        assert_eq!(browser.get("/notes").await.status, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(bob.get("/notes").await.status, StatusCode::OK);
    assert_eq!(
        mail_to(&app, "bob@acme.test", "Your e-mail address was changed"),
        1
    );

    // Replayed: refused.
    let replay = bob
        .post("/api/auth/email/confirm", &confirm_form(&token))
        .await;
    assert_eq!(replay.location(), "/settings?error=link_invalid");

    // Expired: a second change whose link is past its time is refused.
    let asked = bob
        .post("/api/auth/email", &email_form("bob.third@acme.test"))
        .await;
    assert_eq!(asked.status, StatusCode::SEE_OTHER, "{}", asked.body);
    let expired = confirmation_path(&app);
    let n = as_admin_in(
        &admin,
        "acme",
        "UPDATE auth.email_changes SET expires_at = now() - interval '1 second' \
         WHERE new_email = $1",
        "bob.third@acme.test",
    )
    .await;
    assert_eq!(n, 1);
    let token = expired.split("token=").nth(1).unwrap().to_owned();
    let refused = bob
        .post("/api/auth/email/confirm", &confirm_form(&token))
        .await;
    assert_eq!(refused.location(), "/settings?error=link_invalid");
    assert_eq!(address_of(&admin, bob_id).await, "bob.new@acme.test");

    // Sign-in links now go to the new address only.
    let links = app.outbox_links().len();
    let mut fresh = Browser::new(&app);
    fresh.ask_link("acme", "bob@acme.test").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        app.outbox_links().len(),
        links,
        "the old address got a link"
    );
    let signed_in = fresh.open_link("acme", "bob.new@acme.test").await;
    assert_eq!(signed_in.status, StatusCode::SEE_OTHER);
    assert_eq!(signed_in.location(), "/auth/totp");

    audited(
        &admin,
        &[
            "authn.email_change_requested",
            "authn.email_changed",
            "session.revoked_all",
        ],
    )
    .await;
}
