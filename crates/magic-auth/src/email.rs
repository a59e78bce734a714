//! Email addresses, validated and normalised once, before any lookup and before any send.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::AuthError;

/// A validated, normalised email address: `local@domain`, lowercase, the domain in ASCII
/// (IDNA), the local part an RFC 5322 dot-atom of ASCII characters.
///
/// Only shapes every mail parser reads the same way are accepted. Refused: control characters
/// (CR/LF header injection), whitespace, quoted local parts (which can hide a second `@`),
/// comments (`(..)`), source routes (`@relay:user@host`), RFC 2047 encoded-words (`=?..?=`,
/// which some parsers decode into other characters — an `@`, say), `%` (the percent hack:
/// `user%host@relay`) and `!` (UUCP bang paths: `host!user@relay`), which some relays route
/// to another host; any `@`-lookalike (`＠` U+FF20, `﹫` U+FE6B), more or fewer than one `@`,
/// empty or dotted-wrong parts, IP-literal domains (unless [`EmailPolicy::allow_ip_literals`]),
/// bare IP addresses as domains, domains without a dot, and anything over 254 bytes (local
/// part over 64).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct EmailAddress(String);

/// Which optional shapes [`EmailAddress::parse_with`] accepts. The default accepts none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EmailPolicy {
    /// Accept IP-literal domains (`ada@[192.0.2.1]`, `ada@[IPv6:2001:db8::1]`), normalised
    /// to the address's canonical form (an IPv4-mapped IPv6 address as IPv4). Unspecified and
    /// multicast addresses stay refused. Default: refused.
    pub allow_ip_literals: bool,
}

impl EmailPolicy {
    /// The default policy: no IP literals.
    #[must_use]
    pub const fn new() -> Self {
        Self {
            allow_ip_literals: false,
        }
    }

    /// Also accepts IP-literal domains.
    #[must_use]
    pub const fn with_ip_literals(mut self) -> Self {
        self.allow_ip_literals = true;
        self
    }
}

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

/// RFC 5322 `atext` specials, less `%` and `!` (routing syntax for some relays).
const ATEXT_SPECIALS: &[u8] = b"#$&'*+-/=?^_`{|}~";

impl EmailAddress {
    /// Validates and normalises `input` (surrounding whitespace is trimmed) under the default
    /// [`EmailPolicy`].
    ///
    /// # Errors
    /// [`AuthError::InvalidEmail`] for anything outside the rules above.
    pub fn parse(input: &str) -> Result<Self, AuthError> {
        Self::parse_with(input, EmailPolicy::new())
    }

    /// Validates and normalises `input` under `policy`.
    ///
    /// # Errors
    /// [`AuthError::InvalidEmail`] for anything outside the rules above.
    pub fn parse_with(input: &str, policy: EmailPolicy) -> Result<Self, AuthError> {
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
            return Err(invalid()); // quoted strings, comments, routes, empty atoms, non-ASCII
        }
        if local.contains("=?") || local.contains("?=") {
            return Err(invalid()); // RFC 2047 encoded-words, whole or in part
        }
        let domain = if domain.starts_with('[') {
            if !policy.allow_ip_literals {
                return Err(invalid());
            }
            ip_literal(domain).ok_or_else(invalid)?
        } else {
            dns_domain(domain).ok_or_else(invalid)?
        };
        let normalised = format!("{}@{domain}", local.to_ascii_lowercase());
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

/// A host name of at least two labels, converted to lowercase ASCII (IDNA).
fn dns_domain(domain: &str) -> Option<String> {
    let domain = match url::Host::parse(domain) {
        Ok(url::Host::Domain(d)) => d,
        _ => return None, // IP addresses, invalid IDNA, forbidden code points
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
    labels_ok.then(|| domain.to_ascii_lowercase())
}

/// `[192.0.2.1]` or `[IPv6:2001:db8::1]` (the tag in any case), in canonical form; `None` for
/// anything else (RFC 5321's general address literals included) and for unspecified or
/// multicast addresses.
fn ip_literal(domain: &str) -> Option<String> {
    let inner = domain.strip_prefix('[')?.strip_suffix(']')?;
    let ip: IpAddr = match inner.get(..5) {
        Some(tag) if tag.eq_ignore_ascii_case("ipv6:") => {
            IpAddr::V6(inner.get(5..)?.parse::<Ipv6Addr>().ok()?)
        }
        _ => IpAddr::V4(inner.parse::<Ipv4Addr>().ok()?),
    };
    let ip = ip.to_canonical();
    if ip.is_unspecified() || ip.is_multicast() {
        return None;
    }
    Some(match ip {
        IpAddr::V4(v4) => format!("[{v4}]"),
        IpAddr::V6(v6) => format!("[IPv6:{v6}]"),
    })
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

    /// The table in the README, row by row: shapes other parsers read differently.
    #[test]
    fn shapes_other_parsers_read_differently_are_refused() {
        for (shape, input) in [
            ("encoded-word", "=?utf-8?q?ada=40evil.example?=@example.com"),
            ("encoded-word", "=?iso-8859-1?b?YWRh?=@example.com"),
            ("encoded-word, in part", "ada=?utf-8?q?x?=@example.com"),
            ("encoded-word, opener", "ada=?x@example.com"),
            ("quoted local part", "\"ada\"@example.com"),
            ("quoted local part", "\"ada@evil.example\"@example.com"),
            ("comment", "ada(comment)@example.com"),
            ("comment", "ada@(comment)example.com"),
            ("comment", "ada@example.com(evil.example)"),
            ("source route", "@relay.example:ada@example.com"),
            ("source route", "@a.example,@b.example:ada@example.com"),
            ("percent hack", "ada%evil.example@example.com"),
            ("bang path", "evil.example!ada@example.com"),
            ("IP literal", "ada@[192.0.2.1]"),
            ("IP literal", "ada@[IPv6:2001:db8::1]"),
            ("bare IP", "ada@192.0.2.1"),
            ("display name", "Ada <ada@example.com>"),
            ("angle address", "<ada@example.com>"),
            ("group", "friends:ada@example.com;"),
            ("backslash escape", "ada\\@evil.example@example.com"),
        ] {
            assert!(EmailAddress::parse(input).is_err(), "{shape}: {input:?}");
        }
        // The control: plain addresses, and the accepted specials, still pass.
        for input in [
            "ada@example.com",
            "ada.lovelace+tag@example.com",
            "a-b_c=d?e@example.com",
            "x#y$z&w*v/u^t`s{r|q}p~o'n@example.com",
        ] {
            assert!(EmailAddress::parse(input).is_ok(), "{input:?}");
        }
    }

    #[test]
    fn ip_literals_only_when_configured_and_canonical() {
        let allow = EmailPolicy::new().with_ip_literals();
        for (input, want) in [
            ("ada@[192.0.2.1]", "ada@[192.0.2.1]"),
            ("ada@[IPv6:2001:DB8:0::1]", "ada@[IPv6:2001:db8::1]"),
            ("ada@[ipv6:::ffff:192.0.2.1]", "ada@[192.0.2.1]"),
        ] {
            assert!(EmailAddress::parse(input).is_err(), "{input}");
            assert_eq!(
                EmailAddress::parse_with(input, allow).unwrap().as_str(),
                want
            );
        }
        for input in [
            "ada@[0.0.0.0]",
            "ada@[IPv6:::]",
            "ada@[224.0.0.1]",
            "ada@[IPv6:ff02::1]",
            "ada@[2001:db8::1]",
            "ada@[192.0.2.1",
            "ada@[192.0.2.1]x",
            "ada@[x-tag:whatever]",
            "ada@[192.0.2.256]",
            "ada@[IPv6:2001:db8::1]]",
            "ada@192.0.2.1",
        ] {
            assert!(EmailAddress::parse_with(input, allow).is_err(), "{input}");
        }
    }

    #[test]
    fn debug_hides_the_local_part() {
        let e = EmailAddress::parse("ada@example.com").unwrap();
        assert_eq!(format!("{e:?}"), "EmailAddress(…@example.com)");
    }
}
