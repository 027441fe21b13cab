//! Datasets of the owner departments, the standards backflow ships and
//! the data quality of the feeds that fill them.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, put};
use axum::Json;
use axum::Router;
use serde_json::{json, Value};

use super::views;
use super::{
    audit, forbidden, invalid, put_if_and_audit, staff, unavailable, ApiError, ApiResult, ApiState,
};
use crate::auth::Principal;
use crate::state::catalog::{limits, CatalogRecord, Dataset, SubscriptionState};

/// The routes of this resource.
pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/api/datasets", get(list_datasets))
        .route("/api/datasets/{id}", put(put_dataset).patch(put_dataset))
        .route("/api/datasets/{id}/holders", get(holders))
        .route("/api/quality", get(quality))
        .route("/api/standards", get(standards))
}

async fn list_datasets(State(state): State<ApiState>, headers: HeaderMap) -> ApiResult {
    let who = staff(&state, &headers).await?;
    let st = state.catalog.state().await;
    let list: Vec<views::DatasetEntry> = st
        .datasets
        .values()
        .map(|d| views::DatasetEntry {
            dataset: d,
            // A dataset received from an upper node says so, with the
            // upper grant it is shared on under.
            received: state.cascaded.get(&d.id).map(|via| views::Received {
                subscription: via.clone(),
                upper_grant: state.upper.get(&d.id).into(),
            }),
            // Only for who decides over the dataset: to anyone else the
            // count would tell when grants come and go, and with each
            // node's own count (`/api/node`) which sibling holds what.
            subscribers: state.decides(&who, &d.id).is_ok().then(|| {
                st.subscriptions
                    .values()
                    .filter(|s| s.dataset == d.id && s.state == SubscriptionState::Active)
                    .count()
            }),
        })
        .collect();
    Ok(Json(list).into_response())
}

/// `GET /api/datasets/{id}/holders`: every node that holds the dataset
/// through this node, at every level, under which grant (see
/// [`crate::holders`]): for its owner and admins.
async fn holders(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    let who = staff(&state, &headers).await?;
    state.decides(&who, &id).map_err(forbidden)?;
    let st = state.catalog.state().await;
    let list = crate::holders::holders(
        state.node.code.as_str(),
        &id,
        &state.config_shares,
        &st,
        &state.holder_reports,
    );
    Ok(Json(views::Holders {
        dataset: id,
        node: state.node.code.to_string(),
        holders: list,
    })
    .into_response())
}

/// `PUT` or `PATCH /api/datasets/{id}`: registers a dataset, or changes
/// one. A change merges the body into the dataset as it is (keys left out
/// keep their value, `null` clears one), so an edit cannot drop the row
/// rule by leaving it out. Every active subscription of the dataset is then
/// re-derived from it (see [`Subscription::under`]), each change audited.
async fn put_dataset(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> ApiResult {
    let who = staff(&state, &headers).await?;
    state.decides(&who, &id).map_err(forbidden)?;
    crate::domain::topics::validate_dataset_id(&id).map_err(invalid)?;
    let Value::Object(changes) = body else {
        return Err(invalid(
            "the body must be a JSON object of dataset settings",
        ));
    };
    let before = state.catalog.state().await.datasets.get(&id).cloned();
    let mut merged = match &before {
        Some(d) => serde_json::to_value(d).expect("datasets serialize"),
        None => json!({}),
    };
    for (key, value) in changes {
        if key == "id" && value != Value::String(id.clone()) {
            return Err(invalid(format!("id: {value} differs from the path's {id}")));
        }
        match value {
            Value::Null => {
                merged.as_object_mut().expect("an object").remove(&key);
            }
            v => {
                merged[&key] = v;
            }
        }
    }
    merged["id"] = Value::String(id.clone());
    let dataset: Dataset = serde_json::from_value(merged).map_err(|e| invalid(e.to_string()))?;
    let standard = bound_standard(&state, &id).await;
    dataset.validate(standard).map_err(invalid)?;
    arrived_protection_kept(&state, &dataset).await?;
    if before.is_none() {
        let st = state.catalog.state().await;
        let department = dataset.owner();
        let registered = st
            .datasets
            .values()
            .filter(|d| d.owner() == department)
            .count();
        if registered >= limits::DATASETS_PER_DEPARTMENT {
            return Err(invalid(format!(
                "department {department} has {registered} datasets, the most one department may register"
            )));
        }
        // Kafka treats '.' and '_' alike in topic names.
        let folded = id.replace('.', "_");
        if let Some(other) = st.datasets.keys().find(|d| d.replace('.', "_") == folded) {
            return Err(invalid(format!(
                "dataset id {id:?}: its topics would collide with those of dataset {other} (Kafka treats '.' and '_' alike in topic names)"
            )));
        }
    }
    let rederived: Vec<_> = state
        .catalog
        .state()
        .await
        .subscriptions
        .values()
        .filter(|s| s.dataset == id)
        .filter_map(|s| s.under(&dataset, before.as_ref()))
        .map(|change| change.subscription)
        .collect();
    let refused = super::share_schema_refusals(&state, &rederived, &dataset).await?;
    if !refused.is_empty() {
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!(
                "the change would break what subscribers of {id} received so far: {}. Keep those fields' rules, narrow or revoke those subscriptions first, or set the dataset's compatibility level to one that allows the change in the same request (\"compatibility\": \"NONE\": the share topics' subjects follow it)",
                refused.join("; ")
            ),
        ));
    }
    if let Some(level) = dataset.compatibility {
        // The feeds register the raw topic's schemas under this level.
        let topic = crate::domain::topics::raw(&id);
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
    let action = if before.is_some() {
        "dataset changed"
    } else {
        "dataset registered"
    };
    // Merged into the dataset as read: written only if it is still so.
    put_if_and_audit(
        &state,
        &who,
        CatalogRecord::Dataset(dataset.clone()),
        |st| st.datasets.get(&id) == before.as_ref(),
        json!({
            "action": action,
            "dataset": id,
            "sharing": dataset.sharing,
            "region_column": dataset.region_column,
            "all_rows": dataset.all_rows,
            "fields": dataset.fields.iter().map(|(n, f)| (n.clone(), dataset.rule(n).unwrap_or_default() + if f.accept_disclosure { " (disclosure accepted)" } else { "" })).collect::<std::collections::BTreeMap<_, _>>(),
        }),
    )
    .await?;
    rederive(&state, &who, &dataset, before.as_ref()).await?;
    Ok((StatusCode::OK, Json(dataset)).into_response())
}

/// Applies a dataset's change to its subscriptions, each change audited.
/// Each subscription is re-derived as it is when written (one step under
/// the catalog's writer), so a change made to it meanwhile (a backfill
/// recorded, a decision) is neither lost nor a reason to stop half-way.
async fn rederive(
    state: &ApiState,
    who: &Principal,
    dataset: &Dataset,
    before: Option<&Dataset>,
) -> Result<(), ApiError> {
    let ids: Vec<String> = state
        .catalog
        .state()
        .await
        .subscriptions
        .values()
        .filter(|s| s.dataset == dataset.id)
        .map(|s| s.id.clone())
        .collect();
    for id in ids {
        let changed = state
            .catalog
            .update(|st| {
                let mut change = st
                    .subscriptions
                    .get(&id)
                    .and_then(|s| s.under(dataset, before))
                    .ok_or(())?;
                change.subscription.updated_ms = backflow_connectors::now_ms();
                Ok::<_, ()>((
                    CatalogRecord::Subscription(change.subscription.clone()),
                    change,
                ))
            })
            .await
            .map_err(unavailable)?;
        let Ok(change) = changed else {
            continue;
        };
        let details = match &change.ended {
            Some(reason) => json!({
                "action": "subscription revoked",
                "subscription": id,
                "reason": reason,
            }),
            None => json!({
                "action": "subscription policy re-derived",
                "subscription": id,
                "reason": format!("dataset {} changed", dataset.id),
                "removed": change.removed,
                "changed": change.changed,
                "rows_changed": change.rows_changed,
                "granted": change.subscription.granted,
                "policy_version": change.subscription.policy_version,
            }),
        };
        audit(state, who, details).await?;
    }
    Ok(())
}

/// Checks a dataset whose raw topic holds what an upper node shared
/// (fields it masked or hashed are marked in the schema): such a field is
/// shared only as restrictive as it arrived or more (masked again or hashed,
/// or withheld), never granted plain.
async fn arrived_protection_kept(state: &ApiState, dataset: &Dataset) -> Result<(), ApiError> {
    let subject = backflow_schemas::registry_client::subject_for(
        &crate::domain::topics::raw(&dataset.id),
        false,
    );
    let arrived = {
        let registry = state.registry.state().await;
        match registry.version(&subject, crate::registry::VersionSel::Latest, false) {
            Ok((_, entry)) => backflow_schemas::protections(&entry.schema),
            Err(_) => return Ok(()),
        }
    };
    for (field, protection) in &arrived {
        if dataset.rule(field).as_deref() == Some("plain") {
            return Err(invalid(format!(
                "fields.{field}: it arrived {protection} from the upper node: share it masked again (or more) or hashed, or withhold it, never plain"
            )));
        }
    }
    Ok(())
}

/// The standard shipped with backflow that a dataset's feed maps it into
/// (the configuration's `[[standards]]`, or a feed registered through
/// the API with its `standards`).
async fn bound_standard(
    state: &ApiState,
    dataset: &str,
) -> Option<&'static backflow_schemas::standard::Standard> {
    let name = match state.standards.iter().find(|s| s.dataset == dataset) {
        Some(s) => s.standard.clone(),
        None => state
            .catalog
            .state()
            .await
            .feeds
            .values()
            .filter(|f| !f.deleted)
            .filter_map(|f| f.standards().ok())
            .flatten()
            .find(|s| s.dataset == dataset)?
            .standard
            .clone(),
    };
    backflow_schemas::standard::builtin().get(&name)
}

/// `GET /api/lag`: lag and status of every subscription this node serves
/// and every feed it runs (subscribers see their own rows, owners their
/// datasets' rows and feeds).
/// Data quality per feed and dataset: changes checked against the
/// dataset's standard, refused, violations by rule, and the score over the
/// last 5 minutes. Owners see their departments' datasets.
async fn quality(State(state): State<ApiState>, headers: HeaderMap) -> ApiResult {
    let who = staff(&state, &headers).await?;
    if matches!(who, Principal::Subscriber(_)) {
        return Err(forbidden("data quality is shown to owners and admins"));
    }
    let mut report = state
        .metrics
        .as_ref()
        .map(crate::standards::quality_report)
        .unwrap_or_default();
    report.retain(|q| who.owns(&q.dataset));
    Ok(Json(views::QualityReport {
        window_secs: crate::standards::SCORE_WINDOW.as_secs(),
        feeds: report,
    })
    .into_response())
}

/// The standards backflow ships: fields, types, required, sensitivity and
/// rules (their own schemas are in the registry once a dataset uses them).
async fn standards(State(state): State<ApiState>, headers: HeaderMap) -> ApiResult {
    staff(&state, &headers).await?;
    let list: Vec<views::StandardView> = backflow_schemas::standard::builtin()
        .values()
        .map(|s| views::StandardView {
            name: s.name().to_owned(),
            doc: s.doc().to_owned(),
            key: s.key().to_vec(),
            region_field: s.region_field().map(str::to_owned),
            subject: crate::standards::standard_subject(s.name()),
            fields: s
                .fields()
                .iter()
                .map(|f| views::StandardField {
                    name: f.name.clone(),
                    doc: f.doc.clone(),
                    sql_type: f.sql_type.to_string(),
                    required: f.required,
                    sensitivity: f.sensitivity.as_str(),
                    rules: f.rules.iter().map(|r| r.name().into_owned()).collect(),
                })
                .collect(),
        })
        .collect();
    Ok(Json(list).into_response())
}
