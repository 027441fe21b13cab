//! PostgreSQL connections: tokio-postgres for SQL, pgwire-replication for
//! the CDC stream, both guarded by [`PgGuard`] (see the parent module for
//! the rule and why).
//!
//! A `host` starting with `/` is the directory of the server's Unix socket,
//! as in libpq.

use std::path::Path;

use pgwire_replication::{Publication, ReplicationClient, ReplicationConfig, TlsConfig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_openssl::SslStream;
use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, NoTls};

use super::tls::DbTls;
use super::{
    login_timed_out, no_nul, relay, tcp, Guard, Guarded, Refusal, RefusalSlot, Verdict,
    LOGIN_TIMEOUT,
};
use crate::ConnectorError;

/// Where and as whom to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PgTarget {
    /// Host name, address, or Unix socket directory.
    pub host: String,
    pub port: u16,
    pub user: String,
    /// Never logged, never in a message.
    pub password: Option<String>,
    pub database: String,
    /// The session's `application_name`.
    pub application_name: String,
    /// Server settings for the session (`-c name=value ...`), the
    /// startup packet's `options`.
    pub options: Option<String>,
    /// TLS over TCP (a Unix socket never leaves the machine and is not
    /// encrypted, as in libpq).
    pub tls: DbTls,
}

impl PgTarget {
    /// The server and login, for messages (no password).
    pub(crate) fn describe(&self) -> String {
        format!(
            "PostgreSQL at {}:{} (database {}, user {})",
            self.host, self.port, self.database, self.user
        )
    }

    fn has_password(&self) -> bool {
        self.password.as_deref().is_some_and(|p| !p.is_empty())
    }

    fn check(&self) -> Result<(), ConnectorError> {
        let target = self.describe();
        no_nul(&target, "host", &self.host)?;
        no_nul(&target, "user", &self.user)?;
        no_nul(&target, "database", &self.database)?;
        no_nul(&target, "password", self.password.as_deref().unwrap_or(""))?;
        no_nul(&target, "application name", &self.application_name)?;
        no_nul(&target, "options", self.options.as_deref().unwrap_or(""))
    }

    fn config(&self) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.user(&self.user)
            .dbname(&self.database)
            .application_name(&self.application_name)
            // TLS, when set, is made by `starttls` before the driver sees
            // the stream (the guard reads the clear side): the driver sends
            // no SSLRequest of its own.
            .ssl_mode(SslMode::Disable);
        if let Some(p) = &self.password {
            c.password(p);
        }
        if let Some(o) = &self.options {
            c.options(o);
        }
        c
    }

    /// The replication connection's settings for `slot` and `publication`;
    /// the caller adds its stream settings and passes it to
    /// [`replication`].
    pub(crate) fn replication_config(&self, slot: &str, publication: &str) -> ReplicationConfig {
        let mut c = ReplicationConfig::new(
            self.host.clone(),
            self.user.clone(),
            self.password.clone().unwrap_or_default(),
            self.database.clone(),
            slot,
            Publication::from(publication),
        )
        .with_port(self.port)
        .with_tls(TlsConfig::disabled())
        .with_application_name(self.application_name.clone());
        if let Some(o) = &self.options {
            c = c.with_options(o.clone());
        }
        c
    }

    fn unreachable(&self, e: std::io::Error) -> ConnectorError {
        ConnectorError::transient(format!("cannot connect to {}: {e}", self.describe()))
            .with_source(e)
    }

    /// Whether connections are encrypted: TLS is set and the host is not a
    /// Unix socket.
    fn uses_tls(&self) -> bool {
        self.tls.enabled() && self.socket_path().is_none()
    }

    /// The socket file of a Unix-socket `host`.
    fn socket_path(&self) -> Option<std::path::PathBuf> {
        self.host
            .starts_with('/')
            .then(|| Path::new(&self.host).join(format!(".s.PGSQL.{}", self.port)))
    }
}

/// A SQL connection (its connection task spawned).
pub(crate) async fn connect(t: &PgTarget) -> Result<Client, ConnectorError> {
    t.check()?;
    t.tls.warn_if_clear(&t.host, t.port);
    tokio::time::timeout(LOGIN_TIMEOUT, open(t))
        .await
        .unwrap_or_else(|_| Err(login_timed_out(&t.describe())))
}

/// [`connect`] without its time limit.
async fn open(t: &PgTarget) -> Result<Client, ConnectorError> {
    let config = t.config();
    let refused = RefusalSlot::default();
    let result = match t.socket_path() {
        Some(path) => {
            let s = tokio::net::UnixStream::connect(&path)
                .await
                .map_err(|e| t.unreachable(e))?;
            spawn(
                &config,
                Guarded::new(s, PgGuard::default(), refused.clone()),
            )
            .await
        }
        None => {
            let s = tcp(&t.host, t.port).await.map_err(|e| t.unreachable(e))?;
            if t.uses_tls() {
                let s = starttls(t, s).await?;
                spawn(
                    &config,
                    Guarded::new(s, PgGuard::default(), refused.clone()),
                )
                .await
            } else {
                spawn(
                    &config,
                    Guarded::new(s, PgGuard::default(), refused.clone()),
                )
                .await
            }
        }
    };
    result.map_err(|e| match refused.get() {
        Some(r) => r.error(&t.describe()),
        None => login_error(t, e),
    })
}

/// Asks the server for TLS (SSLRequest) and makes the handshake. Exactly
/// one byte of the server's answer is read before the handshake, so bytes
/// a server sends ahead of it cannot be taken for the protected session's.
async fn starttls<S>(t: &PgTarget, mut s: S) -> Result<SslStream<S>, ConnectorError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    const SSL_REQUEST: i32 = 80_877_103;
    let mut request = [0u8; 8];
    request[..4].copy_from_slice(&8i32.to_be_bytes());
    request[4..].copy_from_slice(&SSL_REQUEST.to_be_bytes());
    s.write_all(&request).await.map_err(|e| t.unreachable(e))?;
    let mut answer = [0u8; 1];
    s.read_exact(&mut answer)
        .await
        .map_err(|e| t.unreachable(e))?;
    match answer[0] {
        b'S' => t.tls.handshake(s, &t.host, &t.describe()).await,
        b'N' => Err(t.tls.not_offered(&t.describe())),
        _ => Err(Refusal::Malformed.error(&t.describe())),
    }
}

/// What a refused PostgreSQL login means, by the server's SQLSTATE: the
/// kind (a wrong password fails again until someone fixes it; too many
/// connections passes) and how to fix it. `None` for codes that say
/// nothing definite.
pub(crate) fn login_refusal(code: &str) -> Option<(crate::ErrorKind, &'static str)> {
    use crate::ErrorKind::{Definite, Transient};
    Some(match code {
        // invalid_password, invalid_authorization_specification
        "28P01" | "28000" => (
            Definite,
            "the server refused the login: check `user` and its password (password_env, password_file or password_secret) and the server's pg_hba.conf",
        ),
        // invalid_catalog_name
        "3D000" => (
            Definite,
            "the database does not exist on that server: create it or correct `database`",
        ),
        // insufficient_privilege
        "42501" => (
            Definite,
            "the user may not connect: GRANT CONNECT on the database (and REPLICATION to the user for a feed)",
        ),
        // too_many_connections, cannot_connect_now (starting up / shutting down)
        "53300" | "57P03" => (
            Transient,
            "the server takes no more connections for now; retrying",
        ),
        _ => return None,
    })
}

/// A failed connection: definite when the server said why and that will
/// not change by itself, transient otherwise (network, a server starting).
fn login_error(t: &PgTarget, e: tokio_postgres::Error) -> ConnectorError {
    let refusal = e.as_db_error().and_then(|db| {
        login_refusal(db.code().code())
            .map(|r| (db.code().code().to_owned(), db.message().to_owned(), r))
    });
    match refusal {
        Some((code, message, (kind, fix))) => {
            let text = format!(
                "cannot connect to {}: {message} (SQLSTATE {code}): {fix}",
                t.describe()
            );
            match kind {
                crate::ErrorKind::Definite => ConnectorError::definite(text),
                _ => ConnectorError::transient(text),
            }
            .with_source(e)
        }
        None => ConnectorError::transient(format!("cannot connect to {}: {e}", t.describe()))
            .with_source(e),
    }
}

async fn spawn<S>(
    config: &tokio_postgres::Config,
    stream: S,
) -> Result<Client, tokio_postgres::Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (client, connection) = config.connect_raw(stream, NoTls).await?;
    let name = config.get_application_name().unwrap_or_default().to_owned();
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, application_name = %name, "PostgreSQL connection ended");
        }
    });
    Ok(client)
}

/// A gated replication session for `config` (from
/// [`PgTarget::replication_config`]), authenticated: IDENTIFY_SYSTEM has
/// run on it, so a refused or failed login shows here.
pub(crate) async fn replication(
    t: &PgTarget,
    config: ReplicationConfig,
) -> Result<ReplicationClient, ConnectorError> {
    t.check()?;
    t.tls.warn_if_clear(&t.host, t.port);
    tokio::time::timeout(LOGIN_TIMEOUT, open_replication(t, config))
        .await
        .unwrap_or_else(|_| Err(login_timed_out(&t.describe())))
}

/// [`replication`] without its time limit.
async fn open_replication(
    t: &PgTarget,
    mut config: ReplicationConfig,
) -> Result<ReplicationClient, ConnectorError> {
    let mut refused = None;
    // A password needs the guard, TLS needs the handshake made here: either
    // way the driver is pointed at a relay.
    if t.has_password() || t.uses_tls() {
        let file = format!(".s.PGSQL.{}", config.port);
        let relay = match t.socket_path() {
            Some(path) => {
                let s = tokio::net::UnixStream::connect(&path)
                    .await
                    .map_err(|e| t.unreachable(e))?;
                relay::start(s, PgGuard::default(), &file)
            }
            None => {
                let s = tcp(&t.host, t.port).await.map_err(|e| t.unreachable(e))?;
                if t.uses_tls() {
                    let s = starttls(t, s).await?;
                    relay::start(s, PgGuard::default(), &file)
                } else {
                    relay::start(s, PgGuard::default(), &file)
                }
            }
        }
        .map_err(|e| relay_error(t, e))?;
        config.host = relay
            .dir
            .to_str()
            .ok_or_else(|| {
                ConnectorError::definite(format!(
                    "the temporary directory {} is not UTF-8; set TMPDIR to a plain path",
                    relay.dir.display()
                ))
            })?
            .to_owned();
        refused = Some(relay.refused);
    }
    let failed = |e: pgwire_replication::PgWireError| {
        match refused.as_ref().and_then(|r| r.get()) {
        Some(r) => r.error(&t.describe()),
        None if matches!(e, pgwire_replication::PgWireError::Auth(_)) => {
            ConnectorError::definite(format!(
                "replication connection to {} refused the login: {e}: check the feed's user and its password (password_env, password_file or password_secret) and the server's pg_hba.conf",
                t.describe()
            ))
            .with_source(e)
        }
        None => ConnectorError::transient(format!(
            "replication connection to {} failed: {e}",
            t.describe()
        ))
        .with_source(e),
    }
    };
    let mut client = ReplicationClient::connect_gated(config)
        .await
        .map_err(&failed)?;
    client.identify_system().await.map_err(&failed)?;
    Ok(client)
}

fn relay_error(t: &PgTarget, e: std::io::Error) -> ConnectorError {
    ConnectorError::transient(format!(
        "cannot open the local relay for the replication connection to {} in {}: {e}; \
         the temporary directory must be writable",
        t.describe(),
        std::env::temp_dir().display()
    ))
    .with_source(e)
}

/// Reads PostgreSQL's messages (type, length, and for an authentication
/// request its code) until `ReadyForQuery`; refuses clear-text and MD5
/// password requests, and any authentication request after
/// `AuthenticationOk` (a driver may still answer one there: the
/// replication driver does).
#[derive(Debug, Default)]
pub(crate) struct PgGuard {
    /// Type (1), length (4), code (4) of the message being read.
    head: [u8; 9],
    have: usize,
    /// Bytes of the current message still to pass over.
    skip: usize,
    /// `AuthenticationOk` was read.
    authenticated: bool,
}

impl Guard for PgGuard {
    fn server_bytes(&mut self, mut bytes: &[u8]) -> Verdict {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            let is_auth = self.have > 0 && self.head[0] == b'R';
            let want = if is_auth { 9 } else { 5 };
            let n = (want - self.have).min(bytes.len());
            self.head[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have < 5 || (self.head[0] == b'R' && self.have < 9) {
                continue;
            }
            self.have = 0;
            let len = i32::from_be_bytes(self.head[1..5].try_into().expect("4 bytes"));
            let Ok(len) = usize::try_from(len) else {
                return Verdict::Refused(Refusal::Malformed);
            };
            if self.head[0] != b'R' {
                if len < 4 {
                    return Verdict::Refused(Refusal::Malformed);
                }
                // ReadyForQuery after AuthenticationOk: the session is open.
                if self.head[0] == b'Z' && self.authenticated {
                    return Verdict::Authenticated;
                }
                self.skip = len - 4;
                continue;
            }
            if len < 8 {
                return Verdict::Refused(Refusal::Malformed);
            }
            match i32::from_be_bytes(self.head[5..9].try_into().expect("4 bytes")) {
                3 => return Verdict::Refused(Refusal::PgCleartext),
                5 => return Verdict::Refused(Refusal::PgMd5),
                // Authentication is over: no request may follow.
                _ if self.authenticated => return Verdict::Refused(Refusal::Malformed),
                0 => {
                    self.authenticated = true;
                    self.skip = len - 8;
                }
                // SASL (SCRAM) and what the drivers refuse themselves
                // (Kerberos, GSS, SSPI).
                _ => self.skip = len - 8,
            }
        }
        Verdict::Guarding
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut m = vec![kind];
        m.extend_from_slice(&(payload.len() as i32 + 4).to_be_bytes());
        m.extend_from_slice(payload);
        m
    }

    fn auth(code: i32, data: &[u8]) -> Vec<u8> {
        let mut p = code.to_be_bytes().to_vec();
        p.extend_from_slice(data);
        msg(b'R', &p)
    }

    /// Feeds `bytes` in chunks of `size`; the first verdict other than
    /// Guarding and the number of bytes fed up to and with its chunk.
    fn feed(bytes: &[u8], size: usize) -> (Verdict, usize) {
        let mut g = PgGuard::default();
        let mut fed = 0;
        for chunk in bytes.chunks(size) {
            fed += chunk.len();
            match g.server_bytes(chunk) {
                Verdict::Guarding => {}
                v => return (v, fed),
            }
        }
        (Verdict::Guarding, fed)
    }

    #[test]
    fn pg_guard_refuses_clear_text_and_md5_in_any_chunking() {
        let notice = msg(b'N', b"SNOTICE\0Mhello\0\0");
        for (code, data, want) in [
            (3, &b""[..], Refusal::PgCleartext),
            (5, &b"salt"[..], Refusal::PgMd5),
        ] {
            let mut stream = notice.clone();
            let at = stream.len();
            stream.extend(auth(code, data));
            for size in 1..=stream.len() {
                let (v, fed) = feed(&stream, size);
                assert_eq!(v, Verdict::Refused(want), "chunks of {size}");
                // The chunk that completes the request's code is withheld,
                // so the driver never holds the whole request.
                assert!(fed >= at + 9, "decided before the code was read");
            }
        }
    }

    #[test]
    fn pg_guard_lets_scram_through_and_stops_reading_at_ready_for_query() {
        let mut stream = auth(10, b"SCRAM-SHA-256\0\0");
        stream.extend(auth(11, b"r=abc,s=c2FsdA==,i=4096"));
        stream.extend(auth(12, b"v=proof"));
        stream.extend(auth(0, b""));
        stream.extend(msg(b'S', b"server_version\x0015.0\0"));
        stream.extend(msg(b'K', &[0, 0, 0, 1, 0, 0, 0, 2]));
        stream.extend(msg(b'Z', b"I"));
        for size in 1..=stream.len() {
            assert_eq!(
                feed(&stream, size).0,
                Verdict::Authenticated,
                "chunks of {size}"
            );
        }
        // Before ReadyForQuery, it keeps guarding.
        let (v, _) = feed(&stream[..stream.len() - 6], 7);
        assert_eq!(v, Verdict::Guarding);
        // A ReadyForQuery before AuthenticationOk opens nothing.
        let (v, _) = feed(&msg(b'Z', b"I"), 6);
        assert_eq!(v, Verdict::Guarding);
    }

    #[test]
    fn pg_guard_refuses_a_request_after_authentication_ok() {
        for (code, want) in [
            (3, Refusal::PgCleartext),
            (5, Refusal::PgMd5),
            (10, Refusal::Malformed),
            (0, Refusal::Malformed),
        ] {
            let mut stream = auth(0, b"");
            stream.extend(msg(b'S', b"a\0b\0"));
            stream.extend(auth(code, b"salt"));
            for size in 1..=stream.len() {
                assert_eq!(
                    feed(&stream, size).0,
                    Verdict::Refused(want),
                    "chunks of {size}"
                );
            }
        }
    }

    #[test]
    fn pg_guard_refuses_a_length_that_cannot_be() {
        assert_eq!(
            feed(&[b'R', 0, 0, 0, 4, 0, 0, 0, 3], 9).0,
            Verdict::Refused(Refusal::Malformed)
        );
        assert_eq!(
            feed(&[b'E', 0xff, 0xff, 0xff, 0xff], 5).0,
            Verdict::Refused(Refusal::Malformed)
        );
    }
}

#[cfg(test)]
mod login_tests {
    use super::login_refusal;
    use crate::ErrorKind;

    #[test]
    fn login_refusals_are_classified_by_sqlstate() {
        for (code, kind, says) in [
            ("28P01", Some(ErrorKind::Definite), "password"),
            ("28000", Some(ErrorKind::Definite), "pg_hba.conf"),
            ("3D000", Some(ErrorKind::Definite), "does not exist"),
            ("42501", Some(ErrorKind::Definite), "GRANT CONNECT"),
            ("53300", Some(ErrorKind::Transient), "no more connections"),
            ("57P03", Some(ErrorKind::Transient), "retrying"),
            ("08006", None, ""),
            ("XX000", None, ""),
        ] {
            let got = login_refusal(code);
            assert_eq!(got.map(|(k, _)| k), kind, "{code}");
            if let Some((_, fix)) = got {
                assert!(fix.contains(says), "{code}: {fix}");
            }
        }
    }
}
