//! Prometheus metrics of a node process.
//!
//! Names follow `backflow_<part>_<what>_<unit>`; `_total` only on counters;
//! labels come from bounded sets (topic kinds, outcomes), never row values or
//! error text.

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// One counter per change-event op (c, u, d, r) of a family whose last
/// label is the op, the labels before it fixed: counting an event costs no
/// label lookup.
pub(crate) struct ByOp([IntCounter; 4]);

impl ByOp {
    /// The counters of `vec` with `labels` before the op.
    pub(crate) fn new(vec: &IntCounterVec, labels: &[&str]) -> Self {
        use backflow_schemas::Op;
        Self([Op::Create, Op::Update, Op::Delete, Op::Read].map(|op| {
            let mut all = labels.to_vec();
            all.push(op.code());
            vec.with_label_values(&all)
        }))
    }

    /// The counter of `op`.
    pub(crate) fn of(&self, op: backflow_schemas::Op) -> &IntCounter {
        use backflow_schemas::Op;
        &self.0[match op {
            Op::Create => 0,
            Op::Update => 1,
            Op::Delete => 2,
            Op::Read => 3,
        }]
    }
}

/// Every metric the node exposes, registered in one registry. Cheap to
/// clone (one shared allocation); fields are reached through `Deref`.
#[derive(Clone)]
pub struct Metrics(std::sync::Arc<MetricsInner>);

impl std::ops::Deref for Metrics {
    type Target = MetricsInner;
    fn deref(&self) -> &MetricsInner {
        &self.0
    }
}

/// The metrics themselves.
pub struct MetricsInner {
    registry: Registry,
    /// Records acknowledged by Kafka, by topic kind.
    pub kafka_produced: IntCounterVec,
    /// Records Kafka refused or that timed out, by topic kind.
    pub kafka_produce_errors: IntCounterVec,
    /// Times a send waited because the producer queue was full.
    pub kafka_produce_queue_full: IntCounter,
    /// Time from enqueue to broker acknowledgement.
    pub kafka_produce_ack_seconds: Histogram,
    /// Records handed to callers by consumers, by topic kind.
    pub kafka_consumed: IntCounterVec,
    /// Offsets stored for commit after the caller said the record was safe.
    pub kafka_offsets_stored: IntCounter,
    /// 1 while the last broker reachability check succeeded.
    pub kafka_broker_reachable: IntGauge,
    /// Constant 1 labelled with the version and librdkafka version.
    pub build_info: IntGaugeVec,
    /// Change events a feed published, by feed and op.
    pub source_events: IntCounterVec,
    /// Changes a feed sent to its dead-letter topic, by feed.
    pub source_rejected: IntCounterVec,
    /// Feed restarts after an error, by feed.
    pub source_restarts: IntCounterVec,
    /// Changes checked against their dataset's standard, by feed and dataset.
    pub quality_checked: IntCounterVec,
    /// Changes a standard refused, by feed and dataset.
    pub quality_refused: IntCounterVec,
    /// Rule violations, by feed, dataset, field and rule.
    pub quality_violations: IntCounterVec,
    /// Share of the last 5 minutes' changes that met the standard.
    pub quality_score: GaugeVec,
    /// Age of the oldest captured change not yet acknowledged by Kafka.
    pub source_lag_seconds: GaugeVec,
    /// backflow_source_lag_bytes{feed}
    pub source_lag_bytes: IntGaugeVec,
    /// Records a subscription applied, by subscription and outcome
    /// (`upsert`, `delete`, `skip`: no effect because superseded or older).
    pub subscribe_rows: IntCounterVec,
    /// Batches (database transactions) a subscription committed.
    pub subscribe_batches: IntCounterVec,
    /// Time to apply one batch, including the commit.
    pub subscribe_apply_seconds: HistogramVec,
    /// Records in the subscribed partitions not applied yet.
    pub subscribe_lag_messages: IntGaugeVec,
    /// Now minus the origin commit time of the last applied record; 0 when
    /// nothing is waiting.
    pub subscribe_lag_seconds: GaugeVec,
    /// Records a subscription sent to its dead-letter topic.
    pub subscribe_dead_letters: IntCounterVec,
    /// Subscription errors by kind (`transient`, `definite`, `bad_record`).
    pub subscribe_errors: IntCounterVec,
    /// Records the distributor produced to share topics, by subscriber node
    /// and op.
    pub distributor_records: IntCounterVec,
    /// Distributor restarts after an error.
    pub distributor_restarts: IntCounter,
    /// Raw-topic partitions this process's distributor holds in the node's
    /// distributor group.
    pub distributor_partitions: IntGauge,
    /// Shares the distributor stopped because it could not deliver to them
    /// (the others went on), by subscriber node and reason (`schema`,
    /// `record_too_large`, `policy`).
    pub distributor_share_failures: IntCounterVec,
    /// Share records a subscriber has not applied yet (node side, from the
    /// subscriber's reports).
    pub subscription_lag_messages: IntGaugeVec,
    /// Now minus the origin commit time of the last change a subscriber
    /// applied; 0 when caught up.
    pub subscription_lag_seconds: GaugeVec,
    /// 1 for a subscription's current status (OK, WARN, STALL, STOP, ERR).
    pub subscription_status: IntGaugeVec,
    /// 1 for a feed's current status.
    pub feed_status: IntGaugeVec,
    /// Kafka-style lag per subscriber group and partition.
    pub consumergroup_lag: IntGaugeVec,
    /// Kafka-style lag in seconds per subscriber group and partition.
    pub consumergroup_lag_seconds: GaugeVec,
}

impl Metrics {
    /// Creates and registers all metrics, plus process metrics on Linux.
    pub fn new() -> Self {
        let registry = Registry::new();
        let kinds = &["kind"];
        let m = MetricsInner {
            kafka_produced: IntCounterVec::new(
                Opts::new(
                    "backflow_kafka_produced_records_total",
                    "Records acknowledged by Kafka, by topic kind (raw, share, dlq, internal, other).",
                ),
                kinds,
            )
            .expect("valid metric"),
            kafka_produce_errors: IntCounterVec::new(
                Opts::new(
                    "backflow_kafka_produce_errors_total",
                    "Records Kafka refused or that were not acknowledged in time, by topic kind.",
                ),
                kinds,
            )
            .expect("valid metric"),
            kafka_produce_queue_full: IntCounter::new(
                "backflow_kafka_produce_queue_full_total",
                "Times a send waited because the producer queue was full (back-pressure).",
            )
            .expect("valid metric"),
            kafka_produce_ack_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "backflow_kafka_produce_ack_seconds",
                    "Time from enqueueing a record to Kafka's acknowledgement.",
                )
                .buckets(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ]),
            )
            .expect("valid metric"),
            kafka_consumed: IntCounterVec::new(
                Opts::new(
                    "backflow_kafka_consumed_records_total",
                    "Records received from Kafka and handed to the next stage, by topic kind.",
                ),
                kinds,
            )
            .expect("valid metric"),
            kafka_offsets_stored: IntCounter::new(
                "backflow_kafka_offsets_stored_total",
                "Consumer offsets stored for commit after the next stage took the record.",
            )
            .expect("valid metric"),
            kafka_broker_reachable: IntGauge::new(
                "backflow_kafka_broker_reachable",
                "1 when the last Kafka metadata request succeeded, else 0.",
            )
            .expect("valid metric"),
            build_info: IntGaugeVec::new(
                Opts::new(
                    "backflow_build_info",
                    "Constant 1, labelled with the backflow and librdkafka versions.",
                ),
                &["version", "librdkafka"],
            )
            .expect("valid metric"),
            source_events: IntCounterVec::new(
                Opts::new(
                    "backflow_source_events_total",
                    "Change events a feed published to its raw topics, by feed and op (c, u, d, r).",
                ),
                &["feed", "op"],
            )
            .expect("valid metric"),
            source_rejected: IntCounterVec::new(
                Opts::new(
                    "backflow_source_dead_letters_total",
                    "Changes a feed could not read or encode and sent to its dead-letter topic.",
                ),
                &["feed"],
            )
            .expect("valid metric"),
            quality_checked: IntCounterVec::new(
                Opts::new(
                    "backflow_quality_checked_total",
                    "Changes a feed checked against their dataset's standard, by feed and dataset.",
                ),
                &["feed", "dataset"],
            )
            .expect("valid metric"),
            quality_refused: IntCounterVec::new(
                Opts::new(
                    "backflow_quality_rejected_total",
                    "Changes the dataset's standard refused (sent to the feed's dead-letter topic), by feed and dataset.",
                ),
                &["feed", "dataset"],
            )
            .expect("valid metric"),
            quality_violations: IntCounterVec::new(
                Opts::new(
                    "backflow_quality_violations_total",
                    "Rule violations found in refused changes, by feed, dataset, standard field and rule.",
                ),
                &["feed", "dataset", "field", "rule"],
            )
            .expect("valid metric"),
            quality_score: GaugeVec::new(
                Opts::new(
                    "backflow_quality_score",
                    "Share (0-1) of the changes of the last 5 minutes that met the dataset's standard, by feed and dataset.",
                ),
                &["feed", "dataset"],
            )
            .expect("valid metric"),
            source_restarts: IntCounterVec::new(
                Opts::new(
                    "backflow_source_restarts_total",
                    "Times a feed was restarted after an error, by feed and kind of error: transient (retried, likely to pass) or definite (needs a fix: privileges, wal_level, a lost slot, an incompatible schema).",
                ),
                &["feed", "kind"],
            )
            .expect("valid metric"),
            source_lag_seconds: GaugeVec::new(
                Opts::new(
                    "backflow_source_lag_seconds",
                    "Now minus the source commit time of the oldest change a feed handed to Kafka and Kafka has not acknowledged yet; 0 when caught up.",
                ),
                &["feed"],
            )
            .expect("valid metric"),
            source_lag_bytes: IntGaugeVec::new(
                Opts::new(
                    "backflow_source_lag_bytes",
                    "Change history the source database keeps for a feed because the feed has not confirmed it yet (PostgreSQL: pg_current_wal_lsn() - confirmed_flush_lsn of its slot); -1 while unknown.",
                ),
                &["feed"],
            )
            .expect("valid metric"),
            subscribe_rows: IntCounterVec::new(
                Opts::new(
                    "backflow_subscribe_rows_total",
                    "Records a subscription applied to its database, by outcome: upsert, delete, or skip (superseded in its batch or older than the stored row).",
                ),
                &["subscription", "outcome"],
            )
            .expect("valid metric"),
            subscribe_batches: IntCounterVec::new(
                Opts::new(
                    "backflow_subscribe_batches_total",
                    "Batches a subscription committed to its database (one transaction each).",
                ),
                &["subscription"],
            )
            .expect("valid metric"),
            subscribe_apply_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "backflow_subscribe_apply_seconds",
                    "Time to apply and commit one batch to the subscription's database.",
                )
                .buckets(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ]),
                &["subscription"],
            )
            .expect("valid metric"),
            subscribe_lag_messages: IntGaugeVec::new(
                Opts::new(
                    "backflow_subscribe_lag_messages",
                    "Records in a subscription's partitions not applied yet (high watermark minus next offset).",
                ),
                &["subscription"],
            )
            .expect("valid metric"),
            subscribe_lag_seconds: GaugeVec::new(
                Opts::new(
                    "backflow_subscribe_lag_seconds",
                    "Now minus the origin commit time (backflow.origin_ts) of the last record applied; 0 when nothing is waiting.",
                ),
                &["subscription"],
            )
            .expect("valid metric"),
            subscribe_dead_letters: IntCounterVec::new(
                Opts::new(
                    "backflow_subscribe_dead_letters_total",
                    "Records a subscription could not decode or its database refused, sent to its dead-letter topic.",
                ),
                &["subscription"],
            )
            .expect("valid metric"),
            subscribe_errors: IntCounterVec::new(
                Opts::new(
                    "backflow_subscribe_errors_total",
                    "Subscription errors by kind: transient (retried), definite (needs a fix), bad_record (dead-lettered).",
                ),
                &["subscription", "kind"],
            )
            .expect("valid metric"),
            distributor_records: IntCounterVec::new(
                Opts::new(
                    "backflow_distributor_records_total",
                    "Change events the distributor produced to share topics, by subscriber node and op (a row leaving a jurisdiction is a d for it).",
                ),
                &["subscriber", "op"],
            )
            .expect("valid metric"),
            distributor_share_failures: IntCounterVec::new(
                Opts::new(
                    "backflow_distributor_share_failures_total",
                    "Shares the distributor stopped because it could not deliver to them (the others went on), by subscriber node and reason.",
                ),
                &["subscriber", "reason"],
            )
            .expect("valid metric"),
            subscription_lag_messages: IntGaugeVec::new(
                Opts::new(
                    "backflow_subscription_lag_messages",
                    "Share records a subscriber node has not applied yet, from its reports.",
                ),
                &["subscriber", "dataset"],
            )
            .expect("valid metric"),
            subscription_lag_seconds: GaugeVec::new(
                Opts::new(
                    "backflow_subscription_lag_seconds",
                    "Now minus the origin commit time of the last change the subscriber applied (end to end, across hops); 0 when caught up.",
                ),
                &["subscriber", "dataset"],
            )
            .expect("valid metric"),
            subscription_status: IntGaugeVec::new(
                Opts::new(
                    "backflow_subscription_status",
                    "1 for the subscription's status over the window (OK, WARN, STALL, STOP, ERR as Burrow defines them), 0 for the others.",
                ),
                &["subscriber", "dataset", "status"],
            )
            .expect("valid metric"),
            feed_status: IntGaugeVec::new(
                Opts::new(
                    "backflow_feed_status",
                    "1 for the feed's status over the window (OK, WARN, STALL, STOP, ERR), 0 for the others.",
                ),
                &["feed", "status"],
            )
            .expect("valid metric"),
            consumergroup_lag: IntGaugeVec::new(
                Opts::new(
                    "kafka_consumergroup_group_lag",
                    "Records not yet applied by a subscriber group, per share-topic partition.",
                ),
                &["group", "topic", "partition"],
            )
            .expect("valid metric"),
            consumergroup_lag_seconds: GaugeVec::new(
                Opts::new(
                    "kafka_consumergroup_group_lag_seconds",
                    "Seconds a subscriber group is behind the origin commit, per share-topic partition; 0 when caught up.",
                ),
                &["group", "topic", "partition"],
            )
            .expect("valid metric"),
            distributor_restarts: IntCounter::new(
                "backflow_distributor_restarts_total",
                "Times the distributor was restarted after an error.",
            )
            .expect("valid metric"),
            distributor_partitions: IntGauge::new(
                "backflow_distributor_partitions",
                "Raw-topic partitions this process distributes, as assigned by the node's distributor consumer group (the node's processes share them).",
            )
            .expect("valid metric"),
            registry,
        };
        let r = &m.registry;
        r.register(Box::new(m.kafka_produced.clone()))
            .expect("unique");
        r.register(Box::new(m.kafka_produce_errors.clone()))
            .expect("unique");
        r.register(Box::new(m.kafka_produce_queue_full.clone()))
            .expect("unique");
        r.register(Box::new(m.kafka_produce_ack_seconds.clone()))
            .expect("unique");
        r.register(Box::new(m.kafka_consumed.clone()))
            .expect("unique");
        r.register(Box::new(m.kafka_offsets_stored.clone()))
            .expect("unique");
        r.register(Box::new(m.kafka_broker_reachable.clone()))
            .expect("unique");
        r.register(Box::new(m.build_info.clone())).expect("unique");
        r.register(Box::new(m.source_events.clone()))
            .expect("unique");
        r.register(Box::new(m.source_rejected.clone()))
            .expect("unique");
        r.register(Box::new(m.source_restarts.clone()))
            .expect("unique");
        for c in [
            &m.quality_checked,
            &m.quality_refused,
            &m.quality_violations,
        ] {
            r.register(Box::new(c.clone())).expect("unique");
        }
        r.register(Box::new(m.quality_score.clone()))
            .expect("unique");
        r.register(Box::new(m.source_lag_seconds.clone()))
            .expect("unique");
        r.register(Box::new(m.source_lag_bytes.clone()))
            .expect("unique");
        for c in [
            &m.subscribe_rows,
            &m.subscribe_batches,
            &m.subscribe_dead_letters,
            &m.subscribe_errors,
            &m.distributor_records,
            &m.distributor_share_failures,
        ] {
            r.register(Box::new(c.clone())).expect("unique");
        }
        r.register(Box::new(m.subscribe_apply_seconds.clone()))
            .expect("unique");
        r.register(Box::new(m.distributor_restarts.clone()))
            .expect("unique");
        r.register(Box::new(m.distributor_partitions.clone()))
            .expect("unique");
        r.register(Box::new(m.subscribe_lag_messages.clone()))
            .expect("unique");
        r.register(Box::new(m.subscribe_lag_seconds.clone()))
            .expect("unique");
        for g in [
            &m.subscription_lag_messages,
            &m.subscription_status,
            &m.feed_status,
            &m.consumergroup_lag,
        ] {
            r.register(Box::new(g.clone())).expect("unique");
        }
        for g in [&m.subscription_lag_seconds, &m.consumergroup_lag_seconds] {
            r.register(Box::new(g.clone())).expect("unique");
        }
        #[cfg(target_os = "linux")]
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .expect("unique");
        // Series exist at zero from the start, so rates and alerts work before
        // the first record.
        for kind in crate::domain::topics::TopicKind::ALL {
            let k = [kind.label()];
            m.kafka_produced.with_label_values(&k);
            m.kafka_produce_errors.with_label_values(&k);
            m.kafka_consumed.with_label_values(&k);
        }
        m.build_info
            .with_label_values(&[crate::VERSION, &rdkafka::util::get_rdkafka_version().1])
            .set(1);
        Self(std::sync::Arc::new(m))
    }

    /// The registry, for components that register their own metrics.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// All metrics in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding of gathered metrics cannot fail");
        String::from_utf8(buf).expect("prometheus text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
