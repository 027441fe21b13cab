//! Benchmark of the distributor: raw events per second in, with 1, 10 and
//! 100 active shares of one dataset (each event matching half of them),
//! next to a plain consumer reading the same raw topic as the limit; the 1
//! and 10 share cases run twice, exactly once (the distributor's Kafka
//! transactions, `kafka.distributor_transactions = true`) and at least once
//! (`kafka.distributor_transactions = false`, the default), so the
//! transactions' cost is measured in the same run. Prints figures;
//! asserts nothing.
//!
//! Run with `scripts/bench-distributor.sh [EVENTS]` (release build). Each
//! case runs on a fresh Apache Kafka broker on this machine: the
//! broker, the node and this program share the cores.
//!
//! With `BACKFLOW_BENCH_BROKERS=host:port` (e.g. the Apache Kafka broker of
//! `scripts/kafka.sh up`, which `scripts/bench-distributor.sh --real-kafka`
//! starts) every case runs against that broker instead. It is shared by the
//! cases and outlives the run, so each case has a dataset (hence raw and
//! share topics and registry subjects) and a node code (hence distributor
//! group and audit chain) of its own, unique to this run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use backflow::kafka::{Consumer, KafkaSettings, OutgoingRecord, Publisher};
use backflow_e2e::{Node, TestBroker};
use backflow_schemas::registry_client::{subject_for, RegistryClient};
use backflow_schemas::{
    frame, ChangeEvent, ColumnDesc, Datum, Decimal, Op, Row, SourceInfo, SqlType, TableCodec,
    TableDesc, TransactionInfo,
};

/// The dataset on a per-case Apache Kafka broker.
const DATASET: &str = "bench.people";

/// Where a case's topics live.
enum Broker {
    /// A fresh broker of the case's own, stopped when dropped.
    Fresh(TestBroker),
    /// A broker given by `BACKFLOW_BENCH_BROKERS`, shared by all cases.
    Shared(String),
}

impl Broker {
    fn bootstrap(&self) -> &str {
        match self {
            Broker::Fresh(b) => b.bootstrap(),
            Broker::Shared(b) => b,
        }
    }
}

/// One case's names: its dataset and the code of the node distributing it.
struct Names {
    dataset: String,
    /// The node's `kafka.topic_prefix`.
    prefix: String,
}

/// The distributing node: the province, so that the subscribers
/// 331000-331099 lie inside its jurisdiction.
const NODE_CODE: &str = "330000";

impl Names {
    /// On a fresh broker, the fixed names. On a shared one, a dataset and a
    /// topic prefix unique to this run (`run`) and case (`case`): raw and
    /// share topics, the registry's and the catalog's topics, the
    /// distributor's consumer group and the audit chain are all the case's
    /// own, so no case reads another's (or an earlier run's) data or waits
    /// for its dead group member.
    fn new(shared: bool, run: u64, case: u64) -> Self {
        if !shared {
            return Self {
                dataset: DATASET.to_owned(),
                prefix: "backflow.".to_owned(),
            };
        }
        Self {
            dataset: format!("{DATASET}_r{run}_c{case}"),
            prefix: format!("bench.r{run}.c{case}."),
        }
    }

    fn raw_topic(&self) -> String {
        format!("{}raw.{}", self.prefix, self.dataset)
    }
}

fn table(dataset: &str) -> TableDesc {
    TableDesc {
        dataset: dataset.into(),
        schema: "public".into(),
        name: "people".into(),
        columns: vec![
            ColumnDesc::new("id", SqlType::BigInt, false),
            ColumnDesc::new("name", SqlType::Varchar { len: Some(64) }, false),
            ColumnDesc::new("id_number", SqlType::Char { len: Some(18) }, false),
            ColumnDesc::new("phone", SqlType::Varchar { len: Some(20) }, true),
            ColumnDesc::new("region_code", SqlType::Char { len: Some(6) }, false),
            ColumnDesc::new(
                "income",
                SqlType::Decimal {
                    precision: Some(12),
                    scale: Some(2),
                },
                true,
            ),
            ColumnDesc::new("flag", SqlType::Boolean, false),
        ],
        primary_key: vec!["id".into()],
    }
}

fn event(id: i64) -> anyhow::Result<ChangeEvent> {
    let row = Row(vec![
        Datum::Long(id),
        Datum::Text(format!("居民{id}")),
        Datum::Text(format!("330106199001{:06}", id % 1_000_000)),
        Datum::Text(format!("1380000{:04}", id % 10_000)),
        Datum::Text("330106".into()),
        Datum::Decimal(Decimal::parse(&format!("{}.50", id % 100_000), 2)?),
        Datum::Bool(id % 2 == 0),
    ]);
    let event = ChangeEvent {
        key: Row(vec![Datum::Long(id)]),
        before: None,
        after: Some(row),
        source: SourceInfo {
            position: format!("{:016X}", id).into(),
            ts_ms: 1_700_000_000_000,
            ..SourceInfo::default()
        },
        op: Op::Create,
        ts_ms: None,
        transaction: Some(TransactionInfo {
            id: id.to_string().into(),
            total_order: 1,
            data_collection_order: 1,
        }),
    };
    Ok(event)
}

fn metric(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn fill(broker: &Broker, names: &Names, events: i64) -> anyhow::Result<()> {
    // A node only for its registry (the case's, under its prefix), which
    // the admin writes to.
    let admin = backflow_e2e::TestToken::new("admin");
    let node = Node::start_with_config(
        &admin.auth_toml(),
        &[
            ("BACKFLOW_KAFKA__BROKERS", broker.bootstrap()),
            ("BACKFLOW_KAFKA__TOPIC_PREFIX", &names.prefix),
        ],
    )?;
    node.wait_for_status("/readyz", 200, Duration::from_secs(30))
        .await?;
    let codec = TableCodec::new(table(&names.dataset))?;
    let registry = RegistryClient::new(&node.url)?.with_token(admin.token());
    let topic = names.raw_topic();
    let key_id = registry
        .register(&subject_for(&topic, true), codec.key_schema())
        .await?;
    let value_id = registry
        .register(&subject_for(&topic, false), codec.value_schema())
        .await?;
    let settings = KafkaSettings::new(broker.bootstrap());
    backflow::kafka::TopicAdmin::new(&settings)?
        .ensure(&[backflow::kafka::TopicSpec::compacted(topic.clone(), 3, 1)])
        .await?;
    let publisher = Arc::new(Publisher::new(&settings, None)?);
    let mut batch = publisher.batch();
    for id in 0..events {
        let event = event(id)?;
        let key = frame(key_id, &codec.encode_key(&event.key)?);
        let value = frame(value_id, &codec.encode_value(&event)?);
        publisher
            .enqueue_in(
                &mut batch,
                OutgoingRecord {
                    topic: &topic,
                    key: Some(&key),
                    payload: Some(&value),
                    headers: &[("backflow.origin_ts", b"1700000000000")],
                },
            )
            .await?;
        if batch.len() >= 10_000 {
            std::mem::replace(&mut batch, publisher.batch())
                .seal()
                .await?;
        }
    }
    batch.seal().await?;
    Ok(())
}

/// The distributor's own work per share record on one thread, without
/// Kafka: row filter, field policy (mask, HMAC), Avro encoding, framing.
fn cpu_only(events: i64) -> anyhow::Result<()> {
    use backflow::domain::policy::{FieldRule, Predicate, SharePolicy};
    let source = table(DATASET);
    let shares: Vec<(
        SharePolicy,
        backflow::domain::policy::ShareTable,
        TableCodec,
    )> = (0..10)
        .map(|i| {
            let policy = SharePolicy {
                subscriber: format!("{:06}", 331_000 + i),
                dataset: DATASET.into(),
                rows: backflow::domain::policy::RowRule::All,
                prefix: String::new(),
                predicates: vec![Predicate {
                    column: "flag".into(),
                    op: "=".into(),
                    value: if i % 2 == 0 { "t" } else { "f" }.into(),
                }],
                fields: [
                    ("id", "plain"),
                    ("name", "masked:name"),
                    ("id_number", "masked:keep(6,4)"),
                    ("phone", "hashed"),
                    ("region_code", "plain"),
                    ("flag", "plain"),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), FieldRule::parse(v).unwrap()))
                .collect(),
                secret: b"bench-secret-0123456789".to_vec(),
                version: 1,
            };
            let t = policy.share_table(&source).unwrap();
            let codec = TableCodec::new(t.desc.clone()).unwrap();
            (policy, t, codec)
        })
        .collect();
    let input: Vec<ChangeEvent> = (0..events).map(event).collect::<Result<_, _>>()?;
    let started = Instant::now();
    let mut out = 0u64;
    for e in &input {
        for (policy, t, codec) in &shares {
            if let Some(shared) = policy.share_event(t, e) {
                let (key, value) = codec.encode_framed_parts(1, 2, shared.with_provenance(e))?;
                out += (key.len() + value.len() > 0) as u64;
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "without Kafka, one thread, 10 shares: {:.0} events/s in, {:.0} share records/s out",
        events as f64 / secs,
        out as f64 / secs
    );

    province_shape(&input)?;

    // Reading the raw records: straight into rows (what the distributor
    // does with records backflow wrote), and through Avro's generic reader
    // (what it does with a foreign writer schema).
    let codec = TableCodec::new(source)?;
    let encoded: Vec<(Vec<u8>, Vec<u8>)> = input
        .iter()
        .map(|e| Ok((codec.encode_key(&e.key)?, codec.encode_value(e)?)))
        .collect::<anyhow::Result<_>>()?;
    type Read = fn(&TableCodec, &[u8], &[u8]) -> Result<ChangeEvent, backflow_schemas::SchemaError>;
    let ways: [(&str, Read); 2] = [
        ("straight into rows", |c, k, v| {
            c.decode_value(c.decode_key(k)?, v)
        }),
        ("through Avro's generic reader", |c, k, v| {
            c.decode_value_generic(c.decode_key_generic(k)?, v)
        }),
    ];
    for (how, read) in ways {
        let started = Instant::now();
        for (k, v) in &encoded {
            std::hint::black_box(read(&codec, k, v)?);
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "decoding raw records {how}, one thread: {:.0} events/s ({:.2} µs each)",
            events as f64 / secs,
            secs * 1e6 / events as f64
        );
    }
    Ok(())
}

/// The shape of a province, without Kafka, one thread: one dataset's
/// shares of its districts (6-digit jurisdiction prefixes, ten per city)
/// and cities (4 digits), each change in one district and its city. Events
/// per second with 11 to 990 shares, finding the shares a change
/// concerns through the jurisdiction index (what the distributor does) and
/// by testing every share's row rule (what it did before), so that the
/// cost per event is seen not to grow with the subscriptions.
fn province_shape(input: &[ChangeEvent]) -> anyhow::Result<()> {
    use backflow::domain::policy::{FieldRule, JurisdictionIndex, RowRule, SharePolicy};
    let source = table(DATASET);
    println!("province shape (one dataset; a change in one district and its city), one thread, without Kafka:");
    println!("| shares of the dataset | events/s, index | events/s, every rule tested | share records per event |");
    println!("|---:|---:|---:|---:|");
    let mut first = None;
    for n in [11usize, 110, 990] {
        // n shares: per city 33cc, its ten districts 33ccdd and itself.
        let shares: Vec<_> = (0..n)
            .map(|i| {
                let (city, district) = (1 + (i / 11) % 90, i % 11);
                let prefix = if district == 10 {
                    format!("33{city:02}")
                } else {
                    format!("33{city:02}{:02}", 1 + district)
                };
                let policy = SharePolicy {
                    subscriber: format!("{:06}", 400_000 + i),
                    dataset: DATASET.into(),
                    rows: RowRule::Jurisdiction("region_code".into()),
                    prefix,
                    predicates: vec![],
                    fields: [
                        ("id", "plain"),
                        ("name", "masked:name"),
                        ("id_number", "masked:keep(6,4)"),
                        ("phone", "hashed"),
                        ("region_code", "plain"),
                    ]
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), FieldRule::parse(v).unwrap()))
                    .collect(),
                    secret: b"bench-secret-0123456789".to_vec(),
                    version: 1,
                };
                let t = policy.share_table(&source).unwrap();
                let codec = TableCodec::new(t.desc.clone()).unwrap();
                (policy, t, codec)
            })
            .collect();
        let index = JurisdictionIndex::new(shares.iter().map(|(p, t, _)| Some((p, t))));
        // The changes, spread over the districts that have a share: each
        // is in one district and its city.
        let districts: Vec<&str> = shares
            .iter()
            .map(|(p, _, _)| p.prefix.as_str())
            .filter(|p| p.len() == 6)
            .collect();
        let input: Vec<ChangeEvent> = input
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let mut e = e.clone();
                if let Some(row) = e.after.as_mut() {
                    row.0[4] = Datum::Text(districts[i % districts.len()].to_owned());
                }
                e
            })
            .collect();
        let mut candidates = Vec::new();
        let mut rates = [0f64; 2];
        let mut out = 0u64;
        for (way, rate) in rates.iter_mut().enumerate() {
            out = 0;
            let started = Instant::now();
            for e in &input {
                if way == 0 {
                    index.candidates(e, &mut candidates);
                } else {
                    candidates.clear();
                    candidates.extend(0..shares.len());
                }
                for &i in &candidates {
                    let (policy, t, codec) = &shares[i];
                    if let Some(shared) = policy.share_event(t, e) {
                        let (key, value) =
                            codec.encode_framed_parts(1, 2, shared.with_provenance(e))?;
                        out += (key.len() + value.len() > 0) as u64;
                    }
                }
            }
            *rate = input.len() as f64 / started.elapsed().as_secs_f64();
        }
        let base = *first.get_or_insert(rates[0]);
        println!(
            "| {n} | {:.0} ({:.2}× the figure with 11) | {:.0} | {:.1} |",
            rates[0],
            rates[0] / base,
            rates[1],
            out as f64 / input.len() as f64
        );
    }
    Ok(())
}

/// Events/s a plain consumer reads the raw topic at.
async fn raw_rate(broker: &Broker, names: &Names, events: i64) -> anyhow::Result<f64> {
    let settings = KafkaSettings::new(broker.bootstrap());
    let topic = names.raw_topic();
    let parts = backflow::kafka::partition_count(&settings, &topic).await? as i32;
    let consumer = Consumer::replay_partitions(&settings, &topic, &(0..parts).collect::<Vec<_>>())?;
    let started = Instant::now();
    for _ in 0..events {
        tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await??;
    }
    Ok(events as f64 / started.elapsed().as_secs_f64())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let events: i64 = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(100_000);
    let shared = std::env::var("BACKFLOW_BENCH_BROKERS")
        .ok()
        .map(|b| b.trim().to_owned())
        .filter(|b| !b.is_empty());
    // Tells this run's names on a shared broker from earlier runs'.
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    println!("distributor benchmark: one dataset, each event matching half of the shares (7 columns: masked, hashed and plain fields)");
    match &shared {
        Some(b) => println!(
            "broker: {b} from BACKFLOW_BENCH_BROKERS, shared by all cases (topics and node code per case, run {run})"
        ),
        None => println!("broker: Apache Kafka 4.1.1, a fresh one per case"),
    }
    cpu_only(events)?;
    let cases = [
        (1usize, true),
        (1, false),
        (10, true),
        (10, false),
        (100, true),
    ];
    for (case, (shares, transactions)) in cases.into_iter().enumerate() {
        // 100 shares write 50 records per event: fewer events keep the
        // broker's memory in bounds.
        let n = if shares >= 100 { events / 5 } else { events };
        let broker = match &shared {
            Some(b) => Broker::Shared(b.clone()),
            None => Broker::Fresh(TestBroker::start_for_bench()),
        };
        let names = Names::new(shared.is_some(), run, case as u64);
        fill(&broker, &names, n).await?;
        let limit = raw_rate(&broker, &names, n).await?;
        let mut config = format!(
            "[node]\ncode = \"{NODE_CODE}\"\n[kafka]\nbrokers = \"{}\"\ntopic_prefix = \"{}\"\ntransactions = {transactions}\ndistributor_transactions = {transactions}\n",
            broker.bootstrap(),
            names.prefix
        );
        for i in 0..shares {
            config.push_str(&format!(
                "\n[[shares]]\nsubscriber = \"{:06}\"\ndataset = \"{}\"\nall_rows = true\nfields = {{ id = \"plain\", name = \"masked:name\", id_number = \"masked:keep(6,4)\", phone = \"hashed\", region_code = \"plain\", flag = \"plain\" }}\npredicates = [{{ column = \"flag\", op = \"=\", value = \"{}\" }}]\nsecret_env = \"BENCH_SECRET\"\n",
                331_000 + i,
                names.dataset,
                if i % 2 == 0 { "t" } else { "f" }
            ));
        }
        let expected = (0..shares)
            .map(|i| {
                if shares == 1 || i % 2 == 0 {
                    n / 2 + n % 2
                } else {
                    n / 2
                }
            })
            .sum::<i64>() as f64;
        let node =
            Node::start_with_config(&config, &[("BENCH_SECRET", "bench-secret-0123456789")])?;
        let mut first: Option<Instant> = None;
        let deadline = Instant::now() + Duration::from_secs(600);
        let done = loop {
            let (_, m) = node.get_ops("/metrics").await?;
            let produced = metric(&m, "backflow_distributor_records_total");
            if produced > 0.0 && first.is_none() {
                first = Some(Instant::now());
            }
            if produced >= expected {
                break Instant::now();
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "distributor did not finish: {produced} of {expected} share records\n{}",
                    node.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let secs = done
            .duration_since(first.unwrap_or(done))
            .as_secs_f64()
            .max(0.001);
        let rate = n as f64 / secs;
        let mode = if transactions {
            "exactly once "
        } else {
            "at least once"
        };
        println!(
            "{shares:>3} shares, {mode}: {n:>7} events in {secs:>6.2} s = {rate:>8.0} events/s in, {:>8.0} share records/s out | plain consumer {limit:>8.0} events/s | ratio {:.2}",
            expected / secs,
            rate / limit
        );
    }
    Ok(())
}
