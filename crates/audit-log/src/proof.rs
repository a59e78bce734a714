//! Inclusion proofs: show that one event is in a tenant's chain, under a signed checkpoint,
//! handing over only the records from it to the next checkpoint, not the whole log.

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tenant_scope::TenantId;

use crate::AuditError;
use crate::canonical::{CanonicalView, ChainHash, chain_hash};
use crate::checkpoint::{Checkpoint, TrustedKeys};
use crate::verify::{load_checkpoints, snapshot};

/// Proof that the event at `seq` is in `tenant`'s chain: its record, the records after it up to
/// a signed checkpoint, and that checkpoint. Anyone with the trusted public key can check it
/// offline with [`InclusionProof::verify`]; its size is the distance to the next checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct InclusionProof {
    /// The tenant.
    pub tenant: String,
    /// The proven event's sequence number.
    pub seq: u64,
    /// The hash before it, hex.
    pub prev_hash: String,
    /// The canonical records from `seq` to the checkpoint's sequence number, in order.
    pub records: Vec<String>,
    /// The signed checkpoint that closes the proof.
    pub checkpoint: Checkpoint,
}

impl InclusionProof {
    /// Checks the proof and returns the proven event's record.
    ///
    /// # Errors
    /// [`AuditError::Malformed`] when the checkpoint is not validly signed by a trusted key, is
    /// for another tenant or position, or the records do not hash to it.
    pub fn verify(&self, keys: &TrustedKeys) -> Result<serde_json::Value, AuditError> {
        let bad = |why| Err(AuditError::Malformed(why));
        let tenant: TenantId = self
            .tenant
            .parse()
            .map_err(|_| AuditError::Malformed("proof tenant"))?;
        if !keys.verifies(&self.checkpoint) || self.checkpoint.tenant != self.tenant {
            return bad("the proof's checkpoint is not signed by a trusted key for this tenant");
        }
        let count = u64::try_from(self.records.len()).unwrap_or(u64::MAX);
        if count == 0 || self.seq.checked_add(count - 1) != Some(self.checkpoint.seq) {
            return bad("the proof's records do not reach its checkpoint");
        }
        let mut hash: ChainHash = hex::decode(&self.prev_hash)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or(AuditError::Malformed("proof hash"))?;
        for (i, record) in (0u64..).zip(&self.records) {
            let view: CanonicalView<'_> =
                serde_json::from_str(record).map_err(|_| AuditError::Malformed("proof record"))?;
            if view.tenant != self.tenant {
                return bad("a proof record belongs to another tenant");
            }
            hash = chain_hash(tenant, self.seq + i, &hash, record.as_bytes());
        }
        if hash != self.checkpoint.hash_bytes()? {
            return bad("the proof's records do not hash to its checkpoint");
        }
        serde_json::from_str(&self.records[0]).map_err(|_| AuditError::Malformed("proof record"))
    }
}

/// Builds an [`InclusionProof`] for the event at `seq`, closed by the first checkpoint at or
/// after it that `keys` trust.
///
/// # Errors
/// [`AuditError::NotCheckpointed`] when no trusted checkpoint covers the event yet;
/// [`AuditError::Database`] when reading fails.
pub async fn prove(
    pool: &PgPool,
    tenant: TenantId,
    seq: u64,
    keys: &TrustedKeys,
) -> Result<InclusionProof, AuditError> {
    let mut tx = snapshot(pool, tenant, true).await?;
    let checkpoint = load_checkpoints(&mut tx, tenant)
        .await?
        .into_iter()
        .filter(|c| c.seq >= seq && keys.verifies(c))
        .min_by_key(|c| c.seq)
        .ok_or(AuditError::NotCheckpointed)?;
    let from = i64::try_from(seq).map_err(|_| AuditError::Malformed("seq"))?;
    let to = i64::try_from(checkpoint.seq).map_err(|_| AuditError::Malformed("seq"))?;
    let rows: Vec<(i64, Vec<u8>, Vec<u8>)> = sqlx::query_as(
        "SELECT seq, prev_hash, event FROM audit.events \
         WHERE tenant_id = $1 AND seq BETWEEN $2 AND $3 ORDER BY seq",
    )
    .bind(tenant.as_uuid())
    .bind(from)
    .bind(to)
    .fetch_all(&mut *tx)
    .await?;
    tx.rollback().await?;
    let prev_hash = rows
        .first()
        .filter(|(first, _, _)| *first == from)
        .map(|(_, prev, _)| hex::encode(prev))
        .ok_or(AuditError::Malformed("the event is not in the chain"))?;
    let records = rows
        .into_iter()
        .map(|(_, _, event)| String::from_utf8(event).map_err(|_| AuditError::Malformed("record")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(InclusionProof {
        tenant: tenant.to_string(),
        seq,
        prev_hash,
        records,
        checkpoint,
    })
}
