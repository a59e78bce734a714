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

const VARIANTS: usize = 9;
const NAMES: [&str; VARIANTS] = [
    "plain_tx (BEGIN; SELECT; COMMIT, no RLS)",
    "tenant_tx (rls-guard)",
    "binding + RLS, plain COMMIT",
    "binding only (plain table, plain COMMIT)",
    "tenant_tx_read_only (rls-guard)",
    "plain_select (autocommit, no RLS)",
    "bound_read (rls-guard, one statement)",
    "tenant_tx, signed bindings",
    "bound_read, signed bindings",
];

async fn run(f: &support::Fixture, variant: usize) {
    match variant {
        0 => drop(f.plain_tx().await),
        1 => drop(f.tenant_tx().await),
        2 => drop(f.bound_tx_without_commit_protocol().await),
        3 => drop(f.bound_tx_plain_table().await),
        4 => drop(f.tenant_tx_read_only().await),
        5 => drop(f.plain_select().await),
        6 => drop(f.bound_read().await),
        7 => drop(f.tenant_tx_signed().await),
        _ => drop(f.bound_read_signed().await),
    }
}

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
            for variant in 0..VARIANTS {
                run(&f, variant).await;
            }
        }
        let mut times: [Vec<f64>; VARIANTS] = Default::default();
        for round in 0..rounds {
            for k in 0..VARIANTS {
                let variant = (round + k) % VARIANTS;
                let start = Instant::now();
                for _ in 0..block {
                    run(&f, variant).await;
                }
                times[variant].push(start.elapsed().as_secs_f64() * 1e6 / block as f64);
            }
        }
        let ratio = |i: usize, base: usize| -> Vec<f64> {
            times[i]
                .iter()
                .zip(&times[base])
                .map(|(x, p)| x / p)
                .collect()
        };
        println!("rounds={rounds} block={block} (loopback TCP, pool of 1 connection per side)");
        for (i, name) in NAMES.iter().enumerate() {
            println!("{name:<46} median {:7.1} us", median(times[i].clone()));
        }
        for (i, base, name) in [
            (1, 0, "tenant_tx / plain_tx"),
            (4, 0, "tenant_tx_read_only / plain_tx"),
            (2, 0, "binding + RLS, plain COMMIT / plain_tx"),
            (3, 0, "binding only / plain_tx"),
            (6, 5, "bound_read / plain_select"),
            (7, 0, "tenant_tx signed / plain_tx"),
            (7, 1, "tenant_tx signed / tenant_tx"),
            (8, 5, "bound_read signed / plain_select"),
            (8, 6, "bound_read signed / bound_read"),
        ] {
            let (q1, q3) = quartiles(ratio(i, base));
            println!(
                "ratio {name:<40} median {:.3}  (IQR {q1:.3} .. {q3:.3})",
                median(ratio(i, base))
            );
        }
    });
}
