//! Attacks on sealed values: each must fail to open, with the same opaque error, and nothing
//! panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use field_crypto::{
    BlindIndexKey, Context, CryptoError, KeyMaterial, KeyState, Keyring, Normalize, OsRandom,
    RandomSource,
};
use proptest::prelude::*;

fn material(byte: u8) -> KeyMaterial {
    KeyMaterial::from_bytes(Box::new([byte; 32]))
}

fn keyring() -> Keyring {
    let mut k = Keyring::new();
    k.add_key(1, &material(1)).unwrap();
    k.promote(1).unwrap();
    k
}

fn ctx() -> Context {
    Context::new([1u8; 16], "users", "totp_seed", 42u64.to_be_bytes())
}

#[test]
fn round_trip_and_null_vs_empty_stay_distinct() {
    let k = keyring();
    let sealed = k.seal(b"JBSWY3DPEHPK3PXP", &ctx()).unwrap();
    assert_eq!(
        k.open(&sealed, &ctx()).unwrap().as_bytes(),
        b"JBSWY3DPEHPK3PXP"
    );
    assert_eq!(k.seal_opt(None, &ctx()).unwrap(), None);
    let empty = k.seal_opt(Some(b""), &ctx()).unwrap().unwrap();
    assert_eq!(
        k.open_opt(Some(&empty), &ctx())
            .unwrap()
            .unwrap()
            .as_bytes(),
        b""
    );
    assert!(k.open_opt(None, &ctx()).unwrap().is_none());
}

#[test]
fn ciphertext_moved_to_another_row_column_table_tenant_or_schema_fails_to_open() {
    let k = keyring();
    let sealed = k.seal(b"secret", &ctx()).unwrap();
    for other in [
        Context::new([1u8; 16], "users", "totp_seed", 43u64.to_be_bytes()),
        Context::new([1u8; 16], "users", "recovery_codes", 42u64.to_be_bytes()),
        Context::new([1u8; 16], "admins", "totp_seed", 42u64.to_be_bytes()),
        Context::new([2u8; 16], "users", "totp_seed", 42u64.to_be_bytes()),
        ctx().with_schema_version(2),
    ] {
        assert_eq!(
            k.open(&sealed, &other).err(),
            Some(CryptoError::DecryptionFailed)
        );
    }
}

#[test]
fn every_truncation_and_every_bit_flip_fails() {
    let k = keyring();
    let sealed = k.seal(b"sixteen byte msg", &ctx()).unwrap();
    for len in 0..sealed.len() {
        assert_eq!(
            k.open(&sealed[..len], &ctx()).err(),
            Some(CryptoError::DecryptionFailed),
            "len {len}"
        );
    }
    let mut extended = sealed.clone();
    extended.push(0);
    assert!(k.open(&extended, &ctx()).is_err());
    for i in 0..sealed.len() {
        for bit in 0..8 {
            let mut t = sealed.clone();
            t[i] ^= 1 << bit;
            assert_eq!(
                k.open(&t, &ctx()).err(),
                Some(CryptoError::DecryptionFailed),
                "byte {i} bit {bit}"
            );
        }
    }
}

#[test]
fn unknown_versions_algorithms_and_foreign_bytes_are_rejected() {
    let k = keyring();
    let sealed = k.seal(b"x", &ctx()).unwrap();
    for (at, value) in [(0, 2u8), (0, 0), (1, 2), (1, 0)] {
        let mut t = sealed.clone();
        t[at] = value;
        assert_eq!(
            k.open(&t, &ctx()).err(),
            Some(CryptoError::DecryptionFailed)
        );
    }
    for foreign in [&b""[..], b"JBSWY3DPEHPK3PXP", &[0u8; 200]] {
        assert_eq!(
            k.open(foreign, &ctx()).err(),
            Some(CryptoError::DecryptionFailed)
        );
    }
}

#[test]
fn key_id_redirected_to_another_valid_key_fails() {
    let mut k = keyring();
    k.add_key(2, &material(2)).unwrap();
    let sealed = k.seal(b"secret", &ctx()).unwrap();
    let mut redirected = sealed.clone();
    redirected[2..6].copy_from_slice(&2u32.to_be_bytes());
    assert_eq!(
        k.open(&redirected, &ctx()).err(),
        Some(CryptoError::DecryptionFailed)
    );
}

#[test]
fn commitment_binds_the_ciphertext_to_one_key() {
    // Same key id, different key material: the commitment fails before any decryption.
    let sealed = keyring().seal(b"secret", &ctx()).unwrap();
    let mut impostor = Keyring::new();
    impostor.add_key(1, &material(9)).unwrap();
    impostor.promote(1).unwrap();
    assert_eq!(
        impostor.open(&sealed, &ctx()).err(),
        Some(CryptoError::DecryptionFailed)
    );
}

#[test]
fn decrypt_only_keys_open_but_never_encrypt_and_retired_keys_do_not_open() {
    let mut k = keyring();
    let old = k.seal(b"old", &ctx()).unwrap();
    k.add_key(2, &material(2)).unwrap();
    assert_eq!(k.state(2), Some(KeyState::DecryptOnly));
    // A newly added key does not encrypt until promoted.
    assert_eq!(
        field_crypto::key_id_of(&k.seal(b"v", &ctx()).unwrap()).unwrap(),
        1
    );
    k.promote(2).unwrap();
    assert_eq!(k.state(1), Some(KeyState::DecryptOnly));
    let new = k.seal(b"new", &ctx()).unwrap();
    assert_eq!(field_crypto::key_id_of(&new).unwrap(), 2);
    assert_eq!(k.open(&old, &ctx()).unwrap().as_bytes(), b"old");
    // Re-encryption moves the old value to the primary key.
    let moved = k.reseal(&old, &ctx()).unwrap().unwrap();
    assert_eq!(field_crypto::key_id_of(&moved).unwrap(), 2);
    assert!(k.reseal(&moved, &ctx()).unwrap().is_none());
    k.retire(1).unwrap();
    assert_eq!(
        k.open(&old, &ctx()).err(),
        Some(CryptoError::DecryptionFailed)
    );
    assert_eq!(k.open(&moved, &ctx()).unwrap().as_bytes(), b"old");
    assert!(k.retire(2).is_err(), "the primary cannot be retired");
}

#[test]
fn below_the_minimum_version_is_a_typed_error() {
    let mut k = keyring();
    let old = k.seal(b"old", &ctx()).unwrap();
    k.add_key(5, &material(5)).unwrap();
    k.promote(5).unwrap();
    k.set_min_decrypt_version(5).unwrap();
    assert_eq!(
        k.open(&old, &ctx()).err(),
        Some(CryptoError::BelowMinimumVersion {
            key_id: 1,
            minimum: 5
        })
    );
    assert!(
        k.set_min_decrypt_version(6).is_err(),
        "primary would fall below the minimum"
    );
}

#[test]
fn no_key_means_no_encryption() {
    let k = Keyring::new();
    assert_eq!(k.seal(b"x", &ctx()).err(), Some(CryptoError::NoActiveKey));
}

struct BrokenRandom;

impl RandomSource for BrokenRandom {
    fn fill(&self, _: &mut [u8]) -> Result<(), CryptoError> {
        Err(CryptoError::RandomFailure)
    }
}

#[test]
fn a_failing_random_source_makes_encryption_fail() {
    let mut k = Keyring::with_random(Arc::new(BrokenRandom));
    k.add_key(1, &material(1)).unwrap();
    k.promote(1).unwrap();
    assert_eq!(k.seal(b"x", &ctx()).err(), Some(CryptoError::RandomFailure));
    assert!(KeyMaterial::generate(&BrokenRandom).is_err());
}

#[test]
fn debug_output_shows_nothing_secret() {
    let k = keyring();
    let sealed = k.seal(b"TOPSECRETSEED", &ctx()).unwrap();
    let plain = k.open(&sealed, &ctx()).unwrap();
    let blind = BlindIndexKey::new(&material(0x5a)).unwrap();
    let indexer = blind
        .indexer(
            "t",
            "users",
            "email",
            "by_email",
            Normalize::TrimLowercase,
            16,
        )
        .unwrap();
    let shown = format!(
        "{:?} {:?} {:?} {:?} {:?} {:?}",
        material(0x5a),
        k,
        plain,
        blind,
        indexer,
        ctx()
    );
    for secret in ["TOPSECRETSEED", "5a5a", "90", "0101"] {
        assert!(!shown.contains(secret), "{secret} leaked in {shown}");
    }
    for error in [CryptoError::DecryptionFailed, CryptoError::RandomFailure] {
        assert!(!error.to_string().contains("SEED"));
    }
}

#[test]
fn blind_index_separates_tenants_and_normalises() {
    let root = BlindIndexKey::new(&material(7)).unwrap();
    let a = root
        .indexer(
            "tenant-a",
            "users",
            "email",
            "by_email",
            Normalize::TrimLowercase,
            16,
        )
        .unwrap();
    let b = root
        .indexer(
            "tenant-b",
            "users",
            "email",
            "by_email",
            Normalize::TrimLowercase,
            16,
        )
        .unwrap();
    let other_column = root
        .indexer(
            "tenant-a",
            "users",
            "backup_email",
            "by_email",
            Normalize::TrimLowercase,
            16,
        )
        .unwrap();
    let v = a.compute("alice@example.com");
    assert_eq!(v.len(), 16);
    assert_eq!(a.compute("  Alice@Example.COM "), v);
    assert_ne!(b.compute("alice@example.com"), v);
    assert_ne!(other_column.compute("alice@example.com"), v);
    assert_eq!(a.compute_opt(None), None);
    assert_ne!(a.compute_opt(Some("")), None);
    let exact = root
        .indexer("tenant-a", "users", "email", "exact", Normalize::Exact, 16)
        .unwrap();
    assert_ne!(exact.compute("Alice"), exact.compute("alice"));
    assert!(
        root.indexer("t", "u", "c", "i", Normalize::Exact, 4)
            .is_err()
    );
    assert!(
        root.indexer("t", "u", "c", "i", Normalize::Exact, 33)
            .is_err()
    );
}

#[test]
fn rotating_the_encryption_key_does_not_change_the_blind_index() {
    let blind = BlindIndexKey::new(&material(7)).unwrap();
    let before = blind
        .indexer(
            "t",
            "users",
            "email",
            "by_email",
            Normalize::TrimLowercase,
            16,
        )
        .unwrap()
        .compute("a@b.c");
    let mut k = keyring();
    k.add_key(2, &material(2)).unwrap();
    k.promote(2).unwrap();
    let after = blind
        .indexer(
            "t",
            "users",
            "email",
            "by_email",
            Normalize::TrimLowercase,
            16,
        )
        .unwrap()
        .compute("a@b.c");
    assert_eq!(before, after);
}

#[test]
fn nonces_are_fresh_for_every_encryption() {
    let k = keyring();
    let a = k.seal(b"same", &ctx()).unwrap();
    let b = k.seal(b"same", &ctx()).unwrap();
    assert_ne!(a[6..30], b[6..30]);
    assert_ne!(a, b);
}

proptest! {
    #[test]
    fn round_trips(value in proptest::collection::vec(any::<u8>(), 0..512), row in any::<u64>()) {
        let k = keyring();
        let c = Context::new([3u8; 16], "t", "c", row.to_be_bytes());
        let sealed = k.seal(&value, &c).unwrap();
        let opened = k.open(&sealed, &c).unwrap();
        prop_assert_eq!(opened.as_bytes(), &value[..]);
    }

    #[test]
    fn any_single_byte_change_fails(value in proptest::collection::vec(any::<u8>(), 0..64), at in any::<prop::sample::Index>(), delta in 1u8..=255) {
        let k = keyring();
        let mut sealed = k.seal(&value, &ctx()).unwrap();
        let i = at.index(sealed.len());
        sealed[i] = sealed[i].wrapping_add(delta);
        prop_assert_eq!(k.open(&sealed, &ctx()).err(), Some(CryptoError::DecryptionFailed));
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let k = keyring();
        prop_assert!(k.open(&bytes, &ctx()).is_err());
    }
}

#[test]
fn os_random_works() {
    let mut buf = [0u8; 32];
    OsRandom.fill(&mut buf).unwrap();
    assert_ne!(buf, [0u8; 32]);
}

fn email_indexer(normalize: Normalize) -> field_crypto::BlindIndexer {
    BlindIndexKey::new(&material(7))
        .unwrap()
        .indexer("tenant-a", "users", "email", "by_email", normalize, 16)
        .unwrap()
}

/// The attack: an account registered as `\u{212A}im@example.com` (Kelvin sign) is stored as
/// typed while its index is that of `kim@example.com`, so a lookup for Kim returns a row whose
/// stored value is a different string. Under `TrimLowercase` the canonical form folds these
/// signs the same way for the index and for the value the application stores.
#[test]
fn kelvin_ohm_and_angstrom_signs_fold_consistently_with_the_stored_value() {
    let indexer = email_indexer(Normalize::TrimLowercase);
    for (typed, plain) in [
        ("\u{212A}im@example.com", "kim@example.com"),
        ("\u{2126}mega", "\u{3c9}mega"),
        ("\u{03A9}mega", "\u{3c9}mega"),
        ("\u{212B}sa", "\u{e5}sa"),
        ("A\u{030A}sa", "\u{e5}sa"),
        ("\u{FF41}lice@example.com", "alice@example.com"),
        ("\u{FB01}nance", "finance"),
        ("  \u{3000}Bob@Example.COM\u{3000}", "bob@example.com"),
    ] {
        let stored = indexer.canonical(typed).into_owned();
        assert_eq!(stored, plain, "{typed:?}");
        // The stored canonical value, the typed value and the plain spelling share one index,
        // and the stored value is already canonical (so re-indexing it changes nothing).
        assert_eq!(indexer.compute(typed), indexer.compute(plain));
        assert_eq!(indexer.compute(&stored), indexer.compute(typed));
        assert_eq!(indexer.canonical(&stored), stored);
        assert_eq!(
            indexer.compute(typed),
            indexer.compute_bytes(stored.as_bytes())
        );
    }
}

#[test]
fn values_distinct_after_the_canonical_form_never_share_an_index() {
    let indexer = email_indexer(Normalize::TrimLowercase);
    for (a, b) in [
        ("k", "\u{3ba}"),                         // Latin k, Greek kappa
        ("a@example.com", "\u{430}@example.com"), // Latin a, Cyrillic a
        ("stra\u{df}e", "strasse"),               // lowercase, not case folding
        ("ann@example.com", "ann\u{200b}@example.com"),
        ("a b", "ab"),
    ] {
        assert_ne!(indexer.canonical(a), indexer.canonical(b), "{a:?} {b:?}");
        assert_ne!(indexer.compute(a), indexer.compute(b), "{a:?} {b:?}");
    }
    // Exact folds nothing: the Kelvin sign and K are different values with different indexes,
    // as they are stored.
    let exact = email_indexer(Normalize::Exact);
    assert_eq!(exact.canonical("\u{212A}"), "\u{212A}");
    assert_ne!(exact.compute("\u{212A}"), exact.compute("K"));
}

#[test]
fn legitimate_values_are_already_canonical() {
    let indexer = email_indexer(Normalize::TrimLowercase);
    for value in [
        "alice@example.com",
        "jos\u{e9}@example.fr",
        "\u{3c9}mega",
        "",
    ] {
        assert!(
            matches!(
                Normalize::TrimLowercase.canonical(value),
                std::borrow::Cow::Borrowed(_)
            ) || Normalize::TrimLowercase.canonical(value) == value
        );
        assert_eq!(indexer.canonical(value), value);
        assert_eq!(
            indexer.compute(value),
            indexer.compute_bytes(value.as_bytes())
        );
    }
}

proptest! {
    #[test]
    fn the_canonical_form_is_idempotent_and_is_what_is_indexed(value in "\\PC{0,24}") {
        let indexer = email_indexer(Normalize::TrimLowercase);
        let once = indexer.canonical(&value).into_owned();
        prop_assert_eq!(indexer.canonical(&once), once.as_str());
        prop_assert_eq!(indexer.compute(&value), indexer.compute_bytes(once.as_bytes()));
    }
}
