//! No database password reaches a server that could read it, and
//! connection settings cannot add settings of their own.
//!
//! Fake servers on 127.0.0.1 (tokio listeners in the test) ask every kind of
//! connection a feed or sink opens for the password in clear text (or for a
//! form a hostile server can read or crack) and record every byte the client
//! sends back; the real PostgreSQL (a SCRAM role, see `scripts/services.sh`)
//! and MariaDB check that passwords full of quotes, backslashes, spaces and
//! `=` still work, through the same guards.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::{
    all_closed, contains, error_faults, fast_poll, listen, my_greeting, my_items_db, my_literal,
    my_packet, my_read_packet, my_root, pg_admin, pg_auth, pg_complete, pg_drop, pg_items_db,
    pg_literal, pg_msg, pg_proxy, pg_read_startup, poll_table, read_records, Kind, Target, MY_CAPS,
    NONCE, SECRET,
};
use backflow_connectors::mysql::{MysqlSource, MysqlSourceConfig};
use backflow_connectors::poll::{PollMode, PollSource, PollSourceConfig};
use backflow_connectors::postgres::{PostgresSource, PostgresSourceConfig};
use backflow_connectors::sink::mysql::{MysqlSink, MysqlSinkConfig};
use backflow_connectors::sink::postgres::{PostgresSink, PostgresSinkConfig};
use backflow_connectors::{ConnectorError, Sink, Source};
use backflow_schemas::Op;
use mysql_async::prelude::Queryable;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A password with every character a connection string treats specially
/// (the round trips on the real servers).
const PASSWORD: &str = "it's a \\secret= \"pass\" word";

/// What a fake server heard after its request, per connection.
#[derive(Clone, Default)]
struct Heard {
    answers: Arc<Mutex<Vec<Vec<u8>>>>,
    /// Connections accepted and not yet finished.
    open: Arc<AtomicUsize>,
    accepted: Arc<AtomicUsize>,
}

impl Heard {
    /// Every answer, once every accepted connection finished (at most 20 s).
    async fn answers(&self) -> Vec<Vec<u8>> {
        all_closed(&self.open, Duration::from_secs(20)).await;
        self.answers.lock().unwrap().clone()
    }
}

/// A fake server whose connections `session` serves, recording what each
/// heard (`None`: nothing to record).
async fn fake<F, Fut>(session: F) -> (u16, Heard)
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = io::Result<Option<Vec<u8>>>> + Send + 'static,
{
    let heard = Heard::default();
    let h = heard.clone();
    let port = listen(heard.open.clone(), move |s| {
        h.accepted.fetch_add(1, Ordering::SeqCst);
        let (h, session) = (h.clone(), session(s));
        async move {
            if let Ok(Some(answer)) = session.await {
                h.answers.lock().unwrap().push(answer);
            }
        }
    })
    .await;
    (port, heard)
}

/// Reads what the client sends until it closes, or, once it sent a whole
/// message (`complete`), answers with `error` and closes.
async fn record(
    s: &mut TcpStream,
    complete: impl Fn(&[u8]) -> bool,
    error: &[u8],
) -> std::io::Result<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => return Ok(got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Ok(Err(e)) if got.is_empty() => return Err(e),
            Ok(Err(_)) => return Ok(got),
        }
        if complete(&got) {
            let _ = s.write_all(error).await;
            return Ok(got);
        }
    }
}

// --------------------------------------------------------------- PostgreSQL

#[derive(Clone, Copy)]
enum PgAsk {
    /// AuthenticationCleartextPassword.
    Cleartext,
    /// AuthenticationMD5Password.
    Md5,
}

/// A fake PostgreSQL server. With `proxy_sql`, connections that are not
/// replication connections go to the real server on 127.0.0.1:5432, so a
/// CDC source gets as far as its replication connection.
async fn fake_pg(ask: PgAsk, proxy_sql: bool) -> (u16, Heard) {
    fake(move |s| pg_session(s, ask, proxy_sql)).await
}

async fn pg_session(
    mut s: TcpStream,
    ask: PgAsk,
    proxy_sql: bool,
) -> std::io::Result<Option<Vec<u8>>> {
    // The startup packet (SSL and GSS encryption requests are declined).
    let (len, body) = loop {
        let (len, body) = pg_read_startup(&mut s).await?;
        let code = i32::from_be_bytes(body[..4].try_into().unwrap());
        if code == 80_877_103 || code == 80_877_104 {
            s.write_all(b"N").await?;
            continue;
        }
        break (len, body);
    };
    let replication = body.split(|b| *b == 0).any(|field| field == b"replication");
    if proxy_sql && !replication {
        pg_proxy(&mut s, len, &body).await?;
        return Ok(None);
    }
    match ask {
        PgAsk::Cleartext => s.write_all(&pg_auth(3)).await?,
        PgAsk::Md5 => {
            s.write_all(&pg_msg(b'R', &[0, 0, 0, 5, 1, 2, 3, 4]))
                .await?
        }
    }
    let error = pg_msg(
        b'E',
        b"SFATAL\0VFATAL\0C28P01\0Mpassword authentication failed\0\0",
    );
    record(&mut s, pg_complete, &error).await.map(Some)
}

fn pg_source_config(
    name: &str,
    port: u16,
    user: &str,
    password: &str,
    db: &str,
) -> PostgresSourceConfig {
    Target::new(port, user, Some(password), db).pg_source(name)
}

fn pg_poll_config(port: u16, user: &str, password: &str, db: &str) -> PollSourceConfig {
    let table = poll_table("items", PollMode::Bulk, None);
    fast_poll(Target::new(port, user, Some(password), db).pg_poll("bf-pw-poll", vec![table]))
}

fn pg_sink_config(port: u16, user: &str, password: &str, db: &str) -> PostgresSinkConfig {
    Target::new(port, user, Some(password), db).pg_sink()
}

/// Opens a `kind` connection to the server at `port`; the error it ends
/// with (none: it connected). (The CDC source's replication connection
/// has a test of its own.)
async fn pg_attempt(kind: Kind, port: u16) -> Option<ConnectorError> {
    let attempt = async {
        match kind {
            Kind::Source => {
                let config = pg_source_config("bf-pw-fake", port, "backflow", SECRET, "gongan");
                PostgresSource::new(config, "330000")
                    .start(None)
                    .await
                    .err()
            }
            Kind::Poll => {
                PollSource::new(pg_poll_config(port, "backflow", SECRET, "gongan"), "330000")
                    .start(None)
                    .await
                    .err()
            }
            Kind::Sink => {
                PostgresSink::new(pg_sink_config(port, "backflow", SECRET, "gongan"), "s")
                    .committed_offsets()
                    .await
                    .err()
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), attempt)
        .await
        .expect("the connection attempt ends")
}

/// What is wrong with how a `kind` connection ended against a fake server
/// that asked `asked` (empty: nothing). The fake must have heard no byte
/// of an answer, the password least of all, and the error must be definite
/// (not retried), name the server and what it asked, and give the fix.
fn judge(
    kind: &str,
    accepted: usize,
    answers: &[Vec<u8>],
    e: Option<&ConnectorError>,
    said: &[&str],
) -> Vec<String> {
    let mut wrong = Vec::new();
    if accepted == 0 {
        wrong.push(format!("{kind}: never connected to the fake server"));
    }
    for a in answers {
        if contains(a, SECRET.as_bytes()) {
            wrong.push(format!("{kind}: sent the password in clear text"));
        }
        if decrypt_with_fake_key(a).as_deref() == Some(SECRET) {
            wrong.push(format!(
                "{kind}: sent the password encrypted with the fake server's own key, which \
                 the fake decrypted"
            ));
        }
        if !a.is_empty() {
            wrong.push(format!("{kind}: answered the request ({} bytes)", a.len()));
        }
    }
    match e {
        None => wrong.push(format!("{kind}: connected to the fake server")),
        Some(e) => wrong.extend(error_faults(kind, e, said)),
    }
    wrong
}

async fn postgres_refuses(ask: PgAsk, asked: &str) {
    let mut wrong = Vec::new();
    for kind in [Kind::Source, Kind::Poll, Kind::Sink] {
        let (port, heard) = fake_pg(ask, false).await;
        let e = pg_attempt(kind, port).await;
        let answers = heard.answers().await;
        let server = format!("PostgreSQL at 127.0.0.1:{port}");
        wrong.extend(judge(
            &format!("{kind:?}"),
            heard.accepted.load(Ordering::SeqCst),
            &answers,
            e.as_ref(),
            &[&server, asked, "scram-sha-256"],
        ));
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[tokio::test]
async fn postgres_connections_send_no_password_to_a_server_asking_for_clear_text() {
    postgres_refuses(PgAsk::Cleartext, "clear text").await;
}

#[tokio::test]
async fn postgres_connections_refuse_md5_authentication() {
    postgres_refuses(PgAsk::Md5, "MD5").await;
}

// Test databases on the real PostgreSQL.

#[tokio::test]
async fn postgres_replication_connection_sends_no_password_to_a_server_asking_for_clear_text() {
    let db = format!("bf_pw_repl_{}", std::process::id());
    pg_items_db(&db, "postgres").await;
    // SQL connections reach the real server (trust on 127.0.0.1); the
    // replication connection meets the fake.
    let (port, heard) = fake_pg(PgAsk::Cleartext, true).await;
    let config = pg_source_config(&db, port, "postgres", SECRET, &db);
    let slot = format!("backflow_{db}");
    let e = tokio::time::timeout(
        Duration::from_secs(60),
        PostgresSource::new(config, "330000").start(None),
    )
    .await
    .expect("start ends")
    .err();
    let answers = heard.answers().await;
    pg_drop(&db, &slot).await;
    let wrong = judge(
        "replication",
        answers.len(),
        &answers,
        e.as_ref(),
        &["clear text", "scram-sha-256"],
    );
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

// ------------------------------------------------------------ MySQL/MariaDB

#[derive(Clone, Copy, Debug)]
enum MyAsk {
    /// An AuthSwitchRequest to mysql_clear_password.
    ClearPassword,
    /// caching_sha2_password full authentication, then the fake's own RSA
    /// public key when the client asks for the server's.
    ServerKey,
}

/// The fake's RSA key pair (2048 bits, made for this test only).
const FAKE_PUBLIC_KEY: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAsOPFcTyav3+8GOxZPmFz
2WR9vcrVbdEvBIBu8gLRXp1dpvC7TgcNbAxRiST4EDLhoTUypLoe0LNodRY792a0
v0/xOCrCMAIYcTgSufxZ+yFojp3j0pOqWlgVB6NWZNd4O5jJpU3z01WK/kuqwTvQ
4fXFg8d/06l5RFCnKOucXTQuXO+rdx2FdbeIdxpG5ZnBRBHahIB/7zYsQ99AzoXz
6P+gModfLmMjR0+wVaLi4b9B/TYx9YPoCs2vWczppkXL++qyqe+vEhNKlOcBqpOq
BB3kGDQjyGDW6V87/Nm+ghHNf9V/JvIGqhH5s8ZGmlbKCFF+hvsS0njLeBXsbXvt
iQIDAQAB
-----END PUBLIC KEY-----
";
const FAKE_MODULUS: &str = "b0e3c5713c9abf7fbc18ec593e6173d9647dbdcad56dd12f04806ef202d15e9d5da6f0bb4e070d6c0c518924f81032e1a13532a4ba1ed0b36875163bf766b4bf4ff1382ac2300218713812b9fc59fb21688e9de3d293aa5a581507a35664d7783b98c9a54df3d3558afe4baac13bd0e1f5c583c77fd3a9794450a728eb9c5d342e5cefab771d8575b788771a46e599c14411da84807fef362c43df40ce85f3e8ffa032875f2e6323474fb055a2e2e1bf41fd3631f583e80acdaf59cce9a645cbfbeab2a9efaf12134a94e701aa93aa041de4183423c860d6e95f3bfcd9be8211cd7fd57f26f206aa11f9b3c6469a56ca08517e86fb12d278cb7815ec6d7bed89";
const FAKE_PRIVATE_EXPONENT: &str = "73fe732e00247c72e75b733b9fa65e9b82eed992b5461ffd5ef7017452d8b731d0d9c9d3becf97c399ddab106d028cfb06affb17a8b225aa4aa88cfdf70bddcbf39625d3697ca5c32015e461c57dbe7f77dac83a943974ba1837221d1512bccb564ea886c233f8b488429cf274bd795f7dbf6edcac3beb4eb40cd75b595fddd563e1c7e68d930ddb6b2d00cadf0d2d4d5389e9ddc6f245808f6a94c190915a184499ca0c4544d1ebcbdc9dd384687949cd365b717b8a614eb27c8aff12ac66828035a683d224d916cc14d225e22d3a9051aaa22ace1f1e1b766ce811d2798098a8f7debad342c64d3345d9c11a83a526499fb7bb9358bb5ba2f1a5041edc8a1";

/// The packets in `bytes`: (sequence id, payload).
fn my_packets(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while bytes.len() >= 4 {
        let len = bytes[0] as usize | (bytes[1] as usize) << 8 | (bytes[2] as usize) << 16;
        if bytes.len() < 4 + len {
            break;
        }
        out.push((bytes[3], bytes[4..4 + len].to_vec()));
        bytes = &bytes[4 + len..];
    }
    out
}

/// A fake MySQL server.
async fn fake_mysql(ask: MyAsk) -> (u16, Heard) {
    fake(move |s| async move { mysql_session(s, ask).await.map(Some) }).await
}

async fn mysql_session(mut s: TcpStream, ask: MyAsk) -> std::io::Result<Vec<u8>> {
    let plugin = match ask {
        MyAsk::ClearPassword => "mysql_native_password",
        MyAsk::ServerKey => "caching_sha2_password",
    };
    let greeting = my_greeting("8.0.36-fake", 0xff, MY_CAPS, plugin);
    s.write_all(&my_packet(0, &greeting)).await?;
    let (seq, _response) = my_read_packet(&mut s).await?;
    let mut seq = seq.wrapping_add(1);
    match ask {
        MyAsk::ClearPassword => {
            s.write_all(&my_packet(seq, b"\xfemysql_clear_password\0"))
                .await?
        }
        MyAsk::ServerKey => s.write_all(&my_packet(seq, &[0x01, 0x04])).await?,
    }
    seq = seq.wrapping_add(1);
    let mut error = vec![0xff];
    error.extend_from_slice(&1045u16.to_le_bytes());
    error.extend_from_slice(b"#28000Access denied");
    let mut heard = Vec::new();
    if let MyAsk::ServerKey = ask {
        // A client that asks for the server's key (0x02) gets the fake's.
        let first = record(&mut s, |got| !my_packets(got).is_empty(), &[]).await?;
        heard.extend_from_slice(&first);
        if my_packets(&first).first().map(|p| p.1.as_slice()) == Some(&[0x02][..]) {
            let mut key = vec![0x01];
            key.extend_from_slice(FAKE_PUBLIC_KEY.as_bytes());
            s.write_all(&my_packet(seq.wrapping_add(1), &key)).await?;
            seq = seq.wrapping_add(2);
        } else {
            return Ok(heard);
        }
    }
    let rest = record(
        &mut s,
        |got| !my_packets(got).is_empty(),
        &my_packet(seq.wrapping_add(1), &error),
    )
    .await?;
    heard.extend_from_slice(&rest);
    Ok(heard)
}

/// What the fake reads in what it heard: the password the client
/// encrypted with the fake's key (OAEP with SHA-1, XORed with the nonce).
fn decrypt_with_fake_key(heard: &[u8]) -> Option<String> {
    use num_bigint::BigUint;
    use sha1::{Digest, Sha1};
    let n = BigUint::parse_bytes(FAKE_MODULUS.as_bytes(), 16).unwrap();
    let d = BigUint::parse_bytes(FAKE_PRIVATE_EXPONENT.as_bytes(), 16).unwrap();
    let k = 256;
    let mgf1 = |seed: &[u8], len: usize| {
        let mut out = Vec::new();
        let mut counter = 0u32;
        while out.len() < len {
            out.extend_from_slice(&Sha1::digest([seed, &counter.to_be_bytes()].concat()));
            counter += 1;
        }
        out.truncate(len);
        out
    };
    my_packets(heard).into_iter().find_map(|(_, c)| {
        if c.len() != k {
            return None;
        }
        let m = BigUint::from_bytes_be(&c).modpow(&d, &n).to_bytes_be();
        let mut em = vec![0u8; k - m.len()];
        em.extend_from_slice(&m);
        let (masked_seed, masked_db) = em[1..].split_at(20);
        let seed: Vec<u8> = masked_seed
            .iter()
            .zip(mgf1(masked_db, 20))
            .map(|(a, b)| a ^ b)
            .collect();
        let db: Vec<u8> = masked_db
            .iter()
            .zip(mgf1(&seed, masked_db.len()))
            .map(|(a, b)| a ^ b)
            .collect();
        let start = 20 + db[20..].iter().position(|b| *b == 1)? + 1;
        let plain: Vec<u8> = db[start..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ NONCE[i % NONCE.len()])
            .take_while(|b| *b != 0)
            .collect();
        String::from_utf8(plain).ok()
    })
}

fn my_source_config(
    name: &str,
    port: u16,
    user: &str,
    password: &str,
    db: &str,
) -> MysqlSourceConfig {
    Target::new(port, user, Some(password), db).my_source(name)
}

fn my_poll_config(port: u16, user: &str, password: &str, db: &str) -> PollSourceConfig {
    let table = poll_table("items", PollMode::Bulk, None);
    fast_poll(Target::new(port, user, Some(password), db).my_poll("bf-pw-poll", vec![table]))
}

fn my_sink_config(port: u16, user: &str, password: &str, db: &str) -> MysqlSinkConfig {
    Target::new(port, user, Some(password), db).my_sink()
}

async fn my_attempt(kind: Kind, port: u16) -> Option<ConnectorError> {
    let attempt = async {
        match kind {
            Kind::Source => {
                let config = my_source_config("bf-pw-fake", port, "backflow", SECRET, "gongan");
                MysqlSource::new(config, "330000").start(None).await.err()
            }
            Kind::Poll => {
                PollSource::new(my_poll_config(port, "backflow", SECRET, "gongan"), "330000")
                    .start(None)
                    .await
                    .err()
            }
            Kind::Sink => MysqlSink::new(my_sink_config(port, "backflow", SECRET, "gongan"), "s")
                .committed_offsets()
                .await
                .err(),
        }
    };
    tokio::time::timeout(Duration::from_secs(30), attempt)
        .await
        .expect("the connection attempt ends")
}

async fn mysql_refuses(ask: MyAsk, asked: &str) {
    let mut wrong = Vec::new();
    for kind in [Kind::Source, Kind::Poll, Kind::Sink] {
        let (port, heard) = fake_mysql(ask).await;
        let e = my_attempt(kind, port).await;
        let answers = heard.answers().await;
        let server = format!("MySQL at 127.0.0.1:{port}");
        wrong.extend(judge(
            &format!("{kind:?}"),
            heard.accepted.load(Ordering::SeqCst),
            &answers,
            e.as_ref(),
            &[&server, asked, "mysql_native_password"],
        ));
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[tokio::test]
async fn mysql_connections_send_no_password_to_a_server_switching_to_clear_text() {
    mysql_refuses(MyAsk::ClearPassword, "mysql_clear_password").await;
}

#[tokio::test]
async fn mysql_connections_send_no_password_to_a_server_sending_its_own_rsa_key() {
    mysql_refuses(MyAsk::ServerKey, "public key the server itself sends").await;
}

/// The fake can read what it is sent: a client that encrypts the password
/// with the key the server sends hands it over (what the guard prevents).
#[tokio::test]
async fn mysql_fake_server_reads_a_password_encrypted_with_its_key() {
    use num_bigint::BigUint;
    let (port, heard) = fake_mysql(MyAsk::ServerKey).await;
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    my_read_packet(&mut s).await.unwrap();
    s.write_all(&my_packet(1, b"response")).await.unwrap();
    assert_eq!(my_read_packet(&mut s).await.unwrap().1, vec![0x01, 0x04]);
    s.write_all(&my_packet(3, &[0x02])).await.unwrap();
    let (_, key) = my_read_packet(&mut s).await.unwrap();
    assert!(key[1..].starts_with(b"-----BEGIN PUBLIC KEY-----"));
    // What a client does without TLS: password + NUL, XOR nonce, RSA-OAEP.
    let n = BigUint::parse_bytes(FAKE_MODULUS.as_bytes(), 16).unwrap();
    let mut msg: Vec<u8> = SECRET.bytes().chain([0]).collect();
    for (i, b) in msg.iter_mut().enumerate() {
        *b ^= NONCE[i % NONCE.len()];
    }
    let c = oaep_encrypt(&msg, &n);
    s.write_all(&my_packet(5, &c)).await.unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest).await;
    let answers = heard.answers().await;
    assert_eq!(
        decrypt_with_fake_key(&answers[0]).as_deref(),
        Some(SECRET),
        "the fake server decrypts the password"
    );
}

/// RSA-OAEP (SHA-1, empty label) with public exponent 65537 and a fixed
/// seed (a test of the test).
fn oaep_encrypt(msg: &[u8], n: &num_bigint::BigUint) -> Vec<u8> {
    use sha1::{Digest, Sha1};
    let k = 256;
    let mgf1 = |seed: &[u8], len: usize| {
        let mut out = Vec::new();
        let mut counter = 0u32;
        while out.len() < len {
            out.extend_from_slice(&Sha1::digest([seed, &counter.to_be_bytes()].concat()));
            counter += 1;
        }
        out.truncate(len);
        out
    };
    let mut db = Sha1::digest([]).to_vec();
    db.resize(k - msg.len() - 2 - 20, 0);
    db.push(1);
    db.extend_from_slice(msg);
    let seed = [7u8; 20];
    let masked_db: Vec<u8> = db
        .iter()
        .zip(mgf1(&seed, db.len()))
        .map(|(a, b)| a ^ b)
        .collect();
    let masked_seed: Vec<u8> = seed
        .iter()
        .zip(mgf1(&masked_db, 20))
        .map(|(a, b)| a ^ b)
        .collect();
    let mut em = vec![0u8];
    em.extend(masked_seed);
    em.extend(masked_db);
    let c = num_bigint::BigUint::from_bytes_be(&em)
        .modpow(&num_bigint::BigUint::from(65_537u32), n)
        .to_bytes_be();
    let mut out = vec![0u8; k - c.len()];
    out.extend(c);
    out
}

// ----------------------------------------- round trips on the real servers

/// The SCRAM test role (`scripts/services.sh` puts `scram-sha-256` lines
/// for it in pg_hba.conf before the trust lines).
const SCRAM_ROLE: &str = "bf_scram";

/// `bf_scram` with `PASSWORD` stored as SCRAM; checks that the server
/// really asks this role for it.
async fn scram_role() {
    let admin = pg_admin("postgres").await;
    admin
        .batch_execute(&format!(
            "SET password_encryption = 'scram-sha-256';
             DO $$ BEGIN CREATE ROLE {SCRAM_ROLE}; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
             ALTER ROLE {SCRAM_ROLE} LOGIN REPLICATION PASSWORD {};",
            pg_literal(PASSWORD)
        ))
        .await
        .unwrap();
    let mut c = tokio_postgres::Config::new();
    c.host("127.0.0.1")
        .port(5432)
        .user(SCRAM_ROLE)
        .password("not the password")
        .dbname("postgres");
    assert!(
        c.connect(tokio_postgres::NoTls).await.is_err(),
        "PostgreSQL lets {SCRAM_ROLE} in without its password: pg_hba.conf lacks the \
         scram-sha-256 lines for it (run scripts/services.sh up)"
    );
}

#[tokio::test]
async fn postgres_connections_authenticate_with_scram_and_a_password_full_of_quotes() {
    scram_role().await;
    let db = format!("bf_pw_scram_{}", std::process::id());
    let admin = pg_items_db(&db, SCRAM_ROLE).await;
    let slot = format!("backflow_{db}");

    // CDC: the SQL connection and the replication connection (through the
    // relay, a password being set).
    let mut source = PostgresSource::new(
        pg_source_config(&db, 5432, SCRAM_ROLE, PASSWORD, &db),
        "330000",
    );
    source.start(None).await.expect("the CDC source connects");
    let snapshot = read_records(&mut source, 2).await;
    assert_eq!(snapshot, vec![(Op::Read, 1), (Op::Read, 2)]);
    admin
        .batch_execute("INSERT INTO items VALUES (3, 'three')")
        .await
        .unwrap();
    assert_eq!(read_records(&mut source, 1).await, vec![(Op::Create, 3)]);
    source.shutdown().await.unwrap();

    // Polling.
    let mut poll = PollSource::new(pg_poll_config(5432, SCRAM_ROLE, PASSWORD, &db), "330000");
    poll.start(None).await.expect("the polling source connects");
    let mut ids: Vec<i64> = read_records(&mut poll, 3)
        .await
        .iter()
        .map(|r| r.1)
        .collect();
    ids.sort();
    assert_eq!(ids, vec![1, 2, 3]);
    poll.shutdown().await.unwrap();

    // Sink: it creates its offsets table.
    let mut sink = PostgresSink::new(pg_sink_config(5432, SCRAM_ROLE, PASSWORD, &db), "s");
    assert!(sink
        .committed_offsets()
        .await
        .expect("the sink connects")
        .is_empty());
    let owner: String = admin
        .query_one(
            "SELECT tableowner::text FROM pg_tables WHERE schemaname = 'bf_sink' AND tablename = '_backflow_offsets'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(owner, SCRAM_ROLE);
    drop(admin);
    pg_drop(&db, &slot).await;
}

/// A database name that, pasted into a connection string, would log in as
/// another user: it is a database name and nothing else.
#[tokio::test]
async fn postgres_source_database_name_cannot_inject_connection_parameters() {
    // A role of its own (trust on 127.0.0.1, so the password is not what
    // is tested here; it has no quote, so a connection string parses).
    let role = "bf_inject";
    pg_admin("postgres")
        .await
        .batch_execute(&format!(
            "DO $$ BEGIN CREATE ROLE {role}; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
             ALTER ROLE {role} LOGIN REPLICATION PASSWORD 'plain'"
        ))
        .await
        .unwrap();
    let plain = format!("bf_pw_inject_{}", std::process::id());
    let crafted = format!("{plain} user=postgres");
    // Both exist: a connection string would reach `plain` as postgres,
    // the right connection reaches `crafted` as bf_inject.
    let plain_db = pg_items_db(&plain, "postgres").await;
    let crafted_db = pg_items_db(&crafted, role).await;
    let config = pg_source_config(&crafted, 5432, role, "plain", &crafted);
    let mut source = PostgresSource::new(config, "330000");
    let started = source.start(None).await;
    let _ = source.shutdown().await;
    let publication = format!(
        "backflow_{}",
        crafted.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
    );
    let owner = |c: tokio_postgres::Client| {
        let publication = publication.clone();
        async move {
            c.query_opt(
                "SELECT pubowner::regrole::text FROM pg_publication WHERE pubname = $1",
                &[&publication],
            )
            .await
            .unwrap()
            .map(|r| r.get::<_, String>(0))
        }
    };
    let in_plain = owner(plain_db).await;
    let in_crafted = owner(crafted_db).await;
    // Slot and publication share the name.
    pg_drop(&plain, &publication).await;
    pg_drop(&crafted, &publication).await;
    assert_eq!(
        in_plain, None,
        "the database name logged in to {plain} as another user ({in_plain:?})"
    );
    started.expect("the source connects to the database with the crafted name");
    assert_eq!(in_crafted.as_deref(), Some(role));
}

#[tokio::test]
async fn mysql_connections_authenticate_through_the_guard_with_a_password_full_of_quotes() {
    let user = "bf_pw";
    let db = format!("bf_pw_my_{}", std::process::id());
    let mut root = my_root().await;
    for host in ["127.0.0.1", "localhost", "%"] {
        root.query_drop(format!(
            "CREATE USER IF NOT EXISTS '{user}'@'{host}' IDENTIFIED BY {pw};
             ALTER USER '{user}'@'{host}' IDENTIFIED BY {pw};
             GRANT ALL PRIVILEGES ON *.* TO '{user}'@'{host}'",
            pw = my_literal(PASSWORD)
        ))
        .await
        .unwrap();
    }
    my_items_db(&mut root, &db).await;

    // Binlog source: snapshot, then a streamed insert (through the relay).
    let mut source = MysqlSource::new(
        my_source_config(&db.replace('_', "-"), 3306, user, PASSWORD, &db),
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

    let mut poll = PollSource::new(my_poll_config(3306, user, PASSWORD, &db), "330000");
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
    let mut sink = MysqlSink::new(my_sink_config(3306, user, PASSWORD, &sink_db), "s");
    assert!(sink
        .committed_offsets()
        .await
        .expect("the sink connects")
        .is_empty());
    let tables: Vec<String> = root
        .query(format!(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = '{sink_db}'"
        ))
        .await
        .unwrap();
    assert_eq!(tables, vec!["_backflow_offsets".to_owned()]);
    root.query_drop(format!("DROP DATABASE {db}; DROP DATABASE {sink_db}"))
        .await
        .unwrap();
}
