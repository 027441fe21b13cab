//! Subscriptions: share topics of an upper node applied to a database.
//!
//! upper node's Kafka → decode (schemas from the upper node's registry) →
//! batch → sink transaction (rows + offsets together) → next batch.
//!
//! Offsets live in the sink database, written in the same transaction as
//! the rows, and the consumer starts from them (it joins no consumer group):
//! a crash at any point replays at most the uncommitted batch, and the
//! sink's version guard makes that replay change nothing. Records that do
//! not decode, or that the database refuses, go to the dead-letter topic on
//! the upstream cluster (acknowledged before the offset that covers them is
//! committed) and the subscription goes on.

pub mod cascade;
pub mod config;
pub mod reconcile;

use crate::domain::headers::{
    HEADER_DLQ_OFFSET, HEADER_DLQ_PARTITION, HEADER_DLQ_REASON, HEADER_DLQ_TOPIC, HEADER_HOPS,
    HEADER_ORIGIN, HEADER_ORIGIN_TS,
};
use backflow_connectors::now_ms;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apache_avro::Schema;
use backflow_connectors::sink::mysql::MysqlSink;
use backflow_connectors::sink::postgres::PostgresSink;
use backflow_connectors::sink::sqlite::SqliteSink;
use backflow_connectors::{
    ConnectorError, ErrorKind, Provenance, Sink, SinkBatch, SinkRecord, TopicOffset,
};
use backflow_schemas::registry_client::{RegistryClient, RegistryClientError};
use backflow_schemas::{
    key_table_from_schema, table_from_schemas, unframe, EventReader, FramedReaders, TableCodec,
    TableDesc, TableTarget,
};
use tokio_util::sync::CancellationToken;

use crate::http::{CheckState, Readiness};
use crate::kafka::{
    ConsumedRecord, Consumer, KafkaError, KafkaSettings, OutgoingRecord, Publisher, TopicAdmin,
    TopicSpec, Watermarks,
};
use crate::metrics::Metrics;
use crate::subscribe::config::SinkConfig;
use crate::subscribe::config::SubscriptionConfig;

/// Readiness check covering every subscription of the process.
pub const CHECK_SUBSCRIPTIONS: &str = "subscriptions";

/// How often lag is measured.
const LAG_EVERY: Duration = Duration::from_secs(5);
/// How often the subscribed topics are checked for new partitions (and
/// topics that did not exist yet).
const TOPICS_EVERY: Duration = Duration::from_secs(15);
/// How often a subscription none of whose topics exists yet looks again
/// (a metadata request; the first records arrive this much sooner).
const TOPICS_WAIT: Duration = Duration::from_secs(2);

/// Why a subscription stopped.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    /// The database failed or refused.
    #[error(transparent)]
    Sink(#[from] ConnectorError),
    /// Kafka failed.
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    /// The schema registry could not be asked.
    #[error("{0}")]
    Registry(#[from] RegistryClientError),
}

impl crate::domain::restart::Kind for SubscribeError {
    /// A bad record reaching here was not dead-lettered: definite, like
    /// a refused login or a missing table.
    fn kind(&self) -> ErrorKind {
        match self {
            SubscribeError::Sink(e) => e.kind,
            SubscribeError::Kafka(e) => e.kind(),
            SubscribeError::Registry(e) => match e.code() {
                Some(c) if c < 50000 => ErrorKind::Definite,
                _ => ErrorKind::Transient,
            },
        }
    }
}

/// How a run ended without an error.
enum Stop {
    /// The process is shutting down.
    Shutdown,
    /// Topics or partitions appeared: start again with them assigned.
    Reassign,
}

/// Shared state of the `subscriptions` readiness check.
#[derive(Clone, Default)]
pub struct SubscriptionHealth {
    readiness: Readiness,
    failing: Arc<Mutex<BTreeMap<String, String>>>,
}

impl SubscriptionHealth {
    /// Registers the check with `readiness`.
    pub fn new(readiness: Readiness) -> Self {
        readiness.register(CHECK_SUBSCRIPTIONS);
        Self {
            readiness,
            failing: Arc::default(),
        }
    }

    fn set(&self, name: &str, failure: Option<String>) {
        let mut failing = self.failing.lock().expect("health lock");
        match failure {
            Some(reason) => failing.insert(name.to_owned(), reason),
            None => failing.remove(name),
        };
        let state = if failing.is_empty() {
            CheckState::Ok
        } else {
            CheckState::Failing(
                failing
                    .iter()
                    .map(|(n, r)| format!("subscription {n}: {r}"))
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        };
        self.readiness.set(CHECK_SUBSCRIPTIONS, state);
    }
}

/// Runs a subscription until shutdown, restarting it after errors as
/// [`crate::domain::restart`] decides from their kind (it resumes from the offsets
/// its database holds). `bus`: this
/// node's own Kafka, for a subscription whose sink is `kafka` (a cascade).
pub async fn supervise(
    config: SubscriptionConfig,
    metrics: Metrics,
    health: SubscriptionHealth,
    bus: Option<crate::source::feed::FeedContext>,
    shutdown: CancellationToken,
) {
    let name = config.name.clone();
    // Series at zero from the start, so rates and alerts see the first one.
    metrics.subscribe_dead_letters.with_label_values(&[&name]);
    for kind in ["transient", "definite", "bad_record"] {
        metrics.subscribe_errors.with_label_values(&[&name, kind]);
    }
    let mut restarts =
        crate::domain::restart::Restarts::new(crate::domain::restart::Policy::DEFAULT);
    // Where this subscription is, reported to the upper node for its lag
    // board (its offsets of record stay in the sink).
    let settings = upstream_settings(&config);
    let (status, status_rx) = tokio::sync::watch::channel(crate::lag::Report {
        subscription: name.clone(),
        state: crate::lag::RunState::Running,
        error: None,
        positions: Vec::new(),
        last_origin_ms: None,
        ts_ms: 0,
    });
    let reporter = tokio::spawn(crate::lag::report(
        settings,
        config.upstream.clone(),
        status_rx,
        shutdown.child_token(),
    ));
    let _reporter = tokio_util::task::AbortOnDropHandle::new(reporter);
    loop {
        let mut run = Run::new(&config, &metrics, &health, &status, bus.as_ref());
        let attempt = restarts.begin();
        let outcome = run.run(&shutdown).await;
        run.close().await;
        let retry = match outcome {
            Ok(Stop::Shutdown) => return,
            Ok(Stop::Reassign) => {
                tracing::info!(subscription = %name, "subscribed topics changed; reassigning partitions");
                attempt.ended_well();
                continue;
            }
            Err(e) => {
                use crate::domain::restart::Kind;
                let retry = attempt.failed(e.kind());
                crate::events::subscription_failed(&metrics, &name, &retry, &e);
                health.set(&name, Some(format!("{e} ({})", retry.describe())));
                status.send_modify(|r| {
                    r.state = crate::lag::RunState::Failed;
                    r.error = Some(e.to_string());
                });
                retry
            }
        };
        if !crate::domain::restart::pause(retry.wait, &shutdown).await {
            return;
        }
    }
}

/// Connection settings for a subscription's upper node.
/// The database a subscription applies to; `None` for a cascade (whose
/// sink is the node's own bus).
pub(crate) fn database_sink(config: &SubscriptionConfig) -> Option<Box<dyn Sink>> {
    let name = config.name.clone();
    Some(match &config.sink {
        SinkConfig::Postgres(c) => Box::new(PostgresSink::new(c.clone(), name)),
        SinkConfig::Mysql(c) => Box::new(MysqlSink::new(c.clone(), name)),
        SinkConfig::Sqlite(c) => Box::new(SqliteSink::new(c.clone(), name)),
        SinkConfig::Kafka(_) => return None,
    })
}

/// Where each subscribed topic's rows go: a table of the sink database,
/// or for a cascade a dataset of this node.
pub(crate) fn table_targets(config: &SubscriptionConfig) -> HashMap<String, TableTarget> {
    let cascade = matches!(config.sink, SinkConfig::Kafka(_));
    config
        .tables
        .iter()
        .map(|m| {
            let dataset =
                crate::domain::topics::share_parts(&config.upstream.topic_prefix, &m.topic)
                    .map_or(m.topic.as_str(), |(_, d)| d)
                    .to_owned();
            if cascade {
                // Re-published as a dataset of this node.
                let dataset = m.table.clone().unwrap_or(dataset);
                let (department, name) = dataset.split_once('.').unwrap_or(("", &dataset));
                let target = TableTarget {
                    schema: department.to_owned(),
                    name: name.to_owned(),
                    dataset: dataset.clone(),
                };
                return (m.topic.clone(), target);
            }
            let name = m.table.clone().unwrap_or_else(|| {
                dataset
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                    .collect()
            });
            (
                m.topic.clone(),
                TableTarget {
                    dataset,
                    schema: config.sink.namespace().to_owned(),
                    name,
                },
            )
        })
        .collect()
}

pub(crate) fn upstream_settings(config: &SubscriptionConfig) -> KafkaSettings {
    let mut settings = KafkaSettings::new(config.upstream.brokers.clone());
    settings.client_id = format!("backflow-subscribe-{}", config.name);
    settings.properties = config.upstream.properties.clone();
    settings.fetch_wait_ms = config.upstream.fetch_wait_ms;
    settings
}

/// A consumed record, decoded, with its bytes kept for the dead-letter
/// topic in case the database refuses it.
struct Pending {
    record: SinkRecord,
    raw: ConsumedRecord,
}

/// One run of a subscription, from the stored offsets to an error or stop.
struct Run<'a> {
    config: &'a SubscriptionConfig,
    metrics: &'a Metrics,
    health: &'a SubscriptionHealth,
    status: &'a tokio::sync::watch::Sender<crate::lag::Report>,
    settings: KafkaSettings,
    sink: Box<dyn Sink>,
    decoder: Decoder,
    dlq: Option<Publisher>,
    dlq_ready: bool,
    pending: Vec<Pending>,
    /// Last consumed offset per partition since the last commit.
    consumed: HashMap<(String, i32), i64>,
    /// Next offset to apply per assigned partition.
    next: HashMap<(String, i32), i64>,
    batch_started: Option<Instant>,
    last_origin_ms: Option<i64>,
}

impl<'a> Run<'a> {
    fn new(
        config: &'a SubscriptionConfig,
        metrics: &'a Metrics,
        health: &'a SubscriptionHealth,
        status: &'a tokio::sync::watch::Sender<crate::lag::Report>,
        bus: Option<&crate::source::feed::FeedContext>,
    ) -> Self {
        let sink: Box<dyn Sink> = match (&config.sink, bus) {
            (SinkConfig::Kafka(_), Some(bus)) => Box::new(crate::subscribe::cascade::BusSink::new(
                config.name.clone(),
                bus.clone(),
            )),
            (SinkConfig::Kafka(_), None) => {
                unreachable!("cascading subscriptions are started by the node with its bus")
            }
            _ => database_sink(config).expect("a database sink"),
        };
        let settings = upstream_settings(config);
        let targets = table_targets(config);
        Self {
            config,
            metrics,
            health,
            status,
            settings,
            sink,
            decoder: Decoder::new(&config.upstream, targets),
            dlq: None,
            dlq_ready: false,
            pending: Vec::new(),
            consumed: HashMap::new(),
            next: HashMap::new(),
            batch_started: None,
            last_origin_ms: None,
        }
    }

    fn name(&self) -> &str {
        &self.config.name
    }

    /// Hands where the subscription is to its reporter; `applied`: a batch
    /// was just committed, so a reported failure is over.
    fn report_positions(&self, applied: bool) {
        let mut positions: Vec<crate::lag::ReportedPosition> = self
            .next
            .iter()
            .map(|((topic, partition), next)| crate::lag::ReportedPosition {
                topic: topic.clone(),
                partition: *partition,
                next: *next,
            })
            .collect();
        positions.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        let last = self.last_origin_ms;
        self.status.send_modify(|r| {
            r.positions = positions;
            if last.is_some() {
                r.last_origin_ms = last;
            }
            if applied {
                r.state = crate::lag::RunState::Running;
                r.error = None;
            }
        });
    }

    async fn close(&mut self) {
        if let Err(e) = self.sink.shutdown().await {
            tracing::debug!(subscription = %self.name(), error = %e, "closing the sink failed");
        }
    }

    /// The partitions of the subscribed topics (topics that do not exist
    /// yet have none).
    async fn partitions(&mut self) -> Result<Vec<(String, i32)>, SubscribeError> {
        let mut out = Vec::new();
        for m in &self.config.tables {
            let n = crate::kafka::partition_count(&self.settings, &m.topic).await?;
            out.extend((0..n as i32).map(|p| (m.topic.clone(), p)));
        }
        Ok(out)
    }

    async fn run(&mut self, shutdown: &CancellationToken) -> Result<Stop, SubscribeError> {
        self.decoder.check_registry()?;
        let stored: HashMap<(String, i32), i64> = self
            .sink
            .committed_offsets()
            .await?
            .into_iter()
            .map(|o| ((o.topic, o.partition), o.offset))
            .collect();
        let mut assigned = self.partitions().await?;
        let mut waited = false;
        while assigned.is_empty() {
            self.health.set(
                self.name(),
                Some(
                    "none of the subscribed topics exists yet (is the subscription approved?)"
                        .to_owned(),
                ),
            );
            if !waited {
                tracing::warn!(subscription = %self.name(), topics = ?self.config.tables.iter().map(|m| &m.topic).collect::<Vec<_>>(), "none of the subscribed topics exists yet; waiting");
                waited = true;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(Stop::Shutdown),
                _ = tokio::time::sleep(TOPICS_WAIT) => {}
            }
            assigned = self.partitions().await?;
        }
        let missing: Vec<&str> = self
            .config
            .tables
            .iter()
            .filter(|m| !assigned.iter().any(|(t, _)| t == &m.topic))
            .map(|m| m.topic.as_str())
            .collect();
        if !missing.is_empty() {
            tracing::warn!(subscription = %self.name(), topics = ?missing, "some subscribed topics do not exist yet; they are picked up when they appear");
        }
        let start: Vec<(String, i32, Option<i64>)> = assigned
            .iter()
            .map(|(t, p)| (t.clone(), *p, stored.get(&(t.clone(), *p)).map(|o| o + 1)))
            .collect();
        for (t, p, next) in &start {
            self.next.insert((t.clone(), *p), next.unwrap_or(0));
        }
        // The group librdkafka asks a coordinator for (nothing is
        // committed under it): one under the subscriber's share prefix,
        // which the upper node's ACLs let its principal use.
        let group = self
            .config
            .tables
            .first()
            .map(|t| crate::domain::topics::subscriber_group(&t.topic))
            .unwrap_or_else(|| self.settings.client_id.clone());
        let consumer =
            Consumer::assigned(&self.settings, &group, &start, Some(self.metrics.clone()))?;
        let watermarks = Watermarks::new(&self.settings)?;
        tracing::info!(
            subscription = %self.name(),
            partitions = start.len(),
            resumed = stored.len(),
            "subscription started"
        );
        self.health.set(self.name(), None);
        self.report_positions(false);
        // With no flush interval a batch is what the Kafka client already
        // holds: written as soon as that runs out, so it grows with the load
        // (up to batch_size) and costs no wait when the load is light.
        let linger = Duration::from_millis(self.config.flush_interval_ms);
        let mut lag_tick = tokio::time::interval(LAG_EVERY);
        let mut topics_tick = tokio::time::interval(TOPICS_EVERY);
        topics_tick.tick().await;
        loop {
            let deadline = self
                .batch_started
                .filter(|_| !linger.is_zero())
                .map(|t| tokio::time::Instant::from_std(t + linger));
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    self.flush().await?;
                    return Ok(Stop::Shutdown);
                }
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if deadline.is_some() => {
                    self.flush().await?;
                }
                record = consumer.recv() => {
                    self.take(record?).await?;
                    // Counted whether decoded or dead-lettered, so a run of
                    // bad records still ends in a flush of their offsets.
                    let mut taken = 1;
                    while taken < self.config.batch_size {
                        match consumer.try_recv() {
                            Some(record) => self.take(record?).await?,
                            None => break,
                        }
                        taken += 1;
                    }
                    if linger.is_zero()
                        || taken >= self.config.batch_size
                        || self.pending.len() >= self.config.batch_size
                    {
                        self.flush().await?;
                    }
                }
                _ = lag_tick.tick() => {
                    self.pass_markers(&consumer);
                    self.measure_lag(&watermarks).await;
                }
                _ = topics_tick.tick() => {
                    let now = self.partitions().await?;
                    if now.iter().any(|tp| !assigned.contains(tp)) {
                        self.flush().await?;
                        return Ok(Stop::Reassign);
                    }
                }
            }
        }
    }

    /// Share topics are written in transactions, so a partition's last
    /// offset is often a commit marker, never delivered: the position
    /// reported up would stay one short of the end (a lag of one, forever,
    /// on a quiet topic). With nothing received and not yet applied, every
    /// offset below the consumer's position was applied or a marker, so the
    /// reported position moves up to it.
    fn pass_markers(&mut self, consumer: &Consumer) {
        if !self.pending.is_empty() || !self.consumed.is_empty() {
            return;
        }
        let mut moved = false;
        for ((topic, partition), next) in self.next.iter_mut() {
            if let Some(at) = consumer.position(topic, *partition) {
                if at > *next {
                    *next = at;
                    moved = true;
                }
            }
        }
        if moved {
            self.report_positions(false);
        }
    }

    /// Decodes a record into the pending batch, or dead-letters it.
    async fn take(&mut self, raw: ConsumedRecord) -> Result<(), SubscribeError> {
        self.consumed
            .insert((raw.topic.clone(), raw.partition), raw.offset);
        if self.batch_started.is_none() {
            self.batch_started = Some(Instant::now());
        }
        match self.decoder.decode(&raw).await? {
            Ok(record) => self.pending.push(Pending { record, raw }),
            Err(reason) => self.dead_letter(&raw, &reason).await?,
        }
        Ok(())
    }

    /// Sends a record to the dead-letter topic and waits for Kafka's
    /// acknowledgement.
    async fn dead_letter(
        &mut self,
        raw: &ConsumedRecord,
        reason: &str,
    ) -> Result<(), SubscribeError> {
        let topic = self.config.dlq_topic();
        if self.dlq.is_none() {
            self.dlq = Some(Publisher::new(&self.settings, Some(self.metrics.clone()))?);
        }
        if !self.dlq_ready {
            // Best effort: the upstream cluster may create it on first write
            // or the operator may have created it; the send says if not.
            match TopicAdmin::new(&self.settings) {
                Ok(admin) => {
                    if let Err(e) = admin
                        .ensure(&[TopicSpec::retained(topic.clone(), 1, 1)])
                        .await
                    {
                        tracing::warn!(subscription = %self.name(), topic = %topic, error = %e, "cannot create the dead-letter topic; writing to it anyway");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "no admin client for the dead-letter topic"),
            }
            self.dlq_ready = true;
        }
        let partition = raw.partition.to_string();
        let offset = raw.offset.to_string();
        let mut headers: Vec<(&str, &[u8])> = raw
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        headers.push((HEADER_DLQ_REASON, reason.as_bytes()));
        headers.push((HEADER_DLQ_TOPIC, raw.topic.as_bytes()));
        headers.push((HEADER_DLQ_PARTITION, partition.as_bytes()));
        headers.push((HEADER_DLQ_OFFSET, offset.as_bytes()));
        let record = OutgoingRecord {
            topic: &topic,
            key: raw.key.as_deref(),
            payload: raw.payload.as_deref(),
            headers: &headers,
        };
        self.dlq
            .as_ref()
            .expect("created above")
            .send(record)
            .await?;
        crate::events::subscription_dead_lettered(
            self.metrics,
            self.name(),
            (&raw.topic, raw.partition, raw.offset),
            &reason,
            &topic,
        );
        Ok(())
    }

    /// Applies the pending batch with its offsets in one transaction.
    async fn flush(&mut self) -> Result<(), SubscribeError> {
        if self.consumed.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        let mut offsets: Vec<TopicOffset> = self
            .consumed
            .iter()
            .map(|((topic, partition), offset)| TopicOffset {
                topic: topic.clone(),
                partition: *partition,
                offset: *offset,
            })
            .collect();
        offsets.sort();
        let last_origin = pending.iter().rev().find_map(|p| origin_ms(&p.raw));
        // The records move into the batch; the raw records stay beside it
        // for the dead-letter topic, should the database refuse one.
        let (records, raws): (Vec<SinkRecord>, Vec<ConsumedRecord>) =
            pending.into_iter().map(|p| (p.record, p.raw)).unzip();
        let batch = SinkBatch { records, offsets };
        let started = Instant::now();
        match self.sink.apply_batch(&batch).await {
            Ok(applied) => self.count(&applied, started),
            Err(e) if e.kind == ErrorKind::BadRecord => {
                tracing::info!(subscription = %self.name(), records = raws.len(), error = %e, "the database refused a record of the batch; applying one by one to find it");
                self.isolate(batch.records.iter().zip(&raws), batch.offsets.clone())
                    .await?;
            }
            Err(e) => return Err(e.into()),
        }
        for o in &batch.offsets {
            self.next
                .insert((o.topic.clone(), o.partition), o.offset + 1);
        }
        self.consumed.clear();
        self.batch_started = None;
        if let Some(ms) = last_origin {
            self.last_origin_ms = Some(ms);
        }
        self.report_positions(true);
        if let Some(ms) = last_origin {
            self.metrics
                .subscribe_lag_seconds
                .with_label_values(&[self.name()])
                .set(((now_ms() - ms).max(0)) as f64 / 1000.0);
        }
        Ok(())
    }

    /// Applies records one per transaction, dead-lettering those the
    /// database refuses, then stores the batch's offsets.
    async fn isolate(
        &mut self,
        pending: impl Iterator<Item = (&SinkRecord, &ConsumedRecord)>,
        offsets: Vec<TopicOffset>,
    ) -> Result<(), SubscribeError> {
        for (record, raw) in pending {
            let one = SinkBatch {
                records: vec![record.clone()],
                offsets: vec![record.from.clone()],
            };
            let started = Instant::now();
            match self.sink.apply_batch(&one).await {
                Ok(applied) => self.count(&applied, started),
                Err(e) if e.kind == ErrorKind::BadRecord => {
                    self.dead_letter(raw, &e.message).await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        let started = Instant::now();
        let applied = self
            .sink
            .apply_batch(&SinkBatch {
                records: Vec::new(),
                offsets,
            })
            .await?;
        self.count(&applied, started);
        Ok(())
    }

    fn count(&self, applied: &backflow_connectors::Applied, started: Instant) {
        let name = self.name();
        let m = self.metrics;
        m.subscribe_apply_seconds
            .with_label_values(&[name])
            .observe(started.elapsed().as_secs_f64());
        m.subscribe_batches.with_label_values(&[name]).inc();
        m.subscribe_rows
            .with_label_values(&[name, "upsert"])
            .inc_by(applied.upserted);
        m.subscribe_rows
            .with_label_values(&[name, "delete"])
            .inc_by(applied.deleted);
        m.subscribe_rows
            .with_label_values(&[name, "skip"])
            .inc_by(applied.skipped);
    }

    /// Records waiting in the assigned partitions; lag in seconds drops to
    /// 0 when none are.
    async fn measure_lag(&mut self, watermarks: &Watermarks) {
        let mut waiting = 0i64;
        for ((topic, partition), next) in &self.next {
            match watermarks.high(topic, *partition).await {
                Ok(high) => waiting += (high - next).max(0),
                Err(e) => {
                    tracing::debug!(error = %e, "cannot read a high watermark");
                    return;
                }
            }
        }
        let name = self.name();
        self.metrics
            .subscribe_lag_messages
            .with_label_values(&[name])
            .set(waiting);
        let seconds = self
            .metrics
            .subscribe_lag_seconds
            .with_label_values(&[name]);
        if waiting == 0 && self.pending.is_empty() {
            seconds.set(0.0);
            // Running, with nothing left to apply: a failure it reported
            // before this run is over.
            self.status.send_if_modified(|r| {
                let failed = r.state != crate::lag::RunState::Running;
                if failed {
                    r.state = crate::lag::RunState::Running;
                    r.error = None;
                }
                failed
            });
        } else if let Some(ms) = self.last_origin_ms {
            seconds.set(((now_ms() - ms).max(0)) as f64 / 1000.0);
        }
    }
}

fn origin_ms(raw: &ConsumedRecord) -> Option<i64> {
    std::str::from_utf8(raw.header(HEADER_ORIGIN_TS)?)
        .ok()?
        .parse()
        .ok()
}

/// The provenance headers of a consumed record.
fn provenance(raw: &ConsumedRecord) -> Provenance {
    let text = |name| raw.header(name).and_then(|v| std::str::from_utf8(v).ok());
    Provenance {
        origin: text(HEADER_ORIGIN).map(str::to_owned),
        origin_ts_ms: origin_ms(raw),
        hops: text(HEADER_HOPS)
            .map(|h| {
                h.split(',')
                    .filter(|n| !n.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// Turns framed records into sink records, with schemas from the upstream
/// registry and table descriptions recovered from them.
pub(crate) struct Decoder {
    registry: Result<RegistryClient, RegistryClientError>,
    readers: FramedReaders,
    schemas: HashMap<u32, Arc<Schema>>,
    targets: HashMap<String, TableTarget>,
    /// (topic, key schema id, value schema id) → table and reader.
    tables: HashMap<(String, u32, u32), (Arc<TableDesc>, EventReader)>,
    /// (topic, key schema id) → key-only table, for tombstones.
    keys: HashMap<(String, u32), (Arc<TableDesc>, TableCodec)>,
}

impl Decoder {
    /// Schemas come from `upstream`'s registry, asked with its token.
    pub(crate) fn new(
        upstream: &crate::subscribe::config::UpstreamConfig,
        targets: HashMap<String, TableTarget>,
    ) -> Self {
        let registry = upstream
            .http_client(std::time::Duration::from_secs(30))
            .map_err(
                |reason| backflow_schemas::registry_client::RegistryClientError::Unreachable {
                    url: upstream.registry_url.clone(),
                    reason,
                },
            )
            .and_then(|http| RegistryClient::with_http(&upstream.registry_url, http))
            .map(|c| match &upstream.registry_token {
                Some(t) => c.with_token(t.clone()),
                None => c,
            });
        Self {
            registry,
            readers: FramedReaders::new(),
            schemas: HashMap::new(),
            targets,
            tables: HashMap::new(),
            keys: HashMap::new(),
        }
    }

    pub(crate) fn check_registry(&self) -> Result<(), SubscribeError> {
        match &self.registry {
            Ok(_) => Ok(()),
            Err(e) => Err(SubscribeError::Registry(RegistryClientError::Refused {
                what: "the configured registry_url".to_owned(),
                code: 42200,
                message: e.to_string(),
            })),
        }
    }

    /// The schema with this id: `Ok(None)` when the registry does not have
    /// it (the record is bad), `Err` when the registry cannot be asked (the
    /// subscription retries).
    async fn schema(&mut self, id: u32) -> Result<Option<Arc<Schema>>, SubscribeError> {
        if let Some(s) = self.schemas.get(&id) {
            return Ok(Some(s.clone()));
        }
        let registry = self.registry.as_ref().map_err(|e| {
            SubscribeError::Registry(RegistryClientError::Unreachable {
                url: String::new(),
                reason: e.to_string(),
            })
        })?;
        match registry.fetch_schema(id).await {
            Ok(s) => {
                self.readers
                    .add(id, &s)
                    .map_err(|e| ConnectorError::definite(e.to_string()))?;
                self.schemas.insert(id, s.clone());
                Ok(Some(s))
            }
            Err(e) if matches!(e.code(), Some(c) if c / 100 == 404) => Ok(None),
            Err(RegistryClientError::Refused {
                what,
                code: code @ 40101,
                message,
            }) => Err(SubscribeError::Registry(RegistryClientError::Refused {
                what: format!(
                    "{what} (the upper node issues this node a token; give it by upstream.registry_token_env or upstream.registry_token_file)"
                ),
                code,
                message,
            })),
            Err(e) => Err(e.into()),
        }
    }

    /// `Ok(Ok(record))`, or `Ok(Err(reason))` for a record to dead-letter.
    pub(crate) async fn decode(
        &mut self,
        raw: &ConsumedRecord,
    ) -> Result<Result<SinkRecord, String>, SubscribeError> {
        let Some(target) = self.targets.get(&raw.topic).cloned() else {
            return Ok(Err(format!("topic {} is not mapped to a table", raw.topic)));
        };
        let Some(key_bytes) = raw.key.as_deref() else {
            return Ok(Err(
                "record has no key: share topics are keyed by primary key".to_owned(),
            ));
        };
        let key_id = match unframe(key_bytes) {
            Ok((id, _)) => id,
            Err(e) => return Ok(Err(format!("key: {e}"))),
        };
        let Some(key_schema) = self.schema(key_id).await? else {
            return Ok(Err(format!(
                "key schema id {key_id} is not in the upstream registry"
            )));
        };
        let from = TopicOffset {
            topic: raw.topic.clone(),
            partition: raw.partition,
            offset: raw.offset,
        };
        let Some(payload) = raw.payload.as_deref() else {
            // A tombstone: delete by key.
            let slot = (raw.topic.clone(), key_id);
            if !self.keys.contains_key(&slot) {
                match with_codec(key_table_from_schema(&key_schema, &target)) {
                    Ok(t) => self.keys.insert(slot.clone(), t),
                    Err(e) => return Ok(Err(e)),
                };
            }
            let (table, codec) = &self.keys[&slot];
            let key = match self.readers.decode(key_bytes) {
                Ok((_, v)) => codec.key_from(v),
                Err(e) => Err(e.to_string()),
            };
            return Ok(match key {
                Ok(key) => Ok(SinkRecord {
                    from,
                    table: self
                        .latest_table(&raw.topic, key_id)
                        .unwrap_or_else(|| table.clone()),
                    key,
                    event: None,
                    provenance: provenance(raw),
                }),
                Err(e) => Err(format!("key: {e}")),
            });
        };
        let value_id = match unframe(payload) {
            Ok((id, _)) => id,
            Err(e) => return Ok(Err(format!("value: {e}"))),
        };
        let Some(value_schema) = self.schema(value_id).await? else {
            return Ok(Err(format!(
                "value schema id {value_id} is not in the upstream registry"
            )));
        };
        let slot = (raw.topic.clone(), key_id, value_id);
        if !self.tables.contains_key(&slot) {
            match with_codec(table_from_schemas(&key_schema, &value_schema, &target)) {
                Ok((table, codec)) => self.tables.insert(
                    slot.clone(),
                    (table, EventReader::new(codec, &key_schema, &value_schema)),
                ),
                Err(e) => return Ok(Err(e)),
            };
        }
        let (table, reader) = &self.tables[&slot];
        Ok(match reader.read(&self.readers, key_bytes, payload) {
            Ok(event) => Ok(SinkRecord {
                from,
                table: table.clone(),
                key: event.key.clone(),
                event: Some(event),
                provenance: provenance(raw),
            }),
            Err(e) => Err(e),
        })
    }

    /// The full table last decoded for a topic with this key schema, so a
    /// tombstone goes to the same table description as the rows.
    fn latest_table(&self, topic: &str, key_id: u32) -> Option<Arc<TableDesc>> {
        self.tables
            .iter()
            .filter(|((t, k, _), _)| t == topic && *k == key_id)
            .max_by_key(|((_, _, v), _)| *v)
            .map(|(_, (table, _))| table.clone())
    }
}

/// A recovered table with its codec, or why there is none.
fn with_codec(
    desc: Result<TableDesc, backflow_schemas::SchemaError>,
) -> Result<(Arc<TableDesc>, TableCodec), String> {
    desc.and_then(TableCodec::new)
        .map(|c| (c.table().clone(), c))
        .map_err(|e| e.to_string())
}
