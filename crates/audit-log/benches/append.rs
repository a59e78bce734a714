//! Append throughput against plain INSERTs of the same shape, and verify throughput.
//!
//! `cargo bench -p audit-log --bench append`
//!
//! For 1, 8 and 32 concurrent writers over 1 and 100 tenants, rounds alternate between
//! `AuditLog::record` (scrub, canonicalise, chain under the tenant's head lock, all in a
//! tenant-bound transaction, one round trip) and a plain autocommit `INSERT` (one round trip,
//! a prepared statement) of a pre-built row into a table with the same columns and indexes but
//! no chain, trigger or row-level security. Each round
//! writes the same number of events; the figures are medians over the rounds, and the ratio is
//! the median of the per-round ratios (the machine is shared and noisy).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    missing_docs
)]

use std::time::Instant;

use audit_log::scrub::{PseudonymKey, ScrubPolicy, Scrubber};
use audit_log::{Action, AuditActor, AuditEvent, AuditLog, Outcome, Target, TrustedKeys};
use rls_guard::TenantPool;
use rls_guard::schema::SUPPORT_SQL;
use sqlx::PgPool;
use tenant_scope::{Actor, ActorId, ActorKind, TenantContext, TenantId};
use testkit::{Role, Template, fresh_database};

const ROUNDS: usize = 5;
const EVENTS_PER_ROUND: u64 = 1_600;
const VERIFY_EVENTS: u64 = 50_000;

fn template() -> Template {
    let sql = format!(
        "{SUPPORT_SQL}
        {}
        CREATE TABLE plain_events (
            tenant_id   uuid        NOT NULL,
            seq         bigserial   NOT NULL,
            occurred_at timestamptz NOT NULL,
            actor_kind  text        NOT NULL,
            actor_id    uuid,
            action      text        NOT NULL,
            outcome     text        NOT NULL,
            request_id  text,
            event       bytea       NOT NULL,
            prev_hash   bytea       NOT NULL,
            hash        bytea       NOT NULL,
            PRIMARY KEY (tenant_id, seq),
            UNIQUE (tenant_id, prev_hash)
        );
        CREATE INDEX ON plain_events (tenant_id, occurred_at);
        GRANT SELECT, INSERT ON plain_events TO testkit_runtime;
        GRANT USAGE ON SEQUENCE plain_events_seq_seq TO testkit_runtime;",
        audit_log::schema::schema_sql("testkit_runtime").unwrap(),
    );
    Template::new("audit_log_bench", sql)
}

fn event(tenant: TenantId, actor: &Actor, i: u64) -> AuditEvent {
    AuditEvent::new(
        tenant,
        AuditActor::from_actor(actor),
        Action::new("note.updated").unwrap(),
        Outcome::Allowed,
    )
    .with_target(Target::new("note", &format!("n-{i}")))
    .unwrap()
    .with_request_id(&format!("req-{i}"))
    .with_user_agent("Mozilla/5.0 (X11; Linux x86_64) bench")
    .with_metadata(serde_json::json!({ "rows": i, "field": "title", "reason": "edit" }))
    .unwrap()
}

/// Runs `writers` tasks that together perform `total` operations; returns events per second.
async fn drive<F, Fut>(writers: u64, total: u64, op: F) -> f64
where
    F: Fn(u64, u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let per = total / writers;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per {
                op(w, i).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (per * writers) as f64 / start.elapsed().as_secs_f64()
}

type ReadRow = (
    i64,
    time::OffsetDateTime,
    String,
    Option<uuid::Uuid>,
    String,
    String,
    Option<String>,
    Vec<u8>,
    Vec<u8>,
    Vec<u8>,
);

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn plain_insert(pool: &PgPool, tenant: TenantId, row: &(Vec<u8>, i64)) {
    let mut prev = [0u8; 32];
    getrandom::fill(&mut prev).unwrap();
    sqlx::query(
        "INSERT INTO plain_events (tenant_id, occurred_at, actor_kind, actor_id, action, \
         outcome, request_id, event, prev_hash, hash) \
         VALUES ($1, now(), 'user', $2, 'note.updated', 'allowed', $3, $4, $5, $5)",
    )
    .bind(tenant.as_uuid())
    .bind(uuid::Uuid::new_v4())
    .bind(format!("req-{}", row.1))
    .bind(&row.0)
    .bind(prev.as_slice())
    .execute(pool)
    .await
    .unwrap();
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

async fn run() {
    let db = fresh_database(&template()).await;
    let raw = db.pool(Role::Runtime, 40).await;
    let log = AuditLog::new(
        TenantPool::new(raw.clone()).await.unwrap(),
        Scrubber::new(ScrubPolicy::new(), vec![PseudonymKey::new(1, [9; 32])]).unwrap(),
    );
    // A typical canonical record, for the plain rows.
    let sample = {
        let t = TenantId::new_random();
        let a = Actor::new(ActorKind::User, ActorId::new_random(), t);
        log.record(event(t, &a, 0)).await.unwrap();
        let stored = audit_log::AuditQuery::new(t).fetch(&raw).await.unwrap();
        stored[0].record.clone()
    };

    let only_verify = std::env::var("AUDIT_BENCH").as_deref() == Ok("verify");
    if !only_verify {
        append_table(&log, &raw, &sample).await;
    }
    verify_throughput(&log, &raw).await;
}

async fn append_table(log: &AuditLog, raw: &PgPool, sample: &[u8]) {
    let sample = sample.to_vec();
    println!(
        "append throughput (events/s), median of {ROUNDS} interleaved rounds of {EVENTS_PER_ROUND} events"
    );
    println!("| writers | tenants | plain INSERT | audit-log append | ratio (median of rounds) |");
    println!("|---:|---:|---:|---:|---:|");
    for &tenants in &[1usize, 100] {
        for &writers in &[1u64, 8, 32] {
            let ids: Vec<TenantId> = (0..tenants).map(|_| TenantId::new_random()).collect();
            let actors: Vec<Actor> = ids
                .iter()
                .map(|&t| Actor::new(ActorKind::User, ActorId::new_random(), t))
                .collect();
            let (mut plain, mut audited, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
            for round in 0..ROUNDS {
                let run_plain = {
                    let (pool, ids, sample) = (raw.clone(), ids.clone(), sample.clone());
                    move || {
                        let (pool, ids, sample) = (pool.clone(), ids.clone(), sample.clone());
                        drive(writers, EVENTS_PER_ROUND, move |w, i| {
                            let (pool, ids, sample) = (pool.clone(), ids.clone(), sample.clone());
                            async move {
                                let t = ids[((w * 7919 + i) as usize) % ids.len()];
                                plain_insert(&pool, t, &(sample, i as i64)).await;
                            }
                        })
                    }
                };
                let run_audit = {
                    let (log, ids, actors) = (log.clone(), ids.clone(), actors.clone());
                    move || {
                        let (log, ids, actors) = (log.clone(), ids.clone(), actors.clone());
                        drive(writers, EVENTS_PER_ROUND, move |w, i| {
                            let (log, ids, actors) = (log.clone(), ids.clone(), actors.clone());
                            async move {
                                let k = ((w * 7919 + i) as usize) % ids.len();
                                log.record(event(ids[k], &actors[k], i)).await.unwrap();
                            }
                        })
                    }
                };
                let (p, a) = if round % 2 == 0 {
                    let p = run_plain().await;
                    (p, run_audit().await)
                } else {
                    let a = run_audit().await;
                    (run_plain().await, a)
                };
                plain.push(p);
                audited.push(a);
                ratios.push(a / p);
            }
            println!(
                "| {writers} | {tenants} | {:.0} | {:.0} | **{:.2}** |",
                median(plain),
                median(audited),
                median(ratios)
            );
        }
    }
}

/// Verify throughput over one long chain, beside a plain read of the same rows.
async fn verify_throughput(log: &AuditLog, raw: &PgPool) {
    let t = TenantId::new_random();
    let a = Actor::new(ActorKind::User, ActorId::new_random(), t);
    let ctx = TenantContext::for_job(t, None, "bench").unwrap();
    let mut written = 0;
    while written < VERIFY_EVENTS {
        let mut tx = log.pool().begin(&ctx).await.unwrap();
        for _ in 0..1_000 {
            log.append(&mut tx, event(t, &a, written)).await.unwrap();
            written += 1;
        }
        tx.commit().await.unwrap();
    }
    let keys = TrustedKeys::new();
    let (mut rates, mut reads) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let start = Instant::now();
        let report = audit_log::verify(raw, t, &keys, &[]).await.unwrap();
        let elapsed = start.elapsed();
        assert!(report.is_intact());
        assert_eq!(report.events, VERIFY_EVENTS);
        rates.push(VERIFY_EVENTS as f64 / elapsed.as_secs_f64());
        // The floor: stream the same columns without checking anything.
        let start = Instant::now();
        let mut tx = raw.begin().await.unwrap();
        sqlx::raw_sql(&format!("SET LOCAL app.tenant_id = '{t}'"))
            .execute(&mut *tx)
            .await
            .unwrap();
        let mut rows = sqlx::query_as::<_, ReadRow>(
            "SELECT seq, occurred_at, actor_kind, actor_id, action, outcome, request_id, event, \
             prev_hash, hash FROM audit.events WHERE tenant_id = $1 ORDER BY seq",
        )
        .bind(t.as_uuid())
        .fetch(&mut *tx);
        let mut n = 0u64;
        while let Some(row) = futures::TryStreamExt::try_next(&mut rows).await.unwrap() {
            std::hint::black_box(row);
            n += 1;
        }
        drop(rows);
        tx.rollback().await.unwrap();
        assert_eq!(n, VERIFY_EVENTS);
        reads.push(VERIFY_EVENTS as f64 / start.elapsed().as_secs_f64());
    }
    println!(
        "\nverify: {VERIFY_EVENTS} events, median of {ROUNDS}: {:.0} events/s \
         (reading the same rows unchecked: {:.0} rows/s)",
        median(rates),
        median(reads)
    );
}
