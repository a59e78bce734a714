//! The queue and the sequencer against the runtime role (what SQL injection or a compromised app
//! server can run) and against a compromised sequencer role. Every refusal has its positive
//! control, and every test checks that nothing was written.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use audit_log::Sequencer;
use common::*;
use tenant_scope::{TenantContext, TenantId};
use testkit::Role;

/// Runs `sql` (bound to `t`, with the RAW_INSERT parameters filled with a valid record) in a
/// transaction of the runtime role bound to `t`; the SQLSTATE of its refusal, or `None`.
async fn as_runtime(f: &Fixture, t: TenantId, sql: &str) -> Option<String> {
    let ctx = TenantContext::for_job(t, None, "attack").unwrap();
    let mut tx = f.log.pool().begin(&ctx).await.unwrap();
    let at = now_micros();
    let result = sqlx::query(sql)
        .bind(t.as_uuid())
        .bind(at)
        .bind("user")
        .bind(None::<uuid::Uuid>)
        .bind("a.b")
        .bind(None::<&str>)
        .bind(fill(BASE.as_bytes(), t, at))
        .execute(&mut *tx)
        .await;
    match result {
        Ok(_) => {
            tx.commit().await.unwrap();
            None
        }
        Err(e) => {
            tx.rollback().await.unwrap();
            Some(
                e.as_database_error()
                    .and_then(|d| d.code())
                    .map(|c| c.into_owned())
                    .unwrap_or_default(),
            )
        }
    }
}

const INSERT_INTO_EVENTS: &str = "INSERT INTO audit.events
    (tenant_id, occurred_at, actor_kind, actor_id, action, outcome, request_id, event)
    VALUES ($1, $2, $3, $4, $5, 'allowed', $6, $7)";

#[tokio::test]
async fn the_runtime_role_cannot_insert_into_the_chain_directly() {
    let f = fixture(2).await;
    let admin = f.db.pool(Role::Admin, 1).await;
    let t = TenantId::new_random();
    // Without the chain columns, and with forged ones.
    let forged = "INSERT INTO audit.events
        (tenant_id, occurred_at, actor_kind, actor_id, action, outcome, request_id, event, seq,
         prev_hash, hash)
        VALUES ($1, $2, $3, $4, $5, 'allowed', $6, $7, 1, sha256(''), sha256(''))";
    for sql in [INSERT_INTO_EVENTS, forged] {
        assert_eq!(
            as_runtime(&f, t, sql).await.as_deref(),
            Some(PRIVILEGE),
            "{sql}"
        );
    }
    assert_eq!(chained_count(&admin, t).await, 0);
    assert_eq!(queued_count(&admin, t).await, 0);
    // Positive control: the same record, queued, is chained and verifies.
    assert_eq!(as_runtime(&f, t, RAW_INSERT).await, None);
    assert_eq!(sequence_all(&f).await, 1);
    assert_eq!(chained_count(&admin, t).await, 1);
    let report = verify(&f, t).await;
    assert!(report.is_intact(), "{:?}", report.result);
    assert_eq!((report.last_seq, report.pending), (1, 0));
}

#[tokio::test]
async fn the_runtime_role_cannot_update_delete_or_truncate_the_queue() {
    let f = fixture(2).await;
    let admin = f.db.pool(Role::Admin, 1).await;
    let t = TenantId::new_random();
    assert_eq!(as_runtime(&f, t, RAW_INSERT).await, None);
    for sql in [
        "UPDATE audit.pending SET action = 'x.y' WHERE tenant_id = $1",
        "UPDATE audit.pending SET failed_at = now() WHERE tenant_id = $1",
        "DELETE FROM audit.pending WHERE tenant_id = $1",
        "TRUNCATE audit.pending",
    ] {
        // The extra parameters are ignored by PostgreSQL only when referenced; bind just $1.
        let ctx = TenantContext::for_job(t, None, "attack").unwrap();
        let mut tx = f.log.pool().begin(&ctx).await.unwrap();
        let query = sqlx::query(sql);
        let query = if sql.contains("$1") {
            query.bind(t.as_uuid())
        } else {
            query
        };
        let err = query.execute(&mut *tx).await.unwrap_err();
        assert!(is_sqlstate(&err, PRIVILEGE), "{sql}: {err}");
        tx.rollback().await.unwrap();
    }
    // Positive control: the runtime role reads its own tenant's queued row (and no other's).
    let ctx = TenantContext::for_job(t, None, "attack").unwrap();
    let mut tx = f.log.pool().begin(&ctx).await.unwrap();
    let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM audit.pending")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(seen, 1);
    tx.rollback().await.unwrap();
    let other = TenantContext::for_job(TenantId::new_random(), None, "attack").unwrap();
    let mut tx = f.log.pool().begin(&other).await.unwrap();
    let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM audit.pending")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(seen, 0);
    tx.rollback().await.unwrap();
    // The owner is refused too (outside the sequencer), under replica mode as well.
    let owner = f.db.pool(Role::Owner, 1).await;
    for setup in ["", "SET LOCAL session_replication_role = replica"] {
        let mut tx = if setup.is_empty() {
            owner.begin().await.unwrap()
        } else {
            let mut tx = admin.begin().await.unwrap();
            sqlx::raw_sql(setup).execute(&mut *tx).await.unwrap();
            tx
        };
        let err = sqlx::query("DELETE FROM audit.pending")
            .execute(&mut *tx)
            .await
            .unwrap_err();
        assert!(is_sqlstate(&err, "AL001"), "{setup}: {err}");
        tx.rollback().await.unwrap();
    }
    assert_eq!(queued_count(&admin, t).await, 1);
    assert_eq!(sequence_all(&f).await, 1);
    assert_eq!(
        (
            queued_count(&admin, t).await,
            chained_count(&admin, t).await
        ),
        (0, 1)
    );
}

#[tokio::test]
async fn only_the_sequencer_role_can_call_the_sequencer() {
    let f = fixture(2).await;
    let admin = f.db.pool(Role::Admin, 1).await;
    let t = TenantId::new_random();
    assert_eq!(as_runtime(&f, t, RAW_INSERT).await, None);
    for (role, pool) in [
        ("runtime", f.raw.clone()),
        ("checkpointer", f.checkpointer.pool().clone()),
    ] {
        // Nor the steps it is made of (which run as the owner only inside it).
        for sql in [
            "SELECT audit.sequence(10)::text",
            "SELECT count(*)::text FROM audit.sequence_pick(10)",
            "SELECT audit.sequence_tenant(gen_random_uuid(), '{1}', false)::text",
        ] {
            let err = sqlx::query_scalar::<_, Option<String>>(sql)
                .fetch_one(&pool)
                .await
                .unwrap_err();
            assert!(is_sqlstate(&err, PRIVILEGE), "{role}: {sql}: {err}");
        }
    }
    assert_eq!(chained_count(&admin, t).await, 0);
    // Positive control.
    assert_eq!(f.sequencer.sequence_batch().await.unwrap(), 1);
    assert_eq!(chained_count(&admin, t).await, 1);
}

#[tokio::test]
async fn a_queued_row_for_another_tenant_cannot_be_planted() {
    let f = fixture(2).await;
    let admin = f.db.pool(Role::Admin, 1).await;
    let (t, victim) = (TenantId::new_random(), TenantId::new_random());
    // Bound to `t`, a row (with a record that matches it) for `victim`.
    let ctx = TenantContext::for_job(t, None, "attack").unwrap();
    let mut tx = f.log.pool().begin(&ctx).await.unwrap();
    let at = now_micros();
    let err = sqlx::query(RAW_INSERT)
        .bind(victim.as_uuid())
        .bind(at)
        .bind("user")
        .bind(None::<uuid::Uuid>)
        .bind("a.b")
        .bind(None::<&str>)
        .bind(fill(BASE.as_bytes(), victim, at))
        .execute(&mut *tx)
        .await
        .unwrap_err();
    assert!(is_sqlstate(&err, PRIVILEGE), "{err}");
    tx.rollback().await.unwrap();
    // Rebinding inside the transaction is caught at commit.
    let mut tx = f.log.pool().begin(&ctx).await.unwrap();
    sqlx::raw_sql(&format!(
        "SELECT set_config('app.tenant_id', '{victim}', true)"
    ))
    .execute(&mut *tx)
    .await
    .unwrap();
    let inserted = sqlx::query(RAW_INSERT)
        .bind(victim.as_uuid())
        .bind(at)
        .bind("user")
        .bind(None::<uuid::Uuid>)
        .bind("a.b")
        .bind(None::<&str>)
        .bind(fill(BASE.as_bytes(), victim, at))
        .execute(&mut *tx)
        .await;
    assert!(inserted.is_err() || tx.commit().await.is_err());
    assert_eq!(queued_count(&admin, victim).await, 0);
    sequence_all(&f).await;
    assert_eq!(chained_count(&admin, victim).await, 0);
    // Positive control: bound to the victim, the row is queued.
    assert_eq!(as_runtime(&f, victim, RAW_INSERT).await, None);
    assert_eq!(queued_count(&admin, victim).await, 1);
}

/// The sequencer cannot be wedged: every row the runtime role can queue has passed the record's
/// checks, and even a tenant whose batch fails (here: the owner planted an event at the position
/// the next one needs, which the primary key refuses) is set aside alone — the other tenants'
/// events, queued after it and beyond the batch size, are chained, and the failed tenant's
/// events stay queued (reported by `verify`), not lost.
#[tokio::test]
async fn a_tenant_whose_batch_fails_holds_up_no_other_tenant() {
    let f = fixture(2).await;
    let admin = f.db.pool(Role::Admin, 1).await;
    let (broken, fine) = (TenantId::new_random(), TenantId::new_random());
    append_n(&f, broken, 1).await;
    // The owner (triggers off) puts a row at position 2.
    plant_second_row(&f.db, broken).await;
    for i in 0..6 {
        f.log.record(event(broken, i)).await.unwrap();
    }
    for i in 0..3 {
        f.log.record(event(fine, i)).await.unwrap();
    }
    let small = f.sequencer.clone().with_batch_size(2);
    // Three batches of the broken tenant's rows are set aside, then the fine tenant's chained.
    let mut taken = 0;
    for _ in 0..10 {
        taken += small.sequence_batch().await.unwrap();
    }
    assert_eq!(taken, 9);
    assert_eq!(
        (
            chained_count(&admin, fine).await,
            queued_count(&admin, fine).await
        ),
        (3, 0)
    );
    assert!(verify(&f, fine).await.is_intact());
    assert_eq!(
        (
            chained_count(&admin, broken).await,
            queued_count(&admin, broken).await
        ),
        (2, 6)
    );
    let report = verify(&f, broken).await;
    assert_eq!(report.pending, 6);
    assert!(report.oldest_pending.is_some());
}

/// Installs an owner's row trigger `name` (`ENABLE ALWAYS`) on `table`, `timing` (`BEFORE
/// DELETE`, say), that skips the rows of one tenant, queues 3 events of that tenant and of
/// another, and runs three batches. That tenant's batch must fail and be set aside, nothing
/// of it chained or lost, while the other tenant's events are chained (the positive control);
/// with the trigger gone (and the pause after the failure skipped), every event is chained
/// exactly once and both chains verify.
async fn one_tenant_held_back_by_an_owner_trigger(name: &str, timing: &str, table: &str) {
    let f = fixture(2).await;
    let admin = f.db.pool(Role::Admin, 1).await;
    let (held, fine) = (TenantId::new_random(), TenantId::new_random());
    // The row a BEFORE row trigger sees: OLD for a delete, NEW for an insert.
    let row = if timing.ends_with("DELETE") {
        "OLD"
    } else {
        "NEW"
    };
    f.db.as_admin(&format!(
        "CREATE FUNCTION audit.{name}() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF {row}.tenant_id = '{held}' THEN RETURN NULL; END IF;
             RETURN {row};
         END $$;
         CREATE TRIGGER {name} {timing} ON {table}
             FOR EACH ROW EXECUTE FUNCTION audit.{name}();
         ALTER TABLE {table} ENABLE ALWAYS TRIGGER {name};",
        held = held.as_uuid()
    ))
    .await;
    for i in 0..3 {
        f.log.record(event(held, i)).await.unwrap();
        f.log.record(event(fine, i)).await.unwrap();
    }
    for _ in 0..3 {
        f.sequencer.sequence_batch().await.unwrap();
    }
    for (t, expected) in [(held, (0, 3)), (fine, (3, 0))] {
        let counts = (
            chained_count(&admin, t).await,
            queued_count(&admin, t).await,
        );
        assert_eq!(counts, expected, "{name}");
    }
    assert!(verify(&f, fine).await.is_intact());
    let report = verify(&f, held).await;
    assert_eq!((report.last_seq, report.pending), (0, 3));
    f.db.as_admin(&format!(
        "DROP TRIGGER {name} ON {table};
         BEGIN;
         SET LOCAL audit.sequencing = 'on';
         UPDATE audit.pending SET failed_at = NULL;
         COMMIT;"
    ))
    .await;
    sequence_all(&f).await;
    let report = verify(&f, held).await;
    assert!(report.is_intact(), "{:?}", report.result);
    assert_eq!((report.last_seq, report.pending), (3, 0));
    assert_eq!(chained_count(&admin, held).await, 3);
}

/// The owner (what a compromised migration could install) keeps one tenant's queued events from
/// leaving the queue: a trigger skips their delete. Were they chained anyway, the next batch
/// would chain them a second time; instead that tenant's batch fails and is set aside.
#[tokio::test]
async fn a_queued_event_kept_in_the_queue_is_never_chained_twice() {
    one_tenant_held_back_by_an_owner_trigger("keep_queued", "BEFORE DELETE", "audit.pending").await;
}

/// An owner's trigger drops one tenant's events on their way into the chain (a `BEFORE INSERT`
/// returning nothing): were the batch committed, they would have left the queue and be lost,
/// the chain still verifying. That tenant's batch fails instead and its events stay queued.
#[tokio::test]
async fn an_event_dropped_on_its_way_into_the_chain_stays_queued() {
    one_tenant_held_back_by_an_owner_trigger("drop_chained", "BEFORE INSERT", "audit.events").await;
}

/// A role that may call the sequencer and also read a tenant table (the checkpointer given the
/// sequencer's grants, as the docs allow, or a deployment's mistake) is not left bound to the
/// last tenant sequenced: in signed mode that binding carries the owner's proof, which would
/// let the role read and write that tenant's rows for the rest of its transaction.
#[tokio::test]
async fn the_sequencer_leaves_no_binding_in_its_callers_transaction() {
    let f = fixture(2).await;
    let admin = f.db.pool(Role::Admin, 1).await;
    let t = TenantId::new_random();
    f.log.record(event(t, 1)).await.unwrap();
    let ctx = TenantContext::for_job(t, None, "note").unwrap();
    let mut tx = f.log.pool().begin(&ctx).await.unwrap();
    sqlx::query("INSERT INTO notes (tenant_id, body) VALUES ($1, 'secret')")
        .bind(t.as_uuid())
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let owner = f.db.pool(Role::Owner, 1).await;
    sqlx::raw_sql(rls_guard::schema::ENABLE_SIGNED_BINDINGS_SQL)
        .execute(&owner)
        .await
        .unwrap();
    let pool = sequencer_pool(&f.db).await;
    let role: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(&pool)
        .await
        .unwrap();
    f.db.as_admin(&format!("GRANT SELECT ON notes TO {role}"))
        .await;
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SELECT set_config('app.tenant_id', 'caller', true)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let taken: i32 = sqlx::query_scalar("SELECT audit.sequence(100)")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    // The positive control: the call chained the tenant's event, so it bound the tenant inside.
    assert_eq!(taken, 1);
    // Left bound with the proof, this would read the tenant's note.
    sqlx::query("SAVEPOINT read")
        .execute(&mut *tx)
        .await
        .unwrap();
    let read = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM notes")
        .fetch_one(&mut *tx)
        .await;
    assert!(!matches!(read, Ok(n) if n > 0), "{read:?}");
    sqlx::query("ROLLBACK TO SAVEPOINT read")
        .execute(&mut *tx)
        .await
        .unwrap();
    let settings: (String, String, String, String) = sqlx::query_as(
        "SELECT coalesce(current_setting('app.tenant_id', true), ''),
                coalesce(current_setting('app.actor_id', true), ''),
                coalesce(current_setting('app.binding_proof', true), ''),
                coalesce(current_setting('audit.sequencing', true), '')",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    assert_eq!(
        settings,
        ("caller".into(), String::new(), String::new(), String::new())
    );
    tx.commit().await.unwrap();
    assert_eq!(chained_count(&admin, t).await, 1);
    // The row is there for a binding with the proof (the owner's own).
    let mut tx = owner.begin().await.unwrap();
    sqlx::query("SELECT app.bind_trusted($1, '')")
        .bind(t.as_uuid().to_string())
        .execute(&mut *tx)
        .await
        .unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM notes")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(n, 1);
}

#[tokio::test]
async fn the_sequencer_role_can_read_and_write_nothing_but_advance_the_chains() {
    let f = fixture(2).await;
    let admin = f.db.pool(Role::Admin, 1).await;
    let t = TenantId::new_random();
    append_n(&f, t, 2).await;
    f.log.record(event(t, 3)).await.unwrap();
    let pool = sequencer_pool(&f.db).await;
    for sql in [
        "SELECT count(*) FROM audit.events",
        "SELECT count(*) FROM audit.pending",
        "SELECT count(*) FROM audit.anchors",
        "SELECT count(*) FROM audit.checkpoints",
        "SELECT count(*) FROM audit.acknowledgements",
        "SELECT count(*) FROM notes",
        "SELECT count(*) FROM app.binding_writes",
        "DELETE FROM audit.pending",
        "UPDATE audit.pending SET failed_at = now()",
        "DELETE FROM audit.events",
        "INSERT INTO audit.checkpoints (tenant_id, seq, hash, signed_at, key_id, signature) \
         VALUES (gen_random_uuid(), 1, sha256(''), now(), 'k', sha512(''))",
        "INSERT INTO audit.anchors VALUES (gen_random_uuid(), 1, sha256(''))",
        "SELECT app.bind_trusted(gen_random_uuid()::text, '')",
        "SELECT * FROM audit.sequence_pick(10)",
        "SELECT audit.sequence_tenant(gen_random_uuid(), '{1}', false)",
        "SELECT audit.restore_settings('{app.tenant_id}', '{x}')",
    ] {
        let err = sqlx::query(sql).execute(&pool).await.unwrap_err();
        assert!(
            is_sqlstate(&err, PRIVILEGE) || is_sqlstate(&err, "3F000"),
            "{sql}: {err}"
        );
    }
    // Out-of-range batch sizes are refused, not clamped by the database.
    let too_many = i32::try_from(audit_log::sequencer::MAX_BATCH).unwrap() + 1;
    for bad in [0, -1, too_many, 100_000] {
        let err = sqlx::query_scalar::<_, i32>("SELECT audit.sequence($1)")
            .bind(bad)
            .fetch_one(&pool)
            .await
            .unwrap_err();
        assert!(is_sqlstate(&err, "AL005"), "{bad}: {err}");
    }
    assert_eq!(chained_count(&admin, t).await, 2);
    // It passes the runtime-role start-up check (as the reference app's checkpointer, which
    // holds these grants too, must).
    rls_guard::TenantPool::new(pool.clone())
        .await
        .expect("the sequencer role passes TenantPool's start-up check");
    // Positive control: it advances the chain, exactly as the library computes it.
    assert_eq!(Sequencer::new(pool).drain().await.unwrap(), 1);
    let report = verify(&f, t).await;
    assert!(report.is_intact(), "{:?}", report.result);
    assert_eq!((report.last_seq, report.pending), (3, 0));
}

/// `rls-guard`'s coverage check, probing as the runtime role with rows queued and chained,
/// finds nothing once told what the audit schema installs on purpose; without being told, it
/// reports the queue's unforced row-level security and its triggers (the positive control).
#[tokio::test]
async fn the_coverage_check_accepts_the_queue_only_when_told() {
    let f = fixture(2).await;
    let t = TenantId::new_random();
    append_n(&f, t, 2).await;
    f.log.record(event(t, 3)).await.unwrap();
    let admin = f.db.pool(Role::Admin, 1).await;
    let mut checker = admin.acquire().await.unwrap();
    let check = rls_guard::CoverageCheck::new().runtime_role(testkit::RUNTIME_ROLE);
    let untold = check.clone().run(&mut checker).await.unwrap();
    assert!(
        untold
            .iter()
            .any(|f| f.kind == rls_guard::FindingKind::RlsNotForced && f.object == "audit.pending"),
        "{untold:#?}"
    );
    let findings = audit_log::schema::coverage_trust(check)
        .run(&mut checker)
        .await
        .unwrap();
    assert!(findings.is_empty(), "coverage findings: {findings:#?}");
}

/// A flood of well-formed events in one tenant (what the runtime role can queue for a tenant it
/// binds) does not hold back another tenant's event queued after it: every tenant with queued
/// events gets its share of each batch. The batch is still full while events wait (so the
/// drain goes on), and the flooding tenant's events are chained too, in their order.
#[tokio::test]
async fn a_flooding_tenant_does_not_hold_back_another_tenants_events() {
    let f = fixture(2).await;
    let admin = f.db.pool(Role::Admin, 1).await;
    let (flood, other) = (TenantId::new_random(), TenantId::new_random());
    let ctx = TenantContext::for_job(flood, None, "flood").unwrap();
    let mut tx = f.log.pool().begin(&ctx).await.unwrap();
    for n in 0..300 {
        f.log.append(&mut tx, event(flood, n)).await.unwrap();
    }
    tx.commit().await.unwrap();
    let ctx = TenantContext::for_job(other, None, "other").unwrap();
    let mut tx = f.log.pool().begin(&ctx).await.unwrap();
    f.log.append(&mut tx, event(other, 1)).await.unwrap();
    tx.commit().await.unwrap();

    let sequencer = Sequencer::new(sequencer_pool(&f.db).await).with_batch_size(50);
    assert_eq!(
        sequencer.sequence_batch().await.unwrap(),
        50,
        "a full batch"
    );
    assert_eq!(
        chained_count(&admin, other).await,
        1,
        "the other tenant's event"
    );
    assert_eq!(chained_count(&admin, flood).await, 49);
    // The rest drains, and both chains verify with every event in its place.
    assert_eq!(sequencer.drain().await.unwrap(), 251);
    assert_eq!(queued_count(&admin, flood).await, 0);
    for (t, events) in [(flood, 300), (other, 1)] {
        let report = verify(&f, t).await;
        assert!(report.is_intact(), "{report:?}");
        assert_eq!(report.events, events);
    }
}

/// Appends `n` events of `t` in one tenant-bound transaction.
async fn queue_n(f: &Fixture, t: TenantId, n: u64) {
    let ctx = TenantContext::for_job(t, None, "queue").unwrap();
    let mut tx = f.log.pool().begin(&ctx).await.unwrap();
    for i in 0..n {
        f.log.append(&mut tx, event(t, i)).await.unwrap();
    }
    tx.commit().await.unwrap();
}

/// Queued rows a plan read and threw away (`Rows Removed by Filter` over all its loops, in
/// the scans of `audit.pending`), summed over every node of an `EXPLAIN (ANALYZE, FORMAT
/// JSON)` plan.
fn rows_filtered_out(node: &serde_json::Value) -> f64 {
    let own = if node["Relation Name"] == "pending" {
        node["Rows Removed by Filter"].as_f64().unwrap_or(0.0)
            * node["Actual Loops"].as_f64().unwrap_or(1.0)
    } else {
        0.0
    };
    own + node["Plans"]
        .as_array()
        .map_or(0.0, |plans| plans.iter().map(rows_filtered_out).sum())
}

/// One tenant floods the queue while the statistics are gathered (they then say the queue
/// holds one tenant), and the flood is chained; then many tenants queue events. Each
/// tenant's share is still read through the primary key: the sequencer's pick reads no row it
/// throws away, where a pick that walked the queue's age index filtering by tenant read the
/// queue about once per tenant per batch (122,500 rows here for a queue of 5,000; batches of
/// a tenth of their normal speed in the benchmark). The pick is the function's own query, run
/// with `EXPLAIN ANALYZE` as the owner; the positive control is the batch it picks (every
/// tenant, its share each) and the chains it makes.
#[tokio::test]
async fn a_flood_seen_by_the_statistics_does_not_make_the_pick_read_the_queue_per_tenant() {
    let f = fixture(2).await;
    let admin = f.db.pool(Role::Admin, 1).await;
    f.db.as_admin("ALTER TABLE audit.pending SET (autovacuum_enabled = false)")
        .await;
    let flood = TenantId::new_random();
    for _ in 0..5 {
        queue_n(&f, flood, 1_000).await;
    }
    f.db.as_admin("ANALYZE audit.pending").await;
    assert_eq!(sequence_all(&f).await, 5_000);
    let tenants: Vec<TenantId> = (0..50).map(|_| TenantId::new_random()).collect();
    for &t in &tenants {
        queue_n(&f, t, 100).await;
    }
    let body: String = sqlx::query_scalar(
        "SELECT prosrc FROM pg_proc WHERE oid = 'audit.sequence_pick(integer)'::regprocedure",
    )
    .fetch_one(&admin)
    .await
    .unwrap();
    let query = body.trim().trim_end_matches(';').replace("max_rows", "$1");
    let mut conn = admin.acquire().await.unwrap();
    sqlx::raw_sql(&format!("PREPARE pick(integer) AS {query}"))
        .execute(&mut *conn)
        .await
        .unwrap();
    let plan: serde_json::Value =
        sqlx::query_scalar("EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE pick(5000)")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
    let root = &plan[0]["Plan"];
    assert_eq!(root["Actual Rows"].as_f64(), Some(50.0), "{plan}");
    assert_eq!(rows_filtered_out(root), 0.0, "{plan}");
    drop(conn);
    assert_eq!(sequence_all(&f).await, 5_000);
    for &t in &tenants[..3] {
        let report = verify(&f, t).await;
        assert!(report.is_intact(), "{report:?}");
        assert_eq!((report.events, report.pending), (100, 0));
    }
}

/// The sequencer's lock is the one row of `audit.sequencer_lock`, which no role but the owner
/// may read or lock. The runtime role (on a connection of its own, outside any pool, as a
/// compromised app server has) and the sequencer role are refused every way of locking it, and
/// every table lock that would stop the sequencer's writes. Holding what they can hold — the
/// advisory key the sequencer used before, the queue's and the chain's weakest table locks —
/// changes nothing: an event queued meanwhile is chained at once (the positive control). A
/// missing lock row stops sequencing with `AL006` instead of running it unserialised, and
/// re-running the schema puts it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_role_but_the_owner_can_hold_the_sequencer_up() {
    use sqlx::Connection;
    let f = fixture(2).await;
    let admin = f.db.pool(Role::Admin, 1).await;
    let runtime = sqlx::PgConnection::connect_with(&f.db.options(Role::Runtime))
        .await
        .unwrap();
    let sequencer = sequencer_pool(&f.db)
        .await
        .acquire()
        .await
        .unwrap()
        .detach();
    for (who, mut conn) in [("runtime", runtime), ("sequencer", sequencer)] {
        for sql in [
            "SELECT held FROM audit.sequencer_lock FOR UPDATE",
            "SELECT held FROM audit.sequencer_lock FOR KEY SHARE",
            "SELECT count(*) FROM audit.sequencer_lock",
            "LOCK TABLE audit.sequencer_lock IN ACCESS SHARE MODE",
            "LOCK TABLE audit.sequencer_lock IN ACCESS EXCLUSIVE MODE",
            "DELETE FROM audit.sequencer_lock",
            "INSERT INTO audit.sequencer_lock VALUES (true)",
            "TRUNCATE audit.sequencer_lock",
            // Locks that would stop the sequencer's delete from the queue or insert into the chain.
            "LOCK TABLE audit.pending IN ROW EXCLUSIVE MODE",
            "LOCK TABLE audit.pending IN SHARE MODE",
            "LOCK TABLE audit.events IN SHARE MODE",
            "SELECT id FROM audit.pending FOR KEY SHARE",
        ] {
            let mut tx = conn.begin().await.unwrap();
            let err = sqlx::query(sql).execute(&mut *tx).await.unwrap_err();
            tx.rollback().await.unwrap();
            assert!(
                is_sqlstate(&err, PRIVILEGE) || is_sqlstate(&err, "3F000"),
                "{who}: {sql}: {err}"
            );
        }
        if who == "runtime" {
            // What it can hold, held while an event is sequenced.
            sqlx::query("SELECT pg_advisory_lock(1096110929, 0)")
                .execute(&mut conn)
                .await
                .unwrap();
            let mut held = conn.begin().await.unwrap();
            for sql in [
                "LOCK TABLE audit.pending IN ACCESS SHARE MODE",
                "LOCK TABLE audit.events IN ACCESS SHARE MODE",
                "SELECT count(*) FROM audit.pending",
            ] {
                sqlx::query(sql).execute(&mut *held).await.unwrap();
            }
            let t = TenantId::new_random();
            f.log.record(event(t, 1)).await.unwrap();
            let taken = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                f.sequencer.sequence_batch(),
            )
            .await
            .expect("the runtime role held the sequencer up")
            .unwrap();
            assert_eq!(taken, 1);
            assert_eq!(chained_count(&admin, t).await, 1);
            held.rollback().await.unwrap();
        }
    }

    // Without its lock row the sequencer refuses to run; the event waits in the queue.
    let t = TenantId::new_random();
    f.db.as_admin("DELETE FROM audit.sequencer_lock").await;
    f.log.record(event(t, 1)).await.unwrap();
    match f.sequencer.sequence_batch().await {
        Err(audit_log::AuditError::Database(err)) => {
            assert!(is_sqlstate(&err, "AL006"), "{err}");
        }
        other => panic!("sequenced without its lock: {other:?}"),
    }
    assert_eq!(
        (
            chained_count(&admin, t).await,
            queued_count(&admin, t).await
        ),
        (0, 1)
    );
    f.db.as_admin(&audit_log::schema::schema_sql(testkit::RUNTIME_ROLE).unwrap())
        .await;
    assert_eq!(sequence_all(&f).await, 1);
    assert_eq!(
        (
            chained_count(&admin, t).await,
            queued_count(&admin, t).await
        ),
        (1, 0)
    );
}

/// Whatever table lock the runtime role can take, it cannot stop appends or sequencing: on a
/// connection of its own it takes, on every table of the `audit` and `app` schemas, the
/// strongest lock mode PostgreSQL grants it (and every row lock it may), holds them all, and
/// an event recorded meanwhile is queued and then chained at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_lock_the_runtime_role_can_take_holds_up_appends_or_sequencing() {
    use sqlx::Connection;
    const MODES: [&str; 8] = [
        "ACCESS EXCLUSIVE",
        "EXCLUSIVE",
        "SHARE ROW EXCLUSIVE",
        "SHARE",
        "SHARE UPDATE EXCLUSIVE",
        "ROW EXCLUSIVE",
        "ROW SHARE",
        "ACCESS SHARE",
    ];
    let f = fixture(2).await;
    let admin = f.db.pool(Role::Admin, 1).await;
    let warm = TenantId::new_random();
    append_n(&f, warm, 2).await;
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT c.oid::regclass::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname IN ('audit', 'app') AND c.relkind IN ('r', 'p') ORDER BY 1",
    )
    .fetch_all(&admin)
    .await
    .unwrap();
    assert!(tables.len() >= 6, "{tables:?}");
    let mut runtime = sqlx::PgConnection::connect_with(&f.db.options(Role::Runtime))
        .await
        .unwrap();
    let mut held = runtime.begin().await.unwrap();
    let mut taken = Vec::new();
    for table in &tables {
        for mode in MODES {
            sqlx::query("SAVEPOINT probe")
                .execute(&mut *held)
                .await
                .unwrap();
            let lock = format!("LOCK TABLE {table} IN {mode} MODE NOWAIT");
            if sqlx::query(&lock).execute(&mut *held).await.is_ok() {
                sqlx::query("RELEASE SAVEPOINT probe")
                    .execute(&mut *held)
                    .await
                    .unwrap();
                taken.push(format!("{table}: {mode}"));
                break;
            }
            sqlx::query("ROLLBACK TO SAVEPOINT probe")
                .execute(&mut *held)
                .await
                .unwrap();
        }
        for rows in [
            "FOR UPDATE",
            "FOR NO KEY UPDATE",
            "FOR SHARE",
            "FOR KEY SHARE",
        ] {
            sqlx::query("SAVEPOINT probe")
                .execute(&mut *held)
                .await
                .unwrap();
            let lock = format!("SELECT 1 FROM {table} {rows} NOWAIT");
            if sqlx::query(&lock).execute(&mut *held).await.is_ok() {
                sqlx::query("RELEASE SAVEPOINT probe")
                    .execute(&mut *held)
                    .await
                    .unwrap();
                taken.push(format!("{table}: rows {rows}"));
                break;
            }
            sqlx::query("ROLLBACK TO SAVEPOINT probe")
                .execute(&mut *held)
                .await
                .unwrap();
        }
    }
    // It holds some locks (the weakest ones its grants allow), so the probe did run.
    assert!(
        taken.iter().any(|t| t.starts_with("audit.events: ")),
        "{taken:?}"
    );
    let t = TenantId::new_random();
    tokio::time::timeout(std::time::Duration::from_secs(5), f.log.record(event(t, 1)))
        .await
        .unwrap_or_else(|_| panic!("an append waited for the runtime role's locks: {taken:?}"))
        .unwrap();
    let chained = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        f.sequencer.sequence_batch(),
    )
    .await
    .unwrap_or_else(|_| panic!("sequencing waited for the runtime role's locks: {taken:?}"))
    .unwrap();
    assert_eq!(chained, 1, "{taken:?}");
    assert_eq!(chained_count(&admin, t).await, 1);
    held.rollback().await.unwrap();
}

/// The one role that can hold the sequencer's lock is the sequencer role, through
/// `audit.sequence`, by keeping its own transaction open after a call. Another sequencer then
/// waits no longer than the lock timeout and fails (to retry), rather than waiting forever; the
/// holder's transaction is no longer marked as sequencing once the call returned; and when the
/// holder lets go, both events are chained once (its own batch was rolled back with it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sequencer_that_keeps_its_transaction_open_holds_others_up_only_briefly() {
    use sqlx::Connection;
    let f = fixture(2).await;
    let admin = f.db.pool(Role::Admin, 1).await;
    let (a, b) = (TenantId::new_random(), TenantId::new_random());
    f.log.record(event(a, 1)).await.unwrap();
    let mut rogue = sequencer_pool(&f.db)
        .await
        .acquire()
        .await
        .unwrap()
        .detach();
    let mut held = rogue.begin().await.unwrap();
    let taken: i32 = sqlx::query_scalar("SELECT audit.sequence(10)")
        .fetch_one(&mut *held)
        .await
        .unwrap();
    assert_eq!(taken, 1);
    let flag: String = sqlx::query_scalar("SELECT current_setting('audit.sequencing', true)")
        .fetch_one(&mut *held)
        .await
        .unwrap();
    assert_eq!(
        flag, "",
        "the caller's transaction still says it is sequencing"
    );

    f.log.record(event(b, 1)).await.unwrap();
    let limit = u64::from(audit_log::schema::SEQUENCER_LOCK_TIMEOUT_SECS) + 3;
    let start = std::time::Instant::now();
    let waited = tokio::time::timeout(
        std::time::Duration::from_secs(limit),
        f.sequencer.sequence_batch(),
    )
    .await
    .expect("another sequencer waited past the lock timeout");
    match waited {
        Err(audit_log::AuditError::Database(err)) => {
            assert!(is_sqlstate(&err, "55P03"), "{err}");
        }
        other => panic!("sequenced under another's lock: {other:?}"),
    }
    assert!(start.elapsed() >= std::time::Duration::from_secs(4));
    assert_eq!(chained_count(&admin, b).await, 0);

    held.rollback().await.unwrap();
    assert_eq!(sequence_all(&f).await, 2);
    assert_eq!(
        (
            chained_count(&admin, a).await,
            chained_count(&admin, b).await
        ),
        (1, 1)
    );
}

/// A tenant's batch never grows past what the pick chose. Rows of the tenant committed after
/// the pick, with ids inside the batch's range (a transaction of the same tenant that was still
/// open), are eligible like the picked ones, but the move takes at most as many rows as were
/// picked; the rest wait for the next batch. Here the move is handed a batch of two picked ids
/// with eight more rows between them, as a pick that ran before those eight committed would.
#[tokio::test]
async fn a_batch_takes_no_more_rows_than_were_picked() {
    let f = fixture(2).await;
    let admin = f.db.pool(Role::Admin, 1).await;
    let t = TenantId::new_random();
    for i in 0..10 {
        f.log.record(event(t, i)).await.unwrap();
    }
    let ids: Vec<i64> =
        sqlx::query_scalar("SELECT id FROM audit.pending WHERE tenant_id = $1 ORDER BY id")
            .bind(t.as_uuid())
            .fetch_all(&admin)
            .await
            .unwrap();
    assert_eq!(ids.len(), 10);
    let owner = f.db.pool(Role::Owner, 1).await;
    let mut tx = owner.begin().await.unwrap();
    sqlx::query("SELECT set_config('audit.sequencing', 'on', true)")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("SELECT audit.sequence_tenant($1, $2, false)")
        .bind(t.as_uuid())
        .bind(vec![ids[0], ids[9]])
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        chained_count(&admin, t).await,
        2,
        "no more than were picked"
    );
    assert_eq!(queued_count(&admin, t).await, 8);
    let chained: Vec<i64> =
        sqlx::query_scalar("SELECT queue_id FROM audit.events WHERE tenant_id = $1 ORDER BY seq")
            .bind(t.as_uuid())
            .fetch_all(&admin)
            .await
            .unwrap();
    assert_eq!(chained, ids[..2], "the oldest, in queue order");
    // Positive control: the rest are chained by the next batches, and the chain is intact.
    sequence_all(&f).await;
    assert_eq!(chained_count(&admin, t).await, 10);
    assert!(verify(&f, t).await.is_intact());
}
