//! The attacks of a hostile district or department on a node, one test per
//! way the promise broke ("a district receives only its rows and granted
//! fields; only the owner decides; no secret leaves the node"): each test
//! reproduces the attack and asserts the node refuses it, with the rule
//! named.
//!
//! Every test runs a node (330100) on a broker of its own with a
//! PostgreSQL feed of department `ga` (tables `people` and `extra`, rows
//! of districts 330106 and 330108) and tokens for an admin, the owners `ga`
//! and `mz`, and the districts 330106 and 330108.

use std::time::{Duration, Instant};

use backflow_e2e::share_topic::{self, Decoded};
use backflow_e2e::sinks::{Backend, SinkDb};
use backflow_e2e::{pg_connect, Node, TestBroker};
use serde_json::{json, Value};

const ADMIN: &str = "security-admin";
const GA: &str = "security-owner-ga";
const MZ: &str = "security-owner-mz";
const XIHU: &str = "security-district-330106";
const BINJIANG: &str = "security-district-330108";

/// A node with department `ga`'s feed, its tokens and its database.
struct Setup {
    broker: TestBroker,
    node: Node,
    db: SinkDb,
}

impl Setup {
    /// Starts the node with `extra` appended to its configuration file.
    async fn start(extra: &str, env: &[(&str, &str)]) -> Self {
        let db = SinkDb::create(Backend::Postgres).await.unwrap();
        pg_connect(&db.name)
            .await
            .unwrap()
            .batch_execute(
                "CREATE TABLE people (id bigint PRIMARY KEY, name varchar(32) NOT NULL,
                    id_number char(18) NOT NULL, phone varchar(20), region_code char(6) NOT NULL,
                    birth_date date);
                 CREATE TABLE extra (id bigint PRIMARY KEY, region_code char(6) NOT NULL, note text);
                 INSERT INTO people SELECT g, '张三' || g, '33010619900101' || lpad(g::text, 4, '0'),
                     '1390000' || lpad(g::text, 4, '0'),
                     CASE WHEN g % 2 = 0 THEN '330106' ELSE '330108' END, date '1990-01-01'
                   FROM generate_series(1, 20) g;
                 INSERT INTO extra SELECT g, CASE WHEN g % 2 = 0 THEN '330106' ELSE '330108' END, 'n' || g
                   FROM generate_series(1, 20) g;",
            )
            .await
            .unwrap();
        let broker = TestBroker::start();
        let config = format!(
            "[node]\ncode = \"330100\"\n[kafka]\nbrokers = \"{}\"\n\n\
             [[feeds]]\ntype = \"postgres\"\nname = \"{}\"\nuser = \"postgres\"\ndatabase = \"{}\"\n\
             tables = [{{ table = \"public.people\", dataset = \"ga.people\" }}, {{ table = \"public.extra\", dataset = \"ga.extra\" }}]\n\n\
             {}{extra}",
            broker.bootstrap(),
            feed_name(&db),
            db.name,
            tokens_toml(),
        );
        let node = Node::start_with_config(&config, env).unwrap();
        node.wait_for_status("/readyz", 200, Duration::from_secs(60))
            .await
            .unwrap();
        Self { broker, node, db }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        self.node.api(method, path, Some(token), body).await
    }

    /// A call that must succeed (2xx); its answer.
    async fn ok(&self, method: &str, path: &str, token: &str, body: Option<Value>) -> Value {
        let (status, answer) = self.call(method, path, token, body).await;
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

    /// The share topic of `subscriber` and `dataset`, decoded.
    async fn share(&self, subscriber: &str, dataset: &str) -> Vec<Decoded> {
        let topic = format!("backflow.share.{subscriber}.{dataset}");
        if share_topic::high_watermark(self.broker.bootstrap(), &topic).await == 0 {
            return Vec::new();
        }
        share_topic::read(self.broker.bootstrap(), &topic, &self.node.url, ADMIN)
            .await
            .unwrap()
    }

    /// Waits until the share topic holds a record whose row satisfies
    /// `found`; returns the topic's records then.
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
                "{what} never reached {subscriber}'s share of {dataset}; it holds {records:#?}\n{}",
                self.node.stderr()
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

/// The department's feed: its name also names its replication slot, which
/// the PostgreSQL server holds for every test at once.
fn feed_name(db: &SinkDb) -> String {
    db.name.replace('_', "-")
}

fn tokens_toml() -> String {
    [
        ("admin", ADMIN),
        ("owner:ga", GA),
        ("owner:mz", MZ),
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
    .collect()
}

/// Department `ga`'s people: masked name and identity number, hashed
/// phone, rows by `region_code`.
fn people(sharing: &str) -> Value {
    json!({
        "description": "residents",
        "sharing": sharing,
        "region_column": "region_code",
        "fields": {
            "id": {},
            "name": {"sensitivity": "sensitive", "rule": "masked:name"},
            "id_number": {"sensitivity": "sensitive", "rule": "masked:keep(6,4)"},
            "phone": {"sensitivity": "sensitive", "rule": "hashed"},
            "region_code": {}
        }
    })
}

fn extra(sharing: &str) -> Value {
    json!({
        "description": "notes",
        "sharing": sharing,
        "region_column": "region_code",
        "fields": {"id": {}, "region_code": {}, "note": {}}
    })
}

fn id_of(r: &Decoded) -> i64 {
    r.key["id"].as_i64().unwrap_or(-1)
}

fn request(subscriber: &str, dataset: &str, fields: &[&str]) -> Value {
    json!({"subscriber": subscriber, "dataset": dataset, "purpose": "household services", "fields": fields})
}

/// A PostgreSQL server impostor on 127.0.0.1: it answers every startup
/// with a request for the clear-text password and records every byte a
/// client sends.
struct FakePostgres {
    port: u16,
    received: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl FakePostgres {
    async fn start() -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (rec, conns) = (received.clone(), connections.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                conns.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let rec = rec.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 65536];
                    let mut asked = false;
                    loop {
                        let n = match tokio::time::timeout(
                            Duration::from_secs(10),
                            sock.read(&mut buf),
                        )
                        .await
                        {
                            Ok(Ok(n)) if n > 0 => n,
                            _ => return,
                        };
                        rec.lock().unwrap().extend_from_slice(&buf[..n]);
                        // An SSLRequest (8 bytes, code 80877103): no TLS here.
                        if n == 8 && buf[4..8] == [0x04, 0xd2, 0x16, 0x2f] {
                            let _ = sock.write_all(b"N").await;
                            continue;
                        }
                        if !asked {
                            // AuthenticationCleartextPassword.
                            let _ = sock.write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 3]).await;
                            asked = true;
                        }
                    }
                });
            }
        });
        Self {
            port,
            received,
            connections,
        }
    }

    fn received_contains(&self, secret: &str) -> bool {
        let got = self.received.lock().unwrap();
        got.windows(secret.len()).any(|w| w == secret.as_bytes())
    }
}

/// Finding 1: any token could register a feed with no tables, which the
/// node started at once, connecting to the host in the body with a
/// password it read from any environment variable of the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_registration_by_a_subscriber_is_refused_and_no_secret_reaches_a_fake_server() {
    let fake = FakePostgres::start().await;
    let secret = "kafka-sasl-password-of-the-node";
    let s = Setup::start("", &[("NODE_KAFKA_SECRET", secret)]).await;
    let evil = json!({
        "type": "postgres", "host": "127.0.0.1", "port": fake.port, "user": "x",
        "database": "x", "password_env": "NODE_KAFKA_SECRET", "tables": []
    });
    for token in [XIHU, MZ, GA] {
        let (status, body) = s
            .call("PUT", "/api/feeds/exfil", token, Some(evil.clone()))
            .await;
        assert!(
            status == 403 || status == 422,
            "a feed with no tables and a password taken from the node's environment is refused ({token}): {status} {body}"
        );
        assert!(
            body["reason"].as_str().is_some_and(|r| !r.is_empty()),
            "{body}"
        );
    }
    // The subscriber's refusal names the rule.
    let (_, body) = s
        .call("PUT", "/api/feeds/exfil", XIHU, Some(evil.clone()))
        .await;
    assert!(
        body["reason"].as_str().unwrap().contains("subscriber"),
        "{body}"
    );
    // Naming the node's own variables is refused even for the department's
    // own dataset: secrets are bound by an admin, not picked by the caller.
    let mut own = evil.clone();
    own["tables"] = json!([{"table": "public.people", "dataset": "ga.people"}]);
    let (status, body) = s.call("PUT", "/api/feeds/exfil", GA, Some(own)).await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["reason"].as_str().unwrap().contains("password_env"),
        "{body}"
    );
    // Nothing was stored, so nothing will ever connect; and nothing did.
    let (_, feeds) = s.call("GET", "/api/feeds", ADMIN, None).await;
    assert!(
        !feeds
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["name"] == "exfil"),
        "{feeds}"
    );
    assert_eq!(
        fake.connections.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    assert!(!fake.received_contains(secret));
}

/// Finding 1, on the wire: even a feed registered as the rules allow (a
/// secret the admin bound to the department, a host the admin allowed)
/// sends no password to a server that asks for it in clear text; the feed
/// fails saying how to fix the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_to_a_server_asking_for_a_clear_text_password_sends_none() {
    let fake = FakePostgres::start().await;
    let secret = "bound-secret-of-ga";
    let s = Setup::start(
        &format!(
            "[api_feeds]\nallowed_hosts = [\"127.0.0.1:{}\"]\n\
             [[secrets]]\nname = \"ga-db\"\ndepartment = \"ga\"\nenv = \"GA_DB_PASSWORD\"\n",
            fake.port
        ),
        &[("GA_DB_PASSWORD", secret)],
    )
    .await;
    s.ok("PUT", "/api/feeds/ga-remote", GA, Some(json!({ "type": "postgres", "host": "127.0.0.1", "port": fake.port, "user": "backflow", "database": "remote", "password_secret": "ga-db", "tables": [{"table": "public.people", "dataset": "ga.remote"}] }))).await;
    // The node connects (the marker that the attempt was made) and fails.
    let until = Instant::now() + Duration::from_secs(60);
    let error = loop {
        let (_, feeds) = s.call("GET", "/api/feeds", GA, None).await;
        let f = feeds
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == "ga-remote")
            .cloned()
            .unwrap_or_default();
        let error = f["status"]["error"].as_str().unwrap_or("").to_owned();
        if fake.connections.load(std::sync::atomic::Ordering::SeqCst) > 0 && !error.is_empty() {
            break error;
        }
        assert!(Instant::now() < until, "{f}\n{}", s.node.stderr());
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(
        !fake.received_contains(secret),
        "the fake server got the password"
    );
    assert!(error.contains("clear"), "{error}");
    assert!(
        !s.node.stderr().contains(secret),
        "the password is not logged"
    );
}

/// Finding 2: an owner replaced another department's feed, and every
/// principal saw every feed's host, user, database and secret reference.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feeds_belong_to_the_department_that_registered_them() {
    let s = Setup::start("[api_feeds]\nallowed_hosts = [\"127.0.0.1:5432\"]\n", &[]).await;
    let ga_feed = json!({
        "type": "postgres", "host": "127.0.0.1", "port": 5432, "user": "postgres",
        "database": s.db.name, "slot": format!("s{}", s.db.name), "publication": "ga_api_pub",
        "tables": [{"table": "public.extra", "dataset": "ga.notes"}]
    });
    s.ok("PUT", "/api/feeds/ga-notes", GA, Some(ga_feed)).await;
    // Another department takes the name with a feed into its own dataset.
    let mz_feed = json!({
        "type": "postgres", "host": "127.0.0.1", "port": 5432, "user": "postgres",
        "database": s.db.name, "tables": [{"table": "public.extra", "dataset": "mz.notes"}]
    });
    let (status, body) = s
        .call("PUT", "/api/feeds/ga-notes", MZ, Some(mz_feed))
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["reason"].as_str().unwrap().contains("owner:ga"),
        "names the owner: {body}"
    );
    for action in ["pause", "restart"] {
        let (status, _) = s
            .call("POST", &format!("/api/feeds/ga-notes/{action}"), MZ, None)
            .await;
        assert_eq!(status, 403, "{action}");
    }
    let (status, _) = s.call("DELETE", "/api/feeds/ga-notes", MZ, None).await;
    assert_eq!(status, 403);
    // Each owner sees its own feeds only; subscribers none.
    let (status, list) = s.call("GET", "/api/feeds", MZ, None).await;
    assert_eq!(status, 200);
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["name"].as_str())
        .collect();
    assert!(names.is_empty(), "owner:mz sees {names:?}");
    let (_, list) = s.call("GET", "/api/feeds", GA, None).await;
    let mut names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["name"].as_str())
        .collect();
    names.sort_unstable();
    let mut expected = ["ga-notes", &feed_name(&s.db)];
    expected.sort_unstable();
    assert_eq!(names, expected, "{list}");
    let (status, _) = s.call("GET", "/api/feeds", XIHU, None).await;
    assert_eq!(status, 403);
    // The feed is still ga's, unchanged.
    let (_, list) = s.call("GET", "/api/feeds", ADMIN, None).await;
    let f = list
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "ga-notes")
        .unwrap()
        .clone();
    assert_eq!(f["owner"], "owner:ga", "{f}");
    assert_eq!(f["config"]["tables"][0]["dataset"], "ga.notes", "{f}");
}

/// Finding 3: a dataset without `region_column` sent every row to every
/// subscriber, and a routine edit that left the key out of the body turned
/// the filter off for every active subscription.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datasets_need_a_row_rule_and_an_edit_cannot_drop_it() {
    let s = Setup::start("", &[]).await;
    let mut open = people("unconditional");
    open.as_object_mut().unwrap().remove("region_column");
    let (status, body) = s
        .call("PUT", "/api/datasets/ga.people", GA, Some(open.clone()))
        .await;
    assert_eq!(status, 422, "{body}");
    let reason = body["reason"].as_str().unwrap();
    assert!(
        reason.contains("region_column") && reason.contains("all_rows"),
        "{body}"
    );

    s.ok(
        "PUT",
        "/api/datasets/ga.people",
        GA,
        Some(people("unconditional")),
    )
    .await;
    s.ok(
        "POST",
        "/api/subscriptions",
        XIHU,
        Some(request(
            "330106",
            "ga.people",
            &["id", "name", "region_code"],
        )),
    )
    .await;
    s.wait_share("330106", "ga.people", "the backfill", |r| id_of(r) == 20)
        .await;

    // The routine edit: a new description, the body without the row rule.
    let mut edit = open;
    edit["description"] = json!("residents (revised)");
    let body = s.ok("PUT", "/api/datasets/ga.people", GA, Some(edit)).await;
    assert_eq!(body["region_column"], "region_code", "{body}");
    assert_eq!(body["description"], "residents (revised)", "{body}");

    // A row of the other district, then one of 330106 as the marker.
    s.sql("INSERT INTO people VALUES (101, '李四', '330108199001010101', NULL, '330108', NULL)")
        .await;
    s.sql("INSERT INTO people VALUES (102, '王五', '330106199001010102', NULL, '330106', NULL)")
        .await;
    let records = s
        .wait_share("330106", "ga.people", "the marker row", |r| id_of(r) == 102)
        .await;
    let foreign: Vec<&Decoded> = records
        .iter()
        .filter(|r| {
            r.after().is_some_and(|a| {
                !a["region_code"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("330106")
            })
        })
        .collect();
    assert!(
        foreign.is_empty(),
        "330106 received other districts' rows: {foreign:#?}"
    );
    assert!(!records.iter().any(|r| id_of(r) == 101));
}

/// Finding 5: setting a dataset to `not_shared`, or dropping a field from
/// it, left existing subscriptions delivering the removed fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dataset_changes_are_applied_to_active_grants() {
    let s = Setup::start("", &[]).await;
    for (id, def) in [
        ("ga.people", people("unconditional")),
        ("ga.extra", extra("unconditional")),
    ] {
        s.ok("PUT", &format!("/api/datasets/{id}"), GA, Some(def))
            .await;
    }
    s.ok(
        "POST",
        "/api/subscriptions",
        XIHU,
        Some(request(
            "330106",
            "ga.people",
            &["id", "region_code", "phone"],
        )),
    )
    .await;
    s.ok(
        "POST",
        "/api/subscriptions",
        BINJIANG,
        Some(request(
            "330108",
            "ga.extra",
            &["id", "region_code", "note"],
        )),
    )
    .await;
    let records = s
        .wait_share("330106", "ga.people", "the backfill", |r| id_of(r) == 20)
        .await;
    assert!(
        records
            .iter()
            .all(|r| r.after().is_some_and(|a| a["phone"].is_string())),
        "the hashed phone is granted at first: {records:#?}"
    );

    // The owner stops sharing the phone.
    let mut def = people("unconditional");
    def["fields"].as_object_mut().unwrap().remove("phone");
    s.ok("PUT", "/api/datasets/ga.people", GA, Some(def.clone()))
        .await;
    let (_, sub) = s
        .call("GET", "/api/subscriptions/330106:ga.people", GA, None)
        .await;
    assert!(sub["granted"].get("phone").is_none(), "{sub}");
    assert_eq!(sub["policy_version"], 2, "{sub}");
    // A new resident with a phone: the record reaches the district
    // without it. (A change of the phone alone is no change for the
    // district any more, so it receives nothing of it.)
    s.sql("UPDATE people SET phone = '13911112222' WHERE id = 2")
        .await;
    s.sql("INSERT INTO people VALUES (200, '欧阳二', '330106199001010200', '13911113333', '330106', NULL)")
        .await;
    let records = s
        .wait_share("330106", "ga.people", "the new resident 200", |r| {
            id_of(r) == 200
        })
        .await;
    let insert = records.iter().rfind(|r| id_of(r) == 200).unwrap();
    assert!(
        insert
            .after()
            .unwrap()
            .get("phone")
            .is_none_or(|p| p.is_null()),
        "the removed field is not delivered after the change: {insert:#?}"
    );
    assert!(
        !records
            .iter()
            .any(|r| id_of(r) == 2 && r.value.as_ref().is_some_and(|v| v["op"] == "u")),
        "the phone-only change of row 2 reached the district: {records:#?}"
    );

    // The owner stops sharing the dataset: the grant ends, with the reason.
    def["sharing"] = json!("not_shared");
    def["not_shared_reason"] = json!("under legal review");
    s.ok("PUT", "/api/datasets/ga.people", GA, Some(def)).await;
    let (_, sub) = s
        .call("GET", "/api/subscriptions/330106:ga.people", XIHU, None)
        .await;
    assert_eq!(sub["state"], "revoked", "{sub}");
    assert!(
        sub["reason"]
            .as_str()
            .unwrap()
            .contains("under legal review"),
        "{sub}"
    );
    let before =
        share_topic::high_watermark(s.broker.bootstrap(), "backflow.share.330106.ga.people").await;
    // Marker: a change of the other dataset reaches 330108 after this one.
    s.sql("BEGIN; UPDATE people SET name = '赵六' WHERE id = 4; UPDATE extra SET note = 'marker' WHERE id = 3; COMMIT;")
        .await;
    s.wait_share("330108", "ga.extra", "the marker", |r| {
        r.after().is_some_and(|a| a["note"] == "marker")
    })
    .await;
    assert_eq!(
        share_topic::high_watermark(s.broker.bootstrap(), "backflow.share.330106.ga.people").await,
        before,
        "nothing more is delivered once the dataset is not shared"
    );
}

/// Finding 6: a subscriber's new request overwrote its pending one after
/// the owner had reviewed it, and a re-request silently undid a revocation
/// of an unconditional dataset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reviewed_requests_cannot_change_and_revocations_stick() {
    let s = Setup::start("", &[]).await;
    s.ok(
        "PUT",
        "/api/datasets/ga.people",
        GA,
        Some(people("conditional")),
    )
    .await;
    s.ok(
        "POST",
        "/api/subscriptions",
        XIHU,
        Some(request("330106", "ga.people", &["id", "region_code"])),
    )
    .await;
    let (_, seen) = s
        .call("GET", "/api/subscriptions/330106:ga.people", GA, None)
        .await;
    assert_eq!(seen["requested"], json!(["id", "region_code"]));
    // The subscriber swaps its request for a wider one.
    let (status, body) = s
        .call(
            "POST",
            "/api/subscriptions",
            XIHU,
            Some(request(
                "330106",
                "ga.people",
                &["id", "region_code", "name", "id_number"],
            )),
        )
        .await;
    assert_eq!(status, 409, "a pending request cannot be changed: {body}");
    // The owner approves what it saw; an approval of another version is refused.
    let (status, body) = s
        .call(
            "POST",
            "/api/subscriptions/330106:ga.people/approve",
            GA,
            Some(json!({"request_version": 2})),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    let body = s
        .ok(
            "POST",
            "/api/subscriptions/330106:ga.people/approve",
            GA,
            Some(json!({"request_version": seen["request_version"]})),
        )
        .await;
    let granted: Vec<&String> = body["granted"].as_object().unwrap().keys().collect();
    assert_eq!(granted, ["id", "region_code"], "{body}");

    // Unconditional: revoked stays revoked.
    s.ok(
        "PUT",
        "/api/datasets/ga.extra",
        GA,
        Some(extra("unconditional")),
    )
    .await;
    let ask = request("330106", "ga.extra", &["id", "region_code"]);
    s.ok("POST", "/api/subscriptions", XIHU, Some(ask.clone()))
        .await;
    s.ok(
        "POST",
        "/api/subscriptions/330106:ga.extra/revoke",
        GA,
        Some(json!({"reason": "misuse"})),
    )
    .await;
    let (status, body) = s.call("POST", "/api/subscriptions", XIHU, Some(ask)).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["reason"].as_str().unwrap().contains("revoked"),
        "{body}"
    );
    let (_, sub) = s
        .call("GET", "/api/subscriptions/330106:ga.extra", XIHU, None)
        .await;
    assert_eq!(sub["state"], "revoked", "{sub}");
    // Only the owner brings it back.
    let (status, _) = s
        .call(
            "POST",
            "/api/subscriptions/330106:ga.extra/reactivate",
            XIHU,
            None,
        )
        .await;
    assert_eq!(status, 403);
    let body = s
        .ok(
            "POST",
            "/api/subscriptions/330106:ga.extra/reactivate",
            GA,
            None,
        )
        .await;
    assert_eq!(body["state"], "active", "{body}");
}

/// Finding 8: a poll feed registered through the API read any SQLite file
/// the node could read (a district's database was copied into a raw topic).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_poll_feeds_cannot_read_files_of_the_node() {
    let private = tempfile::tempdir().unwrap();
    let file = private.path().join("district.db");
    rusqlite::Connection::open(&file)
        .unwrap()
        .execute_batch("CREATE TABLE residents (id INTEGER PRIMARY KEY, name TEXT); INSERT INTO residents VALUES (1, '秘密');")
        .unwrap();
    let s = Setup::start("", &[]).await;
    let (status, body) = s
        .call(
            "PUT",
            "/api/feeds/copy",
            GA,
            Some(json!({
                "type": "poll", "engine": "sqlite", "path": file,
                "tables": [{"table": "residents", "dataset": "ga.copy", "mode": "bulk"}]
            })),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["reason"]
            .as_str()
            .unwrap()
            .contains("api_feeds.sqlite_dir"),
        "names the setting that would allow it: {body}"
    );
    assert_eq!(
        share_topic::high_watermark(s.broker.bootstrap(), "backflow.raw.ga.copy").await,
        0
    );
}

/// Finding 9: re-posting an unconditional request made a fresh record with
/// a new key and a full backfill each time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_requests_return_the_existing_subscription() {
    let s = Setup::start("", &[]).await;
    s.ok(
        "PUT",
        "/api/datasets/ga.extra",
        GA,
        Some(extra("unconditional")),
    )
    .await;
    let ask = request("330106", "ga.extra", &["id", "region_code", "note"]);
    let (status, first) = s
        .call("POST", "/api/subscriptions", XIHU, Some(ask.clone()))
        .await;
    assert_eq!(status, 201, "{first}");
    let records = s
        .wait_share("330106", "ga.extra", "the backfill", |r| id_of(r) == 20)
        .await;
    assert_eq!(records.len(), 10, "{records:#?}");
    for _ in 0..4 {
        let (status, again) = s
            .call("POST", "/api/subscriptions", XIHU, Some(ask.clone()))
            .await;
        assert_eq!(status, 200, "{again}");
        assert_eq!(again["policy_version"], first["policy_version"]);
        assert_eq!(again["updated_ms"], first["updated_ms"]);
    }
    s.sql("INSERT INTO extra VALUES (22, '330106', 'marker')")
        .await;
    let records = s
        .wait_share("330106", "ga.extra", "the marker", |r| id_of(r) == 22)
        .await;
    assert_eq!(records.len(), 11, "no second backfill: {records:#?}");
}

/// Finding 10: descriptions and purposes of any size, and dataset ids that
/// Kafka refuses as topic names or that collide with another department's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_malformed_inputs_are_refused_naming_the_rule() {
    let s = Setup::start("", &[]).await;
    let mut big = extra("unconditional");
    big["description"] = json!("描".repeat(300_000));
    let (status, body) = s.call("PUT", "/api/datasets/ga.big", GA, Some(big)).await;
    assert!(status == 422 || status == 413, "{status} {body}");
    let (_, list) = s.call("GET", "/api/datasets", GA, None).await;
    assert!(
        list.to_string().len() < 10_000,
        "nothing of it was stored: {} bytes",
        list.to_string().len()
    );
    for id in [
        "ga.a%20b",
        "ga.人口",
        "ga.x%2Fy",
        &format!("ga.{}", "x".repeat(400)),
        "ga.",
        "ga.a.b",
    ] {
        let (status, body) = s
            .call(
                "PUT",
                &format!("/api/datasets/{id}"),
                GA,
                Some(extra("unconditional")),
            )
            .await;
        assert_eq!(status, 422, "{id}: {body}");
        assert!(
            body["reason"].as_str().unwrap().contains("dataset id"),
            "{id}: {body}"
        );
    }
    // `.` and `_` collide in Kafka's metric names: a department's name may
    // not hold `_`, so no department can take another's topic names.
    s.ok(
        "PUT",
        "/api/datasets/ga.x_y",
        GA,
        Some(extra("unconditional")),
    )
    .await;
    let (status, body) = s
        .call(
            "PUT",
            "/api/datasets/ga_x.y",
            ADMIN,
            Some(extra("unconditional")),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    s.ok(
        "PUT",
        "/api/datasets/ga.extra",
        GA,
        Some(extra("unconditional")),
    )
    .await;
    let mut ask = request("330106", "ga.extra", &["id"]);
    ask["purpose"] = json!("x".repeat(100_000));
    let (status, body) = s.call("POST", "/api/subscriptions", XIHU, Some(ask)).await;
    assert!(status == 422 || status == 413, "{status} {body}");
    let (_, subs) = s.call("GET", "/api/subscriptions", ADMIN, None).await;
    assert_eq!(subs, json!([]), "nothing stored");
}

/// Finding 11: a standard marks `birth_date` sensitive, but a dataset could
/// grant it plain next to an identity number masked over the birth date.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_that_reveal_a_masked_part_are_refused() {
    let s = Setup::start(
        "[[standards]]\ndataset = \"ga.census\"\nstandard = \"population\"\n",
        &[],
    )
    .await;
    let mut def = people("unconditional");
    def["fields"]["birth_date"] = json!({});
    let (status, body) = s
        .call("PUT", "/api/datasets/ga.people", GA, Some(def.clone()))
        .await;
    assert_eq!(status, 422, "{body}");
    let reason = body["reason"].as_str().unwrap();
    assert!(
        reason.contains("birth_date") && reason.contains("id_number"),
        "{body}"
    );
    // The owner may accept it knowingly; the audit trail says so.
    def["fields"]["birth_date"] = json!({"accept_disclosure": true});
    s.ok("PUT", "/api/datasets/ga.people", GA, Some(def)).await;
    // The standard's sensitivity holds for the dataset bound to it.
    let census = json!({
        "description": "census", "sharing": "unconditional", "region_column": "household_region",
        "fields": {"id_number": {"rule": "hashed"}, "birth_date": {}, "household_region": {}}
    });
    let (status, body) = s
        .call("PUT", "/api/datasets/ga.census", GA, Some(census))
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["reason"].as_str().unwrap().contains("population"),
        "names the standard: {body}"
    );
}

/// Finding 12: `/metrics` and `/readyz` without a token named subscribers
/// and feeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operational_endpoints_name_nothing_without_a_token() {
    let s = Setup::start("", &[]).await;
    s.ok(
        "PUT",
        "/api/datasets/ga.extra",
        GA,
        Some(extra("unconditional")),
    )
    .await;
    s.ok(
        "POST",
        "/api/subscriptions",
        XIHU,
        Some(request("330106", "ga.extra", &["id", "region_code"])),
    )
    .await;
    s.wait_share("330106", "ga.extra", "the backfill", |r| id_of(r) == 20)
        .await;
    let (status, body) = s.node.get("/metrics").await.unwrap();
    assert_eq!(status, 401, "{body}");
    let (status, body) = s.node.get("/readyz").await.unwrap();
    assert_eq!(status, 200);
    assert!(
        !body.contains(&feed_name(&s.db)) && !body.contains("330106"),
        "{body}"
    );
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"status": "ready"})
    );
    let (status, _) = s.node.get("/healthz").await.unwrap();
    assert_eq!(status, 200);
}
