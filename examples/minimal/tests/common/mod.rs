//! What the example's tests share: the service on a throwaway database, a browser to drive its
//! router, sign-in through the shipped routes, and fresh accounts and sessions made directly.
// Each test binary uses part of this module.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use authz_matrix::RouteRecord;
use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode, header};
use http_body_util::BodyExt;
use magic_auth::mailer::DevOutbox;
use magic_auth::secrecy::{ExposeSecret, SecretBox};
use magic_auth::totp::code_at;
use magic_auth::{Assurance, NewSession, SessionConfig, SessionStore};
use rls_guard::TenantPool;
use serde_json::{Value, json};
use tenant_scope::{ActorId, ActorKind, TenantId};
use testkit::{Role, Template, TestDb, fresh_database};
use tower::ServiceExt;

pub const BASE: &str = "https://notes.example.test";

/// The key that signs session rows: the service's, so a session the tests make directly is one
/// the service accepts (as one made by another instance of it would be).
const SESSION_KEY: [u8; 32] = [5; 32];

pub struct Service {
    pub router: Router,
    /// Every route the router serves, recorded as it was built.
    pub routes: RouteRecord,
    pub outbox: Arc<DevOutbox>,
    pub db: TestDb,
    pub acme: TenantId,
    pub globex: TenantId,
    /// The session store of another instance of the service, over the same database.
    sessions: SessionStore,
    _sequencer: audit_log::SequencerHandle,
}

/// Adds an account to `tenant`'s members, as the owner of the data would.
async fn add_member(db: &TestDb, tenant: TenantId, user: uuid::Uuid, email: &str) {
    db.as_admin(&format!(
        "BEGIN; SET LOCAL app.tenant_id = '{tenant}'; SET LOCAL app.commit_binding = '{tenant}:';
         INSERT INTO minimal.members (tenant_id, user_id, email)
         VALUES ('{tenant}', '{user}', '{email}'); COMMIT;"
    ))
    .await;
}

pub async fn service() -> Service {
    let template = Template::new(
        "minimal_example",
        minimal::migrations(testkit::RUNTIME_ROLE, testkit::CHECKPOINTER_ROLE).unwrap(),
    );
    let db = fresh_database(&template).await;
    let (acme, globex) = (TenantId::new_random(), TenantId::new_random());
    for (tenant, email) in [(acme, "ada@acme.example"), (globex, "eve@globex.example")] {
        add_member(&db, tenant, uuid::Uuid::new_v4(), email).await;
    }
    let keys = minimal::Keys {
        field: SecretBox::new(Box::new([3; 32])),
        pseudonym: SecretBox::new(Box::new([4; 32])),
        session: SecretBox::new(Box::new(SESSION_KEY)),
    };
    let outbox = Arc::new(DevOutbox::new());
    let (router, routes) = minimal::app(
        db.pool(Role::Runtime, 8).await,
        BASE,
        &keys,
        minimal::Workspaces::new([("acme", acme), ("globex", globex)]),
        outbox.clone(),
    )
    .await
    .unwrap();
    let pool = TenantPool::new(db.pool(Role::Runtime, 2).await)
        .await
        .unwrap()
        .with_session_liveness(magic_auth::session_liveness())
        .await
        .unwrap();
    let sessions =
        SessionStore::new(pool, SessionConfig::default(), Box::new(SESSION_KEY)).unwrap();
    let sequencer_pool = db.pool(Role::Checkpointer, 2).await;
    Service {
        _sequencer: audit_log::Sequencer::new(sequencer_pool).spawn(),
        router,
        routes,
        outbox,
        db,
        acme,
        globex,
        sessions,
    }
}

impl Service {
    /// A new account in `tenant`, its own address, with an authenticator set up through the
    /// shipped routes (from a link-only session, signed out afterwards).
    pub async fn fresh_member(&self, tenant: TenantId) -> ActorId {
        let id = uuid::Uuid::new_v4();
        add_member(
            &self.db,
            tenant,
            id,
            &format!("{}@example.test", id.simple()),
        )
        .await;
        let user = ActorId::from_uuid(id).unwrap();
        let (mut browser, _) = self
            .signed_in(tenant, user, Assurance::Aal1, Duration::ZERO)
            .await;
        add_authenticator(self, &mut browser).await;
        let (status, _) = browser
            .send(self, "POST", "/auth/sign-out", Some(json!({})))
            .await;
        assert_eq!(status, StatusCode::OK);
        user
    }

    /// A browser holding a new session of `user` in `tenant`, made directly in the session store
    /// with `assurance`, as if `age` ago (its factors checked then), and the session's id.
    pub async fn signed_in(
        &self,
        tenant: TenantId,
        user: ActorId,
        assurance: Assurance,
        age: Duration,
    ) -> (Browser, uuid::Uuid) {
        let new = NewSession::new(user, ActorKind::User, assurance);
        let (session, token) = self.sessions.create_aged(tenant, &new, age).await.unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(
            header::SET_COOKIE,
            magic_auth::session_cookie(&token, &session),
        );
        let mut browser = Browser::default();
        browser.remember(&headers);
        (browser, session.id)
    }

    /// A new note of acme, written through the service by a new member of acme: its id.
    pub async fn fresh_note(&self) -> String {
        let user = self.fresh_member(self.acme).await;
        let (mut author, _) = self
            .signed_in(self.acme, user, Assurance::Aal2, Duration::ZERO)
            .await;
        let body = json!({ "body": "a note of acme" });
        let (status, created) = author.send(self, "POST", "/notes", Some(body)).await;
        assert_eq!(status, StatusCode::OK, "{created}");
        created["id"].as_str().unwrap().to_owned()
    }
}

/// A browser: cookies kept and sent back, this site's `Origin` on every request.
#[derive(Default)]
pub struct Browser {
    cookies: HashMap<String, String>,
}

impl Browser {
    pub async fn send(
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
pub async fn sign_in(app: &Service, workspace: &str, email: &str) -> Browser {
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
    let answer = add_authenticator(app, &mut browser).await;
    assert_eq!(answer["redirect"], "/notes");
    browser
}

/// Sets up an authenticator for the browser's account through the shipped routes (a new one,
/// confirmed with its current code: the session becomes `aal2`): the confirmation's answer.
pub async fn add_authenticator(app: &Service, browser: &mut Browser) -> Value {
    let (status, enrolment) = browser
        .send(app, "POST", "/auth/totp/enrol", Some(json!({})))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{enrolment}");
    let key = enrolment["enrolment"]["secret_base32"].as_str().unwrap();
    let seed = totp_rs::Secret::try_from_base32(key)
        .unwrap()
        .as_bytes()
        .to_vec()
        .into();
    let code = code_at(&seed, now()).unwrap();
    let (status, answer) = browser
        .send(
            app,
            "POST",
            "/auth/totp",
            Some(json!({ "code": code.expose_secret() })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    answer
}
