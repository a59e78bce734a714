//! The axum extractor refuses handlers on routes that resolved no tenant.
// Integration tests: a failed unwrap is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::{Router, routing::get};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use tenant_scope::TenantContext;
use tower::ServiceExt;

#[tokio::test]
async fn axum_extractor_refuses_route_without_layer() {
    let reached = Arc::new(AtomicUsize::new(0));
    let r2 = reached.clone();
    let app = Router::new().route(
        "/",
        get(move |ctx: TenantContext| {
            let r2 = r2.clone();
            async move {
                r2.fetch_add(1, Ordering::SeqCst);
                ctx.tenant().to_string()
            }
        }),
    );
    let res = app
        .oneshot(Request::new(axum::body::Body::empty()))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"], "tenant_not_resolved");
    assert_eq!(reached.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn optional_extractor_is_none_without_the_layer_and_some_with_it() {
    use tenant_scope::{ActorResolver, AllAgree, HeaderResolver, TenantLayer};

    let handler = get(|ctx: Option<TenantContext>| async move {
        ctx.map_or_else(|| "none".to_owned(), |c| c.tenant().to_string())
    });
    // Without the layer the handler runs, and sees no tenant.
    let bare = Router::new().route("/", handler.clone());
    let res = bare
        .oneshot(Request::new(axum::body::Body::empty()))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"none");

    // Behind the layer it sees the resolved tenant.
    let tenant = tenant_scope::TenantId::new_random();
    let layered = Router::new().route("/", handler).layer(TenantLayer::new(
        AllAgree::new()
            .with(ActorResolver)
            .with(HeaderResolver::new(http::HeaderName::from_static(
                "x-tenant-id",
            ))),
    ));
    let req = Request::builder()
        .header("x-tenant-id", tenant.to_string())
        .body(axum::body::Body::empty())
        .unwrap();
    let res = layered.oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, tenant.to_string());
}
