//! Checkpointing and retention.

use std::time::Duration;

use sqlx::PgPool;
use tenant_scope::{TenantContext, TenantId};

use crate::canonical::{ChainHash, format_time};
use crate::checkpoint::{Checkpoint, CheckpointSigner, TrustedKeys};
use crate::event::{AuditActor, AuditEvent, Outcome, actions};
use crate::{AuditError, AuditLog};

/// What [`AuditLog::prune`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PruneReport {
    /// Events removed.
    pub removed: u64,
    /// The chain now starts after this sequence number (0: nothing pruned ever).
    pub base_seq: u64,
    /// The signed checkpoint that anchors the new start, when anything was pruned.
    pub anchor: Option<Checkpoint>,
}

impl AuditLog {
    /// Verifies `tenant`'s events since the last checkpoint this signer can vouch for (or the
    /// chain's start), then signs the newest event and stores the checkpoint. Returns `None`
    /// for an empty chain; an existing checkpoint for the same event is returned as it is.
    /// A chain that does not verify is never signed: that is [`AuditError::ChainBroken`].
    ///
    /// Run it periodically (e.g. every few minutes for every active tenant) and copy the
    /// checkpoints somewhere the database's owner cannot write: they are what detect a
    /// rewrite with recomputed hashes.
    ///
    /// # Errors
    /// [`AuditError::ChainBroken`] for a chain that does not verify;
    /// [`AuditError::Transaction`]/[`AuditError::Database`] when the database cannot be used.
    pub async fn checkpoint(
        &self,
        tenant: TenantId,
        signer: &CheckpointSigner,
    ) -> Result<Option<Checkpoint>, AuditError> {
        let context = TenantContext::for_job(tenant, None, "audit-log checkpoint")
            .map_err(|_| AuditError::InvalidEvent("tenant"))?;
        let keys = TrustedKeys::new().with(signer.verifying_key());
        let mut tx = self.pool().begin(&context).await?;
        // Start from the newest checkpoint this signer made (or the pruned start, or genesis).
        let anchor = crate::verify::load_anchor(&mut tx, tenant).await?;
        let ours = crate::verify::load_checkpoints(&mut tx, tenant)
            .await?
            .into_iter()
            .filter(|c| keys.verifies(c))
            .filter(|c| anchor.is_none_or(|(base, _)| c.seq >= base))
            .max_by_key(|c| c.seq);
        let start = match &ours {
            Some(cp) => Some((cp.seq, cp.hash_bytes()?)),
            None => anchor,
        };
        let after = start.map_or(0, |(seq, _)| seq);
        let trusted: Vec<Checkpoint> = match (&ours, anchor) {
            (Some(cp), _) => vec![cp.clone()],
            // A pruned start is anchored by a checkpoint of its own; without one it is not
            // trusted, and the walk reports it.
            (None, Some((base, _))) => crate::verify::load_checkpoints(&mut tx, tenant)
                .await?
                .into_iter()
                .filter(|c| c.seq == base && keys.verifies(c))
                .collect(),
            (None, None) => Vec::new(),
        };
        let verifier = crate::verify::ChainVerifier::new(tenant, &keys, start, trusted);
        let verifier = crate::verify::walk(&mut tx, tenant, verifier, after).await?;
        let (seq, hash) = verifier.last();
        let report = verifier.finish(None);
        if let Err(broken) = report.result {
            tx.rollback().await?;
            return Err(AuditError::ChainBroken(broken));
        }
        if seq == 0 {
            tx.rollback().await?;
            return Ok(None);
        }
        let checkpoint = store_checkpoint(&mut tx, signer, tenant, seq, &hash).await?;
        tx.commit().await?;
        Ok(Some(checkpoint))
    }

    /// Prunes `tenant`'s events older than `older_than`, keeping the chain verifiable: the
    /// newest event to go is signed as a checkpoint, the chain's start moves to it, the older
    /// rows are deleted, and an `audit.pruned` event is appended, all in one transaction.
    ///
    /// `owner` must be a pool of the schema's owner role (the runtime role cannot delete
    /// anything). The append-only trigger lets a `DELETE` through only for rows at or behind the
    /// anchor.
    ///
    /// # Errors
    /// [`AuditError::Database`] when any step fails (nothing is pruned then).
    pub async fn prune(
        &self,
        owner: &PgPool,
        tenant: TenantId,
        older_than: Duration,
        signer: &CheckpointSigner,
    ) -> Result<PruneReport, AuditError> {
        let cutoff = time::OffsetDateTime::now_utc()
            - time::Duration::try_from(older_than)
                .map_err(|_| AuditError::InvalidEvent("retention period"))?;
        let mut tx = owner.begin().await?;
        // A validated UUID: inlining it is injection-free.
        sqlx::raw_sql(&format!("SET LOCAL app.tenant_id = '{tenant}'"))
            .execute(&mut *tx)
            .await?;
        // Take the chain's append lock: no append interleaves with the move of the start.
        sqlx::query("SELECT pg_advisory_xact_lock(1096107092, hashtext($1::text))")
            .bind(tenant.as_uuid())
            .execute(&mut *tx)
            .await?;
        let anchor = crate::verify::load_anchor(&mut tx, tenant).await?;
        let base = anchor.map_or(0, |(seq, _)| seq);
        let through: Option<(i64, Vec<u8>)> = sqlx::query_as(
            "SELECT seq, hash FROM audit.events WHERE tenant_id = $1 AND occurred_at < $2 \
             ORDER BY seq DESC LIMIT 1",
        )
        .bind(tenant.as_uuid())
        .bind(cutoff)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((through, hash)) = through else {
            tx.rollback().await?;
            return Ok(PruneReport {
                removed: 0,
                base_seq: base,
                anchor: None,
            });
        };
        let through_u = u64::try_from(through).map_err(|_| AuditError::Malformed("seq"))?;
        let hash: ChainHash = hash
            .try_into()
            .map_err(|_| AuditError::Malformed("chain hash"))?;
        if through_u <= base {
            tx.rollback().await?;
            return Ok(PruneReport {
                removed: 0,
                base_seq: base,
                anchor: None,
            });
        }
        let anchor = store_checkpoint(&mut tx, signer, tenant, through_u, &hash).await?;
        sqlx::query(
            "INSERT INTO audit.anchors (tenant_id, base_seq, base_hash) VALUES ($1, $2, $3) \
             ON CONFLICT (tenant_id) DO UPDATE SET base_seq = $2, base_hash = $3",
        )
            .bind(tenant.as_uuid())
            .bind(through)
            .bind(hash.as_slice())
            .execute(&mut *tx)
            .await?;
        let removed = sqlx::query("DELETE FROM audit.events WHERE tenant_id = $1 AND seq <= $2")
            .bind(tenant.as_uuid())
            .bind(through)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let event = AuditEvent::new(
            tenant,
            AuditActor::system(),
            actions::AUDIT_PRUNED,
            Outcome::Allowed,
        )
        .with_metadata(serde_json::json!({
            "through_seq": through_u,
            "removed": removed,
            "cutoff": format_time(cutoff)?,
        }))?;
        let prepared = self.prepare(event)?;
        crate::sink::insert(&mut tx, &prepared).await?;
        // The rls-guard binding check runs at commit for every row written: restate the tenant.
        sqlx::raw_sql(&format!("SET LOCAL app.commit_binding = '{tenant}:'"))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(PruneReport {
            removed,
            base_seq: through_u,
            anchor: Some(anchor),
        })
    }
}

/// Signs `(seq, hash)` and inserts the checkpoint, or returns the one already stored there.
async fn store_checkpoint(
    conn: &mut sqlx::PgConnection,
    signer: &CheckpointSigner,
    tenant: TenantId,
    seq: u64,
    hash: &ChainHash,
) -> Result<Checkpoint, AuditError> {
    let checkpoint = signer.sign(tenant, seq, hash)?;
    let signed_at = time::OffsetDateTime::parse(
        &checkpoint.signed_at,
        &time::format_description::well_known::Rfc3339,
    )
    .map_err(|_| AuditError::Malformed("checkpoint time"))?;
    let seq_i = i64::try_from(seq).map_err(|_| AuditError::Malformed("seq"))?;
    let inserted = sqlx::query(
        "INSERT INTO audit.checkpoints (tenant_id, seq, hash, signed_at, key_id, signature) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (tenant_id, seq) DO NOTHING",
    )
    .bind(tenant.as_uuid())
    .bind(seq_i)
    .bind(hash.as_slice())
    .bind(signed_at)
    .bind(&checkpoint.key_id)
    .bind(checkpoint.signature_bytes()?.as_slice())
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if inserted == 1 {
        return Ok(checkpoint);
    }
    let existing = crate::verify::load_checkpoints(conn, tenant).await?;
    existing
        .into_iter()
        .find(|c| c.seq == seq)
        .ok_or(AuditError::Malformed("checkpoint"))
}
