//! The gate: every proposed tool call passes through it, and it is the only way to run a tool.

use std::sync::Arc;

use audit_log::{Action, AuditActor, AuditEvent, AuditLog, Outcome, Target, actions};
use egress_guard::GuardedClient;
use rls_guard::{TenantPool, TenantTx};
use serde_json::{Value, json};
use tenant_scope::{Actor, ActorId, TenantContext, TenantId};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::approval::{
    ApprovalKey, ApprovalPolicy, ApprovalRefusal, Approver, MAX_APPROVAL_TTL, ProposalStatus,
    SignedApproval,
};
use crate::canonical::{DigestInput, canonical_json, proposal_digest};
use crate::limits::{CallLimits, Limiter};
use crate::model::ToolCallRequest;
use crate::policy::{AgentPolicy, CallView, TaintRule, Verdict};
use crate::registry::{Effect, Lookup, Registered, Registry};
use crate::taint::{
    ArgumentFlag, Corpus, Source, Spotlight, Untrusted, injection_signals, provenance,
};
use crate::tool::ToolContext;
use crate::{SandboxError, ToolError};

/// The longest call id kept from a model.
const MAX_CALL_ID: usize = 128;

/// The default cap on a call's canonical arguments, and the most the proposal store accepts:
/// 64 KiB.
pub const MAX_ARGUMENT_BYTES: usize = 64 * 1024;

/// Why a call was denied. Denied calls never become proposals: no approval can rescue them.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DenyReason {
    /// No tool has exactly this name (`lookalike` names the registered tool it imitates).
    UnknownTool {
        /// The registered tool the name imitates, if any.
        lookalike: Option<String>,
    },
    /// The tool is not on the agent's allowlist.
    NotAllowlisted,
    /// The arguments do not satisfy the tool's schema (or cannot be canonicalised).
    InvalidArguments(String),
    /// A policy denied it (with the policy's reason code), or no policy allows a tool with
    /// effects (`no_policy`).
    Policy(String),
    /// The turn is tainted and the agent's taint rule is [`TaintRule::Deny`].
    Tainted,
    /// A rate or concurrency limit.
    Limited(&'static str),
    /// The canonical arguments are longer than the gate's cap
    /// ([`GateBuilder::max_argument_bytes`]).
    ArgumentsTooLarge {
        /// Their length in bytes.
        size: usize,
        /// The cap.
        limit: usize,
    },
}

impl DenyReason {
    /// The stable code recorded in the audit log.
    #[must_use]
    pub fn code(&self) -> String {
        match self {
            Self::UnknownTool { .. } => "unknown_tool".to_owned(),
            Self::NotAllowlisted => "not_allowlisted".to_owned(),
            Self::InvalidArguments(_) => "invalid_arguments".to_owned(),
            Self::Policy(code) => format!("policy:{code}"),
            Self::Tainted => "tainted".to_owned(),
            Self::Limited(which) => format!("limited:{which}"),
            Self::ArgumentsTooLarge { .. } => "arguments_too_large".to_owned(),
        }
    }
}

/// What the gate decided about a call, before anything ran or was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// It may run now.
    Allow,
    /// It needs an authorized human approval; `flags` lists the arguments whose value is not
    /// traced to the trusted instruction.
    Hold {
        /// Untrusted or unknown arguments.
        flags: Vec<ArgumentFlag>,
    },
    /// It is refused.
    Deny(DenyReason),
}

/// One agent turn: the agent, the person who asked for it and their session, and what it has
/// read.
#[derive(Debug)]
pub struct Turn {
    policy: Arc<AgentPolicy>,
    context: TenantContext,
    session: Uuid,
    requester: ActorId,
    corpus: Corpus,
    sources: Vec<Source>,
    /// Heuristic injection signals found in the untrusted texts so far (advisory).
    signals: Vec<&'static str>,
    spotlight: Spotlight,
}

impl Turn {
    /// A turn of the agent `policy` describes, requested by `requester` (the signed-in person,
    /// or the job, that asked) through `session`, with `instruction` as the trusted request.
    ///
    /// The requester is recorded with every proposal of the turn and can never approve one of
    /// them, from any session (separation of duties; it cannot be switched off).
    ///
    /// # Errors
    /// [`SandboxError::InvalidRequester`] when `requester` belongs to another tenant than the
    /// agent or is the agent itself; [`SandboxError::NotAnAgent`] cannot happen for a valid
    /// policy.
    pub fn new(
        policy: Arc<AgentPolicy>,
        session: Uuid,
        requester: &Actor,
        instruction: &str,
    ) -> Result<Self, SandboxError> {
        let agent = policy.agent().clone();
        if requester.tenant() != agent.tenant() || requester.id() == agent.id() {
            return Err(SandboxError::InvalidRequester);
        }
        let context = TenantContext::for_job(agent.tenant(), Some(agent), "agent-turn")
            .map_err(|_| SandboxError::NotAnAgent)?;
        Ok(Self {
            policy,
            context,
            session,
            requester: requester.id(),
            corpus: Corpus {
                trusted: vec![instruction.to_owned()],
                untrusted: Vec::new(),
            },
            sources: Vec::new(),
            signals: Vec::new(),
            spotlight: Spotlight::new(),
        })
    }

    /// Adds trusted text (a follow-up from the user, the system prompt).
    pub fn add_trusted(&mut self, text: &str) {
        self.corpus.trusted.push(text.to_owned());
    }

    /// Adds untrusted data (a document the user supplied, a page): the turn is tainted from now
    /// on. Returns the spotlighted text to hand to the model.
    pub fn add_untrusted(&mut self, data: &Untrusted<String>) -> String {
        self.corpus
            .untrusted
            .push((data.untrusted_value().clone(), data.source().clone()));
        if !self.sources.contains(data.source()) {
            self.sources.push(data.source().clone());
        }
        for signal in injection_signals(data.untrusted_value()) {
            if !self.signals.contains(&signal) {
                self.signals.push(signal);
            }
        }
        self.spotlight.mark(data.untrusted_value(), data.source())
    }

    /// Whether untrusted data has entered the turn.
    #[must_use]
    pub fn is_tainted(&self) -> bool {
        !self.sources.is_empty()
    }

    /// Every untrusted source read so far.
    #[must_use]
    pub fn taint_sources(&self) -> &[Source] {
        &self.sources
    }

    /// The agent.
    #[must_use]
    pub fn agent(&self) -> &Actor {
        self.policy.agent()
    }

    /// The session that started the turn.
    #[must_use]
    pub const fn session(&self) -> Uuid {
        self.session
    }

    /// Who requested the turn (never an approver of its proposals).
    #[must_use]
    pub const fn requester(&self) -> ActorId {
        self.requester
    }

    fn labels(&self) -> Vec<String> {
        self.sources.iter().map(Source::label).collect()
    }
}

/// The result of a tool that ran. Its output is untrusted.
#[derive(Debug)]
pub struct ToolRun {
    /// The call id.
    pub call_id: String,
    /// The tool.
    pub tool: String,
    /// The output (capped), or how the tool failed.
    pub result: Result<Untrusted<String>, ToolError>,
    /// Whether the output was cut at the tool's cap.
    pub truncated: bool,
}

/// What happened to a submitted call.
#[derive(Debug)]
#[must_use]
pub enum Submission {
    /// It ran (successfully or not); on success its output has tainted the turn, and
    /// `for_model` is the spotlighted text to hand back.
    Ran {
        /// The run.
        run: ToolRun,
        /// The output spotlighted for the model (or a short error line).
        for_model: String,
    },
    /// It is waiting for an authorized human.
    Held(Proposal),
    /// It was refused.
    Denied(DenyReason),
}

/// A stored proposal, as an approver sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposal {
    /// The proposal id.
    pub id: Uuid,
    /// The tenant.
    pub tenant: TenantId,
    /// The agent that proposed it.
    pub agent: ActorId,
    /// The session (turn) that proposed it.
    pub session: Uuid,
    /// Who requested the turn that proposed it: never its approver.
    pub on_behalf_of: ActorId,
    /// The model's call id.
    pub call_id: String,
    /// The tool.
    pub tool: String,
    /// The tool's version when proposed.
    pub tool_version: u32,
    /// The canonical arguments (exactly what will run).
    pub arguments: String,
    /// The digest an approver confirms.
    pub digest: [u8; 32],
    /// Arguments not traced to the trusted instruction.
    pub flags: Value,
    /// The untrusted sources the turn had read.
    pub taint_sources: Vec<String>,
    /// Heuristic injection warnings (advisory).
    pub warnings: Vec<String>,
    /// The status.
    pub status: ProposalStatus,
    /// When it was proposed.
    pub created_at: OffsetDateTime,
    /// When it expires if undecided.
    pub expires_at: OffsetDateTime,
    /// When the approval expires, once approved.
    pub approval_expires_at: Option<OffsetDateTime>,
}

impl Proposal {
    /// The digest as hex.
    #[must_use]
    pub fn digest_hex(&self) -> String {
        hex::encode(self.digest)
    }
}

/// A consumed approval: the only way to run a call that needed one. It cannot be built, cloned
/// or deserialised outside this crate; [`Gate::consume`] makes it after atomically moving the
/// proposal from `approved` to `executing`, and [`Gate::execute`] uses it up.
#[derive(Debug)]
#[must_use = "a consumed approval runs only through Gate::execute"]
pub struct ApprovedCall {
    proposal: Proposal,
    arguments: Value,
    agent: Actor,
}

impl ApprovedCall {
    /// The proposal being executed.
    pub const fn proposal(&self) -> &Proposal {
        &self.proposal
    }
}

struct Inner {
    registry: Arc<Registry>,
    pool: TenantPool,
    audit: AuditLog,
    approvals: ApprovalPolicy,
    approval_key: ApprovalKey,
    limiter: Limiter,
    egress: Option<GuardedClient>,
    egress_proxy: Option<egress_guard::EgressProxy>,
    max_argument_bytes: usize,
}

/// The gate. Cheap to clone.
#[derive(Clone)]
pub struct Gate {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("registry", &self.inner.registry)
            .field("approvals", &self.inner.approvals)
            .field("max_argument_bytes", &self.inner.max_argument_bytes)
            .finish_non_exhaustive()
    }
}

/// Builds a [`Gate`].
pub struct GateBuilder {
    registry: Arc<Registry>,
    pool: TenantPool,
    audit: AuditLog,
    approval_key: ApprovalKey,
    approvals: ApprovalPolicy,
    limits: CallLimits,
    egress: Option<GuardedClient>,
    egress_proxy: Option<egress_guard::EgressProxy>,
    max_argument_bytes: usize,
}

impl std::fmt::Debug for GateBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GateBuilder").finish_non_exhaustive()
    }
}

impl GateBuilder {
    /// The approval rules (default [`ApprovalPolicy::default`]). Their `approval_ttl` must be
    /// positive and at most [`MAX_APPROVAL_TTL`] (checked by [`GateBuilder::build`]).
    #[must_use]
    pub const fn approvals(mut self, policy: ApprovalPolicy) -> Self {
        self.approvals = policy;
        self
    }

    /// Concurrency and rate limits (default [`CallLimits::default`]).
    #[must_use]
    pub const fn limits(mut self, limits: CallLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The egress-guarded client network tools get (and only they). Without one, network tools
    /// fail with [`ToolError::NoNetwork`].
    #[must_use]
    pub fn egress(mut self, client: GuardedClient) -> Self {
        self.egress = Some(client);
        self
    }

    /// The egress proxy the subprocesses of network tools reach the network through (see
    /// [`SandboxedCommand::egress`](crate::process::SandboxedCommand::egress)); each call's
    /// decisions name the tool as the caller. Without one, a network tool's subprocess is
    /// refused ([`SandboxError::NetworkWithoutEgress`](crate::process::SandboxError)).
    #[must_use]
    pub fn egress_proxy(mut self, proxy: egress_guard::EgressProxy) -> Self {
        self.egress_proxy = Some(proxy);
        self
    }

    /// The most bytes a call's canonical arguments (RFC 8785) may take, for every tool
    /// (default and maximum [`MAX_ARGUMENT_BYTES`], the proposal store's limit). A longer call
    /// is denied with [`DenyReason::ArgumentsTooLarge`] and audited, before its schema is
    /// checked.
    #[must_use]
    pub const fn max_argument_bytes(mut self, bytes: usize) -> Self {
        self.max_argument_bytes = bytes;
        self
    }

    /// Builds the gate.
    ///
    /// # Errors
    /// [`SandboxError::InvalidConfig`] for an argument cap of zero or above
    /// [`MAX_ARGUMENT_BYTES`], an approval window of zero or beyond [`MAX_APPROVAL_TTL`], or
    /// a proposal window of zero.
    pub fn build(self) -> Result<Gate, SandboxError> {
        if self.max_argument_bytes == 0 || self.max_argument_bytes > MAX_ARGUMENT_BYTES {
            return Err(SandboxError::InvalidConfig(
                "the argument cap must be between 1 byte and 64 KiB",
            ));
        }
        let ttl = self.approvals.approval_ttl;
        if ttl.as_micros() == 0 || ttl > MAX_APPROVAL_TTL {
            return Err(SandboxError::InvalidConfig(
                "the approval window must be positive and at most one hour",
            ));
        }
        if self.approvals.proposal_ttl.is_zero() {
            return Err(SandboxError::InvalidConfig(
                "the proposal window must be positive",
            ));
        }
        Ok(Gate {
            inner: Arc::new(Inner {
                registry: self.registry,
                pool: self.pool,
                audit: self.audit,
                approvals: self.approvals,
                approval_key: self.approval_key,
                limiter: Limiter::new(self.limits),
                egress: self.egress,
                egress_proxy: self.egress_proxy,
                max_argument_bytes: self.max_argument_bytes,
            }),
        })
    }
}

/// Truncates `text` to at most `limit` bytes at a character boundary.
fn cap(mut text: String, limit: usize) -> (String, bool) {
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

impl Gate {
    /// A gate over `registry`, storing proposals through `pool` (the runtime role's tenant
    /// pool; run [`schema_sql`](crate::schema_sql) first), auditing every decision to `audit`
    /// and signing approvals with `approval_key` (the same key on every instance that approves
    /// or executes).
    #[must_use]
    pub fn builder(
        registry: Arc<Registry>,
        pool: TenantPool,
        audit: AuditLog,
        approval_key: ApprovalKey,
    ) -> GateBuilder {
        GateBuilder {
            registry,
            pool,
            audit,
            approval_key,
            approvals: ApprovalPolicy::default(),
            limits: CallLimits::default(),
            egress: None,
            egress_proxy: None,
            max_argument_bytes: MAX_ARGUMENT_BYTES,
        }
    }

    /// The registry.
    #[must_use]
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// The approval rules.
    #[must_use]
    pub fn approval_policy(&self) -> &ApprovalPolicy {
        &self.inner.approvals
    }

    /// Decides about `call` without running or storing anything: lookup, allowlist, schema,
    /// policies, taint. This is the gate's own per-call cost.
    #[must_use]
    pub fn check(&self, turn: &Turn, call: &ToolCallRequest) -> Decision {
        self.decide(turn, call).0
    }

    fn decide<'r>(
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

    async fn record_denial(
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

    async fn propose(
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

    async fn run_allowed(
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
    async fn dispatch(
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

    async fn record_failure(
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
    /// clock, and it expires after [`ApprovalPolicy::approval_ttl`]. Audited in the same
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

    async fn decide_proposal(
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

    async fn record_refusal(
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

    async fn expire_locked(
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

    async fn finish(
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

fn egress_event(
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
fn egress_denied_event(
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
struct ProxyDenials(std::sync::Mutex<Vec<egress_guard::Decision>>);

impl ProxyDenials {
    const MAX: usize = 32;

    fn take(&self) -> Vec<egress_guard::Decision> {
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

fn seconds(d: std::time::Duration) -> f64 {
    d.as_secs_f64()
}

async fn db_now(tx: &mut TenantTx) -> Result<OffsetDateTime, SandboxError> {
    let (now,): (OffsetDateTime,) = sqlx::query_as("SELECT now()").fetch_one(&mut **tx).await?;
    Ok(now)
}

async fn lock_proposal(
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

fn event(
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

#[derive(sqlx::FromRow)]
struct ProposalRow {
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

    fn into_proposal(self) -> Result<Proposal, SandboxError> {
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
