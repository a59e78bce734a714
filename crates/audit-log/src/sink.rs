//! The PostgreSQL sink: scrub, stamp, canonicalise and append.

use std::sync::Arc;

use rls_guard::TenantPool;
use sqlx::PgConnection;
use tenant_scope::TenantId;
use time::OffsetDateTime;

use crate::AuditError;
use crate::canonical::{ChainHash, canonical_bytes, chain_hash, now_micros};
use crate::event::{AuditEvent, MAX_METADATA_BYTES};
use crate::scrub::Scrubber;

/// Where an event landed in its tenant's chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The tenant.
    pub tenant: TenantId,
    /// Its sequence number (gapless per tenant, from 1).
    pub seq: u64,
    /// Its chain hash.
    pub hash: ChainHash,
    /// When it was recorded, by this server's clock.
    pub occurred_at: OffsetDateTime,
}

/// The audit log: scrubs events and appends them to their tenant's hash chain.
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
}

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

const INSERT: &str = "INSERT INTO audit.events \
     (tenant_id, occurred_at, actor_kind, actor_id, action, outcome, request_id, event) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING seq, prev_hash, hash";

/// [`INSERT`] in a transaction of its own. The materialised CTE runs first, so the row-level
/// security check, the chain trigger and the commit-time binding check all see the binding.
const RECORD: &str = "WITH binding AS MATERIALIZED (\
       SELECT pg_catalog.set_config('app.tenant_id', $1, true) AS tenant, \
              pg_catalog.set_config('app.actor_id', '', true) AS actor, \
              pg_catalog.set_config('app.commit_binding', $1 || ':', true) AS commit_binding) \
     INSERT INTO audit.events \
     (tenant_id, occurred_at, actor_kind, actor_id, action, outcome, request_id, event) \
     SELECT binding.tenant::uuid, $2, $3, $4, $5, $6, $7, $8 FROM binding \
     RETURNING seq, prev_hash, hash";

impl AuditLog {
    /// An audit log writing through `pool` (the runtime role's tenant pool) and scrubbing with
    /// `scrubber`.
    #[must_use]
    pub fn new(pool: TenantPool, scrubber: Scrubber) -> Self {
        Self {
            inner: Arc::new(Inner { pool, scrubber }),
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

    /// Appends `event` inside the caller's transaction, which must be bound to the event's
    /// tenant (an [`rls_guard::TenantTx`]; row-level security refuses any other tenant). Run it
    /// at `READ COMMITTED` (the default): the tenant's chain head is locked until the caller
    /// commits, which serialises that tenant's appends.
    ///
    /// # Errors
    /// [`AuditError::Scrub`] when the scrubber refuses the metadata; [`AuditError::Database`]
    /// when the insert fails (the caller's transaction is then aborted and must roll back);
    /// [`AuditError::ChainFormatMismatch`] when the database's chain hash differs from this
    /// library's.
    pub async fn append(
        &self,
        conn: &mut PgConnection,
        event: AuditEvent,
    ) -> Result<Appended, AuditError> {
        let prepared = self.prepare(event)?;
        insert(conn, &prepared).await
    }

    /// Appends `event` in a transaction of its own, bound to the event's tenant: one prepared
    /// statement that binds the tenant (`set_config(.., true)`, transaction-local), states the
    /// commit-time binding and inserts, committed on its own — one round trip, and the tenant's
    /// chain head is locked only while the server runs it.
    ///
    /// # Errors
    /// As [`AuditLog::append`].
    pub async fn record(&self, event: AuditEvent) -> Result<Appended, AuditError> {
        let prepared = self.prepare(event)?;
        let (seq, prev, hash): (i64, Vec<u8>, Vec<u8>) = sqlx::query_as(RECORD)
            .bind(prepared.tenant.to_string())
            .bind(prepared.occurred_at)
            .bind(prepared.actor_kind)
            .bind(prepared.actor_id)
            .bind(&prepared.action)
            .bind(prepared.outcome)
            .bind(prepared.request_id.as_deref())
            .bind(&prepared.canonical)
            .fetch_one(self.inner.pool.pool())
            .await?;
        check_appended(&prepared, seq, prev, &hash)
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
                let mut marker = serde_json::Map::new();
                marker.insert("metadata_dropped".into(), "too_large".into());
                marker.insert("bytes".into(), size.into());
                marker
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
        let canonical = canonical_bytes(&event, occurred_at)?;
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

pub(crate) async fn insert(
    conn: &mut PgConnection,
    prepared: &Prepared,
) -> Result<Appended, AuditError> {
    let (seq, prev, hash): (i64, Vec<u8>, Vec<u8>) = sqlx::query_as(INSERT)
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
    check_appended(prepared, seq, prev, &hash)
}

/// The database's answer must be the chain hash this library computes.
fn check_appended(
    prepared: &Prepared,
    seq: i64,
    prev: Vec<u8>,
    hash: &[u8],
) -> Result<Appended, AuditError> {
    let seq = u64::try_from(seq).map_err(|_| AuditError::ChainFormatMismatch)?;
    let prev: ChainHash = prev
        .try_into()
        .map_err(|_| AuditError::ChainFormatMismatch)?;
    let expected = chain_hash(prepared.tenant, seq, &prev, &prepared.canonical);
    if hash != expected.as_slice() {
        return Err(AuditError::ChainFormatMismatch);
    }
    Ok(Appended {
        tenant: prepared.tenant,
        seq,
        hash: expected,
        occurred_at: prepared.occurred_at,
    })
}
