//! Known-answer tests: the XChaCha20-Poly1305 primitive this crate is built on, against Project
//! Wycheproof's vectors (tests/data/, Apache-2.0; commit in tests/data/SOURCE).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Key, Tag, XChaCha20Poly1305, XNonce};
use serde::Deserialize;

#[derive(Deserialize)]
struct File {
    #[serde(rename = "testGroups")]
    groups: Vec<Group>,
}

#[derive(Deserialize)]
struct Group {
    tests: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    #[serde(rename = "tcId")]
    id: u32,
    key: String,
    iv: String,
    aad: String,
    msg: String,
    ct: String,
    tag: String,
    result: String,
    flags: Vec<String>,
}

#[test]
fn xchacha20_poly1305_wycheproof_vectors() {
    let file: File =
        serde_json::from_str(include_str!("data/xchacha20_poly1305_test.json")).unwrap();
    let (mut valid, mut invalid, mut bad_nonce) = (0, 0, 0);
    for case in file.groups.iter().flat_map(|g| &g.tests) {
        let key = hex::decode(&case.key).unwrap();
        let iv = hex::decode(&case.iv).unwrap();
        let aad = hex::decode(&case.aad).unwrap();
        let msg = hex::decode(&case.msg).unwrap();
        let ct = hex::decode(&case.ct).unwrap();
        let tag = hex::decode(&case.tag).unwrap();
        if iv.len() != 24 {
            // The crate only ever builds 24-byte nonces; other sizes cannot be expressed.
            assert!(
                case.flags.iter().any(|f| f == "InvalidNonceSize"),
                "tc {}",
                case.id
            );
            assert_eq!(case.result, "invalid");
            bad_nonce += 1;
            continue;
        }
        let cipher = XChaCha20Poly1305::new(Key::from_slice(&key));
        let nonce = XNonce::from_slice(&iv);
        let mut buf = ct.clone();
        let opened = cipher.decrypt_in_place_detached(nonce, &aad, &mut buf, Tag::from_slice(&tag));
        match case.result.as_str() {
            "valid" => {
                opened.unwrap_or_else(|_| panic!("tc {} should open", case.id));
                assert_eq!(buf, msg, "tc {}", case.id);
                let mut sealed = msg.clone();
                let got_tag = cipher
                    .encrypt_in_place_detached(nonce, &aad, &mut sealed)
                    .unwrap();
                assert_eq!((sealed, got_tag.to_vec()), (ct, tag), "tc {}", case.id);
                valid += 1;
            }
            "invalid" => {
                assert!(opened.is_err(), "tc {} should be rejected", case.id);
                invalid += 1;
            }
            other => panic!("unexpected result {other}"),
        }
    }
    assert!(
        valid > 200 && invalid > 20 && bad_nonce > 0,
        "{valid} {invalid} {bad_nonce}"
    );
}
