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
#[derive(Debug, Clone, Copy, PartialEq)]
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

struct Bucket {
    tokens: f64,
    at: Instant,
}

struct Keyed<K> {
    semaphores: Mutex<HashMap<K, Arc<Semaphore>>>,
    buckets: Mutex<HashMap<K, Bucket>>,
}

impl<K: Hash + Eq + Copy> Keyed<K> {
    fn new() -> Self {
        Self {
            semaphores: Mutex::new(HashMap::new()),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn semaphore(&self, key: K, permits: usize) -> Option<Arc<Semaphore>> {
        let mut map = self.semaphores.lock().ok()?;
        Some(
            map.entry(key)
                .or_insert_with(|| Arc::new(Semaphore::new(permits.max(1))))
                .clone(),
        )
    }

    /// Takes a token; `None` when the lock is poisoned (the caller refuses).
    fn take(&self, key: K, rate: f64, burst: f64, now: Instant) -> Option<bool> {
        let mut map = self.buckets.lock().ok()?;
        let bucket = map.entry(key).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Some(true)
        } else {
            Some(false)
        }
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

    /// Rate check, then a slot (waiting at most `queue_wait`). Refusals name the limit.
    pub(crate) async fn acquire(
        &self,
        tenant: TenantId,
        agent: ActorId,
    ) -> Result<Slot, &'static str> {
        let l = &self.limits;
        let now = Instant::now();
        match self
            .tenants
            .take(tenant, l.per_tenant_rate, l.per_tenant_burst, now)
        {
            Some(true) => {}
            Some(false) => return Err("tenant_rate"),
            None => return Err("limiter_failed"),
        }
        match self
            .agents
            .take(agent, l.per_agent_rate, l.per_agent_burst, now)
        {
            Some(true) => {}
            Some(false) => return Err("agent_rate"),
            None => return Err("limiter_failed"),
        }
        let tenant_sem = self
            .tenants
            .semaphore(tenant, l.per_tenant_concurrency)
            .ok_or("limiter_failed")?;
        let agent_sem = self
            .agents
            .semaphore(agent, l.per_agent_concurrency)
            .ok_or("limiter_failed")?;
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
            Ok(None) => Err("limiter_failed"),
            Err(_) => Err("queue_timeout"),
        }
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
