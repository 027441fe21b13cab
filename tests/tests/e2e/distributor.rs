//! The distributor end to end: city 330100's population table (a real
//! PostgreSQL feed) shared with districts 330106 and 330108, each running
//! `backflow subscribe` into its own SQLite file. Each district must hold
//! exactly its own residents, with the identity number masked, the phone
//! hashed (the same phone, the same pseudonym; different across districts)
//! and the income absent (from rows, table and registered schema); a
//! resident moving from 330106 to 330108 leaves one and arrives in the other.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use backflow_e2e::sinks::{Backend, Kind, SinkDb};
use backflow_e2e::{
    masked_residents, pg_connect, unique_name, Node, TestBroker, TestToken, PEOPLE_TABLE,
};

const READ: [(&str, Kind); 4] = [
    ("name", Kind::Text),
    ("id_number", Kind::Text),
    ("phone", Kind::Text),
    ("region_code", Kind::Text),
];

type Table = BTreeMap<i64, Vec<Option<String>>>;

async fn until_equal(sink: &SinkDb, source: &str, district: &str, sub: &Node) -> Table {
    let until = Instant::now() + Duration::from_secs(90);
    loop {
        let want = masked_residents(source, district).await;
        let got = sink
            .rows("people", "id", &READ)
            .await
            .unwrap()
            .unwrap_or_default();
        let without_phone: Table = got
            .iter()
            .map(|(k, v)| (*k, vec![v[0].clone(), v[1].clone(), v[3].clone()]))
            .collect();
        if without_phone == want && !want.is_empty() {
            return got;
        }
        if Instant::now() > until {
            panic!(
                "district {district} never matched: {} rows expected, {} held; e.g. want {:?} got {:?}\nsubscriber log:\n{}",
                want.len(),
                got.len(),
                want.iter().next(),
                without_phone.iter().next(),
                sub.stderr()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_districts_each_get_their_own_rows_masked_and_a_move_crosses_over() {
    let source = SinkDb::create(Backend::Postgres).await.unwrap();
    pg_connect(&source.name)
        .await
        .unwrap()
        .batch_execute(
            &format!(
                "{PEOPLE_TABLE}
             INSERT INTO people
             SELECT g, (ARRAY['张三丰','李四','王小明'])[g % 3 + 1],
                    CASE WHEN g % 3 = 0 THEN '330106' WHEN g % 3 = 1 THEN '330108' ELSE '330102' END
                      || '19900101' || lpad((g % 10000)::text, 4, '0'),
                    '1380000' || lpad((g % 5)::text, 4, '0'),
                    CASE WHEN g % 3 = 0 THEN '330106' WHEN g % 3 = 1 THEN '330108' ELSE '330102' END,
                    g * 10.5
             FROM generate_series(1, 300) g;"
            ),
        )
        .await
        .unwrap();
    let broker = TestBroker::start();
    let dataset = format!("t{}.people", &source.name[8..]);
    let feed = source.name.replace('_', "-");
    let tokens: BTreeMap<&str, TestToken> = ["330106", "330108"]
        .into_iter()
        .map(|code| (code, TestToken::new(&format!("subscriber:{code}"))))
        .collect();
    let fields = "fields = { id = \"plain\", name = \"masked:name\", id_number = \"masked:keep(6,4)\", phone = \"hashed\", region_code = \"plain\" }";
    let config = format!(
        "[node]\ncode = \"330100\"\n[kafka]\nbrokers = \"{bootstrap}\"\n\n[[feeds]]\ntype = \"postgres\"\nname = \"{feed}\"\nuser = \"postgres\"\ndatabase = \"{db}\"\ntables = [{{ table = \"public.people\", dataset = \"{dataset}\" }}]\n\n\
         [[shares]]\nsubscriber = \"330106\"\ndataset = \"{dataset}\"\nregion_column = \"region_code\"\n{fields}\nsecret_env = \"SECRET_330106\"\n\n\
         [[shares]]\nsubscriber = \"330108\"\ndataset = \"{dataset}\"\nregion_column = \"region_code\"\n{fields}\nsecret_env = \"SECRET_330108\"\n{auth}",
        bootstrap = broker.bootstrap(),
        db = source.name,
        auth = tokens.values().map(TestToken::auth_toml).collect::<String>(),
    );
    let node = Node::start_with_config(
        &config,
        &[
            ("SECRET_330106", "xihu-secret-0123456789"),
            ("SECRET_330108", "binjiang-secret-0123456789"),
        ],
    )
    .unwrap();
    node.wait_for_status("/readyz", 200, Duration::from_secs(30))
        .await
        .unwrap();

    let mut districts = Vec::new();
    for code in ["330106", "330108"] {
        let sink = SinkDb::create(Backend::Sqlite).await.unwrap();
        let sub_config = format!(
            "[[subscriptions]]\nname = \"{}\"\nupstream = {{ brokers = \"{}\", registry_url = \"{}\", {} }}\nsink = {}\ntables = [{{ topic = \"backflow.share.{code}.{dataset}\", table = \"people\" }}]\n",
            unique_name(&format!("d{code}")),
            broker.bootstrap(),
            node.url,
            tokens[code].upstream_setting(),
            sink.sink_toml(),
        );
        let sub = Node::subscribe_with_config(&sub_config, &[]).unwrap();
        districts.push((code, sink, sub));
    }

    let mut phones: BTreeMap<&str, Table> = BTreeMap::new();
    for (code, sink, sub) in &districts {
        let got = until_equal(sink, &source.name, code, sub).await;
        let cols = sink.columns("people").await.unwrap();
        assert!(
            !cols.iter().any(|c| c == "income"),
            "ungranted field absent: {cols:?}"
        );
        phones.insert(code, got);
    }
    // Hashed phones: 64 hex digits; equal phones give equal pseudonyms in a
    // district (ids 3 and 18 share a phone), and the districts' pseudonyms
    // differ (the same phone appears in both).
    let xihu = &phones["330106"];
    let binjiang = &phones["330108"];
    let phone = |t: &Table, id: i64| t[&id][2].clone().unwrap();
    assert_eq!(phone(xihu, 3).len(), 64);
    assert_eq!(
        phone(xihu, 3),
        phone(xihu, 18),
        "ids 3 and 18 have the same phone"
    );
    assert_ne!(
        phone(xihu, 3),
        phone(xihu, 6),
        "different phones, different pseudonyms"
    );
    assert_ne!(
        phone(xihu, 3),
        phone(binjiang, 13),
        "ids 3 and 13 share a phone across districts"
    );
    assert!(!phone(xihu, 3).contains("1380000"));

    // The share topic's registered schema has no income field.
    let (status, body) = node
        .api(
            "GET",
            &format!("/subjects/backflow.share.330106.{dataset}-value/versions/latest"),
            Some(tokens["330106"].token()),
            None,
        )
        .await;
    let body = body.to_string();
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("id_number") && !body.contains("income"),
        "{body}"
    );

    // Resident 3 moves from 330106 to 330108.
    pg_connect(&source.name)
        .await
        .unwrap()
        .batch_execute("UPDATE people SET region_code = '330108' WHERE id = 3")
        .await
        .unwrap();
    for (code, sink, sub) in &districts {
        let got = until_equal(sink, &source.name, code, sub).await;
        assert_eq!(got.contains_key(&3), *code == "330108", "district {code}");
    }
    let (_, metrics) = node.get_ops("/metrics").await.unwrap();
    assert!(
        backflow_e2e::has_series(
            &metrics,
            "backflow_distributor_records_total{op=\"d\",subscriber=\"330106\"} 1"
        ),
        "{metrics}"
    );

    // Every batch delivered is on the audit trail, and the chain verifies.
    let public_key = node.audit_public_key().unwrap().to_owned();
    let verify = || {
        backflow_e2e::backflow()
            .args(["audit", "verify", "--public-key", &public_key])
            .env("BACKFLOW_KAFKA__BROKERS", broker.bootstrap())
            .output()
            .unwrap()
    };
    let out = verify();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("audit trail intact") && stdout.contains("chain 330100"),
        "{stdout}"
    );
    // A forged record: right sequence and previous hash, content changed.
    let settings = backflow::kafka::KafkaSettings::new(broker.bootstrap());
    // Delivery records are written in the distributor's transactions: the
    // trail's end may be a commit marker, never delivered.
    let high = backflow::kafka::Watermarks::new(&settings)
        .unwrap()
        .settled_high(
            &settings,
            "backflow._audit",
            0,
            backflow::kafka::SETTLE_WITHIN,
        )
        .await
        .unwrap();
    let audit = backflow::kafka::Consumer::replay(&settings, "backflow._audit", 0).unwrap();
    let mut ends = std::collections::HashMap::from([(0, high)]);
    let mut last = None;
    let mut deliveries = 0;
    while let Some(r) = audit.recv_to(&mut ends).await.unwrap() {
        let v: serde_json::Value = serde_json::from_slice(r.payload.as_deref().unwrap()).unwrap();
        if v["kind"] == "delivery" {
            deliveries += 1;
            assert!(
                v["details"]["sha256"]
                    .as_str()
                    .is_some_and(|s| s.len() == 64),
                "{v}"
            );
        }
        last = Some(r);
    }
    assert!(deliveries >= 2, "deliveries to both districts are audited");
    let last = last.unwrap();
    let mut forged: serde_json::Value =
        serde_json::from_slice(last.payload.as_deref().unwrap()).unwrap();
    forged["prev"] = forged["hash"].clone();
    forged["seq"] = (forged["seq"].as_u64().unwrap() + 1).into();
    forged["details"] = serde_json::json!({"share_topic": "backflow.share.330106.x", "records": 0});
    backflow::kafka::Publisher::new(&settings, None)
        .unwrap()
        .send(backflow::kafka::OutgoingRecord::new(
            "backflow._audit",
            b"330100",
            forged.to_string().as_bytes(),
        ))
        .await
        .unwrap();
    let out = verify();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(&format!("offset {high}")) && stdout.contains("altered"),
        "names the forged record: {stdout}"
    );

    for (_, sink, mut sub) in districts {
        sub.signal("TERM").unwrap();
        assert!(sub.wait(Duration::from_secs(20)).unwrap().success());
        sink.drop_db().await.unwrap();
    }
    drop(node);
    tokio::time::sleep(Duration::from_secs(1)).await;
    source.drop_db().await.unwrap();
}
