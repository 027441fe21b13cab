//! Attacks on the TLS of database connections (`sslmode`, `ssl_ca_file`)
//! and on the password guard it runs under, by hostile fake servers (tokio
//! listeners, some with a real TLS stack) and men in the middle.
//!
//! Each test is one attack and asserts that it is refused: no password
//! (nor hash) reaches the server, the connection ends within the login
//! timeout, and the error names the cause. Several were written against an
//! earlier build and failed there: a clear-text request after
//! AuthenticationOk on the replication connection, caching_sha2's full
//! authentication with a trailing byte, a switch to a plugin the driver
//! panics on, a server silent mid-handshake, a CA "file" that never ends.
//!
//! The fake servers that must pass `verify-full` hold `~/.cache/backflow/db-tls`'s
//! server certificate (IP 127.0.0.1, signed by `ca.crt`): a hostile server
//! that holds a valid certificate is exactly the case the module docs name
//! ("a password in clear inside TLS reaches the certificate's holder").

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use crate::support::{
    all_closed, contains, error_faults, listen, my_greeting, my_packet, my_read_packet, pg_admin,
    pg_auth, pg_complete, pg_drop, pg_fresh_db, pg_msg, pg_proxy, pg_read_startup, poll_table,
    tls_file, Kind, Target, MY_CAPS, NONCE, SECRET,
};
use backflow_connectors::mysql::MysqlSource;
use backflow_connectors::poll::{PollMode, PollSource};
use backflow_connectors::postgres::PostgresSource;
use backflow_connectors::sink::mysql::MysqlSink;
use backflow_connectors::sink::postgres::PostgresSink;
use backflow_connectors::tls::{DbTls, SslMode};
use backflow_connectors::{ConnectorError, ErrorKind, Sink, Source};
use openssl::ssl::{Ssl, SslAcceptor, SslFiletype, SslMethod};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_openssl::SslStream;

const USER: &str = "backflow_attacked";
const DB: &str = "gongan_attacked";

fn ca() -> Option<String> {
    Some(tls_file("ca.crt"))
}

// ------------------------------------------------------------ fake servers

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
type BoxIo = Box<dyn Io>;

/// What one connection to a fake server carried.
#[derive(Default, Debug)]
struct Session {
    /// Every byte the client put on the wire (before any decryption).
    wire: Vec<u8>,
    /// What the client sent (in clear, or decrypted) after the fake's
    /// request: must stay empty when the request is refused.
    answer: Vec<u8>,
    /// The client's login (startup packet / login packet), decrypted.
    login: Vec<u8>,
    /// The client asked for TLS first.
    asked_tls: bool,
}

type Shared = Arc<Mutex<Session>>;

#[derive(Clone, Default)]
struct Fake {
    sessions: Arc<Mutex<Vec<Shared>>>,
    open: Arc<AtomicUsize>,
}

impl Fake {
    /// The sessions, once every connection ended (30 s at most).
    async fn done(&self) -> Vec<Shared> {
        all_closed(&self.open, Duration::from_secs(30)).await;
        self.sessions.lock().unwrap().clone()
    }
}

/// A TCP stream that records what the client sent.
struct Tap<S> {
    inner: S,
    log: Shared,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tap<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            let new = buf.filled()[before..].to_vec();
            self.log.lock().unwrap().wire.extend_from_slice(&new);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tap<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A fake server on 127.0.0.1: `handler` gets each connection (tapped) and
/// its session record.
async fn serve<F, Fut>(handler: F) -> (u16, Fake)
where
    F: Fn(BoxIo, Shared) -> Fut + Send + 'static,
    Fut: Future<Output = io::Result<()>> + Send + 'static,
{
    let fake = Fake::default();
    let f = fake.clone();
    let port = listen(fake.open.clone(), move |s| {
        let session = Shared::default();
        f.sessions.lock().unwrap().push(session.clone());
        let tap = Tap {
            inner: s,
            log: session.clone(),
        };
        let served = handler(Box::new(tap), session);
        async move {
            let _ = served.await;
        }
    })
    .await;
    (port, fake)
}

#[derive(Clone, Copy, Debug)]
enum Cert {
    /// `~/.cache/backflow/db-tls/server.crt`: IP 127.0.0.1, signed by `ca.crt`.
    Trusted,
    /// Self-signed, IP 127.0.0.1: chains to nothing the client trusts.
    SelfSigned,
}

fn acceptor(cert: Cert) -> SslAcceptor {
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).unwrap();
    match cert {
        Cert::Trusted => {
            b.set_certificate_chain_file(tls_file("server.crt"))
                .unwrap();
            b.set_private_key_file(tls_file("server.key"), SslFiletype::PEM)
                .unwrap();
        }
        Cert::SelfSigned => {
            use openssl::asn1::Asn1Time;
            use openssl::bn::BigNum;
            use openssl::ec::{EcGroup, EcKey};
            use openssl::hash::MessageDigest;
            use openssl::nid::Nid;
            use openssl::pkey::PKey;
            use openssl::x509::extension::SubjectAlternativeName;
            use openssl::x509::{X509Builder, X509NameBuilder};
            let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
            let key = PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap();
            let mut name = X509NameBuilder::new().unwrap();
            name.append_entry_by_text("CN", "127.0.0.1").unwrap();
            let name = name.build();
            let mut x = X509Builder::new().unwrap();
            x.set_version(2).unwrap();
            x.set_serial_number(&BigNum::from_u32(7).unwrap().to_asn1_integer().unwrap())
                .unwrap();
            x.set_subject_name(&name).unwrap();
            x.set_issuer_name(&name).unwrap();
            x.set_pubkey(&key).unwrap();
            x.set_not_before(&Asn1Time::days_from_now(0).unwrap())
                .unwrap();
            x.set_not_after(&Asn1Time::days_from_now(2).unwrap())
                .unwrap();
            let san = SubjectAlternativeName::new()
                .ip("127.0.0.1")
                .dns("localhost")
                .build(&x.x509v3_context(None, None))
                .unwrap();
            x.append_extension(san).unwrap();
            x.sign(&key, MessageDigest::sha256()).unwrap();
            b.set_certificate(&x.build()).unwrap();
            b.set_private_key(&key).unwrap();
        }
    }
    b.build()
}

async fn tls_accept(acceptor: &SslAcceptor, s: BoxIo) -> io::Result<BoxIo> {
    let ssl = Ssl::new(acceptor.context()).map_err(io::Error::other)?;
    let mut t = SslStream::new(ssl, s).map_err(io::Error::other)?;
    Pin::new(&mut t).accept().await.map_err(io::Error::other)?;
    Ok(Box::new(t))
}

/// Reads until the client closes, `complete` holds, or 5 s pass quietly.
async fn read_until(s: &mut BoxIo, complete: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => return got,
        }
        if complete(&got) {
            return got;
        }
    }
}

// -------------------------------------------------------------- PostgreSQL

const SSL_REQUEST: i32 = 80_877_103;

fn is_ssl_request(body: &[u8]) -> bool {
    body.len() == 4 && i32::from_be_bytes(body[..4].try_into().unwrap()) == SSL_REQUEST
}

/// `DB` on 127.0.0.1:`port` as `USER` with the password `SECRET`, with
/// `sslmode` `mode` and `ssl_ca_file` `ca`.
fn target(port: u16, mode: SslMode, ca: Option<String>) -> Target {
    Target {
        mode,
        ca,
        ..Target::new(port, USER, Some(SECRET), DB)
    }
}

/// Opens a `kind` connection to PostgreSQL at `t`: `Err` when it did not
/// end within `limit`, else the error it ended with (none: connected).
async fn pg_attempt(kind: Kind, t: &Target, limit: Duration) -> Result<Option<ConnectorError>, ()> {
    let attempt = async {
        match kind {
            Kind::Source => PostgresSource::new(t.pg_source("bf-attack"), "330000")
                .start(None)
                .await
                .err(),
            Kind::Poll => {
                let c = t.pg_poll("bf-attack", vec![poll_table("items", PollMode::Bulk, None)]);
                PollSource::new(c, "330000").start(None).await.err()
            }
            Kind::Sink => PostgresSink::new(t.pg_sink(), "s")
                .committed_offsets()
                .await
                .err(),
        }
    };
    tokio::time::timeout(limit, attempt).await.map_err(|_| ())
}

/// What is wrong with a refused attempt: connected, not definite, or an
/// error without `says`.
fn refused_saying(what: &str, e: &Option<ConnectorError>, says: &[&str]) -> Vec<String> {
    match e {
        None => vec![format!("{what}: connected to the hostile server")],
        Some(e) => error_faults(what, e, says),
    }
}

/// What a session gave away before a certificate was accepted: any byte
/// of the login (user, database, password) on the wire.
fn gave_away(what: &str, s: &Session) -> Vec<String> {
    let mut wrong = Vec::new();
    for (name, secret) in [("user name", USER), ("database", DB), ("password", SECRET)] {
        if contains(&s.wire, secret.as_bytes()) {
            wrong.push(format!("{what}: the {name} is on the wire in clear"));
        }
    }
    if !s.login.is_empty() || !s.answer.is_empty() {
        wrong.push(format!(
            "{what}: the client sent its login through a TLS session it should have refused: {:?}",
            String::from_utf8_lossy(&s.login)
        ));
    }
    wrong
}

/// A PostgreSQL fake that answers SSLRequest with `S`, makes the handshake
/// with `cert`, and records anything the client says inside.
async fn pg_tls_fake(cert: Cert) -> (u16, Fake) {
    let acceptor = Arc::new(acceptor(cert));
    serve(move |mut s, session| {
        let acceptor = acceptor.clone();
        async move {
            let (_, body) = pg_read_startup(&mut s).await?;
            if !is_ssl_request(&body) {
                return Ok(());
            }
            session.lock().unwrap().asked_tls = true;
            s.write_all(b"S").await?;
            let mut s = tls_accept(&acceptor, s).await?;
            let login = read_until(&mut s, |_| false).await;
            session.lock().unwrap().login = login;
            Ok(())
        }
    })
    .await
}

/// Under verify-full and verify-ca, a certificate that does not chain to
/// `ssl_ca_file` or (verify-full) does not name the host ends the
/// connection inside the handshake: the server gets the SSLRequest and a
/// ClientHello, never a byte of the login.
#[tokio::test]
async fn postgres_untrusted_or_misnamed_certificate_gets_no_byte_of_the_login() {
    let mut wrong = Vec::new();
    for (cert, mode, host) in [
        (Cert::SelfSigned, SslMode::VerifyFull, "127.0.0.1"),
        (Cert::SelfSigned, SslMode::VerifyCa, "127.0.0.1"),
        // server.crt names IP 127.0.0.1, not "localhost".
        (Cert::Trusted, SslMode::VerifyFull, "localhost"),
    ] {
        for kind in [Kind::Source, Kind::Poll, Kind::Sink] {
            let what = format!("{kind:?} {cert:?} {mode:?} {host}");
            let (port, fake) = pg_tls_fake(cert).await;
            let mut t = target(port, mode, ca());
            t.host = host.into();
            let e = pg_attempt(kind, &t, Duration::from_secs(30))
                .await
                .expect("the attempt ends");
            wrong.extend(refused_saying(&what, &e, &["certificate"]));
            for s in fake.done().await {
                let s = s.lock().unwrap();
                if !s.asked_tls {
                    wrong.push(format!("{what}: no SSLRequest first"));
                }
                wrong.extend(gave_away(&what, &s));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// SSLRequest answered with `E` (an error, as pre-TLS servers do) or any
/// byte but `S`/`N`: refused, and nothing more is sent (no startup packet
/// in clear, the downgrade libpq's `sslmode=require` also refuses).
#[tokio::test]
async fn postgres_sslrequest_answered_with_e_or_garbage_is_refused_and_nothing_more_is_sent() {
    let mut wrong = Vec::new();
    let error = pg_msg(b'E', b"SFATAL\0C08P01\0Munsupported frontend protocol\0\0");
    for answer in [error, b"X".to_vec(), b"s".to_vec()] {
        for kind in [Kind::Poll, Kind::Sink] {
            let what = format!(
                "{kind:?} answer {:?}",
                String::from_utf8_lossy(&answer[..1])
            );
            let a = answer.clone();
            let (port, fake) = serve(move |mut s, session| {
                let a = a.clone();
                async move {
                    let (_, body) = pg_read_startup(&mut s).await?;
                    session.lock().unwrap().asked_tls = is_ssl_request(&body);
                    s.write_all(&a).await?;
                    let rest = read_until(&mut s, |_| false).await;
                    session.lock().unwrap().answer = rest;
                    Ok(())
                }
            })
            .await;
            let e = pg_attempt(
                kind,
                &target(port, SslMode::Require, None),
                Duration::from_secs(30),
            )
            .await
            .expect("the attempt ends");
            wrong.extend(refused_saying(&what, &e, &[]));
            for s in fake.done().await {
                let s = s.lock().unwrap();
                if !s.asked_tls {
                    wrong.push(format!("{what}: no SSLRequest first"));
                }
                wrong.extend(gave_away(&what, &s));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// CVE-2021-23222: a man in the middle answers `S` and, in the same
/// segment, plaintext messages (AuthenticationOk, ReadyForQuery) hoping
/// they are read as the protected session's. They are fed to the TLS
/// handshake, which fails; the connection never proceeds.
#[tokio::test]
async fn postgres_plaintext_injected_after_s_never_counts_as_the_protected_session() {
    let mut wrong = Vec::new();
    for mode in [SslMode::Require, SslMode::VerifyFull] {
        for kind in [Kind::Poll, Kind::Sink] {
            let what = format!("{kind:?} {mode:?}");
            let acceptor = Arc::new(acceptor(Cert::Trusted));
            let (port, fake) = serve(move |mut s, session| {
                let acceptor = acceptor.clone();
                async move {
                    let (_, body) = pg_read_startup(&mut s).await?;
                    session.lock().unwrap().asked_tls = is_ssl_request(&body);
                    let mut injected = b"S".to_vec();
                    injected.extend(pg_auth(0));
                    injected.extend(pg_msg(b'S', b"server_version\x0015\0"));
                    injected.extend(pg_msg(b'K', &[0, 0, 0, 1, 0, 0, 0, 2]));
                    injected.extend(pg_msg(b'Z', b"I"));
                    s.write_all(&injected).await?;
                    // Then the real handshake, in case the client still
                    // makes one.
                    if let Ok(mut s) = tls_accept(&acceptor, s).await {
                        let login = read_until(&mut s, |_| false).await;
                        session.lock().unwrap().login = login;
                    }
                    Ok(())
                }
            })
            .await;
            let e = pg_attempt(kind, &target(port, mode, ca()), Duration::from_secs(30))
                .await
                .expect("the attempt ends");
            wrong.extend(refused_saying(&what, &e, &["TLS"]));
            for s in fake.done().await {
                wrong.extend(gave_away(&what, &s.lock().unwrap()));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// `require` encrypts: the login crosses the wire only inside TLS (the
/// fake, holding a self-signed certificate, reads it decrypted), and the
/// guard still refuses a clear-text password request made inside TLS.
#[tokio::test]
async fn postgres_require_puts_no_login_byte_in_clear_and_the_guard_holds_inside_tls() {
    let mut wrong = Vec::new();
    for (ask, says) in [(3, "clear text"), (5, "MD5")] {
        for kind in [Kind::Source, Kind::Poll, Kind::Sink] {
            let what = format!("{kind:?} R{ask}");
            let acceptor = Arc::new(acceptor(Cert::SelfSigned));
            let (port, fake) = serve(move |mut s, session| {
                let acceptor = acceptor.clone();
                async move {
                    let (_, body) = pg_read_startup(&mut s).await?;
                    if !is_ssl_request(&body) {
                        return Ok(());
                    }
                    session.lock().unwrap().asked_tls = true;
                    s.write_all(b"S").await?;
                    let mut s = tls_accept(&acceptor, s).await?;
                    let (_, startup) = pg_read_startup(&mut s).await?;
                    let request = if ask == 5 {
                        pg_msg(b'R', &[0, 0, 0, 5, 1, 2, 3, 4])
                    } else {
                        pg_auth(ask)
                    };
                    s.write_all(&request).await?;
                    let rest = read_until(&mut s, pg_complete).await;
                    let mut g = session.lock().unwrap();
                    g.login = startup;
                    g.answer = rest;
                    Ok(())
                }
            })
            .await;
            let e = pg_attempt(
                kind,
                &target(port, SslMode::Require, None),
                Duration::from_secs(30),
            )
            .await
            .expect("the attempt ends");
            wrong.extend(refused_saying(&what, &e, &[says]));
            let sessions = fake.done().await;
            if sessions.is_empty() {
                wrong.push(format!("{what}: never connected"));
            }
            for s in sessions {
                let s = s.lock().unwrap();
                if !s.asked_tls {
                    wrong.push(format!("{what}: no SSLRequest (clear text)"));
                }
                if !contains(&s.login, USER.as_bytes()) {
                    wrong.push(format!(
                        "{what}: the startup packet was not read inside TLS"
                    ));
                }
                if contains(&s.wire, USER.as_bytes()) || contains(&s.wire, DB.as_bytes()) {
                    wrong.push(format!("{what}: the login crossed the wire in clear"));
                }
                if !s.answer.is_empty() {
                    wrong.push(format!(
                        "{what}: answered a refused request inside TLS ({} bytes{})",
                        s.answer.len(),
                        if contains(&s.answer, SECRET.as_bytes()) {
                            ", the password among them"
                        } else {
                            ""
                        }
                    ));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// A Unix-socket host never leaves the machine: as in libpq, no TLS is
/// attempted there whatever `sslmode` says, and the password guard still
/// refuses a clear-text request on it.
#[tokio::test]
async fn postgres_unix_socket_host_with_sslmode_is_not_encrypted_but_still_guarded() {
    let dir = std::env::temp_dir().join(format!("bf-attack-sock-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let port = 5999;
    let listener = tokio::net::UnixListener::bind(dir.join(format!(".s.PGSQL.{port}"))).unwrap();
    /// Per connection: whether it was TLS, and its first bytes.
    type Firsts = Arc<Mutex<Vec<(bool, Vec<u8>)>>>;
    let firsts: Firsts = Arc::default();
    let f = firsts.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let f = f.clone();
            tokio::spawn(async move {
                let mut s: BoxIo = Box::new(s);
                let Ok((_, body)) = pg_read_startup(&mut s).await else {
                    return;
                };
                let ssl = is_ssl_request(&body);
                if !ssl {
                    let _ = s.write_all(&pg_auth(3)).await;
                }
                let rest = read_until(&mut s, pg_complete).await;
                f.lock().unwrap().push((ssl, rest));
            });
        }
    });
    let mut wrong = Vec::new();
    for kind in [Kind::Poll, Kind::Sink] {
        let mut t = target(port, SslMode::VerifyFull, ca());
        t.host = dir.to_str().unwrap().to_owned();
        let e = pg_attempt(kind, &t, Duration::from_secs(30))
            .await
            .expect("the attempt ends");
        wrong.extend(refused_saying(&format!("{kind:?}"), &e, &["clear text"]));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (ssl, rest) in firsts.lock().unwrap().iter() {
        if *ssl {
            wrong.push("an SSLRequest over a Unix socket".into());
        }
        if !rest.is_empty() {
            wrong.push(format!("answered the clear-text request: {rest:?}"));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

// Real PostgreSQL, for the CDC source's SQL connection.

async fn pg_items_db(name: &str) {
    pg_fresh_db(name, "postgres").await;
    pg_admin(name)
        .await
        .batch_execute(
            "CREATE TABLE items (id bigint PRIMARY KEY, label text NOT NULL);
             INSERT INTO items VALUES (1, 'one');",
        )
        .await
        .unwrap();
}

/// The CDC source's replication connection (pgwire-replication behind the
/// relay): the server says AuthenticationOk, then asks for the password in
/// clear text. The guard stops reading at AuthenticationOk, but
/// pgwire-replication keeps answering authentication requests until
/// ReadyForQuery, so it sends the password.
#[tokio::test]
async fn postgres_replication_cleartext_request_after_authentication_ok_gets_no_password() {
    let mut wrong = Vec::new();
    for mode in [SslMode::Disable, SslMode::VerifyFull] {
        let db = format!(
            "bf_attack_repl_{}_{}",
            std::process::id(),
            mode.as_str().replace('-', "_")
        );
        pg_items_db(&db).await;
        let acceptor = Arc::new(acceptor(Cert::Trusted));
        let (port, fake) = serve(move |mut s, session| {
            let acceptor = acceptor.clone();
            async move {
                let (len, body) = loop {
                    let (len, body) = pg_read_startup(&mut s).await?;
                    if is_ssl_request(&body) {
                        session.lock().unwrap().asked_tls = true;
                        s.write_all(b"S").await?;
                        s = tls_accept(&acceptor, s).await?;
                        continue;
                    }
                    break (len, body);
                };
                if !body.split(|b| *b == 0).any(|f| f == b"replication") {
                    // SQL connections: to the real server (trust for
                    // postgres on 127.0.0.1).
                    return pg_proxy(&mut s, len, &body).await;
                }
                let mut ask = pg_auth(0);
                ask.extend(pg_auth(3));
                s.write_all(&ask).await?;
                let rest = read_until(&mut s, pg_complete).await;
                let mut g = session.lock().unwrap();
                g.login = body;
                g.answer = rest;
                Ok(())
            }
        })
        .await;
        let mut t = target(port, mode, ca().filter(|_| mode != SslMode::Disable));
        t.user = "postgres".into();
        t.database = db.clone();
        let e = pg_attempt(Kind::Source, &t, Duration::from_secs(60))
            .await
            .expect("start ends");
        let sessions = fake.done().await;
        pg_drop(&db, &format!("backflow_{db}")).await;
        let what = format!("replication, sslmode {}", mode.as_str());
        let mut repl = false;
        for s in sessions {
            let s = s.lock().unwrap();
            if s.login.is_empty() {
                continue;
            }
            repl = true;
            if contains(&s.answer, SECRET.as_bytes()) {
                wrong.push(format!(
                    "{what}: the server sent AuthenticationOk then AuthenticationCleartextPassword \
                     and got the password in clear ({:?}); the PgGuard stops at the first \
                     AuthenticationOk (connect/postgres.rs:381) but pgwire-replication answers \
                     auth requests until ReadyForQuery",
                    String::from_utf8_lossy(&s.answer)
                ));
            } else if !s.answer.is_empty() {
                wrong.push(format!("{what}: answered: {:?}", s.answer));
            }
        }
        if !repl {
            wrong.push(format!(
                "{what}: the replication connection never reached the fake: {e:?}"
            ));
        }
        if e.is_none() {
            wrong.push(format!("{what}: the source started"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// The same trick against the SQL connections (tokio-postgres): after
/// AuthenticationOk the driver accepts only ParameterStatus,
/// BackendKeyData, notices and ReadyForQuery, so a later clear-text request
/// ends the connection unanswered, with or without TLS.
#[tokio::test]
async fn postgres_sql_connections_refuse_a_cleartext_request_after_authentication_ok() {
    let mut wrong = Vec::new();
    for (mode, cert) in [
        (SslMode::Disable, None),
        (SslMode::VerifyFull, Some(Cert::Trusted)),
    ] {
        for kind in [Kind::Poll, Kind::Sink] {
            let what = format!("{kind:?} sslmode {}", mode.as_str());
            let acceptor = Arc::new(cert.map(acceptor));
            let (port, fake) = serve(move |mut s, session| {
                let acceptor = acceptor.clone();
                async move {
                    let (_, mut body) = pg_read_startup(&mut s).await?;
                    if is_ssl_request(&body) {
                        let Some(acceptor) = &*acceptor else {
                            return Ok(());
                        };
                        s.write_all(b"S").await?;
                        s = tls_accept(acceptor, s).await?;
                        body = pg_read_startup(&mut s).await?.1;
                    }
                    let mut ask = pg_auth(0);
                    ask.extend(pg_auth(3));
                    s.write_all(&ask).await?;
                    let rest = read_until(&mut s, pg_complete).await;
                    let mut g = session.lock().unwrap();
                    g.login = body;
                    g.answer = rest;
                    Ok(())
                }
            })
            .await;
            let t = target(port, mode, ca().filter(|_| mode != SslMode::Disable));
            let e = pg_attempt(kind, &t, Duration::from_secs(30))
                .await
                .expect("the attempt ends");
            if e.is_none() {
                wrong.push(format!("{what}: connected"));
            }
            let sessions = fake.done().await;
            if sessions.is_empty() {
                wrong.push(format!("{what}: never connected"));
            }
            for s in sessions {
                let s = s.lock().unwrap();
                if !s.answer.is_empty() {
                    wrong.push(format!(
                        "{what}: answered: {:?}",
                        String::from_utf8_lossy(&s.answer)
                    ));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// A server (or man in the middle) that answers `S` and then never makes
/// the handshake: the connection attempt must end (the feed retries), not
/// wait forever.
#[tokio::test]
async fn postgres_server_silent_after_s_does_not_hang_the_connection() {
    let (port, _fake) = serve(|mut s, _| async move {
        let _ = pg_read_startup(&mut s).await?;
        s.write_all(b"S").await?;
        tokio::time::sleep(Duration::from_secs(120)).await;
        Ok(())
    })
    .await;
    let r = pg_attempt(
        Kind::Sink,
        &target(port, SslMode::VerifyFull, ca()),
        Duration::from_secs(40),
    )
    .await;
    let e = r
        .expect("the connection still waits for the TLS handshake after 40 s")
        .expect("a silent server is an error");
    assert_eq!(e.kind, ErrorKind::Transient, "{e}");
    assert!(
        e.message.contains("did not complete the login within 30 s"),
        "{e}"
    );
}

// ----------------------------------------------------------- MySQL/MariaDB

const CLIENT_SSL: u32 = 0x0800;

/// A MariaDB greeting naming `plugin`, offering TLS when `ssl` is set.
fn my_greeting_payload(plugin: &str, ssl: bool) -> Vec<u8> {
    let caps = MY_CAPS | if ssl { CLIENT_SSL } else { 0 };
    my_greeting("10.11.6-MariaDB-fake", 0x2d, caps, plugin)
}

fn my_error(code: u16, message: &str) -> Vec<u8> {
    let mut e = vec![0xff];
    e.extend_from_slice(&code.to_le_bytes());
    e.extend_from_slice(message.as_bytes());
    e
}

/// A MySQL fake: greets naming `plugin` (offering TLS when `tls` is set,
/// and then making the handshake with it), reads the login, then for each
/// payload of `script` sends it and records the client's next packet.
async fn my_fake(plugin: &'static str, tls: Option<Cert>, script: Vec<Vec<u8>>) -> (u16, Fake) {
    let acceptor = Arc::new(tls.map(acceptor));
    let script = Arc::new(script);
    serve(move |mut s, session| {
        let (acceptor, script) = (acceptor.clone(), script.clone());
        async move {
            s.write_all(&my_packet(
                0,
                &my_greeting_payload(plugin, acceptor.is_some()),
            ))
            .await?;
            let (mut seq, mut login) = my_read_packet(&mut s).await?;
            if let Some(acceptor) = &*acceptor {
                let flags = u32::from_le_bytes(login[..4].try_into().unwrap());
                if login.len() != 32 || flags & CLIENT_SSL == 0 {
                    return Ok(());
                }
                session.lock().unwrap().asked_tls = true;
                s = tls_accept(acceptor, s).await?;
                (seq, login) = my_read_packet(&mut s).await?;
            }
            session.lock().unwrap().login = login;
            for payload in script.iter() {
                s.write_all(&my_packet(seq.wrapping_add(1), payload))
                    .await?;
                match tokio::time::timeout(Duration::from_secs(5), my_read_packet(&mut s)).await {
                    Ok(Ok((n, p))) => {
                        seq = n;
                        session.lock().unwrap().answer.extend_from_slice(&p);
                    }
                    _ => return Ok(()),
                }
            }
            Ok(())
        }
    })
    .await
}

async fn my_attempt(kind: Kind, t: &Target, limit: Duration) -> Result<Option<ConnectorError>, ()> {
    let t = t.clone();
    let attempt = async move {
        match kind {
            Kind::Source => MysqlSource::new(t.my_source("bf-attack"), "330000")
                .start(None)
                .await
                .err(),
            Kind::Poll => {
                let c = t.my_poll("bf-attack", vec![poll_table("items", PollMode::Bulk, None)]);
                PollSource::new(c, "330000").start(None).await.err()
            }
            Kind::Sink => MysqlSink::new(t.my_sink(), "s")
                .committed_offsets()
                .await
                .err(),
        }
    };
    // In a task of its own, so a panic in the driver shows as one.
    match tokio::time::timeout(limit, tokio::spawn(attempt)).await {
        Err(_) => Err(()),
        Ok(Ok(e)) => Ok(e),
        Ok(Err(join)) if join.is_panic() => {
            let p = join.into_panic();
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("PANIC: {msg}")
        }
        Ok(Err(join)) => panic!("{join}"),
    }
}

/// Runs `my_attempt`, turning a panic of the attempt into its message.
async fn my_attempt_catching(kind: Kind, t: &Target) -> Result<Option<ConnectorError>, String> {
    let t = t.clone();
    match tokio::spawn(async move { my_attempt(kind, &t, Duration::from_secs(30)).await }).await {
        Ok(Ok(e)) => Ok(e),
        Ok(Err(())) => Err("did not end within 30 s".into()),
        Err(j) if j.is_panic() => {
            let p = j.into_panic();
            Err(p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into()))
        }
        Err(j) => Err(j.to_string()),
    }
}

/// Under verify-full/verify-ca, a certificate that does not chain to
/// `ssl_ca_file` or does not name the host: the server hears the 32-byte
/// SSLRequest (capability flags, max packet size, charset) and a
/// ClientHello, never the user, the database or the scramble.
#[tokio::test]
async fn mysql_untrusted_or_misnamed_certificate_gets_no_byte_of_the_login() {
    let mut wrong = Vec::new();
    for (cert, mode, host) in [
        (Cert::SelfSigned, SslMode::VerifyFull, "127.0.0.1"),
        (Cert::SelfSigned, SslMode::VerifyCa, "127.0.0.1"),
        (Cert::Trusted, SslMode::VerifyFull, "localhost"),
    ] {
        for kind in [Kind::Source, Kind::Poll, Kind::Sink] {
            let what = format!("{kind:?} {cert:?} {mode:?} {host}");
            let (port, fake) = my_fake(
                "mysql_native_password",
                Some(cert),
                vec![vec![0x00, 0, 0, 2, 0, 0, 0]],
            )
            .await;
            let mut t = target(port, mode, ca());
            t.host = host.into();
            let e = my_attempt(kind, &t, Duration::from_secs(30))
                .await
                .expect("the attempt ends");
            wrong.extend(refused_saying(&what, &e, &["certificate"]));
            for s in fake.done().await {
                let s = s.lock().unwrap();
                if !s.asked_tls {
                    wrong.push(format!("{what}: no SSLRequest"));
                }
                wrong.extend(gave_away(&what, &s));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// `require` encrypts (the login is read only inside TLS), and inside TLS
/// the guard refuses an AuthSwitch to mysql_clear_password and
/// caching_sha2_password's "perform full authentication" (0x01 0x04): no
/// answer, and the error names what the server asked.
#[tokio::test]
async fn mysql_require_puts_no_login_byte_in_clear_and_the_guard_holds_inside_tls() {
    let mut wrong = Vec::new();
    for (mode, cert, ca) in [
        (SslMode::Require, Cert::SelfSigned, None),
        (SslMode::VerifyFull, Cert::Trusted, ca()),
    ] {
        for (plugin, ask, says) in [
            (
                "mysql_native_password",
                b"\xfemysql_clear_password\0".to_vec(),
                "mysql_clear_password",
            ),
            (
                "caching_sha2_password",
                vec![0x01, 0x04],
                "caching_sha2_password",
            ),
        ] {
            for kind in [Kind::Source, Kind::Poll, Kind::Sink] {
                let what = format!("{kind:?} {mode:?} {says}");
                let (port, fake) = my_fake(plugin, Some(cert), vec![ask.clone()]).await;
                let e = my_attempt(
                    kind,
                    &target(port, mode, ca.clone()),
                    Duration::from_secs(30),
                )
                .await
                .expect("the attempt ends");
                wrong.extend(refused_saying(&what, &e, &[says]));
                let sessions = fake.done().await;
                if sessions.is_empty() {
                    wrong.push(format!("{what}: never connected"));
                }
                for s in sessions {
                    let s = s.lock().unwrap();
                    if !contains(&s.login, USER.as_bytes()) {
                        wrong.push(format!("{what}: the login was not read inside TLS"));
                    }
                    if contains(&s.wire, USER.as_bytes()) || contains(&s.wire, DB.as_bytes()) {
                        wrong.push(format!("{what}: the login crossed the wire in clear"));
                    }
                    if !s.answer.is_empty() {
                        wrong.push(format!(
                            "{what}: answered a refused request ({} bytes{})",
                            s.answer.len(),
                            if contains(&s.answer, SECRET.as_bytes()) {
                                ", the password in clear"
                            } else {
                                ""
                            }
                        ));
                    }
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// caching_sha2_password's "perform full authentication" is the byte 0x04
/// after 0x01; the guard refuses only the exact two-byte packet
/// (connect/mysql.rs:388, `len == 2`), while mysql_async acts on
/// `packet.get(1) == Some(0x04)` whatever follows, and, being connected to
/// the relay's Unix socket (`is_socket()`), answers with the password in
/// clear. With a password and sslmode = disable it crosses the network in
/// clear; under TLS it reaches the certificate's holder.
#[tokio::test]
async fn mysql_full_authentication_request_with_a_trailing_byte_gets_no_password() {
    let mut wrong = Vec::new();
    for (mode, cert) in [
        (SslMode::Disable, None),
        (SslMode::Require, Some(Cert::SelfSigned)),
        (SslMode::VerifyFull, Some(Cert::Trusted)),
    ] {
        for kind in [Kind::Poll, Kind::Sink] {
            let what = format!("{kind:?} sslmode {}", mode.as_str());
            let (port, fake) =
                my_fake("caching_sha2_password", cert, vec![vec![0x01, 0x04, 0x00]]).await;
            let t = target(port, mode, ca().filter(|_| mode != SslMode::Disable));
            let e = my_attempt(kind, &t, Duration::from_secs(30))
                .await
                .expect("the attempt ends");
            for s in fake.done().await {
                let s = s.lock().unwrap();
                if contains(&s.answer, SECRET.as_bytes()) {
                    wrong.push(format!(
                        "{what}: the server sent AuthMoreData [0x01, 0x04, 0x00] and got the \
                         password in clear: {:?}{}",
                        String::from_utf8_lossy(&s.answer),
                        if contains(&s.wire, SECRET.as_bytes()) {
                            " (in clear on the network, too)"
                        } else {
                            ""
                        }
                    ));
                } else if !s.answer.is_empty() {
                    wrong.push(format!("{what}: answered: {:?}", s.answer));
                }
            }
            if e.is_none() {
                wrong.push(format!("{what}: connected"));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// The refusal of "perform full authentication" made inside TLS says the
/// request came "without TLS" and blames "a public key the server itself
/// sends" (Refusal::MysqlServerKey, connect/mod.rs:111): the error names a
/// cause that is not this one.
#[tokio::test]
async fn mysql_full_authentication_refused_inside_tls_names_the_right_cause() {
    let (port, _fake) = my_fake(
        "caching_sha2_password",
        Some(Cert::Trusted),
        vec![vec![0x01, 0x04]],
    )
    .await;
    let e = my_attempt(
        Kind::Sink,
        &target(port, SslMode::VerifyFull, ca()),
        Duration::from_secs(30),
    )
    .await
    .expect("the attempt ends")
    .expect("refused");
    assert!(
        !e.message.contains("without TLS"),
        "the connection was inside verified TLS, yet the refusal says: {e}"
    );
}

/// Bytes a server sends before the TLS handshake (an OK packet after the
/// greeting, in the same segment or after the SSLRequest) are not taken
/// for the protected session: refused, and no login byte in clear.
#[tokio::test]
async fn mysql_bytes_before_the_tls_handshake_are_refused() {
    let mut wrong = Vec::new();
    for same_segment in [true, false] {
        for kind in [Kind::Poll, Kind::Sink] {
            let what = format!("{kind:?} same segment {same_segment}");
            let (port, fake) = serve(move |mut s, session| async move {
                let mut greeting =
                    my_packet(0, &my_greeting_payload("mysql_native_password", true));
                let ok = my_packet(2, &[0x00, 0, 0, 2, 0, 0, 0]);
                if same_segment {
                    greeting.extend_from_slice(&ok);
                }
                s.write_all(&greeting).await?;
                let (_, login) = my_read_packet(&mut s).await?;
                session.lock().unwrap().asked_tls = login.len() == 32;
                if !same_segment {
                    s.write_all(&ok).await?;
                }
                let rest = read_until(&mut s, |_| false).await;
                session.lock().unwrap().answer = rest;
                Ok(())
            })
            .await;
            let e = my_attempt(
                kind,
                &target(port, SslMode::VerifyFull, ca()),
                Duration::from_secs(30),
            )
            .await
            .expect("the attempt ends");
            wrong.extend(refused_saying(&what, &e, &[]));
            for s in fake.done().await {
                let s = s.lock().unwrap();
                for (name, secret) in [("user", USER), ("database", DB), ("password", SECRET)] {
                    if contains(&s.wire, secret.as_bytes()) {
                        wrong.push(format!("{what}: the {name} went out in clear"));
                    }
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Inside TLS the relay moves the server's sequence numbers down by one
/// (connect/mysql.rs:265). A server whose numbers are off (0, repeated,
/// skipping) does not get a login through with them: the driver refuses
/// the out-of-order packet, and a clear-text switch is refused whatever its
/// number.
#[tokio::test]
async fn mysql_bogus_sequence_numbers_inside_tls_do_not_get_a_login_or_a_password() {
    let mut wrong = Vec::new();
    let ok = vec![0x00, 0, 0, 2, 0, 0, 0];
    let clear = b"\xfemysql_clear_password\0".to_vec();
    for (name, delta, payload) in [
        // The control: the right number logs in (the client then sends a
        // command).
        ("OK numbered right", Some(1u8), ok.clone()),
        ("OK numbered 0", None, ok.clone()),
        ("OK numbered as the login", Some(0), ok.clone()),
        ("OK skipping a number", Some(2), ok.clone()),
        ("clear-text switch numbered 0", None, clear.clone()),
        ("clear-text switch numbered 200", Some(200), clear.clone()),
    ] {
        let (port, fake) = serve(move |mut s, session| {
            let payload = payload.clone();
            async move {
                s.write_all(&my_packet(
                    0,
                    &my_greeting_payload("mysql_native_password", true),
                ))
                .await?;
                let _ = my_read_packet(&mut s).await?;
                let mut s = tls_accept(&acceptor(Cert::Trusted), s).await?;
                let (seq, login) = my_read_packet(&mut s).await?;
                session.lock().unwrap().login = login;
                let n = match delta {
                    None => 0,
                    Some(d) => seq.wrapping_add(d),
                };
                s.write_all(&my_packet(n, &payload)).await?;
                let rest = read_until(&mut s, |_| false).await;
                session.lock().unwrap().answer = rest;
                Ok(())
            }
        })
        .await;
        let e = my_attempt(
            Kind::Sink,
            &target(port, SslMode::VerifyFull, ca()),
            Duration::from_secs(30),
        )
        .await
        .expect("the attempt ends");
        let control = delta == Some(1);
        if e.is_none() && !control {
            wrong.push(format!("{name}: connected"));
        }
        for s in fake.done().await {
            let s = s.lock().unwrap();
            if contains(&s.answer, SECRET.as_bytes()) {
                wrong.push(format!("{name}: the password was sent"));
            }
            // After an accepted login the client sends its first command.
            if s.answer.is_empty() == control {
                wrong.push(format!(
                    "{name}: the client {} a command after it",
                    if control { "did not send" } else { "sent" }
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Short or empty greetings (slice indexing in tls_conversation and
/// the greeting parse): a definite refusal, no panic.
#[tokio::test]
async fn mysql_short_greetings_are_refused_without_a_panic() {
    let mut wrong = Vec::new();
    let payloads: Vec<Vec<u8>> = vec![
        vec![],
        vec![0x0a],
        vec![0x0a, b'8', 0],
        vec![0x0a, b'8', 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 0],
        vec![0x0a, b'8'],
        vec![0x00, 0, 0],
    ];
    for payload in payloads {
        let p = payload.clone();
        let (port, _fake) = serve(move |mut s, _| {
            let p = p.clone();
            async move {
                s.write_all(&my_packet(0, &p)).await?;
                let _ = read_until(&mut s, |_| false).await;
                Ok(())
            }
        })
        .await;
        let what = format!("greeting {payload:?}");
        match my_attempt_catching(Kind::Sink, &target(port, SslMode::VerifyFull, ca())).await {
            Ok(e) => wrong.extend(refused_saying(&what, &e, &["malformed"])),
            Err(p) => wrong.push(format!("{what}: {p}")),
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// A packet over the relay's 64 KiB limit during the TLS conversation (the
/// greeting, or a packet inside TLS before the OK): the relay ends the
/// connection with an I/O error it only logs at debug level
/// (connect/mysql.rs:182 and relay.rs:125), so the caller gets the
/// driver's "connection closed", transient and naming no cause.
#[tokio::test]
async fn mysql_oversized_packet_in_the_tls_conversation_ends_with_an_error_naming_it() {
    let mut wrong = Vec::new();
    for in_tls in [false, true] {
        let (port, _fake) = serve(move |mut s, _| async move {
            let mut greeting = my_greeting_payload("mysql_native_password", true);
            if !in_tls {
                greeting.resize(70_000, 0);
            }
            s.write_all(&my_packet(0, &greeting)).await?;
            if in_tls {
                let _ = my_read_packet(&mut s).await?;
                let mut s = tls_accept(&acceptor(Cert::Trusted), s).await?;
                let (seq, _) = my_read_packet(&mut s).await?;
                let mut big = vec![0x01];
                big.resize(70_000, b'x');
                s.write_all(&my_packet(seq + 1, &big)).await?;
                let _ = read_until(&mut s, |_| false).await;
            } else {
                let _ = read_until(&mut s, |_| false).await;
            }
            Ok(())
        })
        .await;
        let what = if in_tls {
            "a 70 000-byte packet inside TLS"
        } else {
            "a 70 000-byte greeting"
        };
        let e = my_attempt(
            Kind::Sink,
            &target(port, SslMode::VerifyFull, ca()),
            Duration::from_secs(30),
        )
        .await
        .expect("the attempt ends");
        match e {
            None => wrong.push(format!("{what}: connected")),
            Some(e) => {
                let named = ["too long", "malformed", "too large", "oversized"]
                    .iter()
                    .any(|w| e.message.contains(w));
                if e.kind != ErrorKind::Definite || !named {
                    wrong.push(format!(
                        "{what}: a {:?} error that does not name the cause: {}",
                        e.kind, e.message
                    ));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// A real MariaDB greets with an ERR packet when it will not take the
/// connection (1040 too many connections, 1129 host blocked, 1130 host not
/// allowed). Without TLS the driver reports it (1040 transient, 1130
/// definite with its fix); through the TLS relay the greeting is not
/// protocol 10, so it becomes Refusal::Malformed (connect/mysql.rs:221):
/// definite, the server's message lost, a passing overload made fatal.
#[tokio::test]
async fn mysql_error_greeting_under_tls_keeps_the_servers_error() {
    let mut wrong = Vec::new();
    for mode in [SslMode::Disable, SslMode::VerifyFull] {
        let (port, _fake) = serve(|mut s, _| async move {
            s.write_all(&my_packet(0, &my_error(1040, "Too many connections")))
                .await?;
            let _ = read_until(&mut s, |_| false).await;
            Ok(())
        })
        .await;
        let t = target(port, mode, ca().filter(|_| mode != SslMode::Disable));
        let e = my_attempt(Kind::Sink, &t, Duration::from_secs(30))
            .await
            .expect("the attempt ends")
            .expect("refused");
        if e.kind != ErrorKind::Transient || !e.message.contains("Too many connections") {
            wrong.push(format!(
                "sslmode {}: ERR 1040 greeting became a {:?} error: {}",
                mode.as_str(),
                e.kind,
                e.message
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// AuthSwitchRequest to a plugin this build of mysql_common cannot answer
/// (`client_ed25519`, `parsec`: features off) or a second switch after
/// `parsec`: the guard lets them through, and the driver panics
/// (mysql_common scramble.rs "feature is disabled", mysql_async
/// conn/mod.rs `unreachable!("auth_switched flag ...")`), in whatever task
/// opened the connection. A hostile server should get an error.
#[tokio::test]
async fn mysql_auth_switch_to_a_plugin_the_driver_lacks_does_not_panic() {
    let mut ed = b"\xfeclient_ed25519\0".to_vec();
    ed.extend_from_slice(&[7; 32]);
    let mut parsec = b"\xfeparsec\0".to_vec();
    parsec.extend_from_slice(&[7; 32]);
    let mut native = b"\xfemysql_native_password\0".to_vec();
    native.extend_from_slice(NONCE);
    native.push(0);
    let mut wrong = Vec::new();
    for (mode, cert) in [
        (SslMode::Disable, None),
        (SslMode::VerifyFull, Some(Cert::Trusted)),
    ] {
        for (name, script) in [
            ("client_ed25519", vec![ed.clone()]),
            (
                "parsec then mysql_native_password",
                vec![parsec.clone(), native.clone()],
            ),
        ] {
            let (port, _fake) = my_fake("mysql_native_password", cert, script).await;
            let t = target(port, mode, ca().filter(|_| mode != SslMode::Disable));
            if let Err(p) = my_attempt_catching(Kind::Sink, &t).await {
                wrong.push(format!("sslmode {}, switch to {name}: {p}", mode.as_str()));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// A server that greets offering TLS and then never makes the handshake:
/// the connection attempt must end, not wait forever.
#[tokio::test]
async fn mysql_server_silent_in_the_tls_handshake_does_not_hang_the_connection() {
    let (port, _fake) = serve(|mut s, _| async move {
        s.write_all(&my_packet(
            0,
            &my_greeting_payload("mysql_native_password", true),
        ))
        .await?;
        let _ = my_read_packet(&mut s).await?;
        tokio::time::sleep(Duration::from_secs(120)).await;
        Ok(())
    })
    .await;
    let r = my_attempt(
        Kind::Sink,
        &target(port, SslMode::VerifyFull, ca()),
        Duration::from_secs(40),
    )
    .await;
    let e = r
        .expect("the connection still waits after 40 s")
        .expect("a silent server is an error");
    assert_eq!(e.kind, ErrorKind::Transient, "{e}");
    assert!(
        e.message.contains("did not complete the login within 30 s"),
        "{e}"
    );
}

// ---------------------------------------------------------------- ssl_ca_file

/// An API-registered feed may not name `ssl_ca_file`, but the registration
/// handler parses the definition first (bus/src/control/api/feeds.rs:162,
/// FeedRecord::parse → FeedConfig::validate → DbTls::check,
/// bus/src/state/catalog.rs:684) and only then asks admission
/// (feeds.rs:164-166). `check` reads the named file whole with
/// `std::fs::read` (connect/tls.rs read_cas): the caller picks a file of
/// the node to read before the refusal. A FIFO blocks that thread forever;
/// `/dev/zero` reads until memory runs out; and the error text tells
/// "cannot read ... No such file" from "... is not a PEM file", a probe of
/// the node's files.
#[test]
fn ca_file_check_reads_only_regular_files_and_returns() {
    let dir = std::env::temp_dir().join(format!("bf-attack-fifo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("ca.pem");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(made.success());
    let (tx, rx) = std::sync::mpsc::channel();
    let path = fifo.to_str().unwrap().to_owned();
    std::thread::spawn(move || {
        let r = DbTls::new(SslMode::VerifyFull, Some(&path)).check();
        let _ = tx.send(r);
    });
    let got = rx.recv_timeout(Duration::from_secs(5));
    if got.is_err() {
        // Unblock the reader before failing.
        let _ = std::fs::OpenOptions::new().write(true).open(&fifo);
        let _ = rx.recv_timeout(Duration::from_secs(5));
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        got.is_ok(),
        "DbTls::check blocked reading ssl_ca_file = {} (a FIFO): it opens and reads any path \
         whole, and an API registration reaches it before admission refuses ssl_ca_file",
        fifo.display()
    );
}
