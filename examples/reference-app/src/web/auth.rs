//! The sign-in pages: the home page that asks for a link, the link's landing page, and the
//! code page (enrolment on first sign-in) and step-up page. Their forms post to magic-auth's
//! ready-made sign-in routes (`/api/auth/..`, `magic_auth::routes`), which do the work and send
//! the browser on to `next`, or back to the page with `error=<code>`.

use secrecy::ExposeSecret;
use std::collections::HashMap;

use askama::Template;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use magic_auth::mailer::DevOutbox;
use magic_auth::{Assurance, Session};
use tenant_scope::{ActorKind, TenantContext};
use uuid::Uuid;

use super::enrolment::{self, Factor};
use super::{Nav, internal, redirect, render};
use crate::redirect::LocalTarget;
use crate::seed::ACCOUNTS;
use crate::state::AppState;

#[derive(Template)]
#[template(path = "home.html")]
struct Home {
    nav: Nav,
    /// Development only: every workspace, to choose from.
    tenants: Vec<(String, String)>,
    /// The workspace the host name names: (slug, name).
    host_workspace: Option<(String, String)>,
    accounts: Vec<(String, String, String)>,
    /// A link was asked for: say it is on its way.
    sent: bool,
    /// The account was just disabled (`done=disabled`): say what that did.
    disabled: bool,
    /// Why the last request was refused, for the person.
    error: Option<String>,
}

/// What a refusal code from the sign-in routes means, for the person.
fn sign_in_error(code: &str) -> String {
    match code {
        "rate_limited" => {
            "Too many sign-in links were asked for. Wait a few minutes, then try again."
        }
        "invalid_email" => "That address does not look right: enter one such as name@example.com.",
        "link_invalid" => {
            "This sign-in link does not work: it has expired, was already used, was replaced by \
             a newer link, or was opened in another browser than the one that asked for it. Ask \
             for a new one."
        }
        "service_unavailable" => "Sign-in is unavailable right now. Try again shortly.",
        _ => "Something went wrong. Try again.",
    }
    .to_owned()
}

/// The workspace a host name names: its first label (`acme` in `acme.example.com`), when the
/// host has more than one label and is not an IP address. Only the configured base URL is read,
/// never the request's `Host` header.
pub(crate) fn host_label(base_url: &str) -> Option<String> {
    let url = url::Url::parse(base_url).ok()?;
    match url.host()? {
        url::Host::Domain(domain) => {
            let (label, rest) = domain.split_once('.')?;
            (!label.is_empty() && !rest.is_empty()).then(|| label.to_ascii_lowercase())
        }
        url::Host::Ipv4(_) | url::Host::Ipv6(_) => None,
    }
}

/// The sign-in page. In development it lists every workspace (and the demo accounts); in
/// production it lists none: the workspace is the one the host name names, or is typed.
pub(super) async fn home(
    State(state): State<AppState>,
    session: Option<Session>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(s) = session {
        let next = match (s.assurance, s.kind) {
            (Assurance::Aal1, _) => "/auth/totp",
            (_, ActorKind::Staff) => "/staff/approvals",
            _ => "/notes",
        };
        return redirect(&state, next);
    }
    let (tenants, host_workspace) = if state.development {
        match state.tenants().await {
            Ok(t) => (
                t.into_iter()
                    .map(|t| {
                        let name = if t.slug == "ops" {
                            "Operators (staff)".to_owned()
                        } else {
                            t.name
                        };
                        (t.slug, name)
                    })
                    .collect(),
                None,
            ),
            Err(e) => return internal(&state, &e),
        }
    } else {
        let named = match host_label(&state.base_url) {
            Some(label) => match state.tenant_by_slug(&label).await {
                Ok(t) => t.map(|t| (t.slug, t.name)),
                Err(e) => return internal(&state, &e),
            },
            None => None,
        };
        (Vec::new(), named)
    };
    // The demo accounts are listed in development only.
    let accounts = if state.development {
        ACCOUNTS
            .iter()
            .map(|a| (a.email.to_owned(), a.tenant.to_owned(), a.name.to_owned()))
            .collect()
    } else {
        Vec::new()
    };
    render(
        StatusCode::OK,
        &Home {
            nav: Nav::of(&state, None),
            tenants,
            host_workspace,
            accounts,
            sent: q.contains_key("sent"),
            disabled: q.get("done").is_some_and(|d| d == "disabled"),
            error: q.get("error").map(|code| sign_in_error(code)),
        },
    )
}

#[derive(Template)]
#[template(path = "landing.html")]
struct Landing {
    nav: Nav,
    token: String,
}

/// The link's landing page: a button that posts the token back. A scanner's GET or HEAD
/// neither signs in nor uses up the link.
pub(super) async fn landing(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let token: String = q
        .get("token")
        .map_or("", String::as_str)
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '.' || *c == '_' || *c == '-')
        .take(256)
        .collect();
    let mut response = render(
        StatusCode::OK,
        &Landing {
            nav: Nav::of(&state, None),
            token,
        },
    );
    response.headers_mut().insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

#[derive(Template)]
#[template(path = "totp.html")]
pub(super) struct TotpPage {
    pub(super) nav: Nav,
    pub(super) heading: String,
    /// A sentence under the heading.
    pub(super) intro: Option<String>,
    /// A pending enrolment: (QR code as SVG, the key in base32).
    pub(super) enrolment: Option<(String, String)>,
    /// No authenticator yet: offer the button that starts an enrolment instead of a code field.
    pub(super) start: bool,
    pub(super) error: Option<String>,
    pub(super) action: String,
    pub(super) next: String,
    /// This page (with its `next`): where a refused code comes back to.
    pub(super) back: String,
}

/// What a refusal code from the code check means, for the person.
fn code_error(code: &str) -> String {
    match code {
        "factor_locked" => "Too many wrong codes. Wait 15 minutes, then try again.",
        _ => "That code is not right. Check your authenticator app and try again.",
    }
    .to_owned()
}

pub(super) async fn member_email(
    state: &AppState,
    session: &Session,
) -> Result<String, rls_guard::RlsError> {
    let context = TenantContext::for_actor(session.actor());
    let mut tx = state.pool.begin(&context).await?;
    let (email,): (String,) =
        sqlx::query_as("SELECT email FROM workspace.members WHERE tenant_id = $1 AND user_id = $2")
            .bind(session.tenant.as_uuid())
            .bind(session.user.as_uuid())
            .fetch_one(&mut *tx)
            .await?;
    tx.commit().await?;
    Ok(email)
}

/// Where to go after the code: `next` if it stays on this origin (the one redirect check),
/// else the person's start page.
fn local_next(state: &AppState, next: Option<&String>, session: &Session) -> LocalTarget {
    let fallback = if session.kind == ActorKind::Staff {
        "/staff/approvals"
    } else {
        "/notes"
    };
    LocalTarget::or(next.map(String::as_str), &state.base_url, fallback)
}

/// The code page. It only reads: a person without an authenticator is offered a button that
/// starts the enrolment (`POST /auth/totp/enrol`); a pending enrolment is shown again as it is.
pub(super) async fn totp_page(
    State(state): State<AppState>,
    session: Session,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let next = local_next(&state, q.get("next"), &session);
    if session.assurance == Assurance::Aal2 {
        return redirect(&state, next.as_str());
    }
    let error = q.get("error").map(|code| code_error(code));
    let factor = match enrolment::factor(&state, &session).await {
        Ok(f) => f,
        Err(e) => return internal(&state, &e),
    };
    let (heading, enrolment, start) = match factor {
        Factor::Active => ("Enter your code", None, false),
        Factor::Pending { qr_svg, key } => (
            "Set up your authenticator",
            Some((qr_svg.to_string(), key.to_string())),
            false,
        ),
        Factor::None => ("Set up your authenticator", None, true),
    };
    render(
        StatusCode::OK,
        &TotpPage {
            nav: Nav::of(&state, Some(&session)),
            heading: heading.to_owned(),
            intro: None,
            enrolment,
            start,
            error,
            action: "/api/auth/totp".to_owned(),
            next: next.as_str().to_owned(),
            back: format!("/auth/totp?next={}", urlencode(next.as_str())),
        },
    )
}

pub(super) async fn step_up_page(
    State(state): State<AppState>,
    session: Session,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let next = local_next(&state, q.get("next"), &session);
    render(
        StatusCode::OK,
        &TotpPage {
            nav: Nav::of(&state, Some(&session)),
            heading: "Confirm it is you".to_owned(),
            intro: None,
            enrolment: None,
            start: false,
            error: q.get("error").map(|code| code_error(code)),
            action: "/api/auth/step-up".to_owned(),
            next: next.as_str().to_owned(),
            back: format!("/auth/step-up?next={}", urlencode(next.as_str())),
        },
    )
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[derive(Template)]
#[template(path = "outbox.html")]
struct Outbox {
    nav: Nav,
    messages: Vec<(String, String, String, Option<String>)>,
}

/// The development mailer's outbox (development mode only).
pub(super) async fn outbox(State(state): State<AppState>, session: Option<Session>) -> Response {
    let messages = state
        .mailer
        .outbox()
        .map(DevOutbox::messages)
        .unwrap_or_default()
        .into_iter()
        .rev()
        .map(|m| {
            let link = m
                .body
                .expose_secret()
                .lines()
                .find(|l| l.starts_with("https://"))
                .map(str::to_owned);
            (
                m.to.as_str().to_owned(),
                m.subject.clone(),
                m.body.expose_secret().to_owned(),
                link,
            )
        })
        .collect();
    render(
        StatusCode::OK,
        &Outbox {
            nav: Nav::of(&state, session.as_ref()),
            messages,
        },
    )
}

/// The id in a path segment, or `None`.
pub(super) fn parse_id(raw: &str) -> Option<Uuid> {
    raw.parse().ok()
}
