//! What a feed registered through the API may use: the secrets an admin
//! bound to its department, and the destinations an admin allowed.
//!
//! A feed of the configuration file is the admin's own and names its
//! password as it likes (`password_env`, `password_file`). A feed an owner
//! registers through the API chooses among what the admin allowed, never a
//! raw environment variable or file of the node (which could be another
//! department's database password, the Kafka credentials or a share's HMAC
//! key), and connects only to allowed hosts (or reads SQLite files only
//! under one directory), so the node cannot be pointed at a server that
//! collects its credentials or at files of its own.
//!
//! ```toml
//! [[secrets]]
//! name = "gongan-pg"            # what feeds name in `password_secret`
//! department = "gongan"         # who may use it
//! env = "GONGAN_PG_PASSWORD"    # or file = "/run/secrets/gongan-pg"
//!
//! [api_feeds]
//! allowed_hosts = ["10.0.0.5:5432", "db.minzheng.local:3306"]
//! sqlite_dir = "/var/lib/backflow/poll"
//! ```
//!
//! The same rules are applied when a feed is registered (a refusal naming
//! the rule) and again each time the node starts one from the catalog, so a
//! catalog record written around the API gains nothing. Pure but for
//! reading the bound secret and resolving the SQLite path.

use std::path::Path;

pub use crate::source::config::validate_secrets;
use crate::source::config::ApiFeedsConfig;
use crate::source::config::FeedConfig;
use crate::source::config::SecretConfig;
use crate::source::config::SECRET_KEY;

/// Why a feed is not admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The caller may not do this (HTTP 403).
    #[error("{0}")]
    Forbidden(String),
    /// The definition is not acceptable as written (HTTP 422).
    #[error("{0}")]
    Invalid(String),
}

/// Keys through which a definition would pick a password itself.
const CHOSEN_SECRET_KEYS: [&str; 3] = ["password", "password_env", "password_file"];
/// Keys through which a definition would name a file of the node.
const NODE_FILE_KEYS: [&str; 1] = ["ssl_ca_file"];
/// The admin's rules for feeds registered through the API.
#[derive(Debug, Clone, Default)]
pub struct FeedAdmission {
    secrets: Vec<SecretConfig>,
    feeds: ApiFeedsConfig,
    /// Datasets received from an upper node, with the subscription each
    /// comes through: no feed fills them.
    cascaded: std::collections::BTreeMap<String, String>,
}

impl FeedAdmission {
    /// The rules of a node's configuration.
    pub fn new(secrets: Vec<SecretConfig>, feeds: ApiFeedsConfig) -> Self {
        Self {
            secrets,
            feeds,
            cascaded: Default::default(),
        }
    }

    /// The datasets received from an upper node (see
    /// `Config::cascaded_datasets`), which no feed may fill.
    pub fn with_cascaded(mut self, cascaded: std::collections::BTreeMap<String, String>) -> Self {
        self.cascaded = cascaded;
        self
    }

    /// Refuses a definition that names a password, an environment variable
    /// or a file of the node itself (checked on the JSON as sent, before
    /// anything of it is parsed or read).
    pub fn refuse_node_keys(
        &self,
        definition: &serde_json::Value,
        department: Option<&str>,
    ) -> Result<(), Refusal> {
        if let Some(key) = CHOSEN_SECRET_KEYS
            .iter()
            .find(|k| definition.get(**k).is_some())
        {
            return Err(Refusal::Invalid(format!(
                "{key}: not accepted for a feed registered through the API (it would let the caller pick any variable or file of the node): name a secret an admin bound to the department with {SECRET_KEY} ({})",
                self.bound_list(department)
            )));
        }
        if let Some(key) = NODE_FILE_KEYS
            .iter()
            .find(|k| definition.get(**k).is_some())
        {
            return Err(Refusal::Invalid(format!(
                "{key}: not accepted for a feed registered through the API (it names a file of the node); the CAs of feeds registered through the API are the admin's [api_feeds] ssl_ca_file, or the system's"
            )));
        }
        Ok(())
    }

    /// Checks a feed's definition as registered through the API by a
    /// principal acting for `departments` (`None`: an admin, for whom the
    /// departments are those of the datasets the feed fills), and returns
    /// the feed with its bound secret resolved when `resolve` is set.
    /// `definition` is the stored JSON (with `type` and `password_secret`).
    pub fn admit(
        &self,
        feed: &FeedConfig,
        definition: &serde_json::Value,
        department: Option<&str>,
        resolve: bool,
    ) -> Result<FeedConfig, Refusal> {
        self.refuse_node_keys(definition, department)?;
        let datasets = feed.datasets();
        if datasets.is_empty() {
            return Err(Refusal::Invalid(
                "tables: a feed fills at least one dataset of its department".to_owned(),
            ));
        }
        for id in &datasets {
            crate::domain::topics::validate_dataset_id(id).map_err(Refusal::Invalid)?;
            if let Some(via) = self.cascaded.get(*id) {
                return Err(Refusal::Forbidden(format!(
                    "dataset {id} is received from the upper node through subscription {via}: it is the upper node's, and no local feed may fill it"
                )));
            }
        }
        let departments: Vec<&str> = match department {
            Some(d) => vec![d],
            None => {
                let mut d: Vec<&str> = datasets
                    .iter()
                    .map(|id| id.split_once('.').map_or(*id, |(d, _)| d))
                    .collect();
                d.sort_unstable();
                d.dedup();
                d
            }
        };
        if let Some(d) = datasets.iter().find(|id| {
            !departments
                .iter()
                .any(|dep| id.split_once('.').is_some_and(|(x, _)| x == *dep))
        }) {
            return Err(Refusal::Forbidden(format!(
                "dataset {d} is not of department {}: a feed fills its own department's datasets",
                departments.join(", ")
            )));
        }
        self.check_destination(feed)?;
        let mut feed = feed.clone();
        let ca = self
            .feeds
            .ssl_ca_file
            .as_ref()
            .filter(|_| feed.tls().enabled())
            .map(|p| p.to_string_lossy().into_owned());
        match &mut feed {
            FeedConfig::Postgres(c) => c.ssl_ca_file = ca,
            FeedConfig::Mysql(c) => c.ssl_ca_file = ca,
            FeedConfig::Poll(c) => c.ssl_ca_file = ca,
        }
        let named = definition.get(SECRET_KEY).and_then(|v| v.as_str());
        if let Some(name) = named {
            let secret = self
                .secrets
                .iter()
                .find(|s| s.name == name)
                .filter(|s| departments.iter().all(|d| *d == s.department))
                .ok_or_else(|| {
                    Refusal::Forbidden(format!(
                        "{SECRET_KEY}: no secret {name:?} is bound to department {} ({})",
                        departments.join(", "),
                        self.bound_list(department)
                    ))
                })?;
            if resolve {
                set_password(
                    &mut feed,
                    Some(read_secret(secret).map_err(Refusal::Invalid)?),
                );
            }
        } else if let Some(other) = definition.as_object().and_then(|o| {
            o.keys()
                .find(|k| k.contains("password") || k.contains("secret"))
        }) {
            return Err(Refusal::Invalid(format!(
                "{other}: unknown; a feed names its password with {SECRET_KEY}"
            )));
        } else {
            set_password(&mut feed, None);
        }
        Ok(feed)
    }

    /// A feed of the catalog as the node runs it: checked again under the
    /// rules in force (its record may have been written around the API, or
    /// before the rules changed), its secret resolved.
    pub fn admit_record(
        &self,
        record: &crate::state::catalog::FeedRecord,
    ) -> Result<FeedConfig, Refusal> {
        let department = match record.owner.as_deref() {
            Some("admin") => None,
            Some(o) => match o.strip_prefix("owner:") {
                Some(d) if !d.is_empty() => Some(d),
                _ => {
                    return Err(Refusal::Forbidden(format!(
                        "feed {} was registered by {o}, which may not register feeds",
                        record.name
                    )))
                }
            },
            None => {
                return Err(Refusal::Forbidden(format!(
                    "feed {} was registered before feeds had owners and secrets were bound: register it again (PUT /api/feeds/{})",
                    record.name, record.name
                )))
            }
        };
        // Before parsing: parsing checks a CA file by reading it.
        self.refuse_node_keys(&record.config, department)?;
        let feed = record.parse().map_err(Refusal::Invalid)?;
        self.admit(&feed, &record.config, department, true)
    }

    /// The secrets bound to a department, for error messages.
    fn bound_list(&self, department: Option<&str>) -> String {
        let names: Vec<&str> = self
            .secrets
            .iter()
            .filter(|s| department.is_none_or(|d| s.department == d))
            .map(|s| s.name.as_str())
            .collect();
        if names.is_empty() {
            "none is bound yet: an admin adds [[secrets]] with name, department and env or file"
                .to_owned()
        } else {
            format!("bound: {}", names.join(", "))
        }
    }

    /// Whether the feed connects only where an admin allowed.
    fn check_destination(&self, feed: &FeedConfig) -> Result<(), Refusal> {
        use backflow_connectors::poll::PollEngine;
        let (host, port) = match feed {
            FeedConfig::Postgres(c) => (c.host.as_str(), c.port),
            FeedConfig::Mysql(c) => (c.host.as_str(), c.port),
            FeedConfig::Poll(c) => match c.engine {
                PollEngine::Postgres => (c.host.as_str(), c.port.unwrap_or(5432)),
                PollEngine::Mysql => (c.host.as_str(), c.port.unwrap_or(3306)),
                PollEngine::Sqlite => {
                    let path = c.path.as_deref().unwrap_or(Path::new(""));
                    return self.check_sqlite(path);
                }
            },
        };
        let target = format!("{host}:{port}");
        if self
            .feeds
            .allowed_hosts
            .iter()
            .any(|a| a.eq_ignore_ascii_case(&target))
        {
            Ok(())
        } else {
            Err(Refusal::Forbidden(format!(
                "host {target} is not among the databases feeds registered through the API may read (api_feeds.allowed_hosts: {}); an admin adds it there",
                if self.feeds.allowed_hosts.is_empty() {
                    "none".to_owned()
                } else {
                    self.feeds.allowed_hosts.join(", ")
                }
            )))
        }
    }

    /// Whether a SQLite file is inside the allowed directory, symbolic
    /// links and `..` resolved.
    fn check_sqlite(&self, path: &Path) -> Result<(), Refusal> {
        let refuse = |why: String| {
            Refusal::Forbidden(format!(
                "path {}: {why}; poll feeds registered through the API read SQLite files only under api_feeds.sqlite_dir{}",
                path.display(),
                match &self.feeds.sqlite_dir {
                    Some(d) => format!(" ({})", d.display()),
                    None => " (not set: none may)".to_owned(),
                }
            ))
        };
        let Some(dir) = &self.feeds.sqlite_dir else {
            return Err(refuse("not allowed".to_owned()));
        };
        let dir = dir
            .canonicalize()
            .map_err(|e| refuse(format!("the directory cannot be resolved ({e})")))?;
        let file = path
            .canonicalize()
            .map_err(|e| refuse(format!("cannot be resolved ({e})")))?;
        if file.starts_with(&dir) {
            Ok(())
        } else {
            Err(refuse("outside the allowed directory".to_owned()))
        }
    }
}

/// Reads a bound secret.
fn read_secret(secret: &SecretConfig) -> Result<String, String> {
    match (&secret.env, &secret.file) {
        (Some(var), None) => std::env::var(var).map_err(|_| {
            format!(
                "secret {}: environment variable {var} is not set on the node",
                secret.name
            )
        }),
        (None, Some(file)) => std::fs::read_to_string(file)
            .map(|t| t.trim_end_matches(['\n', '\r']).to_owned())
            .map_err(|e| {
                format!(
                    "secret {}: cannot read {}: {e}",
                    secret.name,
                    file.display()
                )
            }),
        _ => Err(format!(
            "secret {}: give exactly one of env and file",
            secret.name
        )),
    }
}

fn set_password(feed: &mut FeedConfig, password: Option<String>) {
    match feed {
        FeedConfig::Postgres(c) => c.password = password,
        FeedConfig::Mysql(c) => c.password = password,
        FeedConfig::Poll(c) => c.password = password,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn feed(def: &serde_json::Value) -> FeedConfig {
        let mut v = def.clone();
        v.as_object_mut().unwrap().remove(SECRET_KEY);
        v["name"] = json!("f");
        serde_json::from_value(v).unwrap()
    }

    fn rules() -> FeedAdmission {
        FeedAdmission::new(
            vec![SecretConfig {
                name: "ga-pg".into(),
                department: "ga".into(),
                env: Some("BACKFLOW_ADMISSION_TEST_SECRET".into()),
                file: None,
            }],
            ApiFeedsConfig {
                allowed_hosts: vec!["10.0.0.5:5432".into()],
                sqlite_dir: None,
                ssl_ca_file: Some("/etc/backflow/db-ca.pem".into()),
            },
        )
    }

    #[test]
    fn an_api_feed_names_no_ca_file_and_gets_the_admins() {
        let def = pg(
            "10.0.0.5",
            json!({"sslmode": "verify-full", "ssl_ca_file": "/etc/backflow/kafka.key"}),
        );
        let e = rules()
            .admit(&feed(&def), &def, Some("ga"), false)
            .unwrap_err();
        assert!(
            matches!(&e, Refusal::Invalid(r) if r.starts_with("ssl_ca_file") && r.contains("api_feeds")),
            "{e}"
        );
        let def = pg("10.0.0.5", json!({"sslmode": "verify-full"}));
        let admitted = rules().admit(&feed(&def), &def, Some("ga"), false).unwrap();
        let FeedConfig::Postgres(c) = admitted else {
            panic!()
        };
        assert_eq!(c.ssl_ca_file.as_deref(), Some("/etc/backflow/db-ca.pem"));
        // Without TLS there is no CA to use.
        let def = pg("10.0.0.5", json!({}));
        let FeedConfig::Postgres(c) = rules().admit(&feed(&def), &def, Some("ga"), false).unwrap()
        else {
            panic!()
        };
        assert_eq!(c.ssl_ca_file, None);
    }

    fn pg(host: &str, extra: serde_json::Value) -> serde_json::Value {
        let mut v = json!({"type": "postgres", "host": host, "port": 5432, "user": "u", "database": "d",
            "tables": [{"table": "public.t", "dataset": "ga.t"}]});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        v
    }

    #[test]
    fn a_bound_secret_on_an_allowed_host_is_admitted_and_resolved() {
        std::env::set_var("BACKFLOW_ADMISSION_TEST_SECRET", "s3cret");
        let def = pg("10.0.0.5", json!({"password_secret": "ga-pg"}));
        let admitted = rules().admit(&feed(&def), &def, Some("ga"), true).unwrap();
        let FeedConfig::Postgres(c) = admitted else {
            panic!()
        };
        assert_eq!(c.password.as_deref(), Some("s3cret"));
        // Checked but not resolved: nothing read.
        let checked = rules().admit(&feed(&def), &def, Some("ga"), false).unwrap();
        let FeedConfig::Postgres(c) = checked else {
            panic!()
        };
        assert_eq!(c.password, None);
    }

    #[test]
    fn chosen_secrets_other_departments_secrets_and_other_hosts_are_refused() {
        let def = pg("10.0.0.5", json!({"password_env": "KAFKA_PASSWORD"}));
        let e = rules()
            .admit(&feed(&def), &def, Some("ga"), true)
            .unwrap_err();
        assert!(
            matches!(&e, Refusal::Invalid(r) if r.contains("password_env") && r.contains("ga-pg")),
            "{e}"
        );
        let mut def = pg("10.0.0.5", json!({"password_secret": "ga-pg"}));
        def["tables"] = json!([{"table": "public.t", "dataset": "mz.t"}]);
        let e = rules()
            .admit(&feed(&def), &def, Some("mz"), true)
            .unwrap_err();
        assert!(
            matches!(&e, Refusal::Forbidden(r) if r.contains("no secret")),
            "{e}"
        );
        let def = pg("evil.example", json!({}));
        let e = rules()
            .admit(&feed(&def), &def, Some("ga"), true)
            .unwrap_err();
        assert!(
            matches!(&e, Refusal::Forbidden(r) if r.contains("api_feeds.allowed_hosts")),
            "{e}"
        );
        let mut def = pg("10.0.0.5", json!({}));
        def["tables"] = json!([]);
        let e = rules()
            .admit(&feed(&def), &def, Some("ga"), true)
            .unwrap_err();
        assert!(
            matches!(&e, Refusal::Invalid(r) if r.starts_with("tables")),
            "{e}"
        );
    }

    #[test]
    fn sqlite_files_are_read_only_inside_the_allowed_directory() {
        let allowed = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        for d in [allowed.path(), other.path()] {
            std::fs::write(d.join("x.db"), b"").unwrap();
        }
        let rules = FeedAdmission::new(
            Vec::new(),
            ApiFeedsConfig {
                allowed_hosts: Vec::new(),
                sqlite_dir: Some(allowed.path().to_owned()),
                ssl_ca_file: None,
            },
        );
        let def = |p: &Path| {
            json!({"type": "poll", "engine": "sqlite", "path": p,
            "tables": [{"table": "t", "dataset": "ga.t", "mode": "bulk"}]})
        };
        let inside = def(&allowed.path().join("x.db"));
        rules
            .admit(&feed(&inside), &inside, Some("ga"), true)
            .unwrap();
        // Outside, directly or through `..`.
        for p in [
            other.path().join("x.db"),
            allowed
                .path()
                .join("..")
                .join(other.path().file_name().unwrap())
                .join("x.db"),
        ] {
            let d = def(&p);
            let e = rules.admit(&feed(&d), &d, Some("ga"), true).unwrap_err();
            assert!(
                matches!(&e, Refusal::Forbidden(r) if r.contains("api_feeds.sqlite_dir")),
                "{e}"
            );
        }
    }
}
