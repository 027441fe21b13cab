//! The rights of child nodes on this node's Kafka cluster, kept equal to
//! what they are granted (`kafka.manage_acls = true`).
//!
//! A child node registered with a Kafka principal (`PUT /api/nodes/{code}`
//! with `"kafka": "scram"` or `"kafka": "User:<mTLS principal>"`) holds, on
//! this cluster, exactly:
//! - READ on each share topic of its active shares (catalog and
//!   `[[shares]]`), LITERAL, and, while it has one, READ on the consumer
//!   groups under `<prefix>share.<code>.` (PREFIXED: its subscribers'
//!   groups, named after its share topics, hold positions only);
//! - while it has a share, WRITE and DESCRIBE on the topics under
//!   `<prefix>sdlq.<code>.` (PREFIXED), its own dead-letter topics. It may
//!   not create them: the node does, one per subscription name the child
//!   node reports (`POST /api/lag/status`, at most 64 names per node), with
//!   one partition and the cluster's default retention, so a child node
//!   cannot fill the cluster with topics of its own making.
//!
//! Nothing else: every second the reconciler reads each managed principal's
//! ACLs from the brokers, creates the missing ones and deletes the others
//! (a revoked, expired or rejected subscription, a dataset no longer
//! shared, or an ACL added by hand), each change on the audit trail. DENY
//! rules are left alone: they only take rights away. A deleted node loses
//! every ACL.
//!
//! Prerequisites: a real cluster with an authorizer
//! (`allow.everyone.if.no.acl.found=false`), the node's principal a super
//! user there (or allowed ALTER on the cluster, to manage ACLs and SCRAM
//! credentials). Metrics: `backflow_kafka_acl_changes_total{change}`,
//! `backflow_kafka_acl_errors_total`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::RwLock;
use tokio_util::sync::CancellationToken;

use crate::domain::topics;
use crate::kafka::acl::{Acl, AclAdmin, Foreign, Held, Operation, Pattern, Resource};
use crate::state::audit::Auditor;
use crate::state::catalog::{Catalog, CatalogState};

/// How often the ACLs on the cluster are compared with the grants.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// The SCRAM user name of a child node's principal.
pub fn scram_user(code: &str) -> String {
    format!("{}node.{code}", topics::prefix())
}

/// The ACLs a child node with `principal` holds for the shares in force.
pub fn wanted(code: &str, principal: &str, served: &crate::lag::Served) -> Vec<Acl> {
    let acl = |resource, name: String, pattern, operation| Acl {
        principal: principal.to_owned(),
        resource,
        name,
        pattern,
        operation,
    };
    let mut out = BTreeSet::new();
    for (subscriber, dataset) in served {
        if subscriber != code {
            continue;
        }
        out.insert(acl(
            Resource::Topic,
            topics::share(code, dataset),
            Pattern::Literal,
            Operation::Read,
        ));
        // Its consumer groups (named after its share topics): a group
        // holds positions only, never data.
        out.insert(acl(
            Resource::Group,
            topics::share(code, ""),
            Pattern::Prefixed,
            Operation::Read,
        ));
    }
    if !out.is_empty() {
        let dead_letters = format!("{}sdlq.{code}.", topics::prefix());
        for op in [Operation::Write, Operation::Describe] {
            out.insert(acl(
                Resource::Topic,
                dead_letters.clone(),
                Pattern::Prefixed,
                op,
            ));
        }
    }
    out.into_iter().collect()
}

/// A child node's ACLs on the cluster as the reconciler's last round left
/// them: read from the brokers at the round's start, with the round's
/// deletions and creations applied as far as the brokers confirmed them.
#[derive(Debug, Clone, Default)]
pub struct InForce {
    pub acls: Vec<Acl>,
    /// Why the last round did not finish (the ACLs are then those known
    /// before the step that failed).
    pub error: Option<String>,
}

/// The ACLs in force per child node, for `GET /api/subscriptions/{id}`.
#[derive(Clone, Default)]
pub struct AclsInForce(Arc<RwLock<BTreeMap<String, InForce>>>);

impl AclsInForce {
    /// A child node's ACLs in force.
    pub async fn of(&self, code: &str) -> Option<InForce> {
        self.0.read().await.get(code).cloned()
    }
}

/// What the reconciler works with.
pub struct Reconciler {
    pub admin: Arc<AclAdmin>,
    pub catalog: Catalog,
    pub auditor: Auditor,
    pub config_shares: Vec<crate::distributor::share::ShareConfig>,
    pub in_force: AclsInForce,
    pub metrics: crate::metrics::Metrics,
}

/// Whether an ACL on a resource named `name` (a prefix when `prefixed`)
/// can reach a name under `prefix`: only those are this node's to manage
/// (another namespace's on a shared cluster are left alone).
fn reaches(name: &str, prefixed: bool, prefix: &str) -> bool {
    if prefixed {
        name.starts_with(prefix) || prefix.starts_with(name)
    } else {
        name == "*" || name.starts_with(prefix)
    }
}

/// The shares in force for the ACLs: those of the configuration, and the
/// catalog's active subscriptions not past their validity (an expired one
/// loses its ACL even before the expiry job marks it).
fn in_force_now(
    config_shares: &[crate::distributor::share::ShareConfig],
    st: &CatalogState,
) -> crate::lag::Served {
    let now = backflow_connectors::now_ms();
    let mut out: crate::lag::Served = config_shares
        .iter()
        .map(|s| (s.subscriber.to_string(), s.dataset.clone()))
        .collect();
    out.extend(
        st.subscriptions
            .values()
            .filter(|s| s.state == crate::state::catalog::SubscriptionState::Active)
            .filter(|s| s.valid_until_ms.is_none_or(|t| t > now))
            .map(|s| (s.subscriber.clone(), s.dataset.clone())),
    );
    out.sort();
    out.dedup();
    out
}

/// What of `held` is not `wanted` and reaches this node's names: ACLs of
/// the kinds the node writes, and ALLOW rules of any other kind (DENY
/// rules only take rights away, and stay).
fn unwanted(held: &Held, wanted: &[Acl]) -> (Vec<Acl>, Vec<Foreign>) {
    let prefix = topics::prefix();
    let acls = held
        .acls
        .iter()
        .filter(|a| !wanted.contains(a))
        .filter(|a| reaches(&a.name, a.pattern == Pattern::Prefixed, prefix))
        .cloned()
        .collect();
    let foreign = held
        .foreign
        .iter()
        .filter(|f| !f.is_deny() && !f.outside(prefix))
        .cloned()
        .collect();
    (acls, foreign)
}

/// Takes every right of `principal` that reaches this node's names away
/// (DENY rules stay): for a principal a child node no longer has. What
/// was removed, for the audit trail.
pub fn strip(admin: &AclAdmin, principal: &str) -> Result<Vec<String>, crate::kafka::KafkaError> {
    let (acls, foreign) = unwanted(&admin.held_by(principal)?, &[]);
    admin.delete(&acls)?;
    admin.delete_foreign(&foreign)?;
    Ok(acls
        .iter()
        .map(Acl::to_string)
        .chain(foreign.iter().map(|f| f.to_string()))
        .collect())
}

impl Reconciler {
    /// Keeps the cluster's ACLs equal to the grants until shut down, from
    /// when the catalog has been read to its end (before, a node's
    /// subscriptions may not all be known yet).
    pub async fn run(self, shutdown: CancellationToken) {
        self.catalog
            .every(INTERVAL, &shutdown, || self.round())
            .await;
    }

    /// One round: every managed principal's ACLs made equal to its grants.
    async fn round(&self) {
        let st = self.catalog.state().await.clone();
        let served = in_force_now(&self.config_shares, &st);
        let before = self.in_force.0.read().await.clone();
        let mut seen = BTreeMap::new();
        // Each node on its own: one that fails does not hold up the
        // others, and is tried again next round.
        for node in st.nodes.values() {
            let Some(principal) = node.kafka_principal.clone() else {
                continue;
            };
            let wanted = if node.deleted {
                Vec::new()
            } else {
                wanted(&node.code, &principal, &served)
            };
            let mut held = None;
            let error = match self
                .reconcile(&node.code, &principal, &wanted, &mut held)
                .await
            {
                Ok(()) => None,
                Err(e) => {
                    self.metrics.kafka_acl_errors.inc();
                    tracing::warn!(node = %node.code, error = %e, "reconciling a child node's Kafka ACLs failed; retrying");
                    Some(e.to_string())
                }
            };
            if !node.deleted {
                // Not even read: what the round before knew.
                let acls = held.unwrap_or_else(|| {
                    before
                        .get(&node.code)
                        .map(|f| f.acls.clone())
                        .unwrap_or_default()
                });
                seen.insert(node.code.clone(), InForce { acls, error });
            }
        }
        *self.in_force.0.write().await = seen;
    }

    /// Makes one principal's ACLs equal to `wanted`: what it should not
    /// hold goes first, then what it lacks is created. `in_force` is set to
    /// its ACLs as far as the brokers confirmed each step.
    async fn reconcile(
        &self,
        code: &str,
        principal: &str,
        wanted: &[Acl],
        in_force: &mut Option<Vec<Acl>>,
    ) -> Result<(), crate::kafka::KafkaError> {
        let admin = self.admin.clone();
        let p = principal.to_owned();
        let held = tokio::task::spawn_blocking(move || admin.held_by(&p))
            .await
            .expect("the ACL call does not panic")?;
        *in_force = Some(held.acls.clone());
        let (extra, foreign) = unwanted(&held, wanted);
        if !extra.is_empty() || !foreign.is_empty() {
            let admin = self.admin.clone();
            let (acls, other) = (extra.clone(), foreign.clone());
            tokio::task::spawn_blocking(move || {
                admin.delete(&acls)?;
                admin.delete_foreign(&other)
            })
            .await
            .expect("the ACL call does not panic")?;
            if let Some(acls) = in_force.as_mut() {
                acls.retain(|a| !extra.contains(a));
            }
            let removed: Vec<String> = extra
                .iter()
                .map(Acl::to_string)
                .chain(foreign.iter().map(|f| f.to_string()))
                .collect();
            self.audit(
                code,
                "kafka acls removed",
                &removed,
                "no active share grants them (ended, narrowed, or added by hand)",
            )
            .await;
        }
        let missing: Vec<Acl> = wanted
            .iter()
            .filter(|a| !held.acls.contains(a))
            .cloned()
            .collect();
        if !missing.is_empty() {
            let admin = self.admin.clone();
            let acls = missing.clone();
            tokio::task::spawn_blocking(move || admin.create(&acls))
                .await
                .expect("the ACL call does not panic")?;
            if let Some(acls) = in_force.as_mut() {
                acls.extend(missing.iter().cloned());
                acls.sort();
            }
            let granted: Vec<String> = missing.iter().map(Acl::to_string).collect();
            self.audit(
                code,
                "kafka acls granted",
                &granted,
                "an active share grants them",
            )
            .await;
        }
        Ok(())
    }

    async fn audit(&self, node: &str, action: &str, acls: &[String], reason: &str) {
        let change = if action.ends_with("granted") {
            "granted"
        } else {
            "removed"
        };
        self.metrics
            .kafka_acl_changes
            .with_label_values(&[change])
            .inc_by(acls.len() as u64);
        tracing::info!(
            node,
            change,
            count = acls.len(),
            "child node's Kafka ACLs changed"
        );
        let details = json!({
            "action": action,
            "node": node,
            "acls": acls,
            "reason": reason,
            "by": "system",
        });
        if let Err(e) = self.auditor.append("decision", details).await {
            tracing::warn!(error = %e, "the ACL change could not be written to the audit trail");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(acls: &[Acl]) -> Vec<String> {
        acls.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn a_child_node_is_granted_its_own_share_topics_and_nothing_of_another() {
        let served: crate::lag::Served = vec![
            ("330106".to_owned(), "ga.people".to_owned()),
            ("330106".to_owned(), "mz.items".to_owned()),
            ("330108".to_owned(), "ga.people".to_owned()),
        ];
        let acls = wanted("330106", "User:x", &served);
        assert_eq!(
            names(&acls),
            [
                "User:x Write Topic backflow.sdlq.330106. (Prefixed)",
                "User:x Describe Topic backflow.sdlq.330106. (Prefixed)",
                "User:x Read Topic backflow.share.330106.ga.people (Literal)",
                "User:x Read Topic backflow.share.330106.mz.items (Literal)",
                "User:x Read Group backflow.share.330106. (Prefixed)",
            ]
        );
        assert!(
            wanted("330107", "User:y", &served).is_empty(),
            "a node without a share holds nothing"
        );
    }
}
