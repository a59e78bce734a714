//! `TenantTx::check_at_commit`: a commit that succeeds has committed the checked row. Attacks
//! are SQL inside the transaction that undoes the row while the transaction itself goes on:
//! a rollback to a savepoint, or ending the transaction and starting another.
// Integration tests: a failed unwrap is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use rls_guard::{CommitCheck, RlsError, TenantTx};
use tenant_scope::TenantId;
use testkit::Role;

/// A tenant table with a numeric key, as a library's own rows have.
async fn with_records(f: &Fixture) {
    f.db.as_admin(&format!(
        "CREATE TABLE records (
             tenant_id uuid NOT NULL,
             id bigint GENERATED ALWAYS AS IDENTITY,
             note text NOT NULL,
             PRIMARY KEY (tenant_id, id)
         );
         {}
         GRANT SELECT, INSERT ON records TO testkit_runtime;",
        rls_guard::schema::tenant_table_sql("records").unwrap()
    ))
    .await;
}

async fn insert(tx: &mut TenantTx, note: &str) -> i64 {
    sqlx::query_scalar("INSERT INTO records (tenant_id, note) VALUES ($1, $2) RETURNING id")
        .bind(tx.tenant().as_uuid())
        .bind(note)
        .fetch_one(&mut **tx)
        .await
        .unwrap()
}

async fn notes(f: &Fixture) -> Vec<String> {
    let admin = f.db.pool(Role::Admin, 1).await;
    sqlx::query_scalar("SELECT note FROM records ORDER BY id")
        .fetch_all(&admin)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_commit_with_the_row_there_succeeds_and_says_so() {
    let f = fixture(2).await;
    with_records(&f).await;
    let t = TenantId::new_random();
    let mut tx = f.pool.begin(&ctx(t)).await.unwrap();
    let id = insert(&mut tx, "kept").await;
    let receipt = tx.check_at_commit(CommitCheck::row_exists("public.records", "id", id).unwrap());
    assert!(!receipt.is_committed(), "not before the commit");
    tx.commit().await.unwrap();
    assert!(receipt.is_committed());
    assert_eq!(notes(&f).await, vec!["kept"]);
}

#[tokio::test]
async fn a_row_rolled_back_to_a_savepoint_fails_the_commit() {
    let f = fixture(2).await;
    with_records(&f).await;
    let t = TenantId::new_random();
    let mut tx = f.pool.begin(&ctx(t)).await.unwrap();
    insert(&mut tx, "before the savepoint").await;
    sqlx::raw_sql("SAVEPOINT undo")
        .execute(&mut *tx)
        .await
        .unwrap();
    let id = insert(&mut tx, "checked").await;
    let receipt = tx.check_at_commit(CommitCheck::row_exists("records", "id", id).unwrap());
    sqlx::raw_sql("ROLLBACK TO SAVEPOINT undo")
        .execute(&mut *tx)
        .await
        .unwrap();
    let error = tx.commit().await.unwrap_err();
    assert!(matches!(error, RlsError::Database(_)), "{error:?}");
    assert!(!receipt.is_committed());
    assert!(
        notes(&f).await.is_empty(),
        "the whole transaction rolled back"
    );
}

#[tokio::test]
async fn a_transaction_ended_and_replaced_inside_fails_the_commit() {
    let f = fixture(2).await;
    with_records(&f).await;
    let t = TenantId::new_random();
    let mut tx = f.pool.begin(&ctx(t)).await.unwrap();
    let id = insert(&mut tx, "checked").await;
    let receipt = tx.check_at_commit(CommitCheck::row_exists("records", "id", id).unwrap());
    // SQL in the transaction throws it away and starts another, rebinding the tenant by hand.
    sqlx::raw_sql(&format!(
        "ROLLBACK; BEGIN; SELECT set_config('app.tenant_id', '{t}', true);"
    ))
    .execute(&mut *tx)
    .await
    .unwrap();
    assert!(tx.commit().await.is_err());
    assert!(!receipt.is_committed());
    assert!(notes(&f).await.is_empty());
}

#[tokio::test]
async fn a_read_only_transaction_never_reports_a_commit() {
    let f = fixture(2).await;
    with_records(&f).await;
    let t = TenantId::new_random();
    let mut tx = f.pool.begin(&ctx(t)).await.unwrap();
    let id = insert(&mut tx, "committed").await;
    tx.commit().await.unwrap();
    let mut reader = f.pool.begin_read_only(&ctx(t)).await.unwrap();
    let receipt = reader.check_at_commit(CommitCheck::row_exists("records", "id", id).unwrap());
    reader.commit().await.unwrap();
    assert!(
        !receipt.is_committed(),
        "a read-only transaction rolls back"
    );
}

#[test]
fn names_that_are_not_plain_identifiers_are_refused() {
    for (table, key) in [
        ("records; DROP TABLE x", "id"),
        ("records", "id = id OR true"),
        ("\"Records\"", "id"),
        ("a.b.c", "id"),
        ("", "id"),
    ] {
        assert!(
            matches!(
                CommitCheck::row_exists(table, key, 1),
                Err(RlsError::InvalidIdentifier(_))
            ),
            "{table} {key}"
        );
    }
    assert!(CommitCheck::row_exists("audit.pending", "id", 1).is_ok());
}
