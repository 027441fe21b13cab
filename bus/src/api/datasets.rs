//! Datasets of the owner departments, the standards backflow ships and
//! the data quality of the feeds that fill them.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, put};
use axum::Json;
use axum::Router;
use serde_json::{json, Value};

use super::{forbidden, invalid, principal, put_and_audit, ApiError, ApiResult, ApiState};
use crate::auth::Principal;
use crate::catalog::{CatalogRecord, Dataset};

/// The routes of this resource.
pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/api/datasets", get(list_datasets))
        .route("/api/datasets/{id}", put(put_dataset))
        .route("/api/quality", get(quality))
        .route("/api/standards", get(standards))
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
