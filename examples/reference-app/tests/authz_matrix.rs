//! The authorization-matrix gate: every row of `tests/authz_matrix.csv` against the real router,
//! each request with a freshly made session of its role and fresh objects, plus a completeness
//! check in both directions between the table and the routes the app serves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;

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

struct Row {
    method: String,
    path: String,
    expected: Vec<u16>,
}

fn table() -> Vec<Row> {
    let text = include_str!("authz_matrix.csv");
    let mut lines = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty());
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert_eq!(&header[2..], &ROLES, "the role columns");
    lines
        .map(|line| {
            let cells: Vec<&str> = line.split(',').collect();
            assert_eq!(cells.len(), 2 + ROLES.len(), "{line}");
            Row {
                method: cells[0].to_owned(),
                path: cells[1].to_owned(),
                expected: cells[2..].iter().map(|c| c.parse().unwrap()).collect(),
            }
        })
        .collect()
}

async fn scalar_uuid(admin: &PgPool, sql: &str, bind: &str) -> Uuid {
    let (id,): (Uuid,) = sqlx::query_as(sql)
        .bind(bind)
        .fetch_one(admin)
        .await
        .unwrap();
    id
}

/// A cookie for `role`, made fresh for each request.
async fn cookie(app: &App, admin: &PgPool, role: &str) -> Option<String> {
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
    let cookie = app.mint_session(workspace, email, true).await.unwrap();
    if role == "staff_no_step_up" {
        common::backdate_second_factor(admin, workspace, email).await;
    }
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

#[tokio::test]
async fn every_route_answers_every_role_as_the_matrix_says() {
    let app = common::start().await;
    let admin = app.database().unwrap().pool(testkit::Role::Admin, 2).await;
    let rows = table();

    // Completeness, both ways.
    let served: BTreeSet<(String, String)> = app
        .routes()
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    let listed: BTreeSet<(String, String)> = rows
        .iter()
        .map(|r| (r.method.clone(), r.path.clone()))
        .collect();
    let missing: Vec<_> = served.difference(&listed).collect();
    let stale: Vec<_> = listed.difference(&served).collect();
    assert!(
        missing.is_empty(),
        "routes missing from the matrix: {missing:?}"
    );
    assert!(
        stale.is_empty(),
        "matrix rows for routes that do not exist: {stale:?}"
    );
    assert_eq!(rows.len(), listed.len(), "a route listed twice");

    let bob = scalar_uuid(
        &admin,
        "SELECT user_id FROM workspace.members WHERE email = $1",
        "bob@acme.test",
    )
    .await;
    let mut failures = Vec::new();
    let mut checked = 0;
    for row in &rows {
        for (role, expected) in ROLES.iter().zip(&row.expected) {
            let cookie = cookie(&app, &admin, role).await;
            let mut path = row.path.clone();
            let mut form = String::new();
            let reason = "reason=matrix+check+of+the+console";
            match row.path.as_str() {
                "/notes/{id}" | "/notes/{id}/delete" | "/api/notes/{id}" => {
                    path = path.replace("{id}", &fresh_note(&app, &admin).await.to_string());
                    form = "title=edited&body=edited".to_owned();
                }
                "/sessions/{id}/revoke" => {
                    // One of bob's other sessions.
                    let _ = app
                        .mint_session("acme", "bob@acme.test", true)
                        .await
                        .unwrap();
                    let (id,): (Uuid,) = sqlx::query_as(
                        "SELECT id FROM auth.sessions WHERE user_id = $1 AND revoked_at IS NULL ORDER BY created_at DESC LIMIT 1",
                    )
                    .bind(bob)
                    .fetch_one(&admin)
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
                    let (id, digest) = fresh_proposal(&app, &admin).await;
                    path = path
                        .replace("{tenant}", "acme")
                        .replace("{id}", &id.to_string());
                    form = format!(
                        r#"{{"decision": "approve", "digest": "{digest}", "reason": "matrix check of the console"}}"#
                    );
                }
                "/staff/approvals/{tenant}/{id}/approve"
                | "/staff/approvals/{tenant}/{id}/reject" => {
                    let (id, digest) = fresh_proposal(&app, &admin).await;
                    path = path
                        .replace("{tenant}", "acme")
                        .replace("{id}", &id.to_string());
                    form = format!("digest={digest}&{reason}");
                }
                "/staff/approvals" | "/staff/audit" => {
                    path = format!("{path}?tenant=acme&{reason}");
                }
                // A fresh address each time: the per-address rate limit is tested on its own.
                "/auth/request" => {
                    form = format!(
                        "workspace=acme&email=m{}%40acme.test",
                        Uuid::new_v4().simple()
                    );
                }
                "/auth/link" if row.method == "POST" => form = "token=v1.bogus".to_owned(),
                "/auth/link" => path = format!("{path}?token=v1.bogus"),
                "/auth/totp" | "/auth/step-up" if row.method == "POST" => {
                    form = "code=000000&next=/notes".to_owned();
                }
                "/notes" if row.method == "POST" => form = "title=matrix+note&body=x".to_owned(),
                "/api/notes" if row.method == "POST" => {
                    form = r#"{"title": "matrix note", "body": "x"}"#.to_owned();
                }
                "/assistant" if row.method == "POST" => form = "prompt=hello".to_owned(),
                "/api/assistant" => form = r#"{"prompt": "hello"}"#.to_owned(),
                _ => {}
            }
            // (For user_a's revoke row the row's own session was minted first, so the target is
            // another of bob's sessions.)
            let (status, body) = send(&app, &row.method, &path, cookie.as_deref(), &form).await;
            checked += 1;
            if status.as_u16() != *expected {
                failures.push(format!(
                    "{} {} as {role}: expected {expected}, got {} ({})",
                    row.method,
                    row.path,
                    status.as_u16(),
                    body.chars()
                        .take(120)
                        .collect::<String>()
                        .replace('\n', " ")
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} cells differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(checked, rows.len() * ROLES.len());
    // No 5xx anywhere in the matrix (a 5xx cell would have to be listed, and none is).
    assert!(rows.iter().all(|r| r.expected.iter().all(|s| *s < 500)));
}
