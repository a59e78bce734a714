//! Account settings: the pages for replacing the authenticator, recovery codes, the e-mail
//! address, and disabling the account. Their forms post to magic-auth's ready-made routes
//! (`/api/auth/..`, [`magic_auth::routes`]), which check every step and answer the form with
//! `303` to its `next` page, or back to its page with `error=<code>`; these pages only read.
//!
//! - Replacing the authenticator (`/settings/authenticator`, posting to
//!   `/api/auth/totp/replace` and `/api/auth/totp/replace/confirm`) needs a second-factor check
//!   within the last 10 minutes or one of the account's recovery codes (for a lost phone: a
//!   session with the link only may use one). The new authenticator is pending until a code
//!   from it is entered *from the same session*; the old one keeps working until then. On
//!   completion the old seed is gone, every other session and pending link ended, this session
//!   rotated, and a notice sent to the account's address.
//! - Changing the e-mail address (`/api/auth/email`, behind a fresh step-up): a notice to the
//!   current address and a single-use confirmation link to the new one, bound to this account,
//!   the new address and this session. The link's page (`/settings/email/confirm`) only shows a
//!   button; its `POST` (`/api/auth/email/confirm`), from the same session, confirms it, and the
//!   change goes through the account directory (`workspace.members`) and ends every other
//!   session.
//! - Disabling the account (`/api/auth/account/disable`, behind a fresh step-up and the typed
//!   word `disable`) ends every session and pending link, then marks the member disabled in
//!   `workspace.members` (the directory's [`AccountDirectory::account_disabled`]), then sends a
//!   notice.
//! - Making new recovery codes (`POST /settings/recovery-codes`, behind a fresh step-up) is this
//!   app's own handler: the page shows the new codes once, which magic-auth's JSON route
//!   cannot do for a page without script. The old codes stop working and a notice goes out.
//!
//! Every step is an authentication event that the audit log records.
//!
//! [`AccountDirectory::account_disabled`]: magic_auth::AccountDirectory::account_disabled

use secrecy::ExposeSecret;
use std::collections::HashMap;

use askama::Template;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use magic_auth::mailer::{Mailer, Notice};
use magic_auth::{Assurance, AuthError, EmailAddress, Session, clear_session_cookie};
use zeroize::Zeroizing;

use super::enrolment::EnrolmentError;
use super::{Nav, STEP_UP_MAX_AGE, internal, message, redirect, render};
use crate::state::AppState;

#[derive(Template)]
#[template(path = "settings.html")]
struct SettingsPage {
    nav: Nav,
    email: String,
    done: Option<&'static str>,
    error: Option<&'static str>,
    /// The refusal was for a stale second factor: offer the step-up.
    step_up: bool,
}

/// What a refusal code from the settings routes means, for the person.
fn settings_error(code: &str) -> &'static str {
    match code {
        "step_up_required" => {
            "That needs a code from your authenticator entered within the last 10 minutes. \
             Confirm it is you, then try again. Nothing was changed."
        }
        "invalid_email" => {
            "That address does not look right: enter one such as name@example.com. Nothing was \
             changed."
        }
        "email_unavailable" => "That address cannot be used for your account. Nothing was changed.",
        "rate_limited" => "Too many requests. Wait a few minutes, then try again.",
        "link_invalid" => {
            "This confirmation link does not work: it has expired, was already used, was \
             replaced by a newer request, or was opened in another session than the one that \
             asked for the change. Nothing was changed."
        }
        "confirmation_required" => "Type the word disable to confirm. Nothing was changed.",
        "not_enrolled" => "Recovery codes belong to an authenticator: set one up first.",
        "service_unavailable" => {
            "This is unavailable right now. Nothing was changed; try again shortly."
        }
        _ => "Something went wrong. Nothing was changed; try again.",
    }
}

/// `GET /settings`: the account's address and what can be changed, with the outcome of the last
/// step (`done=..`, or `error=<code>` from a refused form).
pub(super) async fn page(
    State(state): State<AppState>,
    session: Session,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let email = match super::auth::member_email(&state, &session).await {
        Ok(e) => e,
        Err(e) => return internal(&state, &e),
    };
    let done = match q.get("done").map(String::as_str) {
        Some("authenticator") => Some(
            "Your authenticator was replaced. Codes from the old one no longer work, and every \
             other session was signed out.",
        ),
        Some("email-sent") => Some(
            "A confirmation link was sent to the new address, and a notice to the current one. \
             Open the link in this browser, signed in as you are now; until then nothing changes.",
        ),
        Some("email") => {
            Some("Your e-mail address was changed, and every other session was signed out.")
        }
        _ => None,
    };
    let code = q.get("error").map(String::as_str);
    render(
        StatusCode::OK,
        &SettingsPage {
            nav: Nav::of(&state, Some(&session)),
            email,
            done,
            error: code.map(settings_error),
            step_up: code == Some("step_up_required"),
        },
    )
}

#[derive(Template)]
#[template(path = "authenticator.html")]
struct AuthenticatorPage {
    nav: Nav,
    /// A replacement this session started: (QR code as SVG, key in base32).
    pending: Option<(String, String)>,
    /// Whether the session's second factor is fresh enough to start without a recovery code.
    fresh: bool,
    /// Whether the session has two factors at all (else: a recovery code is the way).
    two_factors: bool,
    error: Option<&'static str>,
}

/// What a refusal code from the replacement routes means, for the person.
fn replacement_error(code: &str) -> &'static str {
    match code {
        "code_rejected" => "That code is not right. Check the authenticator and try again.",
        "step_up_required" => {
            "Replacing your authenticator needs a code from it entered within the last 10 \
             minutes, or one of your recovery codes."
        }
        "not_enrolled" => {
            "There is nothing to replace or confirm: this account has no authenticator yet, or \
             no replacement was started from this session."
        }
        "factor_locked" => "Too many wrong codes. Wait 15 minutes, then try again.",
        _ => "Something went wrong. Nothing was changed; try again.",
    }
}

fn is_fresh(session: &Session) -> bool {
    session.assurance == Assurance::Aal2
        && time::Duration::try_from(STEP_UP_MAX_AGE)
            .is_ok_and(|max| time::OffsetDateTime::now_utc() - session.authenticated_at <= max)
}

/// The replacement `session` started and has not completed, shown again as it was started.
async fn pending(
    state: &AppState,
    session: &Session,
) -> Result<Option<(Zeroizing<String>, Zeroizing<String>)>, EnrolmentError> {
    let email = super::auth::member_email(state, session).await?;
    let Some(enrolment) = state.totp.pending_replacement(session, &email).await? else {
        return Ok(None);
    };
    // Exposed here only: the page that shows them to the user replacing the authenticator.
    Ok(Some((
        Zeroizing::new(enrolment.qr_svg()?.expose_secret().to_owned()),
        Zeroizing::new(enrolment.secret_base32.expose_secret().to_owned()),
    )))
}

/// `GET /settings/authenticator`: the replacement this session started, or how to start one.
pub(super) async fn authenticator(
    State(state): State<AppState>,
    session: Session,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let pending = match pending(&state, &session).await {
        Ok(p) => p.map(|(qr, key)| (qr.to_string(), key.to_string())),
        Err(e) => return internal(&state, &e),
    };
    render(
        StatusCode::OK,
        &AuthenticatorPage {
            nav: Nav::of(&state, Some(&session)),
            pending,
            fresh: is_fresh(&session),
            two_factors: session.assurance == Assurance::Aal2,
            error: q.get("error").map(|code| replacement_error(code)),
        },
    )
}

fn signed_out(state: &AppState) -> Response {
    let mut response = message(
        state,
        None,
        StatusCode::UNAUTHORIZED,
        "Signed out",
        "This session has ended. Sign in again.",
        Some(("/", "Sign in")),
    );
    response
        .headers_mut()
        .append(header::SET_COOKIE, clear_session_cookie());
    response
}

/// Sends `notice` to the account's address. A failure is logged, never shown: the change is
/// already made.
async fn send_notice(state: &AppState, session: &Session, notice: Notice) {
    let address = match super::auth::member_email(state, session).await {
        Ok(e) => EmailAddress::parse(&e).ok(),
        Err(error) => {
            tracing::error!(%error, "the account's address could not be read for a notice");
            None
        }
    };
    let Some(address) = address else {
        return;
    };
    if let Err(error) = state.mailer.send(notice.message(address)).await {
        tracing::error!(%error, "a security notice could not be sent");
    }
}

#[derive(Template)]
#[template(path = "recovery_codes.html")]
struct RecoveryCodesPage<'a> {
    nav: Nav,
    codes: Vec<&'a str>,
}

/// `POST /settings/recovery-codes` (behind a fresh step-up, which magic-auth checks again):
/// replaces the account's recovery codes, shows the new ones once (the response is never
/// cached) and sends a notice.
pub(super) async fn recovery_codes(State(state): State<AppState>, session: Session) -> Response {
    let codes = match state
        .totp
        .regenerate_recovery_codes(&session, STEP_UP_MAX_AGE)
        .await
    {
        Ok(codes) => codes,
        Err(AuthError::StepUpRequired) => return redirect(&state, "/auth/step-up?next=/settings"),
        Err(AuthError::InvalidToken) => return signed_out(&state),
        Err(AuthError::NotEnrolled) => {
            return message(
                &state,
                Some(&session),
                StatusCode::CONFLICT,
                "No authenticator yet",
                "Recovery codes belong to an authenticator: set one up first.",
                Some(("/settings", "Back to settings")),
            );
        }
        Err(e) => return internal(&state, &e),
    };
    send_notice(&state, &session, Notice::RecoveryCodesRegenerated).await;
    let mut response = render(
        StatusCode::OK,
        &RecoveryCodesPage {
            nav: Nav::of(&state, Some(&session)),
            // Exposed here only: the page that shows them, once.
            codes: codes.codes().iter().map(|c| c.expose_secret()).collect(),
        },
    );
    response.headers_mut().insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

#[derive(Template)]
#[template(path = "email_confirm.html")]
struct EmailConfirmPage {
    nav: Nav,
    token: String,
}

/// `GET /settings/email/confirm?token=..`: a button that posts the token back. A scanner's
/// `GET` changes nothing.
pub(super) async fn email_landing(
    State(state): State<AppState>,
    session: Session,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let token: String = q
        .get("token")
        .map_or("", String::as_str)
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '.')
        .take(256)
        .collect();
    let mut response = render(
        StatusCode::OK,
        &EmailConfirmPage {
            nav: Nav::of(&state, Some(&session)),
            token,
        },
    );
    response.headers_mut().insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}
