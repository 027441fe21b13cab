//! The current rows of a raw topic: what a compacted
//! `backflow.raw.<dataset>` says the table holds (the last after-image of
//! every key that is not deleted). Handed to sources that cannot read
//! before-images or deletes from their database (the polling source) through
//! [`backflow_connectors::Source::topic_state`].

use std::collections::HashMap;
use std::time::Duration;

use backflow_schemas::{
    table_from_schemas, unframe, Datum, EventReader, FramedReaders, Op, Row, TableCodec, TableDesc,
    TableTarget,
};

use crate::domain::topics;
use crate::kafka::{Consumer, KafkaError, KafkaSettings};
use crate::registry::Registry;

/// Why the rows of a raw topic could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TopicStateError {
    /// Kafka failed.
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    /// The topic was not read to its end in time.
    #[error("{0}")]
    Incomplete(String),
}

/// A reader of one writer schema version and, per column of the wanted
/// table, where it is in the writer's rows.
type Writer = (EventReader, Vec<Option<usize>>);

/// How long reading a topic to its end may take before it is an error.
const READ_LIMIT: Duration = Duration::from_secs(300);

/// The rows `backflow.raw.<table.dataset>` holds, mapped onto `table`'s
/// columns by name (a column the record lacks is NULL). Records that do not
/// decode are skipped with a warning: they never described a row.
pub async fn current_rows(
    settings: &KafkaSettings,
    registry: &Registry,
    table: &TableDesc,
) -> Result<Vec<Row>, TopicStateError> {
    let topic = topics::raw(&table.dataset);
    let n = crate::kafka::partition_count(settings, &topic).await? as i32;
    let watermarks = crate::kafka::Watermarks::new(settings)?;
    let mut left: HashMap<i32, i64> = HashMap::new();
    for p in 0..n {
        // The feed's last transaction may be committed and not yet marked.
        let high = watermarks
            .settled_high(settings, &topic, p, crate::kafka::SETTLE_WITHIN)
            .await?;
        if high > 0 {
            left.insert(p, high);
        }
    }
    if left.is_empty() {
        return Ok(Vec::new());
    }
    let partitions: Vec<i32> = left.keys().copied().collect();
    let consumer = Consumer::replay_partitions(settings, &topic, &partitions)?;
    let (department, name) = table
        .dataset
        .split_once('.')
        .unwrap_or(("", &table.dataset));
    let target = TableTarget {
        dataset: table.dataset.clone(),
        schema: department.to_owned(),
        name: name.to_owned(),
    };
    let mut readers = FramedReaders::new();
    // Per (key schema id, value schema id): the writer's codec and where
    // each of `table`'s columns is in its rows (None: not decodable).
    let mut versions: HashMap<(u32, u32), Option<Writer>> = HashMap::new();
    // Keyed by the key's Avro body: one key, one encoding.
    let mut rows: HashMap<Vec<u8>, Row> = HashMap::new();
    let deadline = tokio::time::Instant::now() + READ_LIMIT;
    let mut skipped = 0u64;
    // Feeds write raw topics in transactions: a partition's end may be a
    // commit marker, which recv_to steps over.
    while let Some(record) = tokio::time::timeout_at(deadline, consumer.recv_to(&mut left))
        .await
        .map_err(|_| {
            TopicStateError::Incomplete(format!(
                "reading {topic} to its end took more than {} s",
                READ_LIMIT.as_secs()
            ))
        })??
    {
        let Some(key_bytes) = record.key.as_deref() else {
            continue;
        };
        let Ok((key_id, key_body)) = unframe(key_bytes) else {
            skipped += 1;
            continue;
        };
        let Some(payload) = record.payload.as_deref() else {
            rows.remove(key_body);
            continue;
        };
        let Ok((value_id, _)) = unframe(payload) else {
            skipped += 1;
            continue;
        };
        if let std::collections::hash_map::Entry::Vacant(slot) = versions.entry((key_id, value_id))
        {
            let version = match (
                registry.schema_by_id(key_id).await,
                registry.schema_by_id(value_id).await,
            ) {
                (Some(k), Some(v)) => {
                    readers.add(key_id, &k).ok();
                    readers.add(value_id, &v).ok();
                    table_from_schemas(&k, &v, &target)
                        .and_then(TableCodec::new)
                        .ok()
                        .map(|codec| {
                            let at = table
                                .columns
                                .iter()
                                .map(|c| codec.table().column(&c.name).map(|(i, _)| i))
                                .collect();
                            (EventReader::new(codec, &k, &v), at)
                        })
                }
                _ => None,
            };
            slot.insert(version);
        }
        let Some((reader, at)) = &versions[&(key_id, value_id)] else {
            skipped += 1;
            continue;
        };
        match reader.read(&readers, key_bytes, payload) {
            Ok(e) if e.op == Op::Delete => {
                rows.remove(key_body);
            }
            Ok(e) => {
                if let Some(after) = e.after {
                    let row = Row(at
                        .iter()
                        .map(|i| {
                            i.and_then(|i| after.0.get(i).cloned())
                                .unwrap_or(Datum::Null)
                        })
                        .collect());
                    rows.insert(key_body.to_vec(), row);
                }
            }
            Err(_) => skipped += 1,
        }
    }
    if skipped > 0 {
        tracing::warn!(topic = %topic, skipped, "raw records that do not decode were left out of the topic's state");
    }
    Ok(rows.into_values().collect())
}
