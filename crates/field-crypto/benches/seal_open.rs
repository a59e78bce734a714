//! Seal and open through field-crypto vs. the raw `chacha20poly1305` crate on the same input in
//! the same run, and blind index throughput.
//!
//! `cargo bench -p field-crypto --bench seal_open`
//!
//! The raw baseline does what any correct use of the AEAD must: draw a fresh random 24-byte
//! nonce (getrandom) and encrypt with associated data of the same length as the crate's context.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use field_crypto::{BlindIndexKey, Context, KeyMaterial, Keyring, Normalize};

fn seal_open(c: &mut Criterion) {
    let mut keyring = Keyring::new();
    keyring
        .add_key(1, &KeyMaterial::from_bytes(Box::new([1; 32])))
        .unwrap();
    keyring.promote(1).unwrap();
    let context = Context::new([7u8; 16], "users", "totp_seed", 42u64.to_be_bytes());
    let raw = XChaCha20Poly1305::new(Key::from_slice(&[1; 32]));
    let aad = vec![0u8; 62 + 23 + 16 + 4 * 4 + 5 + 9 + 8 + 4];

    for size in [32usize, 1024, 64 * 1024] {
        let value = vec![0x5au8; size];
        let mut group = c.benchmark_group(format!("seal_{size}B"));
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(BenchmarkId::new("raw_chacha20poly1305", size), |b| {
            b.iter(|| {
                let mut nonce = [0u8; 24];
                getrandom::fill(&mut nonce).unwrap();
                raw.encrypt(
                    XNonce::from_slice(&nonce),
                    Payload {
                        msg: black_box(&value),
                        aad: &aad,
                    },
                )
                .unwrap()
            });
        });
        group.bench_function(BenchmarkId::new("field_crypto", size), |b| {
            b.iter(|| keyring.seal(black_box(&value), &context).unwrap());
        });
        group.finish();

        let sealed = keyring.seal(&value, &context).unwrap();
        let nonce = [9u8; 24];
        let raw_sealed = raw
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &value,
                    aad: &aad,
                },
            )
            .unwrap();
        let mut group = c.benchmark_group(format!("open_{size}B"));
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(BenchmarkId::new("raw_chacha20poly1305", size), |b| {
            b.iter(|| {
                raw.decrypt(
                    XNonce::from_slice(&nonce),
                    Payload {
                        msg: black_box(&raw_sealed),
                        aad: &aad,
                    },
                )
                .unwrap()
            });
        });
        group.bench_function(BenchmarkId::new("field_crypto", size), |b| {
            b.iter(|| keyring.open(black_box(&sealed), &context).unwrap());
        });
        group.finish();
    }
}

fn blind_index(c: &mut Criterion) {
    let root = BlindIndexKey::new(&KeyMaterial::from_bytes(Box::new([3; 32]))).unwrap();
    let indexer = root
        .indexer(
            [7u8; 16],
            "users",
            "email",
            "by_email",
            Normalize::Exact,
            16,
        )
        .unwrap();
    let value = [0x61u8; 32];
    let mut group = c.benchmark_group("blind_index_32B");
    group.throughput(Throughput::Elements(1));
    group.bench_function("compute_bytes", |b| {
        b.iter(|| indexer.compute_bytes(black_box(&value)));
    });
    group.finish();
}

criterion_group!(benches, seal_open, blind_index);
criterion_main!(benches);
