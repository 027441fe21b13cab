//! Topic names, as DESIGN.md fixes them.
//!
//! Every name starts with the node's `kafka.topic_prefix` (`backflow.`
//! unless set), so several nodes can share one cluster, each in its own
//! namespace: raw `<prefix>raw.<dataset>`; share
//! `<prefix>share.<subscriber-node>.<dataset>`; dead letters of feeds
//! `<prefix>dlq.<feed>` (unfiltered rows: the node's own), of subscribers
//! `<prefix>sdlq.<subscriber-node>.<subscription>` (rows as shared with that
//! subscriber); internal state `<prefix>_catalog`, `_audit`, `_offsets`,
//! `_schemas`, `_subscribers`; the distributor's consumer group
//! `<prefix>distributor.<node>`, a subscriber's group its share topic's
//! name.
//!
//! Dataset ids become parts of topic names, so [`validate_dataset_id`]
//! holds them to what Kafka accepts for every topic they appear in.

/// The prefix of every topic and consumer group a node names when
/// `kafka.topic_prefix` is not set.
pub const DEFAULT_PREFIX: &str = "backflow.";
/// The longest `kafka.topic_prefix`.
pub const MAX_PREFIX_LEN: usize = 64;

/// The names of this process's Kafka resources, fixed once per process
/// (a process serves one node).
struct Names {
    prefix: String,
    catalog: String,
    audit: String,
    schemas: String,
    offsets: String,
    subscribers: String,
    leases: String,
}

impl Names {
    fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
            catalog: format!("{prefix}_catalog"),
            audit: format!("{prefix}_audit"),
            schemas: format!("{prefix}_schemas"),
            offsets: format!("{prefix}_offsets"),
            subscribers: format!("{prefix}_subscribers"),
            leases: format!("{prefix}_leases"),
        }
    }
}

static NAMES: std::sync::OnceLock<Names> = std::sync::OnceLock::new();

fn names() -> &'static Names {
    NAMES.get_or_init(|| Names::new(DEFAULT_PREFIX))
}

/// Checks a topic prefix: 1 to 64 of the characters Kafka allows in topic
/// names (`[a-zA-Z0-9._-]`), ending with `.` so that the names under it
/// stay hierarchical and a PREFIXED ACL on `<prefix>share.<subscriber>.`
/// covers exactly one subscriber's topics.
pub fn validate_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty()
        || prefix.len() > MAX_PREFIX_LEN
        || !prefix.ends_with('.')
        || prefix.starts_with('.')
        || !prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(format!(
            "topic prefix {prefix:?} is not allowed: 1 to {MAX_PREFIX_LEN} of a-z, A-Z, 0-9, '.', '_', '-', not starting with '.' and ending with '.' (e.g. \"{DEFAULT_PREFIX}\" or \"zj.hz.\")"
        ));
    }
    Ok(())
}

/// Fixes the prefix of every topic, consumer group and internal topic this
/// process names (`kafka.topic_prefix`): called once at start, before any
/// name is used. Fails when the names were already fixed to another one.
pub fn set_prefix(prefix: &str) -> Result<(), String> {
    validate_prefix(prefix)?;
    let set = NAMES.get_or_init(|| Names::new(prefix));
    if set.prefix != prefix {
        return Err(format!(
            "topic names were fixed to prefix {:?} before {prefix:?} was set",
            set.prefix
        ));
    }
    Ok(())
}

/// The prefix of this process's topics and groups.
pub fn prefix() -> &'static str {
    &names().prefix
}

/// Catalog of datasets, feeds and subscriptions (compacted).
pub fn catalog() -> &'static str {
    &names().catalog
}
/// Hash-chained audit records.
pub fn audit() -> &'static str {
    &names().audit
}
/// Schema registry log (compacted, one partition; see `registry`).
pub fn schemas() -> &'static str {
    &names().schemas
}
/// Source positions confirmed after Kafka acknowledged (compacted).
pub fn offsets() -> &'static str {
    &names().offsets
}
/// The last status each subscriber posted (compacted; see `lag`).
pub fn subscribers() -> &'static str {
    &names().subscribers
}

/// The raw topic a dataset's source feed publishes to.
pub fn raw(dataset: &str) -> String {
    format!("{}raw.{dataset}", prefix())
}

/// The share topic a node re-shares a dataset to, for one subscriber node.
pub fn share(subscriber_node: &str, dataset: &str) -> String {
    format!("{}share.{subscriber_node}.{dataset}", prefix())
}

/// The dead-letter topic of a feed or subscription.
pub fn dlq(feed: &str) -> String {
    format!("{}dlq.{feed}", prefix())
}

/// The dead-letter topic of a subscriber's subscription: a namespace apart
/// from the feeds' dead letters, which hold unfiltered rows.
pub fn subscriber_dlq(subscriber_node: &str, subscription: &str) -> String {
    format!("{}sdlq.{subscriber_node}.{subscription}", prefix())
}

/// The transactional id of a node's feed: one writer per feed, so a
/// process that runs the feed again fences any earlier one still alive.
pub fn feed_transaction(node: &str, feed: &str) -> String {
    format!("{}feed.{node}.{feed}", prefix())
}

/// The topic the lease groups of feeds subscribe to (one partition, never
/// written; see `kafka::lease`).
pub fn leases() -> &'static str {
    &names().leases
}

/// The lease group of feed `feed` of `node`: its member holding the
/// partition runs the feed.
pub fn feed_lease(node: &str, feed: &str) -> String {
    format!("{}lease.{node}.{feed}", prefix())
}

/// The lease group of cascading subscription `subscription` of `node`.
pub fn cascade_lease(node: &str, subscription: &str) -> String {
    format!("{}lease.{node}.cascade.{subscription}", prefix())
}

/// The transactional id of a cascading subscription of `node`: one per
/// subscription, as one process runs it.
pub fn cascade_transaction(node: &str, subscription: &str) -> String {
    format!("{}cascade.{node}.{subscription}", prefix())
}

/// The transactional id under which one audit chain (`330100`, or
/// `330100/a` for one of several processes serving the node) is written:
/// one writer per chain.
pub fn audit_transaction(chain: &str) -> String {
    format!("{}audit.{}", prefix(), chain.replace('/', "."))
}

/// The transactional id of the distributor of one process serving `node`
/// (`replica`: that process's `kafka.replica`).
pub fn distributor_transaction(node: &str, replica: &str) -> String {
    format!("{}distributor.{node}.{replica}", prefix())
}

/// The consumer group of a node's distributor, whose members are the
/// processes serving the node.
pub fn distributor_group(node: &str) -> String {
    format!("{}distributor.{node}", prefix())
}

/// The consumer group a subscriber commits its positions in a share topic
/// to: the topic's own name. Groups and topics are separate resources in
/// Kafka, so the name is free, and one PREFIXED ACL
/// `<prefix>share.<subscriber>.` covers a subscriber's topics and groups.
pub fn subscriber_group(share_topic: &str) -> String {
    share_topic.to_owned()
}

/// The subscriber node and dataset of a share topic named under `prefix`
/// (an upper node's `upstream.topic_prefix`).
pub fn share_parts<'a>(prefix: &str, topic: &'a str) -> Option<(&'a str, &'a str)> {
    topic
        .strip_prefix(prefix)?
        .strip_prefix("share.")?
        .split_once('.')
        .filter(|(code, dataset)| !code.is_empty() && !dataset.is_empty())
}

/// Kafka's longest topic name.
pub const MAX_TOPIC_LEN: usize = 249;

/// Whether Kafka takes `name` as a topic name: 1 to [`MAX_TOPIC_LEN`]
/// characters of `[a-zA-Z0-9._-]`, and neither `.` nor `..`.
pub fn is_legal_topic(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_TOPIC_LEN
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Longest subscription name.
pub const MAX_SUBSCRIPTION_NAME_LEN: usize = 64;

/// Checks a subscription's name (`[[subscriptions]] name`): 1 to
/// [`MAX_SUBSCRIPTION_NAME_LEN`] ASCII letters, digits, `_` and `-`,
/// starting with a letter or digit. It names the subscription's dead-letter
/// topic and its status on the upper node's lag board, so it must be a
/// legal part of a Kafka topic name and read the same to everyone: no
/// spaces, no invisible or direction-changing characters, no `.` (which
/// Kafka treats like `_`).
pub fn validate_subscription_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_SUBSCRIPTION_NAME_LEN
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "subscription names are 1 to {MAX_SUBSCRIPTION_NAME_LEN} ASCII letters, digits, '_' and '-', starting with a letter or digit (they name Kafka topics); got {:?}",
            name.chars().take(80).collect::<String>()
        ))
    }
}
/// The longest prefix a dataset id gets in a topic name
/// (`<topic prefix>share.<six digits>.`).
const LONGEST_DATASET_PREFIX: usize = MAX_PREFIX_LEN + "share.000000.".len();
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

/// The dataset a raw or share topic of this node carries (`None` for
/// other topics).
pub fn dataset_of(topic: &str) -> Option<&str> {
    let rest = topic.strip_prefix(prefix())?;
    if let Some(d) = rest.strip_prefix("raw.") {
        return Some(d).filter(|d| !d.is_empty());
    }
    share_parts(prefix(), topic).map(|(_, d)| d)
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
        let Some(rest) = topic.strip_prefix(prefix()) else {
            return TopicKind::Other;
        };
        if rest.starts_with("raw.") {
            TopicKind::Raw
        } else if rest.starts_with("share.") {
            TopicKind::Share
        } else if rest.starts_with("dlq.") || rest.starts_with("sdlq.") {
            TopicKind::DeadLetter
        } else if rest.starts_with('_') {
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
        assert_eq!(TopicKind::of(offsets()), TopicKind::Internal);
        assert_eq!(offsets(), "backflow._offsets");
        assert_eq!(distributor_group("330100"), "backflow.distributor.330100");
        assert_eq!(TopicKind::of("orders"), TopicKind::Other);
    }

    #[test]
    fn prefixes_are_checked_and_upper_share_topics_parsed_with_theirs() {
        for ok in ["backflow.", "zj.hz.", "prov-33_a."] {
            validate_prefix(ok).unwrap();
        }
        for bad in ["", "backflow", ".x.", "a b.", "a/b.", &"a".repeat(64)] {
            assert!(validate_prefix(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            share_parts("zj.", "zj.share.330100.gongan.population"),
            Some(("330100", "gongan.population"))
        );
        assert_eq!(share_parts("zj.", "backflow.share.330100.a.b"), None);
        assert_eq!(share_parts("zj.", "zj.raw.a.b"), None);
        // The process's own names keep the default in unit tests.
        assert!(set_prefix("other.").is_err());
        set_prefix(DEFAULT_PREFIX).unwrap();
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

    #[test]
    fn subscription_names_and_topic_names_follow_kafkas_rules() {
        for ok in [
            "330106-population",
            "d330106_1234_5678",
            "A",
            &"n".repeat(64),
        ] {
            validate_subscription_name(ok).unwrap();
            assert!(is_legal_topic(&subscriber_dlq("330106", ok)));
        }
        for bad in [
            "",
            "   ",
            "a b",
            "a.b",
            "-a",
            "_a",
            "人口",
            "xihu\u{202e}elpoep",
            "xihu\u{200b}",
            "a\n",
            &"n".repeat(65),
        ] {
            assert!(validate_subscription_name(bad).is_err(), "{bad:?}");
        }
        assert!(is_legal_topic("backflow.share.330106.ga.people"));
        for bad in ["", ".", "..", "a b", "a\0", "人口", &"a".repeat(250)] {
            assert!(!is_legal_topic(bad), "{bad:?}");
        }
    }
}
