//! A guarded GET against a loopback server, side by side with plain reqwest in the same run.
//!
//! `cargo bench -p egress-guard --bench request` (goal: guarded <= 1.05x plain)
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use axum::{Router, routing::get};
use criterion::{Criterion, criterion_group, criterion_main};
use egress_guard::{EgressPolicy, GuardedClient, HickoryResolver};

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let addr = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route("/ok", get(|| async { "ok" }));
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        addr
    });
    let url = format!("http://{addr}/ok");
    let plain = reqwest::Client::builder().no_proxy().build().unwrap();
    let policy = EgressPolicy::new("bench")
        .allow_cidr("127.0.0.0/8")
        .unwrap()
        .ports([addr.port()]);
    // IP literal: no lookup happens, so the (unused) nameserver needs no server.
    let guarded = GuardedClient::builder(policy)
        .resolver(Arc::new(
            HickoryResolver::with_nameserver("127.0.0.1:9".parse().unwrap()).unwrap(),
        ))
        .build()
        .unwrap();

    let mut group = c.benchmark_group("loopback_get");
    group.bench_function("plain_reqwest", |b| {
        b.to_async(&runtime).iter(|| async {
            let r = plain.get(&url).send().await.unwrap();
            r.bytes().await.unwrap()
        });
    });
    let plain_timeouts = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(std::time::Duration::from_secs(5))
        .read_timeout(std::time::Duration::from_secs(10))
        .build()
        .unwrap();
    group.bench_function("plain_reqwest_same_timeouts", |b| {
        b.to_async(&runtime).iter(|| async {
            let r = tokio::time::timeout(
                std::time::Duration::from_secs(30),
                plain_timeouts.get(&url).send(),
            )
            .await
            .unwrap()
            .unwrap();
            r.bytes().await.unwrap()
        });
    });
    group.bench_function("guarded", |b| {
        b.to_async(&runtime)
            .iter(|| async { guarded.get(&url).await.unwrap().body });
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
