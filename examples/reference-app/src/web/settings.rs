//! Account settings: replacing the authenticator, recovery codes, the e-mail address, and
//! disabling the account.
//!
//! - Replacing the authenticator (`/settings/authenticator`) needs a second-factor check within
//!   the last 10 minutes or one of the account's recovery codes (for a lost phone: a session
//!   with the link only may use one). magic-auth checks this itself, not only this page. The new
//!   authenticator is pending until a code from it is entered *from the same session*; the old
//!   one keeps working until then. On completion the old seed is gone, every other session and
//!   pending link ended, this session rotated, and a notice sent to the account's address.
//! - Disabling the account (`POST /settings/disable`, behind a fresh step-up and a typed
//!   confirmation) ends every session and pending link in magic-auth first, then marks the
//!   member disabled in `workspace.members` (so no link is sent again), then sends a notice.
//!
//! - Changing the e-mail address (`POST /settings/email`, behind a fresh step-up): magic-auth
//!   sends a notice to the current address and a single-use confirmation link to the new one,
//!   bound to this account, the new address and this session. The link's page
//!   (`/settings/email/confirm`) only shows a button; its `POST`, from the same session,
//!   confirms it, and magic-auth then applies the change through the account directory
//!   (`workspace.members`) and ends every other session.
//!
//! - Making new recovery codes (`POST /settings/recovery-codes`, behind a fresh step-up):
//!   magic-auth replaces them (the old ones stop working), the page shows the new ones once,
//!   and a notice goes to the account's address.
//!
//! Every step is an authentication event that the audit log records.

use secrecy::ExposeSecret;
use std::collections::HashMap;

use askama::Template;
use axum::extract::{Form, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use magic_auth::mailer::{Mailer, Notice};
use magic_auth::totp::ReplaceProof;
use magic_auth::{
    Assurance, AuthError, EmailAddress, Session, clear_session_cookie, session_cookie,
};
use tenant_scope::TenantContext;
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
}

/// `GET /settings`.
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
    render(
        StatusCode::OK,
        &SettingsPage {
            nav: Nav::of(&state, Some(&session)),
            email,
            done,
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

fn now() -> u64 {
    u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp()).unwrap_or(0)
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
            error: q
                .get("error")
                .map(|_| "That code is not right. Check the new authenticator and try again."),
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

/// `POST /settings/authenticator`: starts a replacement, authorised by the session's fresh
/// step-up or by the recovery code in the form.
pub(super) async fn start_replacement(
    State(state): State<AppState>,
    session: Session,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let code = form
        .get("recovery_code")
        .map(|c| c.trim())
        .filter(|c| !c.is_empty());
    let proof = match code {
        Some(code) => ReplaceProof::RecoveryCode(code),
        None => ReplaceProof::StepUp {
            max_age: STEP_UP_MAX_AGE,
        },
    };
    let email = match super::auth::member_email(&state, &session).await {
        Ok(e) => e,
        Err(e) => return internal(&state, &e),
    };
    match state
        .totp
        .start_replacement(&session, proof, &email, now())
        .await
    {
        Ok(_) => redirect(&state, "/settings/authenticator"),
        Err(AuthError::StepUpRequired) => message(
            &state,
            Some(&session),
            StatusCode::FORBIDDEN,
            "Confirm it is you first",
            "Replacing your authenticator needs a code from it entered within the last 10 \
             minutes, or one of your recovery codes.",
            Some(if session.assurance == Assurance::Aal2 {
                (
                    "/auth/step-up?next=/settings/authenticator",
                    "Confirm with a code",
                )
            } else {
                ("/settings/authenticator", "Use a recovery code")
            }),
        ),
        Err(AuthError::NotEnrolled) => message(
            &state,
            Some(&session),
            StatusCode::BAD_REQUEST,
            "No authenticator to replace",
            "This account has no authenticator yet.",
            Some(("/auth/totp", "Set one up")),
        ),
        Err(AuthError::InvalidToken) => signed_out(&state),
        Err(e) => internal(&state, &e),
    }
}

/// `POST /settings/authenticator/confirm`: a code from the new authenticator completes the
/// replacement this session started.
pub(super) async fn confirm_replacement(
    State(state): State<AppState>,
    session: Session,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let code = form.get("code").map_or("", |c| c.trim());
    match state.totp.complete_replacement(&session, code, now()).await {
        Ok(true) => {}
        Ok(false) => return redirect(&state, "/settings/authenticator?error=wrong"),
        Err(AuthError::NotEnrolled) => {
            return message(
                &state,
                Some(&session),
                StatusCode::BAD_REQUEST,
                "Nothing to confirm",
                "No replacement of your authenticator was started from this session.",
                Some(("/settings/authenticator", "Replace your authenticator")),
            );
        }
        Err(AuthError::InvalidToken) => return signed_out(&state),
        Err(e) => return internal(&state, &e),
    }
    send_notice(&state, &session, Notice::AuthenticatorReplaced).await;
    // A fresh factor check: a new session (the old one revoked with it).
    match state.sessions.rotate(&session, Assurance::Aal2).await {
        Ok((fresh, token)) => {
            let mut response = redirect(&state, "/settings?done=authenticator");
            response
                .headers_mut()
                .append(header::SET_COOKIE, session_cookie(&token, &fresh));
            response
        }
        Err(AuthError::InvalidToken) => signed_out(&state),
        Err(e) => internal(&state, &e),
    }
}

/// Sends `notice` to the account's address. A failure is logged, never shown: the change is
/// already made.
async fn send_notice(state: &AppState, session: &Session, notice: Notice) {
    let address = notice_address(state, session).await;
    deliver_notice(state, address, notice).await;
}

/// The account's address, for a notice (read while the session is live).
async fn notice_address(state: &AppState, session: &Session) -> Option<EmailAddress> {
    match super::auth::member_email(state, session).await {
        Ok(e) => EmailAddress::parse(&e).ok(),
        Err(error) => {
            tracing::error!(%error, "the account's address could not be read for a notice");
            None
        }
    }
}

async fn deliver_notice(state: &AppState, address: Option<EmailAddress>, notice: Notice) {
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

/// `POST /settings/disable` (behind a fresh step-up): with `confirm=disable`, disables the
/// account: magic-auth first (every session and link ended, no sign-in after), then the
/// directory's flag, then the notice.
pub(super) async fn disable(
    State(state): State<AppState>,
    session: Session,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if form.get("confirm").map(|c| c.trim()) != Some("disable") {
        return message(
            &state,
            Some(&session),
            StatusCode::BAD_REQUEST,
            "Type “disable” to confirm",
            "Nothing was changed.",
            Some(("/settings", "Back to settings")),
        );
    }
    // The address and the directory's flag first, while the session may still read and write (once the account is
    // disabled, the database refuses every statement made for its sessions).
    let address = notice_address(&state, &session).await;
    let context = TenantContext::for_actor(session.actor());
    let flagged = async {
        let mut tx = state.pool.begin(&context).await?;
        sqlx::query(
            "UPDATE workspace.members SET disabled = true WHERE tenant_id = $1 AND user_id = $2",
        )
        .bind(session.tenant.as_uuid())
        .bind(session.user.as_uuid())
        .execute(&mut *tx)
        .await
        .map_err(rls_guard::RlsError::from)?;
        tx.commit().await
    }
    .await;
    if let Err(e) = flagged {
        return internal(&state, &e);
    }
    // magic-auth refuses every sign-in of the account from here on; the flag above also stops
    // links from being sent.
    if let Err(e) = state
        .sessions
        .disable_account(session.tenant, session.user)
        .await
    {
        return internal(&state, &e);
    }
    deliver_notice(&state, address, Notice::AccountDisabled).await;
    let mut response = message(
        &state,
        None,
        StatusCode::OK,
        "Your account is disabled",
        "Every session was signed out and no sign-in link works for it any more. An \
         administrator can enable it again.",
        None,
    );
    let h = response.headers_mut();
    h.append(header::SET_COOKIE, clear_session_cookie());
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// `POST /settings/email` (behind a fresh step-up): asks for a change to the address in the
/// form.
pub(super) async fn request_email(
    State(state): State<AppState>,
    session: Session,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let email = form.get("email").map_or("", String::as_str);
    let refused = |status, title: &str, text: &str| {
        message(
            &state,
            Some(&session),
            status,
            title,
            text,
            Some(("/settings", "Back to settings")),
        )
    };
    match state
        .links
        .request_email_change(&session, email, STEP_UP_MAX_AGE)
        .await
    {
        Ok(()) => redirect(&state, "/settings?done=email-sent"),
        Err(AuthError::InvalidEmail) => refused(
            StatusCode::BAD_REQUEST,
            "That address does not look right",
            "Enter an email address such as name@example.com. Nothing was changed.",
        ),
        Err(AuthError::EmailUnavailable) => refused(
            StatusCode::BAD_REQUEST,
            "That is your address already",
            "Nothing was changed.",
        ),
        Err(AuthError::RateLimited { .. }) => refused(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many requests",
            "Wait a few minutes, then try again.",
        ),
        Err(AuthError::StepUpRequired) => message(
            &state,
            Some(&session),
            StatusCode::FORBIDDEN,
            "Confirm it is you first",
            "Changing your e-mail address needs a code from your authenticator within the last \
             10 minutes.",
            Some(("/auth/step-up?next=/settings", "Confirm with a code")),
        ),
        Err(AuthError::Delivery) => refused(
            StatusCode::BAD_GATEWAY,
            "The messages could not be sent",
            "Nothing was changed. Try again later.",
        ),
        Err(AuthError::InvalidToken) => signed_out(&state),
        Err(e) => internal(&state, &e),
    }
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

/// `POST /settings/email/confirm`: confirms the change from the session that asked for it.
pub(super) async fn confirm_email(
    State(state): State<AppState>,
    session: Session,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let token = form.get("token").map_or("", String::as_str);
    let refused = |title: &str, text: &str| {
        message(
            &state,
            Some(&session),
            StatusCode::BAD_REQUEST,
            title,
            text,
            Some(("/settings", "Back to settings")),
        )
    };
    match state.links.confirm_email_change(&session, token).await {
        Ok(_) => redirect(&state, "/settings?done=email"),
        Err(AuthError::InvalidLink) => refused(
            "This confirmation link does not work",
            "It has expired, was already used, was replaced by a newer request, or was opened in \
             another session than the one that asked for the change. Nothing was changed.",
        ),
        Err(AuthError::EmailUnavailable) => refused(
            "That address cannot be used",
            "Another account has it. Nothing was changed.",
        ),
        Err(e) => internal(&state, &e),
    }
}
