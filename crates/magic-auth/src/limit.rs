//! Rate limits kept in PostgreSQL, so they hold across every app instance.
//!
//! A fixed-window counter per `(tenant, key)`: one atomic upsert per hit. Keys are namespaced
//! strings such as `link:email:<hash>` or `link:ip:<hash>`: email and client addresses are
//! hashed before they are stored, so the table holds no addresses.
//!
//! Client addresses are counted by [`client_key`]: canonicalised first (an IPv4-mapped IPv6
//! address, `::ffff:192.0.2.1`, is its IPv4 address), an IPv4 client by its address and an IPv6
//! client by its prefix (default /64, [`DEFAULT_IPV6_PREFIX`]): one subscriber usually holds a
//! whole /64, so counting single IPv6 addresses would let it rotate through 2^64 of them.

use std::net::IpAddr;
use std::time::Duration;

use rls_guard::TenantPool;
use tenant_scope::{TenantContext, TenantId};
use time::OffsetDateTime;

use crate::AuthError;

/// A limit: at most `max` hits per `window` ([`Limit::new`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limit {
    /// Hits allowed per window.
    pub max: u32,
    /// The window.
    pub window: Duration,
}

/// The longest window accepted for a [`Limit`] (7 days).
pub const MAX_WINDOW: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// The highest [`Limit::max`] accepted (what the hit counter can hold).
pub const MAX_HITS: u32 = i32::MAX as u32;

impl Limit {
    /// At most `max` hits per `window` (checked by [`Limit::validate`] when a service is built).
    #[must_use]
    pub const fn new(max: u32, window: Duration) -> Self {
        Self { max, window }
    }

    /// Checks that the limit is usable: `max` between 1 and [`MAX_HITS`], `window` between one
    /// second and [`MAX_WINDOW`].
    ///
    /// # Errors
    /// [`AuthError::InvalidConfig`] otherwise.
    pub fn validate(&self) -> Result<(), AuthError> {
        if self.max == 0 || self.max > MAX_HITS {
            return Err(AuthError::InvalidConfig(
                "rate-limit max must be between 1 and 2^31 - 1",
            ));
        }
        if self.window.as_secs() == 0 || self.window > MAX_WINDOW {
            return Err(AuthError::InvalidConfig(
                "rate-limit window must be between one second and 7 days",
            ));
        }
        Ok(())
    }
}

/// The IPv6 prefix length per-client limits count by default: /64.
pub const DEFAULT_IPV6_PREFIX: u8 = 64;

/// The shortest IPv6 prefix accepted for per-client limits (/32; shorter ones would put
/// unrelated networks in one bucket).
pub const MIN_IPV6_PREFIX: u8 = 32;

/// The bucket a per-client limit counts `ip` in: the address canonicalised (an IPv4-mapped
/// IPv6 address becomes its IPv4 address), an IPv4 address as itself (`v4:192.0.2.1`), an IPv6
/// address by its first `ipv6_prefix` bits (`v6:2001:db8::/64`). A prefix over 128 counts as
/// 128.
#[must_use]
pub fn client_key(ip: IpAddr, ipv6_prefix: u8) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => format!("v4:{v4}"),
        IpAddr::V6(v6) => {
            let prefix = ipv6_prefix.min(128);
            let mask = u128::MAX.checked_shl(u32::from(128 - prefix)).unwrap_or(0);
            let network = std::net::Ipv6Addr::from(u128::from(v6) & mask);
            format!("v6:{network}/{prefix}")
        }
    }
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
    /// [`AuthError::InvalidConfig`] for a limit that does not pass [`Limit::validate`];
    /// database errors.
    pub async fn hit(&self, tenant: TenantId, key: &str, limit: Limit) -> Result<Hit, AuthError> {
        limit.validate()?;
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
                // Only informs the client; a date past the calendar's end reads as its end.
                retry_at: window_start
                    .checked_add(time::Duration::seconds(window_secs))
                    .unwrap_or(window_start),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv6_clients_are_keyed_by_prefix_and_mapped_ipv4_by_its_ipv4() {
        assert_eq!(client_key(ip("192.0.2.7"), 64), "v4:192.0.2.7");
        assert_eq!(client_key(ip("::ffff:192.0.2.7"), 64), "v4:192.0.2.7");
        assert_eq!(client_key(ip("::ffff:c000:0207"), 48), "v4:192.0.2.7");
        let a = client_key(ip("2001:db8:1:2:aaaa::1"), 64);
        assert_eq!(a, "v6:2001:db8:1:2::/64");
        assert_eq!(client_key(ip("2001:db8:1:2:ffff:ffff:ffff:ffff"), 64), a);
        assert_ne!(client_key(ip("2001:db8:1:3::1"), 64), a);
        assert_eq!(client_key(ip("2001:db8:1:3::1"), 48), "v6:2001:db8:1::/48");
        assert_eq!(client_key(ip("2001:db8::1"), 128), "v6:2001:db8::1/128");
        assert_eq!(client_key(ip("2001:db8::1"), 200), "v6:2001:db8::1/128");
        assert_eq!(client_key(ip("2001:db8::1"), 0), "v6:::/0");
    }

    #[test]
    fn unusable_limits_are_refused() {
        let ok = Limit {
            max: 5,
            window: Duration::from_secs(900),
        };
        assert!(ok.validate().is_ok());
        for bad in [
            Limit { max: 0, ..ok },
            Limit {
                max: u32::MAX,
                ..ok
            },
            Limit {
                window: Duration::ZERO,
                ..ok
            },
            Limit {
                window: Duration::from_millis(999),
                ..ok
            },
            Limit {
                window: Duration::MAX,
                ..ok
            },
            Limit {
                window: MAX_WINDOW + Duration::from_secs(1),
                ..ok
            },
        ] {
            assert!(
                matches!(bad.validate(), Err(AuthError::InvalidConfig(_))),
                "{bad:?}"
            );
        }
    }
}
