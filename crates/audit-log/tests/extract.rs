//! The `AuditHandle` extractor (feature `axum`): present behind the layer, refused without it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use audit_log::{Action, AuditHandle, AuditLayer, Outcome};
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::routing::post;
use common::*;
use http_body_util::BodyExt;
use tenant_scope::{TenantContext, TenantId};
use tower::ServiceExt;

fn request() -> Request<Body> {
    Request::post("/notes").body(Body::empty()).unwrap()
}

/// A handler asking for the handle on a route nobody audits is refused before it runs: a
/// privileged action must not run unrecorded because a layer was left off.
#[tokio::test]
async fn a_handler_needing_the_handle_on_an_unaudited_route_does_not_run() {
    let reached = Arc::new(AtomicUsize::new(0));
    let r = reached.clone();
    let app = Router::new().route(
        "/notes",
        post(move |_audit: AuditHandle| {
            let r = r.clone();
            async move {
                r.fetch_add(1, Ordering::SeqCst);
                StatusCode::CREATED
            }
        }),
    );
    let response = app.oneshot(request()).await.unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"], "audit_handle_missing");
    assert_eq!(reached.load(Ordering::SeqCst), 0);

    // `Option<AuditHandle>` runs, and sees none.
    let app = Router::new().route(
        "/notes",
        post(|audit: Option<AuditHandle>| async move {
            if audit.is_some() {
                StatusCode::CREATED
            } else {
                StatusCode::NO_CONTENT
            }
        }),
    );
    let response = app.oneshot(request()).await.unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
}

/// Positive control: behind the layer, both forms get the handle, and an event appended
/// through it is the one recorded.
#[tokio::test]
async fn behind_the_layer_the_handle_is_extracted_and_appends() {
    let f = fixture(2).await;
    let t = TenantId::new_random();
    let pool = f.log.pool().clone();
    let handler = move |ctx: TenantContext, audit: AuditHandle, again: Option<AuditHandle>| {
        let pool = pool.clone();
        async move {
            assert!(again.is_some());
            let mut tx = pool.begin(&ctx).await.unwrap();
            let event = audit
                .event(Outcome::Allowed)
                .with_metadata(serde_json::json!({ "via": "extractor" }))
                .unwrap();
            audit.append(&mut tx, event).await.unwrap();
            tx.commit().await.unwrap();
            StatusCode::CREATED
        }
    };
    let context = TenantContext::for_actor(actor(t));
    let router = Router::new()
        .route("/notes", post(handler))
        .layer(AuditLayer::new(
            f.log.clone(),
            Action::new("note.created").unwrap(),
        ))
        .layer(tower::util::MapRequestLayer::new(
            move |mut req: Request<Body>| {
                req.extensions_mut().insert(context.clone());
                req
            },
        ));
    let response = router.oneshot(request()).await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(sequence_all(&f).await, 1);
    let recorded = audit_log::AuditQuery::new(t).fetch(&f.raw).await.unwrap();
    assert_eq!(recorded.len(), 1);
    assert_eq!(
        recorded[0].record_json().unwrap()["metadata"]["via"],
        "extractor"
    );
}
