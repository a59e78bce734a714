//! Attacks on the start-up check: every role shape and support-schema change that would let the
//! runtime role bypass row-level security, or switch the controls around it off, is refused by
//! `TenantPool::new` with a message naming it; the same role without the defect passes (the
//! positive control in each test).
// Integration tests: a failed unwrap is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use rls_guard::{RlsError, RoleProblem, TenantPool};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use testkit::{Role, TestDb};

async fn try_pool(options: PgConnectOptions) -> Result<TenantPool, RlsError> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .unwrap();
    TenantPool::new(pool).await
}

/// A fresh database and a fresh login role with the runtime role's privileges (a member of
/// it): the positive control is that this role passes.
async fn setup() -> (TestDb, PgConnectOptions, String) {
    let db = testkit::fresh_database(&common::template()).await;
    let options = db
        .create_login_role(
            "rt",
            "NOSUPERUSER NOBYPASSRLS NOCREATEROLE NOREPLICATION INHERIT",
        )
        .await;
    let name = options.get_username().to_owned();
    db.as_admin(&format!("GRANT {} TO {name}", testkit::RUNTIME_ROLE))
        .await;
    try_pool(options.clone())
        .await
        .expect("positive control: the plain runtime role passes");
    (db, options, name)
}

async fn refused_with(options: PgConnectOptions) -> (Vec<RoleProblem>, String) {
    match try_pool(options).await {
        Err(error @ RlsError::UnsafeRuntimeRole { .. }) => {
            let message = error.to_string();
            let RlsError::UnsafeRuntimeRole { problems, .. } = error else {
                unreachable!()
            };
            (problems, message)
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn replication_is_refused_directly_and_through_membership() {
    let (db, options, name) = setup().await;
    db.as_admin(&format!("ALTER ROLE {name} REPLICATION")).await;
    let (problems, message) = refused_with(options.clone()).await;
    assert_eq!(problems, vec![RoleProblem::Replication]);
    assert!(message.contains("REPLICATION"), "{message}");

    db.as_admin(&format!(
        "ALTER ROLE {name} NOREPLICATION; CREATE ROLE {name}_repl NOLOGIN REPLICATION; \
         CREATE ROLE {name}_hop NOLOGIN NOINHERIT; GRANT {name}_repl TO {name}_hop; \
         GRANT {name}_hop TO {name};"
    ))
    .await;
    let (problems, _) = refused_with(options.clone()).await;
    assert_eq!(
        problems,
        vec![RoleProblem::MemberOfPrivileged(format!("{name}_repl"))]
    );
    db.as_admin(&format!("REVOKE {name}_hop FROM {name}")).await;
    try_pool(options).await.unwrap();
}

#[tokio::test]
async fn server_file_and_all_data_roles_are_refused_through_any_path() {
    let (db, options, name) = setup().await;
    for role in [
        "pg_execute_server_program",
        "pg_read_server_files",
        "pg_write_server_files",
        "pg_read_all_data",
        "pg_write_all_data",
    ] {
        // Two hops, the middle one NOINHERIT: the role can still SET ROLE down the chain.
        db.as_admin(&format!(
            "CREATE ROLE {name}_{role} NOLOGIN NOINHERIT; GRANT {role} TO {name}_{role}; \
             GRANT {name}_{role} TO {name};"
        ))
        .await;
        let (mut problems, message) = refused_with(options.clone()).await;
        // Reading or writing every table reaches the support tables too.
        if role.ends_with("_all_data") {
            assert_eq!(
                problems.split_off(1),
                [
                    RoleProblem::SupportTablePrivilege("app.binding_keys".into()),
                    RoleProblem::SupportTablePrivilege("app.binding_writes".into())
                ]
            );
        }
        assert_eq!(
            problems,
            vec![RoleProblem::MemberOfServerRole(role.to_owned())]
        );
        assert!(message.contains(role), "{message}");
        db.as_admin(&format!("REVOKE {name}_{role} FROM {name}"))
            .await;
        try_pool(options.clone()).await.unwrap();
    }
}

#[tokio::test]
async fn owning_the_support_schema_its_functions_or_the_database_is_refused() {
    let (db, options, name) = setup().await;
    let owner = testkit::OWNER_ROLE;
    db.as_admin(&format!(
        "CREATE ROLE {name}_own NOLOGIN; GRANT {name}_own TO {name}; \
         ALTER FUNCTION app.current_tenant_id() OWNER TO {name}_own;"
    ))
    .await;
    let (problems, _) = refused_with(options.clone()).await;
    assert!(
        problems.contains(&RoleProblem::OwnsSupportObject(
            "function app.current_tenant_id()".into()
        )),
        "{problems:?}"
    );
    db.as_admin(&format!(
        "ALTER FUNCTION app.current_tenant_id() OWNER TO {owner}; \
         ALTER SCHEMA app OWNER TO {name}_own;"
    ))
    .await;
    let (problems, _) = refused_with(options.clone()).await;
    assert!(
        problems.contains(&RoleProblem::OwnsSupportObject("schema app".into())),
        "{problems:?}"
    );
    db.as_admin(&format!(
        "ALTER SCHEMA app OWNER TO {owner}; ALTER DATABASE {} OWNER TO {name}_own;",
        db.name()
    ))
    .await;
    let (problems, message) = refused_with(options.clone()).await;
    assert!(
        problems.contains(&RoleProblem::OwnsDatabase(db.name().to_owned())),
        "{problems:?}"
    );
    assert!(message.contains("owns the database"), "{message}");
    db.as_admin(&format!("ALTER DATABASE {} OWNER TO {owner}", db.name()))
        .await;
    try_pool(options).await.unwrap();
}

#[tokio::test]
async fn truncate_trigger_and_references_on_a_protected_table_are_refused() {
    let (db, options, name) = setup().await;
    for (grant, privilege) in [
        ("TRUNCATE ON projects", "TRUNCATE"),
        ("TRIGGER ON projects", "TRIGGER"),
        ("REFERENCES ON projects", "REFERENCES"),
        ("REFERENCES (name) ON projects", "REFERENCES"),
    ] {
        // Granted to PUBLIC: every role holds it.
        db.as_admin(&format!("GRANT {grant} TO PUBLIC")).await;
        let (problems, message) = refused_with(options.clone()).await;
        assert_eq!(
            problems,
            vec![RoleProblem::TablePrivilege {
                table: "public.projects".into(),
                privilege: privilege.into()
            }],
            "{grant}"
        );
        assert!(message.contains(privilege), "{message}");
        db.as_admin(&format!("REVOKE {grant} FROM PUBLIC")).await;
        try_pool(options.clone()).await.unwrap();
    }
    let _ = name;
}

/// The support tables (the binding keys, the record of writes) are the owner's functions' alone:
/// a privilege on one, granted directly, through a role the runtime role is a member of, or to
/// PUBLIC (as a migration role's `ALTER DEFAULT PRIVILEGES` without `IN SCHEMA` would), would
/// let it read the key and sign any binding, or erase the record of writes. Control: revoked,
/// the role passes.
#[tokio::test]
async fn a_privilege_on_a_support_table_is_refused() {
    let (db, options, name) = setup().await;
    db.as_admin(&format!(
        "CREATE ROLE {name}_grp NOLOGIN; GRANT {name}_grp TO {name}"
    ))
    .await;
    for (table, privilege, grantee) in [
        ("app.binding_keys", "SELECT", name.clone()),
        ("app.binding_keys", "INSERT", format!("{name}_grp")),
        ("app.binding_writes", "DELETE", "PUBLIC".to_owned()),
        ("app.binding_keys", "SELECT (secret)", name.clone()),
    ] {
        db.as_admin(&format!("GRANT {privilege} ON {table} TO {grantee}"))
            .await;
        let (problems, message) = refused_with(options.clone()).await;
        assert_eq!(
            problems,
            vec![RoleProblem::SupportTablePrivilege(table.into())],
            "{privilege} on {table} to {grantee}"
        );
        assert!(message.contains(table), "{message}");
        db.as_admin(&format!("REVOKE {privilege} ON {table} FROM {grantee}"))
            .await;
        try_pool(options.clone()).await.unwrap();
    }
}

#[tokio::test]
async fn create_on_a_schema_temporary_and_session_replication_role_are_refused() {
    let (db, options, name) = setup().await;
    db.as_admin(&format!("GRANT CREATE ON SCHEMA public TO {name}"))
        .await;
    let (problems, _) = refused_with(options.clone()).await;
    assert_eq!(problems, vec![RoleProblem::CreateOnSchema("public".into())]);
    db.as_admin(&format!(
        "REVOKE CREATE ON SCHEMA public FROM {name}; GRANT CREATE ON SCHEMA app TO PUBLIC"
    ))
    .await;
    let (problems, _) = refused_with(options.clone()).await;
    assert_eq!(problems, vec![RoleProblem::CreateOnSchema("app".into())]);
    db.as_admin(&format!(
        "REVOKE CREATE ON SCHEMA app FROM PUBLIC; GRANT TEMPORARY ON DATABASE {} TO {name}",
        db.name()
    ))
    .await;
    let (problems, message) = refused_with(options.clone()).await;
    assert_eq!(problems, vec![RoleProblem::Temporary(db.name().to_owned())]);
    assert!(message.contains("TEMPORARY"), "{message}");
    db.as_admin(&format!(
        "REVOKE TEMPORARY ON DATABASE {} FROM {name}; \
         GRANT SET ON PARAMETER session_replication_role TO {name}",
        db.name()
    ))
    .await;
    let (problems, _) = refused_with(options.clone()).await;
    assert_eq!(
        problems,
        vec![RoleProblem::SetParameter("session_replication_role".into())]
    );
    db.as_admin(&format!(
        "REVOKE SET ON PARAMETER session_replication_role FROM {name}"
    ))
    .await;
    try_pool(options).await.unwrap();
}

/// The support schema is pinned: each change an owner-level mistake (or an attacker who once
/// held the owner) could make is refused, and restoring `SUPPORT_SQL` passes again.
#[tokio::test]
async fn a_changed_support_function_is_refused() {
    let db = testkit::fresh_database(&common::template()).await;
    let runtime = db.options(Role::Runtime);
    try_pool(runtime.clone()).await.unwrap();
    let owner = db.pool(Role::Owner, 1).await;
    for change in [
        // One changed character: binds every unbound session to a fixed tenant.
        "CREATE OR REPLACE FUNCTION app.current_tenant_id() RETURNS uuid LANGUAGE sql STABLE \
         AS $$ SELECT coalesce(NULLIF(pg_catalog.current_setting('app.tenant_id', true), ''), \
         '00000000-0000-0000-0000-000000000001')::pg_catalog.uuid $$",
        // Same body, IMMUTABLE: a cached plan could carry one tenant's answer into another's.
        "ALTER FUNCTION app.current_tenant_id() IMMUTABLE",
        "ALTER FUNCTION app.current_tenant_id() SECURITY DEFINER",
        "ALTER FUNCTION app.current_tenant_id() SET search_path = public",
        "ALTER FUNCTION app.check_row_binding() STABLE",
    ] {
        sqlx::raw_sql(change).execute(&owner).await.unwrap();
        match try_pool(runtime.clone()).await {
            Err(RlsError::SupportSchemaMismatch(problems)) => {
                assert!(!problems.is_empty(), "{change}");
            }
            other => panic!("{change}: expected a refusal, got {other:?}"),
        }
        sqlx::raw_sql(rls_guard::schema::SUPPORT_SQL)
            .execute(&owner)
            .await
            .unwrap();
        // RESET clauses are not part of SUPPORT_SQL's CREATE OR REPLACE: undo them explicitly.
        sqlx::raw_sql(
            "ALTER FUNCTION app.current_tenant_id() STABLE SECURITY INVOKER RESET ALL; \
             ALTER FUNCTION app.check_row_binding() VOLATILE",
        )
        .execute(&owner)
        .await
        .unwrap();
        try_pool(runtime.clone()).await.unwrap();
    }
}

/// The binding-check trigger keeps exactly its shape.
#[tokio::test]
async fn a_binding_trigger_of_the_wrong_shape_is_refused() {
    let db = testkit::fresh_database(&common::template()).await;
    let runtime = db.options(Role::Runtime);
    let owner = db.pool(Role::Owner, 1).await;
    let recreate = |shape: &str, when: &str| {
        format!(
            "DROP TRIGGER tenant_binding_check ON projects; \
             CREATE CONSTRAINT TRIGGER tenant_binding_check {shape} \
             FOR EACH ROW {when} EXECUTE FUNCTION app.check_row_binding()"
        )
    };
    let deferred = "DEFERRABLE INITIALLY DEFERRED";
    for change in [
        recreate(
            &format!("AFTER INSERT OR UPDATE OR DELETE ON projects {deferred}"),
            "WHEN (false)",
        ),
        recreate(
            &format!("AFTER INSERT OR UPDATE OF name OR DELETE ON projects {deferred}"),
            "",
        ),
        recreate(
            &format!("AFTER INSERT OR DELETE ON projects {deferred}"),
            "",
        ),
        recreate(
            "AFTER INSERT OR UPDATE OR DELETE ON projects NOT DEFERRABLE",
            "",
        ),
        "ALTER TABLE projects DISABLE TRIGGER tenant_binding_check".to_owned(),
        "ALTER TABLE projects DISABLE TRIGGER tenant_binding_record_insert".to_owned(),
        "DROP TRIGGER tenant_binding_record_delete ON projects".to_owned(),
        "DROP TRIGGER tenant_binding_record_update ON projects; \
         CREATE TRIGGER tenant_binding_record_update AFTER UPDATE ON projects \
         REFERENCING OLD TABLE AS rls_guard_new NEW TABLE AS rls_guard_old \
         FOR EACH STATEMENT EXECUTE FUNCTION app.record_binding_writes()"
            .to_owned(),
        "DROP TRIGGER tenant_binding_check ON projects".to_owned(),
    ] {
        sqlx::raw_sql(&change).execute(&owner).await.unwrap();
        match try_pool(runtime.clone()).await {
            Err(RlsError::SupportSchemaMismatch(problems)) => {
                assert!(
                    problems.iter().any(|p| p.starts_with("public.projects")),
                    "{change}: {problems:?}"
                );
            }
            other => panic!("{change}: expected a refusal, got {other:?}"),
        }
        sqlx::raw_sql(&format!(
            "DROP TRIGGER IF EXISTS tenant_binding_check ON projects; {}",
            rls_guard::schema::tenant_table_sql("projects").unwrap()
        ))
        .execute(&owner)
        .await
        .unwrap();
        try_pool(runtime.clone()).await.unwrap();
    }
}

/// A leaking policy is refused at start-up, judged by what it does for the runtime role (the
/// same probe as `rls-guard check`), however it is spelled.
#[tokio::test]
async fn a_policy_that_admits_other_tenants_is_refused_at_start_up() {
    let db = testkit::fresh_database(&common::template()).await;
    let runtime = db.options(Role::Runtime);
    try_pool(runtime.clone()).await.unwrap();
    let owner = db.pool(Role::Owner, 1).await;
    sqlx::raw_sql(
        "DROP POLICY tenant_isolation ON tasks; DROP POLICY tenant_access ON tasks; \
         CREATE POLICY sneaky ON tasks \
             USING (tenant_id = app.current_tenant_id() OR NOT (app.current_tenant_id() IS NOT NULL)) \
             WITH CHECK (tenant_id = app.current_tenant_id());",
    )
    .execute(&owner)
    .await
    .unwrap();
    match try_pool(runtime.clone()).await {
        Err(RlsError::PolicyLeaks(leaks)) => {
            assert!(
                leaks.iter().any(|l| l.contains("public.tasks")),
                "{leaks:?}"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // The positive control: the helper's policies again.
    sqlx::raw_sql(&format!(
        "DROP POLICY sneaky ON tasks; {}",
        rls_guard::schema::tenant_table_sql("tasks").unwrap()
    ))
    .execute(&owner)
    .await
    .unwrap();
    try_pool(runtime).await.unwrap();
}

/// A role may give itself session defaults (`ALTER ROLE CURRENT_USER SET ..`): the runtime role,
/// once held by an attacker, could make every later session start with another `search_path`
/// or with `standard_conforming_strings` off. Any default outside the timeouts and labels is
/// refused at start-up, whether for every database or this one; an allowed timeout passes.
#[tokio::test]
async fn session_defaults_the_role_gives_itself_are_refused_but_timeouts_pass() {
    let (db, options, name) = setup().await;
    let own = || async {
        PgPoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await
            .unwrap()
    };
    // Positive control: a statement timeout, set by the role itself.
    sqlx::raw_sql("ALTER ROLE CURRENT_USER SET statement_timeout = '30s'")
        .execute(&own().await)
        .await
        .unwrap();
    try_pool(options.clone()).await.unwrap();
    for (setting, expected) in [
        (
            "ALTER ROLE CURRENT_USER SET standard_conforming_strings = off".to_owned(),
            "standard_conforming_strings",
        ),
        (
            "ALTER ROLE CURRENT_USER SET search_path = public, app".to_owned(),
            "search_path",
        ),
        (
            format!(
                "ALTER ROLE CURRENT_USER IN DATABASE {} SET DateStyle = 'SQL, DMY'",
                db.name()
            ),
            "DateStyle",
        ),
    ] {
        sqlx::raw_sql(&setting).execute(&own().await).await.unwrap();
        let (problems, message) = refused_with(options.clone()).await;
        assert_eq!(
            problems,
            vec![RoleProblem::SessionDefault(expected.to_owned())],
            "{setting}"
        );
        assert!(problems[0].is_attribute());
        assert!(message.contains("ALTER ROLE .. RESET"), "{message}");
        db.as_admin(&format!(
            "ALTER ROLE {name} RESET ALL; ALTER ROLE {name} IN DATABASE {} RESET ALL",
            db.name()
        ))
        .await;
    }
    try_pool(options).await.unwrap();
}

/// `SET ROLE` is judged by the session's login role, not by the role the session runs as: a
/// login role that starts its sessions as the runtime role (a `role` default, or `-c role=` on
/// the connection, the "authenticator" pattern) can `SET ROLE` back to itself or to any other
/// role it belongs to. The check judges the login role's memberships and session defaults too.
/// Control: without the privileged membership, the connection option alone passes.
#[tokio::test]
async fn the_login_role_behind_a_set_role_is_judged_too() {
    let db = testkit::fresh_database(&common::template()).await;
    let options = db
        .create_login_role(
            "lr",
            "NOSUPERUSER NOBYPASSRLS NOCREATEROLE NOREPLICATION NOINHERIT",
        )
        .await;
    let name = options.get_username().to_owned();
    let runtime = testkit::RUNTIME_ROLE;
    db.as_admin(&format!(
        "GRANT {runtime} TO {name}; CREATE ROLE {name}_bypass NOLOGIN BYPASSRLS; \
         GRANT {name}_bypass TO {name}; ALTER ROLE {name} SET role = {runtime}"
    ))
    .await;
    // Its sessions run as the runtime role, which alone would pass.
    let (problems, _) = refused_with(options.clone()).await;
    assert!(
        problems.contains(&RoleProblem::MemberOfPrivileged(format!("{name}_bypass"))),
        "{problems:?}"
    );
    assert!(
        problems.contains(&RoleProblem::SessionDefault("role".into())),
        "{problems:?}"
    );
    // The same through the connection's options instead of a default.
    db.as_admin(&format!("ALTER ROLE {name} RESET role")).await;
    let as_runtime = options.clone().options([("role", runtime)]);
    let (problems, _) = refused_with(as_runtime.clone()).await;
    assert_eq!(
        problems,
        vec![RoleProblem::MemberOfPrivileged(format!("{name}_bypass"))]
    );
    // Control: without the privileged membership it passes, and runs as the runtime role.
    db.as_admin(&format!("REVOKE {name}_bypass FROM {name}"))
        .await;
    let pool = try_pool(as_runtime).await.unwrap();
    let _ = pool;
}
