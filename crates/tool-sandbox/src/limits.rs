//! Concurrency and rate limits per agent and per tenant, so one tenant's flood cannot starve
//! another: every tenant (and every agent) has its own permits and its own token bucket, and
//! nothing is shared between tenants.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tenant_scope::{ActorId, TenantId};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The limits on tool calls that run.
///
/// Built from [`CallLimits::default`] with the `with_*` methods.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct CallLimits {
    /// Calls of one agent running at once (default 4).
    pub per_agent_concurrency: usize,
    /// Calls of one tenant running at once (default 8).
    pub per_tenant_concurrency: usize,
    /// Calls one agent may start per second, sustained (default 10), with bursts of
    /// `per_agent_burst` (default 20).
    pub per_agent_rate: f64,
    /// Burst size for the agent bucket.
    pub per_agent_burst: f64,
    /// Calls one tenant may start per second, sustained (default 50), with bursts of
    /// `per_tenant_burst` (default 100).
    pub per_tenant_rate: f64,
    /// Burst size for the tenant bucket.
    pub per_tenant_burst: f64,
    /// How long a call waits for a free slot before it is refused (default 5 s).
    pub queue_wait: Duration,
}

impl Default for CallLimits {
    fn default() -> Self {
        Self {
            per_agent_concurrency: 4,
            per_tenant_concurrency: 8,
            per_agent_rate: 10.0,
            per_agent_burst: 20.0,
            per_tenant_rate: 50.0,
            per_tenant_burst: 100.0,
            queue_wait: Duration::from_secs(5),
        }
    }
}

impl CallLimits {
    /// Sets [`CallLimits::per_agent_concurrency`].
    #[must_use]
    pub const fn with_per_agent_concurrency(mut self, calls: usize) -> Self {
        self.per_agent_concurrency = calls;
        self
    }

    /// Sets [`CallLimits::per_tenant_concurrency`].
    #[must_use]
    pub const fn with_per_tenant_concurrency(mut self, calls: usize) -> Self {
        self.per_tenant_concurrency = calls;
        self
    }

    /// Sets [`CallLimits::per_agent_rate`].
    #[must_use]
    pub const fn with_per_agent_rate(mut self, per_second: f64) -> Self {
        self.per_agent_rate = per_second;
        self
    }

    /// Sets [`CallLimits::per_agent_burst`].
    #[must_use]
    pub const fn with_per_agent_burst(mut self, burst: f64) -> Self {
        self.per_agent_burst = burst;
        self
    }

    /// Sets [`CallLimits::per_tenant_rate`].
    #[must_use]
    pub const fn with_per_tenant_rate(mut self, per_second: f64) -> Self {
        self.per_tenant_rate = per_second;
        self
    }

    /// Sets [`CallLimits::per_tenant_burst`].
    #[must_use]
    pub const fn with_per_tenant_burst(mut self, burst: f64) -> Self {
        self.per_tenant_burst = burst;
        self
    }

    /// Sets [`CallLimits::queue_wait`].
    #[must_use]
    pub const fn with_queue_wait(mut self, wait: Duration) -> Self {
        self.queue_wait = wait;
        self
    }
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// The tokens at `now`, refilled at `rate` up to `burst`.
    fn level(&self, rate: f64, burst: f64, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        (self.tokens + elapsed * rate).min(burst)
    }
}

/// The fewest entries a map holds before it is swept for idle keys.
const SWEEP_FLOOR: usize = 1024;

/// One map of per-key state that forgets idle keys. A key is idle when forgetting it changes
/// nothing: its bucket has refilled to the burst (a new key starts full) or its semaphore is
/// neither held nor awaited (a new one starts with every permit). Sweeps run when the map has
/// doubled since the last one, so they cost O(1) per call amortised and the map holds at most
/// twice the keys in use (and never fewer than [`SWEEP_FLOOR`] before a sweep).
struct Swept<K, V> {
    map: HashMap<K, V>,
    next_sweep: usize,
}

impl<K: Hash + Eq, V> Swept<K, V> {
    fn new() -> Self {
        Self {
            map: HashMap::new(),
            next_sweep: SWEEP_FLOOR,
        }
    }

    /// Makes room before an insertion: when the map has reached its sweep mark, drops every
    /// entry `idle` says may go and sets the next mark.
    fn sweep_if_due(&mut self, idle: impl FnMut(&V) -> bool) {
        let mut idle = idle;
        if self.map.len() >= self.next_sweep {
            self.map.retain(|_, v| !idle(v));
            self.next_sweep = (self.map.len() * 2).max(SWEEP_FLOOR);
        }
    }
}

struct Keyed<K> {
    semaphores: Mutex<Swept<K, Arc<Semaphore>>>,
    buckets: Mutex<Swept<K, Bucket>>,
}

impl<K: Hash + Eq + Copy> Keyed<K> {
    fn new() -> Self {
        Self {
            semaphores: Mutex::new(Swept::new()),
            buckets: Mutex::new(Swept::new()),
        }
    }

    fn semaphore(&self, key: K, permits: usize) -> Option<Arc<Semaphore>> {
        let permits = permits.max(1);
        let mut swept = self.semaphores.lock().ok()?;
        if !swept.map.contains_key(&key) {
            // Only this map holds an idle semaphore, with all its permits.
            swept.sweep_if_due(|sem| {
                Arc::strong_count(sem) == 1 && sem.available_permits() == permits
            });
        }
        Some(
            swept
                .map
                .entry(key)
                .or_insert_with(|| Arc::new(Semaphore::new(permits)))
                .clone(),
        )
    }

    /// Takes a token; `None` when the lock is poisoned (the caller refuses).
    fn take(&self, key: K, rate: f64, burst: f64, now: Instant) -> Option<bool> {
        let mut swept = self.buckets.lock().ok()?;
        if !swept.map.contains_key(&key) {
            swept.sweep_if_due(|bucket| bucket.level(rate, burst, now) >= burst);
        }
        let bucket = swept.map.entry(key).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        bucket.tokens = bucket.level(rate, burst, now);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Some(true)
        } else {
            Some(false)
        }
    }

    /// Gives back a token taken for a call that was then refused.
    fn refund(&self, key: K, burst: f64) {
        if let Ok(mut swept) = self.buckets.lock()
            && let Some(bucket) = swept.map.get_mut(&key)
        {
            bucket.tokens = (bucket.tokens + 1.0).min(burst);
        }
    }

    /// How many keys the maps hold (buckets, semaphores).
    #[cfg(test)]
    fn tracked(&self) -> (usize, usize) {
        let buckets = self.buckets.lock().map_or(0, |s| s.map.len());
        let semaphores = self.semaphores.lock().map_or(0, |s| s.map.len());
        (buckets, semaphores)
    }
}

/// The limiter state of one gate.
pub(crate) struct Limiter {
    limits: CallLimits,
    agents: Keyed<ActorId>,
    tenants: Keyed<TenantId>,
}

/// The permits a running call holds; dropping it frees the slots.
#[derive(Debug)]
pub(crate) struct Slot {
    _tenant: OwnedSemaphorePermit,
    _agent: OwnedSemaphorePermit,
}

impl Limiter {
    pub(crate) fn new(limits: CallLimits) -> Self {
        Self {
            limits,
            agents: Keyed::new(),
            tenants: Keyed::new(),
        }
    }

    /// The agent's own limits first, then the tenant's: an agent over its own limit never
    /// spends its tenant's tokens, and a call refused at any step gets back the tokens it took,
    /// so a refused call consumes no quota. Waits for slots at most `queue_wait`. Refusals
    /// name the limit.
    pub(crate) async fn acquire(
        &self,
        tenant: TenantId,
        agent: ActorId,
    ) -> Result<Slot, &'static str> {
        let l = &self.limits;
        let now = Instant::now();
        match self
            .agents
            .take(agent, l.per_agent_rate, l.per_agent_burst, now)
        {
            Some(true) => {}
            Some(false) => return Err("agent_rate"),
            None => return Err("limiter_failed"),
        }
        let refund_agent = || self.agents.refund(agent, l.per_agent_burst);
        match self
            .tenants
            .take(tenant, l.per_tenant_rate, l.per_tenant_burst, now)
        {
            Some(true) => {}
            Some(false) => {
                refund_agent();
                return Err("tenant_rate");
            }
            None => {
                refund_agent();
                return Err("limiter_failed");
            }
        }
        let refund = |why: &'static str| {
            refund_agent();
            self.tenants.refund(tenant, l.per_tenant_burst);
            why
        };
        let agent_sem = self
            .agents
            .semaphore(agent, l.per_agent_concurrency)
            .ok_or_else(|| refund("limiter_failed"))?;
        let tenant_sem = self
            .tenants
            .semaphore(tenant, l.per_tenant_concurrency)
            .ok_or_else(|| refund("limiter_failed"))?;
        let wait = async {
            // Agent first: an agent over its own cap must not hold one of the tenant's slots.
            let agent = agent_sem.acquire_owned().await.ok()?;
            let tenant = tenant_sem.acquire_owned().await.ok()?;
            Some(Slot {
                _tenant: tenant,
                _agent: agent,
            })
        };
        match tokio::time::timeout(l.queue_wait, wait).await {
            Ok(Some(slot)) => Ok(slot),
            Ok(None) => Err(refund("limiter_failed")),
            Err(_) => Err(refund("queue_timeout")),
        }
    }

    /// How many keys the limiter remembers, over agents and tenants (buckets, semaphores).
    #[cfg(test)]
    fn tracked(&self) -> (usize, usize) {
        let (ab, asem) = self.agents.tracked();
        let (tb, tsem) = self.tenants.tracked();
        (ab + tb, asem + tsem)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_flooding_tenant_does_not_take_another_tenants_slots() {
        let limiter = Limiter::new(CallLimits {
            per_tenant_concurrency: 2,
            per_agent_concurrency: 2,
            queue_wait: Duration::from_millis(50),
            ..CallLimits::default()
        });
        let (a, b) = (TenantId::new_random(), TenantId::new_random());
        let agent_a = ActorId::new_random();
        let held: Vec<Slot> = vec![
            limiter.acquire(a, agent_a).await.unwrap(),
            limiter.acquire(a, agent_a).await.unwrap(),
        ];
        assert_eq!(
            limiter.acquire(a, agent_a).await.unwrap_err(),
            "queue_timeout"
        );
        assert!(limiter.acquire(b, ActorId::new_random()).await.is_ok());
        drop(held);
        assert!(limiter.acquire(a, agent_a).await.is_ok());
    }

    #[tokio::test]
    async fn an_agent_over_its_own_limit_spends_none_of_its_tenants_tokens() {
        let limiter = Limiter::new(CallLimits {
            per_agent_rate: 0.001,
            per_agent_burst: 3.0,
            per_tenant_rate: 0.001,
            per_tenant_burst: 5.0,
            ..CallLimits::default()
        });
        let t = TenantId::new_random();
        let (noisy, quiet) = (ActorId::new_random(), ActorId::new_random());
        for _ in 0..3 {
            drop(limiter.acquire(t, noisy).await.unwrap());
        }
        for _ in 0..50 {
            assert_eq!(limiter.acquire(t, noisy).await.unwrap_err(), "agent_rate");
        }
        // The tenant has 2 of its 5 tokens left, all for the quiet agent (which has 3).
        for _ in 0..2 {
            drop(limiter.acquire(t, quiet).await.unwrap());
        }
        assert_eq!(limiter.acquire(t, quiet).await.unwrap_err(), "tenant_rate");
    }

    #[tokio::test]
    async fn a_call_refused_by_the_tenant_limit_gives_the_agent_its_token_back() {
        let limiter = Limiter::new(CallLimits {
            per_agent_rate: 0.001,
            per_agent_burst: 1.0,
            per_tenant_rate: 0.001,
            per_tenant_burst: 1.0,
            ..CallLimits::default()
        });
        let (t, other) = (TenantId::new_random(), TenantId::new_random());
        let (a, b) = (ActorId::new_random(), ActorId::new_random());
        drop(limiter.acquire(t, b).await.unwrap());
        // The tenant is exhausted: agent `a` is refused there and keeps its only token...
        assert_eq!(limiter.acquire(t, a).await.unwrap_err(), "tenant_rate");
        // ...which it can still spend where the tenant has tokens (agents are keyed by id).
        assert!(limiter.acquire(other, a).await.is_ok());
    }

    #[tokio::test]
    async fn a_call_refused_by_the_queue_timeout_gives_back_both_tokens() {
        let limiter = Limiter::new(CallLimits {
            per_agent_concurrency: 1,
            per_agent_rate: 0.001,
            per_agent_burst: 2.0,
            per_tenant_rate: 0.001,
            per_tenant_burst: 2.0,
            queue_wait: Duration::from_millis(20),
            ..CallLimits::default()
        });
        let t = TenantId::new_random();
        let a = ActorId::new_random();
        let held = limiter.acquire(t, a).await.unwrap();
        for _ in 0..5 {
            assert_eq!(limiter.acquire(t, a).await.unwrap_err(), "queue_timeout");
        }
        drop(held);
        // One token each remains: the five timed-out calls took none.
        assert!(limiter.acquire(t, a).await.is_ok());
        assert_eq!(limiter.acquire(t, a).await.unwrap_err(), "agent_rate");
    }

    #[tokio::test]
    async fn idle_keys_are_forgotten_so_many_distinct_keys_do_not_grow_the_state() {
        // Buckets refill within a microsecond, so every key is idle once its call ends.
        let limiter = Limiter::new(CallLimits {
            per_agent_rate: 1e9,
            per_agent_burst: 1.0,
            per_tenant_rate: 1e9,
            per_tenant_burst: 1.0,
            ..CallLimits::default()
        });
        for _ in 0..20_000 {
            let slot = limiter
                .acquire(TenantId::new_random(), ActorId::new_random())
                .await
                .unwrap();
            drop(slot);
        }
        let (buckets, semaphores) = limiter.tracked();
        // Two maps per kind, each swept at twice its live size and never below the floor.
        assert!(buckets <= 2 * 2 * SWEEP_FLOOR, "{buckets} buckets kept");
        assert!(
            semaphores <= 2 * 2 * SWEEP_FLOOR,
            "{semaphores} semaphores kept"
        );

        // A key in use is never forgotten: a held slot still counts after a sweep.
        let limiter = Limiter::new(CallLimits {
            per_agent_concurrency: 1,
            queue_wait: Duration::from_millis(20),
            ..CallLimits::default()
        });
        let (t, busy) = (TenantId::new_random(), ActorId::new_random());
        let held = limiter.acquire(t, busy).await.unwrap();
        for _ in 0..3 * SWEEP_FLOOR {
            drop(
                limiter
                    .acquire(TenantId::new_random(), ActorId::new_random())
                    .await
                    .unwrap(),
            );
        }
        assert_eq!(limiter.acquire(t, busy).await.unwrap_err(), "queue_timeout");
        drop(held);
        assert!(limiter.acquire(t, busy).await.is_ok());
    }

    #[tokio::test]
    async fn the_rate_bucket_refuses_past_its_burst() {
        let limiter = Limiter::new(CallLimits {
            per_agent_rate: 0.001,
            per_agent_burst: 3.0,
            ..CallLimits::default()
        });
        let t = TenantId::new_random();
        let agent = ActorId::new_random();
        for _ in 0..3 {
            drop(limiter.acquire(t, agent).await.unwrap());
        }
        assert_eq!(limiter.acquire(t, agent).await.unwrap_err(), "agent_rate");
        assert!(limiter.acquire(t, ActorId::new_random()).await.is_ok());
    }
}
