//! Audit event builders for the gate's decisions and the egress denials of a run.

use audit_log::{Action, AuditActor, AuditEvent, Outcome, Target, actions};
use serde_json::{Value, json};
use tenant_scope::{Actor, TenantId};
use uuid::Uuid;

use crate::{SandboxError, ToolError};

pub(super) fn egress_event(
    tenant: TenantId,
    agent: &Actor,
    tool: &str,
    call_id: &str,
    proposal: Option<Uuid>,
    error: &ToolError,
) -> Result<Option<AuditEvent>, SandboxError> {
    let ToolError::Egress(egress_guard::EgressError::Denied { decision, hop }) = error else {
        return Ok(None);
    };
    egress_denied_event(tenant, agent, tool, call_id, proposal, decision, Some(*hop)).map(Some)
}

/// The `egress.denied` record of one denied destination, with the agent as actor: refused by
/// the in-process client at redirect `hop`, or (`hop` `None`) by a subprocess's egress proxy.
pub(super) fn egress_denied_event(
    tenant: TenantId,
    agent: &Actor,
    tool: &str,
    call_id: &str,
    proposal: Option<Uuid>,
    decision: &egress_guard::Decision,
    hop: Option<usize>,
) -> Result<AuditEvent, SandboxError> {
    let mut meta = json!({
        "tool": tool,
        "call_id": call_id,
        "code": decision.reason.code(),
        "host": decision.target.as_ref().map(|t| t.host_text()),
        "policy": decision.policy,
        "via": if hop.is_some() { "client" } else { "proxy" },
    });
    if let Some(hop) = hop {
        meta["hop"] = json!(hop);
    }
    event(
        tenant,
        agent,
        actions::EGRESS_DENIED,
        Outcome::denied(decision.reason.code()),
        tool,
        proposal,
        meta,
    )
}

/// The denied decisions of one run's egress proxy (at most [`ProxyDenials::MAX`]; a flood of
/// refused requests is audited up to that, and the rest counted in the log).
#[derive(Default)]
pub(super) struct ProxyDenials(std::sync::Mutex<Vec<egress_guard::Decision>>);

impl ProxyDenials {
    const MAX: usize = 32;

    pub(super) fn take(&self) -> Vec<egress_guard::Decision> {
        self.0
            .lock()
            .map(|mut denials| std::mem::take(&mut *denials))
            .unwrap_or_default()
    }
}

impl egress_guard::DecisionHook for ProxyDenials {
    fn record(&self, decision: &egress_guard::Decision) {
        if decision.allowed {
            return;
        }
        if let Ok(mut denials) = self.0.lock() {
            if denials.len() < Self::MAX {
                denials.push(decision.clone());
            } else {
                tracing::warn!("more egress denials in one run than are audited one by one");
            }
        }
    }
}

pub(super) fn event(
    tenant: TenantId,
    actor: &Actor,
    action: Action,
    outcome: Outcome,
    tool: &str,
    proposal: Option<Uuid>,
    metadata: Value,
) -> Result<AuditEvent, SandboxError> {
    let mut ev = AuditEvent::new(tenant, AuditActor::from_actor(actor), action, outcome)
        .with_target(Target::new("tool", tool))?;
    if let Some(id) = proposal {
        ev = ev.with_target(Target::new("proposal", &id.to_string()))?;
    }
    Ok(ev.with_metadata(metadata)?)
}
