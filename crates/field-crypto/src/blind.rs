//! Blind indexes: equality lookups on encrypted columns without decrypting every row.

use std::borrow::Cow;

use hmac::Mac;
use unicode_normalization::UnicodeNormalization;

use crate::CryptoError;
use crate::key::{KeyMaterial, derive, hmac};

/// The canonical form a value is put in before it is indexed, so that lookups match the way
/// users type. Store the value in the same form ([`Normalize::canonical`] or
/// [`BlindIndexer::canonical`]): then a lookup finds a row exactly when the canonical forms
/// are equal, and never a row whose stored value differs from what was looked up.
///
/// The index is an HMAC of the canonical form's UTF-8 bytes and of nothing else, so two values
/// with different canonical forms share an index value only by a truncated-HMAC collision
/// (about 2<sup>-8·len</sup>; filter those after decrypting).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Normalize {
    /// Byte-for-byte: the canonical form is the value itself. Nothing folds, so
    /// look-alike characters (the Kelvin sign `K` U+212A and the letter `K`) index differently,
    /// exactly as they are stored differently.
    Exact,
    /// Unicode compatibility folding, lowercasing and trimming, applied until the result no
    /// longer changes:
    ///
    /// 1. NFKC (Unicode compatibility composition): the Kelvin sign becomes `K`, the Ohm
    ///    sign `Ω` (Greek capital omega), the Angstrom sign `Å`, fullwidth `Ａ` becomes `A`,
    ///    ligatures and mathematical letters become plain letters, and differently composed
    ///    spellings (`é` as one code point or as `e` + combining accent) become one;
    /// 2. lowercase (Unicode `to_lowercase`, not full case folding: `ß` stays `ß`);
    /// 3. NFKC again (lowercasing can leave a string that is not in NFKC);
    /// 4. leading and trailing Unicode white space removed.
    ///
    /// So `" Alice@Example.COM "`, `"alice@example.com"` and `"ａｌｉｃｅ@example.com"` share one
    /// canonical form and one index; `K` (Kelvin sign), `K` and `k` fold to `k`. Characters
    /// that only look alike but are not compatibility-equivalent (Cyrillic `а` and Latin `a`)
    /// stay distinct, in the index and in the stored canonical value.
    TrimLowercase,
}

/// Rounds of folding after which the canonical form is taken as it is. One round reaches
/// the fixed point for every string in practice; the bound keeps the work linear regardless.
const MAX_CANONICAL_ROUNDS: usize = 4;

impl Normalize {
    /// The canonical form of `value`: what [`BlindIndexer::compute`] indexes, and the form the
    /// application should store so the stored value and its index always agree. Applying it
    /// twice gives the same result as applying it once.
    #[must_use]
    pub fn canonical(self, value: &str) -> Cow<'_, str> {
        match self {
            Self::Exact => Cow::Borrowed(value),
            Self::TrimLowercase if value.is_ascii() => {
                let trimmed = value.trim();
                if trimmed.bytes().any(|b| b.is_ascii_uppercase()) {
                    Cow::Owned(trimmed.to_ascii_lowercase())
                } else {
                    Cow::Borrowed(trimmed)
                }
            }
            Self::TrimLowercase => {
                let mut current = value.to_owned();
                for _ in 0..MAX_CANONICAL_ROUNDS {
                    let next = fold_once(&current);
                    if next == current {
                        break;
                    }
                    current = next;
                }
                Cow::Owned(current)
            }
        }
    }
}

/// One round of [`Normalize::TrimLowercase`]: NFKC, lowercase, NFKC, trim.
fn fold_once(value: &str) -> String {
    let lowered = value.nfkc().collect::<String>().to_lowercase();
    lowered.nfkc().collect::<String>().trim().to_owned()
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
    /// The index value of `value`: the HMAC of its [canonical form](Normalize::canonical).
    #[must_use]
    pub fn compute(&self, value: &str) -> Vec<u8> {
        self.compute_bytes(self.normalize.canonical(value).as_bytes())
    }

    /// The canonical form of `value` under this indexer's [`Normalize`]: store this, so the
    /// stored value is exactly what its index stands for.
    #[must_use]
    pub fn canonical<'a>(&self, value: &'a str) -> Cow<'a, str> {
        self.normalize.canonical(value)
    }

    /// The index value of raw bytes (no normalisation: the caller has put them in the
    /// canonical form, or indexes bytes that have none).
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
