//! Kafka I/O on rdkafka: an idempotent publisher with back-pressure, a
//! consumer whose offsets are stored only when the caller says a record is
//! safe, topic administration, and the embedded in-memory broker.

pub mod acl;
mod admin;
mod consumer;
mod embedded;
pub mod follow;
pub mod lease;
mod publisher;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::config::ClientConfig;

pub use admin::{TopicAdmin, TopicSpec};
pub use consumer::{
    group_commit, group_committed, ConsumedRecord, Consumer, GroupOffsets, RevokeHook,
};
pub use embedded::{EmbeddedAdmin, EmbeddedBroker};
pub use publisher::{Acks, Batch, Delivered, OutgoingRecord, Publisher};

use crate::domain::topics::TopicKind;

/// One counter per topic kind, its label resolved once: counting a record
/// costs no label lookup.
pub(crate) struct ByKind(Vec<prometheus::IntCounter>);

impl ByKind {
    /// The counters of `vec`, a family labelled by topic kind.
    pub(crate) fn new(vec: &prometheus::IntCounterVec) -> Self {
        Self(
            TopicKind::ALL
                .iter()
                .map(|k| vec.with_label_values(&[k.label()]))
                .collect(),
        )
    }

    /// The counter of `topic`'s kind.
    pub(crate) fn of(&self, topic: &str) -> &prometheus::IntCounter {
        self.of_kind(TopicKind::of(topic))
    }

    /// The counter of a topic kind.
    pub(crate) fn of_kind(&self, kind: TopicKind) -> &prometheus::IntCounter {
        let i = TopicKind::ALL
            .iter()
            .position(|k| *k == kind)
            .expect("ALL lists every kind");
        &self.0[i]
    }
}

/// An error talking to Kafka.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    /// A client could not be created (bad property, unreachable bootstrap
    /// list syntax).
    #[error("cannot create Kafka {client} client: {source}")]
    Client {
        client: &'static str,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// The broker refused or did not acknowledge a record.
    #[error("Kafka did not acknowledge the record for topic {topic}: {source}")]
    Delivery {
        topic: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// A record of a batch never reached the producer: its enqueue failed
    /// or was abandoned (the batch is not acknowledged).
    #[error("a record of the batch was not handed to Kafka (its enqueue failed or was abandoned)")]
    NotEnqueued,
    /// Receiving from a consumer failed.
    #[error("consuming from Kafka failed: {0}")]
    Consume(#[source] rdkafka::error::KafkaError),
    /// Storing or committing offsets failed.
    #[error("storing the consumed offset of {topic}[{partition}]@{offset} failed: {source}")]
    StoreOffset {
        topic: String,
        partition: i32,
        offset: i64,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// Committing stored offsets failed.
    #[error("committing consumer offsets failed: {0}")]
    Commit(#[source] rdkafka::error::KafkaError),
    /// Creating or describing topics failed.
    #[error("topic administration failed for {topic}: {reason}")]
    Admin { topic: String, reason: String },
    /// The brokers did not answer a metadata request in time.
    #[error("Kafka brokers at {bootstrap} did not answer: {source}")]
    Unreachable {
        bootstrap: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// The embedded broker could not be started.
    #[error("cannot start the embedded Kafka broker: {0}")]
    Embedded(String),
    /// Another process registered the transactional id this one wrote
    /// under: this one is fenced and writes nothing more under it.
    #[error("another process took over Kafka transactional id {id}: this one is fenced and writes nothing more under it (each process serving a node needs a `kafka.replica` name of its own)")]
    Fenced { id: String },
    /// A step of a Kafka transaction failed; nothing of the transaction
    /// is visible to `read_committed` readers.
    #[error("Kafka transaction: {step} failed: {source}")]
    Transaction {
        /// `init`, `begin`, `commit` or `abort`.
        step: &'static str,
        #[source]
        source: rdkafka::error::KafkaError,
    },
}

impl KafkaError {
    /// Whether another process with the same transactional id took over
    /// (this one is fenced: a zombie whose writes the brokers refuse).
    pub fn is_fenced(&self) -> bool {
        let source = match self {
            KafkaError::Transaction { source, .. } | KafkaError::Delivery { source, .. } => source,
            KafkaError::Fenced { .. } => return true,
            _ => return false,
        };
        // Not InvalidProducerEpoch: the brokers also answer it when they
        // aborted this producer's transaction for running too long.
        matches!(
            source.rdkafka_error_code(),
            Some(rdkafka::types::RDKafkaErrorCode::Fenced)
                | Some(rdkafka::types::RDKafkaErrorCode::ProducerFenced)
        )
    }
}

impl crate::domain::restart::Kind for KafkaError {
    /// A client Kafka cannot create (a bad property) or an embedded broker
    /// that cannot start is definite; everything else passes with the
    /// broker's return.
    fn kind(&self) -> crate::domain::restart::ErrorKind {
        match self {
            KafkaError::Client { .. } | KafkaError::Embedded(_) => {
                crate::domain::restart::ErrorKind::Definite
            }
            // Another process took the work over: running again here would
            // take it back and fence that one in turn.
            e if e.is_fenced() => crate::domain::restart::ErrorKind::Definite,
            _ => crate::domain::restart::ErrorKind::Transient,
        }
    }
}

/// Default of [`KafkaSettings::fetch_wait_ms`]: the data path's consumers
/// (distributor, subscribers). Apache Kafka answers a fetch as soon as a
/// record is there (`fetch.min.bytes` 1), so this adds no latency: it only
/// sets how often an idle consumer asks, ten times a second.
pub const DEFAULT_FETCH_WAIT_MS: u32 = 100;

/// Kafka connection settings. Its `Debug` shows the names of the extra
/// properties, never their values (they hold credentials).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma separated. Absent: an embedded in-memory
    /// broker is started (for trying backflow, never for production).
    pub brokers: Option<String>,
    /// Client id reported to the brokers.
    pub client_id: String,
    /// The prefix of every topic, consumer group and internal topic the
    /// node names (default `backflow.`), so several nodes can share one
    /// cluster, each in its own namespace: `<prefix>raw.<dataset>`,
    /// `<prefix>share.<subscriber>.<dataset>`, `<prefix>_catalog`, the group
    /// `<prefix>distributor.<node>`. Ends with `.`; a PREFIXED ACL on
    /// `<prefix>share.<subscriber>.` grants one subscriber exactly its
    /// topics and groups.
    pub topic_prefix: String,
    /// Partitions of topics backflow creates (default 1). The processes
    /// serving one node share its raw topics' partitions as members of the
    /// distributor's consumer group, so a node meant to run on several
    /// processes wants at least as many partitions as processes. Applies to
    /// topics created from then on.
    pub partitions: i32,
    /// Replication factor of topics backflow creates. With 3 or more, the
    /// topics are created with `min.insync.replicas` a majority (3 → 2), so
    /// an acknowledged change (the producers use `acks=all`) survives the
    /// loss of any minority of brokers.
    pub replication_factor: i32,
    /// Timeout of admin and metadata requests, in milliseconds.
    pub request_timeout_ms: u64,
    /// How long the broker may hold a fetch of the distributor's consumer
    /// that finds no record, in milliseconds (librdkafka
    /// `fetch.wait.max.ms`; default 100). Apache Kafka answers as soon as
    /// a record arrives, so this adds no latency: it sets how often an idle
    /// consumer asks.
    pub fetch_wait_ms: u32,
    /// How long a distributor process may go without a heartbeat before
    /// Kafka gives its raw partitions to the node's other processes, in
    /// milliseconds (librdkafka `session.timeout.ms`; default 10000, within
    /// the broker's `group.min.session.timeout.ms` of 6000 and
    /// `group.max.session.timeout.ms`).
    pub session_timeout_ms: u64,
    /// The largest record the brokers accept, in bytes (their
    /// `message.max.bytes`; default 1000000). A share record over it fails
    /// its subscription alone, with the reason, instead of stopping the
    /// distributor.
    pub max_message_bytes: usize,
    /// Whether each feed writes its change records, dead letters and the
    /// source position they reach (`<prefix>_offsets`) in one Kafka
    /// transaction, its source acknowledged only after the commit (default
    /// on): a feed killed at any point leaves each change in its raw topic
    /// exactly once for `read_committed` readers. Off: an idempotent
    /// producer, and a crash may write the last changes again.
    pub transactions: bool,
    /// How long a feed's transaction stays open, in milliseconds (default
    /// 25): its changes become visible together when it commits. A longer
    /// one commits less often (more changes per second) and shows changes
    /// later.
    pub transaction_interval_ms: u64,
    /// Whether the distributor writes in Kafka transactions too (default
    /// on, see the README's delivery guarantees): the share records of
    /// the raw records read since the last commit, their audit records and
    /// the raw offsets commit together, so a share topic holds each change
    /// once for `read_committed` readers. Needs `transactions`. Off: share
    /// records are committed after their acknowledgement, and a killed
    /// distributor writes its last batches again.
    pub distributor_transactions: bool,
    /// This process's name among the processes serving the node, in the
    /// distributor's transactional id: distinct per process and stable
    /// across its restarts (a Kubernetes pod name, a host name), so a
    /// restarted process fences its earlier self at once. Letters, digits,
    /// `.`, `_`, `-`; default: the host name.
    pub replica: Option<String>,
    /// Extra librdkafka properties passed to every client (e.g.
    /// `"security.protocol" = "SASL_SSL"`). Values are never logged.
    pub properties: BTreeMap<String, String>,
    /// librdkafka properties whose values come from environment variables
    /// (property → variable), for credentials such as
    /// `"sasl.password" = "KAFKA_PASSWORD"`.
    pub properties_env: BTreeMap<String, String>,
    /// Whether the node manages its child nodes' principals and ACLs on
    /// this cluster (see [`crate::acls`]): it needs a cluster with an
    /// authorizer, on which the node's principal may manage ACLs and
    /// SCRAM credentials. Default off.
    pub manage_acls: bool,
    /// The node's own principal as the brokers name it, which no child
    /// node may be given: needed with `manage_acls` over mutual TLS (e.g.
    /// `User:CN=backflow-330100,O=gov`, as the brokers' principal builder
    /// names the node's certificate); with SASL it is
    /// `User:<sasl.username>` unless set.
    pub principal: Option<String>,
}

impl KafkaConfig {
    /// `replica`, or the host name when it is not set.
    pub fn replica_name(&self) -> String {
        if let Some(r) = &self.replica {
            return r.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_default();
        let host: String = host
            .trim()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            .take(64)
            .collect();
        if host.is_empty() {
            "0".to_owned()
        } else {
            host
        }
    }

    /// The node's own principal on the cluster: `principal`, else
    /// `User:<sasl.username>` when it logs in by SASL.
    pub fn own_principal(&self) -> Option<String> {
        self.principal.clone().or_else(|| {
            self.properties
                .get("sasl.username")
                .map(|u| format!("User:{u}"))
        })
    }

    /// Whether the node logs in with a client certificate (mutual TLS, no
    /// SASL), so its principal comes from the certificate.
    pub fn uses_client_certificate(&self) -> bool {
        self.properties
            .get("security.protocol")
            .is_some_and(|p| p.eq_ignore_ascii_case("SSL"))
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: None,
            client_id: "backflow".to_owned(),
            topic_prefix: crate::domain::topics::DEFAULT_PREFIX.to_owned(),
            partitions: 1,
            replication_factor: 1,
            request_timeout_ms: 10_000,
            fetch_wait_ms: DEFAULT_FETCH_WAIT_MS,
            session_timeout_ms: 10_000,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            transactions: true,
            transaction_interval_ms: 25,
            distributor_transactions: true,
            replica: None,
            properties: BTreeMap::new(),
            properties_env: BTreeMap::new(),
            manage_acls: false,
            principal: None,
        }
    }
}

/// Connection settings shared by every client of one node. Its `Debug`
/// shows the names of the extra properties, never their values.
#[derive(Clone)]
pub struct KafkaSettings {
    /// Bootstrap servers, comma separated.
    pub bootstrap: String,
    /// Client id reported to the brokers.
    pub client_id: String,
    /// Timeout of admin and metadata requests.
    pub request_timeout: Duration,
    /// Extra librdkafka properties (security settings and the like).
    pub properties: BTreeMap<String, String>,
    /// `fetch.wait.max.ms` of the data path's consumers (distributor,
    /// subscriptions): how long the broker may hold a fetch that finds no
    /// record.
    pub fetch_wait_ms: u32,
    /// `session.timeout.ms` of group members (the distributor): how soon a
    /// killed process's partitions go to the others.
    pub session_timeout: Duration,
    /// The largest record the brokers accept (their `message.max.bytes`):
    /// the distributor checks each share record against it, so one that
    /// cannot be delivered fails its subscription alone.
    pub max_message_bytes: usize,
}

/// The names of librdkafka properties, their values withheld: how
/// configurations holding them show in `Debug`.
pub struct PropertyNames<'a>(pub &'a BTreeMap<String, String>);

impl std::fmt::Debug for PropertyNames<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("client_id", &self.client_id)
            .field("topic_prefix", &self.topic_prefix)
            .field("partitions", &self.partitions)
            .field("replication_factor", &self.replication_factor)
            .field("properties", &PropertyNames(&self.properties))
            .field("properties_env", &self.properties_env)
            .field("manage_acls", &self.manage_acls)
            .field("principal", &self.principal)
            .field("transactions", &self.transactions)
            .field("distributor_transactions", &self.distributor_transactions)
            .field("replica", &self.replica)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for KafkaSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSettings")
            .field("bootstrap", &self.bootstrap)
            .field("client_id", &self.client_id)
            .field("properties", &PropertyNames(&self.properties))
            .finish_non_exhaustive()
    }
}

/// How long a feed's transaction may stay open before the brokers abort
/// it (`transaction.timeout.ms`). A feed has one owner, which on restart
/// registers the same id and ends what it left open at once.
pub const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(120);

/// The same for a distributor's transaction. A process serving a node may
/// die and not come back (its replica removed), and until the brokers
/// abort what it left open, `read_committed` readers of the share topics
/// it wrote wait: so it is short (Kafka Streams uses 10 s for the same
/// reason), yet long enough for a commit during a broker failover.
pub const DISTRIBUTOR_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(20);

/// How long one step of a feed's or a cascade's transaction (registering
/// its id, committing, aborting) may wait for the brokers: half the
/// transaction's lifetime, so a commit slowed by a broker failover still
/// lands before the brokers give up on the transaction.
pub const TRANSACTION_STEP: Duration = Duration::from_secs(60);

/// The same for a distributor's transaction. Each step is asked again when
/// it timed out (librdkafka resumes it), so it stays well within the
/// transaction's lifetime.
pub const DISTRIBUTOR_TRANSACTION_STEP: Duration = Duration::from_secs(10);

/// How long a reader waits for transactions open when it began to end
/// ([`Watermarks::settled_high`]): longer than any may stay open.
pub const SETTLE_WITHIN: Duration = Duration::from_secs(130);

/// librdkafka's and Apache Kafka's default largest record.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1_000_000;

impl KafkaSettings {
    /// Settings for a bootstrap list with defaults for everything else.
    pub fn new(bootstrap: impl Into<String>) -> Self {
        Self {
            bootstrap: bootstrap.into(),
            client_id: "backflow".to_owned(),
            request_timeout: Duration::from_secs(10),
            properties: BTreeMap::new(),
            fetch_wait_ms: DEFAULT_FETCH_WAIT_MS,
            session_timeout: Duration::from_secs(10),
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
        }
    }

    /// Settings from the node configuration and the resolved bootstrap list
    /// (the configured brokers or the embedded broker's address).
    pub fn from_config(config: &KafkaConfig, bootstrap: &str) -> Self {
        Self {
            bootstrap: bootstrap.to_owned(),
            client_id: config.client_id.clone(),
            request_timeout: Duration::from_millis(config.request_timeout_ms),
            properties: config.properties.clone(),
            fetch_wait_ms: config.fetch_wait_ms,
            session_timeout: Duration::from_millis(config.session_timeout_ms),
            max_message_bytes: config.max_message_bytes,
        }
    }

    /// Creates a librdkafka client of kind `client` (named in errors): the
    /// common settings, then the client's own (`tune`), then the user's
    /// properties, which win.
    pub(crate) fn create<C: rdkafka::config::FromClientConfig>(
        &self,
        client: &'static str,
        tune: impl FnOnce(&mut ClientConfig),
    ) -> Result<C, KafkaError> {
        self.config(tune)
            .create()
            .map_err(|source| KafkaError::Client { client, source })
    }

    /// Like [`KafkaSettings::create`], for a client with a context of its
    /// own (callbacks such as delivery reports).
    pub(crate) fn create_with_context<X, C>(
        &self,
        client: &'static str,
        context: X,
        tune: impl FnOnce(&mut ClientConfig),
    ) -> Result<C, KafkaError>
    where
        X: rdkafka::ClientContext,
        C: rdkafka::config::FromClientConfigAndContext<X>,
    {
        self.config(tune)
            .create_with_context(context)
            .map_err(|source| KafkaError::Client { client, source })
    }

    fn config(&self, tune: impl FnOnce(&mut ClientConfig)) -> ClientConfig {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", &self.bootstrap)
            .set("client.id", &self.client_id)
            // Keep librdkafka's own errors visible but not noisy.
            .set("log_level", "4");
        tune(&mut cfg);
        for (k, v) in &self.properties {
            cfg.set(k, v);
        }
        cfg
    }
}

/// The version of the linked librdkafka, e.g. `2.12.1`.
pub fn librdkafka_version() -> String {
    rdkafka::util::get_rdkafka_version().1
}

/// Asks partitions for their high watermark (the offset the next record
/// gets). As a `read_committed` client asks, the answer is the last stable
/// offset: it stops before the first transaction still open. Cheap to
/// clone.
#[derive(Clone)]
pub struct Watermarks {
    client: std::sync::Arc<rdkafka::consumer::BaseConsumer>,
    timeout: Duration,
}

impl Watermarks {
    /// Connects a metadata client.
    pub fn new(settings: &KafkaSettings) -> Result<Self, KafkaError> {
        Self::with_isolation(settings, "read_committed")
    }

    fn with_isolation(settings: &KafkaSettings, isolation: &str) -> Result<Self, KafkaError> {
        let client: rdkafka::consumer::BaseConsumer = settings.create("metadata", |c| {
            c.set("isolation.level", isolation);
        })?;
        Ok(Self {
            client: std::sync::Arc::new(client),
            timeout: settings.request_timeout,
        })
    }

    /// The end of a partition once every transaction open on it when asked
    /// has ended (committed or aborted), waiting for that up to `within`:
    /// a reader that reads to it misses nothing a transaction was still
    /// writing, as it would reading to the stable end of the moment (a
    /// killed writer's open transaction, or one whose commit the brokers
    /// have not finished marking, holds that end back). Past `within`, the
    /// error names the topic.
    pub async fn settled_high(
        &self,
        settings: &KafkaSettings,
        topic: &str,
        partition: i32,
        within: Duration,
    ) -> Result<i64, KafkaError> {
        let everything = Self::with_isolation(settings, "read_uncommitted")?
            .high(topic, partition)
            .await?;
        let deadline = tokio::time::Instant::now() + within;
        let mut logged = false;
        loop {
            let stable = self.high(topic, partition).await?;
            if stable >= everything {
                return Ok(stable);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(KafkaError::Admin {
                    topic: topic.to_owned(),
                    reason: format!(
                        "a Kafka transaction on partition {partition} stayed open for more than {} s (its writer is stopped or the brokers are slow)",
                        within.as_secs()
                    ),
                });
            }
            if !logged && deadline - tokio::time::Instant::now() < within - Duration::from_secs(2) {
                logged = true;
                tracing::info!(
                    topic,
                    partition,
                    "waiting for an open Kafka transaction to end before reading"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The high watermark of one partition.
    pub async fn high(&self, topic: &str, partition: i32) -> Result<i64, KafkaError> {
        use rdkafka::consumer::Consumer as _;
        let (client, timeout, t) = (self.client.clone(), self.timeout, topic.to_owned());
        tokio::task::spawn_blocking(move || {
            client
                .fetch_watermarks(&t, partition, timeout)
                .or_else(|_| {
                    // The leader it asked may be gone: librdkafka keeps a
                    // topic's leader until its cached metadata expires (15
                    // min) when nothing else refreshes it. Asking for the
                    // topic's metadata refreshes it; then once more.
                    client.fetch_metadata(Some(&t), timeout)?;
                    client.fetch_watermarks(&t, partition, timeout)
                })
        })
        .await
        .expect("watermark task does not panic")
        .map(|(_, high)| high)
        .map_err(KafkaError::Consume)
    }
}

/// Names of the topics the cluster has.
pub async fn topic_names(settings: &KafkaSettings) -> Result<Vec<String>, KafkaError> {
    with_metadata(settings, |md| {
        md.topics().iter().map(|t| t.name().to_owned()).collect()
    })
    .await
}

/// The number of partitions of a topic (0 when it does not exist).
pub async fn partition_count(settings: &KafkaSettings, topic: &str) -> Result<usize, KafkaError> {
    let topic = topic.to_owned();
    with_metadata(settings, move |md| {
        md.topics()
            .iter()
            .find(|t| t.name() == topic)
            .map_or(0, |t| t.partitions().len())
    })
    .await
}

/// Asks the brokers for cluster metadata; used by readiness checks. Returns
/// the number of brokers.
pub async fn check_reachable(settings: &KafkaSettings) -> Result<usize, KafkaError> {
    with_metadata(settings, |md| md.brokers().len()).await
}

/// Fetches cluster metadata on a blocking thread and reads it with `read`.
async fn with_metadata<T: Send + 'static>(
    settings: &KafkaSettings,
    read: impl FnOnce(&rdkafka::metadata::Metadata) -> T + Send + 'static,
) -> Result<T, KafkaError> {
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    let settings = settings.clone();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = settings.create("metadata", |_| {})?;
        let md = consumer
            .fetch_metadata(None, settings.request_timeout)
            .map_err(|source| KafkaError::Unreachable {
                bootstrap: settings.bootstrap.clone(),
                source,
            })?;
        Ok(read(&md))
    })
    .await
    .expect("metadata task does not panic")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_names_properties_but_never_shows_their_values() {
        let mut config = KafkaConfig::default();
        config
            .properties
            .insert("sasl.password".to_owned(), "s3cr3t-value".to_owned());
        let settings = KafkaSettings {
            properties: config.properties.clone(),
            ..KafkaSettings::new("127.0.0.1:9092")
        };
        for shown in [format!("{config:?}"), format!("{settings:?}")] {
            assert!(shown.contains("sasl.password"), "{shown}");
            assert!(!shown.contains("s3cr3t-value"), "{shown}");
        }
    }
}
