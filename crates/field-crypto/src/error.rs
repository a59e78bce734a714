//! Errors.

/// What went wrong. Decryption failures are deliberately opaque: a truncated, bit-flipped,
/// re-headered, foreign or wrongly-bound ciphertext all give [`CryptoError::DecryptionFailed`],
/// so an attacker learns nothing about which check failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// The ciphertext did not open (any cause).
    #[error("decryption failed")]
    DecryptionFailed,
    /// The ciphertext was sealed with a key older than the keyring's minimum decryption version.
    #[error("ciphertext key version {key_id} is below the minimum decryption version {minimum}")]
    BelowMinimumVersion {
        /// The key id in the ciphertext header.
        key_id: u32,
        /// The keyring's minimum decryption version.
        minimum: u32,
    },
    /// The keyring has no active (primary) key to encrypt with.
    #[error("no active key to encrypt with")]
    NoActiveKey,
    /// The random number source failed; nothing was encrypted.
    #[error("the random number source failed")]
    RandomFailure,
    /// Encryption failed (the value is too large for the cipher).
    #[error("encryption failed")]
    EncryptionFailed,
    /// A key management operation named a key the keyring does not hold.
    #[error("key {0} is not in the keyring")]
    UnknownKey(u32),
    /// A key with this id is already in the keyring.
    #[error("key {0} is already in the keyring")]
    DuplicateKey(u32),
    /// A key management operation is not allowed in the keyring's current state.
    #[error("key operation refused: {0}")]
    KeyOperation(&'static str),
    /// Key material has the wrong length or encoding.
    #[error("invalid key material")]
    InvalidKeyMaterial,
    /// A blind index was configured with an unsupported output length.
    #[error("blind index length must be between 8 and 32 bytes")]
    InvalidIndexLength,
    /// A plaintext value was found where ciphertext was expected, outside migration mode.
    #[error("plaintext found in an encrypted column")]
    PlaintextRejected,
}
