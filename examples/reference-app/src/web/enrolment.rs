//! The authenticator on the code page: active, pending (started, not yet confirmed), or none.
//!
//! Starting an enrolment writes a fresh seed, so it is a `POST` (magic-auth's
//! `POST /api/auth/totp/enrol`); the page's `GET` only reads. Re-opening the page while an enrolment is pending shows that same enrolment again
//! (magic-auth's `TotpService::enrolment_state` opens the sealed seed) rather than replacing it,
//! so a reload, a second tab or a link scanner cannot invalidate the code a person just scanned.

use secrecy::ExposeSecret;

use magic_auth::totp::EnrolmentState;
use magic_auth::{AuthError, Session};
use zeroize::Zeroizing;

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
    /// magic-auth refused or failed (a seed that does not open is `AuthError::Crypto`).
    #[error("totp: {0}")]
    Auth(#[from] AuthError),
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
    let email = super::auth::member_email(state, session).await?;
    match state
        .totp
        .enrolment_state(session.tenant, session.user, &email)
        .await?
    {
        EnrolmentState::Pending(enrolment) => Ok(Factor::Pending {
            // Exposed here only: the page that shows them to the enrolling user.
            qr_svg: Zeroizing::new(enrolment.qr_svg()?.expose_secret().to_owned()),
            key: Zeroizing::new(enrolment.secret_base32.expose_secret().to_owned()),
        }),
        EnrolmentState::Active => Ok(Factor::Active),
        // `EnrolmentState` may grow; anything but these two is "offer to start".
        _ => Ok(Factor::None),
    }
}
