//! Faults around the sequencer: an app that stops after its commit, a sequencer whose backend is
//! terminated mid-batch or whose transaction is rolled back, two sequencers at once, a lost
//! connection. Every committed event is chained exactly once, and every chain verifies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use audit_log::Sequencer;
use common::*;
use sqlx::PgPool;
use tenant_scope::TenantId;
use testkit::Role;

/// Every queue id acknowledged to a writer appears in the chain exactly once, nothing is left
/// queued, and every tenant's chain is contiguous and verifies.
async fn all_chained_once(f: &Fixture, acknowledged: &BTreeSet<u64>, tenants: &[TenantId]) {
    let admin = f.db.pool(Role::Admin, 1).await;
    let ids: Vec<i64> = sqlx::query_scalar("SELECT queue_id FROM audit.events ORDER BY queue_id")
        .fetch_all(&admin)
        .await
        .unwrap();
    let unique: BTreeSet<u64> = ids.iter().map(|&i| i as u64).collect();
    assert_eq!(unique.len(), ids.len(), "an event was chained twice");
    assert_eq!(
        &unique, acknowledged,
        "chained events differ from acknowledged ones"
    );
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM audit.pending")
        .fetch_one(&admin)
        .await
        .unwrap();
    assert_eq!(left, 0);
    for &t in tenants {
        let report = verify(f, t).await;
        assert!(report.is_intact(), "{t}: {:?}", report.result);
        assert_eq!(report.pending, 0);
    }
}

async fn record_many(f: &Fixture, tenants: &[TenantId], per_tenant: u64) -> BTreeSet<u64> {
    let mut tasks = Vec::new();
    for &t in tenants {
        let log = f.log.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..per_tenant {
                ids.push(log.record(event(t, i)).await.unwrap().id);
            }
            ids
        }));
    }
    let mut all = BTreeSet::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_committed_while_no_sequencer_runs_are_chained_later_and_reported_meanwhile() {
    let f = fixture(8).await;
    let tenants: Vec<TenantId> = (0..3).map(|_| TenantId::new_random()).collect();
    // An "app" of its own, which stops right after its commits: its pool is closed and it is
    // gone; nothing was sequenced.
    let app_pool = f.db.pool(Role::Runtime, 8).await;
    let app = audit_log::AuditLog::new(
        rls_guard::TenantPool::new(app_pool.clone()).await.unwrap(),
        scrubber(),
    );
    let mut acknowledged = BTreeSet::new();
    for &t in &tenants {
        for i in 0..20 {
            acknowledged.insert(app.record(event(t, i)).await.unwrap().id);
        }
    }
    app_pool.close().await;
    drop(app);
    let admin = f.db.pool(Role::Admin, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // `verify` (through a fresh pool) reports what waits and for how long.
    let reader = f.db.pool(Role::Runtime, 1).await;
    let report = audit_log::verify(&reader, tenants[0], &f.keys, &[])
        .await
        .unwrap();
    assert_eq!((report.last_seq, report.pending), (0, 20));
    let age = report.pending_age(time::OffsetDateTime::now_utc());
    assert!(age >= Duration::from_millis(250), "{age:?}");
    drop(admin);
    // A sequencer started later chains them all.
    assert_eq!(sequence_all(&f).await, 60);
    all_chained_once(&f, &acknowledged, &tenants).await;
}

/// The backend running `audit.sequence` is terminated at various points of a large batch (a
/// crash of the sequencer host looks the same to the database): the batch is rolled back
/// whole, and the next sequencer chains every event exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sequencer_terminated_mid_batch_loses_and_duplicates_nothing() {
    let f = fixture(8).await;
    let tenants: Vec<TenantId> = (0..8).map(|_| TenantId::new_random()).collect();
    let admin = f.db.pool(Role::Admin, 1).await;
    let mut acknowledged = BTreeSet::new();
    let mut interrupted = 0;
    for delay_ms in [0u64, 5, 20, 60, 150] {
        acknowledged.extend(record_many(&f, &tenants, 250).await);
        let pool = sequencer_pool(&f.db).await;
        let mut conn = pool.acquire().await.unwrap().detach();
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        let call = tokio::spawn(async move {
            sqlx::query_scalar::<_, i32>("SELECT audit.sequence(10000)")
                .fetch_one(&mut conn)
                .await
        });
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        // Terminated while it runs the function (active), in the same statement as the check.
        let active: bool = sqlx::query_scalar(
            "SELECT coalesce(bool_or(pg_terminate_backend(pid)), false) FROM pg_stat_activity \
             WHERE pid = $1 AND state = 'active' AND query LIKE '%audit.sequence%'",
        )
        .bind(pid)
        .fetch_one(&admin)
        .await
        .unwrap();
        if active {
            assert!(call.await.unwrap().is_err(), "terminated, yet it returned");
            interrupted += 1;
        } else {
            let _ = call.await.unwrap();
        }
        // The queue is still consistent with the chain after each attempt.
        let (chained, queued): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM audit.events), (SELECT count(*) FROM audit.pending)",
        )
        .fetch_one(&admin)
        .await
        .unwrap();
        assert_eq!((chained + queued) as usize, acknowledged.len());
    }
    assert!(
        interrupted >= 2,
        "only {interrupted} batches were interrupted mid-run"
    );
    sequence_all(&f).await;
    all_chained_once(&f, &acknowledged, &tenants).await;
}

#[tokio::test]
async fn a_rolled_back_sequencing_transaction_changes_nothing() {
    let f = fixture(2).await;
    let t = TenantId::new_random();
    append_n(&f, t, 2).await;
    let acknowledged = record_many(&f, &[t], 5).await;
    let pool: PgPool = sequencer_pool(&f.db).await;
    let mut tx = pool.begin().await.unwrap();
    let taken: i32 = sqlx::query_scalar("SELECT audit.sequence(100)")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(taken, 5);
    tx.rollback().await.unwrap();
    let report = verify(&f, t).await;
    assert_eq!((report.last_seq, report.pending), (2, 5));
    assert_eq!(sequence_all(&f).await, 5);
    let admin = f.db.pool(Role::Admin, 1).await;
    let ids: Vec<i64> = sqlx::query_scalar(
        "SELECT queue_id FROM audit.events WHERE tenant_id = $1 AND seq > 2 ORDER BY seq",
    )
    .bind(t.as_uuid())
    .fetch_all(&admin)
    .await
    .unwrap();
    assert_eq!(
        ids.iter().map(|&i| i as u64).collect::<BTreeSet<_>>(),
        acknowledged
    );
    assert!(verify(&f, t).await.is_intact());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_sequencers_at_once_never_fork_a_chain() {
    let f = fixture(20).await;
    let tenants: Vec<TenantId> = (0..4).map(|_| TenantId::new_random()).collect();
    let first = Sequencer::new(sequencer_pool(&f.db).await)
        .with_batch_size(7)
        .with_poll_interval(Duration::from_millis(10))
        .spawn();
    let second = Sequencer::new(sequencer_pool(&f.db).await)
        .with_batch_size(11)
        .with_poll_interval(Duration::from_millis(10))
        .spawn();
    let acknowledged = record_many(&f, &tenants, 60).await;
    first.stop().await.unwrap();
    second.stop().await.unwrap();
    sequence_all(&f).await;
    all_chained_once(&f, &acknowledged, &tenants).await;
}

/// Polling, events are chained promptly (no notification involved: the queue sends none);
/// after its connections are terminated, it reconnects and carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_sequencer_polls_and_reconnects_after_losing_its_connection() {
    let f = fixture(4).await;
    let t = TenantId::new_random();
    let pool = sequencer_pool(&f.db).await;
    let role = pool.connect_options().get_username().to_owned();
    let running = Sequencer::new(pool)
        .with_retry_delay(Duration::from_millis(50))
        .spawn();
    let admin = f.db.pool(Role::Admin, 1).await;
    let wait_chained = |n: i64| {
        let admin = admin.clone();
        async move {
            for _ in 0..200 {
                let chained: i64 =
                    sqlx::query_scalar("SELECT count(*) FROM audit.events WHERE tenant_id = $1")
                        .bind(t.as_uuid())
                        .fetch_one(&admin)
                        .await
                        .unwrap();
                if chained == n {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            panic!("{n} events not chained within 5 s");
        }
    };
    // The queue sends no notification: nothing but the poll can wake the sequencer.
    let triggers: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'audit.pending'::regclass \
         AND NOT tgisinternal AND tgname LIKE '%notify%'",
    )
    .fetch_one(&admin)
    .await
    .unwrap();
    assert_eq!(triggers, 0);
    let mut acknowledged = record_many(&f, &[t], 3).await;
    wait_chained(3).await;
    let terminated: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE usename = $1) s",
    )
    .bind(&role)
    .fetch_one(&admin)
    .await
    .unwrap();
    assert!(terminated >= 1);
    tokio::time::sleep(Duration::from_millis(100)).await;
    acknowledged.extend(record_many(&f, &[t], 3).await);
    wait_chained(6).await;
    assert!(running.is_running());
    running.stop().await.unwrap();
    all_chained_once(&f, &acknowledged, &[t]).await;
}

/// With signed tenant bindings on, the sequencer binds each tenant as the owner may
/// (`app.bind_trusted`), and chains events queued through signed bindings; a queue insert with
/// an unsigned binding is refused (the control that signing is on).
#[tokio::test]
async fn the_sequencer_chains_under_signed_bindings() {
    let f = fixture(2).await;
    let owner = f.db.pool(Role::Owner, 1).await;
    sqlx::raw_sql(rls_guard::schema::ENABLE_SIGNED_BINDINGS_SQL)
        .execute(&owner)
        .await
        .unwrap();
    let key = {
        let mut conn = owner.acquire().await.unwrap();
        rls_guard::schema::binding_key(&mut conn).await.unwrap()
    };
    let signed = rls_guard::TenantPool::with_binding_key(f.db.pool(Role::Runtime, 2).await, key)
        .await
        .unwrap();
    let log = audit_log::AuditLog::new(signed, scrubber());
    let tenants: Vec<TenantId> = (0..3).map(|_| TenantId::new_random()).collect();
    let mut acknowledged = BTreeSet::new();
    // Through signed tenant transactions (`record` binds with `set_config`, which signed
    // bindings do not count).
    for &t in &tenants {
        let ctx = tenant_scope::TenantContext::for_job(t, None, "signed").unwrap();
        let mut tx = log.pool().begin(&ctx).await.unwrap();
        for i in 0..4 {
            acknowledged.insert(log.append(&mut tx, event(t, i)).await.unwrap().id);
        }
        tx.commit().await.unwrap();
    }
    // Unsigned, the same insert is refused.
    assert!(f.log.record(event(tenants[0], 9)).await.is_err());
    assert_eq!(sequence_all(&f).await, 12);
    all_chained_once(&f, &acknowledged, &tenants).await;
    // Verified as the superuser (the runtime role's unsigned reads see nothing in signed mode).
    let admin = f.db.pool(Role::Admin, 1).await;
    for &t in &tenants {
        let report = audit_log::verify(&admin, t, &f.keys, &[]).await.unwrap();
        assert!(report.is_intact(), "{:?}", report.result);
        assert_eq!((report.last_seq, report.pending), (4, 0));
    }
}

/// A poll of an empty queue takes no lock: while another session holds the sequencer's lock, it
/// answers at once. The control: with an event queued, the same call waits for the lock, then
/// chains the event once the holder lets go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_poll_takes_no_lock_and_a_queued_event_waits_for_it() {
    let f = fixture(2).await;
    let admin = f.db.pool(Role::Admin, 1).await;
    let mut holder = admin.begin().await.unwrap();
    sqlx::query("SELECT held FROM audit.sequencer_lock FOR UPDATE")
        .fetch_one(&mut *holder)
        .await
        .unwrap();
    let empty = tokio::time::timeout(Duration::from_secs(2), f.sequencer.sequence_batch())
        .await
        .expect("an empty poll waited for the sequencer's lock");
    assert_eq!(empty.unwrap(), 0);

    let t = TenantId::new_random();
    let acknowledged = record_many(&f, &[t], 1).await;
    let sequencer = f.sequencer.clone();
    let waiting = tokio::spawn(async move { sequencer.sequence_batch().await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "a batch ran under another's lock");
    holder.rollback().await.unwrap();
    let taken = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the batch did not run once the lock was free")
        .unwrap()
        .unwrap();
    assert_eq!(taken, 1);
    all_chained_once(&f, &acknowledged, &[t]).await;
}
