//! Schema coverage: find every way the schema lets a tenant's rows escape row-level security.

use serde::Serialize;
use sqlx::PgConnection;

use crate::RlsError;
use crate::role::role_problems;
use crate::support::support_problems;

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
    /// No RESTRICTIVE policy for all commands and every role is exactly the crate's predicate
    /// ([`TENANT_PREDICATE`](crate::schema::TENANT_PREDICATE)) in `USING` and `WITH CHECK`: any
    /// permissive policy added later (a "public rows" policy, say) would widen access across
    /// tenants, and a restrictive one with an escape hatch (an `OR` on a setting a session can
    /// make, roles it leaves out) is switched off by whoever can reach the hatch.
    NoRestrictiveTenantPolicy,
    /// No index leads with `tenant_id`.
    MissingTenantIndex,
    /// The deferred binding-check trigger (`app.check_row_binding`) is missing or disabled, so
    /// a transaction rebound by injected SQL could commit writes to another tenant.
    MissingBindingCheck,
    /// A view that reads a tenant table, or that the runtime role can read, runs with its
    /// owner's rights (no `security_invoker`).
    ViewWithoutSecurityInvoker,
    /// A SECURITY DEFINER function without a fixed `search_path` is executable by the runtime
    /// role.
    SecurityDefinerWithoutSearchPath,
    /// A materialized view that reads a tenant table, or that the runtime role can read,
    /// stores rows outside row-level security.
    MaterializedViewOverTenantTable,
    /// A function declared `IMMUTABLE` reads a tenant table. PostgreSQL may evaluate it once
    /// while planning, before any binding, and keep its result in a cached plan that the next
    /// tenant's transaction on the same connection reuses. Declare it `STABLE`.
    ImmutableFunctionOverTenantTable,
    /// The runtime role could bypass row-level security or switch the controls around it off
    /// (see [`RoleProblem`](crate::RoleProblem)); the detail names the attribute or object.
    UnsafeRuntimeRole,
    /// A support function or a binding-check trigger differs from what this crate installs.
    SupportSchemaMismatch,
    /// Probed as the runtime role, in a transaction that is rolled back: with the tenant
    /// setting unset, empty, reset, malformed or set to another tenant, a policy admitted
    /// another tenant's row (a synthetic row evaluated against the policies' own expressions,
    /// or rows already in the table).
    PolicyAdmitsOtherTenant,
    /// The behavioural probe of a table's policies could not be evaluated, even for the
    /// tenant a row belongs to; an unevaluated check is not a clean result.
    PolicyNotProbed,
    /// A function a policy depends on (at any depth, through `pg_depend`) is `IMMUTABLE`.
    ImmutableFunctionInPolicy,
    /// An object a policy reads or calls (at any depth), or the schema that holds it, is owned
    /// or writable by the runtime role.
    PolicyTrustsRuntimeObject,
    /// A `SECURITY DEFINER` function that the runtime role can execute, or fire through a
    /// trigger on a table it can write, is owned by a role that bypasses row-level security
    /// (a superuser, a `BYPASSRLS` role, or the owner of a protected table).
    SecurityDefinerBypass,
    /// A rule (`pg_rewrite`) on a protected table, or on any relation the runtime role can
    /// write (a rule's actions run with the rights of the relation's owner).
    RuleOnProtectedTable,
    /// A trigger on a protected table that neither this crate nor a trusted installer put
    /// there ([`CoverageCheck::trust_trigger`]).
    UntrustedTrigger,
    /// A foreign table: its rows live outside row-level security.
    ForeignTable,
    /// A unique constraint or index, an exclusion constraint or a foreign key on a protected
    /// table that does not lead with `tenant_id`: PostgreSQL checks it across every tenant's
    /// rows, an existence oracle.
    KeyNotScopedByTenant,
}

/// One defect, on one object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
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
///
/// Besides the catalog, it probes what the policies do: as the runtime role, inside a
/// transaction that is always rolled back. Run it connected as the runtime role, or as a role
/// that may `SET ROLE` to it (a superuser, say); otherwise the check cannot run and says so.
#[derive(Debug, Clone, Default)]
pub struct CoverageCheck {
    runtime_role: Option<String>,
    trusted_triggers: Vec<(String, String)>,
    trusted_functions: Vec<String>,
    unforced_tables: Vec<String>,
}

const TENANT_TABLES: &str = "
SELECT c.oid::int8, pg_catalog.format('%I.%I', n.nspname, c.relname),
       c.relrowsecurity, c.relforcerowsecurity,
       EXISTS (SELECT 1 FROM pg_catalog.pg_index i
               JOIN pg_catalog.pg_attribute ia
                 ON ia.attrelid = i.indrelid AND ia.attnum = i.indkey[0]
               WHERE i.indrelid = c.oid AND ia.attname = 'tenant_id'),
       a.attnum::int4, pg_catalog.format_type(a.atttypid, a.atttypmod)
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_attribute a
  ON a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped
WHERE c.relkind IN ('r', 'p')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND NOT pg_catalog.starts_with(n.nspname, 'pg_')
  -- A partition is judged through its parent, unless the runtime role ($1) can reach it
  -- directly (then its own row-level security is all that stands in the way).
  AND (NOT c.relispartition OR EXISTS (
        SELECT 1 FROM pg_catalog.pg_roles m
        WHERE pg_catalog.pg_has_role($1::text::name, m.oid, 'MEMBER')
          AND (pg_catalog.has_any_column_privilege(m.oid, c.oid, 'SELECT, INSERT, UPDATE')
               OR pg_catalog.has_table_privilege(m.oid, c.oid, 'DELETE, TRUNCATE'))))
ORDER BY 2";

const POLICIES: &str = "
SELECT p.polname::text, p.polcmd::text, p.polpermissive,
       pg_catalog.pg_get_expr(p.polqual, p.polrelid),
       pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid),
       coalesce(p.polroles = '{0}'::oid[]
         AND pg_catalog.strpos(p.polqual::text, pg_catalog.format(':funcid %s ',
               pg_catalog.to_regprocedure('app.current_tenant_id()')::oid)) > 0
         AND pg_catalog.strpos(p.polwithcheck::text, pg_catalog.format(':funcid %s ',
               pg_catalog.to_regprocedure('app.current_tenant_id()')::oid)) > 0, false)
FROM pg_catalog.pg_policy p WHERE p.polrelid = $1::int8::oid ORDER BY 1";

/// name, command letter, permissive, USING, WITH CHECK, and whether it applies to every role
/// (`PUBLIC`) with both expressions calling rls-guard's `app.current_tenant_id()`.
type PolicyRow = (String, String, bool, Option<String>, Option<String>, bool);

/// Whether `expr` (as `pg_get_expr` prints it) is exactly the crate's tenant predicate,
/// [`TENANT_PREDICATE`](crate::schema::TENANT_PREDICATE): compared without spaces and
/// parentheses, with the function named with or without its schema (the caller's
/// `search_path` decides; which function it is, is compared by its oid in [`POLICIES`]).
/// Anything added to it (`OR` a setting an attacker can make, a second condition) is not it.
fn is_tenant_predicate(expr: Option<&str>) -> bool {
    let Some(expr) = expr else {
        return false;
    };
    let bare: String = expr
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '(' && *c != ')')
        .collect();
    matches!(
        bare.as_str(),
        "tenant_id=SELECTapp.current_tenant_idAScurrent_tenant_id"
            | "tenant_id=SELECTcurrent_tenant_idAScurrent_tenant_id"
    )
}

/// Views (`v`), materialized views (`m`) and foreign tables (`f`): name, kind, runs with the
/// invoker's rights, the tenant tables it reads directly, readable by the runtime role (`$1`,
/// through any role it is a member of), has a `tenant_id` column.
const RELATIONS_OUTSIDE_RLS: &str = "
SELECT pg_catalog.format('%I.%I', vn.nspname, v.relname), v.relkind::text,
       coalesce(v.reloptions::text[] && ARRAY['security_invoker=true', 'security_invoker=on',
                                              'security_invoker=1', 'security_invoker=yes'], false),
       ARRAY(SELECT DISTINCT pg_catalog.format('%I.%I', tn.nspname, t.relname)
             FROM pg_catalog.pg_rewrite r
             JOIN pg_catalog.pg_depend d
               ON d.classid = 'pg_catalog.pg_rewrite'::regclass AND d.objid = r.oid
              AND d.refclassid = 'pg_catalog.pg_class'::regclass
             JOIN pg_catalog.pg_class t ON t.oid = d.refobjid AND t.oid <> v.oid
             JOIN pg_catalog.pg_namespace tn ON tn.oid = t.relnamespace
             JOIN pg_catalog.pg_attribute a
               ON a.attrelid = t.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped
             WHERE r.ev_class = v.oid
             ORDER BY 1),
       EXISTS (SELECT 1 FROM pg_catalog.pg_roles m
               WHERE pg_catalog.pg_has_role($1::text::name, m.oid, 'MEMBER')
                 AND pg_catalog.has_any_column_privilege(m.oid, v.oid, 'SELECT')),
       EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
               WHERE a.attrelid = v.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped)
FROM pg_catalog.pg_class v
JOIN pg_catalog.pg_namespace vn ON vn.oid = v.relnamespace
WHERE v.relkind IN ('v', 'm', 'f')
  AND vn.nspname NOT IN ('pg_catalog', 'information_schema')
  AND NOT pg_catalog.starts_with(vn.nspname, 'pg_')
ORDER BY 1";

/// Name, kind, invoker's rights, tenant tables read, readable by the runtime role, has
/// `tenant_id`.
type RelationRow = (String, String, bool, Vec<String>, bool, bool);

/// Rules (other than a view's `_RETURN`) and triggers (other than the binding check and
/// PostgreSQL's internal ones) on tables with a `tenant_id` column: table, `rule`/`trigger`,
/// name, the trigger's function.
const RULES_AND_TRIGGERS: &str = "
SELECT pg_catalog.format('%I.%I', n.nspname, c.relname), 'rule', r.rulename::text, ''
FROM pg_catalog.pg_rewrite r
JOIN pg_catalog.pg_class c ON c.oid = r.ev_class
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE r.rulename <> '_RETURN'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND NOT pg_catalog.starts_with(n.nspname, 'pg_')
  -- On a tenant table, or on any relation the runtime role ($2) can write: a rule's actions
  -- run with the rights of the relation's owner.
  AND (EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
               WHERE a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped)
       OR EXISTS (SELECT 1 FROM pg_catalog.pg_roles m
                  WHERE pg_catalog.pg_has_role($2::text::name, m.oid, 'MEMBER')
                    AND (pg_catalog.has_any_column_privilege(m.oid, c.oid, 'INSERT, UPDATE')
                         OR pg_catalog.has_table_privilege(m.oid, c.oid, 'DELETE'))))
UNION ALL
SELECT pg_catalog.format('%I.%I', n.nspname, c.relname), 'trigger', tg.tgname::text,
       pg_catalog.format('%I.%I(%s)', pn.nspname, p.proname,
                         pg_catalog.pg_get_function_identity_arguments(p.oid))
FROM pg_catalog.pg_trigger tg
JOIN pg_catalog.pg_class c ON c.oid = tg.tgrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_proc p ON p.oid = tg.tgfoid
JOIN pg_catalog.pg_namespace pn ON pn.oid = p.pronamespace
JOIN pg_catalog.pg_attribute a
  ON a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped
WHERE c.relkind IN ('r', 'p') AND NOT tg.tgisinternal AND tg.tgname <> ALL ($1::text[])
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
ORDER BY 1, 2, 3";

/// Unique and exclusion indexes, and foreign keys from or to a table with a `tenant_id`
/// column, that do not lead with that table's `tenant_id`: table, what, name.
const UNSCOPED_KEYS: &str = "
WITH tenant AS (
    SELECT c.oid, a.attnum, pg_catalog.format('%I.%I', n.nspname, c.relname) AS name
    FROM pg_catalog.pg_class c
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    JOIN pg_catalog.pg_attribute a
      ON a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped
    WHERE c.relkind IN ('r', 'p')
      AND n.nspname NOT IN ('pg_catalog', 'information_schema')
      AND NOT pg_catalog.starts_with(n.nspname, 'pg_')
)
SELECT t.name, CASE WHEN i.indisexclusion THEN 'exclusion constraint' ELSE 'unique index' END,
       ic.relname::text
FROM pg_catalog.pg_index i
JOIN tenant t ON t.oid = i.indrelid
JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
WHERE (i.indisunique OR i.indisexclusion) AND i.indkey[0] <> t.attnum
UNION ALL
SELECT t.name, 'foreign key', k.conname::text
FROM pg_catalog.pg_constraint k
JOIN tenant t ON t.oid = k.conrelid
WHERE k.contype = 'f' AND k.conkey[1] <> t.attnum
UNION ALL
SELECT t.name, 'foreign key referencing it', pg_catalog.format('%s on %s', k.conname,
                                                               k.conrelid::regclass)
FROM pg_catalog.pg_constraint k
JOIN tenant t ON t.oid = k.confrelid
WHERE k.contype = 'f' AND k.confkey[1] <> t.attnum
ORDER BY 1, 2, 3";

/// `SECURITY DEFINER` functions whose owner bypasses row-level security (superuser,
/// `BYPASSRLS`, or owner of a table with a `tenant_id` column or row-level security) and that
/// the runtime role (`$1`, through any role it is a member of) can execute, or fire through a
/// trigger on a table it can write: function, owner, how it is reached.
const DEFINER_BYPASS: &str = "
WITH members AS (
    SELECT m.oid FROM pg_catalog.pg_roles m
    WHERE pg_catalog.pg_has_role($1::text::name, m.oid, 'MEMBER')
)
SELECT pg_catalog.format('%I.%I(%s)', n.nspname, p.proname,
                         pg_catalog.pg_get_function_identity_arguments(p.oid)),
       o.rolname::text,
       CASE WHEN EXISTS (SELECT 1 FROM members m
                         WHERE pg_catalog.has_function_privilege(m.oid, p.oid, 'EXECUTE'))
                 AND p.prorettype <> 'pg_catalog.trigger'::regtype
            THEN 'executable' ELSE 'fired by a trigger' END
FROM pg_catalog.pg_proc p
JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
JOIN pg_catalog.pg_roles o ON o.oid = p.proowner
WHERE p.prosecdef
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND (o.rolsuper OR o.rolbypassrls OR EXISTS (
        SELECT 1 FROM pg_catalog.pg_class c
        JOIN pg_catalog.pg_namespace cn ON cn.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p')
          AND cn.nspname NOT IN ('pg_catalog', 'information_schema')
          AND (c.relrowsecurity OR EXISTS (
                SELECT 1 FROM pg_catalog.pg_attribute a
                WHERE a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped))
          AND pg_catalog.pg_has_role(p.proowner, c.relowner, 'MEMBER')))
  AND ((p.prorettype <> 'pg_catalog.trigger'::regtype AND EXISTS (
            SELECT 1 FROM members m
            WHERE pg_catalog.has_function_privilege(m.oid, p.oid, 'EXECUTE')))
       OR EXISTS (
            SELECT 1 FROM pg_catalog.pg_trigger tg, members m
            WHERE tg.tgfoid = p.oid AND NOT tg.tgisinternal
              AND (pg_catalog.has_any_column_privilege(m.oid, tg.tgrelid, 'INSERT, UPDATE')
                   OR pg_catalog.has_table_privilege(m.oid, tg.tgrelid, 'DELETE, TRUNCATE'))))
ORDER BY 1";

/// Everything the policies on tables with a `tenant_id` column depend on, at any depth
/// (`pg_depend`, and through a view to its rule), outside the system schemas: policy, object,
/// an `IMMUTABLE` function, owned by the runtime role (`$1`, or a role it is a member of),
/// writable by it without being a forced row-level-security tenant table.
const POLICY_DEPENDENCIES: &str = "
WITH RECURSIVE members AS (
    SELECT m.oid FROM pg_catalog.pg_roles m
    WHERE pg_catalog.pg_has_role($1::text::name, m.oid, 'MEMBER')
), walk(classid, objid, policy, depth) AS (
    SELECT d.refclassid, d.refobjid,
           pg_catalog.format('%s on %I.%I', p.polname, n.nspname, c.relname), 1
    FROM pg_catalog.pg_policy p
    JOIN pg_catalog.pg_class c ON c.oid = p.polrelid
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    JOIN pg_catalog.pg_depend d
      ON d.classid = 'pg_catalog.pg_policy'::regclass AND d.objid = p.oid
    WHERE NOT (d.refclassid = 'pg_catalog.pg_class'::regclass AND d.refobjid = p.polrelid)
  UNION
    SELECT x.classid, x.objid, w.policy, w.depth + 1
    FROM walk w
    CROSS JOIN LATERAL (
        SELECT d.refclassid, d.refobjid FROM pg_catalog.pg_depend d
        WHERE d.classid = w.classid AND d.objid = w.objid
        UNION ALL
        SELECT 'pg_catalog.pg_rewrite'::regclass, r.oid FROM pg_catalog.pg_rewrite r
        WHERE w.classid = 'pg_catalog.pg_class'::regclass AND r.ev_class = w.objid
    ) AS x(classid, objid)
    WHERE w.depth < 16
), objects AS (
    SELECT DISTINCT w.policy, w.classid, w.objid,
           CASE w.classid
             WHEN 'pg_catalog.pg_proc'::regclass THEN
               (SELECT p.pronamespace FROM pg_catalog.pg_proc p WHERE p.oid = w.objid)
             WHEN 'pg_catalog.pg_class'::regclass THEN
               (SELECT c.relnamespace FROM pg_catalog.pg_class c WHERE c.oid = w.objid)
             WHEN 'pg_catalog.pg_type'::regclass THEN
               (SELECT t.typnamespace FROM pg_catalog.pg_type t WHERE t.oid = w.objid)
             WHEN 'pg_catalog.pg_operator'::regclass THEN
               (SELECT o.oprnamespace FROM pg_catalog.pg_operator o WHERE o.oid = w.objid)
             WHEN 'pg_catalog.pg_namespace'::regclass THEN w.objid
           END AS namespace,
           CASE w.classid
             WHEN 'pg_catalog.pg_proc'::regclass THEN
               (SELECT p.proowner FROM pg_catalog.pg_proc p WHERE p.oid = w.objid)
             WHEN 'pg_catalog.pg_class'::regclass THEN
               (SELECT c.relowner FROM pg_catalog.pg_class c WHERE c.oid = w.objid)
             WHEN 'pg_catalog.pg_type'::regclass THEN
               (SELECT t.typowner FROM pg_catalog.pg_type t WHERE t.oid = w.objid)
             WHEN 'pg_catalog.pg_operator'::regclass THEN
               (SELECT o.oprowner FROM pg_catalog.pg_operator o WHERE o.oid = w.objid)
             WHEN 'pg_catalog.pg_namespace'::regclass THEN
               (SELECT s.nspowner FROM pg_catalog.pg_namespace s WHERE s.oid = w.objid)
           END AS owner
    FROM walk w
    WHERE w.classid IN ('pg_catalog.pg_proc'::regclass, 'pg_catalog.pg_class'::regclass,
                        'pg_catalog.pg_type'::regclass, 'pg_catalog.pg_operator'::regclass,
                        'pg_catalog.pg_namespace'::regclass)
)
SELECT o.policy, pg_catalog.pg_describe_object(o.classid, o.objid, 0),
       o.classid = 'pg_catalog.pg_proc'::regclass AND EXISTS (
           SELECT 1 FROM pg_catalog.pg_proc p WHERE p.oid = o.objid AND p.provolatile = 'i'),
       EXISTS (SELECT 1 FROM members m WHERE m.oid = o.owner),
       o.classid = 'pg_catalog.pg_class'::regclass AND EXISTS (
           SELECT 1 FROM members m, pg_catalog.pg_class c
           WHERE c.oid = o.objid
             AND (pg_catalog.has_any_column_privilege(m.oid, c.oid, 'INSERT, UPDATE')
                  OR pg_catalog.has_table_privilege(m.oid, c.oid, 'DELETE, TRUNCATE'))
             AND NOT (c.relrowsecurity AND c.relforcerowsecurity AND EXISTS (
                 SELECT 1 FROM pg_catalog.pg_attribute a
                 WHERE a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped)))
FROM objects o
JOIN pg_catalog.pg_namespace s ON s.oid = o.namespace
WHERE s.nspname NOT IN ('pg_catalog', 'information_schema')
ORDER BY 1, 2";

/// Policy, object, `IMMUTABLE` function, owned by the runtime role, writable by it.
type DependencyRow = (String, String, bool, bool, bool);

const DEFINER_FUNCTIONS: &str = "
SELECT pg_catalog.format('%I.%I(%s)', n.nspname, p.proname,
                         pg_catalog.pg_get_function_identity_arguments(p.oid))
FROM pg_catalog.pg_proc p
JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
WHERE p.prosecdef
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND NOT coalesce(EXISTS (SELECT 1 FROM pg_catalog.unnest(p.proconfig) s
                           WHERE pg_catalog.starts_with(s, 'search_path=')), false)
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
  AND NOT pg_catalog.starts_with(n.nspname, 'pg_')
  AND tn.nspname NOT IN ('pg_catalog', 'information_schema')
  AND (p.prosrc ~* ('\\m' || pg_catalog.regexp_replace(t.relname, '([^[:alnum:]_])', '\\\\\\1', 'g') || '\\M')
       OR EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                  WHERE d.classid = 'pg_catalog.pg_proc'::regclass AND d.objid = p.oid
                    AND d.refclassid = 'pg_catalog.pg_class'::regclass AND d.refobjid = t.oid))
ORDER BY 1, 2";

/// Columns of a table, for the synthetic row of the policy probe: quoted name, type.
const COLUMNS: &str = "
SELECT pg_catalog.quote_ident(a.attname), pg_catalog.format_type(a.atttypid, a.atttypmod)
FROM pg_catalog.pg_attribute a
WHERE a.attrelid = $1::int8::oid AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum";

/// The policies of a table that apply to the runtime role (`$2`: PUBLIC, or a role it is a
/// member of), with their expressions deparsed (under a `search_path` of `pg_catalog` alone,
/// so every other name comes out schema-qualified): command, permissive, USING, WITH CHECK.
const APPLICABLE_POLICIES: &str = "
SELECT p.polcmd::text, p.polpermissive,
       pg_catalog.pg_get_expr(p.polqual, p.polrelid),
       pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid)
FROM pg_catalog.pg_policy p
WHERE p.polrelid = $1::int8::oid
  AND (0::oid = ANY (p.polroles) OR EXISTS (
        SELECT 1 FROM pg_catalog.unnest(p.polroles) r(oid)
        WHERE pg_catalog.pg_has_role($2::text::name, r.oid, 'MEMBER')))
ORDER BY p.polname";

/// A setting of `app.tenant_id` that must admit no row of another tenant.
#[derive(Debug, Clone, Copy)]
enum Probe {
    /// As the connection found it (unset on a fresh connection).
    Unset,
    /// The empty string.
    Empty,
    /// `RESET app.tenant_id`.
    Reset,
    /// Not a UUID.
    Malformed,
    /// A second tenant (a fresh random UUID, which owns no row).
    OtherTenant,
    /// With signed bindings: the row's own tenant named by the setting alone, without the
    /// proof `app.bind` makes (what injected `set_config` does).
    SettingWithoutProof,
}

impl Probe {
    const ALL: [Self; 5] = [
        Self::Unset,
        Self::Empty,
        Self::Reset,
        Self::Malformed,
        Self::OtherTenant,
    ];

    fn describe(self) -> &'static str {
        match self {
            Self::Unset => "with app.tenant_id unset",
            Self::Empty => "with app.tenant_id empty",
            Self::Reset => "after RESET app.tenant_id",
            Self::Malformed => "with a malformed app.tenant_id",
            Self::OtherTenant => "bound to a second tenant",
            Self::SettingWithoutProof => {
                "with the row's own tenant set without a signed binding's proof"
            }
        }
    }
}

/// One policy's command, kind and expressions.
struct Policy {
    command: String,
    permissive: bool,
    using: Option<String>,
    check: Option<String>,
}

/// The commands the synthetic row is judged for: label, policy command letter, whether the
/// `WITH CHECK` expression decides (falling back to `USING`), as PostgreSQL applies them.
const COMMANDS: [(&str, &str, bool); 5] = [
    ("SELECT", "r", false),
    ("INSERT", "a", true),
    ("UPDATE (existing row)", "w", false),
    ("UPDATE (new row)", "w", true),
    ("DELETE", "d", false),
];

/// The boolean expression PostgreSQL applies for `command`: any permissive policy and every
/// restrictive one; no permissive policy admits nothing.
fn combined(policies: &[Policy], command: &str, check: bool) -> String {
    let relevant = policies
        .iter()
        .filter(|p| p.command == "*" || p.command == command);
    let expression = |p: &Policy| {
        if check {
            p.check.clone().or_else(|| p.using.clone())
        } else {
            p.using.clone()
        }
    };
    let mut permissive = Vec::new();
    let mut restrictive = Vec::new();
    for policy in relevant {
        if let Some(e) = expression(policy) {
            let term = format!("coalesce(({e}), false)");
            if policy.permissive {
                permissive.push(term);
            } else {
                restrictive.push(term);
            }
        }
    }
    let permissive = if permissive.is_empty() {
        "false".to_owned()
    } else {
        permissive.join(" OR ")
    };
    let restrictive = if restrictive.is_empty() {
        "true".to_owned()
    } else {
        restrictive.join(" AND ")
    };
    format!("(({permissive}) AND ({restrictive}))")
}

impl CoverageCheck {
    /// A check judging the connected role as the runtime role.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Judge `role` (the application's runtime role) instead of the connected role.
    #[must_use]
    pub fn runtime_role(mut self, role: &str) -> Self {
        self.runtime_role = Some(role.to_owned());
        self
    }

    /// Trusts the trigger `name` on `table` (`schema.table`, as `format('%I.%I')` prints it):
    /// for triggers your own migrations install on tenant tables, such as an append-only
    /// guard. A trusted trigger's function is trusted too (see
    /// [`trust_function`](Self::trust_function)).
    #[must_use]
    pub fn trust_trigger(mut self, table: &str, name: &str) -> Self {
        self.trusted_triggers
            .push((table.to_owned(), name.to_owned()));
        self
    }

    /// Trusts the `SECURITY DEFINER` function `signature` (`schema.name(argument types)`, as
    /// `format('%I.%I(%s)', .., pg_get_function_identity_arguments(..))` prints it), owned by
    /// the owner of tenant tables and reachable by the runtime role: for functions your own
    /// migrations install deliberately, such as an audit chain's insert trigger.
    #[must_use]
    pub fn trust_function(mut self, signature: &str) -> Self {
        self.trusted_functions.push(signature.to_owned());
        self
    }

    /// Accepts that `table` (`schema.table`) does not `FORCE` row-level security — its owner
    /// reads every tenant's rows — for a table whose owner-run functions must see across
    /// tenants (a queue drained by a `SECURITY DEFINER` job, such as audit-log's pending
    /// events). Every other check still applies to it: the runtime role stays under its
    /// policies.
    #[must_use]
    pub fn trust_unforced_table(mut self, table: &str) -> Self {
        self.unforced_tables.push(table.to_owned());
        self
    }

    /// Runs the check. An empty result means no defect was found.
    ///
    /// # Errors
    /// [`RlsError::Database`] when the catalog cannot be read or the policies cannot be probed
    /// as the runtime role (connect as it, or as a role that may `SET ROLE` to it); no result
    /// is not a clean result. [`RlsError::UnknownRole`] when the runtime role does not exist.
    pub async fn run(&self, conn: &mut PgConnection) -> Result<Vec<Finding>, RlsError> {
        let mut findings = Vec::new();
        let (role, problems) = role_problems(conn, self.runtime_role.as_deref()).await?;
        findings.extend(problems.into_iter().map(|problem| Finding {
            kind: FindingKind::UnsafeRuntimeRole,
            object: role.clone(),
            detail: problem.to_string(),
        }));
        for (object, detail) in support_problems(conn).await?.0 {
            let kind = if detail.starts_with("no ") || detail.starts_with("trigger ") {
                FindingKind::MissingBindingCheck
            } else {
                FindingKind::SupportSchemaMismatch
            };
            findings.push(Finding {
                kind,
                object,
                detail,
            });
        }
        let tables: Vec<(i64, String, bool, bool, bool, i32, String)> =
            sqlx::query_as(TENANT_TABLES)
                .bind(&role)
                .fetch_all(&mut *conn)
                .await?;
        for (oid, table, enabled, forced, indexed, _, _) in &tables {
            self.table_findings(
                conn,
                *oid,
                table,
                *enabled,
                *forced,
                *indexed,
                &mut findings,
            )
            .await?;
        }
        self.relation_findings(conn, &role, &mut findings).await?;
        self.bypass_findings(conn, &role, &mut findings).await?;
        self.probe(conn, &role, &tables, &mut findings).await?;
        findings
            .sort_by(|a, b| (a.kind, &a.object, &a.detail).cmp(&(b.kind, &b.object, &b.detail)));
        findings.dedup();
        Ok(findings)
    }

    /// The catalog findings about one tenant table and its policies (text hints included).
    #[allow(clippy::too_many_arguments)]
    async fn table_findings(
        &self,
        conn: &mut PgConnection,
        oid: i64,
        table: &str,
        enabled: bool,
        forced: bool,
        indexed: bool,
        findings: &mut Vec<Finding>,
    ) -> Result<(), RlsError> {
        let mut add = |kind, detail: String| {
            findings.push(Finding {
                kind,
                object: table.to_owned(),
                detail,
            });
        };
        if !enabled {
            add(
                FindingKind::RlsNotEnabled,
                "ENABLE ROW LEVEL SECURITY is off".into(),
            );
        }
        if !forced && !self.unforced_tables.iter().any(|t| t == table) {
            add(
                FindingKind::RlsNotForced,
                "FORCE ROW LEVEL SECURITY is off".into(),
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
        // Exactly the crate's predicate, for every command and every role: restrictive policies
        // are ANDed with everything else, so no other policy can widen it, and nothing a
        // session can set (an `OR` on a setting, a role it may `SET ROLE` to) can switch it off.
        let restrictive_tenant =
            policies
                .iter()
                .any(|(_, cmd, permissive, using, check, calls_getter)| {
                    !*permissive
                        && cmd == "*"
                        && *calls_getter
                        && is_tenant_predicate(using.as_deref())
                        && is_tenant_predicate(check.as_deref())
                });
        if !restrictive_tenant {
            add(
                FindingKind::NoRestrictiveTenantPolicy,
                "no RESTRICTIVE policy for ALL commands and every role that is exactly \
                 tenant_id = (SELECT app.current_tenant_id())"
                    .into(),
            );
        }
        for (name, cmd, _, using, check, _) in &policies {
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
                // A hint only: the behavioural probe is the test.
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
        Ok(())
    }

    /// Views, materialized views and foreign tables.
    async fn relation_findings(
        &self,
        conn: &mut PgConnection,
        role: &str,
        findings: &mut Vec<Finding>,
    ) -> Result<(), RlsError> {
        let rows: Vec<RelationRow> = sqlx::query_as(RELATIONS_OUTSIDE_RLS)
            .bind(role)
            .fetch_all(&mut *conn)
            .await?;
        for (object, relkind, invoker, tenant_tables, readable, tenant_column) in rows {
            let mut reasons: Vec<String> = tenant_tables
                .iter()
                .map(|t| format!("reads tenant table {t}"))
                .collect();
            if readable {
                reasons.push(format!("readable by {role}"));
            }
            if tenant_column {
                reasons.push("has a tenant_id column".to_owned());
            }
            let kind = match relkind.as_str() {
                "v" if !invoker => FindingKind::ViewWithoutSecurityInvoker,
                "m" => FindingKind::MaterializedViewOverTenantTable,
                "f" => FindingKind::ForeignTable,
                _ => continue,
            };
            findings.extend(reasons.into_iter().map(|detail| Finding {
                kind,
                object: object.clone(),
                detail,
            }));
        }
        Ok(())
    }

    /// Definer functions, rules and triggers, unscoped keys, and what policies depend on.
    async fn bypass_findings(
        &self,
        conn: &mut PgConnection,
        role: &str,
        findings: &mut Vec<Finding>,
    ) -> Result<(), RlsError> {
        let functions: Vec<String> = sqlx::query_scalar(DEFINER_FUNCTIONS)
            .bind(role)
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

        let rules: Vec<(String, String, String, String)> = sqlx::query_as(RULES_AND_TRIGGERS)
            .bind(crate::schema::crate_trigger_names())
            .bind(role)
            .fetch_all(&mut *conn)
            .await?;
        // The pinned support functions are compared exactly by the support check.
        let mut trusted_functions: Vec<String> = crate::schema::PINNED_FUNCTIONS
            .iter()
            .map(|f| f.signature.to_owned())
            .collect();
        trusted_functions.extend(self.trusted_functions.iter().cloned());
        for (table, what, name, function) in rules {
            if what == "rule" {
                findings.push(Finding {
                    kind: FindingKind::RuleOnProtectedTable,
                    object: table,
                    detail: format!("rule {name}"),
                });
            } else if self
                .trusted_triggers
                .iter()
                .any(|(t, n)| *t == table && *n == name)
            {
                trusted_functions.push(function);
            } else {
                findings.push(Finding {
                    kind: FindingKind::UntrustedTrigger,
                    object: table,
                    detail: format!("trigger {name} runs {function}"),
                });
            }
        }
        let definers: Vec<(String, String, String)> = sqlx::query_as(DEFINER_BYPASS)
            .bind(role)
            .fetch_all(&mut *conn)
            .await?;
        for (function, owner, how) in definers {
            if !trusted_functions.contains(&function) {
                findings.push(Finding {
                    kind: FindingKind::SecurityDefinerBypass,
                    object: function,
                    detail: format!(
                        "runs as {owner}, who bypasses row-level security; {how} by {role}"
                    ),
                });
            }
        }

        let keys: Vec<(String, String, String)> =
            sqlx::query_as(UNSCOPED_KEYS).fetch_all(&mut *conn).await?;
        findings.extend(keys.into_iter().map(|(table, what, name)| Finding {
            kind: FindingKind::KeyNotScopedByTenant,
            object: table,
            detail: format!("{what} {name} does not lead with tenant_id"),
        }));

        let dependencies: Vec<DependencyRow> = sqlx::query_as(POLICY_DEPENDENCIES)
            .bind(role)
            .fetch_all(&mut *conn)
            .await?;
        for (policy, object, immutable, owned, writable) in dependencies {
            if immutable {
                findings.push(Finding {
                    kind: FindingKind::ImmutableFunctionInPolicy,
                    object: object.clone(),
                    detail: format!("policy {policy} depends on it"),
                });
            }
            if owned {
                findings.push(Finding {
                    kind: FindingKind::PolicyTrustsRuntimeObject,
                    object: object.clone(),
                    detail: format!("policy {policy} depends on it and {role} owns it"),
                });
            }
            if writable {
                findings.push(Finding {
                    kind: FindingKind::PolicyTrustsRuntimeObject,
                    object,
                    detail: format!("policy {policy} reads it and {role} can write it"),
                });
            }
        }
        Ok(())
    }

    /// The behavioural probe: as the runtime role, in a transaction that is rolled back
    /// whatever happens, with each [`Probe`] setting, a synthetic row of another tenant judged
    /// by each table's own policy expressions, and the rows already in the table read,
    /// updated and deleted.
    /// Only the behavioural probe of every tenant table's policies, as the connected role:
    /// what [`TenantPool::new`](crate::TenantPool::new) runs at start-up. The findings are
    /// `PolicyAdmitsOtherTenant` and `PolicyNotProbed`.
    pub(crate) async fn probe_policies(conn: &mut PgConnection) -> Result<Vec<Finding>, RlsError> {
        // Everything in one transaction: behind a transaction-pooling PgBouncer every
        // statement of it runs on the same server connection.
        sqlx::raw_sql("BEGIN").execute(&mut *conn).await?;
        let result = async {
            let role: String = sqlx::query_scalar("SELECT current_user::text")
                .fetch_one(&mut *conn)
                .await?;
            let tables: Vec<(i64, String, bool, bool, bool, i32, String)> =
                sqlx::query_as(TENANT_TABLES)
                    .bind(&role)
                    .fetch_all(&mut *conn)
                    .await?;
            let mut findings = Vec::new();
            Self::new()
                .probe_in_transaction(conn, &role, &tables, &mut findings)
                .await?;
            Ok::<_, RlsError>(findings)
        }
        .await;
        let rollback = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await;
        let findings = result?;
        rollback?;
        Ok(findings)
    }

    async fn probe(
        &self,
        conn: &mut PgConnection,
        role: &str,
        tables: &[(i64, String, bool, bool, bool, i32, String)],
        findings: &mut Vec<Finding>,
    ) -> Result<(), RlsError> {
        sqlx::raw_sql("BEGIN").execute(&mut *conn).await?;
        let result = self
            .probe_in_transaction(conn, role, tables, findings)
            .await;
        let rollback = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await;
        result?;
        rollback?;
        Ok(())
    }

    async fn probe_in_transaction(
        &self,
        conn: &mut PgConnection,
        role: &str,
        tables: &[(i64, String, bool, bool, bool, i32, String)],
        findings: &mut Vec<Finding>,
    ) -> Result<(), RlsError> {
        sqlx::raw_sql("SET LOCAL statement_timeout = '30s'; SET LOCAL lock_timeout = '2s'")
            .execute(&mut *conn)
            .await?;
        // With signed bindings on, a tenant set without a proof must bind nothing either.
        let has_switch: bool = sqlx::query_scalar(
            "SELECT pg_catalog.to_regprocedure('app.signed_bindings_enabled()') IS NOT NULL",
        )
        .fetch_one(&mut *conn)
        .await?;
        let signed = has_switch
            && sqlx::query_scalar::<_, bool>("SELECT app.signed_bindings_enabled()")
                .fetch_one(&mut *conn)
                .await?;
        let current: String = sqlx::query_scalar("SELECT current_user::text")
            .fetch_one(&mut *conn)
            .await?;
        if current != role {
            sqlx::query("SELECT pg_catalog.set_config('role', $1, true)")
                .bind(role)
                .execute(&mut *conn)
                .await
                .map_err(|_| RlsError::CannotProbeAs(role.to_owned()))?;
        }
        for (oid, table, enabled, ..) in tables {
            if !enabled {
                // Every row is visible: RlsNotEnabled says so already.
                continue;
            }
            self.probe_table(conn, role, *oid, table, signed, findings)
                .await?;
        }
        Ok(())
    }

    async fn probe_table(
        &self,
        conn: &mut PgConnection,
        role: &str,
        oid: i64,
        table: &str,
        signed: bool,
        findings: &mut Vec<Finding>,
    ) -> Result<(), RlsError> {
        use sqlx::Row;
        // Deparse with only pg_catalog on the path, so every other name is schema-qualified
        // and means the same when the expression is evaluated below.
        let path: String = sqlx::query_scalar(
            "SELECT pg_catalog.current_setting('search_path'), \
                    pg_catalog.set_config('search_path', 'pg_catalog', true)",
        )
        .fetch_one(&mut *conn)
        .await?;
        let policies: Vec<(String, bool, Option<String>, Option<String>)> =
            sqlx::query_as(APPLICABLE_POLICIES)
                .bind(oid)
                .bind(role)
                .fetch_all(&mut *conn)
                .await?;
        let columns: Vec<(String, String)> = sqlx::query_as(COLUMNS)
            .bind(oid)
            .fetch_all(&mut *conn)
            .await?;
        sqlx::query("SELECT pg_catalog.set_config('search_path', $1, true)")
            .bind(&path)
            .execute(&mut *conn)
            .await?;
        let policies: Vec<Policy> = policies
            .into_iter()
            .map(|(command, permissive, using, check)| Policy {
                command,
                permissive,
                using,
                check,
            })
            .collect();
        let relation: String = sqlx::query_scalar(
            "SELECT pg_catalog.quote_ident(c.relname) FROM pg_catalog.pg_class c \
             WHERE c.oid = $1::int8::oid",
        )
        .bind(oid)
        .fetch_one(&mut *conn)
        .await?;
        let row = columns
            .iter()
            .map(|(name, ty)| {
                if name == "tenant_id" {
                    format!("CAST($1::text AS {ty}) AS tenant_id")
                } else {
                    format!("NULL::{ty} AS {name}")
                }
            })
            .collect::<Vec<_>>()
            .join(", ");
        let verdicts = COMMANDS
            .iter()
            .map(|(_, letter, check)| combined(&policies, letter, *check))
            .collect::<Vec<_>>()
            .join(", ");
        let synthetic = format!("SELECT {verdicts} FROM (SELECT {row}) AS {relation}");
        let owner_tenant = uuid::Uuid::new_v4().to_string();

        // The positive control: bound to the row's own tenant the probe must evaluate, or its
        // negative results mean nothing.
        savepoint(conn, "rls_guard_probe").await?;
        let control = async {
            sqlx::query("SELECT pg_catalog.set_config('app.tenant_id', $1, true)")
                .bind(&owner_tenant)
                .execute(&mut *conn)
                .await?;
            sqlx::query(&synthetic)
                .bind(&owner_tenant)
                .fetch_one(&mut *conn)
                .await
        }
        .await;
        rollback_to(conn, "rls_guard_probe").await?;
        if let Err(error) = control {
            findings.push(Finding {
                kind: FindingKind::PolicyNotProbed,
                object: table.to_owned(),
                detail: format!(
                    "the policies could not be evaluated for a row's own tenant: {error}"
                ),
            });
            return Ok(());
        }

        let (updatable, deletable): (Option<String>, bool) = {
            let row = sqlx::query(
                "SELECT (SELECT pg_catalog.quote_ident(a.attname) FROM pg_catalog.pg_attribute a \
                         WHERE a.attrelid = $1::int8::oid AND a.attnum > 0 AND NOT a.attisdropped \
                           AND pg_catalog.has_column_privilege(a.attrelid, a.attnum, 'UPDATE') \
                         ORDER BY a.attname <> 'tenant_id', a.attnum LIMIT 1), \
                        pg_catalog.has_table_privilege($1::int8::oid, 'DELETE')",
            )
            .bind(oid)
            .fetch_one(&mut *conn)
            .await?;
            (row.try_get(0)?, row.try_get(1)?)
        };
        let probes = Probe::ALL
            .into_iter()
            .chain(signed.then_some(Probe::SettingWithoutProof));
        // Each setting alone, and again with an actor bound (every user's transaction binds
        // one, so a policy that leaks only then must be found too).
        let runs = probes.flat_map(|probe| [(probe, false), (probe, true)]);
        for (probe, with_actor) in runs {
            let mut leaks = Vec::new();
            savepoint(conn, "rls_guard_probe").await?;
            if with_actor {
                sqlx::query("SELECT pg_catalog.set_config('app.actor_id', $1, true)")
                    .bind(uuid::Uuid::new_v4().to_string())
                    .execute(&mut *conn)
                    .await?;
            }
            let set = match probe {
                Probe::Unset => None,
                Probe::Empty => Some(String::new()),
                Probe::Reset => {
                    sqlx::raw_sql("RESET app.tenant_id")
                        .execute(&mut *conn)
                        .await?;
                    None
                }
                Probe::Malformed => Some("not-a-tenant".to_owned()),
                Probe::OtherTenant => Some(uuid::Uuid::new_v4().to_string()),
                Probe::SettingWithoutProof => Some(owner_tenant.clone()),
            };
            if let Some(value) = &set {
                sqlx::query("SELECT pg_catalog.set_config('app.tenant_id', $1, true)")
                    .bind(value)
                    .execute(&mut *conn)
                    .await?;
            }
            // The synthetic row of another tenant: an error admits nothing.
            savepoint(conn, "rls_guard_step").await?;
            if let Ok(row) = sqlx::query(&synthetic)
                .bind(&owner_tenant)
                .fetch_one(&mut *conn)
                .await
            {
                for (i, (label, ..)) in COMMANDS.iter().enumerate() {
                    if row.try_get::<Option<bool>, _>(i).ok().flatten() == Some(true) {
                        leaks.push(format!("{label} admits a row of another tenant"));
                    }
                }
            }
            rollback_to(conn, "rls_guard_step").await?;
            // Rows already there: none may be visible, updated or deleted.
            savepoint(conn, "rls_guard_step").await?;
            if let Ok(n) = sqlx::query_scalar::<_, i64>(&format!("SELECT count(*) FROM {table}"))
                .fetch_one(&mut *conn)
                .await
                && n > 0
            {
                leaks.push(format!("SELECT shows {n} existing row(s)"));
            }
            rollback_to(conn, "rls_guard_step").await?;
            let writes = [
                updatable
                    .as_ref()
                    .map(|column| ("UPDATE", format!("UPDATE {table} SET {column} = DEFAULT"))),
                deletable.then(|| ("DELETE", format!("DELETE FROM {table}"))),
            ];
            for (verb, sql) in writes.into_iter().flatten() {
                savepoint(conn, "rls_guard_step").await?;
                match sqlx::raw_sql(&sql).execute(&mut *conn).await {
                    Ok(done) if done.rows_affected() == 0 => {}
                    Ok(done) => leaks.push(format!(
                        "{verb} reaches {} existing row(s)",
                        done.rows_affected()
                    )),
                    Err(error) if is_refusal(&error) => {}
                    // Waiting on another session's lock says nothing about the policy: the
                    // probe could not run (an error, never a clean result, never a leak).
                    Err(error) if is_wait(&error) => return Err(RlsError::Database(error)),
                    Err(error) => leaks.push(format!("{verb} reaches existing rows ({error})")),
                }
                rollback_to(conn, "rls_guard_step").await?;
            }
            rollback_to(conn, "rls_guard_probe").await?;
            let actor = if with_actor {
                ", with an actor bound"
            } else {
                ""
            };
            findings.extend(leaks.into_iter().map(|leak| Finding {
                kind: FindingKind::PolicyAdmitsOtherTenant,
                object: table.to_owned(),
                detail: format!("{}{actor}: {leak}", probe.describe()),
            }));
        }
        Ok(())
    }
}

/// Whether a probe's error is the policy refusing before any row was reached: a malformed
/// setting that cannot be cast (SQLSTATE class 22). Every other error of an `UPDATE` or
/// `DELETE` the role is allowed to run means rows were reached (a trigger, a constraint or a
/// `WITH CHECK` fired), or cannot be told apart from it: a leak.
fn is_refusal(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|e| e.code())
        .is_some_and(|code| code.starts_with("22"))
}

/// Whether a probe's error is a lock wait or a statement timeout: another session is in the
/// way, and the probe could not be evaluated.
fn is_wait(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|e| e.code())
        .is_some_and(|code| matches!(&*code, "55P03" | "57014"))
}

async fn savepoint(conn: &mut PgConnection, name: &str) -> Result<(), RlsError> {
    sqlx::raw_sql(&format!("SAVEPOINT {name}"))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

async fn rollback_to(conn: &mut PgConnection, name: &str) -> Result<(), RlsError> {
    sqlx::raw_sql(&format!(
        "ROLLBACK TO SAVEPOINT {name}; RELEASE SAVEPOINT {name}"
    ))
    .execute(&mut *conn)
    .await?;
    Ok(())
}
