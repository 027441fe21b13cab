//! Connections to PostgreSQL and MySQL/MariaDB. Every connection a source
//! or sink opens is made here ([`postgres::connect`],
//! [`postgres::replication`], [`mysql::connect`]), from the driver's config
//! builder (never a connection string, so no host, user, database or
//! password can add parameters of its own), and none of them lets the
//! password reach a server that could read it.
//!
//! # The rule: no password a server could read
//! The server at the other end of a feed or sink is whatever its
//! configuration names, and a feed registered through the API names its own
//! host, so that server may be hostile. A hostile server that asks for the
//! password "in clear" would get the node's password. So, before the driver
//! sees it, every authentication request of the server is read, and the
//! connection ends, with a definite error naming the server and the fix, when
//! it asks for:
//! - PostgreSQL `AuthenticationCleartextPassword`: the password itself.
//! - PostgreSQL `AuthenticationMD5Password`: not the password, but a salted
//!   MD5 of it that the server (or anyone on the path) can test guesses
//!   against at billions per second, and a hash equivalent to the password
//!   for MD5 logins. The rule is SCRAM or TLS; PostgreSQL deprecates
//!   MD5 passwords, its default has been SCRAM since version 14, and the
//!   replication driver never spoke MD5, so a CDC feed could not use it
//!   anyway. Refused, with the fix (set the password again under
//!   `password_encryption = scram-sha-256`).
//! - MySQL `mysql_clear_password` (an `AuthSwitchRequest` naming it): the
//!   password itself. mysql_async's cleartext plugin is also off
//!   ([`mysql::connect`] sets it so), a second lock.
//! - MySQL `caching_sha2_password` full authentication: without TLS the
//!   driver encrypts the password with an RSA public key *the server sends*;
//!   a hostile server sends its own key and decrypts the password.
//!
//! SCRAM-SHA-256, `mysql_native_password`, a `caching_sha2_password` cache
//! hit and servers that need no password go on: what they send proves the
//! password without revealing it. A server that does not follow the protocol
//! during authentication is refused too (fail closed).
//!
//! # How
//! [`Guard`] reads the server's bytes until authentication succeeded; after
//! that it reads nothing. The bytes of a refused request never reach the
//! driver, so the driver never answers it.
//! - tokio-postgres: the socket is opened here and handed to
//!   `Config::connect_raw` wrapped in a [`Guarded`] stream (no extra copy).
//! - pgwire-replication (the CDC replication connection) and mysql_async
//!   open their own sockets and have no hook for this. When a password is
//!   set, they are pointed at a [`relay`]: a Unix socket in a directory only
//!   this user can enter, accepting one connection from this very process,
//!   that opens the connection to the server, passes the server's bytes
//!   through the same guard and then copies bytes both ways. Without a
//!   password there is nothing to leak and they connect directly. The cost
//!   is one more copy of each byte in this process: reading 300 MB from
//!   MariaDB took about a tenth more CPU than a direct connection (median
//!   of six runs on a loaded two-core machine; wall time within the noise).
//!
//! Checking the first answer and then handing the server to the driver
//! would not do: a hostile server answers each connection as it likes.
//!
//! # TLS
//! With `sslmode` set, [`tls`] makes the TLS handshake over the socket
//! opened here, and the guard reads the clear side of the session: the rule
//! holds inside TLS too. It must: a password in clear inside TLS reaches
//! the certificate's holder, and for a feed pointed at a hostile host that
//! holder is the attacker. With TLS, pgwire-replication and mysql_async are
//! always pointed at the relay (password or not), which holds the TLS
//! session; MySQL's relay also makes the protocol's mid-handshake switch to
//! TLS for the driver ([`mysql`]).

pub(crate) mod mysql;
pub(crate) mod postgres;
mod relay;
pub mod tls;

use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::ConnectorError;

/// Why a connection was ended during authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// PostgreSQL asked for the password in clear text.
    PgCleartext,
    /// PostgreSQL asked for an MD5 hash of the password.
    PgMd5,
    /// MySQL switched to `mysql_clear_password`.
    MysqlClearPassword,
    /// MySQL asked for `caching_sha2_password` full authentication, where
    /// the password is encrypted with a key the server sends (or sent in
    /// clear inside TLS).
    MysqlServerKey,
    /// MySQL asked for an authentication plugin other than
    /// `mysql_native_password` and `caching_sha2_password`.
    MysqlPlugin,
    /// The server broke the protocol during authentication.
    Malformed,
}

impl Refusal {
    /// What the server asked for.
    fn what(self) -> &'static str {
        match self {
            Refusal::PgCleartext => {
                "asked for the password in clear text (AuthenticationCleartextPassword)"
            }
            Refusal::PgMd5 => {
                "asked for an MD5 hash of the password (AuthenticationMD5Password), \
                 which lets the server or anyone on the path test guesses of the password offline"
            }
            Refusal::MysqlClearPassword => {
                "asked for the password in clear text (authentication plugin mysql_clear_password)"
            }
            Refusal::MysqlServerKey => {
                "asked for caching_sha2_password full authentication, where the password is \
                 encrypted with a public key the server itself sends, or sent as it is inside \
                 TLS (either way the server can read it)"
            }
            Refusal::MysqlPlugin => {
                "asked for an authentication plugin other than mysql_native_password and \
                 caching_sha2_password, or switched plugins twice"
            }
            Refusal::Malformed => "sent a malformed message during authentication",
        }
    }

    /// How to make the server acceptable.
    fn fix(self) -> &'static str {
        match self {
            Refusal::PgCleartext | Refusal::PgMd5 => {
                "configure SCRAM on the server: set password_encryption = 'scram-sha-256' \
                 (the default since PostgreSQL 14), set the user's password again \
                 (ALTER ROLE ... PASSWORD ...) so it is stored as SCRAM, and use \
                 scram-sha-256 (not password or md5) for this user in pg_hba.conf, \
                 replication lines included"
            }
            Refusal::MysqlClearPassword | Refusal::MysqlServerKey | Refusal::MysqlPlugin => {
                "authenticate the user with mysql_native_password \
                 (ALTER USER ... IDENTIFIED WITH mysql_native_password BY ...) or, on MariaDB, \
                 the default mysql_native_password; neither mysql_clear_password nor \
                 caching_sha2_password's full authentication keeps the password from the server \
                 (inside TLS it reaches whoever holds the certificate)"
            }
            Refusal::Malformed => "check that the host and port are those of the database server",
        }
    }

    /// The error a connection to `target` ends with: definite (the same
    /// server answers the same way next time).
    pub(crate) fn error(self, target: &str) -> ConnectorError {
        ConnectorError::definite(format!(
            "{target} {}; backflow never sends a password a server could read, so it did not \
             answer and closed the connection. Fix: {}. If this is not your database server, \
             check the host: a server asking this may be trying to capture the password",
            self.what(),
            self.fix()
        ))
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the server {}", self.what())
    }
}

impl std::error::Error for Refusal {}

/// How long a connection may take from the TCP connect to the end of its
/// login (TLS handshake included) before it is given up as transient: a
/// server that stops answering half-way holds no task forever.
pub(crate) const LOGIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The error of a login that did not finish within [`LOGIN_TIMEOUT`].
pub(crate) fn login_timed_out(target: &str) -> ConnectorError {
    ConnectorError::transient(format!(
        "{target} did not complete the login within {} s (TCP, TLS and authentication); retrying",
        LOGIN_TIMEOUT.as_secs()
    ))
}

/// What a [`Guard`] concluded from the server's bytes so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Still authenticating: pass these bytes on and keep reading.
    Guarding,
    /// Authentication succeeded: pass these bytes on; nothing more to check.
    Authenticated,
    /// End the connection: these bytes must not reach the driver.
    Refused(Refusal),
}

/// Reads what a server sends during authentication, in order, in chunks of
/// any size, and decides before a chunk is passed on.
pub(crate) trait Guard: Send + 'static {
    /// Takes the next bytes from the server. Once it returned
    /// `Authenticated` or `Refused` it is not called again.
    fn server_bytes(&mut self, bytes: &[u8]) -> Verdict;
}

/// The refusal of a guarded connection, once there is one: the guard sets it
/// before the connection closes, so a driver error that follows can be told
/// apart from any other.
#[derive(Debug, Clone, Default)]
pub(crate) struct RefusalSlot(Arc<OnceLock<Refusal>>);

impl RefusalSlot {
    fn set(&self, r: Refusal) {
        let _ = self.0.set(r);
    }

    /// The refusal, if the guard refused.
    pub(crate) fn get(&self) -> Option<Refusal> {
        self.0.get().copied()
    }
}

/// Why a connection ended before authentication for a reason other than
/// the guard's (a failed TLS handshake, a server without TLS), set by
/// whoever ended it so the driver's error that follows can be replaced by
/// it.
#[derive(Debug, Clone, Default)]
pub(crate) struct FailureSlot(Arc<std::sync::Mutex<Option<ConnectorError>>>);

impl FailureSlot {
    pub(crate) fn set(&self, e: ConnectorError) {
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(e);
        }
    }

    /// The failure, if there was one (taken: asked once).
    pub(crate) fn take(&self) -> Option<ConnectorError> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// A stream whose reads pass through a [`Guard`] until authentication
/// succeeded; a refused chunk is withheld and the read fails.
pub(crate) struct Guarded<S, G> {
    inner: S,
    guard: Option<G>,
    refused: RefusalSlot,
}

impl<S, G: Guard> Guarded<S, G> {
    pub(crate) fn new(inner: S, guard: G, refused: RefusalSlot) -> Self {
        Self {
            inner,
            guard: Some(guard),
            refused,
        }
    }
}

impl<S: AsyncRead + Unpin, G: Guard + Unpin> AsyncRead for Guarded<S, G> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(r) = this.refused.get() {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::PermissionDenied, r)));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {}
            other => return other,
        }
        if let Some(guard) = this.guard.as_mut() {
            match guard.server_bytes(&buf.filled()[before..]) {
                Verdict::Guarding => {}
                Verdict::Authenticated => this.guard = None,
                Verdict::Refused(r) => {
                    buf.set_filled(before);
                    this.refused.set(r);
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::PermissionDenied, r)));
                }
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin, G: Unpin> AsyncWrite for Guarded<S, G> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Refuses a NUL character in a connection setting: the wire protocols end
/// each setting with one, so it would start a setting of its own.
pub(crate) fn no_nul(target: &str, key: &str, value: &str) -> Result<(), ConnectorError> {
    if value.contains('\0') {
        return Err(ConnectorError::definite(format!(
            "the {key} of {target} contains a NUL character, which no database accepts in a \
             connection setting; remove it"
        )));
    }
    Ok(())
}

/// A TCP connection to `host:port` with keepalive (a dead server is noticed
/// on an idle connection) and without Nagle's delay, trying each address the
/// name resolves to.
pub(crate) async fn tcp(host: &str, port: u16) -> io::Result<tokio::net::TcpStream> {
    let mut last = None;
    for addr in tokio::net::lookup_host((host, port)).await? {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_keepalive(true)?;
        socket.set_nodelay(true)?;
        match socket.connect(addr).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{host} resolves to no address"),
        )
    }))
}
