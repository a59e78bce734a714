//! The whole sign-in flow as ready-made routes (feature `axum`): [`SignInRoutes`].
//!
//! Nest the router where the links point ([`LinkConfig::landing_path`](crate::LinkConfig::landing_path) is `<prefix>/link`,
//! [`LinkConfig::email_change_path`](crate::LinkConfig::email_change_path) is the application's page that posts to
//! `<prefix>/email/confirm`), inside a [`SessionManagerLayer`](crate::SessionManagerLayer):
//!
//! | route | who | what |
//! |---|---|---|
//! | `POST /link` | anyone | `{"workspace": slug, "email": ..}` (or `"tenant": uuid`): a link is sent if the account exists; the answer is the same either way, with the browser-binding verifier cookie |
//! | `GET /link?token=..` | anyone | a small page whose button posts the token back (a mail scanner's `GET` uses nothing up); [`SignInConfig::landing_page`] turns it off |
//! | `POST /link/confirm` | the browser that asked | `{"token": ..}`: an `aal1` session (cookie) |
//! | `GET /totp` | signed in | the authenticator: `active`, `pending` (with the enrolment to show again) or `not_started` |
//! | `POST /totp/enrol` | signed in | starts an enrolment: the key, `otpauth://` URL and QR code (SVG) |
//! | `POST /totp` | signed in | `{"code": ..}` (a TOTP code, or a recovery code): confirms a pending enrolment or checks the code, then a rotated `aal2` session |
//! | `POST /step-up` | `aal2` | the same check, for a fresh step-up |
//! | `POST /sign-out` | signed in | ends this session |
//! | `GET /sessions` | `aal2` | the account's sessions |
//! | `POST /sessions/{id}/revoke` | `aal2` | ends one of them |
//! | `POST /sessions/revoke-others` | `aal2` | ends all but this one |
//! | `POST /recovery-codes` | fresh step-up | new recovery codes, shown once |
//! | `POST /totp/replace` | fresh step-up, or `{"recovery_code": ..}` | starts replacing the authenticator |
//! | `POST /totp/replace/confirm` | signed in | `{"code": ..}` from the new authenticator |
//! | `POST /email` | fresh step-up | `{"email": ..}`: a confirmation link to the new address, a notice to the old |
//! | `POST /email/confirm` | the session that asked | `{"token": ..}` |
//! | `POST /account/disable` | fresh step-up | `{"confirm": "disable"}`: disables the account, ends every session, then tells [`AccountDirectory::account_disabled`] |
//!
//! Every `POST` takes a body: JSON (`application/json`, `{}` when there is nothing to say) or
//! an HTML form (`application/x-www-form-urlencoded`); anything else is `415`. Answers are JSON,
//! never cached; a form submission that succeeds is answered `303 See Other` to its `next`
//! field when that is a path on this site, else to [`SignInConfig::after_sign_in`] (JSON
//! answers carry the same target as `"redirect"`), and one that is refused, to its `back` field
//! (a path of this site) with `error=<code>` added to the query, so pages without script work
//! too (`POST /recovery-codes` answers JSON only: the codes are shown once). Every refusal is the workspace's JSON refusal
//! ([`tenant_scope::Rejection`]): `400 invalid_request`, `400 invalid_email`, `400 confirmation_required`,
//! `401 unauthenticated`, `401 link_invalid`, `401 code_rejected`, `401 session_ended`,
//! `403 mfa_required`, `403 step_up_required`, `403 cross_origin_request`,
//! `404 not_found`, `409 already_enrolled`, `409 not_enrolled`, `409 email_unavailable`,
//! `413 body_too_large`, `415 unsupported_media_type`, `429 rate_limited`,
//! `429 factor_locked` (with `Retry-After`), `503 service_unavailable`,
//! `500 internal_error`.
//!
//! Every state-changing route refuses another origin (the router carries
//! [`Guard::same_origin`](crate::Guard::same_origin) for the base URL's origin), and every
//! sensitive action is checked again by the service that performs it, not only here.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, Path, Query, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tenant_scope::{Rejection, TenantDirectory, TenantId};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::link::{AccountDirectory, MagicLinks};
use crate::mailer::{Mailer, Notice};
use crate::totp::{CodeCheck, Enrolment, EnrolmentState, ReplaceProof, TotpService};
use crate::{
    Assurance, AuthError, DEFAULT_STEP_UP_MAX_AGE, GuardLayer, Session, SessionStore,
    clear_session_cookie, cookie_value, session_cookie,
};

/// The largest request body the routes read (16 KiB): every field they take is short.
pub const MAX_BODY: usize = 16 * 1024;

/// Settings of [`SignInRoutes`]; [`SignInConfig::new`] gives the defaults.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SignInConfig {
    /// Where a completed step sends the browser when the request names no `next` path of this
    /// site (default `/`). A path: it starts with one `/`.
    pub after_sign_in: String,
    /// How old the last factor check may be for the sensitive actions (default
    /// [`DEFAULT_STEP_UP_MAX_AGE`]).
    pub step_up_max_age: Duration,
    /// The verifier cookie binding a link to the browser that asked for it (default
    /// `__Host-magic-auth-verifier`).
    pub verifier_cookie: String,
    /// Whether `GET /link` serves the built-in landing page (default `true`). Turn it off to
    /// serve your own page at [`LinkConfig::landing_path`](crate::LinkConfig::landing_path): it
    /// should only show a button that posts the token to `/link/confirm`.
    pub landing_page: bool,
}

impl Default for SignInConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl SignInConfig {
    /// The defaults.
    #[must_use]
    pub fn new() -> Self {
        Self {
            after_sign_in: "/".to_owned(),
            step_up_max_age: DEFAULT_STEP_UP_MAX_AGE,
            verifier_cookie: "__Host-magic-auth-verifier".to_owned(),
            landing_page: true,
        }
    }

    /// Sets [`after_sign_in`](Self::after_sign_in).
    #[must_use]
    pub fn after_sign_in(mut self, path: impl Into<String>) -> Self {
        self.after_sign_in = path.into();
        self
    }

    /// Sets [`step_up_max_age`](Self::step_up_max_age).
    #[must_use]
    pub const fn step_up_max_age(mut self, max_age: Duration) -> Self {
        self.step_up_max_age = max_age;
        self
    }

    /// Sets [`landing_page`](Self::landing_page).
    #[must_use]
    pub const fn landing_page(mut self, on: bool) -> Self {
        self.landing_page = on;
        self
    }

    /// Checks every value: see each field.
    ///
    /// # Errors
    /// [`AuthError::InvalidConfig`] naming the first unusable value.
    pub fn validate(&self) -> Result<(), AuthError> {
        if local_path(&self.after_sign_in).is_none() {
            return Err(AuthError::InvalidConfig(
                "after_sign_in must be a path on this site, starting with one '/'",
            ));
        }
        if self.step_up_max_age.is_zero()
            || time::Duration::try_from(self.step_up_max_age).is_err()
            || self.step_up_max_age > Duration::from_secs(24 * 60 * 60)
        {
            return Err(AuthError::InvalidConfig(
                "step_up_max_age must be between one second and 24 hours",
            ));
        }
        let cookie_ok = self.verifier_cookie.starts_with("__Host-")
            && self.verifier_cookie.len() <= 64
            && self.verifier_cookie[7..]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !cookie_ok || self.verifier_cookie.len() == 7 {
            return Err(AuthError::InvalidConfig(
                "verifier_cookie must be a __Host- cookie name of letters, digits, '-' and '_'",
            ));
        }
        Ok(())
    }
}

/// `path` if it names a page of this site: one leading `/`, no scheme-relative `//` or `/\`,
/// no control characters or spaces, at most 512 bytes.
fn local_path(path: &str) -> Option<&str> {
    let ok = path.starts_with('/')
        && !path.starts_with("//")
        && !path.starts_with("/\\")
        && path.len() <= 512
        && !path
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || c == '\\');
    ok.then_some(path)
}

/// The sign-in flow as an axum router: see the [module](self) for its routes.
///
/// `tenants` resolves the workspace named in a link request; `links`, `sessions` and `totp`
/// are the services the application also uses elsewhere (shared, not copied).
pub struct SignInRoutes<T, D, M> {
    flow: Arc<Flow<T, D, M>>,
}

impl<T, D, M> std::fmt::Debug for SignInRoutes<T, D, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignInRoutes")
            .field("config", &self.flow.config)
            .finish_non_exhaustive()
    }
}

struct Flow<T, D, M> {
    tenants: T,
    links: Arc<MagicLinks<D, M>>,
    sessions: SessionStore,
    totp: Arc<TotpService>,
    config: SignInConfig,
    origin: String,
}

impl<T, D, M> SignInRoutes<T, D, M>
where
    T: TenantDirectory,
    D: AccountDirectory,
    M: Mailer,
{
    /// The routes over these services, with `config`.
    ///
    /// # Errors
    /// [`AuthError::InvalidConfig`] when `config` does not pass [`SignInConfig::validate`].
    pub fn new(
        tenants: T,
        links: Arc<MagicLinks<D, M>>,
        sessions: SessionStore,
        totp: Arc<TotpService>,
        config: SignInConfig,
    ) -> Result<Self, AuthError> {
        config.validate()?;
        let origin = links.config().base_url.origin().ascii_serialization();
        Ok(Self {
            flow: Arc::new(Flow {
                tenants,
                links,
                sessions,
                totp,
                config,
                origin,
            }),
        })
    }

    /// The router, for any application state. Nest it (`Router::nest("/auth", ..)`) inside a
    /// [`SessionManagerLayer`](crate::SessionManagerLayer).
    pub fn into_router<S: Clone + Send + Sync + 'static>(self) -> Router<S> {
        self.into_routes()
            .into_iter()
            .fold(Router::new(), |router, (path, route)| {
                router.route(path, route)
            })
    }

    /// The same routes one by one, each with its layers and state: `(path, method router)`,
    /// for an application that adds routes through its own builder (such as
    /// `authz_matrix::RecordingRouter`, so its authorization matrix covers them) under a prefix
    /// of its choice.
    pub fn into_routes<S: Clone + Send + Sync + 'static>(
        self,
    ) -> Vec<(&'static str, MethodRouter<S>)> {
        let origin = self.flow.origin.clone();
        let link = if self.flow.config.landing_page {
            get(landing).post(request_link::<T, D, M>)
        } else {
            post(request_link::<T, D, M>)
        };
        let routes: Vec<(&'static str, FlowRoute<T, D, M>)> = vec![
            ("/link", link),
            ("/link/confirm", post(confirm_link::<T, D, M>)),
            (
                "/totp",
                get(totp_state::<T, D, M>).post(second_factor::<T, D, M>),
            ),
            ("/totp/enrol", post(enrol::<T, D, M>)),
            ("/step-up", post(step_up::<T, D, M>)),
            ("/sign-out", post(sign_out::<T, D, M>)),
            ("/sessions", get(sessions::<T, D, M>)),
            ("/sessions/revoke-others", post(revoke_others::<T, D, M>)),
            ("/sessions/{id}/revoke", post(revoke_one::<T, D, M>)),
            ("/recovery-codes", post(recovery_codes::<T, D, M>)),
            ("/totp/replace", post(start_replacement::<T, D, M>)),
            (
                "/totp/replace/confirm",
                post(complete_replacement::<T, D, M>),
            ),
            ("/email", post(request_email::<T, D, M>)),
            ("/email/confirm", post(confirm_email::<T, D, M>)),
            ("/account/disable", post(disable::<T, D, M>)),
        ];
        routes
            .into_iter()
            .map(|(path, route)| {
                // Route layers: a method the route does not answer stays `405`, never reaching
                // them (so a recording router sees which methods are served).
                let route: FlowRoute<T, D, M> = route
                    .route_layer(axum::middleware::from_fn(form_refusals))
                    .route_layer(GuardLayer::same_origin(&[origin.as_str()]));
                (path, route.with_state(Arc::clone(&self.flow)))
            })
            .collect()
    }
}

type Shared<T, D, M> = State<Arc<Flow<T, D, M>>>;
type FlowRoute<T, D, M> = MethodRouter<Arc<Flow<T, D, M>>>;

// ---------------------------------------------------------------------------------------------
// Bodies and answers

/// How a body came: a script's JSON, or a page's form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Json,
    Form,
}

/// A request body, JSON or form-encoded, at most [`MAX_BODY`] bytes.
struct Input<B> {
    body: B,
    mode: Mode,
}

impl<S: Send + Sync, B: DeserializeOwned> FromRequest<S> for Input<B> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let kind = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|v| v.trim().to_ascii_lowercase());
        let mode = match kind.as_deref() {
            Some("application/json") => Mode::Json,
            Some("application/x-www-form-urlencoded") => Mode::Form,
            _ => {
                return Err(refuse(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    "send JSON (application/json) or a form (application/x-www-form-urlencoded)",
                ));
            }
        };
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n > MAX_BODY) {
            return Err(too_large());
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|_| invalid())?;
        if bytes.len() > MAX_BODY {
            return Err(too_large());
        }
        let value = match mode {
            Mode::Json => serde_json::from_slice::<Value>(&bytes).map_err(|_| invalid())?,
            Mode::Form => {
                let mut fields = serde_json::Map::new();
                for (key, value) in url::form_urlencoded::parse(&bytes) {
                    // A field given twice leaves its value to the reader: refused.
                    if fields
                        .insert(key.into_owned(), Value::String(value.into_owned()))
                        .is_some()
                    {
                        return Err(invalid());
                    }
                }
                Value::Object(fields)
            }
        };
        let body = serde_json::from_value(value).map_err(|_| invalid())?;
        Ok(Self { body, mode })
    }
}

fn invalid() -> Response {
    refuse(
        StatusCode::BAD_REQUEST,
        "invalid_request",
        "the request body is not what this route takes",
    )
}

fn too_large() -> Response {
    refuse(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        "the request body is too large",
    )
}

fn refuse(status: StatusCode, code: &'static str, message: &'static str) -> Response {
    Rejection::from_static(status, code, message).into_response()
}

/// A JSON answer, never cached.
fn reply(status: StatusCode, body: &Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A completed step: JSON (with `"redirect"`) for a script, `303` for a page's form.
fn done(config: &SignInConfig, mode: Mode, next: Option<&str>, body: Value) -> Response {
    done_with(config, mode, next, StatusCode::OK, body)
}

/// [`done`] with the status a script gets.
fn done_with(
    config: &SignInConfig,
    mode: Mode,
    next: Option<&str>,
    status: StatusCode,
    mut body: Value,
) -> Response {
    let target = next
        .and_then(local_path)
        .unwrap_or(&config.after_sign_in)
        .to_owned();
    if mode == Mode::Form {
        return see_other(&target);
    }
    if let Value::Object(fields) = &mut body {
        fields.insert("redirect".to_owned(), Value::String(target));
    }
    reply(status, &body)
}

/// `303 See Other` to `target` (a path of this site), never cached.
fn see_other(target: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(location) = HeaderValue::from_str(target) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A page's form that names a `back` page (a path of this site) gets its refusals there: `303`
/// to `back` with `error=<code>` added to its query, so the page can say what went wrong. A
/// script's request, and a form without `back`, get the JSON refusal. Refusals made before
/// this (another origin) are never turned into a redirect.
async fn form_refusals(request: Request, next: axum::middleware::Next) -> Response {
    let is_form = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if !is_form {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY).await else {
        return too_large();
    };
    let back = url::form_urlencoded::parse(&bytes)
        .find(|(key, _)| key == "back")
        .map(|(_, value)| value.into_owned())
        .filter(|back| local_path(back).is_some());
    let response = next
        .run(Request::from_parts(parts, axum::body::Body::from(bytes)))
        .await;
    let status = response.status();
    match (back, response.extensions().get::<Rejection>()) {
        (Some(back), Some(rejection)) if status.is_client_error() || status.is_server_error() => {
            let separator = if back.contains('?') { '&' } else { '?' };
            let mut redirected = see_other(&format!("{back}{separator}error={}", rejection.code()));
            // Cookies the refusal sets (a cleared session) still reach the browser.
            for cookie in response.headers().get_all(header::SET_COOKIE) {
                redirected
                    .headers_mut()
                    .append(header::SET_COOKIE, cookie.clone());
            }
            redirected
        }
        _ => response,
    }
}

/// An [`AuthError`] as the refusal a client may see. Failures of the machinery are logged here
/// and answered without detail.
fn failure(error: &AuthError) -> Response {
    match error {
        AuthError::InvalidToken => AuthRejectionLike::unauthenticated(),
        AuthError::InvalidLink | AuthError::AccountDisabled => refuse(
            StatusCode::UNAUTHORIZED,
            "link_invalid",
            "this link has expired, was used or replaced, or was opened in another browser than \
             the one that asked for it",
        ),
        AuthError::RateLimited { retry_at } => {
            let mut response = refuse(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many requests; try again later",
            );
            retry_after(&mut response, *retry_at);
            response
        }
        AuthError::StepUpRequired => refuse(
            StatusCode::FORBIDDEN,
            "step_up_required",
            "confirm your second factor again for this action",
        ),
        AuthError::InvalidEmail => refuse(
            StatusCode::BAD_REQUEST,
            "invalid_email",
            "enter an email address such as name@example.com",
        ),
        AuthError::EmailUnavailable => refuse(
            StatusCode::CONFLICT,
            "email_unavailable",
            "that email address cannot be used for this account",
        ),
        AuthError::NotEnrolled => refuse(
            StatusCode::CONFLICT,
            "not_enrolled",
            "there is no authenticator to check; set one up first",
        ),
        AuthError::AlreadyEnrolled => refuse(
            StatusCode::CONFLICT,
            "already_enrolled",
            "an authenticator is already set up",
        ),
        AuthError::Transaction(rls_guard::RlsError::SessionEnded) => refuse(
            StatusCode::UNAUTHORIZED,
            "session_ended",
            "this session has ended; sign in again",
        ),
        other if other.is_unavailable() => {
            tracing::warn!(error = %other, "sign-in: a service is unavailable");
            refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable",
                "sign-in is unavailable right now; try again shortly",
            )
        }
        AuthError::Directory => {
            tracing::warn!("sign-in: the account directory failed");
            refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable",
                "sign-in is unavailable right now; try again shortly",
            )
        }
        other => {
            tracing::error!(error = %other, "sign-in: request failed");
            refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "something went wrong; try again",
            )
        }
    }
}

/// The session layer's own refusals, for the same conditions met inside a route.
struct AuthRejectionLike;

impl AuthRejectionLike {
    fn unauthenticated() -> Response {
        crate::AuthRejection::Unauthenticated.into_response()
    }

    fn mfa_required() -> Response {
        crate::AuthRejection::MfaRequired.into_response()
    }
}

fn retry_after(response: &mut Response, until: OffsetDateTime) {
    let seconds = (until - OffsetDateTime::now_utc()).whole_seconds().max(1);
    if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
}

fn now() -> u64 {
    u64::try_from(OffsetDateTime::now_utc().unix_timestamp()).unwrap_or(0)
}

/// The client's address, when the server recorded it (`ConnectInfo<SocketAddr>`).
fn client(request_ip: Option<&ConnectInfo<SocketAddr>>) -> Option<IpAddr> {
    request_ip.map(|ConnectInfo(peer)| peer.ip())
}

fn user_agent(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
}

fn with_cookie(mut response: Response, cookie: HeaderValue) -> Response {
    response.headers_mut().append(header::SET_COOKIE, cookie);
    response
}

fn enrolment_json(enrolment: &Enrolment) -> Result<Value, AuthError> {
    let svg = enrolment.qr_svg()?;
    Ok(json!({
        "secret_base32": enrolment.secret_base32.expose_secret(),
        "otpauth_url": enrolment.otpauth_url.expose_secret(),
        "qr_svg": svg.expose_secret(),
    }))
}

/// The label an authenticator app shows for the account: its address. Otherwise the answer to
/// give: 401 `unauthenticated` when the account is gone or disabled, the failure when it cannot
/// be read.
async fn account_label<T, D: AccountDirectory, M: Mailer>(
    flow: &Flow<T, D, M>,
    session: &Session,
) -> Result<crate::EmailAddress, Response> {
    match flow.links.address(session.tenant, session.user).await {
        Ok(Some(label)) => Ok(label),
        Ok(None) => Err(AuthRejectionLike::unauthenticated()),
        Err(error) => Err(failure(&error)),
    }
}

// ---------------------------------------------------------------------------------------------
// Signing in

#[derive(Deserialize)]
struct LinkForm {
    #[serde(default)]
    workspace: Option<String>,
    #[serde(default)]
    tenant: Option<String>,
    email: String,
    #[serde(default)]
    next: Option<String>,
}

async fn request_link<T: TenantDirectory, D: AccountDirectory, M: Mailer>(
    State(flow): Shared<T, D, M>,
    peer: Option<axum::Extension<ConnectInfo<SocketAddr>>>,
    input: Input<LinkForm>,
) -> Response {
    let form = input.body;
    let tenant = match (&form.tenant, &form.workspace) {
        (Some(id), None) => match id.trim().parse::<Uuid>().map(TenantId::from_uuid) {
            Ok(Ok(tenant)) => flow
                .tenants
                .contains(tenant)
                .await
                .map(|ok| ok.then_some(tenant)),
            _ => return invalid(),
        },
        (None, Some(slug)) => {
            flow.tenants
                .by_slug(&slug.trim().to_ascii_lowercase())
                .await
        }
        _ => return invalid(),
    };
    let tenant = match tenant {
        Ok(tenant) => tenant,
        Err(error) => {
            tracing::warn!(%error, "sign-in: the tenant directory failed");
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable",
                "sign-in is unavailable right now; try again shortly",
            );
        }
    };
    let same_answer = |cookie: Option<HeaderValue>| {
        let mut response = done(
            &flow.config,
            input.mode,
            form.next.as_deref(),
            json!({
                "status": "link_requested",
                "message": "If that address belongs to an account in this workspace, a sign-in \
                            link is on its way. Open it in this browser.",
            }),
        );
        if input.mode == Mode::Json {
            *response.status_mut() = StatusCode::ACCEPTED;
        }
        match cookie {
            Some(cookie) => with_cookie(response, cookie),
            None => response,
        }
    };
    // An unknown workspace gets the same answer (without a verifier: there is nothing to bind).
    let Some(tenant) = tenant else {
        return same_answer(None);
    };
    let ip = client(peer.as_ref().map(|axum::Extension(info)| info));
    match flow.links.request(tenant, &form.email, ip).await {
        Ok(request) => {
            // Never awaited: the answer must not reveal, by timing, whether the account exists.
            drop(request.delivery);
            let max_age = flow.links.config().ttl.as_secs();
            let cookie = HeaderValue::from_str(&format!(
                "{}={}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age={max_age}",
                flow.config.verifier_cookie,
                request.verifier.expose_secret()
            ))
            .ok();
            same_answer(cookie)
        }
        Err(error) => failure(&error),
    }
}

#[derive(Deserialize)]
struct TokenQuery {
    #[serde(default)]
    token: String,
}

/// The link's landing page: a button that posts the token back. A scanner's `GET` neither
/// signs in nor uses up the link.
async fn landing(Query(query): Query<TokenQuery>) -> Response {
    // Only the characters a token has: nothing else reaches the page.
    let token: String = query
        .token
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .take(256)
        .collect();
    let page = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\"><title>Sign in</title></head>\
         <body><main><h1>Sign in</h1><form method=\"post\" action=\"link/confirm\">\
         <input type=\"hidden\" name=\"token\" value=\"{token}\">\
         <button type=\"submit\">Continue signing in</button></form></main></body></html>\n"
    );
    let mut response = (StatusCode::OK, page).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; form-action 'self'; frame-ancestors 'none'"),
    );
    response
}

#[derive(Deserialize)]
struct TokenForm {
    token: String,
    #[serde(default)]
    next: Option<String>,
}

async fn confirm_link<T: TenantDirectory, D: AccountDirectory, M: Mailer>(
    State(flow): Shared<T, D, M>,
    peer: Option<axum::Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    input: Input<TokenForm>,
) -> Response {
    let TokenForm { token, next } = input.body;
    let verifier = cookie_value(&headers, &flow.config.verifier_cookie)
        .unwrap_or("")
        .to_owned();
    let sign_in = match flow
        .links
        .confirm(SecretString::from(token), SecretString::from(verifier))
        .await
    {
        Ok(sign_in) => sign_in,
        Err(error) => return failure(&error),
    };
    let ip = client(peer.as_ref().map(|axum::Extension(info)| info));
    // `sign_in` refuses a sign-in that a revocation or a disable overtook since.
    match flow
        .sessions
        .sign_in(&sign_in, user_agent(&headers), ip)
        .await
    {
        Ok((session, token)) => {
            let response = done(
                &flow.config,
                input.mode,
                next.as_deref(),
                json!({ "assurance": "aal1", "next_step": "second_factor" }),
            );
            let mut response = with_cookie(response, session_cookie(&token, &session));
            let clear = format!(
                "{}=; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=0",
                flow.config.verifier_cookie
            );
            if let Ok(clear) = HeaderValue::from_str(&clear) {
                response.headers_mut().append(header::SET_COOKIE, clear);
            }
            response.headers_mut().insert(
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            );
            response
        }
        Err(error) => failure(&error),
    }
}

// ---------------------------------------------------------------------------------------------
// The second factor

async fn totp_state<T: TenantDirectory, D: AccountDirectory, M: Mailer>(
    State(flow): Shared<T, D, M>,
    session: Session,
) -> Response {
    let label = match account_label(&flow, &session).await {
        Ok(label) => label,
        Err(answer) => return answer,
    };
    match flow
        .totp
        .enrolment_state(session.tenant, session.user, label.as_str())
        .await
    {
        Ok(EnrolmentState::Active) => reply(StatusCode::OK, &json!({ "state": "active" })),
        Ok(EnrolmentState::Pending(enrolment)) => match enrolment_json(&enrolment) {
            Ok(shown) => reply(
                StatusCode::OK,
                &json!({ "state": "pending", "enrolment": shown }),
            ),
            Err(error) => failure(&error),
        },
        Ok(_) => reply(StatusCode::OK, &json!({ "state": "not_started" })),
        Err(error) => failure(&error),
    }
}

/// Starts an enrolment unless one is active; a pending one is shown again rather than
/// replaced (the person may have scanned it already).
async fn enrol<T: TenantDirectory, D: AccountDirectory, M: Mailer>(
    State(flow): Shared<T, D, M>,
    session: Session,
    input: Input<NextForm>,
) -> Response {
    let label = match account_label(&flow, &session).await {
        Ok(label) => label,
        Err(answer) => return answer,
    };
    let (tenant, user) = (session.tenant, session.user);
    let enrolment = match flow
        .totp
        .enrolment_state(tenant, user, label.as_str())
        .await
    {
        Ok(EnrolmentState::Active) => return failure(&AuthError::AlreadyEnrolled),
        Ok(EnrolmentState::Pending(enrolment)) => Ok((StatusCode::OK, enrolment)),
        Ok(_) => flow
            .totp
            .enroll(tenant, user, label.as_str())
            .await
            .map(|e| (StatusCode::CREATED, e)),
        Err(error) => Err(error),
    };
    match enrolment.and_then(|(status, e)| Ok((status, enrolment_json(&e)?))) {
        Ok((status, shown)) => done_with(
            &flow.config,
            input.mode,
            input.body.next.as_deref(),
            status,
            json!({ "state": "pending", "enrolment": shown }),
        ),
        Err(error) => failure(&error),
    }
}

/// A body with nothing but where to go next.
#[derive(Deserialize)]
struct NextForm {
    #[serde(default)]
    next: Option<String>,
}

#[derive(Deserialize)]
struct CodeForm {
    code: String,
    #[serde(default)]
    next: Option<String>,
}

/// `POST /totp`: the second factor at sign-in (confirming a pending enrolment on the first),
/// or a step-up for an `aal2` session. A code longer than a TOTP code is a recovery code.
async fn second_factor<T: TenantDirectory, D: AccountDirectory, M: Mailer>(
    State(flow): Shared<T, D, M>,
    session: Session,
    input: Input<CodeForm>,
) -> Response {
    check_code(&flow, &session, input).await
}

/// `POST /step-up`: the same check, only for an `aal2` session.
async fn step_up<T: TenantDirectory, D: AccountDirectory, M: Mailer>(
    State(flow): Shared<T, D, M>,
    session: Session,
    input: Input<CodeForm>,
) -> Response {
    if session.assurance != Assurance::Aal2 {
        return AuthRejectionLike::mfa_required();
    }
    check_code(&flow, &session, input).await
}

async fn check_code<T, D: AccountDirectory, M: Mailer>(
    flow: &Flow<T, D, M>,
    session: &Session,
    input: Input<CodeForm>,
) -> Response {
    let Input {
        body: CodeForm { code, next },
        mode,
    } = input;
    let secret = SecretString::from(code.trim().to_owned());
    let code = secret.expose_secret();
    let (tenant, user) = (session.tenant, session.user);
    let label = match account_label(flow, session).await {
        Ok(label) => label,
        Err(answer) => return answer,
    };
    let active = match flow
        .totp
        .enrolment_state(tenant, user, label.as_str())
        .await
    {
        Ok(state) => matches!(state, EnrolmentState::Active),
        Err(error) => return failure(&error),
    };
    let check = if !active {
        flow.totp.confirm(tenant, user, code, now()).await
    } else if code.len() > 8 {
        flow.totp
            .use_recovery_code(tenant, user, &secret, now())
            .await
    } else {
        flow.totp.verify(tenant, user, code, now()).await
    };
    match check {
        Ok(CodeCheck::Accepted { .. } | CodeCheck::RecoveryAccepted { .. }) => {
            rotated(flow, session, mode, next.as_deref()).await
        }
        Ok(verdict) => code_refused(verdict),
        Err(error) => failure(&error),
    }
}

/// The session replaced by a fresh `aal2` one (new token, factor check now).
async fn rotated<T, D, M>(
    flow: &Flow<T, D, M>,
    session: &Session,
    mode: Mode,
    next: Option<&str>,
) -> Response {
    match flow.sessions.rotate(session, Assurance::Aal2).await {
        Ok((fresh, token)) => {
            let response = done(&flow.config, mode, next, json!({ "assurance": "aal2" }));
            with_cookie(response, session_cookie(&token, &fresh))
        }
        Err(error) => failure(&error),
    }
}

fn code_refused(verdict: CodeCheck) -> Response {
    match verdict {
        CodeCheck::Locked { until } => {
            let mut response = refuse(
                StatusCode::TOO_MANY_REQUESTS,
                "factor_locked",
                "too many wrong codes; wait, then try again",
            );
            retry_after(&mut response, until);
            response
        }
        CodeCheck::HardLocked => refuse(
            StatusCode::TOO_MANY_REQUESTS,
            "factor_locked",
            "too many wrong codes; use a recovery code or ask an operator to unlock the account",
        ),
        _ => refuse(
            StatusCode::UNAUTHORIZED,
            "code_rejected",
            "that code is not right; check your authenticator app and try again",
        ),
    }
}

async fn sign_out<T, D, M>(
    State(flow): Shared<T, D, M>,
    session: Session,
    input: Input<NextForm>,
) -> Response {
    match flow.sessions.revoke(session.tenant, session.id).await {
        Ok(_) => with_cookie(
            done(
                &flow.config,
                input.mode,
                input.body.next.as_deref(),
                json!({ "status": "signed_out" }),
            ),
            clear_session_cookie(),
        ),
        Err(error) => failure(&error),
    }
}

// ---------------------------------------------------------------------------------------------
// Sessions

/// The refusal for a session below `aal2`; `None` for an `aal2` session.
fn below_aal2(session: &Session) -> Option<Response> {
    (session.assurance != Assurance::Aal2).then(AuthRejectionLike::mfa_required)
}

async fn sessions<T, D, M>(State(flow): Shared<T, D, M>, session: Session) -> Response {
    if let Some(refused) = below_aal2(&session) {
        return refused;
    }
    match flow.sessions.list(session.tenant, session.user).await {
        Ok(list) => {
            let list: Vec<Value> = list
                .iter()
                .map(|s| {
                    json!({
                        "id": s.id.to_string(),
                        "current": s.id == session.id,
                        "assurance": match s.assurance {
                            Assurance::Aal1 => "aal1",
                            Assurance::Aal2 => "aal2",
                        },
                        "created_at": s.created_at.unix_timestamp(),
                        "last_seen_at": s.last_seen_at.unix_timestamp(),
                        "user_agent": s.user_agent,
                        "ip": s.ip.map(|ip| ip.to_string()),
                    })
                })
                .collect();
            reply(StatusCode::OK, &json!({ "sessions": list }))
        }
        Err(error) => failure(&error),
    }
}

async fn revoke_one<T, D, M>(
    State(flow): Shared<T, D, M>,
    session: Session,
    Path(id): Path<String>,
    input: Input<NextForm>,
) -> Response {
    if let Some(refused) = below_aal2(&session) {
        return refused;
    }
    let not_found = || refuse(StatusCode::NOT_FOUND, "not_found", "no such session");
    let Ok(id) = id.parse::<Uuid>() else {
        return not_found();
    };
    // Only the account's own sessions: another account's id is "not found".
    match flow.sessions.list(session.tenant, session.user).await {
        Ok(list) if list.iter().any(|s| s.id == id) => {}
        Ok(_) => return not_found(),
        Err(error) => return failure(&error),
    }
    match flow.sessions.revoke(session.tenant, id).await {
        Ok(_) => {
            let response = done(
                &flow.config,
                input.mode,
                input.body.next.as_deref(),
                json!({ "revoked": 1 }),
            );
            if id == session.id {
                with_cookie(response, clear_session_cookie())
            } else {
                response
            }
        }
        Err(error) => failure(&error),
    }
}

async fn revoke_others<T, D, M>(
    State(flow): Shared<T, D, M>,
    session: Session,
    input: Input<NextForm>,
) -> Response {
    if let Some(refused) = below_aal2(&session) {
        return refused;
    }
    match flow
        .sessions
        .revoke_all(session.tenant, session.user, Some(session.id))
        .await
    {
        Ok(n) => done(
            &flow.config,
            input.mode,
            input.body.next.as_deref(),
            json!({ "revoked": n }),
        ),
        Err(error) => failure(&error),
    }
}

// ---------------------------------------------------------------------------------------------
// Settings: each sensitive action is checked again by the service that performs it.

async fn recovery_codes<T, D: AccountDirectory, M: Mailer>(
    State(flow): Shared<T, D, M>,
    session: Session,
    // A body like every other `POST`; the answer is JSON whatever it says.
    _input: Input<NextForm>,
) -> Response {
    match flow
        .totp
        .regenerate_recovery_codes(&session, flow.config.step_up_max_age)
        .await
    {
        Ok(codes) => {
            notify(&flow, &session, Notice::RecoveryCodesRegenerated).await;
            let codes: Vec<&str> = codes.codes().iter().map(|c| c.expose_secret()).collect();
            reply(StatusCode::OK, &json!({ "codes": codes }))
        }
        Err(error) => failure(&error),
    }
}

#[derive(Deserialize)]
struct ReplaceForm {
    #[serde(default)]
    recovery_code: Option<String>,
    #[serde(default)]
    next: Option<String>,
}

async fn start_replacement<T, D: AccountDirectory, M: Mailer>(
    State(flow): Shared<T, D, M>,
    session: Session,
    input: Input<ReplaceForm>,
) -> Response {
    let label = match account_label(&flow, &session).await {
        Ok(label) => label,
        Err(answer) => return answer,
    };
    let Input {
        body: ReplaceForm {
            recovery_code,
            next,
        },
        mode,
    } = input;
    let recovery = recovery_code
        .map(|code| code.trim().to_owned())
        .filter(|code| !code.is_empty())
        .map(SecretString::from);
    let proof = match &recovery {
        Some(code) => ReplaceProof::RecoveryCode(code),
        None => ReplaceProof::StepUp {
            max_age: flow.config.step_up_max_age,
        },
    };
    match flow
        .totp
        .start_replacement(&session, proof, label.as_str(), now())
        .await
        .and_then(|e| enrolment_json(&e))
    {
        Ok(shown) => done_with(
            &flow.config,
            mode,
            next.as_deref(),
            StatusCode::CREATED,
            json!({ "state": "pending", "enrolment": shown }),
        ),
        Err(error) => failure(&error),
    }
}

async fn complete_replacement<T, D: AccountDirectory, M: Mailer>(
    State(flow): Shared<T, D, M>,
    session: Session,
    input: Input<CodeForm>,
) -> Response {
    let Input {
        body: CodeForm { code, next },
        mode,
    } = input;
    let code = SecretString::from(code.trim().to_owned());
    match flow
        .totp
        .complete_replacement(&session, code.expose_secret(), now())
        .await
    {
        Ok(true) => {
            notify(&flow, &session, Notice::AuthenticatorReplaced).await;
            rotated(&flow, &session, mode, next.as_deref()).await
        }
        Ok(false) => code_refused(CodeCheck::Rejected { remaining: 0 }),
        Err(AuthError::NotEnrolled) => refuse(
            StatusCode::CONFLICT,
            "not_enrolled",
            "no new authenticator is waiting to be confirmed; start the replacement again",
        ),
        Err(error) => failure(&error),
    }
}

#[derive(Deserialize)]
struct EmailForm {
    email: String,
    #[serde(default)]
    next: Option<String>,
}

async fn request_email<T, D: AccountDirectory, M: Mailer>(
    State(flow): Shared<T, D, M>,
    session: Session,
    input: Input<EmailForm>,
) -> Response {
    match flow
        .links
        .request_email_change(&session, &input.body.email, flow.config.step_up_max_age)
        .await
    {
        Ok(()) => done_with(
            &flow.config,
            input.mode,
            input.body.next.as_deref(),
            StatusCode::ACCEPTED,
            json!({
                "status": "confirmation_sent",
                "message": "A confirmation link is on its way to the new address; nothing \
                            changes until it is opened in this session.",
            }),
        ),
        Err(error) => failure(&error),
    }
}

async fn confirm_email<T, D: AccountDirectory, M: Mailer>(
    State(flow): Shared<T, D, M>,
    session: Session,
    input: Input<TokenForm>,
) -> Response {
    let TokenForm { token, next } = input.body;
    match flow
        .links
        .confirm_email_change(&session, SecretString::from(token))
        .await
    {
        Ok(address) => done(
            &flow.config,
            input.mode,
            next.as_deref(),
            json!({ "email": address.as_str() }),
        ),
        Err(error) => failure(&error),
    }
}

/// The body of `POST /account/disable`: the word `disable`, typed, so that no stray or
/// scripted submission disables an account by accident.
#[derive(Deserialize)]
struct DisableForm {
    #[serde(default)]
    confirm: Option<String>,
    #[serde(default)]
    next: Option<String>,
}

async fn disable<T, D: AccountDirectory, M: Mailer>(
    State(flow): Shared<T, D, M>,
    session: Session,
    input: Input<DisableForm>,
) -> Response {
    if !session.is_fresh(flow.config.step_up_max_age) {
        return failure(&AuthError::StepUpRequired);
    }
    if input.body.confirm.as_deref().map(str::trim) != Some("disable") {
        return refuse(
            StatusCode::BAD_REQUEST,
            "confirmation_required",
            "type the word disable to confirm; nothing was changed",
        );
    }
    // The address is read while the account is still enabled; the notice goes after.
    let address = flow.links.address(session.tenant, session.user).await;
    match flow
        .sessions
        .disable_account(session.tenant, session.user)
        .await
    {
        Ok(()) => {
            // magic-auth already refuses every sign-in of the account; the application's own
            // record follows. A failure there changes nothing of that, so it is logged.
            flow.links
                .account_disabled(session.tenant, session.user)
                .await;
            if let Ok(Some(address)) = address {
                flow.links.notify(address, Notice::AccountDisabled);
            }
            with_cookie(
                done(
                    &flow.config,
                    input.mode,
                    input.body.next.as_deref(),
                    json!({ "status": "disabled" }),
                ),
                clear_session_cookie(),
            )
        }
        Err(error) => failure(&error),
    }
}

/// Sends `notice` to the session's account in the background (see
/// [`Notice`](crate::mailer::Notice)); a failure to find the address is logged.
async fn notify<T, D: AccountDirectory, M: Mailer>(
    flow: &Flow<T, D, M>,
    session: &Session,
    notice: Notice,
) {
    match flow.links.address(session.tenant, session.user).await {
        Ok(Some(address)) => flow.links.notify(address, notice),
        Ok(None) => {}
        Err(error) => tracing::error!(%error, "a security notice could not be addressed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_paths_only() {
        for ok in ["/", "/notes", "/a/b?c=d#e"] {
            assert_eq!(local_path(ok), Some(ok), "{ok}");
        }
        for bad in [
            "",
            "notes",
            "//evil.example",
            "/\\evil.example",
            "https://evil.example/",
            "/a b",
            "/a\nb",
            "/a\\b",
        ] {
            assert_eq!(local_path(bad), None, "{bad:?}");
        }
        assert_eq!(local_path(&format!("/{}", "a".repeat(600))), None);
    }

    #[test]
    fn config_is_checked() {
        assert!(SignInConfig::new().validate().is_ok());
        assert!(
            SignInConfig::new()
                .after_sign_in("https://evil.example/")
                .validate()
                .is_err()
        );
        assert!(
            SignInConfig::new()
                .step_up_max_age(Duration::ZERO)
                .validate()
                .is_err()
        );
        assert!(
            SignInConfig::new()
                .step_up_max_age(Duration::MAX)
                .validate()
                .is_err()
        );
        let mut config = SignInConfig::new();
        for bad in ["verifier", "__Host-", "__Host-a;b", "__Host-a=b"] {
            config.verifier_cookie = bad.to_owned();
            assert!(config.validate().is_err(), "{bad}");
        }
    }
}
