//! A real PostgreSQL for the workspace's tests and the reference app.
//!
//! Security tests that run against a mock prove nothing about row-level security, role
//! privileges or transaction-local settings. This crate gives every test a real server:
//!
//! - `DATABASE_URL` when set (a PostgreSQL 15+ whose role may CREATE DATABASE and CREATE ROLE);
//! - otherwise a throwaway cluster started from the local binaries on a private Unix socket,
//!   as an unprivileged OS user when the tests run as root (initdb refuses root). It starts from
//!   a cached initdb copy, is shared by the tests of one binary, and is stopped and removed when
//!   the process exits — and killed with it if the process dies.
//!
//! Each test gets a fresh database copied from a migrated template ([`fresh_database`]), with two
//! roles: [`OWNER_ROLE`] runs migrations and owns the tables, [`RUNTIME_ROLE`] is what the
//! application connects as (LOGIN, NOSUPERUSER, NOBYPASSRLS, owns nothing).
//!
//! With neither binaries nor `DATABASE_URL`, [`fresh_database`] panics with a message saying how
//! to fix the machine. Tests never silently pass.
//!
//! ```no_run
//! # async fn example() {
//! use testkit::{Role, Template, fresh_database};
//! let template = Template::new("notes", "CREATE TABLE notes (id int PRIMARY KEY);
//!     GRANT SELECT ON notes TO testkit_runtime;");
//! let db = fresh_database(&template).await;
//! let pool = db.pool(Role::Runtime, 4).await;
//! let n: i64 = sqlx::query_scalar("SELECT count(*) FROM notes").fetch_one(&pool).await.unwrap();
//! assert_eq!(n, 0);
//! # }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]
// Test support: a test whose database cannot be provided must fail loudly, so the convenience
// functions panic with a message that says how to fix the machine (the `try_` forms return
// errors instead).
#![allow(clippy::panic)]

mod binaries;
mod cluster;
mod error;
mod pgbouncer;
mod prerequisite;
mod server;
mod sys;

pub use binaries::PgBinaries;
pub use cluster::{ADMIN_ROLE, ClusterOptions, PgCluster};
pub use error::TestkitError;
pub use pgbouncer::{PgBouncer, PoolMode};
pub use prerequisite::{missing_prerequisite, require};
pub use server::{
    CHECKPOINTER_ROLE, OWNER_ROLE, RUNTIME_ROLE, Role, Template, TestDb, TestServer,
    fresh_database, try_fresh_database,
};

// The README's code blocks compile as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
