//! SSRF-safe outbound requests: a `GuardedClient` with a host allowlist fetches from a server
//! this example starts on loopback, and refuses a name whose answers include a private address,
//! a redirect to the cloud metadata endpoint, and a host off the list — none of which reach a
//! server. Talks to nothing but its own loopback server; names resolve through a fixed table.
//!
//! ```sh
//! cargo run -p egress-guard --example guarded_client
//! ```
#![allow(clippy::print_stdout)]

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::response::Redirect;
use axum::routing::get;
use egress_guard::{EgressPolicy, GuardedClient, NameResolver};

static HITS: AtomicUsize = AtomicUsize::new(0);

/// DNS for the example: a fixed table (a real deployment uses `HickoryResolver`).
struct FixedDns;

impl NameResolver for FixedDns {
    fn lookup<'a>(
        &'a self,
        host: &'a str,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send + 'a>> {
        let local = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let answer = match host {
            "weather.example.test" => Ok(vec![local]),
            // A name that also points inside the network: denied as a whole.
            "mixed.example.test" => Ok(vec![local, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7))]),
            _ => Err(std::io::Error::other("no such name")),
        };
        Box::pin(std::future::ready(answer))
    }
}

async fn forecast() -> &'static str {
    HITS.fetch_add(1, Ordering::SeqCst);
    "sunny"
}

async fn to_metadata() -> Redirect {
    HITS.fetch_add(1, Ordering::SeqCst);
    Redirect::temporary("http://169.254.169.254/latest/meta-data/iam/")
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = Router::new()
        .route("/forecast", get(forecast))
        .route("/to-metadata", get(to_metadata));
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move { axum::serve(listener, server).await });

    // Loopback is forbidden by the floor; this policy makes one explicit exception for the demo.
    let policy = EgressPolicy::new("weather-tool")
        .allow_hosts(["*.example.test"])? // *. excludes the apex
        .allow_cidr("127.0.0.1/32")?
        .ports([port]);
    let client = GuardedClient::builder(policy)
        .resolver(Arc::new(FixedDns))
        .caller("weather-tool")
        .max_redirects(3)
        .build()?;

    for url in [
        format!("http://weather.example.test:{port}/forecast"),
        format!("http://mixed.example.test:{port}/forecast"),
        format!("http://weather.example.test:{port}/to-metadata"),
        format!("http://attacker.test:{port}/forecast"),
    ] {
        match client.get(&url).await {
            Ok(response) => println!("{url}\n  -> {} {:?}", response.status, response.body),
            Err(e) => println!(
                "{url}\n  -> refused: {e} [{}]",
                e.reason().map_or("none", |r| r.code())
            ),
        }
    }
    let hits = HITS.load(Ordering::SeqCst);
    println!("requests that reached the server: {hits} (the forecast, and the refused redirect)");

    // Decisions without a request, e.g. to validate a webhook URL when it is saved.
    let webhooks = EgressPolicy::new("webhooks").allow_hosts(["hooks.partner.example"])?;
    for url in [
        "http://[::ffff:169.254.169.254]/",
        "http://0x7f.1/",
        "file:///etc/passwd",
        "https://hooks.partner.example/ingest",
    ] {
        let d = webhooks.check_url(url);
        println!(
            "check {url:<38} -> allowed: {} [{}]",
            d.allowed,
            d.reason.code()
        );
    }
    Ok(())
}
