//! Runs a source connector into its datasets' raw topics.
//!
//! source → encode (schemas registered in the node's registry) → raw topic
//! `backflow.raw.<dataset>`, keyed by primary key, Confluent-framed Avro,
//! with provenance headers. Kafka's acknowledgements are awaited in order
//! by a separate task; a source checkpoint is acknowledged to the source
//! only once every record before it was acknowledged, so the database's
//! history (the replication slot) is released only for data Kafka holds.
//! Records the source could not read go to `backflow.dlq.<feed>` with the
//! reason; the feed goes on.

use crate::domain::headers::{HEADER_DLQ_REASON, HEADER_HOPS, HEADER_ORIGIN, HEADER_ORIGIN_TS};
use backflow_connectors::now_ms;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backflow_connectors::{ConnectorError, Position, Source};
use backflow_schemas::registry_client::subject_for;
use backflow_schemas::{ChangeEvent, SchemaError, TableCodec, TableDesc};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::domain::topics;
use crate::kafka::{
    Acks, KafkaError, OutgoingRecord, Publisher, TopicAdmin, TopicSpec, TRANSACTION_STEP,
};
use crate::metrics::Metrics;
use crate::registry::{Registry, RegistryError};

/// Why a feed stopped.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// The connector failed.
    #[error(transparent)]
    Source(#[from] ConnectorError),
    /// Kafka refused or lost a record.
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    /// A schema could not be registered (e.g. incompatible change).
    #[error("schema registration for {table} failed: {source}")]
    Schema {
        table: String,
        #[source]
        source: RegistryError,
    },
    /// The table cannot be encoded.
    #[error("{0}")]
    Encode(String),
    /// Kafka did not acknowledge a record; the feed restarts from the last
    /// acknowledged position.
    #[error(
        "Kafka did not acknowledge a record; restarting from the last acknowledged position: {0}"
    )]
    Unacknowledged(String),
    /// The raw topic's rows could not be read for the source.
    #[error("reading the raw topic's rows for the source failed: {0}")]
    TopicState(String),
    /// A table does not fit its dataset's standard, or cannot be published
    /// as it is.
    #[error("{0}")]
    Standard(String),
    /// Another process registered this feed's transactional id: it runs
    /// the feed now, and this one's writes are refused.
    #[error("another process runs feed {0} with this node's identity and took it over (the brokers refuse this process's writes to it); run each feed in one process only")]
    Fenced(String),
}

impl From<crate::source::topic_state::TopicStateError> for FeedError {
    fn from(e: crate::source::topic_state::TopicStateError) -> Self {
        match e {
            crate::source::topic_state::TopicStateError::Kafka(e) => FeedError::Kafka(e),
            crate::source::topic_state::TopicStateError::Incomplete(reason) => {
                FeedError::TopicState(reason)
            }
        }
    }
}

impl crate::domain::restart::Kind for FeedError {
    fn kind(&self) -> crate::domain::restart::ErrorKind {
        use crate::domain::restart::ErrorKind;
        match self {
            FeedError::Source(e) => e.kind,
            FeedError::Kafka(e) => e.kind(),
            FeedError::Schema { source, .. } => source.kind(),
            FeedError::Encode(_) | FeedError::Standard(_) | FeedError::Fenced(_) => {
                ErrorKind::Definite
            }
            FeedError::Unacknowledged(_) | FeedError::TopicState(_) => ErrorKind::Transient,
        }
    }
}

/// Most changes asked of a source at a time.
const BATCH_RECORDS: usize = 2_000;

/// Batches read ahead of the publishing task.
const WORK_QUEUE: usize = 2;

/// Batches handed to Kafka and awaiting acknowledgement before the
/// publishing task waits (librdkafka's own queue bounds the records too).
const PENDING_BATCHES: usize = 64;

/// How often an acknowledged position is recorded in `backflow._offsets`.
const SAVE_EVERY: Duration = Duration::from_secs(5);

/// What a feed needs from the node.
#[derive(Clone)]
pub struct FeedContext {
    /// This node's division code.
    pub node: String,
    /// Publisher to the node's Kafka.
    pub publisher: Publisher,
    /// Connection settings, for reading stored positions.
    pub settings: crate::kafka::KafkaSettings,
    /// The node's schema registry.
    pub registry: Registry,
    /// Topic administration.
    pub admin: Arc<TopicAdmin>,
    /// Partitions of created topics.
    pub partitions: i32,
    /// Replication factor of created topics.
    pub replication_factor: i32,
    /// Metrics.
    pub metrics: Metrics,
    /// The datasets' standard forms (`[[standards]]`).
    pub standards: Arc<Vec<crate::standards::StandardConfig>>,
    /// `kafka.transaction_interval_ms` when feeds write in transactions
    /// (`kafka.transactions`); `None`: an idempotent producer.
    pub transactions: Option<Duration>,
    /// `kafka.transaction_interval_ms` when the distributor writes in
    /// transactions (`kafka.distributor_transactions`).
    pub distributor_transactions: Option<Duration>,
    /// This process's name among those serving the node (`kafka.replica`).
    pub replica: String,
    /// Whether feeds run only while this process holds their lease (a
    /// real cluster; the embedded broker serves one process).
    pub leases: bool,
}

/// A table version's codec and the raw topic's schema ids it encodes with.
pub(crate) struct Encoder {
    /// Held so the description's address, the map key, is not reused.
    _table: Arc<TableDesc>,
    pub(crate) codec: TableCodec,
    pub(crate) topic: Arc<str>,
    pub(crate) key_id: u32,
    pub(crate) value_id: u32,
}

/// A batch handed to Kafka: its acknowledgement, then the position it
/// confirms.
struct Pending {
    acks: Acks,
    checkpoint: Option<Position>,
}

/// Runs one feed until `shutdown` or an error.
pub async fn run(
    name: &str,
    mut source: Box<dyn Source>,
    ctx: FeedContext,
    shutdown: CancellationToken,
) -> Result<(), FeedError> {
    // A transactional feed registers its id first: that fences an earlier
    // run still alive and ends what it left open (aborted, or committed
    // when its commit was under way), so the position read next is final.
    let txn_publisher = match ctx.transactions {
        Some(_) => Some(
            Publisher::register(
                &ctx.settings,
                Some(ctx.metrics.clone()),
                &topics::feed_transaction(&ctx.node, name),
                crate::kafka::TRANSACTION_TIMEOUT,
                TRANSACTION_STEP,
            )
            .await?,
        ),
        None => None,
    };
    let resume = crate::state::offsets::load(&ctx.settings, name).await?;
    if let Some(p) = &resume {
        tracing::info!(feed = name, position = %p.0, "resuming from the last acknowledged position");
    }
    let tables = source.start(resume).await?;
    let reads_topics = source.topic_state_interval().is_some();
    let mut conformer = prepare(name, reads_topics, &tables, &ctx).await?;
    tracing::info!(feed = name, tables = tables.len(), "feed started");

    // In-order acknowledgement tracking.
    let (pending_tx, pending_rx) = mpsc::channel::<Pending>(PENDING_BATCHES);
    let (acked_tx, mut acked_rx) = watch::channel::<Option<Position>>(None);
    let (fail_tx, mut fail_rx) = watch::channel::<Option<String>>(None);
    // The oldest commit time of each batch handed to Kafka and not yet
    // acknowledged, oldest first: the source lag is the age of the first.
    let in_flight: Arc<Mutex<VecDeque<i64>>> = Arc::default();
    // Stopped however the feed ends (an error returns early).
    let _lag_task = lag_gauges(name, &ctx, source.as_ref(), in_flight.clone());
    let acker = tokio::spawn(acknowledged_in_order(
        pending_rx,
        acked_tx,
        fail_tx,
        in_flight.clone(),
    ));

    // Handing encoded records to Kafka runs on a thread of its own, so the
    // source reads and encodes its next batch while the last one is
    // published.
    // (A task would share the feed's worker thread: tokio runs a task
    // woken by a message on the thread that sent it.)
    let (work_tx, work_rx) = mpsc::channel::<Work>(WORK_QUEUE);
    let stop_publishing = CancellationToken::new();
    let publishing = Publishing::new(
        name,
        &ctx,
        in_flight.clone(),
        pending_tx,
        fail_rx.clone(),
        stop_publishing.clone(),
        txn_publisher,
    );
    let runtime = tokio::runtime::Handle::current();
    let mut publisher = Some(tokio::task::spawn_blocking(move || {
        runtime.block_on(publishing.run(work_rx))
    }));
    // Sources that need the raw topics' rows get them now, then every
    // `state_every` (after everything they yielded before is in Kafka).
    let state_every = source.topic_state_interval();
    let mut state_due = state_every.map(|_| tokio::time::Instant::now());
    let mut last_saved: Option<std::time::Instant> = None;
    // Each table version's encoder, and the size of the last encoded batch
    // (the next one's buffer starts at it).
    let mut encoders: HashMap<usize, Encoder> = HashMap::new();
    let mut bytes_hint = 0;
    // Every way out of the loop goes through the drain below, so the
    // publishing thread is stopped before this function returns: a thread
    // left running could enqueue an older version of a row after the
    // restarted feed's newer one.
    let result = 'feed: loop {
        if let Err(e) =
            acknowledge(name, source.as_mut(), &ctx, &mut acked_rx, &mut last_saved).await
        {
            break 'feed Err(e);
        }
        let failed = fail_rx.borrow_and_update().clone();
        if let Some(reason) = failed {
            break Err(FeedError::Unacknowledged(reason));
        }
        let Some(running) = publisher.as_mut() else {
            unreachable!("the loop ends when the publishing task does");
        };
        let batch = if state_due.is_some_and(|at| tokio::time::Instant::now() >= at) {
            // Wait until Kafka holds everything yielded so far, so the
            // topic's rows include it: first until the publishing task has
            // handed it all over, then until Kafka acknowledged it.
            match all_in_kafka(&work_tx, &in_flight, &fail_rx, &shutdown).await {
                InKafka::Yes => {}
                InKafka::Failed => continue,
                InKafka::Stopping => break Ok(()),
                InKafka::PublisherEnded => {
                    break Err(publisher_ended(publisher.take().expect("running").await))
                }
            }
            let combined =
                match compare_with_topics(name, source.as_mut(), &tables, &conformer, &ctx).await {
                    Ok(b) => b,
                    Err(e) => break 'feed Err(e),
                };
            state_due = state_every
                .filter(|d| *d != Duration::MAX)
                .map(|d| tokio::time::Instant::now() + d);
            combined
        } else {
            // next_batch is not cancelled except to stop: a half-read batch
            // would be lost. Cancelling on failure or shutdown is safe because
            // nothing after it gets acknowledged. (A source that wants the
            // topic's rows returns between polls, so they are handed over
            // between batches.)
            tokio::select! {
                _ = shutdown.cancelled() => break Ok(()),
                _ = fail_rx.changed() => continue,
                ended = running => {
                    publisher = None;
                    break Err(publisher_ended(ended));
                }
                b = source.next_batch(BATCH_RECORDS) => match b {
                    Ok(b) => b,
                    Err(e) => break Err(e.into()),
                },
            }
        };
        let work = match encode(batch, &mut conformer, &mut encoders, &ctx, bytes_hint).await {
            Ok(work) => work,
            Err(e) => break 'feed Err(e),
        };
        if let Work::Batch { records, .. } = &work {
            bytes_hint = records.bytes.len();
        }
        let sent = tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            r = work_tx.send(work) => r.is_ok(),
        };
        if !sent {
            break Err(publisher_ended(publisher.take().expect("running").await));
        }
    };

    // The publishing thread stops before the channel closes: what it was
    // handed and did not enqueue is read again by the next run.
    stop_publishing.cancel();
    drop(work_tx);
    let ended = Ending {
        stop_publishing,
        publisher,
        acker,
        acked: acked_rx,
    };
    ended.drain(name, source.as_mut(), &ctx).await;
    if let Err(e) = &result {
        tracing::error!(feed = name, error = %e, "feed stopped");
    } else {
        tracing::info!(feed = name, "feed stopped");
    }
    result
}

/// Waits for each batch's acknowledgement in the order the batches were
/// handed to Kafka, and publishes the position each one confirms; the
/// first failure is reported and ends it (nothing after it is confirmed).
async fn acknowledged_in_order(
    mut pending: mpsc::Receiver<Pending>,
    acked: watch::Sender<Option<Position>>,
    failed: watch::Sender<Option<String>>,
    in_flight: Arc<Mutex<VecDeque<i64>>>,
) {
    while let Some(p) = pending.recv().await {
        if let Err(e) = p.acks.await {
            let _ = failed.send(Some(e.to_string()));
            return;
        }
        in_flight.lock().expect("lock").pop_front();
        if let Some(pos) = p.checkpoint {
            let _ = acked.send(Some(pos));
        }
    }
}

/// Hands the source the last position Kafka acknowledged, if a new one
/// came, and records it in `backflow._offsets` at most every
/// [`SAVE_EVERY`] (a restart resumes from the source's own position
/// anyway; this tells the source its snapshot finished).
async fn acknowledge(
    name: &str,
    source: &mut dyn Source,
    ctx: &FeedContext,
    acked: &mut watch::Receiver<Option<Position>>,
    last_saved: &mut Option<std::time::Instant>,
) -> Result<(), FeedError> {
    if !acked.has_changed().unwrap_or(false) {
        return Ok(());
    }
    let Some(pos) = acked.borrow_and_update().clone() else {
        return Ok(());
    };
    source.acknowledge(&pos).await?;
    // A transactional feed wrote the position with its changes.
    if ctx.transactions.is_none() && last_saved.is_none_or(|t| t.elapsed() >= SAVE_EVERY) {
        crate::state::offsets::save(&ctx.publisher, name, &pos).await?;
        *last_saved = Some(std::time::Instant::now());
    }
    Ok(())
}

/// Whether Kafka holds everything the feed yielded so far.
enum InKafka {
    /// It does.
    Yes,
    /// A batch was not acknowledged: the feed fails.
    Failed,
    /// The feed is stopping.
    Stopping,
    /// The publishing task ended.
    PublisherEnded,
}

/// Waits until Kafka holds everything yielded so far: first until the
/// publishing task has handed it all over, then until Kafka acknowledged
/// it (so a raw topic's rows include it).
async fn all_in_kafka(
    work: &mpsc::Sender<Work>,
    in_flight: &Mutex<VecDeque<i64>>,
    failed: &watch::Receiver<Option<String>>,
    shutdown: &CancellationToken,
) -> InKafka {
    let (handed, all_handed) = oneshot::channel();
    let handed_over = tokio::select! {
        _ = shutdown.cancelled() => return InKafka::Stopping,
        r = async { work.send(Work::Barrier(handed)).await.is_ok() && all_handed.await.is_ok() } => r,
    };
    if !handed_over {
        return InKafka::PublisherEnded;
    }
    while !in_flight.lock().expect("lock").is_empty() {
        if failed.borrow().is_some() || shutdown.is_cancelled() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if failed.borrow().is_some() {
        InKafka::Failed
    } else if shutdown.is_cancelled() {
        InKafka::Stopping
    } else {
        InKafka::Yes
    }
}

/// Keeps the feed's source lag gauges current every second: the age of the
/// oldest batch handed to Kafka and not acknowledged, and the change
/// history the database keeps for it. Stops when dropped.
fn lag_gauges(
    name: &str,
    ctx: &FeedContext,
    source: &dyn Source,
    in_flight: Arc<Mutex<VecDeque<i64>>>,
) -> tokio_util::task::AbortOnDropHandle<()> {
    let lag = ctx.metrics.source_lag_seconds.with_label_values(&[name]);
    let lag_bytes = ctx.metrics.source_lag_bytes.with_label_values(&[name]);
    let gauges = source.gauges();
    tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
        loop {
            let oldest = in_flight.lock().expect("lock").front().copied();
            lag.set(oldest.map_or(0.0, |ms| ((now_ms() - ms).max(0) as f64) / 1000.0));
            if let Some(g) = &gauges {
                lag_bytes.set(g.backlog_bytes.load(std::sync::atomic::Ordering::Relaxed));
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }))
}

/// What is left to stop when a feed's loop ends.
struct Ending {
    stop_publishing: CancellationToken,
    publisher: Option<tokio::task::JoinHandle<Result<(), FeedError>>>,
    acker: tokio::task::JoinHandle<()>,
    acked: watch::Receiver<Option<Position>>,
}

impl Ending {
    /// Stops the publishing thread and waits for it (what it was handed
    /// and did not enqueue is not acknowledged, so the next run reads it
    /// again); waits, bounded, for what was handed to Kafka, and
    /// acknowledges it to the source and in `backflow._offsets`; then
    /// shuts the source down.
    async fn drain(self, name: &str, source: &mut dyn Source, ctx: &FeedContext) {
        self.stop_publishing.cancel();
        if let Some(running) = self.publisher {
            if let Err(e) = running.await.unwrap_or_else(|e| {
                Err(FeedError::Unacknowledged(format!(
                    "the publishing task failed: {e}"
                )))
            }) {
                tracing::debug!(feed = name, error = %e, "publishing stopped with an error while the feed stopped");
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), self.acker).await;
        let last = self.acked.borrow().clone();
        if let Some(pos) = last {
            let _ = source.acknowledge(&pos).await;
            if ctx.transactions.is_none() {
                let _ = crate::state::offsets::save(&ctx.publisher, name, &pos).await;
            }
        }
        // Give the connector a moment to report the position to the database.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let _ = source.shutdown().await;
    }
}

/// Before a feed's first batch: the standards its tables follow (with the
/// before-images a source that `reads_topics` cannot read of a standard's
/// rows), and its raw and dead-letter topics.
async fn prepare(
    name: &str,
    reads_topics: bool,
    tables: &[Arc<TableDesc>],
    ctx: &FeedContext,
) -> Result<crate::standards::Conformer, FeedError> {
    let mut conformer = crate::standards::Conformer::new(name, &ctx.standards, ctx.metrics.clone())
        .map_err(FeedError::Standard)?;
    conformer
        .check_tables(tables)
        .map_err(FeedError::Standard)?;
    if reads_topics {
        // A source that reads its before-images from the raw topic cannot
        // read a standard's rows: the conformer keeps them instead.
        for t in tables {
            if let Some(desc) = conformer.standard_desc(&t.dataset) {
                let rows =
                    crate::source::topic_state::current_rows(&ctx.settings, &ctx.registry, &desc)
                        .await?;
                tracing::info!(feed = name, dataset = %t.dataset, topic_rows = rows.len(), "read the standardised dataset's raw topic for before-images");
                conformer.load_prior(&t.dataset, rows);
            }
        }
    }
    let mut specs: Vec<TopicSpec> = tables
        .iter()
        .map(|t| {
            TopicSpec::compacted(
                topics::raw(&t.dataset),
                ctx.partitions,
                ctx.replication_factor,
            )
        })
        .collect();
    specs.push(TopicSpec::retained(
        topics::dlq(name),
        1,
        ctx.replication_factor,
    ));
    ctx.admin.ensure(&specs).await?;
    Ok(conformer)
}

/// Hands each table the rows its raw topic holds and takes back what the
/// source derives from them (the deletes of keys gone from the table).
async fn compare_with_topics(
    name: &str,
    source: &mut dyn Source,
    tables: &[Arc<TableDesc>],
    conformer: &crate::standards::Conformer,
    ctx: &FeedContext,
) -> Result<backflow_connectors::SourceBatch, FeedError> {
    let mut combined = backflow_connectors::SourceBatch::default();
    for table in tables {
        let rows = if conformer.has_standard(&table.dataset) {
            // The topic holds the standard's rows, keyed by the standard's
            // key, not the table's: the source gets none (the conformer
            // supplies before-images instead; key-diff deletes are not
            // available for standardised datasets).
            Vec::new()
        } else {
            crate::source::topic_state::current_rows(&ctx.settings, &ctx.registry, table).await?
        };
        let count = rows.len();
        let b = source.topic_state(table, rows).await?;
        tracing::info!(feed = name, table = %table.qualified_name(), topic_rows = count, deletes = b.records.len(), "compared the table with its raw topic");
        combined.records.extend(b.records);
        combined.rejected.extend(b.rejected);
        if b.checkpoint.is_some() {
            combined.checkpoint = b.checkpoint;
        }
    }
    Ok(combined)
}

/// A source batch as the publishing task takes it: conformed to the
/// standards, encoded, and what was refused on the way as dead letters.
async fn encode(
    batch: backflow_connectors::SourceBatch,
    conformer: &mut crate::standards::Conformer,
    encoders: &mut HashMap<usize, Encoder>,
    ctx: &FeedContext,
    bytes_hint: usize,
) -> Result<Work, FeedError> {
    let mut dead: Vec<Dead> = batch
        .rejected
        .iter()
        .map(|r| Dead {
            table: r.table.clone(),
            position: r.position.as_str().to_owned(),
            reason: r.reason.clone(),
            rules: None,
        })
        .collect();
    let mut records = Vec::with_capacity(batch.records.len());
    for record in batch.records {
        if let Err(refused) = conformer.conform(record, &mut records) {
            dead.push(Dead {
                table: refused.table,
                position: refused.position,
                reason: refused.reason,
                rules: Some(refused.rules),
            });
        }
    }
    let mut encoded = Encoded::with_capacity(records.len(), bytes_hint);
    for record in &records {
        let enc = encoder(encoders, &record.table, ctx).await?;
        if let Err(e) = encoded.push(enc, &record.event) {
            dead.push(Dead {
                table: record.table.qualified_name(),
                position: record.position.as_str().to_owned(),
                reason: e.to_string(),
                rules: None,
            });
        }
    }
    Ok(Work::Batch {
        records: encoded,
        dead,
        checkpoint: batch.checkpoint,
        open: batch.open_transaction,
    })
}

/// A change refused on its way to the raw topic, for the dead-letter topic.
struct Dead {
    table: String,
    position: String,
    reason: String,
    /// The standard's rules it violated (`field:rule,...`).
    rules: Option<String>,
}

/// What the feed loop hands to its publishing task, in source order.
enum Work {
    /// Changes to publish, the changes refused on the way, and the source
    /// position that is safe once all of them are in Kafka.
    Batch {
        records: Encoded,
        dead: Vec<Dead>,
        checkpoint: Option<Position>,
        /// It ends inside a source transaction.
        open: bool,
    },
    /// Answered once everything handed over before it is enqueued.
    Barrier(oneshot::Sender<()>),
}

/// A batch's changes encoded for their raw topics, keys and values back
/// to back in one buffer: one allocation per batch instead of two per
/// change, and the changes themselves are freed on the thread that read
/// them. Encoding here, on the feed loop, rather than on the publishing
/// thread, also splits the work more evenly between the two.
struct Encoded {
    bytes: Vec<u8>,
    /// The batch's topics; records refer to them by index.
    topics: Vec<Arc<str>>,
    records: Vec<EncodedRecord>,
}

/// One encoded change: where its key and value are in the batch's buffer.
struct EncodedRecord {
    topic: usize,
    start: usize,
    key_len: usize,
    end: usize,
    /// The source's commit time, for the `origin_ts` header.
    origin_ts: i64,
    op: backflow_schemas::Op,
}

impl Encoded {
    /// Room for `records` changes of `bytes` bytes in all.
    fn with_capacity(records: usize, bytes: usize) -> Self {
        Self {
            bytes: Vec::with_capacity(bytes),
            topics: Vec::new(),
            records: Vec::with_capacity(records),
        }
    }

    /// Encodes a change with its table's encoder.
    fn push(&mut self, enc: &Encoder, event: &ChangeEvent) -> Result<(), SchemaError> {
        let start = self.bytes.len();
        let key_len = enc.codec.encode_framed_into(
            enc.key_id,
            enc.value_id,
            event.parts(),
            &mut self.bytes,
        )?;
        let topic = match self.topics.iter().rposition(|t| Arc::ptr_eq(t, &enc.topic)) {
            Some(i) => i,
            None => {
                self.topics.push(enc.topic.clone());
                self.topics.len() - 1
            }
        };
        self.records.push(EncodedRecord {
            topic,
            start,
            key_len,
            end: self.bytes.len(),
            origin_ts: event.source.ts_ms,
            op: event.op,
        });
        Ok(())
    }
}

/// Why the publishing task ended before the feed loop.
fn publisher_ended(ended: Result<Result<(), FeedError>, tokio::task::JoinError>) -> FeedError {
    match ended {
        Ok(Err(e)) => e,
        Ok(Ok(())) => FeedError::Unacknowledged("the publishing task stopped".to_owned()),
        Err(e) => FeedError::Unacknowledged(format!("the publishing task failed: {e}")),
    }
}

/// Hands a feed's encoded changes to Kafka, in order, with their pending
/// acknowledgements queued for the acknowledging task.
struct Publishing {
    name: String,
    ctx: FeedContext,
    /// `<node>/<feed>`, the origin header.
    origin: String,
    dlq: String,
    /// Per-operation event counters, resolved once: a label lookup per
    /// record is measurable.
    events: crate::metrics::ByOp,
    in_flight: Arc<Mutex<VecDeque<i64>>>,
    pending: mpsc::Sender<Pending>,
    fail: watch::Receiver<Option<String>>,
    /// Ends the task at once, between two records.
    stop: CancellationToken,
    /// The feed's own transactional producer (`kafka.transactions`).
    txn: Option<Txn>,
}

/// A transactional feed's producer and its open transaction.
struct Txn {
    publisher: Publisher,
    /// How long a transaction stays open while more batches wait.
    interval: Duration,
    /// When the open transaction began; `None`: none is open.
    open_since: Option<tokio::time::Instant>,
    /// The batches of the open transaction: handed to the acknowledging
    /// task (and so to the source) only once it committed.
    held: Vec<Pending>,
    /// The last batch ended inside a source transaction: no commit until
    /// a batch completes it.
    source_open: bool,
}

impl Publishing {
    fn new(
        name: &str,
        ctx: &FeedContext,
        in_flight: Arc<Mutex<VecDeque<i64>>>,
        pending: mpsc::Sender<Pending>,
        fail: watch::Receiver<Option<String>>,
        stop: CancellationToken,
        txn_publisher: Option<Publisher>,
    ) -> Self {
        let events = crate::metrics::ByOp::new(&ctx.metrics.source_events, &[name]);
        Self {
            name: name.to_owned(),
            origin: format!("{}/{name}", ctx.node),
            dlq: topics::dlq(name),
            ctx: ctx.clone(),
            events,
            in_flight,
            pending,
            fail,
            stop,
            txn: txn_publisher.map(|publisher| Txn {
                publisher,
                interval: ctx.transactions.unwrap_or_default(),
                open_since: None,
                held: Vec::new(),
                source_open: false,
            }),
        }
    }

    /// The producer records go to: the feed's transactional one, or the
    /// node's.
    fn producer(&self) -> Publisher {
        match &self.txn {
            Some(t) => t.publisher.clone(),
            None => self.ctx.publisher.clone(),
        }
    }

    /// Commits the open transaction, then hands its batches to the
    /// acknowledging task; `Ok(false)` when that task is gone. A failed
    /// commit is aborted (nothing of it is ever visible) and fails the
    /// feed, which restarts from the last committed position.
    async fn commit(&mut self) -> Result<bool, FeedError> {
        let Some(txn) = self.txn.as_mut() else {
            return Ok(true);
        };
        if txn.open_since.take().is_none() {
            return Ok(true);
        }
        // Wait for the records' deliveries here, then commit: librdkafka's
        // commit waits for them itself, but in steps of 100 ms (measured
        // against Apache Kafka 4.1: about 105 ms per commit, 2 ms after
        // the deliveries).
        let mut delivered = Ok(());
        for p in txn.held.iter_mut() {
            if let Err(e) = (&mut p.acks).await {
                delivered = Err(e);
                break;
            }
        }
        if let Err(e) = delivered.and_then(|()| txn.publisher.commit_transaction(TRANSACTION_STEP))
        {
            txn.held.clear();
            if !e.is_fenced() {
                if let Err(abort) = txn.publisher.abort_transaction(TRANSACTION_STEP) {
                    tracing::warn!(feed = %self.name, error = %abort, "aborting the failed transaction failed; the brokers abort it after its timeout");
                }
            }
            return Err(e.into());
        }
        self.ctx
            .metrics
            .feed_transactions
            .with_label_values(&[&self.name])
            .inc();
        for p in std::mem::take(&mut txn.held) {
            if self.pending.send(p).await.is_err() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Aborts an open transaction as the feed stops: its records are never
    /// visible, and readers need not wait for the brokers' timeout.
    fn abort_open(&mut self) {
        if let Some(txn) = self.txn.as_mut() {
            if txn.open_since.take().is_some() {
                txn.held.clear();
                let _ = txn.publisher.abort_transaction(Duration::from_secs(5));
            }
        }
    }

    async fn run(mut self, work: mpsc::Receiver<Work>) -> Result<(), FeedError> {
        let outcome = match self.publish_all(work).await {
            Err(FeedError::Kafka(e)) if e.is_fenced() => Err(FeedError::Fenced(self.name.clone())),
            other => other,
        };
        self.abort_open();
        outcome
    }

    async fn publish_all(&mut self, mut work: mpsc::Receiver<Work>) -> Result<(), FeedError> {
        let stop = self.stop.clone();
        loop {
            // An open transaction commits `interval` after it began (not
            // inside a source transaction), whether more batches come or
            // not: a commit costs a round trip or two, so committing each
            // small batch of a steady trickle at once would cap the feed
            // at a few hundred changes a second.
            let commit_at = self.txn.as_ref().and_then(|t| {
                t.open_since
                    .filter(|_| !t.source_open)
                    .map(|at| at + t.interval)
            });
            // Stopping drops a batch half enqueued: nothing of it is
            // acknowledged to the source, so it is read again.
            let w = tokio::select! {
                biased;
                _ = stop.cancelled() => return Ok(()),
                _ = tokio::time::sleep_until(commit_at.unwrap_or_else(tokio::time::Instant::now)), if commit_at.is_some() => {
                    if !self.commit().await? {
                        let reason = self.fail.borrow().clone().unwrap_or_default();
                        return Err(FeedError::Unacknowledged(reason));
                    }
                    continue;
                }
                w = work.recv() => match w {
                    Some(w) => w,
                    None => return Ok(()),
                },
            };
            match w {
                Work::Barrier(done) => {
                    // Everything handed over before it is committed first.
                    if !self.commit().await? {
                        let reason = self.fail.borrow().clone().unwrap_or_default();
                        return Err(FeedError::Unacknowledged(reason));
                    }
                    let _ = done.send(());
                }
                Work::Batch {
                    records,
                    dead,
                    checkpoint,
                    open,
                } => {
                    let something =
                        !records.records.is_empty() || !dead.is_empty() || checkpoint.is_some();
                    let queued = tokio::select! {
                        biased;
                        _ = stop.cancelled() => return Ok(()),
                        queued = self.publish(records, dead, checkpoint) => queued?,
                    };
                    if let Some(txn) = self.txn.as_mut() {
                        // An empty batch says nothing about the source's
                        // transaction.
                        if something {
                            txn.source_open = open;
                        }
                    }
                    // Commit when the transaction is old enough; never
                    // inside a source transaction (a restart resumes after
                    // the last whole one, and would write its first part
                    // again).
                    let due = self.txn.as_ref().is_some_and(|t| {
                        !t.source_open && t.open_since.is_some_and(|at| at.elapsed() >= t.interval)
                    });
                    let queued = queued && (!due || self.commit().await?);
                    if !queued {
                        // The acknowledging task stopped: a delivery failed.
                        let reason = self.fail.borrow().clone().unwrap_or_default();
                        return Err(FeedError::Unacknowledged(reason));
                    }
                }
            }
        }
    }

    /// Hands a batch to Kafka, then its checkpoint to the acknowledging
    /// task; `false` when that task is gone.
    async fn publish(
        &mut self,
        records: Encoded,
        dead: Vec<Dead>,
        checkpoint: Option<Position>,
    ) -> Result<bool, FeedError> {
        let publisher = self.producer();
        if let Some(txn) = self.txn.as_mut() {
            if records.records.is_empty() && dead.is_empty() && checkpoint.is_none() {
                // Nothing to write: no transaction for it.
                return Ok(true);
            }
            if txn.open_since.is_none() {
                txn.publisher.begin_transaction()?;
                txn.open_since = Some(tokio::time::Instant::now());
            }
        }
        let mut sent = publisher.batch();
        let oldest = records.records.first().map_or_else(now_ms, |r| r.origin_ts);
        self.in_flight.lock().expect("lock").push_back(oldest);
        for r in &records.records {
            let key = &records.bytes[r.start..r.start + r.key_len];
            let value = &records.bytes[r.start + r.key_len..r.end];
            let mut ts = itoa::Buffer::new();
            let headers: [(&str, &[u8]); 3] = [
                (HEADER_ORIGIN, self.origin.as_bytes()),
                (HEADER_ORIGIN_TS, ts.format(r.origin_ts).as_bytes()),
                (HEADER_HOPS, self.ctx.node.as_bytes()),
            ];
            // A tombstone after a delete lets compaction drop the key.
            let tombstone = r.op == backflow_schemas::Op::Delete;
            let payloads = [Some(value), None];
            for payload in &payloads[..1 + usize::from(tombstone)] {
                publisher
                    .enqueue_in(
                        &mut sent,
                        OutgoingRecord {
                            topic: &records.topics[r.topic],
                            key: Some(key),
                            payload: *payload,
                            headers: &headers,
                        },
                    )
                    .await?;
            }
            self.events.of(r.op).inc();
        }
        for d in &dead {
            tracing::warn!(feed = %self.name, table = %d.table, position = %d.position, reason = %d.reason, "change sent to the dead-letter topic");
            let body = serde_json::json!({
                "feed": self.name,
                "table": d.table,
                "position": d.position,
                "reason": d.reason,
                "rules": d.rules,
            })
            .to_string();
            let mut headers: Vec<(&str, &[u8])> = vec![
                (HEADER_ORIGIN, self.origin.as_bytes()),
                (HEADER_DLQ_REASON, d.reason.as_bytes()),
            ];
            if let Some(rules) = &d.rules {
                headers.push((crate::domain::headers::HEADER_DLQ_RULES, rules.as_bytes()));
            }
            publisher
                .enqueue_in(
                    &mut sent,
                    OutgoingRecord {
                        topic: &self.dlq,
                        key: Some(d.table.as_bytes()),
                        payload: Some(body.as_bytes()),
                        headers: &headers,
                    },
                )
                .await?;
            self.ctx
                .metrics
                .source_rejected
                .with_label_values(&[&self.name])
                .inc();
        }
        if let (Some(txn), Some(position)) = (self.txn.as_mut(), &checkpoint) {
            // The position the batch reaches, in the same transaction.
            let (key, value) = crate::state::offsets::record(&self.name, position);
            txn.publisher
                .enqueue_in(
                    &mut sent,
                    OutgoingRecord::new(topics::offsets(), key.as_bytes(), &value),
                )
                .await?;
        }
        let pending = Pending {
            acks: sent.seal(),
            checkpoint,
        };
        if let Some(txn) = self.txn.as_mut() {
            txn.held.push(pending);
            return Ok(true);
        }
        Ok(self.pending.send(pending).await.is_ok())
    }
}

/// The encoder of a table version, its schemas registered under the raw
/// topic's subjects on first use.
pub(crate) async fn encoder<'a>(
    encoders: &'a mut HashMap<usize, Encoder>,
    table: &Arc<TableDesc>,
    ctx: &FeedContext,
) -> Result<&'a Encoder, FeedError> {
    // Keyed by the description's allocation: a source hands out one Arc per
    // table version, and the map keeps it alive, so the address is never
    // reused while its entry exists. No allocation or deep comparison per
    // record.
    let id = Arc::as_ptr(table) as usize;
    let slot = match encoders.entry(id) {
        std::collections::hash_map::Entry::Occupied(known) => return Ok(known.into_mut()),
        std::collections::hash_map::Entry::Vacant(slot) => slot,
    };
    let name = table.qualified_name();
    let codec =
        TableCodec::new(table.as_ref().clone()).map_err(|e| FeedError::Encode(e.to_string()))?;
    let topic: Arc<str> = topics::raw(&table.dataset).into();
    let reg = |source| FeedError::Schema {
        table: name.clone(),
        source,
    };
    let key_id = ctx
        .registry
        .register(&subject_for(&topic, true), codec.key_schema())
        .await
        .map_err(reg)?;
    let value_id = ctx
        .registry
        .register(&subject_for(&topic, false), codec.value_schema())
        .await
        .map_err(reg)?;
    tracing::info!(table = %name, topic = %topic, key_id, value_id, "schemas registered");
    Ok(slot.insert(Encoder {
        _table: table.clone(),
        codec,
        topic,
        key_id,
        value_id,
    }))
}

/// The feed runner against an in-memory source and the embedded broker
/// (librdkafka's in-process mock cluster): no database, no external Kafka.
#[cfg(test)]
mod tests {
    use super::*;
    use backflow_connectors::{ConnectorError, RejectedRecord, SourceRecord};
    use backflow_schemas::{ChangeEvent, ColumnDesc, Datum, Op, Row, SourceInfo, SqlType};
    use std::sync::Mutex as StdMutex;

    /// A source that yields the batches it is given, in order, then empty
    /// ones; it records where it was started from and what it was
    /// acknowledged.
    struct MemorySource {
        table: Arc<TableDesc>,
        batches: VecDeque<Result<backflow_connectors::SourceBatch, ConnectorError>>,
        started_from: Arc<StdMutex<Option<Option<String>>>>,
        acked: Arc<StdMutex<Vec<String>>>,
    }

    #[async_trait::async_trait]
    impl Source for MemorySource {
        async fn start(
            &mut self,
            position: Option<Position>,
        ) -> Result<Vec<Arc<TableDesc>>, ConnectorError> {
            *self.started_from.lock().unwrap() = Some(position.map(|p| p.as_str().to_owned()));
            Ok(vec![self.table.clone()])
        }

        async fn next_batch(
            &mut self,
            _max: usize,
        ) -> Result<backflow_connectors::SourceBatch, ConnectorError> {
            // As the database sources do, it returns now and then when
            // nothing happens: the runner hands acknowledgements over
            // between batches.
            // An error comes once what was yielded before it is in Kafka
            // (acknowledged), so what the feed wrote before failing is
            // known.
            let error_early = matches!(self.batches.front(), Some(Err(_)))
                && self.acked.lock().unwrap().is_empty();
            match self.batches.pop_front() {
                // An empty batch is the source being idle for a while.
                Some(Ok(b)) if !error_early && b.records.is_empty() && b.checkpoint.is_none() => {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    Ok(b)
                }
                Some(b) if !error_early => b,
                other => {
                    if let Some(b) = other {
                        self.batches.push_front(b);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Ok(backflow_connectors::SourceBatch::default())
                }
            }
        }

        async fn acknowledge(&mut self, position: &Position) -> Result<(), ConnectorError> {
            self.acked
                .lock()
                .unwrap()
                .push(position.as_str().to_owned());
            Ok(())
        }

        async fn shutdown(&mut self) -> Result<(), ConnectorError> {
            Ok(())
        }
    }

    fn table(dataset: &str) -> Arc<TableDesc> {
        Arc::new(TableDesc {
            dataset: dataset.into(),
            schema: "public".into(),
            name: "people".into(),
            columns: vec![
                ColumnDesc::new("id", SqlType::BigInt, false),
                ColumnDesc::new("name", SqlType::Text, true),
            ],
            primary_key: vec!["id".into()],
        })
    }

    fn insert(table: &Arc<TableDesc>, id: i64, at: &str) -> SourceRecord {
        let row = Row(vec![Datum::Long(id), Datum::Text(format!("p{id}"))]);
        SourceRecord {
            table: table.clone(),
            event: ChangeEvent {
                key: Row(vec![Datum::Long(id)]),
                before: None,
                after: Some(row),
                source: SourceInfo::default(),
                op: Op::Create,
                ts_ms: None,
                transaction: None,
            },
            position: at.into(),
        }
    }

    fn batch(records: Vec<SourceRecord>, checkpoint: &str) -> backflow_connectors::SourceBatch {
        backflow_connectors::SourceBatch {
            records,
            rejected: Vec::new(),
            checkpoint: Some(checkpoint.into()),
            open_transaction: false,
        }
    }

    /// A node's Kafka, registry and topic admin on the embedded broker.
    async fn context(
        broker: &crate::kafka::EmbeddedBroker,
        shutdown: &CancellationToken,
    ) -> FeedContext {
        let settings = crate::kafka::KafkaSettings::new(broker.bootstrap_servers());
        let admin = TopicAdmin::Embedded(broker.admin());
        admin
            .ensure(&[
                TopicSpec::compacted(topics::schemas(), 1, 1),
                TopicSpec::compacted(topics::offsets(), 1, 1),
            ])
            .await
            .unwrap();
        let metrics = Metrics::new();
        let publisher = Publisher::new(&settings, Some(metrics.clone())).unwrap();
        let (registry, _follower) = Registry::start(
            &settings,
            publisher.clone(),
            "feed-test".into(),
            shutdown.clone(),
        )
        .unwrap();
        registry.caught_up().await.unwrap();
        FeedContext {
            node: "330100".into(),
            publisher,
            settings,
            registry,
            admin: Arc::new(admin),
            partitions: 1,
            replication_factor: 1,
            metrics,
            standards: Arc::new(Vec::new()),
            transactions: None,
            distributor_transactions: None,
            replica: "test".to_owned(),
            leases: false,
        }
    }

    /// Every committed record of `topic`, read to its end (a commit
    /// marker may end it).
    async fn read_all(ctx: &FeedContext, topic: &str) -> Vec<crate::kafka::ConsumedRecord> {
        let watermarks = crate::kafka::Watermarks::new(&ctx.settings).unwrap();
        let mut ends = HashMap::from([(0, watermarks.high(topic, 0).await.unwrap())]);
        let consumer = crate::kafka::Consumer::replay(&ctx.settings, topic, 0).unwrap();
        let mut out = Vec::new();
        while let Some(r) =
            tokio::time::timeout(Duration::from_secs(10), consumer.recv_to(&mut ends))
                .await
                .expect("the topic is read to its end")
                .unwrap()
        {
            out.push(r);
        }
        out
    }

    async fn until(what: &str, ok: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !ok() {
            assert!(std::time::Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn what_kafka_acknowledged_is_acknowledged_to_the_source_and_resumed_from() {
        let (ctx, _broker) = acknowledged_and_resumed(None).await;
        assert_eq!(
            ctx.metrics
                .feed_transactions
                .with_label_values(&["mem"])
                .get(),
            0
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_transactional_feed_commits_changes_and_position_together_before_acknowledging() {
        let (ctx, _broker) = acknowledged_and_resumed(Some(Duration::from_millis(100))).await;
        // The position came with the changes, in their transaction (the
        // feed did not write it separately).
        let offsets = read_all(&ctx, topics::offsets()).await;
        let positions: Vec<String> = offsets
            .iter()
            .filter(|r| r.key.as_deref() == Some(b"feed:mem".as_slice()))
            .filter_map(|r| {
                let v: serde_json::Value = serde_json::from_slice(r.payload.as_deref()?).ok()?;
                v["position"].as_str().map(str::to_owned)
            })
            .collect();
        assert_eq!(
            positions.last().map(String::as_str),
            Some("p2"),
            "{positions:?}"
        );
        let committed = ctx
            .metrics
            .feed_transactions
            .with_label_values(&["mem"])
            .get();
        assert!((1..=2).contains(&committed), "{committed} transactions");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_transactional_feed_never_commits_inside_a_source_transaction() {
        let broker = crate::kafka::EmbeddedBroker::start().unwrap();
        let shutdown = CancellationToken::new();
        let mut ctx = context(&broker, &shutdown).await;
        ctx.transactions = Some(Duration::from_millis(10));
        let t = table("mem.large");
        let acked = Arc::new(StdMutex::new(Vec::new()));
        // One source transaction streamed in two batches, the source idle
        // between them (the feed's work queue runs empty).
        let mut first = batch((1..=3).map(|id| insert(&t, id, "t1")).collect(), "unused");
        first.checkpoint = None;
        first.open_transaction = true;
        let source = MemorySource {
            table: t.clone(),
            batches: VecDeque::from([
                Ok(first),
                Ok(backflow_connectors::SourceBatch::default()),
                Ok(batch(
                    (4..=5).map(|id| insert(&t, id, "t1")).collect(),
                    "t1",
                )),
            ]),
            started_from: Arc::default(),
            acked: acked.clone(),
        };
        let stop = CancellationToken::new();
        let running = tokio::spawn(run("mem", Box::new(source), ctx.clone(), stop.clone()));
        until("t1 was never acknowledged", || {
            acked.lock().unwrap().last().map(String::as_str) == Some("t1")
        })
        .await;
        assert_eq!(
            ctx.metrics
                .feed_transactions
                .with_label_values(&["mem"])
                .get(),
            1,
            "the source transaction's two batches commit together"
        );
        assert_eq!(read_all(&ctx, &topics::raw("mem.large")).await.len(), 5);
        stop.cancel();
        running.await.unwrap().unwrap();
        shutdown.cancel();
    }

    /// Runs a feed of two batches, checks what reached the source and the
    /// raw topic, restarts it and checks where it resumed; the context.
    async fn acknowledged_and_resumed(
        transactions: Option<Duration>,
    ) -> (FeedContext, crate::kafka::EmbeddedBroker) {
        let broker = crate::kafka::EmbeddedBroker::start().unwrap();
        let shutdown = CancellationToken::new();
        let mut ctx = context(&broker, &shutdown).await;
        ctx.transactions = transactions;
        let t = table("mem.people");
        let acked = Arc::new(StdMutex::new(Vec::new()));
        let started_from = Arc::new(StdMutex::new(None));
        let source = MemorySource {
            table: t.clone(),
            batches: VecDeque::from([
                Ok(batch(
                    (1..=3).map(|id| insert(&t, id, "p1")).collect(),
                    "p1",
                )),
                Ok(batch(
                    (4..=5).map(|id| insert(&t, id, "p2")).collect(),
                    "p2",
                )),
            ]),
            started_from: started_from.clone(),
            acked: acked.clone(),
        };
        let stop = CancellationToken::new();
        let running = tokio::spawn(run("mem", Box::new(source), ctx.clone(), stop.clone()));
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while acked.lock().unwrap().last().map(String::as_str) != Some("p2") {
            if running.is_finished() {
                panic!("the feed stopped: {:?}", running.await);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "p2 was never acknowledged to the source: {:?}",
                acked.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Checkpoints are acknowledged in order, each at most once (the
        // runner hands over the latest: p2 covers p1).
        let seen = acked.lock().unwrap().clone();
        assert!(
            seen == ["p1", "p2"] || seen == ["p2"],
            "acknowledged {seen:?}"
        );
        assert_eq!(*started_from.lock().unwrap(), Some(None));
        let raw = read_all(&ctx, &topics::raw("mem.people")).await;
        assert_eq!(raw.len(), 5);
        for r in &raw {
            assert_eq!(r.header(HEADER_ORIGIN), Some("330100/mem".as_bytes()));
            assert!(r.header(HEADER_ORIGIN_TS).is_some());
        }
        stop.cancel();
        running.await.unwrap().unwrap();

        // A restart resumes from the last acknowledged position.
        let started_again = Arc::new(StdMutex::new(None));
        let source = MemorySource {
            table: t.clone(),
            batches: VecDeque::new(),
            started_from: started_again.clone(),
            acked: Arc::default(),
        };
        let stop = CancellationToken::new();
        let running = tokio::spawn(run("mem", Box::new(source), ctx.clone(), stop.clone()));
        until("the feed never started again", || {
            started_again.lock().unwrap().is_some()
        })
        .await;
        assert_eq!(*started_again.lock().unwrap(), Some(Some("p2".to_owned())));
        stop.cancel();
        running.await.unwrap().unwrap();
        shutdown.cancel();
        (ctx, broker)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_change_is_dead_lettered_and_a_definite_source_error_stops_the_feed() {
        let broker = crate::kafka::EmbeddedBroker::start().unwrap();
        let shutdown = CancellationToken::new();
        let ctx = context(&broker, &shutdown).await;
        let t = table("mem.refused");
        let mut first = batch(vec![insert(&t, 1, "q1")], "q1");
        first.rejected.push(RejectedRecord {
            table: "public.people".into(),
            position: "q1".into(),
            reason: "a value the column cannot hold".into(),
        });
        let source = MemorySource {
            table: t.clone(),
            batches: VecDeque::from([
                Ok(first),
                Err(ConnectorError::definite(
                    "the table was dropped: recreate it",
                )),
            ]),
            started_from: Arc::default(),
            acked: Arc::default(),
        };
        let outcome = tokio::time::timeout(
            Duration::from_secs(60),
            run(
                "refused",
                Box::new(source),
                ctx.clone(),
                CancellationToken::new(),
            ),
        )
        .await
        .expect("the feed stops by itself");
        use crate::domain::restart::Kind;
        let e = outcome.unwrap_err();
        assert_eq!(e.kind(), backflow_connectors::ErrorKind::Definite, "{e}");
        assert!(e.to_string().contains("recreate it"), "{e}");
        // The good change went on; the refused one is a dead letter with
        // its reason, never its value.
        assert_eq!(read_all(&ctx, &topics::raw("mem.refused")).await.len(), 1);
        let dead = read_all(&ctx, &topics::dlq("refused")).await;
        assert_eq!(dead.len(), 1);
        assert_eq!(
            dead[0].header(HEADER_DLQ_REASON),
            Some("a value the column cannot hold".as_bytes())
        );
        shutdown.cancel();
    }
}
