//! Blind indexes: equality lookups on encrypted columns without decrypting every row.

use hmac::Mac;

use crate::CryptoError;
use crate::key::{KeyMaterial, derive, hmac};

/// How a value is normalised before indexing, so that lookups match the way users type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Normalize {
    /// Byte-for-byte.
    Exact,
    /// Surrounding whitespace removed and lowercased (Unicode-aware).
    TrimLowercase,
}

impl Normalize {
    fn apply<'a>(self, value: &'a str) -> std::borrow::Cow<'a, str> {
        match self {
            Self::Exact => value.into(),
            Self::TrimLowercase => {
                let trimmed = value.trim();
                if trimmed.chars().any(char::is_uppercase) {
                    trimmed.to_lowercase().into()
                } else {
                    trimmed.into()
                }
            }
        }
    }
}

/// The root key of all blind indexes. It is separate from the encryption keys, so rotating an
/// encryption key leaves every index unchanged.
pub struct BlindIndexKey {
    root: hmac::Hmac<sha2::Sha256>,
}

impl std::fmt::Debug for BlindIndexKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BlindIndexKey([redacted])")
    }
}

impl BlindIndexKey {
    /// A root key from key material.
    ///
    /// # Errors
    /// [`CryptoError::InvalidKeyMaterial`] (not expected for 32-byte material).
    pub fn new(material: &KeyMaterial) -> Result<Self, CryptoError> {
        let root = derive(material, b"field-crypto/v1/blind-index")?;
        Ok(Self {
            root: hmac(root.as_ref())?,
        })
    }

    /// The indexer for one (tenant, table, column, index name): its own key, so different
    /// tenants (and columns) get different index values for the same input.
    /// `len` is the output length in bytes (8..=32): shorter leaks less (more collisions to
    /// filter after decrypting), longer gives fewer false positives.
    ///
    /// # Errors
    /// [`CryptoError::InvalidIndexLength`].
    pub fn indexer(
        &self,
        tenant: impl AsRef<[u8]>,
        table: &str,
        column: &str,
        index: &str,
        normalize: Normalize,
        len: usize,
    ) -> Result<BlindIndexer, CryptoError> {
        if !(8..=32).contains(&len) {
            return Err(CryptoError::InvalidIndexLength);
        }
        let mut mac = self.root.clone();
        for part in [
            tenant.as_ref(),
            table.as_bytes(),
            column.as_bytes(),
            index.as_bytes(),
        ] {
            let n = u32::try_from(part.len()).unwrap_or(u32::MAX);
            mac.update(&n.to_be_bytes());
            mac.update(part);
        }
        let mut key = mac.finalize().into_bytes();
        let indexer_mac = hmac(key.as_slice());
        zeroize::Zeroize::zeroize(key.as_mut_slice());
        Ok(BlindIndexer {
            mac: indexer_mac?,
            normalize,
            len,
        })
    }
}

/// Computes blind index values for one column of one tenant.
#[derive(Clone)]
pub struct BlindIndexer {
    mac: hmac::Hmac<sha2::Sha256>,
    normalize: Normalize,
    len: usize,
}

impl std::fmt::Debug for BlindIndexer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlindIndexer")
            .field("normalize", &self.normalize)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl BlindIndexer {
    /// The index value of `value` (after normalisation).
    #[must_use]
    pub fn compute(&self, value: &str) -> Vec<u8> {
        self.compute_bytes(self.normalize.apply(value).as_bytes())
    }

    /// The index value of raw bytes (no normalisation).
    #[must_use]
    pub fn compute_bytes(&self, value: &[u8]) -> Vec<u8> {
        let mut mac = self.mac.clone();
        mac.update(value);
        let full = mac.finalize().into_bytes();
        full[..self.len].to_vec()
    }

    /// The index value of an optional value: SQL `NULL` stays `None` (distinct from `""`).
    #[must_use]
    pub fn compute_opt(&self, value: Option<&str>) -> Option<Vec<u8>> {
        value.map(|v| self.compute(v))
    }
}
