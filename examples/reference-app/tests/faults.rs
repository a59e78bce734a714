//! Faults, bounded in time and on loopback only:
//!
//! - PostgreSQL stops under load: every guarded request answers 503 (never a 200, never a
//!   hang), and the app recovers by itself when the server is back;
//! - the app process is killed (SIGKILL) during a stream of privileged writes: every write
//!   acknowledged to a client has its audit record, and the tenant's chain verifies.
//!
//! Both stop shared things (the test binary's PostgreSQL, a child process), so they run one
//! after the other.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Mutex;
use tower::ServiceExt;
use uuid::Uuid;

use common::Browser;

/// One fault at a time: both take something shared away.
static SERIAL: Mutex<()> = Mutex::const_new(());

/// What one request saw.
struct Outcome {
    started: Instant,
    finished: Instant,
    status: StatusCode,
    body: String,
}

async fn get(app: &reference_app::App, cookie: &str, path: &str) -> Outcome {
    let started = Instant::now();
    let request = Request::builder()
        .uri(path)
        .header(header::COOKIE, cookie)
        .body(Body::empty())
        .unwrap();
    // A request that hangs is a failure too: bound every one.
    let response =
        tokio::time::timeout(Duration::from_secs(10), app.router.clone().oneshot(request))
            .await
            .expect("a request hung while the database was down")
            .unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Outcome {
        started,
        finished: Instant::now(),
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_under_load_answers_503_and_recovers_by_itself() {
    let _serial = SERIAL.lock().await;
    let app = Arc::new(common::start().await);
    let cluster = testkit::TestServer::shared()
        .await
        .unwrap()
        .cluster()
        .expect("the fault tests stop the server: they need testkit's throwaway cluster (unset DATABASE_URL)");
    let alice = Browser::signed_in(&app, "acme", "alice@acme.test").await;
    let cookie: String = alice
        .cookies
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("; ");

    // Load: readers of the JSON notes and of the notes page, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for i in 0..6 {
        let (app, cookie, stop) = (app.clone(), cookie.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let path = if i % 2 == 0 { "/api/notes" } else { "/notes" };
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                seen.push(get(&app, &cookie, path).await);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            seen
        }));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    let down = Instant::now();
    cluster.stop_server();
    let stopped = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let restarting = Instant::now();
    cluster.start_server().unwrap();
    let back = Instant::now();

    // Recovery without a restart of the app: within 15 s every reader gets 200 again.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let api = get(&app, &cookie, "/api/notes").await;
        let page = get(&app, &cookie, "/notes").await;
        if api.status == StatusCode::OK && page.status == StatusCode::OK {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not recovered: {} {}",
            api.status,
            page.status
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let recovered = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.unwrap());
    }

    let during: Vec<&Outcome> = all
        .iter()
        .filter(|o| o.started >= stopped && o.finished <= restarting)
        .collect();
    assert!(
        during.len() >= 20,
        "too little load during the outage: {}",
        during.len()
    );
    for o in &during {
        assert_eq!(
            o.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "during the outage: {}",
            o.body.chars().take(200).collect::<String>()
        );
    }
    // Every 200, before, around or after the outage, is Acme's notes and nothing else.
    let ok: Vec<&Outcome> = all.iter().filter(|o| o.status == StatusCode::OK).collect();
    assert!(ok.iter().any(|o| o.finished < down) && ok.iter().any(|o| o.started > recovered));
    for o in &ok {
        assert!(o.body.contains("Q3 budget"), "a 200 without Acme's notes");
        assert!(!o.body.contains("Globex roadmap"), "another tenant's note");
    }
    // Nothing else than 200 and 503 at any time (no 500, no 401 from a failed lookup).
    let statuses: HashSet<u16> = all.iter().map(|o| o.status.as_u16()).collect();
    assert!(
        statuses.is_subset(&HashSet::from([200, 503])),
        "{statuses:?}"
    );
    eprintln!(
        "outage: {} requests, {} during the outage (all 503); restart took {:?}, recovery {:?}",
        all.len(),
        during.len(),
        back - restarting,
        recovered - back
    );
}

/// One HTTP/1.1 request over a fresh TLS connection; the status code and the server's
/// request id, or `None` when the connection fails (the app is gone).
async fn https(
    connector: &tokio_rustls::TlsConnector,
    port: u16,
    request: &str,
) -> Option<(u16, String)> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let mut tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .ok()?;
    tls.write_all(request.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response);
    let status = text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()?;
    let id = text
        .lines()
        .take_while(|l| !l.is_empty())
        .find_map(|l| l.strip_prefix("x-request-id: "))
        .unwrap_or_default()
        .to_owned();
    Some((status, id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_app_during_privileged_writes_loses_no_acknowledged_audit_record() {
    use testkit::Role;
    let _serial = SERIAL.lock().await;
    let server = testkit::require(testkit::TestServer::shared().await);
    let admin = sqlx::PgPool::connect_with(server.options(Role::Admin, "postgres"))
        .await
        .unwrap();
    let databases = || async {
        sqlx::query_scalar::<_, String>("SELECT datname FROM pg_database WHERE NOT datistemplate")
            .fetch_all(&admin)
            .await
            .unwrap()
            .into_iter()
            .collect::<HashSet<String>>()
    };
    let before = databases().await;

    // The real binary, in its development profile, on this test's PostgreSQL.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("reference-app-kill-{}", Uuid::new_v4()));
    let port = common::free_port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_reference-app"))
        .arg("--data-dir")
        .arg(&dir)
        .args(["--https", &format!("127.0.0.1:{port}")])
        .args(["--http", &format!("127.0.0.1:{}", common::free_port())])
        .env("DATABASE_URL", server.url(Role::Admin, "postgres"))
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(child.try_wait().unwrap().is_none(), "the app exited");
        assert!(Instant::now() < deadline, "the app did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let database = databases()
        .await
        .difference(&before)
        .next()
        .cloned()
        .expect("the app's database");
    let db_admin = sqlx::PgPool::connect_with(server.options(Role::Admin, &database))
        .await
        .unwrap();

    // Alice's two-factor session, made in the app's session store, and Bob's id.
    let (tenant, alice, bob): (Uuid, Uuid, Uuid) = sqlx::query_as(
        "SELECT a.tenant_id, a.user_id, b.user_id FROM workspace.members a \
         JOIN workspace.members b ON b.tenant_id = a.tenant_id \
         WHERE a.email = 'alice@acme.test' AND b.email = 'bob@acme.test'",
    )
    .fetch_one(&db_admin)
    .await
    .unwrap();
    let tenant = tenant_scope::TenantId::from_uuid(tenant).unwrap();
    let runtime = sqlx::PgPool::connect_with(server.options(Role::Runtime, &database))
        .await
        .unwrap();
    let pool = rls_guard::TenantPool::new(runtime.clone()).await.unwrap();
    // Signed with the app's own session row key (its development key file), as the app's store
    // would sign it.
    let mut row_key = Box::new([0u8; 32]);
    hex::decode_to_slice(
        std::fs::read_to_string(dir.join("session-row.key"))
            .unwrap()
            .trim(),
        &mut row_key[..],
    )
    .unwrap();
    let sessions =
        magic_auth::SessionStore::new(pool, magic_auth::SessionConfig::default(), row_key).unwrap();
    let (session, token) = sessions
        .create(
            tenant,
            &magic_auth::NewSession::new(
                tenant_scope::ActorId::from_uuid(alice).unwrap(),
                tenant_scope::ActorKind::User,
                magic_auth::Assurance::Aal2,
            ),
        )
        .await
        .unwrap();
    let cookie = magic_auth::session_cookie(&token, &session)
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();

    // Writers: role changes (audited in the same transaction); a 200 is an acknowledgement,
    // named by the request id the server gave it (a request id the client sends is dropped,
    // which each request also checks).
    let connector =
        common::tls_connector(&std::fs::read_to_string(dir.join("tls-cert.pem")).unwrap());
    let acked = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..6 {
        let (connector, acked, stop, cookie) = (
            connector.clone(),
            acked.clone(),
            stop.clone(),
            cookie.clone(),
        );
        writers.push(tokio::spawn(async move {
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let id = Uuid::new_v4().to_string();
                let body = format!(
                    r#"{{"role": "{}"}}"#,
                    if (i + w).is_multiple_of(2) {
                        "admin"
                    } else {
                        "member"
                    }
                );
                let request = format!(
                    "POST /api/admin/members/{bob}/role HTTP/1.1\r\nHost: localhost:{port}\r\n\
                     Origin: https://localhost:{port}\r\nCookie: {cookie}\r\n\
                     Content-Type: application/json\r\nContent-Length: {}\r\n\
                     x-request-id: {id}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                match https(&connector, port, &request).await {
                    Some((200, server_id)) => {
                        assert!(!server_id.is_empty() && server_id != id, "{server_id}");
                        acked.lock().unwrap().push(server_id);
                    }
                    Some((other, _)) => panic!("a write answered {other}"),
                    None => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        }));
    }
    // Kill it mid-stream, once a good number of writes are acknowledged.
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.lock().unwrap().len() < 60 {
        assert!(
            Instant::now() < deadline,
            "writes are not being acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.start_kill().unwrap();
    let status = child.wait().await.unwrap();
    assert!(!status.success());
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();

    // Every acknowledged write has its audit record: queued before the kill, chained now
    // (the killed app's sequencer died with it).
    common::sequence_all(&db_admin).await;
    let recorded: HashSet<String> = sqlx::query_scalar(
        "SELECT request_id FROM audit.events WHERE action = 'member.role_changed' \
         AND outcome = 'allowed' AND request_id IS NOT NULL",
    )
    .fetch_all(&db_admin)
    .await
    .unwrap()
    .into_iter()
    .collect();
    let missing: Vec<&String> = acked.iter().filter(|id| !recorded.contains(*id)).collect();
    if !missing.is_empty() {
        // On failure, the whole chain with each record's request id, to tell a lost record
        // from a mislabelled one. (That is how a scrubber false positive was found: a request
        // id whose digits held a Luhn-valid run had been masked as a card number.)
        let acked_set: HashSet<&String> = acked.iter().collect();
        let chain: Vec<(i64, Option<String>, String)> =
            sqlx::query_as("SELECT seq, request_id, action FROM audit.events ORDER BY seq")
                .fetch_all(&db_admin)
                .await
                .unwrap();
        for (seq, id, action) in chain {
            let mark = match &id {
                Some(i) if acked_set.contains(i) => "acked",
                Some(_) => "NOT ACKED",
                None => "-",
            };
            eprintln!("seq {seq} {action} {id:?} {mark}");
        }
    }
    for id in &missing {
        // Everything the database holds about it, to tell a lost record from a mislabelled one.
        let rows: Vec<(String, String, Option<String>)> = sqlx::query_as(
            "SELECT action, outcome, request_id FROM audit.events WHERE strpos(convert_from(event, 'UTF8'), $1) > 0 \
             OR request_id = $1",
        )
        .bind(id.as_str())
        .fetch_all(&db_admin)
        .await
        .unwrap();
        let position = acked.iter().position(|a| a == *id);
        eprintln!(
            "acknowledged {id} (#{position:?} of {}) without a role-change record; rows naming it: {rows:?}; records: {}",
            acked.len(),
            recorded.len()
        );
    }
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged writes have no audit record",
        missing.len(),
        acked.len()
    );
    // And the chain, written by concurrent writers until the kill, verifies end to end.
    let key = std::fs::read_to_string(dir.join("audit-checkpoint.key")).unwrap();
    let mut secret = secrecy::SecretBox::new(Box::new([0u8; 32]));
    hex::decode_to_slice(
        key.trim(),
        secrecy::ExposeSecretMut::expose_secret_mut(&mut secret),
    )
    .unwrap();
    let signer = audit_log::CheckpointSigner::from_secret("reference-app-dev", &secret).unwrap();
    let keys = audit_log::TrustedKeys::new().with(signer.verifying_key());
    let report = audit_log::verify(&runtime, tenant, &keys, &[])
        .await
        .unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert!(report.events as usize >= acked.len());
    eprintln!(
        "killed after {} acknowledged writes; {} role-change records, chain of {} events intact",
        acked.len(),
        recorded.len(),
        report.events
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
