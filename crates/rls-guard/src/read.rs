//! [`BoundRead`]: one read-only statement bound to a tenant, in one round trip.

use std::sync::Arc;

use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArguments, PgPool, PgRow};
use sqlx::{Arguments, Encode, FromRow, Postgres, Type};
use tenant_scope::{TenantContext, TenantId};

use crate::RlsError;
use crate::lane::Lane;
use crate::liveness::LiveCheck;
use crate::pool::actor_setting;
use crate::{SignedBinding, TenantPool};

/// Runs the statement with `$fetch`: on the pool, or on a kept connection of `$lane`, and then
/// once more on a new connection when a kept one turns out dead on its first use (see
/// `LaneConnection::stale`). (A macro rather than a function taking an async closure: the
/// future must stay `Send` for any lifetime of the connection it borrows.)
macro_rules! fetch {
    ($pool:expr, $lane:expr, $sql:expr, $arguments:expr, $row:ty, $fetch:ident) => {{
        let Some(lane) = $lane else {
            return sqlx::query_as_with::<_, $row, _>(&$sql, $arguments)
                .$fetch($pool)
                .await
                .map_err(classify);
        };
        let mut conn = lane.get().await?;
        let mut result = sqlx::query_as_with::<_, $row, _>(&$sql, $arguments.clone())
            .$fetch(conn.connection())
            .await;
        if conn.stale(&result) {
            conn.reconnect().await?;
            result = sqlx::query_as_with::<_, $row, _>(&$sql, $arguments)
                .$fetch(conn.connection())
                .await;
        }
        conn.finished(&result);
        result.map_err(classify)
    }};
}

/// A single `SELECT` run bound to a tenant in **one round trip**, for hot read paths where a
/// [`TenantTx`](crate::TenantTx) would cost three (`BEGIN` + binding, the query, `COMMIT`).
/// (The first use of a statement on a connection also prepares it, as every sqlx query does.)
///
/// Made by [`TenantPool::read`](crate::TenantPool::read). The statement runs in its own implicit
/// transaction, wrapped so that a materialised CTE makes the transaction read-only, clears any
/// session-level tenant other code left on the connection, and binds `app.tenant_id` and
/// `app.actor_id` with `set_config(.., true)` (transaction-local) before the statement is
/// scanned:
///
/// ```sql
/// WITH rls_guard_binding AS MATERIALIZED (
///        SELECT set_config('transaction_read_only', 'on', true) AS read_only,
///               set_config('app.tenant_id', '', false) AS cleared,
///               set_config('app.tenant_id', $n+1, true) AS tenant,
///               set_config('app.actor_id', $n+2, true) AS actor)
/// SELECT rls_guard_read.* FROM rls_guard_binding CROSS JOIN LATERAL (
///        SELECT * FROM (<your statement>) AS rls_guard_inner
///         WHERE rls_guard_binding.tenant IS NOT NULL OFFSET 0) AS rls_guard_read
/// ```
///
/// The `LATERAL` subquery depends on the binding's row and `OFFSET 0` keeps it from being
/// flattened, so row-level security's tenant predicate is first evaluated after the binding is
/// in place; were it ever evaluated before, it would see no tenant and match no row. The binding
/// ends with the implicit transaction, and the session-level tenant is left empty, so nothing
/// reaches the next user of the connection.
///
/// What it refuses:
/// - **Dynamic SQL.** The statement is a `&'static str`, so no request input can be spliced into
///   it (use [`bind`](Self::bind) for values).
/// - **A placeholder count that does not match.** The binding takes the two placeholders after
///   yours, so a statement using `$3` with two values bound would read the tenant's text there.
///   The highest `$n` outside literals and comments must equal the number of values bound, or
///   the read fails with [`RlsError::ParameterCount`] before anything is sent (an unclosed
///   literal or comment: [`RlsError::UnreadableStatement`]).
/// - **Writes.** The statement is a subquery of a `SELECT`, so `INSERT`/`UPDATE`/`DELETE`, a
///   data-modifying `WITH` and a second statement are syntax errors; a write hidden in a
///   function call, to any table, and `nextval` fail with SQLSTATE 25006 (read-only
///   transaction). Not refused: a top-level `FOR UPDATE`/`FOR SHARE` (PostgreSQL checks it
///   before the binding runs), whose row locks end with the statement.
///
/// The statement's own `ORDER BY` and `LIMIT` apply inside the subquery; the wrapper's one-row
/// outer loop keeps the order. A trailing `;` is dropped. `set_config` is not parallel-safe, so
/// these reads never use parallel query.
///
/// Like every rls-guard path it relies on functions being honestly labelled: a function that
/// reads tenant tables but is declared `IMMUTABLE` may be evaluated once when the statement is
/// planned (before any binding) and its result kept in a cached plan across tenants. Declare
/// such functions `STABLE`.
///
/// Behind a transaction-pooling PgBouncer older than 1.21 use a [`TenantTx`](crate::TenantTx):
/// sqlx prepares a statement outside a transaction in two steps, which such a PgBouncer may
/// send to two server connections.
#[must_use = "a BoundRead does nothing until fetched"]
pub struct BoundRead<'p> {
    pool: &'p PgPool,
    lane: Option<&'p Arc<Lane>>,
    signed: Result<Option<SignedBinding>, RlsError>,
    /// The session check, with the signed binding of the actor's own tenant when bindings are
    /// signed and the context is cross-tenant.
    live: Result<Option<(LiveCheck, Option<SignedBinding>)>, RlsError>,
    context: TenantContext,
    tenant: TenantId,
    actor: String,
    sql: &'static str,
    arguments: PgArguments,
    error: Option<BoxDynError>,
}

impl std::fmt::Debug for BoundRead<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No argument values: they may be secrets.
        f.debug_struct("BoundRead")
            .field("tenant", &self.tenant)
            .field("sql", &self.sql)
            .field("arguments", &self.arguments.len())
            .finish_non_exhaustive()
    }
}

impl<'p> BoundRead<'p> {
    pub(crate) fn new(pool: &'p TenantPool, context: &TenantContext, sql: &'static str) -> Self {
        let live = pool.live_check(context).and_then(|check| {
            check
                .map(|l| {
                    let home = if l.cross {
                        pool.sign_tenant(l.home, context)?
                    } else {
                        None
                    };
                    Ok((l, home))
                })
                .transpose()
        });
        Self {
            pool: pool.pool(),
            lane: pool.lane(),
            signed: pool.sign(context),
            live,
            context: context.clone(),
            tenant: context.tenant(),
            actor: actor_setting(context),
            sql,
            arguments: PgArguments::default(),
            error: None,
        }
    }

    /// Binds the next `$n` of the statement.
    pub fn bind<'q, T>(mut self, value: T) -> Self
    where
        T: Encode<'q, Postgres> + Type<Postgres> + 'q,
    {
        if self.error.is_none()
            && let Err(error) = self.arguments.add(value)
        {
            self.error = Some(error);
        }
        self
    }

    /// Every row.
    ///
    /// # Errors
    /// [`RlsError::Database`] when the statement fails, a value cannot be encoded or the
    /// database is unreachable; [`RlsError::BindingChanged`] when the statement wrote.
    pub async fn fetch_all<O>(self) -> Result<Vec<O>, RlsError>
    where
        O: for<'r> FromRow<'r, PgRow> + Send + Unpin,
    {
        let (pool, lane, sql, arguments, context) = self.prepare()?;
        context.authorize_use().await?;
        fetch!(pool, lane, sql, arguments, O, fetch_all)
    }

    /// At most one row.
    ///
    /// # Errors
    /// As [`fetch_all`](Self::fetch_all).
    pub async fn fetch_optional<O>(self) -> Result<Option<O>, RlsError>
    where
        O: for<'r> FromRow<'r, PgRow> + Send + Unpin,
    {
        let (pool, lane, sql, arguments, context) = self.prepare()?;
        context.authorize_use().await?;
        fetch!(pool, lane, sql, arguments, O, fetch_optional)
    }

    /// The wrapped statement and the arguments with the binding appended after the caller's.
    #[allow(clippy::type_complexity)]
    fn prepare(
        self,
    ) -> Result<
        (
            &'p PgPool,
            Option<&'p Arc<Lane>>,
            String,
            PgArguments,
            TenantContext,
        ),
        RlsError,
    > {
        if let Some(error) = self.error {
            return Err(RlsError::Database(sqlx::Error::Encode(error)));
        }
        let statement = self.sql.trim_end();
        let statement = statement.strip_suffix(';').unwrap_or(statement);
        // The binding takes the two placeholders after the caller's: a statement that uses more
        // placeholders than were bound would read the tenant or actor text in their place, so
        // the counts must agree exactly.
        let scan = scan(statement).ok_or(RlsError::UnreadableStatement)?;
        // `set_config(.., false)` would leave a tenant on the connection after the statement.
        if scan.set_config {
            return Err(RlsError::SetConfigInRead);
        }
        let used = scan.placeholders;
        let mut arguments = self.arguments;
        if used != arguments.len() {
            return Err(RlsError::ParameterCount {
                used,
                bound: arguments.len(),
            });
        }
        let tenant = used + 1;
        let encode = |e| RlsError::Database(sqlx::Error::Encode(e));
        let live = self.live?;
        let signed = self.signed?;
        let signed_mode = signed.is_some();
        let binding = match signed {
            // Signed: `app.bind` checks the signature and ties the binding to this statement's
            // transaction on this connection.
            Some(signed) => {
                arguments
                    .add(signed.tenant)
                    .and_then(|()| arguments.add(signed.actor))
                    .and_then(|()| arguments.add(signed.issued_at))
                    .and_then(|()| arguments.add(signed.signature))
                    .map_err(encode)?;
                format!(
                    "app.bind(${tenant}::text, ${}::text, ${}::text, ${}::text) AS tenant",
                    tenant + 1,
                    tenant + 2,
                    tenant + 3
                )
            }
            None => {
                arguments
                    .add(self.tenant.to_string())
                    .and_then(|()| arguments.add(self.actor.clone()))
                    .map_err(encode)?;
                format!(
                    "pg_catalog.set_config('app.tenant_id', ${tenant}::text, true) AS tenant, \
                     pg_catalog.set_config('app.actor_id', ${}::text, true) AS actor",
                    tenant + 1
                )
            }
        };
        // The select list runs left to right: the transaction turns read-only, a session-level
        // tenant left by other code is cleared (so none outlives this statement, as TenantTx's
        // RESET ensures for transactions), then the statement's own binding is set locally.
        // The newline ends a trailing `--` comment in the statement before the wrapper resumes.
        // With a session to check, a CTE asks the database whether it is live, under a binding
        // to the actor's own tenant (where the session's row is): after the statement's own
        // binding for a context of that tenant, before it (binding the home tenant first) for a
        // cross-tenant one. Each CTE reads the row of the one it follows, so they run in order,
        // and the statement reads only after the answer.
        let (first, after, gate) = match live {
            None => (String::new(), String::new(), String::new()),
            Some((l, home)) => {
                let mut next = arguments.len() + 1;
                let mut add = |value: String| {
                    arguments.add(value).map_err(encode)?;
                    next += 1;
                    Ok::<usize, RlsError>(next - 1)
                };
                let session = add(l.session.to_string())?;
                let ask = l.liveness.require("h.tenant", &format!("${session}"));
                if l.cross {
                    let home_binding = match home {
                        Some(h) => format!(
                            "app.bind(${}::text, ${}::text, ${}::text, ${}::text) AS tenant",
                            add(h.tenant)?,
                            add(h.actor)?,
                            add(h.issued_at)?,
                            add(h.signature)?
                        ),
                        None if signed_mode => return Err(RlsError::BindingKeyRequired),
                        None => format!(
                            "pg_catalog.set_config('app.tenant_id', ${}::text, true) AS tenant, \
                             pg_catalog.set_config('app.actor_id', ${}::text, true) AS actor",
                            add(l.home.to_string())?,
                            add(self.actor.clone())?
                        ),
                    };
                    (
                        format!(
                            "rls_guard_live AS MATERIALIZED (SELECT {ask} AS live FROM \
                             (SELECT {home_binding} OFFSET 0) AS h), "
                        ),
                        String::new(),
                        " FROM rls_guard_live WHERE rls_guard_live.live".to_owned(),
                    )
                } else {
                    (
                        String::new(),
                        format!(
                            ", rls_guard_live AS MATERIALIZED (SELECT {ask} AS live \
                             FROM rls_guard_binding AS h)"
                        ),
                        String::new(),
                    )
                }
            }
        };
        let (join, live) = if first.is_empty() && after.is_empty() {
            ("", "")
        } else {
            (" CROSS JOIN rls_guard_live", " AND rls_guard_live.live")
        };
        let sql = format!(
            "WITH {first}rls_guard_binding AS MATERIALIZED (\
               SELECT pg_catalog.set_config('transaction_read_only', 'on', true) AS read_only, \
                      pg_catalog.set_config('app.tenant_id', '', false) AS cleared, \
                      {binding}{gate}){after} \
             SELECT rls_guard_read.* FROM rls_guard_binding{join} CROSS JOIN LATERAL (\
               SELECT * FROM ({statement}\n) AS rls_guard_inner \
                WHERE rls_guard_binding.tenant IS NOT NULL{live} OFFSET 0) AS rls_guard_read",
        );
        Ok((self.pool, self.lane, sql, arguments, self.context))
    }
}

/// What [`scan`] finds in a statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Scan {
    /// The highest `$n` placeholder (0 when there is none).
    placeholders: usize,
    /// Whether the statement names `set_config` (as a word or a quoted identifier).
    set_config: bool,
}

/// The highest `$n` placeholder in `sql`, and whether it names `set_config`, skipping string
/// literals (`'..'`, `E'..'`), dollar-quoted strings and comments; `None` when one of those, or
/// a quoted identifier, is not closed.
fn scan(sql: &str) -> Option<Scan> {
    let mut set_config = false;
    let max = placeholders_with(sql, &mut |word| {
        set_config |= word.eq_ignore_ascii_case("set_config");
    })?;
    Some(Scan {
        placeholders: max,
        set_config,
    })
}

#[cfg(test)]
fn placeholders(sql: &str) -> Option<usize> {
    placeholders_with(sql, &mut |_| {})
}

/// The highest `$n` placeholder in `sql` (0 when there is none), skipping string literals
/// (`'..'`, `E'..'`), quoted identifiers, dollar-quoted strings and comments; `None` when one of
/// those is not closed. Every word and quoted identifier outside literals and comments is
/// passed to `word`.
fn placeholders_with(sql: &str, word: &mut dyn FnMut(&str)) -> Option<usize> {
    let b = sql.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80;
    let mut max = 0;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\'' => {
                let escapes =
                    i > 0 && matches!(b[i - 1], b'e' | b'E') && (i < 2 || !ident(b[i - 2]));
                i += 1;
                loop {
                    match b.get(i)? {
                        b'\\' if escapes => i += 2,
                        b'\'' if b.get(i + 1) == Some(&b'\'') => i += 2,
                        b'\'' => break,
                        _ => i += 1,
                    }
                }
                i += 1;
            }
            b'"' => {
                i += 1;
                let start = i;
                loop {
                    match b.get(i)? {
                        b'"' if b.get(i + 1) == Some(&b'"') => i += 2,
                        b'"' => break,
                        _ => i += 1,
                    }
                }
                word(&sql[start..i]);
                i += 1;
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 0usize;
                loop {
                    match (b.get(i)?, b.get(i + 1)) {
                        (b'/', Some(b'*')) => {
                            depth += 1;
                            i += 2;
                        }
                        (b'*', Some(b'/')) => {
                            depth -= 1;
                            i += 2;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => i += 1,
                    }
                }
            }
            b'$' if i == 0 || !ident(b[i - 1]) => {
                let digits = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
                if digits > 0 {
                    let n: usize = sql[i + 1..i + 1 + digits].parse().ok()?;
                    max = max.max(n);
                    i += 1 + digits;
                } else {
                    // `$tag$ .. $tag$` (the tag may be empty), or a lone `$`.
                    let tag_len = b[i + 1..]
                        .iter()
                        .take_while(|&&c| c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80)
                        .count();
                    if b.get(i + 1 + tag_len) == Some(&b'$') {
                        let tag = &sql[i..i + tag_len + 2];
                        let body = i + tag.len();
                        i = body + sql[body..].find(tag)? + tag.len();
                    } else {
                        i += 1;
                    }
                }
            }
            c if (c.is_ascii_alphabetic() || c == b'_' || c >= 0x80)
                && (i == 0 || !ident(b[i - 1])) =>
            {
                let start = i;
                while i < b.len() && ident(b[i]) {
                    i += 1;
                }
                word(&sql[start..i]);
            }
            _ => i += 1,
        }
    }
    Some(max)
}

/// A deferred binding check that failed (SQLSTATE `TB001`) is a write the read was not allowed
/// to make; everything else is a database error.
pub(crate) fn classify(error: sqlx::Error) -> RlsError {
    let code = error
        .as_database_error()
        .and_then(|e| e.code())
        .map(|code| code.into_owned());
    match code.as_deref() {
        Some("TB001") => RlsError::BindingChanged,
        Some("TB401") => RlsError::SessionEnded,
        _ => RlsError::Database(error),
    }
}

#[cfg(test)]
mod tests {
    use super::{placeholders, scan};

    #[test]
    fn set_config_is_found_however_it_is_spelled() {
        for (sql, found) in [
            ("SELECT set_config('app.tenant_id', 'x', false)", true),
            ("SELECT pg_catalog.SET_CONFIG('a', 'b', false)", true),
            ("SELECT \"set_config\"('a', 'b', false)", true),
            ("SELECT pg_catalog . Set_Config ('a', 'b', false)", true),
            ("SELECT 'set_config'", false),
            ("SELECT 1 -- set_config\n", false),
            ("SELECT /* set_config */ 1", false),
            ("SELECT $$set_config$$", false),
            ("SELECT my_set_config_count FROM t", false),
            ("SELECT name FROM projects", false),
        ] {
            assert_eq!(scan(sql).map(|s| s.set_config), Some(found), "{sql}");
        }
    }

    #[test]
    fn placeholders_outside_literals_and_comments_are_counted() {
        for (sql, expected) in [
            ("SELECT 1", Some(0)),
            ("SELECT $1, $2", Some(2)),
            ("SELECT $2 WHERE x = $10", Some(10)),
            ("SELECT '$3', $1", Some(1)),
            ("SELECT 'it''s $4', $1", Some(1)),
            ("SELECT E'\\' $5', $2", Some(2)),
            ("SELECT \"col$6\", $1", Some(1)),
            ("SELECT $1 -- and $7\n, $2", Some(2)),
            ("SELECT /* $8 /* nested $9 */ */ $1", Some(1)),
            ("SELECT $$ $9 $$, $1", Some(1)),
            ("SELECT $tag$ $9 $$ $tag$, $2", Some(2)),
            ("SELECT a$1 FROM t", Some(0)),
            ("SELECT 'unclosed", None),
            ("SELECT \"unclosed", None),
            ("SELECT /* unclosed", None),
            ("SELECT $x$ unclosed", None),
        ] {
            assert_eq!(placeholders(sql), expected, "{sql}");
        }
    }
}
