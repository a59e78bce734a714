#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The scrubber against a corpus of personal data and credentials: each case names what must
//! not reach the audit log and what must survive around it.

use audit_log::scrub::{
    FieldRule, MAX_DEPTH, PseudonymKey, Replacement, ScrubError, ScrubPolicy, Scrubber,
    UnknownFields,
};
use proptest::prelude::*;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tenant_scope::TenantId;

const ACTION: &str = "test.action";

fn tenant_a() -> TenantId {
    "7f1c2a4e-5b6d-4e8f-9a0b-1c2d3e4f5a6b".parse().unwrap()
}

fn tenant_b() -> TenantId {
    "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d".parse().unwrap()
}

fn key(version: u32) -> PseudonymKey {
    PseudonymKey::new(version, Box::new([u8::try_from(version).unwrap(); 32]))
}

fn scrubber(policy: ScrubPolicy) -> Scrubber {
    Scrubber::new(policy, vec![key(1)]).unwrap()
}

fn with(replacement: Replacement) -> Scrubber {
    scrubber(ScrubPolicy::new().with_replacement(replacement))
}

fn scrub(s: &Scrubber, metadata: &Value) -> Value {
    s.scrub_metadata(tenant_a(), ACTION, metadata).unwrap()
}

fn digits(s: &str) -> String {
    s.chars().filter(char::is_ascii_digit).collect()
}

fn luhn(number: &str) -> bool {
    let sum: u32 = digits(number)
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 1 {
                if d * 2 > 9 { d * 2 - 9 } else { d * 2 }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// The secret is in none of its forms in `output`: as written, JSON-escaped, and (for
/// numbers) as bare digits, also after removing the separators from the output.
#[track_caller]
fn assert_absent(output: &str, secret: &str, case: &str) {
    assert!(
        !output.contains(secret),
        "{case}: {secret:?} leaked in {output}"
    );
    let escaped = serde_json::to_string(secret).unwrap();
    let escaped = escaped.trim_matches('"');
    assert!(
        !output.contains(escaped),
        "{case}: {secret:?} leaked (escaped) in {output}"
    );
    let secret_digits = digits(secret);
    if secret_digits.len() >= 7 {
        let compact: String = output.chars().filter(|c| !matches!(c, ' ' | '-')).collect();
        assert!(
            !compact.contains(&secret_digits),
            "{case}: digits of {secret:?} leaked in {output}"
        );
    }
}

struct Case {
    name: &'static str,
    text: &'static str,
    /// Must not appear in the output, in any form.
    secrets: &'static [&'static str],
    /// Must survive, verbatim, under Mask and Pseudonymise.
    kept: &'static [&'static str],
    /// Must appear under Mask.
    label: &'static str,
}

const JWT: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";

const PEM: &str = "-----BEGIN RSA PRIVATE KEY-----
MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun
VTLw7onLRnrq0/IzW7yWR7QkrmBL7jTKEn5u+qKhbwKfBstIs+bMY2Zkp18gnTxK
LxoS2tFczGkPLPgizskuemMghRniWaoLcyehkd3qqGElvW/VDL5AaWTg0nLVkjRo
-----END RSA PRIVATE KEY-----";

const CORPUS: &[Case] = &[
    Case {
        name: "visa_plain",
        text: "card 4111111111111111 declined",
        secrets: &["4111111111111111"],
        kept: &["card ", " declined"],
        label: "[card]",
    },
    Case {
        name: "visa_spaced",
        text: "paid with 4111 1111 1111 1111.",
        secrets: &["4111 1111 1111 1111"],
        kept: &["paid with "],
        label: "[card]",
    },
    Case {
        name: "visa_13_digits",
        text: "legacy 4222222222222",
        secrets: &["4222222222222"],
        kept: &["legacy "],
        label: "[card]",
    },
    Case {
        name: "mastercard_dashed",
        text: "pan=5555-5555-5555-4444;",
        secrets: &["5555-5555-5555-4444"],
        kept: &["pan="],
        label: "[card]",
    },
    Case {
        name: "mastercard_2_series",
        text: "mc 2223003122003222 ok",
        secrets: &["2223003122003222"],
        kept: &["mc ", " ok"],
        label: "[card]",
    },
    Case {
        name: "amex_grouped",
        text: "amex 3782 822463 10005 exp 12/29",
        secrets: &["3782 822463 10005"],
        kept: &["amex ", " exp 12/29"],
        label: "[card]",
    },
    Case {
        name: "amex_plain",
        text: "378282246310005",
        secrets: &["378282246310005"],
        kept: &[],
        label: "[card]",
    },
    Case {
        name: "discover_after_other_numbers",
        text: "qty 3 item 7 card 6011 1111 1111 1117 total 12",
        secrets: &["6011 1111 1111 1117"],
        kept: &["qty 3 item 7 card ", " total 12"],
        label: "[card]",
    },
    Case {
        name: "card_glued_to_letters",
        text: "cc:4012888888881881x",
        secrets: &["4012888888881881"],
        kept: &["cc:"],
        label: "[card]",
    },
    Case {
        name: "email_plain",
        text: "invited alice@example.com today",
        secrets: &["alice@example.com"],
        kept: &["invited ", " today"],
        label: "[email]",
    },
    Case {
        name: "email_plus_addressing",
        text: "to: bob+audit-2024@mail.example.co.uk,",
        secrets: &["bob+audit-2024@mail.example.co.uk", "bob+audit"],
        kept: &["to: "],
        label: "[email]",
    },
    Case {
        name: "email_uppercase",
        text: "CAROL.DANVERS@EXAMPLE.ORG",
        secrets: &["CAROL.DANVERS@EXAMPLE.ORG"],
        kept: &[],
        label: "[email]",
    },
    Case {
        name: "email_unicode",
        text: "owner <josé.müller@bücher.example>",
        secrets: &["josé.müller@bücher.example"],
        kept: &["owner <", ">"],
        label: "[email]",
    },
    Case {
        name: "email_quoted_name",
        text: "'o'brien@example.ie'",
        secrets: &["o'brien@example.ie"],
        kept: &[],
        label: "[email]",
    },
    Case {
        name: "phone_e164",
        text: "sms sent to +14155552671",
        secrets: &["+14155552671", "4155552671"],
        kept: &["sms sent to "],
        label: "[phone]",
    },
    Case {
        name: "phone_e164_spaced",
        text: "call +44 20 7946 0958 now",
        secrets: &["+44 20 7946 0958", "7946 0958"],
        kept: &["call ", " now"],
        label: "[phone]",
    },
    Case {
        name: "phone_e164_parentheses",
        text: "tel:+1 (415) 555-2671",
        secrets: &["(415) 555-2671"],
        kept: &["tel:"],
        label: "[phone]",
    },
    Case {
        name: "jwt_alone",
        text: JWT,
        secrets: &[JWT, "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"],
        kept: &[],
        label: "[jwt]",
    },
    Case {
        name: "jwt_in_sentence",
        text: "session eyJhbGciOiJub25lIn0.eyJzdWIiOiJhZG1pbiJ9. rejected",
        secrets: &["eyJhbGciOiJub25lIn0.eyJzdWIiOiJhZG1pbiJ9."],
        kept: &["session ", " rejected"],
        label: "[jwt]",
    },
    Case {
        name: "bearer_header_line",
        text: "Authorization: Bearer 8f14e45fceea167a5a36dedd4bea2543\nAccept: */*",
        secrets: &["8f14e45fceea167a5a36dedd4bea2543"],
        kept: &["Accept: */*"],
        label: "[bearer]",
    },
    Case {
        name: "bearer_in_prose",
        text: "retried with bearer Zm9vYmFyYmF6cXV4 and failed",
        secrets: &["Zm9vYmFyYmF6cXV4"],
        kept: &["retried with ", " and failed"],
        label: "[bearer]",
    },
    Case {
        name: "basic_credentials",
        text: "curl -H 'X: Basic YWxhZGRpbjpvcGVuc2VzYW1l' https://example.com",
        secrets: &["YWxhZGRpbjpvcGVuc2VzYW1l"],
        kept: &["curl -H 'X: ", "https://example.com"],
        label: "[basic]",
    },
    Case {
        name: "aws_access_key",
        text: "key id AKIAIOSFODNN7EXAMPLE used",
        secrets: &["AKIAIOSFODNN7EXAMPLE"],
        kept: &["key id ", " used"],
        label: "[cloud_key]",
    },
    Case {
        name: "aws_session_key_glued",
        text: "creds=ASIAY34FZKBOKMUTVV7A",
        secrets: &["ASIAY34FZKBOKMUTVV7A"],
        kept: &["creds="],
        label: "[cloud_key]",
    },
    Case {
        name: "aws_secret_after_hint",
        text: "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY region=eu-west-1",
        secrets: &["wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"],
        kept: &["region=eu-west-1"],
        label: "[redacted]",
    },
    Case {
        name: "gcp_api_key",
        text: "maps AIzaSyDdI0hCZtE6vySjMm-WEfRq3CPzqKqqsHI end",
        secrets: &["AIzaSyDdI0hCZtE6vySjMm-WEfRq3CPzqKqqsHI"],
        kept: &["maps ", " end"],
        label: "[cloud_key]",
    },
    Case {
        name: "github_classic_token",
        text: "pushed with ghp_1A2b3C4d5E6f7G8h9I0jKlMnOpQrStUvWxYz12",
        secrets: &["ghp_1A2b3C4d5E6f7G8h9I0jKlMnOpQrStUvWxYz12"],
        kept: &["pushed with "],
        label: "[cloud_key]",
    },
    Case {
        name: "github_fine_grained_token",
        text: "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz",
        secrets: &["github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz"],
        kept: &[],
        label: "[cloud_key]",
    },
    Case {
        name: "slack_bot_token",
        text: "slack xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx posted",
        secrets: &["xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx"],
        kept: &["slack ", " posted"],
        label: "[cloud_key]",
    },
    Case {
        name: "stripe_live_key",
        text: "charge via sk_live_51H8xYzAbCdEfGhIjKlMnOpQr",
        secrets: &["sk_live_51H8xYzAbCdEfGhIjKlMnOpQr"],
        kept: &["charge via "],
        label: "[cloud_key]",
    },
    Case {
        name: "stripe_restricted_key",
        text: "rk_live_0123456789abcdefABCDEF",
        secrets: &["rk_live_0123456789abcdefABCDEF"],
        kept: &[],
        label: "[cloud_key]",
    },
    Case {
        name: "pem_private_key_multiline",
        text: concat!(
            "uploaded:\n",
            "-----BEGIN RSA PRIVATE KEY-----\n",
            "MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun\n",
            "VTLw7onLRnrq0/IzW7yWR7QkrmBL7jTKEn5u+qKhbwKfBstIs+bMY2Zkp18gnTxK\n",
            "-----END RSA PRIVATE KEY-----\n",
            "by ops"
        ),
        secrets: &[
            "MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun",
            "VTLw7onLRnrq0/IzW7yWR7QkrmBL7jTKEn5u+qKhbwKfBstIs+bMY2Zkp18gnTxK",
        ],
        kept: &["uploaded:\n", "\nby ops"],
        label: "[pem]",
    },
    Case {
        name: "pem_openssh_truncated",
        text: "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ",
        secrets: &["b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ"],
        kept: &[],
        label: "[pem]",
    },
    Case {
        name: "url_userinfo",
        text: "fetched https://admin:hunter2@db.example.com/path?x=1",
        secrets: &["admin:hunter2", "hunter2"],
        kept: &["fetched https://", "@db.example.com/path?x=1"],
        label: "[userinfo]",
    },
    Case {
        name: "url_userinfo_with_at_in_password",
        text: "postgres://app:p@ss@10.0.0.5:5432/prod",
        secrets: &["p@ss", "app:p"],
        kept: &["postgres://", "@10.0.0.5:5432/prod"],
        label: "[userinfo]",
    },
    Case {
        name: "url_token_parameter",
        text: "GET https://api.example.com/cb?token=abc123secret&page=2",
        secrets: &["abc123secret"],
        kept: &["https://api.example.com/cb?token=", "&page=2"],
        label: "[redacted]",
    },
    Case {
        name: "url_presigned_s3",
        text: "https://b.s3.amazonaws.com/o?X-Amz-Credential=AKIDEXAMPLE%2F20240101&X-Amz-Date=20240101T000000Z&X-Amz-Signature=fe5f80f77d5fa3beca038a248ff027d0445342fe2855ddc963176630326f1024",
        secrets: &[
            "AKIDEXAMPLE%2F20240101",
            "fe5f80f77d5fa3beca038a248ff027d0445342fe2855ddc963176630326f1024",
        ],
        kept: &[
            "https://b.s3.amazonaws.com/o?",
            "&X-Amz-Date=20240101T000000Z&",
        ],
        label: "[redacted]",
    },
    Case {
        name: "url_oauth_code_and_fragment_token",
        text: "/callback?state=xyz&code=SplxlOBeZQQYbYS6WxSbIA#access_token=2YotnFZFEjr1zCsicMWpAA",
        secrets: &["SplxlOBeZQQYbYS6WxSbIA", "2YotnFZFEjr1zCsicMWpAA"],
        kept: &["/callback?state=xyz&code="],
        label: "[redacted]",
    },
    Case {
        name: "password_in_free_text",
        text: "login failed, password=hunter2 user=alice",
        secrets: &["hunter2"],
        kept: &["login failed, password=", " user=alice"],
        label: "[redacted]",
    },
    Case {
        name: "truncated_json_with_secret",
        text: r#"{"user":"alice","client_secret":"s3cr3t-v4lue","scope":"#,
        secrets: &["s3cr3t-v4lue"],
        kept: &[r#"{"user":"alice","client_secret":""#],
        label: "[redacted]",
    },
    Case {
        name: "cookie_header_whole_line",
        text: "Cookie: sid=31d4d96e407aad42; theme=dark\nHost: example.com",
        secrets: &["31d4d96e407aad42", "theme=dark"],
        kept: &["Host: example.com"],
        label: "[redacted]",
    },
];

/// Strings that look a little like the above and must be kept verbatim.
const KEPT: &[(&str, &str)] = &[
    ("luhn_invalid_16_digit_id", "order 4111111111111112 shipped"),
    ("luhn_invalid_order_id", "order 5500000000000005"),
    ("millisecond_timestamp", "at 1718035200123"),
    ("luhn_valid_millisecond_timestamp", "at 1700000000004"),
    ("nanosecond_timestamp", "1718035200123456789"),
    ("long_digit_run", "ref 41111111111111110000"),
    ("iso_timestamp", "2024-06-10T12:00:00.123+02:00"),
    ("uuid", "request 0f8c8e9a-1b2c-4d3e-8f40-5a6b7c8d9e0f"),
    ("ipv4", "from 203.0.113.7:443"),
    ("path", "GET /v1/tenants/42/users?page=2&per_page=50"),
    ("prose_about_tokens", "missing bearer token."),
    ("basic_plan", "downgraded to Basic plan"),
    ("keyword_parameter", "/search?keyword=shoes&codec=h264"),
    ("version", "v1.2.3+build.45"),
    ("at_sign_no_domain", "@alice mentioned you"),
    ("short_plus_number", "score +12345"),
];

fn check_case(case: &Case) {
    assert!(
        case.secrets.iter().all(|s| case.text.contains(s)),
        "{}: bad test data",
        case.name
    );
    for replacement in [
        Replacement::Mask,
        Replacement::Pseudonymise,
        Replacement::Drop,
    ] {
        let s = with(replacement);
        let name = format!("{} ({replacement:?})", case.name);
        let out = scrub(
            &s,
            &json!({ "note": case.text, "list": [case.text, "plain"] }),
        );
        let text = s.scrub_text(tenant_a(), case.text);
        let out_json = out.to_string();
        for secret in case.secrets {
            assert_absent(&out_json, secret, &name);
            assert_absent(&text, secret, &name);
        }
        match replacement {
            Replacement::Drop => {
                assert_eq!(out, json!({ "list": ["plain"] }), "{name}");
                assert_eq!(text, "[redacted]", "{name}");
            }
            _ => {
                let note = out["note"].as_str().unwrap();
                assert_eq!(note, text, "{name}: metadata and text differ");
                assert_eq!(out["list"][1], "plain", "{name}");
                for kept in case.kept {
                    assert!(note.contains(kept), "{name}: lost {kept:?} in {note:?}");
                }
                if replacement == Replacement::Mask {
                    assert!(
                        note.contains(case.label),
                        "{name}: no {} in {note:?}",
                        case.label
                    );
                } else {
                    assert!(note.contains("pn:v1:"), "{name}: no pseudonym in {note:?}");
                }
            }
        }
    }
}

#[test]
fn corpus_secrets_are_removed_and_context_kept() {
    for case in CORPUS {
        check_case(case);
    }
}

#[test]
fn corpus_card_numbers_are_luhn_valid() {
    for case in CORPUS.iter().filter(|c| c.label == "[card]") {
        assert!(luhn(case.secrets[0]), "{}: test card fails Luhn", case.name);
    }
    assert!(!luhn("4111111111111112"));
    assert!(!luhn("5500000000000005"));
    assert!(luhn("1700000000004"));
}

#[test]
fn lookalikes_are_kept_verbatim() {
    let s = with(Replacement::Mask);
    for (name, text) in KEPT {
        assert_eq!(s.scrub_text(tenant_a(), text), *text, "{name}");
        let out = scrub(&s, &json!({ "v": text }));
        assert_eq!(out["v"], *text, "{name}");
    }
}

#[test]
fn ordinary_metadata_is_unchanged() {
    let metadata = json!({
        "method": "GET",
        "path": "/v1/users/123",
        "status": 200,
        "duration_ms": 12.5,
        "ip": "203.0.113.7",
        "user_agent": "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/128.0",
        "at": "2024-06-10T12:00:00Z",
        "request_id": "0f8c8e9a-1b2c-4d3e-8f40-5a6b7c8d9e0f",
        "footprint": "small",
        "flags": [true, null, 3],
        "rows": 1_718_035_200_123_u64,
    });
    assert_eq!(scrub(&with(Replacement::Mask), &metadata), metadata);
}

#[test]
fn card_number_as_json_integer_is_redacted() {
    let out = scrub(
        &with(Replacement::Mask),
        &json!({ "pan": 4_111_111_111_111_111_u64, "id": 4_111_111_111_111_112_u64 }),
    );
    assert_eq!(
        out,
        json!({ "pan": "[card]", "id": 4_111_111_111_111_112_u64 })
    );
}

#[test]
fn authorization_like_keys_are_removed_at_depth() {
    let metadata = json!({
        "request": {
            "headers": {
                "X-Auth-Token": "t0ps3cret-1",
                "authorization": "Digest username=\"a\"",
                "Set-Cookie": "sid=t0ps3cret-2",
                "Accept": "application/json",
            },
            "body": [{ "apiKey": "t0ps3cret-3", "name": "widget" }, { "user_password": "t0ps3cret-4" }],
        },
        "awsSecretAccessKey": "t0ps3cret-5",
        "client_secret": "t0ps3cret-6",
        "recovery_code": "t0ps3cret-7",
        "totp": "123456",
        "userSSN": "078-05-1120",
    });
    for replacement in [
        Replacement::Mask,
        Replacement::Pseudonymise,
        Replacement::Drop,
    ] {
        let out = scrub(&with(replacement), &metadata);
        let text = out.to_string();
        for i in 1..=7 {
            assert_absent(&text, &format!("t0ps3cret-{i}"), "depth");
        }
        assert_absent(&text, "078-05-1120", "ssn");
        assert!(!text.contains("123456"), "totp leaked: {text}");
        assert_eq!(
            out,
            json!({
                "request": {
                    "headers": { "Accept": "application/json" },
                    "body": [{ "name": "widget" }, {}],
                }
            })
        );
    }
}

#[test]
fn nested_json_string_is_scrubbed_as_json() {
    let inner = json!({
        "user": { "password": "hunter2", "email": "dora@example.com", "plan": "pro" },
        "n": 1,
    });
    let doubly = json!({ "wrapped": inner.to_string(), "keep": "yes" });
    let metadata = json!({ "payload": inner.to_string(), "outer": doubly.to_string() });
    let out = scrub(&with(Replacement::Mask), &metadata);
    let text = out.to_string();
    assert_absent(&text, "hunter2", "nested");
    assert_absent(&text, "dora@example.com", "nested");

    let payload: Value = serde_json::from_str(out["payload"].as_str().unwrap()).unwrap();
    assert_eq!(
        payload,
        json!({ "user": { "email": "[email]", "plan": "pro" }, "n": 1 })
    );
    let outer: Value = serde_json::from_str(out["outer"].as_str().unwrap()).unwrap();
    assert_eq!(outer["keep"], "yes");
    let wrapped: Value = serde_json::from_str(outer["wrapped"].as_str().unwrap()).unwrap();
    assert_eq!(wrapped, payload);
}

#[test]
fn nested_json_with_duplicate_keys_cannot_smuggle_the_original() {
    // serde_json keeps the last duplicate; the first must not survive in the text.
    let payload = r#"{"note":"eve@example.com","note":"fine"}"#;
    let out = scrub(&with(Replacement::Mask), &json!({ "payload": payload }));
    assert_absent(&out.to_string(), "eve@example.com", "duplicate keys");
    assert_eq!(out["payload"], r#"{"note":"fine"}"#);
}

#[test]
fn object_keys_are_scanned() {
    let out = scrub(
        &with(Replacement::Mask),
        &json!({ "votes": { "alice@example.com": 1, "bob": 2 }, "frank@example.com": true }),
    );
    assert_eq!(
        out,
        json!({ "votes": { "[email]": 1, "bob": 2 }, "[email]": true })
    );
    let out = scrub(
        &with(Replacement::Drop),
        &json!({ "votes": { "alice@example.com": 1, "bob": 2 } }),
    );
    assert_eq!(out, json!({ "votes": { "bob": 2 } }));
}

#[test]
fn allowlist_mode_drops_unknown_fields_and_keeps_allowed_verbatim() {
    let policy = ScrubPolicy::new()
        .with_unknown_fields(UnknownFields::Drop)
        .allow(ACTION, "role", FieldRule::Keep)
        .allow(ACTION, "ticket", FieldRule::Keep)
        .allow(ACTION, "reason", FieldRule::Scan)
        .allow(ACTION, "invitee", FieldRule::Pseudonymise)
        .allow(ACTION, "debug", FieldRule::Drop)
        .allow("other.action", "leak", FieldRule::Keep);
    let s = scrubber(policy);
    let metadata = json!({
        "role": "admin",
        "ticket": { "text": "reported by ops@example.com", "secret": "s3cr3t-in-keep" },
        "reason": "asked by grace@example.com",
        "invitee": "Heidi@Example.com",
        "debug": "ivan@example.com",
        "leak": "judy@example.com",
        "unknown": "plain text",
    });
    let out = scrub(&s, &metadata);
    let invitee = s.pseudonym(tenant_a(), "heidi@example.com").unwrap();
    assert_eq!(
        out,
        json!({
            "role": "admin",
            "ticket": { "text": "reported by ops@example.com" },
            "reason": "asked by [email]",
            "invitee": invitee,
        })
    );
    let text = out.to_string();
    for secret in [
        "s3cr3t-in-keep",
        "grace@",
        "Heidi",
        "heidi",
        "ivan@",
        "judy@",
        "plain text",
    ] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
}

#[test]
fn denylist_beats_allowlist() {
    let s = scrubber(
        ScrubPolicy::new()
            .allow(ACTION, "password", FieldRule::Keep)
            .allow(ACTION, "api_key", FieldRule::Pseudonymise)
            .allow(ACTION, "config", FieldRule::Keep)
            .deny_key("date_of_birth"),
    );
    let out = scrub(
        &s,
        &json!({
            "password": "hunter2",
            "api_key": "k-123",
            "config": { "db": { "connection_string": "postgres://u:p@h/db", "pool": 5 } },
            "userDateOfBirth": "1990-01-02",
        }),
    );
    assert_eq!(out, json!({ "config": { "db": { "pool": 5 } } }));
}

#[test]
fn pseudonymise_field_rule_covers_every_leaf() {
    let s = scrubber(ScrubPolicy::new().allow(ACTION, "who", FieldRule::Pseudonymise));
    let out = scrub(
        &s,
        &json!({ "who": { "name": "Mallory", "id": 42, "admin": true, "token": "t", "tags": ["x"] } }),
    );
    let who = &out["who"];
    assert_eq!(who["name"], s.pseudonym(tenant_a(), "Mallory").unwrap());
    assert_eq!(who["id"], s.pseudonym(tenant_a(), "42").unwrap());
    assert_eq!(who["admin"], true);
    assert!(who.get("token").is_none());
    assert!(who["tags"][0].as_str().unwrap().starts_with("pn:v1:"));
}

#[test]
fn pseudonyms_are_stable_within_a_tenant() {
    let s = with(Replacement::Pseudonymise);
    let metadata = json!({ "a": "mail alice@example.com", "b": ["ALICE@example.com "] });
    let out = scrub(&s, &metadata);
    let expected = s.pseudonym(tenant_a(), "alice@example.com").unwrap();
    assert_eq!(out["a"], format!("mail {expected}"));
    assert_eq!(out["b"][0], format!("{expected} "));
    // Another scrubber with the same key agrees.
    let again = Scrubber::new(ScrubPolicy::new(), vec![key(1)]).unwrap();
    assert_eq!(
        again.pseudonym(tenant_a(), "Alice@Example.com").unwrap(),
        expected
    );
    // Phones and cards by their digits.
    assert_eq!(
        s.scrub_text(tenant_a(), "+1 (415) 555-2671"),
        s.pseudonym(tenant_a(), "+14155552671").unwrap()
    );
    assert_eq!(
        s.scrub_text(tenant_a(), "card 4111-1111-1111-1111"),
        format!(
            "card {}",
            s.pseudonym(tenant_a(), "4111111111111111").unwrap()
        )
    );
    // 128 bits in hex.
    let hex = expected.strip_prefix("pn:v1:").unwrap();
    assert_eq!(hex.len(), 32);
    assert!(
        hex.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    );
}

#[test]
fn pseudonyms_differ_across_tenants() {
    let s = with(Replacement::Pseudonymise);
    for value in ["alice@example.com", "+14155552671", "4111111111111111", "x"] {
        let a = s.pseudonym(tenant_a(), value).unwrap();
        let b = s.pseudonym(tenant_b(), value).unwrap();
        assert_ne!(a, b, "{value}");
        assert_ne!(a[6..], b[6..], "{value}");
    }
    let out_a = scrub(&s, &json!({ "e": "alice@example.com" }));
    let out_b = s
        .scrub_metadata(tenant_b(), ACTION, &json!({ "e": "alice@example.com" }))
        .unwrap();
    assert_ne!(out_a, out_b);
}

#[test]
fn pseudonym_is_not_a_plain_hash() {
    let s = with(Replacement::Pseudonymise);
    for value in ["alice@example.com", "4111111111111111", "hunter2"] {
        let pseudonym = s.pseudonym(tenant_a(), value).unwrap();
        let hex = pseudonym.strip_prefix("pn:v1:").unwrap();
        let plain = hex::encode(Sha256::digest(value.as_bytes()));
        assert!(
            !plain.contains(hex),
            "{value}: pseudonym is a truncated sha256"
        );
        let salted = hex::encode(Sha256::digest(
            [tenant_a().as_uuid().as_bytes().as_slice(), value.as_bytes()].concat(),
        ));
        assert!(
            !salted.contains(hex),
            "{value}: pseudonym is an unkeyed salted hash"
        );
    }
    // A different master key gives a different pseudonym for the same tenant and value.
    let other = Scrubber::new(
        ScrubPolicy::new(),
        vec![PseudonymKey::new(1, Box::new([9; 32]))],
    )
    .unwrap();
    assert_ne!(
        other.pseudonym(tenant_a(), "hunter2").unwrap(),
        s.pseudonym(tenant_a(), "hunter2").unwrap()
    );
}

#[test]
fn newer_key_changes_the_version_prefix() {
    let old = Scrubber::new(ScrubPolicy::new(), vec![key(1)]).unwrap();
    let rotated = Scrubber::new(ScrubPolicy::new(), vec![key(1), key(2)]).unwrap();
    let reversed = Scrubber::new(ScrubPolicy::new(), vec![key(2), key(1)]).unwrap();
    let before = old.pseudonym(tenant_a(), "alice@example.com").unwrap();
    let after = rotated.pseudonym(tenant_a(), "alice@example.com").unwrap();
    assert!(before.starts_with("pn:v1:"));
    assert!(after.starts_with("pn:v2:"));
    assert_ne!(before[6..], after[6..]);
    assert_eq!(
        reversed.pseudonym(tenant_a(), "alice@example.com").unwrap(),
        after
    );
    assert_eq!(rotated.key_version(), Some(2));
    assert_eq!(
        rotated
            .pseudonym_candidates(tenant_a(), "alice@example.com")
            .unwrap(),
        [after, before]
    );
}

#[test]
fn pseudonymising_without_a_key_fails_closed() {
    let by_replacement = ScrubPolicy::new().with_replacement(Replacement::Pseudonymise);
    assert_eq!(
        Scrubber::new(by_replacement, Vec::new()).unwrap_err(),
        ScrubError::MissingPseudonymKey
    );
    let by_rule = ScrubPolicy::new().allow(ACTION, "who", FieldRule::Pseudonymise);
    assert_eq!(
        Scrubber::new(by_rule, Vec::new()).unwrap_err(),
        ScrubError::MissingPseudonymKey
    );
    let masking = Scrubber::new(ScrubPolicy::new(), Vec::new()).unwrap();
    assert_eq!(
        masking.pseudonym(tenant_a(), "x").unwrap_err(),
        ScrubError::MissingPseudonymKey
    );
    assert_eq!(
        Scrubber::new(ScrubPolicy::new(), vec![key(3), key(3)]).unwrap_err(),
        ScrubError::DuplicateKeyVersion
    );
}

#[test]
fn non_object_metadata_is_rejected() {
    let s = with(Replacement::Mask);
    for metadata in [
        json!(null),
        json!("alice@example.com"),
        json!([1, 2]),
        json!(4),
    ] {
        assert_eq!(
            s.scrub_metadata(tenant_a(), ACTION, &metadata).unwrap_err(),
            ScrubError::NotAnObject
        );
    }
    let message = ScrubError::NotAnObject.to_string();
    assert_eq!(message, message.to_lowercase());
}

#[test]
fn debug_output_never_shows_keys() {
    let s = Scrubber::new(
        ScrubPolicy::new(),
        vec![PseudonymKey::new(7, Box::new([0x5a; 32]))],
    )
    .unwrap();
    for shown in [
        format!("{s:?}"),
        format!("{:?}", PseudonymKey::new(7, Box::new([0x5a; 32]))),
    ] {
        assert!(!shown.contains("90"), "{shown}");
        assert!(!shown.to_lowercase().contains("5a5a"), "{shown}");
        assert!(shown.contains('7'), "{shown}");
    }
}

/// Builds `levels` nested containers iteratively, with `leaf` at the bottom (not with
/// `json!`, which serialises interpolated values recursively).
fn deep(levels: usize, leaf: Value) -> Value {
    let mut value = leaf;
    for i in 0..levels {
        value = if i % 2 == 0 {
            let mut map = serde_json::Map::new();
            map.insert("a".to_owned(), value);
            map.insert("note".to_owned(), json!("mail deep@example.com"));
            Value::Object(map)
        } else {
            Value::Array(vec![value, json!("x")])
        };
    }
    value
}

fn metadata_with(field: &str, value: Value) -> Value {
    let mut map = serde_json::Map::new();
    map.insert(field.to_owned(), value);
    Value::Object(map)
}

/// Drops a deep value without recursing (serde_json's drop is recursive).
fn dismantle(value: Value) {
    let mut stack = vec![value];
    while let Some(value) = stack.pop() {
        match value {
            Value::Object(map) => stack.extend(map.into_iter().map(|(_, v)| v)),
            Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
}

fn depth_of(value: &Value) -> usize {
    match value {
        Value::Object(map) => 1 + map.values().map(depth_of).max().unwrap_or(0),
        Value::Array(items) => 1 + items.iter().map(depth_of).max().unwrap_or(0),
        _ => 0,
    }
}

#[test]
fn deep_nesting_is_cut_off_without_overflow_or_leak() {
    let leaf = json!({ "password": "bottom-secret", "email": "bottom@example.com" });
    let metadata = metadata_with("tree", deep(10_000, leaf));
    for replacement in [
        Replacement::Mask,
        Replacement::Pseudonymise,
        Replacement::Drop,
    ] {
        for rule in [FieldRule::Scan, FieldRule::Keep, FieldRule::Pseudonymise] {
            let s = scrubber(
                ScrubPolicy::new()
                    .with_replacement(replacement)
                    .allow(ACTION, "tree", rule),
            );
            let out = scrub(&s, &metadata);
            assert!(depth_of(&out) <= MAX_DEPTH, "{replacement:?} {rule:?}");
            let text = out.to_string();
            assert_absent(&text, "bottom-secret", "deep");
            assert_absent(&text, "bottom@example.com", "deep");
            if rule != FieldRule::Keep {
                assert_absent(&text, "deep@example.com", "deep");
            }
            if replacement != Replacement::Drop {
                assert!(text.contains("[truncated]"), "{replacement:?} {rule:?}");
            }
        }
    }
    dismantle(metadata);
}

#[test]
fn levels_within_the_limit_are_scanned_not_truncated() {
    // The metadata object is level 1, so MAX_DEPTH - 1 more containers fit.
    let metadata = metadata_with("tree", deep(MAX_DEPTH - 1, json!("leaf kim@example.com")));
    let out = scrub(&with(Replacement::Mask), &metadata);
    let text = out.to_string();
    assert!(!text.contains("[truncated]"), "{text}");
    assert!(text.contains("leaf [email]"), "{text}");
    assert_absent(&text, "kim@example.com", "limit");

    let metadata = metadata_with("tree", deep(MAX_DEPTH, json!("leaf kim@example.com")));
    let text = scrub(&with(Replacement::Mask), &metadata).to_string();
    assert!(text.contains("[truncated]"), "{text}");
    assert_absent(&text, "kim@example.com", "limit");
}

#[test]
fn nested_json_strings_count_towards_depth() {
    // Twelve JSON-in-string levels of three containers each: 37 levels in all, although no
    // single document is deeper than three.
    let mut value = json!({ "email": "nested@example.com", "token": "nested-secret" });
    for _ in 0..12 {
        value = json!({ "a": [{ "b": value.to_string() }] });
    }
    for replacement in [Replacement::Mask, Replacement::Drop] {
        let out = scrub(&with(replacement), &value);
        let text = out.to_string();
        assert!(!text.contains("nested@"), "{text}");
        assert!(!text.contains("nested-secret"), "{text}");
        if replacement == Replacement::Mask {
            assert!(text.contains("[truncated]"), "{text}");
        }
    }
}

#[test]
fn work_bounds_replace_what_is_not_scanned() {
    let many: Vec<Value> = (0..20_000)
        .map(|i| json!(format!("user{i}@example.com")))
        .collect();
    let out = scrub(&with(Replacement::Mask), &json!({ "many": many }));
    let items = out["many"].as_array().unwrap();
    assert_eq!(items.len(), 20_000);
    assert_eq!(items[0], "[email]");
    assert_eq!(items[19_999], "[truncated]");
    assert!(!out.to_string().contains("@example.com"));

    let huge = format!("{} ann@example.com", "a".repeat(2 << 20));
    let s = with(Replacement::Mask);
    assert_eq!(s.scrub_text(tenant_a(), &huge), "[truncated]");
    assert_eq!(scrub(&s, &json!({ "huge": huge }))["huge"], "[truncated]");
}

#[test]
fn drop_replacement_removes_strings_and_elements() {
    let s = with(Replacement::Drop);
    let out = scrub(
        &s,
        &json!({
            "reason": "by mike@example.com",
            "list": ["ok", "+14155552671", "also ok"],
            "fine": "nothing here",
        }),
    );
    assert_eq!(
        out,
        json!({ "list": ["ok", "also ok"], "fine": "nothing here" })
    );
    assert_eq!(
        s.scrub_text(tenant_a(), "by mike@example.com"),
        "[redacted]"
    );
    assert_eq!(s.scrub_text(tenant_a(), "nothing here"), "nothing here");
}

#[test]
fn scrub_text_handles_json_text() {
    let s = with(Replacement::Mask);
    let out = s.scrub_text(
        tenant_a(),
        r#"{"password":"hunter2","who":"nina@example.com"}"#,
    );
    assert_eq!(out, r#"{"who":"[email]"}"#);
}

#[test]
fn output_is_deterministic() {
    let metadata = json!({
        "z": "olga@example.com and +14155552671",
        "a": [{ "k": "4111 1111 1111 1111" }, JWT],
        "m": { "nested": r#"{"b":"AKIAIOSFODNN7EXAMPLE","a":"x"}"# },
        "pem": PEM,
    });
    for replacement in [
        Replacement::Mask,
        Replacement::Pseudonymise,
        Replacement::Drop,
    ] {
        let first = scrub(&with(replacement), &metadata).to_string();
        for _ in 0..3 {
            assert_eq!(scrub(&with(replacement), &metadata).to_string(), first);
        }
        assert!(
            !first.contains("MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun")
        );
    }
}

/// A Luhn-valid card number with a 2–6 first digit, formatted with `separator` every four.
fn card_strategy() -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec!["4", "51", "55", "2221", "34", "37", "6011", "62"]),
        prop::collection::vec(0u8..10, 11..=16),
        prop::sample::select(vec!["", " ", "-"]),
    )
        .prop_map(|(prefix, body, separator)| {
            let mut number: Vec<u8> = prefix.bytes().map(|b| b - b'0').collect();
            number.extend(body);
            number.truncate(18);
            let sum: u32 = number
                .iter()
                .rev()
                .enumerate()
                .map(|(i, &d)| {
                    let d = u32::from(d);
                    if i % 2 == 0 {
                        if d * 2 > 9 { d * 2 - 9 } else { d * 2 }
                    } else {
                        d
                    }
                })
                .sum();
            number.push(u8::try_from((10 - sum % 10) % 10).unwrap());
            let digits: String = number.iter().map(|d| char::from(b'0' + d)).collect();
            digits
                .as_bytes()
                .chunks(4)
                .map(|c| std::str::from_utf8(c).unwrap())
                .collect::<Vec<_>>()
                .join(separator)
        })
}

fn email_strategy() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9][a-zA-Z0-9._+-]{0,15}@[a-z0-9]{1,10}(\\.[a-z0-9-]{1,8}){0,2}\\.[a-z]{2,6}"
}

/// Surrounding text without digits (which would extend a card's digit run).
fn context_strategy() -> impl Strategy<Value = String> {
    "[a-zA-Z ,;:!?()<>\"'\n\t_=éü]{0,24}"
}

proptest! {
    #[test]
    fn embedded_cards_never_survive(
        card in card_strategy(),
        before in context_strategy(),
        after in context_strategy(),
    ) {
        prop_assert!(luhn(&card));
        let text = format!("{before}{card}{after}");
        for replacement in [Replacement::Mask, Replacement::Pseudonymise] {
            let s = with(replacement);
            let out = s.scrub_text(tenant_a(), &text);
            let compact: String = out.chars().filter(|c| !matches!(c, ' ' | '-')).collect();
            prop_assert!(!compact.contains(&digits(&card)), "{:?} -> {:?}", text, out);
            let meta = scrub(&s, &json!({ "v": text, "w": [text.clone()] })).to_string();
            prop_assert!(!meta.contains(&digits(&card)), "{:?} -> {}", text, meta);
        }
    }

    #[test]
    fn embedded_emails_never_survive(
        email in email_strategy(),
        before in context_strategy(),
        after in context_strategy(),
    ) {
        let text = format!("{before}{email}{after}");
        for replacement in [Replacement::Mask, Replacement::Pseudonymise] {
            let s = with(replacement);
            let out = s.scrub_text(tenant_a(), &text);
            prop_assert!(!out.contains(&email), "{:?} -> {:?}", text, out);
            prop_assert!(!out.to_lowercase().contains(&email.to_lowercase()));
            let meta = scrub(&s, &json!({ "v": text })).to_string();
            prop_assert!(!meta.contains(&email), "{:?} -> {}", text, meta);
        }
    }

    #[test]
    fn arbitrary_text_never_panics_and_is_deterministic(text in any::<String>()) {
        for replacement in [Replacement::Mask, Replacement::Pseudonymise, Replacement::Drop] {
            let s = with(replacement);
            let once = s.scrub_text(tenant_a(), &text);
            prop_assert_eq!(&once, &s.scrub_text(tenant_a(), &text));
            let mut metadata = serde_json::Map::new();
            metadata.insert("v".to_owned(), json!(text));
            metadata.insert(text.clone(), json!(1));
            let _ = scrub(&s, &Value::Object(metadata));
        }
    }
}
