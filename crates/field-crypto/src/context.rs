//! What a ciphertext is bound to.

/// The place a value lives: tenant, table, column, row (and a schema version). Every seal and
/// open names one, and it is authenticated as associated data, so a ciphertext copied to another
/// row, column, table or tenant does not open.
///
/// The encoding is unambiguous: each part is length-prefixed, so `("ab", "c")` and `("a", "bc")`
/// never collide.
#[derive(Clone, PartialEq, Eq)]
pub struct Context {
    encoded: Vec<u8>,
}

const CONTEXT_LABEL: &[u8] = b"field-crypto/context/v1";

impl Context {
    /// The context of `table.column` in `row` of `tenant`, schema version 1.
    ///
    /// `tenant` and `row` are byte strings so any identifier type fits (a UUID's bytes, a
    /// big-endian integer, a text key).
    #[must_use]
    pub fn new(tenant: impl AsRef<[u8]>, table: &str, column: &str, row: impl AsRef<[u8]>) -> Self {
        let parts: [&[u8]; 4] = [
            tenant.as_ref(),
            table.as_bytes(),
            column.as_bytes(),
            row.as_ref(),
        ];
        let mut encoded = Vec::with_capacity(
            CONTEXT_LABEL.len() + 4 * 4 + parts.iter().map(|p| p.len()).sum::<usize>() + 4,
        );
        encoded.extend_from_slice(CONTEXT_LABEL);
        for part in parts {
            // Parts longer than 4 GiB cannot occur in a database row; saturate rather than wrap.
            let len = u32::try_from(part.len()).unwrap_or(u32::MAX);
            encoded.extend_from_slice(&len.to_be_bytes());
            encoded.extend_from_slice(part);
        }
        encoded.extend_from_slice(&1u32.to_be_bytes());
        Self { encoded }
    }

    /// The same context under another schema version (bump it when a column's meaning changes).
    #[must_use]
    pub fn with_schema_version(mut self, version: u32) -> Self {
        let at = self.encoded.len() - 4;
        self.encoded[at..].copy_from_slice(&version.to_be_bytes());
        self
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.encoded
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Row identifiers may be personal data; show only the size.
        write!(f, "Context({} bytes)", self.encoded.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_is_unambiguous() {
        let a = Context::new("ab", "c", "d", "e");
        let b = Context::new("a", "bc", "d", "e");
        assert_ne!(a, b);
        assert_ne!(
            Context::new("t", "u", "c", "1"),
            Context::new("t", "u", "c", "1").with_schema_version(2)
        );
    }
}
