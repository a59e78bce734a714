//! [`TenantPool`] and [`TenantTx`]: the only way to touch tenant tables.

use std::ops::{Deref, DerefMut};

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnection, PgPool};
use sqlx::{Executor, Postgres};
use tenant_scope::{TenantContext, TenantId};

use crate::RlsError;
use crate::role::{verify_runtime_role, verify_support_schema};

/// A PostgreSQL pool whose connections are handed out only inside transactions bound to a
/// tenant.
///
/// Built from a pool connected as the runtime role, after checking at start-up that the role
/// cannot bypass row-level security ([`verify_runtime_role`]) and that the support schema is
/// installed. Cheap to clone.
#[derive(Debug, Clone)]
pub struct TenantPool {
    pool: PgPool,
}

impl TenantPool {
    /// Wraps `pool` after verifying its role and the support schema.
    ///
    /// Keep the raw pool out of request handlers: its connections are not tenant-bound (and
    /// see no tenant rows — RLS still holds — but the application layer expects a binding).
    ///
    /// # Errors
    /// [`RlsError::UnsafeRuntimeRole`], [`RlsError::SupportSchemaMissing`], or
    /// [`RlsError::Database`] when the checks cannot run: the pool refuses to start.
    pub async fn new(pool: PgPool) -> Result<Self, RlsError> {
        // One explicit transaction: behind a transaction-pooling PgBouncer every statement of
        // it runs on the same server connection.
        let mut tx = pool.begin().await?;
        verify_runtime_role(&mut tx).await?;
        verify_support_schema(&mut tx).await?;
        tx.commit().await?;
        Ok(Self { pool })
    }

    /// Begins a transaction bound to `context`'s tenant (and actor).
    ///
    /// `BEGIN` and the transaction-local binding (`SET LOCAL app.tenant_id`, `app.actor_id`) go
    /// in one round trip. The settings are
    /// transaction-local, so they end with the transaction and never reach the next user of the
    /// pooled connection.
    ///
    /// # Errors
    /// [`RlsError::Database`] when no connection can be had or the statement fails; no
    /// unscoped connection is ever returned instead.
    pub async fn begin(&self, context: &TenantContext) -> Result<TenantTx, RlsError> {
        let tenant = context.tenant();
        let actor = context
            .actor()
            .map(|a| a.id().to_string())
            .unwrap_or_default();
        let conn = self.pool.acquire().await?;
        // Wrap the connection before the first byte is sent: if this future is cancelled while
        // BEGIN is in flight, dropping the unfinished `TenantTx` closes the connection rather
        // than returning a bound, mid-transaction connection to the pool.
        let mut tx = TenantTx {
            conn,
            tenant,
            actor,
            finished: false,
        };
        // The values are validated UUIDs (hex digits and hyphens only), so inlining them as
        // literals is injection-free; the simple-query protocol is what lets BEGIN and the
        // binding share one round trip. `SET LOCAL` is a utility command: no planning, no result
        // row, measurably cheaper than `SELECT set_config(.., true)` with the same effect.
        let bind = format!(
            "BEGIN; SET LOCAL app.tenant_id = '{tenant}'; SET LOCAL app.actor_id = '{}'",
            tx.actor
        );
        tx.conn.execute(sqlx::raw_sql(&bind)).await?;
        Ok(tx)
    }

    /// The pool inside (for health checks and shutdown).
    #[must_use]
    pub const fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// A transaction bound to one tenant. Use it as a `&mut PgConnection` for queries, then
/// [`commit`](Self::commit) or [`rollback`](Self::rollback).
///
/// Dropped without either (an early return, a panic, a cancelled future), the connection is
/// closed rather than returned to the pool, so a half-finished transaction can never be
/// inherited.
#[must_use = "a TenantTx must be committed or rolled back"]
pub struct TenantTx {
    conn: PoolConnection<Postgres>,
    tenant: TenantId,
    actor: String,
    finished: bool,
}

impl std::fmt::Debug for TenantTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantTx")
            .field("tenant", &self.tenant)
            .finish_non_exhaustive()
    }
}

/// Clears any session-level tenant that SQL inside the transaction may have set with a plain
/// `SET`, so no tenant outlives the transaction on the pooled connection. One statement is
/// enough: without a tenant every tenant table shows no rows and refuses every write, whatever
/// `app.actor_id` says; and `app.commit_binding` is set `LOCAL` right before every `COMMIT`.
const RESET: &str = "RESET app.tenant_id";

impl TenantTx {
    /// The tenant this transaction is bound to.
    #[must_use]
    pub const fn tenant(&self) -> TenantId {
        self.tenant
    }

    /// Restates the tenant and commits, in one round trip.
    ///
    /// At `COMMIT` PostgreSQL runs the deferred binding check (see
    /// [`schema::SUPPORT_SQL`](crate::schema::SUPPORT_SQL)) for every row the transaction wrote:
    /// each must belong to this tenant, and the binding must be unchanged. Only utility commands
    /// are sent, so a read-only transaction costs what a plain `COMMIT` does.
    ///
    /// # Errors
    /// [`RlsError::BindingChanged`] when SQL inside the transaction rebound it and wrote (the
    /// transaction is rolled back and the connection discarded); [`RlsError::Database`] when
    /// the commit fails.
    pub async fn commit(mut self) -> Result<(), RlsError> {
        let sql = format!(
            "SET LOCAL app.commit_binding = '{}:{}'; COMMIT; {RESET}",
            self.tenant, self.actor
        );
        self.finish(&sql).await
    }

    /// Rolls back.
    ///
    /// # Errors
    /// [`RlsError::Database`] when the rollback fails (the connection is discarded).
    pub async fn rollback(mut self) -> Result<(), RlsError> {
        self.finish(&format!("ROLLBACK; {RESET}")).await
    }

    async fn finish(&mut self, sql: &str) -> Result<(), RlsError> {
        // `finished` is set only once the server has answered: a commit or rollback cancelled
        // mid-flight leaves it false, and `Drop` closes the connection.
        match self.conn.execute(sqlx::raw_sql(sql)).await {
            Ok(_) => {
                self.finished = true;
                Ok(())
            }
            Err(error) => {
                // The connection's state is unknown (possibly tampered with): never reuse it.
                // (`finished` stays false, so `Drop` closes it.)
                let changed = error
                    .as_database_error()
                    .and_then(|e| e.code())
                    .is_some_and(|code| code == "TB001");
                if changed {
                    tracing::warn!(tenant = %self.tenant, "tenant binding changed inside a transaction; rolled back");
                    Err(RlsError::BindingChanged)
                } else {
                    Err(error.into())
                }
            }
        }
    }
}

impl Deref for TenantTx {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.conn
    }
}

impl DerefMut for TenantTx {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.conn
    }
}

impl Drop for TenantTx {
    fn drop(&mut self) {
        if !self.finished {
            self.conn.close_on_drop();
        }
    }
}
