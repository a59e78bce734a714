//! Decoding of encoded blobs (base64, base64url, hex) found in a text, so that what they hide
//! can be scanned. Percent-decoding, which keeps positions, is in [`super::fold`].

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

/// The shortest run of base64 characters that is decoded (6 bytes, `a@b.cd`).
pub(super) const MIN_BASE64_CHARS: usize = 8;

/// The shortest run of hex digits that is decoded (6 bytes).
pub(super) const MIN_HEX_DIGITS: usize = 12;

/// Lenient decoders: padding optional, trailing bits ignored. Leniency only widens what is
/// scanned.
const LENIENT: GeneralPurposeConfig = GeneralPurposeConfig::new()
    .with_decode_padding_mode(DecodePaddingMode::Indifferent)
    .with_decode_allow_trailing_bits(true);
const STANDARD: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, LENIENT);
const URL_SAFE: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, LENIENT);

/// The ways a run of base64 characters (`[A-Za-z0-9+/_-]+={0,2}`) decodes: as hex (all hex
/// digits, even count, optionally after `0x`), and as base64 or base64url (by the characters
/// it uses). A run can decode both ways; each result is scanned. Never longer than the run.
pub(super) fn decodings(token: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let hex_digits = token
        .strip_prefix("0x")
        .or_else(|| token.strip_prefix("0X"))
        .unwrap_or(token);
    if hex_digits.len() >= MIN_HEX_DIGITS
        && hex_digits.len().is_multiple_of(2)
        && hex_digits.bytes().all(|b| b.is_ascii_hexdigit())
        && let Ok(bytes) = hex::decode(hex_digits)
    {
        out.push(bytes);
    }
    let body = token.trim_end_matches('=');
    if body.len() < MIN_BASE64_CHARS {
        return out;
    }
    let url = body.contains(['-', '_']);
    let standard = body.contains(['+', '/']);
    let engine = match (standard, url) {
        (true, true) => return out,
        (false, true) => &URL_SAFE,
        _ => &STANDARD,
    };
    // A length of 4n+1 is not base64; its first 4n characters still are.
    let usable = if body.len() % 4 == 1 {
        body.len() - 1
    } else {
        body.len()
    };
    if let Some(body) = body.get(..usable)
        && let Ok(bytes) = engine.decode(body)
        && !bytes.is_empty()
    {
        out.push(bytes);
    }
    out
}

/// Decoded bytes as text to scan: valid UTF-8 as it is, each invalid byte a space. Binary
/// data keeps its readable runs (an address inside a serialised record is still found) and
/// the text is exactly as long as the bytes.
pub(super) fn text_of(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    if let Ok(text) = std::str::from_utf8(bytes) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        out.extend(std::iter::repeat_n(' ', chunk.invalid().len()));
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_every_encoding() {
        // base64 of `password=hunter2`, with and without padding.
        assert_eq!(
            decodings("cGFzc3dvcmQ9aHVudGVyMg=="),
            [b"password=hunter2".to_vec()]
        );
        assert_eq!(
            decodings("cGFzc3dvcmQ9aHVudGVyMg"),
            [b"password=hunter2".to_vec()]
        );
        // base64url: `-` and `_`.
        assert_eq!(decodings("Pz8_Pz8-Pz8"), [b"?????>??".to_vec()]);
        // hex, also with 0x; an all-hex run is tried as base64 too.
        let both = decodings("616e6e406578616d706c652e636f6d");
        assert_eq!(both[0], b"ann@example.com");
        assert_eq!(both.len(), 2);
        assert_eq!(decodings("0x616e6e406578")[0], b"ann@ex");
        // Too short, or mixed alphabets: nothing.
        assert!(decodings("YWJj").is_empty());
        assert!(decodings("ab+c-d/e_fghijk").is_empty());
    }

    #[test]
    fn binary_keeps_its_readable_runs() {
        assert_eq!(
            text_of(b"\x08\x12\x0fann@example.com\xff"),
            "\u{8}\u{12}\u{f}ann@example.com "
        );
        assert_eq!(text_of(b"\xc3\xa9t\xe9"), "\u{e9}t ");
    }
}
