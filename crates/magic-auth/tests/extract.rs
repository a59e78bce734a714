//! The `Session` extractors (feature `axum`) and a custom guard on a router.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::body::Body;
use axum::routing::{get, post};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use magic_auth::{Assurance, AuthRejection, Guard, Session, SessionConfig};
use tenant_scope::{ActorId, ActorKind, Rejection, TenantId};
use time::OffsetDateTime;
use tower::ServiceExt;

fn session(kind: ActorKind) -> Session {
    Session::new(
        TenantId::new_random(),
        uuid::Uuid::new_v4(),
        ActorId::new_random(),
        kind,
        Assurance::Aal2,
        OffsetDateTime::now_utc(),
        &SessionConfig::default(),
    )
    .unwrap()
}

/// What the session layer would have put in the request.
fn request(method: &str, session: Option<Session>) -> Request<Body> {
    let mut r = Request::builder()
        .method(method)
        .uri("/x")
        .body(Body::empty())
        .unwrap();
    if let Some(s) = session {
        r.extensions_mut().insert(s);
    }
    r
}

async fn json(response: axum::response::Response) -> serde_json::Value {
    let body = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&body).unwrap()
}

#[tokio::test]
async fn a_handler_taking_a_session_is_refused_401_without_one_and_never_runs() {
    let reached = Arc::new(AtomicUsize::new(0));
    let r = reached.clone();
    let app = Router::new().route(
        "/x",
        get(move |s: Session| {
            let r = r.clone();
            async move {
                r.fetch_add(1, Ordering::SeqCst);
                s.user.to_string()
            }
        }),
    );
    let response = app.clone().oneshot(request("GET", None)).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        response.extensions().get::<AuthRejection>(),
        Some(&AuthRejection::Unauthenticated)
    );
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body = json(response).await;
    assert_eq!(body["error"], "unauthenticated");
    assert_eq!(reached.load(Ordering::SeqCst), 0);

    // Positive control: with a session the handler runs and sees it.
    let s = session(ActorKind::User);
    let response = app.oneshot(request("GET", Some(s.clone()))).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, s.user.to_string());
    assert_eq!(reached.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_optional_session_is_none_for_anonymous_requests() {
    let app = Router::new().route(
        "/x",
        get(|s: Option<Session>| async move {
            s.map_or_else(|| "anonymous".to_owned(), |s| s.user.to_string())
        }),
    );
    let response = app.clone().oneshot(request("GET", None)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"anonymous");

    let s = session(ActorKind::Staff);
    let response = app.oneshot(request("GET", Some(s.clone()))).await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, s.user.to_string());
}

/// A member trying the staff-only route is refused by the application's own check, with its own
/// code in the workspace's shape, before the handler runs; staff get through.
#[tokio::test]
async fn a_custom_guard_on_a_router_refuses_before_the_handler() {
    let reached = Arc::new(AtomicUsize::new(0));
    let r = reached.clone();
    let app = Router::new()
        .route(
            "/x",
            post(move || {
                let r = r.clone();
                async move {
                    r.fetch_add(1, Ordering::SeqCst);
                    StatusCode::NO_CONTENT
                }
            }),
        )
        .layer(Guard::custom(|s, _parts| {
            if s.kind == ActorKind::Staff {
                Ok(())
            } else {
                Err(Rejection::new(
                    StatusCode::FORBIDDEN,
                    "staff_only",
                    "this action is for staff",
                ))
            }
        }));
    let response = app
        .clone()
        .oneshot(request("POST", Some(session(ActorKind::User))))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let body = json(response).await;
    assert_eq!(body["error"], "staff_only");
    assert_eq!(body["message"], "this action is for staff");
    assert_eq!(reached.load(Ordering::SeqCst), 0);

    let response = app.clone().oneshot(request("POST", None)).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(reached.load(Ordering::SeqCst), 0);

    let response = app
        .oneshot(request("POST", Some(session(ActorKind::Staff))))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(reached.load(Ordering::SeqCst), 1);
}
