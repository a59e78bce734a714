//! The coverage check flags each defect kind on a deliberately broken schema, and passes a good
//! one; the CLI reports the same and exits non-zero.
// Integration tests: a failed unwrap is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use rls_guard::schema::{SUPPORT_SQL, tenant_table_sql};
use rls_guard::{CoverageCheck, Finding, FindingKind};
use sqlx::Connection;
use testkit::{Role, Template, fresh_database};

fn broken() -> Template {
    let sql = format!(
        "{SUPPORT_SQL}
        -- no RLS at all, no tenant index
        CREATE TABLE t_disabled (tenant_id uuid NOT NULL, body text);
        -- enabled but not forced; policies cover only SELECT
        CREATE TABLE t_unforced (tenant_id uuid NOT NULL, body text);
        CREATE INDEX ON t_unforced (tenant_id);
        ALTER TABLE t_unforced ENABLE ROW LEVEL SECURITY;
        CREATE POLICY sel ON t_unforced FOR SELECT USING (tenant_id = app.current_tenant_id());
        -- forced, ALL policy without WITH CHECK that also admits an unset tenant
        CREATE TABLE t_nullable (tenant_id uuid NOT NULL, body text);
        CREATE INDEX ON t_nullable (tenant_id);
        ALTER TABLE t_nullable ENABLE ROW LEVEL SECURITY;
        ALTER TABLE t_nullable FORCE ROW LEVEL SECURITY;
        CREATE POLICY p ON t_nullable USING (app.current_tenant_id() IS NULL OR tenant_id = app.current_tenant_id());
        -- an always-true policy that never mentions the tenant
        CREATE TABLE t_open (tenant_id uuid NOT NULL, body text);
        CREATE INDEX ON t_open (tenant_id);
        ALTER TABLE t_open ENABLE ROW LEVEL SECURITY;
        ALTER TABLE t_open FORCE ROW LEVEL SECURITY;
        CREATE POLICY p ON t_open USING (true) WITH CHECK (true);
        -- a good table, read through an owner-rights view and a materialized view
        CREATE TABLE t_good (tenant_id uuid NOT NULL, body text);
        {good}
        CREATE VIEW v_owner_rights AS SELECT * FROM t_good;
        CREATE VIEW v_invoker WITH (security_invoker = true) AS SELECT * FROM t_good;
        CREATE MATERIALIZED VIEW mv_copy AS SELECT * FROM t_good;
        -- a definer function without a fixed search_path, callable by the runtime role
        CREATE FUNCTION leak() RETURNS bigint LANGUAGE sql SECURITY DEFINER
            AS $$ SELECT count(*) FROM t_good $$;
        CREATE FUNCTION safe_definer() RETURNS bigint LANGUAGE sql SECURITY DEFINER
            SET search_path = pg_catalog, public AS $$ SELECT count(*) FROM public.t_good $$;
        CREATE FUNCTION private_definer() RETURNS bigint LANGUAGE sql SECURITY DEFINER
            AS $$ SELECT 1::bigint $$;
        REVOKE EXECUTE ON FUNCTION private_definer() FROM PUBLIC;
        -- IMMUTABLE functions over a tenant table (a plan could cache one tenant's answer);
        -- STABLE ones, and IMMUTABLE ones that only mention a longer name, are fine
        CREATE FUNCTION cached_count() RETURNS bigint LANGUAGE sql IMMUTABLE
            AS $$ SELECT count(*) FROM t_good $$;
        CREATE FUNCTION atomic_count() RETURNS bigint LANGUAGE sql IMMUTABLE
            BEGIN ATOMIC SELECT count(*) FROM t_good; END;
        CREATE FUNCTION honest_count() RETURNS bigint LANGUAGE sql STABLE
            AS $$ SELECT count(*) FROM t_good $$;
        CREATE FUNCTION pure_label(x text) RETURNS boolean LANGUAGE sql IMMUTABLE
            AS $$ SELECT x = 't_goodness' $$;",
        good = tenant_table_sql("t_good").unwrap()
    );
    Template::new("rls_guard_broken", sql)
}

fn summary(findings: &[Finding]) -> Vec<(FindingKind, String)> {
    let mut s: Vec<_> = findings
        .iter()
        .map(|f| (f.kind, f.object.clone()))
        .collect();
    s.dedup();
    s
}

#[tokio::test]
async fn flags_every_defect_kind_on_a_broken_schema() {
    let db = fresh_database(&broken()).await;
    let mut conn = sqlx::PgConnection::connect_with(&db.options(Role::Admin))
        .await
        .unwrap();
    let findings = CoverageCheck::new()
        .runtime_role(testkit::RUNTIME_ROLE)
        .run(&mut conn)
        .await
        .unwrap();
    use FindingKind::*;
    let want: Vec<(FindingKind, &str)> = vec![
        (RlsNotEnabled, "public.t_disabled"),
        (RlsNotForced, "public.t_disabled"),
        (RlsNotForced, "public.t_unforced"),
        (MissingPolicy, "public.t_disabled"),
        (MissingPolicy, "public.t_unforced"),
        (MissingWithCheck, "public.t_nullable"),
        (PolicyAlwaysTrue, "public.t_open"),
        (PolicyAllowsUnsetTenant, "public.t_nullable"),
        (NoTenantPredicate, "public.t_open"),
        (NoRestrictiveTenantPolicy, "public.t_disabled"),
        (NoRestrictiveTenantPolicy, "public.t_nullable"),
        (NoRestrictiveTenantPolicy, "public.t_open"),
        (NoRestrictiveTenantPolicy, "public.t_unforced"),
        (MissingTenantIndex, "public.t_disabled"),
        (MissingBindingCheck, "public.t_disabled"),
        (MissingBindingCheck, "public.t_nullable"),
        (MissingBindingCheck, "public.t_open"),
        (MissingBindingCheck, "public.t_unforced"),
        (ViewWithoutSecurityInvoker, "public.v_owner_rights"),
        (SecurityDefinerWithoutSearchPath, "public.leak()"),
        (MaterializedViewOverTenantTable, "public.mv_copy"),
        (ImmutableFunctionOverTenantTable, "public.atomic_count()"),
        (ImmutableFunctionOverTenantTable, "public.cached_count()"),
        (PolicyAdmitsOtherTenant, "public.t_nullable"),
        (PolicyAdmitsOtherTenant, "public.t_open"),
        (SecurityDefinerBypass, "public.leak()"),
        (SecurityDefinerBypass, "public.safe_definer()"),
    ];
    let got = summary(&findings);
    let want: Vec<(FindingKind, String)> =
        want.into_iter().map(|(k, o)| (k, o.to_owned())).collect();
    assert_eq!(got, want, "{findings:#?}");
    // Specifics: which commands lack a policy.
    let unforced: Vec<&str> = findings
        .iter()
        .filter(|f| f.kind == MissingPolicy && f.object == "public.t_unforced")
        .map(|f| f.detail.as_str())
        .collect();
    assert_eq!(
        unforced,
        [
            "no permissive policy for DELETE",
            "no permissive policy for INSERT",
            "no permissive policy for UPDATE"
        ]
    );
}

#[tokio::test]
async fn passes_a_schema_built_with_the_helpers() {
    let db = fresh_database(&common::template()).await;
    let mut conn = sqlx::PgConnection::connect_with(&db.options(Role::Runtime))
        .await
        .unwrap();
    let findings = CoverageCheck::new().run(&mut conn).await.unwrap();
    assert_eq!(findings, vec![]);
}

#[tokio::test]
async fn check_that_cannot_run_is_an_error_not_a_clean_result() {
    let db = fresh_database(&common::template()).await;
    let mut conn = sqlx::PgConnection::connect_with(&db.options(Role::Runtime))
        .await
        .unwrap();
    // An aborted transaction makes every catalog query fail.
    sqlx::raw_sql("BEGIN; SELECT 1/0")
        .execute(&mut conn)
        .await
        .unwrap_err();
    assert!(CoverageCheck::new().run(&mut conn).await.is_err());
}

fn cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_rls-guard"))
        .args(args)
        .env_remove("DATABASE_URL")
        .output()
        .unwrap()
}

#[tokio::test]
async fn cli_reports_findings_as_json_and_exits_1() {
    let db = fresh_database(&broken()).await;
    let url = db.url(Role::Admin);
    let out = cli(&[
        "check",
        "--database-url",
        &url,
        "--runtime-role",
        testkit::RUNTIME_ROLE,
        "--json",
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let findings: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let kinds: Vec<&str> = findings
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"rls_not_forced")
            && kinds.contains(&"security_definer_without_search_path"),
        "{kinds:?}"
    );
}

#[tokio::test]
async fn cli_passes_a_good_schema_and_fails_closed_without_a_database() {
    let db = fresh_database(&common::template()).await;
    let out = cli(&["check", "--database-url", &db.url(Role::Runtime)]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "rls-guard: no findings"
    );

    let out = cli(&[
        "check",
        "--database-url",
        "postgres://nobody@127.0.0.1:1/none",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let out = cli(&["check"]);
    assert_eq!(out.status.code(), Some(2));
    let out = cli(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
}
