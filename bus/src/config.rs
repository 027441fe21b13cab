//! Node configuration: a TOML file layered with `BACKFLOW_<SECTION>__<KEY>`
//! environment variables.
//!
//! Every setting has a default, so `backflow serve` runs with no file at all
//! (on the embedded broker). Unknown keys and bad values are errors that name
//! the key and where it came from (the file or the environment variable), e.g.
//!
//! ```text
//! invalid configuration: kafka.partitions in /etc/backflow/node.toml: invalid digit found in string
//! ```
//!
//! Example file:
//!
//! ```toml
//! [node]
//! code = "330100"          # GB/T 2260 administrative division code of this node
//! name = "Hangzhou"
//!
//! [kafka]
//! brokers = "kafka-1:9092,kafka-2:9092"   # absent: embedded in-memory broker
//! partitions = 6
//!
//! [http]
//! listen = "0.0.0.0:8480"
//!
//! [log]
//! format = "json"          # or "human"
//! level = "info,backflow=debug"
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Prefix of the environment variables that override the file.
pub const ENV_PREFIX: &str = "BACKFLOW";
/// Separator between section and key in environment variable names.
pub const ENV_SEPARATOR: &str = "__";

/// The whole node configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Identity of this node (a level of government).
    pub node: NodeConfig,
    /// Kafka connection and topic defaults.
    pub kafka: KafkaConfig,
    /// HTTP server for health, metrics and (later) the control plane.
    pub http: HttpConfig,
    /// Logging.
    pub log: LogConfig,
    /// Process lifecycle.
    pub runtime: RuntimeConfig,
    /// Change feeds this node runs (`[[feeds]]`, each with a `type`).
    pub feeds: Vec<FeedConfig>,
    /// Subscriptions this process applies to its own database
    /// (`[[subscriptions]]`; run by `backflow subscribe` and `backflow serve`).
    pub subscriptions: Vec<SubscriptionConfig>,
    /// Active shares this node's distributor delivers (`[[shares]]`): which
    /// rows and fields of a dataset a lower node receives.
    pub shares: Vec<ShareConfig>,
    /// Who may use the control-plane API.
    pub auth: AuthConfig,
    /// Standard forms of the datasets this node's feeds publish
    /// (`[[standards]]`): each table is mapped into its dataset's standard
    /// and validated before publishing.
    pub standards: Vec<StandardConfig>,
    /// Secrets an admin binds to departments, for the feeds they register
    /// through the API (`[[secrets]]`, see `admission`).
    pub secrets: Vec<SecretConfig>,
    /// Where feeds registered through the API may connect (`[api_feeds]`).
    pub api_feeds: ApiFeedsConfig,
    /// How this node signs its audit trail (`[audit]`).
    pub audit: AuditConfig,
}

/// The key that signs this node's audit trail, and its checkpoints.
///
/// ```toml
/// [audit]
/// signing_key_file = "/etc/backflow/audit.key"  # written by `backflow audit keygen --out FILE`
/// # signing_key_env = "BACKFLOW_AUDIT_KEY"      # or: a variable holding the key
/// checkpoint_every = 1000
/// ```
///
/// The key is an Ed25519 secret key: its 32-byte seed as 64 hex digits.
/// Owners and auditors check the trail with its public half (`backflow
/// audit verify --public-key`). With neither setting, a node on the
/// embedded broker signs with a key made for that run; a node on a real
/// cluster refuses to start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// File holding the secret key (hex seed); readable by the node's
    /// user only.
    pub signing_key_file: Option<PathBuf>,
    /// Environment variable holding the secret key (hex seed), instead of
    /// a file.
    pub signing_key_env: Option<String>,
    /// A signed checkpoint record is written when the chain's sequence
    /// number reaches a multiple of this (and when a node process writes
    /// its first record), so a trail whose oldest records expired is
    /// checked from the first checkpoint still there.
    pub checkpoint_every: u64,
    /// Public keys (hex) the node signed with before its key was rotated:
    /// catalog records they signed are still believed until rewritten.
    pub previous_public_keys: Vec<String>,
    /// Files of secret keys (hex seed) the node used before its key was
    /// rotated: catalog records they signed are believed, and the HMAC
    /// keys they sealed are opened, until the records are rewritten.
    pub previous_key_files: Vec<PathBuf>,
    /// Upgrading a catalog written before records were signed: its records
    /// at offsets up to this one (the catalog topic's last offset before
    /// the upgrade) are believed without a signature. Records after it
    /// are checked as any other.
    pub unsigned_catalog_until_offset: Option<i64>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            signing_key_file: None,
            signing_key_env: None,
            checkpoint_every: 1000,
            previous_public_keys: Vec::new(),
            previous_key_files: Vec::new(),
            unsigned_catalog_until_offset: None,
        }
    }
}

impl AuditConfig {
    /// The first setting that cannot be used: (key, reason).
    fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.signing_key_file.is_some() && self.signing_key_env.is_some() {
            return Err((
                "audit.signing_key_env",
                "set either audit.signing_key_file or audit.signing_key_env, not both".to_owned(),
            ));
        }
        if self.checkpoint_every == 0 {
            return Err((
                "audit.checkpoint_every",
                "must be at least 1 (1000 is the default)".to_owned(),
            ));
        }
        self.previous_keys()?;
        Ok(())
    }

    /// [`AuditConfig::previous_public_keys`], parsed.
    pub fn previous_keys(
        &self,
    ) -> Result<Vec<ed25519_dalek::VerifyingKey>, (&'static str, String)> {
        self.previous_public_keys
            .iter()
            .enumerate()
            .map(|(i, text)| {
                let mut bytes = [0u8; 32];
                hex::decode_to_slice(text.trim(), &mut bytes)
                    .ok()
                    .and_then(|()| ed25519_dalek::VerifyingKey::from_bytes(&bytes).ok())
                    .ok_or_else(|| {
                        (
                            "audit.previous_public_keys",
                            format!("entry {i} is not an Ed25519 public key: 64 hex digits, as GET /api/node shows audit_public_key"),
                        )
                    })
            })
            .collect()
    }
}

pub use crate::standards::StandardConfig;

/// Bearer tokens of the control-plane API.
///
/// ```toml
/// [[auth.tokens]]
/// principal = "owner:gongan"        # admin | owner:<department> | subscriber:<node>
/// sha256 = "9f86d0..."              # echo -n "$TOKEN" | sha256sum
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Tokens, by their SHA-256; with none, every API call is refused.
    pub tokens: Vec<TokenConfig>,
}

/// One API token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// `admin`, `owner:<department>` or `subscriber:<node>`.
    pub principal: String,
    /// Hex SHA-256 of the token.
    pub sha256: String,
}

/// An active share of a dataset with one subscriber node, declared in the
/// configuration file (the control plane will manage these in
/// `backflow._catalog`).
///
/// ```toml
/// [[shares]]
/// subscriber = "330106"
/// dataset = "gongan.population"
/// region_column = "region_code"      # rows whose code starts with 330106
/// fields = { id = "plain", name = "masked:name", id_number = "masked:keep(6,4)", phone = "hashed", region_code = "plain" }
/// predicates = [{ column = "status", op = "=", value = "active" }]
/// secret_env = "SHARE_330106_SECRET" # HMAC key of hashed fields
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShareConfig {
    /// The subscriber node's division code.
    pub subscriber: DivisionCode,
    /// Dataset id.
    pub dataset: String,
    /// Column with each row's division code: the subscriber receives the
    /// rows of its jurisdiction. A share needs this or `all_rows = true`.
    #[serde(default)]
    pub region_column: Option<String>,
    /// Every row to this subscriber, declared explicitly: without a row
    /// rule nothing is shared.
    #[serde(default)]
    pub all_rows: bool,
    /// Fields granted knowing that they give back part of what another
    /// granted field's mask hides (see `disclosure`); such a share is
    /// refused otherwise.
    #[serde(default)]
    pub accept_disclosure: Vec<String>,
    /// Granted fields and their rule: `plain`, `hashed`,
    /// `masked:keep(FIRST,LAST)`, `masked:name`, `masked:fixed(TEXT)`.
    pub fields: BTreeMap<String, String>,
    /// Extra row conditions.
    #[serde(default)]
    pub predicates: Vec<crate::domain::policy::Predicate>,
    /// Environment variable holding the HMAC key of hashed fields.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// The key, resolved from `secret_env`; never logged.
    #[serde(skip)]
    pub secret: Option<String>,
    /// Policy version, sent with every record in `backflow.policy`.
    #[serde(default = "default_policy_version")]
    pub version: u32,
    /// The compatibility level of the dataset (its owner's choice), which
    /// the share topic's subjects follow; set from the catalog.
    #[serde(skip)]
    pub compatibility: Option<crate::registry::Level>,
    /// Whether the subscriber may share on what it receives: `none` (the
    /// default) or `within_jurisdiction`.
    #[serde(default)]
    pub onward: crate::domain::policy::Onward,
}

fn default_policy_version() -> u32 {
    1
}

impl ShareConfig {
    /// The policy this share applies.
    pub fn policy(&self) -> Result<crate::domain::policy::SharePolicy, String> {
        use crate::domain::policy::{FieldRule, SharePolicy};
        let rows = match (&self.region_column, self.all_rows) {
            (Some(c), false) => crate::domain::policy::RowRule::Jurisdiction(c.clone()),
            (None, true) => crate::domain::policy::RowRule::All,
            (Some(_), true) => {
                return Err(
                    "all_rows: region_column and all_rows = true exclude each other: keep one"
                        .to_owned(),
                )
            }
            (None, false) => return Err("region_column: a share needs a row rule: region_column = \"<column with each row's division code>\" (the subscriber's jurisdiction) or all_rows = true (every row)".to_owned()),
        };
        let fields = self
            .fields
            .iter()
            .map(|(k, v)| {
                FieldRule::parse(v)
                    .map(|r| (k.clone(), r))
                    .map_err(|e| format!("fields.{k}: {e}"))
            })
            .collect::<Result<BTreeMap<_, _>, _>>()?;
        Ok(SharePolicy {
            subscriber: self.subscriber.to_string(),
            dataset: self.dataset.clone(),
            rows,
            prefix: self.subscriber.jurisdiction_prefix().to_owned(),
            predicates: self.predicates.clone(),
            fields,
            secret: self.secret.clone().unwrap_or_default().into_bytes(),
            version: self.version,
        })
    }
}

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
const MAX_FETCH_WAIT_MS: u32 = 59_000;

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
        http_client_trusting(self.registry_ca_file.as_deref(), timeout)
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

/// Reads a password from an environment variable or a file (first line
/// ending stripped); `key` prefixes the setting named in errors.
fn resolve_password(
    env: Option<&str>,
    file: Option<&str>,
    key: &str,
    origin: &str,
) -> Result<Option<String>, ConfigError> {
    if let Some(var) = env {
        return std::env::var(var)
            .map(Some)
            .map_err(|_| ConfigError::BadValue {
                key: format!("{key}.password_env"),
                origin: origin.to_owned(),
                reason: format!("environment variable {var} is not set"),
            });
    }
    if let Some(file) = file {
        let text = std::fs::read_to_string(file).map_err(|e| ConfigError::BadValue {
            key: format!("{key}.password_file"),
            origin: origin.to_owned(),
            reason: format!("cannot read {file}: {e}"),
        })?;
        return Ok(Some(text.trim_end_matches(['\n', '\r']).to_owned()));
    }
    Ok(None)
}

/// A change feed: a source connector and the datasets it fills.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum FeedConfig {
    /// PostgreSQL logical replication (see `backflow_connectors::postgres`).
    Postgres(backflow_connectors::postgres::PostgresSourceConfig),
    /// MySQL/MariaDB binlog (see `backflow_connectors::mysql`).
    Mysql(backflow_connectors::mysql::MysqlSourceConfig),
    /// SQL polling of databases without a usable change log (see
    /// `backflow_connectors::poll`).
    Poll(backflow_connectors::poll::PollSourceConfig),
}

impl<'de> Deserialize<'de> for FeedConfig {
    /// Dispatches on `type`, then reads the connector's settings so that an
    /// error names the setting (`snapshot: unknown variant ...`).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut v = serde_json::Value::deserialize(d)?;
        let kind = v
            .as_object_mut()
            .and_then(|o| o.remove("type"))
            .ok_or_else(|| D::Error::custom("missing `type` (one of: postgres, mysql, poll)"))?;
        let at = |e: serde_path_to_error::Error<serde_json::Error>| {
            D::Error::custom(format!("{}: {}", e.path(), e.inner()))
        };
        match kind.as_str() {
            Some("postgres") => serde_path_to_error::deserialize(v)
                .map(FeedConfig::Postgres)
                .map_err(at),
            Some("mysql") => serde_path_to_error::deserialize(v)
                .map(FeedConfig::Mysql)
                .map_err(at),
            Some("poll") => serde_path_to_error::deserialize(v)
                .map(FeedConfig::Poll)
                .map_err(at),
            _ => Err(D::Error::custom(format!(
                "unknown feed type {kind}; supported: postgres, mysql, poll"
            ))),
        }
    }
}

impl FeedConfig {
    /// The sample a `postgres` or `mysql` feed's tables are read with: the
    /// same connection, read as a polling feed reads (plain SQL).
    pub fn sample_config(&self) -> backflow_connectors::poll::PollSourceConfig {
        use backflow_connectors::poll::{PollMode, PollSourceConfig, PollTableConfig};
        let table = |table: &str, dataset: &str| PollTableConfig {
            table: table.to_owned(),
            dataset: dataset.to_owned(),
            mode: PollMode::Bulk,
            timestamp_column: None,
            incrementing_column: None,
            soft_delete_column: None,
        };
        match self {
            FeedConfig::Poll(c) => c.clone(),
            FeedConfig::Postgres(c) => {
                let tables = c
                    .tables
                    .iter()
                    .map(|t| table(&t.table, &t.dataset))
                    .collect();
                let mut p = PollSourceConfig::postgres(&c.name, &c.user, &c.database, tables);
                p.host = c.host.clone();
                p.port = Some(c.port);
                p.password = c.password.clone();
                p.sslmode = c.sslmode;
                p.ssl_ca_file = c.ssl_ca_file.clone();
                p
            }
            FeedConfig::Mysql(c) => {
                let database = c.database.clone().unwrap_or_default();
                let tables = c
                    .tables
                    .iter()
                    .map(|t| table(&t.table, &t.dataset))
                    .collect();
                let mut p = PollSourceConfig::mysql(&c.name, &c.user, database, tables);
                p.host = c.host.clone();
                p.port = Some(c.port);
                p.password = c.password.clone();
                p.sslmode = c.sslmode;
                p.ssl_ca_file = c.ssl_ca_file.clone();
                p
            }
        }
    }

    /// The feed's name.
    pub fn name(&self) -> &str {
        match self {
            FeedConfig::Postgres(c) => &c.name,
            FeedConfig::Mysql(c) => &c.name,
            FeedConfig::Poll(c) => &c.name,
        }
    }

    /// The datasets the feed fills.
    pub fn datasets(&self) -> Vec<&str> {
        match self {
            FeedConfig::Postgres(c) => c.tables.iter().map(|t| t.dataset.as_str()).collect(),
            FeedConfig::Mysql(c) => c.tables.iter().map(|t| t.dataset.as_str()).collect(),
            FeedConfig::Poll(c) => c.tables.iter().map(|t| t.dataset.as_str()).collect(),
        }
    }

    /// Checks settings that depend on each other; the error names the key
    /// under `at` (`feeds[2]`, or the feed's name for API feeds).
    pub fn validate(&self, at: &str) -> Result<(), (String, String)> {
        self.tls()
            .check()
            .map_err(|(key, reason)| (format!("{at}.{key}"), reason))?;
        match self {
            FeedConfig::Poll(c) => c.validate().map_err(|msg| {
                let msg = msg.replace("feeds[..]", at);
                let key = msg
                    .split_whitespace()
                    .next()
                    .unwrap_or(at)
                    .trim_end_matches(':')
                    .to_owned();
                (key, msg)
            }),
            _ => Ok(()),
        }
    }

    /// The TLS settings of the feed's database connections (none for
    /// SQLite).
    pub fn tls(&self) -> backflow_connectors::tls::DbTls {
        match self {
            FeedConfig::Postgres(c) => c.tls(),
            FeedConfig::Mysql(c) => c.tls(),
            FeedConfig::Poll(c) => c.tls(),
        }
    }

    /// Resolves the password from `password_env` / `password_file`.
    /// `index` is the feed's position in `feeds`, for the error message.
    pub fn resolve_secrets(&mut self, index: usize) -> Result<(), ConfigError> {
        let (password, env, file, name) = match self {
            FeedConfig::Postgres(c) => {
                (&mut c.password, &c.password_env, &c.password_file, &c.name)
            }
            FeedConfig::Mysql(c) => (&mut c.password, &c.password_env, &c.password_file, &c.name),
            FeedConfig::Poll(c) => (&mut c.password, &c.password_env, &c.password_file, &c.name),
        };
        *password = resolve_password(
            env.as_deref(),
            file.as_deref(),
            &format!("feeds[{index}]"),
            &format!("feed {name}"),
        )?;
        Ok(())
    }
}

/// An HTTP client that, given `ca_file` (PEM, one or more certificates),
/// trusts those CAs only (not the system's: a government network's own CA
/// names its servers, and a public CA should not be able to stand in for
/// them); the system's CAs otherwise. The error starts with the file.
pub fn http_client_trusting(
    ca_file: Option<&std::path::Path>,
    timeout: std::time::Duration,
) -> Result<reqwest::Client, String> {
    let mut b = reqwest::Client::builder().timeout(timeout);
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let cas = reqwest::Certificate::from_pem_bundle(&pem)
            .ok()
            .filter(|c| !c.is_empty())
            .ok_or_else(|| format!("{}: not a PEM file of certificates", path.display()))?;
        b = b.tls_built_in_root_certs(false);
        for ca in cas {
            b = b.add_root_certificate(ca);
        }
    }
    b.build().map_err(|e| format!("an HTTP client: {e}"))
}

/// Identity of this node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Administrative division code (GB/T 2260, six digits), e.g. `330100`.
    pub code: DivisionCode,
    /// Human-readable name shown on dashboards.
    pub name: String,
    /// The upper node's division code (none at the top level).
    pub parent: Option<DivisionCode>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            code: DivisionCode::parse("330000").expect("valid default code"),
            name: "backflow demo node".to_owned(),
            parent: None,
        }
    }
}

/// A GB/T 2260 administrative division code: six ASCII digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DivisionCode(String);

impl DivisionCode {
    /// Parses a six-digit code.
    pub fn parse(code: &str) -> Result<Self, String> {
        if code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()) {
            Ok(Self(code.to_owned()))
        } else {
            Err(format!(
                "{code:?} is not a GB/T 2260 administrative division code: expected six digits such as \"330100\""
            ))
        }
    }

    /// The code as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this node may share with `subscriber`: a division inside
    /// its own jurisdiction, not itself. A node has no right to the data
    /// of divisions it does not govern, whatever its grants say.
    pub fn may_share_with(&self, subscriber: &DivisionCode) -> Result<(), String> {
        let prefix = self.jurisdiction_prefix();
        if subscriber == self || !subscriber.as_str().starts_with(prefix) {
            return Err(format!(
                "{subscriber} is not a division inside this node's jurisdiction ({self} shares only with codes starting with {prefix}, itself excluded)"
            ));
        }
        Ok(())
    }

    /// Jurisdiction prefix: the code without trailing "00" pairs
    /// (`330100` → `3301`, `330000` → `33`, `330106` → `330106`).
    pub fn jurisdiction_prefix(&self) -> &str {
        let mut s = self.0.as_str();
        while s.len() > 2 && s.ends_with("00") {
            s = &s[..s.len() - 2];
        }
        s
    }
}

impl TryFrom<String> for DivisionCode {
    type Error = String;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<DivisionCode> for String {
    fn from(value: DivisionCode) -> Self {
        value.0
    }
}

impl fmt::Display for DivisionCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

pub use crate::kafka::KafkaConfig;

/// HTTP server settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address the HTTP server listens on: the API, the schema registry,
    /// the dashboard, `/healthz`, `/readyz` (details for admins) and
    /// `/metrics` (admins only).
    pub listen: SocketAddr,
    /// A second address serving `/metrics`, `/healthz` and `/readyz`
    /// without a token, for Prometheus and probes on an internal network;
    /// absent: none.
    pub metrics_listen: Option<SocketAddr>,
    /// PEM certificate chain of the main listener: with `tls_key`, it
    /// serves HTTPS only (the API, the registry, the dashboard carry
    /// tokens and schemas).
    pub tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of `tls_cert` (readable by the node's user only).
    pub tls_key: Option<std::path::PathBuf>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8480)),
            metrics_listen: None,
            tls_cert: None,
            tls_key: None,
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// Logging settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `human` or `json`.
    pub format: LogFormat,
    /// A tracing filter such as `info` or `info,backflow=debug`; `RUST_LOG`
    /// overrides it when set.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Human,
            level: "info".to_owned(),
        }
    }
}

/// Process lifecycle settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// How long a graceful shutdown may take before the process gives up
    /// waiting for its tasks, in milliseconds.
    pub shutdown_timeout_ms: u64,
    /// Interval between Kafka reachability checks behind `/readyz`, in
    /// milliseconds.
    pub readiness_interval_ms: u64,
    /// Window over which subscription and feed statuses (OK, WARN, STALL,
    /// STOP) are judged, in seconds.
    pub lag_window_secs: u64,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            shutdown_timeout_ms: 10_000,
            readiness_interval_ms: 5_000,
            lag_window_secs: 60,
        }
    }
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file given does not exist or cannot be read.
    #[error("cannot read configuration file {path}: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    /// The file is not valid TOML.
    #[error("configuration file {path} is not valid TOML: {reason}")]
    Syntax { path: PathBuf, reason: String },
    /// A key that backflow does not know.
    #[error("invalid configuration: unknown key `{key}` in {origin}; {hint}")]
    UnknownKey {
        key: String,
        origin: String,
        hint: String,
    },
    /// A key with a value of the wrong type or outside its range.
    #[error("invalid configuration: {key} in {origin}: {reason}")]
    BadValue {
        key: String,
        origin: String,
        reason: String,
    },
}

impl ConfigError {
    /// The dotted key the error is about, when it is about one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::UnknownKey { key, .. } | ConfigError::BadValue { key, .. } => Some(key),
            _ => None,
        }
    }
}

impl Config {
    /// The datasets this node receives from an upper node (its cascading
    /// subscriptions, sink `kafka`) with the subscription each comes
    /// through. They are the upper node's: no local feed fills them and no
    /// local department owns them.
    pub fn cascaded_datasets(&self) -> BTreeMap<String, String> {
        self.subscriptions
            .iter()
            .filter(|s| matches!(s.sink, SinkConfig::Kafka(_)))
            .flat_map(|s| {
                s.tables.iter().filter_map(move |t| {
                    let dataset = t.table.clone().or_else(|| {
                        crate::domain::topics::share_parts(&s.upstream.topic_prefix, &t.topic)
                            .map(|(_, d)| d.to_owned())
                    })?;
                    Some((dataset, s.name.clone()))
                })
            })
            .collect()
    }

    /// Loads the configuration from an optional TOML file and the process
    /// environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with_env(file, std::env::vars())
    }

    /// Like [`Config::load`], with the environment given explicitly (tests).
    pub fn load_with_env(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let env: BTreeMap<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(&format!("{ENV_PREFIX}_")) && k.contains(ENV_SEPARATOR))
            .collect();

        let mut builder = config::Config::builder();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Unreadable {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
            // Parse once here so syntax errors carry the file name and line.
            toml_check(&text).map_err(|reason| ConfigError::Syntax {
                path: path.to_owned(),
                reason,
            })?;
            builder = builder.add_source(config::File::from_str(&text, config::FileFormat::Toml));
        }
        builder = builder.add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("_")
                .separator(ENV_SEPARATOR)
                .try_parsing(true)
                .source(Some(env.clone().into_iter().collect())),
        );
        let merged = builder.build().map_err(|e| ConfigError::BadValue {
            key: "?".to_owned(),
            origin: origin_name(file, &env, ""),
            reason: e.to_string(),
        })?;

        let config = serde_path_to_error::deserialize::<_, Config>(merged).map_err(|err| {
            let key = err.path().to_string();
            let reason = err.inner().to_string();
            classify(key, reason, file, &env)
        })?;
        let check = Check { file, env: &env };
        let mut config = config;
        check.kafka(&mut config)?;
        check.feed_definitions(&mut config)?;
        check.subscriptions(&mut config)?;
        check.tokens(&config)?;
        check.standards(&config)?;
        check.shares(&mut config)?;
        config
            .audit
            .validate()
            .map_err(|(key, reason)| ConfigError::BadValue {
                key: key.to_owned(),
                origin: check.origin(key),
                reason,
            })?;
        check.feed_datasets(&config)?;
        Ok(config)
    }
}

/// The checks of a loaded configuration, each naming the key at fault and
/// where its value came from.
struct Check<'a> {
    file: Option<&'a Path>,
    env: &'a BTreeMap<String, String>,
}

impl Check<'_> {
    fn origin(&self, key: &str) -> String {
        origin_name(self.file, self.env, key)
    }

    /// Kafka properties from the environment, fetch waits, topic
    /// prefixes, the session timeout.
    fn kafka(&self, c: &mut Config) -> Result<(), ConfigError> {
        for (prop, var) in &c.kafka.properties_env {
            let value = std::env::var(var).map_err(|_| ConfigError::BadValue {
                key: format!("kafka.properties_env.{prop}"),
                origin: self.origin(""),
                reason: format!("environment variable {var} is not set"),
            })?;
            c.kafka.properties.insert(prop.clone(), value);
        }
        // 0 would make idle consumers ask without pause; a wait near
        // librdkafka's socket.timeout.ms (60 s) drops idle connections.
        let fetch_wait = |key: String, ms: u32| {
            if (1..=MAX_FETCH_WAIT_MS).contains(&ms) {
                Ok(())
            } else {
                Err(ConfigError::BadValue {
                key,
                origin: self.origin(""),
                reason: format!("{ms} ms is outside 1..={MAX_FETCH_WAIT_MS} (below the Kafka client's 60 s socket timeout); the default, 100, suits Apache Kafka"),
            })
            }
        };
        fetch_wait("kafka.fetch_wait_ms".to_owned(), c.kafka.fetch_wait_ms)?;
        let prefix = |key: String, prefix: &str| {
            crate::domain::topics::validate_prefix(prefix).map_err(|reason| ConfigError::BadValue {
                key,
                origin: self.origin(""),
                reason,
            })
        };
        prefix("kafka.topic_prefix".to_owned(), &c.kafka.topic_prefix)?;
        for (i, sub) in c.subscriptions.iter().enumerate() {
            prefix(
                format!("subscriptions[{i}].upstream.topic_prefix"),
                &sub.upstream.topic_prefix,
            )?;
        }
        // Apache Kafka refuses a member whose session timeout lies outside
        // group.min/max.session.timeout.ms (defaults 6 s and 30 min).
        if !(6_000..=1_800_000).contains(&c.kafka.session_timeout_ms) {
            return Err(ConfigError::BadValue {
            key: "kafka.session_timeout_ms".to_owned(),
            origin: self.origin(""),
            reason: format!(
                "{} ms is outside 6000..=1800000, the session timeouts Apache Kafka accepts by default (group.min.session.timeout.ms, group.max.session.timeout.ms); the default is 10000",
                c.kafka.session_timeout_ms
            ),
        });
        }
        if c.http.tls_cert.is_some() != c.http.tls_key.is_some() {
            return Err(ConfigError::BadValue {
                key: if c.http.tls_cert.is_some() { "http.tls_key" } else { "http.tls_cert" }.to_owned(),
                origin: self.origin(""),
                reason: "HTTPS needs both http.tls_cert (PEM certificate chain) and http.tls_key (its PEM private key)".to_owned(),
            });
        }
        if let Some(path) = &c.api_feeds.ssl_ca_file {
            backflow_connectors::tls::check_ca_file(path).map_err(|reason| {
                ConfigError::BadValue {
                    key: "api_feeds.ssl_ca_file".to_owned(),
                    origin: self.origin(""),
                    reason,
                }
            })?;
        }
        if c.kafka.manage_acls && c.kafka.own_principal().is_none() {
            return Err(ConfigError::BadValue {
                key: "kafka.principal".to_owned(),
                origin: self.origin(""),
                reason: if c.kafka.uses_client_certificate() {
                    "with manage_acls over mutual TLS, name the node's own principal as the brokers name its certificate (e.g. \"User:CN=backflow-330100,O=gov\"), so that no child node can be given it".to_owned()
                } else {
                    "with manage_acls the node must know its own principal, so that no child node can be given it: log in with SASL (kafka.properties \"sasl.username\") or set kafka.principal".to_owned()
                },
            });
        }
        if c.kafka.manage_acls && c.kafka.brokers.is_none() {
            return Err(ConfigError::BadValue {
                key: "kafka.manage_acls".to_owned(),
                origin: self.origin(""),
                reason: "the embedded broker has no ACLs: set kafka.brokers to a cluster with an authorizer, or leave manage_acls off".to_owned(),
            });
        }
        for (i, sub) in c.subscriptions.iter().enumerate() {
            fetch_wait(
                format!("subscriptions[{i}].upstream.fetch_wait_ms"),
                sub.upstream.fetch_wait_ms,
            )?;
        }
        Ok(())
    }

    /// Each feed's definition and its password.
    fn feed_definitions(&self, c: &mut Config) -> Result<(), ConfigError> {
        for (i, feed) in c.feeds.iter_mut().enumerate() {
            feed.validate(&format!("feeds[{i}]"))
                .map_err(|(key, reason)| ConfigError::BadValue {
                    key,
                    origin: self.origin(""),
                    reason,
                })?;
            feed.resolve_secrets(i)?;
        }
        Ok(())
    }

    /// Each subscription: its password, name, topics and batch size.
    fn subscriptions(&self, c: &mut Config) -> Result<(), ConfigError> {
        for (i, sub) in c.subscriptions.iter_mut().enumerate() {
            sub.resolve_secrets(i)?;
        }
        let mut subs = std::collections::BTreeSet::new();
        for (i, sub) in c.subscriptions.iter().enumerate() {
            let bad = |key: &str, reason: String| ConfigError::BadValue {
                key: format!("subscriptions[{i}].{key}"),
                origin: self.origin(""),
                reason,
            };
            crate::domain::topics::validate_subscription_name(&sub.name)
                .map_err(|e| bad("name", e))?;
            let tls = match &sub.sink {
                SinkConfig::Postgres(c) => Some(c.tls()),
                SinkConfig::Mysql(c) => Some(c.tls()),
                SinkConfig::Sqlite(_) | SinkConfig::Kafka(_) => None,
            };
            if let Some(Err((key, reason))) = tls.map(|t| t.check()) {
                return Err(bad(&format!("sink.{key}"), reason));
            }
            if !subs.insert(sub.name.clone()) {
                return Err(bad(
                    "name",
                    format!("subscription name {:?} is used twice", sub.name),
                ));
            }
            if sub.tables.is_empty() {
                return Err(bad(
                    "tables",
                    "no topics: add [[subscriptions.tables]] entries with a topic".to_owned(),
                ));
            }
            if sub.tables.len() > MAX_SUBSCRIPTION_TOPICS {
                return Err(bad(
                "tables",
                format!(
                    "{} tables: a subscription reads at most {MAX_SUBSCRIPTION_TOPICS} topics (its status to the upper node names them all); split it into several subscriptions",
                    sub.tables.len()
                ),
            ));
            }
            if sub.batch_size == 0 {
                return Err(bad("batch_size", "must be at least 1".to_owned()));
            }
        }
        Ok(())
    }

    /// The API tokens and the admin's secrets.
    fn tokens(&self, c: &Config) -> Result<(), ConfigError> {
        for (i, t) in c.auth.tokens.iter().enumerate() {
            let bad = |key: &str, reason: String| ConfigError::BadValue {
                key: format!("auth.tokens[{i}].{key}"),
                origin: self.origin(""),
                reason,
            };
            crate::domain::principal::Principal::parse(&t.principal)
                .map_err(|e| bad("principal", e))?;
            if t.sha256.len() != 64 || !t.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad("sha256", "not a hex SHA-256 (64 hex digits): use the output of `echo -n \"$TOKEN\" | sha256sum`".to_owned()));
            }
        }
        validate_secrets(&c.secrets).map_err(|(key, reason)| ConfigError::BadValue {
            key,
            origin: self.origin(""),
            reason,
        })?;
        Ok(())
    }

    /// One standard per dataset, each valid.
    fn standards(&self, c: &Config) -> Result<(), ConfigError> {
        let mut standardised = std::collections::BTreeSet::new();
        for (i, st) in c.standards.iter().enumerate() {
            let bad = |key: &str, reason: String| ConfigError::BadValue {
                key: format!("standards[{i}].{key}"),
                origin: self.origin(""),
                reason,
            };
            if !standardised.insert(st.dataset.clone()) {
                return Err(bad(
                    "dataset",
                    format!("dataset {} has two standards", st.dataset),
                ));
            }
            crate::standards::DatasetStandard::new(st).map_err(|(key, reason)| bad(key, reason))?;
        }
        Ok(())
    }

    /// Each share: within this node's jurisdiction, once per subscriber and
    /// dataset, its secret, its policy and what it discloses.
    fn shares(&self, c: &mut Config) -> Result<(), ConfigError> {
        let mut shares = std::collections::BTreeSet::new();
        let node_code = c.node.code.clone();
        for (i, share) in c.shares.iter_mut().enumerate() {
            let bad = |key: &str, reason: String| ConfigError::BadValue {
                key: format!("shares[{i}].{key}"),
                origin: self.origin(""),
                reason,
            };
            if let Err(reason) = node_code.may_share_with(&share.subscriber) {
                return Err(bad("subscriber", reason));
            }
            if !shares.insert((share.subscriber.to_string(), share.dataset.clone())) {
                return Err(bad(
                    "dataset",
                    format!(
                        "dataset {} is shared with {} twice",
                        share.dataset, share.subscriber
                    ),
                ));
            }
            if let Some(var) = &share.secret_env {
                share.secret = Some(std::env::var(var).map_err(|_| {
                    bad(
                        "secret_env",
                        format!("environment variable {var} is not set"),
                    )
                })?);
            }
            let policy = share.policy().map_err(|e| {
                let (key, reason) = e.split_once(": ").unwrap_or(("fields", e.as_str()));
                bad(key, reason.to_owned())
            })?;
            if let Some(d) = crate::domain::disclosure::check(
                &policy.fields,
                share.region_column.as_deref(),
                &share.accept_disclosure,
            )
            .first()
            {
                return Err(bad(
                    &format!("fields.{}", d.revealing),
                    d.to_string().replace(
                        &format!("fields.{}.accept_disclosure = true", d.revealing),
                        &format!("accept_disclosure = [\"{}\"]", d.revealing),
                    ),
                ));
            }
            let hashed = policy
                .fields
                .values()
                .any(|r| *r == crate::domain::policy::FieldRule::Hashed);
            if hashed && share.secret.as_deref().unwrap_or("").len() < 16 {
                return Err(bad(
                "secret_env",
                "hashed fields need a secret of at least 16 bytes: set secret_env to a variable holding it (each subscription its own)".to_owned(),
            ));
            }
        }
        Ok(())
    }

    /// No feed fills a dataset received from the upper node; feed names
    /// are unique.
    fn feed_datasets(&self, c: &Config) -> Result<(), ConfigError> {
        let cascaded = c.cascaded_datasets();
        for (i, feed) in c.feeds.iter().enumerate() {
            if let Some((d, via)) = feed
                .datasets()
                .into_iter()
                .find_map(|d| cascaded.get_key_value(d))
            {
                return Err(ConfigError::BadValue {
                key: format!("feeds[{i}].tables"),
                origin: self.origin(""),
                reason: format!("dataset {d} is received from the upper node through subscription {via}: no local feed may fill it"),
            });
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, feed) in c.feeds.iter().enumerate() {
            if !names.insert(feed.name().to_owned()) {
                return Err(ConfigError::BadValue {
                    key: format!("feeds[{i}].name"),
                    origin: self.origin(""),
                    reason: format!("feed name {:?} is used twice", feed.name()),
                });
            }
        }
        Ok(())
    }
}

fn toml_check(text: &str) -> Result<(), String> {
    config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml))
        .build()
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Turns a serde error at `key` into a [`ConfigError`] naming the key and
/// where its value came from.
fn classify(
    key: String,
    reason: String,
    file: Option<&Path>,
    env: &BTreeMap<String, String>,
) -> ConfigError {
    if let Some(rest) = reason.strip_prefix("unknown field `") {
        // serde_path_to_error's path already ends with the unknown field.
        let (field, expected) = rest.split_once('`').unwrap_or((rest, ""));
        let expected = expected.split(" for key `").next().unwrap_or_default();
        let full_key = if key.is_empty() || key == "." {
            field.to_owned()
        } else {
            key
        };
        let known = expected
            .trim_start_matches(',')
            .trim()
            .trim_start_matches("expected ")
            .trim_start_matches("one of ")
            .to_owned();
        let hint = if known.is_empty() {
            "remove it".to_owned()
        } else {
            format!("remove it or use one of: {known}")
        };
        return ConfigError::UnknownKey {
            origin: origin_name(file, env, &full_key),
            key: full_key,
            hint,
        };
    }
    // config's own errors already say "for key `x`"; keep only the cause.
    let reason = match reason.split_once(" for key `") {
        Some((cause, _)) => cause.to_owned(),
        None => reason,
    };
    ConfigError::BadValue {
        origin: origin_name(file, env, &key),
        key,
        reason,
    }
}

/// Names where a key's value came from: its environment variable when one is
/// set, otherwise the file.
fn origin_name(file: Option<&Path>, env: &BTreeMap<String, String>, key: &str) -> String {
    let var = env_var_name(key);
    if !key.is_empty() && env.keys().any(|k| k.eq_ignore_ascii_case(&var)) {
        return format!("environment variable {var}");
    }
    match file {
        Some(path) => path.display().to_string(),
        None => "the environment".to_owned(),
    }
}

/// The environment variable that sets a dotted key: `kafka.brokers` →
/// `BACKFLOW_KAFKA__BROKERS`.
pub fn env_var_name(key: &str) -> String {
    format!(
        "{ENV_PREFIX}_{}",
        key.split('.')
            .map(str::to_uppercase)
            .collect::<Vec<_>>()
            .join(ENV_SEPARATOR)
    )
}

// ---- [[secrets]] and [api_feeds]: what feeds registered through the API
// may use (applied by crate::admission).

/// A secret an admin binds to one department (`[[secrets]]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretConfig {
    /// The name feeds use (`password_secret`).
    pub name: String,
    /// The department whose feeds may use it.
    pub department: String,
    /// Environment variable holding it.
    #[serde(default)]
    pub env: Option<String>,
    /// File holding it (first line; its line ending stripped).
    #[serde(default)]
    pub file: Option<PathBuf>,
}

/// Where feeds registered through the API may connect (`[api_feeds]`).
/// With nothing allowed, no such feed connects anywhere.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiFeedsConfig {
    /// `host:port` of the databases they may read, as written in the feed.
    pub allowed_hosts: Vec<String>,
    /// The directory whose SQLite files `poll` feeds may read.
    pub sqlite_dir: Option<PathBuf>,
    /// The CAs (PEM) their database servers' certificates must chain to
    /// under `sslmode = "verify-ca"`/`"verify-full"`; the system's when
    /// unset. A feed registered through the API cannot name a file itself.
    pub ssl_ca_file: Option<PathBuf>,
}

/// The key naming a bound secret.
pub const SECRET_KEY: &str = "password_secret";

/// Checks `[[secrets]]` as configured; the error names the key.
pub fn validate_secrets(secrets: &[SecretConfig]) -> Result<(), (String, String)> {
    let mut names = std::collections::BTreeSet::new();
    for (i, s) in secrets.iter().enumerate() {
        let key = |k: &str| format!("secrets[{i}].{k}");
        if s.name.is_empty() || !names.insert(s.name.as_str()) {
            return Err((key("name"), format!("{:?} is empty or used twice", s.name)));
        }
        if s.department.is_empty() {
            return Err((key("department"), "must name a department".to_owned()));
        }
        if s.env.is_some() == s.file.is_some() {
            return Err((key("env"), "give exactly one of env and file".to_owned()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    fn no_env() -> Vec<(String, String)> {
        Vec::new()
    }

    #[test]
    fn debug_output_shows_no_kafka_password_and_no_registry_token() {
        let f = file(
            "[kafka]\nbrokers = \"a:9093\"\nproperties = { \"sasl.username\" = \"node\" }\n\
             properties_env = { \"sasl.password\" = \"NODE_PW\" }\n\
             [[subscriptions]]\nname = \"s\"\n\
             upstream = { brokers = \"b:9093\", registry_url = \"http://b\", registry_token_env = \"UP_TOKEN\", properties_env = { \"sasl.password\" = \"UP_PW\" } }\n\
             sink = { type = \"sqlite\", path = \"/tmp/s.db\" }\ntables = [{ topic = \"backflow.share.330106.d.t\" }]\n",
        );
        // Variables of this test alone: no other test reads them.
        for (k, v) in [
            ("NODE_PW", "node-secret-1"),
            ("UP_PW", "upstream-secret-2"),
            ("UP_TOKEN", "registry-token-3"),
        ] {
            std::env::set_var(k, v);
        }
        let cfg = Config::load_with_env(Some(f.path()), no_env()).unwrap();
        let shown = format!("{cfg:?}");
        assert!(shown.contains("sasl.password"), "{shown}");
        for secret in ["node-secret-1", "upstream-secret-2", "registry-token-3"] {
            assert!(!shown.contains(secret), "{secret} shows in {shown}");
        }
    }

    #[test]
    fn managing_acls_needs_the_nodes_own_principal() {
        // Mutual TLS: the principal comes from the certificate, which the
        // node cannot name by itself.
        let mtls = "[kafka]\nbrokers = \"a:9093\"\nmanage_acls = true\n\
                    properties = { \"security.protocol\" = \"SSL\" }\n";
        let err = Config::load_with_env(Some(file(mtls).path()), no_env()).unwrap_err();
        assert_eq!(err.key(), Some("kafka.principal"), "{err}");
        assert!(err.to_string().contains("mutual TLS"), "{err}");
        let named = format!("{mtls}principal = \"User:CN=backflow-330100\"\n");
        let cfg = Config::load_with_env(Some(file(&named).path()), no_env()).unwrap();
        assert_eq!(
            cfg.kafka.own_principal().as_deref(),
            Some("User:CN=backflow-330100")
        );
        // SASL: its user name.
        let sasl = "[kafka]\nbrokers = \"a:9093\"\nmanage_acls = true\n\
                    properties = { \"sasl.username\" = \"node\" }\n";
        let cfg = Config::load_with_env(Some(file(sasl).path()), no_env()).unwrap();
        assert_eq!(cfg.kafka.own_principal().as_deref(), Some("User:node"));
    }

    #[test]
    fn https_needs_both_the_certificate_and_its_key() {
        let f = file("[http]\ntls_cert = \"/etc/backflow/node.crt\"\n");
        let err = Config::load_with_env(Some(f.path()), no_env()).unwrap_err();
        assert_eq!(err.key(), Some("http.tls_key"), "{err}");
        let f = file("[http]\ntls_key = \"/etc/backflow/node.key\"\n");
        let err = Config::load_with_env(Some(f.path()), no_env()).unwrap_err();
        assert_eq!(err.key(), Some("http.tls_cert"), "{err}");
    }

    #[test]
    fn config_defaults_need_no_file() {
        let cfg = Config::load_with_env(None, no_env()).unwrap();
        assert_eq!(cfg, Config::default());
        assert!(
            cfg.kafka.brokers.is_none(),
            "default is the embedded broker"
        );
    }

    #[test]
    fn config_file_values_are_read() {
        let f = file(
            "[node]\ncode = \"330106\"\nname = \"Xihu\"\n[kafka]\nbrokers = \"127.0.0.1:9092\"\npartitions = 6\n[kafka.properties]\n\"security.protocol\" = \"plaintext\"\n",
        );
        let cfg = Config::load_with_env(Some(f.path()), no_env()).unwrap();
        assert_eq!(cfg.node.code.as_str(), "330106");
        assert_eq!(cfg.kafka.brokers.as_deref(), Some("127.0.0.1:9092"));
        assert_eq!(cfg.kafka.partitions, 6);
        assert_eq!(cfg.kafka.properties["security.protocol"], "plaintext");
    }

    #[test]
    fn config_environment_overrides_file() {
        let f = file("[kafka]\nbrokers = \"a:9092\"\npartitions = 6\n");
        let env = vec![
            ("BACKFLOW_KAFKA__BROKERS".to_owned(), "b:9092".to_owned()),
            (
                "BACKFLOW_HTTP__LISTEN".to_owned(),
                "0.0.0.0:9999".to_owned(),
            ),
            ("UNRELATED".to_owned(), "x".to_owned()),
        ];
        let cfg = Config::load_with_env(Some(f.path()), env).unwrap();
        assert_eq!(cfg.kafka.brokers.as_deref(), Some("b:9092"));
        assert_eq!(cfg.kafka.partitions, 6);
        assert_eq!(cfg.http.listen, "0.0.0.0:9999".parse().unwrap());
    }

    #[test]
    fn config_unknown_key_in_file_names_key_and_file() {
        let f = file("[kafka]\nbrokerz = \"a:9092\"\n");
        let err = Config::load_with_env(Some(f.path()), no_env()).unwrap_err();
        assert_eq!(err.key(), Some("kafka.brokerz"), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("kafka.brokerz"), "{msg}");
        assert!(msg.contains(&f.path().display().to_string()), "{msg}");
        assert!(msg.contains("brokers"), "suggests the known keys: {msg}");
    }

    #[test]
    fn config_reads_mysql_and_poll_feeds_and_names_the_poll_key_that_is_missing() {
        let f = file(
            "[[feeds]]\ntype = \"mysql\"\nname = \"m\"\nuser = \"u\"\ntables = [{ table = \"db.t\", dataset = \"d.t\" }]\n\n[[feeds]]\ntype = \"poll\"\nname = \"p\"\nengine = \"sqlite\"\npath = \"/tmp/x.db\"\ntables = [{ table = \"t\", dataset = \"d.u\", mode = \"bulk\" }]\n",
        );
        let cfg = Config::load_with_env(Some(f.path()), no_env()).unwrap();
        assert_eq!(cfg.feeds[0].name(), "m");
        assert_eq!(cfg.feeds[1].datasets(), vec!["d.u"]);
        let f = file(
            "[[feeds]]\ntype = \"poll\"\nname = \"p\"\nengine = \"sqlite\"\npath = \"/tmp/x.db\"\ntables = [{ table = \"t\", dataset = \"d.u\", mode = \"timestamp+incrementing\" }]\n",
        );
        let err = Config::load_with_env(Some(f.path()), no_env()).unwrap_err();
        assert_eq!(
            err.key(),
            Some("feeds[0].tables[0].timestamp_column"),
            "{err}"
        );
        let f = file("[[feeds]]\ntype = \"oracle\"\nname = \"o\"\n");
        let err = Config::load_with_env(Some(f.path()), no_env()).unwrap_err();
        assert!(err.to_string().contains("postgres, mysql, poll"), "{err}");
    }

    #[test]
    fn config_unknown_section_names_key() {
        let f = file("[kafak]\nbrokers = \"a:9092\"\n");
        let err = Config::load_with_env(Some(f.path()), no_env()).unwrap_err();
        assert_eq!(err.key(), Some("kafak"), "{err}");
    }

    #[test]
    fn config_bad_value_in_file_names_key_and_file() {
        let f = file("[kafka]\npartitions = \"many\"\n");
        let err = Config::load_with_env(Some(f.path()), no_env()).unwrap_err();
        assert_eq!(err.key(), Some("kafka.partitions"), "{err}");
        assert!(
            err.to_string().contains(&f.path().display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn a_topic_prefix_kafka_or_acls_cannot_use_names_its_key() {
        let cfg = Config::load_with_env(Some(file("[kafka]\n").path()), no_env()).unwrap();
        assert_eq!(cfg.kafka.topic_prefix, "backflow.");
        let f = file("[kafka]\ntopic_prefix = \"zj.hz.\"\n");
        let cfg = Config::load_with_env(Some(f.path()), no_env()).unwrap();
        assert_eq!(cfg.kafka.topic_prefix, "zj.hz.");
        let f = file("[kafka]\ntopic_prefix = \"zj/hz\"\n");
        let err = Config::load_with_env(Some(f.path()), no_env()).unwrap_err();
        assert_eq!(err.key(), Some("kafka.topic_prefix"), "{err}");
        let f = file("[[subscriptions]]\nname = \"s\"\nupstream = { brokers = \"b:9092\", registry_url = \"http://b\", topic_prefix = \"zj\" }\nsink = { type = \"sqlite\", path = \"/tmp/s.db\" }\ntables = [{ topic = \"zj.share.330106.d.t\" }]\n");
        let err = Config::load_with_env(Some(f.path()), no_env()).unwrap_err();
        assert_eq!(
            err.key(),
            Some("subscriptions[0].upstream.topic_prefix"),
            "{err}"
        );
    }

    #[test]
    fn a_session_timeout_kafka_refuses_names_its_key() {
        let cfg = Config::load_with_env(Some(file("[kafka]\n").path()), no_env()).unwrap();
        assert_eq!(cfg.kafka.session_timeout_ms, 10_000);
        let f = file("[kafka]\nsession_timeout_ms = 1000\n");
        let err = Config::load_with_env(Some(f.path()), no_env()).unwrap_err();
        assert_eq!(err.key(), Some("kafka.session_timeout_ms"), "{err}");
        assert!(err.to_string().contains("6000..=1800000"), "{err}");
    }

    #[test]
    fn fetch_waits_default_to_100_ms_and_an_impossible_one_names_its_key() {
        let f = file("[kafka]\nbrokers = \"a:9092\"\n[[subscriptions]]\nname = \"s\"\nupstream = { brokers = \"b:9092\", registry_url = \"http://b\" }\nsink = { type = \"sqlite\", path = \"/tmp/s.db\" }\ntables = [{ topic = \"backflow.share.330106.d.t\" }]\n");
        let cfg = Config::load_with_env(Some(f.path()), no_env()).unwrap();
        assert_eq!(cfg.kafka.fetch_wait_ms, 100);
        assert_eq!(cfg.subscriptions[0].upstream.fetch_wait_ms, 100);
        let f = file("[kafka]\nfetch_wait_ms = 10\n");
        let cfg = Config::load_with_env(Some(f.path()), no_env()).unwrap();
        assert_eq!(cfg.kafka.fetch_wait_ms, 10);
        for bad in ["0", "60000"] {
            let f = file(&format!("[kafka]\nfetch_wait_ms = {bad}\n"));
            let err = Config::load_with_env(Some(f.path()), no_env()).unwrap_err();
            assert_eq!(err.key(), Some("kafka.fetch_wait_ms"), "{err}");
            assert!(err.to_string().contains("1..=59000"), "{err}");
        }
        let f = file("[[subscriptions]]\nname = \"s\"\nupstream = { brokers = \"b:9092\", registry_url = \"http://b\", fetch_wait_ms = 400000 }\nsink = { type = \"sqlite\", path = \"/tmp/s.db\" }\ntables = [{ topic = \"backflow.share.330106.d.t\" }]\n");
        let err = Config::load_with_env(Some(f.path()), no_env()).unwrap_err();
        assert_eq!(
            err.key(),
            Some("subscriptions[0].upstream.fetch_wait_ms"),
            "{err}"
        );
    }

    #[test]
    fn config_bad_value_in_environment_names_variable() {
        let env = vec![(
            "BACKFLOW_HTTP__LISTEN".to_owned(),
            "not-an-address".to_owned(),
        )];
        let err = Config::load_with_env(None, env).unwrap_err();
        assert_eq!(err.key(), Some("http.listen"), "{err}");
        assert!(err.to_string().contains("BACKFLOW_HTTP__LISTEN"), "{err}");
    }

    #[test]
    fn config_unknown_key_in_environment_names_variable() {
        let env = vec![("BACKFLOW_KAFKA__BROKERZ".to_owned(), "a:9092".to_owned())];
        let err = Config::load_with_env(None, env).unwrap_err();
        assert_eq!(err.key(), Some("kafka.brokerz"), "{err}");
        assert!(err.to_string().contains("BACKFLOW_KAFKA__BROKERZ"), "{err}");
    }

    #[test]
    fn config_bad_division_code_says_what_is_expected() {
        let f = file("[node]\ncode = \"3301\"\n");
        let err = Config::load_with_env(Some(f.path()), no_env()).unwrap_err();
        assert_eq!(err.key(), Some("node.code"), "{err}");
        assert!(err.to_string().contains("six digits"), "{err}");
    }

    #[test]
    fn config_reads_postgres_feeds_and_names_bad_feed_keys() {
        let f = file(
            "[[feeds]]\ntype = \"postgres\"\nname = \"gongan-pg\"\nuser = \"backflow\"\ndatabase = \"gongan\"\ntables = [{ table = \"public.population\", dataset = \"gongan.population\" }]\n",
        );
        let cfg = Config::load_with_env(Some(f.path()), no_env()).unwrap();
        assert_eq!(cfg.feeds.len(), 1);
        assert_eq!(cfg.feeds[0].name(), "gongan-pg");
        let f = file("[[feeds]]\ntype = \"postgres\"\nname = \"x\"\nuser = \"u\"\ndatabase = \"d\"\ntables = []\nsnapshot = \"sometimes\"\n");
        let err = Config::load_with_env(Some(f.path()), no_env()).unwrap_err();
        assert!(err.to_string().contains("snapshot"), "{err}");
        let f = file("[[feeds]]\ntype = \"oracle\"\nname = \"x\"\n");
        let err = Config::load_with_env(Some(f.path()), no_env()).unwrap_err();
        assert!(err.to_string().contains("oracle"), "{err}");
    }

    #[test]
    fn config_reads_subscriptions_and_names_bad_sink_keys() {
        let f = file(
            "[[subscriptions]]\nname = \"d\"\nupstream = { brokers = \"k:9092\", registry_url = \"http://r:8480\" }\nsink = { type = \"sqlite\", path = \"/tmp/d.db\" }\ntables = [{ topic = \"backflow.share.330106.gongan.population\" }]\n",
        );
        let cfg = Config::load_with_env(Some(f.path()), no_env()).unwrap();
        assert_eq!(cfg.subscriptions.len(), 1);
        assert_eq!(cfg.subscriptions[0].batch_size, 5_000);
        assert_eq!(cfg.subscriptions[0].dlq_topic(), "backflow.sdlq.330106.d");
        let f = file(
            "[[subscriptions]]\nname = \"d\"\nupstream = { brokers = \"k:9092\", registry_url = \"http://r:8480\" }\nsink = { type = \"mysql\", user = \"u\", database = \"x\", prot = 1 }\ntables = [{ topic = \"t\" }]\n",
        );
        let err = Config::load_with_env(Some(f.path()), no_env()).unwrap_err();
        assert!(err.to_string().contains("prot"), "{err}");
        let f = file(
            "[[subscriptions]]\nname = \"d\"\nupstream = { brokers = \"k:9092\", registry_url = \"http://r:8480\" }\nsink = { type = \"sqlite\", path = \"/tmp/d.db\" }\ntables = []\n",
        );
        let err = Config::load_with_env(Some(f.path()), no_env()).unwrap_err();
        assert_eq!(err.key(), Some("subscriptions[0].tables"), "{err}");
        // The name becomes part of Kafka topic names and of the status the
        // upper node shows: a name Kafka or a reader would take otherwise
        // is refused, naming the key.
        for bad in ["户籍 人口", "a.b", "x\u{202e}y"] {
            let f = file(&format!(
                "[[subscriptions]]\nname = \"{bad}\"\nupstream = {{ brokers = \"k:9092\", registry_url = \"http://r:8480\" }}\nsink = {{ type = \"sqlite\", path = \"/tmp/d.db\" }}\ntables = [{{ topic = \"t\" }}]\n"
            ));
            let err = Config::load_with_env(Some(f.path()), no_env()).unwrap_err();
            assert_eq!(err.key(), Some("subscriptions[0].name"), "{bad}: {err}");
        }
        let tables: Vec<String> = (0..=MAX_SUBSCRIPTION_TOPICS)
            .map(|i| format!("{{ topic = \"backflow.share.330106.d.t{i}\" }}"))
            .collect();
        let f = file(&format!(
            "[[subscriptions]]\nname = \"d\"\nupstream = {{ brokers = \"k:9092\", registry_url = \"http://r:8480\" }}\nsink = {{ type = \"sqlite\", path = \"/tmp/d.db\" }}\ntables = [{}]\n",
            tables.join(", ")
        ));
        let err = Config::load_with_env(Some(f.path()), no_env()).unwrap_err();
        assert_eq!(err.key(), Some("subscriptions[0].tables"), "{err}");
    }

    #[test]
    fn config_reads_shares_and_names_bad_rules() {
        let share = "[[shares]]\nsubscriber = \"330106\"\ndataset = \"gongan.population\"\nregion_column = \"region_code\"\n";
        let f = file(&format!(
            "{share}fields = {{ id = \"plain\", id_number = \"masked:keep(6,4)\" }}\n"
        ));
        let cfg = Config::load_with_env(Some(f.path()), no_env()).unwrap();
        let policy = cfg.shares[0].policy().unwrap();
        assert_eq!(policy.prefix, "330106");
        let f = file(&format!(
            "{share}fields = {{ id = \"plain\", id_number = \"masked:keep(6)\" }}\n"
        ));
        let err = Config::load_with_env(Some(f.path()), no_env()).unwrap_err();
        assert_eq!(err.key(), Some("shares[0].fields.id_number"), "{err}");
        let f = file(&format!(
            "{share}fields = {{ id = \"plain\", phone = \"hashed\" }}\n"
        ));
        let err = Config::load_with_env(Some(f.path()), no_env()).unwrap_err();
        assert_eq!(err.key(), Some("shares[0].secret_env"), "{err}");
    }

    #[test]
    fn kafka_credentials_come_from_the_environment_and_a_missing_one_is_named() {
        let f = file(
            "[kafka]\nbrokers = \"k:9092\"\nproperties = { \"sasl.username\" = \"330100\" }\n\
             properties_env = { \"sasl.password\" = \"BACKFLOW_TEST_KAFKA_PASSWORD_9f3\" }\n",
        );
        let err = Config::load_with_env(Some(f.path()), no_env()).unwrap_err();
        assert_eq!(
            err.key(),
            Some("kafka.properties_env.sasl.password"),
            "{err}"
        );
        assert!(err.to_string().contains("BACKFLOW_TEST_KAFKA_PASSWORD_9f3"));
        std::env::set_var("BACKFLOW_TEST_KAFKA_PASSWORD_9f3", "s3cret");
        let cfg = Config::load_with_env(Some(f.path()), no_env()).unwrap();
        assert_eq!(cfg.kafka.properties["sasl.password"], "s3cret");
        assert_eq!(cfg.kafka.properties["sasl.username"], "330100");
    }

    #[test]
    fn upstream_registry_token_comes_from_a_variable_or_a_file_and_a_missing_one_is_named() {
        let sub = |setting: &str| {
            file(&format!(
                "[[subscriptions]]\nname = \"s\"\nupstream = {{ brokers = \"b:9092\", registry_url = \"http://b\"{setting} }}\n\
                 sink = {{ type = \"sqlite\", path = \"/tmp/s.db\" }}\ntables = [{{ topic = \"backflow.share.330106.d.t\" }}]\n"
            ))
        };
        let token_of = |f: &tempfile::NamedTempFile| {
            Config::load_with_env(Some(f.path()), no_env())
                .map(|c| c.subscriptions[0].upstream.registry_token.clone())
        };
        assert_eq!(token_of(&sub("")).unwrap(), None);

        let f = sub(", registry_token_env = \"BACKFLOW_TEST_REGISTRY_TOKEN_4c1\"");
        let err = token_of(&f).unwrap_err();
        assert_eq!(
            err.key(),
            Some("subscriptions[0].upstream.registry_token_env"),
            "{err}"
        );
        assert!(
            err.to_string().contains("BACKFLOW_TEST_REGISTRY_TOKEN_4c1"),
            "{err}"
        );
        std::env::set_var("BACKFLOW_TEST_REGISTRY_TOKEN_4c1", "t0ken-from-env");
        assert_eq!(token_of(&f).unwrap().as_deref(), Some("t0ken-from-env"));

        let held = file("t0ken-from-file\n");
        let f = sub(&format!(
            ", registry_token_file = \"{}\"",
            held.path().display()
        ));
        assert_eq!(token_of(&f).unwrap().as_deref(), Some("t0ken-from-file"));
        // Never shown with the configuration.
        let shown =
            serde_json::to_string(&Config::load_with_env(Some(f.path()), no_env()).unwrap())
                .unwrap();
        assert!(!shown.contains("t0ken-from-file"), "{shown}");

        let f = sub(", registry_token_file = \"/nonexistent/backflow-token\"");
        let err = token_of(&f).unwrap_err();
        assert_eq!(
            err.key(),
            Some("subscriptions[0].upstream.registry_token_file"),
            "{err}"
        );
        assert!(
            err.to_string().contains("/nonexistent/backflow-token"),
            "{err}"
        );

        let empty = file("\n");
        let f = sub(&format!(
            ", registry_token_file = \"{}\"",
            empty.path().display()
        ));
        let err = token_of(&f).unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");

        let f = sub(&format!(
            ", registry_token_env = \"BACKFLOW_TEST_REGISTRY_TOKEN_4c1\", registry_token_file = \"{}\"",
            held.path().display()
        ));
        assert!(token_of(&f).unwrap_err().to_string().contains("not both"));
    }

    #[test]
    fn config_syntax_error_names_file() {
        let f = file("[kafka\nbrokers = 1\n");
        let err = Config::load_with_env(Some(f.path()), no_env()).unwrap_err();
        assert!(matches!(err, ConfigError::Syntax { .. }), "{err}");
        assert!(err.to_string().contains(&f.path().display().to_string()));
    }

    #[test]
    fn division_code_jurisdiction_prefix_drops_trailing_zero_pairs() {
        let p = |c: &str| {
            DivisionCode::parse(c)
                .unwrap()
                .jurisdiction_prefix()
                .to_owned()
        };
        assert_eq!(p("330000"), "33");
        assert_eq!(p("330100"), "3301");
        assert_eq!(p("330106"), "330106");
        assert_eq!(p("330010"), "330010");
    }

    #[test]
    fn a_node_shares_only_inside_its_jurisdiction() {
        let city = DivisionCode::parse("330100").unwrap();
        let code = |c: &str| DivisionCode::parse(c).unwrap();
        assert!(city.may_share_with(&code("330106")).is_ok());
        for outside in ["330200", "330100", "320106", "330000"] {
            let e = city.may_share_with(&code(outside)).unwrap_err();
            assert!(e.contains("3301"), "{outside}: {e}");
        }
        let f = file("[node]\ncode = \"330100\"\n[[shares]]\nsubscriber = \"330201\"\ndataset = \"gongan.population\"\nregion_column = \"region_code\"\nfields = { id = \"plain\" }\n");
        let err = Config::load_with_env(Some(f.path()), no_env()).unwrap_err();
        assert_eq!(err.key(), Some("shares[0].subscriber"), "{err}");
    }

    #[test]
    fn env_var_name_maps_sections() {
        assert_eq!(env_var_name("kafka.brokers"), "BACKFLOW_KAFKA__BROKERS");
    }
}
