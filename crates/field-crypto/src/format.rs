//! The ciphertext format (version 1).
//!
//! ```text
//! offset  size  field
//!      0     1  format version (1)
//!      1     1  algorithm (1 = XChaCha20-Poly1305 with an HMAC-SHA256 key commitment)
//!      2     4  key id, big-endian
//!      6    24  nonce (random per encryption)
//!     30    32  key commitment: HMAC-SHA256(commitment subkey, bytes 0..30)
//!     62     n  ciphertext
//!   62+n    16  Poly1305 tag
//! ```
//!
//! Bytes 0..62 (the whole header) and the [`Context`](crate::Context) encoding are the AEAD's
//! associated data, so no header byte can change without the tag failing.

use crate::CryptoError;

pub(crate) const VERSION: u8 = 1;
pub(crate) const ALG_XCHACHA20POLY1305_HMAC: u8 = 1;
pub(crate) const NONCE_LEN: usize = 24;
pub(crate) const COMMIT_LEN: usize = 32;
pub(crate) const TAG_LEN: usize = 16;
/// Bytes covered by the commitment.
pub(crate) const PREFIX_LEN: usize = 2 + 4 + NONCE_LEN;
pub(crate) const HEADER_LEN: usize = PREFIX_LEN + COMMIT_LEN;
/// The smallest valid ciphertext: a header and a tag around an empty value.
pub(crate) const MIN_LEN: usize = HEADER_LEN + TAG_LEN;

/// A parsed header, borrowing from the ciphertext.
pub(crate) struct Parsed<'a> {
    pub(crate) key_id: u32,
    pub(crate) prefix: &'a [u8],
    pub(crate) nonce: &'a [u8],
    pub(crate) commitment: &'a [u8],
    pub(crate) header: &'a [u8],
    pub(crate) body: &'a [u8],
    pub(crate) tag: &'a [u8],
}

/// Parses untrusted bytes. Any deviation is [`CryptoError::DecryptionFailed`].
pub(crate) fn parse(bytes: &[u8]) -> Result<Parsed<'_>, CryptoError> {
    if bytes.len() < MIN_LEN || bytes[0] != VERSION || bytes[1] != ALG_XCHACHA20POLY1305_HMAC {
        return Err(CryptoError::DecryptionFailed);
    }
    let key_id = u32::from_be_bytes([bytes[2], bytes[3], bytes[4], bytes[5]]);
    let (header, rest) = bytes.split_at(HEADER_LEN);
    let (body, tag) = rest.split_at(rest.len() - TAG_LEN);
    Ok(Parsed {
        key_id,
        prefix: &header[..PREFIX_LEN],
        nonce: &header[6..PREFIX_LEN],
        commitment: &header[PREFIX_LEN..],
        header,
        body,
        tag,
    })
}

/// The key id of a ciphertext, without opening it.
///
/// # Errors
/// [`CryptoError::DecryptionFailed`] when the bytes are not a version-1 ciphertext.
pub fn key_id_of(ciphertext: &[u8]) -> Result<u32, CryptoError> {
    parse(ciphertext).map(|p| p.key_id)
}
