//! Feeds JSON-lines exports to `verify_export`, the offline chain verifier: either arbitrary
//! bytes, or a genuine four-event export (built here with `chain_hash` and a signed checkpoint)
//! with fuzzer-chosen edits — bytes overwritten, inserted or deleted, lines swapped, dropped or
//! duplicated. A trusted checkpoint of the genuine head is passed as an external checkpoint.
//!
//! Invariants: never panics; the genuine export is intact; and whenever an input is reported
//! intact for the genuine tenant, it holds exactly the genuine events' records, in order (no
//! edit, loss, reordering or truncation passes); for any other tenant it holds no event.
#![no_main]

use std::sync::LazyLock;

use audit_log::{
    Checkpoint, CheckpointSigner, EXPORT_FORMAT, TrustedKeys, chain_hash, genesis_hash,
    verify_export,
};
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};
use tenant_scope::TenantId;

const TENANT: &str = "5b0d3c1e-7a44-4c1b-9f3e-2d6a8e9b1c00";
const EVENTS: u64 = 4;

struct Genuine {
    tenant: TenantId,
    export: Vec<u8>,
    records: Vec<String>,
    keys: TrustedKeys,
    external: Vec<Checkpoint>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn line(value: &Value) -> String {
    serde_json::to_string(value).unwrap()
}

static GENUINE: LazyLock<Genuine> = LazyLock::new(|| {
    let tenant: TenantId = TENANT.parse().unwrap();
    let secret = audit_log::secrecy::SecretBox::new(Box::new([7; 32]));
    let signer = CheckpointSigner::from_secret("fuzz-key", &secret).unwrap();
    let keys = TrustedKeys::new().with(signer.verifying_key());
    let genesis = genesis_hash(tenant);
    let mut lines = vec![line(&json!({
        "type": "chain", "format": EXPORT_FORMAT, "tenant": TENANT, "complete": true,
        "base_seq": 0, "base_hash": hex(&genesis), "exported_at": "2026-11-29T12:00:00.000000Z",
    }))];
    let actor = "0e7f2c9a-51b3-4d8e-a6c4-3f9b8d2e1a70";
    let kinds = [
        (
            "user",
            Some(actor),
            "authn.login",
            "allowed",
            None,
            Some("req-1"),
        ),
        (
            "anonymous",
            None,
            "authz.denied",
            "denied",
            Some("mfa_required"),
            Some("req-2"),
        ),
        ("user", Some(actor), "data.exported", "allowed", None, None),
        (
            "staff",
            Some(actor),
            "user.invite",
            "failed",
            Some("mail_down"),
            Some("req-4"),
        ),
    ];
    let mut prev = genesis;
    let mut records = Vec::new();
    let mut events = Vec::new();
    let mut stored = None;
    let mut head = None;
    for (i, (kind, id, action, status, reason, request)) in kinds.into_iter().enumerate() {
        let seq = i as u64 + 1;
        let at = format!("2026-11-29T10:00:0{seq}.00000{seq}Z");
        let mut actor_json = json!({ "kind": kind });
        if let Some(id) = id {
            actor_json["id"] = json!(id);
        }
        let mut outcome = json!({ "status": status });
        if let Some(reason) = reason {
            outcome["reason"] = json!(reason);
        }
        let mut record = json!({
            "schema": audit_log::SCHEMA_VERSION, "tenant": TENANT, "occurred_at": at,
            "actor": actor_json, "action": action, "outcome": outcome,
        });
        if let Some(request) = request {
            record["request_id"] = json!(request);
        }
        if seq == 3 {
            record["metadata"] = json!({ "rows": 120, "by": "[email]" });
            record["targets"] = json!([{ "kind": "export", "id": "2026-11" }]);
        }
        // serde_json's map is sorted by key bytes and `to_string` is compact: canonical form.
        let record = serde_json::to_string(&record).unwrap();
        let hash = chain_hash(tenant, seq, &prev, record.as_bytes());
        events.push(line(&json!({
            "type": "event", "seq": seq, "occurred_at": at, "actor_kind": kind,
            "actor_id": id, "action": action, "outcome": status, "request_id": request,
            "record": record, "prev_hash": hex(&prev), "hash": hex(&hash),
        })));
        if seq == 2 {
            stored = Some(signer.sign(tenant, seq, &hash).unwrap());
        }
        if seq == EVENTS {
            head = Some(signer.sign(tenant, seq, &hash).unwrap());
        }
        records.push(record);
        prev = hash;
    }
    let mut checkpoint = serde_json::to_value(stored.unwrap()).unwrap();
    checkpoint["type"] = json!("checkpoint");
    lines.push(line(&checkpoint));
    lines.extend(events);
    lines.push(line(
        &json!({ "type": "end", "events": EVENTS, "last_seq": EVENTS }),
    ));
    let mut export = lines.join("\n").into_bytes();
    export.push(b'\n');
    let genuine = Genuine {
        tenant,
        export,
        records,
        keys,
        external: vec![head.unwrap()],
    };
    let report = verify_export(&genuine.export[..], &genuine.keys, &genuine.external).unwrap();
    assert!(report.is_intact(), "{:?}", report.result);
    assert_eq!((report.events, report.checkpoints), (EVENTS, 2));
    genuine
});

/// The byte lines as `BufRead::lines` cuts them.
fn lines(input: &[u8]) -> Vec<&[u8]> {
    let mut out: Vec<&[u8]> = input.split(|&b| b == b'\n').collect();
    if input.ends_with(b"\n") {
        out.pop();
    }
    out.into_iter()
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .collect()
}

/// Applies edit operations (4 bytes each) to the genuine export.
fn edit(genuine: &[u8], ops: &[u8]) -> Vec<u8> {
    let mut bytes = genuine.to_vec();
    for op in ops.chunks_exact(4).take(16) {
        let (kind, a, b, c) = (op[0] % 6, op[1], op[2], op[3]);
        let pos = (usize::from(a) << 8 | usize::from(b)) % (bytes.len() + 1);
        match kind {
            0 if pos < bytes.len() => bytes[pos] = c,
            1 => {
                let end = (pos + usize::from(c % 8) + 1).min(bytes.len());
                bytes.drain(pos..end);
            }
            2 => bytes.insert(pos, c),
            _ => {
                let mut ls: Vec<Vec<u8>> =
                    bytes.split(|&x| x == b'\n').map(<[u8]>::to_vec).collect();
                let n = ls.len();
                let (i, j) = (usize::from(a) % n, usize::from(b) % n);
                match kind {
                    3 => ls.swap(i, j),
                    4 => {
                        ls.remove(i);
                    }
                    _ => {
                        let copy = ls[i].clone();
                        ls.insert(j, copy);
                    }
                }
                bytes = ls.join(&b'\n');
            }
        }
        if bytes.is_empty() {
            break;
        }
    }
    bytes
}

fuzz_target!(|data: &[u8]| {
    let genuine = &*GENUINE;
    let input = match data.split_first() {
        Some((mode, ops)) if mode % 4 != 0 => edit(&genuine.export, ops),
        Some((_, raw)) => raw.to_vec(),
        None => return,
    };
    let Ok(report) = verify_export(&input[..], &genuine.keys, &genuine.external) else {
        return;
    };
    let lines = lines(&input);
    assert!(report.events <= lines.len() as u64);
    if !report.is_intact() {
        return;
    }
    if report.tenant != genuine.tenant {
        assert_eq!(report.events, 0, "events of another tenant verified");
        return;
    }
    assert_eq!(
        (report.events, report.last_seq),
        (EVENTS, EVENTS),
        "{:?}",
        report
    );
    let records: Vec<String> = lines
        .iter()
        .filter_map(|l| serde_json::from_slice::<Value>(l).ok())
        .filter(|v| v["type"] == "event")
        .map(|v| v["record"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        records,
        genuine.records,
        "an edited export verified as intact:\n{}",
        String::from_utf8_lossy(&input)
    );
});
