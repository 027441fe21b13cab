//! The API, the schema registry and the web page over HTTPS
//! (`http.tls_cert`, `http.tls_key`): tokens and schemas never cross the
//! network in clear. A plain-HTTP client gets nothing, a client that does
//! not trust the node's CA does not talk to it, and a district's own
//! `backflow subscribe`, given the CA (`upstream.registry_ca_file`), reads
//! its schemas from the registry over HTTPS and receives its rows.

use std::time::{Duration, Instant};

use backflow_e2e::secure_broker::make_certificates;
use backflow_e2e::sinks::{Backend, Kind, SinkDb};
use backflow_e2e::{pg_connect, Node, TestBroker};
use serde_json::{json, Value};

const ADMIN: &str = "https-admin";
const GA: &str = "https-owner-ga";
const XIHU: &str = "https-district-330106";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_and_registry_are_served_over_https_only() {
    let certs = tempfile::tempdir().unwrap();
    make_certificates(certs.path()).unwrap();
    let ca = certs.path().join("ca.pem");
    let broker = TestBroker::start();
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
    let tokens = backflow_e2e::tokens_toml(&[
        ("admin", ADMIN),
        ("owner:ga", GA),
        ("subscriber:330106", XIHU),
    ]);
    let config = format!(
        "[node]\ncode = \"330100\"\n[kafka]\nbrokers = \"{}\"\n\
         [http]\ntls_cert = \"{}\"\ntls_key = \"{}\"\n\n\
         [[feeds]]\ntype = \"postgres\"\nname = \"{feed}\"\nuser = \"postgres\"\ndatabase = \"{db}\"\n\
         slot = \"{db}\"\npublication = \"{db}\"\n\
         tables = [{{ table = \"public.people\", dataset = \"ga.people\" }}]\n\n{tokens}",
        broker.bootstrap(),
        certs.path().join("broker.crt").display(),
        certs.path().join("broker.key").display(),
        feed = db.name.replace('_', "-"),
        db = db.name,
    );
    let node = Node::start_with_config(&config, &[]).unwrap();
    assert!(node.url.starts_with("https://"), "{}", node.url);
    let https = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(&ca).unwrap()).unwrap())
        .build()
        .unwrap();
    let started = Instant::now();
    loop {
        let ready = https
            .get(format!("{}/readyz", node.url))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200);
        if ready {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "not ready over HTTPS\n{}",
            node.stderr()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // Nothing for a plain-HTTP client, nor for one that does not trust the
    // node's CA.
    let plain = node.url.replacen("https://", "http://", 1);
    let answer = reqwest::Client::new()
        .get(format!("{plain}/api/node"))
        .bearer_auth(ADMIN)
        .send()
        .await;
    assert!(
        answer.as_ref().map_or(true, |r| !r.status().is_success()),
        "plain HTTP was answered: {answer:?}"
    );
    assert!(
        reqwest::Client::new()
            .get(format!("{}/readyz", node.url))
            .send()
            .await
            .is_err(),
        "a client that does not trust the node's CA talked to it"
    );

    let call = |method: reqwest::Method, path: &str, token: &str, body: Value| {
        https
            .request(method, format!("{}{path}", node.url))
            .bearer_auth(token)
            .json(&body)
            .send()
    };
    let r = call(
        reqwest::Method::PUT,
        "/api/datasets/ga.people",
        GA,
        json!({"description": "residents", "sharing": "unconditional", "region_column": "region_code",
               "fields": {"id": {}, "name": {"sensitivity": "sensitive", "rule": "masked:name"}, "region_code": {}}}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let r = call(
        reqwest::Method::POST,
        "/api/subscriptions",
        XIHU,
        json!({"subscriber": "330106", "dataset": "ga.people", "purpose": "services",
               "fields": ["id", "name", "region_code"]}),
    )
    .await
    .unwrap();
    assert!(r.status().is_success(), "{:?}", r.text().await);

    // The district's subscriber reads its schemas over HTTPS.
    let sink = SinkDb::create(Backend::Sqlite).await.unwrap();
    let subscriber = Node::subscribe_with_config(
        &format!(
            "[[subscriptions]]\nname = \"xihu\"\n\
             upstream = {{ brokers = \"{}\", registry_url = \"{}\", registry_token_env = \"CITY_TOKEN\", registry_ca_file = \"{}\" }}\n\
             sink = {}\ntables = [{{ topic = \"backflow.share.330106.ga.people\", table = \"people\" }}]\n",
            broker.bootstrap(),
            node.url,
            ca.display(),
            sink.sink_toml(),
        ),
        &[("CITY_TOKEN", XIHU)],
    )
    .unwrap();
    let started = Instant::now();
    loop {
        let rows = sink
            .rows("people", "id", &[("name", Kind::Text)])
            .await
            .unwrap_or_default()
            .unwrap_or_default();
        if rows.len() >= 10 {
            assert_eq!(
                rows.keys().copied().collect::<Vec<i64>>(),
                (1..=10).map(|i| i * 2).collect::<Vec<i64>>()
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the district received nothing over HTTPS: {rows:?}\n{}",
            subscriber.stderr()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // The CLI talks to the node over HTTPS when given its CA, and only then.
    let cli = |ca: Option<&std::path::Path>| {
        let mut cmd = backflow_e2e::backflow();
        cmd.args(["datasets", "list", "--url", &node.url, "--token", ADMIN]);
        if let Some(ca) = ca {
            cmd.arg("--ca-file").arg(ca);
        }
        cmd.output().unwrap()
    };
    let without = cli(None);
    assert!(!without.status.success(), "the CLI trusted an unknown CA");
    assert!(
        String::from_utf8_lossy(&without.stderr).contains("cannot reach the node"),
        "{without:?}"
    );
    let with = cli(Some(&ca));
    assert!(with.status.success(), "{with:?}");
    assert!(
        String::from_utf8_lossy(&with.stdout).contains("ga.people"),
        "{with:?}"
    );
}
