//! Errors.

use crate::role::RoleProblem;

/// What went wrong. Every variant is a refusal: nothing here falls back to an unscoped query.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RlsError {
    /// The database could not be reached or a statement failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The connected role could bypass row-level security; the pool refuses to run.
    #[error("role `{role}` must not be the runtime role: {}", list(problems))]
    UnsafeRuntimeRole {
        /// The connected role.
        role: String,
        /// Every reason it was refused.
        problems: Vec<RoleProblem>,
    },
    /// The `app` support schema (see [`schema::SUPPORT_SQL`](crate::schema::SUPPORT_SQL)) is
    /// missing, so policies and binding checks cannot work.
    #[error("the rls-guard support schema is not installed (run schema::SUPPORT_SQL as the owner)")]
    SupportSchemaMissing,
    /// The support schema or a binding-check trigger differs from what this version of the
    /// crate installs (each entry names the object and the difference).
    #[error(
        "the rls-guard support schema differs from what this version installs: {}; re-run schema::SUPPORT_SQL and schema::tenant_table_sql as the owner",
        .0.join("; ")
    )]
    SupportSchemaMismatch(Vec<String>),
    /// The coverage check could not probe the policies as the runtime role: the connected role
    /// is neither that role nor allowed to `SET ROLE` to it.
    #[error(
        "cannot probe the policies as role {0:?}: connect as it, or as a role that may SET ROLE to it"
    )]
    CannotProbeAs(String),
    /// A binding key is not 32 bytes long.
    #[error("a binding key must be 32 bytes")]
    InvalidBindingKey,
    /// The database enforces signed tenant bindings and the pool was given no key: nothing
    /// could be bound.
    #[error(
        "the database enforces signed tenant bindings: build the pool with TenantPool::with_binding_key"
    )]
    BindingKeyRequired,
    /// The pool was given a binding key, and the database does not enforce signed bindings
    /// (run schema::ENABLE_SIGNED_BINDINGS_SQL as the owner) or refused the key.
    #[error("the database refused the binding key: {0}")]
    BindingKeyRefused(String),
    /// Probed as the runtime role at start-up, a tenant table's policies admit another
    /// tenant's row (or could not be evaluated); each entry names the table and what was seen.
    #[error(
        "row-level security policies admit other tenants' rows: {}; run `rls-guard check` for every finding",
        .0.join("; ")
    )]
    PolicyLeaks(Vec<String>),
    /// The role to check does not exist.
    #[error("no role named {0:?}")]
    UnknownRole(String),
    /// A [`BoundRead`](crate::BoundRead)'s statement calls `set_config`, which could leave a
    /// tenant on the connection after the statement; nothing was sent.
    #[error("a bound read may not call set_config")]
    SetConfigInRead,
    /// The tenant context may not be used: a cross-tenant grant that has expired, or whose use
    /// could not be audited. Nothing was sent to the database.
    #[error("the tenant context was refused: {0}")]
    ContextRefused(#[from] tenant_scope::TenantError),
    /// The tenant or actor setting was changed inside a tenant-bound transaction; it was rolled
    /// back.
    #[error("the tenant binding was changed inside the transaction; it was rolled back")]
    BindingChanged,
    /// A tenant-bound transaction was requested where no tenant context was resolved.
    #[error("no tenant context was resolved for this request")]
    NoTenantContext,
    /// A [`BoundRead`](crate::BoundRead)'s statement uses a different number of `$n`
    /// placeholders than values were bound; nothing was sent.
    #[error("the statement uses {used} parameter(s) but {bound} value(s) were bound")]
    ParameterCount {
        /// The highest `$n` in the statement.
        used: usize,
        /// Values bound with `bind`.
        bound: usize,
    },
    /// A [`BoundRead`](crate::BoundRead)'s statement has an unclosed string, quoted identifier
    /// or comment; nothing was sent.
    #[error("the statement has an unclosed string, quoted identifier or comment")]
    UnreadableStatement,
    /// The session the context's actor acts through has ended (revoked, expired, its account
    /// disabled): the database refused the statement (SQLSTATE `TB401`, see
    /// [`SessionLiveness`](crate::SessionLiveness)). Nothing was read or written.
    #[error("the session this request acts for has ended")]
    SessionEnded,
    /// The context's actor acts through a session and the pool has no
    /// [`SessionLiveness`](crate::SessionLiveness) check to ask the database with: nothing was
    /// sent.
    #[error(
        "the context carries a session but the pool has no session liveness check: build it with TenantPool::with_session_liveness"
    )]
    SessionLivenessUnconfigured,
    /// A binding for statements of the caller's own
    /// ([`TenantPool::signed_binding`](crate::TenantPool::signed_binding)) was asked for a
    /// context whose actor acts through a session: those statements would not ask whether the
    /// session is live, so only a transaction or a bound read binds such a context.
    #[error(
        "a context acting through a session is bound only by a transaction or a bound read, which check the session"
    )]
    SessionBindingRefused,
    /// The session liveness check was refused at start-up (it names the function and why).
    #[error("the session liveness check was refused: {0}")]
    SessionLivenessRefused(String),
    /// [`TenantPool::with_read_connections`](crate::TenantPool::with_read_connections) or
    /// [`TenantPool::with_transaction_connections`](crate::TenantPool::with_transaction_connections)
    /// was asked to keep no connection, or so many that, with those other lanes already keep
    /// of the same pool, the pool would have none left.
    #[error(
        "kept connections must number at least 1 and, with the {kept} already kept, fewer than the pool's {max} connections (asked for {requested})"
    )]
    KeptConnections {
        /// The number asked for.
        requested: u32,
        /// The connections other live lanes keep of the same pool.
        kept: u32,
        /// The pool's maximum size.
        max: u32,
    },
    /// [`TenantPool::with_read_connections`](crate::TenantPool::with_read_connections) or
    /// [`TenantPool::with_transaction_connections`](crate::TenantPool::with_transaction_connections)
    /// was called outside a Tokio runtime, so the lane could not watch for the pool closing.
    #[error(
        "kept connections need a Tokio runtime: call with_read_connections or with_transaction_connections inside one"
    )]
    KeptConnectionsRuntime,
    /// A table or schema name is not a plain SQL identifier.
    #[error("not a plain SQL identifier: {0:?}")]
    InvalidIdentifier(String),
    /// [`schema::tenant_table_sql_for`](crate::schema::tenant_table_sql_for) was given no kind
    /// of write to check.
    #[error(
        "a tenant table's binding check must hold at least one kind of write (INSERT, UPDATE or DELETE)"
    )]
    NoCheckedWrite,
}

fn list(problems: &[RoleProblem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl RlsError {
    /// Whether the error means the database could not be reached or is not serving (an HTTP
    /// 503), as opposed to a statement the database refused (a constraint, a row-level security
    /// violation). Server-reported outages count: SQLSTATE class 08 (connection exception),
    /// 53300 (too many connections) and 57P01–57P03 (shutting down, cannot connect now).
    #[must_use]
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Database(e) => is_unavailable(e),
            _ => false,
        }
    }

    /// The HTTP refusal for this error (what the axum extractor answers with): `503
    /// database_unavailable` when [`is_unavailable`](Self::is_unavailable), `500
    /// tenant_not_resolved` without a tenant context, `403 tenant_context_refused` for a
    /// refused context, `500 tenant_binding_changed`, else `500 database_error`. The message
    /// never carries the error's details.
    #[must_use]
    pub fn rejection(&self) -> tenant_scope::Rejection {
        use http::StatusCode;
        use tenant_scope::Rejection;
        if self.is_unavailable() {
            return Rejection::from_static(
                StatusCode::SERVICE_UNAVAILABLE,
                "database_unavailable",
                "the database is unavailable",
            );
        }
        match self {
            Self::NoTenantContext => Rejection::from_static(
                StatusCode::INTERNAL_SERVER_ERROR,
                "tenant_not_resolved",
                "tenant context unavailable",
            ),
            Self::ContextRefused(_) => Rejection::from_static(
                StatusCode::FORBIDDEN,
                "tenant_context_refused",
                "access to this tenant is no longer granted",
            ),
            Self::SessionEnded => Rejection::from_static(
                StatusCode::UNAUTHORIZED,
                "session_ended",
                "your session has ended; sign in again",
            ),
            Self::BindingChanged => Rejection::from_static(
                StatusCode::INTERNAL_SERVER_ERROR,
                "tenant_binding_changed",
                "the request was refused",
            ),
            _ => Rejection::from_static(
                StatusCode::INTERNAL_SERVER_ERROR,
                "database_error",
                "the request failed",
            ),
        }
    }
}

impl From<&RlsError> for tenant_scope::Rejection {
    fn from(error: &RlsError) -> Self {
        error.rejection()
    }
}

/// The classification of [`RlsError::is_unavailable`] for a bare `sqlx` error, so crates built
/// on `rls-guard` answer 503 for exactly the same failures.
#[must_use]
pub fn is_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(e) => e.code().is_some_and(|code| {
            code.starts_with("08") || matches!(&*code, "53300" | "57P01" | "57P02" | "57P03")
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_keep_their_codes_and_never_carry_details() {
        let unavailable = RlsError::Database(sqlx::Error::PoolTimedOut).rejection();
        assert_eq!(
            (unavailable.status().as_u16(), unavailable.code()),
            (503, "database_unavailable")
        );
        let missing = RlsError::NoTenantContext.rejection();
        assert_eq!(
            missing.body(),
            r#"{"error":"tenant_not_resolved","message":"tenant context unavailable"}"#
        );
        let secret = RlsError::BindingKeyRefused("key 0123abcd".to_owned());
        let refusal = tenant_scope::Rejection::from(&secret);
        assert_eq!(
            (refusal.status().as_u16(), refusal.code()),
            (500, "database_error")
        );
        assert!(!refusal.body().contains("0123abcd"));
    }
}
