//! Query and export, and offline verification of an export.

use std::io::{BufRead, Write};

use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tenant_scope::TenantId;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::AuditError;
use crate::canonical::{ChainHash, format_time, genesis_hash};
use crate::checkpoint::{Checkpoint, TrustedKeys};
use crate::verify::{
    ChainRecord, ChainVerifier, SELECT_EVENTS, VerifyReport, load_anchor, load_checkpoints,
    snapshot,
};

/// The export format's name, written in its first line.
pub const EXPORT_FORMAT: &str = "audit-log/export/v1";

/// A filter over one tenant's events. Without filters it selects the whole chain.
#[derive(Debug, Clone)]
pub struct AuditQuery {
    tenant: TenantId,
    actor: Option<Uuid>,
    action: Option<String>,
    from: Option<OffsetDateTime>,
    to: Option<OffsetDateTime>,
    before: Option<i64>,
    limit: Option<i64>,
}

impl AuditQuery {
    /// Every event of `tenant`.
    #[must_use]
    pub const fn new(tenant: TenantId) -> Self {
        Self {
            tenant,
            actor: None,
            action: None,
            from: None,
            to: None,
            before: None,
            limit: None,
        }
    }

    /// Only events by this actor.
    #[must_use]
    pub const fn with_actor(mut self, actor: Uuid) -> Self {
        self.actor = Some(actor);
        self
    }

    /// Only this action.
    #[must_use]
    pub fn with_action(mut self, action: &crate::Action) -> Self {
        self.action = Some(action.as_str().to_owned());
        self
    }

    /// Only events at or after `from`.
    #[must_use]
    pub const fn since(mut self, from: OffsetDateTime) -> Self {
        self.from = Some(from);
        self
    }

    /// Only events before `to`.
    #[must_use]
    pub const fn until(mut self, to: OffsetDateTime) -> Self {
        self.to = Some(to);
        self
    }

    /// Only events before position `seq` in the chain: the next page of a newest-first listing
    /// starts before the last position shown.
    #[must_use]
    pub fn before(mut self, seq: u64) -> Self {
        self.before = Some(i64::try_from(seq).unwrap_or(i64::MAX));
        self
    }

    /// At most `n` events (the newest first for [`AuditQuery::fetch`]).
    #[must_use]
    pub fn limit(mut self, n: u32) -> Self {
        self.limit = Some(i64::from(n));
        self
    }

    const fn is_whole_chain(&self) -> bool {
        self.actor.is_none()
            && self.action.is_none()
            && self.from.is_none()
            && self.to.is_none()
            && self.before.is_none()
            && self.limit.is_none()
    }

    /// The statement for this query, in seq order (`newest_first`: descending).
    ///
    /// A whole chain gets a statement text of its own, read in primary-key order (see
    /// `verify::in_chain_order`): were it the filtered statement with every filter NULL, a connection
    /// could reuse the generic plan it cached for a filtered query — one that sorts — whatever
    /// `enable_sort` says when it runs.
    fn sql(&self, newest_first: bool) -> String {
        let order = if newest_first { "DESC" } else { "ASC" };
        if self.is_whole_chain() {
            return format!("{SELECT_EVENTS} ORDER BY seq {order}");
        }
        format!(
            "{SELECT_EVENTS} AND ($2::uuid IS NULL OR actor_id = $2) \
             AND ($3::text IS NULL OR action = $3) \
             AND ($4::timestamptz IS NULL OR occurred_at >= $4) \
             AND ($5::timestamptz IS NULL OR occurred_at < $5) \
             AND ($6::bigint IS NULL OR seq < $6) \
             ORDER BY seq {order} LIMIT $7"
        )
    }

    /// [`sql`](Self::sql) with this query's values bound.
    fn bound<'q>(
        &'q self,
        sql: &'q str,
    ) -> sqlx::query::QueryAs<'q, sqlx::Postgres, Row, sqlx::postgres::PgArguments> {
        let query = sqlx::query_as(sql).bind(self.tenant.as_uuid());
        if self.is_whole_chain() {
            return query;
        }
        query
            .bind(self.actor)
            .bind(self.action.as_deref())
            .bind(self.from)
            .bind(self.to)
            .bind(self.before)
            .bind(self.limit)
    }

    /// A read-only snapshot bound to the tenant, set to read a whole chain in key order.
    async fn snapshot(
        &self,
        pool: &PgPool,
    ) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, AuditError> {
        snapshot(pool, self.tenant, self.is_whole_chain()).await
    }

    /// The matching events, newest first.
    ///
    /// # Errors
    /// [`AuditError::Database`] when the query fails.
    pub async fn fetch(&self, pool: &PgPool) -> Result<Vec<StoredEvent>, AuditError> {
        let mut tx = self.snapshot(pool).await?;
        let sql = self.sql(true);
        let rows: Vec<Row> = self.bound(&sql).fetch_all(&mut *tx).await?;
        tx.rollback().await?;
        rows.into_iter()
            .map(|row| StoredEvent::from_row(self.tenant, row))
            .collect()
    }
}

type Row = crate::verify::EventRow;

/// One stored event with its chain data.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoredEvent {
    /// The tenant.
    pub tenant: TenantId,
    /// Its position in the tenant's chain.
    pub seq: u64,
    /// When it was recorded.
    pub occurred_at: OffsetDateTime,
    /// The actor kind.
    pub actor_kind: String,
    /// The actor id, when signed in.
    pub actor_id: Option<Uuid>,
    /// The action.
    pub action: String,
    /// `allowed`, `denied` or `failed`.
    pub outcome: String,
    /// The request id.
    pub request_id: Option<String>,
    /// The canonical, scrubbed record that is hashed (UTF-8 JSON).
    pub record: Vec<u8>,
    /// The previous event's hash.
    pub prev_hash: ChainHash,
    /// This event's hash.
    pub hash: ChainHash,
}

impl StoredEvent {
    fn from_row(tenant: TenantId, row: Row) -> Result<Self, AuditError> {
        let (seq, occurred_at, actor_kind, actor_id, action, outcome, request_id, record, p, h) =
            row;
        let bad = |what| AuditError::Malformed(what);
        Ok(Self {
            tenant,
            seq: u64::try_from(seq).map_err(|_| bad("seq"))?,
            occurred_at,
            actor_kind,
            actor_id,
            action,
            outcome,
            request_id,
            record,
            prev_hash: p.try_into().map_err(|_| bad("prev_hash"))?,
            hash: h.try_into().map_err(|_| bad("hash"))?,
        })
    }

    /// The record as JSON.
    ///
    /// # Errors
    /// [`AuditError::Malformed`] when the stored record is not JSON.
    pub fn record_json(&self) -> Result<serde_json::Value, AuditError> {
        serde_json::from_slice(&self.record).map_err(|_| AuditError::Malformed("record"))
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ExportLine {
    Chain {
        format: String,
        tenant: String,
        complete: bool,
        base_seq: u64,
        base_hash: String,
        exported_at: String,
    },
    End {
        events: u64,
        last_seq: u64,
    },
    Checkpoint(Checkpoint),
    Event(ExportEvent),
}

#[derive(Debug, Serialize, Deserialize)]
struct ExportEvent {
    seq: u64,
    occurred_at: String,
    actor_kind: String,
    actor_id: Option<Uuid>,
    action: String,
    outcome: String,
    request_id: Option<String>,
    /// The canonical record, exactly as hashed.
    record: String,
    prev_hash: String,
    hash: String,
}

/// What an export wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExportSummary {
    /// Events written.
    pub events: u64,
    /// Checkpoints written (JSON lines only).
    pub checkpoints: u64,
}

/// Writes the events `query` selects as JSON lines, from one consistent snapshot: a `chain`
/// header (tenant, start, whether the export is the complete chain), every stored
/// `checkpoint`, one `event` line per event with the exact hashed record and its chain hashes,
/// and an `end` line with the count and the last sequence number (a cut-off file is noticed). A complete export verifies offline with [`verify_export`].
///
/// # Errors
/// [`AuditError::Database`] when reading fails, [`AuditError::Export`] when writing fails.
pub async fn export_jsonl(
    pool: &PgPool,
    query: &AuditQuery,
    mut out: impl Write,
) -> Result<ExportSummary, AuditError> {
    let tenant = query.tenant;
    let mut tx = query.snapshot(pool).await?;
    let anchor = load_anchor(&mut tx, tenant).await?;
    let checkpoints = load_checkpoints(&mut tx, tenant).await?;
    let genesis = genesis_hash(tenant);
    let (base_seq, base_hash) = anchor.unwrap_or((0, genesis));
    let header = ExportLine::Chain {
        format: EXPORT_FORMAT.to_owned(),
        tenant: tenant.to_string(),
        complete: query.is_whole_chain(),
        base_seq,
        base_hash: hex::encode(base_hash),
        exported_at: format_time(OffsetDateTime::now_utc())?,
    };
    write_line(&mut out, &header)?;
    let mut summary = ExportSummary {
        events: 0,
        checkpoints: 0,
    };
    let mut last_seq = base_seq;
    for cp in checkpoints {
        write_line(&mut out, &ExportLine::Checkpoint(cp))?;
        summary.checkpoints += 1;
    }
    {
        let sql = query.sql(false);
        let mut rows = query.bound(&sql).fetch(&mut *tx);
        while let Some(row) = rows.try_next().await? {
            let e = StoredEvent::from_row(tenant, row)?;
            last_seq = e.seq;
            write_line(&mut out, &ExportLine::Event(export_event(e)?))?;
            summary.events += 1;
        }
    }
    tx.rollback().await?;
    write_line(
        &mut out,
        &ExportLine::End {
            events: summary.events,
            last_seq,
        },
    )?;
    out.flush()?;
    Ok(summary)
}

fn export_event(e: StoredEvent) -> Result<ExportEvent, AuditError> {
    Ok(ExportEvent {
        seq: e.seq,
        occurred_at: format_time(e.occurred_at)?,
        actor_kind: e.actor_kind,
        actor_id: e.actor_id,
        action: e.action,
        outcome: e.outcome,
        request_id: e.request_id,
        record: String::from_utf8(e.record).map_err(|_| AuditError::Malformed("record"))?,
        prev_hash: hex::encode(e.prev_hash),
        hash: hex::encode(e.hash),
    })
}

fn write_line(out: &mut impl Write, line: &ExportLine) -> Result<(), AuditError> {
    serde_json::to_writer(&mut *out, line).map_err(|e| AuditError::Export(e.into()))?;
    out.write_all(b"\n")?;
    Ok(())
}

/// Writes the events `query` selects as CSV (for spreadsheets and review): a header row, then
/// `seq, occurred_at, actor_kind, actor_id, action, outcome, request_id, prev_hash, hash,
/// record`. Cells that a spreadsheet would run as a formula (starting with `=`, `+`, `-`, `@`,
/// tab or carriage return) are prefixed with `'`. Verify from the JSON lines export, not this.
///
/// # Errors
/// [`AuditError::Database`] when reading fails, [`AuditError::Export`] when writing fails.
pub async fn export_csv(
    pool: &PgPool,
    query: &AuditQuery,
    out: impl Write,
) -> Result<ExportSummary, AuditError> {
    let tenant = query.tenant;
    let mut tx = query.snapshot(pool).await?;
    let mut writer = csv::Writer::from_writer(out);
    let csv_err = |e: csv::Error| AuditError::Export(std::io::Error::other(e));
    writer
        .write_record([
            "seq",
            "occurred_at",
            "actor_kind",
            "actor_id",
            "action",
            "outcome",
            "request_id",
            "prev_hash",
            "hash",
            "record",
        ])
        .map_err(csv_err)?;
    let mut summary = ExportSummary {
        events: 0,
        checkpoints: 0,
    };
    {
        let sql = query.sql(false);
        let mut rows = query.bound(&sql).fetch(&mut *tx);
        while let Some(row) = rows.try_next().await? {
            let e = export_event(StoredEvent::from_row(tenant, row)?)?;
            let cells = [
                e.seq.to_string(),
                e.occurred_at,
                e.actor_kind,
                e.actor_id.map(|a| a.to_string()).unwrap_or_default(),
                e.action,
                e.outcome,
                e.request_id.unwrap_or_default(),
                e.prev_hash,
                e.hash,
                e.record,
            ];
            writer
                .write_record(cells.iter().map(|c| defuse_formula(c).into_owned()))
                .map_err(csv_err)?;
            summary.events += 1;
        }
    }
    tx.rollback().await?;
    writer.flush()?;
    Ok(summary)
}

/// Prefixes a cell a spreadsheet would evaluate as a formula.
fn defuse_formula(cell: &str) -> std::borrow::Cow<'_, str> {
    if cell.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        std::borrow::Cow::Owned(format!("'{cell}"))
    } else {
        std::borrow::Cow::Borrowed(cell)
    }
}

/// Verifies a complete JSON lines export offline, with the same checks as
/// [`verify`](crate::verify()): trusted `keys` decide which checkpoints count; `external`
/// checkpoints (kept elsewhere) catch an export whose checkpoints were rewritten too.
///
/// # Errors
/// [`AuditError::Malformed`] for an export that is not well-formed, not complete (filtered
/// exports cannot be verified as a chain) or mixes tenants; [`AuditError::Export`] when reading
/// fails.
pub fn verify_export(
    input: impl BufRead,
    keys: &TrustedKeys,
    external: &[Checkpoint],
) -> Result<VerifyReport, AuditError> {
    let mut lines = input.lines();
    let header = lines
        .next()
        .ok_or(AuditError::Malformed("empty export"))??;
    let ExportLine::Chain {
        format,
        tenant,
        complete,
        base_seq,
        base_hash,
        ..
    } = serde_json::from_str(&header).map_err(|_| AuditError::Malformed("export header"))?
    else {
        return Err(AuditError::Malformed("export header"));
    };
    if format != EXPORT_FORMAT {
        return Err(AuditError::Malformed("unknown export format"));
    }
    if !complete {
        return Err(AuditError::Malformed(
            "a filtered export cannot be verified as a chain",
        ));
    }
    let tenant: TenantId = tenant
        .parse()
        .map_err(|_| AuditError::Malformed("export tenant"))?;
    let hash32 = |s: &str| -> Result<ChainHash, AuditError> {
        hex::decode(s)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or(AuditError::Malformed("hash"))
    };
    let base_hash = hash32(&base_hash)?;
    let mut checkpoints: Vec<Checkpoint> = external.to_vec();
    let mut verifier: Option<ChainVerifier> = None;
    let mut end: Option<(u64, u64)> = None;
    for line in lines {
        let line = line?;
        if line.is_empty() {
            continue;
        }
        match serde_json::from_str(&line).map_err(|_| AuditError::Malformed("export line"))? {
            _ if end.is_some() => return Err(AuditError::Malformed("lines after the end line")),
            ExportLine::Chain { .. } => return Err(AuditError::Malformed("second header")),
            ExportLine::End { events, last_seq } => end = Some((events, last_seq)),
            ExportLine::Checkpoint(cp) => {
                if verifier.is_some() {
                    return Err(AuditError::Malformed("checkpoint after events"));
                }
                checkpoints.push(cp);
            }
            ExportLine::Event(e) => {
                let v = verifier.get_or_insert_with(|| {
                    ChainVerifier::new(
                        tenant,
                        keys,
                        Some((base_seq, base_hash)),
                        std::mem::take(&mut checkpoints),
                    )
                });
                let prev = hex::decode(&e.prev_hash).unwrap_or_default();
                let hash = hex::decode(&e.hash).unwrap_or_default();
                v.push(&ChainRecord {
                    seq: e.seq,
                    tenant,
                    occurred_at: &e.occurred_at,
                    actor_kind: &e.actor_kind,
                    actor_id: e.actor_id,
                    action: &e.action,
                    outcome: &e.outcome,
                    request_id: e.request_id.as_deref(),
                    event: e.record.as_bytes(),
                    prev_hash: &prev,
                    hash: &hash,
                });
            }
        }
    }
    let verifier = verifier.unwrap_or_else(|| {
        ChainVerifier::new(tenant, keys, Some((base_seq, base_hash)), checkpoints)
    });
    let (events, last_seq) = end.ok_or(AuditError::Malformed("the export has no end line"))?;
    let report = verifier.finish(Some(last_seq));
    if report.is_intact() && report.events != events {
        return Err(AuditError::Malformed(
            "the end line's count does not match the events",
        ));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formula_cells_are_defused() {
        for cell in ["=HYPERLINK(\"x\")", "+1", "-1+2", "@SUM(A1)", "\tx", "\rx"] {
            assert!(defuse_formula(cell).starts_with('\''), "{cell:?}");
        }
        for cell in ["{\"a\":1}", "authn.login", "", "1"] {
            assert_eq!(defuse_formula(cell), cell);
        }
    }
}
