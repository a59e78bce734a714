//! The demo, end to end through the real router: sign-in with link and TOTP, tenant isolation
//! in the pages, the assistant's injected request held, the staff console's cross-tenant grant,
//! rejection, approval with step-up, replay, and the audit viewer's verified chain.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use common::{Browser, start};
use tower::ServiceExt;

#[tokio::test]
async fn the_whole_demo_through_the_router() {
    let app = start().await;

    // Security headers on every page.
    let mut anonymous = Browser::new(&app);
    let home = anonymous.get("/").await;
    assert_eq!(home.status, StatusCode::OK);
    for h in [
        "strict-transport-security",
        "content-security-policy",
        "x-content-type-options",
        "x-frame-options",
        "referrer-policy",
        "x-request-id",
    ] {
        assert!(home.headers.contains_key(h), "{h} missing");
    }
    assert!(
        home.headers[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .contains("frame-ancestors 'none'")
    );
    // One script, inline, allowed by its hash and nothing else: the page's own script text
    // hashes to what the policy names, and no other script source is allowed.
    let csp = home.headers[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(home.body.matches("<script").count(), 1, "one script");
    let script = home
        .body
        .split_once("<script>")
        .and_then(|(_, rest)| rest.split_once("</script>"))
        .map(|(script, _)| script)
        .unwrap();
    let hash = {
        use base64::Engine as _;
        use sha2::Digest as _;
        base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(script.as_bytes()))
    };
    assert!(
        csp.contains(&format!("script-src 'sha256-{hash}';")),
        "{csp}"
    );
    assert!(
        !csp.contains("unsafe") && !csp.contains("script-src 'self'"),
        "{csp}"
    );
    // Plain HTTP only redirects.
    let redirect = reference_app::redirect_app(app.config.base_url.clone())
        .oneshot(Request::get("/notes?x=1").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(redirect.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        redirect.headers()[header::LOCATION],
        format!("{}/notes?x=1", app.config.base_url)
    );

    // Anonymous visitors reach no tenant page.
    assert_eq!(
        anonymous.get("/notes").await.status,
        StatusCode::UNAUTHORIZED
    );
    // An unknown address gets the same answer as a known one.
    let unknown = anonymous.ask_link("acme", "nobody@acme.test").await;
    assert_eq!(unknown.status, StatusCode::SEE_OTHER);
    assert_eq!(unknown.location(), "/?sent=1");
    assert!(
        anonymous
            .get("/?sent=1")
            .await
            .body
            .contains("a sign-in link is on its way")
    );
    // Asking again and again for one address is limited (known or not, the same way).
    let mut limited = false;
    for _ in 0..10 {
        let again = anonymous.ask_link("acme", "nobody@acme.test").await;
        assert_eq!(again.status, StatusCode::SEE_OTHER);
        if again.location() == "/?error=rate_limited" {
            limited = true;
            break;
        }
        assert_eq!(again.location(), "/?sent=1");
    }
    assert!(limited, "the per-address limit refuses");
    assert!(
        anonymous
            .get("/?error=rate_limited")
            .await
            .body
            .contains("Too many sign-in links")
    );

    // A link opened in another browser does nothing, and is not used up.
    let mut alice = Browser::new(&app);
    let before = app.outbox_links().len();
    alice.ask_link("acme", "alice@acme.test").await;
    for _ in 0..200 {
        if app.outbox_links().len() > before {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let link = app.outbox_links().last().cloned().unwrap();
    let token = link.split("token=").nth(1).unwrap().to_owned();
    let mut stranger = Browser::new(&app);
    let forwarded = stranger.confirm_link(&token).await;
    assert_eq!(forwarded.status, StatusCode::SEE_OTHER);
    assert_eq!(forwarded.location(), "/?error=link_invalid");
    assert!(
        !stranger.cookies.keys().any(|k| k.contains("session")),
        "{:?}",
        stranger.cookies
    );

    // In Alice's own browser the same link still works: the stranger did not use it up. Then
    // authenticator enrolment and a code.
    let confirmed = alice.confirm_link(&token).await;
    assert_eq!(
        confirmed.status,
        StatusCode::SEE_OTHER,
        "{}",
        confirmed.body
    );
    // Before the second factor, tenant pages stay closed: a followed link lands on the code
    // page, which brings her back afterwards.
    let early = alice.get("/notes").await;
    assert_eq!(early.status, StatusCode::SEE_OTHER);
    assert_eq!(early.location(), "/auth/totp?next=%2Fnotes");
    alice.enrol_totp("/notes").await;
    // The link was used up by the sign-in.
    let reused = alice.confirm_link(&token).await;
    assert_eq!(reused.location(), "/?error=link_invalid");
    let notes = alice.get("/notes").await;
    assert_eq!(notes.status, StatusCode::OK);
    assert!(notes.body.contains("Q3 budget") && notes.body.contains("Vendor onboarding"));
    // Times are shown to the second with their zone, not as a raw timestamp, in a `<time>`
    // element whose `datetime` the page's script shows in the reader's zone.
    let updated = notes.body.split("Updated ").nth(1).unwrap();
    let (datetime, updated) = updated
        .strip_prefix("<time datetime=\"")
        .and_then(|rest| rest.split_once("\">"))
        .unwrap();
    assert_eq!(datetime.len(), 20, "{datetime}");
    assert!(
        datetime.ends_with('Z') && datetime.as_bytes()[10] == b'T',
        "{datetime}"
    );
    let shown: String = updated.chars().take(23).collect();
    let b = shown.as_bytes();
    assert!(
        b.len() == 23
            && (b[4], b[7], b[10], b[13], b[16]) == (b'-', b'-', b' ', b':', b':')
            && shown.ends_with(" UTC"),
        "{shown}"
    );
    assert!(
        !notes.body.contains("Globex roadmap"),
        "another tenant's note is never listed"
    );
    // The phone number lookup goes through the blind index.
    let by_phone = alice.get("/notes?phone=%2B1%20555%200100").await;
    assert!(by_phone.body.contains("Customer call: Hooli") && !by_phone.body.contains("Q3 budget"));
    // Another tenant's note id answers exactly like a missing one.
    let admin = app.database().unwrap().pool(testkit::Role::Admin, 1).await;
    let (globex_note,): (uuid::Uuid,) =
        sqlx::query_as("SELECT n.id FROM workspace.notes n JOIN workspace.tenants t ON t.id = n.tenant_id WHERE t.slug = 'globex'")
            .fetch_one(&admin)
            .await
            .unwrap();
    let foreign = alice.get(&format!("/notes/{globex_note}")).await;
    let missing = alice.get(&format!("/notes/{}", uuid::Uuid::new_v4())).await;
    assert_eq!(foreign.status, StatusCode::NOT_FOUND);
    assert_eq!(foreign.body, missing.body);
    let deleted = alice
        .post(&format!("/notes/{globex_note}/delete"), &[])
        .await;
    assert_eq!(deleted.status, StatusCode::NOT_FOUND);
    let (still_there,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM workspace.notes WHERE id = $1")
            .bind(globex_note)
            .fetch_one(&admin)
            .await
            .unwrap();
    assert_eq!(still_there, 1);
    // The note body is not stored in the clear.
    let (body,): (Vec<u8>,) =
        sqlx::query_as("SELECT body FROM workspace.notes WHERE title = 'Q3 budget'")
            .fetch_one(&admin)
            .await
            .unwrap();
    assert!(!String::from_utf8_lossy(&body).contains("Marketing"));

    // The JSON API: the same scoping, with stable error codes.
    let listed = alice.json("GET", "/api/notes", None).await;
    assert_eq!(listed.status, StatusCode::OK);
    let listed: serde_json::Value = serde_json::from_str(&listed.body).unwrap();
    assert!(
        listed["notes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["title"] == "Q3 budget")
    );
    let foreign = alice
        .json("GET", &format!("/api/notes/{globex_note}"), None)
        .await;
    assert_eq!(foreign.status, StatusCode::NOT_FOUND);
    assert!(
        foreign.body.contains("\"error\":\"not_found\""),
        "{}",
        foreign.body
    );
    let gone = alice
        .json("DELETE", &format!("/api/notes/{globex_note}"), None)
        .await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    let extra = alice
        .json(
            "POST",
            "/api/notes",
            Some(r#"{"title": "x", "tenant_id": "00000000-0000-0000-0000-000000000000"}"#),
        )
        .await;
    assert_eq!(extra.status, StatusCode::BAD_REQUEST);
    assert!(extra.body.contains("invalid_input"));
    let created = alice
        .json(
            "POST",
            "/api/notes",
            Some(r#"{"title": "From the API", "body": "hello"}"#),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let id = serde_json::from_str::<serde_json::Value>(&created.body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        alice
            .json("GET", &format!("/api/notes/{id}"), None)
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        alice
            .json("DELETE", &format!("/api/notes/{id}"), None)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    let anonymous_api = anonymous.json("GET", "/api/notes", None).await;
    assert_eq!(anonymous_api.status, StatusCode::UNAUTHORIZED);
    assert!(
        anonymous_api.body.contains("unauthenticated"),
        "{}",
        anonymous_api.body
    );

    // Tenant administration: alice (admin) exports with a fresh second factor; bob (member)
    // is refused. Both attempts are in the audit chain.
    let members = alice.get("/admin/members").await;
    assert_eq!(members.status, StatusCode::OK);
    assert!(members.body.contains("bob@acme.test") && !members.body.contains("carol@globex.test"));
    let export = alice.post("/admin/export", &[]).await;
    assert_eq!(export.status, StatusCode::OK);
    assert_eq!(export.headers[header::CONTENT_TYPE], "application/json");
    assert!(export.body.contains("Marketing 120k") && !export.body.contains("Globex roadmap"));
    let mut bob = Browser::signed_in(&app, "acme", "bob@acme.test").await;
    assert_eq!(
        bob.post("/admin/export", &[]).await.status,
        StatusCode::FORBIDDEN
    );
    common::sequence_all(&admin).await;
    let exports: Vec<(String,)> = sqlx::query_as(
        "SELECT outcome FROM audit.events WHERE action = 'data.exported' ORDER BY occurred_at",
    )
    .fetch_all(&admin)
    .await
    .unwrap();
    assert_eq!(
        exports,
        vec![("allowed".to_owned(),), ("denied".to_owned(),)],
        "{exports:?}"
    );

    // The assistant reads the injected note and asks to email everything out: held.
    let run = alice
        .post("/assistant", &[("prompt", "Summarise all my notes")])
        .await;
    assert_eq!(run.status, StatusCode::OK, "{}", run.body);
    assert!(run.body.contains("ran search_notes"), "{}", run.body);
    assert!(run.body.contains("is waiting for approval"), "{}", run.body);
    assert!(app.outbox_links().iter().all(|l| !l.contains("attacker")));
    let (held,): (i64,) = sqlx::query_as("SELECT count(*) FROM tool_sandbox.proposals WHERE tool = 'send_email' AND status = 'pending'")
        .fetch_one(&admin)
        .await
        .unwrap();
    assert_eq!(held, 1);
    // Alice is not staff: the console refuses her.
    let refused = alice.get("/staff/approvals").await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert!(
        !refused.body.to_lowercase().contains("staff"),
        "a member is not told about staff: {}",
        refused.body
    );

    // Staff: before the second factor the console is closed; after it, a reason opens a queue.
    let mut sam = Browser::new(&app);
    let confirmed = sam.open_link("ops", "sam@ops.test").await;
    assert_eq!(confirmed.status, StatusCode::SEE_OTHER);
    let early = sam.get("/staff/approvals").await;
    assert_eq!(early.status, StatusCode::SEE_OTHER);
    assert_eq!(early.location(), "/auth/totp?next=%2Fstaff%2Fapprovals");
    sam.enrol_totp("/staff/approvals").await;
    let no_reason = sam.open_workspace("acme", "x", "approvals").await;
    assert_eq!(
        no_reason.status,
        StatusCode::FORBIDDEN,
        "a reason of 10+ characters is required"
    );
    let opened = sam
        .open_workspace("acme", "reviewing the assistant queue", "approvals")
        .await;
    assert_eq!(opened.status, StatusCode::SEE_OTHER);
    assert_eq!(opened.location(), "/staff/approvals");
    let queue = sam.get("/staff/approvals").await;
    assert_eq!(queue.status, StatusCode::OK, "{}", queue.body);
    // Staff navigation: the console and the account's own pages, no workspace pages.
    assert!(queue.body.contains("href=\"/staff/audit\""));
    assert!(!queue.body.contains("href=\"/notes\"") && !queue.body.contains("href=\"/assistant\""));
    assert!(queue.body.contains("exfil@attacker.test"));
    assert!(
        queue.body.contains("/to (untrusted)"),
        "the recipient is flagged: {}",
        queue.body
    );
    let id = queue
        .body
        .split("/staff/approvals/acme/")
        .nth(1)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let digest = queue
        .body
        .split("name=\"digest\" value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_owned();

    // A digest other than the one shown approves nothing.
    let wrong = sam
        .post(
            &format!("/staff/approvals/acme/{id}/approve"),
            &[("digest", &"00".repeat(32))],
        )
        .await;
    assert!(
        wrong.body.contains("changed since you opened it"),
        "{}",
        wrong.body
    );
    // Sam rejects it.
    let rejected = sam
        .post(&format!("/staff/approvals/acme/{id}/reject"), &[])
        .await;
    assert!(rejected.body.contains("Rejected."), "{}", rejected.body);
    let again = sam
        .post(
            &format!("/staff/approvals/acme/{id}/approve"),
            &[("digest", &digest)],
        )
        .await;
    assert!(again.body.contains("already decided"), "{}", again.body);

    // A second run; this time Sam approves (with a fresh second factor): it runs exactly once.
    alice
        .post("/assistant", &[("prompt", "Summarise all my notes")])
        .await;
    let queue = sam.get("/staff/approvals").await;
    let id = queue
        .body
        .split("/staff/approvals/acme/")
        .nth(1)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let digest = queue
        .body
        .split("name=\"digest\" value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_owned();
    let approved = sam
        .post(
            &format!("/staff/approvals/acme/{id}/approve"),
            &[("digest", &digest)],
        )
        .await;
    assert!(
        approved.body.contains("Approved. send_email ran."),
        "{}",
        approved.body
    );
    let replay = sam
        .post(
            &format!("/staff/approvals/acme/{id}/approve"),
            &[("digest", &digest)],
        )
        .await;
    assert!(replay.body.contains("already decided"), "{}", replay.body);
    let (executed,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM tool_sandbox.proposals WHERE status = 'executed'")
            .fetch_one(&admin)
            .await
            .unwrap();
    assert_eq!(executed, 1);

    // The JSON API refuses the same replay, with the refusal's machine code.
    let replay_json = sam
        .json(
            "POST",
            &format!("/api/staff/approvals/acme/{id}"),
            Some(&format!(
                r#"{{"decision": "approve", "digest": "{digest}", "reason": "reviewing the assistant queue"}}"#
            )),
        )
        .await;
    assert_eq!(replay_json.status, StatusCode::CONFLICT);
    assert!(
        replay_json.body.contains("\"error\":\"not_pending\""),
        "{}",
        replay_json.body
    );
    let listed = alice.json("GET", "/api/proposals", None).await;
    assert_eq!(listed.status, StatusCode::OK);
    assert!(
        listed.body.contains("\"status\":\"executed\"")
            && listed.body.contains("\"status\":\"rejected\"")
    );

    // The audit viewer: the grants, the decisions, and a verified chain.
    let audit = sam.get("/staff/audit").await;
    assert_eq!(audit.status, StatusCode::OK);
    assert!(audit.body.contains("chain verified"), "{}", audit.body);
    for action in [
        "agent.tool_proposed",
        "agent.tool_rejected",
        "agent.tool_approved",
        "agent.tool_executed",
        "tenant.cross_tenant_granted",
        "authn.login_succeeded",
    ] {
        // Filtered by action: that action's events and no other.
        let filtered = sam.get(&format!("/staff/audit?action={action}")).await;
        assert_eq!(filtered.status, StatusCode::OK);
        let listed = filtered.body.matches(&format!("<td>{action}</td>")).count();
        assert!(listed >= 1, "{action} missing: {}", filtered.body);
        assert_eq!(
            filtered.body.matches("<tr><td>").count(),
            listed,
            "{action}"
        );
    }
    // A page before position 3 holds positions 2 and 1, newest first; a filter that is not an
    // action name is refused with a message, not a query.
    let older = sam.get("/staff/audit?before=3").await;
    assert_eq!(older.body.matches("<tr><td>").count(), 2, "{}", older.body);
    assert!(older.body.find("<tr><td>2</td>") < older.body.find("<tr><td>1</td>"));
    let bad = sam.get("/staff/audit?action=not%20an%20action").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.body.contains("not an action name"), "{}", bad.body);

    // Sign out revokes the session at once.
    let cookie = alice.cookies.clone();
    alice.post("/api/auth/sign-out", &[("next", "/")]).await;
    let mut replayed = Browser::new(&app);
    replayed.cookies = cookie;
    assert_eq!(
        replayed.get("/notes").await.status,
        StatusCode::UNAUTHORIZED
    );
}
