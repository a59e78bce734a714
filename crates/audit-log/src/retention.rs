//! Checkpointing and retention.

use std::time::Duration;

use sqlx::PgPool;
use tenant_scope::{TenantContext, TenantId};

use crate::canonical::{ChainHash, format_time};
use crate::checkpoint::{Checkpoint, CheckpointSigner};
use crate::event::{AuditActor, AuditEvent, Outcome, actions};
use crate::verify::load_head;
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
    /// Signs `tenant`'s current head and stores the checkpoint. Returns `None` for an empty
    /// chain; an existing checkpoint for the same head is returned as it is.
    ///
    /// Run it periodically (e.g. every few minutes for every active tenant) and copy the
    /// checkpoints somewhere the database's owner cannot write: they are what detect a
    /// rewrite with recomputed hashes.
    ///
    /// # Errors
    /// [`AuditError::Transaction`]/[`AuditError::Database`] when the database cannot be used.
    pub async fn checkpoint(
        &self,
        tenant: TenantId,
        signer: &CheckpointSigner,
    ) -> Result<Option<Checkpoint>, AuditError> {
        let context = TenantContext::for_job(tenant, None, "audit-log checkpoint")
            .map_err(|_| AuditError::InvalidEvent("tenant"))?;
        let mut tx = self.pool().begin(&context).await?;
        let Some((seq, hash, _, _)) = load_head(&mut tx, tenant).await? else {
            tx.rollback().await?;
            return Ok(None);
        };
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
        // Lock the head: no append interleaves with the move of the start.
        let head: Option<(i64,)> =
            sqlx::query_as("SELECT base_seq FROM audit.heads WHERE tenant_id = $1 FOR UPDATE")
                .bind(tenant.as_uuid())
                .fetch_optional(&mut *tx)
                .await?;
        let Some((base_seq,)) = head else {
            tx.rollback().await?;
            return Ok(PruneReport {
                removed: 0,
                base_seq: 0,
                anchor: None,
            });
        };
        let through: Option<(i64, Vec<u8>)> = sqlx::query_as(
            "SELECT seq, hash FROM audit.events WHERE tenant_id = $1 AND occurred_at < $2 \
             ORDER BY seq DESC LIMIT 1",
        )
        .bind(tenant.as_uuid())
        .bind(cutoff)
        .fetch_optional(&mut *tx)
        .await?;
        let base = u64::try_from(base_seq).map_err(|_| AuditError::Malformed("chain head"))?;
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
        sqlx::query("UPDATE audit.heads SET base_seq = $2, base_hash = $3 WHERE tenant_id = $1")
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
