//! Running an allowed or approved call under its limits, with the egress proxy's denials
//! collected for the audit.

use std::sync::Arc;

use audit_log::{Outcome, actions};
use serde_json::{Value, json};
use tenant_scope::{Actor, TenantContext, TenantId};
use uuid::Uuid;

use crate::model::ToolCallRequest;
use crate::registry::{Effect, Registered};
use crate::taint::{Source, Untrusted};
use crate::tool::ToolContext;
use crate::{SandboxError, ToolError};

use super::audit::{ProxyDenials, egress_denied_event, egress_event, event};
use super::{DenyReason, Gate, Submission, ToolRun, Turn};

impl Gate {
    pub(super) async fn run_allowed(
        &self,
        turn: &mut Turn,
        call: ToolCallRequest,
        registered: &Registered,
        warnings: &[&'static str],
    ) -> Result<Submission, SandboxError> {
        let spec = &registered.spec;
        // Defence in depth: the sensitive floor in the policy makes this unreachable.
        if spec.effect() == Effect::Sensitive {
            let reason = DenyReason::Policy("approval_required".to_owned());
            self.record_denial(turn, &call, &reason, warnings).await?;
            return Ok(Submission::Denied(reason));
        }
        let tenant = turn.context.tenant();
        let slot = match self.inner.limiter.acquire(tenant, turn.agent().id()).await {
            Ok(slot) => slot,
            Err(which) => {
                let reason = DenyReason::Limited(which);
                self.record_denial(turn, &call, &reason, warnings).await?;
                return Ok(Submission::Denied(reason));
            }
        };
        let meta = json!({
            "tool": spec.name().as_str(),
            "version": spec.version(),
            "call_id": call.call_id,
            "taint_sources": turn.labels(),
            "warnings": warnings,
        });
        let ev = event(
            tenant,
            turn.agent(),
            actions::AGENT_TOOL_CALLED,
            Outcome::Allowed,
            spec.name().as_str(),
            None,
            meta,
        )?;
        self.inner.audit.record(ev).await?;
        let run = self
            .dispatch(
                &turn.context,
                turn.agent(),
                registered,
                &call.call_id,
                call.arguments,
            )
            .await;
        drop(slot);
        if let Err(error) = &run.result {
            self.record_failure(
                tenant,
                turn.agent(),
                spec.name().as_str(),
                &call.call_id,
                None,
                error,
            )
            .await?;
        }
        let for_model = match &run.result {
            Ok(output) => turn.add_untrusted(output),
            Err(error) => format!("tool {} failed: {}", run.tool, error.code()),
        };
        Ok(Submission::Ran { run, for_model })
    }

    /// Runs a tool under its limits. Private: reached only from an allowed decision or a
    /// consumed approval.
    pub(super) async fn dispatch(
        &self,
        context: &TenantContext,
        agent: &Actor,
        registered: &Registered,
        call_id: &str,
        arguments: Value,
    ) -> ToolRun {
        let spec = &registered.spec;
        let limits = spec.call_limits();
        // What the run's subprocesses asked the egress proxy for: its denials are audited below,
        // as the in-process client's are.
        let denials = Arc::new(ProxyDenials::default());
        let ctx = ToolContext {
            tenant: context.clone(),
            agent: agent.clone(),
            call_id: call_id.to_owned(),
            http: if spec.uses_network() {
                self.inner.egress.clone()
            } else {
                None
            },
            proxy: if spec.uses_network() {
                self.inner
                    .egress_proxy
                    .clone()
                    .map(|p| p.caller(spec.name().as_str()).with_hook(denials.clone()))
            } else {
                None
            },
            network: spec.uses_network(),
            process: spec.subprocess_limits(),
        };
        let outcome = tokio::time::timeout(limits.timeout, registered.run(ctx, arguments)).await;
        for decision in denials.take() {
            let recorded = egress_denied_event(
                context.tenant(),
                agent,
                spec.name().as_str(),
                call_id,
                None,
                &decision,
                None,
            );
            match recorded {
                Ok(ev) => {
                    if let Err(error) = self.inner.audit.record(ev).await {
                        tracing::error!(%error, "an egress denial could not be audited");
                    }
                }
                Err(error) => tracing::error!(%error, "an egress denial could not be audited"),
            }
        }
        let source = Source::ToolResult {
            tool: spec.name().as_str().to_owned(),
            call_id: call_id.to_owned(),
        };
        let (result, truncated) = match outcome {
            Ok(Ok(output)) => {
                let (content, truncated) = cap(output.content, limits.output_bytes);
                (Ok(Untrusted::new(content, source)), truncated)
            }
            Ok(Err(error)) => (Err(error), false),
            Err(_) => (Err(ToolError::TimedOut), false),
        };
        ToolRun {
            call_id: call_id.to_owned(),
            tool: spec.name().as_str().to_owned(),
            result,
            truncated,
        }
    }

    pub(super) async fn record_failure(
        &self,
        tenant: TenantId,
        agent: &Actor,
        tool: &str,
        call_id: &str,
        proposal: Option<Uuid>,
        error: &ToolError,
    ) -> Result<(), SandboxError> {
        let mut meta = json!({ "tool": tool, "call_id": call_id, "error": error.to_string() });
        if let Some(id) = proposal {
            meta["proposal"] = json!(id);
        }
        let ev = event(
            tenant,
            agent,
            actions::AGENT_TOOL_FAILED,
            Outcome::failed(error.code()),
            tool,
            proposal,
            meta,
        )?;
        self.inner.audit.record(ev).await?;
        // The egress guard's refusal is an event of its own, with the agent as actor.
        if let Some(ev) = egress_event(tenant, agent, tool, call_id, proposal, error)? {
            self.inner.audit.record(ev).await?;
        }
        Ok(())
    }
}

/// Truncates `text` to at most `limit` bytes at a character boundary.
pub(super) fn cap(mut text: String, limit: usize) -> (String, bool) {
    if text.len() <= limit {
        return (text, false);
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    (text, true)
}
