//! The one way to act in another tenant: a staff-only, reasoned, audited grant.
//!
//! Ordinary request handling cannot produce a cross-tenant context: no resolver does, the layer
//! refuses a request that names a tenant other than the signed-in actor's, and the
//! [`CrossTenantAuthority`] that grants one can be installed once per process — by the
//! application at start-up, which hands it only to its staff console. Each grant needs a staff
//! actor and a reason, and is recorded through a [`CrossTenantAudit`] hook before it is given;
//! if the hook fails, the grant is refused.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use crate::context::Origin;
use crate::error::CrossTenantRefusal;
use crate::{Actor, TenantContext, TenantError, TenantId};

/// The shortest reason (in characters, ignoring surrounding whitespace) a grant accepts.
pub const MIN_REASON_CHARS: usize = 10;

static INSTALLED: AtomicBool = AtomicBool::new(false);

/// What happened to a cross-tenant request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum GrantOutcome {
    /// The grant was given.
    Granted,
    /// The grant was refused.
    Refused(CrossTenantRefusal),
}

/// A cross-tenant request, as handed to the audit hook.
#[derive(Debug, Clone)]
pub struct CrossTenantEvent {
    /// Who asked.
    pub actor: Actor,
    /// The tenant they asked to act in.
    pub target: TenantId,
    /// Their reason, as given.
    pub reason: String,
    /// When, by the server's clock.
    pub at: SystemTime,
    /// Granted or refused.
    pub outcome: GrantOutcome,
}

/// Records cross-tenant requests. `audit-log` implements this; tests use an in-memory one.
pub trait CrossTenantAudit: Send + Sync + 'static {
    /// Why recording failed.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Records `event` durably. A grant is given only after this succeeds.
    fn record(
        &self,
        event: &CrossTenantEvent,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

/// The capability to grant staff a [`TenantContext`] in another tenant.
///
/// Not `Clone`, and only one can be installed per process.
pub struct CrossTenantAuthority<H> {
    hook: H,
}

impl<H> std::fmt::Debug for CrossTenantAuthority<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrossTenantAuthority")
            .finish_non_exhaustive()
    }
}

impl<H: CrossTenantAudit> CrossTenantAuthority<H> {
    /// Installs the process's authority, recording through `hook`.
    ///
    /// # Errors
    /// [`CrossTenantRefusal::AlreadyInstalled`] on every call after the first, so code that
    /// did not receive the authority at start-up cannot mint its own.
    pub fn install(hook: H) -> Result<Self, TenantError> {
        if INSTALLED.swap(true, Ordering::SeqCst) {
            return Err(TenantError::CrossTenantRefused(
                CrossTenantRefusal::AlreadyInstalled,
            ));
        }
        Ok(Self { hook })
    }

    /// Grants `staff` a context in `target` for `reason`.
    ///
    /// # Errors
    /// [`TenantError::CrossTenantRefused`] when the actor is not staff, the reason is shorter
    /// than [`MIN_REASON_CHARS`], or the hook cannot record the grant. Refusals are recorded
    /// too (best effort: a refusal stands even if recording it fails).
    pub async fn grant(
        &self,
        staff: &Actor,
        target: TenantId,
        reason: &str,
    ) -> Result<TenantContext, TenantError> {
        let refusal = if !staff.is_staff() {
            Some(CrossTenantRefusal::NotStaff)
        } else if reason.trim().chars().count() < MIN_REASON_CHARS {
            Some(CrossTenantRefusal::ReasonRequired)
        } else {
            None
        };
        let event = CrossTenantEvent {
            actor: staff.clone(),
            target,
            reason: reason.to_owned(),
            at: SystemTime::now(),
            outcome: refusal.map_or(GrantOutcome::Granted, GrantOutcome::Refused),
        };
        if let Some(refusal) = refusal {
            if let Err(error) = self.hook.record(&event).await {
                tracing::warn!(%error, "could not record a refused cross-tenant grant");
            }
            return Err(TenantError::CrossTenantRefused(refusal));
        }
        if let Err(error) = self.hook.record(&event).await {
            tracing::error!(%error, "cross-tenant grant refused: audit hook failed");
            return Err(TenantError::CrossTenantRefused(
                CrossTenantRefusal::AuditFailed,
            ));
        }
        Ok(TenantContext::new(
            target,
            Some(staff.clone()),
            Origin::CrossTenant {
                reason: reason.trim().into(),
            },
        ))
    }
}
