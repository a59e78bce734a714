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

/// The pinned body of `app.current_tenant_id()`.
macro_rules! current_tenant_body {
    () => {
        " SELECT NULLIF(pg_catalog.current_setting('app.tenant_id', true), '')::pg_catalog.uuid "
    };
}

/// The pinned body of `app.current_actor_id()`.
macro_rules! current_actor_body {
    () => {
        " SELECT NULLIF(pg_catalog.current_setting('app.actor_id', true), '')::pg_catalog.uuid "
    };
}

/// The pinned body of `app.check_row_binding()`.
macro_rules! check_row_binding_body {
    () => {
        r"
DECLARE
    -- '<tenant>:<actor>', restated by the committer right before COMMIT.
    expected pg_catalog.text := pg_catalog.current_setting('app.commit_binding', true);
    tenant pg_catalog.text := pg_catalog.split_part(expected, ':', 1);
BEGIN
    IF expected IS NULL OR tenant = '' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'TB001',
            MESSAGE = 'tenant binding check ran before the commit restated the tenant';
    END IF;
    IF pg_catalog.current_setting('app.tenant_id', true) IS DISTINCT FROM tenant
       OR coalesce(pg_catalog.current_setting('app.actor_id', true), '')
          IS DISTINCT FROM pg_catalog.split_part(expected, ':', 2)
       OR (TG_OP <> 'DELETE' AND NEW.tenant_id::pg_catalog.text IS DISTINCT FROM tenant)
       OR (TG_OP <> 'INSERT' AND OLD.tenant_id::pg_catalog.text IS DISTINCT FROM tenant) THEN
        RAISE EXCEPTION USING
            ERRCODE = 'TB001',
            MESSAGE = 'tenant binding changed inside the transaction';
    END IF;
    RETURN NULL;
END
"
    };
}

/// The pinned body of `app.record_binding_writes()`.
macro_rules! record_binding_writes_body {
    () => {
        r"
BEGIN
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO app.binding_writes (xid, tenant)
        SELECT DISTINCT pg_catalog.pg_current_xact_id(), coalesce(n.tenant_id::pg_catalog.text, '')
        FROM rls_guard_new n
        ON CONFLICT DO NOTHING;
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        INSERT INTO app.binding_writes (xid, tenant)
        SELECT DISTINCT pg_catalog.pg_current_xact_id(), coalesce(o.tenant_id::pg_catalog.text, '')
        FROM rls_guard_old o
        ON CONFLICT DO NOTHING;
    END IF;
    -- Records of transactions that ended without verifying (writers other than TenantTx):
    -- cleared now and then, never blocking on another cleaner.
    IF pg_catalog.random() < 0.02 THEN
        DELETE FROM app.binding_writes w
        WHERE w.ctid = ANY (ARRAY(
            SELECT x.ctid FROM app.binding_writes x
            WHERE x.xid < pg_catalog.pg_snapshot_xmin(pg_catalog.pg_current_snapshot())
            LIMIT 1000 FOR UPDATE SKIP LOCKED));
    END IF;
    RETURN NULL;
END
"
    };
}

/// The pinned body of `app.verify_binding_writes(text)`.
macro_rules! verify_binding_writes_body {
    () => {
        r"
DECLARE
    current_xid pg_catalog.xid8 := pg_catalog.pg_current_xact_id_if_assigned();
BEGIN
    IF current_xid IS NULL THEN
        RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM app.binding_writes w
               WHERE w.xid = current_xid AND w.tenant IS DISTINCT FROM expected) THEN
        RAISE EXCEPTION USING
            ERRCODE = 'TB001',
            MESSAGE = 'a write in this transaction touched another tenant';
    END IF;
    DELETE FROM app.binding_writes w WHERE w.xid = current_xid;
END
"
    };
}

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
pub const SUPPORT_SQL: &str = concat!(
    r"
CREATE SCHEMA IF NOT EXISTS app;
REVOKE CREATE ON SCHEMA app FROM PUBLIC;
GRANT USAGE ON SCHEMA app TO PUBLIC;
-- Temporary objects outlive a transaction on a pooled connection and are searched first: the
-- runtime role must not create them (the start-up check refuses a role that can). Revoked here
-- when the migration role owns the database; otherwise the database owner must do it.
DO $rls_guard$
BEGIN
    IF pg_catalog.pg_has_role(
        (SELECT d.datdba FROM pg_catalog.pg_database d
         WHERE d.datname = pg_catalog.current_database()), 'USAGE') THEN
        EXECUTE pg_catalog.format('REVOKE TEMPORARY ON DATABASE %I FROM PUBLIC',
                                  pg_catalog.current_database());
    END IF;
END
$rls_guard$;

CREATE OR REPLACE FUNCTION app.current_tenant_id() RETURNS uuid
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$",
    current_tenant_body!(),
    r"$$;

CREATE OR REPLACE FUNCTION app.current_actor_id() RETURNS uuid
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$",
    current_actor_body!(),
    r"$$;

CREATE OR REPLACE FUNCTION app.check_row_binding() RETURNS trigger
    LANGUAGE plpgsql
    AS $$",
    check_row_binding_body!(),
    r"$$;

-- What each transaction wrote, by tenant: written only by the statement triggers below (as the
-- owner), read by the commit of a tenant-bound transaction. The runtime role has no privilege
-- on it, so SQL it runs can neither plant nor erase a record.
CREATE UNLOGGED TABLE IF NOT EXISTS app.binding_writes (
    xid pg_catalog.xid8 NOT NULL,
    tenant pg_catalog.text NOT NULL,
    PRIMARY KEY (xid, tenant)
);
REVOKE ALL ON app.binding_writes FROM PUBLIC;

CREATE OR REPLACE FUNCTION app.record_binding_writes() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $$",
    record_binding_writes_body!(),
    r"$$;
REVOKE ALL ON FUNCTION app.record_binding_writes() FROM PUBLIC;

CREATE OR REPLACE FUNCTION app.verify_binding_writes(expected text) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $$",
    verify_binding_writes_body!(),
    r"$$;
REVOKE ALL ON FUNCTION app.verify_binding_writes(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION app.verify_binding_writes(text) TO PUBLIC;
"
);

/// One support function as [`SUPPORT_SQL`] installs it: the start-up check and the coverage
/// check compare the installed function with this, exactly.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PinnedFunction {
    /// `app.name(args)`, as `regprocedure` prints it.
    pub(crate) signature: &'static str,
    /// The body, exactly as stored in `pg_proc.prosrc`.
    pub(crate) body: &'static str,
    /// `sql` or `plpgsql`.
    pub(crate) language: &'static str,
    /// `s` (STABLE) or `v` (VOLATILE); never `i`.
    pub(crate) volatility: &'static str,
    /// The return type, as `format_type` prints it.
    pub(crate) returns: &'static str,
    /// Whether it runs as its owner (`SECURITY DEFINER`, with a pinned `search_path`).
    pub(crate) definer: bool,
}

/// The `search_path` every pinned `SECURITY DEFINER` function sets.
pub(crate) const DEFINER_SEARCH_PATH: &str = "search_path=pg_catalog, pg_temp";

/// The support functions every policy and binding check relies on.
pub(crate) const PINNED_FUNCTIONS: [PinnedFunction; 5] = [
    PinnedFunction {
        signature: "app.current_tenant_id()",
        body: current_tenant_body!(),
        language: "sql",
        volatility: "s",
        returns: "uuid",
        definer: false,
    },
    PinnedFunction {
        signature: "app.current_actor_id()",
        body: current_actor_body!(),
        language: "sql",
        volatility: "s",
        returns: "uuid",
        definer: false,
    },
    PinnedFunction {
        signature: "app.check_row_binding()",
        body: check_row_binding_body!(),
        language: "plpgsql",
        volatility: "v",
        returns: "trigger",
        definer: false,
    },
    PinnedFunction {
        signature: "app.record_binding_writes()",
        body: record_binding_writes_body!(),
        language: "plpgsql",
        volatility: "v",
        returns: "trigger",
        definer: true,
    },
    PinnedFunction {
        signature: "app.verify_binding_writes(expected text)",
        body: verify_binding_writes_body!(),
        language: "plpgsql",
        volatility: "v",
        returns: "void",
        definer: true,
    },
];

/// The names of every trigger [`tenant_table_sql`] creates.
pub(crate) fn crate_trigger_names() -> Vec<&'static str> {
    let mut names = vec![BINDING_TRIGGER];
    names.extend(RECORD_TRIGGERS.iter().map(|(name, ..)| *name));
    names
}

/// The statement triggers [`tenant_table_sql`] creates to record what each transaction wrote:
/// name, event, transition tables.
pub(crate) const RECORD_TRIGGERS: [(&str, &str, &str); 3] = [
    (
        "tenant_binding_record_insert",
        "INSERT",
        "NEW TABLE AS rls_guard_new",
    ),
    (
        "tenant_binding_record_update",
        "UPDATE",
        "OLD TABLE AS rls_guard_old NEW TABLE AS rls_guard_new",
    ),
    (
        "tenant_binding_record_delete",
        "DELETE",
        "OLD TABLE AS rls_guard_old",
    ),
];

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
    let record: String = RECORD_TRIGGERS
        .iter()
        .map(|(trigger, event, tables)| {
            format!(
                "DROP TRIGGER IF EXISTS {trigger} ON {qualified};\n\
                 CREATE TRIGGER {trigger} AFTER {event} ON {qualified} REFERENCING {tables}\n    \
                 FOR EACH STATEMENT EXECUTE FUNCTION app.record_binding_writes();\n"
            )
        })
        .collect();
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
{record}DO $rls_guard$
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
