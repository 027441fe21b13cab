//! Subscriptions: requests by lower nodes, the owners' decisions, and
//! expiry.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Json;
use axum::Router;
use backflow_connectors::now_ms;
use serde::Deserialize;
use serde_json::json;

use super::views;
use super::{
    audit, forbidden, invalid, put_if_and_audit, staff, unavailable, ApiError, ApiResult, ApiState,
};
use crate::auth::Principal;
use crate::state::audit::Auditor;
use crate::state::catalog::{
    bounded, limits, random_secret, Catalog, CatalogRecord, Dataset, SharingClass, Subscription,
    SubscriptionState,
};

/// The routes of this resource.
pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route(
            "/api/subscriptions",
            get(list_subscriptions).post(request_subscription),
        )
        .route("/api/subscriptions/{id}", get(get_subscription))
        .route("/api/grants/{id}", get(get_grant))
        .route("/api/grants/{id}/holders", post(report_holders))
        .route("/api/subscriptions/{id}/{action}", post(decide))
}

/// A subscription as the API shows it: every field but its HMAC key.
fn view(s: &Subscription) -> views::SubscriptionView {
    views::SubscriptionView::from(s)
}

/// `GET /api/grants/{subscriber}:{dataset}`: what this node grants a
/// subscriber of a dataset, whether by a subscription of the catalog or by
/// a share of its configuration: state, policy version, fields and rules,
/// and whether it may share them on. A lower node that re-shares the
/// dataset follows it, so that an ended or narrowed grant ends or narrows
/// what it shares on (the subscriber itself, the dataset's owner and
/// admins may read it).
async fn get_grant(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    let who = staff(&state, &headers).await?;
    let (subscriber, dataset) = id
        .split_once(':')
        .ok_or_else(|| invalid(format!("grant id {id:?}: <subscriber>:<dataset>")))?;
    let allowed = match &who {
        Principal::Subscriber(n) => n == subscriber,
        _ => who.owns(dataset),
    };
    if !allowed {
        return Err(forbidden(format!(
            "{} cannot read the grant of {subscriber} for {dataset}",
            who.name()
        )));
    }
    if let Some(share) = state
        .config_shares
        .iter()
        .find(|s| s.subscriber.as_str() == subscriber && s.dataset == dataset)
    {
        return Ok(Json(views::GrantView {
            id,
            state: SubscriptionState::Active,
            source: views::GrantSource::Configuration,
            policy_version: share.version,
            fields: share.fields.clone(),
            onward: share.onward,
            node: state.node.code.to_string(),
        })
        .into_response());
    }
    let st = state.catalog.state().await;
    let sub = st
        .subscriptions
        .get(&id)
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no grant {id}")))?;
    Ok(Json(views::GrantView {
        id,
        state: sub.state.clone(),
        source: views::GrantSource::Catalog,
        policy_version: sub.policy_version,
        fields: sub.granted.clone(),
        onward: sub.onward,
        node: state.node.code.to_string(),
    })
    .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HoldersReport {
    holders: Vec<crate::holders::Holder>,
}

/// `POST /api/grants/{subscriber}:{dataset}/holders`: a lower node tells
/// whom it shares the dataset on with, at every level below it (see
/// [`crate::holders`]). Only the subscriber itself reports, only divisions
/// inside its own jurisdiction.
async fn report_holders(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(body): Json<HoldersReport>,
) -> ApiResult {
    let who = staff(&state, &headers).await?;
    let (subscriber, _) = id
        .split_once(':')
        .ok_or_else(|| invalid(format!("grant id {id:?}: <subscriber>:<dataset>")))?;
    let Principal::Subscriber(n) = &who else {
        return Err(forbidden(format!(
            "{} cannot report holders: a lower node reports its own onward grants",
            who.name()
        )));
    };
    if n != subscriber {
        return Err(forbidden(format!(
            "subscriber:{n} cannot report for {subscriber}"
        )));
    }
    let reporter = crate::domain::division::DivisionCode::parse(n).map_err(invalid)?;
    crate::holders::check_report(&reporter, &body.holders).map_err(invalid)?;
    state.holder_reports.store(&id, body.holders);
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn get_subscription(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    let who = staff(&state, &headers).await?;
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
    let mut answer = view(sub);
    if state.acl_admin.is_some() {
        // The ACLs of the subscriber's principal that this subscription
        // is the reason for, as the brokers confirmed them in the
        // reconciler's last round (at most a second old).
        let topic = crate::domain::topics::share(&sub.subscriber, &sub.dataset);
        let in_force = state
            .acls_in_force
            .of(&sub.subscriber)
            .await
            .unwrap_or_default();
        if let Some(e) = &in_force.error {
            answer.kafka_acls_error = Some(e.clone());
        }
        let acls: Vec<_> = in_force
            .acls
            .into_iter()
            .filter(|a| {
                a.name == topic
                    || (a.pattern == crate::kafka::acl::Pattern::Prefixed
                        && topic.starts_with(&a.name))
            })
            .collect();
        answer.kafka_acls = Some(acls);
    }
    Ok(Json(answer).into_response())
}

async fn list_subscriptions(State(state): State<ApiState>, headers: HeaderMap) -> ApiResult {
    let who = staff(&state, &headers).await?;
    let st = state.catalog.state().await;
    let visible: Vec<views::SubscriptionView> = st
        .subscriptions
        .values()
        .filter(|s| match &who {
            Principal::Admin => true,
            Principal::Owner(_) => who.owns(&s.dataset),
            Principal::Subscriber(n) => &s.subscriber == n,
            Principal::Auditor => false,
        })
        .map(view)
        .collect();
    Ok(Json(visible).into_response())
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

/// Longest validity a request may ask for, in days.
const MAX_VALID_DAYS: u32 = 3650;

/// `POST /api/subscriptions`: a subscriber asks for a dataset.
///
/// Idempotent and never a way around a decision: the same request again
/// answers the subscription as it is (200, no new key, no new backfill);
/// a request awaiting the owner cannot be changed (409); a revoked one
/// stays revoked until the owner re-activates it (409); after a rejection
/// or expiry, a new request is a new version of it.
async fn request_subscription(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Json(body): Json<RequestBody>,
) -> ApiResult {
    let who = staff(&state, &headers).await?;
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
    let subscriber =
        crate::domain::division::DivisionCode::parse(&body.subscriber).map_err(invalid)?;
    state
        .node
        .code
        .may_share_with(&subscriber)
        .map_err(|e| forbidden(format!("subscriber: {e}")))?;
    check_request(&body)?;
    let (dataset, existing) = {
        let st = state.catalog.state().await;
        let dataset = st.datasets.get(&body.dataset).cloned().ok_or_else(|| {
            ApiError(
                StatusCode::NOT_FOUND,
                format!(
                    "no dataset {:?}",
                    body.dataset.chars().take(200).collect::<String>()
                ),
            )
        })?;
        let id = format!("{}:{}", body.subscriber, body.dataset);
        (dataset, st.subscriptions.get(&id).cloned())
    };
    check_fields(&dataset, &body.fields)?;
    let id = format!("{}:{}", body.subscriber, body.dataset);
    if let Some(reason) = state.upper.onward_refusal(&dataset.id) {
        return Err(forbidden(reason));
    }
    if dataset.sharing == SharingClass::NotShared {
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
    let mut fields = body.fields.clone();
    fields.sort();
    fields.dedup();
    let (request_version, secret, policy_version) =
        match next_version(existing.as_ref(), &id, &fields, &dataset)? {
            Next::Same => {
                let s = existing.as_ref().expect("the same request exists");
                return Ok(Json(view(s)).into_response());
            }
            Next::Version {
                request_version,
                secret,
                policy_version,
            } => (request_version, secret, policy_version),
        };
    let (state_now, granted) = match dataset.sharing {
        SharingClass::Unconditional => (SubscriptionState::Active, grants(&dataset, &body.fields)),
        _ => (SubscriptionState::Pending, BTreeMap::new()),
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
        policy_version: policy_version + u32::from(state_now == SubscriptionState::Active),
        state: state_now,
        secret,
        updated_ms: now_ms(),
        backfilled: false,
        request_version,
        onward: dataset.onward,
    };
    let read = existing.clone();
    put_if_and_audit(&state, &who, CatalogRecord::Subscription(sub.clone()), |st| st.subscriptions.get(&id) == read.as_ref(), json!({"action": "subscription requested", "subscription": id, "request_version": request_version, "purpose": sub.purpose, "fields": sub.requested, "result": serde_json::to_value(&sub.state).ok().and_then(|v| v.get("state").cloned())})).await?;
    Ok((StatusCode::CREATED, Json(view(&sub))).into_response())
}

/// The request's own bounds: a purpose, at most so many fields, a
/// validity within [`MAX_VALID_DAYS`].
fn check_request(body: &RequestBody) -> Result<(), ApiError> {
    if body.purpose.trim().is_empty() {
        return Err(invalid(
            "purpose is required: say what the data is needed for",
        ));
    }
    bounded("purpose", &body.purpose, limits::PURPOSE).map_err(invalid)?;
    if body.fields.len() > limits::FIELDS {
        return Err(invalid(format!(
            "fields: {} requested, at most {}",
            body.fields.len(),
            limits::FIELDS
        )));
    }
    if body
        .valid_days
        .is_some_and(|d| d == 0 || d > MAX_VALID_DAYS)
    {
        return Err(invalid(format!(
            "valid_days: between 1 and {MAX_VALID_DAYS}"
        )));
    }
    Ok(())
}

/// Every requested field is one the dataset shares, and at least one is
/// requested.
fn check_fields(dataset: &Dataset, requested: &[String]) -> Result<(), ApiError> {
    let unknown: Vec<&str> = requested
        .iter()
        .filter(|f| !dataset.fields.contains_key(*f))
        .map(String::as_str)
        .collect();
    if !unknown.is_empty() || requested.is_empty() {
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
    Ok(())
}

/// What a request makes of the subscription as it is.
enum Next {
    /// Active with the same fields: answered as it is.
    Same,
    /// A new version of the request, with the key it keeps.
    Version {
        request_version: u32,
        secret: String,
        policy_version: u32,
    },
}

/// What a request with `fields` (sorted, without duplicates) makes of the
/// subscription `id` as it is: idempotent for the same fields, refused
/// while active with others, awaiting a decision, failed or revoked; a
/// new version after a rejection or expiry.
fn next_version(
    existing: Option<&Subscription>,
    id: &str,
    fields: &[String],
    dataset: &Dataset,
) -> Result<Next, ApiError> {
    let same = |s: &Subscription| {
        let mut r = s.requested.clone();
        r.sort();
        r.dedup();
        r == fields
    };
    Ok(match existing {
        None => Next::Version {
            request_version: 1,
            secret: random_secret(),
            policy_version: 0,
        },
        Some(s) => match &s.state {
            SubscriptionState::Active if same(s) => Next::Same,
            SubscriptionState::Active => {
                return Err(ApiError(
                    StatusCode::CONFLICT,
                    format!(
                        "subscription {id} is active with fields {}; a granted subscription is not re-requested: ask the owner of {} to narrow it, or to revoke it and re-activate it with other fields",
                        s.granted.keys().cloned().collect::<Vec<_>>().join(", "),
                        dataset.id
                    ),
                ))
            }
            SubscriptionState::Pending => {
                return Err(ApiError(
                    StatusCode::CONFLICT,
                    format!(
                        "request {id} (version {}) awaits the decision of the owner of {}; a request under review cannot be changed",
                        s.request_version, dataset.id
                    ),
                ))
            }
            SubscriptionState::Failed { reason } => {
                return Err(ApiError(
                    StatusCode::CONFLICT,
                    format!(
                        "subscription {id} failed ({reason}); the owner of {} or an admin re-activates it once the cause is fixed",
                        dataset.id
                    ),
                ))
            }
            SubscriptionState::Revoked { reason } => {
                return Err(ApiError(
                    StatusCode::CONFLICT,
                    format!(
                        "subscription {id} was revoked ({reason}); it stays revoked until the owner of {} or an admin re-activates it",
                        dataset.id
                    ),
                ))
            }
            SubscriptionState::Rejected { .. } | SubscriptionState::Expired => {
                // A new version of the request; the key stays, so rows the
                // subscriber holds keep their hashed keys.
                Next::Version {
                    request_version: s.request_version + 1,
                    secret: s.secret.clone(),
                    policy_version: s.policy_version,
                }
            }
        },
    })
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
    /// Approve, narrow: the granted fields (approval may only narrow the
    /// request, narrowing only the grant).
    #[serde(default)]
    fields: Option<Vec<String>>,
    /// Approve: the version of the request the owner reviewed.
    #[serde(default)]
    request_version: Option<u32>,
    /// Approve: whether the subscriber may share on what it receives
    /// (default: the dataset's `onward`).
    #[serde(default)]
    onward: Option<crate::domain::policy::Onward>,
}

/// `POST /api/subscriptions/{id}/{approve|reject|revoke|narrow|reactivate}`:
/// the owner's (or an admin's) decisions.
async fn decide(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    body: Option<Json<DecisionBody>>,
) -> ApiResult {
    let who = staff(&state, &headers).await?;
    let body = body.map(|Json(b)| b).unwrap_or_default();
    let reason = body.reason.clone().unwrap_or_default();
    bounded("reason", &reason, limits::REASON).map_err(invalid)?;
    grant_fits(&state, &who, &id, &action, &body, &reason).await?;
    // Decided on the subscription as it is when written (one step under
    // the catalog's writer), so nothing decided meanwhile is overwritten.
    let sub = state
        .catalog
        .update(|st| {
            let sub =
                st.subscriptions.get(&id).cloned().ok_or_else(|| {
                    ApiError(StatusCode::NOT_FOUND, format!("no subscription {id}"))
                })?;
            state
                .decides(&who, &sub.dataset)
                .map_err(|e| forbidden(format!("cannot {action} subscription {id}: {e}")))?;
            let dataset = st.datasets.get(&sub.dataset).ok_or_else(|| {
                ApiError(
                    StatusCode::CONFLICT,
                    format!("dataset {} is gone", sub.dataset),
                )
            })?;
            let sub = decision(sub, dataset, &action, &body, &reason)?;
            Ok((CatalogRecord::Subscription(sub.clone()), sub))
        })
        .await
        .map_err(unavailable)??;
    let done = match action.as_str() {
        "approve" => "approved",
        "reject" => "rejected",
        "revoke" => "revoked",
        "reactivate" => "re-activated",
        _ => "narrowed",
    };
    audit(&state, &who, json!({"action": format!("subscription {done}"), "subscription": id, "request_version": sub.request_version, "reason": reason, "granted": sub.granted, "policy_version": sub.policy_version})).await?;
    Ok(Json(view(&sub)).into_response())
}

/// Refuses (409) a decision that grants fields (approve, narrow,
/// re-activate) whose share schema the registry would refuse for what the
/// subscriber already received: the owner learns it now, not by the
/// subscription failing in the distributor. Checked on the subscription as
/// read; a decision that fails for another reason is left to [`decision`]
/// to explain.
async fn grant_fits(
    state: &ApiState,
    who: &Principal,
    id: &str,
    action: &str,
    body: &DecisionBody,
    reason: &str,
) -> Result<(), ApiError> {
    if !matches!(action, "approve" | "narrow" | "reactivate") {
        return Ok(());
    }
    let (sub, dataset) = {
        let st = state.catalog.state().await;
        match st.subscriptions.get(id) {
            Some(sub) => match st.datasets.get(&sub.dataset) {
                Some(d) => (sub.clone(), d.clone()),
                None => return Ok(()),
            },
            None => return Ok(()),
        }
    };
    if state.decides(who, &sub.dataset).is_err() {
        return Ok(());
    }
    let Ok(next) = decision(sub, &dataset, action, body, reason) else {
        return Ok(());
    };
    let refused = super::share_schema_refusals(state, &[next], &dataset).await?;
    match refused.first() {
        None => Ok(()),
        Some(why) => Err(ApiError(
            StatusCode::CONFLICT,
            format!(
                "cannot {action} {why}. Grant the fields with the rules the subscriber had, or set the dataset's compatibility level to one that allows the change (PATCH /api/datasets/{} {{\"compatibility\": \"NONE\"}}: the share topic's subjects follow it)",
                dataset.id
            ),
        )),
    }
}

/// An owner's decision on a subscription: the subscription after it, or
/// why it cannot be taken.
fn decision(
    mut sub: Subscription,
    dataset: &Dataset,
    action: &str,
    body: &DecisionBody,
    reason: &str,
) -> Result<Subscription, ApiError> {
    let id = sub.id.clone();
    let conflict = |why: String| ApiError(StatusCode::CONFLICT, why);
    let shared = dataset.sharing != SharingClass::NotShared;
    match (action, &sub.state) {
        ("approve", SubscriptionState::Pending) => {
            let reviewed = body.request_version.ok_or_else(|| {
                invalid(format!(
                    "request_version: approve the version of the request you reviewed (GET /api/subscriptions/{id} shows it: {})",
                    sub.request_version
                ))
            })?;
            if reviewed != sub.request_version {
                return Err(conflict(format!(
                    "request {id} is at version {}, not the version {reviewed} you approve: review it again",
                    sub.request_version
                )));
            }
            if !shared {
                return Err(conflict(format!("dataset {} is not shared", dataset.id)));
            }
            let fields = body.fields.clone().unwrap_or_else(|| sub.requested.clone());
            if let Some(extra) = fields.iter().find(|f| !sub.requested.contains(f)) {
                return Err(invalid(format!(
                    "field {extra} was not requested: approval may only narrow the request"
                )));
            }
            sub.granted = grants(dataset, &fields);
            sub.state = SubscriptionState::Active;
            sub.policy_version += 1;
            sub.backfilled = false;
            sub.onward = body.onward.unwrap_or(dataset.onward);
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
                reason: reason.to_owned(),
            };
        }
        (
            "revoke",
            SubscriptionState::Active
            | SubscriptionState::Pending
            | SubscriptionState::Failed { .. },
        ) => {
            sub.state = SubscriptionState::Revoked {
                reason: if reason.is_empty() {
                    "revoked by the owner".to_owned()
                } else {
                    reason.to_owned()
                },
            };
        }
        (
            "reactivate",
            SubscriptionState::Revoked { .. }
            | SubscriptionState::Expired
            | SubscriptionState::Failed { .. },
        ) => {
            if !shared {
                return Err(conflict(format!("dataset {} is not shared", dataset.id)));
            }
            // What was granted, as the dataset shares it now; what was
            // requested when nothing was granted yet.
            let kept: Vec<String> = sub
                .granted
                .keys()
                .filter(|f| dataset.fields.contains_key(*f))
                .cloned()
                .collect();
            let fields = if kept.is_empty() {
                sub.requested.clone()
            } else {
                kept
            };
            sub.granted = grants(dataset, &fields);
            if sub.granted.is_empty() {
                return Err(conflict(format!(
                    "none of the fields of {id} is shared by {} any more",
                    dataset.id
                )));
            }
            sub.state = SubscriptionState::Active;
            sub.policy_version += 1;
            sub.backfilled = false;
        }
        ("approve" | "reject" | "revoke" | "narrow" | "reactivate", other) => {
            return Err(conflict(format!(
                "subscription {id} is {}: cannot {action} it",
                serde_json::to_value(other)
                    .map(|v| v["state"].clone())
                    .unwrap_or_default()
            )))
        }
        _ => {
            return Err(ApiError(
                StatusCode::NOT_FOUND,
                format!(
                    "unknown action {action}: use approve, reject, revoke, narrow or reactivate"
                ),
            ))
        }
    }
    sub.updated_ms = now_ms();
    Ok(sub)
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
    for read in due {
        let mut s = read.clone();
        s.state = SubscriptionState::Expired;
        s.updated_ms = now;
        let written = catalog
            .put_if(CatalogRecord::Subscription(s.clone()), |st| {
                st.subscriptions.get(&s.id) == Some(&read)
            })
            .await?;
        if !written {
            // Decided on meanwhile (revoked, narrowed): the next round
            // looks at it again.
            continue;
        }
        auditor
            .append(
                "decision",
                json!({"action": "subscription expired", "subscription": s.id, "by": "system"}),
            )
            .await?;
    }
    Ok(())
}
