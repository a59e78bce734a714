//! The minimal service end to end, against real PostgreSQL: sign in through the shipped routes,
//! read the workspace's data, be refused another workspace's, perform the audited admin action,
//! and verify the audit chain.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode, header};
use http_body_util::BodyExt;
use magic_auth::mailer::DevOutbox;
use magic_auth::secrecy::{ExposeSecret, SecretBox};
use magic_auth::totp::code_at;
use serde_json::{Value, json};
use tenant_scope::TenantId;
use testkit::{Role, Template, TestDb, fresh_database};
use tower::ServiceExt;

const BASE: &str = "https://notes.example.test";

struct Service {
    router: Router,
    outbox: Arc<DevOutbox>,
    db: TestDb,
    acme: TenantId,
    globex: TenantId,
    _sequencer: audit_log::SequencerHandle,
}

async fn service() -> Service {
    let template = Template::new(
        "minimal_example",
        minimal::migrations(testkit::RUNTIME_ROLE, testkit::CHECKPOINTER_ROLE).unwrap(),
    );
    let db = fresh_database(&template).await;
    let (acme, globex) = (TenantId::new_random(), TenantId::new_random());
    for (tenant, email) in [(acme, "ada@acme.example"), (globex, "eve@globex.example")] {
        db.as_admin(&format!(
            "BEGIN; SET LOCAL app.tenant_id = '{tenant}'; SET LOCAL app.commit_binding = '{tenant}:';
             INSERT INTO minimal.members (tenant_id, user_id, email)
             VALUES ('{tenant}', gen_random_uuid(), '{email}'); COMMIT;"
        ))
        .await;
    }
    let keys = minimal::Keys {
        field: SecretBox::new(Box::new([3; 32])),
        pseudonym: SecretBox::new(Box::new([4; 32])),
        session: SecretBox::new(Box::new([5; 32])),
    };
    let outbox = Arc::new(DevOutbox::new());
    let router = minimal::app(
        db.pool(Role::Runtime, 8).await,
        BASE,
        &keys,
        minimal::Workspaces::new([("acme", acme), ("globex", globex)]),
        outbox.clone(),
    )
    .await
    .unwrap();
    let sequencer_pool = db.pool(Role::Checkpointer, 2).await;
    Service {
        _sequencer: audit_log::Sequencer::new(sequencer_pool).spawn(),
        router,
        outbox,
        db,
        acme,
        globex,
    }
}

/// A browser: cookies kept and sent back, this site's `Origin` on every request.
#[derive(Default)]
struct Browser {
    cookies: HashMap<String, String>,
}

impl Browser {
    async fn send(
        &mut self,
        app: &Service,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::ORIGIN, BASE);
        if !self.cookies.is_empty() {
            let jar: Vec<String> = self
                .cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            request = request.header(
                header::COOKIE,
                HeaderValue::from_str(&jar.join("; ")).unwrap(),
            );
        }
        let request = match body {
            Some(body) => request
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body.to_string())),
            None => request.body(Body::empty()),
        };
        let response = app.router.clone().oneshot(request.unwrap()).await.unwrap();
        self.remember(response.headers());
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    fn remember(&mut self, headers: &HeaderMap) {
        for cookie in headers.get_all(header::SET_COOKIE) {
            let cookie = cookie.to_str().unwrap();
            let (pair, attributes) = cookie.split_once(';').unwrap_or((cookie, ""));
            let (name, value) = pair.split_once('=').unwrap();
            if attributes.contains("Max-Age=0") {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_owned(), value.to_owned());
            }
        }
    }
}

fn now() -> u64 {
    u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp()).unwrap()
}

/// Signs in through the shipped routes: link, confirmation, a new authenticator, its code.
async fn sign_in(app: &Service, workspace: &str, email: &str) -> Browser {
    let mut browser = Browser::default();
    let sent = app.outbox.messages().len();
    let body = json!({ "workspace": workspace, "email": email });
    let (status, _) = browser.send(app, "POST", "/auth/link", Some(body)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let mut mail = None;
    for _ in 0..200 {
        if let Some(m) = app.outbox.messages().get(sent) {
            mail = Some(m.body.expose_secret().to_owned());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mail = mail.expect("a sign-in link");
    let token = mail
        .split("token=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    let body = json!({ "token": token });
    let (status, answer) = browser
        .send(app, "POST", "/auth/link/confirm", Some(body))
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    // aal1: the notes need the second factor.
    let (status, answer) = browser.send(app, "GET", "/notes", None).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("mfa_required"))
    );
    let (status, enrolment) = browser
        .send(app, "POST", "/auth/totp/enrol", Some(json!({})))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{enrolment}");
    let key = enrolment["enrolment"]["secret_base32"].as_str().unwrap();
    let seed = totp_rs::Secret::try_from_base32(key)
        .unwrap()
        .as_bytes()
        .to_vec();
    let code = code_at(&seed, now()).unwrap();
    let (status, answer) = browser
        .send(app, "POST", "/auth/totp", Some(json!({ "code": code })))
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["redirect"], "/notes");
    browser
}

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
