//! Sign-out on one instance, reads on another: the second instance's session layer may answer a
//! `GET` from its cache for the moment the notice takes to arrive, but no request made with the
//! revoked session ever gets data: the database refuses every statement made for it from the
//! moment the sign-out commits, and the app answers 401. Repeated, so the window is hit.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)]

mod common;

use axum::http::StatusCode;
use common::{Browser, start};

#[tokio::test]
async fn a_session_signed_out_on_one_instance_gets_no_data_from_another() {
    let app = start().await;
    let other = app.second_instance().await.unwrap();
    let mut served_from_cache = 0;
    for _ in 0..25 {
        let mut here = Browser::signed_in(&app, "acme", "alice@acme.test").await;
        let mut there = Browser::new(&other);
        there.cookies = here.cookies.clone();
        // Live control: both instances serve the notes (the second now holds it in its cache).
        for browser in [&mut here, &mut there] {
            let page = browser.json("GET", "/api/notes", None).await;
            assert_eq!(page.status, StatusCode::OK, "{}", page.body);
            assert!(page.body.contains("Marketing"), "{}", page.body);
        }
        let out = here.post("/api/auth/sign-out", &[("next", "/")]).await;
        assert!(
            out.status.is_redirection() || out.status.is_success(),
            "{}",
            out.status
        );
        // At once, on the other instance: never data.
        let page = there.json("GET", "/api/notes", None).await;
        assert_eq!(page.status, StatusCode::UNAUTHORIZED, "{}", page.body);
        assert!(!page.body.contains("Marketing"), "{}", page.body);
        if page.body.contains("session_ended") {
            // The layer still believed the session; the database refused the read.
            served_from_cache += 1;
        }
        let html = there.get("/notes").await;
        assert_eq!(html.status, StatusCode::UNAUTHORIZED);
        assert!(!html.body.contains("Marketing"));
    }
    // Not asserted (it depends on timing): how often the cache still held the session.
    eprintln!("the database refused a read the layer let through {served_from_cache} of 25 times");
}
