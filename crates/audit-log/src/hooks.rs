//! The audit log as the event hook of other crates.

use tenant_scope::{CrossTenantAudit, CrossTenantEvent, GrantOutcome};

use crate::event::{AuditActor, AuditEvent, Outcome, actions};
use crate::{AuditError, AuditLog};

/// Cross-tenant grants, uses and refusals are recorded in the *target* tenant's chain (that
/// tenant's auditors see who looked at their data), with the staff member's home tenant in the
/// actor and the reason, scrubbed, in the metadata. A grant is given, and a granted context used,
/// only once this record is durable.
impl CrossTenantAudit for AuditLog {
    type Error = AuditError;

    async fn record(&self, event: &CrossTenantEvent) -> Result<(), Self::Error> {
        let (action, outcome) = match event.outcome {
            GrantOutcome::Granted => (actions::TENANT_CROSS_TENANT_GRANTED, Outcome::Allowed),
            GrantOutcome::Used => (actions::TENANT_CROSS_TENANT_USED, Outcome::Allowed),
            GrantOutcome::Refused(refusal) => (
                actions::TENANT_CROSS_TENANT_REFUSED,
                Outcome::denied(refusal_code(refusal)),
            ),
            _ => (
                actions::TENANT_CROSS_TENANT_REFUSED,
                Outcome::denied("unknown"),
            ),
        };
        let audit_event = AuditEvent::new(
            event.target,
            AuditActor::from_actor(&event.actor),
            action,
            outcome,
        )
        .with_metadata(serde_json::json!({ "reason": event.reason }))?;
        AuditLog::record(self, audit_event).await.map(drop)
    }
}

const fn refusal_code(refusal: tenant_scope::CrossTenantRefusal) -> &'static str {
    use tenant_scope::CrossTenantRefusal as R;
    match refusal {
        R::NotStaff => "not_staff",
        R::ReasonRequired => "reason_required",
        R::ReasonTooLong => "reason_too_long",
        R::AuditFailed => "audit_failed",
        R::AlreadyInstalled => "already_installed",
        R::Expired => "expired",
        R::LifetimeOutOfRange => "lifetime_out_of_range",
        _ => "refused",
    }
}
