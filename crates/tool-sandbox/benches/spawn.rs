//! An isolated run of `/bin/true` (own user, mount, PID, network, IPC and UTS namespaces, plus
//! every other control) vs. a plain `std::process::Command` spawn of the same program, in the
//! same run and **interleaved** (blocks of each in rotating order) so the drift of a shared
//! machine hits all alike; then the same under criterion. For reference: a plain tokio spawn,
//! the isolated run with its scratch on a tmpfs, and the weaker mode (no namespaces).
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
use tool_sandbox::process::{Exit, Isolation, SandboxedCommand, support};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// `std::process::Command`: spawn, wait, output collected (on a blocking thread, as an async
/// caller would).
async fn plain_std() {
    let out = tokio::task::spawn_blocking(|| std::process::Command::new("/bin/true").output())
        .await
        .unwrap()
        .unwrap();
    assert!(out.status.success());
}

async fn plain_tokio() {
    let out = tokio::process::Command::new("/bin/true")
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
}

/// The default: isolated in namespaces, scratch directory in the temp dir.
async fn isolated() {
    let out = SandboxedCommand::new("/bin/true").run().await.unwrap();
    assert_eq!(out.exit, Exit::Code(0));
    assert!(out.confinement.namespaces);
}

/// Isolated, with the scratch directory on a tmpfs (`/dev/shm`).
async fn isolated_shm() {
    let out = SandboxedCommand::new("/bin/true")
        .scratch_parent("/dev/shm")
        .run()
        .await
        .unwrap();
    assert_eq!(out.exit, Exit::Code(0));
}

/// The weaker mode (as if namespaces were unavailable): the cost of the namespaces is the
/// difference to `isolated`.
async fn weaker() {
    let out = SandboxedCommand::new("/bin/true")
        .isolation(Isolation::NamespacesOrWeaker)
        .simulate_namespaces_unavailable(true)
        .run()
        .await
        .unwrap();
    assert_eq!(out.exit, Exit::Code(0));
    assert!(!out.confinement.namespaces);
}

const NAMES: [&str; 5] = [
    "plain std::process::Command",
    "plain tokio::process::Command",
    "isolated (default scratch)",
    "isolated (scratch in /dev/shm)",
    "weaker mode (no namespaces)",
];

async fn variant(i: usize) {
    match i {
        0 => plain_std().await,
        1 => plain_tokio().await,
        2 => isolated().await,
        3 => isolated_shm().await,
        _ => weaker().await,
    }
}

fn ratio(runtime: &tokio::runtime::Runtime, rounds: usize, block: u32) {
    runtime.block_on(async {
        // Warm up: the BPF programs, the probe and the blocking pool.
        for i in 0..NAMES.len() {
            variant(i).await;
        }
        let mut times: Vec<Vec<f64>> = vec![Vec::new(); NAMES.len()];
        for round in 0..rounds {
            for k in 0..NAMES.len() {
                let i = (round + k) % NAMES.len();
                let start = Instant::now();
                for _ in 0..block {
                    variant(i).await;
                }
                times[i].push(start.elapsed().as_secs_f64() * 1e6 / f64::from(block));
            }
        }
        println!("rounds={rounds} block={block} (/bin/true, {:?})", support());
        for (name, t) in NAMES.iter().zip(&times) {
            println!("{name:<32} median {:8.1} us", median(t.clone()));
        }
        for i in 1..NAMES.len() {
            let r: Vec<f64> = times[i].iter().zip(&times[0]).map(|(s, p)| s / p).collect();
            println!(
                "ratio {:<32} / plain std  median {:.3}",
                NAMES[i],
                median(r)
            );
        }
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
    group.bench_function("plain_std", |b| b.to_async(&runtime).iter(plain_std));
    group.bench_function("isolated", |b| b.to_async(&runtime).iter(isolated));
    group.bench_function("weaker", |b| b.to_async(&runtime).iter(weaker));
    group.finish();
    c.final_summary();
}
