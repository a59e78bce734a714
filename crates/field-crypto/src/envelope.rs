//! Envelope encryption: data keys wrapped by a key-encryption key (KEK) behind [`KeyProvider`].
//!
//! The database stores only wrapped data keys; the KEK stays with the provider (a local key
//! now, a cloud KMS later). Give each tenant its own data key and one tenant's data can be
//! shredded by deleting its wrapped key, without touching anyone else's.

use std::future::Future;

use crate::{Context, CryptoError, KeyMaterial, Keyring, OsRandom};

/// A data key in wrapped (encrypted) form: safe to store next to the data it protects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedKey(Vec<u8>);

impl WrappedKey {
    /// Wraps stored bytes (as read back from the database).
    #[must_use]
    pub const fn from_bytes(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// The bytes to store.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// Wraps and unwraps data keys. A cloud KMS implements this with its encrypt/decrypt calls.
pub trait KeyProvider: Send + Sync {
    /// Why wrapping or unwrapping failed.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Encrypts `data_key`, bound to `label` (for example the tenant and key id).
    fn wrap(
        &self,
        data_key: &KeyMaterial,
        label: &[u8],
    ) -> impl Future<Output = Result<WrappedKey, Self::Error>> + Send;

    /// Decrypts a wrapped key; fails unless `label` is the one it was wrapped with.
    fn unwrap(
        &self,
        wrapped: &WrappedKey,
        label: &[u8],
    ) -> impl Future<Output = Result<KeyMaterial, Self::Error>> + Send;
}

/// A [`KeyProvider`] whose KEK is held locally (from an environment variable or a file).
pub struct LocalKeyProvider {
    kek: Keyring,
}

impl std::fmt::Debug for LocalKeyProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LocalKeyProvider([redacted])")
    }
}

impl LocalKeyProvider {
    /// A provider with KEK `material` under id `kek_id`.
    ///
    /// # Errors
    /// [`CryptoError::InvalidKeyMaterial`] (not expected for 32-byte material).
    pub fn new(kek_id: u32, material: &KeyMaterial) -> Result<Self, CryptoError> {
        let mut kek = Keyring::new();
        kek.add_key(kek_id, material)?;
        kek.promote(kek_id)?;
        Ok(Self { kek })
    }

    /// Reads the KEK, 64 hex characters, from environment variable `var`.
    ///
    /// # Errors
    /// [`CryptoError::InvalidKeyMaterial`] when the variable is missing or malformed (its value
    /// is never echoed).
    pub fn from_env(kek_id: u32, var: &str) -> Result<Self, CryptoError> {
        let value = secrecy::SecretString::from(
            std::env::var(var).map_err(|_| CryptoError::InvalidKeyMaterial)?,
        );
        Self::new(kek_id, &KeyMaterial::from_hex(value)?)
    }

    /// Reads the KEK, 64 hex characters, from the file at `path`.
    ///
    /// # Errors
    /// [`CryptoError::InvalidKeyMaterial`] when the file is unreadable or malformed.
    pub fn from_file(kek_id: u32, path: &std::path::Path) -> Result<Self, CryptoError> {
        let value = secrecy::SecretString::from(
            std::fs::read_to_string(path).map_err(|_| CryptoError::InvalidKeyMaterial)?,
        );
        Self::new(kek_id, &KeyMaterial::from_hex(value)?)
    }

    fn context(label: &[u8]) -> Context {
        Context::new(label, "field-crypto", "wrapped-data-key", b"")
    }
}

impl KeyProvider for LocalKeyProvider {
    type Error = CryptoError;

    async fn wrap(&self, data_key: &KeyMaterial, label: &[u8]) -> Result<WrappedKey, CryptoError> {
        self.kek
            .seal(data_key.expose(), &Self::context(label))
            .map(WrappedKey)
    }

    async fn unwrap(&self, wrapped: &WrappedKey, label: &[u8]) -> Result<KeyMaterial, CryptoError> {
        let plain = self.kek.open(&wrapped.0, &Self::context(label))?;
        if plain.as_bytes().len() != 32 {
            return Err(CryptoError::DecryptionFailed);
        }
        let mut bytes = secrecy::SecretBox::new(Box::new([0u8; 32]));
        secrecy::ExposeSecretMut::expose_secret_mut(&mut bytes).copy_from_slice(plain.as_bytes());
        Ok(KeyMaterial::from_bytes(bytes))
    }
}

/// The label a tenant's data key `key_id` is wrapped under.
#[must_use]
pub fn tenant_key_label(tenant: &[u8], key_id: u32) -> Vec<u8> {
    let mut label = Vec::with_capacity(tenant.len() + 12);
    label.extend_from_slice(b"tenant");
    label.extend_from_slice(
        &u32::try_from(tenant.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    label.extend_from_slice(tenant);
    label.extend_from_slice(&key_id.to_be_bytes());
    label
}

/// Creates a fresh data key for `tenant` under id `key_id` and returns it wrapped, ready to
/// store (for example in a `tenant_keys (tenant_id, key_id, wrapped bytea)` table).
///
/// # Errors
/// The provider's error; a [`CryptoError::RandomFailure`] arrives through
/// `P::Error: From<CryptoError>`.
pub async fn new_tenant_key<P>(
    provider: &P,
    tenant: &[u8],
    key_id: u32,
) -> Result<WrappedKey, P::Error>
where
    P: KeyProvider,
    P::Error: From<CryptoError>,
{
    let material = KeyMaterial::generate(&OsRandom)?;
    provider
        .wrap(&material, &tenant_key_label(tenant, key_id))
        .await
}

/// Builds a tenant's keyring from its stored wrapped keys, promoting `primary`. A tenant whose
/// wrapped keys were deleted (shredded) gets an empty keyring: its data no longer opens.
///
/// # Errors
/// The provider's error for a key that does not unwrap (wrong tenant, tampered, wrong KEK), or
/// a [`CryptoError`] when `primary` is not among the keys.
pub async fn tenant_keyring<P>(
    provider: &P,
    tenant: &[u8],
    wrapped: &[(u32, WrappedKey)],
    primary: Option<u32>,
) -> Result<Keyring, P::Error>
where
    P: KeyProvider,
    P::Error: From<CryptoError>,
{
    let mut keyring = Keyring::new();
    for (id, key) in wrapped {
        let material = provider.unwrap(key, &tenant_key_label(tenant, *id)).await?;
        keyring.add_key(*id, &material)?;
    }
    if let Some(primary) = primary {
        keyring.promote(primary)?;
    }
    Ok(keyring)
}
