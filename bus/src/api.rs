//! The control plane's HTTP API (JSON under `/api`), behind bearer tokens.
//!
//! Principals: `admin` (the node's operator), `owner:<department>` (datasets
//! `<department>.*`), `subscriber:<node>` (requests for itself only).
//! Tokens are configured by their SHA-256 (`[[auth.tokens]]`), never stored
//! in clear. No token: 401; a token without the right: 403 with the reason.
//!
//! | method | path | who |
//! | --- | --- | --- |
//! | PUT | /api/datasets/{id} | admin, owner of the department |
//! | GET | /api/datasets | anyone with a token |
//! | POST | /api/subscriptions | admin, the subscriber itself |
//! | GET | /api/subscriptions | admin (all), owner (its datasets'), subscriber (its own) |
//! | GET | /api/node | anyone with a token |
//! | GET | /api/feeds | admin, owners |
//! | PUT, DELETE | /api/feeds/{name} | admin, owner of every dataset the feed fills |
//! | POST | /api/feeds/{name}/pause, /resume, /restart | same |
//! | GET | /api/subscriptions/{id} | admin, owner of the dataset, the subscriber |
//! | POST | /api/subscriptions/{id}/approve, /reject, /revoke, /narrow | admin, owner of the dataset |
//!
//! A subscription id is `<subscriber>:<dataset>`. Every decision goes to the
//! audit trail.

use backflow_connectors::now_ms;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::audit::Auditor;
use crate::catalog::{
    random_secret, Catalog, CatalogRecord, Dataset, SharingClass, Subscription, SubscriptionState,
};
use crate::config::TokenConfig;

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// The node's operator.
    Admin,
    /// An owner department.
    Owner(String),
    /// A subscriber node.
    Subscriber(String),
}

impl Principal {
    /// Parses `admin`, `owner:<department>`, `subscriber:<node>`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            None if s == "admin" => Ok(Principal::Admin),
            Some(("owner", d)) if !d.is_empty() => Ok(Principal::Owner(d.to_owned())),
            Some(("subscriber", n)) if n.len() == 6 && n.bytes().all(|b| b.is_ascii_digit()) => {
                Ok(Principal::Subscriber(n.to_owned()))
            }
            _ => Err(format!(
                "{s:?} is not a principal: use admin, owner:<department> or subscriber:<six-digit node code>"
            )),
        }
    }

    fn name(&self) -> String {
        match self {
            Principal::Admin => "admin".to_owned(),
            Principal::Owner(d) => format!("owner:{d}"),
            Principal::Subscriber(n) => format!("subscriber:{n}"),
        }
    }

    fn owns(&self, dataset: &str) -> bool {
        match self {
            Principal::Admin => true,
            Principal::Owner(d) => dataset.split_once('.').is_some_and(|(dept, _)| dept == d),
            Principal::Subscriber(_) => false,
        }
    }
}

/// The hex SHA-256 of a token, as `[[auth.tokens]]` holds it.
pub fn token_hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    catalog: Catalog,
    auditor: Auditor,
    tokens: Arc<HashMap<String, Principal>>,
    node: Arc<crate::config::NodeConfig>,
    feeds: crate::feeds::FeedStatuses,
    publisher: crate::kafka::Publisher,
    registry: crate::registry::Registry,
    lag: crate::lag::LagBoard,
    metrics: Option<crate::metrics::Metrics>,
}

impl ApiState {
    /// State for the API; tokens were validated with the configuration.
    pub fn new(
        catalog: Catalog,
        auditor: Auditor,
        tokens: &[TokenConfig],
        node: crate::config::NodeConfig,
        feeds: crate::feeds::FeedStatuses,
        publisher: crate::kafka::Publisher,
        registry: crate::registry::Registry,
    ) -> Self {
        let tokens = tokens
            .iter()
            .filter_map(|t| {
                Some((
                    t.sha256.to_ascii_lowercase(),
                    Principal::parse(&t.principal).ok()?,
                ))
            })
            .collect();
        Self {
            catalog,
            auditor,
            tokens: Arc::new(tokens),
            node: Arc::new(node),
            feeds,
            publisher,
            registry,
            lag: crate::lag::LagBoard::default(),
            metrics: None,
        }
    }

    /// The metrics `/api/quality` reads.
    pub fn with_metrics(mut self, metrics: crate::metrics::Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The lag board `/api/lag` shows.
    pub fn with_lag(mut self, lag: crate::lag::LagBoard) -> Self {
        self.lag = lag;
        self
    }
}

/// An API error: status and a reason the caller can act on.
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let kind = match self.0 {
            StatusCode::UNAUTHORIZED => "unauthorized",
            StatusCode::FORBIDDEN => "forbidden",
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::CONFLICT => "conflict",
            StatusCode::UNPROCESSABLE_ENTITY => "invalid",
            _ => "error",
        };
        (self.0, Json(json!({"error": kind, "reason": self.1}))).into_response()
    }
}

fn forbidden(reason: impl Into<String>) -> ApiError {
    ApiError(StatusCode::FORBIDDEN, reason.into())
}

fn invalid(reason: impl Into<String>) -> ApiError {
    ApiError(StatusCode::UNPROCESSABLE_ENTITY, reason.into())
}

fn unavailable(e: impl std::fmt::Display) -> ApiError {
    ApiError(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("the catalog could not be written (Kafka): {e}"),
    )
}

type ApiResult = Result<Response, ApiError>;

async fn principal(state: &ApiState, headers: &HeaderMap) -> Result<Principal, ApiError> {
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            ApiError(
                StatusCode::UNAUTHORIZED,
                "no bearer token: send Authorization: Bearer <token>".to_owned(),
            )
        })?;
    let hash = token_hash(token.trim());
    if let Some(p) = state.tokens.get(&hash) {
        return Ok(p.clone());
    }
    // Tokens issued through the API; one not known here yet may have been
    // issued moments ago (or before a restart): catch up with the catalog.
    let mut issued = state.catalog.state().await.tokens.get(&hash).cloned();
    if issued.is_none() {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), state.catalog.caught_up())
            .await;
        issued = state.catalog.state().await.tokens.get(&hash).cloned();
    }
    match issued {
        Some(t) if t.revoked => Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "token revoked".to_owned(),
        )),
        Some(t) => Principal::parse(&t.principal)
            .map_err(|_| ApiError(StatusCode::UNAUTHORIZED, "unknown token".to_owned())),
        None => Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "unknown token".to_owned(),
        )),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IssueToken {
    principal: String,
    #[serde(default)]
    label: String,
}

fn only_admin(who: &Principal) -> Result<(), ApiError> {
    if *who == Principal::Admin {
        Ok(())
    } else {
        Err(forbidden(format!(
            "{} cannot manage tokens: only an admin can",
            who.name()
        )))
    }
}

/// A fresh token: 32 bytes from the operating system's random source, hex.
fn new_token() -> Result<String, ApiError> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| {
            ApiError(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot read /dev/urandom for a new token: {e}"),
            )
        })?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Issues a token for a principal (admin only); the token is in this
/// answer and nowhere else.
async fn issue_token(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Json(body): Json<IssueToken>,
) -> ApiResult {
    let who = principal(&state, &headers).await?;
    only_admin(&who)?;
    Principal::parse(&body.principal).map_err(|e| invalid(format!("principal: {e}")))?;
    let token = new_token()?;
    let record = crate::catalog::TokenRecord {
        sha256: token_hash(&token),
        principal: body.principal.clone(),
        label: body.label,
        issued_ms: now_ms(),
        revoked: false,
    };
    put_and_audit(
        &state,
        &who,
        CatalogRecord::Token(record.clone()),
        json!({"action": "token issued", "principal": record.principal, "sha256": record.sha256, "label": record.label}),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"token": token, "sha256": record.sha256, "principal": record.principal, "label": record.label})),
    )
        .into_response())
}

/// Issued tokens (their SHA-256, never the tokens), admin only.
async fn list_tokens(State(state): State<ApiState>, headers: HeaderMap) -> ApiResult {
    let who = principal(&state, &headers).await?;
    only_admin(&who)?;
    let tokens: Vec<_> = state
        .catalog
        .state()
        .await
        .tokens
        .values()
        .cloned()
        .collect();
    Ok(Json(json!(tokens)).into_response())
}

/// Revokes an issued token: it is refused from the next request on.
async fn revoke_token(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(sha256): Path<String>,
) -> ApiResult {
    let who = principal(&state, &headers).await?;
    only_admin(&who)?;
    let mut record = state
        .catalog
        .state()
        .await
        .tokens
        .get(&sha256)
        .cloned()
        .ok_or_else(|| {
            ApiError(
                StatusCode::NOT_FOUND,
                format!("no issued token with SHA-256 {sha256} (tokens of the configuration file are changed there)"),
            )
        })?;
    record.revoked = true;
    put_and_audit(
        &state,
        &who,
        CatalogRecord::Token(record.clone()),
        json!({"action": "token revoked", "principal": record.principal, "sha256": record.sha256}),
    )
    .await?;
    Ok(Json(json!(record)).into_response())
}

/// The API routes.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/api/datasets", get(list_datasets))
        .route("/api/datasets/{id}", put(put_dataset))
        .route(
            "/api/subscriptions",
            get(list_subscriptions).post(request_subscription),
        )
        .route("/api/node", get(node_info))
        .route("/api/nodes/{code}", put(put_node))
        .route("/api/tokens", get(list_tokens).post(issue_token))
        .route("/api/tokens/{sha256}", axum::routing::delete(revoke_token))
        .route("/api/lag", get(lag))
        .route("/api/quality", get(quality))
        .route("/api/standards", get(standards))
        .route("/api/lag/history", get(lag_history))
        .route("/api/feeds", get(list_feeds))
        .route("/api/feeds/{name}", put(put_feed).delete(delete_feed))
        .route("/api/feeds/{name}/{action}", post(feed_action))
        .route("/api/subscriptions/{id}", get(get_subscription))
        .route("/api/subscriptions/{id}/{action}", post(decide))
        .with_state(state)
}

/// A subscription as the API shows it (no secret).
fn view(s: &Subscription) -> Value {
    let mut v = serde_json::to_value(s).expect("subscriptions serialize");
    if let Some(o) = v.as_object_mut() {
        o.remove("secret");
    }
    v
}

/// Writes a catalog record, then the decision to the audit trail.
async fn put_and_audit(
    state: &ApiState,
    who: &Principal,
    record: CatalogRecord,
    details: Value,
) -> Result<(), ApiError> {
    state.catalog.put(record).await.map_err(unavailable)?;
    audit(state, who, details).await
}

async fn audit(state: &ApiState, who: &Principal, details: Value) -> Result<(), ApiError> {
    let mut details = details;
    details["by"] = Value::String(who.name());
    state
        .auditor
        .append("decision", details)
        .await
        .map(|_| ())
        .map_err(unavailable)
}

/// Whether `who` may manage a feed filling these datasets.
fn may_manage_feed(who: &Principal, feed: &crate::config::FeedConfig) -> Result<(), ApiError> {
    match feed.datasets().into_iter().find(|d| !who.owns(d)) {
        None => Ok(()),
        Some(t) => Err(forbidden(format!(
            "{} cannot manage a feed into dataset {}: only its owner department or an admin can",
            who.name(),
            t
        ))),
    }
}

async fn list_feeds(State(state): State<ApiState>, headers: HeaderMap) -> ApiResult {
    let who = principal(&state, &headers).await?;
    if matches!(who, Principal::Subscriber(_)) {
        return Err(forbidden("feeds are managed by owners and admins"));
    }
    let statuses = state.feeds.snapshot();
    let st = state.catalog.state().await;
    let mut out: BTreeMap<String, Value> = BTreeMap::new();
    for (name, status) in &statuses {
        out.insert(name.clone(), json!({"name": name, "status": status}));
    }
    for f in st.feeds.values().filter(|f| !f.deleted) {
        let entry = out
            .entry(f.name.clone())
            .or_insert_with(|| json!({"name": f.name}));
        entry["config"] = f.config.clone();
        entry["paused"] = json!(f.paused);
    }
    Ok(Json(json!(out.into_values().collect::<Vec<_>>())).into_response())
}

async fn put_feed(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Json(config): Json<Value>,
) -> ApiResult {
    let who = principal(&state, &headers).await?;
    if state.feeds.is_config(&name) {
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!("feed {name} is declared in the node's configuration file; change it there"),
        ));
    }
    if config.get("password").is_some() {
        return Err(invalid(
            "password: not accepted through the API; give password_env or password_file, resolved on the node",
        ));
    }
    let mut record = crate::catalog::FeedRecord {
        name: name.clone(),
        config,
        paused: false,
        restarts: 0,
        deleted: false,
        updated_ms: now_ms(),
    };
    let feed = record.parse().map_err(invalid)?;
    may_manage_feed(&who, &feed)?;
    let standards = record.standards().map_err(invalid)?;
    let mut unchecked = None;
    if !standards.is_empty() {
        // The mapping against the source table as it is now: refused when
        // it cannot produce the standard.
        let mut resolved = feed.clone();
        let checked = match resolved.resolve_secrets(0) {
            Ok(()) => crate::standards::check_feed(&resolved, &standards, 0).await,
            Err(e) => Err(e.to_string().replace("feeds[0].", "")),
        };
        match checked {
            Ok(tables) => {
                if let Some((t, p)) = tables
                    .iter()
                    .find_map(|t| t.problem.as_ref().map(|p| (t, p)))
                {
                    return Err(invalid(format!("standards: table {}: {p}", t.table)));
                }
            }
            Err(e) => unchecked = Some(format!("the mapping was not checked against the source table, which could not be read ({e}); the feed checks it when it starts")),
        }
    }
    if let Some(old) = state.catalog.state().await.feeds.get(&name) {
        if !old.deleted {
            record.paused = old.paused;
            record.restarts = old.restarts;
        }
    }
    put_and_audit(
        &state,
        &who,
        CatalogRecord::Feed(record.clone()),
        json!({"action": "feed registered", "feed": name}),
    )
    .await?;
    let mut body = json!({"name": name, "config": record.config, "paused": record.paused});
    if let Some(w) = unchecked {
        body["warning"] = json!(w);
    }
    Ok(Json(body).into_response())
}

/// A feed registered through the API (404 otherwise, saying when it is
/// declared in the configuration file instead).
async fn registered_feed(
    state: &ApiState,
    name: &str,
) -> Result<crate::catalog::FeedRecord, ApiError> {
    state
        .catalog
        .state()
        .await
        .feeds
        .get(name)
        .filter(|f| !f.deleted)
        .cloned()
        .ok_or_else(|| {
            let hint = if state.feeds.is_config(name) {
                " through the API: it is declared in the configuration file"
            } else {
                ""
            };
            ApiError(StatusCode::NOT_FOUND, format!("no feed {name}{hint}"))
        })
}

async fn feed_change(state: &ApiState, headers: &HeaderMap, name: &str, action: &str) -> ApiResult {
    let who = principal(state, headers).await?;
    let mut record = registered_feed(state, name).await?;
    may_manage_feed(&who, &record.parse().map_err(invalid)?)?;
    match action {
        "pause" => record.paused = true,
        "resume" => record.paused = false,
        "restart" => record.restarts += 1,
        "delete" => record.deleted = true,
        other => {
            return Err(ApiError(
                StatusCode::NOT_FOUND,
                format!("unknown action {other}: use pause, resume or restart"),
            ))
        }
    }
    record.updated_ms = now_ms();
    put_and_audit(
        state,
        &who,
        CatalogRecord::Feed(record.clone()),
        json!({"action": format!("feed {action}"), "feed": name}),
    )
    .await?;
    Ok(
        Json(json!({"name": name, "paused": record.paused, "deleted": record.deleted}))
            .into_response(),
    )
}

#[derive(Deserialize)]
struct FeedActionQuery {
    /// With `restart`: drop the slot and forget the position first.
    #[serde(default)]
    resnapshot: bool,
}

async fn feed_action(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path((name, action)): Path<(String, String)>,
    Query(query): Query<FeedActionQuery>,
) -> ApiResult {
    if action == "delete" {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            "use DELETE /api/feeds/{name}".to_owned(),
        ));
    }
    if query.resnapshot {
        if action != "restart" {
            return Err(invalid("resnapshot: only with /restart"));
        }
        return restart_with_resnapshot(&state, &headers, &name).await;
    }
    feed_change(&state, &headers, &name, &action).await
}

/// Stops the feed, drops its slot and forgets its position, then starts it
/// again (unless it was paused): it reads its tables again, then streams.
async fn restart_with_resnapshot(state: &ApiState, headers: &HeaderMap, name: &str) -> ApiResult {
    let who = principal(state, headers).await?;
    let record = registered_feed(state, name).await?;
    let feed = record.parse().map_err(invalid)?;
    may_manage_feed(&who, &feed)?;
    let feed = {
        let mut f = feed;
        f.resolve_secrets(0)
            .map_err(|e| invalid(e.to_string().replace("feeds[0].", "")))?;
        f
    };
    let was_paused = record.paused;
    let mut stopping = record.clone();
    stopping.paused = true;
    stopping.updated_ms = now_ms();
    state
        .catalog
        .put(CatalogRecord::Feed(stopping.clone()))
        .await
        .map_err(unavailable)?;
    // The runtime stops the feed and lets go of the slot within seconds.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let outcome = loop {
        let stopped = state
            .feeds
            .snapshot()
            .get(name)
            .is_none_or(|s| s.state == "PAUSED");
        if stopped {
            match crate::feeds::resnapshot(&feed, &state.publisher).await {
                Ok(_) => break Ok(()),
                Err(e) if std::time::Instant::now() >= until => break Err(e.to_string()),
                Err(_) => {}
            }
        } else if std::time::Instant::now() >= until {
            break Err("the feed did not stop within 30 s".to_owned());
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    let mut restarted = stopping;
    restarted.paused = was_paused;
    restarted.restarts += 1;
    restarted.updated_ms = now_ms();
    state
        .catalog
        .put(CatalogRecord::Feed(restarted.clone()))
        .await
        .map_err(unavailable)?;
    if let Err(reason) = outcome {
        return Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("feed {name} restarted without a new snapshot: {reason}"),
        ));
    }
    audit(
        state,
        &who,
        json!({"action": "feed restart with a new snapshot", "feed": name}),
    )
    .await?;
    Ok(Json(json!({"name": name, "paused": restarted.paused, "resnapshot": true})).into_response())
}

async fn delete_feed(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult {
    feed_change(&state, &headers, &name, "delete").await
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
    let registered: Vec<&crate::catalog::NodeRecord> =
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
    let who = principal(&state, &headers).await?;
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
    let record = crate::catalog::NodeRecord {
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

async fn get_subscription(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    let who = principal(&state, &headers).await?;
    let st = state.catalog.state().await;
    let sub = st
        .subscriptions
        .get(&id)
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no subscription {id}")))?;
    let allowed = match &who {
        Principal::Subscriber(n) => &sub.subscriber == n,
        _ => who.owns(&sub.dataset),
    };
    if !allowed {
        return Err(forbidden(format!(
            "{} cannot read subscription {id}: it belongs to node {} and dataset {}",
            who.name(),
            sub.subscriber,
            sub.dataset
        )));
    }
    Ok(Json(view(sub)).into_response())
}

async fn list_datasets(State(state): State<ApiState>, headers: HeaderMap) -> ApiResult {
    principal(&state, &headers).await?;
    let st = state.catalog.state().await;
    Ok(Json(json!(st.datasets.values().collect::<Vec<_>>())).into_response())
}

async fn put_dataset(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(mut body): Json<Value>,
) -> ApiResult {
    let who = principal(&state, &headers).await?;
    if !who.owns(&id) {
        return Err(forbidden(format!(
            "{} cannot register dataset {id}: only its owner department or an admin can",
            who.name()
        )));
    }
    body["id"] = Value::String(id.clone());
    let dataset: Dataset = serde_json::from_value(body).map_err(|e| invalid(e.to_string()))?;
    dataset.validate().map_err(invalid)?;
    if let Some(level) = dataset.compatibility {
        // The feeds register the raw topic's schemas under this level.
        let topic = crate::topics::raw(&id);
        for key in [true, false] {
            let subject = backflow_schemas::registry_client::subject_for(&topic, key);
            state
                .registry
                .set_level(Some(&subject), Some(level))
                .await
                .map_err(|e| {
                    ApiError(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("setting compatibility {level:?} on {subject}: {e}"),
                    )
                })?;
        }
    }
    put_and_audit(
        &state,
        &who,
        CatalogRecord::Dataset(dataset.clone()),
        json!({"action": "dataset registered", "dataset": id, "sharing": dataset.sharing}),
    )
    .await?;
    Ok((StatusCode::OK, Json(json!(dataset))).into_response())
}

/// Whether `who` may see a subscription's lag: admins, the dataset's
/// owner, the subscriber itself.
fn sees_lag(who: &Principal, subscriber: &str, dataset: &str) -> bool {
    match who {
        Principal::Admin => true,
        Principal::Owner(_) => who.owns(dataset),
        Principal::Subscriber(n) => n == subscriber,
    }
}

/// `GET /api/lag`: lag and status of every subscription this node serves
/// and every feed it runs (subscribers see their own rows, owners their
/// datasets' rows and feeds).
/// Data quality per feed and dataset: changes checked against the
/// dataset's standard, refused, violations by rule, and the score over the
/// last 5 minutes. Owners see their departments' datasets.
async fn quality(State(state): State<ApiState>, headers: HeaderMap) -> ApiResult {
    let who = principal(&state, &headers).await?;
    if matches!(who, Principal::Subscriber(_)) {
        return Err(forbidden("data quality is shown to owners and admins"));
    }
    let mut report = state
        .metrics
        .as_ref()
        .map(crate::standards::quality_report)
        .unwrap_or_default();
    report.retain(|q| who.owns(&q.dataset));
    Ok(
        Json(json!({ "window_secs": crate::standards::SCORE_WINDOW.as_secs(), "feeds": report }))
            .into_response(),
    )
}

/// The standards backflow ships: fields, types, required, sensitivity and
/// rules (their own schemas are in the registry once a dataset uses them).
async fn standards(State(state): State<ApiState>, headers: HeaderMap) -> ApiResult {
    principal(&state, &headers).await?;
    let list: Vec<Value> = backflow_schemas::standard::builtin()
        .values()
        .map(|s| {
            json!({
                "name": s.name(),
                "doc": s.doc(),
                "key": s.key(),
                "region_field": s.region_field(),
                "subject": crate::standards::standard_subject(s.name()),
                "fields": s.fields().iter().map(|f| json!({
                    "name": f.name,
                    "doc": f.doc,
                    "type": f.sql_type.to_string(),
                    "required": f.required,
                    "sensitivity": f.sensitivity.as_str(),
                    "rules": f.rules.iter().map(|r| r.name()).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(Json(json!(list)).into_response())
}

async fn lag(State(state): State<ApiState>, headers: HeaderMap) -> ApiResult {
    let who = principal(&state, &headers).await?;
    let mut board = state.lag.board();
    board
        .subscriptions
        .retain(|s| sees_lag(&who, &s.subscriber, &s.dataset));
    if matches!(who, Principal::Subscriber(_)) {
        board.feeds.clear();
    }
    Ok(Json(json!(board)).into_response())
}

#[derive(Deserialize)]
struct HistoryQuery {
    subscriber: String,
    dataset: String,
}

/// `GET /api/lag/history?subscriber=..&dataset=..`: the last hour of one
/// subscription's lag samples.
async fn lag_history(
    State(state): State<ApiState>,
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<HistoryQuery>,
) -> ApiResult {
    let who = principal(&state, &headers).await?;
    if !sees_lag(&who, &q.subscriber, &q.dataset) {
        return Err(forbidden(format!(
            "{} cannot see the lag of {}'s subscription to {}",
            who.name(),
            q.subscriber,
            q.dataset
        )));
    }
    let samples = state.lag.history(&q.subscriber, &q.dataset);
    Ok(Json(json!({ "samples": samples })).into_response())
}

async fn list_subscriptions(State(state): State<ApiState>, headers: HeaderMap) -> ApiResult {
    let who = principal(&state, &headers).await?;
    let st = state.catalog.state().await;
    let visible: Vec<Value> = st
        .subscriptions
        .values()
        .filter(|s| match &who {
            Principal::Admin => true,
            Principal::Owner(_) => who.owns(&s.dataset),
            Principal::Subscriber(n) => &s.subscriber == n,
        })
        .map(view)
        .collect();
    Ok(Json(json!(visible)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestBody {
    subscriber: String,
    dataset: String,
    purpose: String,
    fields: Vec<String>,
    #[serde(default)]
    valid_days: Option<u32>,
}

async fn request_subscription(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Json(body): Json<RequestBody>,
) -> ApiResult {
    let who = principal(&state, &headers).await?;
    match &who {
        Principal::Admin => {}
        Principal::Subscriber(n) if *n == body.subscriber => {}
        _ => {
            return Err(forbidden(format!(
                "{} cannot request on behalf of node {}: a subscriber requests for itself",
                who.name(),
                body.subscriber
            )))
        }
    }
    crate::config::DivisionCode::parse(&body.subscriber).map_err(invalid)?;
    if body.purpose.trim().is_empty() {
        return Err(invalid(
            "purpose is required: say what the data is needed for",
        ));
    }
    let dataset = state
        .catalog
        .state()
        .await
        .datasets
        .get(&body.dataset)
        .cloned()
        .ok_or_else(|| {
            ApiError(
                StatusCode::NOT_FOUND,
                format!("no dataset {}", body.dataset),
            )
        })?;
    let unknown: Vec<&str> = body
        .fields
        .iter()
        .filter(|f| !dataset.fields.contains_key(*f))
        .map(String::as_str)
        .collect();
    if !unknown.is_empty() || body.fields.is_empty() {
        return Err(invalid(format!(
            "requested fields {:?} are not shared by {} (it shares: {})",
            unknown,
            dataset.id,
            dataset
                .fields
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let id = format!("{}:{}", body.subscriber, body.dataset);
    let (state_now, granted) = match dataset.sharing {
        SharingClass::NotShared => {
            let reason = dataset
                .not_shared_reason
                .clone()
                .unwrap_or_else(|| "the owner does not share this dataset".to_owned());
            audit(
                &state,
                &who,
                json!({"action": "subscription refused", "subscription": id, "reason": reason}),
            )
            .await?;
            return Err(forbidden(format!(
                "dataset {} is not shared: {reason}",
                dataset.id
            )));
        }
        SharingClass::Unconditional => (SubscriptionState::Active, grants(&dataset, &body.fields)),
        SharingClass::Conditional => (SubscriptionState::Pending, BTreeMap::new()),
    };
    let sub = Subscription {
        id: id.clone(),
        subscriber: body.subscriber,
        dataset: body.dataset,
        purpose: body.purpose,
        requested: body.fields,
        granted,
        valid_until_ms: body
            .valid_days
            .map(|d| now_ms() + i64::from(d) * 86_400_000),
        policy_version: u32::from(state_now == SubscriptionState::Active),
        state: state_now,
        secret: random_secret(),
        updated_ms: now_ms(),
        backfilled: false,
    };
    put_and_audit(&state, &who, CatalogRecord::Subscription(sub.clone()), json!({"action": "subscription requested", "subscription": id, "purpose": sub.purpose, "fields": sub.requested, "result": view(&sub)["state"]})).await?;
    Ok((StatusCode::CREATED, Json(view(&sub))).into_response())
}

fn grants(dataset: &Dataset, fields: &[String]) -> BTreeMap<String, String> {
    fields
        .iter()
        .filter_map(|f| Some((f.clone(), dataset.rule(f)?)))
        .collect()
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DecisionBody {
    #[serde(default)]
    reason: Option<String>,
    /// Approve: narrow the granted fields to these.
    #[serde(default)]
    fields: Option<Vec<String>>,
}

async fn decide(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    body: Option<Json<DecisionBody>>,
) -> ApiResult {
    let who = principal(&state, &headers).await?;
    let body = body.map(|Json(b)| b).unwrap_or_default();
    let (mut sub, dataset) = {
        let st = state.catalog.state().await;
        let sub = st
            .subscriptions
            .get(&id)
            .cloned()
            .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no subscription {id}")))?;
        let dataset = st.datasets.get(&sub.dataset).cloned();
        (sub, dataset)
    };
    if !who.owns(&sub.dataset) {
        return Err(forbidden(format!(
            "{} cannot {action} subscription {id}: only the owner of {} or an admin can",
            who.name(),
            sub.dataset
        )));
    }
    let dataset = dataset.ok_or_else(|| {
        ApiError(
            StatusCode::CONFLICT,
            format!("dataset {} is gone", sub.dataset),
        )
    })?;
    let reason = body.reason.clone().unwrap_or_default();
    match (action.as_str(), &sub.state) {
        ("approve", SubscriptionState::Pending) => {
            let fields = body.fields.clone().unwrap_or_else(|| sub.requested.clone());
            if let Some(extra) = fields.iter().find(|f| !sub.requested.contains(f)) {
                return Err(invalid(format!(
                    "field {extra} was not requested: approval may only narrow the request"
                )));
            }
            sub.granted = grants(&dataset, &fields);
            sub.state = SubscriptionState::Active;
            sub.policy_version += 1;
            sub.backfilled = false;
        }
        ("narrow", SubscriptionState::Active) => {
            let fields = body
                .fields
                .clone()
                .ok_or_else(|| invalid("narrow needs the fields to keep"))?;
            if let Some(extra) = fields.iter().find(|f| !sub.granted.contains_key(*f)) {
                return Err(invalid(format!(
                    "field {extra} is not granted: narrowing may only remove fields"
                )));
            }
            sub.granted.retain(|k, _| fields.contains(k));
            sub.policy_version += 1;
        }
        ("reject", SubscriptionState::Pending) => {
            if reason.trim().is_empty() {
                return Err(invalid("a rejection needs a reason"));
            }
            sub.state = SubscriptionState::Rejected {
                reason: reason.clone(),
            };
        }
        ("revoke", SubscriptionState::Active | SubscriptionState::Pending) => {
            sub.state = SubscriptionState::Revoked {
                reason: if reason.is_empty() {
                    "revoked by the owner".to_owned()
                } else {
                    reason.clone()
                },
            };
        }
        ("approve" | "reject" | "revoke" | "narrow", other) => {
            return Err(ApiError(
                StatusCode::CONFLICT,
                format!(
                    "subscription {id} is {}: cannot {action} it",
                    serde_json::to_value(other)
                        .map(|v| v["state"].clone())
                        .unwrap_or_default()
                ),
            ))
        }
        _ => {
            return Err(ApiError(
                StatusCode::NOT_FOUND,
                format!("unknown action {action}: use approve, reject, revoke or narrow"),
            ))
        }
    }
    sub.updated_ms = now_ms();
    state
        .catalog
        .put(CatalogRecord::Subscription(sub.clone()))
        .await
        .map_err(unavailable)?;
    let done = match action.as_str() {
        "approve" => "approved",
        "reject" => "rejected",
        "revoke" => "revoked",
        _ => "narrowed",
    };
    audit(&state, &who, json!({"action": format!("subscription {done}"), "subscription": id, "reason": reason, "granted": sub.granted, "policy_version": sub.policy_version})).await?;
    Ok(Json(view(&sub)).into_response())
}

/// Marks active subscriptions past their validity as expired.
pub async fn expire(catalog: &Catalog, auditor: &Auditor) -> Result<(), crate::kafka::KafkaError> {
    let now = now_ms();
    let due: Vec<Subscription> = catalog
        .state()
        .await
        .subscriptions
        .values()
        .filter(|s| {
            s.state == SubscriptionState::Active && s.valid_until_ms.is_some_and(|t| t <= now)
        })
        .cloned()
        .collect();
    for mut s in due {
        s.state = SubscriptionState::Expired;
        s.updated_ms = now;
        catalog.put(CatalogRecord::Subscription(s.clone())).await?;
        auditor
            .append(
                "decision",
                json!({"action": "subscription expired", "subscription": s.id, "by": "system"}),
            )
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principals_parse_and_own_their_datasets() {
        assert_eq!(Principal::parse("admin").unwrap(), Principal::Admin);
        let owner = Principal::parse("owner:gongan").unwrap();
        assert!(owner.owns("gongan.population"));
        assert!(!owner.owns("minzheng.marriage"));
        assert!(!Principal::parse("subscriber:330106")
            .unwrap()
            .owns("gongan.population"));
        assert!(Principal::parse("subscriber:3301").is_err());
        assert!(Principal::parse("root").is_err());
        assert_eq!(token_hash("abc").len(), 64);
    }
}
