//! The `backflow` command.

use backflow_connectors::now_ms;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

mod demo;

use anyhow::Context as _;
use backflow::config::Config;
use backflow_schemas::registry_client::RegistryClient;
// Change events are many small allocations on several threads (Avro
// values, rows, Kafka messages); glibc malloc showed as the largest cost in
// profiles of the pipeline. mimalloc also serves C's `malloc` (its
// `override` feature, for librdkafka), compiled to commit memory on demand
// (`.cargo/config.toml`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

/// backflow: real-time sharing of government data down the administrative
/// hierarchy (province → city → district) over Kafka.
#[derive(Debug, Parser)]
#[command(name = "backflow", version)]
struct Cli {
    /// Configuration file (TOML). Every key can also be set with an
    /// environment variable BACKFLOW_<SECTION>__<KEY>, e.g.
    /// BACKFLOW_KAFKA__BROKERS=kafka:9092.
    #[arg(
        long,
        short,
        global = true,
        env = "BACKFLOW_CONFIG",
        value_name = "FILE"
    )]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum FeedCommand {
    /// Run a feed's mapping into its datasets' standards ([[standards]])
    /// and their rules over a sample of each of its tables, publishing
    /// nothing, and print a report: rows passing, rows refused by rule with
    /// examples (values redacted), rows that cannot be read. Exits 1 when
    /// a row would be refused or a table cannot be published at all.
    Check {
        /// The feed (its `name` in [[feeds]]).
        #[arg(long = "feed", value_name = "NAME")]
        feed: String,
        /// Rows read per table (the first, in key order).
        #[arg(long, default_value_t = 1000, value_name = "N")]
        sample: usize,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Try backflow with nothing installed: a province (330000), a city
    /// (330100) and two districts (330106, 330108) in this process, each on
    /// an embedded in-memory broker, with a SQLite department database that
    /// a generator keeps changing (people registering, moving between
    /// districts, changing phones) and a SQLite database per district.
    /// Prints the dashboards' addresses and what the districts hold every
    /// 5 seconds; Ctrl-C stops it. Each run starts from empty databases
    /// (DIR's earlier demo files are replaced).
    Demo {
        /// Directory for the databases and the configuration of each level.
        #[arg(long, value_name = "DIR", default_value = "backflow-demo")]
        dir: PathBuf,
        /// HTTP port of the province; the city and districts take the next
        /// three. 0: let the system choose.
        #[arg(long, default_value_t = 8480)]
        port: u16,
        /// Changes per second the generator makes at the department.
        #[arg(long, default_value_t = 5.0)]
        rate: f64,
    },
    /// Run a node: Kafka (embedded when kafka.brokers is not set), internal
    /// topics, /metrics, /healthz and /readyz. Stops gracefully on SIGINT or
    /// SIGTERM.
    Serve,
    /// Apply share topics of an upper node to this node's database: runs the
    /// [[subscriptions]] of the configuration (upstream Kafka and registry,
    /// sink database, topic → table mapping) with /metrics, /healthz and
    /// /readyz. Offsets are stored in the sink database with the rows, so a
    /// restart resumes exactly. Stops gracefully on SIGINT or SIGTERM.
    Subscribe,
    /// Run only the change feeds of the configuration ([[feeds]]): each
    /// captures its tables (initial snapshot, then the change stream) and
    /// publishes to backflow.raw.<dataset> on the configured Kafka, with
    /// /metrics, /healthz and /readyz. The node process (`serve`)
    /// distributes. Stops gracefully on SIGINT or SIGTERM.
    Source {
        /// Run only this feed (repeatable; default: every feed of the file).
        #[arg(long = "feed", value_name = "NAME")]
        feeds: Vec<String>,
        /// Before starting, drop the feed's replication slot and forget its
        /// recorded position, so it reads its tables again and then
        /// streams: the way out when the slot was lost or invalidated.
        /// Needs --feed; keys the raw topic holds that the tables no longer
        /// have are deleted.
        #[arg(long, requires = "feeds")]
        resnapshot: bool,
    },
    /// Compare a subscription's tables with the share topics they are fed
    /// from (the rows and fields the district is authorised for): replays
    /// the topics up to the offsets the sink has applied into scratch
    /// copies of the tables (`<table>_bf_reconcile`, dropped afterwards)
    /// and compares row counts and every row's values by key. The
    /// subscriber may keep running. Exits 0 when the tables are equal, 1
    /// when they differ, 2 when it cannot tell.
    Reconcile {
        /// The subscription (its `name` in [[subscriptions]]); may be left
        /// out when the file has only one.
        #[arg(long, value_name = "NAME")]
        subscription: Option<String>,
        /// Print the primary keys of the rows that differ (keys are row
        /// values: mind where the output goes).
        #[arg(long)]
        show_keys: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Change feeds: tools.
    #[command(subcommand)]
    Feed(FeedCommand),
    /// Print the backflow version and the linked librdkafka version.
    Version,
    /// Datasets in a node's catalog (control-plane API; see docs/api.md).
    Datasets {
        #[command(flatten)]
        api: ApiArgs,
        #[command(subcommand)]
        command: DatasetsCommand,
    },
    /// Subscriptions: request, list, approve, reject, revoke (control-plane
    /// API; see docs/api.md).
    Subscriptions {
        #[command(flatten)]
        api: ApiArgs,
        #[command(subcommand)]
        command: SubscriptionsCommand,
    },
    /// API tokens issued by an admin: issue (the token is printed once),
    /// list (SHA-256 only), revoke (control-plane API; see docs/api.md).
    Tokens {
        #[command(flatten)]
        api: ApiArgs,
        #[command(subcommand)]
        command: TokensCommand,
    },
    /// Lag of every subscription this node serves and every feed it runs:
    /// a table of subscriber, dataset, lag in messages and seconds (end to
    /// end from the origin commit), status over the window (OK, WARN,
    /// STALL, STOP, ERR as Burrow defines them) and last report.
    Lag {
        #[command(flatten)]
        api: ApiArgs,
        /// Refresh every 2 seconds until interrupted.
        #[arg(long)]
        watch: bool,
        /// Print the API's JSON instead of a table.
        #[arg(long, conflicts_with = "watch")]
        json: bool,
    },
    /// The audit trail in backflow._audit: check it, make a node's signing key.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Configuration tools.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Talk to a Confluent-compatible schema registry (a backflow node's, or
    /// any other).
    Schemas {
        /// Registry base URL.
        #[arg(
            long,
            env = "BACKFLOW_REGISTRY_URL",
            default_value = "http://127.0.0.1:8480",
            global = true
        )]
        registry: String,
        /// Token the registry's node issued (its SHA-256 in that node's
        /// [[auth.tokens]]): any principal's reads, admin's to register.
        #[arg(long, env = "BACKFLOW_TOKEN", hide_env_values = true, global = true)]
        token: Option<String>,
        #[command(subcommand)]
        command: SchemasCommand,
    },
}

#[derive(Debug, Subcommand)]
enum SchemasCommand {
    /// Register an Avro schema file under a subject; prints its id.
    Register {
        /// Subject, e.g. backflow.raw.gongan.population-value.
        subject: String,
        /// Avro schema file (.avsc).
        file: PathBuf,
    },
    /// Print a version of a subject (latest by default), or a schema by id.
    Get {
        /// Subject to read; omit with --id.
        #[arg(required_unless_present = "id")]
        subject: Option<String>,
        /// Version number (default: latest).
        #[arg(long, conflicts_with = "id")]
        version: Option<u32>,
        /// A global schema id instead of a subject.
        #[arg(long)]
        id: Option<u32>,
    },
    /// Check whether a schema file may be registered as the subject's next
    /// version under its compatibility level; exits 1 when it may not.
    Check {
        /// Subject.
        subject: String,
        /// Avro schema file (.avsc).
        file: PathBuf,
    },
}

/// Where the control-plane API is and who calls it.
#[derive(Debug, clap::Args)]
struct ApiArgs {
    /// The node's base URL.
    #[arg(
        long,
        env = "BACKFLOW_URL",
        default_value = "http://127.0.0.1:8480",
        global = true
    )]
    url: String,
    /// Bearer token (its SHA-256 must be in the node's [[auth.tokens]]).
    #[arg(long, env = "BACKFLOW_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// The CA (PEM) that signs the node's HTTPS certificate, trusted
    /// instead of the system's CAs.
    #[arg(long, env = "BACKFLOW_CA_FILE", global = true)]
    ca_file: Option<PathBuf>,
}

impl ApiArgs {
    /// The client that talks to the node (trusting `--ca-file`).
    fn client(&self) -> anyhow::Result<reqwest::Client> {
        backflow::config::http_client_trusting(
            self.ca_file.as_deref(),
            std::time::Duration::from_secs(60),
        )
        .map_err(|e| anyhow::anyhow!("--ca-file {e}"))
    }
}

#[derive(Debug, Subcommand)]
enum DatasetsCommand {
    /// List the datasets.
    List,
    /// Register or update a dataset from a JSON file (docs/api.md).
    Put {
        /// Dataset id, <department>.<name>.
        id: String,
        /// JSON definition.
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum SubscriptionsCommand {
    /// List the subscriptions the token may see.
    List,
    /// Show one subscription: its grant, state, and (when the node manages
    /// Kafka ACLs) the ACLs in force on its share topic.
    Show {
        /// Subscription id, <subscriber>:<dataset>.
        id: String,
    },
    /// Request a subscription.
    Request {
        /// Subscriber node code.
        #[arg(long)]
        subscriber: String,
        /// Dataset id.
        #[arg(long)]
        dataset: String,
        /// What the data is needed for.
        #[arg(long)]
        purpose: String,
        /// Fields needed, comma separated.
        #[arg(long, value_delimiter = ',', required = true)]
        fields: Vec<String>,
        /// Validity in days.
        #[arg(long)]
        valid_days: Option<u32>,
    },
    /// Approve a pending subscription, optionally narrowing its fields.
    Approve {
        /// Subscription id, <subscriber>:<dataset>.
        id: String,
        /// The version of the request you reviewed (`subscriptions list`
        /// shows it as request_version): a request that changed since is
        /// not approved.
        #[arg(long)]
        request_version: u32,
        /// Fields granted (default: those requested), comma separated.
        #[arg(long, value_delimiter = ',')]
        fields: Option<Vec<String>>,
    },
    /// Re-activate a revoked or expired subscription (owner or admin).
    Reactivate {
        /// Subscription id.
        id: String,
    },
    /// Reject a pending subscription.
    Reject {
        /// Subscription id.
        id: String,
        /// Why (shown to the requester).
        #[arg(long)]
        reason: String,
    },
    /// Revoke an active subscription; delivery stops within seconds.
    Revoke {
        /// Subscription id.
        id: String,
        /// Why.
        #[arg(long, default_value = "revoked by the owner")]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
enum TokensCommand {
    /// Issue a token for a principal; prints it once (only its SHA-256 is
    /// kept).
    Issue {
        /// admin, owner:<department> or subscriber:<node code>.
        #[arg(long)]
        principal: String,
        /// What it is for, e.g. who holds it.
        #[arg(long, default_value = "")]
        label: String,
    },
    /// List issued tokens (SHA-256, principal, label, revoked).
    List,
    /// Revoke an issued token by its SHA-256.
    Revoke {
        /// The token's SHA-256 (from `tokens list`).
        sha256: String,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Replay backflow._audit (needs kafka.brokers) and check every node's
    /// chain: with the node's public key, that each record is signed by it
    /// (else: forged), unchanged (else: altered), in sequence (else:
    /// inserted or missing) and linked to the one before (else: prev-hash
    /// mismatch); every problem is named with its topic offset. A chain whose oldest records expired is
    /// checked from its first record left when a checkpoint remains.
    /// Without a public key only the hash chains are checked, which does not
    /// show who wrote the records. Exits 0 when no problem is found, 1 when
    /// one is, 2 when it cannot tell.
    Verify {
        /// A trusted public key: 64 hex digits as `audit keygen` prints
        /// them, or NODE=HEX to trust it for that node's chain only.
        /// Repeatable (e.g. a node's old and new key after a rotation).
        #[arg(long = "public-key", value_name = "[NODE=]HEX")]
        public_keys: Vec<String>,
        /// A file holding trusted public keys, one per line ([NODE=]HEX,
        /// `#` comments). Repeatable.
        #[arg(long = "public-key-file", value_name = "FILE")]
        public_key_files: Vec<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Make a node's audit signing key (Ed25519): writes the secret to FILE
    /// (which must not exist; mode 0600) for audit.signing_key_file, and
    /// prints the public key, for owners and auditors to verify with.
    Keygen {
        /// Where to write the secret key.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Check the configuration (file plus environment) and report the first
    /// problem, naming the key.
    Check,
    /// Print the effective configuration as TOML-like JSON, credentials
    /// (kafka.properties values) redacted.
    Show,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Prints what `audit verify` found, chain by chain, then every problem.
fn print_audit_report(report: &backflow::state::audit::VerifyReport) {
    for (node, chain) in &report.chains {
        let head = chain
            .head
            .as_ref()
            .map(|(seq, hash)| format!("head seq {seq} hash {hash}"))
            .unwrap_or_else(|| "no head".to_owned());
        println!(
            "chain {node}: {} records, {} checkpoints, {head}; signatures {}",
            chain.records,
            chain.checkpoints,
            if chain.signatures_checked {
                "checked"
            } else {
                "NOT checked (no public key for it)"
            }
        );
        if let Some(e) = &chain.expired {
            println!(
                "chain {node}: records seq 0 to {} expired (not kept by the topic); checked from offset {}{}, first checkpoint left at offset {}",
                e.before_seq - 1,
                e.first_offset,
                e.first_ts_ms
                    .map(|ts| format!(" (written at {ts} ms since the epoch)"))
                    .unwrap_or_default(),
                e.checkpoint_offset
            );
        }
    }
    for p in &report.problems {
        println!("PROBLEM {p}");
    }
    if report.problems_omitted > 0 {
        println!("... and {} more problems", report.problems_omitted);
    }
    if report.chains.is_empty() {
        println!("the audit trail is empty: no records");
        return;
    }
    match (report.intact(), report.signatures_checked()) {
        (true, true) => println!("audit trail intact: every record signed with a trusted key"),
        (true, false) => println!(
            "hash chain intact; signatures NOT checked: without the node's public key \
             (--public-key) this does not show who wrote the records"
        ),
        (false, _) => {
            let n = report.problems.len() as u64 + report.problems_omitted;
            println!(
                "audit trail NOT intact: {n} problem{}",
                if n == 1 { "" } else { "s" }
            )
        }
    }
}

fn load(cli: &Cli) -> anyhow::Result<Config> {
    let config = Config::load(cli.config.as_deref())?;
    // Every topic and group name of this process starts with it.
    backflow::domain::topics::set_prefix(&config.kafka.topic_prefix).map_err(anyhow::Error::msg)?;
    Ok(config)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Version => {
            println!("backflow {}", backflow::VERSION);
            println!("librdkafka {}", backflow::kafka::librdkafka_version());
            Ok(())
        }
        Command::Lag { api, watch, json } => {
            if *json {
                return api_call(api, "GET", "/api/lag", None);
            }
            lag_table(api, *watch)
        }
        Command::Datasets { api, command } => {
            let (method, path, body) = match command {
                DatasetsCommand::List => ("GET", "/api/datasets".to_owned(), None),
                DatasetsCommand::Put { id, file } => {
                    let text = std::fs::read_to_string(file)
                        .with_context(|| format!("cannot read {}", file.display()))?;
                    let body: serde_json::Value = serde_json::from_str(&text)
                        .with_context(|| format!("{} is not JSON", file.display()))?;
                    ("PUT", format!("/api/datasets/{id}"), Some(body))
                }
            };
            api_call(api, method, &path, body)
        }
        Command::Subscriptions { api, command } => subscriptions(api, command),
        Command::Tokens { api, command } => match command {
            TokensCommand::Issue { principal, label } => api_call(
                api,
                "POST",
                "/api/tokens",
                Some(serde_json::json!({"principal": principal, "label": label})),
            ),
            TokensCommand::List => api_call(api, "GET", "/api/tokens", None),
            TokensCommand::Revoke { sha256 } => {
                api_call(api, "DELETE", &format!("/api/tokens/{sha256}"), None)
            }
        },
        Command::Audit(AuditCommand::Keygen { out }) => {
            let key = backflow::state::audit::AuditKey::write_new(out)?;
            println!("{}", key.public_key_hex());
            eprintln!(
                "wrote the secret key to {} (readable by you only): set audit.signing_key_file to it; \
                 give the public key above to owners and auditors (`backflow audit verify --public-key`)",
                out.display()
            );
            Ok(())
        }
        Command::Audit(AuditCommand::Verify {
            public_keys,
            public_key_files,
            json,
        }) => audit_verify(&cli, public_keys, public_key_files, *json),
        Command::Feed(FeedCommand::Check { feed, sample, json }) => {
            feed_check(&cli, feed, *sample, *json)
        }
        Command::Reconcile {
            subscription,
            show_keys,
            json,
        } => reconcile(&cli, subscription.as_deref(), *show_keys, *json),
        Command::Config(ConfigCommand::Check) => {
            load(&cli)?;
            println!("configuration ok");
            Ok(())
        }
        Command::Config(ConfigCommand::Show) => {
            let mut config = load(&cli)?;
            for v in config.kafka.properties.values_mut() {
                *v = "<redacted>".to_owned();
            }
            for sub in &mut config.subscriptions {
                for v in sub.upstream.properties.values_mut() {
                    *v = "<redacted>".to_owned();
                }
            }
            println!("{}", serde_json::to_string_pretty(&config)?);
            Ok(())
        }
        Command::Schemas {
            registry,
            token,
            command,
        } => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(schemas(registry, token.as_deref(), command))
        }
        Command::Subscribe => subscribe(&cli),
        Command::Source { feeds, resnapshot } => source(&cli, feeds, *resnapshot),
        Command::Demo { dir, port, rate } => demo(dir, *port, *rate),
        Command::Serve => {
            let config = load(&cli)?;
            backflow::runtime::telemetry::init(&config.log);
            run_until_signal(|shutdown| async move {
                backflow::runtime::node::run(config, shutdown, announce)
                    .await
                    .map_err(anyhow::Error::from)
            })
        }
    }
}

/// `backflow subscriptions ...`: one call of the control-plane API.
fn subscriptions(api: &ApiArgs, command: &SubscriptionsCommand) -> anyhow::Result<()> {
    let (path, body) = match command {
        SubscriptionsCommand::List => return api_call(api, "GET", "/api/subscriptions", None),
        SubscriptionsCommand::Show { id } => {
            return api_call(api, "GET", &format!("/api/subscriptions/{id}"), None)
        }
        SubscriptionsCommand::Request {
            subscriber,
            dataset,
            purpose,
            fields,
            valid_days,
        } => (
            "/api/subscriptions".to_owned(),
            serde_json::json!({"subscriber": subscriber, "dataset": dataset, "purpose": purpose, "fields": fields, "valid_days": valid_days}),
        ),
        SubscriptionsCommand::Approve {
            id,
            request_version,
            fields,
        } => (
            format!("/api/subscriptions/{id}/approve"),
            serde_json::json!({"fields": fields, "request_version": request_version}),
        ),
        SubscriptionsCommand::Reactivate { id } => (
            format!("/api/subscriptions/{id}/reactivate"),
            serde_json::json!({}),
        ),
        SubscriptionsCommand::Reject { id, reason } => (
            format!("/api/subscriptions/{id}/reject"),
            serde_json::json!({"reason": reason}),
        ),
        SubscriptionsCommand::Revoke { id, reason } => (
            format!("/api/subscriptions/{id}/revoke"),
            serde_json::json!({"reason": reason}),
        ),
    };
    api_call(api, "POST", &path, Some(body))
}

/// `backflow audit verify`: checks the audit trail's chain and signatures.
fn audit_verify(
    cli: &Cli,
    public_keys: &[String],
    public_key_files: &[PathBuf],
    json: bool,
) -> anyhow::Result<()> {
    let mut keys = backflow::state::audit::TrustedKeys::none();
    for spec in public_keys {
        keys.trust_spec(spec)
            .map_err(|e| anyhow::anyhow!("--public-key: {e}"))?;
    }
    for file in public_key_files {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("--public-key-file: cannot read {}", file.display()))?;
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            keys.trust_spec(line)
                .map_err(|e| anyhow::anyhow!("--public-key-file {}: {e}", file.display()))?;
        }
    }
    let config = load(cli)?;
    let Some(brokers) = config.kafka.brokers.clone() else {
        anyhow::bail!("kafka.brokers is not set: the audit trail lives in the cluster's <kafka.topic_prefix>_audit topic; set it in the file or with BACKFLOW_KAFKA__BROKERS");
    };
    let settings = backflow::kafka::KafkaSettings::from_config(&config.kafka, &brokers);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let report = runtime.block_on(backflow::state::audit::verify(&settings, &keys))?;
    // Kafka clients close on blocking threads; one that hangs in librdkafka
    // must not keep the command from ending.
    runtime.shutdown_timeout(Duration::from_secs(2));
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_audit_report(&report);
    }
    if report.intact() {
        Ok(())
    } else {
        std::process::exit(1);
    }
}

/// `backflow feed check`: a feed's mapping and rules over a sample of its rows.
fn feed_check(cli: &Cli, feed: &str, sample: usize, json: bool) -> anyhow::Result<()> {
    let config = load(cli)?;
    let Some(f) = config.feeds.iter().find(|f| f.name() == feed) else {
        anyhow::bail!(
            "no feed named {feed} in the configuration (it has: {})",
            config
                .feeds
                .iter()
                .map(|f| f.name())
                .collect::<Vec<_>>()
                .join(", ")
        );
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let report = runtime
        .block_on(backflow::standards::check_feed(
            &f.sample_config(),
            &config.standards,
            sample,
        ))
        .map_err(|e| anyhow::anyhow!("feed {feed}: {e}"))?;
    print_feed_check(feed, &report, json)?;
    if report
        .iter()
        .any(|t| t.problem.is_some() || t.refused + t.unreadable > 0)
    {
        std::process::exit(1);
    }
    Ok(())
}

/// `backflow reconcile`: compares a subscriber's database with its share topics.
fn reconcile(
    cli: &Cli,
    subscription: Option<&str>,
    show_keys: bool,
    json: bool,
) -> anyhow::Result<()> {
    let config = load(cli)?;
    let sub = match subscription {
        Some(name) => config.subscriptions.iter().find(|s| s.name == name).with_context(|| {
            format!(
                "no subscription named {name} in the configuration (it has: {})",
                config.subscriptions.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
            )
        })?,
        None => match config.subscriptions.as_slice() {
            [one] => one,
            [] => anyhow::bail!("no subscriptions configured: give the subscriber's configuration file with --config"),
            _ => anyhow::bail!("the configuration has several subscriptions; choose one with --subscription NAME"),
        },
    };
    backflow::runtime::telemetry::init(&config.log);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let report = runtime.block_on(backflow::subscribe::reconcile::reconcile(sub))?;
    runtime.shutdown_timeout(Duration::from_secs(2));
    print_reconcile(&report, show_keys, json)?;
    if !report.equal() {
        std::process::exit(1);
    }
    Ok(())
}

/// `backflow subscribe`: applies the configured subscriptions.
fn subscribe(cli: &Cli) -> anyhow::Result<()> {
    let config = load(cli)?;
    if config.subscriptions.is_empty() {
        anyhow::bail!(
            "no subscriptions configured: add a [[subscriptions]] section (upstream, sink, tables) to the file given with --config"
        );
    }
    if let Some(s) = config
        .subscriptions
        .iter()
        .find(|s| matches!(s.sink, backflow::config::SinkConfig::Kafka(_)))
    {
        anyhow::bail!(
            "subscription {}: a sink of type kafka re-publishes into this node's own bus and registry; run it with `backflow serve`, not `backflow subscribe`",
            s.name
        );
    }
    backflow::runtime::telemetry::init(&config.log);
    run_until_signal(|shutdown| async move {
        backflow::runtime::node::run_subscriber(config, shutdown, |addr, metrics| {
            println!("backflow listening on http://{addr}");
            if let Some(m) = metrics {
                println!("backflow metrics on http://{m}");
            }
        })
        .await
        .map_err(anyhow::Error::from)
    })
}

/// `backflow source`: runs only the configured feeds.
fn source(cli: &Cli, feeds: &[String], resnapshot: bool) -> anyhow::Result<()> {
    let mut config = load(cli)?;
    if config.feeds.is_empty() {
        anyhow::bail!(
            "no feeds configured: add a [[feeds]] section (type, connection, tables) to the file given with --config"
        );
    }
    let known: Vec<String> = config.feeds.iter().map(|f| f.name().to_owned()).collect();
    if let Some(unknown) = feeds.iter().find(|f| !known.contains(f)) {
        anyhow::bail!(
            "--feed {unknown}: no such feed in the configuration; feeds: {}",
            known.join(", ")
        );
    }
    if !feeds.is_empty() {
        config.feeds.retain(|f| feeds.iter().any(|n| n == f.name()));
    }
    let role = backflow::runtime::node::Role::Source {
        resnapshot: if resnapshot {
            feeds.to_vec()
        } else {
            Vec::new()
        },
    };
    backflow::runtime::telemetry::init(&config.log);
    run_until_signal(|shutdown| async move {
        backflow::runtime::node::run_as(role, config, shutdown, announce)
            .await
            .map_err(anyhow::Error::from)
    })
}

/// `backflow demo`: a province, a city and two districts in this process.
fn demo(dir: &Path, port: u16, rate: f64) -> anyhow::Result<()> {
    // Each district's HMAC key for hashed fields, random per run;
    // set before any thread starts.
    for (code, _) in demo::DISTRICTS {
        let var = format!("BACKFLOW_DEMO_SECRET_{code}");
        if std::env::var_os(&var).is_none() {
            let key: String = std::iter::repeat_with(fastrand::alphanumeric)
                .take(32)
                .collect();
            std::env::set_var(var, key);
        }
    }
    // The tokens the city and the districts read their upper
    // level's schema registry with, random per run.
    for code in std::iter::once(demo::CITY).chain(demo::DISTRICTS.map(|(c, _)| c)) {
        let var = demo::token_var(code);
        if std::env::var_os(&var).is_none() {
            let token: String = std::iter::repeat_with(fastrand::alphanumeric)
                .take(32)
                .collect();
            std::env::set_var(var, token);
        }
    }
    backflow::runtime::telemetry::init(&backflow::config::LogConfig {
        level: "warn".to_owned(),
        ..Default::default()
    });
    let options = demo::Options {
        dir: dir.to_owned(),
        port,
        rate,
    };
    run_until_signal(|shutdown| demo::run(options, shutdown))
}

/// Prints `/api/lag` as a table, once or every 2 seconds.
fn lag_table(api: &ApiArgs, watch: bool) -> anyhow::Result<()> {
    cli_runtime()?.block_on(async {
        let client = api.client()?;
        loop {
            let resp = api_request(&client, api, "GET", "/api/lag")
                .send()
                .await
                .with_context(|| format!("cannot reach the node at {}", api.url))?;
            let status = resp.status();
            let value: serde_json::Value = resp.json().await.unwrap_or_default();
            if !status.is_success() {
                let reason = value["reason"].as_str().unwrap_or("(no reason given)");
                eprintln!("error: {status}: {reason}");
                std::process::exit(1);
            }
            let table = render_lag(&value, now_ms());
            if watch {
                // Clear the screen and home the cursor, as watch(1) does.
                print!("\x1b[2J\x1b[H");
            }
            print!("{table}");
            if !watch {
                return Ok(());
            }
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return Ok(()),
                _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
            }
        }
    })
}

/// The lag board as aligned text.
fn render_lag(board: &serde_json::Value, now: i64) -> String {
    let ago = |ms: Option<i64>| match ms {
        Some(ms) => format!("{}s ago", ((now - ms).max(0)) / 1000),
        None => "never".to_owned(),
    };
    let mut rows: Vec<[String; 6]> = vec![[
        "SUBSCRIBER".into(),
        "DATASET".into(),
        "LAG MSGS".into(),
        "LAG SECS".into(),
        "STATUS".into(),
        "LAST REPORT".into(),
    ]];
    for s in board["subscriptions"].as_array().into_iter().flatten() {
        rows.push([
            s["subscriber"].as_str().unwrap_or("").to_owned(),
            s["dataset"].as_str().unwrap_or("").to_owned(),
            s["lag_messages"].as_i64().unwrap_or(0).to_string(),
            s["lag_seconds"]
                .as_f64()
                .map_or("-".to_owned(), |v| format!("{v:.1}")),
            s["status"].as_str().unwrap_or("").to_owned(),
            ago(s["last_report_ms"].as_i64()),
        ]);
    }
    let mut out = format!(
        "node {}  (statuses over the node's window; WARN lag growing, STALL not moving, STOP not reporting)\n",
        board["node"].as_str().unwrap_or("?")
    );
    let widths: Vec<usize> = (0..6)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    for s in board["subscriptions"].as_array().into_iter().flatten() {
        if let Some(e) = s["error"].as_str() {
            out.push_str(&format!(
                "  {} {}: {e}\n",
                s["subscriber"].as_str().unwrap_or(""),
                s["dataset"].as_str().unwrap_or("")
            ));
        }
    }
    let feeds = board["feeds"].as_array().cloned().unwrap_or_default();
    if !feeds.is_empty() {
        out.push_str("\nFEED  STATE  LAG SECS  LAG BYTES  STATUS\n");
        for f in feeds {
            out.push_str(&format!(
                "{}  {}  {:.1}  {}  {}\n",
                f["feed"].as_str().unwrap_or(""),
                f["state"].as_str().unwrap_or(""),
                f["lag_seconds"].as_f64().unwrap_or(0.0),
                f["lag_bytes"].as_i64().unwrap_or(-1),
                f["status"].as_str().unwrap_or("")
            ));
        }
    }
    out
}

/// A runtime for one CLI command.
fn cli_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// A request to the node's API with the caller's token.
fn api_request(
    client: &reqwest::Client,
    api: &ApiArgs,
    method: &str,
    path: &str,
) -> reqwest::RequestBuilder {
    let url = format!("{}{path}", api.url.trim_end_matches('/'));
    let req = match method {
        "GET" => client.get(&url),
        "PUT" => client.put(&url),
        "DELETE" => client.delete(&url),
        _ => client.post(&url),
    };
    match &api.token {
        Some(t) => req.bearer_auth(t),
        None => req,
    }
}

/// Calls the control-plane API and prints the answer; an error answer
/// exits 1 with its reason.
fn api_call(
    api: &ApiArgs,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> anyhow::Result<()> {
    cli_runtime()?.block_on(async {
        let client = api.client()?;
        let mut req = api_request(&client, api, method, path);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach the node at {}", api.url))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let value: serde_json::Value =
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        if status.is_success() {
            println!("{}", serde_json::to_string_pretty(&value)?);
            Ok(())
        } else {
            let reason = value["reason"].as_str().unwrap_or("(no reason given)");
            eprintln!("error: {status}: {reason}");
            std::process::exit(1);
        }
    })
}

fn read_schema(file: &Path) -> anyhow::Result<apache_avro::Schema> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read schema file {}", file.display()))?;
    apache_avro::Schema::parse_str(&text)
        .with_context(|| format!("{} is not a valid Avro schema", file.display()))
}

async fn schemas(
    registry: &str,
    token: Option<&str>,
    command: &SchemasCommand,
) -> anyhow::Result<()> {
    let mut client = RegistryClient::new(registry)?;
    if let Some(t) = token {
        client = client.with_token(t);
    }
    match command {
        SchemasCommand::Register { subject, file } => {
            let id = client.register(subject, &read_schema(file)?).await?;
            println!("{id}");
        }
        SchemasCommand::Get { id: Some(id), .. } => {
            let schema = client.fetch_schema(*id).await?;
            println!("{}", serde_json::to_string_pretty(schema.as_ref())?);
        }
        SchemasCommand::Get {
            subject, version, ..
        } => {
            let subject = subject
                .as_deref()
                .expect("clap requires a subject without --id");
            let v = client.version(subject, *version).await?;
            let schema: serde_json::Value =
                serde_json::from_str(&v.schema).unwrap_or(serde_json::Value::String(v.schema));
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({
                    "subject": v.subject,
                    "version": v.version,
                    "id": v.id,
                    "schema": schema,
                }))?
            );
        }
        SchemasCommand::Check { subject, file } => {
            let report = match client.check(subject, &read_schema(file)?).await {
                // A subject without versions accepts any valid schema.
                Err(e) if e.code() == Some(40401) => {
                    println!("compatible (subject {subject} has no versions yet)");
                    return Ok(());
                }
                other => other?,
            };
            if report.is_compatible {
                println!("compatible");
            } else {
                println!("incompatible:");
                for m in &report.messages {
                    println!("  - {m}");
                }
                std::process::exit(1);
            }
        }
    }
    Ok(())
}

/// Runs a long-lived process on a multi-threaded runtime until it ends or
/// SIGINT/SIGTERM asks it to stop.
fn run_until_signal<F, Fut>(process: F) -> anyhow::Result<()>
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("backflow")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(watch_signals(shutdown.clone()));
        process(shutdown).await
    })?;
    // Tasks abandoned after the shutdown timeout must not hold the process
    // open.
    runtime.shutdown_timeout(Duration::from_millis(100));
    Ok(())
}

/// One line on stdout with the node's address, so scripts and tests can
/// find the port (and one with the metrics listener's, when set).
fn announce(running: &backflow::runtime::node::Running) {
    println!(
        "backflow listening on {}://{}",
        if running.https { "https" } else { "http" },
        running.http_addr
    );
    if let Some(m) = running.metrics_addr {
        println!("backflow metrics on http://{m}");
    }
}

/// Cancels `shutdown` on the first SIGINT or SIGTERM; a second signal ends
/// the process at once.
async fn watch_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    // One stream per signal for the whole run: each delivery is seen once.
    let (mut int, mut term) = match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(i), Ok(t)) => (i, t),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, "cannot watch SIGINT and SIGTERM");
            return;
        }
    };
    for n in 0.. {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        if n == 0 {
            tracing::info!("signal received, stopping gracefully (send again to stop at once)");
            shutdown.cancel();
        } else {
            tracing::warn!("second signal, exiting now");
            std::process::exit(130);
        }
    }
}

/// Prints `backflow feed check`'s report.
fn print_feed_check(
    feed: &str,
    report: &[backflow::standards::TableCheck],
    json: bool,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
        return Ok(());
    }
    for t in report {
        let standard = t
            .standard
            .as_deref()
            .map_or_else(|| "no standard".to_owned(), |s| format!("standard {s}"));
        println!(
            "feed {feed}, table {} → dataset {} ({standard})",
            t.table, t.dataset
        );
        if let Some(p) = &t.problem {
            println!("  cannot publish: {p}");
            continue;
        }
        println!(
            "  {} rows: {} pass, {} refused, {} unreadable",
            t.rows, t.passing, t.refused, t.unreadable
        );
        for (rule, (n, examples)) in &t.by_rule {
            println!("  {rule}: {n}");
            for e in examples {
                println!("    e.g. {e}");
            }
        }
    }
    Ok(())
}

/// Prints `backflow reconcile`'s report; keys only with `show_keys`.
fn print_reconcile(
    report: &backflow::subscribe::reconcile::Report,
    show_keys: bool,
    json: bool,
) -> anyhow::Result<()> {
    if json {
        let mut value = serde_json::to_value(report)?;
        if !show_keys {
            for t in value["tables"].as_array_mut().into_iter().flatten() {
                for field in ["missing", "extra", "different"] {
                    let n = t[field].as_array().map_or(0, Vec::len);
                    t[field] = n.into();
                }
            }
        }
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    println!("subscription {}", report.subscription);
    for p in &report.positions {
        let applied = p.applied.map_or_else(
            || "nothing applied yet".to_owned(),
            |o| format!("applied through offset {o}"),
        );
        let pending = if p.pending > 0 {
            format!(" ({} newer records not compared)", p.pending)
        } else {
            String::new()
        };
        println!("  {}[{}]: {applied}{pending}", p.topic, p.partition);
    }
    for t in &report.empty_topics {
        println!("  {t}: no records up to the applied offsets; nothing to compare");
    }
    for t in &report.tables {
        let held = t.held.map_or_else(
            || "the table does not exist".to_owned(),
            |n| format!("table holds {n}"),
        );
        println!(
            "  {}: topic gives {} rows, {held}; {} missing, {} extra, {} different: {}",
            t.table,
            t.expected,
            t.missing.len(),
            t.extra.len(),
            t.different.len(),
            if t.equal() { "EQUAL" } else { "DIFFERS" }
        );
        if show_keys {
            for (what, keys) in [
                ("missing", &t.missing),
                ("extra", &t.extra),
                ("different", &t.different),
            ] {
                for k in keys.iter().take(100) {
                    println!("    {what}: {k}");
                }
                if keys.len() > 100 {
                    println!("    ... {} more {what}", keys.len() - 100);
                }
            }
        }
    }
    if report.undecodable + report.refused > 0 {
        println!(
            "  skipped as the subscriber does (dead letters): {} undecodable records, {} refused by the database",
            report.undecodable, report.refused
        );
    }
    println!("{}", if report.equal() { "EQUAL" } else { "DIFFERENT" });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
