//! Agent tool security: an agent can call only the tools on its allowlist, with arguments its
//! tools' schemas accept, under resource limits; data it reads from untrusted sources can never
//! give it more abilities; and nothing the model says can trigger a sensitive action — an
//! authorized human approves a stored, digest-bound proposal first.
//!
//! The pieces, in the order a call meets them:
//!
//! - [`Registry`]: tools declared with an exact name ([`ToolName`]: look-alikes are unknown), a
//!   version, a strict JSON Schema (extra fields refused), an [`Effect`] class and whether they
//!   use the network.
//! - [`AgentPolicy`]: an agent ([`tenant_scope::Actor`] of kind Agent), its allowlist and its
//!   [`Policy`] functions. A call outside the allowlist is denied before anything else and can
//!   never be approved into existence.
//! - Taint ([`taint`]): tool output and documents are [`Untrusted`] with their [`Source`]; once
//!   a [`Turn`] has read any, tools with effects (and network tools with arguments not traced to
//!   the user's own instruction) need approval.
//! - [`Gate`]: decides, audits every decision to `audit-log`, runs allowed calls under limits
//!   ([`CallLimits`], [`ToolLimits`], subprocesses through [`process`]) and stores the rest as
//!   [`Proposal`]s in PostgreSQL with row-level security.
//! - Approval ([`approval`]): only an authenticated human [`Approver`] with a fresh second
//!   factor, never the agent, the proposing session or the turn's requester; bound to a digest
//!   of tenant, agent, session, tool, version and the RFC 8785 canonical arguments
//!   ([`canonical`]); signed with the gate's [`ApprovalKey`], so a status written by hand in
//!   the database never runs; expiring; consumed exactly once into an [`ApprovedCall`], the
//!   only way to run it.
//! - Models ([`model`]): a [`Model`](model::Model) proposes tool calls and nothing else.
//!
//! ```no_run
//! # async fn demo(pool: rls_guard::TenantPool, audit: audit_log::AuditLog,
//! #               agent: tenant_scope::Actor, user: tenant_scope::Actor, session: uuid::Uuid,
//! #               approval_secret: [u8; 32]) -> Result<(), tool_sandbox::SandboxError> {
//! use std::sync::Arc;
//! use serde_json::json;
//! use tool_sandbox::{
//!     AgentPolicy, ApprovalKey, Effect, Gate, Registry, Submission, ToolOutput, ToolSpec, Turn,
//!     tool_fn,
//! };
//! use tool_sandbox::model::ToolCallRequest;
//!
//! let registry = Registry::builder()
//!     .tool(
//!         ToolSpec::new("send_email", 1, Effect::Sensitive)?.schema(json!({
//!             "type": "object", "additionalProperties": false, "required": ["to", "body"],
//!             "properties": {"to": {"type": "string", "format": "email"}, "body": {"type": "string"}}
//!         })),
//!         tool_fn(|_ctx, _args| async { Ok(ToolOutput::text("sent")) }),
//!     )
//!     .build()?;
//! // The approval key lives outside the database, like the application's other keys.
//! let key = ApprovalKey::from_bytes(Box::new(approval_secret))?;
//! let gate = Gate::builder(Arc::new(registry), pool, audit, key).build()?;
//! let policy = Arc::new(AgentPolicy::new(agent)?.allow_tools(["send_email"])?);
//! // `user` asked, through `session`: they can never approve this turn's proposals.
//! let mut turn = Turn::new(policy, session, &user, "email bob@example.com the summary")?;
//! let call = ToolCallRequest::new(
//!     "call_1",
//!     "send_email",
//!     json!({"to": "bob@example.com", "body": "..."}),
//! );
//! match gate.submit(&mut turn, call).await? {
//!     Submission::Held(proposal) => println!("waiting for approval: {}", proposal.id),
//!     other => println!("{other:?}"),
//! }
//! # Ok(()) }
//! ```
#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod approval;
pub mod canonical;
mod error;
mod gate;
mod limits;
pub mod model;
mod name;
mod policy;
pub mod process;
mod registry;
pub mod taint;
mod tool;

pub use approval::{
    ApprovalKey, ApprovalPolicy, ApprovalRefusal, Approver, Approvers, AsTenantAdmin,
    MAX_APPROVAL_TTL, ProposalStatus, coverage_trust, schema_sql,
};
pub use error::{SandboxError, ToolError};
pub use gate::{
    ApprovedCall, Decision, DenyReason, Gate, GateBuilder, MAX_ARGUMENT_BYTES, Proposal,
    Submission, ToolRun, Turn,
};
pub use limits::CallLimits;
pub use name::{MAX_TOOL_NAME, ToolName};
pub use policy::{AgentPolicy, CallView, Policy, PolicyError, TaintRule, Verdict};
pub use registry::{Effect, Registry, RegistryBuilder, ToolLimits, ToolSpec};
/// The [`secrecy`] crate, re-exported: [`ApprovalKey::from_bytes`] takes a
/// [`SecretBox`](secrecy::SecretBox), [`OpenAiCompatible::api_key`](model::OpenAiCompatible::api_key)
/// a [`SecretString`](secrecy::SecretString).
pub use secrecy;
pub use taint::{ArgumentFlag, Provenance, Source, Untrusted};
pub use tool::{Tool, ToolContext, ToolOutput, tool_fn};
