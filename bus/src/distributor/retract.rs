//! Retraction: what this node received from an upper node is taken back
//! when the upper grant ends.
//!
//! For each key of the dataset's raw topic whose latest record is a row
//! (not a delete), a delete of that row and a tombstone are appended to the
//! raw topic, as if the department had deleted it. The distributor, still
//! delivering the dataset's shares while the retraction runs, turns them
//! into each subscriber's deletes (only the rows of its own jurisdiction,
//! as always), so the lower nodes' tables lose the rows; compaction then
//! drops them from the raw topic, so no later backfill can share them
//! again. [`retract`] returns once the distributor has stored offsets past
//! the retraction.
//!
//! Guarantees: running it again finds nothing left to retract (idempotent:
//! a node restarted mid-way finishes the job). Records written with
//! schemas backflow did not generate are left as they are (logged).

use crate::domain::headers::{HEADER_HOPS, HEADER_ORIGIN, HEADER_ORIGIN_TS, HEADER_RETRACTION};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use backflow_schemas::{
    table_from_schemas, unframe, EventReader, EventRef, FramedReaders, Op, TableCodec, TableTarget,
};

use super::{group_id, DistributorError};
use crate::domain::topics;
use crate::kafka::{Consumer, OutgoingRecord};
use crate::source::feed::FeedContext;

/// How long [`retract`] waits for the distributor to pass the retraction.
const DISTRIBUTED_WITHIN: Duration = Duration::from_secs(60);

/// The latest record of one key.
struct Latest {
    key: Vec<u8>,
    value: Option<Vec<u8>>,
    origin: Vec<u8>,
    hops: Vec<u8>,
}

/// Appends a delete and a tombstone for every row of `dataset`'s raw topic
/// and waits until the distributor delivered them; returns how many rows
/// were retracted.
pub async fn retract(
    dataset: &str,
    reason: &str,
    ctx: &FeedContext,
) -> Result<u64, DistributorError> {
    let topic = topics::raw(dataset);
    let n = match crate::kafka::partition_count(&ctx.settings, &topic).await {
        Ok(n) => n as i32,
        // Nothing was ever received: nothing to take back.
        Err(_) => return Ok(0),
    };
    let watermarks = crate::kafka::Watermarks::new(&ctx.settings)?;
    let latest = latest_rows(ctx, &topic, n, &watermarks).await?;
    // Only records written with backflow's own schemas are read (directly),
    // so no writer schema is ever added here.
    let readers = FramedReaders::new();
    let mut versions: HashMap<(u32, u32), Option<EventReader>> = HashMap::new();
    let (department, name) = dataset.split_once('.').unwrap_or(("", dataset));
    let target = TableTarget {
        dataset: dataset.to_owned(),
        schema: department.to_owned(),
        name: name.to_owned(),
    };
    let now = backflow_connectors::now_ms();
    let now_text = now.to_string();
    let mut batch = ctx.publisher.batch();
    let mut retracted = 0u64;
    for l in latest.values() {
        let Some(value) = l.value.as_deref() else {
            continue;
        };
        let (Ok((key_id, _)), Ok((value_id, _))) = (unframe(&l.key), unframe(value)) else {
            continue;
        };
        if let std::collections::hash_map::Entry::Vacant(slot) = versions.entry((key_id, value_id))
        {
            let reader = match (
                ctx.registry.schema_by_id(key_id).await,
                ctx.registry.schema_by_id(value_id).await,
            ) {
                (Some(k), Some(v)) => table_from_schemas(&k, &v, &target)
                    .and_then(TableCodec::new)
                    .ok()
                    .map(|c| EventReader::new(c, &k, &v))
                    .filter(EventReader::is_direct),
                _ => None,
            };
            if reader.is_none() {
                tracing::warn!(
                    dataset,
                    key_id,
                    value_id,
                    "records written with schemas backflow did not generate are not retracted"
                );
            }
            slot.insert(reader);
        }
        let Some(reader) = &versions[&(key_id, value_id)] else {
            continue;
        };
        let Ok(event) = reader.read(&readers, &l.key, value) else {
            continue;
        };
        if event.op == Op::Delete || event.after.is_none() {
            continue;
        }
        let delete = EventRef {
            key: &event.key,
            before: event.after.as_ref(),
            after: None,
            source: &event.source,
            op: Op::Delete,
            ts_ms: Some(now),
            transaction: None,
        };
        let Ok((key, value)) = reader.codec().encode_framed_parts(key_id, value_id, delete) else {
            continue;
        };
        let headers: [(&str, &[u8]); 4] = [
            (HEADER_ORIGIN, &l.origin),
            (HEADER_ORIGIN_TS, now_text.as_bytes()),
            (HEADER_HOPS, &l.hops),
            (HEADER_RETRACTION, reason.as_bytes()),
        ];
        for payload in [Some(value.as_slice()), None] {
            ctx.publisher
                .enqueue_in(
                    &mut batch,
                    OutgoingRecord {
                        topic: &topic,
                        key: Some(&key),
                        payload,
                        headers: &headers,
                    },
                )
                .await?;
        }
        retracted += 1;
    }
    batch.seal().await?;
    if retracted == 0 {
        return Ok(0);
    }
    tracing::warn!(dataset, rows = retracted, %reason, "rows received from the upper node retracted");
    wait_distributed(ctx, dataset, &topic, n, &watermarks).await?;
    Ok(retracted)
}

/// The last record of every key of the raw topic `topic` (of `n`
/// partitions), read up to the end it had when reading began.
async fn latest_rows(
    ctx: &FeedContext,
    topic: &str,
    n: i32,
    watermarks: &crate::kafka::Watermarks,
) -> Result<BTreeMap<Vec<u8>, Latest>, DistributorError> {
    let mut ends: HashMap<i32, i64> = HashMap::new();
    for p in 0..n {
        let high = watermarks.high(topic, p).await?;
        if high > 0 {
            ends.insert(p, high);
        }
    }
    let mut latest: BTreeMap<Vec<u8>, Latest> = BTreeMap::new();
    if !ends.is_empty() {
        let parts: Vec<i32> = ends.keys().copied().collect();
        let consumer = Consumer::replay_partitions(&ctx.settings, topic, &parts)?;
        let mut remaining = ends.clone();
        while let Some(r) = consumer.recv_to(&mut remaining).await? {
            let Some(key) = r.key.clone() else { continue };
            latest.insert(
                key.clone(),
                Latest {
                    key,
                    value: r.payload.clone(),
                    origin: r.header(HEADER_ORIGIN).unwrap_or_default().to_vec(),
                    hops: r.header(HEADER_HOPS).unwrap_or_default().to_vec(),
                },
            );
        }
    }
    Ok(latest)
}

/// Waits until the distributor stored offsets past the retraction in every
/// partition of `topic`, so its deletes reached every share before the
/// shares stop (at most [`DISTRIBUTED_WITHIN`]).
async fn wait_distributed(
    ctx: &FeedContext,
    dataset: &str,
    topic: &str,
    n: i32,
    watermarks: &crate::kafka::Watermarks,
) -> Result<(), DistributorError> {
    let mut until: Vec<(String, i32, i64)> = Vec::new();
    for p in 0..n {
        until.push((topic.to_owned(), p, watermarks.high(topic, p).await?));
    }
    let parts: Vec<(String, i32)> = until.iter().map(|(t, p, _)| (t.clone(), *p)).collect();
    let deadline = Instant::now() + DISTRIBUTED_WITHIN;
    loop {
        let committed =
            crate::kafka::group_committed(&ctx.settings, &group_id(&ctx.node), &parts).await?;
        if until
            .iter()
            .zip(&committed)
            .all(|((_, _, end), c)| c.unwrap_or(0) >= *end)
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            tracing::error!(dataset, "the distributor did not deliver the retraction within 60 s; the shares stop anyway");
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
