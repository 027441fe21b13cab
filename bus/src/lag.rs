//! Lag that means something, per subscription and feed, as Burrow judges
//! consumers.
//!
//! A subscriber process (`backflow subscribe`) tells the upper node's Kafka,
//! every few seconds, where it is: it commits the next offset it applies in
//! each share-topic partition to the consumer group named like the share
//! topic ([`crate::topics::subscriber_group`]), with the origin commit time
//! of the last change it applied as the commit's metadata. Its offsets of
//! record stay in its own database (with the rows); the group's offsets are
//! for everyone who watches lag the Kafka way: `kafka-consumer-groups
//! --describe`, Burrow, kafka-lag-exporter, and this node's lag board.
//!
//! What offsets cannot say, whether the subscriber runs or fails and why,
//! the subscriber posts to the upper node with its own token
//! (`POST /api/lag/status`): the node takes a status only from the
//! subscriber node whose share topics it names, bounded
//! ([`MAX_REPORT_BYTES`], the error text cut at [`MAX_ERROR_BYTES`]),
//! stamps it with its own clock, and writes it to the compacted internal
//! topic `backflow._subscribers` keyed `<subscriber node>/<subscription>`,
//! so every process of the node sees it. Only the node writes that topic
//! (it is internal, like the catalog); the node reading it checks again
//! that the key's node owns every topic named, and keeps at most
//! [`MAX_REPORTS`]. Committed offsets past the end of a topic count as the
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
//!   cannot apply), `STOP` (no report within the window while lag > 0: the
//!   subscriber is down or cut off), `ERR` (the lag cannot be measured).
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
/// The largest status record the node takes.
pub const MAX_REPORT_BYTES: usize = 8 * 1024;
/// The longest error text the node keeps of a status.
pub const MAX_ERROR_BYTES: usize = 1024;
/// The most statuses the node keeps.
pub const MAX_REPORTS: usize = 10_000;
/// The most share topics one status names.
pub const MAX_STATUS_TOPICS: usize = 256;
/// The longest subscription name a status carries.
pub const MAX_SUBSCRIPTION_NAME: usize = 128;

/// What a subscriber publishes besides its offsets: whether it runs, and
/// why not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubscriberStatus {
    /// Subscription name.
    pub subscription: String,
    /// The share topics it reads.
    pub topics: Vec<String>,
    /// `RUNNING` or `FAILED`.
    pub state: String,
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
    pub state: String,
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
}

/// Burrow's rules over a window of samples (oldest first), the last one
/// being now.
pub fn evaluate(samples: &[Sample], window_ms: i64) -> Status {
    let Some(last) = samples.last() else {
        return Status::Ok;
    };
    if last.lag_messages <= 0 {
        return Status::Ok;
    }
    // No report within the window while records wait: stopped.
    if last.reported_ms.is_none_or(|r| last.at_ms - r > window_ms) {
        return Status::Stop;
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
/// the API.
#[derive(Clone, Default)]
pub struct LagBoard {
    inner: Arc<RwLock<BoardState>>,
}

#[derive(Default)]
struct BoardState {
    board: Board,
    history: HashMap<(String, String), VecDeque<(Sample, Status)>>,
}

/// Samples kept per subscription (one hour at [`SAMPLE_EVERY`]).
const HISTORY: usize = 1800;

impl LagBoard {
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

/// What the node serves: (subscriber, dataset) pairs with an active share.
pub type Served = Vec<(String, String)>;

/// Everything [`monitor`] reads.
pub struct MonitorContext {
    /// This node's code.
    pub node: String,
    /// The node's Kafka.
    pub settings: crate::kafka::KafkaSettings,
    /// Active shares, asked each round.
    pub served: Arc<dyn Fn() -> futures::future::BoxFuture<'static, Served> + Send + Sync>,
    /// Feed states and errors of this process.
    pub feeds: crate::feeds::FeedStatuses,
    /// Metrics (source gauges are read, lag metrics written).
    pub metrics: crate::metrics::Metrics,
    /// Status window.
    pub window: Duration,
}

/// Reads subscriber reports and keeps `board` and the metrics current
/// until `shutdown`.
pub async fn monitor(
    ctx: MonitorContext,
    board: LagBoard,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let reports: Arc<RwLock<HashMap<String, SubscriberStatus>>> = Arc::default();
    let groups = crate::kafka::GroupOffsets::new(&ctx.settings);
    let reader = tokio::spawn(read_reports(ctx.settings.clone(), reports.clone()));
    let window_ms = ctx.window.as_millis() as i64;
    let mut samples: HashMap<(String, String), VecDeque<Sample>> = HashMap::new();
    let mut feed_samples: HashMap<String, VecDeque<(i64, f64, f64)>> = HashMap::new();
    let mut known_partitions: HashMap<String, (i32, std::time::Instant)> = HashMap::new();
    // Origin times of records at (topic, partition, offset), read once.
    let mut origins: HashMap<(String, i32, i64), Option<i64>> = HashMap::new();
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
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let now = now_ms();
        let served = (ctx.served)().await;
        let reports_now = reports.read().expect("lock").clone();
        let mut rows = Vec::new();
        for (subscriber, dataset) in &served {
            let topic = crate::topics::share(subscriber, dataset);
            // A metadata request per share topic every 30 s, not every sample.
            let partitions = match known_partitions.get(&topic) {
                Some((n, at)) if *n > 0 && at.elapsed() < PARTITIONS_EVERY => *n,
                _ => {
                    let n = crate::kafka::partition_count(&ctx.settings, &topic)
                        .await
                        .unwrap_or(0) as i32;
                    known_partitions.insert(topic.clone(), (n, std::time::Instant::now()));
                    n
                }
            };
            // The freshest status of a subscriber that reads this topic,
            // and where its group says it is.
            let report = reports_now
                .values()
                .filter(|r| r.topics.contains(&topic))
                .max_by_key(|r| r.ts_ms);
            let group = crate::topics::subscriber_group(&topic);
            let parts: Vec<(String, i32)> = (0..partitions).map(|p| (topic.clone(), p)).collect();
            let committed = groups
                .positions(&group, &parts)
                .await
                .unwrap_or_else(|_| vec![None; parts.len()]);
            let mut lag = 0i64;
            let mut position = 0i64;
            let mut measurable = true;
            let mut last_origin_ms: Option<i64> = None;
            let mut nexts: Vec<(i32, i64)> = Vec::new();
            for p in 0..partitions {
                let high = match watermarks.high(&topic, p).await {
                    Ok(h) => h,
                    Err(_) => {
                        measurable = false;
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
                if let Ok(m) = serde_json::from_str::<CommitMetadata>(&metadata) {
                    last_origin_ms = last_origin_ms.max(m.origin_ms);
                }
                nexts.push((p, next));
                let waiting = high - next;
                lag += waiting;
                position += next;
                let part = p.to_string();
                let labels = [group.as_str(), topic.as_str(), part.as_str()];
                ctx.metrics
                    .consumergroup_lag
                    .with_label_values(&labels)
                    .set(waiting);
                let secs = lag_seconds(waiting, last_origin_ms, now);
                ctx.metrics
                    .consumergroup_lag_seconds
                    .with_label_values(&labels)
                    .set(secs.unwrap_or(0.0));
            }
            let lag_secs = if last_origin_ms.is_none() && lag > 0 {
                // No commit says when the last applied change was made:
                // read it from the share topic.
                let mut last = None;
                for (p, next) in nexts.iter().filter(|(_, n)| *n > 0) {
                    let at = (topic.clone(), *p, next - 1);
                    if !origins.contains_key(&at) {
                        let ms = origin_at(&ctx.settings, &at.0, at.1, at.2).await;
                        origins.insert(at.clone(), ms);
                    }
                    last = last.max(origins[&at]);
                }
                lag_seconds(lag, last, now)
            } else {
                lag_seconds(lag, last_origin_ms, now)
            };
            if origins.len() > 10_000 {
                origins.clear();
            }
            let sample = Sample {
                at_ms: now,
                position,
                lag_messages: lag,
                lag_seconds: lag_secs,
                reported_ms: report.map(|r| r.ts_ms),
            };
            let key = (subscriber.clone(), dataset.clone());
            let window = samples.entry(key.clone()).or_default();
            window.push_back(sample);
            while window
                .front()
                .is_some_and(|s| now - s.at_ms > window_ms * 2)
            {
                window.pop_front();
            }
            let status = if measurable {
                evaluate(window.make_contiguous(), window_ms)
            } else {
                Status::Err
            };
            let labels = [subscriber.as_str(), dataset.as_str()];
            ctx.metrics
                .subscription_lag_messages
                .with_label_values(&labels)
                .set(lag);
            if let Some(s) = lag_secs {
                ctx.metrics
                    .subscription_lag_seconds
                    .with_label_values(&labels)
                    .set(s);
            }
            for st in Status::ALL {
                ctx.metrics
                    .subscription_status
                    .with_label_values(&[subscriber, dataset, st.label()])
                    .set(i64::from(st == status));
            }
            {
                let mut state = board.inner.write().expect("lock");
                let h = state.history.entry(key).or_default();
                h.push_back((sample, status));
                while h.len() > HISTORY {
                    h.pop_front();
                }
            }
            rows.push(SubscriptionLag {
                subscriber: subscriber.clone(),
                dataset: dataset.clone(),
                topic,
                group: Some(group),
                lag_messages: lag,
                lag_seconds: lag_secs,
                status,
                last_report_ms: report.map(|r| r.ts_ms),
                last_applied_ms: last_origin_ms,
                error: report.and_then(|r| r.error.clone()),
            });
        }
        let feeds = feed_rows(&ctx, &mut feed_samples, now, window_ms);
        let mut state = board.inner.write().expect("lock");
        state.board = Board {
            node: ctx.node.clone(),
            updated_ms: now,
            subscriptions: rows,
            feeds,
        };
    }
    reader.abort();
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
    std::str::from_utf8(record.header(crate::feed::HEADER_ORIGIN_TS)?)
        .ok()?
        .parse()
        .ok()
}

/// Seconds behind: 0 when nothing waits, else now − origin of the last
/// applied change (`None` when it never applied one).
fn lag_seconds(waiting: i64, last_origin_ms: Option<i64>, now: i64) -> Option<f64> {
    if waiting <= 0 {
        return Some(0.0);
    }
    last_origin_ms.map(|o| ((now - o).max(0)) as f64 / 1000.0)
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
        let state = st.state.to_owned();
        let status = match state.as_str() {
            "FAILED" => Status::Err,
            "PAUSED" => Status::Stop,
            _ if lag <= 0.0 => Status::Ok,
            _ => {
                let first = w.front().copied().unwrap_or((now, events, lag));
                if now - first.0 < window_ms / 2 || w.len() < 3 {
                    Status::Ok
                } else if w.iter().all(|s| s.1 == first.1) {
                    Status::Stall
                } else if w.iter().zip(w.iter().skip(1)).all(|(a, b)| b.2 >= a.2) {
                    Status::Warn
                } else {
                    Status::Ok
                }
            }
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
/// subscription: bounded, and none dated in the future.
async fn read_reports(
    settings: crate::kafka::KafkaSettings,
    reports: Arc<RwLock<HashMap<String, SubscriberStatus>>>,
) {
    loop {
        let n = crate::kafka::partition_count(&settings, crate::topics::subscribers())
            .await
            .unwrap_or(0) as i32;
        if n == 0 {
            tokio::time::sleep(SAMPLE_EVERY).await;
            continue;
        }
        let parts: Vec<i32> = (0..n).collect();
        let consumer = match crate::kafka::Consumer::follow_partitions(
            &settings,
            crate::topics::subscribers(),
            &parts,
        ) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read subscriber reports");
                tokio::time::sleep(SAMPLE_EVERY).await;
                continue;
            }
        };
        loop {
            match consumer.recv().await {
                Ok(r) => {
                    let Some(key) = r
                        .key
                        .as_deref()
                        .map(|k| String::from_utf8_lossy(k).into_owned())
                    else {
                        continue;
                    };
                    let Some(payload) = r.payload.as_deref() else {
                        reports.write().expect("lock").remove(&key);
                        continue;
                    };
                    match taken(&key, payload, now_ms()) {
                        Some(status) => {
                            let mut all = reports.write().expect("lock");
                            if all.len() < MAX_REPORTS || all.contains_key(&key) {
                                all.insert(key, status);
                            }
                        }
                        None => tracing::debug!("subscriber status not taken (unreadable, too large, another node's topics or dated in the future)"),
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading subscriber reports failed; reading them again");
                    tokio::time::sleep(SAMPLE_EVERY).await;
                    break;
                }
            }
        }
    }
}

/// The key of a subscriber node's status in [`crate::topics::subscribers`].
pub fn status_key(subscriber_node: &str, subscription: &str) -> String {
    format!("{subscriber_node}/{subscription}")
}

/// A status as the node takes it from `subscriber_node`: refused when it is
/// too large or unreadable, names no topic or more than
/// [`MAX_STATUS_TOPICS`], names a share topic of another node, or has a
/// state other than `RUNNING`/`FAILED`. The error text is cut to
/// [`MAX_ERROR_BYTES`]; the time is the node's (`now`), not the sender's.
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
    if status.subscription.is_empty()
        || status.subscription.len() > MAX_SUBSCRIPTION_NAME
        || status.subscription.chars().any(char::is_control)
    {
        return Err(format!(
            "subscription: 1 to {MAX_SUBSCRIPTION_NAME} bytes, no control characters"
        ));
    }
    if status.topics.is_empty() || status.topics.len() > MAX_STATUS_TOPICS {
        return Err(format!(
            "topics: the share topics the subscription reads, 1 to {MAX_STATUS_TOPICS}"
        ));
    }
    let own = crate::topics::share(subscriber_node, "");
    if let Some(t) = status.topics.iter().find(|t| !t.starts_with(&own)) {
        return Err(format!(
            "topic {t:?} is not a share topic of node {subscriber_node} (they start with {own})"
        ));
    }
    if !matches!(status.state.as_str(), "RUNNING" | "FAILED") {
        return Err("state: RUNNING or FAILED".to_owned());
    }
    if let Some(e) = &mut status.error {
        if e.len() > MAX_ERROR_BYTES {
            let mut cut = MAX_ERROR_BYTES;
            while !e.is_char_boundary(cut) {
                cut -= 1;
            }
            e.truncate(cut);
        }
    }
    status.ts_ms = now;
    Ok(status)
}

/// A record of [`crate::topics::subscribers`] as the reading node takes it: its key
/// names the subscriber node, which must own every topic the status names
/// (checked again: the topic is the node's, but a status is only as good as
/// its check), and it may not be dated ahead of `now` by more than a minute.
fn taken(key: &str, payload: &[u8], now: i64) -> Option<SubscriberStatus> {
    let (node, _) = key.split_once('/')?;
    let stamped: SubscriberStatus = serde_json::from_slice(payload).ok()?;
    if stamped.ts_ms > now + 60_000 {
        return None;
    }
    let mut status = accept_status(node, payload, now).ok()?;
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
    upstream: crate::config::UpstreamConfig,
    status: tokio::sync::watch::Receiver<Report>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("an HTTP client");
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
            let group = crate::topics::subscriber_group(topic);
            if let Err(e) =
                crate::kafka::group_commit(&settings, &group, positions, &metadata).await
            {
                failed = Some(format!("committing to consumer group {group}: {e}"));
            }
        }
        let body = SubscriberStatus {
            subscription: r.subscription.clone(),
            topics: by_topic.keys().map(|t| t.to_string()).collect(),
            state: r.state.clone(),
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

    fn s(at: i64, position: i64, lag: i64, reported: Option<i64>) -> Sample {
        Sample {
            at_ms: at,
            position,
            lag_messages: lag,
            lag_seconds: None,
            reported_ms: reported,
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
        serde_json::to_vec(&SubscriberStatus {
            subscription: "s".into(),
            topics: topics.iter().map(|t| t.to_string()).collect(),
            state: "FAILED".into(),
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
        for theirs in [
            "backflow.share.330108.a.b",
            "backflow.share.3301061.a.b",
            "backflow.raw.a.b",
        ] {
            let err =
                accept_status("330106", &status(&[OWN[0], theirs], "x", now), now).unwrap_err();
            assert!(err.contains(theirs), "{err}");
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
    }
}
