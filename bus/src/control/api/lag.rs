//! Lag and status of the subscriptions this node serves and the feeds
//! it runs.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Json;
use axum::Router;
use serde::Deserialize;

use super::{forbidden, invalid, staff, ApiError, ApiResult, ApiState};
use crate::auth::Principal;

/// The routes of this resource.
pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/api/lag", get(lag))
        .route("/api/lag/history", get(lag_history))
        .route("/api/lag/status", post(post_status))
}

/// Whether `who` may see a subscription's lag: admins, the dataset's
/// owner, the subscriber itself.
fn sees_lag(who: &Principal, subscriber: &str, dataset: &str) -> bool {
    match who {
        Principal::Admin => true,
        Principal::Owner(_) => who.owns(dataset),
        Principal::Subscriber(n) => n == subscriber,
        Principal::Auditor => false,
    }
}

async fn lag(State(state): State<ApiState>, headers: HeaderMap) -> ApiResult {
    let who = staff(&state, &headers).await?;
    let mut board = state.lag.board();
    board
        .subscriptions
        .retain(|s| sees_lag(&who, &s.subscriber, &s.dataset));
    if matches!(who, Principal::Subscriber(_)) {
        board.feeds.clear();
    }
    Ok(Json(board).into_response())
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
    let who = staff(&state, &headers).await?;
    if !sees_lag(&who, &q.subscriber, &q.dataset) {
        return Err(forbidden(format!(
            "{} cannot see the lag of {}'s subscription to {}",
            who.name(),
            q.subscriber,
            q.dataset
        )));
    }
    let samples = state.lag.history(&q.subscriber, &q.dataset);
    Ok(Json(super::views::LagHistory { samples }).into_response())
}

/// `POST /api/lag/status`: a subscriber node says whether one of its
/// subscriptions runs, and why not (see [`crate::lag`]). Only a subscriber
/// node posts, only for share topics of datasets it has an active share
/// of, within the bounds of [`crate::lag::Statuses::admit`]; the node
/// stamps the time and keeps it in `backflow._subscribers` for every
/// process of the node.
async fn post_status(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult {
    let who = staff(&state, &headers).await?;
    let Principal::Subscriber(node) = &who else {
        return Err(forbidden(format!(
            "{} cannot post a subscription status: a subscriber node posts its own",
            who.name()
        )));
    };
    let now = backflow_connectors::now_ms();
    let status =
        crate::lag::accept_status(node, &body, now).map_err(|e| invalid(format!("status: {e}")))?;
    let served = crate::lag::served_now(&state.config_shares, &*state.catalog.state().await);
    for topic in &status.topics {
        let (_, dataset) =
            crate::domain::topics::share_parts(crate::domain::topics::prefix(), topic)
                .expect("accept_status checked the topic");
        if served
            .binary_search(&(node.clone(), dataset.to_owned()))
            .is_err()
        {
            return Err(invalid(format!(
                "status: topic {topic}: node {node} has no active share of dataset {dataset} here"
            )));
        }
    }
    let replaced = state
        .lag
        .statuses()
        .admit(node, &status, now)
        .map_err(|e| {
            let code = match e {
                crate::lag::StatusRefusal::NotLoaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::TOO_MANY_REQUESTS,
            };
            ApiError(code, e.to_string())
        })?;
    let kafka_down = |e: crate::kafka::KafkaError| {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the status could not be kept (Kafka): {e}"),
        )
    };
    let written = async {
        if let Some(old) = replaced {
            let key = crate::lag::status_key(node, &old);
            state
                .publisher
                .send(crate::kafka::OutgoingRecord {
                    topic: crate::domain::topics::subscribers(),
                    key: Some(key.as_bytes()),
                    payload: None,
                    headers: &[],
                })
                .await?;
        }
        let key = crate::lag::status_key(node, &status.subscription);
        let value = serde_json::to_vec(&status).expect("serializes");
        state
            .publisher
            .send(crate::kafka::OutgoingRecord::new(
                crate::domain::topics::subscribers(),
                key.as_bytes(),
                &value,
            ))
            .await
    };
    if let Err(e) = written.await {
        // Not kept: it neither holds a place nor stops a retry.
        state.lag.statuses().withdraw(node, &status.subscription);
        return Err(kafka_down(e));
    }
    // A child node whose Kafka rights the node manages may not create
    // topics: the node creates the dead-letter topic of each subscription
    // it reports (the names are bounded per node by `admit`).
    if let Some(dead_letters) = &state.dead_letters {
        let topic = crate::domain::topics::subscriber_dlq(node, &status.subscription);
        dead_letters.ensure(topic).await.map_err(kafka_down)?;
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}
