//! Views of a text that the detectors run over, each byte of which maps back to the original:
//! Unicode decimal digits folded to ASCII, and percent-decoding.

use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

/// A view of a text with, for each of its bytes, where that byte came from in the original.
#[derive(Debug)]
pub(super) struct Mapped {
    pub(super) text: String,
    /// `starts[i]`: the original offset of the character that view byte `i` came from (or of
    /// the byte itself, for bytes copied as they are); `starts[text.len()]` is the original
    /// length.
    starts: Vec<usize>,
}

impl Mapped {
    /// The original range of the view's `start..end` (both on character boundaries of the
    /// view); `None` if out of range.
    pub(super) fn original(&self, start: usize, end: usize) -> Option<(usize, usize)> {
        Some((*self.starts.get(start)?, *self.starts.get(end)?))
    }
}

/// The value of a decimal digit of any script (general category `Nd`): `٣`, `３`, `३`, `𝟛` are
/// 3. Unicode assigns decimal digits only in contiguous runs of ten, zero to nine (a stability
/// policy), so a digit's value is its distance from the start of its run, modulo ten.
pub(super) fn decimal_value(c: char) -> Option<u8> {
    if c.is_ascii_digit() {
        return u8::try_from(u32::from(c) - u32::from('0')).ok();
    }
    if c.is_ascii() || c.general_category() != GeneralCategory::DecimalNumber {
        return None;
    }
    let code = u32::from(c);
    let mut start = code;
    // The longest run of consecutive decimal digits is 50 (mathematical digits); the bound
    // only keeps the loop finite.
    for _ in 0..64 {
        match start.checked_sub(1).and_then(char::from_u32) {
            Some(prev) if prev.general_category() == GeneralCategory::DecimalNumber => {
                start -= 1;
            }
            _ => break,
        }
    }
    u8::try_from((code - start) % 10).ok()
}

/// `text` with every decimal digit folded to its ASCII digit, or `None` if it has no
/// non-ASCII decimal digit (the view would be the text itself).
pub(super) fn fold_digits(text: &str) -> Option<Mapped> {
    if text.is_ascii()
        || !text
            .chars()
            .any(|c| !c.is_ascii() && decimal_value(c).is_some())
    {
        return None;
    }
    let mut folded = String::with_capacity(text.len());
    let mut starts = Vec::with_capacity(text.len() + 1);
    for (at, c) in text.char_indices() {
        match decimal_value(c) {
            Some(d) if !c.is_ascii() => {
                folded.push(char::from(b'0' + d));
                starts.push(at);
            }
            _ => {
                folded.push(c);
                starts.extend((0..c.len_utf8()).map(|k| at + k));
            }
        }
    }
    starts.push(text.len());
    Some(Mapped {
        text: folded,
        starts,
    })
}

/// Whether `text` holds at least one `%XX` escape.
pub(super) fn has_percent_escape(text: &str) -> bool {
    text.as_bytes()
        .windows(3)
        .any(|w| w[0] == b'%' && w[1].is_ascii_hexdigit() && w[2].is_ascii_hexdigit())
}

/// Percent-decoding (`%XX` to its byte, `+` to a space, as in forms): `Ok` with the mapped
/// view if the decoded bytes are UTF-8, else `Err` with them (to scan lossily). The decoded
/// text is never longer than `text`.
pub(super) fn percent_decode(text: &str) -> Result<Mapped, Vec<u8>> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut starts = Vec::with_capacity(bytes.len() + 1);
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        starts.push(i);
        match (b, bytes.get(i + 1..i + 3)) {
            (b'%', Some(&[hi, lo])) if hi.is_ascii_hexdigit() && lo.is_ascii_hexdigit() => {
                out.push((hex_value(hi) << 4) | hex_value(lo));
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    starts.push(bytes.len());
    match String::from_utf8(out) {
        Ok(text) => Ok(Mapped { text, starts }),
        Err(e) => Err(e.into_bytes()),
    }
}

fn hex_value(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        b'A'..=b'F' => b - b'A' + 10,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_of_every_script_have_their_value() {
        for (c, d) in [
            ('7', 7),
            ('\u{0663}', 3),  // Arabic-Indic
            ('\u{06F9}', 9),  // Extended Arabic-Indic
            ('\u{096A}', 4),  // Devanagari
            ('\u{FF10}', 0),  // fullwidth
            ('\u{1D7D9}', 1), // mathematical double-struck one, in a run of fifty
            ('\u{1D7FF}', 9), // mathematical monospace nine, the end of that run
            ('\u{0E52}', 2),  // Thai
        ] {
            assert_eq!(decimal_value(c), Some(d), "{c:?}");
        }
        for c in ['a', '\u{00BD}', '\u{2460}', '\u{00B2}', '\u{216B}'] {
            assert_eq!(decimal_value(c), None, "{c:?}");
        }
    }

    #[test]
    fn folded_spans_map_back_to_the_original() {
        let text = "card \u{FF14}\u{FF11}1 x";
        let folded = fold_digits(text).unwrap();
        assert_eq!(folded.text, "card 411 x");
        assert_eq!(folded.original(5, 8), Some((5, 12)));
        assert_eq!(&text[5..12], "\u{FF14}\u{FF11}1");
        assert!(fold_digits("plain 123").is_none());
    }

    #[test]
    fn percent_decoding_maps_back() {
        let text = "a%40b.c+d%2";
        let decoded = percent_decode(text).unwrap();
        assert_eq!(decoded.text, "a@b.c d%2");
        assert_eq!(decoded.original(0, 5), Some((0, 7)));
        assert!(percent_decode("%FF%FE").is_err());
        assert!(has_percent_escape("x%2Fy"));
        assert!(!has_percent_escape("100% sure"));
    }
}
