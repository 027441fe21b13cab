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
//! The raw topic's offsets are stored only after Kafka acknowledged every
//! share record produced from the records before them: a crash replays, and
//! the subscribers' version guard makes the replay harmless.

pub mod policy;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use apache_avro::Schema;
use backflow_schemas::registry_client::subject_for;
use backflow_schemas::{
    frame, table_from_schemas, unframe, FramedReaders, Op, TableCodec, TableDesc, TableTarget,
};
use tokio_util::sync::CancellationToken;

use crate::audit::Auditor;
use crate::catalog::{Catalog, Subscription, SubscriptionState};
use crate::config::ShareConfig;
use crate::feed::{FeedContext, HEADER_HOPS, HEADER_ORIGIN, HEADER_ORIGIN_TS};
use crate::kafka::{ConsumedRecord, Consumer, Delivery, KafkaError, OutgoingRecord, TopicSpec};
use crate::registry::RegistryError;
use crate::topics;
use policy::{SharePolicy, ShareTable};

/// Header: the version of the share policy a record was produced under.
pub const HEADER_POLICY: &str = "backflow.policy";

/// Most raw records handled between two offset stores.
const BATCH: usize = 1_000;
/// Longest a batch waits to fill.
const LINGER: Duration = Duration::from_millis(20);

/// Why the distributor stopped.
#[derive(Debug, thiserror::Error)]
pub enum DistributorError {
    /// Kafka failed.
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    /// The audit trail could not be written.
    #[error("writing the audit trail failed: {0}")]
    Audit(#[source] KafkaError),
    /// A share schema could not be registered.
    #[error("registering the schema of {topic} failed: {source}")]
    Schema {
        topic: String,
        #[source]
        source: RegistryError,
    },
}

/// One share, ready to run.
struct Share {
    policy: SharePolicy,
    topic: String,
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
    codec: TableCodec,
    /// Per share of the dataset (same order); `None` when the policy does
    /// not fit the table (logged once).
    shares: Vec<Option<ShareCodec>>,
}

/// Runs the distributor for `shares` until shutdown or an error.
pub async fn run(
    shares: &[ShareConfig],
    ctx: &FeedContext,
    auditor: &Auditor,
    shutdown: &CancellationToken,
) -> Result<(), DistributorError> {
    let by_dataset = group(shares);
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
    let raw_refs: Vec<&str> = raw.iter().map(String::as_str).collect();
    let consumer = Consumer::new(
        &ctx.settings,
        &group_id(&ctx.node),
        &raw_refs,
        Some(ctx.metrics.clone()),
    )?;
    tracing::info!(
        datasets = by_dataset.len(),
        shares = shares.len(),
        "distributor started"
    );
    let mut readers = FramedReaders::new();
    let mut versions: HashMap<(u32, u32), Version> = HashMap::new();
    // The previous batch: its share records are still being acknowledged
    // while the next batch is processed; its offsets are stored once they
    // all are.
    let mut previous: Option<InFlight> = None;
    loop {
        // A batch: the first record waits as long as it takes, the rest
        // only as long as LINGER.
        let first = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = consumer.recv() => r?,
        };
        let mut batch = vec![first];
        let until = tokio::time::Instant::now() + LINGER;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(until, consumer.recv()).await {
                Ok(r) => batch.push(r?),
                Err(_) => break,
            }
        }
        let mut deliveries: Vec<Delivery> = Vec::new();
        let mut tallies: BTreeMap<String, Tally> = BTreeMap::new();
        for record in &batch {
            let Some(dataset) = topics::dataset_of(&record.topic) else {
                continue;
            };
            let Some(list) = by_dataset.get(dataset) else {
                continue;
            };
            let mut out = Out {
                deliveries: &mut deliveries,
                tallies: &mut tallies,
            };
            distribute(
                record,
                dataset,
                list,
                ctx,
                &mut readers,
                &mut versions,
                &mut out,
            )
            .await?;
        }
        if let Some(done) = previous.take() {
            done.settle(auditor, &consumer).await?;
        }
        previous = Some(InFlight {
            deliveries,
            batch,
            tallies,
        });
    }
    if let Some(done) = previous.take() {
        done.settle(auditor, &consumer).await?;
    }
    let _ = consumer.commit();
    tracing::info!("distributor stopped");
    Ok(())
}

/// The consumer group of this node's distributor.
pub fn group_id(node: &str) -> String {
    format!("backflow-distributor-{node}")
}

fn group(shares: &[ShareConfig]) -> HashMap<String, Vec<Share>> {
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
            .push(Share {
                topic: topics::share(s.subscriber.as_str(), &s.dataset),
                policy,
            });
    }
    by_dataset
}

/// Delivers a newly active share's current state: the raw topic from its
/// beginning up to (not including) `until` per partition, the positions
/// the main distributor continues from, so the share topic gets the
/// history first and then the live changes, in order per key.
pub async fn backfill(
    share: &ShareConfig,
    until: &[((String, i32), i64)],
    ctx: &FeedContext,
    auditor: &Auditor,
    shutdown: &CancellationToken,
) -> Result<u64, DistributorError> {
    let by_dataset = group(std::slice::from_ref(share));
    let Some(list) = by_dataset.get(&share.dataset) else {
        return Ok(0);
    };
    let todo: Vec<&((String, i32), i64)> = until.iter().filter(|(_, end)| *end > 0).collect();
    if todo.is_empty() {
        return Ok(0);
    }
    let topic = topics::raw(&share.dataset);
    let partitions: Vec<i32> = todo.iter().map(|((_, p), _)| *p).collect();
    let consumer = Consumer::replay_partitions(&ctx.settings, &topic, &partitions)?;
    let mut remaining: HashMap<i32, i64> = todo.iter().map(|((_, p), end)| (*p, *end)).collect();
    let mut readers = FramedReaders::new();
    let mut versions: HashMap<(u32, u32), Version> = HashMap::new();
    let mut total = 0u64;
    while !remaining.is_empty() {
        let mut batch = Vec::new();
        while batch.len() < BATCH && !remaining.is_empty() {
            let r = tokio::select! {
                _ = shutdown.cancelled() => return Ok(total),
                r = consumer.recv() => r?,
            };
            let Some(end) = remaining.get(&r.partition).copied() else {
                continue;
            };
            if r.offset + 1 >= end {
                remaining.remove(&r.partition);
            }
            if r.offset < end {
                batch.push(r);
            }
        }
        let mut deliveries = Vec::new();
        let mut tallies = BTreeMap::new();
        for record in &batch {
            let mut out = Out {
                deliveries: &mut deliveries,
                tallies: &mut tallies,
            };
            distribute(
                record,
                &share.dataset,
                list,
                ctx,
                &mut readers,
                &mut versions,
                &mut out,
            )
            .await?;
        }
        for d in deliveries {
            d.await?;
        }
        total += tallies.values().map(|t| t.records).sum::<u64>();
        audit_batch(auditor, &batch, tallies).await?;
    }
    tracing::info!(subscriber = %share.subscriber, dataset = %share.dataset, records = total, "backfill finished");
    Ok(total)
}

/// A processed batch whose share records are on their way to Kafka.
struct InFlight {
    deliveries: Vec<Delivery>,
    batch: Vec<ConsumedRecord>,
    tallies: BTreeMap<String, Tally>,
}

impl InFlight {
    /// Waits for every acknowledgement, audits, stores the raw offsets.
    async fn settle(self, auditor: &Auditor, consumer: &Consumer) -> Result<(), DistributorError> {
        for d in self.deliveries {
            d.await?;
        }
        audit_batch(auditor, &self.batch, self.tallies).await?;
        for record in &self.batch {
            consumer.store_record(record)?;
        }
        Ok(())
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
    deliveries: &'a mut Vec<Delivery>,
    tallies: &'a mut BTreeMap<String, Tally>,
}

/// One audit record per share topic the batch delivered to: how many
/// records, the raw offsets they came from, a checksum of what was sent.
async fn audit_batch(
    auditor: &Auditor,
    batch: &[ConsumedRecord],
    tallies: BTreeMap<String, Tally>,
) -> Result<(), DistributorError> {
    use sha2::Digest;
    if tallies.is_empty() {
        return Ok(());
    }
    let mut raw: BTreeMap<(String, i32), (i64, i64)> = BTreeMap::new();
    for r in batch {
        let e = raw
            .entry((r.topic.clone(), r.partition))
            .or_insert((r.offset, r.offset));
        e.0 = e.0.min(r.offset);
        e.1 = e.1.max(r.offset);
    }
    let raw: Vec<serde_json::Value> = raw
        .into_iter()
        .map(|((topic, partition), (first, last))| {
            serde_json::json!({"topic": topic, "partition": partition, "first_offset": first, "last_offset": last})
        })
        .collect();
    for (topic, t) in tallies {
        let sum: String = t
            .checksum
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        auditor
            .append(
                "delivery",
                serde_json::json!({
                    "share_topic": topic,
                    "records": t.records,
                    "raw": raw,
                    "sha256": sum,
                    "policy_version": t.policy_version,
                }),
            )
            .await
            .map_err(DistributorError::Audit)?;
    }
    Ok(())
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
        let (Some(key_schema), Some(value_schema)) =
            (schema(ctx, key_id).await, schema(ctx, value_id).await)
        else {
            return skip(format!(
                "schema {key_id} or {value_id} is not in this node's registry"
            ));
        };
        readers.add(key_id, &key_schema).ok();
        readers.add(value_id, &value_schema).ok();
        let (department, name) = dataset.split_once('.').unwrap_or(("", dataset));
        let target = TableTarget {
            dataset: dataset.to_owned(),
            schema: department.to_owned(),
            name: name.to_owned(),
        };
        let source = match table_from_schemas(&key_schema, &value_schema, &target)
            .and_then(TableCodec::new)
        {
            Ok(c) => c,
            Err(e) => return skip(e.to_string()),
        };
        let mut list = Vec::new();
        for s in shares {
            list.push(match s.policy.share_table(source.table()) {
                Ok(table) => Some(share_codec(table, &s.topic, ctx).await?),
                Err(reason) => {
                    tracing::error!(subscriber = %s.policy.subscriber, dataset, %reason, "share policy does not fit the dataset; nothing is delivered to this subscriber until it is fixed");
                    None
                }
            });
        }
        slot.insert(Version {
            codec: source,
            shares: list,
        });
    }
    let version = &versions[&(key_id, value_id)];
    let decoded = readers
        .decode(key_bytes)
        .map_err(|e| e.to_string())
        .and_then(|(_, k)| version.codec.key_from(k))
        .and_then(|key| {
            let (_, v) = readers.decode(payload).map_err(|e| e.to_string())?;
            version.codec.event_from(key, v)
        });
    let event = match decoded {
        Ok(e) => e,
        Err(why) => return skip(why),
    };
    let hops = match record.header(HEADER_HOPS) {
        Some(h) if !h.is_empty() => format!("{},{}", String::from_utf8_lossy(h), ctx.node),
        _ => ctx.node.clone(),
    };
    let origin = record.header(HEADER_ORIGIN).unwrap_or_default();
    let origin_ts = record.header(HEADER_ORIGIN_TS).unwrap_or_default();
    for (s, codec) in shares.iter().zip(&version.shares) {
        let Some(sc) = codec else { continue };
        let Some(shared) = s.policy.share_event(&sc.table, &event) else {
            continue;
        };
        let encoded = sc
            .codec
            .encode_key(&shared.key)
            .and_then(|k| sc.codec.encode_value(&shared).map(|v| (k, v)));
        let (key, value) = match encoded {
            Ok(kv) => kv,
            Err(e) => {
                tracing::warn!(subscriber = %s.policy.subscriber, reason = %e, "share record not encodable; skipped");
                continue;
            }
        };
        let (key, value) = (frame(sc.key_id, &key), frame(sc.value_id, &value));
        let policy = s.policy.version.to_string();
        let headers: [(&str, &[u8]); 4] = [
            (HEADER_ORIGIN, origin),
            (HEADER_ORIGIN_TS, origin_ts),
            (HEADER_HOPS, hops.as_bytes()),
            (HEADER_POLICY, policy.as_bytes()),
        ];
        let tally = out.tallies.entry(s.topic.clone()).or_insert_with(|| Tally {
            records: 0,
            checksum: sha2::Sha256::new(),
            policy_version: s.policy.version,
        });
        tally.records += 1;
        tally.checksum.update(&key);
        tally.checksum.update(&value);
        out.deliveries.push(
            ctx.publisher
                .enqueue(OutgoingRecord {
                    topic: &s.topic,
                    key: Some(&key),
                    payload: Some(&value),
                    headers: &headers,
                })
                .await?,
        );
        if shared.op == Op::Delete {
            out.deliveries.push(
                ctx.publisher
                    .enqueue(OutgoingRecord {
                        topic: &s.topic,
                        key: Some(&key),
                        payload: None,
                        headers: &headers,
                    })
                    .await?,
            );
        }
        ctx.metrics
            .distributor_records
            .with_label_values(&[&s.policy.subscriber, shared.op.code()])
            .inc();
    }
    Ok(())
}

/// A schema of the node's registry, waiting once for the registry to catch
/// up when the id is not known yet.
async fn schema(ctx: &FeedContext, id: u32) -> Option<Arc<Schema>> {
    if let Some(e) = ctx.registry.state().await.schema(id) {
        return Some(e.schema.clone());
    }
    let _ = ctx.registry.caught_up().await;
    ctx.registry
        .state()
        .await
        .schema(id)
        .map(|e| e.schema.clone())
}

/// Registers a share table's schemas under its topic's subjects.
async fn share_codec(
    table: ShareTable,
    topic: &str,
    ctx: &FeedContext,
) -> Result<ShareCodec, DistributorError> {
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
/// subscriptions; plus the active subscriptions still to backfill.
async fn current(
    config_shares: &[ShareConfig],
    catalog: &Catalog,
) -> (Vec<ShareConfig>, Vec<(ShareConfig, Subscription)>) {
    let mut shares = config_shares.to_vec();
    let mut backfill = Vec::new();
    let st = catalog.state().await;
    for sub in st.subscriptions.values() {
        if sub.state != SubscriptionState::Active {
            continue;
        }
        let Some(dataset) = st.datasets.get(&sub.dataset) else {
            continue;
        };
        let Ok(subscriber) = crate::config::DivisionCode::parse(&sub.subscriber) else {
            continue;
        };
        let share = ShareConfig {
            subscriber,
            dataset: sub.dataset.clone(),
            region_column: dataset.region_column.clone(),
            fields: sub.granted.clone(),
            predicates: Vec::new(),
            secret_env: None,
            secret: Some(sub.secret.clone()),
            version: sub.policy_version,
        };
        if !sub.backfilled {
            backfill.push((share.clone(), sub.clone()));
        }
        shares.push(share);
    }
    (shares, backfill)
}

/// What identifies a set of shares: restart the distributor when it changes.
fn signature(shares: &[ShareConfig]) -> Vec<String> {
    let mut sig: Vec<String> = shares
        .iter()
        .map(|s| {
            format!(
                "{}|{}|{}|{:?}|{:?}",
                s.subscriber, s.dataset, s.version, s.fields, s.region_column
            )
        })
        .collect();
    sig.sort();
    sig
}

/// Runs the distributor for the configured shares and the catalog's active
/// subscriptions: restarts it when they change (a revocation stops delivery
/// within moments), backfills each newly active subscription from the raw
/// topic first, and restarts with backoff after errors.
///
/// While a backfill runs, the other shares wait: the backfill covers the raw
/// topic up to where the distributor's group stands, so each share topic
/// gets every key's history in order.
pub async fn supervise(
    config_shares: Vec<ShareConfig>,
    catalog: Catalog,
    auditor: Auditor,
    ctx: FeedContext,
    shutdown: CancellationToken,
) {
    for s in &config_shares {
        let decision = serde_json::json!({
            "action": "share active (node configuration)",
            "subscriber": s.subscriber.as_str(),
            "dataset": s.dataset,
            "region_column": s.region_column,
            "fields": s.fields,
            "predicates": s.predicates,
            "policy_version": s.version,
            "by": "configuration",
        });
        if let Err(e) = auditor.append("decision", decision).await {
            tracing::error!(error = %e, "cannot write the audit trail");
        }
    }
    let mut changes = catalog.changes();
    let mut backoff = Duration::from_secs(1);
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        let _ = catalog.caught_up().await;
        let (shares, to_backfill) = current(&config_shares, &catalog).await;
        let mut failed = false;
        for (share, mut sub) in to_backfill {
            let raw = topics::raw(&share.dataset);
            let outcome = async {
                let n = crate::kafka::partition_count(&ctx.settings, &raw).await?;
                let parts: Vec<(String, i32)> = (0..n as i32).map(|p| (raw.clone(), p)).collect();
                let committed =
                    crate::kafka::group_committed(&ctx.settings, &group_id(&ctx.node), &parts)
                        .await?;
                let until: Vec<((String, i32), i64)> = parts
                    .into_iter()
                    .zip(committed)
                    .map(|(tp, o)| (tp, o.unwrap_or(0)))
                    .collect();
                backfill(&share, &until, &ctx, &auditor, &shutdown).await
            }
            .await;
            match outcome {
                Ok(records) => {
                    tracing::info!(subscription = %sub.id, records, "subscription backfilled");
                    sub.backfilled = true;
                    if let Err(e) = catalog
                        .put(crate::catalog::CatalogRecord::Subscription(sub))
                        .await
                    {
                        tracing::error!(error = %e, "cannot record the backfill in the catalog");
                        failed = true;
                    }
                }
                Err(e) => {
                    tracing::error!(subscription = %sub.id, error = %e, "backfill failed");
                    failed = true;
                }
            }
        }
        if !failed && !shares.is_empty() {
            let sig = signature(&shares);
            let child = shutdown.child_token();
            let run_fut = run(&shares, &ctx, &auditor, &child);
            tokio::pin!(run_fut);
            let outcome = loop {
                tokio::select! {
                    r = &mut run_fut => break r,
                    c = changes.changed() => {
                        if c.is_err() {
                            child.cancel();
                            continue;
                        }
                        let _ = catalog.caught_up().await;
                        let (now, pending) = current(&config_shares, &catalog).await;
                        if signature(&now) != sig || !pending.is_empty() {
                            tracing::info!("shares changed; restarting the distributor");
                            child.cancel();
                        }
                    }
                }
            };
            match outcome {
                Ok(()) if shutdown.is_cancelled() => return,
                Ok(()) => {
                    backoff = Duration::from_secs(1);
                    continue;
                }
                Err(e) => {
                    ctx.metrics.distributor_restarts.inc();
                    tracing::error!(error = %e, retry_in = ?backoff, "distributor failed");
                    failed = true;
                }
            }
        }
        if failed {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(60));
        } else {
            // Nothing to deliver yet: wait for the catalog to change.
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = changes.changed() => {}
            }
        }
    }
}
