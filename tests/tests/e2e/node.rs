//! `backflow serve` as a user runs it: health, readiness, metrics, config
//! errors and graceful shutdown.

use std::io::Write;
use std::time::Duration;

use backflow::kafka::KafkaSettings;
use backflow_e2e::{backflow, Node, TestBroker};

const READY: Duration = Duration::from_secs(30);

#[tokio::test]
async fn node_on_embedded_broker_is_ready_and_says_data_is_in_memory() {
    let node = Node::start(&[]).unwrap();
    let body = node.wait_for_status("/readyz", 200, READY).await.unwrap();
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        ready,
        serde_json::json!({"status": "ready"}),
        "no check is named to anonymous callers"
    );
    // The checks are shown where no token is needed, http.metrics_listen.
    let (_, body) = node.get_ops("/readyz").await.unwrap();
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["checks"]["kafka"]["status"], "ok");
    assert_eq!(ready["checks"]["internal_topics"]["status"], "ok");
    assert!(
        node.stderr().contains("NO KAFKA CONFIGURED"),
        "warns loudly about the embedded broker:\n{}",
        node.stderr()
    );
    let (status, body) = node.get("/healthz").await.unwrap();
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
}

#[tokio::test]
async fn node_metrics_are_prometheus_text_with_backflow_names() {
    let node = Node::start(&[]).unwrap();
    node.wait_for_status("/readyz", 200, READY).await.unwrap();
    let (status, body) = node.get_ops("/metrics").await.unwrap();
    assert_eq!(status, 200);
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        backflow_e2e::has_series(
            &body,
            &format!(
                "backflow_build_info{{librdkafka=\"{}\",version=\"{version}\"}} 1",
                backflow::kafka::librdkafka_version()
            )
        ),
        "{body}"
    );
    assert!(
        backflow_e2e::has_series(&body, "backflow_kafka_broker_reachable 1"),
        "{body}"
    );
    assert!(
        body.contains("# TYPE backflow_kafka_produced_records_total counter"),
        "{body}"
    );
    assert!(body.contains("process_resident_memory_bytes"), "{body}");
    for line in body.lines().filter(|l| l.starts_with("# TYPE ")) {
        let mut parts = line.split_whitespace().skip(2);
        let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
        if name.starts_with("backflow_") {
            assert_eq!(
                name.ends_with("_total"),
                kind == "counter",
                "`_total` only and always on counters: {line}"
            );
        }
    }
}

#[tokio::test]
async fn node_with_real_broker_creates_internal_topics() {
    let broker = TestBroker::start();
    let brokers = broker.bootstrap().to_owned();
    let node = Node::start(&[("BACKFLOW_KAFKA__BROKERS", &brokers)]).unwrap();
    node.wait_for_status("/readyz", 200, READY).await.unwrap();
    assert!(!node.stderr().contains("NO KAFKA CONFIGURED"));
    let topics = backflow::kafka::topic_names(&KafkaSettings::new(&brokers))
        .await
        .unwrap();
    for t in ["backflow._catalog", "backflow._audit", "backflow._offsets"] {
        assert!(topics.iter().any(|x| x == t), "{t} missing from {topics:?}");
    }
}

#[tokio::test]
async fn node_is_alive_but_not_ready_while_kafka_is_unreachable() {
    let node = Node::start(&[
        ("BACKFLOW_KAFKA__BROKERS", "127.0.0.1:1"),
        ("BACKFLOW_KAFKA__REQUEST_TIMEOUT_MS", "500"),
        ("BACKFLOW_RUNTIME__READINESS_INTERVAL_MS", "200"),
    ])
    .unwrap();
    let body = node.wait_for_status("/readyz", 503, READY).await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "not_ready");
    // Give the first check time to fail (rather than be pending).
    let deadline = std::time::Instant::now() + READY;
    loop {
        let (_, body) = node.get_ops("/readyz").await.unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        if v["checks"]["kafka"]["status"] == "failing" {
            assert!(
                v["checks"]["kafka"]["reason"]
                    .as_str()
                    .unwrap()
                    .contains("127.0.0.1:1"),
                "{v}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "kafka check never failed: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(node.get("/healthz").await.unwrap().0, 200);
    let (_, metrics) = node.get_ops("/metrics").await.unwrap();
    assert!(
        backflow_e2e::has_series(&metrics, "backflow_kafka_broker_reachable 0"),
        "{metrics}"
    );
}

#[tokio::test]
async fn node_stops_gracefully_on_sigterm_and_sigint() {
    for signal in ["TERM", "INT"] {
        let mut node = Node::start(&[]).unwrap();
        node.wait_for_status("/readyz", 200, READY).await.unwrap();
        node.signal(signal).unwrap();
        let status = node.wait(Duration::from_secs(15)).unwrap();
        assert!(
            status.success(),
            "SIG{signal}: exit {status}\n{}",
            node.stderr()
        );
        assert!(
            node.stderr().contains("shutdown complete"),
            "{}",
            node.stderr()
        );
        assert!(
            node.get("/healthz").await.is_err(),
            "port closed after exit"
        );
    }
}

#[test]
fn serve_refuses_unknown_key_naming_it_and_the_file() {
    let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    writeln!(f, "[kafka]\nbrokerz = \"kafka:9092\"").unwrap();
    let out = backflow()
        .args(["serve", "--config"])
        .arg(f.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("kafka.brokerz"), "{err}");
    assert!(err.contains(&f.path().display().to_string()), "{err}");
    assert!(err.contains("`brokers`"), "lists the valid keys: {err}");
}

#[test]
fn serve_refuses_bad_value_naming_the_environment_variable() {
    let out = backflow()
        .arg("serve")
        .env("BACKFLOW_KAFKA__PARTITIONS", "lots")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("kafka.partitions"), "{err}");
    assert!(err.contains("BACKFLOW_KAFKA__PARTITIONS"), "{err}");
}

#[test]
fn serve_refuses_a_taken_port_saying_which_key_to_change() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = backflow()
        .arg("serve")
        .env("BACKFLOW_HTTP__LISTEN", &addr)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&addr) && err.contains("http.listen"), "{err}");
}

#[test]
fn version_prints_backflow_and_librdkafka_versions() {
    let out = backflow().arg("version").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], format!("backflow {}", env!("CARGO_PKG_VERSION")));
    assert!(lines[1].starts_with("librdkafka 2."), "{text}");
}

#[test]
fn help_lists_subcommands() {
    let out = backflow().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for cmd in ["serve", "version", "config"] {
        assert!(
            text.lines().any(|l| l.trim_start().starts_with(cmd)),
            "`{cmd}` missing from --help:\n{text}"
        );
    }
}
