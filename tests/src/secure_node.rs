//! A node deployed as a government network runs it, for the security
//! tests: a [`SecureBroker`] (SASL_SSL, the authorizer on), the node logging
//! in as its own super user, serving HTTPS with the broker's CA, its
//! PostgreSQL feed over `verify-full`, and 20 residents (even ids in
//! 330106, odd in 330108) fed into `ga.people`, shared unconditionally
//! with names masked. And the client-side helpers those tests share.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use backflow::kafka::KafkaSettings;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use serde_json::{json, Value};

use crate::secure_broker::{ScramUser, SecureBroker};
use crate::sinks::{Backend, SinkDb};
use crate::{pg_connect, Node};

/// Kafka settings of a client with these librdkafka properties (with
/// `bootstrap.servers`).
pub fn settings(props: Vec<(String, String)>) -> KafkaSettings {
    let mut props: BTreeMap<String, String> = props.into_iter().collect();
    let bootstrap = props.remove("bootstrap.servers").unwrap();
    let mut s = KafkaSettings::new(bootstrap);
    s.properties = props;
    s.request_timeout = Duration::from_secs(10);
    s
}

/// An rdkafka client configuration of these properties, quiet.
pub fn client_config(props: &[(String, String)]) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    for (k, v) in props {
        cfg.set(k, v);
    }
    cfg.set("log_level", "0");
    cfg
}

/// What the broker answers a client with these properties that asks for
/// `topic`'s metadata: `Ok` when it may see the topic, else the error.
pub fn metadata(props: &[(String, String)], topic: &str) -> Result<(), String> {
    let consumer: BaseConsumer = client_config(props).create().map_err(|e| e.to_string())?;
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    match md.topics().first().and_then(|t| t.error()) {
        Some(e) => Err(format!("{:?}", rdkafka::types::RDKafkaErrorCode::from(e))),
        None => Ok(()),
    }
}

/// The API tokens of a [`SecureNode`]'s principals.
pub struct Tokens<'a> {
    pub admin: &'a str,
    pub owner_ga: &'a str,
    /// Any other principals, e.g. `("auditor", "...")`.
    pub others: &'a [(&'a str, &'a str)],
}

/// A node on a secured broker (see the module doc).
pub struct SecureNode {
    pub node_user: ScramUser,
    pub broker: SecureBroker,
    pub db: SinkDb,
    pub node: Node,
    admin: String,
}

impl SecureNode {
    /// Starts it, with `users` on the broker besides the node's own and
    /// `kafka_extra` lines in its `[kafka]` section (e.g.
    /// `manage_acls = true`).
    pub async fn start(users: &[ScramUser], kafka_extra: &str, tokens: Tokens<'_>) -> Self {
        let node_user = ScramUser::new("backflow-node", true);
        let mut all = vec![node_user.clone()];
        all.extend(users.iter().cloned());
        let broker = SecureBroker::start(&all);
        let (cert, key) = broker.server_certificate();
        let db = SinkDb::create(Backend::Postgres).await.unwrap();
        pg_connect(&db.name)
            .await
            .unwrap()
            .batch_execute(
                "CREATE TABLE people (id bigint PRIMARY KEY, name varchar(32) NOT NULL, region_code char(6) NOT NULL);
                 INSERT INTO people SELECT g, '张三' || g, CASE WHEN g % 2 = 0 THEN '330106' ELSE '330108' END
                   FROM generate_series(1, 20) g;",
            )
            .await
            .unwrap();
        let mut principals = vec![("admin", tokens.admin), ("owner:ga", tokens.owner_ga)];
        principals.extend_from_slice(tokens.others);
        let config = format!(
            "[node]\ncode = \"330100\"\n\
             [http]\ntls_cert = \"{cert}\"\ntls_key = \"{key}\"\n\
             [kafka]\nbrokers = \"{bootstrap}\"\n{kafka_extra}\n\
             [kafka.properties]\n\"security.protocol\" = \"SASL_SSL\"\n\"sasl.mechanism\" = \"SCRAM-SHA-512\"\n\
             \"sasl.username\" = \"{user}\"\n\"ssl.ca.location\" = \"{ca}\"\n\
             [kafka.properties_env]\n\"sasl.password\" = \"KAFKA_PASSWORD\"\n\n\
             [[feeds]]\ntype = \"postgres\"\nname = \"{feed}\"\nuser = \"postgres\"\ndatabase = \"{db}\"\n\
             slot = \"{db}\"\npublication = \"{db}\"\nsslmode = \"verify-full\"\nssl_ca_file = \"{db_ca}\"\n\
             tables = [{{ table = \"public.people\", dataset = \"ga.people\" }}]\n\n{tokens}",
            cert = cert.display(),
            key = key.display(),
            db_ca = crate::db_ca_file().display(),
            bootstrap = broker.bootstrap(),
            user = node_user.name,
            ca = broker.ca_file().display(),
            feed = db.name.replace('_', "-"),
            db = db.name,
            tokens = crate::tokens_toml(&principals),
        );
        let node = Node::start_with_config(&config, &[("KAFKA_PASSWORD", &node_user.password)])
            .unwrap()
            .trusting(&broker.ca_file())
            .unwrap();
        node.wait_for_status("/readyz", 200, Duration::from_secs(90))
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}\n{}", node.stderr(), broker.log()));
        let s = Self {
            node_user,
            broker,
            db,
            node,
            admin: tokens.admin.to_owned(),
        };
        s.ok("PUT", "/api/datasets/ga.people", tokens.owner_ga, people())
            .await;
        s
    }

    /// Calls the API; fails the test unless it answers 2xx.
    pub async fn ok(&self, method: &str, path: &str, token: &str, body: Value) -> Value {
        let (status, answer) = self.node.api(method, path, Some(token), Some(body)).await;
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {answer}"
        );
        answer
    }

    /// `code` subscribes to `ga.people` (id, name, region code).
    pub async fn subscribe(&self, code: &str, token: &str) {
        self.ok(
            "POST",
            "/api/subscriptions",
            token,
            json!({"subscriber": code, "dataset": "ga.people", "purpose": "services",
                   "fields": ["id", "name", "region_code"]}),
        )
        .await;
    }

    /// Registers a district with a SCRAM principal; its client properties.
    pub async fn district(&self, code: &str) -> Vec<(String, String)> {
        let a = self
            .ok(
                "PUT",
                &format!("/api/nodes/{code}"),
                &self.admin,
                json!({"name": code, "kafka": "scram"}),
            )
            .await;
        self.broker.client_properties(
            a["kafka_username"].as_str().unwrap(),
            a["kafka_password"].as_str().unwrap(),
        )
    }

    /// Runs SQL on the department's database.
    pub async fn sql(&self, sql: &str) {
        pg_connect(&self.db.name)
            .await
            .unwrap()
            .batch_execute(sql)
            .await
            .unwrap();
    }

    /// Kafka settings of the node's own principal.
    pub fn as_node(&self) -> KafkaSettings {
        settings(
            self.broker
                .client_properties(&self.node_user.name, &self.node_user.password),
        )
    }

    /// Whether `topic` exists (as the node sees the cluster).
    pub async fn exists(&self, topic: &str) -> bool {
        backflow::kafka::topic_names(&self.as_node())
            .await
            .unwrap()
            .iter()
            .any(|t| t == topic)
    }

    /// Waits until `topic` has at least `n` records and `props` may read it.
    pub async fn until_readable(&self, props: &[(String, String)], topic: &str, n: i64) {
        let until = Instant::now() + Duration::from_secs(90);
        loop {
            // Records, not offsets: the share topics hold commit markers.
            let high = crate::share_topic::count_with(&self.as_node(), topic).await;
            if high >= n && metadata(props, topic).is_ok() {
                return;
            }
            assert!(
                Instant::now() < until,
                "{topic} not filled/readable (high {high})\n{}",
                self.node.stderr()
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Waits until `what` holds, for at most `deadline`; how long it took.
    pub async fn until(
        &self,
        what: &str,
        deadline: Duration,
        mut ok: impl FnMut() -> bool,
    ) -> Duration {
        let started = Instant::now();
        while !ok() {
            assert!(
                started.elapsed() < deadline,
                "{what} did not happen within {deadline:?}\n{}",
                self.node.stderr()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        started.elapsed()
    }
}

/// The `ga.people` dataset as the owner registers it.
pub fn people() -> Value {
    json!({"description": "residents", "sharing": "unconditional", "region_column": "region_code",
           "fields": {"id": {}, "name": {"sensitivity": "sensitive", "rule": "masked:name"}, "region_code": {}}})
}
