//! Who holds a dataset, at every level of government.
//!
//! A node knows its own grants of a dataset (the shares of its
//! configuration and the active subscriptions of its catalog). A lower node
//! that shares on what it received tells the node it received it from,
//! every few seconds, whom it shares it with and under which policy,
//! including what its own lower nodes told it ([`crate::upper::follow`]
//! sends it with the same token that reads the upper grant, to
//! `POST /api/grants/<itself>:<dataset>/holders`). So the owner's node
//! answers, for its dataset, every node that holds it at every level
//! (`GET /api/datasets/{id}/holders`).
//!
//! A report is authenticated as the lower node's own (its subscriber
//! token), names only divisions inside that node's jurisdiction, is bounded
//! in size, and is replaced by the next one; a report older than
//! [`STALE_AFTER`] is shown as such. What a lower node reports is its own
//! word: it proves what that node says, not what it does.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::distributor::share::ShareConfig;
use crate::domain::policy::Onward;
use crate::state::catalog::{CatalogState, SubscriptionState};

/// Most holders one report may name.
pub const MAX_HOLDERS: usize = 1000;
/// A report not renewed for this long is marked stale.
pub const STALE_AFTER: Duration = Duration::from_secs(60);

/// A node that holds a dataset, and under which grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Holder {
    /// The node holding it.
    pub node: String,
    /// The node that granted it.
    pub from: String,
    /// The grant's policy version at that node.
    pub policy_version: u32,
    /// The fields granted and their rules.
    pub fields: BTreeMap<String, String>,
    /// Whether it may share them on.
    pub onward: Onward,
    /// Set on holders known only from an old report.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stale: bool,
}

/// A report and when it arrived.
type Report = (Vec<Holder>, std::time::Instant);

/// The reports lower nodes made, by grant (`<subscriber>:<dataset>`).
/// Cheap to clone.
#[derive(Clone, Default)]
pub struct HolderReports {
    inner: Arc<RwLock<BTreeMap<String, Report>>>,
}

impl HolderReports {
    /// Keeps `holders` as what the subscriber of `grant` reported.
    pub fn store(&self, grant: &str, holders: Vec<Holder>) {
        self.inner
            .write()
            .expect("holder reports lock")
            .insert(grant.to_owned(), (holders, std::time::Instant::now()));
    }

    /// What the subscriber of `grant` reported last, marked stale when old.
    pub fn get(&self, grant: &str) -> Vec<Holder> {
        let inner = self.inner.read().expect("holder reports lock");
        let Some((holders, at)) = inner.get(grant) else {
            return Vec::new();
        };
        let stale = at.elapsed() > STALE_AFTER;
        holders
            .iter()
            .cloned()
            .map(|mut h| {
                h.stale |= stale;
                h
            })
            .collect()
    }
}

/// Every node known to hold `dataset` through this node (`node`): this
/// node's own grants, and what each grantee reported of its onward grants.
pub fn holders(
    node: &str,
    dataset: &str,
    config_shares: &[ShareConfig],
    catalog: &CatalogState,
    reports: &HolderReports,
) -> Vec<Holder> {
    let mut own: Vec<Holder> = config_shares
        .iter()
        .filter(|s| s.dataset == dataset)
        .map(|s| Holder {
            node: s.subscriber.to_string(),
            from: node.to_owned(),
            policy_version: s.version,
            fields: s.fields.clone(),
            onward: s.onward,
            stale: false,
        })
        .collect();
    own.extend(
        catalog
            .subscriptions
            .values()
            .filter(|s| s.dataset == dataset && s.state == SubscriptionState::Active)
            .filter(|s| !own.iter().any(|h| h.node == s.subscriber))
            .map(|s| Holder {
                node: s.subscriber.clone(),
                from: node.to_owned(),
                policy_version: s.policy_version,
                fields: s.granted.clone(),
                onward: s.onward,
                stale: false,
            })
            .collect::<Vec<_>>(),
    );
    let mut all = own.clone();
    for h in &own {
        all.extend(reports.get(&format!("{}:{dataset}", h.node)));
    }
    all.truncate(MAX_HOLDERS);
    all
}

/// Checks a report of the subscriber `reporter`: bounded, and naming only
/// divisions inside the reporter's jurisdiction (a node has no right to
/// speak for others). The error names the rule.
pub fn check_report(
    reporter: &crate::domain::division::DivisionCode,
    holders: &[Holder],
) -> Result<(), String> {
    if holders.len() > MAX_HOLDERS {
        return Err(format!(
            "holders: {} named, at most {MAX_HOLDERS}",
            holders.len()
        ));
    }
    for (i, h) in holders.iter().enumerate() {
        let code = crate::domain::division::DivisionCode::parse(&h.node)
            .map_err(|e| format!("holders[{i}].node: {e}"))?;
        reporter
            .may_share_with(&code)
            .map_err(|e| format!("holders[{i}].node: {e}"))?;
        crate::domain::division::DivisionCode::parse(&h.from)
            .map_err(|e| format!("holders[{i}].from: {e}"))?;
        if h.fields.len() > crate::state::catalog::limits::FIELDS {
            return Err(format!("holders[{i}].fields: too many"));
        }
        for (k, v) in &h.fields {
            crate::state::catalog::field_name(&format!("holders[{i}].fields"), k)?;
            crate::state::catalog::bounded(&format!("holders[{i}].fields.{k}"), v, 128)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(node: &str) -> Holder {
        Holder {
            node: node.into(),
            from: "330100".into(),
            policy_version: 1,
            fields: BTreeMap::from([("id".to_owned(), "plain".to_owned())]),
            onward: Onward::None,
            stale: false,
        }
    }

    #[test]
    fn a_node_reports_only_divisions_of_its_own_jurisdiction() {
        let city = crate::domain::division::DivisionCode::parse("330100").unwrap();
        check_report(&city, &[holder("330106"), holder("330108")]).unwrap();
        let e = check_report(&city, &[holder("330106"), holder("330201")]).unwrap_err();
        assert!(e.starts_with("holders[1].node"), "{e}");
        let e = check_report(&city, &vec![holder("330106"); MAX_HOLDERS + 1]).unwrap_err();
        assert!(e.contains("at most"), "{e}");
    }

    #[test]
    fn reports_are_nested_under_the_grant_they_were_made_for() {
        let reports = HolderReports::default();
        reports.store("330100:ga.people", vec![holder("330106")]);
        let catalog = CatalogState::default();
        let share: ShareConfig = serde_json::from_value(serde_json::json!({
            "subscriber": "330100", "dataset": "ga.people", "region_column": "r",
            "fields": {"id": "plain"}, "onward": "within_jurisdiction"
        }))
        .unwrap();
        let all = holders("330000", "ga.people", &[share], &catalog, &reports);
        let nodes: Vec<(&str, &str)> = all
            .iter()
            .map(|h| (h.node.as_str(), h.from.as_str()))
            .collect();
        assert_eq!(nodes, [("330100", "330000"), ("330106", "330100")]);
        assert!(holders("330000", "mz.other", &[], &catalog, &reports).is_empty());
    }
}
