//! Appending: concurrency, atomicity with the action, the runtime role's privileges, settings
//! that must not change the hash, retention.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use audit_log::{AuditActor, AuditEvent, Outcome, actions};
use common::*;
use tenant_scope::{TenantContext, TenantId};
use testkit::Role;

/// The tenant's chained sequence numbers, once everything queued is chained.
async fn seqs(f: &Fixture, t: TenantId) -> Vec<i64> {
    sequence_all(f).await;
    let admin = f.db.pool(Role::Admin, 1).await;
    sqlx::query_scalar("SELECT seq FROM audit.events WHERE tenant_id = $1 ORDER BY seq")
        .bind(t.as_uuid())
        .fetch_all(&admin)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_two_concurrent_writers_leave_one_contiguous_chain_while_other_tenants_proceed() {
    let f = fixture(40).await;
    // The sequencer chains while the writers write.
    let running = f.sequencer.clone().spawn();
    let busy = TenantId::new_random();
    let others: Vec<TenantId> = (0..4).map(|_| TenantId::new_random()).collect();
    let mut tasks = Vec::new();
    for w in 0..32u64 {
        let log = f.log.clone();
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..8 {
                seqs.push(log.record(event(busy, w * 100 + i)).await.unwrap());
            }
            seqs
        }));
    }
    let mut other_tasks = Vec::new();
    for &t in &others {
        let log = f.log.clone();
        other_tasks.push(tokio::spawn(async move {
            for i in 0..16 {
                log.record(event(t, i)).await.unwrap();
            }
        }));
    }
    let mut acknowledged = BTreeSet::new();
    let mut queued = Vec::new();
    for task in tasks {
        for q in task.await.unwrap() {
            assert!(
                acknowledged.insert(q.id),
                "queue id {} handed out twice",
                q.id
            );
            queued.push(q);
        }
    }
    for task in other_tasks {
        task.await.unwrap();
    }
    running.stop().await.unwrap();
    let chained: BTreeSet<u64> = chained(&f, &queued).await.iter().map(|c| c.seq).collect();
    assert_eq!(chained, (1..=256).collect::<BTreeSet<u64>>());
    assert_eq!(seqs(&f, busy).await, (1..=256).collect::<Vec<i64>>());
    assert!(verify(&f, busy).await.is_intact());
    for &t in &others {
        assert_eq!(seqs(&f, t).await, (1..=16).collect::<Vec<i64>>());
        assert!(verify(&f, t).await.is_intact());
    }
}

#[tokio::test]
async fn a_rolled_back_append_leaves_no_gap() {
    let f = fixture(2).await;
    let t = TenantId::new_random();
    append_n(&f, t, 2).await;
    let ctx = TenantContext::for_job(t, None, "test").unwrap();
    let mut tx = f.log.pool().begin(&ctx).await.unwrap();
    f.log.append(&mut tx, event(t, 3)).await.unwrap();
    tx.rollback().await.unwrap();
    let next = f.log.record(event(t, 4)).await.unwrap();
    assert_eq!(chained(&f, &[next]).await[0].seq, 3);
    assert_eq!(seqs(&f, t).await, vec![1, 2, 3]);
    assert!(verify(&f, t).await.is_intact());
}

#[tokio::test]
async fn a_failed_audit_write_rolls_the_action_back() {
    let f = fixture(2).await;
    let (t, other) = (TenantId::new_random(), TenantId::new_random());
    let ctx = TenantContext::for_job(t, None, "test").unwrap();
    let mut tx = f.log.pool().begin(&ctx).await.unwrap();
    sqlx::query("INSERT INTO notes (tenant_id, body) VALUES ($1, 'deleted everything')")
        .bind(t.as_uuid())
        .execute(&mut *tx)
        .await
        .unwrap();
    // The audit write fails (here: an event for a tenant the transaction is not bound to, which
    // row-level security refuses) ...
    let err = f.log.append(&mut tx, event(other, 1)).await.unwrap_err();
    assert!(matches!(err, audit_log::AuditError::Database(_)), "{err}");
    // ... and the transaction cannot commit the action without it.
    assert!(tx.commit().await.is_err());
    let admin = f.db.pool(Role::Admin, 1).await;
    let notes: i64 = sqlx::query_scalar("SELECT count(*) FROM notes")
        .fetch_one(&admin)
        .await
        .unwrap();
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM audit.events")
        .fetch_one(&admin)
        .await
        .unwrap();
    assert_eq!((notes, events), (0, 0));
}

#[tokio::test]
async fn the_action_and_its_record_commit_together() {
    let f = fixture(2).await;
    let t = TenantId::new_random();
    let ctx = TenantContext::for_job(t, None, "test").unwrap();
    let mut tx = f.log.pool().begin(&ctx).await.unwrap();
    sqlx::query("INSERT INTO notes (tenant_id, body) VALUES ($1, 'x')")
        .bind(t.as_uuid())
        .execute(&mut *tx)
        .await
        .unwrap();
    f.log.append(&mut tx, event(t, 1)).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(seqs(&f, t).await, vec![1]);
}

#[tokio::test]
async fn the_runtime_role_cannot_update_delete_truncate_or_forge_chain_columns() {
    let f = fixture(2).await;
    let t = TenantId::new_random();
    append_n(&f, t, 3).await;
    let ctx = TenantContext::for_job(t, None, "test").unwrap();
    for sql in [
        "UPDATE audit.events SET action = 'x.y'",
        "DELETE FROM audit.events",
        "TRUNCATE audit.events",
        "UPDATE audit.anchors SET base_seq = 1",
        "DELETE FROM audit.anchors",
        "UPDATE audit.checkpoints SET seq = 1",
        "DELETE FROM audit.checkpoints",
        "INSERT INTO audit.anchors (tenant_id, base_seq, base_hash) \
             VALUES (app.current_tenant_id(), 2, '\\x00')",
        "INSERT INTO audit.events (tenant_id, seq, occurred_at, actor_kind, action, outcome, \
             event, prev_hash, hash) VALUES (app.current_tenant_id(), 99, now(), 'user', 'a.b', \
             'allowed', '\\x7b7d', '\\x00', '\\x00')",
    ] {
        let mut tx = f.log.pool().begin(&ctx).await.unwrap();
        let err = sqlx::query(sql).execute(&mut *tx).await.unwrap_err();
        assert!(is_sqlstate(&err, "42501"), "{sql}: {err}");
        tx.rollback().await.unwrap();
    }
    assert_eq!(seqs(&f, t).await, vec![1, 2, 3]);
    assert!(verify(&f, t).await.is_intact());
}

#[tokio::test]
async fn the_refusal_triggers_fire_for_the_owner_and_under_replica_mode() {
    let f = fixture(2).await;
    let t = TenantId::new_random();
    append_n(&f, t, 3).await;
    f.log
        .checkpoint(&f.checkpointer, t, &f.signer)
        .await
        .unwrap()
        .unwrap();
    let admin = f.db.pool(Role::Admin, 1).await;
    for sql in [
        "UPDATE audit.events SET action = 'x.y'",
        "DELETE FROM audit.events",
        "TRUNCATE audit.events",
        "UPDATE audit.checkpoints SET seq = 1",
        "TRUNCATE audit.checkpoints",
        "TRUNCATE audit.anchors",
    ] {
        for replica in [false, true] {
            let mut tx = admin.begin().await.unwrap();
            if replica {
                sqlx::query("SET LOCAL session_replication_role = replica")
                    .execute(&mut *tx)
                    .await
                    .unwrap();
            }
            // Bound to the tenant so row-level security (forced, even for the owner) shows the rows.
            sqlx::raw_sql(&format!("SET LOCAL app.tenant_id = '{t}'"))
                .execute(&mut *tx)
                .await
                .unwrap();
            let err = sqlx::query(sql).execute(&mut *tx).await.unwrap_err();
            assert!(
                is_sqlstate(&err, "AL001"),
                "{sql} (replica: {replica}): {err}"
            );
            tx.rollback().await.unwrap();
        }
    }
    // The owner role too.
    let owner = f.db.pool(Role::Owner, 1).await;
    let mut tx = owner.begin().await.unwrap();
    sqlx::raw_sql(&format!("SET LOCAL app.tenant_id = '{t}'"))
        .execute(&mut *tx)
        .await
        .unwrap();
    let err = sqlx::query("DELETE FROM audit.events")
        .execute(&mut *tx)
        .await
        .unwrap_err();
    assert!(is_sqlstate(&err, "AL001"), "{err}");
    tx.rollback().await.unwrap();

    // Under replica mode the guard still refuses a row that does not come from the
    // sequencer: a forged seq and hash supplied by a superuser never enter the chain.
    let mut tx = admin.begin().await.unwrap();
    sqlx::raw_sql(&format!(
        "SET LOCAL session_replication_role = replica; SET LOCAL app.tenant_id = '{t}'; \
         SET LOCAL app.commit_binding = '{t}:'"
    ))
    .execute(&mut *tx)
    .await
    .unwrap();
    let err = sqlx::query(&format!(
        "INSERT INTO audit.events (tenant_id, seq, occurred_at, actor_kind, action, outcome, \
             event, prev_hash, hash) \
         SELECT $1, 999, ts, 'user', 'a.b', 'allowed', {MATCHING_RECORD}, \
             '\\x0000000000000000000000000000000000000000000000000000000000000000', \
             '\\x0000000000000000000000000000000000000000000000000000000000000000' \
         FROM (SELECT now() AS ts) s",
    ))
    .bind(t.as_uuid())
    .execute(&mut *tx)
    .await
    .unwrap_err();
    assert!(is_sqlstate(&err, "AL001"), "{err}");
    tx.rollback().await.unwrap();
    assert_eq!(seqs(&f, t).await, vec![1, 2, 3]);
}

/// An SQL expression for a record that matches the columns `tenant_id = $1`, `occurred_at = ts`,
/// actor kind `user`, action `a.b`, outcome `allowed` (not in canonical form: the verifier
/// would still flag it; the insert trigger compares the fields).
const MATCHING_RECORD: &str = "pg_catalog.convert_to(pg_catalog.jsonb_build_object('schema', 1, \
     'tenant', $1::text, 'occurred_at', \
     pg_catalog.to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), \
     'action', 'a.b', 'actor', pg_catalog.jsonb_build_object('kind', 'user'), \
     'outcome', pg_catalog.jsonb_build_object('status', 'allowed'))::text, 'UTF8')";

/// A one-connection runtime pool whose sessions run `settings` first.
async fn pool_with(f: &Fixture, settings: &'static str) -> sqlx::PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .after_connect(move |conn, _| {
            Box::pin(async move {
                for statement in settings.split(';') {
                    sqlx::Executor::execute(&mut *conn, statement).await?;
                }
                Ok(())
            })
        })
        .connect_with(f.db.options(Role::Runtime))
        .await
        .unwrap()
}

#[tokio::test]
async fn the_hash_does_not_depend_on_time_zone_or_date_style() {
    let f = fixture(2).await;
    let t = TenantId::new_random();
    // Write with one session's settings, verify with others'.
    let writer_pool = pool_with(
        &f,
        "SET TimeZone = 'Asia/Kathmandu'; SET DateStyle = 'SQL, DMY'",
    )
    .await;
    let writer = audit_log::AuditLog::new(
        rls_guard::TenantPool::new(writer_pool).await.unwrap(),
        scrubber(),
    );
    for i in 0..5 {
        writer.record(event(t, i)).await.unwrap();
    }
    let reader = pool_with(
        &f,
        "SET TimeZone = 'America/St_Johns'; SET DateStyle = 'German, YMD'",
    )
    .await;
    let report = audit_log::verify(&reader, t, &f.keys, &[]).await.unwrap();
    assert!(report.is_intact(), "{:?}", report.result);
    assert!(verify(&f, t).await.is_intact());
}

#[tokio::test]
async fn pii_is_scrubbed_before_it_is_stored_and_client_text_is_encoded() {
    let f = fixture(2).await;
    let t = TenantId::new_random();
    let e = AuditEvent::new(
        t,
        AuditActor::anonymous(),
        actions::AUTHN_LOGIN_FAILED,
        Outcome::denied("bad_code"),
    )
    .with_user_agent("evil\r\nINFO admin signed in\u{1b}[2J\u{202e}")
    .with_metadata(serde_json::json!({
        "email": "alice@example.com",
        "password": "hunter2-hunter2",
        "note": "card 4111 1111 1111 1111 on file",
        "hidden": "4111\u{200b}1111\u{200b}1111\u{200b}1111 and \u{ff41}lice\u{ff20}example.com",
    }))
    .unwrap();
    f.log.record(e).await.unwrap();
    sequence_all(&f).await;
    let admin = f.db.pool(Role::Admin, 1).await;
    let stored: Vec<u8> = sqlx::query_scalar("SELECT event FROM audit.events WHERE tenant_id = $1")
        .bind(t.as_uuid())
        .fetch_one(&admin)
        .await
        .unwrap();
    let text = String::from_utf8(stored).unwrap();
    for secret in [
        "alice@example.com",
        "hunter2",
        "4111 1111 1111 1111",
        "4111111111111111",
    ] {
        assert!(!text.contains(secret), "{secret} stored: {text}");
    }
    for raw in ['\r', '\n', '\u{1b}', '\u{202e}'] {
        assert!(!text.contains(raw), "{raw:?} stored raw: {text}");
    }
    assert!(
        text.contains("\\\\u{000D}\\\\u{000A}INFO admin signed in"),
        "{text}"
    );
    assert!(verify(&f, t).await.is_intact());
}

#[tokio::test]
async fn retention_prunes_old_events_and_the_chain_still_verifies() {
    let f = fixture(2).await;
    let t = TenantId::new_random();
    append_n(&f, t, 5).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    append_n(&f, t, 3).await;
    let owner = f.db.pool(Role::Owner, 1).await;
    let report = f
        .log
        .prune(&owner, t, Duration::from_millis(200), &f.signer)
        .await
        .unwrap();
    assert_eq!((report.removed, report.base_seq), (5, 5));
    assert_eq!(report.anchor.as_ref().unwrap().seq, 5);
    assert_eq!(seqs(&f, t).await, vec![6, 7, 8, 9]); // 9: the audit.pruned event
    let verified = verify(&f, t).await;
    assert!(verified.is_intact(), "{:?}", verified.result);
    assert_eq!(
        (verified.base_seq, verified.last_seq, verified.events),
        (5, 9, 4)
    );
    // Pruning again with nothing old enough changes nothing.
    let again = f
        .log
        .prune(&owner, t, Duration::from_secs(3600), &f.signer)
        .await
        .unwrap();
    assert_eq!(again.removed, 0);

    // Moving the start without a signed anchor is caught.
    let mut tx = begin_tamper(&f.db).await;
    sqlx::query("DELETE FROM audit.events WHERE tenant_id = $1 AND seq <= 6")
        .bind(t.as_uuid())
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE audit.anchors SET base_seq = 6, \
             base_hash = (SELECT prev_hash FROM audit.events WHERE tenant_id = $1 AND seq = 7) \
         WHERE tenant_id = $1",
    )
    .bind(t.as_uuid())
    .execute(&mut *tx)
    .await
    .unwrap();
    end_tamper(tx).await;
    let report = verify(&f, t).await;
    assert_eq!(
        report.result.unwrap_err(),
        audit_log::ChainBreak::new(7, audit_log::BreakKind::UnanchoredStart)
    );
}

#[tokio::test]
async fn the_runtime_role_cannot_prune() {
    let f = fixture(2).await;
    let t = TenantId::new_random();
    append_n(&f, t, 2).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let err = f
        .log
        .prune(&f.raw, t, Duration::ZERO, &f.signer)
        .await
        .unwrap_err();
    assert!(matches!(err, audit_log::AuditError::Database(_)), "{err}");
    assert_eq!(seqs(&f, t).await, vec![1, 2]);
}

#[tokio::test]
async fn a_standalone_record_leaves_no_binding_on_the_pooled_connection() {
    let f = fixture(1).await;
    let t = TenantId::new_random();
    f.log.record(event(t, 1)).await.unwrap();
    // The same (only) connection, used without any binding: it must have forgotten the tenant.
    let (tenant, binding): (Option<String>, Option<String>) = sqlx::query_as(
        "SELECT current_setting('app.tenant_id', true), current_setting('app.commit_binding', true)",
    )
    .fetch_one(f.log.pool().pool())
    .await
    .unwrap();
    assert!(tenant.unwrap_or_default().is_empty());
    assert!(binding.unwrap_or_default().is_empty());
    let visible: i64 = sqlx::query_scalar("SELECT count(*) FROM audit.events")
        .fetch_one(f.log.pool().pool())
        .await
        .unwrap();
    assert_eq!(visible, 0);
}

#[tokio::test]
async fn an_event_time_off_the_database_clock_is_refused() {
    let f = fixture(2).await;
    let t = TenantId::new_random();
    let ctx = TenantContext::for_job(t, None, "test").unwrap();
    for offset in ["- interval '1 day'", "+ interval '1 hour'"] {
        let mut tx = f.log.pool().begin(&ctx).await.unwrap();
        let err = sqlx::query(&format!(
            "INSERT INTO audit.pending (tenant_id, occurred_at, actor_kind, action, outcome, event) \
             VALUES ($1, now() {offset}, 'user', 'a.b', 'allowed', '\\x7b7d')"
        ))
        .bind(t.as_uuid())
        .execute(&mut *tx)
        .await
        .unwrap_err();
        assert!(is_sqlstate(&err, "AL002"), "{err}");
        tx.rollback().await.unwrap();
    }
    assert!(seqs(&f, t).await.is_empty());
}

#[tokio::test]
async fn retention_refuses_to_prune_a_tampered_chain_and_deletes_nothing() {
    let f = fixture(2).await;
    let t = TenantId::new_random();
    append_n(&f, t, 5).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    append_n(&f, t, 3).await;
    // Backdate the newest event (what a wrong clock or an attacker would do): pruning "through
    // the newest old-looking event" would take everything.
    let mut tx = begin_tamper(&f.db).await;
    sqlx::query(
        "UPDATE audit.events SET occurred_at = '1970-01-01T00:00:00Z' WHERE tenant_id = $1 AND seq = 8",
    )
    .bind(t.as_uuid())
    .execute(&mut *tx)
    .await
    .unwrap();
    end_tamper(tx).await;
    let owner = f.db.pool(Role::Owner, 1).await;
    let err = f
        .log
        .prune(&owner, t, Duration::from_millis(150), &f.signer)
        .await
        .unwrap_err();
    match err {
        audit_log::AuditError::ChainBroken(b) => {
            assert_eq!((b.seq, b.kind), (8, audit_log::BreakKind::RecordMismatch));
        }
        other => panic!("{other}"),
    }
    assert_eq!(seqs(&f, t).await, (1..=8).collect::<Vec<i64>>());
}

#[tokio::test]
async fn retention_prunes_only_the_all_old_prefix() {
    let f = fixture(2).await;
    let t = TenantId::new_random();
    append_n(&f, t, 3).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    append_n(&f, t, 2).await;
    let owner = f.db.pool(Role::Owner, 1).await;
    let report = f
        .log
        .prune(&owner, t, Duration::from_millis(200), &f.signer)
        .await
        .unwrap();
    assert_eq!((report.removed, report.base_seq), (3, 3));
    assert!(report.anchor.unwrap().is_prune_anchor());
    assert_eq!(seqs(&f, t).await, vec![4, 5, 6]);
    assert!(verify(&f, t).await.is_intact());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_inside_callers_transactions_never_fork() {
    let f = fixture(20).await;
    let t = TenantId::new_random();
    let mut tasks = Vec::new();
    for w in 0..16u64 {
        let log = f.log.clone();
        tasks.push(tokio::spawn(async move {
            let ctx = TenantContext::for_job(t, None, "test").unwrap();
            for i in 0..6 {
                let mut tx = log.pool().begin(&ctx).await.unwrap();
                sqlx::query("INSERT INTO notes (tenant_id, body) VALUES ($1, 'x')")
                    .bind(t.as_uuid())
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                log.append(&mut tx, event(t, w * 10 + i)).await.unwrap();
                if i % 3 == 2 {
                    tx.rollback().await.unwrap(); // some actions are abandoned
                } else {
                    tx.commit().await.unwrap();
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(seqs(&f, t).await, (1..=64).collect::<Vec<i64>>());
    assert!(verify(&f, t).await.is_intact());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn callers_that_give_up_strand_no_queued_event() {
    let f = fixture(8).await;
    let t = TenantId::new_random();
    let mut kept = Vec::new();
    let mut abandoned = Vec::new();
    for i in 0..40u64 {
        let log = f.log.clone();
        let task = tokio::spawn(async move { log.record(event(t, i)).await });
        if i % 4 == 0 {
            abandoned.push(task);
        } else {
            kept.push(task);
        }
    }
    // Give up on a quarter of the callers while their groups are queued or in flight.
    for task in &abandoned {
        task.abort();
    }
    for task in kept {
        task.await.unwrap().unwrap();
    }
    // The tenant's queue was not left behind: the next event is written promptly.
    let next = tokio::time::timeout(Duration::from_secs(10), f.log.record(event(t, 99)))
        .await
        .expect("a queued event was stranded")
        .unwrap();
    let next = chained(&f, &[next]).await[0];
    let stored = seqs(&f, t).await;
    // Every event that was written is contiguous; abandoned ones may or may not have been.
    assert_eq!(stored, (1..=stored.len() as i64).collect::<Vec<i64>>());
    assert!(stored.contains(&(next.seq as i64)));
    assert!(stored.len() >= 31, "{}", stored.len());
    assert!(verify(&f, t).await.is_intact());
}

/// One raw INSERT cannot poison a chain: the insert trigger compares the stored record with the
/// row's columns. The positive control: a record that matches its columns is accepted.
#[tokio::test]
async fn a_raw_insert_whose_record_disagrees_with_its_columns_is_refused() {
    let f = fixture(2).await;
    let t = TenantId::new_random();
    let other = TenantId::new_random();
    let ctx = TenantContext::for_job(t, None, "test").unwrap();
    let insert = |record: &str, action: &str| {
        format!(
            "INSERT INTO audit.pending (tenant_id, occurred_at, actor_kind, action, outcome, event) \
             SELECT $1, ts, 'user', '{action}', 'allowed', {record} \
             FROM (SELECT now() AS ts) s"
        )
    };
    let foreign = MATCHING_RECORD.replace("$1::text", &format!("'{other}'"));
    for (record, action, why) in [
        (
            MATCHING_RECORD.to_owned(),
            "c.d",
            "another action than the record's",
        ),
        (foreign, "a.b", "another tenant's record"),
        ("'\\x7b7d'::bytea".to_owned(), "a.b", "an empty record"),
        ("'\\x6e6f74206a736f6e'::bytea".to_owned(), "a.b", "not JSON"),
    ] {
        let mut tx = f.log.pool().begin(&ctx).await.unwrap();
        let err = sqlx::query(&insert(&record, action))
            .bind(t.as_uuid())
            .execute(&mut *tx)
            .await
            .unwrap_err();
        assert!(
            is_sqlstate(&err, "AL003") || is_sqlstate(&err, "22P02"),
            "{why}: {err}"
        );
        tx.rollback().await.unwrap();
    }
    let mut tx = f.log.pool().begin(&ctx).await.unwrap();
    sqlx::query(&insert(MATCHING_RECORD, "a.b"))
        .bind(t.as_uuid())
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
}

/// Every record this library writes is already in `jsonb`'s text form — the database's cheap
/// proof that it repeats no key — whatever its metadata holds: floats of every magnitude,
/// escapes, non-ASCII text, keys of mixed lengths, empty and nested containers.
#[tokio::test]
async fn the_library_writes_every_record_exactly_as_jsonb_prints_it() {
    let f = fixture(2).await;
    let t = TenantId::new_random();
    let metadata = [
        serde_json::json!({"n": 1, "x": -0.0, "tiny": 1e-7, "huge": 1.5e21, "third": 1.0 / 3.0}),
        serde_json::json!({"text": "line\nbreak \"quoted\" \\ é ✓ \u{1}", "zz": [], "a": {}}),
        serde_json::json!({"deep": {"b": [1, {"cc": 2.5, "c": [true, null]}], "a": -12}}),
        serde_json::json!({"same": 1, "sama": 2, "s": 3, "longer_key": 4, "k": 100.0}),
        serde_json::json!({"nul": "a\u{0}b", "del": "\u{7f}", "bom": "\u{feff}x"}),
    ];
    for (i, m) in metadata.into_iter().enumerate() {
        let e = AuditEvent::new(
            t,
            AuditActor::anonymous(),
            actions::AUTHZ_DENIED,
            Outcome::Allowed,
        )
        .with_request_id(&format!("req-{i}"))
        .with_metadata(m)
        .unwrap();
        f.log.record(e).await.unwrap();
    }
    sequence_all(&f).await;
    let admin = f.db.pool(Role::Admin, 1).await;
    let rows: Vec<(i64, String, String)> = sqlx::query_as(
        "SELECT seq, convert_from(event, 'UTF8'), convert_from(event, 'UTF8')::jsonb::text \
         FROM audit.events WHERE tenant_id = $1 ORDER BY seq",
    )
    .bind(t.as_uuid())
    .fetch_all(&admin)
    .await
    .unwrap();
    assert_eq!(rows.len(), 5);
    for (seq, written, printed) in rows {
        assert_eq!(written, printed, "event {seq}");
    }
    assert!(verify(&f, t).await.is_intact());
}

/// The queue refuses records over `MAX_RECORD_BYTES` (`trigger_attacks.rs`): every record the
/// library builds must stay under it, so no legitimate event is ever refused for its size. The
/// largest of every bounded field, each spelled with a character JSON escapes (doubling it), is
/// kept whole; metadata within its compact limit whose canonical spelling would not fit
/// (`1e300` is 301 digits there) is replaced by the marker, as metadata over the compact limit
/// is.
#[tokio::test]
async fn the_largest_records_the_library_builds_fit_the_queues_limit() {
    use audit_log::{MAX_IDENTIFIER_BYTES, MAX_RECORD_BYTES, MAX_TARGETS, MAX_USER_AGENT_BYTES};
    let f = fixture(2).await;
    let t = TenantId::new_random();
    let quotes = |n: usize| "\"".repeat(n);
    let widest = |metadata: serde_json::Value| {
        let mut e = AuditEvent::new(
            t,
            AuditActor::anonymous(),
            actions::AUTHZ_DENIED,
            Outcome::denied(&quotes(MAX_IDENTIFIER_BYTES)),
        )
        .with_request_id(&quotes(MAX_IDENTIFIER_BYTES))
        .with_user_agent(&quotes(MAX_USER_AGENT_BYTES))
        .with_metadata(metadata)
        .unwrap();
        for _ in 0..MAX_TARGETS {
            e = e
                .with_target(audit_log::Target::new(
                    &quotes(MAX_IDENTIFIER_BYTES),
                    &quotes(MAX_IDENTIFIER_BYTES),
                ))
                .unwrap();
        }
        e
    };
    // Metadata just under its compact limit, of escaped characters: kept.
    let kept = serde_json::json!({ "q": quotes(audit_log::MAX_METADATA_BYTES / 2 - 16) });
    // Numbers the canonical record spells out in full: about 6 bytes each compact, 301 there.
    let spelled_out = serde_json::json!({ "n": vec![1e300_f64; 1_000] });
    // Over the compact limit.
    let compact_too_large = serde_json::json!({ "s": "x".repeat(audit_log::MAX_METADATA_BYTES) });
    for metadata in [kept, spelled_out, compact_too_large] {
        f.log.record(widest(metadata)).await.unwrap();
    }
    sequence_all(&f).await;
    let admin = f.db.pool(Role::Admin, 1).await;
    let rows: Vec<(i32, Option<String>)> = sqlx::query_as(
        "SELECT octet_length(event), convert_from(event, 'UTF8')::jsonb \
                #>> '{metadata,metadata_dropped}' \
         FROM audit.events WHERE tenant_id = $1 ORDER BY seq",
    )
    .bind(t.as_uuid())
    .fetch_all(&admin)
    .await
    .unwrap();
    let dropped: Vec<Option<&str>> = rows.iter().map(|(_, d)| d.as_deref()).collect();
    assert_eq!(dropped, [None, Some("record_too_large"), Some("too_large")]);
    for (len, _) in &rows {
        assert!(
            usize::try_from(*len).unwrap() <= MAX_RECORD_BYTES,
            "{len} bytes"
        );
    }
    // The fields were at their widest, escaped: about 26 KiB (metadata of separators, such as
    // `[0,0,…]`, would reach about 31 KiB).
    assert!(usize::try_from(rows[0].0).unwrap() > 24 * 1024, "{rows:?}");
    assert!(verify(&f, t).await.is_intact());
}
