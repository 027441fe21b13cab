//! A feed whose database refuses its login says so and does not hammer the
//! server: a PostgreSQL feed configured with a wrong password (the test
//! role `bf_scram`, which pg_hba.conf holds to SCRAM) shows FAILED at
//! `/api/feeds` with the server's reason, its SQLSTATE and the settings to
//! fix, never the password; it counts as a definite failure and is tried
//! again once a minute, not every second. A MariaDB feed with a wrong
//! password likewise, with the server's error 1045, and so does a
//! district's subscription whose MariaDB database refuses its login.

use std::time::{Duration, Instant};

use backflow_e2e::sinks::{mariadb_connect, Backend, SinkDb};
use backflow_e2e::{metric_sum, pg_connect, Node, TestBroker, TestToken};
use serde_json::Value;

const ADMIN: &str = "feed-failures-admin-token-0123456789";
const WRONG: &str = "certainly-not-the-password-9f2c";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_database_password_fails_the_feed_with_the_fix_and_is_not_retried_in_a_loop() {
    // The SCRAM role exists (the connector tests create it too; its
    // password is theirs, never WRONG).
    pg_connect("postgres")
        .await
        .unwrap()
        .batch_execute(
            "SET password_encryption = 'scram-sha-256';
             DO $$ BEGIN CREATE ROLE bf_scram LOGIN REPLICATION PASSWORD 'bf-scram-feed-test';
             EXCEPTION WHEN duplicate_object THEN NULL; END $$;",
        )
        .await
        .unwrap();
    let source = SinkDb::create(Backend::Postgres).await.unwrap();
    pg_connect(&source.name)
        .await
        .unwrap()
        .batch_execute("CREATE TABLE people (id bigint PRIMARY KEY, name text)")
        .await
        .unwrap();
    let broker = TestBroker::start();
    let feed = source.name.replace('_', "-");
    let node = Node::start_with_config(
        &format!(
            "[node]\ncode = \"330100\"\n[kafka]\nbrokers = \"{}\"\n\
             [[auth.tokens]]\nprincipal = \"admin\"\nsha256 = \"{}\"\n\n\
             [[feeds]]\ntype = \"postgres\"\nname = \"{feed}\"\nhost = \"127.0.0.1\"\nuser = \"bf_scram\"\npassword_env = \"FEED_PG_PASSWORD\"\ndatabase = \"{}\"\ntables = [{{ table = \"public.people\", dataset = \"t{}.people\" }}]\n",
            broker.bootstrap(),
            backflow::auth::token_hash(ADMIN),
            source.name,
            &source.name[8..],
        ),
        &[("FEED_PG_PASSWORD", WRONG)],
    )
    .unwrap();

    fails_with_the_fix_once(&node, &feed, &["28P01", "bf_scram"]).await;
}

/// Waits until `feed` is FAILED; checks its error names `needed`, how to
/// fix the login and the retry, not the password; and that it was tried
/// once, as a definite failure, in the 10 s after.
async fn fails_with_the_fix_once(node: &Node, feed: &str, needed: &[&str]) {
    let until = Instant::now() + Duration::from_secs(30);
    let error = loop {
        let (status, list) = node.api("GET", "/api/feeds", Some(ADMIN), None).await;
        assert_eq!(status, 200, "{list}");
        let row = list
            .as_array()
            .or_else(|| list["feeds"].as_array())
            .and_then(|rows| rows.iter().find(|r| r["name"] == feed))
            .cloned()
            .unwrap_or(Value::Null);
        if row["status"]["state"] == "FAILED" {
            break row["status"]["error"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
        }
        assert!(
            Instant::now() < until,
            "the feed never showed FAILED: {row}\n{}",
            node.stderr()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    for needed in needed.iter().chain(&["password_env", "once a minute"]) {
        assert!(error.contains(needed), "{needed:?} missing from: {error}");
    }
    assert!(
        !error.contains(WRONG),
        "the password is in the status: {error}"
    );
    assert!(!node.stderr().contains(WRONG), "the password is in the log");

    // Ten seconds later it was still tried once: a definite failure waits a
    // minute for its cause to be fixed.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (_, metrics) = node.get_ops("/metrics").await.unwrap();
    let restarts = |kind: &str| {
        metric_sum(
            &metrics,
            "backflow_source_restarts_total",
            &format!("kind=\"{kind}\""),
        )
    };
    assert_eq!(restarts("definite"), 1.0, "{metrics}");
    assert_eq!(restarts("transient"), 0.0, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_mariadb_password_fails_the_feed_with_the_fix_and_is_not_retried_in_a_loop() {
    let db = backflow_e2e::unique_name("bf_login");
    let mut root = mariadb_connect(None).await.unwrap();
    use mysql_async::prelude::Queryable as _;
    root.query_drop(format!(
        "CREATE DATABASE `{db}`; CREATE TABLE `{db}`.people (id bigint PRIMARY KEY, name text);
         CREATE USER IF NOT EXISTS 'bf_login'@'127.0.0.1' IDENTIFIED BY 'bf-login-right-password';"
    ))
    .await
    .unwrap();
    let broker = TestBroker::start();
    let feed = db.replace('_', "-");
    let node = Node::start_with_config(
        &format!(
            "[node]\ncode = \"330100\"\n[kafka]\nbrokers = \"{}\"\n\
             [[auth.tokens]]\nprincipal = \"admin\"\nsha256 = \"{}\"\n\n\
             [[feeds]]\ntype = \"mysql\"\nname = \"{feed}\"\nhost = \"127.0.0.1\"\nuser = \"bf_login\"\npassword_env = \"FEED_MY_PASSWORD\"\ndatabase = \"{db}\"\ntables = [{{ table = \"people\", dataset = \"{db}.people\" }}]\n",
            broker.bootstrap(),
            backflow::auth::token_hash(ADMIN),
        ),
        &[("FEED_MY_PASSWORD", WRONG)],
    )
    .unwrap();
    fails_with_the_fix_once(&node, &feed, &["1045", "bf_login"]).await;
    root.query_drop(format!("DROP DATABASE `{db}`"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_whose_database_refuses_the_login_waits_for_a_fix() {
    let db = backflow_e2e::unique_name("bf_sink_login");
    let mut root = mariadb_connect(None).await.unwrap();
    use mysql_async::prelude::Queryable as _;
    root.query_drop(format!(
        "CREATE DATABASE `{db}`;
         CREATE USER IF NOT EXISTS 'bf_login'@'127.0.0.1' IDENTIFIED BY 'bf-login-right-password';"
    ))
    .await
    .unwrap();
    let broker = TestBroker::start();
    let district = TestToken::new("subscriber:330106");
    let node = Node::start_with_config(
        &format!(
            "[node]\ncode = \"330100\"\n[kafka]\nbrokers = \"{}\"\n{}",
            broker.bootstrap(),
            district.auth_toml()
        ),
        &[],
    )
    .unwrap();
    node.wait_for_status("/readyz", 200, Duration::from_secs(60))
        .await
        .unwrap();
    let name = db.replace('_', "-");
    let sub = Node::subscribe_with_config(
        &format!(
            "[[subscriptions]]\nname = \"{name}\"\nupstream = {{ brokers = \"{}\", registry_url = \"{}\", {} }}\n\
             sink = {{ type = \"mysql\", host = \"127.0.0.1\", port = 3306, user = \"bf_login\", password_env = \"SINK_PASSWORD\", database = \"{db}\" }}\n\
             tables = [{{ topic = \"backflow.share.330106.ga.people\", table = \"people\" }}]\n",
            broker.bootstrap(),
            node.url,
            district.upstream_setting(),
        ),
        &[("SINK_PASSWORD", WRONG)],
    )
    .unwrap();
    let errors = |metrics: &str, kind: &str| {
        metric_sum(
            metrics,
            "backflow_subscribe_errors_total",
            &format!("kind=\"{kind}\""),
        )
    };
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = sub
            .get_ops("/metrics")
            .await
            .map(|(_, m)| m)
            .unwrap_or_default();
        if errors(&metrics, "definite") >= 1.0 {
            break;
        }
        assert!(
            Instant::now() < until,
            "the subscription never failed definitely:\n{metrics}\n{}",
            sub.stderr()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Ten seconds later it was still tried once, and says why and what to
    // fix, never the password.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (_, metrics) = sub.get_ops("/metrics").await.unwrap();
    assert_eq!(errors(&metrics, "definite"), 1.0, "{metrics}");
    assert_eq!(errors(&metrics, "transient"), 0.0, "{metrics}");
    let log = sub.stderr();
    for needed in ["1045", "bf_login", "password_env", "\"definite\"", "60s"] {
        assert!(
            log.contains(needed),
            "{needed:?} missing from the log:\n{log}"
        );
    }
    assert!(!log.contains(WRONG), "the password is in the log");
    drop(sub);
    root.query_drop(format!("DROP DATABASE `{db}`"))
        .await
        .unwrap();
}
