//! Attacks on the chain by someone with owner or superuser rights: each must be found at the
//! exact sequence number.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use audit_log::{BreakKind, ChainBreak, chain_hash};
use common::*;
use tenant_scope::TenantId;

fn broken_at(report: &audit_log::VerifyReport) -> &ChainBreak {
    report
        .result
        .as_ref()
        .expect_err("the chain must not verify")
}

#[tokio::test]
async fn an_untampered_chain_verifies() {
    let f = fixture(2).await;
    let t = TenantId::new_random();
    let appended = append_n(&f, t, 20).await;
    assert_eq!(
        appended.iter().map(|a| a.seq).collect::<Vec<_>>(),
        (1..=20).collect::<Vec<_>>()
    );
    let report = verify(&f, t).await;
    assert!(report.is_intact(), "{:?}", report.result);
    assert_eq!((report.events, report.last_seq), (20, 20));
    // An empty chain verifies too.
    assert!(verify(&f, TenantId::new_random()).await.is_intact());
}

/// A chain written moments ago has no planner statistics, so PostgreSQL guesses it holds a
/// few rows and would sort it, a sort that spills to disk for a long chain (it halved the
/// verify rate). Verify, inclusion proofs and every whole-chain read must use primary-key
/// order instead — also on a connection that has cached the plan of a filtered query, which
/// may sort: here any spill to disk is an error, so a sort fails them.
#[tokio::test]
async fn a_fresh_chain_is_read_in_key_order_not_sorted() {
    let f = fixture(2).await;
    let t = TenantId::new_random();
    append_n(&f, t, 400).await;
    f.log
        .checkpoint(&f.checkpointer, t, &f.signer)
        .await
        .unwrap()
        .unwrap();
    f.db.as_admin(&format!(
        "ALTER DATABASE \"{}\" SET work_mem = '64kB'; \
         ALTER DATABASE \"{}\" SET temp_file_limit = 0",
        f.db.name(),
        f.db.name()
    ))
    .await;
    let pool = f.db.pool(testkit::Role::Runtime, 1).await;
    // The trap is armed: a sort of the chain by any other route fails.
    let mut tx = pool.begin().await.unwrap();
    sqlx::raw_sql(&format!("SET LOCAL app.tenant_id = '{t}'"))
        .execute(&mut *tx)
        .await
        .unwrap();
    let sorted = sqlx::query("SELECT event FROM audit.events ORDER BY event")
        .fetch_all(&mut *tx)
        .await
        .expect_err("a sort of 400 events spills past 64kB");
    assert!(sorted.to_string().contains("temp_file_limit"), "{sorted}");
    drop(tx);

    let report = audit_log::verify(&pool, t, &f.keys, &[]).await.unwrap();
    assert!(report.is_intact(), "{:?}", report.result);
    assert_eq!(report.events, 400);
    // The one connection caches the filtered statement's plans (generic after five runs)...
    for _ in 0..8 {
        let filtered = audit_log::AuditQuery::new(t).limit(5);
        audit_log::export_jsonl(&pool, &filtered, &mut Vec::new())
            .await
            .unwrap();
        assert_eq!(filtered.fetch(&pool).await.unwrap().len(), 5);
    }
    // ...and every whole-chain read still reads in key order.
    let whole = audit_log::AuditQuery::new(t);
    for _ in 0..3 {
        let (mut jsonl, mut csv) = (Vec::new(), Vec::new());
        let written = audit_log::export_jsonl(&pool, &whole, &mut jsonl).await;
        assert_eq!(written.unwrap().events, 400);
        let written = audit_log::export_csv(&pool, &whole, &mut csv).await;
        assert_eq!(written.unwrap().events, 400);
        assert_eq!(whole.fetch(&pool).await.unwrap().len(), 400);
    }
    let proof = audit_log::prove(&pool, t, 1, &f.keys).await.unwrap();
    assert_eq!(proof.records.len(), 400);
}

#[tokio::test]
async fn a_deleted_middle_row_is_found_at_its_seq() {
    let f = fixture(2).await;
    let t = TenantId::new_random();
    append_n(&f, t, 12).await;
    let mut tx = begin_tamper(&f.db).await;
    sqlx::query("DELETE FROM audit.events WHERE tenant_id = $1 AND seq = 7")
        .bind(t.as_uuid())
        .execute(&mut *tx)
        .await
        .unwrap();
    end_tamper(tx).await;
    let report = verify(&f, t).await;
    assert_eq!(broken_at(&report), &ChainBreak::new(7, BreakKind::Missing));
}

#[tokio::test]
async fn an_edited_payload_is_found_at_its_seq() {
    let f = fixture(2).await;
    let t = TenantId::new_random();
    append_n(&f, t, 10).await;
    let mut tx = begin_tamper(&f.db).await;
    let done = sqlx::query(
        "UPDATE audit.events SET event = convert_to(replace(convert_from(event, 'UTF8'), \
         '\"metadata\": {\"n\": 5}', '\"metadata\": {\"n\": 6}'), 'UTF8') \
         WHERE tenant_id = $1 AND seq = 5",
    )
    .bind(t.as_uuid())
    .execute(&mut *tx)
    .await
    .unwrap();
    assert_eq!(done.rows_affected(), 1);
    end_tamper(tx).await;
    let report = verify(&f, t).await;
    assert_eq!(
        broken_at(&report),
        &ChainBreak::new(5, BreakKind::HashMismatch)
    );
}

#[tokio::test]
async fn an_edited_column_is_found_at_its_seq() {
    // The indexed columns must agree with the hashed record: a rewritten `action` would
    // otherwise hide an event from filtered queries.
    let f = fixture(2).await;
    let t = TenantId::new_random();
    append_n(&f, t, 6).await;
    let mut tx = begin_tamper(&f.db).await;
    sqlx::query("UPDATE audit.events SET action = 'note.viewed' WHERE tenant_id = $1 AND seq = 3")
        .bind(t.as_uuid())
        .execute(&mut *tx)
        .await
        .unwrap();
    end_tamper(tx).await;
    let report = verify(&f, t).await;
    assert_eq!(
        broken_at(&report),
        &ChainBreak::new(3, BreakKind::RecordMismatch)
    );
}

#[tokio::test]
async fn two_swapped_rows_are_found_at_the_first() {
    let f = fixture(2).await;
    let t = TenantId::new_random();
    append_n(&f, t, 10).await;
    let mut tx = begin_tamper(&f.db).await;
    sqlx::query(
        "UPDATE audit.events e SET event = o.event, occurred_at = o.occurred_at, \
             request_id = o.request_id \
         FROM audit.events o \
         WHERE e.tenant_id = $1 AND o.tenant_id = $1 AND ((e.seq, o.seq) IN ((4, 9), (9, 4)))",
    )
    .bind(t.as_uuid())
    .execute(&mut *tx)
    .await
    .unwrap();
    end_tamper(tx).await;
    let report = verify(&f, t).await;
    assert_eq!(
        broken_at(&report),
        &ChainBreak::new(4, BreakKind::HashMismatch)
    );
}

#[tokio::test]
async fn a_row_copied_from_another_tenant_with_recomputed_hashes_is_found() {
    let f = fixture(2).await;
    let (a, b) = (TenantId::new_random(), TenantId::new_random());
    let appended = append_n(&f, a, 5).await;
    append_n(&f, b, 5).await;
    let mut tx = begin_tamper(&f.db).await;
    // Take B's third event and append it to A's chain as seq 6, linking and hashing it exactly
    // as the trigger would: everything a chain-only check looks at fits.
    let (foreign, _, _) = row(&mut tx, b, 3).await;
    let prev = appended[4].hash;
    let hash = chain_hash(a, 6, &prev, &foreign);
    sqlx::query(
        "INSERT INTO audit.events (tenant_id, seq, occurred_at, actor_kind, actor_id, action, \
             outcome, request_id, event, prev_hash, hash) \
         SELECT $1, 6, occurred_at, actor_kind, actor_id, action, outcome, request_id, event, $3, $4 \
         FROM audit.events WHERE tenant_id = $2 AND seq = 3",
    )
    .bind(a.as_uuid())
    .bind(b.as_uuid())
    .bind(prev.as_slice())
    .bind(hash.as_slice())
    .execute(&mut *tx)
    .await
    .unwrap();
    end_tamper(tx).await;
    let report = verify(&f, a).await;
    assert_eq!(
        broken_at(&report),
        &ChainBreak::new(6, BreakKind::ForeignTenant)
    );
    assert!(verify(&f, b).await.is_intact());
}

#[tokio::test]
async fn a_truncated_tail_is_found_against_a_checkpoint() {
    let f = fixture(2).await;
    let t = TenantId::new_random();
    append_n(&f, t, 20).await;
    f.log
        .checkpoint(&f.checkpointer, t, &f.signer)
        .await
        .unwrap()
        .unwrap();
    // Cut the last three events.
    let mut tx = begin_tamper(&f.db).await;
    sqlx::query("DELETE FROM audit.events WHERE tenant_id = $1 AND seq >= 18")
        .bind(t.as_uuid())
        .execute(&mut *tx)
        .await
        .unwrap();
    end_tamper(tx).await;
    let report = verify(&f, t).await;
    assert_eq!(
        broken_at(&report),
        &ChainBreak::new(18, BreakKind::Truncated)
    );
}

#[tokio::test]
async fn without_a_checkpoint_a_consistent_truncation_is_invisible() {
    // The documented limit: the chain alone cannot see its tail cut off.
    // This is why checkpoints exist and must be exported.
    let f = fixture(2).await;
    let t = TenantId::new_random();
    let appended = append_n(&f, t, 10).await;
    let mut tx = begin_tamper(&f.db).await;
    sqlx::query("DELETE FROM audit.events WHERE tenant_id = $1 AND seq > 8")
        .bind(t.as_uuid())
        .execute(&mut *tx)
        .await
        .unwrap();
    end_tamper(tx).await;
    assert!(verify(&f, t).await.is_intact());
    // ...but an exported checkpoint taken before the cut finds it.
    let exported = f.signer.sign(t, 10, &appended[9].hash).unwrap();
    let report = audit_log::verify(&f.raw, t, &f.keys, &[exported])
        .await
        .unwrap();
    assert_eq!(
        broken_at(&report),
        &ChainBreak::new(9, BreakKind::Truncated)
    );
}

/// Rewrites events `from..=to` of `t` with a changed payload and recomputed links and hashes:
/// a chain-only check sees nothing.
async fn rewrite_from(f: &Fixture, t: TenantId, from: i64, to: i64) {
    let mut tx = begin_tamper(&f.db).await;
    let (_, _, prev) = row(&mut tx, t, from - 1).await;
    let mut prev: [u8; 32] = prev.try_into().unwrap();
    for seq in from..=to {
        let (event, _, _) = row(&mut tx, t, seq).await;
        let forged = String::from_utf8(event)
            .unwrap()
            .replace("\"status\": \"allowed\"", "\"status\": \"denied\"");
        let hash = chain_hash(t, seq as u64, &prev, forged.as_bytes());
        sqlx::query(
            "UPDATE audit.events SET event = $3, outcome = 'denied', prev_hash = $4, hash = $5 \
             WHERE tenant_id = $1 AND seq = $2",
        )
        .bind(t.as_uuid())
        .bind(seq)
        .bind(forged.as_bytes())
        .bind(prev.as_slice())
        .bind(hash.as_slice())
        .execute(&mut *tx)
        .await
        .unwrap();
        prev = hash;
    }
    end_tamper(tx).await;
}

#[tokio::test]
async fn a_rewrite_with_recomputed_hashes_is_caught_by_the_signed_checkpoint() {
    let f = fixture(2).await;
    let t = TenantId::new_random();
    append_n(&f, t, 10).await;
    let first = f
        .log
        .checkpoint(&f.checkpointer, t, &f.signer)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.seq, 10);
    append_n(&f, t, 10).await;
    let second = f
        .log
        .checkpoint(&f.checkpointer, t, &f.signer)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.seq, 20);
    assert!(verify(&f, t).await.is_intact());

    rewrite_from(&f, t, 13, 20).await;
    let report = verify(&f, t).await;
    // Located between the two checkpoints: events 11..=20, with the break at the checkpoint.
    assert_eq!(
        broken_at(&report),
        &ChainBreak::new(20, BreakKind::CheckpointMismatch { after: 10 })
    );
}

#[tokio::test]
async fn a_rewrite_that_also_deletes_the_stored_checkpoints_is_caught_by_an_exported_one() {
    let f = fixture(2).await;
    let t = TenantId::new_random();
    append_n(&f, t, 8).await;
    let exported = f
        .log
        .checkpoint(&f.checkpointer, t, &f.signer)
        .await
        .unwrap()
        .unwrap();
    rewrite_from(&f, t, 2, 8).await;
    let mut tx = begin_tamper(&f.db).await;
    sqlx::query("DELETE FROM audit.checkpoints WHERE tenant_id = $1")
        .bind(t.as_uuid())
        .execute(&mut *tx)
        .await
        .unwrap();
    end_tamper(tx).await;
    // The database alone now looks consistent...
    assert!(verify(&f, t).await.is_intact());
    // ...the checkpoint kept elsewhere does not.
    let report = audit_log::verify(&f.raw, t, &f.keys, &[exported])
        .await
        .unwrap();
    assert_eq!(
        broken_at(&report),
        &ChainBreak::new(8, BreakKind::CheckpointMismatch { after: 0 })
    );
}

#[tokio::test]
async fn a_forged_checkpoint_signature_is_rejected() {
    let f = fixture(2).await;
    let t = TenantId::new_random();
    let appended = append_n(&f, t, 4).await;
    // The runtime role may not insert checkpoints at all; the checkpointer role may, but
    // without the trusted key it cannot make one count.
    let mallory = audit_log::CheckpointSigner::generate("test-key").unwrap();
    let forged = mallory.sign(t, 4, &appended[3].hash).unwrap();
    let ctx = tenant_scope::TenantContext::for_job(t, None, "test").unwrap();
    let mut tx = f.checkpointer.begin(&ctx).await.unwrap();
    sqlx::query(
        "INSERT INTO audit.checkpoints (tenant_id, seq, hash, signed_at, key_id, signature) \
         VALUES ($1, 4, $2, now(), $3, $4)",
    )
    .bind(t.as_uuid())
    .bind(appended[3].hash.as_slice())
    .bind(&forged.key_id)
    .bind(hex::decode(&forged.signature).unwrap())
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let report = verify(&f, t).await;
    // The chain itself is fine; the forged checkpoint is rejected, not trusted, and flagged.
    assert!(report.result.is_ok());
    assert!(!report.is_intact());
    assert_eq!(
        report
            .rejected_checkpoints
            .iter()
            .map(|c| c.seq)
            .collect::<Vec<_>>(),
        vec![4]
    );
    assert_eq!(report.checkpoints, 0);
}

#[tokio::test]
async fn a_tampered_chain_is_never_signed() {
    let f = fixture(2).await;
    let t = TenantId::new_random();
    append_n(&f, t, 4).await;
    f.log
        .checkpoint(&f.checkpointer, t, &f.signer)
        .await
        .unwrap()
        .unwrap();
    append_n(&f, t, 4).await;
    let mut tx = begin_tamper(&f.db).await;
    sqlx::query("DELETE FROM audit.events WHERE tenant_id = $1 AND seq = 6")
        .bind(t.as_uuid())
        .execute(&mut *tx)
        .await
        .unwrap();
    end_tamper(tx).await;
    // The checkpointer verifies since its last checkpoint before it signs.
    let err = f
        .log
        .checkpoint(&f.checkpointer, t, &f.signer)
        .await
        .unwrap_err();
    match err {
        audit_log::AuditError::ChainBroken(b) => {
            assert_eq!(b, ChainBreak::new(6, BreakKind::Missing));
        }
        other => panic!("{other}"),
    }
    let admin = f.db.pool(testkit::Role::Admin, 1).await;
    let stored: Vec<i64> =
        sqlx::query_scalar("SELECT seq FROM audit.checkpoints WHERE tenant_id = $1 ORDER BY seq")
            .bind(t.as_uuid())
            .fetch_all(&admin)
            .await
            .unwrap();
    assert_eq!(stored, vec![4]);
}

#[tokio::test]
async fn junk_checkpoints_do_not_hide_where_the_chain_breaks() {
    let f = fixture(2).await;
    let t = TenantId::new_random();
    append_n(&f, t, 6).await;
    let ctx = tenant_scope::TenantContext::for_job(t, None, "test").unwrap();
    let mut tx = f.checkpointer.begin(&ctx).await.unwrap();
    sqlx::query(
        "INSERT INTO audit.checkpoints (tenant_id, seq, hash, signed_at, key_id, signature) \
         VALUES ($1, 1, $2, now(), 'test-key', $3)",
    )
    .bind(t.as_uuid())
    .bind([0u8; 32].as_slice())
    .bind([0u8; 64].as_slice())
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let mut tx = begin_tamper(&f.db).await;
    sqlx::query("DELETE FROM audit.events WHERE tenant_id = $1 AND seq = 3")
        .bind(t.as_uuid())
        .execute(&mut *tx)
        .await
        .unwrap();
    end_tamper(tx).await;
    let report = verify(&f, t).await;
    assert_eq!(broken_at(&report), &ChainBreak::new(3, BreakKind::Missing));
    assert_eq!(report.rejected_checkpoints.len(), 1);
}

/// Junk planted at the position the next checkpoint takes, and at future positions, blocks
/// neither checkpointing nor pruning: rows that do not verify under a trusted key are ignored
/// (and listed as rejected). The runtime role cannot plant any.
#[tokio::test]
async fn junk_checkpoints_at_any_position_block_neither_checkpointing_nor_pruning() {
    let f = fixture(2).await;
    let t = TenantId::new_random();
    append_n(&f, t, 3).await;
    let ctx = tenant_scope::TenantContext::for_job(t, None, "test").unwrap();
    let plant = "INSERT INTO audit.checkpoints \
         (tenant_id, seq, hash, signed_at, key_id, signature, prune_cutoff, anchor) \
         VALUES ($1, $2, $3, now(), 'test-key', $4, $5, $5 IS NOT NULL)";
    // The runtime role: refused outright.
    let mut tx = f.log.pool().begin(&ctx).await.unwrap();
    let err = sqlx::query(plant)
        .bind(t.as_uuid())
        .bind(3_i64)
        .bind([1u8; 32].as_slice())
        .bind([2u8; 64].as_slice())
        .bind(None::<time::OffsetDateTime>)
        .execute(&mut *tx)
        .await
        .unwrap_err();
    assert!(is_sqlstate(&err, "42501"), "{err}");
    tx.rollback().await.unwrap();
    // A checkpointer without the key: at the next position, at future ones, as anchors too.
    let mut tx = f.checkpointer.begin(&ctx).await.unwrap();
    for (seq, anchor) in [
        (3_i64, false),
        (4, false),
        (100, false),
        (3, true),
        (100, true),
    ] {
        let cutoff = anchor.then(time::OffsetDateTime::now_utc);
        sqlx::query(plant)
            .bind(t.as_uuid())
            .bind(seq)
            .bind([1u8; 32].as_slice())
            .bind([seq as u8; 64].as_slice())
            .bind(cutoff)
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    // The positive control, despite the junk: a genuine checkpoint at 3.
    let cp = f
        .log
        .checkpoint(&f.checkpointer, t, &f.signer)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cp.seq, 3);
    assert!(f.keys.verifies(&cp));
    append_n(&f, t, 2).await;
    let again = f
        .log
        .checkpoint(&f.checkpointer, t, &f.signer)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.seq, 5);
    let report = verify(&f, t).await;
    assert!(report.result.is_ok(), "{:?}", report.result);
    assert_eq!(report.rejected_checkpoints.len(), 5);
    // Pruning past the junk works too.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let owner = f.db.pool(testkit::Role::Owner, 1).await;
    let pruned = f
        .log
        .prune(&owner, t, std::time::Duration::from_millis(100), &f.signer)
        .await
        .unwrap();
    assert_eq!(pruned.removed, 5);
    assert!(verify(&f, t).await.result.is_ok());
}

/// A chain cut below the newest checkpoint this signer made is not re-signed as if nothing
/// happened: the checkpoint job reports the truncation.
#[tokio::test]
async fn checkpointing_a_chain_truncated_below_its_checkpoint_fails() {
    let f = fixture(2).await;
    let t = TenantId::new_random();
    append_n(&f, t, 5).await;
    let cp = f
        .log
        .checkpoint(&f.checkpointer, t, &f.signer)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cp.seq, 5);
    // The positive control: with nothing new, the same checkpoint comes back.
    let same = f
        .log
        .checkpoint(&f.checkpointer, t, &f.signer)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(same, cp);
    let mut tx = begin_tamper(&f.db).await;
    sqlx::query("DELETE FROM audit.events WHERE tenant_id = $1 AND seq >= 4")
        .bind(t.as_uuid())
        .execute(&mut *tx)
        .await
        .unwrap();
    end_tamper(tx).await;
    let err = f
        .log
        .checkpoint(&f.checkpointer, t, &f.signer)
        .await
        .unwrap_err();
    match err {
        audit_log::AuditError::ChainBroken(b) => {
            assert_eq!(b, ChainBreak::new(4, BreakKind::Truncated));
        }
        other => panic!("{other}"),
    }
}

/// Pruning verifies the whole prefix it deletes, from the chain's trusted start: a checkpoint
/// signed after a tampered event does not let the tampered prefix be pruned away.
#[tokio::test]
async fn pruning_refuses_a_prefix_tampered_before_a_checkpoint() {
    let f = fixture(2).await;
    let t = TenantId::new_random();
    append_n(&f, t, 4).await;
    let mut tx = begin_tamper(&f.db).await;
    sqlx::query("UPDATE audit.events SET event = $2 WHERE tenant_id = $1 AND seq = 2")
        .bind(t.as_uuid())
        .bind(b"{}".as_slice())
        .execute(&mut *tx)
        .await
        .unwrap();
    end_tamper(tx).await;
    // A checkpoint made by whoever holds the key afterwards, vouching for the tampered head
    // (as a careless or compromised checkpointer might).
    let head: (i64, Vec<u8>) = sqlx::query_as(
        "SELECT seq, hash FROM audit.events WHERE tenant_id = $1 ORDER BY seq DESC LIMIT 1",
    )
    .bind(t.as_uuid())
    .fetch_one(&f.db.pool(testkit::Role::Admin, 1).await)
    .await
    .unwrap();
    let hash: [u8; 32] = head.1.try_into().unwrap();
    let signed = f.signer.sign(t, 4, &hash).unwrap();
    let ctx = tenant_scope::TenantContext::for_job(t, None, "test").unwrap();
    let mut tx = f.checkpointer.begin(&ctx).await.unwrap();
    sqlx::query(
        "INSERT INTO audit.checkpoints (tenant_id, seq, hash, signed_at, key_id, signature) \
         VALUES ($1, 4, $2, now(), $3, $4)",
    )
    .bind(t.as_uuid())
    .bind(hash.as_slice())
    .bind(&signed.key_id)
    .bind(hex::decode(&signed.signature).unwrap())
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let owner = f.db.pool(testkit::Role::Owner, 1).await;
    let err = f
        .log
        .prune(&owner, t, std::time::Duration::from_millis(100), &f.signer)
        .await
        .unwrap_err();
    assert!(
        matches!(err, audit_log::AuditError::ChainBroken(ref b) if b.seq == 2),
        "{err}"
    );
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM audit.events WHERE tenant_id = $1")
        .bind(t.as_uuid())
        .fetch_one(&f.db.pool(testkit::Role::Admin, 1).await)
        .await
        .unwrap();
    assert_eq!(left, 4, "nothing was pruned");
}

#[tokio::test]
async fn an_ordinary_checkpoint_cannot_serve_as_a_pruned_start() {
    // An owner moves the chain's start to a genuine (ordinary) checkpoint and deletes
    // everything before it, as if retention had pruned it.
    let f = fixture(2).await;
    let t = TenantId::new_random();
    append_n(&f, t, 6).await;
    let cp = f
        .log
        .checkpoint(&f.checkpointer, t, &f.signer)
        .await
        .unwrap()
        .unwrap();
    append_n(&f, t, 2).await;
    let mut tx = begin_tamper(&f.db).await;
    sqlx::query("INSERT INTO audit.anchors (tenant_id, base_seq, base_hash) VALUES ($1, 6, $2)")
        .bind(t.as_uuid())
        .bind(cp.hash_bytes().unwrap().as_slice())
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("DELETE FROM audit.events WHERE tenant_id = $1 AND seq <= 6")
        .bind(t.as_uuid())
        .execute(&mut *tx)
        .await
        .unwrap();
    end_tamper(tx).await;
    let report = verify(&f, t).await;
    assert_eq!(
        broken_at(&report),
        &ChainBreak::new(7, BreakKind::UnanchoredStart)
    );
}

/// A break an operator acknowledges (signed, with who and why) stays reported forever, and
/// protection continues past it: verification resumes after it, checkpoints are signed again,
/// a later break is still found, and an acknowledgement by an untrusted key counts for nothing.
#[tokio::test]
async fn an_acknowledged_break_stays_visible_and_checkpoints_continue_past_it() {
    let f = fixture(2).await;
    let t = TenantId::new_random();
    append_n(&f, t, 6).await;
    let mut tx = begin_tamper(&f.db).await;
    sqlx::query("DELETE FROM audit.events WHERE tenant_id = $1 AND seq = 3")
        .bind(t.as_uuid())
        .execute(&mut *tx)
        .await
        .unwrap();
    end_tamper(tx).await;
    let broken = ChainBreak::new(3, BreakKind::Missing);
    assert_eq!(broken_at(&verify(&f, t).await), &broken);
    assert!(matches!(
        f.log.checkpoint(&f.checkpointer, t, &f.signer).await,
        Err(audit_log::AuditError::ChainBroken(_))
    ));
    // The runtime role may not acknowledge anything.
    let err = f
        .log
        .acknowledge(f.log.pool(), t, &f.signer, "ops", "restored from backup")
        .await
        .unwrap_err();
    assert!(
        matches!(err, audit_log::AuditError::InvalidConfig(_)),
        "{err}"
    );
    // An acknowledgement by a key the verifier does not trust changes nothing.
    let mallory = audit_log::CheckpointSigner::generate("test-key").unwrap();
    let forged = f
        .log
        .acknowledge(&f.checkpointer, t, &mallory, "mallory", "nothing to see")
        .await
        .unwrap();
    assert_eq!((forged.break_seq, forged.resume_seq), (3, 4));
    let report = verify(&f, t).await;
    assert_eq!(broken_at(&report), &broken);
    assert_eq!(report.rejected_acknowledgements.len(), 1);
    // The genuine acknowledgement: the break stays listed, the rest verifies.
    let ack = f
        .log
        .acknowledge(
            &f.checkpointer,
            t,
            &f.signer,
            "ops on call",
            "event 3 lost in an incident",
        )
        .await
        .unwrap();
    assert_eq!(
        (ack.break_seq, ack.kind.as_str(), ack.resume_seq),
        (3, "missing", 4)
    );
    let report = verify(&f, t).await;
    assert!(report.result.is_ok(), "{:?}", report.result);
    assert!(!report.is_intact());
    assert_eq!(report.acknowledged.len(), 1);
    assert_eq!(report.acknowledged[0].0, broken);
    assert_eq!(report.acknowledged[0].1.by, "ops on call");
    assert_eq!(report.last_seq, 6);
    // Nothing left to acknowledge.
    assert!(matches!(
        f.log
            .acknowledge(&f.checkpointer, t, &f.signer, "ops", "again")
            .await,
        Err(audit_log::AuditError::NothingToAcknowledge)
    ));
    // Checkpoints continue past the acknowledged break.
    let cp = f
        .log
        .checkpoint(&f.checkpointer, t, &f.signer)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cp.seq, 6);
    append_n(&f, t, 2).await;
    assert_eq!(
        f.log
            .checkpoint(&f.checkpointer, t, &f.signer)
            .await
            .unwrap()
            .unwrap()
            .seq,
        8
    );
    // A later break is still found.
    let mut tx = begin_tamper(&f.db).await;
    sqlx::query("UPDATE audit.events SET action = 'x.y' WHERE tenant_id = $1 AND seq = 7")
        .bind(t.as_uuid())
        .execute(&mut *tx)
        .await
        .unwrap();
    end_tamper(tx).await;
    let report = verify(&f, t).await;
    assert_eq!(
        broken_at(&report),
        &ChainBreak::new(7, BreakKind::RecordMismatch)
    );
    // Acknowledgements cannot be removed, not even by the owner.
    let owner = f.db.pool(testkit::Role::Owner, 1).await;
    let mut tx = owner.begin().await.unwrap();
    sqlx::raw_sql(&format!("SET LOCAL app.tenant_id = '{t}'"))
        .execute(&mut *tx)
        .await
        .unwrap();
    let err = sqlx::query("DELETE FROM audit.acknowledgements")
        .execute(&mut *tx)
        .await
        .unwrap_err();
    assert!(is_sqlstate(&err, "AL001"), "{err}");
}
