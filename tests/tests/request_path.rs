//! The request path across crates: a session puts an actor in the request, `TenantLayer`
//! resolves the tenant, the handler takes an `rls_guard::TenantTx`, and PostgreSQL RLS scopes
//! every row — even though the handler's SQL (deliberately) has no tenant filter.
// Integration tests: a failed unwrap is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::Body;
use axum::extract::{FromRef, State};
use axum::routing::get;
use axum::{Json, Router};
use http::{HeaderName, Request, StatusCode};
use http_body_util::BodyExt;
use rls_guard::schema::{SUPPORT_SQL, tenant_table_sql};
use rls_guard::{RlsError, TenantPool, TenantTx};
use tenant_scope::{
    Actor, ActorId, ActorKind, ActorResolver, AllAgree, HeaderResolver, TenantContext, TenantId,
    TenantLayer,
};
use testkit::{Role, Template, fresh_database};
use tower::ServiceExt;

const TENANT_HEADER: HeaderName = HeaderName::from_static("x-tenant-id");
/// Stands in for magic-auth's session layer in this test: the signed-in actor's tenant.
const SESSION_HEADER: &str = "x-test-session-tenant";

#[derive(Clone, FromRef)]
struct AppState {
    db: TenantPool,
    handler_calls: Arc<AtomicUsize>,
}

/// The handler forgets the tenant filter: RLS must still scope it.
async fn list_notes(
    State(calls): State<Arc<AtomicUsize>>,
    mut tx: TenantTx,
) -> Result<Json<Vec<String>>, RlsError> {
    calls.fetch_add(1, Ordering::SeqCst);
    let notes: Vec<String> = sqlx::query_scalar("SELECT body FROM notes ORDER BY body")
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Json(notes))
}

fn app(state: AppState) -> Router {
    Router::new()
        .route("/notes", get(list_notes))
        .layer(TenantLayer::new(
            AllAgree::new()
                .with(ActorResolver)
                .with(HeaderResolver::new(TENANT_HEADER)),
        ))
        .layer(axum::middleware::from_fn(
            |mut req: Request<Body>, next: axum::middleware::Next| async move {
                let tenant = req
                    .headers()
                    .get(SESSION_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<TenantId>().ok());
                if let Some(tenant) = tenant {
                    req.extensions_mut().insert(Actor::new(
                        ActorKind::User,
                        ActorId::new_random(),
                        tenant,
                    ));
                }
                next.run(req).await
            },
        ))
        .with_state(state)
}

struct World {
    state: AppState,
    a: TenantId,
    b: TenantId,
    _db: testkit::TestDb,
}

async fn world() -> World {
    let sql = format!(
        "{SUPPORT_SQL}
         CREATE TABLE notes (tenant_id uuid NOT NULL, id uuid NOT NULL DEFAULT gen_random_uuid(),
                             body text NOT NULL, PRIMARY KEY (tenant_id, id));
         {}
         GRANT SELECT, INSERT ON notes TO testkit_runtime;",
        tenant_table_sql("notes").unwrap()
    );
    let db = fresh_database(&Template::new("request_path", sql)).await;
    let db_pool = TenantPool::new(db.pool(Role::Runtime, 4).await)
        .await
        .unwrap();
    let (a, b) = (TenantId::new_random(), TenantId::new_random());
    for (tenant, body) in [(a, "a: plans"), (a, "a: salaries"), (b, "b: merger")] {
        let ctx = TenantContext::for_job(tenant, None, "seed").unwrap();
        let mut tx = db_pool.begin(&ctx).await.unwrap();
        sqlx::query("INSERT INTO notes (tenant_id, body) VALUES ($1, $2)")
            .bind(tenant.as_uuid())
            .bind(body)
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    World {
        state: AppState {
            db: db_pool,
            handler_calls: Arc::default(),
        },
        a,
        b,
        _db: db,
    }
}

async fn get_notes(
    state: &AppState,
    session: Option<TenantId>,
    header: Option<TenantId>,
) -> (StatusCode, serde_json::Value) {
    let mut req = Request::builder().uri("/notes");
    if let Some(t) = session {
        req = req.header(SESSION_HEADER, t.to_string());
    }
    if let Some(t) = header {
        req = req.header(TENANT_HEADER, t.to_string());
    }
    let res = app(state.clone())
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = res.status();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    )
}

#[tokio::test]
async fn each_tenant_sees_only_its_rows_through_an_unfiltered_handler() {
    let w = world().await;
    let (status, body) = get_notes(&w.state, Some(w.a), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, serde_json::json!(["a: plans", "a: salaries"]));
    let (status, body) = get_notes(&w.state, Some(w.b), Some(w.b)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, serde_json::json!(["b: merger"]));
}

#[tokio::test]
async fn conflicting_or_missing_tenant_never_reaches_the_handler_or_the_database() {
    let w = world().await;
    let (status, body) = get_notes(&w.state, Some(w.a), Some(w.b)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("tenant_mismatch"))
    );
    assert!(!body.to_string().contains("merger"));
    let (status, body) = get_notes(&w.state, None, None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("tenant_required"))
    );
    assert_eq!(w.state.handler_calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn unreachable_database_answers_503_never_unscoped_data() {
    let w = world().await;
    w.state.db.pool().close().await;
    let (status, body) = get_notes(&w.state, Some(w.a), None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Some("database_unavailable")
        )
    );
    assert_eq!(w.state.handler_calls.load(Ordering::SeqCst), 0);
}
