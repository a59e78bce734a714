//! Rate limits kept in PostgreSQL, so they hold across every app instance.
//!
//! A fixed-window counter per `(tenant, key)`: one atomic upsert per hit. Keys are namespaced
//! strings such as `link:email:<hash>` or `link:ip:<hash>`: email and client addresses are
//! hashed before they are stored, so the table holds no addresses.

use std::time::Duration;

use rls_guard::TenantPool;
use tenant_scope::{TenantContext, TenantId};
use time::OffsetDateTime;

use crate::AuthError;

/// A limit: at most `max` hits per `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// Hits allowed per window.
    pub max: u32,
    /// The window.
    pub window: Duration,
}

/// The verdict on one hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hit {
    /// Within the limit.
    Allowed,
    /// Over the limit until `retry_at`.
    Limited {
        /// When the window ends.
        retry_at: OffsetDateTime,
    },
}

/// Counts hits in `auth.rate_limits`.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    pool: TenantPool,
}

impl RateLimiter {
    /// A limiter on the runtime role's tenant pool.
    #[must_use]
    pub const fn new(pool: TenantPool) -> Self {
        Self { pool }
    }

    /// Records a hit on `key` in `tenant` and says whether it is within `limit`. A limiter that
    /// cannot be evaluated is an error (the caller refuses the request), never "allowed".
    ///
    /// # Errors
    /// [`AuthError::InvalidConfig`] for a zero or huge window; database errors.
    pub async fn hit(&self, tenant: TenantId, key: &str, limit: Limit) -> Result<Hit, AuthError> {
        let window_secs = i64::try_from(limit.window.as_secs())
            .ok()
            .filter(|w| *w > 0)
            .ok_or(AuthError::InvalidConfig("rate-limit window"))?;
        let context = TenantContext::for_job(tenant, None, "magic-auth rate limit")
            .map_err(|_| AuthError::InvalidConfig("tenant"))?;
        let mut tx = self.pool.begin(&context).await?;
        // The window a hit falls in starts at a multiple of the window length.
        let (count, window_start): (i32, OffsetDateTime) = sqlx::query_as(
            "INSERT INTO auth.rate_limits AS r (tenant_id, key, window_start, hits) \
             VALUES ($1, $2, to_timestamp(floor(extract(epoch FROM now()) / $3) * $3), 1) \
             ON CONFLICT (tenant_id, key) DO UPDATE SET \
               hits = CASE WHEN r.window_start = EXCLUDED.window_start THEN r.hits + 1 ELSE 1 END, \
               window_start = EXCLUDED.window_start \
             RETURNING hits, window_start",
        )
        .bind(tenant.as_uuid())
        .bind(key)
        .bind(window_secs)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        let within = u32::try_from(count).is_ok_and(|c| c <= limit.max);
        Ok(if within {
            Hit::Allowed
        } else {
            Hit::Limited {
                retry_at: window_start + time::Duration::seconds(window_secs),
            }
        })
    }
}
