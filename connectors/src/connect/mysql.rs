//! MySQL/MariaDB connections (mysql_async), guarded by [`MysqlGuard`] (see
//! the parent module for the rule and why).
//!
//! # TLS
//! MySQL switches to TLS in the middle of its handshake: the server greets
//! in clear, the client answers with an SSLRequest (the first 32 bytes of
//! its login packet, `CLIENT_SSL` set), both sides make the TLS handshake,
//! and the client sends its whole login packet inside TLS. The driver never
//! does this itself here (the guard must read the clear side), so the relay
//! does it on the driver's behalf ([`tls_conversation`]): it passes the
//! greeting to the driver, takes the driver's login packet, sends the
//! SSLRequest built from it, makes the handshake, and from then on passes
//! the login packets through TLS with their sequence numbers moved by one
//! (the SSLRequest took a number the driver does not know of) until the
//! server's OK; after that the numbers start from zero for every command
//! and bytes are copied as they are.

use mysql_async::{Conn, OptsBuilder};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use tokio_openssl::SslStream;

use super::relay::Outcome;
use super::tls::DbTls;
use super::{login_timed_out, no_nul, relay, tcp, Guard, Refusal, Verdict, LOGIN_TIMEOUT};
use crate::ConnectorError;

/// Where and as whom to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MysqlTarget {
    pub host: String,
    pub port: u16,
    pub user: String,
    /// Never logged, never in a message.
    pub password: Option<String>,
    /// The connection's default database.
    pub database: Option<String>,
    /// Statements run on every new connection.
    pub init: Vec<String>,
    /// TLS to the server.
    pub tls: DbTls,
}

impl MysqlTarget {
    /// The server and login, for messages (no password).
    pub(crate) fn describe(&self) -> String {
        match &self.database {
            Some(db) => format!(
                "MySQL at {}:{} (database {db}, user {})",
                self.host, self.port, self.user
            ),
            None => format!("MySQL at {}:{} as {}", self.host, self.port, self.user),
        }
    }

    fn has_password(&self) -> bool {
        self.password.as_deref().is_some_and(|p| !p.is_empty())
    }

    fn check(&self) -> Result<(), ConnectorError> {
        let target = self.describe();
        no_nul(&target, "host", &self.host)?;
        no_nul(&target, "user", &self.user)?;
        no_nul(&target, "database", self.database.as_deref().unwrap_or(""))?;
        no_nul(&target, "password", self.password.as_deref().unwrap_or(""))
    }

    fn opts(&self) -> OptsBuilder {
        OptsBuilder::default()
            .ip_or_hostname(self.host.clone())
            .tcp_port(self.port)
            .user(Some(self.user.clone()))
            .pass(self.password.clone())
            .db_name(self.database.clone())
            // Never follow the server's @@socket to a local socket.
            .prefer_socket(false)
            // Never answer mysql_clear_password (the guard refuses it
            // first; this is the second lock) nor the old 3.23 hash.
            .enable_cleartext_plugin(false)
            .secure_auth(true)
            .init(self.init.clone())
    }
}

/// What a refused MySQL/MariaDB login means, by the server's error code:
/// definite ones fail again until someone changes the configuration or
/// the grants, with how to fix them; `None` for codes that say nothing
/// definite.
pub(crate) fn login_refusal(code: u16) -> Option<&'static str> {
    Some(match code {
        // access denied for user (1045; 1698 without a password), host not
        // allowed to connect (1130)
        1045 | 1698 | 1130 => "the server refused the login: check `user` and its password (password_env, password_file or password_secret) and that the user may connect from this host",
        // access denied to the database
        1044 => "the user may not use that database: GRANT it the privileges it needs there",
        // unknown database
        1049 => "the database does not exist on that server: create it or correct `database`",
        _ => return None,
    })
}

/// A failed connection to `target`: definite when the server refused the
/// login for a reason that will not pass by itself, transient otherwise.
pub(crate) fn login_error(target: String, e: mysql_async::Error) -> ConnectorError {
    let refusal = match &e {
        mysql_async::Error::Server(s) => login_refusal(s.code).map(|fix| (s.code, fix)),
        _ => None,
    };
    match refusal {
        Some((code, fix)) => ConnectorError::definite(format!(
            "cannot connect to {target}: {e} (error {code}): {fix}"
        ))
        .with_source(e),
        None => {
            ConnectorError::transient(format!("cannot connect to {target}: {e}")).with_source(e)
        }
    }
}

/// A connection to `t`. `failed` turns a driver error into the caller's
/// error (its kinds for its codes); a refusal of the guard is definite.
pub(crate) async fn connect(
    t: &MysqlTarget,
    failed: impl FnOnce(String, mysql_async::Error) -> ConnectorError,
) -> Result<Conn, ConnectorError> {
    t.check()?;
    tokio::time::timeout(LOGIN_TIMEOUT, open(t, failed))
        .await
        .unwrap_or_else(|_| Err(login_timed_out(&t.describe())))
}

/// [`connect`] without its time limit.
async fn open(
    t: &MysqlTarget,
    failed: impl FnOnce(String, mysql_async::Error) -> ConnectorError,
) -> Result<Conn, ConnectorError> {
    t.tls.warn_if_clear(&t.host, t.port);
    let target = t.describe();
    if !t.has_password() && !t.tls.enabled() {
        return Conn::new(t.opts()).await.map_err(|e| failed(target, e));
    }
    let upstream = tcp(&t.host, t.port).await.map_err(|e| {
        ConnectorError::transient(format!("cannot connect to {target}: {e}")).with_source(e)
    })?;
    let relay = if t.tls.enabled() {
        let (tls, host, named) = (t.tls.clone(), t.host.clone(), target.clone());
        relay::start_with("mysql.sock", move |client, outcome| {
            tls_conversation(client, upstream, tls, host, named, outcome)
        })
    } else {
        relay::start(upstream, MysqlGuard::default(), "mysql.sock")
    }
    .map_err(|e| {
        ConnectorError::transient(format!(
            "cannot open the local relay for the connection to {target} in {}: {e}; \
             the temporary directory must be writable",
            std::env::temp_dir().display()
        ))
        .with_source(e)
    })?;
    let socket = relay.socket.to_str().map(str::to_owned).ok_or_else(|| {
        ConnectorError::definite(format!(
            "the temporary directory {} is not UTF-8; set TMPDIR to a plain path",
            relay.dir.display()
        ))
    })?;
    match Conn::new(t.opts().socket(Some(socket))).await {
        Ok(conn) => Ok(conn),
        Err(e) => match (relay.refused.get(), relay.failed.take()) {
            (Some(r), _) => Err(r.error(&target)),
            (None, Some(f)) => Err(f),
            (None, None) => Err(failed(target, e)),
        },
    }
}

/// `CLIENT_SSL` of the capability flags.
const CLIENT_SSL: u32 = 0x0800;
/// The longest packet accepted during authentication (a public key or a
/// plugin's data is far smaller).
const MAX_AUTH_PACKET: usize = 64 * 1024;

/// The next whole packet (header and payload) in `buf`, reading from
/// `stream` as needed; `None` when the stream ended. Cancel-safe: what was
/// read stays in `buf`.
async fn next_packet<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<Vec<u8>>> {
    loop {
        if buf.len() >= 4 {
            let len = usize::from(buf[0]) | usize::from(buf[1]) << 8 | usize::from(buf[2]) << 16;
            if len > MAX_AUTH_PACKET {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "a packet during authentication is too long",
                ));
            }
            if buf.len() >= 4 + len {
                return Ok(Some(buf.drain(..4 + len).collect()));
            }
        }
        if stream.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}

/// The relay's side of a TLS connection (see the module doc): `client` is
/// the driver, `server` the TCP connection to the server. The login must
/// end within [`LOGIN_TIMEOUT`].
async fn tls_conversation(
    mut client: UnixStream,
    server: tokio::net::TcpStream,
    tls: DbTls,
    host: String,
    target: String,
    outcome: Outcome,
) -> std::io::Result<()> {
    let login = tls_login(&mut client, server, &tls, &host, &target, &outcome);
    let (mut server, from_server, from_client) =
        match tokio::time::timeout(LOGIN_TIMEOUT, login).await {
            Ok(Ok(Some(open))) => open,
            Ok(Ok(None)) => return Ok(()),
            Ok(Err(e)) => {
                // A packet too long or cut short: not MySQL's protocol.
                if e.kind() == std::io::ErrorKind::InvalidData {
                    outcome.refused.set(Refusal::Malformed);
                }
                return Err(e);
            }
            Err(_) => {
                outcome.failed.set(login_timed_out(&target));
                return Ok(());
            }
        };
    // Commands: bytes as they are, those already read first.
    client.write_all(&from_server).await?;
    server.write_all(&from_client).await?;
    tokio::io::copy_bidirectional_with_sizes(&mut client, &mut server, 64 * 1024, 64 * 1024)
        .await?;
    Ok(())
}

/// A TLS session to the server, the login made through it for the driver;
/// with the bytes each side sent past the server's OK. `None` when the
/// connection ended (the reason in `outcome`, or the server's error passed
/// to the driver).
async fn tls_login(
    client: &mut UnixStream,
    mut server: tokio::net::TcpStream,
    tls: &DbTls,
    host: &str,
    target: &str,
    outcome: &Outcome,
) -> std::io::Result<Option<(SslStream<tokio::net::TcpStream>, Vec<u8>, Vec<u8>)>> {
    let malformed = |outcome: &Outcome| {
        outcome.refused.set(Refusal::Malformed);
        Ok(None)
    };
    let mut guard = MysqlGuard::default();
    let (mut from_server, mut from_client) = (Vec::new(), Vec::new());
    let Some(greeting) = next_packet(&mut server, &mut from_server).await? else {
        return malformed(outcome);
    };
    // An error in place of the greeting (too many connections, host not
    // allowed): the driver reads it and reports the server's reason.
    if greeting.get(4) == Some(&0xff) {
        client.write_all(&greeting).await?;
        return Ok(None);
    }
    if let Verdict::Refused(r) = guard.server_bytes(&greeting) {
        outcome.refused.set(r);
        return Ok(None);
    }
    match Greeting::parse(&greeting[4..]) {
        None => return malformed(outcome),
        Some(g) if g.capabilities & CLIENT_SSL == 0 => {
            outcome.failed.set(tls.not_offered(target));
            return Ok(None);
        }
        Some(_) => {}
    }
    client.write_all(&greeting).await?;
    let Some(mut login) = next_packet(client, &mut from_client).await? else {
        return Ok(None);
    };
    // The login packet of protocol 4.1: flags (4), max packet (4), charset
    // (1), 23 reserved bytes, then the user and the rest.
    if login.len() < 4 + 32 {
        return malformed(outcome);
    }
    let flags = u32::from_le_bytes(login[4..8].try_into().expect("4 bytes")) | CLIENT_SSL;
    login[4..8].copy_from_slice(&flags.to_le_bytes());
    let mut ssl_request = vec![32, 0, 0, 1];
    ssl_request.extend_from_slice(&login[4..36]);
    server.write_all(&ssl_request).await?;
    // Anything the server sent before the handshake is not trusted.
    if !from_server.is_empty() {
        return malformed(outcome);
    }
    let mut server = match tls.handshake(server, host, target).await {
        Ok(s) => s,
        Err(e) => {
            outcome.failed.set(e);
            return Ok(None);
        }
    };
    login[3] = login[3].wrapping_add(1);
    server.write_all(&login).await?;
    loop {
        tokio::select! {
            packet = next_packet(&mut server, &mut from_server) => {
                let Some(mut packet) = packet? else { return Ok(None) };
                let verdict = guard.server_bytes(&packet);
                if let Verdict::Refused(r) = verdict {
                    outcome.refused.set(r);
                    return Ok(None);
                }
                packet[3] = packet[3].wrapping_sub(1);
                client.write_all(&packet).await?;
                if verdict == Verdict::Authenticated {
                    return Ok(Some((server, from_server, from_client)));
                }
            }
            packet = next_packet(client, &mut from_client) => {
                let Some(mut packet) = packet? else { return Ok(None) };
                packet[3] = packet[3].wrapping_add(1);
                server.write_all(&packet).await?;
            }
        }
    }
}

/// Bytes kept of the start of each packet: enough for the packet kind, a
/// plugin name, or the beginning of a public key.
const KEEP: usize = 64;
/// Bytes kept of the server's greeting, whose plugin name comes last.
const KEEP_GREETING: usize = 1024;

/// The plugins the driver may answer: with a hash of the password (native:
/// SHA-1 scramble; caching_sha2: SHA-256 scramble, the fast path).
const HASH_PLUGINS: [&[u8]; 2] = [b"mysql_native_password", b"caching_sha2_password"];

/// Reads MySQL's packets (4-byte header, payload) until the OK that ends
/// authentication. Lets through only what makes the driver answer with a
/// hash: a greeting naming a hash plugin (or `mysql_clear_password`, which
/// the driver answers with the native hash), one switch to a hash plugin,
/// caching_sha2's "fast authentication succeeded", an error. Refuses a
/// switch to `mysql_clear_password`, caching_sha2's full authentication
/// (the server's RSA key, or the password itself inside TLS), any other
/// plugin (the driver would panic on some), a second switch, and any other
/// packet.
#[derive(Debug, Default)]
pub(crate) struct MysqlGuard {
    head: [u8; 4],
    have: usize,
    /// Payload length and bytes read of the current packet.
    len: usize,
    read: usize,
    start: Vec<u8>,
    /// The server's handshake (the first packet) was read.
    greeted: bool,
    /// The server switched plugins once.
    switched: bool,
}

impl Guard for MysqlGuard {
    fn server_bytes(&mut self, mut bytes: &[u8]) -> Verdict {
        while !bytes.is_empty() {
            if self.have < 4 {
                let n = (4 - self.have).min(bytes.len());
                self.head[self.have..self.have + n].copy_from_slice(&bytes[..n]);
                self.have += n;
                bytes = &bytes[n..];
                if self.have < 4 {
                    continue;
                }
                self.len = usize::from(self.head[0])
                    | usize::from(self.head[1]) << 8
                    | usize::from(self.head[2]) << 16;
                // A payload split over several packets has no place in
                // authentication.
                if self.len == 0xff_ffff {
                    return Verdict::Refused(Refusal::Malformed);
                }
                self.read = 0;
                self.start.clear();
            }
            let keep = if self.greeted { KEEP } else { KEEP_GREETING };
            let n = (self.len - self.read).min(bytes.len());
            let room = keep.saturating_sub(self.start.len()).min(n);
            self.start.extend_from_slice(&bytes[..room]);
            self.read += n;
            bytes = &bytes[n..];
            if self.read < self.len {
                continue;
            }
            self.have = 0;
            let verdict = if self.greeted {
                self.judge()
            } else {
                self.greeted = true;
                judge_greeting(&self.start)
            };
            match verdict {
                Verdict::Guarding => {}
                v => return v,
            }
        }
        Verdict::Guarding
    }
}

impl MysqlGuard {
    /// A whole packet after the handshake.
    fn judge(&mut self) -> Verdict {
        let start = &self.start;
        match start.first() {
            // OK: authenticated. ERR: the driver reports the server's error.
            Some(0x00) => Verdict::Authenticated,
            Some(0xff) => Verdict::Guarding,
            // AuthSwitchRequest: plugin name, NUL, plugin data.
            Some(0xfe) => {
                let plugin = start[1..].split(|b| *b == 0).next().unwrap_or_default();
                if plugin == b"mysql_clear_password" {
                    Verdict::Refused(Refusal::MysqlClearPassword)
                } else if self.switched || !HASH_PLUGINS.contains(&plugin) {
                    Verdict::Refused(Refusal::MysqlPlugin)
                } else {
                    self.switched = true;
                    Verdict::Guarding
                }
            }
            // AuthMoreData: only caching_sha2's "fast authentication
            // succeeded" (0x03). Its 0x04 "perform full authentication"
            // (with any trailing bytes) and a public key are the password
            // given away; anything else is no protocol this guard knows.
            Some(0x01) => match start.get(1) {
                Some(0x03) if self.len == 2 => Verdict::Guarding,
                Some(0x04) => Verdict::Refused(Refusal::MysqlServerKey),
                _ if start[1..].starts_with(b"-----BEGIN") => {
                    Verdict::Refused(Refusal::MysqlServerKey)
                }
                _ => Verdict::Refused(Refusal::Malformed),
            },
            _ => Verdict::Refused(Refusal::Malformed),
        }
    }
}

/// The greeting: refused when it names a plugin the driver would not answer
/// with a hash.
fn judge_greeting(greeting: &[u8]) -> Verdict {
    match Greeting::parse(greeting).and_then(|g| g.plugin) {
        Some(p) if !p.is_empty() && p != b"mysql_clear_password" && !HASH_PLUGINS.contains(&p) => {
            Verdict::Refused(Refusal::MysqlPlugin)
        }
        _ => Verdict::Guarding,
    }
}

/// What backflow reads of a server's greeting (protocol 10): its
/// capability flags and the authentication plugin it names. The one parse
/// of the greeting, used by the TLS relay (is TLS offered?) and the guard
/// (is the plugin one the driver answers with a hash?).
struct Greeting<'a> {
    capabilities: u32,
    /// `None` when the greeting ends before the plugin name.
    plugin: Option<&'a [u8]>,
}

impl<'a> Greeting<'a> {
    /// `None` when the bytes (a greeting's payload) are not a protocol-10
    /// greeting that reaches at least the low capability flags.
    fn parse(g: &'a [u8]) -> Option<Self> {
        if g.first() != Some(&0x0a) {
            return None;
        }
        // Version (NUL-terminated), thread id (4), scramble (8), filler (1),
        // capabilities low (2), charset (1), status (2), capabilities high
        // (2), scramble length (1), reserved (10), the scramble's rest, the
        // plugin name.
        let version_end = g[1..].iter().position(|b| *b == 0)? + 1;
        let low_at = version_end + 1 + 4 + 8 + 1;
        let low = g.get(low_at..low_at + 2)?;
        let high = g.get(low_at + 5..low_at + 7).unwrap_or(&[0, 0]);
        let capabilities = u32::from(u16::from_le_bytes([low[0], low[1]]))
            | u32::from(u16::from_le_bytes([high[0], high[1]])) << 16;
        let fixed = low_at + 7 + 1 + 10;
        let plugin = g.get(low_at + 7).and_then(|scramble_len| {
            let at = fixed + usize::from(*scramble_len).saturating_sub(8).max(13);
            let rest = g.get(at..)?;
            Some(rest.split(|b| *b == 0).next().unwrap_or_default())
        });
        Some(Self {
            capabilities,
            plugin,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(seq: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut p = vec![len as u8, (len >> 8) as u8, (len >> 16) as u8, seq];
        p.extend_from_slice(payload);
        p
    }

    fn handshake(plugin: &str) -> Vec<u8> {
        let mut p = vec![0x0a];
        p.extend_from_slice(b"8.0.36\0");
        // Thread id, scramble, filler, capabilities, charset, status,
        // capabilities, scramble length 21, reserved; the scramble's rest.
        p.extend_from_slice(&[0; 20]);
        p.push(21);
        p.extend_from_slice(&[0; 10]);
        p.extend_from_slice(b"abcdefghijkl\0");
        p.extend_from_slice(plugin.as_bytes());
        p.push(0);
        packet(0, &p)
    }

    #[test]
    fn one_parse_of_the_greeting_gives_capabilities_and_plugin() {
        let mut g = handshake("caching_sha2_password");
        // Capability flags: CLIENT_SSL in the low half, bit 19 (plugin
        // auth) in the high half.
        let low_at = 4 + 1 + b"8.0.36\0".len() + 4 + 8 + 1;
        g[low_at..low_at + 2].copy_from_slice(&(CLIENT_SSL as u16).to_le_bytes());
        g[low_at + 5..low_at + 7].copy_from_slice(&0x0008u16.to_le_bytes());
        let parsed = Greeting::parse(&g[4..]).expect("a protocol-10 greeting");
        assert_eq!(parsed.capabilities, CLIENT_SSL | 0x0008_0000);
        assert_eq!(parsed.plugin, Some(&b"caching_sha2_password"[..]));
        // Cut before the plugin: capabilities still read, no plugin.
        let short = &g[4..low_at + 7];
        let parsed = Greeting::parse(short).expect("reaches the flags");
        assert_eq!(parsed.capabilities & CLIENT_SSL, CLIENT_SSL);
        assert_eq!(parsed.plugin, None);
        // Not protocol 10, or cut inside the flags: nothing.
        assert!(Greeting::parse(&[0x09, b'x', 0]).is_none());
        assert!(Greeting::parse(&g[4..low_at + 1]).is_none());
    }

    fn feed(bytes: &[u8], size: usize) -> Verdict {
        let mut g = MysqlGuard::default();
        for chunk in bytes.chunks(size) {
            match g.server_bytes(chunk) {
                Verdict::Guarding => {}
                v => return v,
            }
        }
        Verdict::Guarding
    }

    #[test]
    fn mysql_guard_refuses_clear_password_and_the_servers_key_in_any_chunking() {
        let mut switch = handshake("mysql_native_password");
        switch.extend(packet(2, b"\xfemysql_clear_password\0"));
        let mut full = handshake("caching_sha2_password");
        full.extend(packet(2, &[0x01, 0x04]));
        let mut key = handshake("caching_sha2_password");
        key.extend(packet(2, b"\x01-----BEGIN PUBLIC KEY-----\nMIIB"));
        for (stream, want) in [
            (switch, Refusal::MysqlClearPassword),
            (full, Refusal::MysqlServerKey),
            (key, Refusal::MysqlServerKey),
        ] {
            for size in 1..=stream.len() {
                assert_eq!(
                    feed(&stream, size),
                    Verdict::Refused(want),
                    "chunks of {size}"
                );
            }
        }
    }

    #[test]
    fn mysql_guard_lets_hashes_through_and_stops_reading_at_ok() {
        // The handshake names clear text, the driver answers with a hash,
        // the server switches to native and accepts.
        let mut native = handshake("mysql_clear_password");
        native.extend(packet(
            2,
            b"\xfemysql_native_password\0abcdefghijklmnopqrst\0",
        ));
        native.extend(packet(4, &[0x00, 0, 0, 2, 0, 0, 0]));
        // caching_sha2_password fast authentication (cache hit).
        let mut fast = handshake("caching_sha2_password");
        fast.extend(packet(2, &[0x01, 0x03]));
        fast.extend(packet(3, &[0x00, 0, 0, 2, 0, 0, 0]));
        for stream in [native, fast] {
            for size in 1..=stream.len() {
                assert_eq!(
                    feed(&stream, size),
                    Verdict::Authenticated,
                    "chunks of {size}"
                );
            }
        }
        // An OK in place of the handshake is not an OK.
        assert_eq!(feed(&packet(0, &[0x00, 0, 0]), 64), Verdict::Guarding);
    }

    #[test]
    fn mysql_guard_refuses_other_plugins_a_second_switch_and_unknown_packets() {
        let mut greeting = handshake("client_ed25519");
        assert_eq!(feed(&greeting, 7), Verdict::Refused(Refusal::MysqlPlugin));
        greeting = handshake("caching_sha2_password");
        for (then, want) in [
            (
                vec![packet(2, b"\xfeclient_ed25519\0salt")],
                Refusal::MysqlPlugin,
            ),
            (
                vec![
                    packet(2, b"\xfemysql_native_password\0abcdefghijklmnopqrst\0"),
                    packet(4, b"\xfecaching_sha2_password\0abcdefghijklmnopqrst\0"),
                ],
                Refusal::MysqlPlugin,
            ),
            // Full authentication with bytes after the 0x04.
            (
                vec![packet(2, &[0x01, 0x04, 0x00])],
                Refusal::MysqlServerKey,
            ),
            (vec![packet(2, &[0x01, 0x07])], Refusal::Malformed),
            (vec![packet(2, &[0x42, 0x00])], Refusal::Malformed),
        ] {
            let mut stream = greeting.clone();
            for p in then {
                stream.extend(p);
            }
            for size in 1..=stream.len() {
                assert_eq!(
                    feed(&stream, size),
                    Verdict::Refused(want),
                    "chunks of {size}"
                );
            }
        }
    }

    #[test]
    fn mysql_target_refuses_the_cleartext_plugin_and_server_sockets() {
        let t = MysqlTarget {
            host: "db".into(),
            port: 3306,
            user: "u".into(),
            password: Some("p".into()),
            database: None,
            init: Vec::new(),
            tls: DbTls::default(),
        };
        let opts = mysql_async::Opts::from(t.opts());
        assert!(!opts.enable_cleartext_plugin());
        assert!(!opts.prefer_socket());
        assert!(opts.secure_auth());
    }
}

#[cfg(test)]
mod login_tests {
    use super::login_refusal;

    #[test]
    fn login_refusals_are_classified_by_error_code() {
        for (code, says) in [
            (1045, Some("password")),
            (1698, Some("password")),
            (1130, Some("from this host")),
            (1044, Some("GRANT")),
            (1049, Some("does not exist")),
            (1040, None),
            (2013, None),
        ] {
            let got = login_refusal(code);
            assert_eq!(got.is_some(), says.is_some(), "{code}");
            if let (Some(fix), Some(says)) = (got, says) {
                assert!(fix.contains(says), "{code}: {fix}");
            }
        }
    }
}
