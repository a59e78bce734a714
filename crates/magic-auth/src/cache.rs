//! A per-instance cache of validated sessions, invalidated across instances through PostgreSQL
//! `LISTEN`/`NOTIFY` (see [`SessionStore::with_cache`](crate::SessionStore::with_cache)).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{AuthError, Session, SessionToken};

/// The channel every change to a session row is announced on (by the trigger that
/// [`schema_sql`](crate::schema::schema_sql) installs on `auth.sessions`).
pub(crate) const CHANNEL: &str = "magic_auth_sessions";

/// The longest [`SessionCacheConfig::max_age`] accepted.
pub const MAX_CACHE_AGE: Duration = Duration::from_secs(60);

/// How long to wait before connecting the listener again after a failure.
const RECONNECT_DELAY: Duration = Duration::from_millis(250);

/// How long the listener waits for its own probe notice before it gives up on the connection.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Settings of the session cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionCacheConfig {
    /// How long a validated session may be answered from memory, even without a notice:
    /// default 5 seconds, at most [`MAX_CACHE_AGE`].
    pub max_age: Duration,
    /// How many sessions are held at most (beyond it, lookups go to the database).
    pub capacity: usize,
}

impl Default for SessionCacheConfig {
    fn default() -> Self {
        Self {
            max_age: Duration::from_secs(5),
            capacity: 100_000,
        }
    }
}

impl SessionCacheConfig {
    /// Checks the settings.
    ///
    /// # Errors
    /// [`AuthError::InvalidConfig`] for a zero or over-long `max_age` or a zero `capacity`.
    pub fn validate(&self) -> Result<(), AuthError> {
        if self.max_age.is_zero() || self.max_age > MAX_CACHE_AGE {
            return Err(AuthError::InvalidConfig(
                "the session cache's max_age must be between 1 ns and 60 s",
            ));
        }
        if self.capacity == 0 {
            return Err(AuthError::InvalidConfig(
                "the session cache's capacity must not be zero",
            ));
        }
        Ok(())
    }
}

/// The key a session's entry and its notices share: a hash of its id, so that what the
/// channel carries (which any role that can connect may `LISTEN` to) names no session.
pub(crate) fn notice_key(id: Uuid) -> String {
    let mut h = Sha256::new();
    h.update(format!("magic-auth/session-change/v1:{id}").as_bytes());
    hex::encode(h.finalize())
}

struct Entry {
    id: Uuid,
    secret_hash: Vec<u8>,
    session: Session,
    at: Instant,
}

struct Inner {
    entries: Mutex<HashMap<String, Entry>>,
    /// Whether the listener is connected and listening: entries are served and made only then.
    listening: AtomicBool,
    /// Moved by every notice and every flush: a lookup that began before one is not cached.
    generation: AtomicU64,
    config: SessionCacheConfig,
    listener: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = self
            .listener
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            task.abort();
        }
    }
}

impl Inner {
    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stops serving and forgets everything (the listener is not, or not yet, listening).
    fn stop(&self) {
        self.listening.store(false, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.entries().clear();
    }

    /// Forgets everything and serves again (the listener is listening).
    fn start(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.entries().clear();
        self.listening.store(true, Ordering::SeqCst);
    }

    fn forget(&self, key: &str) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.entries().remove(key);
    }
}

/// The cache of one [`SessionStore`](crate::SessionStore) (shared by its clones).
#[derive(Clone)]
pub(crate) struct SessionCache {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SessionCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionCache")
            .field("config", &self.inner.config)
            .field("listening", &self.listening())
            .finish_non_exhaustive()
    }
}

impl SessionCache {
    /// A cache whose listener connects with `pool`'s options (a connection of its own, held
    /// for as long as the cache lives).
    pub(crate) fn start(pool: PgPool, config: SessionCacheConfig) -> Result<Self, AuthError> {
        config.validate()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            AuthError::InvalidConfig("the session cache must be started inside a tokio runtime")
        })?;
        let inner = Arc::new(Inner {
            entries: Mutex::new(HashMap::new()),
            listening: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            config,
            listener: Mutex::new(None),
        });
        let task = runtime.spawn(listen(pool, Arc::downgrade(&inner)));
        *inner
            .listener
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(task);
        Ok(Self { inner })
    }

    pub(crate) fn listening(&self) -> bool {
        self.inner.listening.load(Ordering::SeqCst)
    }

    /// Drops the entry of session `id`, if held, before it is looked up again: nothing
    /// changed, so lookups already under way (of this session or any other) may still be held.
    /// Were every refresh to count as a change, concurrent refreshes would keep each other from
    /// being held, and under enough concurrency none would be: every request would go to the
    /// database.
    pub(crate) fn refresh(&self, id: Uuid) {
        self.inner.entries().remove(&notice_key(id));
    }

    /// The generation to hand back to [`insert`](Self::insert) after a database lookup.
    pub(crate) fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::SeqCst)
    }

    /// The session `token` names, if it is held, younger than the maximum age, its secret
    /// matches and it has not expired; `None` sends the caller to the database.
    pub(crate) fn get(&self, token: &SessionToken) -> Option<Session> {
        if !self.listening() {
            return None;
        }
        let key = notice_key(token.id());
        let entries = self.inner.entries();
        let entry = entries.get(&key)?;
        let now = OffsetDateTime::now_utc();
        let usable = entry.id == token.id()
            && entry.session.tenant == token.tenant()
            && entry.at.elapsed() < self.inner.config.max_age
            && entry.session.idle_expires_at > now
            && entry.session.absolute_expires_at > now;
        // Compared even when unusable, so a hit and a miss take the same work.
        let secret_ok = token.matches(&entry.secret_hash);
        (usable && secret_ok && self.listening()).then(|| entry.session.clone())
    }

    /// Holds `session` (just validated by the database, with `secret_hash` its stored hash),
    /// unless a notice or flush came since `generation` was read, the listener is not
    /// listening, or the cache is full of live entries. Staff sessions are never held: staff
    /// routes always ask the database.
    pub(crate) fn insert(&self, generation: u64, session: &Session, secret_hash: Vec<u8>) {
        if session.kind != tenant_scope::ActorKind::User || !self.listening() {
            return;
        }
        let max_age = self.inner.config.max_age;
        let mut entries = self.inner.entries();
        // Checked under the lock that every notice also takes to remove its entry.
        if self.inner.generation.load(Ordering::SeqCst) != generation || !self.listening() {
            return;
        }
        if entries.len() >= self.inner.config.capacity {
            entries.retain(|_, e| e.at.elapsed() < max_age);
            if entries.len() >= self.inner.config.capacity {
                return;
            }
        }
        entries.insert(
            notice_key(session.id),
            Entry {
                id: session.id,
                secret_hash,
                session: session.clone(),
                at: Instant::now(),
            },
        );
    }
}

/// The listener: connects, `LISTEN`s, then forgets the entry of every session a notice names.
/// Whenever it is not listening (before the first connection, after losing one, while
/// reconnecting) the cache serves nothing and is emptied, so nothing a missed notice would
/// have removed survives.
async fn listen(pool: PgPool, inner: Weak<Inner>) {
    loop {
        let Some(cache) = inner.upgrade() else {
            return;
        };
        cache.stop();
        drop(cache);
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(listener) => listener,
            Err(error) => {
                tracing::warn!(%error, "session cache listener cannot connect; serving from the database");
                tokio::time::sleep(RECONNECT_DELAY).await;
                continue;
            }
        };
        // Reconnecting silently would lose notices sent in between: the loop does it instead.
        listener.eager_reconnect(false);
        if let Err(error) = listener.listen(CHANNEL).await {
            tracing::warn!(%error, "session cache listener cannot LISTEN; serving from the database");
            tokio::time::sleep(RECONNECT_DELAY).await;
            continue;
        }
        // Serve only once a notice sent from another connection has arrived: a LISTEN that
        // hears nothing (made through a transaction-pooling PgBouncer, say) would otherwise
        // serve revoked sessions until the maximum age.
        if !hears_probe(&pool, &mut listener).await {
            tracing::warn!(
                "session cache listener does not receive notices; serving from the database"
            );
            tokio::time::sleep(RECONNECT_DELAY).await;
            continue;
        }
        match inner.upgrade() {
            Some(cache) => cache.start(),
            None => return,
        }
        loop {
            match listener.try_recv().await {
                Ok(Some(notice)) => match inner.upgrade() {
                    Some(cache) => cache.forget(notice.payload()),
                    None => return,
                },
                // The connection was lost (`None`) or failed: stop serving, then reconnect.
                Ok(None) | Err(_) => {
                    tracing::warn!("session cache listener lost its connection; reconnecting");
                    break;
                }
            }
        }
    }
}

/// Sends a notice of a random payload on the channel from another connection of `pool` and
/// waits up to [`PROBE_TIMEOUT`] for `listener` to receive it. (Notices received meanwhile need
/// no handling: the cache is not serving, and starting empties it.)
async fn hears_probe(pool: &PgPool, listener: &mut PgListener) -> bool {
    let probe = format!("magic-auth/listener-probe/{}", Uuid::new_v4());
    let sent = sqlx::query("SELECT pg_catalog.pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(&probe)
        .execute(pool)
        .await;
    if sent.is_err() {
        return false;
    }
    let heard = async {
        loop {
            match listener.try_recv().await {
                Ok(Some(notice)) if notice.payload() == probe => return true,
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return false,
            }
        }
    };
    tokio::time::timeout(PROBE_TIMEOUT, heard)
        .await
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_notice_key_is_the_hash_the_trigger_sends() {
        // The trigger: encode(sha256(convert_to('magic-auth/session-change/v1:' || id, 'UTF8')), 'hex').
        let id = Uuid::parse_str("00000000-0000-4000-8000-000000000001").unwrap_or_default();
        let key = notice_key(id);
        assert_eq!(key.len(), 64);
        assert!(!key.contains(&id.to_string()));
        let mut h = Sha256::new();
        h.update(b"magic-auth/session-change/v1:00000000-0000-4000-8000-000000000001");
        assert_eq!(key, hex::encode(h.finalize()));
    }

    #[test]
    fn the_settings_are_bounded() {
        assert!(SessionCacheConfig::default().validate().is_ok());
        for bad in [
            SessionCacheConfig {
                max_age: Duration::ZERO,
                ..SessionCacheConfig::default()
            },
            SessionCacheConfig {
                max_age: MAX_CACHE_AGE + Duration::from_nanos(1),
                ..SessionCacheConfig::default()
            },
            SessionCacheConfig {
                capacity: 0,
                ..SessionCacheConfig::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
