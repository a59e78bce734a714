//! Feeds arbitrary bytes to the ciphertext decoder: it must never panic, and never open
//! anything it did not seal.
#![no_main]

use field_crypto::{Context, KeyMaterial, Keyring, Sealed, key_id_of};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut keyring = Keyring::new();
    keyring.add_key(1, &KeyMaterial::from_bytes(Box::new([1; 32]))).unwrap();
    keyring.add_key(2, &KeyMaterial::from_bytes(Box::new([2; 32]))).unwrap();
    keyring.promote(2).unwrap();
    let context = Context::new([9u8; 16], "users", "totp_seed", 1u64.to_be_bytes());
    let _ = key_id_of(data);
    let _ = Sealed::from_stored(data.to_vec());
    let _ = keyring.needs_reseal(data);
    let _ = keyring.open_migrating(data, &context);
    assert!(keyring.open(data, &context).is_err(), "opened bytes it never sealed");
});
