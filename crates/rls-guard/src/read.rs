//! [`BoundRead`]: one read-only statement bound to a tenant, in one round trip.

use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArguments, PgPool, PgRow};
use sqlx::{Arguments, Encode, FromRow, Postgres, Type};
use tenant_scope::{TenantContext, TenantId};

use crate::RlsError;

/// A single `SELECT` run bound to a tenant in **one round trip**, for hot read paths where a
/// [`TenantTx`](crate::TenantTx) would cost three (`BEGIN` + binding, the query, `COMMIT`).
///
/// Made by [`TenantPool::read`](crate::TenantPool::read). The statement runs in its own implicit
/// transaction, wrapped so that a materialised CTE binds `app.tenant_id` and `app.actor_id`
/// with `set_config(.., true)` (transaction-local) before the statement is scanned:
///
/// ```sql
/// WITH rls_guard_binding AS MATERIALIZED (
///        SELECT set_config('app.tenant_id', $n+1, true) AS tenant,
///               set_config('app.actor_id', $n+2, true) AS actor)
/// SELECT rls_guard_read.* FROM rls_guard_binding CROSS JOIN LATERAL (
///        SELECT * FROM (<your statement>) AS rls_guard_inner
///         WHERE rls_guard_binding.tenant IS NOT NULL OFFSET 0) AS rls_guard_read
/// ```
///
/// The `LATERAL` subquery depends on the binding's row and `OFFSET 0` keeps it from being
/// flattened, so row-level security's tenant predicate is first evaluated after the binding is
/// in place; were it ever evaluated before, it would see no tenant and match no row (the read
/// fails closed, it never widens). The binding ends with the implicit transaction, so it never
/// reaches the next user of the connection.
///
/// What it refuses, by construction:
/// - **Dynamic SQL.** The statement is a `&'static str`, so no request input can be spliced into
///   it (use [`bind`](Self::bind) for values); injected SQL cannot rebind the tenant here.
/// - **Writes.** The statement is a subquery of a `SELECT`, so `INSERT`/`UPDATE`/`DELETE`, a
///   data-modifying `WITH` and a second statement are syntax errors. A write hidden in a function
///   call fails at the end of the statement: the deferred binding check finds no restated
///   binding (`app.commit_binding`) and rolls it back ([`RlsError::BindingChanged`]).
///
/// The statement's own `ORDER BY` and `LIMIT` apply inside the subquery; the wrapper's one-row
/// outer loop keeps the order. Use `$1`, `$2`, .. for the values you bind, as usual.
///
/// Behind a transaction-pooling PgBouncer older than 1.21 use a [`TenantTx`](crate::TenantTx):
/// sqlx prepares a statement outside a transaction in two steps, which such a PgBouncer may
/// send to two server connections.
#[must_use = "a BoundRead does nothing until fetched"]
pub struct BoundRead<'p> {
    pool: &'p PgPool,
    tenant: TenantId,
    actor: String,
    sql: &'static str,
    arguments: PgArguments,
    error: Option<BoxDynError>,
}

impl std::fmt::Debug for BoundRead<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No argument values: they may be secrets.
        f.debug_struct("BoundRead")
            .field("tenant", &self.tenant)
            .field("sql", &self.sql)
            .field("arguments", &self.arguments.len())
            .finish_non_exhaustive()
    }
}

impl<'p> BoundRead<'p> {
    pub(crate) fn new(pool: &'p PgPool, context: &TenantContext, sql: &'static str) -> Self {
        Self {
            pool,
            tenant: context.tenant(),
            actor: context
                .actor()
                .map(|a| a.id().to_string())
                .unwrap_or_default(),
            sql,
            arguments: PgArguments::default(),
            error: None,
        }
    }

    /// Binds the next `$n` of the statement.
    pub fn bind<'q, T>(mut self, value: T) -> Self
    where
        T: Encode<'q, Postgres> + Type<Postgres> + 'q,
    {
        if self.error.is_none()
            && let Err(error) = self.arguments.add(value)
        {
            self.error = Some(error);
        }
        self
    }

    /// Every row.
    ///
    /// # Errors
    /// [`RlsError::Database`] when the statement fails, a value cannot be encoded or the
    /// database is unreachable; [`RlsError::BindingChanged`] when the statement wrote.
    pub async fn fetch_all<O>(self) -> Result<Vec<O>, RlsError>
    where
        O: for<'r> FromRow<'r, PgRow> + Send + Unpin,
    {
        let (pool, sql, arguments) = self.prepare()?;
        sqlx::query_as_with::<_, O, _>(&sql, arguments)
            .fetch_all(pool)
            .await
            .map_err(classify)
    }

    /// At most one row.
    ///
    /// # Errors
    /// As [`fetch_all`](Self::fetch_all).
    pub async fn fetch_optional<O>(self) -> Result<Option<O>, RlsError>
    where
        O: for<'r> FromRow<'r, PgRow> + Send + Unpin,
    {
        let (pool, sql, arguments) = self.prepare()?;
        sqlx::query_as_with::<_, O, _>(&sql, arguments)
            .fetch_optional(pool)
            .await
            .map_err(classify)
    }

    /// The wrapped statement and the arguments with the binding appended after the caller's.
    fn prepare(self) -> Result<(&'p PgPool, String, PgArguments), RlsError> {
        if let Some(error) = self.error {
            return Err(RlsError::Database(sqlx::Error::Encode(error)));
        }
        let mut arguments = self.arguments;
        let tenant = arguments.len() + 1;
        arguments
            .add(self.tenant.to_string())
            .and_then(|()| arguments.add(self.actor))
            .map_err(|e| RlsError::Database(sqlx::Error::Encode(e)))?;
        // The newline ends a trailing `--` comment in the statement before the wrapper resumes.
        let sql = format!(
            "WITH rls_guard_binding AS MATERIALIZED (\
               SELECT pg_catalog.set_config('app.tenant_id', ${tenant}::text, true) AS tenant, \
                      pg_catalog.set_config('app.actor_id', ${actor}::text, true) AS actor) \
             SELECT rls_guard_read.* FROM rls_guard_binding CROSS JOIN LATERAL (\
               SELECT * FROM ({sql}\n) AS rls_guard_inner \
                WHERE rls_guard_binding.tenant IS NOT NULL OFFSET 0) AS rls_guard_read",
            actor = tenant + 1,
            sql = self.sql,
        );
        Ok((self.pool, sql, arguments))
    }
}

/// A deferred binding check that failed (SQLSTATE `TB001`) is a write the read was not allowed
/// to make; everything else is a database error.
pub(crate) fn classify(error: sqlx::Error) -> RlsError {
    let changed = error
        .as_database_error()
        .and_then(|e| e.code())
        .is_some_and(|code| code == "TB001");
    if changed {
        RlsError::BindingChanged
    } else {
        RlsError::Database(error)
    }
}
