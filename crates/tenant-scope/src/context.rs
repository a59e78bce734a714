//! The resolved tenant for a unit of work.

use std::sync::Arc;

use crate::{Actor, TenantId};

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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantContext {
    tenant: TenantId,
    actor: Option<Actor>,
    origin: Origin,
}

impl TenantContext {
    pub(crate) const fn new(tenant: TenantId, actor: Option<Actor>, origin: Origin) -> Self {
        Self {
            tenant,
            actor,
            origin,
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
    /// [`TenantError::Conflict`](crate::TenantError::Conflict) when the actor belongs to another
    /// tenant.
    pub fn for_job(
        tenant: TenantId,
        actor: Option<Actor>,
        name: &str,
    ) -> Result<Self, crate::TenantError> {
        if actor.as_ref().is_some_and(|a| a.tenant() != tenant) {
            return Err(crate::TenantError::Conflict);
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
}
