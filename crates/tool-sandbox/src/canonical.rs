//! Canonical JSON for tool arguments (RFC 8785, JSON Canonicalization Scheme) and the proposal
//! digest over it.
//!
//! The canonical form makes key order and whitespace irrelevant and keeps everything else
//! significant: `5` and `"5"` differ, `null` and an absent key differ, array order matters.
//! Numbers are written as ECMAScript writes a double (`1.0` and `1` are the same number, `1e21`
//! is `1e+21`). Integers beyond ±2^53 are refused rather than rounded: two different amounts must
//! never share a digest.

use serde_json::Value;
use sha2::{Digest, Sha256};
use tenant_scope::{ActorId, TenantId};
use uuid::Uuid;

use crate::SandboxError;

/// The deepest nesting accepted.
pub const MAX_DEPTH: usize = 64;
/// The largest exactly representable integer magnitude (2^53).
const MAX_SAFE: u64 = 1 << 53;

/// The domain tag hashed first into every proposal digest.
pub const DIGEST_DOMAIN: &[u8] = b"tool-sandbox/proposal/v1\n";

/// The RFC 8785 canonical text of `value`.
///
/// # Errors
/// [`SandboxError::Canonical`] for integers beyond ±2^53 and nesting deeper than [`MAX_DEPTH`].
pub fn canonical_json(value: &Value) -> Result<String, SandboxError> {
    let mut out = String::new();
    write_value(value, &mut out, 0)?;
    Ok(out)
}

fn write_value(value: &Value, out: &mut String, depth: usize) -> Result<(), SandboxError> {
    if depth > MAX_DEPTH {
        return Err(SandboxError::Canonical("nesting too deep"));
    }
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => write_number(n, out)?,
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(item, out, depth + 1)?;
            }
            out.push(']');
        }
        Value::Object(map) => {
            // RFC 8785 orders keys by their UTF-16 code units.
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
            out.push('{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(key, out);
                out.push(':');
                write_value(item, out, depth + 1)?;
            }
            out.push('}');
        }
    }
    Ok(())
}

fn write_string(s: &str, out: &mut String) {
    use std::fmt::Write;
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\u{c}' => out.push_str("\\f"),
            '\r' => out.push_str("\\r"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn write_number(n: &serde_json::Number, out: &mut String) -> Result<(), SandboxError> {
    use std::fmt::Write;
    // Beyond 2^53 an integer is accepted only when it is exactly what RFC 8785 writes for the
    // nearest double: then the integer and that double are one number with one text. Any other
    // integer there (2^53 + 1, say) would share its text with a different one, and is refused.
    #[allow(clippy::cast_precision_loss)]
    let wide = match (n.as_u64(), n.as_i64()) {
        (Some(u), _) if u <= MAX_SAFE => {
            let _ = write!(out, "{u}");
            return Ok(());
        }
        (_, Some(i)) if i.unsigned_abs() <= MAX_SAFE => {
            let _ = write!(out, "{i}");
            return Ok(());
        }
        (Some(u), _) => Some((u as f64, u.to_string())),
        (_, Some(i)) => Some((i as f64, i.to_string())),
        _ => None,
    };
    if let Some((double, decimal)) = wide {
        let mut text = String::new();
        write_double(double, &mut text)?;
        if text != decimal {
            return Err(SandboxError::Canonical("integer beyond 2^53"));
        }
        out.push_str(&text);
        return Ok(());
    }
    let f = n
        .as_f64()
        .ok_or(SandboxError::Canonical("unrepresentable number"))?;
    write_double(f, out)
}

/// Writes a finite double as ECMAScript's `Number.prototype.toString` does.
fn write_double(f: f64, out: &mut String) -> Result<(), SandboxError> {
    if !f.is_finite() {
        return Err(SandboxError::Canonical("non-finite number"));
    }
    if f == 0.0 {
        out.push('0');
        return Ok(());
    }
    if f < 0.0 {
        out.push('-');
    }
    // Rust's `{:e}` gives the shortest digits that round-trip, like ECMAScript's algorithm.
    let sci = format!("{:e}", f.abs());
    let (mantissa, exponent) = sci
        .split_once('e')
        .ok_or(SandboxError::Canonical("number formatting"))?;
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let exponent: i32 = exponent
        .parse()
        .map_err(|_| SandboxError::Canonical("number formatting"))?;
    let k = i32::try_from(digits.len()).map_err(|_| SandboxError::Canonical("number"))?;
    let n = exponent + 1; // the decimal point sits after `n` digits
    if k <= n && n <= 21 {
        out.push_str(&digits);
        out.extend(std::iter::repeat_n(
            '0',
            usize::try_from(n - k).unwrap_or(0),
        ));
    } else if 0 < n && n <= 21 {
        let split = usize::try_from(n).unwrap_or(0);
        out.push_str(&digits[..split]);
        out.push('.');
        out.push_str(&digits[split..]);
    } else if -6 < n && n <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', usize::try_from(-n).unwrap_or(0)));
        out.push_str(&digits);
    } else {
        out.push_str(&digits[..1]);
        if k > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        out.push('e');
        out.push(if n > 0 { '+' } else { '-' });
        out.push_str(&(n - 1).unsigned_abs().to_string());
    }
    Ok(())
}

/// What a proposal digest binds: everything that must be identical between the call a human
/// approved and the call that runs.
///
/// Built with [`DigestInput::new`].
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct DigestInput<'a> {
    /// The tenant.
    pub tenant: TenantId,
    /// The agent that proposed the call.
    pub agent: ActorId,
    /// The session (agent turn) that proposed it.
    pub session: Uuid,
    /// The tool's exact name.
    pub tool: &'a str,
    /// The tool's version.
    pub version: u32,
    /// The canonical arguments ([`canonical_json`]).
    pub canonical_arguments: &'a str,
}

impl<'a> DigestInput<'a> {
    /// What the digest of a call binds: `tool` at `version`, proposed by `agent` in `session`
    /// for `tenant`, with `canonical_arguments` (the output of [`canonical_json`]).
    #[must_use]
    pub const fn new(
        tenant: TenantId,
        agent: ActorId,
        session: Uuid,
        tool: &'a str,
        version: u32,
        canonical_arguments: &'a str,
    ) -> Self {
        Self {
            tenant,
            agent,
            session,
            tool,
            version,
            canonical_arguments,
        }
    }
}

/// `SHA-256(domain || tenant || agent || session || len(tool) || tool || version ||
/// len(args) || args)`, lengths as 8-byte big-endian, ids as their 16 bytes.
#[must_use]
pub fn proposal_digest(input: &DigestInput<'_>) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(DIGEST_DOMAIN);
    h.update(input.tenant.as_uuid().as_bytes());
    h.update(input.agent.as_uuid().as_bytes());
    h.update(input.session.as_bytes());
    h.update((input.tool.len() as u64).to_be_bytes());
    h.update(input.tool.as_bytes());
    h.update(input.version.to_be_bytes());
    h.update((input.canonical_arguments.len() as u64).to_be_bytes());
    h.update(input.canonical_arguments.as_bytes());
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn c(v: &Value) -> String {
        canonical_json(v).unwrap()
    }

    #[test]
    fn key_order_and_whitespace_are_irrelevant() {
        let a: Value = serde_json::from_str(r#"{"b": 1, "a": {"y": [1, 2], "x": null}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a":{"x":null,"y":[1,2]},"b":1}"#).unwrap();
        assert_eq!(c(&a), c(&b));
        assert_eq!(c(&a), r#"{"a":{"x":null,"y":[1,2]},"b":1}"#);
    }

    #[test]
    fn types_absence_and_order_are_significant() {
        assert_ne!(c(&json!({"n": 5})), c(&json!({"n": "5"})));
        assert_ne!(c(&json!({"n": null})), c(&json!({})));
        assert_ne!(c(&json!([1, 2])), c(&json!([2, 1])));
        assert_ne!(c(&json!({"n": true})), c(&json!({"n": "true"})));
        assert_ne!(c(&json!({"n": 10})), c(&json!({"n": 1000})));
    }

    #[test]
    fn numbers_follow_ecmascript() {
        let cases: &[(&str, &str)] = &[
            ("1.0", "1"),
            ("-0.0", "0"),
            ("1e21", "1e+21"),
            ("1e20", "100000000000000000000"),
            ("0.000001", "0.000001"),
            ("1e-7", "1e-7"),
            ("1.5e-7", "1.5e-7"),
            ("123.456", "123.456"),
            ("-2.5", "-2.5"),
            ("4.35", "4.35"),
            ("0.1", "0.1"),
            ("1.7976931348623157e308", "1.7976931348623157e+308"),
            ("5e-324", "5e-324"),
            ("9007199254740992", "9007199254740992"),
        ];
        for (input, want) in cases {
            let v: Value = serde_json::from_str(input).unwrap();
            assert_eq!(c(&v), *want, "{input}");
        }
    }

    #[test]
    fn integers_that_would_round_are_refused() {
        for input in [
            "9007199254740993",
            "-9007199254740993",
            "18446744073709551615",
        ] {
            let v: Value = serde_json::from_str(input).unwrap();
            assert!(canonical_json(&v).is_err(), "{input}");
        }
    }

    #[test]
    fn strings_escape_only_what_rfc_8785_requires() {
        let v = json!({"s": "a\"b\\c\n\u{1}é€😀</script>"});
        assert_eq!(c(&v), "{\"s\":\"a\\\"b\\\\c\\n\\u0001é€😀</script>\"}");
    }

    #[test]
    fn keys_sort_by_utf16_code_units() {
        // By code point U+FF21 comes first; in UTF-16 U+1F600 (0xD83D 0xDE00) does.
        let v = json!({"\u{1F600}": 1, "\u{FF21}": 2, "a": 3});
        assert_eq!(c(&v), "{\"a\":3,\"😀\":1,\"Ａ\":2}");
    }

    #[test]
    fn deep_nesting_is_refused() {
        let mut v = json!(1);
        for _ in 0..(MAX_DEPTH + 2) {
            v = json!([v]);
        }
        assert!(canonical_json(&v).is_err());
    }

    #[test]
    fn the_digest_binds_every_field() {
        let t = TenantId::new_random();
        let a = ActorId::new_random();
        let s = Uuid::new_v4();
        let base = DigestInput {
            tenant: t,
            agent: a,
            session: s,
            tool: "send_email",
            version: 1,
            canonical_arguments: "{\"amount\":10}",
        };
        let d = proposal_digest(&base);
        let variants = [
            DigestInput {
                tenant: TenantId::new_random(),
                ..base
            },
            DigestInput {
                agent: ActorId::new_random(),
                ..base
            },
            DigestInput {
                session: Uuid::new_v4(),
                ..base
            },
            DigestInput {
                tool: "send_emai",
                ..base
            },
            DigestInput { version: 2, ..base },
            DigestInput {
                canonical_arguments: "{\"amount\":1000}",
                ..base
            },
        ];
        for v in variants {
            assert_ne!(proposal_digest(&v), d);
        }
        assert_eq!(proposal_digest(&base), d);
    }
}
