//! Session validation through the layer vs. a bare primary-key SELECT, interleaved with two
//! variants that split the cost (`SessionStore::validate` without the layer, and its lookup
//! statement alone); and the TOTP code computation. The requests are built before each timed
//! block: building an HTTP request is not part of validating its cookie.
//!
//! `cargo bench -p magic-auth --bench session`
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout
)]

use magic_auth::secrecy::{ExposeSecret, SecretSlice};
use std::time::{Duration, Instant};

use http::{Request, Response};
use magic_auth::{Assurance, NewSession, SessionConfig, SessionManagerLayer, SessionStore};
use rls_guard::TenantPool;
use rls_guard::schema::SUPPORT_SQL;
use tenant_scope::{ActorId, ActorKind, TenantId};
use testkit::{Role, Template};
use tower::{Service, ServiceExt};

const ROUNDS: usize = 40;
const BLOCK: usize = 300;

type BareRow = (
    uuid::Uuid,
    String,
    Vec<u8>,
    i16,
    time::OffsetDateTime,
    time::OffsetDateTime,
    time::OffsetDateTime,
    time::OffsetDateTime,
    time::OffsetDateTime,
    Option<time::OffsetDateTime>,
);

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let smoke = !std::env::args().any(|a| a == "--bench");
    let (rounds, block) = if smoke { (2, 5) } else { (ROUNDS, BLOCK) };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let sql = format!(
            "{SUPPORT_SQL}\n{}\n\
             CREATE TABLE plain_sessions (tenant_id uuid, id uuid, user_id uuid, actor_kind text, \
               secret_hash bytea, aal smallint, created_at timestamptz, authenticated_at timestamptz, \
               last_seen_at timestamptz, idle_expires_at timestamptz, absolute_expires_at timestamptz, \
               revoked_at timestamptz, PRIMARY KEY (tenant_id, id));\n\
             GRANT SELECT ON plain_sessions TO testkit_runtime;",
            magic_auth::schema::schema_sql("testkit_runtime").unwrap()
        );
        let db = testkit::fresh_database(&Template::new("magic_auth_bench", sql)).await;
        let raw = db.pool(Role::Runtime, 1).await;
        // No touch during the run: `touch_after` an hour (it must stay below `idle`).
        let config = { let mut c = SessionConfig::default(); c.idle = Duration::from_secs(2 * 3600); c.touch_after = Duration::from_secs(3600); c };
        let store = SessionStore::new(TenantPool::new(raw.clone()).await.unwrap(), config, Box::new([7; 32])).unwrap();
        let tenant = TenantId::new_random();
        let new = NewSession::new(ActorId::new_random(), ActorKind::User, Assurance::Aal2);
        let (session, token) = store.create(tenant, &new).await.unwrap();
        db.as_admin(
            "INSERT INTO plain_sessions SELECT tenant_id, id, user_id, actor_kind, secret_hash, aal, \
             created_at, authenticated_at, last_seen_at, idle_expires_at, absolute_expires_at, \
             revoked_at FROM auth.sessions",
        )
        .await;
        let cookie = format!("__Host-session={}", token.to_cookie_value().expose_secret());
        let mut service = tower::ServiceBuilder::new()
            .layer(SessionManagerLayer::new(store.clone()))
            .service(tower::service_fn(|req: Request<String>| async move {
                let ok = req.extensions().get::<tenant_scope::Actor>().is_some();
                Ok::<_, std::convert::Infallible>(Response::new(if ok { "ok" } else { "no" }.to_owned()))
            }));
        let bare = || {
            let raw = raw.clone();
            async move {
                // The same columns the session lookup reads and checks.
                let row: BareRow = sqlx::query_as(
                    "SELECT user_id, actor_kind, secret_hash, aal, created_at, authenticated_at, \
                            last_seen_at, idle_expires_at, absolute_expires_at, revoked_at \
                       FROM plain_sessions WHERE tenant_id = $1 AND id = $2",
                )
                .bind(tenant.as_uuid())
                .bind(session.id)
                .fetch_one(&raw)
                .await
                .unwrap();
                row
            }
        };
        let value = token.to_cookie_value().expose_secret().to_owned();
        // The store's lookup statement, exactly as it prepared it on this (only) connection:
        // the statement itself is not public.
        assert!(store.validate(value.as_str()).await.unwrap().is_some());
        let (lookup,): (String,) = sqlx::query_as(
            "SELECT statement FROM pg_prepared_statements \
              WHERE statement LIKE 'WITH bound AS MATERIALIZED%' \
                AND statement LIKE '%FROM auth.sessions s%'",
        )
        .fetch_one(&raw)
        .await
        .unwrap();
        let mut times: [Vec<f64>; 4] = Default::default();
        for round in 0..rounds {
            for k in 0..4 {
                let variant = (round + k) % 4;
                let mut requests: Vec<Request<String>> = (0..block)
                    .map(|_| Request::builder().header("cookie", &cookie).body(String::new()).unwrap())
                    .collect();
                let start = Instant::now();
                for _ in 0..block {
                    if variant == 0 {
                        drop(bare().await);
                    } else if variant == 2 {
                        assert!(store.validate(value.as_str()).await.unwrap().is_some());
                    } else if variant == 3 {
                        let row: BareRow = sqlx::query_as(&lookup)
                            .bind(tenant.to_string())
                            .bind(session.id)
                            .fetch_one(&raw)
                            .await
                            .unwrap();
                        drop(row);
                    } else {
                        let req = requests.pop().unwrap();
                        let svc = service.ready().await.unwrap();
                        let r = svc.call(req).await.unwrap();
                        assert_eq!(r.body(), "ok");
                    }
                }
                times[variant].push(start.elapsed().as_secs_f64() * 1e6 / block as f64);
                drop(requests);
            }
        }
        let ratios: Vec<f64> = times[1].iter().zip(&times[0]).map(|(a, b)| a / b).collect();
        println!("rounds={rounds} block={block} (Unix socket, one connection)");
        println!("bare primary-key SELECT           median {:6.1} us", median(times[0].clone()));
        println!("session validation (layer)        median {:6.1} us", median(times[1].clone()));
        println!("ratio layer / bare                median {:.3}", median(ratios));
        let split: Vec<f64> = times[3].iter().zip(&times[0]).map(|(a, b)| a / b).collect();
        println!("SessionStore::validate, no layer  median {:6.1} us", median(times[2].clone()));
        println!("its lookup statement alone        median {:6.1} us", median(times[3].clone()));
        println!("ratio statement alone / bare      median {:.3}", median(split));

        // TOTP: computing and comparing one code (what a verification costs besides its
        // database round trip).
        let seed: SecretSlice<u8> = vec![7u8; 20].into();
        let now = 1_795_845_615u64;
        let n = if smoke { 100 } else { 100_000 };
        let start = Instant::now();
        for i in 0..n {
            std::hint::black_box(magic_auth::totp::code_at(&seed, now + i).unwrap());
        }
        println!(
            "TOTP code computation             mean   {:6.2} us",
            start.elapsed().as_secs_f64() * 1e6 / n as f64
        );
    });
}
