//! The expected statuses: a CSV table, one row per `(method, path)`, one column per role.

use std::collections::HashMap;

use http::{Method, StatusCode};

use crate::router::Endpoint;

/// Why a matrix table was refused. Every variant names the line (1-based, counting comments and
/// blank lines) where the problem is.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// A quote character: cells are plain (methods, path templates, statuses), so CSV quoting
    /// is refused rather than half-read.
    #[error("line {line}: quotes are not supported: cells are plain, separated by commas")]
    Quoted {
        /// The line.
        line: u64,
    },
    /// No header line: the text is empty or only comments.
    #[error("no header line: the table must start with `method,path,<role>,...`")]
    NoHeader,
    /// The header does not start with `method,path`.
    #[error("line {line}: the header must start with `method,path`, found `{found}`")]
    HeaderStart {
        /// The header's line.
        line: u64,
        /// The header's first two cells, as found.
        found: String,
    },
    /// The header names no role after `method,path`.
    #[error("line {line}: the header names no role column after `method,path`")]
    NoRoleColumns {
        /// The header's line.
        line: u64,
    },
    /// A role column with an empty name.
    #[error("line {line}: role column {column} has an empty name")]
    EmptyRole {
        /// The header's line.
        line: u64,
        /// The column, 1-based.
        column: usize,
    },
    /// A role named in two columns.
    #[error("line {line}: role `{role}` has two columns")]
    DuplicateRole {
        /// The header's line.
        line: u64,
        /// The role.
        role: String,
    },
    /// A row with more or fewer cells than the header.
    #[error("line {line}: {found} cells, the header has {expected}")]
    CellCount {
        /// The row's line.
        line: u64,
        /// The header's cell count.
        expected: usize,
        /// The row's cell count.
        found: usize,
    },
    /// A method that is not an upper-case HTTP method token.
    #[error("line {line}: `{method}` is not an HTTP method (write it in upper case, e.g. GET)")]
    BadMethod {
        /// The row's line.
        line: u64,
        /// The cell as found.
        method: String,
    },
    /// A path that does not start with `/`.
    #[error("line {line}: path `{path}` does not start with `/`")]
    BadPath {
        /// The row's line.
        line: u64,
        /// The cell as found.
        path: String,
    },
    /// A status cell that is not a number from 100 to 599.
    #[error("line {line}: `{cell}` for role `{role}` is not an HTTP status (100-599)")]
    BadStatus {
        /// The row's line.
        line: u64,
        /// The role of the column.
        role: String,
        /// The cell as found.
        cell: String,
    },
    /// Two rows for one `(method, path)`.
    #[error("line {line}: {method} {path} is already listed on line {first_line}")]
    DuplicateRow {
        /// The second row's line.
        line: u64,
        /// The first row's line.
        first_line: u64,
        /// The method.
        method: Method,
        /// The path.
        path: String,
    },
    /// A header and no row: a table that checks nothing passes nothing.
    #[error("the table has a header but no row")]
    NoRows,
}

/// One row: a route and the status each role must get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    line: u64,
    endpoint: Endpoint,
    expected: Vec<StatusCode>,
}

impl Row {
    /// The row's line in the table (1-based).
    #[must_use]
    pub fn line(&self) -> u64 {
        self.line
    }

    /// The method and path template the row names.
    #[must_use]
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The expected statuses, in the order of [`Matrix::roles`].
    #[must_use]
    pub fn expected(&self) -> &[StatusCode] {
        &self.expected
    }
}

/// An authorization matrix: for every route, the status each role must get.
///
/// The text is plain CSV (no quoting): a header `method,path,<role>,<role>,...`, then one row per route with one
/// status per role (`GET,/notes/{id},401,200,404`). Lines starting with `#` are comments, blank
/// lines are skipped, cells are trimmed. Paths are axum path templates, written exactly as they
/// are given to the router. Parsing refuses, naming the line: a quote character, a header that does
/// not start with `method,path` or names no role (or one twice), a row with the wrong number of
/// cells, a method not in upper case, a path not starting with `/`, a status outside 100-599, a
/// `(method, path)` listed twice, and a table without rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matrix {
    roles: Vec<String>,
    rows: Vec<Row>,
}

impl Matrix {
    /// Parses a table.
    ///
    /// # Errors
    /// [`ParseError`], naming the line and what is wrong.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let mut records = text.lines().enumerate().filter_map(|(i, line)| {
            let trimmed = line.trim();
            let line_no = u64::try_from(i).map_or(u64::MAX, |n| n + 1);
            if trimmed.is_empty() || trimmed.starts_with('#') {
                None
            } else if line.contains('"') {
                Some(Err(ParseError::Quoted { line: line_no }))
            } else {
                let cells: Vec<&str> = line.split(',').map(str::trim).collect();
                Some(Ok((line_no, cells)))
            }
        });

        let (header_line, header) = records.next().ok_or(ParseError::NoHeader)??;
        if header.first() != Some(&"method") || header.get(1) != Some(&"path") {
            return Err(ParseError::HeaderStart {
                line: header_line,
                found: header.iter().take(2).copied().collect::<Vec<_>>().join(","),
            });
        }
        let roles: Vec<String> = header.iter().skip(2).map(|r| (*r).to_owned()).collect();
        if roles.is_empty() {
            return Err(ParseError::NoRoleColumns { line: header_line });
        }
        for (i, role) in roles.iter().enumerate() {
            if role.is_empty() {
                return Err(ParseError::EmptyRole {
                    line: header_line,
                    column: i + 3,
                });
            }
            if roles[..i].contains(role) {
                return Err(ParseError::DuplicateRole {
                    line: header_line,
                    role: role.clone(),
                });
            }
        }

        let mut rows: Vec<Row> = Vec::new();
        let mut seen: HashMap<Endpoint, u64> = HashMap::new();
        for record in records {
            let (line, record) = record?;
            if record.len() != header.len() {
                return Err(ParseError::CellCount {
                    line,
                    expected: header.len(),
                    found: record.len(),
                });
            }
            let method_cell = record.first().copied().unwrap_or_default();
            let method = parse_method(method_cell).ok_or_else(|| ParseError::BadMethod {
                line,
                method: method_cell.to_owned(),
            })?;
            let path = record.get(1).copied().unwrap_or_default();
            if !path.starts_with('/') {
                return Err(ParseError::BadPath {
                    line,
                    path: path.to_owned(),
                });
            }
            let expected = record
                .iter()
                .skip(2)
                .zip(&roles)
                .map(|(cell, role)| {
                    cell.parse::<u16>()
                        .ok()
                        .filter(|n| (100..=599).contains(n))
                        .and_then(|n| StatusCode::from_u16(n).ok())
                        .ok_or_else(|| ParseError::BadStatus {
                            line,
                            role: role.clone(),
                            cell: (*cell).to_owned(),
                        })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let endpoint = Endpoint::new(method, path);
            if let Some(&first_line) = seen.get(&endpoint) {
                return Err(ParseError::DuplicateRow {
                    line,
                    first_line,
                    method: endpoint.method,
                    path: endpoint.path,
                });
            }
            seen.insert(endpoint.clone(), line);
            rows.push(Row {
                line,
                endpoint,
                expected,
            });
        }
        if rows.is_empty() {
            return Err(ParseError::NoRows);
        }
        Ok(Self { roles, rows })
    }

    /// The roles, in column order.
    #[must_use]
    pub fn roles(&self) -> &[String] {
        &self.roles
    }

    /// The rows, in table order.
    #[must_use]
    pub fn rows(&self) -> &[Row] {
        &self.rows
    }

    /// The status `role` must get for `method` on `path`, if the table lists both.
    #[must_use]
    pub fn expected(&self, method: &Method, path: &str, role: &str) -> Option<StatusCode> {
        let column = self.roles.iter().position(|r| r == role)?;
        let row = self
            .rows
            .iter()
            .find(|r| r.endpoint.method == *method && r.endpoint.path == path)?;
        row.expected.get(column).copied()
    }
}

/// An upper-case method token (`GET`, `PROPFIND`); `get` is refused rather than read as an
/// extension method no route serves.
fn parse_method(cell: &str) -> Option<Method> {
    if cell.is_empty() || !cell.bytes().all(|b| b.is_ascii_uppercase()) {
        return None;
    }
    Method::from_bytes(cell.as_bytes()).ok()
}
