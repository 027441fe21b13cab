//! The `backflow` command.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use backflow::config::Config;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

/// backflow: real-time sharing of government data down the administrative
/// hierarchy (province → city → district) over Kafka.
#[derive(Debug, Parser)]
#[command(name = "backflow", version, propagate_version = true)]
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
enum Command {
    /// Run a node: Kafka (embedded when kafka.brokers is not set), internal
    /// topics, /metrics, /healthz and /readyz. Stops gracefully on SIGINT or
    /// SIGTERM.
    Serve,
    /// Print the backflow version and the linked librdkafka version.
    Version,
    /// Configuration tools.
    #[command(subcommand)]
    Config(ConfigCommand),
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

fn load(cli: &Cli) -> anyhow::Result<Config> {
    Ok(Config::load(cli.config.as_deref())?)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Version => {
            println!("backflow {}", backflow::VERSION);
            println!("librdkafka {}", backflow::kafka::librdkafka_version());
            Ok(())
        }
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
            println!("{}", serde_json::to_string_pretty(&config)?);
            Ok(())
        }
        Command::Serve => {
            let config = load(&cli)?;
            backflow::telemetry::init(&config.log);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("backflow")
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(serve(config))?;
            // Tasks abandoned after the shutdown timeout must not hold the
            // process open.
            runtime.shutdown_timeout(Duration::from_millis(100));
            Ok(())
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    tokio::spawn(watch_signals(shutdown.clone()));
    backflow::node::run(config, shutdown, |running| {
        // One line on stdout so scripts and tests can find the port.
        println!("backflow listening on http://{}", running.http_addr);
    })
    .await?;
    Ok(())
}

/// Cancels `shutdown` on the first SIGINT or SIGTERM; a second signal ends
/// the process at once.
async fn watch_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGTERM");
            return;
        }
    };
    for n in 0.. {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
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
