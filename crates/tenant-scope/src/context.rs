//! The resolved tenant for a unit of work.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use crate::cross_tenant::Grant;
use crate::error::CrossTenantRefusal;
use crate::{Actor, TenantError, TenantId};

/// Where a [`TenantContext`] came from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Origin {
    /// Resolved from an incoming request by [`TenantLayer`](crate::TenantLayer).
    Request,
    /// Created for background work by name.
    Job {
        /// The job's name, for logs and audit.
        name: Arc<str>,
    },
    /// Granted to a staff member for another tenant through
    /// [`CrossTenantAuthority`](crate::CrossTenantAuthority).
    CrossTenant {
        /// The reason the staff member gave.
        reason: Arc<str>,
    },
}

/// The tenant a unit of work acts for, and who is acting.
///
/// There is no default: a context exists only once a tenant has been resolved (a request through
/// [`TenantLayer`](crate::TenantLayer)), named for a job ([`TenantContext::for_job`]), derived
/// from a signed-in actor ([`TenantContext::for_actor`]) or granted across tenants
/// ([`CrossTenantAuthority`](crate::CrossTenantAuthority)).
///
/// A context granted across tenants expires ([`TenantContext::expires_at`]), and data-access
/// code calls [`TenantContext::authorize_use`] before each use of any context. Clones of a
/// granted context share its grant: they expire together and each of their uses is recorded.
#[derive(Clone)]
pub struct TenantContext {
    tenant: TenantId,
    actor: Option<Actor>,
    origin: Origin,
    grant: Option<Arc<Grant>>,
}

/// Shows the tenant, actor, origin (with a cross-tenant reason) and expiry; never the audit hook.
impl fmt::Debug for TenantContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("TenantContext");
        debug
            .field("tenant", &self.tenant)
            .field("actor", &self.actor)
            .field("origin", &self.origin);
        if let Some(grant) = &self.grant {
            debug.field("expires_at", &grant.expires_at());
        }
        debug.finish()
    }
}

/// Two contexts are equal when they name the same tenant, actor and origin and, when granted
/// across tenants, share the same grant (a clone is equal, a second grant for the same reason is
/// not).
impl PartialEq for TenantContext {
    fn eq(&self, other: &Self) -> bool {
        self.tenant == other.tenant
            && self.actor == other.actor
            && self.origin == other.origin
            && match (&self.grant, &other.grant) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            }
    }
}

impl Eq for TenantContext {}

impl TenantContext {
    pub(crate) const fn new(tenant: TenantId, actor: Option<Actor>, origin: Origin) -> Self {
        Self {
            tenant,
            actor,
            origin,
            grant: None,
        }
    }

    /// A context granted to `staff` in `tenant` by the cross-tenant authority.
    pub(crate) fn granted(tenant: TenantId, staff: Actor, reason: Arc<str>, grant: Grant) -> Self {
        Self {
            tenant,
            actor: Some(staff),
            origin: Origin::CrossTenant { reason },
            grant: Some(Arc::new(grant)),
        }
    }

    /// The context of an actor working in their own tenant.
    #[must_use]
    pub fn for_actor(actor: Actor) -> Self {
        Self::new(actor.tenant(), Some(actor), Origin::Request)
    }

    /// The context of a background job that works for `tenant`, optionally on behalf of an actor
    /// of that tenant.
    ///
    /// # Errors
    /// [`TenantError::Conflict`] when the actor belongs to another tenant.
    pub fn for_job(
        tenant: TenantId,
        actor: Option<Actor>,
        name: &str,
    ) -> Result<Self, TenantError> {
        if actor.as_ref().is_some_and(|a| a.tenant() != tenant) {
            return Err(TenantError::Conflict);
        }
        Ok(Self::new(tenant, actor, Origin::Job { name: name.into() }))
    }

    /// The tenant to act for.
    #[must_use]
    pub const fn tenant(&self) -> TenantId {
        self.tenant
    }

    /// The acting principal, when one is known.
    #[must_use]
    pub const fn actor(&self) -> Option<&Actor> {
        self.actor.as_ref()
    }

    /// Where this context came from.
    #[must_use]
    pub const fn origin(&self) -> &Origin {
        &self.origin
    }

    /// Whether this context was granted across tenants to a staff member.
    #[must_use]
    pub const fn is_cross_tenant(&self) -> bool {
        matches!(self.origin, Origin::CrossTenant { .. })
    }

    /// When a context granted across tenants stops being usable, by the server's clock; `None`
    /// for every other context.
    ///
    /// For display and records only: expiry is decided on the monotonic clock, so changing the
    /// server's clock neither extends nor shortens a grant.
    #[must_use]
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.grant.as_ref().map(|grant| grant.expires_at())
    }

    /// Checks that this context may be used now and, when it was granted across tenants, records
    /// the use.
    ///
    /// Data-access layers (such as `rls-guard` opening a transaction) are to call this before
    /// each use of a context: `context.authorize_use().await?`. For a context from a request, a
    /// job or an actor it does nothing and returns `Ok` at once. For a context granted through
    /// [`CrossTenantAuthority`](crate::CrossTenantAuthority) it records a
    /// [`GrantOutcome::Used`](crate::GrantOutcome::Used) event through the audit hook that
    /// recorded the grant, and returns `Ok` only once that record is written.
    ///
    /// The check is made when a use begins: work that started before the expiry (an open
    /// transaction) is not interrupted; the next use is refused.
    ///
    /// # Errors
    /// [`TenantError::CrossTenantRefused`] with
    /// - [`CrossTenantRefusal::Expired`] once the grant's lifetime has passed (the refused use is
    ///   recorded, best effort);
    /// - [`CrossTenantRefusal::AuditFailed`] when the use could not be recorded.
    pub async fn authorize_use(&self) -> Result<(), TenantError> {
        match (&self.origin, &self.grant, &self.actor) {
            (Origin::CrossTenant { reason }, Some(grant), Some(actor)) => {
                grant.authorize_use(actor, self.tenant, reason).await
            }
            // Only a grant makes a cross-tenant context, so this cannot happen; closed if it did.
            (Origin::CrossTenant { .. }, _, _) => {
                Err(TenantError::CrossTenantRefused(CrossTenantRefusal::Expired))
            }
            _ => Ok(()),
        }
    }
}
