//! The multi-key attack on a non-committing AEAD, carried out for real: a ciphertext that
//! XChaCha20-Poly1305 accepts under two different keys (a Poly1305 tag collision solved over
//! GF(2^130 - 5)). The raw AEAD opens it under both keys; field-crypto's key commitment rejects
//! it under the second.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use chacha20::cipher::{KeyIvInit, StreamCipher};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use field_crypto::{Context, CryptoError, KeyMaterial, Keyring};
use hmac::Mac;
use num_bigint::{BigInt, Sign};

fn p() -> BigInt {
    (BigInt::from(1) << 130) - 5
}

fn le(bytes: &[u8]) -> BigInt {
    BigInt::from_bytes_le(Sign::Plus, bytes)
}

fn modp(x: &BigInt) -> BigInt {
    ((x % p()) + p()) % p()
}

/// The AEAD subkey field-crypto derives from key material.
fn aead_key(material: [u8; 32]) -> [u8; 32] {
    let mut mac = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(&material).unwrap();
    mac.update(b"field-crypto/v1/aead");
    mac.finalize().into_bytes().into()
}

/// Poly1305's (r, s) for this key and nonce: keystream block 0, r clamped.
fn poly_key(key: &[u8; 32], nonce: &[u8]) -> (BigInt, BigInt) {
    let mut block = [0u8; 32];
    chacha20::XChaCha20::new(key.into(), nonce.into()).apply_keystream(&mut block);
    let mut r = [0u8; 16];
    r.copy_from_slice(&block[..16]);
    for i in [3, 7, 11, 15] {
        r[i] &= 15;
    }
    for i in [4, 8, 12] {
        r[i] &= 252;
    }
    (le(&r), le(&block[16..]))
}

/// Poly1305's padded message blocks for (aad, ciphertext), as integers with the 2^128 bit set.
fn blocks(aad: &[u8], ct: &[u8]) -> Vec<BigInt> {
    let mut msg = Vec::new();
    for part in [aad, ct] {
        msg.extend_from_slice(part);
        msg.resize(msg.len().div_ceil(16) * 16, 0);
    }
    msg.extend_from_slice(&(aad.len() as u64).to_le_bytes());
    msg.extend_from_slice(&(ct.len() as u64).to_le_bytes());
    msg.chunks(16)
        .map(|c| le(c) + (BigInt::from(1) << 128))
        .collect()
}

fn acc(blocks: &[BigInt], r: &BigInt) -> BigInt {
    blocks
        .iter()
        .fold(BigInt::from(0), |a, b| modp(&((a + b) * r)))
}

#[test]
fn a_ciphertext_valid_under_two_keys_is_rejected_by_the_commitment() {
    let (m1, m2) = ([0x11u8; 32], [0x22u8; 32]);
    let mut ring1 = Keyring::new();
    ring1
        .add_key(1, &KeyMaterial::from_bytes(Box::new(m1)))
        .unwrap();
    ring1.promote(1).unwrap();
    // The second keyring uses the same key id with other material (a confused or malicious
    // key configuration, or another tenant's keyring).
    let mut ring2 = Keyring::new();
    ring2
        .add_key(1, &KeyMaterial::from_bytes(Box::new(m2)))
        .unwrap();
    ring2.promote(1).unwrap();
    let (k1, k2) = (aead_key(m1), aead_key(m2));
    let context = Context::new([5u8; 16], "users", "totp_seed", 7u64.to_be_bytes());

    for attempt in 0u8..64 {
        // A genuine header from keyring 1 (its nonce and commitment), so the AAD is fixed.
        let header = ring1.seal(b"", &context).unwrap()[..62].to_vec();
        let nonce = header[6..30].to_vec();
        // The AAD field-crypto authenticates: the header, then the context encoding.
        let aad = [header.as_slice(), &context_bytes()].concat();
        let (r1, s1) = poly_key(&k1, &nonce);
        let (r2, s2) = poly_key(&k2, &nonce);
        let c0 = [attempt; 16];
        // Ciphertext = c0 || X; X is the unknown, at exponent 2 (then the length block).
        let template = blocks(&aad, &[c0.as_slice(), &[0u8; 16]].concat());
        let n = template.len();
        let x_at = n - 2;
        let without_x: Vec<BigInt> = template
            .iter()
            .enumerate()
            .map(|(i, b)| {
                if i == x_at {
                    BigInt::from(1) << 128
                } else {
                    b.clone()
                }
            })
            .collect();
        // acc_j(X) = A_j + X * r_j^2  (A_j includes the 2^128 bit of block X).
        let (a1, a2) = (acc(&without_x, &r1), acc(&without_x, &r2));
        let d = modp(&(r1.modpow(&BigInt::from(2), &p()) - r2.modpow(&BigInt::from(2), &p())));
        let d_inv = d.modpow(&(p() - 2), &p());
        for m in -4i32..=4 {
            let target = &s2 - &s1 + BigInt::from(m) * (BigInt::from(1) << 128);
            let x = modp(&((target - (&a1 - &a2)) * &d_inv));
            if x >= BigInt::from(1) << 128 {
                continue;
            }
            let mut x_bytes = x.to_bytes_le().1;
            x_bytes.resize(16, 0);
            let ct = [c0.as_slice(), &x_bytes].concat();
            let full = blocks(&aad, &ct);
            let t1: BigInt = (acc(&full, &r1) + &s1) % (BigInt::from(1) << 128);
            let t2: BigInt = (acc(&full, &r2) + &s2) % (BigInt::from(1) << 128);
            if t1 != t2 {
                continue;
            }
            let mut tag = t1.to_bytes_le().1;
            tag.resize(16, 0);
            let body = [ct.as_slice(), &tag].concat();

            // The raw AEAD accepts the same bytes under both keys, with different plaintexts.
            let open = |k: &[u8; 32]| {
                XChaCha20Poly1305::new(k.into()).decrypt(
                    XNonce::from_slice(&nonce),
                    Payload {
                        msg: &body,
                        aad: &aad,
                    },
                )
            };
            let (p1, p2) = (
                open(&k1).expect("valid under key 1"),
                open(&k2).expect("valid under key 2"),
            );
            assert_ne!(p1, p2);

            // field-crypto: keyring 1 opens it (the commitment is its own)...
            let ciphertext = [header.as_slice(), &body].concat();
            assert_eq!(
                ring1.open(&ciphertext, &context).unwrap().as_bytes(),
                p1.as_slice()
            );
            // ...and the commitment stops keyring 2, although its AEAD tag would verify.
            assert_eq!(
                ring2.open(&ciphertext, &context).err(),
                Some(CryptoError::DecryptionFailed)
            );
            return;
        }
    }
    panic!("no two-key ciphertext found in 64 attempts");
}

/// The context's encoding, as field-crypto puts it in the AAD (length-prefixed parts, then the
/// schema version), rebuilt here from its documented layout.
fn context_bytes() -> Vec<u8> {
    let mut out = b"field-crypto/context/v1".to_vec();
    for part in [&[5u8; 16][..], b"users", b"totp_seed", &7u64.to_be_bytes()] {
        out.extend_from_slice(&(part.len() as u32).to_be_bytes());
        out.extend_from_slice(part);
    }
    out.extend_from_slice(&1u32.to_be_bytes());
    out
}
