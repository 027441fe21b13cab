//! The control plane's HTTP API (JSON under `/api`), behind bearer tokens
//! (see [`crate::auth`] for the principals and how a token is presented).
//! No token: 401; a token without the right: 403 with the reason.
//!
//! | method | path | who |
//! | --- | --- | --- |
//! | PUT, PATCH | /api/datasets/{id} | admin, owner of the department |
//! | GET | /api/datasets | anyone with a token |
//! | POST | /api/subscriptions | admin, the subscriber itself |
//! | GET | /api/subscriptions | admin (all), owner (its datasets'), subscriber (its own) |
//! | GET | /api/node | anyone with a token |
//! | GET | /api/whoami | anyone with a token (the principal it stands for) |
//! | PUT | /api/nodes/{code} | admin |
//! | GET, POST | /api/tokens; DELETE /api/tokens/{sha256} | admin |
//! | GET | /api/feeds | admin, owners |
//! | PUT, DELETE | /api/feeds/{name} | admin, owner of every dataset the feed fills |
//! | POST | /api/feeds/{name}/pause, /resume, /restart | same |
//! | GET | /api/subscriptions/{id} | admin, owner of the dataset, the subscriber |
//! | GET | /api/grants/{subscriber}:{dataset} | admin, owner of the dataset, the subscriber |
//! | POST | /api/grants/{subscriber}:{dataset}/holders | the subscriber (its onward grants) |
//! | GET | /api/datasets/{id}/holders | admin, owner of the dataset |
//! | POST | /api/subscriptions/{id}/approve, /reject, /revoke, /narrow | admin, owner of the dataset |
//! | GET | /api/lag, /api/lag/history | admin, owners (their datasets), subscribers (their own) |
//! | POST | /api/lag/status | a subscriber node (its own share topics) |
//! | GET | /api/quality | admin, owners (their datasets) |
//! | GET | /api/standards | anyone with a token |
//! | GET | /api/audit, POST /api/audit/verify | the auditor only |
//!
//! A subscription id is `<subscriber>:<dataset>`. Every decision goes to the
//! audit trail. One module per resource.

mod audit;
mod datasets;
mod feeds;
mod lag;
mod nodes;
mod subscriptions;
mod tokens;
pub mod views;
mod whoami;

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde_json::Value;

use crate::auth::TokenConfig;
use crate::auth::{Authenticator, Principal};
use crate::state::audit::Auditor;
use crate::state::catalog::{Catalog, CatalogRecord};

pub use subscriptions::expire;

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    catalog: Catalog,
    auditor: Auditor,
    auth: Authenticator,
    node: std::sync::Arc<crate::domain::division::NodeConfig>,
    feeds: crate::source::feeds::FeedStatuses,
    publisher: crate::kafka::Publisher,
    registry: crate::registry::Registry,
    lag: crate::lag::LagBoard,
    metrics: Option<crate::metrics::Metrics>,
    /// The configuration's `[[standards]]`: datasets bound to a standard.
    standards: std::sync::Arc<Vec<crate::standards::StandardConfig>>,
    /// What feeds registered through the API may use.
    admission: std::sync::Arc<crate::admission::FeedAdmission>,
    /// The configuration's feeds and the datasets each fills.
    config_feeds: std::sync::Arc<std::collections::BTreeMap<String, Vec<String>>>,
    /// Datasets received from an upper node, with the subscription each
    /// comes through.
    cascaded: std::sync::Arc<std::collections::BTreeMap<String, String>>,
    /// The configuration's `[[shares]]`.
    config_shares: std::sync::Arc<Vec<crate::distributor::share::ShareConfig>>,
    /// The upper grants of the datasets received from an upper node.
    upper: crate::upper::UpperGrants,
    /// What lower nodes reported of their onward grants.
    holder_reports: crate::holders::HolderReports,
    /// The admin calls for child nodes' Kafka principals, when the node
    /// manages them (`kafka.manage_acls`).
    acl_admin: Option<std::sync::Arc<crate::kafka::acl::AclAdmin>>,
    /// The child nodes' Kafka ACLs in force.
    acls_in_force: crate::acls::AclsInForce,
    /// This node's own Kafka principal, which no child node may take.
    own_kafka_principal: Option<String>,
    /// Creates the child nodes' dead-letter topics (they may not).
    dead_letters: Option<std::sync::Arc<DeadLetters>>,
}

/// The child nodes' dead-letter topics, created by the node when a child
/// node reports a subscription (`POST /api/lag/status`).
pub(crate) struct DeadLetters {
    admin: std::sync::Arc<crate::kafka::TopicAdmin>,
    replication_factor: i32,
    /// When each topic was last made sure of: a subscriber reports every
    /// few seconds, and the cluster is asked again only every 10 minutes
    /// per topic (at most 64 names per child node).
    ensured: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
}

impl DeadLetters {
    const AGAIN_AFTER: std::time::Duration = std::time::Duration::from_secs(600);

    /// Creates `topic` (one partition) unless it was made sure of lately.
    pub(crate) async fn ensure(&self, topic: String) -> Result<(), crate::kafka::KafkaError> {
        let lately = |m: &std::collections::HashMap<String, std::time::Instant>| {
            m.get(&topic)
                .is_some_and(|t| t.elapsed() < Self::AGAIN_AFTER)
        };
        if lately(&self.ensured.lock().unwrap_or_else(|p| p.into_inner())) {
            return Ok(());
        }
        self.admin
            .ensure(&[crate::kafka::TopicSpec::retained(
                topic.clone(),
                1,
                self.replication_factor,
            )])
            .await?;
        self.ensured
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(topic, std::time::Instant::now());
        Ok(())
    }
}

impl ApiState {
    /// State for the API; tokens were validated with the configuration.
    pub fn new(
        catalog: Catalog,
        auditor: Auditor,
        tokens: &[TokenConfig],
        node: crate::domain::division::NodeConfig,
        feeds: crate::source::feeds::FeedStatuses,
        publisher: crate::kafka::Publisher,
        registry: crate::registry::Registry,
    ) -> Self {
        Self {
            auth: Authenticator::new(tokens, catalog.clone()),
            catalog,
            auditor,
            node: std::sync::Arc::new(node),
            feeds,
            publisher,
            registry,
            lag: crate::lag::LagBoard::default(),
            metrics: None,
            standards: Default::default(),
            admission: Default::default(),
            config_feeds: Default::default(),
            cascaded: Default::default(),
            config_shares: Default::default(),
            upper: Default::default(),
            holder_reports: Default::default(),
            acl_admin: None,
            acls_in_force: Default::default(),
            own_kafka_principal: None,
            dead_letters: None,
        }
    }

    /// The child nodes' Kafka principals and ACLs this node manages.
    pub fn with_kafka_acls(
        mut self,
        admin: std::sync::Arc<crate::kafka::acl::AclAdmin>,
        in_force: crate::acls::AclsInForce,
        own_principal: Option<String>,
        dead_letters: (std::sync::Arc<crate::kafka::TopicAdmin>, i32),
    ) -> Self {
        self.acl_admin = Some(admin);
        self.acls_in_force = in_force;
        self.own_kafka_principal = own_principal;
        self.dead_letters = Some(std::sync::Arc::new(DeadLetters {
            admin: dead_letters.0,
            replication_factor: dead_letters.1,
            ensured: Default::default(),
        }));
        self
    }

    /// Where lower nodes' reports of their onward grants are kept.
    pub fn with_holder_reports(mut self, reports: crate::holders::HolderReports) -> Self {
        self.holder_reports = reports;
        self
    }

    /// The configuration's shares, which `/api/grants` answers for.
    pub fn with_config_shares(
        mut self,
        shares: Vec<crate::distributor::share::ShareConfig>,
    ) -> Self {
        self.config_shares = std::sync::Arc::new(shares);
        self
    }

    /// The upper grants this node follows.
    pub fn with_upper(mut self, upper: crate::upper::UpperGrants) -> Self {
        self.upper = upper;
        self
    }

    /// The datasets this node receives from an upper node.
    pub fn with_cascaded(mut self, cascaded: std::collections::BTreeMap<String, String>) -> Self {
        self.cascaded = std::sync::Arc::new(cascaded);
        self
    }

    /// Whether `who` decides over `dataset` here: its department or an
    /// admin; over a dataset received from an upper node, an admin alone
    /// (no local department owns the upper node's data; what the admin
    /// may grant stays within the upper grant).
    fn decides(&self, who: &Principal, dataset: &str) -> Result<(), String> {
        match self.cascaded.get(dataset) {
            Some(via) if *who != Principal::Admin => Err(format!(
                "{} cannot decide over dataset {dataset}: it is received from the upper node through subscription {via}, and only an admin re-shares it here",
                who.name()
            )),
            Some(_) => Ok(()),
            None if who.owns(dataset) => Ok(()),
            None => Err(format!(
                "{} cannot decide over dataset {dataset}: only its owner department or an admin can",
                who.name()
            )),
        }
    }

    /// The admin's rules for feeds registered through the API, and the
    /// feeds of the configuration file.
    pub fn with_feeds(
        mut self,
        admission: crate::admission::FeedAdmission,
        config_feeds: &[crate::source::config::FeedConfig],
    ) -> Self {
        self.admission = std::sync::Arc::new(admission);
        self.config_feeds = std::sync::Arc::new(
            config_feeds
                .iter()
                .map(|f| {
                    (
                        f.name().to_owned(),
                        f.datasets().into_iter().map(str::to_owned).collect(),
                    )
                })
                .collect(),
        );
        self
    }

    /// The datasets the configuration binds to standards.
    pub fn with_standards(mut self, standards: Vec<crate::standards::StandardConfig>) -> Self {
        self.standards = std::sync::Arc::new(standards);
        self
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
            StatusCode::TOO_MANY_REQUESTS => "too_many",
            _ => "error",
        };
        (
            self.0,
            Json(views::ErrorBody {
                error: kind,
                reason: &self.1,
            }),
        )
            .into_response()
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

/// The caller, from its token.
async fn principal(state: &ApiState, headers: &HeaderMap) -> Result<Principal, ApiError> {
    state
        .auth
        .authenticate(headers)
        .await
        .map_err(|e| ApiError(StatusCode::UNAUTHORIZED, e.0))
}

/// The caller, from its token, when it is one of the principals that run,
/// own or use data: the auditor reads and verifies the audit trail and
/// nothing else.
async fn staff(state: &ApiState, headers: &HeaderMap) -> Result<Principal, ApiError> {
    let who = principal(state, headers).await?;
    if who == Principal::Auditor {
        return Err(forbidden(
            "the auditor reads and verifies the audit trail and nothing else (separation of duties)",
        ));
    }
    Ok(who)
}

/// The API routes.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .merge(datasets::routes())
        .merge(subscriptions::routes())
        .merge(feeds::routes())
        .merge(nodes::routes())
        .merge(tokens::routes())
        .merge(lag::routes())
        .merge(audit::routes())
        .merge(whoami::routes())
        .with_state(state)
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

/// Writes a catalog record only if `unchanged` still holds (the object is
/// the one the decision was taken on), then the decision to the audit
/// trail; `409` when it changed meanwhile.
async fn put_if_and_audit(
    state: &ApiState,
    who: &Principal,
    record: CatalogRecord,
    unchanged: impl FnMut(&crate::state::catalog::CatalogState) -> bool,
    details: Value,
) -> Result<(), ApiError> {
    if !state
        .catalog
        .put_if(record, unchanged)
        .await
        .map_err(unavailable)?
    {
        return Err(ApiError(
            StatusCode::CONFLICT,
            "it changed while this request was handled: read it again and retry".to_owned(),
        ));
    }
    audit(state, who, details).await
}

/// The subscriptions among `subs` (each as the decision would leave it)
/// whose share schema the registry would refuse, or whose grant does not
/// fit the dataset's table, each with why (see
/// [`crate::distributor::grant_check`]); `503` when the registry cannot be
/// read.
async fn share_schema_refusals(
    state: &ApiState,
    subs: &[crate::state::catalog::Subscription],
    dataset: &crate::state::catalog::Dataset,
) -> Result<Vec<String>, ApiError> {
    use crate::distributor::grant_check;
    let mut refused = Vec::new();
    for sub in subs {
        let Some(share) = grant_check::share_of(sub, dataset) else {
            continue;
        };
        let why = grant_check::refusal(&state.registry, &share)
            .await
            .map_err(|e| {
                ApiError(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("the schema registry could not be read to check the share schema of subscription {}: {e}", sub.id),
                )
            })?;
        if let Some(why) = why {
            refused.push(format!("subscription {}: {why}", sub.id));
        }
    }
    Ok(refused)
}

/// Appends a decision by `who` to the audit trail.
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
