//! The whole sign-in on an axum router, as an application would wire it: request a link, click,
//! confirm, TOTP, an `aal2` session, step-up, revoke — and the guards on the way.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use magic_auth::secrecy::ExposeSecret;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use field_crypto::{KeyMaterial, Keyring};
use http_body_util::BodyExt;
use magic_auth::mailer::DevOutbox;
use magic_auth::totp::{CodeCheck, TotpConfig, TotpService, code_at};
use magic_auth::{
    Account, AccountDirectory, Assurance, EmailAddress, Guard, LinkConfig, MagicLinks, NewSession,
    Session, SessionConfig, SessionManagerLayer, SessionStore, cookie_value, session_cookie,
};
use rls_guard::TenantPool;
use rls_guard::schema::SUPPORT_SQL;
use tenant_scope::{ActorId, ActorKind, TenantId};
use testkit::{Role, Template, fresh_database};
use tower::ServiceExt;

const VERIFIER_COOKIE: &str = "__Host-login-verifier";

#[derive(Default)]
struct Recorder(std::sync::Mutex<Vec<magic_auth::AuthEvent>>);

impl magic_auth::AuthEvents for Recorder {
    fn record(&self, event: &magic_auth::AuthEvent) {
        self.0.lock().unwrap().push(event.clone());
    }
}

struct Directory(TenantId, ActorId);

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

impl AccountDirectory for Directory {
    type Error = Never;
    async fn find(&self, tenant: TenantId, email: &EmailAddress) -> Result<Option<Account>, Never> {
        Ok(
            (tenant == self.0 && email.as_str() == "ops@example.com").then_some(Account::new(
                self.1,
                ActorKind::Staff,
                false,
            )),
        )
    }
    async fn find_by_user(
        &self,
        tenant: TenantId,
        user: ActorId,
    ) -> Result<Option<Account>, Never> {
        Ok((tenant == self.0 && user == self.1).then_some(Account::new(
            self.1,
            ActorKind::Staff,
            false,
        )))
    }
    async fn address_of(
        &self,
        tenant: TenantId,
        user: ActorId,
    ) -> Result<Option<EmailAddress>, Never> {
        Ok((tenant == self.0 && user == self.1)
            .then(|| EmailAddress::parse("ops@example.com").ok())
            .flatten())
    }
    // The flow never changes an address.
    async fn change_email(
        &self,
        _: TenantId,
        _: ActorId,
        _: &EmailAddress,
    ) -> Result<magic_auth::EmailChange, Never> {
        Ok(magic_auth::EmailChange::NoAccount)
    }
}

#[derive(Clone)]
struct App {
    tenant: TenantId,
    links: MagicLinks<Directory, DevOutbox>,
    sessions: SessionStore,
    totp: Arc<TotpService>,
}

async fn request_link(State(app): State<App>, Form(f): Form<HashMap<String, String>>) -> Response {
    let email = f.get("email").map_or("", String::as_str);
    match app.links.request(app.tenant, email, None).await {
        Ok(r) => {
            // The delivery runs on; the answer does not wait for it.
            drop(r.delivery);
            let cookie = format!(
                "{VERIFIER_COOKIE}={}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=900",
                r.verifier.expose_secret()
            );
            (
                StatusCode::ACCEPTED,
                [(header::SET_COOKIE, cookie)],
                "check your email",
            )
                .into_response()
        }
        Err(_) => (StatusCode::BAD_REQUEST, "invalid address").into_response(),
    }
}

/// The landing page: a form that posts the token back. No database, nothing consumed.
async fn landing(Query(q): Query<HashMap<String, String>>) -> Response {
    let token = q.get("token").cloned().unwrap_or_default();
    let token: String = token
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '.')
        .collect();
    (
        [(header::REFERRER_POLICY, "no-referrer"), (header::CACHE_CONTROL, "no-store")],
        format!("<form method=post><input type=hidden name=token value=\"{token}\"><button>Sign in</button></form>"),
    )
        .into_response()
}

async fn confirm_link(
    State(app): State<App>,
    headers: HeaderMap,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    let verifier = cookie_value(&headers, VERIFIER_COOKIE).unwrap_or("");
    let Ok(sign_in) = app
        .links
        .confirm(f.get("token").map_or("", String::as_str), verifier)
        .await
    else {
        return (StatusCode::UNAUTHORIZED, "invalid link").into_response();
    };
    let (session, token) = app.sessions.sign_in(&sign_in, None, None).await.unwrap();
    (
        [
            (header::SET_COOKIE, session_cookie(&token, &session)),
            (header::REFERRER_POLICY, "no-referrer".parse().unwrap()),
        ],
        "signed in (aal1)",
    )
        .into_response()
}

/// The second factor, for sign-in (aal1 -> aal2) and step-up alike: a fresh session either way.
async fn totp(
    State(app): State<App>,
    axum::Extension(session): axum::Extension<Session>,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    let now = u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp()).unwrap();
    let code = f.get("code").map_or("", String::as_str);
    match app
        .totp
        .verify(session.tenant, session.user, code, now)
        .await
        .unwrap()
    {
        CodeCheck::Accepted { .. } => {
            let (session, token) = app
                .sessions
                .rotate(&session, Assurance::Aal2)
                .await
                .unwrap();
            (
                [(header::SET_COOKIE, session_cookie(&token, &session))],
                "aal2",
            )
                .into_response()
        }
        _ => (StatusCode::UNAUTHORIZED, "wrong code").into_response(),
    }
}

async fn revoke_others(
    State(app): State<App>,
    axum::Extension(session): axum::Extension<Session>,
) -> Response {
    let n = app
        .sessions
        .revoke_all(session.tenant, session.user, Some(session.id))
        .await
        .unwrap();
    format!("revoked {n}").into_response()
}

fn router(app: App) -> Router {
    let staff = Router::new()
        .route("/admin", get(|| async { "admin" }))
        .layer(Guard::require_mfa());
    let sensitive = Router::new()
        .route("/admin/export", post(|| async { "exported" }))
        .layer(Guard::require_step_up(Duration::from_secs(600)))
        .layer(Guard::require_mfa());
    let signed_in = Router::new()
        .route("/auth/totp", post(totp))
        .route("/sessions/revoke-others", post(revoke_others))
        .layer(Guard::require_auth());
    Router::new()
        .route("/auth/request", post(request_link))
        .route("/auth/link", get(landing).post(confirm_link))
        .merge(staff)
        .merge(sensitive)
        .merge(signed_in)
        .layer(Guard::same_origin(&["https://app.example.test"]))
        .layer(SessionManagerLayer::new(app.sessions.clone()))
        .with_state(app)
}

fn req(method: &str, uri: &str, cookies: &[&str], form: Option<String>) -> Request<Body> {
    let mut b = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::ORIGIN, "https://app.example.test");
    if !cookies.is_empty() {
        b = b.header(header::COOKIE, cookies.join("; "));
    }
    match form {
        Some(f) => b
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(f))
            .unwrap(),
        None => b.body(Body::empty()).unwrap(),
    }
}

fn set_cookie(r: &Response) -> String {
    let v = r.headers()[header::SET_COOKIE].to_str().unwrap();
    v.split(';').next().unwrap().to_owned()
}

async fn text(r: Response) -> String {
    String::from_utf8(r.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

#[tokio::test]
async fn the_whole_sign_in_link_totp_aal2_step_up_and_revoke() {
    let sql = format!(
        "{SUPPORT_SQL}\n{}",
        magic_auth::schema::schema_sql("testkit_runtime").unwrap()
    );
    let db = fresh_database(&Template::new("magic_auth_flow", sql)).await;
    let pool = TenantPool::new(db.pool(Role::Runtime, 4).await)
        .await
        .unwrap();
    let (tenant, staff) = (TenantId::new_random(), ActorId::new_random());
    let outbox = Arc::new(DevOutbox::new());
    let mut keyring = Keyring::new();
    keyring
        .add_key(1, &KeyMaterial::from_bytes(Box::new([5; 32])))
        .unwrap();
    keyring.promote(1).unwrap();
    let recorder = Arc::new(Recorder::default());
    let totp = Arc::new(
        TotpService::new(pool.clone(), Arc::new(keyring), TotpConfig::new("Flow"))
            .unwrap()
            .with_events(recorder.clone()),
    );
    // The staff member enrolled TOTP earlier.
    let e = totp.enroll(tenant, staff, "ops@example.com").await.unwrap();
    let seed = totp_rs::Secret::try_from_base32(e.secret_base32.expose_secret())
        .unwrap()
        .as_bytes()
        .to_vec()
        .into();
    let now = u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp()).unwrap();
    let code = code_at(&seed, now - 30).unwrap();
    totp.confirm(tenant, staff, code.expose_secret(), now - 30)
        .await
        .unwrap();
    let app = App {
        tenant,
        links: MagicLinks::new(
            pool.clone(),
            Arc::new(Directory(tenant, staff)),
            outbox.clone(),
            LinkConfig::new("https://app.example.test").unwrap(),
            Box::new([7; 32]),
        )
        .unwrap()
        .with_events(recorder.clone()),
        sessions: SessionStore::new(pool, SessionConfig::default(), Box::new([7; 32]))
            .unwrap()
            .with_events(recorder.clone()),
        totp,
    };
    let app_router = router(app.clone());

    // 1. Request a link: the same answer for an unknown address.
    // A forged Host header changes nothing: links are built from the configured base URL.
    let mut forged_host = req(
        "POST",
        "/auth/request",
        &[],
        Some("email=ops%40example.com".into()),
    );
    forged_host
        .headers_mut()
        .insert(header::HOST, "evil.example".parse().unwrap());
    let r = app_router.clone().oneshot(forged_host).await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let verifier = set_cookie(&r);
    let unknown = app_router
        .clone()
        .oneshot(req(
            "POST",
            "/auth/request",
            &[],
            Some("email=who%40example.com".into()),
        ))
        .await
        .unwrap();
    assert_eq!(unknown.status(), StatusCode::ACCEPTED);
    assert_eq!(text(unknown).await, "check your email");
    // Wait for the background delivery.
    for _ in 0..100 {
        if !outbox.messages().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let body = outbox.messages()[0].body.expose_secret().to_owned();
    assert!(!body.contains("evil.example"), "{body}");
    let link = body
        .lines()
        .find(|l| l.starts_with("https://app.example.test/auth/link?token="))
        .unwrap();
    let path = link.trim_start_matches("https://app.example.test");
    let token = path.split("token=").nth(1).unwrap().to_owned();

    // 2. A scanner's GET and HEAD neither sign in nor burn the link.
    for method in ["GET", "HEAD"] {
        let r = app_router
            .clone()
            .oneshot(req(method, path, &[], None))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[header::REFERRER_POLICY], "no-referrer");
        assert!(r.headers().get(header::SET_COOKIE).is_none());
    }
    // 3. Another browser cannot confirm it.
    let r = app_router
        .clone()
        .oneshot(req(
            "POST",
            "/auth/link",
            &[],
            Some(format!("token={token}")),
        ))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // 4. The browser that asked confirms: an aal1 session.
    let r = app_router
        .clone()
        .oneshot(req(
            "POST",
            "/auth/link",
            &[&verifier],
            Some(format!("token={token}")),
        ))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let aal1 = set_cookie(&r);
    // Staff at aal1: mfa_required.
    let r = app_router
        .clone()
        .oneshot(req("GET", "/admin", &[&aal1], None))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(text(r).await.contains("mfa_required"));
    // 5. TOTP: a new, aal2 session; the aal1 token is dead (no fixation, no reuse).
    let code = code_at(&seed, now).unwrap();
    let code = code.expose_secret();
    let r = app_router
        .clone()
        .oneshot(req(
            "POST",
            "/auth/totp",
            &[&aal1],
            Some(format!("code={code}")),
        ))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let aal2 = set_cookie(&r);
    assert_ne!(aal1, aal2);
    let r = app_router
        .clone()
        .oneshot(req("GET", "/admin", &[&aal1], None))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = app_router
        .clone()
        .oneshot(req("GET", "/admin", &[&aal2], None))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // 6. Sensitive action: fresh from the second factor, allowed; a cross-origin POST is not.
    let r = app_router
        .clone()
        .oneshot(req("POST", "/admin/export", &[&aal2], None))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let mut forged = req("POST", "/admin/export", &[&aal2], None);
    forged
        .headers_mut()
        .insert(header::ORIGIN, "https://evil.example".parse().unwrap());
    let r = app_router.clone().oneshot(forged).await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(text(r).await.contains("cross_origin_request"));
    // 7. Revoke every other session; this one still works, and revoking it signs it out.
    let other = app
        .sessions
        .create(
            tenant,
            &NewSession::new(staff, ActorKind::Staff, Assurance::Aal2),
        )
        .await
        .unwrap()
        .1;
    let other_cookie = format!("__Host-session={}", other.to_cookie_value().expose_secret());
    let r = app_router
        .clone()
        .oneshot(req("POST", "/sessions/revoke-others", &[&aal2], None))
        .await
        .unwrap();
    assert_eq!(text(r).await, "revoked 1");
    let r = app_router
        .clone()
        .oneshot(req("GET", "/admin", &[&other_cookie], None))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let current = cookie_value(
        &{
            let mut h = HeaderMap::new();
            h.insert(header::COOKIE, aal2.parse().unwrap());
            h
        },
        "__Host-session",
    )
    .unwrap()
    .to_owned();
    let session = app.sessions.validate(current).await.unwrap().unwrap();
    app.sessions.revoke(tenant, session.id).await.unwrap();
    let r = app_router
        .oneshot(req("GET", "/admin", &[&aal2], None))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // Every step was reported, in order, with identifiers only.
    use magic_auth::AuthEventKind as K;
    let kinds: Vec<K> = recorder.0.lock().unwrap().iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        vec![
            K::MfaEnrolled,
            K::LinkConfirmed,
            K::SessionCreated,
            K::CodeAccepted,
            K::SessionRotated,
            K::SessionCreated,
            K::SessionsRevoked,
            K::SessionRevoked,
        ]
    );
    assert!(
        recorder
            .0
            .lock()
            .unwrap()
            .iter()
            .all(|e| e.tenant == tenant)
    );
}

#[tokio::test]
async fn an_old_sign_in_needs_step_up_for_sensitive_actions() {
    let sql = format!(
        "{SUPPORT_SQL}\n{}",
        magic_auth::schema::schema_sql("testkit_runtime").unwrap()
    );
    let db = fresh_database(&Template::new("magic_auth_flow", sql)).await;
    let pool = TenantPool::new(db.pool(Role::Runtime, 2).await)
        .await
        .unwrap();
    let sessions = SessionStore::new(pool, SessionConfig::default(), Box::new([7; 32])).unwrap();
    let tenant = TenantId::new_random();
    let (session, token) = sessions
        .create(
            tenant,
            &NewSession::new(ActorId::new_random(), ActorKind::User, Assurance::Aal2),
        )
        .await
        .unwrap();
    let app = Router::new()
        .route("/export", post(|| async { "exported" }))
        .layer(Guard::require_step_up(Duration::from_secs(1)))
        .layer(SessionManagerLayer::new(sessions.clone()));
    let cookie = format!("__Host-session={}", token.to_cookie_value().expose_secret());
    let r = app
        .clone()
        .oneshot(req("POST", "/export", &[&cookie], None))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let r = app
        .clone()
        .oneshot(req("POST", "/export", &[&cookie], None))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(text(r).await.contains("step_up_required"));
    // After a step-up (rotation), fresh again; the old token is gone.
    let (_, fresh) = sessions.rotate(&session, Assurance::Aal2).await.unwrap();
    let fresh_cookie = format!("__Host-session={}", fresh.to_cookie_value().expose_secret());
    let r = app
        .clone()
        .oneshot(req("POST", "/export", &[&fresh_cookie], None))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = app
        .oneshot(req("POST", "/export", &[&cookie], None))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn an_unreachable_session_store_refuses_the_request() {
    let sql = format!(
        "{SUPPORT_SQL}\n{}",
        magic_auth::schema::schema_sql("testkit_runtime").unwrap()
    );
    let db = fresh_database(&Template::new("magic_auth_flow", sql)).await;
    let pool = TenantPool::new(db.pool(Role::Runtime, 1).await)
        .await
        .unwrap();
    let sessions =
        SessionStore::new(pool.clone(), SessionConfig::default(), Box::new([7; 32])).unwrap();
    let (_, token) = sessions
        .create(
            TenantId::new_random(),
            &NewSession::new(ActorId::new_random(), ActorKind::User, Assurance::Aal1),
        )
        .await
        .unwrap();
    let app = Router::new()
        .route("/public", get(|| async { "hello" }))
        .layer(SessionManagerLayer::new(sessions));
    pool.pool().close().await;
    let cookie = format!("__Host-session={}", token.to_cookie_value().expose_secret());
    let r = app
        .clone()
        .oneshot(req("GET", "/public", &[&cookie], None))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    // Without a cookie there is nothing to check: the public page answers.
    let r = app.oneshot(req("GET", "/public", &[], None)).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

/// A request carrying `cookie_headers` as raw bytes (not necessarily UTF-8).
fn raw_cookie_request(cookie_headers: &[&[u8]]) -> Request<Body> {
    let mut r = Request::builder().method("GET").uri("/me");
    for value in cookie_headers {
        r = r.header(header::COOKIE, HeaderValue::from_bytes(value).unwrap());
    }
    r.body(Body::empty()).unwrap()
}

#[tokio::test]
async fn a_foreign_non_utf8_cookie_beside_the_session_does_not_hide_it() {
    let sql = format!(
        "{SUPPORT_SQL}\n{}",
        magic_auth::schema::schema_sql("testkit_runtime").unwrap()
    );
    let db = fresh_database(&Template::new("magic_auth_flow", sql)).await;
    let pool = TenantPool::new(db.pool(Role::Runtime, 2).await)
        .await
        .unwrap();
    let sessions = SessionStore::new(pool, SessionConfig::default(), Box::new([7; 32])).unwrap();
    let new = NewSession::new(ActorId::new_random(), ActorKind::User, Assurance::Aal1);
    let tenant = TenantId::new_random();
    let (_, token) = sessions.create(tenant, &new).await.unwrap();
    let (_, other) = sessions.create(tenant, &new).await.unwrap();
    let app = Router::new()
        .route("/me", get(|| async { "signed in" }))
        .layer(Guard::require_auth())
        .layer(SessionManagerLayer::new(sessions));
    let pair = format!("__Host-session={}", token.to_cookie_value().expose_secret());
    let other_pair = format!("__Host-session={}", other.to_cookie_value().expose_secret());
    let status = |headers: Vec<Vec<u8>>| {
        let app = app.clone();
        async move {
            let refs: Vec<&[u8]> = headers.iter().map(Vec::as_slice).collect();
            app.oneshot(raw_cookie_request(&refs))
                .await
                .unwrap()
                .status()
        }
    };
    // The control: the session cookie alone signs the request in.
    assert_eq!(
        status(vec![pair.clone().into_bytes()]).await,
        StatusCode::OK
    );
    // A foreign cookie that is not UTF-8 (Latin-1 "été"), or not well formed, in the same
    // header — before or after the session — hides nothing.
    for (before, after) in [
        (&b"pref=\xe9t\xe9; "[..], &b""[..]),
        (&b""[..], &b"; pref=\xe9t\xe9"[..]),
        (&b"\xff\xfe; junk; =; "[..], &b"; a=\x80"[..]),
    ] {
        let header = [before, pair.as_bytes(), after].concat();
        assert_eq!(status(vec![header]).await, StatusCode::OK);
    }
    // In a header of its own, too.
    assert_eq!(
        status(vec![b"pref=\xe9t\xe9".to_vec(), pair.clone().into_bytes()]).await,
        StatusCode::OK
    );
    // Duplicate session cookies stay refused: two valid ones, or one beside a tossed one that
    // is not even UTF-8.
    for headers in [
        vec![format!("{pair}; {other_pair}").into_bytes()],
        vec![pair.clone().into_bytes(), other_pair.clone().into_bytes()],
        vec![[pair.as_bytes(), b"; __Host-session=\xff"].concat()],
        vec![b"__Host-session=\xe9".to_vec(), pair.clone().into_bytes()],
    ] {
        assert_eq!(status(headers).await, StatusCode::UNAUTHORIZED);
    }
}
