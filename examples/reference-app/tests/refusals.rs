//! Refusals in the browser are pages, not JSON: a one-factor session following a link lands on
//! the code page with `next`; a submitted form with a stale factor gets the step-up form (and
//! nothing is done); a customer's member is never told about staff; an anonymous visitor and a
//! cross-site form get pages. The JSON routes keep their JSON shape and codes. Positive
//! controls: the same requests with two (fresh) factors succeed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use common::{Browser, Page, start};
use http_body_util::BodyExt;
use reference_app::App;
use tower::ServiceExt;

fn is_html(page: &Page) -> bool {
    page.headers[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/html")
}

fn json_code(page: &Page) -> String {
    assert!(
        page.headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("application/json"),
        "{:?}",
        page.headers
    );
    let body: serde_json::Value = serde_json::from_str(&page.body).unwrap();
    body["error"].as_str().unwrap().to_owned()
}

/// A form post from `cookies` with chosen `Origin` and `Referer` headers.
async fn post_with(
    app: &App,
    browser: &Browser<'_>,
    path: &str,
    form: &str,
    origin: &str,
    referer: Option<&str>,
) -> Page {
    let jar: Vec<String> = browser
        .cookies
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let mut request = Request::post(path)
        .header(header::ORIGIN, origin)
        .header(header::COOKIE, jar.join("; "))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    if let Some(r) = referer {
        request = request.header(header::REFERER, r);
    }
    let response = app
        .router
        .clone()
        .oneshot(request.body(Body::from(form.to_owned())).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Page {
        status,
        headers,
        body: String::from_utf8(body.to_vec()).unwrap(),
    }
}

async fn a_one_factor_session_following_a_link_lands_on_the_code_page(app: &App) {
    let admin = app.database().unwrap().pool(testkit::Role::Admin, 2).await;
    let base = app.config.base_url.clone();
    let mut bob = Browser::with_session(app, "acme", "bob@acme.test", false).await;

    let link = bob.get("/notes?q=budget").await;
    assert_eq!(link.status, StatusCode::SEE_OTHER, "{}", link.body);
    assert_eq!(link.location(), "/auth/totp?next=%2Fnotes%3Fq%3Dbudget");
    let code_page = bob.get(link.location()).await;
    assert_eq!(code_page.status, StatusCode::OK);
    // Its button starts the enrolment and comes back here, still carrying `next`.
    assert_eq!(
        form_next(&code_page.body, "/api/auth/totp/enrol"),
        "/auth/totp?next=%2Fnotes%3Fq%3Dbudget",
        "{}",
        code_page.body
    );
    assert!(!code_page.body.contains("Budget"), "no note content");

    // A form sent with one factor: a page that links to the code page, nothing written.
    let form = post_with(
        app,
        &bob,
        "/notes",
        "title=refusal-one-factor&body=x",
        &base,
        Some(&format!("{base}/notes")),
    )
    .await;
    assert_eq!(form.status, StatusCode::FORBIDDEN);
    assert!(is_html(&form), "{:?}", form.headers);
    assert!(
        form.body.contains("/auth/totp?next=%2Fnotes") && form.body.contains("Enter your code"),
        "{}",
        form.body
    );
    let (written,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM workspace.notes WHERE title = 'refusal-one-factor'")
            .fetch_one(&admin)
            .await
            .unwrap();
    assert_eq!(written, 0);

    // The JSON route keeps the JSON shape and code, worded for anyone.
    let api = bob.json("GET", "/api/notes", None).await;
    assert_eq!(api.status, StatusCode::FORBIDDEN);
    assert_eq!(json_code(&api), "mfa_required");
    assert!(!api.body.to_lowercase().contains("staff"), "{}", api.body);

    // Staff with one factor meet the same code page.
    let mut sam = Browser::with_session(app, "ops", "sam@ops.test", false).await;
    let link = sam.get("/staff/approvals").await;
    assert_eq!(link.status, StatusCode::SEE_OTHER);
    assert_eq!(link.location(), "/auth/totp?next=%2Fstaff%2Fapprovals");

    // Positive control: with both factors, the same link opens the notes.
    let mut bob2 = Browser::signed_in(app, "acme", "bob@acme.test").await;
    let notes = bob2.get("/notes?q=budget").await;
    assert_eq!(notes.status, StatusCode::OK);
}

async fn a_stale_factor_gets_the_step_up_form_and_nothing_is_done(app: &App) {
    let base = app.config.base_url.clone();

    // An admin's export with a second factor 11 minutes old.
    let mut alice = Browser::signed_in(app, "acme", "alice@acme.test").await;
    alice.stale_second_factor("acme", "alice@acme.test").await;
    let export = post_with(
        app,
        &alice,
        "/admin/export",
        "",
        &base,
        Some(&format!("{base}/admin/members")),
    )
    .await;
    assert_eq!(export.status, StatusCode::FORBIDDEN);
    assert!(is_html(&export));
    assert_eq!(
        form_next(&export.body, "/api/auth/step-up"),
        "/admin/members",
        "{}",
        export.body
    );
    assert!(!export.body.contains("Marketing"), "nothing exported");
    // A hostile Referer is not carried as `next`.
    let hostile = post_with(
        app,
        &alice,
        "/admin/export",
        "",
        &base,
        Some("https://evil.example/admin/members"),
    )
    .await;
    assert_eq!(hostile.status, StatusCode::FORBIDDEN);
    assert_eq!(
        form_next(&hostile.body, "/api/auth/step-up"),
        "/",
        "{}",
        hostile.body
    );

    // Staff approving with a stale factor: the step-up form, back to the queue afterwards.
    let mut sam = Browser::signed_in(app, "ops", "sam@ops.test").await;
    sam.stale_second_factor("ops", "sam@ops.test").await;
    let queue = format!("{base}/staff/audit?action=agent.tool_proposed&before=20");
    let approve = post_with(
        app,
        &sam,
        &format!("/staff/approvals/acme/{}/approve", uuid::Uuid::new_v4()),
        &format!("digest={}", "00".repeat(32)),
        &base,
        Some(&queue),
    )
    .await;
    assert_eq!(approve.status, StatusCode::FORBIDDEN);
    assert!(
        approve.body.contains("Confirm it is you"),
        "{}",
        approve.body
    );
    assert_eq!(
        form_next(&approve.body, "/api/auth/step-up"),
        "/staff/audit?action=agent.tool_proposed&#38;before=20",
        "{}",
        approve.body
    );
    // The JSON route: the JSON refusal, as before.
    let mut sam_api = Browser::new(app);
    sam_api.cookies = sam.cookies.clone();
    let api = sam_api
        .json(
            "POST",
            &format!("/api/staff/approvals/acme/{}", uuid::Uuid::new_v4()),
            Some(
                r#"{"decision": "reject", "digest": "00", "reason": "checking the stale factor"}"#,
            ),
        )
        .await;
    assert_eq!(api.status, StatusCode::FORBIDDEN);
    assert_eq!(json_code(&api), "step_up_required");

    // Positive control: a fresh factor exports.
    let fresh = Browser::signed_in(app, "acme", "alice@acme.test").await;
    let export = post_with(app, &fresh, "/admin/export", "", &base, None).await;
    assert_eq!(export.status, StatusCode::OK);
    assert!(export.body.contains("Marketing 120k"));
}

async fn a_member_is_not_told_about_staff_and_other_refusals_are_pages(app: &App) {
    let base = app.config.base_url.clone();
    let mut bob = Browser::signed_in(app, "acme", "bob@acme.test").await;
    for path in [
        "/staff/approvals",
        "/staff/audit",
        "/staff/audit?action=note.created",
    ] {
        let page = bob.get(path).await;
        assert_eq!(page.status, StatusCode::FORBIDDEN, "{path}");
        assert!(is_html(&page));
        assert!(
            !page.body.to_lowercase().contains("staff"),
            "{path}: {}",
            page.body
        );
    }
    let api = bob
        .json(
            "POST",
            &format!("/api/staff/approvals/acme/{}", uuid::Uuid::new_v4()),
            Some(r#"{"decision": "reject", "digest": "00", "reason": "a member trying this"}"#),
        )
        .await;
    assert_eq!(api.status, StatusCode::FORBIDDEN);
    assert!(
        api.body
            .contains("\"message\":\"this endpoint is not available to your account\""),
        "{}",
        api.body
    );

    // Anonymous: a page with a way to sign in; the JSON route keeps its code.
    let mut anonymous = Browser::new(app);
    let page = anonymous.get("/notes").await;
    assert_eq!(page.status, StatusCode::UNAUTHORIZED);
    assert!(is_html(&page) && page.body.contains("Sign in to continue"));
    let api = anonymous.json("GET", "/api/notes", None).await;
    assert_eq!(api.status, StatusCode::UNAUTHORIZED);
    assert_eq!(json_code(&api), "unauthenticated");

    // A form from another site: a page saying nothing was done.
    let cross = post_with(
        app,
        &bob,
        "/notes",
        "title=refusal-cross-site&body=x",
        "https://evil.example",
        None,
    )
    .await;
    assert_eq!(cross.status, StatusCode::FORBIDDEN);
    assert!(is_html(&cross) && cross.body.contains("nothing was done"));
    // Positive control: the same form from the app itself.
    let own = post_with(
        app,
        &bob,
        "/notes",
        "title=refusal-own-site&body=x",
        &base,
        None,
    )
    .await;
    assert_eq!(own.status, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn refusals_in_the_browser_are_pages() {
    // One app per test process (the cross-tenant authority is installed once).
    let app = start().await;
    a_one_factor_session_following_a_link_lands_on_the_code_page(&app).await;
    a_stale_factor_gets_the_step_up_form_and_nothing_is_done(&app).await;
    a_member_is_not_told_about_staff_and_other_refusals_are_pages(&app).await;
}

/// The hidden `next` of the page's form that posts to `action` (as written in the HTML; the
/// header's sign-out form carries a `next` of its own).
fn form_next(body: &str, action: &str) -> String {
    body.split(&format!("action=\"{action}\""))
        .nth(1)
        .and_then(|form| form.split("name=\"next\" value=\"").nth(1))
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_default()
        .to_owned()
}
