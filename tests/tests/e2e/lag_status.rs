//! Attacks on `POST /api/lag/status`, the route through which subscriber
//! nodes tell their upper node whether their subscriptions run: one
//! district may not crowd the others off the lag board, a status names only
//! the sender's own active shares, and what it says reaches the board as
//! the operator must read it (a failing subscriber is not shown OK, its
//! error text cannot steer a terminal or reorder what the operator reads).

use std::time::Duration;

use backflow_e2e::{Node, TestBroker, TestToken};
use serde_json::{json, Value};

const ADMIN: &str = "lag-status-admin-token-0123456789";
const GA: &str = "lag-status-owner-ga-token-0123456";

/// A node with dataset `ga.people`, shared unconditionally, and active
/// subscriptions of districts 330106 and 330108 to it.
async fn node_with_two_districts(
    broker: &TestBroker,
    xihu: &TestToken,
    shangcheng: &TestToken,
) -> Node {
    let config = format!(
        "[node]\ncode = \"330100\"\n[runtime]\nlag_window_secs = 8\n[kafka]\nbrokers = \"{}\"\n\
         [[auth.tokens]]\nprincipal = \"admin\"\nsha256 = \"{}\"\n\
         [[auth.tokens]]\nprincipal = \"owner:ga\"\nsha256 = \"{}\"\n{}{}",
        broker.bootstrap(),
        backflow::auth::token_hash(ADMIN),
        backflow::auth::token_hash(GA),
        xihu.auth_toml(),
        shangcheng.auth_toml(),
    );
    let node = Node::start_with_config(&config, &[]).unwrap();
    node.wait_for_status("/readyz", 200, Duration::from_secs(60))
        .await
        .unwrap();
    let (s, body) = node
        .api(
            "PUT",
            "/api/datasets/ga.people",
            Some(GA),
            Some(json!({"description": "people", "sharing": "unconditional",
                "region_column": "region_code",
                "fields": {"id": {}, "region_code": {}, "name": {}}})),
        )
        .await;
    assert!((200..300).contains(&s), "{s} {body}");
    for (code, token) in [("330106", xihu), ("330108", shangcheng)] {
        let (s, body) = node
            .api(
                "POST",
                "/api/subscriptions",
                Some(token.token()),
                Some(json!({"subscriber": code, "dataset": "ga.people",
                    "purpose": "services", "fields": ["id", "region_code"]})),
            )
            .await;
        assert!((200..300).contains(&s), "{s} {body}");
    }
    node
}

fn status(subscription: &str, topic: &str, state: &str, error: Option<&str>) -> Value {
    json!({"subscription": subscription, "topics": [topic], "state": state,
        "error": error, "ts_ms": 0})
}

async fn post(client: &reqwest::Client, node: &Node, token: &str, body: &Value) -> (u16, String) {
    let resp = client
        .post(format!("{}/api/lag/status", node.url))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .expect("the node answers");
    let code = resp.status().as_u16();
    (code, resp.text().await.unwrap_or_default())
}

/// Waits until the board's row of `subscriber` satisfies `ok`; returns it.
async fn until_row(
    node: &Node,
    subscriber: &str,
    what: &str,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    node.until_lag_row(ADMIN, subscriber, what, Duration::from_secs(30), ok)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_district_cannot_crowd_another_off_the_lag_board() {
    let broker = TestBroker::start();
    let xihu = TestToken::new("subscriber:330106");
    let shangcheng = TestToken::new("subscriber:330108");
    let node = node_with_two_districts(&broker, &xihu, &shangcheng).await;
    let client = reqwest::Client::new();

    // 330108 posts statuses under ever new subscription names, more than
    // the node would ever keep of all districts together.
    let topic = "backflow.share.330108.ga.people";
    let mut accepted = 0;
    let mut refusal = None;
    for n in 0..10_050 {
        let (code, text) = post(
            &client,
            &node,
            shangcheng.token(),
            &status(&format!("flood-{n}"), topic, "RUNNING", None),
        )
        .await;
        if code == 204 {
            accepted += 1;
        } else {
            refusal = Some((code, text));
            break;
        }
    }
    let (code, text) = refusal.unwrap_or_else(|| {
        panic!("all {accepted} statuses under new names were taken from one district")
    });
    assert_eq!(code, 429, "{text}");
    assert!(
        accepted <= 64 && text.contains("330108") && text.contains("64"),
        "{accepted} taken; refusal: {text}"
    );
    // The same names may keep reporting: the cap is on names, not posts.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (code, text) = post(
        &client,
        &node,
        shangcheng.token(),
        &status("flood-0", topic, "RUNNING", None),
    )
    .await;
    assert_eq!(code, 204, "{text}");

    // 330106 is not crowded out: its failing subscription shows with its
    // reason, and not as OK.
    let (code, text) = post(
        &client,
        &node,
        xihu.token(),
        &status(
            "xihu-people",
            "backflow.share.330106.ga.people",
            "FAILED",
            Some("applying a batch: the database is full"),
        ),
    )
    .await;
    assert_eq!(code, 204, "{text}");
    let row = until_row(&node, "330106", "330106's failure", |r| {
        r["error"]
            .as_str()
            .is_some_and(|e| e.contains("database is full"))
    })
    .await;
    assert_eq!(row["status"], "ERR", "a failing subscriber shown as {row}");
    assert_eq!(row["dataset"], "ga.people", "{row}");

    // A second subscription of 330106 on the same topic that runs does not
    // hide the failing one.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let share = "backflow.share.330106.ga.people";
    for (name, state, error) in [
        (
            "xihu-people",
            "FAILED",
            Some("applying a batch: the database is full"),
        ),
        ("xihu-people-2", "RUNNING", None),
    ] {
        let (code, text) = post(
            &client,
            &node,
            xihu.token(),
            &status(name, share, state, error),
        )
        .await;
        assert_eq!(code, 204, "{text}");
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (_, board) = node.api("GET", "/api/lag", Some(ADMIN), None).await;
    let row = board["subscriptions"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["subscriber"] == "330106"))
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(row["status"], "ERR", "the failure was hidden: {row}");
    assert!(
        row["error"]
            .as_str()
            .is_some_and(|e| e.contains("database is full")),
        "{row}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_names_only_the_senders_active_shares_in_plain_words() {
    let broker = TestBroker::start();
    let xihu = TestToken::new("subscriber:330106");
    let shangcheng = TestToken::new("subscriber:330108");
    let node = node_with_two_districts(&broker, &xihu, &shangcheng).await;
    let client = reqwest::Client::new();
    let own = "backflow.share.330106.ga.people";

    let long = format!("backflow.share.330106.{}", "a".repeat(7000));
    let refused: Vec<(&str, Value)> = vec![
        (
            "a share topic with no dataset",
            status("x", "backflow.share.330106.", "RUNNING", None),
        ),
        (
            "a topic name Kafka refuses (space)",
            status("x", "backflow.share.330106.ga.peo ple", "RUNNING", None),
        ),
        (
            "a topic name Kafka refuses (NUL)",
            status("x", "backflow.share.330106.ga.people\u{0}", "RUNNING", None),
        ),
        (
            "a topic longer than Kafka allows",
            status("x", &long, "RUNNING", None),
        ),
        (
            "a dataset 330106 has no active subscription to",
            status("x", "backflow.share.330106.ga.other", "RUNNING", None),
        ),
        (
            "another district's topic",
            status("x", "backflow.share.330108.ga.people", "RUNNING", None),
        ),
        (
            "a name that reverses the text after it (U+202E)",
            status("xihu\u{202e}elpoep", own, "RUNNING", None),
        ),
        (
            "a name with an invisible character (U+200B)",
            status("xihu\u{200b}", own, "RUNNING", None),
        ),
        ("a blank name", status("   ", own, "RUNNING", None)),
        (
            "a name with a space",
            status("xihu people", own, "RUNNING", None),
        ),
        (
            "a state other than RUNNING or FAILED",
            status("xihu", own, "DONE", None),
        ),
    ];
    for (what, body) in &refused {
        let (code, text) = post(&client, &node, xihu.token(), body).await;
        assert_eq!(code, 422, "{what}: {text}");
        assert!(
            text.len() < 2000,
            "{what}: the refusal echoes the input: {text}"
        );
    }

    // An error text that would colour a terminal, reorder the text around
    // it or hide characters reaches the board without those controls.
    let (code, text) = post(
        &client,
        &node,
        xihu.token(),
        &status(
            "xihu-people",
            own,
            "FAILED",
            Some(
                "\u{1b}[2J\u{1b}[31mtable\u{202e}gnissim\u{200b} <b>x</b>\u{2028}\u{1D173}\u{2800}",
            ),
        ),
    )
    .await;
    assert_eq!(code, 204, "{text}");
    let row = until_row(&node, "330106", "the error", |r| {
        r["error"].as_str().is_some_and(|e| e.contains("table"))
    })
    .await;
    let error = row["error"].as_str().unwrap();
    assert!(
        !error.contains([
            '\u{1b}',
            '\u{202e}',
            '\u{200b}',
            '\u{2028}',
            '\u{1D173}',
            '\u{2800}'
        ]),
        "controls kept: {error:?}"
    );
    assert!(
        error.contains("gnissim") && error.contains("<b>x</b>"),
        "{error:?}"
    );

    // The same name posted again at once is refused: a district reports
    // every 2 s, and every status is a write to the node's Kafka.
    let again = status("xihu-people", own, "RUNNING", None);
    let (first, _) = post(&client, &node, xihu.token(), &again).await;
    let (second, text) = post(&client, &node, xihu.token(), &again).await;
    assert!(first == 204 || first == 429, "{first}");
    assert_eq!(second, 429, "{text}");
}
