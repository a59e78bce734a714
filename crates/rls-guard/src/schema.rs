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

/// The proof `app.bind` sets and the signed getters recompute, as an SQL expression over the
/// key record named `$key` and the variables `tenant` and `actor`: HMAC-SHA256 (with the key's
/// precomputed pads) of the tenant, the actor, this backend's process id and this
/// transaction's start, hex.
macro_rules! binding_proof {
    ($key:literal) => {
        concat!(
            "pg_catalog.encode(pg_catalog.sha256(",
            $key,
            ".outer_pad || pg_catalog.sha256(",
            $key,
            ".inner_pad || pg_catalog.convert_to(
            'proof:' || tenant || ':' || actor || ':' || pg_catalog.pg_backend_pid() || ':' ||
            pg_catalog.extract('epoch', pg_catalog.transaction_timestamp()), 'UTF8'))), 'hex')"
        )
    };
}

/// A getter's pinned body with signed bindings: the settings count only while
/// `app.binding_proof` holds the proof `app.bind` made for this backend and transaction.
/// `$unbound` is the condition under which it returns NULL at once, `$value` what it returns.
macro_rules! signed_getter_body {
    ($unbound:literal, $value:literal) => {
        concat!(
            r"
DECLARE
    tenant pg_catalog.text := NULLIF(pg_catalog.current_setting('app.tenant_id', true), '');
    actor pg_catalog.text := coalesce(pg_catalog.current_setting('app.actor_id', true), '');
    k record;
BEGIN
    IF ",
            $unbound,
            r" THEN
        RETURN NULL;
    END IF;
    SELECT b.inner_pad, b.outer_pad INTO k FROM app.binding_keys b
    WHERE b.retired_at IS NULL ORDER BY b.id DESC LIMIT 1;
    IF NOT FOUND OR pg_catalog.current_setting('app.binding_proof', true) IS DISTINCT FROM
        ",
            binding_proof!("k"),
            r" THEN
        RETURN NULL;
    END IF;
    RETURN ",
            $value,
            r"::pg_catalog.uuid;
END
"
        )
    };
}

/// The pinned body of `app.current_tenant_id()` with signed bindings.
macro_rules! signed_tenant_body {
    () => {
        signed_getter_body!("tenant IS NULL", "tenant")
    };
}

/// The pinned body of `app.current_actor_id()` with signed bindings.
macro_rules! signed_actor_body {
    () => {
        signed_getter_body!("tenant IS NULL OR actor = ''", "actor")
    };
}

/// The pinned body of `app.bind(text, text, text, text)`: verifies the application's signature
/// over the binding and its age, then binds the transaction with a proof tied to this backend
/// and this transaction.
macro_rules! bind_body {
    () => {
        concat!(
            r"
DECLARE
    message pg_catalog.bytea;
    k record;
    newest record;
    verified pg_catalog.bool := false;
    age pg_catalog.numeric;
BEGIN
    SELECT b.inner_pad, b.outer_pad INTO newest FROM app.binding_keys b
    WHERE b.retired_at IS NULL ORDER BY b.id DESC LIMIT 1;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'TB002', MESSAGE = 'signed tenant bindings are not enabled';
    END IF;
    -- The values must be what they claim to be before anything is compared.
    PERFORM tenant::pg_catalog.uuid;
    IF actor <> '' THEN
        PERFORM actor::pg_catalog.uuid;
    END IF;
    message := pg_catalog.convert_to('v1:' || tenant || ':' || actor || ':' || issued_at, 'UTF8');
    FOR k IN SELECT b.inner_pad, b.outer_pad FROM app.binding_keys b
             WHERE b.retired_at IS NULL OR b.retired_at > pg_catalog.now() LOOP
        -- Compared through a second hash, so the time taken says nothing about the signature.
        IF pg_catalog.sha256(pg_catalog.convert_to(signature, 'UTF8')) =
           pg_catalog.sha256(pg_catalog.convert_to(pg_catalog.encode(
               pg_catalog.sha256(k.outer_pad || pg_catalog.sha256(k.inner_pad || message)), 'hex'),
               'UTF8')) THEN
            verified := true;
        END IF;
    END LOOP;
    IF NOT verified THEN
        RAISE EXCEPTION USING ERRCODE = 'TB002', MESSAGE = 'the tenant binding signature does not verify';
    END IF;
    age := pg_catalog.date_part('epoch', pg_catalog.clock_timestamp()) - issued_at::pg_catalog.numeric;
    IF age > 120 OR age < -120 THEN
        RAISE EXCEPTION USING ERRCODE = 'TB002', MESSAGE = 'the tenant binding is not fresh';
    END IF;
    PERFORM pg_catalog.set_config('app.tenant_id', tenant, true);
    PERFORM pg_catalog.set_config('app.actor_id', actor, true);
    PERFORM pg_catalog.set_config('app.binding_proof', ",
            binding_proof!("newest"),
            r", true);
    RETURN tenant;
END
"
        )
    };
}

/// The pinned body of `app.signed_bindings_enabled()`: whether a key is active, for the
/// runtime role's start-up check (it cannot read the key table).
macro_rules! signed_enabled_body {
    () => {
        " SELECT EXISTS (SELECT 1 FROM app.binding_keys WHERE retired_at IS NULL) "
    };
}

/// The pinned body of `app.bind_trusted(text, text)`: the owner's own binding in signed mode
/// (migrations, data fixes). It reads the key table, which only the owner may.
macro_rules! bind_trusted_body {
    () => {
        concat!(
            r"
DECLARE
    newest record;
BEGIN
    SELECT b.inner_pad, b.outer_pad INTO STRICT newest FROM app.binding_keys b
    WHERE b.retired_at IS NULL ORDER BY b.id DESC LIMIT 1;
    PERFORM tenant::pg_catalog.uuid;
    PERFORM pg_catalog.set_config('app.tenant_id', tenant, true);
    PERFORM pg_catalog.set_config('app.actor_id', actor, true);
    PERFORM pg_catalog.set_config('app.binding_proof', ",
            binding_proof!("newest"),
            r", true);
    RETURN tenant;
END
"
        )
    };
}

/// Installs `app.current_tenant_id()` and `app.current_actor_id()` for the mode the database is
/// in: signed when `app.binding_keys` holds a key that is not retired.
macro_rules! install_getters {
    () => {
        concat!(
            r"
DO $rls_guard$
BEGIN
    IF EXISTS (SELECT 1 FROM app.binding_keys WHERE retired_at IS NULL) THEN
        CREATE OR REPLACE FUNCTION app.current_tenant_id() RETURNS uuid
            LANGUAGE plpgsql STABLE PARALLEL RESTRICTED SECURITY DEFINER
            SET search_path = pg_catalog, pg_temp
            AS $getter$",
            signed_tenant_body!(),
            r"$getter$;
        CREATE OR REPLACE FUNCTION app.current_actor_id() RETURNS uuid
            LANGUAGE plpgsql STABLE PARALLEL RESTRICTED SECURITY DEFINER
            SET search_path = pg_catalog, pg_temp
            AS $getter$",
            signed_actor_body!(),
            r"$getter$;
    ELSE
        CREATE OR REPLACE FUNCTION app.current_tenant_id() RETURNS uuid
            LANGUAGE sql STABLE PARALLEL SAFE SECURITY INVOKER
            AS $getter$",
            current_tenant_body!(),
            r"$getter$;
        CREATE OR REPLACE FUNCTION app.current_actor_id() RETURNS uuid
            LANGUAGE sql STABLE PARALLEL SAFE SECURITY INVOKER
            AS $getter$",
            current_actor_body!(),
            r"$getter$;
    END IF;
END
$rls_guard$;
"
        )
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
    -- Nothing is deleted here (anyone may call this function): the records of finished
    -- transactions are cleared by the recording trigger, behind the oldest running one.
END
"
    };
}

/// The pinned body of `app.require_live_session(boolean)`.
macro_rules! require_live_session_body {
    () => {
        r"
BEGIN
    IF live IS NOT TRUE THEN
        RAISE EXCEPTION USING
            ERRCODE = 'TB401',
            MESSAGE = 'the session this statement acts for has ended';
    END IF;
    RETURN true;
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
/// - `app.require_live_session(boolean)`: raises SQLSTATE `TB401` unless its argument is true;
///   the binding of a context whose actor acts through a session calls it with the answer of
///   the [`SessionLiveness`](crate::SessionLiveness) check.
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

-- The keys of signed bindings (see ENABLE_SIGNED_BINDINGS_SQL): readable by the owner only.
CREATE TABLE IF NOT EXISTS app.binding_keys (
    id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    secret bytea NOT NULL CHECK (pg_catalog.length(secret) = 32),
    inner_pad bytea NOT NULL,
    outer_pad bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    retired_at timestamptz
);
REVOKE ALL ON app.binding_keys FROM PUBLIC;
",
    install_getters!(),
    r"
CREATE OR REPLACE FUNCTION app.bind(tenant text, actor text, issued_at text, signature text)
    RETURNS text
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $$",
    bind_body!(),
    r"$$;
REVOKE ALL ON FUNCTION app.bind(text, text, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION app.bind(text, text, text, text) TO PUBLIC;

CREATE OR REPLACE FUNCTION app.signed_bindings_enabled() RETURNS boolean
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $$",
    signed_enabled_body!(),
    r"$$;

CREATE OR REPLACE FUNCTION app.bind_trusted(tenant text, actor text) RETURNS text
    LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp
    AS $$",
    bind_trusted_body!(),
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

-- Raises SQLSTATE TB401 unless the session a statement acts for is live (see
-- rls_guard::SessionLiveness): the binding calls it with the answer of the liveness check.
-- It names nothing a search path could resolve, so it carries no SET clause (each call of a
-- function with one saves and restores the setting).
CREATE OR REPLACE FUNCTION app.require_live_session(live boolean) RETURNS boolean
    LANGUAGE plpgsql VOLATILE SECURITY INVOKER
    AS $$",
    require_live_session_body!(),
    r"$$;
"
);

/// Turns on signed tenant bindings (run as the owner, after [`SUPPORT_SQL`]; idempotent):
/// creates the first key unless one is active, and reinstalls `app.current_tenant_id()` and
/// `app.current_actor_id()` so that they count the tenant setting only under a valid proof.
///
/// Afterwards a binding is made only by `app.bind(tenant, actor, issued_at, signature)` with a
/// signature of the application's [`BindingKey`](crate::BindingKey) (read it with
/// [`binding_key`], as the owner, and give it to
/// [`TenantPool::with_binding_key`](crate::TenantPool::with_binding_key)), or by the owner's
/// `app.bind_trusted(tenant, actor)`. A tenant that SQL sets with `set_config` or `SET` is
/// ignored: every policy sees no tenant.
pub const ENABLE_SIGNED_BINDINGS_SQL: &str = concat!(
    r"
DO $rls_guard$
DECLARE
    secret pg_catalog.bytea;
    inner_pad pg_catalog.bytea := pg_catalog.decode(pg_catalog.repeat('36', 64), 'hex');
    outer_pad pg_catalog.bytea := pg_catalog.decode(pg_catalog.repeat('5c', 64), 'hex');
BEGIN
    IF NOT EXISTS (SELECT 1 FROM app.binding_keys WHERE retired_at IS NULL) THEN
        -- 32 bytes from the server's strong random source (three random UUIDs, hashed).
        secret := pg_catalog.sha256(pg_catalog.uuid_send(pg_catalog.gen_random_uuid())
                                    || pg_catalog.uuid_send(pg_catalog.gen_random_uuid())
                                    || pg_catalog.uuid_send(pg_catalog.gen_random_uuid()));
        FOR i IN 0..31 LOOP
            inner_pad := pg_catalog.set_byte(inner_pad, i, pg_catalog.get_byte(secret, i) # 54);
            outer_pad := pg_catalog.set_byte(outer_pad, i, pg_catalog.get_byte(secret, i) # 92);
        END LOOP;
        INSERT INTO app.binding_keys (secret, inner_pad, outer_pad)
        VALUES (secret, inner_pad, outer_pad);
    END IF;
END
$rls_guard$;
",
    install_getters!()
);

/// Rotates the binding key (run as the owner): adds a new key and retires every older one
/// after `grace_seconds` (applications holding an old key keep binding until then).
/// Restart the applications with the new key (see [`binding_key`]) within the grace period.
#[must_use]
pub fn rotate_binding_key_sql(grace_seconds: u32) -> String {
    format!(
        "UPDATE app.binding_keys SET retired_at = pg_catalog.now() + interval '{grace_seconds} seconds' \
         WHERE retired_at IS NULL; \
         {}",
        ENABLE_SIGNED_BINDINGS_SQL
    )
}

/// The newest active binding key, read as the owner (the runtime role cannot).
///
/// # Errors
/// [`RlsError::Database`] when the key cannot be read (not the owner, or signed bindings not
/// enabled: no active key).
pub async fn binding_key(conn: &mut sqlx::PgConnection) -> Result<crate::BindingKey, RlsError> {
    let secret: Vec<u8> = sqlx::query_scalar(
        "SELECT secret FROM app.binding_keys WHERE retired_at IS NULL ORDER BY id DESC LIMIT 1",
    )
    .fetch_one(conn)
    .await?;
    crate::BindingKey::from_bytes(&secret.into())
}

/// One support function as [`SUPPORT_SQL`] installs it: the start-up check and the coverage
/// check compare the installed function with this, exactly.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PinnedFunction {
    /// `app.name(args)`, as `format('%I.%I(%s)', .., pg_get_function_identity_arguments(..))`
    /// prints it.
    pub(crate) signature: &'static str,
    /// The body, exactly as stored in `pg_proc.prosrc`.
    pub(crate) body: &'static str,
    /// `sql` or `plpgsql`.
    pub(crate) language: &'static str,
    /// `s` (STABLE) or `v` (VOLATILE); never `i`.
    pub(crate) volatility: &'static str,
    /// The return type, as `format_type` prints it.
    pub(crate) returns: &'static str,
    /// Whether it runs as its owner (`SECURITY DEFINER`).
    pub(crate) definer: bool,
    /// Its `SET` clauses, as `array_to_string(proconfig, ';')` prints them.
    pub(crate) config: &'static str,
}

/// The `search_path` every pinned plpgsql function with `SET` clauses sets.
const PINNED_PATH: &str = "search_path=pg_catalog, pg_temp";

const fn pinned(
    signature: &'static str,
    body: &'static str,
    language: &'static str,
    volatility: &'static str,
    returns: &'static str,
    definer: bool,
    config: &'static str,
) -> PinnedFunction {
    PinnedFunction {
        signature,
        body,
        language,
        volatility,
        returns,
        definer,
        config,
    }
}

/// The support functions every policy and binding check relies on. The first two are the
/// getters as installed without signed bindings; [`SIGNED_GETTERS`] replaces them with signed
/// bindings on.
pub(crate) const PINNED_FUNCTIONS: [PinnedFunction; 9] = [
    pinned(
        "app.current_tenant_id()",
        current_tenant_body!(),
        "sql",
        "s",
        "uuid",
        false,
        "",
    ),
    pinned(
        "app.current_actor_id()",
        current_actor_body!(),
        "sql",
        "s",
        "uuid",
        false,
        "",
    ),
    pinned(
        "app.check_row_binding()",
        check_row_binding_body!(),
        "plpgsql",
        "v",
        "trigger",
        false,
        "",
    ),
    pinned(
        "app.record_binding_writes()",
        record_binding_writes_body!(),
        "plpgsql",
        "v",
        "trigger",
        true,
        PINNED_PATH,
    ),
    pinned(
        "app.verify_binding_writes(expected text)",
        verify_binding_writes_body!(),
        "plpgsql",
        "v",
        "void",
        true,
        PINNED_PATH,
    ),
    pinned(
        "app.bind(tenant text, actor text, issued_at text, signature text)",
        bind_body!(),
        "plpgsql",
        "v",
        "text",
        true,
        PINNED_PATH,
    ),
    pinned(
        "app.signed_bindings_enabled()",
        signed_enabled_body!(),
        "sql",
        "s",
        "boolean",
        true,
        PINNED_PATH,
    ),
    pinned(
        "app.bind_trusted(tenant text, actor text)",
        bind_trusted_body!(),
        "plpgsql",
        "v",
        "text",
        false,
        PINNED_PATH,
    ),
    pinned(
        "app.require_live_session(live boolean)",
        require_live_session_body!(),
        "plpgsql",
        "v",
        "boolean",
        false,
        "",
    ),
];

/// The getters with signed bindings on (see [`ENABLE_SIGNED_BINDINGS_SQL`]), in the order of
/// the first two entries of [`PINNED_FUNCTIONS`].
pub(crate) const SIGNED_GETTERS: [PinnedFunction; 2] = [
    pinned(
        "app.current_tenant_id()",
        signed_tenant_body!(),
        "plpgsql",
        "s",
        "uuid",
        true,
        PINNED_PATH,
    ),
    pinned(
        "app.current_actor_id()",
        signed_actor_body!(),
        "plpgsql",
        "s",
        "uuid",
        true,
        PINNED_PATH,
    ),
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

/// A kind of write to a tenant table: what the binding check of [`tenant_table_sql_for`] holds
/// to the tenant a transaction commits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Write {
    /// `INSERT` (and the insert of `INSERT … ON CONFLICT DO UPDATE`, `MERGE`, `COPY FROM`).
    Insert,
    /// `UPDATE`.
    Update,
    /// `DELETE`.
    Delete,
}

impl Write {
    /// Every kind of write: what [`tenant_table_sql`] checks.
    pub const ALL: [Self; 3] = [Self::Insert, Self::Update, Self::Delete];

    /// The SQL keyword.
    #[must_use]
    pub fn keyword(self) -> &'static str {
        match self {
            Self::Insert => "INSERT",
            Self::Update => "UPDATE",
            Self::Delete => "DELETE",
        }
    }

    /// The event's bit in `pg_trigger.tgtype`.
    pub(crate) fn trigger_bit(self) -> i32 {
        match self {
            Self::Insert => 4,
            Self::Delete => 8,
            Self::Update => 16,
        }
    }
}

/// SQL that makes `table` (which must have a `tenant_id uuid NOT NULL` column) tenant-safe:
/// ENABLE and FORCE row-level security (so the owner is subject too), a RESTRICTIVE policy that
/// every access must pass whatever other policies are added later, the PERMISSIVE policy
/// PostgreSQL needs to grant any access at all, both with `USING` and `WITH CHECK`, the deferred
/// binding-check trigger (see [`SUPPORT_SQL`]) for every kind of write, and an index leading
/// with `tenant_id` unless one exists. Idempotent.
///
/// # Errors
/// [`RlsError::InvalidIdentifier`] unless `table` is `name` or `schema.name` of lowercase
/// letters, digits and underscores.
pub fn tenant_table_sql(table: &str) -> Result<String, RlsError> {
    tenant_table_sql_for(table, &Write::ALL)
}

/// [`tenant_table_sql`] with the binding check (the deferred trigger and the statement triggers
/// that record what a transaction wrote) made for the writes in `checked` only, and removed
/// for the others. Idempotent.
///
/// The check holds each write of a transaction to the tenant it commits for; it costs a trigger
/// call per written row. Leave a kind of write out only for a table that no role but its owner
/// may write that way: an append-only log written by one `SECURITY DEFINER` function as the
/// owner (whose row policies, forced, still hold every row to the binding in force when it is
/// written), or a queue that the application inserts into and only such a function deletes
/// from. [`verify_support_schema`](crate::verify_support_schema) (run when a
/// [`TenantPool`](crate::TenantPool) starts) and the coverage check then refuse the table as soon
/// as any role other than the owner, its members and superusers may make a write the trigger
/// does not check (by a grant on the table or on a column, to the role, a role it belongs to or
/// `PUBLIC`, or by deleting from or updating the parent of a foreign key whose referential
/// action writes the table). The owner can drop any trigger, so it was never held by one.
///
/// # Errors
/// [`RlsError::InvalidIdentifier`] unless `table` is `name` or `schema.name` of lowercase
/// letters, digits and underscores; [`RlsError::NoCheckedWrite`] when `checked` is empty (a
/// table without any binding check is refused by every check of this crate).
pub fn tenant_table_sql_for(table: &str, checked: &[Write]) -> Result<String, RlsError> {
    let (schema, name) = checked_table(table)?;
    let events: Vec<&str> = Write::ALL
        .iter()
        .filter(|w| checked.contains(w))
        .map(|w| w.keyword())
        .collect();
    if events.is_empty() {
        return Err(RlsError::NoCheckedWrite);
    }
    let events = events.join(" OR ");
    let qualified = schema.map_or_else(|| format!("\"{name}\""), |s| format!("\"{s}\".\"{name}\""));
    let regclass = schema.map_or_else(|| name.to_owned(), |s| format!("{s}.{name}"));
    let index = format!("{name}_tenant_id_idx");
    let p = TENANT_PREDICATE;
    let record: String = RECORD_TRIGGERS
        .iter()
        .map(|(trigger, event, tables)| {
            let drop = format!("DROP TRIGGER IF EXISTS {trigger} ON {qualified};\n");
            if checked.iter().any(|w| w.keyword() == *event) {
                format!(
                    "{drop}CREATE TRIGGER {trigger} AFTER {event} ON {qualified} REFERENCING {tables}\n    \
                     FOR EACH STATEMENT EXECUTE FUNCTION app.record_binding_writes();\n"
                )
            } else {
                drop
            }
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
CREATE CONSTRAINT TRIGGER {BINDING_TRIGGER} AFTER {events} ON {qualified}
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
