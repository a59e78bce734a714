//! Someone with the database owner's powers rewrites history: drops the newest audit events of
//! a tenant *and* the checkpoints stored beside them. The chain then looks whole inside the
//! database, but the audit viewer also verifies against the signed checkpoints the app keeps in
//! its data directory, and reports the break.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use axum::http::StatusCode;
use common::Browser;
use uuid::Uuid;

#[tokio::test]
async fn deleting_the_newest_events_and_the_stored_checkpoints_is_still_caught() {
    let app = common::start().await;
    let admin = app.database().unwrap().pool(testkit::Role::Admin, 2).await;
    let (bob,): (Uuid,) =
        sqlx::query_as("SELECT user_id FROM workspace.members WHERE email = 'bob@acme.test'")
            .fetch_one(&admin)
            .await
            .unwrap();
    let mut alice = Browser::signed_in(&app, "acme", "alice@acme.test").await;
    for role in ["admin", "member", "admin"] {
        let page = alice
            .json(
                "POST",
                &format!("/api/admin/members/{bob}/role"),
                Some(&format!(r#"{{"role": "{role}"}}"#)),
            )
            .await;
        assert_eq!(page.status, StatusCode::OK);
    }
    app.sequence_audit().await.unwrap();
    assert!(app.sign_checkpoints().await.unwrap() >= 1);
    let path = "/staff/audit";
    let mut sam = Browser::signed_in(&app, "ops", "sam@ops.test").await;
    let opened = sam
        .open_workspace("acme", "reviewing the audit chain", "audit")
        .await;
    assert_eq!(opened.status, StatusCode::SEE_OTHER);
    let before = sam.get(path).await;
    assert_eq!(before.status, StatusCode::OK);
    assert!(before.body.contains("chain verified"), "{}", before.body);

    // The tampering: as a superuser, past the append-only triggers.
    sqlx::raw_sql(
        "ALTER TABLE audit.events DISABLE TRIGGER ALL;
         DELETE FROM audit.events e USING workspace.tenants t
          WHERE t.slug = 'acme' AND e.tenant_id = t.id
            AND e.seq > (SELECT max(seq) - 3 FROM audit.events WHERE tenant_id = t.id);
         ALTER TABLE audit.events ENABLE TRIGGER ALL;
         ALTER TABLE audit.checkpoints DISABLE TRIGGER ALL;
         DELETE FROM audit.checkpoints c USING workspace.tenants t
          WHERE t.slug = 'acme' AND c.tenant_id = t.id;
         ALTER TABLE audit.checkpoints ENABLE TRIGGER ALL;",
    )
    .execute(&admin)
    .await
    .unwrap();
    let after = sam.get(path).await;
    assert_eq!(after.status, StatusCode::OK);
    assert!(after.body.contains("CHAIN BROKEN"), "{}", after.body);
    assert!(!after.body.contains("chain verified"));
}
