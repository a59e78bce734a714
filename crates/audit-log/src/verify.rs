//! Verification: walk a tenant's chain and report the first break, exactly.

use std::collections::BTreeMap;
use std::fmt;

use futures::TryStreamExt;
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};
use tenant_scope::TenantId;
use time::OffsetDateTime;

use crate::AuditError;
use crate::canonical::{CanonicalView, ChainHash, TIME_LEN, chain_hash, genesis_hash, write_time};
use crate::checkpoint::{Acknowledgement, Checkpoint, TrustedKeys};

/// What is wrong at the first break.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BreakKind {
    /// The event with this sequence number is missing (deleted, or the numbering has a gap).
    Missing,
    /// The event's recorded predecessor hash is not the previous event's hash (an event was
    /// inserted, removed and renumbered, or rows were swapped).
    LinkMismatch,
    /// The event's bytes do not hash to its recorded hash (edited or swapped payload).
    HashMismatch,
    /// The row's columns (tenant, time, actor, action, outcome, request id) disagree with its
    /// hashed record, or the record is not a valid canonical event.
    RecordMismatch,
    /// The record belongs to another tenant (copied in from another chain).
    ForeignTenant,
    /// The chain ends before this sequence number, but a trusted checkpoint (or an export's end
    /// line) says it goes further (tail truncation).
    Truncated,
    /// The chain is intact by itself but its hash here differs from a trusted checkpoint: the
    /// events after the previous checkpoint (`after`) up to here were rewritten with
    /// recomputed hashes.
    CheckpointMismatch {
        /// The last checkpoint that still matched (0: the start of the chain).
        after: u64,
    },
    /// An export holds events beyond the end it states.
    ExtraEvents,
    /// The chain starts after pruning, but no trusted checkpoint anchors that start.
    UnanchoredStart,
}

impl BreakKind {
    /// The name an [`Acknowledgement`] gives this kind, for the kinds a break of one event can
    /// have (the chain continues after it); `None` for the others (`Truncated`,
    /// `CheckpointMismatch`, `ExtraEvents`, `UnanchoredStart`), which cannot be acknowledged.
    #[must_use]
    pub const fn name(&self) -> Option<&'static str> {
        match self {
            Self::Missing => Some("missing"),
            Self::LinkMismatch => Some("link_mismatch"),
            Self::HashMismatch => Some("hash_mismatch"),
            Self::RecordMismatch => Some("record_mismatch"),
            Self::ForeignTenant => Some("foreign_tenant"),
            _ => None,
        }
    }

    /// The kind [`name`](Self::name) spells `name`.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        [
            Self::Missing,
            Self::LinkMismatch,
            Self::HashMismatch,
            Self::RecordMismatch,
            Self::ForeignTenant,
        ]
        .into_iter()
        .find(|kind| kind.name() == Some(name))
    }
}

/// The first place the chain fails to verify.
///
/// Built with [`ChainBreak::new`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChainBreak {
    /// The sequence number where verification failed.
    pub seq: u64,
    /// What is wrong there.
    pub kind: BreakKind,
}

impl ChainBreak {
    /// A break of `kind` at sequence number `seq`.
    #[must_use]
    pub const fn new(seq: u64, kind: BreakKind) -> Self {
        Self { seq, kind }
    }
}

impl fmt::Display for ChainBreak {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            BreakKind::CheckpointMismatch { after } => write!(
                f,
                "chain disagrees with the signed checkpoint at seq {}: events {}..={} were rewritten",
                self.seq,
                after + 1,
                self.seq
            ),
            kind => write!(f, "chain broken at seq {}: {kind:?}", self.seq),
        }
    }
}

/// What [`verify`] found.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct VerifyReport {
    /// The tenant.
    pub tenant: TenantId,
    /// Events pruned by retention: the chain starts after this sequence number.
    pub base_seq: u64,
    /// The last sequence number verified.
    pub last_seq: u64,
    /// Events checked.
    pub events: u64,
    /// Trusted checkpoints compared with the chain.
    pub checkpoints: u64,
    /// The newest trusted checkpoint that matched, if any.
    pub latest_checkpoint: Option<Checkpoint>,
    /// Checkpoints for this tenant that are not validly signed by a trusted key (forged, or by
    /// a key not given to the verifier). They are ignored for the chain — so junk cannot hide
    /// where a real break is — but their presence means the chain is not reported intact.
    pub rejected_checkpoints: Vec<Checkpoint>,
    /// Breaks an operator acknowledged (signed by a trusted key), with their acknowledgement:
    /// verification continued past each, from the event the acknowledgement names. They stay
    /// listed for as long as the acknowledgement exists, and the chain is then not intact.
    pub acknowledged: Vec<(ChainBreak, Acknowledgement)>,
    /// Stored acknowledgements that are not validly signed by a trusted key: never used.
    pub rejected_acknowledgements: Vec<Acknowledgement>,
    /// Events recorded (committed) but not yet chained by the sequencer, as of the same
    /// snapshot; always 0 for an export.
    pub pending: u64,
    /// When the oldest of them was queued, if any. An old one means the sequencer is not
    /// running or cannot chain it: see [`VerifyReport::pending_age`].
    pub oldest_pending: Option<OffsetDateTime>,
    /// `Ok` when the chain verifies (past acknowledged breaks), else the first break.
    pub result: Result<(), ChainBreak>,
}

impl VerifyReport {
    /// Whether the chain verified and every stored checkpoint is genuine.
    #[must_use]
    pub fn is_intact(&self) -> bool {
        self.result.is_ok()
            && self.rejected_checkpoints.is_empty()
            && self.acknowledged.is_empty()
            && self.rejected_acknowledgements.is_empty()
    }

    /// How long the oldest event not yet chained has waited, as of `now` (zero when none
    /// waits). Sequencing normally takes milliseconds: minutes mean the sequencer is down or
    /// stuck, and those events are not yet covered by the chain or any checkpoint.
    #[must_use]
    pub fn pending_age(&self, now: OffsetDateTime) -> std::time::Duration {
        self.oldest_pending
            .map_or(std::time::Duration::ZERO, |oldest| {
                (now - oldest)
                    .try_into()
                    .unwrap_or(std::time::Duration::ZERO)
            })
    }

    /// Events after the newest trusted checkpoint (or the chain's start): what an owner could
    /// still rewrite without the verifier noticing.
    #[must_use]
    pub fn unanchored(&self) -> u64 {
        let anchored = self
            .latest_checkpoint
            .as_ref()
            .map_or(self.base_seq, |c| c.seq.max(self.base_seq));
        self.last_seq.saturating_sub(anchored)
    }
}

/// One stored chain record, as read from the database or an export.
#[derive(Debug, Clone)]
pub(crate) struct ChainRecord<'a> {
    pub(crate) seq: u64,
    pub(crate) tenant: TenantId,
    pub(crate) occurred_at: &'a str,
    pub(crate) actor_kind: &'a str,
    pub(crate) actor_id: Option<uuid::Uuid>,
    pub(crate) action: &'a str,
    pub(crate) outcome: &'a str,
    pub(crate) request_id: Option<&'a str>,
    pub(crate) event: &'a [u8],
    pub(crate) prev_hash: &'a [u8],
    pub(crate) hash: &'a [u8],
}

/// Where a verification starts, when not at the genesis.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Start {
    /// After a retention anchor `(seq, hash)`.
    Anchor((u64, ChainHash)),
    /// After a trusted checkpoint `(seq, hash)`.
    Checkpoint((u64, ChainHash)),
}

/// The verification state machine, fed records in sequence order.
pub(crate) struct ChainVerifier {
    tenant: TenantId,
    tenant_text: String,
    checkpoints: BTreeMap<u64, (ChainHash, Checkpoint)>,
    prev: ChainHash,
    next: u64,
    last_matched_checkpoint: u64,
    watch: Option<(u64, Option<ChainHash>)>,
    /// Trusted acknowledgements by the sequence number of the break they cover.
    acknowledgements: BTreeMap<u64, Acknowledgement>,
    /// After an acknowledged break: the event the chain continues from, and its hash.
    resume: Option<(u64, ChainHash)>,
    report: VerifyReport,
}

impl ChainVerifier {
    /// Starts a verification. `base` is the pruned start `(seq, hash)` if any; `checkpoints`
    /// are every checkpoint known (stored and external).
    pub(crate) fn new(
        tenant: TenantId,
        keys: &TrustedKeys,
        base: Option<(u64, ChainHash)>,
        checkpoints: impl IntoIterator<Item = Checkpoint>,
    ) -> Self {
        Self::starting(tenant, keys, base.map(Start::Anchor), checkpoints)
    }

    /// Verification that resumes after a position the caller trusts: a retention anchor, or a
    /// checkpoint (incremental verification by the checkpointer). Either must be among
    /// `checkpoints` and validly signed.
    pub(crate) fn starting(
        tenant: TenantId,
        keys: &TrustedKeys,
        start: Option<Start>,
        checkpoints: impl IntoIterator<Item = Checkpoint>,
    ) -> Self {
        let tenant_text = tenant.to_string();
        let mut report = VerifyReport {
            tenant,
            base_seq: 0,
            last_seq: 0,
            events: 0,
            checkpoints: 0,
            latest_checkpoint: None,
            rejected_checkpoints: Vec::new(),
            acknowledged: Vec::new(),
            rejected_acknowledgements: Vec::new(),
            pending: 0,
            oldest_pending: None,
            result: Ok(()),
        };
        let mut map: BTreeMap<u64, (ChainHash, Checkpoint)> = BTreeMap::new();
        let mut anchors: BTreeMap<u64, ChainHash> = BTreeMap::new();
        let mut first_bad: Option<ChainBreak> = None;
        for cp in checkpoints {
            if cp.tenant != tenant_text {
                continue; // Another tenant's (a shared file of external checkpoints).
            }
            let hash = match cp.hash_bytes() {
                Ok(hash) if keys.verifies(&cp) => hash,
                _ => {
                    report.rejected_checkpoints.push(cp);
                    continue;
                }
            };
            if cp.is_prune_anchor() {
                anchors.insert(cp.seq, hash);
            }
            match map.get(&cp.seq) {
                // Two trusted statements about one position that disagree: a fork.
                Some((other, _)) if *other != hash => {
                    let b = ChainBreak {
                        seq: cp.seq,
                        kind: BreakKind::CheckpointMismatch { after: 0 },
                    };
                    if first_bad.as_ref().is_none_or(|f| b.seq < f.seq) {
                        first_bad = Some(b);
                    }
                }
                Some(_) if cp.is_prune_anchor() => {}
                _ => {
                    map.insert(cp.seq, (hash, cp));
                }
            }
        }
        let (prev, next, base_seq) = match start {
            None | Some(Start::Anchor((0, _)) | Start::Checkpoint((0, _))) => {
                (genesis_hash(tenant), 1, 0)
            }
            Some(start @ (Start::Anchor((seq, hash)) | Start::Checkpoint((seq, hash)))) => {
                // A pruned start must be a trusted retention anchor (not just any checkpoint);
                // a resumed verification, a trusted checkpoint.
                let next = seq.saturating_add(1);
                let trusted = match start {
                    Start::Anchor(_) => anchors.get(&seq) == Some(&hash),
                    Start::Checkpoint(_) => map.get(&seq).is_some_and(|(h, _)| *h == hash),
                };
                if !trusted {
                    let b = ChainBreak {
                        seq: next,
                        kind: BreakKind::UnanchoredStart,
                    };
                    if first_bad.as_ref().is_none_or(|f| b.seq < f.seq) {
                        first_bad = Some(b);
                    }
                }
                (hash, next, seq)
            }
        };
        report.base_seq = base_seq;
        report.last_seq = base_seq;
        if let Some((_, cp)) = map.get(&base_seq) {
            report.latest_checkpoint = Some(cp.clone());
        }
        let mut verifier = Self {
            tenant,
            tenant_text,
            checkpoints: map,
            prev,
            next,
            last_matched_checkpoint: base_seq,
            watch: None,
            acknowledgements: BTreeMap::new(),
            resume: None,
            report,
        };
        if let Some(b) = first_bad {
            verifier.report.result = Err(b);
        }
        verifier
    }

    /// Lets verification continue past breaks that `acks` acknowledge (those validly signed
    /// by a trusted key for this tenant; the others are listed as rejected).
    pub(crate) fn with_acknowledgements(
        mut self,
        keys: &TrustedKeys,
        acks: impl IntoIterator<Item = Acknowledgement>,
    ) -> Self {
        for ack in acks {
            if ack.tenant != self.tenant_text {
                continue;
            }
            if keys.verifies_acknowledgement(&ack) && ack.resume_seq > ack.break_seq {
                self.acknowledgements.insert(ack.break_seq, ack);
            } else {
                self.report.rejected_acknowledgements.push(ack);
            }
        }
        self
    }

    /// A break at `seq` while checking `r`: acknowledged (then `r` is checked again, from the
    /// acknowledgement's resume point), or the first break.
    fn break_at(&mut self, seq: u64, kind: BreakKind, r: &ChainRecord<'_>) {
        let acknowledged = self.acknowledgements.get(&seq).and_then(|ack| {
            let hash = ack.resume_hash_bytes().ok()?;
            (kind.name() == Some(ack.kind.as_str())).then(|| (ack.clone(), hash))
        });
        match acknowledged {
            Some((ack, hash)) if self.resume.is_none() => {
                self.resume = Some((ack.resume_seq, hash));
                self.report
                    .acknowledged
                    .push((ChainBreak { seq, kind }, ack));
                self.push(r);
            }
            _ => self.fail(seq, kind),
        }
    }

    /// The event an acknowledgement resumes from: its stored hash must be the one the
    /// acknowledgement signed, and the event must hash to it and agree with its columns; it
    /// then becomes the trusted predecessor. Events between the break and it are skipped.
    fn resume_at(&mut self, r: &ChainRecord<'_>, (seq, expected): (u64, ChainHash)) {
        if r.seq < seq {
            return;
        }
        self.resume = None;
        if r.seq > seq {
            self.fail(seq, BreakKind::Missing);
            return;
        }
        let (Ok(hash), Ok(prev)) = (
            <ChainHash>::try_from(r.hash),
            <ChainHash>::try_from(r.prev_hash),
        ) else {
            self.fail(r.seq, BreakKind::HashMismatch);
            return;
        };
        if hash != expected || chain_hash(self.tenant, r.seq, &prev, r.event) != hash {
            self.fail(r.seq, BreakKind::HashMismatch);
            return;
        }
        if let Err(kind) = check_record(self.tenant, &self.tenant_text, r) {
            self.fail(r.seq, kind);
            return;
        }
        self.accept(r, hash);
    }

    fn fail(&mut self, seq: u64, kind: BreakKind) {
        if self
            .report
            .result
            .as_ref()
            .err()
            .is_none_or(|b| seq < b.seq)
        {
            self.report.result = Err(ChainBreak { seq, kind });
        }
    }

    /// Remembers the verified hash at `seq`.
    pub(crate) const fn watch(&mut self, seq: u64) {
        self.watch = Some((seq, None));
    }

    /// The verified hash at the watched position, once passed.
    pub(crate) fn watched(&self) -> Option<ChainHash> {
        self.watch.and_then(|(_, hash)| hash)
    }

    /// The last verified `(seq, hash)`.
    pub(crate) const fn last(&self) -> (u64, ChainHash) {
        (self.next.saturating_sub(1), self.prev)
    }

    /// Whether a break was already found (callers may stop feeding).
    pub(crate) fn broken(&self) -> bool {
        self.report.result.is_err()
    }

    /// Checks the next record.
    pub(crate) fn push(&mut self, r: &ChainRecord<'_>) {
        if self.broken() {
            return;
        }
        if let Some(resume) = self.resume {
            self.resume_at(r, resume);
            return;
        }
        if r.seq != self.next {
            let seq = self.next.min(r.seq);
            self.break_at(seq, BreakKind::Missing, r);
            return;
        }
        let Ok(hash): Result<ChainHash, _> = r.hash.try_into() else {
            self.break_at(r.seq, BreakKind::HashMismatch, r);
            return;
        };
        if r.prev_hash != self.prev {
            self.break_at(r.seq, BreakKind::LinkMismatch, r);
            return;
        }
        if chain_hash(self.tenant, r.seq, &self.prev, r.event) != hash {
            self.break_at(r.seq, BreakKind::HashMismatch, r);
            return;
        }
        if let Err(kind) = check_record(self.tenant, &self.tenant_text, r) {
            self.break_at(r.seq, kind, r);
            return;
        }
        self.accept(r, hash);
    }

    /// Takes `r` (with hash `hash`) as the next verified event.
    fn accept(&mut self, r: &ChainRecord<'_>, hash: ChainHash) {
        if let Some((expected, cp)) = self.checkpoints.get(&r.seq) {
            if *expected != hash {
                let after = self.last_matched_checkpoint;
                self.fail(r.seq, BreakKind::CheckpointMismatch { after });
                return;
            }
            self.last_matched_checkpoint = r.seq;
            self.report.checkpoints += 1;
            self.report.latest_checkpoint = Some(cp.clone());
        }
        if let Some((seq, slot)) = &mut self.watch
            && *seq == r.seq
        {
            *slot = Some(hash);
        }
        self.prev = hash;
        self.next = r.seq.saturating_add(1);
        self.report.events += 1;
        self.report.last_seq = r.seq;
    }

    /// Ends the walk; `expected_last` is the last sequence number the source states (an
    /// export's end line), when it states one.
    pub(crate) fn finish(mut self, expected_last: Option<u64>) -> VerifyReport {
        if let Some((seq, _)) = self.resume.take() {
            // An acknowledgement names an event the chain never reached.
            self.fail(seq, BreakKind::Missing);
        }
        // Breaks acknowledged before the chain's start (pruned since) stay listed.
        let base = self.report.base_seq;
        for ack in self.acknowledgements.range(..=base).map(|(_, ack)| ack) {
            if let Some(kind) = BreakKind::from_name(&ack.kind) {
                self.report.acknowledged.push((
                    ChainBreak {
                        seq: ack.break_seq,
                        kind,
                    },
                    ack.clone(),
                ));
            }
        }
        self.report.acknowledged.sort_by_key(|(b, _)| b.seq);
        if !self.broken() {
            let last = self.next.saturating_sub(1);
            match expected_last {
                Some(expected) if expected > last => self.fail(last + 1, BreakKind::Truncated),
                Some(expected) if expected < last => {
                    self.fail(expected + 1, BreakKind::ExtraEvents);
                }
                _ => {}
            }
            if self.checkpoints.range(last + 1..).next().is_some() {
                self.fail(last + 1, BreakKind::Truncated);
            }
        }
        self.report
    }
}

/// The row's columns must say what its hashed record says.
fn check_record(tenant: TenantId, tenant_text: &str, r: &ChainRecord<'_>) -> Result<(), BreakKind> {
    let view: CanonicalView<'_> =
        serde_json::from_slice(r.event).map_err(|_| BreakKind::RecordMismatch)?;
    if view.tenant != tenant_text || r.tenant != tenant {
        return Err(BreakKind::ForeignTenant);
    }
    let actor_id = view
        .actor
        .id
        .as_deref()
        .map(uuid::Uuid::parse_str)
        .transpose()
        .map_err(|_| BreakKind::RecordMismatch)?;
    let same = view.schema == crate::SCHEMA_VERSION
        && view.occurred_at == r.occurred_at
        && view.action == r.action
        && view.actor.kind == r.actor_kind
        && actor_id == r.actor_id
        && view.outcome.status == r.outcome
        && view.request_id.as_deref() == r.request_id;
    if same {
        Ok(())
    } else {
        Err(BreakKind::RecordMismatch)
    }
}

pub(crate) type EventRow = (
    i64,
    OffsetDateTime,
    String,
    Option<uuid::Uuid>,
    String,
    String,
    Option<String>,
    Vec<u8>,
    Vec<u8>,
    Vec<u8>,
);

pub(crate) const SELECT_EVENTS: &str = "SELECT seq, occurred_at, actor_kind, actor_id, action, \
     outcome, request_id, event, prev_hash, hash FROM audit.events WHERE tenant_id = $1";

fn check_row(
    verifier: &mut ChainVerifier,
    tenant: TenantId,
    row: &PgRow,
) -> Result<(), AuditError> {
    // Borrowed straight out of the received message: a chain of millions of events is checked
    // without allocating per event.
    let time = row_time(row)?;
    verifier.push(&chain_record(row, tenant, &time)?);
    Ok(())
}

/// A row's time, formatted as its record states it.
fn row_time(row: &PgRow) -> Result<[u8; TIME_LEN], AuditError> {
    let at: OffsetDateTime = row.try_get(1)?;
    let mut time = [0u8; TIME_LEN];
    write_time(at, &mut time)?;
    Ok(time)
}

/// A row of [`SELECT_EVENTS`] as a [`ChainRecord`], borrowing from the row and `time` (see
/// [`row_time`]).
fn chain_record<'a>(
    row: &'a PgRow,
    tenant: TenantId,
    time: &'a [u8; TIME_LEN],
) -> Result<ChainRecord<'a>, AuditError> {
    let seq: i64 = row.try_get(0)?;
    Ok(ChainRecord {
        seq: u64::try_from(seq).map_err(|_| AuditError::Malformed("seq"))?,
        tenant,
        occurred_at: std::str::from_utf8(time).map_err(|_| AuditError::Malformed("time"))?,
        actor_kind: row.try_get(2)?,
        actor_id: row.try_get(3)?,
        action: row.try_get(4)?,
        outcome: row.try_get(5)?,
        request_id: row.try_get(6)?,
        event: row.try_get(7)?,
        prev_hash: row.try_get(8)?,
        hash: row.try_get(9)?,
    })
}

/// Opens a read-only, repeatable-read transaction bound to `tenant` (one consistent snapshot of
/// events, anchor and checkpoints); with `key_order`, also set to read the chain in key order
/// (see [`in_chain_order`]) in the same round trip.
pub(crate) async fn snapshot(
    pool: &PgPool,
    tenant: TenantId,
    key_order: bool,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, AuditError> {
    let mut tx = pool.begin().await?;
    // `tenant` is a validated UUID: inlining it is injection-free.
    let mut sql = format!(
        "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY; \
         SET LOCAL app.tenant_id = '{tenant}'"
    );
    if key_order {
        sql = format!("{sql}; {KEY_ORDER}");
    }
    // `Executor::execute` rather than `RawSql::execute`: the latter's future is not provably
    // `Send` (its executor lifetime is higher-ranked), which made `verify` and
    // `AuditQuery::fetch` unusable from an axum handler.
    sqlx::Executor::execute(&mut *tx, sqlx::raw_sql(&sql)).await?;
    Ok(tx)
}

/// Where a pruned chain starts, `(seq, hash)`, if it was pruned.
pub(crate) async fn load_anchor(
    conn: &mut sqlx::PgConnection,
    tenant: TenantId,
) -> Result<Option<(u64, ChainHash)>, AuditError> {
    let row: Option<(i64, Vec<u8>)> =
        sqlx::query_as("SELECT base_seq, base_hash FROM audit.anchors WHERE tenant_id = $1")
            .bind(tenant.as_uuid())
            .fetch_optional(&mut *conn)
            .await?;
    row.map(|(seq, hash)| {
        let bad = || AuditError::Malformed("chain anchor");
        Ok((
            u64::try_from(seq).map_err(|_| bad())?,
            hash.try_into().map_err(|_| bad())?,
        ))
    })
    .transpose()
}

pub(crate) async fn load_checkpoints(
    conn: &mut sqlx::PgConnection,
    tenant: TenantId,
) -> Result<Vec<Checkpoint>, AuditError> {
    type CheckpointRow = (i64, Vec<u8>, String, String, Vec<u8>, Option<String>);
    let sql = format!(
        "SELECT seq, hash, {}, key_id, signature, \
                CASE WHEN prune_cutoff IS NOT NULL THEN {} END \
         FROM audit.checkpoints WHERE tenant_id = $1 ORDER BY seq, anchor",
        stored_time("signed_at"),
        stored_time("prune_cutoff"),
    );
    let rows: Vec<CheckpointRow> = sqlx::query_as(&sql)
        .bind(tenant.as_uuid())
        .fetch_all(&mut *conn)
        .await?;
    rows.into_iter()
        .map(|(seq, hash, signed_at, key_id, signature, prune_cutoff)| {
            Ok(Checkpoint {
                tenant: tenant.to_string(),
                seq: u64::try_from(seq).map_err(|_| AuditError::Malformed("checkpoint"))?,
                hash: hex::encode(hash),
                signed_at,
                key_id,
                signature: hex::encode(signature),
                prune_cutoff,
            })
        })
        .collect()
}

/// The first event at or after `from` that is consistent by itself (it hashes to its stored
/// hash over its stored predecessor, and its columns agree with its record): where a chain can
/// continue after a break. `None` when there is none.
pub(crate) async fn resume_point(
    conn: &mut sqlx::PgConnection,
    tenant: TenantId,
    from: u64,
) -> Result<Option<(u64, ChainHash)>, AuditError> {
    in_chain_order(&mut *conn).await?;
    let sql = format!("{SELECT_EVENTS} AND seq >= $2 ORDER BY seq");
    let mut rows = sqlx::query(&sql)
        .bind(tenant.as_uuid())
        .bind(i64::try_from(from).map_err(|_| AuditError::Malformed("seq"))?)
        .fetch(&mut *conn);
    let tenant_text = tenant.to_string();
    while let Some(row) = rows.try_next().await? {
        let time = row_time(&row)?;
        let record = chain_record(&row, tenant, &time)?;
        let seq = record.seq;
        let (Ok(hash), Ok(prev)) = (
            <ChainHash>::try_from(record.hash),
            <ChainHash>::try_from(record.prev_hash),
        ) else {
            continue;
        };
        if chain_hash(tenant, seq, &prev, record.event) == hash
            && check_record(tenant, &tenant_text, &record).is_ok()
        {
            return Ok(Some((seq, hash)));
        }
    }
    Ok(None)
}

/// A stored signing time as the text that was signed, formatted by the server.
///
/// Rows in these tables come from roles that may hold no key: a time no RFC 3339 text can
/// carry (a BC date, a year past 9999, `infinity`) must not stop the loading of every other row.
/// Such a row gets text that no signature covers and is rejected like any other junk.
fn stored_time(column: &str) -> String {
    format!(
        "COALESCE(pg_catalog.to_char({column} AT TIME ZONE 'UTC', \
                  'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') \
                  || CASE WHEN {column} < '0001-01-01 00:00:00+00' THEN ' BC' ELSE '' END, \
                  'unrepresentable')"
    )
}

/// The acknowledgements stored for `tenant` (trusted or not: the verifier decides).
pub(crate) async fn load_acknowledgements(
    conn: &mut sqlx::PgConnection,
    tenant: TenantId,
) -> Result<Vec<Acknowledgement>, AuditError> {
    type AckRow = (
        i64,
        String,
        i64,
        Vec<u8>,
        String,
        String,
        String,
        String,
        Vec<u8>,
    );
    let sql = format!(
        "SELECT break_seq, kind, resume_seq, resume_hash, by_whom, reason, {}, key_id, \
                signature \
         FROM audit.acknowledgements WHERE tenant_id = $1 ORDER BY break_seq",
        stored_time("signed_at"),
    );
    let rows: Vec<AckRow> = sqlx::query_as(&sql)
        .bind(tenant.as_uuid())
        .fetch_all(&mut *conn)
        .await?;
    let bad = || AuditError::Malformed("acknowledgement");
    rows.into_iter()
        .map(
            |(break_seq, kind, resume_seq, resume_hash, by, reason, at, key_id, signature)| {
                Ok(Acknowledgement {
                    tenant: tenant.to_string(),
                    break_seq: u64::try_from(break_seq).map_err(|_| bad())?,
                    kind,
                    resume_seq: u64::try_from(resume_seq).map_err(|_| bad())?,
                    resume_hash: hex::encode(resume_hash),
                    by,
                    reason,
                    signed_at: at,
                    key_id,
                    signature: hex::encode(signature),
                })
            },
        )
        .collect()
}

/// What [`in_chain_order`] sends.
const KEY_ORDER: &str = "SET LOCAL enable_sort = off";

/// Makes the rest of the transaction read a chain in primary-key order rather than sort it.
///
/// A chain that was just written has no planner statistics yet: PostgreSQL then guesses a
/// tenant holds a few hundred rows, picks a bitmap scan and sorts the result — for a long chain
/// a sort that spills to disk and halves the read rate. The primary key `(tenant_id, seq)`
/// already yields a chain in order, so sorting is never worth it here. The setting lasts until
/// the transaction ends (in retention's write transactions it changes plans, never results).
/// A statement run after it must have a text of its own: a plan cached for the same text
/// under other settings would be reused as it is.
pub(crate) async fn in_chain_order(conn: &mut sqlx::PgConnection) -> Result<(), AuditError> {
    sqlx::Executor::execute(conn, sqlx::raw_sql(KEY_ORDER)).await?;
    Ok(())
}

/// Streams `tenant`'s events after `after` through `verifier`, checking each row as it
/// arrives (decoding borrows from the received message) and stopping at the first break.
pub(crate) async fn walk(
    conn: &mut sqlx::PgConnection,
    tenant: TenantId,
    mut verifier: ChainVerifier,
    after: u64,
) -> Result<ChainVerifier, AuditError> {
    in_chain_order(&mut *conn).await?;
    let sql = format!("{SELECT_EVENTS} AND seq > $2 ORDER BY seq");
    let mut rows = sqlx::query(&sql)
        .bind(tenant.as_uuid())
        .bind(i64::try_from(after).map_err(|_| AuditError::Malformed("seq"))?)
        .fetch(&mut *conn);
    while let Some(row) = rows.try_next().await? {
        check_row(&mut verifier, tenant, &row)?;
        if verifier.broken() {
            break;
        }
    }
    Ok(verifier)
}

/// Verifies `tenant`'s chain: streams every event in order and reports the exact sequence
/// number of the first break — a missing event, a broken link, an edited or swapped payload,
/// a row whose columns disagree with its record, a record from another tenant, a truncated tail
/// (against checkpoints), a consistent rewrite (against a trusted checkpoint), or a pruned start
/// that no trusted retention anchor covers. Checkpoints not validly signed by a trusted key are
/// listed in [`VerifyReport::rejected_checkpoints`] (and the chain is then not reported intact)
/// but never used, so they cannot hide where a break is.
///
/// `pool` may be the runtime role's (row-level security shows it the tenant's rows) or that of
/// any role granted `SELECT` on the audit schema (the owner, or an auditor role you create).
/// `external` are checkpoints kept outside the database; they are what catches an owner who
/// rewrote the database's checkpoints too.
///
/// # Errors
/// [`AuditError::Database`] when the chain cannot be read: a chain that cannot be read is never
/// reported intact.
pub async fn verify(
    pool: &PgPool,
    tenant: TenantId,
    keys: &TrustedKeys,
    external: &[Checkpoint],
) -> Result<VerifyReport, AuditError> {
    // `walk` sets the key order itself (retention walks in transactions of its own).
    let mut tx = snapshot(pool, tenant, false).await?;
    let base = load_anchor(&mut tx, tenant).await?;
    let mut checkpoints = load_checkpoints(&mut tx, tenant).await?;
    checkpoints.extend(external.iter().cloned());
    let acknowledgements = load_acknowledgements(&mut tx, tenant).await?;
    let verifier = ChainVerifier::new(tenant, keys, base, checkpoints)
        .with_acknowledgements(keys, acknowledgements);
    let verifier = walk(&mut tx, tenant, verifier, base.map_or(0, |(seq, _)| seq)).await?;
    let (pending, oldest): (i64, Option<OffsetDateTime>) =
        sqlx::query_as("SELECT count(*), min(inserted_at) FROM audit.pending WHERE tenant_id = $1")
            .bind(tenant.as_uuid())
            .fetch_one(&mut *tx)
            .await?;
    tx.rollback().await?;
    let mut report = verifier.finish(None);
    report.pending = u64::try_from(pending).unwrap_or(0);
    report.oldest_pending = oldest;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::canonical::{canonical_bytes, format_time, now_micros};
    use crate::event::{AuditActor, AuditEvent, Outcome, Target};

    struct Built {
        seq: u64,
        occurred_at: String,
        action: String,
        outcome: &'static str,
        request_id: Option<String>,
        event: Vec<u8>,
        prev: ChainHash,
        hash: ChainHash,
    }

    fn chain(tenant: TenantId, specs: &[(String, u8, String, Option<String>)]) -> Vec<Built> {
        let mut prev = genesis_hash(tenant);
        let mut out = Vec::new();
        for (i, (action, outcome, meta, request_id)) in specs.iter().enumerate() {
            let outcome = match outcome % 3 {
                0 => Outcome::Allowed,
                1 => Outcome::denied(meta),
                _ => Outcome::failed(meta),
            };
            let mut event = AuditEvent::new(
                tenant,
                AuditActor::anonymous(),
                crate::Action::new(action).unwrap(),
                outcome,
            )
            .with_target(Target::new("k", meta))
            .unwrap()
            .with_metadata(serde_json::json!({ "m": meta, "n": [1, {"z": meta}] }))
            .unwrap();
            if let Some(id) = request_id {
                event = event.with_request_id(id);
            }
            let at = now_micros();
            let bytes = canonical_bytes(&event, at).unwrap();
            let seq = i as u64 + 1;
            let hash = chain_hash(tenant, seq, &prev, &bytes);
            out.push(Built {
                seq,
                occurred_at: format_time(at).unwrap(),
                action: action.clone(),
                outcome: event.outcome().status(),
                request_id: event.request_id.clone(),
                event: bytes,
                prev,
                hash,
            });
            prev = hash;
        }
        out
    }

    fn run(tenant: TenantId, built: &[Built]) -> VerifyReport {
        let keys = TrustedKeys::new();
        let mut v = ChainVerifier::new(tenant, &keys, None, Vec::new());
        for b in built {
            v.push(&ChainRecord {
                seq: b.seq,
                tenant,
                occurred_at: &b.occurred_at,
                actor_kind: "anonymous",
                actor_id: None,
                action: &b.action,
                outcome: b.outcome,
                request_id: b.request_id.as_deref(),
                event: &b.event,
                prev_hash: &b.prev,
                hash: &b.hash,
            });
        }
        v.finish(Some(built.len() as u64))
    }

    fn specs() -> impl Strategy<Value = Vec<(String, u8, String, Option<String>)>> {
        proptest::collection::vec(
            (
                "[a-z][a-z0-9_]{0,8}\\.[a-z][a-z0-9_]{0,8}",
                any::<u8>(),
                any::<String>(),
                proptest::option::of(any::<String>()),
            ),
            0..24,
        )
    }

    proptest! {
        #[test]
        fn verify_accepts_every_untampered_chain(specs in specs()) {
            let tenant = TenantId::new_random();
            let built = chain(tenant, &specs);
            let report = run(tenant, &built);
            prop_assert!(report.is_intact(), "{:?}", report.result);
            prop_assert_eq!(report.events, specs.len() as u64);
        }

        #[test]
        fn any_flipped_byte_is_found_at_its_seq(
            specs in specs().prop_filter("non-empty", |s| !s.is_empty()),
            pick in any::<prop::sample::Index>(),
            byte in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let tenant = TenantId::new_random();
            let mut built = chain(tenant, &specs);
            let i = pick.index(built.len());
            let j = byte.index(built[i].event.len());
            built[i].event[j] ^= 1 << bit;
            let report = run(tenant, &built);
            prop_assert_eq!(report.result.unwrap_err().seq, i as u64 + 1);
        }
    }
}
