//! The share topics of ended subscriptions, deleted once the owner's grace
//! period is over, so what was shared stops being held on the cluster.
//!
//! Revocation, expiry and a dataset becoming `not_shared` stop the
//! distributor and take the subscriber's Kafka rights within seconds
//! (`acls.rs`); the records already in its share topic stay on the cluster
//! until this sweep deletes the topic, `ended_share_grace_hours` (the
//! dataset's; [`DEFAULT_ENDED_SHARE_GRACE_HOURS`] when unset) after the
//! subscription left force. A subscription re-activated within the grace
//! keeps its topic; one re-activated later gets a new topic and a full
//! backfill, as on first approval.
//!
//! Guarantees:
//! - A topic is deleted only when no share in force maps to it (no active,
//!   unexpired subscription, no `[[shares]]` entry), checked on the state
//!   of the same round, and only after the subscription has been out of
//!   force for the grace and at least [`MIN_OUT_OF_FORCE`] (so a
//!   distributor still finishing a batch for it is not racing the delete).
//! - Only this node's share topics (`<prefix>share.`) of subscriptions of
//!   its catalog are touched; a `Failed` subscription (stopped by an error,
//!   its grant standing) keeps its topic.
//! - Each deletion is on the audit trail (`share topic deleted`), counted by
//!   `backflow_share_topics_deleted_total` and logged (topic names only).
//!
//! A child node's dead-letter topics (`<prefix>sdlq.<code>.`) hold rows as
//! they were shared with it too: they are deleted once none of its
//! subscriptions is in force and every one of them is past its grace.
//!
//! The embedded broker of the demo deletes nothing.

use std::time::Duration;

use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::distributor::share::ShareConfig;
use crate::domain::topics;
use crate::kafka::TopicAdmin;
use crate::state::audit::Auditor;
use crate::state::catalog::{
    Catalog, CatalogState, SubscriptionState, DEFAULT_ENDED_SHARE_GRACE_HOURS,
};

/// How often ended subscriptions are looked at.
pub const INTERVAL: Duration = Duration::from_secs(5);
/// The least time a subscription is out of force before its topic goes,
/// whatever the grace.
pub const MIN_OUT_OF_FORCE: Duration = Duration::from_secs(10);

/// A share topic due for deletion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    pub topic: String,
    pub subscription: String,
    /// When the subscription left force, ms since the epoch.
    pub ended_ms: i64,
    pub grace_hours: u32,
}

/// The share topics of `st`'s subscriptions that are out of force past
/// their grace at `now_ms`, none of them wanted by a share in force.
pub fn due(st: &CatalogState, config_shares: &[ShareConfig], now_ms: i64) -> Vec<Due> {
    let in_force = |subscriber: &str, dataset: &str| {
        config_shares
            .iter()
            .any(|s| s.subscriber.as_str() == subscriber && s.dataset == dataset)
            || st.subscriptions.values().any(|s| {
                s.subscriber == subscriber
                    && s.dataset == dataset
                    && s.state == SubscriptionState::Active
                    && s.valid_until_ms.is_none_or(|t| t > now_ms)
            })
    };
    let floor = MIN_OUT_OF_FORCE.as_millis() as i64;
    let mut out = Vec::new();
    for s in st.subscriptions.values() {
        let ended_ms = match &s.state {
            SubscriptionState::Active => match s.valid_until_ms {
                Some(t) if t <= now_ms => t,
                _ => continue,
            },
            SubscriptionState::Failed { .. } => continue,
            SubscriptionState::Pending
            | SubscriptionState::Rejected { .. }
            | SubscriptionState::Revoked { .. }
            | SubscriptionState::Expired => s.updated_ms,
        };
        if in_force(&s.subscriber, &s.dataset) {
            continue;
        }
        let (grace_ms, grace_hours) = match st.datasets.get(&s.dataset) {
            Some(d) => (
                d.ended_share_grace_ms(),
                d.ended_share_grace_hours
                    .unwrap_or(DEFAULT_ENDED_SHARE_GRACE_HOURS),
            ),
            None => (0, 0),
        };
        if now_ms - ended_ms < grace_ms.max(floor) {
            continue;
        }
        out.push(Due {
            topic: topics::share(&s.subscriber, &s.dataset),
            subscription: s.id.clone(),
            ended_ms,
            grace_hours,
        });
    }
    out
}

/// The child nodes whose dead-letter topics are due: those with a
/// subscription in the catalog, none in force, and every one out of force
/// past its grace (none of their share topics still kept).
pub fn dead_letters_due(
    st: &CatalogState,
    config_shares: &[ShareConfig],
    due: &[Due],
) -> Vec<String> {
    let due_topics: std::collections::BTreeSet<&str> =
        due.iter().map(|d| d.topic.as_str()).collect();
    let mut codes: std::collections::BTreeMap<&str, bool> = std::collections::BTreeMap::new();
    for s in st.subscriptions.values() {
        let gone = due_topics.contains(topics::share(&s.subscriber, &s.dataset).as_str());
        let all = codes.entry(s.subscriber.as_str()).or_insert(true);
        *all &= gone;
    }
    codes
        .into_iter()
        .filter(|(code, all_gone)| {
            *all_gone && !config_shares.iter().any(|c| c.subscriber.as_str() == *code)
        })
        .map(|(code, _)| format!("{}sdlq.{code}.", topics::prefix()))
        .collect()
}

/// What the sweep works with.
pub struct Sweeper {
    pub admin: TopicAdmin,
    pub catalog: Catalog,
    pub auditor: Auditor,
    pub config_shares: Vec<ShareConfig>,
    pub metrics: crate::metrics::Metrics,
}

impl Sweeper {
    /// Deletes due share topics every [`INTERVAL`] until shut down, from
    /// when the catalog has been read to its end.
    pub async fn run(self, shutdown: CancellationToken) {
        self.catalog
            .every(INTERVAL, &shutdown, || self.round())
            .await;
    }

    /// Deletes the share topics due now, and the dead-letter topics of
    /// child nodes left with nothing.
    async fn round(&self) {
        let st = self.catalog.state().await.clone();
        let due = due(&st, &self.config_shares, backflow_connectors::now_ms());
        if due.is_empty() {
            return;
        }
        let dead_letters = dead_letters_due(&st, &self.config_shares, &due);
        // One listing of the cluster's topics a round: the due topics of
        // subscriptions ended long ago are gone already.
        let existing = match self.admin.names_with_prefix(topics::prefix()).await {
            Ok(names) => names,
            Err(e) => {
                tracing::warn!(error = %e, "listing topics to delete those of ended subscriptions failed; retrying");
                return;
            }
        };
        let shares: Vec<&Due> = due.iter().filter(|d| existing.contains(&d.topic)).collect();
        let letters: Vec<String> = existing
            .iter()
            .filter(|t| dead_letters.iter().any(|p| t.starts_with(p.as_str())))
            .cloned()
            .collect();
        if shares.is_empty() && letters.is_empty() {
            return;
        }
        let mut names: Vec<String> = shares.iter().map(|d| d.topic.clone()).collect();
        names.extend(letters.iter().cloned());
        let deleted = match self.admin.delete(&names).await {
            Ok(deleted) => deleted,
            Err(e) => {
                tracing::warn!(error = %e, "deleting the topics of ended subscriptions failed; retrying");
                return;
            }
        };
        for d in shares.into_iter().filter(|d| deleted.contains(&d.topic)) {
            self.deleted(d).await;
        }
        for topic in letters.into_iter().filter(|t| deleted.contains(t)) {
            self.metrics.share_topics_deleted.inc();
            tracing::info!(%topic, "dead-letter topic of a child node with no share left deleted");
            self.audit(json!({
                "action": "dead-letter topic deleted",
                "topic": topic,
                "reason": "the child node has no share in force and its grace periods passed",
                "by": "system",
            }))
            .await;
        }
    }

    async fn deleted(&self, d: &Due) {
        self.metrics.share_topics_deleted.inc();
        tracing::info!(topic = %d.topic, subscription = %d.subscription, grace_hours = d.grace_hours, "share topic of an ended subscription deleted");
        self.audit(json!({
            "action": "share topic deleted",
            "subscription": d.subscription,
            "topic": d.topic,
            "ended_ms": d.ended_ms,
            "grace_hours": d.grace_hours,
            "reason": "the subscription ended and the dataset's grace period passed",
            "by": "system",
        }))
        .await;
    }

    async fn audit(&self, details: serde_json::Value) {
        if let Err(e) = self.auditor.append("decision", details).await {
            tracing::warn!(error = %e, "a topic deletion could not be written to the audit trail");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::catalog::{Dataset, Subscription};

    const HOUR: i64 = 3_600_000;
    const NOW: i64 = 1_000 * HOUR;

    fn state(
        grace: Option<u32>,
        subs: &[(&str, SubscriptionState, i64, Option<i64>)],
    ) -> CatalogState {
        let mut d = serde_json::json!({"id": "ga.people", "sharing": "conditional", "all_rows": true,
            "fields": {"id": {}}});
        if let Some(h) = grace {
            d["ended_share_grace_hours"] = h.into();
        }
        let dataset: Dataset = serde_json::from_value(d).unwrap();
        let mut st = CatalogState::default();
        st.datasets.insert(dataset.id.clone(), dataset);
        for (code, state, updated_ms, valid_until_ms) in subs {
            let id = format!("{code}:ga.people");
            let sub: Subscription = serde_json::from_value(serde_json::json!({
                "id": id, "subscriber": code, "dataset": "ga.people", "purpose": "p",
                "requested": ["id"], "granted": {"id": "plain"}, "valid_until_ms": valid_until_ms,
                "policy_version": 1, "secret": "", "updated_ms": updated_ms, "state": "pending",
            }))
            .map(|mut s: Subscription| {
                s.state = state.clone();
                s
            })
            .unwrap();
            st.subscriptions.insert(id, sub);
        }
        st
    }

    fn topics(due: &[Due]) -> Vec<&str> {
        due.iter().map(|d| d.topic.as_str()).collect()
    }

    fn revoked() -> SubscriptionState {
        SubscriptionState::Revoked { reason: "r".into() }
    }

    #[test]
    fn an_ended_share_topic_is_due_only_after_the_grace() {
        let st = state(None, &[("330106", revoked(), NOW - 23 * HOUR, None)]);
        assert!(due(&st, &[], NOW).is_empty(), "within the default day");
        let st = state(None, &[("330106", revoked(), NOW - 25 * HOUR, None)]);
        assert_eq!(
            topics(&due(&st, &[], NOW)),
            ["backflow.share.330106.ga.people"]
        );
        let st = state(Some(2), &[("330106", revoked(), NOW - HOUR, None)]);
        assert!(due(&st, &[], NOW).is_empty(), "the owner's 2 hours");
        // Grace 0: due at the next sweep, but never within the floor.
        let st = state(Some(0), &[("330106", revoked(), NOW - 1_000, None)]);
        assert!(due(&st, &[], NOW).is_empty(), "not within MIN_OUT_OF_FORCE");
        let st = state(Some(0), &[("330106", revoked(), NOW - 11_000, None)]);
        assert_eq!(due(&st, &[], NOW).len(), 1);
    }

    #[test]
    fn every_way_out_of_force_counts_and_a_grant_in_force_keeps_its_topic() {
        let old = NOW - 48 * HOUR;
        let st = state(
            Some(0),
            &[
                ("330102", SubscriptionState::Expired, old, None),
                (
                    "330103",
                    SubscriptionState::Rejected { reason: "r".into() },
                    old,
                    None,
                ),
                ("330104", SubscriptionState::Pending, old, None),
                // Active, but past its validity since an hour (the expiry
                // job has not marked it yet).
                ("330105", SubscriptionState::Active, old, Some(NOW - HOUR)),
                // In force.
                ("330106", SubscriptionState::Active, old, None),
                ("330107", SubscriptionState::Active, old, Some(NOW + HOUR)),
                // Stopped by an error, its grant standing.
                (
                    "330108",
                    SubscriptionState::Failed { reason: "r".into() },
                    old,
                    None,
                ),
            ],
        );
        let all = due(&st, &[], NOW);
        let mut got = topics(&all);
        got.sort();
        assert_eq!(
            got,
            [
                "backflow.share.330102.ga.people",
                "backflow.share.330103.ga.people",
                "backflow.share.330104.ga.people",
                "backflow.share.330105.ga.people",
            ]
        );
        // A [[shares]] entry for the same topic keeps it.
        let share: ShareConfig = serde_json::from_value(serde_json::json!({
            "subscriber": "330102", "dataset": "ga.people", "all_rows": true,
            "fields": {"id": "plain"}}))
        .unwrap();
        assert!(!topics(&due(&st, &[share], NOW)).contains(&"backflow.share.330102.ga.people"));
        // Expired: the grace counts from the end of validity.
        let st = state(
            None,
            &[("330105", SubscriptionState::Active, old, Some(NOW - HOUR))],
        );
        assert!(due(&st, &[], NOW).is_empty());
    }

    #[test]
    fn a_child_nodes_dead_letters_go_when_all_its_shares_are_gone() {
        let old = NOW - 48 * HOUR;
        let ended = state(Some(0), &[("330106", revoked(), old, None)]);
        assert_eq!(
            dead_letters_due(&ended, &[], &due(&ended, &[], NOW)),
            ["backflow.sdlq.330106."]
        );
        // Another share of the node in force, or one still in its grace,
        // keeps them.
        let mut with_active = ended.clone();
        let mut other = with_active.subscriptions["330106:ga.people"].clone();
        other.id = "330106:ga.cars".into();
        other.dataset = "ga.cars".into();
        other.state = SubscriptionState::Active;
        with_active.subscriptions.insert(other.id.clone(), other);
        assert!(dead_letters_due(&with_active, &[], &due(&with_active, &[], NOW)).is_empty());
        let recent = state(None, &[("330106", revoked(), NOW - HOUR, None)]);
        assert!(dead_letters_due(&recent, &[], &due(&recent, &[], NOW)).is_empty());
        let failed = state(
            Some(0),
            &[(
                "330106",
                SubscriptionState::Failed { reason: "r".into() },
                old,
                None,
            )],
        );
        assert!(dead_letters_due(&failed, &[], &due(&failed, &[], NOW)).is_empty());
    }

    #[test]
    fn the_owner_may_set_a_grace_of_at_most_a_year() {
        let d = |h: u32| {
            serde_json::from_value::<Dataset>(serde_json::json!({"id": "ga.people",
                "sharing": "conditional", "all_rows": true, "fields": {"id": {}},
                "ended_share_grace_hours": h}))
            .unwrap()
            .validate(None)
        };
        assert!(d(8760).is_ok());
        let e = d(8761).unwrap_err();
        assert!(e.starts_with("ended_share_grace_hours"), "{e}");
    }
}
