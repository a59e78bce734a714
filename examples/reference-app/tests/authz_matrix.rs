//! The authorization-matrix gate, on the `authz-matrix` harness: every row of
//! `tests/authz_matrix.csv` against the real router, each request with a freshly made session of
//! its role and fresh objects, plus a completeness check in both directions between the table and
//! the routes the app serves (recorded as the router is built, their methods probed).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::convert::Infallible;

use authz_matrix::{Cell, Matrix, Observed};
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use reference_app::App;
use sqlx::PgPool;
use tower::ServiceExt;
use uuid::Uuid;

const ROLES: [&str; 7] = [
    "anonymous",
    "agent",
    "user_a",
    "user_b",
    "admin_a",
    "staff_no_step_up",
    "staff_step_up",
];

async fn scalar_uuid(admin: &PgPool, sql: &str, bind: &str) -> Uuid {
    let (id,): (Uuid,) = sqlx::query_as(sql)
        .bind(bind)
        .fetch_one(admin)
        .await
        .unwrap();
    id
}

/// A cookie for `role`, made fresh for each request.
async fn cookie(app: &App, role: &str) -> Option<String> {
    let (workspace, email) = match role {
        "anonymous" => return None,
        // Agents never hold sessions: the best an agent can present is a forged cookie.
        "agent" => {
            return Some(format!(
                "__Host-session=v1.{}.{}",
                Uuid::new_v4().simple(),
                "ab".repeat(32)
            ));
        }
        "user_a" => ("acme", "bob@acme.test"),
        "user_b" => ("globex", "carol@globex.test"),
        "admin_a" => ("acme", "alice@acme.test"),
        "staff_no_step_up" | "staff_step_up" => ("ops", "sam@ops.test"),
        other => panic!("unknown role {other}"),
    };
    // staff_no_step_up: two factors, the second 11 minutes ago (past the step-up window).
    let age = if role == "staff_no_step_up" {
        11 * 60
    } else {
        0
    };
    let cookie = app
        .mint_aged_session(workspace, email, true, std::time::Duration::from_secs(age))
        .await
        .unwrap();
    Some(cookie)
}

async fn send(
    app: &App,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    form: &str,
) -> (StatusCode, String) {
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header(header::ORIGIN, app.config.base_url.as_str());
    if let Some(c) = cookie {
        request = request.header(header::COOKIE, c);
    }
    if path.starts_with("/api/") && method == "POST" {
        request = request.header(header::CONTENT_TYPE, "application/json");
    } else if method == "POST" {
        request = request.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    }
    let response = app
        .router
        .clone()
        .oneshot(request.body(Body::from(form.to_owned())).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// A fresh note of acme (made by alice through the app), its id.
async fn fresh_note(app: &App, admin: &PgPool) -> Uuid {
    let title = format!("matrix {}", Uuid::new_v4());
    let alice = app
        .mint_session("acme", "alice@acme.test", true)
        .await
        .unwrap();
    let form = format!("title={}&body=matrix", title.replace(' ', "+"));
    let (status, _) = send(app, "POST", "/notes", Some(&alice), &form).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    scalar_uuid(
        admin,
        "SELECT id FROM workspace.notes WHERE title = $1",
        &title,
    )
    .await
}

/// A fresh pending proposal in acme (alice's assistant asks to email the injected note out).
async fn fresh_proposal(app: &App, admin: &PgPool) -> (Uuid, String) {
    let alice = app
        .mint_session("acme", "alice@acme.test", true)
        .await
        .unwrap();
    let (status, _) = send(
        app,
        "POST",
        "/assistant",
        Some(&alice),
        "prompt=Summarise+all+my+notes",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (id, digest): (Uuid, Vec<u8>) = sqlx::query_as(
        "SELECT id, digest FROM tool_sandbox.proposals WHERE status = 'pending' ORDER BY created_at DESC LIMIT 1",
    )
    .fetch_one(admin)
    .await
    .unwrap();
    (id, hex::encode(digest))
}

/// The concrete path and body for a cell: fresh objects of acme for the path's parameters.
async fn fixture(app: &App, admin: &PgPool, bob: Uuid, cell: &Cell) -> (String, String) {
    let mut path = cell.path.clone();
    let mut form = String::new();
    let method = cell.method.as_str();
    let reason = "reason=matrix+check+of+the+console";
    match cell.path.as_str() {
        "/notes/{id}" | "/notes/{id}/delete" | "/api/notes/{id}" => {
            path = path.replace("{id}", &fresh_note(app, admin).await.to_string());
            form = "title=edited&body=edited".to_owned();
        }
        "/sessions/{id}/revoke" => {
            // One of bob's other sessions (for user_a the cell's own session was minted first).
            let _ = app
                .mint_session("acme", "bob@acme.test", true)
                .await
                .unwrap();
            let (id,): (Uuid,) = sqlx::query_as(
                "SELECT id FROM auth.sessions WHERE user_id = $1 AND revoked_at IS NULL ORDER BY created_at DESC LIMIT 1",
            )
            .bind(bob)
            .fetch_one(admin)
            .await
            .unwrap();
            path = path.replace("{id}", &id.to_string());
        }
        "/admin/members/{user}/role" => {
            path = path.replace("{user}", &bob.to_string());
            form = "role=member".to_owned();
        }
        "/api/admin/members/{user}/role" => {
            path = path.replace("{user}", &bob.to_string());
            form = r#"{"role": "member"}"#.to_owned();
        }
        "/api/staff/approvals/{tenant}/{id}" => {
            let (id, digest) = fresh_proposal(app, admin).await;
            path = path
                .replace("{tenant}", "acme")
                .replace("{id}", &id.to_string());
            form = format!(
                r#"{{"decision": "approve", "digest": "{digest}", "reason": "matrix check of the console"}}"#
            );
        }
        "/staff/approvals/{tenant}/{id}/approve" | "/staff/approvals/{tenant}/{id}/reject" => {
            let (id, digest) = fresh_proposal(app, admin).await;
            path = path
                .replace("{tenant}", "acme")
                .replace("{id}", &id.to_string());
            form = format!("digest={digest}");
        }
        "/staff/visit" => form = format!("tenant=acme&{reason}&next=audit"),
        // A fresh address each time: the per-address rate limit is tested on its own.
        "/api/auth/link" => {
            form = format!(
                r#"{{"workspace": "acme", "email": "m{}@acme.test"}}"#,
                Uuid::new_v4().simple()
            );
        }
        "/auth/link" => path = format!("{path}?token=v1.bogus"),
        "/api/auth/link/confirm" => form = r#"{"token": "v1.bogus"}"#.to_owned(),
        "/api/auth/email/confirm" => form = r#"{"token": "e1.bogus"}"#.to_owned(),
        "/api/auth/totp" | "/api/auth/step-up" | "/api/auth/totp/replace/confirm"
            if method == "POST" =>
        {
            form = r#"{"code": "000000"}"#.to_owned();
        }
        "/api/auth/email" => {
            form = format!(
                r#"{{"email": "new-{}@acme.test"}}"#,
                Uuid::new_v4().simple()
            );
        }
        // Not JSON: a valid body would disable the role's account for every later cell.
        "/api/auth/account/disable" => form = "not json".to_owned(),
        "/api/auth/sessions/{id}/revoke" => {
            let _ = app
                .mint_session("acme", "bob@acme.test", true)
                .await
                .unwrap();
            let (id,): (Uuid,) = sqlx::query_as(
                "SELECT id FROM auth.sessions WHERE user_id = $1 AND revoked_at IS NULL ORDER BY created_at DESC LIMIT 1",
            )
            .bind(bob)
            .fetch_one(admin)
            .await
            .unwrap();
            path = path.replace("{id}", &id.to_string());
            form = "{}".to_owned();
        }
        other if other.starts_with("/api/auth/") && method == "POST" => form = "{}".to_owned(),
        "/notes" if method == "POST" => form = "title=matrix+note&body=x".to_owned(),
        "/api/notes" if method == "POST" => {
            form = r#"{"title": "matrix note", "body": "x"}"#.to_owned();
        }
        "/assistant" if method == "POST" => form = "prompt=hello".to_owned(),
        "/api/assistant" => form = r#"{"prompt": "hello"}"#.to_owned(),
        _ => {}
    }
    (path, form)
}

#[tokio::test]
async fn every_route_answers_every_role_as_the_matrix_says() {
    let app = common::start().await;
    let admin = app.database().unwrap().pool(testkit::Role::Admin, 2).await;
    let matrix = Matrix::parse(include_str!("authz_matrix.csv")).unwrap();
    // What the router serves: every path routed through the recorder, its methods probed.
    let served = app.routes().served().await;
    let bob = scalar_uuid(
        &admin,
        "SELECT user_id FROM workspace.members WHERE email = $1",
        "bob@acme.test",
    )
    .await;

    // One report: routes missing from the table, rows naming no route, role columns, and every
    // cell that differs. Each cell gets a fresh session of its role and fresh objects.
    let passed = matrix
        .check(&served, &ROLES, async |cell| {
            let cookie = cookie(&app, &cell.role).await;
            let (path, form) = fixture(&app, &admin, bob, &cell).await;
            if path.starts_with("/staff/approvals/") {
                // A decision acts through the console's open visit: open acme first (refused
                // for every role but staff, which the decision's own cell then shows).
                let visit = "tenant=acme&reason=matrix+check+of+the+console";
                send(&app, "POST", "/staff/visit", cookie.as_deref(), visit).await;
            }
            let (status, body) =
                send(&app, cell.method.as_str(), &path, cookie.as_deref(), &form).await;
            let excerpt: String = body.chars().take(120).collect();
            Ok::<_, Infallible>(Observed::with_detail(status, excerpt.replace('\n', " ")))
        })
        .await
        .unwrap_or_else(|failed| panic!("{failed}"));
    assert_eq!(passed.routes, matrix.rows().len());
    assert_eq!(passed.cells, matrix.rows().len() * ROLES.len());
    // No 5xx anywhere in the matrix (a 5xx cell would have to be listed, and none is).
    assert!(
        matrix
            .rows()
            .iter()
            .all(|r| r.expected().iter().all(|s| !s.is_server_error()))
    );
}
