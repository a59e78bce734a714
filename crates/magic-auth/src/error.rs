//! The crate's error type.

/// Why an authentication operation failed. Messages never include tokens, secrets or codes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The token is malformed, unknown, revoked or expired. One variant for all of them: a
    /// client learns nothing about which.
    #[error("invalid or expired session")]
    InvalidToken,
    /// The sign-in link is malformed, unknown, expired, used, superseded, or confirmed from
    /// another browser. One variant for all of them.
    #[error("invalid or expired sign-in link")]
    InvalidLink,
    /// The account is disabled for sign-in (`SessionStore::disable_account`): no session is
    /// created for it.
    #[error("account disabled")]
    AccountDisabled,
    /// Too many attempts: try again after `retry_at`.
    #[error("too many attempts; try again later")]
    RateLimited {
        /// When the current window ends.
        retry_at: time::OffsetDateTime,
    },
    /// The action needs a fresh second-factor check (step-up) first.
    #[error("step-up required")]
    StepUpRequired,
    /// The email address is not acceptable (see `EmailAddress::parse`).
    #[error("invalid email address")]
    InvalidEmail,
    /// The application's account directory failed (logged; the requester is not told).
    #[error("the account directory failed")]
    Directory,
    /// The new e-mail address cannot be used for this account: it is its current address, or
    /// (at confirmation) the directory has it for another account. Nothing was changed.
    #[error("that e-mail address cannot be used for this account")]
    EmailUnavailable,
    /// The sign-in link could not be delivered (logged; the requester is not told).
    #[error("the sign-in link could not be delivered")]
    Delivery,
    /// No (active, or pending) TOTP enrolment for this user.
    #[error("no TOTP enrolment")]
    NotEnrolled,
    /// The user's TOTP is already active (replacing it needs step-up first).
    #[error("TOTP is already enrolled")]
    AlreadyEnrolled,
    /// A sealed secret could not be sealed or opened (wrong key, tampered or moved ciphertext).
    #[error("a sealed secret could not be processed")]
    Crypto,
    /// The operating system's random generator failed.
    #[error("the random generator failed")]
    Random,
    /// The configuration is unusable (a role name, a duration).
    #[error("invalid authentication configuration: {0}")]
    InvalidConfig(&'static str),
    /// The database refused or could not be reached.
    #[error("authentication database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The tenant-bound transaction could not be opened or committed.
    #[error("authentication transaction error: {0}")]
    Transaction(#[from] rls_guard::RlsError),
}

impl AuthError {
    /// Whether the failure means the session store could not be reached (answer 503: a check
    /// that cannot be evaluated denies, and says so).
    #[must_use]
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Transaction(e) => e.is_unavailable(),
            Self::Database(e) => rls_guard::is_unavailable(e),
            _ => false,
        }
    }
}
