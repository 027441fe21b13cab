//! The sink side: apply share-topic records to a subscriber's database.

use std::sync::Arc;

use async_trait::async_trait;
use backflow_schemas::{ChangeEvent, Row, TableDesc};

use crate::ConnectorError;

/// A Kafka position: the next stage resumes after `offset`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicOffset {
    /// Topic name.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset of the last record applied.
    pub offset: i64,
}

/// One record to apply.
#[derive(Debug, Clone)]
pub struct SinkRecord {
    /// Where it came from.
    pub from: TopicOffset,
    /// The table it applies to.
    pub table: Arc<TableDesc>,
    /// Primary key of the row.
    pub key: Row,
    /// The change; `None` for a tombstone (delete by key).
    pub event: Option<ChangeEvent>,
}

/// Records applied together, in one transaction.
#[derive(Debug, Clone, Default)]
pub struct SinkBatch {
    /// Records in topic order.
    pub records: Vec<SinkRecord>,
}

/// What a sink committed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// Rows inserted or updated.
    pub upserted: u64,
    /// Rows deleted.
    pub deleted: u64,
    /// Records ignored because the row already holds a newer change.
    pub skipped: u64,
    /// The offsets stored with the rows, per partition.
    pub offsets: Vec<TopicOffset>,
}

/// A subscriber's database.
///
/// Contract: [`Sink::apply_batch`] applies every record and stores the batch's
/// last offset per partition in the same database transaction; applying a
/// record older than the row's stored source position changes nothing. So a
/// crash at any point followed by a replay from [`Sink::committed_offsets`]
/// leaves the tables as if each record had been applied once.
#[async_trait]
pub trait Sink: Send {
    /// Offsets committed with the data; the consumer resumes after them.
    async fn committed_offsets(&mut self) -> Result<Vec<TopicOffset>, ConnectorError>;

    /// Applies a batch in one transaction.
    async fn apply_batch(&mut self, batch: &SinkBatch) -> Result<Applied, ConnectorError>;

    /// Releases connections; called once on shutdown.
    async fn shutdown(&mut self) -> Result<(), ConnectorError>;
}
