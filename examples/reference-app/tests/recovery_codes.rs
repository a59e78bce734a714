//! New recovery codes through the real router (`POST /settings/recovery-codes`): only a session
//! whose second factor is fresh makes them (magic-auth checks it again), a revoked session makes
//! none, the page shows them once and is never cached, the old codes stop working, and a notice
//! and an audit record follow. Each attack checks that nothing changed, next to its positive
//! control.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use axum::http::{StatusCode, header};
use common::{Browser, audited, notices, start};
use sqlx::PgPool;

const NOTICE: &str = "New recovery codes were made for your account";

/// bob's usable recovery codes.
async fn unused_codes(admin: &PgPool) -> i64 {
    let (n,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM auth.recovery_codes r JOIN workspace.members m \
         ON m.tenant_id = r.tenant_id AND m.user_id = r.user_id \
         WHERE m.email = 'bob@acme.test' AND r.used_at IS NULL",
    )
    .fetch_one(admin)
    .await
    .unwrap();
    n
}

fn codes_in(body: &str) -> Vec<String> {
    body.split("<li><code>")
        .skip(1)
        .filter_map(|c| c.split('<').next())
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn new_recovery_codes_need_a_fresh_factor_are_shown_once_and_end_the_old_ones() {
    let app = start().await;
    let admin = app.database().unwrap().pool(testkit::Role::Admin, 2).await;
    let mut bob = Browser::new(&app);
    bob.sign_in("acme", "bob@acme.test").await;

    // Attacks: a session whose second factor is 11 minutes old; a session with the link only;
    // a GET (which must change nothing). None makes codes.
    let mut stale = Browser::signed_in(&app, "acme", "bob@acme.test").await;
    stale.stale_second_factor("acme", "bob@acme.test").await;
    let refused = stale.post("/settings/recovery-codes", &[]).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.body);
    let mut link_only = Browser::with_session(&app, "acme", "bob@acme.test", false).await;
    let refused = link_only.post("/settings/recovery-codes", &[]).await;
    assert_ne!(refused.status, StatusCode::OK, "{}", refused.body);
    assert!(codes_in(&refused.body).is_empty());
    let get = bob.get("/settings/recovery-codes").await;
    assert_eq!(get.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(unused_codes(&admin).await, 0);
    assert_eq!(notices(&app, "bob@acme.test", NOTICE), 0);

    // Positive control: bob's fresh session makes ten, shown once, never cached.
    let made = bob.post("/settings/recovery-codes", &[]).await;
    assert_eq!(made.status, StatusCode::OK, "{}", made.body);
    assert_eq!(made.headers.get(header::CACHE_CONTROL).unwrap(), "no-store");
    let first = codes_in(&made.body);
    assert_eq!(first.len(), 10, "{}", made.body);
    assert_eq!(unused_codes(&admin).await, 10);
    assert_eq!(notices(&app, "bob@acme.test", NOTICE), 1);
    let settings = bob.get("/settings").await;
    assert!(
        codes_in(&settings.body).is_empty() && !settings.body.contains(&first[0]),
        "the settings page never shows codes again"
    );

    // A second set: the first set stops working, the second signs in.
    let second = codes_in(&bob.post("/settings/recovery-codes", &[]).await.body);
    assert_eq!(second.len(), 10);
    assert!(first.iter().all(|c| !second.contains(c)));
    let mut phone_lost = Browser::with_session(&app, "acme", "bob@acme.test", false).await;
    let old = phone_lost
        .send_code("/auth/totp", &first[0], "/notes")
        .await;
    assert_eq!(
        old.location(),
        "/auth/totp?next=%2Fnotes&error=code_rejected"
    );
    let new = phone_lost
        .send_code("/auth/totp", &second[0], "/notes")
        .await;
    assert_eq!(new.location(), "/notes");
    assert_eq!(phone_lost.get("/notes").await.status, StatusCode::OK);

    // A session signed out from elsewhere, though its step-up is fresh, makes none.
    let mut revoked = Browser::signed_in(&app, "acme", "bob@acme.test").await;
    let mut keeper = Browser::signed_in(&app, "acme", "bob@acme.test").await;
    let ended = keeper.post("/sessions/revoke-others", &[]).await;
    assert!(ended.status.is_redirection(), "{}", ended.body);
    let after = revoked.post("/settings/recovery-codes", &[]).await;
    assert_eq!(after.status, StatusCode::UNAUTHORIZED, "{}", after.body);
    assert!(codes_in(&after.body).is_empty());
    assert_eq!(unused_codes(&admin).await, 9);

    audited(&admin, &["authn.recovery_codes_regenerated"]).await;
}
