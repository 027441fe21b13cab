//! The three-level cascade end to end, with three real processes: province
//! 330000 runs a department's PostgreSQL feed and shares the population
//! table with city 330100 (identity number masked, phone hashed, income
//! withheld); the city subscribes with its own Kafka as the sink, so the
//! rows land in its raw topic and its distributor re-shares them to
//! district 330106 (phone withheld too); the district applies them to its
//! PostgreSQL database with `backflow subscribe`.
//!
//! Each level has its own broker, as in a deployment: topic names are not
//! scoped by node (DESIGN.md), so two levels on one cluster would write
//! the same raw topic.
//!
//! Checked: the district holds exactly its own residents, masked as both
//! hops require; a resident moving out of the district is deleted there;
//! provenance (origin, origin commit time, hops) survives both hops, so the
//! district's lag counts from the province department's commit; a change
//! that already passed the city is refused as a loop and dead-lettered.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use backflow::kafka::{
    partition_count, ConsumedRecord, Consumer, KafkaSettings, OutgoingRecord, Publisher, Watermarks,
};
use backflow_e2e::sinks::{Backend, Kind, SinkDb};
use backflow_e2e::{
    free_local_addr, masked_residents, pg_connect, unique_name, Node, TestBroker, TestToken,
    PEOPLE_TABLE,
};

const READ: [(&str, Kind); 3] = [
    ("name", Kind::Text),
    ("id_number", Kind::Text),
    ("region_code", Kind::Text),
];

async fn until_equal(sink: &SinkDb, source: &str, nodes: &[&Node]) {
    let until = Instant::now() + Duration::from_secs(90);
    loop {
        let want = masked_residents(source, "330106").await;
        let got = sink
            .rows("people", "id", &READ)
            .await
            .unwrap()
            .unwrap_or_default();
        if got == want && !want.is_empty() {
            return;
        }
        if Instant::now() > until {
            let logs: Vec<String> = nodes.iter().map(|n| n.stderr()).collect();
            panic!(
                "district 330106 never matched: {} rows expected, {} held; e.g. want {:?} got {:?}\nlogs (province, city, district):\n{}",
                want.len(),
                got.len(),
                want.iter().next(),
                got.iter().next(),
                logs.join("\n-----\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Every record of a topic (all partitions, up to the current end).
async fn records(bootstrap: &str, topic: &str) -> Vec<ConsumedRecord> {
    let settings = KafkaSettings::new(bootstrap);
    let partitions = partition_count(&settings, topic).await.unwrap() as i32;
    let marks = Watermarks::new(&settings).unwrap();
    let mut out = Vec::new();
    for p in 0..partitions {
        let high = marks.high(topic, p).await.unwrap();
        if high == 0 {
            continue;
        }
        let consumer = Consumer::replay(&settings, topic, p).unwrap();
        let mut ends = std::collections::HashMap::from([(p, high)]);
        while let Some(r) =
            tokio::time::timeout(Duration::from_secs(20), consumer.recv_to(&mut ends))
                .await
                .expect("records up to the high watermark arrive")
                .unwrap()
        {
            out.push(r);
        }
    }
    out
}

fn header(r: &ConsumedRecord, name: &str) -> String {
    String::from_utf8_lossy(r.header(name).unwrap_or_default()).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_province_change_reaches_the_district_through_the_city_filtered_and_masked_twice() {
    // The province department's table: residents of two districts of city
    // 330100, of another of its districts, and of city 330200.
    let source = SinkDb::create(Backend::Postgres).await.unwrap();
    pg_connect(&source.name)
        .await
        .unwrap()
        .batch_execute(&format!(
            "{PEOPLE_TABLE}
             INSERT INTO people
             SELECT g, (ARRAY['张三丰','李四','王小明'])[g % 3 + 1],
                    (ARRAY['330106','330108','330102','330201'])[g % 4 + 1]
                      || '19900101' || lpad((g % 10000)::text, 4, '0'),
                    '1380000' || lpad((g % 5)::text, 4, '0'),
                    (ARRAY['330106','330108','330102','330201'])[g % 4 + 1],
                    g * 10.5
             FROM generate_series(1, 200) g;"
        ))
        .await
        .unwrap();
    let dataset = format!("t{}.people", &source.name[8..]);
    let feed = source.name.replace('_', "-");

    let province_bus = TestBroker::start();
    let city_bus = TestBroker::start();
    // Each lower level reads the upper registry with the token the upper
    // node gave it: the city by an environment variable, the district by
    // a file.
    let city_token = TestToken::new("subscriber:330100");
    let district_token = TestToken::new("subscriber:330106");

    let province = Node::start_with_config(
        &format!(
            "[node]\ncode = \"330000\"\n[kafka]\nbrokers = \"{bus}\"\n\n\
             [[feeds]]\ntype = \"postgres\"\nname = \"{feed}\"\nuser = \"postgres\"\ndatabase = \"{db}\"\ntables = [{{ table = \"public.people\", dataset = \"{dataset}\" }}]\n\n\
             [[shares]]\nsubscriber = \"330100\"\ndataset = \"{dataset}\"\nregion_column = \"region_code\"\nonward = \"within_jurisdiction\"\n\
             fields = {{ id = \"plain\", name = \"masked:name\", id_number = \"masked:keep(6,4)\", phone = \"hashed\", region_code = \"plain\" }}\n\
             secret_env = \"SECRET_330100\"\n{auth}",
            bus = province_bus.bootstrap(),
            db = source.name,
            auth = city_token.auth_toml(),
        ),
        &[("SECRET_330100", "hangzhou-secret-0123456789")],
    )
    .unwrap();
    province
        .wait_for_status("/readyz", 200, Duration::from_secs(30))
        .await
        .unwrap();

    let subscription = unique_name("city-from-province");
    // The city's HTTP port stays the same across its restart: the district
    // reads schemas from its registry.
    let city_listen = free_local_addr();
    let city_config = format!(
            "[node]\ncode = \"330100\"\n[kafka]\nbrokers = \"{bus}\"\n\n\
             [[subscriptions]]\nname = \"{subscription}\"\n\
             upstream = {{ brokers = \"{up}\", registry_url = \"{up_registry}\", registry_token_env = \"CITY_TOKEN_AT_PROVINCE\" }}\n\
             sink = {{ type = \"kafka\" }}\n\
             tables = [{{ topic = \"backflow.share.330100.{dataset}\" }}]\n\n\
             [[shares]]\nsubscriber = \"330106\"\ndataset = \"{dataset}\"\nregion_column = \"region_code\"\n\
             fields = {{ id = \"plain\", name = \"masked:name\", id_number = \"masked:keep(6,4)\", region_code = \"plain\" }}\n{auth}",
            bus = city_bus.bootstrap(),
            up = province_bus.bootstrap(),
            up_registry = province.url,
            auth = district_token.auth_toml(),
    );
    let city_env = [
        ("BACKFLOW_HTTP__LISTEN", city_listen.as_str()),
        ("CITY_TOKEN_AT_PROVINCE", city_token.token()),
    ];
    let mut city = Node::start_with_config(&city_config, &city_env).unwrap();
    city.wait_for_status("/readyz", 200, Duration::from_secs(30))
        .await
        .unwrap();

    let sink = SinkDb::create(Backend::Postgres).await.unwrap();
    let district = Node::subscribe_with_config(
        &format!(
            "[[subscriptions]]\nname = \"{}\"\nupstream = {{ brokers = \"{}\", registry_url = \"{}\", {} }}\nsink = {}\ntables = [{{ topic = \"backflow.share.330106.{dataset}\", table = \"people\" }}]\n",
            unique_name("xihu"),
            city_bus.bootstrap(),
            city.url,
            district_token.upstream_setting(),
            sink.sink_toml(),
        ),
        &[],
    )
    .unwrap();

    until_equal(&sink, &source.name, &[&province, &city, &district]).await;
    let columns = sink.columns("people").await.unwrap();
    assert!(
        !columns.iter().any(|c| c == "income" || c == "phone"),
        "fields withheld at either hop are absent: {columns:?}"
    );

    // A resident leaves the district, another one's name changes, one
    // moves in from outside the city.
    pg_connect(&source.name)
        .await
        .unwrap()
        .batch_execute(
            "UPDATE people SET region_code = '330108' WHERE id = 4;
             UPDATE people SET name = '赵六' WHERE id = 8;
             UPDATE people SET region_code = '330106' WHERE id = 3;",
        )
        .await
        .unwrap();
    until_equal(&sink, &source.name, &[&province, &city, &district]).await;
    let got = sink.rows("people", "id", &READ).await.unwrap().unwrap();
    assert!(!got.contains_key(&4), "moved out of 330106: deleted there");
    assert_eq!(got[&8][0].as_deref(), Some("赵*"));
    assert!(got.contains_key(&3), "moved in from 330201");

    // Provenance: every record the city shared came from the province's
    // feed, through both nodes, with the department's commit time.
    let raw = records(province_bus.bootstrap(), &format!("backflow.raw.{dataset}")).await;
    let commit_times: std::collections::HashSet<String> = raw
        .iter()
        .filter(|r| r.payload.is_some())
        .map(|r| header(r, "backflow.origin_ts"))
        .collect();
    let shared = records(
        city_bus.bootstrap(),
        &format!("backflow.share.330106.{dataset}"),
    )
    .await;
    assert!(!shared.is_empty());
    for r in &shared {
        assert_eq!(header(r, "backflow.origin"), format!("330000/{feed}"));
        assert_eq!(header(r, "backflow.hops"), "330000,330100");
        let ts = header(r, "backflow.origin_ts");
        assert!(
            commit_times.contains(&ts),
            "origin_ts {ts} is a commit time the province's feed recorded"
        );
    }
    let newest = |rs: &[ConsumedRecord]| {
        rs.iter()
            .filter_map(|r| header(r, "backflow.origin_ts").parse::<i64>().ok())
            .max()
            .unwrap()
    };
    assert_eq!(
        newest(&shared),
        newest(&raw),
        "the district's newest change carries the department's commit time"
    );
    let (_, metrics) = district.get_ops("/metrics").await.unwrap();
    assert!(
        metrics.contains("backflow_subscribe_lag_seconds"),
        "the district reports its end-to-end lag"
    );

    // kill -9 of the city while changes flow through it: after a restart
    // it resumes from the offsets it stored after Kafka's acks, and nothing
    // is lost (replays are invisible at the district).
    let department = pg_connect(&source.name).await.unwrap();
    for round in 0..30 {
        department
            .batch_execute(&format!(
                "UPDATE people SET name = '{}' || id WHERE id % 30 = {round};
                 UPDATE people SET region_code = CASE region_code WHEN '330106' THEN '330108' ELSE '330106' END
                   WHERE id = {};",
                ["孙", "周", "吴"][round as usize % 3],
                100 + round
            ))
            .await
            .unwrap();
        if round == 15 {
            city.signal("KILL").unwrap();
            city.wait(Duration::from_secs(10)).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    city = Node::start_with_config(&city_config, &city_env).unwrap();
    until_equal(&sink, &source.name, &[&province, &city, &district]).await;

    // A loop: a record that already passed the city (hops 330000,330100)
    // offered to it again is dead-lettered, not re-published.
    let upstream_share = format!("backflow.share.330100.{dataset}");
    let sample = records(province_bus.bootstrap(), &upstream_share)
        .await
        .into_iter()
        .find(|r| r.payload.is_some())
        .unwrap();
    let city_raw_before = records(city_bus.bootstrap(), &format!("backflow.raw.{dataset}"))
        .await
        .len();
    let looped: Vec<(&str, &[u8])> = vec![
        ("backflow.origin", b"330000/elsewhere"),
        ("backflow.origin_ts", b"1700000000000"),
        ("backflow.hops", b"330000,330100"),
    ];
    Publisher::new(&KafkaSettings::new(province_bus.bootstrap()), None)
        .unwrap()
        .send(OutgoingRecord {
            topic: &upstream_share,
            key: sample.key.as_deref(),
            payload: sample.payload.as_deref(),
            headers: &looped,
        })
        .await
        .unwrap();
    let dlq = format!("backflow.sdlq.330100.{subscription}");
    let until = Instant::now() + Duration::from_secs(60);
    let dead = loop {
        let settings = KafkaSettings::new(province_bus.bootstrap());
        if partition_count(&settings, &dlq).await.unwrap_or(0) > 0 {
            let dead = records(province_bus.bootstrap(), &dlq).await;
            if !dead.is_empty() {
                break dead;
            }
        }
        assert!(
            Instant::now() < until,
            "the looped record was not dead-lettered:\n{}",
            city.stderr()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let reason = header(&dead[0], "backflow.dlq.reason");
    assert!(
        reason.contains("loop") && reason.contains("330100"),
        "reason names the loop: {reason}"
    );
    // Nothing was re-published for it, and the pipeline goes on.
    pg_connect(&source.name)
        .await
        .unwrap()
        .batch_execute("UPDATE people SET name = '钱七' WHERE id = 12")
        .await
        .unwrap();
    until_equal(&sink, &source.name, &[&province, &city, &district]).await;
    let city_raw: Vec<HashMap<String, String>> =
        records(city_bus.bootstrap(), &format!("backflow.raw.{dataset}"))
            .await
            .iter()
            .map(|r| {
                ["backflow.origin_ts"]
                    .iter()
                    .map(|h| (h.to_string(), header(r, h)))
                    .collect()
            })
            .collect();
    assert!(
        city_raw.len() > city_raw_before,
        "the change after the loop was re-published"
    );
    assert!(
        !city_raw
            .iter()
            .any(|h| h["backflow.origin_ts"] == "1700000000000"),
        "the looped record never reached the city's raw topic"
    );
}
