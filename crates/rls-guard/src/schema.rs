//! SQL for migrations: the support schema and the helper that makes a table tenant-safe.
//!
//! # Keys and foreign keys
//!
//! Unique and foreign-key checks **bypass row-level security**: PostgreSQL checks them against
//! every row of the table. Two consequences, and the schema shape that closes both:
//!
//! - A single-column foreign key (`project_id REFERENCES projects (id)`) lets tenant A link to
//!   tenant B's project, and its success or failure tells A whether that id exists in B. Use
//!   composite keys: `PRIMARY KEY (tenant_id, id)` on the parent and
//!   `FOREIGN KEY (tenant_id, project_id) REFERENCES projects (tenant_id, id)` on the child, so
//!   a reference can only resolve within the row's own tenant (whose id RLS pins).
//! - A global unique constraint (`UNIQUE (email)`) makes an insert fail when *another* tenant
//!   has the value, which is an existence oracle across tenants. Scope every unique constraint:
//!   `UNIQUE (tenant_id, email)`.
//!
//! Leading every key with `tenant_id` also gives the index that the tenant policy uses.
//!
//! ```
//! let sql = rls_guard::schema::tenant_table_sql("projects").unwrap();
//! assert!(sql.contains("FORCE ROW LEVEL SECURITY"));
//! assert!(rls_guard::schema::tenant_table_sql("projects; DROP TABLE x").is_err());
//! ```

use crate::RlsError;

/// The support schema: run once, as the owner role, before any tenant table.
///
/// - `app.current_tenant_id()`: the bound tenant, or NULL when the setting is unset or empty,
///   so an unbound session matches no row and fails every `WITH CHECK`. A malformed setting is
///   a cast error, never a match.
/// - `app.current_actor_id()`: the bound actor, likewise.
/// - `app.check_row_binding()`: the deferred constraint trigger [`tenant_table_sql`] puts on
///   every tenant table. It runs at `COMMIT` for each written row and raises SQLSTATE `TB001`
///   unless the row, and the binding, still belong to the tenant (and actor) that
///   `TenantTx::commit` restates with `SET LOCAL app.commit_binding = '<tenant>:<actor>'` in the
///   same round trip as `COMMIT`. So SQL injected into a transaction that rebinds it to another
///   tenant cannot commit a write — not even if it restores the binding before the commit — and
///   read-only transactions pay nothing for the check. Forcing the check early
///   (`SET CONSTRAINTS ALL IMMEDIATE`) fails, because the expected tenant is only known at commit.
///   Writers other than `TenantTx` (migrations, data fixes) must do the same: bind with
///   `SET LOCAL app.tenant_id`, and `SET LOCAL app.commit_binding = '<tenant>:'` (tenant,
///   colon, actor or nothing) before `COMMIT`.
pub const SUPPORT_SQL: &str = r"
CREATE SCHEMA IF NOT EXISTS app;
REVOKE CREATE ON SCHEMA app FROM PUBLIC;
GRANT USAGE ON SCHEMA app TO PUBLIC;

CREATE OR REPLACE FUNCTION app.current_tenant_id() RETURNS uuid
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT NULLIF(pg_catalog.current_setting('app.tenant_id', true), '')::uuid $$;

CREATE OR REPLACE FUNCTION app.current_actor_id() RETURNS uuid
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT NULLIF(pg_catalog.current_setting('app.actor_id', true), '')::uuid $$;

CREATE OR REPLACE FUNCTION app.check_row_binding() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
DECLARE
    -- '<tenant>:<actor>', restated by the committer right before COMMIT.
    expected text := pg_catalog.current_setting('app.commit_binding', true);
    tenant text := pg_catalog.split_part(expected, ':', 1);
BEGIN
    IF expected IS NULL OR tenant = '' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'TB001',
            MESSAGE = 'tenant binding check ran before the commit restated the tenant';
    END IF;
    IF pg_catalog.current_setting('app.tenant_id', true) IS DISTINCT FROM tenant
       OR coalesce(pg_catalog.current_setting('app.actor_id', true), '')
          IS DISTINCT FROM pg_catalog.split_part(expected, ':', 2)
       OR (TG_OP <> 'DELETE' AND NEW.tenant_id::text IS DISTINCT FROM tenant)
       OR (TG_OP <> 'INSERT' AND OLD.tenant_id::text IS DISTINCT FROM tenant) THEN
        RAISE EXCEPTION USING
            ERRCODE = 'TB001',
            MESSAGE = 'tenant binding changed inside the transaction';
    END IF;
    RETURN NULL;
END
$$;
";

/// Name of the deferred constraint trigger [`tenant_table_sql`] creates.
pub const BINDING_TRIGGER: &str = "tenant_binding_check";

/// The predicate every tenant policy uses. The sub-select makes PostgreSQL evaluate the setting
/// once per statement (an init plan) instead of once per row.
pub const TENANT_PREDICATE: &str = "tenant_id = (SELECT app.current_tenant_id())";

/// Name of the restrictive policy [`tenant_table_sql`] creates.
pub const RESTRICTIVE_POLICY: &str = "tenant_isolation";
/// Name of the permissive policy [`tenant_table_sql`] creates.
pub const PERMISSIVE_POLICY: &str = "tenant_access";

/// A table name, optionally schema-qualified, of plain lowercase identifiers.
/// Whether `name` is a plain lowercase SQL identifier (`[a-z_][a-z0-9_]*`, at most 63 bytes):
/// safe to splice into SQL unquoted, as role, schema and table names are in generated DDL.
#[must_use]
pub fn is_plain_identifier(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn checked_table(table: &str) -> Result<(Option<&str>, &str), RlsError> {
    let plain = is_plain_identifier;
    let (schema, name) = match table.split_once('.') {
        Some((s, n)) => (Some(s), n),
        None => (None, table),
    };
    if plain(name) && schema.is_none_or(plain) {
        Ok((schema, name))
    } else {
        Err(RlsError::InvalidIdentifier(table.to_owned()))
    }
}

/// SQL that makes `table` (which must have a `tenant_id uuid NOT NULL` column) tenant-safe:
/// ENABLE and FORCE row-level security (so the owner is subject too), a RESTRICTIVE policy that
/// every access must pass whatever other policies are added later, the PERMISSIVE policy
/// PostgreSQL needs to grant any access at all, both with `USING` and `WITH CHECK`, the deferred
/// binding-check trigger (see [`SUPPORT_SQL`]) and an index leading with `tenant_id` unless one
/// exists. Idempotent.
///
/// # Errors
/// [`RlsError::InvalidIdentifier`] unless `table` is `name` or `schema.name` of lowercase
/// letters, digits and underscores.
pub fn tenant_table_sql(table: &str) -> Result<String, RlsError> {
    let (schema, name) = checked_table(table)?;
    let qualified = schema.map_or_else(|| format!("\"{name}\""), |s| format!("\"{s}\".\"{name}\""));
    let regclass = schema.map_or_else(|| name.to_owned(), |s| format!("{s}.{name}"));
    let index = format!("{name}_tenant_id_idx");
    let p = TENANT_PREDICATE;
    Ok(format!(
        r#"
ALTER TABLE {qualified} ENABLE ROW LEVEL SECURITY;
ALTER TABLE {qualified} FORCE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS {RESTRICTIVE_POLICY} ON {qualified};
CREATE POLICY {RESTRICTIVE_POLICY} ON {qualified} AS RESTRICTIVE FOR ALL
    USING ({p}) WITH CHECK ({p});
DROP POLICY IF EXISTS {PERMISSIVE_POLICY} ON {qualified};
CREATE POLICY {PERMISSIVE_POLICY} ON {qualified} AS PERMISSIVE FOR ALL
    USING ({p}) WITH CHECK ({p});
DROP TRIGGER IF EXISTS {BINDING_TRIGGER} ON {qualified};
CREATE CONSTRAINT TRIGGER {BINDING_TRIGGER} AFTER INSERT OR UPDATE OR DELETE ON {qualified}
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION app.check_row_binding();
DO $rls_guard$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_catalog.pg_index i
        JOIN pg_catalog.pg_attribute a
          ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] AND a.attname = 'tenant_id'
        WHERE i.indrelid = '{regclass}'::regclass
    ) THEN
        CREATE INDEX "{index}" ON {qualified} (tenant_id);
    END IF;
END
$rls_guard$;
"#
    ))
}

/// Runs [`tenant_table_sql`] for `table` on `conn` (as the table's owner).
///
/// # Errors
/// [`RlsError::InvalidIdentifier`] for a bad name; [`RlsError::Database`] when a statement fails.
pub async fn make_tenant_safe(conn: &mut sqlx::PgConnection, table: &str) -> Result<(), RlsError> {
    let sql = tenant_table_sql(table)?;
    sqlx::raw_sql(&sql).execute(conn).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_names_that_are_not_plain_identifiers() {
        for bad in [
            "", "Projects", "a b", "x;drop", "\"x\"", "a.b.c", ".x", "x.", "1x", "é",
        ] {
            assert!(tenant_table_sql(bad).is_err(), "{bad:?}");
        }
        assert!(tenant_table_sql("crm.contacts").is_ok());
    }
}
