//! Email addresses, validated and normalised once, before any lookup and before any send.

use std::fmt;

use crate::AuthError;

/// A validated, normalised email address: `local@domain`, lowercase, the domain in ASCII
/// (IDNA), the local part an RFC 5322 dot-atom of ASCII characters.
///
/// Refused: control characters (CR/LF header injection), whitespace, quoted local parts (which
/// can hide a second `@`), any `@`-lookalike (`＠` U+FF20, `﹫` U+FE6B), more or fewer than one
/// `@`, empty or dotted-wrong parts, IP-literal domains, domains without a dot, and anything
/// over 254 bytes (local part over 64).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct EmailAddress(String);

impl fmt::Debug for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // An address is personal data: show only its domain.
        write!(f, "EmailAddress(…@{})", self.domain())
    }
}

impl fmt::Display for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

const ATEXT_SPECIALS: &[u8] = b"!#$%&'*+-/=?^_`{|}~";

impl EmailAddress {
    /// Validates and normalises `input` (surrounding whitespace is trimmed).
    ///
    /// # Errors
    /// [`AuthError::InvalidEmail`] for anything outside the rules above.
    pub fn parse(input: &str) -> Result<Self, AuthError> {
        let invalid = || AuthError::InvalidEmail;
        let input = input.trim();
        if input.is_empty() || input.len() > 254 {
            return Err(invalid());
        }
        if input
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || matches!(c, '\u{FF20}' | '\u{FE6B}'))
        {
            return Err(invalid());
        }
        let (local, domain) = input.split_once('@').ok_or_else(invalid)?;
        if domain.contains('@') || local.is_empty() || local.len() > 64 {
            return Err(invalid());
        }
        let atom_ok = |atom: &str| {
            !atom.is_empty()
                && atom
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || ATEXT_SPECIALS.contains(&b))
        };
        if !local.split('.').all(atom_ok) {
            return Err(invalid()); // quoted strings, empty atoms, non-ASCII
        }
        let domain = match url::Host::parse(domain) {
            Ok(url::Host::Domain(d)) => d,
            _ => return Err(invalid()), // IP literals, invalid IDNA, forbidden code points
        };
        let labels_ok = domain.split('.').count() >= 2
            && domain.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !labels_ok {
            return Err(invalid());
        }
        let normalised = format!(
            "{}@{}",
            local.to_ascii_lowercase(),
            domain.to_ascii_lowercase()
        );
        if normalised.len() > 254 {
            return Err(invalid());
        }
        Ok(Self(normalised))
    }

    /// The normalised address.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The domain part.
    #[must_use]
    pub fn domain(&self) -> &str {
        self.0.rsplit_once('@').map_or("", |(_, d)| d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_normalised() {
        for (input, want) in [
            ("Ada@Example.COM", "ada@example.com"),
            (
                "  ada.lovelace+aal2@sub.example.org ",
                "ada.lovelace+aal2@sub.example.org",
            ),
            ("o'brien@example.ie", "o'brien@example.ie"),
            ("ada@bücher.example", "ada@xn--bcher-kva.example"),
        ] {
            assert_eq!(
                EmailAddress::parse(input).unwrap().as_str(),
                want,
                "{input}"
            );
        }
    }

    #[test]
    fn crafted_addresses_are_refused() {
        for input in [
            "",
            "ada",
            "ada@",
            "@example.com",
            "ada@@example.com",
            "ada@example.com\r\nBcc: victim@example.com",
            "ada@example.com\nX-Injected: 1",
            "\"ada@evil.example\"@example.com",
            "\"ada\"@example.com",
            "ada\u{FF20}example.com",
            "ada\u{FE6B}example.com",
            "ada@example\u{FF0E}com@evil.example",
            "ada @example.com",
            "ada@exa mple.com",
            ".ada@example.com",
            "ada.@example.com",
            "a..da@example.com",
            "adä@example.com",
            "ada@localhost",
            "ada@[127.0.0.1]",
            "ada@127.0.0.1",
            "ada@-example.com",
            "ada@example-.com",
            "ada@example..com",
            "ada@example.com.",
            "ada\u{0}@example.com",
            "ada@exam\u{202e}ple.com",
        ] {
            assert!(EmailAddress::parse(input).is_err(), "{input:?}");
        }
        let long_local = format!("{}@example.com", "a".repeat(65));
        assert!(EmailAddress::parse(&long_local).is_err());
        let long = format!("ada@{}.com", "a".repeat(250));
        assert!(EmailAddress::parse(&long).is_err());
    }

    #[test]
    fn debug_hides_the_local_part() {
        let e = EmailAddress::parse("ada@example.com").unwrap();
        assert_eq!(format!("{e:?}"), "EmailAddress(…@example.com)");
    }
}
