//! The RLS coverage gate: after the migrations, rls-guard's coverage check finds nothing, the
//! runtime role passes its checks, and a behavioural sweep shows that the runtime role bound to
//! tenant B sees none of tenant A's rows in any tenant table, and cannot write them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use rls_guard::CoverageCheck;
use testkit::Role;

#[tokio::test]
async fn coverage_is_complete_and_no_tenant_table_leaks_across_tenants() {
    let app = common::start().await;
    // Produce rows in every kind of table: a session, a TOTP enrolment, a proposal, audit events.
    let mut alice = common::Browser::new(&app);
    alice.sign_in("acme", "alice@acme.test").await;
    alice
        .post("/assistant", &[("prompt", "Summarise all my notes")])
        .await;

    let admin = app.database().unwrap().pool(Role::Admin, 1).await;
    // The check probes the policies as the runtime role: connected as a role that may SET
    // ROLE to it.
    let mut checker = admin.acquire().await.unwrap();
    // The audit chain's and the proposals' own triggers are trusted by name; nothing else.
    let check = CoverageCheck::new().runtime_role(app.runtime_role());
    let check = tool_sandbox::coverage_trust(audit_log::schema::coverage_trust(
        magic_auth::schema::coverage_trust(check),
    ));
    let findings = check.run(&mut checker).await.unwrap();
    assert!(findings.is_empty(), "coverage findings: {findings:#?}");
    drop(checker);

    let runtime = app.database().unwrap().pool(Role::Runtime, 1).await;
    let mut conn = runtime.acquire().await.unwrap();
    rls_guard::verify_runtime_role(&mut conn).await.unwrap();
    drop(conn);

    let tables: Vec<(String,)> = sqlx::query_as(
        "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped \
         WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1",
    )
    .fetch_all(&admin)
    .await
    .unwrap();
    assert!(tables.len() >= 8, "{tables:?}");
    let (acme,): (uuid::Uuid,) =
        sqlx::query_as("SELECT id FROM workspace.tenants WHERE slug = 'acme'")
            .fetch_one(&admin)
            .await
            .unwrap();
    let (globex,): (uuid::Uuid,) =
        sqlx::query_as("SELECT id FROM workspace.tenants WHERE slug = 'globex'")
            .fetch_one(&admin)
            .await
            .unwrap();
    let mut populated = 0;
    for (table,) in &tables {
        let (rows_of_a,): (i64,) = sqlx::query_as(&format!(
            "SELECT count(*) FROM {table} WHERE tenant_id = $1"
        ))
        .bind(acme)
        .fetch_one(&admin)
        .await
        .unwrap();
        if rows_of_a > 0 {
            populated += 1;
        }
        // As the runtime role, bound to globex: nothing of acme is visible, not even by asking.
        let mut tx = runtime.begin().await.unwrap();
        sqlx::query(&format!("SET LOCAL app.tenant_id = '{globex}'"))
            .execute(&mut *tx)
            .await
            .unwrap();
        let visible: Result<(i64,), _> = sqlx::query_as(&format!(
            "SELECT count(*) FROM {table} WHERE tenant_id = $1"
        ))
        .bind(acme)
        .fetch_one(&mut *tx)
        .await;
        match visible {
            Ok((n,)) => assert_eq!(n, 0, "{table}: tenant B sees {n} of tenant A's rows"),
            // No SELECT grant at all (an append-only or definer-only table) is stricter still.
            Err(e) => assert!(e.to_string().contains("permission denied"), "{table}: {e}"),
        }
        tx.rollback().await.unwrap();
        // Unbound: nothing at all.
        let mut tx = runtime.begin().await.unwrap();
        let unbound: Result<(i64,), _> = sqlx::query_as(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(&mut *tx)
            .await;
        if let Ok((n,)) = unbound {
            assert_eq!(n, 0, "{table}: {n} rows visible without a tenant");
        }
        tx.rollback().await.unwrap();
    }
    assert!(
        populated >= 6,
        "the sweep must look at tables that hold rows ({populated})"
    );

    // Writing into tenant A while bound to B is refused by WITH CHECK.
    let mut tx = runtime.begin().await.unwrap();
    sqlx::query(&format!("SET LOCAL app.tenant_id = '{globex}'"))
        .execute(&mut *tx)
        .await
        .unwrap();
    let write = sqlx::query(
        "INSERT INTO workspace.notes (tenant_id, id, author_id, title, body) VALUES ($1, gen_random_uuid(), gen_random_uuid(), 'x', '\\x00')",
    )
    .bind(acme)
    .execute(&mut *tx)
    .await;
    assert!(write.is_err());
    tx.rollback().await.unwrap();
}
