//! The router: the layer stack every request passes, and the pages.
//!
//! ```text
//! request id + trace span -> security headers -> refusal pages -> magic-auth session
//!   -> refusal pages -> same-origin check -> input hygiene
//!   -> tenant-scope (tenant routes) -> guards (sign-in, MFA, step-up) -> handler
//!   -> rls-guard transaction -> PostgreSQL row-level security
//! ```
//!
//! The refusal pages ([`refusal`]) turn the guards' JSON refusals into pages on every route
//! outside `/api/` (the outer copy catches the session store being down). Every redirect goes
//! through [`crate::redirect`].

mod admin;
mod api;
mod auth;
mod enrolment;
mod hygiene;
mod pages;
mod refusal;
mod settings;
mod staff;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use askama::Template;
use audit_log::{AuditLayer, actions};
use authz_matrix::{RecordingRouter, RouteRecord};
use axum::Router;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use magic_auth::routes::{SignInConfig, SignInRoutes};
use magic_auth::{Guard, Session, SessionManagerLayer};
use tenant_scope::{ActorKind, ActorResolver, TenantLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;

pub(crate) use self::enrolment::ISSUER as TOTP_ISSUER;
use crate::state::{AppState, Services, Workspaces};

/// How fresh a second factor must be for sensitive routes (approvals).
pub(crate) const STEP_UP_MAX_AGE: Duration = Duration::from_secs(10 * 60);

/// What the page header shows.
pub(crate) struct Nav {
    pub(crate) signed_in: bool,
    pub(crate) staff: bool,
    pub(crate) label: String,
    pub(crate) development: bool,
}

impl Nav {
    pub(crate) fn of(state: &AppState, session: Option<&Session>) -> Self {
        Self {
            signed_in: session.is_some(),
            staff: session.is_some_and(|s| s.kind == ActorKind::Staff),
            label: session.map_or_else(String::new, |s| {
                format!(
                    "{} ({})",
                    if s.kind == ActorKind::Staff {
                        "staff"
                    } else {
                        "member"
                    },
                    if s.assurance == magic_auth::Assurance::Aal2 {
                        "2 factors"
                    } else {
                        "1 factor"
                    }
                )
            }),
            development: state.development,
        }
    }
}

#[derive(Template)]
#[template(path = "message.html")]
pub(crate) struct MessagePage {
    pub(crate) nav: Nav,
    pub(crate) title: String,
    pub(crate) text: String,
    pub(crate) link: Option<(String, String)>,
}

/// Renders a template, or a plain 500 if rendering fails.
pub(crate) fn render(status: StatusCode, page: &impl Template) -> Response {
    match page.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(error) => {
            tracing::error!(%error, "template rendering failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
        }
    }
}

/// A time as every page shows it: to the second, in UTC (the server cannot know the reader's
/// zone; the page's script shows it in theirs).
pub(crate) fn when(t: time::OffsetDateTime) -> When {
    let t = t.to_offset(time::UtcOffset::UTC);
    let (date, clock) = (
        format!("{:04}-{:02}-{:02}", t.year(), u8::from(t.month()), t.day()),
        format!("{:02}:{:02}:{:02}", t.hour(), t.minute(), t.second()),
    );
    When {
        iso: format!("{date}T{clock}Z"),
        text: format!("{date} {clock} UTC"),
    }
}

/// A moment as the pages show it, in a `<time>` element: `text` in UTC to the second, `iso` its
/// `datetime`, from which the pages' one script (`templates/local-time.js`, allowed by its hash
/// in the Content-Security-Policy) rewrites the text in the reader's own time zone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct When {
    pub(crate) iso: String,
    pub(crate) text: String,
}

/// A page with a title, a sentence and an optional link.
pub(crate) fn message(
    state: &AppState,
    session: Option<&Session>,
    status: StatusCode,
    title: &str,
    text: &str,
    link: Option<(&str, &str)>,
) -> Response {
    render(
        status,
        &MessagePage {
            nav: Nav::of(state, session),
            title: title.to_owned(),
            text: text.to_owned(),
            link: link.map(|(h, l)| (h.to_owned(), l.to_owned())),
        },
    )
}

/// Whether `path` is a JSON route (errors as JSON) rather than a page.
pub(crate) fn is_api(path: &str) -> bool {
    path == "/api" || path.starts_with("/api/")
}

/// A JSON error: `{"error": "<code>", "message": "<text>"}`, the workspace's one refusal shape
/// ([`tenant_scope::Rejection`]).
pub(crate) fn json_error(status: StatusCode, code: &'static str, text: &str) -> Response {
    tenant_scope::Rejection::new(status, code, text.to_owned()).into_response()
}

/// `303 See Other` to `target`, through the one redirect check (see [`crate::redirect`]).
pub(crate) fn redirect(state: &AppState, target: &str) -> Response {
    crate::redirect::see_other(&state.base_url, target)
}

/// A failure: logged with its cause, answered without it. When the cause is the database
/// being unreachable (anywhere in the error's source chain, as rls-guard classifies it), the
/// answer is `503`: the request could not be checked or served, and may be retried.
pub(crate) fn internal(state: &AppState, error: &(dyn std::error::Error + 'static)) -> Response {
    if session_ended(error) {
        // The database refused a statement made for a session that has ended (revoked on
        // another instance a moment ago, or while this request was in flight).
        let mut response = message(
            state,
            None,
            StatusCode::UNAUTHORIZED,
            "Sign in to continue",
            "You are not signed in, or your session has ended. Sign in, then open the page again.",
            Some(("/", "Sign in")),
        );
        response
            .headers_mut()
            .append(header::SET_COOKIE, magic_auth::clear_session_cookie());
        return response;
    }
    if database_unavailable(error) {
        tracing::warn!(%error, "database unavailable");
        return message(
            state,
            None,
            StatusCode::SERVICE_UNAVAILABLE,
            "Temporarily unavailable",
            "The service cannot reach its database right now. Nothing was changed; try again in a moment.",
            None,
        );
    }
    tracing::error!(%error, "request failed");
    message(
        state,
        None,
        StatusCode::INTERNAL_SERVER_ERROR,
        "Something went wrong",
        "The request could not be completed. Nothing was changed.",
        None,
    )
}

/// `error` and each of its sources, outermost first.
fn error_chain<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(error), |e| e.source())
}

/// Whether `error` or any of its sources is the database refusing a statement because the
/// session it was made for has ended.
pub(crate) fn session_ended(error: &(dyn std::error::Error + 'static)) -> bool {
    error_chain(error).any(|e| {
        matches!(
            e.downcast_ref::<rls_guard::RlsError>(),
            Some(rls_guard::RlsError::SessionEnded)
        )
    })
}

/// Whether `error` or any of its sources is the database being unreachable.
pub(crate) fn database_unavailable(error: &(dyn std::error::Error + 'static)) -> bool {
    error_chain(error).any(|e| {
        e.downcast_ref::<rls_guard::RlsError>()
            .is_some_and(rls_guard::RlsError::is_unavailable)
            || e.downcast_ref::<sqlx::Error>()
                .is_some_and(rls_guard::is_unavailable)
    })
}

/// The pages' one script, rendered exactly as `base.html` includes it.
#[derive(Template)]
#[template(source = r#"{% include "local-time.js" %}"#, ext = "html")]
struct LocalTimeScript;

/// The Content-Security-Policy: nothing but the app's stylesheet, images it inlines, and the one
/// inline script whose SHA-256 it names (no other script, inline or from anywhere, runs).
fn content_security_policy() -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    let script = LocalTimeScript.render().unwrap_or_default();
    let hash =
        base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(script.as_bytes()));
    format!(
        "default-src 'none'; script-src 'sha256-{hash}'; style-src 'self'; img-src 'self' data:; \
         form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    )
}

fn security_headers() -> [(HeaderName, HeaderValue); 7] {
    static CSP: std::sync::LazyLock<HeaderValue> = std::sync::LazyLock::new(|| {
        HeaderValue::from_str(&content_security_policy())
            .unwrap_or_else(|_| unreachable!("base64 and fixed ASCII text"))
    });
    [
        (
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=63072000; includeSubDomains"),
        ),
        (header::CONTENT_SECURITY_POLICY, CSP.clone()),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("same-origin"),
        ),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        (
            HeaderName::from_static("cross-origin-opener-policy"),
            HeaderValue::from_static("same-origin"),
        ),
    ]
}

const STYLESHEET: &str = include_str!("../../static/app.css");

/// The whole application, and the record of every route it serves (built through the
/// recorder, so the authorization matrix can prove it covers them all).
///
/// # Errors
/// When the sign-in routes' configuration is refused.
pub(crate) fn router(state: AppState) -> Result<(Router, RouteRecord), magic_auth::AuthError> {
    router_with(state, false)
}

/// [`router`], with `/baseline/members/{user}/role` when `unaudited_baseline` is set: the JSON
/// role change behind the same layers but no `AuditLayer` and no record (see
/// [`crate::App::unaudited_write_baseline`]; never served by the app).
pub(crate) fn router_with(
    state: AppState,
    unaudited_baseline: bool,
) -> Result<(Router, RouteRecord), magic_auth::AuthError> {
    // Tenant administration: privileged, so the audit layer sits inside the tenant layer and
    // outside the guards (their denials are recorded too).
    let role_change = RecordingRouter::new()
        .route("/admin/members/{user}/role", post(admin::change_role))
        .route("/api/admin/members/{user}/role", post(api::change_role))
        .layer(AuditLayer::new(
            state.audit.clone(),
            actions::MEMBER_ROLE_CHANGED,
        ));
    let export = RecordingRouter::new()
        .route("/admin/export", post(admin::export))
        .route("/api/admin/export", post(api::export))
        .layer(Guard::require_step_up(STEP_UP_MAX_AGE))
        .layer(AuditLayer::new(state.audit.clone(), actions::DATA_EXPORTED));
    // New recovery codes, shown once on this app's own page: a fresh second factor (magic-auth
    // checks it again). The other settings forms post to magic-auth's routes below.
    let recovery_codes = RecordingRouter::new()
        .route("/settings/recovery-codes", post(settings::recovery_codes))
        .layer(Guard::require_step_up(STEP_UP_MAX_AGE));
    // Routes for a member of a tenant, signed in with both factors: the tenant comes from the
    // session's actor.
    let tenant_routes = RecordingRouter::new()
        .route("/settings", get(settings::page))
        .route("/settings/email/confirm", get(settings::email_landing))
        .route("/notes", get(pages::notes).post(pages::create_note))
        .route(
            "/notes/{id}",
            get(pages::edit_note).post(pages::update_note),
        )
        .route("/notes/{id}/delete", post(pages::delete_note))
        .route(
            "/assistant",
            get(pages::assistant).post(pages::run_assistant),
        )
        .route("/sessions", get(pages::sessions))
        .route("/sessions/{id}/revoke", post(pages::revoke_session))
        .route("/sessions/revoke-others", post(pages::revoke_others))
        .route("/admin/members", get(admin::members))
        .route("/api/notes", get(api::list_notes).post(api::create_note))
        .route(
            "/api/notes/{id}",
            get(api::get_note).delete(api::delete_note),
        )
        .route("/api/sessions", get(api::sessions))
        .route("/api/proposals", get(api::proposals))
        .route("/api/assistant", post(api::assistant))
        .route("/api/admin/members", get(api::members))
        .merge(role_change)
        .merge(if unaudited_baseline {
            RecordingRouter::new().route(
                "/baseline/members/{user}/role",
                post(api::change_role_unaudited),
            )
        } else {
            RecordingRouter::new()
        })
        .merge(export)
        .merge(recovery_codes)
        .layer(TenantLayer::new(ActorResolver))
        .layer(Guard::require_two_factors());
    // Staff: two factors always; approving needs a fresh one.
    let staff_sensitive = RecordingRouter::new()
        .route(
            "/staff/approvals/{tenant}/{id}/approve",
            post(staff::approve),
        )
        .route("/api/staff/approvals/{tenant}/{id}", post(api::decide))
        .layer(Guard::require_step_up(STEP_UP_MAX_AGE));
    let staff_routes = RecordingRouter::new()
        .route("/staff/approvals", get(staff::approvals))
        .route("/staff/visit", post(staff::open_visit))
        .route("/staff/visit/end", post(staff::end_visit))
        .route("/staff/approvals/{tenant}/{id}/reject", post(staff::reject))
        .route("/staff/audit", get(staff::audit))
        .merge(staff_sensitive)
        .layer(Guard::require_mfa());
    let signed_in = RecordingRouter::new()
        .route("/auth/totp", get(auth::totp_page))
        .route("/auth/step-up", get(auth::step_up_page))
        // Replacing the authenticator: also from a session with the link only (a lost phone,
        // with a recovery code); magic-auth's routes check the proof.
        .route("/settings/authenticator", get(settings::authenticator))
        .layer(Guard::require_auth());
    // The sign-in flow itself: magic-auth's ready-made routes (the pages above post to them).
    let sign_in = SignInRoutes::new(
        Workspaces(state.clone()),
        state.links.clone(),
        state.sessions.clone(),
        state.totp.clone(),
        // The built-in landing page is off: `/auth/link` is the app's own page.
        SignInConfig::new().landing_page(false),
    )?
    .into_routes();
    let mut app = RecordingRouter::new()
        .route("/", get(auth::home))
        .route("/auth/link", get(auth::landing))
        .route(
            "/static/app.css",
            get(|| async { ([(header::CONTENT_TYPE, "text/css")], STYLESHEET) }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .merge(tenant_routes)
        .merge(staff_routes)
        .merge(signed_in);
    for (path, route) in sign_in {
        app = app.route(&format!("/api/auth{path}"), route);
    }
    if state.development {
        app = app.route("/dev/outbox", get(auth::outbox));
    }
    let refusals = axum::middleware::from_fn_with_state(state.clone(), refusal::browser_refusals);
    // Everything after `into_parts` is a layer: a route added there would not be recorded.
    let (mut stack, record) = app
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            hygiene::input_hygiene,
        ))
        .layer(Guard::same_origin(&[state.base_url.as_str()]))
        .layer(refusals.clone())
        .layer(SessionManagerLayer::new(state.sessions.clone()))
        .layer(refusals)
        .with_state(state)
        .into_parts();
    for (name, value) in security_headers() {
        stack = stack.layer(SetResponseHeaderLayer::if_not_present(name, value));
    }
    let request_id = HeaderName::from_static("x-request-id");
    let stack = stack
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(TraceLayer::new_for_http())
        .layer(SetRequestIdLayer::new(request_id.clone(), MakeRequestUuid))
        // The id is the server's: one a client sends is dropped, so audit records and traces
        // never carry an id someone outside chose (the response echoes the server's).
        .layer(tower::util::MapRequestLayer::new(
            move |mut request: axum::extract::Request| {
                request.headers_mut().remove(&request_id);
                request
            },
        ));
    Ok((stack, record))
}

async fn not_found(axum::extract::State(state): axum::extract::State<AppState>) -> Response {
    message(
        &state,
        None,
        StatusCode::NOT_FOUND,
        "Not found",
        "There is nothing here.",
        Some(("/", "Home")),
    )
}

/// See [`crate::App::unguarded_baseline`].
pub(crate) fn unguarded_baseline(services: Arc<Services>, pool: sqlx::PgPool) -> Router {
    use axum::extract::Query;
    Router::new().route(
        "/baseline/notes",
        get(move |Query(q): Query<HashMap<String, String>>| {
            let (services, pool) = (services.clone(), pool.clone());
            async move {
                let Some(tenant) = q
                    .get("tenant")
                    .and_then(|t| t.parse().ok())
                    .and_then(|t| tenant_scope::TenantId::from_uuid(t).ok())
                else {
                    return StatusCode::BAD_REQUEST.into_response();
                };
                match crate::notes::list_unguarded(&services, &pool, tenant).await {
                    Ok(all) => axum::Json(serde_json::json!({
                        "notes": all.iter().map(api::note_json).collect::<Vec<_>>()
                    }))
                    .into_response(),
                    Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
                }
            }
        }),
    )
}
