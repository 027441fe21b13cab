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
    /// Kafka transactions a feed committed (`kafka.transactions`), by feed.
    pub feed_transactions: IntCounterVec,
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
    /// Kafka transactions the distributor committed.
    pub distributor_transactions: IntCounter,
    /// Child nodes' Kafka ACLs created or deleted by the reconciler, by
    /// change (`granted`, `removed`).
    pub kafka_acl_changes: IntCounterVec,
    /// Reconciler rounds that failed (the cluster refused or did not answer).
    pub kafka_acl_errors: IntCounter,
    /// Catalog records not applied because the node did not sign them.
    pub catalog_rejected: IntCounter,
    /// Share topics of ended subscriptions deleted after their grace.
    pub share_topics_deleted: IntCounter,
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

/// A metric's name, help and labels.
struct Def {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
}

/// Creates metrics and registers each in the process's registry.
struct Registrar<'a>(&'a Registry);

impl Registrar<'_> {
    fn add<C: prometheus::core::Collector + Clone + 'static>(&self, c: prometheus::Result<C>) -> C {
        let c = c.expect("valid metric");
        self.0
            .register(Box::new(c.clone()))
            .expect("each metric is registered once");
        c
    }

    fn counter(&self, d: Def) -> IntCounter {
        self.add(IntCounter::new(d.name, d.help))
    }

    fn counters(&self, d: Def) -> IntCounterVec {
        self.add(IntCounterVec::new(Opts::new(d.name, d.help), d.labels))
    }

    fn gauge(&self, d: Def) -> IntGauge {
        self.add(IntGauge::new(d.name, d.help))
    }

    fn gauges(&self, d: Def) -> IntGaugeVec {
        self.add(IntGaugeVec::new(Opts::new(d.name, d.help), d.labels))
    }

    fn float_gauges(&self, d: Def) -> GaugeVec {
        self.add(GaugeVec::new(Opts::new(d.name, d.help), d.labels))
    }
}

// The metrics' names and help, as Prometheus shows them.

/// `backflow_kafka_produced_records_total`.
const KAFKA_PRODUCED: Def = Def {
    name: "backflow_kafka_produced_records_total",
    help: "Records acknowledged by Kafka, by topic kind (raw, share, dlq, internal, other).",
    labels: &["kind"],
};

/// `backflow_kafka_produce_errors_total`.
const KAFKA_PRODUCE_ERRORS: Def = Def {
    name: "backflow_kafka_produce_errors_total",
    help: "Records Kafka refused or that were not acknowledged in time, by topic kind.",
    labels: &["kind"],
};

/// `backflow_kafka_produce_queue_full_total`.
const KAFKA_PRODUCE_QUEUE_FULL: Def = Def {
    name: "backflow_kafka_produce_queue_full_total",
    help: "Times a send waited because the producer queue was full (back-pressure).",
    labels: &[],
};

/// `backflow_kafka_consumed_records_total`.
const KAFKA_CONSUMED: Def = Def {
    name: "backflow_kafka_consumed_records_total",
    help: "Records received from Kafka and handed to the next stage, by topic kind.",
    labels: &["kind"],
};

/// `backflow_kafka_offsets_stored_total`.
const KAFKA_OFFSETS_STORED: Def = Def {
    name: "backflow_kafka_offsets_stored_total",
    help: "Consumer offsets stored for commit after the next stage took the record.",
    labels: &[],
};

/// `backflow_kafka_broker_reachable`.
const KAFKA_BROKER_REACHABLE: Def = Def {
    name: "backflow_kafka_broker_reachable",
    help: "1 when the last Kafka metadata request succeeded, else 0.",
    labels: &[],
};

/// `backflow_build_info`.
const BUILD_INFO: Def = Def {
    name: "backflow_build_info",
    help: "Constant 1, labelled with the backflow and librdkafka versions.",
    labels: &["version", "librdkafka"],
};

/// `backflow_source_events_total`.
const SOURCE_EVENTS: Def = Def {
    name: "backflow_source_events_total",
    help: "Change events a feed published to its raw topics, by feed and op (c, u, d, r).",
    labels: &["feed", "op"],
};

/// `backflow_source_dead_letters_total`.
const SOURCE_REJECTED: Def = Def {
    name: "backflow_source_dead_letters_total",
    help: "Changes a feed could not read or encode and sent to its dead-letter topic.",
    labels: &["feed"],
};

/// `backflow_feed_transactions_total`.
const FEED_TRANSACTIONS: Def = Def {
    name: "backflow_feed_transactions_total",
    help: "Kafka transactions a feed committed: its changes and the source position they reach, visible together.",
    labels: &["feed"],
};

/// `backflow_quality_checked_total`.
const QUALITY_CHECKED: Def = Def {
    name: "backflow_quality_checked_total",
    help: "Changes a feed checked against their dataset's standard, by feed and dataset.",
    labels: &["feed", "dataset"],
};

/// `backflow_quality_rejected_total`.
const QUALITY_REFUSED: Def = Def {
    name: "backflow_quality_rejected_total",
    help: "Changes the dataset's standard refused (sent to the feed's dead-letter topic), by feed and dataset.",
    labels: &["feed", "dataset"],
};

/// `backflow_quality_violations_total`.
const QUALITY_VIOLATIONS: Def = Def {
    name: "backflow_quality_violations_total",
    help: "Rule violations found in refused changes, by feed, dataset, standard field and rule.",
    labels: &["feed", "dataset", "field", "rule"],
};

/// `backflow_quality_score`.
const QUALITY_SCORE: Def = Def {
    name: "backflow_quality_score",
    help: "Share (0-1) of the changes of the last 5 minutes that met the dataset's standard, by feed and dataset.",
    labels: &["feed", "dataset"],
};

/// `backflow_source_restarts_total`.
const SOURCE_RESTARTS: Def = Def {
    name: "backflow_source_restarts_total",
    help: "Times a feed was restarted after an error, by feed and kind of error: transient (retried, likely to pass) or definite (needs a fix: privileges, wal_level, a lost slot, an incompatible schema).",
    labels: &["feed", "kind"],
};

/// `backflow_source_lag_seconds`.
const SOURCE_LAG_SECONDS: Def = Def {
    name: "backflow_source_lag_seconds",
    help: "Now minus the source commit time of the oldest change a feed handed to Kafka and Kafka has not acknowledged yet; 0 when caught up.",
    labels: &["feed"],
};

/// `backflow_source_lag_bytes`.
const SOURCE_LAG_BYTES: Def = Def {
    name: "backflow_source_lag_bytes",
    help: "Change history the source database keeps for a feed because the feed has not confirmed it yet (PostgreSQL: pg_current_wal_lsn() - confirmed_flush_lsn of its slot); -1 while unknown.",
    labels: &["feed"],
};

/// `backflow_subscribe_rows_total`.
const SUBSCRIBE_ROWS: Def = Def {
    name: "backflow_subscribe_rows_total",
    help: "Records a subscription applied to its database, by outcome: upsert, delete, or skip (superseded in its batch or older than the stored row).",
    labels: &["subscription", "outcome"],
};

/// `backflow_subscribe_batches_total`.
const SUBSCRIBE_BATCHES: Def = Def {
    name: "backflow_subscribe_batches_total",
    help: "Batches a subscription committed to its database (one transaction each).",
    labels: &["subscription"],
};

/// `backflow_subscribe_lag_messages`.
const SUBSCRIBE_LAG_MESSAGES: Def = Def {
    name: "backflow_subscribe_lag_messages",
    help:
        "Records in a subscription's partitions not applied yet (high watermark minus next offset).",
    labels: &["subscription"],
};

/// `backflow_subscribe_lag_seconds`.
const SUBSCRIBE_LAG_SECONDS: Def = Def {
    name: "backflow_subscribe_lag_seconds",
    help: "Now minus the origin commit time (backflow.origin_ts) of the last record applied; 0 when nothing is waiting.",
    labels: &["subscription"],
};

/// `backflow_subscribe_dead_letters_total`.
const SUBSCRIBE_DEAD_LETTERS: Def = Def {
    name: "backflow_subscribe_dead_letters_total",
    help: "Records a subscription could not decode or its database refused, sent to its dead-letter topic.",
    labels: &["subscription"],
};

/// `backflow_subscribe_errors_total`.
const SUBSCRIBE_ERRORS: Def = Def {
    name: "backflow_subscribe_errors_total",
    help: "Subscription errors by kind: transient (retried), definite (needs a fix), bad_record (dead-lettered).",
    labels: &["subscription", "kind"],
};

/// `backflow_distributor_records_total`.
const DISTRIBUTOR_RECORDS: Def = Def {
    name: "backflow_distributor_records_total",
    help: "Change events the distributor produced to share topics, by subscriber node and op (a row leaving a jurisdiction is a d for it).",
    labels: &["subscriber", "op"],
};

/// `backflow_distributor_share_failures_total`.
const DISTRIBUTOR_SHARE_FAILURES: Def = Def {
    name: "backflow_distributor_share_failures_total",
    help: "Shares the distributor stopped because it could not deliver to them (the others went on), by subscriber node and reason.",
    labels: &["subscriber", "reason"],
};

/// `backflow_subscription_lag_messages`.
const SUBSCRIPTION_LAG_MESSAGES: Def = Def {
    name: "backflow_subscription_lag_messages",
    help: "Share records a subscriber node has not applied yet, from its reports.",
    labels: &["subscriber", "dataset"],
};

/// `backflow_subscription_lag_seconds`.
const SUBSCRIPTION_LAG_SECONDS: Def = Def {
    name: "backflow_subscription_lag_seconds",
    help: "Now minus the origin commit time of the last change the subscriber applied (end to end, across hops); 0 when caught up.",
    labels: &["subscriber", "dataset"],
};

/// `backflow_subscription_status`.
const SUBSCRIPTION_STATUS: Def = Def {
    name: "backflow_subscription_status",
    help: "1 for the subscription's status over the window (OK, WARN, STALL, STOP, ERR as Burrow defines them), 0 for the others.",
    labels: &["subscriber", "dataset", "status"],
};

/// `backflow_feed_status`.
const FEED_STATUS: Def = Def {
    name: "backflow_feed_status",
    help: "1 for the feed's status over the window (OK, WARN, STALL, STOP, ERR), 0 for the others.",
    labels: &["feed", "status"],
};

/// `kafka_consumergroup_group_lag`.
const CONSUMERGROUP_LAG: Def = Def {
    name: "kafka_consumergroup_group_lag",
    help: "Records not yet applied by a subscriber group, per share-topic partition.",
    labels: &["group", "topic", "partition"],
};

/// `kafka_consumergroup_group_lag_seconds`.
const CONSUMERGROUP_LAG_SECONDS: Def = Def {
    name: "kafka_consumergroup_group_lag_seconds",
    help: "Seconds a subscriber group is behind the origin commit, per share-topic partition; 0 when caught up.",
    labels: &["group", "topic", "partition"],
};

/// `backflow_kafka_acl_changes_total`.
const KAFKA_ACL_CHANGES: Def = Def {
    name: "backflow_kafka_acl_changes_total",
    help: "Child nodes' Kafka ACLs the node created or deleted to keep them equal to the grants, by change.",
    labels: &["change"],
};

/// `backflow_kafka_acl_errors_total`.
const KAFKA_ACL_ERRORS: Def = Def {
    name: "backflow_kafka_acl_errors_total",
    help: "Rounds of the Kafka ACL reconciler that failed (retried a second later).",
    labels: &[],
};

/// `backflow_share_topics_deleted_total`.
const SHARE_TOPICS_DELETED: Def = Def {
    name: "backflow_share_topics_deleted_total",
    help: "Share topics of ended subscriptions (revoked, expired, rejected, dataset no longer shared) deleted after the dataset's grace period, and dead-letter topics of child nodes left with no share.",
    labels: &[],
};

/// `backflow_catalog_rejected_total`.
const CATALOG_REJECTED: Def = Def {
    name: "backflow_catalog_rejected_total",
    help: "Records of the catalog topic not applied because this node did not sign them (written by another client, or changed).",
    labels: &[],
};

/// `backflow_distributor_transactions_total`.
const DISTRIBUTOR_TRANSACTIONS: Def = Def {
    name: "backflow_distributor_transactions_total",
    help: "Kafka transactions the distributor committed: share records, their delivery records in the audit trail and the raw offsets after them, visible together.",
    labels: &[],
};

/// `backflow_distributor_restarts_total`.
const DISTRIBUTOR_RESTARTS: Def = Def {
    name: "backflow_distributor_restarts_total",
    help: "Times the distributor was restarted after an error.",
    labels: &[],
};

/// `backflow_distributor_partitions`.
const DISTRIBUTOR_PARTITIONS: Def = Def {
    name: "backflow_distributor_partitions",
    help: "Raw-topic partitions this process distributes, as assigned by the node's distributor consumer group (the node's processes share them).",
    labels: &[],
};

impl Metrics {
    /// Creates and registers all metrics, plus process metrics on Linux.
    pub fn new() -> Self {
        let registry = Registry::new();
        let r = Registrar(&registry);
        let m = MetricsInner {
            kafka_produced: r.counters(KAFKA_PRODUCED),
            kafka_produce_errors: r.counters(KAFKA_PRODUCE_ERRORS),
            kafka_produce_queue_full: r.counter(KAFKA_PRODUCE_QUEUE_FULL),
            kafka_produce_ack_seconds: r.add(Histogram::with_opts(
                HistogramOpts::new(
                    "backflow_kafka_produce_ack_seconds",
                    "Time from enqueueing a record to Kafka's acknowledgement.",
                )
                .buckets(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ]),
            )),
            kafka_consumed: r.counters(KAFKA_CONSUMED),
            kafka_offsets_stored: r.counter(KAFKA_OFFSETS_STORED),
            kafka_broker_reachable: r.gauge(KAFKA_BROKER_REACHABLE),
            build_info: r.gauges(BUILD_INFO),
            source_events: r.counters(SOURCE_EVENTS),
            source_rejected: r.counters(SOURCE_REJECTED),
            quality_checked: r.counters(QUALITY_CHECKED),
            quality_refused: r.counters(QUALITY_REFUSED),
            quality_violations: r.counters(QUALITY_VIOLATIONS),
            quality_score: r.float_gauges(QUALITY_SCORE),
            source_restarts: r.counters(SOURCE_RESTARTS),
            feed_transactions: r.counters(FEED_TRANSACTIONS),
            source_lag_seconds: r.float_gauges(SOURCE_LAG_SECONDS),
            source_lag_bytes: r.gauges(SOURCE_LAG_BYTES),
            subscribe_rows: r.counters(SUBSCRIBE_ROWS),
            subscribe_batches: r.counters(SUBSCRIBE_BATCHES),
            subscribe_apply_seconds: r.add(HistogramVec::new(
                HistogramOpts::new(
                    "backflow_subscribe_apply_seconds",
                    "Time to apply and commit one batch to the subscription's database.",
                )
                .buckets(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ]),
                &["subscription"],
            )),
            subscribe_lag_messages: r.gauges(SUBSCRIBE_LAG_MESSAGES),
            subscribe_lag_seconds: r.float_gauges(SUBSCRIBE_LAG_SECONDS),
            subscribe_dead_letters: r.counters(SUBSCRIBE_DEAD_LETTERS),
            subscribe_errors: r.counters(SUBSCRIBE_ERRORS),
            distributor_records: r.counters(DISTRIBUTOR_RECORDS),
            distributor_share_failures: r.counters(DISTRIBUTOR_SHARE_FAILURES),
            subscription_lag_messages: r.gauges(SUBSCRIPTION_LAG_MESSAGES),
            subscription_lag_seconds: r.float_gauges(SUBSCRIPTION_LAG_SECONDS),
            subscription_status: r.gauges(SUBSCRIPTION_STATUS),
            feed_status: r.gauges(FEED_STATUS),
            consumergroup_lag: r.gauges(CONSUMERGROUP_LAG),
            consumergroup_lag_seconds: r.float_gauges(CONSUMERGROUP_LAG_SECONDS),
            distributor_restarts: r.counter(DISTRIBUTOR_RESTARTS),
            distributor_transactions: r.counter(DISTRIBUTOR_TRANSACTIONS),
            kafka_acl_changes: r.counters(KAFKA_ACL_CHANGES),
            kafka_acl_errors: r.counter(KAFKA_ACL_ERRORS),
            catalog_rejected: r.counter(CATALOG_REJECTED),
            share_topics_deleted: r.counter(SHARE_TOPICS_DELETED),
            distributor_partitions: r.gauge(DISTRIBUTOR_PARTITIONS),
            registry,
        };
        #[cfg(target_os = "linux")]
        m.registry
            .register(Box::new(
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
