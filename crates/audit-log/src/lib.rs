//! Tamper-evident, PII-scrubbed audit of privileged actions.
//!
//! The threat: after an incident, nobody can say who did what to which tenant — because the app
//! logged nothing, logged it where an intruder could quietly edit it, or logged the customer
//! data itself. This crate records privileged actions with the application's own actor and
//! tenant (which database-level auditing such as pgAudit cannot see), scrubs personal data and
//! secrets out of the payload *before* anything is stored, and chains each tenant's events
//! with SHA-256 so that an edit, a deletion, a swap or a copied row is found — at its exact
//! sequence number — by [`verify()`], by anyone holding a trusted Ed25519 key; a cut-off tail or
//! a rewrite with recomputed hashes is found against a signed checkpoint.
//!
//! - [`AuditEvent`]: tenant, actor, [`Action`] (see [`actions`] for the vocabulary), targets,
//!   [`Outcome`], request id, client address and user agent (encoded against log injection),
//!   free-form metadata (scrubbed, size-limited). The time is the server's.
//! - [`scrub::Scrubber`]: key denylist, per-action field allowlist, value detectors (emails,
//!   phones, cards with Luhn, JWTs, bearer tokens, cloud keys, PEM, URL credentials, nested
//!   JSON), and drop / mask / keyed per-tenant pseudonyms.
//! - [`AuditLog`]: queues events inside the caller's tenant-bound transaction (atomic with the
//!   action) or in its own, without any tenant-wide lock, on a queue the runtime role can only
//!   insert into ([`schema`]); [`Sequencer`], a role of its own that can only call
//!   `audit.sequence`, chains them in batches off the request path: the database assigns the
//!   gapless sequence and the chain hash.
//! - [`CheckpointSigner`] / [`TrustedKeys`]: signed checkpoints to export elsewhere;
//!   [`prove`] / [`InclusionProof`]: show one event is in the chain under a signed checkpoint;
//!   [`AuditLog::prune`]: retention that keeps the chain verifiable.
//! - [`AuditQuery`], [`export_jsonl`], [`export_csv`], [`verify_export`]: query, export and
//!   offline verification.
//! - [`AuditLayer`] / [`Audit`]: a tower middleware that audits privileged routes, denials by later layers
//!   included. [`AuditLog`] is also the [`tenant_scope::CrossTenantAudit`] hook.
//!
//! What the chain does *not* prove: a database owner or superuser can rewrite everything after
//! the last checkpoint that was exported out of their reach. Export checkpoints often.
//!
//! ```no_run
//! # async fn demo(pool: rls_guard::TenantPool, tenant: tenant_scope::TenantId,
//! #               actor: tenant_scope::Actor) -> Result<(), audit_log::AuditError> {
//! use audit_log::{AuditActor, AuditEvent, AuditLog, Outcome, Target, actions};
//! use audit_log::scrub::{ScrubPolicy, Scrubber};
//!
//! let log = AuditLog::new(pool, Scrubber::new(ScrubPolicy::new(), Vec::new())?);
//! let event = AuditEvent::new(tenant, AuditActor::from_actor(&actor),
//!                             actions::DATA_EXPORTED, Outcome::Allowed)
//!     .with_target(Target::new("export", "2026-11"))?
//!     .with_metadata(serde_json::json!({ "rows": 120, "requested_by": "ops@example.com" }))?;
//! let queued = log.record(event).await?; // the email is masked before it is stored
//! # let _ = queued; Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod canonical;
mod checkpoint;
mod error;
mod event;
#[cfg(feature = "axum")]
mod extract;
pub mod future;
mod hooks;
mod layer;
mod proof;
mod query;
mod retention;
pub mod schema;
pub mod scrub;
pub mod sequencer;
mod sink;
mod verify;

pub use canonical::{ChainHash, chain_hash, format_time, genesis_hash};
pub use checkpoint::{Acknowledgement, Checkpoint, CheckpointKey, CheckpointSigner, TrustedKeys};
pub use error::AuditError;
pub use event::{
    Action, AuditActor, AuditEvent, MAX_ACTION_BYTES, MAX_IDENTIFIER_BYTES, MAX_METADATA_BYTES,
    MAX_RECORD_BYTES, MAX_TARGETS, MAX_USER_AGENT_BYTES, Outcome, SCHEMA_VERSION, Target, actions,
    encode_text, normalize_text,
};
pub use layer::{Audit, AuditHandle, AuditLayer, DenialReason};
pub use proof::{InclusionProof, prove};
pub use query::{
    AuditQuery, EXPORT_FORMAT, ExportSummary, StoredEvent, export_csv, export_jsonl, verify_export,
};
pub use retention::PruneReport;
/// The [`secrecy`] crate, re-exported: keys are passed in and handed out as
/// [`SecretBox`](secrecy::SecretBox).
pub use secrecy;
pub use sequencer::{Sequencer, SequencerHandle};
pub use sink::{AuditLog, Queued};
pub use verify::{BreakKind, ChainBreak, VerifyReport, verify};

// The README's code blocks compile as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
