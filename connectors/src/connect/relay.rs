//! The relay that puts a [`Guard`] in front of a driver that opens its own
//! socket (pgwire-replication, mysql_async).
//!
//! The connection to the server is opened first (so a server that cannot
//! be reached fails with its own error). Then a Unix socket is bound in a
//! new directory of the system's temporary directory, readable by this
//! user only, and the driver is pointed at it. The relay accepts one
//! connection, only from this process (its peer credentials), and removes
//! the socket and directory at once; another local user cannot connect, and
//! no other process of this user can take the driver's place. It passes the
//! server's bytes through the guard until authentication succeeded (a
//! refused chunk never reaches the driver: the relay records the refusal
//! and closes both sides) and then copies bytes both ways until either side
//! closes.

use std::future::Future;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use super::{FailureSlot, Guard, RefusalSlot, Verdict};

/// How long the relay waits for the driver to connect.
const ACCEPT_WAIT: Duration = Duration::from_secs(30);

/// Copy buffer per direction once authenticated (a replication or binlog
/// stream moves large chunks).
const COPY_BUFFER: usize = 64 * 1024;

/// A relay waiting for the driver.
pub(crate) struct Relay {
    /// The directory holding the socket.
    pub(crate) dir: PathBuf,
    /// The socket (`dir` joined with the file name given).
    pub(crate) socket: PathBuf,
    /// The guard's refusal, once it refused.
    pub(crate) refused: RefusalSlot,
    /// Any other reason the relay ended the connection before
    /// authentication (a TLS handshake that failed, a server without TLS).
    pub(crate) failed: FailureSlot,
}

/// Where a relay's conversation records why it ended a connection.
#[derive(Clone, Default)]
pub(crate) struct Outcome {
    pub(crate) refused: RefusalSlot,
    pub(crate) failed: FailureSlot,
}

/// Removes the socket and its directory when dropped.
struct SocketDir {
    dir: PathBuf,
    socket: PathBuf,
}

impl Drop for SocketDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// A new directory only this user can enter, under the temporary directory.
fn private_dir() -> io::Result<PathBuf> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let base = std::env::temp_dir();
    let mut last = None;
    for _ in 0..100 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = base.join(format!("backflow-{}-{n}", std::process::id()));
        // mkdir fails on an existing name, so nobody can have prepared it.
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no free directory name")))
}

/// Starts a relay to `upstream` (already connected to the server) whose
/// socket is `<new dir>/<file>`, guarded by `guard`.
pub(crate) fn start<U, G>(upstream: U, guard: G, file: &str) -> io::Result<Relay>
where
    U: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    G: Guard,
{
    start_with(file, move |mut client, outcome: Outcome| async move {
        let mut upstream = upstream;
        let mut guard = guard;
        pipe(&mut client, &mut upstream, &mut guard, &outcome.refused).await
    })
}

/// Starts a relay whose socket is `<new dir>/<file>` and which, once the
/// driver connected, hands its connection to `conversation` (for a
/// protocol whose relay must do more than guard and copy).
pub(crate) fn start_with<F, Fut>(file: &str, conversation: F) -> io::Result<Relay>
where
    F: FnOnce(UnixStream, Outcome) -> Fut + Send + 'static,
    Fut: Future<Output = io::Result<()>> + Send + 'static,
{
    let dir = private_dir()?;
    let socket = dir.join(file);
    let cleanup = SocketDir {
        dir: dir.clone(),
        socket: socket.clone(),
    };
    let listener = UnixListener::bind(&socket)?;
    let outcome = Outcome::default();
    let slots = outcome.clone();
    tokio::spawn(async move {
        let accepted = tokio::time::timeout(ACCEPT_WAIT, accept(&listener)).await;
        drop(listener);
        drop(cleanup);
        let Ok(Ok(client)) = accepted else {
            return;
        };
        if let Err(e) = conversation(client, slots).await {
            tracing::debug!(error = %e, "database relay ended");
        }
    });
    Ok(Relay {
        dir,
        socket,
        refused: outcome.refused,
        failed: outcome.failed,
    })
}

/// Accepts the driver's connection (from this process only).
async fn accept(listener: &UnixListener) -> io::Result<UnixStream> {
    loop {
        let (stream, _) = listener.accept().await?;
        let ours = stream
            .peer_cred()
            .ok()
            .and_then(|c| c.pid())
            .is_some_and(|pid| u32::try_from(pid).ok() == Some(std::process::id()));
        if ours {
            return Ok(stream);
        }
        tracing::warn!(
            "a process other than this one connected to a database relay socket; closed it"
        );
    }
}

/// Passes the server's bytes through `guard` until authentication
/// succeeded, then copies both ways.
async fn pipe<U, G>(
    client: &mut UnixStream,
    upstream: &mut U,
    guard: &mut G,
    refused: &RefusalSlot,
) -> io::Result<()>
where
    U: AsyncRead + AsyncWrite + Unpin,
    G: Guard,
{
    let login = guard_login(client, upstream, guard, refused);
    match tokio::time::timeout(super::LOGIN_TIMEOUT, login).await {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) | Err(_) => return Ok(()),
        Ok(Err(e)) => return Err(e),
    }
    tokio::io::copy_bidirectional_with_sizes(client, upstream, COPY_BUFFER, COPY_BUFFER).await?;
    Ok(())
}

/// Passes bytes both ways, the server's through `guard`; `true` once
/// authentication succeeded, `false` when the connection ended before.
async fn guard_login<U, G>(
    client: &mut UnixStream,
    upstream: &mut U,
    guard: &mut G,
    refused: &RefusalSlot,
) -> io::Result<bool>
where
    U: AsyncRead + AsyncWrite + Unpin,
    G: Guard,
{
    let mut from_client = vec![0u8; 8192];
    let mut from_server = vec![0u8; 8192];
    loop {
        tokio::select! {
            n = client.read(&mut from_client) => {
                let n = n?;
                if n == 0 {
                    return Ok(false);
                }
                upstream.write_all(&from_client[..n]).await?;
            }
            n = upstream.read(&mut from_server) => {
                let n = n?;
                if n == 0 {
                    return Ok(false);
                }
                match guard.server_bytes(&from_server[..n]) {
                    Verdict::Guarding => client.write_all(&from_server[..n]).await?,
                    Verdict::Authenticated => {
                        client.write_all(&from_server[..n]).await?;
                        return Ok(true);
                    }
                    // Recorded before both sides close, so the driver's
                    // error that follows finds it.
                    Verdict::Refused(r) => {
                        refused.set(r);
                        return Ok(false);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::time::Instant;

    use tokio::net::{TcpListener, TcpStream};

    use super::super::Refusal;
    use super::*;

    /// Refuses the chunk holding an `X`.
    struct RefuseX;

    impl Guard for RefuseX {
        fn server_bytes(&mut self, bytes: &[u8]) -> Verdict {
            if bytes.contains(&b'X') {
                Verdict::Refused(Refusal::Malformed)
            } else {
                Verdict::Guarding
            }
        }
    }

    #[tokio::test]
    async fn relay_is_private_single_use_and_withholds_a_refused_chunk() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        let relay = start(upstream, RefuseX, "test.sock").unwrap();
        let mode = std::fs::metadata(&relay.dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "only this user may enter");

        let mut client = UnixStream::connect(&relay.socket).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while relay.dir.exists() {
            assert!(
                Instant::now() < deadline,
                "the socket outlived its one connection"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }

        let mut buf = [0u8; 5];
        client.write_all(b"hello").await.unwrap();
        server.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
        server.write_all(b"fine").await.unwrap();
        client.read_exact(&mut buf[..4]).await.unwrap();
        assert_eq!(&buf[..4], b"fine");

        server.write_all(b"secret X").await.unwrap();
        let mut rest = Vec::new();
        let _ = client.read_to_end(&mut rest).await;
        assert!(rest.is_empty(), "the refused chunk reached the client");
        assert_eq!(relay.refused.get(), Some(Refusal::Malformed));
        let mut after = Vec::new();
        let _ = server.read_to_end(&mut after).await;
        assert!(
            after.is_empty(),
            "the relay wrote to the server after refusing"
        );
    }
}
