//! The node's control state is not a bearer of trust: a client of the
//! node's Kafka cluster that writes `backflow._catalog` itself (a super
//! user, or anyone on a cluster without ACLs) cannot make the node believe
//! a record the node did not sign. Reproduced attacks: a token record
//! naming `admin` for a token the attacker chose, and a real record of the
//! node replayed with its signature but a changed value (a district's token
//! turned into an admin's), and a revoked token's earlier record replayed
//! unchanged with its genuine signature. All are rejected and reported
//! (metric and log), none is applied, the node writes its own record of a
//! replayed key again (so compaction keeps it), and its own writes go on. The
//! subscriptions' HMAC keys are in the topic only sealed with the node's
//! key, and a restarted node opens them again.

use std::time::Duration;

use backflow::kafka::{
    ConsumedRecord, Consumer, KafkaSettings, OutgoingRecord, Publisher, Watermarks,
};
use backflow_e2e::{Node, TestBroker};
use serde_json::{json, Value};

const ADMIN: &str = "catalog-trust-admin";

/// Every record of the catalog topic, as any client of the cluster reads it.
async fn catalog_records(settings: &KafkaSettings) -> Vec<ConsumedRecord> {
    let catalog = "backflow._catalog";
    let high = Watermarks::new(settings)
        .unwrap()
        .high(catalog, 0)
        .await
        .unwrap();
    let reader = Consumer::replay(settings, catalog, 0).unwrap();
    let mut out = Vec::new();
    while out.len() < high as usize {
        out.push(reader.recv().await.unwrap());
    }
    out
}

/// The last record of `key` in the catalog topic.
async fn last_of(settings: &KafkaSettings, key: &str) -> Option<ConsumedRecord> {
    catalog_records(settings)
        .await
        .into_iter()
        .rev()
        .find(|r| r.key.as_deref() == Some(key.as_bytes()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalog_record_the_node_did_not_sign_is_rejected_and_reported() {
    let broker = TestBroker::start();
    let config = format!(
        "[node]\ncode = \"330100\"\n[kafka]\nbrokers = \"{}\"\n\
         [[auth.tokens]]\nprincipal = \"admin\"\nsha256 = \"{}\"\n",
        broker.bootstrap(),
        backflow::auth::token_hash(ADMIN)
    );
    let node = Node::start_with_config(&config, &[]).unwrap();
    node.wait_for_status("/readyz", 200, Duration::from_secs(60))
        .await
        .unwrap();
    let (status, issued) = node
        .api(
            "POST",
            "/api/tokens",
            Some(ADMIN),
            Some(json!({"principal": "subscriber:330106", "label": "Xihu"})),
        )
        .await;
    assert_eq!(status, 201, "{issued}");
    let district_token = issued["token"].as_str().unwrap().to_owned();
    let settings = KafkaSettings::new(broker.bootstrap());
    let catalog = "backflow._catalog";

    // The node's own record of the district's token, with its headers.
    let sha = backflow::auth::token_hash(&district_token);
    let genuine = last_of(&settings, &format!("token:{sha}"))
        .await
        .expect("the token record is in the catalog");

    let attacker = Publisher::new(&settings, None).unwrap();
    // Attack 1: a record of the attacker's own, unsigned.
    let forged = "forged-admin-token";
    let sha = backflow::auth::token_hash(forged);
    let record = json!({"type": "token", "sha256": sha, "principal": "admin",
                        "label": "x", "issued_ms": 0, "revoked": false})
    .to_string();
    let key = format!("token:{sha}");
    attacker
        .send(OutgoingRecord::new(
            catalog,
            key.as_bytes(),
            record.as_bytes(),
        ))
        .await
        .unwrap();
    // Attack 2: the node's record, its signature kept, its value changed.
    let mut changed: Value = serde_json::from_slice(genuine.payload.as_deref().unwrap()).unwrap();
    changed["principal"] = json!("admin");
    let changed = changed.to_string();
    let headers: Vec<(&str, &[u8])> = genuine
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_slice()))
        .collect();
    attacker
        .send(OutgoingRecord {
            topic: catalog,
            key: genuine.key.as_deref(),
            payload: Some(changed.as_bytes()),
            headers: &headers,
        })
        .await
        .unwrap();
    // The node's own next write lands after both.
    let (status, answer) = node
        .api(
            "POST",
            "/api/tokens",
            Some(ADMIN),
            Some(json!({"principal": "owner:ga", "label": "marker"})),
        )
        .await;
    assert_eq!(status, 201, "{answer}");

    let (status, answer) = node.api("GET", "/api/tokens", Some(forged), None).await;
    assert_eq!(
        status, 401,
        "an unsigned token record was believed: {answer}"
    );
    let (status, answer) = node
        .api("GET", "/api/tokens", Some(&district_token), None)
        .await;
    assert_eq!(
        status, 403,
        "a changed record with the node's signature was believed: {answer}"
    );
    let (status, answer) = node
        .api("GET", "/api/subscriptions", Some(&district_token), None)
        .await;
    assert_eq!(status, 200, "the district's token still works: {answer}");

    // Attack 3: a revoked token's earlier record, replayed unchanged with
    // its genuine signature.
    let (status, issued) = node
        .api(
            "POST",
            "/api/tokens",
            Some(ADMIN),
            Some(json!({"principal": "admin", "label": "to be revoked"})),
        )
        .await;
    assert_eq!(status, 201, "{issued}");
    let (revoked_token, revoked_sha) = (
        issued["token"].as_str().unwrap().to_owned(),
        issued["sha256"].as_str().unwrap().to_owned(),
    );
    let earlier = last_of(&settings, &format!("token:{revoked_sha}"))
        .await
        .expect("the token's record");
    let (status, answer) = node
        .api(
            "DELETE",
            &format!("/api/tokens/{revoked_sha}"),
            Some(ADMIN),
            None,
        )
        .await;
    assert!((200..300).contains(&status), "{answer}");
    let headers: Vec<(&str, &[u8])> = earlier
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_slice()))
        .collect();
    attacker
        .send(OutgoingRecord {
            topic: catalog,
            key: earlier.key.as_deref(),
            payload: earlier.payload.as_deref(),
            headers: &headers,
        })
        .await
        .unwrap();
    let (status, answer) = node
        .api(
            "POST",
            "/api/tokens",
            Some(ADMIN),
            Some(json!({"principal": "owner:mz", "label": "marker 2"})),
        )
        .await;
    assert_eq!(status, 201, "{answer}");
    let (status, answer) = node
        .api("GET", "/api/tokens", Some(&revoked_token), None)
        .await;
    assert_eq!(
        status, 401,
        "a replayed record un-revoked a token: {answer}"
    );
    // The node wrote its own record of that key again, after the replay:
    // compaction keeps the revocation.
    let started = std::time::Instant::now();
    loop {
        let last = last_of(&settings, &format!("token:{revoked_sha}")).await;
        let last: Value =
            serde_json::from_slice(last.unwrap().payload.as_deref().unwrap()).unwrap();
        if last["revoked"] == true {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the replay is still the key's last record"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    let rejected = |node: &Node, times: usize| {
        let log = node.stderr();
        assert_eq!(
            log.matches("catalog record rejected").count(),
            times,
            "each rejection is reported once: {log}"
        );
    };
    let (_, metrics) = node.api("GET", "/metrics", Some(ADMIN), None).await;
    let metrics = metrics.as_str().unwrap_or_default().to_owned();
    assert!(
        backflow_e2e::has_series(&metrics, "backflow_catalog_rejected_total 3"),
        "{metrics}"
    );
    rejected(&node, 3);

    // A subscription's HMAC key is in the topic sealed, not in clear.
    let (status, answer) = node
        .api(
            "PUT",
            "/api/datasets/ga.people",
            Some(ADMIN),
            Some(
                json!({"description": "residents", "sharing": "unconditional",
                        "region_column": "region_code",
                        "fields": {"id": {}, "phone": {"rule": "hashed"}, "region_code": {}}}),
            ),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = node
        .api(
            "POST",
            "/api/subscriptions",
            Some(&district_token),
            Some(
                json!({"subscriber": "330106", "dataset": "ga.people", "purpose": "services",
                        "fields": ["id", "phone", "region_code"]}),
            ),
        )
        .await;
    assert!((200..300).contains(&status), "{answer}");
    let secrets: Vec<String> = catalog_records(&settings)
        .await
        .iter()
        .filter_map(|r| serde_json::from_slice::<Value>(r.payload.as_deref()?).ok())
        .filter(|v| v["type"] == "subscription")
        .map(|v| v["secret"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(!secrets.is_empty());
    for secret in &secrets {
        assert!(
            secret.starts_with("sealed:v1:") && secret.len() > 64 + 10,
            "an HMAC key in clear in the catalog topic: {secret}"
        );
    }

    // Restarted with its key, the node opens its own records again and
    // rejects the same three, reporting only the one no record of its own
    // came after (the forged token's key): the other two were superseded
    // by the records it wrote again, and were reported when they were new.
    drop(node);
    let node = Node::start_with_config(&config, &[]).unwrap();
    node.wait_for_status("/readyz", 200, Duration::from_secs(60))
        .await
        .unwrap();
    let (status, answer) = node
        .api(
            "GET",
            "/api/subscriptions/330106:ga.people",
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["state"], "active", "{answer}");
    rejected(&node, 1);
    let log = node.stderr();
    let line = log
        .lines()
        .find(|l| l.contains("catalog record rejected"))
        .unwrap();
    assert!(line.contains("no signature"), "the forged record: {line}");
    let (status, _) = node
        .api("GET", "/api/tokens", Some(&revoked_token), None)
        .await;
    assert_eq!(status, 401, "the revocation survived the restart");
}

/// Rotating the node's key: the node started with a new key and the old
/// one in `audit.previous_key_files` writes every catalog record again
/// under the new key (HMAC keys sealed anew), so on the next start the old
/// key can be gone and nothing is lost: datasets, the subscription with
/// its HMAC key (its pseudonyms unchanged) and an issued token all stand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_key_rotation_the_old_key_can_be_dropped() {
    let broker = TestBroker::start();
    let keys = tempfile::tempdir().unwrap();
    let (old, new) = (keys.path().join("old.key"), keys.path().join("new.key"));
    backflow_e2e::audit_keygen(&old).unwrap();
    backflow_e2e::audit_keygen(&new).unwrap();
    let config = |key: &std::path::Path, previous: Option<&std::path::Path>| {
        format!(
            "[node]\ncode = \"330100\"\n[kafka]\nbrokers = \"{}\"\n\
             [audit]\nsigning_key_file = \"{}\"\nprevious_key_files = [{}]\n{}",
            broker.bootstrap(),
            key.display(),
            previous
                .map(|p| format!("\"{}\"", p.display()))
                .unwrap_or_default(),
            backflow_e2e::tokens_toml(&[
                ("admin", ADMIN),
                ("owner:ga", "rotation-owner-ga"),
                ("subscriber:330106", "rotation-district"),
            ]),
        )
    };
    let start = |config: String| async move {
        let node = Node::start_with_config(&config, &[]).unwrap();
        node.wait_for_status("/readyz", 200, Duration::from_secs(60))
            .await
            .unwrap();
        node
    };

    // Under the old key: a dataset with a hashed field, a subscription to
    // it (its HMAC key sealed), a token issued through the API.
    let node = start(config(&old, None)).await;
    let (status, answer) = node
        .api(
            "PUT",
            "/api/datasets/ga.people",
            Some("rotation-owner-ga"),
            Some(json!({"sharing": "unconditional", "all_rows": true,
                        "fields": {"id": {}, "phone": {"sensitivity": "sensitive", "rule": "hashed"}}})),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = node
        .api(
            "POST",
            "/api/subscriptions",
            Some("rotation-district"),
            Some(
                json!({"subscriber": "330106", "dataset": "ga.people", "purpose": "services",
                        "fields": ["id", "phone"]}),
            ),
        )
        .await;
    assert!((200..300).contains(&status), "{answer}");
    let (status, issued) = node
        .api(
            "POST",
            "/api/tokens",
            Some(ADMIN),
            Some(json!({"principal": "subscriber:330108", "label": "Binjiang"})),
        )
        .await;
    assert_eq!(status, 201, "{issued}");
    let issued = issued["token"].as_str().unwrap().to_owned();
    let settings = KafkaSettings::new(broker.bootstrap());
    let sealed_before = last_of(&settings, "subscription:330106:ga.people")
        .await
        .unwrap()
        .payload
        .unwrap();
    drop(node);

    // The new key, the old one still believed: everything is written again.
    let node = start(config(&new, Some(&old))).await;
    let until = std::time::Instant::now() + Duration::from_secs(30);
    while !node
        .stderr()
        .contains("catalog records written again under the node's current key")
    {
        assert!(
            std::time::Instant::now() < until,
            "the records were not written again\n{}",
            node.stderr()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let sealed_after = last_of(&settings, "subscription:330106:ga.people")
        .await
        .unwrap()
        .payload
        .unwrap();
    assert_ne!(sealed_before, sealed_after, "sealed anew");
    drop(node);

    // The old key gone: nothing is rejected, everything stands.
    let node = start(config(&new, None)).await;
    let (_, metrics) = node.get_ops("/metrics").await.unwrap();
    assert!(
        backflow_e2e::has_series(&metrics, "backflow_catalog_rejected_total 0"),
        "records rejected after the rotation\n{}",
        node.stderr()
    );
    let (status, datasets) = node.api("GET", "/api/datasets", Some(&issued), None).await;
    assert_eq!(
        status, 200,
        "the token issued under the old key: {datasets}"
    );
    assert!(datasets.to_string().contains("ga.people"), "{datasets}");
    let (status, sub) = node
        .api(
            "GET",
            "/api/subscriptions/330106:ga.people",
            Some("rotation-owner-ga"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{sub}");
    assert_eq!(sub["state"], "active", "{sub}");
    // A fourth start writes nothing again.
    assert!(!node
        .stderr()
        .contains("catalog records written again under the node's current key"));
}
