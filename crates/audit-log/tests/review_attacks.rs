//! Security review: attacks by the runtime role (SQL injection) and by a checkpointer role
//! that holds no signing key. Each test pairs the attack with a positive control.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use audit_log::AuditError;
use common::*;
use tenant_scope::{TenantContext, TenantId};

/// A raw INSERT by the runtime role (SQL injection) spelled so that a forgiving reading
/// (`jsonb`: last duplicate wins, `1.0 = 1`, numbers read as text) matches the columns while
/// the verifier's strict parse rejects it: the trigger must refuse it, or one statement leaves a
/// `RecordMismatch` in the chain for ever.
#[tokio::test]
async fn a_raw_insert_spelled_differently_from_the_verifier_poisons_the_chain() {
    let f = fixture(4).await;
    // Positive control: a record that matches its columns is accepted and verifies.
    let (_, fate) = raw_insert(&f, BASE, "user", "a.b", None).await;
    assert_eq!(fate, Fate::Intact, "control");

    let dup_action = BASE.replacen('{', r#"{"action":"authn.logout","#, 1);
    let variants: Vec<(&str, String, &str, &str, Option<&str>)> = vec![
        (
            "unknown top-level field",
            BASE.replacen('{', r#"{"admin":true,"#, 1),
            "user",
            "a.b",
            None,
        ),
        (
            "duplicate key (jsonb keeps the last)",
            dup_action,
            "user",
            "a.b",
            None,
        ),
        (
            "schema 1.0 (jsonb numeric equality)",
            BASE.replace(r#""schema":1"#, r#""schema":1.0"#),
            "user",
            "a.b",
            None,
        ),
        (
            "action as a JSON number",
            BASE.replace(r#""action":"a.b""#, r#""action":123"#),
            "user",
            "123",
            None,
        ),
        (
            "request_id as a JSON number",
            BASE.replacen('{', r#"{"request_id":42,"#, 1),
            "user",
            "a.b",
            Some("42"),
        ),
        (
            "unknown field inside actor",
            BASE.replace(r#"{"kind":"user"}"#, r#"{"kind":"user","admin":true}"#),
            "user",
            "a.b",
            None,
        ),
        (
            "unknown field inside outcome",
            BASE.replace(r#"{"status":"allowed"}"#, r#"{"status":"allowed","x":1}"#),
            "user",
            "a.b",
            None,
        ),
    ];
    let mut poisoned = Vec::new();
    for (why, template, kind, action, request_id) in &variants {
        let (t, fate) = raw_insert(&f, template, kind, action, *request_id).await;
        if let Fate::Poisoned(detail) = fate {
            let signs = f.log.checkpoint(&f.checkpointer, t, &f.signer).await;
            poisoned.push(format!(
                "{why}: verify: {detail}; checkpoint: {}",
                match signs {
                    Ok(_) => "signed".to_owned(),
                    Err(e) => format!("refused ({e})"),
                }
            ));
        }
    }
    assert!(
        poisoned.is_empty(),
        "raw INSERTs the trigger accepted but the verifier rejects:\n{}",
        poisoned.join("\n")
    );
}

/// Held: spellings on which the trigger and the verifier agree are either refused or verify.
#[tokio::test]
async fn raw_insert_spellings_the_trigger_and_verifier_agree_on() {
    let f = fixture(4).await;
    let other = TenantId::new_random();
    let variants: Vec<(&str, String, &str, &str, Option<&str>)> = vec![
        (
            "unicode escape in action",
            BASE.replace(r#""action":"a.b""#, r#""action":"a\u002eb""#),
            "user",
            "a.b",
            None,
        ),
        (
            "request_id null vs missing",
            BASE.replacen('{', r#"{"request_id":null,"#, 1),
            "user",
            "a.b",
            None,
        ),
        (
            "actor id null",
            BASE.replace(r#"{"kind":"user"}"#, r#"{"id":null,"kind":"user"}"#),
            "user",
            "a.b",
            None,
        ),
        (
            "schema as a string",
            BASE.replace(r#""schema":1"#, r#""schema":"1""#),
            "user",
            "a.b",
            None,
        ),
        (
            "schema 2",
            BASE.replace(r#""schema":1"#, r#""schema":2"#),
            "user",
            "a.b",
            None,
        ),
        (
            "time with +00:00",
            BASE.replace(r#""occurred_at":"@TS@""#, r#""occurred_at":"@TS@+00:00""#),
            "user",
            "a.b",
            None,
        ),
        (
            "another tenant in the record",
            BASE.replace("@T@", &other.to_string()),
            "user",
            "a.b",
            None,
        ),
        (
            "request_id differs",
            BASE.replacen('{', r#"{"request_id":"x","#, 1),
            "user",
            "a.b",
            Some("y"),
        ),
        (
            "outcome differs",
            BASE.replace(r#""allowed""#, r#""denied""#),
            "user",
            "a.b",
            None,
        ),
        (
            "actor kind with a trailing space",
            BASE.replace(r#"{"kind":"user"}"#, r#"{"kind":"user "}"#),
            "user",
            "a.b",
            None,
        ),
        (
            "array instead of object",
            format!("[{BASE}]"),
            "user",
            "a.b",
            None,
        ),
    ];
    for (why, template, kind, action, request_id) in &variants {
        let (_, fate) = raw_insert(&f, template, kind, action, *request_id).await;
        assert!(
            matches!(fate, Fate::Refused | Fate::Intact),
            "{why}: {fate:?}"
        );
    }
}

/// Inserts a junk checkpoint (`table` = checkpoints) or acknowledgement (`acknowledgements`)
/// as the checkpointer role, with `signed_at` as given.
async fn plant(f: &Fixture, t: TenantId, table: &str, signed_at: &str) {
    let ctx = TenantContext::for_job(t, None, "review").unwrap();
    let mut tx = f.checkpointer.begin(&ctx).await.unwrap();
    let sql = if table == "checkpoints" {
        "INSERT INTO audit.checkpoints (tenant_id, seq, hash, signed_at, key_id, signature) \
         VALUES ($1, 1, pg_catalog.decode(pg_catalog.repeat('00', 32), 'hex'), $2::timestamptz, \
                 'test-key', pg_catalog.decode(pg_catalog.repeat('00', 64), 'hex'))"
    } else {
        "INSERT INTO audit.acknowledgements (tenant_id, break_seq, kind, resume_seq, resume_hash, \
                by_whom, reason, signed_at, key_id, signature) \
         VALUES ($1, 1, 'missing', 2, pg_catalog.decode(pg_catalog.repeat('00', 32), 'hex'), \
                 'x', 'y', $2::timestamptz, 'test-key', \
                 pg_catalog.decode(pg_catalog.repeat('00', 64), 'hex'))"
    };
    sqlx::query(sql)
        .bind(t.as_uuid())
        .bind(signed_at)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

/// What `verify` and `checkpoint` make of a tenant, run in tasks so a panic is reported too.
async fn outcome(f: &Fixture, t: TenantId) -> (String, String) {
    let (raw, keys) = (f.raw.clone(), f.keys.clone());
    let verified = tokio::spawn(async move { audit_log::verify(&raw, t, &keys, &[]).await }).await;
    let verified = match verified {
        Ok(Ok(report)) if report.result.is_ok() && !report.is_intact() => "ok-not-intact".into(),
        Ok(Ok(report)) => format!("report {:?} intact={}", report.result, report.is_intact()),
        Ok(Err(e)) => format!("error: {e}"),
        Err(e) => format!("panic: {e}"),
    };
    let (log, ckpt) = (f.log.clone(), f.checkpointer.clone());
    let signer = audit_log::CheckpointSigner::from_secret("test-key", &f.signer.secret()).unwrap();
    let signed =
        tokio::spawn(async move { log.checkpoint(&ckpt, t, &signer).await.map(|c| c.is_some()) })
            .await;
    let signed = match signed {
        Ok(Ok(true)) => "signed".into(),
        Ok(Ok(false)) => "none".into(),
        Ok(Err(e)) => format!("error: {e}"),
        Err(e) => format!("panic: {e}"),
    };
    (verified, signed)
}

/// A checkpointer role without the signing key plants a checkpoint or acknowledgement row whose
/// `signed_at` no RFC 3339 text can carry (a BC date; a year past 9999; `infinity`). It must be
/// rejected like any other junk, not stop the loading of every row (the rows are append-only,
/// so a row that blocked loading would block the tenant for ever).
#[tokio::test]
async fn a_checkpointer_without_a_key_blocks_checkpoints_with_an_unformattable_time() {
    let f = fixture(4).await;
    // Positive control: ordinary junk is listed as rejected and blocks nothing.
    let control = TenantId::new_random();
    append_n(&f, control, 2).await;
    plant(&f, control, "checkpoints", "2026-01-01 00:00:00+00").await;
    plant(&f, control, "acknowledgements", "2026-01-01 00:00:00+00").await;
    assert_eq!(
        outcome(&f, control).await,
        ("ok-not-intact".to_owned(), "signed".to_owned()),
        "control"
    );

    let mut blocked = Vec::new();
    for (table, at) in [
        ("checkpoints", "0002-01-01 00:00:00+00 BC"),
        ("acknowledgements", "0002-01-01 00:00:00+00 BC"),
        ("checkpoints", "12000-01-01 00:00:00+00"),
        ("acknowledgements", "12000-01-01 00:00:00+00"),
        ("checkpoints", "infinity"),
        ("acknowledgements", "-infinity"),
    ] {
        let t = TenantId::new_random();
        append_n(&f, t, 2).await;
        plant(&f, t, table, at).await;
        let got = outcome(&f, t).await;
        if got != ("ok-not-intact".to_owned(), "signed".to_owned()) {
            blocked.push(format!(
                "{table} signed_at {at}: verify {}; checkpoint {}",
                got.0, got.1
            ));
        }
    }
    assert!(
        blocked.is_empty(),
        "junk rows by a keyless checkpointer that block the tenant:\n{}",
        blocked.join("\n")
    );
}

/// Held: the runtime role cannot write checkpoints, acknowledgements or anchors.
#[tokio::test]
async fn the_runtime_role_cannot_plant_checkpoints_acknowledgements_or_anchors() {
    let f = fixture(2).await;
    let t = TenantId::new_random();
    append_n(&f, t, 1).await;
    let ctx = TenantContext::for_job(t, None, "review").unwrap();
    for sql in [
        "INSERT INTO audit.checkpoints (tenant_id, seq, hash, signed_at, key_id, signature) \
         VALUES ($1, 1, decode(repeat('00', 32), 'hex'), now(), 'k', decode(repeat('00', 64), 'hex'))",
        "INSERT INTO audit.acknowledgements (tenant_id, break_seq, kind, resume_seq, resume_hash, \
         by_whom, reason, signed_at, key_id, signature) VALUES ($1, 1, 'missing', 2, \
         decode(repeat('00', 32), 'hex'), 'x', 'y', now(), 'k', decode(repeat('00', 64), 'hex'))",
        "INSERT INTO audit.anchors (tenant_id, base_seq, base_hash) \
         VALUES ($1, 1, decode(repeat('00', 32), 'hex'))",
        "UPDATE audit.events SET action = 'x.y' WHERE tenant_id = $1",
        "DELETE FROM audit.events WHERE tenant_id = $1",
    ] {
        let mut tx = f.log.pool().begin(&ctx).await.unwrap();
        let err = sqlx::query(sql)
            .bind(t.as_uuid())
            .execute(&mut *tx)
            .await
            .unwrap_err();
        assert!(is_sqlstate(&err, "42501"), "{sql}: {err}");
        tx.rollback().await.unwrap();
    }
    assert!(verify(&f, t).await.is_intact());
}

/// Held: a genuine acknowledgement replayed by the checkpointer into another tenant that has
/// the same break is rejected; the break stays reported there. A replay in its own tenant is a
/// duplicate key.
#[tokio::test]
async fn a_genuine_acknowledgement_replayed_into_another_tenant_is_rejected() {
    let f = fixture(4).await;
    let (a, b) = (TenantId::new_random(), TenantId::new_random());
    for t in [a, b] {
        append_n(&f, t, 4).await;
    }
    let mut tx = begin_tamper(&f.db).await;
    for t in [a, b] {
        sqlx::query("DELETE FROM audit.events WHERE tenant_id = $1 AND seq = 2")
            .bind(t.as_uuid())
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    end_tamper(tx).await;
    let ack = f
        .log
        .acknowledge(&f.checkpointer, a, &f.signer, "ops", "lost")
        .await
        .unwrap();
    assert!(verify(&f, a).await.result.is_ok());
    let ctx = TenantContext::for_job(b, None, "review").unwrap();
    let mut tx = f.checkpointer.begin(&ctx).await.unwrap();
    sqlx::query(
        "INSERT INTO audit.acknowledgements (tenant_id, break_seq, kind, resume_seq, resume_hash, \
         by_whom, reason, signed_at, key_id, signature) \
         VALUES ($1, 2, 'missing', 3, decode($4, 'hex'), 'ops', 'lost', $2::timestamptz, \
                 'test-key', decode($3, 'hex'))",
    )
    .bind(b.as_uuid())
    .bind(&ack.signed_at)
    .bind(&ack.signature)
    .bind(&ack.resume_hash)
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let report = verify(&f, b).await;
    assert!(report.result.is_err(), "replayed ack hid the break");
    assert_eq!(report.rejected_acknowledgements.len(), 1);
    assert!(matches!(
        f.log.checkpoint(&f.checkpointer, b, &f.signer).await,
        Err(AuditError::ChainBroken(_))
    ));
}

/// Held: a chain whose middle event an owner rewrote (triggers off) is not pruned away (prune
/// fails closed), and an acknowledgement of the break keeps the chain reported not intact.
#[tokio::test]
async fn prune_refuses_a_poisoned_chain_and_an_acknowledged_one_stays_not_intact() {
    let f = fixture(4).await;
    let (t, fate) = raw_insert(&f, BASE, "user", "a.b", None).await;
    assert_eq!(fate, Fate::Intact, "control");
    let owner = f.db.pool(testkit::Role::Owner, 1).await;
    let mut tx = begin_tamper(&f.db).await;
    let done =
        sqlx::query("UPDATE audit.events SET action = 'x.y' WHERE tenant_id = $1 AND seq = 2")
            .bind(t.as_uuid())
            .execute(&mut *tx)
            .await
            .unwrap();
    assert_eq!(done.rows_affected(), 1);
    end_tamper(tx).await;
    assert!(
        verify(&f, t).await.result.is_err(),
        "the rewrite breaks the chain"
    );
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let pruned = f
        .log
        .prune(&owner, t, std::time::Duration::from_millis(1), &f.signer)
        .await;
    assert!(
        matches!(pruned, Err(AuditError::ChainBroken(_))),
        "{pruned:?}"
    );
    let ack = f
        .log
        .acknowledge(
            &f.checkpointer,
            t,
            &f.signer,
            "ops",
            "poisoned by a raw insert",
        )
        .await
        .unwrap();
    assert_eq!(
        (ack.break_seq, ack.kind.as_str(), ack.resume_seq),
        (2, "record_mismatch", 3)
    );
    let report = verify(&f, t).await;
    assert!(
        report.result.is_ok() && !report.is_intact(),
        "{:?}",
        report.result
    );
    assert!(
        f.log
            .checkpoint(&f.checkpointer, t, &f.signer)
            .await
            .unwrap()
            .is_some()
    );
    let pruned = f
        .log
        .prune(&owner, t, std::time::Duration::from_millis(1), &f.signer)
        .await
        .unwrap();
    assert!(pruned.removed >= 3, "{pruned:?}");
    let report = verify(&f, t).await;
    assert!(report.result.is_ok(), "{:?}", report.result);
    assert!(
        !report.is_intact(),
        "the acknowledged break must stay listed after pruning"
    );
    assert_eq!(report.acknowledged.len(), 1);
}

/// A raw INSERT by the runtime role that repeats a key inside metadata (so its value depends on
/// which spelling a reader takes) is refused; a record that differs from the canonical
/// serialization only in key order and whitespace is accepted and verifies (the hash covers the
/// stored bytes, and every value in it is unambiguous).
#[tokio::test]
async fn a_repeated_key_anywhere_is_refused_and_layout_alone_is_harmless() {
    let f = fixture(4).await;
    let canonical = r#"{"action":"a.b","actor":{"kind":"user"},"metadata":{"role":"user"},"occurred_at":"@TS@","outcome":{"status":"allowed"},"schema":1,"tenant":"@T@"}"#;
    let (_, fate) = raw_insert(&f, canonical, "user", "a.b", None).await;
    assert_eq!(fate, Fate::Intact, "control");
    for template in [
        canonical.replace(r#"{"role":"user"}"#, r#"{"role":"user","role":"admin"}"#),
        canonical.replace(r#"{"role":"user"}"#, r#"{"a":[{"b":{"x":1,"x":2}}]}"#),
        canonical.replace(r#"{"role":"user"}"#, r#"{"n":1e400}"#),
        canonical.replace(
            r#"{"role":"user"}"#,
            &format!("{}1{}", "[".repeat(120), "]".repeat(120)),
        ),
    ] {
        let (_, fate) = raw_insert(&f, &template, "user", "a.b", None).await;
        assert_eq!(fate, Fate::Refused, "{template}");
    }
    let layout = r#"{ "tenant": "@T@", "schema": 1, "outcome": {"status": "allowed"}, "occurred_at": "@TS@", "actor": {"kind": "user"}, "action": "a.b" }"#;
    let (_, fate) = raw_insert(&f, layout, "user", "a.b", None).await;
    assert_eq!(fate, Fate::Intact);
    let nested = canonical.replace(
        r#"{"role":"user"}"#,
        &format!("{}1{}", "[".repeat(50), "]".repeat(50)),
    );
    let (_, fate) = raw_insert(&f, &nested, "user", "a.b", None).await;
    assert_eq!(fate, Fate::Intact, "moderate nesting is accepted");
}

/// The trigger skips its key-by-key walk only for a record spelled exactly as `jsonb` prints it,
/// which can repeat no key. Every way to be near that spelling while repeating a key — the
/// repeat written in the `jsonb` layout, spelled with an escape, or hidden in an array — still
/// reaches the walk and is refused; depth and numbers are checked on both paths. Positive
/// control: the same record in the `jsonb` layout without the repeat is accepted and verifies.
#[tokio::test]
async fn the_jsonb_layout_fast_path_still_refuses_repeats_depth_and_huge_numbers() {
    let f = fixture(4).await;
    let jsonb = r#"{"actor": {"kind": "user"}, "action": "a.b", "schema": 1, "tenant": "@T@", "outcome": {"status": "allowed"}, "metadata": {"role": "user"}, "occurred_at": "@TS@"}"#;
    let (_, fate) = raw_insert(&f, jsonb, "user", "a.b", None).await;
    assert_eq!(fate, Fate::Intact, "control");
    for template in [
        jsonb.replace(
            r#"{"role": "user"}"#,
            r#"{"role": "user", "role": "admin"}"#,
        ),
        jsonb.replace(
            r#"{"role": "user"}"#,
            r#"{"role": "admin", "role": "user"}"#,
        ),
        jsonb.replace(
            r#"{"role": "user"}"#,
            r#"{"role": "user", "r\u006fle": "admin"}"#,
        ),
        jsonb.replace(r#"{"role": "user"}"#, r#"{"a": [{"x": 1, "x": 1}]}"#),
        jsonb.replace(r#"{"role": "user"}"#, r#"{"n": 1e400}"#),
        jsonb.replace(
            r#"{"role": "user"}"#,
            &format!(r#"{{"n": 1{}}}"#, "0".repeat(400)),
        ),
        jsonb.replace(
            r#"{"role": "user"}"#,
            &format!("{}1{}", "[".repeat(120), "]".repeat(120)),
        ),
        jsonb.replace(r#""action": "a.b""#, r#""action": "a.b", "action": "a.b""#),
    ] {
        let (_, fate) = raw_insert(&f, &template, "user", "a.b", None).await;
        assert_eq!(fate, Fate::Refused, "{template}");
    }
}
