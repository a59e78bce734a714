//! Security review: attacks on rls-guard by an attacker who holds the runtime role (SQL
//! injection, a compromised app server) or who controls how a careless developer wrote the
//! schema.
//!
//! Tests marked "Found in review" reproduce a hole the review found (each with a positive
//! control) and now pass because it is fixed; the comment above each says what the hole was.
//! The other tests document attacks that were tried and were refused from the start.
// Integration tests: a failed unwrap is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use rls_guard::schema::{SUPPORT_SQL, tenant_table_sql};
use rls_guard::{BindingKey, RlsError, RoleProblem, TenantPool};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Connection, Row};
use tenant_scope::TenantId;
use testkit::{Role, Template, TestDb};

async fn owner_key(db: &TestDb) -> BindingKey {
    let mut owner = db.pool(Role::Owner, 1).await.acquire().await.unwrap();
    rls_guard::schema::binding_key(&mut owner).await.unwrap()
}

/// A fresh login role that is a member of the runtime role (so role-level changes made by an
/// attack stay out of the cluster-wide `testkit_runtime`).
async fn login_role(db: &TestDb) -> (PgConnectOptions, String) {
    let options = db
        .create_login_role(
            "rv",
            "NOSUPERUSER NOBYPASSRLS NOCREATEROLE NOREPLICATION INHERIT",
        )
        .await;
    let name = options.get_username().to_owned();
    db.as_admin(&format!("GRANT {} TO {name}", testkit::RUNTIME_ROLE))
        .await;
    (options, name)
}

async fn pool_of(options: &PgConnectOptions, max: u32) -> PgPool {
    PgPoolOptions::new()
        .max_connections(max)
        .connect_with(options.clone())
        .await
        .unwrap()
}

async fn count_projects(conn: &mut sqlx::PgConnection) -> i64 {
    sqlx::raw_sql("SELECT count(*) FROM projects")
        .fetch_one(&mut *conn)
        .await
        .unwrap()
        .get(0)
}

// Found in review, now refused: CREATE on the database is not refused. The start-up check refuses CREATE on every
// existing schema, but a role with CREATE on the database (as `GRANT ALL ON DATABASE` minus
// TEMPORARY, or `GRANT CREATE ON DATABASE`, gives) makes a schema of its own, named after itself:
// the default `search_path` (`"$user", public`) then resolves every unqualified name of every
// later session of the role there first. Injected SQL in tenant A's request plants a view
// `projects` that copies what each later request reads into a table A can read: tenant B's rows
// reach A, with signed bindings on.
#[tokio::test]
async fn create_on_the_database_lets_injected_sql_shadow_tenant_tables_for_later_requests() {
    let db = testkit::fresh_database(&signed_template()).await;
    let key = owner_key(&db).await;
    let (options, name) = login_role(&db).await;
    TenantPool::with_binding_key(pool_of(&options, 1).await, key.clone())
        .await
        .expect("positive control: the plain runtime role passes");

    db.as_admin(&format!("GRANT CREATE ON DATABASE {} TO {name}", db.name()))
        .await;
    let pool = match TenantPool::with_binding_key(pool_of(&options, 1).await, key).await {
        Err(RlsError::UnsafeRuntimeRole { .. }) => return, // refused at start-up: fixed
        Err(other) => panic!("unexpected error: {other}"),
        Ok(pool) => pool,
    };
    let (a, b) = (TenantId::new_random(), TenantId::new_random());
    add_project(&pool, b, "b-secret").await;

    // Tenant A's request, SQL injected: a schema named after the role, a loot table, a view
    // that shadows `projects` for every later session of the role.
    let mut tx = pool.begin(&ctx(a)).await.unwrap();
    sqlx::raw_sql(&format!(
        "CREATE SCHEMA {name}; \
         CREATE TABLE {name}.loot (tenant_id uuid, name text); \
         CREATE FUNCTION {name}.steal(t uuid, n text) RETURNS boolean LANGUAGE sql VOLATILE \
             AS $$ INSERT INTO {name}.loot VALUES (t, n) RETURNING true $$; \
         CREATE VIEW {name}.projects AS \
             SELECT p.* FROM public.projects p WHERE {name}.steal(p.tenant_id, p.name);"
    ))
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();

    // Tenant B's request: ordinary application code, an unqualified table name.
    let mut tx = pool.begin(&ctx(b)).await.unwrap();
    let names: Vec<String> = sqlx::query_scalar("SELECT name FROM projects ORDER BY name")
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    assert_eq!(names, vec!["b-secret".to_owned()], "B sees its own row");
    tx.commit().await.unwrap();

    // Tenant A again: reads what B's request copied out.
    let mut tx = pool.begin(&ctx(a)).await.unwrap();
    let stolen: Vec<String> = sqlx::raw_sql(&format!("SELECT name FROM {name}.loot"))
        .fetch_all(&mut *tx)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    tx.rollback().await.unwrap();
    assert!(
        stolen.is_empty(),
        "FINDING: a runtime role with CREATE on the database was accepted, and tenant A's \
         injected SQL collected tenant B's rows through a shadowing `{name}.projects`: {stolen:?}"
    );
}

/// The isolation schema's `projects` with both tenant policies spelled on the raw setting
/// (what `app.current_tenant_id()` does without signed bindings) instead of the getter.
const RAW_SETTING_POLICIES: &str = "
DROP POLICY tenant_isolation ON projects; DROP POLICY tenant_access ON projects;
CREATE POLICY tenant_isolation ON projects AS RESTRICTIVE FOR ALL
    USING (tenant_id = NULLIF(pg_catalog.current_setting('app.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(pg_catalog.current_setting('app.tenant_id', true), '')::uuid);
CREATE POLICY tenant_access ON projects AS PERMISSIVE FOR ALL
    USING (tenant_id = NULLIF(pg_catalog.current_setting('app.tenant_id', true), '')::uuid)
    WITH CHECK (tenant_id = NULLIF(pg_catalog.current_setting('app.tenant_id', true), '')::uuid);";

// Found in review, now refused: with signed bindings enforced, a policy that reads the tenant setting directly
// (`current_setting('app.tenant_id')`, equivalent to the getter in the unsigned mode) instead of
// `app.current_tenant_id()` ignores the proof. Neither `TenantPool::with_binding_key` nor
// `rls-guard check` notices (every probe sets the setting to a tenant that owns no row, so the
// probe cannot tell a proof-checking policy from one that trusts the setting), and an injected
// `set_config` reads another tenant's rows.
#[tokio::test]
async fn a_policy_on_the_raw_setting_defeats_signed_bindings_unnoticed() {
    let db = testkit::fresh_database(&signed_template()).await;
    let key = owner_key(&db).await;
    assert_eq!(
        coverage(&db).await,
        vec![],
        "positive control: pristine schema"
    );
    let (a, b) = (TenantId::new_random(), TenantId::new_random());
    {
        // Positive control: with the getter, an injected set_config binds nothing.
        let pool = TenantPool::with_binding_key(db.pool(Role::Runtime, 1).await, key.clone())
            .await
            .unwrap();
        add_project(&pool, b, "b-secret").await;
        let mut tx = pool.begin(&ctx(a)).await.unwrap();
        sqlx::raw_sql(&format!("SELECT set_config('app.tenant_id', '{b}', true)"))
            .execute(&mut *tx)
            .await
            .unwrap();
        assert_eq!(count_projects(&mut tx).await, 0, "positive control");
        tx.rollback().await.unwrap();
    }

    db.as_admin(RAW_SETTING_POLICIES).await;
    let findings = coverage(&db).await;
    let started = TenantPool::with_binding_key(db.pool(Role::Runtime, 1).await, key).await;
    let leaked = match &started {
        Ok(pool) => {
            let mut tx = pool.begin(&ctx(a)).await.unwrap();
            sqlx::raw_sql(&format!("SELECT set_config('app.tenant_id', '{b}', true)"))
                .execute(&mut *tx)
                .await
                .unwrap();
            let n = count_projects(&mut tx).await;
            tx.rollback().await.unwrap();
            n
        }
        Err(_) => 0,
    };
    assert!(
        !findings.is_empty() && started.is_err(),
        "FINDING: a policy on the raw setting passed the coverage check ({findings:?}) and \
         start-up ({:?}); injected set_config in tenant A's transaction saw {leaked} row(s) of B",
        started.as_ref().map(|_| "accepted")
    );
}

// Found in review, now refused: the probe never binds an actor. A policy that admits other tenants' rows only while
// `app.actor_id` is set (here, a careless "any signed-in user" clause) passes the start-up probe
// and `rls-guard check` (every probe leaves the actor unset, also when it reads the rows already
// in the table), yet every `TenantTx` of a user context sets an actor: in normal operation tenant
// A's requests see tenant B's rows.
#[tokio::test]
async fn a_policy_that_leaks_only_with_an_actor_bound_is_found() {
    let f = fixture(1).await;
    let (a, b) = (TenantId::new_random(), TenantId::new_random());
    add_project(&f.pool, b, "b-secret").await;
    assert_eq!(coverage(&f.db).await, vec![], "positive control");
    assert_eq!(visible(&f.pool, a).await, vec![], "positive control");
    let leaky = "tenant_id = (SELECT app.current_tenant_id()) \
                 OR (SELECT app.current_actor_id()) IS NOT NULL";
    f.db.as_admin(&format!(
        "DROP POLICY tenant_isolation ON projects; DROP POLICY tenant_access ON projects; \
         CREATE POLICY tenant_isolation ON projects AS RESTRICTIVE FOR ALL \
             USING ({leaky}) WITH CHECK ({leaky}); \
         CREATE POLICY tenant_access ON projects AS PERMISSIVE FOR ALL \
             USING ({leaky}) WITH CHECK ({leaky});"
    ))
    .await;
    let findings = coverage(&f.db).await;
    let started = TenantPool::new(f.db.pool(Role::Runtime, 1).await).await;
    let seen = visible(&f.pool, a).await;
    assert!(
        !findings.is_empty() || started.is_err(),
        "FINDING: the coverage check ({findings:?}) and the start-up probe (accepted) pass a \
         policy that shows tenant A every tenant's rows whenever an actor is bound: A sees {seen:?}"
    );
}

fn partitioned_template() -> Template {
    Template::new(
        "rls_guard_review_partitioned",
        format!(
            "{SUPPORT_SQL}
            CREATE TABLE events (
                tenant_id uuid NOT NULL,
                id uuid NOT NULL DEFAULT gen_random_uuid(),
                at date NOT NULL,
                body text,
                PRIMARY KEY (tenant_id, id, at)
            ) PARTITION BY RANGE (at);
            CREATE TABLE events_2026 PARTITION OF events
                FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
            {}
            GRANT SELECT, INSERT, UPDATE, DELETE ON events TO testkit_runtime;",
            tenant_table_sql("events").unwrap()
        ),
    )
}

// Found in review (a false positive, now fixed): a partitioned tenant table made safe with `tenant_table_sql` on the
// partitioned table (the only place the policies apply when the runtime role reaches the rows,
// through the parent) is refused at start-up: the statement-level recording triggers are not
// cloned to partitions, so the support check demands them on every partition, and
// `tenant_table_sql` cannot be run on a partition (it drops the cloned constraint trigger,
// which PostgreSQL refuses). A correct partitioned schema can never start.
#[tokio::test]
async fn a_partitioned_tenant_table_built_with_the_helper_is_accepted() {
    let db = testkit::fresh_database(&partitioned_template()).await;
    let runtime = db.pool(Role::Runtime, 1).await;
    // The schema is safe: the partition is out of the runtime role's reach, ...
    let err = sqlx::raw_sql("SELECT count(*) FROM events_2026")
        .fetch_one(&runtime)
        .await
        .unwrap_err();
    assert_eq!(
        err.as_database_error().unwrap().code().as_deref(),
        Some("42501")
    );
    // ... and through the parent the policies hold for an unbound connection.
    let n: i64 = sqlx::raw_sql("SELECT count(*) FROM events")
        .fetch_one(&runtime)
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    // The helper cannot be run on the partition either.
    let owner = db.pool(Role::Owner, 1).await;
    let on_partition = sqlx::raw_sql(&tenant_table_sql("events_2026").unwrap())
        .execute(&owner)
        .await;
    let started = TenantPool::new(runtime).await;
    assert!(
        started.is_ok(),
        "FINDING: a correct partitioned tenant table is refused at start-up: {:?} \
         (tenant_table_sql on the partition: {:?})",
        started.err(),
        on_partition.err().map(|e| e.to_string())
    );
}

/// A partition the runtime role may write directly is refused at start-up: PostgreSQL runs the
/// partitioned table's statement triggers, which keep the record of what a transaction wrote,
/// only for writes made through it, so one transaction could write another tenant's rows into
/// the partition unrecorded. A migration role's default privileges (`GRANT .. ON TABLES` without
/// `IN SCHEMA`) grant exactly this to every partition it creates. Control: revoked, it starts.
#[tokio::test]
async fn a_partition_the_runtime_role_may_write_directly_is_refused() {
    let db = testkit::fresh_database(&partitioned_template()).await;
    for grant in ["INSERT", "UPDATE (body)", "DELETE"] {
        db.as_admin(&format!(
            "GRANT {grant} ON events_2026 TO {}",
            testkit::RUNTIME_ROLE
        ))
        .await;
        let refused = TenantPool::new(db.pool(Role::Runtime, 1).await).await;
        let message = refused
            .as_ref()
            .err()
            .map(ToString::to_string)
            .unwrap_or_default();
        assert!(
            message.contains("events_2026") && message.contains("directly"),
            "{grant}: {refused:?}"
        );
        db.as_admin(&format!(
            "REVOKE {grant} ON events_2026 FROM {}",
            testkit::RUNTIME_ROLE
        ))
        .await;
        TenantPool::new(db.pool(Role::Runtime, 1).await)
            .await
            .expect("control: without the grant it starts");
    }
}

// Found in review, now refused: a rule on a table without `tenant_id` is not looked at. Rule actions run with the
// rights of the rule's table owner; when that is a superuser (migrations run as `postgres`) or a
// BYPASSRLS role, an `INSERT` the runtime role may make into an innocent log table returns every
// tenant's rows. `rls-guard check` reports nothing (it looks at rules on tenant tables only).
#[tokio::test]
async fn a_rule_on_a_table_without_tenant_id_owned_by_a_superuser_is_found() {
    let f = fixture(1).await;
    let (a, b) = (TenantId::new_random(), TenantId::new_random());
    add_project(&f.pool, b, "b-secret").await;
    assert_eq!(coverage(&f.db).await, vec![], "positive control");

    f.db.as_admin(&format!(
        "CREATE TABLE public.search_log (q text); \
         GRANT INSERT ON public.search_log TO {}; \
         CREATE RULE search_projects AS ON INSERT TO public.search_log \
             DO INSTEAD SELECT tenant_id, name FROM public.projects WHERE name LIKE NEW.q;",
        testkit::RUNTIME_ROLE
    ))
    .await;
    // Tenant A, as the runtime role, in its own bound transaction.
    let mut tx = f.pool.begin(&ctx(a)).await.unwrap();
    let rows: Vec<String> = sqlx::raw_sql("INSERT INTO search_log VALUES ('%')")
        .fetch_all(&mut *tx)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<String, _>(1))
        .collect();
    tx.rollback().await.unwrap();
    let findings = coverage(&f.db).await;
    assert!(
        findings
            .iter()
            .any(|f| f.object.contains("search_log") || f.detail.contains("search_projects")),
        "FINDING: tenant A read {rows:?} through a superuser-owned rule on a table without \
         tenant_id; the coverage check found nothing about it: {findings:?}"
    );
}

// Found in review (a false positive, now fixed): the start-up probe counts any error of its `UPDATE`/`DELETE` other
// than class 22 as "reaches existing rows". A lock held by another session (a non-concurrent
// `CREATE INDEX` during a rolling deploy) makes the probe's `UPDATE` time out (55P03, after the
// probe's 5 s `lock_timeout`), and a correct schema is refused as `PolicyLeaks`.
#[tokio::test]
async fn a_lock_held_elsewhere_is_not_reported_as_a_leaking_policy() {
    let db = testkit::fresh_database(&template()).await;
    TenantPool::new(db.pool(Role::Runtime, 1).await)
        .await
        .expect("positive control");
    let mut admin = sqlx::PgConnection::connect_with(&db.options(Role::Admin))
        .await
        .unwrap();
    sqlx::raw_sql("BEGIN; LOCK TABLE tasks IN SHARE MODE")
        .execute(&mut admin)
        .await
        .unwrap();
    let started = TenantPool::new(db.pool(Role::Runtime, 1).await).await;
    sqlx::raw_sql("ROLLBACK").execute(&mut admin).await.unwrap();
    assert!(
        !matches!(started, Err(RlsError::PolicyLeaks(_))),
        "FINDING: a lock held by another session is reported as a leaking policy: {:?}",
        started.err()
    );
}

/// Replays, after a stacked `COMMIT; BEGIN`, the proof captured in an earlier transaction on
/// the same connection, and returns how many of the tenant's rows the replay sees.
async fn replay_own_proof(pool: &TenantPool, tenant: TenantId) -> i64 {
    let context = ctx(tenant);
    let mut tx = pool.begin(&context).await.unwrap();
    let captured = sqlx::raw_sql(
        "SELECT current_setting('app.tenant_id'), current_setting('app.actor_id'), \
                current_setting('app.binding_proof')",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    let (t, actor, proof): (String, String, String) =
        (captured.get(0), captured.get(1), captured.get(2));
    assert_eq!(count_projects(&mut tx).await, 1, "bound by the application");
    tx.commit().await.unwrap();
    // Later, on the same connection: injected SQL ends the application's transaction and
    // replays the captured binding in one of its own.
    let mut tx = pool.begin(&ctx(TenantId::new_random())).await.unwrap();
    sqlx::raw_sql(&format!(
        "COMMIT; BEGIN; SET LOCAL app.tenant_id = '{t}'; SET LOCAL app.actor_id = '{actor}'; \
         SET LOCAL app.binding_proof = '{proof}'"
    ))
    .execute(&mut *tx)
    .await
    .unwrap();
    let n = count_projects(&mut tx).await;
    drop(tx); // closes the connection
    n
}

// Found in review, now refused: the runtime role may `ALTER ROLE CURRENT_USER SET extra_float_digits = -15` (from
// injected SQL), a default that every later server connection of the role starts with and that
// `RESET ALL` returns to. sqlx overrides it with a startup parameter (`extra_float_digits=2`) on
// direct connections, but PgBouncer is commonly configured, as testkit's is, with
// `ignore_startup_parameters = extra_float_digits`: behind it the default holds. The proof
// prints the transaction's start with float8 output, which then rounds to `2e+09`: the proof
// stops changing between transactions, and a proof captured in one transaction binds in any
// later transaction on that server connection (after a stacked `COMMIT; BEGIN`, which the README
// says cannot bind "any tenant, not even its own"). The start-up check did not look at role
// settings (it does now: `RoleProblem::SessionDefault`).
#[tokio::test]
async fn a_role_default_for_extra_float_digits_makes_proofs_replayable_behind_pgbouncer() {
    let db = testkit::fresh_database(&signed_template()).await;
    let key = owner_key(&db).await;
    let (options, name) = login_role(&db).await;
    let a = TenantId::new_random();
    {
        let pool = TenantPool::with_binding_key(pool_of(&options, 1).await, key.clone())
            .await
            .unwrap();
        add_project(&pool, a, "a-project").await;
        // Injected SQL in one request: a default for every later connection of the role.
        let mut tx = pool.begin(&ctx(a)).await.unwrap();
        sqlx::raw_sql("ALTER ROLE CURRENT_USER SET extra_float_digits = -15")
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        // Positive control: on a direct sqlx connection (this pool's next one starts after the
        // ALTER) the startup parameter overrides the default, and a replayed proof binds nothing.
        assert_eq!(replay_own_proof(&pool, a).await, 0, "positive control");
        // A pool made now is refused at start-up: the role carries a default it set itself.
        match TenantPool::with_binding_key(pool_of(&options, 1).await, key.clone()).await {
            Err(RlsError::UnsafeRuntimeRole { problems, .. }) => assert_eq!(
                problems,
                vec![RoleProblem::SessionDefault("extra_float_digits".into())]
            ),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
    let bouncer = testkit::require(testkit::PgBouncer::start(
        db.server(),
        testkit::PoolMode::Transaction,
        1,
        &[name.as_str()],
    ));
    let raw = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(bouncer.options(&name, db.name()))
        .await
        .unwrap();
    // Behind PgBouncer too: refused at start-up, before any proof is made.
    match TenantPool::with_binding_key(raw, key).await {
        Err(RlsError::UnsafeRuntimeRole { problems, .. }) => assert_eq!(
            problems,
            vec![RoleProblem::SessionDefault("extra_float_digits".into())]
        ),
        Err(other) => panic!("unexpected error: {other}"),
        Ok(pool) => {
            let seen = replay_own_proof(&pool, a).await;
            panic!("a role with its own session default was accepted (replay saw {seen} row(s))");
        }
    }
}

// Found in review, now refused: the record of writes can be erased. `app.verify_binding_writes(expected)` is
// executable by PUBLIC and, when every record of the transaction names `expected`, deletes them.
// Injected SQL that switched to tenant B, wrote B's row, forged `app.commit_binding` and fired
// the deferred check early (where it passes) calls `app.verify_binding_writes('B')` itself:
// the record naming B is gone, and the application's own `TenantTx::commit` (bound to A)
// succeeds with B's row in it. The README says the record is one "it can neither erase nor
// forge"; the existing test of this dance tries only a plain `DELETE`. (Unsigned mode; with
// signed bindings the policies refuse the write to B in the first place.)
#[tokio::test]
async fn the_record_of_writes_is_erased_by_calling_verify_for_the_other_tenant() {
    let f = fixture(1).await;
    let (a, b) = (TenantId::new_random(), TenantId::new_random());
    let context = ctx(a);
    let actor = context.actor().unwrap().id().to_string();
    for erase in [false, true] {
        let mut tx = f.pool.begin(&context).await.unwrap();
        let verify = if erase {
            format!("SELECT app.verify_binding_writes('{b}');")
        } else {
            String::new()
        };
        sqlx::raw_sql(&format!(
            "SET LOCAL app.tenant_id = '{b}'; SET LOCAL app.actor_id = ''; \
             INSERT INTO projects (tenant_id, name) VALUES ('{b}', 'planted'); \
             SET LOCAL app.commit_binding = '{b}:'; \
             SET CONSTRAINTS ALL IMMEDIATE; SET CONSTRAINTS ALL DEFERRED; {verify} \
             SET LOCAL app.tenant_id = '{a}'; SET LOCAL app.actor_id = '{actor}'; \
             SET LOCAL app.commit_binding = ''"
        ))
        .execute(&mut *tx)
        .await
        .unwrap();
        let result = tx.commit().await;
        if erase {
            assert!(
                matches!(result, Err(RlsError::BindingChanged)),
                "FINDING: tenant A's transaction committed a row of tenant B after erasing the \
                 record with app.verify_binding_writes('{b}'): commit returned {result:?}, \
                 B now sees {:?}",
                visible(&f.pool, b).await
            );
        } else {
            // The positive control: without the erasure, the record catches the write.
            assert!(
                matches!(result, Err(RlsError::BindingChanged)),
                "{result:?}"
            );
        }
        assert_eq!(count_all(&f.db, "projects").await, 0);
    }
}

/// Documents a limitation the README understates: without signed bindings, injected SQL that
/// ends the transaction itself (`..; COMMIT`) after restating `app.commit_binding` for another
/// tenant commits a write to that tenant, and `TenantTx::commit` then succeeds. ("writes are
/// caught at commit" holds only when the application's own commit ends the transaction.) This
/// test passes today: it asserts what happens.
#[tokio::test]
async fn unsigned_mode_cannot_stop_a_stacked_commit_that_restates_the_binding() {
    let f = fixture(1).await;
    let (a, b) = (TenantId::new_random(), TenantId::new_random());
    let mut tx = f.pool.begin(&ctx(a)).await.unwrap();
    sqlx::raw_sql(&format!(
        "SET LOCAL app.tenant_id = '{b}'; SET LOCAL app.actor_id = ''; \
         SET LOCAL app.commit_binding = '{b}:'; \
         INSERT INTO projects (tenant_id, name) VALUES ('{b}', 'planted'); COMMIT"
    ))
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        visible(&f.pool, b).await,
        vec![(*b.as_uuid(), "planted".to_owned())],
        "the planted row of another tenant committed"
    );
}

/// Held: the role defaults that would switch a control off cannot be set by the runtime role
/// itself (`session_replication_role` needs SET privilege; a placeholder such as
/// `app.tenant_id` or `app.commit_binding` is refused to non-superusers).
#[tokio::test]
async fn the_runtime_role_cannot_persist_controls_as_role_defaults() {
    let db = testkit::fresh_database(&template()).await;
    let (options, _) = login_role(&db).await;
    let mut conn = sqlx::PgConnection::connect_with(&options).await.unwrap();
    for setting in [
        "session_replication_role = replica",
        "app.tenant_id = '00000000-0000-0000-0000-000000000001'",
        "app.commit_binding = 'x:'",
        "row_security = off",
    ] {
        let result = sqlx::raw_sql(&format!("ALTER ROLE CURRENT_USER SET {setting}"))
            .execute(&mut conn)
            .await;
        if setting.starts_with("row_security") {
            // Allowed, but harmless: with row_security off a policy makes the query fail.
            result.unwrap();
            let err = sqlx::raw_sql("SET row_security = off; SELECT count(*) FROM projects")
                .execute(&mut conn)
                .await
                .unwrap_err();
            assert_eq!(
                err.as_database_error().unwrap().code().as_deref(),
                Some("42501"),
                "{err}"
            );
        } else {
            let err = result.unwrap_err();
            assert_eq!(
                err.as_database_error().unwrap().code().as_deref(),
                Some("42501"),
                "{setting}: {err}"
            );
        }
    }
}

/// Held: the common `GRANT ALL ON DATABASE` is refused (through its TEMPORARY), and CREATE on a
/// schema created later by someone else and granted to PUBLIC is refused at the next start.
#[tokio::test]
async fn grant_all_on_the_database_and_create_on_a_new_schema_are_refused() {
    let db = testkit::fresh_database(&template()).await;
    let (options, name) = login_role(&db).await;
    TenantPool::new(pool_of(&options, 1).await)
        .await
        .expect("positive control");
    db.as_admin(&format!("GRANT ALL ON DATABASE {} TO {name}", db.name()))
        .await;
    match TenantPool::new(pool_of(&options, 1).await).await {
        Err(RlsError::UnsafeRuntimeRole { problems, .. }) => assert!(
            problems.contains(&RoleProblem::Temporary(db.name().to_owned())),
            "{problems:?}"
        ),
        other => panic!("expected a refusal, got {other:?}"),
    }
    db.as_admin(&format!(
        "REVOKE ALL ON DATABASE {db} FROM {name}; GRANT CONNECT ON DATABASE {db} TO {name}; \
         CREATE SCHEMA reports; GRANT USAGE, CREATE ON SCHEMA reports TO PUBLIC;",
        db = db.name()
    ))
    .await;
    match TenantPool::new(pool_of(&options, 1).await).await {
        Err(RlsError::UnsafeRuntimeRole { problems, .. }) => assert_eq!(
            problems,
            vec![RoleProblem::CreateOnSchema("reports".into())]
        ),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Held: with signed bindings, injected SQL cannot bind another tenant by spelling the tenant
/// differently (upper case, braces, no hyphens) with the application's own signature, nor reuse
/// a signature issued for its tenant with another `issued_at`.
#[tokio::test]
async fn a_signature_does_not_stretch_to_another_spelling_or_time() {
    let f = signed_fixture(1).await;
    let a = TenantId::new_random();
    add_project(&f.pool, a, "a-project").await;
    let signed = f.pool.signed_binding(&ctx(a)).await.unwrap().unwrap();
    let spellings = [
        signed.tenant.to_uppercase(),
        format!("{{{}}}", signed.tenant),
        signed.tenant.replace('-', ""),
    ];
    let mut conn = f.raw.acquire().await.unwrap();
    // Positive control: the signature as issued binds.
    sqlx::raw_sql("BEGIN").execute(&mut *conn).await.unwrap();
    sqlx::query("SELECT app.bind($1, $2, $3, $4)")
        .bind(&signed.tenant)
        .bind(&signed.actor)
        .bind(&signed.issued_at)
        .bind(&signed.signature)
        .execute(&mut *conn)
        .await
        .unwrap();
    assert_eq!(count_projects(&mut conn).await, 1, "positive control");
    sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await.unwrap();
    let later = (signed.issued_at.parse::<u64>().unwrap() + 1).to_string();
    for (tenant, issued_at) in spellings
        .iter()
        .map(|t| (t.as_str(), signed.issued_at.as_str()))
        .chain([(signed.tenant.as_str(), later.as_str())])
    {
        sqlx::raw_sql("BEGIN").execute(&mut *conn).await.unwrap();
        let err = sqlx::query("SELECT app.bind($1, $2, $3, $4)")
            .bind(tenant)
            .bind(&signed.actor)
            .bind(issued_at)
            .bind(&signed.signature)
            .execute(&mut *conn)
            .await
            .unwrap_err();
        assert_eq!(
            err.as_database_error().unwrap().code().as_deref(),
            Some("TB002"),
            "{tenant} {issued_at}: {err}"
        );
        sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await.unwrap();
    }
}
