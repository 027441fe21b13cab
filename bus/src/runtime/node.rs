//! The node runtime: what `backflow serve` runs.
//!
//! Starts (or connects to) Kafka, makes sure the internal topics exist,
//! serves `/metrics`, `/healthz` and `/readyz`, keeps a Kafka reachability
//! check behind `/readyz`, and shuts down within `runtime.shutdown_timeout_ms`
//! once the shutdown token is cancelled (SIGINT/SIGTERM in the binary).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use std::sync::Arc;

use crate::config::Config;
use crate::domain::topics;
use crate::http::{self, CheckState, HttpState, Readiness};
use crate::kafka::{
    self, EmbeddedBroker, KafkaError, KafkaSettings, Publisher, TopicAdmin, TopicSpec,
};
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::source::feed::FeedContext;

/// Why a node could not run.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The HTTP address could not be bound.
    #[error("cannot listen on {addr} (http.listen): {source}; is another process using it? set BACKFLOW_HTTP__LISTEN or http.listen to a free address")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// Kafka could not be set up.
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    /// The audit trail's signing key is missing or unusable.
    #[error(transparent)]
    AuditKey(#[from] crate::state::audit::KeyError),
    /// The HTTP server failed.
    #[error("HTTP server failed: {0}")]
    Http(#[source] std::io::Error),
    /// The HTTPS certificate or key cannot be used.
    #[error("{key}: {reason}")]
    Tls { key: &'static str, reason: String },
    /// `--resnapshot` could not reset a feed.
    #[error("cannot take a new snapshot of feed {feed}: {reason}")]
    Resnapshot { feed: String, reason: String },
    /// Tasks did not finish within the shutdown timeout.
    #[error("shutdown did not finish within {0:?} (runtime.shutdown_timeout_ms); some tasks were abandoned")]
    ShutdownTimeout(Duration),
}

/// Readiness check: the brokers answer metadata requests.
const CHECK_KAFKA: &str = "kafka";
/// Readiness check: the internal topics exist.
const CHECK_TOPICS: &str = "internal_topics";
/// Readiness check: the schema registry replayed `backflow._schemas`.
const CHECK_REGISTRY: &str = "schema_registry";

/// What a process runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Role {
    /// Everything: feeds (configured and registered through the API),
    /// distributor, control-plane API, subscriptions (`backflow serve`).
    #[default]
    Node,
    /// Only the configured feeds (`backflow source`), publishing to the
    /// raw topics; the node process distributes.
    Source {
        /// Feeds to take a new snapshot of before they start: their
        /// replication slots are dropped and their positions forgotten.
        resnapshot: Vec<String>,
    },
}

/// A started node: its resolved addresses, for callers and tests.
pub struct Running {
    /// Where the HTTP server listens.
    pub http_addr: SocketAddr,
    /// Whether it serves HTTPS (`http.tls_cert`).
    pub https: bool,
    /// Where `/metrics` is served without a token (`http.metrics_listen`).
    pub metrics_addr: Option<SocketAddr>,
    /// The Kafka bootstrap list in use.
    pub bootstrap: String,
    /// Whether that is the embedded in-memory broker.
    pub embedded: bool,
}

/// Runs a node until `shutdown` is cancelled. `on_started` is called once
/// the HTTP server listens.
pub async fn run(
    config: Config,
    shutdown: CancellationToken,
    on_started: impl FnOnce(&Running),
) -> Result<(), NodeError> {
    run_as(Role::Node, config, shutdown, on_started).await
}

/// Runs the parts of a node `role` selects until `shutdown` is cancelled.
pub async fn run_as(
    role: Role,
    config: Config,
    shutdown: CancellationToken,
    on_started: impl FnOnce(&Running),
) -> Result<(), NodeError> {
    // Kafka: the configured cluster, or the embedded broker. The embedded
    // one stops last, after every client of the node is gone.
    let embedded = match &config.kafka.brokers {
        Some(_) => None,
        None => Some(EmbeddedBroker::start()?),
    };
    let outcome = run_on(role, config, embedded.as_ref(), shutdown, on_started).await;
    drop(embedded);
    outcome
}

async fn run_on(
    role: Role,
    config: Config,
    embedded: Option<&EmbeddedBroker>,
    shutdown: CancellationToken,
    on_started: impl FnOnce(&Running),
) -> Result<(), NodeError> {
    let is_node = role == Role::Node;
    let metrics = Metrics::new();
    let readiness = Readiness::default();
    readiness.register(CHECK_KAFKA);
    readiness.register(CHECK_TOPICS);
    readiness.register(CHECK_REGISTRY);
    let bootstrap = bootstrap(&config, embedded);
    let settings = KafkaSettings::from_config(&config.kafka, &bootstrap);
    let audit_key = audit_key(is_node, &config, embedded.is_some())?;
    let mut listeners = Listeners::bind(&config.http).await?;
    let tracker = TaskTracker::new();
    let publisher = Publisher::new(&settings, Some(metrics.clone()))?;
    if let Role::Source { resnapshot } = &role {
        resnapshot_feeds(&config, resnapshot, &publisher).await?;
    }
    let process = Process {
        config: &config,
        is_node,
        settings: settings.clone(),
        metrics: metrics.clone(),
        readiness: readiness.clone(),
        tracker: tracker.clone(),
        shutdown: shutdown.clone(),
    };
    let state = process.start_state(&publisher, audit_key)?;
    let feed_statuses = crate::source::feeds::FeedStatuses::default();
    let admission =
        crate::admission::FeedAdmission::new(config.secrets.clone(), config.api_feeds.clone())
            .with_cascaded(config.cascaded_datasets());
    // What the upper node grants of each dataset received from it, and
    // whom this node's lower nodes share on with.
    let upper = crate::upper::UpperGrants::new(&config.cascaded_datasets());
    let holder_reports = crate::holders::HolderReports::default();
    if is_node {
        process.start_catalog_keepers(&state, &upper, &holder_reports);
    }

    process.start_subscriptions_and_data_path(
        embedded,
        &state,
        &publisher,
        &feed_statuses,
        &admission,
        &upper,
    );
    let lag_board = process.start_lag_monitor(&state, &feed_statuses);

    let http_state = HttpState {
        metrics: metrics.clone(),
        readiness: readiness.clone(),
        auth: crate::auth::Authenticator::new(&config.auth.tokens, state.catalog.clone()),
    };
    let metrics_addr = listeners.serve_ops(&http_state, &tracker, &shutdown)?;
    // The registry takes the API's tokens: reads for any principal, writes
    // for admin (the node's own feeds and distributor write in-process).
    let registry_auth = http_state.auth.clone();
    let mut router = http::router(http_state).merge(crate::control::registry::router(
        state.registry.clone(),
        registry_auth,
    ));
    if is_node {
        let control = ControlPlane {
            state,
            feed_statuses,
            publisher: publisher.clone(),
            lag_board,
            metrics: metrics.clone(),
            admission,
            upper,
            holder_reports,
        };
        let kafka_acls = process.start_cluster_keepers(&control.state, embedded.is_some())?;
        router = router.merge(control.router(&config, kafka_acls));
    }
    let http_addr = listeners.addr;
    let https = listeners.tls.is_some();
    let http_task = listeners.serve_main(router, &tracker, &shutdown);

    let running = Running {
        http_addr,
        https,
        metrics_addr,
        bootstrap: bootstrap.clone(),
        embedded: embedded.is_some(),
    };
    tracing::info!(
        node = %config.node.code,
        name = %config.node.name,
        http = %http_addr,
        kafka = %bootstrap,
        embedded = running.embedded,
        version = crate::VERSION,
        role = if is_node { "node" } else { "source" },
        "backflow node started"
    );
    on_started(&running);
    wind_down(&config, &shutdown, tracker, http_task).await
}

/// The Kafka bootstrap list: the configured cluster's, or the embedded
/// broker's (with a warning that it is for trying backflow only).
fn bootstrap(config: &Config, embedded: Option<&EmbeddedBroker>) -> String {
    let bootstrap = match (&config.kafka.brokers, embedded) {
        (Some(b), _) => b.clone(),
        (None, Some(e)) => e.bootstrap_servers().to_owned(),
        (None, None) => unreachable!("embedded broker started above"),
    };
    if embedded.is_some() {
        tracing::warn!(
            bootstrap = %bootstrap,
            "NO KAFKA CONFIGURED: running on an embedded in-memory broker. Data is lost when \
             this process stops. This is for trying backflow only; set kafka.brokers \
             (BACKFLOW_KAFKA__BROKERS) for real use."
        );
    }
    bootstrap
}

/// The audit trail's key, before anything starts: a node on a real cluster
/// without one refuses to run. A source process writes no audit records;
/// it signs with the configured key or one of its own.
fn audit_key(
    is_node: bool,
    config: &Config,
    embedded: bool,
) -> Result<crate::state::audit::AuditKey, NodeError> {
    Ok(if is_node {
        crate::state::audit::AuditKey::for_node(&config.audit, embedded)?
    } else {
        match crate::state::audit::AuditKey::from_config(&config.audit)? {
            Some(key) => key,
            None => crate::state::audit::AuditKey::generate()?,
        }
    })
}

/// The ACL client, what the brokers confirmed, and a topic client: what
/// the API needs to show and create a child node's Kafka rights.
type KafkaAcls = (
    Arc<crate::kafka::acl::AclAdmin>,
    crate::acls::AclsInForce,
    Arc<TopicAdmin>,
);

/// What the parts of one process share while it starts them.
struct Process<'a> {
    config: &'a Config,
    is_node: bool,
    settings: KafkaSettings,
    metrics: Metrics,
    readiness: Readiness,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

impl Process<'_> {
    /// The node's catalog-driven loops: following the upper node's grants
    /// (and reporting onward holders up), expiring subscriptions, and
    /// re-signing records of an old key.
    fn start_catalog_keepers(
        &self,
        state: &State,
        upper: &crate::upper::UpperGrants,
        holder_reports: &crate::holders::HolderReports,
    ) {
        self.tracker.spawn(crate::upper::follow(
            self.config.subscriptions.clone(),
            self.config.node.code.to_string(),
            upper.clone(),
            crate::upper::Reporting {
                catalog: state.catalog.clone(),
                shares: self.config.shares.clone(),
                reports: holder_reports.clone(),
            },
            self.shutdown.clone(),
        ));
        self.tracker.spawn(expire_subscriptions(
            state.catalog.clone(),
            state.auditor.clone(),
            self.shutdown.clone(),
        ));
        self.tracker.spawn(refresh_catalog(
            state.catalog.clone(),
            self.shutdown.clone(),
        ));
    }

    /// What the node keeps true on the cluster itself: each child node's
    /// ACLs (`kafka.manage_acls`) and the deletion of ended share topics.
    /// Neither runs on the embedded broker, which has no ACLs and deletes
    /// nothing. Returns what the API shows of the ACLs.
    fn start_cluster_keepers(
        &self,
        state: &State,
        embedded: bool,
    ) -> Result<Option<KafkaAcls>, NodeError> {
        if embedded {
            return Ok(None);
        }
        let kafka_acls = if self.config.kafka.manage_acls {
            let admin = Arc::new(crate::kafka::acl::AclAdmin::new(&self.settings)?);
            let in_force = crate::acls::AclsInForce::default();
            self.tracker.spawn(
                crate::acls::Reconciler {
                    admin: admin.clone(),
                    catalog: state.catalog.clone(),
                    auditor: state.auditor.clone(),
                    config_shares: self.config.shares.clone(),
                    in_force: in_force.clone(),
                    metrics: self.metrics.clone(),
                }
                .run(self.shutdown.clone()),
            );
            Some((admin, in_force, Arc::new(TopicAdmin::new(&self.settings)?)))
        } else {
            None
        };
        match TopicAdmin::new(&self.settings) {
            Ok(admin) => {
                self.tracker.spawn(
                    crate::distributor::ended::Sweeper {
                        admin,
                        catalog: state.catalog.clone(),
                        auditor: state.auditor.clone(),
                        config_shares: self.config.shares.clone(),
                        metrics: self.metrics.clone(),
                    }
                    .run(self.shutdown.clone()),
                );
            }
            Err(e) => tracing::warn!(
                error = %e,
                "no admin client: the share topics of ended subscriptions are not deleted"
            ),
        }
        Ok(kafka_acls)
    }

    /// Subscriptions to upper nodes and the data path: cascading
    /// subscriptions (sink `kafka`) start with the feeds and the
    /// distributor, once this node's topics and registry are ready; the
    /// others apply to this node's databases from now.
    fn start_subscriptions_and_data_path(
        &self,
        embedded: Option<&EmbeddedBroker>,
        state: &State,
        publisher: &Publisher,
        feed_statuses: &crate::source::feeds::FeedStatuses,
        admission: &crate::admission::FeedAdmission,
        upper: &crate::upper::UpperGrants,
    ) {
        let config = self.config;
        let health = crate::subscribe::SubscriptionHealth::new(self.readiness.clone());
        let subscriptions = if self.is_node {
            config.subscriptions.clone()
        } else {
            Vec::new()
        };
        let (cascading, databases): (Vec<_>, Vec<_>) = subscriptions
            .iter()
            .cloned()
            .partition(|s| matches!(s.sink, crate::subscribe::config::SinkConfig::Kafka(_)));
        self.tracker.spawn(start_data_path(
            DataPath {
                is_node: self.is_node,
                settings: self.settings.clone(),
                embedded_admin: embedded.map(EmbeddedBroker::admin),
                registry: state.registry.clone(),
                publisher: publisher.clone(),
                metrics: self.metrics.clone(),
                node_code: config.node.code.to_string(),
                standards: Arc::new(config.standards.clone()),
                partitions: config.kafka.partitions,
                replication_factor: config.kafka.replication_factor,
                transactions: config
                    .kafka
                    .transactions
                    .then(|| Duration::from_millis(config.kafka.transaction_interval_ms)),
                distributor_transactions: (config.kafka.transactions
                    && config.kafka.distributor_transactions)
                    .then(|| Duration::from_millis(config.kafka.transaction_interval_ms)),
                replica: config.kafka.replica_name(),
                feeds: config.feeds.clone(),
                feed_statuses: feed_statuses.clone(),
                admission: Arc::new(admission.clone()),
                shares: config.shares.clone(),
                cascading,
                cascade_health: health.clone(),
                catalog: state.catalog.clone(),
                auditor: state.auditor.clone(),
                upper: upper.clone(),
                readiness: self.readiness.clone(),
                tracker: self.tracker.clone(),
            },
            self.shutdown.clone(),
        ));
        self.tracker.spawn(watch_kafka(
            self.settings.clone(),
            self.readiness.clone(),
            self.metrics.clone(),
            Duration::from_millis(config.runtime.readiness_interval_ms.max(100)),
            self.shutdown.clone(),
        ));
        for sub in databases {
            self.tracker.spawn(crate::subscribe::supervise(
                sub,
                self.metrics.clone(),
                health.clone(),
                None,
                self.shutdown.clone(),
            ));
        }
        if subscriptions.is_empty() {
            self.readiness
                .set(crate::subscribe::CHECK_SUBSCRIPTIONS, CheckState::Ok);
        }
    }

    /// On a node, the lag board of the subscriptions it serves and of its
    /// feeds, kept current from now.
    fn start_lag_monitor(
        &self,
        state: &State,
        feed_statuses: &crate::source::feeds::FeedStatuses,
    ) -> crate::lag::LagBoard {
        let board = crate::lag::LagBoard::default();
        if self.is_node {
            self.readiness.register(crate::lag::CHECK_STATUSES);
            let ctx = crate::lag::MonitorContext {
                node: self.config.node.code.to_string(),
                settings: self.settings.clone(),
                served: served(state.catalog.clone(), &self.config.shares),
                feeds: feed_statuses.clone(),
                metrics: self.metrics.clone(),
                window: Duration::from_secs(self.config.runtime.lag_window_secs.max(4)),
                readiness: self.readiness.clone(),
            };
            let (board, shutdown) = (board.clone(), self.shutdown.clone());
            // The monitor reads what subscribers write (their groups'
            // commit metadata): should anything of it still make a round
            // panic, the board is not left frozen for every subscriber.
            self.tracker.spawn(async move {
                loop {
                    let run = tokio::spawn(crate::lag::monitor(
                        ctx.clone(),
                        board.clone(),
                        shutdown.clone(),
                    ));
                    match run.await {
                        Err(e) if e.is_panic() && !shutdown.is_cancelled() => {
                            tracing::error!("the lag monitor failed; restarting it in 1 s");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                        _ => return,
                    }
                }
            });
        }
        board
    }
}

/// What the control plane of a node serves from.
struct ControlPlane {
    state: State,
    feed_statuses: crate::source::feeds::FeedStatuses,
    publisher: Publisher,
    lag_board: crate::lag::LagBoard,
    metrics: Metrics,
    admission: crate::admission::FeedAdmission,
    upper: crate::upper::UpperGrants,
    holder_reports: crate::holders::HolderReports,
}

impl ControlPlane {
    /// The API and, at `/`, the operators' dashboard (its data comes from
    /// /api).
    fn router(self, config: &Config, kafka_acls: Option<KafkaAcls>) -> axum::Router {
        let mut api = crate::control::api::ApiState::new(
            self.state.catalog,
            self.state.auditor,
            &config.auth.tokens,
            config.node.clone(),
            self.feed_statuses,
            self.publisher,
            self.state.registry,
        )
        .with_lag(self.lag_board)
        .with_metrics(self.metrics)
        .with_standards(config.standards.clone())
        .with_feeds(self.admission, &config.feeds)
        .with_cascaded(config.cascaded_datasets())
        .with_config_shares(config.shares.clone())
        .with_upper(self.upper)
        .with_holder_reports(self.holder_reports);
        if let Some((admin, in_force, topics)) = kafka_acls {
            api = api.with_kafka_acls(
                admin,
                in_force,
                config.kafka.own_principal(),
                (topics, config.kafka.replication_factor),
            );
        }
        crate::control::api::router(api).merge(crate::control::dashboard::router())
    }
}

/// Takes a new snapshot of the named feeds (`backflow source --resnapshot`):
/// their replication slots are dropped and their positions forgotten.
async fn resnapshot_feeds(
    config: &Config,
    names: &[String],
    publisher: &Publisher,
) -> Result<(), NodeError> {
    for name in names {
        let Some(feed) = config.feeds.iter().find(|f| f.name() == name) else {
            continue;
        };
        crate::source::feeds::resnapshot(feed, publisher)
            .await
            .map_err(|e| NodeError::Resnapshot {
                feed: name.clone(),
                reason: e.to_string(),
            })?;
    }
    Ok(())
}

/// The Kafka-backed state every process of a node keeps: the schema
/// registry, the catalog and the audit trail's writer.
struct State {
    registry: Registry,
    catalog: crate::state::catalog::Catalog,
    auditor: crate::state::audit::Auditor,
}

impl Process<'_> {
    /// Starts following the registry and the catalog (their followers run on
    /// `tracker`) and the audit trail's writer.
    fn start_state(
        &self,
        publisher: &Publisher,
        audit_key: crate::state::audit::AuditKey,
    ) -> Result<State, NodeError> {
        let (config, settings, metrics, tracker, shutdown) = (
            self.config,
            &self.settings,
            &self.metrics,
            &self.tracker,
            &self.shutdown,
        );
        let config_is_node = self.is_node;
        let proposer = format!(
            "{}-{}-{}",
            config.node.code,
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or_default()
        );
        let (registry, follower) =
            Registry::start(settings, publisher.clone(), proposer, shutdown.clone())?;
        tracker.spawn(async move {
            let _ = follower.await;
        });
        let previous = config
            .audit
            .previous_keys()
            .expect("checked when the configuration was loaded");
        let mut previous_keys = Vec::new();
        for path in &config.audit.previous_key_files {
            let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
                crate::state::audit::KeyError::Unreadable {
                    path: path.clone(),
                    reason: e.to_string(),
                }
            })?);
            previous_keys.push(crate::state::audit::AuditKey::from_seed_hex(
                &text,
                &format!("audit.previous_key_files ({})", path.display()),
            )?);
        }
        let keys = crate::state::catalog::CatalogKeys::new(audit_key.clone(), previous)
            .with_previous_keys(&previous_keys)
            .with_unsigned_until(config.audit.unsigned_catalog_until_offset);
        // A source process (possibly a department's) holds no key of the
        // node's: it does not read the catalog, whose records it could not check.
        let catalog = if config_is_node {
            let (catalog, catalog_follower) = crate::state::catalog::Catalog::start(
                settings,
                publisher.clone(),
                keys,
                metrics,
                shutdown.clone(),
            )?;
            tracker.spawn(async move {
                let _ = catalog_follower.await;
            });
            catalog
        } else {
            crate::state::catalog::Catalog::unread(settings, publisher.clone(), keys, metrics)?
        };
        // One chain per writer: a process named as one of several serving
        // the node (`kafka.replica` set) writes `<code>/<replica>`.
        let chain = match &config.kafka.replica {
            Some(replica) => format!("{}/{replica}", config.node.code.as_str()),
            None => config.node.code.as_str().to_owned(),
        };
        let mut auditor = crate::state::audit::Auditor::new(
            settings,
            publisher.clone(),
            &chain,
            audit_key,
            config.audit.checkpoint_every,
        );
        // A chain has one writer: the process claims it (fencing any other
        // under the same name) before it reads where the chain ends.
        if config.kafka.transactions {
            auditor = auditor.in_transactions(Some(metrics.clone()));
        }
        Ok(State {
            registry,
            catalog,
            auditor,
        })
    }
}

/// Ends subscriptions past their validity within seconds, until `shutdown`.
async fn expire_subscriptions(
    catalog: crate::state::catalog::Catalog,
    auditor: crate::state::audit::Auditor,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
        if let Err(e) = crate::control::api::expire(&catalog, &auditor).await {
            tracing::debug!(error = %e, "expiry check failed");
        }
    }
}

/// Writes again, under the node's current key, the catalog records signed
/// or sealed with a previous one (after a key rotation or the upgrade to
/// signed records), once the catalog has been read; retried until done.
async fn refresh_catalog(catalog: crate::state::catalog::Catalog, shutdown: CancellationToken) {
    loop {
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = catalog.refresh_stale() => r,
        };
        match outcome {
            Ok(0) => return,
            Ok(n) => {
                tracing::info!(
                    records = n,
                    "catalog records written again under the node's current key: previous keys (audit.previous_key_files, audit.previous_public_keys) and audit.unsigned_catalog_until_offset may now be removed"
                );
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "writing catalog records again under the current key failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
            }
        }
    }
}

/// What the data path starts with once Kafka and the registry are ready.
struct DataPath {
    is_node: bool,
    settings: KafkaSettings,
    embedded_admin: Option<kafka::EmbeddedAdmin>,
    registry: Registry,
    publisher: Publisher,
    metrics: Metrics,
    node_code: String,
    standards: Arc<Vec<crate::standards::StandardConfig>>,
    partitions: i32,
    replication_factor: i32,
    transactions: Option<Duration>,
    distributor_transactions: Option<Duration>,
    replica: String,
    feeds: Vec<crate::source::config::FeedConfig>,
    feed_statuses: crate::source::feeds::FeedStatuses,
    admission: Arc<crate::admission::FeedAdmission>,
    shares: Vec<crate::distributor::share::ShareConfig>,
    cascading: Vec<crate::subscribe::config::SubscriptionConfig>,
    cascade_health: crate::subscribe::SubscriptionHealth,
    catalog: crate::state::catalog::Catalog,
    auditor: crate::state::audit::Auditor,
    upper: crate::upper::UpperGrants,
    readiness: Readiness,
    tracker: TaskTracker,
}

impl DataPath {
    fn admin(&self) -> Result<TopicAdmin, KafkaError> {
        match &self.embedded_admin {
            Some(a) => Ok(TopicAdmin::Embedded(a.clone())),
            None => TopicAdmin::new(&self.settings),
        }
    }

    /// Creates the internal topics that do not exist yet.
    async fn ensure_internal_topics(&self) -> Result<Vec<String>, KafkaError> {
        let (partitions, rf) = (self.partitions, self.replication_factor);
        let specs = [
            TopicSpec::compacted(topics::catalog(), 1, rf),
            TopicSpec::compacted(topics::offsets(), partitions, rf),
            TopicSpec::kept(topics::audit(), 1, rf),
            TopicSpec::compacted(topics::schemas(), 1, rf),
            TopicSpec::compacted(topics::subscribers(), 1, rf),
            // Never written: its one partition is what feeds' lease groups
            // assign (see kafka::lease).
            TopicSpec::compacted(topics::leases(), 1, rf),
        ];
        self.admin()?.ensure(&specs).await
    }

    /// Starts the feeds and, on a node, the cascading subscriptions and
    /// the distributor.
    fn start(self, shutdown: CancellationToken) {
        let admin = match self.admin() {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(error = %e, "cannot start feeds");
                return;
            }
        };
        let ctx = FeedContext {
            node: self.node_code,
            publisher: self.publisher,
            settings: self.settings,
            registry: self.registry,
            admin: Arc::new(admin),
            partitions: self.partitions,
            replication_factor: self.replication_factor,
            metrics: self.metrics,
            standards: self.standards,
            transactions: self.transactions,
            distributor_transactions: self.distributor_transactions,
            replica: self.replica,
            leases: self.embedded_admin.is_none(),
        };
        self.tracker.spawn(crate::source::feeds::manage(
            self.feeds,
            self.is_node
                .then_some((self.catalog.clone(), self.admission)),
            ctx.clone(),
            self.feed_statuses,
            shutdown.clone(),
        ));
        if !self.is_node {
            return;
        }
        for sub in self.cascading {
            if !ctx.leases {
                self.tracker.spawn(crate::subscribe::supervise(
                    sub,
                    ctx.metrics.clone(),
                    self.cascade_health.clone(),
                    Some(ctx.clone()),
                    shutdown.clone(),
                ));
                continue;
            }
            // Like a feed, a cascading subscription runs in the one process
            // serving the node that holds its lease.
            let (ctx, health, stop) = (ctx.clone(), self.cascade_health.clone(), shutdown.clone());
            self.tracker.spawn(async move {
                let group = topics::cascade_lease(&ctx.node, &sub.name);
                crate::kafka::lease::run_leased(
                    &ctx.settings.clone(),
                    &group,
                    topics::leases(),
                    &ctx.replica.clone(),
                    stop,
                    |stop| {
                        crate::subscribe::supervise(
                            sub.clone(),
                            ctx.metrics.clone(),
                            health.clone(),
                            Some(ctx.clone()),
                            stop,
                        )
                    },
                )
                .await;
            });
        }
        self.tracker.spawn(crate::distributor::supervise(
            self.shares,
            self.catalog,
            self.auditor,
            self.upper,
            ctx,
            shutdown,
        ));
    }
}

/// Makes sure the internal topics exist and the registry has replayed its
/// topic (each retried until it passes or the node stops), then starts the
/// data path.
async fn start_data_path(path: DataPath, shutdown: CancellationToken) {
    // Start-up waits for Kafka: tried again soon, at most every 30 s.
    let mut restarts = crate::domain::restart::Restarts::new(crate::domain::restart::Policy {
        first: Duration::from_millis(200),
        max: Duration::from_secs(30),
        ..crate::domain::restart::Policy::DEFAULT
    });
    use crate::domain::restart::Kind;
    loop {
        // Each attempt is a run: the backoff starts over only after an
        // attempt that lasted a healthy minute, not a minute after start.
        let attempt = restarts.begin();
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => return,
            outcome = path.ensure_internal_topics() => outcome,
        };
        match outcome {
            Ok(created) => {
                if !created.is_empty() {
                    tracing::info!(topics = ?created, "created internal topics");
                }
                path.readiness.set(CHECK_TOPICS, CheckState::Ok);
                break;
            }
            Err(e) => {
                let retry = attempt.failed(e.kind());
                tracing::warn!(error = %e, kind = retry.label(), retry_in = ?retry.wait, "cannot create internal topics yet");
                path.readiness
                    .set(CHECK_TOPICS, CheckState::Failing(e.to_string()));
                if !crate::domain::restart::pause(retry.wait, &shutdown).await {
                    return;
                }
            }
        }
    }
    loop {
        let attempt = restarts.begin();
        match path.registry.caught_up().await {
            Ok(()) => {
                path.readiness.set(CHECK_REGISTRY, CheckState::Ok);
                crate::standards::register(&path.registry, &path.standards).await;
                path.start(shutdown);
                return;
            }
            Err(e) => {
                let retry = attempt.failed(e.kind());
                path.readiness
                    .set(CHECK_REGISTRY, CheckState::Failing(e.to_string()));
                if !crate::domain::restart::pause(retry.wait, &shutdown).await {
                    return;
                }
            }
        }
    }
}

/// Keeps the Kafka reachability check behind `/readyz` and the broker
/// gauge current every `interval`, logging each change, until `shutdown`.
async fn watch_kafka(
    settings: KafkaSettings,
    readiness: Readiness,
    metrics: Metrics,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut was_ok = None;
    loop {
        let state = match kafka::check_reachable(&settings).await {
            Ok(_) => CheckState::Ok,
            Err(e) => CheckState::Failing(e.to_string()),
        };
        let ok = state == CheckState::Ok;
        metrics.kafka_broker_reachable.set(i64::from(ok));
        if was_ok != Some(ok) {
            match &state {
                CheckState::Failing(reason) => {
                    tracing::warn!(%reason, "Kafka is not reachable")
                }
                _ => tracing::info!("Kafka is reachable"),
            }
            was_ok = Some(ok);
        }
        readiness.set(CHECK_KAFKA, state);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// What the lag board covers, asked each round: the configuration's shares
/// and the catalog's active subscriptions.
fn served(
    catalog: crate::state::catalog::Catalog,
    config_shares: &[crate::distributor::share::ShareConfig],
) -> Arc<dyn Fn() -> futures::future::BoxFuture<'static, crate::lag::Served> + Send + Sync> {
    let shares = Arc::new(config_shares.to_vec());
    Arc::new(move || {
        let catalog = catalog.clone();
        let shares = shares.clone();
        Box::pin(async move { crate::lag::served_now(&shares, &*catalog.state().await) })
    })
}

/// The HTTP listeners of a process: the main one, and one for `/metrics`,
/// `/healthz` and `/readyz` without a token when `http.metrics_listen` says
/// so.
struct Listeners {
    main: TcpListener,
    addr: SocketAddr,
    metrics: Option<TcpListener>,
    /// HTTPS on the main listener.
    tls: Option<http::Tls>,
}

impl Listeners {
    /// Binds both, before anything starts, so a taken address fails the
    /// process at once, naming the key.
    async fn bind(http: &crate::http::HttpConfig) -> Result<Self, NodeError> {
        let bind_error = |addr| move |source| NodeError::Bind { addr, source };
        let main = TcpListener::bind(http.listen)
            .await
            .map_err(bind_error(http.listen))?;
        let addr = main.local_addr().map_err(bind_error(http.listen))?;
        let metrics = match http.metrics_listen {
            Some(at) => Some(TcpListener::bind(at).await.map_err(bind_error(at))?),
            None => None,
        };
        let tls = match (&http.tls_cert, &http.tls_key) {
            (Some(cert), Some(key)) => Some(
                http::Tls::from_files(cert, key)
                    .map_err(|(key, reason)| NodeError::Tls { key, reason })?,
            ),
            _ => None,
        };
        Ok(Self {
            main,
            addr,
            metrics,
            tls,
        })
    }

    /// Serves the operational endpoints on the metrics listener, if any;
    /// its address.
    fn serve_ops(
        &mut self,
        state: &HttpState,
        tracker: &TaskTracker,
        shutdown: &CancellationToken,
    ) -> Result<Option<SocketAddr>, NodeError> {
        let Some(l) = self.metrics.take() else {
            return Ok(None);
        };
        let addr = l.local_addr().map_err(NodeError::Http)?;
        tracker.spawn(http::serve(
            l,
            http::ops_router(state.clone()),
            shutdown.clone(),
        ));
        Ok(Some(addr))
    }

    /// Serves `router` on the main listener, the process's last task: the
    /// tracker is closed, so shutdown waits for what was started.
    fn serve_main(
        self,
        router: axum::Router,
        tracker: &TaskTracker,
        shutdown: &CancellationToken,
    ) -> tokio::task::JoinHandle<std::io::Result<()>> {
        let task = tracker.spawn(http::serve_main(
            self.main,
            router,
            self.tls,
            shutdown.clone(),
        ));
        tracker.close();
        task
    }
}

/// Waits for `shutdown`, then for the process's tasks within
/// `runtime.shutdown_timeout_ms`, and for the HTTP server's end.
async fn wind_down(
    config: &Config,
    shutdown: &CancellationToken,
    tracker: TaskTracker,
    http_task: tokio::task::JoinHandle<std::io::Result<()>>,
) -> Result<(), NodeError> {
    shutdown.cancelled().await;
    let timeout = Duration::from_millis(config.runtime.shutdown_timeout_ms);
    tracing::info!(?timeout, "shutting down");
    if tokio::time::timeout(timeout, tracker.wait()).await.is_err() {
        return Err(NodeError::ShutdownTimeout(timeout));
    }
    match http_task.await {
        Ok(Err(e)) => Err(NodeError::Http(e)),
        _ => {
            tracing::info!("shutdown complete");
            Ok(())
        }
    }
}

/// Runs the subscriptions of `config` with an HTTP server for `/metrics`,
/// `/healthz` and `/readyz`, until `shutdown` is cancelled
/// (`backflow subscribe`).
pub async fn run_subscriber(
    config: Config,
    shutdown: CancellationToken,
    on_started: impl FnOnce(SocketAddr, Option<SocketAddr>),
) -> Result<(), NodeError> {
    let metrics = Metrics::new();
    let readiness = Readiness::default();
    let health = crate::subscribe::SubscriptionHealth::new(readiness.clone());
    let mut listeners = Listeners::bind(&config.http).await?;
    let tracker = TaskTracker::new();
    for sub in config.subscriptions.clone() {
        tracker.spawn(crate::subscribe::supervise(
            sub,
            metrics.clone(),
            health.clone(),
            None,
            shutdown.clone(),
        ));
    }
    let http_state = HttpState {
        metrics: metrics.clone(),
        readiness,
        auth: crate::auth::Authenticator::configured_only(&config.auth.tokens),
    };
    let metrics_addr = listeners.serve_ops(&http_state, &tracker, &shutdown)?;
    let router = http::router(http_state);
    let addr = listeners.addr;
    let http_task = listeners.serve_main(router, &tracker, &shutdown);
    tracing::info!(
        http = %addr,
        subscriptions = config.subscriptions.len(),
        version = crate::VERSION,
        "backflow subscriber started"
    );
    on_started(addr, metrics_addr);
    wind_down(&config, &shutdown, tracker, http_task).await
}

#[cfg(test)]
mod tests {
    //! The node in-process, on the embedded broker (librdkafka's in-memory
    //! cluster): no database, broker or binary needed.

    use super::*;
    use sha2::Digest as _;

    const ADMIN_TOKEN: &str = "node-unit-test-admin";

    fn config() -> Config {
        let mut c = Config::default();
        c.http.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        c.auth.tokens = vec![crate::auth::TokenConfig {
            principal: "admin".to_owned(),
            sha256: hex::encode(sha2::Sha256::digest(ADMIN_TOKEN)),
        }];
        c
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_node_on_the_embedded_broker_gets_ready_answers_its_api_and_stops_when_asked() {
        let shutdown = CancellationToken::new();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let node = tokio::spawn(run(config(), shutdown.clone(), move |r| {
            let _ = tx.send((r.http_addr, r.embedded, r.https));
        }));
        let (addr, embedded, https) = rx.await.expect("the node started");
        assert!(embedded, "no kafka.brokers: the embedded broker");
        assert!(!https);
        let client = reqwest::Client::new();
        let url = |path: &str| format!("http://{addr}{path}");

        // Ready once Kafka answers, the internal topics exist and the
        // registry replayed its topic.
        let until = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let r = client.get(url("/readyz")).send().await.unwrap();
            if r.status() == 200 {
                break;
            }
            assert!(std::time::Instant::now() < until, "never ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // The API refuses a caller without a token, with a typed body, and
        // answers an admin.
        let r = client.get(url("/api/node")).send().await.unwrap();
        assert_eq!(r.status(), 401);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"], "unauthorized");
        assert!(body["reason"].as_str().is_some_and(|r| !r.is_empty()));
        let info: serde_json::Value = client
            .get(url("/api/node"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(info["code"], "330000");
        assert_eq!(info["jurisdiction_prefix"], "33");
        assert_eq!(info["parent"], serde_json::Value::Null);
        assert_eq!(info["children"], serde_json::json!([]));
        assert_eq!(
            info["audit_public_key"].as_str().map(str::len),
            Some(64),
            "{info}"
        );

        // Cancelled: every task ends within the shutdown timeout, the
        // outcome is Ok, and the address is free again.
        shutdown.cancel();
        let outcome = tokio::time::timeout(Duration::from_secs(15), node)
            .await
            .expect("stopped within 15 s")
            .expect("no panic");
        assert!(outcome.is_ok(), "{outcome:?}");
        tokio::net::TcpListener::bind(addr)
            .await
            .expect("the listener is closed");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_taken_address_stops_the_node_before_it_starts_naming_the_key() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = config();
        c.http.listen = taken.local_addr().unwrap();
        let started = std::sync::atomic::AtomicBool::new(false);
        let err = run(c, CancellationToken::new(), |_| {
            started.store(true, std::sync::atomic::Ordering::SeqCst)
        })
        .await
        .expect_err("the address is taken");
        assert!(matches!(err, NodeError::Bind { .. }), "{err:?}");
        assert!(err.to_string().contains("http.listen"), "{err}");
        assert!(!started.load(std::sync::atomic::Ordering::SeqCst));
    }

    #[test]
    fn a_node_on_a_real_cluster_needs_an_audit_key_and_a_source_or_the_demo_does_not() {
        let c = Config::default();
        let refused = audit_key(true, &c, false).expect_err("a real cluster, no key");
        assert!(
            refused.to_string().contains("audit.signing_key_file"),
            "{refused}"
        );
        assert!(audit_key(true, &c, true).is_ok(), "the demo: a key per run");
        assert!(
            audit_key(false, &c, false).is_ok(),
            "a source signs nothing"
        );
    }
}
