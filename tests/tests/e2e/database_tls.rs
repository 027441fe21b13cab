//! A node whose every database connection runs over TLS with the server's
//! certificate verified (`sslmode = "verify-full"`, `ssl_ca_file`): a
//! PostgreSQL feed, a MariaDB binlog feed, a district's PostgreSQL sink and
//! `backflow reconcile` against it.
//!
//! The login used, `bf_tls`, is admitted by the test PostgreSQL over TLS
//! only (pg_hba.conf `hostnossl ... reject`, see `scripts/services.sh`) and
//! by MariaDB only with `REQUIRE SSL`, so every row that arrives crossed
//! TLS at both ends.

use std::process::Output;
use std::time::{Duration, Instant};

use backflow_e2e::sinks::{mariadb_connect, Backend, Kind, SinkDb};
use backflow_e2e::{
    backflow, create_pg_database, drop_pg_database, pg_connect, unique_name, Node, TestBroker,
    TestToken,
};
use mysql_async::prelude::Queryable;

const ROLE: &str = "bf_tls";
/// The same password as the connector tests' (they share the role).
const PASSWORD: &str = "tls 'only' pass";

/// `bf_tls` on both servers (PostgreSQL: SCRAM, REPLICATION; MariaDB:
/// REQUIRE SSL, all privileges).
async fn tls_logins() {
    let admin = pg_connect("postgres").await.unwrap();
    let role = format!(
        "SET password_encryption = 'scram-sha-256';
         DO $$ BEGIN CREATE ROLE {ROLE}; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
         ALTER ROLE {ROLE} LOGIN REPLICATION PASSWORD '{}';",
        PASSWORD.replace('\'', "''")
    );
    // Other tests alter the role too: "tuple concurrently updated" passes.
    for attempt in 1.. {
        match admin.batch_execute(&role).await {
            Ok(()) => break,
            Err(_) if attempt < 10 => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => panic!("{e}"),
        }
    }
    let mut root = mariadb_connect(None).await.unwrap();
    for host in ["127.0.0.1", "localhost"] {
        root.query_drop(format!(
            "CREATE USER IF NOT EXISTS '{ROLE}'@'{host}' IDENTIFIED BY '{pw}' REQUIRE SSL;
             ALTER USER '{ROLE}'@'{host}' IDENTIFIED BY '{pw}' REQUIRE SSL;
             GRANT ALL PRIVILEGES ON *.* TO '{ROLE}'@'{host}'",
            pw = PASSWORD.replace('\'', "''")
        ))
        .await
        .unwrap();
    }
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feeds_a_sink_and_reconcile_run_over_verified_tls() {
    tls_logins().await;
    let ca = backflow_e2e::db_ca_file();
    let ca = ca.display();

    // The departments' databases, owned by bf_tls.
    let pg_db = unique_name("bf_tlsdept");
    let pg = create_pg_database(&pg_db).await.unwrap();
    pg.batch_execute(&format!(
        "CREATE TABLE people (id bigint PRIMARY KEY, name text NOT NULL);
         INSERT INTO people SELECT g, '居民' || g FROM generate_series(1, 30) g;
         ALTER TABLE people OWNER TO {ROLE};
         ALTER DATABASE {pg_db} OWNER TO {ROLE};"
    ))
    .await
    .unwrap();
    let my_db = unique_name("bf_tlsmy");
    let mut my = mariadb_connect(None).await.unwrap();
    my.query_drop(format!(
        "CREATE DATABASE {my_db} CHARACTER SET utf8mb4;
         CREATE TABLE {my_db}.households (id bigint PRIMARY KEY, head varchar(32) NOT NULL);
         INSERT INTO {my_db}.households VALUES (1, '户一'), (2, '户二'), (3, '户三')"
    ))
    .await
    .unwrap();

    let broker = TestBroker::start();
    let reader = TestToken::new("subscriber:330106");
    let suffix = &pg_db[11..];
    let (people, households) = (format!("t{suffix}.people"), format!("t{suffix}.households"));
    let node = Node::start_with_config(
        &format!(
            "[kafka]\nbrokers = \"{brokers}\"\n\n\
             [[feeds]]\ntype = \"postgres\"\nname = \"{pg_feed}\"\nuser = \"{ROLE}\"\npassword_env = \"DEPT_DB_PASSWORD\"\n\
             database = \"{pg_db}\"\nsslmode = \"verify-full\"\nssl_ca_file = \"{ca}\"\n\
             tables = [{{ table = \"public.people\", dataset = \"{people}\" }}]\n\n\
             [[feeds]]\ntype = \"mysql\"\nname = \"{my_feed}\"\nuser = \"{ROLE}\"\npassword_env = \"DEPT_DB_PASSWORD\"\n\
             sslmode = \"verify-full\"\nssl_ca_file = \"{ca}\"\n\
             tables = [{{ table = \"{my_db}.households\", dataset = \"{households}\" }}]\n{auth}",
            brokers = broker.bootstrap(),
            pg_feed = pg_db.replace('_', "-"),
            my_feed = my_db.replace('_', "-"),
            auth = reader.auth_toml(),
        ),
        &[("DEPT_DB_PASSWORD", PASSWORD)],
    )
    .unwrap();

    // The district's database, owned by bf_tls too.
    let sink = SinkDb::create(Backend::Postgres).await.unwrap();
    pg_connect("postgres")
        .await
        .unwrap()
        .batch_execute(&format!("ALTER DATABASE {} OWNER TO {ROLE}", sink.name))
        .await
        .unwrap();
    let sub_config = format!(
        "[[subscriptions]]\nname = \"{}\"\nupstream = {{ brokers = \"{}\", registry_url = \"{}\", {} }}\n\
         sink = {{ type = \"postgres\", host = \"127.0.0.1\", user = \"{ROLE}\", password_env = \"DISTRICT_DB_PASSWORD\", \
         database = \"{}\", sslmode = \"verify-full\", ssl_ca_file = \"{ca}\" }}\n\
         tables = [{{ topic = \"backflow.raw.{people}\", table = \"people\" }}, {{ topic = \"backflow.raw.{households}\", table = \"households\" }}]\n",
        unique_name("xihu"),
        broker.bootstrap(),
        node.url,
        reader.upstream_setting(),
        sink.name,
    );
    let env = [("DISTRICT_DB_PASSWORD", PASSWORD)];
    let sub = Node::subscribe_with_config(&sub_config, &env).unwrap();
    let until = Instant::now() + Duration::from_secs(90);
    loop {
        let people = sink
            .rows("people", "id", &[("name", Kind::Text)])
            .await
            .unwrap();
        let households = sink
            .rows("households", "id", &[("head", Kind::Text)])
            .await
            .unwrap();
        if people.as_ref().is_some_and(|r| r.len() == 30)
            && households.as_ref().is_some_and(|r| r.len() == 3)
        {
            let households = households.unwrap();
            assert_eq!(households[&2][0].as_deref(), Some("户二"));
            break;
        }
        assert!(
            Instant::now() < until,
            "the district did not receive every row over TLS: people {:?}, households {:?}\nnode:\n{}\nsubscriber:\n{}",
            people.map(|r| r.len()),
            households.map(|r| r.len()),
            node.stderr(),
            sub.stderr()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // A change made after the snapshot streams through too.
    pg.batch_execute("INSERT INTO people VALUES (31, '居民31')")
        .await
        .unwrap();
    let until = Instant::now() + Duration::from_secs(30);
    while sink
        .rows("people", "id", &[])
        .await
        .unwrap()
        .is_none_or(|r| !r.contains_key(&31))
    {
        assert!(
            Instant::now() < until,
            "row 31 never arrived\n{}",
            sub.stderr()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Every session of bf_tls on PostgreSQL is encrypted (the feed's SQL
    // and replication connections, the sink's).
    let sessions: Vec<(String, bool)> = pg_connect("postgres")
        .await
        .unwrap()
        .query(
            "SELECT coalesce(a.application_name, ''), s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) WHERE a.usename = $1",
            &[&ROLE],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(sessions.len() >= 3, "{sessions:?}");
    assert!(sessions.iter().all(|(_, ssl)| *ssl), "{sessions:?}");

    // reconcile reads the district's table over the same TLS.
    let file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::fs::write(file.path(), &sub_config).unwrap();
    let out = backflow()
        .arg("--config")
        .arg(file.path())
        .arg("reconcile")
        .env("DISTRICT_DB_PASSWORD", PASSWORD)
        .output()
        .unwrap();
    let report = text(&out);
    assert_eq!(out.status.code(), Some(0), "{report}");
    assert!(
        report.contains("topic gives 31 rows, table holds 31; 0 missing, 0 extra, 0 different"),
        "{report}"
    );

    // No warning about clear connections, and no password in any log.
    for log in [node.stderr(), sub.stderr(), report] {
        assert!(!log.contains("not encrypted"), "{log}");
        assert!(!log.contains(PASSWORD), "the password is in a log");
    }

    drop(sub);
    drop(node);
    sink.drop_db().await.unwrap();
    drop(pg);
    drop_pg_database(&pg_db).await.unwrap();
    my.query_drop(format!("DROP DATABASE {my_db}"))
        .await
        .unwrap();
}
