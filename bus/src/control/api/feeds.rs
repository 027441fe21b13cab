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

use super::views;
use super::{
    audit, forbidden, invalid, put_and_audit, staff, unavailable, ApiError, ApiResult, ApiState,
};
use crate::auth::Principal;
use crate::state::catalog::CatalogRecord;

/// The routes of this resource.
pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/api/feeds", get(list_feeds))
        .route("/api/feeds/{name}", put(put_feed).delete(delete_feed))
        .route("/api/feeds/{name}/{action}", post(feed_action))
}

/// Longest feed name (it names the feed's dead-letter topic and, by
/// default, its replication slot).
const MAX_FEED_NAME: usize = 100;

/// Whether `who` may manage a feed filling these datasets.
fn may_manage_feed(
    who: &Principal,
    feed: &crate::source::config::FeedConfig,
) -> Result<(), ApiError> {
    match feed.datasets().into_iter().find(|d| !who.owns(d)) {
        None => Ok(()),
        Some(t) => Err(forbidden(format!(
            "{} cannot manage a feed into dataset {}: only its owner department or an admin can",
            who.name(),
            t
        ))),
    }
}

/// Whether `who` may change a feed registered by `owner`: the principal
/// that registered it, or an admin.
fn may_change(who: &Principal, name: &str, owner: Option<&str>) -> Result<(), ApiError> {
    if *who == Principal::Admin || owner == Some(who.name().as_str()) {
        return Ok(());
    }
    Err(forbidden(format!(
        "{} cannot change feed {name}: it belongs to {}",
        who.name(),
        owner.unwrap_or("the admin (registered before feeds had owners)")
    )))
}

/// The department a principal registers feeds for (`None` for an admin).
fn department(who: &Principal) -> Result<Option<&str>, ApiError> {
    match who {
        Principal::Admin => Ok(None),
        Principal::Owner(d) => Ok(Some(d)),
        other => Err(forbidden(format!(
            "{} cannot register feeds: feeds are registered by owner departments, for their own datasets, and by admins",
            other.name()
        ))),
    }
}

fn refused(r: crate::admission::Refusal) -> ApiError {
    match r {
        crate::admission::Refusal::Forbidden(m) => forbidden(m),
        crate::admission::Refusal::Invalid(m) => invalid(m),
    }
}

/// `GET /api/feeds`: an admin sees every feed; an owner the feeds it
/// registered and those of the configuration filling only its datasets.
async fn list_feeds(State(state): State<ApiState>, headers: HeaderMap) -> ApiResult {
    let who = staff(&state, &headers).await?;
    if matches!(who, Principal::Subscriber(_)) {
        return Err(forbidden("feeds are managed by owners and admins"));
    }
    let statuses = state.feeds.snapshot();
    let st = state.catalog.state().await;
    let visible = |name: &str| -> bool {
        if who == Principal::Admin {
            return true;
        }
        if let Some(datasets) = state.config_feeds.get(name) {
            return !datasets.is_empty() && datasets.iter().all(|d| who.owns(d));
        }
        st.feeds
            .get(name)
            .is_some_and(|f| f.owner.as_deref() == Some(who.name().as_str()))
    };
    let entry = |name: &str| views::FeedEntry {
        name: name.to_owned(),
        status: None,
        config: None,
        paused: None,
        owner: None,
    };
    let mut out: BTreeMap<String, views::FeedEntry> = BTreeMap::new();
    for (name, status) in statuses.into_iter().filter(|(n, _)| visible(n)) {
        let e = out.entry(name.clone()).or_insert_with(|| entry(&name));
        e.status = Some(status);
    }
    for f in st.feeds.values().filter(|f| !f.deleted && visible(&f.name)) {
        let e = out.entry(f.name.clone()).or_insert_with(|| entry(&f.name));
        e.config = Some(f.config.clone());
        e.paused = Some(f.paused);
        e.owner = Some(f.owner.clone());
    }
    Ok(Json(out.into_values().collect::<Vec<_>>()).into_response())
}

/// `PUT /api/feeds/{name}`: registers (or replaces) a feed, which starts
/// at once. The caller's own department's datasets only, its password
/// only as a secret an admin bound to the department, its database only
/// one an admin allowed (see [`crate::admission`]).
async fn put_feed(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Json(config): Json<Value>,
) -> ApiResult {
    let who = staff(&state, &headers).await?;
    let dept = department(&who)?;
    if name.is_empty()
        || name.len() > MAX_FEED_NAME
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(invalid(format!(
            "feed name {:?}: letters, digits, '-', '_' and '.', at most {MAX_FEED_NAME} (it names the feed's topics)",
            name.chars().take(120).collect::<String>()
        )));
    }
    if state.feeds.is_config(&name) {
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!("feed {name} is declared in the node's configuration file; change it there"),
        ));
    }
    let previous = state
        .catalog
        .state()
        .await
        .feeds
        .get(&name)
        .filter(|f| !f.deleted)
        .cloned();
    if let Some(old) = &previous {
        may_change(&who, &name, old.owner.as_deref())?;
    }
    let mut record = crate::state::catalog::FeedRecord {
        name: name.clone(),
        owner: Some(who.name()),
        config,
        paused: false,
        restarts: 0,
        deleted: false,
        updated_ms: now_ms(),
    };
    // Keys naming a file or variable of the node are refused before the
    // definition is even parsed (parsing checks a CA file by reading it).
    state
        .admission
        .refuse_node_keys(&record.config, dept)
        .map_err(refused)?;
    let parsed = record.parse().map_err(invalid)?;
    may_manage_feed(&who, &parsed)?;
    state
        .admission
        .admit(&parsed, &record.config, dept, false)
        .map_err(refused)?;
    let standards = record.standards().map_err(invalid)?;
    let mut unchecked = None;
    if !standards.is_empty() {
        // The mapping against the source table as it is now: refused when
        // it cannot produce the standard.
        let checked = match state.admission.admit(&parsed, &record.config, dept, true) {
            Ok(resolved) => {
                crate::standards::check_feed(&resolved.sample_config(), &standards, 0).await
            }
            Err(e) => Err(e.to_string()),
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
    if let Some(old) = &previous {
        record.paused = old.paused;
        record.restarts = old.restarts;
    }
    put_and_audit(
        &state,
        &who,
        CatalogRecord::Feed(record.clone()),
        json!({"action": "feed registered", "feed": name, "datasets": parsed.datasets(), "secret": record.config.get(crate::source::config::SECRET_KEY)}),
    )
    .await?;
    Ok(Json(views::FeedRegistered {
        name,
        owner: record.owner,
        config: record.config,
        paused: record.paused,
        warning: unchecked,
    })
    .into_response())
}

/// A feed registered through the API (404 otherwise, saying when it is
/// declared in the configuration file instead).
async fn registered_feed(
    state: &ApiState,
    name: &str,
) -> Result<crate::state::catalog::FeedRecord, ApiError> {
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
    let who = staff(state, headers).await?;
    let mut record = registered_feed(state, name).await?;
    may_change(&who, name, record.owner.as_deref())?;
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
    Ok(Json(views::FeedChanged {
        name: name.to_owned(),
        paused: record.paused,
        deleted: record.deleted,
    })
    .into_response())
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
    let who = staff(state, headers).await?;
    let record = registered_feed(state, name).await?;
    may_change(&who, name, record.owner.as_deref())?;
    let feed = state.admission.admit_record(&record).map_err(refused)?;
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
            .is_none_or(|s| s.state == crate::source::feeds::FeedState::Paused);
        if stopped {
            match crate::source::feeds::resnapshot(&feed, &state.publisher).await {
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
    Ok(Json(views::FeedResnapshot {
        name: name.to_owned(),
        paused: restarted.paused,
        resnapshot: true,
    })
    .into_response())
}

async fn delete_feed(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult {
    feed_change(&state, &headers, &name, "delete").await
}
