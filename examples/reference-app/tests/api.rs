//! The JSON API for the assistant and tenant administration: the same controls as the pages
//! (held sensitive calls, admins only, tenant-bound, step-up for the export, audited in the same
//! transaction), answered with the stable machine codes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use common::Browser;
use tower::ServiceExt;
use uuid::Uuid;

#[tokio::test]
async fn assistant_and_admin_over_json() {
    let app = common::start().await;
    let admin = app.database().unwrap().pool(testkit::Role::Admin, 2).await;
    let mut alice = Browser::signed_in(&app, "acme", "alice@acme.test").await;
    let mut bob = Browser::signed_in(&app, "acme", "bob@acme.test").await;
    let mut carol = Browser::signed_in(&app, "globex", "carol@globex.test").await;

    // The assistant: the injected note's "email everything out" is held, never sent.
    let turn = alice
        .json(
            "POST",
            "/api/assistant",
            Some(r#"{"prompt": "Summarise all my notes"}"#),
        )
        .await;
    assert_eq!(turn.status, StatusCode::OK, "{}", turn.body);
    let transcript: serde_json::Value = serde_json::from_str(&turn.body).unwrap();
    let lines = transcript["transcript"].as_array().unwrap();
    assert!(
        lines
            .iter()
            .any(|l| l["who"] == "gate"
                && l["text"].as_str().unwrap().contains("waiting for approval")),
        "{}",
        turn.body
    );
    let (pending, sent): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'pending' AND tool = 'send_email'), \
                count(*) FILTER (WHERE status IN ('executing', 'executed')) \
         FROM tool_sandbox.proposals",
    )
    .fetch_one(&admin)
    .await
    .unwrap();
    assert_eq!((pending, sent), (1, 0));
    assert!(app.outbox_links().iter().all(|l| !l.contains("attacker")));
    for bad in [
        r#"{"prompt": ""}"#,
        r#"{"prompt": "hi", "tools": ["send_email"]}"#,
        r#"{"text": "hi"}"#,
        "not json",
    ] {
        let page = alice.json("POST", "/api/assistant", Some(bad)).await;
        assert!(page.status.is_client_error(), "{bad}: {}", page.status);
    }
    let long = format!(r#"{{"prompt": "{}"}}"#, "a".repeat(2001));
    let page = alice.json("POST", "/api/assistant", Some(&long)).await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST);
    assert!(page.body.contains("\"error\":\"invalid_input\""));

    // Members: admins only, and only their own tenant's.
    let listed = alice.json("GET", "/api/admin/members", None).await;
    assert_eq!(listed.status, StatusCode::OK);
    assert!(listed.body.contains("bob@acme.test") && !listed.body.contains("carol"));
    let refused = bob.json("GET", "/api/admin/members", None).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert!(refused.body.contains("\"error\":\"admin_required\""));
    assert!(!refused.body.contains("alice"));
    // A member cannot export either (before bob is promoted below).
    let refused = bob.json("POST", "/api/admin/export", None).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert!(!refused.body.contains("Marketing"));
    // A member sending garbage to an admin route learns that it is for admins, nothing about
    // the input; an admin sending garbage gets the machine code for it.
    let (bob_id,): (Uuid,) =
        sqlx::query_as("SELECT user_id FROM workspace.members WHERE email = 'bob@acme.test'")
            .fetch_one(&admin)
            .await
            .unwrap();
    let path = format!("/api/admin/members/{bob_id}/role");
    let page = bob.json("POST", &path, Some("not json")).await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    assert!(
        page.body.contains("\"error\":\"admin_required\""),
        "{}",
        page.body
    );
    let theirs = carol.json("GET", "/api/admin/members", None).await;
    assert_eq!(theirs.status, StatusCode::OK);
    assert!(theirs.body.contains("carol@globex.test") && !theirs.body.contains("acme.test"));

    // A role change: bob cannot, carol cannot reach acme's bob (a missing member), alice can,
    // and the change is audited.
    let promote = Some(r#"{"role": "admin"}"#);
    let page = bob.json("POST", &path, promote).await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    let page = carol.json("POST", &path, promote).await;
    assert_eq!(page.status, StatusCode::NOT_FOUND);
    assert!(page.body.contains("\"error\":\"not_found\""));
    let role = |admin: sqlx::PgPool| async move {
        let (r,): (String,) =
            sqlx::query_as("SELECT role FROM workspace.members WHERE email = 'bob@acme.test'")
                .fetch_one(&admin)
                .await
                .unwrap();
        r
    };
    assert_eq!(role(admin.clone()).await, "member");
    for bad in [
        r#"{"role": "owner"}"#,
        r#"{"role": "admin", "tenant": "globex"}"#,
    ] {
        let page = alice.json("POST", &path, Some(bad)).await;
        assert!(page.status.is_client_error(), "{bad}: {}", page.status);
    }
    let alice_id: (Uuid,) =
        sqlx::query_as("SELECT user_id FROM workspace.members WHERE email = 'alice@acme.test'")
            .fetch_one(&admin)
            .await
            .unwrap();
    let own = alice
        .json(
            "POST",
            &format!("/api/admin/members/{}/role", alice_id.0),
            Some(r#"{"role": "member"}"#),
        )
        .await;
    assert_eq!(own.status, StatusCode::BAD_REQUEST);
    assert_eq!(role(admin.clone()).await, "member");
    let page = alice.json("POST", &path, promote).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert_eq!(role(admin.clone()).await, "admin");
    common::sequence_all(&admin).await;
    let (changed,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM audit.events WHERE action = 'member.role_changed' AND outcome = 'allowed'",
    )
    .fetch_one(&admin)
    .await
    .unwrap();
    assert_eq!(changed, 1);

    // The export: a fresh second factor first (step_up_required, nothing exported), then the
    // notes with their audit record.
    alice.stale_second_factor("acme", "alice@acme.test").await;
    let stale = alice.json("POST", "/api/admin/export", None).await;
    assert_eq!(stale.status, StatusCode::FORBIDDEN);
    assert!(stale.body.contains("step_up_required"), "{}", stale.body);
    assert!(!stale.body.contains("Marketing"));
    let mut fresh = Browser::signed_in(&app, "acme", "alice@acme.test").await;
    let export = fresh.json("POST", "/api/admin/export", None).await;
    assert_eq!(export.status, StatusCode::OK);
    assert!(export.body.contains("Marketing 120k"));
    common::sequence_all(&admin).await;
    let outcomes: Vec<(String,)> = sqlx::query_as(
        "SELECT outcome FROM audit.events WHERE action = 'data.exported' ORDER BY occurred_at",
    )
    .fetch_all(&admin)
    .await
    .unwrap();
    let outcomes: Vec<&str> = outcomes.iter().map(|(o,)| o.as_str()).collect();
    assert!(
        outcomes.contains(&"denied") && outcomes.contains(&"allowed"),
        "{outcomes:?}"
    );
    // The refusal is recorded with the guard's machine code, not a bare status.
    let (reasons,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM audit.events WHERE action = 'data.exported' AND outcome = 'denied' \
         AND strpos(convert_from(event, 'UTF8'), 'step_up_required') > 0",
    )
    .fetch_one(&admin)
    .await
    .unwrap();
    assert_eq!(reasons, 1);

    // An admin sending garbage gets the machine code for it.
    let page = alice.json("POST", &path, Some("not json")).await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST);
    assert!(
        page.body.contains("\"error\":\"invalid_input\""),
        "{}",
        page.body
    );

    // A staff member's browser sent from another site: a link to a console page opens no
    // workspace (the reason never travels in a URL), and a form posted from another site is
    // refused; neither records a grant. The console's own form opens the workspace with one
    // grant, and every page of the visit uses it.
    let mut sam = Browser::signed_in(&app, "ops", "sam@ops.test").await;
    let grants = || async {
        common::sequence_all(&admin).await;
        let (n,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM audit.events WHERE action = 'tenant.cross_tenant_granted'",
        )
        .fetch_one(&admin)
        .await
        .unwrap();
        n
    };
    let before = grants().await;
    let linked = sam
        .get("/staff/audit?tenant=acme&reason=written+by+someone+else")
        .await;
    assert_eq!(linked.status, StatusCode::OK);
    assert!(linked.body.contains("Open workspace"), "{}", linked.body);
    assert!(!linked.body.contains("written by someone else"));
    let cookie: String = sam
        .cookies
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("; ");
    let forged = Request::builder()
        .method("POST")
        .uri("/staff/visit")
        .header(header::COOKIE, cookie.as_str())
        .header(header::ORIGIN, "https://evil.example")
        .header("sec-fetch-site", "cross-site")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(
            "tenant=acme&reason=written+by+someone+else&next=audit",
        ))
        .unwrap();
    let response = app.router.clone().oneshot(forged).await.unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(grants().await, before, "a cross-site form recorded a grant");
    // Positive control: the console's own form, then three pages of one visit: one grant.
    let opened = sam
        .open_workspace("acme", "reviewing the audit chain", "audit")
        .await;
    assert_eq!(opened.status, StatusCode::SEE_OTHER);
    assert_eq!(opened.location(), "/staff/audit");
    for path in ["/staff/audit", "/staff/approvals", "/staff/audit"] {
        let page = sam.get(path).await;
        assert_eq!(page.status, StatusCode::OK, "{path}");
        assert!(
            page.body.contains("Open: <strong>acme</strong>"),
            "{}",
            page.body
        );
    }
    assert_eq!(grants().await, before + 1, "one grant for the visit");
    // Closed, the visit's pages open nothing.
    let closed = sam.post("/staff/visit/end", &[]).await;
    assert_eq!(closed.status, StatusCode::SEE_OTHER);
    let page = sam.get("/staff/audit").await;
    assert!(page.body.contains("Open workspace"), "{}", page.body);
    assert_eq!(grants().await, before + 1);

    // The runtime role can change a member's role but never make anyone staff: not by update,
    // not by adding a member.
    let (acme,): (Uuid,) = sqlx::query_as("SELECT id FROM workspace.tenants WHERE slug = 'acme'")
        .fetch_one(&admin)
        .await
        .unwrap();
    let runtime_insert = app
        .database()
        .unwrap()
        .pool(testkit::Role::Runtime, 1)
        .await;
    let err = sqlx::raw_sql(&format!(
        "BEGIN; SET LOCAL app.tenant_id = '{acme}'; \
         INSERT INTO workspace.members (tenant_id, user_id, email, display_name, kind, role) \
         VALUES ('{acme}', gen_random_uuid(), 'mallory@acme.test', 'Mallory', 'staff', 'member')"
    ))
    .execute(&runtime_insert)
    .await
    .unwrap_err();
    assert_eq!(
        err.as_database_error().and_then(|e| e.code()).as_deref(),
        Some("42501"),
        "{err}"
    );
    runtime_insert.close().await;
    let runtime = app
        .database()
        .unwrap()
        .pool(testkit::Role::Runtime, 1)
        .await;
    let err = sqlx::raw_sql("UPDATE workspace.members SET kind = 'staff'")
        .execute(&runtime)
        .await
        .unwrap_err();
    assert_eq!(
        err.as_database_error().and_then(|e| e.code()).as_deref(),
        Some("42501"),
        "{err}"
    );
}
