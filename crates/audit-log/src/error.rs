//! The crate's error type.

use crate::scrub::ScrubError;

/// Why an audit operation failed. A failed append means the event was not recorded: callers that
/// append inside their own transaction roll the privileged action back with it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// An action name outside the grammar (`segment.segment[.segment]`, lowercase ASCII letters,
    /// digits and `_`, at most 64 bytes).
    #[error("invalid audit action name")]
    InvalidAction,
    /// An event field broke a limit (too many targets, an over-long identifier, metadata that
    /// is not a JSON object).
    #[error("invalid audit event: {0}")]
    InvalidEvent(&'static str),
    /// The scrubber refused the metadata.
    #[error("scrubbing failed: {0}")]
    Scrub(#[from] ScrubError),
    /// The database refused or could not be reached.
    #[error("audit database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The tenant-bound transaction could not be opened or committed.
    #[error("audit transaction error: {0}")]
    Transaction(#[from] rls_guard::RlsError),
    /// The hash the database computed for an appended event is not the one this library computes:
    /// the schema is not the one this version installs. The append is refused.
    #[error("the audit chain in the database does not match this library's chain format")]
    ChainFormatMismatch,
    /// The group of events this one was written with could not be written (none was
    /// recorded); the cause is logged once for the group.
    #[error("the audit group could not be written")]
    Batch {
        /// Whether the store could not be reached.
        unavailable: bool,
    },
    /// The chain does not verify, so it is not signed (see [`crate::verify()`]).
    #[error("the audit chain does not verify: {0}")]
    ChainBroken(crate::ChainBreak),
    /// There is no unacknowledged break to acknowledge, or none the chain can continue past
    /// (a truncated tail, a rewrite caught by a checkpoint).
    #[error("the chain has no break that can be acknowledged")]
    NothingToAcknowledge,
    /// No trusted checkpoint covers the event yet: checkpoint first, then prove.
    #[error("no trusted checkpoint covers this event yet")]
    NotCheckpointed,
    /// The configuration is unusable (a role name, a retention period).
    #[error("invalid audit configuration: {0}")]
    InvalidConfig(&'static str),
    /// An internal task failed (the verification thread panicked or was cancelled).
    #[error("an internal audit task failed")]
    TaskFailed,
    /// A stored or exported record could not be decoded.
    #[error("malformed audit record: {0}")]
    Malformed(&'static str),
    /// A checkpoint key could not be created or parsed.
    #[error("invalid checkpoint key")]
    InvalidKey,
    /// Writing an export failed.
    #[error("export failed: {0}")]
    Export(#[from] std::io::Error),
}

impl AuditError {
    /// Whether the failure means the audit store could not be reached (answer 503), as opposed
    /// to a refusal or a bug.
    #[must_use]
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Database(e) => rls_guard::is_unavailable(e),
            Self::Transaction(e) => e.is_unavailable(),
            Self::Batch { unavailable } => *unavailable,
            _ => false,
        }
    }
}
