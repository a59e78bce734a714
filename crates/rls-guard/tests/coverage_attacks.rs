//! Attacks on the coverage check: each schema shape that lets rows escape row-level security,
//! spelled so that text heuristics miss it, is found and named; the schema the helpers build
//! passes (the positive control, checked before every attack).
// Integration tests: a failed unwrap is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use rls_guard::{CoverageCheck, Finding, FindingKind};
use sqlx::Connection;
use testkit::{Role, TestDb};

async fn check(db: &TestDb, configure: impl Fn(CoverageCheck) -> CoverageCheck) -> Vec<Finding> {
    let mut conn = sqlx::PgConnection::connect_with(&db.options(Role::Admin))
        .await
        .unwrap();
    configure(CoverageCheck::new().runtime_role(testkit::RUNTIME_ROLE))
        .run(&mut conn)
        .await
        .unwrap()
}

/// A fresh database whose pristine schema passes, with one row of a tenant in `projects`.
async fn pristine() -> TestDb {
    let f = common::fixture(1).await;
    common::add_project(&f.pool, tenant_scope::TenantId::new_random(), "a").await;
    let findings = check(&f.db, |c| c).await;
    assert_eq!(findings, vec![], "positive control");
    f.db
}

fn has(findings: &[Finding], kind: FindingKind, object: &str) -> bool {
    findings
        .iter()
        .any(|f| f.kind == kind && f.object == object)
}

#[tokio::test]
async fn policies_that_admit_other_tenants_are_found_by_behaviour_however_spelled() {
    let db = pristine().await;
    for expression in [
        "tenant_id = app.current_tenant_id() OR NOT (app.current_tenant_id() IS NOT NULL)",
        "CASE WHEN pg_catalog.current_setting('app.tenant_id', true) <> '' \
         THEN tenant_id = app.current_tenant_id() ELSE true END",
        "tenant_id::text LIKE (pg_catalog.current_setting('app.tenant_id', true) || '%')",
        "tenant_id <> '00000000-0000-0000-0000-000000000000'::uuid",
        "tenant_id::text = pg_catalog.current_setting('app.tenant_id', true) \
         OR pg_catalog.current_setting('app.tenant_id', true) IN ('', 'x')",
    ] {
        db.as_admin(&format!(
            "DROP POLICY IF EXISTS tenant_isolation ON projects; \
             DROP POLICY IF EXISTS tenant_access ON projects; \
             DROP POLICY IF EXISTS leaky ON projects; \
             CREATE POLICY leaky ON projects USING ({expression}) WITH CHECK ({expression});"
        ))
        .await;
        let findings = check(&db, |c| c).await;
        assert!(
            has(
                &findings,
                FindingKind::PolicyAdmitsOtherTenant,
                "public.projects"
            ),
            "{expression}: {findings:#?}"
        );
        // The text hint does not see these spellings: the probe is what finds them.
        assert!(
            !has(
                &findings,
                FindingKind::PolicyAllowsUnsetTenant,
                "public.projects"
            ),
            "{expression}"
        );
    }
    // Only for one command: a DELETE policy that ignores the tenant.
    db.as_admin(
        "DROP POLICY leaky ON projects; \
         CREATE POLICY tenant_isolation ON projects AS RESTRICTIVE FOR SELECT \
             USING (tenant_id = (SELECT app.current_tenant_id())); \
         CREATE POLICY sel ON projects FOR SELECT USING (tenant_id = (SELECT app.current_tenant_id())); \
         CREATE POLICY ins ON projects FOR INSERT WITH CHECK (tenant_id = (SELECT app.current_tenant_id())); \
         CREATE POLICY upd ON projects FOR UPDATE USING (tenant_id = (SELECT app.current_tenant_id())) \
             WITH CHECK (tenant_id = (SELECT app.current_tenant_id())); \
         CREATE POLICY del ON projects FOR DELETE USING (tenant_id IS NOT NULL);",
    )
    .await;
    let findings = check(&db, |c| c).await;
    let details: Vec<&str> = findings
        .iter()
        .filter(|f| f.kind == FindingKind::PolicyAdmitsOtherTenant)
        .map(|f| f.detail.as_str())
        .collect();
    assert!(
        details.iter().any(|d| d.contains("DELETE admits"))
            && details
                .iter()
                .any(|d| d.contains("DELETE reaches 1 existing row")),
        "{details:?}"
    );
    assert!(!details.iter().any(|d| d.contains("SELECT")), "{details:?}");
}

#[tokio::test]
async fn an_immutable_function_at_any_depth_under_a_policy_is_found() {
    let db = pristine().await;
    db.as_admin(
        "CREATE FUNCTION public.inner_tenant() RETURNS uuid LANGUAGE sql IMMUTABLE \
             BEGIN ATOMIC SELECT app.current_tenant_id(); END; \
         CREATE FUNCTION public.outer_tenant() RETURNS uuid LANGUAGE sql STABLE \
             BEGIN ATOMIC SELECT public.inner_tenant(); END; \
         ALTER POLICY tenant_access ON projects USING (tenant_id = (SELECT public.outer_tenant())) \
             WITH CHECK (tenant_id = (SELECT public.outer_tenant()));",
    )
    .await;
    let findings = check(&db, |c| c).await;
    assert!(
        has(
            &findings,
            FindingKind::ImmutableFunctionInPolicy,
            "function inner_tenant()"
        ),
        "{findings:#?}"
    );
    assert!(
        !has(
            &findings,
            FindingKind::ImmutableFunctionInPolicy,
            "function outer_tenant()"
        ),
        "STABLE is fine"
    );
}

#[tokio::test]
async fn a_policy_that_trusts_what_the_runtime_role_writes_or_owns_is_found() {
    let db = pristine().await;
    db.as_admin(&format!(
        "CREATE TABLE public.memberships (org uuid NOT NULL, actor uuid NOT NULL); \
         GRANT SELECT, INSERT ON public.memberships TO {rt}; \
         CREATE FUNCTION public.my_orgs() RETURNS SETOF uuid LANGUAGE sql STABLE \
             BEGIN ATOMIC SELECT org FROM public.memberships WHERE actor = app.current_actor_id(); END; \
         ALTER FUNCTION public.my_orgs() OWNER TO {rt}; \
         ALTER POLICY tenant_access ON projects \
             USING (tenant_id IN (SELECT public.my_orgs())) \
             WITH CHECK (tenant_id IN (SELECT public.my_orgs()));",
        rt = testkit::RUNTIME_ROLE
    ))
    .await;
    let findings = check(&db, |c| c).await;
    let trusted: Vec<(&str, &str)> = findings
        .iter()
        .filter(|f| f.kind == FindingKind::PolicyTrustsRuntimeObject)
        .map(|f| (f.object.as_str(), f.detail.as_str()))
        .collect();
    assert!(
        trusted
            .iter()
            .any(|(o, d)| *o == "function my_orgs()" && d.contains("owns it")),
        "{trusted:?}"
    );
    assert!(
        trusted
            .iter()
            .any(|(o, d)| *o == "table memberships" && d.contains("can write it")),
        "{trusted:?}"
    );
}

#[tokio::test]
async fn definer_functions_of_a_bypassing_owner_are_found_unless_trusted() {
    let db = pristine().await;
    // A pinned search_path does not help: it runs as the owner of every tenant table.
    db.as_admin(&format!(
        "CREATE FUNCTION public.count_all() RETURNS bigint LANGUAGE sql SECURITY DEFINER \
             SET search_path = pg_catalog AS $$ SELECT count(*) FROM public.projects $$; \
         ALTER FUNCTION public.count_all() OWNER TO {owner};",
        owner = testkit::OWNER_ROLE
    ))
    .await;
    let findings = check(&db, |c| c).await;
    assert!(
        has(
            &findings,
            FindingKind::SecurityDefinerBypass,
            "public.count_all()"
        ),
        "{findings:#?}"
    );
    let trusted = check(&db, |c| c.trust_function("public.count_all()")).await;
    assert_eq!(trusted, vec![]);
    // Not executable by the runtime role: nothing to find.
    db.as_admin("REVOKE EXECUTE ON FUNCTION public.count_all() FROM PUBLIC")
        .await;
    assert_eq!(check(&db, |c| c).await, vec![]);
}

#[tokio::test]
async fn rules_and_untrusted_triggers_on_tenant_tables_are_found() {
    let db = pristine().await;
    db.as_admin(
        "CREATE RULE copy_out AS ON INSERT TO projects DO ALSO NOTIFY projects_changed; \
         CREATE FUNCTION public.touch() RETURNS trigger LANGUAGE plpgsql \
             AS $$ BEGIN RETURN NEW; END $$; \
         CREATE TRIGGER touch BEFORE INSERT ON tasks FOR EACH ROW EXECUTE FUNCTION public.touch();",
    )
    .await;
    let findings = check(&db, |c| c).await;
    assert!(
        has(
            &findings,
            FindingKind::RuleOnProtectedTable,
            "public.projects"
        ),
        "{findings:#?}"
    );
    assert!(
        has(&findings, FindingKind::UntrustedTrigger, "public.tasks"),
        "{findings:#?}"
    );
    let findings = check(&db, |c| c.trust_trigger("public.tasks", "touch")).await;
    assert!(
        !has(&findings, FindingKind::UntrustedTrigger, "public.tasks"),
        "{findings:#?}"
    );
}

#[tokio::test]
async fn views_materialized_views_and_foreign_tables_outside_rls_are_found() {
    let db = pristine().await;
    db.as_admin(&format!(
        "CREATE FUNCTION public.names() RETURNS SETOF text LANGUAGE sql STABLE \
             AS $$ SELECT name FROM public.projects $$; \
         CREATE VIEW public.all_names AS SELECT * FROM public.names() AS n(name); \
         CREATE VIEW public.own_names WITH (security_invoker = true) \
             AS SELECT * FROM public.names() AS n(name); \
         CREATE MATERIALIZED VIEW public.snapshot AS SELECT 1 AS one; \
         CREATE EXTENSION file_fdw; \
         CREATE SERVER files FOREIGN DATA WRAPPER file_fdw; \
         CREATE FOREIGN TABLE public.imported (tenant_id uuid, body text) SERVER files \
             OPTIONS (filename '/dev/null'); \
         GRANT SELECT ON public.all_names, public.own_names, public.snapshot, public.imported \
             TO {rt};",
        rt = testkit::RUNTIME_ROLE
    ))
    .await;
    let findings = check(&db, |c| c).await;
    for (kind, object) in [
        (FindingKind::ViewWithoutSecurityInvoker, "public.all_names"),
        (
            FindingKind::MaterializedViewOverTenantTable,
            "public.snapshot",
        ),
        (FindingKind::ForeignTable, "public.imported"),
    ] {
        assert!(
            has(&findings, kind, object),
            "{kind:?} {object}: {findings:#?}"
        );
    }
    assert!(
        !findings.iter().any(|f| f.object == "public.own_names"),
        "an invoker's-rights view is fine"
    );
}

#[tokio::test]
async fn keys_that_do_not_lead_with_the_tenant_are_found() {
    let db = pristine().await;
    db.as_admin(
        "CREATE UNIQUE INDEX projects_lower_name ON projects (lower(name)); \
         ALTER TABLE tasks ADD CONSTRAINT tasks_title UNIQUE (title); \
         ALTER TABLE tasks ADD CONSTRAINT tasks_no_twin EXCLUDE USING btree (title WITH =); \
         CREATE TABLE public.labels (id uuid PRIMARY KEY); \
         ALTER TABLE tasks ADD COLUMN label uuid REFERENCES public.labels (id); \
         ALTER TABLE tasks ADD CONSTRAINT tasks_scoped UNIQUE (tenant_id, title);",
    )
    .await;
    let findings = check(&db, |c| c).await;
    let keys: Vec<(&str, &str)> = findings
        .iter()
        .filter(|f| f.kind == FindingKind::KeyNotScopedByTenant)
        .map(|f| (f.object.as_str(), f.detail.as_str()))
        .collect();
    for (table, detail) in [
        ("public.projects", "unique index projects_lower_name"),
        ("public.tasks", "unique index tasks_title"),
        ("public.tasks", "exclusion constraint tasks_no_twin"),
        ("public.tasks", "foreign key tasks_label_fkey"),
    ] {
        assert!(
            keys.iter()
                .any(|(t, d)| *t == table && d.starts_with(detail)),
            "{detail}: {keys:?}"
        );
    }
    assert!(
        !keys.iter().any(|(_, d)| d.contains("tasks_scoped")),
        "{keys:?}"
    );
}

#[tokio::test]
async fn the_check_refuses_to_run_when_it_cannot_probe_as_the_runtime_role() {
    let db = pristine().await;
    let mut owner = sqlx::PgConnection::connect_with(&db.options(Role::Owner))
        .await
        .unwrap();
    let error = CoverageCheck::new()
        .runtime_role(testkit::RUNTIME_ROLE)
        .run(&mut owner)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("cannot probe"), "{error}");
    // Connected as the runtime role itself, it runs (and the pristine schema passes).
    let mut runtime = sqlx::PgConnection::connect_with(&db.options(Role::Runtime))
        .await
        .unwrap();
    assert_eq!(
        CoverageCheck::new().run(&mut runtime).await.unwrap(),
        vec![]
    );
}

/// A restrictive policy with an escape hatch on something a session can set (`OR` a setting
/// value no probe tries, or the application name), or one that applies only to some roles (a
/// role the runtime role may `SET ROLE` to escapes it), passes every probed value. The check
/// requires a restrictive policy for every command and every role that is exactly the crate's
/// predicate, and names the table. Control: the helper's own policy passes (`pristine`).
#[tokio::test]
async fn a_restrictive_policy_with_an_escape_hatch_is_found() {
    let db = pristine().await;
    let predicate = "tenant_id = (SELECT app.current_tenant_id())";
    for (why, policy) in [
        (
            "an OR on a setting value",
            format!(
                "AS RESTRICTIVE FOR ALL USING ({predicate} \
                 OR pg_catalog.current_setting('app.tenant_id', true) = '*') \
                 WITH CHECK ({predicate})"
            ),
        ),
        (
            "an OR on the application name",
            format!(
                "AS RESTRICTIVE FOR ALL USING ({predicate}) \
                 WITH CHECK ({predicate} OR pg_catalog.current_setting('application_name') = 'ops')"
            ),
        ),
        (
            "only for the runtime role",
            format!(
                "AS RESTRICTIVE FOR ALL TO {} USING ({predicate}) WITH CHECK ({predicate})",
                testkit::RUNTIME_ROLE
            ),
        ),
        (
            "a look-alike getter in another schema",
            "AS RESTRICTIVE FOR ALL USING (tenant_id = (SELECT public.current_tenant_id())) \
             WITH CHECK (tenant_id = (SELECT public.current_tenant_id()))"
                .to_owned(),
        ),
    ] {
        db.as_admin(&format!(
            "CREATE OR REPLACE FUNCTION public.current_tenant_id() RETURNS uuid LANGUAGE sql \
                 STABLE AS 'SELECT app.current_tenant_id()'; \
             DROP POLICY tenant_isolation ON projects; \
             CREATE POLICY tenant_isolation ON projects {policy};"
        ))
        .await;
        let findings = check(&db, |c| c).await;
        assert!(
            has(
                &findings,
                FindingKind::NoRestrictiveTenantPolicy,
                "public.projects"
            ),
            "{why}: {findings:#?}"
        );
    }
    // Control: the crate's own policy again passes.
    db.as_admin(&format!(
        "DROP POLICY tenant_isolation ON projects; \
         CREATE POLICY tenant_isolation ON projects AS RESTRICTIVE FOR ALL \
             USING ({predicate}) WITH CHECK ({predicate});"
    ))
    .await;
    assert_eq!(check(&db, |c| c).await, vec![]);
}
