//! The keys the service is given: kept outside the database, the same on every instance.

/// The keys the service needs: field encryption (TOTP seeds), the audit log's pseudonyms and
/// session rows.
pub struct Keys {
    /// Seals TOTP seeds.
    pub field: secrecy::SecretBox<[u8; 32]>,
    /// Pseudonymises personal data in audit records.
    pub pseudonym: secrecy::SecretBox<[u8; 32]>,
    /// Signs session rows (so a row the database role writes itself is no session).
    pub session: secrecy::SecretBox<[u8; 32]>,
}
