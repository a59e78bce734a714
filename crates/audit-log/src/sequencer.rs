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
//! It is woken by `LISTEN audit_pending` (a notification sent when a queuing transaction
//! commits) and polls besides, so a lost notification only delays; it reconnects after a
//! failure and stops when asked.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::AuditError;

/// The channel `audit.pending` notifies on.
pub const CHANNEL: &str = "audit_pending";

/// The most events one call of `audit.sequence` chains (the function's own limit).
pub const MAX_BATCH: u32 = 100_000;

/// Chains queued audit events in batches; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct Sequencer {
    pool: PgPool,
    batch: u32,
    poll: Duration,
    linger: Duration,
    retry: Duration,
}

impl Sequencer {
    /// A sequencer calling `audit.sequence` through `pool` (the sequencer role's; two
    /// connections: one listens, one sequences). Batches of 5,000, a linger of 10 ms after a
    /// notification, a poll every second.
    #[must_use]
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            batch: 5_000,
            poll: Duration::from_secs(1),
            linger: Duration::from_millis(10),
            retry: Duration::from_secs(1),
        }
    }

    /// The most events one transaction chains (1 to [`MAX_BATCH`]; clamped).
    #[must_use]
    pub fn with_batch_size(mut self, batch: u32) -> Self {
        self.batch = batch.clamp(1, MAX_BATCH);
        self
    }

    /// How often to look for queued events without a notification (at least 10 ms).
    #[must_use]
    pub fn with_poll_interval(mut self, poll: Duration) -> Self {
        self.poll = poll.max(Duration::from_millis(10));
        self
    }

    /// How long to wait after a notification before chaining, so that the events of other
    /// commits arriving meanwhile share the batch (one transaction of the sequencer per burst
    /// rather than per event). Adds up to this much to the sequencing lag; zero chains at once.
    #[must_use]
    pub fn with_linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// How long to wait before reconnecting after a failure (at least 10 ms).
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

    /// The loop: drain, then wait for a notification, the poll interval or the stop signal;
    /// after a failure, wait the retry delay and connect again.
    async fn run(self, mut stopped: watch::Receiver<bool>) {
        while !*stopped.borrow() {
            match self.session(&mut stopped).await {
                Ok(Session::Stopped) => return,
                Ok(Session::Lost) => {
                    tracing::warn!("audit sequencer lost its listening connection; reconnecting");
                }
                // Errors are sqlx's (no event contents, no credentials).
                Err(error) => tracing::warn!(%error, "audit sequencer failed; reconnecting"),
            }
            tokio::select! {
                changed = stopped.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                () = tokio::time::sleep(self.retry) => {}
            }
        }
    }

    /// One connected session: listens, then drains on every wake-up. A lost listening
    /// connection ends the session, so the next one listens again *before* it drains and no
    /// commit falls between the two.
    async fn session(&self, stopped: &mut watch::Receiver<bool>) -> Result<Session, AuditError> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(CHANNEL).await?;
        loop {
            // Anything queued before the listener was connected is drained here too.
            self.drain().await?;
            tokio::select! {
                biased;
                changed = stopped.changed() => {
                    if changed.is_err() || *stopped.borrow() {
                        return Ok(Session::Stopped);
                    }
                }
                notice = listener.try_recv() => {
                    if notice?.is_none() {
                        return Ok(Session::Lost);
                    }
                    if !self.linger.is_zero() {
                        tokio::time::sleep(self.linger).await;
                    }
                }
                () = tokio::time::sleep(self.poll) => {}
            }
            // Notifications already delivered are all answered by the next drain.
            while listener.next_buffered().is_some() {}
        }
    }
}

/// How a session ended.
enum Session {
    Stopped,
    Lost,
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
