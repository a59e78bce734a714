//! Disabling one's own account through the real router: the settings page's form posts to
//! magic-auth's `POST /api/auth/account/disable`. It needs a fresh second factor and a typed
//! confirmation, and ends every session and pending link, stops
//! new links and sends a notice. Each attack checks that nothing changed, next to its positive
//! control.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use axum::http::StatusCode;
use common::{Browser, audited, notices, start};

const DISABLE: &str = "/api/auth/account/disable";

/// The settings page's form, as the browser sends it, with `typed` in the confirmation field.
fn form(typed: &str) -> Vec<(&str, &str)> {
    vec![
        ("confirm", typed),
        ("next", "/?done=disabled"),
        ("back", "/settings"),
    ]
}

#[tokio::test]
async fn disabling_the_account_needs_a_fresh_factor_and_ends_every_session_and_link() {
    let app = start().await;
    let admin = app.database().unwrap().pool(testkit::Role::Admin, 2).await;
    let mut bob = Browser::signed_in(&app, "acme", "bob@acme.test").await;
    let mut other = Browser::signed_in(&app, "acme", "bob@acme.test").await;
    let mut alice = Browser::signed_in(&app, "acme", "alice@acme.test").await;
    // A pending sign-in link of bob's, in a third browser.
    let mut linked = Browser::new(&app);
    let before = app.outbox_links().len();
    let asked = linked.ask_link("acme", "bob@acme.test").await;
    assert_eq!(asked.location(), "/?sent=1");
    let mut link = None;
    for _ in 0..200 {
        if app.outbox_links().len() > before {
            link = app.outbox_links().last().cloned();
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let token = link.unwrap().split("token=").nth(1).unwrap().to_owned();

    // Attacks: a second factor 11 minutes old; no typed confirmation (a forged or stray form).
    let mut stale = Browser::signed_in(&app, "acme", "bob@acme.test").await;
    stale.stale_second_factor("acme", "bob@acme.test").await;
    let refused = stale.post(DISABLE, &form("disable")).await;
    assert_eq!(refused.location(), "/settings?error=step_up_required");
    for typed in ["", "yes", "Disable my account"] {
        let refused = bob.post(DISABLE, &form(typed)).await;
        assert_eq!(refused.location(), "/settings?error=confirmation_required");
    }
    let page = bob.get("/settings?error=confirmation_required").await;
    assert!(page.body.contains("Type the word disable"), "{}", page.body);
    // A script's request without the word: the JSON refusal.
    let refused = bob.post(DISABLE, &[]).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{}", refused.body);
    assert!(
        refused.body.contains("confirmation_required"),
        "{}",
        refused.body
    );
    assert_eq!(other.get("/notes").await.status, StatusCode::OK);
    assert_eq!(
        notices(&app, "bob@acme.test", "Your account was disabled"),
        0
    );

    // Positive: disabled, signed out everywhere, the pending link dead, no new link sent.
    let done = bob.post(DISABLE, &form("disable")).await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
    assert_eq!(done.location(), "/?done=disabled");
    assert!(
        bob.get(done.location())
            .await
            .body
            .contains("Your account is disabled")
    );
    assert!(!bob.cookies.contains_key("__Host-session"));
    for browser in [&mut other, &mut stale] {
        assert_eq!(browser.get("/notes").await.status, StatusCode::UNAUTHORIZED);
    }
    let confirmed = linked.confirm_link(&token).await;
    assert_eq!(confirmed.location(), "/?error=link_invalid");
    assert!(!linked.cookies.contains_key("__Host-session"));
    let (disabled,): (bool,) =
        sqlx::query_as("SELECT disabled FROM workspace.members WHERE email = 'bob@acme.test'")
            .fetch_one(&admin)
            .await
            .unwrap();
    assert!(disabled);
    let links = app.outbox_links().len();
    linked.ask_link("acme", "bob@acme.test").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        app.outbox_links().len(),
        links,
        "a disabled account got a link"
    );
    assert_eq!(
        notices(&app, "bob@acme.test", "Your account was disabled"),
        1
    );
    audited(
        &admin,
        &[
            "authn.account_disabled",
            "session.revoked_all",
            "authn.links_invalidated",
        ],
    )
    .await;

    // Control: another member of the workspace is untouched.
    assert_eq!(alice.get("/notes").await.status, StatusCode::OK);
}
