//! Field-level encryption: seal a value bound to its tenant, table, column and row; watch a
//! moved ciphertext fail to open; rotate keys; look a value up through a blind index.
//!
//! ```sh
//! cargo run -p field-crypto --example seal_open
//! ```
#![allow(clippy::print_stdout)]

use field_crypto::{
    BlindIndexKey, Context, CryptoError, KeyMaterial, Keyring, Normalize, OsRandom, key_id_of,
};

fn main() -> Result<(), CryptoError> {
    let mut keyring = Keyring::new();
    keyring.add_key(1, &KeyMaterial::generate(&OsRandom)?)?;
    keyring.promote(1)?;

    let (acme, globex) = ([1u8; 16], [2u8; 16]); // tenant ids, e.g. UUID bytes
    let ada = Context::new(acme, "users", "totp_seed", 42u64.to_be_bytes());
    let stored = keyring.seal(b"JBSWY3DPEHPK3PXP", &ada)?;
    println!(
        "sealed 16 bytes into {} (key {})",
        stored.len(),
        key_id_of(&stored)?
    );
    let opened = keyring.open(&stored, &ada)?;
    println!(
        "opened in its own row      -> {}",
        String::from_utf8_lossy(opened.as_bytes())
    );

    // The same bytes copied anywhere else do not open, and the error says nothing more.
    let moves = [
        (
            "another row",
            Context::new(acme, "users", "totp_seed", 43u64.to_be_bytes()),
        ),
        (
            "another column",
            Context::new(acme, "users", "recovery_codes", 42u64.to_be_bytes()),
        ),
        (
            "another tenant",
            Context::new(globex, "users", "totp_seed", 42u64.to_be_bytes()),
        ),
    ];
    for (place, context) in &moves {
        let refused = keyring.open(&stored, context).err().map(|e| e.to_string());
        println!("moved to {place:<17} -> {refused:?}");
    }
    let mut flipped = stored.clone();
    flipped[40] ^= 1;
    println!(
        "one bit flipped            -> {:?}",
        keyring.open(&flipped, &ada).err().map(|e| e.to_string())
    );

    // Rotation: a new key encrypts, the old one still decrypts until every row is resealed.
    keyring.add_key(2, &KeyMaterial::generate(&OsRandom)?)?;
    keyring.promote(2)?;
    println!(
        "needs reseal after rotation -> {}",
        keyring.needs_reseal(&stored)?
    );
    let resealed = keyring.reseal(&stored, &ada)?.unwrap_or(stored);
    println!(
        "resealed under key {}, opens: {}",
        key_id_of(&resealed)?,
        keyring.open(&resealed, &ada).is_ok()
    );

    // A blind index: equality lookups on an encrypted column, different per tenant.
    let index_key = BlindIndexKey::new(&KeyMaterial::generate(&OsRandom)?)?;
    let email_index = |tenant: [u8; 16]| {
        index_key.indexer(
            tenant,
            "users",
            "email",
            "email_idx",
            Normalize::TrimLowercase,
            16,
        )
    };
    let (in_acme, in_globex) = (email_index(acme)?, email_index(globex)?);
    let a = in_acme.compute("Ada@Example.com ");
    let b = in_acme.compute("ada@example.com");
    println!("same address, same tenant  -> same index: {}", a == b);
    println!(
        "same address, other tenant -> same index: {}",
        a == in_globex.compute("ada@example.com")
    );
    Ok(())
}
