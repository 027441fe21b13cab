//! The configuration of a subscription (`[[subscriptions]]`): the upper
//! node it reads from, the topics and the tables they fill, and the
//! database they go to; secrets are resolved here and errors name the key.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::section::{resolve_password, ConfigError};

/// A subscription: share topics of an upper node applied to a database.
///
/// ```toml
/// [[subscriptions]]
/// name = "330106-population"
/// [subscriptions.upstream]
/// brokers = "city-kafka:9092"
/// registry_url = "http://city-backflow:8480"
/// registry_token_env = "CITY_REGISTRY_TOKEN"   # this node's token at the city
/// properties = { "security.protocol" = "SASL_SSL", "sasl.mechanism" = "SCRAM-SHA-512", "sasl.username" = "330106" }
/// properties_env = { "sasl.password" = "CITY_KAFKA_PASSWORD" }
/// [subscriptions.sink]
/// type = "postgres"            # or "mysql", "sqlite"
/// user = "district"
/// database = "district"
/// password_env = "DISTRICT_PG_PASSWORD"
/// [[subscriptions.tables]]
/// topic = "backflow.share.330106.gongan.population"
/// table = "population"         # default: the dataset with '.' → '_'
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionConfig {
    /// Name; keys the offsets stored in the sink and names the dead-letter
    /// topic (`backflow.sdlq.<subscriber>.<name>`).
    pub name: String,
    /// The upper node's Kafka and schema registry.
    pub upstream: UpstreamConfig,
    /// The database the rows go to.
    pub sink: SinkConfig,
    /// Topics to apply and the tables they go to.
    pub tables: Vec<TableMapping>,
    /// Most records applied in one transaction.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// How long a batch may wait for more records, in milliseconds. 0 (the
    /// default): it is written as soon as the records the Kafka client
    /// already holds are taken, so batches grow with the load up to
    /// `batch_size` and a light load waits for nothing.
    #[serde(default = "default_flush_interval_ms")]
    pub flush_interval_ms: u64,
    /// Dead-letter topic on the upstream cluster (default
    /// `backflow.sdlq.<subscriber>.<name>`, the subscriber's code read from
    /// its share topics: a namespace apart from the feeds' dead letters,
    /// which hold unfiltered rows; `backflow.dlq.<name>` for a subscription
    /// that reads raw topics, which only the node itself does).
    #[serde(default)]
    pub dlq_topic: Option<String>,
}

/// The most topics one subscription reads.
pub const MAX_SUBSCRIPTION_TOPICS: usize = 100;

/// The longest fetch wait accepted: a second under librdkafka's default
/// `socket.timeout.ms`, which an idle fetch must not reach.
pub(crate) const MAX_FETCH_WAIT_MS: u32 = 59_000;

fn default_topic_prefix() -> String {
    crate::domain::topics::DEFAULT_PREFIX.to_owned()
}

fn default_fetch_wait_ms() -> u32 {
    crate::kafka::DEFAULT_FETCH_WAIT_MS
}
fn default_batch_size() -> usize {
    5_000
}
fn default_flush_interval_ms() -> u64 {
    0
}

/// Where a subscription reads from. Its `Debug` shows neither the
/// properties' values nor the token.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// The upper node's Kafka bootstrap servers.
    pub brokers: String,
    /// The upper node's schema registry, e.g. `http://city-backflow:8480`.
    pub registry_url: String,
    /// librdkafka properties for the upstream cluster (security settings).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// How long the upstream broker may hold a fetch that finds no record,
    /// in milliseconds (as the node's `kafka.fetch_wait_ms`).
    #[serde(default = "default_fetch_wait_ms")]
    pub fetch_wait_ms: u32,
    /// The upper node's `kafka.topic_prefix` (default `backflow.`): its
    /// share topics are `<prefix>share.<this node>.<dataset>`.
    #[serde(default = "default_topic_prefix")]
    pub topic_prefix: String,
    /// librdkafka properties whose values come from environment variables
    /// (property → variable), for credentials.
    #[serde(default)]
    pub properties_env: BTreeMap<String, String>,
    /// The environment variable holding the token this node was given by
    /// the upper node; it is sent to the upper node's schema registry,
    /// which refuses callers without one.
    #[serde(default)]
    pub registry_token_env: Option<String>,
    /// Or a file holding that token (first line ending stripped).
    #[serde(default)]
    pub registry_token_file: Option<String>,
    /// The token, resolved from `registry_token_env` or
    /// `registry_token_file`; never logged or shown.
    #[serde(skip)]
    pub registry_token: Option<String>,
    /// PEM file of the CA that signed the upper node's HTTPS certificate
    /// (its `registry_url` is `https://...`); absent: the system's CAs.
    #[serde(default)]
    pub registry_ca_file: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for UpstreamConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamConfig")
            .field("brokers", &self.brokers)
            .field("registry_url", &self.registry_url)
            .field("topic_prefix", &self.topic_prefix)
            .field("properties", &crate::kafka::PropertyNames(&self.properties))
            .field("properties_env", &self.properties_env)
            .field("registry_token_env", &self.registry_token_env)
            .field("registry_token_file", &self.registry_token_file)
            .field("registry_ca_file", &self.registry_ca_file)
            .finish_non_exhaustive()
    }
}

/// One topic and the table it fills.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableMapping {
    /// Topic (a share topic `backflow.share.<node>.<dataset>`, or a raw one).
    pub topic: String,
    /// Target table (default: the topic's dataset with '.' replaced by '_').
    #[serde(default)]
    pub table: Option<String>,
}

/// A subscription's database.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SinkConfig {
    /// PostgreSQL.
    Postgres(backflow_connectors::sink::postgres::PostgresSinkConfig),
    /// MySQL or MariaDB.
    Mysql(backflow_connectors::sink::mysql::MysqlSinkConfig),
    /// A SQLite file.
    Sqlite(backflow_connectors::sink::sqlite::SqliteSinkConfig),
    /// This node's own Kafka (a cascade): the records go to this node's raw
    /// topics and its distributor re-shares them. Runs in `backflow serve`.
    Kafka(BusSinkConfig),
}

/// A cascade's sink: this node's own bus (`kafka.brokers`, its registry).
/// A mapping's `table` names the dataset the records are re-published as
/// (default: the share topic's dataset).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusSinkConfig {}

impl<'de> Deserialize<'de> for SinkConfig {
    /// Dispatches on `type`, so that an error names the setting.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut v = serde_json::Value::deserialize(d)?;
        let kind = v
            .as_object_mut()
            .and_then(|o| o.remove("type"))
            .ok_or_else(|| {
                D::Error::custom("missing `type` (one of: postgres, mysql, sqlite, kafka)")
            })?;
        let at = |e: serde_path_to_error::Error<serde_json::Error>| {
            D::Error::custom(format!("{}: {}", e.path(), e.inner()))
        };
        match kind.as_str() {
            Some("postgres") => serde_path_to_error::deserialize(v)
                .map(SinkConfig::Postgres)
                .map_err(at),
            Some("mysql") | Some("mariadb") => serde_path_to_error::deserialize(v)
                .map(SinkConfig::Mysql)
                .map_err(at),
            Some("sqlite") => serde_path_to_error::deserialize(v)
                .map(SinkConfig::Sqlite)
                .map_err(at),
            Some("kafka") => serde_path_to_error::deserialize(v)
                .map(SinkConfig::Kafka)
                .map_err(at),
            _ => Err(D::Error::custom(format!(
                "unknown sink type {kind}; supported: postgres, mysql, sqlite, kafka"
            ))),
        }
    }
}

impl SinkConfig {
    /// The schema (PostgreSQL) or database (MySQL) tables go to; SQLite has
    /// one namespace.
    pub fn namespace(&self) -> &str {
        match self {
            SinkConfig::Postgres(c) => &c.schema,
            SinkConfig::Mysql(c) => &c.database,
            SinkConfig::Sqlite(_) => "main",
            SinkConfig::Kafka(_) => "",
        }
    }
}

impl SubscriptionConfig {
    /// Resolves passwords, `upstream.properties_env` and the upstream
    /// registry token; `index` is the subscription's position, for error
    /// messages.
    pub fn resolve_secrets(&mut self, index: usize) -> Result<(), ConfigError> {
        let origin = format!("subscription {}", self.name);
        for (prop, var) in &self.upstream.properties_env {
            let value = std::env::var(var).map_err(|_| ConfigError::BadValue {
                key: format!("subscriptions[{index}].upstream.properties_env.{prop}"),
                origin: origin.clone(),
                reason: format!("environment variable {var} is not set"),
            })?;
            self.upstream.properties.insert(prop.clone(), value);
        }
        self.upstream.registry_token = self.upstream.resolve_registry_token(index, &origin)?;
        let (password, env, file) = match &mut self.sink {
            SinkConfig::Postgres(c) => (&mut c.password, &c.password_env, &c.password_file),
            SinkConfig::Mysql(c) => (&mut c.password, &c.password_env, &c.password_file),
            SinkConfig::Sqlite(_) | SinkConfig::Kafka(_) => return Ok(()),
        };
        *password = resolve_password(
            env.as_deref(),
            file.as_deref(),
            &format!("subscriptions[{index}].sink"),
            &origin,
        )?;
        Ok(())
    }

    /// The dead-letter topic.
    pub fn dlq_topic(&self) -> String {
        if let Some(t) = &self.dlq_topic {
            return t.clone();
        }
        let subscriber = self.tables.iter().find_map(|t| {
            crate::domain::topics::share_parts(&self.upstream.topic_prefix, &t.topic)
                .map(|(code, _)| code)
        });
        match subscriber {
            Some(code) => crate::domain::topics::subscriber_dlq(code, &self.name),
            None => crate::domain::topics::dlq(&self.name),
        }
    }
}

impl UpstreamConfig {
    /// An HTTP client of the upper node (its registry and API), trusting
    /// `registry_ca_file` when set; the error says which file is wrong.
    pub fn http_client(&self, timeout: std::time::Duration) -> Result<reqwest::Client, String> {
        crate::http::http_client_trusting(self.registry_ca_file.as_deref(), timeout)
            .map_err(|e| format!("upstream.registry_ca_file {e}"))
    }

    /// The token of `registry_token_env` or `registry_token_file` (at most
    /// one of them); an unset variable, an unreadable file or an empty
    /// token is an error naming the key.
    fn resolve_registry_token(
        &self,
        index: usize,
        origin: &str,
    ) -> Result<Option<String>, ConfigError> {
        let bad = |key: &str, reason: String| ConfigError::BadValue {
            key: format!("subscriptions[{index}].upstream.{key}"),
            origin: origin.to_owned(),
            reason,
        };
        let (key, token) = match (&self.registry_token_env, &self.registry_token_file) {
            (None, None) => return Ok(None),
            (Some(_), Some(_)) => {
                return Err(bad(
                    "registry_token_env",
                    "give the token by registry_token_env or by registry_token_file, not both"
                        .to_owned(),
                ))
            }
            (Some(var), None) => (
                "registry_token_env",
                std::env::var(var).map_err(|_| {
                    bad(
                        "registry_token_env",
                        format!("environment variable {var} is not set"),
                    )
                })?,
            ),
            (None, Some(file)) => (
                "registry_token_file",
                std::fs::read_to_string(file)
                    .map_err(|e| bad("registry_token_file", format!("cannot read {file}: {e}")))?
                    .trim_end_matches(['\n', '\r'])
                    .to_owned(),
            ),
        };
        if token.trim().is_empty() {
            return Err(bad(
                key,
                "the token is empty: give the token the upper node issued for this node".to_owned(),
            ));
        }
        Ok(Some(token))
    }
}
