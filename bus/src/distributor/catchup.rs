//! Catching a newly active share up inside the transactional distributor.
//!
//! A subscription approved while the node runs first gets the dataset's
//! current state, then its live changes. The process that holds a raw
//! partition (the distributor group gives each to one process serving the
//! node) reads that partition again from its first record for the new
//! share alone, while it goes on distributing live records to every other
//! share; when the replay reaches the offset the live flow stands at, the
//! share joins the live flow on that partition. A share not yet joined on a
//! partition receives nothing live from it (fail closed).
//!
//! Exactly once, across kills and partitions moving between processes: the
//! replay's share records, their delivery records in the audit trail, and
//! the replay's progress commit in the distributor's transaction. The
//! progress is the commit metadata of the raw partition's offset in the
//! distributor group: `bf1|<share>=<next raw offset>,<share>=L` (`L`:
//! joined), `<share>` being a digest of the subscription id and its policy
//! version. The next holder of the partition, in this process or another,
//! resumes every replay from the last commit. Each activation (approval,
//! re-activation, a narrowed grant) has a new policy version, hence a
//! replay of its own.
//!
//! Entries of shares this process does not run (approved moments ago and
//! not yet read from the catalog here) are carried over unchanged; those
//! of a superseded policy version, or of a subscription no longer in force,
//! are dropped. The metadata is bounded by the brokers'
//! `offset.metadata.max.bytes` (4096 by default: about 200 subscriptions of
//! one dataset).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use backflow_schemas::FramedReaders;

use super::share::ShareConfig;
use super::{Share, Version};
use crate::domain::topics;
use crate::kafka::{Consumer, GroupOffsets, KafkaError, KafkaSettings};

/// What commit metadata written by this module starts with.
const PREFIX: &str = "bf1|";

/// A raw topic and partition.
pub(super) type Tp = (String, i32);

/// Where a share stands on one raw partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mark {
    /// Replayed up to this raw offset (exclusive).
    At(i64),
    /// Joined the live flow, which delivers it every raw record from this
    /// offset on (0 when read back from a commit: everything after it).
    Live(i64),
}

/// The digest of a subscription id (`<subscriber>:<dataset>`) in share
/// keys: short, so many fit in the metadata, and free of separators.
fn id_digest(subscriber: &str, dataset: &str) -> String {
    use sha2::Digest;
    let sum = sha2::Sha256::digest(format!("{subscriber}:{dataset}").as_bytes());
    sum[..5].iter().map(|b| format!("{b:02x}")).collect()
}

/// The key of one activation of a subscription's share.
pub(super) fn key_of(subscriber: &str, dataset: &str, version: u32) -> String {
    format!("{}.{version}", id_digest(subscriber, dataset))
}

fn share_key(share: &ShareConfig) -> String {
    key_of(share.subscriber.as_str(), &share.dataset, share.version)
}

/// The entries of a partition's commit metadata (none when it was written
/// by something else, or is empty).
pub(super) fn parse(metadata: &str) -> BTreeMap<String, Mark> {
    let Some(body) = metadata.strip_prefix(PREFIX) else {
        return BTreeMap::new();
    };
    body.split(',')
        .filter_map(|entry| {
            let (key, at) = entry.split_once('=')?;
            let mark = if at == "L" {
                Mark::Live(0)
            } else {
                Mark::At(at.parse().ok()?)
            };
            Some((key.to_owned(), mark))
        })
        .collect()
}

/// The commit metadata holding `entries` (empty for none).
pub(super) fn render(entries: &BTreeMap<String, Mark>) -> String {
    if entries.is_empty() {
        return String::new();
    }
    let body: Vec<String> = entries
        .iter()
        .map(|(key, mark)| match mark {
            Mark::At(at) => format!("{key}={at}"),
            Mark::Live(_) => format!("{key}=L"),
        })
        .collect();
    format!("{PREFIX}{}", body.join(","))
}

/// What the catalog said of subscriptions when the run began: which
/// entries are dead (a superseded policy version, or a subscription no
/// longer in force). Entries of subscriptions it does not know are kept.
#[derive(Debug, Clone, Default)]
pub struct Known {
    /// Per id digest: the current policy version and whether it is in
    /// force (active or pending approval).
    current: HashMap<String, (u32, bool)>,
}

impl Known {
    /// Notes a catalog subscription.
    pub fn note(&mut self, subscriber: &str, dataset: &str, version: u32, in_force: bool) {
        self.current
            .insert(id_digest(subscriber, dataset), (version, in_force));
    }

    fn is_dead(&self, key: &str) -> bool {
        let Some((digest, version)) = key.rsplit_once('.') else {
            return true;
        };
        let Ok(version) = version.parse::<u32>() else {
            return true;
        };
        match self.current.get(digest) {
            Some((current, in_force)) => version < *current || (version == *current && !in_force),
            None => false,
        }
    }
}

/// A replay under way: one share, one raw partition.
pub(super) struct Replay {
    pub(super) key: String,
    pub(super) tp: Tp,
    pub(super) dataset: String,
    pub(super) consumer: Arc<Consumer>,
    /// The share alone, not gated: what the replay delivers to.
    pub(super) share: Vec<Share>,
    pub(super) readers: FramedReaders,
    pub(super) versions: HashMap<(u32, u32), Version>,
}

/// The state the open transaction began from.
type Snapshot = (HashMap<Tp, BTreeMap<String, Mark>>, HashSet<Tp>);

/// The catch-up state of one transactional run.
pub(super) struct CatchUp {
    settings: KafkaSettings,
    group: String,
    offsets: GroupOffsets,
    known: Known,
    /// The catalog's shares of this run, by key, with where one stands on
    /// a partition whose commit has no entry of it: `At(0)` for a
    /// subscription still to backfill, `Live(0)` for one backfilled
    /// before its progress was kept in commits.
    gated: BTreeMap<String, (ShareConfig, Mark)>,
    /// The partitions this process holds: their entries.
    parts: HashMap<Tp, BTreeMap<String, Mark>>,
    /// Partitions whose entries changed since the last commit.
    changed: HashSet<Tp>,
    /// `parts` and `changed` when the open transaction began.
    snapshot: Option<Snapshot>,
    pub(super) replay: Option<Replay>,
}

impl CatchUp {
    pub(super) fn new(settings: &KafkaSettings, group: &str, known: Known) -> Self {
        Self {
            settings: settings.clone(),
            group: group.to_owned(),
            offsets: GroupOffsets::new(settings),
            known,
            gated: BTreeMap::new(),
            parts: HashMap::new(),
            changed: HashSet::new(),
            snapshot: None,
            replay: None,
        }
    }

    /// A catalog share of this run: delivered live on a partition only
    /// where its entry says it joined (`share.catch_up`: a partition with
    /// no entry of it is still to backfill; otherwise it was backfilled
    /// before, and is live there).
    pub(super) fn gate(&mut self, share: &ShareConfig) {
        let key = share_key(share);
        let missing = if share.catch_up {
            Mark::At(0)
        } else {
            Mark::Live(0)
        };
        self.gated.insert(key, (share.clone(), missing));
        self.fill_gated();
    }

    /// Gives each gated share an entry on each held partition of its raw
    /// topic that has none.
    fn fill_gated(&mut self) {
        for (key, (share, missing)) in &self.gated {
            let raw = topics::raw(&share.dataset);
            for ((topic, _), entries) in self.parts.iter_mut() {
                if *topic == raw {
                    entries.entry(key.clone()).or_insert(*missing);
                }
            }
        }
    }

    /// Stops gating (and backfilling) the shares `gone` names: withdrawn
    /// by the catalog, failed, or unusable. The live flow delivers them
    /// nothing more in this run.
    pub(super) fn ungate(&mut self, gone: impl Fn(&str) -> bool) {
        self.gated.retain(|key, _| !gone(key));
        if self.replay.as_ref().is_some_and(|r| gone(&r.key)) {
            self.replay = None;
        }
    }

    /// Whether any share of this run is gated.
    pub(super) fn any_gated(&self) -> bool {
        !self.gated.is_empty()
    }

    /// Whether the share of `key` is gated in this run.
    pub(super) fn is_gated(&self, key: &str) -> bool {
        self.gated.contains_key(key)
    }

    /// Follows the consumer's assignment: forgets partitions given up, and
    /// reads the commit of partitions newly held (where the live flow
    /// starts on them, into `position`, and their entries). Returns
    /// whether anything changed.
    pub(super) async fn sync(
        &mut self,
        consumer: &Consumer,
        position: &mut HashMap<Tp, i64>,
    ) -> Result<bool, KafkaError> {
        let held: HashSet<Tp> = consumer.assignment().into_iter().collect();
        let before = self.parts.len();
        self.parts.retain(|tp, _| held.contains(tp));
        self.changed.retain(|tp| held.contains(tp));
        if self.replay.as_ref().is_some_and(|r| !held.contains(&r.tp)) {
            self.replay = None;
        }
        let new: Vec<Tp> = held
            .into_iter()
            .filter(|tp| !self.parts.contains_key(tp))
            .collect();
        if new.is_empty() {
            return Ok(self.parts.len() != before);
        }
        let committed = self.offsets.positions(&self.group, &new).await?;
        for (tp, commit) in new.into_iter().zip(committed) {
            let (offset, metadata) = commit.unwrap_or((0, String::new()));
            position.insert(tp.clone(), offset);
            let mut entries = parse(&metadata);
            entries.retain(|key, _| !self.known.is_dead(key));
            // A share another process joined here, which this run does
            // not deliver (it does not know it yet): the records this run
            // passes are its to backfill once it does.
            for (key, mark) in entries.iter_mut() {
                if matches!(mark, Mark::Live(_)) && !self.gated.contains_key(key) {
                    *mark = Mark::At(offset);
                    self.changed.insert(tp.clone());
                }
            }
            self.parts.insert(tp, entries);
        }
        self.fill_gated();
        Ok(true)
    }

    /// For the gated share of `key` (a share of `dataset`), the partitions
    /// where it joined the live flow and the offset from which the live
    /// flow delivers to it there.
    pub(super) fn live_from(&self, key: &str, dataset: &str) -> HashMap<i32, i64> {
        let raw = topics::raw(dataset);
        self.parts
            .iter()
            .filter(|((topic, _), _)| *topic == raw)
            .filter_map(|((_, p), entries)| match entries.get(key) {
                Some(Mark::Live(from)) => Some((*p, *from)),
                _ => None,
            })
            .collect()
    }

    /// A replay to run next, if one is due and none runs: the first gated
    /// share not yet joined on a held partition.
    pub(super) fn next_replay(&self) -> Option<(String, Tp, i64, ShareConfig)> {
        if self.replay.is_some() {
            return None;
        }
        let mut due: Vec<(&Tp, &String, i64)> = self
            .parts
            .iter()
            .flat_map(|(tp, entries)| {
                entries.iter().filter_map(move |(key, mark)| match mark {
                    Mark::At(at) => Some((tp, key, *at)),
                    Mark::Live(_) => None,
                })
            })
            .filter(|(_, key, _)| self.gated.contains_key(*key))
            .collect();
        due.sort();
        let (tp, key, at) = due.into_iter().next()?;
        Some((key.clone(), tp.clone(), at, self.gated[key].0.clone()))
    }

    /// Starts reading `tp` again from `from` for the share of `key`.
    pub(super) fn start_replay(
        &mut self,
        key: String,
        tp: Tp,
        from: i64,
        share: Share,
        dataset: String,
    ) -> Result<(), KafkaError> {
        let consumer = Consumer::replay_from(&self.settings, &tp.0, tp.1, from)?;
        tracing::info!(dataset = %dataset, partition = tp.1, from, "backfilling a share from the raw topic while the distributor goes on");
        self.replay = Some(Replay {
            key,
            tp,
            dataset,
            consumer: Arc::new(consumer),
            share: vec![share],
            readers: FramedReaders::new(),
            versions: HashMap::new(),
        });
        Ok(())
    }

    /// The consumer of the replay under way.
    pub(super) fn replay_consumer(&self) -> Option<Arc<Consumer>> {
        self.replay.as_ref().map(|r| r.consumer.clone())
    }

    /// Notes that the replay delivered up to `next` (exclusive).
    pub(super) fn advanced(&mut self, next: i64) {
        let Some(r) = &self.replay else { return };
        if let Some(entries) = self.parts.get_mut(&r.tp) {
            entries.insert(r.key.clone(), Mark::At(next));
            self.changed.insert(r.tp.clone());
        }
    }

    /// The replay reached the live flow at `live_at`: the share joins it
    /// on that partition, and the replay ends.
    pub(super) fn join(&mut self, live_at: i64) {
        let Some(r) = self.replay.take() else { return };
        if let Some(entries) = self.parts.get_mut(&r.tp) {
            entries.insert(r.key.clone(), Mark::Live(live_at));
            self.changed.insert(r.tp.clone());
        }
        tracing::info!(dataset = %r.dataset, partition = r.tp.1, from = live_at, "backfilled share joined the running distributor");
    }

    /// The share of `key` had nothing to read again on `tp`: it joins
    /// the live flow there at `live_at`.
    pub(super) fn joined_at_once(&mut self, key: &str, tp: &Tp, live_at: i64) {
        if let Some(entries) = self.parts.get_mut(tp) {
            entries.insert(key.to_owned(), Mark::Live(live_at));
            self.changed.insert(tp.clone());
        }
        tracing::info!(topic = %tp.0, partition = tp.1, from = live_at, "backfilled share joined the running distributor (nothing before it to read again)");
    }

    /// The replay's share failed (reported to the supervision, which
    /// takes it out of the run): it is not read again in this run.
    pub(super) fn drop_failed(&mut self) {
        if let Some(r) = self.replay.take() {
            self.gated.remove(&r.key);
        }
    }

    /// Whether the replay's reader stands at or past `live_at` on its
    /// partition (what it has not received are commit markers).
    pub(super) fn replay_reached(&self, position: &HashMap<Tp, i64>) -> Option<i64> {
        let r = self.replay.as_ref()?;
        let live_at = position.get(&r.tp).copied().unwrap_or(0);
        let at = r.consumer.position(&r.tp.0, r.tp.1)?;
        (at >= live_at).then_some(live_at)
    }

    /// Before the first change of a transaction: what an abort goes back to.
    pub(super) fn begin(&mut self) {
        if self.snapshot.is_none() {
            self.snapshot = Some((self.parts.clone(), self.changed.clone()));
        }
    }

    /// The open transaction committed.
    pub(super) fn committed(&mut self) {
        self.snapshot = None;
        self.changed.clear();
    }

    /// The open transaction was aborted: back to where it began; a replay
    /// starts again from there.
    pub(super) fn aborted(&mut self) {
        if let Some((parts, changed)) = self.snapshot.take() {
            self.parts = parts;
            self.changed = changed;
        }
        // Shares gated after the transaction began.
        self.fill_gated();
        self.replay = None;
    }

    /// What the next commit writes: the metadata of every held partition,
    /// and the partitions to commit even without a raw record read (their
    /// entries changed) at the live flow's position.
    pub(super) fn plan(&self, position: &HashMap<Tp, i64>) -> CommitPlan {
        CommitPlan {
            only_listed: true,
            metadata: self
                .parts
                .iter()
                .map(|(tp, entries)| (tp.clone(), render(entries)))
                .collect(),
            extra: self
                .changed
                .iter()
                .map(|tp| (tp.clone(), position.get(tp).copied().unwrap_or(0)))
                .collect(),
        }
    }
}

/// What a commit adds to the raw offsets of the records it holds.
#[derive(Debug, Default)]
pub(super) struct CommitPlan {
    /// Commit only the partitions `metadata` lists (those held): a
    /// partition lost meanwhile is not committed without its entries.
    pub(super) only_listed: bool,
    /// The metadata of each partition (none: empty).
    pub(super) metadata: HashMap<Tp, String>,
    /// Partitions committed at this offset unless records move them on.
    pub(super) extra: Vec<(Tp, i64)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_round_trips_and_ignores_what_it_did_not_write() {
        let mut entries = BTreeMap::new();
        entries.insert("0a1b2c3d4e.3".to_owned(), Mark::At(1200));
        entries.insert("ffeeddccbb.1".to_owned(), Mark::Live(77));
        let text = render(&entries);
        assert_eq!(text, "bf1|0a1b2c3d4e.3=1200,ffeeddccbb.1=L");
        let back = parse(&text);
        assert_eq!(back["0a1b2c3d4e.3"], Mark::At(1200));
        // Joined: the live flow delivers everything after the commit.
        assert_eq!(back["ffeeddccbb.1"], Mark::Live(0));
        assert!(parse("").is_empty());
        assert!(parse("written by another tool").is_empty());
        assert_eq!(render(&BTreeMap::new()), "");
        // A damaged entry is dropped, the others kept.
        assert_eq!(parse("bf1|a.1=x,b.2=5").len(), 1);
    }

    #[test]
    fn entries_of_superseded_or_ended_activations_are_dead_unknown_ones_kept() {
        let mut known = Known::default();
        known.note("330106", "gongan.people", 4, true);
        known.note("330108", "gongan.people", 2, false);
        let key = |sub: &str, v: u32| format!("{}.{v}", id_digest(sub, "gongan.people"));
        assert!(known.is_dead(&key("330106", 3)), "a superseded version");
        assert!(!known.is_dead(&key("330106", 4)), "the one in force");
        assert!(known.is_dead(&key("330108", 2)), "no longer in force");
        assert!(
            !known.is_dead(&key("330109", 1)),
            "approved after this run began: kept"
        );
        assert!(known.is_dead("no-version"));
    }
}
