//! Attacks on `TenantPool::with_transaction_connections`: transactions on connections the pool
//! keeps for them, reused without sqlx's release check. A transaction left open or failed must
//! never reach another user, nothing one transaction leaves at session level may reach the
//! next, a broken connection must be replaced, and closing the pool must not hang.
// Integration tests: a failed unwrap is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use rls_guard::{RlsError, TenantPool};
use sqlx::Row;
use tenant_scope::TenantId;
use testkit::Role;

/// A fixture whose pool keeps `lane` of its `max` connections for transactions.
async fn laned(max: u32, lane: u32) -> (Fixture, TenantPool) {
    let f = fixture(max).await;
    let pool = f.pool.clone().with_transaction_connections(lane).unwrap();
    (f, pool)
}

/// `raw` wrapped, with one connection kept for transactions.
async fn one_kept(raw: sqlx::PgPool) -> TenantPool {
    TenantPool::new(raw)
        .await
        .unwrap()
        .with_transaction_connections(1)
        .unwrap()
}

/// What a transaction bound to `tenant` sees: its backend, the bound tenant, the project names.
async fn seen(pool: &TenantPool, tenant: TenantId) -> Result<(i32, String, Vec<String>), RlsError> {
    let mut tx = pool.begin(&ctx(tenant)).await?;
    let pid = backend(&mut tx).await;
    let bound: String = sqlx::query_scalar("SELECT current_setting('app.tenant_id')")
        .fetch_one(&mut *tx)
        .await?;
    let names: Vec<String> = sqlx::query_scalar("SELECT name FROM projects ORDER BY name")
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok((pid, bound, names))
}

async fn kill(admin: &sqlx::PgPool, pid: i32) {
    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1, 5000)")
        .bind(pid)
        .fetch_one(admin)
        .await
        .unwrap();
    assert!(killed);
}

#[tokio::test]
async fn one_kept_connection_serves_transaction_after_transaction_without_the_pools_check() {
    // The pool's release path (where sqlx pings) runs `after_release`: count it.
    let f = fixture(3).await;
    let released = Arc::new(AtomicUsize::new(0));
    let counted = |released: Arc<AtomicUsize>| {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(3)
            .after_release(move |_, _| {
                let released = Arc::clone(&released);
                Box::pin(async move {
                    released.fetch_add(1, Ordering::SeqCst);
                    Ok(true)
                })
            })
    };
    let options = f.db.options(Role::Runtime);
    let raw = counted(Arc::clone(&released))
        .connect_with(options.clone())
        .await
        .unwrap();
    let pool = one_kept(raw).await;
    let (a, b) = (TenantId::new_random(), TenantId::new_random());
    // The start-up checks' connection goes back to the pool in a task of its own: let it.
    seen(&pool, a).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = released.load(Ordering::SeqCst);
    let mut pids = std::collections::HashSet::new();
    for i in 0..20 {
        let tenant = if i % 2 == 0 { a } else { b };
        insert_project(&pool, &ctx(tenant), &format!("p{i}"))
            .await
            .unwrap();
        let (pid, bound, names) = seen(&pool, tenant).await.unwrap();
        assert_eq!(bound, tenant.to_string());
        // Only this tenant's rows: its own ten at most, none of the other's.
        let own = (0..=i).filter(|j| j % 2 == i % 2).count();
        assert_eq!(names.len(), own, "round {i}");
        pids.insert(pid);
    }
    assert_eq!(pids.len(), 1, "one kept connection served them all");
    assert_eq!(
        released.load(Ordering::SeqCst),
        before,
        "no pool release check"
    );
    // Control: the same transactions without the lane go through the release check each time.
    let plain_released = Arc::new(AtomicUsize::new(0));
    let plain = TenantPool::new(
        counted(Arc::clone(&plain_released))
            .connect_with(options)
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = plain_released.load(Ordering::SeqCst);
    for _ in 0..5 {
        seen(&plain, a).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(plain_released.load(Ordering::SeqCst), before + 5);
}

#[tokio::test]
async fn a_transaction_left_unfinished_closes_its_kept_connection() {
    let (f, pool) = laned(3, 1).await;
    let admin = f.db.pool(Role::Admin, 1).await;
    let (a, b) = (TenantId::new_random(), TenantId::new_random());
    add_project(&pool, a, "a1").await;
    // Control: a finished transaction leaves its connection kept and open.
    let (kept, _, _) = seen(&pool, a).await.unwrap();
    assert_eq!(seen(&pool, b).await.unwrap().0, kept);
    assert_eq!(state(&admin, kept).await.as_deref(), Some("idle"));
    for way in ["dropped", "cancelled mid-statement", "cancelled mid-commit"] {
        let mut tx = pool.begin(&ctx(a)).await.unwrap();
        let pid = backend(&mut tx).await;
        sqlx::query("INSERT INTO projects (tenant_id, name) VALUES ($1, 'uncommitted')")
            .bind(a.as_uuid())
            .execute(&mut *tx)
            .await
            .unwrap();
        match way {
            "dropped" => drop(tx),
            "cancelled mid-statement" => {
                let cut = tokio::time::timeout(
                    Duration::from_millis(50),
                    sqlx::query("SELECT pg_sleep(5)").execute(&mut *tx),
                )
                .await;
                assert!(cut.is_err());
                drop(tx);
            }
            _ => {
                // A commit with 20,000 rows to check takes a while: the future is dropped
                // while the server runs it (whether it then commits is the server's affair).
                sqlx::query(
                    "INSERT INTO projects (tenant_id, name) \
                     SELECT $1, 'bulk ' || g FROM generate_series(1, 20000) g",
                )
                .bind(a.as_uuid())
                .execute(&mut *tx)
                .await
                .unwrap();
                let cut = tokio::time::timeout(Duration::from_millis(5), tx.commit()).await;
                assert!(cut.is_err(), "{way}: the commit was not cut");
            }
        }
        // The kept connection is closed, never handed to the next transaction.
        gone(&admin, pid).await;
        let (next, bound, names) = seen(&pool, b).await.unwrap();
        assert_ne!(next, pid, "{way}");
        assert_eq!(bound, b.to_string());
        assert!(names.is_empty(), "{way}: {names:?}");
        if way != "cancelled mid-commit" {
            let (_, _, names) = seen(&pool, a).await.unwrap();
            assert_eq!(
                names,
                ["a1"],
                "{way}: the unfinished insert was rolled back"
            );
        }
    }
}

/// Whatever a committed or rolled-back transaction leaves at session level is gone when the next
/// transaction gets the same kept connection.
#[tokio::test]
async fn session_state_left_by_a_transaction_never_reaches_the_next_on_the_kept_connection() {
    let (_f, pool) = laned(2, 1).await;
    let (a, b) = (TenantId::new_random(), TenantId::new_random());
    let state = "SELECT pg_backend_pid(), \
                        coalesce(current_setting('app.commit_binding', true), ''), \
                        coalesce(current_setting('app.planted', true), ''), \
                        current_setting('search_path'), \
                        (SELECT count(*) FROM pg_cursors WHERE is_holdable), \
                        (SELECT count(*) FROM pg_listening_channels()), \
                        (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' \
                           AND pid = pg_backend_pid())";
    let mut tx = pool.begin(&ctx(b)).await.unwrap();
    let clean = sqlx::raw_sql(state).fetch_one(&mut *tx).await.unwrap();
    let clean_path: String = clean.get(3);
    tx.commit().await.unwrap();
    for commit in [true, false] {
        let mut tx = pool.begin(&ctx(a)).await.unwrap();
        sqlx::raw_sql(&format!(
            "SET app.planted = 'x'; SET app.tenant_id = '{b}'; SET app.commit_binding = '{b}:'; \
             SET search_path = pg_catalog, public, app; \
             DECLARE held CURSOR WITH HOLD FOR SELECT 1; LISTEN tenant_news; \
             SELECT pg_advisory_lock(42); SELECT set_config('app.tenant_id', '{a}', true)"
        ))
        .execute(&mut *tx)
        .await
        .unwrap();
        let inside = sqlx::raw_sql(state).fetch_one(&mut *tx).await.unwrap();
        let pid: i32 = inside.get(0);
        assert_eq!(inside.get::<String, _>(2), "x");
        assert_eq!(inside.get::<i64, _>(4), 1);
        if commit {
            tx.commit().await.unwrap();
        } else {
            tx.rollback().await.unwrap();
        }
        let mut next = pool.begin(&ctx(b)).await.unwrap();
        let after = sqlx::raw_sql(state).fetch_one(&mut *next).await.unwrap();
        // The positive control: the same backend (the connection was kept).
        assert_eq!(after.get::<i32, _>(0), pid, "commit: {commit}");
        assert_eq!(after.get::<String, _>(1), "");
        assert_eq!(after.get::<String, _>(2), "", "commit: {commit}");
        assert_eq!(after.get::<String, _>(3), clean_path);
        assert_eq!(
            (
                after.get::<i64, _>(4),
                after.get::<i64, _>(5),
                after.get::<i64, _>(6)
            ),
            (0, 0, 0),
            "commit: {commit}"
        );
        let bound: String = sqlx::query_scalar("SELECT current_setting('app.tenant_id')")
            .fetch_one(&mut *next)
            .await
            .unwrap();
        assert_eq!(bound, b.to_string());
        next.commit().await.unwrap();
    }
}

#[tokio::test]
async fn a_failed_commit_closes_the_kept_connection() {
    let (f, pool) = laned(3, 1).await;
    let admin = f.db.pool(Role::Admin, 1).await;
    let (a, b) = (TenantId::new_random(), TenantId::new_random());
    // A transaction of a that rebinds itself to b and writes b's row: refused at commit.
    let mut tx = pool.begin(&ctx(a)).await.unwrap();
    let pid = backend(&mut tx).await;
    sqlx::query("SELECT set_config('app.tenant_id', $1, true)")
        .bind(b.to_string())
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("INSERT INTO projects (tenant_id, name) VALUES ($1, 'planted in b')")
        .bind(b.as_uuid())
        .execute(&mut *tx)
        .await
        .unwrap();
    assert!(matches!(tx.commit().await, Err(RlsError::BindingChanged)));
    gone(&admin, pid).await;
    let (next, _, names) = seen(&pool, b).await.unwrap();
    assert_ne!(next, pid);
    assert!(names.is_empty(), "{names:?}");
    assert_eq!(count_all(&f.db, "projects").await, 0);
}

#[tokio::test]
async fn a_kept_connection_that_died_while_idle_is_replaced_without_failing_a_transaction() {
    let (f, pool) = laned(4, 2).await;
    let admin = f.db.pool(Role::Admin, 1).await;
    let (a, b) = (TenantId::new_random(), TenantId::new_random());
    for round in 0..3 {
        // Both kept connections in use at once, so that the lane holds two.
        let (mut x, mut y) = (
            pool.begin(&ctx(a)).await.unwrap(),
            pool.begin(&ctx(b)).await.unwrap(),
        );
        let pids = [backend(&mut x).await, backend(&mut y).await];
        x.commit().await.unwrap();
        y.commit().await.unwrap();
        for pid in pids {
            kill(&admin, pid).await;
        }
        // Each transaction still runs, bound to its tenant, on a new connection.
        for (tenant, name) in [(a, "a"), (b, "b")] {
            insert_project(&pool, &ctx(tenant), &format!("{name}{round}"))
                .await
                .unwrap();
            let (pid, bound, names) = seen(&pool, tenant).await.unwrap();
            assert!(!pids.contains(&pid), "round {round}");
            assert_eq!(bound, tenant.to_string());
            assert_eq!(names.len(), round + 1);
        }
    }
    // Killed in the middle of a transaction: that transaction fails (nothing after BEGIN runs
    // twice), and the next gets a new connection.
    let mut tx = pool.begin(&ctx(a)).await.unwrap();
    let pid = backend(&mut tx).await;
    kill(&admin, pid).await;
    let failed = sqlx::query("INSERT INTO projects (tenant_id, name) VALUES ($1, 'lost')")
        .bind(a.as_uuid())
        .execute(&mut *tx)
        .await;
    assert!(failed.is_err());
    drop(tx);
    let (next, _, names) = seen(&pool, a).await.unwrap();
    assert_ne!(next, pid);
    assert_eq!(names, ["a0", "a1", "a2"]);
}

#[tokio::test]
async fn transactions_beyond_the_lane_wait_their_turn_and_reads_keep_their_own() {
    let f = fixture(4).await;
    let pool = f
        .pool
        .clone()
        .with_read_connections(2)
        .unwrap()
        .with_transaction_connections(1)
        .unwrap();
    let (a, b) = (TenantId::new_random(), TenantId::new_random());
    add_project(&pool, b, "b1").await;
    let mut first = pool.begin(&ctx(a)).await.unwrap();
    // A second transaction waits for the one kept connection...
    let second = {
        let pool = pool.clone();
        tokio::spawn(async move { seen(&pool, b).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!second.is_finished());
    // ...while reads run on their own lane.
    assert_eq!(read_names(&pool, &ctx(b)).await.unwrap(), ["b1"]);
    let pid = backend(&mut first).await;
    first.commit().await.unwrap();
    let (next, bound, names) = second.await.unwrap().unwrap();
    assert_eq!(
        (next, bound, names),
        (pid, b.to_string(), vec!["b1".into()])
    );
}

#[tokio::test]
async fn a_transaction_that_cannot_get_a_kept_connection_in_time_fails_as_unavailable() {
    let f = fixture(2).await;
    let raw = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_millis(300))
        .connect_with(f.db.options(Role::Runtime))
        .await
        .unwrap();
    let pool = one_kept(raw).await;
    let a = TenantId::new_random();
    let held = pool.begin(&ctx(a)).await.unwrap();
    let started = std::time::Instant::now();
    let refused = pool.begin(&ctx(a)).await.unwrap_err();
    assert!(refused.is_unavailable(), "{refused:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    // Control: once the kept connection is free, the transaction runs.
    held.rollback().await.unwrap();
    seen(&pool, a).await.unwrap();
}

#[tokio::test]
async fn the_read_and_transaction_lanes_together_leave_the_pool_a_connection() {
    let f = fixture(3).await;
    let read = f.pool.clone().with_read_connections(2).unwrap();
    let refused = read.clone().with_transaction_connections(1).unwrap_err();
    assert!(
        matches!(
            refused,
            RlsError::KeptConnections {
                requested: 1,
                kept: 2,
                max: 3
            }
        ),
        "{refused:?}"
    );
    assert!(matches!(
        f.pool.clone().with_transaction_connections(0),
        Err(RlsError::KeptConnections { requested: 0, .. })
    ));
    // Control: one each fits, and asking again replaces the pool's own transaction lane.
    drop(read);
    let pool = f
        .pool
        .clone()
        .with_read_connections(1)
        .unwrap()
        .with_transaction_connections(1)
        .unwrap()
        .with_transaction_connections(1)
        .unwrap();
    seen(&pool, TenantId::new_random()).await.unwrap();
}

#[tokio::test]
async fn closing_the_pool_hands_the_kept_transaction_connections_back() {
    let (f, pool) = laned(3, 2).await;
    let a = TenantId::new_random();
    let (mut x, mut y) = (
        pool.begin(&ctx(a)).await.unwrap(),
        pool.begin(&ctx(a)).await.unwrap(),
    );
    backend(&mut x).await;
    backend(&mut y).await;
    x.commit().await.unwrap();
    y.commit().await.unwrap();
    assert_eq!(usize::try_from(f.raw.size()).unwrap() - f.raw.num_idle(), 2);
    tokio::time::timeout(Duration::from_secs(5), f.raw.close())
        .await
        .expect("close waited for the kept connections");
    let closed = pool.begin(&ctx(a)).await.unwrap_err();
    assert!(closed.is_unavailable(), "{closed:?}");
}

#[tokio::test]
async fn signed_bindings_run_on_kept_connections() {
    let f = signed_fixture(3).await;
    let pool = f.pool.clone().with_transaction_connections(1).unwrap();
    let (a, b) = (TenantId::new_random(), TenantId::new_random());
    let mut pids = std::collections::HashSet::new();
    for (i, tenant) in [a, b, a, b].into_iter().enumerate() {
        insert_project(&pool, &ctx(tenant), &format!("p{i}"))
            .await
            .unwrap();
        let (pid, bound, names) = seen(&pool, tenant).await.unwrap();
        assert_eq!(bound, tenant.to_string());
        assert_eq!(names.len(), i / 2 + 1);
        pids.insert(pid);
    }
    assert_eq!(pids.len(), 1);
}
