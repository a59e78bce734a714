//! The authenticator on the code page: active, pending (started, not yet confirmed), or none.
//!
//! Starting an enrolment writes a fresh seed, so it is a `POST` ([`start`]); the page's `GET`
//! only reads. Re-opening the page while an enrolment is pending shows that same enrolment again
//! — its QR code and key, re-derived from the sealed seed — rather than replacing it, so a
//! reload, a second tab or a link scanner cannot invalidate the code a person just scanned.

use std::collections::HashMap;
use std::fmt::Write as _;

use axum::Extension;
use axum::extract::{Form, State};
use axum::response::Response;
use field_crypto::Context;
use magic_auth::totp::Enrolment;
use magic_auth::{Assurance, AuthError, Session};
use tenant_scope::TenantContext;
use zeroize::Zeroizing;

use super::{internal, redirect};
use crate::redirect::LocalTarget;
use crate::state::AppState;

/// The issuer shown in authenticator apps (also given to `magic_auth::totp::TotpConfig`).
pub(crate) const ISSUER: &str = "TenantGuard reference app";

/// A failure reading the authenticator's state.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(super) enum EnrolmentError {
    /// The database could not be read.
    #[error("database: {0}")]
    Database(#[from] rls_guard::RlsError),
    /// The pending seed did not open (wrong key, or a row moved elsewhere).
    #[error("the pending authenticator seed could not be opened")]
    Seal,
    /// magic-auth refused or failed.
    #[error("totp: {0}")]
    Auth(#[from] AuthError),
}

impl From<sqlx::Error> for EnrolmentError {
    fn from(e: sqlx::Error) -> Self {
        Self::Database(e.into())
    }
}

/// The user's authenticator.
pub(super) enum Factor {
    /// Confirmed: the page asks for a code.
    Active,
    /// Started and not yet confirmed: the page shows it (QR code as SVG, key in base32).
    Pending {
        qr_svg: Zeroizing<String>,
        key: Zeroizing<String>,
    },
    /// Never started: the page offers to start.
    None,
}

/// Reads the user's authenticator without changing anything.
pub(super) async fn factor(state: &AppState, session: &Session) -> Result<Factor, EnrolmentError> {
    let context = TenantContext::for_actor(session.actor());
    let mut tx = state.pool.begin(&context).await?;
    let row: Option<(bool, Vec<u8>, String)> = sqlx::query_as(
        "SELECT t.confirmed_at IS NOT NULL, t.seed, m.email FROM auth.totp t \
         JOIN workspace.members m ON m.tenant_id = t.tenant_id AND m.user_id = t.user_id \
         WHERE t.tenant_id = $1 AND t.user_id = $2",
    )
    .bind(session.tenant.as_uuid())
    .bind(session.user.as_uuid())
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    match row {
        None => Ok(Factor::None),
        Some((true, _, _)) => Ok(Factor::Active),
        Some((false, sealed, email)) => {
            // magic-auth seals each seed bound to (tenant, auth.totp, seed, user); opening it with
            // the same binding is the only way to show a pending enrolment again.
            let binding = Context::new(
                session.tenant.as_uuid().as_bytes(),
                "auth.totp",
                "seed",
                session.user.as_uuid().as_bytes(),
            );
            let seed = state
                .keyring
                .open(&sealed, &binding)
                .map_err(|_| EnrolmentError::Seal)?;
            let key = Zeroizing::new(base32(seed.as_bytes()));
            let enrolment = Enrolment {
                otpauth_url: Zeroizing::new(otpauth_url(&key, ISSUER, &email)),
                secret_base32: key,
            };
            let qr_svg = enrolment.qr_svg()?;
            Ok(Factor::Pending {
                qr_svg,
                key: enrolment.secret_base32,
            })
        }
    }
}

/// `POST /auth/totp/enrol`: starts an enrolment unless one is active or already pending (a
/// pending one is kept: the person may have scanned it), then back to the code page.
pub(super) async fn start(
    State(state): State<AppState>,
    Extension(session): Extension<Session>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let next = LocalTarget::or(
        form.get("next").map(String::as_str),
        &state.base_url,
        "/notes",
    );
    let back = format!(
        "/auth/totp?next={}",
        url::form_urlencoded::byte_serialize(next.as_str().as_bytes()).collect::<String>()
    );
    if session.assurance == Assurance::Aal2 {
        return redirect(&state, next.as_str());
    }
    match factor(&state, &session).await {
        Ok(Factor::None) => {}
        Ok(Factor::Active | Factor::Pending { .. }) => return redirect(&state, &back),
        Err(e) => return internal(&state, &e),
    }
    let email = match super::auth::member_email(&state, &session).await {
        Ok(e) => e,
        Err(e) => return internal(&state, &e),
    };
    match state
        .totp
        .enroll(session.tenant, session.user, &email)
        .await
    {
        // The enrolment is shown by the page (a reload shows the same one).
        Ok(_) | Err(AuthError::AlreadyEnrolled) => redirect(&state, &back),
        Err(e) => internal(&state, &e),
    }
}

/// RFC 4648 base32 without padding (as authenticator apps take keys).
pub(super) fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let mut buffer: u32 = 0;
    let mut bits = 0;
    for &b in bytes {
        buffer = (buffer << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((buffer >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((buffer << (5 - bits)) & 31) as usize]));
    }
    out
}

/// The Key URI an authenticator app scans: SHA-1, 6 digits, 30 s (the defaults, so not
/// written), as magic-auth writes it at enrolment.
pub(super) fn otpauth_url(key: &str, issuer: &str, account: &str) -> String {
    let issuer = encode(issuer);
    format!(
        "otpauth://totp/{issuer}:{}?secret={key}&issuer={issuer}",
        encode(account)
    )
}

/// Percent-encodes everything but ASCII letters, digits and `-_.~`.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_shown_key_and_url_match_what_the_totp_library_writes_at_enrolment() {
        for seed in [
            vec![0u8; 20],
            (0u8..20).collect::<Vec<_>>(),
            vec![0xff; 20],
            (0u8..21).map(|b| b.wrapping_mul(37)).collect(),
        ] {
            let reference = totp_rs::Builder::new()
                .with_algorithm(totp_rs::Algorithm::SHA1)
                .with_digits(6)
                .with_skew(1)
                .with_step_duration(30)
                .with_secret(seed.clone())
                .with_issuer(Some(ISSUER))
                .with_account_name("ana+1@acme.test")
                .build()
                .unwrap();
            let key = base32(&seed);
            assert_eq!(key, reference.secret().to_base32());
            assert_eq!(
                otpauth_url(&key, ISSUER, "ana+1@acme.test"),
                reference.to_url().unwrap()
            );
        }
    }
}
