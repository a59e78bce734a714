//! Append throughput against plain INSERTs of the same shape, sequencing lag and sequencer
//! throughput, and verify throughput.
//!
//! `cargo bench -p audit-log --bench append` (`AUDIT_BENCH=verify` runs only verify,
//! `AUDIT_BENCH=sequencer` only the sequencer's throughput; `AUDIT_CELL=100x8` only the cell of
//! 100 tenants and 8 writers).
//!
//! For 1, 8 and 32 concurrent writers over 1 and 100 tenants, rounds rotate between three
//! sides, each writing the same number of events:
//! - a plain autocommit `INSERT` (one round trip, a prepared statement) of a pre-built row into
//!   a table with the same columns and indexes but no chain, trigger or row-level security;
//! - the same row into a table rls-guard made tenant-safe (row-level security and the
//!   commit-time binding check), bound in the statement as `record` binds: what every tenant
//!   table costs, the floor any audit chain starts from;
//! - `AuditLog::record` (scrub, canonicalise, queue in a tenant-bound transaction, one round
//!   trip), with a `Sequencer` running beside it the whole time (its work on the same two
//!   cores), and the sequencing lag of the round's events (queued to chained, p50/p99).
//!
//! The figures are medians over the rounds, and the ratios are medians of the per-round ratios
//! (the machine is shared and noisy). Sequencer throughput: 50,000 queued events (over 1 and
//! 100 tenants) chained by `Sequencer::drain` in batches of 5,000, nothing else running.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    missing_docs
)]

use std::time::Instant;

use audit_log::scrub::{PseudonymKey, ScrubPolicy, Scrubber};
use audit_log::{
    Action, AuditActor, AuditEvent, AuditLog, Outcome, Sequencer, Target, TrustedKeys,
};
use rls_guard::TenantPool;
use rls_guard::schema::SUPPORT_SQL;
use sqlx::PgPool;
use tenant_scope::{Actor, ActorId, ActorKind, TenantContext, TenantId};
use testkit::{Role, Template, fresh_database};

const ROUNDS: usize = 5;
const EVENTS_PER_ROUND: u64 = 1_600;
const VERIFY_EVENTS: u64 = 50_000;
const SEQUENCER_EVENTS: u64 = 50_000;

fn template() -> Template {
    let sql = format!(
        "{SUPPORT_SQL}
        {}
        CREATE TABLE bound_events (
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
        CREATE INDEX ON bound_events (tenant_id, occurred_at);
        GRANT USAGE ON SEQUENCE bound_events_seq_seq TO testkit_runtime;
        -- The plain baseline: the same columns and indexes, its tenant column named so that
        -- rls-guard's start-up check does not take it for an unprotected tenant table.
        CREATE TABLE plain_events (LIKE bound_events INCLUDING ALL);
        ALTER TABLE plain_events RENAME COLUMN tenant_id TO tenant;
        GRANT SELECT, INSERT ON plain_events TO testkit_runtime;
        {}
        GRANT SELECT, INSERT ON bound_events TO testkit_runtime;",
        audit_log::schema::schema_sql("testkit_runtime").unwrap(),
        rls_guard::schema::tenant_table_sql("bound_events").unwrap(),
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

/// A plain autocommit insert of a pre-built row: no chain, trigger or row-level security.
const PLAIN_INSERT: &str = "INSERT INTO plain_events (tenant, occurred_at, actor_kind, \
     actor_id, action, outcome, request_id, event, prev_hash, hash) \
     VALUES ($1, now(), 'user', $2, 'note.updated', 'allowed', $3, $4, $5, $5)";

/// The same row into a table rls-guard made tenant-safe (row-level security, the commit-time
/// binding check), bound the way `AuditLog::record` binds: the floor any audit chain starts
/// from, since every tenant table pays it.
const BOUND_INSERT: &str = "WITH binding AS MATERIALIZED (\
       SELECT pg_catalog.set_config('app.tenant_id', $1, true) AS tenant, \
              pg_catalog.set_config('app.actor_id', '', true) AS actor, \
              pg_catalog.set_config('app.commit_binding', $1 || ':', true) AS commit_binding) \
     INSERT INTO bound_events (tenant_id, occurred_at, actor_kind, actor_id, action, \
     outcome, request_id, event, prev_hash, hash) \
     SELECT binding.tenant::uuid, now(), 'user', $2, 'note.updated', 'allowed', $3, $4, $5, $5 \
       FROM binding";

/// Runs `sql` (one of the two above) for a pre-built `row`, `tenant` bound as `$1`.
async fn insert_row<T>(pool: &PgPool, sql: &'static str, tenant: T, row: &(Vec<u8>, i64))
where
    T: for<'q> sqlx::Encode<'q, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send,
{
    let mut prev = [0u8; 32];
    getrandom::fill(&mut prev).unwrap();
    sqlx::query(sql)
        .bind(tenant)
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
        Scrubber::new(
            ScrubPolicy::new(),
            vec![PseudonymKey::new(1, Box::new([9; 32]))],
        )
        .unwrap(),
    );
    let sequencer = {
        let options = db
            .create_login_role("seq", "NOSUPERUSER NOBYPASSRLS NOCREATEROLE NOINHERIT")
            .await;
        db.as_admin(&audit_log::schema::sequencer_sql(options.get_username()).unwrap())
            .await;
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect_with(options)
            .await
            .unwrap();
        Sequencer::new(pool)
    };
    let admin = db.pool(Role::Admin, 1).await;
    // A typical canonical record, for the plain rows.
    let sample = {
        let t = TenantId::new_random();
        let a = Actor::new(ActorKind::User, ActorId::new_random(), t);
        log.record(event(t, &a, 0)).await.unwrap();
        sequencer.drain().await.unwrap();
        let stored = audit_log::AuditQuery::new(t).fetch(&raw).await.unwrap();
        stored[0].record.clone()
    };

    let only = std::env::var("AUDIT_BENCH").ok();
    let cell = std::env::var("AUDIT_CELL").is_ok();
    if only.is_none() {
        let running = sequencer.clone().spawn();
        append_table(&log, &raw, &admin, &sample).await;
        running.stop().await.unwrap();
    }
    if !cell && only.as_deref().is_none_or(|o| o == "sequencer") {
        sequencer_throughput(&log, &sequencer).await;
    }
    if !cell && only.as_deref().is_none_or(|o| o == "verify") {
        verify_throughput(&log, &raw, &sequencer).await;
    }
}

/// Queues `SEQUENCER_EVENTS` events over `tenants` tenants with no sequencer running, then
/// times one sequencer draining them.
async fn sequencer_throughput(log: &AuditLog, sequencer: &Sequencer) {
    println!(
        "\nsequencer: {SEQUENCER_EVENTS} queued events, chained by one sequencer in batches of 5,000"
    );
    println!("| tenants | events/s (median of {ROUNDS}) | min | max |");
    println!("|---:|---:|---:|---:|");
    for tenants in [1usize, 100] {
        let ids: Vec<TenantId> = (0..tenants).map(|_| TenantId::new_random()).collect();
        let actors: Vec<Actor> = ids
            .iter()
            .map(|&t| Actor::new(ActorKind::User, ActorId::new_random(), t))
            .collect();
        let mut rates = Vec::new();
        for _ in 0..ROUNDS {
            // Queued in tenant-bound transactions of 1,000 (fast to fill; the same rows).
            let mut written = 0u64;
            while written < SEQUENCER_EVENTS {
                let k = (written as usize / 1_000) % ids.len();
                let ctx = TenantContext::for_job(ids[k], None, "bench").unwrap();
                let mut tx = log.pool().begin(&ctx).await.unwrap();
                for _ in 0..1_000 {
                    log.append(&mut tx, event(ids[k], &actors[k], written))
                        .await
                        .unwrap();
                    written += 1;
                }
                tx.commit().await.unwrap();
            }
            let start = Instant::now();
            let taken = sequencer.drain().await.unwrap();
            let elapsed = start.elapsed();
            assert_eq!(taken, SEQUENCER_EVENTS);
            rates.push(SEQUENCER_EVENTS as f64 / elapsed.as_secs_f64());
        }
        let (min, max) = (
            rates.iter().copied().fold(f64::INFINITY, f64::min),
            rates.iter().copied().fold(0.0, f64::max),
        );
        println!(
            "| {tenants} | **{:.0}** | {min:.0} | {max:.0} |",
            median(rates)
        );
    }
}

/// Sequencing lag (queued to chained) of the events chained since `since`: p50 and p99, in ms.
async fn lag(admin: &PgPool, since: time::OffsetDateTime) -> (f64, f64) {
    sqlx::query_as(
        "SELECT coalesce(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms), 0), \
                coalesce(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms), 0) \
         FROM (SELECT extract(epoch FROM sequenced_at - queued_at) * 1000 AS ms \
               FROM audit.events WHERE queued_at >= $1) s",
    )
    .bind(since)
    .fetch_one(admin)
    .await
    .unwrap()
}

/// Which side of the table a round runs.
#[derive(Clone, Copy)]
enum Side {
    Plain,
    Bound,
    Audit,
}

async fn run_side(
    side: Side,
    writers: u64,
    log: &AuditLog,
    raw: &PgPool,
    ids: &[TenantId],
    actors: &[Actor],
    sample: &[u8],
) -> f64 {
    let (log, raw) = (log.clone(), raw.clone());
    let (ids, actors, sample) = (ids.to_vec(), actors.to_vec(), sample.to_vec());
    drive(writers, EVENTS_PER_ROUND, move |w, i| {
        let (log, raw) = (log.clone(), raw.clone());
        let (ids, actors, sample) = (ids.clone(), actors.clone(), sample.clone());
        async move {
            let k = ((w * 7919 + i) as usize) % ids.len();
            match side {
                Side::Plain => {
                    insert_row(&raw, PLAIN_INSERT, *ids[k].as_uuid(), &(sample, i as i64)).await;
                }
                Side::Bound => {
                    insert_row(&raw, BOUND_INSERT, ids[k].to_string(), &(sample, i as i64)).await;
                }
                Side::Audit => {
                    log.record(event(ids[k], &actors[k], i)).await.unwrap();
                }
            }
        }
    })
    .await
}

async fn append_table(log: &AuditLog, raw: &PgPool, admin: &PgPool, sample: &[u8]) {
    println!(
        "append throughput (events/s), median of {ROUNDS} interleaved rounds of {EVENTS_PER_ROUND} events; \
         a sequencer runs throughout"
    );
    println!(
        "| writers | tenants | plain INSERT | tenant-safe INSERT, no chain | audit-log record \
         | ratio no chain / plain | ratio audit / plain | **ratio audit / no chain** \
         | lag p50 (ms) | lag p99 (ms) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    // `AUDIT_CELL=100x8` runs one cell (tenants x writers).
    let only: Option<(usize, u64)> = std::env::var("AUDIT_CELL").ok().map(|v| {
        let (t, w) = v.split_once('x').expect("AUDIT_CELL=<tenants>x<writers>");
        (t.parse().unwrap(), w.parse().unwrap())
    });
    for &tenants in &[1usize, 100] {
        for &writers in &[1u64, 8, 32] {
            if only.is_some_and(|o| o != (tenants, writers)) {
                continue;
            }
            let ids: Vec<TenantId> = (0..tenants).map(|_| TenantId::new_random()).collect();
            let actors: Vec<Actor> = ids
                .iter()
                .map(|&t| Actor::new(ActorKind::User, ActorId::new_random(), t))
                .collect();
            let mut rates: [Vec<f64>; 3] = Default::default();
            let (mut bound_ratios, mut audit_ratios, mut floor_ratios) =
                (Vec::new(), Vec::new(), Vec::new());
            let (mut p50s, mut p99s) = (Vec::new(), Vec::new());
            let sides = [Side::Plain, Side::Bound, Side::Audit];
            for round in 0..ROUNDS {
                let mut rate = [0.0; 3];
                // Rotate which side goes first, so none always runs on a warmer or cooler server.
                for k in 0..3 {
                    let i = (round + k) % 3;
                    let since = time::OffsetDateTime::now_utc();
                    rate[i] = run_side(sides[i], writers, log, raw, &ids, &actors, sample).await;
                    if matches!(sides[i], Side::Audit) {
                        // Let the sequencer finish the round's tail before measuring its lag.
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                        let (p50, p99) = lag(admin, since).await;
                        p50s.push(p50);
                        p99s.push(p99);
                    }
                }
                for (all, r) in rates.iter_mut().zip(rate) {
                    all.push(r);
                }
                bound_ratios.push(rate[1] / rate[0]);
                audit_ratios.push(rate[2] / rate[0]);
                floor_ratios.push(rate[2] / rate[1]);
            }
            let [plain, bound, audited] = rates;
            println!(
                "| {writers} | {tenants} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} | **{:.2}** | {:.1} | {:.1} |",
                median(plain),
                median(bound),
                median(audited),
                median(bound_ratios),
                median(audit_ratios),
                median(floor_ratios),
                median(p50s),
                median(p99s)
            );
        }
    }
}

/// Verify throughput over one long chain, beside a plain read of the same rows.
async fn verify_throughput(log: &AuditLog, raw: &PgPool, sequencer: &Sequencer) {
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
    sequencer.drain().await.unwrap();
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
        // Read in key order, as `verify` does (a chain this fresh has no statistics yet).
        sqlx::raw_sql(&format!(
            "SET LOCAL app.tenant_id = '{t}'; SET LOCAL enable_sort = off"
        ))
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
