//! Classification of 1 M mixed addresses (IPv4, IPv6, embedded IPv4, metadata).
//!
//! `cargo bench -p egress-guard --bench classify` (goal: < 50 ns per address)
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use egress_guard::{Class, classify};

fn addresses(n: usize) -> Vec<IpAddr> {
    // A fixed xorshift so every run classifies the same mix.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..n)
        .map(|i| match i % 5 {
            0 | 1 => IpAddr::V4(Ipv4Addr::from(next() as u32)),
            2 => IpAddr::V6(Ipv6Addr::from(
                (u128::from(next()) << 64) | u128::from(next()),
            )),
            3 => IpAddr::V6(Ipv4Addr::from(next() as u32).to_ipv6_mapped()),
            _ => IpAddr::V6(Ipv6Addr::from((0x2000u128 << 112) | u128::from(next()))),
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let addrs = addresses(1_000_000);
    let mut group = c.benchmark_group("classify_1M_mixed");
    group.throughput(Throughput::Elements(addrs.len() as u64));
    group.sample_size(20);
    group.bench_function("classify", |b| {
        b.iter(|| {
            addrs
                .iter()
                .filter(|ip| matches!(classify(*black_box(*ip)), Class::Public))
                .count()
        });
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
