//! Topic names, as DESIGN.md fixes them.
//!
//! raw `backflow.raw.<dataset>`; share `backflow.share.<subscriber-node>.<dataset>`;
//! dead letters `backflow.dlq.<feed>`; internal state `backflow._catalog`,
//! `backflow._audit`, `backflow._offsets`.

/// Catalog of datasets, feeds and subscriptions (compacted).
pub const CATALOG: &str = "backflow._catalog";
/// Hash-chained audit records.
pub const AUDIT: &str = "backflow._audit";
/// Schema registry log (compacted, one partition; see `registry`).
pub const SCHEMAS: &str = "backflow._schemas";
/// Source positions confirmed after Kafka acknowledged (compacted).
pub const OFFSETS: &str = "backflow._offsets";

/// The raw topic a dataset's source feed publishes to.
pub fn raw(dataset: &str) -> String {
    format!("backflow.raw.{dataset}")
}

/// The share topic a node re-shares a dataset to, for one subscriber node.
pub fn share(subscriber_node: &str, dataset: &str) -> String {
    format!("backflow.share.{subscriber_node}.{dataset}")
}

/// The dead-letter topic of a feed or subscription.
pub fn dlq(feed: &str) -> String {
    format!("backflow.dlq.{feed}")
}

/// The dataset a raw or share topic carries (`None` for other topics).
pub fn dataset_of(topic: &str) -> Option<&str> {
    if let Some(d) = topic.strip_prefix("backflow.raw.") {
        return Some(d).filter(|d| !d.is_empty());
    }
    topic
        .strip_prefix("backflow.share.")
        .and_then(|rest| rest.split_once('.'))
        .map(|(_, d)| d)
        .filter(|d| !d.is_empty())
}

/// What a topic is for; a bounded label for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicKind {
    Raw,
    Share,
    DeadLetter,
    Internal,
    Other,
}

impl TopicKind {
    /// Every kind, for initialising labelled metrics at zero.
    pub const ALL: [TopicKind; 5] = [
        TopicKind::Raw,
        TopicKind::Share,
        TopicKind::DeadLetter,
        TopicKind::Internal,
        TopicKind::Other,
    ];

    /// Classifies a topic by its name.
    pub fn of(topic: &str) -> Self {
        if topic.starts_with("backflow.raw.") {
            TopicKind::Raw
        } else if topic.starts_with("backflow.share.") {
            TopicKind::Share
        } else if topic.starts_with("backflow.dlq.") {
            TopicKind::DeadLetter
        } else if topic.starts_with("backflow._") {
            TopicKind::Internal
        } else {
            TopicKind::Other
        }
    }

    /// The metric label value.
    pub fn label(self) -> &'static str {
        match self {
            TopicKind::Raw => "raw",
            TopicKind::Share => "share",
            TopicKind::DeadLetter => "dlq",
            TopicKind::Internal => "internal",
            TopicKind::Other => "other",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_follow_design_names() {
        assert_eq!(raw("gongan.population"), "backflow.raw.gongan.population");
        assert_eq!(
            share("330106", "gongan.population"),
            "backflow.share.330106.gongan.population"
        );
        assert_eq!(dlq("gongan-pg"), "backflow.dlq.gongan-pg");
        assert_eq!(TopicKind::of(&raw("a.b")), TopicKind::Raw);
        assert_eq!(TopicKind::of(&share("330106", "a.b")), TopicKind::Share);
        assert_eq!(TopicKind::of(&dlq("f")), TopicKind::DeadLetter);
        assert_eq!(TopicKind::of(OFFSETS), TopicKind::Internal);
        assert_eq!(TopicKind::of("orders"), TopicKind::Other);
    }

    #[test]
    fn dataset_of_raw_and_share_topics() {
        assert_eq!(
            dataset_of(&raw("gongan.population")),
            Some("gongan.population")
        );
        assert_eq!(
            dataset_of(&share("330106", "gongan.population")),
            Some("gongan.population")
        );
        assert_eq!(dataset_of("orders"), None);
        assert_eq!(dataset_of("backflow.share.330106"), None);
    }
}
