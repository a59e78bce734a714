//! Where nonces and keys come from.

use crate::CryptoError;

/// A source of cryptographically secure random bytes. A failure makes the operation fail;
/// nothing ever falls back to a weaker source or a zero nonce.
pub trait RandomSource: Send + Sync + 'static {
    /// Fills `dest` with random bytes.
    ///
    /// # Errors
    /// [`CryptoError::RandomFailure`] when no randomness is available.
    fn fill(&self, dest: &mut [u8]) -> Result<(), CryptoError>;
}

/// The operating system's generator (`getrandom`).
#[derive(Debug, Clone, Copy, Default)]
pub struct OsRandom;

impl RandomSource for OsRandom {
    fn fill(&self, dest: &mut [u8]) -> Result<(), CryptoError> {
        getrandom::fill(dest).map_err(|_| CryptoError::RandomFailure)
    }
}
