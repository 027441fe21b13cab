//! Topic names, as DESIGN.md fixes them.
//!
//! raw `backflow.raw.<dataset>`; share `backflow.share.<subscriber-node>.<dataset>`;
//! dead letters of feeds `backflow.dlq.<feed>` (unfiltered rows: the node's
//! own), of subscribers `backflow.sdlq.<subscriber-node>.<subscription>`
//! (rows as shared with that subscriber); internal state
//! `backflow._catalog`, `backflow._audit`, `backflow._offsets`.
//!
//! Dataset ids become parts of topic names, so [`validate_dataset_id`]
//! holds them to what Kafka accepts for every topic they appear in.

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

/// The dead-letter topic of a subscriber's subscription: a namespace apart
/// from the feeds' dead letters, which hold unfiltered rows.
pub fn subscriber_dlq(subscriber_node: &str, subscription: &str) -> String {
    format!("backflow.sdlq.{subscriber_node}.{subscription}")
}

/// The consumer group a subscriber commits its positions in a share topic
/// to: the topic's own name. Groups and topics are separate resources in
/// Kafka, so the name is free, and one PREFIXED ACL
/// `backflow.share.<subscriber>.` covers a subscriber's topics and groups.
pub fn subscriber_group(share_topic: &str) -> String {
    share_topic.to_owned()
}

/// Kafka's longest topic name.
pub const MAX_TOPIC_LEN: usize = 249;
/// The longest prefix a dataset id gets in a topic name
/// (`backflow.share.<six digits>.`).
const LONGEST_DATASET_PREFIX: usize = "backflow.share.000000.".len();
/// Longest department name of a dataset id.
pub const MAX_DEPARTMENT_LEN: usize = 32;
/// Longest name part of a dataset id.
pub const MAX_DATASET_NAME_LEN: usize = 64;

/// Checks a dataset id registered through the API: `<department>.<name>`,
/// the department `[a-z][a-z0-9-]*` (at most 32), the name
/// `[a-z0-9][a-z0-9_-]*` (at most 64). Every topic it appears in then is a
/// legal Kafka name (`[a-zA-Z0-9._-]`, at most 249 characters), and no two
/// ids collide under Kafka's rule that `.` and `_` are the same in topic
/// names: the department holds neither, so the first of them in an id is
/// always its separator.
pub fn validate_dataset_id(id: &str) -> Result<(), String> {
    let rule = "dataset ids are <department>.<name>: the department of lower-case letters, digits and '-' (starting with a letter, at most 32, no '_' since Kafka treats '.' and '_' alike in topic names), the name of lower-case letters, digits, '_' and '-' (at most 64): they become parts of Kafka topic names";
    let bad = |what: String| Err(format!("dataset id {id:?}: {what}; {rule}"));
    let Some((dept, name)) = id.split_once('.') else {
        return bad("no '.' between department and name".to_owned());
    };
    if dept.is_empty()
        || dept.len() > MAX_DEPARTMENT_LEN
        || !dept.starts_with(|c: char| c.is_ascii_lowercase())
        || !dept
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return bad(format!("department {dept:?} is not allowed"));
    }
    if name.is_empty()
        || name.len() > MAX_DATASET_NAME_LEN
        || name.starts_with(['_', '-'])
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    {
        return bad(format!("name {name:?} is not allowed"));
    }
    debug_assert!(LONGEST_DATASET_PREFIX + id.len() + "-value".len() <= MAX_TOPIC_LEN);
    Ok(())
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
        } else if topic.starts_with("backflow.dlq.") || topic.starts_with("backflow.sdlq.") {
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
        assert_eq!(
            subscriber_dlq("330106", "population"),
            "backflow.sdlq.330106.population"
        );
        assert_eq!(
            TopicKind::of(&subscriber_dlq("330106", "p")),
            TopicKind::DeadLetter
        );
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

    #[test]
    fn dataset_ids_are_legal_in_every_topic_and_never_collide() {
        for ok in [
            "gongan.population",
            "ga-2.x_y",
            "a.0",
            &format!("{}.{}", "d".repeat(32), "n".repeat(64)),
        ] {
            validate_dataset_id(ok).unwrap();
            assert!(share("330106", ok).len() + "-value".len() <= MAX_TOPIC_LEN);
        }
        for bad in [
            "gongan",
            "ga.a b",
            "ga.人口",
            "ga.x/y",
            "ga.",
            ".x",
            "ga.a.b",
            "ga_x.y",
            "Ga.x",
            "1a.x",
            "ga._x",
            &format!("ga.{}", "x".repeat(65)),
        ] {
            let e = validate_dataset_id(bad).unwrap_err();
            assert!(e.contains("dataset id"), "{bad}: {e}");
        }
    }
}
