//! The audit trail for the auditor: read it, verify it. Separation of
//! duties: only the `auditor` principal reads here; no principal, admin
//! included, can alter, delete or hide a record through the API (there is
//! no route for it), and every other principal's decisions are appended to
//! it by the routes that make them.

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use super::{forbidden, principal, ApiError, ApiResult, ApiState};
use crate::auth::Principal;

/// The most records one `GET /api/audit` returns.
const MAX_PAGE: usize = 1000;

/// The routes of this resource.
pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/api/audit", get(read))
        .route("/api/audit/verify", post(verify))
}

/// Only the auditor reads the trail.
async fn auditor(state: &ApiState, headers: &HeaderMap) -> Result<(), ApiError> {
    let who = principal(state, headers).await?;
    if who != Principal::Auditor {
        return Err(forbidden(format!(
            "{} cannot read the audit trail: the auditor reads and verifies it (separation of duties)",
            who.name()
        )));
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Page {
    /// First topic offset to return.
    #[serde(default)]
    from: i64,
    /// Records to return, at most 1000.
    #[serde(default = "default_limit")]
    limit: usize,
}

fn default_limit() -> usize {
    100
}

/// `GET /api/audit?from=OFFSET&limit=N`: records from an offset, each with
/// whether its hash and the node's signature hold.
async fn read(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Query(page): Query<Page>,
) -> ApiResult {
    auditor(&state, &headers).await?;
    let entries = state
        .auditor
        .read(page.from.max(0), page.limit.clamp(1, MAX_PAGE))
        .await
        .map_err(|e| {
            ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the audit trail could not be read (Kafka): {e}"),
            )
        })?;
    Ok(Json(super::views::AuditPage {
        public_key: state.auditor.public_key_hex(),
        records: entries,
    })
    .into_response())
}

/// `POST /api/audit/verify`: the whole trail checked with the node's key;
/// every problem by offset (forged, altered, inserted, missing).
async fn verify(State(state): State<ApiState>, headers: HeaderMap) -> ApiResult {
    auditor(&state, &headers).await?;
    let report = state.auditor.verify().await.map_err(|e| {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the audit trail could not be read (Kafka): {e}"),
        )
    })?;
    Ok(Json(super::views::AuditVerdict {
        intact: report.intact(),
        public_key: state.auditor.public_key_hex(),
        report,
    })
    .into_response())
}
