//! The router: the layer stack every request passes, and the pages.
//!
//! ```text
//! request id + trace span -> security headers -> magic-auth session -> same-origin check
//!   -> tenant-scope (tenant routes) -> guards (sign-in, MFA, step-up) -> handler
//!   -> rls-guard transaction -> PostgreSQL row-level security
//! ```

mod auth;
mod pages;
mod staff;

use std::time::Duration;

use askama::Template;
use axum::Router;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use magic_auth::{Guard, Session, SessionLayer};
use tenant_scope::{ActorKind, ActorResolver, TenantLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;

use crate::state::AppState;

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

/// An internal failure: logged with its cause, answered without it.
pub(crate) fn internal(state: &AppState, error: &dyn std::fmt::Display) -> Response {
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

fn security_headers() -> [(HeaderName, HeaderValue); 7] {
    [
        (
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=63072000; includeSubDomains"),
        ),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; \
                 frame-ancestors 'none'; base-uri 'none'",
            ),
        ),
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

/// The whole application.
pub(crate) fn router(state: AppState) -> Router {
    // Routes for a member of a tenant, signed in with both factors: the tenant comes from the
    // session's actor.
    let tenant_routes = Router::new()
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
        .layer(TenantLayer::new(ActorResolver))
        .layer(Guard::require_two_factors());
    // Staff: two factors always; approving needs a fresh one.
    let staff_sensitive = Router::new()
        .route(
            "/staff/approvals/{tenant}/{id}/approve",
            post(staff::approve),
        )
        .layer(Guard::require_step_up(STEP_UP_MAX_AGE));
    let staff_routes = Router::new()
        .route("/staff/approvals", get(staff::approvals))
        .route("/staff/approvals/{tenant}/{id}/reject", post(staff::reject))
        .route("/staff/audit", get(staff::audit))
        .merge(staff_sensitive)
        .layer(Guard::require_mfa());
    let signed_in = Router::new()
        .route("/auth/totp", get(auth::totp_page).post(auth::totp_submit))
        .route(
            "/auth/step-up",
            get(auth::step_up_page).post(auth::totp_submit),
        )
        .route("/auth/logout", post(auth::logout))
        .layer(Guard::require_auth());
    let mut app = Router::new()
        .route("/", get(auth::home))
        .route("/auth/request", post(auth::request_link))
        .route("/auth/link", get(auth::landing).post(auth::confirm_link))
        .route(
            "/static/app.css",
            get(|| async { ([(header::CONTENT_TYPE, "text/css")], STYLESHEET) }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .merge(tenant_routes)
        .merge(staff_routes)
        .merge(signed_in);
    if state.development {
        app = app.route("/dev/outbox", get(auth::outbox));
    }
    let mut stack = app
        .fallback(not_found)
        .layer(Guard::same_origin(&[state.base_url.as_str()]))
        .layer(SessionLayer::new(state.sessions.clone()))
        .with_state(state);
    for (name, value) in security_headers() {
        stack = stack.layer(SetResponseHeaderLayer::if_not_present(name, value));
    }
    let request_id = HeaderName::from_static("x-request-id");
    stack
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(TraceLayer::new_for_http())
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
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
