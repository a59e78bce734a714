//! PostgreSQL row-level security as the second layer of tenant isolation.
//!
//! `tenant-scope` makes the application scope every request to one tenant. This crate makes
//! PostgreSQL refuse other tenants' rows even when the application forgets a `WHERE tenant_id`
//! or has a bug:
//!
//! - [`TenantPool`] / [`TenantTx`]: the only way to touch tenant tables is a transaction bound
//!   to a [`TenantContext`](tenant_scope::TenantContext) — `BEGIN` and
//!   `SET LOCAL app.tenant_id = ..` in one round trip; at `COMMIT` (same round trip as the
//!   restated binding) a deferred trigger refuses any written row of another tenant; no tenant
//!   outlives the transaction on a pooled connection.
//! - [`TenantPool::read`] / [`BoundRead`]: one `SELECT` bound to the tenant in one round trip,
//!   for hot read paths (static SQL only; writes refused).
//! - [`schema`]: the support functions and the helper that makes a table tenant-safe
//!   (ENABLE + FORCE, restrictive and permissive policies with `USING` and `WITH CHECK`, the
//!   deferred binding-check trigger, an index leading with `tenant_id`), plus guidance on
//!   composite keys.
//! - [`verify_runtime_role`]: refuse to run as a superuser, a BYPASSRLS or CREATEROLE role, a
//!   member of a superuser or BYPASSRLS role, or the owner of a protected table.
//! - [`CoverageCheck`] and the `rls-guard check` command: structured findings for every table,
//!   view, function and materialized view that lets rows escape.
//! - `axum` feature: handlers take a [`TenantTx`] argument.
//!
//! An unset or empty tenant setting matches no row and fails every write; a malformed one is an
//! error. A database that cannot be reached is an error (HTTP 503), never an unscoped fallback.
//!
//! ```no_run
//! # async fn run(pool: sqlx::PgPool, ctx: tenant_scope::TenantContext) -> Result<(), rls_guard::RlsError> {
//! use rls_guard::TenantPool;
//! let db = TenantPool::new(pool).await?;          // refuses an RLS-bypassing role
//! let mut tx = db.begin(&ctx).await?;              // BEGIN + bind, one round trip
//! let names: Vec<String> = sqlx::query_scalar("SELECT name FROM projects")
//!     .fetch_all(&mut *tx).await?;                 // only this tenant's rows, whatever the SQL
//! tx.commit().await?;                              // restated binding + COMMIT, one round trip
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "axum")]
mod axum;
mod coverage;
mod error;
mod key;
mod pool;
mod read;
mod role;
pub mod schema;
mod support;

pub use coverage::{CoverageCheck, Finding, FindingKind};
pub use error::{RlsError, is_unavailable};
pub use key::{BindingKey, SignedBinding};
pub use pool::{TenantPool, TenantTx};
pub use read::BoundRead;
pub use role::{RoleProblem, verify_runtime_role};
pub use support::verify_support_schema;
