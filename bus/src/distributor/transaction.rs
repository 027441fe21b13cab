//! The distributor's Kafka transaction: read-process-write, exactly once.
//!
//! The share records (and share dead letters) of the raw batches read
//! since the last commit, their delivery records in the audit trail, and
//! the raw offsets after them (`sendOffsetsToTransaction`, with the
//! consumer's group metadata) commit together, `kafka.transaction_interval_ms`
//! after the transaction began. A process killed at any point leaves
//! `read_committed` readers of the share topics and of the audit trail
//! each delivery once: its open transaction is aborted (by its successor's
//! registration, or by the brokers after
//! [`crate::kafka::DISTRIBUTOR_TRANSACTION_TIMEOUT`])
//! and the raw records after the last committed offsets are distributed
//! again.
//!
//! Fencing: the transactional id is `<prefix>distributor.<node>.<replica>`
//! (`kafka.replica`, distinct per process serving the node and stable
//! across its restarts), so a restarted process fences its earlier self;
//! a process the group has moved on from (paused past its session) has its
//! offsets refused by the brokers, which fails its transaction. Two live
//! processes given the same replica name fence each other: the one fenced
//! stops with [`DistributorError::Fenced`], which names the setting.
//!
//! Partitions moving to another process: before the group takes a
//! partition away, the open transaction is aborted (a [`RevokeHook`]), so
//! this process can never commit offsets of a partition its next owner
//! already resumed from the last commit. Its own retained partitions are
//! read again from where the aborted transaction began.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::catchup::CommitPlan;
use super::{delivery_records, DistributorError, InFlight};
use crate::kafka::{
    Consumer, KafkaError, Publisher, RevokeHook, DISTRIBUTOR_TRANSACTION_STEP as TRANSACTION_STEP,
};
use crate::state::audit::Auditor;

/// Raw offsets by topic and partition.
pub(super) type Offsets = BTreeMap<(String, i32), i64>;

/// The open transaction and what it holds.
pub(super) struct Transaction {
    /// The transactional id.
    id: String,
    publisher: Publisher,
    interval: Duration,
    /// When the open transaction began; `None`: none is open.
    open_since: Option<Instant>,
    /// The processed batches of the open transaction, oldest first.
    held: Vec<InFlight>,
    /// The first raw offset the open transaction took, per partition:
    /// where reading starts again when it is aborted.
    start: HashMap<(String, i32), i64>,
    revoked: Arc<Revoked>,
}

/// Shared with the consumer's revocation hook.
struct Revoked {
    publisher: Publisher,
    /// A transaction is open.
    open: AtomicBool,
    /// The hook aborted it: the distributor must read again from
    /// [`Transaction::start`].
    aborted: AtomicBool,
}

impl Transaction {
    /// Registers `id` with the brokers (fencing an earlier process that used
    /// it and ending what it left open).
    pub(super) async fn register(
        ctx: &crate::source::feed::FeedContext,
        id: String,
        interval: Duration,
    ) -> Result<Self, DistributorError> {
        let publisher = Publisher::register(
            &ctx.settings,
            Some(ctx.metrics.clone()),
            &id,
            crate::kafka::DISTRIBUTOR_TRANSACTION_TIMEOUT,
            TRANSACTION_STEP,
        )
        .await?;
        Ok(Self {
            id,
            publisher: publisher.clone(),
            interval,
            open_since: None,
            held: Vec::new(),
            start: HashMap::new(),
            revoked: Arc::new(Revoked {
                publisher,
                open: AtomicBool::new(false),
                aborted: AtomicBool::new(false),
            }),
        })
    }

    /// The producer whose records go in the transaction.
    pub(super) fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    /// What the consumer calls before the group takes partitions away.
    pub(super) fn revoke_hook(&self) -> RevokeHook {
        let revoked = self.revoked.clone();
        Arc::new(move || {
            if revoked.open.swap(false, Ordering::AcqRel) {
                if let Err(e) = revoked.publisher.abort_transaction(TRANSACTION_STEP) {
                    tracing::warn!(error = %e, "aborting the open transaction before giving partitions up failed; the brokers abort it after its timeout");
                }
                revoked.aborted.store(true, Ordering::Release);
                tracing::info!("partitions move to another process: the open transaction was aborted and its raw records are read again");
            }
        })
    }

    /// Whether a transaction is open.
    pub(super) fn is_open(&self) -> bool {
        self.open_since.is_some()
    }

    /// When the open transaction is due to commit.
    pub(super) fn due(&self) -> Option<Instant> {
        self.open_since.map(|t| t + self.interval)
    }

    /// Whether the open transaction began `spans` intervals before `now`.
    pub(super) fn span_past(&self, spans: u32, now: Instant) -> bool {
        self.open_since
            .is_some_and(|t| t + self.interval * spans <= now)
    }

    /// Opens a transaction unless one is open (before the records of a
    /// batch are sent: they go in it). Where it starts on each partition
    /// is noted as the processed batch joins it ([`Transaction::hold`]).
    pub(super) fn open(&mut self) -> Result<(), DistributorError> {
        if self.open_since.is_none() {
            self.publisher.begin_transaction()?;
            self.open_since = Some(Instant::now());
            self.revoked.open.store(true, Ordering::Release);
        }
        Ok(())
    }

    /// A processed batch joins the open transaction (it is dropped when
    /// the revocation hook aborted that: its records are read again).
    pub(super) fn hold(&mut self, done: InFlight) -> Result<(), DistributorError> {
        if self.revoked.aborted.load(Ordering::Acquire) {
            return Ok(());
        }
        self.open()?;
        // A backfill's raw offsets are behind the live flow's, which an
        // abort goes back to.
        for ((topic, partition), (first, _)) in done.raw.iter().filter(|_| !done.replay) {
            self.start
                .entry((topic.clone(), *partition))
                .or_insert(*first);
        }
        self.held.push(done);
        Ok(())
    }

    /// Whether the revocation hook aborted the open transaction. Then the
    /// caller reads again from the returned offsets (the partitions it
    /// still holds) and forgets `dropped`, records received after it.
    pub(super) fn aborted(
        &mut self,
        consumer: &Consumer,
        dropped: &[crate::kafka::ConsumedRecord],
    ) -> Result<Option<Offsets>, DistributorError> {
        if !self.revoked.aborted.swap(false, Ordering::AcqRel) {
            return Ok(None);
        }
        self.open_since = None;
        self.held.clear();
        let mut again: Offsets = self.start.drain().collect();
        for r in dropped {
            again
                .entry((r.topic.clone(), r.partition))
                .or_insert(r.offset);
        }
        again.retain(|(topic, partition), _| consumer.holds(topic, *partition));
        for ((topic, partition), offset) in &again {
            consumer.seek(topic, *partition, *offset)?;
        }
        Ok(Some(again))
    }

    /// Commits the open transaction: waits for its records' deliveries,
    /// appends their delivery records to the audit trail inside it, adds
    /// the raw offsets after them (and those `plan` adds, each with its
    /// partition's metadata), commits. A failure aborts it (nothing of
    /// it is ever visible) and fails the run, which restarts from the last
    /// committed offsets. Returns whether a transaction committed.
    pub(super) async fn commit(
        &mut self,
        consumer: &Consumer,
        auditor: &Auditor,
        metrics: &crate::metrics::Metrics,
        plan: &CommitPlan,
    ) -> Result<bool, DistributorError> {
        if self.open_since.is_none() {
            return Ok(false);
        }
        // The consumer runs the revocation hook while it is polled; a
        // receive that was dropped for this commit may have run it. Then
        // there is nothing to commit: the caller reads again (`aborted`).
        if self.revoked.aborted.load(Ordering::Acquire) {
            return Ok(false);
        }
        let outcome = self.try_commit(consumer, auditor, plan).await;
        self.open_since = None;
        self.start.clear();
        self.held.clear();
        self.revoked.open.store(false, Ordering::Release);
        if let Err(e) = &outcome {
            let fenced = matches!(e, DistributorError::Kafka(k) | DistributorError::Audit(k) if k.is_fenced());
            if !fenced {
                let publisher = self.publisher.clone();
                let aborted = tokio::time::timeout(
                    TRANSACTION_STEP,
                    tokio::task::spawn_blocking(move || {
                        publisher.abort_transaction(TRANSACTION_STEP)
                    }),
                )
                .await;
                if !matches!(aborted, Ok(Ok(Ok(())))) {
                    tracing::warn!("aborting the failed transaction failed; the brokers abort it after its timeout");
                }
            }
        } else {
            metrics.distributor_transactions.inc();
        }
        match outcome {
            Ok(()) => Ok(true),
            Err(DistributorError::Kafka(e) | DistributorError::Audit(e)) if e.is_fenced() => {
                Err(DistributorError::Fenced(self.id.clone()))
            }
            Err(e) => Err(e),
        }
    }

    async fn try_commit(
        &mut self,
        consumer: &Consumer,
        auditor: &Auditor,
        plan: &CommitPlan,
    ) -> Result<(), DistributorError> {
        let mut deliveries = Vec::new();
        let mut next = Offsets::new();
        for done in &mut self.held {
            (&mut done.acks).await?;
            deliveries.extend(delivery_records(
                &done.raw,
                std::mem::take(&mut done.tallies),
            ));
            if done.replay {
                continue;
            }
            for ((topic, partition), (_, last)) in &done.raw {
                let at = next.entry((topic.clone(), *partition)).or_insert(last + 1);
                *at = (*at).max(last + 1);
            }
        }
        for (tp, at) in &plan.extra {
            let next_at = next.entry(tp.clone()).or_insert(*at);
            *next_at = (*next_at).max(*at);
        }
        // A partition not held any more whose records are in the
        // transaction: it must not commit (its next owner resumes from
        // the last commit), and its records with it.
        if let Some(((topic, partition), _)) = next
            .iter()
            .find(|(tp, _)| plan.only_listed && !plan.metadata.contains_key(*tp))
        {
            return Err(DistributorError::Settle(format!(
                "partition {partition} of {topic} was given up with records in the open transaction; aborted, read again from the last commit"
            )));
        }
        let staged = if deliveries.is_empty() {
            None
        } else {
            Some(
                auditor
                    .stage(&self.publisher, deliveries)
                    .await
                    .map_err(DistributorError::Audit)?,
            )
        };
        let group = consumer.group_metadata().ok_or_else(|| {
            DistributorError::Kafka(KafkaError::Admin {
                topic: String::new(),
                reason: "the distributor's consumer has no group metadata".to_owned(),
            })
        })?;
        let offsets: Vec<(String, i32, i64, String)> = next
            .into_iter()
            .map(|(tp, at)| {
                let metadata = plan.metadata.get(&tp).cloned().unwrap_or_default();
                (tp.0, tp.1, at, metadata)
            })
            .collect();
        let publisher = self.publisher.clone();
        let committing = tokio::task::spawn_blocking(move || {
            if !offsets.is_empty() {
                publisher.send_offsets_to_transaction(&offsets, &group, TRANSACTION_STEP)?;
            }
            publisher.commit_transaction(TRANSACTION_STEP)
        });
        // librdkafka's own timeouts do not always hold: with the group
        // coordinator's broker killed, adding the offsets was seen blocking
        // for minutes. Past the transaction's own lifetime the run fails and
        // restarts with a new producer, whose registration fences this one.
        match tokio::time::timeout(crate::kafka::DISTRIBUTOR_TRANSACTION_TIMEOUT, committing).await
        {
            Ok(joined) => joined.map_err(|e| DistributorError::Settle(e.to_string()))??,
            Err(_) => {
                return Err(DistributorError::Settle(format!(
                    "committing the distributor's transaction did not finish within {} s",
                    crate::kafka::DISTRIBUTOR_TRANSACTION_TIMEOUT.as_secs()
                )))
            }
        }
        if let Some(staged) = staged {
            staged.committed();
        }
        Ok(())
    }

    /// Aborts the open transaction as the run stops without committing
    /// (an error): readers need not wait for the brokers' timeout.
    pub(super) async fn abort(&mut self) {
        if self.open_since.take().is_some() {
            self.held.clear();
            self.start.clear();
            self.revoked.open.store(false, Ordering::Release);
            let publisher = self.publisher.clone();
            let _ = tokio::task::spawn_blocking(move || {
                publisher.abort_transaction(Duration::from_secs(5))
            })
            .await;
        }
    }
}
