//! The guarded GET vs. plain reqwest, **interleaved** (rounds of each client in rotating order)
//! so the drift of a shared machine hits every variant alike.
//!
//! `cargo bench -p egress-guard --bench request_ratio`
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::{Router, routing::get};
use egress_guard::{EgressPolicy, GuardedClient, HickoryResolver};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let smoke = !std::env::args().any(|a| a == "--bench");
    let (rounds, block) = if smoke { (2, 5) } else { (40, 300) };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route("/ok", get(|| async { "ok" }));
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let url = format!("http://{addr}/ok");
        let plain = reqwest::Client::builder().no_proxy().build().unwrap();
        let timed = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(5))
            .read_timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let policy = EgressPolicy::new("bench")
            .allow_cidr("127.0.0.0/8")
            .unwrap()
            .ports([addr.port()]);
        let guarded = GuardedClient::builder(policy)
            .resolver(Arc::new(
                HickoryResolver::with_nameserver("127.0.0.1:9".parse().unwrap()).unwrap(),
            ))
            .build()
            .unwrap();
        let mut times: [Vec<f64>; 3] = Default::default();
        for round in 0..rounds {
            for k in 0..3 {
                let variant = (round + k) % 3;
                let start = Instant::now();
                for _ in 0..block {
                    match variant {
                        0 => drop(plain.get(&url).send().await.unwrap().bytes().await.unwrap()),
                        1 => drop(
                            tokio::time::timeout(Duration::from_secs(30), async {
                                timed.get(&url).send().await.unwrap().bytes().await.unwrap()
                            })
                            .await
                            .unwrap(),
                        ),
                        _ => drop(guarded.get(&url).await.unwrap()),
                    }
                }
                times[variant].push(start.elapsed().as_secs_f64() * 1e6 / f64::from(block));
            }
        }
        let ratio = |i: usize, base: usize| -> Vec<f64> {
            times[i]
                .iter()
                .zip(&times[base])
                .map(|(x, p)| x / p)
                .collect()
        };
        println!("rounds={rounds} block={block} (loopback, keep-alive)");
        println!(
            "plain reqwest                     median {:6.1} us",
            median(times[0].clone())
        );
        println!(
            "reqwest with the guard's timeouts median {:6.1} us",
            median(times[1].clone())
        );
        println!(
            "guarded                           median {:6.1} us",
            median(times[2].clone())
        );
        println!(
            "ratio guarded / plain             median {:.3}",
            median(ratio(2, 0))
        );
        println!(
            "ratio guarded / timed reqwest     median {:.3}",
            median(ratio(2, 1))
        );
    });
}
