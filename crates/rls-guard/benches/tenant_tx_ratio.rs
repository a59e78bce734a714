//! The benchmark figure docs/benchmarks.md quotes: rls-guard's tenant-bound transaction vs. a
//! plain transaction, **interleaved** so that the drift of a shared, noisy machine hits both
//! sides alike.
//!
//! `cargo bench -p rls-guard --bench tenant_tx_ratio`
//!
//! Each round runs a block of each variant in rotating order and records the mean latency of the
//! block; the report gives the median over rounds and the median of the per-round ratios.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout
)]

mod support;

use std::time::Instant;

use testkit::{ClusterOptions, PgCluster};

const ROUNDS: usize = 60;
const BLOCK: usize = 200;
const WARMUP: usize = 2_000;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn quartiles(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 4], v[3 * v.len() / 4])
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing: run a short smoke.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let (rounds, block, warmup) = if smoke {
        (2, 5, 5)
    } else {
        (ROUNDS, BLOCK, WARMUP)
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cluster = PgCluster::start_with(&ClusterOptions::new().with_tcp(true)).unwrap();
    runtime.block_on(async {
        let f = support::Fixture::new(&cluster).await;
        for _ in 0..warmup {
            f.plain_tx().await;
            f.tenant_tx().await;
            f.bound_tx_without_commit_protocol().await;
            f.bound_tx_plain_table().await;
        }
        let mut times: [Vec<f64>; 4] = Default::default();
        for round in 0..rounds {
            for k in 0..4 {
                let variant = (round + k) % 4;
                let start = Instant::now();
                for _ in 0..block {
                    match variant {
                        0 => drop(f.plain_tx().await),
                        1 => drop(f.tenant_tx().await),
                        2 => drop(f.bound_tx_without_commit_protocol().await),
                        _ => drop(f.bound_tx_plain_table().await),
                    }
                }
                times[variant].push(start.elapsed().as_secs_f64() * 1e6 / block as f64);
            }
        }
        let ratio =
            |i: usize| -> Vec<f64> { times[i].iter().zip(&times[0]).map(|(x, p)| x / p).collect() };
        let (q1, q3) = quartiles(ratio(1));
        println!("rounds={rounds} block={block} (loopback TCP, pool of 1 connection per side)");
        println!(
            "plain_tx_no_rls                       median {:7.1} us",
            median(times[0].clone())
        );
        println!(
            "tenant_tx_rls (rls-guard)             median {:7.1} us",
            median(times[1].clone())
        );
        println!(
            "bound_tx_rls_without_commit_protocol  median {:7.1} us",
            median(times[2].clone())
        );
        println!(
            "ratio tenant_tx / plain               median {:.3}  (IQR {q1:.3} .. {q3:.3})",
            median(ratio(1))
        );
        println!(
            "bound_tx_plain_table (binding only)   median {:7.1} us",
            median(times[3].clone())
        );
        println!(
            "ratio bound_without_protocol / plain  median {:.3}",
            median(ratio(2))
        );
        println!(
            "ratio binding only / plain            median {:.3}",
            median(ratio(3))
        );
    });
}
