//! Sessions stored in PostgreSQL: created at sign-in, checked on every request, revocable at
//! once on every app instance (there is no cache to wait out).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use rls_guard::TenantPool;
use secrecy::{ExposeSecret, SecretBox, SecretString};
use tenant_scope::{Actor, ActorId, ActorKind, TenantContext, TenantId};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::AuthError;
use crate::account::{self, Disable, Ended};
use crate::cache::{SessionCache, SessionCacheConfig};
use crate::events::{AuthEventKind, AuthEvents, EventSink};
use crate::link::SignIn;
use crate::token::SessionToken;

/// Reports what a "sign out everywhere" ended (after it is committed).
pub(crate) fn report_ended(events: &EventSink, tenant: TenantId, user: ActorId, ended: Ended) {
    if ended.sessions > 0 {
        events.emit(AuthEventKind::SessionsRevoked, tenant, Some(user), None);
    }
    if ended.links > 0 {
        events.emit(AuthEventKind::LinksInvalidated, tenant, Some(user), None);
    }
}

/// How strongly the session's holder was authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Assurance {
    /// One step: the email link.
    Aal1 = 1,
    /// Two steps: the email link and a TOTP (or recovery) code.
    Aal2 = 2,
}

impl Assurance {
    fn from_db(value: i16) -> Option<Self> {
        match value {
            1 => Some(Self::Aal1),
            2 => Some(Self::Aal2),
            _ => None,
        }
    }
}

/// Session lifetimes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionConfig {
    /// A session unused for this long expires (default 30 minutes).
    pub idle: Duration,
    /// A session expires this long after sign-in, however active (default 12 hours). Activity
    /// never extends a session beyond it.
    pub absolute: Duration,
    /// How stale `last_seen_at` may get before a request refreshes it (default 60 seconds): a
    /// write per request would cost more than the idle timeout needs.
    pub touch_after: Duration,
}

/// The longest session lifetime accepted for [`SessionConfig::absolute`] (400 days).
pub const MAX_SESSION_LIFETIME: Duration = Duration::from_secs(400 * 24 * 60 * 60);

impl SessionConfig {
    /// Sessions that expire after `idle` unused or `absolute` after sign-in, whichever comes
    /// first; `touch_after` as by default (checked by [`SessionConfig::validate`] when the store
    /// is built).
    #[must_use]
    pub fn new(idle: Duration, absolute: Duration) -> Self {
        Self {
            idle,
            absolute,
            ..Self::default()
        }
    }

    /// Checks that every value is usable: `idle` and `absolute` at least one second, `idle` no
    /// longer than `absolute`, `absolute` at most [`MAX_SESSION_LIFETIME`], and `touch_after`
    /// shorter than `idle` (or activity would not keep a session alive).
    ///
    /// # Errors
    /// [`AuthError::InvalidConfig`] naming the first value out of bounds.
    pub fn validate(&self) -> Result<(), AuthError> {
        if self.idle.as_secs() == 0 || self.absolute.as_secs() == 0 || self.idle > self.absolute {
            return Err(AuthError::InvalidConfig(
                "session lifetimes must be positive, idle no longer than absolute",
            ));
        }
        if self.absolute > MAX_SESSION_LIFETIME {
            return Err(AuthError::InvalidConfig(
                "session absolute lifetime must be at most 400 days",
            ));
        }
        if self.touch_after >= self.idle {
            return Err(AuthError::InvalidConfig(
                "session touch_after must be shorter than idle",
            ));
        }
        span(self.absolute)?;
        Ok(())
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            idle: Duration::from_secs(30 * 60),
            absolute: Duration::from_secs(12 * 60 * 60),
            touch_after: Duration::from_secs(60),
        }
    }
}

/// A valid session, as checked for the current request.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Session {
    /// The tenant.
    pub tenant: TenantId,
    /// The session id (shown in session lists; not a secret).
    pub id: Uuid,
    /// The signed-in user.
    pub user: ActorId,
    /// `User` or `Staff`.
    pub kind: ActorKind,
    /// How strongly the holder was authenticated.
    pub assurance: Assurance,
    /// When the session was created.
    pub created_at: OffsetDateTime,
    /// The last successful factor check (sign-in or step-up).
    pub authenticated_at: OffsetDateTime,
    /// When it expires if unused.
    pub idle_expires_at: OffsetDateTime,
    /// When it expires regardless.
    pub absolute_expires_at: OffsetDateTime,
}

impl Session {
    /// The session [`SessionStore::create`] describes when it creates one for `user` at `at`
    /// under `config`: created and authenticated at `at`, expiring after `config.idle` unused
    /// and `config.absolute` in any case. For code that stands in for the store, such as an
    /// extractor's or an approver's tests. The database does not take a `Session` on trust: a
    /// statement bound for its [`actor`](Self::actor) still asks whether the session is live.
    /// magic-auth's own step-up checks (recovery codes, replacing the authenticator, changing
    /// the e-mail address) also ask the stored session whether it is as strong and as fresh
    /// as the value says. Checks outside magic-auth that read a `Session`'s `assurance` and
    /// `authenticated_at` (a tool-sandbox approval, say) take the value as given: give them
    /// only sessions your [`SessionStore`] returned for the request.
    ///
    /// # Errors
    /// [`AuthError::InvalidConfig`] when an expiry overflows the calendar.
    pub fn new(
        tenant: TenantId,
        id: Uuid,
        user: ActorId,
        kind: ActorKind,
        assurance: Assurance,
        at: OffsetDateTime,
        config: &SessionConfig,
    ) -> Result<Self, AuthError> {
        let absolute_expires_at = later(at, config.absolute)?;
        Ok(Self {
            tenant,
            id,
            user,
            kind,
            assurance,
            created_at: at,
            authenticated_at: at,
            idle_expires_at: later(at, config.idle)?.min(absolute_expires_at),
            absolute_expires_at,
        })
    }

    /// The acting principal, for `tenant-scope`, acting through this session: every statement
    /// bound for it asks the database whether the session is still live (see
    /// [`session_liveness`](crate::session_liveness)).
    #[must_use]
    pub const fn actor(&self) -> Actor {
        Actor::new(self.kind, self.user, self.tenant).with_session(self.id)
    }

    /// Whether the session passes a step-up check: `aal2`, its last factor check at most
    /// `max_age` old (what [`Guard::require_step_up`](crate::Guard::require_step_up) checks).
    #[must_use]
    pub fn is_fresh(&self, max_age: Duration) -> bool {
        let age = OffsetDateTime::now_utc() - self.authenticated_at;
        self.assurance == Assurance::Aal2
            && time::Duration::try_from(max_age).is_ok_and(|max| age <= max)
    }
}

/// A session in a user's list (no secrets).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionSummary {
    /// The session id.
    pub id: Uuid,
    /// Whose session it is.
    pub user: ActorId,
    /// How strongly the holder was authenticated.
    pub assurance: Assurance,
    /// When it was created.
    pub created_at: OffsetDateTime,
    /// When it was last used (to within [`SessionConfig::touch_after`]).
    pub last_seen_at: OffsetDateTime,
    /// The user agent at sign-in.
    pub user_agent: Option<String>,
    /// The client address at sign-in.
    pub ip: Option<IpAddr>,
}

/// Who signs in, and from where (for the session list): [`NewSession::new`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct NewSession {
    /// The user.
    pub user: ActorId,
    /// `User` or `Staff`.
    pub kind: ActorKind,
    /// The assurance reached.
    pub assurance: Assurance,
    /// The client's user agent (kept to 512 bytes).
    pub user_agent: Option<String>,
    /// The client's address.
    pub ip: Option<IpAddr>,
}

impl NewSession {
    /// `user` of `kind`, authenticated to `assurance`, from an unknown client.
    #[must_use]
    pub const fn new(user: ActorId, kind: ActorKind, assurance: Assurance) -> Self {
        Self {
            user,
            kind,
            assurance,
            user_agent: None,
            ip: None,
        }
    }

    /// From this client: its user agent and address, as far as known.
    #[must_use]
    pub fn from_client(mut self, user_agent: Option<String>, ip: Option<IpAddr>) -> Self {
        self.user_agent = user_agent;
        self.ip = ip;
        self
    }
}

/// The session store.
#[derive(Debug, Clone)]
pub struct SessionStore {
    pool: TenantPool,
    config: SessionConfig,
    events: EventSink,
    cache: Option<SessionCache>,
    row_key: Arc<SecretBox<[u8; 32]>>,
}

/// The domain of a session row's MAC.
const ROW_MAC_DOMAIN: &[u8] = b"magic-auth/session-row/v1\n";

/// A timestamp as PostgreSQL stores it (and sqlx sends it): whole microseconds since the epoch.
pub(crate) fn micros(at: OffsetDateTime) -> [u8; 16] {
    (at.unix_timestamp_nanos() / 1000).to_be_bytes()
}

/// An HMAC-SHA256 under the application's row key, started with `domain`: the MAC of a row the
/// library writes (a session, a sign-in link), which the runtime role cannot compute.
pub(crate) fn row_hmac(key: &SecretBox<[u8; 32]>, domain: &[u8]) -> hmac::Hmac<sha2::Sha256> {
    use hmac::Mac;
    let mut mac = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(key.expose_secret())
        .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
    mac.update(domain);
    mac
}

/// The lookup: one prepared statement, run as the runtime role in its own implicit transaction.
/// The materialised CTE binds the tenant the cookie names (`set_config(.., true)`: for this
/// transaction only); the session row is read in a `LATERAL` subquery that depends on the
/// CTE's row (and `OFFSET 0` keeps it from being flattened), so the binding is in place before
/// row-level security's tenant predicate is first evaluated. Were it not, the predicate would
/// see no tenant and the lookup would find nothing: it fails closed. The statement cannot
/// reach another tenant's row either way — the row must match the bound tenant.
///
pub(crate) const LOOKUP: &str = "WITH bound AS MATERIALIZED ( \
       SELECT pg_catalog.set_config('app.tenant_id', $1::text, true)::uuid AS tenant) \
     SELECT s.user_id, s.actor_kind, s.secret_hash, s.aal, s.created_at, s.authenticated_at, \
            s.last_seen_at, s.idle_expires_at, s.absolute_expires_at, s.revoked_at, s.row_mac \
       FROM bound CROSS JOIN LATERAL ( \
            SELECT s.user_id, s.actor_kind, s.secret_hash, s.aal, s.created_at, \
                   s.authenticated_at, s.last_seen_at, s.idle_expires_at, s.absolute_expires_at, \
                   s.revoked_at, s.row_mac FROM auth.sessions s \
             WHERE s.tenant_id = bound.tenant AND s.id = $2 OFFSET 0) s";

type LookupRow = (
    Uuid,
    String,
    Vec<u8>,
    i16,
    OffsetDateTime,
    OffsetDateTime,
    OffsetDateTime,
    OffsetDateTime,
    OffsetDateTime,
    Option<OffsetDateTime>,
    Option<Vec<u8>>,
);

/// What a session row's MAC covers: everything that says whose session it is and what it may
/// do, and nothing a legitimate update changes.
struct RowFacts<'a> {
    tenant: TenantId,
    id: Uuid,
    user: Uuid,
    kind: &'a str,
    aal: i16,
    secret_hash: &'a [u8],
    created_at: OffsetDateTime,
    authenticated_at: OffsetDateTime,
    absolute_expires_at: OffsetDateTime,
}

fn span(d: Duration) -> Result<time::Duration, AuthError> {
    time::Duration::try_from(d).map_err(|_| AuthError::InvalidConfig("duration"))
}

/// `at + d`, checked: an overflow is an error (the operation is refused), never a panic.
fn later(at: OffsetDateTime, d: Duration) -> Result<OffsetDateTime, AuthError> {
    at.checked_add(span(d)?)
        .ok_or(AuthError::InvalidConfig("duration"))
}

fn context(tenant: TenantId) -> Result<TenantContext, AuthError> {
    TenantContext::for_job(tenant, None, "magic-auth")
        .map_err(|_| AuthError::InvalidConfig("tenant"))
}

impl SessionStore {
    /// A store on the runtime role's tenant pool. `row_key` (32 random bytes, the same on every
    /// instance, kept outside the database like any other application secret) signs each
    /// session row the store writes: a row that the runtime role writes itself — injected SQL
    /// inserting a session of its choosing, for any user, kind or level — carries no valid
    /// signature and is never accepted as a session.
    ///
    /// # Errors
    /// [`AuthError::InvalidConfig`] when `config` does not pass [`SessionConfig::validate`].
    pub fn new(
        pool: TenantPool,
        config: SessionConfig,
        row_key: impl Into<SecretBox<[u8; 32]>>,
    ) -> Result<Self, AuthError> {
        config.validate()?;
        Ok(Self {
            pool,
            config,
            events: EventSink::default(),
            cache: None,
            row_key: Arc::new(row_key.into()),
        })
    }

    /// The MAC of a session row's facts under this store's row key.
    fn row_mac(&self, facts: &RowFacts<'_>) -> hmac::Hmac<sha2::Sha256> {
        use hmac::Mac;
        let mut mac = row_hmac(&self.row_key, ROW_MAC_DOMAIN);
        mac.update(facts.tenant.as_uuid().as_bytes());
        mac.update(facts.id.as_bytes());
        mac.update(facts.user.as_bytes());
        mac.update(&[u8::from(facts.kind == "staff")]);
        mac.update(&facts.aal.to_be_bytes());
        mac.update(facts.secret_hash);
        mac.update(&micros(facts.created_at));
        mac.update(&micros(facts.authenticated_at));
        mac.update(&micros(facts.absolute_expires_at));
        mac
    }

    /// Answers [`validate_cached`](Self::validate_cached) from a per-instance cache of
    /// validated sessions where it can, saving the lookup's round trip on most reads
    /// ([`validate`](Self::validate) always asks the database, and refreshes the cache).
    ///
    /// Every change to a session row (revocation, rotation, step-up, sign-out everywhere,
    /// disabling the account, expiry brought forward) is announced by a trigger on
    /// `auth.sessions` with `NOTIFY`, delivered when its transaction commits; a listener of
    /// this store's own (one connection, made with the pool's options, so it must not go
    /// through a transaction-pooling PgBouncer) forgets the entry on every instance. It fails
    /// closed: while the listener is not listening (before it first connects and receives a
    /// probe notice sent from another connection — which a listener behind a
    /// transaction-pooling PgBouncer never does —, after losing its connection, until it
    /// listens again) nothing is served from memory and everything held is dropped; an entry is served for at most [`SessionCacheConfig::max_age`] (default 5 s)
    /// even without a notice; a lookup that overlapped a notice is not cached; staff sessions
    /// are never cached.
    ///
    /// Between a revocation's commit and the notice's arrival, this instance may still let the
    /// session through the layer; the database refuses every data statement made for it from
    /// the commit on (build the pool with [`session_liveness`](crate::session_liveness)), and
    /// magic-auth's own sensitive operations (step-up, recovery codes, settings) check the
    /// session in the database. Guards judge what the layer found: keep step-up and staff
    /// guards on state-changing routes (which always ask the database), as the reference app
    /// does; a step-up only ever makes a new session, so a cached one is never fresher than the
    /// database's.
    ///
    /// # Errors
    /// [`AuthError::InvalidConfig`] for settings [`SessionCacheConfig::validate`] refuses, or
    /// when called outside a tokio runtime.
    pub fn with_cache(mut self, config: SessionCacheConfig) -> Result<Self, AuthError> {
        self.cache = Some(SessionCache::start(self.pool.pool().clone(), config)?);
        Ok(self)
    }

    /// Whether the session cache is serving (its listener is listening); `None` without a
    /// cache. For health checks.
    #[must_use]
    pub fn cache_listening(&self) -> Option<bool> {
        self.cache.as_ref().map(SessionCache::listening)
    }

    /// Also report session events to `hook`.
    #[must_use]
    pub fn with_events(mut self, hook: Arc<dyn AuthEvents>) -> Self {
        self.events = EventSink::new(hook);
        self
    }

    /// Creates a session in `tenant` and returns its token (to set as the cookie). Create a new
    /// session (and revoke the old one) at every sign-in and privilege change, so a token
    /// planted before sign-in is worth nothing after it. For the sign-in that follows a magic
    /// link, use [`SessionStore::sign_in`]: it also refuses a sign-in that a revocation
    /// overtook.
    ///
    /// # Errors
    /// [`AuthError::AccountDisabled`] when the account was disabled with
    /// [`SessionStore::disable_account`]; [`AuthError::Database`]/[`AuthError::Transaction`]
    /// when it cannot be stored.
    pub async fn create(
        &self,
        tenant: TenantId,
        new: &NewSession,
    ) -> Result<(Session, SessionToken), AuthError> {
        self.create_checked(tenant, new, None, Duration::ZERO).await
    }

    /// Creates the `aal1` session for a confirmed magic link ([`MagicLinks::confirm`](crate::MagicLinks::confirm)),
    /// for the account as it was at confirmation (`sign_in.kind`). Refused when, since the
    /// confirmation, the account was disabled or all its sessions were revoked
    /// ([`SessionStore::revoke_all`], a lockout, [`MagicLinks::invalidate_links`](crate::MagicLinks::invalidate_links)):
    /// checked in the transaction that inserts the session, under the account's lock, so a
    /// revocation either sees the new session (and revokes it) or is seen by it (and refuses).
    ///
    /// # Errors
    /// [`AuthError::InvalidLink`] when the sign-in was overtaken (disabled, revoked); database
    /// errors.
    pub async fn sign_in(
        &self,
        sign_in: &SignIn,
        user_agent: Option<&str>,
        ip: Option<IpAddr>,
    ) -> Result<(Session, SessionToken), AuthError> {
        let new = NewSession {
            user: sign_in.user,
            kind: sign_in.kind,
            assurance: Assurance::Aal1,
            user_agent: user_agent.map(str::to_owned),
            ip,
        };
        self.create_checked(
            sign_in.tenant,
            &new,
            Some(sign_in.generation),
            Duration::ZERO,
        )
        .await
    }

    /// A session as [`create`](Self::create) makes it, but as if made `age` ago (its factor
    /// check, creation and both expiries that much earlier): for tests of what a stale second
    /// factor meets (an authorization matrix's "signed in, step-up too old" role, say). It is
    /// never fresher than one made now.
    ///
    /// # Errors
    /// As [`create`](Self::create); [`AuthError::InvalidConfig`] for an age that does not fit.
    pub async fn create_aged(
        &self,
        tenant: TenantId,
        new: &NewSession,
        age: Duration,
    ) -> Result<(Session, SessionToken), AuthError> {
        self.create_checked(tenant, new, None, age).await
    }

    async fn create_checked(
        &self,
        tenant: TenantId,
        new: &NewSession,
        generation: Option<i64>,
        age: Duration,
    ) -> Result<(Session, SessionToken), AuthError> {
        let token = SessionToken::generate(tenant)?;
        let now = OffsetDateTime::now_utc();
        let now = now
            .replace_nanosecond(now.nanosecond() / 1000 * 1000)
            .unwrap_or(now);
        let now = now
            .checked_sub(span(age)?)
            .ok_or(AuthError::InvalidConfig("session age"))?;
        let kind = if new.kind == ActorKind::Staff {
            ActorKind::Staff
        } else {
            ActorKind::User
        };
        let session = Session::new(
            tenant,
            token.id(),
            new.user,
            kind,
            new.assurance,
            now,
            &self.config,
        )?;
        let (idle, absolute) = (session.idle_expires_at, session.absolute_expires_at);
        let kind = if kind == ActorKind::Staff {
            "staff"
        } else {
            "user"
        };
        let user_agent = new.user_agent.as_deref().map(|ua| {
            let mut end = ua.len().min(512);
            while !ua.is_char_boundary(end) {
                end -= 1;
            }
            &ua[..end]
        });
        let mut tx = self.pool.begin(&context(tenant)?).await?;
        let state = account::lock(&mut tx, tenant, new.user).await?;
        let refusal = match generation {
            Some(at) if state.disabled || state.generation != at => Some(AuthError::InvalidLink),
            None if state.disabled => Some(AuthError::AccountDisabled),
            _ => None,
        };
        if let Some(refusal) = refusal {
            tx.rollback().await?;
            return Err(refusal);
        }
        let secret_hash = token.secret_hash();
        let row_mac = {
            use hmac::Mac;
            self.row_mac(&RowFacts {
                tenant,
                id: token.id(),
                user: *new.user.as_uuid(),
                kind,
                aal: new.assurance as i16,
                secret_hash: &secret_hash,
                created_at: now,
                authenticated_at: now,
                absolute_expires_at: absolute,
            })
            .finalize()
            .into_bytes()
        };
        sqlx::query(
            "INSERT INTO auth.sessions (tenant_id, id, user_id, actor_kind, secret_hash, aal, \
             created_at, authenticated_at, last_seen_at, idle_expires_at, absolute_expires_at, \
             user_agent, ip, family_id, row_mac) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $7, $8, $9, $10, $11, $2, $12)",
        )
        .bind(tenant.as_uuid())
        .bind(token.id())
        .bind(new.user.as_uuid())
        .bind(kind)
        .bind(secret_hash.as_slice())
        .bind(new.assurance as i16)
        .bind(now)
        .bind(idle)
        .bind(absolute)
        .bind(user_agent)
        .bind(new.ip.map(|ip| ip.to_string()))
        .bind(row_mac.as_slice())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.events.emit_as(
            AuthEventKind::SessionCreated,
            tenant,
            Some(new.user),
            Some(new.kind),
            Some(token.id()),
        );
        Ok((session, token))
    }

    /// Replaces `current` by a new session (new id, new secret) for the same user, with
    /// `authenticated_at` now and at least `assurance` — after the second factor (`aal1` →
    /// `aal2`), after a step-up. (A privilege change — a user made staff — needs a new session
    /// from [`SessionStore::create`] and the old one revoked: the kind is copied here.) The old
    /// session is revoked in the
    /// same transaction; the new one keeps the old absolute expiry (a step-up never extends a
    /// session's life).
    ///
    /// Final against revocation: the rotation takes the account's lock before it reads the old
    /// session, as every revocation does, so a revocation of the old session (or of all the
    /// user's sessions, or a disable, or a lockout) that commits first makes the rotation fail,
    /// and one that commits after it ends the new session too ([`SessionStore::revoke`] ends
    /// every session rotated from the one it names).
    ///
    /// # Errors
    /// [`AuthError::InvalidToken`] when `current` is no longer live; database errors.
    pub async fn rotate(
        &self,
        current: &Session,
        assurance: Assurance,
    ) -> Result<(Session, SessionToken), AuthError> {
        let token = SessionToken::generate(current.tenant)?;
        let now = OffsetDateTime::now_utc();
        let now = now
            .replace_nanosecond(now.nanosecond() / 1000 * 1000)
            .unwrap_or(now);
        let idle = later(now, self.config.idle)?.min(current.absolute_expires_at);
        let assurance = assurance.max(current.assurance);
        // The new row's facts, as the statement below copies them from the old row (which it
        // requires to say the same): signed here, with the new secret and assurance.
        let kind = match current.kind {
            ActorKind::Staff => "staff",
            _ => "user",
        };
        let secret_hash = token.secret_hash();
        let row_mac = {
            use hmac::Mac;
            self.row_mac(&RowFacts {
                tenant: current.tenant,
                id: token.id(),
                user: *current.user.as_uuid(),
                kind,
                aal: assurance as i16,
                secret_hash: &secret_hash,
                created_at: current.created_at,
                authenticated_at: now,
                absolute_expires_at: current.absolute_expires_at,
            })
            .finalize()
            .into_bytes()
        };
        let mut tx = self.pool.begin(&context(current.tenant)?).await?;
        if account::lock(&mut tx, current.tenant, current.user)
            .await?
            .disabled
        {
            tx.rollback().await?;
            return Err(AuthError::InvalidToken);
        }
        let rotated = sqlx::query(
            "WITH old AS (UPDATE auth.sessions SET revoked_at = $5 \
                 WHERE tenant_id = $1 AND id = $2 AND user_id = $8 AND revoked_at IS NULL \
                   AND idle_expires_at > $5 AND absolute_expires_at > $5 \
                 RETURNING *) \
             INSERT INTO auth.sessions (tenant_id, id, user_id, actor_kind, secret_hash, aal, \
                 created_at, authenticated_at, last_seen_at, idle_expires_at, absolute_expires_at, \
                 user_agent, ip, family_id, row_mac) \
             SELECT tenant_id, $3, user_id, actor_kind, $4, $6, created_at, $5, $5, $7, \
                 absolute_expires_at, user_agent, ip, COALESCE(family_id, id), $9 FROM old \
              WHERE old.actor_kind = $10 AND old.created_at = $11 \
                AND old.absolute_expires_at = $12",
        )
        .bind(current.tenant.as_uuid())
        .bind(current.id)
        .bind(token.id())
        .bind(secret_hash.as_slice())
        .bind(now)
        .bind(assurance as i16)
        .bind(idle)
        .bind(current.user.as_uuid())
        .bind(row_mac.as_slice())
        .bind(kind)
        .bind(current.created_at)
        .bind(current.absolute_expires_at)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if rotated != 1 {
            tx.rollback().await?;
            return Err(AuthError::InvalidToken);
        }
        tx.commit().await?;
        self.events.emit_as(
            AuthEventKind::SessionRotated,
            current.tenant,
            Some(current.user),
            Some(current.kind),
            Some(token.id()),
        );
        let session = Session {
            id: token.id(),
            assurance,
            authenticated_at: now,
            idle_expires_at: idle,
            ..current.clone()
        };
        Ok((session, token))
    }

    /// As [`validate`](Self::validate), answered from the session cache (see
    /// [`with_cache`](Self::with_cache)) when it holds the session; without a cache, or on a
    /// miss, exactly `validate`. [`SessionManagerLayer`](crate::SessionManagerLayer) uses it for requests
    /// that change nothing (`GET`, `HEAD`, `OPTIONS`); every other request, and every
    /// magic-auth operation, asks the database.
    ///
    /// # Errors
    /// As [`validate`](Self::validate).
    pub async fn validate_cached(
        &self,
        cookie: impl Into<SecretString>,
    ) -> Result<Option<Session>, AuthError> {
        let cookie: SecretString = cookie.into();
        if let Some(cache) = &self.cache
            && let Ok(token) = SessionToken::parse(&cookie)
            && let Some(session) = cache.get(&token)
        {
            return Ok(Some(session));
        }
        self.validate(cookie).await
    }

    /// Checks a cookie value: the session must exist, hold this secret (compared in constant
    /// time), be unrevoked and within both expiries. One round trip; at most every
    /// [`SessionConfig::touch_after`], a short transaction of its own extends the idle expiry
    /// (never past the absolute one).
    ///
    /// `Ok(None)` for every kind of bad token — malformed, unknown, wrong secret, revoked,
    /// expired — so callers answer them all alike.
    ///
    /// # Errors
    /// [`AuthError::Database`] when the store cannot be reached: the request must then be
    /// refused (503), never treated as signed in.
    pub async fn validate(
        &self,
        cookie: impl Into<SecretString>,
    ) -> Result<Option<Session>, AuthError> {
        let Ok(token) = SessionToken::parse(&cookie.into()) else {
            return Ok(None);
        };
        // The cache's entry is refreshed: dropped now, held again below only if still live.
        let generation = self.cache.as_ref().map(|cache| {
            cache.refresh(token.id());
            cache.generation()
        });
        let row: Option<LookupRow> = sqlx::query_as(LOOKUP)
            .bind(token.tenant().to_string())
            .bind(token.id())
            .fetch_optional(self.pool.pool())
            .await?;
        let Some((
            user_id,
            kind,
            hash,
            aal,
            created,
            authenticated,
            seen,
            idle,
            absolute,
            revoked,
            row_mac,
        )) = row
        else {
            return Ok(None);
        };
        let now = OffsetDateTime::now_utc();
        // Evaluate every condition before deciding, so a wrong secret and a revoked session
        // take the same path. A row this store did not sign (one the runtime role wrote
        // itself) is no session.
        let secret_ok = token.matches(&hash);
        let signed = {
            use hmac::Mac;
            let expected = self.row_mac(&RowFacts {
                tenant: token.tenant(),
                id: token.id(),
                user: user_id,
                kind: &kind,
                aal,
                secret_hash: &hash,
                created_at: created,
                authenticated_at: authenticated,
                absolute_expires_at: absolute,
            });
            row_mac.is_some_and(|mac| expected.verify_slice(&mac).is_ok())
        };
        let user = user_id;
        let live = revoked.is_none() && idle > now && absolute > now;
        let (Some(assurance), Ok(user)) = (Assurance::from_db(aal), ActorId::from_uuid(user))
        else {
            return Ok(None);
        };
        if !(secret_ok && live && signed) {
            return Ok(None);
        }
        let kind = if kind == "staff" {
            ActorKind::Staff
        } else {
            ActorKind::User
        };
        let mut idle_expires_at = idle;
        if now - seen >= span(self.config.touch_after)? {
            idle_expires_at = self
                .touch(token.tenant(), token.id())
                .await?
                .unwrap_or(idle);
        }
        let session = Session {
            tenant: token.tenant(),
            id: token.id(),
            user,
            kind,
            assurance,
            created_at: created,
            authenticated_at: authenticated,
            idle_expires_at,
            absolute_expires_at: absolute,
        };
        if let (Some(cache), Some(generation)) = (&self.cache, generation) {
            cache.insert(generation, &session, hash);
        }
        Ok(Some(session))
    }

    async fn touch(&self, tenant: TenantId, id: Uuid) -> Result<Option<OffsetDateTime>, AuthError> {
        let idle = span(self.config.idle)?;
        let mut tx = self.pool.begin(&context(tenant)?).await?;
        let extended: Option<(OffsetDateTime,)> = sqlx::query_as(
            "UPDATE auth.sessions SET last_seen_at = now(), \
             idle_expires_at = LEAST(now() + $3, absolute_expires_at) \
             WHERE tenant_id = $1 AND id = $2 AND revoked_at IS NULL \
               AND idle_expires_at > now() AND absolute_expires_at > now() \
             RETURNING idle_expires_at",
        )
        .bind(tenant.as_uuid())
        .bind(id)
        .bind(idle)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(extended.map(|(at,)| at))
    }

    /// Revokes one session of `tenant` (the holder's own, or any, for a tenant admin), and
    /// every session rotated from it — so a rotation at the same moment cannot carry the
    /// session past its revocation. Returns whether a live session was revoked. Effective on
    /// the next request on every instance.
    ///
    /// # Errors
    /// [`AuthError::Database`]/[`AuthError::Transaction`].
    pub async fn revoke(&self, tenant: TenantId, id: Uuid) -> Result<bool, AuthError> {
        let mut tx = self.pool.begin(&context(tenant)?).await?;
        let owner: Option<(Uuid, Uuid)> = sqlx::query_as(
            "SELECT user_id, COALESCE(family_id, id) FROM auth.sessions \
             WHERE tenant_id = $1 AND id = $2",
        )
        .bind(tenant.as_uuid())
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((user, family)) = owner else {
            tx.rollback().await?;
            return Ok(false);
        };
        let user = ActorId::from_uuid(user).map_err(|_| AuthError::InvalidToken)?;
        // Taken in turn with rotations: the update below sees any session rotated from this one.
        account::lock(&mut tx, tenant, user).await?;
        let done = sqlx::query(
            "UPDATE auth.sessions SET revoked_at = now() \
             WHERE tenant_id = $1 AND user_id = $2 AND revoked_at IS NULL \
               AND (id = $3 OR COALESCE(family_id, id) = $4)",
        )
        .bind(tenant.as_uuid())
        .bind(user.as_uuid())
        .bind(id)
        .bind(family)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        if done > 0 {
            self.events
                .emit(AuthEventKind::SessionRevoked, tenant, Some(user), Some(id));
        }
        Ok(done > 0)
    }

    /// Revokes every live session of `user` in `tenant`, except `keep` (the current one, for
    /// "sign out everywhere else"), and invalidates every pending sign-in link of the user —
    /// also a link confirmed but not yet turned into a session ([`SessionStore::sign_in`]
    /// refuses it). For a disabled user, use [`SessionStore::disable_account`]. Returns how
    /// many sessions were revoked.
    ///
    /// Final against every concurrent rotation, step-up, recovery or link sign-in of the user:
    /// they take turns on the account's lock, and none leaves a live session behind.
    ///
    /// # Errors
    /// [`AuthError::Database`]/[`AuthError::Transaction`].
    pub async fn revoke_all(
        &self,
        tenant: TenantId,
        user: ActorId,
        keep: Option<Uuid>,
    ) -> Result<u64, AuthError> {
        let mut tx = self.pool.begin(&context(tenant)?).await?;
        let ended = account::end_sign_ins(&mut tx, tenant, user, keep, Disable::Keep).await?;
        tx.commit().await?;
        report_ended(&self.events, tenant, user, ended);
        Ok(ended.sessions)
    }

    /// Disables `user` in `tenant` for sign-in: every session is revoked, every pending link
    /// invalidated, a link confirmed but not yet turned into a session refused, and no session
    /// is created for the account again ([`SessionStore::create`] answers
    /// [`AuthError::AccountDisabled`], [`SessionStore::sign_in`] and
    /// [`MagicLinks::confirm`](crate::MagicLinks::confirm) refuse, no link is sent) until
    /// [`SessionStore::enable_account`]. Mark the account disabled in the application's
    /// directory too. Reported as [`AuthEventKind::AccountDisabled`].
    ///
    /// # Errors
    /// [`AuthError::Database`]/[`AuthError::Transaction`].
    pub async fn disable_account(&self, tenant: TenantId, user: ActorId) -> Result<(), AuthError> {
        let mut tx = self.pool.begin(&context(tenant)?).await?;
        let ended = account::end_sign_ins(&mut tx, tenant, user, None, Disable::Set).await?;
        tx.commit().await?;
        self.events
            .emit(AuthEventKind::AccountDisabled, tenant, Some(user), None);
        report_ended(&self.events, tenant, user, ended);
        Ok(())
    }

    /// Lifts [`SessionStore::disable_account`]: the account may sign in again (nothing that was
    /// ended comes back). Returns whether it was disabled; reported as
    /// [`AuthEventKind::AccountEnabled`] if so.
    ///
    /// # Errors
    /// [`AuthError::Database`]/[`AuthError::Transaction`].
    pub async fn enable_account(&self, tenant: TenantId, user: ActorId) -> Result<bool, AuthError> {
        let mut tx = self.pool.begin(&context(tenant)?).await?;
        let state = account::lock(&mut tx, tenant, user).await?;
        if !state.disabled {
            tx.rollback().await?;
            return Ok(false);
        }
        sqlx::query(
            "UPDATE auth.accounts SET disabled_at = NULL WHERE tenant_id = $1 AND user_id = $2",
        )
        .bind(tenant.as_uuid())
        .bind(user.as_uuid())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.events
            .emit(AuthEventKind::AccountEnabled, tenant, Some(user), None);
        Ok(true)
    }

    /// The live sessions of `user` in `tenant`, newest first.
    ///
    /// # Errors
    /// [`AuthError::Database`]/[`AuthError::Transaction`].
    pub async fn list(
        &self,
        tenant: TenantId,
        user: ActorId,
    ) -> Result<Vec<SessionSummary>, AuthError> {
        self.list_where(tenant, Some(user)).await
    }

    /// Every live session in `tenant`, newest first: for a tenant admin's session list (and
    /// [`SessionStore::revoke`] to end any of them). Guard the route: admins only.
    ///
    /// # Errors
    /// [`AuthError::Database`]/[`AuthError::Transaction`].
    pub async fn list_tenant(&self, tenant: TenantId) -> Result<Vec<SessionSummary>, AuthError> {
        self.list_where(tenant, None).await
    }

    async fn list_where(
        &self,
        tenant: TenantId,
        user: Option<ActorId>,
    ) -> Result<Vec<SessionSummary>, AuthError> {
        type Row = (
            Uuid,
            Uuid,
            i16,
            OffsetDateTime,
            OffsetDateTime,
            Option<String>,
            Option<String>,
        );
        let mut tx = self.pool.begin(&context(tenant)?).await?;
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT id, user_id, aal, created_at, last_seen_at, user_agent, ip FROM auth.sessions \
             WHERE tenant_id = $1 AND ($2::uuid IS NULL OR user_id = $2) AND revoked_at IS NULL \
               AND idle_expires_at > now() AND absolute_expires_at > now() \
             ORDER BY created_at DESC",
        )
        .bind(tenant.as_uuid())
        .bind(user.map(|u| *u.as_uuid()))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(rows
            .into_iter()
            .filter_map(
                |(id, user, aal, created_at, last_seen_at, user_agent, ip)| {
                    Some(SessionSummary {
                        id,
                        user: ActorId::from_uuid(user).ok()?,
                        assurance: Assurance::from_db(aal)?,
                        created_at,
                        last_seen_at,
                        user_agent,
                        ip: ip.and_then(|text| text.parse().ok()),
                    })
                },
            )
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_described_session_expires_as_the_store_would_and_never_overflows() {
        let at = OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000);
        let (tenant, user) = (TenantId::new_random(), ActorId::new_random());
        let id = Uuid::new_v4();
        let config = SessionConfig::new(Duration::from_secs(600), Duration::from_secs(3600));
        let s = Session::new(
            tenant,
            id,
            user,
            ActorKind::Staff,
            Assurance::Aal2,
            at,
            &config,
        )
        .unwrap();
        assert_eq!((s.created_at, s.authenticated_at), (at, at));
        assert_eq!(s.idle_expires_at, at + time::Duration::minutes(10));
        assert_eq!(s.absolute_expires_at, at + time::Duration::hours(1));
        assert_eq!(s.actor().session(), Some(id));
        // An idle expiry is never later than the absolute one.
        let mut long_idle = config;
        long_idle.idle = Duration::from_secs(7200);
        let s = Session::new(
            tenant,
            id,
            user,
            ActorKind::User,
            Assurance::Aal1,
            at,
            &long_idle,
        )
        .unwrap();
        assert_eq!(s.idle_expires_at, s.absolute_expires_at);
        // At the end of the calendar the expiry is an error, not a panic or a wrapped date.
        let end = time::PrimitiveDateTime::MAX.assume_utc() - time::Duration::minutes(1);
        assert!(matches!(
            Session::new(
                tenant,
                id,
                user,
                ActorKind::User,
                Assurance::Aal1,
                end,
                &config
            ),
            Err(AuthError::InvalidConfig(_))
        ));
    }
}
