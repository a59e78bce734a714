//! Sign-in: the magic link (bound to the browser that asked), then a TOTP code (enrolment on
//! first sign-in), then an `aal2` session. Step-up repeats the TOTP check for sensitive routes.

use secrecy::ExposeSecret;
use std::collections::HashMap;

use askama::Template;
use axum::Extension;
use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use magic_auth::mailer::DevOutbox;
use magic_auth::totp::CodeCheck;
use magic_auth::{Assurance, Session, clear_session_cookie, cookie_value, session_cookie};
use tenant_scope::{ActorKind, TenantContext};
use uuid::Uuid;

use super::enrolment::{self, Factor};
use super::{Nav, internal, message, redirect, render};
use crate::redirect::{LocalTarget, to_local};
use crate::seed::ACCOUNTS;
use crate::state::AppState;

const VERIFIER_COOKIE: &str = "__Host-login-verifier";

#[derive(Template)]
#[template(path = "home.html")]
struct Home {
    nav: Nav,
    /// Development only: every workspace, to choose from.
    tenants: Vec<(String, String)>,
    /// The workspace the host name names: (slug, name).
    host_workspace: Option<(String, String)>,
    accounts: Vec<(String, String, String)>,
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
pub(super) async fn home(State(state): State<AppState>, session: Option<Session>) -> Response {
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
        },
    )
}

pub(super) async fn request_link(
    State(state): State<AppState>,
    client: Option<Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    // Chosen, fixed by the host name, or typed: a typed name is trimmed and lower-cased.
    let slug = form
        .get("workspace")
        .map_or("", String::as_str)
        .trim()
        .to_ascii_lowercase();
    let email = form.get("email").map_or("", String::as_str);
    let same_answer = |cookie: Option<String>| {
        let mut response = message(
            &state,
            None,
            StatusCode::OK,
            "Check your email",
            "If that address belongs to an account in this workspace, a sign-in link is on its way. \
             Open it in this browser; it expires in 15 minutes.",
            state
                .development
                .then_some(("/dev/outbox", "Open the development outbox")),
        );
        if let Some(cookie) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
            response.headers_mut().insert(header::SET_COOKIE, cookie);
        }
        response
    };
    let tenant = match state.tenant_by_slug(&slug).await {
        Ok(Some(t)) => t,
        Ok(None) => return same_answer(None),
        Err(e) => return internal(&state, &e),
    };
    // The app terminates TLS itself, so the peer is the client: its address gets its own
    // limit beside the per-address one (30 links per 15 minutes, per workspace).
    let client = client.map(|Extension(axum::extract::ConnectInfo(peer))| peer.ip());
    match state.links.request(tenant.id, email, client).await {
        Ok(request) => {
            // Never wait for the delivery: the answer must not reveal whether the account exists.
            drop(request.delivery);
            same_answer(Some(format!(
                "{VERIFIER_COOKIE}={}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=900",
                request.verifier.expose_secret()
            )))
        }
        // The limit applies to known and unknown addresses alike: saying so reveals nothing.
        Err(magic_auth::AuthError::RateLimited { .. }) => message(
            &state,
            None,
            StatusCode::TOO_MANY_REQUESTS,
            "Too many requests",
            "Too many sign-in links were asked for. Wait a few minutes, then try again.",
            Some(("/", "Back")),
        ),
        Err(magic_auth::AuthError::InvalidEmail) => message(
            &state,
            None,
            StatusCode::BAD_REQUEST,
            "That address does not look right",
            "Enter an email address such as name@example.com.",
            Some(("/", "Try again")),
        ),
        Err(e) => internal(&state, &e),
    }
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

pub(super) async fn confirm_link(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let verifier = cookie_value(&headers, VERIFIER_COOKIE).unwrap_or("");
    let token = form.get("token").map_or("", String::as_str);
    let sign_in = match state.links.confirm(token, verifier).await {
        Ok(s) => s,
        Err(_) => {
            return message(
                &state,
                None,
                StatusCode::UNAUTHORIZED,
                "This sign-in link does not work",
                "It has expired, was already used, was replaced by a newer link, or was opened in \
                 another browser than the one that asked for it. Ask for a new one.",
                Some(("/", "Ask for a new link")),
            );
        }
    };
    let user_agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    // `sign_in` refuses a sign-in that a revocation or a disable overtook since the confirmation.
    match state
        .sessions
        .sign_in(&sign_in, user_agent.as_deref(), None)
        .await
    {
        Ok((session, token)) => {
            let mut response = redirect(&state, "/auth/totp");
            let h = response.headers_mut();
            h.append(header::SET_COOKIE, session_cookie(&token, &session));
            h.append(
                header::SET_COOKIE,
                HeaderValue::from_static(
                    "__Host-login-verifier=; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=0",
                ),
            );
            h.insert(
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            );
            response
        }
        Err(e) => internal(&state, &e),
    }
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
    let error = q.get("error").map(|e| match e.as_str() {
        "locked" => "Too many wrong codes. Wait 15 minutes, then try again.".to_owned(),
        _ => "That code is not right. Check your authenticator app and try again.".to_owned(),
    });
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
            action: "/auth/totp".to_owned(),
            next: next.as_str().to_owned(),
        },
    )
}

pub(super) async fn step_up_page(
    State(state): State<AppState>,
    session: Session,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    render(
        StatusCode::OK,
        &TotpPage {
            nav: Nav::of(&state, Some(&session)),
            heading: "Confirm it is you".to_owned(),
            intro: None,
            enrolment: None,
            start: false,
            error: q.get("error").map(|_| "That code is not right.".to_owned()),
            action: "/auth/step-up".to_owned(),
            next: local_next(&state, q.get("next"), &session)
                .as_str()
                .to_owned(),
        },
    )
}

/// Sign-in (aal1 -> aal2), enrolment confirmation and step-up: a fresh session each time.
pub(super) async fn totp_submit(
    State(state): State<AppState>,
    session: Session,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let code = form
        .get("code")
        .map_or("", String::as_str)
        .trim()
        .to_owned();
    let next = local_next(&state, form.get("next"), &session);
    let now = u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp()).unwrap_or(0);
    let is_enrolled = match enrolment::factor(&state, &session).await {
        Ok(f) => matches!(f, Factor::Active),
        Err(e) => return internal(&state, &e),
    };
    let check = if !is_enrolled {
        state
            .totp
            .confirm(session.tenant, session.user, &code, now)
            .await
    } else if code.len() > 8 {
        state
            .totp
            .use_recovery_code(session.tenant, session.user, &code, now)
            .await
    } else {
        state
            .totp
            .verify(session.tenant, session.user, &code, now)
            .await
    };
    let retry = |kind: &str| {
        let page = if session.assurance == Assurance::Aal2 {
            "/auth/step-up"
        } else {
            "/auth/totp"
        };
        redirect(
            &state,
            &format!("{page}?error={kind}&next={}", urlencode(next.as_str())),
        )
    };
    match check {
        Ok(CodeCheck::Accepted { .. } | CodeCheck::RecoveryAccepted { .. }) => {
            match state.sessions.rotate(&session, Assurance::Aal2).await {
                Ok((fresh, token)) => {
                    let mut response = to_local(StatusCode::SEE_OTHER, &next);
                    response
                        .headers_mut()
                        .append(header::SET_COOKIE, session_cookie(&token, &fresh));
                    response
                }
                Err(e) => internal(&state, &e),
            }
        }
        Ok(CodeCheck::Locked { .. } | CodeCheck::HardLocked) => retry("locked"),
        Ok(CodeCheck::Rejected { .. }) | Err(magic_auth::AuthError::NotEnrolled) => retry("wrong"),
        Ok(_) => retry("wrong"),
        Err(e) => internal(&state, &e),
    }
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

pub(super) async fn logout(State(state): State<AppState>, session: Session) -> Response {
    if let Err(e) = state.sessions.revoke(session.tenant, session.id).await {
        return internal(&state, &e);
    }
    let mut response = redirect(&state, "/");
    response
        .headers_mut()
        .append(header::SET_COOKIE, clear_session_cookie());
    response
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
