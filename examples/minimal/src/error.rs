//! The service's error: refusals in the workspace's JSON shape, nothing of a cause shown.

use audit_log::AuditError;
use axum::response::{IntoResponse, Response};
use rls_guard::RlsError;

/// Why the service could not start or a request failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database, a binding or row-level security.
    #[error(transparent)]
    Rls(#[from] RlsError),
    /// The audit log.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// Sign-in and sessions.
    #[error(transparent)]
    Auth(#[from] magic_auth::AuthError),
    /// The key ring.
    #[error(transparent)]
    Crypto(#[from] field_crypto::CryptoError),
    /// The audit scrubber's configuration.
    #[error(transparent)]
    Scrub(#[from] audit_log::scrub::ScrubError),
}

impl From<sqlx::Error> for Error {
    fn from(error: sqlx::Error) -> Self {
        Self::Rls(error.into())
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        match self {
            // Refusals (an ended session, an unreachable database) in the shared JSON shape.
            Self::Rls(error) => error.into_response(),
            // Nothing of the cause reaches the client.
            _ => tenant_scope::Rejection::from_static(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "something went wrong",
            )
            .into_response(),
        }
    }
}
