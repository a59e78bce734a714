//! Feeds arbitrary text to `SessionToken::parse` (the session cookie's `v1.<tenant>.<id>.<secret>`
//! and, by its prefix, the `l1.` link token that is parsed by the same code). Invariants:
//! - what parses is exactly what the token writes back (`to_cookie_value`): one spelling per
//!   token, 133 bytes, lowercase hex, a non-nil tenant, and the secret matches its own hash;
//! - a link token (`l1.`) is never accepted as a session token, and the same text with the
//!   `v1.` prefix parses exactly when its fields are well formed;
//! - tokens built from raw bytes always parse back to the same tenant, id and secret hash,
//!   and changing any one character of them either is refused or yields a different token.
#![no_main]

use libfuzzer_sys::fuzz_target;
use magic_auth::secrecy::{ExposeSecret, SecretString};
use magic_auth::{SessionToken, TOKEN_LEN};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn check_parsed(text: &str) -> Option<SessionToken> {
    let token = SessionToken::parse(&SecretString::from(text)).ok()?;
    assert_eq!(text.len(), TOKEN_LEN);
    assert!(text.starts_with("v1."), "{text:?}");
    assert_eq!(
        token.to_cookie_value().expose_secret(),
        text,
        "two spellings of one token"
    );
    assert!(!token.tenant().as_uuid().is_nil());
    let again = SessionToken::parse(&token.to_cookie_value()).expect("a written token parses");
    assert_eq!((again.tenant(), again.id()), (token.tenant(), token.id()));
    assert_eq!(
        again.to_cookie_value().expose_secret(),
        token.to_cookie_value().expose_secret()
    );
    Some(token)
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        check_parsed(text);
        if let Some(rest) = text.strip_prefix("l1.") {
            assert!(
                SessionToken::parse(&SecretString::from(text)).is_err(),
                "a link token was a session token"
            );
            check_parsed(&format!("v1.{rest}"));
        }
    }
    // A token written from raw bytes, then one character changed.
    if data.len() >= 64 + 3 {
        let (tenant, rest) = data.split_at(16);
        let (id, rest) = rest.split_at(16);
        let (secret, rest) = rest.split_at(32);
        let text = format!("v1.{}.{}.{}", hex(tenant), hex(id), hex(secret));
        let parsed = check_parsed(&text);
        assert_eq!(parsed.is_some(), tenant.iter().any(|&b| b != 0), "{text:?}");
        let position = usize::from(rest[0]) % TOKEN_LEN;
        let mut bytes = text.clone().into_bytes();
        bytes[position] = rest[1];
        if let Ok(changed) = String::from_utf8(bytes)
            && changed != text
            && let Some(other) = check_parsed(&changed)
            && let Some(original) = parsed
        {
            assert!(
                (other.tenant(), other.id()) != (original.tenant(), original.id())
                    || other.to_cookie_value().expose_secret()
                        != original.to_cookie_value().expose_secret(),
                "{changed:?} parsed as the same token as {text:?}"
            );
        }
        let _ = rest[2];
    }
});
