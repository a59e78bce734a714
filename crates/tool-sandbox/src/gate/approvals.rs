//! Listing, approving, rejecting, consuming and executing stored proposals.

use audit_log::{Outcome, actions};
use rls_guard::TenantTx;
use serde_json::{Value, json};
use tenant_scope::{Actor, ActorId, TenantContext, TenantId};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::approval::{ApprovalKey, ApprovalRefusal, Approver, ProposalStatus, SignedApproval};
use crate::canonical::{DigestInput, canonical_json, proposal_digest};
use crate::policy::AgentPolicy;
use crate::registry::Lookup;
use crate::taint::Untrusted;
use crate::{SandboxError, ToolError};

use super::audit::{egress_event, event};
use super::{ApprovedCall, Gate, Proposal, ToolRun, seconds};

impl Gate {
    /// The proposals of `context`'s tenant, newest first, optionally only those in `status`.
    ///
    /// # Errors
    /// [`SandboxError::Store`].
    pub async fn proposals(
        &self,
        context: &TenantContext,
        status: Option<ProposalStatus>,
    ) -> Result<Vec<Proposal>, SandboxError> {
        let mut tx = self.inner.pool.begin(context).await?;
        let rows: Vec<ProposalRow> = sqlx::query_as(
            "SELECT * FROM tool_sandbox.proposals \
             WHERE tenant_id = $1 AND ($2::text IS NULL OR status = $2) \
             ORDER BY created_at DESC LIMIT 500",
        )
        .bind(context.tenant().as_uuid())
        .bind(status.map(ProposalStatus::as_str))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.into_iter().map(ProposalRow::into_proposal).collect()
    }

    /// One proposal of `context`'s tenant.
    ///
    /// # Errors
    /// [`SandboxError::NoSuchProposal`]; [`SandboxError::Store`].
    pub async fn proposal(
        &self,
        context: &TenantContext,
        id: Uuid,
    ) -> Result<Proposal, SandboxError> {
        let mut tx = self.inner.pool.begin(context).await?;
        let row: Option<ProposalRow> =
            sqlx::query_as("SELECT * FROM tool_sandbox.proposals WHERE tenant_id = $1 AND id = $2")
                .bind(context.tenant().as_uuid())
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        tx.commit().await?;
        row.ok_or(SandboxError::NoSuchProposal)?.into_proposal()
    }

    /// Approves proposal `id` as `approver`, acting in `context` (their own tenant, or a
    /// cross-tenant grant for staff). `digest` is the digest the approver was shown: if the
    /// proposal is not exactly that, nothing is approved. The approver may not be the agent, the
    /// turn's requester (from any session) or the proposing session. The approval is stored
    /// with the gate's tag over it (see [`ApprovalKey`]), its decision time is the database's
    /// clock, and it expires after [`ApprovalPolicy::approval_ttl`](crate::ApprovalPolicy::approval_ttl). Audited in the same
    /// transaction.
    ///
    /// # Errors
    /// [`SandboxError::ApprovalRefused`] with the reason (nothing is approved; the refusal is
    /// audited); [`SandboxError::NoSuchProposal`]; [`SandboxError::Store`],
    /// [`SandboxError::Audit`].
    pub async fn approve(
        &self,
        context: &TenantContext,
        approver: &dyn Approver,
        id: Uuid,
        digest: &[u8; 32],
    ) -> Result<Proposal, SandboxError> {
        self.decide_proposal(context, approver, id, Some(digest), None)
            .await
    }

    /// Rejects proposal `id` as `approver` with a short `reason`.
    ///
    /// # Errors
    /// As [`Gate::approve`] (a rejection needs no fresh second factor).
    pub async fn reject(
        &self,
        context: &TenantContext,
        approver: &dyn Approver,
        id: Uuid,
        reason: &str,
    ) -> Result<Proposal, SandboxError> {
        self.decide_proposal(context, approver, id, None, Some(reason))
            .await
    }

    pub(super) async fn decide_proposal(
        &self,
        context: &TenantContext,
        approver: &dyn Approver,
        id: Uuid,
        digest: Option<&[u8; 32]>,
        rejection: Option<&str>,
    ) -> Result<Proposal, SandboxError> {
        let approving = digest.is_some();
        let policy = &self.inner.approvals;
        let actor =
            match policy.check_approver(context, approver, OffsetDateTime::now_utc(), approving) {
                Ok(actor) => actor,
                Err(SandboxError::ApprovalRefused(refusal)) => {
                    self.record_refusal(context, &approver.actor(), id, refusal)
                        .await;
                    return Err(SandboxError::ApprovalRefused(refusal));
                }
                Err(e) => return Err(e),
            };
        let mut tx = self.inner.pool.begin(context).await?;
        let row = lock_proposal(&mut tx, context.tenant(), id).await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return Err(SandboxError::NoSuchProposal);
        };
        let current = row.into_proposal()?;
        // The transaction's clock: the trigger stamps the same `now()` as the decision time.
        let now = db_now(&mut tx).await?;
        let refusal = if current.status != ProposalStatus::Pending {
            Some(ApprovalRefusal::NotPending)
        } else if current.expires_at <= now {
            Some(ApprovalRefusal::Expired)
        } else if digest.is_some_and(|d| d != &current.digest) {
            Some(ApprovalRefusal::DigestMismatch)
        } else if approver.session_id() == current.session {
            Some(ApprovalRefusal::ProposingSession)
        } else if *actor.id().as_uuid() == *current.agent.as_uuid() {
            Some(ApprovalRefusal::NotHuman)
        } else if current.on_behalf_of == actor.id() {
            Some(ApprovalRefusal::SelfApproval)
        } else {
            None
        };
        if let Some(refusal) = refusal {
            if refusal == ApprovalRefusal::Expired {
                self.expire_locked(&mut tx, &current).await?;
                tx.commit().await?;
            } else {
                tx.rollback().await?;
            }
            self.record_refusal(context, &actor, id, refusal).await;
            return Err(SandboxError::ApprovalRefused(refusal));
        }
        let (status, action, outcome) = match rejection {
            None => ("approved", actions::AGENT_TOOL_APPROVED, Outcome::Allowed),
            Some(_) => (
                "rejected",
                actions::AGENT_TOOL_REJECTED,
                Outcome::denied("rejected_by_human"),
            ),
        };
        // Whole microseconds, as PostgreSQL stores them, so the tag covers the stored values.
        let window = time::Duration::microseconds(
            i64::try_from(policy.approval_ttl.as_micros()).unwrap_or(i64::MAX),
        );
        let (approval_expires_at, mac) = if rejection.is_none() {
            let expires_at = now + window;
            let mac = self.inner.approval_key.sign(&SignedApproval {
                tenant: current.tenant.as_uuid(),
                proposal: &current.id,
                digest: &current.digest,
                approver: actor.id().as_uuid(),
                approver_kind: actor.kind().as_str(),
                approver_session: &approver.session_id(),
                decided_at: now,
                expires_at,
            });
            (Some(expires_at), Some(mac))
        } else {
            (None, None)
        };
        let row: ProposalRow = sqlx::query_as(
            "UPDATE tool_sandbox.proposals SET status = $3, decided_by = $4, decided_by_kind = $5, \
             decided_session = $6, decided_at = now(), decision_reason = $7, \
             approval_expires_at = $8, approval_mac = $9 \
             WHERE tenant_id = $1 AND id = $2 AND status = 'pending' RETURNING *",
        )
        .bind(context.tenant().as_uuid())
        .bind(id)
        .bind(status)
        .bind(actor.id().as_uuid())
        .bind(actor.kind().as_str())
        .bind(approver.session_id())
        .bind(rejection.map(|r| r.chars().take(512).collect::<String>()))
        .bind(approval_expires_at)
        .bind(mac.as_ref().map(|m| &m[..]))
        .fetch_one(&mut *tx)
        .await?;
        if rejection.is_none() && !row.approval_is_signed(&self.inner.approval_key) {
            // The stored decision is not what was signed (the database changed it): nothing is
            // approved.
            tx.rollback().await?;
            return Err(SandboxError::CorruptProposal);
        }
        let decided = row.into_proposal()?;
        let meta = json!({
            "tool": decided.tool,
            "version": decided.tool_version,
            "proposal": id,
            "digest": decided.digest_hex(),
            "agent": decided.agent.to_string(),
            "approver_session": approver.session_id(),
            "cross_tenant": context.is_cross_tenant(),
            "taint_sources": decided.taint_sources,
            "reason": rejection,
        });
        let ev = event(
            context.tenant(),
            &actor,
            action,
            outcome,
            &decided.tool,
            Some(id),
            meta,
        )?;
        self.inner.audit.append(&mut tx, ev).await?;
        tx.commit().await?;
        Ok(decided)
    }

    pub(super) async fn record_refusal(
        &self,
        context: &TenantContext,
        actor: &Actor,
        id: Uuid,
        refusal: ApprovalRefusal,
    ) {
        // Best effort: the refusal stands whether or not it can be recorded.
        let meta = json!({ "proposal": id });
        let recorded = match event(
            context.tenant(),
            actor,
            actions::AUTHZ_DENIED,
            Outcome::denied(refusal.code()),
            "approval",
            Some(id),
            meta,
        ) {
            Ok(ev) => self
                .inner
                .audit
                .record(ev)
                .await
                .map(|_| ())
                .map_err(SandboxError::from),
            Err(e) => Err(e),
        };
        if let Err(error) = recorded {
            tracing::warn!(%error, refusal = refusal.code(), "could not record a refused approval");
        }
    }

    pub(super) async fn expire_locked(
        &self,
        tx: &mut TenantTx,
        proposal: &Proposal,
    ) -> Result<(), SandboxError> {
        sqlx::query(
            "UPDATE tool_sandbox.proposals SET status = 'expired', finished_at = now() \
             WHERE tenant_id = $1 AND id = $2 AND status IN ('pending', 'approved')",
        )
        .bind(proposal.tenant.as_uuid())
        .bind(proposal.id)
        .execute(&mut **tx)
        .await?;
        let agent = Actor::new(
            tenant_scope::ActorKind::Agent,
            proposal.agent,
            proposal.tenant,
        );
        let ev = event(
            proposal.tenant,
            &agent,
            actions::AGENT_TOOL_EXPIRED,
            Outcome::denied("expired"),
            &proposal.tool,
            Some(proposal.id),
            json!({ "proposal": proposal.id, "was": proposal.status.as_str() }),
        )?;
        self.inner.audit.append(tx, ev).await?;
        Ok(())
    }

    /// Consumes the approval of proposal `id` so it can run, exactly once: `agent` must be the
    /// agent that proposed it, `arguments` must be exactly the approved arguments (any change,
    /// even of a type or of array order, refuses), and the tool must be the approved version,
    /// still registered and still on the agent's allowlist. The stored approval must carry this
    /// gate's valid tag: an approval written outside [`Gate::approve`] (by hand, copied from
    /// another proposal, under another key) is refused as
    /// [`ApprovalRefusal::ForgedApproval`] and the proposal invalidated. The proposal moves from
    /// `approved` to `executing` atomically, with its audit record; if the process dies before
    /// [`Gate::execute`] finishes, the proposal stays `executing` and never runs again.
    ///
    /// # Errors
    /// [`SandboxError::ApprovalRefused`] (audited); [`SandboxError::NoSuchProposal`];
    /// [`SandboxError::Store`], [`SandboxError::Audit`].
    pub async fn consume(
        &self,
        context: &TenantContext,
        agent: &AgentPolicy,
        id: Uuid,
        arguments: &Value,
    ) -> Result<ApprovedCall, SandboxError> {
        let agent_actor = agent.agent().clone();
        if context.tenant() != agent_actor.tenant() {
            self.record_refusal(context, &agent_actor, id, ApprovalRefusal::WrongAgent)
                .await;
            return Err(SandboxError::ApprovalRefused(ApprovalRefusal::WrongAgent));
        }
        let mut tx = self.inner.pool.begin(context).await?;
        let Some(row) = lock_proposal(&mut tx, context.tenant(), id).await? else {
            tx.rollback().await?;
            return Err(SandboxError::NoSuchProposal);
        };
        let signed = row.approval_is_signed(&self.inner.approval_key);
        let current = row.into_proposal()?;
        let spec = self.inner.registry.spec(&current.tool);
        let presented = canonical_json(arguments).ok();
        let digest_with = |version: u32, args: &str| {
            proposal_digest(&DigestInput {
                tenant: current.tenant,
                agent: current.agent,
                session: current.session,
                tool: &current.tool,
                version,
                canonical_arguments: args,
            })
        };
        let now = db_now(&mut tx).await?;
        let mut invalidate = false;
        let refusal = if current.agent != agent_actor.id() {
            Some(ApprovalRefusal::WrongAgent)
        } else if current.status != ProposalStatus::Approved {
            Some(ApprovalRefusal::NotApproved)
        } else if !signed {
            invalidate = true;
            Some(ApprovalRefusal::ForgedApproval)
        } else if current.approval_expires_at.is_none_or(|at| at <= now) {
            Some(ApprovalRefusal::Expired)
        } else if presented.as_deref() != Some(current.arguments.as_str()) {
            Some(ApprovalRefusal::ArgumentsChanged)
        } else if spec.is_some_and(|s| {
            s.version() == current.tool_version
                && digest_with(s.version(), &current.arguments) == current.digest
                && agent.allows(s.name())
        }) {
            None
        } else {
            invalidate = true;
            Some(ApprovalRefusal::ToolChanged)
        };
        if let Some(refusal) = refusal {
            if refusal == ApprovalRefusal::Expired {
                self.expire_locked(&mut tx, &current).await?;
                tx.commit().await?;
            } else if invalidate {
                sqlx::query(
                    "UPDATE tool_sandbox.proposals SET status = 'invalidated', finished_at = now() \
                     WHERE tenant_id = $1 AND id = $2 AND status = 'approved'",
                )
                .bind(current.tenant.as_uuid())
                .bind(id)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
            } else {
                tx.rollback().await?;
            }
            self.record_refusal(context, &agent_actor, id, refusal)
                .await;
            return Err(SandboxError::ApprovalRefused(refusal));
        }
        let row: ProposalRow = sqlx::query_as(
            "UPDATE tool_sandbox.proposals SET status = 'executing', consumed_at = now() \
             WHERE tenant_id = $1 AND id = $2 AND status = 'approved' RETURNING *",
        )
        .bind(current.tenant.as_uuid())
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        let consumed = row.into_proposal()?;
        let ev = event(
            consumed.tenant,
            &agent_actor,
            actions::AGENT_TOOL_CONSUMED,
            Outcome::Allowed,
            &consumed.tool,
            Some(id),
            json!({ "proposal": id, "digest": consumed.digest_hex(), "tool": consumed.tool }),
        )?;
        self.inner.audit.append(&mut tx, ev).await?;
        tx.commit().await?;
        // Run exactly the stored bytes, which the digest covers.
        let arguments: Value = serde_json::from_str(&consumed.arguments)
            .map_err(|_| SandboxError::Canonical("stored arguments"))?;
        Ok(ApprovedCall {
            proposal: consumed,
            arguments,
            agent: agent_actor,
        })
    }

    /// Runs a consumed approval and records the outcome (`executed` or `failed`).
    ///
    /// # Errors
    /// [`SandboxError::Store`], [`SandboxError::Audit`] when the outcome cannot be recorded
    /// (the call has run; the proposal stays `executing`, which never runs again).
    pub async fn execute(&self, approved: ApprovedCall) -> Result<ToolRun, SandboxError> {
        let ApprovedCall {
            proposal,
            arguments,
            agent,
        } = approved;
        let registered = match self.inner.registry.lookup(&proposal.tool) {
            Lookup::Found(r) if r.spec.version() == proposal.tool_version => r,
            _ => {
                let error = ToolError::failed("tool changed after consumption");
                self.finish(&proposal, &agent, &Err(error)).await?;
                return Err(SandboxError::ApprovalRefused(ApprovalRefusal::ToolChanged));
            }
        };
        let context = TenantContext::for_job(proposal.tenant, Some(agent.clone()), "approved-call")
            .map_err(|_| SandboxError::NotAnAgent)?;
        let run = self
            .dispatch(&context, &agent, registered, &proposal.call_id, arguments)
            .await;
        self.finish(&proposal, &agent, &run.result).await?;
        Ok(run)
    }

    pub(super) async fn finish(
        &self,
        proposal: &Proposal,
        agent: &Actor,
        result: &Result<Untrusted<String>, ToolError>,
    ) -> Result<(), SandboxError> {
        let context = TenantContext::for_job(proposal.tenant, Some(agent.clone()), "approved-call")
            .map_err(|_| SandboxError::NotAnAgent)?;
        let (status, action, outcome, detail) = match result {
            Ok(_) => (
                "executed",
                actions::AGENT_TOOL_EXECUTED,
                Outcome::Allowed,
                None,
            ),
            Err(e) => (
                "failed",
                actions::AGENT_TOOL_FAILED,
                Outcome::failed(e.code()),
                Some(e.to_string()),
            ),
        };
        let mut tx = self.inner.pool.begin(&context).await?;
        sqlx::query(
            "UPDATE tool_sandbox.proposals SET status = $3, finished_at = now(), outcome = $4 \
             WHERE tenant_id = $1 AND id = $2 AND status = 'executing'",
        )
        .bind(proposal.tenant.as_uuid())
        .bind(proposal.id)
        .bind(status)
        .bind(
            detail
                .as_deref()
                .map(|d| d.chars().take(512).collect::<String>()),
        )
        .execute(&mut *tx)
        .await?;
        let ev = event(
            proposal.tenant,
            agent,
            action,
            outcome,
            &proposal.tool,
            Some(proposal.id),
            json!({ "proposal": proposal.id, "tool": proposal.tool, "error": detail }),
        )?;
        self.inner.audit.append(&mut tx, ev).await?;
        tx.commit().await?;
        if let Err(error) = result
            && let Some(ev) = egress_event(
                proposal.tenant,
                agent,
                &proposal.tool,
                &proposal.call_id,
                Some(proposal.id),
                error,
            )?
        {
            self.inner.audit.record(ev).await?;
        }
        Ok(())
    }

    /// Marks `context`'s tenant's proposals whose decision window or approval has passed as
    /// `expired` (audited). Returns how many.
    ///
    /// # Errors
    /// [`SandboxError::Store`], [`SandboxError::Audit`].
    pub async fn expire_stale(&self, context: &TenantContext) -> Result<usize, SandboxError> {
        let mut tx = self.inner.pool.begin(context).await?;
        let rows: Vec<ProposalRow> = sqlx::query_as(
            "SELECT * FROM tool_sandbox.proposals WHERE tenant_id = $1 AND \
             ((status = 'pending' AND expires_at <= now()) OR \
              (status = 'approved' AND approval_expires_at <= now())) FOR UPDATE",
        )
        .bind(context.tenant().as_uuid())
        .fetch_all(&mut *tx)
        .await?;
        let n = rows.len();
        for row in rows {
            let p = row.into_proposal()?;
            self.expire_locked(&mut tx, &p).await?;
        }
        tx.commit().await?;
        Ok(n)
    }

    /// Marks `context`'s tenant's proposals left `executing` for longer than `older_than` (a
    /// crash between consumption and completion) as `interrupted`, audited. They are never
    /// retried: at most once. Returns how many.
    ///
    /// # Errors
    /// [`SandboxError::Store`], [`SandboxError::Audit`].
    pub async fn reap_interrupted(
        &self,
        context: &TenantContext,
        older_than: std::time::Duration,
    ) -> Result<usize, SandboxError> {
        let mut tx = self.inner.pool.begin(context).await?;
        let rows: Vec<ProposalRow> = sqlx::query_as(
            "UPDATE tool_sandbox.proposals SET status = 'interrupted', finished_at = now(), \
             outcome = 'interrupted before completion' WHERE tenant_id = $1 AND \
             status = 'executing' AND consumed_at <= now() - make_interval(secs => $2) \
             RETURNING *",
        )
        .bind(context.tenant().as_uuid())
        .bind(seconds(older_than))
        .fetch_all(&mut *tx)
        .await?;
        let n = rows.len();
        for row in rows {
            let p = row.into_proposal()?;
            let agent = Actor::new(tenant_scope::ActorKind::Agent, p.agent, p.tenant);
            let ev = event(
                p.tenant,
                &agent,
                actions::AGENT_TOOL_FAILED,
                Outcome::failed("interrupted"),
                &p.tool,
                Some(p.id),
                json!({ "proposal": p.id, "tool": p.tool }),
            )?;
            self.inner.audit.append(&mut tx, ev).await?;
        }
        tx.commit().await?;
        Ok(n)
    }
}

pub(super) async fn db_now(tx: &mut TenantTx) -> Result<OffsetDateTime, SandboxError> {
    let (now,): (OffsetDateTime,) = sqlx::query_as("SELECT now()").fetch_one(&mut **tx).await?;
    Ok(now)
}

pub(super) async fn lock_proposal(
    tx: &mut TenantTx,
    tenant: TenantId,
    id: Uuid,
) -> Result<Option<ProposalRow>, SandboxError> {
    Ok(sqlx::query_as(
        "SELECT * FROM tool_sandbox.proposals WHERE tenant_id = $1 AND id = $2 FOR UPDATE",
    )
    .bind(tenant.as_uuid())
    .bind(id)
    .fetch_optional(&mut **tx)
    .await?)
}

#[derive(sqlx::FromRow)]
pub(super) struct ProposalRow {
    tenant_id: Uuid,
    id: Uuid,
    agent_id: Uuid,
    session_id: Uuid,
    on_behalf_of: Option<Uuid>,
    call_id: String,
    tool: String,
    tool_version: i64,
    arguments: String,
    digest: Vec<u8>,
    flags: Value,
    taint_sources: Value,
    warnings: Value,
    status: String,
    created_at: OffsetDateTime,
    expires_at: OffsetDateTime,
    approval_expires_at: Option<OffsetDateTime>,
    decided_by: Option<Uuid>,
    decided_by_kind: Option<String>,
    decided_session: Option<Uuid>,
    decided_at: Option<OffsetDateTime>,
    approval_mac: Option<Vec<u8>>,
}

impl ProposalRow {
    /// Whether the row's approval carries `key`'s tag over what it says (tenant, proposal,
    /// digest, approver, their session, decision time, expiry) and names an approver other than
    /// the agent, the requester and the proposing session. False for any row without a
    /// complete approval.
    fn approval_is_signed(&self, key: &ApprovalKey) -> bool {
        let (
            Some(approver),
            Some(kind),
            Some(session),
            Some(decided_at),
            Some(expires_at),
            Some(mac),
            Ok(digest),
        ) = (
            self.decided_by.as_ref(),
            self.decided_by_kind.as_deref(),
            self.decided_session.as_ref(),
            self.decided_at,
            self.approval_expires_at,
            self.approval_mac.as_deref(),
            <&[u8; 32]>::try_from(self.digest.as_slice()),
        )
        else {
            return false;
        };
        let distinct = *approver != self.agent_id
            && Some(*approver) != self.on_behalf_of
            && *session != self.session_id;
        let approval = SignedApproval {
            tenant: &self.tenant_id,
            proposal: &self.id,
            digest,
            approver,
            approver_kind: kind,
            approver_session: session,
            decided_at,
            expires_at,
        };
        // Verify first: the comparison runs whatever the other checks say.
        key.verify(&approval, mac) & distinct
    }

    pub(super) fn into_proposal(self) -> Result<Proposal, SandboxError> {
        let malformed = || SandboxError::CorruptProposal;
        let strings = |v: Value| -> Vec<String> { serde_json::from_value(v).unwrap_or_default() };
        Ok(Proposal {
            id: self.id,
            tenant: TenantId::from_uuid(self.tenant_id).map_err(|_| malformed())?,
            agent: ActorId::from_uuid(self.agent_id).map_err(|_| malformed())?,
            session: self.session_id,
            on_behalf_of: self
                .on_behalf_of
                .ok_or_else(malformed)
                .and_then(|id| ActorId::from_uuid(id).map_err(|_| malformed()))?,
            call_id: self.call_id,
            tool: self.tool,
            tool_version: u32::try_from(self.tool_version).map_err(|_| malformed())?,
            arguments: self.arguments,
            digest: self.digest.try_into().map_err(|_| malformed())?,
            flags: self.flags,
            taint_sources: strings(self.taint_sources),
            warnings: strings(self.warnings),
            status: ProposalStatus::parse(&self.status).ok_or_else(malformed)?,
            created_at: self.created_at,
            expires_at: self.expires_at,
            approval_expires_at: self.approval_expires_at,
        })
    }
}
