//! Attacks on tenant isolation at the database layer, connecting as the runtime role.
// Integration tests: a failed unwrap is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::*;
use rand::Rng;
use rls_guard::RlsError;
use tenant_scope::TenantId;
use uuid::Uuid;

/// What injected SQL would run to switch a scoped transaction to another tenant.
async fn rebind(tx: &mut rls_guard::TenantTx, tenant: TenantId) {
    sqlx::query("SELECT set_config('app.tenant_id', $1, true)")
        .bind(tenant.to_string())
        .execute(&mut **tx)
        .await
        .unwrap();
}

#[tokio::test]
async fn no_tenant_on_a_fresh_connection_sees_and_changes_nothing() {
    let f = fixture(2).await;
    add_project(&f.pool, TenantId::new_random(), "a-secret").await;
    let mut conn = f.raw.acquire().await.unwrap();
    assert_unbound_sees_and_changes_nothing(&mut conn, &f.db).await;
}

#[tokio::test]
async fn no_tenant_on_a_reused_connection_sees_and_changes_nothing() {
    let f = fixture(1).await;
    let a = TenantId::new_random();
    add_project(&f.pool, a, "a-secret").await;
    // The single connection just served tenant A; unbound, it must have forgotten A.
    let mut conn = f.raw.acquire().await.unwrap();
    assert_unbound_sees_and_changes_nothing(&mut conn, &f.db).await;
}

#[tokio::test]
async fn moving_a_row_to_another_tenant_is_rejected() {
    let f = fixture(2).await;
    let (a, b) = (TenantId::new_random(), TenantId::new_random());
    add_project(&f.pool, a, "mine").await;
    let mut tx = f.pool.begin(&ctx(a)).await.unwrap();
    let err = sqlx::query("UPDATE projects SET tenant_id = $1")
        .bind(b.as_uuid())
        .execute(&mut *tx)
        .await
        .unwrap_err();
    assert!(is_rls_violation(&err), "{err}");
    tx.rollback().await.unwrap();
    assert_eq!(visible(&f.pool, a).await.len(), 1);
    assert!(visible(&f.pool, b).await.is_empty());
}

#[tokio::test]
async fn inserting_a_row_for_another_tenant_is_rejected() {
    let f = fixture(2).await;
    let (a, b) = (TenantId::new_random(), TenantId::new_random());
    let mut tx = f.pool.begin(&ctx(a)).await.unwrap();
    let err = sqlx::query("INSERT INTO projects (tenant_id, name) VALUES ($1, 'planted')")
        .bind(b.as_uuid())
        .execute(&mut *tx)
        .await
        .unwrap_err();
    assert!(is_rls_violation(&err), "{err}");
    tx.rollback().await.unwrap();
    assert_eq!(count_all(&f.db, "projects").await, 0);
}

#[tokio::test]
async fn another_tenants_row_by_primary_key_looks_exactly_like_a_missing_row() {
    let f = fixture(2).await;
    let (a, b) = (TenantId::new_random(), TenantId::new_random());
    let b_project = add_project(&f.pool, b, "b-secret").await;
    let mut tx = f.pool.begin(&ctx(a)).await.unwrap();
    let mut outcomes = Vec::new();
    for id in [b_project, Uuid::new_v4()] {
        let row: Option<(Uuid, String)> =
            sqlx::query_as("SELECT id, name FROM projects WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .unwrap();
        let updated = sqlx::query("UPDATE projects SET name = 'x' WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .unwrap()
            .rows_affected();
        let deleted = sqlx::query("DELETE FROM projects WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .unwrap()
            .rows_affected();
        outcomes.push((row, updated, deleted));
    }
    tx.commit().await.unwrap();
    assert_eq!(outcomes[0], outcomes[1]);
    assert_eq!(outcomes[0], (None, 0, 0));
    assert_eq!(
        visible(&f.pool, b).await,
        vec![(*b.as_uuid(), "b-secret".to_owned())]
    );
}

async fn assert_connection_clean_for_b(f: &Fixture, a: TenantId) {
    // The one pooled connection, unbound: no binding, no rows.
    {
        let mut conn = f.raw.acquire().await.unwrap();
        assert_unbound_sees_and_changes_nothing(&mut conn, &f.db).await;
    }
    // Bound to B: only B's rows, never A's.
    let b = TenantId::new_random();
    add_project(&f.pool, b, "b-row").await;
    let seen = visible(&f.pool, b).await;
    assert_eq!(seen, vec![(*b.as_uuid(), "b-row".to_owned())]);
    assert!(seen.iter().all(|(t, _)| t != a.as_uuid()));
}

#[tokio::test]
async fn pool_of_one_reused_after_commit() {
    let f = fixture(1).await;
    let a = TenantId::new_random();
    add_project(&f.pool, a, "a-row").await;
    assert_connection_clean_for_b(&f, a).await;
}

/// Sequence state is the session's, not the transaction's: a number tenant A's transaction drew
/// (`lastval`, `currval`) must not be readable by tenant B's transaction on the same pooled
/// connection. Control: inside A's transaction it is A's.
#[tokio::test]
async fn pool_of_one_reused_after_a_sequence_was_drawn() {
    let f = fixture(1).await;
    let admin = f.db.pool(testkit::Role::Admin, 1).await;
    sqlx::raw_sql(&format!(
        "CREATE SEQUENCE leak_seq START 4242; GRANT USAGE ON SEQUENCE leak_seq TO {}",
        testkit::RUNTIME_ROLE
    ))
    .execute(&admin)
    .await
    .unwrap();
    let a = TenantId::new_random();
    let mut tx = f.pool.begin(&ctx(a)).await.unwrap();
    let drawn: i64 = sqlx::query_scalar("SELECT nextval('leak_seq')")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    let last: i64 = sqlx::query_scalar("SELECT lastval()")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!((drawn, last), (4242, 4242), "control");
    tx.commit().await.unwrap();
    for sql in ["SELECT lastval()", "SELECT currval('leak_seq')"] {
        let b = TenantId::new_random();
        let mut tx = f.pool.begin(&ctx(b)).await.unwrap();
        let seen = sqlx::query_scalar::<_, i64>(sql).fetch_one(&mut *tx).await;
        let code = seen
            .as_ref()
            .err()
            .and_then(|e| e.as_database_error())
            .and_then(|d| d.code())
            .map(|c| c.into_owned());
        assert_eq!(code.as_deref(), Some("55000"), "{sql}: {seen:?}");
        tx.rollback().await.unwrap();
    }
    assert_connection_clean_for_b(&f, a).await;
}

#[tokio::test]
async fn pool_of_one_reused_after_rollback() {
    let f = fixture(1).await;
    let a = TenantId::new_random();
    add_project(&f.pool, a, "a-row").await;
    let mut tx = f.pool.begin(&ctx(a)).await.unwrap();
    sqlx::query("INSERT INTO projects (tenant_id, name) VALUES ($1, 'rolled back')")
        .bind(a.as_uuid())
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(visible(&f.pool, a).await.len(), 1);
    assert_connection_clean_for_b(&f, a).await;
}

#[tokio::test]
async fn pool_of_one_reused_after_sql_error() {
    let f = fixture(1).await;
    let a = TenantId::new_random();
    add_project(&f.pool, a, "a-row").await;
    let mut tx = f.pool.begin(&ctx(a)).await.unwrap();
    sqlx::query("SELECT 1/0")
        .execute(&mut *tx)
        .await
        .unwrap_err();
    // The transaction is aborted; committing it must not succeed.
    assert!(tx.commit().await.is_err());
    assert_connection_clean_for_b(&f, a).await;
}

#[tokio::test]
async fn pool_of_one_reused_after_panic() {
    let f = fixture(1).await;
    let a = TenantId::new_random();
    add_project(&f.pool, a, "a-row").await;
    let pool = f.pool.clone();
    let joined = tokio::spawn(async move {
        let mut tx = pool.begin(&ctx(a)).await.unwrap();
        sqlx::query("INSERT INTO projects (tenant_id, name) VALUES ($1, 'half done')")
            .bind(a.as_uuid())
            .execute(&mut *tx)
            .await
            .unwrap();
        panic!("handler bug while holding a tenant transaction");
    })
    .await;
    assert!(joined.unwrap_err().is_panic());
    assert_eq!(
        visible(&f.pool, a).await.len(),
        1,
        "half-done insert was committed"
    );
    assert_connection_clean_for_b(&f, a).await;
}

#[tokio::test]
async fn pool_of_one_reused_after_a_cancelled_future() {
    let f = fixture(1).await;
    let a = TenantId::new_random();
    add_project(&f.pool, a, "a-row").await;
    let pool = f.pool.clone();
    let slow = async move {
        let mut tx = pool.begin(&ctx(a)).await.unwrap();
        sqlx::query("INSERT INTO projects (tenant_id, name) VALUES ($1, 'cancelled')")
            .bind(a.as_uuid())
            .execute(&mut *tx)
            .await
            .unwrap();
        // Cancelled while the server is busy mid-statement.
        sqlx::query("SELECT pg_sleep(5)")
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    };
    assert!(
        tokio::time::timeout(Duration::from_millis(300), slow)
            .await
            .is_err()
    );
    assert_eq!(
        visible(&f.pool, a).await.len(),
        1,
        "cancelled insert was committed"
    );
    assert_connection_clean_for_b(&f, a).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_tasks_with_random_tenants_see_only_their_rows() {
    let f = fixture(16).await;
    let (tenants, expected) = seed_ladder(&f.pool, 8).await;
    let mut handles = Vec::new();
    for _ in 0..250 {
        let t = tenants[rand::rng().random_range(0..tenants.len())];
        let pool = f.pool.clone();
        handles.push(tokio::spawn(async move {
            let mut tx = pool.begin(&ctx(t)).await.unwrap();
            let rows: Vec<Uuid> = sqlx::query_scalar("SELECT tenant_id FROM projects")
                .fetch_all(&mut *tx)
                .await
                .unwrap();
            tokio::task::yield_now().await;
            tx.commit().await.unwrap();
            (t, rows)
        }));
    }
    for handle in handles {
        let (t, rows) = handle.await.unwrap();
        assert_eq!(rows.len(), expected[&t]);
        assert!(
            rows.iter().all(|r| r == t.as_uuid()),
            "tenant {t} saw another tenant's row"
        );
    }
}

#[tokio::test]
async fn bad_settings_give_no_rows_or_an_error() {
    let f = fixture(1).await;
    add_project(&f.pool, TenantId::new_random(), "a-row").await;
    let mut conn = f.raw.acquire().await.unwrap();
    for (value, expect_error) in [
        ("", false),
        (&*Uuid::new_v4().to_string(), false),
        ("not-a-uuid", true),
        ("' OR true --", true),
    ] {
        // Simple-protocol statements (literals), so this also runs through PgBouncer.
        sqlx::raw_sql(&format!(
            "SELECT set_config('app.tenant_id', '{}', false)",
            value.replace('\'', "''")
        ))
        .execute(&mut *conn)
        .await
        .unwrap();
        let result: Result<i64, _> = sqlx::raw_sql("SELECT count(*) FROM projects")
            .fetch_one(&mut *conn)
            .await
            .map(|row| sqlx::Row::get(&row, 0));
        match result {
            Ok(n) => {
                assert!(!expect_error, "{value:?} should have been an error");
                assert_eq!(n, 0, "{value:?} matched rows");
            }
            Err(e) => assert!(expect_error, "{value:?}: unexpected {e}"),
        }
        let err =
            sqlx::raw_sql("INSERT INTO projects (tenant_id, name) VALUES (gen_random_uuid(), 'x')")
                .execute(&mut *conn)
                .await
                .unwrap_err();
        let _ = err;
    }
    drop(conn);
    assert_eq!(count_all(&f.db, "projects").await, 1);
}

#[tokio::test]
async fn switching_tenant_inside_a_scoped_transaction_is_detected_before_commit() {
    let f = fixture(1).await;
    let (a, b) = (TenantId::new_random(), TenantId::new_random());
    add_project(&f.pool, b, "b-row").await;
    let mut tx = f.pool.begin(&ctx(a)).await.unwrap();
    sqlx::query("INSERT INTO projects (tenant_id, name) VALUES ($1, 'written before the switch')")
        .bind(a.as_uuid())
        .execute(&mut *tx)
        .await
        .unwrap();
    // An injected statement rebinds the transaction to B and writes into B.
    rebind(&mut tx, b).await;
    sqlx::query("INSERT INTO projects (tenant_id, name) VALUES ($1, 'planted in b')")
        .bind(b.as_uuid())
        .execute(&mut *tx)
        .await
        .unwrap();
    let result = tx.commit().await;
    assert!(
        matches!(result, Err(RlsError::BindingChanged)),
        "{result:?}"
    );
    // Nothing of the transaction survived.
    assert!(visible(&f.pool, a).await.is_empty());
    assert_eq!(
        visible(&f.pool, b).await,
        vec![(*b.as_uuid(), "b-row".to_owned())]
    );
    assert_connection_clean_for_b(&f, a).await;
}

#[tokio::test]
async fn switching_back_before_commit_does_not_hide_a_write_to_another_tenant() {
    let f = fixture(1).await;
    let (a, b) = (TenantId::new_random(), TenantId::new_random());
    let mut tx = f.pool.begin(&ctx(a)).await.unwrap();
    for (tenant, sql) in [
        (
            b,
            "INSERT INTO projects (tenant_id, name) VALUES ($1, 'planted in b')",
        ),
        (a, "SELECT 1 WHERE $1::uuid IS NOT NULL"),
    ] {
        rebind(&mut tx, tenant).await;
        sqlx::query(sql)
            .bind(tenant.as_uuid())
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    // The binding reads "a" again at commit, but the written row belongs to b.
    assert!(matches!(tx.commit().await, Err(RlsError::BindingChanged)));
    assert_eq!(count_all(&f.db, "projects").await, 0);
}

#[tokio::test]
async fn deleting_another_tenants_row_after_a_switch_is_undone() {
    let f = fixture(1).await;
    let (a, b) = (TenantId::new_random(), TenantId::new_random());
    add_project(&f.pool, b, "b-row").await;
    let mut tx = f.pool.begin(&ctx(a)).await.unwrap();
    rebind(&mut tx, b).await;
    let deleted = sqlx::query("DELETE FROM projects")
        .execute(&mut *tx)
        .await
        .unwrap();
    assert_eq!(deleted.rows_affected(), 1);
    assert!(matches!(tx.commit().await, Err(RlsError::BindingChanged)));
    assert_eq!(
        visible(&f.pool, b).await,
        vec![(*b.as_uuid(), "b-row".to_owned())]
    );
}

#[tokio::test]
async fn clearing_the_actor_inside_a_scoped_transaction_is_detected() {
    let f = fixture(1).await;
    let a = TenantId::new_random();
    let mut tx = f.pool.begin(&ctx(a)).await.unwrap();
    sqlx::query("SELECT set_config('app.actor_id', '', true)")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("INSERT INTO projects (tenant_id, name) VALUES ($1, 'anonymous write')")
        .bind(a.as_uuid())
        .execute(&mut *tx)
        .await
        .unwrap();
    assert!(matches!(tx.commit().await, Err(RlsError::BindingChanged)));
    assert_eq!(count_all(&f.db, "projects").await, 0);
}

#[tokio::test]
async fn forcing_the_binding_check_to_run_early_fails() {
    let f = fixture(1).await;
    let (a, b) = (TenantId::new_random(), TenantId::new_random());
    let mut tx = f.pool.begin(&ctx(a)).await.unwrap();
    sqlx::query("SET CONSTRAINTS ALL IMMEDIATE")
        .execute(&mut *tx)
        .await
        .unwrap();
    rebind(&mut tx, b).await;
    let err = sqlx::query("INSERT INTO projects (tenant_id, name) VALUES ($1, 'planted in b')")
        .bind(b.as_uuid())
        .execute(&mut *tx)
        .await
        .unwrap_err();
    assert_eq!(
        err.as_database_error().unwrap().code().as_deref(),
        Some("TB001")
    );
    assert!(tx.commit().await.is_err());
    assert_eq!(count_all(&f.db, "projects").await, 0);
}

/// A prepared statement that SQL inside a transaction creates (it outlives the transaction, and
/// could later run in another user's transaction) never reaches the next user: the hand-back
/// refuses it, and the connection is closed instead of reused. The positive control: the same
/// transaction without it commits and the connection is reused.
async fn backend(conn: &mut sqlx::PgConnection) -> i32 {
    use sqlx::Row;
    sqlx::raw_sql("SELECT pg_backend_pid()")
        .fetch_one(conn)
        .await
        .unwrap()
        .get::<i32, _>(0)
}

#[tokio::test]
async fn a_prepared_statement_left_by_a_transaction_closes_the_connection() {
    use sqlx::Row;
    let f = fixture(1).await;
    let a = TenantId::new_random();
    let mut tx = f.pool.begin(&ctx(a)).await.unwrap();
    let first = backend(&mut tx).await;
    tx.commit().await.unwrap();
    let mut tx = f.pool.begin(&ctx(a)).await.unwrap();
    assert_eq!(
        backend(&mut tx).await,
        first,
        "positive control: the connection is reused"
    );
    sqlx::raw_sql(&format!(
        "INSERT INTO projects (tenant_id, name) VALUES ('{a}', 'kept?'); \
         PREPARE hijack AS SELECT 'hijacked'"
    ))
    .execute(&mut *tx)
    .await
    .unwrap();
    assert!(tx.commit().await.is_err());
    assert_eq!(
        count_all(&f.db, "projects").await,
        0,
        "the transaction was rolled back"
    );
    let mut conn = f.raw.acquire().await.unwrap();
    let left: i64 = sqlx::raw_sql("SELECT count(*) FROM pg_prepared_statements WHERE from_sql")
        .fetch_one(&mut *conn)
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    if !via_pgbouncer() {
        assert_ne!(backend(&mut conn).await, first, "a new connection");
    }
}

/// Injected SQL forges the commit binding for the tenant it switched to, fires the deferred
/// check early (where it passes), and restores the binding: the write is still caught at commit,
/// because every write is recorded where only the trigger can write, and `commit` compares.
#[tokio::test]
async fn a_forged_commit_binding_checked_early_cannot_commit_a_write_to_another_tenant() {
    let f = fixture(1).await;
    let (a, b) = (TenantId::new_random(), TenantId::new_random());
    let context = ctx(a);
    let actor = context.actor().unwrap().id().to_string();
    for plant in [true, false] {
        let mut tx = f.pool.begin(&context).await.unwrap();
        let write = if plant {
            format!(
                "SET LOCAL app.tenant_id = '{b}'; \
                     INSERT INTO projects (tenant_id, name) VALUES ('{b}', 'planted'); \
                     SET LOCAL app.commit_binding = '{b}:{actor}';"
            )
        } else {
            format!(
                "INSERT INTO projects (tenant_id, name) VALUES ('{a}', 'own'); \
                     SET LOCAL app.commit_binding = '{a}:{actor}';"
            )
        };
        sqlx::raw_sql(&format!(
            "{write} SET CONSTRAINTS ALL IMMEDIATE; SET CONSTRAINTS ALL DEFERRED; \
             SET LOCAL app.tenant_id = '{a}'; SET LOCAL app.commit_binding = ''"
        ))
        .execute(&mut *tx)
        .await
        .unwrap();
        // Nor can the injected SQL erase or plant a record: only the trigger writes them.
        for sql in [
            "DELETE FROM app.binding_writes",
            "INSERT INTO app.binding_writes VALUES (pg_current_xact_id(), 'x')",
        ] {
            let err = sqlx::raw_sql(&format!("SAVEPOINT s; {sql}"))
                .execute(&mut *tx)
                .await
                .unwrap_err();
            assert_eq!(
                err.as_database_error().unwrap().code().as_deref(),
                Some("42501"),
                "{sql}"
            );
            sqlx::raw_sql("ROLLBACK TO SAVEPOINT s")
                .execute(&mut *tx)
                .await
                .unwrap();
        }
        let result = tx.commit().await;
        if plant {
            assert!(
                matches!(result, Err(RlsError::BindingChanged)),
                "{result:?}"
            );
            assert_eq!(count_all(&f.db, "projects").await, 0);
        } else {
            // The positive control: the same dance around an own-tenant write commits.
            result.unwrap();
            assert_eq!(
                visible(&f.pool, a).await,
                vec![(*a.as_uuid(), "own".to_owned())]
            );
        }
    }
}

#[tokio::test]
async fn writes_outside_a_tenant_tx_cannot_commit_without_restating_the_tenant() {
    let f = fixture(1).await;
    let a = TenantId::new_random();
    // A hand-rolled transaction on the raw pool binds correctly but skips the commit protocol.
    let mut conn = f.raw.acquire().await.unwrap();
    let err = sqlx::raw_sql(&format!(
        "BEGIN; SET LOCAL app.tenant_id = '{a}';
         INSERT INTO projects (tenant_id, name) VALUES ('{a}', 'unchecked'); COMMIT;"
    ))
    .execute(&mut *conn)
    .await
    .unwrap_err();
    assert_eq!(
        err.as_database_error().unwrap().code().as_deref(),
        Some("TB001")
    );
    let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await;
    drop(conn);
    assert_eq!(count_all(&f.db, "projects").await, 0);
}

#[tokio::test]
async fn updates_and_deletes_of_own_rows_commit() {
    let f = fixture(1).await;
    let a = TenantId::new_random();
    add_project(&f.pool, a, "old").await;
    add_project(&f.pool, a, "gone").await;
    let mut tx = f.pool.begin(&ctx(a)).await.unwrap();
    sqlx::query("UPDATE projects SET name = 'new' WHERE name = 'old'")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("DELETE FROM projects WHERE name = 'gone'")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        visible(&f.pool, a).await,
        vec![(*a.as_uuid(), "new".to_owned())]
    );
}

#[tokio::test]
async fn a_session_level_set_inside_a_transaction_does_not_outlive_it() {
    let f = fixture(1).await;
    let (a, b) = (TenantId::new_random(), TenantId::new_random());
    add_project(&f.pool, b, "b-secret").await;
    let mut tx = f.pool.begin(&ctx(a)).await.unwrap();
    // Plain SET is session-level; restoring the local value hides it from the commit check.
    sqlx::query(&format!("SET app.tenant_id = '{b}'"))
        .execute(&mut *tx)
        .await
        .unwrap();
    rebind(&mut tx, a).await;
    tx.commit().await.unwrap();
    // The same (only) connection, unbound, must not carry B.
    let mut conn = f.raw.acquire().await.unwrap();
    assert_unbound_sees_and_changes_nothing(&mut conn, &f.db).await;
}

/// Whatever one tenant's transaction leaves at session level on its connection (settings, a
/// changed search_path, a cursor held past the commit, a listen registration, an advisory
/// lock) is gone when the next user gets the connection, committed or rolled back.
#[tokio::test]
async fn session_state_left_by_a_transaction_does_not_reach_the_next_user() {
    use sqlx::Row;
    let f = fixture(1).await;
    let a = TenantId::new_random();
    let state = "SELECT coalesce(current_setting('app.tenant_id', true), ''), \
                        coalesce(current_setting('app.commit_binding', true), ''), \
                        current_setting('search_path'), \
                        current_setting('statement_timeout'), \
                        (SELECT count(*) FROM pg_cursors WHERE is_holdable), \
                        (SELECT count(*) FROM pg_listening_channels()), \
                        (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' \
                           AND pid = pg_backend_pid())";
    // Simple-protocol statements outside a transaction, so this also runs through PgBouncer.
    let read_state = || async {
        let row = sqlx::raw_sql(state).fetch_one(&f.raw).await.unwrap();
        (
            row.get::<String, _>(0),
            row.get::<String, _>(1),
            row.get::<String, _>(2),
            row.get::<String, _>(3),
            row.get::<i64, _>(4),
            row.get::<i64, _>(5),
            row.get::<i64, _>(6),
        )
    };
    let clean = read_state().await;
    assert_eq!((clean.0.as_str(), clean.4, clean.5, clean.6), ("", 0, 0, 0));
    for commit in [true, false] {
        let mut tx = f.pool.begin(&ctx(a)).await.unwrap();
        sqlx::raw_sql(&format!(
            "SET app.tenant_id = '{a}'; SET app.commit_binding = '{a}:'; \
             SET search_path = pg_catalog, public, app; SET statement_timeout = '1h'; \
             DECLARE held CURSOR WITH HOLD FOR SELECT 1; LISTEN tenant_news; \
             SELECT pg_advisory_lock(42)"
        ))
        .execute(&mut *tx)
        .await
        .unwrap();
        // The positive control: inside the transaction it is in place (LISTEN registers at
        // commit, so it shows only afterwards, where the hand-back must have removed it).
        let inside = sqlx::raw_sql(state).fetch_one(&mut *tx).await.unwrap();
        assert_eq!(inside.get::<String, _>(1), format!("{a}:"));
        assert_eq!(inside.get::<String, _>(3), "1h");
        assert_eq!(inside.get::<i64, _>(4), 1);
        assert_eq!(inside.get::<i64, _>(6), 1);
        rebind(&mut tx, a).await;
        if commit {
            tx.commit().await.unwrap();
        } else {
            tx.rollback().await.unwrap();
        }
        let after = read_state().await;
        assert_eq!(after, clean, "commit: {commit}");
    }
}

#[tokio::test]
async fn composite_foreign_key_blocks_referencing_another_tenants_parent() {
    let f = fixture(2).await;
    let (a, b) = (TenantId::new_random(), TenantId::new_random());
    let b_project = add_project(&f.pool, b, "b-project").await;
    let mut errors = Vec::new();
    for parent in [b_project, Uuid::new_v4()] {
        let mut tx = f.pool.begin(&ctx(a)).await.unwrap();
        let err =
            sqlx::query("INSERT INTO tasks (tenant_id, project_id, title) VALUES ($1, $2, 'x')")
                .bind(a.as_uuid())
                .bind(parent)
                .execute(&mut *tx)
                .await
                .unwrap_err();
        tx.rollback().await.unwrap();
        let db = err.as_database_error().unwrap();
        errors.push((db.code().map(|c| c.into_owned()), db.message().to_owned()));
    }
    assert_eq!(errors[0].0.as_deref(), Some("23503"));
    // Referencing B's real project fails exactly like referencing a made-up id.
    assert_eq!(errors[0], errors[1]);
    assert_eq!(count_all(&f.db, "tasks").await, 0);
}

#[tokio::test]
async fn scoped_unique_constraint_is_no_cross_tenant_existence_oracle() {
    let f = fixture(2).await;
    let (a, b) = (TenantId::new_random(), TenantId::new_random());
    add_project(&f.pool, b, "acquisition-target").await;
    // A can use the same name: the insert reveals nothing about B.
    add_project(&f.pool, a, "acquisition-target").await;
    assert_eq!(visible(&f.pool, a).await.len(), 1);
    // Within A the constraint still holds.
    let mut tx = f.pool.begin(&ctx(a)).await.unwrap();
    let err =
        sqlx::query("INSERT INTO projects (tenant_id, name) VALUES ($1, 'acquisition-target')")
            .bind(a.as_uuid())
            .execute(&mut *tx)
            .await
            .unwrap_err();
    assert_eq!(
        err.as_database_error().unwrap().code().as_deref(),
        Some("23505")
    );
}

#[tokio::test]
async fn unreachable_database_is_an_error_not_an_unscoped_fallback() {
    let f = fixture(1).await;
    f.raw.close().await;
    let err = f
        .pool
        .begin(&ctx(TenantId::new_random()))
        .await
        .unwrap_err();
    assert!(err.is_unavailable(), "{err}");
}

#[tokio::test]
async fn a_refused_statement_is_not_reported_as_unavailable() {
    let f = fixture(1).await;
    let mut tx = f.pool.begin(&ctx(TenantId::new_random())).await.unwrap();
    let err: RlsError =
        sqlx::query("INSERT INTO projects (tenant_id, name) VALUES (gen_random_uuid(), 'x')")
            .execute(&mut *tx)
            .await
            .unwrap_err()
            .into();
    assert!(!err.is_unavailable(), "{err}");
    tx.rollback().await.unwrap();
}

#[tokio::test]
async fn a_begin_cancelled_in_flight_never_returns_a_bound_connection_to_the_pool() {
    let f = fixture(1).await;
    let a = TenantId::new_random();
    add_project(&f.pool, a, "a-row").await;
    // Cancel `begin` at many points of its flight.
    for i in 0..200u64 {
        let context = ctx(a);
        let begin = f.pool.begin(&context);
        let _ = tokio::time::timeout(Duration::from_micros(i * 5), begin).await;
    }
    let mut conn = f.raw.acquire().await.unwrap();
    assert_unbound_sees_and_changes_nothing(&mut conn, &f.db).await;
}

#[tokio::test]
async fn the_pooled_suite_really_shares_server_connections() {
    use sqlx::Row;
    let f = fixture(4).await;
    assert_eq!(f.bouncer.is_some(), via_pgbouncer());
    let mut conns = Vec::new();
    for _ in 0..4 {
        conns.push(f.raw.acquire().await.unwrap());
    }
    let mut backends = std::collections::HashSet::new();
    for conn in &mut conns {
        let row = sqlx::raw_sql("SELECT pg_backend_pid()")
            .fetch_one(&mut **conn)
            .await
            .unwrap();
        backends.insert(row.get::<i32, _>(0));
    }
    // Four client connections held at once: through PgBouncer they share its one server
    // connection; directly, each has its own backend.
    let expected = if via_pgbouncer() { 1 } else { 4 };
    assert_eq!(backends.len(), expected, "{backends:?}");
}

#[tokio::test]
async fn a_read_only_transaction_sees_its_tenant_and_cannot_write() {
    let f = fixture(1).await;
    let (a, b) = (TenantId::new_random(), TenantId::new_random());
    add_project(&f.pool, a, "a-row").await;
    let b_row = add_project(&f.pool, b, "b-row").await;
    let mut tx = f.pool.begin_read_only(&ctx(a)).await.unwrap();
    let seen: Vec<(Uuid, String)> = sqlx::query_as("SELECT tenant_id, name FROM projects")
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    assert_eq!(seen, vec![(*a.as_uuid(), "a-row".to_owned())]);
    let by_key: Option<(String,)> = sqlx::query_as("SELECT name FROM projects WHERE id = $1")
        .bind(b_row)
        .fetch_optional(&mut *tx)
        .await
        .unwrap();
    assert_eq!(by_key, None);
    let err = sqlx::query("INSERT INTO projects (tenant_id, name) VALUES ($1, 'planted')")
        .bind(a.as_uuid())
        .execute(&mut *tx)
        .await
        .unwrap_err();
    assert_eq!(
        err.as_database_error().unwrap().code().as_deref(),
        Some("25006"),
        "{err}"
    );
    tx.rollback().await.unwrap();
    assert_eq!(count_all(&f.db, "projects").await, 2);
    assert_connection_clean_for_b(&f, a).await;
}

#[tokio::test]
async fn a_write_smuggled_into_a_read_only_transaction_is_discarded() {
    let f = fixture(1).await;
    let (a, b) = (TenantId::new_random(), TenantId::new_random());
    add_project(&f.pool, a, "a-row").await;
    // Injected SQL ahead of every query: switch to READ WRITE, rebind to B, restate B as the
    // commit binding (so the deferred check would pass) and write B's and A's rows.
    let mut tx = f.pool.begin_read_only(&ctx(a)).await.unwrap();
    sqlx::raw_sql(&format!(
        "SET TRANSACTION READ WRITE; \
         INSERT INTO projects (tenant_id, name) VALUES ('{a}', 'a-planted'); \
         SET LOCAL app.tenant_id = '{b}'; SET LOCAL app.commit_binding = '{b}:'; \
         SET app.tenant_id = '{b}'; \
         INSERT INTO projects (tenant_id, name) VALUES ('{b}', 'b-planted')"
    ))
    .execute(&mut *tx)
    .await
    .unwrap();
    // The read-only transaction's commit is a rollback: nothing it wrote survives, and the
    // session-level SET is undone with it.
    tx.commit().await.unwrap();
    assert_eq!(count_all(&f.db, "projects").await, 1);
    assert!(visible(&f.pool, b).await.is_empty());
    assert_eq!(visible(&f.pool, a).await.len(), 1);
    assert_connection_clean_for_b(&f, a).await;
}
