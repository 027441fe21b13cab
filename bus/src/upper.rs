//! The upper grants of the datasets this node receives from an upper node.
//!
//! A city shares on what its province shares with it only within the
//! province's grant: the grant must be active and allow onward sharing
//! (`onward = "within_jurisdiction"`, the upper owner's choice). For every
//! dataset of a cascading subscription, [`follow`] asks the upper node what
//! it grants this node (`GET /api/grants/<this node>:<dataset>` at the
//! subscription's `upstream.registry_url`, with its registry token) every
//! [`POLL`]. The distributor and the API consult [`UpperGrants`]:
//!
//! - until the first answer, nothing of the dataset is shared on (fail
//!   closed);
//! - while the grant is active and allows it, this node's own grants of the
//!   dataset apply;
//! - once the upper node says the grant ended (revoked, expired, failed,
//!   gone) or does not allow onward sharing, nothing more of it is shared
//!   on, and this node's subscriptions to it are revoked with the reason
//!   "upstream grant ended" (see `distributor::supervise`);
//! - an upper node that cannot be reached leaves the last answer in force
//!   (a network fault does not revoke the districts), and is logged.
//!
//! Narrowing needs nothing here: fields the upper node withdraws vanish from
//! the share schema it sends, and so from what this node can share on.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::domain::policy::Onward;
use crate::subscribe::config::SinkConfig;
use crate::subscribe::config::SubscriptionConfig;

/// How often the upper grants are asked for.
pub const POLL: Duration = Duration::from_secs(2);

/// What the upper node grants this node for one dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpperGrant {
    /// Not known yet: nothing is shared on.
    Unknown,
    /// In force.
    Active {
        /// Whether it may be shared on.
        onward: Onward,
        /// The upper policy version.
        policy_version: u64,
        /// The granted fields and their rules at the upper node.
        fields: BTreeMap<String, String>,
    },
    /// Ended, with the upper node's reason.
    Ended {
        /// Why.
        reason: String,
    },
}

/// The upper grants of the datasets received from an upper node, by local
/// dataset id. Cheap to clone.
#[derive(Clone, Default)]
pub struct UpperGrants {
    inner: Arc<RwLock<BTreeMap<String, (String, UpperGrant)>>>,
    changed: Arc<watch::Sender<u64>>,
}

impl UpperGrants {
    /// Every dataset of `cascaded` (dataset → subscription), not known yet.
    pub fn new(cascaded: &BTreeMap<String, String>) -> Self {
        Self {
            inner: Arc::new(RwLock::new(
                cascaded
                    .iter()
                    .map(|(d, via)| (d.clone(), (via.clone(), UpperGrant::Unknown)))
                    .collect(),
            )),
            changed: Arc::new(watch::channel(0).0),
        }
    }

    /// The upper grant of a dataset; `None` for a dataset of this node's
    /// own departments.
    pub fn get(&self, dataset: &str) -> Option<UpperGrant> {
        self.inner
            .read()
            .expect("upper grants lock")
            .get(dataset)
            .map(|(_, g)| g.clone())
    }

    /// Why a dataset may not be shared on now; `None` when it may (or is
    /// not received from an upper node).
    pub fn onward_refusal(&self, dataset: &str) -> Option<String> {
        let inner = self.inner.read().expect("upper grants lock");
        let (via, grant) = inner.get(dataset)?;
        match grant {
            UpperGrant::Active {
                onward: Onward::WithinJurisdiction,
                ..
            } => None,
            UpperGrant::Active {
                onward: Onward::None,
                ..
            } => Some(format!(
                "dataset {dataset} is received from the upper node (subscription {via}), whose grant does not allow sharing it on (onward = \"none\")"
            )),
            UpperGrant::Unknown => Some(format!(
                "dataset {dataset} is received from the upper node (subscription {via}), whose grant is not known yet"
            )),
            UpperGrant::Ended { reason } => Some(format!(
                "upstream grant ended: the upper node's grant of {dataset} (subscription {via}) ended: {reason}"
            )),
        }
    }

    /// Every dataset received from an upper node with its grant.
    pub fn all(&self) -> Vec<(String, UpperGrant)> {
        self.inner
            .read()
            .expect("upper grants lock")
            .iter()
            .map(|(d, (_, g))| (d.clone(), g.clone()))
            .collect()
    }

    /// Changes whenever a grant changed.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Records an answer; tells the followers when it changed something.
    fn set(&self, dataset: &str, grant: UpperGrant) {
        let changed = {
            let mut inner = self.inner.write().expect("upper grants lock");
            match inner.get_mut(dataset) {
                Some((_, g)) if *g != grant => {
                    *g = grant;
                    true
                }
                _ => false,
            }
        };
        if changed {
            self.changed.send_modify(|n| *n += 1);
        }
    }
}

/// What the upper node answered, read from `GET /api/grants/{id}`.
fn parse(status: u16, body: &serde_json::Value) -> Option<UpperGrant> {
    match status {
        200 if body["state"] == "active" => Some(UpperGrant::Active {
            onward: serde_json::from_value(body["onward"].clone()).unwrap_or_default(),
            policy_version: body["policy_version"].as_u64().unwrap_or(0),
            fields: serde_json::from_value(body["fields"].clone()).unwrap_or_default(),
        }),
        200 => Some(UpperGrant::Ended {
            reason: format!(
                "{}{}",
                body["state"].as_str().unwrap_or("not active"),
                body["reason"]
                    .as_str()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            ),
        }),
        404 => Some(UpperGrant::Ended {
            reason: "the upper node grants nothing any more".to_owned(),
        }),
        // Refused (a token revoked or not allowed): no grant this node can
        // show.
        401 | 403 => Some(UpperGrant::Ended {
            reason: body["reason"]
                .as_str()
                .unwrap_or("the upper node refuses to say")
                .to_owned(),
        }),
        _ => None,
    }
}

/// What [`follow`] reports upward: this node's onward grants of a dataset.
pub struct Reporting {
    /// This node's catalog (its subscriptions).
    pub catalog: crate::state::catalog::Catalog,
    /// This node's configured shares.
    pub shares: Vec<crate::distributor::share::ShareConfig>,
    /// What this node's own lower nodes reported.
    pub reports: crate::holders::HolderReports,
}

/// Follows the upper grants of the cascading subscriptions until
/// `shutdown`, and reports to the upper node whom this node shares each
/// dataset on with (see [`crate::holders`]). `node` is this node's code.
pub async fn follow(
    subscriptions: Vec<SubscriptionConfig>,
    node: String,
    grants: UpperGrants,
    reporting: Reporting,
    shutdown: CancellationToken,
) {
    // (local dataset, upstream grant URL, token, client)
    let mut asks: Vec<(String, String, Option<String>, reqwest::Client)> = Vec::new();
    for s in subscriptions
        .iter()
        .filter(|s| matches!(s.sink, SinkConfig::Kafka(_)))
    {
        for t in &s.tables {
            let Some((_, upstream)) =
                crate::domain::topics::share_parts(&s.upstream.topic_prefix, &t.topic)
            else {
                continue;
            };
            let local = t.table.clone().unwrap_or_else(|| upstream.to_owned());
            let url = format!(
                "{}/api/grants/{node}:{upstream}",
                s.upstream.registry_url.trim_end_matches('/')
            );
            let client = match s.upstream.http_client(Duration::from_secs(10)) {
                Ok(c) => c,
                Err(reason) => {
                    tracing::error!(%reason, subscription = %s.name, "cannot follow the upper grant");
                    continue;
                }
            };
            asks.push((local, url, s.upstream.registry_token.clone(), client));
        }
    }
    if asks.is_empty() {
        return;
    }
    let mut unreachable_logged = false;
    loop {
        for (dataset, url, token, client) in &asks {
            let mut req = client.get(url);
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let answer = match req.send().await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let body = resp.json::<serde_json::Value>().await.unwrap_or_default();
                    parse(status, &body)
                }
                Err(e) => {
                    if !unreachable_logged {
                        tracing::warn!(dataset, error = %e, "the upper node cannot be asked for its grant; the last answer stays in force");
                        unreachable_logged = true;
                    }
                    None
                }
            };
            // Whom this node shares the dataset on with, at every level
            // below it, told to the node it came from.
            let holders = {
                let st = reporting.catalog.state().await;
                crate::holders::holders(&node, dataset, &reporting.shares, &st, &reporting.reports)
            };
            let mut report = client
                .post(format!("{url}/holders"))
                .json(&serde_json::json!({ "holders": holders }));
            if let Some(t) = token {
                report = report.bearer_auth(t);
            }
            if let Ok(resp) = report.send().await {
                if !resp.status().is_success() {
                    tracing::debug!(dataset, status = %resp.status(), "the upper node did not take this node's holders");
                }
            }
            if let Some(grant) = answer {
                unreachable_logged = false;
                if let UpperGrant::Ended { reason } = &grant {
                    if grants.get(dataset).as_ref() != Some(&grant) {
                        tracing::warn!(dataset, %reason, "the upper node's grant ended: nothing more of the dataset is shared on");
                    }
                }
                grants.set(dataset, grant);
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(POLL) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_dataset_is_shared_on_only_while_its_upper_grant_allows_it() {
        let grants = UpperGrants::new(&BTreeMap::from([(
            "ga.people".to_owned(),
            "from-province".to_owned(),
        )]));
        assert!(grants.onward_refusal("mz.local").is_none(), "not received");
        assert!(grants
            .onward_refusal("ga.people")
            .unwrap()
            .contains("not known"));
        let mut changes = grants.changes();
        let active = |onward| {
            parse(200, &json!({"state": "active", "onward": onward, "policy_version": 3, "fields": {"id": "plain"}}))
                .unwrap()
        };
        grants.set("ga.people", active("none"));
        assert!(grants
            .onward_refusal("ga.people")
            .unwrap()
            .contains("onward"));
        grants.set("ga.people", active("within_jurisdiction"));
        assert!(grants.onward_refusal("ga.people").is_none());
        assert!(changes.has_changed().unwrap());
        changes.mark_unchanged();
        grants.set("ga.people", active("within_jurisdiction"));
        assert!(
            !changes.has_changed().unwrap(),
            "the same answer changes nothing"
        );
        let revoked = parse(200, &json!({"state": "revoked", "reason": "misuse"})).unwrap();
        grants.set("ga.people", revoked);
        let why = grants.onward_refusal("ga.people").unwrap();
        assert!(
            why.starts_with("upstream grant ended") && why.contains("misuse"),
            "{why}"
        );
        assert!(matches!(
            parse(404, &json!({})),
            Some(UpperGrant::Ended { .. })
        ));
        assert_eq!(
            parse(503, &json!({})),
            None,
            "no answer: the last one stays"
        );
    }
}
