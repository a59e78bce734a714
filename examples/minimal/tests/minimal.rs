//! The minimal service end to end, against real PostgreSQL: sign in through the shipped routes,
//! read the workspace's data, be refused another workspace's, perform the audited admin action,
//! and verify the audit chain.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use axum::http::StatusCode;
use serde_json::json;
use testkit::Role;

use common::{Browser, service, sign_in};

#[tokio::test]
async fn sign_in_read_refuse_audit_verify() {
    let app = service().await;
    let (status, answer) = Browser::default().send(&app, "GET", "/notes", None).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("unauthenticated"))
    );

    let mut ada = sign_in(&app, "acme", "ada@acme.example").await;
    let mut eve = sign_in(&app, "globex", "eve@globex.example").await;
    // The handler that takes the `Session` sees each one's own, with both factors.
    let (status, ada_me) = ada.send(&app, "GET", "/me", None).await;
    assert_eq!(status, StatusCode::OK, "{ada_me}");
    assert_eq!(ada_me["assurance"], "aal2");
    let (_, eve_me) = eve.send(&app, "GET", "/me", None).await;
    assert_ne!(ada_me["workspace"], eve_me["workspace"]);
    assert_ne!(ada_me["user"], eve_me["user"]);
    let (status, _) = Browser::default().send(&app, "GET", "/me", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, created) = ada
        .send(
            &app,
            "POST",
            "/notes",
            Some(json!({ "body": "acme plans" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let ada_note = created["id"].as_str().unwrap().to_owned();
    let (status, _) = eve
        .send(
            &app,
            "POST",
            "/notes",
            Some(json!({ "body": "globex plans" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    // Each workspace reads its own notes, and only those.
    let (_, listed) = ada.send(&app, "GET", "/notes", None).await;
    assert_eq!(listed["notes"].as_array().unwrap().len(), 1);
    assert_eq!(listed["notes"][0]["body"], "acme plans");
    let (_, listed) = eve.send(&app, "GET", "/notes", None).await;
    assert_eq!(listed["notes"][0]["body"], "globex plans");
    let path = format!("/notes/{ada_note}");
    let (status, shown) = ada.send(&app, "GET", &path, None).await;
    assert_eq!(
        (status, shown["body"].as_str()),
        (StatusCode::OK, Some("acme plans"))
    );
    let (status, refused) = eve.send(&app, "GET", &path, None).await;
    assert_eq!(
        (status, refused["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );

    // The admin action: another workspace cannot delete it (audited as failed); its own can.
    let admin_path = format!("/admin/notes/{ada_note}");
    let (status, _) = eve.send(&app, "DELETE", &admin_path, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = ada.send(&app, "DELETE", &admin_path, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = ada.send(&app, "GET", &path, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // The audit records, each chained by the running sequencer into its own workspace's chain,
    // and both chains verify.
    let admin = app.db.pool(Role::Admin, 1).await;
    for (tenant, outcome) in [(app.acme, "allowed"), (app.globex, "failed")] {
        let mut report = None;
        for _ in 0..200 {
            let now = audit_log::verify(&admin, tenant, &audit_log::TrustedKeys::new(), &[])
                .await
                .unwrap();
            if now.pending == 0 {
                report = Some(now);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let report = report.expect("the sequencer chained every event within 10 s");
        assert!(report.is_intact(), "{report:?}");
        assert!(report.events >= 1);
        let (action, recorded): (String, String) = sqlx::query_as(
            "SELECT action, outcome FROM audit.events WHERE tenant_id = $1 AND action = 'note.deleted'",
        )
        .bind(tenant.as_uuid())
        .fetch_one(&admin)
        .await
        .unwrap();
        assert_eq!(
            (action.as_str(), recorded.as_str()),
            ("note.deleted", outcome)
        );
    }

    // Signing out ends the session for data too.
    let (status, _) = ada
        .send(&app, "POST", "/auth/sign-out", Some(json!({})))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = ada.send(&app, "GET", "/notes", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}
