//! What the API answers: one type per response body, built field by field.
//!
//! A record of the catalog reaches a caller only through a view that names
//! each field it shows (an allowlist): a field added to a record later (a
//! key, a credential, an internal flag) is not shown until a view names
//! it. The field names here are the API's contract, which the CLI, the web
//! page and other nodes read; the unit tests below pin them.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::domain::policy::Onward;
use crate::kafka::acl::Acl;
use crate::state::catalog::{NodeRecord, Subscription, SubscriptionState};

/// Every refusal: a machine-readable kind and the reason, with the fix.
#[derive(Debug, Serialize)]
pub struct ErrorBody<'a> {
    /// `unauthorized`, `forbidden`, `not_found`, `conflict`, `invalid`,
    /// `too_many` or `error`.
    pub error: &'a str,
    /// What is wrong and how to fix it.
    pub reason: &'a str,
}

/// A subscription as its subscriber, its dataset's owner and admins see
/// it: everything but its HMAC key.
#[derive(Debug, Serialize)]
pub struct SubscriptionView {
    pub id: String,
    pub subscriber: String,
    pub dataset: String,
    pub purpose: String,
    pub requested: Vec<String>,
    pub granted: BTreeMap<String, String>,
    pub valid_until_ms: Option<i64>,
    /// `state`, and `reason` for a rejected, revoked or failed one.
    #[serde(flatten)]
    pub state: SubscriptionState,
    pub policy_version: u32,
    pub updated_ms: i64,
    pub backfilled: bool,
    pub request_version: u32,
    pub onward: Onward,
    /// The ACLs the brokers confirmed for this subscription (only on
    /// `GET /api/subscriptions/{id}` of a node that manages ACLs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kafka_acls: Option<Vec<Acl>>,
    /// Why the last ACL round did not finish.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kafka_acls_error: Option<String>,
}

impl From<&Subscription> for SubscriptionView {
    fn from(s: &Subscription) -> Self {
        Self {
            id: s.id.clone(),
            subscriber: s.subscriber.clone(),
            dataset: s.dataset.clone(),
            purpose: s.purpose.clone(),
            requested: s.requested.clone(),
            granted: s.granted.clone(),
            valid_until_ms: s.valid_until_ms,
            state: s.state.clone(),
            policy_version: s.policy_version,
            updated_ms: s.updated_ms,
            backfilled: s.backfilled,
            request_version: s.request_version,
            onward: s.onward,
            kafka_acls: None,
            kafka_acls_error: None,
        }
    }
}

/// `GET /api/whoami`: the principal a token stands for.
#[derive(Debug, Serialize)]
pub struct WhoAmI {
    /// As configured: `admin`, `auditor`, `owner:<department>`,
    /// `subscriber:<node>`.
    pub principal: String,
    /// `admin`, `auditor`, `owner` or `subscriber`.
    pub role: &'static str,
    /// The owner's department.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub department: Option<String>,
    /// The subscriber's node code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

impl From<&crate::auth::Principal> for WhoAmI {
    fn from(p: &crate::auth::Principal) -> Self {
        use crate::auth::Principal;
        let (role, department, node) = match p {
            Principal::Admin => ("admin", None, None),
            Principal::Auditor => ("auditor", None, None),
            Principal::Owner(d) => ("owner", Some(d.clone()), None),
            Principal::Subscriber(n) => ("subscriber", None, Some(n.clone())),
        };
        Self {
            principal: p.name(),
            role,
            department,
            node,
        }
    }
}

/// Where a grant comes from.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantSource {
    /// A `[[shares]]` entry of the node's configuration file.
    Configuration,
    /// A subscription of the catalog.
    Catalog,
}

/// `GET /api/grants/{subscriber}:{dataset}`: what a lower node follows to
/// end or narrow what it shares on.
#[derive(Debug, Serialize)]
pub struct GrantView {
    pub id: String,
    #[serde(flatten)]
    pub state: SubscriptionState,
    pub source: GrantSource,
    pub policy_version: u32,
    pub fields: BTreeMap<String, String>,
    pub onward: Onward,
    /// The granting node's code.
    pub node: String,
}

/// A child node of `GET /api/node`.
#[derive(Debug, Serialize)]
pub struct ChildNode {
    pub code: String,
    pub name: Option<String>,
    pub registered: bool,
    pub active_subscriptions: usize,
}

/// `GET /api/node`: this node, its parent and its children.
#[derive(Debug, Serialize)]
pub struct NodeInfo {
    pub code: String,
    pub name: String,
    pub jurisdiction_prefix: String,
    pub parent: Option<String>,
    pub children: Vec<String>,
    pub child_nodes: Vec<ChildNode>,
    /// The key the node signs its audit trail with: an owner checks the
    /// trail with `backflow audit verify --public-key`.
    pub audit_public_key: String,
    pub audit_key_id: String,
}

/// `PUT /api/nodes/{code}`: the record, and a new SCRAM credential shown
/// this once (the cluster keeps only its salted hash).
#[derive(Debug, Serialize)]
pub struct NodeRegistered {
    #[serde(flatten)]
    pub record: NodeRecord,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub credential: Option<ScramCredential>,
}

/// A SCRAM-SHA-512 user of the node's Kafka cluster.
#[derive(Serialize)]
pub struct ScramCredential {
    pub kafka_username: String,
    pub kafka_password: String,
    pub kafka_mechanism: &'static str,
}

impl std::fmt::Debug for ScramCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramCredential")
            .field("kafka_username", &self.kafka_username)
            .finish_non_exhaustive()
    }
}

/// `POST /api/tokens`: the token itself, shown this once.
#[derive(Serialize)]
pub struct TokenIssued {
    pub token: String,
    pub sha256: String,
    pub principal: String,
    pub label: String,
}

/// One entry of `GET /api/feeds`: its running status (when this process
/// runs it) and, for a feed registered through the API, its record.
#[derive(Debug, Serialize)]
pub struct FeedEntry {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<crate::source::feeds::FeedStatus>,
    /// The feed's settings as registered (secrets named, never their
    /// values).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<Option<String>>,
}

/// `PUT /api/feeds/{name}`: the feed as registered.
#[derive(Debug, Serialize)]
pub struct FeedRegistered {
    pub name: String,
    pub owner: Option<String>,
    pub config: serde_json::Value,
    pub paused: bool,
    /// Why the tables could not be checked against the database now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// Pause, resume or delete of a feed.
#[derive(Debug, Serialize)]
pub struct FeedChanged {
    pub name: String,
    pub paused: bool,
    pub deleted: bool,
}

/// `POST /api/feeds/{name}/resnapshot`.
#[derive(Debug, Serialize)]
pub struct FeedResnapshot {
    pub name: String,
    pub paused: bool,
    pub resnapshot: bool,
}

/// An upper node's grant of a dataset this node receives.
#[derive(Debug, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum UpperGrantView {
    Active {
        onward: Onward,
        policy_version: u64,
        fields: BTreeMap<String, String>,
    },
    Ended {
        reason: String,
    },
    Unknown,
}

impl From<Option<crate::upper::UpperGrant>> for UpperGrantView {
    fn from(g: Option<crate::upper::UpperGrant>) -> Self {
        match g {
            Some(crate::upper::UpperGrant::Active {
                onward,
                policy_version,
                fields,
            }) => Self::Active {
                onward,
                policy_version,
                fields,
            },
            Some(crate::upper::UpperGrant::Ended { reason }) => Self::Ended { reason },
            _ => Self::Unknown,
        }
    }
}

/// How a dataset received from an upper node arrives.
#[derive(Debug, Serialize)]
pub struct Received {
    /// The cascading subscription it comes through.
    pub subscription: String,
    pub upper_grant: UpperGrantView,
}

/// One entry of `GET /api/datasets`.
#[derive(Debug, Serialize)]
pub struct DatasetEntry<'a> {
    #[serde(flatten)]
    pub dataset: &'a crate::state::catalog::Dataset,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub received: Option<Received>,
    /// How many nodes hold an active subscription to it here: for its
    /// owner and admins only (which nodes, `GET /api/subscriptions`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscribers: Option<usize>,
}

/// `GET /api/datasets/{id}/holders`.
#[derive(Debug, Serialize)]
pub struct Holders {
    pub dataset: String,
    pub node: String,
    pub holders: Vec<crate::holders::Holder>,
}

/// `GET /api/quality`.
#[derive(Debug, Serialize)]
pub struct QualityReport {
    pub window_secs: u64,
    pub feeds: Vec<crate::standards::Quality>,
}

/// One field of a standard in `GET /api/standards`.
#[derive(Debug, Serialize)]
pub struct StandardField {
    pub name: String,
    pub doc: String,
    #[serde(rename = "type")]
    pub sql_type: String,
    pub required: bool,
    pub sensitivity: &'static str,
    pub rules: Vec<String>,
}

/// One standard in `GET /api/standards`.
#[derive(Debug, Serialize)]
pub struct StandardView {
    pub name: String,
    pub doc: String,
    pub key: Vec<String>,
    pub region_field: Option<String>,
    pub subject: String,
    pub fields: Vec<StandardField>,
}

/// `GET /api/audit`.
#[derive(Debug, Serialize)]
pub struct AuditPage {
    pub public_key: String,
    pub records: Vec<crate::state::audit::AuditEntry>,
}

/// `POST /api/audit/verify`.
#[derive(Debug, Serialize)]
pub struct AuditVerdict {
    pub intact: bool,
    pub public_key: String,
    pub report: crate::state::audit::VerifyReport,
}

/// `GET /api/lag/history`.
#[derive(Debug, Serialize)]
pub struct LagHistory {
    pub samples: Vec<serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(v: &serde_json::Value) -> Vec<&str> {
        let mut k: Vec<&str> = v
            .as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect();
        k.sort_unstable();
        k
    }

    fn subscription(state: SubscriptionState) -> Subscription {
        Subscription {
            id: "330106:gongan.people".into(),
            subscriber: "330106".into(),
            dataset: "gongan.people".into(),
            purpose: "resident services".into(),
            requested: vec!["id".into()],
            granted: BTreeMap::from([("id".into(), "plain".into())]),
            valid_until_ms: None,
            state,
            policy_version: 1,
            secret: "00112233".into(),
            updated_ms: 1,
            backfilled: false,
            request_version: 1,
            onward: Onward::default(),
        }
    }

    #[test]
    fn a_subscription_view_names_every_field_it_shows_and_never_the_key() {
        let v = serde_json::to_value(SubscriptionView::from(&subscription(
            SubscriptionState::Revoked {
                reason: "purpose fulfilled".into(),
            },
        )))
        .unwrap();
        assert_eq!(
            keys(&v),
            [
                "backfilled",
                "dataset",
                "granted",
                "id",
                "onward",
                "policy_version",
                "purpose",
                "reason",
                "request_version",
                "requested",
                "state",
                "subscriber",
                "updated_ms",
                "valid_until_ms"
            ]
        );
        assert_eq!(v["state"], "revoked");
        assert!(!v.to_string().contains("00112233"), "{v}");
        let pending = serde_json::to_value(SubscriptionView::from(&subscription(
            SubscriptionState::Pending,
        )))
        .unwrap();
        assert_eq!(pending["state"], "pending");
        assert!(pending.get("reason").is_none());
    }

    #[test]
    fn whoami_names_the_principal_and_its_department_or_node_only() {
        use crate::auth::Principal;
        let v = |p: Principal| serde_json::to_value(WhoAmI::from(&p)).unwrap();
        assert_eq!(
            v(Principal::Owner("gongan".into())),
            serde_json::json!({"principal": "owner:gongan", "role": "owner", "department": "gongan"})
        );
        assert_eq!(
            v(Principal::Subscriber("330106".into())),
            serde_json::json!({"principal": "subscriber:330106", "role": "subscriber", "node": "330106"})
        );
        assert_eq!(
            v(Principal::Admin),
            serde_json::json!({"principal": "admin", "role": "admin"})
        );
        assert_eq!(
            v(Principal::Auditor),
            serde_json::json!({"principal": "auditor", "role": "auditor"})
        );
    }

    #[test]
    fn a_grant_and_an_upper_grant_keep_their_wire_names() {
        let v = serde_json::to_value(GrantView {
            id: "330106:gongan.people".into(),
            state: SubscriptionState::Active,
            source: GrantSource::Configuration,
            policy_version: 2,
            fields: BTreeMap::new(),
            onward: Onward::default(),
            node: "330100".into(),
        })
        .unwrap();
        assert_eq!(
            keys(&v),
            [
                "fields",
                "id",
                "node",
                "onward",
                "policy_version",
                "source",
                "state"
            ]
        );
        assert_eq!(v["source"], "configuration");
        assert_eq!(v["state"], "active");
        let ended = serde_json::to_value(UpperGrantView::from(Some(
            crate::upper::UpperGrant::Ended {
                reason: "revoked".into(),
            },
        )))
        .unwrap();
        assert_eq!(
            ended,
            serde_json::json!({"state": "ended", "reason": "revoked"})
        );
        assert_eq!(
            serde_json::to_value(UpperGrantView::from(None)).unwrap(),
            serde_json::json!({"state": "unknown"})
        );
    }

    #[test]
    fn a_scram_password_is_shown_in_the_body_but_never_in_debug_output() {
        let c = ScramCredential {
            kafka_username: "backflow-330106".into(),
            kafka_password: "s3cret-password".into(),
            kafka_mechanism: "SCRAM-SHA-512",
        };
        assert!(!format!("{c:?}").contains("s3cret"));
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["kafka_password"], "s3cret-password");
        assert_eq!(v["kafka_mechanism"], "SCRAM-SHA-512");
    }
}
