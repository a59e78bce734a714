//! The harness itself: real clusters, cleaned up on drop and on panic; isolated databases;
//! least-privilege roles.
// Integration tests: a failed unwrap is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Instant;

use nix::sys::signal::kill;
use nix::unistd::Pid;
use sqlx::Connection;
use testkit::{ClusterOptions, PgCluster, Role, Template, fresh_database};

fn alive(pid: u32) -> bool {
    kill(Pid::from_raw(pid as i32), None).is_ok()
}

#[test]
fn cluster_starts_quickly_and_is_removed_on_drop() {
    let started = Instant::now();
    let cluster = PgCluster::start().unwrap();
    let elapsed = started.elapsed();
    eprintln!("throwaway cluster ready in {elapsed:?}");
    let (dir, pid) = (cluster.dir().to_path_buf(), cluster.pid());
    assert!(dir.exists() && alive(pid));
    drop(cluster);
    assert!(!dir.exists(), "cluster directory left behind");
    assert!(!alive(pid), "postmaster still running");
}

#[test]
fn cluster_is_stopped_and_removed_when_a_test_panics() {
    let (tx, rx) = std::sync::mpsc::channel();
    let outcome = std::panic::catch_unwind(move || {
        let cluster = PgCluster::start().unwrap();
        tx.send((cluster.dir().to_path_buf(), cluster.pid()))
            .unwrap();
        panic!("test failed while holding the cluster");
    });
    assert!(outcome.is_err());
    let (dir, pid) = rx.recv().unwrap();
    assert!(!dir.exists(), "cluster directory left behind after a panic");
    assert!(!alive(pid), "postmaster still running after a panic");
}

#[tokio::test]
async fn tcp_cluster_accepts_loopback_connections() {
    let cluster = PgCluster::start_with(&ClusterOptions::new().with_tcp(true)).unwrap();
    let mut conn =
        sqlx::PgConnection::connect_with(&cluster.connect_options(testkit::ADMIN_ROLE, "postgres"))
            .await
            .unwrap();
    let addr: Option<String> = sqlx::query_scalar("SELECT host(inet_server_addr())")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(addr.as_deref(), Some("127.0.0.1"));
}

fn notes() -> Template {
    Template::new(
        "harness_notes",
        "CREATE TABLE notes (id serial PRIMARY KEY, body text NOT NULL);
         GRANT SELECT, INSERT ON notes TO testkit_runtime;
         GRANT USAGE ON SEQUENCE notes_id_seq TO testkit_runtime;",
    )
}

#[tokio::test]
async fn each_test_database_is_fresh_and_isolated() {
    let one = fresh_database(&notes()).await;
    let two = fresh_database(&notes()).await;
    assert_ne!(one.name(), two.name());
    let p1 = one.pool(Role::Runtime, 2).await;
    sqlx::query("INSERT INTO notes (body) VALUES ('only in one')")
        .execute(&p1)
        .await
        .unwrap();
    let p2 = two.pool(Role::Runtime, 2).await;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM notes")
        .fetch_one(&p2)
        .await
        .unwrap();
    assert_eq!(n, 0);
}

#[tokio::test]
async fn runtime_role_is_least_privilege_and_owns_nothing() {
    let db = fresh_database(&notes()).await;
    let pool = db.pool(Role::Runtime, 1).await;
    let (user, superuser, bypass, createrole, createdb): (String, bool, bool, bool, bool) =
        sqlx::query_as(
            "SELECT rolname::text, rolsuper, rolbypassrls, rolcreaterole, rolcreatedb
             FROM pg_roles WHERE rolname = current_user",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(user, testkit::RUNTIME_ROLE);
    assert!(!superuser && !bypass && !createrole && !createdb);
    let owned: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_class WHERE relowner = (SELECT oid FROM pg_roles WHERE rolname = current_user)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(owned, 0);
    // The runtime role cannot alter the owner's table.
    let err = sqlx::query("ALTER TABLE notes DISABLE ROW LEVEL SECURITY")
        .execute(&pool)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("must be owner"), "{err}");

    let owner = db.pool(Role::Owner, 1).await;
    let owns: String =
        sqlx::query_scalar("SELECT tableowner::text FROM pg_tables WHERE tablename = 'notes'")
            .fetch_one(&owner)
            .await
            .unwrap();
    assert_eq!(owns, testkit::OWNER_ROLE);
}

#[tokio::test]
async fn a_stopped_server_refuses_connections_and_comes_back_with_its_data() {
    let cluster = PgCluster::start().unwrap();
    let options = cluster.connect_options(testkit::ADMIN_ROLE, "postgres");
    let mut conn = sqlx::PgConnection::connect_with(&options).await.unwrap();
    sqlx::raw_sql("CREATE TABLE kept (id int); INSERT INTO kept VALUES (7)")
        .execute(&mut conn)
        .await
        .unwrap();
    let first = cluster.pid();
    cluster.stop_server();
    assert!(!alive(first), "postmaster still running");
    assert_eq!(cluster.pid(), 0);
    assert!(sqlx::raw_sql("SELECT 1").execute(&mut conn).await.is_err());
    assert!(sqlx::PgConnection::connect_with(&options).await.is_err());
    cluster.start_server().unwrap();
    assert!(alive(cluster.pid()) && cluster.pid() != first);
    let mut again = sqlx::PgConnection::connect_with(&options).await.unwrap();
    let kept: i32 = sqlx::query_scalar("SELECT id FROM kept")
        .fetch_one(&mut again)
        .await
        .unwrap();
    assert_eq!(kept, 7);
    let dir = cluster.dir().to_path_buf();
    drop(again);
    drop(cluster);
    assert!(!dir.exists());
}

#[tokio::test]
async fn pgbouncer_in_transaction_mode_shares_one_server_connection() {
    use testkit::{PgBouncer, PoolMode, RUNTIME_ROLE, TestServer};
    let db = fresh_database(&notes()).await;
    let bouncer = testkit::require(PgBouncer::start(
        testkit::require(TestServer::shared().await),
        PoolMode::Transaction,
        1,
        &[RUNTIME_ROLE],
    ));
    let options = bouncer.options(RUNTIME_ROLE, db.name());
    let mut a = sqlx::PgConnection::connect_with(&options).await.unwrap();
    let mut b = sqlx::PgConnection::connect_with(&options).await.unwrap();
    let pid = |row: sqlx::postgres::PgRow| sqlx::Row::get::<i32, _>(&row, 0);
    let pa = pid(sqlx::raw_sql("SELECT pg_backend_pid()")
        .fetch_one(&mut a)
        .await
        .unwrap());
    let pb = pid(sqlx::raw_sql("SELECT pg_backend_pid()")
        .fetch_one(&mut b)
        .await
        .unwrap());
    assert_eq!(pa, pb, "two clients, one server connection");
    // Prepared statements work inside a transaction (the statement cache is off).
    let mut tx = a.begin().await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM notes WHERE id > $1")
        .bind(0)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(n, 0);
}
