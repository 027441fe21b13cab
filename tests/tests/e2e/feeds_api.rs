//! Feeds registered through the control-plane API run without restarting
//! the node: register, RUNNING with its rows in the raw topic, pause (no
//! new changes published), resume (they arrive), a bad definition is
//! refused naming the key, a lost replication slot is FAILED with the way
//! out and restart?resnapshot=true takes it, a bound secret whose variable
//! is not set is FAILED with the variable named, delete stops it.

use std::time::{Duration, Instant};

use backflow::kafka::{Consumer, KafkaSettings};
use backflow_e2e::sinks::{Backend, SinkDb};
use backflow_e2e::{pg_connect, Node, TestBroker};
use serde_json::{json, Value};

async fn call(
    node: &Node,
    method: &str,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    node.api(method, path, Some(token), body).await
}

async fn feed_state(node: &Node, token: &str, name: &str) -> (String, String) {
    let (_, list) = call(node, "GET", "/api/feeds", token, None).await;
    list.as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == name)
        .map(|f| {
            (
                f["status"]["state"].as_str().unwrap_or("").to_owned(),
                f["status"]["error"].as_str().unwrap_or("").to_owned(),
            )
        })
        .unwrap_or_default()
}

/// Records in the topic (a raw topic's commit markers left out).
async fn records(settings: &KafkaSettings, topic: &str) -> i64 {
    backflow_e2e::share_topic::count(&settings.bootstrap, topic).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feeds_are_registered_paused_resumed_and_removed_at_runtime() {
    let source = SinkDb::create(Backend::Postgres).await.unwrap();
    let db = pg_connect(&source.name).await.unwrap();
    db.batch_execute(
        "CREATE TABLE items (id bigint PRIMARY KEY, label text);
         INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 50) g;",
    )
    .await
    .unwrap();
    let broker = TestBroker::start();
    // Department names hold no '_' (see topics::validate_dataset_id).
    let department = format!("t{}", source.name[8..].replace('_', ""));
    let dataset = format!("{department}.items");
    let topic = format!("backflow.raw.{dataset}");
    let owner = "owner-token-feeds";
    let config = format!(
        "[kafka]\nbrokers = \"{}\"\n[api_feeds]\nallowed_hosts = [\"127.0.0.1:5432\"]\n\
         [[secrets]]\nname = \"unset\"\ndepartment = \"{department}\"\nenv = \"NOT_SET_ANYWHERE\"\n[[auth.tokens]]\nprincipal = \"owner:{department}\"\nsha256 = \"{}\"\n[[auth.tokens]]\nprincipal = \"owner:someone\"\nsha256 = \"{}\"\n",
        broker.bootstrap(),
        backflow::auth::token_hash(owner),
        backflow::auth::token_hash("other-owner"),
    );
    let node = Node::start_with_config(&config, &[]).unwrap();
    node.wait_for_status("/readyz", 200, Duration::from_secs(30))
        .await
        .unwrap();
    let settings = KafkaSettings::new(broker.bootstrap());
    let name = source.name.replace('_', "-");
    let definition = json!({
        "type": "postgres",
        "user": "postgres",
        "database": source.name,
        "tables": [{"table": "public.items", "dataset": dataset}],
    });

    // Refused: a key the feed does not have, another department's dataset.
    let mut bad = definition.clone();
    bad["snapshot_mode"] = json!("initial");
    let (status, body) = call(
        &node,
        "PUT",
        &format!("/api/feeds/{name}"),
        owner,
        Some(bad),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["reason"].as_str().unwrap().contains("snapshot_mode"),
        "{body}"
    );
    let (status, _) = call(
        &node,
        "PUT",
        &format!("/api/feeds/{name}"),
        "other-owner",
        Some(definition.clone()),
    )
    .await;
    assert_eq!(status, 403);

    let (status, body) = call(
        &node,
        "PUT",
        &format!("/api/feeds/{name}"),
        owner,
        Some(definition.clone()),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let until = Instant::now() + Duration::from_secs(60);
    // Snapshot: 50 rows.
    while records(&settings, &topic).await < 50 {
        assert!(
            Instant::now() < until,
            "snapshot never arrived: {:?}\n{}",
            feed_state(&node, owner, &name).await,
            node.stderr()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let until = Instant::now() + Duration::from_secs(30);
    while feed_state(&node, owner, &name).await.0 != "RUNNING" {
        assert!(
            Instant::now() < until,
            "{:?}",
            feed_state(&node, owner, &name).await
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Paused: changes wait in the slot.
    let (status, _) = call(
        &node,
        "POST",
        &format!("/api/feeds/{name}/pause"),
        owner,
        None,
    )
    .await;
    assert_eq!(status, 200);
    let until = Instant::now() + Duration::from_secs(30);
    while feed_state(&node, owner, &name).await.0 != "PAUSED" {
        assert!(Instant::now() < until);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Paused, the feed reads nothing: its slot has no reader (so nothing
    // can be published), and the slot's confirmed position stays behind
    // the changes made meanwhile.
    let slot = format!(
        "SELECT active, confirmed_flush_lsn < pg_current_wal_lsn() FROM pg_replication_slots WHERE database = '{}'",
        source.name
    );
    let until = Instant::now() + Duration::from_secs(20);
    while db.query_one(&slot, &[]).await.unwrap().get::<_, bool>(0) {
        assert!(
            Instant::now() < until,
            "the paused feed still reads its slot"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = records(&settings, &topic).await;
    db.batch_execute("INSERT INTO items SELECT g, 'late ' || g FROM generate_series(51, 60) g")
        .await
        .unwrap();
    let row = db.query_one(&slot, &[]).await.unwrap();
    assert!(!row.get::<_, bool>(0), "the paused feed read its slot");
    assert!(
        row.get::<_, bool>(1),
        "the changes were consumed while paused"
    );
    assert_eq!(
        records(&settings, &topic).await,
        before,
        "nothing published while paused"
    );

    // Resumed: the changes made while paused arrive.
    let (status, _) = call(
        &node,
        "POST",
        &format!("/api/feeds/{name}/resume"),
        owner,
        None,
    )
    .await;
    assert_eq!(status, 200);
    let until = Instant::now() + Duration::from_secs(60);
    while records(&settings, &topic).await < before + 10 {
        assert!(
            Instant::now() < until,
            "changes made while paused never arrived\n{}",
            node.stderr()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Every row once at least: read the topic's keys.
    let parts = backflow::kafka::partition_count(&settings, &topic)
        .await
        .unwrap() as i32;
    let consumer =
        Consumer::replay_partitions(&settings, &topic, &(0..parts).collect::<Vec<_>>()).unwrap();
    let mut keys = std::collections::BTreeSet::new();
    let total = records(&settings, &topic).await;
    for _ in 0..total {
        let r = tokio::time::timeout(Duration::from_secs(10), consumer.recv())
            .await
            .unwrap()
            .unwrap();
        keys.insert(r.key.unwrap());
    }
    assert_eq!(keys.len(), 60);

    // The slot is lost while the feed is paused: resumed, it cannot go on
    // and says how to get out; restart?resnapshot=true reads the table again.
    let (status, _) = call(
        &node,
        "POST",
        &format!("/api/feeds/{name}/pause"),
        owner,
        None,
    )
    .await;
    assert_eq!(status, 200);
    let slot = format!("backflow_{}", name.replace('-', "_"));
    backflow_e2e::lose_replication_slot(&db, &slot).await;
    let (status, _) = call(
        &node,
        "POST",
        &format!("/api/feeds/{name}/resume"),
        owner,
        None,
    )
    .await;
    assert_eq!(status, 200);
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let (state, error) = feed_state(&node, owner, &name).await;
        if state == "FAILED" {
            assert!(error.contains("does not exist"), "{error}");
            assert!(error.contains("resnapshot=true"), "{error}");
            break;
        }
        assert!(Instant::now() < until, "{state} {error}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let before = records(&settings, &topic).await;
    let (status, body) = call(
        &node,
        "POST",
        &format!("/api/feeds/{name}/restart?resnapshot=true"),
        "other-owner",
        None,
    )
    .await;
    assert_eq!(status, 403, "only the owner: {body}");
    let (status, body) = call(
        &node,
        "POST",
        &format!("/api/feeds/{name}/restart?resnapshot=true"),
        owner,
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let until = Instant::now() + Duration::from_secs(60);
    while records(&settings, &topic).await < before + 60 {
        assert!(
            Instant::now() < until,
            "no new snapshot: {:?}\n{}",
            feed_state(&node, owner, &name).await,
            node.stderr()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    db.batch_execute("UPDATE items SET label = 'after resnapshot' WHERE id = 1")
        .await
        .unwrap();
    let until = Instant::now() + Duration::from_secs(30);
    while records(&settings, &topic).await < before + 61 {
        assert!(Instant::now() < until, "streaming did not resume");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(feed_state(&node, owner, &name).await.0, "RUNNING");

    // A bound secret whose variable is not set: FAILED, naming it.
    let mut needs_password = definition.clone();
    needs_password["password_secret"] = json!("unset");
    let (status, _) = call(
        &node,
        "PUT",
        &format!("/api/feeds/{name}"),
        owner,
        Some(needs_password),
    )
    .await;
    assert_eq!(status, 200);
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let (state, error) = feed_state(&node, owner, &name).await;
        if state == "FAILED" {
            assert!(error.contains("NOT_SET_ANYWHERE"), "{error}");
            break;
        }
        assert!(Instant::now() < until, "{state} {error}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Deleted: gone from the list.
    let (status, _) = call(&node, "DELETE", &format!("/api/feeds/{name}"), owner, None).await;
    assert_eq!(status, 200);
    let until = Instant::now() + Duration::from_secs(30);
    while !feed_state(&node, owner, &name).await.0.is_empty() {
        assert!(
            Instant::now() < until,
            "{:?}",
            feed_state(&node, owner, &name).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    drop(node);
    tokio::time::sleep(Duration::from_secs(1)).await;
    source.drop_db().await.unwrap();
}
