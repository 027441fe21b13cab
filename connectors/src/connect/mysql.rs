//! MySQL/MariaDB connections (mysql_async), guarded by [`MysqlGuard`] (see
//! the parent module for the rule and why).

use mysql_async::{Conn, OptsBuilder};

use super::{no_nul, relay, tcp, Guard, Refusal, Verdict};
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
    let target = t.describe();
    if !t.has_password() {
        return Conn::new(t.opts()).await.map_err(|e| failed(target, e));
    }
    let upstream = tcp(&t.host, t.port).await.map_err(|e| {
        ConnectorError::transient(format!("cannot connect to {target}: {e}")).with_source(e)
    })?;
    let relay = relay::start(upstream, MysqlGuard::default(), "mysql.sock").map_err(|e| {
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
        Err(e) => match relay.refused.get() {
            Some(r) => Err(r.error(&target)),
            None => Err(failed(target, e)),
        },
    }
}

/// Bytes kept of the start of each packet: enough for the packet kind, a
/// plugin name, or the beginning of a public key.
const KEEP: usize = 64;

/// Reads MySQL's packets (4-byte header, payload) until the OK that ends
/// authentication; refuses a switch to `mysql_clear_password` and
/// `caching_sha2_password` full authentication (the server's RSA key).
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
            let n = (self.len - self.read).min(bytes.len());
            let room = KEEP.saturating_sub(self.start.len()).min(n);
            self.start.extend_from_slice(&bytes[..room]);
            self.read += n;
            bytes = &bytes[n..];
            if self.read < self.len {
                continue;
            }
            self.have = 0;
            if !self.greeted {
                // The handshake: whatever plugin it names, the driver
                // answers with a hash (native or SHA-256 scramble).
                self.greeted = true;
                continue;
            }
            match judge(&self.start, self.len) {
                Verdict::Guarding => {}
                v => return v,
            }
        }
        Verdict::Guarding
    }
}

/// A whole packet after the handshake.
fn judge(start: &[u8], len: usize) -> Verdict {
    match start.first() {
        // OK: authenticated.
        Some(0x00) => Verdict::Authenticated,
        // AuthSwitchRequest: plugin name, NUL, plugin data.
        Some(0xfe) => {
            let plugin = start[1..].split(|b| *b == 0).next().unwrap_or_default();
            if plugin == b"mysql_clear_password" {
                Verdict::Refused(Refusal::MysqlClearPassword)
            } else {
                Verdict::Guarding
            }
        }
        // AuthMoreData: caching_sha2_password's 0x04 "perform full
        // authentication", or a public key (never asked for, since the 0x04
        // is refused, but refused if sent anyway).
        Some(0x01) => {
            let data = &start[1..];
            if (len == 2 && data == [0x04]) || data.starts_with(b"-----BEGIN") {
                Verdict::Refused(Refusal::MysqlServerKey)
            } else {
                Verdict::Guarding
            }
        }
        _ => Verdict::Guarding,
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
        p.extend_from_slice(&[0; 40]);
        p.extend_from_slice(plugin.as_bytes());
        p.push(0);
        packet(0, &p)
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
    fn mysql_target_refuses_the_cleartext_plugin_and_server_sockets() {
        let t = MysqlTarget {
            host: "db".into(),
            port: 3306,
            user: "u".into(),
            password: Some("p".into()),
            database: None,
            init: Vec::new(),
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
