//! Checkpointing and retention.

use std::time::Duration;

use rls_guard::TenantPool;
use sqlx::PgPool;
use tenant_scope::{TenantContext, TenantId};

use crate::canonical::format_time;
use crate::checkpoint::{Acknowledgement, Checkpoint, CheckpointSigner, TrustedKeys};
use crate::event::{AuditActor, AuditEvent, Outcome, actions};
use crate::verify::{BreakKind, ChainBreak, ChainVerifier, Start, walk};
use crate::{AuditError, AuditLog};

/// What [`AuditLog::prune`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
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
    /// chain's start), then signs the newest event and stores the checkpoint, through
    /// `checkpointer`: a [`TenantPool`] of the checkpointer role (see
    /// [`schema::checkpointer_sql`](crate::schema::checkpointer_sql)), never the runtime role,
    /// which may not write checkpoints. Returns `None` for an empty chain; when the chain has not
    /// grown, the existing checkpoint is returned as it is.
    ///
    /// Stored checkpoints that do not verify under `signer`'s key are ignored (a row planted at
    /// any position cannot block this one). A chain that does not verify is never signed:
    /// [`AuditError::ChainBroken`], also when it ends before the newest checkpoint this signer
    /// made (it was truncated).
    ///
    /// Run it periodically (e.g. every few minutes for every active tenant) and copy the
    /// checkpoints somewhere the database's owner cannot write: they are what detect a
    /// rewrite with recomputed hashes.
    ///
    /// # Errors
    /// [`AuditError::ChainBroken`] for a chain that does not verify;
    /// [`AuditError::InvalidConfig`] when `checkpointer` connects as the runtime role;
    /// [`AuditError::Transaction`]/[`AuditError::Database`] when the database cannot be used.
    pub async fn checkpoint(
        &self,
        checkpointer: &TenantPool,
        tenant: TenantId,
        signer: &CheckpointSigner,
    ) -> Result<Option<Checkpoint>, AuditError> {
        let context = TenantContext::for_job(tenant, None, "audit-log checkpoint")
            .map_err(|_| AuditError::InvalidConfig("tenant"))?;
        let keys = TrustedKeys::new().with(signer.verifying_key());
        let runtime: String = sqlx::query_scalar("SELECT current_user::text")
            .fetch_one(self.pool().pool())
            .await?;
        let mut tx = checkpointer.begin(&context).await?;
        let me: String = sqlx::query_scalar("SELECT current_user::text")
            .fetch_one(&mut *tx)
            .await?;
        if me == runtime {
            tx.rollback().await?;
            return Err(AuditError::InvalidConfig(
                "the checkpointer must not be the runtime role",
            ));
        }
        // Start from the newest checkpoint this signer made (or the pruned start, or genesis).
        let anchor = crate::verify::load_anchor(&mut tx, tenant).await?;
        let ours = crate::verify::load_checkpoints(&mut tx, tenant)
            .await?
            .into_iter()
            .filter(|c| keys.verifies(c))
            .filter(|c| anchor.is_none_or(|(base, _)| c.seq >= base))
            .max_by_key(|c| c.seq);
        // A chain that ends before what this signer already vouched for was truncated.
        let (last_seq,): (Option<i64>,) =
            sqlx::query_as("SELECT max(seq) FROM audit.events WHERE tenant_id = $1")
                .bind(tenant.as_uuid())
                .fetch_one(&mut *tx)
                .await?;
        let last_seq = last_seq.and_then(|s| u64::try_from(s).ok()).unwrap_or(0);
        if let Some(cp) = &ours
            && last_seq < cp.seq
        {
            tx.rollback().await?;
            return Err(AuditError::ChainBroken(ChainBreak {
                seq: last_seq + 1,
                kind: BreakKind::Truncated,
            }));
        }
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
        let acknowledgements = crate::verify::load_acknowledgements(&mut tx, tenant).await?;
        let verifier = ChainVerifier::starting(tenant, &keys, start, trusted)
            .with_acknowledgements(&keys, acknowledgements);
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
        if let Some(cp) = ours.filter(|cp| cp.seq == seq && !cp.is_prune_anchor()) {
            // Nothing new since this signer's last checkpoint.
            tx.rollback().await?;
            return Ok(Some(cp));
        }
        let checkpoint = store_checkpoint(&mut tx, signer.sign(tenant, seq, &hash)?).await?;
        tx.commit().await?;
        Ok(Some(checkpoint))
    }

    /// Acknowledges the first break in `tenant`'s chain that no acknowledgement covers yet:
    /// signs, with `signer`'s key, who (`by`) acknowledged which break and why, and the event
    /// the chain continues from (the first one after the break that is consistent by itself),
    /// and stores it through `writer` (a [`TenantPool`] of the checkpointer role, or the
    /// owner's). From then on [`verify`](crate::verify()) reports the break together with the
    /// acknowledgement (the chain is not intact, and never becomes so) and verifies the rest;
    /// [`checkpoint`](Self::checkpoint) and [`prune`](Self::prune) continue past it. Breaks the
    /// chain cannot continue past (a truncated tail, a rewrite caught by a checkpoint) cannot
    /// be acknowledged.
    ///
    /// # Errors
    /// [`AuditError::NothingToAcknowledge`] when there is no such break;
    /// [`AuditError::InvalidConfig`] when `writer` connects as the runtime role or `by` or
    /// `reason` is empty; [`AuditError::Database`] when the database cannot be used.
    pub async fn acknowledge(
        &self,
        writer: &TenantPool,
        tenant: TenantId,
        signer: &CheckpointSigner,
        by: &str,
        reason: &str,
    ) -> Result<Acknowledgement, AuditError> {
        if by.trim().is_empty() || reason.trim().is_empty() {
            return Err(AuditError::InvalidConfig(
                "an acknowledgement needs who and why",
            ));
        }
        let context = TenantContext::for_job(tenant, None, "audit-log acknowledgement")
            .map_err(|_| AuditError::InvalidConfig("tenant"))?;
        let keys = TrustedKeys::new().with(signer.verifying_key());
        let runtime: String = sqlx::query_scalar("SELECT current_user::text")
            .fetch_one(self.pool().pool())
            .await?;
        let mut tx = writer.begin(&context).await?;
        let me: String = sqlx::query_scalar("SELECT current_user::text")
            .fetch_one(&mut *tx)
            .await?;
        if me == runtime {
            tx.rollback().await?;
            return Err(AuditError::InvalidConfig(
                "acknowledgements are not written by the runtime role",
            ));
        }
        let anchor = crate::verify::load_anchor(&mut tx, tenant).await?;
        let checkpoints = crate::verify::load_checkpoints(&mut tx, tenant).await?;
        let acknowledgements = crate::verify::load_acknowledgements(&mut tx, tenant).await?;
        let verifier =
            ChainVerifier::starting(tenant, &keys, anchor.map(Start::Anchor), checkpoints)
                .with_acknowledgements(&keys, acknowledgements);
        let verifier = walk(&mut tx, tenant, verifier, anchor.map_or(0, |(seq, _)| seq)).await?;
        let Err(broken) = verifier.finish(None).result else {
            tx.rollback().await?;
            return Err(AuditError::NothingToAcknowledge);
        };
        let Some(kind) = broken.kind.name() else {
            tx.rollback().await?;
            return Err(AuditError::NothingToAcknowledge);
        };
        // A missing event is not there to skip; any other broken event is skipped.
        let from = if broken.kind == BreakKind::Missing {
            broken.seq
        } else {
            broken.seq.saturating_add(1)
        };
        let Some((resume_seq, resume_hash)) =
            crate::verify::resume_point(&mut tx, tenant, from).await?
        else {
            tx.rollback().await?;
            return Err(AuditError::NothingToAcknowledge);
        };
        let ack = signer.sign_acknowledgement(
            tenant,
            broken.seq,
            kind,
            (resume_seq, &resume_hash),
            by.trim(),
            reason.trim(),
        )?;
        let signed_at = time::OffsetDateTime::parse(
            &ack.signed_at,
            &time::format_description::well_known::Rfc3339,
        )
        .map_err(|_| AuditError::Malformed("acknowledgement time"))?;
        sqlx::query(
            "INSERT INTO audit.acknowledgements (tenant_id, break_seq, kind, resume_seq, \
             resume_hash, by_whom, reason, signed_at, key_id, signature) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(tenant.as_uuid())
        .bind(i64::try_from(ack.break_seq).map_err(|_| AuditError::Malformed("seq"))?)
        .bind(&ack.kind)
        .bind(i64::try_from(ack.resume_seq).map_err(|_| AuditError::Malformed("seq"))?)
        .bind(resume_hash.as_slice())
        .bind(&ack.by)
        .bind(&ack.reason)
        .bind(signed_at)
        .bind(&ack.key_id)
        .bind(ack.signature_bytes()?.as_slice())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(ack)
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
        // Take the sequencer's lock: no batch is chained while the start moves. Without its row
        // (a schema not migrated) nothing is pruned; held longer than the lock timeout (by a
        // sequencer that keeps its transaction open), the prune fails and nothing is pruned.
        sqlx::query("SELECT pg_catalog.set_config('lock_timeout', $1, true)")
            .bind(format!("{}s", crate::schema::SEQUENCER_LOCK_TIMEOUT_SECS))
            .execute(&mut *tx)
            .await?;
        let locked: Option<bool> =
            sqlx::query_scalar("SELECT held FROM audit.sequencer_lock WHERE held FOR UPDATE")
                .fetch_optional(&mut *tx)
                .await?;
        if locked.is_none() {
            return Err(AuditError::InvalidConfig("audit.sequencer_lock has no row"));
        }
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
        // Verify before signing: the whole chain, from its trusted start (the signed anchor of
        // an earlier pruning, or genesis), not from a checkpoint: the prefix about to go is
        // checked event by event, and a break anywhere refuses, so pruning never turns a chain
        // that fails to verify into one that passes. Stored checkpoints that do not verify
        // under this key are ignored.
        let keys = TrustedKeys::new().with(signer.verifying_key());
        let mut checkpoints = crate::verify::load_checkpoints(&mut tx, tenant).await?;
        checkpoints.retain(|c| keys.verifies(c));
        let (start, after) = match anchor {
            Some(a) => (Some(Start::Anchor(a)), a.0),
            None => (None, 0),
        };
        let acknowledgements = crate::verify::load_acknowledgements(&mut tx, tenant).await?;
        let mut verifier = ChainVerifier::starting(tenant, &keys, start, checkpoints)
            .with_acknowledgements(&keys, acknowledgements);
        verifier.watch(through);
        let verifier = walk(&mut tx, tenant, verifier, after).await?;
        let watched = verifier.watched();
        let report = verifier.finish(None);
        if let Err(broken) = report.result {
            tx.rollback().await?;
            return Err(AuditError::ChainBroken(broken));
        }
        let hash = watched.ok_or(AuditError::Malformed("pruned prefix"))?;
        let anchor_cp = store_checkpoint(
            &mut tx,
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

/// Stores `checkpoint`, signed just now (its signature, part of the key, is new).
async fn store_checkpoint(
    conn: &mut sqlx::PgConnection,
    checkpoint: Checkpoint,
) -> Result<Checkpoint, AuditError> {
    let time = |text: &str| {
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
            .map_err(|_| AuditError::Malformed("checkpoint time"))
    };
    let tenant = checkpoint.tenant_id()?;
    let seq = i64::try_from(checkpoint.seq).map_err(|_| AuditError::Malformed("seq"))?;
    sqlx::query(
        "INSERT INTO audit.checkpoints \
         (tenant_id, seq, hash, signed_at, key_id, signature, prune_cutoff, anchor) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $7 IS NOT NULL)",
    )
    .bind(tenant.as_uuid())
    .bind(seq)
    .bind(checkpoint.hash_bytes()?.as_slice())
    .bind(time(&checkpoint.signed_at)?)
    .bind(&checkpoint.key_id)
    .bind(checkpoint.signature_bytes()?.as_slice())
    .bind(checkpoint.prune_cutoff.as_deref().map(time).transpose()?)
    .execute(&mut *conn)
    .await?;
    Ok(checkpoint)
}
