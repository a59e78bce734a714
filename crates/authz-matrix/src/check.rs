//! Running a matrix against a router: completeness both ways, then every cell.

use std::collections::BTreeSet;
use std::fmt;

use http::{Method, StatusCode};

use crate::router::Endpoint;
use crate::table::Matrix;

/// One cell to check: send `method` to `path` as `role`, and say what status came back.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Cell {
    /// The role of the column: make a fresh session (or whatever the role presents) for it.
    pub role: String,
    /// The method of the row.
    pub method: Method,
    /// The path template of the row (`/notes/{id}`): fill its parameters with fresh fixtures.
    pub path: String,
    /// The status the table expects (for logging; the check compares it).
    pub expected: StatusCode,
    /// The row's line in the table.
    pub line: u64,
}

/// What a request answered: its status, and optionally a detail for the report (the start of
/// the body, say).
///
/// Built with [`Observed::new`], [`Observed::with_detail`] or from a [`StatusCode`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Observed {
    /// The response status.
    pub status: StatusCode,
    /// Shown beside a mismatch.
    pub detail: Option<String>,
}

impl Observed {
    /// A status without a detail.
    #[must_use]
    pub const fn new(status: StatusCode) -> Self {
        Self {
            status,
            detail: None,
        }
    }

    /// A status with a detail for the report.
    #[must_use]
    pub fn with_detail(status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            status,
            detail: Some(detail.into()),
        }
    }
}

impl From<StatusCode> for Observed {
    fn from(status: StatusCode) -> Self {
        Self::new(status)
    }
}

/// One thing wrong, found by [`Matrix::check`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Problem {
    /// The caller named no role: nothing could be checked.
    NoRoles,
    /// The router serves no route (nothing recorded, or the record is of another router).
    NoRoutes,
    /// A role the caller can make requests for has no column in the table.
    MissingRoleColumn {
        /// The role.
        role: String,
    },
    /// A column for a role the caller does not know (its cells cannot be run).
    UnknownRoleColumn {
        /// The role.
        role: String,
    },
    /// A route the router serves that no row lists.
    RouteMissingFromTable {
        /// The route.
        endpoint: Endpoint,
    },
    /// A row for a route the router does not serve (removed, renamed, or mistyped).
    RowNamesNoRoute {
        /// The row's line.
        line: u64,
        /// What the row names.
        endpoint: Endpoint,
    },
    /// A cell whose status differs from the table's.
    Mismatch {
        /// The row's line.
        line: u64,
        /// The route.
        endpoint: Endpoint,
        /// The role.
        role: String,
        /// What the table says.
        expected: StatusCode,
        /// What the router answered.
        got: StatusCode,
        /// The caller's detail, if any.
        detail: Option<String>,
    },
    /// A cell whose request could not be made or sent: it counts as a failure, never a pass.
    RequestFailed {
        /// The row's line.
        line: u64,
        /// The route.
        endpoint: Endpoint,
        /// The role.
        role: String,
        /// The caller's error.
        error: String,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoRoles => write!(f, "no roles given: nothing to check"),
            Self::NoRoutes => write!(f, "the router serves no route: nothing recorded"),
            Self::MissingRoleColumn { role } => {
                write!(f, "role column missing from the table: {role}")
            }
            Self::UnknownRoleColumn { role } => {
                write!(f, "table column for a role the test does not know: {role}")
            }
            Self::RouteMissingFromTable { endpoint } => {
                write!(f, "served route missing from the table: {endpoint}")
            }
            Self::RowNamesNoRoute { line, endpoint } => {
                write!(f, "line {line}: row names no route: {endpoint}")
            }
            Self::Mismatch {
                line,
                endpoint,
                role,
                expected,
                got,
                detail,
            } => {
                write!(
                    f,
                    "line {line}: {endpoint} as {role}: expected {}, got {}",
                    expected.as_u16(),
                    got.as_u16()
                )?;
                match detail {
                    Some(detail) => write!(f, " ({detail})"),
                    None => Ok(()),
                }
            }
            Self::RequestFailed {
                line,
                endpoint,
                role,
                error,
            } => write!(
                f,
                "line {line}: {endpoint} as {role}: request failed: {error}"
            ),
        }
    }
}

/// A check that passed: how much it covered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Passed {
    /// Routes served (each one listed in the table).
    pub routes: usize,
    /// Cells run (rows times roles), each answering as the table says.
    pub cells: usize,
}

/// A check that failed: every problem found, in one report. Its `Debug` is the report too, so
/// `.unwrap()` and a test returning `Result` print it readably.
#[derive(Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.report())]
#[non_exhaustive]
pub struct Failed {
    /// Every problem, completeness first, then the cells in table order.
    pub problems: Vec<Problem>,
    /// Cells run.
    pub cells: usize,
}

impl Failed {
    fn report(&self) -> String {
        let mismatches = self
            .problems
            .iter()
            .filter(|p| matches!(p, Problem::Mismatch { .. } | Problem::RequestFailed { .. }))
            .count();
        let mut report = format!(
            "authorization matrix: {} problem(s); {} of {} cell(s) run differ or failed",
            self.problems.len(),
            mismatches,
            self.cells
        );
        for problem in &self.problems {
            report.push_str("\n  ");
            report.push_str(&problem.to_string());
        }
        report
    }
}

impl fmt::Debug for Failed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.report())
    }
}

impl Matrix {
    /// Checks the table against the routes a router serves and, cell by cell, against the
    /// router's answers.
    ///
    /// `served` is what the router serves ([`RouteRecord::served`](crate::RouteRecord::served)).
    /// `roles` are the roles `send` can make requests for: each must have a column, and each
    /// column must be one of them. `send` is called once per cell, one at a time in table order,
    /// with the [`Cell`]; it makes the request as that role (a fresh session, fresh objects for
    /// the path's parameters) and returns the status, or an error.
    ///
    /// Every cell of every row that names a served route runs, even when other problems were
    /// found, so the one report lists them all.
    ///
    /// # Errors
    /// [`Failed`], listing every [`Problem`]: a role without a column or a column without a
    /// role, a served route no row lists, a row naming no served route, no routes or no roles
    /// at all, and every cell whose status differs or whose request failed.
    pub async fn check<F, T, E>(
        &self,
        served: &[Endpoint],
        roles: &[&str],
        mut send: F,
    ) -> Result<Passed, Failed>
    where
        F: AsyncFnMut(Cell) -> Result<T, E>,
        T: Into<Observed>,
        E: fmt::Display,
    {
        let mut problems = Vec::new();
        if roles.is_empty() {
            problems.push(Problem::NoRoles);
        }
        for role in roles {
            if !self.roles().iter().any(|r| r == role) {
                problems.push(Problem::MissingRoleColumn {
                    role: (*role).to_owned(),
                });
            }
        }
        for role in self.roles() {
            if !roles.contains(&role.as_str()) {
                problems.push(Problem::UnknownRoleColumn { role: role.clone() });
            }
        }
        let served: BTreeSet<&Endpoint> = served.iter().collect();
        if served.is_empty() {
            problems.push(Problem::NoRoutes);
        }
        let listed: BTreeSet<&Endpoint> = self.rows().iter().map(|r| r.endpoint()).collect();
        for endpoint in served.difference(&listed) {
            problems.push(Problem::RouteMissingFromTable {
                endpoint: (*endpoint).clone(),
            });
        }
        for row in self.rows() {
            if !served.contains(row.endpoint()) {
                problems.push(Problem::RowNamesNoRoute {
                    line: row.line(),
                    endpoint: row.endpoint().clone(),
                });
            }
        }

        let mut cells = 0;
        for row in self.rows().iter().filter(|r| served.contains(r.endpoint())) {
            for (role, expected) in self.roles().iter().zip(row.expected()) {
                if !roles.contains(&role.as_str()) {
                    continue;
                }
                let cell = Cell {
                    role: role.clone(),
                    method: row.endpoint().method.clone(),
                    path: row.endpoint().path.clone(),
                    expected: *expected,
                    line: row.line(),
                };
                cells += 1;
                match send(cell).await {
                    Ok(observed) => {
                        let observed = observed.into();
                        if observed.status != *expected {
                            problems.push(Problem::Mismatch {
                                line: row.line(),
                                endpoint: row.endpoint().clone(),
                                role: role.clone(),
                                expected: *expected,
                                got: observed.status,
                                detail: observed.detail,
                            });
                        }
                    }
                    Err(error) => problems.push(Problem::RequestFailed {
                        line: row.line(),
                        endpoint: row.endpoint().clone(),
                        role: role.clone(),
                        error: error.to_string(),
                    }),
                }
            }
        }

        if problems.is_empty() {
            Ok(Passed {
                routes: served.len(),
                cells,
            })
        } else {
            Err(Failed { problems, cells })
        }
    }
}
