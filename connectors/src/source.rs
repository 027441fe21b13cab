//! The source side: capture changes from a database.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use std::time::Duration;

use async_trait::async_trait;
use backflow_schemas::{ChangeEvent, Row, Snapshot, SourceInfo, TableDesc};

use crate::ConnectorError;

/// Where a source is in its database's change history: an LSN, a binlog
/// `file:pos` or GTID set, a polling watermark. Opaque to the runtime, which
/// stores it durably and hands it back on restart.
///
/// Shared: every change of a transaction carries its position, so cloning
/// one is a reference count, not a copy.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Position(pub Arc<str>);

impl Position {
    /// The position's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<String> for Position {
    fn from(s: String) -> Self {
        Self(s.into())
    }
}

impl From<&str> for Position {
    fn from(s: &str) -> Self {
        Self(s.into())
    }
}

/// One captured change.
#[derive(Debug, Clone)]
pub struct SourceRecord {
    /// The table it belongs to (its current description, for the schema).
    pub table: Arc<TableDesc>,
    /// The change.
    pub event: ChangeEvent,
    /// Resuming from this position replays nothing before this change.
    pub position: Position,
}

/// A change the source captured but could not turn into an event (a value
/// that does not convert); it goes to the dead-letter topic.
#[derive(Debug, Clone)]
pub struct RejectedRecord {
    /// `schema.table` it came from.
    pub table: String,
    /// Its position.
    pub position: Position,
    /// Why (never the value).
    pub reason: String,
}

/// What a source yields at a time, in commit order.
#[derive(Debug, Clone, Default)]
pub struct SourceBatch {
    /// Changes in order; per key, in commit order.
    pub records: Vec<SourceRecord>,
    /// Changes that could not be read, for the dead-letter topic.
    pub rejected: Vec<RejectedRecord>,
    /// Set when the batch ends at a transaction boundary: once every
    /// record up to here (this batch and all before it) is in Kafka, the
    /// runtime acknowledges this position. A batch that ends inside a
    /// transaction carries the checkpoint of the last transaction it
    /// completed, if any.
    pub checkpoint: Option<Position>,
    /// Whether the batch ends inside a source transaction (a large one,
    /// streamed through in bounded batches): the records after
    /// `checkpoint` belong to a transaction the next batches go on with.
    /// A runtime that writes exactly once keeps them in one Kafka
    /// transaction with the rest of the source transaction.
    pub open_transaction: bool,
}

impl SourceBatch {
    /// An empty batch with room for `records` changes, so that filling a
    /// batch of the size the runtime asks for moves no record twice.
    pub fn with_capacity(records: usize) -> Self {
        Self {
            records: Vec::with_capacity(records),
            ..Self::default()
        }
    }
}

/// A database change capture.
///
/// Contract: the runtime publishes every record to Kafka and, once every
/// record before a batch's [`SourceBatch::checkpoint`] is acknowledged by
/// Kafka, calls [`Source::acknowledge`] with that checkpoint. Only then may the source let the database
/// discard history up to that position (advance the replication slot, purge
/// the binlog). After a crash the source resumes from the last acknowledged
/// position, so no acknowledged change is lost and at most the
/// unacknowledged tail is sent again.
#[async_trait]
pub trait Source: Send {
    /// Checks prerequisites, resumes from `position` (none: first start,
    /// take the initial snapshot as configured) and returns the tables it
    /// captures.
    async fn start(
        &mut self,
        position: Option<Position>,
    ) -> Result<Vec<Arc<TableDesc>>, ConnectorError>;

    /// Waits for the next changes, at most `max` of them. Returns now and
    /// then even when nothing changed (an empty batch): the runtime hands
    /// [`Source::acknowledge`] its positions between batches.
    async fn next_batch(&mut self, max: usize) -> Result<SourceBatch, ConnectorError>;

    /// Every record up to and including `position` is durably in Kafka.
    async fn acknowledge(&mut self, position: &Position) -> Result<(), ConnectorError>;

    /// Releases connections; called once on shutdown.
    async fn shutdown(&mut self) -> Result<(), ConnectorError>;

    /// Live figures the source keeps current after [`Source::start`], for
    /// metrics and feed status; `None` when it keeps none.
    fn gauges(&self) -> Option<Arc<SourceGauges>> {
        None
    }

    /// Whether this source needs the rows its raw topics hold (a polling
    /// source: before-images it cannot read from the database, and deletes
    /// it cannot see otherwise). `Some(every)`: the runtime calls
    /// [`Source::topic_state`] for every table once after [`Source::start`]
    /// and before the first [`Source::next_batch`], then again every
    /// `every` (`Duration::MAX`: only at start). `None` (the default): never.
    fn topic_state_interval(&self) -> Option<Duration> {
        None
    }

    /// The current rows the raw topic holds for `table`: the last
    /// after-image of every key not deleted, mapped onto `table`'s columns
    /// (a column the topic's record lacks is NULL), read after every record
    /// this source yielded before was acknowledged by Kafka. The source may
    /// keep them (before-images of later updates) and return deletes (the
    /// before-image being the topic's row) for keys the table no longer
    /// has; the runtime publishes the returned batch like any other, before
    /// the changes of the next [`Source::next_batch`].
    async fn topic_state(
        &mut self,
        table: &Arc<TableDesc>,
        topic_rows: Vec<Row>,
    ) -> Result<SourceBatch, ConnectorError> {
        let _ = (table, topic_rows);
        Ok(SourceBatch::default())
    }
}

/// What every event of one captured table says of where it came from,
/// reference-counted: an event costs a count per field, not an
/// allocation and a copy.
#[derive(Debug, Clone)]
pub(crate) struct Provenance {
    version: Arc<str>,
    connector: Arc<str>,
    name: Arc<str>,
    node: Arc<str>,
    db: Arc<str>,
    schema: Option<Arc<str>>,
    table: Arc<str>,
}

impl Provenance {
    /// The provenance of `table` (in `db`, and `schema` where the database
    /// has them) captured by the `connector` feed `feed` of `node`.
    pub(crate) fn new(
        connector: &str,
        feed: &str,
        node: &str,
        db: &str,
        schema: Option<&str>,
        table: &str,
    ) -> Self {
        Self {
            version: env!("CARGO_PKG_VERSION").into(),
            connector: connector.into(),
            name: feed.into(),
            node: node.into(),
            db: db.into(),
            schema: schema.map(Into::into),
            table: table.into(),
        }
    }

    /// The `source` of one event.
    pub(crate) fn info(
        &self,
        ts_ms: i64,
        snapshot: Snapshot,
        position: Arc<str>,
        txid: Option<Arc<str>>,
    ) -> SourceInfo {
        SourceInfo {
            version: self.version.clone(),
            connector: self.connector.clone(),
            name: self.name.clone(),
            node: self.node.clone(),
            ts_ms,
            snapshot,
            db: self.db.clone(),
            schema: self.schema.clone(),
            table: self.table.clone(),
            position,
            txid,
        }
    }
}

/// Prefix of a checkpoint taken inside an initial snapshot (sources whose
/// every snapshot chunk is a checkpoint).
pub(crate) const SNAPSHOT_PREFIX: &str = "snapshot:";

/// The checkpoint of a snapshot chunk: `snapshot:` and the progress as JSON.
pub(crate) fn snapshot_checkpoint<S: serde::Serialize>(progress: &S) -> Position {
    format!(
        "{SNAPSHOT_PREFIX}{}",
        serde_json::to_string(progress).expect("serializes")
    )
    .into()
}

/// What a stored checkpoint says: nothing (first start), how far the
/// snapshot got (`S`), or where the stream is (`P`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Resume<S, P> {
    /// First start: nothing was ever acknowledged.
    Nothing,
    /// The snapshot was under way.
    Snapshot(S),
    /// Streaming: every change up to here is in Kafka.
    Stream(P),
}

impl<S: serde::de::DeserializeOwned, P> Resume<S, P> {
    /// Reads a stored checkpoint; `stream` reads a stream position.
    pub(crate) fn parse(
        position: Option<&Position>,
        stream: impl Fn(&Position) -> Result<P, ConnectorError>,
    ) -> Result<Self, ConnectorError> {
        let Some(p) = position else {
            return Ok(Resume::Nothing);
        };
        match p.0.strip_prefix(SNAPSHOT_PREFIX) {
            Some(json) => serde_json::from_str(json).map(Resume::Snapshot).map_err(|e| {
                ConnectorError::definite(format!(
                    "the stored snapshot checkpoint cannot be read ({e}); take a new snapshot with `backflow source --resnapshot`"
                ))
            }),
            None => stream(p).map(Resume::Stream),
        }
    }
}

/// Deletes for the rows a raw topic holds whose keys the table no longer
/// has (`current`: the table's keys, as [`row_bytes`] gives them), so a new
/// snapshot leaves no row behind that was deleted while no change stream
/// recorded it. The before-image is the topic's row; `info` gives each
/// event's source block.
pub(crate) fn vanished(
    feed: &str,
    table: &Arc<TableDesc>,
    topic_rows: Vec<Row>,
    current: &std::collections::HashSet<Vec<u8>>,
    position: &Position,
    info: impl Fn() -> backflow_schemas::SourceInfo,
) -> SourceBatch {
    let records: Vec<SourceRecord> = topic_rows
        .into_iter()
        .filter_map(|row| {
            let key = table.key_of(&row);
            if current.contains(&row_bytes(&key)) {
                return None;
            }
            let source = info();
            Some(SourceRecord {
                table: table.clone(),
                event: ChangeEvent {
                    key,
                    before: Some(row),
                    after: None,
                    ts_ms: Some(source.ts_ms),
                    source,
                    op: backflow_schemas::Op::Delete,
                    transaction: None,
                },
                position: position.clone(),
            })
        })
        .collect();
    if !records.is_empty() {
        tracing::warn!(feed, table = %table.qualified_name(), deleted = records.len(), "rows the raw topic held and the table no longer has are deleted");
    }
    SourceBatch {
        records,
        ..SourceBatch::default()
    }
}

/// Bytes equal for equal rows (floats by their bits), to key maps and
/// compare rows.
pub(crate) fn row_bytes(row: &Row) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 * row.0.len());
    let put = |out: &mut Vec<u8>, tag: u8, bytes: &[u8]| {
        out.push(tag);
        out.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
        out.extend_from_slice(bytes);
    };
    for d in &row.0 {
        match d {
            backflow_schemas::Datum::Null => put(&mut out, 0, &[]),
            backflow_schemas::Datum::Bool(b) => put(&mut out, 1, &[u8::from(*b)]),
            backflow_schemas::Datum::Int(v) => put(&mut out, 2, &v.to_be_bytes()),
            backflow_schemas::Datum::Long(v) => put(&mut out, 3, &v.to_be_bytes()),
            backflow_schemas::Datum::Float(v) => put(&mut out, 4, &v.to_bits().to_be_bytes()),
            backflow_schemas::Datum::Double(v) => put(&mut out, 5, &v.to_bits().to_be_bytes()),
            backflow_schemas::Datum::Decimal(v) => put(&mut out, 6, v.to_string().as_bytes()),
            backflow_schemas::Datum::Text(s) => put(&mut out, 7, s.as_bytes()),
            backflow_schemas::Datum::Bytes(b) => put(&mut out, 8, b),
            backflow_schemas::Datum::Date(v) => put(&mut out, 9, &v.to_be_bytes()),
            backflow_schemas::Datum::Time(v) => put(&mut out, 10, &v.to_be_bytes()),
            backflow_schemas::Datum::Timestamp(v) => put(&mut out, 11, &v.to_be_bytes()),
            backflow_schemas::Datum::TimestampTz(v) => put(&mut out, 12, &v.to_be_bytes()),
            backflow_schemas::Datum::Uuid(u) => put(&mut out, 13, u.as_bytes()),
            backflow_schemas::Datum::Json(s) => put(&mut out, 14, s.as_bytes()),
            backflow_schemas::Datum::Array(items) => {
                put(&mut out, 15, &row_bytes(&Row(items.clone())))
            }
        }
    }
    out
}

/// Live figures of a source, updated by the source, read by the runtime.
#[derive(Debug)]
pub struct SourceGauges {
    /// Change history the database keeps because the source has not
    /// confirmed it yet, in bytes (PostgreSQL: `pg_current_wal_lsn() -
    /// confirmed_flush_lsn` of the slot); -1 while unknown.
    pub backlog_bytes: AtomicI64,
    /// Whether an initial snapshot is being read.
    pub snapshot_running: AtomicBool,
    /// Rows the running (or last) snapshot has read.
    pub snapshot_rows: AtomicU64,
    /// Rows the snapshot is expected to read (the database's estimate).
    pub snapshot_rows_estimated: AtomicU64,
    /// When the snapshot started, ms since the Unix epoch.
    pub snapshot_started_ms: AtomicI64,
}

impl Default for SourceGauges {
    fn default() -> Self {
        Self {
            backlog_bytes: AtomicI64::new(-1),
            snapshot_running: AtomicBool::new(false),
            snapshot_rows: AtomicU64::new(0),
            snapshot_rows_estimated: AtomicU64::new(0),
            snapshot_started_ms: AtomicI64::new(0),
        }
    }
}

/// Where a snapshot stands, computed from [`SourceGauges`].
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SnapshotStatus {
    /// Rows read so far.
    pub rows_done: u64,
    /// Rows expected (estimate).
    pub rows_estimated: u64,
    /// Rows per second since the snapshot started.
    pub rows_per_second: f64,
    /// Seconds left at that rate (estimate).
    pub eta_seconds: Option<f64>,
}

impl SourceGauges {
    /// The running snapshot's progress, or `None` when none runs.
    pub fn snapshot(&self, now_ms: i64) -> Option<SnapshotStatus> {
        if !self.snapshot_running.load(Ordering::Relaxed) {
            return None;
        }
        let done = self.snapshot_rows.load(Ordering::Relaxed);
        let estimated = self.snapshot_rows_estimated.load(Ordering::Relaxed);
        let secs =
            ((now_ms - self.snapshot_started_ms.load(Ordering::Relaxed)).max(1) as f64) / 1000.0;
        let rate = done as f64 / secs;
        Some(SnapshotStatus {
            rows_done: done,
            rows_estimated: estimated,
            rows_per_second: rate.round(),
            eta_seconds: (rate > 0.0)
                .then(|| (estimated.saturating_sub(done) as f64 / rate).round()),
        })
    }
}

/// Milliseconds since the Unix epoch by the wall clock (0 if the clock is
/// before 1970).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_status_reports_rate_and_eta_only_while_running() {
        let g = SourceGauges::default();
        assert_eq!(g.snapshot(10_000), None);
        g.snapshot_started_ms.store(10_000, Ordering::Relaxed);
        g.snapshot_rows_estimated.store(10_000, Ordering::Relaxed);
        g.snapshot_rows.store(2_500, Ordering::Relaxed);
        g.snapshot_running.store(true, Ordering::Relaxed);
        let s = g.snapshot(15_000).expect("running");
        assert_eq!(s.rows_done, 2_500);
        assert_eq!(s.rows_per_second, 500.0);
        assert_eq!(s.eta_seconds, Some(15.0));
        g.snapshot_running.store(false, Ordering::Relaxed);
        assert_eq!(g.snapshot(16_000), None);
    }
}
