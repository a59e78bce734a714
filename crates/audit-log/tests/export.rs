//! Query, export, offline verification and the command line.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;

use audit_log::{
    Action, AuditActor, AuditEvent, AuditQuery, BreakKind, Outcome, export_csv, export_jsonl,
    verify_export,
};
use common::*;
use tenant_scope::TenantId;
use testkit::Role;

#[tokio::test]
async fn queries_filter_by_actor_action_and_time() {
    let f = fixture(2).await;
    let t = TenantId::new_random();
    append_n(&f, t, 3).await;
    let who = actor(t);
    let start = time::OffsetDateTime::now_utc();
    f.log
        .record(AuditEvent::new(
            t,
            AuditActor::from_actor(&who),
            audit_log::actions::DATA_EXPORTED,
            Outcome::Allowed,
        ))
        .await
        .unwrap();
    sequence_all(&f).await;
    let by_actor = AuditQuery::new(t)
        .with_actor(*who.id().as_uuid())
        .fetch(&f.raw)
        .await
        .unwrap();
    assert_eq!(by_actor.len(), 1);
    let by_action = AuditQuery::new(t)
        .with_action(&Action::new("note.updated").unwrap())
        .fetch(&f.raw)
        .await
        .unwrap();
    assert_eq!(
        by_action.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![3, 2, 1]
    );
    let since = AuditQuery::new(t).since(start).fetch(&f.raw).await.unwrap();
    assert_eq!(since.len(), 1);
    assert_eq!(
        AuditQuery::new(t)
            .limit(2)
            .fetch(&f.raw)
            .await
            .unwrap()
            .len(),
        2
    );
    // Pages: newest first, the next one starting before the last position shown.
    let page = |before: Option<u64>| {
        let query = AuditQuery::new(t).limit(2);
        let query = before.map_or(query.clone(), |seq| query.before(seq));
        let raw = f.raw.clone();
        async move {
            let events = query.fetch(&raw).await.unwrap();
            events.iter().map(|e| e.seq).collect::<Vec<_>>()
        }
    };
    assert_eq!(page(None).await, vec![4, 3]);
    assert_eq!(page(Some(3)).await, vec![2, 1]);
    assert_eq!(page(Some(1)).await, Vec::<u64>::new());
    let filtered_page = AuditQuery::new(t)
        .with_action(&Action::new("note.updated").unwrap())
        .before(3)
        .fetch(&f.raw)
        .await
        .unwrap();
    assert_eq!(
        filtered_page.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![2, 1]
    );
    // Another tenant's query sees none of it, even through the same pool.
    assert!(
        AuditQuery::new(TenantId::new_random())
            .fetch(&f.raw)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn a_complete_export_verifies_offline_and_a_tampered_line_is_found() {
    let f = fixture(2).await;
    let t = TenantId::new_random();
    append_n(&f, t, 6).await;
    f.log
        .checkpoint(&f.checkpointer, t, &f.signer)
        .await
        .unwrap();
    append_n(&f, t, 2).await;
    let mut out = Vec::new();
    let summary = export_jsonl(&f.raw, &AuditQuery::new(t), &mut out)
        .await
        .unwrap();
    assert_eq!((summary.events, summary.checkpoints), (8, 1));
    let report = verify_export(&out[..], &f.keys, &[]).unwrap();
    assert!(report.is_intact(), "{:?}", report.result);
    assert_eq!((report.events, report.checkpoints), (8, 1));

    // Edit event 4's record inside the export.
    let text = String::from_utf8(out.clone()).unwrap();
    let tampered: String = text
        .lines()
        .map(|line| {
            if line.contains("\"seq\":4,") && line.contains("\"type\":\"event\"") {
                line.replace("\\\"n\\\": 4", "\\\"n\\\": 40")
            } else {
                line.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert_ne!(tampered.trim_end(), text.trim_end());
    let report = verify_export(tampered.as_bytes(), &f.keys, &[]).unwrap();
    let broken = report.result.unwrap_err();
    assert_eq!((broken.seq, broken.kind), (4, BreakKind::HashMismatch));

    // A filtered export is not a chain and is not passed off as one.
    let mut filtered = Vec::new();
    export_jsonl(&f.raw, &AuditQuery::new(t).limit(3), &mut filtered)
        .await
        .unwrap();
    assert!(verify_export(&filtered[..], &f.keys, &[]).is_err());
}

#[tokio::test]
async fn csv_export_defuses_spreadsheet_formulas() {
    let f = fixture(2).await;
    let t = TenantId::new_random();
    let e = AuditEvent::new(
        t,
        AuditActor::anonymous(),
        Action::new("note.viewed").unwrap(),
        Outcome::Allowed,
    )
    .with_request_id("=HYPERLINK(\"https://evil.example\",\"click\")");
    f.log.record(e).await.unwrap();
    sequence_all(&f).await;
    let mut out = Vec::new();
    export_csv(&f.raw, &AuditQuery::new(t), &mut out)
        .await
        .unwrap();
    let text = String::from_utf8(out).unwrap();
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let row = reader.records().next().unwrap().unwrap();
    assert_eq!(&row[6], "'=HYPERLINK(\"https://evil.example\",\"click\")");
    assert!(row[9].starts_with('{'));
}

fn cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_audit-log"))
        .args(args)
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_command_line_verifies_exports_and_fails_closed() {
    let f = fixture(2).await;
    let t = TenantId::new_random();
    append_n(&f, t, 5).await;
    f.log
        .checkpoint(&f.checkpointer, t, &f.signer)
        .await
        .unwrap();
    let url = f.db.url(Role::Owner);
    let key = format!("test-key={}", f.signer.verifying_key().to_hex());
    let tenant = t.to_string();

    let (code, stdout, stderr) = cli(&[
        "verify",
        "--database-url",
        &url,
        "--tenant",
        &tenant,
        "--key",
        &key,
    ]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("intact"), "{stdout}");

    // Without the key, the stored checkpoint cannot be trusted: not reported intact.
    let (code, stdout, _) = cli(&["verify", "--database-url", &url, "--tenant", &tenant]);
    assert_eq!(code, 1, "{stdout}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("export.jsonl");
    let file = file.to_str().unwrap();
    let (code, _, stderr) = cli(&[
        "export",
        "--database-url",
        &url,
        "--tenant",
        &tenant,
        "--output",
        file,
    ]);
    assert_eq!(code, 0, "{stderr}");
    let (code, stdout, _) = cli(&["verify-export", file, "--key", &key, "--json"]);
    assert_eq!(code, 0, "{stdout}");
    let json: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(json["intact"], true);
    assert_eq!(json["events"], 5);

    let mut tx = begin_tamper(&f.db).await;
    sqlx::query("DELETE FROM audit.events WHERE tenant_id = $1 AND seq = 2")
        .bind(t.as_uuid())
        .execute(&mut *tx)
        .await
        .unwrap();
    end_tamper(tx).await;
    let (code, stdout, _) = cli(&[
        "verify",
        "--database-url",
        &url,
        "--tenant",
        &tenant,
        "--key",
        &key,
    ]);
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("seq 2"), "{stdout}");

    // A database that cannot be reached is "could not run", never "intact".
    let (code, _, stderr) = cli(&[
        "verify",
        "--database-url",
        "postgres://nobody@127.0.0.1:1/none?connect_timeout=2",
        "--tenant",
        &tenant,
    ]);
    assert_eq!(code, 2, "{stderr}");
    let (code, _, _) = cli(&["verify", "--tenant", "not-a-uuid"]);
    assert_eq!(code, 2);
    let (code, _, _) = cli(&["--help"]);
    assert_eq!(code, 0);
}

#[tokio::test]
async fn an_inclusion_proof_verifies_offline_and_a_forged_one_does_not() {
    let f = fixture(2).await;
    let t = TenantId::new_random();
    append_n(&f, t, 5).await;
    // Not covered by a checkpoint yet: no proof.
    assert!(matches!(
        audit_log::prove(&f.raw, t, 2, &f.keys).await,
        Err(audit_log::AuditError::NotCheckpointed)
    ));
    f.log
        .checkpoint(&f.checkpointer, t, &f.signer)
        .await
        .unwrap();
    append_n(&f, t, 2).await;
    let proof = audit_log::prove(&f.raw, t, 2, &f.keys).await.unwrap();
    assert_eq!(
        (proof.seq, proof.checkpoint.seq, proof.records.len()),
        (2, 5, 4)
    );
    let record = proof.verify(&f.keys).unwrap();
    assert_eq!(record["metadata"]["n"], 2);
    // Round trip through JSON, as it would travel.
    let travelled: audit_log::InclusionProof =
        serde_json::from_str(&serde_json::to_string(&proof).unwrap()).unwrap();
    assert!(travelled.verify(&f.keys).is_ok());

    let mut edited = proof.clone();
    edited.records[0] = edited.records[0].replace("\"n\": 2", "\"n\": 3");
    assert!(edited.verify(&f.keys).is_err());
    let mut shortened = proof.clone();
    shortened.records.pop();
    assert!(shortened.verify(&f.keys).is_err());
    let mut moved = proof.clone();
    moved.seq = 3;
    assert!(moved.verify(&f.keys).is_err());
    let untrusted = audit_log::TrustedKeys::new().with(
        audit_log::CheckpointSigner::generate("test-key")
            .unwrap()
            .verifying_key(),
    );
    assert!(proof.verify(&untrusted).is_err());
}

/// `audit-log verify` reports events not yet chained (and `--json` their number and age);
/// `audit-log sequence --once` chains them, after which nothing waits.
#[tokio::test]
async fn the_command_line_reports_queued_events_and_sequences_them() {
    let f = fixture(2).await;
    let t = TenantId::new_random();
    append_n(&f, t, 2).await;
    for i in 0..3 {
        f.log.record(event(t, 10 + i)).await.unwrap();
    }
    let url = f.db.url(Role::Owner);
    let tenant = t.to_string();
    let verify = |json: bool| {
        let mut args = vec!["verify", "--database-url", &url, "--tenant", &tenant];
        if json {
            args.push("--json");
        }
        cli(&args)
    };
    let (code, stdout, stderr) = verify(false);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("3 events not yet chained"), "{stdout}");
    let (_, stdout, _) = verify(true);
    let json: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(
        (json["last_seq"].as_u64(), json["pending"].as_u64()),
        (Some(2), Some(3))
    );
    assert!(json["oldest_pending_age_secs"].as_f64().is_some());

    // The sequencer's URL: here the test superuser (an application gives a sequencer role's).
    let admin = f.db.url(Role::Admin);
    let (code, _, stderr) = cli(&["sequence", "--database-url", &admin, "--once"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("chained 3 events"), "{stderr}");
    let (code, stdout, _) = verify(false);
    assert_eq!(code, 0, "{stdout}");
    assert!(!stdout.contains("not yet chained"), "{stdout}");
    let (_, stdout, _) = verify(true);
    let json: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(
        (json["last_seq"].as_u64(), json["pending"].as_u64()),
        (Some(5), Some(0))
    );
}
