//! Field-level encryption at rest, bound to where each value lives.
//!
//! Disk and transport encryption do not help when someone reads the database itself: a backup,
//! a replica, a support query, a SQL injection. This crate encrypts sensitive columns (TOTP
//! seeds first) so they are opaque in PostgreSQL, and binds every ciphertext to its
//! [`Context`] — tenant, table, column, row — so a ciphertext copied to another row, column or
//! tenant does not open.
//!
//! - XChaCha20-Poly1305 with a random 192-bit nonce per value; a versioned header (format,
//!   algorithm, key id) that is authenticated whole; a key commitment so one ciphertext cannot
//!   open under two keys.
//! - [`Keyring`]: versioned keys (active, decrypt-only, retired), promote and retire, a minimum
//!   decryption version, [`Keyring::reseal`] for re-encryption; decryption selects the key by id
//!   and never tries keys in turn.
//! - [`BlindIndexKey`]: keyed, tenant-separated, truncated HMAC indexes for equality lookups.
//! - Opaque errors: every malformed or foreign ciphertext is [`CryptoError::DecryptionFailed`].
//!
//! ```
//! use field_crypto::{Context, KeyMaterial, Keyring, OsRandom};
//!
//! let mut keyring = Keyring::new();
//! keyring.add_key(1, &KeyMaterial::generate(&OsRandom)?)?;
//! keyring.promote(1)?;
//!
//! let tenant = [7u8; 16];            // e.g. the tenant's UUID bytes
//! let user_id = 42u64.to_be_bytes(); // the row's primary key
//! let ctx = Context::new(tenant, "users", "totp_seed", user_id);
//!
//! let stored = keyring.seal(b"JBSWY3DPEHPK3PXP", &ctx)?;   // goes into a bytea column
//! let seed = keyring.open(&stored, &ctx)?;
//! assert_eq!(seed.as_bytes(), b"JBSWY3DPEHPK3PXP");
//!
//! // The same bytes in another user's row do not open.
//! let other = Context::new(tenant, "users", "totp_seed", 43u64.to_be_bytes());
//! assert!(keyring.open(&stored, &other).is_err());
//! # Ok::<(), field_crypto::CryptoError>(())
//! ```
//!
//! Opening without naming a context does not compile:
//!
//! ```compile_fail
//! # let keyring = field_crypto::Keyring::new();
//! # let stored: Vec<u8> = Vec::new();
//! let value = keyring.open(&stored); // error: `open` takes the row's `Context` too
//! ```
//!
//! What it does not protect against: an attacker inside the application process (who holds the
//! keys), and the length of values (ciphertext length is plaintext length + 78 bytes).
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod blind;
mod context;
mod envelope;
mod error;
pub mod format;
mod key;
mod keyring;
mod random;
#[cfg(feature = "sqlx")]
mod reencrypt;
mod sealed;

pub use blind::{BlindIndexKey, BlindIndexer, Normalize};
pub use context::Context;
pub use envelope::{
    KeyProvider, LocalKeyProvider, WrappedKey, new_tenant_key, tenant_key_label, tenant_keyring,
};
pub use error::CryptoError;
pub use format::key_id_of;
pub use key::{KeyMaterial, KeyState};
pub use keyring::{Keyring, Plaintext};
pub use random::{OsRandom, RandomSource};
#[cfg(feature = "sqlx")]
pub use reencrypt::{Progress, ReencryptError, ReencryptJob};
pub use sealed::Sealed;
/// The [`secrecy`] crate, re-exported: keys are passed in as [`SecretBox`](secrecy::SecretBox)
/// or [`SecretString`](secrecy::SecretString).
pub use secrecy;

// The README's code blocks compile and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
