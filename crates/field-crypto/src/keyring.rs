//! Versioned keys, sealing and opening.

use std::collections::BTreeMap;
use std::sync::Arc;

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Key, Tag, XChaCha20Poly1305, XNonce};
use hmac::Mac;
use zeroize::Zeroizing;

use crate::format::{
    self, ALG_XCHACHA20POLY1305_HMAC, HEADER_LEN, NONCE_LEN, PREFIX_LEN, TAG_LEN, VERSION,
};
use crate::key::{KeyMaterial, KeyState, derive, hmac};
use crate::random::{OsRandom, RandomSource};
use crate::{Context, CryptoError};

struct Entry {
    state: KeyState,
    aead: XChaCha20Poly1305,
    commit: hmac::Hmac<sha2::Sha256>,
}

/// A set of versioned keys: one active key encrypts, older keys decrypt until retired.
///
/// Rotation: [`add_key`](Self::add_key) (decrypt-only), deploy to every instance,
/// [`promote`](Self::promote) it (new values use it; the old primary becomes decrypt-only),
/// re-encrypt old rows ([`reseal`](Self::reseal)), then [`retire`](Self::retire) the old key or
/// raise the [minimum decryption version](Self::set_min_decrypt_version).
///
/// Decryption selects the key by the id in the header and never tries keys one after another.
pub struct Keyring {
    keys: BTreeMap<u32, Entry>,
    primary: Option<u32>,
    min_decrypt_version: u32,
    random: Arc<dyn RandomSource>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field(
                "keys",
                &self
                    .keys
                    .iter()
                    .map(|(id, e)| (*id, e.state))
                    .collect::<Vec<_>>(),
            )
            .field("primary", &self.primary)
            .field("min_decrypt_version", &self.min_decrypt_version)
            .finish_non_exhaustive()
    }
}

impl Default for Keyring {
    fn default() -> Self {
        Self::new()
    }
}

impl Keyring {
    /// An empty keyring using the operating system's random generator.
    #[must_use]
    pub fn new() -> Self {
        Self::with_random(Arc::new(OsRandom))
    }

    /// An empty keyring drawing nonces from `random`.
    #[must_use]
    pub fn with_random(random: Arc<dyn RandomSource>) -> Self {
        Self {
            keys: BTreeMap::new(),
            primary: None,
            min_decrypt_version: 0,
            random,
        }
    }

    /// Adds key `id` (its version: ids only grow) in the decrypt-only state.
    ///
    /// # Errors
    /// [`CryptoError::DuplicateKey`] if `id` is taken.
    pub fn add_key(&mut self, id: u32, material: &KeyMaterial) -> Result<(), CryptoError> {
        if self.keys.contains_key(&id) {
            return Err(CryptoError::DuplicateKey(id));
        }
        let enc = derive(material, b"field-crypto/v1/aead")?;
        let commit = derive(material, b"field-crypto/v1/commitment")?;
        self.keys.insert(
            id,
            Entry {
                state: KeyState::DecryptOnly,
                aead: XChaCha20Poly1305::new(Key::from_slice(enc.as_ref())),
                commit: hmac(commit.as_ref())?,
            },
        );
        Ok(())
    }

    /// Makes key `id` the one that encrypts; the previous primary becomes decrypt-only.
    ///
    /// # Errors
    /// [`CryptoError::UnknownKey`]; [`CryptoError::KeyOperation`] for a retired key or one below
    /// the minimum decryption version.
    pub fn promote(&mut self, id: u32) -> Result<(), CryptoError> {
        let entry = self.keys.get(&id).ok_or(CryptoError::UnknownKey(id))?;
        if entry.state == KeyState::Retired {
            return Err(CryptoError::KeyOperation(
                "a retired key cannot be promoted",
            ));
        }
        if id < self.min_decrypt_version {
            return Err(CryptoError::KeyOperation(
                "key is below the minimum decryption version",
            ));
        }
        if let Some(old) = self.primary.and_then(|p| self.keys.get_mut(&p)) {
            old.state = KeyState::DecryptOnly;
        }
        if let Some(entry) = self.keys.get_mut(&id) {
            entry.state = KeyState::Active;
        }
        self.primary = Some(id);
        Ok(())
    }

    /// Retires key `id`: it no longer decrypts.
    ///
    /// # Errors
    /// [`CryptoError::UnknownKey`]; [`CryptoError::KeyOperation`] for the primary key.
    pub fn retire(&mut self, id: u32) -> Result<(), CryptoError> {
        if self.primary == Some(id) {
            return Err(CryptoError::KeyOperation(
                "the primary key cannot be retired",
            ));
        }
        let entry = self.keys.get_mut(&id).ok_or(CryptoError::UnknownKey(id))?;
        entry.state = KeyState::Retired;
        Ok(())
    }

    /// Refuses to open ciphertexts whose key id is below `version`.
    ///
    /// # Errors
    /// [`CryptoError::KeyOperation`] if the primary key would fall below it.
    pub fn set_min_decrypt_version(&mut self, version: u32) -> Result<(), CryptoError> {
        if self.primary.is_some_and(|p| p < version) {
            return Err(CryptoError::KeyOperation(
                "the primary key would be below the minimum",
            ));
        }
        self.min_decrypt_version = version;
        Ok(())
    }

    /// The id of the key that encrypts, if any.
    #[must_use]
    pub const fn primary(&self) -> Option<u32> {
        self.primary
    }

    /// The state of key `id`.
    #[must_use]
    pub fn state(&self, id: u32) -> Option<KeyState> {
        self.keys.get(&id).map(|e| e.state)
    }

    /// Encrypts `plaintext` for `context` under the primary key.
    ///
    /// # Errors
    /// [`CryptoError::NoActiveKey`], [`CryptoError::RandomFailure`] (nothing is encrypted
    /// without a fresh nonce), [`CryptoError::EncryptionFailed`].
    pub fn seal(&self, plaintext: &[u8], context: &Context) -> Result<Vec<u8>, CryptoError> {
        let id = self.primary.ok_or(CryptoError::NoActiveKey)?;
        let entry = self.keys.get(&id).ok_or(CryptoError::NoActiveKey)?;
        let mut out = Vec::with_capacity(HEADER_LEN + plaintext.len() + TAG_LEN);
        out.push(VERSION);
        out.push(ALG_XCHACHA20POLY1305_HMAC);
        out.extend_from_slice(&id.to_be_bytes());
        out.resize(PREFIX_LEN, 0);
        self.random.fill(&mut out[6..PREFIX_LEN])?;
        let mut commit = entry.commit.clone();
        commit.update(&out[..PREFIX_LEN]);
        out.extend_from_slice(&commit.finalize().into_bytes());
        out.extend_from_slice(plaintext);
        let (header, body) = out.split_at_mut(HEADER_LEN);
        let aad = aad(header, context);
        let tag = entry
            .aead
            .encrypt_in_place_detached(XNonce::from_slice(&header[6..PREFIX_LEN]), &aad, body)
            .map_err(|_| CryptoError::EncryptionFailed)?;
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// Decrypts `ciphertext`, which must have been sealed for exactly `context`.
    ///
    /// # Errors
    /// [`CryptoError::BelowMinimumVersion`] for a key older than the minimum; otherwise any
    /// failure is [`CryptoError::DecryptionFailed`], whatever the cause.
    pub fn open(&self, ciphertext: &[u8], context: &Context) -> Result<Plaintext, CryptoError> {
        let parsed = format::parse(ciphertext)?;
        if parsed.key_id < self.min_decrypt_version {
            return Err(CryptoError::BelowMinimumVersion {
                key_id: parsed.key_id,
                minimum: self.min_decrypt_version,
            });
        }
        let entry = self
            .keys
            .get(&parsed.key_id)
            .filter(|e| e.state != KeyState::Retired)
            .ok_or(CryptoError::DecryptionFailed)?;
        // The commitment ties the ciphertext to this key: without it, a ciphertext could be
        // crafted to open under two different keys (XChaCha20-Poly1305 is not key-committing).
        let mut commit = entry.commit.clone();
        commit.update(parsed.prefix);
        commit
            .verify_slice(parsed.commitment)
            .map_err(|_| CryptoError::DecryptionFailed)?;
        let aad = aad(parsed.header, context);
        let mut plaintext = Zeroizing::new(parsed.body.to_vec());
        entry
            .aead
            .decrypt_in_place_detached(
                XNonce::from_slice(parsed.nonce),
                &aad,
                plaintext.as_mut_slice(),
                Tag::from_slice(parsed.tag),
            )
            .map_err(|_| CryptoError::DecryptionFailed)?;
        Ok(Plaintext(plaintext))
    }

    /// Migration mode, for columns being converted from plaintext: a stored value that is not a
    /// ciphertext is returned as legacy plaintext (flagged `true`) and logged at `warn`. A value
    /// that is a ciphertext must open, exactly as with [`open`](Self::open). Use only while
    /// migrating a column, then switch back to `open`, which rejects planted plaintext.
    ///
    /// # Errors
    /// As [`open`](Self::open) for values that carry a ciphertext header.
    pub fn open_migrating(
        &self,
        stored: &[u8],
        context: &Context,
    ) -> Result<(Plaintext, bool), CryptoError> {
        if format::key_id_of(stored).is_ok() {
            return self.open(stored, context).map(|p| (p, false));
        }
        tracing::warn!(
            bytes = stored.len(),
            "field-crypto migration mode: accepted a legacy plaintext value"
        );
        Ok((Plaintext(Zeroizing::new(stored.to_vec())), true))
    }

    /// Seals an optional value: SQL `NULL` stays `None`, an empty value becomes a ciphertext.
    ///
    /// # Errors
    /// As [`seal`](Self::seal).
    pub fn seal_opt(
        &self,
        plaintext: Option<&[u8]>,
        context: &Context,
    ) -> Result<Option<Vec<u8>>, CryptoError> {
        plaintext.map(|p| self.seal(p, context)).transpose()
    }

    /// Opens an optional value: `None` (SQL `NULL`) stays `None`.
    ///
    /// # Errors
    /// As [`open`](Self::open).
    pub fn open_opt(
        &self,
        ciphertext: Option<&[u8]>,
        context: &Context,
    ) -> Result<Option<Plaintext>, CryptoError> {
        ciphertext.map(|c| self.open(c, context)).transpose()
    }

    /// Whether `ciphertext` is sealed under a key other than the primary (so a re-encryption job
    /// should move it).
    ///
    /// # Errors
    /// [`CryptoError::DecryptionFailed`] for bytes that are not a ciphertext.
    pub fn needs_reseal(&self, ciphertext: &[u8]) -> Result<bool, CryptoError> {
        Ok(Some(format::key_id_of(ciphertext)?) != self.primary)
    }

    /// Re-encrypts `ciphertext` under the primary key if it is under another one; `None` when
    /// it is already current.
    ///
    /// # Errors
    /// As [`open`](Self::open) and [`seal`](Self::seal).
    pub fn reseal(
        &self,
        ciphertext: &[u8],
        context: &Context,
    ) -> Result<Option<Vec<u8>>, CryptoError> {
        if !self.needs_reseal(ciphertext)? {
            return Ok(None);
        }
        let plaintext = self.open(ciphertext, context)?;
        self.seal(plaintext.as_bytes(), context).map(Some)
    }
}

/// A decrypted value: zeroized on drop, and `Debug` never shows it.
pub struct Plaintext(Zeroizing<Vec<u8>>);

impl Plaintext {
    /// The bytes.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The bytes, still zeroized on drop.
    #[must_use]
    pub fn into_zeroizing(self) -> Zeroizing<Vec<u8>> {
        self.0
    }
}

impl std::fmt::Debug for Plaintext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Plaintext([redacted; {} bytes])", self.0.len())
    }
}

fn aad(header: &[u8], context: &Context) -> Vec<u8> {
    let mut aad = Vec::with_capacity(header.len() + context.as_bytes().len());
    aad.extend_from_slice(header);
    aad.extend_from_slice(context.as_bytes());
    aad
}

// Compile-time check that nonce length matches the cipher's.
const _: () = assert!(NONCE_LEN == 24);
