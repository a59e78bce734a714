#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The scrubber against real-world shapes of each thing it must remove, each shape both as a
//! plain value and inside structures (arrays, deep objects, nested JSON strings, name/value
//! pairs, encoded blobs); key/value structures judged like object keys; encoded blobs decoded
//! within bounds; digits of every script, cards in floats and negative numbers, e-mail with
//! ideographic dots, confusable keys. Every attack test has a positive control: a legitimate
//! value or shape that passes through unchanged.

use std::time::{Duration, Instant};

use audit_log::scrub::{
    FieldRule, MAX_DECODE_DEPTH, PseudonymKey, Replacement, ScrubPolicy, Scrubber,
};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use tenant_scope::TenantId;

const ACTION: &str = "test.action";

/// A generous bound for the hostile inputs, for unoptimised test builds on a shared machine:
/// it catches an amplifier (work growing with the nesting or the number of blobs), not a slow
/// detector.
const BOUND_SECS: u64 = 60;

fn tenant() -> TenantId {
    "7f1c2a4e-5b6d-4e8f-9a0b-1c2d3e4f5a6b".parse().unwrap()
}

fn scrubber(replacement: Replacement) -> Scrubber {
    Scrubber::new(
        ScrubPolicy::new().with_replacement(replacement),
        vec![PseudonymKey::new(1, Box::new([1; 32]))],
    )
    .unwrap()
}

fn mask() -> Scrubber {
    scrubber(Replacement::Mask)
}

fn scrub(s: &Scrubber, metadata: &Value) -> Value {
    s.scrub_metadata(tenant(), ACTION, metadata).unwrap()
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Every way a value can be carried: the same shape as a plain value and inside structures.
fn shapes(value: &str) -> Vec<(&'static str, Value)> {
    let nested = json!({ "c": value }).to_string();
    vec![
        ("value", json!({ "v": value })),
        ("array", json!({ "v": ["ok", value] })),
        ("deep", json!({ "a": { "b": [ { "c": { "d": value } } ] } })),
        ("nested_json_string", json!({ "v": nested })),
        ("header_pair", json!({ "headers": [["X-Note", value]] })),
        (
            "har_header",
            json!({ "headers": [{ "name": "X-Note", "value": value }] }),
        ),
        (
            "flat_header_list",
            json!({ "raw": ["Host", "example.com", "X-Note", value] }),
        ),
        (
            "form_field",
            json!({ "fields": [{ "type": "text", "name": "note", "value": value }] }),
        ),
        ("as_key", json!({ "m": { value: 1 } })),
        ("base64", json!({ "v": STANDARD.encode(value) })),
        ("base64url", json!({ "v": URL_SAFE_NO_PAD.encode(value) })),
        ("hex", json!({ "v": hex::encode(value) })),
        (
            "percent",
            json!({ "v": format!("/cb?next={}", percent_encode(value)) }),
        ),
        (
            "base64_in_json",
            json!({ "v": STANDARD.encode(nested.as_bytes()) }),
        ),
    ]
}

/// Asserts that `secret` is nowhere in the output of `value` in any shape, under every
/// replacement, and that free text loses it too.
#[track_caller]
fn assert_removed_everywhere(detector: &str, value: &str, secret: &str) {
    assert!(value.contains(secret), "{detector}: bad test data");
    for replacement in [
        Replacement::Mask,
        Replacement::Pseudonymise,
        Replacement::Drop,
    ] {
        let s = scrubber(replacement);
        for (shape, metadata) in shapes(value) {
            let out = scrub(&s, &metadata).to_string();
            let escaped = serde_json::to_string(secret).unwrap();
            assert!(
                !out.contains(secret) && !out.contains(escaped.trim_matches('"')),
                "{detector} as {shape} ({replacement:?}): {secret:?} leaked in {out}"
            );
        }
        let text = s.scrub_text(tenant(), value);
        assert!(
            !text.contains(secret),
            "{detector} as text ({replacement:?}): leaked in {text}"
        );
    }
}

/// Asserts that a legitimate value passes through unchanged in every shape. Encoded shapes
/// only must not be flagged as encoding something: their characters are still scanned as they
/// are, so the hex of `in 42 seconds` may hold a digit run that the card detector takes
/// (`203432207365636` passes the Luhn check), as any such run would.
#[track_caller]
fn assert_unchanged_everywhere(name: &str, value: &str) {
    let s = mask();
    for (shape, metadata) in shapes(value) {
        let out = scrub(&s, &metadata);
        if ["base64", "base64url", "hex", "base64_in_json"].contains(&shape) {
            assert!(
                !out.to_string().contains("[encoded]"),
                "{name} as {shape}: {out}"
            );
        } else {
            assert_eq!(out, metadata, "{name} as {shape} was changed");
        }
    }
    assert_eq!(s.scrub_text(tenant(), value), value, "{name} as text");
}

/// Per detector: real-world shapes, each with the part that must go.
const CORPUS: &[(&str, &[(&str, &str)])] = &[
    (
        "email",
        &[
            ("ann.lee@example.com", "ann.lee@example.com"),
            (
                "To: \"Ann Lee\" <ann+billing@mail.example.co.uk>",
                "ann+billing@mail.example.co.uk",
            ),
            ("mailto:o'brien@example.ie?subject=hi", "o'brien@example.ie"),
            (
                "josé.garcía@correo.example.es",
                "josé.garcía@correo.example.es",
            ),
            ("ann@example\u{3002}com", "ann@example\u{3002}com"),
            ("ann@example\u{FF0E}com", "ann@example\u{FF0E}com"),
            (
                "ann@example\u{FF61}co\u{FF61}jp",
                "ann@example\u{FF61}co\u{FF61}jp",
            ),
            ("ann\u{FF20}example.com", "ann\u{FF20}example.com"),
        ],
    ),
    (
        "phone",
        &[
            ("+1 (415) 555-0132", "415) 555-0132"),
            ("call +44 20 7946 0958 now", "20 7946 0958"),
            ("+4930901820", "4930901820"),
            (
                "+\u{0664}\u{0669}\u{0663}\u{0660}\u{0669}\u{0660}\u{0661}\u{0668}\u{0662}\u{0660}",
                "\u{0669}\u{0663}\u{0660}\u{0669}\u{0660}\u{0661}\u{0668}",
            ),
            (
                "+\u{0967}\u{096A}\u{0967}\u{096B}\u{096B}\u{096B}\u{096B}\u{0966}\u{0967}\u{0969}\u{0968}",
                "\u{096B}\u{096B}\u{096B}\u{096B}\u{0966}",
            ),
        ],
    ),
    (
        "card",
        &[
            ("4111111111111111", "4111111111111111"),
            ("card 4111 1111 1111 1111 declined", "4111 1111 1111 1111"),
            ("amex 3782-822463-10005", "3782-822463-10005"),
            ("pan=5555555555554444;", "5555555555554444"),
            ("-4111111111111111", "4111111111111111"),
            ("4111111111111111.0", "4111111111111111"),
            (
                "\u{FF14}\u{FF11}\u{FF11}\u{FF11}\u{FF11}\u{FF11}\u{FF11}\u{FF11}\u{FF11}\u{FF11}\u{FF11}\u{FF11}\u{FF11}\u{FF11}\u{FF11}\u{FF11}",
                "\u{FF11}\u{FF11}\u{FF11}\u{FF11}\u{FF11}\u{FF11}\u{FF11}",
            ),
            (
                "\u{0664}\u{0661}\u{0661}\u{0661} \u{0661}\u{0661}\u{0661}\u{0661} \u{0661}\u{0661}\u{0661}\u{0661} \u{0661}\u{0661}\u{0661}\u{0661}",
                "\u{0661}\u{0661}\u{0661}\u{0661} \u{0661}\u{0661}\u{0661}\u{0661}",
            ),
            (
                "4111 \u{0967}\u{0967}\u{0967}\u{0967} 1111 \u{FF11}\u{FF11}\u{FF11}\u{FF11}",
                "\u{0967}\u{0967}\u{0967}\u{0967} 1111",
            ),
        ],
    ),
    (
        "jwt",
        &[(
            "id_token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.dBjftJeZ4CVPmB92K27uhbUJU1p1r_wW1gFWFOEjXk",
            "dBjftJeZ4CVPmB92K27uhbUJU1p1r_wW1gFWFOEjXk",
        )],
    ),
    (
        "bearer",
        &[
            (
                "Bearer 8f14e45fceea167a5a36dedd4bea2543",
                "8f14e45fceea167a5a36dedd4bea2543",
            ),
            ("retry with bearer Zm9vYmFyYmF6cXV4", "Zm9vYmFyYmF6cXV4"),
        ],
    ),
    (
        "basic",
        &[("Basic YWxhZGRpbjpvcGVuc2VzYW1l", "YWxhZGRpbjpvcGVuc2VzYW1l")],
    ),
    (
        "cloud_key",
        &[
            ("AKIAIOSFODNN7EXAMPLE", "AKIAIOSFODNN7EXAMPLE"),
            (
                "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",
                "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",
            ),
            (
                "xoxb-17653672481-19874698323-pdFZKVeTuE8sk7oOcBrzbqgy",
                "xoxb-17653672481-19874698323-pdFZKVeTuE8sk7oOcBrzbqgy",
            ),
            (
                "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
                "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
            ),
        ],
    ),
    (
        "pem",
        &[(
            "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----",
            "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC",
        )],
    ),
    (
        "userinfo",
        &[("postgres://app:s3cr3tPw@db.internal:5432/app", "s3cr3tPw")],
    ),
    (
        "url_parameter",
        &[
            (
                "https://hooks.example.com/in?token=T0k3nValue&page=2",
                "T0k3nValue",
            ),
            (
                "https://s3.example.com/b/k?X-Amz-Signature=abcdef0123456789",
                "abcdef0123456789",
            ),
        ],
    ),
    (
        "key_value",
        &[
            ("login failed password=hunter2", "hunter2"),
            ("client_secret: \"cs-8842-xyz\"", "cs-8842-xyz"),
            ("p\u{0430}ssword=hunter2", "hunter2"),
            (
                "\u{FF50}\u{FF41}\u{FF53}\u{FF53}\u{FF57}\u{FF4F}\u{FF52}\u{FF44}\u{FF1A}hunter2",
                "hunter2",
            ),
            ("Cookie: session=abc123; theme=dark", "abc123"),
        ],
    ),
];

#[test]
fn every_detector_corpus_is_removed_in_every_shape() {
    for (detector, cases) in CORPUS {
        for (value, secret) in *cases {
            assert_removed_everywhere(detector, value, secret);
        }
    }
}

/// Positive control for the corpus: ordinary values, in the same shapes, come back unchanged.
#[test]
fn legitimate_values_pass_unchanged_in_every_shape() {
    for (name, value) in [
        ("prose", "the export finished in 42 seconds"),
        ("uuid", "b98b93d0-8149-4970-9684-04213693884a"),
        (
            "sha256",
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        ),
        ("path", "/v1/tenants/42/users?page=2&per_page=50"),
        ("arabic_count", "\u{0663} items"),
        ("version", "v1.2.3+build.45"),
        ("ip", "203.0.113.7:443"),
        ("short_number", "order 1234567"),
        ("word_with_dot", "file.tar.gz"),
    ] {
        assert_unchanged_everywhere(name, value);
    }
}

// --- Key/value structures are judged like object keys. ---

#[test]
fn denied_names_in_pair_structures_are_removed_like_keys() {
    let s = mask();
    for (shape, metadata, secret) in [
        (
            "array_pair",
            json!({ "p": [["password", "hunter2"]] }),
            "hunter2",
        ),
        (
            "name_value",
            json!({ "p": [{ "name": "password", "value": "hunter2" }] }),
            "hunter2",
        ),
        (
            "key_value_object",
            json!({ "cfg": { "key": "api_key", "value": "k-123456" } }),
            "k-123456",
        ),
        (
            "har_headers",
            json!({ "request": { "headers": [
                { "name": "Accept", "value": "*/*" },
                { "name": "Authorization", "value": "Digest username=ann" },
            ] } }),
            "username=ann",
        ),
        (
            "header_tuples",
            json!({ "headers": [["accept", "*/*"], ["Cookie", "sid=abc"]] }),
            "sid=abc",
        ),
        (
            "raw_headers",
            json!({ "raw": ["Host", "example.com", "X-Api-Key", "k-123456"] }),
            "k-123456",
        ),
        (
            "form_fields",
            json!({ "form": [{ "type": "password", "name": "new", "value": "hunter2" }] }),
            "hunter2",
        ),
        (
            "form_field_named",
            json!({ "form": [{ "field": "ssn", "data": "078-05-1120" }] }),
            "078-05-1120",
        ),
        (
            "confusable_name",
            json!({ "p": [["p\u{0430}ssword", "hunter2"]] }),
            "hunter2",
        ),
        (
            "top_level_pair",
            json!({ "name": "password", "value": "hunter2" }),
            "hunter2",
        ),
        (
            "pair_in_nested_json",
            json!({ "body": "[[\"token\",\"t-998877\"]]" }),
            "t-998877",
        ),
        (
            "pair_in_base64",
            json!({ "body": STANDARD.encode(r#"[{"name":"password","value":"hunter2"}]"#) }),
            "hunter2",
        ),
    ] {
        let out = scrub(&s, &metadata).to_string();
        assert!(!out.contains(secret), "{shape}: leaked in {out}");
    }
    // The other pairs of the same lists stay.
    let out = scrub(
        &s,
        &json!({ "headers": [["accept", "*/*"], ["Cookie", "sid=abc"]],
                 "raw": ["Host", "example.com", "X-Api-Key", "k"] }),
    );
    assert_eq!(
        out,
        json!({ "headers": [["accept", "*/*"]], "raw": ["Host", "example.com"] })
    );
}

#[test]
fn denied_pairs_are_removed_even_in_fields_kept_verbatim() {
    let s = Scrubber::new(
        ScrubPolicy::new().allow(ACTION, "request", FieldRule::Keep),
        Vec::new(),
    )
    .unwrap();
    let out = scrub(
        &s,
        &json!({ "request": { "headers": [
            { "name": "Accept", "value": "*/*" },
            { "name": "Proxy-Authorization", "value": "Basic YTpi" },
        ] } }),
    );
    assert_eq!(
        out,
        json!({ "request": { "headers": [{ "name": "Accept", "value": "*/*" }] } })
    );
}

/// Positive control: pair structures with ordinary names, and texts that only mention a
/// denied word, are kept as they are.
#[test]
fn ordinary_pairs_and_lists_are_unchanged() {
    let s = mask();
    for metadata in [
        json!({ "tags": [["region", "eu-west-1"], ["tier", "gold"]] }),
        json!({ "headers": [{ "name": "Accept", "value": "*/*" }] }),
        json!({ "attrs": { "name": "region", "value": "eu" } }),
        json!({ "raw": ["Host", "example.com", "Accept", "*/*"] }),
        json!({ "event": { "type": "password_reset", "user": "u-42" } }),
        json!({ "lines": ["retried with bearer token missing", "plain"] }),
        json!({ "scopes": ["read", "write"] }),
    ] {
        assert_eq!(scrub(&s, &metadata), metadata);
    }
}

// --- Encoded blobs are decoded and scanned, within bounds. ---

#[test]
fn secrets_hidden_in_encodings_are_found() {
    let s = mask();
    let email = "ann.lee@example.com";
    let json_secret = r#"{"password":"hunter2"}"#;
    for (shape, value, secret) in [
        ("base64_kv", STANDARD.encode("password=hunter2"), "hunter2"),
        ("base64_json", STANDARD.encode(json_secret), "hunter2"),
        ("base64url_email", URL_SAFE_NO_PAD.encode(email), email),
        (
            "hex_card",
            hex::encode("4111111111111111"),
            "4111111111111111",
        ),
        ("hex_0x", format!("0x{}", hex::encode(email)), email),
        (
            "percent_email",
            format!("next=/home?to={}", percent_encode(email)),
            email,
        ),
        (
            "percent_json",
            format!("state={}", percent_encode(json_secret)),
            "hunter2",
        ),
        (
            "double_percent",
            "to=ann.lee%2540example.com".to_owned(),
            "ann.lee",
        ),
        (
            "base64_in_percent",
            format!("d={}", percent_encode(&STANDARD.encode(email))),
            email,
        ),
        (
            "three_layers",
            STANDARD.encode(hex::encode(STANDARD.encode(email))),
            email,
        ),
    ] {
        let out = scrub(&s, &json!({ "v": value }));
        let text = out["v"].as_str().unwrap_or_default();
        assert_ne!(text, value, "{shape}: not detected");
        // Whatever remains does not decode to the secret either.
        for layer in [
            text.to_owned(),
            String::from_utf8_lossy(&STANDARD.decode(text).unwrap_or_default()).into_owned(),
        ] {
            assert!(!layer.contains(secret), "{shape}: leaked in {layer}");
        }
    }
    // Percent-encoding keeps positions: only the address is masked.
    let out = s.scrub_text(
        tenant(),
        "https://x.example/cb?next=%2Fhome%3Fto%3Dann%40example.com&page=2",
    );
    assert_eq!(
        out,
        "https://x.example/cb?next=%2Fhome%3Fto%3D[email]&page=2"
    );
}

#[test]
fn encodings_nested_deeper_than_the_limit_are_masked_not_passed() {
    let s = mask();
    let mut value = "ann@example.com".to_owned();
    for _ in 0..=MAX_DECODE_DEPTH {
        value = STANDARD.encode(value);
    }
    let out = s.scrub_text(tenant(), &value);
    assert_eq!(out, "[encoded]");
    // Positive control: ordinary text encoded as deep is not a finding... unless it is text
    // at the limit, which fails closed; a random binary blob stays.
    let nonce = STANDARD.encode([
        0x9c, 0x01, 0xf3, 0x88, 0xfe, 0x10, 0xa7, 0x42, 0xd1, 0x07, 0xee, 0x93,
    ]);
    assert_eq!(s.scrub_text(tenant(), &nonce), nonce);
}

#[test]
fn decoding_is_bounded_on_hostile_input() {
    let s = mask();
    // Many nested blobs: each decodes to more blobs, all within the budget, all found.
    let inner = STANDARD.encode("ann@example.com ".repeat(8));
    let layer1 = STANDARD.encode(format!("{inner} ").repeat(64));
    let hostile = format!("{layer1} ").repeat(8);
    assert!(hostile.len() < 128 * 1024);
    let started = Instant::now();
    let out = s.scrub_text(tenant(), &hostile);
    assert!(
        started.elapsed() < Duration::from_secs(BOUND_SECS),
        "took {:?}",
        started.elapsed()
    );
    assert!(!out.contains(&layer1), "an undecoded blob passed");
    assert!(out.contains("[encoded]"));

    // Hex inside hex inside hex of harmless text: every run is decoded as hex and as base64
    // at every layer, which adds up to more than the decode budget. The text cannot be
    // scanned whole, so it does not pass.
    let unit = hex::encode(hex::encode(hex::encode("the quick brown fox")));
    let amplifier = format!("{unit} ").repeat(255 * 1024 / (unit.len() + 1));
    assert!(amplifier.len() < 256 * 1024);
    let started = Instant::now();
    let out = s.scrub_text(tenant(), &amplifier);
    assert!(
        started.elapsed() < Duration::from_secs(BOUND_SECS),
        "took {:?}",
        started.elapsed()
    );
    assert!(out == "[truncated]", "{}", out.get(..200).unwrap_or(&out));
    // Positive control: one such unit is decoded three layers deep and kept.
    assert_eq!(s.scrub_text(tenant(), &unit), unit);

    // A metadata object of many encoded strings: each is decoded or, past the budget,
    // truncated; never passed through undecoded.
    let blob = STANDARD.encode(format!("password=hunter2 {}", "x".repeat(3000)));
    let metadata = json!({ "list": vec![blob.clone(); 200] });
    let started = Instant::now();
    let out = scrub(&s, &metadata);
    assert!(
        started.elapsed() < Duration::from_secs(BOUND_SECS),
        "took {:?}",
        started.elapsed()
    );
    for item in out["list"].as_array().unwrap() {
        assert!(
            item == "[encoded]" || item == "[truncated]",
            "unexpected {item}"
        );
    }
}

/// Positive control: things that merely look encoded come back unchanged.
#[test]
fn ordinary_encoded_looking_values_are_unchanged() {
    let s = mask();
    for value in [
        "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".to_owned(),
        STANDARD.encode([
            0x9c, 0x01, 0xf3, 0x88, 0xfe, 0x10, 0xa7, 0x42, 0xd1, 0x07, 0xee, 0x93,
        ]),
        STANDARD.encode(r#"{"page":2,"sort":"name"}"#),
        "/search?q=caf%C3%A9%20au%20lait".to_owned(),
        "hello%20world".to_owned(),
        "ConfigurationServiceName".to_owned(),
        "b98b93d0-8149-4970-9684-04213693884a".to_owned(),
    ] {
        let metadata = json!({ "v": value });
        assert_eq!(scrub(&s, &metadata), metadata, "{value}");
    }
}

// --- Digits of every script, cards in floats and negatives, e-mail dots, confusable keys. ---

#[test]
fn card_numbers_in_floats_and_negative_numbers_are_found() {
    let s = mask();
    let metadata: Value = serde_json::from_str(
        r#"{"neg": -4111111111111111, "float": 4111111111111111.0, "exp": 4.111111111111111e15,
            "big_float": 5555555555554444.0, "ok_float": 3.25, "ok_int": 1700000000004,
            "ok_neg": -42, "ok_big": 1e15}"#,
    )
    .unwrap();
    let out = scrub(&s, &metadata);
    for field in ["neg", "float", "exp", "big_float"] {
        assert_eq!(out[field], "[card]", "{field}: {}", out[field]);
    }
    for field in ["ok_float", "ok_int", "ok_neg", "ok_big"] {
        assert_eq!(out[field], metadata[field], "{field}");
    }
}

#[test]
fn digits_of_every_script_are_folded_before_number_detectors() {
    let s = mask();
    let fullwidth: String = "4111111111111111"
        .chars()
        .map(|c| char::from_u32(u32::from(c) - u32::from('0') + 0xFF10).unwrap())
        .collect();
    let bold: String = "5555555555554444"
        .chars()
        .map(|c| char::from_u32(u32::from(c) - u32::from('0') + 0x1D7CE).unwrap())
        .collect();
    assert_eq!(
        s.scrub_text(tenant(), &format!("card {fullwidth} ok")),
        "card [card] ok"
    );
    assert_eq!(s.scrub_text(tenant(), &format!("pan {bold}")), "pan [card]");
    // The same card in any script has the same pseudonym.
    let p = scrubber(Replacement::Pseudonymise);
    assert_eq!(
        p.scrub_text(tenant(), &fullwidth),
        p.scrub_text(tenant(), "4111111111111111")
    );
    // Positive control: numbers that are not cards or phones, in any script, stay.
    for text in [
        "\u{0663}\u{0664} items",
        "\u{FF11}\u{FF12}\u{FF13} points",
        "room \u{096A}\u{0968}",
    ] {
        assert_eq!(s.scrub_text(tenant(), text), text);
    }
}

#[test]
fn email_with_ideographic_and_fullwidth_dots_is_found_and_pseudonymised_consistently() {
    let s = mask();
    for text in [
        "ann@example\u{3002}com",
        "ann@example\u{FF0E}com",
        "ann@mail\u{FF61}example\u{FF61}jp",
        "ann\u{FF20}example.com",
    ] {
        assert_eq!(s.scrub_text(tenant(), text), "[email]", "{text}");
    }
    let p = scrubber(Replacement::Pseudonymise);
    assert_eq!(
        p.scrub_text(tenant(), "ann\u{FF20}example\u{3002}com"),
        p.pseudonym(tenant(), "ann@example.com").unwrap()
    );
    // Positive control: a sentence ending with an ideographic full stop is not an address.
    let text = "\u{5B8C}\u{4E86}\u{3002}\u{6B21}";
    assert_eq!(s.scrub_text(tenant(), text), text);
}

#[test]
fn confusable_spellings_of_denied_keys_are_removed_at_any_depth() {
    let s = mask();
    for key in [
        "p\u{0430}ssword",
        "\u{FF50}\u{FF41}\u{FF53}\u{FF53}\u{FF57}\u{FF4F}\u{FF52}\u{FF44}",
        "passw0rd",
        "pass\u{200B}word",
        "\u{1D42D}\u{1D428}\u{1D424}\u{1D41E}\u{1D427}",
        "api_k\u{0435}y",
        "\u{0455}ecret",
    ] {
        for metadata in [
            json!({ key: "s3cr3t-value" }),
            json!({ "a": [{ "b": { key: "s3cr3t-value" } }] }),
            json!({ "body": json!({ key: "s3cr3t-value" }).to_string() }),
        ] {
            let out = scrub(&s, &metadata).to_string();
            assert!(!out.contains("s3cr3t-value"), "{key:?}: leaked in {out}");
        }
    }
    // Positive control: ordinary keys, also in other scripts, stay.
    let metadata = json!({ "n\u{0430}me": "x", "email_verified": true, "\u{540D}\u{524D}": "y", "keyboard": "us" });
    assert_eq!(scrub(&s, &metadata), metadata);
}
