//! Value detectors: the spans of a text that hold personal data or credentials.

use std::borrow::Cow;
use std::sync::LazyLock;

use regex::{Regex, RegexSet};

use super::ScrubError;
use super::denylist::{Denylist, is_header_like};
use super::fold;

/// What a detector found. The order is the priority when overlapping spans of equal length
/// are merged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Kind {
    Pem,
    Jwt,
    CloudKey,
    Bearer,
    Basic,
    Userinfo,
    Secret,
    Encoded,
    Card,
    Email,
    Phone,
}

impl Kind {
    /// What a masked span becomes.
    pub(super) const fn label(self) -> &'static str {
        match self {
            Self::Pem => "[pem]",
            Self::Jwt => "[jwt]",
            Self::CloudKey => "[cloud_key]",
            Self::Bearer => "[bearer]",
            Self::Basic => "[basic]",
            Self::Userinfo => "[userinfo]",
            Self::Secret => "[redacted]",
            Self::Encoded => "[encoded]",
            Self::Card => "[card]",
            Self::Email => "[email]",
            Self::Phone => "[phone]",
        }
    }
}

/// A sensitive byte range of a text (always on character boundaries).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Span {
    pub(super) start: usize,
    pub(super) end: usize,
    pub(super) kind: Kind,
}

const EMAIL: usize = 0;
const PHONE: usize = 1;
const CARD_RUN: usize = 2;
const JWT: usize = 3;
const BEARER: usize = 4;
const BASIC: usize = 5;
const CLOUD_KEY: usize = 6;
const PEM_BEGIN: usize = 7;
const USERINFO: usize = 8;
const URL_PARAM: usize = 9;
const KEY_VALUE: usize = 10;

const PATTERNS: [&str; 11] = [
    // EMAIL: also with fullwidth `＠` and ideographic (`。`), fullwidth (`．`) and halfwidth
    // ideographic (`｡`) full stops, which mail software and IDNA treat as dots.
    concat!(
        r"[\p{L}\p{N}._%+'\-\x{FF0E}\x{3002}\x{FF61}]+[@\x{FF20}][\p{L}\p{N}\-]+",
        r"(?:[.\x{FF0E}\x{3002}\x{FF61}][\p{L}\p{N}\-]+)+",
    ),
    // PHONE: E.164 with the separators people type.
    r"\+\(?[0-9](?:[ \-.()]{0,2}[0-9]){6,14}",
    // CARD_RUN: candidate digit runs; windows and the Luhn check are done in code.
    r"[0-9](?:[ \-]?[0-9]){12,}",
    // JWT (JWS), optionally JWE (five segments).
    concat!(
        r"eyJ[A-Za-z0-9_\-]{5,}\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*",
        r"(?:\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+)?",
    ),
    // BEARER
    r"(?-u:\b)(?i:bearer)[ \t]+[A-Za-z0-9\-._~+/]+=*",
    // BASIC
    r"(?-u:\b)(?i:basic)[ \t]+[A-Za-z0-9+/]{4,}={0,2}",
    // CLOUD_KEY
    concat!(
        r"(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}",
        r"|AIza[0-9A-Za-z_\-]{35}",
        r"|gh[pousr]_[A-Za-z0-9]{36,255}",
        r"|github_pat_[A-Za-z0-9_]{22,255}",
        r"|xox[abprse]-[A-Za-z0-9\-]{10,}",
        r"|xapp-[0-9]-[A-Za-z0-9\-]{10,}",
        r"|(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{10,}",
        r"|whsec_[A-Za-z0-9+/=]{10,}",
        r"|glpat-[A-Za-z0-9_\-]{20,}",
        r"|ya29\.[A-Za-z0-9_\-]{20,}",
        r"|npm_[A-Za-z0-9]{36}",
        r"|(?-u:\b)sk-(?:proj-|ant-)?[A-Za-z0-9_\-]{20,}",
        r"|SG\.[A-Za-z0-9_\-]{16,}\.[A-Za-z0-9_\-]{16,}",
    ),
    // PEM_BEGIN: the END marker is searched in code (no back-references).
    r"-----BEGIN [A-Z0-9][A-Z0-9 ]{0,60}-----",
    // USERINFO: greedy up to the last `@` before the path.
    r#"(?i:[a-z][a-z0-9+.\-]*)://[^/?#\s"'<>\\]+@"#,
    // URL_PARAM
    concat!(
        r#"[?&;#](?i:token|access_token|id_token|refresh_token|code|key|api_key|apikey|secret"#,
        r#"|client_secret|password|passwd|pwd|signature|sig|x-amz-signature|x-amz-credential"#,
        r#"|x-amz-security-token|x-goog-signature|x-goog-credential|auth|jwt|session|sessionid"#,
        r#"|session_id)=[^&#\s"'<>\\]*"#,
    ),
    // KEY_VALUE: a key (any letters, so confusable spellings are judged too), an optional
    // (escaped) closing quote, `:` or `=` (also fullwidth); the value is parsed in code.
    r#"[\p{L}\p{N}\p{M}\p{Cf}_.\-]+(?:\\*["'])?[ \t]*[:=\x{FF1A}\x{FF1D}]"#,
];

/// The compiled detectors, shared by every scrubber in the process.
pub(super) struct Detectors {
    set: RegexSet,
    email: Regex,
    phone: Regex,
    card_run: Regex,
    uuid: Regex,
    jwt: Regex,
    bearer: Regex,
    basic: Regex,
    cloud_key: Regex,
    pem_begin: Regex,
    userinfo: Regex,
    url_param: Regex,
    key_value: Regex,
    blob: Regex,
}

static DETECTORS: LazyLock<Result<Detectors, regex::Error>> = LazyLock::new(Detectors::build);

/// The process-wide detectors.
pub(super) fn detectors() -> Result<&'static Detectors, ScrubError> {
    DETECTORS.as_ref().map_err(|_| ScrubError::Detectors)
}

impl Detectors {
    fn build() -> Result<Self, regex::Error> {
        Ok(Self {
            set: RegexSet::new(PATTERNS)?,
            email: Regex::new(PATTERNS[EMAIL])?,
            phone: Regex::new(PATTERNS[PHONE])?,
            card_run: Regex::new(PATTERNS[CARD_RUN])?,
            uuid: Regex::new(
                r"(?-u:\b)[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}(?-u:\b)",
            )?,
            jwt: Regex::new(PATTERNS[JWT])?,
            bearer: Regex::new(PATTERNS[BEARER])?,
            basic: Regex::new(PATTERNS[BASIC])?,
            cloud_key: Regex::new(PATTERNS[CLOUD_KEY])?,
            pem_begin: Regex::new(PATTERNS[PEM_BEGIN])?,
            userinfo: Regex::new(PATTERNS[USERINFO])?,
            url_param: Regex::new(PATTERNS[URL_PARAM])?,
            key_value: Regex::new(PATTERNS[KEY_VALUE])?,
            blob: Regex::new(r"[A-Za-z0-9+/_\-]{8,}={0,2}")?,
        })
    }

    /// The runs of base64 characters in `text` long enough to be decoded (hex runs are among
    /// them), as byte ranges.
    pub(super) fn blobs(&self, text: &str) -> Vec<(usize, usize)> {
        self.blob
            .find_iter(text)
            .map(|m| (m.start(), m.end()))
            .collect()
    }

    /// The sensitive spans of `text`, sorted, merged where they overlap. Decimal digits of
    /// every script are folded to ASCII first, so the number detectors see `４１１１…` and
    /// `٤١١١…` as `4111…`; spans are mapped back to `text`.
    pub(super) fn detect(&self, text: &str, deny: &Denylist) -> Vec<Span> {
        let Some(folded) = fold::fold_digits(text) else {
            return self.detect_folded(text, deny);
        };
        let spans = self
            .detect_folded(&folded.text, deny)
            .into_iter()
            .map(|span| match folded.original(span.start, span.end) {
                Some((start, end)) => Span { start, end, ..span },
                // Not reachable (spans are inside the view); cover everything rather than leak.
                None => Span {
                    start: 0,
                    end: text.len(),
                    ..span
                },
            })
            .collect();
        merge(spans)
    }

    /// [`Detectors::detect`] over a text whose digits are ASCII.
    fn detect_folded(&self, text: &str, deny: &Denylist) -> Vec<Span> {
        let hits = self.set.matches(text);
        if !hits.matched_any() {
            return Vec::new();
        }
        let mut spans = Vec::new();
        let mut push = |start: usize, end: usize, kind: Kind| {
            if start < end {
                spans.push(Span { start, end, kind });
            }
        };

        // Userinfo first: an e-mail-shaped match ending at its `@` is the userinfo and host.
        let mut userinfo_at = Vec::new();
        if hits.matched(USERINFO) {
            for m in self.userinfo.find_iter(text) {
                let at = m.end() - 1;
                let start = m
                    .as_str()
                    .find("://")
                    .map_or(m.start(), |i| m.start() + i + 3);
                push(start, at, Kind::Userinfo);
                userinfo_at.push(at);
            }
        }
        if hits.matched(EMAIL) {
            for m in self.email.find_iter(text) {
                let start = m.end() - m.as_str().trim_start_matches('\'').len();
                let Some(at) = text
                    .get(start..m.end())
                    .and_then(|s| s.find(['@', '\u{FF20}']))
                else {
                    continue;
                };
                if at > 0 && !userinfo_at.contains(&(start + at)) {
                    push(start, m.end(), Kind::Email);
                }
            }
        }
        if hits.matched(PHONE) {
            for m in self.phone.find_iter(text) {
                push(m.start(), m.end(), Kind::Phone);
            }
        }
        if hits.matched(CARD_RUN) {
            // UUIDs (request ids, row ids) are identifiers, not card numbers, even when a
            // Luhn-valid window of 13–19 digits runs across their groups: the reference app's
            // fault test found a request id masked as `[card]`, breaking correlation.
            let uuids: Vec<(usize, usize)> = self
                .uuid
                .find_iter(text)
                .map(|m| (m.start(), m.end()))
                .collect();
            for m in self.card_run.find_iter(text) {
                card_windows(text, m.start(), m.end(), &mut |start, end, kind| {
                    if !uuids.iter().any(|&(s, e)| s <= start && end <= e) {
                        push(start, end, kind);
                    }
                });
            }
        }
        if hits.matched(JWT) {
            for m in self.jwt.find_iter(text) {
                push(m.start(), m.end(), Kind::Jwt);
            }
        }
        if hits.matched(CLOUD_KEY) {
            for m in self.cloud_key.find_iter(text) {
                push(m.start(), m.end(), Kind::CloudKey);
            }
        }
        if hits.matched(BEARER) {
            for m in self.bearer.find_iter(text) {
                let matched = m.as_str().trim_end_matches('.');
                let token = matched.split_whitespace().nth(1).unwrap_or_default();
                if plausible_bearer(token) {
                    push(m.start(), m.start() + matched.len(), Kind::Bearer);
                }
            }
        }
        if hits.matched(BASIC) {
            for m in self.basic.find_iter(text) {
                let token = m.as_str().split_whitespace().nth(1).unwrap_or_default();
                if decode_base64(token).is_some_and(|b| b.contains(&b':')) {
                    push(m.start(), m.end(), Kind::Basic);
                }
            }
        }
        if hits.matched(PEM_BEGIN) {
            let mut pos = 0;
            while let Some(m) = self.pem_begin.find_at(text, pos) {
                let end = pem_end(text, m.end());
                push(m.start(), end, Kind::Pem);
                pos = end;
            }
        }
        if hits.matched(URL_PARAM) {
            for m in self.url_param.find_iter(text) {
                let value = m.as_str().find('=').map_or(m.end(), |i| m.start() + i + 1);
                push(value, m.end(), Kind::Secret);
            }
        }
        if hits.matched(KEY_VALUE) {
            let mut pos = 0;
            while let Some(m) = self.key_value.find_at(text, pos) {
                pos = m.end();
                let key_len = m
                    .as_str()
                    .find(['"', '\'', '\\', ' ', '\t', ':', '=', '\u{FF1A}', '\u{FF1D}'])
                    .unwrap_or(m.as_str().len());
                let key = m.as_str().get(..key_len).unwrap_or_default();
                if deny.is_denied(key) {
                    let (start, end) = key_value_span(text, m.end(), is_header_like(key));
                    push(start, end, Kind::Secret);
                    pos = pos.max(end);
                }
            }
        }
        merge(spans)
    }

    /// Whether the whole of `text` (trimmed) is one e-mail address, phone or card number; if
    /// so, its normalised form.
    pub(super) fn normalise_whole<'a>(&self, text: &'a str, deny: &Denylist) -> Cow<'a, str> {
        let trimmed = text.trim();
        // No e-mail address (RFC 5321), phone or card number is longer.
        if trimmed.len() > 320 {
            return Cow::Borrowed(text);
        }
        if let [only] = self.detect(trimmed, deny).as_slice()
            && only.start == 0
            && only.end == trimmed.len()
            && matches!(only.kind, Kind::Email | Kind::Phone | Kind::Card)
        {
            return normalise(only.kind, trimmed);
        }
        Cow::Borrowed(text)
    }
}

/// The form a detected value is pseudonymised in: e-mail addresses trimmed, NFKC-normalised
/// (fullwidth `＠`, `．` and letters become ASCII), ideographic full stops made `.`, and
/// lowercased; phone and card numbers as their ASCII digits (of any script); the rest as found.
pub(super) fn normalise(kind: Kind, text: &str) -> Cow<'_, str> {
    use unicode_normalization::UnicodeNormalization;
    match kind {
        Kind::Email => Cow::Owned(
            text.trim()
                .nfkc()
                .map(|c| if c == '\u{3002}' { '.' } else { c })
                .collect::<String>()
                .to_lowercase(),
        ),
        Kind::Phone | Kind::Card => Cow::Owned(
            text.chars()
                .filter_map(fold::decimal_value)
                .map(|d| char::from(b'0' + d))
                .collect(),
        ),
        _ => Cow::Borrowed(text),
    }
}

/// Sorts spans and merges overlapping ones; a merged span is labelled by its longest member
/// (ties: the higher-priority kind).
pub(super) fn merge(mut spans: Vec<Span>) -> Vec<Span> {
    spans.sort_by(|a, b| {
        a.start
            .cmp(&b.start)
            .then(b.end.cmp(&a.end))
            .then(a.kind.cmp(&b.kind))
    });
    let mut merged: Vec<(Span, usize)> = Vec::with_capacity(spans.len());
    for span in spans {
        let len = span.end - span.start;
        if let Some((last, longest)) = merged.last_mut()
            && span.start < last.end
        {
            last.end = last.end.max(span.end);
            if len > *longest || (len == *longest && span.kind < last.kind) {
                *longest = len;
                last.kind = span.kind;
            }
        } else {
            merged.push((span, len));
        }
    }
    merged.into_iter().map(|(span, _)| span).collect()
}

/// The card numbers inside a run of digits separated by single spaces or dashes: every
/// window of 13–19 digits that starts and ends at a group boundary, starts with 2–6 and
/// passes the Luhn check. A run without separators is only a card as a whole.
fn card_windows(text: &str, start: usize, end: usize, push: &mut impl FnMut(usize, usize, Kind)) {
    let Some(run) = text.as_bytes().get(start..end) else {
        return;
    };
    // (byte offset, digit value, starts a group)
    let mut digits: Vec<(usize, u8, bool)> = Vec::with_capacity(run.len());
    let mut after_separator = true;
    for (i, &b) in run.iter().enumerate() {
        if b.is_ascii_digit() {
            digits.push((start + i, b - b'0', after_separator));
            after_separator = false;
        } else {
            after_separator = true;
        }
    }
    let ends_group = |k: usize| digits.get(k + 1).is_none_or(|d| d.2);
    let mut values = Vec::with_capacity(19);
    for (i, &(first_at, first, starts_group)) in digits.iter().enumerate() {
        if !starts_group || !(2..=6).contains(&first) {
            continue;
        }
        for len in 13..=19 {
            let last = i + len - 1;
            let Some(&(last_at, _, _)) = digits.get(last) else {
                break;
            };
            if !ends_group(last) {
                continue;
            }
            values.clear();
            values.extend(digits.iter().skip(i).take(len).map(|d| d.1));
            if luhn(&values) {
                push(first_at, last_at + 1, Kind::Card);
            }
        }
    }
}

/// Whether a JSON number is a card number: an integer, negative or not, whose digits are one
/// (13–19 digits, 2–6 first, Luhn); or a float whose integer part is. Above 2^53 a float no
/// longer holds every digit, so the Luhn check cannot be trusted and a float there with 13–19
/// digits starting with 2–6 counts as a card (failing closed).
/// Returns the card's digits (what it is pseudonymised as).
pub(super) fn card_in_number(n: &serde_json::Number) -> Option<String> {
    /// 2^53: from here on, not every integer is an `f64`.
    const EXACT_LIMIT: f64 = 9_007_199_254_740_992.0;
    let digits = if let Some(u) = n.as_u64() {
        u.to_string()
    } else if let Some(i) = n.as_i64() {
        i.unsigned_abs().to_string()
    } else {
        let whole = n.as_f64()?.abs().trunc();
        if !whole.is_finite() || !(1e12..1e19).contains(&whole) {
            return None;
        }
        let digits = format!("{whole:.0}");
        if whole >= EXACT_LIMIT
            && (13..=19).contains(&digits.len())
            && digits.starts_with(['2', '3', '4', '5', '6'])
        {
            return Some(digits);
        }
        digits
    };
    is_card_number(&digits).then_some(digits)
}

/// Whether a string of ASCII digits is a card number (13–19 digits, 2–6 first, Luhn).
pub(super) fn is_card_number(text: &str) -> bool {
    (13..=19).contains(&text.len())
        && text.bytes().all(|b| b.is_ascii_digit())
        && text.starts_with(['2', '3', '4', '5', '6'])
        && luhn(&text.bytes().map(|b| b - b'0').collect::<Vec<_>>())
}

/// The Luhn (mod 10) check over decimal digits.
fn luhn(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = u32::from(d);
            if i % 2 == 1 {
                let doubled = d * 2;
                if doubled > 9 { doubled - 9 } else { doubled }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// Whether the word after `Bearer` looks like a credential rather than prose
/// ("bearer token missing").
fn plausible_bearer(token: &str) -> bool {
    let len = token.len();
    let non_letter = token.bytes().any(|b| !b.is_ascii_alphabetic());
    let inner_capital = token.bytes().skip(1).any(|b| b.is_ascii_uppercase());
    (len >= 6 && non_letter) || (len >= 8 && inner_capital) || len >= 20
}

/// Standard base64 (padding optional); `None` if it is not.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let text = text.trim_end_matches('=');
    if text.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for b in text.bytes() {
        let v = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from((acc >> bits) & 0xff).ok()?);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// The end of a PEM block whose BEGIN line ends at `from`: after the next `-----END …-----`,
/// or the end of the text if there is none (a truncated key is still a key).
fn pem_end(text: &str, from: usize) -> usize {
    let Some(rest) = text.get(from..) else {
        return text.len();
    };
    rest.find("-----END ")
        .and_then(|i| {
            let label = from + i + "-----END ".len();
            text.get(label..)?
                .find("-----")
                .map(|j| label + j + "-----".len())
        })
        .unwrap_or(text.len())
}

/// The value after a key and its `:`/`=` in free text: a quoted string (plain, escaped as
/// in JSON inside JSON, or single-quoted; to the end of the text if never closed), the rest
/// of the line for header-like keys, or else up to whitespace or punctuation.
fn key_value_span(text: &str, from: usize, to_end_of_line: bool) -> (usize, usize) {
    let bytes = text.as_bytes();
    let mut i = from;
    while bytes.get(i).is_some_and(|b| matches!(b, b' ' | b'\t')) {
        i += 1;
    }
    let backslashes = bytes.iter().skip(i).take_while(|&&b| b == b'\\').count();
    match bytes.get(i + backslashes) {
        Some(b'"') if backslashes == 0 => {
            let start = i + 1;
            let mut j = start;
            while let Some(&b) = bytes.get(j) {
                match b {
                    b'\\' => j += 2,
                    b'"' => return (start, j),
                    _ => j += 1,
                }
            }
            (start, text.len())
        }
        Some(b'"' | b'\'') => {
            let start = i + backslashes + 1;
            let end = text
                .get(i..start)
                .and_then(|quote| Some(start + text.get(start..)?.find(quote)?))
                .unwrap_or(text.len());
            (start, end)
        }
        _ => {
            let stop = |b: &u8| {
                if to_end_of_line {
                    matches!(b, b'\n' | b'\r')
                } else {
                    b.is_ascii_whitespace() || b",;&})]>\"'\\".contains(b)
                }
            };
            let end = bytes
                .iter()
                .skip(i)
                .position(stop)
                .map_or(text.len(), |k| i + k);
            (i, end)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(text: &str) -> Vec<(&str, Kind)> {
        let detectors = detectors().unwrap();
        detectors
            .detect(text, &Denylist::default())
            .into_iter()
            .map(|s| (&text[s.start..s.end], s.kind))
            .collect()
    }

    #[test]
    fn luhn_known_answers() {
        assert!(luhn(&[7, 9, 9, 2, 7, 3, 9, 8, 7, 1, 3]));
        assert!(!luhn(&[7, 9, 9, 2, 7, 3, 9, 8, 7, 1, 4]));
        assert!(is_card_number("4111111111111111"));
        assert!(is_card_number("378282246310005"));
        assert!(!is_card_number("4111111111111112"));
        // Luhn-valid but starts with 1: a millisecond timestamp, not a card.
        assert!(!is_card_number("1700000000004"));
    }

    #[test]
    fn card_windows_respect_group_boundaries() {
        assert_eq!(
            found("qty 2345 4111 1111 1111 1111 ok"),
            [("4111 1111 1111 1111", Kind::Card)]
        );
        assert_eq!(found("order 41111111111111110"), []);
        // Found by the reference app's fault test: this request id (a UUID) held a 19-digit,
        // Luhn-valid window across its groups and was masked, breaking correlation.
        assert_eq!(found("b98b93d0-8149-4970-9684-04213693884a"), []);
        assert_eq!(found("request b98b93d0-8149-4970-9684-04213693884a ok"), []);
        // A card glued to other text is still a card.
        assert_eq!(
            found("cc:4111111111111111x"),
            [("4111111111111111", Kind::Card)]
        );
        assert_eq!(
            found("amex 3782-822463-10005."),
            [("3782-822463-10005", Kind::Card)]
        );
    }

    #[test]
    fn userinfo_keeps_the_host_and_is_not_an_email() {
        assert_eq!(
            found("https://alice:p@ss@db.example.com/x"),
            [("alice:p@ss", Kind::Userinfo)]
        );
        assert_eq!(
            found("see https://bob@example.com and carol@example.com"),
            [("bob", Kind::Userinfo), ("carol@example.com", Kind::Email)]
        );
    }

    #[test]
    fn key_values_in_free_text() {
        assert_eq!(
            found("login password=hunter2 ok"),
            [("hunter2", Kind::Secret)]
        );
        assert_eq!(
            found(r#"{"password": "a b\"c", "x": 1"#),
            [(r#"a b\"c"#, Kind::Secret)]
        );
        assert_eq!(
            found(r#"{\"pwd\":\"hunter2\"}"#),
            [("hunter2", Kind::Secret)]
        );
        assert_eq!(
            found("Cookie: a=1; b=2\nnext"),
            [("a=1; b=2", Kind::Secret)]
        );
        assert_eq!(found("user=alice, note: fine"), []);
        assert_eq!(
            found(r#""secret": "unterminated"#),
            [("unterminated", Kind::Secret)]
        );
    }

    #[test]
    fn bearer_needs_a_token_shaped_word() {
        assert_eq!(found("missing bearer token."), []);
        assert_eq!(found("Bearer abc123"), [("Bearer abc123", Kind::Bearer)]);
        assert_eq!(found("Basic plan"), []);
        assert_eq!(
            found("Basic dXNlcjpwYXNz"),
            [("Basic dXNlcjpwYXNz", Kind::Basic)]
        );
    }

    #[test]
    fn overlapping_spans_take_the_longest_label() {
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln";
        let text = format!("/cb?token={jwt}&page=2");
        assert_eq!(found(&text), [(jwt, Kind::Jwt)]);
    }

    #[test]
    fn pem_without_end_runs_to_the_end() {
        let text = "key: -----BEGIN PRIVATE KEY-----\nMIIE";
        assert_eq!(found(text), [(&text[5..], Kind::Pem)]);
    }

    #[test]
    fn base64_decoding() {
        assert_eq!(decode_base64("dXNlcjpwYXNz").unwrap(), b"user:pass");
        assert_eq!(decode_base64("YQ==").unwrap(), b"a");
        assert!(decode_base64("a").is_none());
        assert!(decode_base64("a-b_").is_none());
    }
}
