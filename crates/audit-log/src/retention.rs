//! Checkpointing and retention.

use std::time::Duration;

use sqlx::PgPool;
use tenant_scope::{TenantContext, TenantId};

use crate::canonical::format_time;
use crate::checkpoint::{Checkpoint, CheckpointSigner, TrustedKeys};
use crate::event::{AuditActor, AuditEvent, Outcome, actions};
use crate::verify::{ChainVerifier, Start, walk};
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
            .map_err(|_| AuditError::InvalidConfig("tenant"))?;
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
            Some(cp) => Some(Start::Checkpoint((cp.seq, cp.hash_bytes()?))),
            None => anchor.map(Start::Anchor),
        };
        let after = match start {
            Some(Start::Checkpoint((seq, _)) | Start::Anchor((seq, _))) => seq,
            None => 0,
        };
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
        let verifier = ChainVerifier::starting(tenant, &keys, start, trusted);
        let verifier = walk(&mut tx, tenant, verifier, after).await?;
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
        let checkpoint =
            store_checkpoint(&mut tx, signer, signer.sign(tenant, seq, &hash)?).await?;
        tx.commit().await?;
        Ok(Some(checkpoint))
    }

    /// Prunes `tenant`'s events older than `older_than`, keeping the chain verifiable.
    ///
    /// Only the longest *prefix* of the chain that is entirely older than the cutoff goes (one
    /// event with a wrong time cannot drag younger events with it), and only after that prefix
    /// has been verified — from the newest checkpoint `signer` made, or the chain's start — so
    /// pruning never launders tampering. The last pruned event is then signed as a retention
    /// anchor (signed differently from an ordinary checkpoint), the chain's start moves to it,
    /// the prefix is deleted and an `audit.pruned` event is appended, all in one transaction.
    ///
    /// `owner` must be a pool of the schema's owner role (the runtime role cannot delete
    /// anything). The append-only trigger lets a `DELETE` through only for rows at or behind the
    /// anchor.
    ///
    /// # Errors
    /// [`AuditError::ChainBroken`] when the chain does not verify; [`AuditError::Database`]
    /// when any step fails (nothing is pruned then).
    pub async fn prune(
        &self,
        owner: &PgPool,
        tenant: TenantId,
        older_than: Duration,
        signer: &CheckpointSigner,
    ) -> Result<PruneReport, AuditError> {
        let cutoff = crate::canonical::now_micros()
            - time::Duration::try_from(older_than)
                .map_err(|_| AuditError::InvalidConfig("retention period"))?;
        let mut tx = owner.begin().await?;
        // A validated UUID: inlining it is injection-free.
        let bind = format!("SET LOCAL app.tenant_id = '{tenant}'");
        // `Executor::execute`: `RawSql::execute`'s future is not provably `Send`.
        sqlx::Executor::execute(&mut *tx, sqlx::raw_sql(&bind)).await?;
        // Take the chain's append lock: no append interleaves with the move of the start.
        sqlx::query("SELECT pg_advisory_xact_lock(1096107092, hashtext($1::text))")
            .bind(tenant.as_uuid())
            .execute(&mut *tx)
            .await?;
        let anchor = crate::verify::load_anchor(&mut tx, tenant).await?;
        let base = anchor.map_or(0, |(seq, _)| seq);
        // The longest all-old prefix ends just before the first event at or after the cutoff.
        let (first_young, last): (Option<i64>, Option<i64>) = sqlx::query_as(
            "SELECT (SELECT min(seq) FROM audit.events WHERE tenant_id = $1 AND occurred_at >= $2), \
                    (SELECT max(seq) FROM audit.events WHERE tenant_id = $1)",
        )
        .bind(tenant.as_uuid())
        .bind(cutoff)
        .fetch_one(&mut *tx)
        .await?;
        let through = match (first_young, last) {
            (Some(young), _) => young - 1,
            (None, Some(last)) => last,
            (None, None) => base.try_into().unwrap_or(i64::MAX),
        };
        let through = u64::try_from(through).unwrap_or(0);
        if through <= base {
            tx.rollback().await?;
            return Ok(PruneReport {
                removed: 0,
                base_seq: base,
                anchor: None,
            });
        }
        // Verify before signing: from this signer's newest checkpoint, else the chain's start.
        let keys = TrustedKeys::new().with(signer.verifying_key());
        let mut checkpoints = crate::verify::load_checkpoints(&mut tx, tenant).await?;
        checkpoints.retain(|c| keys.verifies(c));
        let resume = checkpoints
            .iter()
            .filter(|c| !c.is_prune_anchor() && c.seq >= base && c.seq <= through)
            .max_by_key(|c| c.seq)
            .map(|c| Ok::<_, AuditError>((c.seq, c.hash_bytes()?)))
            .transpose()?;
        let (start, after) = match (resume, anchor) {
            (Some(cp), _) => (Some(Start::Checkpoint(cp)), cp.0),
            (None, Some(a)) => (Some(Start::Anchor(a)), a.0),
            (None, None) => (None, 0),
        };
        let mut verifier = ChainVerifier::starting(tenant, &keys, start, checkpoints);
        verifier.watch(through);
        let verifier = walk(&mut tx, tenant, verifier, after).await?;
        let watched = verifier.watched();
        let report = verifier.finish(None);
        if let Err(broken) = report.result {
            tx.rollback().await?;
            return Err(AuditError::ChainBroken(broken));
        }
        let hash = match resume {
            Some((seq, hash)) if seq == through => hash,
            _ => watched.ok_or(AuditError::Malformed("pruned prefix"))?,
        };
        let anchor_cp = store_checkpoint(
            &mut tx,
            signer,
            signer.sign_prune_anchor(tenant, through, &hash, cutoff)?,
        )
        .await?;
        let through_i = i64::try_from(through).map_err(|_| AuditError::Malformed("seq"))?;
        sqlx::query(
            "INSERT INTO audit.anchors (tenant_id, base_seq, base_hash) VALUES ($1, $2, $3) \
             ON CONFLICT (tenant_id) DO UPDATE SET base_seq = $2, base_hash = $3",
        )
        .bind(tenant.as_uuid())
        .bind(through_i)
        .bind(hash.as_slice())
        .execute(&mut *tx)
        .await?;
        let removed = sqlx::query("DELETE FROM audit.events WHERE tenant_id = $1 AND seq <= $2")
            .bind(tenant.as_uuid())
            .bind(through_i)
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
            "through_seq": through,
            "removed": removed,
            "cutoff": format_time(cutoff)?,
        }))?;
        let prepared = self.prepare(event)?;
        crate::sink::insert(&mut tx, &prepared).await?;
        // The rls-guard binding check runs at commit for every row written: restate the tenant.
        let restate = format!("SET LOCAL app.commit_binding = '{tenant}:'");
        sqlx::Executor::execute(&mut *tx, sqlx::raw_sql(&restate)).await?;
        tx.commit().await?;
        Ok(PruneReport {
            removed,
            base_seq: through,
            anchor: Some(anchor_cp),
        })
    }
}

/// Stores `checkpoint` (already signed by `signer`), or returns the one already stored at
/// its position if that one is genuine and agrees.
async fn store_checkpoint(
    conn: &mut sqlx::PgConnection,
    signer: &CheckpointSigner,
    checkpoint: Checkpoint,
) -> Result<Checkpoint, AuditError> {
    let time = |text: &str| {
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
            .map_err(|_| AuditError::Malformed("checkpoint time"))
    };
    let tenant = checkpoint.tenant_id()?;
    let seq = i64::try_from(checkpoint.seq).map_err(|_| AuditError::Malformed("seq"))?;
    let inserted = sqlx::query(
        "INSERT INTO audit.checkpoints \
         (tenant_id, seq, hash, signed_at, key_id, signature, prune_cutoff, anchor) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $7 IS NOT NULL) \
         ON CONFLICT (tenant_id, seq, anchor) DO NOTHING",
    )
    .bind(tenant.as_uuid())
    .bind(seq)
    .bind(checkpoint.hash_bytes()?.as_slice())
    .bind(time(&checkpoint.signed_at)?)
    .bind(&checkpoint.key_id)
    .bind(checkpoint.signature_bytes()?.as_slice())
    .bind(checkpoint.prune_cutoff.as_deref().map(time).transpose()?)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if inserted == 1 {
        return Ok(checkpoint);
    }
    // Something already sits at this position: accept it only if it is ours and agrees.
    let keys = TrustedKeys::new().with(signer.verifying_key());
    crate::verify::load_checkpoints(conn, tenant)
        .await?
        .into_iter()
        .find(|c| {
            c.seq == checkpoint.seq
                && c.is_prune_anchor() == checkpoint.is_prune_anchor()
                && c.hash == checkpoint.hash
                && keys.verifies(c)
        })
        .ok_or(AuditError::CheckpointConflict)
}
