//! Envelope encryption: wrapped data keys, per-tenant keys, shredding.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use field_crypto::{
    Context, CryptoError, KeyMaterial, KeyProvider, LocalKeyProvider, new_tenant_key,
    tenant_key_label, tenant_keyring,
};

fn provider(byte: u8) -> LocalKeyProvider {
    LocalKeyProvider::new(1, &KeyMaterial::from_bytes(Box::new([byte; 32]))).unwrap()
}

#[tokio::test]
async fn wrapped_keys_unwrap_only_with_the_right_kek_and_label() {
    let kek = provider(1);
    let dek = KeyMaterial::from_bytes(Box::new([9; 32]));
    let wrapped = kek.wrap(&dek, b"tenant-a/1").await.unwrap();
    assert!(
        !wrapped.as_bytes().windows(4).any(|w| w == [9, 9, 9, 9]),
        "data key stored in clear"
    );
    assert!(kek.unwrap(&wrapped, b"tenant-a/1").await.is_ok());
    assert_eq!(
        kek.unwrap(&wrapped, b"tenant-b/1").await.err(),
        Some(CryptoError::DecryptionFailed)
    );
    assert_eq!(
        provider(2).unwrap(&wrapped, b"tenant-a/1").await.err(),
        Some(CryptoError::DecryptionFailed)
    );
}

#[tokio::test]
async fn one_tenant_can_be_shredded_without_touching_another() {
    let kek = provider(1);
    let (a, b) = (b"tenant-a".as_slice(), b"tenant-b".as_slice());
    let wrapped_a = new_tenant_key(&kek, a, 1).await.unwrap();
    let wrapped_b = new_tenant_key(&kek, b, 1).await.unwrap();
    let ring_a = tenant_keyring(&kek, a, &[(1, wrapped_a.clone())], Some(1))
        .await
        .unwrap();
    let ring_b = tenant_keyring(&kek, b, &[(1, wrapped_b.clone())], Some(1))
        .await
        .unwrap();
    let ctx_a = Context::new(a, "users", "totp_seed", 1u64.to_be_bytes());
    let ctx_b = Context::new(b, "users", "totp_seed", 1u64.to_be_bytes());
    let sealed_a = ring_a.seal(b"a-seed", &ctx_a).unwrap();
    let sealed_b = ring_b.seal(b"b-seed", &ctx_b).unwrap();
    // Tenant keys are distinct: B's keyring cannot open A's value even in A's context.
    assert!(ring_b.open(&sealed_a, &ctx_a).is_err());
    // A wrapped key does not unwrap as another tenant's.
    assert!(
        tenant_keyring(&kek, b, &[(1, wrapped_a)], Some(1))
            .await
            .is_err()
    );

    // Shred A: delete its wrapped key. A's data no longer opens; B's does.
    let shredded = tenant_keyring(&kek, a, &[], None).await.unwrap();
    assert_eq!(
        shredded.open(&sealed_a, &ctx_a).err(),
        Some(CryptoError::DecryptionFailed)
    );
    let ring_b = tenant_keyring(&kek, b, &[(1, wrapped_b)], Some(1))
        .await
        .unwrap();
    assert_eq!(
        ring_b.open(&sealed_b, &ctx_b).unwrap().as_bytes(),
        b"b-seed"
    );
}

#[test]
fn kek_from_file_and_env_fail_closed() {
    let dir = std::env::temp_dir().join(format!("field-crypto-kek-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("kek");
    std::fs::write(&good, format!("{}\n", "ab".repeat(32))).unwrap();
    assert!(LocalKeyProvider::from_file(1, &good).is_ok());
    let bad = dir.join("bad");
    std::fs::write(&bad, "not a key").unwrap();
    assert_eq!(
        LocalKeyProvider::from_file(1, &bad).err(),
        Some(CryptoError::InvalidKeyMaterial)
    );
    assert_eq!(
        LocalKeyProvider::from_file(1, &dir.join("missing")).err(),
        Some(CryptoError::InvalidKeyMaterial)
    );
    assert_eq!(
        LocalKeyProvider::from_env(1, "FIELD_CRYPTO_TEST_KEK_THAT_IS_NOT_SET").err(),
        Some(CryptoError::InvalidKeyMaterial)
    );
    std::fs::remove_dir_all(dir).unwrap();
    assert_ne!(tenant_key_label(b"ab", 1), tenant_key_label(b"a", 1));
}
