//! TLS to database servers: the `sslmode` and `ssl_ca_file` of every
//! PostgreSQL and MySQL/MariaDB connection.
//!
//! The handshake is made here, over the socket this module's caller opened,
//! and never by a driver: the password guard (parent module) must read the
//! server's authentication requests, and inside a driver's TLS it could not.
//! So the guard always sits on the clear side of the TLS session.
//!
//! Modes, as in libpq:
//! - `disable`: no TLS (the default, as before; `config check` and the log
//!   say so for a server that is not on this machine).
//! - `require`: encrypted, the server's certificate not checked. Protects
//!   against a passive listener only.
//! - `verify-ca`: the certificate must chain to a trusted CA.
//! - `verify-full`: and name the host connected to (DNS name or IP address
//!   in its subject alternative names). The mode for any network a
//!   government does not own end to end.
//!
//! Trusted CAs are those of `ssl_ca_file` (PEM, one or more certificates)
//! and only those when it is set; the system's otherwise. A server that
//! does not offer TLS under any mode but `disable` ends the connection with
//! a definite error: there is no silent fallback to clear text.
//!
//! OpenSSL (through the `openssl` crate) rather than rustls: the binary
//! already links it for Kafka (librdkafka) and HTTPS, and one TLS stack
//! keeps one set of CA handling and one library to patch.

use std::path::{Path, PathBuf};
use std::pin::Pin;

use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode, SslVersion};
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::{X509VerifyResult, X509};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_openssl::SslStream;

use crate::ConnectorError;

/// Whether and how a database connection uses TLS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// No TLS.
    #[default]
    Disable,
    /// TLS, the certificate not checked.
    Require,
    /// TLS, the certificate chains to a trusted CA.
    VerifyCa,
    /// TLS, the certificate chains to a trusted CA and names the host.
    VerifyFull,
}

impl SslMode {
    /// The mode as written in configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// The TLS settings of one connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DbTls {
    pub mode: SslMode,
    /// PEM file of the CAs to trust (instead of the system's).
    pub ca_file: Option<PathBuf>,
}

impl DbTls {
    pub fn new(mode: SslMode, ca_file: Option<&str>) -> Self {
        Self {
            mode,
            ca_file: ca_file.map(PathBuf::from),
        }
    }

    /// Whether connections use TLS.
    pub fn enabled(&self) -> bool {
        self.mode != SslMode::Disable
    }

    /// Checks the settings without connecting: a CA file that cannot be
    /// read or holds no certificate is named here, at startup. The error
    /// is the key at fault (`ssl_ca_file`) and why.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if let Some(path) = &self.ca_file {
            if !self.enabled() {
                return Err((
                    "ssl_ca_file",
                    "is set but sslmode is \"disable\": set sslmode to \"verify-full\" (or \"verify-ca\") to use it, or remove ssl_ca_file".to_owned(),
                ));
            }
            check_ca_file(path).map_err(|e| ("ssl_ca_file", e))?;
        }
        Ok(())
    }

    /// Logs, once per server and process, that connections to `host` are
    /// not encrypted although it is not on this machine.
    pub(crate) fn warn_if_clear(&self, host: &str, port: u16) {
        static WARNED: std::sync::Mutex<Vec<(String, u16)>> = std::sync::Mutex::new(Vec::new());
        if self.enabled() || is_local(host) {
            return;
        }
        let mut warned = WARNED.lock().unwrap_or_else(|p| p.into_inner());
        if warned.iter().any(|(h, p)| h == host && *p == port) {
            return;
        }
        warned.push((host.to_owned(), port));
        tracing::warn!(
            host,
            port,
            "database connections to this server are not encrypted (sslmode = \"disable\"): set sslmode = \"verify-full\" and ssl_ca_file"
        );
    }

    fn connector(&self) -> Result<SslConnector, String> {
        let mut b = SslConnector::builder(SslMethod::tls_client())
            .map_err(|e| format!("cannot set up TLS: {e}"))?;
        b.set_min_proto_version(Some(SslVersion::TLS1_2))
            .map_err(|e| format!("cannot set up TLS: {e}"))?;
        match self.mode {
            SslMode::Disable | SslMode::Require => b.set_verify(SslVerifyMode::NONE),
            SslMode::VerifyCa | SslMode::VerifyFull => {
                b.set_verify(SslVerifyMode::PEER);
                if let Some(path) = &self.ca_file {
                    let mut store =
                        X509StoreBuilder::new().map_err(|e| format!("cannot set up TLS: {e}"))?;
                    for ca in read_cas(path)? {
                        store
                            .add_cert(ca)
                            .map_err(|e| format!("{}: {e}", path.display()))?;
                    }
                    b.set_verify_cert_store(store.build())
                        .map_err(|e| format!("cannot set up TLS: {e}"))?;
                }
            }
        }
        Ok(b.build())
    }

    /// A TLS session over `stream` to `host` (the name or address the
    /// certificate must hold under `verify-full`). Errors say what failed
    /// and how to fix it; `target` names the server in them.
    pub(crate) async fn handshake<S>(
        &self,
        stream: S,
        host: &str,
        target: &str,
    ) -> Result<SslStream<S>, ConnectorError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let connector = self.connector().map_err(|e| {
            ConnectorError::definite(format!("TLS to {target} ({}): {e}", self.mode.as_str()))
        })?;
        let mut config = connector.configure().map_err(|e| {
            ConnectorError::definite(format!("TLS to {target}: cannot set up TLS: {e}"))
        })?;
        if self.mode != SslMode::VerifyFull {
            config.set_verify_hostname(false);
        }
        // SNI is sent for names, not addresses (RFC 6066).
        config.set_use_server_name_indication(host.parse::<std::net::IpAddr>().is_err());
        let ssl = config.into_ssl(host).map_err(|e| {
            ConnectorError::definite(format!("TLS to {target}: cannot set up TLS: {e}"))
        })?;
        let mut tls = SslStream::new(ssl, stream).map_err(|e| {
            ConnectorError::definite(format!("TLS to {target}: cannot set up TLS: {e}"))
        })?;
        match Pin::new(&mut tls).connect().await {
            Ok(()) => Ok(tls),
            Err(e) => {
                let verify = tls.ssl().verify_result();
                Err(self.failure(target, host, verify, e))
            }
        }
    }

    fn failure(
        &self,
        target: &str,
        host: &str,
        verify: X509VerifyResult,
        e: openssl::ssl::Error,
    ) -> ConnectorError {
        let mode = self.mode.as_str();
        if verify != X509VerifyResult::OK {
            let cas = match &self.ca_file {
                Some(p) => format!("the CAs of ssl_ca_file ({})", p.display()),
                None => "the system's CAs (set ssl_ca_file to your CA's PEM file)".to_owned(),
            };
            let hint = if verify.as_raw() == 62 {
                // X509_V_ERR_HOSTNAME_MISMATCH
                format!(
                    "the certificate does not name {host}: connect by a name or address the certificate holds, or issue the server a certificate that names {host}"
                )
            } else {
                format!("the server's certificate must chain to {cas}")
            };
            return ConnectorError::definite(format!(
                "TLS to {target} failed (sslmode {mode}): the server's certificate was not accepted: {}; {hint}",
                verify.error_string()
            ))
            .with_source(e);
        }
        match e.code() {
            openssl::ssl::ErrorCode::SSL => ConnectorError::definite(format!(
                "TLS to {target} failed (sslmode {mode}): {e}; check that the server's TLS is set up (a certificate and key, TLS 1.2 or later)"
            ))
            .with_source(e),
            _ => ConnectorError::transient(format!(
                "TLS to {target} failed (sslmode {mode}): the connection broke during the handshake: {e}"
            ))
            .with_source(e),
        }
    }

    /// The error for a server that does not offer TLS.
    pub(crate) fn not_offered(&self, target: &str) -> ConnectorError {
        ConnectorError::definite(format!(
            "{target} does not accept TLS connections, and sslmode is \"{}\": enable TLS on the server (PostgreSQL: ssl = on with ssl_cert_file and ssl_key_file; MariaDB/MySQL: ssl_cert and ssl_key), or set sslmode = \"disable\" if this connection never leaves a trusted network",
            self.mode.as_str()
        ))
    }
}

/// Whether `host` is this machine: a loopback address, `localhost`, or a
/// Unix socket directory.
fn is_local(host: &str) -> bool {
    host.starts_with('/')
        || host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Checks that `path` is a readable PEM file of certificates; the error
/// says what is wrong (never what the file holds).
pub fn check_ca_file(path: &Path) -> Result<(), String> {
    read_cas(path).map(|_| ())
}

/// The largest CA file read: a bundle of every public CA is about 200 KiB.
const MAX_CA_FILE: u64 = 1024 * 1024;

/// The certificates of a PEM file (a regular file of at most 1 MiB: never
/// a device or a pipe that would not end).
fn read_cas(path: &Path) -> Result<Vec<X509>, String> {
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !meta.is_file() || meta.len() > MAX_CA_FILE {
        return Err(format!(
            "{} is not a regular file of at most 1 MiB",
            path.display()
        ));
    }
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    match X509::stack_from_pem(&pem) {
        Ok(cas) if !cas.is_empty() => Ok(cas),
        _ => Err(format!(
            "{} is not a PEM file of certificates (-----BEGIN CERTIFICATE----- ...)",
            path.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_reads_as_libpq_writes_it() {
        for (text, mode) in [
            ("\"disable\"", SslMode::Disable),
            ("\"require\"", SslMode::Require),
            ("\"verify-ca\"", SslMode::VerifyCa),
            ("\"verify-full\"", SslMode::VerifyFull),
        ] {
            assert_eq!(serde_json::from_str::<SslMode>(text).unwrap(), mode);
            assert_eq!(format!("\"{}\"", mode.as_str()), text);
        }
        assert!(serde_json::from_str::<SslMode>("\"prefer\"").is_err());
    }

    #[test]
    fn only_this_machine_is_local() {
        for host in ["127.0.0.1", "::1", "localhost", "/var/run/postgresql"] {
            assert!(is_local(host), "{host}");
        }
        for host in ["10.0.0.5", "db.gongan.local", "127.0.0.1.example.com"] {
            assert!(!is_local(host), "{host}");
        }
    }

    #[test]
    fn check_names_the_key_of_an_unusable_ca_file() {
        let dir = std::env::temp_dir().join(format!("bf-tls-check-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let not_pem = dir.join("key.txt");
        std::fs::write(&not_pem, "not a certificate").unwrap();
        let t = DbTls::new(SslMode::VerifyFull, not_pem.to_str());
        let (key, e) = t.check().unwrap_err();
        assert_eq!(key, "ssl_ca_file");
        assert!(e.contains("not a PEM file"), "{e}");
        // Never echoes the file's content.
        assert!(!e.contains("not a certificate"), "{e}");
        let missing = DbTls::new(SslMode::VerifyCa, Some("/nonexistent/ca.pem"));
        assert!(missing.check().unwrap_err().1.contains("cannot read"));
        for device in ["/dev/zero", "/dev/stdin", "/proc/self"] {
            let t = DbTls::new(SslMode::VerifyFull, Some(device));
            assert!(
                t.check().unwrap_err().1.contains("not a regular file"),
                "{device}"
            );
        }
        let unused = DbTls::new(SslMode::Disable, Some("/nonexistent/ca.pem"));
        assert!(unused.check().unwrap_err().1.contains("sslmode"));
        assert_eq!(DbTls::default().check(), Ok(()));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
