//! An in-process browser for the app's router: cookies, same-origin forms, bodies as text.
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::collections::BTreeMap;

use axum::body::Body;
use axum::http::request::Builder;
use axum::http::{HeaderMap, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use magic_auth::secrecy::ExposeSecret;
use reference_app::{App, Config};
use tower::ServiceExt;

pub async fn start() -> App {
    // Under the target directory, so `cargo clean` removes it.
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("reference-app-test-{}", uuid::Uuid::new_v4()));
    let config = Config::from_args(["--data-dir".to_owned(), dir.display().to_string()])
        .unwrap()
        .unwrap();
    reference_app::start(config).await.unwrap()
}

/// One browser: its cookie jar.
pub struct Browser<'a> {
    pub app: &'a App,
    pub cookies: BTreeMap<String, String>,
}

pub struct Page {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Page {
    pub fn location(&self) -> &str {
        self.headers[header::LOCATION].to_str().unwrap()
    }
}

impl<'a> Browser<'a> {
    pub fn new(app: &'a App) -> Self {
        Self {
            app,
            cookies: BTreeMap::new(),
        }
    }

    /// A browser holding a fresh two-factor session of a seeded account.
    pub async fn signed_in(app: &'a App, workspace: &str, email: &str) -> Self {
        Self::with_session(app, workspace, email, true).await
    }

    /// A browser holding a fresh session of a seeded account: two factors, or only the link.
    pub async fn with_session(
        app: &'a App,
        workspace: &str,
        email: &str,
        two_factors: bool,
    ) -> Self {
        let mut browser = Self::new(app);
        let cookie = app
            .mint_session(workspace, email, two_factors)
            .await
            .unwrap();
        let (name, value) = cookie.split_once('=').unwrap();
        browser.cookies.insert(name.to_owned(), value.to_owned());
        browser
    }

    async fn send(&mut self, request: Request<Body>) -> Page {
        let response: Response<Body> = self.app.router.clone().oneshot(request).await.unwrap();
        for value in response.headers().get_all(header::SET_COOKIE) {
            let pair = value.to_str().unwrap().split(';').next().unwrap();
            let (name, v) = pair.split_once('=').unwrap();
            if v.is_empty() {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_owned(), v.to_owned());
            }
        }
        let status = response.status();
        let headers = response.headers().clone();
        let body = String::from_utf8(
            response
                .into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .to_vec(),
        )
        .unwrap();
        Page {
            status,
            headers,
            body,
        }
    }

    fn request(&self, method: &str, path: &str) -> Builder {
        let mut b = Request::builder()
            .method(method)
            .uri(path)
            .header(header::ORIGIN, self.app.config.base_url.as_str())
            .header(header::USER_AGENT, "reference-app-test");
        if !self.cookies.is_empty() {
            let jar: Vec<String> = self
                .cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            b = b.header(header::COOKIE, jar.join("; "));
        }
        b
    }

    /// Replaces this browser's session by one of `email` in `workspace` whose second factor is
    /// 11 minutes old (past the 10-minute step-up window): time passing, made directly in the
    /// session store (a session row's facts are fixed and signed, so none is backdated in
    /// place).
    pub async fn stale_second_factor(&mut self, workspace: &str, email: &str) {
        let cookie = self
            .app
            .mint_aged_session(
                workspace,
                email,
                true,
                std::time::Duration::from_secs(11 * 60),
            )
            .await
            .unwrap();
        let (name, value) = cookie.split_once('=').unwrap();
        self.cookies.insert(name.to_owned(), value.to_owned());
    }

    pub async fn get(&mut self, path: &str) -> Page {
        let request = self.request("GET", path).body(Body::empty()).unwrap();
        self.send(request).await
    }

    pub async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        let body: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let request = self
            .request("POST", path)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(body))
            .unwrap();
        self.send(request).await
    }

    /// Opens `workspace` in the staff console for this visit, with `reason`, as the console's
    /// form does; `next` is `approvals` or `audit`.
    pub async fn open_workspace(&mut self, workspace: &str, reason: &str, next: &str) -> Page {
        self.post(
            "/staff/visit",
            &[("tenant", workspace), ("reason", reason), ("next", next)],
        )
        .await
    }

    /// A JSON request (`body` sent as `application/json` when given).
    pub async fn json(&mut self, method: &str, path: &str, body: Option<&str>) -> Page {
        let mut request = self.request(method, path);
        if body.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Body::from(body.unwrap_or_default().to_owned()))
            .unwrap();
        self.send(request).await
    }

    /// Asks for a sign-in link as the home page's form does: `303` to `/?sent=1` when asked
    /// for (known address or not), to `/?error=<code>` when refused.
    pub async fn ask_link(&mut self, workspace: &str, email: &str) -> Page {
        self.post(
            "/api/auth/link",
            &[
                ("workspace", workspace),
                ("email", email),
                ("next", "/?sent=1"),
                ("back", "/"),
            ],
        )
        .await
    }

    /// Confirms a link's token as the landing page's form does: `303` to `/auth/totp` when
    /// signed in, to `/?error=link_invalid` when refused.
    pub async fn confirm_link(&mut self, token: &str) -> Page {
        self.post(
            "/api/auth/link/confirm",
            &[("token", token), ("next", "/auth/totp"), ("back", "/")],
        )
        .await
    }

    /// Sends a code as the code page (`/auth/totp`) or the step-up page (`/auth/step-up`)
    /// does (`page` names which): `303` to `next` when accepted, back to the page with
    /// `error=<code>` when refused.
    pub async fn send_code(&mut self, page: &str, code: &str, next: &str) -> Page {
        let action = match page {
            "/auth/step-up" => "/api/auth/step-up",
            _ => "/api/auth/totp",
        };
        let back = format!(
            "{page}?next={}",
            url::form_urlencoded::byte_serialize(next.as_bytes()).collect::<String>()
        );
        self.post(action, &[("code", code), ("next", next), ("back", &back)])
            .await
    }

    /// Requests a link, follows it and confirms it; returns the path the app sends us to.
    pub async fn open_link(&mut self, workspace: &str, email: &str) -> Page {
        let before = self.app.outbox_links().len();
        let page = self.ask_link(workspace, email).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
        assert_eq!(page.location(), "/?sent=1");
        let mut link = None;
        for _ in 0..200 {
            let links = self.app.outbox_links();
            if links.len() > before {
                link = links.last().cloned();
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let link = link.expect("a sign-in link was sent");
        let path = link
            .trim_start_matches(self.app.config.base_url.as_str())
            .to_owned();
        let token = path.split("token=").nth(1).unwrap().to_owned();
        let landing = self.get(&path).await;
        assert_eq!(landing.status, StatusCode::OK);
        assert_eq!(landing.headers[header::REFERRER_POLICY], "no-referrer");
        self.confirm_link(&token).await
    }

    /// Signs in with link and TOTP (enrolling on first use); returns the authenticator's seed.
    pub async fn sign_in(&mut self, workspace: &str, email: &str) -> Vec<u8> {
        let confirmed = self.open_link(workspace, email).await;
        assert_eq!(
            confirmed.status,
            StatusCode::SEE_OTHER,
            "{}",
            confirmed.body
        );
        assert_eq!(confirmed.location(), "/auth/totp");
        self.enrol_totp("/notes").await
    }

    /// After the link: starts an authenticator enrolment (a `POST`; the page itself only
    /// offers it), reads the QR code and the key from the page, and confirms it with a code;
    /// returns the seed.
    pub async fn enrol_totp(&mut self, next: &str) -> Vec<u8> {
        let offer = self.get("/auth/totp").await;
        assert_eq!(offer.status, StatusCode::OK);
        assert!(
            offer.body.contains("action=\"/api/auth/totp/enrol\"") && !offer.body.contains("Key:"),
            "the page offers to start, and shows no key before: {}",
            offer.body
        );
        let page = format!(
            "/auth/totp?next={}",
            url::form_urlencoded::byte_serialize(next.as_bytes()).collect::<String>()
        );
        let started = self
            .post(
                "/api/auth/totp/enrol",
                &[("next", page.as_str()), ("back", page.as_str())],
            )
            .await;
        assert_eq!(started.status, StatusCode::SEE_OTHER, "{}", started.body);
        let location = started.location().to_owned();
        assert!(location.starts_with("/auth/totp?next="), "{location}");
        let totp = self.get(&location).await;
        assert_eq!(totp.status, StatusCode::OK);
        assert!(
            totp.body.contains("<svg"),
            "a QR code is shown at enrolment"
        );
        let seed = shown_seed(&totp.body);
        let done = self
            .post(
                "/api/auth/totp",
                &[("code", &code(&seed, 0)), ("next", next), ("back", &page)],
            )
            .await;
        assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
        assert_eq!(done.location(), next);
        seed
    }
}

/// The TOTP code of `seed` at `offset` steps from now.
pub fn code(seed: &[u8], offset: i64) -> String {
    let now = time::OffsetDateTime::now_utc().unix_timestamp() + offset * 30;
    let code = magic_auth::totp::code_at(&seed.to_vec().into(), u64::try_from(now).unwrap());
    code.unwrap().expose_secret().to_owned()
}

/// Runs `sql` (one `$1` text parameter) as the superuser inside a transaction bound to the
/// tenant `workspace`, as rls-guard's commit-time binding check requires of every writer.
pub async fn as_admin_in(admin: &sqlx::PgPool, workspace: &str, sql: &str, bind: &str) -> u64 {
    let (tenant,): (uuid::Uuid,) =
        sqlx::query_as("SELECT id FROM workspace.tenants WHERE slug = $1")
            .bind(workspace)
            .fetch_one(admin)
            .await
            .unwrap();
    let mut tx = admin.begin().await.unwrap();
    sqlx::query(&format!("SET LOCAL app.tenant_id = '{tenant}'"))
        .execute(&mut *tx)
        .await
        .unwrap();
    let n = sqlx::query(sql)
        .bind(bind)
        .execute(&mut *tx)
        .await
        .unwrap()
        .rows_affected();
    sqlx::query(&format!("SET LOCAL app.commit_binding = '{tenant}:'"))
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    n
}

/// A TLS client that trusts only the certificates in `ca_pem` (a test CA, or the app's
/// self-signed development certificate).
pub fn tls_connector(ca_pem: &str) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
}

/// A loopback port that was free a moment ago, with nothing listening on it (for a server to
/// bind, or for a client to find closed).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Chains every queued audit event now, as the test server's superuser (the app's own
/// sequencer would within milliseconds; a test that reads the chain right after a request, or
/// after the app was killed, does not wait for it).
pub async fn sequence_all(admin: &sqlx::PgPool) {
    loop {
        let taken: i32 = sqlx::query_scalar("SELECT audit.sequence(10000)")
            .fetch_one(admin)
            .await
            .unwrap();
        if taken < 10_000 {
            return;
        }
    }
}

/// Waits until the audit log holds a record of each of `actions` (the hook writes from tasks).
pub async fn audited(admin: &sqlx::PgPool, actions: &[&str]) {
    for action in actions {
        let mut n = 0;
        for _ in 0..200 {
            let (count,): (i64,) =
                sqlx::query_as("SELECT count(*) FROM audit.events WHERE action = $1")
                    .bind(action)
                    .fetch_one(admin)
                    .await
                    .unwrap();
            n = count;
            if n > 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(n > 0, "{action} was not audited");
    }
}

/// How many messages with `subject` the development outbox holds for `to`.
pub fn notices(app: &App, to: &str, subject: &str) -> usize {
    app.outbox_messages()
        .iter()
        .filter(|(address, s)| address == to && s == subject)
        .count()
}

/// The authenticator key (base32) an enrolment or replacement page shows.
pub fn shown_key(body: &str) -> String {
    body.split("Key: <code>")
        .nth(1)
        .unwrap()
        .split('<')
        .next()
        .unwrap()
        .to_owned()
}

/// The seed behind the key a page shows.
pub fn shown_seed(body: &str) -> Vec<u8> {
    totp_rs::Secret::try_from_base32(shown_key(body))
        .unwrap()
        .as_bytes()
        .to_vec()
}
