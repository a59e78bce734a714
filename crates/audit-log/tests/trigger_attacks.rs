//! Security review of the queue's insert trigger (`audit.check_event`, formerly part of
//! `audit.chain_append`): raw INSERTs by the runtime
//! role (SQL injection) that try to get a record into the chain which the verifier would reject
//! or read differently from the row's columns, or which repeats a key, nests too deeply or
//! holds a number beyond an f64. Every attack is either refused or verifies intact; each test
//! starts with a positive control, so a refusal is never just a broken fixture.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use audit_log::AuditLog;
use common::*;
use rls_guard::TenantPool;
use tenant_scope::TenantId;
use testkit::Role;

/// [`BASE`] laid out exactly as `record::jsonb::text` prints it (the layout the library writes,
/// which the trigger's fast path skips the duplicate-key walk for), with `@M@` for metadata.
const JSONB: &str = r#"{"actor": {"kind": "user"}, "action": "a.b", "schema": 1, "tenant": "@T@", "outcome": {"status": "allowed"}, "metadata": @M@, "occurred_at": "@TS@"}"#;

fn jsonb_with(metadata: &str) -> String {
    JSONB.replace("@M@", metadata)
}

/// [`BASE`] with a `metadata` member, in the library's compact layout.
fn base_with(metadata: &str) -> String {
    BASE.replacen('{', &format!(r#"{{"metadata":{metadata},"#), 1)
}

/// Runs every `(why, record, columns)`; returns the ones whose fate is not `expected` (a
/// refusal expected: anything accepted; acceptance expected: anything but intact), and, with
/// `code`, refusals with another SQLSTATE (so a case meant to reach the trigger's own checks is
/// not merely a malformed fixture).
async fn run_coded(
    f: &Fixture,
    expected: &Fate,
    code: Option<&str>,
    cases: &[(&str, Vec<u8>, Columns<'_>)],
) -> Vec<String> {
    let mut wrong = Vec::new();
    for (why, record, columns) in cases {
        let (_, fate, got) = raw_insert_coded(f, f.log.pool(), RAW_INSERT, record, *columns).await;
        let code_ok = code.is_none() || fate != Fate::Refused || got.as_deref() == code;
        if &fate != expected || !code_ok {
            wrong.push(format!(
                "{why}: {fate:?} ({got:?}) for {}",
                String::from_utf8_lossy(record)
            ));
        }
    }
    wrong
}

async fn run(f: &Fixture, expected: &Fate, cases: &[(&str, Vec<u8>, Columns<'_>)]) -> Vec<String> {
    run_coded(f, expected, None, cases).await
}

fn case(why: &str, record: impl AsRef<[u8]>) -> (&str, Vec<u8>, Columns<'static>) {
    (why, record.as_ref().to_vec(), Columns::BASE)
}

/// Whether the stored record of `t`'s event `seq` is exactly its `jsonb` text (the fast path).
async fn is_jsonb_layout(f: &Fixture, t: TenantId, seq: i64) -> bool {
    sequence_all(f).await;
    let admin = f.db.pool(Role::Admin, 1).await;
    sqlx::query_scalar(
        "SELECT convert_from(event, 'UTF8') = convert_from(event, 'UTF8')::jsonb::text \
         FROM audit.events WHERE tenant_id = $1 AND seq = $2",
    )
    .bind(t.as_uuid())
    .bind(seq)
    .fetch_one(&admin)
    .await
    .unwrap()
}

/// A record over `MAX_RECORD_BYTES` is refused before anything reads it: a huge row would
/// otherwise be parsed on the request path, and could fail its tenant's sequencer batch (past
/// PostgreSQL's 1 GB limit on one array) every time the batch is retried.
#[tokio::test]
async fn a_record_over_the_size_limit_is_refused_before_it_is_read() {
    let f = fixture(2).await;
    let max = audit_log::MAX_RECORD_BYTES;
    // The record, its metadata padded so that, filled in, it is exactly `len` bytes.
    let sized = |len: usize| {
        let empty = fill(
            jsonb_with(r#"{"pad": ""}"#).as_bytes(),
            TenantId::new_random(),
            time::OffsetDateTime::now_utc(),
        )
        .len();
        jsonb_with(&format!(r#"{{"pad": "{}"}}"#, "x".repeat(len - empty)))
    };
    // Positive control: a record of exactly the limit is chained intact.
    let (t, fate) = raw_insert(&f, &sized(max), "user", "a.b", None).await;
    assert_eq!(fate, Fate::Intact, "a record of exactly the limit");
    assert!(
        is_jsonb_layout(&f, t, 2).await,
        "the control is well formed"
    );
    let refused = [
        case("one byte over", sized(max + 1)),
        case("8 MiB", sized(8 << 20)),
        // Neither UTF-8 nor JSON: refused for its size (AL003), so nothing parsed it first.
        (
            "8 MiB that is no record",
            vec![0xff; 8 << 20],
            Columns::BASE,
        ),
    ];
    let mut wrong = run_coded(&f, &Fate::Refused, Some("AL003"), &refused).await;

    // The text columns too (each equal to its field of the record, so only their size can be
    // refused): a batch of rows with a 64 KiB record and as much again in these columns would
    // pass PostgreSQL's 1 GB limit on one allocation.
    let action_max = format!("a.{}", "b".repeat(audit_log::MAX_ACTION_BYTES - 2));
    let action_over = format!("{action_max}b");
    let kind_over = "k".repeat(audit_log::MAX_ACTION_BYTES + 1);
    let id_max = "r".repeat(audit_log::MAX_IDENTIFIER_BYTES);
    let id_over = format!("{id_max}r");
    let with = |action: &str, kind: &str, request_id: Option<&str>| {
        let record = BASE
            .replace(r#""action":"a.b""#, &format!(r#""action":"{action}""#))
            .replace(r#""kind":"user""#, &format!(r#""kind":"{kind}""#));
        match request_id {
            Some(id) => record.replacen('{', &format!(r#"{{"request_id":"{id}","#), 1),
            None => record,
        }
    };
    // Positive control: each at its limit is chained intact.
    let at_limits = with(&action_max, "user", Some(&id_max));
    let (_, fate) = raw_insert(&f, &at_limits, "user", &action_max, Some(&id_max)).await;
    assert_eq!(fate, Fate::Intact, "columns at their limits");
    let refused = [
        (
            "action one byte over",
            with(&action_over, "user", None).into_bytes(),
            Columns::new("user", &action_over, None),
        ),
        (
            "actor kind one byte over",
            with("a.b", &kind_over, None).into_bytes(),
            Columns::new(&kind_over, "a.b", None),
        ),
        (
            "request id one byte over",
            with("a.b", "user", Some(&id_over)).into_bytes(),
            Columns::new("user", "a.b", Some(&id_over)),
        ),
    ];
    wrong.extend(run_coded(&f, &Fate::Refused, Some("AL003"), &refused).await);
    assert!(
        wrong.is_empty(),
        "{}",
        wrong.join("\n").chars().take(2000).collect::<String>()
    );
}

/// The trigger is compiled once per connection, with that session's settings: with
/// `standard_conforming_strings` off at its first use, a `'\x…'` literal in its body would be
/// read as an escape string, and every chain hash that connection computes (the attacker's
/// record and every honest one after it) would be wrong. One INSERT carrying a perfectly valid
/// record, setting it in its own `FROM` clause, must neither be poisoned nor poison the
/// connection for later honest appends.
#[tokio::test]
async fn a_session_setting_at_the_triggers_first_use_cannot_change_its_hashes() {
    let f = fixture(2).await;
    // Positive control: the same valid record on a fresh connection, no setting.
    let fresh = TenantPool::new(f.db.pool(Role::Runtime, 1).await)
        .await
        .unwrap();
    let (_, fate) = raw_insert_with(&f, &fresh, RAW_INSERT, BASE.as_bytes(), Columns::BASE).await;
    assert_eq!(fate, Fate::Intact, "control");

    let one_statement = "INSERT INTO audit.pending
        (tenant_id, occurred_at, actor_kind, actor_id, action, outcome, request_id, event)
        SELECT $1::uuid, $2::timestamptz, $3::text, $4::uuid, $5::text, 'allowed', $6::text,
               $7::bytea
          FROM (SELECT pg_catalog.set_config('standard_conforming_strings', 'off', true)) s";
    for (why, sql, setup) in [
        ("set_config inside the INSERT", one_statement, None),
        (
            "SET on the session first",
            RAW_INSERT,
            Some("SET standard_conforming_strings = off"),
        ),
    ] {
        // A new backend (one connection): the trigger is compiled at its first insert.
        let raw = f.db.pool(Role::Runtime, 1).await;
        if let Some(setup) = setup {
            sqlx::query(setup).execute(&raw).await.unwrap();
        }
        let pool = TenantPool::new(raw).await.unwrap();
        let (t, fate) = raw_insert_with(&f, &pool, sql, BASE.as_bytes(), Columns::BASE).await;
        assert!(
            matches!(fate, Fate::Refused | Fate::Intact),
            "{why}: {fate:?}"
        );
        // Honest appends through the same connection afterwards: an existing chain, and a new
        // tenant's (its genesis hash).
        let log = AuditLog::new(pool, scrubber());
        log.record(event(t, 10)).await.unwrap();
        assert_eq!(
            fate_of(&f, t).await,
            Fate::Intact,
            "{why}: honest append after"
        );
        let other = TenantId::new_random();
        log.record(event(other, 1)).await.unwrap();
        assert_eq!(fate_of(&f, other).await, Fate::Intact, "{why}: genesis");
    }
}

async fn fate_of(f: &Fixture, t: TenantId) -> Fate {
    fate(f, t).await
}

/// Repeated keys spelled to come as close as possible to the `jsonb` text (so that the fast
/// path might skip the walk): the same key through escapes (`\u0022`, `\/`, `\u00e9`, a
/// surrogate pair against the raw character), in the `jsonb` layout, at the top level and in
/// metadata, with equal or different values. All are refused; keys that differ only by case or
/// by Unicode normalisation are different keys to both readers and are accepted.
#[tokio::test]
async fn repeated_keys_in_any_spelling_are_refused() {
    let f = fixture(2).await;
    // Positive controls: the jsonb layout (fast path) and the compact layout (walk).
    let control = jsonb_with(r#"{"a\"b": "x", "\/": 1, "é": 2, "😀": 3}"#);
    let (t, fate) = raw_insert(&f, &control, "user", "a.b", None).await;
    assert_eq!(fate, Fate::Intact, "control");
    assert!(
        !is_jsonb_layout(&f, t, 2).await,
        "escapes are not jsonb's spelling"
    );
    let control = jsonb_with(r#"{"/": 1, "é": 2, "a\"b": "x", "😀": 3}"#);
    let (t, fate) = raw_insert(&f, &control, "user", "a.b", None).await;
    assert_eq!(fate, Fate::Intact, "control");
    assert!(
        is_jsonb_layout(&f, t, 2).await,
        "control is in the jsonb layout"
    );

    let mut refused = vec![
        case(
            "quote escaped two ways",
            jsonb_with(r#"{"a\"b": 1, "a\u0022b": 2}"#),
        ),
        case("solidus escaped", jsonb_with(r#"{"/": 1, "\/": 2}"#)),
        case("é escaped", jsonb_with(r#"{"é": 1, "\u00e9": 2}"#)),
        case(
            "é escaped, same value",
            jsonb_with(r#"{"é": 1, "\u00e9": 1}"#),
        ),
        case(
            "surrogate pair vs raw emoji",
            jsonb_with(r#"{"😀": 1, "\ud83d\ude00": 2}"#),
        ),
        case(
            "uppercase hex escape",
            jsonb_with(r#"{"é": 1, "\u00E9": 2}"#),
        ),
        case("empty key twice", jsonb_with(r#"{"": 1, "": 2}"#)),
        case(
            "repeat in the jsonb layout, same value",
            jsonb_with(r#"{"role": "user", "role": "user"}"#),
        ),
        case(
            "repeat deep in an array",
            jsonb_with(r#"[[[{"k": [{"x": 1, "\u0078": 1}]}]]]"#),
        ),
        case(
            "action repeated via an escape",
            JSONB.replace("@M@", "{}").replace(
                r#""action": "a.b""#,
                r#""action": "a.b", "\u0061ction": "a.b""#,
            ),
        ),
        case(
            "schema repeated (json keeps the last for ->)",
            JSONB
                .replace("@M@", "{}")
                .replace(r#""schema": 1"#, r#""schema": 2, "schema": 1"#),
        ),
        case(
            "actor kind repeated",
            JSONB.replace("@M@", "{}").replace(
                r#"{"kind": "user"}"#,
                r#"{"kind": "admin", "kind": "user"}"#,
            ),
        ),
        case(
            "outcome repeated",
            JSONB.replace("@M@", "{}").replace(
                r#""outcome": {"status": "allowed"}"#,
                r#""outcome": {"status": "denied"}, "outcome": {"status": "allowed"}"#,
            ),
        ),
        case(
            "metadata repeated (ignored by the verifier, still a repeat)",
            JSONB.replace(r#""metadata": @M@"#, r#""metadata": 1, "metadata": 2"#),
        ),
        case(
            "repeat with a very long key",
            jsonb_with(&format!(r#"{{"{k}": 1, "{k}": 2}}"#, k = "k".repeat(5000))),
        ),
    ];
    // Request id repeated: the first is what a first-wins reader sees.
    refused.push((
        "request_id repeated",
        JSONB
            .replace("@M@", "{}")
            .replace(
                r#""schema": 1"#,
                r#""schema": 1, "request_id": "x", "request_id": "y""#,
            )
            .into_bytes(),
        Columns::new("user", "a.b", Some("y")),
    ));
    let mut wrong = run_coded(&f, &Fate::Refused, Some("AL003"), &refused).await;

    let accepted = [
        case(
            "keys differing by case",
            jsonb_with(r#"{"Role": 1, "role": 2}"#),
        ),
        case(
            "keys differing by normalisation (NFC vs NFD)",
            jsonb_with("{\"\u{e9}\": 1, \"e\u{301}\": 2}"),
        ),
        case("empty key", jsonb_with(r#"{"": 1}"#)),
        case(
            "key with embedded quote and backslash",
            jsonb_with(r#"{"\"": 1, "\\": 2, "a\"\\b": 3}"#),
        ),
        case(
            "very long key",
            jsonb_with(&format!(r#"{{"{}": 1}}"#, "k".repeat(10_000))),
        ),
        case(
            "field name spelled with an escape",
            JSONB
                .replace("@M@", "{}")
                .replace(r#""action": "a.b""#, r#""\u0061ction": "a.b""#),
        ),
    ];
    wrong.extend(run(&f, &Fate::Intact, &accepted).await);
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Numbers: the schema version must be written `1` exactly (the verifier reads a `u32`, and
/// `1.0`, `1e0`, `-0`, `true`, `"1"` or `2^32 + 1` are not that); numbers beyond an f64 (or
/// that only an f64 underflow would read as zero) are refused anywhere; ordinary spellings in
/// metadata are accepted and verify.
#[tokio::test]
async fn numbers_the_verifier_reads_differently_are_refused() {
    let f = fixture(2).await;
    let (_, fate) = raw_insert(&f, &base_with(r#"{"n":1}"#), "user", "a.b", None).await;
    assert_eq!(fate, Fate::Intact, "control");

    let schema = |v: &str| BASE.replace(r#""schema":1"#, &format!(r#""schema":{v}"#));
    let huge_int = format!("1{}", "0".repeat(400));
    let refused = [
        case("schema 1.0", schema("1.0")),
        case("schema 1e0", schema("1e0")),
        case("schema 1E0", schema("1E0")),
        case("schema 10e-1", schema("10e-1")),
        case("schema -0", schema("-0")),
        case("schema 01", schema("01")),
        case("schema +1", schema("+1")),
        case("schema \"1\"", schema(r#""1""#)),
        case("schema true", schema("true")),
        case("schema null", schema("null")),
        case("schema [1]", schema("[1]")),
        case("schema 2^32+1 (u32 wrap)", schema("4294967297")),
        case("schema 2^64+1 (u64 wrap)", schema("18446744073709551617")),
        case("schema missing", BASE.replace(r#""schema":1,"#, "")),
        case("1E400 in metadata", base_with(r#"{"n":1E400}"#)),
        case("-1e400 in metadata", base_with(r#"{"n":-1e400}"#)),
        case("0.1e-400 in metadata", base_with(r#"{"n":0.1e-400}"#)),
        case("1e-400 in an array", base_with(r#"[[1e-400]]"#)),
        case(
            "400-digit integer",
            base_with(&format!(r#"{{"n":{huge_int}}}"#)),
        ),
        case(
            "400-digit integer, jsonb layout",
            jsonb_with(&format!(r#"{{"n": {huge_int}}}"#)),
        ),
        case("1.8e308", base_with(r#"{"n":1.8e308}"#)),
        case("NaN", base_with(r#"{"n":NaN}"#)),
        case("Infinity", base_with(r#"{"n":Infinity}"#)),
        case("leading dot", base_with(r#"{"n":.5}"#)),
        case("trailing dot", base_with(r#"{"n":5.}"#)),
        case("hex", base_with(r#"{"n":0x10}"#)),
    ];
    let mut wrong = run(&f, &Fate::Refused, &refused).await;
    let accepted = [
        case(
            "1.0, 1e0, -0, 1E2",
            base_with(r#"{"n":[1.0,1e0,-0,1E2,-0.0]}"#),
        ),
        case(
            "u64 overflow in metadata",
            base_with(r#"{"n":18446744073709551617}"#),
        ),
        case("1.7e308", base_with(r#"{"n":1.7e308}"#)),
        case("subnormal", base_with(r#"{"n":5e-324}"#)),
        case(
            "jsonb layout decimals",
            jsonb_with(r#"{"a": 0.00001, "b": -12.50}"#),
        ),
    ];
    wrong.extend(run(&f, &Fate::Intact, &accepted).await);
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Bytes: a BOM, a NUL, invalid or overlong UTF-8, UTF-8-encoded surrogates, raw control
/// characters, `\u0000`, lone or reversed surrogates, and whitespace JSON does not allow are all
/// refused; JSON whitespace around the record and raw non-ASCII (emoji, U+FEFF, U+2028 inside a
/// string) are accepted and verify.
#[tokio::test]
async fn bytes_the_verifier_rejects_are_refused() {
    let f = fixture(2).await;
    let (_, fate) = raw_insert(&f, &base_with(r#"{"s":"é😀"}"#), "user", "a.b", None).await;
    assert_eq!(fate, Fate::Intact, "control");

    let with_bytes = |bytes: &[u8]| {
        let mut out = br#"{"metadata":{"s":"x"#.to_vec();
        out.extend_from_slice(bytes);
        out.extend_from_slice(br#""},"#);
        out.extend_from_slice(&BASE.as_bytes()[1..]);
        out
    };
    let prefixed = |prefix: &[u8]| {
        let mut out = prefix.to_vec();
        out.extend_from_slice(BASE.as_bytes());
        out
    };
    let suffixed = |suffix: &[u8]| {
        let mut out = BASE.as_bytes().to_vec();
        out.extend_from_slice(suffix);
        out
    };
    let refused = [
        case("BOM at start", prefixed(b"\xef\xbb\xbf")),
        case("NUL at end", suffixed(b"\0")),
        case("NUL at start", prefixed(b"\0")),
        case("NUL in a string", with_bytes(b"\0")),
        case("0xff in a string", with_bytes(b"\xff")),
        case("truncated sequence", with_bytes(b"\xe2\x82")),
        case("overlong '/'", with_bytes(b"\xc0\xaf")),
        case("overlong NUL", with_bytes(b"\xc0\x80")),
        case("UTF-8 encoded surrogate", with_bytes(b"\xed\xa0\x80")),
        case("beyond U+10FFFF", with_bytes(b"\xf4\x90\x80\x80")),
        case("raw control character", with_bytes(b"\x01")),
        case("raw newline", with_bytes(b"\n")),
        case("\\u0000", with_bytes(br"\u0000")),
        case("lone high surrogate", with_bytes(br"\ud800")),
        case("lone low surrogate", with_bytes(br"\ude00")),
        case("reversed pair", with_bytes(br"\ude00\ud83d")),
        case("invalid escape", with_bytes(br"\a")),
        case("short escape", with_bytes(br"\u12")),
        case("form feed between tokens", prefixed(b"\x0c")),
        case("vertical tab after", suffixed(b"\x0b")),
        case("no-break space after", suffixed("\u{a0}".as_bytes())),
        case("trailing garbage", suffixed(b" x")),
        case("two records", suffixed(BASE.as_bytes())),
        case("empty", b""),
        case("top-level array", format!("[{BASE}]")),
        case("top-level string", r#""{}""#),
        case("trailing comma", format!("{},}}", &BASE[..BASE.len() - 1])),
        case(
            "single quotes",
            BASE.replace(r#""schema":1"#, r#"'schema':1"#),
        ),
    ];
    let mut wrong = run(&f, &Fate::Refused, &refused).await;
    let emoji = Columns::new("user", "a😀", None);
    let accepted = [
        case("whitespace around", format!(" \t\r\n{BASE} \t\r\n")),
        case("raw U+FEFF in a string", with_bytes("\u{feff}".as_bytes())),
        case("raw U+2028 in a string", with_bytes("\u{2028}".as_bytes())),
        case("raw DEL in a string", with_bytes(b"\x7f")),
        case("escaped \\u0001", with_bytes(br"\u0001")),
        (
            "action as a surrogate pair, column the raw emoji",
            BASE.replace(r#""a.b""#, r#""a\ud83d\ude00""#).into_bytes(),
            emoji,
        ),
        (
            "action raw emoji",
            BASE.replace(r#""a.b""#, r#""a😀""#).into_bytes(),
            emoji,
        ),
    ];
    wrong.extend(run(&f, &Fate::Intact, &accepted).await);
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Fields the verifier reads: `request_id` and `actor.id` null or missing both read as none and
/// match a NULL column; present, they must match the column exactly (a UUID the verifier would
/// also parse in another spelling — uppercase, braced, simple, URN — is refused); type
/// confusion and unknown fields at any level are refused.
#[tokio::test]
async fn fields_are_read_alike_by_the_trigger_and_the_verifier() {
    let f = fixture(2).await;
    let (_, fate) = raw_insert(&f, BASE, "user", "a.b", None).await;
    assert_eq!(fate, Fate::Intact, "control");
    let id = uuid::Uuid::new_v4();
    let with_id = Columns {
        actor_id: Some(id),
        ..Columns::BASE
    };
    let actor = |value: &str| {
        BASE.replace(
            r#"{"kind":"user"}"#,
            &format!(r#"{{"id":{value},"kind":"user"}}"#),
        )
    };
    let rid = |value: &str| BASE.replacen('{', &format!(r#"{{"request_id":{value},"#), 1);

    let accepted = [
        case("request_id null", rid("null")),
        case("actor id null", actor("null")),
        case(
            "actor tenant and outcome reason (ignored fields)",
            BASE.replace(
                r#"{"kind":"user"}"#,
                r#"{"kind":"user","tenant":[1,{"x":null}]}"#,
            )
            .replace(
                r#"{"status":"allowed"}"#,
                r#"{"reason":{"a":1},"status":"allowed"}"#,
            ),
        ),
        case(
            "targets, ip, user_agent of any type",
            BASE.replacen('{', r#"{"targets":7,"ip":{},"user_agent":[null],"#, 1),
        ),
        case(
            "ignored fields null",
            BASE.replacen('{', r#"{"targets":null,"metadata":null,"#, 1),
        ),
        (
            "actor id present",
            actor(&format!(r#""{id}""#)).into_bytes(),
            with_id,
        ),
        (
            "empty request_id",
            rid(r#""""#).into_bytes(),
            Columns::new("user", "a.b", Some("")),
        ),
        (
            "request_id with escapes",
            rid(r#""r\u002d\n\"1""#).into_bytes(),
            Columns::new("user", "a.b", Some("r-\n\"1")),
        ),
    ];
    let mut wrong = run(&f, &Fate::Intact, &accepted).await;
    let upper = id.to_string().to_uppercase();
    let simple = id.simple().to_string();
    let refused = [
        (
            "actor id missing, column set",
            BASE.as_bytes().to_vec(),
            with_id,
        ),
        (
            "actor id null, column set",
            actor("null").into_bytes(),
            with_id,
        ),
        (
            "actor id uppercase",
            actor(&format!(r#""{upper}""#)).into_bytes(),
            with_id,
        ),
        (
            "actor id braced",
            actor(&format!(r#""{{{id}}}""#)).into_bytes(),
            with_id,
        ),
        (
            "actor id simple",
            actor(&format!(r#""{simple}""#)).into_bytes(),
            with_id,
        ),
        (
            "actor id urn",
            actor(&format!(r#""urn:uuid:{id}""#)).into_bytes(),
            with_id,
        ),
        (
            "actor id not a uuid",
            actor(r#""x""#).into_bytes(),
            Columns::BASE,
        ),
        ("actor id a number", actor("1").into_bytes(), Columns::BASE),
        (
            "actor id an object",
            actor("{}").into_bytes(),
            Columns::BASE,
        ),
        (
            "request_id missing, column empty",
            BASE.as_bytes().to_vec(),
            Columns::new("user", "a.b", Some("")),
        ),
        (
            "request_id null, column \"null\"",
            rid("null").into_bytes(),
            Columns::new("user", "a.b", Some("null")),
        ),
        (
            "request_id false",
            rid("false").into_bytes(),
            Columns::new("user", "a.b", Some("false")),
        ),
        (
            "request_id an array",
            rid(r#"["x"]"#).into_bytes(),
            Columns::new("user", "a.b", Some(r#"["x"]"#)),
        ),
        case(
            "key differing by case",
            BASE.replace(r#""action""#, r#""Action""#),
        ),
        case(
            "key with NFD-like suffix",
            BASE.replace(r#""action""#, "\"action\u{301}\""),
        ),
        case(
            "actor an array",
            BASE.replace(r#"{"kind":"user"}"#, r#"[{"kind":"user"}]"#),
        ),
        case("actor null", BASE.replace(r#"{"kind":"user"}"#, "null")),
        case(
            "actor missing",
            BASE.replace(r#""actor":{"kind":"user"},"#, ""),
        ),
        case(
            "outcome a string",
            BASE.replace(r#"{"status":"allowed"}"#, r#""allowed""#),
        ),
        case(
            "kind null",
            BASE.replace(r#""kind":"user""#, r#""kind":null"#),
        ),
        case("tenant null", BASE.replace(r#""@T@""#, "null")),
        case(
            "tenant with a suffix",
            BASE.replace(r#""tenant":"@T@""#, r#""tenant":"@T@X""#),
        ),
        case(
            "time without fraction digits",
            BASE.replace("@TS@", "2026-01-01T00:00:00Z"),
        ),
        case("unknown key inside actor", actor(r#""x","x":1"#)),
    ];
    wrong.extend(run_coded(&f, &Fate::Refused, Some("AL003"), &refused).await);
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Depth: the record, its root object included, may nest 100 containers; one more, or a value
/// inside the hundredth, is refused — in arrays and in objects, on both the fast path and the
/// walk.
#[tokio::test]
async fn nesting_is_limited_in_arrays_and_objects() {
    let f = fixture(2).await;
    // `n` containers below the root (metadata's value is the first).
    let arrays = |n: usize, inner: &str| format!("{}{inner}{}", "[".repeat(n), "]".repeat(n));
    let objects = |n: usize, inner: &str| {
        let mut s = inner.to_owned();
        for _ in 0..n {
            s = format!(r#"{{"a": {s}}}"#);
        }
        s
    };
    let accepted = [
        case("98 arrays", base_with(&arrays(98, ""))),
        case("98 arrays, a value inside", base_with(&arrays(98, "1"))),
        case("99 empty arrays", base_with(&arrays(99, ""))),
        case("99 empty arrays, jsonb layout", jsonb_with(&arrays(99, ""))),
        case("98 objects, a value inside", base_with(&objects(98, "1"))),
        case("99 objects, the last empty", base_with(&objects(98, "{}"))),
        case("99 objects, jsonb layout", jsonb_with(&objects(98, "{}"))),
    ];
    let mut wrong = run(&f, &Fate::Intact, &accepted).await;
    let refused = [
        case("99 arrays, a value inside", base_with(&arrays(99, "1"))),
        case("100 empty arrays", base_with(&arrays(100, ""))),
        case(
            "100 empty arrays, jsonb layout",
            jsonb_with(&arrays(100, "")),
        ),
        case("99 objects, a value inside", base_with(&objects(99, "1"))),
        case("100 objects, the last empty", base_with(&objects(99, "{}"))),
        case("100 objects, jsonb layout", jsonb_with(&objects(99, "{}"))),
        case(
            "130 arrays (beyond serde_json's limit)",
            base_with(&arrays(130, "1")),
        ),
        case("100 mixed", base_with(&objects(50, &arrays(50, "")))),
    ];
    wrong.extend(run_coded(&f, &Fate::Refused, Some("AL003"), &refused).await);
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// `jsonb` orders keys by byte length, then bytes: multi-byte keys whose character count
/// differs from their byte length, and equal-length keys that differ in bytes, written by the
/// library, land exactly in the `jsonb` layout and verify; a raw record in character-count
/// order (not the `jsonb` layout) is walked and accepted when it repeats nothing, refused when
/// it does.
#[tokio::test]
async fn jsonb_key_order_corner_cases() {
    let f = fixture(2).await;
    let t = TenantId::new_random();
    let metadata = serde_json::json!({
        "é": 1, "ab": 2, "b": 3, "€": 4, "abc": 5, "😀": 6, "abcd": 7, "ba": 8, "aa": 9,
        "\u{7f}": 10, "Z": 11, "a": {"é": [], "e\u{301}": {}, "ÿ": "\u{ff}"},
    });
    let e = audit_log::AuditEvent::new(
        t,
        audit_log::AuditActor::anonymous(),
        audit_log::actions::AUTHZ_DENIED,
        audit_log::Outcome::Allowed,
    )
    .with_metadata(metadata)
    .unwrap();
    f.log.record(e).await.unwrap();
    assert!(
        is_jsonb_layout(&f, t, 1).await,
        "library record in the jsonb layout"
    );
    assert_eq!(fate_of(&f, t).await, Fate::Intact, "control");

    let accepted = [
        case(
            "jsonb layout with multi-byte keys",
            jsonb_with(
                r#"{"Z": 1, "a": 2, "b": 3, "aa": 4, "ab": 5, "ba": 6, "é": 7, "abc": 8, "€": 9, "abcd": 10, "😀": 11}"#,
            ),
        ),
        case(
            "character-count order",
            jsonb_with(
                r#"{"Z": 1, "a": 2, "b": 3, "é": 7, "€": 9, "😀": 11, "aa": 4, "ab": 5, "ba": 6, "abc": 8, "abcd": 10}"#,
            ),
        ),
    ];
    let mut wrong = run(&f, &Fate::Intact, &accepted).await;
    let refused = [
        case(
            "character-count order with a repeat",
            jsonb_with(r#"{"a": 2, "é": 7, "€": 9, "😀": 11, "\u00e9": 1}"#),
        ),
        case(
            "jsonb order with a repeat of a multi-byte key",
            jsonb_with(r#"{"a": 2, "é": 7, "é": 8, "€": 9}"#),
        ),
    ];
    wrong.extend(run(&f, &Fate::Refused, &refused).await);
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Statement shapes: several rows in one INSERT, `ON CONFLICT DO NOTHING`, and writing the
/// columns the trigger owns.
#[tokio::test]
async fn statement_shapes_cannot_fork_or_forge_the_chain() {
    let f = fixture(2).await;
    let two_rows = "INSERT INTO audit.pending
        (tenant_id, occurred_at, actor_kind, actor_id, action, outcome, request_id, event)
        VALUES ($1, $2, $3, $4, $5, 'allowed', $6, $7), ($1, $2, $3, $4, $5, 'allowed', $6, $7)";
    let on_conflict = format!("{RAW_INSERT} ON CONFLICT DO NOTHING");
    for (why, sql) in [
        ("two rows", two_rows),
        ("on conflict", on_conflict.as_str()),
    ] {
        let (_, fate) =
            raw_insert_with(&f, f.log.pool(), sql, BASE.as_bytes(), Columns::BASE).await;
        assert_eq!(fate, Fate::Intact, "{why}");
    }
    let forged = "INSERT INTO audit.pending
        (tenant_id, occurred_at, actor_kind, actor_id, action, outcome, request_id, event, seq,
         prev_hash, hash)
        VALUES ($1, $2, $3, $4, $5, 'allowed', $6, $7, 1, sha256(''), sha256(''))";
    let (_, fate) = raw_insert_with(&f, f.log.pool(), forged, BASE.as_bytes(), Columns::BASE).await;
    assert_eq!(fate, Fate::Refused, "forged seq and hashes");

    // The row's time within the allowed skew is accepted and verifies; beyond it, refused.
    for (shift_secs, expected) in [
        (-290, Fate::Intact),
        (290, Fate::Intact),
        (-400, Fate::Refused),
        (400, Fate::Refused),
    ] {
        let columns = Columns {
            shift_secs,
            ..Columns::BASE
        };
        let (_, fate) = raw_insert_bytes(&f, BASE.as_bytes(), columns).await;
        assert_eq!(fate, expected, "time shifted by {shift_secs}s");
    }

    // A stale snapshot: the attacker's connection defaults to REPEATABLE READ and takes its
    // snapshot before an honest event commits. The request path reads no chain position any
    // more (only the sequencer does, under its own lock), so the queued row is simply chained
    // after the honest one; nothing forks.
    let raw = f.db.pool(Role::Runtime, 1).await;
    sqlx::query("SET default_transaction_isolation = 'repeatable read'")
        .execute(&raw)
        .await
        .unwrap();
    let pool = TenantPool::new(raw).await.unwrap();
    let t = TenantId::new_random();
    append_n(&f, t, 1).await;
    let ctx = tenant_scope::TenantContext::for_job(t, None, "review").unwrap();
    let mut tx = pool.begin(&ctx).await.unwrap();
    let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM audit.events")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(seen, 1);
    f.log.record(event(t, 2)).await.unwrap();
    let at = now_micros();
    let inserted = sqlx::query(RAW_INSERT)
        .bind(t.as_uuid())
        .bind(at)
        .bind("user")
        .bind(None::<uuid::Uuid>)
        .bind("a.b")
        .bind(None::<&str>)
        .bind(fill(BASE.as_bytes(), t, at))
        .execute(&mut *tx)
        .await;
    if inserted.is_ok() {
        tx.commit().await.unwrap();
    } else {
        tx.rollback().await.unwrap();
    }
    f.log.record(event(t, 3)).await.unwrap();
    assert_eq!(
        fate_of(&f, t).await,
        Fate::Intact,
        "stale snapshot: {inserted:?}"
    );
    assert!(
        inserted.is_ok(),
        "stale snapshot insert refused: {inserted:?}"
    );
    assert_eq!(verify(&f, t).await.last_seq, 4);
}
