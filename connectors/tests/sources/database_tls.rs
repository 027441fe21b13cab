//! Every database connection a feed or sink opens can run over TLS with the
//! server's certificate verified (`sslmode = "verify-full"`), and a server
//! that cannot prove itself, or offers no TLS, is refused with a definite
//! error that names the fix.
//!
//! `scripts/services.sh` gives the test PostgreSQL and MariaDB a certificate
//! for IP 127.0.0.1 signed by `~/.cache/backflow/db-tls/ca.crt`, and lets the role
//! `bf_tls` (created here) log in only over TLS: that these connections
//! work at all proves they were encrypted. `other-ca.crt` signed nothing.

use std::time::Duration;

use crate::support::{
    fast_poll, my_items_db, my_literal, my_packet, my_root, pg_admin, pg_drop, pg_items_db,
    pg_literal, poll_table, read_records, tls_file, Target,
};
use backflow_connectors::mysql::{MysqlSource, MysqlSourceConfig};
use backflow_connectors::poll::{PollMode, PollSource, PollSourceConfig};
use backflow_connectors::postgres::{PostgresSource, PostgresSourceConfig};
use backflow_connectors::sink::mysql::{MysqlSink, MysqlSinkConfig};
use backflow_connectors::sink::postgres::{PostgresSink, PostgresSinkConfig};
use backflow_connectors::tls::SslMode;
use backflow_connectors::{ConnectorError, ErrorKind, Sink, Source};
use backflow_schemas::Op;
use mysql_async::prelude::Queryable;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const ROLE: &str = "bf_tls";
const PASSWORD: &str = "tls 'only' pass";

fn ca() -> String {
    tls_file("ca.crt")
}

fn other_ca() -> String {
    tls_file("other-ca.crt")
}

/// `c` as `bf_tls` with its password, over TLS verified with `ca.crt`,
/// polling fast.
fn tls_poll(mut c: PollSourceConfig) -> PollSourceConfig {
    c.password = Some(PASSWORD.into());
    c.sslmode = SslMode::VerifyFull;
    c.ssl_ca_file = Some(ca());
    fast_poll(c)
}

fn definite_saying(e: Option<ConnectorError>, says: &[&str]) {
    let e = e.expect("the connection was refused");
    assert_eq!(e.kind, ErrorKind::Definite, "{e}");
    for s in says {
        assert!(e.message.contains(s), "{s:?} not in: {e}");
    }
    assert!(!e.message.contains(PASSWORD), "the password is in: {e}");
}

// --------------------------------------------------------------- PostgreSQL

/// `bf_tls` with a SCRAM password, and a fresh database `db` it owns with
/// table `items` (rows 1, 2).
async fn pg_setup(db: &str) -> tokio_postgres::Client {
    let admin = pg_admin("postgres").await;
    let role = format!(
        "SET password_encryption = 'scram-sha-256';
         DO $$ BEGIN CREATE ROLE {ROLE}; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
         ALTER ROLE {ROLE} LOGIN REPLICATION PASSWORD {};",
        pg_literal(PASSWORD)
    );
    // The tests of this file run at once: a concurrent ALTER ROLE may fail
    // with "tuple concurrently updated"; the next try passes.
    for attempt in 1.. {
        match admin.batch_execute(&role).await {
            Ok(()) => break,
            Err(e) if attempt < 10 => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    let c = pg_items_db(db, ROLE).await;
    // pg_hba.conf lets bf_tls in over TLS only.
    let mut plain = tokio_postgres::Config::new();
    plain
        .host("127.0.0.1")
        .user(ROLE)
        .password(PASSWORD)
        .dbname(db)
        .ssl_mode(tokio_postgres::config::SslMode::Disable);
    assert!(
        plain.connect(tokio_postgres::NoTls).await.is_err(),
        "{ROLE} logs in without TLS: pg_hba.conf lacks its hostnossl reject lines (scripts/services.sh up)"
    );
    c
}

fn pg_source(db: &str, user: &str, mode: SslMode, ca: Option<String>) -> PostgresSourceConfig {
    let password = (user == ROLE).then_some(PASSWORD);
    Target {
        mode,
        ca,
        ..Target::new(5432, user, password, db)
    }
    .pg_source(db)
}

fn pg_sink(host: &str, db: &str, mode: SslMode, ca: Option<String>) -> PostgresSinkConfig {
    Target {
        host: host.into(),
        mode,
        ca,
        ..Target::new(5432, ROLE, Some(PASSWORD), db)
    }
    .pg_sink()
}

#[tokio::test]
async fn postgres_source_poll_and_sink_run_over_verified_tls() {
    let db = format!("bf_tls_pg_{}", std::process::id());
    let admin = pg_setup(&db).await;
    let slot = format!("backflow_{db}");

    // CDC: the SQL connection and the replication connection.
    let mut source = PostgresSource::new(
        pg_source(&db, ROLE, SslMode::VerifyFull, Some(ca())),
        "330000",
    );
    source.start(None).await.expect("the CDC source connects");
    assert_eq!(
        read_records(&mut source, 2).await,
        vec![(Op::Read, 1), (Op::Read, 2)]
    );
    admin
        .batch_execute("INSERT INTO items VALUES (3, 'three')")
        .await
        .unwrap();
    assert_eq!(read_records(&mut source, 1).await, vec![(Op::Create, 3)]);
    let walsender_tls = replication_is_tls(&pg_admin("postgres").await, &slot).await;
    assert!(walsender_tls, "the replication connection is not TLS");
    source.shutdown().await.unwrap();

    // Polling.
    let table = poll_table("items", PollMode::Bulk, None);
    let c = tls_poll(PollSourceConfig::postgres(
        "bf-tls-poll",
        ROLE,
        &db,
        vec![table],
    ));
    let mut poll = PollSource::new(c, "330000");
    poll.start(None).await.expect("the polling source connects");
    let mut ids: Vec<i64> = read_records(&mut poll, 3)
        .await
        .iter()
        .map(|r| r.1)
        .collect();
    ids.sort();
    assert_eq!(ids, vec![1, 2, 3]);
    poll.shutdown().await.unwrap();

    // Sink (and reconcile, which reads back through the same connection).
    let mut sink = PostgresSink::new(
        pg_sink("127.0.0.1", &db, SslMode::VerifyFull, Some(ca())),
        "s",
    );
    assert!(sink
        .committed_offsets()
        .await
        .expect("the sink connects")
        .is_empty());
    drop(admin);
    pg_drop(&db, &slot).await;
}

/// Whether the connection streaming from `slot` is encrypted. The rows
/// read first may come from the snapshot, before the slot's stream is
/// open: the slot is waited for (up to 30 s) until a connection holds it.
async fn replication_is_tls(admin: &tokio_postgres::Client, slot: &str) -> bool {
    let until = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let row = admin
            .query_opt(
                "SELECT s.ssl FROM pg_replication_slots r JOIN pg_stat_ssl s ON s.pid = r.active_pid WHERE r.slot_name = $1",
                &[&slot],
            )
            .await
            .unwrap();
        if let Some(row) = row {
            return row.get(0);
        }
        assert!(
            std::time::Instant::now() < until,
            "no connection streams from slot {slot} within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Without a password the replication connection is still made through
/// the relay, which makes the TLS handshake: TLS does not depend on a
/// password being set.
#[tokio::test]
async fn postgres_replication_without_a_password_is_encrypted_too() {
    let db = format!("bf_tls_nopw_{}", std::process::id());
    let admin = pg_setup(&db).await;
    let slot = format!("backflow_{db}");
    let mut source = PostgresSource::new(
        pg_source(&db, "postgres", SslMode::VerifyFull, Some(ca())),
        "330000",
    );
    source.start(None).await.expect("the CDC source connects");
    assert_eq!(read_records(&mut source, 2).await.len(), 2);
    let tls = replication_is_tls(&admin, &slot).await;
    assert!(tls, "the replication connection is not TLS");
    source.shutdown().await.unwrap();
    drop(admin);
    pg_drop(&db, &slot).await;
}

#[tokio::test]
async fn postgres_refuses_a_server_it_cannot_verify() {
    let db = format!("bf_tls_bad_{}", std::process::id());
    let admin = pg_setup(&db).await;
    let attempt = |host: &str, mode, ca| {
        let mut sink = PostgresSink::new(pg_sink(host, &db, mode, ca), "s");
        async move { sink.committed_offsets().await.err() }
    };

    // A CA that did not sign the server's certificate.
    definite_saying(
        attempt("127.0.0.1", SslMode::VerifyFull, Some(other_ca())).await,
        &[
            "TLS to PostgreSQL at 127.0.0.1:5432",
            "certificate",
            "ssl_ca_file",
        ],
    );
    definite_saying(
        attempt("127.0.0.1", SslMode::VerifyCa, Some(other_ca())).await,
        &["certificate"],
    );
    // The certificate names 127.0.0.1, not localhost: verify-full refuses,
    // verify-ca (chain only) accepts.
    definite_saying(
        attempt("localhost", SslMode::VerifyFull, Some(ca())).await,
        &["does not name localhost"],
    );
    assert!(attempt("localhost", SslMode::VerifyCa, Some(ca()))
        .await
        .is_none());
    // require encrypts without verifying.
    assert!(attempt("127.0.0.1", SslMode::Require, Some(other_ca()))
        .await
        .is_none());
    drop(admin);
    pg_drop(&db, "none").await;
}

/// A fake server that answers SSLRequest with `N` (no TLS): refused, and
/// nothing more is sent to it (no startup packet, no user name).
#[tokio::test]
async fn postgres_refuses_a_server_without_tls_and_sends_it_nothing_more() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let heard = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut request = [0u8; 8];
        s.read_exact(&mut request).await.unwrap();
        s.write_all(b"N").await.unwrap();
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
        (request, rest)
    });
    let mut config = pg_sink("127.0.0.1", "gongan", SslMode::Require, None);
    config.port = port;
    let e = PostgresSink::new(config, "s")
        .committed_offsets()
        .await
        .err();
    definite_saying(e, &["does not accept TLS", "sslmode"]);
    let (request, rest) = heard.await.unwrap();
    assert_eq!(request, [0, 0, 0, 8, 4, 210, 22, 47], "an SSLRequest");
    assert!(rest.is_empty(), "sent after the refusal: {rest:?}");
}

// ------------------------------------------------------------ MySQL/MariaDB

fn my_source(
    name: &str,
    user: &str,
    db: &str,
    mode: SslMode,
    ca: Option<String>,
) -> MysqlSourceConfig {
    let password = (user == ROLE).then_some(PASSWORD);
    Target {
        mode,
        ca,
        ..Target::new(3306, user, password, db)
    }
    .my_source(name)
}

fn my_sink(db: &str, mode: SslMode, ca: Option<String>) -> MysqlSinkConfig {
    Target {
        mode,
        ca,
        ..Target::new(3306, ROLE, Some(PASSWORD), db)
    }
    .my_sink()
}

/// `bf_tls`, which MariaDB admits over TLS only (REQUIRE SSL), and a fresh
/// database with `items` (rows 1, 2).
async fn my_setup(db: &str) -> mysql_async::Conn {
    let mut root = my_root().await;
    for host in ["127.0.0.1", "localhost"] {
        root.query_drop(format!(
            "CREATE USER IF NOT EXISTS '{ROLE}'@'{host}' IDENTIFIED BY {pw} REQUIRE SSL;
             ALTER USER '{ROLE}'@'{host}' IDENTIFIED BY {pw} REQUIRE SSL;
             GRANT ALL PRIVILEGES ON *.* TO '{ROLE}'@'{host}'",
            pw = my_literal(PASSWORD)
        ))
        .await
        .unwrap();
    }
    my_items_db(&mut root, db).await;
    let plain = mysql_async::Conn::new(
        mysql_async::OptsBuilder::default()
            .ip_or_hostname("127.0.0.1")
            .tcp_port(3306)
            .user(Some(ROLE))
            .pass(Some(PASSWORD))
            .prefer_socket(false),
    )
    .await;
    assert!(plain.is_err(), "{ROLE} logs in to MariaDB without TLS");
    root
}

#[tokio::test]
async fn mysql_source_poll_and_sink_run_over_verified_tls() {
    let db = format!("bf_tls_my_{}", std::process::id());
    let mut root = my_setup(&db).await;

    // Binlog source: the snapshot connection and the binlog stream.
    let mut source = MysqlSource::new(
        my_source(
            &db.replace('_', "-"),
            ROLE,
            &db,
            SslMode::VerifyFull,
            Some(ca()),
        ),
        "330000",
    );
    source
        .start(None)
        .await
        .expect("the binlog source connects");
    assert_eq!(
        read_records(&mut source, 2).await,
        vec![(Op::Read, 1), (Op::Read, 2)]
    );
    root.query_drop(format!("INSERT INTO {db}.items VALUES (3, 'three')"))
        .await
        .unwrap();
    assert_eq!(read_records(&mut source, 1).await, vec![(Op::Create, 3)]);
    source.shutdown().await.unwrap();

    // Without a password (root), TLS is made all the same.
    let mut source = MysqlSource::new(
        my_source("bf-tls-root", "root", &db, SslMode::VerifyFull, Some(ca())),
        "330000",
    );
    source
        .start(None)
        .await
        .expect("the binlog source connects as root");
    assert_eq!(read_records(&mut source, 3).await.len(), 3);
    source.shutdown().await.unwrap();

    let table = poll_table("items", PollMode::Bulk, None);
    let c = tls_poll(PollSourceConfig::mysql(
        "bf-tls-poll",
        ROLE,
        &db,
        vec![table],
    ));
    let mut poll = PollSource::new(c, "330000");
    poll.start(None).await.expect("the polling source connects");
    let mut ids: Vec<i64> = read_records(&mut poll, 3)
        .await
        .iter()
        .map(|r| r.1)
        .collect();
    ids.sort();
    assert_eq!(ids, vec![1, 2, 3]);
    poll.shutdown().await.unwrap();

    let sink_db = format!("{db}_sink");
    let mut sink = MysqlSink::new(my_sink(&sink_db, SslMode::VerifyFull, Some(ca())), "s");
    assert!(sink
        .committed_offsets()
        .await
        .expect("the sink connects")
        .is_empty());
    root.query_drop(format!("DROP DATABASE {db}; DROP DATABASE {sink_db}"))
        .await
        .unwrap();
}

#[tokio::test]
async fn mysql_refuses_a_server_it_cannot_verify() {
    let db = format!("bf_tls_mybad_{}", std::process::id());
    let mut root = my_setup(&db).await;
    let e = MysqlSink::new(my_sink(&db, SslMode::VerifyFull, Some(other_ca())), "s")
        .committed_offsets()
        .await
        .err();
    definite_saying(
        e,
        &[
            "TLS to MySQL at 127.0.0.1:3306",
            "certificate",
            "ssl_ca_file",
        ],
    );
    // require encrypts without verifying (and bf_tls is admitted: TLS).
    assert!(MysqlSink::new(my_sink(&db, SslMode::Require, None), "s")
        .committed_offsets()
        .await
        .is_ok());
    root.query_drop(format!("DROP DATABASE {db}"))
        .await
        .unwrap();
}

/// A fake MySQL server whose greeting does not offer TLS: refused before
/// the client says anything, so not even the user name leaves.
#[tokio::test]
async fn mysql_refuses_a_server_without_tls_and_sends_it_nothing() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let heard = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        // Protocol 10, version, thread id, scramble, filler, capabilities
        // (PROTOCOL_41 | SECURE_CONNECTION | PLUGIN_AUTH, no SSL), charset,
        // status, high capabilities, scramble length, reserved, scramble 2,
        // plugin.
        let mut p = vec![0x0a];
        p.extend_from_slice(b"10.11.0-fake\0");
        p.extend_from_slice(&[1, 0, 0, 0]);
        p.extend_from_slice(b"abcdefgh\0");
        p.extend_from_slice(&0x8200u16.to_le_bytes());
        p.extend_from_slice(&[33, 2, 0]);
        p.extend_from_slice(&0x0008u16.to_le_bytes());
        p.push(21);
        p.extend_from_slice(&[0; 10]);
        p.extend_from_slice(b"ijklmnopqrst\0");
        p.extend_from_slice(b"mysql_native_password\0");
        s.write_all(&my_packet(0, &p)).await.unwrap();
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
        rest
    });
    let mut config = my_sink("gongan", SslMode::VerifyFull, Some(ca()));
    config.port = port;
    let e = MysqlSink::new(config, "s").committed_offsets().await.err();
    definite_saying(e, &["does not accept TLS", "sslmode"]);
    let rest = heard.await.unwrap();
    assert!(
        !rest.windows(ROLE.len()).any(|w| w == ROLE.as_bytes()),
        "the user name was sent to a server without TLS"
    );
    assert!(rest.is_empty(), "sent to a server without TLS: {rest:?}");
}
