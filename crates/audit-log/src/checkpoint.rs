//! Signed checkpoints: Ed25519 signatures over (tenant, sequence number, head hash, time).
//!
//! A checkpoint commits to the whole chain up to its sequence number. Exported to a system the
//! database's owner cannot write (a separate store, a ticket, a transparency log), it catches
//! what the chain alone cannot: someone with owner rights who rewrites events and recomputes
//! every hash after them, or cuts off the tail.

use std::fmt;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use secrecy::{ExposeSecret, ExposeSecretMut, SecretBox};
use serde::{Deserialize, Serialize};
use tenant_scope::TenantId;
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::AuditError;
use crate::canonical::{ChainHash, format_time, now_micros};

const DOMAIN: &str = "audit-log/checkpoint/v1";

/// A signed statement that `tenant`'s chain had head `hash` at `seq`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Checkpoint {
    /// The tenant.
    pub tenant: String,
    /// The sequence number of the last event covered.
    pub seq: u64,
    /// That event's chain hash, hex.
    pub hash: String,
    /// When it was signed (RFC 3339 UTC, microseconds).
    pub signed_at: String,
    /// Which key signed it.
    pub key_id: String,
    /// The Ed25519 signature, hex.
    pub signature: String,
    /// Set only on a retention anchor: the cutoff before which events were pruned. Such a
    /// checkpoint is signed differently, so an ordinary checkpoint can never be passed off as
    /// the start of a pruned chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prune_cutoff: Option<String>,
}

impl Checkpoint {
    /// The bytes that are signed: every field on its own line (none can contain a newline:
    /// they are a UUID, digits, hex, an RFC 3339 time and a key id of `[A-Za-z0-9._-]`), and
    /// the purpose.
    fn message(&self) -> String {
        let purpose = self.prune_cutoff.as_ref().map_or_else(
            || "checkpoint".to_owned(),
            |cutoff| format!("prune-anchor {cutoff}"),
        );
        format!(
            "{DOMAIN}\n{}\n{}\n{}\n{}\n{}\n{purpose}",
            self.tenant, self.seq, self.hash, self.signed_at, self.key_id
        )
    }

    /// Whether this is a retention anchor.
    #[must_use]
    pub const fn is_prune_anchor(&self) -> bool {
        self.prune_cutoff.is_some()
    }

    /// The tenant, parsed.
    ///
    /// # Errors
    /// [`AuditError::Malformed`] when it is not a tenant id.
    pub fn tenant_id(&self) -> Result<TenantId, AuditError> {
        self.tenant
            .parse()
            .map_err(|_| AuditError::Malformed("checkpoint tenant"))
    }

    /// The head hash, parsed.
    ///
    /// # Errors
    /// [`AuditError::Malformed`] when it is not 32 bytes of hex.
    pub fn hash_bytes(&self) -> Result<ChainHash, AuditError> {
        let bytes =
            hex::decode(&self.hash).map_err(|_| AuditError::Malformed("checkpoint hash"))?;
        bytes
            .try_into()
            .map_err(|_| AuditError::Malformed("checkpoint hash"))
    }

    pub(crate) fn signature_bytes(&self) -> Result<[u8; 64], AuditError> {
        let bytes = hex::decode(&self.signature)
            .map_err(|_| AuditError::Malformed("checkpoint signature"))?;
        bytes
            .try_into()
            .map_err(|_| AuditError::Malformed("checkpoint signature"))
    }
}

const ACK_DOMAIN: &str = "audit-log/acknowledgement/v1";

/// An operator's signed acknowledgement of a break in a tenant's chain: which break (sequence
/// number and kind), who acknowledged it and why, and where the chain continues (the event at
/// `resume_seq`, with the stored hash `resume_hash`, is accepted as the new trusted start).
/// [`verify`](crate::verify()) keeps reporting the break, with its acknowledgement, forever;
/// checkpoints continue past it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Acknowledgement {
    /// The tenant.
    pub tenant: String,
    /// Where the chain broke.
    pub break_seq: u64,
    /// The kind of break, as [`BreakKind::name`](crate::BreakKind::name) spells it.
    pub kind: String,
    /// The first event after the break that the chain continues from.
    pub resume_seq: u64,
    /// That event's stored chain hash, hex.
    pub resume_hash: String,
    /// Who acknowledged the break.
    pub by: String,
    /// Why, in their words.
    pub reason: String,
    /// When it was signed (RFC 3339 UTC, microseconds).
    pub signed_at: String,
    /// Which key signed it.
    pub key_id: String,
    /// The Ed25519 signature, hex.
    pub signature: String,
}

impl Acknowledgement {
    /// The bytes that are signed: the domain, then every field on its own line (`by` and
    /// `reason`, which may hold anything, as JSON strings).
    fn message(&self) -> String {
        let quote = |text: &str| serde_json::Value::from(text).to_string();
        format!(
            "{ACK_DOMAIN}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}",
            self.tenant,
            self.break_seq,
            self.kind,
            self.resume_seq,
            self.resume_hash,
            quote(&self.by),
            quote(&self.reason),
            self.signed_at,
            self.key_id
        )
    }

    /// The resume hash, parsed.
    ///
    /// # Errors
    /// [`AuditError::Malformed`] when it is not 32 bytes of hex.
    pub fn resume_hash_bytes(&self) -> Result<ChainHash, AuditError> {
        let bytes = hex::decode(&self.resume_hash)
            .map_err(|_| AuditError::Malformed("acknowledgement hash"))?;
        bytes
            .try_into()
            .map_err(|_| AuditError::Malformed("acknowledgement hash"))
    }

    pub(crate) fn signature_bytes(&self) -> Result<[u8; 64], AuditError> {
        let bytes = hex::decode(&self.signature)
            .map_err(|_| AuditError::Malformed("acknowledgement signature"))?;
        bytes
            .try_into()
            .map_err(|_| AuditError::Malformed("acknowledgement signature"))
    }
}

fn valid_key_id(key_id: &str) -> bool {
    !key_id.is_empty()
        && key_id.len() <= 64
        && key_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Signs checkpoints. Holds an Ed25519 private key: keep it out of the database, ideally in a
/// separate service.
pub struct CheckpointSigner {
    key_id: String,
    key: SigningKey,
}

impl fmt::Debug for CheckpointSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CheckpointSigner")
            .field("key_id", &self.key_id)
            .field("key", &"[redacted]")
            .finish()
    }
}

impl CheckpointSigner {
    /// A new random key named `key_id` (`[A-Za-z0-9._-]`, at most 64 bytes).
    ///
    /// # Errors
    /// [`AuditError::InvalidKey`] for a bad key id or when the OS random generator fails.
    pub fn generate(key_id: &str) -> Result<Self, AuditError> {
        let mut secret = SecretBox::new(Box::new([0u8; 32]));
        getrandom::fill(secret.expose_secret_mut()).map_err(|_| AuditError::InvalidKey)?;
        Self::from_secret(key_id, &secret)
    }

    /// The signer for a stored 32-byte Ed25519 secret.
    ///
    /// # Errors
    /// [`AuditError::InvalidKey`] for a bad key id.
    pub fn from_secret(key_id: &str, secret: &SecretBox<[u8; 32]>) -> Result<Self, AuditError> {
        if !valid_key_id(key_id) {
            return Err(AuditError::InvalidKey);
        }
        Ok(Self {
            key_id: key_id.to_owned(),
            key: SigningKey::from_bytes(secret.expose_secret()),
        })
    }

    /// The 32-byte secret, to store it (handle with care: expose it only to write it out).
    #[must_use]
    pub fn secret(&self) -> SecretBox<[u8; 32]> {
        SecretBox::init_with_mut(|bytes: &mut [u8; 32]| {
            *bytes = *Zeroizing::new(self.key.to_bytes());
        })
    }

    /// The public half, to give to verifiers.
    #[must_use]
    pub fn verifying_key(&self) -> CheckpointKey {
        CheckpointKey {
            key_id: self.key_id.clone(),
            key: self.key.verifying_key(),
        }
    }

    /// Signs `tenant`'s head `(seq, hash)` now.
    ///
    /// # Errors
    /// [`AuditError::Malformed`] if the clock is outside RFC 3339.
    pub fn sign(
        &self,
        tenant: TenantId,
        seq: u64,
        hash: &ChainHash,
    ) -> Result<Checkpoint, AuditError> {
        self.sign_at(tenant, seq, hash, now_micros())
    }

    pub(crate) fn sign_at(
        &self,
        tenant: TenantId,
        seq: u64,
        hash: &ChainHash,
        at: OffsetDateTime,
    ) -> Result<Checkpoint, AuditError> {
        self.sign_checkpoint(Checkpoint {
            tenant: tenant.to_string(),
            seq,
            hash: hex::encode(hash),
            signed_at: format_time(at)?,
            key_id: self.key_id.clone(),
            signature: String::new(),
            prune_cutoff: None,
        })
    }

    /// Signs a retention anchor: the chain may start after `seq` because events before
    /// `cutoff` were pruned.
    pub(crate) fn sign_prune_anchor(
        &self,
        tenant: TenantId,
        seq: u64,
        hash: &ChainHash,
        cutoff: OffsetDateTime,
    ) -> Result<Checkpoint, AuditError> {
        self.sign_checkpoint(Checkpoint {
            tenant: tenant.to_string(),
            seq,
            hash: hex::encode(hash),
            signed_at: format_time(now_micros())?,
            key_id: self.key_id.clone(),
            signature: String::new(),
            prune_cutoff: Some(format_time(cutoff)?),
        })
    }

    /// Signs the acknowledgement of a break (see [`Acknowledgement`]).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn sign_acknowledgement(
        &self,
        tenant: TenantId,
        break_seq: u64,
        kind: &str,
        resume: (u64, &ChainHash),
        by: &str,
        reason: &str,
    ) -> Result<Acknowledgement, AuditError> {
        let mut ack = Acknowledgement {
            tenant: tenant.to_string(),
            break_seq,
            kind: kind.to_owned(),
            resume_seq: resume.0,
            resume_hash: hex::encode(resume.1),
            by: by.to_owned(),
            reason: reason.to_owned(),
            signed_at: format_time(now_micros())?,
            key_id: self.key_id.clone(),
            signature: String::new(),
        };
        ack.signature = hex::encode(self.key.sign(ack.message().as_bytes()).to_bytes());
        Ok(ack)
    }

    fn sign_checkpoint(&self, mut checkpoint: Checkpoint) -> Result<Checkpoint, AuditError> {
        let signature = self.key.sign(checkpoint.message().as_bytes());
        checkpoint.signature = hex::encode(signature.to_bytes());
        Ok(checkpoint)
    }
}

/// A named Ed25519 public key that verifies checkpoints.
#[derive(Clone, PartialEq, Eq)]
pub struct CheckpointKey {
    key_id: String,
    key: VerifyingKey,
}

impl fmt::Debug for CheckpointKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CheckpointKey")
            .field("key_id", &self.key_id)
            .field("key", &self.to_hex())
            .finish()
    }
}

impl CheckpointKey {
    /// A key from its id and 64 hex characters.
    ///
    /// # Errors
    /// [`AuditError::InvalidKey`] for a bad id, bad hex or a point that is not a valid key.
    pub fn from_hex(key_id: &str, hex_key: &str) -> Result<Self, AuditError> {
        if !valid_key_id(key_id) {
            return Err(AuditError::InvalidKey);
        }
        let bytes: [u8; 32] = hex::decode(hex_key.trim())
            .map_err(|_| AuditError::InvalidKey)?
            .try_into()
            .map_err(|_| AuditError::InvalidKey)?;
        let key = VerifyingKey::from_bytes(&bytes).map_err(|_| AuditError::InvalidKey)?;
        Ok(Self {
            key_id: key_id.to_owned(),
            key,
        })
    }

    /// The key id.
    #[must_use]
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The key as 64 hex characters.
    #[must_use]
    pub fn to_hex(&self) -> String {
        hex::encode(self.key.as_bytes())
    }
}

/// The keys a verifier trusts. A checkpoint signed by any other key is not trusted.
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys {
    keys: Vec<CheckpointKey>,
}

impl TrustedKeys {
    /// No keys: every checkpoint is rejected.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Trusts `key` too.
    #[must_use]
    pub fn with(mut self, key: CheckpointKey) -> Self {
        self.keys.push(key);
        self
    }

    /// Whether `checkpoint` carries a valid signature by a trusted key (strict Ed25519
    /// verification: no malleable or small-order signatures).
    #[must_use]
    pub fn verifies(&self, checkpoint: &Checkpoint) -> bool {
        let Ok(signature) = checkpoint.signature_bytes() else {
            return false;
        };
        self.signed_by(&checkpoint.key_id, &checkpoint.message(), &signature)
    }

    /// Whether `ack` carries a valid signature by a trusted key.
    #[must_use]
    pub fn verifies_acknowledgement(&self, ack: &Acknowledgement) -> bool {
        let Ok(signature) = ack.signature_bytes() else {
            return false;
        };
        self.signed_by(&ack.key_id, &ack.message(), &signature)
    }

    fn signed_by(&self, key_id: &str, message: &str, signature: &[u8; 64]) -> bool {
        let signature = Signature::from_bytes(signature);
        self.keys
            .iter()
            .filter(|k| k.key_id == key_id)
            .any(|k| k.key.verify_strict(message.as_bytes(), &signature).is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_checkpoint_verifies_and_any_change_breaks_it() {
        let signer = CheckpointSigner::generate("k1").unwrap();
        let keys = TrustedKeys::new().with(signer.verifying_key());
        let tenant = TenantId::new_random();
        let cp = signer.sign(tenant, 42, &[7; 32]).unwrap();
        assert!(keys.verifies(&cp));
        let mut moved = cp.clone();
        moved.seq = 41;
        assert!(!keys.verifies(&moved));
        let mut other = cp.clone();
        other.tenant = TenantId::new_random().to_string();
        assert!(!keys.verifies(&other));
        let mut rehashed = cp.clone();
        rehashed.hash = hex::encode([8; 32]);
        assert!(!keys.verifies(&rehashed));
        let mut relabelled = cp.clone();
        relabelled.key_id = "k2".into();
        assert!(!keys.verifies(&relabelled));
        let mut garbage = cp.clone();
        garbage.signature = "zz".into();
        assert!(!keys.verifies(&garbage));
        // An ordinary checkpoint cannot be turned into a retention anchor.
        let mut anchor = cp;
        anchor.prune_cutoff = Some("2026-01-01T00:00:00.000000Z".into());
        assert!(!keys.verifies(&anchor));
    }

    #[test]
    fn a_checkpoint_by_an_untrusted_key_is_rejected() {
        let mallory = CheckpointSigner::generate("k1").unwrap();
        let honest = CheckpointSigner::generate("k1").unwrap();
        let keys = TrustedKeys::new().with(honest.verifying_key());
        let cp = mallory.sign(TenantId::new_random(), 1, &[0; 32]).unwrap();
        assert!(!keys.verifies(&cp));
        assert!(!TrustedKeys::new().verifies(&cp));
    }

    #[test]
    fn keys_round_trip_and_debug_hides_the_secret() {
        let signer = CheckpointSigner::generate("prod-2026").unwrap();
        let again = CheckpointSigner::from_secret("prod-2026", &signer.secret()).unwrap();
        assert_eq!(signer.verifying_key(), again.verifying_key());
        let public = signer.verifying_key();
        assert_eq!(
            CheckpointKey::from_hex("prod-2026", &public.to_hex()).unwrap(),
            public
        );
        let debug = format!("{signer:?}");
        let secret = hex::encode(signer.secret().expose_secret());
        assert!(!debug.contains(&secret));
        assert!(debug.contains("redacted"));
        let shown = format!("{:?}", signer.secret());
        assert!(
            !shown.contains(&secret) && !shown.contains(&secret[..4]),
            "{shown}"
        );
        assert!(CheckpointSigner::generate("bad id").is_err());
        assert!(CheckpointKey::from_hex("k", "00").is_err());
    }
}
