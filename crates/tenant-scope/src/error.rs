//! Errors.

/// A tenant or actor identifier could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// Not a UUID in canonical hyphenated form.
    #[error("identifier is not a canonical hyphenated uuid")]
    Malformed,
    /// The nil UUID, which never names a tenant or actor.
    #[error("identifier is the nil uuid")]
    Nil,
}

/// Why no tenant context is available, or why a tenant operation was refused.
///
/// Every variant is a refusal: nothing in this crate falls back to a default tenant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TenantError {
    /// No source named a tenant.
    #[error("no tenant could be resolved for this request")]
    Missing,
    /// A source named a tenant in a form that does not parse.
    #[error("the tenant named by {source_name} is malformed")]
    Malformed {
        /// The resolver that found the malformed value.
        source_name: &'static str,
    },
    /// Two sources named different tenants (for example the session and a header).
    #[error("tenant sources disagree")]
    Conflict,
    /// The tenant is not one this service knows.
    #[error("unknown tenant")]
    Unknown,
    /// The tenant could not be checked (for example the tenant directory is unreachable).
    #[error("tenant resolution is unavailable")]
    Unavailable,
    /// Code asked for the current tenant outside any tenant scope.
    #[error("no tenant scope is active for this task")]
    NoScope,
    /// A handler asked for a tenant context on a route that did not resolve one.
    #[error("the request carries no resolved tenant context")]
    NotResolved,
    /// A cross-tenant grant was refused.
    #[error("cross-tenant access refused: {0}")]
    CrossTenantRefused(CrossTenantRefusal),
}

/// Why a cross-tenant grant, or a use of a granted context, was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CrossTenantRefusal {
    /// Only staff may act across tenants.
    #[error("actor is not staff")]
    NotStaff,
    /// Every grant needs a reason of at least
    /// [`MIN_REASON_CHARS`](crate::cross_tenant::MIN_REASON_CHARS) visible characters
    /// (whitespace, control, format and other invisible characters do not count).
    #[error("a reason is required")]
    ReasonRequired,
    /// The reason is longer than [`MAX_REASON_CHARS`](crate::cross_tenant::MAX_REASON_CHARS)
    /// characters.
    #[error("the reason is too long")]
    ReasonTooLong,
    /// The audit hook could not record the grant or the use, so it is not given.
    #[error("the grant could not be audited")]
    AuditFailed,
    /// A cross-tenant authority already exists in this process.
    #[error("a cross-tenant authority is already installed")]
    AlreadyInstalled,
    /// The granted context has outlived its
    /// [`GrantLifetime`](crate::cross_tenant::GrantLifetime) and can no longer be used.
    #[error("the grant has expired")]
    Expired,
    /// A [`GrantLifetime`](crate::cross_tenant::GrantLifetime) was zero or longer than
    /// [`GrantLifetime::MAX`](crate::cross_tenant::GrantLifetime::MAX) (a configuration error).
    #[error("the grant lifetime is out of range")]
    LifetimeOutOfRange,
}
