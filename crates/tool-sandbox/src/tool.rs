//! What a tool implementation sees: its context, its arguments, and nothing else.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use egress_guard::GuardedClient;
use serde_json::Value;
use tenant_scope::{Actor, TenantContext};

use crate::ToolError;
use crate::model::BoxFuture;
use crate::process::{ProcessLimits, SandboxedCommand};

/// A tool implementation. It runs only after the gate allowed the call (or a human approved
/// it), with arguments that passed its schema, under its limits.
pub trait Tool: Send + Sync + 'static {
    /// Runs one call.
    fn call(
        &self,
        context: ToolContext,
        arguments: Value,
    ) -> BoxFuture<'_, Result<ToolOutput, ToolError>>;
}

/// A tool from an async closure.
pub fn tool_fn<F, Fut>(f: F) -> Arc<dyn Tool>
where
    F: Fn(ToolContext, Value) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<ToolOutput, ToolError>> + Send + 'static,
{
    Arc::new(ToolFn(f))
}

struct ToolFn<F>(F);

impl<F, Fut> Tool for ToolFn<F>
where
    F: Fn(ToolContext, Value) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<ToolOutput, ToolError>> + Send + 'static,
{
    fn call(
        &self,
        context: ToolContext,
        arguments: Value,
    ) -> BoxFuture<'_, Result<ToolOutput, ToolError>> {
        Box::pin((self.0)(context, arguments))
    }
}

/// A tool's result, before the gate caps it and marks it untrusted.
///
/// Built with [`ToolOutput::text`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ToolOutput {
    /// The text handed back (to the model, spotlighted, and to the caller).
    pub content: String,
}

impl ToolOutput {
    /// A text result.
    #[must_use]
    pub fn text(content: impl Into<String>) -> Self {
        Self {
            content: content.into(),
        }
    }
}

/// What one call may use: the tenant and agent it runs for, an egress-guarded HTTP client if
/// (and only if) the tool is declared as using the network, and sandboxed subprocesses.
#[derive(Debug, Clone)]
pub struct ToolContext {
    pub(crate) tenant: TenantContext,
    pub(crate) agent: Actor,
    pub(crate) call_id: String,
    pub(crate) http: Option<GuardedClient>,
    pub(crate) proxy: Option<egress_guard::EgressProxy>,
    pub(crate) network: bool,
    pub(crate) process: ProcessLimits,
}

impl ToolContext {
    /// The tenant context (bound to the agent): open `rls-guard` transactions with it.
    #[must_use]
    pub const fn tenant(&self) -> &TenantContext {
        &self.tenant
    }

    /// The agent the call runs for.
    #[must_use]
    pub const fn agent(&self) -> &Actor {
        &self.agent
    }

    /// The call's id (from the model, or the proposal's id for an approved call).
    #[must_use]
    pub fn call_id(&self) -> &str {
        &self.call_id
    }

    /// The egress-guarded HTTP client: the only client a tool gets.
    ///
    /// # Errors
    /// [`ToolError::NoNetwork`] when the tool is not declared as using the network, or the
    /// gate has no egress client configured.
    pub fn http(&self) -> Result<&GuardedClient, ToolError> {
        self.http.as_ref().ok_or(ToolError::NoNetwork)
    }

    /// A subprocess under the tool's limits: its own namespaces (a network namespace with no
    /// interface, or for a tool that uses the network only loopback and the gate's egress
    /// proxy), cleared environment, its own process group, rlimits, `no_new_privs`, seccomp (no
    /// inet sockets unless the tool uses the network) and Landlock where the kernel has it. A
    /// network tool's subprocess is refused when the gate has no egress proxy. See
    /// [`crate::process`].
    #[must_use]
    pub fn command(&self, program: impl AsRef<Path>) -> SandboxedCommand {
        let command = SandboxedCommand::new(program)
            .network(self.network)
            .limits(self.process);
        match &self.proxy {
            Some(proxy) => command.egress(proxy.clone()),
            None => command,
        }
    }
}
