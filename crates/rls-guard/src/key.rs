//! [`BindingKey`]: the secret that signs tenant bindings.

use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretSlice};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::RlsError;

/// The key that signs tenant bindings when the database enforces signed bindings (see
/// [`schema::ENABLE_SIGNED_BINDINGS_SQL`](crate::schema::ENABLE_SIGNED_BINDINGS_SQL)).
///
/// The owner role creates it at migration and may read it ([`schema::binding_key`](
/// crate::schema::binding_key)); the runtime role cannot. The application holds it in memory
/// only (zeroed on drop) and never prints it: `Debug` shows nothing of it.
#[derive(Clone)]
pub struct BindingKey {
    secret: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for BindingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BindingKey(..)")
    }
}

/// The values `app.bind(tenant, actor, issued_at, signature)` takes, for code that binds its
/// own statements (see [`TenantPool::signed_binding`](crate::TenantPool::signed_binding)).
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SignedBinding {
    /// The tenant, as a UUID string.
    pub tenant: String,
    /// The actor, as a UUID string, or empty.
    pub actor: String,
    /// Seconds since the Unix epoch when it was signed.
    pub issued_at: String,
    /// HMAC-SHA256 of `v1:<tenant>:<actor>:<issued_at>`, hex.
    pub signature: String,
}

impl std::fmt::Debug for SignedBinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignedBinding")
            .field("tenant", &self.tenant)
            .field("actor", &self.actor)
            .field("issued_at", &self.issued_at)
            .finish_non_exhaustive()
    }
}

impl BindingKey {
    /// A key from its 32 bytes, passed as a [`SecretSlice`] (a `Vec<u8>` converts with
    /// `.into()`; it is zeroized when dropped).
    ///
    /// # Errors
    /// [`RlsError::InvalidBindingKey`] unless `bytes` is exactly 32 bytes long.
    pub fn from_bytes(bytes: &SecretSlice<u8>) -> Result<Self, RlsError> {
        let mut secret = Zeroizing::new([0u8; 32]);
        let bytes = bytes.expose_secret();
        if bytes.len() != secret.len() {
            return Err(RlsError::InvalidBindingKey);
        }
        secret.copy_from_slice(bytes);
        Ok(Self { secret })
    }

    /// Signs the binding of `tenant` and `actor` (empty for none) as of now.
    pub(crate) fn sign(&self, tenant: &str, actor: &str) -> Result<SignedBinding, RlsError> {
        // A clock before 1970 signs as 0, which the database refuses as stale: fails closed.
        let issued_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            .to_string();
        let signature = self.mac(&format!("v1:{tenant}:{actor}:{issued_at}"))?;
        Ok(SignedBinding {
            tenant: tenant.to_owned(),
            actor: actor.to_owned(),
            issued_at,
            signature,
        })
    }

    fn mac(&self, message: &str) -> Result<String, RlsError> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.secret.as_slice())
            .map_err(|_| RlsError::InvalidBindingKey)?;
        mac.update(message.as_bytes());
        Ok(hex::encode(mac.finalize().into_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_rfc_4231_hmac_sha256_and_debug_hides_the_key() {
        // RFC 4231 test case 2 is for a 4-byte key; use a 32-byte key of 0x0b and compare with
        // an independent computation of the same construction.
        let key = BindingKey::from_bytes(&vec![0x0b; 32].into()).unwrap();
        let mut reference = <Hmac<Sha256> as Mac>::new_from_slice(&[0x0b; 32]).unwrap();
        reference.update(b"v1:t:a:1");
        assert_eq!(
            key.mac("v1:t:a:1").unwrap(),
            hex::encode(reference.finalize().into_bytes())
        );
        assert_eq!(format!("{key:?}"), "BindingKey(..)");
        assert!(BindingKey::from_bytes(&vec![0; 31].into()).is_err());
        assert!(BindingKey::from_bytes(&vec![0; 33].into()).is_err());
        let signed = key.sign("t", "a").unwrap();
        assert!(!format!("{signed:?}").contains(&signed.signature));
    }

    #[test]
    fn the_secret_input_and_a_struct_holding_the_key_hide_it() {
        #[derive(Debug)]
        #[allow(dead_code)]
        struct Holder {
            key: BindingKey,
        }
        let input: SecretSlice<u8> = vec![0x5a; 32].into();
        let holder = Holder {
            key: BindingKey::from_bytes(&input).unwrap(),
        };
        let shown = format!("{input:?} {holder:?}");
        assert!(
            !shown.contains("90") && !shown.to_lowercase().contains("5a"),
            "{shown}"
        );
    }
}
