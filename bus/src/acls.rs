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
//! - while it has a share, WRITE, CREATE and DESCRIBE on the topics under
//!   `<prefix>sdlq.<code>.` (PREFIXED), its own dead-letter topics.
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
use crate::kafka::acl::{Acl, AclAdmin, Operation, Pattern, Resource};
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
        for op in [Operation::Write, Operation::Create, Operation::Describe] {
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

/// The ACLs in force per child node, as the reconciler last saw them on
/// the cluster (for `GET /api/subscriptions/{id}`).
#[derive(Clone, Default)]
pub struct AclsInForce(Arc<RwLock<BTreeMap<String, Vec<Acl>>>>);

impl AclsInForce {
    /// A child node's ACLs in force.
    pub async fn of(&self, code: &str) -> Option<Vec<Acl>> {
        self.0.read().await.get(code).cloned()
    }
}

/// What the reconciler works with.
pub struct Reconciler {
    pub admin: Arc<AclAdmin>,
    pub catalog: Catalog,
    pub auditor: Auditor,
    pub config_shares: Vec<crate::config::ShareConfig>,
    pub in_force: AclsInForce,
    pub metrics: crate::metrics::Metrics,
}

impl Reconciler {
    /// Keeps the cluster's ACLs equal to the grants until shut down.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let st = self.catalog.state().await.clone();
            if let Err(e) = self.round(&st).await {
                self.metrics.kafka_acl_errors.inc();
                tracing::warn!(error = %e, "reconciling the child nodes' Kafka ACLs failed; retrying");
            }
        }
    }

    /// One comparison of every managed principal's ACLs with its grants.
    async fn round(&self, st: &CatalogState) -> Result<(), crate::kafka::KafkaError> {
        let served = crate::lag::served_now(&self.config_shares, st);
        let mut seen = BTreeMap::new();
        for node in st.nodes.values() {
            let Some(principal) = node.kafka_principal.clone() else {
                continue;
            };
            let wanted = if node.deleted {
                Vec::new()
            } else {
                wanted(&node.code, &principal, &served)
            };
            let admin = self.admin.clone();
            let p = principal.clone();
            let held = tokio::task::spawn_blocking(move || admin.held_by(&p))
                .await
                .expect("the ACL call does not panic")?;
            let missing: Vec<Acl> = wanted
                .iter()
                .filter(|a| !held.acls.contains(a))
                .cloned()
                .collect();
            let extra: Vec<Acl> = held
                .acls
                .iter()
                .filter(|a| !wanted.contains(a))
                .cloned()
                .collect();
            if !missing.is_empty() {
                let admin = self.admin.clone();
                let acls = missing.clone();
                tokio::task::spawn_blocking(move || admin.create(&acls))
                    .await
                    .expect("the ACL call does not panic")?;
                self.audit(
                    &node.code,
                    "kafka acls granted",
                    &missing,
                    "an active share grants them",
                )
                .await;
            }
            if !extra.is_empty() {
                let admin = self.admin.clone();
                let acls = extra.clone();
                tokio::task::spawn_blocking(move || admin.delete(&acls))
                    .await
                    .expect("the ACL call does not panic")?;
                self.audit(
                    &node.code,
                    "kafka acls removed",
                    &extra,
                    "no active share grants them (ended, narrowed, or added by hand)",
                )
                .await;
            }
            if !node.deleted {
                seen.insert(node.code.clone(), wanted);
            }
        }
        *self.in_force.0.write().await = seen;
        Ok(())
    }

    async fn audit(&self, node: &str, action: &str, acls: &[Acl], reason: &str) {
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
                "User:x Create Topic backflow.sdlq.330106. (Prefixed)",
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
