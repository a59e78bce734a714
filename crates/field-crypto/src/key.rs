//! Key material and key identities.

use std::fmt;

use secrecy::{ExposeSecret, SecretBox, SecretString};
use zeroize::{Zeroize, Zeroizing};

use crate::CryptoError;
use crate::random::RandomSource;

/// 256 bits of secret key material. Zeroized on drop; `Debug` never shows the bytes.
#[derive(Clone)]
pub struct KeyMaterial(Zeroizing<[u8; 32]>);

impl KeyMaterial {
    /// Takes 32 secret bytes: a [`SecretBox`], or a `Box<[u8; 32]>` (moved into one, so it
    /// is zeroized when dropped).
    #[must_use]
    pub fn from_bytes(bytes: impl Into<SecretBox<[u8; 32]>>) -> Self {
        let bytes = bytes.into();
        Self(Zeroizing::new(*bytes.expose_secret()))
    }

    /// Parses 64 hexadecimal characters (for keys kept in environment variables or files):
    /// a [`SecretString`], or a `String` / `&str` (copied into one).
    ///
    /// # Errors
    /// [`CryptoError::InvalidKeyMaterial`] for any other input; the input is not echoed.
    pub fn from_hex(hex: impl Into<SecretString>) -> Result<Self, CryptoError> {
        let hex: SecretString = hex.into();
        let hex = hex.expose_secret().trim().as_bytes();
        if hex.len() != 64 {
            return Err(CryptoError::InvalidKeyMaterial);
        }
        let mut out = Zeroizing::new([0u8; 32]);
        for (i, pair) in hex.chunks_exact(2).enumerate() {
            let hi = nibble(pair[0]).ok_or(CryptoError::InvalidKeyMaterial)?;
            let lo = nibble(pair[1]).ok_or(CryptoError::InvalidKeyMaterial)?;
            out[i] = (hi << 4) | lo;
        }
        Ok(Self(out))
    }

    /// Fresh random key material.
    ///
    /// # Errors
    /// [`CryptoError::RandomFailure`] when the random source fails.
    pub fn generate(random: &dyn RandomSource) -> Result<Self, CryptoError> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        random.fill(bytes.as_mut())?;
        Ok(Self(bytes))
    }

    pub(crate) fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyMaterial([redacted])")
    }
}

/// A keyed HMAC-SHA256. HMAC takes keys of any length, so the error path is unreachable in
/// practice; it is still reported, never unwrapped.
pub(crate) fn hmac(key: &[u8]) -> Result<hmac::Hmac<sha2::Sha256>, CryptoError> {
    use hmac::Mac;
    <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(key)
        .map_err(|_| CryptoError::InvalidKeyMaterial)
}

/// Derives a 32-byte subkey for one purpose, so the AEAD key, the commitment key and the blind
/// index keys are never the same bytes.
pub(crate) fn derive(
    material: &KeyMaterial,
    label: &[u8],
) -> Result<Zeroizing<[u8; 32]>, CryptoError> {
    use hmac::Mac;
    let mut mac = hmac(material.expose())?;
    mac.update(label);
    let mut tag = mac.finalize().into_bytes();
    let mut out = Zeroizing::new([0u8; 32]);
    out.copy_from_slice(&tag);
    tag.zeroize();
    Ok(out)
}

/// The lifecycle state of a key in a [`Keyring`](crate::Keyring).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyState {
    /// The primary key: encrypts new values, and decrypts.
    Active,
    /// Decrypts existing values only (a newly added key, or a former primary).
    DecryptOnly,
    /// Kept for the record; neither encrypts nor decrypts.
    Retired,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_key_bytes() {
        let k = KeyMaterial::from_bytes(Box::new([0xab; 32]));
        let shown = format!("{k:?} {:?}", k.clone());
        assert!(!shown.to_lowercase().contains("ab"), "{shown}");
        assert!(shown.contains("redacted"));
    }

    #[test]
    fn secret_inputs_never_show_in_debug() {
        let hex = "ab".repeat(32);
        let secret = SecretString::from(hex.clone());
        let k = KeyMaterial::from_hex(secret.clone()).expect("valid hex");
        let boxed = SecretBox::new(Box::new([0xab; 32]));
        let shown = format!("{secret:?} {boxed:?} {k:?}");
        assert!(!shown.contains(&hex) && !shown.contains("171"), "{shown}");
        assert_eq!(
            KeyMaterial::from_bytes(boxed).expose(),
            k.expose(),
            "the same key either way"
        );
    }

    #[test]
    fn hex_parsing_is_strict() {
        let ok = "00".repeat(32);
        assert!(KeyMaterial::from_hex(ok.as_str()).is_ok());
        for bad in ["", "0", &"0".repeat(63), &"0".repeat(65), &"zz".repeat(32)] {
            assert_eq!(
                KeyMaterial::from_hex(bad).err(),
                Some(CryptoError::InvalidKeyMaterial)
            );
        }
    }
}
