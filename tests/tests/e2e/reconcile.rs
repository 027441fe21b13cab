//! `backflow reconcile` for operators: a district's table compared with
//! the topic it is fed from. A table the subscriber keeps in step is
//! reported equal, for every sink backend and column type (no false
//! differences from how each database prints values); a row deleted,
//! changed or added behind the subscriber's back is reported by key, with
//! exit status 1, while the subscriber goes on running.

use std::process::Output;
use std::time::{Duration, Instant};

use backflow_e2e::sinks::{Backend, Kind, SinkDb};
use backflow_e2e::{
    backflow, create_pg_database, drop_pg_database, unique_name, Node, TestBroker, TestToken,
};

const TABLE: &str = "CREATE TABLE people (
    id bigint PRIMARY KEY, name text NOT NULL, region_code char(6) NOT NULL,
    income numeric(12,2), born date, seen timestamptz, score double precision,
    active boolean NOT NULL DEFAULT true, photo bytea);
INSERT INTO people
SELECT g, '居民' || g, '330106', CASE WHEN g % 7 = 0 THEN NULL ELSE g * 10.25 END,
       DATE '1980-01-01' + g, TIMESTAMPTZ '2026-01-01 08:00:00.123456+08' + g * interval '1 hour',
       g / 3.0, g % 2 = 0, CASE WHEN g % 5 = 0 THEN NULL ELSE decode('00ff' || lpad(to_hex(g), 4, '0'), 'hex') END
  FROM generate_series(1, 50) g;";

fn reconcile(config: &std::path::Path, args: &[&str]) -> Output {
    backflow()
        .arg("--config")
        .arg(config)
        .arg("reconcile")
        .args(args)
        .output()
        .expect("run backflow reconcile")
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

async fn reports_equal_then_each_tampered_row(backend: Backend) {
    let department = unique_name("bf_dept");
    create_pg_database(&department)
        .await
        .unwrap()
        .batch_execute(TABLE)
        .await
        .unwrap();
    let sink = SinkDb::create(backend).await.unwrap();
    let broker = TestBroker::start();
    let dataset = format!("t{}.people", &department[8..]);
    let reader = TestToken::new("subscriber:330106");
    let node = Node::start_with_config(
        &format!(
            "[kafka]\nbrokers = \"{}\"\n\n[[feeds]]\ntype = \"postgres\"\nname = \"{}\"\nuser = \"postgres\"\ndatabase = \"{department}\"\ntables = [{{ table = \"public.people\", dataset = \"{dataset}\" }}]\n{}",
            broker.bootstrap(),
            department.replace('_', "-"),
            reader.auth_toml(),
        ),
        &[],
    )
    .unwrap();
    let sub_config = format!(
        "[[subscriptions]]\nname = \"{}\"\nupstream = {{ brokers = \"{}\", registry_url = \"{}\", {} }}\nsink = {}\ntables = [{{ topic = \"backflow.raw.{dataset}\", table = \"people\" }}]\n",
        unique_name("xihu"),
        broker.bootstrap(),
        node.url,
        reader.upstream_setting(),
        sink.sink_toml(),
    );
    let file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::fs::write(file.path(), &sub_config).unwrap();
    let sub = Node::subscribe_with_config(&sub_config, &[]).unwrap();
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let held = sink
            .rows("people", "id", &[("name", Kind::Text)])
            .await
            .unwrap();
        if held.is_some_and(|r| r.len() == 50) {
            break;
        }
        assert!(
            Instant::now() < until,
            "the district never got the 50 rows:\n{}",
            sub.stderr()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // In step: equal, every column type compared.
    let out = reconcile(file.path(), &[]);
    let report = text(&out);
    assert_eq!(out.status.code(), Some(0), "{report}");
    assert!(
        report.contains("topic gives 50 rows, table holds 50; 0 missing, 0 extra, 0 different"),
        "{report}"
    );
    assert!(report.contains("applied through offset"), "{report}");

    // Behind the subscriber's back: one row deleted, one changed, one added.
    sink.execute(
        "DELETE FROM people WHERE id = 5;
         UPDATE people SET name = 'changed' WHERE id = 6;
         INSERT INTO people (id, name, region_code, active) VALUES (9999, 'stray', '330106', true)",
    )
    .await
    .unwrap();
    let out = reconcile(file.path(), &["--show-keys"]);
    let report = text(&out);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(
        report.contains("topic gives 50 rows, table holds 50; 1 missing, 1 extra, 1 different"),
        "{report}"
    );
    for line in ["missing: 5\n", "extra: 9999\n", "different: 6\n"] {
        assert!(report.contains(line), "{line:?} in\n{report}");
    }

    // The JSON report gives counts, not keys, unless asked.
    let out = reconcile(file.path(), &["--json"]);
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", text(&out)));
    let table = &json["tables"][0];
    assert_eq!(
        (
            &table["missing"],
            &table["extra"],
            &table["different"],
            &table["expected"]
        ),
        (
            &serde_json::json!(1),
            &serde_json::json!(1),
            &serde_json::json!(1),
            &serde_json::json!(50)
        ),
        "{json}"
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("9999"),
        "no keys without --show-keys"
    );

    // No scratch table is left behind.
    assert_eq!(
        sink.rows("people_bf_reconcile", "id", &[]).await.unwrap(),
        None
    );

    drop(sub);
    drop(node);
    sink.drop_db().await.unwrap();
    drop_pg_database(&department).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_a_postgres_district() {
    reports_equal_then_each_tampered_row(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_a_mariadb_district() {
    reports_equal_then_each_tampered_row(Backend::Mariadb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_a_sqlite_district() {
    reports_equal_then_each_tampered_row(Backend::Sqlite).await;
}

#[test]
fn reconcile_names_the_subscription_to_choose() {
    let file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    let one = |name: &str| {
        format!(
            "[[subscriptions]]\nname = \"{name}\"\nupstream = {{ brokers = \"127.0.0.1:1\", registry_url = \"http://127.0.0.1:1\" }}\nsink = {{ type = \"sqlite\", path = \"/tmp/x.db\" }}\ntables = [{{ topic = \"backflow.share.330106.a.b\" }}]\n"
        )
    };
    std::fs::write(file.path(), one("a") + &one("b")).unwrap();
    let out = reconcile(file.path(), &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("choose one with --subscription NAME"));
    let out = reconcile(file.path(), &["--subscription", "c"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains("no subscription named c in the configuration (it has: a, b)"),
        "{}",
        text(&out)
    );
}
