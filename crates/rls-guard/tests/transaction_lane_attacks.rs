//! Attacks on `TenantPool::with_transaction_connections`, each compared with the same attack on
//! a plain `TenantPool` (no lane) whose single connection serves every transaction: the lane
//! must be no weaker. The adversary holds the runtime role through SQL injected into a
//! transaction.
// Integration tests: a failed unwrap is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::*;
use rls_guard::{TenantPool, TenantTx};
use sqlx::Row;
use tenant_scope::TenantId;
use testkit::Role;

/// The lane pool (one kept connection of two) and a plain pool of one connection (so that every
/// transaction of the plain pool also runs on one backend), both on the fixture's database.
async fn lane_and_plain() -> (Fixture, TenantPool, TenantPool) {
    let f = fixture(2).await;
    let lane = f.pool.clone().with_transaction_connections(1).unwrap();
    let raw = f.db.pool(Role::Runtime, 1).await;
    let plain = TenantPool::new(raw).await.unwrap();
    (f, lane, plain)
}

/// The backend of the transaction's connection, asked with the simple protocol: these attacks
/// drop sqlx's prepared statements, which `common::backend` would use.
async fn simple_backend(tx: &mut TenantTx) -> i32 {
    sqlx::raw_sql("SELECT pg_backend_pid()")
        .fetch_one(&mut **tx)
        .await
        .unwrap()
        .get(0)
}

/// What the next transaction (bound to `tenant`) finds on its connection: everything but the
/// backend, which is returned apart.
const PROBE: &str = "SELECT pg_backend_pid(), \
    current_setting('app.tenant_id'), \
    current_setting('transaction_isolation'), \
    current_setting('transaction_read_only'), \
    current_setting('default_transaction_isolation'), \
    current_setting('default_transaction_read_only'), \
    current_user::text, session_user::text, \
    current_setting('search_path'), \
    current_setting('client_encoding'), \
    current_setting('idle_session_timeout'), \
    coalesce(current_setting('app.planted', true), ''), \
    (SELECT count(*) FROM pg_prepared_statements WHERE from_sql), \
    (SELECT count(*) FROM pg_cursors), \
    (SELECT count(*) FROM pg_listening_channels()), \
    (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()), \
    (SELECT string_agg(name, ',' ORDER BY name) FROM projects)";

#[derive(Debug, PartialEq, Eq)]
struct View {
    bound: String,
    isolation: String,
    read_only: String,
    default_isolation: String,
    default_read_only: String,
    current_user: String,
    session_user: String,
    search_path: String,
    client_encoding: String,
    idle_session_timeout: String,
    planted: String,
    sql_prepared: i64,
    cursors: i64,
    listening: i64,
    advisory: i64,
    names: Option<String>,
}

/// The next transaction bound to `tenant`, read-write or not: its backend and view; it commits.
async fn probe(pool: &TenantPool, tenant: TenantId, read_only: bool) -> (i32, View) {
    let mut tx = if read_only {
        pool.begin_read_only(&ctx(tenant)).await.unwrap()
    } else {
        pool.begin(&ctx(tenant)).await.unwrap()
    };
    let r = sqlx::raw_sql(PROBE).fetch_one(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
    (
        r.get(0),
        View {
            bound: r.get(1),
            isolation: r.get(2),
            read_only: r.get(3),
            default_isolation: r.get(4),
            default_read_only: r.get(5),
            current_user: r.get(6),
            session_user: r.get(7),
            search_path: r.get(8),
            client_encoding: r.get(9),
            idle_session_timeout: r.get(10),
            planted: r.get(11),
            sql_prepared: r.get(12),
            cursors: r.get(13),
            listening: r.get(14),
            advisory: r.get(15),
            names: r.get(16),
        },
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Commit,
    Rollback,
    /// `begin_read_only`, then `commit` (which rolls back).
    ReadOnlyCommit,
}

/// What came of one attack: whether its end succeeded, its backend's state right after, and
/// what the next transaction (of `victim`) found.
#[derive(Debug)]
struct Outcome {
    /// The attacker's backend.
    pid: i32,
    ended: Result<(), String>,
    /// The attacker's backend after its end: `Some("idle")` when handed back.
    after: Option<String>,
    /// Whether the next transaction ran on the attacker's backend.
    reused: bool,
    view: View,
}

/// Tenant `attacker` runs `inject` in a transaction that ends as `end`; then a transaction of
/// `victim` probes its connection.
async fn attack(
    pool: &TenantPool,
    admin: &sqlx::PgPool,
    attacker: TenantId,
    victim: TenantId,
    inject: &str,
    end: End,
) -> Outcome {
    let mut tx = match end {
        End::ReadOnlyCommit => pool.begin_read_only(&ctx(attacker)).await.unwrap(),
        _ => pool.begin(&ctx(attacker)).await.unwrap(),
    };
    let pid = simple_backend(&mut tx).await;
    // The injected SQL may fail (a refused statement aborts the transaction): the handler then
    // still ends the transaction as written.
    let _ = sqlx::raw_sql(inject).execute(&mut *tx).await;
    let ended = match end {
        End::Rollback => tx.rollback().await,
        _ => tx.commit().await,
    }
    .map_err(|e| format!("{e:?}"));
    let after = state(admin, pid).await;
    let (next, view) = probe(pool, victim, false).await;
    Outcome {
        pid,
        ended,
        after,
        reused: next == pid,
        view,
    }
}

/// Injected SQL that tries to leave state behind on the connection, or to make the final
/// `COMMIT` end something other than the transaction the binding was checked for.
fn injections(a: TenantId, b: TenantId) -> Vec<String> {
    let pwn = format!("INSERT INTO projects (tenant_id, name) VALUES ('{b}', 'pwned')");
    vec![
        "COMMIT; BEGIN".into(),
        "COMMIT AND CHAIN".into(),
        "ROLLBACK AND CHAIN".into(),
        "COMMIT; BEGIN READ ONLY".into(),
        "COMMIT; BEGIN ISOLATION LEVEL SERIALIZABLE".into(),
        "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE".into(),
        format!("SAVEPOINT s; SET LOCAL app.tenant_id = '{b}'; {pwn}; RELEASE SAVEPOINT s; SET LOCAL app.tenant_id = '{a}'"),
        format!("SAVEPOINT s; SET LOCAL app.tenant_id = '{b}'; {pwn}; ROLLBACK TO SAVEPOINT s"),
        format!("COMMIT; SET app.tenant_id = '{b}'; BEGIN; {pwn}"),
        format!("COMMIT; BEGIN; SET LOCAL app.tenant_id = '{b}'; {pwn}; SET LOCAL app.tenant_id = '{a}'"),
        format!("COMMIT AND CHAIN; SET LOCAL app.tenant_id = '{b}'; {pwn}"),
        format!("SELECT set_config('app.tenant_id', '{b}', false), set_config('app.planted', 'x', false)"),
        format!("COMMIT; SELECT set_config('app.tenant_id', '{b}', false), set_config('app.planted', 'x', false); BEGIN"),
        "COMMIT; SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY; BEGIN".into(),
        "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY".into(),
        "SET default_transaction_isolation = 'repeatable read'; SET default_transaction_read_only = on".into(),
        "SET search_path = pg_catalog; SET client_encoding = 'LATIN1'; SET idle_session_timeout = 50".into(),
        "SET SESSION AUTHORIZATION DEFAULT; SET ROLE NONE".into(),
        "SET SESSION AUTHORIZATION testkit_owner".into(),
        "SET ROLE testkit_owner".into(),
        "COMMIT; SET ROLE testkit_checkpointer; BEGIN".into(),
        "DECLARE held CURSOR WITH HOLD FOR SELECT * FROM projects; COMMIT; BEGIN".into(),
        "COMMIT; DECLARE held CURSOR WITH HOLD FOR SELECT * FROM projects; BEGIN".into(),
        "COMMIT; LISTEN tenant_news; BEGIN".into(),
        "SELECT pg_advisory_lock(7); COMMIT; SELECT pg_advisory_lock_shared(8); BEGIN".into(),
        "PREPARE evil AS SELECT 1".into(),
        "COMMIT; PREPARE evil AS SELECT 1; BEGIN".into(),
        "PREPARE evil AS SELECT 1; DEALLOCATE evil".into(),
        "COMMIT; DISCARD ALL; BEGIN".into(),
        "DEALLOCATE ALL; DISCARD PLANS; DISCARD SEQUENCES".into(),
        "CREATE TEMP TABLE t (x int)".into(),
        "PREPARE TRANSACTION 'held'".into(),
        "COMMIT; PREPARE TRANSACTION 'held'".into(),
    ]
}

/// The rows of the victim's tenant no attack may reach, and the state a clean connection shows.
fn assert_clean(view: &View, b: TenantId, label: &str) {
    assert_eq!(view.bound, b.to_string(), "{label}");
    assert_eq!(view.isolation, "read committed", "{label}");
    assert_eq!(view.read_only, "off", "{label}");
    assert_eq!(view.default_isolation, "read committed", "{label}");
    assert_eq!(view.default_read_only, "off", "{label}");
    assert_eq!(view.current_user, testkit::RUNTIME_ROLE, "{label}");
    assert_eq!(view.session_user, testkit::RUNTIME_ROLE, "{label}");
    assert_eq!(view.client_encoding, "UTF8", "{label}");
    assert_eq!(view.idle_session_timeout, "0", "{label}");
    assert_eq!(view.planted, "", "{label}");
    assert_eq!(
        (
            view.sql_prepared,
            view.cursors,
            view.listening,
            view.advisory
        ),
        (0, 0, 0, 0),
        "{label}"
    );
    assert_eq!(view.names.as_deref(), Some("b1"), "{label}");
}

/// Every injection, ended every way, on the lane and on the plain pool: the next tenant's
/// transaction finds a clean connection bound to it, nothing written to its tenant, and the
/// lane ends, hands back and reuses exactly as the plain pool does.
#[tokio::test]
async fn injected_session_and_transaction_control_leaves_the_lane_no_weaker_than_the_plain_pool() {
    let (f, lane, plain) = lane_and_plain().await;
    let admin = f.db.pool(Role::Admin, 1).await;
    let (a, b) = (TenantId::new_random(), TenantId::new_random());
    add_project(&lane, b, "b1").await;
    // Positive control: without injection, each pool's next transaction reuses the backend,
    // which is idle, and the commit succeeds.
    for (name, pool) in [("lane", &lane), ("plain", &plain)] {
        for end in [End::Commit, End::Rollback, End::ReadOnlyCommit] {
            let o = attack(pool, &admin, a, b, "SELECT 1", end).await;
            assert_eq!(o.ended, Ok(()), "{name} {end:?}");
            assert_eq!(o.after.as_deref(), Some("idle"), "{name} {end:?}");
            assert!(o.reused, "{name} {end:?}");
            assert_clean(&o.view, b, &format!("{name} {end:?} control"));
        }
    }
    let clean_path = probe(&lane, b, false).await.1.search_path;
    let mut differences = Vec::new();
    for inject in injections(a, b) {
        for end in [End::Commit, End::Rollback, End::ReadOnlyCommit] {
            let on_lane = attack(&lane, &admin, a, b, &inject, end).await;
            let on_plain = attack(&plain, &admin, a, b, &inject, end).await;
            let label = format!("{inject:?} {end:?}");
            assert_clean(&on_lane.view, b, &format!("lane {label}"));
            assert_eq!(on_lane.view.search_path, clean_path, "lane {label}");
            // A connection handed back is idle (not in a transaction); one not handed back is
            // closed, never reused.
            if on_lane.ended.is_ok() {
                assert_eq!(on_lane.after.as_deref(), Some("idle"), "lane {label}");
            } else {
                assert!(
                    !on_lane.reused,
                    "lane {label}: a failed end reused its connection"
                );
            }
            // Compared with the plain pool: the same end, the same reuse, the same next view,
            // and (for a connection handed back) the same state. A connection not handed back
            // is being closed on both; how far the close got when we looked is timing.
            let key = |o: &Outcome| {
                (
                    o.ended.is_ok(),
                    o.reused,
                    if o.ended.is_ok() {
                        o.after.clone()
                    } else {
                        None
                    },
                )
            };
            if key(&on_lane) != key(&on_plain) || on_lane.view != on_plain.view {
                differences.push(format!("{label}: lane {on_lane:?}, plain {on_plain:?}"));
            }
            if on_lane.ended.is_err() {
                gone(&admin, on_lane.pid).await;
            }
        }
    }
    assert!(differences.is_empty(), "{differences:#?}");
    assert_eq!(projects_named(&f.db, "pwned").await, 0);
}

/// A statement the application runs is prepared by sqlx under a name it caches per connection.
/// Injected SQL that deallocates it and prepares its own statement under that name must never
/// reach the next tenant: the connection is closed. Deallocating alone leaves the next user of
/// the connection a failing statement, on the lane exactly as on the plain pool.
#[tokio::test]
async fn a_statement_prepared_under_sqlxs_cached_name_never_runs_for_the_next_tenant() {
    let (f, lane, plain) = lane_and_plain().await;
    let admin = f.db.pool(Role::Admin, 1).await;
    let (a, b) = (TenantId::new_random(), TenantId::new_random());
    add_project(&lane, a, "a1").await;
    add_project(&lane, b, "b1").await;
    const APP_QUERY: &str = "SELECT name FROM projects WHERE name <> $1 ORDER BY name";
    async fn app_query(tx: &mut TenantTx) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar(APP_QUERY)
            .bind("")
            .fetch_all(&mut **tx)
            .await
    }
    for (name, pool) in [("lane", &lane), ("plain", &plain)] {
        for end in [End::Commit, End::Rollback] {
            // The application's statement, prepared and cached on the connection by tenant b.
            let mut tx = pool.begin(&ctx(b)).await.unwrap();
            let pid = simple_backend(&mut tx).await;
            assert_eq!(app_query(&mut tx).await.unwrap(), ["b1"]);
            tx.commit().await.unwrap();
            // a finds the statement's name and swaps in its own.
            let mut tx = pool.begin(&ctx(a)).await.unwrap();
            assert_eq!(
                simple_backend(&mut tx).await,
                pid,
                "{name}: control, the same connection"
            );
            let stmt: String = sqlx::raw_sql(&format!(
                "SELECT name FROM pg_prepared_statements WHERE statement = '{APP_QUERY}'"
            ))
            .fetch_one(&mut *tx)
            .await
            .unwrap()
            .get(0);
            sqlx::raw_sql(&format!(
                "DEALLOCATE {stmt}; PREPARE {stmt}(text) AS \
                 SELECT set_config('app.tenant_id', '{a}', true) UNION ALL \
                 SELECT name FROM projects WHERE name <> $1"
            ))
            .execute(&mut *tx)
            .await
            .unwrap();
            let ended = match end {
                End::Commit => tx.commit().await,
                _ => tx.rollback().await,
            };
            assert!(ended.is_err(), "{name} {end:?}: {ended:?}");
            gone(&admin, pid).await;
            // b's next run of the statement is its own.
            let mut tx = pool.begin(&ctx(b)).await.unwrap();
            assert_ne!(simple_backend(&mut tx).await, pid);
            assert_eq!(app_query(&mut tx).await.unwrap(), ["b1"], "{name} {end:?}");
            tx.commit().await.unwrap();
        }
    }
    // Deallocating alone: the commit succeeds, and the next use of the cached statement fails
    // (a denial of one request, the same on both). Compare the two.
    let mut outcomes = Vec::new();
    for pool in [&lane, &plain] {
        let mut tx = pool.begin(&ctx(b)).await.unwrap();
        let pid = simple_backend(&mut tx).await;
        app_query(&mut tx).await.unwrap();
        tx.commit().await.unwrap();
        let mut tx = pool.begin(&ctx(a)).await.unwrap();
        sqlx::raw_sql("DEALLOCATE ALL")
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        let mut tx = pool.begin(&ctx(b)).await.unwrap();
        let same = simple_backend(&mut tx).await == pid;
        let first = app_query(&mut tx).await.map_err(|e| e.to_string());
        drop(tx);
        // Whatever happened, the connection after is sound.
        let mut tx = pool.begin(&ctx(b)).await.unwrap();
        assert_eq!(app_query(&mut tx).await.unwrap(), ["b1"]);
        tx.commit().await.unwrap();
        outcomes.push((same, first.is_ok()));
    }
    assert_eq!(outcomes[0], outcomes[1], "lane vs plain: {outcomes:?}");
}

/// A notification for a channel a transaction listened on (through an injected `COMMIT`),
/// sent while it was still open, is never delivered to the next transaction on the kept
/// connection, where sqlx would take it for a protocol error (the plain pool's checks would
/// swallow it).
#[tokio::test]
async fn a_notification_for_a_channel_the_previous_transaction_listened_on_never_reaches_the_next()
{
    let (f, lane, plain) = lane_and_plain().await;
    let admin = f.db.pool(Role::Admin, 1).await;
    let (a, b) = (TenantId::new_random(), TenantId::new_random());
    add_project(&lane, b, "b1").await;
    for (name, pool) in [("lane", &lane), ("plain", &plain)] {
        for i in 0..3 {
            let mut tx = pool.begin(&ctx(a)).await.unwrap();
            let pid = simple_backend(&mut tx).await;
            sqlx::raw_sql("COMMIT; LISTEN tenant_news; BEGIN")
                .execute(&mut *tx)
                .await
                .unwrap();
            sqlx::query("SELECT pg_notify('tenant_news', 'before the end')")
                .execute(&admin)
                .await
                .unwrap();
            tx.commit().await.unwrap();
            // And one more once it is idle.
            sqlx::query("SELECT pg_notify('tenant_news', 'while idle')")
                .execute(&admin)
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            let (next, view) = probe(pool, b, i % 2 == 1).await;
            assert_eq!(next, pid, "{name}: control, the same connection");
            assert_eq!(view.bound, b.to_string());
            assert_eq!(view.listening, 0);
        }
    }
}

/// A handler that panics while it holds a transaction on the lane: its connection is closed,
/// its write never lands, and its kept slot serves the next transaction at once.
#[tokio::test]
async fn a_panic_inside_a_handler_closes_its_kept_connection_and_frees_its_slot() {
    let (f, lane, plain) = lane_and_plain().await;
    let admin = f.db.pool(Role::Admin, 1).await;
    let (a, b) = (TenantId::new_random(), TenantId::new_random());
    add_project(&lane, b, "b1").await;
    for (name, pool) in [("lane", &lane), ("plain", &plain)] {
        // Control: a handler that finishes keeps the connection.
        let (pid, _) = probe(pool, b, false).await;
        assert_eq!(probe(pool, b, false).await.0, pid, "{name}");
        let handler = async {
            let mut tx = pool.begin(&ctx(a)).await.unwrap();
            let pid = simple_backend(&mut tx).await;
            sqlx::query("INSERT INTO projects (tenant_id, name) VALUES ($1, 'panicked')")
                .bind(a.as_uuid())
                .execute(&mut *tx)
                .await
                .unwrap();
            assert_eq!(pid, -1, "the handler panics holding {pid}");
        };
        let caught = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(handler)).await;
        assert!(caught.is_err());
        gone(&admin, pid).await;
        let started = std::time::Instant::now();
        let (next, view) = probe(pool, b, false).await;
        assert!(started.elapsed() < Duration::from_secs(2), "{name}");
        assert_ne!(next, pid, "{name}");
        assert_eq!(view.names.as_deref(), Some("b1"));
    }
    assert_eq!(projects_named(&f.db, "panicked").await, 0);
}

/// `begin` cancelled at every point (waiting for the slot, taking a connection, BEGIN in flight,
/// the binding in flight, the retry on a fresh connection after the kept one died): no slot is
/// lost, no connection is left in a transaction, and no connection of the pool is bound.
#[tokio::test]
async fn begins_cancelled_at_any_point_leak_no_slot_and_no_bound_connection() {
    for signed in [false, true] {
        let f = if signed {
            signed_fixture(3).await
        } else {
            fixture(3).await
        };
        let lane = f.pool.clone().with_transaction_connections(2).unwrap();
        let admin = f.db.pool(Role::Admin, 1).await;
        let (a, b) = (TenantId::new_random(), TenantId::new_random());
        add_project(&lane, b, "b1").await;
        let mut cut = 0;
        for step in 0..120u64 {
            // Every third round, kill the idle kept connections first: the begin then goes
            // through the retry, which the cut may also interrupt.
            if step % 3 == 0 {
                sqlx::query(
                    "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity \
                     WHERE usename = $1 AND state = 'idle' AND datname = current_database()",
                )
                .bind(testkit::RUNTIME_ROLE)
                .execute(&admin)
                .await
                .unwrap();
            }
            let wait = Duration::from_micros(step * 40);
            match tokio::time::timeout(wait, lane.begin(&ctx(a))).await {
                Ok(Ok(tx)) => {
                    if step % 2 == 0 {
                        tx.commit().await.unwrap();
                    } else {
                        drop(tx);
                    }
                }
                Ok(Err(e)) => panic!("step {step}: {e:?}"),
                Err(_) => cut += 1,
            }
        }
        assert!(cut > 10, "too few begins were cut: {cut}");
        // Both slots are still there: two transactions at once, at once.
        let started = std::time::Instant::now();
        let (mut x, mut y) = (
            lane.begin(&ctx(a)).await.unwrap(),
            lane.begin(&ctx(b)).await.unwrap(),
        );
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_ne!(simple_backend(&mut x).await, simple_backend(&mut y).await);
        x.commit().await.unwrap();
        y.commit().await.unwrap();
        // No runtime backend is left in a transaction.
        let started = std::time::Instant::now();
        loop {
            let open: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 \
                 AND datname = current_database() AND state LIKE 'idle in transaction%'",
            )
            .bind(testkit::RUNTIME_ROLE)
            .fetch_one(&admin)
            .await
            .unwrap();
            if open == 0 {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{open} left in a transaction"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Every connection the rest of the pool hands out is unbound.
        let mut conn = f.raw.acquire().await.unwrap();
        assert_unbound_sees_and_changes_nothing(&mut conn, &f.db).await;
    }
}

/// Closing the pool while one transaction holds the lane's only slot and another waits for it:
/// the waiter is refused at once, the holder still commits, and the close finishes.
#[tokio::test]
async fn closing_the_pool_mid_transaction_refuses_the_waiter_commits_the_holder_and_finishes() {
    let f = fixture(3).await;
    let lane = f.pool.clone().with_transaction_connections(1).unwrap();
    let a = TenantId::new_random();
    // Control: a transaction runs.
    insert_project(&lane, &ctx(a), "before").await.unwrap();
    let mut holder = lane.begin(&ctx(a)).await.unwrap();
    sqlx::query("INSERT INTO projects (tenant_id, name) VALUES ($1, 'held')")
        .bind(a.as_uuid())
        .execute(&mut *holder)
        .await
        .unwrap();
    let waiter = {
        let lane = lane.clone();
        tokio::spawn(async move { lane.begin(&ctx(a)).await.map(|_| ()) })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiter.is_finished());
    let closing = {
        let raw = f.raw.clone();
        tokio::spawn(async move { raw.close().await })
    };
    let refused = tokio::time::timeout(Duration::from_secs(2), waiter)
        .await
        .expect("the waiter was not refused")
        .unwrap()
        .unwrap_err();
    assert!(refused.is_unavailable(), "{refused:?}");
    holder.commit().await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), closing)
        .await
        .expect("close hung")
        .unwrap();
    assert!(lane.begin(&ctx(a)).await.unwrap_err().is_unavailable());
    assert_eq!(projects_named(&f.db, "held").await, 1);
}

/// A handler that opens a second transaction while holding the lane's only slot waits at most
/// the acquire timeout and is refused as unavailable (the lane's documented limit: `n`
/// transactions at once), rather than hanging; the plain pool of the same size runs it.
#[tokio::test]
async fn a_nested_begin_on_a_full_lane_is_refused_in_time_not_hung() {
    let f = fixture(3).await;
    let raw = sqlx::postgres::PgPoolOptions::new()
        .max_connections(3)
        .acquire_timeout(Duration::from_millis(300))
        .connect_with(f.db.options(Role::Runtime))
        .await
        .unwrap();
    let plain = TenantPool::new(raw).await.unwrap();
    let lane = plain.clone().with_transaction_connections(1).unwrap();
    let a = TenantId::new_random();
    let outer = plain.begin(&ctx(a)).await.unwrap();
    let inner = plain.begin(&ctx(a)).await.unwrap();
    inner.commit().await.unwrap();
    outer.commit().await.unwrap();
    let outer = lane.begin(&ctx(a)).await.unwrap();
    let started = std::time::Instant::now();
    let refused = tokio::time::timeout(Duration::from_secs(5), lane.begin(&ctx(a)))
        .await
        .expect("nested begin hung")
        .unwrap_err();
    assert!(refused.is_unavailable(), "{refused:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    outer.commit().await.unwrap();
    lane.begin(&ctx(a)).await.unwrap().commit().await.unwrap();
}

/// Transactions beyond the lane wait first come, first served; one that gives up waiting takes
/// no turn from those behind it.
#[tokio::test]
async fn waiting_transactions_are_served_in_arrival_order_and_a_cancelled_waiter_loses_no_turn() {
    let f = fixture(3).await;
    let lane = f.pool.clone().with_transaction_connections(1).unwrap();
    let a = TenantId::new_random();
    let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let holder = lane.begin(&ctx(a)).await.unwrap();
    let mut waiters = Vec::new();
    for i in 0..5 {
        let (lane, order) = (lane.clone(), std::sync::Arc::clone(&order));
        waiters.push(tokio::spawn(async move {
            let tx = lane.begin(&ctx(a)).await.unwrap();
            order.lock().unwrap().push(i);
            tokio::time::sleep(Duration::from_millis(10)).await;
            tx.commit().await.unwrap();
        }));
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    // The third gives up.
    waiters[2].abort();
    tokio::time::sleep(Duration::from_millis(30)).await;
    holder.commit().await.unwrap();
    for (i, w) in waiters.into_iter().enumerate() {
        let r = tokio::time::timeout(Duration::from_secs(5), w)
            .await
            .unwrap();
        assert_eq!(r.is_ok(), i != 2, "waiter {i}");
    }
    assert_eq!(*order.lock().unwrap(), [0, 1, 3, 4]);
}

/// The lane dropped (every `TenantPool` holding it gone) while a transaction runs on it: the
/// transaction still commits, its connection goes back to the pool, and closing the pool
/// finishes.
#[tokio::test]
async fn a_lane_dropped_mid_transaction_hands_its_connection_back_to_the_pool() {
    let f = fixture(3).await;
    let lane = f.pool.clone().with_transaction_connections(2).unwrap();
    let a = TenantId::new_random();
    // Control: the lane keeps a connection between transactions.
    insert_project(&lane, &ctx(a), "kept").await.unwrap();
    let mut tx = lane.begin(&ctx(a)).await.unwrap();
    drop(lane);
    sqlx::query("INSERT INTO projects (tenant_id, name) VALUES ($1, 'after the drop')")
        .bind(a.as_uuid())
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    // A new lane of the same size fits again: the old one is gone.
    let again = f.pool.clone().with_transaction_connections(2).unwrap();
    assert_eq!(visible(&again, a).await.len(), 2);
    drop(again);
    tokio::time::timeout(Duration::from_secs(5), f.raw.close())
        .await
        .expect("close waited for a connection of a dropped lane");
}
