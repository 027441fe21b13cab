//! The configuration of feeds: `[[feeds]]` (one source connector each and
//! the datasets it fills), and what feeds registered through the API may
//! use, `[[secrets]]` bound to departments and `[api_feeds]` (applied by
//! `admission`). Each value is checked where it is read, and an error
//! names the key.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::section::{resolve_password, ConfigError};

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
