//! `backflow reconcile`: does a subscription's database hold exactly what
//! its share topics say it should?
//!
//! A district cannot read the department's database; what it is entitled
//! to is the share topic: the upper node's rows filtered to the district
//! and its fields masked by the share policy. So the reference is the
//! topic, replayed up to the point the sink says it has applied:
//!
//! 1. the sink's stored offsets and its tables are read back in one read
//!    snapshot (each row's key and a digest of its columns);
//! 2. the topics are replayed from their first record up to those offsets
//!    into a scratch copy of each table (same definition, named
//!    `<table>_bf_reconcile`), written by the sink's own code, so every
//!    value goes through exactly the conversions the live rows went
//!    through;
//! 3. the scratch tables are read back the same way and compared key by
//!    key: rows missing from the sink, rows the sink has that the topic
//!    does not, rows whose values differ. The scratch tables are dropped.
//!
//! Records the subscriber dead-letters (undecodable, refused by the
//! database) are skipped here too and counted. The subscriber may keep
//! running: the comparison is at the offsets of the snapshot. Topics must
//! still hold every key's latest record (compacted share topics do; a
//! retention-deleted prefix shows up as rows the topic no longer has).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backflow_connectors::{ConnectorError, ErrorKind, ReadBack, Sink, SinkBatch, SinkRecord};
use backflow_schemas::TableDesc;
use serde::Serialize;

use crate::kafka::{Consumer, KafkaError, Watermarks};
use crate::subscribe::config::SubscriptionConfig;
use crate::subscribe::{database_sink, table_targets, upstream_settings, Decoder, SubscribeError};

/// Suffix of the scratch tables.
pub const SCRATCH_SUFFIX: &str = "_bf_reconcile";
/// Records applied to the scratch tables per transaction.
const BATCH: usize = 5_000;
/// How long the replay waits for a record it knows exists.
const STALL: Duration = Duration::from_secs(60);

/// Why a reconciliation could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The subscription re-publishes into a bus; there is no table.
    #[error("subscription {0} has a kafka sink (a cascade): reconcile compares a database's tables with their topics; check a cascade with `backflow lag` on its node")]
    NotADatabase(String),
    /// Reading the topics, the registry or the sink failed.
    #[error(transparent)]
    Subscribe(#[from] SubscribeError),
    /// The topic ends before the offset the sink says it applied: the
    /// topic was deleted and created again, or the sink's offsets belong
    /// to another cluster.
    #[error("topic {topic} partition {partition} ends at offset {end}, but the sink says it applied up to offset {applied}: was the topic recreated? The subscription's stored offsets (table _backflow_offsets) do not belong to this topic")]
    TopicBehindSink {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// The topic's high watermark.
        end: i64,
        /// The sink's stored offset.
        applied: i64,
    },
}

impl From<ConnectorError> for ReconcileError {
    fn from(e: ConnectorError) -> Self {
        Self::Subscribe(e.into())
    }
}

impl From<KafkaError> for ReconcileError {
    fn from(e: KafkaError) -> Self {
        Self::Subscribe(e.into())
    }
}

/// Where the sink is in one partition.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionPosition {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// The last offset the sink applied (`None`: nothing yet).
    pub applied: Option<i64>,
    /// Offsets in the partition past it (not applied yet; not compared).
    /// Share topics are written in transactions, whose commit markers
    /// take offsets too: at most this many records, and a partition whose
    /// last records were all applied shows 1.
    pub pending: i64,
}

/// One table compared.
#[derive(Debug, Clone, Serialize)]
pub struct TableReport {
    /// The sink's table (`schema.name`).
    pub table: String,
    /// Rows the topic gives up to the applied offsets.
    pub expected: usize,
    /// Rows the table holds (`None`: the table does not exist).
    pub held: Option<usize>,
    /// Keys the topic has and the table lacks.
    pub missing: Vec<String>,
    /// Keys the table has and the topic does not.
    pub extra: Vec<String>,
    /// Keys whose values differ.
    pub different: Vec<String>,
}

impl TableReport {
    /// Whether the table equals its topic.
    pub fn equal(&self) -> bool {
        self.missing.is_empty() && self.extra.is_empty() && self.different.is_empty()
    }
}

/// The outcome of `backflow reconcile`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The subscription.
    pub subscription: String,
    /// Its tables.
    pub tables: Vec<TableReport>,
    /// Its positions.
    pub positions: Vec<PartitionPosition>,
    /// Topics of the subscription with no record up to the applied
    /// offsets (nothing to compare).
    pub empty_topics: Vec<String>,
    /// Records skipped because they do not decode (the subscriber sends
    /// them to the dead-letter topic).
    pub undecodable: u64,
    /// Records the database refused (likewise dead-lettered).
    pub refused: u64,
}

impl Report {
    /// Whether every table equals its topic.
    pub fn equal(&self) -> bool {
        self.tables.iter().all(TableReport::equal)
    }
}

/// Replays a subscription's topics into scratch tables.
struct Replay<'a> {
    config: &'a SubscriptionConfig,
    decoder: Decoder,
    /// Last offset replayed per partition.
    reached: HashMap<(String, i32), i64>,
    /// Sink tables by qualified name: the description of the schema
    /// version seen last, and the scratch table's description.
    tables: BTreeMap<String, (Arc<TableDesc>, Arc<TableDesc>)>,
    /// Scratch description per decoded description (by address).
    scratch_of: HashMap<usize, Arc<TableDesc>>,
    /// Topics with at least one decoded record.
    seen_topics: Vec<String>,
    undecodable: u64,
    refused: u64,
}

impl Replay<'_> {
    /// The scratch twin of `desc`, made ready in the sink on first sight
    /// (a copy of the real table's definition, or nothing when the real
    /// table does not exist: the sink then creates it as it would the
    /// real one). Returns whether the table was new.
    async fn scratch(
        &mut self,
        sink: &mut dyn Sink,
        desc: &Arc<TableDesc>,
    ) -> Result<(Arc<TableDesc>, bool), ReconcileError> {
        let id = Arc::as_ptr(desc) as usize;
        if let Some(s) = self.scratch_of.get(&id) {
            return Ok((s.clone(), false));
        }
        let mut copy = (**desc).clone();
        copy.name = scratch_name(&desc.name);
        let copy = Arc::new(copy);
        let new = !self.tables.contains_key(&desc.qualified_name());
        if new {
            let exists = sink.read_back(std::slice::from_ref(desc)).await?.tables[0].is_some();
            if exists {
                sink.copy_table(desc, &copy).await?;
            } else {
                sink.drop_table(&copy).await?;
            }
        }
        self.scratch_of.insert(id, copy.clone());
        self.tables
            .insert(desc.qualified_name(), (desc.clone(), copy.clone()));
        Ok((copy, new))
    }

    /// Replays every partition up to `targets` (the last offset to apply
    /// per partition). Returns whether a table was seen for the first time.
    async fn advance(
        &mut self,
        sink: &mut dyn Sink,
        targets: &HashMap<(String, i32), i64>,
        watermarks: &Watermarks,
    ) -> Result<bool, ReconcileError> {
        let todo: Vec<(String, i32, Option<i64>)> = targets
            .iter()
            .filter(|(tp, t)| self.reached.get(*tp).is_none_or(|r| r < *t))
            .map(|((topic, p), _)| {
                let from = self.reached.get(&(topic.clone(), *p)).map(|r| r + 1);
                (topic.clone(), *p, from)
            })
            .collect();
        if todo.is_empty() {
            return Ok(false);
        }
        let mut settings = upstream_settings(self.config);
        settings.client_id = format!("backflow-reconcile-{}", self.config.name);
        let consumer = Consumer::assigned(&settings, &settings.client_id, &todo, None)?;
        let mut open: Vec<(String, i32)> = todo.iter().map(|(t, p, _)| (t.clone(), *p)).collect();
        let mut batch: Vec<SinkRecord> = Vec::new();
        let mut new_table = false;
        let mut progress = Instant::now();
        while !open.is_empty() {
            let raw = match tokio::time::timeout(Duration::from_secs(5), consumer.recv()).await {
                Ok(r) => r?,
                Err(_) => {
                    for (topic, partition) in &open {
                        let end = watermarks.high(topic, *partition).await?;
                        let target = targets[&(topic.clone(), *partition)];
                        if end <= target {
                            return Err(ReconcileError::TopicBehindSink {
                                topic: topic.clone(),
                                partition: *partition,
                                end,
                                applied: target,
                            });
                        }
                    }
                    if progress.elapsed() > STALL {
                        return Err(SubscribeError::from(ConnectorError::transient(format!(
                            "no record from the upstream cluster for {}s while replaying; is it reachable?",
                            STALL.as_secs()
                        )))
                        .into());
                    }
                    continue;
                }
            };
            progress = Instant::now();
            let tp = (raw.topic.clone(), raw.partition);
            let Some(&target) = targets.get(&tp) else {
                continue;
            };
            if raw.offset > target || !open.contains(&tp) {
                open.retain(|o| o != &tp);
                continue;
            }
            self.reached.insert(tp.clone(), raw.offset);
            if raw.offset == target {
                open.retain(|o| o != &tp);
            }
            match self.decoder.decode(&raw).await? {
                Ok(mut record) => {
                    let (scratch, new) = self.scratch(sink, &record.table).await?;
                    new_table |= new;
                    record.table = scratch;
                    if !self.seen_topics.contains(&raw.topic) {
                        self.seen_topics.push(raw.topic.clone());
                    }
                    batch.push(record);
                    if batch.len() >= BATCH {
                        self.apply(sink, std::mem::take(&mut batch)).await?;
                    }
                }
                Err(_) => self.undecodable += 1,
            }
        }
        self.apply(sink, batch).await?;
        Ok(new_table)
    }

    /// Applies records to the scratch tables (no offsets stored), one by
    /// one when the database refuses one of them.
    async fn apply(
        &mut self,
        sink: &mut dyn Sink,
        records: Vec<SinkRecord>,
    ) -> Result<(), ReconcileError> {
        if records.is_empty() {
            return Ok(());
        }
        let batch = SinkBatch {
            records,
            offsets: Vec::new(),
        };
        match sink.apply_batch(&batch).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind == ErrorKind::BadRecord => {
                for r in batch.records {
                    let one = SinkBatch {
                        records: vec![r],
                        offsets: Vec::new(),
                    };
                    match sink.apply_batch(&one).await {
                        Ok(_) => {}
                        Err(e) if e.kind == ErrorKind::BadRecord => self.refused += 1,
                        Err(e) => return Err(e.into()),
                    }
                }
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// `<name>_bf_reconcile`, shortened to fit PostgreSQL's 63-byte names.
fn scratch_name(name: &str) -> String {
    let mut base = name.to_owned();
    while base.len() + SCRATCH_SUFFIX.len() > 63 {
        base.pop();
    }
    format!("{base}{SCRATCH_SUFFIX}")
}

fn targets_of(read: &ReadBack) -> HashMap<(String, i32), i64> {
    read.offsets
        .iter()
        .map(|o| ((o.topic.clone(), o.partition), o.offset))
        .collect()
}

/// Reconciles subscription `config` (see the module documentation).
pub async fn reconcile(config: &SubscriptionConfig) -> Result<Report, ReconcileError> {
    let mut sink =
        database_sink(config).ok_or_else(|| ReconcileError::NotADatabase(config.name.clone()))?;
    let decoder = Decoder::new(&config.upstream, table_targets(config));
    decoder.check_registry()?;
    let mut replay = Replay {
        config,
        decoder,
        reached: HashMap::new(),
        tables: BTreeMap::new(),
        scratch_of: HashMap::new(),
        seen_topics: Vec::new(),
        undecodable: 0,
        refused: 0,
    };
    let result = compare(sink.as_mut(), &mut replay).await;
    // The scratch tables go whatever happened.
    for (_, scratch) in replay.tables.values() {
        if let Err(e) = sink.drop_table(scratch).await {
            tracing::warn!(table = %scratch.qualified_name(), error = %e, "cannot drop a scratch table; drop it by hand");
        }
    }
    let _ = sink.shutdown().await;
    result
}

async fn compare(sink: &mut dyn Sink, replay: &mut Replay<'_>) -> Result<Report, ReconcileError> {
    let config = replay.config;
    let settings = upstream_settings(config);
    let watermarks = Watermarks::new(&settings)?;
    // The sink's offsets (and tables, once known) in one snapshot; replay
    // up to them; tables met for the first time need another snapshot
    // that includes them.
    let mut read = sink.read_back(&[]).await?;
    for _ in 0..10 {
        let targets = targets_of(&read);
        let new_tables = replay.advance(sink, &targets, &watermarks).await?;
        let known: Vec<Arc<TableDesc>> = replay.tables.values().map(|(d, _)| d.clone()).collect();
        if !new_tables && read.tables.len() == known.len() {
            break;
        }
        read = sink.read_back(&known).await?;
    }
    let targets = targets_of(&read);
    replay.advance(sink, &targets, &watermarks).await?;

    let scratch: Vec<Arc<TableDesc>> = replay.tables.values().map(|(_, s)| s.clone()).collect();
    let expected = sink.read_back(&scratch).await?;
    let mut tables = Vec::new();
    for ((name, _), (want, held)) in replay
        .tables
        .iter()
        .zip(expected.tables.into_iter().zip(read.tables))
    {
        let want = want.unwrap_or_default();
        let mut report = TableReport {
            table: name.clone(),
            expected: want.len(),
            held: held.as_ref().map(HashMap::len),
            missing: Vec::new(),
            extra: Vec::new(),
            different: Vec::new(),
        };
        let held = held.unwrap_or_default();
        for (key, digest) in &want {
            match held.get(key) {
                None => report.missing.push(key.clone()),
                Some(d) if d != digest => report.different.push(key.clone()),
                Some(_) => {}
            }
        }
        report.extra = held
            .keys()
            .filter(|k| !want.contains_key(*k))
            .cloned()
            .collect();
        report.missing.sort();
        report.extra.sort();
        report.different.sort();
        tables.push(report);
    }

    let mut positions = Vec::new();
    for m in &config.tables {
        let n = crate::kafka::partition_count(&settings, &m.topic).await?;
        for partition in 0..n as i32 {
            let applied = targets.get(&(m.topic.clone(), partition)).copied();
            let end = watermarks.high(&m.topic, partition).await?;
            positions.push(PartitionPosition {
                topic: m.topic.clone(),
                partition,
                applied,
                pending: (end - applied.map_or(0, |a| a + 1)).max(0),
            });
        }
    }
    let empty_topics = config
        .tables
        .iter()
        .map(|m| m.topic.clone())
        .filter(|t| !replay.seen_topics.contains(t))
        .collect();
    Ok(Report {
        subscription: config.name.clone(),
        tables,
        positions,
        empty_topics,
        undecodable: replay.undecodable,
        refused: replay.refused,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_names_fit_postgres_identifiers() {
        assert_eq!(scratch_name("people"), "people_bf_reconcile");
        let long = "x".repeat(80);
        let s = scratch_name(&long);
        assert_eq!(s.len(), 63);
        assert!(s.ends_with(SCRATCH_SUFFIX));
    }
}
