//! Who may do what, exactly: every route of the API, the registry and the
//! operational endpoints, called by every kind of principal (an admin, the
//! owner of the dataset, another owner, the subscriber concerned, another
//! subscriber, the auditor, and no token at all), each cell asserting the
//! exact status. A call a principal may make is given an object of its own,
//! so that each allowed cell really succeeds and each refused one is
//! refused for who it is, not for the state an earlier cell left.

use std::time::Duration;

use backflow_e2e::{Node, TestBroker};
use serde_json::{json, Value};

/// The callers, in the order of each row's expected statuses.
const CALLERS: [(&str, Option<&str>); 7] = [
    ("admin", Some("authz-admin")),
    ("owner of the dataset", Some("authz-owner-ga")),
    ("other owner", Some("authz-owner-mz")),
    ("the subscriber", Some("authz-district-330106")),
    ("other subscriber", Some("authz-district-330108")),
    ("auditor", Some("authz-auditor")),
    ("no token", None),
];
const ADMIN: &str = "authz-admin";
const GA: &str = "authz-owner-ga";
const XIHU: &str = "authz-district-330106";

struct Cell {
    method: &'static str,
    path: String,
    body: Option<Value>,
}

/// One route: per caller, the call to make (path and body may differ per
/// caller so that each allowed call has its own object) and the status.
struct Row {
    route: &'static str,
    calls: Vec<(Cell, u16)>,
}

fn row(
    route: &'static str,
    method: &'static str,
    expected: [u16; 7],
    cell: impl Fn(usize) -> (String, Option<Value>),
) -> Row {
    Row {
        route,
        calls: expected
            .iter()
            .enumerate()
            .map(|(i, status)| {
                let (path, body) = cell(i);
                (Cell { method, path, body }, *status)
            })
            .collect(),
    }
}

fn same(path: &str, body: Option<Value>) -> impl Fn(usize) -> (String, Option<Value>) {
    let path = path.to_owned();
    move |_| (path.clone(), body.clone())
}

async fn call(node: &Node, cell: &Cell, token: Option<&str>) -> (u16, String) {
    // A request the node never answers fails the test (naming the route)
    // instead of holding the whole run until CI gives up.
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(60))
        .build()
        .unwrap();
    let url = format!("{}{}", node.url, cell.path);
    let mut req = match cell.method {
        "GET" => client.get(&url),
        "PUT" => client.put(&url),
        "PATCH" => client.patch(&url),
        "DELETE" => client.delete(&url),
        _ => client.post(&url),
    };
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = &cell.body {
        req = req.json(b);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("{} {}: {e}", cell.method, cell.path));
    (
        resp.status().as_u16(),
        resp.text().await.unwrap_or_default(),
    )
}

fn dataset(sharing: &str) -> Value {
    json!({"description": "d", "sharing": sharing, "region_column": "region_code",
        "fields": {"id": {}, "region_code": {}, "note": {}}})
}

/// A body registering a schema with the registry.
fn registry_schema() -> Value {
    let schema =
        json!({"type": "record", "name": "Authz", "fields": [{"name": "id", "type": "long"}]});
    json!({ "schema": schema.to_string() })
}

fn ask(dataset: &str) -> Value {
    json!({"subscriber": "330106", "dataset": dataset, "purpose": "services", "fields": ["id", "region_code"]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_each_principal_exactly() {
    let broker = TestBroker::start();
    let poll_dir = tempfile::tempdir().unwrap();
    let sqlite = poll_dir.path().join("ga.db");
    rusqlite::Connection::open(&sqlite)
        .unwrap()
        .execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, region_code TEXT, note TEXT);")
        .unwrap();
    let principals = [
        ("admin", "authz-admin"),
        ("owner:ga", "authz-owner-ga"),
        ("owner:mz", "authz-owner-mz"),
        ("subscriber:330106", "authz-district-330106"),
        ("subscriber:330108", "authz-district-330108"),
        ("auditor", "authz-auditor"),
    ];
    let tokens: String = principals
        .iter()
        .map(|(p, t)| {
            format!(
                "[[auth.tokens]]\nprincipal = \"{p}\"\nsha256 = \"{}\"\n",
                backflow::auth::token_hash(t)
            )
        })
        .collect();
    let config = format!(
        "[node]\ncode = \"330100\"\n[kafka]\nbrokers = \"{}\"\n[api_feeds]\nsqlite_dir = \"{}\"\n{tokens}",
        broker.bootstrap(),
        poll_dir.path().display()
    );
    let node = Node::start_with_config(&config, &[]).unwrap();
    node.wait_for_status("/readyz", 200, Duration::from_secs(60))
        .await
        .unwrap();
    let setup = |method: &'static str, path: &str, token: &'static str, body: Option<Value>| {
        let node = &node;
        let cell = Cell {
            method,
            path: path.to_owned(),
            body,
        };
        async move {
            let (status, text) = call(node, &cell, Some(token)).await;
            assert!(
                (200..300).contains(&status),
                "setup {method} {}: {status} {text}",
                cell.path
            );
            serde_json::from_str::<Value>(&text).unwrap_or(Value::Null)
        }
    };

    // Objects: datasets of `ga`, pending, active and revoked subscriptions
    // of 330106, feeds of `ga`, an issued token.
    for (id, sharing) in [
        ("ga.base", "unconditional"),
        ("ga.open1", "unconditional"),
        ("ga.open2", "unconditional"),
        ("ga.open3", "unconditional"),
    ] {
        setup(
            "PUT",
            &format!("/api/datasets/{id}"),
            GA,
            Some(dataset(sharing)),
        )
        .await;
    }
    for n in 1..=9 {
        setup(
            "PUT",
            &format!("/api/datasets/ga.p{n}"),
            GA,
            Some(dataset("conditional")),
        )
        .await;
        setup(
            "POST",
            "/api/subscriptions",
            XIHU,
            Some(ask(&format!("ga.p{n}"))),
        )
        .await;
    }
    for n in 1..=9 {
        setup(
            "PUT",
            &format!("/api/datasets/ga.a{n}"),
            GA,
            Some(dataset("unconditional")),
        )
        .await;
        setup(
            "POST",
            "/api/subscriptions",
            XIHU,
            Some(ask(&format!("ga.a{n}"))),
        )
        .await;
    }
    for n in 7..=9 {
        setup(
            "POST",
            &format!("/api/subscriptions/330106:ga.a{n}/revoke"),
            GA,
            None,
        )
        .await;
    }
    let feed = |dataset: &str| {
        json!({"type": "poll", "engine": "sqlite", "path": sqlite,
            "tables": [{"table": "t", "dataset": dataset, "mode": "bulk"}]})
    };
    for name in ["ga-f", "ga-d1", "ga-d2", "ga-d3"] {
        setup(
            "PUT",
            &format!("/api/feeds/{name}"),
            GA,
            Some(feed("ga.polled")),
        )
        .await;
    }
    let issued: Vec<String> = {
        let mut v = Vec::new();
        for _ in 0..2 {
            let t = setup(
                "POST",
                "/api/tokens",
                ADMIN,
                Some(json!({"principal": "subscriber:330110"})),
            )
            .await;
            v.push(t["sha256"].as_str().unwrap().to_owned());
        }
        v
    };

    // A subject the registry rows read, check against and delete.
    setup(
        "POST",
        "/subjects/authz-del-value/versions",
        ADMIN,
        Some(registry_schema()),
    )
    .await;

    // 200 for the admin and owner `ga`, 403 for everyone else, 401 without a token.
    const OWNERS: [u16; 7] = [200, 200, 403, 403, 403, 403, 401];
    const ADMIN_ONLY: [u16; 7] = [200, 403, 403, 403, 403, 403, 401];
    const ANY_BUT_AUDITOR: [u16; 7] = [200, 200, 200, 200, 200, 403, 401];
    const AUDITOR_ONLY: [u16; 7] = [403, 403, 403, 403, 403, 200, 401];
    // Pending subscriptions: admin decides on p1/p4/p7, the owner on p2/p5/p8,
    // every other caller is refused on p3/p6/p9; likewise for a1..a9.
    let own = |base: usize| move |i: usize| base + i.min(2);
    let decide = |action: &'static str, prefix: &'static str, base: usize, body: Option<Value>| {
        let pick = own(base);
        move |i: usize| {
            (
                format!("/api/subscriptions/330106:ga.{prefix}{}/{action}", pick(i)),
                body.clone(),
            )
        }
    };
    let rows = vec![
        row(
            "GET /api/datasets",
            "GET",
            ANY_BUT_AUDITOR,
            same("/api/datasets", None),
        ),
        row("PUT /api/datasets/{id}", "PUT", OWNERS, |i| {
            (
                format!("/api/datasets/ga.new{i}"),
                Some(dataset("conditional")),
            )
        }),
        row(
            "PATCH /api/datasets/{id}",
            "PATCH",
            OWNERS,
            same(
                "/api/datasets/ga.base",
                Some(json!({"description": "edited"})),
            ),
        ),
        row(
            "GET /api/subscriptions",
            "GET",
            ANY_BUT_AUDITOR,
            same("/api/subscriptions", None),
        ),
        row(
            "POST /api/subscriptions",
            "POST",
            [201, 403, 403, 201, 403, 403, 401],
            |i| {
                (
                    "/api/subscriptions".to_owned(),
                    Some(ask(match i {
                        0 => "ga.open1",
                        3 => "ga.open2",
                        _ => "ga.open3",
                    })),
                )
            },
        ),
        row(
            "GET /api/subscriptions/{id}",
            "GET",
            [200, 200, 403, 200, 403, 403, 401],
            same("/api/subscriptions/330106:ga.p1", None),
        ),
        row(
            "POST /api/subscriptions/{id}/approve",
            "POST",
            OWNERS,
            decide("approve", "p", 1, Some(json!({"request_version": 1}))),
        ),
        row(
            "POST /api/subscriptions/{id}/reject",
            "POST",
            OWNERS,
            decide("reject", "p", 4, Some(json!({"reason": "not needed"}))),
        ),
        row(
            "POST /api/subscriptions/{id}/revoke",
            "POST",
            OWNERS,
            decide("revoke", "a", 1, None),
        ),
        row(
            "POST /api/subscriptions/{id}/narrow",
            "POST",
            OWNERS,
            decide("narrow", "a", 4, Some(json!({"fields": ["id"]}))),
        ),
        row(
            "POST /api/subscriptions/{id}/reactivate",
            "POST",
            OWNERS,
            decide("reactivate", "a", 7, None),
        ),
        row(
            "GET /api/grants/{id}",
            "GET",
            [200, 200, 403, 200, 403, 403, 401],
            same("/api/grants/330106:ga.a5", None),
        ),
        row(
            "POST /api/grants/{id}/holders",
            "POST",
            [403, 403, 403, 204, 403, 403, 401],
            same(
                "/api/grants/330106:ga.a5/holders",
                Some(json!({"holders": []})),
            ),
        ),
        row(
            "GET /api/datasets/{id}/holders",
            "GET",
            OWNERS,
            same("/api/datasets/ga.base/holders", None),
        ),
        row(
            "GET /api/node",
            "GET",
            [200, 200, 200, 200, 200, 200, 401],
            same("/api/node", None),
        ),
        row(
            "GET /api/whoami",
            "GET",
            [200, 200, 200, 200, 200, 200, 401],
            same("/api/whoami", None),
        ),
        row(
            "PUT /api/nodes/{code}",
            "PUT",
            ADMIN_ONLY,
            same("/api/nodes/330106", Some(json!({"name": "西湖区"}))),
        ),
        row(
            "GET /api/tokens",
            "GET",
            ADMIN_ONLY,
            same("/api/tokens", None),
        ),
        row(
            "POST /api/tokens",
            "POST",
            [201, 403, 403, 403, 403, 403, 401],
            same("/api/tokens", Some(json!({"principal": "owner:ga"}))),
        ),
        row(
            "DELETE /api/tokens/{sha256}",
            "DELETE",
            ADMIN_ONLY,
            move |i| (format!("/api/tokens/{}", issued[i.min(1)]), None),
        ),
        row(
            "GET /api/lag",
            "GET",
            ANY_BUT_AUDITOR,
            same("/api/lag", None),
        ),
        row(
            "GET /api/lag/history",
            "GET",
            [200, 200, 403, 200, 403, 403, 401],
            same("/api/lag/history?subscriber=330106&dataset=ga.a2", None),
        ),
        row(
            // Another subscriber is refused for naming 330106's topic (of an
            // active share: a2 is revoked by now).
            "POST /api/lag/status",
            "POST",
            [403, 403, 403, 204, 422, 403, 401],
            same(
                "/api/lag/status",
                Some(json!({
                    "subscription": "d330106",
                    "topics": ["backflow.share.330106.ga.a5"],
                    "state": "RUNNING",
                    "ts_ms": 0
                })),
            ),
        ),
        row(
            "GET /api/quality",
            "GET",
            [200, 200, 200, 403, 403, 403, 401],
            same("/api/quality", None),
        ),
        row(
            "GET /api/standards",
            "GET",
            ANY_BUT_AUDITOR,
            same("/api/standards", None),
        ),
        row(
            "GET /api/feeds",
            "GET",
            [200, 200, 200, 403, 403, 403, 401],
            same("/api/feeds", None),
        ),
        row("PUT /api/feeds/{name}", "PUT", OWNERS, |i| {
            (format!("/api/feeds/ga-new{i}"), Some(feed("ga.polled")))
        }),
        row(
            "POST /api/feeds/{name}/pause",
            "POST",
            OWNERS,
            same("/api/feeds/ga-f/pause", None),
        ),
        row(
            "POST /api/feeds/{name}/resume",
            "POST",
            OWNERS,
            same("/api/feeds/ga-f/resume", None),
        ),
        row(
            "POST /api/feeds/{name}/restart",
            "POST",
            OWNERS,
            same("/api/feeds/ga-f/restart", None),
        ),
        row("DELETE /api/feeds/{name}", "DELETE", OWNERS, |i| {
            (format!("/api/feeds/ga-d{}", i.min(2) + 1), None)
        }),
        row(
            "GET /api/audit",
            "GET",
            AUDITOR_ONLY,
            same("/api/audit?limit=5", None),
        ),
        row(
            "POST /api/audit/verify",
            "POST",
            AUDITOR_ONLY,
            same("/api/audit/verify", None),
        ),
        // The schema registry: read by everyone but the auditor, changed
        // over HTTP by the admin only.
        row(
            "GET /subjects",
            "GET",
            ANY_BUT_AUDITOR,
            same("/subjects", None),
        ),
        row("GET /config", "GET", ANY_BUT_AUDITOR, same("/config", None)),
        row(
            "POST /compatibility/subjects/{subject}/versions",
            "POST",
            ANY_BUT_AUDITOR,
            same(
                "/compatibility/subjects/authz-del-value/versions",
                Some(registry_schema()),
            ),
        ),
        row(
            "POST /subjects/{subject}/versions",
            "POST",
            ADMIN_ONLY,
            |i| {
                (
                    format!("/subjects/authz-new{i}-value/versions"),
                    Some(registry_schema()),
                )
            },
        ),
        row(
            "PUT /config/{subject}",
            "PUT",
            ADMIN_ONLY,
            same(
                "/config/authz-del-value",
                Some(json!({"compatibility": "NONE"})),
            ),
        ),
        row(
            "DELETE /subjects/{subject}",
            "DELETE",
            ADMIN_ONLY,
            same("/subjects/authz-del-value", None),
        ),
        row("GET /metrics", "GET", ADMIN_ONLY, same("/metrics", None)),
        row("GET /readyz", "GET", [200; 7], same("/readyz", None)),
        row("GET /healthz", "GET", [200; 7], same("/healthz", None)),
    ];

    let mut wrong = Vec::new();
    for r in &rows {
        for ((cell, want), (who, token)) in r.calls.iter().zip(CALLERS) {
            let (got, text) = call(&node, cell, token).await;
            if got != *want {
                wrong.push(format!(
                    "{} by {who} ({} {}): {got}, expected {want}: {}",
                    r.route,
                    cell.method,
                    cell.path,
                    text.chars().take(300).collect::<String>()
                ));
            } else if (400..500).contains(&got) && got != 404 {
                // Every refusal says why.
                let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                // (The registry's answers are Confluent's: `message`.)
                let reason = v["reason"].as_str().or(v["message"].as_str());
                if reason.is_none_or(|r| r.is_empty()) {
                    wrong.push(format!(
                        "{} by {who}: {got} without a reason: {text}",
                        r.route
                    ));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} cells differ:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}
