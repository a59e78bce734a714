//! [`SessionLiveness`]: the database refuses every statement made for a session that has ended.

use std::sync::Arc;

use tenant_scope::{TenantContext, TenantId};
use uuid::Uuid;

use crate::RlsError;
use crate::schema::is_plain_identifier;

/// A check, made by the database in the same statement that binds the tenant, that the session
/// a context's actor acts through (see `tenant_scope::Actor::with_session`) is still live.
///
/// It names a function `schema.name(tenant uuid, session uuid)` that the authentication library
/// installs (`magic-auth` installs `auth.session_is_live`) and that answers whether `session` of
/// `tenant` may still act: `RETURNS SETOF boolean` (one `true` row for a live session, no row
/// otherwise) or `RETURNS boolean`. The session is live only when the answer has a row and
/// every row is `true`. Prefer the set-returning form, written in SQL as one `SELECT` with every
/// name schema-qualified, `STABLE`, without `SECURITY DEFINER` or a `SET` clause: PostgreSQL then
/// inlines it into each statement that asks, so a prepared statement plans it once. A scalar
/// function whose body holds a subquery is never inlined, and is parsed and planned again on
/// every call. The binding of every
/// [`TenantTx`](crate::TenantTx) and [`BoundRead`](crate::BoundRead) made for such a context
/// asks it, and unless the answer is live calls `app.require_live_session(false)`, which raises
/// SQLSTATE `TB401` ([`RlsError::SessionEnded`], HTTP 401); a writing transaction asks again
/// in the round trip of its `COMMIT` (it runs at `READ COMMITTED`, whatever the connection's
/// default, so that this second answer is read afresh rather than from the snapshot of the
/// first). No round trip is added, and a session revoked on any
/// instance reads and writes nothing from the moment its revocation commits.
///
/// The check is made under a binding to the actor's home tenant, so a cross-tenant context
/// (staff under a grant) is checked too: its binding first binds the staff member's own tenant,
/// asks, then binds the tenant it acts in. Its `COMMIT` does the same before committing (with
/// signed bindings, in a statement of its own, with freshly signed bindings: one more round
/// trip, for cross-tenant writes only).
///
/// A context whose actor carries a session, on a pool without a liveness check, is refused
/// ([`RlsError::SessionLivenessUnconfigured`]): the check cannot be made, so nothing runs.
/// Contexts without a session (jobs, anonymous requests, an authentication library's own
/// bookkeeping) are bound as before.
///
/// The runtime role can call the check function and leave it out of statements it writes by
/// hand: this is a guarantee for the application's own statements (a session revoked while its
/// request is in flight, or served from a cache of validated sessions), not a defence against
/// SQL run as the runtime role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionLiveness {
    function: Arc<str>,
}

impl SessionLiveness {
    /// The check made by the function `name` (`schema.function`, plain lowercase identifiers).
    ///
    /// # Errors
    /// [`RlsError::InvalidIdentifier`] unless `name` is two plain identifiers joined by a dot.
    pub fn function(name: &str) -> Result<Self, RlsError> {
        match name.split_once('.') {
            Some((schema, function))
                if is_plain_identifier(schema) && is_plain_identifier(function) =>
            {
                Ok(Self {
                    function: name.into(),
                })
            }
            _ => Err(RlsError::InvalidIdentifier(name.to_owned())),
        }
    }

    /// The function's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.function
    }

    /// `true` when the function's answer has a row and every row is `true`; otherwise
    /// `app.require_live_session(false)` raises `TB401`. The function is called from `FROM`, so
    /// a set-returning SQL function is inlined into the statement (planned with it, its plan
    /// cached with the statement's); a scalar one answers its one row. No row, a `NULL` row or
    /// a `false` row all mean "not live". The raising function is called only then, so a live
    /// session's statement runs no PL/pgSQL.
    pub(crate) fn require(&self, tenant: &str, session: &str) -> String {
        format!(
            "(CASE WHEN (SELECT pg_catalog.bool_and(rls_guard_l.live IS TRUE) FROM {}(\
             {tenant}::pg_catalog.uuid, {session}::pg_catalog.uuid) AS rls_guard_l(live)) \
             THEN true ELSE app.require_live_session(false) END)",
            self.function
        )
    }

    /// Checks the function's declaration and that it answers `false` (or, set-returning, no row
    /// or only `false` rows) for a session that does not exist, as the runtime role in a
    /// transaction bound to a random tenant (rolled back).
    pub(crate) async fn probe(&self, tx: &mut sqlx::PgConnection) -> Result<(), RlsError> {
        let refused =
            |why: &str| RlsError::SessionLivenessRefused(format!("{}: {why}", self.function));
        let signature = format!("{}(uuid, uuid)", self.function);
        // A set of boolean or one boolean: `format_type` names the element type either way.
        let declared: Option<(String, String)> = sqlx::query_as(
            "SELECT pg_catalog.format_type(p.prorettype, NULL), p.provolatile::text \
             FROM pg_catalog.pg_proc p WHERE p.oid = pg_catalog.to_regprocedure($1)",
        )
        .bind(&signature)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((returns, volatility)) = declared else {
            return Err(refused("no such function taking (uuid, uuid)"));
        };
        if returns != "boolean" {
            return Err(refused("it must return boolean (or a set of boolean)"));
        }
        if volatility == "i" {
            return Err(refused(
                "it is IMMUTABLE (a cached plan could keep a revoked session's answer)",
            ));
        }
        let tenant = Uuid::new_v4().to_string();
        sqlx::query("SELECT pg_catalog.set_config('app.tenant_id', $1, true)")
            .bind(&tenant)
            .execute(&mut *tx)
            .await?;
        // Every row it answers: none, or only `false` ones, for a session that does not exist.
        let (true_or_null,): (bool,) = sqlx::query_as(&format!(
            "SELECT pg_catalog.count(*) FILTER (WHERE l.live IS NOT FALSE) OPERATOR(pg_catalog.>) 0 \
             FROM {}($1::pg_catalog.uuid, $2::pg_catalog.uuid) AS l(live)",
            self.function
        ))
        .bind(&tenant)
        .bind(Uuid::new_v4().to_string())
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| refused(&format!("it cannot be called as the runtime role ({e})")))?;
        if true_or_null {
            return Err(refused(
                "it does not answer false (or no row) for a session that does not exist",
            ));
        }
        Ok(())
    }
}

/// What the binding of one context must check: the session and its home tenant.
#[derive(Debug, Clone)]
pub(crate) struct LiveCheck {
    pub(crate) liveness: SessionLiveness,
    /// The actor's own tenant, where the session lives.
    pub(crate) home: TenantId,
    pub(crate) session: Uuid,
    /// Whether the context binds a tenant other than `home` (a cross-tenant grant).
    pub(crate) cross: bool,
}

/// The check `context` needs on a pool with `liveness`: none without a session; refused when a
/// session must be checked and the pool has no check.
pub(crate) fn live_check(
    liveness: Option<&SessionLiveness>,
    context: &TenantContext,
) -> Result<Option<LiveCheck>, RlsError> {
    let Some(actor) = context.actor() else {
        return Ok(None);
    };
    let Some(session) = actor.session() else {
        return Ok(None);
    };
    let liveness = liveness.ok_or(RlsError::SessionLivenessUnconfigured)?;
    Ok(Some(LiveCheck {
        liveness: liveness.clone(),
        home: actor.tenant(),
        session,
        cross: actor.tenant() != context.tenant(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_qualified_plain_name_is_accepted() {
        assert!(SessionLiveness::function("auth.session_is_live").is_ok());
        for bad in [
            "session_is_live",
            "auth.Session",
            "auth.x; DROP TABLE t",
            "a.b.c",
            "auth.",
            ".x",
            "auth.\"x\"",
        ] {
            assert!(SessionLiveness::function(bad).is_err(), "{bad}");
        }
        let check = SessionLiveness::function("auth.f").unwrap();
        assert_eq!(
            check.require("$1", "$2"),
            "(CASE WHEN (SELECT pg_catalog.bool_and(rls_guard_l.live IS TRUE) FROM \
             auth.f($1::pg_catalog.uuid, $2::pg_catalog.uuid) AS rls_guard_l(live)) \
             THEN true ELSE app.require_live_session(false) END)"
        );
    }
}
