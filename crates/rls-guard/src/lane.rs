//! Connections kept for bound reads and for transactions (see
//! [`TenantPool::with_read_connections`] and [`TenantPool::with_transaction_connections`]).
//!
//! [`TenantPool::with_read_connections`]: crate::TenantPool::with_read_connections
//! [`TenantPool::with_transaction_connections`]: crate::TenantPool::with_transaction_connections

use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use sqlx::Postgres;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnection, PgDatabaseError, PgPool, PgSeverity};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::RlsError;

/// Up to `size` connections taken from the pool and kept for bound reads or for transactions.
/// A use that finished cleanly (a read's rows, or an error the server sent about the
/// statement; a transaction's commit or rollback with the connection handed back clean) puts
/// its connection back here, with no round trip. Any other end of a read (its future dropped
/// mid-statement, an I/O error) gives the connection back to the pool, whose release check
/// (sqlx's ping) drains or closes it; any other end of a transaction closes it.
pub(crate) struct Lane {
    pool: PgPool,
    size: u32,
    /// One permit per kept connection; waiters are served first come, first served.
    permits: Arc<Semaphore>,
    /// The kept connections not in use, most recently used last.
    idle: Mutex<Vec<Kept>>,
    /// Dropped with the lane: ends the task that watches for the pool closing.
    _watching: tokio::sync::oneshot::Sender<()>,
    /// The runtime the lane was made in: a kept connection handed back to the pool spawns its
    /// release there, so the lane can be dropped outside any runtime.
    runtime: tokio::runtime::Handle,
}

impl Drop for Lane {
    fn drop(&mut self) {
        let _entered = self.runtime.enter();
        self.idle().clear();
    }
}

/// Every live lane, by the pool it keeps connections of (the address of the pool's shared
/// options, stable while the pool lives, and a lane keeps its pool alive): lanes made from
/// clones of one `TenantPool` share that pool's connections, so their sizes are counted
/// together.
static LANES: Mutex<Vec<(usize, Weak<Lane>)>> = Mutex::new(Vec::new());

fn pool_key(pool: &PgPool) -> usize {
    std::ptr::from_ref(pool.options()) as usize
}

impl std::fmt::Debug for Lane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lane")
            .field("size", &self.size)
            .field("available", &self.permits.available_permits())
            .field("idle", &self.idle().len())
            .finish_non_exhaustive()
    }
}

/// A kept connection and the latest moment it may still be used (the pool's maximum lifetime,
/// counted from when the server started its backend).
struct Kept {
    conn: PoolConnection<Postgres>,
    expires: Option<Instant>,
}

impl Lane {
    /// A lane of `size` connections of `pool`. When the pool is closed, every kept connection
    /// is handed back so that [`PgPool::close`] can finish.
    pub(crate) fn start(pool: PgPool, size: u32) -> Result<Arc<Self>, RlsError> {
        let max = pool.options().get_max_connections();
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| RlsError::KeptConnectionsRuntime)?;
        let key = pool_key(&pool);
        let mut lanes = LANES.lock().unwrap_or_else(PoisonError::into_inner);
        lanes.retain(|(_, lane)| lane.strong_count() > 0);
        let others: u32 = lanes
            .iter()
            .filter(|(k, _)| *k == key)
            .filter_map(|(_, lane)| lane.upgrade())
            .map(|lane| lane.size)
            .sum();
        if size == 0 || others.saturating_add(size) >= max {
            return Err(RlsError::KeptConnections {
                requested: size,
                kept: others,
                max,
            });
        }
        let (watching, dropped) = tokio::sync::oneshot::channel();
        let lane = Arc::new(Self {
            size,
            permits: Arc::new(Semaphore::new(size as usize)),
            idle: Mutex::new(Vec::with_capacity(size as usize)),
            pool,
            _watching: watching,
            runtime: runtime.clone(),
        });
        lanes.push((key, Arc::downgrade(&lane)));
        drop(lanes);
        let closed = lane.pool.close_event();
        let watched = Arc::downgrade(&lane);
        runtime.spawn(async move {
            tokio::select! {
                () = closed => {
                    if let Some(lane) = watched.upgrade() {
                        lane.permits.close();
                        lane.idle().clear();
                    }
                }
                // The lane is gone (its connections went back to the pool with it).
                _ = dropped => {}
            }
        });
        Ok(lane)
    }

    fn idle(&self) -> MutexGuard<'_, Vec<Kept>> {
        // A push or pop cannot leave the list half-changed, so a poisoned lock is still sound.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A kept connection, or a new one from the pool when none is idle; waits (at most the
    /// pool's acquire timeout, in all) while all `size` are in use.
    pub(crate) async fn get(self: &Arc<Self>) -> Result<LaneConnection, RlsError> {
        let deadline = tokio::time::Instant::now() + self.pool.options().get_acquire_timeout();
        let permit = tokio::time::timeout_at(deadline, Arc::clone(&self.permits).acquire_owned())
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)?
            .map_err(|_| sqlx::Error::PoolClosed)?;
        if self.pool.is_closed() {
            return Err(sqlx::Error::PoolClosed.into());
        }
        // A kept connection past its lifetime goes back to the pool (dropped here) unused.
        let idle = {
            let mut idle = self.idle();
            let now = Instant::now();
            std::iter::from_fn(|| idle.pop()).find(|kept| kept.expires.is_none_or(|at| now < at))
        };
        let from_idle = idle.is_some();
        let kept = match idle {
            Some(kept) => kept,
            None => self.take(deadline).await?,
        };
        Ok(LaneConnection {
            lane: Arc::clone(self),
            kept: Some(kept),
            from_idle,
            reusable: false,
            _permit: permit,
        })
    }

    /// A new connection from the pool, and when it expires: the pool's maximum lifetime counts
    /// from when the server started the connection's backend (it may have been open long
    /// before the lane took it), which one statement asks. A connection whose age cannot be
    /// read is not kept beyond this use.
    async fn take(&self, deadline: tokio::time::Instant) -> Result<Kept, RlsError> {
        let mut conn = tokio::time::timeout_at(deadline, self.pool.acquire())
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)??;
        let expires = match self.pool.options().get_max_lifetime() {
            None => None,
            Some(max) => {
                let age: Result<(f64,), _> = sqlx::query_as(
                    "SELECT pg_catalog.date_part('epoch', pg_catalog.clock_timestamp() \
                     OPERATOR(pg_catalog.-) a.backend_start)::pg_catalog.float8 \
                     FROM pg_catalog.pg_stat_activity a \
                     WHERE a.pid OPERATOR(pg_catalog.=) pg_catalog.pg_backend_pid()",
                )
                .fetch_one(&mut *conn)
                .await;
                let age = age
                    .ok()
                    .and_then(|(age,)| Duration::try_from_secs_f64(age).ok())
                    .unwrap_or(max);
                Some(Instant::now() + max.saturating_sub(age))
            }
        };
        Ok(Kept { conn, expires })
    }
}

/// A lane connection in use. Dropped, it goes back to the lane only if
/// [`finished`](Self::finished) found its statement ended cleanly (or [`keep`](Self::keep)
/// was called); otherwise to the pool, or closed after [`discard`](Self::discard).
pub(crate) struct LaneConnection {
    lane: Arc<Lane>,
    kept: Option<Kept>,
    /// Whether the connection sat idle in the lane before this use (it may have died there).
    from_idle: bool,
    reusable: bool,
    // Released after `drop` has put the connection back, so the next holder finds it.
    _permit: OwnedSemaphorePermit,
}

impl LaneConnection {
    pub(crate) fn connection(&mut self) -> &mut PgConnection {
        match self.kept.as_mut() {
            Some(kept) => &mut kept.conn,
            // Empty only in `drop`, after a failed reconnect, which ends the read or
            // transaction, or after `discard`, which only the transaction's `Drop` calls.
            None => unreachable!("a lane connection used after it was given up"),
        }
    }

    pub(crate) fn connection_ref(&self) -> &PgConnection {
        match self.kept.as_ref() {
            Some(kept) => &kept.conn,
            None => unreachable!("a lane connection used after it was given up"),
        }
    }

    /// Marks the connection fit to go back to the lane: a transaction ended with the
    /// connection handed back clean, in a round trip the server answered.
    pub(crate) fn keep(&mut self) {
        self.reusable = true;
    }

    /// Closes the connection instead of handing it back anywhere (a transaction left open:
    /// neither the lane nor the pool may see it again).
    pub(crate) fn discard(&mut self) {
        self.reusable = false;
        if let Some(mut kept) = self.kept.take() {
            kept.conn.close_on_drop();
        }
    }

    /// Whether the statement should run once more on a new connection: this kept connection
    /// sat idle in the lane and failed the way a connection the server ended meanwhile fails
    /// (see [`died`]). Callers retry only statements that write nothing (a bound read; a
    /// transaction's `BEGIN` and binding). A statement cancelled or timed out (SQLSTATE 57014)
    /// is never run again.
    pub(crate) fn stale<T>(&self, result: &Result<T, sqlx::Error>) -> bool {
        self.from_idle && died(result)
    }

    /// Records how the statement ended: the connection stays in the lane only if
    /// [`connection_sound`].
    pub(crate) fn finished<T>(&mut self, result: &Result<T, sqlx::Error>) {
        self.reusable = connection_sound(result);
    }

    /// Gives the connection up (to the pool's release check) and takes a new one from the pool.
    pub(crate) async fn reconnect(&mut self) -> Result<(), RlsError> {
        self.kept = None;
        self.from_idle = false;
        let deadline = tokio::time::Instant::now() + self.lane.pool.options().get_acquire_timeout();
        self.kept = Some(self.lane.take(deadline).await?);
        Ok(())
    }
}

/// The error the server sent, if that is how the statement failed (a `PgDatabaseError`: an
/// error that only claims to be a database error, such as one a `FromRow` made up, is not).
fn server_error<T>(result: &Result<T, sqlx::Error>) -> Option<&PgDatabaseError> {
    match result {
        Err(sqlx::Error::Database(error)) => error.try_downcast_ref::<PgDatabaseError>(),
        _ => None,
    }
}

/// Whether the server ended the session with the error (severity FATAL or PANIC). SQL can raise
/// any SQLSTATE, `57P01` included, but only at severity ERROR, on a session that goes on.
fn ends_session(error: &PgDatabaseError) -> bool {
    matches!(error.severity(), PgSeverity::Fatal | PgSeverity::Panic)
}

/// Whether a statement's outcome leaves its connection fit for the next read without the pool's
/// release check: rows, or an error the server sent about the statement (after which the
/// connection awaits only the server's ready message, which the next statement reads first).
/// Not: an I/O or protocol error, a row that did not decode (rows may be left unread), any
/// other error raised on this side, or an error about the connection or the server rather than
/// the statement (SQLSTATE classes 08, 57, 58 and XX: a terminated backend reports itself this
/// way before closing the socket), except 57014: a statement cancelled or timed out leaves its
/// connection ready for the next.
fn connection_sound<T>(result: &Result<T, sqlx::Error>) -> bool {
    result.is_ok()
        || server_error(result).is_some_and(|error| {
            let code = error.code();
            !ends_session(error)
                && (code == "57014"
                    || !matches!(code.get(..2), Some("08" | "57" | "58" | "XX") | None))
        })
}

/// Whether a statement failed the way a connection fails once the server has ended it: an I/O
/// error, or the server's report, at severity FATAL or PANIC, that it ended the session with a
/// connection exception (class 08) or for an operator (57P01 terminated, 57P02 crash shutdown,
/// 57P03 cannot connect now, 57P05 idle session timeout). The same codes raised by SQL (at
/// severity ERROR) are the statement's own failure.
fn died<T>(result: &Result<T, sqlx::Error>) -> bool {
    matches!(result, Err(sqlx::Error::Io(_)))
        || server_error(result).is_some_and(|error| {
            let code = error.code();
            ends_session(error)
                && (code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "57P05"))
        })
}

impl Drop for LaneConnection {
    fn drop(&mut self) {
        // Otherwise the connection is dropped here: the pool tests it on release (sqlx's ping,
        // which reads whatever an interrupted statement left unread) and closes it if it is
        // broken. `is_closed` is read under the lock the close watcher clears the lane under,
        // so a connection is never put back after the watcher has run.
        if let Some(kept) = self.kept.take()
            && self.reusable
            && kept.expires.is_none_or(|at| Instant::now() < at)
        {
            let mut idle = self.lane.idle();
            if !self.lane.pool.is_closed() {
                idle.push(kept);
            }
        }
    }
}
