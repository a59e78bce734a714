//! Feeds arbitrary text to `EmailAddress::parse` (validated and normalised before any lookup or
//! send). Invariants: normalisation is idempotent; the result is lowercase printable ASCII with
//! exactly one `@`, no whitespace or control characters, at most 254 bytes (local part at most
//! 64), and a dotted domain that is not an IP address.
#![no_main]

use libfuzzer_sys::fuzz_target;
use magic_auth::EmailAddress;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(email) = EmailAddress::parse(text) else {
        return;
    };
    let s = email.as_str();
    assert!(s.len() <= 254, "{s:?}");
    assert!(s.bytes().all(|b| b.is_ascii_graphic()), "{s:?}");
    assert!(!s.bytes().any(|b| b.is_ascii_uppercase()), "{s:?}");
    assert_eq!(s.matches('@').count(), 1, "{s:?}");
    let (local, domain) = s.split_once('@').unwrap();
    assert!(!local.is_empty() && local.len() <= 64, "{s:?}");
    assert_eq!(email.domain(), domain);
    assert!(domain.contains('.') && !domain.starts_with('.') && !domain.ends_with('.'));
    assert!(domain.parse::<std::net::IpAddr>().is_err(), "{s:?}");
    assert_eq!(
        EmailAddress::parse(s).ok().as_ref(),
        Some(&email),
        "not idempotent: {text:?}"
    );
    assert_eq!(email.to_string(), s);
});
