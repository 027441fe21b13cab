//! The node on a broker as a government network runs it: clients reach it
//! only over SASL_SSL (SCRAM-SHA-512 over TLS, the broker's certificate
//! verified against the network's CA) and the authorizer refuses what no ACL
//! allows. The node logs in as its own principal (a super user of its
//! cluster), its password from the environment; a department's change
//! reaches the district's share topic over that path. Everyone else is
//! refused by the broker: a plaintext client, a wrong password, a client
//! that does not trust the broker's CA, and a district's principal reading a
//! raw topic or the control state.
//!
//! With `kafka.manage_acls`, the node itself gives each registered child
//! node a principal (a SCRAM credential shown once) and keeps that
//! principal's ACLs equal to its active grants: the district's own
//! `backflow subscribe` reads its share topic with them, and nothing else;
//! an ACL added by hand is taken back, and so is the grant's ACL within
//! 5 seconds of the owner revoking it.
//!
//! The node serves its API and registry over HTTPS and reads its
//! department's PostgreSQL over TLS (`verify-full`), so a capture of the
//! loopback interface during a feed → node → district run holds no row
//! value in clear (the test fails, as it should, with the feed's
//! `sslmode = "disable"`).

use std::time::{Duration, Instant};

use backflow_e2e::secure_broker::ScramUser;
use backflow_e2e::secure_node::{metadata, settings, SecureNode as Setup, Tokens};
use backflow_e2e::share_topic;
use backflow_e2e::sinks::{Backend, Kind, SinkDb};
use backflow_e2e::Node;
use serde_json::{json, Value};

const ADMIN: &str = "kafka-security-admin";
const GA: &str = "kafka-security-owner-ga";
const AUDITOR: &str = "kafka-security-auditor";
const XIHU: &str = "kafka-security-district-330106";
const BINJIANG: &str = "kafka-security-district-330108";

/// The node of these tests, with `users` on its broker and `kafka_extra`
/// in its `[kafka]` section.
async fn setup(users: &[ScramUser], kafka_extra: &str) -> Setup {
    Setup::start(
        users,
        kafka_extra,
        Tokens {
            admin: ADMIN,
            owner_ga: GA,
            others: &[
                ("auditor", AUDITOR),
                ("subscriber:330106", XIHU),
                ("subscriber:330108", BINJIANG),
            ],
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_works_over_sasl_ssl_and_the_broker_refuses_everyone_else() {
    let district = ScramUser::new("district-330106", false);
    let s = setup(std::slice::from_ref(&district), "").await;
    let (broker, node, node_user) = (&s.broker, &s.node, &s.node_user);
    s.subscribe("330106", XIHU).await;
    s.sql("UPDATE people SET name = '李四' WHERE id = 4").await;
    // The change reaches the share topic, over SASL_SSL, masked.
    let as_node = settings(broker.client_properties(&node_user.name, &node_user.password));
    let share = "backflow.share.330106.ga.people";
    let until = Instant::now() + Duration::from_secs(90);
    loop {
        let records = share_topic::read_via(&as_node, share, &node.url, ADMIN, node.client())
            .await
            .unwrap_or_default();
        if records.iter().any(|r| {
            r.after()
                .is_some_and(|a| a["id"] == 4 && a["name"] == "李*")
        }) {
            break;
        }
        assert!(
            Instant::now() < until,
            "the change never reached {share}: {records:?}\n{}",
            node.stderr()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Everyone else is refused by the broker.
    let raw = "backflow.raw.ga.people";
    let plaintext = vec![(
        "bootstrap.servers".to_owned(),
        broker.bootstrap().to_owned(),
    )];
    assert!(
        metadata(&plaintext, raw).is_err(),
        "a plaintext client is refused"
    );
    // With a wrong password no answer comes at all; with the right one
    // (below) the broker answers, refusing the topic.
    let wrong = broker.client_properties(&district.name, "not-the-password");
    let err = metadata(&wrong, raw).unwrap_err();
    assert!(
        err.contains("BrokerTransportFailure"),
        "a wrong password is refused: {err}"
    );
    let mut untrusting = broker.client_properties(&node_user.name, &node_user.password);
    untrusting.retain(|(k, _)| k != "ssl.ca.location");
    untrusting.push((
        "ssl.ca.location".to_owned(),
        "/etc/ssl/certs/ca-certificates.crt".to_owned(),
    ));
    assert!(
        metadata(&untrusting, raw).is_err(),
        "a client that does not trust the broker's CA does not talk to it"
    );
    let as_district = broker.client_properties(&district.name, &district.password);
    for topic in [
        raw,
        "backflow._catalog",
        "backflow._audit",
        "backflow._schemas",
    ] {
        let err = metadata(&as_district, topic)
            .err()
            .unwrap_or_else(|| panic!("district 330106 may see {topic}"));
        assert!(err.contains("Authorization"), "{topic}: {err}");
    }
    // Not a word of either password in the node's log.
    let log = node.stderr();
    assert!(
        !log.contains(&node_user.password),
        "the node's password is in its log"
    );
}

/// The ACLs the broker holds for `principal`, read as the node's user.
fn acls_of(s: &Setup, principal: &str) -> Vec<backflow::kafka::acl::Acl> {
    let admin = backflow::kafka::acl::AclAdmin::new(&settings(
        s.broker
            .client_properties(&s.node_user.name, &s.node_user.password),
    ))
    .unwrap();
    admin.held_by(principal).unwrap().acls
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_gives_a_district_exactly_its_share_topic_and_takes_it_back() {
    use backflow::kafka::acl::{Acl, AclAdmin, Operation, Pattern, Resource};
    let s = setup(&[], "manage_acls = true").await;

    // The admin registers the districts; each gets a SCRAM credential,
    // shown once. No child node may take the node's own principal.
    let xihu = s
        .ok(
            "PUT",
            "/api/nodes/330106",
            ADMIN,
            json!({"name": "西湖区", "kafka": "scram"}),
        )
        .await;
    let user = xihu["kafka_username"].as_str().unwrap().to_owned();
    let password = xihu["kafka_password"].as_str().unwrap().to_owned();
    assert_eq!(user, "backflow.node.330106");
    assert_eq!(xihu["kafka_principal"], "User:backflow.node.330106");
    s.ok(
        "PUT",
        "/api/nodes/330108",
        ADMIN,
        json!({"name": "滨江区", "kafka": "scram"}),
    )
    .await;
    let (status, answer) = s
        .node
        .api(
            "PUT",
            "/api/nodes/330108",
            Some(ADMIN),
            Some(json!({"name": "滨江区", "kafka": "User:backflow-node"})),
        )
        .await;
    assert_eq!(status, 422, "{answer}");
    let (_, nodes) = s.node.api("GET", "/api/node", Some(ADMIN), None).await;
    assert!(
        !nodes.to_string().contains(&password),
        "the password is shown once only"
    );

    s.subscribe("330106", XIHU).await;
    s.subscribe("330108", BINJIANG).await;
    let mine = "backflow.share.330106.ga.people";
    let principal = "User:backflow.node.330106";
    let wanted = |name: &str, resource, operation, pattern| Acl {
        principal: principal.to_owned(),
        resource,
        name: name.to_owned(),
        pattern,
        operation,
    };
    s.until("the district's ACLs", Duration::from_secs(10), || {
        acls_of(&s, principal).contains(&wanted(
            mine,
            Resource::Topic,
            Operation::Read,
            Pattern::Literal,
        ))
    })
    .await;
    let mut expected = vec![
        wanted(mine, Resource::Topic, Operation::Read, Pattern::Literal),
        wanted(
            "backflow.share.330106.",
            Resource::Group,
            Operation::Read,
            Pattern::Prefixed,
        ),
        wanted(
            "backflow.sdlq.330106.",
            Resource::Topic,
            Operation::Write,
            Pattern::Prefixed,
        ),
        wanted(
            "backflow.sdlq.330106.",
            Resource::Topic,
            Operation::Describe,
            Pattern::Prefixed,
        ),
    ];
    expected.sort();
    assert_eq!(
        acls_of(&s, principal),
        expected,
        "exactly these, nothing more"
    );
    // The API shows what the reconciler's last round read back from the
    // brokers (each second), so it may be a round behind the check above.
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let sub = s
            .ok(
                "GET",
                "/api/subscriptions/330106:ga.people",
                GA,
                Value::Null,
            )
            .await;
        if sub["kafka_acls"].as_array().map(Vec::len) == Some(2) {
            break;
        }
        assert!(
            Instant::now() < until,
            "the subscription shows its 2 ACLs: {sub}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // So does the CLI.
    let shown = backflow_e2e::backflow()
        .args(["subscriptions", "show", "330106:ga.people"])
        .args(["--url", &s.node.url, "--token", GA, "--ca-file"])
        .arg(s.broker.ca_file())
        .output()
        .unwrap();
    assert!(shown.status.success(), "{shown:?}");
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.contains("kafka_acls") && shown.contains(mine),
        "{shown}"
    );

    // The district's own subscriber, set up with what the node issued,
    // receives its residents and nobody else's.
    let sink = SinkDb::create(Backend::Sqlite).await.unwrap();
    let subscriber = Node::subscribe_with_config(
        &format!(
            "[[subscriptions]]\nname = \"xihu\"\n\
             upstream = {{ brokers = \"{}\", registry_url = \"{}\", registry_token_env = \"CITY_TOKEN\", registry_ca_file = \"{ca}\", \
             properties = {{ \"security.protocol\" = \"SASL_SSL\", \"sasl.mechanism\" = \"SCRAM-SHA-512\", \"sasl.username\" = \"{user}\", \"ssl.ca.location\" = \"{ca}\" }}, \
             properties_env = {{ \"sasl.password\" = \"CITY_KAFKA_PASSWORD\" }} }}\n\
             sink = {}\ntables = [{{ topic = \"{mine}\", table = \"people\" }}]\n",
            s.broker.bootstrap(),
            s.node.url,
            sink.sink_toml(),
            ca = s.broker.ca_file().display(),
        ),
        &[("CITY_TOKEN", XIHU), ("CITY_KAFKA_PASSWORD", &password)],
    )
    .unwrap();
    let started = Instant::now();
    let ids = loop {
        let rows = sink
            .rows("people", "id", &[("name", Kind::Text)])
            .await
            .unwrap_or_default()
            .unwrap_or_default();
        if rows.len() >= 10 {
            break rows.keys().copied().collect::<Vec<i64>>();
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the district's subscriber did not receive its rows: {rows:?}\n{}",
            subscriber.stderr()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(ids, (1..=10).map(|i| i * 2).collect::<Vec<i64>>());

    // With the same credentials, nothing else.
    let as_district = s.broker.client_properties(&user, &password);
    for topic in [
        "backflow.raw.ga.people",
        "backflow.share.330108.ga.people",
        "backflow._catalog",
        "backflow._audit",
    ] {
        let err = metadata(&as_district, topic)
            .err()
            .unwrap_or_else(|| panic!("district 330106 may see {topic}"));
        assert!(err.contains("Authorization"), "{topic}: {err}");
    }

    // An ACL added by hand is taken back, on the audit trail.
    let by_hand = wanted(
        "backflow.raw.ga.people",
        Resource::Topic,
        Operation::Read,
        Pattern::Literal,
    );
    AclAdmin::new(&settings(
        s.broker
            .client_properties(&s.node_user.name, &s.node_user.password),
    ))
    .unwrap()
    .create(std::slice::from_ref(&by_hand))
    .unwrap();
    let took = s
        .until(
            "the hand-made ACL taken back",
            Duration::from_secs(10),
            || !acls_of(&s, principal).contains(&by_hand),
        )
        .await;
    println!("an ACL added by hand was deleted after {took:?}");
    // So are rights of kinds the node never grants, added with Kafka's own
    // tool: ALL on every raw topic, ALTER on the cluster.
    for args in [
        &[
            "--topic",
            "backflow.raw.",
            "--resource-pattern-type",
            "prefixed",
            "--operation",
            "All",
        ][..],
        &["--cluster", "--operation", "Alter"][..],
    ] {
        let mut all = vec!["--add", "--allow-principal", principal];
        all.extend_from_slice(args);
        s.broker
            .kafka_tool(
                "org.apache.kafka.tools.AclCommand",
                &s.node_user.name,
                &s.node_user.password,
                &all,
            )
            .unwrap();
    }
    let audited = |what: &str| {
        let node = &s.node;
        let what = what.to_owned();
        async move {
            let (_, trail) = node
                .api("GET", "/api/audit?limit=1000", Some(AUDITOR), None)
                .await;
            trail["records"].as_array().unwrap().iter().any(|r| {
                r["details"]["action"] == "kafka acls removed"
                    && r["details"]["acls"].to_string().contains(&what)
            })
        }
    };
    let started = Instant::now();
    while !(audited("ALLOW ALL TOPIC backflow.raw.").await && audited("ALLOW ALTER BROKER").await) {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "rights of other kinds were not taken back: {}",
            s.node.stderr()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let left = s
        .broker
        .kafka_tool(
            "org.apache.kafka.tools.AclCommand",
            &s.node_user.name,
            &s.node_user.password,
            &["--list", "--principal", principal],
        )
        .unwrap();
    assert!(
        !left.contains("ALTER") && !left.contains("operation=ALL,"),
        "{left}"
    );

    // Principals no node may have.
    for bad in ["User:*", "User:ANONYMOUS", "User:backflow-node"] {
        let (status, answer) = s
            .node
            .api(
                "PUT",
                "/api/nodes/330106",
                Some(ADMIN),
                Some(json!({"name": "西湖区", "kafka": bad})),
            )
            .await;
        assert_eq!(status, 422, "{bad}: {answer}");
    }

    // Revoked: the district's next request for its share topic is refused
    // within 5 seconds.
    s.ok(
        "POST",
        "/api/subscriptions/330106:ga.people/revoke",
        GA,
        json!({"reason": "test"}),
    )
    .await;
    let took = s
        .until(
            "the revoked district refused",
            Duration::from_secs(5),
            || metadata(&as_district, mine).is_err_and(|e| e.contains("Authorization")),
        )
        .await;
    println!("after revocation the district was refused in {took:?}");

    // Moved to a certificate's principal: the SCRAM user it had no longer
    // logs in, and holds nothing.
    s.ok(
        "PUT",
        "/api/nodes/330106",
        ADMIN,
        json!({"name": "西湖区", "kafka": "User:CN=330106"}),
    )
    .await;
    let err = metadata(&as_district, mine).unwrap_err();
    assert!(
        err.contains("BrokerTransportFailure"),
        "the old SCRAM user is deleted: {err}"
    );
    assert_eq!(acls_of(&s, principal), Vec::new());
    assert!(
        !s.node.stderr().contains(&password),
        "the district's password is in the node's log"
    );
}

/// Revocation takes the district's rights at once; what it was sent stays
/// on the cluster until the dataset's grace period (`ended_share_grace_hours`,
/// set by the owner) passes, and then its share topic is deleted, on the
/// audit trail. A district still in force keeps its topic; the revoked one,
/// re-activated, gets a new topic and a full backfill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_share_topic_is_deleted_after_the_owners_grace() {
    let s = setup(&[], "").await;
    let as_node = settings(
        s.broker
            .client_properties(&s.node_user.name, &s.node_user.password),
    );
    let (xihu, binjiang) = (
        "backflow.share.330106.ga.people",
        "backflow.share.330108.ga.people",
    );
    s.subscribe("330106", XIHU).await;
    s.subscribe("330108", BINJIANG).await;
    // The ids a share topic holds (10 residents each: even ids in 330106,
    // odd in 330108).
    let ids = |topic: &'static str| {
        let (as_node, url, client) = (as_node.clone(), s.node.url.clone(), s.node.client().clone());
        async move {
            let mut ids: Vec<i64> = share_topic::read_via(&as_node, topic, &url, ADMIN, &client)
                .await
                .unwrap_or_default()
                .iter()
                .filter_map(|r| r.after().and_then(|a| a["id"].as_i64()))
                .collect();
            ids.sort();
            ids.dedup();
            ids
        }
    };
    let odd: Vec<i64> = (1..=20).filter(|i| i % 2 == 1).collect();
    let until = Instant::now() + Duration::from_secs(90);
    while ids(xihu).await.len() < 10 || ids(binjiang).await != odd {
        assert!(
            Instant::now() < until,
            "the share topics were not filled\n{}",
            s.node.stderr()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let exists = |topic: &'static str| {
        let as_node = as_node.clone();
        async move {
            backflow::kafka::topic_names(&as_node)
                .await
                .unwrap()
                .iter()
                .any(|t| t == topic)
        }
    };

    // Revoked, and the owner wants nothing kept: grace 0.
    s.ok(
        "POST",
        "/api/subscriptions/330108:ga.people/revoke",
        GA,
        json!({"reason": "no longer needed"}),
    )
    .await;
    s.ok(
        "PUT",
        "/api/datasets/ga.people",
        GA,
        json!({"description": "residents", "sharing": "unconditional", "region_column": "region_code",
               "ended_share_grace_hours": 0,
               "fields": {"id": {}, "name": {"sensitivity": "sensitive", "rule": "masked:name"}, "region_code": {}}}),
    )
    .await;
    let started = Instant::now();
    while exists(binjiang).await {
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "the revoked district's share topic was not deleted\n{}",
            s.node.stderr()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    println!(
        "the ended share topic was deleted {:?} after the grace was set to 0",
        started.elapsed()
    );
    assert!(exists(xihu).await, "the district in force lost its topic");
    let (_, trail) = s
        .node
        .api("GET", "/api/audit?limit=1000", Some(AUDITOR), None)
        .await;
    let deletions: Vec<&Value> = trail["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["details"]["action"] == "share topic deleted")
        .collect();
    assert_eq!(deletions.len(), 1, "{deletions:?}");
    assert_eq!(deletions[0]["details"]["topic"], binjiang);
    assert_eq!(deletions[0]["details"]["subscription"], "330108:ga.people");
    let (_, metrics) = s.node.get_ops("/metrics").await.unwrap();
    assert!(
        backflow_e2e::has_series(&metrics, "backflow_share_topics_deleted_total 1"),
        "{metrics}"
    );

    // The district in force goes on receiving.
    s.sql("UPDATE people SET name = '王五' WHERE id = 6").await;
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let records = share_topic::read_via(&as_node, xihu, &s.node.url, ADMIN, s.node.client())
            .await
            .unwrap_or_default();
        if records.iter().any(|r| {
            r.after()
                .is_some_and(|a| a["id"] == 6 && a["name"] == "王*")
        }) {
            break;
        }
        assert!(Instant::now() < until, "330106 stopped receiving");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // Re-activated: a new topic, backfilled with what 330108 may see now.
    s.ok(
        "POST",
        "/api/subscriptions/330108:ga.people/reactivate",
        GA,
        json!({}),
    )
    .await;
    let until = Instant::now() + Duration::from_secs(60);
    while ids(binjiang).await != odd {
        assert!(
            Instant::now() < until,
            "the re-activated subscription was not backfilled\n{}",
            s.node.stderr()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// tcpdump on the loopback interface, writing every packet to a file until
/// stopped.
struct Capture {
    child: std::process::Child,
    file: tempfile::NamedTempFile,
}

impl Capture {
    fn start() -> Self {
        let file = tempfile::Builder::new().suffix(".pcap").tempfile().unwrap();
        let mut child = std::process::Command::new("tcpdump")
            // -Z root: tcpdump would drop to its own user, who may not
            // write the test's file.
            .args(["-i", "lo", "-U", "-s", "0", "-Z", "root", "-w"])
            .arg(file.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("tcpdump (scripts/services.sh up installs it)");
        // It says "listening on lo" once it captures.
        let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        std::io::BufRead::read_line(&mut err, &mut line).unwrap();
        assert!(line.contains("listening on lo"), "tcpdump: {line}");
        Self { child, file }
    }

    /// Stops the capture once it holds `last` (sent last, so every packet
    /// before it reached the file too; at most 10 s); every byte captured.
    fn stop_after(mut self, last: &str) -> Vec<u8> {
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until
            && !holds(&std::fs::read(self.file.path()).unwrap_or_default(), last)
        {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = std::process::Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        std::fs::read(self.file.path()).unwrap()
    }
}

fn holds(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// Every hop of a change, department database → feed → broker → node's
/// distributor → broker → district's subscriber, and the API and registry
/// calls beside them, run over TLS: a capture of the loopback interface
/// during the run holds none of the row's values (the plain one, the one
/// masked on the way, nor the district's credentials), while a canary sent
/// in clear during the same capture is in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_row_value_crosses_the_loopback_in_clear() {
    let s = setup(&[], "manage_acls = true").await;
    s.sql("ALTER TABLE people ADD COLUMN note text").await;
    s.ok(
        "PUT",
        "/api/datasets/ga.people",
        GA,
        json!({"description": "residents", "sharing": "unconditional", "region_column": "region_code",
               "fields": {"id": {}, "name": {"sensitivity": "sensitive", "rule": "masked:name"},
                          "region_code": {}, "note": {}}}),
    )
    .await;
    let xihu = s
        .ok(
            "PUT",
            "/api/nodes/330106",
            ADMIN,
            json!({"name": "西湖区", "kafka": "scram"}),
        )
        .await;
    let user = xihu["kafka_username"].as_str().unwrap().to_owned();
    let password = xihu["kafka_password"].as_str().unwrap().to_owned();
    s.ok(
        "POST",
        "/api/subscriptions",
        XIHU,
        json!({"subscriber": "330106", "dataset": "ga.people", "purpose": "services",
               "fields": ["id", "name", "region_code", "note"]}),
    )
    .await;

    let capture = Capture::start();
    // Values no other test uses: a plain field and one masked on the way.
    let nonce = std::process::id();
    let (note, name) = (format!("plain-note-{nonce}-q7"), format!("甄士隐{nonce}"));
    // The department writes the row over TLS too (psql, sslmode=require).
    let insert = std::process::Command::new("psql")
        .arg(format!(
            "host=127.0.0.1 user=postgres dbname={} sslmode=require",
            s.db.name
        ))
        .args(["-XAtqc", &format!(
            "INSERT INTO people (id, name, region_code, note) VALUES (22, '{name}', '330106', '{note}')"
        )])
        .output()
        .unwrap();
    assert!(insert.status.success(), "{insert:?}");

    let sink = SinkDb::create(Backend::Sqlite).await.unwrap();
    let ca = s.broker.ca_file();
    let subscriber = Node::subscribe_with_config(
        &format!(
            "[[subscriptions]]\nname = \"xihu\"\n\
             upstream = {{ brokers = \"{}\", registry_url = \"{}\", registry_token_env = \"CITY_TOKEN\", registry_ca_file = \"{ca}\", \
             properties = {{ \"security.protocol\" = \"SASL_SSL\", \"sasl.mechanism\" = \"SCRAM-SHA-512\", \"sasl.username\" = \"{user}\", \"ssl.ca.location\" = \"{ca}\" }}, \
             properties_env = {{ \"sasl.password\" = \"CITY_KAFKA_PASSWORD\" }} }}\n\
             sink = {}\ntables = [{{ topic = \"backflow.share.330106.ga.people\", table = \"people\" }}]\n",
            s.broker.bootstrap(),
            s.node.url,
            sink.sink_toml(),
            ca = ca.display(),
        ),
        &[("CITY_TOKEN", XIHU), ("CITY_KAFKA_PASSWORD", &password)],
    )
    .unwrap();
    // The row arrives: the values did cross the loopback, several times.
    let until = Instant::now() + Duration::from_secs(90);
    loop {
        let rows = sink
            .rows(
                "people",
                "id",
                &[("name", Kind::Text), ("note", Kind::Text)],
            )
            .await
            .unwrap_or_default()
            .unwrap_or_default();
        if let Some(row) = rows.get(&22) {
            assert_eq!(row[1].as_deref(), Some(note.as_str()));
            assert_eq!(
                row[0].as_deref(),
                Some(format!("甄{}", "*".repeat(name.chars().count() - 1)).as_str())
            );
            break;
        }
        assert!(
            Instant::now() < until,
            "row 22 never reached the district\n{}\n{}",
            s.node.stderr(),
            subscriber.stderr()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // A canary in clear: the capture sees the loopback.
    let canary = format!("backflow-capture-canary-{nonce}");
    let _ = s.node.get_ops(&format!("/{canary}")).await;
    let captured = capture.stop_after(&canary);

    assert!(
        holds(&captured, &canary),
        "the capture ({} bytes) does not hold the canary sent in clear: it is not capturing lo",
        captured.len()
    );
    for (what, value) in [
        ("the plain field", note.as_str()),
        ("the masked field's value", name.as_str()),
        ("the district's API token", XIHU),
        ("the district's Kafka password", password.as_str()),
    ] {
        assert!(
            !holds(&captured, value),
            "{what} crossed the loopback in clear"
        );
    }
    println!("{} bytes captured on lo, no value in clear", captured.len());
}
