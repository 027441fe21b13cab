//! The node's HTTP server: `/metrics`, `/healthz`, `/readyz`; HTTPS on
//! the main listener when `http.tls_cert` and `http.tls_key` are set.
//!
//! `/healthz` answers 200 while the process serves requests (liveness).
//! `/readyz` answers 200 only when every readiness check passes (Kafka
//! reachable, internal topics present), else 503.
//!
//! Metrics and check details name feeds, datasets and subscribers, so on
//! the main listener (`http.listen`, which also serves the API) `/metrics`
//! needs an admin token and `/readyz` tells anonymous callers only
//! ready / not ready (an admin token shows each check). An operator who
//! scrapes without a token binds `http.metrics_listen` to an internal
//! address: there [`ops_router`] serves all three, openly.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// HTTP server settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address the HTTP server listens on: the API, the schema registry,
    /// the dashboard, `/healthz`, `/readyz` (details for admins) and
    /// `/metrics` (admins only).
    pub listen: SocketAddr,
    /// A second address serving `/metrics`, `/healthz` and `/readyz`
    /// without a token, for Prometheus and probes on an internal network;
    /// absent: none.
    pub metrics_listen: Option<SocketAddr>,
    /// PEM certificate chain of the main listener: with `tls_key`, it
    /// serves HTTPS only (the API, the registry, the dashboard carry
    /// tokens and schemas).
    pub tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of `tls_cert` (readable by the node's user only).
    pub tls_key: Option<std::path::PathBuf>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8480)),
            metrics_listen: None,
            tls_cert: None,
            tls_key: None,
        }
    }
}

/// An HTTP client that, given `ca_file` (PEM, one or more certificates),
/// trusts those CAs only (not the system's: a government network's own CA
/// names its servers, and a public CA should not be able to stand in for
/// them); the system's CAs otherwise. The error starts with the file.
pub fn http_client_trusting(
    ca_file: Option<&std::path::Path>,
    timeout: std::time::Duration,
) -> Result<reqwest::Client, String> {
    let mut b = reqwest::Client::builder().timeout(timeout);
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let cas = reqwest::Certificate::from_pem_bundle(&pem)
            .ok()
            .filter(|c| !c.is_empty())
            .ok_or_else(|| format!("{}: not a PEM file of certificates", path.display()))?;
        b = b.tls_built_in_root_certs(false);
        for ca in cas {
            b = b.add_root_certificate(ca);
        }
    }
    b.build().map_err(|e| format!("an HTTP client: {e}"))
}

/// The state of one readiness check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckState {
    /// Not run yet.
    Pending,
    /// Passed.
    Ok,
    /// Failed, with the reason an operator can act on.
    Failing(String),
}

/// Named readiness checks, updated by the tasks that own them.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    checks: Arc<RwLock<BTreeMap<&'static str, CheckState>>>,
}

impl Readiness {
    /// Declares a check; the node is not ready until it passes.
    pub fn register(&self, name: &'static str) {
        self.set(name, CheckState::Pending);
    }

    /// Records a check's latest outcome.
    pub fn set(&self, name: &'static str, state: CheckState) {
        self.checks
            .write()
            .expect("readiness lock not poisoned")
            .insert(name, state);
    }

    fn snapshot(&self) -> BTreeMap<&'static str, CheckState> {
        self.checks
            .read()
            .expect("readiness lock not poisoned")
            .clone()
    }
}

/// What the HTTP handlers share.
#[derive(Clone)]
pub struct HttpState {
    /// Metrics rendered at `/metrics`.
    pub metrics: Metrics,
    /// Checks behind `/readyz`.
    pub readiness: Readiness,
    /// Who may see metrics and check details on the main listener.
    pub auth: crate::auth::Authenticator,
}

/// The operational endpoints of the main listener: `/metrics` and the
/// details of `/readyz` for admins only.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/metrics", get(metrics_for_admins))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz_for_anyone))
        .with_state(state)
}

/// The operational endpoints for `http.metrics_listen`, without tokens.
pub fn ops_router(state: HttpState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// Whether the request carries an admin's token: `Err` is the answer
/// to give otherwise.
async fn admin(state: &HttpState, headers: &HeaderMap) -> Result<(), Response> {
    match state.auth.authenticate(headers).await {
        Ok(crate::auth::Principal::Admin) => Ok(()),
        Ok(p) => Err((
            StatusCode::FORBIDDEN,
            Json(json!({"error": "forbidden", "reason": format!("{} cannot read the metrics: an admin token can, or scrape http.metrics_listen", p.name())})),
        )
            .into_response()),
        Err(e) => Err((
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "unauthorized", "reason": format!("{}; or scrape http.metrics_listen, which needs none", e.0)})),
        )
            .into_response()),
    }
}

async fn metrics_for_admins(State(state): State<HttpState>, headers: HeaderMap) -> Response {
    if let Err(answer) = admin(&state, &headers).await {
        return answer;
    }
    metrics(State(state)).await
}

async fn readyz_for_anyone(State(state): State<HttpState>, headers: HeaderMap) -> Response {
    if headers.contains_key(header::AUTHORIZATION) && admin(&state, &headers).await.is_ok() {
        return readyz(State(state)).await;
    }
    let checks = state.readiness.snapshot();
    let ready = !checks.is_empty() && checks.values().all(|s| *s == CheckState::Ok);
    if ready {
        (StatusCode::OK, Json(json!({ "status": "ready" }))).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "not_ready" })),
        )
            .into_response()
    }
}

async fn metrics(State(state): State<HttpState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

async fn healthz() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}

async fn readyz(State(state): State<HttpState>) -> Response {
    let checks = state.readiness.snapshot();
    let ready = !checks.is_empty() && checks.values().all(|s| *s == CheckState::Ok);
    let body: serde_json::Map<String, serde_json::Value> = checks
        .into_iter()
        .map(|(name, s)| {
            let v = match s {
                CheckState::Pending => json!({ "status": "pending" }),
                CheckState::Ok => json!({ "status": "ok" }),
                CheckState::Failing(reason) => json!({ "status": "failing", "reason": reason }),
            };
            (name.to_owned(), v)
        })
        .collect();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let word = if ready { "ready" } else { "not_ready" };
    (status, Json(json!({ "status": word, "checks": body }))).into_response()
}

/// Serves `router` over plain HTTP on `listener` until `shutdown` is
/// cancelled, with the limits of [`serve_main`]; in-flight requests finish
/// first.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    serve_main(listener, router, None, shutdown).await
}

/// The TLS side of the main listener (`http.tls_cert`, `http.tls_key`):
/// OpenSSL, as librdkafka's TLS is, so one library's security updates cover
/// both; Mozilla's "intermediate" settings (TLS 1.2 and 1.3).
#[derive(Clone)]
pub struct Tls(Arc<openssl::ssl::SslAcceptor>);

impl Tls {
    /// The acceptor of a certificate chain and its key (PEM files); the
    /// error names the setting and what is wrong.
    pub fn from_files(
        cert: &std::path::Path,
        key: &std::path::Path,
    ) -> Result<Self, (&'static str, String)> {
        use openssl::ssl::{SslAcceptor, SslFiletype, SslMethod};
        let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())
            .map_err(|e| ("http.tls_cert", format!("OpenSSL could not be set up: {e}")))?;
        b.set_certificate_chain_file(cert).map_err(|e| {
            (
                "http.tls_cert",
                format!(
                    "{}: not a readable PEM certificate chain ({e})",
                    cert.display()
                ),
            )
        })?;
        b.set_private_key_file(key, SslFiletype::PEM).map_err(|e| {
            (
                "http.tls_key",
                format!("{}: not a readable PEM private key ({e})", key.display()),
            )
        })?;
        b.check_private_key().map_err(|e| {
            (
                "http.tls_key",
                format!(
                    "{} is not the key of the certificate in http.tls_cert ({e})",
                    key.display()
                ),
            )
        })?;
        Ok(Self(Arc::new(b.build())))
    }
}

/// Most connections open at once on one listener.
const MAX_CONNECTIONS: usize = 1024;
/// How long a client has for its TLS handshake.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a client has for each request's headers.
const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Serves `router` on `listener` until `shutdown`, over TLS when `tls` is
/// given: each connection (its TLS handshake and its requests) runs on a
/// task of its own; a client that does not complete its handshake within
/// 10 s, or sends a request's headers slower than 30 s, is dropped (so a
/// slow client cannot hold connections open); at most 1024 connections
/// are open at once, the next waiting in the kernel's backlog. At shutdown
/// no connection is accepted and open ones finish the requests they are
/// in.
pub async fn serve_main(
    listener: TcpListener,
    router: Router,
    tls: Option<Tls>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    serve_limited(listener, router, tls, HEADER_TIMEOUT, shutdown).await
}

/// [`serve_main`] with the header timeout given.
async fn serve_limited(
    listener: TcpListener,
    router: Router,
    tls: Option<Tls>,
    header_timeout: std::time::Duration,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let connections = tokio_util::task::TaskTracker::new();
    let open = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = open.clone().acquire_owned() => p.expect("never closed"),
        };
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting an HTTP connection failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (tls, router, shutdown) = (tls.clone(), router.clone(), shutdown.clone());
        connections.spawn(async move {
            let _permit = permit;
            let Some(tls) = tls else {
                return serve_connection(tcp, router, header_timeout, shutdown).await;
            };
            let Ok(ssl) = openssl::ssl::Ssl::new(tls.0.context()) else {
                return;
            };
            let Ok(mut stream) = tokio_openssl::SslStream::new(ssl, tcp) else {
                return;
            };
            let handshake = std::pin::Pin::new(&mut stream).accept();
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
                Ok(Ok(())) => serve_connection(stream, router, header_timeout, shutdown).await,
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake refused"),
                Err(_) => {}
            }
        });
    }
    connections.close();
    connections.wait().await;
    Ok(())
}

/// HTTP/1.1 on one connection until it closes, or, at shutdown, until the
/// request in progress is answered.
async fn serve_connection<S>(
    stream: S,
    router: Router,
    header_timeout: std::time::Duration,
    shutdown: CancellationToken,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper_util::service::TowerToHyperService::new(router);
    // 30 s for each request's headers (the first and every one after on a
    // kept-alive connection), then the client is dropped.
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A client that sends its headers slower than the timeout is dropped,
    /// on the plain listener as on the TLS one; a prompt one is answered.
    #[tokio::test]
    async fn a_slow_client_is_dropped_and_a_prompt_one_answered() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve_limited(
            listener,
            router,
            None,
            std::time::Duration::from_millis(500),
            shutdown.clone(),
        ));

        let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let mut prompt = tokio::net::TcpStream::connect(addr).await.unwrap();
        prompt
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        prompt.read_to_end(&mut answer).await.unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

        let started = std::time::Instant::now();
        let mut rest = Vec::new();
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            slow.read_to_end(&mut rest),
        )
        .await;
        assert!(read.is_ok(), "the slow client was never dropped");
        assert!(
            !String::from_utf8_lossy(&rest).contains("200 OK"),
            "the slow client was answered"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        shutdown.cancel();
        server.await.unwrap().unwrap();
    }
}
