//! The audit layer on an axum router, and the cross-tenant hook.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use audit_log::{
    Action, AuditHandle, AuditLayer, AuditQuery, DenialReason, Outcome, StoredEvent, Target,
};
use axum::Router;
use axum::body::Body;
use axum::extract::Path;
use axum::http::{Request, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use common::*;
use http_body_util::BodyExt;
use tenant_scope::{Actor, TenantContext, TenantId};
use tower::ServiceExt;

async fn guarded(Path(id): Path<String>) -> axum::response::Response {
    if id == "over-plan" {
        // A refusal built from the workspace's rejection type: its code is the reason.
        return tenant_scope::Rejection::new(StatusCode::FORBIDDEN, "plan_limit", "upgrade first")
            .into_http();
    }
    if id == "locked" {
        // A guard refusing the request, naming why.
        return (
            StatusCode::FORBIDDEN,
            axum::Extension(DenialReason("step_up_required")),
            "{\"error\":\"step_up_required\"}",
        )
            .into_response();
    }
    StatusCode::NO_CONTENT.into_response()
}

fn app(f: &Fixture, context: Option<TenantContext>) -> Router {
    let layer =
        AuditLayer::new(f.log.clone(), Action::new("note.deleted").unwrap()).with_target(|parts| {
            let id = parts.uri.path().rsplit('/').next()?;
            Some(Target::new("note", id))
        });
    Router::new()
        .route("/notes/{id}", post(guarded))
        .layer(layer)
        .layer(tower::util::MapRequestLayer::new(
            move |mut req: Request<Body>| {
                if let Some(ctx) = context.clone() {
                    req.extensions_mut().insert(ctx);
                }
                req
            },
        ))
}

/// `router` with `context` in every request, as the tenant layer would put it.
fn in_context(router: Router, context: TenantContext) -> Router {
    router.layer(tower::util::MapRequestLayer::new(
        move |mut req: Request<Body>| {
            req.extensions_mut().insert(context.clone());
            req
        },
    ))
}

fn request(path: &str) -> Request<Body> {
    Request::post(path)
        .header("x-request-id", "req-42")
        .header("user-agent", "test\u{202e}gnp.exe\tx")
        .body(Body::empty())
        .unwrap()
}

/// The tenant's chained events, once everything queued is chained.
async fn events(f: &Fixture, t: TenantId) -> Vec<StoredEvent> {
    sequence_all(f).await;
    AuditQuery::new(t).fetch(&f.raw).await.unwrap()
}

#[tokio::test]
async fn an_allowed_request_is_recorded_with_actor_tenant_target_and_request_id() {
    let f = fixture(2).await;
    let t = TenantId::new_random();
    let who: Actor = actor(t);
    let response = app(&f, Some(TenantContext::for_actor(who.clone())))
        .oneshot(request("/notes/n1"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let recorded = events(&f, t).await;
    assert_eq!(recorded.len(), 1);
    let e = &recorded[0];
    assert_eq!(
        (e.action.as_str(), e.outcome.as_str()),
        ("note.deleted", "allowed")
    );
    assert_eq!(e.actor_id, Some(*who.id().as_uuid()));
    assert_eq!(e.request_id.as_deref(), Some("req-42"));
    let record = e.record_json().unwrap();
    assert_eq!(record["targets"][0]["id"], "n1");
    // The bidi override is removed (so it cannot hide text from the scrubber or a reader), the
    // tab is encoded.
    assert_eq!(record["user_agent"], "testgnp.exe\\u{0009}x");
}

#[tokio::test]
async fn a_request_denied_by_a_later_guard_is_recorded_as_denied() {
    let f = fixture(2).await;
    let t = TenantId::new_random();
    let response = app(&f, Some(TenantContext::for_actor(actor(t))))
        .oneshot(request("/notes/locked"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let recorded = events(&f, t).await;
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].outcome, "denied");
    assert_eq!(
        recorded[0].record_json().unwrap()["outcome"]["reason"],
        "step_up_required"
    );
}

#[tokio::test]
async fn a_rejection_is_recorded_with_its_code_as_the_reason() {
    let f = fixture(2).await;
    let t = TenantId::new_random();
    let response = app(&f, Some(TenantContext::for_actor(actor(t))))
        .oneshot(request("/notes/over-plan"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let recorded = events(&f, t).await;
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].outcome, "denied");
    assert_eq!(
        recorded[0].record_json().unwrap()["outcome"]["reason"],
        "plan_limit"
    );
}

#[tokio::test]
async fn a_privileged_route_without_a_tenant_context_does_not_run() {
    let f = fixture(2).await;
    let response = app(&f, None).oneshot(request("/notes/n1")).await.unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"], "audit_context_missing");
    let admin = f.db.pool(testkit::Role::Admin, 1).await;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM audit.events")
        .fetch_one(&admin)
        .await
        .unwrap();
    assert_eq!(n, 0);
}

#[tokio::test]
async fn an_allowed_action_whose_record_cannot_be_written_answers_503() {
    let f = fixture(2).await;
    let t = TenantId::new_random();
    let router = app(&f, Some(TenantContext::for_actor(actor(t))));
    f.log.pool().pool().close().await;
    let response = router.oneshot(request("/notes/n1")).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"], "audit_unavailable");
}

#[tokio::test]
async fn a_handler_appending_in_its_transaction_is_recorded_once_and_atomically() {
    let f = fixture(2).await;
    let t = TenantId::new_random();
    let pool = f.log.pool().clone();
    let handler = move |axum::Extension(ctx): axum::Extension<TenantContext>,
                        axum::Extension(audit): axum::Extension<AuditHandle>| {
        let pool = pool.clone();
        async move {
            let mut tx = pool.begin(&ctx).await.unwrap();
            sqlx::query("INSERT INTO notes (tenant_id, body) VALUES ($1, 'x')")
                .bind(ctx.tenant().as_uuid())
                .execute(&mut *tx)
                .await
                .unwrap();
            let event = audit
                .event(Outcome::Allowed)
                .with_metadata(serde_json::json!({ "rows": 1 }))
                .unwrap();
            audit.append(&mut tx, event).await.unwrap();
            tx.commit().await.unwrap();
            StatusCode::CREATED
        }
    };
    let context = TenantContext::for_actor(actor(t));
    let router = in_context(
        Router::new()
            .route("/notes", post(handler))
            .layer(AuditLayer::new(
                f.log.clone(),
                Action::new("note.created").unwrap(),
            )),
        context,
    );
    let response = router.oneshot(request("/notes")).await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let recorded = events(&f, t).await;
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].record_json().unwrap()["metadata"]["rows"], 1);
}

/// A handler that appends through its handle and then rolls its transaction back (it answers
/// success anyway): the append never happened, so the layer records the request itself. The
/// positive control is the test above (committed: recorded once, by the handler).
#[tokio::test]
async fn a_rolled_back_handle_append_leaves_the_layer_to_record_the_request() {
    let f = fixture(2).await;
    let t = TenantId::new_random();
    let pool = f.log.pool().clone();
    let handler = move |axum::Extension(ctx): axum::Extension<TenantContext>,
                        axum::Extension(audit): axum::Extension<AuditHandle>| {
        let pool = pool.clone();
        async move {
            let mut tx = pool.begin(&ctx).await.unwrap();
            let event = audit
                .event(Outcome::Allowed)
                .with_metadata(serde_json::json!({ "rows": 1 }))
                .unwrap();
            audit.append(&mut tx, event).await.unwrap();
            tx.rollback().await.unwrap();
            StatusCode::CREATED
        }
    };
    let context = TenantContext::for_actor(actor(t));
    let router = in_context(
        Router::new()
            .route("/notes", post(handler))
            .layer(AuditLayer::new(
                f.log.clone(),
                Action::new("note.created").unwrap(),
            )),
        context,
    );
    let response = router.oneshot(request("/notes")).await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let recorded = events(&f, t).await;
    assert_eq!(recorded.len(), 1, "the layer's own record");
    let record = recorded[0].record_json().unwrap();
    assert_eq!(record["action"], "note.created");
    assert!(
        record.get("metadata").is_none(),
        "not the rolled-back event: {record}"
    );
}

/// Appends inside a savepoint, rolls back to it, commits (recording in `refused` whether the
/// commit was refused) and answers success anyway.
async fn savepoint_handler(
    pool: rls_guard::TenantPool,
    ctx: TenantContext,
    audit: AuditHandle,
    refused: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> StatusCode {
    let mut tx = pool.begin(&ctx).await.unwrap();
    sqlx::query("SAVEPOINT s").execute(&mut *tx).await.unwrap();
    let event = audit
        .event(Outcome::Allowed)
        .with_metadata(serde_json::json!({ "rows": 1 }))
        .unwrap();
    audit.append(&mut tx, event).await.unwrap();
    sqlx::query("ROLLBACK TO SAVEPOINT s")
        .execute(&mut *tx)
        .await
        .unwrap();
    refused.store(
        tx.commit().await.is_err(),
        std::sync::atomic::Ordering::SeqCst,
    );
    StatusCode::CREATED
}

/// Rolls the appended event back to a savepoint and commits with a raw `COMMIT`, around
/// `TenantTx::commit` and its check; answers success.
async fn raw_commit_handler(
    pool: rls_guard::TenantPool,
    ctx: TenantContext,
    audit: AuditHandle,
) -> StatusCode {
    let mut tx = pool.begin(&ctx).await.unwrap();
    sqlx::query("SAVEPOINT s").execute(&mut *tx).await.unwrap();
    let event = audit
        .event(Outcome::Allowed)
        .with_metadata(serde_json::json!({ "rows": 1 }))
        .unwrap();
    audit.append(&mut tx, event).await.unwrap();
    sqlx::query("ROLLBACK TO SAVEPOINT s")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("COMMIT").execute(&mut *tx).await.unwrap();
    drop(tx);
    StatusCode::CREATED
}

/// The transaction committed (SQL inside it sent `COMMIT`) without its check, and without the
/// event: no receipt, so the layer records the request itself.
#[tokio::test]
async fn a_commit_around_the_check_leaves_the_layer_to_record_the_request() {
    let f = fixture(2).await;
    let t = TenantId::new_random();
    let pool = f.log.pool().clone();
    let handler = move |axum::Extension(ctx): axum::Extension<TenantContext>,
                        axum::Extension(audit): axum::Extension<AuditHandle>| {
        raw_commit_handler(pool.clone(), ctx, audit)
    };
    let router = in_context(
        Router::new()
            .route("/notes", post(handler))
            .layer(AuditLayer::new(
                f.log.clone(),
                Action::new("note.created").unwrap(),
            )),
        TenantContext::for_actor(actor(t)),
    );
    let response = router.oneshot(request("/notes")).await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let recorded = events(&f, t).await;
    assert_eq!(recorded.len(), 1, "the layer's own record");
    assert!(recorded[0].record_json().unwrap().get("metadata").is_none());
}

/// A handler whose transaction goes on after its appended event is rolled back to a
/// savepoint (SQL inside it could do that): the commit states that the event is there, so it
/// fails, and the layer records the request itself. Without that check the transaction would
/// commit without the event while its id said "committed".
#[tokio::test]
async fn an_append_rolled_back_to_a_savepoint_fails_the_commit_and_the_layer_records() {
    let f = fixture(2).await;
    let t = TenantId::new_random();
    let pool = f.log.pool().clone();
    let commit_refused = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let refused = commit_refused.clone();
    let handler = move |axum::Extension(ctx): axum::Extension<TenantContext>,
                        axum::Extension(audit): axum::Extension<AuditHandle>| {
        savepoint_handler(pool.clone(), ctx, audit, refused.clone())
    };
    let context = TenantContext::for_actor(actor(t));
    let router = in_context(
        Router::new()
            .route("/notes", post(handler))
            .layer(AuditLayer::new(
                f.log.clone(),
                Action::new("note.created").unwrap(),
            )),
        context,
    );
    let response = router.oneshot(request("/notes")).await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert!(commit_refused.load(std::sync::atomic::Ordering::SeqCst));
    let recorded = events(&f, t).await;
    assert_eq!(recorded.len(), 1, "the layer's own record");
    assert!(recorded[0].record_json().unwrap().get("metadata").is_none());
}

#[tokio::test]
async fn cross_tenant_grants_are_recorded_in_the_target_tenants_chain() {
    use tenant_scope::{ActorId, ActorKind, CrossTenantAudit, CrossTenantEvent, GrantOutcome};
    let f = fixture(2).await;
    let (home, target) = (TenantId::new_random(), TenantId::new_random());
    let staff = Actor::new(ActorKind::Staff, ActorId::new_random(), home);
    let event = CrossTenantEvent::new(
        staff.clone(),
        target,
        "ticket 4711: customer bob@example.org cannot sign in",
        std::time::SystemTime::now(),
        GrantOutcome::Granted,
    );
    CrossTenantAudit::record(&f.log, &event).await.unwrap();
    let recorded = events(&f, target).await;
    assert_eq!(recorded.len(), 1);
    let record = recorded[0].record_json().unwrap();
    assert_eq!(record["action"], "tenant.cross_tenant_granted");
    assert_eq!(record["actor"]["kind"], "staff");
    assert_eq!(record["actor"]["tenant"], home.to_string());
    let reason = record["metadata"]["reason"].as_str().unwrap();
    assert!(reason.starts_with("ticket 4711"), "{reason}");
    assert!(!reason.contains("bob@example.org"), "{reason}");
    assert!(events(&f, home).await.is_empty());
}

async fn require_mfa(
    _request: Request<Body>,
    _next: axum::middleware::Next,
) -> axum::response::Response {
    (
        StatusCode::FORBIDDEN,
        axum::Extension(DenialReason("mfa_required")),
        "{\"error\":\"mfa_required\"}",
    )
        .into_response()
}

#[tokio::test]
async fn a_denial_by_a_guard_layer_behind_the_audit_layer_is_recorded_and_the_handler_never_runs() {
    let f = fixture(2).await;
    let t = TenantId::new_random();
    let ran = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = ran.clone();
    let context = TenantContext::for_actor(actor(t));
    let router = in_context(
        Router::new()
            .route(
                "/export",
                post(move || {
                    flag.store(true, std::sync::atomic::Ordering::SeqCst);
                    async { StatusCode::OK }
                }),
            )
            .layer(axum::middleware::from_fn(require_mfa))
            .layer(AuditLayer::new(
                f.log.clone(),
                audit_log::actions::DATA_EXPORTED,
            )),
        context,
    );
    let response = router.oneshot(request("/export")).await.unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert!(!ran.load(std::sync::atomic::Ordering::SeqCst));
    let recorded = events(&f, t).await;
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].action, "data.exported");
    assert_eq!(recorded[0].outcome, "denied");
    assert_eq!(
        recorded[0].record_json().unwrap()["outcome"]["reason"],
        "mfa_required"
    );
}

#[tokio::test]
async fn a_request_without_a_request_id_gets_one() {
    let f = fixture(2).await;
    let t = TenantId::new_random();
    let response = app(&f, Some(TenantContext::for_actor(actor(t))))
        .oneshot(Request::post("/notes/n2").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let recorded = events(&f, t).await;
    let id = recorded[0].request_id.as_deref().unwrap();
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
}
