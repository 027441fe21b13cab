//! Two processes serving one node (`kafka.replica` a and b) share its
//! catalog through Kafka. An owner's decisions reach either one, and two
//! of them on the same subscription at the same moment (approve on one
//! process, reject on the other) must not both succeed: each process
//! decides on the state it has read, so without an order between the
//! processes both would answer 200 and the catalog would keep whichever
//! was written last, telling one of the two callers something false.

use std::time::{Duration, Instant};

use backflow_e2e::{TestBroker, TestToken};
use serde_json::json;

use crate::exactly_once::ready_node;

const ROUNDS: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_deciding_one_subscription_at_once_do_not_both_succeed() {
    let broker = TestBroker::start();
    let admin = TestToken::new("admin");
    let xihu = TestToken::new("subscriber:330106");
    let config = format!(
        "[node]\ncode = \"330100\"\n[kafka]\nbrokers = \"{}\"\n{}{}",
        broker.bootstrap(),
        admin.auth_toml(),
        xihu.auth_toml()
    );
    let as_replica =
        |r: &str| config.replacen("[kafka]\n", &format!("[kafka]\nreplica = \"{r}\"\n"), 1);
    let (a, _) = ready_node(&as_replica("a")).await;
    let (b, _) = ready_node(&as_replica("b")).await;

    let mut ids = Vec::new();
    for i in 0..ROUNDS {
        let dataset = format!("t330100gongan.people{i}");
        let (status, body) = a
            .api(
                "PUT",
                &format!("/api/datasets/{dataset}"),
                Some(admin.token()),
                Some(json!({"description": "residents", "sharing": "conditional", "all_rows": true, "fields": {"id": {}, "name": {}}})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        // Requested through the other process, once it has read the dataset.
        let until = Instant::now() + Duration::from_secs(20);
        let id = loop {
            let (status, body) = b
                .api(
                    "POST",
                    "/api/subscriptions",
                    Some(xihu.token()),
                    Some(json!({"subscriber": "330106", "dataset": dataset, "purpose": "resident services", "fields": ["id", "name"]})),
                )
                .await;
            if status == 201 {
                break body["id"].as_str().expect("id").to_owned();
            }
            assert!(Instant::now() < until, "request refused: {status} {body}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        ids.push(id);
    }
    // Both processes see every request pending before deciding.
    for id in &ids {
        for node in [&a, &b] {
            let until = Instant::now() + Duration::from_secs(20);
            while state(node, &admin, id).await != "pending" {
                assert!(Instant::now() < until, "{id} never pending on both");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    let mut outcomes = Vec::new();
    for id in &ids {
        let (approve_path, reject_path) = (
            format!("/api/subscriptions/{id}/approve"),
            format!("/api/subscriptions/{id}/reject"),
        );
        let approve = a.api(
            "POST",
            &approve_path,
            Some(admin.token()),
            Some(json!({"request_version": 1})),
        );
        let reject = b.api(
            "POST",
            &reject_path,
            Some(admin.token()),
            Some(json!({"reason": "outside the dataset's sharing terms"})),
        );
        let ((approved, approve_body), (rejected, reject_body)) = tokio::join!(approve, reject);
        let succeeded = [approved, rejected]
            .iter()
            .filter(|s| (200..300).contains(*s))
            .count();
        assert_eq!(
            succeeded, 1,
            "{id}: approve on a answered {approved} {approve_body}, reject on b answered {rejected} {reject_body}: exactly one decision may succeed"
        );
        let want = if (200..300).contains(&approved) {
            "active"
        } else {
            "rejected"
        };
        outcomes.push((id.clone(), want, approved, rejected));
    }
    // Both processes end with the decision that succeeded.
    for (id, want, _, _) in &outcomes {
        for node in [&a, &b] {
            let until = Instant::now() + Duration::from_secs(20);
            loop {
                let got = state(node, &admin, id).await;
                if got == *want {
                    break;
                }
                assert!(
                    Instant::now() < until,
                    "{id}: {got} on a process, but the decision that succeeded made it {want}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    println!("{ROUNDS} races (approve on a, reject on b): {outcomes:?}");
}

async fn state(node: &backflow_e2e::Node, admin: &TestToken, id: &str) -> String {
    let (_, body) = node
        .api(
            "GET",
            &format!("/api/subscriptions/{id}"),
            Some(admin.token()),
            None,
        )
        .await;
    body["state"].as_str().unwrap_or_default().to_owned()
}
