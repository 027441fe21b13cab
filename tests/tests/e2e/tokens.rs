//! API tokens issued at runtime by an admin: the token is shown once, acts
//! as its principal (and only as it), survives a node restart, and is
//! refused once revoked; only an admin manages tokens. Child nodes
//! registered by an admin appear under GET /api/node; a dataset's
//! compatibility mode reaches the registry.

use std::time::Duration;

use backflow_e2e::{Node, TestBroker};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_issued_by_an_admin_act_as_their_principal_until_revoked() {
    let broker = TestBroker::start();
    let admin = "admin-token-tokens";
    let config = format!(
        "[node]\ncode = \"330100\"\n[kafka]\nbrokers = \"{}\"\n[[auth.tokens]]\nprincipal = \"admin\"\nsha256 = \"{}\"\n",
        broker.bootstrap(),
        backflow::auth::token_hash(admin),
    );
    let node = Node::start_with_config(&config, &[]).unwrap();
    node.wait_for_status("/readyz", 200, Duration::from_secs(30))
        .await
        .unwrap();

    let (status, body) = call(
        &node,
        "POST",
        "/api/tokens",
        admin,
        Some(json!({"principal": "subscriber:3301"})),
    )
    .await;
    assert_eq!(status, 422, "bad principal refused: {body}");
    let (status, issued) = call(
        &node,
        "POST",
        "/api/tokens",
        admin,
        Some(json!({"principal": "subscriber:330106", "label": "Xihu data centre"})),
    )
    .await;
    assert_eq!(status, 201, "{issued}");
    let token = issued["token"].as_str().unwrap().to_owned();
    assert_eq!(token.len(), 64);
    assert_eq!(issued["sha256"], backflow::auth::token_hash(&token));

    // It acts as subscriber:330106, and only as that.
    let (status, _) = call(&node, "GET", "/api/subscriptions", &token, None).await;
    assert_eq!(status, 200);
    let (status, body) = call(
        &node,
        "POST",
        "/api/tokens",
        &token,
        Some(json!({"principal": "admin"})),
    )
    .await;
    assert_eq!(status, 403, "a subscriber cannot issue tokens: {body}");
    let (status, body) = call(
        &node,
        "POST",
        "/api/subscriptions",
        &token,
        Some(json!({"subscriber": "330108", "dataset": "x.y", "purpose": "p", "fields": ["id"]})),
    )
    .await;
    assert_eq!(status, 403, "not on another node's behalf: {body}");

    // Child nodes: an admin registers a division inside the jurisdiction.
    let (status, body) = call(
        &node,
        "PUT",
        "/api/nodes/330106",
        admin,
        Some(json!({"name": "西湖区数据资源中心"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = call(
        &node,
        "PUT",
        "/api/nodes/320106",
        admin,
        Some(json!({"name": "elsewhere"})),
    )
    .await;
    assert_eq!(status, 422, "outside 3301: {body}");
    assert!(body.to_string().contains("3301"), "{body}");
    let (status, _) = call(&node, "GET", "/api/node", &token, None).await;
    assert_eq!(status, 200);
    let (_, info) = call(&node, "GET", "/api/node", admin, None).await;
    assert_eq!(info["children"], json!(["330106"]), "{info}");
    assert_eq!(info["child_nodes"][0]["name"], "西湖区数据资源中心");
    assert_eq!(info["child_nodes"][0]["active_subscriptions"], 0);

    // A dataset's compatibility mode is set on its raw topic's subjects.
    let (status, body) = call(
        &node,
        "PUT",
        "/api/datasets/tokens.items",
        admin,
        Some(json!({"sharing": "unconditional", "all_rows": true, "fields": {"id": {}}, "compatibility": "FULL"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    for subject in [
        "backflow.raw.tokens.items-key",
        "backflow.raw.tokens.items-value",
    ] {
        let (status, body) = call(&node, "GET", &format!("/config/{subject}"), admin, None).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["compatibilityLevel"], "FULL", "{subject}: {body}");
    }

    // Listed without the token itself.
    let (status, list) = call(&node, "GET", "/api/tokens", admin, None).await;
    assert_eq!(status, 200);
    assert!(!list.to_string().contains(&token), "{list}");
    assert_eq!(list[0]["principal"], "subscriber:330106");
    assert_eq!(list[0]["label"], "Xihu data centre");

    // Kept in backflow._catalog: a restarted node knows it.
    drop(node);
    let node = Node::start_with_config(&config, &[]).unwrap();
    node.wait_for_status("/readyz", 200, Duration::from_secs(30))
        .await
        .unwrap();
    let (status, _) = call(&node, "GET", "/api/subscriptions", &token, None).await;
    assert_eq!(status, 200, "issued token survives a restart");
    let (status, _) = call(
        &node,
        "PUT",
        "/api/nodes/330108",
        &token,
        Some(json!({"name": "滨江区"})),
    )
    .await;
    assert_eq!(status, 403, "only an admin registers nodes");

    // Revoked with the CLI: refused from then on.
    let out = backflow_e2e::backflow()
        .args(["tokens", "revoke", issued["sha256"].as_str().unwrap()])
        .args(["--url", &node.url, "--token", admin])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, body) = call(&node, "GET", "/api/subscriptions", &token, None).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["reason"].as_str().unwrap().contains("revoked"),
        "{body}"
    );
    let (status, _) = call(&node, "DELETE", "/api/tokens/0000", admin, None).await;
    assert_eq!(status, 404);
}
