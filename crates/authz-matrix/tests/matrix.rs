//! The harness against tiny axum routers, no database: a correct table passes, and each kind of
//! problem is found and named in the report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use authz_matrix::{
    Cell, Endpoint, Failed, Matrix, Observed, ParseError, Problem, RecordingRouter, RouteRecord,
};
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::{Next, from_fn};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, head, post};
use tower::ServiceExt;

/// Refuses a request without `x-role`, before routing: on the real router every unknown method
/// of a guarded path answers 401, not 405.
async fn sign_in(request: Request, next: Next) -> Response {
    if request.headers().contains_key("x-role") {
        next.run(request).await
    } else {
        StatusCode::UNAUTHORIZED.into_response()
    }
}

async fn admin_only(headers: HeaderMap) -> StatusCode {
    if headers.get("x-role").is_some_and(|r| r == "admin") {
        StatusCode::OK
    } else {
        StatusCode::FORBIDDEN
    }
}

fn app() -> (Router, RouteRecord) {
    let guarded = RecordingRouter::new()
        .route(
            "/notes",
            get(|| async { "notes" }).post(|| async { StatusCode::CREATED }),
        )
        .route(
            "/notes/{id}",
            get(|| async { "a note" }).delete(|| async { StatusCode::NO_CONTENT }),
        )
        .route("/admin", get(admin_only))
        .layer(from_fn(sign_in));
    let api = RecordingRouter::new()
        .route("/", get(|| async { "api root" }))
        .route("/items", post(|| async { StatusCode::CREATED }));
    RecordingRouter::new()
        .route("/healthz", get(|| async { "ok" }))
        .merge(guarded)
        .nest("/api", api)
        .fallback(|| async { StatusCode::NOT_FOUND })
        .into_parts()
}

const ROLES: [&str; 3] = ["anonymous", "member", "admin"];

const TABLE: &str = "\
# A comment, then a blank line.

method,path,anonymous,member,admin
GET,/healthz,200,200,200
GET,/notes,401,200,200
POST,/notes,401,201,201
GET,/notes/{id},401,200,200
DELETE,/notes/{id},401,204,204
GET,/admin,401,403,200
GET,/api,200,200,200
POST,/api/items,201,201,201
";

async fn send(router: &Router, cell: Cell) -> Result<Observed, Infallible> {
    let path = cell.path.replace("{id}", "7");
    let mut request = http::Request::builder()
        .method(cell.method.clone())
        .uri(path);
    if cell.role != "anonymous" {
        request = request.header("x-role", cell.role.as_str());
    }
    let response = router
        .clone()
        .oneshot(request.body(Body::empty()).unwrap())
        .await?;
    Ok(Observed::with_detail(response.status(), "body not read"))
}

async fn run(table: &str, roles: &[&str]) -> Result<authz_matrix::Passed, Failed> {
    let (router, record) = app();
    let matrix = Matrix::parse(table).unwrap();
    let served = record.served().await;
    matrix
        .check(&served, roles, async |cell| send(&router, cell).await)
        .await
}

fn report(failed: &Failed) -> String {
    format!("{failed}")
}

#[tokio::test]
async fn a_correct_table_passes() {
    let passed = run(TABLE, &ROLES).await.unwrap();
    assert_eq!(passed.routes, 8);
    assert_eq!(passed.cells, 8 * 3);
}

#[tokio::test]
async fn the_record_is_every_method_and_path_served_probed_not_declared() {
    let (_, record) = app();
    let served: Vec<String> = record
        .served()
        .await
        .iter()
        .map(ToString::to_string)
        .collect();
    // Sorted by path, then method; HEAD folded into GET; the nest prefixes applied; the
    // fallback is not a route.
    assert_eq!(
        served,
        [
            "GET /admin",
            "GET /api",
            "POST /api/items",
            "GET /healthz",
            "GET /notes",
            "POST /notes",
            "DELETE /notes/{id}",
            "GET /notes/{id}",
        ]
    );
}

#[tokio::test]
async fn probing_runs_no_handler_and_sees_through_state() {
    let calls = Arc::new(AtomicUsize::new(0));
    async fn counted(State(calls): State<Arc<AtomicUsize>>) -> &'static str {
        calls.fetch_add(1, Ordering::SeqCst);
        "counted"
    }
    let (router, record) = RecordingRouter::<Arc<AtomicUsize>>::new()
        .route("/counted", get(counted).put(counted))
        .with_state(calls.clone())
        .into_parts();
    let served = record.served().await;
    assert_eq!(
        served,
        [
            Endpoint::new(Method::GET, "/counted"),
            Endpoint::new(Method::PUT, "/counted"),
        ]
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "a handler ran while probing"
    );
    // The router itself is the real one.
    let response = router
        .oneshot(
            http::Request::builder()
                .uri("/counted")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn any_services_method_fallbacks_and_a_lone_head_are_served() {
    let (_, record) = RecordingRouter::new()
        .route("/any", any(|| async { "any" }))
        .route_service(
            "/service",
            tower::service_fn(|_: Request| async { Ok::<_, Infallible>("service") }),
        )
        .route(
            "/teapot",
            get(|| async { "get" }).fallback(|| async { StatusCode::IM_A_TEAPOT }),
        )
        .route(
            "/refusing",
            get(|| async { "get" }).fallback(|| async { StatusCode::METHOD_NOT_ALLOWED }),
        )
        .route("/head", head(|| async { StatusCode::OK }))
        .into_parts();
    let served = record.served().await;
    let on = |path: &str| -> Vec<String> {
        served
            .iter()
            .filter(|e| e.path == path)
            .map(|e| e.method.to_string())
            .collect()
    };
    let every_but_head = [
        "CONNECT", "DELETE", "GET", "OPTIONS", "PATCH", "POST", "PUT", "TRACE",
    ];
    assert_eq!(on("/any"), every_but_head);
    assert_eq!(on("/service"), every_but_head);
    assert_eq!(on("/teapot"), every_but_head);
    assert_eq!(on("/refusing"), ["GET"]);
    assert_eq!(on("/head"), ["HEAD"]);
}

#[tokio::test]
async fn a_path_routed_twice_and_nested_prefixes_are_recorded_as_axum_joins_them() {
    let inner = RecordingRouter::new()
        .route("/", get(|| async { "root" }))
        .route("/{id}", get(|| async { "one" }));
    let (router, record) = RecordingRouter::new()
        .route("/x", get(|| async { "get" }))
        .route("/x", post(|| async { "post" }))
        .nest("/t/{tenant}/items", inner.clone())
        .nest("/slash/", inner)
        .into_parts();
    let served: Vec<String> = record
        .served()
        .await
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        served,
        [
            "GET /slash/",
            "GET /slash/{id}",
            "GET /t/{tenant}/items",
            "GET /t/{tenant}/items/{id}",
            "GET /x",
            "POST /x",
        ]
    );
    // Each recorded template is one the real router answers.
    for (path, body) in [
        ("/t/acme/items", "root"),
        ("/t/acme/items/7", "one"),
        ("/slash/", "root"),
        ("/slash/7", "one"),
    ] {
        let response = router
            .clone()
            .oneshot(
                http::Request::builder()
                    .uri(path)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let bytes = axum::body::to_bytes(response.into_body(), 64)
            .await
            .unwrap();
        assert_eq!(&bytes[..], body.as_bytes(), "{path}");
    }
}

#[tokio::test]
async fn a_served_route_missing_from_the_table_fails() {
    let table = TABLE.replace("DELETE,/notes/{id},401,204,204\n", "");
    let failed = run(&table, &ROLES).await.unwrap_err();
    assert_eq!(
        failed.problems,
        [Problem::RouteMissingFromTable {
            endpoint: Endpoint::new(Method::DELETE, "/notes/{id}")
        }]
    );
    assert!(
        report(&failed).contains("served route missing from the table: DELETE /notes/{id}"),
        "{failed}"
    );
}

#[tokio::test]
async fn a_row_naming_no_route_fails() {
    // A removed route, and a method the path does not serve.
    let table = format!("{TABLE}GET,/old,404,404,404\nPUT,/notes,401,405,405\n");
    let failed = run(&table, &ROLES).await.unwrap_err();
    assert_eq!(
        failed.problems,
        [
            Problem::RowNamesNoRoute {
                line: 12,
                endpoint: Endpoint::new(Method::GET, "/old")
            },
            Problem::RowNamesNoRoute {
                line: 13,
                endpoint: Endpoint::new(Method::PUT, "/notes")
            },
        ]
    );
    let text = report(&failed);
    assert!(
        text.contains("line 12: row names no route: GET /old"),
        "{text}"
    );
    assert!(
        text.contains("line 13: row names no route: PUT /notes"),
        "{text}"
    );
    // The rows' cells are not run; every other cell is.
    assert_eq!(failed.cells, 8 * 3);
}

#[tokio::test]
async fn a_wrong_status_fails_naming_the_cell() {
    let table = TABLE.replace("GET,/admin,401,403,200", "GET,/admin,401,200,200");
    let failed = run(&table, &ROLES).await.unwrap_err();
    assert_eq!(
        failed.problems,
        [Problem::Mismatch {
            line: 9,
            endpoint: Endpoint::new(Method::GET, "/admin"),
            role: "member".to_owned(),
            expected: StatusCode::OK,
            got: StatusCode::FORBIDDEN,
            detail: Some("body not read".to_owned()),
        }]
    );
    let text = report(&failed);
    assert!(
        text.contains("line 9: GET /admin as member: expected 200, got 403 (body not read)"),
        "{text}"
    );
    assert!(text.contains("1 of 24 cell(s) run differ"), "{text}");
    // Debug is the same readable report (what `.unwrap()` prints).
    assert_eq!(format!("{failed:?}"), text);
}

#[tokio::test]
async fn a_missing_or_unknown_role_column_fails() {
    let failed = run(TABLE, &["anonymous", "member", "admin", "staff"])
        .await
        .unwrap_err();
    assert_eq!(
        failed.problems,
        [Problem::MissingRoleColumn {
            role: "staff".to_owned()
        }]
    );
    assert!(report(&failed).contains("role column missing from the table: staff"));

    let failed = run(TABLE, &["anonymous", "member"]).await.unwrap_err();
    assert_eq!(
        failed.problems,
        [Problem::UnknownRoleColumn {
            role: "admin".to_owned()
        }]
    );
    assert!(report(&failed).contains("column for a role the test does not know: admin"));
    assert_eq!(failed.cells, 8 * 2);
}

#[tokio::test]
async fn a_request_that_errors_fails() {
    let (router, record) = app();
    let served = record.served().await;
    let failed = Matrix::parse(TABLE)
        .unwrap()
        .check(&served, &ROLES, async |cell| {
            if cell.path == "/admin" && cell.role == "admin" {
                return Err("no fixture for admin");
            }
            Ok(send(&router, cell).await.unwrap())
        })
        .await
        .unwrap_err();
    assert_eq!(
        failed.problems,
        [Problem::RequestFailed {
            line: 9,
            endpoint: Endpoint::new(Method::GET, "/admin"),
            role: "admin".to_owned(),
            error: "no fixture for admin".to_owned(),
        }]
    );
    assert!(report(&failed).contains("GET /admin as admin: request failed: no fixture for admin"));
}

#[tokio::test]
async fn no_roles_or_no_routes_fail() {
    let matrix = Matrix::parse(TABLE).unwrap();
    let failed = matrix
        .check(&[], &ROLES, async |_| Ok::<_, Infallible>(StatusCode::OK))
        .await
        .unwrap_err();
    assert!(failed.problems.contains(&Problem::NoRoutes));
    assert!(report(&failed).contains("the router serves no route"));

    let (_, record) = app();
    let failed = matrix
        .check(&record.served().await, &[], async |_| {
            Ok::<_, Infallible>(StatusCode::OK)
        })
        .await
        .unwrap_err();
    assert!(failed.problems.contains(&Problem::NoRoles));
    assert_eq!(failed.cells, 0);
}

#[tokio::test]
async fn one_report_lists_every_problem() {
    let table = TABLE
        .replace("GET,/healthz,200,200,200\n", "GET,/gone,200,200,200\n")
        .replace("POST,/api/items,201,201,201", "POST,/api/items,201,401,201");
    let failed = run(&table, &ROLES).await.unwrap_err();
    let text = report(&failed);
    assert_eq!(failed.problems.len(), 3, "{text}");
    for needle in [
        "served route missing from the table: GET /healthz",
        "line 4: row names no route: GET /gone",
        "line 11: POST /api/items as member: expected 401, got 201",
    ] {
        assert!(text.contains(needle), "{needle} not in:\n{text}");
    }
}

#[test]
fn parsing_keeps_lines_roles_and_statuses() {
    let matrix = Matrix::parse(TABLE).unwrap();
    assert_eq!(matrix.roles(), ["anonymous", "member", "admin"]);
    assert_eq!(matrix.rows().len(), 8);
    let admin = &matrix.rows()[5];
    assert_eq!(admin.line(), 9);
    assert_eq!(admin.endpoint(), &Endpoint::new(Method::GET, "/admin"));
    assert_eq!(
        admin.expected(),
        [
            StatusCode::UNAUTHORIZED,
            StatusCode::FORBIDDEN,
            StatusCode::OK
        ]
    );
    assert_eq!(
        matrix.expected(&Method::GET, "/admin", "member"),
        Some(StatusCode::FORBIDDEN)
    );
    assert_eq!(matrix.expected(&Method::GET, "/admin", "staff"), None);
    // Spaces around cells are trimmed.
    let spaced = Matrix::parse("method, path, a\n GET , /x , 200 \n").unwrap();
    assert_eq!(
        spaced.rows()[0].endpoint(),
        &Endpoint::new(Method::GET, "/x")
    );
}

#[test]
fn a_duplicate_row_is_refused() {
    let error = Matrix::parse(&format!("{TABLE}GET,/notes,401,200,200\n")).unwrap_err();
    assert!(
        matches!(
            &error,
            ParseError::DuplicateRow { line: 12, first_line: 5, method, path }
                if *method == Method::GET && path == "/notes"
        ),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "line 12: GET /notes is already listed on line 5"
    );
}

#[test]
fn a_malformed_table_is_refused_naming_the_line() {
    let cases: [(&str, &str); 11] = [
        ("", "no header line"),
        ("# only a comment\n", "no header line"),
        (
            "verb,path,a\nGET,/x,200\n",
            "line 1: the header must start with `method,path`, found `verb,path`",
        ),
        (
            "method,path\nGET,/x\n",
            "line 1: the header names no role column",
        ),
        (
            "method,path,a,,b\nGET,/x,200,200,200\n",
            "line 1: role column 4 has an empty name",
        ),
        (
            "method,path,a,a\nGET,/x,200,200\n",
            "line 1: role `a` has two columns",
        ),
        (
            "method,path,a,b\n# c\nGET,/x,200\n",
            "line 3: 3 cells, the header has 4",
        ),
        (
            "method,path,a\nget,/x,200\n",
            "line 2: `get` is not an HTTP method",
        ),
        (
            "method,path,a\nGET,x,200\n",
            "line 2: path `x` does not start with `/`",
        ),
        (
            "method,path,a\n\nGET,/x,20O\n",
            "line 3: `20O` for role `a` is not an HTTP status",
        ),
        (
            "method,path,a\nGET,\"/x,200\n",
            "line 2: quotes are not supported",
        ),
    ];
    for (text, message) in cases {
        let error = Matrix::parse(text).unwrap_err().to_string();
        assert!(error.starts_with(message), "{text:?}: {error}");
    }
    for status in ["99", "600", "-1", ""] {
        let error = Matrix::parse(&format!("method,path,a\nGET,/x,{status}\n")).unwrap_err();
        assert!(
            matches!(error, ParseError::BadStatus { line: 2, .. }),
            "{status}: {error}"
        );
    }
}

#[test]
fn an_empty_table_is_refused() {
    let error = Matrix::parse("# roles\nmethod,path,a,b\n# no rows yet\n").unwrap_err();
    assert!(matches!(error, ParseError::NoRows), "{error:?}");
    assert_eq!(error.to_string(), "the table has a header but no row");
}
