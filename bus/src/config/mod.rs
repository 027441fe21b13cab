//! Node configuration: a TOML file layered with `BACKFLOW_<SECTION>__<KEY>`
//! environment variables.
//!
//! This module assembles the sections, each defined by its owner
//! (`[kafka]` in `kafka`, `[[feeds]]` in `source::config`,
//! `[[subscriptions]]` in `subscribe::config`, `[[shares]]` in
//! `distributor::share`, `[audit]` in `state::audit`, ...), loads them and
//! runs the checks that need more than one section. The types are
//! re-exported here for the binary.
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
//! transactions = true      # feeds write each change exactly once (the default)
//!
//! [http]
//! listen = "0.0.0.0:8480"
//!
//! [log]
//! format = "json"          # or "human"
//! level = "info,backflow=debug"
//! ```

use std::collections::BTreeMap;

use std::path::Path;

use serde::{Deserialize, Serialize};

pub mod section;

pub use crate::auth::{AuthConfig, TokenConfig};
pub use crate::config::section::ConfigError;
pub use crate::distributor::share::ShareConfig;
pub use crate::domain::division::{DivisionCode, NodeConfig};
pub use crate::http::{http_client_trusting, HttpConfig};
pub use crate::kafka::KafkaConfig;
pub use crate::runtime::telemetry::{LogConfig, LogFormat};
pub use crate::runtime::RuntimeConfig;
pub use crate::source::config::{
    validate_secrets, ApiFeedsConfig, FeedConfig, SecretConfig, SECRET_KEY,
};
pub use crate::standards::StandardConfig;
pub use crate::state::audit::AuditConfig;
use crate::subscribe::config::MAX_FETCH_WAIT_MS;
pub use crate::subscribe::config::{
    BusSinkConfig, SinkConfig, SubscriptionConfig, TableMapping, UpstreamConfig,
    MAX_SUBSCRIPTION_TOPICS,
};

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
        // A transaction must commit well within its timeout (60 s), after
        // which the brokers abort it.
        if !(1..=10_000).contains(&c.kafka.transaction_interval_ms) {
            return Err(ConfigError::BadValue {
                key: "kafka.transaction_interval_ms".to_owned(),
                origin: self.origin("kafka.transaction_interval_ms"),
                reason: format!(
                    "{} ms is outside 1..=10000; the default is 25 (longer: more changes per second, later visible)",
                    c.kafka.transaction_interval_ms
                ),
            });
        }
        if let Some(r) = &c.kafka.replica {
            let fine = (1..=64).contains(&r.len())
                && r.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            if !fine {
                return Err(ConfigError::BadValue {
                    key: "kafka.replica".to_owned(),
                    origin: self.origin("kafka.replica"),
                    reason: "a replica name is 1 to 64 letters, digits, '.', '_' or '-' (e.g. the pod name); leave it out to use the host name".to_owned(),
                });
            }
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
    fn feeds_write_in_transactions_by_default_and_a_bad_interval_names_its_key() {
        let cfg = Config::load_with_env(Some(file("[kafka]\n").path()), no_env()).unwrap();
        assert!(cfg.kafka.transactions);
        assert_eq!(cfg.kafka.transaction_interval_ms, 25);
        let env = vec![(
            "BACKFLOW_KAFKA__TRANSACTIONS".to_owned(),
            "false".to_owned(),
        )];
        let cfg = Config::load_with_env(None, env).unwrap();
        assert!(!cfg.kafka.transactions);
        for bad in ["0", "60000"] {
            let f = file(&format!("[kafka]\ntransaction_interval_ms = {bad}\n"));
            let err = Config::load_with_env(Some(f.path()), no_env()).unwrap_err();
            assert_eq!(err.key(), Some("kafka.transaction_interval_ms"), "{err}");
            assert!(err.to_string().contains("1..=10000"), "{err}");
        }
    }

    #[test]
    fn a_replica_name_defaults_to_the_host_and_a_bad_one_names_its_key() {
        let cfg = Config::load_with_env(Some(file("[kafka]\n").path()), no_env()).unwrap();
        let host = cfg.kafka.replica_name();
        assert!(!host.is_empty() && host.len() <= 64, "{host}");
        assert!(
            host.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')),
            "a transactional id part: {host}"
        );
        let f = file("[kafka]\nreplica = \"backflow-1\"\n");
        let cfg = Config::load_with_env(Some(f.path()), no_env()).unwrap();
        assert_eq!(cfg.kafka.replica_name(), "backflow-1");
        for bad in [
            "\"\"",
            "\"a b\"",
            "\"x/y\"",
            &format!("\"{}\"", "r".repeat(65)),
        ] {
            let f = file(&format!("[kafka]\nreplica = {bad}\n"));
            let err = Config::load_with_env(Some(f.path()), no_env()).unwrap_err();
            assert_eq!(err.key(), Some("kafka.replica"), "{err}");
            assert!(err.to_string().contains("pod name"), "{err}");
        }
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
