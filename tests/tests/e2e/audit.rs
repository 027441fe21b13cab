//! The audit trail as an owner or auditor checks it: a node signs every
//! record of `backflow._audit` with its Ed25519 key, and `backflow audit
//! verify --public-key` names by offset every record that was forged
//! (appended by somebody else), altered, inserted or is missing; a trail
//! whose oldest records expired is checked from its first checkpoint left.
//!
//! The altered, inserted, missing and expired trails are built as an
//! operator could: the node's real records copied into a fresh broker's
//! `backflow._audit` with one change each.

use std::time::Duration;

use backflow::kafka::{
    Consumer, KafkaSettings, OutgoingRecord, Publisher, TopicAdmin, TopicSpec, Watermarks,
};
use backflow_e2e::{audit_keygen, audit_verify, backflow, Node, TestBroker};
use serde_json::{json, Value};

const READY: Duration = Duration::from_secs(30);
const OWNER: &str = "owner-token-audit";
const AUDIT: &str = "backflow._audit";

/// A node 330100 on `broker` with an owner token for department `gongan`.
async fn start_node(broker: &TestBroker, env: &[(&str, &str)]) -> Node {
    let config = format!(
        "[node]\ncode = \"330100\"\n[kafka]\nbrokers = \"{}\"\n[[auth.tokens]]\nprincipal = \"owner:gongan\"\nsha256 = \"{}\"\n",
        broker.bootstrap(),
        backflow::auth::token_hash(OWNER)
    );
    let node = Node::start_with_config(&config, env).unwrap();
    node.wait_for_status("/readyz", 200, READY).await.unwrap();
    node
}

/// A topic's configuration as the broker describes it.
async fn topic_config(bootstrap: &str, topic: &str) -> std::collections::BTreeMap<String, String> {
    use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let described = admin
        .describe_configs([&ResourceSpecifier::Topic(topic)], &AdminOptions::new())
        .await
        .unwrap();
    let resource = described.into_iter().next().unwrap().unwrap();
    resource
        .entries
        .into_iter()
        .filter_map(|e| Some((e.name, e.value?)))
        .collect()
}

/// `n` decisions on the node's trail: datasets registered by their owner.
async fn decide(node: &Node, n: usize, tag: &str) {
    for i in 0..n {
        let (status, body) = node
            .api(
                "PUT",
                &format!("/api/datasets/gongan.{tag}{i}"),
                Some(OWNER),
                Some(json!({
                    "description": "residents",
                    "sharing": "conditional",
                    "region_column": "region_code",
                    "fields": {"id": {}, "region_code": {}}
                })),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
}

/// Every record of the audit topic: (offset, key, parsed value).
async fn trail(bootstrap: &str) -> Vec<(i64, Vec<u8>, Value)> {
    let settings = KafkaSettings::new(bootstrap);
    // Delivery records are written in the distributor's transactions: the
    // end may be a commit marker, never delivered.
    let high = Watermarks::new(&settings)
        .unwrap()
        .settled_high(&settings, AUDIT, 0, backflow::kafka::SETTLE_WITHIN)
        .await
        .unwrap();
    let consumer = Consumer::replay(&settings, AUDIT, 0).unwrap();
    let mut ends = std::collections::HashMap::from([(0, high)]);
    let mut out: Vec<(i64, Vec<u8>, Value)> = Vec::new();
    while let Some(r) = tokio::time::timeout(Duration::from_secs(30), consumer.recv_to(&mut ends))
        .await
        .expect("the audit topic is read to its end")
        .unwrap()
    {
        let v = serde_json::from_slice(r.payload.as_deref().unwrap()).unwrap();
        out.push((r.offset, r.key.unwrap_or_default(), v));
    }
    out
}

/// Appends records to a broker's audit topic as any Kafka client can.
async fn append(bootstrap: &str, records: &[(Vec<u8>, Value)]) {
    let settings = KafkaSettings::new(bootstrap);
    TopicAdmin::new(&settings)
        .unwrap()
        .ensure(&[TopicSpec::kept(AUDIT, 1, 1)])
        .await
        .unwrap();
    let publisher = Publisher::new(&settings, None).unwrap();
    for (key, value) in records {
        publisher
            .send(OutgoingRecord::new(
                AUDIT,
                key,
                value.to_string().as_bytes(),
            ))
            .await
            .unwrap();
    }
}

/// A fresh broker whose audit topic holds `records`, in this order.
async fn copied(records: Vec<(Vec<u8>, Value)>) -> TestBroker {
    let broker = TestBroker::start();
    append(broker.bootstrap(), &records).await;
    broker
}

fn sha256_hex(text: &str) -> String {
    let out = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write as _;
            child.stdin.take().unwrap().write_all(text.as_bytes())?;
            child.wait_with_output()
        })
        .expect("sha256sum");
    String::from_utf8(out.stdout).unwrap()[..64].to_owned()
}

/// A record continuing after `last` with the right sequence number, prev
/// and SHA-256 hash, but no signature: what anybody who can write to the
/// topic (or the node's operator) can append.
fn forged_after(last: &Value, details: Value) -> Value {
    let mut forged = json!({
        "node": last["node"],
        "seq": last["seq"].as_u64().unwrap() + 1,
        "ts_ms": last["ts_ms"],
        "kind": "decision",
        "details": details,
        "prev": last["hash"],
        "key_id": last["key_id"],
    });
    // serde_json writes keys sorted and without spaces: the canonical form.
    forged["hash"] = Value::String(sha256_hex(&forged.to_string()));
    forged
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_trail_is_signed_and_verifies_with_the_node_public_key() {
    let broker = TestBroker::start();
    let node = start_node(&broker, &[]).await;
    decide(&node, 3, "signed").await;
    let public_key = node.audit_public_key().unwrap().to_owned();

    let records = trail(broker.bootstrap()).await;
    assert!(records.len() >= 4, "a checkpoint and three decisions");
    let (_, key, first) = &records[0];
    assert_eq!(key, b"330100");
    assert_eq!(first["kind"], "checkpoint", "{first}");
    assert_eq!(first["details"]["public_key"], public_key.as_str());
    for (_, _, r) in &records {
        assert!(
            r["sig"].as_str().is_some_and(|s| s.len() == 128),
            "every record is signed: {r}"
        );
    }
    assert!(
        records
            .iter()
            .any(|(_, _, r)| r["kind"] == "decision"
                && r["details"]["action"] == "dataset registered")
    );

    // The topic keeps its records forever.
    let config = topic_config(broker.bootstrap(), AUDIT).await;
    assert_eq!(
        config.get("retention.ms").map(String::as_str),
        Some("-1"),
        "{config:?}"
    );
    assert_eq!(
        config.get("cleanup.policy").map(String::as_str),
        Some("delete"),
        "{config:?}"
    );

    let (code, out) = audit_verify(broker.bootstrap(), &["--public-key", &public_key]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("audit trail intact: every record signed with a trusted key"),
        "{out}"
    );
    assert!(out.contains("chain 330100:"), "{out}");

    // The key can be given for the node's chain only, from a file.
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::write(&keys, format!("# the city\n330100={public_key}\n")).unwrap();
    let (code, out) = audit_verify(
        broker.bootstrap(),
        &["--public-key-file", keys.to_str().unwrap()],
    );
    assert_eq!(code, Some(0), "{out}");

    // Without a key, verify says what it did not check.
    let (code, out) = audit_verify(broker.bootstrap(), &[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("signatures NOT checked"), "{out}");
    assert!(!out.contains("audit trail intact"), "{out}");

    // Another key: nothing on the trail was signed with it.
    let (other, _) = audit_keygen(&dir.path().join("other.key")).unwrap();
    let (code, out) = audit_verify(broker.bootstrap(), &["--public-key", &other]);
    assert_eq!(code, Some(1), "{out}");
    assert_eq!(
        out.matches(": forged: ").count(),
        records.len(),
        "every record is reported: {out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_reports_a_forged_approval_by_offset() {
    let broker = TestBroker::start();
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("audit.key");
    let (public_key, _) = audit_keygen(&key_file).unwrap();
    let key_env = [(
        "BACKFLOW_AUDIT__SIGNING_KEY_FILE",
        key_file.to_str().unwrap(),
    )];
    let node = start_node(&broker, &key_env).await;
    decide(&node, 1, "forged").await;
    let records = trail(broker.bootstrap()).await;
    let (last_offset, _, last) = records.last().unwrap().clone();

    let forged = forged_after(
        &last,
        json!({"action": "subscription approved", "by": "owner:gongan", "subscription": "330106.gongan.forged0", "fields": ["id", "name", "id_number"]}),
    );
    let seq = forged["seq"].as_u64().unwrap();
    append(broker.bootstrap(), &[(b"330100".to_vec(), forged)]).await;
    // After the node's last record and its transaction's commit marker.
    let (offset, _, _) = trail(broker.bootstrap()).await.pop().unwrap();
    assert!(offset > last_offset);

    // Read as the API reads it: the forged record is there, unsigned.
    let mut keys = backflow::state::audit::TrustedKeys::none();
    keys.trust_spec(&format!("330100={public_key}")).unwrap();
    let settings = KafkaSettings::new(broker.bootstrap());
    let entries = backflow::state::audit::read(&settings, &keys, last_offset, 10)
        .await
        .unwrap();
    let got: Vec<(i64, Option<u64>, bool)> = entries
        .iter()
        .map(|e| (e.offset, e.seq, e.signature_ok))
        .collect();
    assert_eq!(
        got,
        vec![
            (last_offset, Some(seq - 1), true),
            (offset, Some(seq), false)
        ]
    );
    assert_eq!(entries[1].details["action"], "subscription approved");
    let report = backflow::state::audit::verify(&settings, &keys)
        .await
        .unwrap();
    assert_eq!(
        report
            .problems
            .iter()
            .map(|p| (p.offset, p.kind))
            .collect::<Vec<_>>(),
        vec![(offset, backflow::state::audit::ProblemKind::Forged)]
    );

    // The hash chain alone cannot tell: that was the whole check before.
    let (code, out) = audit_verify(broker.bootstrap(), &[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("signatures NOT checked"), "{out}");

    let (code, out) = audit_verify(broker.bootstrap(), &["--public-key", &public_key]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!(
            "PROBLEM offset {offset} (chain 330100, seq {seq}): forged: no signature"
        )),
        "{out}"
    );
    assert_eq!(out.matches("PROBLEM").count(), 1, "{out}");

    // The node, restarted with its key, goes on after its own last
    // record, not after the forged one, and says so; its records are not
    // taken for inserted ones, and the forged one stays reported.
    drop(node);
    let node = start_node(&broker, &key_env).await;
    decide(&node, 1, "after").await;
    let after = trail(broker.bootstrap()).await;
    let forged_at = after.iter().position(|(o, _, _)| *o == offset).unwrap();
    let (_, _, restart) = &after[forged_at + 1];
    assert_eq!(restart["kind"], "checkpoint", "{restart}");
    assert_eq!(restart["seq"].as_u64(), Some(seq), "{restart}");
    assert_eq!(restart["prev"], last["hash"], "{restart}");
    assert!(
        node.stderr().contains("not signed with its key"),
        "the node says it found records it did not sign:\n{}",
        node.stderr()
    );
    let (code, out) = audit_verify(broker.bootstrap(), &["--public-key", &public_key]);
    assert_eq!(code, Some(1), "{out}");
    assert_eq!(out.matches("PROBLEM").count(), 1, "{out}");
    assert!(out.contains(&format!("PROBLEM offset {offset} ")), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_names_altered_inserted_and_missing_records_by_offset() {
    let broker = TestBroker::start();
    let node = start_node(&broker, &[]).await;
    decide(&node, 5, "copy").await;
    let public_key = node.audit_public_key().unwrap().to_owned();
    let real: Vec<(Vec<u8>, Value)> = trail(broker.bootstrap())
        .await
        .into_iter()
        .map(|(_, k, v)| (k, v))
        .collect();
    assert!(real.len() >= 6);
    drop(node);
    let verify =
        |broker: &TestBroker| audit_verify(broker.bootstrap(), &["--public-key", &public_key]);

    // The copy itself verifies.
    let same = copied(real.clone()).await;
    let (code, out) = verify(&same);
    assert_eq!(code, Some(0), "{out}");
    drop(same);

    // Record 3 changed: who registered the dataset.
    let mut altered = real.clone();
    altered[3].1["details"]["by"] = json!("owner:minzheng");
    let b = copied(altered).await;
    let (code, out) = verify(&b);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("PROBLEM offset 3 (chain 330100, seq 3): altered:"),
        "{out}"
    );
    assert_eq!(out.matches("PROBLEM").count(), 1, "{out}");
    drop(b);

    // Record 3 twice: the copy at offset 4 repeats its sequence number.
    let mut inserted = real.clone();
    inserted.insert(4, real[3].clone());
    let b = copied(inserted).await;
    let (code, out) = verify(&b);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("PROBLEM offset 4 (chain 330100, seq 3): inserted:"),
        "{out}"
    );
    assert_eq!(out.matches("PROBLEM").count(), 1, "{out}");
    drop(b);

    // Record 3 left out: seq 4 at offset 3 follows seq 2.
    let mut missing = real.clone();
    missing.remove(3);
    let b = copied(missing).await;
    let (code, out) = verify(&b);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("PROBLEM offset 3 (chain 330100, seq 4): missing: sequence jumps from 2 to 4"),
        "{out}"
    );
    assert_eq!(out.matches("PROBLEM").count(), 1, "{out}");
    drop(b);

    // All three in one trail: each is named, not only the first.
    let mut all = real.clone();
    all[1].1["details"]["sharing"] = json!("unconditional");
    all.insert(3, real[2].clone());
    all.remove(5);
    let b = copied(all).await;
    let (code, out) = verify(&b);
    assert_eq!(code, Some(1), "{out}");
    for expected in [
        "PROBLEM offset 1 (chain 330100, seq 1): altered:",
        "PROBLEM offset 3 (chain 330100, seq 2): inserted:",
        "PROBLEM offset 5 (chain 330100, seq 5): missing:",
    ] {
        assert!(out.contains(expected), "{expected}: {out}");
    }
    assert_eq!(out.matches("PROBLEM").count(), 3, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_checks_an_expired_trail_from_its_first_checkpoint() {
    let broker = TestBroker::start();
    let node = start_node(&broker, &[("BACKFLOW_AUDIT__CHECKPOINT_EVERY", "3")]).await;
    decide(&node, 7, "expiry").await;
    let public_key = node.audit_public_key().unwrap().to_owned();
    let real: Vec<(Vec<u8>, Value)> = trail(broker.bootstrap())
        .await
        .into_iter()
        .map(|(_, k, v)| (k, v))
        .collect();
    drop(node);
    let kinds: Vec<&str> = real
        .iter()
        .map(|(_, v)| v["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        &kinds[..7],
        &[
            "checkpoint",
            "decision",
            "decision",
            "checkpoint",
            "decision",
            "decision",
            "checkpoint"
        ],
        "a checkpoint at start and every 3 records"
    );

    // Records seq 0 and 1 dropped by retention: checked from seq 2 on.
    let b = copied(real[2..].to_vec()).await;
    let (code, out) = audit_verify(b.bootstrap(), &["--public-key", &public_key]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("chain 330100: records seq 0 to 1 expired")
            && out.contains("first checkpoint left at offset 1"),
        "{out}"
    );
    assert!(out.contains("audit trail intact"), "{out}");
    assert!(!out.contains("PROBLEM"), "{out}");
    drop(b);

    // A trail starting mid-way with no checkpoint: missing, not expired.
    let b = copied(real[4..6].to_vec()).await;
    let (code, out) = audit_verify(b.bootstrap(), &["--public-key", &public_key]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("PROBLEM offset 0 (chain 330100, seq 4): missing: the chain starts at seq 4"),
        "{out}"
    );
    assert!(!out.contains("expired"), "{out}");
}

#[test]
fn serve_on_a_kafka_cluster_refuses_to_start_without_an_audit_key() {
    let out = backflow()
        .arg("serve")
        .env("BACKFLOW_KAFKA__BROKERS", "127.0.0.1:1")
        .env("BACKFLOW_HTTP__LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("audit.signing_key_file is not set") && err.contains("backflow audit keygen"),
        "{err}"
    );

    // keygen never overwrites a key; the file is the owner's alone.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("audit.key");
    let (public, said) = audit_keygen(&file).unwrap();
    assert_eq!(public.len(), 64, "{public}");
    assert!(said.contains("audit.signing_key_file"), "{said}");
    let secret = std::fs::read_to_string(&file).unwrap();
    assert!(!said.contains(secret.trim()), "the secret is not printed");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let err = audit_keygen(&file).unwrap_err().to_string();
    assert!(err.contains("never overwritten"), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), secret);
}
