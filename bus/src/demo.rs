//! `backflow demo`: the whole hierarchy in one process, with nothing to
//! install.
//!
//! - a province public-security department's SQLite database (table
//!   `people`), changed continuously by a generator: people register, move
//!   between districts, change their phone numbers;
//! - province 330000: a `poll` feed on that database (SQLite has no change
//!   log) and a share with city 330100: its residents only, name and
//!   identity number masked, income withheld;
//! - city 330100: a cascading subscription (sink `kafka`) that re-publishes
//!   the province's share into its own bus, and shares with districts
//!   330106 and 330108: each its own residents, the phone hashed;
//! - districts 330106 and 330108: `backflow subscribe` into their own
//!   SQLite databases.
//!
//! Each level runs on its own embedded in-memory broker (topic names are
//! not scoped by node, so levels never share a cluster). The demo writes
//! each level's configuration next to the databases, so what it runs can be
//! read and reused. Every run starts from empty databases. The city and the
//! districts read their upper level's schema registry with a token of their
//! own, random per run, from `BACKFLOW_DEMO_TOKEN_<code>` (the configurations
//! name the variable; the upper level's holds the token's SHA-256).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};
use backflow::config::Config;
use tokio_util::sync::CancellationToken;

/// Province, city and districts, by division code.
const PROVINCE: &str = "330000";
pub const CITY: &str = "330100";
pub const DISTRICTS: [(&str, &str); 2] = [("330106", "西湖区"), ("330108", "滨江区")];
/// Where the generated residents live: the two demo districts, another
/// district of the city (shared with the city, not with either district),
/// and two districts of other cities (never leave the province).
const REGIONS: [&str; 5] = ["330106", "330108", "330102", "330205", "330302"];
const DATASET: &str = "gongan.people";
/// The principal of the dataset's owner, the public security department.
const OWNER: &str = "owner:gongan";
/// Residents registered before the nodes start (the initial snapshot).
const INITIAL: u32 = 300;

/// What `backflow demo` was asked for.
pub struct Options {
    /// Directory for the databases and configurations (emptied of the
    /// demo's previous files first).
    pub dir: PathBuf,
    /// HTTP port of the province; the city and districts take the next
    /// three. 0: ports chosen by the system.
    pub port: u16,
    /// Changes the generator makes per second.
    pub rate: f64,
}

/// Runs the demo until `shutdown`.
pub async fn run(options: Options, shutdown: CancellationToken) -> anyhow::Result<()> {
    let dir = &options.dir;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the demo directory {}", dir.display()))?;
    let department = fresh_databases(dir)?;
    let generator = Generator::create(&department)?;
    // One admin token for both dashboards, random per run; the
    // configurations hold only its SHA-256.
    let token = random_token();
    // The department's data owner signs in at the province with a token
    // of its own (random per run too), to decide requests.
    let owner_token = random_token();
    // Each lower level reads its upper level's schema registry with the
    // token the upper level knows it by (random per run, in
    // BACKFLOW_DEMO_TOKEN_<code>, set by `backflow demo`); a district's
    // clerk signs in at the city with the same token.
    let auth = |subscribers: &[&str], owner: bool| -> anyhow::Result<String> {
        let mut tokens = vec![format!(
            "{{ principal = \"admin\", sha256 = \"{}\" }}",
            backflow::auth::token_hash(&token)
        )];
        if owner {
            tokens.push(format!(
                "{{ principal = \"{OWNER}\", sha256 = \"{}\" }}",
                backflow::auth::token_hash(&owner_token)
            ));
        }
        for code in subscribers {
            let var = token_var(code);
            let t = std::env::var(&var)
                .with_context(|| format!("{var} is not set (backflow demo sets it)"))?;
            tokens.push(format!(
                "{{ principal = \"subscriber:{code}\", sha256 = \"{}\" }}",
                backflow::auth::token_hash(&t)
            ));
        }
        Ok(format!("\n[auth]\ntokens = [{}]\n", tokens.join(", ")))
    };
    let districts_codes: Vec<&str> = DISTRICTS.iter().map(|(code, _)| *code).collect();
    let port = |i: u16| {
        if options.port == 0 {
            0
        } else {
            options.port + i
        }
    };
    // Levels in start order; they stop in reverse, lower levels first, so
    // no subscription loses its upstream broker while it still reads.
    let mut nodes = Nodes::default();

    // Province: the department's feed and the share with the city.
    let province_toml = format!(
        "[node]\ncode = \"{PROVINCE}\"\nname = \"浙江省 (demo)\"\n\n[http]\nlisten = \"127.0.0.1:{}\"\n\n\
         [[feeds]]\ntype = \"poll\"\nname = \"gongan-hukou\"\nengine = \"sqlite\"\npath = \"{}\"\n\
         poll_interval_ms = 200\ndelay_ms = 300\nkey_diff_interval_secs = 10\n\n\
         [[feeds.tables]]\ntable = \"people\"\ndataset = \"{DATASET}\"\nmode = \"timestamp+incrementing\"\ntimestamp_column = \"updated_at\"\n\n\
         [[shares]]\nsubscriber = \"{CITY}\"\ndataset = \"{DATASET}\"\nregion_column = \"region_code\"\nonward = \"within_jurisdiction\"\n\
         fields = {{ id = \"plain\", name = \"masked:name\", id_number = \"masked:keep(6,4)\", phone = \"plain\", region_code = \"plain\", updated_at = \"plain\" }}\n",
        port(0),
        department.display(),
    ) + &auth(&[CITY], true)?;
    let province = start_node(
        dir,
        "province-330000",
        &province_toml,
        Level::Node,
        &mut nodes,
    )
    .await?;

    // City: re-publishes the province's share into its own bus and shares
    // on with its districts.
    let mut city_toml = format!(
        "[node]\ncode = \"{CITY}\"\nname = \"杭州市 (demo)\"\nparent = \"{PROVINCE}\"\n\n[http]\nlisten = \"127.0.0.1:{}\"\n\n\
         [[subscriptions]]\nname = \"city-{CITY}-from-{PROVINCE}\"\n\
         upstream = {{ brokers = \"{}\", registry_url = \"http://{}\", registry_token_env = \"{}\" }}\n\
         sink = {{ type = \"kafka\" }}\n\
         tables = [{{ topic = \"backflow.share.{CITY}.{DATASET}\" }}]\n",
        port(1),
        province.bootstrap,
        province.http,
        token_var(CITY),
    ) + &auth(&districts_codes, false)?;
    for (code, _) in DISTRICTS {
        city_toml.push_str(&format!(
            "\n[[shares]]\nsubscriber = \"{code}\"\ndataset = \"{DATASET}\"\nregion_column = \"region_code\"\n\
             fields = {{ id = \"plain\", name = \"masked:name\", id_number = \"masked:keep(6,4)\", phone = \"hashed\", region_code = \"plain\", updated_at = \"plain\" }}\n\
             secret_env = \"BACKFLOW_DEMO_SECRET_{code}\"\n"
        ));
    }
    let city = start_node(dir, "city-330100", &city_toml, Level::Node, &mut nodes).await?;

    // Districts: their residents into their own databases.
    let mut districts = Vec::new();
    for (i, (code, name)) in DISTRICTS.iter().enumerate() {
        let db = district_db(dir, code);
        let toml = format!(
            "[http]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:{}\"\n\n\
             [[subscriptions]]\nname = \"district-{code}\"\n\
             upstream = {{ brokers = \"{}\", registry_url = \"http://{}\", registry_token_env = \"{}\" }}\n\
             sink = {{ type = \"sqlite\", path = \"{}\" }}\n\
             tables = [{{ topic = \"backflow.share.{code}.{DATASET}\", table = \"people\" }}]\n",
            port(2 + i as u16),
            city.bootstrap,
            city.http,
            token_var(code),
            db.display(),
        );
        let started = start_node(
            dir,
            &format!("district-{code}"),
            &toml,
            Level::Subscriber,
            &mut nodes,
        )
        .await?;
        districts.push((*code, *name, db, started));
    }

    let tokens = Tokens {
        admin: &token,
        owner: &owner_token,
    };
    print_banner(&department, &tokens, &province, &city, &districts);

    let outcome = generate(generator, options.rate, &districts, &mut nodes, &shutdown).await;
    nodes.stop().await;
    if outcome.is_ok() {
        println!();
        println!(
            "demo stopped; the databases stay in {} (sqlite3 {} 'select * from people')",
            dir.display(),
            districts[0].2.display()
        );
    }
    outcome
}

/// The demo's department database and the districts' databases, none
/// left from an earlier run; the department's path.
fn fresh_databases(dir: &Path) -> anyhow::Result<PathBuf> {
    let department = dir.join("province-gongan.db");
    let mut files = vec![department.clone()];
    files.extend(DISTRICTS.iter().map(|(code, _)| district_db(dir, code)));
    for f in &files {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let p = PathBuf::from(format!("{}{suffix}", f.display()));
            if p.exists() {
                std::fs::remove_file(&p)
                    .with_context(|| format!("cannot remove {} of an earlier run", p.display()))?;
            }
        }
    }
    Ok(department)
}

/// A token of 32 random letters and digits.
fn random_token() -> String {
    std::iter::repeat_with(fastrand::alphanumeric)
        .take(32)
        .collect()
}

/// The demo's sign-in tokens besides the districts' (in their variables).
struct Tokens<'a> {
    admin: &'a str,
    owner: &'a str,
}

/// What runs where, printed once everything started.
fn print_banner(
    department: &Path,
    tokens: &Tokens<'_>,
    province: &Started,
    city: &Started,
    districts: &[District],
) {
    let token = tokens.admin;
    println!();
    println!("backflow demo: province {PROVINCE} → city {CITY} → districts 330106, 330108, in this process,");
    println!("each level on its own embedded in-memory broker (nothing is kept when it stops).");
    println!();
    println!(
        "  department   {}  (SQLite, table people; a generator registers people, moves them, changes phones)",
        department.display()
    );
    println!(
        "  province     dashboard http://{}/#token={token}   config {}",
        province.http, province.config
    );
    println!(
        "  city         dashboard http://{}/#token={token}   config {}",
        city.http, city.config
    );
    for (code, name, db, started) in districts {
        println!(
            "  {code} {name}  database {}   metrics http://{}/metrics",
            db.display(),
            started.http
        );
    }
    println!();
    println!("  sign in as each role (tokens random per run):");
    println!(
        "    {OWNER:<18} http://{}/#token={}   decides requests for {DATASET}",
        province.http, tokens.owner
    );
    for (code, _, _, _) in districts {
        if let Ok(t) = std::env::var(token_var(code)) {
            println!(
                "    subscriber:{code}  http://{}/#token={t}   requests and follows datasets",
                city.http
            );
        }
    }
    println!();
    println!("  policies  province → city: residents of 3301xx; name and identity number masked; income withheld");
    println!("            city → district: the district's own residents; phone hashed (HMAC, a key per district)");
    println!();
    println!("Open the dashboards to watch lag; Ctrl-C stops everything.");
    println!();
}

/// A district as the demo shows it: code, name, database, its process.
type District = (&'static str, &'static str, PathBuf, Started);

/// Makes `rate` changes per second in the department's database and prints
/// a line every 5 s on what the districts hold, until `shutdown` or a
/// level stops by itself.
async fn generate(
    mut generator: Generator,
    rate: f64,
    districts: &[District],
    nodes: &mut Nodes,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    // The change generator and a line per 5 s on what the districts hold.
    let started = Instant::now();
    let every = Duration::from_secs_f64(1.0 / rate.max(0.1));
    let mut change = tokio::time::interval(every);
    let mut show = tokio::time::interval(Duration::from_secs(5));
    show.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            _ = change.tick() => {
                if let Err(e) = generator.change() {
                    break Err(e);
                }
            }
            _ = show.tick() => {
                let mut line = format!(
                    "[{:>4}s] department: {} residents, {} changes",
                    started.elapsed().as_secs(),
                    generator.residents,
                    generator.changes
                );
                for (code, _, db, _) in districts {
                    line.push_str(&format!(" │ {code}: {}", district_summary(db)));
                }
                println!("{line}");
            }
            Some(name) = nodes.ended.recv() => {
                break Err(anyhow!("{name} stopped by itself; see the log above"));
            }
        }
    }
}

impl Nodes {
    /// Stops the levels in reverse start order, lower levels first, so no
    /// subscription loses its upstream broker while it still reads.
    async fn stop(self) {
        for (name, token, task) in self.running.into_iter().rev() {
            token.cancel();
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => eprintln!("while stopping {name}: {e:#}"),
                Err(e) => eprintln!("while stopping {name}: {e}"),
            }
        }
    }
}

fn district_db(dir: &Path, code: &str) -> PathBuf {
    dir.join(format!("district-{code}.db"))
}

/// One district's row count and its most recently changed resident, as
/// the district holds it (masked and hashed by the policies).
fn district_summary(db: &Path) -> String {
    let read = || -> rusqlite::Result<String> {
        let c =
            rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        let n: i64 = c.query_row("SELECT count(*) FROM people", [], |r| r.get(0))?;
        let latest = c
            .query_row(
                "SELECT name, id_number, substr(phone, 1, 8) FROM people ORDER BY updated_at DESC, id DESC LIMIT 1",
                [],
                |r| Ok(format!("{} {} phone {}…", r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?)),
            )
            .unwrap_or_default();
        Ok(format!("{n} rows, latest {latest}"))
    };
    read().unwrap_or_else(|_| "waiting for the first rows".to_owned())
}

#[derive(Clone, Copy, PartialEq)]
enum Level {
    Node,
    Subscriber,
}

/// The running levels and a channel on which each says it ended.
struct Nodes {
    running: Vec<(
        String,
        CancellationToken,
        tokio::task::JoinHandle<anyhow::Result<()>>,
    )>,
    ended_tx: tokio::sync::mpsc::UnboundedSender<String>,
    ended: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl Default for Nodes {
    fn default() -> Self {
        let (ended_tx, ended) = tokio::sync::mpsc::unbounded_channel();
        Self {
            running: Vec::new(),
            ended_tx,
            ended,
        }
    }
}

/// A started level: its HTTP address, its Kafka bootstrap (nodes only) and
/// the path of the configuration it runs.
struct Started {
    http: SocketAddr,
    bootstrap: String,
    config: String,
}

/// The environment variable holding the token a lower level presents to
/// its upper level's schema registry.
pub fn token_var(code: &str) -> String {
    format!("BACKFLOW_DEMO_TOKEN_{code}")
}

/// Writes `toml` to `<dir>/<name>.toml`, loads it as `backflow --config`
/// would (environment overrides aside) and starts it on a task of its own.
async fn start_node(
    dir: &Path,
    name: &str,
    toml: &str,
    level: Level,
    nodes: &mut Nodes,
) -> anyhow::Result<Started> {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, toml).with_context(|| format!("cannot write {}", path.display()))?;
    // Only the file: the demo ignores BACKFLOW_* overrides meant for a node.
    let mut config = Config::load_with_env(Some(&path), std::iter::empty())
        .with_context(|| format!("demo configuration {}", path.display()))?;
    config.runtime.shutdown_timeout_ms = config.runtime.shutdown_timeout_ms.min(10_000);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let token = CancellationToken::new();
    let (stop, label, ended) = (token.clone(), name.to_owned(), nodes.ended_tx.clone());
    let mut task = tokio::spawn(async move {
        let outcome = match level {
            Level::Node => {
                backflow::runtime::node::run(config, stop.clone(), |r| {
                    let _ = tx.send((r.http_addr, r.bootstrap.clone()));
                })
                .await
            }
            Level::Subscriber => {
                // A district's address is that of its metrics, which need
                // no token there.
                backflow::runtime::node::run_subscriber(config, stop.clone(), |addr, metrics| {
                    let _ = tx.send((metrics.unwrap_or(addr), String::new()));
                })
                .await
            }
        };
        if let Err(e) = &outcome {
            tracing::error!(node = %label, error = %e, "demo node failed");
        }
        if !stop.is_cancelled() {
            let _ = ended.send(label.clone());
        }
        outcome.with_context(|| label)
    });
    let (http, bootstrap) = match rx.await {
        Ok(started) => started,
        Err(_) => {
            // The task ended before it listened: its error says why.
            return Err(match (&mut task).await {
                Ok(Err(e)) => e,
                _ => anyhow!("{name} did not start"),
            });
        }
    };
    nodes.running.push((name.to_owned(), token, task));
    Ok(Started {
        http,
        bootstrap,
        config: path.display().to_string(),
    })
}

/// The department's database and the changes made to it.
struct Generator {
    db: rusqlite::Connection,
    rng: fastrand::Rng,
    next_id: i64,
    residents: i64,
    changes: u64,
}

const SURNAMES: [&str; 12] = [
    "王", "李", "张", "刘", "陈", "杨", "赵", "黄", "周", "吴", "徐", "孙",
];
const GIVEN: [&str; 12] = [
    "伟", "芳", "娜", "敏", "静", "强", "磊", "洋", "艳", "杰", "婷", "浩然",
];

impl Generator {
    /// Creates the department's table with its first residents.
    fn create(path: &Path) -> anyhow::Result<Self> {
        let db = rusqlite::Connection::open(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        db.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE people (
                 id INTEGER PRIMARY KEY,
                 name TEXT NOT NULL,
                 id_number TEXT NOT NULL,
                 phone TEXT,
                 region_code TEXT NOT NULL,
                 income NUMERIC,
                 updated_at TIMESTAMP NOT NULL);
             CREATE INDEX people_updated ON people (updated_at, id);",
        )?;
        let mut g = Self {
            db,
            rng: fastrand::Rng::new(),
            next_id: 1,
            residents: 0,
            changes: 0,
        };
        g.db.execute_batch("BEGIN")?;
        for _ in 0..INITIAL {
            g.register()?;
        }
        g.db.execute_batch("COMMIT")?;
        g.changes = 0;
        Ok(g)
    }

    /// One change: a registration, a move or a new phone number.
    fn change(&mut self) -> anyhow::Result<()> {
        match self.rng.u8(0..10) {
            0..=3 => self.register()?,
            4..=7 => {
                let id = self.rng.i64(1..self.next_id);
                let region = REGIONS[self.rng.usize(..REGIONS.len())];
                self.db.execute(
                    &format!(
                        "UPDATE people SET region_code = ?1, updated_at = {NOW} WHERE id = ?2"
                    ),
                    rusqlite::params![region, id],
                )?;
            }
            _ => {
                let id = self.rng.i64(1..self.next_id);
                let phone = self.phone();
                self.db.execute(
                    &format!("UPDATE people SET phone = ?1, updated_at = {NOW} WHERE id = ?2"),
                    rusqlite::params![phone, id],
                )?;
            }
        }
        self.changes += 1;
        Ok(())
    }

    fn register(&mut self) -> rusqlite::Result<()> {
        let id = self.next_id;
        let region = REGIONS[self.rng.usize(..REGIONS.len())];
        let name = format!(
            "{}{}",
            SURNAMES[self.rng.usize(..SURNAMES.len())],
            GIVEN[self.rng.usize(..GIVEN.len())]
        );
        let id_number = identity_number(
            region,
            self.rng.u32(1950..2010),
            self.rng.u32(1..13),
            self.rng.u32(1..29),
            self.rng.u32(0..1000),
        );
        let phone = self.phone();
        let income = self.rng.u32(20_000..400_000);
        self.db.execute(
            &format!(
                "INSERT INTO people (id, name, id_number, phone, region_code, income, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, {NOW})"
            ),
            rusqlite::params![id, name, id_number, phone, region, income],
        )?;
        self.next_id += 1;
        self.residents += 1;
        self.changes += 1;
        Ok(())
    }

    fn phone(&mut self) -> String {
        format!(
            "13{}{:08}",
            self.rng.u8(0..10),
            self.rng.u32(0..100_000_000)
        )
    }
}

/// Now, as the poll feed reads `updated_at` (millisecond text, UTC).
const NOW: &str = "strftime('%Y-%m-%d %H:%M:%f', 'now')";

/// A resident identity number (GB 11643): region, birth date, sequence and
/// the ISO 7064 MOD 11-2 check character.
fn identity_number(region: &str, year: u32, month: u32, day: u32, seq: u32) -> String {
    const WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    const CHECK: &[u8; 11] = b"10X98765432";
    let body = format!("{region}{year:04}{month:02}{day:02}{seq:03}");
    let sum: u32 = body
        .bytes()
        .zip(WEIGHTS)
        .map(|(b, w)| u32::from(b - b'0') * w)
        .sum();
    format!("{body}{}", CHECK[(sum % 11) as usize] as char)
}

#[cfg(test)]
mod tests {
    use super::identity_number;

    #[test]
    fn identity_numbers_carry_their_check_character() {
        // The standard's worked example: 11010519491231002X.
        assert_eq!(
            identity_number("110105", 1949, 12, 31, 2),
            "11010519491231002X"
        );
        assert_eq!(identity_number("330106", 1990, 1, 1, 123).len(), 18);
    }
}
