//! The distributor: reads each raw topic once and writes every active
//! share's version of each change to `backflow.share.<subscriber>.<dataset>`.
//!
//! raw record → decode (the node's registry) → for each share of the
//! dataset: row filter with both images (a row leaving a subscriber's
//! jurisdiction becomes a delete for it), field policy (absent, masked,
//! hashed) → encode with the share's own schema (derived from the policy
//! and registered under the share topic's subjects) → share topic, with
//! `backflow.origin` and `backflow.origin_ts` kept, this node appended to
//! `backflow.hops`, and `backflow.policy` set. A delete is followed by a
//! tombstone, as on raw topics.
//!
//! Exactly once (`kafka.distributor_transactions`, on by default): the share records of
//! the raw records read since the last commit, their delivery records in
//! the audit trail and the raw offsets after them commit in one Kafka
//! transaction (see [`transaction`]); a crash anywhere leaves every change
//! in each share topic, and every delivery in the audit trail, once for
//! `read_committed` readers. Without transactions the raw topic's offsets
//! are stored only after Kafka acknowledged every share record produced
//! from the records before them: a crash replays, and the subscribers'
//! version guard makes the replay harmless in their databases.
//!
//! A subscription activated while the node runs is backfilled first:
//! in a transactional distributor, inside its transactions, partition by
//! partition, by the process holding each raw partition ([`catchup`]);
//! without transactions, by a reader beside the running distributor
//! ([`backfill_and_join`], at least once).
//!
//! Every process serving a node is a member of the node's distributor
//! consumer group (`<prefix>distributor.<node>`, cooperative-sticky): Kafka
//! gives each raw partition to one process, so in steady state each change
//! is distributed once; a process that stops or is killed loses its
//! partitions to the others (after `kafka.session_timeout_ms` when killed),
//! which resume from its last commit. Before giving partitions up a process
//! aborts its open transaction (or, without transactions, commits what it
//! settled, so at most its batches in flight are delivered twice).

mod catchup;
pub mod ended;
pub mod grant_check;
pub mod retract;
pub mod share;
mod transaction;

use crate::domain::headers::{HEADER_HOPS, HEADER_ORIGIN, HEADER_ORIGIN_TS, HEADER_POLICY};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use backflow_schemas::registry_client::subject_for;
use backflow_schemas::{
    table_from_schemas, unframe, EventReader, FramedReaders, Op, TableCodec, TableDesc, TableTarget,
};
use tokio_util::sync::CancellationToken;

use crate::distributor::share::ShareConfig;
use crate::domain::policy::{JurisdictionIndex, SharePolicy, ShareTable};
use crate::domain::topics;
use crate::kafka::{Acks, Batch, ConsumedRecord, Consumer, KafkaError, OutgoingRecord, TopicSpec};
use crate::registry::RegistryError;
use crate::source::feed::FeedContext;
use crate::state::audit::Auditor;
use crate::state::catalog::{Catalog, Subscription, SubscriptionState};
use catchup::{CatchUp, Known};
use transaction::Transaction;

/// Most raw records handled between two offset stores.
const BATCH: usize = 1_000;
/// Processed batches that may wait to be settled (their acknowledgements
/// awaited, their delivery audited, their offsets stored) while the next
/// ones are processed.
const IN_FLIGHT_BATCHES: usize = 8;

/// How many `kafka.transaction_interval_ms` a transactional distributor
/// that is behind (its batches come full) keeps a transaction open: each
/// commit costs round trips to the transaction and group coordinators
/// (10-30 ms measured), which a 25 ms transaction paid every time.
const BACKLOG_SPAN: u32 = 10;

/// How long the distributor waits for records before it checks whether its
/// position passed a commit marker (see [`idle_store`]).
const IDLE_STORE: Duration = Duration::from_secs(1);

/// Why the distributor stopped.
#[derive(Debug, thiserror::Error)]
pub enum DistributorError {
    /// Kafka failed.
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    /// The audit trail could not be written.
    #[error("writing the audit trail failed: {0}")]
    Audit(#[source] KafkaError),
    /// Another process registered this process's transactional id: it
    /// uses the same `kafka.replica` (or is this process restarted while
    /// the old one still ran).
    #[error("the distributor's Kafka transactions were fenced: another process uses transactional id {0}; give each process serving the node its own `kafka.replica` (e.g. the pod name)")]
    Fenced(String),
    /// The task settling processed batches stopped abnormally.
    #[error("settling delivered batches failed: {0}")]
    Settle(String),
    /// A grant was withdrawn or changed while records under it were not
    /// settled yet: the run stops without them (an open transaction is
    /// aborted, offsets are not stored) and restarts at once, reading
    /// them again under the grants in force.
    #[error("a grant was withdrawn or changed while records under it were in flight")]
    GrantChanged,
    /// A share schema could not be registered.
    #[error("registering the schema of {topic} failed: {source}")]
    Schema {
        topic: String,
        #[source]
        source: RegistryError,
    },
}

impl crate::domain::restart::Kind for DistributorError {
    fn kind(&self) -> crate::domain::restart::ErrorKind {
        match self {
            DistributorError::Kafka(e) => e.kind(),
            DistributorError::Schema { source, .. } => source.kind(),
            DistributorError::Fenced(_) => crate::domain::restart::ErrorKind::Definite,
            DistributorError::Audit(_)
            | DistributorError::Settle(_)
            | DistributorError::GrantChanged => crate::domain::restart::ErrorKind::Transient,
        }
    }
}

/// One share, ready to run.
struct Share {
    policy: SharePolicy,
    /// The policy version as its header carries it.
    policy_header: String,
    topic: String,
    /// For a share that joined a running distributor after its backfill:
    /// per raw partition, the first offset delivered here (the backfill
    /// delivered everything before it); a partition it has not joined on
    /// delivers nothing to it.
    from: Option<HashMap<i32, i64>>,
    /// `backflow_distributor_records_total` of this subscriber, per op,
    /// resolved once instead of per record.
    records: crate::metrics::ByOp,
    /// The dataset's compatibility level, which the share's subjects follow.
    compatibility: Option<crate::registry::Level>,
    /// Stopped: nothing more is delivered to it in this run.
    failed: std::sync::atomic::AtomicBool,
    /// Given by a catalog subscription ([`ShareConfig::granted`]).
    granted: bool,
}

impl Share {
    fn new(
        share: &ShareConfig,
        policy: SharePolicy,
        from: Option<HashMap<i32, i64>>,
        metrics: &crate::metrics::Metrics,
    ) -> Self {
        let records =
            crate::metrics::ByOp::new(&metrics.distributor_records, &[&policy.subscriber]);
        Self {
            policy_header: policy.version.to_string(),
            topic: topics::share(share.subscriber.as_str(), &share.dataset),
            policy,
            from,
            records,
            compatibility: share.compatibility,
            failed: std::sync::atomic::AtomicBool::new(false),
            granted: share.granted,
        }
    }

    /// Stops delivering to this share and says so once: it alone stops,
    /// every other share goes on.
    fn fail(&self, kind: &'static str, reason: String, failures: &Failures) {
        if self.failed.swap(true, std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        tracing::error!(subscriber = %self.policy.subscriber, dataset = %self.policy.dataset, kind, %reason, "share stopped; the other shares go on");
        let _ = failures.send(ShareFailure {
            subscriber: self.policy.subscriber.clone(),
            dataset: self.policy.dataset.clone(),
            kind,
            reason,
        });
    }

    fn has_failed(&self) -> bool {
        self.failed.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// A share the distributor stopped because it could not deliver to it.
#[derive(Debug, Clone)]
pub struct ShareFailure {
    /// The subscriber node.
    pub subscriber: String,
    /// The dataset.
    pub dataset: String,
    /// `schema`, `record_too_large` or `policy` (a bounded metric label).
    pub kind: &'static str,
    /// What happened and how to fix it.
    pub reason: String,
}

/// Where shares that failed are reported.
pub type Failures = tokio::sync::mpsc::UnboundedSender<ShareFailure>;

/// A backfilled share asking the running distributor to take it over.
pub struct JoinRequest {
    share: ShareConfig,
    /// Per raw partition, the offset the backfill delivered up to
    /// (exclusive).
    from: HashMap<i32, i64>,
    reply: tokio::sync::oneshot::Sender<JoinReply>,
}

/// The running distributor's answer to a [`JoinRequest`].
#[derive(Debug)]
enum JoinReply {
    /// From now on the distributor delivers offsets at and after `from`.
    Joined,
    /// The distributor is already past the backfill on some partitions:
    /// its positions, which the backfill must reach first.
    Behind(HashMap<i32, i64>),
    /// The running distributor does not read the dataset (or none runs):
    /// backfill up to its committed offsets and restart it with the share.
    NotConsumed,
}

/// A share's table for one source table version.
struct ShareCodec {
    table: ShareTable,
    codec: TableCodec,
    key_id: u32,
    value_id: u32,
}

/// A source table version and its shares' versions.
struct Version {
    reader: EventReader,
    /// Per share of the dataset (same order); `None` when the policy does
    /// not fit the table (logged once).
    shares: Vec<Option<ShareCodec>>,
    /// Which of them a change can concern, by its region code.
    index: JurisdictionIndex,
}

/// What a run of the distributor is given besides its shares.
struct RunInputs<'a> {
    /// Backfilled shares asking to join (without transactions).
    joins: &'a mut tokio::sync::mpsc::Receiver<JoinRequest>,
    /// Shares added to a transactional run, to catch up ([`catchup`]).
    adds: &'a mut tokio::sync::mpsc::Receiver<ShareConfig>,
    /// The catalog's subscriptions when the run began.
    known: Known,
    /// The catalog, whose changes the run checks its granted shares
    /// against before each batch.
    catalog: Option<Catalog>,
}

/// Runs the distributor for `shares` until shutdown or an error. In a
/// transactional run, a share marked `catch_up` gets the raw topic's
/// records before the live ones ([`catchup`]).
async fn run(
    shares: &[ShareConfig],
    ctx: &FeedContext,
    auditor: &Auditor,
    inputs: RunInputs<'_>,
    failures: &Failures,
    shutdown: &CancellationToken,
) -> Result<(), DistributorError> {
    let RunInputs {
        joins,
        adds,
        known,
        catalog,
    } = inputs;
    let by_dataset = group(shares, &ctx.metrics);
    let mut specs: Vec<TopicSpec> = Vec::new();
    for (dataset, list) in &by_dataset {
        // The raw topic too, so the distributor can subscribe before the
        // feed first runs.
        specs.push(TopicSpec::compacted(
            topics::raw(dataset),
            ctx.partitions,
            ctx.replication_factor,
        ));
        for s in list {
            specs.push(TopicSpec::compacted(
                s.topic.clone(),
                ctx.partitions,
                ctx.replication_factor,
            ));
        }
    }
    ctx.admin.ensure(&specs).await?;
    let raw: Vec<String> = by_dataset.keys().map(|d| topics::raw(d)).collect();
    // Where this run starts on each raw partition: the group's committed
    // offsets (the beginning when none). Then the next offset to distribute.
    let mut position: HashMap<(String, i32), i64> = HashMap::new();
    for topic in &raw {
        let n = crate::kafka::partition_count(&ctx.settings, topic).await?;
        let parts: Vec<(String, i32)> = (0..n as i32).map(|p| (topic.clone(), p)).collect();
        let committed =
            crate::kafka::group_committed(&ctx.settings, &group_id(&ctx.node), &parts).await?;
        for (tp, o) in parts.into_iter().zip(committed) {
            position.insert(tp, o.unwrap_or(0));
        }
    }
    // A transactional run registers its id before it joins the group: that
    // ends what an earlier run of this process left open.
    let mut txn = match ctx.distributor_transactions {
        Some(interval) => {
            let id = topics::distributor_transaction(&ctx.node, &ctx.replica);
            Some(Transaction::register(ctx, id, interval).await?)
        }
        None => None,
    };
    // Every process serving the node is a member of its distributor group:
    // Kafka spreads the raw partitions over them and moves a stopped one's
    // partitions to the others. `position` starts from the commits and
    // follows what this process reads.
    let subscribed: Vec<&str> = raw.iter().map(String::as_str).collect();
    let consumer = Arc::new(Consumer::member(
        &ctx.settings,
        &group_id(&ctx.node),
        &subscribed,
        Some(ctx.metrics.distributor_partitions.clone()),
        Some(ctx.metrics.clone()),
        txn.as_ref().map(Transaction::revoke_hook),
    )?);
    tracing::info!(
        datasets = by_dataset.len(),
        shares = shares.len(),
        transactional = txn.is_some(),
        "distributor started"
    );
    // In a transaction, share records go through its producer.
    let txn_ctx = txn.as_ref().map(|t| FeedContext {
        publisher: t.publisher().clone(),
        ..ctx.clone()
    });
    let catchup = txn.as_ref().map(|_| {
        let mut c = CatchUp::new(&ctx.settings, &group_id(&ctx.node), known);
        // Every catalog share: its entries say where it stands on each
        // partition (a subscription still to backfill, or one a process
        // that did not know it passed over).
        for s in shares.iter().filter(|s| s.granted) {
            if by_dataset.get(&s.dataset).is_some_and(|list| {
                list.iter()
                    .any(|l| l.policy.subscriber == s.subscriber.as_str())
            }) {
                c.gate(s);
            }
        }
        c
    });
    let mut state = RunState {
        ctx: txn_ctx.as_ref().unwrap_or(ctx),
        failures,
        by_dataset,
        readers: FramedReaders::new(),
        versions: HashMap::new(),
        position,
        received: HashMap::new(),
        catchup,
        catalog: catalog.map(|c| {
            let changes = c.changes();
            (c, changes)
        }),
        withdrawals: 0,
        withdrawals_at_open: 0,
    };
    state.apply_gates();
    let outcome = match txn.as_mut() {
        Some(t) => {
            let outcome = state
                .run_transactional(t, &consumer, auditor, joins, adds, shutdown)
                .await;
            if outcome.is_err() {
                t.abort().await;
            }
            outcome
        }
        None => {
            state
                .run_settling(&consumer, auditor, joins, shutdown)
                .await
        }
    };
    outcome?;
    tracing::info!("distributor stopped");
    Ok(())
}

/// What one run of the distributor keeps between batches.
struct RunState<'a> {
    /// The node's context; its publisher is the transaction's in a
    /// transactional run.
    ctx: &'a FeedContext,
    failures: &'a Failures,
    by_dataset: HashMap<String, Vec<Share>>,
    readers: FramedReaders,
    versions: HashMap<(u32, u32), Version>,
    /// The next raw offset to distribute, per partition.
    position: HashMap<(String, i32), i64>,
    /// The offset after the last record received, per raw partition.
    received: HashMap<(String, i32), i64>,
    /// Shares catching up (a transactional run).
    catchup: Option<CatchUp>,
    /// The catalog and its changes (see [`RunState::withdraw`]).
    catalog: Option<(Catalog, tokio::sync::watch::Receiver<u64>)>,
    /// Grants withdrawn in this run so far, and the count when the open
    /// transaction began (see [`RunState::commit`]).
    withdrawals: u64,
    withdrawals_at_open: u64,
}

impl RunState<'_> {
    /// At-least-once: processed batches go, oldest first, to a task of
    /// their own that settles them (acknowledgements, audit trail, offsets
    /// stored) while the next ones are processed. Up to IN_FLIGHT_BATCHES
    /// wait for it.
    async fn run_settling(
        &mut self,
        consumer: &Arc<Consumer>,
        auditor: &Auditor,
        joins: &mut tokio::sync::mpsc::Receiver<JoinRequest>,
        shutdown: &CancellationToken,
    ) -> Result<(), DistributorError> {
        let (ready, to_settle) = tokio::sync::mpsc::channel::<InFlight>(IN_FLIGHT_BATCHES);
        let mut settler = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(settle(
            to_settle,
            auditor.clone(),
            consumer.clone(),
        )));
        loop {
            let first = tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(join) = joins.recv() => {
                    self.take_join(join);
                    continue;
                }
                r = consumer.recv() => r?,
                // It ends before the batches do only when it failed.
                ended = &mut settler => return settled(ended),
                _ = tokio::time::sleep(IDLE_STORE), if !self.received.is_empty() => {
                    if let Some(idle) = idle_store(consumer, &mut self.received, &self.ctx.publisher) {
                        if ready.send(idle).await.is_err() {
                            return settled((&mut settler).await);
                        }
                    }
                    continue;
                }
            };
            let batch = more(consumer, first)?;
            let processed = self.process(&batch, joins).await?;
            if ready.send(processed).await.is_err() {
                return settled((&mut settler).await);
            }
        }
        drop(ready);
        settled((&mut settler).await)?;
        let _ = consumer.commit();
        Ok(())
    }

    /// Exactly once: see [`transaction`]; shares catch up in the same
    /// transactions ([`catchup`]).
    async fn run_transactional(
        &mut self,
        txn: &mut Transaction,
        consumer: &Consumer,
        auditor: &Auditor,
        joins: &mut tokio::sync::mpsc::Receiver<JoinRequest>,
        adds: &mut tokio::sync::mpsc::Receiver<ShareConfig>,
        shutdown: &CancellationToken,
    ) -> Result<(), DistributorError> {
        loop {
            // Partitions may have moved while the last receive waited.
            if let Some(again) = txn.aborted(consumer, &[])? {
                self.read_again(again);
            }
            self.follow_assignment(txn, consumer).await?;
            let due = txn.due();
            let replay = self.catchup.as_ref().and_then(CatchUp::replay_consumer);
            let catching_up = self.catchup.as_ref().is_some_and(CatchUp::any_gated);
            let first = tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(join) = joins.recv() => {
                    self.take_join(join);
                    continue;
                }
                Some(share) = adds.recv() => {
                    self.add_gated(&share).await?;
                    continue;
                }
                r = consumer.recv() => r?,
                r = recv_from(replay.as_deref()), if replay.is_some() => {
                    self.open(txn)?;
                    let (processed, full) = self.replay_batch(r?).await?;
                    txn.hold(processed)?;
                    self.commit_if_due(txn, consumer, auditor, full).await?;
                    continue;
                }
                _ = tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)), if due.is_some() => {
                    self.commit(txn, consumer, auditor).await?;
                    continue;
                }
                // Also while shares catch up: partitions newly held are
                // followed (at the loop's top) with no record to wake it.
                _ = tokio::time::sleep(IDLE_STORE), if !self.received.is_empty() || catching_up => {
                    if let Some(idle) = idle_store(consumer, &mut self.received, &self.ctx.publisher) {
                        self.open(txn)?;
                        txn.hold(idle)?;
                    }
                    self.replay_reached(txn)?;
                    continue;
                }
            };
            let batch = more(consumer, first)?;
            if let Some(again) = txn.aborted(consumer, &batch)? {
                self.read_again(again);
                continue;
            }
            // The batch may hold records of partitions assigned as it was
            // received: where they start, and their backfills, first.
            self.follow_assignment(txn, consumer).await?;
            self.open(txn)?;
            let full = batch.len() >= BATCH;
            let processed = self.process(&batch, joins).await?;
            txn.hold(processed)?;
            self.commit_if_due(txn, consumer, auditor, full).await?;
        }
        self.commit(txn, consumer, auditor).await?;
        Ok(())
    }

    /// Caught up (the batch was not full), the transaction commits when
    /// due; behind, it grows up to BACKLOG_SPAN intervals, so a backlog
    /// pays a commit's round trips less often.
    async fn commit_if_due(
        &mut self,
        txn: &mut Transaction,
        consumer: &Consumer,
        auditor: &Auditor,
        full: bool,
    ) -> Result<(), DistributorError> {
        let now = tokio::time::Instant::now();
        if txn
            .due()
            .is_some_and(|at| at <= now && (!full || txn.span_past(BACKLOG_SPAN, now)))
        {
            self.commit(txn, consumer, auditor).await?;
        }
        Ok(())
    }

    /// Commits the open transaction with the backfills' progress.
    ///
    /// Every decision of an owner committed to the catalog before the
    /// transaction's records become visible applies to them: the catalog
    /// is first read to its end, and a grant withdrawn or changed while
    /// the transaction was open (through another process of the node,
    /// whose decision this process may learn after records under the old
    /// grant were written) aborts it. The run then restarts and reads
    /// those raw records again under the grants in force.
    async fn commit(
        &mut self,
        txn: &mut Transaction,
        consumer: &Consumer,
        auditor: &Auditor,
    ) -> Result<(), DistributorError> {
        if txn.is_open() {
            if let Some((catalog, _)) = &self.catalog {
                catalog.caught_up().await?;
            }
            self.withdraw().await;
            if self.withdrawals != self.withdrawals_at_open {
                return Err(DistributorError::GrantChanged);
            }
        }
        let plan = self
            .catchup
            .as_ref()
            .map(|c| c.plan(&self.position))
            .unwrap_or_default();
        if txn
            .commit(consumer, auditor, &self.ctx.metrics, &plan)
            .await?
        {
            if let Some(c) = &mut self.catchup {
                c.committed();
            }
        }
        Ok(())
    }

    /// Opens a transaction unless one is open, noting first where the
    /// backfills stand (what an abort goes back to).
    fn open(&mut self, txn: &mut Transaction) -> Result<(), DistributorError> {
        if !txn.is_open() {
            self.withdrawals_at_open = self.withdrawals;
            if let Some(c) = &mut self.catchup {
                c.begin();
            }
        }
        txn.open()
    }

    /// Follows the partitions this process holds: reads where the live
    /// flow and the backfills start on those newly held, and starts the
    /// next backfill due.
    async fn follow_assignment(
        &mut self,
        txn: &mut Transaction,
        consumer: &Consumer,
    ) -> Result<(), DistributorError> {
        // A share that failed on the live flow is not backfilled either.
        self.ungate_failed();
        let Some(c) = &mut self.catchup else {
            return Ok(());
        };
        if c.sync(consumer, &mut self.position).await? {
            self.apply_gates();
        }
        loop {
            let Some(c) = &self.catchup else {
                return Ok(());
            };
            let Some((key, tp, from, config)) = c.next_replay() else {
                return Ok(());
            };
            let live_at = self.position.get(&tp).copied().unwrap_or(0);
            if from >= live_at {
                // Nothing to read again (an empty partition, or one the
                // live flow has not begun): joins at once.
                self.open(txn)?;
                let c = self.catchup.as_mut().expect("checked above");
                c.joined_at_once(&key, &tp, live_at);
                self.apply_gates();
                continue;
            }
            let Ok(policy) = config.policy() else {
                // Not in the run either (`group` logged why).
                let c = self.catchup.as_mut().expect("checked above");
                c.ungate(|k| k == key);
                continue;
            };
            let share = Share::new(&config, policy, None, &self.ctx.metrics);
            let c = self.catchup.as_mut().expect("checked above");
            c.start_replay(key, tp, from, share, config.dataset.clone())?;
            return Ok(());
        }
    }

    /// Gives each share catching up the partitions it joined on.
    fn apply_gates(&mut self) {
        let Some(c) = &self.catchup else { return };
        for (dataset, list) in self.by_dataset.iter_mut() {
            for s in list.iter_mut() {
                let key = catchup::key_of(&s.policy.subscriber, dataset, s.policy.version);
                if c.is_gated(&key) {
                    s.from = Some(c.live_from(&key, dataset));
                }
            }
        }
    }

    /// A share activated while the run goes on: delivered nothing live
    /// until it caught up on each partition.
    async fn add_gated(&mut self, share: &ShareConfig) -> Result<(), DistributorError> {
        if self.catchup.is_none() {
            return Ok(());
        }
        let policy = match share.policy() {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(subscriber = %share.subscriber, dataset = %share.dataset, error = %e, "share policy unusable; skipped");
                return Ok(());
            }
        };
        let ctx = self.ctx;
        ctx.admin
            .ensure(&[TopicSpec::compacted(
                topics::share(share.subscriber.as_str(), &share.dataset),
                ctx.partitions,
                ctx.replication_factor,
            )])
            .await?;
        let Some(list) = self.by_dataset.get_mut(&share.dataset) else {
            return Ok(());
        };
        if list
            .iter()
            .any(|s| s.policy.subscriber == share.subscriber.as_str())
        {
            return Ok(());
        }
        let Some(c) = &mut self.catchup else {
            return Ok(());
        };
        c.gate(share);
        list.push(Share::new(
            share,
            policy,
            Some(HashMap::new()),
            &self.ctx.metrics,
        ));
        // Cached versions hold one codec per share of the list.
        self.versions.clear();
        self.apply_gates();
        tracing::info!(subscriber = %share.subscriber, dataset = %share.dataset, "share added to the running distributor; it is backfilled before its live changes");
        Ok(())
    }

    /// Delivers a batch of the backfill under way, from `first` on: the
    /// records before where the live flow stands on the partition; at the
    /// first at or past it, the share joins the live flow there.
    async fn replay_batch(
        &mut self,
        first: ConsumedRecord,
    ) -> Result<(InFlight, bool), DistributorError> {
        self.withdraw().await;
        let ctx = self.ctx;
        let c = self
            .catchup
            .as_mut()
            .expect("a backfill runs in a transactional run");
        let Some(r) = c.replay.as_mut() else {
            // Its share was withdrawn meanwhile: nothing delivered.
            return Ok((
                InFlight {
                    acks: ctx.publisher.batch().seal(),
                    raw: RawRanges::new(),
                    tallies: BTreeMap::new(),
                    replay: true,
                },
                false,
            ));
        };
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match r.consumer.try_recv() {
                Some(next) => batch.push(next?),
                None => break,
            }
        }
        let full = batch.len() >= BATCH;
        let live_at = self.position.get(&r.tp).copied().unwrap_or(0);
        let mut sent = ctx.publisher.batch();
        let mut tallies = BTreeMap::new();
        let mut delivered = 0;
        for record in batch.iter().take_while(|r| r.offset < live_at) {
            let mut out = Out {
                sent: &mut sent,
                tallies: &mut tallies,
                failures: self.failures,
            };
            distribute(
                record,
                &r.dataset,
                &r.share,
                ctx,
                &mut r.readers,
                &mut r.versions,
                &mut out,
            )
            .await?;
            delivered += 1;
        }
        let failed = r.share.iter().any(Share::has_failed);
        let reached = delivered < batch.len();
        if failed {
            c.drop_failed();
        } else if reached {
            c.join(live_at);
        } else if let Some(last) = batch.last() {
            c.advanced(last.offset + 1);
        }
        if reached && !failed {
            self.apply_gates();
        }
        Ok((
            InFlight {
                acks: sent.seal(),
                raw: raw_ranges(&batch[..delivered]),
                tallies,
                replay: true,
            },
            full,
        ))
    }

    /// Stops delivering, from the next record on, to granted shares the
    /// catalog no longer has active under their policy version (revoked,
    /// narrowed, expired): the run restarts without them moments later,
    /// but a change read after the owner's decision was applied here is
    /// never delivered under the grant it replaced.
    async fn withdraw(&mut self) {
        let Some((catalog, changes)) = &mut self.catalog else {
            return;
        };
        if !changes.has_changed().unwrap_or(false) {
            return;
        }
        changes.borrow_and_update();
        {
            let st = catalog.state().await;
            let in_force = |subscriber: &str, dataset: &str, version: u32| {
                st.subscriptions
                    .get(&format!("{subscriber}:{dataset}"))
                    .is_some_and(|s| {
                        s.state == SubscriptionState::Active && s.policy_version == version
                    })
            };
            for (dataset, list) in &self.by_dataset {
                for s in list.iter().filter(|s| s.granted && !s.has_failed()) {
                    if !in_force(&s.policy.subscriber, dataset, s.policy.version) {
                        s.failed.store(true, std::sync::atomic::Ordering::Relaxed);
                        self.withdrawals += 1;
                        tracing::info!(subscriber = %s.policy.subscriber, %dataset, policy_version = s.policy.version, "grant withdrawn or changed: nothing more delivered under it");
                    }
                }
            }
        }
        self.ungate_failed();
    }

    /// Stops gating and backfilling the shares that failed or were
    /// withdrawn in this run.
    fn ungate_failed(&mut self) {
        let Some(c) = &mut self.catchup else { return };
        let failed: HashSet<String> = self
            .by_dataset
            .iter()
            .flat_map(|(dataset, list)| {
                list.iter()
                    .filter(|s| s.has_failed())
                    .map(|s| catchup::key_of(&s.policy.subscriber, dataset, s.policy.version))
            })
            .collect();
        if !failed.is_empty() {
            c.ungate(|key| failed.contains(key));
        }
    }

    /// While no record of the backfill comes: joins the share when the
    /// backfill's reader passed where the live flow stands (the rest were
    /// commit markers).
    fn replay_reached(&mut self, txn: &mut Transaction) -> Result<(), DistributorError> {
        let Some(live_at) = self
            .catchup
            .as_ref()
            .and_then(|c| c.replay_reached(&self.position))
        else {
            return Ok(());
        };
        self.open(txn)?;
        if let Some(c) = &mut self.catchup {
            c.join(live_at);
        }
        self.apply_gates();
        Ok(())
    }

    /// After an aborted transaction: reading goes on from `again`, and
    /// the backfills from where the transaction began.
    fn read_again(&mut self, again: transaction::Offsets) {
        for (tp, offset) in again {
            self.position.insert(tp.clone(), offset);
            self.received.insert(tp, offset);
        }
        if let Some(c) = &mut self.catchup {
            c.aborted();
        }
        self.apply_gates();
    }

    fn take_join(&mut self, join: JoinRequest) {
        take_join(
            join,
            &mut self.by_dataset,
            &mut self.versions,
            &self.position,
            &self.ctx.metrics,
        );
    }

    /// Distributes a batch of raw records to every share of their datasets.
    async fn process(
        &mut self,
        batch: &[ConsumedRecord],
        joins: &mut tokio::sync::mpsc::Receiver<JoinRequest>,
    ) -> Result<InFlight, DistributorError> {
        let withdrawn = self.withdrawals;
        self.withdraw().await;
        if self.withdrawals != withdrawn {
            // The rest of the raw records would be skipped for the grant
            // withdrawn and their offsets kept: the run restarts and
            // reads them again under the grants in force instead.
            return Err(DistributorError::GrantChanged);
        }
        let ctx = self.ctx;
        let mut sent = ctx.publisher.batch();
        let mut tallies: BTreeMap<String, Tally> = BTreeMap::new();
        for record in batch {
            let Some(dataset) = topics::dataset_of(&record.topic) else {
                continue;
            };
            let Some(list) = self.by_dataset.get(dataset) else {
                continue;
            };
            let mut out = Out {
                sent: &mut sent,
                tallies: &mut tallies,
                failures: self.failures,
            };
            distribute(
                record,
                dataset,
                list,
                ctx,
                &mut self.readers,
                &mut self.versions,
                &mut out,
            )
            .await?;
            self.position
                .insert((record.topic.clone(), record.partition), record.offset + 1);
        }
        while let Ok(join) = joins.try_recv() {
            self.take_join(join);
        }
        for record in batch {
            self.received
                .insert((record.topic.clone(), record.partition), record.offset + 1);
        }
        // The records themselves are dropped by the caller: settling needs
        // only where they came from.
        Ok(InFlight {
            acks: sent.seal(),
            raw: raw_ranges(batch),
            tallies,
            replay: false,
        })
    }
}

/// The next record of `consumer`; with none, never.
async fn recv_from(consumer: Option<&Consumer>) -> Result<ConsumedRecord, KafkaError> {
    match consumer {
        Some(c) => c.recv().await,
        None => std::future::pending().await,
    }
}

/// A batch: `first`, which waited as long as it took, and what the Kafka
/// client already holds, up to BATCH records. Under load that is a full
/// batch; a light load waits for nothing.
fn more(consumer: &Consumer, first: ConsumedRecord) -> Result<Vec<ConsumedRecord>, KafkaError> {
    let mut batch = vec![first];
    while batch.len() < BATCH {
        match consumer.try_recv() {
            Some(r) => batch.push(r?),
            None => break,
        }
    }
    Ok(batch)
}

/// The consumer group of this node's distributor.
pub fn group_id(node: &str) -> String {
    topics::distributor_group(node)
}

fn group(shares: &[ShareConfig], metrics: &crate::metrics::Metrics) -> HashMap<String, Vec<Share>> {
    let mut by_dataset: HashMap<String, Vec<Share>> = HashMap::new();
    for s in shares {
        let policy = match s.policy() {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(subscriber = %s.subscriber, dataset = %s.dataset, error = %e, "share policy unusable; skipped");
                continue;
            }
        };
        by_dataset
            .entry(s.dataset.clone())
            .or_default()
            .push(Share::new(s, policy, None, metrics));
    }
    by_dataset
}

/// Answers a share's request to join this run: it joins when this run has
/// not gone past the offsets its backfill delivered up to, on any partition.
fn take_join(
    join: JoinRequest,
    by_dataset: &mut HashMap<String, Vec<Share>>,
    versions: &mut HashMap<(u32, u32), Version>,
    position: &HashMap<(String, i32), i64>,
    metrics: &crate::metrics::Metrics,
) {
    let JoinRequest { share, from, reply } = join;
    let Some(list) = by_dataset.get_mut(&share.dataset) else {
        let _ = reply.send(JoinReply::NotConsumed);
        return;
    };
    let raw = topics::raw(&share.dataset);
    let ahead: HashMap<i32, i64> = position
        .iter()
        .filter(|((t, p), at)| *t == raw && **at > from.get(p).copied().unwrap_or(0))
        .map(|((_, p), at)| (*p, *at))
        .collect();
    if !ahead.is_empty() {
        let _ = reply.send(JoinReply::Behind(ahead));
        return;
    }
    let policy = match share.policy() {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(subscriber = %share.subscriber, dataset = %share.dataset, error = %e, "share policy unusable");
            let _ = reply.send(JoinReply::NotConsumed);
            return;
        }
    };
    list.push(Share::new(&share, policy, Some(from), metrics));
    // Cached versions hold one codec per share of the list.
    versions.clear();
    tracing::info!(subscriber = %share.subscriber, dataset = %share.dataset, "backfilled share joined the running distributor");
    let _ = reply.send(JoinReply::Joined);
}

/// How a backfill ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backfilled {
    /// The running distributor took the share over where the backfill
    /// stopped; nothing else was interrupted.
    Joined,
    /// Delivered up to the distributor group's committed offsets; the
    /// distributor must restart with the share to go on from there.
    UpToCommitted,
    /// Stopped by shutdown before it finished: nothing is recorded, the
    /// next start backfills again.
    Interrupted,
}

/// Delivers a newly active share's current state while the running
/// distributor goes on for the other shares: reads the raw topic from its
/// beginning up to its end, then asks the running distributor to take the
/// share over from there (`joins`); when the distributor is ahead, reads on
/// to where it stands and asks again. When no running distributor reads the
/// dataset (`consumed` false, or the distributor says so), it delivers up
/// to the group's committed offsets instead, where the distributor will
/// start with the share.
/// Returns the records delivered and how it ended.
pub async fn backfill_and_join(
    share: &ShareConfig,
    ctx: &FeedContext,
    auditor: &Auditor,
    joins: &tokio::sync::mpsc::Sender<JoinRequest>,
    consumed: bool,
    failures: &Failures,
    shutdown: &CancellationToken,
) -> Result<(u64, Backfilled), DistributorError> {
    let topic = topics::raw(&share.dataset);
    let by_dataset = group(std::slice::from_ref(share), &ctx.metrics);
    let Some(list) = by_dataset.get(&share.dataset) else {
        return Ok((0, Backfilled::UpToCommitted));
    };
    ctx.admin
        .ensure(&[
            TopicSpec::compacted(&topic, ctx.partitions, ctx.replication_factor),
            TopicSpec::compacted(
                topics::share(share.subscriber.as_str(), &share.dataset),
                ctx.partitions,
                ctx.replication_factor,
            ),
        ])
        .await?;
    let n = crate::kafka::partition_count(&ctx.settings, &topic).await? as i32;
    let partitions: Vec<i32> = (0..n).collect();
    let watermarks = crate::kafka::Watermarks::new(&ctx.settings)?;
    let mut target: HashMap<i32, i64> = HashMap::new();
    for p in &partitions {
        target.insert(*p, watermarks.high(&topic, *p).await?);
    }
    let mut reader = BackfillReader::new(share, list, ctx, &partitions)?;
    let mut joining = consumed;
    loop {
        if joining {
            reader
                .deliver_until(&target, auditor, failures, shutdown)
                .await?;
        }
        if shutdown.is_cancelled() {
            return Ok((reader.total, Backfilled::Interrupted));
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        // Where the backfill stands: at least the target, more where it
        // read ahead.
        let from: HashMap<i32, i64> = partitions
            .iter()
            .map(|p| (*p, reader.next(*p).max(target.get(p).copied().unwrap_or(0))))
            .collect();
        let request = JoinRequest {
            share: share.clone(),
            from,
            reply: tx,
        };
        let reply = if !joining {
            JoinReply::NotConsumed
        } else {
            match joins.send(request).await {
                Ok(()) => rx.await.unwrap_or(JoinReply::NotConsumed),
                Err(_) => JoinReply::NotConsumed,
            }
        };
        joining = true;
        match reply {
            JoinReply::Joined => return Ok((reader.total, Backfilled::Joined)),
            JoinReply::Behind(ahead) => {
                for (p, at) in ahead {
                    let t = target.entry(p).or_insert(0);
                    *t = (*t).max(at);
                }
            }
            JoinReply::NotConsumed => {
                let parts: Vec<(String, i32)> =
                    partitions.iter().map(|p| (topic.clone(), *p)).collect();
                let committed =
                    crate::kafka::group_committed(&ctx.settings, &group_id(&ctx.node), &parts)
                        .await?;
                // The distributor resumes from its committed offsets:
                // deliver exactly up to them.
                let until: HashMap<i32, i64> = partitions
                    .iter()
                    .zip(committed)
                    .map(|(p, o)| (*p, o.unwrap_or(0)))
                    .collect();
                if until.iter().any(|(p, o)| reader.next(*p) > *o) {
                    // Already delivered past them: a fresh reader from the
                    // beginning keeps each key's history in order.
                    reader = BackfillReader::new(share, list, ctx, &partitions)?;
                }
                reader
                    .deliver_until(&until, auditor, failures, shutdown)
                    .await?;
                let how = if shutdown.is_cancelled() {
                    Backfilled::Interrupted
                } else {
                    Backfilled::UpToCommitted
                };
                return Ok((reader.total, how));
            }
        }
    }
}

/// Reads a raw topic from its beginning for one share, delivering as it
/// goes.
struct BackfillReader<'a> {
    share: &'a ShareConfig,
    list: &'a [Share],
    ctx: &'a FeedContext,
    consumer: Consumer,
    /// Next offset per partition.
    next: HashMap<i32, i64>,
    readers: FramedReaders,
    versions: HashMap<(u32, u32), Version>,
    total: u64,
}

impl<'a> BackfillReader<'a> {
    fn new(
        share: &'a ShareConfig,
        list: &'a [Share],
        ctx: &'a FeedContext,
        partitions: &[i32],
    ) -> Result<Self, DistributorError> {
        let topic = topics::raw(&share.dataset);
        Ok(Self {
            share,
            list,
            ctx,
            consumer: Consumer::replay_partitions(&ctx.settings, &topic, partitions)?,
            next: partitions.iter().map(|p| (*p, 0)).collect(),
            readers: FramedReaders::new(),
            versions: HashMap::new(),
            total: 0,
        })
    }

    fn next(&self, partition: i32) -> i64 {
        self.next.get(&partition).copied().unwrap_or(0)
    }

    /// Delivers every record before `until` (per partition) not delivered
    /// yet, waits for Kafka's acknowledgements, audits each batch.
    async fn deliver_until(
        &mut self,
        until: &HashMap<i32, i64>,
        auditor: &Auditor,
        failures: &Failures,
        shutdown: &CancellationToken,
    ) -> Result<(), DistributorError> {
        let mut remaining: HashMap<i32, i64> = until
            .iter()
            .filter(|(p, end)| self.next(**p) < **end)
            .map(|(p, end)| (*p, *end))
            .collect();
        while !remaining.is_empty() {
            let mut batch = Vec::new();
            while batch.len() < BATCH && !remaining.is_empty() {
                // A partition whose end is a commit marker is done once
                // the consumer stepped over it.
                let r = tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    r = self.consumer.recv_to(&mut remaining) => match r? {
                        Some(r) => r,
                        None => break,
                    },
                };
                self.next.insert(r.partition, r.offset + 1);
                // A record past this round's target is kept for the next.
                batch.push(r);
            }
            let mut sent = self.ctx.publisher.batch();
            let mut tallies = BTreeMap::new();
            for record in &batch {
                let mut out = Out {
                    sent: &mut sent,
                    tallies: &mut tallies,
                    failures,
                };
                distribute(
                    record,
                    &self.share.dataset,
                    self.list,
                    self.ctx,
                    &mut self.readers,
                    &mut self.versions,
                    &mut out,
                )
                .await?;
            }
            sent.seal().await?;
            self.total += tallies.values().map(|t| t.records).sum::<u64>();
            auditor
                .append_all(delivery_records(&raw_ranges(&batch), tallies))
                .await
                .map_err(DistributorError::Audit)?;
        }
        Ok(())
    }
}

/// A processed batch whose share records are on their way to Kafka.
struct InFlight {
    acks: Acks,
    raw: RawRanges,
    tallies: BTreeMap<String, Tally>,
    /// A backfill's replay of raw records the live flow already passed:
    /// its raw offsets are not the group's to commit.
    replay: bool,
}

/// Feeds write raw topics in transactions, so a raw partition's last offset
/// is often a commit marker, never delivered: its committed offset would
/// stay one short of the end (a lag of one, forever, on a quiet topic).
/// While the distributor waits for records (it is not receiving, so every
/// offset below the consumer's position was either received or a marker),
/// a partition whose position passed the last record received is settled
/// up to that position, after every batch before it.
fn idle_store(
    consumer: &Consumer,
    received: &mut HashMap<(String, i32), i64>,
    publisher: &crate::kafka::Publisher,
) -> Option<InFlight> {
    let mut raw = RawRanges::new();
    for ((topic, partition), next) in received.iter_mut() {
        if let Some(at) = consumer.position(topic, *partition) {
            if at > *next {
                raw.insert((topic.clone(), *partition), (at - 1, at - 1));
                *next = at;
            }
        }
    }
    (!raw.is_empty()).then(|| InFlight {
        acks: publisher.batch().seal(),
        raw,
        tallies: BTreeMap::new(),
        replay: false,
    })
}

/// The first and last raw offset a batch holds, per topic and partition.
type RawRanges = BTreeMap<(String, i32), (i64, i64)>;

fn raw_ranges(batch: &[ConsumedRecord]) -> RawRanges {
    let mut raw: BTreeMap<(&str, i32), (i64, i64)> = BTreeMap::new();
    for r in batch {
        let e = raw
            .entry((r.topic.as_str(), r.partition))
            .or_insert((r.offset, r.offset));
        e.0 = e.0.min(r.offset);
        e.1 = e.1.max(r.offset);
    }
    raw.into_iter()
        .map(|((topic, partition), range)| ((topic.to_owned(), partition), range))
        .collect()
}

/// Settles processed batches in order until the distributor drops its end
/// of `ready`: waits for each batch's acknowledgements, appends the
/// delivery records of all the batches that were ready together (one round
/// trip to Kafka for them), then stores their raw offsets. An offset is
/// stored only after its batch is acknowledged and audited.
async fn settle(
    mut ready: tokio::sync::mpsc::Receiver<InFlight>,
    auditor: Auditor,
    consumer: Arc<Consumer>,
) -> Result<(), DistributorError> {
    while let Some(first) = ready.recv().await {
        let mut round = vec![first];
        while let Ok(next) = ready.try_recv() {
            round.push(next);
        }
        let mut deliveries = Vec::new();
        for done in &mut round {
            (&mut done.acks).await?;
            deliveries.extend(delivery_records(
                &done.raw,
                std::mem::take(&mut done.tallies),
            ));
        }
        auditor
            .append_all(deliveries)
            .await
            .map_err(DistributorError::Audit)?;
        // Storing a partition's last offset covers the ones before it (one
        // librdkafka call per partition, not per record).
        let mut last: BTreeMap<(&str, i32), i64> = BTreeMap::new();
        for ((topic, partition), (_, to)) in round.iter().flat_map(|done| &done.raw) {
            let at = last.entry((topic.as_str(), *partition)).or_insert(*to);
            *at = (*at).max(*to);
        }
        for ((topic, partition), offset) in last {
            consumer.store(topic, partition, offset)?;
        }
    }
    Ok(())
}

/// The outcome of the settling task.
fn settled(
    ended: Result<Result<(), DistributorError>, tokio::task::JoinError>,
) -> Result<(), DistributorError> {
    match ended {
        Ok(outcome) => outcome,
        Err(e) => Err(DistributorError::Settle(e.to_string())),
    }
}

/// What one batch delivered to one share topic, for the audit trail.
struct Tally {
    records: u64,
    checksum: sha2::Sha256,
    policy_version: u32,
}

/// Where [`distribute`] puts its work.
struct Out<'a> {
    sent: &'a mut Batch,
    tallies: &'a mut BTreeMap<String, Tally>,
    /// Where a share that cannot be delivered to is reported.
    failures: &'a Failures,
}

/// The audit trail's delivery records of one batch, one per share topic
/// it delivered to: how many records, the raw offsets they came from, a
/// checksum of what was sent.
fn delivery_records(
    raw: &RawRanges,
    tallies: BTreeMap<String, Tally>,
) -> Vec<(&'static str, serde_json::Value)> {
    use sha2::Digest;
    if tallies.is_empty() {
        return Vec::new();
    }
    let raw: Vec<serde_json::Value> = raw
        .iter()
        .map(|((topic, partition), (first, last))| {
            serde_json::json!({"topic": topic, "partition": partition, "first_offset": first, "last_offset": last})
        })
        .collect();
    tallies
        .into_iter()
        .map(|(topic, t)| {
            let sum: String = t
                .checksum
                .finalize()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            (
                "delivery",
                serde_json::json!({
                    "share_topic": topic,
                    "records": t.records,
                    "raw": raw,
                    "sha256": sum,
                    "policy_version": t.policy_version,
                }),
            )
        })
        .collect()
}

/// The `backflow.hops` a share record carries: the raw record's, with
/// this node appended unless it is already the last hop (a feed or a
/// cascading subscription of this node wrote the raw record).
fn hops_after(raw: Option<&[u8]>, node: &str) -> String {
    match raw.map(String::from_utf8_lossy) {
        Some(h) if h.is_empty() => node.to_owned(),
        Some(h) if h.rsplit(',').next() == Some(node) => h.into_owned(),
        Some(h) => format!("{h},{node}"),
        None => node.to_owned(),
    }
}

/// The reader of a raw schema version (`ids`: key and value schema ids)
/// and each share's codec for it, its share schemas registered; a share
/// whose grant or schema does not fit fails alone. `Ok(Err(why))`: the
/// version cannot be read at all (its records are skipped).
async fn new_version(
    ids: (u32, u32),
    dataset: &str,
    shares: &[Share],
    ctx: &FeedContext,
    readers: &mut FramedReaders,
    out: &mut Out<'_>,
) -> Result<Result<Version, String>, DistributorError> {
    let (key_id, value_id) = ids;
    let (Some(key_schema), Some(value_schema)) = (
        ctx.registry.schema_by_id(key_id).await,
        ctx.registry.schema_by_id(value_id).await,
    ) else {
        return Ok(Err(format!(
            "schema {key_id} or {value_id} is not in this node's registry"
        )));
    };
    readers.add(key_id, &key_schema).ok();
    readers.add(value_id, &value_schema).ok();
    let (department, name) = dataset.split_once('.').unwrap_or(("", dataset));
    let target = TableTarget {
        dataset: dataset.to_owned(),
        schema: department.to_owned(),
        name: name.to_owned(),
    };
    let source =
        match table_from_schemas(&key_schema, &value_schema, &target).and_then(TableCodec::new) {
            Ok(c) => EventReader::new(c, &key_schema, &value_schema),
            Err(e) => return Ok(Err(e.to_string())),
        };
    if !source.is_direct() {
        tracing::info!(dataset, key_id, value_id, "raw records written with schemas backflow did not generate; read through Avro's generic reader (slower)");
    }
    let mut list = Vec::new();
    for s in shares {
        list.push(match s.policy.share_table(source.codec().table()) {
            Ok(table) => match share_codec(table, s, ctx).await {
                Ok(codec) => Some(codec),
                Err(DistributorError::Schema { topic, source }) if source.is_definite() => {
                    s.fail(
                        "schema",
                        format!(
                            "the schema registry refused the share schema of {topic} ({}): a change of the dataset's table or of the grant's rules is incompatible with what this subscriber received so far; the owner reverts the change or sets the dataset's compatibility level to one that allows it (the share topic's subjects follow it), then re-activates the subscription",
                            source.message
                        ),
                        out.failures,
                    );
                    None
                }
                Err(e) => return Err(e),
            },
            Err(reason) => {
                s.fail(
                    "policy",
                    format!(
                        "the grant does not fit the dataset as it now is: {reason}; the owner changes the grant (or the dataset), then re-activates the subscription"
                    ),
                    out.failures,
                );
                None
            }
        });
    }
    let index = JurisdictionIndex::new(
        shares
            .iter()
            .zip(&list)
            .map(|(s, c)| c.as_ref().map(|c| (&s.policy, &c.table))),
    );
    Ok(Ok(Version {
        reader: source,
        shares: list,
        index,
    }))
}

/// Hands one raw record's share records to Kafka.
async fn distribute(
    record: &ConsumedRecord,
    dataset: &str,
    shares: &[Share],
    ctx: &FeedContext,
    readers: &mut FramedReaders,
    versions: &mut HashMap<(u32, u32), Version>,
    out: &mut Out<'_>,
) -> Result<(), DistributorError> {
    use sha2::Digest;
    // Raw tombstones are not forwarded: each share's own delete is
    // followed by its own tombstone.
    let (Some(key_bytes), Some(payload)) = (record.key.as_deref(), record.payload.as_deref())
    else {
        return Ok(());
    };
    let skip = |why: String| {
        tracing::warn!(topic = %record.topic, partition = record.partition, offset = record.offset, reason = %why, "raw record not distributed");
        Ok(())
    };
    let (key_id, value_id) = match (unframe(key_bytes), unframe(payload)) {
        (Ok((k, _)), Ok((v, _))) => (k, v),
        _ => return skip("not Confluent-framed".to_owned()),
    };
    if let std::collections::hash_map::Entry::Vacant(slot) = versions.entry((key_id, value_id)) {
        match new_version((key_id, value_id), dataset, shares, ctx, readers, out).await? {
            Ok(version) => slot.insert(version),
            Err(why) => return skip(why),
        };
    }
    let version = &versions[&(key_id, value_id)];
    let event = match version.reader.read(readers, key_bytes, payload) {
        Ok(e) => e,
        Err(why) => return skip(why),
    };
    let hops = hops_after(record.header(HEADER_HOPS), &ctx.node);
    let origin = record.header(HEADER_ORIGIN).unwrap_or_default();
    let origin_ts = record.header(HEADER_ORIGIN_TS).unwrap_or_default();
    let mut candidates = Vec::new();
    version.index.candidates(&event, &mut candidates);
    for &i in &candidates {
        let (s, Some(sc)) = (&shares[i], &version.shares[i]) else {
            continue;
        };
        if s.has_failed() {
            continue;
        }
        if s.from.as_ref().is_some_and(|from| {
            from.get(&record.partition)
                .is_none_or(|first| record.offset < *first)
        }) {
            // Delivered by the share's backfill, or still to be.
            continue;
        }
        if hops.split(',').any(|h| h == s.policy.subscriber) {
            // The change came from (or through) this subscriber: sending
            // it back would close a loop.
            tracing::warn!(subscriber = %s.policy.subscriber, %hops, "change not shared back to a node it already passed");
            continue;
        }
        let Some(shared) = s.policy.share_event(&sc.table, &event) else {
            continue;
        };
        let encoded =
            sc.codec
                .encode_framed_parts(sc.key_id, sc.value_id, shared.with_provenance(&event));
        let (key, value) = match encoded {
            Ok(kv) => kv,
            Err(e) => {
                tracing::warn!(subscriber = %s.policy.subscriber, reason = %e, "share record not encodable; skipped");
                continue;
            }
        };
        let headers: [(&str, &[u8]); 4] = [
            (HEADER_ORIGIN, origin),
            (HEADER_ORIGIN_TS, origin_ts),
            (HEADER_HOPS, hops.as_bytes()),
            (HEADER_POLICY, s.policy_header.as_bytes()),
        ];
        let size = key.len()
            + value.len()
            + headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>();
        if size > ctx.settings.max_message_bytes {
            let reason = format!(
                "a share record of {} is {size} bytes, over the brokers' limit of {} (kafka.max_message_bytes): the raw record at {}:{}:{} is in {}; the owner narrows or masks the large field for this subscriber, or the brokers' message.max.bytes is raised, then the subscription is re-activated",
                s.topic,
                ctx.settings.max_message_bytes,
                record.topic,
                record.partition,
                record.offset,
                dead_letter_topic(s)
            );
            dead_letter(record, s, &reason, ctx, out.sent).await?;
            s.fail("record_too_large", reason, out.failures);
            continue;
        }
        if !out.tallies.contains_key(&s.topic) {
            out.tallies.insert(
                s.topic.clone(),
                Tally {
                    records: 0,
                    checksum: sha2::Sha256::new(),
                    policy_version: s.policy.version,
                },
            );
        }
        let tally = out.tallies.get_mut(&s.topic).expect("inserted above");
        tally.records += 1;
        tally.checksum.update(&key);
        tally.checksum.update(&value);
        // A tombstone after a delete lets compaction drop the key.
        let payloads = [Some(value.as_slice()), None];
        for payload in &payloads[..1 + usize::from(shared.op == Op::Delete)] {
            ctx.publisher
                .enqueue_in(
                    out.sent,
                    OutgoingRecord {
                        topic: &s.topic,
                        key: Some(&key),
                        payload: *payload,
                        headers: &headers,
                    },
                )
                .await?;
        }
        s.records.of(shared.op).inc();
    }
    Ok(())
}

/// The node's dead-letter topic of what could not be delivered to a share
/// (the raw records, which hold unfiltered rows: the node's own, like a
/// feed's dead letters).
fn dead_letter_topic(s: &Share) -> String {
    topics::dlq(&format!(
        "share.{}.{}",
        s.policy.subscriber, s.policy.dataset
    ))
}

/// Keeps a raw record a share could not take in the share's dead-letter
/// topic, with why and where it came from.
async fn dead_letter(
    record: &ConsumedRecord,
    s: &Share,
    reason: &str,
    ctx: &FeedContext,
    sent: &mut Batch,
) -> Result<(), DistributorError> {
    let topic = dead_letter_topic(s);
    ctx.admin
        .ensure(&[TopicSpec::retained(&topic, 1, ctx.replication_factor)])
        .await?;
    let partition = record.partition.to_string();
    let offset = record.offset.to_string();
    let headers: [(&str, &[u8]); 4] = [
        (crate::domain::headers::HEADER_DLQ_REASON, reason.as_bytes()),
        (
            crate::domain::headers::HEADER_DLQ_TOPIC,
            record.topic.as_bytes(),
        ),
        (
            crate::domain::headers::HEADER_DLQ_PARTITION,
            partition.as_bytes(),
        ),
        (crate::domain::headers::HEADER_DLQ_OFFSET, offset.as_bytes()),
    ];
    ctx.publisher
        .enqueue_in(
            sent,
            OutgoingRecord {
                topic: &topic,
                key: record.key.as_deref(),
                payload: record.payload.as_deref(),
                headers: &headers,
            },
        )
        .await?;
    Ok(())
}

/// Registers a share table's schemas under its topic's subjects, which
/// follow the dataset's compatibility level when its owner set one.
async fn share_codec(
    table: ShareTable,
    share: &Share,
    ctx: &FeedContext,
) -> Result<ShareCodec, DistributorError> {
    let topic = share.topic.as_str();
    if let Some(level) = share.compatibility {
        for key in [true, false] {
            ctx.registry
                .set_level(Some(&subject_for(topic, key)), Some(level))
                .await
                .map_err(|source| DistributorError::Schema {
                    topic: topic.to_owned(),
                    source,
                })?;
        }
    }
    let desc: TableDesc = table.desc.clone();
    let codec = TableCodec::new(desc).map_err(|e| DistributorError::Schema {
        topic: topic.to_owned(),
        source: RegistryError::invalid_schema(e),
    })?;
    let reg = |source| DistributorError::Schema {
        topic: topic.to_owned(),
        source,
    };
    let key_id = ctx
        .registry
        .register(&subject_for(topic, true), codec.key_schema())
        .await
        .map_err(reg)?;
    let value_id = ctx
        .registry
        .register(&subject_for(topic, false), codec.value_schema())
        .await
        .map_err(reg)?;
    tracing::info!(topic, key_id, value_id, "share schemas registered");
    Ok(ShareCodec {
        table,
        codec,
        key_id,
        value_id,
    })
}

/// The shares in force: the configuration's, and the catalog's active
/// subscriptions already backfilled; and the active subscriptions still to
/// backfill.
async fn current(
    config_shares: &[ShareConfig],
    catalog: &Catalog,
    upper: &crate::upper::UpperGrants,
    retracting: &HashSet<String>,
) -> (Vec<ShareConfig>, Vec<(ShareConfig, Subscription)>) {
    // A dataset received from an upper node is shared on only while the
    // upper grant is active and allows it, and while its rows are being
    // taken back from the lower nodes after it ended.
    let shared_on = |d: &str| upper.onward_refusal(d).is_none() || retracting.contains(d);
    let mut shares: Vec<ShareConfig> = config_shares
        .iter()
        .filter(|s| shared_on(&s.dataset))
        .cloned()
        .collect();
    let mut backfill = Vec::new();
    let st = catalog.state().await;
    for sub in st.subscriptions.values() {
        if sub.state != SubscriptionState::Active {
            continue;
        }
        let Some(dataset) = st.datasets.get(&sub.dataset) else {
            continue;
        };
        if !shared_on(&sub.dataset) {
            continue;
        }
        if dataset.row_rule().is_none() {
            // Fail closed: a dataset without a row rule (recorded before
            // the rule was required) shares nothing.
            tracing::warn!(subscription = %sub.id, dataset = %dataset.id, "the dataset has no row rule (region_column or all_rows): nothing is delivered until its owner sets one");
            continue;
        }
        let Some(share) = grant_check::share_of(sub, dataset) else {
            continue;
        };
        if sub.backfilled {
            shares.push(share);
        } else {
            backfill.push((share, sub.clone()));
        }
    }
    (shares, backfill)
}

/// What identifies a set of shares: restart the distributor when it changes.
fn signature(shares: &[ShareConfig]) -> Vec<String> {
    let mut sig: Vec<String> = shares
        .iter()
        .map(|s| {
            format!(
                "{}|{}|{}|{:?}|{:?}|{}",
                s.subscriber, s.dataset, s.version, s.fields, s.region_column, s.all_rows
            )
        })
        .collect();
    sig.sort();
    sig
}

/// The shares of `now` a run delivering `running` can take while it goes
/// on: `None` unless `now` only adds, to `running`, subscriptions to
/// catch up on datasets the run already reads.
fn additions(running: &[ShareConfig], now: &[ShareConfig]) -> Option<Vec<ShareConfig>> {
    let before: HashSet<String> = signature(running).into_iter().collect();
    let after: HashSet<String> = signature(now).into_iter().collect();
    if !before.is_subset(&after) {
        return None;
    }
    let new: Vec<ShareConfig> = now
        .iter()
        .filter(|s| !before.contains(&signature(std::slice::from_ref(*s))[0]))
        .cloned()
        .collect();
    let fits = new.iter().all(|s| {
        s.catch_up
            && running.iter().any(|r| r.dataset == s.dataset)
            && !running.iter().any(|r| same_share(r, s))
    });
    fits.then_some(new)
}

/// Whether two shares are the same subscriber's share of the same dataset.
fn same_share(a: &ShareConfig, b: &ShareConfig) -> bool {
    a.subscriber == b.subscriber && a.dataset == b.dataset
}

/// A backfill under way, for one subscription.
struct BackfillTask {
    subscription: Subscription,
    share: ShareConfig,
    abort: tokio::task::AbortHandle,
}

/// Backfills under way and shares that joined the running distributor.
struct Backfills {
    tasks: tokio::task::JoinSet<(String, u64, Backfilled)>,
    running: HashMap<String, BackfillTask>,
    /// Shares that joined the running distributor and whose subscription
    /// may not be marked backfilled in the catalog yet: every run includes
    /// them, so none misses what the backfill did not deliver.
    joined: Vec<ShareConfig>,
    joins: tokio::sync::mpsc::Sender<JoinRequest>,
    /// Where a backfill reports a share it cannot deliver to.
    failures: Failures,
}

impl Backfills {
    /// Starts backfills for newly active subscriptions; stops those whose
    /// subscription is no longer active.
    fn follow(
        &mut self,
        pending: &[(ShareConfig, Subscription)],
        consumed: &[ShareConfig],
        ctx: &FeedContext,
        auditor: &Auditor,
        shutdown: &CancellationToken,
    ) {
        self.running.retain(|id, t| {
            let keep = pending
                .iter()
                .any(|(_, s)| s.id == *id && s.policy_version == t.subscription.policy_version);
            if !keep {
                t.abort.abort();
                tracing::info!(subscription = %id, "backfill stopped: the subscription changed");
            }
            keep
        });
        self.joined
            .retain(|j| pending.iter().any(|(s, _)| same_share(s, j)));
        for (share, sub) in pending {
            if self.running.contains_key(&sub.id)
                || self.joined.iter().any(|j| same_share(j, share))
            {
                continue;
            }
            let reads_dataset = consumed.iter().any(|c| c.dataset == share.dataset);
            let (share_t, ctx, auditor, joins, failures, shutdown, id) = (
                share.clone(),
                ctx.clone(),
                auditor.clone(),
                self.joins.clone(),
                self.failures.clone(),
                shutdown.clone(),
                sub.id.clone(),
            );
            tracing::info!(subscription = %sub.id, "backfilling while the distributor goes on");
            let abort = self.tasks.spawn(async move {
                let mut restarts =
                    crate::domain::restart::Restarts::new(crate::domain::restart::Policy::DEFAULT);
                loop {
                    let attempt = restarts.begin();
                    let retry = match backfill_and_join(
                        &share_t,
                        &ctx,
                        &auditor,
                        &joins,
                        reads_dataset,
                        &failures,
                        &shutdown,
                    )
                    .await
                    {
                        Ok((records, how)) => return (id, records, how),
                        Err(e) => {
                            use crate::domain::restart::Kind;
                            let retry = attempt.failed(e.kind());
                            crate::events::distributor_failed(&ctx.metrics, Some(&id), &retry, &e);
                            retry
                        }
                    };
                    if !crate::domain::restart::pause(retry.wait, &shutdown).await {
                        return (id, 0, Backfilled::Interrupted);
                    }
                }
            });
            self.running.insert(
                sub.id.clone(),
                BackfillTask {
                    subscription: sub.clone(),
                    share: share.clone(),
                    abort,
                },
            );
        }
    }

    /// Records a finished backfill: the share joined (kept in every run
    /// from now on) or needs a restart; the catalog marks it backfilled.
    async fn finished(&mut self, id: String, records: u64, how: Backfilled, catalog: &Catalog) {
        let Some(task) = self.running.remove(&id) else {
            return;
        };
        if how == Backfilled::Interrupted {
            return;
        }
        tracing::info!(subscription = %id, records, how = ?how, "subscription backfilled");
        if how == Backfilled::Joined {
            self.joined.push(task.share);
        }
        mark_backfilled(catalog, &id, task.subscription.policy_version).await;
    }

    /// The shares a run delivers: those in force plus those that joined.
    fn with_joined(&self, shares: &[ShareConfig]) -> Vec<ShareConfig> {
        let mut all = shares.to_vec();
        for j in &self.joined {
            if !all.iter().any(|s| same_share(s, j)) {
                all.push(j.clone());
            }
        }
        all
    }
}

/// Marks subscription `id` backfilled, as it is when written (one step
/// under the catalog's writer), and only while it is still active under
/// the policy `version` the backfill delivered: a revocation or a new
/// policy made meanwhile is never overwritten.
async fn mark_backfilled(catalog: &Catalog, id: &str, version: u32) {
    let marked = catalog
        .update(|st| match st.subscriptions.get(id) {
            Some(s) if s.state == SubscriptionState::Active && s.policy_version == version => {
                let mut s = s.clone();
                s.backfilled = true;
                Ok((crate::state::catalog::CatalogRecord::Subscription(s), ()))
            }
            _ => Err(()),
        })
        .await;
    match marked {
        Ok(Ok(())) => {}
        Ok(Err(())) => {
            tracing::info!(subscription = %id, "the subscription changed during its backfill; not marked backfilled")
        }
        Err(e) => {
            tracing::error!(subscription = %id, error = %e, "cannot record the backfill in the catalog")
        }
    }
}

/// Runs the distributor for the configured shares and the catalog's active
/// subscriptions: restarts it when they change (a revocation stops delivery
/// within moments), backfills each newly active subscription from the raw
/// topic, and restarts with backoff after errors.
///
/// A transactional run takes a newly active subscription of a dataset it
/// reads as it goes on, and backfills it inside its transactions
/// ([`catchup`]). Without transactions a backfill runs beside the
/// distributor, which goes on delivering to the other shares: once the
/// backfill has read the raw topic up to where the distributor stands, the
/// distributor takes the new share over from that offset
/// ([`backfill_and_join`]). Either way the share topic gets each key's
/// history and then its live changes, in order, and nobody else waits.
pub async fn supervise(
    config_shares: Vec<ShareConfig>,
    catalog: Catalog,
    auditor: Auditor,
    upper: crate::upper::UpperGrants,
    ctx: FeedContext,
    shutdown: CancellationToken,
) {
    for s in &config_shares {
        let decision = serde_json::json!({
            "action": "share active (node configuration)",
            "subscriber": s.subscriber.as_str(),
            "dataset": s.dataset,
            "region_column": s.region_column,
            "all_rows": s.all_rows,
            "fields": s.fields,
            "predicates": s.predicates,
            "policy_version": s.version,
            "by": "configuration",
        });
        if let Err(e) = auditor.append("decision", decision).await {
            tracing::error!(error = %e, "cannot write the audit trail");
        }
    }
    let (joins, mut join_requests) = tokio::sync::mpsc::channel::<JoinRequest>(16);
    let (failures, failed_shares) = tokio::sync::mpsc::unbounded_channel::<ShareFailure>();
    let mut events = Events {
        changes: catalog.changes(),
        upper_changes: upper.changes(),
        failed_shares,
    };
    let deps = Deps {
        config_shares,
        catalog,
        auditor,
        upper,
        ctx,
        shutdown,
        failures: failures.clone(),
    };
    let mut state = Supervised {
        backfills: Backfills {
            tasks: tokio::task::JoinSet::new(),
            running: HashMap::new(),
            joined: Vec::new(),
            joins,
            failures,
        },
        config_failed: HashSet::new(),
        retractions: Retractions::default(),
    };
    let mut restarts =
        crate::domain::restart::Restarts::new(crate::domain::restart::Policy::DEFAULT);
    while !deps.shutdown.is_cancelled() {
        let _ = deps.catalog.caught_up().await;
        let (shares, pending) = deps.for_run(&state).await;
        state
            .backfills
            .follow(&pending, &shares, &deps.ctx, &deps.auditor, &deps.shutdown);
        let mut failed = None;
        if !shares.is_empty() {
            let attempt = restarts.begin();
            match deps
                .run_until_changed(&shares, &mut events, &mut state, &mut join_requests)
                .await
            {
                Ok(()) if deps.shutdown.is_cancelled() => break,
                Ok(()) => {
                    attempt.ended_well();
                    continue;
                }
                Err(DistributorError::GrantChanged) => {
                    tracing::info!("a grant changed under the running distributor; restarting it to read its records again under the grants in force");
                    attempt.ended_well();
                    continue;
                }
                Err(e) => {
                    use crate::domain::restart::Kind;
                    let retry = attempt.failed(e.kind());
                    crate::events::distributor_failed(&deps.ctx.metrics, None, &retry, &e);
                    failed = Some(retry.wait);
                }
            }
        }
        // No distributor runs: backfills deliver up to the committed
        // offsets, and the next run starts from there with their shares.
        let pause = failed.unwrap_or(Duration::from_secs(3600));
        deps.idle(pause, &mut events, &mut state, &mut join_requests)
            .await;
    }
    state.backfills.tasks.shutdown().await;
}

/// What the distributor's supervision reads and never changes.
struct Deps {
    config_shares: Vec<ShareConfig>,
    catalog: Catalog,
    auditor: Auditor,
    upper: crate::upper::UpperGrants,
    ctx: FeedContext,
    shutdown: CancellationToken,
    failures: Failures,
}

/// What tells the supervision to look again.
struct Events {
    changes: tokio::sync::watch::Receiver<u64>,
    upper_changes: tokio::sync::watch::Receiver<u64>,
    failed_shares: tokio::sync::mpsc::UnboundedReceiver<ShareFailure>,
}

/// What the supervision keeps across runs.
struct Supervised {
    backfills: Backfills,
    /// Shares of the configuration file that failed: left out until the
    /// node restarts (catalog subscriptions record their failure instead).
    config_failed: HashSet<(String, String)>,
    /// Datasets whose upper grant ended: being taken back from the lower
    /// nodes, or taken back.
    retractions: Retractions,
}

impl Deps {
    /// The shares in force, without the configuration's failed ones; and
    /// the active subscriptions still to backfill.
    async fn in_force(
        &self,
        state: &Supervised,
    ) -> (Vec<ShareConfig>, Vec<(ShareConfig, Subscription)>) {
        let config: Vec<ShareConfig> = self
            .config_shares
            .iter()
            .filter(|s| {
                !state
                    .config_failed
                    .contains(&(s.subscriber.to_string(), s.dataset.clone()))
            })
            .cloned()
            .collect();
        current(
            &config,
            &self.catalog,
            &self.upper,
            &state.retractions.running,
        )
        .await
    }

    /// Whether backfills run inside the distributor's transactions
    /// ([`catchup`]) rather than beside it.
    fn catches_up(&self) -> bool {
        self.ctx.distributor_transactions.is_some()
    }

    /// The shares a run delivers; and, without transactions, the
    /// subscriptions to backfill beside it. In a transactional run a
    /// subscription not yet backfilled is a share marked `catch_up`.
    async fn for_run(
        &self,
        state: &Supervised,
    ) -> (Vec<ShareConfig>, Vec<(ShareConfig, Subscription)>) {
        let (ready, pending) = self.in_force(state).await;
        if !self.catches_up() {
            return (state.backfills.with_joined(&ready), pending);
        }
        let mut shares = ready;
        shares.extend(pending.into_iter().map(|(mut share, _)| {
            share.catch_up = true;
            share
        }));
        (shares, Vec::new())
    }

    /// What the catalog says of every subscription, for a run to tell
    /// the backfill progress of ended activations from that of new ones.
    async fn known(&self) -> Known {
        let mut known = Known::default();
        for sub in self.catalog.state().await.subscriptions.values() {
            known.note(
                &sub.subscriber,
                &sub.dataset,
                sub.policy_version,
                sub.state == SubscriptionState::Active,
            );
        }
        known
    }

    /// Whether the shares in force differ from `sig` (the running ones).
    async fn changed(&self, state: &Supervised, sig: &[String]) -> bool {
        let (now, _) = self.for_run(state).await;
        signature(&now) != sig
    }

    /// Marks in the catalog the subscriptions of `running` whose backfill
    /// joined the live flow on every partition of their raw topic (read
    /// from the distributor group's commits); they are no longer marked
    /// `catch_up` there.
    async fn mark_caught_up(
        &self,
        running: &mut [ShareConfig],
        offsets: &crate::kafka::GroupOffsets,
    ) {
        for share in running.iter_mut().filter(|s| s.catch_up) {
            let topic = topics::raw(&share.dataset);
            let Ok(n) = crate::kafka::partition_count(&self.ctx.settings, &topic).await else {
                continue;
            };
            let parts: Vec<(String, i32)> = (0..n as i32).map(|p| (topic.clone(), p)).collect();
            let Ok(commits) = offsets.positions(&group_id(&self.ctx.node), &parts).await else {
                continue;
            };
            let key = catchup::key_of(share.subscriber.as_str(), &share.dataset, share.version);
            let joined = commits.iter().all(|c| {
                c.as_ref().is_some_and(|(_, metadata)| {
                    matches!(
                        catchup::parse(metadata).get(&key),
                        Some(catchup::Mark::Live(_))
                    )
                })
            });
            if !joined {
                continue;
            }
            let id = format!("{}:{}", share.subscriber, share.dataset);
            tracing::info!(subscription = %id, "subscription backfilled");
            mark_backfilled(&self.catalog, &id, share.version).await;
            share.catch_up = false;
        }
    }

    /// Runs the distributor over `shares` until it fails, the node stops,
    /// or what is in force changes (then it ends without an error), while
    /// backfills join it and finish, shares fail alone and retractions
    /// run.
    async fn run_until_changed(
        &self,
        shares: &[ShareConfig],
        events: &mut Events,
        state: &mut Supervised,
        join_requests: &mut tokio::sync::mpsc::Receiver<JoinRequest>,
    ) -> Result<(), DistributorError> {
        let mut sig = signature(shares);
        // What the run delivers: shares added to it while it goes on
        // (a transactional run) join this list.
        let mut running = shares.to_vec();
        let known = self.known().await;
        let (adds, mut added) = tokio::sync::mpsc::channel::<ShareConfig>(16);
        let child = self.shutdown.child_token();
        // The run is a task of its own, not a future polled by this loop:
        // a transactional run holds the audit chain from staging to
        // commit, and the branches below append to the audit trail, which
        // would wait forever for a run that is not polled while they do.
        // It takes the join requests along and gives them back as it ends.
        let (_, closed) = tokio::sync::mpsc::channel(1);
        let mut joins = std::mem::replace(join_requests, closed);
        let mut run_task = tokio_util::task::AbortOnDropHandle::new(tokio::spawn({
            let (shares, ctx, auditor, failures, child, catalog) = (
                shares.to_vec(),
                self.ctx.clone(),
                self.auditor.clone(),
                self.failures.clone(),
                child.clone(),
                self.catalog.clone(),
            );
            async move {
                let inputs = RunInputs {
                    joins: &mut joins,
                    adds: &mut added,
                    known,
                    catalog: Some(catalog),
                };
                let ran = run(&shares, &ctx, &auditor, inputs, &failures, &child).await;
                (ran, joins)
            }
        }));
        let mut marking = tokio::time::interval(Duration::from_secs(2));
        let commits = crate::kafka::GroupOffsets::new(&self.ctx.settings);
        loop {
            tokio::select! {
                _ = marking.tick(), if running.iter().any(|s| s.catch_up) => {
                    self.mark_caught_up(&mut running, &commits).await;
                }
                ended = &mut run_task => {
                    return match ended {
                        Ok((ran, joins)) => {
                            *join_requests = joins;
                            ran
                        }
                        Err(e) => {
                            // The requests went with the task: backfills
                            // ask through a new channel.
                            let (asks, requests) = tokio::sync::mpsc::channel(16);
                            state.backfills.joins = asks;
                            *join_requests = requests;
                            Err(DistributorError::Settle(format!("the distributor's task ended: {e}")))
                        }
                    };
                }
                Some(done) = state.backfills.tasks.join_next() => {
                    if let Ok((id, records, how)) = done {
                        state.backfills.finished(id, records, how, &self.catalog).await;
                        // A joined share is part of this run already.
                        sig = signature(&state.backfills.with_joined(shares));
                    }
                }
                Some(done) = state.retractions.tasks.join_next() => {
                    state.retractions.finished(done);
                    end_upstream_ended(&self.catalog, &self.auditor, &self.upper, &state.retractions.running).await;
                    if self.changed(state, &sig).await {
                        tracing::info!("rows taken back from the lower nodes; restarting the distributor without the dataset's shares");
                        child.cancel();
                    }
                }
                Some(failure) = events.failed_shares.recv() => {
                    // The share is out of this run already; its
                    // subscription records why (a change that restarts
                    // the run without it).
                    record_failure(failure, &self.catalog, &self.auditor, &self.ctx, &mut state.config_failed).await;
                }
                _ = events.upper_changes.changed() => {
                    state.retractions.follow(&self.upper, &self.ctx);
                    end_upstream_ended(&self.catalog, &self.auditor, &self.upper, &state.retractions.running).await;
                    if self.changed(state, &sig).await {
                        tracing::info!("upper grants changed; restarting the distributor");
                        child.cancel();
                    }
                }
                c = events.changes.changed() => {
                    if c.is_err() {
                        child.cancel();
                        continue;
                    }
                    let _ = self.catalog.caught_up().await;
                    let (now, pending) = self.for_run(state).await;
                    state.backfills.follow(&pending, shares, &self.ctx, &self.auditor, &self.shutdown);
                    if signature(&now) == sig {
                        continue;
                    }
                    match additions(&running, &now) {
                        // New subscriptions of datasets the run reads
                        // join it and catch up there: nobody waits.
                        Some(new) if self.catches_up() => {
                            for share in new {
                                if adds.send(share.clone()).await.is_err() {
                                    break;
                                }
                                running.push(share);
                            }
                            sig = signature(&running);
                        }
                        _ => {
                            tracing::info!("shares changed; restarting the distributor");
                            child.cancel();
                        }
                    }
                }
            }
        }
    }

    /// While no distributor runs: waits `pause`, or until something
    /// changes, a backfill ends, a share fails or a retraction ends; a
    /// backfill asking to join is told nothing consumes.
    async fn idle(
        &self,
        pause: Duration,
        events: &mut Events,
        state: &mut Supervised,
        join_requests: &mut tokio::sync::mpsc::Receiver<JoinRequest>,
    ) {
        let until = tokio::time::Instant::now() + pause;
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep_until(until) => return,
                _ = events.changes.changed() => return,
                Some(request) = join_requests.recv() => {
                    let _ = request.reply.send(JoinReply::NotConsumed);
                }
                Some(done) = state.backfills.tasks.join_next() => {
                    if let Ok((id, records, how)) = done {
                        state.backfills.finished(id, records, how, &self.catalog).await;
                    }
                    return;
                }
                Some(failure) = events.failed_shares.recv() => {
                    record_failure(failure, &self.catalog, &self.auditor, &self.ctx, &mut state.config_failed).await;
                    return;
                }
                _ = events.upper_changes.changed() => {
                    state.retractions.follow(&self.upper, &self.ctx);
                    end_upstream_ended(&self.catalog, &self.auditor, &self.upper, &state.retractions.running).await;
                    return;
                }
                Some(done) = state.retractions.tasks.join_next() => {
                    state.retractions.finished(done);
                    end_upstream_ended(&self.catalog, &self.auditor, &self.upper, &state.retractions.running).await;
                    return;
                }
            }
        }
    }
}

/// The retractions of datasets whose upper grant ended.
#[derive(Default)]
struct Retractions {
    /// Being taken back: their shares stay in force until it is delivered.
    running: HashSet<String>,
    /// Taken back for the grant's current end.
    done: HashSet<String>,
    tasks: tokio::task::JoinSet<(String, Result<u64, DistributorError>)>,
}

impl Retractions {
    /// Starts taking back the rows of datasets whose upper grant ended;
    /// forgets those whose grant is active again.
    fn follow(&mut self, upper: &crate::upper::UpperGrants, ctx: &FeedContext) {
        for (dataset, grant) in upper.all() {
            match grant {
                crate::upper::UpperGrant::Ended { reason } => {
                    if self.done.contains(&dataset) || !self.running.insert(dataset.clone()) {
                        continue;
                    }
                    let ctx = ctx.clone();
                    let reason = format!("upstream grant ended: {reason}");
                    self.tasks.spawn(async move {
                        let outcome = retract::retract(&dataset, &reason, &ctx).await;
                        (dataset, outcome)
                    });
                }
                crate::upper::UpperGrant::Active { .. } => {
                    self.done.remove(&dataset);
                }
                crate::upper::UpperGrant::Unknown => {}
            }
        }
    }

    /// Records a retraction that ended; one that failed is tried again at
    /// the next change of the upper grants.
    fn finished(
        &mut self,
        done: Result<(String, Result<u64, DistributorError>), tokio::task::JoinError>,
    ) {
        let Ok((dataset, outcome)) = done else {
            return;
        };
        self.running.remove(&dataset);
        match outcome {
            Ok(_) => {
                self.done.insert(dataset);
            }
            Err(e) => {
                tracing::error!(dataset, error = %e, "taking back the rows received from the upper node failed");
            }
        }
    }
}

/// Revokes this node's subscriptions to datasets whose upper grant ended or
/// does not allow sharing them on, with the reason, each on the audit
/// trail.
async fn end_upstream_ended(
    catalog: &Catalog,
    auditor: &Auditor,
    upper: &crate::upper::UpperGrants,
    retracting: &HashSet<String>,
) {
    let live: Vec<(String, String)> = catalog
        .state()
        .await
        .subscriptions
        .values()
        .filter(|s| {
            matches!(
                s.state,
                SubscriptionState::Active
                    | SubscriptionState::Pending
                    | SubscriptionState::Failed { .. }
            )
        })
        .filter(|s| {
            !matches!(
                upper.get(&s.dataset),
                None | Some(crate::upper::UpperGrant::Unknown)
            )
        })
        // Delivering the retraction first.
        .filter(|s| !retracting.contains(&s.dataset))
        .map(|s| (s.id.clone(), s.dataset.clone()))
        .collect();
    for (id, dataset) in live {
        let Some(reason) = upper.onward_refusal(&dataset) else {
            continue;
        };
        let revoked = catalog
            .update(|st| match st.subscriptions.get(&id) {
                Some(s)
                    if matches!(
                        s.state,
                        SubscriptionState::Active
                            | SubscriptionState::Pending
                            | SubscriptionState::Failed { .. }
                    ) =>
                {
                    let mut s = s.clone();
                    s.state = SubscriptionState::Revoked {
                        reason: reason.clone(),
                    };
                    s.updated_ms = backflow_connectors::now_ms();
                    Ok((crate::state::catalog::CatalogRecord::Subscription(s), ()))
                }
                _ => Err(()),
            })
            .await;
        if let Ok(Ok(())) = revoked {
            let details = serde_json::json!({
                "action": "subscription revoked",
                "subscription": id,
                "reason": reason,
                "by": "upper grant",
            });
            if let Err(e) = auditor.append("decision", details).await {
                tracing::error!(error = %e, "cannot write the audit trail");
            }
        }
    }
}

/// Records that a share failed: its subscription becomes `failed` with the
/// reason (the owner sees it in the API and on the dashboard, and
/// re-activates it once the cause is fixed), the audit trail says so, a
/// metric counts it. A share of the configuration file is left out until
/// the node restarts.
async fn record_failure(
    failure: ShareFailure,
    catalog: &Catalog,
    auditor: &Auditor,
    ctx: &FeedContext,
    config_failed: &mut std::collections::HashSet<(String, String)>,
) {
    ctx.metrics
        .distributor_share_failures
        .with_label_values(&[failure.subscriber.as_str(), failure.kind])
        .inc();
    let id = format!("{}:{}", failure.subscriber, failure.dataset);
    let reason = failure.reason.clone();
    let recorded = catalog
        .update(|st| match st.subscriptions.get(&id) {
            Some(s) if s.state == SubscriptionState::Active => {
                let mut s = s.clone();
                s.state = SubscriptionState::Failed {
                    reason: reason.clone(),
                };
                s.updated_ms = backflow_connectors::now_ms();
                Ok((crate::state::catalog::CatalogRecord::Subscription(s), ()))
            }
            _ => Err(()),
        })
        .await;
    match recorded {
        Ok(Ok(())) => {}
        Ok(Err(())) => {
            config_failed.insert((failure.subscriber.clone(), failure.dataset.clone()));
        }
        Err(e) => {
            tracing::error!(subscription = %id, error = %e, "cannot record the share's failure in the catalog")
        }
    }
    let details = serde_json::json!({
        "action": "subscription failed",
        "subscription": id,
        "kind": failure.kind,
        "reason": failure.reason,
        "by": "distributor",
    });
    if let Err(e) = auditor.append("decision", details).await {
        tracing::error!(error = %e, "cannot write the audit trail");
    }
}

#[cfg(test)]
mod tests {
    use super::{additions, hops_after, ShareConfig};

    fn share(subscriber: &str, dataset: &str, version: u32, catch_up: bool) -> ShareConfig {
        let mut s: ShareConfig = serde_json::from_value(serde_json::json!({
            "subscriber": subscriber,
            "dataset": dataset,
            "all_rows": true,
            "version": version,
            "fields": {"id": "plain"},
        }))
        .expect("a share");
        s.catch_up = catch_up;
        s
    }

    #[test]
    fn a_running_distributor_takes_only_new_subscriptions_of_datasets_it_reads() {
        let running = vec![share("330106", "gongan.people", 1, false)];
        let new = share("330108", "gongan.people", 1, true);
        let now = vec![running[0].clone(), new.clone()];
        assert_eq!(additions(&running, &now), Some(vec![new.clone()]));
        // Nothing new: nothing to add.
        assert_eq!(additions(&running, &running), Some(vec![]));
        // A dataset the run does not read needs a run that reads it.
        let other = vec![running[0].clone(), share("330108", "minzheng.aid", 1, true)];
        assert_eq!(additions(&running, &other), None);
        // A share gone, or its policy changed, restarts the run.
        assert_eq!(additions(&running, std::slice::from_ref(&new)), None);
        let narrowed = vec![share("330106", "gongan.people", 2, true)];
        assert_eq!(additions(&running, &narrowed), None);
        // A configured share (not catching up) is not added to a run.
        let configured = vec![
            running[0].clone(),
            share("330108", "gongan.people", 1, false),
        ];
        assert_eq!(additions(&running, &configured), None);
    }

    #[test]
    fn hops_name_each_node_once() {
        // Written by this node's feed: not repeated.
        assert_eq!(hops_after(Some(b"330000"), "330000"), "330000");
        // Re-published by this node's cascading subscription.
        assert_eq!(
            hops_after(Some(b"330000,330100"), "330100"),
            "330000,330100"
        );
        // A raw record from elsewhere (or an older writer without hops).
        assert_eq!(hops_after(Some(b"330000"), "330100"), "330000,330100");
        assert_eq!(hops_after(None, "330100"), "330100");
        assert_eq!(hops_after(Some(b""), "330100"), "330100");
    }
}
