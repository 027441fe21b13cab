//! The source side: capture changes from a database.

use std::sync::Arc;

use async_trait::async_trait;
use backflow_schemas::{ChangeEvent, TableDesc};

use crate::ConnectorError;

/// Where a source is in its database's change history: an LSN, a binlog
/// `file:pos` or GTID set, a polling watermark. Opaque to the runtime, which
/// stores it durably and hands it back on restart.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Position(pub String);

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
    /// runtime acknowledges this position. Never set mid-transaction.
    pub checkpoint: Option<Position>,
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

    /// Waits for the next changes, at most `max` of them.
    async fn next_batch(&mut self, max: usize) -> Result<SourceBatch, ConnectorError>;

    /// Every record up to and including `position` is durably in Kafka.
    async fn acknowledge(&mut self, position: &Position) -> Result<(), ConnectorError>;

    /// Releases connections; called once on shutdown.
    async fn shutdown(&mut self) -> Result<(), ConnectorError>;
}
