//! The node on a broker as a government network runs it: clients reach it
//! only over SASL_SSL (SCRAM-SHA-512 over TLS, the broker's certificate
//! verified against the network's CA) and the authorizer refuses what no ACL
//! allows. The node logs in as its own principal (a super user of its
//! cluster), its password from the environment; a department's change
//! reaches the district's share topic over that path. Everyone else is
//! refused by the broker: a plaintext client, a wrong password, a client
//! that does not trust the broker's CA, and a district's principal reading a
//! raw topic or the control state.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use backflow::kafka::KafkaSettings;
use backflow_e2e::secure_broker::{ScramUser, SecureBroker};
use backflow_e2e::share_topic;
use backflow_e2e::sinks::{Backend, SinkDb};
use backflow_e2e::{pg_connect, Node};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use serde_json::json;

const ADMIN: &str = "kafka-security-admin";
const GA: &str = "kafka-security-owner-ga";
const XIHU: &str = "kafka-security-district-330106";

fn settings(props: Vec<(String, String)>) -> KafkaSettings {
    let mut props: BTreeMap<String, String> = props.into_iter().collect();
    let bootstrap = props.remove("bootstrap.servers").unwrap();
    let mut s = KafkaSettings::new(bootstrap);
    s.properties = props;
    s.request_timeout = Duration::from_secs(10);
    s
}

/// What the broker answers a client with these properties that asks for
/// `topic`'s metadata: `Ok` when it may see the topic, else the error.
fn metadata(props: &[(String, String)], topic: &str) -> Result<(), String> {
    let mut cfg = ClientConfig::new();
    for (k, v) in props {
        cfg.set(k, v);
    }
    cfg.set("log_level", "0");
    let consumer: BaseConsumer = cfg.create().map_err(|e| e.to_string())?;
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    match md.topics().first().and_then(|t| t.error()) {
        Some(e) => Err(format!("{:?}", rdkafka::types::RDKafkaErrorCode::from(e))),
        None => Ok(()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_works_over_sasl_ssl_and_the_broker_refuses_everyone_else() {
    let node_user = ScramUser::new("backflow-node", true);
    let district = ScramUser::new("district-330106", false);
    let broker = SecureBroker::start(&[node_user.clone(), district.clone()]);

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
    let tokens: String = [
        ("admin", ADMIN),
        ("owner:ga", GA),
        ("subscriber:330106", XIHU),
    ]
    .iter()
    .map(|(p, t)| {
        format!(
            "[[auth.tokens]]\nprincipal = \"{p}\"\nsha256 = \"{}\"\n",
            backflow::auth::token_hash(t)
        )
    })
    .collect();
    let config = format!(
        "[node]\ncode = \"330100\"\n\
         [kafka]\nbrokers = \"{bootstrap}\"\n\
         [kafka.properties]\n\"security.protocol\" = \"SASL_SSL\"\n\"sasl.mechanism\" = \"SCRAM-SHA-512\"\n\
         \"sasl.username\" = \"{user}\"\n\"ssl.ca.location\" = \"{ca}\"\n\
         [kafka.properties_env]\n\"sasl.password\" = \"KAFKA_PASSWORD\"\n\n\
         [[feeds]]\ntype = \"postgres\"\nname = \"{feed}\"\nuser = \"postgres\"\ndatabase = \"{db}\"\n\
         slot = \"{db}\"\npublication = \"{db}\"\n\
         tables = [{{ table = \"public.people\", dataset = \"ga.people\" }}]\n\n{tokens}",
        bootstrap = broker.bootstrap(),
        user = node_user.name,
        ca = broker.ca_file().display(),
        feed = db.name.replace('_', "-"),
        db = db.name,
    );
    let node =
        Node::start_with_config(&config, &[("KAFKA_PASSWORD", &node_user.password)]).unwrap();
    node.wait_for_status("/readyz", 200, Duration::from_secs(90))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", node.stderr(), broker.log()));
    let call = |method: &'static str, path: &'static str, token: &'static str, body| {
        let node = &node;
        async move {
            let (status, answer) = node.api(method, path, Some(token), Some(body)).await;
            assert!(
                (200..300).contains(&status),
                "{method} {path}: {status} {answer}"
            );
        }
    };
    call(
        "PUT",
        "/api/datasets/ga.people",
        GA,
        json!({"description": "residents", "sharing": "unconditional", "region_column": "region_code",
               "fields": {"id": {}, "name": {"sensitivity": "sensitive", "rule": "masked:name"}, "region_code": {}}}),
    )
    .await;
    call(
        "POST",
        "/api/subscriptions",
        XIHU,
        json!({"subscriber": "330106", "dataset": "ga.people", "purpose": "services",
               "fields": ["id", "name", "region_code"]}),
    )
    .await;
    pg_connect(&db.name)
        .await
        .unwrap()
        .batch_execute("UPDATE people SET name = '李四' WHERE id = 4")
        .await
        .unwrap();

    // The change reaches the share topic, over SASL_SSL, masked.
    let as_node = settings(broker.client_properties(&node_user.name, &node_user.password));
    let share = "backflow.share.330106.ga.people";
    let until = Instant::now() + Duration::from_secs(90);
    loop {
        let records = share_topic::read_with(&as_node, share, &node.url, ADMIN)
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
