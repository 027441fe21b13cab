//! An idempotent Kafka producer that never drops a record.
//!
//! - `enable.idempotence=true` and `acks=all`: no duplicates from producer
//!   retries, no acknowledgement before the in-sync replicas have the record,
//!   and per-partition order kept (so per-key order, as the key picks the
//!   partition).
//! - Back-pressure: when librdkafka's local queue is full,
//!   [`Publisher::enqueue_in`] waits until there is room instead of failing
//!   or dropping.
//! - Records are enqueued in a [`Batch`]; its [`Acks`] resolve once Kafka
//!   acknowledged every record of it, or to the first refusal. A source
//!   confirms its position only after the acknowledgements of every batch
//!   before it resolved to `Ok`. A delivery report settles a shared counter,
//!   so a batch costs one wake-up, not a channel and a wake-up per record.

use backflow_connectors::now_ms;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI32, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use rdkafka::error::{KafkaError as RdKafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders, Timestamp};
use rdkafka::producer::{
    BaseRecord, DeliveryResult, Producer as _, ProducerContext, ThreadedProducer,
};
use rdkafka::util::Timeout;
use rdkafka::ClientContext;

use super::{ByKind, KafkaError, KafkaSettings};
use crate::domain::topics::TopicKind;
use crate::metrics::Metrics;

/// The producer's metrics with their labels resolved once, shared by the
/// publisher and its delivery reports: no label lookup per record.
struct ProduceMetrics {
    produced: ByKind,
    errors: ByKind,
    ack_seconds: prometheus::Histogram,
    queue_full: prometheus::IntCounter,
}

impl ProduceMetrics {
    fn new(m: &Metrics) -> Self {
        Self {
            produced: ByKind::new(&m.kafka_produced),
            errors: ByKind::new(&m.kafka_produce_errors),
            ack_seconds: m.kafka_produce_ack_seconds.clone(),
            queue_full: m.kafka_produce_queue_full.clone(),
        }
    }
}

/// One record to publish. A `payload` of `None` is a tombstone.
#[derive(Debug, Clone, Copy)]
pub struct OutgoingRecord<'a> {
    /// Destination topic.
    pub topic: &'a str,
    /// Record key; picks the partition, so records with one key stay in order.
    pub key: Option<&'a [u8]>,
    /// Record value; `None` publishes a tombstone.
    pub payload: Option<&'a [u8]>,
    /// Headers (provenance such as `backflow.origin_ts`).
    pub headers: &'a [(&'a str, &'a [u8])],
}

impl<'a> OutgoingRecord<'a> {
    /// A keyed record with a value and no headers.
    pub fn new(topic: &'a str, key: &'a [u8], payload: &'a [u8]) -> Self {
        Self {
            topic,
            key: Some(key),
            payload: Some(payload),
            headers: &[],
        }
    }
}

/// Where Kafka stored an acknowledged record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// Partition the record went to.
    pub partition: i32,
    /// Offset of the record in its partition.
    pub offset: i64,
}

/// What a batch's records have come to so far. Shared by the batch and the
/// ticket of each of its records.
struct AckState {
    /// Records enqueued and not yet settled, plus one until the batch is
    /// sealed (so it cannot look finished while records are still added).
    outstanding: AtomicUsize,
    /// Taken by a failing record before it counts itself settled, and by
    /// the waiting task while it decides: so a task that sees no failure
    /// and records outstanding leaves its waker for the report to wake.
    inner: Mutex<Waiting>,
    /// Where the last acknowledged record went (what [`Publisher::send`]
    /// reports for its one record).
    partition: AtomicI32,
    offset: AtomicI64,
}

#[derive(Default)]
struct Waiting {
    /// The first record that was not acknowledged.
    failed: Option<KafkaError>,
    /// The task waiting for the batch.
    waker: Option<Waker>,
}

impl AckState {
    fn new() -> Self {
        Self {
            outstanding: AtomicUsize::new(1),
            inner: Mutex::new(Waiting::default()),
            partition: AtomicI32::new(-1),
            offset: AtomicI64::new(-1),
        }
    }

    /// Locks the waiting state. A panic elsewhere while it was held cannot
    /// leave it inconsistent (each change is one assignment), so a poisoned
    /// lock is used as it is rather than stopping delivery reports.
    fn waiting(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One record settled (or the seal): wakes the waiting task when that
    /// was the last or the record failed.
    fn settle(&self, failure: Option<KafkaError>) {
        let failed = failure.is_some();
        if let Some(e) = failure {
            self.waiting().failed.get_or_insert(e);
        }
        if self.outstanding.fetch_sub(1, Ordering::AcqRel) == 1 || failed {
            let waker = self.waiting().waker.take();
            if let Some(w) = waker {
                w.wake();
            }
        }
    }
}

/// A record's claim on its batch, handed to librdkafka with the record and
/// back in its delivery report. Dropped without a report (the enqueue
/// failed or was abandoned), it settles its record as not delivered, so
/// the batch can never resolve to `Ok` without it. It also carries the
/// kind of the record's topic, for the report's counter (reading the topic
/// back from the report costs a lookup and a UTF-8 check per record).
struct Ticket(Option<Arc<AckState>>, TopicKind);

impl Ticket {
    fn new(state: &Arc<AckState>, topic: &str) -> Box<Self> {
        state.outstanding.fetch_add(1, Ordering::Relaxed);
        Box::new(Self(Some(state.clone()), TopicKind::of(topic)))
    }

    fn settle(mut self, failure: Option<KafkaError>) {
        if let Some(state) = self.0.take() {
            state.settle(failure);
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(state) = self.0.take() {
            state.settle(Some(KafkaError::NotEnqueued));
        }
    }
}

/// Records being handed to Kafka as one unit: [`Publisher::enqueue_in`]
/// adds to it, [`Batch::seal`] turns it into the [`Acks`] to wait for.
/// Waiting for a batch costs one wake-up, not one per record.
#[must_use = "a batch's records are only safe once its sealed acknowledgement resolved to Ok"]
pub struct Batch {
    state: Arc<AckState>,
    producer: Producer,
    records: usize,
}

impl Batch {
    /// Records enqueued in this batch.
    pub fn len(&self) -> usize {
        self.records
    }

    /// Whether nothing was enqueued in it.
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// No more records: the pending acknowledgement of those enqueued.
    pub fn seal(self) -> Acks {
        self.state.settle(None);
        Acks {
            state: self.state,
            _producer: self.producer,
        }
    }
}

/// The pending acknowledgement of a sealed batch: resolves to `Ok` once
/// Kafka acknowledged every record of it, or to the first record that was
/// not delivered.
#[must_use = "records are only safe once their acknowledgement resolved to Ok"]
pub struct Acks {
    state: Arc<AckState>,
    /// Keeps the producer, and so its delivery reports, alive while the
    /// acknowledgement is awaited.
    _producer: Producer,
}

impl Future for Acks {
    type Output = Result<(), KafkaError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut waiting = self.state.waiting();
        // Read with the lock held: a failing record records its failure
        // under this lock before it counts itself settled, so a count of
        // zero read here comes with any failure of the batch.
        let all_settled = self.state.outstanding.load(Ordering::Acquire) == 0;
        if let Some(e) = waiting.failed.take() {
            return Poll::Ready(Err(e));
        }
        if all_settled {
            return Poll::Ready(Ok(()));
        }
        // A report that settles the last record afterwards takes this
        // waker under the same lock.
        waiting.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// Receives librdkafka's delivery reports (from whichever thread polls the
/// producer: its polling thread, a flush) and settles each record's batch.
struct Reports {
    metrics: Option<Arc<ProduceMetrics>>,
}

impl ClientContext for Reports {}

impl ProducerContext for Reports {
    type DeliveryOpaque = Box<Ticket>;

    fn delivery(&self, result: &DeliveryResult<'_>, ticket: Box<Ticket>) {
        let failure = match result {
            Ok(message) => {
                if let Some(state) = &ticket.0 {
                    state
                        .partition
                        .store(message.partition(), Ordering::Relaxed);
                    state.offset.store(message.offset(), Ordering::Relaxed);
                }
                if let Some(m) = &self.metrics {
                    m.produced.of_kind(ticket.1).inc();
                    // librdkafka stamps a record that has no timestamp with
                    // its wall-clock time of enqueueing (a broker that sets
                    // log-append times replaces it: not a measure then).
                    if let Timestamp::CreateTime(created) = message.timestamp() {
                        let ms = (now_ms() - created).max(0);
                        m.ack_seconds.observe(ms as f64 / 1000.0);
                    }
                }
                None
            }
            Err((source, message)) => {
                if let Some(m) = &self.metrics {
                    m.errors.of(message.topic()).inc();
                }
                Some(KafkaError::Delivery {
                    topic: message.topic().to_owned(),
                    source: source.clone(),
                })
            }
        };
        ticket.settle(failure);
    }
}

/// Cheap to clone: clones share one client and its polling thread.
type Producer = ThreadedProducer<Reports>;

/// The node's Kafka producer. Cheap to clone; clones share one connection.
#[derive(Clone)]
pub struct Publisher {
    producer: Producer,
    metrics: Option<Arc<ProduceMetrics>>,
    /// The `transactional.id` of a transactional producer.
    transactional_id: Option<Arc<str>>,
}

/// Records a producer holds at most before enqueueing waits
/// (`queue.buffering.max.messages`).
const QUEUED_RECORDS: &str = "20000";

/// How long to wait before retrying an enqueue refused with a full queue.
/// Delivery reports free room continuously, so the wait is short.
const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(5);

impl Publisher {
    /// Creates an idempotent producer (`acks=all`).
    pub fn new(settings: &KafkaSettings, metrics: Option<Metrics>) -> Result<Self, KafkaError> {
        Self::create(settings, metrics, None)
    }

    /// Creates a transactional producer with `transactional.id` `id` and
    /// registers it with the brokers ([`Publisher::init_transactions`] is
    /// done): a process that used the same id before is fenced from then
    /// on, and its open transaction aborted. A transaction open longer than
    /// `lifetime` is aborted by the brokers (`transaction.timeout.ms`).
    /// Blocks up to `timeout`; call it off the async workers.
    pub fn transactional(
        settings: &KafkaSettings,
        metrics: Option<Metrics>,
        id: &str,
        lifetime: Duration,
        timeout: Duration,
    ) -> Result<Self, KafkaError> {
        let publisher = Self::create(settings, metrics, Some((id, lifetime)))?;
        publisher
            .producer
            .init_transactions(Timeout::After(timeout))
            .map_err(|source| publisher.transaction_error("init", source))?;
        Ok(publisher)
    }

    /// [`Publisher::transactional`] on a blocking thread (registering
    /// waits for the brokers): for async callers.
    pub async fn register(
        settings: &KafkaSettings,
        metrics: Option<Metrics>,
        id: &str,
        lifetime: Duration,
        timeout: Duration,
    ) -> Result<Self, KafkaError> {
        let (settings, id) = (settings.clone(), id.to_owned());
        tokio::task::spawn_blocking(move || {
            Self::transactional(&settings, metrics, &id, lifetime, timeout)
        })
        .await
        .expect("registering a transactional id does not panic")
    }

    fn create(
        settings: &KafkaSettings,
        metrics: Option<Metrics>,
        transactional: Option<(&str, Duration)>,
    ) -> Result<Self, KafkaError> {
        let metrics = metrics.as_ref().map(|m| Arc::new(ProduceMetrics::new(m)));
        let reports = Reports {
            metrics: metrics.clone(),
        };
        let producer: Producer = settings.create_with_context("producer", reports, |cfg| {
            cfg.set("enable.idempotence", "true")
                .set("acks", "all")
                .set("linger.ms", "5")
                // At most this many records wait in the client for the
                // broker (librdkafka's default, 100,000, let a node that
                // catches up hold about 70 MB there); enqueueing waits
                // for room beyond it.
                .set("queue.buffering.max.messages", QUEUED_RECORDS)
                // Retry transient broker errors for up to two minutes before a
                // delivery is reported as failed to the caller.
                .set("message.timeout.ms", "120000");
            if let Some((id, lifetime)) = transactional {
                // A transaction left open by a killed process is aborted by
                // the brokers after this (or at once when its successor
                // registers the same id); readers wait for it meanwhile.
                // A record not delivered by then fails the transaction
                // (librdkafka requires it within the transaction's time).
                let ms = lifetime.as_millis().to_string();
                cfg.set("transactional.id", id)
                    .set("transaction.timeout.ms", &ms)
                    .set("message.timeout.ms", &ms);
            }
        })?;
        Ok(Self {
            producer,
            metrics,
            transactional_id: transactional.map(|(id, _)| Arc::from(id)),
        })
    }

    /// Whether another process registered this producer's transactional
    /// id: the producer is fenced for good (librdkafka's fatal error),
    /// whatever error its records or transaction steps reported.
    pub fn is_fenced(&self) -> bool {
        matches!(
            self.producer.client().fatal_error(),
            Some((
                RDKafkaErrorCode::Fenced | RDKafkaErrorCode::ProducerFenced,
                _
            ))
        )
    }

    fn transaction_error(&self, step: &'static str, source: RdKafkaError) -> KafkaError {
        if let Some(id) = &self.transactional_id {
            tracing::debug!(transactional_id = %id, step, error = %source, "Kafka transaction step failed");
        }
        KafkaError::Transaction { step, source }
    }

    /// Opens a transaction: every record enqueued until its commit becomes
    /// visible to `read_committed` readers at once, or never.
    pub fn begin_transaction(&self) -> Result<(), KafkaError> {
        self.producer
            .begin_transaction()
            .map_err(|source| self.transaction_error("begin", source))
    }

    /// Commits the open transaction, after every record of it was
    /// delivered. Blocks up to `timeout`; call it off the async workers.
    /// On an error the transaction must be aborted (or the producer
    /// dropped, when it is fenced).
    pub fn commit_transaction(&self, timeout: Duration) -> Result<(), KafkaError> {
        // A commit that timed out goes on in the background: it is asked
        // again (librdkafka then waits for that one), never aborted.
        let mut tries = 0;
        loop {
            match self.producer.commit_transaction(Timeout::After(timeout)) {
                Ok(()) => return Ok(()),
                Err(RdKafkaError::Transaction(e)) if e.is_retriable() && tries < 3 => {
                    tries += 1;
                    tracing::warn!(error = %e, "committing a Kafka transaction did not finish in time; asking again");
                }
                Err(source) => return Err(self.transaction_error("commit", source)),
            }
        }
    }

    /// Adds a consumer group's offsets to the open transaction: they are
    /// committed with its records, or not at all (Kafka's
    /// `sendOffsetsToTransaction`). `offsets`: topic, partition, the next
    /// offset to read, and the commit metadata kept with it (empty: none).
    /// `group`: the consuming member's metadata, so the
    /// brokers refuse the offsets of a member the group has moved on from.
    /// Blocks up to `timeout`; call it off the async workers.
    pub fn send_offsets_to_transaction(
        &self,
        offsets: &[(String, i32, i64, String)],
        group: &rdkafka::consumer::ConsumerGroupMetadata,
        timeout: Duration,
    ) -> Result<(), KafkaError> {
        let mut list = rdkafka::TopicPartitionList::new();
        for (topic, partition, next, metadata) in offsets {
            list.add_partition_offset(topic, *partition, rdkafka::Offset::Offset(*next))
                .map_err(|source| self.transaction_error("offsets", source))?;
            if !metadata.is_empty() {
                if let Some(mut e) = list.find_partition(topic, *partition) {
                    e.set_metadata(metadata.clone());
                }
            }
        }
        // A coordinator that moved (its broker died) is looked up again by
        // librdkafka; an attempt that timed out meanwhile is asked again.
        let mut tries = 0;
        loop {
            match self
                .producer
                .send_offsets_to_transaction(&list, group, Timeout::After(timeout))
            {
                Ok(()) => return Ok(()),
                Err(RdKafkaError::Transaction(e)) if e.is_retriable() && tries < 3 => {
                    tries += 1;
                    tracing::warn!(error = %e, "adding offsets to a Kafka transaction did not finish in time; asking again");
                }
                Err(source) => return Err(self.transaction_error("offsets", source)),
            }
        }
    }

    /// Aborts the open transaction: none of its records is ever visible to
    /// `read_committed` readers. Blocks up to `timeout`.
    pub fn abort_transaction(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer
            .abort_transaction(Timeout::After(timeout))
            .map_err(|source| self.transaction_error("abort", source))
    }

    /// An empty batch to enqueue records in.
    pub fn batch(&self) -> Batch {
        Batch {
            state: Arc::new(AckState::new()),
            producer: self.producer.clone(),
            records: 0,
        }
    }

    /// Hands a record to the producer as part of `batch`.
    ///
    /// Waits while the local queue is full (back-pressure); never drops the
    /// record. Records enqueued in order with the same key are delivered in
    /// that order.
    pub async fn enqueue_in(
        &self,
        batch: &mut Batch,
        record: OutgoingRecord<'_>,
    ) -> Result<(), KafkaError> {
        let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
        for (name, value) in record.headers {
            headers = headers.insert(Header {
                key: name,
                value: Some(*value),
            });
        }
        // Counted before the send: its report may come before it returns.
        // Should this future be dropped while it waits for room, or the
        // send fail, the ticket is dropped with the record and fails the
        // batch.
        let ticket = Ticket::new(&batch.state, record.topic);
        let mut br: BaseRecord<'_, [u8], [u8], Box<Ticket>> =
            BaseRecord::with_opaque_to(record.topic, ticket).headers(headers);
        if let Some(key) = record.key {
            br = br.key(key);
        }
        if let Some(payload) = record.payload {
            br = br.payload(payload);
        }
        let mut waited = false;
        loop {
            match self.producer.send(br) {
                Ok(()) => {
                    batch.records += 1;
                    return Ok(());
                }
                Err((RdKafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    if !waited {
                        waited = true;
                        if let Some(m) = &self.metrics {
                            m.queue_full.inc();
                        }
                    }
                    br = back;
                    tokio::time::sleep(QUEUE_FULL_BACKOFF).await;
                }
                Err((source, _)) => {
                    if let Some(m) = &self.metrics {
                        m.errors.of(record.topic).inc();
                    }
                    return Err(KafkaError::Delivery {
                        topic: record.topic.to_owned(),
                        source,
                    });
                }
            }
        }
    }

    /// Hands one record to the producer and returns its pending
    /// acknowledgement (see [`Publisher::enqueue_in`]).
    pub async fn enqueue(&self, record: OutgoingRecord<'_>) -> Result<Acks, KafkaError> {
        let mut batch = self.batch();
        self.enqueue_in(&mut batch, record).await?;
        Ok(batch.seal())
    }

    /// Publishes one record and waits for Kafka's acknowledgement.
    pub async fn send(&self, record: OutgoingRecord<'_>) -> Result<Delivered, KafkaError> {
        let acks = self.enqueue(record).await?;
        let state = acks.state.clone();
        acks.await?;
        // Stored by the delivery report before it settled the batch, which
        // the wait above observed.
        Ok(Delivered {
            partition: state.partition.load(Ordering::Relaxed),
            offset: state.offset.load(Ordering::Relaxed),
        })
    }

    /// Records handed over but not yet acknowledged.
    pub fn in_flight(&self) -> i32 {
        self.producer.in_flight_count()
    }

    /// Waits until every enqueued record is acknowledged or `timeout` passes.
    pub async fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || producer.flush(Timeout::After(timeout)))
            .await
            .expect("flush task does not panic")
            .map_err(|source| KafkaError::Delivery {
                topic: "*".to_owned(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A producer whose broker does not exist, giving up after 300 ms.
    fn unreachable() -> Publisher {
        let mut settings = KafkaSettings::new("127.0.0.1:9");
        settings
            .properties
            .insert("message.timeout.ms".into(), "300".into());
        Publisher::new(&settings, Some(Metrics::new())).expect("producer")
    }

    #[tokio::test]
    async fn an_empty_batch_is_acknowledged_at_once() {
        let publisher = unreachable();
        let batch = publisher.batch();
        assert!(batch.is_empty());
        tokio::time::timeout(Duration::from_secs(1), batch.seal())
            .await
            .expect("nothing to wait for")
            .expect("nothing refused");
    }

    #[tokio::test]
    async fn a_record_that_never_reached_the_producer_fails_its_batch() {
        let publisher = unreachable();
        // Refused before librdkafka has it (a topic name C cannot hold):
        // even a caller that ignored the error cannot seal the batch Ok.
        let mut batch = publisher.batch();
        let refused = publisher
            .enqueue_in(&mut batch, OutgoingRecord::new("bad\0topic", b"k", b"v"))
            .await;
        assert!(refused.is_err());
        assert_not_enqueued(batch).await;

        // A record abandoned between being counted and being handed over
        // (its enqueue cancelled while waiting for room) does the same.
        let batch = publisher.batch();
        drop(Ticket::new(&batch.state, "t"));
        assert_not_enqueued(batch).await;
    }

    /// The sealed batch settles at once, failed for a record not enqueued.
    async fn assert_not_enqueued(batch: Batch) {
        let outcome = tokio::time::timeout(Duration::from_secs(1), batch.seal())
            .await
            .expect("settled at once");
        assert!(
            matches!(outcome, Err(KafkaError::NotEnqueued)),
            "{outcome:?}"
        );
    }

    #[tokio::test]
    async fn an_undelivered_record_fails_its_batch_with_its_topic() {
        let publisher = unreachable();
        let mut batch = publisher.batch();
        for topic in ["backflow.raw.a.b", "backflow.dlq.f"] {
            publisher
                .enqueue_in(&mut batch, OutgoingRecord::new(topic, b"k", b"v"))
                .await
                .expect("enqueued locally");
        }
        assert_eq!(batch.len(), 2);
        let err = tokio::time::timeout(Duration::from_secs(30), batch.seal())
            .await
            .expect("the timeout settles the batch")
            .expect_err("nothing was acknowledged");
        assert!(
            err.to_string().contains("backflow.raw.a.b")
                || err.to_string().contains("backflow.dlq.f"),
            "{err}"
        );
    }
}
