//! Tenant-keyed pseudonyms.

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretBox};
use sha2::Sha256;
use tenant_scope::TenantId;
use zeroize::{Zeroize, ZeroizeOnDrop};

use super::ScrubError;

/// A versioned pseudonymisation master key (32 secret bytes).
///
/// Per-tenant keys are derived from it, so one master key serves every tenant while a
/// pseudonym from one tenant says nothing about another. Debug output never shows the key;
/// the bytes are zeroised on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct PseudonymKey {
    key: [u8; 32],
    version: u32,
}

impl PseudonymKey {
    /// A key with its version (written into every pseudonym made with it). `key` is a
    /// [`SecretBox`], or a `Box<[u8; 32]>` (moved into one, so it is zeroized when dropped).
    #[must_use]
    pub fn new(version: u32, key: impl Into<SecretBox<[u8; 32]>>) -> Self {
        let key = key.into();
        Self {
            key: *key.expose_secret(),
            version,
        }
    }

    /// The version.
    #[must_use]
    pub fn version(&self) -> u32 {
        self.version
    }
}

impl std::fmt::Debug for PseudonymKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PseudonymKey")
            .field("version", &self.version)
            .field("key", &format_args!("[redacted]"))
            .finish()
    }
}

/// Makes one tenant's pseudonyms under one key version.
pub(super) struct TenantPseudonymiser {
    mac: Hmac<Sha256>,
    version: u32,
}

impl TenantPseudonymiser {
    /// `HMAC-SHA256(master, "audit-log pseudonym v<version>\0" || tenant UUID bytes)`.
    pub(super) fn derive(key: &PseudonymKey, tenant: TenantId) -> Result<Self, ScrubError> {
        let mut master =
            <Hmac<Sha256> as Mac>::new_from_slice(&key.key).map_err(|_| ScrubError::Pseudonym)?;
        master.update(format!("audit-log pseudonym v{}\0", key.version).as_bytes());
        master.update(tenant.as_uuid().as_bytes());
        let mut tenant_key = master.finalize().into_bytes();
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(tenant_key.as_slice());
        tenant_key.as_mut_slice().zeroize();
        Ok(Self {
            mac: mac.map_err(|_| ScrubError::Pseudonym)?,
            version: key.version,
        })
    }

    /// `pn:v<version>:` and the first 128 bits of `HMAC-SHA256(tenant key, value)` in hex.
    pub(super) fn pseudonym(&self, normalised: &str) -> String {
        let mut mac = self.mac.clone();
        mac.update(normalised.as_bytes());
        let digest = mac.finalize().into_bytes();
        format!(
            "pn:v{}:{}",
            self.version,
            hex::encode(digest.get(..16).unwrap_or_default())
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_key() {
        let input = SecretBox::new(Box::new([0xab; 32]));
        let shown = format!("{input:?}");
        assert!(!shown.contains("171") && !shown.contains("ab"), "{shown}");
        let key = PseudonymKey::new(3, input);
        let shown = format!("{key:?}");
        assert_eq!(shown, "PseudonymKey { version: 3, key: [redacted] }");
    }

    #[test]
    fn known_answer() {
        // Recomputed independently from the documented construction.
        let tenant: TenantId = "7f1c2a4e-5b6d-4e8f-9a0b-1c2d3e4f5a6b".parse().unwrap();
        let key = PseudonymKey::new(2, Box::new([1; 32]));
        let p = TenantPseudonymiser::derive(&key, tenant).unwrap();
        let mut outer = <Hmac<Sha256> as Mac>::new_from_slice(&[1; 32]).unwrap();
        outer.update(b"audit-log pseudonym v2\0");
        outer.update(tenant.as_uuid().as_bytes());
        let tenant_key = outer.finalize().into_bytes();
        let mut inner = <Hmac<Sha256> as Mac>::new_from_slice(&tenant_key).unwrap();
        inner.update(b"a@example.com");
        let expected = format!(
            "pn:v2:{}",
            hex::encode(&inner.finalize().into_bytes()[..16])
        );
        assert_eq!(p.pseudonym("a@example.com"), expected);
        assert_eq!(expected.len(), "pn:v2:".len() + 32);
    }
}
