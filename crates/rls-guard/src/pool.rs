//! [`TenantPool`] and [`TenantTx`]: the only way to touch tenant tables.

use std::ops::{Deref, DerefMut};

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnection, PgPool};
use sqlx::{Executor, Postgres};
use tenant_scope::{TenantContext, TenantId};

use std::sync::Arc;

use crate::lane::{Lane, LaneConnection};
use crate::liveness::{LiveCheck, live_check};
use crate::read::{BoundRead, classify};
use crate::role::verify_runtime_role;
use crate::support::{BindingMode, verify_support_schema_mode};
use crate::{BindingKey, RlsError, SessionLiveness, SignedBinding};

/// A PostgreSQL pool whose connections are handed out only inside transactions bound to a
/// tenant.
///
/// Built from a pool connected as the runtime role, after checking at start-up that the role
/// cannot bypass row-level security ([`verify_runtime_role`]) and that the support schema is
/// installed. Cheap to clone.
#[derive(Debug, Clone)]
pub struct TenantPool {
    pool: PgPool,
    /// Set when the database enforces signed bindings.
    key: Option<Arc<BindingKey>>,
    /// The database-side check that a context's session is live.
    liveness: Option<SessionLiveness>,
    /// Connections kept for bound reads, if any.
    lane: Option<Arc<Lane>>,
    /// Connections kept for transactions, if any.
    tx_lane: Option<Arc<Lane>>,
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
        match Self::checked(&pool).await? {
            BindingMode::Unsigned => Ok(Self {
                pool,
                key: None,
                liveness: None,
                lane: None,
                tx_lane: None,
            }),
            BindingMode::Signed => Err(RlsError::BindingKeyRequired),
        }
    }

    /// Wraps `pool` for a database that enforces signed tenant bindings (see
    /// [`schema::ENABLE_SIGNED_BINDINGS_SQL`](crate::schema::ENABLE_SIGNED_BINDINGS_SQL)),
    /// signing every binding with `key`. After the checks of [`new`](Self::new), a binding
    /// signed with `key` is tried (in a transaction that is rolled back).
    ///
    /// With signed bindings, a tenant that SQL sets by `set_config` or `SET` (injected SQL, a
    /// stacked `COMMIT; BEGIN; ..`) is ignored by every policy: only `app.bind` with a valid
    /// signature, made in this transaction on this connection, binds. `begin` then takes two
    /// round trips (`BEGIN`, then the binding as parameters of a prepared statement, so the
    /// signature never appears in query text other sessions can see); reads stay one.
    ///
    /// # Errors
    /// As [`new`](Self::new); [`RlsError::BindingKeyRefused`] when the database does not
    /// enforce signed bindings or does not accept the key.
    pub async fn with_binding_key(pool: PgPool, key: BindingKey) -> Result<Self, RlsError> {
        if Self::checked(&pool).await? == BindingMode::Unsigned {
            return Err(RlsError::BindingKeyRefused(
                "signed bindings are not enabled in this database".into(),
            ));
        }
        let key = Arc::new(key);
        let probe = key.sign(&uuid::Uuid::new_v4().to_string(), "")?;
        let mut tx = pool.begin().await?;
        let bound = bind_statement(&probe).execute(&mut *tx).await;
        tx.rollback().await?;
        bound.map_err(|e| match e.as_database_error() {
            Some(db) => RlsError::BindingKeyRefused(db.message().to_owned()),
            None => RlsError::Database(e),
        })?;
        Ok(Self {
            pool,
            key: Some(key),
            liveness: None,
            lane: None,
            tx_lane: None,
        })
    }

    /// Makes the database refuse every statement bound for a context whose actor acts through
    /// a session that has ended (see [`SessionLiveness`]), after checking, as the runtime role
    /// in a transaction that is rolled back, that the check function exists, is not
    /// `IMMUTABLE`, returns a boolean and answers `false` for a session that does not exist.
    ///
    /// # Errors
    /// [`RlsError::SessionLivenessRefused`] when the function fails those checks;
    /// [`RlsError::Database`] when they cannot run.
    pub async fn with_session_liveness(
        mut self,
        liveness: SessionLiveness,
    ) -> Result<Self, RlsError> {
        let mut tx = self.pool.begin().await?;
        let probed = liveness.probe(&mut tx).await;
        tx.rollback().await?;
        probed?;
        self.liveness = Some(liveness);
        Ok(self)
    }

    /// Serves every [`read`](Self::read) from `connections` connections that the pool keeps
    /// for reads, so that a read costs one round trip where it otherwise costs two: sqlx tests
    /// each connection as it goes back to its pool (a `Sync` round trip, its "ping"), whatever
    /// the statement did, and a kept connection goes back to the lane instead, with no message
    /// sent.
    ///
    /// A connection is kept only after its read **finished**: its rows were read, or the server
    /// answered with an error about the statement (the one message still due, the server's
    /// "ready", is read by the next statement before it sends anything, as on every sqlx
    /// connection). A read whose future is dropped mid-statement (a timeout, a client gone), or
    /// that failed on the connection itself (I/O, the protocol, a row that did not decode, an
    /// error the server sent about the connection rather than the statement: SQLSTATE classes
    /// 08, 57 but 57014, 58 and XX), hands its connection back to the pool, whose release
    /// check reads what was left unread or closes the connection. So a connection left
    /// mid-statement never serves another read without that check, and nothing of one read's
    /// result can reach the next. The binding of a read is local to its own implicit
    /// transaction either way (see [`BoundRead`]).
    ///
    /// A kept connection that sat idle and fails the way a connection the server ended fails
    /// (an I/O error, or the server ending the session, severity FATAL, with SQLSTATE class 08
    /// or 57P01, 57P02, 57P03, 57P05; SQL that raises those codes does so at severity ERROR and
    /// earns nothing) is given up and the read runs once more on a new connection from the
    /// pool, so a server restart fails no read. The statement is read-only, so the second run
    /// writes nothing (effects outside the transaction, such as a session advisory lock or
    /// `pg_terminate_backend` called by a function, would happen again); note that a read an
    /// administrator ends with `pg_terminate_backend` while it runs on such a connection is
    /// run once more, while one cancelled or timed out (`pg_cancel_backend`,
    /// `statement_timeout`: 57014) is not. A connection just taken from the pool gets no
    /// second try.
    ///
    /// The lane takes connections from the pool as reads need them, up to `connections`, and
    /// keeps them; one is handed back, unused, once the pool's maximum lifetime has passed
    /// since the server started it (read from `pg_stat_activity` when the lane takes it; behind
    /// PgBouncer that is the server connection's age, not the client's). Reads beyond
    /// that wait for one, first come, first served, for at most the pool's acquire timeout in
    /// all. The rest of the pool serves transactions (unless they have a lane of their own, see
    /// [`with_transaction_connections`](Self::with_transaction_connections)) and everything
    /// else. Closing the pool hands every kept connection back. The pool's `after_release` and
    /// `before_acquire` hooks do not run between reads on a kept connection (only when the
    /// lane takes it from the pool or hands it back). Size the pool for both.
    ///
    /// # Errors
    /// [`RlsError::KeptConnections`] unless `connections` is at least 1 and, with the
    /// connections other live lanes keep of the same pool (lanes made from clones of one
    /// `TenantPool`, and its transaction lane), below the pool's maximum size;
    /// [`RlsError::KeptConnectionsRuntime`] outside a Tokio runtime.
    pub fn with_read_connections(mut self, connections: u32) -> Result<Self, RlsError> {
        // A lane this pool had is replaced, not counted against the new one.
        self.lane = None;
        self.lane = Some(Lane::start(self.pool.clone(), connections)?);
        Ok(self)
    }

    /// Runs every transaction ([`begin`](Self::begin), [`begin_read_only`](Self::begin_read_only))
    /// on one of `connections` connections that the pool keeps for transactions, so that a
    /// transaction's end costs no round trip of its own: sqlx tests each connection as it goes
    /// back to its pool (a `Sync` round trip, its "ping"), and a kept connection goes back to
    /// the lane instead, with no message sent.
    ///
    /// A connection goes back to the lane only when [`TenantTx::commit`] or
    /// [`TenantTx::rollback`] succeeded: the server answered the round trip that ends the
    /// transaction and hands the connection back clean (session settings reset, cursors closed,
    /// listens ended, session advisory locks released, no SQL-prepared statement left; see
    /// [`TenantTx::commit`]). A transaction that failed to end, or was dropped unfinished (an
    /// early return, a panic, a cancelled future), closes its connection, exactly as without
    /// the lane: an open or tampered transaction is never handed to anyone.
    ///
    /// A kept connection that sat idle and fails its transaction's first statement the way a
    /// connection the server ended fails (as for [`with_read_connections`](Self::with_read_connections))
    /// is given up, and `BEGIN` with the binding runs once more on a new connection: that
    /// statement writes nothing, so a server restart fails no transaction. A connection just
    /// taken from the pool gets no second try.
    ///
    /// The lane takes connections from the pool as transactions need them, up to
    /// `connections`, and keeps them; the pool's maximum lifetime, closing the pool and the
    /// pool's hooks work as for [`with_read_connections`](Self::with_read_connections).
    /// Transactions beyond that wait for one, first come, first served, for at most the pool's
    /// acquire timeout in all, whatever the rest of the pool holds: `connections` is the most
    /// transactions that run at once. Size it, the read lane and the pool together.
    ///
    /// # Errors
    /// As [`with_read_connections`](Self::with_read_connections): the read lane, the
    /// transaction lane and the lanes of clones of this `TenantPool` together keep fewer
    /// connections than the pool's maximum size.
    pub fn with_transaction_connections(mut self, connections: u32) -> Result<Self, RlsError> {
        self.tx_lane = None;
        self.tx_lane = Some(Lane::start(self.pool.clone(), connections)?);
        Ok(self)
    }

    /// The lane of kept read connections, if any.
    pub(crate) fn lane(&self) -> Option<&Arc<Lane>> {
        self.lane.as_ref()
    }

    /// The liveness check `context` needs.
    pub(crate) fn live_check(
        &self,
        context: &TenantContext,
    ) -> Result<Option<LiveCheck>, RlsError> {
        live_check(self.liveness.as_ref(), context)
    }

    /// Signs the binding of `tenant` for `context`'s actor, when bindings are signed.
    pub(crate) fn sign_tenant(
        &self,
        tenant: TenantId,
        context: &TenantContext,
    ) -> Result<Option<SignedBinding>, RlsError> {
        self.key
            .as_ref()
            .map(|key| key.sign(&tenant.to_string(), &actor_setting(context)))
            .transpose()
    }

    /// The start-up checks; the binding mode of the database.
    async fn checked(pool: &PgPool) -> Result<BindingMode, RlsError> {
        // One explicit transaction: behind a transaction-pooling PgBouncer every statement of
        // it runs on the same server connection.
        let mut tx = pool.begin().await?;
        verify_runtime_role(&mut tx).await?;
        let mode = verify_support_schema_mode(&mut tx).await?;
        tx.commit().await?;
        // The policies, judged by what they do for this role (in a transaction of its own that
        // is always rolled back): none may admit another tenant's row.
        let mut conn = pool.acquire().await?;
        let leaks = crate::CoverageCheck::probe_policies(&mut conn).await?;
        if !leaks.is_empty() {
            return Err(RlsError::PolicyLeaks(
                leaks.iter().map(ToString::to_string).collect(),
            ));
        }
        Ok(mode)
    }

    /// The values for `app.bind(tenant, actor, issued_at, signature)` binding `context`, for
    /// code that binds its own statements (such as a one-statement write); `None` when the
    /// database does not enforce signed bindings (bind with `set_config` then).
    ///
    /// Not for a context whose actor acts through a session: statements bound by their caller
    /// would not ask whether the session is live, so such a context is bound only by
    /// [`begin`](Self::begin), [`begin_read_only`](Self::begin_read_only) and
    /// [`read`](Self::read).
    ///
    /// # Errors
    /// [`RlsError::ContextRefused`] for an expired cross-tenant grant (each use is audited,
    /// as for [`begin`](Self::begin)); [`RlsError::InvalidBindingKey`] if the key cannot sign;
    /// [`RlsError::SessionBindingRefused`] for a context that carries a session (or
    /// [`RlsError::SessionLivenessUnconfigured`] on a pool without a liveness check).
    pub async fn signed_binding(
        &self,
        context: &TenantContext,
    ) -> Result<Option<SignedBinding>, RlsError> {
        if self.live_check(context)?.is_some() {
            return Err(RlsError::SessionBindingRefused);
        }
        context.authorize_use().await?;
        self.sign(context)
    }

    pub(crate) fn sign(&self, context: &TenantContext) -> Result<Option<SignedBinding>, RlsError> {
        self.sign_tenant(context.tenant(), context)
    }

    /// Begins a transaction bound to `context`'s tenant (and actor).
    ///
    /// It runs at `READ COMMITTED` whatever the connection's default isolation level (which
    /// the runtime role can set for itself, `ALTER ROLE CURRENT_USER SET
    /// default_transaction_isolation`): code that takes a lock and then reads must see what the
    /// previous holder committed, and the [`SessionLiveness`] check its `COMMIT` repeats must
    /// see a revocation made while it ran.
    ///
    /// `BEGIN` and the transaction-local binding (`SET LOCAL app.tenant_id`, `app.actor_id`) go
    /// in one round trip; with signed bindings, `BEGIN` and then `app.bind` with the signature
    /// as a parameter (two). The settings are transaction-local, so they end with the
    /// transaction and never reach the next user of the pooled connection.
    ///
    /// # Errors
    /// [`RlsError::Database`] when no connection can be had or the statement fails; no
    /// unscoped connection is ever returned instead.
    pub async fn begin(&self, context: &TenantContext) -> Result<TenantTx, RlsError> {
        self.open(context, Mode::ReadWrite).await
    }

    /// Begins a **read-only** transaction bound to `context`'s tenant (and actor): for reads of
    /// several statements that must see one snapshot, or must not write.
    ///
    /// `BEGIN READ ONLY` and the binding, as for [`begin`](Self::begin). Its [`commit`](TenantTx::commit)
    /// ends it with `ROLLBACK`: there is nothing to commit, so no binding needs restating, and
    /// even a write that SQL injected ahead of every query (`SET TRANSACTION READ WRITE`) is
    /// discarded rather than checked — unless the injected SQL also ends the transaction itself
    /// (`COMMIT`); with signed bindings, what it then runs is bound to no tenant.
    ///
    /// # Errors
    /// As [`begin`](Self::begin).
    pub async fn begin_read_only(&self, context: &TenantContext) -> Result<TenantTx, RlsError> {
        self.open(context, Mode::ReadOnly).await
    }

    async fn open(&self, context: &TenantContext, mode: Mode) -> Result<TenantTx, RlsError> {
        // A cross-tenant grant is refused once expired, and each use is audited.
        context.authorize_use().await?;
        let tenant = context.tenant();
        let actor = actor_setting(context);
        let live = self.live_check(context)?;
        let conn = match &self.tx_lane {
            Some(lane) => TxConn::Kept(lane.get().await?),
            None => TxConn::Pool(self.pool.acquire().await?),
        };
        // Wrap the connection before the first byte is sent: if this future is cancelled while
        // BEGIN is in flight, dropping the unfinished `TenantTx` closes the connection rather
        // than returning a bound, mid-transaction connection to the pool.
        let mut tx = TenantTx {
            conn,
            tenant,
            actor,
            mode,
            // A writing transaction asks again at COMMIT. A cross-tenant one first binds the
            // actor's own tenant again (where the session's row is), asks, and binds back the
            // tenant it acts in, before the commit restates that binding.
            live_at_commit: match &live {
                Some(l) if l.cross => Some(AtCommit::Cross {
                    check: l.clone(),
                    key: self.key.clone(),
                }),
                Some(l) => Some(AtCommit::Same(
                    l.liveness
                        .require(&format!("'{tenant}'"), &format!("'{}'", l.session)),
                )),
                None => None,
            },
            commit_checks: Vec::new(),
            finished: false,
        };
        // The values are validated UUIDs (hex digits and hyphens only), so inlining them as
        // literals is injection-free; the simple-query protocol is what lets BEGIN and the
        // binding share one round trip. `SET LOCAL` is a utility command: no planning, no result
        // row, measurably cheaper than `SELECT set_config(.., true)` with the same effect.
        // A writing transaction runs at READ COMMITTED whatever the connection's default (one
        // the runtime role can give itself): at REPEATABLE READ or SERIALIZABLE a statement
        // that waited for a lock would still read the snapshot taken before it waited, and the
        // liveness check repeated at COMMIT the snapshot of the binding's own statement.
        let begin = match mode {
            Mode::ReadWrite => "BEGIN ISOLATION LEVEL READ COMMITTED",
            Mode::ReadOnly => "BEGIN READ ONLY",
        };
        let signed = self.sign(context)?;
        // The first statement: with unsigned bindings, BEGIN and the binding; with signed ones,
        // BEGIN alone (the signature travels as a parameter: query text, which other sessions
        // of the same role can read in pg_stat_activity, never holds it).
        let first = match (&signed, &live) {
            (Some(_), _) => begin.to_owned(),
            (None, None) => format!("{begin}; {}", set_local_binding(tenant, &tx.actor)),
            (None, Some(l)) => format!("{begin}; {}", unsigned_live_bind(l, &tx.actor, tenant)),
        };
        let mut started = tx.connection().execute(sqlx::raw_sql(&first)).await;
        if let TxConn::Kept(kept) = &mut tx.conn
            && kept.stale(&started)
        {
            // A kept connection the server ended while it sat idle: the statement wrote
            // nothing, so it runs once more on a new connection.
            kept.reconnect().await?;
            started = tx.connection().execute(sqlx::raw_sql(&first)).await;
        }
        started.map_err(classify)?;
        if let Some(signed) = signed {
            match &live {
                None => {
                    bind_statement(&signed)
                        .execute(&mut *tx.conn)
                        .await
                        .map_err(classify)?;
                }
                Some(l) => {
                    let home = self
                        .sign_tenant(l.home, context)?
                        .ok_or(RlsError::BindingKeyRequired)?;
                    let sql = live_bind_sql(l);
                    live_bind_statement(&sql, l, &home, &signed)
                        .execute(&mut *tx.conn)
                        .await
                        .map_err(classify)?;
                }
            }
        }
        Ok(tx)
    }

    /// A single read-only statement bound to `context`'s tenant (and actor) in one round trip:
    /// see [`BoundRead`]. `sql` is a `&'static str` so request input can reach it only through
    /// [`BoundRead::bind`].
    ///
    /// ```no_run
    /// # async fn run(db: rls_guard::TenantPool, ctx: tenant_scope::TenantContext) -> Result<(), rls_guard::RlsError> {
    /// let names: Vec<(String,)> = db
    ///     .read(&ctx, "SELECT name FROM projects WHERE name LIKE $1 ORDER BY name")
    ///     .bind("a%")
    ///     .fetch_all()
    ///     .await?;                                     // only this tenant's rows
    /// # Ok(()) }
    /// ```
    pub fn read(&self, context: &TenantContext, sql: &'static str) -> BoundRead<'_> {
        BoundRead::new(self, context, sql)
    }

    /// The pool inside (for health checks and shutdown).
    #[must_use]
    pub const fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// `SET LOCAL` of the unsigned binding to `tenant` and `actor`. The values are validated UUIDs
/// (hex digits and hyphens) or empty, so inlining them as literals is injection-free.
fn set_local_binding(tenant: TenantId, actor: &str) -> String {
    format!("SET LOCAL app.tenant_id = '{tenant}'; SET LOCAL app.actor_id = '{actor}'")
}

/// Unsigned, with a session to check: bind the actor's own tenant, ask (under that binding,
/// where the session's row is), then, for a cross-tenant context, bind `target`, the tenant
/// acted in. What `begin` sends after `BEGIN`, and a cross-tenant `commit` before `COMMIT`.
fn unsigned_live_bind(live: &LiveCheck, actor: &str, target: TenantId) -> String {
    let ask = live
        .liveness
        .require(&format!("'{}'", live.home), &format!("'{}'", live.session));
    let mut sql = format!("{}; SELECT {ask}", set_local_binding(live.home, actor));
    if live.cross {
        sql.push_str("; ");
        sql.push_str(&set_local_binding(target, actor));
    }
    sql
}

/// `SELECT app.bind($1, $2, $3, $4)` for `signed`.
fn bind_statement(
    signed: &SignedBinding,
) -> sqlx::query::Query<'_, Postgres, sqlx::postgres::PgArguments> {
    sqlx::query("SELECT app.bind($1, $2, $3, $4)")
        .bind(&signed.tenant)
        .bind(&signed.actor)
        .bind(&signed.issued_at)
        .bind(&signed.signature)
}

/// The signed binding of `home` (the actor's own tenant), then the liveness check under it, then
/// (for a cross-tenant context) the signed binding of `target`, in one statement: each step
/// reads the row the one before it made, so they run in that order.
fn live_bind_sql(live: &LiveCheck) -> String {
    let ask = live.liveness.require("b.tenant", "$5");
    if live.cross {
        format!(
            "SELECT app.bind($6, $7, $8, $9) FROM (SELECT {ask} AS live FROM \
             (SELECT app.bind($1, $2, $3, $4) AS tenant OFFSET 0) AS b OFFSET 0) AS l \
             WHERE l.live"
        )
    } else {
        format!("SELECT {ask} FROM (SELECT app.bind($1, $2, $3, $4) AS tenant OFFSET 0) AS b")
    }
}

/// [`live_bind_sql`] with its values: the home binding, the session, the target binding.
fn live_bind_statement<'a>(
    sql: &'a str,
    live: &LiveCheck,
    home: &'a SignedBinding,
    target: &'a SignedBinding,
) -> sqlx::query::Query<'a, Postgres, sqlx::postgres::PgArguments> {
    let query = sqlx::query(sql)
        .bind(&home.tenant)
        .bind(&home.actor)
        .bind(&home.issued_at)
        .bind(&home.signature)
        .bind(live.session.to_string());
    if live.cross {
        query
            .bind(&target.tenant)
            .bind(&target.actor)
            .bind(&target.issued_at)
            .bind(&target.signature)
    } else {
        query
    }
}

/// The value `app.actor_id` is bound to for `context`: the actor's id, or empty for work
/// without an actor (which then opens nothing an actor-based policy guards).
pub(crate) fn actor_setting(context: &TenantContext) -> String {
    context
        .actor()
        .map(|a| a.id().to_string())
        .unwrap_or_default()
}

/// A transaction bound to one tenant. Use it as a `&mut PgConnection` for queries, then
/// [`commit`](Self::commit) or [`rollback`](Self::rollback).
///
/// Dropped without either (an early return, a panic, a cancelled future), the connection is
/// closed rather than returned to the pool, so a half-finished transaction can never be
/// inherited.
#[must_use = "a TenantTx must be committed or rolled back"]
pub struct TenantTx {
    conn: TxConn,
    tenant: TenantId,
    actor: String,
    mode: Mode,
    /// The liveness check the commit repeats, if any.
    live_at_commit: Option<AtCommit>,
    /// Rows that must be visible at commit, each with the receipt it reports to.
    commit_checks: Vec<(CommitCheck, CommitReceipt)>,
    finished: bool,
}

/// A transaction's connection: from the pool, or kept by the pool's transaction lane.
enum TxConn {
    Pool(PoolConnection<Postgres>),
    Kept(LaneConnection),
}

impl Deref for TxConn {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        match self {
            Self::Pool(conn) => conn,
            Self::Kept(kept) => kept.connection_ref(),
        }
    }
}

impl DerefMut for TxConn {
    fn deref_mut(&mut self) -> &mut PgConnection {
        match self {
            Self::Pool(conn) => conn,
            Self::Kept(kept) => kept.connection(),
        }
    }
}

/// The liveness check a writing [`TenantTx`] repeats at its commit.
enum AtCommit {
    /// Bound to the session's own tenant: the check, asked in the commit's statement.
    Same(String),
    /// Bound to another tenant (a cross-tenant grant): the commit first binds the session's own
    /// tenant, asks, and binds the tenant acted in again (with signed bindings, freshly signed
    /// ones, in a statement of its own).
    Cross {
        check: LiveCheck,
        key: Option<Arc<BindingKey>>,
    },
}

/// A condition a [`TenantTx`] states in its commit: the commit fails, and the transaction
/// rolls back, unless the row whose `key` column equals `id` is visible in `table` right
/// before `COMMIT`. A library that wrote a row in the caller's transaction registers one
/// ([`TenantTx::check_at_commit`]) to know, without asking the database again, that its row
/// committed: not rolled back to a savepoint, not in a transaction that SQL inside this one
/// ended and replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitCheck {
    table: &'static str,
    key: &'static str,
    id: i64,
}

impl CommitCheck {
    /// The row of `table` (`schema.table`) whose `key` column is `id`.
    ///
    /// # Errors
    /// [`RlsError::InvalidIdentifier`] unless `table` and `key` are plain lowercase identifiers
    /// (the table optionally schema-qualified).
    pub fn row_exists(table: &'static str, key: &'static str, id: i64) -> Result<Self, RlsError> {
        let plain = |name: &str| crate::schema::is_plain_identifier(name);
        let table_ok = match table.split_once('.') {
            Some((schema, name)) => plain(schema) && plain(name),
            None => plain(table),
        };
        if !table_ok {
            return Err(RlsError::InvalidIdentifier(table.to_owned()));
        }
        if !plain(key) {
            return Err(RlsError::InvalidIdentifier(key.to_owned()));
        }
        Ok(Self { table, key, id })
    }

    /// The expression the commit's statement evaluates: a division by zero unless the row
    /// is there.
    fn sql(&self) -> String {
        format!(
            "1 / (EXISTS (SELECT 1 FROM {} WHERE {} OPERATOR(pg_catalog.=) {}::pg_catalog.int8))::int",
            self.table, self.key, self.id
        )
    }
}

/// Whether the commit that stated a [`CommitCheck`] succeeded. Cheap to clone; `false` until
/// that commit has been answered by the server, and forever if it failed or never ran.
#[derive(Debug, Clone, Default)]
pub struct CommitReceipt(Arc<std::sync::atomic::AtomicBool>);

impl CommitReceipt {
    /// Whether the transaction committed with its check satisfied.
    #[must_use]
    pub fn is_committed(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// How a [`TenantTx`] was begun.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    ReadWrite,
    ReadOnly,
}

impl std::fmt::Debug for TenantTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantTx")
            .field("tenant", &self.tenant)
            .field("read_only", &(self.mode == Mode::ReadOnly))
            .finish_non_exhaustive()
    }
}

/// Hands the connection back clean, after the transaction ends and in the same round trip:
/// whatever SQL inside the transaction left at session level must not reach the next user of
/// the pooled connection. `RESET ALL` clears every session-level setting (a plain
/// `SET app.tenant_id`, a session-level `app.commit_binding`, a changed `search_path`) back to
/// the values the connection was opened with; `RESET ROLE` undoes a `SET ROLE`; `CLOSE ALL`
/// drops cursors held past the commit; `UNLISTEN *` ends listen registrations; `DISCARD
/// SEQUENCES` forgets the numbers drawn (`lastval`, `currval` would show another tenant's
/// transaction's). (Session-level
/// advisory locks are released before the end of the transaction, see [`RELEASE_LOCKS`];
/// temporary objects are refused instead: the runtime role must not hold `TEMPORARY`, which the
/// start-up check verifies.)
pub(crate) const HAND_BACK: &str =
    "RESET ALL; RESET ROLE; CLOSE ALL; UNLISTEN *; DISCARD SEQUENCES";

/// Releases the session-level advisory locks SQL in the transaction took (transaction-level
/// ones end with it), and fails (a division by zero) when SQL in the transaction left a
/// prepared statement of its own (SQL `PREPARE`; sqlx prepares through the protocol): it could
/// run later in another user's transaction under a name the application uses, so the
/// connection is closed instead of reused (and a commit is rolled back).
const RELEASE_LOCKS: &str = "pg_catalog.pg_advisory_unlock_all(), \
     1 / (NOT EXISTS (SELECT 1 FROM pg_catalog.pg_prepared_statements WHERE from_sql))::int";

impl TenantTx {
    fn connection(&mut self) -> &mut PgConnection {
        &mut self.conn
    }

    /// The tenant this transaction is bound to.
    #[must_use]
    pub const fn tenant(&self) -> TenantId {
        self.tenant
    }

    /// Makes the commit state `check` (see [`CommitCheck`]); the receipt reports whether that
    /// commit succeeded. A read-only transaction never commits: its receipts stay `false`.
    pub fn check_at_commit(&mut self, check: CommitCheck) -> CommitReceipt {
        let receipt = CommitReceipt::default();
        self.commit_checks.push((check, receipt.clone()));
        receipt
    }

    /// Checks what the transaction wrote and commits, then hands the connection back clean, in
    /// one round trip.
    ///
    /// `app.verify_binding_writes` compares the record of every row the transaction wrote (made
    /// by the owner's statement triggers, which SQL in the transaction can neither erase nor
    /// forge) with this tenant, and at `COMMIT` PostgreSQL runs the deferred per-row binding
    /// check (see [`schema::SUPPORT_SQL`](crate::schema::SUPPORT_SQL)): each row must belong to
    /// this tenant, and the binding must be unchanged.
    ///
    /// A transaction from [`TenantPool::begin_read_only`] ends with `ROLLBACK` instead: it has
    /// nothing to commit, and whatever it might have written is discarded.
    ///
    /// # Errors
    /// [`RlsError::BindingChanged`] when SQL inside the transaction rebound it and wrote (the
    /// transaction is rolled back and the connection discarded); [`RlsError::Database`] when
    /// the commit fails.
    pub async fn commit(mut self) -> Result<(), RlsError> {
        if self.mode == Mode::ReadOnly {
            return self
                .finish(&format!("ROLLBACK; SELECT {RELEASE_LOCKS}; {HAND_BACK}"))
                .await;
        }
        // The record of writes is compared only when the transaction wrote (has a transaction
        // id): a reading transaction pays for one expression, not a function call.
        let (mut checks, rebind) = match &self.live_at_commit {
            None => (String::new(), String::new()),
            Some(AtCommit::Same(ask)) => (format!(", {ask}"), String::new()),
            Some(AtCommit::Cross { check, key: None }) => (
                String::new(),
                format!("{}; ", unsigned_live_bind(check, &self.actor, self.tenant)),
            ),
            Some(AtCommit::Cross {
                check,
                key: Some(key),
            }) => {
                let home = key.sign(&check.home.to_string(), &self.actor)?;
                let target = key.sign(&self.tenant.to_string(), &self.actor)?;
                let sql = live_bind_sql(check);
                if let Err(error) = live_bind_statement(&sql, check, &home, &target)
                    .execute(&mut *self.conn)
                    .await
                {
                    // The transaction is aborted: roll it back (or drop the connection).
                    let error = classify(error);
                    let _ = self
                        .finish(&format!("ROLLBACK; SELECT {RELEASE_LOCKS}; {HAND_BACK}"))
                        .await;
                    return Err(error);
                }
                (String::new(), String::new())
            }
        };
        for (check, _) in &self.commit_checks {
            checks.push_str(", ");
            checks.push_str(&check.sql());
        }
        let sql = format!(
            "{rebind}SET LOCAL app.commit_binding = '{tenant}:{}'; \
             SELECT CASE WHEN pg_catalog.pg_current_xact_id_if_assigned() IS NOT NULL \
                         THEN app.verify_binding_writes('{tenant}') END, {RELEASE_LOCKS}{checks}; \
             COMMIT; {HAND_BACK}",
            self.actor,
            tenant = self.tenant,
        );
        self.finish(&sql).await?;
        for (_, receipt) in &self.commit_checks {
            receipt.0.store(true, std::sync::atomic::Ordering::Release);
        }
        Ok(())
    }

    /// Rolls back.
    ///
    /// # Errors
    /// [`RlsError::Database`] when the rollback fails (the connection is discarded).
    pub async fn rollback(mut self) -> Result<(), RlsError> {
        self.finish(&format!("ROLLBACK; SELECT {RELEASE_LOCKS}; {HAND_BACK}"))
            .await
    }

    async fn finish(&mut self, sql: &str) -> Result<(), RlsError> {
        // `finished` is set only once the server has answered: a commit or rollback cancelled
        // mid-flight leaves it false, and `Drop` closes the connection.
        match self.connection().execute(sqlx::raw_sql(sql)).await {
            Ok(_) => {
                self.finished = true;
                // Ended and handed back clean: a kept connection may serve the next one.
                if let TxConn::Kept(kept) = &mut self.conn {
                    kept.keep();
                }
                Ok(())
            }
            Err(error) => {
                // The connection's state is unknown (possibly tampered with): never reuse it.
                // (`finished` stays false, so `Drop` closes it.)
                let error = classify(error);
                if matches!(error, RlsError::BindingChanged) {
                    tracing::warn!(tenant = %self.tenant, "tenant binding changed inside a transaction; rolled back");
                }
                Err(error)
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
            match &mut self.conn {
                TxConn::Pool(conn) => conn.close_on_drop(),
                TxConn::Kept(kept) => kept.discard(),
            }
        }
    }
}
