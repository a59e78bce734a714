//! `cargo run --release -p load-bench -- [SECONDS] [ROUNDS]`: the load benchmark whose results
//! are in `docs/benchmarks.md`.
//!
//! Starts the reference app (development profile: a throwaway PostgreSQL, seeded) and serves,
//! both over plain HTTP on loopback (TLS off for both sides):
//!
//! - **bare**: `GET /baseline/notes?tenant=..` — a bare axum handler running the same query
//!   and decryption as the guarded route, on a plain pool, with no guard at all;
//! - **guarded read**: `GET /api/notes` through the whole stack (request id, security headers,
//!   session lookup, same-origin check, two-factor guard, tenant scope, an rls-guard bound
//!   read under row-level security);
//! - **guarded write**: `POST /api/admin/members/{bob}/role` — the privileged route: the admin
//!   check, the update and its audit record in one transaction, behind the audit layer;
//! - **unaudited write**: `POST /baseline/members/{bob}/role` — the same route, layers and
//!   checks without the audit layer and its record (`App::unaudited_write_baseline`);
//! - **audited write under a flood**: the guarded write again while another client, with as
//!   many connections, floods the same tenant with role changes a member may not make (each
//!   refused and audited).
//!
//! First the round trips to PostgreSQL per request of each route are counted on the wire (see
//! `roundtrips.rs`; `LOAD_BENCH_ROUND_TRIPS_ONLY=1` stops there). Then the counter is taken
//! away and a second app is started, whose connections reach PostgreSQL directly, and each
//! route is driven by `wrk` (install it: `apt-get install wrk`) at 1, 16 and 128 connections,
//! side by side in one run, and the figures are printed as a Markdown table with the ratios
//! the goals: guarded read ≥ 0.8 of bare throughput with p99 ≤ 1.5x; audited write ≥ 0.7 of the
//! unaudited write with p99 ≤ 2x; under the flood, the audited write's p99 within 2x of its p99
//! without it.

mod roundtrips;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What `wrk` measured.
#[derive(Debug, Clone, Copy, Default)]
struct Figures {
    requests_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    non_2xx: u64,
    socket_errors: u64,
}

/// `5.10ms`, `812.00us`, `1.02s` → milliseconds.
fn millis(text: &str) -> Option<f64> {
    let (number, factor) = if let Some(n) = text.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1000.0)
    } else {
        return None;
    };
    number.parse::<f64>().ok().map(|n| n * factor)
}

fn parse(output: &str) -> Option<Figures> {
    let mut f = Figures::default();
    let mut seen_rate = false;
    for line in output.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["50%", v] => f.p50_ms = millis(v)?,
            ["99%", v] => f.p99_ms = millis(v)?,
            ["Requests/sec:", v] => {
                f.requests_per_second = v.parse().ok()?;
                seen_rate = true;
            }
            ["Non-2xx", "or", "3xx", "responses:", n] => f.non_2xx = n.parse().ok()?,
            ["Socket", "errors:", rest @ ..] => {
                f.socket_errors = rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum();
            }
            _ => {}
        }
    }
    seen_rate.then_some(f)
}

/// One `wrk` run; `script` sets the method, body and headers when given.
async fn wrk(
    url: &str,
    connections: u32,
    seconds: u32,
    cookie: &str,
    script: Option<&std::path::Path>,
) -> Result<Figures, BoxError> {
    let mut command = Command::new("wrk");
    command
        .args(["-t", &connections.min(2).to_string()])
        .args(["-c", &connections.to_string()])
        .args(["-d", &format!("{seconds}s")])
        .args(["--timeout", "10s", "--latency"])
        .args(["-H", &format!("Cookie: {cookie}")])
        .stdin(Stdio::null());
    if let Some(script) = script {
        command.arg("-s").arg(script);
    }
    let output = command
        .arg(url)
        .output()
        .await
        .map_err(|e| format!("could not run wrk ({e}); install it: apt-get install wrk"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    parse(&text).ok_or_else(|| format!("unexpected wrk output:\n{text}").into())
}

async fn serve(router: axum::Router) -> Result<SocketAddr, BoxError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await;
    });
    Ok(addr)
}

/// A GET over plain HTTP/1.1: the status code and the body.
async fn get(addr: SocketAddr, path: &str, cookie: &str) -> Result<(u16, String), BoxError> {
    request(
        addr,
        &format!("GET {path} HTTP/1.1\r\nCookie: {cookie}\r\n"),
    )
    .await
}

/// `head` (request line and headers, each ending in CRLF) sent with `Host` and `Connection:
/// close`, then `body`: the status code and the body.
async fn request(addr: SocketAddr, head: &str) -> Result<(u16, String), BoxError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let (head, body) = head.split_once("\r\n\r\n").unwrap_or((head, ""));
    let head = head.trim_end_matches("\r\n");
    stream
        .write_all(format!("{head}\r\nHost: {addr}\r\nConnection: close\r\n\r\n{body}").as_bytes())
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let status = response
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or("no status line")?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// One started reference app with its bench routes served on loopback.
struct Setup {
    app: reference_app::App,
    guarded: SocketAddr,
    bare: SocketAddr,
    unaudited: SocketAddr,
    bare_path: String,
    /// Alice's (an admin's) session.
    cookie: String,
    /// Bob's (a member's) session: his role changes are refused, and each refusal audited.
    flood_cookie: String,
    bob: uuid::Uuid,
    alice: uuid::Uuid,
}

impl Setup {
    /// Starts the reference app (development profile, a fresh database in the shared cluster,
    /// data directory `dir`) and serves its router, the bare read and the unaudited write,
    /// after checking that the bare and guarded reads answer the same document.
    async fn start(dir: &std::path::Path) -> Result<Self, BoxError> {
        let config =
            reference_app::Config::from_args(["--data-dir".to_owned(), dir.display().to_string()])?
                .ok_or("no configuration")?;
        let app = reference_app::start(config).await?;
        let database = app
            .database()
            .ok_or("the benchmark runs the development profile")?;
        // The bare route's pool has the app's settings (size, no ping before acquire): only
        // the guards differ between the two routes.
        let superuser = reference_app::pool_options(16)
            .connect_with(database.options(testkit::Role::Admin))
            .await?;
        let (tenant, bob): (uuid::Uuid, uuid::Uuid) = sqlx::query_as(
            "SELECT tenant_id, user_id FROM workspace.members WHERE email = 'bob@acme.test'",
        )
        .fetch_one(&superuser)
        .await?;
        let (alice,): (uuid::Uuid,) =
            sqlx::query_as("SELECT user_id FROM workspace.members WHERE email = 'alice@acme.test'")
                .fetch_one(&superuser)
                .await?;
        let cookie = app.mint_session("acme", "alice@acme.test", true).await?;
        let flood_cookie = app.mint_session("acme", "bob@acme.test", true).await?;
        let guarded = serve(app.router.clone()).await?;
        let bare = serve(app.unguarded_baseline(superuser.clone())).await?;
        let unaudited = serve(app.unaudited_write_baseline()?).await?;
        let bare_path = format!("/baseline/notes?tenant={tenant}");
        // Both answer the same document.
        let (s1, b1) = get(bare, &bare_path, "").await?;
        let (s2, b2) = get(guarded, "/api/notes", &cookie).await?;
        if (s1, s2) != (200, 200) || b1 != b2 {
            return Err(format!("the two routes differ: {s1} {s2}\n{b1}\n{b2}").into());
        }
        Ok(Self {
            app,
            guarded,
            bare,
            unaudited,
            bare_path,
            cookie,
            flood_cookie,
            bob,
            alice,
        })
    }
}

#[allow(clippy::print_stdout)]
#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1);
    let seconds: u32 = args.next().map_or(Ok(10), |s| s.parse())?;
    let rounds: u32 = args.next().map_or(Ok(1), |s| s.parse())?;

    // Round trips are counted by a run of this program of its own (with its own throwaway
    // cluster, every connection to which passes the counter); the load cells below run with
    // nothing between the app and PostgreSQL.
    let counting = std::env::var_os("LOAD_BENCH_ROUND_TRIPS_ONLY").is_some();
    if !counting {
        let status = Command::new(std::env::current_exe()?)
            .args([seconds.to_string(), rounds.to_string()])
            .env("LOAD_BENCH_ROUND_TRIPS_ONLY", "1")
            .status()
            .await?;
        if !status.success() {
            return Err(format!("counting the round trips failed: {status}").into());
        }
    }
    let server = testkit::TestServer::shared().await?;
    let counter = if counting {
        let admin = server.options(testkit::Role::Admin, "postgres");
        let socket = admin
            .get_socket()
            .ok_or("the throwaway cluster listens on a Unix socket")?
            .join(format!(".s.PGSQL.{}", admin.get_port()));
        Some(roundtrips::Counter::install(&socket).await?)
    } else {
        None
    };
    let dir = std::env::temp_dir().join(format!("load-bench-{}", std::process::id()));
    let Setup {
        app,
        guarded,
        bare,
        unaudited,
        bare_path,
        cookie,
        flood_cookie,
        bob,
        alice,
    } = Setup::start(&dir).await?;
    if let Some(counter) = counter {
        let write_head = format!(
            "POST /api/admin/members/{bob}/role HTTP/1.1\r\nCookie: {cookie}\r\nOrigin: {}\r\n\
         Content-Type: application/json\r\nContent-Length: 18\r\n\r\n{{\"role\": \"member\"}}",
            app.config.base_url
        );
        let unaudited_head = write_head.replace("/api/admin/members/", "/baseline/members/");
        let read_head = |path: &str, with_cookie: bool| {
            let cookie = if with_cookie { cookie.as_str() } else { "x=y" };
            format!("GET {path} HTTP/1.1\r\nCookie: {cookie}\r\n")
        };
        println!(
            "Round trips to PostgreSQL per request, counted on the wire (sequential requests):\n"
        );
        println!("| route | round trips per request |");
        println!("|---|---:|");
        for (name, addr, head) in [
            (
                "bare read (`/baseline/notes`)",
                bare,
                read_head(&bare_path, false),
            ),
            (
                "guarded read (`GET /api/notes`)",
                guarded,
                read_head("/api/notes", true),
            ),
            (
                "session layer only (`GET /healthz` with the cookie)",
                guarded,
                read_head("/healthz", true),
            ),
            (
                "guarded write, audited (`POST /api/admin/members/{id}/role`)",
                guarded,
                write_head.clone(),
            ),
            (
                "the same write without the audit layer",
                unaudited,
                unaudited_head.clone(),
            ),
        ] {
            let per_request = roundtrips::per_request(&counter, || request(addr, &head)).await?;
            println!("| {name} | {per_request:.2} |");
        }
        println!();
        drop(app);
        let _ = std::fs::remove_dir_all(&dir);
        return Ok(());
    }

    if let Ok(probe) = std::env::var("LOAD_BENCH_PROBE") {
        // `LOAD_BENCH_PROBE=N`: N connections (1 when not a number).
        let connections: u32 = probe.parse().unwrap_or(1);
        for (name, url, with_cookie) in [
            (
                "healthz, no cookie",
                format!("http://{guarded}/healthz"),
                false,
            ),
            (
                "healthz, session checked",
                format!("http://{guarded}/healthz"),
                true,
            ),
            ("api/notes", format!("http://{guarded}/api/notes"), true),
            ("bare", format!("http://{bare}{bare_path}"), false),
        ] {
            let f = wrk(
                &url,
                connections,
                seconds,
                if with_cookie { &cookie } else { "x=y" },
                None,
            )
            .await?;
            println!(
                "{name}: {:.0}/s p50 {:.3} ms",
                f.requests_per_second, f.p50_ms
            );
        }
        return Ok(());
    }
    let script = dir.join("write.lua");
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\n\
             wrk.body = '{{\"role\": \"member\"}}'\n\
             wrk.headers[\"Content-Type\"] = \"application/json\"\n\
             wrk.headers[\"Origin\"] = \"{}\"\n",
            app.config.base_url
        ),
    )?;
    let urls = [
        ("bare read", format!("http://{bare}{bare_path}"), None),
        ("guarded read", format!("http://{guarded}/api/notes"), None),
        (
            "unaudited write",
            format!("http://{unaudited}/baseline/members/{bob}/role"),
            Some(script.as_path()),
        ),
        (
            "guarded write (audited)",
            format!("http://{guarded}/api/admin/members/{bob}/role"),
            Some(script.as_path()),
        ),
        (
            "audited write, flooded",
            format!("http://{guarded}/api/admin/members/{bob}/role"),
            Some(script.as_path()),
        ),
    ];
    let flood_url = format!("http://{guarded}/api/admin/members/{alice}/role");

    println!(
        "wrk, {seconds} s per cell, {rounds} round(s); reference app (development profile, \
         plain HTTP on loopback) and PostgreSQL on this machine\n"
    );
    println!(
        "| connections | route | requests/s | p50 | p99 | non-2xx | socket errors | vs baseline: throughput | vs baseline: p99 |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "\n(baseline: the bare read for the guarded read, the unaudited write for the audited \
         write, the audited write without the flood for the flooded one)\n"
    );
    let mut goals = Vec::new();
    for round in 0..rounds {
        for connections in [1u32, 16, 128] {
            // Warm both read paths (pools, caches) at this concurrency first.
            for (_, url, _) in &urls[..2] {
                wrk(url, connections, 2, &cookie, None).await?;
            }
            let mut measured = std::collections::HashMap::new();
            for (name, url, script) in &urls {
                let flooded = *name == "audited write, flooded";
                // The flood: as many connections as the write, sending role changes a member
                // may not make in the same tenant (each refused and audited), for the whole
                // cell.
                let flood = flooded.then(|| {
                    let (url, cookie, script) = (
                        flood_url.clone(),
                        flood_cookie.clone(),
                        script.map(Into::into),
                    );
                    tokio::spawn(async move {
                        let script: Option<std::path::PathBuf> = script;
                        wrk(&url, connections, seconds + 1, &cookie, script.as_deref()).await
                    })
                });
                let f = wrk(url, connections, seconds, &cookie, *script).await?;
                if let Some(flood) = flood {
                    let flood = flood.await??;
                    println!(
                        "| {connections} | (the flood: refused, audited) | {:.0} | {:.2} ms | {:.2} ms | {} | {} | — | — |",
                        flood.requests_per_second,
                        flood.p50_ms,
                        flood.p99_ms,
                        flood.non_2xx,
                        flood.socket_errors
                    );
                }
                measured.insert(*name, f);
                let baseline = match *name {
                    "guarded read" => measured.get("bare read"),
                    "guarded write (audited)" => measured.get("unaudited write"),
                    "audited write, flooded" => measured.get("guarded write (audited)"),
                    _ => None,
                };
                let (throughput, p99) = baseline.map_or((1.0, 1.0), |b| {
                    (
                        f.requests_per_second / b.requests_per_second,
                        f.p99_ms / b.p99_ms,
                    )
                });
                if baseline.is_some() {
                    goals.push((
                        round,
                        connections,
                        *name,
                        throughput,
                        p99,
                        f.non_2xx + f.socket_errors,
                    ));
                }
                println!(
                    "| {connections} | {name} | {:.0} | {:.2} ms | {:.2} ms | {} | {} | {} | {} |",
                    f.requests_per_second,
                    f.p50_ms,
                    f.p99_ms,
                    f.non_2xx,
                    f.socket_errors,
                    if baseline.is_none() {
                        "—".to_owned()
                    } else {
                        format!("{throughput:.2}")
                    },
                    if baseline.is_none() {
                        "—".to_owned()
                    } else {
                        format!("{p99:.2}x")
                    },
                );
            }
        }
    }
    println!();
    for (round, connections, name, throughput, p99, errors) in goals {
        let met = match name {
            "guarded read" => throughput >= 0.8 && p99 <= 1.5,
            "guarded write (audited)" => throughput >= 0.7 && p99 <= 2.0,
            _ => p99 <= 2.0,
        } && errors == 0;
        println!(
            "round {}, {connections} connections, {name}: {throughput:.2} of its baseline's throughput, p99 {p99:.2}x, {errors} errors — goal {}",
            round + 1,
            if met { "met" } else { "NOT met" }
        );
    }
    drop(app);
    let _ = std::fs::remove_dir_all(&dir);
    tokio::time::sleep(Duration::from_millis(100)).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk_output() {
        let output = "Running 2s test @ http://127.0.0.1:1/x
  2 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     5.23ms    1.20ms  20.00ms   80.00%
  Latency Distribution
     50%  812.00us
     75%    5.80ms
     90%    6.50ms
     99%    1.02s
  30500 requests in 10.00s, 50.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 5
  Non-2xx or 3xx responses: 12
Requests/sec:   3050.25
Transfer/sec:      5.00MB
";
        let f = parse(output).unwrap();
        assert!((f.p50_ms - 0.812).abs() < 1e-9);
        assert!((f.p99_ms - 1020.0).abs() < 1e-9);
        assert!((f.requests_per_second - 3050.25).abs() < 1e-9);
        assert_eq!((f.non_2xx, f.socket_errors), (12, 7));
        assert!(parse("garbage").is_none());
    }
}
