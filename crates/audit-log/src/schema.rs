//! The audit schema: a queue of recorded events, an append-only hash-chained event table, the
//! sequencer that moves one into the other, retention anchors and signed checkpoints.
//!
//! Run [`schema_sql`] as the owner (migrator) role, after `rls_guard::schema::SUPPORT_SQL`:
//!
//! - `audit.pending`: the queue. The request path inserts here ([`AuditLog::append`] inside the
//!   caller's transaction, [`AuditLog::record`] in its own), without any lock beyond its row.
//!   The runtime role may `INSERT` only the event's own columns (`tenant_id`, `occurred_at`,
//!   `actor_kind`, `actor_id`, `action`, `outcome`, `request_id`, `event`) and `SELECT`; no
//!   `UPDATE`, `DELETE` or `TRUNCATE`. A `BEFORE INSERT` trigger (`check_event`) refuses a record
//!   larger than [`MAX_RECORD_BYTES`](crate::MAX_RECORD_BYTES) before reading it (`AL003`), a time
//!   more than [`MAX_CLOCK_SKEW_SECS`] from the database's clock (SQLSTATE `AL002`) and a record
//!   whose tenant, time, actor, action, outcome or request id differ from the row's columns, or
//!   that the verifier's strict parse would reject (`AL003`). Row-level security is enabled but
//!   not forced, so the owner's `audit.sequence` can read every tenant's queue.
//! - `audit.sequence(max_rows)`: `SECURITY DEFINER`, owned by the owner, executable only by the
//!   sequencer role ([`sequencer_sql`]). On an empty queue it returns at once. Otherwise, in one
//!   transaction, it locks the one row of `audit.sequencer_lock` (retention's prune locks it
//!   too; no other role may read or lock that table; a call waits for it at most
//!   [`SEQUENCER_LOCK_TIMEOUT_SECS`] seconds, then fails and is retried), takes up to `max_rows` queued events (first an equal share for every tenant with
//!   queued events, its oldest, then the oldest of any tenant), and for each tenant among them,
//!   bound as that tenant, reads the last event through the primary key (or the anchor, or the
//!   genesis), assigns the next sequence numbers, links the previous hashes and computes the
//!   chain hashes in the format of [`chain_hash`](crate::chain_hash), and moves them from the
//!   queue into `audit.events`, chaining exactly the rows it took off the queue (a picked row
//!   left in the queue, or a row the chain's insert did not take, fails that tenant's batch,
//!   SQLSTATE `AL007`). A tenant whose batch fails is rolled back
//!   alone, marked and retried after a minute. See [`Sequencer`](crate::Sequencer).
//! - `audit.events`: one row per chained event. Nobody inserts but `audit.sequence` (the runtime
//!   role has `SELECT` only; a statement trigger refuses every other insert, the owner's
//!   included). The primary key `(tenant_id, seq)` and the unique `(tenant_id, prev_hash)` are
//!   the backstop against a fork. `queue_id`, `queued_at` and `sequenced_at` say where and when
//!   it came from the queue (the sequencing lag).
//! - Triggers refuse `UPDATE`, `DELETE` and `TRUNCATE` on events and checkpoints for every role,
//!   the owner included (a `DELETE` is allowed only for rows behind the tenant's signed
//!   retention anchor, see [`AuditLog::prune`](crate::AuditLog::prune)), and every change to the
//!   queue outside `audit.sequence`. All of them are `ENABLE ALWAYS`, so
//!   `session_replication_role = replica` does not skip them.
//! - The runtime role may only `SELECT` checkpoints and anchors. Checkpoints are written by a
//!   checkpointer role of their own ([`checkpointer_sql`], [`create_checkpointer_role_sql`]),
//!   used by the checkpoint job; anchors (and the deletes of retention) by the owner.
//! - Every table is tenant-scoped with row-level security through `rls-guard`
//!   (`ENABLE` + `FORCE`, the queue `ENABLE` only; restrictive and permissive policies, the
//!   deferred binding check). The binding check holds the writes roles other than the owner may
//!   make ([`rls_guard::schema::tenant_table_sql_for`]): `UPDATE` and `DELETE` on the events,
//!   the runtime role's `INSERT` on the queue. `audit.sequence`'s own inserts into the events
//!   and deletes from the queue, which no other role can make, cost no trigger call per row; the
//!   forced policies of `audit.events` hold each of its rows to the tenant bound for it.
//!
//! An owner or superuser can still disable the triggers and rewrite rows, or delete an event
//! while it is queued: that is what the chain, the signed checkpoints, [`verify`](crate::verify())
//! and its report of queued events (their number and the oldest one's age) are for.
//!
//! [`AuditLog::append`]: crate::AuditLog::append
//! [`AuditLog::record`]: crate::AuditLog::record

use rls_guard::schema::Write;

use crate::AuditError;
use crate::canonical::{CHAIN_DOMAIN, GENESIS_DOMAIN};

/// How far (in seconds) an event's time may be from the database's clock when it is inserted.
pub const MAX_CLOCK_SKEW_SECS: u32 = 300;

/// How long `audit.sequence` and retention's prune wait for the sequencer's lock (and any other
/// lock) before they fail, to be retried: a caller that keeps its transaction open after a call
/// holds the others up by no more than this each time.
pub const SEQUENCER_LOCK_TIMEOUT_SECS: u32 = 5;

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
    let rls = |table: &str, checked: &[Write]| {
        rls_guard::schema::tenant_table_sql_for(table, checked)
            .map_err(|_| AuditError::InvalidConfig("table"))
    };
    // Nobody but the owner inserts into `audit.events` (audit.sequence) or changes the queue
    // (audit.sequence deletes what it chained): the binding check holds only the writes other
    // roles may make, so the sequencer's rows cost no trigger call each. rls-guard's checks
    // refuse the tables if any other role is ever granted such a write.
    let (events_rls, pending_rls, anchors_rls, checkpoints_rls, acknowledgements_rls) = (
        rls("audit.events", &[Write::Update, Write::Delete])?,
        rls("audit.pending", &[Write::Insert])?,
        rls("audit.anchors", &Write::ALL)?,
        rls("audit.checkpoints", &Write::ALL)?,
        rls("audit.acknowledgements", &Write::ALL)?,
    );
    let r = runtime_role;
    let skew = MAX_CLOCK_SKEW_SECS;
    let lock_timeout = SEQUENCER_LOCK_TIMEOUT_SECS;
    let schema_version = crate::event::SCHEMA_VERSION;
    let max_record = crate::event::MAX_RECORD_BYTES;
    let max_action = crate::event::MAX_ACTION_BYTES;
    let max_identifier = crate::event::MAX_IDENTIFIER_BYTES;
    let max_batch = crate::sequencer::MAX_BATCH;
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

-- The queue of events not yet in their chain. The request path inserts here, atomic with its
-- action and without any lock beyond its own row; the sequencer (audit.sequence) moves rows into
-- audit.events in batches. Row-level security is enabled (the runtime role inserts and reads
-- under its tenant binding) but not forced: the owner, and so audit.sequence, which runs as the
-- owner, reads every tenant's queue to find the work.
CREATE TABLE IF NOT EXISTS audit.pending (
    id          bigint      GENERATED ALWAYS AS IDENTITY,
    tenant_id   uuid        NOT NULL,
    occurred_at timestamptz NOT NULL,
    actor_kind  text        NOT NULL,
    actor_id    uuid,
    action      text        NOT NULL,
    outcome     text        NOT NULL CHECK (outcome IN ('allowed', 'denied', 'failed')),
    request_id  text,
    event       bytea       NOT NULL,
    inserted_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    -- Set by the sequencer when a batch of this tenant failed: retried after a pause, never
    -- ahead of the rest of the queue (so no row can wedge the sequencer).
    failed_at   timestamptz,
    PRIMARY KEY (tenant_id, id)
);
-- The sequencer takes the queue in order (not unique: a key not led by the tenant would be an
-- existence oracle across tenants). Partial, on a predicate only the queries that read the
-- queue by age state (every id is positive), so the per-tenant probes of audit.sequence_pick
-- can never take it: they read their tenant's rows through the primary key whatever the
-- statistics say. (Earlier versions indexed every row: under statistics gathered while one
-- tenant filled the queue, the planner walked this index filtering by tenant, reading the
-- queue about once per tenant per batch.)
DROP INDEX IF EXISTS audit.pending_order_idx;
CREATE INDEX IF NOT EXISTS pending_age_idx ON audit.pending (id) WHERE id > 0;

-- One sequencer at a time: audit.sequence, and retention's prune, lock this table's one row.
-- Nobody else may read or lock it (an advisory lock would carry no privilege: any role that
-- can connect, the runtime role included, could take its key and hold sequencing up).
CREATE TABLE IF NOT EXISTS audit.sequencer_lock (
    held boolean PRIMARY KEY DEFAULT true CHECK (held)
);
INSERT INTO audit.sequencer_lock VALUES (true) ON CONFLICT DO NOTHING;
REVOKE ALL ON audit.sequencer_lock FROM PUBLIC;
REVOKE ALL ON audit.sequencer_lock FROM {r};
-- Which queued event a chained one came from (unindexed: nothing looks an event up by it).
ALTER TABLE audit.events ADD COLUMN IF NOT EXISTS queue_id bigint;
-- When the event was queued and when it was chained: the sequencing lag, for monitoring.
ALTER TABLE audit.events ADD COLUMN IF NOT EXISTS queued_at timestamptz;
ALTER TABLE audit.events ADD COLUMN IF NOT EXISTS sequenced_at timestamptz;

-- Earlier versions chained in an insert trigger under a per-tenant lock.
DROP TRIGGER IF EXISTS chain_append ON audit.events;
DROP FUNCTION IF EXISTS audit.chain_append();

-- The request path's checks, on every queued event (SECURITY INVOKER: it reads no table).
-- PL/pgSQL compiles a function once per connection, under that session's settings: the
-- setting is pinned, so a `standard_conforming_strings = off` session cannot change a check.
CREATE OR REPLACE FUNCTION audit.check_event() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp SET standard_conforming_strings = on
    AS $$
DECLARE
    written   text;
    record    json;
    parsed    jsonb;
    canonical boolean;
    repeated  boolean;
BEGIN
    -- Sizes first, before anything reads the record: the record and every text column are
    -- held to what the library writes, which keeps every batch of the sequencer within
    -- PostgreSQL's limits (one allocation, an array included, is at most 1 GB), so a huge row
    -- cannot fail its tenant's batch every time it is retried.
    IF pg_catalog.octet_length(NEW.event) > {max_record}
       OR pg_catalog.octet_length(NEW.action) > {max_action}
       OR pg_catalog.octet_length(NEW.actor_kind) > {max_action}
       OR pg_catalog.octet_length(NEW.request_id) > {max_identifier} THEN
        RAISE EXCEPTION USING
            ERRCODE = 'AL003',
            MESSAGE = 'audit record or column is larger than the library writes';
    END IF;
    -- Every check below is one expression without a subquery, so PL/pgSQL evaluates it directly
    -- instead of running a query per check: this trigger is on the request path of every
    -- audited action.
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
    -- a record that repeats a key is refused below.
    written := pg_catalog.convert_from(NEW.event, 'UTF8');
    parsed := written::jsonb;
    -- A record written exactly as its `jsonb` text (as this library writes every record) says
    -- what its `jsonb` value says, key for key and number for number. Any other spelling (only
    -- a raw INSERT writes one) is also read as written (`json`) below.
    canonical := written = parsed::text;
    IF NOT canonical THEN
        record := written::json;
    END IF;
    -- Unknown keys: removing the known ones must leave an empty object (a missing or
    -- non-object part was refused by the type checks before).
    IF pg_catalog.jsonb_typeof(parsed) IS DISTINCT FROM 'object'
       OR pg_catalog.jsonb_typeof(parsed -> 'actor') IS DISTINCT FROM 'object'
       OR pg_catalog.jsonb_typeof(parsed -> 'outcome') IS DISTINCT FROM 'object'
       OR (parsed - ARRAY['schema', 'tenant', 'occurred_at', 'action', 'actor', 'outcome',
                          'request_id', 'targets', 'ip', 'user_agent', 'metadata'])
          IS DISTINCT FROM '{{}}'::jsonb
       OR ((parsed -> 'actor') - ARRAY['kind', 'id', 'tenant']) IS DISTINCT FROM '{{}}'::jsonb
       OR ((parsed -> 'outcome') - ARRAY['status', 'reason']) IS DISTINCT FROM '{{}}'::jsonb
       -- The schema version as written: `jsonb` would print `1e0` as `1`.
       OR (CASE WHEN canonical THEN (parsed -> 'schema')::text
                ELSE (record -> 'schema')::text END) IS DISTINCT FROM '{schema_version}'
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
    -- numbers are checked on the `jsonb` value: a number beyond a float fails `.double()`,
    -- which raises (the array it would return is never NULL).
    IF pg_catalog.jsonb_path_exists(parsed, 'strict $.**{{100 to last}}')
       OR pg_catalog.jsonb_path_query_array(
              parsed, 'strict $.** ? (@.type() == "number").double()') IS NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = 'AL003',
            MESSAGE = 'audit record is nested too deeply or repeats a key';
    END IF;
    -- Repeated keys: `jsonb` keeps one of them, so a record written exactly as its `jsonb` text
    -- repeats none. Any other spelling is walked, object by object.
    IF NOT canonical THEN
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
    RETURN NEW;
END
$$;

-- Earlier versions woke the sequencer with a notification at every queuing commit, which
-- serialised every such commit on the database's notification lock; the sequencer polls.
DROP TRIGGER IF EXISTS notify_pending ON audit.pending;
DROP FUNCTION IF EXISTS audit.notify_pending();

-- Moves up to `max_rows` queued events (oldest first) into their tenants' chains, in one
-- transaction: assigns each its tenant's next sequence number, links the previous hash and
-- computes the chain hash in the format of `audit_log::chain_hash`, inserts the chained rows and
-- deletes the queued ones. One sequencer at a time (the row of audit.sequencer_lock, which
-- retention's prune locks too): a concurrent call waits, at most lock_timeout, then fails (the
-- Sequencer retries), so a caller that keeps its transaction open after a call delays the
-- others by no more than that each time. The settings it makes (the sequencing flag, each
-- tenant's binding) are the caller's again on return.
-- Returns how many events it took off the queue (chained, or set aside as below): fewer than
-- `max_rows` means the queue is drained. A tenant whose batch fails (a row the checks should
-- have refused, a head tampered with by the owner) is rolled back alone, its rows marked and
-- retried after a minute; the other tenants proceed, so no row can wedge the sequencer.
-- The batch: one row per tenant with its queued ids in order. Every tenant with queued events
-- first gets an equal share of the batch (its oldest events), then what is left goes to the
-- oldest events of any tenant: a tenant that floods the queue cannot hold back another tenant's
-- events, and a batch still takes max_rows events whenever that many wait (so a smaller one
-- means the queue is drained). The tenants are found by skipping through the queue's primary
-- key, one probe each. Called by audit.sequence only.
CREATE OR REPLACE FUNCTION audit.sequence_pick(max_rows integer)
    RETURNS TABLE (tenant_id uuid, ids bigint[])
    LANGUAGE sql STABLE
    SET search_path = pg_catalog, pg_temp
    AS $$
    WITH RECURSIVE queued(t) AS (
        (SELECT p.tenant_id FROM audit.pending p ORDER BY p.tenant_id LIMIT 1)
        UNION ALL
        SELECT (SELECT p.tenant_id FROM audit.pending p
                 WHERE p.tenant_id > q.t ORDER BY p.tenant_id LIMIT 1)
          FROM queued q WHERE q.t IS NOT NULL
    ),
    -- At most max_rows tenants, so a batch's work stays bounded however many tenants
    -- have events queued (the others are reached by age, below, and in later batches).
    tenants AS (SELECT q.t FROM queued q WHERE q.t IS NOT NULL LIMIT max_rows),
    share AS (
        SELECT GREATEST(1, max_rows / GREATEST(1, (SELECT pg_catalog.count(*) FROM tenants)))
               ::integer AS n
    ),
    fair AS (
        SELECT s.id, s.tenant_id, 0 AS pass
          FROM tenants tn
          CROSS JOIN LATERAL (
              SELECT p.id, p.tenant_id FROM audit.pending p
               WHERE p.tenant_id = tn.t
                 AND (p.failed_at IS NULL
                      OR p.failed_at < pg_catalog.clock_timestamp() - interval '60 seconds')
               ORDER BY p.id LIMIT (SELECT sh.n FROM share sh)) s
    ),
    -- Only what the shares left room for: when they filled the batch, nothing is read here.
    rest AS (
        SELECT p.id, p.tenant_id, 1 AS pass FROM audit.pending p
         WHERE p.id > 0
           AND (p.failed_at IS NULL
                OR p.failed_at < pg_catalog.clock_timestamp() - interval '60 seconds')
           AND NOT EXISTS (SELECT 1 FROM fair f WHERE f.id = p.id)
         ORDER BY p.id
         LIMIT GREATEST(0, max_rows - (SELECT pg_catalog.count(*) FROM fair))
    ),
    picked AS (
        SELECT u.id, u.tenant_id
          FROM (SELECT * FROM fair UNION ALL SELECT * FROM rest) u
         ORDER BY u.pass, u.id LIMIT max_rows
    )
    SELECT k.tenant_id, pg_catalog.array_agg(k.id ORDER BY k.id) AS ids
      FROM picked k
     GROUP BY k.tenant_id
     ORDER BY pg_catalog.min(k.id);
$$;

-- Chains one tenant's queued events `batch` (the ids the pick chose) onto its chain: bound as
-- that tenant, reads the head, takes the rows off the queue, computes each event's sequence
-- number and chain hash, and inserts the chained rows. Called by audit.sequence only (as the
-- owner).
CREATE OR REPLACE FUNCTION audit.sequence_tenant(t uuid, batch bigint[], signed boolean)
    RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp SET standard_conforming_strings = on
    AS $$
DECLARE
    lo        bigint;
    hi        bigint;
    ids       bigint[];
    occurred  timestamptz[];
    kinds     text[];
    actors    uuid[];
    actions   text[];
    outcomes  text[];
    requests  text[];
    events    bytea[];
    queued    timestamptz[];
    seqs      bigint[];
    prevs     bytea[];
    hashes    bytea[];
    ev        bytea;
    n_chained bigint;
    last_seq  bigint;
    last_hash bytea;
    prefix    bytea;
BEGIN
    IF signed THEN
        PERFORM app.bind_trusted(t::text, '');
    ELSE
        PERFORM pg_catalog.set_config('app.tenant_id', t::text, true);
        PERFORM pg_catalog.set_config('app.actor_id', '', true);
    END IF;
    SELECT e.seq, e.hash INTO last_seq, last_hash
      FROM audit.events e WHERE e.tenant_id = t ORDER BY e.seq DESC LIMIT 1;
    IF NOT FOUND THEN
        SELECT a.base_seq, a.base_hash INTO last_seq, last_hash
          FROM audit.anchors a WHERE a.tenant_id = t;
        IF NOT FOUND THEN
            last_seq := 0;
            last_hash := sha256(pg_catalog.decode('{genesis}', 'hex') || uuid_send(t));
        END IF;
    END IF;
    -- The pick chose a prefix of the tenant's eligible rows in queue order, so they are its
    -- first eligible rows from the batch's first id on. They leave the queue in one statement,
    -- as a range of the primary key (never a test of each row against the list of ids, which
    -- costs the list's length per row when the statistics are stale), and what that statement
    -- removed is exactly what is chained below. The range ends at the last of the first
    -- eligible rows, at most as many as were picked, found under the statement's own snapshot:
    -- a row committed since the pick with an id in the range is eligible like the others and
    -- may take a picked row's place, which then waits for the next batch, but a batch never
    -- grows past what was picked.
    SELECT pg_catalog.min(b.id), pg_catalog.max(b.id) INTO lo, hi
      FROM pg_catalog.unnest(batch) AS b(id);
    WITH moved AS (
        DELETE FROM audit.pending p
         WHERE p.tenant_id = t AND p.id >= lo
           AND p.id <= (
               SELECT pg_catalog.max(c.id) FROM (
                   SELECT q.id FROM audit.pending q
                    WHERE q.tenant_id = t AND q.id >= lo AND q.id <= hi
                      AND (q.failed_at IS NULL
                           OR q.failed_at < pg_catalog.clock_timestamp() - interval '60 seconds')
                    ORDER BY q.id
                    LIMIT pg_catalog.cardinality(batch)) c)
           AND (p.failed_at IS NULL
                OR p.failed_at < pg_catalog.clock_timestamp() - interval '60 seconds')
        RETURNING p.id, p.occurred_at, p.actor_kind, p.actor_id, p.action, p.outcome,
                  p.request_id, p.event, p.inserted_at
    )
    SELECT pg_catalog.array_agg(m.id ORDER BY m.id),
           pg_catalog.array_agg(m.occurred_at ORDER BY m.id),
           pg_catalog.array_agg(m.actor_kind ORDER BY m.id),
           pg_catalog.array_agg(m.actor_id ORDER BY m.id),
           pg_catalog.array_agg(m.action ORDER BY m.id),
           pg_catalog.array_agg(m.outcome ORDER BY m.id),
           pg_catalog.array_agg(m.request_id ORDER BY m.id),
           pg_catalog.array_agg(m.event ORDER BY m.id),
           pg_catalog.array_agg(m.inserted_at ORDER BY m.id)
      INTO ids, occurred, kinds, actors, actions, outcomes, requests, events, queued
      FROM moved m;
    -- A picked row that did not leave the queue (only an owner's trigger can keep one) fails
    -- this tenant's batch, which is then set aside: it is never chained while it stays queued.
    IF pg_catalog.cardinality(ids) IS NULL
       OR pg_catalog.cardinality(ids) < pg_catalog.cardinality(batch) THEN
        RAISE EXCEPTION USING
            ERRCODE = 'AL007',
            MESSAGE = 'audit.sequence: the queued events changed while they were chained';
    END IF;
    prefix := pg_catalog.decode('{chain}', 'hex') || uuid_send(t);
    seqs := '{{}}'; prevs := '{{}}'; hashes := '{{}}';
    FOREACH ev IN ARRAY events LOOP
        seqs := seqs || (last_seq + 1);
        prevs := prevs || last_hash;
        last_seq := last_seq + 1;
        last_hash := sha256(prefix || int8send(last_seq) || last_hash || ev);
        hashes := hashes || last_hash;
    END LOOP;
    INSERT INTO audit.events (tenant_id, seq, occurred_at, actor_kind, actor_id, action,
                              outcome, request_id, event, prev_hash, hash, queue_id,
                              queued_at, sequenced_at)
    SELECT t, c.seq, c.occurred_at, c.actor_kind, c.actor_id, c.action, c.outcome,
           c.request_id, c.event, c.prev, c.hash, c.id, c.queued_at,
           pg_catalog.clock_timestamp()
      FROM unnest(ids, seqs, occurred, kinds, actors, actions, outcomes, requests, events,
                  prevs, hashes, queued)
           AS c(id, seq, occurred_at, actor_kind, actor_id, action, outcome, request_id,
                event, prev, hash, queued_at)
     ORDER BY c.seq;
    -- Every event taken off the queue entered the chain (an owner's trigger or rule that
    -- dropped one would lose it): anything else rolls this tenant back.
    GET DIAGNOSTICS n_chained = ROW_COUNT;
    IF n_chained IS DISTINCT FROM pg_catalog.cardinality(ids) THEN
        RAISE EXCEPTION USING
            ERRCODE = 'AL007',
            MESSAGE = 'audit.sequence: the queued events changed while they were chained';
    END IF;
END
$$;

-- Puts the caller's settings back (transaction-local, as they were made). Called by
-- audit.sequence only.
CREATE OR REPLACE FUNCTION audit.restore_settings(names text[], saved text[]) RETURNS void
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    FOR i IN 1 .. pg_catalog.cardinality(names) LOOP
        PERFORM pg_catalog.set_config(names[i], saved[i], true);
    END LOOP;
END
$$;

-- The bindings it makes for each tenant (and, in signed mode, their proofs) stay inside it: the
-- caller's values are put back on return, so a caller that may read tenant tables is not left
-- bound to the last tenant sequenced. (SET clauses would do this, but the owner may not attach
-- a placeholder setting to a function; an error rolls back the settings with everything else.)
CREATE OR REPLACE FUNCTION audit.sequence(max_rows integer) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp SET standard_conforming_strings = on
    SET lock_timeout = '{lock_timeout}s'
    AS $$
DECLARE
    signed    boolean;
    grp       record;
    taken     integer;
    names     text[] := ARRAY['app.tenant_id', 'app.actor_id', 'app.binding_proof',
                              'audit.sequencing'];
    saved     text[];
BEGIN
    saved := ARRAY(SELECT COALESCE(pg_catalog.current_setting(n, true), '')
                     FROM pg_catalog.unnest(names) WITH ORDINALITY AS u(n, i) ORDER BY u.i);
    IF max_rows IS NULL OR max_rows < 1 OR max_rows > {max_batch} THEN
        RAISE EXCEPTION USING
            ERRCODE = 'AL005',
            MESSAGE = 'audit.sequence: max_rows must be between 1 and {max_batch}';
    END IF;
    -- An empty queue (what most polls find) costs one index probe and takes no lock.
    IF NOT EXISTS (SELECT 1 FROM audit.pending p WHERE p.id > 0) THEN
        RETURN 0;
    END IF;
    PERFORM 1 FROM audit.sequencer_lock l WHERE l.held FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING
            ERRCODE = 'AL006',
            MESSAGE = 'audit.sequence: the row of audit.sequencer_lock is missing (re-run the audit schema)';
    END IF;
    PERFORM pg_catalog.set_config('audit.sequencing', 'on', true);
    -- Each tenant's rows are written under that tenant's binding, which the forced row
    -- policies of audit.events hold every inserted row to. (rls-guard's binding check, made for
    -- the writes of other roles, checks none of these: see schema_sql.)
    signed := EXISTS (SELECT 1 FROM app.binding_keys k WHERE k.retired_at IS NULL);
    -- The whole batch in one subtransaction: one per tenant would give a batch of many tenants
    -- more subtransactions than PostgreSQL tracks per transaction (64), slowing every
    -- concurrent snapshot while it runs.
    BEGIN
        taken := 0;
        FOR grp IN SELECT p.tenant_id, p.ids FROM audit.sequence_pick(max_rows) p LOOP
            taken := taken + pg_catalog.cardinality(grp.ids);
            PERFORM audit.sequence_tenant(grp.tenant_id, grp.ids, signed);
        END LOOP;
        PERFORM audit.restore_settings(names, saved);
        RETURN taken;
    EXCEPTION WHEN OTHERS THEN
        -- Some tenant's batch failed (a row the checks should have refused, a head tampered
        -- with by the owner): everything above is rolled back, and the batch is taken again
        -- tenant by tenant, so that only the failing tenant's events are set aside.
        NULL;
    END;
    taken := 0;
    FOR grp IN SELECT p.tenant_id, p.ids FROM audit.sequence_pick(max_rows) p LOOP
        taken := taken + pg_catalog.cardinality(grp.ids);
        BEGIN
            PERFORM audit.sequence_tenant(grp.tenant_id, grp.ids, signed);
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING USING MESSAGE = pg_catalog.format(
                'audit.sequence: the batch of tenant %s failed (%s); retried later',
                grp.tenant_id, SQLSTATE);
            PERFORM pg_catalog.set_config('app.tenant_id', grp.tenant_id::text, true);
            PERFORM pg_catalog.set_config('app.actor_id', '', true);
            -- The rows the move would have taken: the tenant's eligible rows in the batch's
            -- range of ids (a range of the primary key, as in audit.sequence_tenant).
            UPDATE audit.pending p SET failed_at = pg_catalog.clock_timestamp()
             WHERE p.tenant_id = grp.tenant_id
               AND p.id >= (SELECT pg_catalog.min(b.id) FROM pg_catalog.unnest(grp.ids) b(id))
               AND p.id <= (SELECT pg_catalog.max(b.id) FROM pg_catalog.unnest(grp.ids) b(id))
               AND (p.failed_at IS NULL
                    OR p.failed_at < pg_catalog.clock_timestamp() - interval '60 seconds');
        END;
    END LOOP;
    PERFORM audit.restore_settings(names, saved);
    RETURN taken;
END
$$;
REVOKE ALL ON FUNCTION audit.sequence_pick(integer), audit.sequence_tenant(uuid, bigint[], boolean),
    audit.restore_settings(text[], text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION audit.sequence(integer) FROM PUBLIC;

-- Events enter their chain only through audit.sequence; pending rows leave the queue only
-- through it. (The privileges are the control — the runtime role has neither INSERT on
-- events nor UPDATE or DELETE on the queue; these guards refuse every other path, the
-- owner's included, unless a transaction says it is sequencing, which only the owner's
-- privileges can then act on.)
CREATE OR REPLACE FUNCTION audit.sequenced_only() RETURNS trigger
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    IF TG_OP IN ('INSERT', 'UPDATE', 'DELETE')
       AND pg_catalog.current_setting('audit.sequencing', true) = 'on' THEN
        RETURN NULL;
    END IF;
    RAISE EXCEPTION USING
        ERRCODE = 'AL001',
        MESSAGE = pg_catalog.format('audit.%s: %s refused outside the sequencer',
                                    TG_TABLE_NAME, TG_OP);
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
REVOKE ALL ON FUNCTION audit.check_event(), audit.refuse_change(), audit.sequenced_only()
    FROM PUBLIC;

DROP TRIGGER IF EXISTS check_event ON audit.pending;
CREATE TRIGGER check_event BEFORE INSERT ON audit.pending
    FOR EACH ROW EXECUTE FUNCTION audit.check_event();
ALTER TABLE audit.pending ENABLE ALWAYS TRIGGER check_event;
DROP TRIGGER IF EXISTS sequenced_only ON audit.pending;
CREATE TRIGGER sequenced_only BEFORE UPDATE OR DELETE OR TRUNCATE ON audit.pending
    FOR EACH STATEMENT EXECUTE FUNCTION audit.sequenced_only();
ALTER TABLE audit.pending ENABLE ALWAYS TRIGGER sequenced_only;
DROP TRIGGER IF EXISTS sequenced_only ON audit.events;
CREATE TRIGGER sequenced_only BEFORE INSERT ON audit.events
    FOR EACH STATEMENT EXECUTE FUNCTION audit.sequenced_only();
ALTER TABLE audit.events ENABLE ALWAYS TRIGGER sequenced_only;

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
{pending_rls}
ALTER TABLE audit.pending NO FORCE ROW LEVEL SECURITY;
{anchors_rls}
{checkpoints_rls}
{acknowledgements_rls}
ALTER TABLE audit.events ENABLE ALWAYS TRIGGER tenant_binding_check;
ALTER TABLE audit.pending ENABLE ALWAYS TRIGGER tenant_binding_check;
ALTER TABLE audit.acknowledgements ENABLE ALWAYS TRIGGER tenant_binding_check;
ALTER TABLE audit.anchors ENABLE ALWAYS TRIGGER tenant_binding_check;
ALTER TABLE audit.checkpoints ENABLE ALWAYS TRIGGER tenant_binding_check;

REVOKE ALL ON audit.events, audit.pending, audit.anchors, audit.checkpoints,
    audit.acknowledgements FROM PUBLIC;
REVOKE ALL ON audit.events, audit.pending, audit.anchors, audit.checkpoints,
    audit.acknowledgements FROM {r};
GRANT SELECT ON audit.events, audit.pending, audit.anchors, audit.checkpoints,
    audit.acknowledgements TO {r};
-- The request path queues events; only audit.sequence chains them.
GRANT INSERT (tenant_id, occurred_at, actor_kind, actor_id, action, outcome, request_id, event)
    ON audit.pending TO {r};
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
         REVOKE ALL ON audit.events, audit.pending, audit.anchors, audit.checkpoints, audit.acknowledgements
             FROM {role};
         GRANT SELECT ON audit.events, audit.pending, audit.anchors, audit.checkpoints,
             audit.acknowledgements TO {role};
         GRANT INSERT ON audit.checkpoints, audit.acknowledgements TO {role};"
    ))
}

/// A role of its own for the sequencer: created with `LOGIN` and no privileged attribute (run
/// as a role with `CREATEROLE`, or a superuser; idempotent). Give it a password or certificate
/// as your deployment does, then run [`sequencer_sql`] as the owner.
///
/// # Errors
/// [`AuditError::InvalidConfig`] unless `role` is a plain lowercase identifier.
pub fn create_sequencer_role_sql(role: &str) -> Result<String, AuditError> {
    create_checkpointer_role_sql(role)
}

/// The grants of the sequencer role (run as the owner, after [`schema_sql`]; idempotent): it
/// may call `audit.sequence(max_rows)` and nothing else — no table of any kind. The function
/// runs as the owner and only moves queued events into their chains, computing every sequence
/// number and hash itself, so the role can advance the chains but neither forge, alter, drop
/// nor reorder an event. A deployment may give these grants to the checkpointer role instead
/// of a role of its own (Trillian's sequencer also signs).
///
/// # Errors
/// [`AuditError::InvalidConfig`] unless `role` is a plain lowercase identifier.
pub fn sequencer_sql(role: &str) -> Result<String, AuditError> {
    checked_role(role)?;
    Ok(format!(
        "GRANT USAGE ON SCHEMA audit TO {role};
         GRANT EXECUTE ON FUNCTION audit.sequence(integer) TO {role};"
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

/// Tells `check` about what [`schema_sql`] installs on the audit tables deliberately: the
/// queue's triggers (the record's checks, the guard that only the sequencer
/// changes it), the append-only guards, and the queue's row-level security, enabled but not
/// forced so that the owner's `audit.sequence` reads every tenant's queue. `rls-guard`'s
/// coverage check then does not report them.
#[must_use]
pub fn coverage_trust(check: rls_guard::CoverageCheck) -> rls_guard::CoverageCheck {
    check
        .trust_unforced_table("audit.pending")
        .trust_trigger("audit.events", "sequenced_only")
        .trust_trigger("audit.pending", "check_event")
        .trust_trigger("audit.pending", "sequenced_only")
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
