//! Connections kept for bound reads (see [`TenantPool::with_read_connections`]).
//!
//! [`TenantPool::with_read_connections`]: crate::TenantPool::with_read_connections

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use sqlx::Postgres;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnection, PgPool};
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::RlsError;

/// Up to `size` connections taken from the pool once and kept for bound reads. A read that
/// finished (rows or an error the server answered) puts its connection back here, with no
/// round trip; any other end (the read's future dropped mid-statement, an I/O error) gives the
/// connection back to the pool, whose release check (sqlx's ping) drains or closes it.
pub(crate) struct ReadLane {
    pool: PgPool,
    /// One permit per kept connection; waiters are served first come, first served.
    permits: Semaphore,
    /// The kept connections not in use, most recently used last.
    idle: Mutex<Vec<Kept>>,
}

impl std::fmt::Debug for ReadLane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadLane")
            .field("available", &self.permits.available_permits())
            .field("idle", &self.idle().len())
            .finish_non_exhaustive()
    }
}

/// A kept connection and when it was taken from the pool.
struct Kept {
    conn: PoolConnection<Postgres>,
    taken: Instant,
}

impl ReadLane {
    /// A lane of `size` connections of `pool`. When the pool is closed, every kept connection
    /// is handed back so that [`PgPool::close`] can finish.
    pub(crate) fn start(pool: PgPool, size: u32) -> Result<Arc<Self>, RlsError> {
        let max = pool.options().get_max_connections();
        if size == 0 || size >= max {
            return Err(RlsError::ReadConnections {
                requested: size,
                max,
            });
        }
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| RlsError::ReadConnectionsRuntime)?;
        let lane = Arc::new(Self {
            permits: Semaphore::new(size as usize),
            idle: Mutex::new(Vec::with_capacity(size as usize)),
            pool,
        });
        let closed = lane.pool.close_event();
        let watched = Arc::downgrade(&lane);
        runtime.spawn(async move {
            closed.await;
            if let Some(lane) = watched.upgrade() {
                lane.permits.close();
                lane.idle().clear();
            }
        });
        Ok(lane)
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Kept>> {
        // A push or pop cannot leave the list half-changed, so a poisoned lock is still sound.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A kept connection, or a new one from the pool when none is idle; waits (at most the
    /// pool's acquire timeout) while all `size` are in use.
    pub(crate) async fn get(&self) -> Result<LaneConnection<'_>, RlsError> {
        let timeout = self.pool.options().get_acquire_timeout();
        let permit = tokio::time::timeout(timeout, self.permits.acquire())
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)?
            .map_err(|_| sqlx::Error::PoolClosed)?;
        if self.pool.is_closed() {
            return Err(sqlx::Error::PoolClosed.into());
        }
        let idle = self.idle().pop();
        let from_idle = idle.is_some();
        let kept = match idle {
            Some(kept) => kept,
            None => self.take().await?,
        };
        Ok(LaneConnection {
            lane: self,
            kept: Some(kept),
            from_idle,
            reusable: false,
            _permit: permit,
        })
    }

    /// A new connection from the pool.
    async fn take(&self) -> Result<Kept, RlsError> {
        Ok(Kept {
            conn: self.pool.acquire().await?,
            taken: Instant::now(),
        })
    }

    /// Whether `kept` may stay: the pool is open and the connection is younger than the pool's
    /// maximum lifetime (the pool closes older ones as they come back).
    fn keeps(&self, kept: &Kept) -> bool {
        !self.pool.is_closed()
            && self
                .pool
                .options()
                .get_max_lifetime()
                .is_none_or(|max| kept.taken.elapsed() < max)
    }
}

/// A lane connection in use. Dropped, it goes back to the lane only if
/// [`finished`](Self::finished) said its statement ended cleanly; otherwise to the pool.
pub(crate) struct LaneConnection<'l> {
    lane: &'l ReadLane,
    kept: Option<Kept>,
    /// Whether the connection sat idle in the lane before this use (it may have died there).
    from_idle: bool,
    reusable: bool,
    // Released after `drop` has put the connection back, so the next holder finds it.
    _permit: SemaphorePermit<'l>,
}

impl LaneConnection<'_> {
    pub(crate) fn connection(&mut self) -> &mut PgConnection {
        match self.kept.as_mut() {
            Some(kept) => &mut kept.conn,
            // Empty only in `drop`, or after a failed reconnect, which ends the read.
            None => unreachable!("a lane connection used after it was given up"),
        }
    }

    /// Whether the read should run again on a new connection: this kept connection sat idle in
    /// the lane and turned out dead on its first use (the server restarted or ended it
    /// meanwhile: an I/O error, or the server's own report, see [`connection_sound`]). The
    /// statement is read-only, so running it again changes nothing.
    pub(crate) fn stale<T>(&self, result: &Result<T, sqlx::Error>) -> bool {
        self.from_idle && !connection_sound(result)
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
        self.kept = Some(self.lane.take().await?);
        Ok(())
    }
}

/// Whether a statement's outcome leaves its connection fit for the next read without the pool's
/// release check: rows, or an error the server sent about the statement (after which the
/// connection awaits only the server's ready message, which the next statement reads first).
/// Not: an I/O or protocol error, a row that did not decode (rows may be left unread), or an
/// error about the connection or the server rather than the statement (SQLSTATE classes 08,
/// 57, 58 and XX: a terminated backend reports itself this way before closing the socket).
fn connection_sound<T>(result: &Result<T, sqlx::Error>) -> bool {
    match result {
        Ok(_) => true,
        Err(sqlx::Error::Database(error)) => error
            .code()
            .is_some_and(|code| !matches!(code.get(..2), Some("08" | "57" | "58" | "XX") | None)),
        Err(_) => false,
    }
}

impl Drop for LaneConnection<'_> {
    fn drop(&mut self) {
        // Otherwise the connection is dropped here: the pool tests it on release (sqlx's ping,
        // which reads whatever an interrupted statement left unread) and closes it if it is
        // broken.
        if let Some(kept) = self.kept.take()
            && self.reusable
            && self.lane.keeps(&kept)
        {
            self.lane.idle().push(kept);
        }
    }
}
