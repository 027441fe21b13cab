//! This node's identity and the child nodes registered with it.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::routing::{get, put};
use axum::Json;
use axum::Router;
use backflow_connectors::now_ms;
use serde::Deserialize;
use serde_json::json;

use super::views;
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
    // Active subscriptions and the configuration's shares: each is one
    // active share with the child node it names.
    let active: Vec<&str> = st
        .subscriptions
        .values()
        .filter(|s| s.state == SubscriptionState::Active)
        .map(|s| s.subscriber.as_str())
        .chain(state.config_shares.iter().map(|s| s.subscriber.as_str()))
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
    let child_nodes = children
        .iter()
        .map(|code| {
            let record = registered.iter().find(|n| n.code == *code);
            views::ChildNode {
                code: (*code).to_owned(),
                name: record.map(|n| n.name.clone()),
                registered: record.is_some(),
                active_subscriptions: active.iter().filter(|a| *a == code).count(),
            }
        })
        .collect();
    Ok(Json(views::NodeInfo {
        code: state.node.code.to_string(),
        name: state.node.name.clone(),
        jurisdiction_prefix: state.node.code.jurisdiction_prefix().to_owned(),
        parent: state.node.parent.as_ref().map(ToString::to_string),
        children: children.into_iter().map(str::to_owned).collect(),
        child_nodes,
        audit_public_key: state.auditor.public_key_hex(),
        audit_key_id: state.auditor.key_id(),
    })
    .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterNode {
    name: String,
    /// Its principal on this node's Kafka cluster: `"scram"` (the node
    /// creates a SCRAM-SHA-512 user and shows its password once; again:
    /// a new password), `"User:<name>"` (a principal the cluster's TLS
    /// or SASL setup gives it, e.g. from its certificate) or `"none"`.
    /// A principal given up loses its rights on this node's names (and a
    /// SCRAM user its credential). Left out: it keeps the one it has.
    #[serde(default)]
    kafka: Option<String>,
}

/// Longest Kafka principal accepted.
const MAX_PRINCIPAL: usize = 255;

/// What a registration asks of the child node's Kafka principal.
enum Asked {
    /// A SCRAM-SHA-512 user the node creates (a new password each time).
    Scram,
    /// A principal the cluster's own TLS or SASL setup gives it.
    Named(String),
    /// No principal any more.
    Remove,
}

fn asked(text: &str) -> Result<Asked, super::ApiError> {
    match text {
        "scram" => return Ok(Asked::Scram),
        "none" => return Ok(Asked::Remove),
        _ => {}
    }
    let name = text.strip_prefix("User:").unwrap_or_default();
    if name.is_empty() || text.len() > MAX_PRINCIPAL || text.chars().any(|c| c.is_control()) {
        return Err(invalid(format!(
            "kafka: \"scram\", \"none\" or a principal \"User:<name>\" (at most {MAX_PRINCIPAL} characters, no control characters)"
        )));
    }
    // Kafka's wildcard stands for every principal, and ANONYMOUS for every
    // client that did not authenticate: rights given to either would be
    // everyone's.
    if name == "*" || name == "ANONYMOUS" {
        return Err(invalid(format!(
            "kafka: {text} is not one node's principal (Kafka gives its rights to every client)"
        )));
    }
    Ok(Asked::Named(text.to_owned()))
}

/// Applies a registration's `kafka` to the child node `code`, whose
/// principal is `old`: checks first, then the cluster (a new SCRAM
/// credential; the old principal's rights on this node's names taken away
/// when it changes, and its SCRAM credential deleted). The principal now
/// and, for a new SCRAM credential, its password (shown once).
async fn kafka_principal(
    state: &ApiState,
    code: &str,
    old: Option<&str>,
    text: &str,
) -> Result<(Option<String>, Option<String>), super::ApiError> {
    let Some(admin) = state.acl_admin.clone() else {
        return Err(invalid(
            "kafka: this node does not manage Kafka principals and ACLs (set kafka.manage_acls = true on a real cluster)",
        ));
    };
    let unavailable = |what: String| {
        move |e: crate::kafka::KafkaError| {
            super::ApiError(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                format!("the Kafka cluster did not take {what}: {e}"),
            )
        }
    };
    let user = crate::acls::scram_user(code);
    let scram_principal = format!("User:{user}");
    let principal = match asked(text)? {
        Asked::Scram => Some(scram_principal.clone()),
        Asked::Named(p) => Some(p),
        Asked::Remove => None,
    };
    if let Some(p) = &principal {
        if state.own_kafka_principal.as_deref() == Some(p.as_str()) {
            return Err(invalid(format!(
                "kafka: {p} is this node's own principal, which no child node may share"
            )));
        }
        let st = state.catalog.state().await;
        if let Some(other) = st
            .nodes
            .values()
            .find(|n| n.code != code && !n.deleted && n.kafka_principal.as_deref() == Some(p))
        {
            return Err(super::ApiError(
                axum::http::StatusCode::CONFLICT,
                format!(
                    "kafka: {p} is the principal of node {}: each node has its own, or one would get the other's rights",
                    other.code
                ),
            ));
        }
    }
    let mut password = None;
    if text == "scram" {
        let secret = crate::state::catalog::random_secret();
        let (a, u, pw) = (admin.clone(), user.clone(), secret.clone());
        tokio::task::spawn_blocking(move || a.set_scram_password(&u, &pw))
            .await
            .expect("the admin call does not panic")
            .map_err(unavailable(format!("the SCRAM credential of {user}")))?;
        password = Some(secret);
    }
    if let Some(old) = old.filter(|o| Some(*o) != principal.as_deref()) {
        let (a, o) = (admin.clone(), old.to_owned());
        tokio::task::spawn_blocking(move || crate::acls::strip(&a, &o))
            .await
            .expect("the admin call does not panic")
            .map_err(unavailable(format!("the removal of {old}'s ACLs")))?;
        if old == scram_principal {
            let (a, u) = (admin.clone(), user.clone());
            tokio::task::spawn_blocking(move || a.delete_scram(&u))
                .await
                .expect("the admin call does not panic")
                .map_err(unavailable(format!(
                    "the deletion of {user}'s SCRAM credential"
                )))?;
        }
    }
    Ok((principal, password))
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
    let parsed = crate::domain::division::DivisionCode::parse(&code)
        .map_err(|e| invalid(format!("code: {e}")))?;
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
    let old = state
        .catalog
        .state()
        .await
        .nodes
        .get(&code)
        .and_then(|n| n.kafka_principal.clone());
    let (principal, password) = match body.kafka.as_deref() {
        Some(text) => kafka_principal(&state, &code, old.as_deref(), text).await?,
        None => (old, None),
    };
    let record = crate::state::catalog::NodeRecord {
        code: code.clone(),
        name: body.name.trim().to_owned(),
        updated_ms: now_ms(),
        deleted: false,
        kafka_principal: principal,
    };
    put_and_audit(
        &state,
        &who,
        CatalogRecord::Node(record.clone()),
        json!({"action": "node registered", "node": code, "name": record.name, "kafka_principal": record.kafka_principal, "new_scram_password": password.is_some()}),
    )
    .await?;
    // A new password is shown this once: the cluster keeps only its
    // salted hash.
    let credential = password.map(|password| views::ScramCredential {
        kafka_username: crate::acls::scram_user(&code),
        kafka_password: password,
        kafka_mechanism: "SCRAM-SHA-512",
    });
    Ok(Json(views::NodeRegistered { record, credential }).into_response())
}
