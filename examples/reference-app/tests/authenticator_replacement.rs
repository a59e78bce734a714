//! Replacing the authenticator through the real router: the page (`/settings/authenticator`)
//! posts to magic-auth's routes (`/api/auth/totp/replace` and `../confirm`) as a browser does.
//! It needs a fresh second factor or a recovery code, only the session that started it completes it, and
//! completing it destroys the old seed, ends every other session and sends a notice. Each attack
//! checks that nothing changed, next to its positive control.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use axum::http::StatusCode;
use common::{Browser, audited, code, notices, start};
use sqlx::PgPool;

/// bob's pending replacement: whether a seed is stored.
async fn replacement_pending(admin: &PgPool) -> bool {
    let (pending,): (bool,) = sqlx::query_as(
        "SELECT t.replacement_seed IS NOT NULL FROM auth.totp t JOIN workspace.members m \
         ON m.tenant_id = t.tenant_id AND m.user_id = t.user_id WHERE m.email = 'bob@acme.test'",
    )
    .fetch_one(admin)
    .await
    .unwrap();
    pending
}

/// A code that `seed` does not show now (nor one step either side).
fn wrong(seed: &[u8]) -> String {
    let valid = [code(seed, -1), code(seed, 0), code(seed, 1)];
    (0u32..)
        .map(|n| format!("{:06}", (n * 7919 + 13) % 1_000_000))
        .find(|c| !valid.contains(c))
        .unwrap()
}

const PAGE: &str = "/settings/authenticator";

/// The page's start form, as the browser sends it (with `fields` added).
async fn start_form(browser: &mut Browser<'_>, fields: &[(&str, &str)]) -> common::Page {
    let mut form = vec![("next", PAGE), ("back", PAGE)];
    form.extend_from_slice(fields);
    browser.post("/api/auth/totp/replace", &form).await
}

/// The page's confirm form, as the browser sends it.
async fn confirm_form(browser: &mut Browser<'_>, code: &str) -> common::Page {
    browser
        .post(
            "/api/auth/totp/replace/confirm",
            &[
                ("code", code),
                ("next", "/settings?done=authenticator"),
                ("back", PAGE),
            ],
        )
        .await
}

#[tokio::test]
async fn replacing_the_authenticator_needs_a_fresh_factor_ends_other_sessions_and_sends_a_notice() {
    let app = start().await;
    let admin = app.database().unwrap().pool(testkit::Role::Admin, 2).await;
    let mut bob = Browser::new(&app);
    let old_seed = bob.sign_in("acme", "bob@acme.test").await;
    let mut other = Browser::signed_in(&app, "acme", "bob@acme.test").await;

    // Attacks: a session whose second factor is 11 minutes old, a session with the link only,
    // a wrong recovery code. None starts a replacement.
    let mut stale = Browser::signed_in(&app, "acme", "bob@acme.test").await;
    stale.stale_second_factor("acme", "bob@acme.test").await;
    let refused = start_form(&mut stale, &[]).await;
    assert_eq!(refused.status, StatusCode::SEE_OTHER, "{}", refused.body);
    assert_eq!(
        refused.location(),
        "/settings/authenticator?error=step_up_required"
    );
    let page = stale.get(refused.location()).await;
    assert!(page.body.contains("within the last 10"), "{}", page.body);
    // A script's request (no `back`): the JSON refusal.
    let refused = stale.post("/api/auth/totp/replace", &[]).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.body);
    assert!(
        refused.body.contains("step_up_required"),
        "{}",
        refused.body
    );
    let mut link_only = Browser::with_session(&app, "acme", "bob@acme.test", false).await;
    for form in [vec![], vec![("recovery_code", "aaaa-bbbb-cccc-dddd")]] {
        let refused = link_only.post("/api/auth/totp/replace", &form).await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.body);
        let refused = start_form(&mut link_only, &form).await;
        assert_eq!(
            refused.location(),
            "/settings/authenticator?error=step_up_required"
        );
    }
    assert!(
        !replacement_pending(&admin).await,
        "a refused start stored a seed"
    );
    assert_eq!(
        notices(&app, "bob@acme.test", "Your authenticator was replaced"),
        0
    );

    // Positive control: bob's fresh session starts it, and sees the new key.
    let started = start_form(&mut bob, &[]).await;
    assert_eq!(started.status, StatusCode::SEE_OTHER, "{}", started.body);
    assert_eq!(started.location(), "/settings/authenticator");
    let page = bob.get("/settings/authenticator").await;
    assert!(page.body.contains("<svg"), "{}", page.body);
    let new_seed = common::shown_seed(&page.body);
    assert_ne!(new_seed, old_seed);

    // Another session of the account neither sees nor completes it.
    let seen = other.get("/settings/authenticator").await;
    assert!(!seen.body.contains("Key:"));
    let stolen = other
        .post(
            "/api/auth/totp/replace/confirm",
            &[("code", &code(&new_seed, 0))],
        )
        .await;
    assert_eq!(stolen.status, StatusCode::CONFLICT, "{}", stolen.body);
    assert!(stolen.body.contains("not_enrolled"), "{}", stolen.body);
    let stolen = confirm_form(&mut other, &code(&new_seed, 0)).await;
    assert_eq!(
        stolen.location(),
        "/settings/authenticator?error=not_enrolled"
    );
    // A wrong code changes nothing; the page says why.
    let wrong_code = confirm_form(&mut bob, &wrong(&new_seed)).await;
    assert_eq!(wrong_code.status, StatusCode::SEE_OTHER);
    assert_eq!(
        wrong_code.location(),
        "/settings/authenticator?error=code_rejected"
    );
    let page = bob.get(wrong_code.location()).await;
    assert!(
        page.body.contains("That code is not right"),
        "{}",
        page.body
    );
    assert!(
        page.body.contains("Key:"),
        "the pending replacement is still shown"
    );
    assert_eq!(other.get("/notes").await.status, StatusCode::OK);
    assert!(replacement_pending(&admin).await);

    // The new authenticator's code completes it: a new session for bob, the others ended.
    let before = bob.cookies.get("__Host-session").cloned();
    let done = confirm_form(&mut bob, &code(&new_seed, 0)).await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
    assert_eq!(done.location(), "/settings?done=authenticator");
    assert_ne!(bob.cookies.get("__Host-session").cloned(), before);
    let settings = bob.get(done.location()).await;
    assert_eq!(settings.status, StatusCode::OK);
    assert!(settings.body.contains("was replaced"));
    assert!(!replacement_pending(&admin).await);
    for browser in [&mut other, &mut stale, &mut link_only] {
        assert_eq!(browser.get("/notes").await.status, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(bob.get("/notes").await.status, StatusCode::OK);

    // Old codes stop working; the new authenticator's next code passes a step-up.
    let old = bob
        .send_code("/auth/step-up", &code(&old_seed, 1), "/notes")
        .await;
    assert_eq!(
        old.location(),
        "/auth/step-up?next=%2Fnotes&error=code_rejected"
    );
    let new = bob
        .send_code("/auth/step-up", &code(&new_seed, 1), "/notes")
        .await;
    assert_eq!(new.location(), "/notes");

    assert_eq!(
        notices(&app, "bob@acme.test", "Your authenticator was replaced"),
        1
    );
    audited(
        &admin,
        &[
            "authn.mfa_replacement_started",
            "authn.mfa_replaced",
            "session.revoked_all",
        ],
    )
    .await;
}
