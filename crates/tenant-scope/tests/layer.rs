//! Attacks on tenant resolution: every refused request must be answered by the layer with the
//! right status and code, and must never reach the handler.
// Integration tests: a failed unwrap is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use tenant_scope::{
    Actor, ActorId, ActorKind, ActorResolver, AllAgree, HeaderResolver, StaticDirectory,
    SubdomainResolver, TenantContext, TenantDirectory, TenantId, TenantLayer, scope,
};
use tower::{Layer, ServiceExt, service_fn};

const HEADER: HeaderName = HeaderName::from_static("x-tenant-id");

struct Harness {
    layer: TenantLayer,
    reached: Arc<AtomicUsize>,
}

impl Harness {
    fn new(layer: TenantLayer) -> Self {
        Self {
            layer,
            reached: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Sends `req` through the layer to a handler that echoes the tenant it saw in the
    /// extensions and in the task-local scope.
    async fn send(&self, req: Request<axum::body::Body>) -> (StatusCode, String) {
        let reached = self.reached.clone();
        let svc = self
            .layer
            .layer(service_fn(move |req: Request<axum::body::Body>| {
                let reached = reached.clone();
                async move {
                    reached.fetch_add(1, Ordering::SeqCst);
                    let from_ext = req.extensions().get::<TenantContext>().unwrap().tenant();
                    let from_scope = scope::current_tenant().unwrap();
                    assert_eq!(from_ext, from_scope);
                    Ok::<_, Infallible>(Response::new(axum::body::Body::from(from_ext.to_string())))
                }
            }));
        let res = svc.oneshot(req).await.unwrap();
        let status = res.status();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    fn reached(&self) -> usize {
        self.reached.load(Ordering::SeqCst)
    }
}

fn actor_and_header() -> Harness {
    Harness::new(TenantLayer::new(
        AllAgree::new()
            .with(ActorResolver)
            .with(HeaderResolver::new(HEADER)),
    ))
}

fn request() -> Request<axum::body::Body> {
    Request::new(axum::body::Body::empty())
}

fn user(tenant: TenantId) -> Actor {
    Actor::new(ActorKind::User, ActorId::new_random(), tenant)
}

fn code(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    v["error"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn signed_in_actor_resolves_own_tenant() {
    let h = actor_and_header();
    let a = TenantId::new_random();
    let mut req = request();
    req.extensions_mut().insert(user(a));
    let (status, body) = h.send(req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, a.to_string());
    assert_eq!(h.reached(), 1);
}

#[tokio::test]
async fn missing_tenant_never_reaches_handler() {
    let h = actor_and_header();
    let (status, body) = h.send(request()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(code(&body), "tenant_required");
    assert_eq!(h.reached(), 0);
}

#[tokio::test]
async fn header_naming_another_tenant_than_the_session_is_refused() {
    let h = actor_and_header();
    let (a, b) = (TenantId::new_random(), TenantId::new_random());
    let mut req = request();
    req.extensions_mut().insert(user(a));
    req.headers_mut()
        .insert(HEADER, HeaderValue::from_str(&b.to_string()).unwrap());
    let (status, body) = h.send(req).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(code(&body), "tenant_mismatch");
    assert!(!body.contains(&b.to_string()) && !body.contains(&a.to_string()));
    assert_eq!(h.reached(), 0);
}

#[tokio::test]
async fn staff_cannot_switch_tenant_with_a_header() {
    // Request input cannot activate cross-tenant access, not even for staff.
    let h = actor_and_header();
    let (a, b) = (TenantId::new_random(), TenantId::new_random());
    let mut req = request();
    req.extensions_mut()
        .insert(Actor::new(ActorKind::Staff, ActorId::new_random(), a));
    req.headers_mut()
        .insert(HEADER, HeaderValue::from_str(&b.to_string()).unwrap());
    let (status, _) = h.send(req).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(h.reached(), 0);
}

#[tokio::test]
async fn header_only_resolver_still_checks_the_actor() {
    // Even a layer configured with the header alone refuses a header that disagrees with the
    // signed-in actor.
    let h = Harness::new(TenantLayer::new(HeaderResolver::new(HEADER)));
    let (a, b) = (TenantId::new_random(), TenantId::new_random());
    let mut req = request();
    req.extensions_mut().insert(user(a));
    req.headers_mut()
        .insert(HEADER, HeaderValue::from_str(&b.to_string()).unwrap());
    let (status, body) = h.send(req).await;
    assert_eq!(
        (status, code(&body).as_str()),
        (StatusCode::FORBIDDEN, "tenant_mismatch")
    );
    assert_eq!(h.reached(), 0);
}

#[tokio::test]
async fn malformed_header_is_refused_even_when_session_names_a_tenant() {
    let bad_values: [&[u8]; 7] = [
        b"not-a-uuid",
        b"",
        b"00000000-0000-0000-0000-000000000000",
        b"{7f1c1f5e-8d2a-4c55-9a59-1f3f2c6a0b11}",
        b"7f1c1f5e8d2a4c559a591f3f2c6a0b11",
        b"7f1c1f5e-8d2a-4c55-9a59-1f3f2c6a0b11, 7f1c1f5e-8d2a-4c55-9a59-1f3f2c6a0b12",
        b"\xff\xfe",
    ];
    for raw in bad_values {
        let h = actor_and_header();
        let mut req = request();
        req.extensions_mut().insert(user(TenantId::new_random()));
        req.headers_mut()
            .insert(HEADER, HeaderValue::from_bytes(raw).unwrap());
        let (status, body) = h.send(req).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{raw:?}");
        assert_eq!(code(&body), "tenant_malformed");
        assert_eq!(h.reached(), 0);
    }
}

#[tokio::test]
async fn duplicate_tenant_headers_are_refused() {
    let h = actor_and_header();
    let a = TenantId::new_random();
    let mut req = request();
    let v = HeaderValue::from_str(&a.to_string()).unwrap();
    req.headers_mut().append(HEADER, v.clone());
    req.headers_mut().append(HEADER, v);
    let (status, _) = h.send(req).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(h.reached(), 0);
}

fn subdomain_harness(acme: TenantId) -> Harness {
    let dir = Arc::new(StaticDirectory::new().with_tenant("acme", acme));
    Harness::new(TenantLayer::new(
        AllAgree::new()
            .with(ActorResolver)
            .with(SubdomainResolver::new("example.com", dir)),
    ))
}

#[tokio::test]
async fn subdomain_resolves_known_slug() {
    let acme = TenantId::new_random();
    let h = subdomain_harness(acme);
    for host in [
        "acme.example.com",
        "ACME.Example.com:8443",
        "acme.example.com.",
    ] {
        let mut req = request();
        req.headers_mut()
            .insert(http::header::HOST, HeaderValue::from_str(host).unwrap());
        let (status, body) = h.send(req).await;
        assert_eq!((status, body), (StatusCode::OK, acme.to_string()), "{host}");
    }
}

#[tokio::test]
async fn subdomain_attacks_are_refused() {
    let acme = TenantId::new_random();
    let cases: [(&str, StatusCode, &str); 5] = [
        ("nope.example.com", StatusCode::FORBIDDEN, "tenant_unknown"),
        (
            "a.acme.example.com",
            StatusCode::BAD_REQUEST,
            "tenant_malformed",
        ),
        (
            "-acme.example.com",
            StatusCode::BAD_REQUEST,
            "tenant_malformed",
        ),
        (
            "user@acme.example.com",
            StatusCode::BAD_REQUEST,
            "tenant_malformed",
        ),
        // Not under our domain: no tenant source at all.
        (
            "acme.example.com.evil.test",
            StatusCode::BAD_REQUEST,
            "tenant_required",
        ),
    ];
    for (host, want_status, want_code) in cases {
        let h = subdomain_harness(acme);
        let mut req = request();
        req.headers_mut()
            .insert(http::header::HOST, HeaderValue::from_str(host).unwrap());
        let (status, body) = h.send(req).await;
        assert_eq!(
            (status, code(&body).as_str()),
            (want_status, want_code),
            "{host}"
        );
        assert_eq!(h.reached(), 0, "{host}");
    }
}

#[tokio::test]
async fn signed_in_actor_cannot_probe_which_slugs_exist() {
    let acme = TenantId::new_random();
    let mut answers = Vec::new();
    for host in ["acme.example.com", "nope.example.com"] {
        let h = subdomain_harness(acme);
        let mut req = request();
        req.extensions_mut().insert(user(TenantId::new_random()));
        req.headers_mut()
            .insert(http::header::HOST, HeaderValue::from_str(host).unwrap());
        answers.push(h.send(req).await);
        assert_eq!(h.reached(), 0);
    }
    assert_eq!(answers[0], answers[1]);
    assert_eq!(answers[0].0, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn host_header_and_uri_authority_must_agree() {
    let acme = TenantId::new_random();
    let h = subdomain_harness(acme);
    let mut req = Request::builder()
        .uri("https://other.example.com/")
        .body(axum::body::Body::empty())
        .unwrap();
    req.headers_mut().insert(
        http::header::HOST,
        HeaderValue::from_static("acme.example.com"),
    );
    let (status, _) = h.send(req).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(h.reached(), 0);
}

#[tokio::test]
async fn subdomain_of_another_tenant_than_the_session_is_refused() {
    let acme = TenantId::new_random();
    let h = subdomain_harness(acme);
    let mut req = request();
    req.extensions_mut().insert(user(TenantId::new_random()));
    req.headers_mut().insert(
        http::header::HOST,
        HeaderValue::from_static("acme.example.com"),
    );
    let (status, body) = h.send(req).await;
    assert_eq!(
        (status, code(&body).as_str()),
        (StatusCode::FORBIDDEN, "tenant_mismatch")
    );
    assert_eq!(h.reached(), 0);
}

struct Unreachable;

#[derive(Debug, thiserror::Error)]
#[error("connection refused")]
struct Down;

impl TenantDirectory for Unreachable {
    type Error = Down;

    async fn by_slug(&self, _: &str) -> Result<Option<TenantId>, Down> {
        Err(Down)
    }
    async fn contains(&self, _: TenantId) -> Result<bool, Down> {
        Err(Down)
    }
}

/// A directory that answers only after yielding to the runtime, as a database query would.
struct Slow(StaticDirectory);

impl TenantDirectory for Slow {
    type Error = Infallible;

    async fn by_slug(&self, slug: &str) -> Result<Option<TenantId>, Self::Error> {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        self.0.by_slug(slug).await
    }
    async fn contains(&self, tenant: TenantId) -> Result<bool, Self::Error> {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        self.0.contains(tenant).await
    }
}

#[tokio::test]
async fn an_async_directory_is_awaited_before_the_handler_and_still_refuses_unknowns() {
    let acme = TenantId::new_random();
    let dir = Slow(StaticDirectory::new().with_tenant("acme", acme));
    let h = Harness::new(TenantLayer::new(SubdomainResolver::new("example.com", dir)));
    // Positive control: a known slug reaches the handler, inside the tenant's scope.
    let mut req = request();
    req.headers_mut().insert(
        http::header::HOST,
        HeaderValue::from_static("acme.example.com"),
    );
    assert_eq!(h.send(req).await, (StatusCode::OK, acme.to_string()));
    assert_eq!(h.reached(), 1);
    // An unknown slug is refused after the lookup, and never reaches the handler.
    let mut req = request();
    req.headers_mut().insert(
        http::header::HOST,
        HeaderValue::from_static("evil.example.com"),
    );
    let (status, body) = h.send(req).await;
    assert_eq!(
        (status, code(&body).as_str()),
        (StatusCode::FORBIDDEN, "tenant_unknown")
    );
    assert_eq!(h.reached(), 1);
}

#[tokio::test]
async fn a_subdomain_directory_that_cannot_answer_fails_closed_with_503() {
    let h = Harness::new(TenantLayer::new(SubdomainResolver::new(
        "example.com",
        Unreachable,
    )));
    let mut req = request();
    req.headers_mut().insert(
        http::header::HOST,
        HeaderValue::from_static("acme.example.com"),
    );
    let (status, body) = h.send(req).await;
    assert_eq!(
        (status, code(&body).as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "tenant_unavailable")
    );
    assert!(
        !body.contains("connection refused"),
        "the cause stays in the log"
    );
    assert_eq!(h.reached(), 0);
}

#[tokio::test]
async fn directory_failure_fails_closed_with_503() {
    let h = Harness::new(TenantLayer::new(ActorResolver).with_directory(Unreachable));
    let mut req = request();
    req.extensions_mut().insert(user(TenantId::new_random()));
    let (status, body) = h.send(req).await;
    assert_eq!(
        (status, code(&body).as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "tenant_unavailable")
    );
    assert_eq!(h.reached(), 0);
}

#[tokio::test]
async fn tenant_unknown_to_directory_is_refused() {
    let known = TenantId::new_random();
    let dir = Arc::new(StaticDirectory::new().with_tenant("known", known));
    let h = Harness::new(TenantLayer::new(HeaderResolver::new(HEADER)).with_directory(dir));
    let mut req = request();
    req.headers_mut().insert(
        HEADER,
        HeaderValue::from_str(&TenantId::new_random().to_string()).unwrap(),
    );
    let (status, body) = h.send(req).await;
    assert_eq!(
        (status, code(&body).as_str()),
        (StatusCode::FORBIDDEN, "tenant_unknown")
    );
    assert_eq!(h.reached(), 0);

    let mut req = request();
    req.headers_mut()
        .insert(HEADER, HeaderValue::from_str(&known.to_string()).unwrap());
    assert_eq!(h.send(req).await, (StatusCode::OK, known.to_string()));
}

#[test]
fn the_middleware_is_built_either_way_and_exposes_its_inner_service() {
    use tenant_scope::Tenant;

    let layer = Tenant::layer(ActorResolver);
    let mut svc = layer.layer(7_u8);
    assert_eq!(*svc.get_ref(), 7);
    *svc.get_mut() = 8;
    assert_eq!(svc.into_inner(), 8);
    assert_eq!(Tenant::new(9_u8, layer).into_inner(), 9);
}
