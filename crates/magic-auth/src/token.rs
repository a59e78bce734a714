//! Session tokens: what the cookie carries, and what the database keeps of it (a hash).
//!
//! A token is `v1.<tenant>.<session id>.<secret>`: the tenant and the session id (UUIDs, 32 hex
//! digits each) say where to look, the secret (256 bits from the operating system's generator,
//! 64 hex digits) proves possession. The database stores only
//! `SHA-256("magic-auth/session/v1\n" || secret)`; a token is accepted only if the hash of its
//! secret equals the stored one, compared in constant time. Nothing about the tenant or the
//! session id is secret: changing them only makes the lookup miss.

use std::fmt;

use secrecy::SecretString;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tenant_scope::TenantId;
use uuid::Uuid;
use zeroize::{Zeroize, Zeroizing};

use crate::AuthError;

const PREFIX: &str = "v1";
const HASH_DOMAIN: &[u8] = b"magic-auth/session/v1\n";
/// The length of every well-formed token; anything else is refused before parsing.
pub const TOKEN_LEN: usize = 2 + 1 + 32 + 1 + 32 + 1 + 64;

/// The stored form of a token's secret.
pub(crate) type SecretHash = [u8; 32];

/// A session token. Its `Debug` output never shows the secret; it is wiped from memory when
/// dropped.
pub struct SessionToken {
    tenant: TenantId,
    id: Uuid,
    secret: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for SessionToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionToken")
            .field("tenant", &self.tenant)
            .field("id", &self.id)
            .field("secret", &"[redacted]")
            .finish()
    }
}

impl SessionToken {
    /// A new token for a new session of `tenant`.
    ///
    /// # Errors
    /// [`AuthError::Random`] when the operating system's generator fails.
    pub fn generate(tenant: TenantId) -> Result<Self, AuthError> {
        let mut secret = Zeroizing::new([0u8; 32]);
        getrandom::fill(&mut *secret).map_err(|_| AuthError::Random)?;
        Ok(Self {
            tenant,
            id: Uuid::new_v4(),
            secret,
        })
    }

    /// Parses a cookie value. Every malformed input — wrong length, prefix, separator, hex,
    /// UUID, a nil tenant — is the same [`AuthError::InvalidToken`].
    ///
    /// # Errors
    /// [`AuthError::InvalidToken`].
    pub fn parse(value: &SecretString) -> Result<Self, AuthError> {
        use secrecy::ExposeSecret;
        Self::parse_with(value.expose_secret(), PREFIX)
    }

    pub(crate) fn parse_with(value: &str, expected_prefix: &str) -> Result<Self, AuthError> {
        let invalid = || AuthError::InvalidToken;
        if value.len() != TOKEN_LEN || !value.is_ascii() {
            return Err(invalid());
        }
        let mut parts = value.split('.');
        let (Some(prefix), Some(tenant), Some(id), Some(secret), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(invalid());
        };
        let lower_hex = |s: &str| s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if prefix != expected_prefix
            || tenant.len() != 32
            || id.len() != 32
            || secret.len() != 64
            || !lower_hex(tenant)
            || !lower_hex(id)
            || !lower_hex(secret)
        {
            return Err(invalid());
        }
        let tenant = Uuid::try_parse(tenant)
            .ok()
            .and_then(|u| TenantId::from_uuid(u).ok())
            .ok_or_else(invalid)?;
        let id = Uuid::try_parse(id).map_err(|_| invalid())?;
        let mut bytes = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(secret, &mut *bytes).map_err(|_| invalid())?;
        Ok(Self {
            tenant,
            id,
            secret: bytes,
        })
    }

    /// The cookie value, as a [`SecretString`]: expose it
    /// ([`ExposeSecret::expose_secret`](secrecy::ExposeSecret::expose_secret)) only where it is
    /// written into the `Set-Cookie` header ([`session_cookie`](crate::session_cookie) does that).
    #[must_use]
    pub fn to_cookie_value(&self) -> SecretString {
        into_secret(self.encode_with(PREFIX))
    }

    pub(crate) fn encode_with(&self, prefix: &str) -> Zeroizing<String> {
        let mut secret = hex::encode(*self.secret);
        let value = format!(
            "{prefix}.{}.{}.{secret}",
            self.tenant.as_uuid().simple(),
            self.id.simple()
        );
        secret.zeroize();
        Zeroizing::new(value)
    }

    /// The tenant the session belongs to.
    #[must_use]
    pub const fn tenant(&self) -> TenantId {
        self.tenant
    }

    /// The session id.
    #[must_use]
    pub const fn id(&self) -> Uuid {
        self.id
    }

    /// What the database stores.
    #[must_use]
    pub(crate) fn secret_hash(&self) -> SecretHash {
        self.hash_in(HASH_DOMAIN)
    }

    pub(crate) fn hash_in(&self, domain: &[u8]) -> SecretHash {
        hash_secret(domain, self.secret.as_slice())
    }

    /// Whether this token's secret matches `stored`, in constant time.
    #[must_use]
    pub(crate) fn matches(&self, stored: &[u8]) -> bool {
        bool::from(self.secret_hash().as_slice().ct_eq(stored))
    }
}

/// Moves a secret string into a [`SecretString`]. The copy is made into a buffer of exactly
/// its length, so that turning it into a `Box<str>` does not reallocate (which would leave an
/// unzeroized copy behind); the original is zeroized when dropped.
pub(crate) fn into_secret(value: Zeroizing<String>) -> SecretString {
    let secret = secret_copy(&value);
    // Zeroizes the original now.
    drop(value);
    secret
}

/// A [`SecretString`] copy of `value`, made without reallocating (see [`into_secret`]).
pub(crate) fn secret_copy(value: &str) -> SecretString {
    let mut exact = String::with_capacity(value.len());
    exact.push_str(value);
    SecretString::from(exact)
}

/// `SHA-256(domain || secret)`.
pub(crate) fn hash_secret(domain: &[u8], secret: &[u8]) -> SecretHash {
    let mut h = Sha256::new();
    h.update(domain);
    h.update(secret);
    h.finalize().into()
}

/// 256 random bits, hex: a browser-binding verifier or similar one-off secret.
pub(crate) fn random_secret() -> Result<Zeroizing<String>, AuthError> {
    let mut bytes = Zeroizing::new([0u8; 32]);
    getrandom::fill(&mut *bytes).map_err(|_| AuthError::Random)?;
    Ok(Zeroizing::new(hex::encode(*bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_round_trips_and_its_debug_hides_the_secret() {
        use secrecy::ExposeSecret;
        let token = SessionToken::generate(TenantId::new_random()).unwrap();
        let cookie = token.to_cookie_value();
        let value = cookie.expose_secret();
        assert_eq!(value.len(), TOKEN_LEN);
        let parsed = SessionToken::parse(&cookie).unwrap();
        assert_eq!((parsed.tenant(), parsed.id()), (token.tenant(), token.id()));
        assert!(parsed.matches(&token.secret_hash()));
        let secret_hex = value.rsplit('.').next().unwrap().to_owned();
        assert!(!format!("{token:?}").contains(&secret_hex));
        let shown = format!("{cookie:?} {cookie:#?}");
        assert!(!shown.contains(&secret_hex[..8]), "{shown}");
    }

    #[test]
    fn two_tokens_never_share_a_secret_or_id() {
        let t = TenantId::new_random();
        let (a, b) = (
            SessionToken::generate(t).unwrap(),
            SessionToken::generate(t).unwrap(),
        );
        assert_ne!(a.id(), b.id());
        assert_ne!(a.secret_hash(), b.secret_hash());
        assert!(!a.matches(&b.secret_hash()));
    }

    #[test]
    fn malformed_tokens_are_all_the_same_error() {
        use secrecy::ExposeSecret;
        let good = SessionToken::generate(TenantId::new_random())
            .unwrap()
            .to_cookie_value()
            .expose_secret()
            .to_owned();
        let nil = format!("v1.{}{}", "0".repeat(32), &good[35..]);
        let upper = good.to_uppercase().replacen("V1", "v1", 1);
        let mut cases = vec![
            String::new(),
            "v1".into(),
            good[..good.len() - 1].into(),
            format!("{good}0"),
            good.replacen("v1", "v2", 1),
            good.replacen('.', ":", 1),
            upper,
            nil,
            format!("{}g", &good[..good.len() - 1]),
            "x".repeat(100_000),
            good.replace('a', "\u{e9}"),
        ];
        cases.push(format!("v1..{}", &good[4..]));
        for case in cases {
            assert!(
                matches!(
                    SessionToken::parse(&SecretString::from(case.as_str())),
                    Err(AuthError::InvalidToken)
                ),
                "{case:?}"
            );
        }
    }
}
