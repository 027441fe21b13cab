//! This node's identity and the child nodes registered with it.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::routing::{get, put};
use axum::Json;
use axum::Router;
use backflow_connectors::now_ms;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{forbidden, invalid, principal, put_and_audit, staff, ApiResult, ApiState};
use crate::auth::Principal;
use crate::state::catalog::{CatalogRecord, SubscriptionState};

/// The routes of this resource.
pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/api/node", get(node_info))
        .route("/api/nodes/{code}", put(put_node))
}

/// This node's identity, its parent, and the child nodes it shares with.
async fn node_info(State(state): State<ApiState>, headers: HeaderMap) -> ApiResult {
    principal(&state, &headers).await?;
    let st = state.catalog.state().await;
    let active: Vec<&str> = st
        .subscriptions
        .values()
        .filter(|s| s.state == SubscriptionState::Active)
        .map(|s| s.subscriber.as_str())
        .collect();
    let registered: Vec<&crate::state::catalog::NodeRecord> =
        st.nodes.values().filter(|n| !n.deleted).collect();
    let mut children: Vec<&str> = active
        .iter()
        .copied()
        .chain(registered.iter().map(|n| n.code.as_str()))
        .collect();
    children.sort_unstable();
    children.dedup();
    let child_nodes: Vec<Value> = children
        .iter()
        .map(|code| {
            let record = registered.iter().find(|n| n.code == *code);
            json!({
                "code": code,
                "name": record.map(|n| n.name.as_str()),
                "registered": record.is_some(),
                "active_subscriptions": active.iter().filter(|a| *a == code).count(),
            })
        })
        .collect();
    Ok(Json(json!({
        "code": state.node.code.as_str(),
        "name": state.node.name,
        "jurisdiction_prefix": state.node.code.jurisdiction_prefix(),
        "parent": state.node.parent.as_ref().map(|p| p.as_str()),
        "children": children,
        "child_nodes": child_nodes,
        // The key the node signs its audit trail with: an owner checks
        // the trail with `backflow audit verify --public-key`.
        "audit_public_key": state.auditor.public_key_hex(),
        "audit_key_id": state.auditor.key_id(),
    }))
    .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterNode {
    name: String,
}

/// Registers (or renames) a child node: a division inside this node's
/// jurisdiction. Admin only.
async fn put_node(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(code): Path<String>,
    Json(body): Json<RegisterNode>,
) -> ApiResult {
    let who = staff(&state, &headers).await?;
    if who != Principal::Admin {
        return Err(forbidden(format!(
            "{} cannot register nodes: only an admin can",
            who.name()
        )));
    }
    let parsed =
        crate::config::DivisionCode::parse(&code).map_err(|e| invalid(format!("code: {e}")))?;
    let prefix = state.node.code.jurisdiction_prefix();
    if parsed.as_str() == state.node.code.as_str() || !parsed.as_str().starts_with(prefix) {
        return Err(invalid(format!(
            "code: {code} is not a division inside this node's jurisdiction ({} covers codes starting with {prefix})",
            state.node.code.as_str()
        )));
    }
    if body.name.trim().is_empty() {
        return Err(invalid("name: must not be empty"));
    }
    let record = crate::state::catalog::NodeRecord {
        code: code.clone(),
        name: body.name.trim().to_owned(),
        updated_ms: now_ms(),
        deleted: false,
    };
    put_and_audit(
        &state,
        &who,
        CatalogRecord::Node(record.clone()),
        json!({"action": "node registered", "node": code, "name": record.name}),
    )
    .await?;
    Ok(Json(json!(record)).into_response())
}
