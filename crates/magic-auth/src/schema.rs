//! The session table, tenant-scoped with row-level security through `rls-guard`.
//!
//! Run [`schema_sql`] as the owner role after `rls_guard::schema::SUPPORT_SQL`. The runtime role
//! may `SELECT`, `INSERT` and `UPDATE` sessions (revocation sets `revoked_at`; nothing is ever
//! deleted by the application) — only within the tenant its transaction is bound to. A request
//! does not know its tenant until it reads the cookie, so [`SessionStore::validate`](crate::SessionStore::validate)
//! binds the tenant the cookie names *inside* its one lookup
//! statement (a transaction-local `set_config` in a materialised CTE that the row's scan
//! depends on), as the runtime role, under row-level security — one round trip per request,
//! no `SECURITY DEFINER` code. It reveals nothing a caller does not already hold: the row is
//! found only by its random id, and what comes back is the *hash* of the session's secret.
//!
//! `auth.accounts` holds magic-auth's own state per account: the row that every change to the
//! account's sessions and links locks first (so revocations and sign-ins take turns), the
//! generation that every "sign out everywhere" moves, and whether the account is disabled.
//! A partial unique index keeps at most one pending link per account. Re-running the SQL on
//! an older database adds what is missing (`auth.totp.hard_locked_at`,
//! `auth.sessions.family_id`, `auth.accounts`, the index — after invalidating all but the
//! newest of any pending links that an older version let pile up).

use crate::AuthError;

/// The SQL that installs (or updates) the session schema, granting `runtime_role` what it needs.
/// Idempotent.
///
/// # Errors
/// [`AuthError::InvalidConfig`] unless `runtime_role` is a plain lowercase identifier.
pub fn schema_sql(runtime_role: &str) -> Result<String, AuthError> {
    if !rls_guard::schema::is_plain_identifier(runtime_role) {
        return Err(AuthError::InvalidConfig(
            "runtime role must be a plain lowercase identifier",
        ));
    }
    let rls = rls_guard::schema::tenant_table_sql("auth.sessions")
        .map_err(|_| AuthError::InvalidConfig("table"))?;
    let totp_rls = rls_guard::schema::tenant_table_sql("auth.totp")
        .map_err(|_| AuthError::InvalidConfig("table"))?;
    let links_rls = rls_guard::schema::tenant_table_sql("auth.login_links")
        .map_err(|_| AuthError::InvalidConfig("table"))?;
    let limits_rls = rls_guard::schema::tenant_table_sql("auth.rate_limits")
        .map_err(|_| AuthError::InvalidConfig("table"))?;
    let recovery_rls = rls_guard::schema::tenant_table_sql("auth.recovery_codes")
        .map_err(|_| AuthError::InvalidConfig("table"))?;
    let accounts_rls = rls_guard::schema::tenant_table_sql("auth.accounts")
        .map_err(|_| AuthError::InvalidConfig("table"))?;
    let email_rls = rls_guard::schema::tenant_table_sql("auth.email_changes")
        .map_err(|_| AuthError::InvalidConfig("table"))?;
    let r = runtime_role;
    Ok(format!(
        r#"
CREATE SCHEMA IF NOT EXISTS auth;
REVOKE ALL ON SCHEMA auth FROM PUBLIC;
GRANT USAGE ON SCHEMA auth TO {r};

CREATE TABLE IF NOT EXISTS auth.sessions (
    tenant_id           uuid        NOT NULL,
    id                  uuid        NOT NULL,
    user_id             uuid        NOT NULL,
    actor_kind          text        NOT NULL CHECK (actor_kind IN ('user', 'staff')),
    secret_hash         bytea       NOT NULL CHECK (length(secret_hash) = 32),
    aal                 smallint    NOT NULL CHECK (aal IN (1, 2)),
    created_at          timestamptz NOT NULL,
    authenticated_at    timestamptz NOT NULL,
    last_seen_at        timestamptz NOT NULL,
    idle_expires_at     timestamptz NOT NULL,
    absolute_expires_at timestamptz NOT NULL,
    revoked_at          timestamptz,
    user_agent          text CHECK (length(user_agent) <= 512),
    ip                  text CHECK (length(ip) <= 45),
    PRIMARY KEY (tenant_id, id),
    CHECK (idle_expires_at <= absolute_expires_at)
);
CREATE INDEX IF NOT EXISTS sessions_user_idx ON auth.sessions (tenant_id, user_id);
-- Added later: the session a rotation started from (null: the row is its own family), so that
-- revoking a session also ends the session it was rotated into at the same moment.
ALTER TABLE auth.sessions ADD COLUMN IF NOT EXISTS family_id uuid;
-- Added later: the row's MAC under the application's session row key (SessionStore::new),
-- over whose session it is and what it may do. A row without a valid one is no session, so
-- the runtime role cannot make one by inserting it. (Rows from before have none: sign in again.)
ALTER TABLE auth.sessions ADD COLUMN IF NOT EXISTS row_mac bytea;
{rls}
REVOKE ALL ON auth.sessions FROM PUBLIC;
REVOKE ALL ON auth.sessions FROM {r};
GRANT SELECT, INSERT, UPDATE ON auth.sessions TO {r};

-- What a session is and may do is fixed when it is made: an UPDATE (by this library, or by any
-- statement injected into the runtime role) may only end a session, record its use, and slide
-- its idle expiry within its absolute one while it has not yet expired. An ended session stays
-- ended: no one revives it, raises its assurance or kind, or renews its factor check in place.
CREATE OR REPLACE FUNCTION auth.sessions_fixed() RETURNS trigger
    LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, pg_temp
    AS $sessions_fixed$
BEGIN
    IF NEW.tenant_id IS DISTINCT FROM OLD.tenant_id OR NEW.id IS DISTINCT FROM OLD.id
       OR NEW.user_id IS DISTINCT FROM OLD.user_id
       OR NEW.actor_kind IS DISTINCT FROM OLD.actor_kind
       OR NEW.secret_hash IS DISTINCT FROM OLD.secret_hash
       OR NEW.aal IS DISTINCT FROM OLD.aal
       OR NEW.created_at IS DISTINCT FROM OLD.created_at
       OR NEW.authenticated_at IS DISTINCT FROM OLD.authenticated_at
       OR NEW.absolute_expires_at IS DISTINCT FROM OLD.absolute_expires_at
       OR NEW.user_agent IS DISTINCT FROM OLD.user_agent
       OR NEW.ip IS DISTINCT FROM OLD.ip
       OR NEW.family_id IS DISTINCT FROM OLD.family_id
       OR NEW.row_mac IS DISTINCT FROM OLD.row_mac
       OR (OLD.revoked_at IS NOT NULL AND NEW.revoked_at IS DISTINCT FROM OLD.revoked_at)
       OR (OLD.idle_expires_at <= pg_catalog.now()
           AND NEW.idle_expires_at IS DISTINCT FROM OLD.idle_expires_at) THEN
        RAISE EXCEPTION USING
            ERRCODE = 'MA001',
            MESSAGE = 'a session may only be ended or used: what it is, and its end, are fixed';
    END IF;
    RETURN NEW;
END
$sessions_fixed$;
REVOKE ALL ON FUNCTION auth.sessions_fixed() FROM PUBLIC;
DROP TRIGGER IF EXISTS sessions_fixed ON auth.sessions;
CREATE TRIGGER sessions_fixed BEFORE UPDATE ON auth.sessions
    FOR EACH ROW EXECUTE FUNCTION auth.sessions_fixed();
ALTER TABLE auth.sessions ENABLE ALWAYS TRIGGER sessions_fixed;

-- Whether a session may still act: the database-side check of rls_guard::SessionLiveness
-- (see magic_auth::session_liveness), asked in the binding of every statement made for a
-- session. Runs as the caller, under row-level security, in the tenant the binding names: one
-- row, true, for a live session; no row otherwise. A set-returning SQL function with one SELECT,
-- no SET clause and no SECURITY DEFINER is inlined into the statement that calls it from FROM
-- (its plan is then cached with that statement's); a scalar function whose body holds a
-- subquery never is, and would be parsed and planned again on every call. Every name is
-- qualified, so the caller's search path (the runtime role can create objects a name could
-- resolve to instead) changes nothing when it is inlined. An older, scalar version is replaced.
DO $session_is_live_scalar$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_proc p
               WHERE p.oid OPERATOR(pg_catalog.=) pg_catalog.to_regprocedure('auth.session_is_live(uuid, uuid)')
                 AND NOT p.proretset) THEN
        DROP FUNCTION auth.session_is_live(uuid, uuid);
    END IF;
END
$session_is_live_scalar$;
CREATE OR REPLACE FUNCTION auth.session_is_live(tenant uuid, session uuid) RETURNS SETOF boolean
    LANGUAGE sql STABLE SECURITY INVOKER ROWS 1
    AS $session_is_live$
SELECT true FROM auth.sessions s
WHERE s.tenant_id OPERATOR(pg_catalog.=) $1 AND s.id OPERATOR(pg_catalog.=) $2
  AND s.revoked_at IS NULL
  AND s.idle_expires_at OPERATOR(pg_catalog.>) pg_catalog.statement_timestamp()
  AND s.absolute_expires_at OPERATOR(pg_catalog.>) pg_catalog.statement_timestamp()
$session_is_live$;
REVOKE ALL ON FUNCTION auth.session_is_live(uuid, uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION auth.session_is_live(uuid, uuid) TO {r};

-- Every change to a session that could end it or change what it may do is announced on
-- channel magic_auth_sessions when its transaction commits (SessionStore::with_cache forgets
-- the session on every instance). The notice carries a hash of the session id, never the id:
-- any role that can connect may LISTEN. Touches (last_seen_at, a later idle expiry) are not
-- announced.
CREATE OR REPLACE FUNCTION auth.notify_session_change() RETURNS trigger
    LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, pg_temp
    AS $notify_session_change$
BEGIN
    IF TG_OP = 'UPDATE'
       AND NEW.idle_expires_at >= OLD.idle_expires_at
       AND pg_catalog.to_jsonb(NEW) - 'last_seen_at' - 'idle_expires_at'
           = pg_catalog.to_jsonb(OLD) - 'last_seen_at' - 'idle_expires_at' THEN
        RETURN NULL;
    END IF;
    PERFORM pg_catalog.pg_notify('magic_auth_sessions', pg_catalog.encode(pg_catalog.sha256(
        pg_catalog.convert_to('magic-auth/session-change/v1:' || OLD.id::text, 'UTF8')), 'hex'));
    RETURN NULL;
END
$notify_session_change$;
REVOKE ALL ON FUNCTION auth.notify_session_change() FROM PUBLIC;
DROP TRIGGER IF EXISTS sessions_notify_change ON auth.sessions;
CREATE TRIGGER sessions_notify_change AFTER UPDATE OR DELETE ON auth.sessions
    FOR EACH ROW EXECUTE FUNCTION auth.notify_session_change();

-- Earlier versions looked sessions up through a SECURITY DEFINER function; the lookup is now
-- one statement run as the runtime role under row-level security (see `SessionStore::validate`).
DROP FUNCTION IF EXISTS auth.session_lookup(uuid, uuid);

CREATE TABLE IF NOT EXISTS auth.totp (
    tenant_id       uuid        NOT NULL,
    user_id         uuid        NOT NULL,
    seed            bytea       NOT NULL,  -- field-crypto, bound to (tenant, auth.totp, seed, user)
    confirmed_at    timestamptz,           -- null while the enrolment is pending
    last_step       bigint,                -- the newest time step ever accepted
    failed_attempts integer     NOT NULL DEFAULT 0 CHECK (failed_attempts >= 0),
    locked_until    timestamptz,
    PRIMARY KEY (tenant_id, user_id)
);
-- Added later: re-running this on an existing database adds what is missing.
-- failed_attempts counts consecutive failures across locks; hard_locked_at is set at the hard
-- limit and cleared only by an accepted code, a recovery code or an operator unlock.
ALTER TABLE auth.totp ADD COLUMN IF NOT EXISTS hard_locked_at timestamptz;
-- A replacement authenticator, pending until a code from it is seen (the active seed above
-- keeps working until then), sealed bound to (tenant, auth.totp, replacement_seed, user), and
-- the session that started it (only that session may complete it).
ALTER TABLE auth.totp ADD COLUMN IF NOT EXISTS replacement_seed bytea;
ALTER TABLE auth.totp ADD COLUMN IF NOT EXISTS replacement_session uuid;
{totp_rls}
-- An authenticator, once confirmed, stays confirmed (un-confirming one would show its active
-- seed as a pending enrolment), and the newest accepted time step only moves forward, whatever
-- the seed does (it counts time, not codes: moving it back, or clearing it while swapping the
-- seed out and back, would accept an old code again): for this library and for any statement
-- injected into the runtime role.
CREATE OR REPLACE FUNCTION auth.totp_forward_only() RETURNS trigger
    LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, pg_temp
    AS $totp_forward_only$
BEGIN
    IF NEW.tenant_id IS DISTINCT FROM OLD.tenant_id OR NEW.user_id IS DISTINCT FROM OLD.user_id
       OR (OLD.confirmed_at IS NOT NULL AND NEW.confirmed_at IS NULL)
       OR (OLD.last_step IS NOT NULL
           AND (NEW.last_step IS NULL OR NEW.last_step < OLD.last_step)) THEN
        RAISE EXCEPTION USING
            ERRCODE = 'MA002',
            MESSAGE = 'an authenticator stays confirmed, and its last accepted step only moves forward';
    END IF;
    RETURN NEW;
END
$totp_forward_only$;
REVOKE ALL ON FUNCTION auth.totp_forward_only() FROM PUBLIC;
DROP TRIGGER IF EXISTS totp_forward_only ON auth.totp;
CREATE TRIGGER totp_forward_only BEFORE UPDATE ON auth.totp
    FOR EACH ROW EXECUTE FUNCTION auth.totp_forward_only();
ALTER TABLE auth.totp ENABLE ALWAYS TRIGGER totp_forward_only;
REVOKE ALL ON auth.totp FROM PUBLIC;
REVOKE ALL ON auth.totp FROM {r};
GRANT SELECT, INSERT, UPDATE ON auth.totp TO {r};

CREATE TABLE IF NOT EXISTS auth.login_links (
    tenant_id      uuid        NOT NULL,
    id             uuid        NOT NULL,
    user_id        uuid        NOT NULL,
    actor_kind     text        NOT NULL CHECK (actor_kind IN ('user', 'staff')),
    secret_hash    bytea       NOT NULL CHECK (length(secret_hash) = 32),
    verifier_hash  bytea       NOT NULL CHECK (length(verifier_hash) = 32),
    created_at     timestamptz NOT NULL,
    expires_at     timestamptz NOT NULL,
    consumed_at    timestamptz,
    invalidated_at timestamptz,
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX IF NOT EXISTS login_links_user_idx ON auth.login_links (tenant_id, user_id);
-- At most one pending link per account (the link requests themselves take turns on the
-- account's row in auth.accounts; this index holds even if they did not). Databases from
-- before the index may hold several pending links of one account: all but the newest are
-- invalidated first, by the owner, with row-level security and the tenant-binding triggers
-- suspended for that one statement (the tenant_table_sql below re-forces both).
DO $magic_auth$
BEGIN
    IF to_regclass('auth.login_links_one_pending') IS NULL THEN
        ALTER TABLE auth.login_links NO FORCE ROW LEVEL SECURITY;
        ALTER TABLE auth.login_links DISABLE TRIGGER USER;
        UPDATE auth.login_links l SET invalidated_at = now()
         WHERE l.consumed_at IS NULL AND l.invalidated_at IS NULL
           AND EXISTS (SELECT 1 FROM auth.login_links n
                        WHERE n.tenant_id = l.tenant_id AND n.user_id = l.user_id
                          AND n.consumed_at IS NULL AND n.invalidated_at IS NULL
                          AND (n.created_at, n.id) > (l.created_at, l.id));
        ALTER TABLE auth.login_links ENABLE TRIGGER USER;
        CREATE UNIQUE INDEX login_links_one_pending ON auth.login_links (tenant_id, user_id)
            WHERE consumed_at IS NULL AND invalidated_at IS NULL;
    END IF;
END
$magic_auth$;
{links_rls}
-- Added later: the MAC of the link's facts under the application's row key (see
-- `MagicLinks::new`). A link without a valid one is refused, so a row the runtime role wrote
-- or redirected (its owner, its secret) signs no one in.
ALTER TABLE auth.login_links ADD COLUMN IF NOT EXISTS row_mac bytea;
-- A link, and an e-mail change token, may only be used up or invalidated, once, or made older
-- or shorter-lived: what it is, and that it was used, are fixed (a used link cannot be revived,
-- nor a token's life extended).
CREATE OR REPLACE FUNCTION auth.tokens_fixed() RETURNS trigger
    LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, pg_temp
    AS $tokens_fixed$
BEGIN
    IF (pg_catalog.to_jsonb(NEW) - 'consumed_at' - 'invalidated_at' - 'created_at' - 'expires_at')
           IS DISTINCT FROM
       (pg_catalog.to_jsonb(OLD) - 'consumed_at' - 'invalidated_at' - 'created_at' - 'expires_at')
       OR NEW.created_at > OLD.created_at OR NEW.expires_at > OLD.expires_at
       OR (OLD.consumed_at IS NOT NULL
           AND NEW.consumed_at IS DISTINCT FROM OLD.consumed_at)
       OR (OLD.invalidated_at IS NOT NULL
           AND NEW.invalidated_at IS DISTINCT FROM OLD.invalidated_at) THEN
        RAISE EXCEPTION USING
            ERRCODE = 'MA003',
            MESSAGE = pg_catalog.format(
                'auth.%s: a token may only be used up, invalidated or expire sooner', TG_TABLE_NAME);
    END IF;
    RETURN NEW;
END
$tokens_fixed$;
REVOKE ALL ON FUNCTION auth.tokens_fixed() FROM PUBLIC;
DROP TRIGGER IF EXISTS login_links_fixed ON auth.login_links;
CREATE TRIGGER login_links_fixed BEFORE UPDATE ON auth.login_links
    FOR EACH ROW EXECUTE FUNCTION auth.tokens_fixed();
ALTER TABLE auth.login_links ENABLE ALWAYS TRIGGER login_links_fixed;
REVOKE ALL ON auth.login_links FROM PUBLIC;
REVOKE ALL ON auth.login_links FROM {r};
GRANT SELECT, INSERT, UPDATE ON auth.login_links TO {r};

CREATE TABLE IF NOT EXISTS auth.rate_limits (
    tenant_id    uuid        NOT NULL,
    key          text        NOT NULL CHECK (length(key) <= 200),
    window_start timestamptz NOT NULL,
    hits         integer     NOT NULL CHECK (hits > 0),
    PRIMARY KEY (tenant_id, key)
);
{limits_rls}
REVOKE ALL ON auth.rate_limits FROM PUBLIC;
REVOKE ALL ON auth.rate_limits FROM {r};
GRANT SELECT, INSERT, UPDATE ON auth.rate_limits TO {r};

CREATE TABLE IF NOT EXISTS auth.recovery_codes (
    tenant_id  uuid        NOT NULL,
    user_id    uuid        NOT NULL,
    code_hash  bytea       NOT NULL CHECK (length(code_hash) = 32),
    created_at timestamptz NOT NULL,
    used_at    timestamptz,
    PRIMARY KEY (tenant_id, user_id, code_hash)
);
{recovery_rls}
-- Added later: the code's hash sealed with the application's keyring, bound to (tenant,
-- auth.recovery_codes, code_hash, user). A code whose seal does not open to its hash is
-- refused, so a code the runtime role inserted (the hash itself is not secret) is no factor.
ALTER TABLE auth.recovery_codes ADD COLUMN IF NOT EXISTS sealed bytea;
-- A recovery code may only be used up, once.
CREATE OR REPLACE FUNCTION auth.recovery_codes_fixed() RETURNS trigger
    LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, pg_temp
    AS $recovery_codes_fixed$
BEGIN
    IF (pg_catalog.to_jsonb(NEW) - 'used_at') IS DISTINCT FROM (pg_catalog.to_jsonb(OLD) - 'used_at')
       OR (OLD.used_at IS NOT NULL AND NEW.used_at IS DISTINCT FROM OLD.used_at) THEN
        RAISE EXCEPTION USING
            ERRCODE = 'MA003',
            MESSAGE = 'auth.recovery_codes: a code may only be used up, once';
    END IF;
    RETURN NEW;
END
$recovery_codes_fixed$;
REVOKE ALL ON FUNCTION auth.recovery_codes_fixed() FROM PUBLIC;
DROP TRIGGER IF EXISTS recovery_codes_fixed ON auth.recovery_codes;
CREATE TRIGGER recovery_codes_fixed BEFORE UPDATE ON auth.recovery_codes
    FOR EACH ROW EXECUTE FUNCTION auth.recovery_codes_fixed();
ALTER TABLE auth.recovery_codes ENABLE ALWAYS TRIGGER recovery_codes_fixed;
REVOKE ALL ON auth.recovery_codes FROM PUBLIC;
REVOKE ALL ON auth.recovery_codes FROM {r};
GRANT SELECT, INSERT, UPDATE ON auth.recovery_codes TO {r};

-- Per-account sign-in state: the row that sessions and links of one account take turns on
-- (see `crate::account`), the generation that every "sign out everywhere" moves, and whether
-- the account is disabled for sign-in.
CREATE TABLE IF NOT EXISTS auth.accounts (
    tenant_id   uuid        NOT NULL,
    user_id     uuid        NOT NULL,
    generation  bigint      NOT NULL DEFAULT 0 CHECK (generation >= 0),
    disabled_at timestamptz,
    PRIMARY KEY (tenant_id, user_id)
);
{accounts_rls}
-- The generation every "sign out everywhere" moves only moves forward, one at a time: moving
-- it back would revive a sign-in that a revocation overtook, and a jump to the largest value
-- would make every later sign-out fail.
CREATE OR REPLACE FUNCTION auth.accounts_forward_only() RETURNS trigger
    LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, pg_temp
    AS $accounts_forward_only$
BEGIN
    IF (TG_OP = 'INSERT' AND NEW.generation > 1)
       OR (TG_OP = 'UPDATE'
           AND (NEW.tenant_id IS DISTINCT FROM OLD.tenant_id
                OR NEW.user_id IS DISTINCT FROM OLD.user_id
                OR NEW.generation NOT IN (OLD.generation, OLD.generation + 1))) THEN
        RAISE EXCEPTION USING
            ERRCODE = 'MA002',
            MESSAGE = 'an account''s sign-in generation only moves forward, one at a time';
    END IF;
    RETURN NEW;
END
$accounts_forward_only$;
REVOKE ALL ON FUNCTION auth.accounts_forward_only() FROM PUBLIC;
DROP TRIGGER IF EXISTS accounts_forward_only ON auth.accounts;
CREATE TRIGGER accounts_forward_only BEFORE INSERT OR UPDATE ON auth.accounts
    FOR EACH ROW EXECUTE FUNCTION auth.accounts_forward_only();
ALTER TABLE auth.accounts ENABLE ALWAYS TRIGGER accounts_forward_only;
REVOKE ALL ON auth.accounts FROM PUBLIC;
REVOKE ALL ON auth.accounts FROM {r};
GRANT SELECT, INSERT, UPDATE ON auth.accounts TO {r};

-- Pending e-mail address changes: a single-use confirmation token (stored as a hash) bound to
-- the tenant, the account, the new address and the session that asked for it.
CREATE TABLE IF NOT EXISTS auth.email_changes (
    tenant_id      uuid        NOT NULL,
    id             uuid        NOT NULL,
    user_id        uuid        NOT NULL,
    session_id     uuid        NOT NULL,
    new_email      text        NOT NULL CHECK (length(new_email) <= 254),
    secret_hash    bytea       NOT NULL CHECK (length(secret_hash) = 32),
    created_at     timestamptz NOT NULL,
    expires_at     timestamptz NOT NULL,
    consumed_at    timestamptz,
    invalidated_at timestamptz,
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX IF NOT EXISTS email_changes_user_idx ON auth.email_changes (tenant_id, user_id);
{email_rls}
-- Added later: the MAC of the change's facts under the application's row key (see
-- `MagicLinks::new`). A change without a valid one is refused, so a row the runtime role wrote
-- (an address and a token of its choosing, bound to a session that never took the step-up)
-- changes nothing.
ALTER TABLE auth.email_changes ADD COLUMN IF NOT EXISTS row_mac bytea;
DROP TRIGGER IF EXISTS email_changes_fixed ON auth.email_changes;
CREATE TRIGGER email_changes_fixed BEFORE UPDATE ON auth.email_changes
    FOR EACH ROW EXECUTE FUNCTION auth.tokens_fixed();
ALTER TABLE auth.email_changes ENABLE ALWAYS TRIGGER email_changes_fixed;
REVOKE ALL ON auth.email_changes FROM PUBLIC;
REVOKE ALL ON auth.email_changes FROM {r};
GRANT SELECT, INSERT, UPDATE ON auth.email_changes TO {r};
"#
    ))
}

/// The database-side session check for `rls-guard`: build the application's pool with
/// `TenantPool::with_session_liveness(magic_auth::session_liveness())`, and every transaction
/// and bound read made for a request's session ([`Session::actor`](crate::Session::actor)
/// carries it) asks the database, in its binding statement, whether the session is still live
/// (not revoked, not expired). A session revoked on any instance then reads and writes nothing
/// from the moment its revocation commits, whatever an instance's layer believed.
#[must_use]
pub fn session_liveness() -> rls_guard::SessionLiveness {
    rls_guard::SessionLiveness::function("auth.session_is_live")
        .unwrap_or_else(|_| unreachable!("a fixed, plain, qualified name"))
}

/// Declares to `rls-guard`'s coverage check the triggers [`schema_sql`] installs: on
/// `auth.sessions`, one announces session changes with `NOTIFY` (see
/// [`SessionStore::with_cache`](crate::SessionStore::with_cache)) and one refuses every change to
/// a session but its end and its use; on the links, e-mail change tokens, recovery codes,
/// authenticators and accounts, one each lets a row change only forward (used up, invalidated,
/// confirmed, a later step or generation). The check reports every other trigger.
#[must_use]
pub fn coverage_trust(check: rls_guard::CoverageCheck) -> rls_guard::CoverageCheck {
    check
        .trust_trigger("auth.sessions", "sessions_notify_change")
        .trust_trigger("auth.sessions", "sessions_fixed")
        .trust_trigger("auth.login_links", "login_links_fixed")
        .trust_trigger("auth.email_changes", "email_changes_fixed")
        .trust_trigger("auth.recovery_codes", "recovery_codes_fixed")
        .trust_trigger("auth.totp", "totp_forward_only")
        .trust_trigger("auth.accounts", "accounts_forward_only")
}
