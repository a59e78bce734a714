//! Input hygiene over HTTP: a NUL or another control character in a form field, a JSON field (at
//! any depth, or in a field's name) or the query string is `400 control_character` — a page for
//! the pages, JSON for `/api/` — and nothing is written; a body over the limit is `413
//! payload_too_large` for JSON as for forms. Positive controls: the same requests without the
//! character succeed, multi-line text keeps its line breaks, and a body just under the limit is
//! not refused for its size.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use axum::http::{StatusCode, header};
use common::{Browser, start};
use reference_app::App;
use sqlx::PgPool;

/// The app's body limit (256 KiB).
const LIMIT: usize = 256 * 1024;

async fn notes_titled(admin: &PgPool, prefix: &str) -> i64 {
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM workspace.notes WHERE title LIKE $1")
        .bind(format!("{prefix}%"))
        .fetch_one(admin)
        .await
        .unwrap();
    n
}

fn assert_json_refusal(page: &common::Page, status: StatusCode, code: &str) {
    assert_eq!(page.status, status, "{}", page.body);
    assert!(
        page.headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("application/json"),
        "{:?}",
        page.headers
    );
    let body: serde_json::Value = serde_json::from_str(&page.body).unwrap();
    assert_eq!(body["error"], code, "{}", page.body);
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
}

fn assert_page_refusal(page: &common::Page, status: StatusCode, words: &str) {
    assert_eq!(page.status, status, "{}", page.body);
    assert!(
        page.headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html"),
        "{:?}",
        page.headers
    );
    assert!(page.body.contains(words), "{}", page.body);
}

async fn control_characters_are_a_400_and_nothing_is_written(app: &App) {
    let admin = app.database().unwrap().pool(testkit::Role::Admin, 2).await;
    let mut bob = Browser::signed_in(app, "acme", "bob@acme.test").await;

    // Forms: NUL, escape, bell, DEL and a C1 control, in a single-line and a multi-line field.
    for (i, bad) in ["\u{0}", "\u{1b}[2J", "\u{7}", "\u{7f}", "\u{85}"]
        .iter()
        .enumerate()
    {
        let title = format!("hygiene-form-{i}");
        let in_title = bob
            .post(
                "/notes",
                &[("title", &format!("{title}{bad}")), ("body", "fine")],
            )
            .await;
        assert_page_refusal(&in_title, StatusCode::BAD_REQUEST, "control character");
        assert!(in_title.body.contains("title"), "the field is named");
        let in_body = bob
            .post(
                "/notes",
                &[("title", &title), ("body", &format!("x{bad}y"))],
            )
            .await;
        assert_page_refusal(&in_body, StatusCode::BAD_REQUEST, "control character");
    }
    assert_eq!(
        notes_titled(&admin, "hygiene-form-").await,
        0,
        "nothing written"
    );
    // A line break is a control character too, except in multi-line text.
    let newline_title = bob
        .post("/notes", &[("title", "hygiene-form-a\nb"), ("body", "x")])
        .await;
    assert_page_refusal(&newline_title, StatusCode::BAD_REQUEST, "control character");
    // Positive control: the same form without the character, and a multi-line body.
    let clean = bob
        .post(
            "/notes",
            &[
                ("title", "hygiene-form-ok"),
                ("body", "line one\r\nline two\ttabbed"),
            ],
        )
        .await;
    assert_eq!(clean.status, StatusCode::SEE_OTHER, "{}", clean.body);
    assert_eq!(notes_titled(&admin, "hygiene-form-").await, 1);

    // The sign-in form, anonymous: refused before any account is looked up (the form posts to
    // magic-auth's routes under `/api/`, which answer in JSON).
    let mut anonymous = Browser::new(app);
    let before = app.outbox_links().len();
    let sign_in = anonymous.ask_link("acme", "bob@acme.test\u{0}").await;
    assert_json_refusal(&sign_in, StatusCode::BAD_REQUEST, "control_character");
    assert!(!anonymous.cookies.contains_key("__Host-magic-auth-verifier"));
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(app.outbox_links().len(), before, "no link was sent");

    // The query string.
    let query = bob.get("/notes?q=%00").await;
    assert_page_refusal(&query, StatusCode::BAD_REQUEST, "control character");
    assert_eq!(bob.get("/notes?q=budget").await.status, StatusCode::OK);

    // JSON: in a value, in a field's name, escaped or raw; never a 500.
    for (i, body) in [
        r#"{"title": "hygiene-json-0\u0000", "body": "x"}"#.to_owned(),
        r#"{"title": "hygiene-json-1", "body": "x\u0000y"}"#.to_owned(),
        r#"{"title": "hygiene-json-2", "body": "x", "phone": "+1 555\u001b0100"}"#.to_owned(),
        r#"{"title": "hygiene-json-3", "bo\u0000dy": "x"}"#.to_owned(),
        r#"{"title": "hygiene-json-4\u0085", "body": "x"}"#.to_owned(),
    ]
    .iter()
    .enumerate()
    {
        let page = bob.json("POST", "/api/notes", Some(body)).await;
        assert_json_refusal(&page, StatusCode::BAD_REQUEST, "control_character");
        assert!(page.status.as_u16() < 500, "case {i}");
    }
    // A raw control character inside a string is not JSON at all: the handler's 400.
    let raw = bob
        .json(
            "POST",
            "/api/notes",
            Some("{\"title\": \"hygiene-json-5\u{1}\", \"body\": \"x\"}"),
        )
        .await;
    assert_json_refusal(&raw, StatusCode::BAD_REQUEST, "invalid_input");
    // Nested, on another route: the assistant's prompt is multi-line, but NUL is not a line.
    let nested = bob
        .json("POST", "/api/assistant", Some(r#"{"prompt": "hi\u0000"}"#))
        .await;
    assert_json_refusal(&nested, StatusCode::BAD_REQUEST, "control_character");
    assert_eq!(
        notes_titled(&admin, "hygiene-json-").await,
        0,
        "nothing written"
    );
    // Positive control: the same JSON without the character, with a multi-line body.
    let clean = bob
        .json(
            "POST",
            "/api/notes",
            Some(r#"{"title": "hygiene-json-ok", "body": "one\ntwo"}"#),
        )
        .await;
    assert_eq!(clean.status, StatusCode::CREATED, "{}", clean.body);
    assert_eq!(notes_titled(&admin, "hygiene-json-").await, 1);
    let (body,): (Vec<u8>,) = sqlx::query_as("SELECT body FROM workspace.notes WHERE title = $1")
        .bind("hygiene-json-ok")
        .fetch_one(&admin)
        .await
        .unwrap();
    assert!(!body.is_empty(), "sealed body stored");
}

async fn an_oversized_body_is_a_413_for_json_as_for_forms(app: &App) {
    let admin = app.database().unwrap().pool(testkit::Role::Admin, 2).await;
    let mut bob = Browser::signed_in(app, "acme", "bob@acme.test").await;

    let big = "a".repeat(LIMIT + 1);
    let json = format!(r#"{{"title": "hygiene-big-json", "body": "{big}"}}"#);
    let page = bob.json("POST", "/api/notes", Some(&json)).await;
    assert_json_refusal(&page, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    // Far over the limit too (past axum's own 2 MiB).
    let huge = format!(r#"{{"prompt": "{}"}}"#, "a".repeat(3 * 1024 * 1024));
    let page = bob.json("POST", "/api/assistant", Some(&huge)).await;
    assert_json_refusal(&page, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");

    let page = bob
        .post("/notes", &[("title", "hygiene-big-form"), ("body", &big)])
        .await;
    assert_page_refusal(&page, StatusCode::PAYLOAD_TOO_LARGE, "Too much text");
    assert_eq!(
        notes_titled(&admin, "hygiene-big-").await,
        0,
        "nothing written"
    );

    // Positive control: just under the limit, the size is not the refusal (the note's own
    // 20,000-byte limit answers instead, as a 400 with its own code).
    let under = "a".repeat(LIMIT - 100);
    let json = format!(r#"{{"title": "hygiene-big-json", "body": "{under}"}}"#);
    assert!(json.len() < LIMIT);
    let page = bob.json("POST", "/api/notes", Some(&json)).await;
    assert_json_refusal(&page, StatusCode::BAD_REQUEST, "invalid_input");
    // And a body of ordinary size is saved.
    let page = bob
        .json(
            "POST",
            "/api/notes",
            Some(r#"{"title": "hygiene-big-ok", "body": "small"}"#),
        )
        .await;
    assert_eq!(page.status, StatusCode::CREATED, "{}", page.body);
}

#[tokio::test]
async fn input_is_checked_before_any_handler() {
    // One app per test process (the cross-tenant authority is installed once).
    let app = start().await;
    control_characters_are_a_400_and_nothing_is_written(&app).await;
    an_oversized_body_is_a_413_for_json_as_for_forms(&app).await;
}
