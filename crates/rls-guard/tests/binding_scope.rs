//! `schema::tenant_table_sql_for`: a binding check made for a part of the writes. It holds the
//! writes it names to the committed tenant as before, and the start-up and coverage checks
//! refuse the table as soon as any role but the owner may make one of the others, however the
//! privilege reaches it (the table, a column, `PUBLIC`, a role it belongs to with or without
//! inheriting, a predefined role). Each refusal has its positive control: the same database
//! passes once the grant is gone.
// Integration tests: a failed unwrap is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use rls_guard::schema::{SUPPORT_SQL, Write, tenant_table_sql, tenant_table_sql_for};
use rls_guard::{FindingKind, RlsError, TenantPool};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tenant_scope::TenantId;
use testkit::{Role, Template, TestDb, fresh_database};

/// Role memberships are the cluster's, not one database's: while one test here makes a role a
/// member of `pg_write_all_data`, that role may write every table of every database, so the
/// tests of this file run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// An append-only log that only its owner inserts into (checked: UPDATE and DELETE), and a
/// queue the runtime role inserts into and only the owner drains (checked: INSERT).
fn template() -> Template {
    Template::new(
        "rls_guard_binding_scope",
        format!(
            "{SUPPORT_SQL}
            CREATE TABLE log (tenant_id uuid NOT NULL, id bigint GENERATED ALWAYS AS IDENTITY,
                              body text NOT NULL, PRIMARY KEY (tenant_id, id));
            CREATE TABLE queue (tenant_id uuid NOT NULL, id bigint GENERATED ALWAYS AS IDENTITY,
                                body text NOT NULL, PRIMARY KEY (tenant_id, id));
            {}
            {}
            GRANT SELECT ON log, queue TO testkit_runtime;
            GRANT INSERT (tenant_id, body) ON queue TO testkit_runtime;",
            tenant_table_sql_for("log", &[Write::Update, Write::Delete]).unwrap(),
            tenant_table_sql_for("queue", &[Write::Insert]).unwrap(),
        ),
    )
}

async fn start(options: PgConnectOptions) -> Result<TenantPool, RlsError> {
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(options)
        .await
        .unwrap();
    TenantPool::new(pool).await
}

/// The start-up check's refusal message, or a panic when the pool started.
async fn refusal(db: &TestDb) -> String {
    match start(db.options(Role::Runtime)).await {
        Err(error @ RlsError::SupportSchemaMismatch(_)) => error.to_string(),
        Err(other) => panic!("refused for another reason: {other:?}"),
        Ok(_) => panic!("the pool started"),
    }
}

/// The start-up check refuses `table` because its binding check leaves `write` out while
/// `who` (a role, and how it reaches the table) may make it.
async fn refused_for(db: &TestDb, table: &str, write: &str, who: &str) {
    let message = refusal(db).await;
    let expected =
        format!("{table}: trigger tenant_binding_check does not check {write}, which role {who}");
    assert!(message.contains(&expected), "{message}");
}

/// The coverage check's details of binding-check findings on `table`.
async fn binding_findings(db: &TestDb, table: &str) -> Vec<String> {
    common::coverage(db)
        .await
        .into_iter()
        .filter(|f| f.kind == FindingKind::MissingBindingCheck && f.object == table)
        .map(|f| f.detail)
        .collect()
}

/// Both checks pass: the positive control of every refusal below.
async fn passes(db: &TestDb) {
    start(db.options(Role::Runtime))
        .await
        .expect("the start-up check passes");
    for table in ["public.log", "public.queue"] {
        assert_eq!(binding_findings(db, table).await, Vec::<String>::new());
    }
}

/// The triggers on `table`: name and the events they fire on.
async fn triggers(db: &TestDb, table: &str) -> Vec<(String, i16)> {
    let admin = db.pool(Role::Admin, 1).await;
    sqlx::query_as(
        "SELECT tgname::text, (tgtype & 28)::int2 FROM pg_trigger \
         WHERE tgrelid = $1::regclass AND NOT tgisinternal ORDER BY 1",
    )
    .bind(table)
    .fetch_all(&admin)
    .await
    .unwrap()
}

#[test]
fn no_write_to_check_is_refused_and_every_write_is_the_default() {
    assert!(matches!(
        tenant_table_sql_for("t", &[]),
        Err(RlsError::NoCheckedWrite)
    ));
    assert!(matches!(
        tenant_table_sql_for("bad name", &[Write::Insert]),
        Err(RlsError::InvalidIdentifier(_))
    ));
    assert_eq!(
        tenant_table_sql("t").unwrap(),
        tenant_table_sql_for("t", &[Write::Delete, Write::Insert, Write::Update]).unwrap()
    );
}

#[tokio::test]
async fn the_triggers_made_are_those_of_the_checked_writes() {
    let _serial = SERIAL.lock().await;
    let db = fresh_database(&template()).await;
    // INSERT 4, DELETE 8, UPDATE 16.
    assert_eq!(
        triggers(&db, "log").await,
        [
            ("tenant_binding_check".to_owned(), 24),
            ("tenant_binding_record_delete".to_owned(), 8),
            ("tenant_binding_record_update".to_owned(), 16),
        ]
    );
    assert_eq!(
        triggers(&db, "queue").await,
        [
            ("tenant_binding_check".to_owned(), 4),
            ("tenant_binding_record_insert".to_owned(), 4),
        ]
    );
    // Made again with every write (what an older schema had), then narrowed again: idempotent
    // both ways, no trigger left behind.
    db.as_admin(&tenant_table_sql("log").unwrap()).await;
    assert_eq!(triggers(&db, "log").await.len(), 4);
    db.as_admin(&tenant_table_sql_for("log", &[Write::Update, Write::Delete]).unwrap())
        .await;
    assert_eq!(triggers(&db, "log").await.len(), 3);
    passes(&db).await;
}

#[tokio::test]
async fn every_way_another_role_may_make_an_unchecked_write_is_refused() {
    let _serial = SERIAL.lock().await;
    let db = fresh_database(&template()).await;
    passes(&db).await;
    let runtime = testkit::RUNTIME_ROLE;
    let other = db
        .create_login_role("writer", "NOSUPERUSER NOBYPASSRLS INHERIT")
        .await;
    let other = other.get_username().to_owned();
    db.as_admin(&format!(
        "CREATE ROLE {other}_group NOLOGIN NOINHERIT; \
         CREATE ROLE {other}_hop NOLOGIN NOINHERIT; GRANT {other}_group TO {other}_hop;"
    ))
    .await;
    // (grant, revoke, table, the write, the role named)
    let cases: Vec<(String, String, &str, &str, String)> = vec![
        (
            format!("GRANT INSERT ON log TO {runtime}"),
            format!("REVOKE INSERT ON log FROM {runtime}"),
            "public.log",
            "INSERT",
            runtime.to_owned(),
        ),
        (
            format!("GRANT INSERT (body) ON log TO {runtime}"),
            format!("REVOKE INSERT (body) ON log FROM {runtime}"),
            "public.log",
            "INSERT",
            runtime.to_owned(),
        ),
        (
            "GRANT UPDATE (body) ON queue TO PUBLIC".to_owned(),
            "REVOKE UPDATE (body) ON queue FROM PUBLIC".to_owned(),
            "public.queue",
            "UPDATE",
            // The first login role by name: every role holds a grant to PUBLIC.
            String::new(),
        ),
        (
            format!("GRANT DELETE ON queue TO {other}"),
            format!("REVOKE DELETE ON queue FROM {other}"),
            "public.queue",
            "DELETE",
            other.clone(),
        ),
        // Through a role it belongs to two hops away, neither inherited: it may SET ROLE.
        (
            format!("GRANT DELETE ON queue TO {other}_group; GRANT {other}_hop TO {other}"),
            format!("REVOKE {other}_hop FROM {other}; REVOKE DELETE ON queue FROM {other}_group"),
            "public.queue",
            "DELETE",
            other.clone(),
        ),
        // A predefined role that may write every table.
        (
            format!("GRANT pg_write_all_data TO {other}_group; GRANT {other}_hop TO {other}"),
            format!("REVOKE {other}_hop FROM {other}; REVOKE pg_write_all_data FROM {other}_group"),
            "public.log",
            "INSERT",
            "pg_write_all_data".to_owned(),
        ),
        // A role that cannot log in, lending its privilege through a view it owns.
        (
            format!(
                "GRANT INSERT ON log TO {other}_group; \
                 CREATE VIEW log_writer AS SELECT tenant_id, body FROM log; \
                 ALTER VIEW log_writer OWNER TO {other}_group; \
                 GRANT INSERT ON log_writer TO {runtime}"
            ),
            format!("DROP VIEW log_writer; REVOKE INSERT ON log FROM {other}_group"),
            "public.log",
            "INSERT",
            format!("{other}_group"),
        ),
    ];
    for (grant, revoke, table, write, role) in cases {
        db.as_admin(&grant).await;
        let message = refusal(&db).await;
        let expected = format!("trigger tenant_binding_check does not check {write}, which role");
        assert!(message.contains(&expected), "{grant}: {message}");
        assert!(message.contains(table), "{grant}: {message}");
        assert!(message.contains(&role), "{grant}: {message}");
        let findings = binding_findings(&db, table).await;
        assert!(
            findings.iter().any(|f| f.contains(&expected)),
            "{grant}: {findings:?}"
        );
        db.as_admin(&revoke).await;
        passes(&db).await;
    }
}

#[tokio::test]
async fn the_owner_its_members_and_superusers_are_not_held() {
    let _serial = SERIAL.lock().await;
    let db = fresh_database(&template()).await;
    let member = db
        .create_login_role("owner_member", "NOSUPERUSER INHERIT")
        .await;
    let member = member.get_username().to_owned();
    let superuser = db.create_login_role("super", "SUPERUSER").await;
    let superuser = superuser.get_username().to_owned();
    db.as_admin(&format!(
        "GRANT {} TO {member}; GRANT INSERT ON log TO {member}, {superuser}",
        testkit::OWNER_ROLE
    ))
    .await;
    // They may drop the trigger anyway: no trigger holds them.
    passes(&db).await;
    // Control: the same grant to a role that is neither is refused.
    let plain = db.create_login_role("plain", "NOSUPERUSER").await;
    let plain = plain.get_username().to_owned();
    db.as_admin(&format!("GRANT INSERT ON log TO {plain}"))
        .await;
    let message = refusal(&db).await;
    assert!(message.contains(&plain), "{message}");
}

#[tokio::test]
async fn a_check_narrowed_by_hand_or_missing_its_record_is_refused() {
    let _serial = SERIAL.lock().await;
    let db = fresh_database(&template()).await;
    passes(&db).await;
    // The queue's check moved to DELETE while the runtime role inserts.
    db.as_admin(
        "DROP TRIGGER tenant_binding_check ON queue; \
         CREATE CONSTRAINT TRIGGER tenant_binding_check AFTER DELETE ON queue \
         DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION app.check_row_binding();",
    )
    .await;
    refused_for(&db, "public.queue", "INSERT", testkit::RUNTIME_ROLE).await;
    // Control: made again as the helper makes it.
    db.as_admin(&tenant_table_sql_for("queue", &[Write::Insert]).unwrap())
        .await;
    passes(&db).await;
    // A checked write without the statement trigger that records it.
    db.as_admin("DROP TRIGGER tenant_binding_record_insert ON queue")
        .await;
    let message = refusal(&db).await;
    assert!(
        message.contains("public.queue: no tenant_binding_record_insert trigger"),
        "{message}"
    );
    db.as_admin(&tenant_table_sql_for("queue", &[Write::Insert]).unwrap())
        .await;
    // No binding check at all is refused whoever may write.
    db.as_admin("DROP TRIGGER tenant_binding_check ON log")
        .await;
    let message = refusal(&db).await;
    assert!(
        message.contains("public.log: no tenant_binding_check trigger"),
        "{message}"
    );
    db.as_admin(&tenant_table_sql_for("log", &[Write::Update, Write::Delete]).unwrap())
        .await;
    passes(&db).await;
}

#[tokio::test]
async fn a_checked_write_is_still_held_to_the_committed_tenant() {
    let _serial = SERIAL.lock().await;
    let db = fresh_database(&template()).await;
    let pool = start(db.options(Role::Runtime)).await.unwrap();
    let (a, b) = (TenantId::new_random(), TenantId::new_random());
    // Control: the tenant's own row commits.
    let mut tx = pool.begin(&common::ctx(a)).await.unwrap();
    sqlx::query("INSERT INTO queue (tenant_id, body) VALUES ($1, 'own')")
        .bind(a.as_uuid())
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    // Injected SQL rebinds to b, queues a row for b, and the commit restates a: refused.
    let mut tx = pool.begin(&common::ctx(a)).await.unwrap();
    sqlx::query("SELECT set_config('app.tenant_id', $1, true)")
        .bind(b.to_string())
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("INSERT INTO queue (tenant_id, body) VALUES ($1, 'planted')")
        .bind(b.as_uuid())
        .execute(&mut *tx)
        .await
        .unwrap();
    assert!(matches!(tx.commit().await, Err(RlsError::BindingChanged)));
    let bodies: Vec<String> = sqlx::query_scalar("SELECT body FROM queue ORDER BY id")
        .fetch_all(&db.pool(Role::Admin, 1).await)
        .await
        .unwrap();
    assert_eq!(bodies, ["own"]);
    // The writes left unchecked are refused by privilege.
    let mut tx = pool.begin(&common::ctx(a)).await.unwrap();
    let error = sqlx::query("DELETE FROM queue")
        .execute(&mut *tx)
        .await
        .unwrap_err();
    assert_eq!(
        error.as_database_error().unwrap().code().as_deref(),
        Some("42501")
    );
}

/// A partitioned log: a write made to a partition directly fires only the triggers the table
/// gave it, so a grant on a partition counts like one on the table.
#[tokio::test]
async fn a_grant_on_a_partition_counts_as_one_on_the_table() {
    let _serial = SERIAL.lock().await;
    let db = fresh_database(&template()).await;
    db.as_admin(&format!(
        "SET ROLE {owner};
         CREATE TABLE plog (tenant_id uuid NOT NULL, body text NOT NULL)
             PARTITION BY HASH (tenant_id);
         CREATE TABLE plog_0 PARTITION OF plog FOR VALUES WITH (MODULUS 1, REMAINDER 0);
         {}
         RESET ROLE;
         GRANT SELECT ON plog TO {runtime};",
        tenant_table_sql_for("plog", &[Write::Update, Write::Delete]).unwrap(),
        owner = testkit::OWNER_ROLE,
        runtime = testkit::RUNTIME_ROLE,
    ))
    .await;
    passes(&db).await;
    assert_eq!(
        binding_findings(&db, "public.plog").await,
        Vec::<String>::new()
    );
    db.as_admin(&format!(
        "GRANT INSERT ON plog_0 TO {}",
        testkit::RUNTIME_ROLE
    ))
    .await;
    refused_for(&db, "public.plog", "INSERT", testkit::RUNTIME_ROLE).await;
    db.as_admin(&format!(
        "REVOKE INSERT ON plog_0 FROM {}",
        testkit::RUNTIME_ROLE
    ))
    .await;
    passes(&db).await;
    // An update that moves a row to another partition is a delete and an insert there, and
    // fires no update trigger: the checked UPDATE does not cover it.
    let runtime = testkit::RUNTIME_ROLE;
    db.as_admin(&format!("GRANT UPDATE ON plog TO {runtime}"))
        .await;
    refused_for(
        &db,
        "public.plog",
        "INSERT",
        &format!("{runtime} (updating plog, moving a row between its partitions)"),
    )
    .await;
    db.as_admin(&format!("REVOKE UPDATE ON plog FROM {runtime}"))
        .await;
    passes(&db).await;
    // The same grant on a table that is not partitioned is checked, and passes.
    db.as_admin(&format!("GRANT UPDATE ON log TO {runtime}"))
        .await;
    passes(&db).await;
}

/// A foreign key's referential action writes the table as its owner, past every privilege and
/// policy of the table: a narrowed check counts whoever may delete from or update the parent
/// as a writer of what the action does to the table. (A single-column key would let a queued
/// row of tenant B hang off tenant A's parent, and A deleting its parent would delete B's row
/// with no check.) Each refusal names the key; the positive controls are the same database
/// with the grant revoked and with the action `NO ACTION`.
#[tokio::test]
async fn a_referential_action_counts_as_a_write_of_the_table() {
    let _serial = SERIAL.lock().await;
    let db = fresh_database(&template()).await;
    let runtime = testkit::RUNTIME_ROLE;
    db.as_admin(&format!(
        "SET ROLE {owner};
         CREATE TABLE parents (tenant_id uuid NOT NULL, id bigint NOT NULL UNIQUE,
                               PRIMARY KEY (tenant_id, id));
         {}
         ALTER TABLE queue ADD COLUMN parent_id bigint;
         ALTER TABLE queue ADD CONSTRAINT queue_parent FOREIGN KEY (parent_id)
             REFERENCES parents (id) ON DELETE CASCADE;
         RESET ROLE;
         GRANT SELECT, INSERT ON parents TO {runtime};",
        tenant_table_sql("parents").unwrap(),
        owner = testkit::OWNER_ROLE,
    ))
    .await;
    // Nobody but the owner may delete or update a parent: nothing reaches the queue.
    passes(&db).await;
    let set_action = |action: &str| {
        format!(
            "ALTER TABLE queue DROP CONSTRAINT queue_parent;
             ALTER TABLE queue ADD CONSTRAINT queue_parent FOREIGN KEY (parent_id)
                 REFERENCES parents (id) {action}"
        )
    };
    // (the key's actions, the grant on the parent, the write on the queue, how)
    let cases = [
        (
            "ON DELETE CASCADE",
            "DELETE",
            "DELETE",
            "deleting from parents, foreign key queue_parent ON DELETE CASCADE",
        ),
        (
            "ON DELETE SET NULL",
            "DELETE",
            "UPDATE",
            "deleting from parents, foreign key queue_parent ON DELETE SET NULL/DEFAULT",
        ),
        (
            "ON UPDATE CASCADE",
            "UPDATE (id)",
            "UPDATE",
            "updating parents, foreign key queue_parent ON UPDATE CASCADE/SET NULL/DEFAULT",
        ),
    ];
    for (action, grant, write, how) in cases {
        db.as_admin(&set_action(action)).await;
        passes(&db).await;
        db.as_admin(&format!("GRANT {grant} ON parents TO {runtime}"))
            .await;
        refused_for(
            &db,
            "public.queue",
            write,
            &format!("{runtime} ({how}) may do"),
        )
        .await;
        let findings = binding_findings(&db, "public.queue").await;
        assert!(
            findings.iter().any(|f| f.contains(&format!("({how})"))),
            "{action}: {findings:?}"
        );
        // The same grant with no action on the queue.
        db.as_admin(&set_action("ON DELETE NO ACTION ON UPDATE RESTRICT"))
            .await;
        passes(&db).await;
        db.as_admin(&format!("REVOKE {grant} ON parents FROM {runtime}"))
            .await;
    }
}

/// A cascade runs as the child's owner and fires the child's own referential actions, and a
/// write to a table above the parent reaches the parent's rows: a grant on the grandparent of
/// a chain of `ON DELETE CASCADE` keys, and a delete from (or an update moving a row out of)
/// the partitioned table above a referenced partition, each count as a write of the table.
/// The positive controls: each grant revoked, and the chain broken with the grant in place.
#[tokio::test]
async fn a_chain_of_referential_actions_and_the_parents_own_parents_count_too() {
    let _serial = SERIAL.lock().await;
    let db = fresh_database(&template()).await;
    let runtime = testkit::RUNTIME_ROLE;
    db.as_admin(&format!(
        "SET ROLE {owner};
         CREATE TABLE grand (id bigint PRIMARY KEY);
         CREATE TABLE mid (id bigint PRIMARY KEY, grand_id bigint);
         ALTER TABLE mid ADD CONSTRAINT mid_grand FOREIGN KEY (grand_id) REFERENCES grand
             ON DELETE CASCADE;
         CREATE TABLE pp (id bigint NOT NULL, k int NOT NULL) PARTITION BY LIST (k);
         CREATE TABLE p1 PARTITION OF pp FOR VALUES IN (1);
         CREATE TABLE p2 PARTITION OF pp FOR VALUES IN (2);
         ALTER TABLE p1 ADD UNIQUE (id);
         ALTER TABLE queue ADD COLUMN mid_id bigint, ADD COLUMN p_id bigint;
         ALTER TABLE queue ADD CONSTRAINT queue_mid FOREIGN KEY (mid_id) REFERENCES mid
             ON DELETE CASCADE;
         ALTER TABLE queue ADD CONSTRAINT queue_p1 FOREIGN KEY (p_id) REFERENCES p1 (id)
             ON DELETE CASCADE;
         RESET ROLE;",
        owner = testkit::OWNER_ROLE,
    ))
    .await;
    passes(&db).await;
    // (the grant, the write on the queue, how)
    let cases = [
        (
            "DELETE ON grand",
            "DELETE",
            "deleting from grand, foreign key queue_mid ON DELETE CASCADE",
        ),
        (
            "DELETE ON pp",
            "DELETE",
            "deleting from pp, foreign key queue_p1 ON DELETE CASCADE",
        ),
        (
            "UPDATE (k) ON pp",
            "DELETE",
            "updating pp, foreign key queue_p1 ON DELETE CASCADE",
        ),
    ];
    for (grant, write, how) in cases {
        db.as_admin(&format!("GRANT {grant} TO {runtime}")).await;
        refused_for(
            &db,
            "public.queue",
            write,
            &format!("{runtime} ({how}) may do"),
        )
        .await;
        db.as_admin(&format!("REVOKE {grant} FROM {runtime}")).await;
        passes(&db).await;
    }
    // The chain broken in its middle, the grant on the grandparent stays harmless.
    db.as_admin(&format!(
        "GRANT DELETE ON grand TO {runtime};
         ALTER TABLE mid DROP CONSTRAINT mid_grand;
         ALTER TABLE mid ADD CONSTRAINT mid_grand FOREIGN KEY (grand_id) REFERENCES grand;"
    ))
    .await;
    passes(&db).await;
}
