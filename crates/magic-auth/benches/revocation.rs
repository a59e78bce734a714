//! Revocation across instances: a session revoked on instance A, then requests on instance B,
//! whose session layer answers reads from its cache (`SessionStore::with_cache`) and whose pool
//! asks the database about the session in every data statement (`session_liveness`).
//!
//! - **layer**: the time from A's revocation committing until B's `validate_cached` (what
//!   `SessionManagerLayer` asks for a `GET`) refuses the session, p50/p99 over the trials, next to
//!   one `validate` (a database lookup) on B measured in the same run;
//! - **data**: whether B's first data statement after the revocation commits is refused.
//!
//! `cargo bench -p magic-auth --bench revocation` (1,000 trials of each; without `--bench`, a
//! smoke run of 20).
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::panic
)]

use magic_auth::secrecy::ExposeSecret;
use std::time::{Duration, Instant};

use magic_auth::{
    Assurance, NewSession, SessionCacheConfig, SessionConfig, SessionStore, session_liveness,
};
use rls_guard::schema::SUPPORT_SQL;
use rls_guard::{RlsError, TenantPool};
use tenant_scope::{ActorId, ActorKind, TenantContext, TenantId};
use testkit::{Role, Template};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let last = sorted.len() - 1;
    // p in [0, 1]; the index is rounded to the nearest sample.
    let index = (p * last as f64).round() as usize;
    sorted[index.min(last)]
}

fn main() {
    let smoke = !std::env::args().any(|a| a == "--bench");
    let trials = if smoke { 20 } else { 1_000 };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let sql = format!(
            "{SUPPORT_SQL}\n{}",
            magic_auth::schema::schema_sql("testkit_runtime").unwrap()
        );
        let db = testkit::fresh_database(&Template::new("magic_auth_revocation", sql)).await;
        let pool = async || {
            TenantPool::new(db.pool(Role::Runtime, 2).await)
                .await
                .unwrap()
                .with_session_liveness(session_liveness())
                .await
                .unwrap()
        };
        let a = SessionStore::new(pool().await, SessionConfig::default(), Box::new([7; 32])).unwrap();
        let b_pool = pool().await;
        let b = SessionStore::new(b_pool.clone(), SessionConfig::default(), Box::new([7; 32]))
            .unwrap()
            .with_cache(SessionCacheConfig::default())
            .unwrap();
        while b.cache_listening() != Some(true) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let tenant = TenantId::new_random();
        let new = || NewSession::new(ActorId::new_random(), ActorKind::User, Assurance::Aal2);

        let mut lags = Vec::with_capacity(trials);
        let mut lookups = Vec::with_capacity(trials);
        let mut polls = 0_u64;
        for _ in 0..trials {
            let (session, token) = a.create(tenant, &new()).await.unwrap();
            let cookie = token.to_cookie_value();
            let cookie = cookie.expose_secret();
            let started = Instant::now();
            assert!(b.validate(cookie).await.unwrap().is_some());
            lookups.push(started.elapsed());
            assert!(b.validate_cached(cookie).await.unwrap().is_some());
            a.revoke(tenant, session.id).await.unwrap();
            let committed = Instant::now();
            while b.validate_cached(cookie).await.unwrap().is_some() {
                polls += 1;
                assert!(committed.elapsed() < Duration::from_secs(10), "B never refused");
                tokio::task::yield_now().await;
            }
            lags.push(committed.elapsed());
        }

        let mut refused_first = 0;
        for _ in 0..trials {
            let (session, token) = a.create(tenant, &new()).await.unwrap();
            let on_b = b
                .validate_cached(token.to_cookie_value().expose_secret())
                .await
                .unwrap()
                .unwrap();
            let context = TenantContext::for_actor(on_b.actor());
            a.revoke(tenant, session.id).await.unwrap();
            match b_pool
                .read(&context, "SELECT id FROM auth.sessions LIMIT 1")
                .fetch_optional::<(uuid::Uuid,)>()
                .await
            {
                Err(RlsError::SessionEnded) => refused_first += 1,
                other => panic!("B's first data statement after the revocation: {other:?}"),
            }
        }

        lags.sort();
        lookups.sort();
        let p50 = percentile(&lags, 0.5);
        let p99 = percentile(&lags, 0.99);
        let lookup = percentile(&lookups, 0.5);
        println!("revocation on A, requests on B ({trials} trials each)");
        println!(
            "  layer (B's validate_cached) refuses after: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms \
             ({polls} polls answered from the cache in all, in a tight loop)",
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3,
            lags[lags.len() - 1].as_secs_f64() * 1e3,
        );
        println!(
            "  one database lookup on B (validate), p50: {:.3} ms; layer p50 lag / lookup p50 = {:.2}",
            lookup.as_secs_f64() * 1e3,
            p50.as_secs_f64() / lookup.as_secs_f64()
        );
        println!("  data: B's first statement after the commit refused in {refused_first}/{trials}");
    });
}
