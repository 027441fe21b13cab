//! A raw topic read and folded by key, as a subscriber would see the table:
//! the state a compacted `backflow.raw.<dataset>` converges to.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use backflow::kafka::{ConsumedRecord, Consumer, KafkaSettings};
use backflow_schemas::{unframe, Datum, Op, Row, TableCodec, TableDesc};

use crate::{unique_name, Node};

/// The first key column as an integer.
pub fn int_key(key: &Row) -> i64 {
    match key.0[0] {
        Datum::Long(v) => v,
        Datum::Int(v) => i64::from(v),
        ref d => panic!("key {d:?} is not an integer"),
    }
}

/// Reads a raw topic (from its start, in a consumer group of its own) and
/// folds it by its integer key, decoding with the expected table
/// description.
pub struct TopicView {
    /// The consumer, for tests that read records themselves.
    pub consumer: Consumer,
    codec: TableCodec,
    /// Current row per key.
    pub state: BTreeMap<i64, Row>,
    /// Records read per op code (`c`, `u`, `d`, `r`) and `tombstone`.
    pub ops: BTreeMap<&'static str, usize>,
    /// Records read.
    pub records: usize,
    /// What it reads, to read it again afresh.
    source: (String, String, TableDesc),
}

impl TopicView {
    /// A view of `topic` on the broker at `bootstrap`, decoding as `desc`.
    pub fn new(bootstrap: &str, topic: &str, desc: TableDesc) -> Self {
        let settings = KafkaSettings::new(bootstrap);
        let consumer = Consumer::new(&settings, &unique_name("view"), &[topic], None).unwrap();
        Self {
            consumer,
            codec: TableCodec::new(desc.clone()).unwrap(),
            state: BTreeMap::new(),
            ops: BTreeMap::new(),
            records: 0,
            source: (bootstrap.to_owned(), topic.to_owned(), desc),
        }
    }

    /// Folds one record in; checks what every record must carry.
    pub fn apply(&mut self, r: ConsumedRecord) {
        self.records += 1;
        let (_, key) = unframe(r.key.as_deref().unwrap()).unwrap();
        let key = self.codec.decode_key(key).unwrap();
        let id = int_key(&key);
        let Some(payload) = r.payload.as_deref() else {
            self.state.remove(&id);
            *self.ops.entry("tombstone").or_default() += 1;
            return;
        };
        let (_, body) = unframe(payload).unwrap();
        let event = self.codec.decode_value(key, body).unwrap();
        assert!(r.header("backflow.origin_ts").is_some());
        *self.ops.entry(event.op.code()).or_default() += 1;
        match event.op {
            Op::Delete => {
                assert!(
                    event.before.is_some(),
                    "deletes carry the full before-image"
                );
                self.state.remove(&id);
            }
            Op::Update => {
                assert!(
                    event.before.is_some(),
                    "updates carry the full before-image"
                );
                self.state.insert(id, event.after.unwrap());
            }
            _ => {
                self.state.insert(id, event.after.unwrap());
            }
        }
    }

    /// Reads `topic` from its beginning to its end as it is now, with a
    /// consumer of its own that stores no position, and folds it: a count
    /// of what the topic holds that does not depend on a long-lived
    /// consumer keeping up.
    pub async fn read_all(bootstrap: &str, topic: &str, desc: TableDesc) -> anyhow::Result<Self> {
        let settings = KafkaSettings::new(bootstrap);
        let n = backflow::kafka::partition_count(&settings, topic).await?;
        let w = backflow::kafka::Watermarks::new(&settings)?;
        let mut ends = HashMap::new();
        for p in 0..n as i32 {
            let high = w.high(topic, p).await?;
            if high > 0 {
                ends.insert(p, high);
            }
        }
        let parts: Vec<i32> = ends.keys().copied().collect();
        let mut view = Self {
            consumer: Consumer::replay_partitions(&settings, topic, &parts)?,
            codec: TableCodec::new(desc.clone())?,
            state: BTreeMap::new(),
            ops: BTreeMap::new(),
            records: 0,
            source: (bootstrap.to_owned(), topic.to_owned(), desc),
        };
        // A raw topic is written in transactions: its end may be a commit
        // marker, which recv_to steps over.
        while let Some(r) =
            tokio::time::timeout(Duration::from_secs(20), view.consumer.recv_to(&mut ends))
                .await
                .map_err(|_| anyhow::anyhow!("{topic} not read to its end within 20 s"))??
        {
            view.apply(r);
        }
        Ok(view)
    }

    /// Reads the topic afresh ([`TopicView::read_all`]) until it holds
    /// what `done` asks for, or fails at the deadline with the last count
    /// and the node's log.
    pub async fn read_all_until(
        bootstrap: &str,
        topic: &str,
        desc: &TableDesc,
        deadline: Duration,
        node: &Node,
        done: impl Fn(&Self) -> bool,
    ) -> Self {
        let until = Instant::now() + deadline;
        loop {
            let last = Self::read_all(bootstrap, topic, desc.clone()).await;
            if let Ok(v) = &last {
                if done(v) {
                    return last.unwrap();
                }
            }
            assert!(
                Instant::now() < until,
                "the topic never held what was expected: {:?}\nnode log:\n{}",
                last.map(|v| (v.records, v.ops, v.state.len())),
                node.stderr()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Reads the tombstones still in flight: the state equals the table as
    /// soon as a delete is read, its tombstone comes right after.
    pub async fn until_tombstones_follow_deletes(&mut self) {
        let until = Instant::now() + Duration::from_secs(20);
        while self.ops.get("d") != self.ops.get("tombstone") && Instant::now() < until {
            if let Ok(Ok(r)) =
                tokio::time::timeout(Duration::from_millis(500), self.consumer.recv()).await
            {
                self.apply(r);
            }
        }
    }

    /// Reads until the folded topic equals `want`, or fails at the deadline
    /// with what differs and the node's log.
    pub async fn until_equal(
        &mut self,
        want: &BTreeMap<i64, Row>,
        deadline: Duration,
        node: &Node,
    ) {
        let until = Instant::now() + deadline;
        let mut progress = Instant::now();
        while &self.state != want {
            if progress.elapsed() > Duration::from_secs(10) {
                // Nothing read for a while: read the topic afresh, so a
                // consumer that stopped moving is not taken for a topic
                // that does not hold the rows. The fresh consumer goes on
                // reading what comes next.
                let (bootstrap, topic, desc) = self.source.clone();
                if let Ok(fresh) = Self::read_all(&bootstrap, &topic, desc).await {
                    *self = fresh;
                }
                progress = Instant::now();
                continue;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let missing = want.keys().filter(|k| !self.state.contains_key(k)).count();
                let extra = self.state.keys().filter(|k| !want.contains_key(k)).count();
                let differ: Vec<_> = want
                    .iter()
                    .filter(|(k, v)| self.state.get(k).is_some_and(|s| s != *v))
                    .map(|(k, _)| *k)
                    .take(5)
                    .collect();
                panic!(
                    "topic never matched the table: {} records read, {missing} keys missing, {extra} extra, differing keys {differ:?}; ops {:?}\nnode log:\n{}",
                    self.records, self.ops, node.stderr()
                );
            }
            match tokio::time::timeout(left.min(Duration::from_secs(1)), self.consumer.recv()).await
            {
                Ok(Ok(r)) => {
                    progress = Instant::now();
                    self.apply(r)
                }
                // The feed creates its topic when it starts.
                Ok(Err(e)) if e.to_string().contains("UnknownTopicOrPartition") => {
                    tokio::time::sleep(Duration::from_millis(200)).await
                }
                Ok(Err(e)) => panic!("consuming the raw topic: {e}"),
                Err(_) => continue,
            }
        }
    }
}
