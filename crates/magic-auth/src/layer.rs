//! Tower middleware: the session cookie into an [`Actor`](tenant_scope::Actor), and the guards.
//!
//! ```text
//! SessionManagerLayer -> TenantLayer (tenant-scope) -> Guard::require_auth / require_mfa /
//!     require_step_up / same_origin / custom -> handler
//! ```
//!
//! - [`SessionManagerLayer`] ([`SessionManager`]) reads the `__Host-session` cookie, checks it
//!   against the store and puts the [`Session`] and its `Actor` in the request's extensions; any
//!   bad cookie leaves the request anonymous. If the store cannot be reached the request is
//!   refused with `503 session_store_unavailable`: a check that cannot be evaluated never lets a
//!   request through as anonymous *or* as signed in.
//! - [`GuardLayer`]s ([`Guard`]) refuse a request its session does not qualify for; their
//!   answers are listed on [`GuardLayer`].
//! - Every refusal is an [`AuthRejection`], rendered through [`tenant_scope::Rejection`].

use std::borrow::Cow;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{COOKIE, ORIGIN};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use tenant_scope::{ActorKind, Rejection};
use time::OffsetDateTime;
use tower_layer::Layer;
use tower_service::Service;

use crate::future::{GuardResponseFuture, SessionResponseFuture};
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
        secrecy::ExposeSecret::expose_secret(&token.to_cookie_value())
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

/// Why the session layer or a guard refused a request.
///
/// Each variant has a fixed status and machine code; the response is the workspace's JSON
/// refusal (see [`tenant_scope::Rejection`]), with the `AuthRejection` itself in the response's
/// extensions (so an application can turn it into a page, as the reference app does).
///
/// | variant | status | code |
/// |---|---|---|
/// | [`Unauthenticated`](Self::Unauthenticated) | 401 | `unauthenticated` |
/// | [`MfaRequired`](Self::MfaRequired) | 403 | `mfa_required` |
/// | [`StepUpRequired`](Self::StepUpRequired) | 403 | `step_up_required` |
/// | [`CrossOrigin`](Self::CrossOrigin) | 403 | `cross_origin_request` |
/// | [`Unavailable`](Self::Unavailable) | 503 | `session_store_unavailable` |
/// | [`Custom`](Self::Custom) | the rejection's | the rejection's |
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthRejection {
    /// No valid session.
    #[error("sign in first")]
    Unauthenticated,
    /// The session has one factor where two are required.
    #[error("complete the second factor first")]
    MfaRequired,
    /// The last factor check is too old for this action, or the session is not `aal2`.
    #[error("confirm your second factor again for this action")]
    StepUpRequired,
    /// A state-changing request from another origin.
    #[error("state-changing requests must come from this site")]
    CrossOrigin,
    /// The session store could not be consulted.
    #[error("sessions cannot be checked right now")]
    Unavailable,
    /// Refused by an application's own check ([`GuardLayer::custom`]).
    #[error(transparent)]
    Custom(Rejection),
}

impl AuthRejection {
    /// The HTTP status.
    #[must_use]
    pub const fn status(&self) -> StatusCode {
        match self {
            Self::Unauthenticated => StatusCode::UNAUTHORIZED,
            Self::MfaRequired | Self::StepUpRequired | Self::CrossOrigin => StatusCode::FORBIDDEN,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Custom(rejection) => rejection.status(),
        }
    }

    /// The stable machine code.
    #[must_use]
    pub const fn code(&self) -> &'static str {
        match self {
            Self::Unauthenticated => "unauthenticated",
            Self::MfaRequired => "mfa_required",
            Self::StepUpRequired => "step_up_required",
            Self::CrossOrigin => "cross_origin_request",
            Self::Unavailable => "session_store_unavailable",
            Self::Custom(rejection) => rejection.code(),
        }
    }

    /// The human message.
    #[must_use]
    pub fn message(&self) -> Cow<'static, str> {
        match self {
            Self::Custom(rejection) => Cow::Owned(rejection.message().to_owned()),
            other => Cow::Owned(other.to_string()),
        }
    }

    /// The response: `{"error":"<code>","message":"<text>"}`, not cached, with the
    /// [`Rejection`] and the `AuthRejection` itself in the response's extensions (an
    /// `audit_log::AuditLayer` in front records the rejection's code as the denial reason).
    #[must_use]
    pub fn into_http<B: From<String>>(self) -> Response<B> {
        let mut response = Rejection::from(self.clone()).into_http();
        response.extensions_mut().insert(self);
        response
    }
}

impl From<AuthRejection> for Rejection {
    fn from(rejection: AuthRejection) -> Self {
        match rejection {
            AuthRejection::Custom(inner) => inner,
            other => Self::new(other.status(), other.code(), other.to_string()),
        }
    }
}

impl From<Rejection> for AuthRejection {
    fn from(rejection: Rejection) -> Self {
        Self::Custom(rejection)
    }
}

/// Turns the session cookie into a [`Session`] and an `Actor` in the request's extensions (the
/// layer of [`SessionManager`]).
#[derive(Debug, Clone)]
pub struct SessionManagerLayer {
    store: SessionStore,
}

impl SessionManagerLayer {
    /// Checks cookies against `store`.
    #[must_use]
    pub const fn new(store: SessionStore) -> Self {
        Self { store }
    }
}

impl<S> Layer<S> for SessionManagerLayer {
    type Service = SessionManager<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SessionManager {
            inner,
            store: self.store.clone(),
        }
    }
}

/// The middleware [`SessionManagerLayer`] builds: see there.
#[derive(Debug, Clone)]
pub struct SessionManager<S> {
    inner: S,
    store: SessionStore,
}

impl SessionManager<()> {
    /// A [`SessionManagerLayer`] checking cookies against `store`.
    #[must_use]
    pub const fn layer(store: SessionStore) -> SessionManagerLayer {
        SessionManagerLayer::new(store)
    }
}

impl<S> SessionManager<S> {
    /// Wraps `inner`, checking cookies against `store`.
    #[must_use]
    pub const fn new(inner: S, store: SessionStore) -> Self {
        Self { inner, store }
    }

    /// The inner service.
    pub const fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub const fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for SessionManager<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: From<String> + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = SessionResponseFuture<ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        // The clone that was driven to readiness serves this request.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let store = self.store.clone();
        SessionResponseFuture::new(async move {
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
                        return Ok(AuthRejection::Unavailable.into_http());
                    }
                }
            }
            inner.call(request).await
        })
    }
}

/// An application's own check: the signed-in session and the request head in, a refusal out.
type CustomCheck = dyn Fn(&Session, &Parts) -> Result<(), Rejection> + Send + Sync;

#[derive(Clone)]
enum Check {
    Auth,
    Mfa,
    TwoFactors,
    StepUp(Duration),
    SameOrigin(Arc<[HeaderValue]>),
    Custom(Arc<CustomCheck>),
}

impl std::fmt::Debug for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Auth => f.write_str("Auth"),
            Self::Mfa => f.write_str("Mfa"),
            Self::TwoFactors => f.write_str("TwoFactors"),
            Self::StepUp(max_age) => f.debug_tuple("StepUp").field(max_age).finish(),
            Self::SameOrigin(origins) => f.debug_tuple("SameOrigin").field(origins).finish(),
            Self::Custom(_) => f.write_str("Custom"),
        }
    }
}

impl Check {
    fn judge(&self, parts: &Parts) -> Result<(), AuthRejection> {
        let session = parts.extensions.get::<Session>();
        match self {
            Self::SameOrigin(origins) => {
                let safe = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
                // The browser's own verdict first: `Sec-Fetch-Site` cannot be set by a page, and
                // it is sent even where `Origin` is `null` (a form on a page served with
                // `Referrer-Policy: no-referrer`, such as a sign-in link's landing page). Without
                // it (older browsers, other clients) `Origin` must name an allowed origin; with
                // neither, the request is refused.
                let ok = match parts.headers.get("sec-fetch-site") {
                    Some(site) => site == "same-origin",
                    None => parts
                        .headers
                        .get(ORIGIN)
                        .is_some_and(|o| origins.iter().any(|allowed| allowed == o)),
                };
                if safe || ok {
                    Ok(())
                } else {
                    Err(AuthRejection::CrossOrigin)
                }
            }
            Self::Auth => session.map(drop).ok_or(AuthRejection::Unauthenticated),
            Self::Mfa => {
                let s = session.ok_or(AuthRejection::Unauthenticated)?;
                if s.kind == ActorKind::Staff && s.assurance < Assurance::Aal2 {
                    Err(AuthRejection::MfaRequired)
                } else {
                    Ok(())
                }
            }
            Self::TwoFactors => {
                let s = session.ok_or(AuthRejection::Unauthenticated)?;
                if s.assurance < Assurance::Aal2 {
                    Err(AuthRejection::MfaRequired)
                } else {
                    Ok(())
                }
            }
            Self::StepUp(max_age) => {
                let s = session.ok_or(AuthRejection::Unauthenticated)?;
                let age = OffsetDateTime::now_utc() - s.authenticated_at;
                let fresh = time::Duration::try_from(*max_age).is_ok_and(|max| age <= max);
                if s.assurance == Assurance::Aal2 && fresh {
                    Ok(())
                } else {
                    Err(AuthRejection::StepUpRequired)
                }
            }
            Self::Custom(check) => {
                let s = session.ok_or(AuthRejection::Unauthenticated)?;
                check(s, parts).map_err(AuthRejection::Custom)
            }
        }
    }
}

/// A guard: refuses a request its session does not qualify for, before the handler runs (the
/// layer of [`Guard`]).
///
/// Guards go after [`SessionManagerLayer`] (and the tenant layer), which puts the [`Session`]
/// they check in the request's extensions:
///
/// ```text
/// SessionManagerLayer -> TenantLayer (tenant-scope) -> Guard::require_auth / require_mfa /
///     require_step_up / same_origin / custom -> handler
/// ```
///
/// A guard answers `401 unauthenticated`, `403 mfa_required` (staff at `aal1`, everywhere the
/// guard is applied — leave it off the TOTP routes), `403 step_up_required` (the last factor
/// check is older than `max_age`, default 10 minutes, or the session is not `aal2`),
/// `403 cross_origin_request` (a state-changing request whose `Origin` is not the app's), or
/// what an application's [`custom`](Self::custom) check says; each constructor says which.
/// [`and`](Self::and) combines checks into one guard, judged in order (the first refusal is
/// the answer). The constructors are also on [`Guard`] (`Guard::require_auth()`).
#[derive(Debug, Clone)]
pub struct GuardLayer {
    checks: Arc<[Check]>,
}

impl GuardLayer {
    fn one(check: Check) -> Self {
        Self {
            checks: Arc::from([check]),
        }
    }

    /// `401 unauthenticated` without a valid session.
    #[must_use]
    pub fn require_auth() -> Self {
        Self::one(Check::Auth)
    }

    /// `401` without a session; `403 mfa_required` for staff whose session is only `aal1`.
    #[must_use]
    pub fn require_mfa() -> Self {
        Self::one(Check::Mfa)
    }

    /// `401` without a session; `403 mfa_required` for anyone (user or staff) whose session is
    /// only `aal1`: for applications where every account signs in with two factors.
    #[must_use]
    pub fn require_two_factors() -> Self {
        Self::one(Check::TwoFactors)
    }

    /// `401` without a session; `403 step_up_required` unless the session is `aal2` and its last
    /// factor check is at most `max_age` old.
    #[must_use]
    pub fn require_step_up(max_age: Duration) -> Self {
        Self::one(Check::StepUp(max_age))
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
        Self::one(Check::SameOrigin(origins.into()))
    }

    /// An application's own check: `401 unauthenticated` without a session; otherwise
    /// `check(session, request head)` decides, and its [`Rejection`] is the answer (as
    /// [`AuthRejection::Custom`]).
    ///
    /// ```
    /// use http::StatusCode;
    /// use magic_auth::Guard;
    /// use tenant_scope::{ActorKind, Rejection};
    ///
    /// // Only staff may reach the operator console.
    /// let staff_only = Guard::require_mfa().and(Guard::custom(|session, _parts| {
    ///     if session.kind == ActorKind::Staff {
    ///         Ok(())
    ///     } else {
    ///         Err(Rejection::new(StatusCode::FORBIDDEN, "staff_only", "this page is for staff"))
    ///     }
    /// }));
    /// # let _ = staff_only;
    /// ```
    #[must_use]
    pub fn custom<F>(check: F) -> Self
    where
        F: Fn(&Session, &Parts) -> Result<(), Rejection> + Send + Sync + 'static,
    {
        Self::one(Check::Custom(Arc::new(check)))
    }

    /// This guard's checks, then `other`'s: the first refusal is the answer.
    #[must_use]
    pub fn and(self, other: Self) -> Self {
        let Self { checks: theirs } = other;
        let checks: Vec<Check> = self.checks.iter().chain(theirs.iter()).cloned().collect();
        Self {
            checks: checks.into(),
        }
    }

    fn judge(&self, parts: &Parts) -> Result<(), AuthRejection> {
        self.checks.iter().try_for_each(|check| check.judge(parts))
    }
}

impl<S> Layer<S> for GuardLayer {
    type Service = Guard<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Guard {
            inner,
            guard: self.clone(),
        }
    }
}

/// The middleware a [`GuardLayer`] builds: see there.
#[derive(Debug, Clone)]
pub struct Guard<S> {
    inner: S,
    guard: GuardLayer,
}

/// The [`GuardLayer`] constructors, so routes read `.layer(Guard::require_auth())`.
impl Guard<()> {
    /// [`GuardLayer::require_auth`].
    #[must_use]
    pub fn require_auth() -> GuardLayer {
        GuardLayer::require_auth()
    }

    /// [`GuardLayer::require_mfa`].
    #[must_use]
    pub fn require_mfa() -> GuardLayer {
        GuardLayer::require_mfa()
    }

    /// [`GuardLayer::require_two_factors`].
    #[must_use]
    pub fn require_two_factors() -> GuardLayer {
        GuardLayer::require_two_factors()
    }

    /// [`GuardLayer::require_step_up`].
    #[must_use]
    pub fn require_step_up(max_age: Duration) -> GuardLayer {
        GuardLayer::require_step_up(max_age)
    }

    /// [`GuardLayer::same_origin`].
    #[must_use]
    pub fn same_origin(origins: &[&str]) -> GuardLayer {
        GuardLayer::same_origin(origins)
    }

    /// [`GuardLayer::custom`].
    #[must_use]
    pub fn custom<F>(check: F) -> GuardLayer
    where
        F: Fn(&Session, &Parts) -> Result<(), Rejection> + Send + Sync + 'static,
    {
        GuardLayer::custom(check)
    }
}

impl<S> Guard<S> {
    /// Wraps `inner` in `guard`.
    #[must_use]
    pub const fn new(inner: S, guard: GuardLayer) -> Self {
        Self { inner, guard }
    }

    /// The inner service.
    pub const fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub const fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Guard<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: From<String>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = GuardResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let (parts, body) = request.into_parts();
        match self.guard.judge(&parts) {
            Err(rejection) => GuardResponseFuture::rejected(rejection.into_http()),
            Ok(()) => GuardResponseFuture::inner(self.inner.call(Request::from_parts(parts, body))),
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
            r.into_parts().0
        };
        let both = GuardLayer::require_two_factors();
        let mfa = GuardLayer::require_mfa();
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
        let guard = GuardLayer::same_origin(&["https://app.example.test"]);
        let post = |headers: &[(&'static str, &'static str)]| {
            let mut r = Request::post("/x").body(()).unwrap();
            for (k, v) in headers {
                r.headers_mut().insert(*k, HeaderValue::from_static(v));
            }
            guard.judge(&r.into_parts().0)
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
        assert!(guard.judge(&get.into_parts().0).is_ok());
    }

    fn session_of(kind: ActorKind, assurance: Assurance) -> Session {
        let now = OffsetDateTime::now_utc();
        Session {
            tenant: tenant_scope::TenantId::new_random(),
            id: uuid::Uuid::new_v4(),
            user: tenant_scope::ActorId::new_random(),
            kind,
            assurance,
            created_at: now,
            authenticated_at: now,
            idle_expires_at: now + time::Duration::minutes(30),
            absolute_expires_at: now + time::Duration::hours(12),
        }
    }

    fn head(session: Option<Session>, path: &str) -> Parts {
        let mut r = Request::post(path).body(()).unwrap();
        if let Some(s) = session {
            r.extensions_mut().insert(s);
        }
        r.into_parts().0
    }

    fn staff_only() -> GuardLayer {
        Guard::custom(|session: &Session, parts: &Parts| {
            if session.kind == ActorKind::Staff && parts.uri.path().starts_with("/ops/") {
                Ok(())
            } else {
                Err(Rejection::new(
                    StatusCode::FORBIDDEN,
                    "staff_only",
                    "this page is for \"staff\"",
                ))
            }
        })
    }

    /// An application's own check refuses with its own code, through the shared shape; the
    /// positive control is the same guard letting staff through.
    #[test]
    fn a_custom_check_refuses_with_its_own_rejection_and_lets_the_qualified_through() {
        let guard = staff_only();
        let staff = session_of(ActorKind::Staff, Assurance::Aal2);
        let user = session_of(ActorKind::User, Assurance::Aal2);
        assert_eq!(guard.judge(&head(Some(staff.clone()), "/ops/x")), Ok(()));
        let refused = guard.judge(&head(Some(user), "/ops/x")).unwrap_err();
        assert_eq!(
            (refused.status(), refused.code()),
            (StatusCode::FORBIDDEN, "staff_only")
        );
        assert!(matches!(refused, AuthRejection::Custom(_)));
        let response: Response<String> = refused.clone().into_http();
        assert_eq!(
            response.body(),
            r#"{"error":"staff_only","message":"this page is for \"staff\""}"#
        );
        assert_eq!(response.extensions().get::<AuthRejection>(), Some(&refused));
        assert_eq!(
            response
                .extensions()
                .get::<Rejection>()
                .map(Rejection::code),
            Some("staff_only")
        );
        // The predicate sees the request head too.
        assert!(guard.judge(&head(Some(staff), "/notes")).is_err());
        // No session: the check is never asked, the answer is 401.
        assert_eq!(
            guard.judge(&head(None, "/ops/x")),
            Err(AuthRejection::Unauthenticated)
        );
    }

    #[test]
    fn checks_combine_in_order_and_the_first_refusal_answers() {
        let guard = Guard::require_mfa().and(staff_only());
        // Staff at aal1: the built-in check answers first.
        assert_eq!(
            guard.judge(&head(
                Some(session_of(ActorKind::Staff, Assurance::Aal1)),
                "/ops/x"
            )),
            Err(AuthRejection::MfaRequired)
        );
        // A user passes the MFA check (users need not), then meets the custom one.
        assert_eq!(
            guard
                .judge(&head(
                    Some(session_of(ActorKind::User, Assurance::Aal1)),
                    "/ops/x"
                ))
                .map_err(|r| r.code()),
            Err("staff_only")
        );
        // Positive control: staff with two factors pass both.
        assert!(
            guard
                .judge(&head(
                    Some(session_of(ActorKind::Staff, Assurance::Aal2)),
                    "/ops/x"
                ))
                .is_ok()
        );
    }

    #[test]
    fn every_auth_rejection_keeps_its_status_code_and_message() {
        let table = [
            (
                AuthRejection::Unauthenticated,
                401,
                "unauthenticated",
                "sign in first",
            ),
            (
                AuthRejection::MfaRequired,
                403,
                "mfa_required",
                "complete the second factor first",
            ),
            (
                AuthRejection::StepUpRequired,
                403,
                "step_up_required",
                "confirm your second factor again for this action",
            ),
            (
                AuthRejection::CrossOrigin,
                403,
                "cross_origin_request",
                "state-changing requests must come from this site",
            ),
            (
                AuthRejection::Unavailable,
                503,
                "session_store_unavailable",
                "sessions cannot be checked right now",
            ),
        ];
        for (rejection, status, code, message) in table {
            assert_eq!(
                (rejection.status().as_u16(), rejection.code()),
                (status, code)
            );
            let response: Response<String> = rejection.into_http();
            assert_eq!(response.status().as_u16(), status);
            assert_eq!(
                response.body(),
                &format!(r#"{{"error":"{code}","message":"{message}"}}"#)
            );
            assert_eq!(response.headers()["content-type"], "application/json");
            assert_eq!(response.headers()["cache-control"], "no-store");
        }
    }

    #[test]
    fn the_middleware_exposes_its_inner_service() {
        let mut guard = Guard::require_auth().layer(7_u8);
        assert_eq!(*guard.get_ref(), 7);
        *guard.get_mut() = 8;
        assert_eq!(guard.into_inner(), 8);
    }
}
