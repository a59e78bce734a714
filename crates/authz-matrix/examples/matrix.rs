//! The authorization-matrix gate: a router built through the recorder, a table of expected
//! statuses per role, and the check run against the real router — once on a correct app, once
//! on an app with an unguarded route that the table does not know about.
//!
//! ```sh
//! cargo run -p authz-matrix --example matrix
//! ```
#![allow(clippy::print_stdout)]

use authz_matrix::{Matrix, RecordingRouter, RouteRecord};
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::routing::{delete, get};
use tower::ServiceExt;

const TABLE: &str = "\
# anonymous: no session; member: a signed-in member of the tenant.
method,path,anonymous,member
GET,/healthz,200,200
GET,/notes,401,200
POST,/notes,401,201
";

async fn notes(headers: HeaderMap) -> StatusCode {
    if headers.contains_key("authorization") {
        StatusCode::OK
    } else {
        StatusCode::UNAUTHORIZED
    }
}
async fn create(headers: HeaderMap) -> StatusCode {
    if headers.contains_key("authorization") {
        StatusCode::CREATED
    } else {
        StatusCode::UNAUTHORIZED
    }
}
// The bug: added last, guarded by nobody, missing from the table.
async fn delete_note() -> StatusCode {
    StatusCode::NO_CONTENT
}

fn app(with_delete: bool) -> (axum::Router, RouteRecord) {
    let router = RecordingRouter::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/notes", get(notes).post(create));
    let router = if with_delete {
        router.route("/notes/{id}", delete(delete_note))
    } else {
        router
    };
    router.into_parts()
}

async fn check(with_delete: bool) -> Result<(), Box<dyn std::error::Error>> {
    let (router, record) = app(with_delete);
    let matrix = Matrix::parse(TABLE)?;
    let served = record.served().await;
    let outcome = matrix
        .check(&served, &["anonymous", "member"], async |cell| {
            let mut request = Request::builder().method(cell.method).uri(cell.path);
            if cell.role == "member" {
                request = request.header("authorization", "a fresh session for this cell");
            }
            let response = router.clone().oneshot(request.body(Body::empty())?).await?;
            Ok::<_, Box<dyn std::error::Error>>(response.status())
        })
        .await;
    match outcome {
        Ok(passed) => println!("passed: {} routes, {} cells", passed.routes, passed.cells),
        Err(failed) => println!("{failed}"),
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("-- the app as the table describes it");
    check(false).await?;
    println!("-- the app after someone added DELETE /notes/{{id}}");
    check(true).await
}
