//! Per-agent allowlists and policies.
//!
//! Evaluation order for a call (first refusal wins):
//! 1. the tool must be registered under exactly the requested name;
//! 2. it must be on the agent's allowlist — a call outside it is denied and can never become a
//!    proposal, so no approval can bring it into existence;
//! 3. the arguments must satisfy the tool's schema (no extra fields, no out-of-range values) —
//!    also not approvable;
//! 4. the policies: any `Deny` denies, else any `RequireApproval` holds, else any `Allow`
//!    allows; when no policy matches, a read-only tool is allowed and a tool with effects is
//!    denied; a policy that fails denies;
//! 5. a [`Sensitive`](crate::Effect::Sensitive) tool is never allowed outright: `Allow`
//!    becomes `RequireApproval`;
//! 6. taint: once untrusted data has entered the turn, a tool with effects, and a network tool
//!    with any argument not traced to the trusted instruction, needs approval (or is denied,
//!    with [`TaintRule::Deny`]).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use serde_json::Value;
use tenant_scope::{Actor, ActorKind};

use crate::SandboxError;
use crate::name::ToolName;
use crate::registry::ToolSpec;

/// A policy's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Run it.
    Allow,
    /// Hold it for an authorized human.
    RequireApproval,
    /// Refuse it, with a short reason code.
    Deny(String),
}

/// What a policy sees about a call.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct CallView<'a> {
    /// The agent.
    pub agent: &'a Actor,
    /// The tool's declaration.
    pub tool: &'a ToolSpec,
    /// The (schema-valid) arguments.
    pub arguments: &'a Value,
    /// Whether untrusted data has entered the turn.
    pub tainted: bool,
}

/// A policy: a function of (context, tool, arguments). `Ok(None)` means "not mine"; an error
/// denies the call.
pub trait Policy: Send + Sync + 'static {
    /// Decides about one call.
    ///
    /// # Errors
    /// Any error: the call is denied (`policy_error`).
    fn evaluate(&self, call: &CallView<'_>) -> Result<Option<Verdict>, PolicyError>;
}

/// A policy could not be evaluated.
#[derive(Debug, thiserror::Error)]
#[error("policy could not be evaluated: {0}")]
pub struct PolicyError(pub String);

impl<F> Policy for F
where
    F: Fn(&CallView<'_>) -> Option<Verdict> + Send + Sync + 'static,
{
    fn evaluate(&self, call: &CallView<'_>) -> Result<Option<Verdict>, PolicyError> {
        Ok(self(call))
    }
}

/// What taint does to a tool that would otherwise run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum TaintRule {
    /// Hold it for approval (default).
    #[default]
    RequireApproval,
    /// Deny it.
    Deny,
}

/// An agent and what it may do: its allowlist, its policies and its taint rule.
#[derive(Clone)]
pub struct AgentPolicy {
    pub(crate) agent: Actor,
    pub(crate) allowed: BTreeSet<ToolName>,
    pub(crate) general: Vec<Arc<dyn Policy>>,
    pub(crate) per_tool: HashMap<ToolName, Vec<Arc<dyn Policy>>>,
    pub(crate) on_taint: TaintRule,
}

impl std::fmt::Debug for AgentPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentPolicy")
            .field("agent", &self.agent)
            .field("allowed", &self.allowed)
            .field("on_taint", &self.on_taint)
            .finish_non_exhaustive()
    }
}

impl AgentPolicy {
    /// The policy of `agent`, which must be an actor of kind Agent. It may call nothing yet.
    ///
    /// # Errors
    /// [`SandboxError::NotAnAgent`] for any other kind of actor.
    pub fn new(agent: Actor) -> Result<Self, SandboxError> {
        if agent.kind() != ActorKind::Agent {
            return Err(SandboxError::NotAnAgent);
        }
        Ok(Self {
            agent,
            allowed: BTreeSet::new(),
            general: Vec::new(),
            per_tool: HashMap::new(),
            on_taint: TaintRule::default(),
        })
    }

    /// Adds tools to the allowlist (exact names).
    ///
    /// # Errors
    /// [`SandboxError::InvalidToolName`] for a name outside the grammar.
    pub fn allow_tools<'a>(
        mut self,
        names: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, SandboxError> {
        for name in names {
            self.allowed.insert(ToolName::parse(name)?);
        }
        Ok(self)
    }

    /// A policy consulted for every call.
    #[must_use]
    pub fn policy(mut self, policy: impl Policy) -> Self {
        self.general.push(Arc::new(policy));
        self
    }

    /// A policy consulted for calls of `tool` only.
    ///
    /// # Errors
    /// [`SandboxError::InvalidToolName`].
    pub fn policy_for(mut self, tool: &str, policy: impl Policy) -> Result<Self, SandboxError> {
        self.per_tool
            .entry(ToolName::parse(tool)?)
            .or_default()
            .push(Arc::new(policy));
        Ok(self)
    }

    /// A policy that holds every call of these tools for approval: the usual way to let an agent
    /// *propose* sensitive actions (without any policy, a tool with effects is denied).
    ///
    /// # Errors
    /// [`SandboxError::InvalidToolName`].
    pub fn require_approval_for<'a>(
        mut self,
        tools: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, SandboxError> {
        for tool in tools {
            self = self.policy_for(tool, |_: &CallView<'_>| Some(Verdict::RequireApproval))?;
        }
        Ok(self)
    }

    /// What taint does (default: require approval).
    #[must_use]
    pub const fn on_taint(mut self, rule: TaintRule) -> Self {
        self.on_taint = rule;
        self
    }

    /// The agent.
    #[must_use]
    pub const fn agent(&self) -> &Actor {
        &self.agent
    }

    /// Whether `tool` is on the allowlist.
    #[must_use]
    pub fn allows(&self, tool: &ToolName) -> bool {
        self.allowed.contains(tool)
    }

    /// Steps 4 and 5 of the evaluation order (the policies and the sensitive floor).
    pub(crate) fn evaluate(&self, call: &CallView<'_>) -> Verdict {
        let specific = self.per_tool.get(call.tool.name());
        let policies = self.general.iter().chain(specific.into_iter().flatten());
        let (mut allow, mut hold) = (false, false);
        for policy in policies {
            match policy.evaluate(call) {
                Ok(None) => {}
                Ok(Some(Verdict::Allow)) => allow = true,
                Ok(Some(Verdict::RequireApproval)) => hold = true,
                Ok(Some(deny @ Verdict::Deny(_))) => return deny,
                Err(error) => {
                    tracing::warn!(%error, tool = %call.tool.name(), "policy failed: call denied");
                    return Verdict::Deny("policy_error".to_owned());
                }
            }
        }
        let verdict = if hold {
            Verdict::RequireApproval
        } else if allow || !call.tool.effect().has_effects() {
            Verdict::Allow
        } else {
            return Verdict::Deny("no_policy".to_owned());
        };
        if verdict == Verdict::Allow && call.tool.effect() == crate::Effect::Sensitive {
            return Verdict::RequireApproval;
        }
        verdict
    }
}
