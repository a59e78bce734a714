//! A sandboxed spawn of `/bin/true` vs. a plain `tokio::process::Command` spawn, **interleaved**
//! (blocks of each in rotating order) so the drift of a shared machine hits both alike, then
//! the same pair under criterion.
//!
//! `cargo bench -p tool-sandbox --bench spawn`
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout
)]

use std::time::{Duration, Instant};

use criterion::Criterion;
use tool_sandbox::process::{Exit, SandboxedCommand, support};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn plain() {
    let out = tokio::process::Command::new("/bin/true")
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
}

async fn sandboxed() {
    let out = SandboxedCommand::new("/bin/true").run().await.unwrap();
    assert_eq!(out.exit, Exit::Code(0));
}

/// The scratch directory on a tmpfs (`/dev/shm`) instead of the temp dir (the default): on a
/// journalled disk its mkdir/chown/rmdir is a noticeable share of the cost.
async fn sandboxed_shm() {
    let out = SandboxedCommand::new("/bin/true")
        .scratch_parent("/dev/shm")
        .run()
        .await
        .unwrap();
    assert_eq!(out.exit, Exit::Code(0));
}

fn ratio(runtime: &tokio::runtime::Runtime, rounds: usize, block: u32) {
    runtime.block_on(async {
        // Warm up: the BPF programs, the probe and the blocking pool.
        sandboxed().await;
        sandboxed_shm().await;
        plain().await;
        let mut times: [Vec<f64>; 3] = Default::default();
        for round in 0..rounds {
            for k in 0..3 {
                let variant = (round + k) % 3;
                let start = Instant::now();
                for _ in 0..block {
                    match variant {
                        0 => plain().await,
                        1 => sandboxed().await,
                        _ => sandboxed_shm().await,
                    }
                }
                times[variant].push(start.elapsed().as_secs_f64() * 1e6 / f64::from(block));
            }
        }
        let ratio =
            |i: usize| -> Vec<f64> { times[i].iter().zip(&times[0]).map(|(s, p)| s / p).collect() };
        println!("rounds={rounds} block={block} (/bin/true, {:?})", support());
        println!(
            "plain tokio::process              median {:7.1} us",
            median(times[0].clone())
        );
        println!(
            "sandboxed (default scratch)       median {:7.1} us",
            median(times[1].clone())
        );
        println!(
            "sandboxed (scratch in /dev/shm)   median {:7.1} us",
            median(times[2].clone())
        );
        println!(
            "ratio sandboxed/plain             median {:.3}",
            median(ratio(1))
        );
        println!(
            "ratio sandboxed shm/plain         median {:.3}",
            median(ratio(2))
        );
    });
}

fn main() {
    let smoke = !std::env::args().any(|a| a == "--bench");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (rounds, block) = if smoke { (2, 5) } else { (5, 200) };
    ratio(&runtime, rounds, block);
    if smoke {
        return;
    }
    let mut c = Criterion::default()
        .configure_from_args()
        .measurement_time(Duration::from_secs(5));
    let mut group = c.benchmark_group("spawn_true");
    group.bench_function("plain", |b| b.to_async(&runtime).iter(plain));
    group.bench_function("sandboxed", |b| b.to_async(&runtime).iter(sandboxed));
    group.bench_function("sandboxed_shm", |b| {
        b.to_async(&runtime).iter(sandboxed_shm);
    });
    group.finish();
    c.final_summary();
}
