//! A tenant-bound transaction doing a primary-key SELECT on an RLS table, against a plain
//! transaction doing the same SELECT on an identical table without RLS, over loopback TCP.
//!
//! `cargo bench -p rls-guard --bench tenant_tx` (criterion, one variant after the other); see
//! `benches/tenant_tx_ratio.rs` for the interleaved ratio that docs/benchmarks.md quotes.
//!
//! Both sides make three round trips (BEGIN, SELECT, COMMIT): rls-guard folds the binding into
//! BEGIN and the binding restatement into COMMIT.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use testkit::{ClusterOptions, PgCluster};

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cluster = PgCluster::start_with(&ClusterOptions::new().with_tcp(true)).unwrap();
    let fixture = runtime.block_on(support::Fixture::new(&cluster));

    let mut group = c.benchmark_group("pk_select_in_transaction");
    group
        .measurement_time(Duration::from_secs(10))
        .sample_size(100);
    group.bench_function("plain_tx_no_rls", |b| {
        b.to_async(&runtime).iter(|| fixture.plain_tx());
    });
    group.bench_function("tenant_tx_rls", |b| {
        b.to_async(&runtime).iter(|| fixture.tenant_tx());
    });
    group.bench_function("bound_tx_rls_without_commit_protocol", |b| {
        b.to_async(&runtime)
            .iter(|| fixture.bound_tx_without_commit_protocol());
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
