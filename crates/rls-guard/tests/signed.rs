//! Signed tenant bindings: with them enforced, a tenant that SQL names by itself (an injected
//! `set_config` or `SET`, a stacked `COMMIT; BEGIN; ..`, a proof carried over from another
//! transaction, a forged or stale signature) binds nothing; the application's own signed
//! binding works (the positive control in each test). `tests/signed_pgbouncer.rs` runs this
//! suite again through PgBouncer in transaction-pooling mode.
// Integration tests: a failed unwrap is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use hmac::{Hmac, Mac};
use rls_guard::{BindingKey, RlsError, TenantPool};
use sha2::Sha256;
use sqlx::Row;
use tenant_scope::TenantId;
use testkit::Role;

fn code(err: &sqlx::Error) -> String {
    err.as_database_error()
        .and_then(|e| e.code())
        .map(|c| c.into_owned())
        .unwrap_or_default()
}

/// Runs `sql` (simple protocol) inside `tx` behind a savepoint, and returns its error code (empty
/// when it succeeded); the transaction stays usable.
async fn attempt(tx: &mut rls_guard::TenantTx, sql: &str) -> String {
    sqlx::raw_sql("SAVEPOINT attempt")
        .execute(&mut **tx)
        .await
        .unwrap();
    let result = sqlx::raw_sql(sql).execute(&mut **tx).await;
    let outcome = match &result {
        Ok(_) => String::new(),
        Err(e) => code(e),
    };
    let undo = if result.is_ok() {
        "RELEASE SAVEPOINT attempt"
    } else {
        "ROLLBACK TO SAVEPOINT attempt"
    };
    sqlx::raw_sql(undo).execute(&mut **tx).await.unwrap();
    outcome
}

async fn count(tx: &mut rls_guard::TenantTx) -> i64 {
    sqlx::raw_sql("SELECT count(*) FROM projects")
        .fetch_one(&mut **tx)
        .await
        .unwrap()
        .get(0)
}

async fn owner_key(f: &Fixture) -> BindingKey {
    let mut owner = f.db.pool(Role::Owner, 1).await.acquire().await.unwrap();
    rls_guard::schema::binding_key(&mut owner).await.unwrap()
}

#[tokio::test]
async fn a_signed_binding_serves_its_own_tenant() {
    let f = signed_fixture(2).await;
    let (a, b) = (TenantId::new_random(), TenantId::new_random());
    add_project(&f.pool, a, "a-project").await;
    add_project(&f.pool, b, "b-project").await;
    assert_eq!(
        visible(&f.pool, a).await,
        vec![(*a.as_uuid(), "a-project".to_owned())]
    );
    let mut tx = f.pool.begin_read_only(&ctx(b)).await.unwrap();
    assert_eq!(count(&mut tx).await, 1);
    tx.commit().await.unwrap();
    assert_eq!(count_all(&f.db, "projects").await, 2);
}

#[tokio::test]
async fn an_injected_set_config_or_set_binds_nothing() {
    let f = signed_fixture(1).await;
    let (a, b) = (TenantId::new_random(), TenantId::new_random());
    add_project(&f.pool, a, "a-project").await;
    add_project(&f.pool, b, "b-project").await;
    for switch in [
        format!("SELECT set_config('app.tenant_id', '{b}', true)"),
        format!("SET LOCAL app.tenant_id = '{b}'"),
        format!("SET app.tenant_id = '{b}'"),
    ] {
        let mut tx = f.pool.begin(&ctx(a)).await.unwrap();
        // The positive control: bound by the application, the transaction sees A's row.
        assert_eq!(count(&mut tx).await, 1);
        sqlx::raw_sql(&switch).execute(&mut *tx).await.unwrap();
        assert_eq!(
            count(&mut tx).await,
            0,
            "{switch}: saw another tenant's rows"
        );
        let planted = format!("INSERT INTO projects (tenant_id, name) VALUES ('{b}', 'planted')");
        assert_eq!(attempt(&mut tx, &planted).await, "42501", "{switch}");
        assert_eq!(
            attempt(&mut tx, "UPDATE projects SET name = 'pwned'").await,
            ""
        );
        tx.rollback().await.unwrap();
    }
    assert_eq!(
        visible(&f.pool, b).await,
        vec![(*b.as_uuid(), "b-project".to_owned())]
    );
}

#[tokio::test]
async fn a_stacked_commit_cannot_bind_any_tenant_again() {
    let f = signed_fixture(1).await;
    let (a, b) = (TenantId::new_random(), TenantId::new_random());
    add_project(&f.pool, b, "b-project").await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for stacked in [
        // Another tenant, by setting and with the commit binding restated for it.
        format!(
            "COMMIT; BEGIN; SET LOCAL app.tenant_id = '{b}'; SET LOCAL app.commit_binding = '{b}:'; \
             INSERT INTO projects (tenant_id, name) VALUES ('{b}', 'planted'); COMMIT"
        ),
        // Its own tenant: the binding it ran under does not survive its transaction.
        format!(
            "COMMIT; BEGIN; SET LOCAL app.tenant_id = '{a}'; SET LOCAL app.commit_binding = '{a}:'; \
             INSERT INTO projects (tenant_id, name) VALUES ('{a}', 'planted'); COMMIT"
        ),
        // A forged signature.
        format!(
            "COMMIT; BEGIN; SELECT app.bind('{b}', '', '{now}', repeat('0', 64)); \
             INSERT INTO projects (tenant_id, name) VALUES ('{b}', 'planted'); COMMIT"
        ),
    ] {
        let mut tx = f.pool.begin(&ctx(a)).await.unwrap();
        let err = sqlx::raw_sql(&stacked).execute(&mut *tx).await.unwrap_err();
        assert!(
            matches!(code(&err).as_str(), "42501" | "TB002"),
            "{stacked}: {err}"
        );
        // The connection is in an unknown state: dropping the transaction closes it.
        drop(tx);
    }
    // The positive control: the application's own transaction still writes for A.
    add_project(&f.pool, a, "a-project").await;
    assert_eq!(count_all(&f.db, "projects").await, 2);
    assert_eq!(
        visible(&f.pool, b).await,
        vec![(*b.as_uuid(), "b-project".to_owned())]
    );
}

#[tokio::test]
async fn a_proof_does_not_carry_over_to_another_transaction() {
    let f = signed_fixture(1).await;
    let a = TenantId::new_random();
    add_project(&f.pool, a, "a-project").await;
    let context = ctx(a);
    let mut tx = f.pool.begin(&context).await.unwrap();
    let captured = sqlx::raw_sql(
        "SELECT current_setting('app.tenant_id'), current_setting('app.actor_id'), \
                current_setting('app.binding_proof')",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    let (tenant, actor, proof): (String, String, String) =
        (captured.get(0), captured.get(1), captured.get(2));
    // The positive control: under its own proof, the transaction sees A's row.
    assert_eq!(count(&mut tx).await, 1);
    tx.commit().await.unwrap();
    // Replayed in a later transaction on the same connection, and on the raw pool.
    let replay = format!(
        "BEGIN; SET LOCAL app.tenant_id = '{tenant}'; SET LOCAL app.actor_id = '{actor}'; \
         SET LOCAL app.binding_proof = '{proof}'"
    );
    let mut tx = f.pool.begin(&context).await.unwrap();
    sqlx::raw_sql(&format!("SET LOCAL app.binding_proof = '{proof}'"))
        .execute(&mut *tx)
        .await
        .unwrap();
    assert_eq!(
        count(&mut tx).await,
        0,
        "a stale proof in a new transaction"
    );
    tx.rollback().await.unwrap();
    let mut conn = f.raw.acquire().await.unwrap();
    sqlx::raw_sql(&replay).execute(&mut *conn).await.unwrap();
    let n: i64 = sqlx::raw_sql("SELECT count(*) FROM projects")
        .fetch_one(&mut *conn)
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "a replayed proof bound a raw connection");
    sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await.unwrap();
}

fn sign_with(secret: &[u8], tenant: &str, actor: &str, issued_at: &str) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).unwrap();
    mac.update(format!("v1:{tenant}:{actor}:{issued_at}").as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

#[tokio::test]
async fn forged_stale_and_malformed_bindings_are_refused() {
    let f = signed_fixture(1).await;
    let a = TenantId::new_random();
    add_project(&f.pool, a, "a-project").await;
    let mut owner = f.db.pool(Role::Owner, 1).await.acquire().await.unwrap();
    let secret: Vec<u8> = sqlx::query_scalar(
        "SELECT secret FROM app.binding_keys WHERE retired_at IS NULL ORDER BY id DESC LIMIT 1",
    )
    .fetch_one(&mut *owner)
    .await
    .unwrap();
    drop(owner);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let tenant = a.to_string();
    let stale = (now - 600).to_string();
    let now = now.to_string();
    let good = sign_with(&secret, &tenant, "", &now);
    let cases = [
        // The positive control: the right key, now.
        (tenant.clone(), now.clone(), good.clone(), ""),
        (
            tenant.clone(),
            now.clone(),
            sign_with(&[7; 32], &tenant, "", &now),
            "TB002",
        ),
        (
            tenant.clone(),
            stale.clone(),
            sign_with(&secret, &tenant, "", &stale),
            "TB002",
        ),
        // A signature for another tenant, or another time, does not move.
        (
            TenantId::new_random().to_string(),
            now.clone(),
            good.clone(),
            "TB002",
        ),
        (
            tenant.clone(),
            (now.parse::<u64>().unwrap() + 1).to_string(),
            good.clone(),
            "TB002",
        ),
        (
            "not-a-uuid".to_owned(),
            now.clone(),
            sign_with(&secret, "not-a-uuid", "", &now),
            "22P02",
        ),
    ];
    for (tenant, issued_at, signature, expected) in cases {
        let mut conn = f.raw.acquire().await.unwrap();
        sqlx::raw_sql("BEGIN").execute(&mut *conn).await.unwrap();
        let result = sqlx::query("SELECT app.bind($1, '', $2, $3)")
            .bind(&tenant)
            .bind(&issued_at)
            .bind(&signature)
            .execute(&mut *conn)
            .await;
        let got = result.as_ref().map_or_else(code, |_| String::new());
        assert_eq!(got, expected, "{tenant} {issued_at}");
        if expected.is_empty() {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM projects")
                .fetch_one(&mut *conn)
                .await
                .unwrap();
            assert_eq!(n, 1);
        }
        sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await.unwrap();
    }
}

#[tokio::test]
async fn the_pool_starts_only_with_the_databases_key() {
    let f = signed_fixture(1).await;
    assert!(matches!(
        TenantPool::new(f.raw.clone()).await,
        Err(RlsError::BindingKeyRequired)
    ));
    let wrong = BindingKey::from_bytes(&vec![9; 32].into()).unwrap();
    assert!(matches!(
        TenantPool::with_binding_key(f.raw.clone(), wrong).await,
        Err(RlsError::BindingKeyRefused(_))
    ));
    // The positive control: the owner's key is accepted.
    TenantPool::with_binding_key(f.raw.clone(), owner_key(&f).await)
        .await
        .unwrap();
    // A key for a database without signed bindings is a configuration mistake.
    let unsigned = fixture(1).await;
    assert!(matches!(
        TenantPool::with_binding_key(unsigned.raw.clone(), owner_key(&f).await).await,
        Err(RlsError::BindingKeyRefused(_))
    ));
}

#[tokio::test]
async fn only_the_owner_binds_without_a_signature() {
    let f = signed_fixture(1).await;
    let a = TenantId::new_random();
    let mut conn = f.raw.acquire().await.unwrap();
    let err = sqlx::raw_sql(&format!("BEGIN; SELECT app.bind_trusted('{a}', '')"))
        .execute(&mut *conn)
        .await
        .unwrap_err();
    assert_eq!(code(&err), "42501", "{err}");
    let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await;
    drop(conn);
    // The positive control: a data fix run by the owner.
    let owner = f.db.pool(Role::Owner, 1).await;
    sqlx::raw_sql(&format!(
        "BEGIN; SELECT app.bind_trusted('{a}', ''); SET LOCAL app.commit_binding = '{a}:'; \
         INSERT INTO projects (tenant_id, name) VALUES ('{a}', 'fixed'); COMMIT"
    ))
    .execute(&owner)
    .await
    .unwrap();
    assert_eq!(
        visible(&f.pool, a).await,
        vec![(*a.as_uuid(), "fixed".to_owned())]
    );
}

#[tokio::test]
async fn turning_signing_off_behind_the_pools_back_is_refused_at_start_up() {
    let f = signed_fixture(1).await;
    let owner = f.db.pool(Role::Owner, 1).await;
    // The reading getters reinstalled while a key is active.
    let unsigned = rls_guard::schema::SUPPORT_SQL;
    sqlx::raw_sql("UPDATE app.binding_keys SET retired_at = now()")
        .execute(&owner)
        .await
        .unwrap();
    sqlx::raw_sql(unsigned).execute(&owner).await.unwrap();
    sqlx::raw_sql("UPDATE app.binding_keys SET retired_at = NULL")
        .execute(&owner)
        .await
        .unwrap();
    assert!(matches!(
        TenantPool::new(f.raw.clone()).await,
        Err(RlsError::SupportSchemaMismatch(_))
    ));
    // The positive control: re-enabling reinstalls the signed getters.
    sqlx::raw_sql(rls_guard::schema::ENABLE_SIGNED_BINDINGS_SQL)
        .execute(&owner)
        .await
        .unwrap();
    TenantPool::with_binding_key(f.raw.clone(), owner_key(&f).await)
        .await
        .unwrap();
}
