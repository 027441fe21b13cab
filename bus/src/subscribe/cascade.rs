//! Cascade: a subscription whose sink is this node's own bus.
//!
//! A city subscribes to the province's share topics and, instead of a
//! database, gives them to its own Kafka: each change goes to this node's
//! raw topic `backflow.raw.<dataset>` (schemas registered in this node's
//! registry), where this node's distributor re-shares it to the districts
//! under this node's policies. Provenance is carried on: `backflow.origin`
//! and `backflow.origin_ts` unchanged, this node appended to
//! `backflow.hops`, so lag at a district is measured from the department's
//! commit. A change that already passed this node is a loop: it is refused
//! (dead-lettered with the path it took) and never re-published.
//!
//! Offsets: the upstream offsets a batch covers are stored in this node's
//! `backflow._offsets`. With `kafka.transactions` (the default) a batch's
//! raw records and its offsets record commit in one Kafka transaction
//! (transactional id `<prefix>cascade.<node>.<subscription>`, registered
//! before the offsets are read, which fences an earlier run): a crash
//! anywhere leaves each upstream change in the raw topic once for
//! `read_committed` readers. Without, the offsets are stored only after
//! Kafka acknowledged every record of the batch; a crash replays from the
//! stored offsets and the districts' version guard makes the duplicates
//! invisible.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use backflow_connectors::{Applied, ConnectorError, Sink, SinkBatch, SinkRecord, TopicOffset};
use backflow_schemas::{frame, Op, TableCodec, TableDesc};

use crate::domain::headers::{HEADER_HOPS, HEADER_ORIGIN, HEADER_ORIGIN_TS};
use crate::domain::topics;
use crate::kafka::{KafkaError, OutgoingRecord, Publisher, TopicSpec, TRANSACTION_STEP};
use crate::source::feed::{Encoder, FeedContext, FeedError};

/// The sink of a cascading subscription.
pub struct BusSink {
    subscription: String,
    ctx: FeedContext,
    /// Full table versions, by description address (see `feed::encoder`).
    encoders: HashMap<usize, Encoder>,
    /// Key-only tables (tombstones), by description address.
    keys: HashMap<usize, (Arc<TableDesc>, TableCodec, u32)>,
    /// Raw topics known to exist.
    topics: HashSet<String>,
    /// The upstream offsets stored so far, merged with each batch's.
    stored: BTreeMap<(String, i32), i64>,
    /// The transactional producer, once registered (`kafka.transactions`).
    txn: Option<Publisher>,
}

impl BusSink {
    /// A sink re-publishing `subscription`'s records into `ctx`'s bus.
    pub fn new(subscription: String, ctx: FeedContext) -> Self {
        Self {
            subscription,
            ctx,
            encoders: HashMap::new(),
            keys: HashMap::new(),
            topics: HashSet::new(),
            stored: BTreeMap::new(),
            txn: None,
        }
    }

    /// Registers this subscription's transactional id, unless registered
    /// or transactions are off.
    async fn register(&mut self) -> Result<(), ConnectorError> {
        if self.ctx.transactions.is_none() || self.txn.is_some() {
            return Ok(());
        }
        let publisher = Publisher::register(
            &self.ctx.settings,
            Some(self.ctx.metrics.clone()),
            &topics::cascade_transaction(&self.ctx.node, &self.subscription),
            crate::kafka::TRANSACTION_TIMEOUT,
            TRANSACTION_STEP,
        )
        .await
        .map_err(kafka)?;
        self.txn = Some(publisher);
        Ok(())
    }

    /// The loop a record would close, as a reason for the dead-letter
    /// topic; `None` when it may be re-published.
    fn refuse(&self, r: &SinkRecord) -> Option<String> {
        r.provenance.passed(&self.ctx.node).then(|| {
            format!(
                "loop: this change already passed node {} (origin {}, hops {}); a node must not \
                 receive its own data back: check which upper node this subscription reads from",
                self.ctx.node,
                r.provenance.origin.as_deref().unwrap_or("unknown"),
                r.provenance.hops.join(","),
            )
        })
    }

    async fn ensure_topic(&mut self, topic: &str) -> Result<(), ConnectorError> {
        if self.topics.contains(topic) {
            return Ok(());
        }
        self.ctx
            .admin
            .ensure(&[TopicSpec::compacted(
                topic.to_owned(),
                self.ctx.partitions,
                self.ctx.replication_factor,
            )])
            .await
            .map_err(kafka)?;
        self.topics.insert(topic.to_owned());
        Ok(())
    }

    /// Framed key and value (`None`: a tombstone) and the raw topic.
    async fn encode(
        &mut self,
        r: &SinkRecord,
    ) -> Result<(String, Vec<u8>, Option<Vec<u8>>), ConnectorError> {
        let bad = |e: backflow_schemas::SchemaError| ConnectorError::bad_record(e.to_string());
        match &r.event {
            Some(event) => {
                let enc = crate::source::feed::encoder(&mut self.encoders, &r.table, &self.ctx)
                    .await
                    .map_err(feed_error)?;
                let key = enc.codec.encode_key(&r.key).map_err(bad)?;
                let value = enc.codec.encode_value(event).map_err(bad)?;
                Ok((
                    enc.topic.to_string(),
                    frame(enc.key_id, &key),
                    Some(frame(enc.value_id, &value)),
                ))
            }
            None => {
                // A tombstone may come with a key-only description: only
                // the key subject is registered for it.
                let id = Arc::as_ptr(&r.table) as usize;
                if !self.keys.contains_key(&id) {
                    let codec = TableCodec::new(r.table.as_ref().clone()).map_err(bad)?;
                    let topic = topics::raw(&r.table.dataset);
                    let subject = backflow_schemas::registry_client::subject_for(&topic, true);
                    let key_id = self
                        .ctx
                        .registry
                        .register(&subject, codec.key_schema())
                        .await
                        .map_err(|source| {
                            feed_error(FeedError::Schema {
                                table: r.table.qualified_name(),
                                source,
                            })
                        })?;
                    self.keys.insert(id, (r.table.clone(), codec, key_id));
                }
                let (table, codec, key_id) = &self.keys[&id];
                let key = codec.encode_key(&r.key).map_err(bad)?;
                Ok((topics::raw(&table.dataset), frame(*key_id, &key), None))
            }
        }
    }
}

/// A failure of the feed machinery this sink shares, as the subscription
/// sees it (registry answers of 5xx and Kafka trouble are transient).
fn feed_error(e: FeedError) -> ConnectorError {
    use crate::domain::restart::Kind;
    match e.kind() {
        backflow_connectors::ErrorKind::Transient => ConnectorError::transient(e.to_string()),
        _ => ConnectorError::definite(e.to_string()),
    }
}

fn kafka(e: KafkaError) -> ConnectorError {
    if e.is_fenced() {
        // Another process runs this subscription now.
        return ConnectorError::definite(format!(
            "{e}: another process registered this cascading subscription's transactional id; run each subscription in one process"
        ));
    }
    ConnectorError::transient(e.to_string())
}

#[async_trait]
impl Sink for BusSink {
    async fn committed_offsets(&mut self) -> Result<Vec<TopicOffset>, ConnectorError> {
        // First: it ends what an earlier run left open, so the offsets
        // read next are final.
        self.register().await?;
        let stored =
            crate::state::offsets::load_subscription(&self.ctx.settings, &self.subscription)
                .await
                .map_err(kafka)?;
        self.stored = stored
            .iter()
            .map(|o| ((o.topic.clone(), o.partition), o.offset))
            .collect();
        Ok(stored)
    }

    async fn apply_batch(&mut self, batch: &SinkBatch) -> Result<Applied, ConnectorError> {
        // Nothing of a batch is published when one of its records would
        // loop; the subscription then applies it record by record and
        // dead-letters that one.
        if let Some(reason) = batch.records.iter().find_map(|r| self.refuse(r)) {
            return Err(ConnectorError::bad_record(reason));
        }
        self.register().await?;
        let Some(txn) = self.txn.clone() else {
            let publisher = self.ctx.publisher.clone();
            return self.publish(batch, &publisher).await;
        };
        txn.begin_transaction().map_err(kafka)?;
        let stored = self.stored.clone();
        let published = self.publish(batch, &txn).await;
        let committer = txn.clone();
        let outcome = match published {
            Ok(applied) => {
                tokio::task::spawn_blocking(move || committer.commit_transaction(TRANSACTION_STEP))
                    .await
                    .map_err(|e| ConnectorError::transient(e.to_string()))
                    .and_then(|r| r.map_err(kafka))
                    .map(|()| applied)
            }
            Err(e) => Err(e),
        };
        if outcome.is_err() {
            // Nothing of the batch is visible; the offsets go back too.
            self.stored = stored;
            let _ =
                tokio::task::spawn_blocking(move || txn.abort_transaction(TRANSACTION_STEP)).await;
        }
        outcome
    }

    async fn shutdown(&mut self) -> Result<(), ConnectorError> {
        Ok(())
    }
}

impl BusSink {
    /// Publishes a batch's records and then its offsets through
    /// `publisher`, waiting for Kafka's acknowledgements.
    async fn publish(
        &mut self,
        batch: &SinkBatch,
        publisher: &Publisher,
    ) -> Result<Applied, ConnectorError> {
        let mut applied = Applied::default();
        let mut sent = publisher.batch();
        for r in &batch.records {
            let (topic, key, value) = self.encode(r).await?;
            self.ensure_topic(&topic).await?;
            let origin_ts = r.provenance.origin_ts_ms.map(|t| t.to_string());
            let mut hops = r.provenance.hops.clone();
            hops.push(self.ctx.node.clone());
            let hops = hops.join(",");
            let mut headers: Vec<(&str, &[u8])> = Vec::with_capacity(3);
            if let Some(origin) = &r.provenance.origin {
                headers.push((HEADER_ORIGIN, origin.as_bytes()));
            }
            if let Some(ts) = &origin_ts {
                headers.push((HEADER_ORIGIN_TS, ts.as_bytes()));
            }
            headers.push((HEADER_HOPS, hops.as_bytes()));
            publisher
                .enqueue_in(
                    &mut sent,
                    OutgoingRecord {
                        topic: &topic,
                        key: Some(&key),
                        payload: value.as_deref(),
                        headers: &headers,
                    },
                )
                .await
                .map_err(kafka)?;
            match r.event.as_ref().map(|e| e.op) {
                None | Some(Op::Delete) => applied.deleted += 1,
                Some(_) => applied.upserted += 1,
            }
        }
        sent.seal().await.map_err(kafka)?;
        if !batch.offsets.is_empty() {
            for o in &batch.offsets {
                self.stored.insert((o.topic.clone(), o.partition), o.offset);
            }
            let all: Vec<TopicOffset> = self
                .stored
                .iter()
                .map(|((topic, partition), offset)| TopicOffset {
                    topic: topic.clone(),
                    partition: *partition,
                    offset: *offset,
                })
                .collect();
            crate::state::offsets::save_subscription(publisher, &self.subscription, &all)
                .await
                .map_err(kafka)?;
        }
        applied.offsets = batch.offsets.clone();
        Ok(applied)
    }
}
