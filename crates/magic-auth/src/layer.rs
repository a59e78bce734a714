//! Tower layers: the session cookie into an [`Actor`](tenant_scope::Actor), and the guards.
//!
//! ```text
//! SessionLayer -> TenantLayer (tenant-scope) -> Guard::require_auth / require_mfa /
//!     require_step_up / same_origin -> handler
//! ```
//!
//! - [`SessionLayer`] reads the `__Host-session` cookie, checks it against the store and puts
//!   the [`Session`] and its `Actor` in the request's extensions; any bad cookie leaves the
//!   request anonymous. If the store cannot be reached the request is refused with
//!   `503 session_store_unavailable`: a check that cannot be evaluated never lets a request
//!   through as anonymous *or* as signed in.
//! - [`Guard`]s refuse a request its session does not qualify for; their answers are listed
//!   on [`Guard`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{CACHE_CONTROL, CONTENT_TYPE, COOKIE, ORIGIN};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use tenant_scope::ActorKind;
use time::OffsetDateTime;
use tower_layer::Layer;
use tower_service::Service;

use crate::session::{Assurance, Session, SessionStore};
use crate::token::SessionToken;

/// The session cookie's name. The `__Host-` prefix makes browsers refuse it unless it is
/// `Secure`, has `Path=/` and no `Domain`: a sibling subdomain cannot plant one.
pub const SESSION_COOKIE: &str = "__Host-session";

/// The default step-up window.
pub const DEFAULT_STEP_UP_MAX_AGE: Duration = Duration::from_secs(10 * 60);

/// A `Set-Cookie` value for a new session token: `__Host-`, `Secure`, `HttpOnly`,
/// `SameSite=Lax`, `Path=/`, no `Domain`, expiring with the session's absolute limit.
///
/// # Panics
/// Never: the value is built from hex, digits and fixed text.
#[must_use]
pub fn session_cookie(token: &SessionToken, session: &Session) -> HeaderValue {
    let max_age = (session.absolute_expires_at - OffsetDateTime::now_utc())
        .whole_seconds()
        .max(0);
    let value = format!(
        "{SESSION_COOKIE}={}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age={max_age}",
        token.to_cookie_value().as_str()
    );
    HeaderValue::from_str(&value).unwrap_or_else(|_| clear_session_cookie())
}

/// A `Set-Cookie` value that removes the session cookie (sign-out).
#[must_use]
pub fn clear_session_cookie() -> HeaderValue {
    HeaderValue::from_static("__Host-session=; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=0")
}

/// The value of cookie `name`, if the request carries exactly one cookie by that name (two are
/// a sign of cookie tossing: neither is trusted).
///
/// Each `name=value` pair of every `Cookie` header is read on its own: a pair that is not
/// valid UTF-8 or has no `=` is skipped without hiding the pairs beside it. A second pair
/// named `name` voids the result whatever its value (well formed or not), and a lone pair
/// named `name` whose value is not UTF-8 yields nothing.
#[must_use]
pub fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    let mut seen = false;
    let mut found = None;
    for header in headers.get_all(COOKIE) {
        for pair in header.as_bytes().split(|b| *b == b';') {
            let pair = pair.trim_ascii();
            let Some(eq) = pair.iter().position(|b| *b == b'=') else {
                continue;
            };
            let (key, value) = pair.split_at(eq);
            if key != name.as_bytes() {
                continue;
            }
            if seen {
                return None;
            }
            seen = true;
            found = value.get(1..).and_then(|v| std::str::from_utf8(v).ok());
        }
    }
    found
}

/// Why a guard refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthRejection {
    status: StatusCode,
    code: &'static str,
    message: &'static str,
}

impl AuthRejection {
    const UNAUTHENTICATED: Self = Self {
        status: StatusCode::UNAUTHORIZED,
        code: "unauthenticated",
        message: "sign in first",
    };
    const MFA_REQUIRED: Self = Self {
        status: StatusCode::FORBIDDEN,
        code: "mfa_required",
        message: "staff must complete the second factor",
    };
    const STEP_UP_REQUIRED: Self = Self {
        status: StatusCode::FORBIDDEN,
        code: "step_up_required",
        message: "confirm your second factor again for this action",
    };
    const CROSS_ORIGIN: Self = Self {
        status: StatusCode::FORBIDDEN,
        code: "cross_origin_request",
        message: "state-changing requests must come from this site",
    };
    const UNAVAILABLE: Self = Self {
        status: StatusCode::SERVICE_UNAVAILABLE,
        code: "session_store_unavailable",
        message: "sessions cannot be checked right now",
    };

    /// The stable machine code.
    #[must_use]
    pub const fn code(&self) -> &'static str {
        self.code
    }

    /// The HTTP status.
    #[must_use]
    pub const fn status(&self) -> StatusCode {
        self.status
    }

    /// The response: `{"error":"<code>","message":"<text>"}`, not cached, with the rejection
    /// itself in the response's extensions, and (feature `audit-log`) its code as an
    /// `audit_log::DenialReason` for an `AuditLayer` in front.
    #[must_use]
    pub fn into_http<B: From<String>>(self) -> Response<B> {
        let mut response = Response::new(B::from(format!(
            "{{\"error\":\"{}\",\"message\":\"{}\"}}",
            self.code, self.message
        )));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        // The audit layer records a refusal's reason from `DenialReason`: give it the machine
        // code (`step_up_required`, ..) rather than a bare status.
        #[cfg(feature = "audit-log")]
        response
            .extensions_mut()
            .insert(audit_log::DenialReason(self.code));
        response.extensions_mut().insert(self);
        response
    }
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

/// Turns the session cookie into a [`Session`] and an `Actor` in the request's extensions.
#[derive(Debug, Clone)]
pub struct SessionLayer {
    store: SessionStore,
}

impl SessionLayer {
    /// Checks cookies against `store`.
    #[must_use]
    pub const fn new(store: SessionStore) -> Self {
        Self { store }
    }
}

impl<S> Layer<S> for SessionLayer {
    type Service = SessionService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SessionService {
            inner,
            store: self.store.clone(),
        }
    }
}

/// The service [`SessionLayer`] builds.
#[derive(Debug, Clone)]
pub struct SessionService<S> {
    inner: S,
    store: SessionStore,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for SessionService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: From<String> + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let store = self.store.clone();
        Box::pin(async move {
            // A client must not smuggle its own Session or Actor in.
            request.extensions_mut().remove::<Session>();
            request.extensions_mut().remove::<tenant_scope::Actor>();
            if let Some(cookie) = cookie_value(request.headers(), SESSION_COOKIE) {
                // A request that changes nothing may be let through on the session cache's
                // word (its data statements still ask the database); every other asks it.
                let read_only = matches!(
                    *request.method(),
                    Method::GET | Method::HEAD | Method::OPTIONS
                );
                let validated = if read_only {
                    store.validate_cached(cookie).await
                } else {
                    store.validate(cookie).await
                };
                match validated {
                    Ok(Some(session)) => {
                        request.extensions_mut().insert(session.actor());
                        request.extensions_mut().insert(session);
                    }
                    Ok(None) => {}
                    Err(error) => {
                        tracing::error!(error = %error, "session store unavailable; request refused");
                        return Ok(AuthRejection::UNAVAILABLE.into_http());
                    }
                }
            }
            inner.call(request).await
        })
    }
}

#[derive(Debug, Clone)]
enum Check {
    Auth,
    Mfa,
    TwoFactors,
    StepUp(Duration),
    SameOrigin(Arc<[HeaderValue]>),
}

/// A guard layer: refuses a request its session does not qualify for, before the handler runs.
///
/// Guards go after [`SessionLayer`] (and the tenant layer), which puts the [`Session`] they check
/// in the request's extensions:
///
/// ```text
/// SessionLayer -> TenantLayer (tenant-scope) -> Guard::require_auth / require_mfa /
///     require_step_up / same_origin -> handler
/// ```
///
/// A guard answers `401 unauthenticated`, `403 mfa_required` (staff at `aal1`, everywhere the
/// guard is applied — leave it off the TOTP routes), `403 step_up_required` (the last factor
/// check is older than `max_age`, default 10 minutes, or the session is not `aal2`), or
/// `403 cross_origin_request` (a state-changing request whose `Origin` is not the app's); each
/// constructor says which.
#[derive(Debug, Clone)]
pub struct Guard {
    check: Check,
}

impl Guard {
    /// `401 unauthenticated` without a valid session.
    #[must_use]
    pub const fn require_auth() -> Self {
        Self { check: Check::Auth }
    }

    /// `401` without a session; `403 mfa_required` for staff whose session is only `aal1`.
    #[must_use]
    pub const fn require_mfa() -> Self {
        Self { check: Check::Mfa }
    }

    /// `401` without a session; `403 mfa_required` for anyone (user or staff) whose session is
    /// only `aal1`: for applications where every account signs in with two factors.
    #[must_use]
    pub const fn require_two_factors() -> Self {
        Self {
            check: Check::TwoFactors,
        }
    }

    /// `401` without a session; `403 step_up_required` unless the session is `aal2` and its last
    /// factor check is at most `max_age` old.
    #[must_use]
    pub const fn require_step_up(max_age: Duration) -> Self {
        Self {
            check: Check::StepUp(max_age),
        }
    }

    /// `403 cross_origin_request` for a request other than `GET`, `HEAD` or `OPTIONS` that the
    /// browser does not mark `Sec-Fetch-Site: same-origin`, or — from a client that sends no
    /// `Sec-Fetch-Site` — whose `Origin` header is missing or not one of `origins` (e.g.
    /// `https://app.example.com`). A `Sec-Fetch-Site` of `same-site` (a sibling subdomain),
    /// `cross-site` or `none` is refused whatever `Origin` says.
    #[must_use]
    pub fn same_origin(origins: &[&str]) -> Self {
        let origins: Vec<HeaderValue> = origins
            .iter()
            .filter_map(|o| HeaderValue::from_str(o).ok())
            .collect();
        Self {
            check: Check::SameOrigin(origins.into()),
        }
    }

    fn judge<B>(&self, request: &Request<B>) -> Result<(), AuthRejection> {
        let session = request.extensions().get::<Session>();
        match &self.check {
            Check::SameOrigin(origins) => {
                let safe = matches!(
                    *request.method(),
                    Method::GET | Method::HEAD | Method::OPTIONS
                );
                // The browser's own verdict first: `Sec-Fetch-Site` cannot be set by a page, and
                // it is sent even where `Origin` is `null` (a form on a page served with
                // `Referrer-Policy: no-referrer`, such as a sign-in link's landing page). Without
                // it (older browsers, other clients) `Origin` must name an allowed origin; with
                // neither, the request is refused.
                let ok = match request.headers().get("sec-fetch-site") {
                    Some(site) => site == "same-origin",
                    None => request
                        .headers()
                        .get(ORIGIN)
                        .is_some_and(|o| origins.iter().any(|allowed| allowed == o)),
                };
                if safe || ok {
                    Ok(())
                } else {
                    Err(AuthRejection::CROSS_ORIGIN)
                }
            }
            Check::Auth => session.map(drop).ok_or(AuthRejection::UNAUTHENTICATED),
            Check::Mfa => {
                let s = session.ok_or(AuthRejection::UNAUTHENTICATED)?;
                if s.kind == ActorKind::Staff && s.assurance < Assurance::Aal2 {
                    Err(AuthRejection::MFA_REQUIRED)
                } else {
                    Ok(())
                }
            }
            Check::TwoFactors => {
                let s = session.ok_or(AuthRejection::UNAUTHENTICATED)?;
                if s.assurance < Assurance::Aal2 {
                    Err(AuthRejection::MFA_REQUIRED)
                } else {
                    Ok(())
                }
            }
            Check::StepUp(max_age) => {
                let s = session.ok_or(AuthRejection::UNAUTHENTICATED)?;
                let age = OffsetDateTime::now_utc() - s.authenticated_at;
                let fresh = time::Duration::try_from(*max_age).is_ok_and(|max| age <= max);
                if s.assurance == Assurance::Aal2 && fresh {
                    Ok(())
                } else {
                    Err(AuthRejection::STEP_UP_REQUIRED)
                }
            }
        }
    }
}

impl<S> Layer<S> for Guard {
    type Service = Guarded<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Guarded {
            inner,
            guard: self.clone(),
        }
    }
}

/// The service a [`Guard`] builds.
#[derive(Debug, Clone)]
pub struct Guarded<S> {
    inner: S,
    guard: Guard,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Guarded<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: From<String> + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        match self.guard.judge(&request) {
            Err(rejection) => Box::pin(async move { Ok(rejection.into_http()) }),
            Ok(()) => {
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                Box::pin(async move { inner.call(request).await })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_cookie_by_name_or_none() {
        let mut h = HeaderMap::new();
        h.append(
            COOKIE,
            HeaderValue::from_static("a=1; __Host-session=abc; b=2"),
        );
        assert_eq!(cookie_value(&h, SESSION_COOKIE), Some("abc"));
        h.append(COOKIE, HeaderValue::from_static("__Host-session=evil"));
        assert_eq!(
            cookie_value(&h, SESSION_COOKIE),
            None,
            "a tossed duplicate voids both"
        );
        assert_eq!(cookie_value(&HeaderMap::new(), SESSION_COOKIE), None);
    }

    #[test]
    fn a_pair_that_is_not_utf8_or_not_well_formed_is_skipped_on_its_own() {
        let mut h = HeaderMap::new();
        h.append(
            COOKIE,
            HeaderValue::from_bytes(b"t=\xff\xfe; junk; =; __Host-session=abc; b=\xc3").unwrap(),
        );
        assert_eq!(cookie_value(&h, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie_value(&h, "b"), None, "not UTF-8: nothing");
        // A tossed duplicate voids both, whatever its value.
        h.append(
            COOKIE,
            HeaderValue::from_bytes(b"__Host-session=\xff").unwrap(),
        );
        assert_eq!(cookie_value(&h, SESSION_COOKIE), None);
        // Names are compared exactly.
        let mut h = HeaderMap::new();
        h.append(
            COOKIE,
            HeaderValue::from_static("__host-session=x; __Host-session=abc; __Host-sessionx=y"),
        );
        assert_eq!(cookie_value(&h, SESSION_COOKIE), Some("abc"));
    }

    #[test]
    fn the_cookie_has_every_attribute() {
        let tenant = tenant_scope::TenantId::new_random();
        let token = SessionToken::generate(tenant).unwrap();
        let now = OffsetDateTime::now_utc();
        let session = Session {
            tenant,
            id: token.id(),
            user: tenant_scope::ActorId::new_random(),
            kind: ActorKind::User,
            assurance: Assurance::Aal1,
            created_at: now,
            authenticated_at: now,
            idle_expires_at: now + time::Duration::minutes(30),
            absolute_expires_at: now + time::Duration::hours(12),
        };
        let v = session_cookie(&token, &session);
        let v = v.to_str().unwrap();
        assert!(v.starts_with("__Host-session=v1."));
        for attr in [
            "; Path=/",
            "; Secure",
            "; HttpOnly",
            "; SameSite=Lax",
            "; Max-Age=4319",
        ] {
            assert!(v.contains(attr), "{attr} missing in {v}");
        }
        assert!(!v.to_ascii_lowercase().contains("domain="));
    }

    #[test]
    fn two_factors_are_required_of_users_too_where_mfa_asks_only_staff() {
        let now = OffsetDateTime::now_utc();
        let session = |kind, assurance| Session {
            tenant: tenant_scope::TenantId::new_random(),
            id: uuid::Uuid::new_v4(),
            user: tenant_scope::ActorId::new_random(),
            kind,
            assurance,
            created_at: now,
            authenticated_at: now,
            idle_expires_at: now + time::Duration::minutes(30),
            absolute_expires_at: now + time::Duration::hours(12),
        };
        let request = |s: Option<Session>| {
            let mut r = Request::new(());
            if let Some(s) = s {
                r.extensions_mut().insert(s);
            }
            r
        };
        let both = Guard::require_two_factors();
        let mfa = Guard::require_mfa();
        let user1 = request(Some(session(ActorKind::User, Assurance::Aal1)));
        assert!(mfa.judge(&user1).is_ok());
        assert!(both.judge(&user1).is_err());
        assert!(
            both.judge(&request(Some(session(ActorKind::Staff, Assurance::Aal1))))
                .is_err()
        );
        assert!(
            both.judge(&request(Some(session(ActorKind::User, Assurance::Aal2))))
                .is_ok()
        );
        assert!(both.judge(&request(None)).is_err());
    }

    #[test]
    fn same_origin_trusts_sec_fetch_site_then_origin_and_refuses_neither() {
        let guard = Guard::same_origin(&["https://app.example.test"]);
        let post = |headers: &[(&'static str, &'static str)]| {
            let mut r = Request::post("/x").body(()).unwrap();
            for (k, v) in headers {
                r.headers_mut().insert(*k, HeaderValue::from_static(v));
            }
            guard.judge(&r)
        };
        // A form on a no-referrer page: Origin is "null", the fetch metadata says same-origin.
        assert!(post(&[("origin", "null"), ("sec-fetch-site", "same-origin")]).is_ok());
        assert!(post(&[("origin", "https://app.example.test")]).is_ok());
        // The browser's verdict wins over a claimed Origin.
        for site in ["cross-site", "same-site", "none"] {
            let header = [
                ("origin", "https://app.example.test"),
                ("sec-fetch-site", site),
            ];
            assert!(post(&header).is_err(), "{site}");
        }
        assert!(post(&[("origin", "https://evil.example")]).is_err());
        assert!(post(&[("origin", "null")]).is_err());
        assert!(post(&[]).is_err());
        let get = Request::get("/x").body(()).unwrap();
        assert!(guard.judge(&get).is_ok());
    }
}
