//! `GET /api/whoami`: the principal a token stands for, so a client (the
//! web page) shows who is signed in and offers only what that principal
//! may do. Any valid token may ask; nothing but the principal is told
//! (never the token, its hash or its label).

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};

use super::{principal, views, ApiResult, ApiState};

/// The routes of this resource.
pub(super) fn routes() -> Router<ApiState> {
    Router::new().route("/api/whoami", get(whoami))
}

async fn whoami(State(state): State<ApiState>, headers: HeaderMap) -> ApiResult {
    let who = principal(&state, &headers).await?;
    Ok(Json(views::WhoAmI::from(&who)).into_response())
}
