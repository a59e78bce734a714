//! Attacks on `TenantPool::with_read_connections`: bound reads on connections the pool keeps
//! for them, reused without sqlx's release check. A connection left mid-statement must never
//! serve another read, a broken one must be replaced, the rest of the pool must stay free, and
//! closing the pool must not hang on the kept connections.
// Integration tests: a failed unwrap is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::*;
use rls_guard::{RlsError, TenantPool};
use tenant_scope::TenantId;
use testkit::Role;

/// A fixture whose pool keeps `lane` of its `max` connections for reads.
async fn laned(max: u32, lane: u32) -> (Fixture, TenantPool) {
    let f = fixture(max).await;
    let pool = f.pool.clone().with_read_connections(lane).unwrap();
    (f, pool)
}

async fn names(pool: &TenantPool, tenant: TenantId) -> Result<Vec<String>, RlsError> {
    let rows: Vec<(String,)> = pool
        .read(&ctx(tenant), "SELECT name FROM projects ORDER BY name")
        .fetch_all()
        .await?;
    Ok(rows.into_iter().map(|(n,)| n).collect())
}

async fn backend(pool: &TenantPool, tenant: TenantId) -> Result<i32, RlsError> {
    let (pid,): (i32,) = pool
        .read(&ctx(tenant), "SELECT pg_backend_pid()")
        .fetch_optional()
        .await?
        .unwrap();
    Ok(pid)
}

/// A pool of the runtime role made with `options` (connecting with `connect`), wrapped, with a
/// lane of one.
async fn laned_pool(
    options: sqlx::postgres::PgPoolOptions,
    connect: sqlx::postgres::PgConnectOptions,
) -> (sqlx::PgPool, TenantPool) {
    let raw = options.connect_with(connect).await.unwrap();
    let pool = TenantPool::new(raw.clone())
        .await
        .unwrap()
        .with_read_connections(1)
        .unwrap();
    (raw, pool)
}

/// The SQLSTATE of a database error.
fn sqlstate(error: &RlsError) -> Option<String> {
    match error {
        RlsError::Database(e) => e
            .as_database_error()
            .and_then(|d| d.code())
            .map(|c| c.into_owned()),
        _ => None,
    }
}

/// Connections of the pool that are in use (the lane's count as in use).
fn checked_out(f: &Fixture) -> usize {
    usize::try_from(f.raw.size()).unwrap() - f.raw.num_idle()
}

/// Two tenants with their own projects, and what each must see.
async fn two_tenants(f: &Fixture) -> [(TenantId, Vec<String>); 2] {
    let (a, b) = (TenantId::new_random(), TenantId::new_random());
    for name in ["a1", "a2"] {
        add_project(&f.pool, a, name).await;
    }
    add_project(&f.pool, b, "b1").await;
    [(a, vec!["a1".into(), "a2".into()]), (b, vec!["b1".into()])]
}

#[tokio::test]
async fn a_kept_connection_serves_read_after_read_for_each_bound_tenant_only() {
    let (f, pool) = laned(3, 1).await;
    let tenants = two_tenants(&f).await;
    let first = backend(&pool, tenants[0].0).await.unwrap();
    for i in 0..40 {
        let (tenant, expected) = &tenants[i % 2];
        assert_eq!(&names(&pool, *tenant).await.unwrap(), expected);
        // The same server connection every time, and it stays with the lane: the pool holds
        // no idle connection of it (a read on the plain pool gives its connection back).
        assert_eq!(backend(&pool, *tenant).await.unwrap(), first);
    }
    // (Connections other code gave back reach the pool after its release check: let it run.)
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        checked_out(&f),
        1,
        "the kept connection went back to the pool"
    );
    // Control: without the lane the same read hands its connection back to the pool.
    assert_eq!(&names(&f.pool, tenants[1].0).await.unwrap(), &tenants[1].1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(checked_out(&f), 1);
    // Nothing bound stays on the kept connection between reads.
    let mut conn = f.raw.acquire().await.unwrap();
    assert_unbound_sees_and_changes_nothing(&mut conn, &f.db).await;
}

#[tokio::test]
async fn a_read_dropped_mid_statement_never_serves_the_next_read() {
    let (f, pool) = laned(3, 1).await;
    let tenants = two_tenants(&f).await;
    let mut interrupted = 0;
    for i in 0..24u64 {
        let (tenant, _) = &tenants[usize::from(i % 2 == 1)];
        let (other, expected) = &tenants[usize::from(i % 2 == 0)];
        // A long result that is still streaming (or a statement still running) when its
        // future is dropped: rows of it, and its ready message, are left on the connection.
        let cut = Duration::from_millis(1 + i % 8);
        let read = async {
            if i % 3 == 0 {
                pool.read(&ctx(*tenant), "SELECT name, pg_sleep(0.05) FROM projects")
                    .fetch_all::<(String, ())>()
                    .await
                    .map(|r| r.len())
            } else {
                pool.read(
                    &ctx(*tenant),
                    "SELECT p.name, g FROM projects p, generate_series(1, 200000) g",
                )
                .fetch_all::<(String, i32)>()
                .await
                .map(|r| r.len())
            }
        };
        // (A read can finish before its cut: this runtime has one thread, and a poll that
        // finds its rows already buffered, or other tasks running at the deadline, lets it.)
        if tokio::time::timeout(cut, read).await.is_err() {
            interrupted += 1;
        }
        // The next read, for the other tenant, gets exactly its own rows in its own shape.
        assert_eq!(&names(&pool, *other).await.unwrap(), expected, "round {i}");
        let (n,): (i64,) = pool
            .read(&ctx(*other), "SELECT count(*) FROM projects")
            .fetch_optional()
            .await
            .unwrap()
            .unwrap();
        assert_eq!(usize::try_from(n).unwrap(), expected.len(), "round {i}");
    }
    assert!(
        interrupted >= 12,
        "only {interrupted} reads were cut mid-statement"
    );
}

#[tokio::test]
async fn a_connection_left_mid_result_goes_to_the_pools_check_at_once() {
    let (f, pool) = laned(3, 1).await;
    let tenants = two_tenants(&f).await;
    let admin = f.db.pool(Role::Admin, 1).await;
    let state = |pid: i32| {
        let admin = admin.clone();
        async move {
            let (state,): (Option<String>,) =
                sqlx::query_as("SELECT state FROM pg_stat_activity WHERE pid = $1")
                    .bind(pid)
                    .fetch_one(&admin)
                    .await
                    .unwrap();
            state
        }
    };
    for round in 0..3 {
        let pid = backend(&pool, tenants[0].0).await.unwrap();
        // Megabytes of rows: once the read is dropped nobody reads them, so the server blocks
        // sending them until someone drains the connection.
        let cut = tokio::time::timeout(
            Duration::from_millis(5),
            pool.read(
                &ctx(tenants[0].0),
                "SELECT p.name, g FROM projects p, generate_series(1, 200000) g",
            )
            .fetch_all::<(String, i32)>(),
        )
        .await;
        assert!(cut.is_err(), "round {round}: the read finished within 5 ms");
        // No other read runs: the pool's release check, not a later read, drains it.
        let started = std::time::Instant::now();
        while state(pid).await.as_deref() != Some("idle") {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "round {round}: the interrupted connection was left holding its statement"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Control: a read that finishes leaves its kept connection idle at once.
    let pid = backend(&pool, tenants[1].0).await.unwrap();
    assert_eq!(state(pid).await.as_deref(), Some("idle"));
}

#[tokio::test]
async fn an_error_the_server_answers_keeps_the_connection_and_the_next_read_is_clean() {
    let (f, pool) = laned(3, 1).await;
    let tenants = two_tenants(&f).await;
    let pid = backend(&pool, tenants[0].0).await.unwrap();
    for _ in 0..5 {
        let refused = pool
            .read(
                &ctx(tenants[0].0),
                "SELECT 1 / (count(*) - count(*))::int FROM projects",
            )
            .fetch_all::<(i32,)>()
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&refused).as_deref(), Some("22012"), "{refused:?}");
        assert_eq!(&names(&pool, tenants[1].0).await.unwrap(), &tenants[1].1);
        assert_eq!(backend(&pool, tenants[1].0).await.unwrap(), pid);
    }
}

#[tokio::test]
async fn a_kept_connection_that_died_while_idle_is_replaced_without_failing_a_read() {
    let (f, pool) = laned(4, 2).await;
    let tenants = two_tenants(&f).await;
    let admin = f.db.pool(Role::Admin, 1).await;
    let kill = |pid: i32| {
        let admin = admin.clone();
        async move {
            let (killed,): (bool,) = sqlx::query_as("SELECT pg_terminate_backend($1, 5000)")
                .bind(pid)
                .fetch_one(&admin)
                .await
                .unwrap();
            assert!(killed);
        }
    };
    for round in 0..3 {
        // Both kept connections in use at once, so that the lane holds two.
        let (x, y) = tokio::join!(
            pool.read(
                &ctx(tenants[0].0),
                "SELECT pg_backend_pid(), pg_sleep(0.05)"
            )
            .fetch_all::<(i32, ())>(),
            pool.read(
                &ctx(tenants[1].0),
                "SELECT pg_backend_pid(), pg_sleep(0.05)"
            )
            .fetch_all::<(i32, ())>(),
        );
        let pids = [x.unwrap()[0].0, y.unwrap()[0].0];
        assert_ne!(pids[0], pids[1]);
        // The server ends both while they sit idle in the lane (a restart, an idle timeout).
        for pid in pids {
            kill(pid).await;
        }
        // Each read still answers, with its own tenant's rows, on a new connection.
        for (tenant, expected) in &tenants {
            assert_eq!(
                &names(&pool, *tenant).await.unwrap(),
                expected,
                "round {round}"
            );
            assert!(!pids.contains(&backend(&pool, *tenant).await.unwrap()));
        }
    }
    // Terminated in the middle of a read on a connection just taken from the pool: the server
    // reports it (SQLSTATE 57P01) before it closes the socket. That read fails (only a kept
    // connection that died while idle earns a second try), and the connection is not kept.
    for round in 0..3 {
        let lane = f.pool.clone().with_read_connections(1).unwrap();
        let running = {
            let lane = lane.clone();
            let tenant = tenants[0].0;
            tokio::spawn(async move {
                lane.read(&ctx(tenant), "SELECT pg_sleep(5)")
                    .fetch_all::<((),)>()
                    .await
            })
        };
        let started = std::time::Instant::now();
        let pid = loop {
            let found: Option<(i32,)> = sqlx::query_as(
                "SELECT pid FROM pg_stat_activity \
                 WHERE state = 'active' AND query LIKE '%pg_sleep(5)%' AND pid <> pg_backend_pid()",
            )
            .fetch_optional(&admin)
            .await
            .unwrap();
            if let Some((pid,)) = found {
                break pid;
            }
            assert!(started.elapsed() < Duration::from_secs(5), "round {round}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        kill(pid).await;
        let failed = running.await.unwrap().unwrap_err();
        assert_eq!(sqlstate(&failed).as_deref(), Some("57P01"), "{failed:?}");
        assert_eq!(&names(&lane, tenants[0].0).await.unwrap(), &tenants[0].1);
        assert_ne!(backend(&lane, tenants[0].0).await.unwrap(), pid);
    }
}

#[tokio::test]
async fn reads_beyond_the_lane_wait_their_turn_and_transactions_keep_the_rest_of_the_pool() {
    let (f, pool) = laned(3, 2).await;
    let tenants = two_tenants(&f).await;
    let reads = (0..12).map(|i| {
        let (pool, (tenant, expected)) = (pool.clone(), tenants[i % 2].clone());
        tokio::spawn(async move {
            let rows: Vec<(String, ())> = pool
                .read(
                    &ctx(tenant),
                    "SELECT name, pg_sleep(0.05) FROM projects ORDER BY name",
                )
                .fetch_all()
                .await
                .unwrap();
            assert_eq!(rows.into_iter().map(|r| r.0).collect::<Vec<_>>(), expected);
        })
    });
    let reads: Vec<_> = reads.collect();
    // While twelve reads queue for two kept connections, a transaction gets the third at once.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let started = std::time::Instant::now();
    let mut tx = f.pool.begin(&ctx(tenants[0].0)).await.unwrap();
    sqlx::query("SELECT 1").execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(150),
        "the transaction waited {:?} for a connection",
        started.elapsed()
    );
    for read in reads {
        read.await.unwrap();
    }
    assert!(f.raw.size() <= 3);
}

#[tokio::test]
async fn a_read_that_cannot_get_a_kept_connection_in_time_fails() {
    let f = fixture(2).await;
    let (_, pool) = laned_pool(
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_millis(300)),
        f.db.options(Role::Runtime),
    )
    .await;
    let tenant = TenantId::new_random();
    let holder = {
        let pool = pool.clone();
        tokio::spawn(async move {
            pool.read(&ctx(tenant), "SELECT pg_sleep(1.5)")
                .fetch_all::<((),)>()
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    let waited = names(&pool, tenant).await.unwrap_err();
    assert!(waited.is_unavailable(), "{waited:?}");
    assert!(started.elapsed() < Duration::from_secs(1));
    // Control: once the lane's connection is free again the same read runs.
    holder.await.unwrap().unwrap();
    assert!(names(&pool, tenant).await.unwrap().is_empty());
}

#[tokio::test]
async fn closing_the_pool_hands_the_kept_connections_back() {
    let (f, pool) = laned(3, 2).await;
    let tenants = two_tenants(&f).await;
    // Both kept connections taken and kept.
    let (x, y) = tokio::join!(
        pool.read(&ctx(tenants[0].0), "SELECT pg_sleep(0.1)")
            .fetch_all::<((),)>(),
        pool.read(&ctx(tenants[1].0), "SELECT pg_sleep(0.1)")
            .fetch_all::<((),)>(),
    );
    x.unwrap();
    y.unwrap();
    assert_eq!(checked_out(&f), 2);
    tokio::time::timeout(Duration::from_secs(5), f.raw.close())
        .await
        .expect("close waited for the kept connections");
    let closed = names(&pool, tenants[0].0).await.unwrap_err();
    assert!(closed.is_unavailable(), "{closed:?}");
}

#[tokio::test]
async fn the_lane_leaves_the_pool_at_least_one_connection() {
    let f = fixture(3).await;
    for refused in [0, 3, 4, u32::MAX] {
        let e = f.pool.clone().with_read_connections(refused).unwrap_err();
        assert!(
            matches!(e, RlsError::KeptConnections { requested, kept: 0, max: 3 } if requested == refused),
            "{e:?}"
        );
    }
    // Control: one fewer than the pool's size is kept.
    let pool = f.pool.clone().with_read_connections(2).unwrap();
    assert!(
        names(&pool, TenantId::new_random())
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn lanes_of_one_pool_together_leave_it_a_connection() {
    let f = fixture(3).await;
    let a = f.pool.clone().with_read_connections(2).unwrap();
    // Another lane on a clone of the same pool would keep the last connection too.
    let refused = f.pool.clone().with_read_connections(1).unwrap_err();
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
    // With both of `a`'s connections kept, a transaction still gets the third.
    let t = TenantId::new_random();
    let (x, y) = tokio::join!(
        a.read(&ctx(t), "SELECT pg_sleep(0.1)").fetch_all::<((),)>(),
        a.read(&ctx(t), "SELECT pg_sleep(0.1)").fetch_all::<((),)>(),
    );
    x.unwrap();
    y.unwrap();
    let tx = f.pool.begin(&ctx(t)).await.unwrap();
    tx.commit().await.unwrap();
    // Control: once `a` is gone, its connections count no more.
    drop(a);
    let b = f.pool.clone().with_read_connections(2).unwrap();
    assert!(names(&b, t).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_cancelled_or_timed_out_read_on_a_kept_connection_is_not_run_again() {
    let f = fixture(3).await;
    let pool = f.pool.clone().with_read_connections(1).unwrap();
    let admin = f.db.pool(Role::Admin, 1).await;
    let tenant = TenantId::new_random();
    let kept = backend(&pool, tenant).await.unwrap();
    let running = {
        let pool = pool.clone();
        tokio::spawn(async move {
            pool.read(&ctx(tenant), "SELECT pg_backend_pid(), pg_sleep(1)")
                .fetch_all::<(i32, ())>()
                .await
        })
    };
    let started = std::time::Instant::now();
    loop {
        let (active,): (bool,) = sqlx::query_as(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND state = 'active')",
        )
        .bind(kept)
        .fetch_one(&admin)
        .await
        .unwrap();
        if active {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    sqlx::query("SELECT pg_cancel_backend($1)")
        .bind(kept)
        .execute(&admin)
        .await
        .unwrap();
    let cancelled = running.await.unwrap().unwrap_err();
    assert_eq!(
        sqlstate(&cancelled).as_deref(),
        Some("57014"),
        "{cancelled:?}"
    );
    // The connection is sound and kept: the next read runs on it.
    assert_eq!(backend(&pool, tenant).await.unwrap(), kept);

    // A statement timeout: one run of the timeout, not two.
    let (_, pool) = laned_pool(
        sqlx::postgres::PgPoolOptions::new().max_connections(2),
        f.db.options(Role::Runtime)
            .options([("statement_timeout", "400")]),
    )
    .await;
    backend(&pool, tenant).await.unwrap();
    let started = std::time::Instant::now();
    let timed_out = pool
        .read(&ctx(tenant), "SELECT pg_sleep(2)")
        .fetch_all::<((),)>()
        .await
        .unwrap_err();
    assert_eq!(
        sqlstate(&timed_out).as_deref(),
        Some("57014"),
        "{timed_out:?}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(750),
        "the timed-out read ran again: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_kept_connection_goes_back_once_the_pools_lifetime_has_passed_since_it_was_opened() {
    let f = fixture(3).await;
    let raw = sqlx::postgres::PgPoolOptions::new()
        .max_connections(3)
        .max_lifetime(Duration::from_secs(3))
        .connect_with(f.db.options(Role::Runtime))
        .await
        .unwrap();
    let pool = TenantPool::new(raw.clone()).await.unwrap();
    // A connection the pool opened 2.5 s before the lane takes it.
    sqlx::query("SELECT 1").execute(&raw).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let pool = pool.with_read_connections(1).unwrap();
    let admin = f.db.pool(Role::Admin, 1).await;
    let tenant = TenantId::new_random();
    let started = std::time::Instant::now();
    let mut pids = std::collections::BTreeSet::new();
    while started.elapsed() < Duration::from_secs(3) {
        let pid = backend(&pool, tenant).await.unwrap();
        pids.insert(pid);
        // (No row: the pool has closed that connection since.)
        let age: Option<(f64,)> = sqlx::query_as(
            "SELECT extract(epoch FROM clock_timestamp() - backend_start)::float8 \
             FROM pg_stat_activity WHERE pid = $1",
        )
        .bind(pid)
        .fetch_optional(&admin)
        .await
        .unwrap();
        if let Some((age,)) = age {
            assert!(
                age < 3.6,
                "a read ran on a connection {age:.2} s old (max lifetime 3 s)"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Control: the lane did keep connections (fewer backends than reads), and changed once.
    assert!(pids.len() >= 2 && pids.len() <= 4, "{pids:?}");
}

/// A `FromRow` that reports its own failure as a database error, with a statement-level code.
mod claims {
    use std::borrow::Cow;

    #[derive(Debug)]
    pub(super) struct Claimed;
    impl std::fmt::Display for Claimed {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("invalid row")
        }
    }
    impl std::error::Error for Claimed {}
    impl sqlx::error::DatabaseError for Claimed {
        fn message(&self) -> &str {
            "invalid row"
        }
        fn code(&self) -> Option<Cow<'_, str>> {
            Some(Cow::Borrowed("22023"))
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> sqlx::error::ErrorKind {
            sqlx::error::ErrorKind::Other
        }
    }

    pub(super) struct Strict;
    impl<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> for Strict {
        fn from_row(_: &'r sqlx::postgres::PgRow) -> Result<Self, sqlx::Error> {
            Err(sqlx::Error::Database(Box::new(Claimed)))
        }
    }
}

#[tokio::test]
async fn a_row_error_that_claims_to_come_from_the_server_does_not_keep_the_connection() {
    let (f, pool) = laned(3, 1).await;
    let tenants = two_tenants(&f).await;
    for _ in 0..3 {
        // The first row fails to decode while the server is still sending the rest, ending
        // with an error of its own.
        let refused = pool
            .read(
                &ctx(tenants[0].0),
                "SELECT CASE WHEN g < 50000 THEN g ELSE 1 / (g - g) END \
                 FROM generate_series(1, 60000) g",
            )
            .fetch_all::<claims::Strict>()
            .await
            .err()
            .unwrap();
        assert_eq!(sqlstate(&refused).as_deref(), Some("22023"));
        // The other tenant's read gets its own rows, not the first read's leftovers or error.
        assert_eq!(&names(&pool, tenants[1].0).await.unwrap(), &tenants[1].1);
    }
}

#[tokio::test]
async fn a_connection_death_code_raised_by_sql_earns_no_second_run() {
    let (f, pool) = laned(3, 1).await;
    let owner = f.db.pool(Role::Owner, 1).await;
    sqlx::raw_sql(
        "CREATE FUNCTION raise_after_a_while(code text) RETURNS int LANGUAGE plpgsql VOLATILE AS $f$ \
         BEGIN PERFORM pg_sleep(0.4); RAISE EXCEPTION 'raised' USING ERRCODE = code; END $f$; \
         GRANT EXECUTE ON FUNCTION raise_after_a_while(text) TO testkit_runtime;",
    )
    .execute(&owner)
    .await
    .unwrap();
    let tenant = TenantId::new_random();
    for code in ["57P01", "08006", "57P05", "22023"] {
        // A kept connection that sat idle: the case in which a real death earns a second run.
        let kept = backend(&pool, tenant).await.unwrap();
        let started = std::time::Instant::now();
        let raised = pool
            .read(&ctx(tenant), "SELECT raise_after_a_while($1)")
            .bind(code)
            .fetch_all::<(i32,)>()
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&raised).as_deref(), Some(code), "{raised:?}");
        assert!(
            started.elapsed() < Duration::from_millis(750),
            "{code}: the read ran twice ({:?})",
            started.elapsed()
        );
        // The session goes on, and the read after it runs on it (22023) or on a connection the
        // pool checked (the connection-level classes are not kept).
        let next = backend(&pool, tenant).await.unwrap();
        if code == "22023" {
            assert_eq!(next, kept);
        }
    }
}

#[tokio::test]
async fn a_kept_connection_idle_past_the_pools_lifetime_is_not_used() {
    let f = fixture(3).await;
    let (_, pool) = laned_pool(
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(3)
            .max_lifetime(Duration::from_secs(2)),
        f.db.options(Role::Runtime),
    )
    .await;
    let tenant = TenantId::new_random();
    let age = || async {
        let (pid, age): (i32, f64) = pool
            .read(
                &ctx(tenant),
                "SELECT pg_backend_pid(), \
                 extract(epoch FROM clock_timestamp() - backend_start)::float8 \
                 FROM pg_stat_activity WHERE pid = pg_backend_pid()",
            )
            .fetch_optional()
            .await
            .unwrap()
            .unwrap();
        (pid, age)
    };
    let (first, _) = age().await;
    // Control: right after, the kept connection serves the next read.
    assert_eq!(age().await.0, first);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // The kept one is past its lifetime: the read runs on another connection (which may be
    // as old, taken from the pool's idle ones, and is then not kept beyond this read).
    let (second, _) = age().await;
    assert_ne!(
        second, first,
        "a kept connection ran a read past its lifetime"
    );
    let (third, third_age) = age().await;
    assert!(
        third != second || third_age < 2.0,
        "a connection {third_age:.2} s old was kept"
    );
}

#[tokio::test]
async fn asking_again_replaces_the_pools_own_lane() {
    let f = fixture(3).await;
    let pool = f.pool.clone().with_read_connections(2).unwrap();
    backend(&pool, TenantId::new_random()).await.unwrap();
    // The same pool value, asked again: its old lane does not count against the new one.
    let pool = pool.with_read_connections(2).unwrap();
    backend(&pool, TenantId::new_random()).await.unwrap();
    // A clone's lane still counts.
    let _clone = pool.clone();
    let refused = f.pool.clone().with_read_connections(1).unwrap_err();
    assert!(
        matches!(refused, RlsError::KeptConnections { kept: 2, .. }),
        "{refused:?}"
    );
}

#[test]
fn a_lane_dropped_outside_any_runtime_hands_its_connections_back() {
    let made = tokio::runtime::Runtime::new().unwrap();
    let (f, pool) = made.block_on(async {
        let (f, pool) = laned(3, 1).await;
        backend(&pool, TenantId::new_random()).await.unwrap();
        (f, pool)
    });
    // The lane holds a connection; its runtime is still there, the caller is outside it.
    let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(pool)));
    assert!(
        dropped.is_ok(),
        "dropping the lane outside a runtime panicked"
    );
    made.block_on(async {
        // The connection went back to the pool.
        let started = std::time::Instant::now();
        while checked_out(&f) != 0 {
            assert!(started.elapsed() < Duration::from_secs(5), "still kept");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(f);
    });
}
