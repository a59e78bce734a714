//! Production mode against a real PostgreSQL that speaks TLS: the app starts only with a real
//! certificate, verified TLS to the database for both roles, a runtime role that cannot bypass
//! RLS, and keys derived from the key-encryption key; it serves HTTPS with that certificate,
//! shows no development affordances, survives a restart (migrations run once, the same keys
//! open the same data), and each unsafe setting is refused before anything is served.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};

use axum::http::StatusCode;
use reference_app::{App, Config};
use rustls::pki_types::ServerName;
use testkit::{ClusterOptions, PgCluster};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::Browser;

/// A private CA and a server certificate for `localhost` and `acme.localhost` (a host name
/// that names a workspace); `127.0.0.1` is not named.
struct Pki {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

fn pki() -> Pki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "reference-app test CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert =
        rcgen::CertificateParams::new(vec!["localhost".to_owned(), "acme.localhost".to_owned()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
    Pki {
        ca_pem: ca.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

struct Fixture {
    dir: PathBuf,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    port: u16,
    smtp_port: u16,
    pki: Pki,
}

impl Fixture {
    fn url(&self, role: &str, ca: &Path, host: &str) -> String {
        format!(
            "postgres://{role}@{host}:{}/prod?sslmode=verify-full&sslrootcert={}",
            self.port,
            ca.display()
        )
    }

    /// The environment of a correctly configured production deployment.
    fn env(&self) -> Vec<(String, String)> {
        [
            ("REFERENCE_APP_KEK", "5a".repeat(32)),
            (
                "DATABASE_URL",
                self.url("prod_runtime", &self.ca, "localhost"),
            ),
            (
                "REFERENCE_APP_OWNER_DATABASE_URL",
                self.url("prod_owner", &self.ca, "localhost"),
            ),
            (
                "REFERENCE_APP_CHECKPOINTER_DATABASE_URL",
                self.url("prod_checkpointer", &self.ca, "localhost"),
            ),
            ("REFERENCE_APP_SMTP_HOST", "localhost".to_owned()),
            ("REFERENCE_APP_SMTP_PORT", self.smtp_port.to_string()),
            (
                "REFERENCE_APP_MAIL_FROM",
                "no-reply@example.test".to_owned(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    fn config(&self, https_port: u16, env: &[(String, String)]) -> Result<Config, String> {
        let args = [
            "--production",
            "--seed-demo",
            "--data-dir",
            self.dir.to_str().unwrap(),
            "--tls-cert",
            self.cert.to_str().unwrap(),
            "--tls-key",
            self.key.to_str().unwrap(),
            "--https",
            &format!("127.0.0.1:{https_port}"),
            "--base-url",
            &format!("https://localhost:{https_port}"),
        ];
        Config::parse(args.iter().map(|s| (*s).to_owned()), |name| {
            env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })
        .map(Option::unwrap)
        .map_err(|e| e.to_string())
    }

    async fn start_with(&self, env: &[(String, String)]) -> Result<App, String> {
        reference_app::start(self.config(443, env)?)
            .await
            .map_err(|e| e.to_string())
    }
}

fn with(env: &[(String, String)], name: &str, value: &str) -> Vec<(String, String)> {
    env.iter()
        .map(|(k, v)| {
            if k == name {
                (k.clone(), value.to_owned())
            } else {
                (k.clone(), v.clone())
            }
        })
        .collect()
}

async fn setup(cluster: &PgCluster, pki: Pki) -> Fixture {
    let admin =
        sqlx::PgPool::connect_with(cluster.connect_options(testkit::ADMIN_ROLE, "postgres"))
            .await
            .unwrap();
    for sql in [
        "CREATE ROLE prod_owner LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE",
        "CREATE ROLE prod_runtime LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS NOINHERIT",
        "CREATE ROLE prod_checkpointer LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS NOINHERIT",
        "CREATE DATABASE prod OWNER prod_owner",
    ] {
        sqlx::raw_sql(sql).execute(&admin).await.unwrap();
    }
    admin.close().await;
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("reference-app-production-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, content: &str| {
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        path
    };
    Fixture {
        ca: write("ca.pem", &pki.ca_pem),
        cert: write("cert.pem", &pki.cert_pem),
        key: write("key.pem", &pki.key_pem),
        dir,
        port: cluster.port(),
        smtp_port: common::free_port(),
        pki,
    }
}

/// One HTTPS request over a real TLS connection that trusts only the test CA.
async fn https_get(port: u16, ca_pem: &str, path: &str) -> String {
    let connector = common::tls_connector(ca_pem);
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("the served certificate verifies against the CA for localhost");
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut response = Vec::new();
    let _ = tls.read_to_end(&mut response).await;
    String::from_utf8_lossy(&response).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_mode_serves_only_with_verified_tls_and_refuses_each_unsafe_setting() {
    let pki = pki();
    let cluster = PgCluster::start_with(
        &ClusterOptions::new().with_tls(pki.cert_pem.clone(), pki.key_pem.clone()),
    )
    .unwrap();
    let f = setup(&cluster, pki).await;
    let env = f.env();

    // Refusals first, while the database is still empty: none of them may migrate anything.
    let other_ca = pki_ca_only();
    let other_ca_path = f.dir.join("other-ca.pem");
    std::fs::write(&other_ca_path, other_ca).unwrap();
    let refused: Vec<(&str, Vec<(String, String)>)> = vec![
        (
            "runtime connection to a server the configured CA did not certify",
            with(
                &env,
                "DATABASE_URL",
                &f.url("prod_runtime", &other_ca_path, "localhost"),
            ),
        ),
        (
            "owner connection to a server the configured CA did not certify",
            with(
                &env,
                "REFERENCE_APP_OWNER_DATABASE_URL",
                &f.url("prod_owner", &other_ca_path, "localhost"),
            ),
        ),
        (
            "a host name the database certificate does not carry",
            with(
                &env,
                "REFERENCE_APP_OWNER_DATABASE_URL",
                &f.url("prod_owner", &f.ca, "127.0.0.1"),
            ),
        ),
        (
            "the checkpointer is the runtime role",
            with(
                &env,
                "REFERENCE_APP_CHECKPOINTER_DATABASE_URL",
                &f.url("prod_runtime", &f.ca, "localhost"),
            ),
        ),
        (
            "the runtime role is the owner",
            with(
                &env,
                "DATABASE_URL",
                &f.url("prod_owner", &f.ca, "localhost"),
            ),
        ),
    ];
    for (why, env) in &refused {
        let error = f.start_with(env).await.err();
        assert!(error.is_some(), "started despite: {why}");
    }
    let admin = sqlx::PgPool::connect_with(cluster.connect_options(testkit::ADMIN_ROLE, "prod"))
        .await
        .unwrap();
    let schemas: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_namespace WHERE nspname IN ('workspace', 'reference_app_meta')",
    )
    .fetch_one(&admin)
    .await
    .unwrap();
    assert_eq!(schemas, 0, "a refused start migrated the database");

    // A superuser as the runtime role: migrations may run (the owner is fine), serving may not.
    let superuser = with(
        &env,
        "DATABASE_URL",
        &f.url(testkit::ADMIN_ROLE, &f.ca, "localhost"),
    );
    let error = f.start_with(&superuser).await.err().unwrap();
    assert!(error.to_lowercase().contains("superuser"), "{error}");

    // The production certificate must name the public host and must not be the development one.
    let wrong_host = {
        let mut c = f.config(443, &env).unwrap();
        c.base_url = "https://app.example.test".to_owned();
        reference_app::start(c).await.err().unwrap().to_string()
    };
    assert!(wrong_host.contains("does not name"), "{wrong_host}");
    std::fs::write(f.dir.join("tls-cert.pem"), &f.pki.cert_pem).unwrap();
    let dev_cert = f.start_with(&env).await.err().unwrap();
    assert!(dev_cert.contains("development certificate"), "{dev_cert}");
    std::fs::remove_file(f.dir.join("tls-cert.pem")).unwrap();

    // The correctly configured deployment, as the real binary in its own process: it migrates,
    // seeds, and serves HTTPS with the given certificate and no development affordances.
    let port = common::free_port();
    let mut child = f.spawn(port, &env);
    let home = wait_for_https(&mut child, port, &f.pki.ca_pem).await;
    // The sign-in page lists no workspace: at a host name that names none, it is typed.
    assert!(
        !home.contains("Acme Corp") && !home.contains("Globex") && !home.contains("<select"),
        "production lists no workspaces: {home}"
    );
    assert!(
        home.contains("<input id=\"workspace\" name=\"workspace\""),
        "the workspace is typed: {home}"
    );
    assert!(
        !home.contains("alice@acme.test") && !home.contains("/dev/outbox"),
        "production lists no demo accounts and no outbox"
    );
    let outbox = https_get(port, &f.pki.ca_pem, "/dev/outbox").await;
    assert!(outbox.starts_with("HTTP/1.1 404"), "{outbox}");
    child.kill().await.unwrap();
    let stored: Vec<u8> =
        sqlx::query_scalar("SELECT body FROM workspace.notes WHERE title = 'Q3 budget'")
            .fetch_one(&admin)
            .await
            .unwrap();
    assert!(
        !String::from_utf8_lossy(&stored).contains("Marketing"),
        "note bodies are sealed"
    );

    // A restart (in this process, at a host name that names the Acme workspace): migrations
    // are not re-run, and the keys derived from the same KEK open what the first process
    // sealed.
    let app = {
        let mut c = f.config(443, &env).unwrap();
        c.base_url = "https://acme.localhost".to_owned();
        reference_app::start(c).await.unwrap()
    };
    assert!(app.database().is_none());
    assert_eq!(app.runtime_role(), "prod_runtime");
    let migrations: i64 = sqlx::query_scalar("SELECT count(*) FROM reference_app_meta.migrations")
        .fetch_one(&admin)
        .await
        .unwrap();
    assert_eq!(migrations, 1);
    let cookie = app
        .mint_session("acme", "alice@acme.test", true)
        .await
        .unwrap();
    let notes = notes_as(&app, &cookie).await;
    assert!(notes.contains("Marketing 120k"), "{notes}");
    // The host name names the workspace: the page signs in to Acme only, and lists no other.
    let home = Browser::new(&app).get("/").await;
    assert!(
        home.body.contains("Workspace: <strong>Acme Corp</strong>")
            && home
                .body
                .contains("<input type=\"hidden\" name=\"workspace\" value=\"acme\">")
            && !home.body.contains("Globex")
            && !home.body.contains("<select"),
        "{}",
        home.body
    );

    // Sign-in mail goes to the SMTP relay; a relay that is down is not revealed to the requester.
    let mut browser = Browser::new(&app);
    let asked = browser.ask_link("acme", "alice@acme.test").await;
    assert_eq!(asked.location(), "/?sent=1", "{}", asked.body);
    let page = browser.get(asked.location()).await;
    assert!(
        page.body.contains("a sign-in link is on its way"),
        "{}",
        page.body
    );
    assert!(app.outbox_links().is_empty(), "production keeps no outbox");
    drop(app);

    // A schema this build did not write is refused, not overwritten.
    sqlx::query("UPDATE reference_app_meta.migrations SET digest = 'older'")
        .execute(&admin)
        .await
        .unwrap();
    let output = f
        .spawn(common::free_port(), &env)
        .wait_with_output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let log = String::from_utf8_lossy(&output.stdout);
    assert!(log.contains("different schema version"), "{log}");
    admin.close().await;
    std::fs::remove_dir_all(&f.dir).unwrap();
}

impl Fixture {
    /// The real binary in production mode.
    fn spawn(&self, port: u16, env: &[(String, String)]) -> tokio::process::Child {
        let config = self.config(port, env).unwrap();
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_reference-app"));
        command
            .args(["--production", "--seed-demo", "--data-dir"])
            .arg(&config.data_dir)
            .arg("--tls-cert")
            .arg(config.tls_cert.unwrap())
            .arg("--tls-key")
            .arg(config.tls_key.unwrap())
            .args(["--https", &format!("127.0.0.1:{port}")])
            .args(["--http", &format!("127.0.0.1:{}", common::free_port())])
            .args(["--base-url", &config.base_url])
            .env_clear()
            .env("RUST_LOG", "info")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        command.spawn().unwrap()
    }
}

/// Polls until the child serves `/` over HTTPS (or fails the test when it exits first).
async fn wait_for_https(child: &mut tokio::process::Child, port: u16, ca_pem: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut out = String::new();
            if let Some(mut stdout) = child.stdout.take() {
                let _ = stdout.read_to_string(&mut out).await;
            }
            panic!("the app exited ({status}) before serving:\n{out}");
        }
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            let home = https_get(port, ca_pem, "/").await;
            assert!(home.starts_with("HTTP/1.1 200"), "{home}");
            return home;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the app did not start"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

async fn notes_as(app: &App, cookie: &str) -> String {
    let mut b = Browser::new(app);
    let (name, value) = cookie.split_once('=').unwrap();
    b.cookies.insert(name.to_owned(), value.to_owned());
    let page = b.json("GET", "/api/notes", None).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    page.body
}

/// Another CA's certificate (the database's certificate does not chain to it).
fn pki_ca_only() -> String {
    pki().ca_pem
}
