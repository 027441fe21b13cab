//! An idempotent Kafka producer that never drops a record.
//!
//! - `enable.idempotence=true` and `acks=all`: no duplicates from producer
//!   retries, no acknowledgement before the in-sync replicas have the record,
//!   and per-partition order kept (so per-key order, as the key picks the
//!   partition).
//! - Back-pressure: when librdkafka's local queue is full, [`Publisher::enqueue`]
//!   waits until there is room instead of failing or dropping.
//! - Every record resolves to [`Delivered`] or an error through its
//!   [`Delivery`]; a source confirms its position only after every delivery
//!   before it resolved to `Delivered`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError as RdKafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;

use super::{KafkaError, KafkaSettings};
use crate::metrics::Metrics;
use crate::topics::TopicKind;

/// The producer's metrics with their labels resolved once: a delivery
/// holds one `Arc` instead of a clone of every metric of the process.
struct ProduceMetrics {
    /// By [`TopicKind::ALL`] index.
    produced: Vec<prometheus::IntCounter>,
    errors: Vec<prometheus::IntCounter>,
    ack_seconds: prometheus::Histogram,
    queue_full: prometheus::IntCounter,
}

impl ProduceMetrics {
    fn new(m: &Metrics) -> Self {
        let each = |v: &prometheus::IntCounterVec| {
            TopicKind::ALL
                .iter()
                .map(|k| v.with_label_values(&[k.label()]))
                .collect()
        };
        Self {
            produced: each(&m.kafka_produced),
            errors: each(&m.kafka_produce_errors),
            ack_seconds: m.kafka_produce_ack_seconds.clone(),
            queue_full: m.kafka_produce_queue_full.clone(),
        }
    }
}

fn kind_index(kind: TopicKind) -> usize {
    TopicKind::ALL
        .iter()
        .position(|k| *k == kind)
        .expect("ALL lists every kind")
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

/// The pending acknowledgement of one enqueued record.
#[must_use = "a record is only safe once its delivery resolved to Delivered"]
pub struct Delivery {
    inner: DeliveryFuture,
    topic: String,
    kind: TopicKind,
    enqueued: Instant,
    metrics: Option<Arc<ProduceMetrics>>,
}

impl Future for Delivery {
    type Output = Result<Delivered, KafkaError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let outcome = match Pin::new(&mut self.inner).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(outcome) => outcome,
        };
        let result = match outcome {
            Ok(Ok(d)) => Ok(Delivered {
                partition: d.partition,
                offset: d.offset,
            }),
            Ok(Err((source, _))) => Err(KafkaError::Delivery {
                topic: self.topic.clone(),
                source,
            }),
            Err(_canceled) => Err(KafkaError::ProducerClosed {
                topic: self.topic.clone(),
            }),
        };
        if let Some(m) = &self.metrics {
            let kind = kind_index(self.kind);
            match &result {
                Ok(_) => {
                    m.produced[kind].inc();
                    m.ack_seconds.observe(self.enqueued.elapsed().as_secs_f64());
                }
                Err(_) => m.errors[kind].inc(),
            }
        }
        Poll::Ready(result)
    }
}

/// The node's Kafka producer. Cheap to clone; clones share one connection.
#[derive(Clone)]
pub struct Publisher {
    producer: FutureProducer,
    metrics: Option<Arc<ProduceMetrics>>,
}

/// How long to wait before retrying an enqueue refused with a full queue.
/// Delivery reports free room continuously, so the wait is short.
const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(5);

impl Publisher {
    /// Creates an idempotent producer (`acks=all`).
    pub fn new(settings: &KafkaSettings, metrics: Option<Metrics>) -> Result<Self, KafkaError> {
        let producer: FutureProducer = settings.create("producer", |cfg| {
            cfg.set("enable.idempotence", "true")
                .set("acks", "all")
                .set("linger.ms", "5")
                // Retry transient broker errors for up to two minutes before a
                // delivery is reported as failed to the caller.
                .set("message.timeout.ms", "120000");
        })?;
        Ok(Self {
            producer,
            metrics: metrics.as_ref().map(|m| Arc::new(ProduceMetrics::new(m))),
        })
    }

    /// Hands a record to the producer and returns its pending delivery.
    ///
    /// Waits while the local queue is full (back-pressure); never drops the
    /// record. Records enqueued in order with the same key are delivered in
    /// that order.
    pub async fn enqueue(&self, record: OutgoingRecord<'_>) -> Result<Delivery, KafkaError> {
        let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
        for (name, value) in record.headers {
            headers = headers.insert(Header {
                key: name,
                value: Some(*value),
            });
        }
        let mut fr: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(record.topic).headers(headers);
        if let Some(key) = record.key {
            fr = fr.key(key);
        }
        if let Some(payload) = record.payload {
            fr = fr.payload(payload);
        }
        let mut waited = false;
        loop {
            match self.producer.send_result(fr) {
                Ok(inner) => {
                    return Ok(Delivery {
                        inner,
                        topic: record.topic.to_owned(),
                        kind: TopicKind::of(record.topic),
                        enqueued: Instant::now(),
                        metrics: self.metrics.clone(),
                    })
                }
                Err((RdKafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    if !waited {
                        waited = true;
                        if let Some(m) = &self.metrics {
                            m.queue_full.inc();
                        }
                    }
                    fr = back;
                    tokio::time::sleep(QUEUE_FULL_BACKOFF).await;
                }
                Err((source, _)) => {
                    if let Some(m) = &self.metrics {
                        m.errors[kind_index(TopicKind::of(record.topic))].inc();
                    }
                    return Err(KafkaError::Delivery {
                        topic: record.topic.to_owned(),
                        source,
                    });
                }
            }
        }
    }

    /// Publishes one record and waits for Kafka's acknowledgement.
    pub async fn send(&self, record: OutgoingRecord<'_>) -> Result<Delivered, KafkaError> {
        self.enqueue(record).await?.await
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
