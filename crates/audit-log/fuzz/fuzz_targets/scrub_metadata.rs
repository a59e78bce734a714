//! Feeds arbitrary JSON metadata (or, when the bytes are not a JSON object, a string made of
//! them) to `Scrubber::scrub_metadata`, under each replacement (mask, drop, pseudonymise) and a
//! policy with keep / scan / pseudonymise / drop fields, and free text to `scrub_text`.
//!
//! Into the metadata, at a fuzzer-chosen object, it plants values the detectors must catch: an
//! e-mail address (bare, and between fuzzer-chosen text), a Luhn-valid card number (as text
//! between separators, and as a JSON integer), an AWS access key id, and a secret under a
//! denylisted key. Invariants:
//! - never panics; a non-object is `NotAnObject`; the output is an object;
//! - no planted value appears in the output unless it also appears in the output for the same
//!   metadata without the plants (that is, it came from somewhere a detector is not meant to
//!   look, such as a `Keep` field);
//! - no object key in the output is denylisted (except the detectors' own labels, such as
//!   `[jwt]`);
//! - `scrub_text` never returns a text holding the planted e-mail address or AWS key.
#![no_main]

use std::sync::LazyLock;

use audit_log::scrub::{FieldRule, PseudonymKey, Replacement, ScrubError, ScrubPolicy, Scrubber};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value, json};
use tenant_scope::TenantId;

const ACTION: &str = "fuzz.action";
const DENIED: [&str; 9] = [
    "password",
    "api_key",
    "X-Auth-Token",
    "sessionCookie",
    "client_secret",
    "otp",
    "userPIN",
    "key",
    "date_of_birth",
];

static TENANT: LazyLock<TenantId> =
    LazyLock::new(|| "7c1e2d3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f".parse().unwrap());

static SCRUBBERS: LazyLock<Vec<Scrubber>> = LazyLock::new(|| {
    [
        Replacement::Mask,
        Replacement::Drop,
        Replacement::Pseudonymise,
    ]
    .into_iter()
    .map(|r| {
        let policy = ScrubPolicy::new()
            .with_replacement(r)
            .allow(ACTION, "kept", FieldRule::Keep)
            .allow(ACTION, "scanned", FieldRule::Scan)
            .allow(ACTION, "pseudo", FieldRule::Pseudonymise)
            .allow(ACTION, "dropped", FieldRule::Drop)
            .deny_key("date_of_birth");
        Scrubber::new(policy, vec![PseudonymKey::new(1, Box::new([3; 32]))]).unwrap()
    })
    .collect()
});

fn pick(byte: u8, alphabet: &[u8]) -> char {
    char::from(alphabet[usize::from(byte) % alphabet.len()])
}

struct Plants {
    email: String,
    card: String,
    aws: String,
    secret: String,
    denied_key: &'static str,
}

fn plants(config: u8, m: &[u8; 8]) -> Plants {
    const ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    const LOCAL: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789._+-";
    const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyz";
    const UPPER: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let email = format!(
        "{}{}{}@{}{}.{}{}",
        pick(m[0], ALNUM),
        pick(m[1], LOCAL),
        pick(m[2], ALNUM),
        pick(m[3], ALNUM),
        pick(m[4], ALNUM),
        pick(m[5], LETTERS),
        pick(m[6], LETTERS),
    );
    // 4, fourteen digits, and the Luhn check digit.
    let mut digits: Vec<u8> = vec![4];
    digits.extend((0..14).map(|i| m[i % 8].wrapping_add(i as u8) % 10));
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = u32::from(d);
            if i % 2 == 0 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    digits.push(((10 - sum % 10) % 10) as u8);
    let card: String = digits.iter().map(|d| char::from(b'0' + d)).collect();
    let aws = format!(
        "AKIA{}",
        (0..16)
            .map(|i| pick(m[i % 8].rotate_left(i as u32), UPPER))
            .collect::<String>()
    );
    let secret = format!(
        "Zq{}Zq",
        m.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    Plants {
        email,
        card,
        aws,
        secret,
        denied_key: DENIED[usize::from(config >> 2) % DENIED.len()],
    }
}

/// JSON pointers of every object in `value`; `scannable` ones exclude the `kept` field.
fn objects(value: &Value, path: String, scannable: bool, out: &mut Vec<(String, bool)>) {
    match value {
        Value::Object(map) => {
            out.push((path.clone(), scannable));
            for (k, v) in map {
                let top_kept = path.is_empty() && k == "kept";
                let escaped = k.replace('~', "~0").replace('/', "~1");
                objects(v, format!("{path}/{escaped}"), scannable && !top_kept, out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                objects(v, format!("{path}/{i}"), scannable, out);
            }
        }
        _ => {}
    }
}

fn keys_ok(value: &Value, policy: &ScrubPolicy) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                assert!(
                    !policy.denies_key(k) || k.contains('['),
                    "denylisted key {k:?} in the output"
                );
                keys_ok(v, policy);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| keys_ok(v, policy)),
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 9 {
        return;
    }
    let config = data[0];
    let material: [u8; 8] = data[1..9].try_into().unwrap();
    let mut parts = data[9..].split(|&b| b == 0xfe);
    let json_part = parts.next().unwrap_or_default();
    let prefix = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let suffix = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let scrubber = &SCRUBBERS[usize::from(config % 3)];
    let tenant = *TENANT;

    let metadata = match serde_json::from_slice::<Value>(json_part) {
        Ok(Value::Object(map)) => Value::Object(map),
        Ok(other) => {
            let err = scrubber.scrub_metadata(tenant, ACTION, &other);
            assert_eq!(err, Err(ScrubError::NotAnObject));
            json!({ "value": other })
        }
        Err(_) => json!({ "note": String::from_utf8_lossy(json_part) }),
    };
    let p = plants(config, &material);

    // Plant at a fuzzer-chosen object (scannable for the detector plants).
    let mut all = Vec::new();
    objects(&metadata, String::new(), true, &mut all);
    let scannable: Vec<&String> = all.iter().filter(|(_, s)| *s).map(|(p, _)| p).collect();
    let choose = |list: &[&String], byte: u8| list[usize::from(byte) % list.len()].clone();
    let detector_at = choose(&scannable, material[7]);
    let everything: Vec<&String> = all.iter().map(|(p, _)| p).collect();
    let secret_at = choose(&everything, material[6]);
    let mut planted = metadata.clone();
    if let Some(Value::Object(map)) = planted.pointer_mut(&detector_at) {
        map.insert("fz_bare".into(), json!(p.email));
        map.insert(
            "fz_email".into(),
            json!(format!("{prefix}{}{suffix}", p.email)),
        );
        map.insert(
            "fz_card".into(),
            json!(format!("{prefix}|{}|{suffix}", p.card)),
        );
        map.insert("fz_cardnum".into(), json!(p.card.parse::<u64>().unwrap()));
        map.insert("fz_aws".into(), json!(format!("{prefix}{}{suffix}", p.aws)));
    }
    if let Some(Value::Object(map)) = planted.pointer_mut(&secret_at) {
        map.insert(p.denied_key.into(), json!(p.secret));
        let mut inner = Map::new();
        inner.insert(p.denied_key.into(), json!([p.secret, { "x": p.secret }]));
        map.insert("fz_nested".into(), Value::Object(inner));
    }

    let out = scrubber
        .scrub_metadata(tenant, ACTION, &planted)
        .expect("an object scrubs");
    assert!(out.is_object());
    keys_ok(&out, scrubber.policy());
    let text = serde_json::to_string(&out).unwrap();
    let mut baseline: Option<String> = None;
    for (what, value) in [
        ("e-mail", &p.email),
        ("card", &p.card),
        ("AWS key", &p.aws),
        ("secret", &p.secret),
    ] {
        if text.contains(value.as_str()) {
            let base = baseline.get_or_insert_with(|| {
                let out = scrubber.scrub_metadata(tenant, ACTION, &metadata).unwrap();
                serde_json::to_string(&out).unwrap()
            });
            assert!(
                base.contains(value.as_str()),
                "planted {what} {value:?} leaked: {text}"
            );
        }
    }

    for plain in [
        p.email.clone(),
        format!("{prefix}{}{suffix}", p.email),
        format!("{prefix}{}{suffix}", p.aws),
    ] {
        let scrubbed = scrubber.scrub_text(tenant, &plain);
        assert!(
            !scrubbed.contains(&p.email) && !scrubbed.contains(&p.aws),
            "scrub_text leaked: {plain:?} -> {scrubbed:?}"
        );
    }
});
