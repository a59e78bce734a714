//! The gate: every proposed tool call passes through it, and it is the only way to run a tool.

use std::sync::Arc;

use audit_log::AuditLog;
use egress_guard::GuardedClient;
use rls_guard::TenantPool;
use serde_json::Value;
use tenant_scope::{Actor, ActorId, TenantContext, TenantId};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::approval::{ApprovalKey, ApprovalPolicy, MAX_APPROVAL_TTL, ProposalStatus};
use crate::limits::{CallLimits, Limiter};
use crate::policy::AgentPolicy;
use crate::registry::Registry;
use crate::taint::{ArgumentFlag, Corpus, Source, Spotlight, Untrusted, injection_signals};
use crate::{SandboxError, ToolError};

mod approvals;
mod audit;
mod decide;
mod dispatch;

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
    /// The turn is tainted and the agent's taint rule is [`TaintRule::Deny`](crate::TaintRule::Deny).
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
#[non_exhaustive]
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
#[non_exhaustive]
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
}

pub(super) fn seconds(d: std::time::Duration) -> f64 {
    d.as_secs_f64()
}
