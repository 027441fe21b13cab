//! Topic administration: create the topics backflow writes, compacted where
//! DESIGN.md says so, and leave existing ones alone.

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;

use super::embedded::EmbeddedAdmin;
use super::{KafkaError, KafkaSettings};

/// A topic to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    /// Topic name.
    pub name: String,
    /// Number of partitions.
    pub partitions: i32,
    /// Replication factor.
    pub replication_factor: i32,
    /// `cleanup.policy=compact`: the latest record per key is kept, so the
    /// topic holds a table's current state.
    pub compacted: bool,
    /// `retention.ms` when set (-1: records are kept forever); otherwise
    /// the cluster's default.
    pub retention_ms: Option<i64>,
}

impl TopicSpec {
    /// `min.insync.replicas` of the topic: a majority of its replicas when
    /// there are three or more (3 → 2, 5 → 3), so with `acks=all` an
    /// acknowledged record is on a majority and survives losing any
    /// minority of brokers; with one or two replicas the cluster's default.
    pub fn min_insync_replicas(&self) -> Option<i32> {
        (self.replication_factor >= 3).then_some(self.replication_factor / 2 + 1)
    }

    /// A compacted topic (raw, share, and internal state topics).
    pub fn compacted(name: impl Into<String>, partitions: i32, replication_factor: i32) -> Self {
        Self {
            name: name.into(),
            partitions,
            replication_factor,
            compacted: true,
            retention_ms: None,
        }
    }

    /// A topic with time-based retention (dead letters, audit).
    pub fn retained(name: impl Into<String>, partitions: i32, replication_factor: i32) -> Self {
        Self {
            compacted: false,
            ..Self::compacted(name, partitions, replication_factor)
        }
    }

    /// A topic whose records are never deleted (`cleanup.policy=delete`,
    /// `retention.ms=-1`): the audit trail, whose records are keyed by
    /// node, so compaction would keep one per node.
    pub fn kept(name: impl Into<String>, partitions: i32, replication_factor: i32) -> Self {
        Self {
            retention_ms: Some(-1),
            ..Self::retained(name, partitions, replication_factor)
        }
    }
}

/// Creates topics through the Kafka admin API, or directly on the embedded
/// broker (which has no admin API and ignores topic configs).
pub enum TopicAdmin {
    /// A real cluster.
    Kafka {
        client: AdminClient<DefaultClientContext>,
        options: AdminOptions,
        settings: Box<KafkaSettings>,
    },
    /// The embedded in-memory broker.
    Embedded(EmbeddedAdmin),
}

impl TopicAdmin {
    /// Connects an admin client to a real cluster.
    pub fn new(settings: &KafkaSettings) -> Result<Self, KafkaError> {
        let client = settings.create("admin", |_| {})?;
        let options = AdminOptions::new()
            .request_timeout(Some(settings.request_timeout))
            .operation_timeout(Some(settings.request_timeout));
        Ok(Self::Kafka {
            client,
            options,
            settings: Box::new(settings.clone()),
        })
    }

    /// Creates each topic that does not exist yet. Returns the names of the
    /// topics it created.
    ///
    /// Topics the cluster's metadata already lists are not asked for: any
    /// live broker answers metadata, while a creation goes to the
    /// controller the client last knew of, which may be the broker that
    /// just died (the request then times out until the client's metadata
    /// refreshes, minutes later). It also lets a node run without the
    /// right to create topics once they exist.
    pub async fn ensure(&self, specs: &[TopicSpec]) -> Result<Vec<String>, KafkaError> {
        if specs.is_empty() {
            return Ok(Vec::new());
        }
        let (client, options) = match self {
            TopicAdmin::Kafka {
                client,
                options,
                settings,
            } => {
                let existing: std::collections::HashSet<String> =
                    super::topic_names(settings).await?.into_iter().collect();
                if specs.iter().all(|s| existing.contains(&s.name)) {
                    return Ok(Vec::new());
                }
                (client, options)
            }
            TopicAdmin::Embedded(admin) => {
                let mut created = Vec::new();
                for s in specs {
                    if admin.create_topic(&s.name, s.partitions)? {
                        created.push(s.name.clone());
                    }
                }
                return Ok(created);
            }
        };
        let retention: Vec<Option<String>> = specs
            .iter()
            .map(|s| s.retention_ms.map(|ms| ms.to_string()))
            .collect();
        let min_insync: Vec<Option<String>> = specs
            .iter()
            .map(|s| s.min_insync_replicas().map(|n| n.to_string()))
            .collect();
        let new: Vec<NewTopic<'_>> = specs
            .iter()
            .zip(retention.iter().zip(&min_insync))
            .map(|(s, (retention, min_insync))| {
                let t = NewTopic::new(
                    &s.name,
                    s.partitions,
                    TopicReplication::Fixed(s.replication_factor),
                );
                let t = if s.compacted {
                    t.set("cleanup.policy", "compact")
                } else {
                    t.set("cleanup.policy", "delete")
                };
                let t = match min_insync {
                    Some(n) => t.set("min.insync.replicas", n),
                    None => t,
                };
                match retention {
                    Some(ms) => t.set("retention.ms", ms),
                    None => t,
                }
            })
            .collect();
        let results = client
            .create_topics(new.iter(), options)
            .await
            .map_err(|e| KafkaError::Admin {
                topic: specs
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
                reason: e.to_string(),
            })?;
        let mut created = Vec::new();
        for result in results {
            match result {
                Ok(name) => created.push(name),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(KafkaError::Admin {
                        topic: name,
                        reason: code.to_string(),
                    })
                }
            }
        }
        Ok(created)
    }
}

impl TopicAdmin {
    /// The topics whose names start with `prefix` (none on the embedded
    /// broker).
    pub async fn names_with_prefix(&self, prefix: &str) -> Result<Vec<String>, KafkaError> {
        let TopicAdmin::Kafka { settings, .. } = self else {
            return Ok(Vec::new());
        };
        Ok(super::topic_names(settings)
            .await?
            .into_iter()
            .filter(|n| n.starts_with(prefix))
            .collect())
    }

    /// Deletes each of `names` that exists. Returns the names it deleted.
    /// The embedded broker (the demo's, in memory) deletes nothing.
    pub async fn delete(&self, names: &[String]) -> Result<Vec<String>, KafkaError> {
        let TopicAdmin::Kafka {
            client,
            options,
            settings,
        } = self
        else {
            return Ok(Vec::new());
        };
        let existing: std::collections::HashSet<String> =
            super::topic_names(settings).await?.into_iter().collect();
        let doomed: Vec<&str> = names
            .iter()
            .filter(|n| existing.contains(*n))
            .map(String::as_str)
            .collect();
        if doomed.is_empty() {
            return Ok(Vec::new());
        }
        let results =
            client
                .delete_topics(&doomed, options)
                .await
                .map_err(|e| KafkaError::Admin {
                    topic: doomed.join(","),
                    reason: e.to_string(),
                })?;
        let mut deleted = Vec::new();
        for result in results {
            match result {
                Ok(name) => deleted.push(name),
                Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
                Err((name, code)) => {
                    return Err(KafkaError::Admin {
                        topic: name,
                        reason: code.to_string(),
                    })
                }
            }
        }
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_or_more_replicas_want_a_majority_in_sync() {
        let isr = |rf| TopicSpec::compacted("t", 1, rf).min_insync_replicas();
        assert_eq!(isr(1), None);
        assert_eq!(isr(2), None);
        assert_eq!(isr(3), Some(2));
        assert_eq!(isr(5), Some(3));
    }
}
