//! Feeds arbitrary JSON text to `canonical_json` (RFC 8785), the form a tool call's proposal
//! digest is computed over. Invariants, when the value canonicalises:
//! - the canonical text is JSON, and canonicalising it again gives the same text;
//! - it is the same value: equal strings, booleans, nulls, array order and key sets; integers
//!   exactly equal, other numbers equal as doubles;
//! - it has no insignificant whitespace, and object keys come in strictly ascending UTF-16
//!   order (checked here with an order on code points, independent of the crate's);
//! - writing the value with its keys in reverse order and with whitespace, then parsing and
//!   canonicalising it, gives the same text (key order and formatting do not matter);
//! - two inputs (the data split at the first 0xff byte) have the same canonical text only if
//!   they are the same value.
#![no_main]

use std::cmp::Ordering;
use std::fmt;

use libfuzzer_sys::fuzz_target;
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use tool_sandbox::canonical::canonical_json;

/// A JSON value that keeps its object keys in document order.
#[derive(Debug)]
enum Ordered {
    Scalar,
    Array(Vec<Ordered>),
    Object(Vec<(String, Ordered)>),
}

impl<'de> Deserialize<'de> for Ordered {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Ordered;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("json")
            }
            fn visit_bool<E>(self, _: bool) -> Result<Ordered, E> {
                Ok(Ordered::Scalar)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Ordered, E> {
                Ok(Ordered::Scalar)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Ordered, E> {
                Ok(Ordered::Scalar)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Ordered, E> {
                Ok(Ordered::Scalar)
            }
            fn visit_str<E>(self, _: &str) -> Result<Ordered, E> {
                Ok(Ordered::Scalar)
            }
            fn visit_unit<E>(self) -> Result<Ordered, E> {
                Ok(Ordered::Scalar)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Ordered, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Ordered::Array(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Ordered, A::Error> {
                let mut entries = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, Ordered>()? {
                    entries.push((k, v));
                }
                Ok(Ordered::Object(entries))
            }
        }
        d.deserialize_any(V)
    }
}

/// UTF-16 code unit order, computed on code points: a supplementary character (a surrogate
/// pair, 0xD800..0xDBFF first) sorts after U+D7FF and before U+E000.
fn utf16_order(a: &str, b: &str) -> Ordering {
    fn rank(c: char) -> u32 {
        let c = u32::from(c);
        match c {
            0..=0xD7FF => c,
            0xE000..=0xFFFF => c + 0x10_0000,
            _ => 0xD800 + (c - 0x1_0000) / 0x400,
        }
    }
    fn low(c: char) -> u32 {
        let c = u32::from(c);
        if c >= 0x1_0000 {
            0xDC00 + (c - 0x1_0000) % 0x400
        } else {
            0
        }
    }
    let mut x = a.chars();
    let mut y = b.chars();
    loop {
        match (x.next(), y.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(p), Some(q)) => {
                let o = rank(p).cmp(&rank(q)).then(low(p).cmp(&low(q)));
                if o != Ordering::Equal {
                    return o;
                }
            }
        }
    }
}

fn sorted(v: &Ordered) {
    match v {
        Ordered::Scalar => {}
        Ordered::Array(items) => items.iter().for_each(sorted),
        Ordered::Object(entries) => {
            for pair in entries.windows(2) {
                assert_eq!(
                    utf16_order(&pair[0].0, &pair[1].0),
                    Ordering::Less,
                    "keys out of order: {:?} then {:?}",
                    pair[0].0,
                    pair[1].0
                );
            }
            entries.iter().for_each(|(_, v)| sorted(v));
        }
    }
}

/// The same JSON value: integers exactly, other numbers as doubles.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let int = |n: &serde_json::Number| {
                n.as_i64()
                    .map(i128::from)
                    .or_else(|| n.as_u64().map(i128::from))
            };
            match (int(x), int(y)) {
                (Some(i), Some(j)) => i == j,
                _ => x.as_f64() == y.as_f64(),
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

/// `value` written with reversed key order and some whitespace.
fn scrambled(value: &Value, out: &mut String) {
    match value {
        Value::Array(items) => {
            out.push_str("[ ");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(" ,\n");
                }
                scrambled(item, out);
            }
            out.push_str(" ]");
        }
        Value::Object(map) => {
            out.push_str("{\t");
            for (i, (k, v)) in map.iter().rev().enumerate() {
                if i > 0 {
                    out.push_str(",\r\n ");
                }
                out.push_str(&serde_json::to_string(k).unwrap());
                out.push_str(" : ");
                scrambled(v, out);
            }
            out.push('}');
        }
        scalar => out.push_str(&serde_json::to_string(scalar).unwrap()),
    }
}

fn check(value: &Value) -> Option<String> {
    let canonical = canonical_json(value).ok()?;
    let reparsed: Value = serde_json::from_str(&canonical)
        .unwrap_or_else(|e| panic!("canonical text is not JSON ({e}): {canonical:?}"));
    assert!(
        same(value, &reparsed),
        "the canonical text is another value: {canonical}"
    );
    let again = canonical_json(&reparsed).expect("canonical text canonicalises");
    assert_eq!(again, canonical, "not idempotent");
    let ordered: Ordered = serde_json::from_str(&canonical).unwrap();
    sorted(&ordered);
    let mut text = String::new();
    scrambled(value, &mut text);
    let scrambled_value: Value = serde_json::from_str(&text).expect("scrambled text parses");
    assert_eq!(
        canonical_json(&scrambled_value).ok().as_deref(),
        Some(canonical.as_str()),
        "key order or whitespace changed the canonical text"
    );
    // No insignificant whitespace: outside strings there is none.
    let mut in_string = false;
    let mut escaped = false;
    for c in canonical.chars() {
        if in_string {
            assert!(u32::from(c) >= 0x20, "raw control character in a string");
            match (escaped, c) {
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => escaped = false,
            }
        } else {
            assert!(
                !c.is_whitespace(),
                "whitespace outside strings: {canonical:?}"
            );
            in_string = c == '"';
        }
    }
    Some(canonical)
}

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(2, |&b| b == 0xff);
    let first = parts.next().unwrap_or_default();
    let Ok(a) = serde_json::from_slice::<Value>(first) else {
        return;
    };
    let ca = check(&a);
    if let Some(second) = parts.next()
        && let Ok(b) = serde_json::from_slice::<Value>(second)
        && let (Some(ca), Some(cb)) = (ca, check(&b))
    {
        assert_eq!(ca == cb, same(&a, &b), "canonical texts {ca} / {cb}");
    }
});
