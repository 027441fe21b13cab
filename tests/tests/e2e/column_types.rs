//! Enum, domain, money, interval and array columns end to end: a
//! department's PostgreSQL table holding them is shared by a real node
//! with district 330106, whose `backflow subscribe` applies it to
//! PostgreSQL, MariaDB and SQLite. Each district table must hold exactly
//! the documented values (README "Column types"): in PostgreSQL real
//! `numeric`, `interval` and `T[]` columns, elsewhere the decimal text, the
//! ISO 8601 duration and the JSON array text. Rows come through the
//! snapshot and the stream (inserts, updates, a delete, a row moving into
//! the district); a row with a two-dimensional array is dead-lettered by
//! the feed, naming the column, and the rows after it apply. Two more
//! districts made the table themselves (PostgreSQL with the enum and the
//! domain, MariaDB with an ENUM) and must hold the same values.

use std::time::{Duration, Instant};

use backflow::kafka::{Consumer, KafkaSettings};
use backflow_e2e::sinks::{Backend, Kind, SinkDb};
use backflow_e2e::{
    create_pg_database, drop_pg_database, pg_connect, unique_name, Node, TestBroker, TestToken,
};

use crate::subscribe::{until_table_equal, Table};

const READ: [(&str, Kind); 7] = [
    ("region_code", Kind::Text),
    ("m", Kind::Text),
    ("a", Kind::Decimal),
    ("cash", Kind::Decimal),
    ("span", Kind::Text),
    ("texts", Kind::Text),
    ("ints", Kind::Text),
];

/// The department's table and its rows before the feed starts (read by
/// the snapshot). Row 5 is another district's; row 6 is deleted later.
const DEPARTMENT: &str = r#"
    CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy, "really"');
    CREATE DOMAIN amount AS numeric(10,2) CHECK (VALUE >= 0);
    CREATE TABLE things (
        id bigint PRIMARY KEY,
        region_code char(6) NOT NULL,
        m mood,
        a amount,
        cash money,
        span interval,
        texts text[],
        ints int[]);
    INSERT INTO things VALUES
        (1, '330106', 'ok', 12.5, 1234.56, '1 year 2 months 3 days 04:05:06.5',
            ARRAY['a"b', 'c,d', 'e\f', NULL, 'NULL', '', ' sp ', '{x}'], '{1,NULL,-3}'),
        (2, '330106', NULL, NULL, '-92233720368547758.08', NULL, '{}', '{}'),
        (3, '330106', 'happy, "really"', 0, '92233720368547758.07',
            '-1 year 2 mons -3 days -00:00:01', ARRAY[NULL]::text[], '{2147483647,-2147483648}'),
        (4, '330106', 'sad', 99999999.99, -0.05, '0', ARRAY['\', '"', ',', '汉字 é😀'],
            ARRAY[NULL]::int[]),
        (5, '330108', 'ok', 1, 1, '1 day', ARRAY['elsewhere'], '{5}'),
        (6, '330106', 'ok', 2, 2, '2 days', ARRAY['gone'], '{6}');"#;

/// Changes made once the district holds the snapshot: a transaction whose
/// middle row holds a two-dimensional array (dead-lettered) between two
/// good ones, control characters in elements, updates, a row moving into
/// the district, a delete.
const CHANGES: &str = r#"
    BEGIN;
    INSERT INTO things VALUES
        (11, '330106', 'happy, "really"', 0.01, -1234.56, '1 day -0.5 seconds',
            ARRAY['}{', 'null', 'NULL ', ' ', NULL], ARRAY[0]);
    INSERT INTO things VALUES
        (12, '330106', 'ok', 1, 1, '1 day', ARRAY['two-d'], '{{1,2},{3,4}}');
    INSERT INTO things (id, region_code) VALUES (13, '330106');
    COMMIT;
    INSERT INTO things VALUES
        (14, '330106', 'sad', 0, 0.01, '-00:00:00.000001',
            ARRAY[E'line\nbreak', E'tab\there', '😀'], '{-0,007}');
    UPDATE things SET m = 'ok', a = 0.5, cash = 0, span = '-3 days',
        texts = texts || 'after "update"'::text, ints = '{}' WHERE id = 4;
    UPDATE things SET region_code = '330106' WHERE id = 5;
    DELETE FROM things WHERE id = 6;"#;

/// A PostgreSQL district's own table: the enum and the domain declared
/// there too, which take the values as the department's columns hold them.
const PG_OWN_TABLE: &str = r#"
    CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy, "really"');
    CREATE DOMAIN amount AS numeric(10,2) CHECK (VALUE >= 0);
    CREATE TABLE things (id bigint PRIMARY KEY, region_code char(6) NOT NULL, m mood, a amount,
        cash numeric(19,2), span interval, texts text[], ints int[])"#;

/// A MariaDB district's own table, the enum as an ENUM.
const MARIADB_OWN_TABLE: &str = r#"
    CREATE TABLE things (id BIGINT PRIMARY KEY, region_code CHAR(6) NOT NULL,
        m ENUM('sad', 'ok', 'happy, "really"'), a DECIMAL(10,2), cash DECIMAL(19,2),
        span VARCHAR(64), texts LONGTEXT, ints LONGTEXT)"#;

/// One district row: id, then region_code, m, a, cash; the interval and
/// the two arrays as (PostgreSQL's text of the real type, the text stored
/// by MySQL/MariaDB and SQLite).
type Want<'a> = (i64, [Option<&'a str>; 4], [Option<(&'a str, &'a str)>; 3]);

/// What the district holds after the snapshot (`streamed` false) or
/// after the changes too.
fn wanted(backend: Backend, streamed: bool) -> Table {
    let district = Some("330106");
    let mut rows: Vec<Want> = vec![
        (
            1,
            [district, Some("ok"), Some("12.50"), Some("1234.56")],
            [
                Some(("1 year 2 mons 3 days 04:05:06.5", "P1Y2M3DT4H5M6.5S")),
                Some((
                    r#"{"a\"b","c,d","e\\f",NULL,"NULL",""," sp ","{x}"}"#,
                    r#"["a\"b","c,d","e\\f",null,"NULL",""," sp ","{x}"]"#,
                )),
                Some(("{1,NULL,-3}", "[1,null,-3]")),
            ],
        ),
        (
            2,
            [district, None, None, Some("-92233720368547758.08")],
            [None, Some(("{}", "[]")), Some(("{}", "[]"))],
        ),
        (
            3,
            [
                district,
                Some(r#"happy, "really""#),
                Some("0.00"),
                Some("92233720368547758.07"),
            ],
            [
                Some(("-10 mons -3 days -00:00:01", "P-10M-3DT-1S")),
                Some(("{NULL}", "[null]")),
                Some(("{2147483647,-2147483648}", "[2147483647,-2147483648]")),
            ],
        ),
    ];
    if streamed {
        rows.extend([
            (
                4,
                [district, Some("ok"), Some("0.50"), Some("0.00")],
                [
                    Some(("-3 days", "P-3D")),
                    Some((
                        r#"{"\\","\"",",","汉字 é😀","after \"update\""}"#,
                        r#"["\\","\"",",","汉字 é😀","after \"update\""]"#,
                    )),
                    Some(("{}", "[]")),
                ],
            ),
            (
                5,
                [district, Some("ok"), Some("1.00"), Some("1.00")],
                [
                    Some(("1 day", "P1D")),
                    Some(("{elsewhere}", r#"["elsewhere"]"#)),
                    Some(("{5}", "[5]")),
                ],
            ),
            (
                11,
                [
                    district,
                    Some(r#"happy, "really""#),
                    Some("0.01"),
                    Some("-1234.56"),
                ],
                [
                    Some(("1 day -00:00:00.5", "P1DT-0.5S")),
                    Some((
                        r#"{"}{","null","NULL "," ",NULL}"#,
                        r#"["}{","null","NULL "," ",null]"#,
                    )),
                    Some(("{0}", "[0]")),
                ],
            ),
            (13, [district, None, None, None], [None, None, None]),
            (
                14,
                [district, Some("sad"), Some("0.00"), Some("0.01")],
                [
                    Some(("-00:00:00.000001", "PT-0.000001S")),
                    Some((
                        "{\"line\nbreak\",\"tab\there\",😀}",
                        r#"["line\nbreak","tab\there","😀"]"#,
                    )),
                    Some(("{0,7}", "[0,7]")),
                ],
            ),
        ]);
    } else {
        rows.extend([
            (
                4,
                [district, Some("sad"), Some("99999999.99"), Some("-0.05")],
                [
                    Some(("00:00:00", "PT0S")),
                    Some((
                        r#"{"\\","\"",",","汉字 é😀"}"#,
                        r#"["\\","\"",",","汉字 é😀"]"#,
                    )),
                    Some(("{NULL}", "[null]")),
                ],
            ),
            (
                6,
                [district, Some("ok"), Some("2.00"), Some("2.00")],
                [
                    Some(("2 days", "P2D")),
                    Some(("{gone}", r#"["gone"]"#)),
                    Some(("{6}", "[6]")),
                ],
            ),
        ]);
    }
    let pick = |v: Option<(&str, &str)>| {
        v.map(|(pg, other)| {
            if backend == Backend::Postgres {
                pg
            } else {
                other
            }
            .to_owned()
        })
    };
    rows.into_iter()
        .map(|(id, plain, typed)| {
            let mut values: Vec<Option<String>> =
                plain.iter().map(|v| v.map(str::to_owned)).collect();
            values.extend(typed.into_iter().map(pick));
            (id, values)
        })
        .collect()
}

/// The column types the PostgreSQL sink created, by column name.
async fn pg_column_types(sink: &SinkDb) -> Vec<(String, String)> {
    pg_connect(&sink.name)
        .await
        .unwrap()
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod)
               FROM pg_attribute a
              WHERE a.attrelid = 'public.things'::regclass AND a.attnum > 0
                AND NOT a.attisdropped AND a.attname <> '_backflow_position'
              ORDER BY a.attnum",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enum_domain_money_interval_and_array_columns_reach_every_sink_backend() {
    let started = Instant::now();
    let db = unique_name("bf_types");
    create_pg_database(&db)
        .await
        .unwrap()
        .batch_execute(DEPARTMENT)
        .await
        .unwrap();
    let broker = TestBroker::start();
    let dataset = format!("t{}.things", &db["bf_types_".len()..]);
    let feed = db.replace('_', "-");
    let reader = TestToken::new("subscriber:330106");
    let config = format!(
        "[node]\ncode = \"330100\"\n[kafka]\nbrokers = \"{}\"\n{}\n\
         [[feeds]]\ntype = \"postgres\"\nname = \"{feed}\"\nuser = \"postgres\"\ndatabase = \"{db}\"\ntables = [{{ table = \"public.things\", dataset = \"{dataset}\" }}]\n\n\
         [[shares]]\nsubscriber = \"330106\"\ndataset = \"{dataset}\"\nregion_column = \"region_code\"\n\
         fields = {{ id = \"plain\", region_code = \"plain\", m = \"plain\", a = \"plain\", cash = \"plain\", span = \"plain\", texts = \"plain\", ints = \"plain\" }}\n",
        broker.bootstrap(),
        reader.auth_toml(),
    );
    let node = Node::start_with_config(&config, &[]).unwrap();
    node.wait_for_status("/readyz", 200, Duration::from_secs(30))
        .await
        .unwrap();

    let sinks = [
        SinkDb::create(Backend::Postgres).await.unwrap(),
        SinkDb::create(Backend::Mariadb).await.unwrap(),
        SinkDb::create(Backend::Sqlite).await.unwrap(),
        // Districts that made the table themselves.
        SinkDb::create(Backend::Postgres).await.unwrap(),
        SinkDb::create(Backend::Mariadb).await.unwrap(),
    ];
    sinks[3].execute(PG_OWN_TABLE).await.unwrap();
    sinks[4].execute(MARIADB_OWN_TABLE).await.unwrap();
    let mut subscribers: Vec<Node> = sinks
        .iter()
        .map(|sink| {
            let name = unique_name(&format!("types_{:?}", sink.backend).to_lowercase());
            let config = format!(
                "[[subscriptions]]\nname = \"{name}\"\nflush_interval_ms = 100\nupstream = {{ brokers = \"{}\", registry_url = \"{}\", {} }}\nsink = {}\ntables = [{{ topic = \"backflow.share.330106.{dataset}\", table = \"things\" }}]\n",
                broker.bootstrap(),
                node.url,
                reader.upstream_setting(),
                sink.sink_toml(),
            );
            Node::subscribe_with_config(&config, &[]).unwrap()
        })
        .collect();

    // The snapshot, in every district database.
    for (sink, sub) in sinks.iter().zip(&subscribers) {
        let want = wanted(sink.backend, false);
        until_table_equal(sink, "things", &READ, &want, Duration::from_secs(60), sub).await;
    }
    // PostgreSQL got real types: the enum as text, the domain and money
    // as numerics, a real interval, real arrays.
    let expect = [
        ("id", "bigint"),
        ("region_code", "character(6)"),
        ("m", "text"),
        ("a", "numeric(10,2)"),
        ("cash", "numeric(19,2)"),
        ("span", "interval"),
        ("texts", "text[]"),
        ("ints", "integer[]"),
    ]
    .map(|(c, t)| (c.to_owned(), t.to_owned()));
    assert_eq!(pg_column_types(&sinks[0]).await, expect);
    let mut own = expect.to_vec();
    own[2].1 = "mood".to_owned();
    own[3].1 = "amount".to_owned();
    assert_eq!(
        pg_column_types(&sinks[3]).await,
        own,
        "the district's table kept"
    );

    // The stream.
    pg_connect(&db)
        .await
        .unwrap()
        .batch_execute(CHANGES)
        .await
        .unwrap();
    for (sink, sub) in sinks.iter().zip(&subscribers) {
        let want = wanted(sink.backend, true);
        until_table_equal(sink, "things", &READ, &want, Duration::from_secs(60), sub).await;
    }
    // A NULL element and the string "NULL" stay apart in a real array.
    let held = pg_connect(&sinks[0].name)
        .await
        .unwrap()
        .query_one(
            "SELECT texts[4] IS NULL, texts[5], array_length(texts, 1), span = '1 year 2 mons 3 days 04:05:06.5'::interval
               FROM things WHERE id = 1",
            &[],
        )
        .await
        .unwrap();
    assert!(held.get::<_, bool>(0));
    assert_eq!(held.get::<_, String>(1), "NULL");
    assert_eq!(held.get::<_, i32>(2), 8);
    assert!(held.get::<_, bool>(3));

    // Row 12 went to the feed's dead-letter topic, naming the column, its
    // value nowhere in the letter.
    let settings = KafkaSettings::new(broker.bootstrap());
    let dlq = Consumer::new(
        &settings,
        &unique_name("dlq"),
        &[&format!("backflow.dlq.{feed}")],
        None,
    )
    .unwrap();
    let until = Instant::now() + Duration::from_secs(30);
    let dead = loop {
        assert!(
            Instant::now() < until,
            "nothing in the dead-letter topic:\n{}",
            node.stderr()
        );
        if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(1), dlq.recv()).await {
            break r;
        }
    };
    let reason = String::from_utf8(dead.header("backflow.dlq.reason").unwrap().to_vec()).unwrap();
    assert!(
        reason.contains("column ints") && reason.contains("dimensions") && !reason.contains("  "),
        "{reason}"
    );
    let body = String::from_utf8(dead.payload.clone().unwrap()).unwrap();
    let letter: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(letter["table"], "public.things", "{body}");
    assert!(
        !body.contains("{{1,2},{3,4}}") && !body.contains("two-d"),
        "no row values in dead letters: {body}"
    );
    // It is the only one.
    let (_, metrics) = node.get_ops("/metrics").await.unwrap();
    assert!(
        backflow_e2e::has_series(
            &metrics,
            &format!("backflow_source_dead_letters_total{{feed=\"{feed}\"}} 1")
        ),
        "{metrics}"
    );

    crate::subscribe::stop_and_drop(&mut subscribers, &sinks).await;
    drop(node);
    // The walsender of the stopped node lets go of the slot shortly after.
    drop_pg_database(&db).await.unwrap();
    println!("column types end to end took {:?}", started.elapsed());
}
