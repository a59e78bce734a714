//! The crate's error type.

/// Why the gate, the registry, the approval store or a tool refused or failed.
///
/// Every variant is a refusal: nothing ran, nothing was approved, unless the variant says so.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SandboxError {
    /// A tool name outside the grammar (`[a-z][a-z0-9_]*`, at most 64 bytes).
    #[error("invalid tool name")]
    InvalidToolName,
    /// A tool was registered twice.
    #[error("tool registered twice: {0}")]
    DuplicateTool(String),
    /// A tool's argument schema is unusable: it does not compile, or it is outside the closed
    /// subset of JSON Schema the registry accepts (see `ToolSpec::schema`).
    #[error("invalid argument schema for tool {tool}: {reason}")]
    InvalidSchema {
        /// The tool.
        tool: String,
        /// What is wrong.
        reason: String,
    },
    /// An agent policy names a tool the registry does not have.
    #[error("agent policy names an unregistered tool: {0}")]
    UnknownToolInPolicy(String),
    /// The acting principal cannot run an agent (it must be an `Actor` of kind Agent).
    #[error("the actor is not an agent")]
    NotAnAgent,
    /// The requester of a turn belongs to another tenant than the agent, or is the agent
    /// itself.
    #[error("the requester cannot request this agent's turn")]
    InvalidRequester,
    /// The gate's configuration is unusable (an argument cap of zero or above what the store
    /// accepts, an approval window beyond the database's maximum, a missing random source).
    #[error("invalid configuration: {0}")]
    InvalidConfig(&'static str),
    /// The arguments cannot be canonicalised (a number outside the exactly representable range,
    /// nesting too deep).
    #[error("arguments cannot be canonicalised: {0}")]
    Canonical(&'static str),
    /// The approval was refused; nothing was recorded as approved.
    #[error("approval refused: {}", .0.code())]
    ApprovalRefused(crate::approval::ApprovalRefusal),
    /// A stored proposal row does not decode (it was altered outside this library).
    #[error("stored proposal is malformed")]
    CorruptProposal,
    /// The proposal does not exist in the acting tenant (or is not visible to it).
    #[error("no such proposal")]
    NoSuchProposal,
    /// The audit record of a decision could not be written; the action did not happen.
    #[error("audit record failed: {0}")]
    Audit(#[source] audit_log::AuditError),
    /// The approval store failed (the database is down, or refused the statement).
    #[error("approval store failed: {0}")]
    Store(#[source] rls_guard::RlsError),
    /// The per-agent or per-tenant rate or concurrency limit refused the call.
    #[error("limit reached: {0}")]
    Limited(&'static str),
    /// The tool itself failed.
    #[error("tool failed: {0}")]
    Tool(#[from] ToolError),
}

impl From<sqlx::Error> for SandboxError {
    fn from(error: sqlx::Error) -> Self {
        Self::Store(rls_guard::RlsError::from(error))
    }
}

impl From<rls_guard::RlsError> for SandboxError {
    fn from(error: rls_guard::RlsError) -> Self {
        Self::Store(error)
    }
}

impl From<audit_log::AuditError> for SandboxError {
    fn from(error: audit_log::AuditError) -> Self {
        Self::Audit(error)
    }
}

/// How a tool call failed. The message reaches the audit log and may reach the model: keep it
/// free of secrets.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ToolError {
    /// The call ran past its wall-clock limit and was cancelled.
    #[error("timed out")]
    TimedOut,
    /// The egress guard refused a destination or the HTTP exchange failed.
    #[error("egress: {0}")]
    Egress(#[from] egress_guard::EgressError),
    /// A subprocess could not be run under its limits.
    #[error("sandbox: {0}")]
    Process(#[from] crate::process::SandboxError),
    /// A tool that does not use the network asked for an HTTP client.
    #[error("this tool has no network access")]
    NoNetwork,
    /// The tool reports a failure of its own.
    #[error("{0}")]
    Failed(String),
}

impl ToolError {
    /// A tool's own failure.
    #[must_use]
    pub fn failed(message: impl Into<String>) -> Self {
        Self::Failed(message.into())
    }

    /// A short, stable code for the audit record.
    #[must_use]
    pub const fn code(&self) -> &'static str {
        match self {
            Self::TimedOut => "timed_out",
            Self::Egress(egress_guard::EgressError::Denied { .. }) => "egress_denied",
            Self::Egress(_) => "egress_failed",
            Self::Process(_) => "sandbox_failed",
            Self::NoNetwork => "no_network",
            Self::Failed(_) => "tool_failed",
        }
    }
}
