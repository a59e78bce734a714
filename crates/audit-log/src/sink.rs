//! The PostgreSQL sink: scrub, stamp, canonicalise and queue for the sequencer.

use std::sync::Arc;

use rls_guard::TenantPool;
use sqlx::PgConnection;
use tenant_scope::TenantId;
use time::OffsetDateTime;

use crate::AuditError;
use crate::canonical::{canonical_bytes, now_micros};
use crate::event::{AuditEvent, MAX_METADATA_BYTES, MAX_RECORD_BYTES};
use crate::scrub::Scrubber;

/// A recorded event, queued for its tenant's chain: committed with the caller's transaction,
/// and given its sequence number and chain hash by the [`Sequencer`](crate::Sequencer) soon
/// after (see [`schema`](crate::schema)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Queued {
    /// The tenant.
    pub tenant: TenantId,
    /// Its place in the queue (`audit.pending.id`, kept as `audit.events.queue_id` once
    /// chained): unique, never reused, increasing in insertion order (not commit order).
    pub id: u64,
    /// When it was recorded, by this server's clock.
    pub occurred_at: OffsetDateTime,
}

/// The audit log: scrubs events and queues them for their tenant's hash chain.
///
/// Cheap to clone. Two ways to append:
/// - [`AuditLog::append`] inside the caller's own tenant-bound transaction (an
///   [`rls_guard::TenantTx`]), so the privileged action and its audit record commit or roll back
///   together: if the audit write fails, the action does not happen;
/// - [`AuditLog::record`] in a transaction of its own (denials, events with no transaction).
#[derive(Clone)]
pub struct AuditLog {
    inner: Arc<Inner>,
}

struct Inner {
    pool: TenantPool,
    scrubber: Scrubber,
    /// Events waiting for their tenant's writer (group commit, see [`AuditLog::record`]).
    queues: Queues,
}

type QueueMap = std::collections::HashMap<TenantId, Vec<Pending>>;
type Queues = std::sync::Mutex<QueueMap>;

/// An event waiting to be written, and where its result goes.
struct Pending {
    prepared: Prepared,
    reply: tokio::sync::oneshot::Sender<Result<Queued, AuditError>>,
}

/// The most events one group-commit statement writes.
const MAX_BATCH: usize = 128;

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").finish_non_exhaustive()
    }
}

/// An event ready to insert: scrubbed, stamped and canonical.
pub(crate) struct Prepared {
    pub(crate) tenant: TenantId,
    pub(crate) occurred_at: OffsetDateTime,
    pub(crate) actor_kind: &'static str,
    pub(crate) actor_id: Option<uuid::Uuid>,
    pub(crate) action: String,
    pub(crate) outcome: &'static str,
    pub(crate) request_id: Option<String>,
    pub(crate) canonical: Vec<u8>,
}

const INSERT: &str = "INSERT INTO audit.pending \
     (tenant_id, occurred_at, actor_kind, actor_id, action, outcome, request_id, event) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
     RETURNING id";

/// [`INSERT`] in a transaction of its own. The materialised CTE runs first, so the row-level
/// security check, the checks of the record and the commit-time binding check all see the
/// binding.
const RECORD: &str = "WITH binding AS MATERIALIZED (\
       SELECT pg_catalog.set_config('app.tenant_id', $1, true) AS tenant, \
              pg_catalog.set_config('app.actor_id', '', true) AS actor, \
              pg_catalog.set_config('app.commit_binding', $1 || ':', true) AS commit_binding) \
     INSERT INTO audit.pending \
     (tenant_id, occurred_at, actor_kind, actor_id, action, outcome, request_id, event) \
     SELECT binding.tenant::uuid, $2, $3, $4, $5, $6, $7, $8 FROM binding \
     RETURNING id";

impl AuditLog {
    /// An audit log writing through `pool` (the runtime role's tenant pool) and scrubbing with
    /// `scrubber`.
    #[must_use]
    pub fn new(pool: TenantPool, scrubber: Scrubber) -> Self {
        Self {
            inner: Arc::new(Inner {
                pool,
                scrubber,
                queues: std::sync::Mutex::default(),
            }),
        }
    }

    /// The scrubber.
    #[must_use]
    pub fn scrubber(&self) -> &Scrubber {
        &self.inner.scrubber
    }

    /// The tenant pool.
    #[must_use]
    pub fn pool(&self) -> &TenantPool {
        &self.inner.pool
    }

    /// Queues `event` inside the caller's transaction, which must be bound to the event's
    /// tenant (an [`rls_guard::TenantTx`]; row-level security refuses any other tenant): it is
    /// recorded exactly when that transaction commits. No lock is held beyond the inserted
    /// row, so writers of one tenant do not wait for each other; the
    /// [`Sequencer`](crate::Sequencer) chains the event after the commit.
    ///
    /// # Errors
    /// [`AuditError::Scrub`] when the scrubber refuses the metadata; [`AuditError::Database`]
    /// when the insert fails (the record's checks refused it, or the database could not be
    /// reached; the caller's transaction is then aborted and must roll back).
    pub async fn append(
        &self,
        conn: &mut PgConnection,
        event: AuditEvent,
    ) -> Result<Queued, AuditError> {
        let prepared = self.prepare(event)?;
        insert(conn, &prepared).await
    }

    /// Queues `event` in a transaction of its own, bound to the event's tenant, and returns
    /// once it is committed (chained soon after by the [`Sequencer`](crate::Sequencer)).
    ///
    /// Group commit: events of one tenant recorded while that tenant's previous write is in
    /// flight are queued and written together by one statement (up to 128), in one transaction;
    /// a lone event is one statement on its own. Either way it is one prepared statement that
    /// binds the tenant (`set_config(.., true)`, transaction-local), states the commit-time
    /// binding and inserts — one round trip. The caller that finds its tenant idle writes the first group itself and hands
    /// anything queued behind it to a writer task (also if it is dropped midway), so no queued
    /// event is stranded.
    ///
    /// # Errors
    /// As [`AuditLog::append`]; a failed group reports [`AuditError::Batch`] to every event in
    /// it (none of them was recorded).
    pub async fn record(&self, event: AuditEvent) -> Result<Queued, AuditError> {
        let prepared = self.prepare(event)?;
        let tenant = prepared.tenant;
        let (reply, answer) = tokio::sync::oneshot::channel();
        let pending = Pending { prepared, reply };
        // A tenant's queue exists exactly while its writer runs: the first event of an idle
        // tenant creates it and starts the writer, which removes it, under this same lock, once
        // it finds it empty.
        let start_writer = {
            use std::collections::hash_map::Entry;
            let mut queues = self
                .inner
                .queues
                .lock()
                .map_err(|_| AuditError::TaskFailed)?;
            match queues.entry(tenant) {
                Entry::Occupied(mut queue) => {
                    queue.get_mut().push(pending);
                    false
                }
                Entry::Vacant(slot) => {
                    slot.insert(vec![pending]);
                    true
                }
            }
        };
        if start_writer {
            Leader {
                inner: self.inner.clone(),
                tenant,
            }
            .lead()
            .await;
        }
        answer.await.map_err(|_| AuditError::TaskFailed)?
    }

    /// Scrubs, stamps and canonicalises `event`. Free text is normalised, scrubbed, then
    /// encoded against log injection and cut to its limit — in that order, so neither an
    /// invisible character nor the cut can hide a secret from the detectors.
    pub(crate) fn prepare(&self, mut event: AuditEvent) -> Result<Prepared, AuditError> {
        use crate::event::{
            MAX_IDENTIFIER_BYTES, MAX_USER_AGENT_BYTES, encode_text, normalize_text,
        };
        let scrubber = &self.inner.scrubber;
        let tenant = event.tenant;
        let text = |raw: &str, limit: usize| {
            encode_text(&scrubber.scrub_text(tenant, &normalize_text(raw)), limit)
        };
        let metadata = std::mem::take(&mut event.metadata);
        if !metadata.is_empty() {
            let mut metadata = serde_json::Value::Object(metadata);
            crate::event::normalize_metadata(&mut metadata);
            let scrubbed = scrubber.scrub_metadata(tenant, event.action.as_str(), &metadata)?;
            let serde_json::Value::Object(map) = scrubbed else {
                return Err(AuditError::InvalidEvent("metadata must be a JSON object"));
            };
            let size = serde_json::to_vec(&map).map_or(usize::MAX, |v| v.len());
            event.metadata = if size > MAX_METADATA_BYTES {
                metadata_dropped("too_large", size)
            } else {
                map
            };
        }
        for target in &mut event.targets {
            target.kind = text(&target.kind, MAX_IDENTIFIER_BYTES);
            target.id = text(&target.id, MAX_IDENTIFIER_BYTES);
        }
        match &mut event.outcome {
            crate::Outcome::Denied { reason } | crate::Outcome::Failed { reason } => {
                *reason = text(reason, MAX_IDENTIFIER_BYTES);
            }
            crate::Outcome::Allowed => {}
        }
        if let Some(ua) = &mut event.user_agent {
            *ua = text(ua, MAX_USER_AGENT_BYTES);
        }
        if let Some(id) = &mut event.request_id {
            *id = text(id, MAX_IDENTIFIER_BYTES);
        }
        let occurred_at = now_micros();
        let mut canonical = canonical_bytes(&event, occurred_at)?;
        if canonical.len() > MAX_RECORD_BYTES {
            // Only metadata can grow this far: its numbers are spelled out in full in the
            // canonical record (`1e300` is 301 digits), which the compact size above does not
            // see. Every other field is bounded far below the limit.
            event.metadata = metadata_dropped("record_too_large", canonical.len());
            canonical = canonical_bytes(&event, occurred_at)?;
            if canonical.len() > MAX_RECORD_BYTES {
                return Err(AuditError::InvalidEvent("audit record too large"));
            }
        }
        Ok(Prepared {
            tenant,
            occurred_at,
            actor_kind: event.actor.kind(),
            actor_id: event.actor.id(),
            action: event.action.as_str().to_owned(),
            outcome: event.outcome.status(),
            request_id: event.request_id,
            canonical,
        })
    }
}

/// What replaces metadata too large to keep: `too_large` with the metadata's serialised size,
/// or `record_too_large` with the size of the canonical record it would have made.
fn metadata_dropped(why: &str, bytes: usize) -> serde_json::Map<String, serde_json::Value> {
    let mut marker = serde_json::Map::new();
    marker.insert("metadata_dropped".into(), why.into());
    marker.insert("bytes".into(), bytes.into());
    marker
}

/// A tenant's writer: writes its queue in groups until the queue is empty, then removes it.
async fn write_queue(inner: Arc<Inner>, tenant: TenantId) {
    while write_group(&inner, tenant).await {}
}

/// Writes the next group of `tenant`'s queue. `false` once the queue was found empty (and
/// removed) or unusable.
async fn write_group(inner: &Inner, tenant: TenantId) -> bool {
    let group: Vec<Pending> = {
        let Some(mut queues) = lock_or_fail(&inner.queues, tenant) else {
            return false;
        };
        let Some(queue) = queues.get_mut(&tenant) else {
            return false;
        };
        if queue.is_empty() {
            queues.remove(&tenant);
            return false;
        }
        let n = queue.len().min(MAX_BATCH);
        queue.drain(..n).collect()
    };
    let prepared: Vec<&Prepared> = group.iter().map(|p| &p.prepared).collect();
    match insert_group(inner.pool.pool(), tenant, &prepared).await {
        Ok(appended) => {
            for (pending, result) in group.into_iter().zip(appended) {
                let _ = pending.reply.send(result);
            }
        }
        Err(error) if group.len() == 1 => {
            if let Some(pending) = group.into_iter().next() {
                let _ = pending.reply.send(Err(error));
            }
        }
        Err(error) => {
            let unavailable = error.is_unavailable();
            tracing::error!(%tenant, error = %error, events = group.len(), "audit group could not be written");
            for pending in group {
                let _ = pending.reply.send(Err(AuditError::Batch { unavailable }));
            }
        }
    }
    true
}

/// The queues, locked; `None` if a panic poisoned the lock. Then `tenant`'s queued events are
/// dropped with their reply channels, so every waiting caller gets `TaskFailed` — an error,
/// never a hang and never a reported success.
fn lock_or_fail(queues: &Queues, tenant: TenantId) -> Option<std::sync::MutexGuard<'_, QueueMap>> {
    match queues.lock() {
        Ok(queues) => Some(queues),
        Err(poisoned) => {
            poisoned.into_inner().remove(&tenant);
            None
        }
    }
}

/// The caller that found its tenant idle writes the first group itself (no task hop for a
/// lone event) and hands the rest of the queue to a writer task — also when it is dropped
/// midway, so events queued behind it are never stranded.
struct Leader {
    inner: Arc<Inner>,
    tenant: TenantId,
}

impl Leader {
    async fn lead(self) {
        write_group(&self.inner, self.tenant).await;
        // `Drop` hands over whatever was queued meanwhile.
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        let Some(mut queues) = lock_or_fail(&self.inner.queues, self.tenant) else {
            return;
        };
        if queues.get(&self.tenant).is_none_or(Vec::is_empty) {
            queues.remove(&self.tenant);
            return;
        }
        drop(queues);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(write_queue(self.inner.clone(), self.tenant));
            }
            Err(_) => {
                // No runtime left to write with: drop the queue, the waiters see TaskFailed.
                if let Ok(mut queues) = self.inner.queues.lock() {
                    queues.remove(&self.tenant);
                }
            }
        }
    }
}

/// [`INSERT`] for a group of one tenant's events, in order, in a transaction of its own.
const RECORD_GROUP: &str = "WITH binding AS MATERIALIZED (\
       SELECT pg_catalog.set_config('app.tenant_id', $1, true) AS tenant, \
              pg_catalog.set_config('app.actor_id', '', true) AS actor, \
              pg_catalog.set_config('app.commit_binding', $1 || ':', true) AS commit_binding) \
     INSERT INTO audit.pending \
     (tenant_id, occurred_at, actor_kind, actor_id, action, outcome, request_id, event) \
     SELECT binding.tenant::uuid, r.occurred_at, r.actor_kind, r.actor_id, r.action, r.outcome, \
            r.request_id, r.event \
     FROM binding, unnest($2::timestamptz[], $3::text[], $4::uuid[], $5::text[], $6::text[], \
                          $7::text[], $8::bytea[]) WITH ORDINALITY \
          AS r(occurred_at, actor_kind, actor_id, action, outcome, request_id, event, ord) \
     ORDER BY r.ord \
     RETURNING id";

/// Writes `group` (one tenant's events, in order). The result per event, in the same order.
async fn insert_group(
    pool: &sqlx::PgPool,
    tenant: TenantId,
    group: &[&Prepared],
) -> Result<Vec<Result<Queued, AuditError>>, AuditError> {
    if let [one] = group {
        let (id,): (i64,) = sqlx::query_as(RECORD)
            .bind(tenant.to_string())
            .bind(one.occurred_at)
            .bind(one.actor_kind)
            .bind(one.actor_id)
            .bind(&one.action)
            .bind(one.outcome)
            .bind(one.request_id.as_deref())
            .bind(&one.canonical)
            .fetch_one(pool)
            .await?;
        return Ok(vec![queued(one, id)]);
    }
    let mut ids: Vec<i64> = sqlx::query_scalar(RECORD_GROUP)
        .bind(tenant.to_string())
        .bind(group.iter().map(|p| p.occurred_at).collect::<Vec<_>>())
        .bind(group.iter().map(|p| p.actor_kind).collect::<Vec<_>>())
        .bind(group.iter().map(|p| p.actor_id).collect::<Vec<_>>())
        .bind(group.iter().map(|p| p.action.as_str()).collect::<Vec<_>>())
        .bind(group.iter().map(|p| p.outcome).collect::<Vec<_>>())
        .bind(
            group
                .iter()
                .map(|p| p.request_id.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(
            group
                .iter()
                .map(|p| p.canonical.as_slice())
                .collect::<Vec<_>>(),
        )
        .fetch_all(pool)
        .await?;
    if ids.len() != group.len() {
        return Err(AuditError::Malformed("queue ids"));
    }
    // Inserted in the group's order, so the identity values follow it.
    ids.sort_unstable();
    Ok(group
        .iter()
        .zip(ids)
        .map(|(prepared, id)| queued(prepared, id))
        .collect())
}

pub(crate) async fn insert(
    conn: &mut PgConnection,
    prepared: &Prepared,
) -> Result<Queued, AuditError> {
    let id: i64 = sqlx::query_scalar(INSERT)
        .bind(prepared.tenant.as_uuid())
        .bind(prepared.occurred_at)
        .bind(prepared.actor_kind)
        .bind(prepared.actor_id)
        .bind(&prepared.action)
        .bind(prepared.outcome)
        .bind(prepared.request_id.as_deref())
        .bind(&prepared.canonical)
        .fetch_one(conn)
        .await?;
    queued(prepared, id)
}

fn queued(prepared: &Prepared, id: i64) -> Result<Queued, AuditError> {
    Ok(Queued {
        tenant: prepared.tenant,
        id: u64::try_from(id).map_err(|_| AuditError::Malformed("queue id"))?,
        occurred_at: prepared.occurred_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_queue_fails_its_waiters_instead_of_stranding_them() {
        let tenant = TenantId::new_random();
        let queues: Arc<Queues> = Arc::default();
        let (reply, mut answer) = tokio::sync::oneshot::channel();
        let prepared = Prepared {
            tenant,
            occurred_at: OffsetDateTime::UNIX_EPOCH,
            actor_kind: "system",
            actor_id: None,
            action: "a.b".to_owned(),
            outcome: "allowed",
            request_id: None,
            canonical: Vec::new(),
        };
        queues
            .lock()
            .unwrap()
            .insert(tenant, vec![Pending { prepared, reply }]);
        let poisoner = queues.clone();
        let _ = std::thread::spawn(move || {
            let _guard = poisoner.lock().unwrap();
            panic!("poison the queue lock");
        })
        .join();
        assert!(queues.is_poisoned());
        assert!(lock_or_fail(&queues, tenant).is_none());
        // The waiter is told (its reply channel is gone), not left waiting forever.
        assert!(matches!(
            answer.try_recv(),
            Err(tokio::sync::oneshot::error::TryRecvError::Closed)
        ));
    }
}
