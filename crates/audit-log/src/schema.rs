//! The audit schema: an append-only, hash-chained event table, retention anchors and signed
//! checkpoints.
//!
//! Run [`schema_sql`] as the owner (migrator) role, after `rls_guard::schema::SUPPORT_SQL`:
//!
//! - `audit.events`: one row per event. The runtime role may `INSERT` only the event's own
//!   columns (`tenant_id`, `occurred_at`, `actor_kind`, `actor_id`, `action`, `outcome`,
//!   `request_id`, `event`) and `SELECT`; it has no `UPDATE`, `DELETE` or `TRUNCATE`, and
//!   cannot write `seq`, `prev_hash` or `hash` at all.
//! - A `BEFORE INSERT` trigger (`SECURITY DEFINER`, owned by the owner) takes the tenant's
//!   transaction-level advisory lock (class `0x41554454`, "AUDT", object `hashtext(tenant)`) —
//!   so appends in one tenant are serialised until commit and concurrent writers never fork the
//!   chain, while other tenants proceed in parallel — reads the tenant's last event through the
//!   primary key, and assigns the next sequence number, links the previous hash and computes
//!   the chain hash in the same format as
//!   [`chain_hash`](crate::chain_hash). The primary key `(tenant_id, seq)` and the unique
//!   `(tenant_id, prev_hash)` are the backstop against a fork.
//! - Triggers refuse `UPDATE`, `DELETE` and `TRUNCATE` on events and checkpoints for every role,
//!   the owner included (a `DELETE` is allowed only for rows behind the tenant's signed
//!   retention anchor, see [`AuditLog::prune`](crate::AuditLog::prune)). All of them are
//!   `ENABLE ALWAYS`, so `session_replication_role = replica` does not skip them.
//! - The runtime role may only `SELECT` checkpoints and anchors. Checkpoints are written by a
//!   checkpointer role of their own ([`checkpointer_sql`], [`create_checkpointer_role_sql`]),
//!   used by the checkpoint job; anchors (and the deletes of retention) by the owner.
//! - The insert trigger refuses a record whose tenant, time, actor, action, outcome or request
//!   id differ from the row's columns (SQLSTATE `AL003`).
//! - Every table is tenant-scoped with row-level security through `rls-guard`
//!   (`ENABLE` + `FORCE`, restrictive and permissive policies, the deferred binding check).
//!
//! An owner or superuser can still disable the triggers and rewrite rows: that is what the
//! chain, the signed checkpoints and [`verify`](crate::verify()) are for.

use crate::AuditError;
use crate::canonical::{CHAIN_DOMAIN, GENESIS_DOMAIN};

/// How far (in seconds) an event's time may be from the database's clock when it is inserted.
pub const MAX_CLOCK_SKEW_SECS: u32 = 300;

/// The SQL that installs (or updates) the audit schema, granting the runtime role `runtime_role`
/// exactly what it needs. Idempotent.
///
/// # Errors
/// [`AuditError::InvalidConfig`] unless `runtime_role` is a plain lowercase identifier.
pub fn schema_sql(runtime_role: &str) -> Result<String, AuditError> {
    if !rls_guard::schema::is_plain_identifier(runtime_role) {
        return Err(AuditError::InvalidConfig(
            "runtime role must be a plain lowercase identifier",
        ));
    }
    let genesis = hex::encode(GENESIS_DOMAIN);
    let chain = hex::encode(CHAIN_DOMAIN);
    let rls = |table: &str| {
        rls_guard::schema::tenant_table_sql(table).map_err(|_| AuditError::InvalidConfig("table"))
    };
    let (events_rls, anchors_rls, checkpoints_rls, acknowledgements_rls) = (
        rls("audit.events")?,
        rls("audit.anchors")?,
        rls("audit.checkpoints")?,
        rls("audit.acknowledgements")?,
    );
    let r = runtime_role;
    let skew = MAX_CLOCK_SKEW_SECS;
    let schema_version = crate::event::SCHEMA_VERSION;
    Ok(format!(
        r#"
CREATE SCHEMA IF NOT EXISTS audit;
REVOKE ALL ON SCHEMA audit FROM PUBLIC;
GRANT USAGE ON SCHEMA audit TO {r};

CREATE TABLE IF NOT EXISTS audit.events (
    tenant_id   uuid        NOT NULL,
    seq         bigint      NOT NULL CHECK (seq > 0),
    occurred_at timestamptz NOT NULL,
    actor_kind  text        NOT NULL,
    actor_id    uuid,
    action      text        NOT NULL,
    outcome     text        NOT NULL CHECK (outcome IN ('allowed', 'denied', 'failed')),
    request_id  text,
    event       bytea       NOT NULL,
    prev_hash   bytea       NOT NULL CHECK (length(prev_hash) = 32),
    hash        bytea       NOT NULL CHECK (length(hash) = 32),
    PRIMARY KEY (tenant_id, seq),
    UNIQUE (tenant_id, prev_hash)
);
CREATE INDEX IF NOT EXISTS events_tenant_time_idx ON audit.events (tenant_id, occurred_at);

-- Where a pruned chain starts: the signed checkpoint retention moved the start to.
CREATE TABLE IF NOT EXISTS audit.anchors (
    tenant_id uuid   PRIMARY KEY,
    base_seq  bigint NOT NULL CHECK (base_seq > 0),
    base_hash bytea  NOT NULL CHECK (length(base_hash) = 32)
);

CREATE TABLE IF NOT EXISTS audit.checkpoints (
    tenant_id uuid        NOT NULL,
    seq       bigint      NOT NULL CHECK (seq > 0),
    hash      bytea       NOT NULL CHECK (length(hash) = 32),
    signed_at timestamptz NOT NULL,
    key_id    text        NOT NULL,
    signature bytea       NOT NULL CHECK (length(signature) = 64),
    -- A retention anchor (signed as one) carries the cutoff it pruned before.
    prune_cutoff timestamptz,
    anchor    boolean     NOT NULL DEFAULT false CHECK (anchor = (prune_cutoff IS NOT NULL)),
    -- Several rows may claim one position: only those that verify under a trusted key count,
    -- so a row planted there can never block the genuine one.
    PRIMARY KEY (tenant_id, seq, anchor, signature)
);
DO $audit$
BEGIN
    -- Databases made before: widen the primary key the same way.
    IF (SELECT pg_catalog.array_length(c.conkey, 1) FROM pg_catalog.pg_constraint c
        WHERE c.conrelid = 'audit.checkpoints'::regclass AND c.contype = 'p') = 3 THEN
        ALTER TABLE audit.checkpoints DROP CONSTRAINT checkpoints_pkey;
        ALTER TABLE audit.checkpoints ADD PRIMARY KEY (tenant_id, seq, anchor, signature);
    END IF;
END
$audit$;

-- An operator's signed acknowledgement of a break: kept forever, so the break stays visible.
CREATE TABLE IF NOT EXISTS audit.acknowledgements (
    tenant_id   uuid        NOT NULL,
    break_seq   bigint      NOT NULL CHECK (break_seq > 0),
    kind        text        NOT NULL,
    resume_seq  bigint      NOT NULL CHECK (resume_seq > break_seq),
    resume_hash bytea       NOT NULL CHECK (length(resume_hash) = 32),
    by_whom     text        NOT NULL,
    reason      text        NOT NULL,
    signed_at   timestamptz NOT NULL,
    key_id      text        NOT NULL,
    signature   bytea       NOT NULL CHECK (length(signature) = 64),
    PRIMARY KEY (tenant_id, break_seq, signature)
);

-- PL/pgSQL compiles a function once per connection, under that session's settings: the
-- domain separators are hex text decoded by a function (no backslash literal, which
-- `standard_conforming_strings = off` at the first insert would read as an escape string and
-- so change every hash this connection computes), and the setting is pinned besides.
CREATE OR REPLACE FUNCTION audit.chain_append() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp SET standard_conforming_strings = on
    AS $$
DECLARE
    last_seq  bigint;
    last_hash bytea;
    written   text;
    record    json;
    parsed    jsonb;
    repeated  boolean;
BEGIN
    -- The time is the writing server's clock: refuse one that is off by more than the allowed
    -- skew (a backdated event could otherwise pull younger events into retention pruning).
    IF NEW.occurred_at > clock_timestamp() + interval '{skew} seconds'
       OR NEW.occurred_at < clock_timestamp() - interval '{skew} seconds' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'AL002',
            MESSAGE = 'audit event time is not the current time';
    END IF;
    -- The columns must say what the hashed record says: one raw INSERT cannot put a record
    -- under another tenant, time, actor, action, outcome or request id. The record is
    -- parsed once into `jsonb` and held to what the verifier's strict parse accepts, so a record
    -- the verifier would reject never enters the chain. A record that is not JSON fails the
    -- cast. Reading the fields from `jsonb` (keeping one value per key) is exact only because
    -- a record that repeats a key is refused below; the schema version is compared as written
    -- (`json`), since `jsonb` would print `1e0` as `1`.
    written := pg_catalog.convert_from(NEW.event, 'UTF8');
    record := written::json;
    parsed := record::jsonb;
    IF pg_catalog.jsonb_typeof(parsed) IS DISTINCT FROM 'object'
       OR pg_catalog.jsonb_typeof(parsed -> 'actor') IS DISTINCT FROM 'object'
       OR pg_catalog.jsonb_typeof(parsed -> 'outcome') IS DISTINCT FROM 'object'
       OR EXISTS (SELECT 1 FROM pg_catalog.jsonb_object_keys(parsed) AS k(key)
                   WHERE k.key NOT IN ('schema', 'tenant', 'occurred_at', 'action', 'actor',
                                       'outcome', 'request_id', 'targets', 'ip', 'user_agent',
                                       'metadata'))
       OR EXISTS (SELECT 1 FROM pg_catalog.jsonb_object_keys(parsed -> 'actor') AS k(key)
                   WHERE k.key NOT IN ('kind', 'id', 'tenant'))
       OR EXISTS (SELECT 1 FROM pg_catalog.jsonb_object_keys(parsed -> 'outcome') AS k(key)
                   WHERE k.key NOT IN ('status', 'reason'))
       OR (record -> 'schema')::text IS DISTINCT FROM '{schema_version}'
       OR pg_catalog.jsonb_typeof(parsed -> 'tenant') IS DISTINCT FROM 'string'
       OR pg_catalog.jsonb_typeof(parsed -> 'occurred_at') IS DISTINCT FROM 'string'
       OR pg_catalog.jsonb_typeof(parsed -> 'action') IS DISTINCT FROM 'string'
       OR pg_catalog.jsonb_typeof(parsed -> 'actor' -> 'kind') IS DISTINCT FROM 'string'
       OR pg_catalog.jsonb_typeof(parsed -> 'outcome' -> 'status') IS DISTINCT FROM 'string'
       OR COALESCE(pg_catalog.jsonb_typeof(parsed -> 'request_id'), 'null')
          NOT IN ('string', 'null')
       OR COALESCE(pg_catalog.jsonb_typeof(parsed -> 'actor' -> 'id'), 'null')
          NOT IN ('string', 'null')
       OR parsed ->> 'tenant' IS DISTINCT FROM NEW.tenant_id::text
       OR parsed ->> 'occurred_at' IS DISTINCT FROM
          pg_catalog.to_char(NEW.occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
       OR parsed ->> 'action' IS DISTINCT FROM NEW.action
       OR parsed -> 'actor' ->> 'kind' IS DISTINCT FROM NEW.actor_kind
       OR parsed -> 'actor' ->> 'id' IS DISTINCT FROM NEW.actor_id::text
       OR parsed -> 'outcome' ->> 'status' IS DISTINCT FROM NEW.outcome
       OR parsed ->> 'request_id' IS DISTINCT FROM NEW.request_id THEN
        RAISE EXCEPTION USING
            ERRCODE = 'AL003',
            MESSAGE = 'audit record does not match its columns';
    END IF;
    -- The verifier's parser stops at 128 levels of nesting and at numbers beyond a float; a key
    -- given twice anywhere (metadata included) would leave its value to the reader. Depth and
    -- numbers are checked on the `jsonb` value (a number beyond a float fails `.double()`).
    IF pg_catalog.jsonb_path_exists(parsed, 'strict $.**{{100 to last}}') THEN
        RAISE EXCEPTION USING
            ERRCODE = 'AL003',
            MESSAGE = 'audit record is nested too deeply or repeats a key';
    END IF;
    PERFORM pg_catalog.jsonb_path_query_array(
        parsed, 'strict $.** ? (@.type() == "number").double()');
    -- Repeated keys: `jsonb` keeps one of them, so a record written exactly as its `jsonb` text
    -- (as this library writes every record) repeats none. Any other spelling — only a raw
    -- INSERT writes one — is walked, object by object.
    IF written IS DISTINCT FROM parsed::text THEN
        WITH RECURSIVE walk(v) AS (
            SELECT record
            UNION ALL
            SELECT c.v
              FROM walk w
              CROSS JOIN LATERAL (
                  SELECT e.value FROM pg_catalog.json_each(
                      CASE WHEN pg_catalog.json_typeof(w.v) = 'object' THEN w.v ELSE '{{}}' END) e
                  UNION ALL
                  SELECT a.value FROM pg_catalog.json_array_elements(
                      CASE WHEN pg_catalog.json_typeof(w.v) = 'array' THEN w.v ELSE '[]' END) a
              ) AS c(v)
             WHERE pg_catalog.json_typeof(c.v) IN ('object', 'array')
        )
        SELECT pg_catalog.bool_or(
                   (SELECT pg_catalog.count(*) <> pg_catalog.count(DISTINCT k.key)
                      FROM pg_catalog.json_object_keys(w.v) AS k(key)))
          INTO repeated
          FROM walk w
         WHERE pg_catalog.json_typeof(w.v) = 'object';
        IF repeated THEN
            RAISE EXCEPTION USING
                ERRCODE = 'AL003',
                MESSAGE = 'audit record is nested too deeply or repeats a key';
        END IF;
    END IF;
    -- Held until commit: the next writer of this tenant waits, then (READ COMMITTED: a new
    -- snapshot per statement) reads the event this one committed.
    PERFORM pg_catalog.pg_advisory_xact_lock(1096107092, pg_catalog.hashtext(NEW.tenant_id::text));
    SELECT e.seq, e.hash INTO last_seq, last_hash
      FROM audit.events e WHERE e.tenant_id = NEW.tenant_id ORDER BY e.seq DESC LIMIT 1;
    IF NOT FOUND THEN
        SELECT a.base_seq, a.base_hash INTO last_seq, last_hash
          FROM audit.anchors a WHERE a.tenant_id = NEW.tenant_id;
        IF NOT FOUND THEN
            last_seq := 0;
            last_hash := sha256(pg_catalog.decode('{genesis}', 'hex') || uuid_send(NEW.tenant_id));
        END IF;
    END IF;
    NEW.seq := last_seq + 1;
    NEW.prev_hash := last_hash;
    NEW.hash := sha256(pg_catalog.decode('{chain}', 'hex') || uuid_send(NEW.tenant_id)
                       || int8send(NEW.seq) || last_hash || NEW.event);
    RETURN NEW;
END
$$;

CREATE OR REPLACE FUNCTION audit.refuse_change() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    IF TG_OP = 'DELETE' AND TG_LEVEL = 'ROW' AND TG_TABLE_NAME = 'events' THEN
        -- Retention: only rows at or behind the tenant's signed anchor may go.
        IF OLD.seq <= (SELECT a.base_seq FROM audit.anchors a WHERE a.tenant_id = OLD.tenant_id) THEN
            RETURN OLD;
        END IF;
    END IF;
    RAISE EXCEPTION USING
        ERRCODE = 'AL001',
        MESSAGE = format('audit.%s is append-only: %s refused', TG_TABLE_NAME, TG_OP);
END
$$;
REVOKE ALL ON FUNCTION audit.chain_append(), audit.refuse_change() FROM PUBLIC;

DROP TRIGGER IF EXISTS chain_append ON audit.events;
CREATE TRIGGER chain_append BEFORE INSERT ON audit.events
    FOR EACH ROW EXECUTE FUNCTION audit.chain_append();
ALTER TABLE audit.events ENABLE ALWAYS TRIGGER chain_append;

DROP TRIGGER IF EXISTS append_only ON audit.events;
CREATE TRIGGER append_only BEFORE UPDATE OR DELETE ON audit.events
    FOR EACH ROW EXECUTE FUNCTION audit.refuse_change();
ALTER TABLE audit.events ENABLE ALWAYS TRIGGER append_only;
DROP TRIGGER IF EXISTS append_only_truncate ON audit.events;
CREATE TRIGGER append_only_truncate BEFORE TRUNCATE ON audit.events
    FOR EACH STATEMENT EXECUTE FUNCTION audit.refuse_change();
ALTER TABLE audit.events ENABLE ALWAYS TRIGGER append_only_truncate;

DROP TRIGGER IF EXISTS append_only ON audit.checkpoints;
CREATE TRIGGER append_only BEFORE UPDATE OR DELETE ON audit.checkpoints
    FOR EACH ROW EXECUTE FUNCTION audit.refuse_change();
ALTER TABLE audit.checkpoints ENABLE ALWAYS TRIGGER append_only;
DROP TRIGGER IF EXISTS append_only_truncate ON audit.checkpoints;
CREATE TRIGGER append_only_truncate BEFORE TRUNCATE ON audit.checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION audit.refuse_change();
ALTER TABLE audit.checkpoints ENABLE ALWAYS TRIGGER append_only_truncate;

DROP TRIGGER IF EXISTS append_only ON audit.acknowledgements;
CREATE TRIGGER append_only BEFORE UPDATE OR DELETE ON audit.acknowledgements
    FOR EACH ROW EXECUTE FUNCTION audit.refuse_change();
ALTER TABLE audit.acknowledgements ENABLE ALWAYS TRIGGER append_only;
DROP TRIGGER IF EXISTS append_only_truncate ON audit.acknowledgements;
CREATE TRIGGER append_only_truncate BEFORE TRUNCATE ON audit.acknowledgements
    FOR EACH STATEMENT EXECUTE FUNCTION audit.refuse_change();
ALTER TABLE audit.acknowledgements ENABLE ALWAYS TRIGGER append_only_truncate;

DROP TRIGGER IF EXISTS append_only_truncate ON audit.anchors;
CREATE TRIGGER append_only_truncate BEFORE TRUNCATE ON audit.anchors
    FOR EACH STATEMENT EXECUTE FUNCTION audit.refuse_change();
ALTER TABLE audit.anchors ENABLE ALWAYS TRIGGER append_only_truncate;

{events_rls}
{anchors_rls}
{checkpoints_rls}
{acknowledgements_rls}
ALTER TABLE audit.events ENABLE ALWAYS TRIGGER tenant_binding_check;
ALTER TABLE audit.acknowledgements ENABLE ALWAYS TRIGGER tenant_binding_check;
ALTER TABLE audit.anchors ENABLE ALWAYS TRIGGER tenant_binding_check;
ALTER TABLE audit.checkpoints ENABLE ALWAYS TRIGGER tenant_binding_check;

REVOKE ALL ON audit.events, audit.anchors, audit.checkpoints, audit.acknowledgements FROM PUBLIC;
REVOKE ALL ON audit.events, audit.anchors, audit.checkpoints, audit.acknowledgements FROM {r};
GRANT SELECT ON audit.events, audit.anchors, audit.checkpoints, audit.acknowledgements TO {r};
GRANT INSERT (tenant_id, occurred_at, actor_kind, actor_id, action, outcome, request_id, event)
    ON audit.events TO {r};
-- Checkpoints and anchors are written by the checkpointer (see checkpointer_sql) and the owner
-- (retention), never by the runtime role.
"#
    ))
}

/// A role of its own for the checkpoint job: created with `LOGIN` and no privileged attribute
/// (run as a role with `CREATEROLE`, or a superuser; idempotent). Give it a password or
/// certificate as your deployment does, then run [`checkpointer_sql`] as the owner.
///
/// # Errors
/// [`AuditError::InvalidConfig`] unless `role` is a plain lowercase identifier.
pub fn create_checkpointer_role_sql(role: &str) -> Result<String, AuditError> {
    checked_role(role)?;
    Ok(format!(
        "DO $audit$ BEGIN CREATE ROLE {role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE \
         NOREPLICATION NOBYPASSRLS NOINHERIT; \
         EXCEPTION WHEN duplicate_object THEN NULL; END $audit$;"
    ))
}

/// The grants of the checkpointer role (run as the owner, after [`schema_sql`]; idempotent):
/// it reads the audit tables (under row-level security, binding one tenant at a time) and
/// inserts checkpoints, nothing else. The runtime role gets none of this: SQL it runs cannot
/// plant a checkpoint or an anchor.
///
/// # Errors
/// [`AuditError::InvalidConfig`] unless `role` is a plain lowercase identifier.
pub fn checkpointer_sql(role: &str) -> Result<String, AuditError> {
    checked_role(role)?;
    Ok(format!(
        "GRANT USAGE ON SCHEMA audit TO {role};
         REVOKE ALL ON audit.events, audit.anchors, audit.checkpoints, audit.acknowledgements
             FROM {role};
         GRANT SELECT ON audit.events, audit.anchors, audit.checkpoints, audit.acknowledgements
             TO {role};
         GRANT INSERT ON audit.checkpoints, audit.acknowledgements TO {role};"
    ))
}

fn checked_role(role: &str) -> Result<(), AuditError> {
    if rls_guard::schema::is_plain_identifier(role) {
        Ok(())
    } else {
        Err(AuditError::InvalidConfig(
            "role must be a plain lowercase identifier",
        ))
    }
}

/// Tells `check` about the triggers and `SECURITY DEFINER` functions [`schema_sql`] installs on
/// the audit tables deliberately (the chain's insert trigger, which runs as the owner to take
/// the tenant's chain position, and the append-only guards), so `rls-guard`'s coverage check
/// does not report them as bypass paths.
#[must_use]
pub fn coverage_trust(check: rls_guard::CoverageCheck) -> rls_guard::CoverageCheck {
    check
        .trust_trigger("audit.events", "chain_append")
        .trust_trigger("audit.events", "append_only")
        .trust_trigger("audit.events", "append_only_truncate")
        .trust_trigger("audit.checkpoints", "append_only")
        .trust_trigger("audit.checkpoints", "append_only_truncate")
        .trust_trigger("audit.anchors", "append_only_truncate")
        .trust_trigger("audit.acknowledgements", "append_only")
        .trust_trigger("audit.acknowledgements", "append_only_truncate")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_role_names_are_accepted() {
        assert!(schema_sql("app_runtime").is_ok());
        for bad in ["", "App", "a; DROP TABLE x", "a-b", "\"a\""] {
            assert!(schema_sql(bad).is_err(), "{bad}");
        }
    }
}
