//! Security review of the polling sequencer and the rewritten queue trigger: the trigger's
//! `jsonb`-layout shortcut (`canonical := written = parsed::text`, which skips the `json`
//! re-parse and the repeated-key walk and reads the schema version from `jsonb`), the
//! batch run in one subtransaction with a tenant-by-tenant fallback, and settings the runtime
//! role can plant for itself. The adversary holds the least-privileged runtime role (SQL
//! injection, a compromised application server). Every attack has a positive control in the
//! same setup.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use tenant_scope::{TenantContext, TenantId};
use testkit::Role;

/// [`BASE`] exactly as `record::jsonb::text` prints it (the layout the trigger's shortcut
/// takes), with `@S@` for the schema version and `@M@` for the metadata value.
const JSONB: &str = r#"{"actor": {"kind": "user"}, "action": "a.b", "schema": @S@, "tenant": "@T@", "outcome": {"status": "allowed"}, "metadata": @M@, "occurred_at": "@TS@"}"#;

fn jsonb(schema: &str, metadata: &str) -> String {
    JSONB.replace("@S@", schema).replace("@M@", metadata)
}

/// The schema version spelled any way but `1`, in the `jsonb` layout (so `written =
/// parsed::text` holds whenever `jsonb` prints the spelling back unchanged, as it does for
/// `1.0` and `1.00`) and in the compact layout: the verifier reads `schema` as a `u32` equal to
/// the version, so every one must be refused by the trigger itself (`AL003`), on either path.
/// Control: `1` in both layouts is accepted and verifies.
#[tokio::test]
async fn schema_versions_spelled_otherwise_are_refused_on_both_paths() {
    let f = fixture(2).await;
    for control in [jsonb("1", r#"{"n": 1}"#), base(r#"{"n":1}"#, "1")] {
        let (_, fate) = raw_insert(&f, &control, "user", "a.b", None).await;
        assert_eq!(fate, Fate::Intact, "control: {control}");
    }
    let mut wrong = Vec::new();
    for schema in [
        "1.0",
        "1.00",
        "1e0",
        "1E0",
        "1e+0",
        "10e-1",
        "0.1e1",
        "1.0e0",
        "100e-2",
        "\"1\"",
        "true",
        "[1]",
        "{}",
        "null",
        "2",
        "0",
        "-1",
        "1.000000000000000000001",
    ] {
        for record in [jsonb(schema, r#"{"n": 1}"#), base(r#"{"n":1}"#, schema)] {
            let (_, fate, code) = raw_insert_coded(
                &f,
                f.log.pool(),
                RAW_INSERT,
                record.as_bytes(),
                Columns::BASE,
            )
            .await;
            if fate != Fate::Refused || code.as_deref() != Some("AL003") {
                wrong.push(format!("{record}: {fate:?} {code:?}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// [`BASE`] with metadata and a schema spelling, compact.
fn base(metadata: &str, schema: &str) -> String {
    BASE.replacen('{', &format!(r#"{{"metadata":{metadata},"#), 1)
        .replace(r#""schema":1"#, &format!(r#""schema":{schema}"#))
}

/// Values `jsonb` prints back exactly as written (so the record takes the shortcut) or nearly
/// so, in metadata: numbers at and beyond the edges of a float written in plain decimal as
/// `numeric` prints them, negative zero, escapes `jsonb` prints and ones it does not, raw
/// characters it leaves alone. None may be accepted into a chain the verifier then rejects:
/// each is refused or verifies intact. The ones beyond a float must be refused (the verifier's
/// parse would not hold them). Control: an ordinary value takes the shortcut and verifies.
#[tokio::test]
async fn values_in_the_jsonb_layout_are_refused_or_verify_intact() {
    let f = fixture(2).await;
    let (t, fate) = raw_insert(&f, &jsonb("1", r#"{"n": 1}"#), "user", "a.b", None).await;
    assert_eq!(fate, Fate::Intact, "control");
    let admin = f.db.pool(Role::Admin, 1).await;
    let shortcut: bool = sqlx::query_scalar(
        "SELECT bool_and(convert_from(event, 'UTF8') = convert_from(event, 'UTF8')::jsonb::text) \
         FROM audit.events WHERE tenant_id = $1 AND seq = 2",
    )
    .bind(t.as_uuid())
    .fetch_one(&admin)
    .await
    .unwrap();
    assert!(shortcut, "the control record is not in the jsonb layout");

    let max = format!("{}", f64::MAX); // plain digits, as numeric prints it
    let beyond = format!("1{}", "0".repeat(309));
    let tiny = format!("0.{}1", "0".repeat(400));
    let mut cases: Vec<(String, bool)> = vec![
        (format!(r#"{{"n": {max}}}"#), false),
        (format!(r#"{{"n": -{max}}}"#), false),
        (format!(r#"{{"n": {beyond}}}"#), true),
        (format!(r#"{{"n": -{beyond}}}"#), true),
        (format!(r#"{{"n": {tiny}}}"#), false),
        (r#"{"n": 18446744073709551616}"#.to_owned(), false),
        (r#"{"n": -0}"#.to_owned(), false),
        (r#"{"n": -0.0}"#.to_owned(), false),
        (r#"{"n": 0.0}"#.to_owned(), false),
        (r#"{"n": 1.50}"#.to_owned(), false),
        (r#"{"s": "\u001f\n\t\"\\"}"#.to_owned(), false),
        (r#"{"s": "\u001F"}"#.to_owned(), false),
        (
            "{\"s\": \"\u{7f}\u{2028}\u{feff}\u{1f600}\"}".to_owned(),
            false,
        ),
        (r#"{"s": "\ud83d\ude00"}"#.to_owned(), false),
        (r#"{"s": "\/"}"#.to_owned(), false),
        (r#"{"s": "\ud83d"}"#.to_owned(), true),
        (r#"{"s": "\u0000"}"#.to_owned(), true),
        (r#"{"": 1, "a": {}, "b": []}"#.to_owned(), false),
        (r#"{"a": null, "b": [null, true, false]}"#.to_owned(), false),
    ];
    // The same values in arrays, and at the top level of metadata.
    let nested: Vec<(String, bool)> = cases
        .iter()
        .map(|(m, refused)| (format!(r#"{{"x": [{m}]}}"#), *refused))
        .collect();
    cases.extend(nested);
    let mut wrong = Vec::new();
    let mut refused_count = 0;
    for (metadata, must_refuse) in &cases {
        let record = jsonb("1", metadata);
        let (_, fate) = raw_insert(&f, &record, "user", "a.b", None).await;
        match (&fate, must_refuse) {
            (Fate::Refused, _) => refused_count += 1,
            (Fate::Intact, false) => {}
            _ => wrong.push(format!("{metadata}: {fate:?}")),
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    assert!(refused_count < cases.len(), "everything was refused");
}

/// `COPY ... FROM STDIN` into the queue, a second way in for a role holding `INSERT`, with
/// records the verifier would reject (a repeated key, a schema `1.0`) and an honest one: the
/// queue's row-level security refuses `COPY FROM` outright (`0A000`), so no record arrives
/// without the row trigger. Control: the honest record, inserted, is queued, chained and
/// verifies.
#[tokio::test]
async fn copy_into_the_queue_is_refused() {
    let f = fixture(2).await;
    let copy = "COPY audit.pending (tenant_id, occurred_at, actor_kind, actor_id, action, \
                outcome, request_id, event) FROM STDIN";
    let (_, fate) = raw_insert(&f, &jsonb("1", r#"{"n": 1}"#), "user", "a.b", None).await;
    assert_eq!(fate, Fate::Intact, "control");
    let cases = [
        ("honest", jsonb("1", r#"{"n": 1}"#)),
        ("repeated", jsonb("1", r#"{"n": 1, "n": 2}"#)),
        ("schema 1.0", jsonb("1.0", r#"{"n": 1}"#)),
        (
            "repeated, compact",
            base(r#"{"role":"user","role":"admin"}"#, "1"),
        ),
    ];
    let admin = f.db.pool(Role::Admin, 1).await;
    for (why, template) in cases {
        let t = TenantId::new_random();
        let at = now_micros();
        let record = fill(template.as_bytes(), t, at);
        let line = format!(
            "{t}\t{}\tuser\t\\N\ta.b\tallowed\t\\N\t\\\\x{}\n",
            audit_log::format_time(at).unwrap(),
            hex(&record)
        );
        let ctx = TenantContext::for_job(t, None, "copy").unwrap();
        let mut tx = f.log.pool().begin(&ctx).await.unwrap();
        let result = async {
            let mut sink = tx.copy_in_raw(copy).await?;
            sink.send(line.as_bytes()).await?;
            sink.finish().await
        }
        .await;
        match result {
            Err(e) if is_sqlstate(&e, "0A000") || is_sqlstate(&e, "AL003") => {}
            r => panic!("{why}: {r:?}"),
        }
        drop(tx);
        assert_eq!(queued_count(&admin, t).await, 0, "{why}");
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// One tenant's batch fails every time (the owner planted an event at the position its next
/// event needs): the batch's single subtransaction fails, and in the same call the fallback
/// takes it again tenant by tenant — the tenants queued before and after the failing one are
/// chained by that one call, the failing tenant's rows are marked and stay queued, and the
/// next call (within the retry delay) skips them and chains new events in one go. Control: the
/// same queue without the planted row is chained entirely by one call.
#[tokio::test]
async fn a_batch_that_fails_every_time_still_chains_every_other_tenant_in_the_same_call() {
    for poisoned in [false, true] {
        let f = fixture(2).await;
        let admin = f.db.pool(Role::Admin, 1).await;
        let (before, broken, after) = (
            TenantId::new_random(),
            TenantId::new_random(),
            TenantId::new_random(),
        );
        append_n(&f, broken, 1).await;
        if poisoned {
            plant_second_row(&f.db, broken).await;
        }
        for i in 0..3 {
            f.log.record(event(before, i)).await.unwrap();
        }
        for i in 0..3 {
            f.log.record(event(broken, i)).await.unwrap();
        }
        for i in 0..3 {
            f.log.record(event(after, i)).await.unwrap();
        }
        let taken = f.sequencer.sequence_batch().await.unwrap();
        assert_eq!(taken, 9, "poisoned: {poisoned}");
        for t in [before, after] {
            assert_eq!(
                (
                    chained_count(&admin, t).await,
                    queued_count(&admin, t).await
                ),
                (3, 0),
                "poisoned: {poisoned}"
            );
            assert!(verify(&f, t).await.is_intact());
        }
        let marked: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM audit.pending WHERE tenant_id = $1 AND failed_at IS NOT NULL",
        )
        .bind(broken.as_uuid())
        .fetch_one(&admin)
        .await
        .unwrap();
        if poisoned {
            assert_eq!(queued_count(&admin, broken).await, 3);
            assert_eq!(marked, 3);
        } else {
            assert_eq!(
                (
                    chained_count(&admin, broken).await,
                    queued_count(&admin, broken).await
                ),
                (4, 0)
            );
            assert!(verify(&f, broken).await.is_intact());
        }
        // Later events of the healthy tenants: the next call takes them and only them.
        f.log.record(event(before, 10)).await.unwrap();
        f.log.record(event(after, 10)).await.unwrap();
        assert_eq!(f.sequencer.sequence_batch().await.unwrap(), 2);
        assert_eq!(chained_count(&admin, before).await, 4);
        assert_eq!(chained_count(&admin, after).await, 4);
        assert_eq!(
            queued_count(&admin, broken).await,
            if poisoned { 3 } else { 0 }
        );
        // An empty queue (apart from set-aside rows) takes nothing.
        assert_eq!(f.sequencer.sequence_batch().await.unwrap(), 0);
    }
}

/// The runtime role gives itself role defaults and settings that name the sequencer's switch
/// and its paths (`audit.sequencing = on`, refused as a role default but set in the
/// transaction; a search path with `pg_temp` and `audit` first and
/// `standard_conforming_strings = off` as role defaults): on a new connection that starts
/// with them, it still can neither change nor empty the queue, write the chain, call the
/// sequencer or its steps, nor queue a record the verifier would reject; the sequencer, a role
/// of its own, is unaffected and chains the honest events, which verify. Control: the same
/// connection queues an honest record.
#[tokio::test]
async fn settings_the_runtime_role_plants_for_itself_switch_nothing_off() {
    let f = fixture(2).await;
    let admin = f.db.pool(Role::Admin, 1).await;
    let t = TenantId::new_random();
    append_n(&f, t, 1).await;
    // The application's pool, started (its start-up check refuses a runtime role with session
    // defaults) before the plants, and opening a new connection for every use, so each starts
    // with the role defaults in place at that moment.
    let raw = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .after_release(|_, _| Box::pin(async { Ok(false) }))
        .connect_with(f.db.options(Role::Runtime))
        .await
        .unwrap();
    let pool = rls_guard::TenantPool::new(raw.clone()).await.unwrap();
    let db = f.db.name();
    // A role default for the sequencer's switch (a placeholder setting) is refused outright.
    let err = sqlx::raw_sql(&format!(
        "ALTER ROLE CURRENT_USER IN DATABASE \"{db}\" SET audit.sequencing = 'on'"
    ))
    .execute(&f.raw)
    .await
    .unwrap_err();
    assert!(is_sqlstate(&err, PRIVILEGE), "{err}");
    sqlx::raw_sql(&format!(
        "ALTER ROLE CURRENT_USER IN DATABASE \"{db}\" SET search_path = pg_temp, audit, public;
         ALTER ROLE CURRENT_USER IN DATABASE \"{db}\" SET standard_conforming_strings = off;"
    ))
    .execute(&f.raw)
    .await
    .unwrap();
    let seen: (String, String) = sqlx::query_as(
        "SELECT current_setting('search_path'), current_setting('standard_conforming_strings')",
    )
    .fetch_one(&raw)
    .await
    .unwrap();
    assert_eq!(
        seen,
        ("pg_temp, audit, public".to_owned(), "off".to_owned()),
        "the role defaults did not take"
    );
    let log = audit_log::AuditLog::new(pool.clone(), scrubber());
    // Control: an honest record through the planted connection.
    log.record(event(t, 2)).await.unwrap();
    let ctx = TenantContext::for_job(t, None, "attack").unwrap();
    for sql in [
        "UPDATE audit.pending SET failed_at = now()",
        "DELETE FROM audit.pending",
        "TRUNCATE audit.pending",
        "INSERT INTO audit.events (tenant_id, seq, occurred_at, actor_kind, action, outcome, \
             event, prev_hash, hash) \
         SELECT tenant_id, 99, occurred_at, actor_kind, action, outcome, event, hash, hash \
         FROM audit.events LIMIT 1",
        "SELECT audit.sequence(10)",
        "SELECT count(*) FROM audit.sequence_pick(10)",
        "SELECT audit.sequence_tenant(gen_random_uuid(), '{1}', false)",
    ] {
        // The switch set in the transaction itself (a placeholder any session may set).
        let mut tx = pool.begin(&ctx).await.unwrap();
        let sql = format!("SET LOCAL audit.sequencing = 'on'; {sql}");
        let err = sqlx::raw_sql(&sql).execute(&mut *tx).await.unwrap_err();
        assert!(is_sqlstate(&err, PRIVILEGE), "{sql}: {err}");
        drop(tx);
    }
    // A record the verifier would reject, through the planted connection.
    // The last case is the control: an honest raw record through the planted connection
    // verifies.
    for (version, detail, expected) in [
        ("1", r#"{"n": 1, "n": 2}"#, Fate::Refused),
        ("1.0", r#"{"n": 1}"#, Fate::Refused),
        ("1", r#"{"n": 1}"#, Fate::Intact),
    ] {
        let record = jsonb(version, detail);
        let (_, fate) =
            raw_insert_with(&f, &pool, RAW_INSERT, record.as_bytes(), Columns::BASE).await;
        assert_eq!(fate, expected, "{record}");
    }
    sequence_all(&f).await;
    assert_eq!(chained_count(&admin, t).await, 2);
    assert_eq!(queued_count(&admin, t).await, 0);
    assert!(verify(&f, t).await.is_intact());
    sqlx::raw_sql(&format!(
        "ALTER ROLE CURRENT_USER IN DATABASE \"{db}\" RESET ALL"
    ))
    .execute(&f.raw)
    .await
    .unwrap();
}

/// The sequencer role's own grant is `audit.sequence` only: it cannot call the steps (which
/// would run as itself, outside the lock and the per-tenant binding) nor write the chain or
/// the queue directly. Control: it sequences.
#[tokio::test]
async fn the_sequencer_role_cannot_call_the_steps_directly() {
    let f = fixture(2).await;
    let admin = f.db.pool(Role::Admin, 1).await;
    let t = TenantId::new_random();
    f.log.record(event(t, 1)).await.unwrap();
    let seq = sequencer_pool(&f.db).await;
    for sql in [
        "SELECT count(*) FROM audit.sequence_pick(10)",
        "SELECT audit.sequence_tenant(gen_random_uuid(), '{1}', false)",
        "BEGIN; SET LOCAL audit.sequencing = 'on'; DELETE FROM audit.pending; COMMIT",
    ] {
        // A connection of its own, closed after: a refused `BEGIN; ..` leaves its transaction
        // aborted, and such a connection must not go back to the pool for the control below.
        let mut conn = seq.acquire().await.unwrap().detach();
        let err = sqlx::raw_sql(sql).execute(&mut conn).await.unwrap_err();
        assert!(is_sqlstate(&err, PRIVILEGE), "{sql}: {err}");
    }
    assert_eq!(queued_count(&admin, t).await, 1);
    let taken: i32 = sqlx::query_scalar("SELECT audit.sequence(10)")
        .fetch_one(&seq)
        .await
        .unwrap();
    assert_eq!(taken, 1);
    assert_eq!(chained_count(&admin, t).await, 1);
    assert!(verify(&f, t).await.is_intact());
}
