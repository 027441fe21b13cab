//! Source positions in `backflow._offsets` (compacted, keyed by feed): the
//! last checkpoint a feed acknowledged, i.e. whose every change Kafka holds.
//! A restarted feed hands it to its source, which resumes from it (and
//! knows its initial snapshot finished).

use std::collections::HashMap;
use std::time::Duration;

use backflow_connectors::{Position, TopicOffset};
use serde::{Deserialize, Serialize};

use crate::domain::topics;
use crate::kafka::{
    self, Consumer, KafkaError, KafkaSettings, OutgoingRecord, Publisher, Watermarks,
};

#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    feed: String,
    position: String,
    ts_ms: i64,
}

fn key(feed: &str) -> String {
    format!("feed:{feed}")
}

/// The record of a feed's position in `backflow._offsets`: (key, value).
/// A transactional feed writes it in the transaction of the changes it
/// follows.
pub fn record(feed: &str, position: &Position) -> (String, Vec<u8>) {
    let value = serde_json::to_vec(&Stored {
        feed: feed.to_owned(),
        position: position.as_str().to_owned(),
        ts_ms: backflow_connectors::now_ms(),
    })
    .expect("serializes");
    (key(feed), value)
}

/// Records a feed's acknowledged position and waits for Kafka to have it.
pub async fn save(
    publisher: &Publisher,
    feed: &str,
    position: &Position,
) -> Result<(), KafkaError> {
    let (k, value) = record(feed, position);
    publisher
        .send(OutgoingRecord::new(topics::offsets(), k.as_bytes(), &value))
        .await
        .map(|_| ())
}

/// Forgets a feed's position (a tombstone): its next start is a first start.
pub async fn clear(publisher: &Publisher, feed: &str) -> Result<(), KafkaError> {
    let k = key(feed);
    publisher
        .send(OutgoingRecord {
            topic: topics::offsets(),
            key: Some(k.as_bytes()),
            payload: None,
            headers: &[],
        })
        .await
        .map(|_| ())
}

/// The last position recorded for a feed, read from the whole topic.
pub async fn load(settings: &KafkaSettings, feed: &str) -> Result<Option<Position>, KafkaError> {
    Ok(latest(settings, &key(feed))
        .await?
        .and_then(|v| serde_json::from_slice::<Stored>(&v).ok())
        .map(|s| Position::from(s.position)))
}

fn subscription_key(subscription: &str) -> String {
    format!("subscription:{subscription}")
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredOffsets {
    subscription: String,
    offsets: Vec<TopicOffset>,
    ts_ms: i64,
}

/// Records the upstream offsets a subscription whose sink is this node's
/// bus has applied (every record before them acknowledged by Kafka) and
/// waits for Kafka to have them. Offsets of partitions not named keep
/// their stored value: `all` is the whole set to store.
pub async fn save_subscription(
    publisher: &Publisher,
    subscription: &str,
    all: &[TopicOffset],
) -> Result<(), KafkaError> {
    let value = serde_json::to_vec(&StoredOffsets {
        subscription: subscription.to_owned(),
        offsets: all.to_vec(),
        ts_ms: backflow_connectors::now_ms(),
    })
    .expect("serializes");
    let k = subscription_key(subscription);
    publisher
        .send(OutgoingRecord::new(topics::offsets(), k.as_bytes(), &value))
        .await
        .map(|_| ())
}

/// The upstream offsets last recorded for a subscription (empty when none).
pub async fn load_subscription(
    settings: &KafkaSettings,
    subscription: &str,
) -> Result<Vec<TopicOffset>, KafkaError> {
    Ok(latest(settings, &subscription_key(subscription))
        .await?
        .and_then(|v| serde_json::from_slice::<StoredOffsets>(&v).ok())
        .map(|s| s.offsets)
        .unwrap_or_default())
}

/// The latest value of `wanted` in the whole topic (`None` when absent or
/// deleted).
async fn latest(settings: &KafkaSettings, wanted: &str) -> Result<Option<Vec<u8>>, KafkaError> {
    let partitions = kafka::partition_count(settings, topics::offsets()).await?;
    if partitions == 0 {
        return Ok(None);
    }
    let watermarks = Watermarks::new(settings)?;
    let mut ends = HashMap::new();
    for p in 0..partitions as i32 {
        // Feeds write it in transactions: one still open (a feed killed
        // mid-write, a commit not yet marked) would hide what follows it.
        let high = watermarks
            .settled_high(settings, topics::offsets(), p, kafka::SETTLE_WITHIN)
            .await?;
        if high > 0 {
            ends.insert(p, high);
        }
    }
    if ends.is_empty() {
        return Ok(None);
    }
    let parts: Vec<i32> = ends.keys().copied().collect();
    let consumer = Consumer::replay_partitions(settings, topics::offsets(), &parts)?;
    let mut found = None;
    let deadline =
        tokio::time::Instant::now() + settings.request_timeout.max(Duration::from_secs(10)) * 3;
    // Feeds write it in transactions: its end may be a commit marker.
    while let Some(r) = tokio::time::timeout_at(deadline, consumer.recv_to(&mut ends))
        .await
        .map_err(|_| KafkaError::Admin {
            topic: topics::offsets().into(),
            reason: "reading stored positions timed out".into(),
        })??
    {
        if r.key.as_deref() == Some(wanted.as_bytes()) {
            found = r.payload;
        }
    }
    Ok(found)
}
