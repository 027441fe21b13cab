//! A PostgreSQL server of the test's own (initdb in a temporary directory,
//! its own port), for tests that restart or crash the server: the
//! machine's shared server serves every other test running in parallel.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

/// A private PostgreSQL 15 server with `wal_level=logical`, trust
/// authentication for `postgres` on 127.0.0.1; stopped when dropped.
pub struct PgServer {
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    root: bool,
    bin: PathBuf,
    data: PathBuf,
    _dir: tempfile::TempDir,
}

fn bindir() -> anyhow::Result<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL server binaries not found under /usr/lib/postgresql")?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|b| b.join("initdb").exists())
        .collect();
    found.sort();
    found
        .pop()
        .context("no initdb under /usr/lib/postgresql/*/bin")
}

/// Whether this process runs as root: the owner of a directory it made.
fn is_root(made: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(made).is_ok_and(|m| m.uid() == 0)
}

/// `program` run as the `postgres` OS user when this process is root (the
/// server refuses to run as root).
fn as_postgres(program: &Path, root: bool) -> Command {
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn run(mut cmd: Command, what: &str) -> anyhow::Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("{what}: cannot run"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

impl PgServer {
    /// initdb and start.
    pub fn start() -> anyhow::Result<Self> {
        let bin = bindir()?;
        let dir = tempfile::Builder::new().prefix("backflow-pg-").tempdir()?;
        let data = dir.path().join("data");
        let root = is_root(dir.path());
        if root {
            let mut chown = Command::new("chown");
            chown.arg("postgres:postgres").arg(dir.path());
            run(chown, "chown of the server's directory")?;
        }
        let mut initdb = as_postgres(&bin.join("initdb"), root);
        initdb
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
                "-D",
            ])
            .arg(&data);
        run(initdb, "initdb")?;
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            l.local_addr()?.port()
        };
        let server = Self {
            port,
            root,
            bin,
            data,
            _dir: dir,
        };
        server.pg_ctl_start()?;
        Ok(server)
    }

    fn pg_ctl_start(&self) -> anyhow::Result<()> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c wal_level=logical -c max_replication_slots=8 -c max_wal_senders=8 -c fsync=off",
            self.port,
            self.data.parent().expect("data has a parent").display()
        );
        let mut c = as_postgres(&self.bin.join("pg_ctl"), self.root);
        c.args(["start", "-w", "-t", "60", "-D"])
            .arg(&self.data)
            .arg("-l")
            .arg(self.data.parent().expect("data has a parent").join("log"))
            .args(["-o", &options]);
        run(c, "pg_ctl start")
    }

    fn pg_ctl_stop(&self, mode: &str) -> anyhow::Result<()> {
        let mut c = as_postgres(&self.bin.join("pg_ctl"), self.root);
        c.args(["stop", "-w", "-t", "60", "-m", mode, "-D"])
            .arg(&self.data);
        run(c, "pg_ctl stop")
    }

    /// Stops the server the way a crash does (`immediate`: no checkpoint,
    /// every connection cut; recovery replays the WAL on start), or
    /// cleanly (`fast`), then starts it again.
    pub fn restart(&self, mode: &str) -> anyhow::Result<()> {
        self.pg_ctl_stop(mode)?;
        self.pg_ctl_start()
    }

    /// Connects to `database` as `postgres`.
    pub async fn connect(&self, database: &str) -> anyhow::Result<tokio_postgres::Client> {
        let (client, conn) = tokio_postgres::Config::new()
            .host("127.0.0.1")
            .port(self.port)
            .user("postgres")
            .dbname(database)
            .connect(tokio_postgres::NoTls)
            .await
            .with_context(|| format!("connect to {database} on port {}", self.port))?;
        tokio::spawn(conn);
        Ok(client)
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data.parent().expect("data has a parent").join("log"))
            .unwrap_or_default()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = self.pg_ctl_stop("immediate");
    }
}
