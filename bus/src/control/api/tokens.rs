//! Tokens issued through the API (admin only): issue, list, revoke.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{delete, get};
use axum::Json;
use axum::Router;
use backflow_connectors::now_ms;
use serde::Deserialize;
use serde_json::json;

use super::{forbidden, invalid, put_and_audit, staff, ApiError, ApiResult, ApiState};
use crate::auth::{token_hash, Principal};
use crate::state::catalog::CatalogRecord;

/// The routes of this resource.
pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/api/tokens", get(list_tokens).post(issue_token))
        .route("/api/tokens/{sha256}", delete(revoke_token))
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
    let who = staff(&state, &headers).await?;
    only_admin(&who)?;
    Principal::parse(&body.principal).map_err(|e| invalid(format!("principal: {e}")))?;
    let token = new_token()?;
    let record = crate::state::catalog::TokenRecord {
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
        Json(super::views::TokenIssued {
            token,
            sha256: record.sha256,
            principal: record.principal,
            label: record.label,
        }),
    )
        .into_response())
}

/// Issued tokens (their SHA-256, never the tokens), admin only.
async fn list_tokens(State(state): State<ApiState>, headers: HeaderMap) -> ApiResult {
    let who = staff(&state, &headers).await?;
    only_admin(&who)?;
    let tokens: Vec<_> = state
        .catalog
        .state()
        .await
        .tokens
        .values()
        .cloned()
        .collect();
    Ok(Json(tokens).into_response())
}

/// Revokes an issued token: it is refused from the next request on.
async fn revoke_token(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(sha256): Path<String>,
) -> ApiResult {
    let who = staff(&state, &headers).await?;
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
    Ok(Json(record).into_response())
}
