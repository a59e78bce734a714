//! The sequencer: moves queued events into their tenants' hash chains, off the request path.
//!
//! [`AuditLog::append`](crate::AuditLog::append) and [`AuditLog::record`](crate::AuditLog::record)
//! queue an event (`audit.pending`) atomically with the caller's action, without any tenant-wide
//! lock. A [`Sequencer`], connected as a role of its own that may only call
//! `audit.sequence(max_rows)` (see [`schema::sequencer_sql`](crate::schema::sequencer_sql)),
//! chains them in batches: one database-wide lock, so one sequencer at a time; each tenant's
//! next sequence numbers and chain hashes computed by the database function, in the format of
//! [`chain_hash`](crate::chain_hash); the chained rows inserted and the queued ones deleted in
//! the same transaction. A crash at any point leaves every committed event queued, to be
//! chained by the next call: none lost, none chained twice.
//!
//! It polls: a drain, then a pause of the poll interval (20 ms by default), and again. A poll
//! that finds the queue empty is one call that probes one index and takes no lock. Polling
//! rather than a notification per queuing commit keeps the request path free of PostgreSQL's
//! notification lock, which every notifying commit of the database would otherwise take in
//! turn. After a failure it waits the retry delay and carries on (the pool reconnects); it
//! stops when asked.

use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::AuditError;

/// The default pause between polls.
pub const DEFAULT_POLL: Duration = Duration::from_millis(20);

/// The most events one call of `audit.sequence` chains (the function's own limit): with records
/// of at most [`MAX_RECORD_BYTES`](crate::MAX_RECORD_BYTES) and text columns bounded as the
/// queue bounds them, one tenant's batch stays within PostgreSQL's 1 GB limit on one
/// allocation (about 660 MB for 10,000 of the largest rows), so no row the runtime role can
/// queue fails every batch it is in.
pub const MAX_BATCH: u32 = 10_000;

/// Chains queued audit events in batches; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct Sequencer {
    pool: PgPool,
    batch: u32,
    poll: Duration,
    retry: Duration,
}

impl Sequencer {
    /// A sequencer calling `audit.sequence` through `pool` (the sequencer role's; one
    /// connection is enough). Batches of 5,000, a poll every 20 ms, a retry after a failure
    /// every second.
    #[must_use]
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            batch: 5_000,
            poll: DEFAULT_POLL,
            retry: Duration::from_secs(1),
        }
    }

    /// The most events one transaction chains (1 to [`MAX_BATCH`]; clamped).
    #[must_use]
    pub fn with_batch_size(mut self, batch: u32) -> Self {
        self.batch = batch.clamp(1, MAX_BATCH);
        self
    }

    /// The pause after a drain before looking for queued events again (at least 1 ms, at most
    /// a minute; clamped). It bounds the sequencing lag of an idle system: an event waits for
    /// the next poll, then for its batch. Events committed during a pause share the next
    /// batch.
    #[must_use]
    pub fn with_poll_interval(mut self, poll: Duration) -> Self {
        self.poll = poll.clamp(Duration::from_millis(1), Duration::from_secs(60));
        self
    }

    /// How long to wait before trying again after a failure (at least 10 ms).
    #[must_use]
    pub fn with_retry_delay(mut self, retry: Duration) -> Self {
        self.retry = retry.max(Duration::from_millis(10));
        self
    }

    /// One batch: chains up to the batch size of queued events, oldest first, and returns how
    /// many it took off the queue (a tenant whose batch failed has its events set aside and
    /// retried after a minute; see [`schema`](crate::schema)). Waits while another sequencer
    /// holds the lock.
    ///
    /// # Errors
    /// [`AuditError::Database`] when the call fails (nothing was chained then).
    pub async fn sequence_batch(&self) -> Result<u64, AuditError> {
        let batch = i32::try_from(self.batch).unwrap_or(i32::MAX);
        let moved: i32 = sqlx::query_scalar("SELECT audit.sequence($1)")
            .bind(batch)
            .fetch_one(&self.pool)
            .await?;
        Ok(u64::try_from(moved).unwrap_or(0))
    }

    /// Chains batches until the queue is empty (of events committed before the last batch
    /// started) and returns how many events were taken off it.
    ///
    /// # Errors
    /// As [`Sequencer::sequence_batch`]; the batches before the failure stay chained.
    pub async fn drain(&self) -> Result<u64, AuditError> {
        let mut total = 0;
        loop {
            let moved = self.sequence_batch().await?;
            total += moved;
            if moved < u64::from(self.batch) {
                return Ok(total);
            }
        }
    }

    /// Runs in the background until [`SequencerHandle::stop`] (or the handle is dropped).
    /// Must be called within a Tokio runtime.
    #[must_use]
    pub fn spawn(self) -> SequencerHandle {
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(self.run(stopped));
        SequencerHandle {
            stop,
            task: Some(task),
        }
    }

    /// The loop: drain, then wait for the poll interval or the stop signal; after a failure,
    /// wait the retry delay instead.
    async fn run(self, mut stopped: watch::Receiver<bool>) {
        while !*stopped.borrow() {
            let pause = match self.drain().await {
                Ok(_) => self.poll,
                Err(error) => {
                    // Errors are sqlx's (no event contents, no credentials).
                    tracing::warn!(%error, "audit sequencer failed; retrying");
                    self.retry
                }
            };
            tokio::select! {
                biased;
                changed = stopped.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                () = tokio::time::sleep(pause) => {}
            }
        }
    }
}

/// A running [`Sequencer`]. Dropping it stops the sequencer too (without waiting).
#[derive(Debug)]
pub struct SequencerHandle {
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl SequencerHandle {
    /// Stops the sequencer and waits for it: a batch in flight is finished (committed) or
    /// rolled back by the database, never half done.
    ///
    /// # Errors
    /// [`AuditError::TaskFailed`] when the sequencer task panicked.
    pub async fn stop(mut self) -> Result<(), AuditError> {
        let _ = self.stop.send(true);
        match self.task.take() {
            Some(task) => task.await.map_err(|_| AuditError::TaskFailed),
            None => Ok(()),
        }
    }

    /// Whether the sequencer task is still running.
    #[must_use]
    pub fn is_running(&self) -> bool {
        self.task.as_ref().is_some_and(|t| !t.is_finished())
    }
}

impl Drop for SequencerHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}
