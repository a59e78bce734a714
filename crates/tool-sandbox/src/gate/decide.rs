//! Allow, hold or deny: the decision on one call, and recording denials and proposals.

use audit_log::{Outcome, actions};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::SandboxError;
use crate::canonical::{DigestInput, canonical_json, proposal_digest};
use crate::model::ToolCallRequest;
use crate::policy::{CallView, TaintRule, Verdict};
use crate::registry::{Lookup, Registered};
use crate::taint::{ArgumentFlag, provenance};

use super::approvals::ProposalRow;
use super::audit::event;
use super::{Decision, DenyReason, Gate, MAX_CALL_ID, Proposal, Submission, Turn, seconds};

impl Gate {
    /// Decides about `call` without running or storing anything: lookup, allowlist, schema,
    /// policies, taint. This is the gate's own per-call cost.
    #[must_use]
    pub fn check(&self, turn: &Turn, call: &ToolCallRequest) -> Decision {
        self.decide(turn, call).0
    }

    pub(super) fn decide<'r>(
        &'r self,
        turn: &Turn,
        call: &ToolCallRequest,
    ) -> (Decision, Option<&'r Registered>) {
        let registered = match self.inner.registry.lookup(&call.tool) {
            Lookup::Found(r) => r,
            Lookup::Unknown { lookalike } => {
                let reason = DenyReason::UnknownTool {
                    lookalike: lookalike.map(|n| n.as_str().to_owned()),
                };
                return (Decision::Deny(reason), None);
            }
        };
        let spec = &registered.spec;
        if !turn.policy.allows(spec.name()) {
            return (Decision::Deny(DenyReason::NotAllowlisted), Some(registered));
        }
        // The size cap comes before the schema, so an oversized call costs no validation.
        match canonical_json(&call.arguments) {
            Ok(canonical) if canonical.len() > self.inner.max_argument_bytes => {
                let reason = DenyReason::ArgumentsTooLarge {
                    size: canonical.len(),
                    limit: self.inner.max_argument_bytes,
                };
                return (Decision::Deny(reason), Some(registered));
            }
            Ok(_) => {}
            Err(SandboxError::Canonical(why)) => {
                let reason = DenyReason::InvalidArguments(why.to_owned());
                return (Decision::Deny(reason), Some(registered));
            }
            Err(_) => {
                let reason = DenyReason::InvalidArguments("canonical".to_owned());
                return (Decision::Deny(reason), Some(registered));
            }
        }
        if let Some(error) = registered.validator.iter_errors(&call.arguments).next() {
            let detail = format!("{}: {}", error.instance_path(), error.kind().keyword());
            return (
                Decision::Deny(DenyReason::InvalidArguments(detail)),
                Some(registered),
            );
        }
        let tainted = turn.is_tainted();
        let view = CallView {
            agent: turn.agent(),
            tool: spec,
            arguments: &call.arguments,
            tainted,
        };
        let verdict = turn.policy.evaluate(&view);
        let flags = || provenance(&call.arguments, &turn.corpus);
        let decision = match verdict {
            Verdict::Deny(code) => Decision::Deny(DenyReason::Policy(code)),
            Verdict::RequireApproval => Decision::Hold { flags: flags() },
            Verdict::Allow if !tainted => Decision::Allow,
            Verdict::Allow => {
                let flagged = flags();
                let steerable =
                    spec.effect().has_effects() || (spec.uses_network() && !flagged.is_empty());
                match (steerable, turn.policy.on_taint) {
                    (false, _) => Decision::Allow,
                    (true, TaintRule::RequireApproval) => Decision::Hold { flags: flagged },
                    (true, TaintRule::Deny) => Decision::Deny(DenyReason::Tainted),
                }
            }
        };
        (decision, Some(registered))
    }

    /// Submits a call the model proposed: denied calls are refused, calls that need approval
    /// become stored proposals, allowed calls run under limits. Every decision is audited
    /// first; when the audit record cannot be written, nothing runs and nothing is stored.
    ///
    /// # Errors
    /// [`SandboxError::Audit`] or [`SandboxError::Store`] when the decision could not be
    /// recorded (fail closed); a refusal is not an error but [`Submission::Denied`].
    pub async fn submit(
        &self,
        turn: &mut Turn,
        mut call: ToolCallRequest,
    ) -> Result<Submission, SandboxError> {
        if call.call_id.len() > MAX_CALL_ID {
            let mut end = MAX_CALL_ID;
            while !call.call_id.is_char_boundary(end) {
                end -= 1;
            }
            call.call_id.truncate(end);
        }
        let (decision, registered) = self.decide(turn, &call);
        // Scanned once, as each untrusted text entered the turn (not on every call).
        let warnings = turn.signals.clone();
        match (decision, registered) {
            (Decision::Deny(reason), _) => {
                self.record_denial(turn, &call, &reason, &warnings).await?;
                Ok(Submission::Denied(reason))
            }
            (Decision::Hold { flags }, Some(registered)) => {
                let proposal = self
                    .propose(turn, &call, registered, &flags, &warnings)
                    .await?;
                Ok(Submission::Held(proposal))
            }
            (Decision::Allow, Some(registered)) => {
                self.run_allowed(turn, call, registered, &warnings).await
            }
            (_, None) => {
                // Unreachable: only unknown tools come back without a registration, and they
                // are denied. Refuse anyway.
                let reason = DenyReason::UnknownTool { lookalike: None };
                self.record_denial(turn, &call, &reason, &warnings).await?;
                Ok(Submission::Denied(reason))
            }
        }
    }

    pub(super) async fn record_denial(
        &self,
        turn: &Turn,
        call: &ToolCallRequest,
        reason: &DenyReason,
        warnings: &[&'static str],
    ) -> Result<(), SandboxError> {
        let mut meta = json!({
            "tool": call.tool,
            "call_id": call.call_id,
            "taint_sources": turn.labels(),
            "warnings": warnings,
        });
        match reason {
            DenyReason::UnknownTool {
                lookalike: Some(name),
            } => meta["lookalike_of"] = json!(name),
            DenyReason::InvalidArguments(detail) => meta["detail"] = json!(detail),
            DenyReason::ArgumentsTooLarge { size, limit } => {
                meta["size"] = json!(size);
                meta["limit"] = json!(limit);
            }
            _ => {}
        }
        let event = event(
            turn.context.tenant(),
            turn.agent(),
            actions::AGENT_TOOL_DENIED,
            Outcome::denied(&reason.code()),
            &call.tool,
            None,
            meta,
        )?;
        self.inner.audit.record(event).await?;
        Ok(())
    }

    pub(super) async fn propose(
        &self,
        turn: &Turn,
        call: &ToolCallRequest,
        registered: &Registered,
        flags: &[ArgumentFlag],
        warnings: &[&'static str],
    ) -> Result<Proposal, SandboxError> {
        let spec = &registered.spec;
        let canonical = match canonical_json(&call.arguments) {
            Ok(c) => c,
            Err(SandboxError::Canonical(why)) => {
                let reason = DenyReason::InvalidArguments(why.to_owned());
                self.record_denial(turn, call, &reason, warnings).await?;
                return Err(SandboxError::Canonical(why));
            }
            Err(e) => return Err(e),
        };
        let tenant = turn.context.tenant();
        let agent = turn.agent().id();
        let digest = proposal_digest(&DigestInput {
            tenant,
            agent,
            session: turn.session,
            tool: spec.name().as_str(),
            version: spec.version(),
            canonical_arguments: &canonical,
        });
        let id = Uuid::new_v4();
        let flags_json = serde_json::to_value(flags).unwrap_or(Value::Null);
        let labels = turn.labels();
        let ttl = seconds(self.inner.approvals.proposal_ttl);
        let mut tx = self.inner.pool.begin(&turn.context).await?;
        let row: ProposalRow = sqlx::query_as(
            "INSERT INTO tool_sandbox.proposals (tenant_id, id, agent_id, session_id, \
             on_behalf_of, call_id, tool, tool_version, arguments, digest, flags, taint_sources, \
             warnings, status, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, 'pending', \
             now() + make_interval(secs => $14)) RETURNING *",
        )
        .bind(tenant.as_uuid())
        .bind(id)
        .bind(agent.as_uuid())
        .bind(turn.session)
        .bind(turn.requester.as_uuid())
        .bind(&call.call_id)
        .bind(spec.name().as_str())
        .bind(i64::from(spec.version()))
        .bind(&canonical)
        .bind(&digest[..])
        .bind(&flags_json)
        .bind(json!(labels))
        .bind(json!(warnings))
        .bind(ttl)
        .fetch_one(&mut *tx)
        .await?;
        let proposal = row.into_proposal()?;
        let meta = json!({
            "tool": spec.name().as_str(),
            "version": spec.version(),
            "effect": spec.effect().as_str(),
            "call_id": call.call_id,
            "proposal": id,
            "digest": proposal.digest_hex(),
            "taint_sources": labels,
            "flags": flags_json,
            "warnings": warnings,
        });
        let ev = event(
            tenant,
            turn.agent(),
            actions::AGENT_TOOL_PROPOSED,
            Outcome::Allowed,
            spec.name().as_str(),
            Some(id),
            meta,
        )?;
        self.inner.audit.append(&mut tx, ev).await?;
        tx.commit().await?;
        Ok(proposal)
    }
}
