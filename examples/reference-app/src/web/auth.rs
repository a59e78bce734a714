//! Sign-in: the magic link (bound to the browser that asked), then a TOTP code (enrolment on
//! first sign-in), then an `aal2` session. Step-up repeats the TOTP check for sensitive routes.

use std::collections::HashMap;

use askama::Template;
use axum::Extension;
use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use magic_auth::mailer::DevOutbox;
use magic_auth::totp::CodeCheck;
use magic_auth::{Assurance, Session, clear_session_cookie, cookie_value, session_cookie};
use tenant_scope::{ActorKind, TenantContext};
use uuid::Uuid;

use super::{Nav, internal, message, render};
use crate::seed::ACCOUNTS;
use crate::state::AppState;

const VERIFIER_COOKIE: &str = "__Host-login-verifier";

#[derive(Template)]
#[template(path = "home.html")]
struct Home {
    nav: Nav,
    tenants: Vec<(String, String)>,
    accounts: Vec<(String, String, String)>,
}

pub(super) async fn home(
    State(state): State<AppState>,
    session: Option<Extension<Session>>,
) -> Response {
    if let Some(Extension(s)) = session {
        let next = match (s.assurance, s.kind) {
            (Assurance::Aal1, _) => "/auth/totp",
            (_, ActorKind::Staff) => "/staff/approvals",
            _ => "/notes",
        };
        return Redirect::to(next).into_response();
    }
    let tenants = match state.tenants().await {
        Ok(t) => t
            .into_iter()
            .map(|t| {
                let name = if t.slug == "ops" {
                    "Operators (staff)".to_owned()
                } else {
                    t.name
                };
                (t.slug, name)
            })
            .collect(),
        Err(e) => return internal(&state, &e),
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
            accounts,
        },
    )
}

pub(super) async fn request_link(
    State(state): State<AppState>,
    client: Option<Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let slug = form.get("workspace").map_or("", String::as_str);
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
    let tenant = match state.tenant_by_slug(slug).await {
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
                request.verifier.as_str()
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
            let mut response = Redirect::to("/auth/totp").into_response();
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
struct TotpPage {
    nav: Nav,
    heading: String,
    /// (QR code as SVG, the key in base32).
    enrolment: Option<(String, String)>,
    error: Option<String>,
    action: String,
    next: String,
}

/// Whether the user has a confirmed authenticator.
async fn enrolled(state: &AppState, session: &Session) -> Result<bool, rls_guard::RlsError> {
    let context = TenantContext::for_actor(session.actor());
    let mut tx = state.pool.begin(&context).await?;
    let confirmed: Option<(bool,)> = sqlx::query_as(
        "SELECT confirmed_at IS NOT NULL FROM auth.totp WHERE tenant_id = $1 AND user_id = $2",
    )
    .bind(session.tenant.as_uuid())
    .bind(session.user.as_uuid())
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(confirmed.is_some_and(|(c,)| c))
}

async fn member_email(state: &AppState, session: &Session) -> Result<String, rls_guard::RlsError> {
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

/// A local path to go back to (never another origin).
fn local_next(next: Option<&String>, session: &Session) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n.clone(),
        _ if session.kind == ActorKind::Staff => "/staff/approvals".to_owned(),
        _ => "/notes".to_owned(),
    }
}

pub(super) async fn totp_page(
    State(state): State<AppState>,
    Extension(session): Extension<Session>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if session.assurance == Assurance::Aal2 {
        return Redirect::to(&local_next(None, &session)).into_response();
    }
    let error = q.get("error").map(|e| match e.as_str() {
        "locked" => "Too many wrong codes. Wait 15 minutes, then try again.".to_owned(),
        _ => "That code is not right. Check your authenticator app and try again.".to_owned(),
    });
    let is_enrolled = match enrolled(&state, &session).await {
        Ok(e) => e,
        Err(e) => return internal(&state, &e),
    };
    let enrolment = if is_enrolled {
        None
    } else {
        let email = match member_email(&state, &session).await {
            Ok(e) => e,
            Err(e) => return internal(&state, &e),
        };
        match state
            .totp
            .enroll(session.tenant, session.user, &email)
            .await
        {
            Ok(e) => match e.qr_svg() {
                Ok(svg) => Some((svg.to_string(), e.secret_base32.to_string())),
                Err(err) => return internal(&state, &err),
            },
            Err(e) => return internal(&state, &e),
        }
    };
    render(
        StatusCode::OK,
        &TotpPage {
            nav: Nav::of(&state, Some(&session)),
            heading: if is_enrolled {
                "Enter your code"
            } else {
                "Set up your authenticator"
            }
            .to_owned(),
            enrolment,
            error,
            action: "/auth/totp".to_owned(),
            next: local_next(q.get("next"), &session),
        },
    )
}

pub(super) async fn step_up_page(
    State(state): State<AppState>,
    Extension(session): Extension<Session>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    render(
        StatusCode::OK,
        &TotpPage {
            nav: Nav::of(&state, Some(&session)),
            heading: "Confirm it is you".to_owned(),
            enrolment: None,
            error: q.get("error").map(|_| "That code is not right.".to_owned()),
            action: "/auth/step-up".to_owned(),
            next: local_next(q.get("next"), &session),
        },
    )
}

/// Sign-in (aal1 -> aal2), enrolment confirmation and step-up: a fresh session each time.
pub(super) async fn totp_submit(
    State(state): State<AppState>,
    Extension(session): Extension<Session>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let code = form
        .get("code")
        .map_or("", String::as_str)
        .trim()
        .to_owned();
    let next = local_next(form.get("next"), &session);
    let now = u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp()).unwrap_or(0);
    let is_enrolled = match enrolled(&state, &session).await {
        Ok(e) => e,
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
        Redirect::to(&format!("{page}?error={kind}&next={}", urlencode(&next))).into_response()
    };
    match check {
        Ok(CodeCheck::Accepted { .. } | CodeCheck::RecoveryAccepted { .. }) => {
            match state.sessions.rotate(&session, Assurance::Aal2).await {
                Ok((fresh, token)) => {
                    let mut response = Redirect::to(&next).into_response();
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

pub(super) async fn logout(
    State(state): State<AppState>,
    Extension(session): Extension<Session>,
) -> Response {
    if let Err(e) = state.sessions.revoke(session.tenant, session.id).await {
        return internal(&state, &e);
    }
    let mut response = Redirect::to("/").into_response();
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
pub(super) async fn outbox(
    State(state): State<AppState>,
    session: Option<Extension<Session>>,
) -> Response {
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
                .lines()
                .find(|l| l.starts_with("https://"))
                .map(str::to_owned);
            (
                m.to.as_str().to_owned(),
                m.subject.clone(),
                m.body.to_string(),
                link,
            )
        })
        .collect();
    render(
        StatusCode::OK,
        &Outbox {
            nav: Nav::of(&state, session.as_ref().map(|Extension(s)| s)),
            messages,
        },
    )
}

/// The id in a path segment, or `None`.
pub(super) fn parse_id(raw: &str) -> Option<Uuid> {
    raw.parse().ok()
}
