//! Data standards at the source. A department table with Chinese column
//! names, `男/女` genders and `YYYYMMDD` date strings is published in the
//! population standard (the registry holds the standard's schema, keyed by
//! the ID number); a row breaking a rule goes to the feed's dead-letter
//! topic with the violated rule named, and the good rows go on flowing.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use backflow::kafka::{Consumer, KafkaSettings};
use backflow_e2e::{create_pg_database, metric_sum, unique_name, Node, TestBroker};
use backflow_schemas::standard::builtin;
use backflow_schemas::standard::checks::resident_id_check_char;
use backflow_schemas::standard::date::days_from_ymd;
use backflow_schemas::{unframe, Datum, Op, Row, TableCodec};

/// A valid resident ID number from its first 17 digits.
fn id(first17: &str) -> String {
    format!("{first17}{}", resident_id_check_char(first17).unwrap())
}

fn text(d: &Datum) -> &str {
    match d {
        Datum::Text(s) => s,
        other => panic!("{other:?} is not text"),
    }
}

struct Seeded {
    department: tokio_postgres::Client,
    good1: String,
    good2: String,
    good7: String,
    wrong_check: String,
}

/// A department table with Chinese column names: two good rows and four
/// that each break one rule of the population standard.
async fn seed(db: &str) -> Seeded {
    let department = create_pg_database(db).await.unwrap();
    department
        .batch_execute(
            "CREATE TABLE 户籍人口 (编号 bigint PRIMARY KEY, 身份证号 text NOT NULL, 姓名 text,
                 性别 text, 出生日期 text, 户籍区划 text, 住址 text, 电话 text)",
        )
        .await
        .unwrap();
    let good1 = id("33010619800101001");
    let good2 = id("33010819920229002");
    let good7 = id("33010620010915007");
    let mut wrong_check = id("33010619751231003");
    let last = if wrong_check.ends_with('1') { "2" } else { "1" };
    wrong_check.replace_range(17.., last);
    let rows = [
        (
            1i64,
            good1.clone(),
            Some("张三"),
            "男",
            "19800101",
            "330106",
        ),
        (2, good2.clone(), Some("李四"), "女", "19920229", "330108"),
        // Each of these breaks one rule.
        (
            3,
            wrong_check.clone(),
            Some("王五"),
            "男",
            "19751231",
            "330106",
        ),
        (
            4,
            id("33010619700505004"),
            Some("赵六"),
            "女",
            "19700505",
            "999999",
        ),
        (5, id("33010619880808005"), None, "男", "19880808", "330106"),
        (
            6,
            id("33010619660606006"),
            Some("钱七"),
            "未知",
            "19660606",
            "330106",
        ),
    ];
    for (n, idn, name, gender, born, region) in &rows {
        department
            .execute(
                "INSERT INTO 户籍人口 VALUES ($1, $2, $3, $4, $5, $6, '西湖区文三路1号', '13800000000')",
                &[n, idn, name, gender, born, region],
            )
            .await
            .unwrap();
    }
    Seeded {
        department,
        good1,
        good2,
        good7,
        wrong_check,
    }
}

/// The node's configuration: the feed and the population standard with
/// the department's mapping.
fn config(bootstrap: &str, feed: &str, db: &str) -> String {
    format!(
        r#"[kafka]
brokers = "{bootstrap}"

[[auth.tokens]]
principal = "admin"
sha256 = "{admin}"

[[feeds]]
type = "postgres"
name = "{feed}"
user = "postgres"
database = "{db}"
tables = [{{ table = "public.户籍人口", dataset = "gongan.population" }}]

[[standards]]
dataset = "gongan.population"
standard = "population"
[standards.mapping.fields]
id_number = {{ from = "身份证号", cast = "trim" }}
name = {{ from = "姓名" }}
gender = {{ from = "性别", codes = {{ "男" = "1", "女" = "2" }} }}
birth_date = {{ from = "出生日期", cast = {{ date = ["%Y%m%d"] }} }}
household_region = {{ from = "户籍区划" }}
address = {{ from = "住址" }}
phone = {{ from = "电话" }}
"#,
        admin = backflow::auth::token_hash(ADMIN),
    )
}

const ADMIN: &str = "admin-token-standards";

/// The department's mapping, as the API takes it.
fn mapping() -> serde_json::Value {
    serde_json::json!({
        "id_number": { "from": "身份证号", "cast": "trim" },
        "name": { "from": "姓名" },
        "gender": { "from": "性别", "codes": { "男": "1", "女": "2" } },
        "birth_date": { "from": "出生日期", "cast": { "date": ["%Y%m%d"] } },
        "household_region": { "from": "户籍区划" },
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_check_reports_the_seeded_defects_by_rule_without_publishing() {
    let db = unique_name("bf_check");
    let seeded = seed(&db).await;
    let feed = db.replace('_', "-");
    let file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    // No broker: the check publishes nothing.
    std::fs::write(file.path(), config("127.0.0.1:1", &feed, &db)).unwrap();
    let run = |args: &[&str]| {
        backflow_e2e::backflow()
            .arg("--config")
            .arg(file.path())
            .args(["feed", "check", "--feed", &feed])
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["--sample", "100"]);
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{report}\n{stderr}");
    assert!(
        report.contains("6 rows: 2 pass, 4 refused, 0 unreadable"),
        "{report}"
    );
    for rule in [
        "id_number:id_number: 1",
        "household_region:region_code: 1",
        "name:required: 1",
        "gender:code: 1",
    ] {
        assert!(report.contains(rule), "{rule} in\n{report}");
    }
    for value in [seeded.wrong_check.as_str(), "未知", "999999", "王五"] {
        assert!(!report.contains(value), "{value} redacted in\n{report}");
    }
    // A smaller sample reads fewer rows; JSON gives the same counts.
    let out = run(&["--sample", "2", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json[0]["rows"], 2);
    assert_eq!(json[0]["passing"], 2);
    assert_eq!(out.status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_department_table_is_published_in_its_standard_form_and_bad_rows_are_dead_lettered() {
    let db = unique_name("bf_std");
    let Seeded {
        department,
        good1,
        good2,
        good7,
        wrong_check,
    } = seed(&db).await;
    let broker = TestBroker::start();
    let feed = db.replace('_', "-");
    let node = Node::start_with_config(&config(broker.bootstrap(), &feed, &db), &[]).unwrap();

    // While running: a new resident and a change of address.
    department
        .batch_execute(&format!(
            "INSERT INTO 户籍人口 VALUES (7, '{good7}', '孙八', '男', '20010915', '330106', NULL, NULL);
             UPDATE 户籍人口 SET 住址 = '西湖区文二路2号' WHERE 编号 = 1;"
        ))
        .await
        .unwrap();

    // The raw topic holds the good rows in the standard's form.
    let standard = &builtin()["population"];
    let codec = TableCodec::new(standard.table_desc("gongan.population")).unwrap();
    let settings = KafkaSettings::new(broker.bootstrap());
    let raw = Consumer::new(
        &settings,
        &unique_name("view"),
        &["backflow.raw.gongan.population"],
        None,
    )
    .unwrap();
    let mut state: BTreeMap<String, Row> = BTreeMap::new();
    let mut value_schema_id = None;
    let until = Instant::now() + Duration::from_secs(60);
    let want_keys = BTreeSet::from([good1.clone(), good2.clone(), good7.clone()]);
    let moved = |s: &BTreeMap<String, Row>| {
        s.get(&good1)
            .is_some_and(|r| r.0[6] == Datum::Text("西湖区文二路2号".into()))
    };
    while state.keys().cloned().collect::<BTreeSet<_>>() != want_keys || !moved(&state) {
        assert!(
            Instant::now() < until,
            "the raw topic never held the three good rows: {:?}\n{}",
            state.keys().collect::<Vec<_>>(),
            node.stderr()
        );
        let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(1), raw.recv()).await else {
            continue;
        };
        let (_, key) = unframe(r.key.as_deref().unwrap()).unwrap();
        let key = codec.decode_key(key).unwrap();
        let Some(payload) = r.payload.as_deref() else {
            continue;
        };
        let (schema_id, body) = unframe(payload).unwrap();
        value_schema_id = Some(schema_id);
        let event = codec.decode_value(key.clone(), body).unwrap();
        assert_ne!(event.op, Op::Delete);
        state.insert(text(&key.0[0]).to_owned(), event.after.unwrap());
    }
    let zhang = &state[&good1];
    assert_eq!(text(&zhang.0[1]), "张三");
    assert_eq!(text(&zhang.0[2]), "1", "男 is GB/T 2261.1 code 1");
    assert_eq!(zhang.0[3], Datum::Date(days_from_ymd(1980, 1, 1).unwrap()));
    assert_eq!(text(&zhang.0[5]), "330106");
    assert_eq!(text(&state[&good2].0[2]), "2", "女 is code 2");

    // The registry holds the standard's schema for the topic.
    let id = value_schema_id.unwrap();
    let (_, published) = node
        .api("GET", &format!("/schemas/ids/{id}"), Some(ADMIN), None)
        .await;
    let published = apache_avro::Schema::parse_str(published["schema"].as_str().unwrap()).unwrap();
    assert_eq!(
        published.canonical_form(),
        codec.value_schema().canonical_form()
    );
    assert!(!published.canonical_form().contains("户籍区划"));
    // And the standard itself, with its documentation and field metadata.
    let (_, held) = node
        .api(
            "GET",
            "/subjects/backflow.standard.population/versions/latest",
            Some(ADMIN),
            None,
        )
        .await;
    let held = held["schema"].as_str().unwrap_or_default();
    for part in [
        "公民身份号码",
        "backflow.sensitivity",
        "backflow.region_field",
    ] {
        assert!(
            held.contains(part),
            "{part} in the registry's standard: {held}"
        );
    }

    // The dead-letter topic names the rule each bad row broke, and no value.
    let dlq = Consumer::new(
        &settings,
        &unique_name("dlq"),
        &[&format!("backflow.dlq.{feed}")],
        None,
    )
    .unwrap();
    let mut broken = BTreeSet::new();
    let until = Instant::now() + Duration::from_secs(30);
    while broken.len() < 4 && Instant::now() < until {
        let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(1), dlq.recv()).await else {
            continue;
        };
        let rules = String::from_utf8(r.header("backflow.dlq.rules").unwrap().to_vec()).unwrap();
        let reason = String::from_utf8(r.header("backflow.dlq.reason").unwrap().to_vec()).unwrap();
        assert!(reason.contains("standard population"), "{reason}");
        for value in [wrong_check.as_str(), "999999", "未知"] {
            assert!(!reason.contains(value), "no row value in {reason}");
        }
        broken.insert(rules);
    }
    assert_eq!(
        broken,
        BTreeSet::from([
            "id_number:id_number".to_owned(),
            "household_region:region_code".to_owned(),
            "name:required".to_owned(),
            "gender:code".to_owned(),
        ])
    );

    // Quality, per feed and rule.
    let (_, metrics) = node.get_ops("/metrics").await.unwrap();
    let labels = format!("dataset=\"gongan.population\",feed=\"{feed}\"");
    assert_eq!(
        metric_sum(&metrics, "backflow_quality_rejected_total", &labels),
        4.0,
        "{metrics}"
    );
    // Six rows, a seventh and an update: read by the snapshot or streamed.
    let checked = metric_sum(&metrics, "backflow_quality_checked_total", &labels);
    assert!((7.0..=8.0).contains(&checked), "{metrics}");
    assert_eq!(
        metric_sum(
            &metrics,
            "backflow_quality_violations_total",
            "field=\"household_region\""
        ),
        1.0
    );
    let score = metric_sum(&metrics, "backflow_quality_score", &labels);
    assert!(
        (score - (1.0 - 4.0 / checked)).abs() < 1e-9,
        "4 of {checked} refused: {score}"
    );
    // The same through the API.
    let (status, body) = node.api("GET", "/api/quality", Some(ADMIN), None).await;
    assert_eq!(status, 200, "{body}");
    let q = &body["feeds"][0];
    assert_eq!(q["dataset"], "gongan.population");
    assert_eq!(q["refused"], 4);
    assert_eq!(q["violations"]["gender:code"], 1);
    assert_eq!(q["score"].as_f64(), Some(score));
}

#[test]
fn a_standard_that_cannot_be_met_is_refused_when_the_configuration_loads() {
    let file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::fs::write(
        file.path(),
        "[[standards]]\ndataset = \"gongan.population\"\nstandard = \"population\"\n[standards.rules]\nshoe_size = [\"required\"]\n",
    )
    .unwrap();
    let out = backflow_e2e::backflow()
        .arg("--config")
        .arg(file.path())
        .args(["config", "check"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("standards[0].rules"), "{stderr}");
    assert!(stderr.contains("shoe_size"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_registered_through_the_api_has_its_mapping_checked_against_the_table() {
    let db = unique_name("bf_stdapi");
    let seeded = seed(&db).await;
    let broker = TestBroker::start();
    let node = Node::start_with_config(
        &format!(
            "[kafka]\nbrokers = \"{}\"\n[api_feeds]\nallowed_hosts = [\"127.0.0.1:5432\"]\n[[auth.tokens]]\nprincipal = \"admin\"\nsha256 = \"{}\"\n",
            broker.bootstrap(),
            backflow::auth::token_hash(ADMIN)
        ),
        &[],
    )
    .unwrap();
    node.wait_for_status("/readyz", 200, Duration::from_secs(30))
        .await
        .unwrap();
    let feed = db.replace('_', "-");
    let definition = |fields: serde_json::Value| {
        serde_json::json!({
            "type": "postgres",
            "user": "postgres",
            "database": db,
            "tables": [{ "table": "public.户籍人口", "dataset": "gongan.population" }],
            "standards": [{
                "dataset": "gongan.population",
                "standard": "population",
                "mapping": { "fields": fields },
            }],
        })
    };
    let path = format!("/api/feeds/{feed}");

    // A required field the mapping does not produce.
    let mut fields = mapping();
    fields.as_object_mut().unwrap().remove("birth_date");
    let (status, body) = node
        .api("PUT", &path, Some(ADMIN), Some(definition(fields)))
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(body.to_string().contains("birth_date"), "{body}");
    // A column the table does not have.
    let mut fields = mapping();
    fields["name"] = serde_json::json!({ "from": "名字" });
    let (status, body) = node
        .api("PUT", &path, Some(ADMIN), Some(definition(fields)))
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(body.to_string().contains("名字"), "{body}");
    // Accepted; it runs: two of the six rows pass.
    let (status, body) = node
        .api("PUT", &path, Some(ADMIN), Some(definition(mapping())))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("warning").is_none(), "{body}");
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, body) = node.api("GET", "/api/quality", Some(ADMIN), None).await;
        let q = &body["feeds"][0];
        if q["checked"] == 6 {
            assert_eq!(q["refused"], 4, "{body}");
            break;
        }
        assert!(Instant::now() < until, "{body}\n{}", node.stderr());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    drop(seeded);
}

/// A polling feed reads before-images from its raw topic, which for a
/// standardised dataset holds the standard's rows: after a restart, a
/// resident's move to another district must still reach the topic as an
/// update carrying the old row (the distributor needs it to take the row
/// away from the district the resident left). A corrected ID number (the
/// standard's key) deletes the old key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polled_standardised_dataset_keeps_before_images_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dept.db");
    let now = "strftime('%Y-%m-%d %H:%M:%f', 'now')";
    let resident = id("33010619800101001");
    let db = rusqlite::Connection::open(&path).unwrap();
    db.execute_batch(&format!(
        "CREATE TABLE 人口 (编号 INTEGER PRIMARY KEY, 身份证号 TEXT NOT NULL, 姓名 TEXT NOT NULL,
             性别 TEXT NOT NULL, 出生日期 TEXT NOT NULL, 户籍区划 TEXT NOT NULL, updated_at TIMESTAMP NOT NULL);
         INSERT INTO 人口 VALUES (1, '{resident}', '张三', '男', '19800101', '330106', {now});"
    ))
    .unwrap();
    let broker = TestBroker::start();
    let feed = unique_name("bf-pollstd").replace('_', "-");
    let config = format!(
        r#"[kafka]
brokers = "{}"

[[feeds]]
type = "poll"
name = "{feed}"
engine = "sqlite"
path = "{}"
poll_interval_ms = 200
delay_ms = 300

[[feeds.tables]]
table = "人口"
dataset = "gongan.population"
mode = "timestamp+incrementing"
timestamp_column = "updated_at"
incrementing_column = "编号"

[[standards]]
dataset = "gongan.population"
standard = "population"
[standards.mapping.fields]
id_number = {{ from = "身份证号" }}
name = {{ from = "姓名" }}
gender = {{ from = "性别", codes = {{ "男" = "1", "女" = "2" }} }}
birth_date = {{ from = "出生日期", cast = {{ date = ["%Y%m%d"] }} }}
household_region = {{ from = "户籍区划" }}
"#,
        broker.bootstrap(),
        path.display()
    );
    let standard = &builtin()["population"];
    let codec = TableCodec::new(standard.table_desc("gongan.population")).unwrap();
    let raw = Consumer::new(
        &KafkaSettings::new(broker.bootstrap()),
        &unique_name("view"),
        &["backflow.raw.gongan.population"],
        None,
    )
    .unwrap();
    let next_event = |node: &Node| {
        let (raw, codec) = (&raw, &codec);
        let log = node.stderr();
        async move {
            let until = Instant::now() + Duration::from_secs(60);
            loop {
                assert!(Instant::now() < until, "no record on the raw topic:\n{log}");
                let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(1), raw.recv()).await
                else {
                    continue;
                };
                let (_, key) = unframe(r.key.as_deref().unwrap()).unwrap();
                let key = codec.decode_key(key).unwrap();
                let Some(payload) = r.payload.as_deref() else {
                    continue;
                };
                let (_, body) = unframe(payload).unwrap();
                return codec.decode_value(key, body).unwrap();
            }
        }
    };

    let mut node = Node::start_with_config(&config, &[]).unwrap();
    let first = next_event(&node).await;
    assert_eq!(text(&first.after.unwrap().0[5]), "330106");
    node.signal("KILL").unwrap();
    node.wait(Duration::from_secs(10)).unwrap();

    // Moved to 330108 while the feed was down; the restarted feed sees it.
    db.execute_batch(&format!(
        "UPDATE 人口 SET 户籍区划 = '330108', updated_at = {now} WHERE 编号 = 1"
    ))
    .unwrap();
    let node = Node::start_with_config(&config, &[]).unwrap();
    let moved = next_event(&node).await;
    assert_eq!(moved.op, Op::Update, "{moved:?}\n{}", node.stderr());
    assert_eq!(text(&moved.before.unwrap().0[5]), "330106");
    assert_eq!(text(&moved.after.unwrap().0[5]), "330108");

    // The ID number corrected at the source: the standard's key changes, so
    // the old key is deleted and the new one inserted.
    let corrected = id("33010619800101002");
    db.execute_batch(&format!(
        "UPDATE 人口 SET 身份证号 = '{corrected}', updated_at = {now} WHERE 编号 = 1"
    ))
    .unwrap();
    let gone = next_event(&node).await;
    assert_eq!(gone.op, Op::Delete, "{}", node.stderr());
    assert_eq!(text(&gone.key.0[0]), resident);
    let new = next_event(&node).await;
    assert_eq!(new.op, Op::Create);
    assert_eq!(text(&new.key.0[0]), corrected);
    assert_eq!(text(&new.after.unwrap().0[5]), "330108");
}
