//! Schema coverage: find every way the schema lets a tenant's rows escape row-level security.

use serde::Serialize;
use sqlx::PgConnection;

use crate::RlsError;

/// The kind of a [`Finding`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FindingKind {
    /// A table with a `tenant_id` column does not have row-level security enabled.
    RlsNotEnabled,
    /// A table with a `tenant_id` column does not FORCE row-level security (its owner bypasses).
    RlsNotForced,
    /// No permissive policy covers one of SELECT, INSERT, UPDATE, DELETE.
    MissingPolicy,
    /// An INSERT, UPDATE or ALL policy has no `WITH CHECK`.
    MissingWithCheck,
    /// A policy expression is the constant `true`.
    PolicyAlwaysTrue,
    /// A policy admits rows when the tenant is unset (`.. IS NULL OR ..`, `coalesce(..)`).
    PolicyAllowsUnsetTenant,
    /// No policy on the table mentions `tenant_id`.
    NoTenantPredicate,
    /// No RESTRICTIVE policy mentions `tenant_id`, so any permissive policy added later (a
    /// "public rows" policy, say) widens access across tenants.
    NoRestrictiveTenantPolicy,
    /// No index leads with `tenant_id`.
    MissingTenantIndex,
    /// The deferred binding-check trigger (`app.check_row_binding`) is missing or disabled, so
    /// a transaction rebound by injected SQL could commit writes to another tenant.
    MissingBindingCheck,
    /// A view over a tenant table runs with its owner's rights (no `security_invoker`).
    ViewWithoutSecurityInvoker,
    /// A SECURITY DEFINER function without a fixed `search_path` is executable by the runtime
    /// role.
    SecurityDefinerWithoutSearchPath,
    /// A materialized view stores tenant rows outside row-level security.
    MaterializedViewOverTenantTable,
    /// A function declared `IMMUTABLE` reads a tenant table. PostgreSQL may evaluate it once
    /// while planning, before any binding, and keep its result in a cached plan that the next
    /// tenant's transaction on the same connection reuses. Declare it `STABLE`.
    ImmutableFunctionOverTenantTable,
}

/// One defect, on one object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// What is wrong.
    pub kind: FindingKind,
    /// The object (`schema.table`, `schema.view`, `schema.function(args)`).
    pub object: String,
    /// Specifics, such as the policy or command concerned.
    pub detail: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = serde_json::to_value(self.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        write!(f, "{kind}: {} ({})", self.object, self.detail)
    }
}

/// The coverage check. Tables are in scope when they have a `tenant_id` column.
#[derive(Debug, Clone, Default)]
pub struct CoverageCheck {
    runtime_role: Option<String>,
}

const TENANT_TABLES: &str = "
SELECT c.oid::int8, pg_catalog.format('%I.%I', n.nspname, c.relname),
       c.relrowsecurity, c.relforcerowsecurity,
       EXISTS (SELECT 1 FROM pg_catalog.pg_index i
               JOIN pg_catalog.pg_attribute ia
                 ON ia.attrelid = i.indrelid AND ia.attnum = i.indkey[0]
               WHERE i.indrelid = c.oid AND ia.attname = 'tenant_id'),
       EXISTS (SELECT 1 FROM pg_catalog.pg_trigger tg
               WHERE tg.tgrelid = c.oid
                 AND tg.tgfoid = pg_catalog.to_regprocedure('app.check_row_binding()')
                 AND tg.tgdeferrable AND tg.tginitdeferred AND tg.tgenabled IN ('O', 'A')
                 AND tg.tgtype & 28 = 28)
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_attribute a
  ON a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped
WHERE c.relkind IN ('r', 'p')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_%'
ORDER BY 2";

const POLICIES: &str = "
SELECT p.polname::text, p.polcmd::text, p.polpermissive,
       pg_catalog.pg_get_expr(p.polqual, p.polrelid),
       pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid)
FROM pg_catalog.pg_policy p WHERE p.polrelid = $1::int8::oid ORDER BY 1";

/// name, command letter, permissive, USING, WITH CHECK.
type PolicyRow = (String, String, bool, Option<String>, Option<String>);

/// Views (`v`) or materialized views (`m`) reading a tenant table directly.
const DEPENDENT_RELATIONS: &str = "
SELECT DISTINCT pg_catalog.format('%I.%I', vn.nspname, v.relname),
       pg_catalog.format('%I.%I', tn.nspname, t.relname),
       coalesce(v.reloptions::text[] && ARRAY['security_invoker=true', 'security_invoker=on',
                                              'security_invoker=1', 'security_invoker=yes'], false)
FROM pg_catalog.pg_class v
JOIN pg_catalog.pg_namespace vn ON vn.oid = v.relnamespace
JOIN pg_catalog.pg_rewrite r ON r.ev_class = v.oid
JOIN pg_catalog.pg_depend d
  ON d.classid = 'pg_catalog.pg_rewrite'::regclass AND d.objid = r.oid
 AND d.refclassid = 'pg_catalog.pg_class'::regclass
JOIN pg_catalog.pg_class t ON t.oid = d.refobjid AND t.oid <> v.oid
JOIN pg_catalog.pg_namespace tn ON tn.oid = t.relnamespace
JOIN pg_catalog.pg_attribute a
  ON a.attrelid = t.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped
WHERE v.relkind = $1::text::\"char\"
  AND vn.nspname NOT IN ('pg_catalog', 'information_schema')
ORDER BY 1, 2";

const DEFINER_FUNCTIONS: &str = "
SELECT pg_catalog.format('%I.%I(%s)', n.nspname, p.proname,
                         pg_catalog.pg_get_function_identity_arguments(p.oid))
FROM pg_catalog.pg_proc p
JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
WHERE p.prosecdef
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND NOT coalesce(EXISTS (SELECT 1 FROM pg_catalog.unnest(p.proconfig) s
                           WHERE s LIKE 'search\\_path=%'), false)
  AND pg_catalog.has_function_privilege($1, p.oid, 'EXECUTE')
ORDER BY 1";

/// `IMMUTABLE` functions (outside the system schemas) whose body names a tenant table as a
/// word, or which depend on one (SQL-standard bodies record their dependencies).
const IMMUTABLE_FUNCTIONS: &str = "
SELECT DISTINCT pg_catalog.format('%I.%I(%s)', n.nspname, p.proname,
                                  pg_catalog.pg_get_function_identity_arguments(p.oid)),
       pg_catalog.format('%I.%I', tn.nspname, t.relname)
FROM pg_catalog.pg_proc p
JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
JOIN pg_catalog.pg_class t ON t.relkind IN ('r', 'p')
JOIN pg_catalog.pg_namespace tn ON tn.oid = t.relnamespace
JOIN pg_catalog.pg_attribute a
  ON a.attrelid = t.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped
WHERE p.provolatile = 'i'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_%'
  AND tn.nspname NOT IN ('pg_catalog', 'information_schema')
  AND (p.prosrc ~* ('\\m' || pg_catalog.regexp_replace(t.relname, '([^[:alnum:]_])', '\\\\\\1', 'g') || '\\M')
       OR EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                  WHERE d.classid = 'pg_catalog.pg_proc'::regclass AND d.objid = p.oid
                    AND d.refclassid = 'pg_catalog.pg_class'::regclass AND d.refobjid = t.oid))
ORDER BY 1, 2";

impl CoverageCheck {
    /// A check judging function privileges for the connected role.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Judge function privileges for `role` (the application's runtime role) instead.
    #[must_use]
    pub fn runtime_role(mut self, role: &str) -> Self {
        self.runtime_role = Some(role.to_owned());
        self
    }

    /// Runs the check. An empty result means no defect was found.
    ///
    /// # Errors
    /// [`RlsError::Database`] when the catalog cannot be read: no result is not a clean result.
    pub async fn run(&self, conn: &mut PgConnection) -> Result<Vec<Finding>, RlsError> {
        let mut findings = Vec::new();
        let tables: Vec<(i64, String, bool, bool, bool, bool)> =
            sqlx::query_as(TENANT_TABLES).fetch_all(&mut *conn).await?;
        for (oid, table, enabled, forced, indexed, binding_checked) in tables {
            let mut add = |kind, detail: String| {
                findings.push(Finding {
                    kind,
                    object: table.clone(),
                    detail,
                });
            };
            if !enabled {
                add(
                    FindingKind::RlsNotEnabled,
                    "ENABLE ROW LEVEL SECURITY is off".into(),
                );
            }
            if !forced {
                add(
                    FindingKind::RlsNotForced,
                    "FORCE ROW LEVEL SECURITY is off".into(),
                );
            }
            if !binding_checked {
                add(
                    FindingKind::MissingBindingCheck,
                    "no deferred app.check_row_binding() trigger for INSERT, UPDATE and DELETE"
                        .into(),
                );
            }
            if !indexed {
                add(
                    FindingKind::MissingTenantIndex,
                    "no index leads with tenant_id".into(),
                );
            }
            let policies: Vec<PolicyRow> = sqlx::query_as(POLICIES)
                .bind(oid)
                .fetch_all(&mut *conn)
                .await?;
            for (command, letter) in [
                ("SELECT", "r"),
                ("INSERT", "a"),
                ("UPDATE", "w"),
                ("DELETE", "d"),
            ] {
                let covered = policies
                    .iter()
                    .any(|(_, cmd, permissive, ..)| *permissive && (cmd == "*" || cmd == letter));
                if !covered {
                    add(
                        FindingKind::MissingPolicy,
                        format!("no permissive policy for {command}"),
                    );
                }
            }
            let mut mentions_tenant = false;
            let restrictive_tenant = policies.iter().any(|(_, cmd, permissive, using, _)| {
                !*permissive
                    && cmd == "*"
                    && using.as_deref().is_some_and(|u| u.contains("tenant_id"))
            });
            if !restrictive_tenant {
                add(
                    FindingKind::NoRestrictiveTenantPolicy,
                    "no RESTRICTIVE policy for ALL commands on tenant_id".into(),
                );
            }
            for (name, cmd, _, using, check) in &policies {
                if matches!(cmd.as_str(), "*" | "a" | "w") && check.is_none() {
                    add(
                        FindingKind::MissingWithCheck,
                        format!("policy {name} has no WITH CHECK"),
                    );
                }
                for expr in [using, check].into_iter().flatten() {
                    mentions_tenant |= expr.contains("tenant_id");
                    let normalised = expr
                        .trim()
                        .trim_start_matches('(')
                        .trim_end_matches(')')
                        .trim();
                    if normalised.eq_ignore_ascii_case("true") {
                        add(
                            FindingKind::PolicyAlwaysTrue,
                            format!("policy {name}: {expr}"),
                        );
                    }
                    let lower = expr.to_ascii_lowercase();
                    if lower.contains("is null") || lower.contains("coalesce(") {
                        add(
                            FindingKind::PolicyAllowsUnsetTenant,
                            format!("policy {name}: {expr}"),
                        );
                    }
                }
            }
            if !policies.is_empty() && !mentions_tenant {
                add(
                    FindingKind::NoTenantPredicate,
                    "no policy mentions tenant_id".into(),
                );
            }
        }

        for (relkind, kind) in [
            ("v", FindingKind::ViewWithoutSecurityInvoker),
            ("m", FindingKind::MaterializedViewOverTenantTable),
        ] {
            let rows: Vec<(String, String, bool)> = sqlx::query_as(DEPENDENT_RELATIONS)
                .bind(relkind)
                .fetch_all(&mut *conn)
                .await?;
            for (object, table, invoker) in rows {
                if kind == FindingKind::MaterializedViewOverTenantTable || !invoker {
                    findings.push(Finding {
                        kind,
                        object,
                        detail: format!("reads tenant table {table}"),
                    });
                }
            }
        }

        let role = match &self.runtime_role {
            Some(role) => role.clone(),
            None => {
                sqlx::query_scalar("SELECT current_user::text")
                    .fetch_one(&mut *conn)
                    .await?
            }
        };
        let functions: Vec<String> = sqlx::query_scalar(DEFINER_FUNCTIONS)
            .bind(&role)
            .fetch_all(&mut *conn)
            .await?;
        findings.extend(functions.into_iter().map(|object| Finding {
            kind: FindingKind::SecurityDefinerWithoutSearchPath,
            object,
            detail: format!("SECURITY DEFINER without SET search_path, executable by {role}"),
        }));
        let immutable: Vec<(String, String)> = sqlx::query_as(IMMUTABLE_FUNCTIONS)
            .fetch_all(&mut *conn)
            .await?;
        findings.extend(immutable.into_iter().map(|(object, table)| Finding {
            kind: FindingKind::ImmutableFunctionOverTenantTable,
            object,
            detail: format!("declared IMMUTABLE but reads tenant table {table}"),
        }));
        findings
            .sort_by(|a, b| (a.kind, &a.object, &a.detail).cmp(&(b.kind, &b.object, &b.detail)));
        Ok(findings)
    }
}
