//! Errors.

use std::path::PathBuf;

/// Why a test database could not be provided. Messages say how to fix the machine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TestkitError {
    /// Neither PostgreSQL binaries nor `DATABASE_URL` are available.
    #[error(
        "testkit: no PostgreSQL server binaries found (looked for `initdb` and `postgres` in \
         $TESTKIT_PG_BIN, on $PATH and under /usr/lib/postgresql/*/bin; searched: {searched}). \
         Fix it one of two ways: (1) install PostgreSQL 15 or newer so that `initdb` and \
         `postgres` exist (Debian/Ubuntu: `sudo apt-get install postgresql`; Fedora: `sudo dnf \
         install postgresql-server`; macOS: `brew install postgresql@16`), or point \
         TESTKIT_PG_BIN at the directory holding them; or (2) set \
         DATABASE_URL=postgres://USER:PASSWORD@HOST:PORT/postgres for a running PostgreSQL 15+ \
         whose role may CREATE DATABASE and CREATE ROLE. Tests never skip when PostgreSQL is \
         missing."
    )]
    NoPostgres {
        /// The places that were searched.
        searched: String,
    },
    /// Running as root, but no unprivileged OS user to run PostgreSQL as was found.
    #[error(
        "testkit: running as root and no unprivileged user `{0}` exists to run PostgreSQL \
         (initdb refuses root); create one or set TESTKIT_PG_OS_USER to an existing user"
    )]
    NoUnprivilegedUser(String),
    /// A filesystem or process operation failed.
    #[error("testkit: {context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// `initdb` failed.
    #[error("testkit: initdb failed ({status}); its output:\n{output}")]
    Initdb {
        /// Exit status.
        status: String,
        /// What it printed.
        output: String,
    },
    /// The server did not start.
    #[error("testkit: PostgreSQL did not start: {reason}; server log {log}:\n{tail}")]
    Start {
        /// Why we gave up.
        reason: String,
        /// Where the log is.
        log: PathBuf,
        /// The end of the log.
        tail: String,
    },
    /// PgBouncer is not installed (tests of transaction pooling need it).
    #[error(
        "testkit: PgBouncer not found at {0}; install it (Debian/Ubuntu: `sudo apt-get install \
         pgbouncer`) or set TESTKIT_PGBOUNCER to its path. Tests never skip when it is missing."
    )]
    NoPgBouncer(String),
    /// `DATABASE_URL` is set but unusable.
    #[error("testkit: DATABASE_URL is not a usable PostgreSQL URL: {0}")]
    DatabaseUrl(String),
    /// A SQL command against the test server failed.
    #[error("testkit: {context}: {source}")]
    Sql {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: sqlx::Error,
    },
}

impl TestkitError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| Self::Io { context, source }
    }

    pub(crate) fn sql(context: impl Into<String>) -> impl FnOnce(sqlx::Error) -> Self {
        let context = context.into();
        move |source| Self::Sql { context, source }
    }
}

impl TestkitError {
    /// Whether the machine lacks a program the tests need (PostgreSQL, an unprivileged user to
    /// run it as, PgBouncer): nothing a test can do about, and the message names the fix.
    #[must_use]
    pub const fn is_missing_prerequisite(&self) -> bool {
        matches!(
            self,
            Self::NoPostgres { .. } | Self::NoUnprivilegedUser(_) | Self::NoPgBouncer(_)
        )
    }
}
