//! The authorization-matrix gate (`authz-matrix`): every row of `tests/authz_matrix.csv` against
//! the real router, each cell with a fresh account and session of its role and fresh objects of
//! acme for the path's parameters; and, both ways, the table against every route the router
//! serves (recorded as `minimal::app` built it, the methods probed).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::convert::Infallible;
use std::time::Duration;

use authz_matrix::{Cell, Matrix, Observed};
use magic_auth::Assurance;
use serde_json::{Value, json};
use tenant_scope::{ActorId, TenantId};

use common::{Browser, Service};

/// The table's columns: see the head of `authz_matrix.csv`.
const ROLES: [&str; 5] = ["anonymous", "aal1", "member", "stale", "other"];

/// A fresh account of the role's workspace, and a browser signed in as the role says (no
/// session for `anonymous`).
async fn fresh_session(app: &Service, role: &str) -> (Browser, Option<(TenantId, ActorId)>) {
    let (tenant, assurance, age) = match role {
        "anonymous" => return (Browser::default(), None),
        "aal1" => (app.acme, Assurance::Aal1, 0),
        "member" => (app.acme, Assurance::Aal2, 0),
        // Both factors, the second 11 minutes ago: past the admin action's step-up window.
        "stale" => (app.acme, Assurance::Aal2, 11 * 60),
        "other" => (app.globex, Assurance::Aal2, 0),
        unknown => panic!("no such role: {unknown}"),
    };
    let user = app.fresh_member(tenant).await;
    let age = Duration::from_secs(age);
    let (browser, _) = app.signed_in(tenant, user, assurance, age).await;
    (browser, Some((tenant, user)))
}

/// The path of `cell` with fresh objects of acme for its parameters, and the body to send.
async fn fill(
    app: &Service,
    cell: &Cell,
    account: Option<(TenantId, ActorId)>,
) -> (String, Option<Value>) {
    let path = cell.path.clone();
    let fresh_address = format!("{}@example.test", uuid::Uuid::new_v4().simple());
    let body = match (cell.method.as_str(), path.as_str()) {
        (_, "/notes/{id}" | "/admin/notes/{id}") => {
            return (path.replace("{id}", &app.fresh_note().await), None);
        }
        ("POST", "/auth/sessions/{id}/revoke") => {
            // Another session of the cell's own account when that is acme's; else one of a
            // fresh member of acme.
            let user = match account {
                Some((tenant, user)) if tenant == app.acme => user,
                _ => app.fresh_member(app.acme).await,
            };
            let (_, id) = app
                .signed_in(app.acme, user, Assurance::Aal2, Duration::ZERO)
                .await;
            return (path.replace("{id}", &id.to_string()), Some(json!({})));
        }
        // The landing page of a link (a made-up token: the page only posts it back).
        ("GET", "/auth/link") => return (format!("{path}?token=v1.bogus"), None),
        ("POST", "/notes") => json!({ "body": "a matrix note" }),
        ("POST", "/auth/link") => json!({ "workspace": "acme", "email": fresh_address }),
        ("POST", "/auth/link/confirm" | "/auth/email/confirm") => json!({ "token": "v1.bogus" }),
        // A wrong code (seven digits: never one an authenticator shows).
        ("POST", "/auth/totp" | "/auth/step-up" | "/auth/totp/replace/confirm") => {
            json!({ "code": "0000000" })
        }
        ("POST", "/auth/email") => json!({ "email": fresh_address }),
        // The account is the cell's own, made for it: disabling it touches no other cell.
        ("POST", "/auth/account/disable") => json!({ "confirm": "disable" }),
        ("POST", _) => json!({}),
        _ => return (path, None),
    };
    (path, Some(body))
}

#[tokio::test]
async fn every_route_answers_every_role_as_the_matrix_says() {
    let app = common::service().await;
    let matrix = Matrix::parse(include_str!("authz_matrix.csv")).unwrap();
    // Every route `minimal::app` serves: recorded as it was built, its methods probed.
    let served = app.routes.served().await;
    let passed = matrix
        .check(&served, &ROLES, async |cell| {
            // A fresh account and session of the cell's role, fresh objects for the path.
            let (mut browser, account) = fresh_session(&app, &cell.role).await;
            let (path, body) = fill(&app, &cell, account).await;
            let method = cell.method.as_str();
            let (status, answer) = browser.send(&app, method, &path, body).await;
            // The answer goes in the report beside a status that differs.
            Ok::<_, Infallible>(Observed::with_detail(status, answer.to_string()))
        })
        .await
        .unwrap_or_else(|failed| panic!("{failed}"));
    assert_eq!(passed.routes, matrix.rows().len());
    assert_eq!(passed.cells, matrix.rows().len() * ROLES.len());
}
