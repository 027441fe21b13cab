//! The audit trail: every sharing decision and every delivered batch,
//! appended to `backflow._audit` as a hash chain.
//!
//! Each node writes its own chain (records keyed by its division code):
//! record n carries its sequence number, the hash of record n-1 and its own
//! hash, SHA-256 over the previous hash and the record's canonical JSON
//! (keys sorted). [`verify`] replays the topic and names the first record
//! whose hash does not match (edited), whose sequence skips (missing) or
//! repeats (inserted), or whose previous hash is not its predecessor's.

use backflow_connectors::now_ms;
use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;

use crate::kafka::{Consumer, KafkaError, KafkaSettings, OutgoingRecord, Publisher, Watermarks};
use crate::topics;

/// The hash before a chain's first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Appends to this node's audit chain. Cheap to clone.
#[derive(Clone)]
pub struct Auditor {
    inner: std::sync::Arc<Inner>,
}

struct Inner {
    node: String,
    publisher: Publisher,
    settings: KafkaSettings,
    /// (next sequence number, last hash), read from the topic on first
    /// use; held across a send so records reach the topic in chain order.
    chain: Mutex<Option<(u64, String)>>,
}

/// The hash of a record body (everything but `hash`) after `prev`.
fn digest(body: &Value) -> String {
    // serde_json's maps are sorted by key: the text is canonical.
    let text = body.to_string();
    let out = Sha256::digest(text.as_bytes());
    out.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads every record of the audit topic (up to its end when called).
async fn read_all(
    settings: &KafkaSettings,
) -> Result<Vec<(i64, Option<Vec<u8>>, Option<Vec<u8>>)>, KafkaError> {
    let high = Watermarks::new(settings)?.high(topics::AUDIT, 0).await?;
    let mut out = Vec::new();
    if high <= 0 {
        return Ok(out);
    }
    let consumer = Consumer::replay(settings, topics::AUDIT, 0)?;
    while out.last().is_none_or(|(o, _, _)| *o < high - 1) {
        let r = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .map_err(|_| KafkaError::Admin {
                topic: topics::AUDIT.to_owned(),
                reason: format!(
                    "no record within 30 s while reading up to offset {}",
                    high - 1
                ),
            })??;
        out.push((r.offset, r.key, r.payload));
    }
    Ok(out)
}

impl Auditor {
    /// An auditor continuing `node`'s chain; the chain's end is read from
    /// the topic on the first append. One per node process: two writers of
    /// one chain would fork it.
    pub fn new(settings: &KafkaSettings, publisher: Publisher, node: &str) -> Self {
        Self {
            inner: std::sync::Arc::new(Inner {
                node: node.to_owned(),
                publisher,
                settings: settings.clone(),
                chain: Mutex::new(None),
            }),
        }
    }

    async fn chain_end(settings: &KafkaSettings, node: &str) -> Result<(u64, String), KafkaError> {
        let mut next = (0u64, GENESIS.to_owned());
        for (_, key, payload) in read_all(settings).await? {
            if key.as_deref() != Some(node.as_bytes()) {
                continue;
            }
            if let Some(v) = payload.and_then(|p| serde_json::from_slice::<Value>(&p).ok()) {
                if let (Some(seq), Some(hash)) = (v["seq"].as_u64(), v["hash"].as_str()) {
                    next = (seq + 1, hash.to_owned());
                }
            }
        }
        tracing::info!(node, next_seq = next.0, "audit chain continues");
        Ok(next)
    }

    /// Appends a record of `kind` (`decision`, `delivery`) and waits for
    /// Kafka's acknowledgement. `details` must not hold row values.
    pub async fn append(&self, kind: &str, details: Value) -> Result<u64, KafkaError> {
        let appended = self.append_all(vec![(kind, details)]).await?;
        Ok(appended.expect("one record appended"))
    }

    /// Appends records in order, with one wait for Kafka's acknowledgement
    /// of them all instead of one per record; returns the sequence number
    /// of the last (`None` for no records: nothing is sent). `details`
    /// must not hold row values.
    ///
    /// The records go to one partition through the idempotent producer,
    /// so they land in chain order. Should any of them fail, the chain's
    /// end is read again from the topic on the next append: records of the
    /// round that did land stay part of the chain.
    pub async fn append_all(&self, records: Vec<(&str, Value)>) -> Result<Option<u64>, KafkaError> {
        if records.is_empty() {
            return Ok(None);
        }
        let mut chain = self.inner.chain.lock().await;
        if chain.is_none() {
            *chain = Some(Self::chain_end(&self.inner.settings, &self.inner.node).await?);
        }
        let (mut seq, mut prev) = chain.clone().expect("loaded above");
        let publisher = &self.inner.publisher;
        let mut batch = publisher.batch();
        let mut last = None;
        for (kind, details) in records {
            let mut record = json!({
                "node": self.inner.node,
                "seq": seq,
                "ts_ms": now_ms(),
                "kind": kind,
                "details": details,
                "prev": prev,
            });
            let hash = digest(&record);
            record["hash"] = Value::String(hash.clone());
            let payload = record.to_string();
            let queued = publisher
                .enqueue_in(
                    &mut batch,
                    OutgoingRecord::new(
                        topics::AUDIT,
                        self.inner.node.as_bytes(),
                        payload.as_bytes(),
                    ),
                )
                .await;
            if let Err(e) = queued {
                *chain = None;
                return Err(e);
            }
            last = Some(seq);
            (seq, prev) = (seq + 1, hash);
        }
        if let Err(e) = batch.seal().await {
            *chain = None;
            return Err(e);
        }
        *chain = Some((seq, prev));
        Ok(last)
    }
}

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Records checked per node chain.
    pub records: BTreeMap<String, u64>,
    /// The first problem per chain: (topic offset, what is wrong).
    pub problems: Vec<(i64, String)>,
}

/// Replays `backflow._audit` and checks every chain.
pub async fn verify(settings: &KafkaSettings) -> Result<VerifyReport, KafkaError> {
    let mut chains: BTreeMap<String, (u64, String, bool)> = BTreeMap::new();
    let mut report = VerifyReport {
        records: BTreeMap::new(),
        problems: Vec::new(),
    };
    for (offset, key, payload) in read_all(settings).await? {
        let node = key
            .as_deref()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .unwrap_or_default();
        let (next, prev, broken) =
            chains
                .entry(node.clone())
                .or_insert((0, GENESIS.to_owned(), false));
        *report.records.entry(node.clone()).or_default() += 1;
        if *broken {
            continue;
        }
        let mut fail = |why: String| {
            report.problems.push((
                offset,
                format!("node {node:?} chain, offset {offset}: {why}"),
            ));
        };
        let Some(mut v) = payload.and_then(|p| serde_json::from_slice::<Value>(&p).ok()) else {
            fail("not an audit record (unreadable JSON or empty)".to_owned());
            *broken = true;
            continue;
        };
        let stated = v
            .as_object_mut()
            .and_then(|o| o.remove("hash"))
            .and_then(|h| h.as_str().map(str::to_owned))
            .unwrap_or_default();
        let seq = v["seq"].as_u64();
        let problem = if v["node"].as_str() != Some(node.as_str()) {
            Some("the record's node differs from its key".to_owned())
        } else if seq != Some(*next) {
            Some(match seq {
                Some(s) if s > *next => format!(
                    "sequence jumps from {} to {s}: records are missing",
                    *next as i64 - 1
                ),
                Some(s) => format!(
                    "sequence {s} repeats or goes back (expected {next}): a record was inserted"
                ),
                None => "no sequence number".to_owned(),
            })
        } else if v["prev"].as_str() != Some(prev.as_str()) {
            Some(format!(
                "seq {next}: previous hash does not match record {}",
                *next as i64 - 1
            ))
        } else if digest(&v) != stated {
            Some(format!(
                "seq {next}: hash does not match its content: the record was altered"
            ))
        } else {
            None
        };
        match problem {
            Some(why) => {
                fail(why);
                *broken = true;
            }
            None => {
                *next += 1;
                *prev = stated;
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_is_over_canonical_json() {
        let a = json!({"b": 1, "a": {"y": 2, "x": 3}});
        let b: Value = serde_json::from_str(r#"{"a":{"x":3,"y":2},"b":1}"#).unwrap();
        assert_eq!(digest(&a), digest(&b));
        assert_ne!(digest(&a), digest(&json!({"b": 2, "a": {"y": 2, "x": 3}})));
        assert_eq!(digest(&a).len(), 64);
    }
}
