//! Authenticator enrolment: the code page's `GET` changes nothing (a link scanner, a reload or a
//! prefetch writes no seed), starting is a same-origin `POST`, and re-opening the page — or
//! posting the start again — shows the pending enrolment rather than replacing it, so the code
//! from the key scanned first confirms it. Positive control: the key shown is live (its code
//! signs in), and the start without the same-origin check would have been a write.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use axum::http::StatusCode;
use common::{Browser, start};
use sqlx::PgPool;

/// bob's authenticator row: (sealed seed, confirmed).
async fn factor_row(admin: &PgPool) -> Option<(Vec<u8>, bool)> {
    sqlx::query_as(
        "SELECT t.seed, t.confirmed_at IS NOT NULL FROM auth.totp t JOIN workspace.members m \
         ON m.tenant_id = t.tenant_id AND m.user_id = t.user_id WHERE m.email = 'bob@acme.test'",
    )
    .fetch_optional(admin)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_get_changes_nothing_and_a_pending_enrolment_is_kept() {
    let app = start().await;
    let admin = app.database().unwrap().pool(testkit::Role::Admin, 2).await;
    let mut bob = Browser::new(&app);
    let confirmed = bob.open_link("acme", "bob@acme.test").await;
    assert_eq!(confirmed.status, StatusCode::SEE_OTHER);
    assert_eq!(factor_row(&admin).await, None, "no authenticator yet");

    // GETs — the page, reloaded, with any query — write nothing and show no key.
    for path in [
        "/auth/totp",
        "/auth/totp",
        "/auth/totp?next=%2Fnotes",
        "/auth/totp?enrol=1",
    ] {
        let page = bob.get(path).await;
        assert_eq!(page.status, StatusCode::OK);
        assert!(page.body.contains("action=\"/api/auth/totp/enrol\""));
        assert!(!page.body.contains("Key:") && !page.body.contains("<svg"));
    }
    assert_eq!(factor_row(&admin).await, None, "a GET wrote a seed");
    // The start route answers no GET.
    assert_eq!(
        bob.get("/api/auth/totp/enrol").await.status,
        StatusCode::METHOD_NOT_ALLOWED
    );
    assert_eq!(factor_row(&admin).await, None);

    // The start from another site is refused and writes nothing.
    {
        use axum::body::Body;
        use axum::http::{Request, header};
        use tower::ServiceExt;
        let jar: Vec<String> = bob
            .cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let request = Request::post("/api/auth/totp/enrol")
            .header(header::ORIGIN, "https://evil.example")
            .header("sec-fetch-site", "cross-site")
            .header(header::COOKIE, jar.join("; "))
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from("next=%2Fnotes"))
            .unwrap();
        let response = app.router.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
    }
    assert_eq!(factor_row(&admin).await, None, "a cross-site start wrote");

    // The start: a POST, then the page shows the enrolment.
    // What the page's button sends: back to the page, which then shows the enrolment.
    let enrol_form = [
        ("next", "/auth/totp?next=%2Fnotes"),
        ("back", "/auth/totp?next=%2Fnotes"),
    ];
    let started = bob.post("/api/auth/totp/enrol", &enrol_form).await;
    assert_eq!(started.status, StatusCode::SEE_OTHER);
    assert_eq!(started.location(), "/auth/totp?next=%2Fnotes");
    let (sealed, confirmed) = factor_row(&admin).await.expect("a pending enrolment");
    assert!(!confirmed);
    let first = bob.get(started.location()).await;
    assert!(first.body.contains("<svg"), "the QR code is shown");
    let key = common::shown_key(&first.body);

    // Re-opening the page, and posting the start again (a double click, a second tab), keep it.
    let again = bob.get("/auth/totp").await;
    assert_eq!(
        common::shown_key(&again.body),
        key,
        "the same key is shown again"
    );
    let restarted = bob.post("/api/auth/totp/enrol", &enrol_form).await;
    assert_eq!(restarted.status, StatusCode::SEE_OTHER);
    assert_eq!(common::shown_key(&bob.get("/auth/totp").await.body), key);
    assert_eq!(
        factor_row(&admin).await,
        Some((sealed, false)),
        "the pending seed was not replaced"
    );

    // Positive control: the key first shown is live — its code confirms the enrolment.
    let seed = common::shown_seed(&first.body);
    let done = bob
        .send_code("/auth/totp", &common::code(&seed, 0), "/notes")
        .await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
    assert_eq!(done.location(), "/notes");
    assert_eq!(bob.get("/notes").await.status, StatusCode::OK);
    assert!(factor_row(&admin).await.unwrap().1, "confirmed");

    // Once active, the start changes nothing.
    let mut one_factor = Browser::with_session(&app, "acme", "bob@acme.test", false).await;
    let before = factor_row(&admin).await;
    let page = one_factor.get("/auth/totp").await;
    assert!(page.body.contains("Enter your code") && !page.body.contains("Key:"));
    let start = one_factor.post("/api/auth/totp/enrol", &enrol_form).await;
    assert_eq!(start.status, StatusCode::SEE_OTHER);
    assert_eq!(
        start.location(),
        "/auth/totp?next=%2Fnotes&error=already_enrolled"
    );
    assert_eq!(factor_row(&admin).await, before);
}
