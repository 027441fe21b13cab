//! Lag that means something, per subscription and feed, as Burrow judges
//! consumers.
//!
//! A subscriber process (`backflow subscribe`) tells the upper node's Kafka,
//! every few seconds, where it is: it commits the next offset it applies in
//! each share-topic partition to the consumer group named like the share
//! topic ([`crate::domain::topics::subscriber_group`]), with the origin commit time
//! of the last change it applied as the commit's metadata. Its offsets of
//! record stay in its own database (with the rows); the group's offsets are
//! for everyone who watches lag the Kafka way: `kafka-consumer-groups
//! --describe`, Burrow, kafka-lag-exporter, and this node's lag board.
//!
//! What offsets cannot say, whether the subscriber runs or fails and why,
//! the subscriber posts to the upper node with its own token
//! (`POST /api/lag/status`): the node takes a status only from the
//! subscriber node whose active shares it names, bounded
//! ([`MAX_REPORT_BYTES`], the error text cut at [`MAX_ERROR_BYTES`] and
//! rid of control and invisible characters), stamps it with its own
//! clock, and writes it to the compacted internal topic
//! `backflow._subscribers` keyed `<subscriber node>/<subscription>`, so
//! every process of the node sees it. One district cannot crowd out the
//! others: a node keeps at most [`MAX_STATUSES_PER_NODE`] subscription
//! names per subscriber node (a new name takes the place of one not
//! reported for [`REPLACEABLE_AFTER`], whose record is deleted, or is
//! refused), and takes one status per name every [`MIN_POST_INTERVAL`].
//! Only the node writes that topic (it is internal, like the catalog); the
//! node reading it checks each record again and keeps the same bound per
//! subscriber node. Committed offsets past the end of a topic count as the
//! end; who may commit to a subscriber's group is for the broker to
//! enforce (a PREFIXED ACL `backflow.share.<subscriber>.`).
//!
//! The node reads the groups' offsets, compares them with the share topics'
//! high watermarks, and keeps a sliding window of samples per subscription:
//! - lag in messages: records in the share topic not applied yet;
//! - lag in seconds: now − origin commit time of the last applied change,
//!   0 when nothing waits (so it counts end to end, across hops);
//! - a status over the window, as Burrow defines it: `OK` (caught up at
//!   some point of the window, or catching up), `WARN` (consuming, but the
//!   lag grew between every pair of samples), `STALL` (reports keep coming
//!   but the offsets do not move while lag > 0: stuck, e.g. on a record it
//!   cannot apply, or the subscriber itself reports that it fails while
//!   records wait), `STOP` (no report within the window while lag > 0: the
//!   subscriber is down or cut off), `ERR` (the lag cannot be measured, or
//!   the subscriber reports that it fails while nothing waits: it will not
//!   apply the next change).
//!
//! Feeds get the same statuses from their source lag and event counts.

use backflow_connectors::now_ms;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How often a share topic's partition count is asked again.
const PARTITIONS_EVERY: Duration = Duration::from_secs(30);

/// How often subscribers report and the node samples.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// The largest status record the node takes: room for
/// [`MAX_STATUS_TOPICS`] topics of Kafka's longest name and the error.
pub const MAX_REPORT_BYTES: usize = 32 * 1024;
/// The longest error text the node keeps of a status.
pub const MAX_ERROR_BYTES: usize = 1024;
/// The most subscription names the node keeps statuses of, per subscriber
/// node.
pub const MAX_STATUSES_PER_NODE: usize = 64;
/// How long a subscription name must have gone unreported before a new
/// name of the same subscriber node may take its place.
pub const REPLACEABLE_AFTER: Duration = Duration::from_secs(3600);
/// The shortest time between two statuses of one subscription (they come
/// every [`SAMPLE_EVERY`]; each is a write to the node's Kafka).
pub const MIN_POST_INTERVAL: Duration = Duration::from_secs(1);
/// The most share topics one status names (a subscription reads at most
/// as many).
pub const MAX_STATUS_TOPICS: usize = crate::subscribe::config::MAX_SUBSCRIPTION_TOPICS;

/// Whether a subscription runs, as its subscriber says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum RunState {
    /// It applies what arrives.
    Running,
    /// Its last attempt failed (the error says why); it is tried again.
    Failed,
}

/// What a subscriber publishes besides its offsets: whether it runs, and
/// why not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubscriberStatus {
    /// Subscription name.
    pub subscription: String,
    /// The share topics it reads.
    pub topics: Vec<String>,
    /// `RUNNING` or `FAILED`.
    pub state: RunState,
    /// Why it fails (no row values).
    #[serde(default)]
    pub error: Option<String>,
    /// When it reported, ms since the epoch.
    pub ts_ms: i64,
}

/// The commit metadata of a subscriber's group offsets.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CommitMetadata {
    /// Origin commit time of the last change applied, ms.
    #[serde(default)]
    pub origin_ms: Option<i64>,
}

/// A status, as Burrow names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    /// Caught up, or catching up.
    Ok,
    /// Consuming, but falling behind.
    Warn,
    /// Alive but not moving while records wait.
    Stall,
    /// Not reporting while records wait.
    Stop,
    /// Not measurable.
    Err,
}

impl Status {
    /// Every status, for labelled metrics.
    pub const ALL: [Status; 5] = [
        Status::Ok,
        Status::Warn,
        Status::Stall,
        Status::Stop,
        Status::Err,
    ];

    /// The label (`OK`, `WARN`, ...).
    pub fn label(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::Warn => "WARN",
            Status::Stall => "STALL",
            Status::Stop => "STOP",
            Status::Err => "ERR",
        }
    }
}

/// One partition a subscriber reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportedPosition {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Next offset it applies.
    pub next: i64,
}

/// Where a subscriber is and how it runs, as it keeps it for
/// [`report`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Subscription name (the subscriber's configuration).
    pub subscription: String,
    /// `RUNNING` or `FAILED`.
    pub state: RunState,
    /// Why it fails (no row values).
    #[serde(default)]
    pub error: Option<String>,
    /// Where it is.
    pub positions: Vec<ReportedPosition>,
    /// Origin commit time of the last applied change, ms.
    #[serde(default)]
    pub last_origin_ms: Option<i64>,
    /// When it reported, ms since the epoch.
    pub ts_ms: i64,
}

/// One observation of a consumer.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Sample {
    /// When, ms since the epoch.
    pub at_ms: i64,
    /// Sum of the next offsets (moves when it applies anything).
    #[serde(skip)]
    pub position: i64,
    /// Records waiting.
    pub lag_messages: i64,
    /// Seconds behind the origin (0 when nothing waits).
    pub lag_seconds: Option<f64>,
    /// When the consumer last reported, ms (`None`: never).
    #[serde(skip)]
    pub reported_ms: Option<i64>,
    /// Whether its last report says it fails.
    #[serde(skip)]
    pub failing: bool,
}

/// Burrow's rules over a window of samples (oldest first), the last one
/// being now.
pub fn evaluate(samples: &[Sample], window_ms: i64) -> Status {
    let Some(last) = samples.last() else {
        return Status::Ok;
    };
    let reported_lately = last
        .reported_ms
        .is_some_and(|r| last.at_ms - r <= window_ms);
    if last.lag_messages <= 0 {
        // Nothing waits, but the subscriber says it fails: it will not
        // apply the next change.
        if last.failing && reported_lately {
            return Status::Err;
        }
        return Status::Ok;
    }
    // No report within the window while records wait: stopped.
    if !reported_lately {
        return Status::Stop;
    }
    // Alive, records wait, and it says it fails: stuck.
    if last.failing {
        return Status::Stall;
    }
    let window: Vec<&Sample> = samples
        .iter()
        .filter(|s| last.at_ms - s.at_ms <= window_ms)
        .collect();
    // Caught up at some point of the window.
    if window.iter().any(|s| s.lag_messages <= 0) {
        return Status::Ok;
    }
    let first = window[0];
    // Too little history to judge movement yet.
    if last.at_ms - first.at_ms < window_ms / 2 || window.len() < 3 {
        return Status::Ok;
    }
    if window.iter().all(|s| s.position == first.position) {
        return Status::Stall;
    }
    if window
        .windows(2)
        .all(|p| p[1].lag_messages >= p[0].lag_messages)
    {
        return Status::Warn;
    }
    Status::Ok
}

/// A subscription's row on the board.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SubscriptionLag {
    /// Subscriber node.
    pub subscriber: String,
    /// Dataset.
    pub dataset: String,
    /// Share topic.
    pub topic: String,
    /// The subscriber's group id (`None` until it reported).
    pub group: Option<String>,
    /// Records waiting.
    pub lag_messages: i64,
    /// Seconds behind the origin commit; 0 when caught up; `None` until
    /// the subscriber reported.
    pub lag_seconds: Option<f64>,
    /// Status over the window.
    pub status: Status,
    /// When the subscriber last reported, ms.
    pub last_report_ms: Option<i64>,
    /// Origin commit time of the last change it applied, ms.
    pub last_applied_ms: Option<i64>,
    /// What the subscriber says is wrong, if anything.
    pub error: Option<String>,
}

/// A feed's row on the board.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FeedLag {
    /// Feed name.
    pub feed: String,
    /// RUNNING, PAUSED, FAILED, ...
    pub state: String,
    /// Age of the oldest change not yet in Kafka.
    pub lag_seconds: f64,
    /// Change history the database keeps for the feed (-1: unknown).
    pub lag_bytes: i64,
    /// Status over the window.
    pub status: Status,
    /// The feed's error, if it failed.
    pub error: Option<String>,
}

/// What `/api/lag` shows; kept current by [`monitor`].
#[derive(Debug, Clone, Default, Serialize)]
pub struct Board {
    /// This node.
    pub node: String,
    /// When it was computed, ms.
    pub updated_ms: i64,
    /// Subscriptions served by this node.
    pub subscriptions: Vec<SubscriptionLag>,
    /// Feeds of this process.
    pub feeds: Vec<FeedLag>,
}

/// The board and the last hour of samples per subscription, shared with
/// the API, and the statuses subscriber nodes posted.
#[derive(Clone, Default)]
pub struct LagBoard {
    inner: Arc<RwLock<BoardState>>,
    statuses: Statuses,
}

#[derive(Default)]
struct BoardState {
    board: Board,
    history: HashMap<(String, String), VecDeque<(Sample, Status)>>,
}

/// Samples kept per subscription (one hour at [`SAMPLE_EVERY`]).
const HISTORY: usize = 1800;

impl LagBoard {
    /// The statuses subscriber nodes posted.
    pub fn statuses(&self) -> &Statuses {
        &self.statuses
    }

    /// The current board.
    pub fn board(&self) -> Board {
        self.inner.read().expect("lock").board.clone()
    }

    /// The last hour of one subscription, oldest first.
    pub fn history(&self, subscriber: &str, dataset: &str) -> Vec<serde_json::Value> {
        let state = self.inner.read().expect("lock");
        state
            .history
            .get(&(subscriber.to_owned(), dataset.to_owned()))
            .map(|h| {
                h.iter()
                    .map(|(s, st)| {
                        serde_json::json!({
                            "at_ms": s.at_ms,
                            "lag_messages": s.lag_messages,
                            "lag_seconds": s.lag_seconds,
                            "status": st.label(),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The statuses subscriber nodes posted, as this process keeps them from
/// `backflow._subscribers`: per subscriber node at most
/// [`MAX_STATUSES_PER_NODE`] subscription names. Cheap to clone.
#[derive(Clone, Default)]
pub struct Statuses {
    inner: Arc<RwLock<StatusBook>>,
}

#[derive(Default)]
struct StatusBook {
    /// Subscriber node → subscription → its last status.
    by_node: HashMap<String, HashMap<String, SubscriberStatus>>,
    /// Whether the topic has been read up to where it was when this
    /// process started (until then the bound cannot be checked).
    loaded: bool,
    /// When this process last took a status of `<node>/<subscription>`.
    posted: HashMap<String, i64>,
}

/// Why a status is not taken now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatusRefusal {
    /// The node has not read the statuses it keeps yet.
    #[error(
        "the node is still reading the statuses it keeps ({topic}); post again in a few seconds"
    )]
    NotLoaded {
        /// The internal topic.
        topic: String,
    },
    /// The same subscription posted less than [`MIN_POST_INTERVAL`] ago.
    #[error("subscription {subscription} of node {node} posted a status less than {}s ago; post once every {}s", MIN_POST_INTERVAL.as_secs(), SAMPLE_EVERY.as_secs())]
    TooSoon {
        /// Subscriber node.
        node: String,
        /// Subscription.
        subscription: String,
    },
    /// The node keeps as many names of this subscriber node as it may.
    #[error("node {node} already has statuses of {MAX_STATUSES_PER_NODE} subscriptions here, each reported within the last {}s; a new subscription name takes the place of one not reported for that long (use stable subscription names)", REPLACEABLE_AFTER.as_secs())]
    TooMany {
        /// Subscriber node.
        node: String,
    },
}

impl Statuses {
    /// Whether `node`'s `status` may be written now; the name whose status
    /// it replaces (whose record is to be deleted), if any. Keeps the
    /// status at once, so posts that come faster than their records are
    /// read back are bounded too.
    pub fn admit(
        &self,
        node: &str,
        status: &SubscriberStatus,
        now: i64,
    ) -> Result<Option<String>, StatusRefusal> {
        let subscription = status.subscription.as_str();
        let mut book = self.inner.write().expect("lock");
        if !book.loaded {
            return Err(StatusRefusal::NotLoaded {
                topic: crate::domain::topics::subscribers().to_owned(),
            });
        }
        let key = status_key(node, subscription);
        let interval = MIN_POST_INTERVAL.as_millis() as i64;
        if book.posted.get(&key).is_some_and(|at| now - at < interval) {
            return Err(StatusRefusal::TooSoon {
                node: node.to_owned(),
                subscription: subscription.to_owned(),
            });
        }
        let replaced = match book.by_node.get(node) {
            Some(names)
                if !names.contains_key(subscription) && names.len() >= MAX_STATUSES_PER_NODE =>
            {
                let stale = REPLACEABLE_AFTER.as_millis() as i64;
                let oldest = names
                    .iter()
                    .min_by_key(|(_, s)| s.ts_ms)
                    .filter(|(_, s)| now - s.ts_ms > stale)
                    .map(|(name, _)| name.clone());
                match oldest {
                    Some(name) => Some(name),
                    None => {
                        return Err(StatusRefusal::TooMany {
                            node: node.to_owned(),
                        })
                    }
                }
            }
            _ => None,
        };
        // Forget posts older than the interval, so the map stays as small
        // as the set of names that post.
        if book.posted.len() > 4 * MAX_STATUSES_PER_NODE {
            book.posted.retain(|_, at| now - *at < interval);
        }
        book.posted.insert(key, now);
        let names = book.by_node.entry(node.to_owned()).or_default();
        if let Some(name) = &replaced {
            names.remove(name);
        }
        names.insert(subscription.to_owned(), status.clone());
        Ok(replaced)
    }

    /// Keeps a record read back: `None` deletes. A new name beyond the
    /// bound of its node is dropped.
    fn keep(&self, node: &str, subscription: &str, status: Option<SubscriberStatus>) {
        let mut book = self.inner.write().expect("lock");
        match status {
            None => {
                if let Some(names) = book.by_node.get_mut(node) {
                    names.remove(subscription);
                    if names.is_empty() {
                        book.by_node.remove(node);
                    }
                }
            }
            Some(status) => {
                let names = book.by_node.entry(node.to_owned()).or_default();
                if names.len() < MAX_STATUSES_PER_NODE || names.contains_key(subscription) {
                    names.insert(subscription.to_owned(), status);
                } else {
                    tracing::debug!(
                        node,
                        "subscriber status over the bound of its node not kept"
                    );
                }
            }
        }
    }

    /// Forgets a status [`Statuses::admit`] took but the node could not
    /// write: it neither counts against its node's bound nor stops a
    /// retry.
    pub fn withdraw(&self, node: &str, subscription: &str) {
        let mut book = self.inner.write().expect("lock");
        book.posted.remove(&status_key(node, subscription));
        if let Some(names) = book.by_node.get_mut(node) {
            names.remove(subscription);
            if names.is_empty() {
                book.by_node.remove(node);
            }
        }
    }

    fn set_loaded(&self) {
        self.inner.write().expect("lock").loaded = true;
    }

    /// What `subscriber`'s statuses naming `topic` say at `now`: the
    /// freshest one, except that one reported within `window_ms` saying
    /// FAILED wins (another subscription of the node reading the same
    /// topic and running does not hide a failing one).
    fn for_topic(
        &self,
        subscriber: &str,
        topic: &str,
        now: i64,
        window_ms: i64,
    ) -> Option<SubscriberStatus> {
        let book = self.inner.read().expect("lock");
        let naming = || {
            book.by_node
                .get(subscriber)
                .into_iter()
                .flat_map(|names| names.values())
                .filter(|r| r.topics.iter().any(|t| t == topic))
        };
        let latest = naming().max_by_key(|r| r.ts_ms)?;
        let failing = naming()
            .filter(|r| r.state == RunState::Failed && now - r.ts_ms <= window_ms)
            .max_by_key(|r| r.ts_ms);
        Some(SubscriberStatus {
            ts_ms: latest.ts_ms,
            ..failing.unwrap_or(latest).clone()
        })
    }
}

/// The readiness check passed once the node has read the statuses it
/// keeps (until then it cannot bound what subscriber nodes post).
pub const CHECK_STATUSES: &str = "subscriber_statuses";

/// What the node serves: (subscriber, dataset) pairs with an active share.
pub type Served = Vec<(String, String)>;

/// The shares in force: the configuration's `[[shares]]` and the catalog's
/// active subscriptions, sorted, each once. The lag board covers these,
/// and a subscriber node's status may name only these.
pub fn served_now(
    config_shares: &[crate::distributor::share::ShareConfig],
    catalog: &crate::state::catalog::CatalogState,
) -> Served {
    let mut out: Served = config_shares
        .iter()
        .map(|s| (s.subscriber.to_string(), s.dataset.clone()))
        .collect();
    out.extend(
        catalog
            .subscriptions
            .values()
            .filter(|s| s.state == crate::state::catalog::SubscriptionState::Active)
            .map(|s| (s.subscriber.clone(), s.dataset.clone())),
    );
    out.sort();
    out.dedup();
    out
}

/// Everything [`monitor`] reads.
#[derive(Clone)]
pub struct MonitorContext {
    /// This node's code.
    pub node: String,
    /// The node's Kafka.
    pub settings: crate::kafka::KafkaSettings,
    /// Active shares, asked each round.
    pub served: Arc<dyn Fn() -> futures::future::BoxFuture<'static, Served> + Send + Sync>,
    /// Feed states and errors of this process.
    pub feeds: crate::source::feeds::FeedStatuses,
    /// Metrics (source gauges are read, lag metrics written).
    pub metrics: crate::metrics::Metrics,
    /// Status window.
    pub window: Duration,
    /// Where [`CHECK_STATUSES`] is reported.
    pub readiness: crate::http::Readiness,
}

/// Reads subscriber reports and keeps `board` and the metrics current
/// until `shutdown`.
pub async fn monitor(
    ctx: MonitorContext,
    board: LagBoard,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let reader = tokio::spawn(read_reports(
        ctx.settings.clone(),
        board.statuses.clone(),
        ctx.readiness.clone(),
    ));
    let watermarks = loop {
        match crate::kafka::Watermarks::new(&ctx.settings) {
            Ok(w) => break w,
            Err(e) => {
                tracing::warn!(error = %e, "lag monitor cannot reach Kafka yet");
                tokio::select! {
                    _ = shutdown.cancelled() => { reader.abort(); return; }
                    _ = tokio::time::sleep(SAMPLE_EVERY) => {}
                }
            }
        }
    };
    let mut sampler = Sampler {
        groups: crate::kafka::GroupOffsets::new(&ctx.settings),
        watermarks,
        window_ms: ctx.window.as_millis() as i64,
        samples: HashMap::new(),
        known_partitions: HashMap::new(),
        origins: HashMap::new(),
        ctx,
        board,
    };
    let mut feed_samples: HashMap<String, VecDeque<(i64, f64, f64)>> = HashMap::new();
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let now = now_ms();
        let served = (sampler.ctx.served)().await;
        let mut rows = Vec::new();
        for (subscriber, dataset) in &served {
            rows.push(sampler.subscription(subscriber, dataset, now).await);
        }
        let feeds = feed_rows(&sampler.ctx, &mut feed_samples, now, sampler.window_ms);
        let mut state = sampler.board.inner.write().expect("lock");
        state.board = Board {
            node: sampler.ctx.node.clone(),
            updated_ms: now,
            subscriptions: rows,
            feeds,
        };
    }
    reader.abort();
}

/// What the monitor keeps between samples.
struct Sampler {
    ctx: MonitorContext,
    board: LagBoard,
    groups: crate::kafka::GroupOffsets,
    watermarks: crate::kafka::Watermarks,
    window_ms: i64,
    /// The window of samples per (subscriber, dataset).
    samples: HashMap<(String, String), VecDeque<Sample>>,
    /// Partition counts of share topics, asked again every 30 s.
    known_partitions: HashMap<String, (i32, std::time::Instant)>,
    /// Origin times of records at (topic, partition, offset), read once.
    origins: HashMap<(String, i32, i64), Option<i64>>,
}

/// Where a subscriber's group stands in a share topic now.
struct Position {
    /// Records waiting.
    lag: i64,
    /// Sum of the next offsets.
    position: i64,
    /// Whether every partition's end could be read.
    measurable: bool,
    /// The origin time the commits carry, if any.
    last_origin_ms: Option<i64>,
    /// (partition, next offset) of each partition read.
    nexts: Vec<(i32, i64)>,
}

impl Sampler {
    /// A share topic's partition count: a metadata request every 30 s,
    /// not every sample.
    async fn partitions(&mut self, topic: &str) -> i32 {
        match self.known_partitions.get(topic) {
            Some((n, at)) if *n > 0 && at.elapsed() < PARTITIONS_EVERY => *n,
            _ => {
                let n = crate::kafka::partition_count(&self.ctx.settings, topic)
                    .await
                    .unwrap_or(0) as i32;
                self.known_partitions
                    .insert(topic.to_owned(), (n, std::time::Instant::now()));
                n
            }
        }
    }

    /// Where `group` stands in `topic` against its high watermarks; sets
    /// the consumer group lag metrics of each partition.
    async fn position(&mut self, topic: &str, group: &str, partitions: i32, now: i64) -> Position {
        let parts: Vec<(String, i32)> = (0..partitions).map(|p| (topic.to_owned(), p)).collect();
        let committed = self
            .groups
            .positions(group, &parts)
            .await
            .unwrap_or_else(|_| vec![None; parts.len()]);
        let mut at = Position {
            lag: 0,
            position: 0,
            measurable: true,
            last_origin_ms: None,
            nexts: Vec::new(),
        };
        for p in 0..partitions {
            let high = match self.watermarks.high(topic, p).await {
                Ok(h) => h,
                Err(_) => {
                    at.measurable = false;
                    continue;
                }
            };
            let (next, metadata) = committed
                .get(p as usize)
                .cloned()
                .flatten()
                .unwrap_or((0, String::new()));
            // A commit past the end of the topic counts as the end.
            let next = next.clamp(0, high);
            // The subscriber writes this metadata (any client of its group
            // can): a time outside the plausible is not believed.
            if let Ok(m) = serde_json::from_str::<CommitMetadata>(&metadata) {
                at.last_origin_ms = at.last_origin_ms.max(plausible_origin(m.origin_ms, now));
            }
            at.nexts.push((p, next));
            let waiting = high - next;
            at.lag += waiting;
            at.position += next;
            let part = p.to_string();
            let labels = [group, topic, part.as_str()];
            self.ctx
                .metrics
                .consumergroup_lag
                .with_label_values(&labels)
                .set(waiting);
            let secs = lag_seconds(waiting, at.last_origin_ms, now);
            self.ctx
                .metrics
                .consumergroup_lag_seconds
                .with_label_values(&labels)
                .set(secs.unwrap_or(0.0));
        }
        at
    }

    /// Seconds behind: from the commits' metadata, or, when no commit says
    /// when the last applied change was made, from the share topic.
    async fn seconds_behind(&mut self, topic: &str, at: &Position, now: i64) -> Option<f64> {
        if at.last_origin_ms.is_some() || at.lag <= 0 {
            return lag_seconds(at.lag, at.last_origin_ms, now);
        }
        let mut last = None;
        for (p, next) in at.nexts.iter().filter(|(_, n)| *n > 0) {
            let key = (topic.to_owned(), *p, next - 1);
            if !self.origins.contains_key(&key) {
                let ms = origin_at(&self.ctx.settings, &key.0, key.1, key.2).await;
                self.origins.insert(key.clone(), ms);
            }
            last = last.max(self.origins[&key]);
        }
        if self.origins.len() > 10_000 {
            self.origins.clear();
        }
        lag_seconds(at.lag, last, now)
    }

    /// One subscription's sample and row: its lag, its status over the
    /// window, its metrics and history.
    async fn subscription(&mut self, subscriber: &str, dataset: &str, now: i64) -> SubscriptionLag {
        let topic = crate::domain::topics::share(subscriber, dataset);
        let partitions = self.partitions(&topic).await;
        // The freshest status of the subscriber that reads this topic, and
        // where its group says it is.
        let report = self
            .board
            .statuses
            .for_topic(subscriber, &topic, now, self.window_ms);
        let group = crate::domain::topics::subscriber_group(&topic);
        let at = self.position(&topic, &group, partitions, now).await;
        let lag_secs = self.seconds_behind(&topic, &at, now).await;
        let sample = Sample {
            at_ms: now,
            position: at.position,
            lag_messages: at.lag,
            lag_seconds: lag_secs,
            reported_ms: report.as_ref().map(|r| r.ts_ms),
            failing: report.as_ref().is_some_and(|r| r.state == RunState::Failed),
        };
        let key = (subscriber.to_owned(), dataset.to_owned());
        let window = self.samples.entry(key.clone()).or_default();
        window.push_back(sample);
        while window
            .front()
            .is_some_and(|s| now - s.at_ms > self.window_ms * 2)
        {
            window.pop_front();
        }
        let status = if at.measurable {
            evaluate(window.make_contiguous(), self.window_ms)
        } else {
            Status::Err
        };
        self.record(&key, sample, status);
        SubscriptionLag {
            subscriber: subscriber.to_owned(),
            dataset: dataset.to_owned(),
            topic,
            group: Some(group),
            lag_messages: at.lag,
            lag_seconds: lag_secs,
            status,
            last_report_ms: report.as_ref().map(|r| r.ts_ms),
            last_applied_ms: at.last_origin_ms,
            error: report.and_then(|r| r.error),
        }
    }

    /// The subscription's metrics and its hour of history.
    fn record(&self, key: &(String, String), sample: Sample, status: Status) {
        let (subscriber, dataset) = (key.0.as_str(), key.1.as_str());
        let metrics = &self.ctx.metrics;
        let labels = [subscriber, dataset];
        metrics
            .subscription_lag_messages
            .with_label_values(&labels)
            .set(sample.lag_messages);
        if let Some(s) = sample.lag_seconds {
            metrics
                .subscription_lag_seconds
                .with_label_values(&labels)
                .set(s);
        }
        for st in Status::ALL {
            metrics
                .subscription_status
                .with_label_values(&[subscriber, dataset, st.label()])
                .set(i64::from(st == status));
        }
        let mut state = self.board.inner.write().expect("lock");
        let h = state.history.entry(key.clone()).or_default();
        h.push_back((sample, status));
        while h.len() > HISTORY {
            h.pop_front();
        }
    }
}

/// The `backflow.origin_ts` header of the record at `offset` (`None` when
/// it cannot be read within a few seconds).
async fn origin_at(
    settings: &crate::kafka::KafkaSettings,
    topic: &str,
    partition: i32,
    offset: i64,
) -> Option<i64> {
    let consumer = crate::kafka::Consumer::assigned(
        settings,
        "backflow-lag-probe",
        &[(topic.to_owned(), partition, Some(offset))],
        None,
    )
    .ok()?;
    let record = tokio::time::timeout(Duration::from_secs(3), consumer.recv())
        .await
        .ok()?
        .ok()?;
    std::str::from_utf8(record.header(crate::domain::headers::HEADER_ORIGIN_TS)?)
        .ok()?
        .parse()
        .ok()
}

/// How far ahead of this node's clock an origin time may be (clock skew
/// between a department's database and the node).
const MAX_CLOCK_SKEW_MS: i64 = 5 * 60 * 1000;

/// An origin time a subscriber's commit metadata claims, if it can be one:
/// after the epoch and not further ahead than the clock skew allowed.
fn plausible_origin(origin_ms: Option<i64>, now: i64) -> Option<i64> {
    origin_ms.filter(|o| *o > 0 && *o <= now.saturating_add(MAX_CLOCK_SKEW_MS))
}

/// Seconds behind: 0 when nothing waits, else now − origin of the last
/// applied change (`None` when it never applied one).
fn lag_seconds(waiting: i64, last_origin_ms: Option<i64>, now: i64) -> Option<f64> {
    if waiting <= 0 {
        return Some(0.0);
    }
    last_origin_ms.map(|o| (now.saturating_sub(o).max(0)) as f64 / 1000.0)
}

/// A running feed's status from its samples over the window (time,
/// events read, lag in seconds), newest last, as Burrow rates a consumer:
/// OK when it had no lag at some point of the window (an idle feed whose
/// last batch was in flight when sampled is not stalled); STALL when it
/// had lag throughout and read nothing; WARN when its lag only grew.
fn source_status(w: &VecDeque<(i64, f64, f64)>, now: i64, window_ms: i64) -> Status {
    let (Some(first), Some(last)) = (w.front(), w.back()) else {
        return Status::Ok;
    };
    if last.2 <= 0.0 || now - first.0 < window_ms / 2 || w.len() < 3 {
        return Status::Ok;
    }
    if w.iter().any(|s| s.2 <= 0.0) {
        Status::Ok
    } else if w.iter().all(|s| s.1 == first.1) {
        Status::Stall
    } else if w.iter().zip(w.iter().skip(1)).all(|(a, b)| b.2 >= a.2) {
        Status::Warn
    } else {
        Status::Ok
    }
}

fn feed_rows(
    ctx: &MonitorContext,
    samples: &mut HashMap<String, VecDeque<(i64, f64, f64)>>,
    now: i64,
    window_ms: i64,
) -> Vec<FeedLag> {
    let statuses = ctx.feeds.snapshot();
    let mut out = Vec::new();
    for (name, st) in statuses {
        let lag = ctx
            .metrics
            .source_lag_seconds
            .with_label_values(&[&name])
            .get();
        let bytes = ctx
            .metrics
            .source_lag_bytes
            .with_label_values(&[&name])
            .get();
        let events: f64 = ["c", "u", "d", "r"]
            .iter()
            .map(|op| {
                ctx.metrics
                    .source_events
                    .with_label_values(&[name.as_str(), op])
                    .get() as f64
            })
            .sum();
        let w = samples.entry(name.clone()).or_default();
        w.push_back((now, events, lag));
        while w.front().is_some_and(|s| now - s.0 > window_ms) {
            w.pop_front();
        }
        use crate::source::feeds::FeedState;
        let state = st.state.as_str().to_owned();
        let status = match st.state {
            FeedState::Failed => Status::Err,
            FeedState::Paused => Status::Stop,
            // Another process runs it.
            FeedState::Standby => Status::Ok,
            _ => source_status(w, now, window_ms),
        };
        for s in Status::ALL {
            ctx.metrics
                .feed_status
                .with_label_values(&[&name, s.label()])
                .set(i64::from(s == status));
        }
        out.push(FeedLag {
            feed: name,
            state,
            lag_seconds: lag,
            lag_bytes: bytes,
            status,
            error: st.error.clone(),
        });
    }
    out
}

/// Follows `backflow._subscribers`, keeping the last status per
/// subscription in `statuses` (bounded per subscriber node, none dated in
/// the future); marks them loaded once the topic is read up to where it
/// was when reading began.
async fn read_reports(
    settings: crate::kafka::KafkaSettings,
    statuses: Statuses,
    readiness: crate::http::Readiness,
) {
    let loaded = || {
        statuses.set_loaded();
        readiness.set(CHECK_STATUSES, crate::http::CheckState::Ok);
    };
    loop {
        let n = crate::kafka::partition_count(&settings, crate::domain::topics::subscribers())
            .await
            .unwrap_or(0) as i32;
        if n == 0 {
            tokio::time::sleep(SAMPLE_EVERY).await;
            continue;
        }
        let parts: Vec<i32> = (0..n).collect();
        let ends = match ends_now(&settings, &parts).await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read subscriber reports");
                tokio::time::sleep(SAMPLE_EVERY).await;
                continue;
            }
        };
        let consumer = match crate::kafka::Consumer::follow_partitions(
            &settings,
            crate::domain::topics::subscribers(),
            &parts,
        ) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read subscriber reports");
                tokio::time::sleep(SAMPLE_EVERY).await;
                continue;
            }
        };
        // Partitions not yet read up to their end at start.
        let mut behind: HashMap<i32, i64> = ends.into_iter().filter(|(_, end)| *end > 0).collect();
        if behind.is_empty() {
            loaded();
        }
        loop {
            // A read that waits this long has nothing more to read (a
            // partition whose end is a marker, not a record).
            let next = tokio::time::timeout(Duration::from_secs(5), consumer.recv()).await;
            let r = match next {
                Err(_) => {
                    if !behind.is_empty() {
                        behind.clear();
                        loaded();
                    }
                    continue;
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "reading subscriber reports failed; reading them again");
                    tokio::time::sleep(SAMPLE_EVERY).await;
                    break;
                }
                Ok(Ok(r)) => r,
            };
            if behind
                .get(&r.partition)
                .is_some_and(|end| r.offset + 1 >= *end)
            {
                behind.remove(&r.partition);
                if behind.is_empty() {
                    loaded();
                }
            }
            let Some(key) = r.key.as_deref().and_then(|k| std::str::from_utf8(k).ok()) else {
                continue;
            };
            let Some((node, subscription)) = key.split_once('/') else {
                continue;
            };
            let Some(payload) = r.payload.as_deref() else {
                statuses.keep(node, subscription, None);
                continue;
            };
            match taken(key, payload, now_ms()) {
                Some(status) => statuses.keep(node, subscription, Some(status)),
                None => tracing::debug!("subscriber status not taken (unreadable, too large, another node's topics or dated in the future)"),
            }
        }
    }
}

/// The high watermark of each partition of `backflow._subscribers` now.
async fn ends_now(
    settings: &crate::kafka::KafkaSettings,
    parts: &[i32],
) -> Result<Vec<(i32, i64)>, crate::kafka::KafkaError> {
    let watermarks = crate::kafka::Watermarks::new(settings)?;
    let mut out = Vec::with_capacity(parts.len());
    for p in parts {
        out.push((
            *p,
            watermarks
                .high(crate::domain::topics::subscribers(), *p)
                .await?,
        ));
    }
    Ok(out)
}

/// The key of a subscriber node's status in [`crate::domain::topics::subscribers`].
pub fn status_key(subscriber_node: &str, subscription: &str) -> String {
    format!("{subscriber_node}/{subscription}")
}

/// A status as the node takes it from `subscriber_node`: refused when it is
/// too large or unreadable, its subscription name breaks
/// [`crate::domain::topics::validate_subscription_name`], it names no topic or
/// more than [`MAX_STATUS_TOPICS`], a topic that is not a share topic of
/// `subscriber_node` for some dataset (under this node's prefix, a legal
/// Kafka name), or a state other than `RUNNING`/`FAILED`. The error text
/// is rid of control and invisible characters and cut to
/// [`MAX_ERROR_BYTES`]; the time is the node's (`now`), not the sender's.
/// Whether the datasets are shared with the sender is for the caller.
pub fn accept_status(
    subscriber_node: &str,
    payload: &[u8],
    now: i64,
) -> Result<SubscriberStatus, String> {
    if payload.len() > MAX_REPORT_BYTES {
        return Err(format!(
            "a status is at most {MAX_REPORT_BYTES} bytes; this one is {}",
            payload.len()
        ));
    }
    let mut status: SubscriberStatus = serde_json::from_slice(payload)
        .map_err(|e| format!("a status is JSON {{subscription, topics, state, error}}: {e}"))?;
    crate::domain::topics::validate_subscription_name(&status.subscription)
        .map_err(|e| format!("subscription: {e}"))?;
    if status.topics.is_empty() || status.topics.len() > MAX_STATUS_TOPICS {
        return Err(format!(
            "topics: the share topics the subscription reads, 1 to {MAX_STATUS_TOPICS}"
        ));
    }
    for t in &status.topics {
        let own = crate::domain::topics::is_legal_topic(t)
            && crate::domain::topics::share_parts(crate::domain::topics::prefix(), t)
                .is_some_and(|(node, _)| node == subscriber_node);
        if !own {
            return Err(format!(
                "topic {:?} is not a share topic of node {subscriber_node} ({}<dataset>, a legal Kafka topic name)",
                t.chars().take(80).collect::<String>(),
                crate::domain::topics::share(subscriber_node, ""),
            ));
        }
    }
    status.topics.sort();
    status.topics.dedup();
    if let Some(e) = &mut status.error {
        *e = plain_text(e, MAX_ERROR_BYTES);
    }
    status.ts_ms = now;
    Ok(status)
}

/// `text` as an operator may read it anywhere (a terminal, a page, a log):
/// control characters and the invisible characters that hide text or
/// change its direction become spaces; cut to at most `max` bytes on a
/// character boundary.
fn plain_text(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max));
    for c in text.chars() {
        let c = if c.is_control() || is_invisible(c) {
            ' '
        } else {
            c
        };
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    out
}

/// Characters that do not read as what they are: every control, format
/// (zero-width, bidirectional, tags), private-use, unassigned and surrogate
/// character, line and paragraph separators, spaces other than the plain
/// one, and the fillers that draw as blank (Hangul and Braille blanks, the
/// object replacement character).
fn is_invisible(c: char) -> bool {
    use unicode_properties::{GeneralCategory, GeneralCategoryGroup, UnicodeGeneralCategory};
    c.general_category_group() == GeneralCategoryGroup::Other
        || matches!(
            c.general_category(),
            GeneralCategory::LineSeparator | GeneralCategory::ParagraphSeparator
        )
        || (c.general_category() == GeneralCategory::SpaceSeparator && c != ' ')
        || matches!(
            c,
            '\u{115F}' | '\u{1160}' | '\u{2800}' | '\u{3164}' | '\u{FFA0}' | '\u{FFFC}'
        )
        || ('\u{FE00}'..='\u{FE0F}').contains(&c)
}

/// A record of [`crate::domain::topics::subscribers`] as the reading node takes it: its key
/// `<node>/<subscription>` names the subscriber node, which must own every
/// topic the status names, and the status's subscription (checked again:
/// the topic is the node's, but a status is only as good as its check),
/// and it may not be dated ahead of `now` by more than a minute.
fn taken(key: &str, payload: &[u8], now: i64) -> Option<SubscriberStatus> {
    let (node, subscription) = key.split_once('/')?;
    let stamped: SubscriberStatus = serde_json::from_slice(payload).ok()?;
    if stamped.ts_ms > now + 60_000 {
        return None;
    }
    let mut status = accept_status(node, payload, now).ok()?;
    if status.subscription != subscription {
        return None;
    }
    status.ts_ms = stamped.ts_ms;
    Some(status)
}

/// A subscriber's side, every [`SAMPLE_EVERY`] until `shutdown`: commits
/// the positions `status` holds to each share topic's subscriber group on
/// the upper cluster (the origin time of the last applied change as the
/// commit's metadata), and posts whether it runs to the upper node
/// (`{registry_url}/api/lag/status`, with the node's token). Best effort: a
/// failure is logged once and retried.
pub async fn report(
    settings: crate::kafka::KafkaSettings,
    upstream: crate::subscribe::config::UpstreamConfig,
    status: tokio::sync::watch::Receiver<Report>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let client = match upstream.http_client(Duration::from_secs(10)) {
        Ok(c) => c,
        Err(reason) => {
            tracing::error!(%reason, "cannot report this subscription's status to the upper node");
            return;
        }
    };
    let url = format!(
        "{}/api/lag/status",
        upstream.registry_url.trim_end_matches('/')
    );
    let mut warned = false;
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let r = status.borrow().clone();
        if r.positions.is_empty() {
            continue;
        }
        let metadata = serde_json::to_string(&CommitMetadata {
            origin_ms: r.last_origin_ms,
        })
        .expect("serializes");
        let mut by_topic: std::collections::BTreeMap<&str, Vec<(String, i32, i64)>> =
            std::collections::BTreeMap::new();
        for p in &r.positions {
            by_topic.entry(p.topic.as_str()).or_default().push((
                p.topic.clone(),
                p.partition,
                p.next,
            ));
        }
        let mut failed = None;
        for (topic, positions) in &by_topic {
            let group = crate::domain::topics::subscriber_group(topic);
            if let Err(e) =
                crate::kafka::group_commit(&settings, &group, positions, &metadata).await
            {
                failed = Some(format!("committing to consumer group {group}: {e}"));
            }
        }
        let body = SubscriberStatus {
            subscription: r.subscription.clone(),
            topics: by_topic.keys().map(|t| t.to_string()).collect(),
            state: r.state,
            error: r.error.clone(),
            ts_ms: now_ms(),
        };
        let mut post = client.post(&url).json(&body);
        if let Some(t) = &upstream.registry_token {
            post = post.bearer_auth(t);
        }
        let posted = match post.send().await {
            Ok(resp) if resp.status().is_success() => Ok(()),
            Ok(resp) => {
                let code = resp.status();
                let reason = resp.text().await.unwrap_or_default();
                Err(format!(
                    "posting the status to {url}: {code} {}",
                    reason.chars().take(300).collect::<String>()
                ))
            }
            Err(e) => Err(format!("posting the status to {url}: {e}")),
        };
        match failed.map(Err).unwrap_or(posted) {
            Ok(()) => warned = false,
            Err(e) if !warned => {
                warned = true;
                tracing::warn!(subscription = %r.subscription, error = %e, "cannot tell the upper node where the subscription is (its lag shows as STOP there)");
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A feed's status from its samples (time, events read, lag seconds):
    /// an idle feed sampled with a batch in flight is not stalled.
    #[test]
    fn an_idle_feed_caught_with_a_batch_in_flight_is_ok_and_one_stuck_is_stall() {
        const WIN: i64 = 60_000;
        let at = |samples: &[(i64, f64, f64)]| samples.iter().copied().collect::<VecDeque<_>>();
        // Idle: nothing read, lag 0 except when a poll's batch was in flight.
        let idle = at(&[
            (0, 5.0, 0.0),
            (20_000, 5.0, 0.05),
            (40_000, 5.0, 0.0),
            (60_000, 5.0, 0.04),
        ]);
        assert_eq!(source_status(&idle, 60_000, WIN), Status::Ok);
        // Records waiting the whole window and nothing read: stalled.
        let stuck = at(&[
            (0, 5.0, 3.0),
            (20_000, 5.0, 23.0),
            (40_000, 5.0, 43.0),
            (60_000, 5.0, 63.0),
        ]);
        assert_eq!(source_status(&stuck, 60_000, WIN), Status::Stall);
        // Reading, but the lag only grows: falling behind.
        let behind = at(&[
            (0, 5.0, 3.0),
            (20_000, 9.0, 5.0),
            (40_000, 12.0, 8.0),
            (60_000, 20.0, 9.0),
        ]);
        assert_eq!(source_status(&behind, 60_000, WIN), Status::Warn);
        // Too short a window to judge.
        assert_eq!(
            source_status(&at(&[(50_000, 5.0, 3.0)]), 60_000, WIN),
            Status::Ok
        );
    }

    /// A district writes its group's commit metadata itself: an origin time
    /// of i64::MIN once made the lag monitor panic (and stop for everyone).
    #[test]
    fn an_implausible_origin_time_is_not_believed_and_cannot_overflow() {
        let now = 1_700_000_000_000;
        for bad in [i64::MIN, -1, 0, now + MAX_CLOCK_SKEW_MS + 1, i64::MAX] {
            assert_eq!(plausible_origin(Some(bad), now), None, "{bad}");
            // Even if one came through, the arithmetic saturates.
            assert!(lag_seconds(5, Some(bad), now).is_some());
        }
        assert_eq!(plausible_origin(Some(now - 1_000), now), Some(now - 1_000));
        assert_eq!(lag_seconds(5, Some(now - 1_500), now), Some(1.5));
        assert_eq!(lag_seconds(0, Some(i64::MIN), now), Some(0.0));
    }

    fn s(at: i64, position: i64, lag: i64, reported: Option<i64>) -> Sample {
        Sample {
            at_ms: at,
            position,
            lag_messages: lag,
            lag_seconds: None,
            reported_ms: reported,
            failing: false,
        }
    }

    const W: i64 = 10_000;

    #[test]
    fn caught_up_is_ok() {
        let w = [s(0, 5, 3, Some(0)), s(2_000, 8, 0, Some(2_000))];
        assert_eq!(evaluate(&w, W), Status::Ok);
        // Lag now, but zero earlier in the window: OK (Burrow rule 1).
        let w: Vec<Sample> = (0..6)
            .map(|i| s(i * 2_000, i, if i == 2 { 0 } else { 4 }, Some(i * 2_000)))
            .collect();
        assert_eq!(evaluate(&w, W), Status::Ok);
    }

    #[test]
    fn no_report_within_the_window_while_records_wait_is_stop() {
        let w: Vec<Sample> = (0..8).map(|i| s(i * 2_000, 10, 5 + i, Some(0))).collect();
        assert_eq!(evaluate(&w, W), Status::Stop);
        assert_eq!(evaluate(&[s(0, 0, 3, None)], W), Status::Stop);
        // Nothing waits: a silent subscriber is not in error.
        assert_eq!(evaluate(&[s(60_000, 10, 0, Some(0))], W), Status::Ok);
    }

    #[test]
    fn reporting_but_not_moving_while_records_wait_is_stall() {
        let w: Vec<Sample> = (0..8)
            .map(|i| s(i * 2_000, 10, 5, Some(i * 2_000)))
            .collect();
        assert_eq!(evaluate(&w, W), Status::Stall);
    }

    #[test]
    fn moving_but_lag_growing_at_every_step_is_warn_and_shrinking_is_ok() {
        let w: Vec<Sample> = (0..8)
            .map(|i| s(i * 2_000, 10 + i, 5 + i, Some(i * 2_000)))
            .collect();
        assert_eq!(evaluate(&w, W), Status::Warn);
        let w: Vec<Sample> = (0..8)
            .map(|i| s(i * 2_000, 10 + i, 20 - i, Some(i * 2_000)))
            .collect();
        assert_eq!(evaluate(&w, W), Status::Ok);
    }

    #[test]
    fn a_subscriber_that_reports_failing_is_never_ok() {
        let failing = |at, lag, reported| Sample {
            failing: true,
            ..s(at, 10, lag, reported)
        };
        // Records wait and it says it fails: stuck at once, not after a
        // window of samples.
        assert_eq!(evaluate(&[failing(0, 5, Some(0))], W), Status::Stall);
        // Nothing waits, but it will not apply the next change.
        assert_eq!(evaluate(&[failing(0, 0, Some(0))], W), Status::Err);
        // A failure it reported long ago while records wait: it stopped.
        assert_eq!(evaluate(&[failing(60_000, 5, Some(0))], W), Status::Stop);
        assert_eq!(evaluate(&[failing(60_000, 0, Some(0))], W), Status::Ok);
    }

    #[test]
    fn lag_seconds_is_zero_when_nothing_waits() {
        assert_eq!(lag_seconds(0, Some(1_000), 9_000), Some(0.0));
        assert_eq!(lag_seconds(3, Some(1_000), 9_000), Some(8.0));
        assert_eq!(lag_seconds(3, None, 9_000), None);
    }
}

#[cfg(test)]
mod status_tests {
    use super::*;

    fn status(topics: &[&str], error: &str, ts_ms: i64) -> Vec<u8> {
        named("s", topics, error, ts_ms)
    }

    fn named(name: &str, topics: &[&str], error: &str, ts_ms: i64) -> Vec<u8> {
        serde_json::to_vec(&SubscriberStatus {
            subscription: name.into(),
            topics: topics.iter().map(|t| t.to_string()).collect(),
            state: RunState::Failed,
            error: Some(error.into()),
            ts_ms,
        })
        .unwrap()
    }

    const OWN: &[&str] = &["backflow.share.330106.a.b"];

    #[test]
    fn a_status_is_taken_only_for_the_senders_own_topics_bounded_and_stamped_by_the_node() {
        let now = 1_000_000;
        let got = accept_status("330106", &status(OWN, "down", 9_000_000_000_000), now).unwrap();
        assert_eq!(got.error.unwrap(), "down");
        // The node's clock, not the sender's 2255.
        assert_eq!(got.ts_ms, now);
        // Another district's topic, or a topic that only starts alike.
        let long = format!("backflow.share.330106.{}", "a".repeat(7000));
        for theirs in [
            "backflow.share.330108.a.b",
            "backflow.share.3301061.a.b",
            "backflow.raw.a.b",
            "backflow.share.330106.",
            "backflow.share.330106.a b",
            "backflow.share.330106.a\0",
            long.as_str(),
        ] {
            let err =
                accept_status("330106", &status(&[OWN[0], theirs], "x", now), now).unwrap_err();
            let shown: String = format!("{theirs:?}").chars().take(40).collect();
            assert!(err.contains(&shown) && err.len() < 400, "{err}");
        }
        for name in ["", " ", "a b", "a\u{202e}b", "a\u{200b}", "人口", "a.b"] {
            let err = accept_status("330106", &named(name, OWN, "x", now), now).unwrap_err();
            assert!(err.starts_with("subscription:"), "{name:?}: {err}");
        }
        assert!(accept_status("330106", &status(&[], "x", now), now).is_err());
        let many: Vec<String> = (0..=MAX_STATUS_TOPICS)
            .map(|i| format!("backflow.share.330106.a.t{i}"))
            .collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(accept_status("330106", &status(&many, "x", now), now).is_err());
        // A long error is cut, on a character boundary.
        let long = "错".repeat(300);
        let got = accept_status("330106", &status(OWN, &long, now), now)
            .unwrap()
            .error
            .unwrap();
        assert!(
            got.len() <= MAX_ERROR_BYTES && got.starts_with('错'),
            "{}",
            got.len()
        );
        // Controls and invisible characters become spaces; markup stays
        // text (whoever shows it escapes it).
        let got = accept_status(
            "330106",
            &status(OWN, "\u{1b}[31mred\u{202e}\u{200b}\n<b>x</b>", now),
            now,
        )
        .unwrap()
        .error
        .unwrap();
        assert_eq!(got, " [31mred   <b>x</b>");
        // Line and paragraph separators, other spaces, invisible formatting
        // and blank fillers too.
        let got = accept_status(
            "330106",
            &status(
                OWN,
                "a\u{2028}b\u{2029}c\u{1D173}d\u{2800}e\u{FFFC}f\u{00A0}g\u{E000}h",
                now,
            ),
            now,
        )
        .unwrap()
        .error
        .unwrap();
        assert_eq!(got, "a b c d e f g h");
        // Chinese text and ordinary punctuation stay as they are.
        let got = accept_status("330106", &status(OWN, "数据库已满：请扩容。", now), now)
            .unwrap()
            .error
            .unwrap();
        assert_eq!(got, "数据库已满：请扩容。");
        // The most topics a subscription reads fit in a status, at Kafka's
        // longest names.
        let most: Vec<String> = (0..MAX_STATUS_TOPICS)
            .map(|i| format!("backflow.share.330106.a.{i:0>225}"))
            .collect();
        assert!(most
            .iter()
            .all(|t| t.len() == crate::domain::topics::MAX_TOPIC_LEN));
        let most: Vec<&str> = most.iter().map(String::as_str).collect();
        accept_status(
            "330106",
            &status(&most, &"e".repeat(MAX_ERROR_BYTES), now),
            now,
        )
        .unwrap();
        // Too large a record, or not JSON: refused.
        let huge = vec![b' '; MAX_REPORT_BYTES + 1];
        assert!(accept_status("330106", &huge, now).is_err());
        assert!(accept_status("330106", b"not json", now).is_err());
    }

    #[test]
    fn a_status_read_back_must_match_its_key_and_not_be_from_the_future() {
        let now = 1_000_000;
        let ok = status(OWN, "down", now - 5);
        assert_eq!(taken("330106/s", &ok, now).unwrap().ts_ms, now - 5);
        assert!(taken("330108/s", &ok, now).is_none());
        assert!(taken("no-node", &ok, now).is_none());
        assert!(taken("330106/s", &status(OWN, "x", 9_000_000_000_000), now).is_none());
        // The key names the subscription the status is of.
        assert!(taken("330106/other", &ok, now).is_none());
    }

    fn kept(node: &str, name: &str, ts_ms: i64) -> SubscriberStatus {
        SubscriberStatus {
            subscription: name.into(),
            topics: vec![format!("backflow.share.{node}.a.b")],
            state: RunState::Running,
            error: None,
            ts_ms,
        }
    }

    #[test]
    fn each_subscriber_node_has_its_own_bound_of_names() {
        let statuses = Statuses::default();
        let now = 10_000_000;
        // Nothing is taken before the node has read what it keeps.
        let admit =
            |node: &str, name: &str, at: i64| statuses.admit(node, &kept(node, name, at), at);
        assert!(matches!(
            admit("330106", "a", now),
            Err(StatusRefusal::NotLoaded { .. })
        ));
        statuses.set_loaded();
        // Bounded as posted, before any record is read back.
        for i in 0..MAX_STATUSES_PER_NODE {
            assert_eq!(admit("330108", &format!("n{i}"), now), Ok(None));
        }
        // 330108 is full: a new name is refused, a known one is taken...
        let err = admit("330108", "new", now + 2_000).unwrap_err();
        assert_eq!(
            err,
            StatusRefusal::TooMany {
                node: "330108".into()
            }
        );
        assert!(err.to_string().contains("64"), "{err}");
        assert_eq!(admit("330108", "n3", now + 2_000), Ok(None));
        // ...but not twice within the interval.
        assert!(matches!(
            admit("330108", "n3", now + 2_500),
            Err(StatusRefusal::TooSoon { .. })
        ));
        // Another node is not affected.
        assert_eq!(admit("330106", "a", now), Ok(None));
        assert!(statuses
            .for_topic("330106", "backflow.share.330106.a.b", now, 10_000)
            .is_some());
        // Records read back beyond a node's bound are not kept.
        statuses.keep("330108", "extra", Some(kept("330108", "extra", now)));
        assert!(statuses.inner.read().unwrap().by_node["330108"].len() == MAX_STATUSES_PER_NODE);
        // A name not reported for an hour gives its place to a new one.
        let later = now + REPLACEABLE_AFTER.as_millis() as i64 + 1;
        statuses.keep("330108", "n0", Some(kept("330108", "n0", now - 1)));
        for i in 1..MAX_STATUSES_PER_NODE {
            let name = format!("n{i}");
            statuses.keep("330108", &name, Some(kept("330108", &name, later)));
        }
        assert_eq!(admit("330108", "new", later), Ok(Some("n0".into())));
        // A deletion read back frees the name.
        statuses.keep("330108", "n5", None);
        assert_eq!(admit("330108", "newer", later), Ok(None));
        assert_eq!(
            admit("330108", "newest", later + 2_000),
            Err(StatusRefusal::TooMany {
                node: "330108".into()
            })
        );
        // A status that could not be written is withdrawn: its name frees
        // a place and may be posted again at once.
        statuses.withdraw("330108", "newer");
        assert_eq!(admit("330108", "newer", later + 2_100), Ok(None));
        // A failing subscription is not hidden by a running one of the same
        // node reading the same topic, while its failure is fresh.
        let topic = "backflow.share.330108.a.b";
        statuses.keep(
            "330108",
            "n1",
            Some(SubscriberStatus {
                state: RunState::Failed,
                error: Some("disk full".into()),
                ..kept("330108", "n1", later)
            }),
        );
        statuses.keep("330108", "n2", Some(kept("330108", "n2", later + 1_000)));
        let seen = statuses
            .for_topic("330108", topic, later + 2_000, 10_000)
            .unwrap();
        assert_eq!(seen.state, RunState::Failed);
        assert_eq!(seen.error.as_deref(), Some("disk full"));
        assert!(
            seen.ts_ms >= later + 1_000,
            "the freshest report time is kept"
        );
        let stale = statuses
            .for_topic("330108", topic, later + 60_000, 10_000)
            .unwrap();
        assert_eq!(stale.state, RunState::Running);
    }
}
