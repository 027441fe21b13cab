//! Change events: the Debezium-compatible envelope.

use crate::datum::Row;
use std::sync::Arc;

/// What happened to a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// Inserted (`c`).
    Create,
    /// Updated (`u`).
    Update,
    /// Deleted (`d`).
    Delete,
    /// Read by a snapshot (`r`).
    Read,
}

impl Op {
    /// The envelope code: `c`, `u`, `d` or `r`.
    pub fn code(self) -> &'static str {
        match self {
            Op::Create => "c",
            Op::Update => "u",
            Op::Delete => "d",
            Op::Read => "r",
        }
    }

    /// Parses an envelope code.
    pub fn from_code(code: &str) -> Option<Op> {
        match code {
            "c" => Some(Op::Create),
            "u" => Some(Op::Update),
            "d" => Some(Op::Delete),
            "r" => Some(Op::Read),
            _ => None,
        }
    }
}

/// Whether an event comes from a snapshot (Debezium's `source.snapshot`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Snapshot {
    /// Streamed from the change log.
    #[default]
    False,
    /// Read by the initial snapshot.
    True,
    /// The snapshot's last event.
    Last,
}

impl Snapshot {
    /// The envelope text.
    pub fn as_str(self) -> &'static str {
        match self {
            Snapshot::False => "false",
            Snapshot::True => "true",
            Snapshot::Last => "last",
        }
    }

    /// Parses the envelope text.
    pub fn parse(s: &str) -> Option<Snapshot> {
        match s {
            "false" => Some(Snapshot::False),
            "true" => Some(Snapshot::True),
            "last" => Some(Snapshot::Last),
            _ => None,
        }
    }
}

/// Where an event came from (`source` in the envelope).
///
/// The text fields are shared (`Arc<str>`): a source gives every event of
/// a table and transaction the same provenance, so each event costs a
/// reference count per field instead of an allocation and a copy.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct SourceInfo {
    /// backflow version that captured it.
    pub version: Arc<str>,
    /// Connector kind: `postgres`, `mysql`, `poll`.
    pub connector: Arc<str>,
    /// Feed name.
    pub name: Arc<str>,
    /// Administrative division code of the node that captured it.
    pub node: Arc<str>,
    /// Source commit time, milliseconds since the epoch.
    pub ts_ms: i64,
    /// Snapshot flag.
    pub snapshot: Snapshot,
    /// Database name.
    pub db: Arc<str>,
    /// Database schema, where the database has them.
    pub schema: Option<Arc<str>>,
    /// Table name.
    pub table: Arc<str>,
    /// Position in the source's log: LSN, binlog `file:pos` or GTID, poll
    /// watermark.
    pub position: Arc<str>,
    /// Source transaction id.
    pub txid: Option<Arc<str>>,
}

/// Transaction metadata (`transaction` in the envelope).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TransactionInfo {
    /// Transaction id.
    pub id: Arc<str>,
    /// Position of the event among all events of the transaction (1-based).
    pub total_order: i64,
    /// Position among the transaction's events of this table (1-based).
    pub data_collection_order: i64,
}

/// One row change.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeEvent {
    /// Primary key of the row (the Kafka key).
    pub key: Row,
    /// Row before the change (updates and deletes; full with REPLICA
    /// IDENTITY FULL / binlog_row_image=FULL).
    pub before: Option<Row>,
    /// Row after the change (inserts, updates, snapshot reads).
    pub after: Option<Row>,
    /// Provenance.
    pub source: SourceInfo,
    /// What happened.
    pub op: Op,
    /// When backflow processed it, milliseconds since the epoch.
    pub ts_ms: Option<i64>,
    /// Transaction metadata, when the source provides it.
    pub transaction: Option<TransactionInfo>,
}

/// A change event's parts, borrowed: what encoding needs. A distributor
/// builds one per subscriber from its own rows and the source event's
/// provenance, without copying the provenance.
#[derive(Debug, Clone, Copy)]
pub struct EventRef<'a> {
    /// Primary key of the row.
    pub key: &'a Row,
    /// Row before the change.
    pub before: Option<&'a Row>,
    /// Row after the change.
    pub after: Option<&'a Row>,
    /// Provenance.
    pub source: &'a SourceInfo,
    /// What happened.
    pub op: Op,
    /// When backflow processed it.
    pub ts_ms: Option<i64>,
    /// Transaction metadata.
    pub transaction: Option<&'a TransactionInfo>,
}

impl ChangeEvent {
    /// The event's parts, borrowed.
    pub fn parts(&self) -> EventRef<'_> {
        EventRef {
            key: &self.key,
            before: self.before.as_ref(),
            after: self.after.as_ref(),
            source: &self.source,
            op: self.op,
            ts_ms: self.ts_ms,
            transaction: self.transaction.as_ref(),
        }
    }
}
