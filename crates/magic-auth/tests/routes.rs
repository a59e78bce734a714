//! The ready-made sign-in routes over HTTP, against real PostgreSQL: the whole flow as a client
//! drives it, and every refusal as an attacker meets it (each beside the legitimate request that
//! succeeds in the same setup).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::code_at;

use std::collections::HashMap;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode, header};
use axum::response::Response;
use http_body_util::BodyExt;
use magic_auth::SessionManagerLayer;
use magic_auth::routes::{SignInConfig, SignInRoutes};
use serde_json::{Value, json};
use tenant_scope::{ActorKind, TenantDirectory, TenantId};
use tower::ServiceExt;

use common::{Fixture, fixture, token_in_body};

const ORIGIN: &str = "https://app.example.test";

/// The tenant directory: one workspace, `acme`.
struct Workspaces(TenantId);

impl TenantDirectory for Workspaces {
    type Error = common::Never;
    async fn by_slug(&self, slug: &str) -> Result<Option<TenantId>, common::Never> {
        Ok((slug == "acme").then_some(self.0))
    }
    async fn contains(&self, tenant: TenantId) -> Result<bool, common::Never> {
        Ok(tenant == self.0)
    }
}

struct App {
    router: Router,
    fx: Fixture,
}

async fn app_with(config: SignInConfig) -> App {
    let fx = fixture(4).await;
    let routes = SignInRoutes::new(
        Workspaces(fx.tenant),
        fx.links.clone(),
        fx.sessions.clone(),
        fx.totp.clone(),
        config,
    )
    .unwrap();
    let router = Router::new()
        .nest("/auth", routes.into_router())
        .layer(SessionManagerLayer::new(fx.sessions.clone()));
    App { router, fx }
}

async fn app() -> App {
    app_with(SignInConfig::new().after_sign_in("/home")).await
}

/// A browser: its cookies, sent back on every request, with this site's `Origin`.
#[derive(Default, Clone)]
struct Browser {
    cookies: HashMap<String, String>,
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
    text: String,
}

impl Browser {
    fn remember(&mut self, response: &Response) {
        for cookie in response.headers().get_all(header::SET_COOKIE) {
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

    fn cookie_header(&self) -> Option<HeaderValue> {
        (!self.cookies.is_empty()).then(|| {
            let joined: Vec<String> = self
                .cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            HeaderValue::from_str(&joined.join("; ")).unwrap()
        })
    }

    async fn send(&mut self, app: &App, request: Request<Body>) -> Answer {
        let mut request = request;
        if let Some(cookies) = self.cookie_header() {
            request.headers_mut().insert(header::COOKIE, cookies);
        }
        let response = app.router.clone().oneshot(request).await.unwrap();
        self.remember(&response);
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Answer {
            status,
            headers,
            body,
            text,
        }
    }

    async fn post(&mut self, app: &App, path: &str, body: Value) -> Answer {
        let request = Request::post(path)
            .header(header::ORIGIN, ORIGIN)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        self.send(app, request).await
    }

    async fn get(&mut self, app: &App, path: &str) -> Answer {
        self.send(app, Request::get(path).body(Body::empty()).unwrap())
            .await
    }
}

fn now() -> u64 {
    u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp()).unwrap()
}

fn seed_of(answer: &Answer) -> Vec<u8> {
    let key = answer.body["enrolment"]["secret_base32"].as_str().unwrap();
    totp_rs::Secret::try_from_base32(key)
        .unwrap()
        .as_bytes()
        .to_vec()
}

/// Asks for a link for `email` in `acme` and follows it: the browser ends up `aal1`.
async fn signed_in_aal1(app: &App, browser: &mut Browser, email: &str) {
    let sent = app.fx.outbox.messages().len();
    let asked = browser
        .post(
            app,
            "/auth/link",
            json!({ "workspace": "acme", "email": email }),
        )
        .await;
    assert_eq!(asked.status, StatusCode::ACCEPTED, "{}", asked.text);
    let token = wait_for_mail(app, sent).await;
    let confirmed = browser
        .post(app, "/auth/link/confirm", json!({ "token": token }))
        .await;
    assert_eq!(confirmed.status, StatusCode::OK, "{}", confirmed.text);
    assert_eq!(confirmed.body["assurance"], "aal1");
}

/// The token of the first message after the first `sent` ones (delivery runs in the
/// background).
async fn wait_for_mail(app: &App, sent: usize) -> String {
    for _ in 0..200 {
        let messages = app.fx.outbox.messages();
        if messages.len() > sent {
            use magic_auth::secrecy::ExposeSecret;
            return token_in_body(messages[sent].body.expose_secret());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no sign-in mail arrived");
}

/// Enrols (through the routes) and completes the second factor: the browser ends up `aal2`.
async fn signed_in_aal2(app: &App, browser: &mut Browser, email: &str) -> Vec<u8> {
    signed_in_aal1(app, browser, email).await;
    let started = browser.post(app, "/auth/totp/enrol", json!({})).await;
    assert_eq!(started.status, StatusCode::CREATED, "{}", started.text);
    let seed = seed_of(&started);
    let code = code_at(&seed, now()).unwrap();
    let second = browser
        .post(app, "/auth/totp", json!({ "code": code }))
        .await;
    assert_eq!(second.status, StatusCode::OK, "{}", second.text);
    assert_eq!(second.body["assurance"], "aal2");
    seed
}

fn assert_refusal(answer: &Answer, status: StatusCode, code: &str) {
    assert_eq!(answer.status, status, "{}", answer.text);
    assert_eq!(answer.body["error"], code, "{}", answer.text);
    assert!(answer.body["message"].is_string(), "{}", answer.text);
    assert_eq!(
        answer.body.as_object().unwrap().len(),
        2,
        "the shared shape: {}",
        answer.text
    );
}

#[tokio::test]
async fn the_whole_flow_over_http() {
    let app = app().await;
    let user = app.fx.account("ada@example.com", ActorKind::User);
    let mut browser = Browser::default();

    // The link: the same answer as for an unknown address, and the verifier cookie.
    let asked = browser
        .post(
            &app,
            "/auth/link",
            json!({ "workspace": "ACME ", "email": "ada@example.com" }),
        )
        .await;
    assert_eq!(asked.status, StatusCode::ACCEPTED);
    assert_eq!(asked.headers[header::CACHE_CONTROL], "no-store");
    assert!(browser.cookies.contains_key("__Host-magic-auth-verifier"));
    let token = wait_for_mail(&app, 0).await;

    // The landing page only shows a button that posts the token back.
    let landing = browser
        .get(&app, &format!("/auth/link?token={token}"))
        .await;
    assert_eq!(landing.status, StatusCode::OK);
    assert!(landing.text.contains(&format!("value=\"{token}\"")));
    assert!(landing.text.contains("action=\"link/confirm\""));
    assert_eq!(landing.headers[header::REFERRER_POLICY], "no-referrer");
    assert_eq!(app.fx.live_sessions(user).await, 0, "a GET signs nobody in");

    let confirmed = browser
        .post(&app, "/auth/link/confirm", json!({ "token": token }))
        .await;
    assert_eq!(confirmed.status, StatusCode::OK, "{}", confirmed.text);
    assert_eq!(confirmed.body["assurance"], "aal1");
    assert_eq!(confirmed.body["redirect"], "/home");
    assert!(!browser.cookies.contains_key("__Host-magic-auth-verifier"));
    assert!(browser.cookies.contains_key(magic_auth::SESSION_COOKIE));

    // No authenticator yet: start one, see the same one again, confirm it.
    let state = browser.get(&app, "/auth/totp").await;
    assert_eq!(state.body["state"], "not_started", "{}", state.text);
    let started = browser.post(&app, "/auth/totp/enrol", json!({})).await;
    assert_eq!(started.status, StatusCode::CREATED);
    assert!(
        started.body["enrolment"]["qr_svg"]
            .as_str()
            .unwrap()
            .starts_with("<svg")
    );
    let again = browser.get(&app, "/auth/totp").await;
    assert_eq!(again.body["state"], "pending");
    assert_eq!(
        again.body["enrolment"]["secret_base32"],
        started.body["enrolment"]["secret_base32"]
    );
    let seed = seed_of(&started);
    let aal1_cookie = browser.cookies[magic_auth::SESSION_COOKIE].clone();
    let second = browser
        .post(
            &app,
            "/auth/totp",
            json!({ "code": code_at(&seed, now()).unwrap() }),
        )
        .await;
    assert_eq!(second.status, StatusCode::OK, "{}", second.text);
    assert_eq!(second.body["assurance"], "aal2");
    assert_ne!(
        browser.cookies[magic_auth::SESSION_COOKIE],
        aal1_cookie,
        "the session is rotated on every factor check"
    );
    let state = browser.get(&app, "/auth/totp").await;
    assert_eq!(state.body["state"], "active");

    // Sessions, a step-up (the next step's code), recovery codes.
    let listed = browser.get(&app, "/auth/sessions").await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.text);
    let sessions = listed.body["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0]["current"], true);
    let stepped = browser
        .post(
            &app,
            "/auth/step-up",
            json!({ "code": code_at(&seed, now() + 30).unwrap() }),
        )
        .await;
    assert_eq!(stepped.status, StatusCode::OK, "{}", stepped.text);
    let codes = browser.post(&app, "/auth/recovery-codes", json!({})).await;
    assert_eq!(codes.status, StatusCode::OK, "{}", codes.text);
    assert_eq!(codes.body["codes"].as_array().unwrap().len(), 10);
    assert_eq!(codes.headers[header::CACHE_CONTROL], "no-store");

    // Sign out: the cookie is cleared, and the old one no longer works anywhere.
    let old = browser.clone();
    let out = browser.post(&app, "/auth/sign-out", json!({})).await;
    assert_eq!(out.status, StatusCode::OK, "{}", out.text);
    assert!(!browser.cookies.contains_key(magic_auth::SESSION_COOKIE));
    let mut replay = old;
    assert_refusal(
        &replay.get(&app, "/auth/sessions").await,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    );
    assert_eq!(app.fx.live_sessions(user).await, 0);
}

#[tokio::test]
async fn a_link_works_only_in_the_browser_that_asked_for_it() {
    let app = app().await;
    let user = app.fx.account("ada@example.com", ActorKind::User);
    let mut asker = Browser::default();
    asker
        .post(
            &app,
            "/auth/link",
            json!({ "workspace": "acme", "email": "ada@example.com" }),
        )
        .await;
    let token = wait_for_mail(&app, 0).await;

    // Another browser (no verifier cookie, or its own) is refused, and uses nothing up.
    let mut other = Browser::default();
    assert_refusal(
        &other
            .post(&app, "/auth/link/confirm", json!({ "token": token }))
            .await,
        StatusCode::UNAUTHORIZED,
        "link_invalid",
    );
    other
        .cookies
        .insert("__Host-magic-auth-verifier".to_owned(), "forged".to_owned());
    assert_refusal(
        &other
            .post(&app, "/auth/link/confirm", json!({ "token": token }))
            .await,
        StatusCode::UNAUTHORIZED,
        "link_invalid",
    );
    assert_eq!(app.fx.live_sessions(user).await, 0);

    // The asking browser signs in; a second use of the link is refused.
    let ok = asker
        .post(&app, "/auth/link/confirm", json!({ "token": token }))
        .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text);
    let mut replay = asker.clone();
    assert_refusal(
        &replay
            .post(&app, "/auth/link/confirm", json!({ "token": token }))
            .await,
        StatusCode::UNAUTHORIZED,
        "link_invalid",
    );
    assert_eq!(app.fx.live_sessions(user).await, 1);
}

#[tokio::test]
async fn unknown_workspaces_and_addresses_get_the_same_answer() {
    let app = app().await;
    app.fx.account("ada@example.com", ActorKind::User);
    let mut browser = Browser::default();
    let known = browser
        .post(
            &app,
            "/auth/link",
            json!({ "workspace": "acme", "email": "ada@example.com" }),
        )
        .await;
    wait_for_mail(&app, 0).await;
    for body in [
        json!({ "workspace": "acme", "email": "nobody@example.com" }),
        json!({ "workspace": "globex", "email": "ada@example.com" }),
        json!({ "tenant": TenantId::new_random().to_string(), "email": "ada@example.com" }),
    ] {
        let answer = browser.post(&app, "/auth/link", body.clone()).await;
        assert_eq!(answer.status, known.status, "{body}");
        assert_eq!(answer.body, known.body, "{body}");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        app.fx.outbox.messages().len(),
        1,
        "only the real account got mail"
    );
    // The tenant by id works like the workspace by name.
    let by_id = browser
        .post(
            &app,
            "/auth/link",
            json!({ "tenant": app.fx.tenant.to_string(), "email": "ada@example.com" }),
        )
        .await;
    assert_eq!(by_id.status, StatusCode::ACCEPTED);
    wait_for_mail(&app, 1).await;
}

#[tokio::test]
async fn every_refusal_has_the_shared_shape() {
    let app = app().await;
    app.fx.account("ada@example.com", ActorKind::User);
    let mut browser = Browser::default();

    // Bodies: neither JSON nor a form, malformed, both tenant forms, a field given twice.
    let text = Request::post("/auth/link")
        .header(header::ORIGIN, ORIGIN)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from("workspace=acme&email=ada@example.com"))
        .unwrap();
    assert_refusal(
        &browser.send(&app, text).await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    );
    let broken = Request::post("/auth/link")
        .header(header::ORIGIN, ORIGIN)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{\"workspace\":"))
        .unwrap();
    assert_refusal(
        &browser.send(&app, broken).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    );
    assert_refusal(
        &browser
            .post(
                &app,
                "/auth/link",
                json!({ "workspace": "acme", "tenant": app.fx.tenant.to_string(), "email": "a@b.example" }),
            )
            .await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    );
    let twice = Request::post("/auth/link")
        .header(header::ORIGIN, ORIGIN)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(
            "workspace=acme&email=ada@example.com&email=eve@example.com",
        ))
        .unwrap();
    assert_refusal(
        &browser.send(&app, twice).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    );
    let huge = browser
        .post(
            &app,
            "/auth/link",
            json!({ "workspace": "acme", "email": "a".repeat(20_000) }),
        )
        .await;
    assert_refusal(&huge, StatusCode::PAYLOAD_TOO_LARGE, "body_too_large");
    assert_refusal(
        &browser
            .post(
                &app,
                "/auth/link",
                json!({ "workspace": "acme", "email": "not an address" }),
            )
            .await,
        StatusCode::BAD_REQUEST,
        "invalid_email",
    );

    // Another origin: refused before anything runs; a browser's same-site sibling too.
    for (name, value) in [
        (header::ORIGIN.as_str(), "https://evil.example"),
        ("sec-fetch-site", "same-site"),
        ("sec-fetch-site", "cross-site"),
    ] {
        let request = Request::post("/auth/link")
            .header(name, value)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(
                json!({ "workspace": "acme", "email": "ada@example.com" }).to_string(),
            ))
            .unwrap();
        assert_refusal(
            &browser.send(&app, request).await,
            StatusCode::FORBIDDEN,
            "cross_origin_request",
        );
    }
    assert!(app.fx.outbox.messages().is_empty());

    // Without a session: 401 on every route that needs one.
    for path in ["/auth/totp", "/auth/sessions"] {
        assert_refusal(
            &browser.get(&app, path).await,
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
        );
    }
    for path in [
        "/auth/totp/enrol",
        "/auth/sign-out",
        "/auth/recovery-codes",
        "/auth/account/disable",
    ] {
        assert_refusal(
            &browser.post(&app, path, json!({})).await,
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
        );
    }

    // aal1: the second factor comes first.
    signed_in_aal1(&app, &mut browser, "ada@example.com").await;
    assert_refusal(
        &browser.get(&app, "/auth/sessions").await,
        StatusCode::FORBIDDEN,
        "mfa_required",
    );
    assert_refusal(
        &browser
            .post(&app, "/auth/step-up", json!({ "code": "000000" }))
            .await,
        StatusCode::FORBIDDEN,
        "mfa_required",
    );
    assert_refusal(
        &browser
            .post(&app, "/auth/totp", json!({ "code": "000000" }))
            .await,
        StatusCode::CONFLICT,
        "not_enrolled",
    );
    let started = browser.post(&app, "/auth/totp/enrol", json!({})).await;
    let seed = seed_of(&started);
    let wrong = common::wrong_code(&seed, now());
    assert_refusal(
        &browser
            .post(&app, "/auth/totp", json!({ "code": wrong }))
            .await,
        StatusCode::UNAUTHORIZED,
        "code_rejected",
    );
    // The positive control: the right code.
    let right = browser
        .post(
            &app,
            "/auth/totp",
            json!({ "code": code_at(&seed, now()).unwrap() }),
        )
        .await;
    assert_eq!(right.status, StatusCode::OK, "{}", right.text);
    assert_refusal(
        &browser.post(&app, "/auth/totp/enrol", json!({})).await,
        StatusCode::CONFLICT,
        "already_enrolled",
    );
    assert_refusal(
        &browser
            .post(&app, "/auth/sessions/not-a-uuid/revoke", json!({}))
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
}

#[tokio::test]
async fn sensitive_actions_need_a_fresh_step_up() {
    let app = app_with(SignInConfig::new().step_up_max_age(Duration::from_secs(1))).await;
    let user = app.fx.account("ada@example.com", ActorKind::User);
    let mut browser = Browser::default();
    let seed = signed_in_aal2(&app, &mut browser, "ada@example.com").await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    for path in [
        "/auth/recovery-codes",
        "/auth/account/disable",
        "/auth/totp/replace",
    ] {
        assert_refusal(
            &browser.post(&app, path, json!({})).await,
            StatusCode::FORBIDDEN,
            "step_up_required",
        );
    }
    assert_refusal(
        &browser
            .post(&app, "/auth/email", json!({ "email": "ada@new.example" }))
            .await,
        StatusCode::FORBIDDEN,
        "step_up_required",
    );
    // After a step-up, the same action goes through; disabling ends every session.
    let stepped = browser
        .post(
            &app,
            "/auth/step-up",
            json!({ "code": code_at(&seed, now() + 30).unwrap() }),
        )
        .await;
    assert_eq!(stepped.status, StatusCode::OK, "{}", stepped.text);
    let disabled = browser
        .post(
            &app,
            "/auth/account/disable",
            json!({ "confirm": "disable" }),
        )
        .await;
    assert_eq!(disabled.status, StatusCode::OK, "{}", disabled.text);
    assert_eq!(app.fx.live_sessions(user).await, 0);
}

#[tokio::test]
async fn disabling_takes_the_typed_word_and_tells_the_directory() {
    let app = app().await;
    let user = app.fx.account("ada@example.com", ActorKind::User);
    let mut browser = Browser::default();
    signed_in_aal2(&app, &mut browser, "ada@example.com").await;
    let enabled = |app: &App| {
        app.fx
            .directory
            .find_sync(app.fx.tenant, "ada@example.com")
            .is_some_and(|a| !a.disabled)
    };
    // Attacks: no word, another word, the word in another field; each changes nothing.
    for body in [
        json!({}),
        json!({ "confirm": "yes" }),
        json!({ "confirm": "DISABLE" }),
        json!({ "confirm": "" }),
        json!({ "next": "disable" }),
    ] {
        assert_refusal(
            &browser.post(&app, "/auth/account/disable", body).await,
            StatusCode::BAD_REQUEST,
            "confirmation_required",
        );
    }
    // A page's form without the word goes back to its page with the code.
    let refused = browser
        .send(
            &app,
            form(
                "/auth/account/disable",
                &[("back", "/settings"), ("next", "/")],
            ),
        )
        .await;
    assert_eq!(refused.status, StatusCode::SEE_OTHER, "{}", refused.text);
    assert_eq!(
        refused.headers[header::LOCATION],
        "/settings?error=confirmation_required"
    );
    assert_eq!(app.fx.live_sessions(user).await, 1);
    assert!(enabled(&app));
    assert_eq!(
        browser.get(&app, "/auth/sessions").await.status,
        StatusCode::OK
    );

    // Positive control: the word, from a page's form: on to `next`, every session ended, the
    // cookie cleared, and the directory told.
    let done = browser
        .send(
            &app,
            form(
                "/auth/account/disable",
                &[
                    ("confirm", " disable "),
                    ("next", "/bye"),
                    ("back", "/settings"),
                ],
            ),
        )
        .await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.text);
    assert_eq!(done.headers[header::LOCATION], "/bye");
    assert!(!browser.cookies.contains_key(magic_auth::SESSION_COOKIE));
    assert_eq!(app.fx.live_sessions(user).await, 0);
    assert!(!enabled(&app));
}

#[tokio::test]
async fn settings_forms_go_on_to_their_next_page() {
    let app = app().await;
    app.fx.account("ada@example.com", ActorKind::User);
    let mut browser = Browser::default();
    signed_in_aal2(&app, &mut browser, "ada@example.com").await;

    // Replacing the authenticator from a page: on to `next` (off-site: the default), and the
    // replacement is pending (the JSON answer of a script's request says the same).
    for (next, expected) in [
        ("//evil.example", "/home"),
        ("/settings/authenticator", "/settings/authenticator"),
    ] {
        let started = browser
            .send(&app, form("/auth/totp/replace", &[("next", next)]))
            .await;
        assert_eq!(started.status, StatusCode::SEE_OTHER, "{}", started.text);
        assert_eq!(started.headers[header::LOCATION], expected);
    }
    let started = browser.post(&app, "/auth/totp/replace", json!({})).await;
    assert_eq!(started.status, StatusCode::CREATED, "{}", started.text);
    assert_eq!(started.body["state"], "pending");
    assert_eq!(started.body["redirect"], "/home");
    // An empty recovery-code field is no recovery code: the fresh step-up decides.
    let started = browser
        .send(
            &app,
            form(
                "/auth/totp/replace",
                &[("recovery_code", " "), ("next", "/s")],
            ),
        )
        .await;
    assert_eq!(started.status, StatusCode::SEE_OTHER, "{}", started.text);

    // Asking for an address change from a page: on to `next`; a bad address, back to the page.
    let refused = browser
        .send(
            &app,
            form(
                "/auth/email",
                &[
                    ("email", "not an address"),
                    ("next", "/settings?done=sent"),
                    ("back", "/settings"),
                ],
            ),
        )
        .await;
    assert_eq!(
        refused.headers[header::LOCATION],
        "/settings?error=invalid_email"
    );
    let sent = app.fx.outbox.messages().len();
    let asked = browser
        .send(
            &app,
            form(
                "/auth/email",
                &[
                    ("email", "ada@new.example"),
                    ("next", "/settings?done=sent"),
                    ("back", "/settings"),
                ],
            ),
        )
        .await;
    assert_eq!(asked.status, StatusCode::SEE_OTHER, "{}", asked.text);
    assert_eq!(asked.headers[header::LOCATION], "/settings?done=sent");
    assert!(app.fx.outbox.messages().len() > sent);
}

#[tokio::test]
async fn an_account_revokes_its_own_sessions_only() {
    let app = app().await;
    app.fx.account("ada@example.com", ActorKind::User);
    let bob = app.fx.account("bob@example.com", ActorKind::User);
    let mut ada = Browser::default();
    let mut ada_laptop = Browser::default();
    let mut bob_browser = Browser::default();
    signed_in_aal2(&app, &mut ada, "ada@example.com").await;
    signed_in_aal1(&app, &mut ada_laptop, "ada@example.com").await;
    signed_in_aal1(&app, &mut bob_browser, "bob@example.com").await;
    let (bob_session,): (uuid::Uuid,) = sqlx::query_as(
        "SELECT id FROM auth.sessions WHERE tenant_id = $1 AND user_id = $2 AND revoked_at IS NULL",
    )
    .bind(app.fx.tenant.as_uuid())
    .bind(bob.as_uuid())
    .fetch_one(&app.fx.admin)
    .await
    .unwrap();

    // Bob's session id from Ada's account: "not found", and Bob stays signed in.
    assert_refusal(
        &ada.post(
            &app,
            &format!("/auth/sessions/{bob_session}/revoke"),
            json!({}),
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_eq!(app.fx.live_sessions(bob).await, 1);
    assert_eq!(
        bob_browser.get(&app, "/auth/totp").await.status,
        StatusCode::OK
    );

    // Ada's own other session: listed, then revoked.
    let listed = ada.get(&app, "/auth/sessions").await;
    let sessions = listed.body["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 2, "{}", listed.text);
    let laptop = sessions.iter().find(|s| s["current"] == false).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let revoked = ada
        .post(&app, &format!("/auth/sessions/{laptop}/revoke"), json!({}))
        .await;
    assert_eq!(revoked.status, StatusCode::OK, "{}", revoked.text);
    assert_refusal(
        &ada_laptop.get(&app, "/auth/totp").await,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    );
    assert_eq!(ada.get(&app, "/auth/totp").await.status, StatusCode::OK);
}

#[tokio::test]
async fn form_posts_are_sent_back_to_this_site_only() {
    let app = app().await;
    app.fx.account("ada@example.com", ActorKind::User);
    for (next, expected) in [
        ("/notes", "/notes"),
        ("https://evil.example/", "/home"),
        ("//evil.example/", "/home"),
        ("/\\evil.example", "/home"),
    ] {
        let mut browser = Browser::default();
        let sent = app.fx.outbox.messages().len();
        let form = format!(
            "workspace=acme&email=ada%40example.com&next={}",
            url::form_urlencoded::byte_serialize(next.as_bytes()).collect::<String>()
        );
        let request = Request::post("/auth/link")
            .header("sec-fetch-site", "same-origin")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(form))
            .unwrap();
        let asked = browser.send(&app, request).await;
        assert_eq!(asked.status, StatusCode::SEE_OTHER, "{next}");
        assert_eq!(asked.headers[header::LOCATION], expected, "{next}");
        let token = wait_for_mail(&app, sent).await;
        let form = format!(
            "token={token}&next={}",
            url::form_urlencoded::byte_serialize(next.as_bytes()).collect::<String>()
        );
        let request = Request::post("/auth/link/confirm")
            .header("sec-fetch-site", "same-origin")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(form))
            .unwrap();
        let confirmed = browser.send(&app, request).await;
        assert_eq!(confirmed.status, StatusCode::SEE_OTHER, "{next}");
        assert_eq!(confirmed.headers[header::LOCATION], expected, "{next}");
        assert!(browser.cookies.contains_key(magic_auth::SESSION_COOKIE));
    }
}

#[tokio::test]
async fn an_ended_session_is_refused_by_every_route() {
    let app = app().await;
    let user = app.fx.account("ada@example.com", ActorKind::User);
    let mut browser = Browser::default();
    signed_in_aal2(&app, &mut browser, "ada@example.com").await;
    assert_eq!(
        browser.get(&app, "/auth/sessions").await.status,
        StatusCode::OK
    );
    // Ended elsewhere (another device signed out everywhere).
    app.fx
        .sessions
        .revoke_all(app.fx.tenant, user, None)
        .await
        .unwrap();
    assert_refusal(
        &browser.get(&app, "/auth/sessions").await,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    );
    assert_refusal(
        &browser.post(&app, "/auth/recovery-codes", json!({})).await,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    );
}

/// A page's form, as a browser sends it from this site.
fn form(path: &str, fields: &[(&str, &str)]) -> Request<Body> {
    let body: String = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish();
    Request::post(path)
        .header("sec-fetch-site", "same-origin")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(body))
        .unwrap()
}

#[tokio::test]
async fn a_pages_form_is_refused_back_to_its_page() {
    let app = app().await;
    let user = app.fx.account("ada@example.com", ActorKind::User);
    let mut browser = Browser::default();
    signed_in_aal1(&app, &mut browser, "ada@example.com").await;
    let started = browser
        .send(
            &app,
            form("/auth/totp/enrol", &[("next", "/auth/code-page")]),
        )
        .await;
    assert_eq!(started.status, StatusCode::SEE_OTHER, "{}", started.text);
    assert_eq!(started.headers[header::LOCATION], "/auth/code-page");
    let state = browser.get(&app, "/auth/totp").await;
    let key = state.body["enrolment"]["secret_base32"].as_str().unwrap();
    let seed = totp_rs::Secret::try_from_base32(key)
        .unwrap()
        .as_bytes()
        .to_vec();

    // A wrong code: back to the page, with the code of the refusal.
    let wrong = common::wrong_code(&seed, now());
    let refused = browser
        .send(
            &app,
            form(
                "/auth/totp",
                &[("code", &wrong), ("back", "/auth/code-page?next=%2Fnotes")],
            ),
        )
        .await;
    assert_eq!(refused.status, StatusCode::SEE_OTHER, "{}", refused.text);
    assert_eq!(
        refused.headers[header::LOCATION],
        "/auth/code-page?next=%2Fnotes&error=code_rejected"
    );
    // `back` off this site, or missing: the JSON refusal, never a redirect elsewhere.
    for back in [Some("https://evil.example/"), Some("//evil.example"), None] {
        let mut fields = vec![("code", wrong.as_str())];
        if let Some(back) = back {
            fields.push(("back", back));
        }
        assert_refusal(
            &browser.send(&app, form("/auth/totp", &fields)).await,
            StatusCode::UNAUTHORIZED,
            "code_rejected",
        );
    }
    // Another origin is refused as such, whatever `back` says.
    let mut cross = form("/auth/totp", &[("code", &wrong), ("back", "/page")]);
    cross
        .headers_mut()
        .insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
    assert_refusal(
        &browser.send(&app, cross).await,
        StatusCode::FORBIDDEN,
        "cross_origin_request",
    );

    // The right code (positive control): on to `next`, aal2.
    let code = code_at(&seed, now()).unwrap();
    let done = browser
        .send(
            &app,
            form(
                "/auth/totp",
                &[("code", &code), ("next", "/notes"), ("back", "/page")],
            ),
        )
        .await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.text);
    assert_eq!(done.headers[header::LOCATION], "/notes");

    // Signing out from a page: on to `next`, the cookie cleared, the session ended.
    let out = browser
        .send(&app, form("/auth/sign-out", &[("next", "/")]))
        .await;
    assert_eq!(out.status, StatusCode::SEE_OTHER, "{}", out.text);
    assert_eq!(out.headers[header::LOCATION], "/");
    assert!(!browser.cookies.contains_key(magic_auth::SESSION_COOKIE));
    assert_eq!(app.fx.live_sessions(user).await, 0);
}

#[tokio::test]
async fn a_post_without_a_body_is_refused() {
    let app = app().await;
    app.fx.account("ada@example.com", ActorKind::User);
    let mut browser = Browser::default();
    signed_in_aal2(&app, &mut browser, "ada@example.com").await;
    let bare = Request::post("/auth/sign-out")
        .header(header::ORIGIN, ORIGIN)
        .body(Body::empty())
        .unwrap();
    assert_refusal(
        &browser.send(&app, bare).await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    );
    // Still signed in; with a body it works.
    assert_eq!(
        browser.get(&app, "/auth/sessions").await.status,
        StatusCode::OK
    );
    let out = browser.post(&app, "/auth/sign-out", json!({})).await;
    assert_eq!(out.status, StatusCode::OK, "{}", out.text);
}
