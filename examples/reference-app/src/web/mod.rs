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
use axum::Router;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use magic_auth::{Guard, Session, SessionManagerLayer};
use tenant_scope::{ActorKind, ActorResolver, TenantLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;

pub(crate) use self::enrolment::ISSUER as TOTP_ISSUER;
use crate::state::{AppState, Services};

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

/// Whether `error` or any of its sources is the database being unreachable.
pub(crate) fn database_unavailable(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(rls) = e.downcast_ref::<rls_guard::RlsError>()
            && rls.is_unavailable()
        {
            return true;
        }
        if let Some(sql) = e.downcast_ref::<sqlx::Error>()
            && rls_guard::is_unavailable(sql)
        {
            return true;
        }
        next = e.source();
    }
    false
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

/// Builds a router while recording every `(method, path)` it serves, so the authorization
/// matrix can prove it covers them all.
struct Routes {
    router: Router<AppState>,
    list: Vec<(&'static str, &'static str)>,
}

impl Routes {
    fn new() -> Self {
        Self {
            router: Router::new(),
            list: Vec::new(),
        }
    }

    /// Adds `path` answering `methods` through `route` (which must handle exactly those).
    fn at(
        mut self,
        path: &'static str,
        methods: &[&'static str],
        route: MethodRouter<AppState>,
    ) -> Self {
        self.router = self.router.route(path, route);
        self.list.extend(methods.iter().map(|m| (*m, path)));
        self
    }

    /// Wraps everything added so far.
    fn wrap(mut self, f: impl FnOnce(Router<AppState>) -> Router<AppState>) -> Self {
        self.router = f(self.router);
        self
    }

    fn merge(mut self, other: Self) -> Self {
        self.router = self.router.merge(other.router);
        self.list.extend(other.list);
        self
    }
}

/// The whole application, and the list of `(method, path)` it serves.
pub(crate) fn router(state: AppState) -> (Router, Vec<(&'static str, &'static str)>) {
    // Tenant administration: privileged, so the audit layer sits inside the tenant layer and
    // outside the guards (their denials are recorded too).
    let role_change = Routes::new()
        .at(
            "/admin/members/{user}/role",
            &["POST"],
            post(admin::change_role),
        )
        .at(
            "/api/admin/members/{user}/role",
            &["POST"],
            post(api::change_role),
        )
        .wrap(|r| {
            r.layer(AuditLayer::new(
                state.audit.clone(),
                actions::MEMBER_ROLE_CHANGED,
            ))
        });
    let export = Routes::new()
        .at("/admin/export", &["POST"], post(admin::export))
        .at("/api/admin/export", &["POST"], post(api::export))
        .wrap(|r| {
            r.layer(Guard::require_step_up(STEP_UP_MAX_AGE))
                .layer(AuditLayer::new(state.audit.clone(), actions::DATA_EXPORTED))
        });
    // Disabling one's own account (with a typed confirmation), changing its e-mail address and
    // making new recovery codes: a fresh second factor (magic-auth checks it again for the
    // address and the codes).
    let disable = Routes::new()
        .at("/settings/disable", &["POST"], post(settings::disable))
        .at("/settings/email", &["POST"], post(settings::request_email))
        .at(
            "/settings/recovery-codes",
            &["POST"],
            post(settings::recovery_codes),
        )
        .wrap(|r| r.layer(Guard::require_step_up(STEP_UP_MAX_AGE)));
    // Routes for a member of a tenant, signed in with both factors: the tenant comes from the
    // session's actor.
    let tenant_routes = Routes::new()
        .at("/settings", &["GET"], get(settings::page))
        .at(
            "/settings/email/confirm",
            &["GET", "POST"],
            get(settings::email_landing).post(settings::confirm_email),
        )
        .at(
            "/notes",
            &["GET", "POST"],
            get(pages::notes).post(pages::create_note),
        )
        .at(
            "/notes/{id}",
            &["GET", "POST"],
            get(pages::edit_note).post(pages::update_note),
        )
        .at("/notes/{id}/delete", &["POST"], post(pages::delete_note))
        .at(
            "/assistant",
            &["GET", "POST"],
            get(pages::assistant).post(pages::run_assistant),
        )
        .at("/sessions", &["GET"], get(pages::sessions))
        .at(
            "/sessions/{id}/revoke",
            &["POST"],
            post(pages::revoke_session),
        )
        .at(
            "/sessions/revoke-others",
            &["POST"],
            post(pages::revoke_others),
        )
        .at("/admin/members", &["GET"], get(admin::members))
        .at(
            "/api/notes",
            &["GET", "POST"],
            get(api::list_notes).post(api::create_note),
        )
        .at(
            "/api/notes/{id}",
            &["GET", "DELETE"],
            get(api::get_note).delete(api::delete_note),
        )
        .at("/api/sessions", &["GET"], get(api::sessions))
        .at("/api/proposals", &["GET"], get(api::proposals))
        .at("/api/assistant", &["POST"], post(api::assistant))
        .at("/api/admin/members", &["GET"], get(api::members))
        .merge(role_change)
        .merge(export)
        .merge(disable)
        .wrap(|r| {
            r.layer(TenantLayer::new(ActorResolver))
                .layer(Guard::require_two_factors())
        });
    // Staff: two factors always; approving needs a fresh one.
    let staff_sensitive = Routes::new()
        .at(
            "/staff/approvals/{tenant}/{id}/approve",
            &["POST"],
            post(staff::approve),
        )
        .at(
            "/api/staff/approvals/{tenant}/{id}",
            &["POST"],
            post(api::decide),
        )
        .wrap(|r| r.layer(Guard::require_step_up(STEP_UP_MAX_AGE)));
    let staff_routes = Routes::new()
        .at("/staff/approvals", &["GET"], get(staff::approvals))
        .at(
            "/staff/approvals/{tenant}/{id}/reject",
            &["POST"],
            post(staff::reject),
        )
        .at("/staff/audit", &["GET"], get(staff::audit))
        .merge(staff_sensitive)
        .wrap(|r| r.layer(Guard::require_mfa()));
    let signed_in = Routes::new()
        .at(
            "/auth/totp",
            &["GET", "POST"],
            get(auth::totp_page).post(auth::totp_submit),
        )
        .at("/auth/totp/enrol", &["POST"], post(enrolment::start))
        .at(
            "/auth/step-up",
            &["GET", "POST"],
            get(auth::step_up_page).post(auth::totp_submit),
        )
        .at("/auth/logout", &["POST"], post(auth::logout))
        // Replacing the authenticator: also from a session with the link only (a lost phone,
        // with a recovery code); the handler and magic-auth check the proof.
        .at(
            "/settings/authenticator",
            &["GET", "POST"],
            get(settings::authenticator).post(settings::start_replacement),
        )
        .at(
            "/settings/authenticator/confirm",
            &["POST"],
            post(settings::confirm_replacement),
        )
        .wrap(|r| r.layer(Guard::require_auth()));
    let mut app = Routes::new()
        .at("/", &["GET"], get(auth::home))
        .at("/auth/request", &["POST"], post(auth::request_link))
        .at(
            "/auth/link",
            &["GET", "POST"],
            get(auth::landing).post(auth::confirm_link),
        )
        .at(
            "/static/app.css",
            &["GET"],
            get(|| async { ([(header::CONTENT_TYPE, "text/css")], STYLESHEET) }),
        )
        .at("/healthz", &["GET"], get(|| async { "ok" }))
        .merge(tenant_routes)
        .merge(staff_routes)
        .merge(signed_in);
    if state.development {
        app = app.at("/dev/outbox", &["GET"], get(auth::outbox));
    }
    let Routes { router, list } = app;
    let refusals = axum::middleware::from_fn_with_state(state.clone(), refusal::browser_refusals);
    let mut stack = router
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            hygiene::input_hygiene,
        ))
        .layer(Guard::same_origin(&[state.base_url.as_str()]))
        .layer(refusals.clone())
        .layer(SessionManagerLayer::new(state.sessions.clone()))
        .layer(refusals)
        .with_state(state);
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
    (stack, list)
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
