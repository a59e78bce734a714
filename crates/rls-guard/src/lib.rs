//! PostgreSQL row-level security as the second layer of tenant isolation.
//!
//! `tenant-scope` makes the application scope every request to one tenant. This crate makes
//! PostgreSQL refuse other tenants' rows even when the application forgets a `WHERE tenant_id`
//! or has a bug:
//!
//! - [`TenantPool`] / [`TenantTx`]: the only way to touch tenant tables is a transaction bound
//!   to a [`TenantContext`](tenant_scope::TenantContext). At `COMMIT` every row the transaction
//!   wrote must belong to its tenant (a deferred per-row check, and a record of every write that
//!   only the owner's triggers can make); the connection is handed back with every session-level
//!   change undone.
//! - [`TenantPool::read`] / [`BoundRead`]: one `SELECT` bound to the tenant in one round trip,
//!   for hot read paths (static SQL only; writes and `set_config` refused).
//! - Signed bindings ([`schema::ENABLE_SIGNED_BINDINGS_SQL`], [`TenantPool::with_binding_key`],
//!   [`BindingKey`]): policies count the tenant only under a proof that `app.bind` made from an
//!   application signature, tied to this connection and transaction, so SQL that sets the tenant
//!   by itself (injected `set_config`, a stacked `COMMIT; BEGIN`) binds nothing.
//! - [`schema`]: the support functions, pinned, and the helper that makes a table tenant-safe
//!   (ENABLE + FORCE, restrictive and permissive policies with `USING` and `WITH CHECK`, the
//!   binding triggers, an index leading with `tenant_id`), plus guidance on composite keys.
//! - [`verify_runtime_role`] and [`verify_support_schema`], run by [`TenantPool::new`]: refuse a
//!   runtime role that could bypass row-level security or switch the controls around it off
//!   (see [`RoleProblem`]), and a support schema that differs from what this crate installs.
//! - [`CoverageCheck`] and the `rls-guard check` command: structured findings for every table,
//!   view, function, trigger and key that lets rows escape, with the policies probed as the
//!   runtime role in a transaction that is rolled back.
//! - [`SessionLiveness`] ([`TenantPool::with_session_liveness`]): the binding of a context
//!   whose actor acts through a session asks the database whether the session is still live,
//!   in the same statement, so a revoked session reads and writes nothing on any instance.
//! - `axum` feature: handlers take a [`TenantTx`] argument.
//!
//! An unset or empty tenant setting matches no row and fails every write; a malformed one is an
//! error. A database that cannot be reached is an error (HTTP 503), never an unscoped fallback.
//!
//! ```no_run
//! # async fn run(pool: sqlx::PgPool, ctx: tenant_scope::TenantContext) -> Result<(), rls_guard::RlsError> {
//! use rls_guard::TenantPool;
//! let db = TenantPool::new(pool).await?;          // refuses an RLS-bypassing role
//! let mut tx = db.begin(&ctx).await?;              // BEGIN + bind
//! let names: Vec<String> = sqlx::query_scalar("SELECT name FROM projects")
//!     .fetch_all(&mut *tx).await?;                 // only this tenant's rows, whatever the SQL
//! tx.commit().await?;                              // checked COMMIT + hand-back, one round trip
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "axum")]
mod axum;
mod coverage;
mod error;
mod key;
mod lane;
mod liveness;
mod pool;
mod read;
mod role;
pub mod schema;
mod support;

pub use coverage::{CoverageCheck, Finding, FindingKind};
pub use error::{RlsError, is_unavailable};
pub use key::{BindingKey, SignedBinding};
pub use liveness::SessionLiveness;
pub use pool::{CommitCheck, CommitReceipt, TenantPool, TenantTx};
pub use read::BoundRead;
pub use role::{ALLOWED_SESSION_DEFAULTS, RoleProblem, verify_runtime_role};
/// The [`secrecy`] crate, re-exported: [`BindingKey::from_bytes`] takes a
/// [`SecretSlice`](secrecy::SecretSlice).
pub use secrecy;
pub use support::verify_support_schema;

// The README's code blocks compile as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
