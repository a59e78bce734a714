//! Sessions and TOTP against a throwaway PostgreSQL (`testkit`: local PostgreSQL binaries, or
//! `DATABASE_URL`): a session created at sign-in and validated from its cookie, a second factor
//! enrolled and checked, the session rotated to `aal2` (the old cookie stops working), and a
//! revocation that takes effect at once.
//!
//! ```sh
//! cargo run -p magic-auth --example sessions
//! ```
#![allow(clippy::print_stdout)]

use std::sync::Arc;

use field_crypto::{KeyMaterial, Keyring, OsRandom};
use magic_auth::secrecy::{ExposeSecret, SecretSlice};
use magic_auth::totp::{CodeCheck, TotpConfig, TotpService, code_at};
use magic_auth::{Assurance, NewSession, SessionConfig, SessionStore};
use rls_guard::TenantPool;
use tenant_scope::{ActorId, ActorKind, TenantId};
use testkit::{Role, Template, fresh_database};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let schema = format!(
        "{}\n{}",
        rls_guard::schema::SUPPORT_SQL,
        magic_auth::schema::schema_sql("testkit_runtime")?
    );
    let db = fresh_database(&Template::new("magic_auth_example", schema)).await;
    let pool = TenantPool::new(db.pool(Role::Runtime, 4).await).await?;
    let sessions = SessionStore::new(pool.clone(), SessionConfig::default(), Box::new([7; 32]))?;

    // Sign-in (after a confirmed magic link): a new session, its token only in the cookie.
    let (tenant, user) = (TenantId::new_random(), ActorId::new_random());
    let signed_in = NewSession::new(user, ActorKind::User, Assurance::Aal1);
    let (session, token) = sessions.create(tenant, &signed_in).await?;
    let cookie = token.to_cookie_value();
    let seen = sessions.validate(cookie.clone()).await?;
    println!(
        "cookie validates          -> {:?}",
        seen.map(|s| s.assurance)
    );
    let mut forged = cookie.expose_secret().to_owned();
    forged.pop();
    forged.push('A');
    println!(
        "a forged cookie           -> {:?}",
        sessions.validate(forged).await?.map(|s| s.id)
    );

    // The second factor: enrol, then confirm with a code from the authenticator.
    let mut keyring = Keyring::new();
    keyring.add_key(1, &KeyMaterial::generate(&OsRandom)?)?;
    keyring.promote(1)?;
    let totp = TotpService::new(pool, Arc::new(keyring), TotpConfig::new("Example"))?;
    let enrolment = totp.enroll(tenant, user, "ada@example.com").await?;
    let seed: SecretSlice<u8> =
        totp_rs::Secret::try_from_base32(enrolment.secret_base32.expose_secret())?
            .as_bytes()
            .to_vec()
            .into();
    let now = 1_900_000_020; // Unix seconds: the example's clock
    let wrong = totp.confirm(tenant, user, "000000", now).await?;
    println!("a wrong code              -> {wrong:?}");
    let right = totp
        .confirm(tenant, user, code_at(&seed, now)?.expose_secret(), now)
        .await?;
    println!("the authenticator's code  -> {right:?}");

    // A factor check upgrades the session by replacing it: the old cookie is worthless now.
    if matches!(right, CodeCheck::Accepted { .. }) {
        let (upgraded, new_token) = sessions.rotate(&session, Assurance::Aal2).await?;
        let old = sessions.validate(cookie).await?;
        let new = sessions.validate(new_token.to_cookie_value()).await?;
        println!(
            "after rotation: old cookie -> {:?}, new cookie -> {:?}",
            old.map(|s| s.assurance),
            new.map(|s| s.assurance)
        );

        // Revocation is immediate: the next request with the cookie is anonymous.
        sessions.revoke(tenant, upgraded.id).await?;
        let after = sessions
            .validate(new_token.to_cookie_value().expose_secret())
            .await?;
        println!("after revocation          -> {:?}", after.map(|s| s.id));
    }
    Ok(())
}
