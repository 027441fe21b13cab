//! A topic read from its beginning to its end and decoded through the
//! node's schema registry, whatever its schema: for tests that check what
//! a subscriber's share topic holds (which rows, which fields).

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use backflow::kafka::{Consumer, KafkaSettings, Watermarks};

/// One record: its key and value as JSON (`None` for a tombstone).
#[derive(Debug, Clone)]
pub struct Decoded {
    /// Partition and offset.
    pub at: (i32, i64),
    /// The key record.
    pub key: serde_json::Value,
    /// The change event (`before`, `after`, `source`, `op`, ...), or
    /// `None` for a tombstone.
    pub value: Option<serde_json::Value>,
}

impl Decoded {
    /// The row after the change (`after`), when there is one.
    pub fn after(&self) -> Option<&serde_json::Map<String, serde_json::Value>> {
        self.value.as_ref()?.get("after")?.as_object()
    }
}

/// The offsets `topic` (every partition) has used up to its current end:
/// its records, plus the commit markers of a transactionally written topic.
pub async fn high_watermark(bootstrap: &str, topic: &str) -> i64 {
    let settings = KafkaSettings::new(bootstrap);
    let Ok(n) = backflow::kafka::partition_count(&settings, topic).await else {
        return 0;
    };
    let w = Watermarks::new(&settings).expect("watermarks client");
    let mut total = 0;
    for p in 0..n as i32 {
        total += w.high(topic, p).await.unwrap_or(0);
    }
    total
}

/// Records of `topic` (every partition) a `read_committed` reader gets up
/// to its current end. Unlike the high watermark, it leaves out the
/// commit markers of a transactionally written topic (a raw topic).
pub async fn count(bootstrap: &str, topic: &str) -> i64 {
    count_with(&KafkaSettings::new(bootstrap), topic).await
}

/// [`count`] with the client settings of a secured broker.
pub async fn count_with(settings: &KafkaSettings, topic: &str) -> i64 {
    let settings = settings.clone();
    let Ok(n) = backflow::kafka::partition_count(&settings, topic).await else {
        return 0;
    };
    let w = Watermarks::new(&settings).expect("watermarks client");
    let mut ends = HashMap::new();
    for p in 0..n as i32 {
        // A transaction left open (a process killed mid-way) holds the
        // committed end back until the brokers abort it.
        let end = w
            .settled_high(&settings, topic, p, backflow::kafka::SETTLE_WITHIN)
            .await
            .unwrap_or(0);
        ends.insert(p, end);
    }
    let parts: Vec<i32> = ends.keys().copied().collect();
    let consumer = Consumer::replay_partitions(&settings, topic, &parts).expect("a reader");
    let mut total = 0;
    while let Some(_r) = tokio::time::timeout(Duration::from_secs(20), consumer.recv_to(&mut ends))
        .await
        .expect("read to its end within 20 s")
        .expect("readable")
    {
        total += 1;
    }
    total
}

/// Reads `topic` from its beginning to its current end and decodes every
/// record with the writer schemas of the registry at `registry_url`
/// (asked with `token`).
pub async fn read(
    bootstrap: &str,
    topic: &str,
    registry_url: &str,
    token: &str,
) -> anyhow::Result<Vec<Decoded>> {
    read_with(&KafkaSettings::new(bootstrap), topic, registry_url, token).await
}

/// [`read`] with a client's own settings (a secured broker's credentials).
pub async fn read_with(
    settings: &KafkaSettings,
    topic: &str,
    registry_url: &str,
    token: &str,
) -> anyhow::Result<Vec<Decoded>> {
    read_via(
        settings,
        topic,
        registry_url,
        token,
        &reqwest::Client::new(),
    )
    .await
}

/// [`read_with`], asking the registry with `client` (one that trusts the
/// CA of a node serving HTTPS).
pub async fn read_via(
    settings: &KafkaSettings,
    topic: &str,
    registry_url: &str,
    token: &str,
    client: &reqwest::Client,
) -> anyhow::Result<Vec<Decoded>> {
    let settings = settings.clone();
    let n = backflow::kafka::partition_count(&settings, topic)
        .await
        .with_context(|| format!("topic {topic}"))?;
    let w = Watermarks::new(&settings)?;
    let mut ends = HashMap::new();
    for p in 0..n as i32 {
        // Up to the committed end once no transaction is open on the
        // partition: a reader that stopped at an open one's first offset
        // would miss what commits after it on this partition while seeing
        // it on another.
        let high = w
            .settled_high(&settings, topic, p, backflow::kafka::SETTLE_WITHIN)
            .await?;
        if high > 0 {
            ends.insert(p, high);
        }
    }
    let mut out = Vec::new();
    if ends.is_empty() {
        return Ok(out);
    }
    let parts: Vec<i32> = ends.keys().copied().collect();
    let consumer = Consumer::replay_partitions(&settings, topic, &parts)?;
    let mut schemas: HashMap<u32, apache_avro::Schema> = HashMap::new();
    // A transactionally written topic ends with a commit marker, which
    // recv_to steps over.
    while let Some(r) = tokio::time::timeout(Duration::from_secs(20), consumer.recv_to(&mut ends))
        .await
        .map_err(|_| anyhow!("{topic} not read to its end within 20 s"))??
    {
        let key = match r.key.as_deref() {
            Some(k) => decode(client, registry_url, token, &mut schemas, k).await?,
            None => serde_json::Value::Null,
        };
        let value = match r.payload.as_deref() {
            Some(v) => Some(decode(client, registry_url, token, &mut schemas, v).await?),
            None => None,
        };
        out.push(Decoded {
            at: (r.partition, r.offset),
            key,
            value,
        });
    }
    Ok(out)
}

async fn decode(
    client: &reqwest::Client,
    registry_url: &str,
    token: &str,
    schemas: &mut HashMap<u32, apache_avro::Schema>,
    framed: &[u8],
) -> anyhow::Result<serde_json::Value> {
    let (id, mut body) = backflow_schemas::unframe(framed)?;
    if let std::collections::hash_map::Entry::Vacant(slot) = schemas.entry(id) {
        let resp = client
            .get(format!("{registry_url}/schemas/ids/{id}"))
            .bearer_auth(token)
            .send()
            .await?;
        let text = resp.text().await?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("schema {id} from the registry: {text}"))?;
        let schema = apache_avro::Schema::parse_str(
            v["schema"]
                .as_str()
                .ok_or_else(|| anyhow!("schema {id}: {text}"))?,
        )?;
        slot.insert(schema);
    }
    let value = apache_avro::reader::datum::GenericDatumReader::builder(&schemas[&id])
        .build()?
        .read_value(&mut body)?;
    Ok(serde_json::Value::try_from(value)?)
}
