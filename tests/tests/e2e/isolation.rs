//! One tenant's failure never stops the rest: a record or a schema that one
//! subscription cannot take fails that subscription alone, with the
//! reason for its owner (API, audit trail, metric) and the raw record kept
//! in a dead-letter topic, while another department's district keeps
//! receiving (a marker change arrives after the failure). The owner fixes
//! the cause and re-activates the subscription, which then receives the
//! dataset's current state again.
//!
//! Department `ga` shares `ga.people` with district 330106, department
//! `mz` shares `mz.items` with district 330108; both feeds read one
//! PostgreSQL database into a node (330100) of its own broker.

use std::time::{Duration, Instant};

use backflow_e2e::share_topic::{self, Decoded};
use backflow_e2e::sinks::{Backend, SinkDb};
use backflow_e2e::{pg_connect, Node, TestBroker};
use serde_json::{json, Value};

const ADMIN: &str = "isolation-admin";
const GA: &str = "isolation-owner-ga";
const MZ: &str = "isolation-owner-mz";
const AUDITOR: &str = "isolation-auditor";
const XIHU: &str = "isolation-district-330106";
const BINJIANG: &str = "isolation-district-330108";

struct Setup {
    broker: TestBroker,
    node: Node,
    db: SinkDb,
}

impl Setup {
    async fn start(kafka_extra: &str) -> Self {
        let db = SinkDb::create(Backend::Postgres).await.unwrap();
        pg_connect(&db.name)
            .await
            .unwrap()
            .batch_execute(
                "CREATE TABLE people (id bigint PRIMARY KEY, name varchar(32) NOT NULL,
                    region_code char(6) NOT NULL, score integer, note text);
                 CREATE TABLE items (id bigint PRIMARY KEY, region_code char(6) NOT NULL, label text);
                 INSERT INTO people SELECT g, '张三' || g, CASE WHEN g % 2 = 0 THEN '330106' ELSE '330108' END, g, 'n'
                   FROM generate_series(1, 20) g;
                 INSERT INTO items SELECT g, CASE WHEN g % 2 = 0 THEN '330106' ELSE '330108' END, 'item ' || g
                   FROM generate_series(1, 20) g;",
            )
            .await
            .unwrap();
        let broker = TestBroker::start();
        let tokens: String = [
            ("admin", ADMIN),
            ("owner:ga", GA),
            ("owner:mz", MZ),
            ("auditor", AUDITOR),
            ("subscriber:330106", XIHU),
            ("subscriber:330108", BINJIANG),
        ]
        .iter()
        .map(|(p, t)| {
            format!(
                "[[auth.tokens]]\nprincipal = \"{p}\"\nsha256 = \"{}\"\n",
                backflow::auth::token_hash(t)
            )
        })
        .collect();
        let feed = db.name.replace('_', "-");
        let config = format!(
            "[node]\ncode = \"330100\"\n[kafka]\nbrokers = \"{}\"\n{kafka_extra}\n\
             [[feeds]]\ntype = \"postgres\"\nname = \"{feed}-ga\"\nuser = \"postgres\"\ndatabase = \"{db}\"\n\
             slot = \"{slot}_ga\"\npublication = \"{slot}_ga\"\n\
             tables = [{{ table = \"public.people\", dataset = \"ga.people\" }}]\n\n\
             [[feeds]]\ntype = \"postgres\"\nname = \"{feed}-mz\"\nuser = \"postgres\"\ndatabase = \"{db}\"\n\
             slot = \"{slot}_mz\"\npublication = \"{slot}_mz\"\n\
             tables = [{{ table = \"public.items\", dataset = \"mz.items\" }}]\n\n{tokens}",
            broker.bootstrap(),
            db = db.name,
            slot = db.name,
        );
        let node = Node::start_with_config(&config, &[]).unwrap();
        node.wait_for_status("/readyz", 200, Duration::from_secs(60))
            .await
            .unwrap();
        let s = Self { broker, node, db };
        s.ok(
            "PUT",
            "/api/datasets/ga.people",
            GA,
            json!({"description": "residents", "sharing": "unconditional", "region_column": "region_code",
                "fields": {"id": {}, "name": {"sensitivity": "sensitive", "rule": "masked:name"},
                           "region_code": {}, "score": {}, "note": {}}}),
        )
        .await;
        s.ok(
            "PUT",
            "/api/datasets/mz.items",
            MZ,
            json!({"description": "items", "sharing": "unconditional", "region_column": "region_code",
                "fields": {"id": {}, "region_code": {}, "label": {}}}),
        )
        .await;
        s.ok(
            "POST",
            "/api/subscriptions",
            XIHU,
            json!({"subscriber": "330106", "dataset": "ga.people", "purpose": "services",
                "fields": ["id", "name", "region_code", "score", "note"]}),
        )
        .await;
        s.ok(
            "POST",
            "/api/subscriptions",
            BINJIANG,
            json!({"subscriber": "330108", "dataset": "mz.items", "purpose": "services",
                "fields": ["id", "region_code", "label"]}),
        )
        .await;
        s.wait_share("330106", "ga.people", "the backfill", |r| id_of(r) == 20)
            .await;
        s.wait_share("330108", "mz.items", "the backfill", |r| id_of(r) == 19)
            .await;
        s
    }

    async fn ok(&self, method: &str, path: &str, token: &str, body: Value) -> Value {
        let (status, answer) = self.node.api(method, path, Some(token), Some(body)).await;
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {answer}"
        );
        answer
    }

    async fn sql(&self, sql: &str) {
        pg_connect(&self.db.name)
            .await
            .unwrap()
            .batch_execute(sql)
            .await
            .unwrap();
    }

    async fn share(&self, subscriber: &str, dataset: &str) -> Vec<Decoded> {
        let topic = format!("backflow.share.{subscriber}.{dataset}");
        if share_topic::high_watermark(self.broker.bootstrap(), &topic).await == 0 {
            return Vec::new();
        }
        share_topic::read(self.broker.bootstrap(), &topic, &self.node.url, ADMIN)
            .await
            .unwrap()
    }

    async fn wait_share(
        &self,
        subscriber: &str,
        dataset: &str,
        what: &str,
        found: impl Fn(&Decoded) -> bool,
    ) -> Vec<Decoded> {
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            let records = self.share(subscriber, dataset).await;
            if records.iter().any(&found) {
                return records;
            }
            assert!(
                Instant::now() < until,
                "{what} never reached {subscriber}'s share of {dataset}\n{}",
                self.node.stderr()
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Waits until 330106's subscription to `ga.people` failed; its reason.
    async fn failed(&self) -> String {
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            let (_, sub) = self
                .node
                .api("GET", "/api/subscriptions/330106:ga.people", Some(GA), None)
                .await;
            if sub["state"] == "failed" {
                return sub["reason"].as_str().unwrap_or_default().to_owned();
            }
            assert!(
                Instant::now() < until,
                "the subscription did not fail: {sub}\n{}",
                self.node.stderr()
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// A change of the other department reaches its district after 330106
    /// stopped, while 330106's share topic does not move: the failure
    /// stopped one subscription and no other.
    async fn others_keep_flowing(&self, marker: &str) {
        let victim = "backflow.share.330106.ga.people";
        let before = share_topic::high_watermark(self.broker.bootstrap(), victim).await;
        self.sql(&format!(
            "BEGIN; UPDATE people SET name = '后来' WHERE id = 2; UPDATE items SET label = '{marker}' WHERE id = 3; COMMIT;"
        ))
        .await;
        self.wait_share("330108", "mz.items", "the marker", |r| {
            r.after().is_some_and(|a| a["label"] == marker)
        })
        .await;
        assert_eq!(
            share_topic::high_watermark(self.broker.bootstrap(), victim).await,
            before,
            "nothing more reaches the failed subscription"
        );
    }

    /// The audit trail, as the auditor reads it, holds the failure.
    async fn audited_failure(&self, kind: &str) {
        let (_, trail) = self
            .node
            .api("GET", "/api/audit?limit=1000", Some(AUDITOR), None)
            .await;
        assert!(
            trail["records"].as_array().unwrap().iter().any(|r| {
                r["details"]["action"] == "subscription failed"
                    && r["details"]["subscription"] == "330106:ga.people"
                    && r["details"]["kind"] == kind
            }),
            "{trail}"
        );
    }
}

fn id_of(r: &Decoded) -> i64 {
    r.key["id"].as_i64().unwrap_or(-1)
}

/// A share record over the brokers' size limit fails its subscription
/// alone; the owner takes the large field out and re-activates it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_too_large_for_one_subscription_fails_it_alone() {
    // A small limit stands for the brokers' message.max.bytes.
    let s = Setup::start("max_message_bytes = 4000").await;
    s.sql(&format!(
        "INSERT INTO people VALUES (100, '大', '330106', 1, '{}')",
        "x".repeat(5000)
    ))
    .await;
    let reason = s.failed().await;
    assert!(reason.contains("kafka.max_message_bytes"), "{reason}");
    assert!(
        reason.contains("backflow.dlq.share.330106.ga.people"),
        "{reason}"
    );
    s.others_keep_flowing("marker-1").await;
    s.audited_failure("record_too_large").await;
    let (_, metrics) = s.node.get_ops("/metrics").await.unwrap();
    assert!(
        metrics.lines().any(|l| l
            == "backflow_distributor_share_failures_total{reason=\"record_too_large\",subscriber=\"330106\"} 1"),
        "{metrics}"
    );
    // The raw record the share could not take is kept, with why.
    let dead =
        share_topic::count(s.broker.bootstrap(), "backflow.dlq.share.330106.ga.people").await;
    assert_eq!(dead, 1);

    // The owner stops sharing the large field and re-activates.
    s.ok(
        "PATCH",
        "/api/datasets/ga.people",
        GA,
        json!({"fields": {"id": {}, "name": {"sensitivity": "sensitive", "rule": "masked:name"},
                          "region_code": {}, "score": {}}}),
    )
    .await;
    let sub = s
        .ok(
            "POST",
            "/api/subscriptions/330106:ga.people/reactivate",
            GA,
            json!({}),
        )
        .await;
    assert_eq!(sub["state"], "active", "{sub}");
    assert!(sub["granted"].get("note").is_none(), "{sub}");
    // The current state is delivered again, the large row without the note.
    let records = s
        .wait_share("330106", "ga.people", "row 100", |r| id_of(r) == 100)
        .await;
    let row = records.iter().rfind(|r| id_of(r) == 100).unwrap();
    assert!(row.after().unwrap().get("note").is_none_or(|n| n.is_null()));
}

/// An owner's change that would break the share schema of what a
/// district received so far is refused at the owner's own request, naming
/// the subscription and the way out, and the district keeps receiving as
/// before: hashing a granted integer field (the share's field would become
/// text, which readers of the records delivered so far cannot take under
/// the default BACKWARD rule), either as a dataset change while the
/// subscription is active or by re-activating it after the change. With
/// the dataset's compatibility set to NONE, the same change goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_that_would_break_the_share_schema_is_refused_when_the_owner_decides() {
    let s = Setup::start("").await;
    let hashed = json!({"fields": {"id": {}, "name": {"sensitivity": "sensitive", "rule": "masked:name"},
                                   "region_code": {}, "score": {"rule": "hashed"}, "note": {}}});
    let (status, answer) = s
        .node
        .api(
            "PATCH",
            "/api/datasets/ga.people",
            Some(GA),
            Some(hashed.clone()),
        )
        .await;
    assert_eq!(status, 409, "{answer}");
    let reason = answer["reason"].as_str().unwrap();
    for part in [
        "330106:ga.people",
        "backflow.share.330106.ga.people",
        "compatibility",
    ] {
        assert!(reason.contains(part), "names {part}: {reason}");
    }
    let (_, datasets) = s.node.api("GET", "/api/datasets", Some(GA), None).await;
    let people = datasets
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == "ga.people")
        .unwrap();
    assert_ne!(
        people["fields"]["score"]["rule"], "hashed",
        "the refused change was not recorded: {people}"
    );
    s.sql("UPDATE people SET score = 99 WHERE id = 4").await;
    s.wait_share("330106", "ga.people", "the plain score", |r| {
        r.after().is_some_and(|a| a["score"] == 99)
    })
    .await;

    // Re-activating after the change is the same grant: refused too.
    s.ok(
        "POST",
        "/api/subscriptions/330106:ga.people/revoke",
        GA,
        json!({"reason": "to change the score's rule"}),
    )
    .await;
    s.ok("PATCH", "/api/datasets/ga.people", GA, hashed).await;
    let (status, answer) = s
        .node
        .api(
            "POST",
            "/api/subscriptions/330106:ga.people/reactivate",
            Some(GA),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer["reason"]
            .as_str()
            .unwrap()
            .contains("backflow.share.330106.ga.people"),
        "{answer}"
    );
    let (_, sub) = s
        .node
        .api("GET", "/api/subscriptions/330106:ga.people", Some(GA), None)
        .await;
    assert_eq!(sub["state"], "revoked", "{sub}");

    // The way out the refusal names: the dataset's compatibility.
    s.ok(
        "PATCH",
        "/api/datasets/ga.people",
        GA,
        json!({"compatibility": "NONE"}),
    )
    .await;
    s.ok(
        "POST",
        "/api/subscriptions/330106:ga.people/reactivate",
        GA,
        json!({}),
    )
    .await;
    s.wait_share("330106", "ga.people", "the hashed score", |r| {
        id_of(r) == 4 && r.after().is_some_and(|a| a["score"].is_string())
    })
    .await;
}

/// A share schema the registry refuses in the distributor (here the share
/// subject was edited by hand: an admin deleted its versions and registered
/// an unrelated schema) fails that subscription alone; the raw topic and
/// the other department go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_share_schema_the_registry_refuses_fails_its_subscription_alone() {
    let s = Setup::start("").await;
    let subject = "backflow.share.330106.ga.people-value";
    let (status, answer) = s
        .node
        .api("DELETE", &format!("/subjects/{subject}"), Some(ADMIN), None)
        .await;
    assert_eq!(status, 200, "{answer}");
    let unrelated = json!({"type": "record", "name": "Other",
        "fields": [{"name": "other", "type": "string"}]});
    let (status, answer) = s
        .node
        .api(
            "POST",
            &format!("/subjects/{subject}/versions"),
            Some(ADMIN),
            Some(json!({"schema": unrelated.to_string()})),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    // A new column makes a new raw schema version, whose share schema the
    // distributor registers again.
    s.sql("ALTER TABLE people ADD COLUMN extra integer; UPDATE people SET score = 99 WHERE id = 4")
        .await;
    let reason = s.failed().await;
    assert!(
        reason.contains("backflow.share.330106.ga.people"),
        "{reason}"
    );
    assert!(reason.contains("re-activate"), "says the way out: {reason}");
    s.others_keep_flowing("marker-2").await;
    s.audited_failure("schema").await;
}
