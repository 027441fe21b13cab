//! Feeds registered through the API: register, list, pause, resume,
//! restart (with a new snapshot), delete.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use axum::Json;
use axum::Router;
use backflow_connectors::now_ms;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{
    audit, forbidden, invalid, principal, put_and_audit, unavailable, ApiError, ApiResult, ApiState,
};
use crate::auth::Principal;
use crate::catalog::CatalogRecord;

/// The routes of this resource.
pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/api/feeds", get(list_feeds))
        .route("/api/feeds/{name}", put(put_feed).delete(delete_feed))
        .route("/api/feeds/{name}/{action}", post(feed_action))
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
