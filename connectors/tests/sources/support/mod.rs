//! Helpers the integration tests of this crate share: the test PostgreSQL
//! and MariaDB, connector configurations, reading a source, the TLS files
//! of `scripts/services.sh`, and the plumbing of fake servers.

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backflow_connectors::mysql::{MysqlSourceConfig, MysqlTableConfig};
use backflow_connectors::poll::{PollMode, PollSourceConfig, PollTableConfig};
use backflow_connectors::postgres::{PostgresSourceConfig, TableConfig};
use backflow_connectors::sink::mysql::MysqlSinkConfig;
use backflow_connectors::sink::postgres::PostgresSinkConfig;
use backflow_connectors::tls::SslMode;
use backflow_connectors::{ConnectorError, ErrorKind, Source};
use backflow_schemas::{Datum, Op, Row};
use mysql_async::prelude::Queryable;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// ------------------------------------------------------------ real servers

/// A client of the test PostgreSQL (127.0.0.1:5432) as `postgres`, in `db`.
pub async fn pg_admin(db: &str) -> tokio_postgres::Client {
    let mut c = tokio_postgres::Config::new();
    c.host("127.0.0.1").port(5432).user("postgres").dbname(db);
    let (client, conn) = c
        .connect(tokio_postgres::NoTls)
        .await
        .expect("PostgreSQL on 127.0.0.1:5432 (scripts/services.sh up)");
    tokio::spawn(conn);
    client
}

/// `s` as a PostgreSQL string literal.
pub fn pg_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// `s` as a PostgreSQL identifier.
fn pg_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// A fresh PostgreSQL database `name` owned by `owner` (dropped first).
pub async fn pg_fresh_db(name: &str, owner: &str) {
    let admin = pg_admin("postgres").await;
    for sql in [
        format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", pg_ident(name)),
        format!(
            "CREATE DATABASE {} OWNER {}",
            pg_ident(name),
            pg_ident(owner)
        ),
    ] {
        admin.batch_execute(&sql).await.unwrap();
    }
}

/// A fresh database `name` owned by `owner` with table `items` (rows 1, 2),
/// `owner`'s too; a client in it.
pub async fn pg_items_db(name: &str, owner: &str) -> tokio_postgres::Client {
    pg_fresh_db(name, owner).await;
    let c = pg_admin(name).await;
    c.batch_execute(&format!(
        "CREATE TABLE items (id bigint PRIMARY KEY, label text NOT NULL);
         ALTER TABLE items OWNER TO {owner};
         INSERT INTO items VALUES (1, 'one'), (2, 'two');",
        owner = pg_ident(owner)
    ))
    .await
    .unwrap();
    c
}

/// Drops database `name` and every replication slot on it (`slot` among
/// them), ending the walsenders that still hold one; gives up after 30 s.
/// Errors are ignored: this is cleanup. A database left with a slot keeps
/// the slot, which holds WAL and fills `max_replication_slots` for every
/// later test.
pub async fn pg_drop(name: &str, slot: &str) {
    let admin = pg_admin("postgres").await;
    let until = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let _ = admin
            .batch_execute(&format!(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
                   WHERE (database = {db} OR slot_name = {slot}) AND active_pid IS NOT NULL; \
                 SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                   WHERE (database = {db} OR slot_name = {slot}) AND NOT active",
                db = pg_literal(name),
                slot = pg_literal(slot)
            ))
            .await;
        let left = admin
            .query_one(
                "SELECT count(*) FROM pg_replication_slots WHERE database = $1 OR slot_name = $2",
                &[&name, &slot],
            )
            .await
            .map_or(0, |r| r.get::<_, i64>(0));
        if left == 0 || std::time::Instant::now() > until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = admin
        .batch_execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            pg_ident(name)
        ))
        .await;
}

/// A test database on the test PostgreSQL, dropped with its replication
/// slots when it goes out of scope (a failing test too).
#[must_use = "the database is dropped when this goes out of scope"]
pub struct PgDb(pub String);

impl std::ops::Deref for PgDb {
    type Target = String;
    fn deref(&self) -> &String {
        &self.0
    }
}

impl std::fmt::Display for PgDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        // The test's runtime cannot be blocked on: the cleanup runs on a
        // thread and a runtime of its own.
        let name = std::mem::take(&mut self.0);
        let cleanup = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(pg_drop(&name, &format!("backflow_{name}")));
            }
        });
        let _ = cleanup.join();
    }
}

/// A connection to the test MariaDB (127.0.0.1:3306) as `root`.
pub async fn my_root() -> mysql_async::Conn {
    mysql_async::Conn::new(
        mysql_async::OptsBuilder::default()
            .ip_or_hostname("127.0.0.1")
            .tcp_port(3306)
            .user(Some("root"))
            .prefer_socket(false),
    )
    .await
    .expect("MariaDB on 127.0.0.1:3306 (scripts/services.sh up)")
}

/// `s` as a MySQL string literal.
pub fn my_literal(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

/// A fresh MariaDB database `db` (utf8mb4, dropped first); a root
/// connection using it.
pub async fn my_fresh_db(db: &str) -> mysql_async::Conn {
    let mut c = my_root().await;
    c.query_drop(format!("DROP DATABASE IF EXISTS {db}"))
        .await
        .unwrap();
    c.query_drop(format!("CREATE DATABASE {db} CHARACTER SET utf8mb4"))
        .await
        .unwrap();
    c.query_drop(format!("USE {db}")).await.unwrap();
    c
}

/// Through `root`, a fresh database `db` with table `items` (rows 1, 2).
pub async fn my_items_db(root: &mut mysql_async::Conn, db: &str) {
    root.query_drop(format!(
        "DROP DATABASE IF EXISTS {db}; CREATE DATABASE {db} CHARACTER SET utf8mb4;
         CREATE TABLE {db}.items (id bigint PRIMARY KEY, label varchar(20) NOT NULL);
         INSERT INTO {db}.items VALUES (1, 'one'), (2, 'two')"
    ))
    .await
    .unwrap();
}

/// The path of `name` in the `db-tls` folder `scripts/services.sh up` makes
/// (in `BACKFLOW_CACHE`, by default `~/.cache/backflow`).
pub fn tls_file(name: &str) -> String {
    // scripts/services.sh keeps them in its cache, one set per machine.
    let dir = std::env::var_os("BACKFLOW_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/backflow")))
        .expect("HOME or BACKFLOW_CACHE");
    let path = dir.join("db-tls").join(name);
    assert!(
        path.exists(),
        "{} is missing: run scripts/services.sh up",
        path.display()
    );
    path.to_str().unwrap().to_owned()
}

// ----------------------------------------------------------- configurations

/// A database server a connector under test connects to, and how.
#[derive(Clone, Debug)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub database: String,
    pub mode: SslMode,
    pub ca: Option<String>,
}

impl Target {
    /// `database` on 127.0.0.1:`port` as `user`, without TLS.
    pub fn new(port: u16, user: &str, password: Option<&str>, database: &str) -> Self {
        Self {
            host: "127.0.0.1".into(),
            port,
            user: user.into(),
            password: password.map(Into::into),
            database: database.into(),
            mode: Default::default(),
            ca: None,
        }
    }

    /// A CDC source `name` of `public.items` (as dataset `test.items`).
    pub fn pg_source(&self, name: &str) -> PostgresSourceConfig {
        PostgresSourceConfig {
            name: name.into(),
            host: self.host.clone(),
            port: self.port,
            user: self.user.clone(),
            password: self.password.clone(),
            password_env: None,
            password_file: None,
            sslmode: self.mode,
            ssl_ca_file: self.ca.clone(),
            database: self.database.clone(),
            tables: vec![TableConfig {
                table: "public.items".into(),
                dataset: "test.items".into(),
            }],
            slot: None,
            publication: None,
            snapshot: Default::default(),
            replica_identity: Default::default(),
            snapshot_chunk_rows: 1000,
        }
    }

    /// A binlog source `name` of table `items` (as dataset `test.items`).
    pub fn my_source(&self, name: &str) -> MysqlSourceConfig {
        MysqlSourceConfig {
            name: name.into(),
            host: self.host.clone(),
            port: self.port,
            user: self.user.clone(),
            password: self.password.clone(),
            password_env: None,
            password_file: None,
            sslmode: self.mode,
            ssl_ca_file: self.ca.clone(),
            database: Some(self.database.clone()),
            tables: vec![MysqlTableConfig {
                table: "items".into(),
                dataset: "test.items".into(),
            }],
            server_id: None,
            snapshot: Default::default(),
            snapshot_chunk_rows: 1000,
        }
    }

    /// A polling source `name` of PostgreSQL `tables`.
    pub fn pg_poll(&self, name: &str, tables: Vec<PollTableConfig>) -> PollSourceConfig {
        self.poll(PollSourceConfig::postgres(
            name,
            &self.user,
            &self.database,
            tables,
        ))
    }

    /// A polling source `name` of MySQL `tables`.
    pub fn my_poll(&self, name: &str, tables: Vec<PollTableConfig>) -> PollSourceConfig {
        self.poll(PollSourceConfig::mysql(
            name,
            &self.user,
            &self.database,
            tables,
        ))
    }

    /// `c` connecting here.
    fn poll(&self, mut c: PollSourceConfig) -> PollSourceConfig {
        c.host = self.host.clone();
        c.port = Some(self.port);
        c.password = self.password.clone();
        c.sslmode = self.mode;
        c.ssl_ca_file = self.ca.clone();
        c
    }

    /// A PostgreSQL sink into schema `bf_sink`.
    pub fn pg_sink(&self) -> PostgresSinkConfig {
        PostgresSinkConfig {
            host: self.host.clone(),
            port: self.port,
            user: self.user.clone(),
            password: self.password.clone(),
            password_env: None,
            password_file: None,
            sslmode: self.mode,
            ssl_ca_file: self.ca.clone(),
            database: self.database.clone(),
            schema: "bf_sink".into(),
        }
    }

    /// A MySQL sink.
    pub fn my_sink(&self) -> MysqlSinkConfig {
        MysqlSinkConfig {
            host: self.host.clone(),
            port: self.port,
            user: self.user.clone(),
            password: self.password.clone(),
            password_env: None,
            password_file: None,
            sslmode: self.mode,
            ssl_ca_file: self.ca.clone(),
            database: self.database.clone(),
        }
    }
}

/// Polled table `name` (as dataset `test.items`) in `mode`, with timestamp
/// column `ts`.
pub fn poll_table(name: &str, mode: PollMode, ts: Option<&str>) -> PollTableConfig {
    PollTableConfig {
        table: name.into(),
        dataset: "test.items".into(),
        mode,
        timestamp_column: ts.map(Into::into),
        incrementing_column: None,
        soft_delete_column: None,
    }
}

/// `c` polling every 50 ms, rows older than 100 ms.
pub fn fast_poll(mut c: PollSourceConfig) -> PollSourceConfig {
    c.poll_interval_ms = 50;
    c.delay_ms = 100;
    c
}

// ------------------------------------------------------------------ sources

/// The first column of `key`, an integer.
pub fn id_of(key: &Row) -> i64 {
    match key.0[0] {
        Datum::Long(v) => v,
        Datum::Int(v) => i64::from(v),
        ref d => panic!("{d:?}"),
    }
}

/// Reads records until `want` arrived (20 s at most), acknowledging every
/// checkpoint; their operations and ids.
pub async fn read_records(source: &mut dyn Source, want: usize) -> Vec<(Op, i64)> {
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), async {
        while got.len() < want {
            let b = source.next_batch(100).await.unwrap();
            for r in b.records {
                got.push((r.event.op, id_of(&r.event.key)));
            }
            if let Some(cp) = b.checkpoint {
                source.acknowledge(&cp).await.unwrap();
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{want} records within 20 s, got {got:?}"));
    got
}

// ------------------------------------------------------------- fake servers

/// The password the fake servers try to obtain: without a quote or a
/// backslash, so that even a connection string that escapes them wrongly
/// gets as far as the server's request.
pub const SECRET: &str = "s3cret pass=word";

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The connections a feed or sink opens: the CDC source's, the polling
/// source's and the sink's.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    Source,
    Poll,
    Sink,
}

/// What is wrong with the error `e` a refused attempt `what` ended with:
/// not definite, not saying each of `says`, or holding `SECRET`.
pub fn error_faults(what: &str, e: &ConnectorError, says: &[&str]) -> Vec<String> {
    let mut wrong = Vec::new();
    if e.kind != ErrorKind::Definite {
        wrong.push(format!("{what}: a {:?} error: {e}", e.kind));
    }
    for s in says {
        if !e.message.contains(s) {
            wrong.push(format!("{what}: the error does not say {s:?}: {e}"));
        }
    }
    if e.message.contains(SECRET) {
        wrong.push(format!("{what}: the error holds the password"));
    }
    wrong
}

/// Listens on 127.0.0.1 (the port returned) and serves each connection
/// with `handler` in a task of its own; `open` counts those not yet done.
pub async fn listen<F, Fut>(open: Arc<AtomicUsize>, mut handler: F) -> u16
where
    F: FnMut(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                return;
            };
            open.fetch_add(1, Ordering::SeqCst);
            let served = handler(s);
            let open = open.clone();
            tokio::spawn(async move {
                served.await;
                open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    port
}

/// Waits until `open` (of `listen`) is down to 0, `limit` at most.
pub async fn all_closed(open: &AtomicUsize, limit: Duration) {
    let deadline = Instant::now() + limit;
    while open.load(Ordering::SeqCst) > 0 {
        assert!(
            Instant::now() < deadline,
            "a fake server connection never ended"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A PostgreSQL backend message: type `kind`, length, `payload`.
pub fn pg_msg(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut m = vec![kind];
    m.extend_from_slice(&(payload.len() as i32 + 4).to_be_bytes());
    m.extend_from_slice(payload);
    m
}

/// A PostgreSQL authentication request (`R`) with `code` alone.
pub fn pg_auth(code: i32) -> Vec<u8> {
    pg_msg(b'R', &code.to_be_bytes())
}

/// Whether `got` holds a whole PostgreSQL message (type, length, body).
pub fn pg_complete(got: &[u8]) -> bool {
    got.len() >= 5 && got.len() > i32::from_be_bytes(got[1..5].try_into().unwrap()) as usize
}

/// Reads one length-prefixed startup-phase message: (length, body).
pub async fn pg_read_startup<S: AsyncRead + Unpin>(s: &mut S) -> io::Result<(i32, Vec<u8>)> {
    let len = s.read_i32().await?;
    if !(8..=10_000).contains(&len) {
        return Err(io::Error::other("bad startup length"));
    }
    let mut body = vec![0u8; len as usize - 4];
    s.read_exact(&mut body).await?;
    Ok((len, body))
}

/// Hands a connection whose startup packet (`len`, `body`) was read on to
/// the real PostgreSQL on 127.0.0.1:5432, until either side closes.
pub async fn pg_proxy<S>(s: &mut S, len: i32, body: &[u8]) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut up = TcpStream::connect("127.0.0.1:5432").await?;
    up.write_all(&len.to_be_bytes()).await?;
    up.write_all(body).await?;
    let _ = tokio::io::copy_bidirectional(s, &mut up).await;
    Ok(())
}

/// The fake MySQL servers' nonce (scramble).
pub const NONCE: &[u8; 20] = b"abcdefghijklmnopqrst";

/// CLIENT_LONG_PASSWORD, LONG_FLAG, CONNECT_WITH_DB, PROTOCOL_41,
/// TRANSACTIONS, SECURE_CONNECTION, MULTI_STATEMENTS, MULTI_RESULTS,
/// PLUGIN_AUTH, PLUGIN_AUTH_LENENC_CLIENT_DATA: what the fakes offer.
pub const MY_CAPS: u32 = 0x002B_A20D;

/// A MySQL packet: length, sequence id `seq`, `payload`.
pub fn my_packet(seq: u8, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut p = vec![len as u8, (len >> 8) as u8, (len >> 16) as u8, seq];
    p.extend_from_slice(payload);
    p
}

/// Reads one MySQL packet: (sequence id, payload).
pub async fn my_read_packet<S: AsyncRead + Unpin>(s: &mut S) -> io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 4];
    s.read_exact(&mut head).await?;
    let len = head[0] as usize | (head[1] as usize) << 8 | (head[2] as usize) << 16;
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).await?;
    Ok((head[3], payload))
}

/// The payload of a MySQL greeting (protocol 10) from server `version`
/// with character set `charset`, capabilities `caps` and the nonce
/// `NONCE`, naming auth plugin `plugin`.
pub fn my_greeting(version: &str, charset: u8, caps: u32, plugin: &str) -> Vec<u8> {
    let mut p = vec![0x0a];
    p.extend_from_slice(version.as_bytes());
    p.push(0);
    p.extend_from_slice(&7u32.to_le_bytes());
    p.extend_from_slice(&NONCE[..8]);
    p.push(0);
    p.extend_from_slice(&(caps as u16).to_le_bytes());
    p.push(charset);
    p.extend_from_slice(&2u16.to_le_bytes());
    p.extend_from_slice(&((caps >> 16) as u16).to_le_bytes());
    p.push(21);
    p.extend_from_slice(&[0; 10]);
    p.extend_from_slice(&NONCE[8..]);
    p.push(0);
    p.extend_from_slice(plugin.as_bytes());
    p.push(0);
    p
}
