//! A group consumer whose offsets move only when the caller says so.
//!
//! `enable.auto.offset.store=false`: receiving a record stores nothing. The
//! caller calls [`Consumer::store`] once the next stage has durably taken the
//! record (a sink committed it, a share topic acknowledged it); only stored
//! offsets are committed, in the background every `auto.commit.interval.ms`
//! and on [`Consumer::commit`] / [`Consumer::close`]. A crash therefore replays
//! from the last stored offset: at-least-once, never a gap.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt as _;

use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{Headers, Message};
use rdkafka::Offset;
use rdkafka::TopicPartitionList;

use super::ByKind;
use super::{KafkaError, KafkaSettings};
use crate::metrics::Metrics;

/// Where a reader that starts from the first record starts: offset 0, and
/// `auto.offset.reset = earliest` when the log no longer begins there.
/// (`Offset::Beginning` asks the broker first, and librdkafka retries that
/// question only after 500 ms when it does not know the partition's leader
/// yet, which is always the case just after the client was created.)
const FIRST: Offset = Offset::Offset(0);

/// `fetch.wait.max.ms` of a reader that reads records known to be there.
const REPLAY_FETCH_WAIT_MS: u32 = 10;
/// `fetch.wait.max.ms` of a reader that follows a state topic (catalog,
/// registry, offsets): small, rarely written topics, each read by its own
/// consumer, so a longer wait than the data path's keeps an idle node's
/// fetches few.
const FOLLOW_FETCH_WAIT_MS: u32 = 100;

/// A record taken from Kafka, owned so it can cross tasks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumedRecord {
    /// Topic it came from.
    pub topic: String,
    /// Partition it came from.
    pub partition: i32,
    /// Its offset in the partition.
    pub offset: i64,
    /// Record key.
    pub key: Option<Vec<u8>>,
    /// Record value; `None` for a tombstone.
    pub payload: Option<Vec<u8>>,
    /// Headers in the order they were sent.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Broker or producer timestamp, milliseconds since the epoch.
    pub timestamp_ms: Option<i64>,
}

impl ConsumedRecord {
    /// The first header with this name.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }
}

/// Most kilobytes a consumer fetches ahead of what was taken from it
/// (librdkafka's `queued.max.messages.kbytes`, default 64 MB). 16 MB is
/// tens of thousands of change events, more than a batch needs, and keeps
/// a process with several consumers well inside its memory budget.
const PREFETCH_KBYTES: &str = "16384";

/// The offsets a consumer group has committed (the next record it reads)
/// for these partitions, asked without joining the group; `None` where
/// nothing is committed.
pub async fn group_committed(
    settings: &KafkaSettings,
    group: &str,
    partitions: &[(String, i32)],
) -> Result<Vec<Option<i64>>, KafkaError> {
    let positions = GroupOffsets::new(settings)
        .positions(group, partitions)
        .await?;
    Ok(positions
        .into_iter()
        .map(|p| p.map(|(offset, _)| offset))
        .collect())
}

/// Commits `positions` (topic, partition, next offset) to `group` with
/// `metadata` on each, as a consumer of that group that never joins it:
/// the group's offsets then say where the caller is, for Kafka's own tools
/// (`kafka-consumer-groups --describe`), Burrow and the upper node's lag
/// board, whatever keeps the caller's offsets of record.
pub async fn group_commit(
    settings: &KafkaSettings,
    group: &str,
    positions: &[(String, i32, i64)],
    metadata: &str,
) -> Result<(), KafkaError> {
    let settings = settings.clone();
    let group = group.to_owned();
    let positions = positions.to_vec();
    let metadata = metadata.to_owned();
    tokio::task::spawn_blocking(move || {
        let c: rdkafka::consumer::BaseConsumer = settings.create("consumer", |cfg| {
            cfg.set("group.id", &group)
                .set("enable.auto.commit", "false");
        })?;
        let mut tpl = TopicPartitionList::new();
        for (t, p, next) in &positions {
            tpl.add_partition_offset(t, *p, Offset::Offset(*next))
                .map_err(KafkaError::Commit)?;
            if let Some(mut e) = tpl.find_partition(t, *p) {
                e.set_metadata(metadata.clone());
            }
        }
        c.commit(&tpl, CommitMode::Sync).map_err(KafkaError::Commit)
    })
    .await
    .expect("offset commit does not panic")
}

/// Reads the offsets other processes committed to their consumer groups,
/// keeping one client per group for the next read (a group is a client
/// setting in librdkafka).
pub struct GroupOffsets {
    settings: KafkaSettings,
    clients: std::sync::Mutex<HashMap<String, Arc<rdkafka::consumer::BaseConsumer>>>,
}

impl GroupOffsets {
    /// A reader on the cluster of `settings`.
    pub fn new(settings: &KafkaSettings) -> Self {
        Self {
            settings: settings.clone(),
            clients: Default::default(),
        }
    }

    /// The offsets and commit metadata `group` holds for `partitions`
    /// (`None` where it committed nothing).
    pub async fn positions(
        &self,
        group: &str,
        partitions: &[(String, i32)],
    ) -> Result<Vec<Option<(i64, String)>>, KafkaError> {
        let client = {
            let mut clients = self.clients.lock().expect("group clients lock");
            match clients.get(group) {
                Some(c) => c.clone(),
                None => {
                    let c: rdkafka::consumer::BaseConsumer =
                        self.settings.create("consumer", |cfg| {
                            cfg.set("group.id", group)
                                .set("enable.auto.commit", "false");
                        })?;
                    let c = Arc::new(c);
                    clients.insert(group.to_owned(), c.clone());
                    c
                }
            }
        };
        let timeout = self.settings.request_timeout;
        let partitions = partitions.to_vec();
        tokio::task::spawn_blocking(move || {
            let mut tpl = TopicPartitionList::new();
            for (t, p) in &partitions {
                tpl.add_partition(t, *p);
            }
            let got = client
                .committed_offsets(tpl, timeout)
                .map_err(KafkaError::Commit)?;
            Ok(partitions
                .iter()
                .map(|(t, p)| {
                    let e = got.find_partition(t, *p)?;
                    match e.offset() {
                        Offset::Offset(o) => Some((o, e.metadata().to_owned())),
                        _ => None,
                    }
                })
                .collect())
        })
        .await
        .expect("offset query does not panic")
    }
}

/// Errors a consumer reports about one broker's connection, which the
/// client recovers from by itself (reconnecting, or following the
/// partition to its new leader).
fn passing_broker_trouble(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::BrokerTransportFailure
            | RDKafkaErrorCode::AllBrokersDown
            | RDKafkaErrorCode::NotLeaderForPartition
            | RDKafkaErrorCode::LeaderNotAvailable
    )
}

/// A consumer-group member reading a set of topics.
pub struct Consumer {
    inner: Closing,
    metrics: Option<ConsumeMetrics>,
}

/// The client, closed off the async runtime's threads when dropped.
///
/// Closing a group member is synchronous in librdkafka: it gives up its
/// partitions (running the revoke hook and a synchronous commit), leaves
/// the group and polls until the group protocol is done, which takes as
/// long as the coordinator takes to answer. Done on a runtime worker (a
/// task aborted, a lease let go), it would stop every task queued on that
/// worker meanwhile, an API request among them; so it is done on a
/// blocking thread, and whoever drops a consumer never waits for it.
struct Closing(Option<StreamConsumer<Membership>>);

impl std::ops::Deref for Closing {
    type Target = StreamConsumer<Membership>;

    fn deref(&self) -> &Self::Target {
        self.0
            .as_ref()
            .expect("the client is present until dropped")
    }
}

impl Drop for Closing {
    fn drop(&mut self) {
        let Some(client) = self.0.take() else { return };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn_blocking(move || drop(client));
            }
            Err(_) => drop(client),
        }
    }
}

/// What a consumer does when the group moves partitions: before giving
/// partitions up it commits what was stored, so the member taking them over
/// resumes after everything this one delivered (at most the batches still
/// in flight are delivered again); it logs and counts what it holds.
pub(crate) struct Membership {
    /// The group's name, for the logs; empty for readers outside a group.
    group: String,
    /// Partitions currently assigned to this member.
    assigned: Option<prometheus::IntGauge>,
    /// Called before partitions are given up (see [`RevokeHook`]).
    on_revoke: Option<RevokeHook>,
}

/// What a member must do before partitions it holds go to another member,
/// called on the thread that receives (inside [`Consumer::recv`] and
/// [`Consumer::try_recv`]), before the revocation completes. A member that
/// writes in Kafka transactions aborts its open one here: otherwise it
/// could commit offsets of partitions whose next owner already resumed
/// from the previous commit, and both would write the same records.
pub type RevokeHook = Arc<dyn Fn() + Send + Sync>;

impl Membership {
    /// The context of a reader that assigns its partitions itself.
    fn outside() -> Self {
        Self {
            group: String::new(),
            assigned: None,
            on_revoke: None,
        }
    }
}

impl rdkafka::ClientContext for Membership {
    /// librdkafka's errors, logged as its default does, except a reader's
    /// "end of partition" (which replay consumers ask for).
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        if matches!(error, rdkafka::error::KafkaError::PartitionEOF(_))
            || error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF)
        {
            return;
        }
        tracing::error!(target: "librdkafka", "librdkafka: {error}: {reason}");
    }
}

impl ConsumerContext for Membership {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(going) = rebalance {
            if self.group.is_empty() {
                return;
            }
            if let Some(hook) = &self.on_revoke {
                hook();
            }
            match consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(())
                | Err(rdkafka::error::KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
                Err(e) => {
                    tracing::warn!(group = %self.group, error = %e, "committing before giving partitions up failed; their next owner replays from the last commit")
                }
            }
            tracing::info!(group = %self.group, partitions = going.count(), "partitions move to another member");
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if self.group.is_empty() {
            return;
        }
        let held = consumer.assignment().map(|a| a.count()).unwrap_or(0);
        if let Some(gauge) = &self.assigned {
            gauge.set(held as i64);
        }
        if let Rebalance::Assign(taken) = rebalance {
            tracing::info!(group = %self.group, taken = taken.count(), held, "partitions assigned");
        }
    }
}

/// The consumer's metrics with their labels resolved once: no label lookup
/// per record.
struct ConsumeMetrics {
    consumed: ByKind,
    offsets_stored: prometheus::IntCounter,
}

impl ConsumeMetrics {
    fn new(m: Metrics) -> Self {
        Self {
            consumed: ByKind::new(&m.kafka_consumed),
            offsets_stored: m.kafka_offsets_stored.clone(),
        }
    }
}

impl Consumer {
    /// [`Consumer::member`] without a gauge of the partitions held.
    pub fn new(
        settings: &KafkaSettings,
        group_id: &str,
        topics: &[&str],
        metrics: Option<Metrics>,
    ) -> Result<Self, KafkaError> {
        Self::member(settings, group_id, topics, None, metrics, None)
    }

    /// Joins `group_id` as one of its members and subscribes to `topics`:
    /// Kafka spreads the partitions over the members (cooperative-sticky:
    /// a member joining or leaving moves only the partitions that must
    /// move, the others go on), and a member that stops heartbeating
    /// (killed) loses its partitions to the others after `session.timeout.ms`.
    /// A partition with no committed offset starts at the earliest record.
    /// `assigned`: the gauge that follows how many partitions this member
    /// holds; `on_revoke`: what to do before partitions are given up.
    pub fn member(
        settings: &KafkaSettings,
        group_id: &str,
        topics: &[&str],
        assigned: Option<prometheus::IntGauge>,
        metrics: Option<Metrics>,
        on_revoke: Option<RevokeHook>,
    ) -> Result<Self, KafkaError> {
        let context = Membership {
            group: group_id.to_owned(),
            assigned,
            on_revoke,
        };
        let inner: StreamConsumer<Membership> =
            settings.create_with_context("consumer", context, |cfg| {
                cfg.set("group.id", group_id)
                    .set("partition.assignment.strategy", "cooperative-sticky")
                    .set("enable.auto.commit", "true")
                    .set("enable.auto.offset.store", "false")
                    .set("auto.commit.interval.ms", "1000")
                    .set("auto.offset.reset", "earliest")
                    .set("enable.partition.eof", "false")
                    .set("fetch.wait.max.ms", settings.fetch_wait_ms.to_string())
                    .set(
                        "session.timeout.ms",
                        settings.session_timeout.as_millis().to_string(),
                    )
                    .set("heartbeat.interval.ms", "1000")
                    // Raw topics created after subscribing (a dataset's first
                    // share) are picked up within seconds, not minutes.
                    .set("topic.metadata.refresh.interval.ms", "5000")
                    .set("queued.max.messages.kbytes", PREFETCH_KBYTES);
            })?;
        inner.subscribe(topics).map_err(KafkaError::Consume)?;
        Ok(Self {
            inner: Closing(Some(inner)),
            metrics: metrics.map(ConsumeMetrics::new),
        })
    }

    /// A static member (`group.instance.id` = `instance`) of `group`,
    /// subscribed to `topic`, committing nothing: a lease holder (see
    /// [`super::lease`]).
    pub fn lease_member(
        settings: &KafkaSettings,
        group: &str,
        topic: &str,
        instance: &str,
    ) -> Result<Self, KafkaError> {
        let context = Membership {
            group: group.to_owned(),
            assigned: None,
            on_revoke: None,
        };
        let inner: StreamConsumer<Membership> =
            settings.create_with_context("consumer", context, |cfg| {
                cfg.set("group.id", group)
                    .set("group.instance.id", instance)
                    // The lease stays with its holder while members join
                    // (a pod added or restarted): with the eager assignors
                    // every join gives the only partition to the member
                    // whose id sorts first, moving the work for nothing.
                    .set("partition.assignment.strategy", "cooperative-sticky")
                    .set("enable.auto.commit", "false")
                    .set("enable.auto.offset.store", "false")
                    .set("enable.partition.eof", "false")
                    .set(
                        "session.timeout.ms",
                        settings.session_timeout.as_millis().to_string(),
                    )
                    .set("heartbeat.interval.ms", "1000");
            })?;
        inner.subscribe(&[topic]).map_err(KafkaError::Consume)?;
        Ok(Self {
            inner: Closing(Some(inner)),
            metrics: None,
        })
    }

    /// Reads one partition from its first record up to an end the caller
    /// knows, without a consumer group (no offsets are committed): stored
    /// positions, the audit trail.
    pub fn replay(
        settings: &KafkaSettings,
        topic: &str,
        partition: i32,
    ) -> Result<Self, KafkaError> {
        Self::replay_partitions(settings, topic, &[partition])
    }

    /// [`Consumer::replay`] over several partitions of one topic.
    pub fn replay_partitions(
        settings: &KafkaSettings,
        topic: &str,
        partitions: &[i32],
    ) -> Result<Self, KafkaError> {
        // The records are known to be there and the reader is short-lived:
        // a short wait keeps its last, empty fetch short.
        Self::from_beginning(settings, topic, partitions, REPLAY_FETCH_WAIT_MS)
    }

    /// [`Consumer::replay`] from `offset` on.
    pub fn replay_from(
        settings: &KafkaSettings,
        topic: &str,
        partition: i32,
        offset: i64,
    ) -> Result<Self, KafkaError> {
        Self::reading(
            settings,
            topic,
            &[partition],
            Offset::Offset(offset),
            REPLAY_FETCH_WAIT_MS,
        )
    }

    /// Reads one partition from its first record and goes on following it,
    /// without a consumer group: for state topics every process keeps in
    /// memory, such as `backflow._schemas`.
    pub fn follow(
        settings: &KafkaSettings,
        topic: &str,
        partition: i32,
    ) -> Result<Self, KafkaError> {
        Self::follow_partitions(settings, topic, &[partition])
    }

    /// [`Consumer::follow`] over several partitions of one topic.
    pub fn follow_partitions(
        settings: &KafkaSettings,
        topic: &str,
        partitions: &[i32],
    ) -> Result<Self, KafkaError> {
        // Followed topics are small and read-your-write sensitive (a
        // registry write waits to read its own record back): do not let the
        // broker hold an empty fetch for librdkafka's default 500 ms.
        Self::from_beginning(settings, topic, partitions, FOLLOW_FETCH_WAIT_MS)
    }

    fn from_beginning(
        settings: &KafkaSettings,
        topic: &str,
        partitions: &[i32],
        fetch_wait_ms: u32,
    ) -> Result<Self, KafkaError> {
        Self::reading(settings, topic, partitions, FIRST, fetch_wait_ms)
    }

    fn reading(
        settings: &KafkaSettings,
        topic: &str,
        partitions: &[i32],
        start: Offset,
        fetch_wait_ms: u32,
    ) -> Result<Self, KafkaError> {
        // librdkafka wants a group id even for manual assignment; nothing is
        // committed under it.
        let inner: StreamConsumer<Membership> =
            settings.create_with_context("consumer", Membership::outside(), |cfg| {
                cfg.set("group.id", format!("{}-replay", settings.client_id))
                    .set("enable.auto.commit", "false")
                    .set("enable.auto.offset.store", "false")
                    // Tells a reader to the end that it got there
                    // (see Consumer::recv_to).
                    .set("enable.partition.eof", "true")
                    .set("fetch.wait.max.ms", fetch_wait_ms.to_string())
                    .set("auto.offset.reset", "earliest")
                    .set("queued.max.messages.kbytes", PREFETCH_KBYTES);
            })?;
        let mut tpl = TopicPartitionList::new();
        for p in partitions {
            tpl.add_partition_offset(topic, *p, start)
                .map_err(KafkaError::Consume)?;
        }
        inner.assign(&tpl).map_err(KafkaError::Consume)?;
        Ok(Self {
            inner: Closing(Some(inner)),
            metrics: None,
        })
    }

    /// Reads the given partitions from the given offsets (`None`: from the
    /// first record) without joining a group: for consumers whose offsets
    /// live elsewhere, such as a sink that stores them with its rows.
    pub fn assigned(
        settings: &KafkaSettings,
        client_group: &str,
        start: &[(String, i32, Option<i64>)],
        metrics: Option<Metrics>,
    ) -> Result<Self, KafkaError> {
        Self::with_assignment(settings, client_group, start, metrics)
    }

    /// Assigns `start` (`None`: from the first record) under `group_id`,
    /// committing nothing.
    fn with_assignment(
        settings: &KafkaSettings,
        group_id: &str,
        start: &[(String, i32, Option<i64>)],
        metrics: Option<Metrics>,
    ) -> Result<Self, KafkaError> {
        let inner: StreamConsumer<Membership> =
            settings.create_with_context("consumer", Membership::outside(), |cfg| {
                cfg.set("group.id", group_id)
                    .set("enable.auto.commit", "false")
                    .set("enable.auto.offset.store", "false")
                    .set("enable.partition.eof", "false")
                    .set("auto.offset.reset", "earliest")
                    .set("fetch.wait.max.ms", settings.fetch_wait_ms.to_string())
                    .set("queued.max.messages.kbytes", PREFETCH_KBYTES);
            })?;
        let mut tpl = TopicPartitionList::new();
        for (topic, partition, next) in start {
            let offset = next.map_or(FIRST, Offset::Offset);
            tpl.add_partition_offset(topic, *partition, offset)
                .map_err(KafkaError::Consume)?;
        }
        inner.assign(&tpl).map_err(KafkaError::Consume)?;
        Ok(Self {
            inner: Closing(Some(inner)),
            metrics: metrics.map(ConsumeMetrics::new),
        })
    }

    /// Waits for the next record.
    ///
    /// A broker that went away is not an error here: librdkafka reports it
    /// (and logs it) but goes on by itself, fetching from the partition's
    /// new leader once the cluster elected one.
    pub async fn recv(&self) -> Result<ConsumedRecord, KafkaError> {
        let msg = loop {
            match self.inner.recv().await {
                Ok(msg) => break msg,
                Err(rdkafka::error::KafkaError::MessageConsumption(code))
                    if passing_broker_trouble(code) =>
                {
                    tracing::debug!(%code, "a broker is unreachable; the client goes on with the others");
                }
                // A reader to the end learns it from its position.
                Err(rdkafka::error::KafkaError::PartitionEOF(_)) => {}
                Err(e) => return Err(KafkaError::Consume(e)),
            }
        };
        Ok(self.record(&msg))
    }

    /// Reads a replay consumer's partitions up to `ends` (partition → the
    /// offset the next record would get, as [`super::Watermarks::high`]
    /// gives it): the next record, or `None` once every partition got
    /// there. A partition leaves `ends` when it did.
    ///
    /// The end of a transactionally written partition is a commit marker,
    /// which takes an offset but is never delivered: a partition counts as
    /// read when the consumer's position passed its end (librdkafka moves
    /// the position over markers), checked before each wait and whenever
    /// the consumer reports reaching a partition's end.
    pub async fn recv_to(
        &self,
        ends: &mut HashMap<i32, i64>,
    ) -> Result<Option<ConsumedRecord>, KafkaError> {
        loop {
            self.drop_reached(ends);
            if ends.is_empty() {
                return Ok(None);
            }
            match self.inner.recv().await {
                Ok(msg) => {
                    let record = self.record(&msg);
                    if ends
                        .get(&record.partition)
                        .is_some_and(|end| record.offset + 1 >= *end)
                    {
                        ends.remove(&record.partition);
                    }
                    return Ok(Some(record));
                }
                Err(rdkafka::error::KafkaError::MessageConsumption(code))
                    if passing_broker_trouble(code) =>
                {
                    tracing::debug!(%code, "a broker is unreachable; the client goes on with the others");
                }
                Err(rdkafka::error::KafkaError::PartitionEOF(_)) => {}
                Err(e) => return Err(KafkaError::Consume(e)),
            }
        }
    }

    /// Removes from `ends` the partitions whose position reached their end.
    fn drop_reached(&self, ends: &mut HashMap<i32, i64>) {
        // An empty partition has nothing to read.
        ends.retain(|_, end| *end > 0);
        if ends.is_empty() {
            return;
        }
        let Ok(positions) = self.inner.position() else {
            return;
        };
        for e in positions.elements() {
            if let (Offset::Offset(at), Some(end)) = (e.offset(), ends.get(&e.partition())) {
                if at >= *end {
                    ends.remove(&e.partition());
                }
            }
        }
    }

    /// The offset the next record of `partition` delivered to this
    /// consumer will have (past any commit markers), when known.
    pub fn position(&self, topic: &str, partition: i32) -> Option<i64> {
        let positions = self.inner.position().ok()?;
        match positions.find_partition(topic, partition)?.offset() {
            Offset::Offset(at) => Some(at),
            _ => None,
        }
    }

    fn record(&self, msg: &rdkafka::message::BorrowedMessage<'_>) -> ConsumedRecord {
        let headers = msg
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| {
                        (
                            h.key.to_owned(),
                            h.value.map(<[u8]>::to_vec).unwrap_or_default(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let record = ConsumedRecord {
            topic: msg.topic().to_owned(),
            partition: msg.partition(),
            offset: msg.offset(),
            key: msg.key().map(<[u8]>::to_vec),
            payload: msg.payload().map(<[u8]>::to_vec),
            headers,
            timestamp_ms: msg.timestamp().to_millis(),
        };
        if let Some(m) = &self.metrics {
            m.consumed.of(&record.topic).inc();
        }
        record
    }

    /// The next record if the client already holds one, without waiting
    /// for the broker: what a batch can take at once.
    pub fn try_recv(&self) -> Option<Result<ConsumedRecord, KafkaError>> {
        self.recv().now_or_never()
    }

    /// Marks a record as safely taken by the next stage: the group resumes
    /// after it once the offset is committed.
    /// A partition the group gave to another member meanwhile stores
    /// nothing: its new owner resumes from the last commit.
    pub fn store(&self, topic: &str, partition: i32, offset: i64) -> Result<(), KafkaError> {
        // rd_kafka_offset_store commits `offset + 1`, the next record to read.
        match self.inner.store_offset(topic, partition, offset) {
            Ok(()) => {}
            Err(rdkafka::error::KafkaError::StoreOffset(RDKafkaErrorCode::State)) => {
                tracing::debug!(
                    topic,
                    partition,
                    "partition no longer assigned here; its offset is not stored"
                );
                return Ok(());
            }
            Err(source) => {
                return Err(KafkaError::StoreOffset {
                    topic: topic.to_owned(),
                    partition,
                    offset,
                    source,
                })
            }
        }
        if let Some(m) = &self.metrics {
            m.offsets_stored.inc();
        }
        Ok(())
    }

    /// [`Consumer::store`] for a record.
    pub fn store_record(&self, record: &ConsumedRecord) -> Result<(), KafkaError> {
        self.store(&record.topic, record.partition, record.offset)
    }

    /// Commits the stored offsets now and waits for the broker's answer
    /// (blocks the calling thread for one round trip).
    pub fn commit(&self) -> Result<(), KafkaError> {
        match self.inner.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => Ok(()),
            // Nothing stored since the last commit.
            Err(rdkafka::error::KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => Ok(()),
            Err(e) => Err(KafkaError::Commit(e)),
        }
    }

    /// Offsets the group has committed for these partitions (`None` where
    /// nothing is committed yet).
    pub fn committed(
        &self,
        partitions: &[(&str, i32)],
        timeout: Duration,
    ) -> Result<Vec<Option<i64>>, KafkaError> {
        let mut tpl = TopicPartitionList::new();
        for (t, p) in partitions {
            tpl.add_partition(t, *p);
        }
        let got = self
            .inner
            .committed_offsets(tpl, timeout)
            .map_err(KafkaError::Commit)?;
        Ok(partitions
            .iter()
            .map(
                |(t, p)| match got.find_partition(t, *p).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) => Some(o),
                    _ => None,
                },
            )
            .collect())
    }

    /// The group's generation and this member's id, which a transactional
    /// producer sends with the offsets it commits
    /// ([`super::Publisher::send_offsets_to_transaction`]): the brokers
    /// refuse offsets of a member the group has moved on from.
    pub fn group_metadata(&self) -> Option<rdkafka::consumer::ConsumerGroupMetadata> {
        self.inner.group_metadata()
    }

    /// The fatal error that ended this consumer, if one did: its code and
    /// librdkafka's reason (e.g. a static member fenced by another process
    /// joining under the same `group.instance.id`). A consumer with a
    /// fatal error receives nothing more.
    pub fn fatal(&self) -> Option<(rdkafka::types::RDKafkaErrorCode, String)> {
        use rdkafka::consumer::Consumer as _;
        self.inner.client().fatal_error()
    }

    /// The partitions assigned to this member now.
    pub fn assignment(&self) -> Vec<(String, i32)> {
        self.inner
            .assignment()
            .map(|a| {
                a.elements()
                    .iter()
                    .map(|e| (e.topic().to_owned(), e.partition()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether `partition` of `topic` is assigned to this member now.
    pub fn holds(&self, topic: &str, partition: i32) -> bool {
        self.inner
            .assignment()
            .map(|a| a.find_partition(topic, partition).is_some())
            .unwrap_or(false)
    }

    /// Reads `partition` of `topic` again from `offset`: records already
    /// fetched past it are dropped, not delivered.
    pub fn seek(&self, topic: &str, partition: i32, offset: i64) -> Result<(), KafkaError> {
        self.inner
            .seek(
                topic,
                partition,
                Offset::Offset(offset),
                Duration::from_secs(10),
            )
            .map_err(KafkaError::Consume)
    }

    /// Commits what was stored and leaves the group.
    pub fn close(self) -> Result<(), KafkaError> {
        let result = self.commit();
        self.inner.unsubscribe();
        result
    }
}
