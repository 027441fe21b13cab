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
use crate::feed::FeedContext;
use crate::http::{self, CheckState, HttpState, Readiness};
use crate::kafka::{
    self, EmbeddedBroker, KafkaError, KafkaSettings, Publisher, TopicAdmin, TopicSpec,
};
use crate::metrics::Metrics;
use crate::registry::Registry;

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
    AuditKey(#[from] crate::audit::KeyError),
    /// The HTTP server failed.
    #[error("HTTP server failed: {0}")]
    Http(#[source] std::io::Error),
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
    let settings = KafkaSettings::from_config(&config.kafka, &bootstrap);
    // The audit trail's key, before anything starts: a node on a real
    // cluster without one refuses to run. A source process writes no
    // audit records; it signs with the configured key or none of use.
    let audit_key = if is_node {
        crate::audit::AuditKey::for_node(&config.audit, embedded.is_some())?
    } else {
        match crate::audit::AuditKey::from_config(&config.audit)? {
            Some(key) => key,
            None => crate::audit::AuditKey::generate()?,
        }
    };

    let listener = TcpListener::bind(config.http.listen)
        .await
        .map_err(|source| NodeError::Bind {
            addr: config.http.listen,
            source,
        })?;
    let http_addr = listener.local_addr().map_err(NodeError::Http)?;
    let metrics_listener = match config.http.metrics_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| NodeError::Bind { addr, source })?,
        ),
        None => None,
    };

    let tracker = TaskTracker::new();

    let publisher = Publisher::new(&settings, Some(metrics.clone()))?;
    if let Role::Source { resnapshot } = &role {
        for name in resnapshot {
            let Some(feed) = config.feeds.iter().find(|f| f.name() == name) else {
                continue;
            };
            crate::feeds::resnapshot(feed, &publisher)
                .await
                .map_err(|e| NodeError::Resnapshot {
                    feed: name.clone(),
                    reason: e.to_string(),
                })?;
        }
    }
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
        Registry::start(&settings, publisher.clone(), proposer, shutdown.clone())?;
    tracker.spawn(async move {
        let _ = follower.await;
    });
    let (catalog, catalog_follower) =
        crate::catalog::Catalog::start(&settings, publisher.clone(), shutdown.clone())?;
    tracker.spawn(async move {
        let _ = catalog_follower.await;
    });
    let auditor = crate::audit::Auditor::new(
        &settings,
        publisher.clone(),
        config.node.code.as_str(),
        audit_key,
        config.audit.checkpoint_every,
    );
    let feed_statuses = crate::feeds::FeedStatuses::default();
    let admission =
        crate::admission::FeedAdmission::new(config.secrets.clone(), config.api_feeds.clone())
            .with_cascaded(config.cascaded_datasets());
    // What the upper node grants of each dataset received from it.
    let upper = crate::upper::UpperGrants::new(&config.cascaded_datasets());
    // Whom this node's lower nodes share on with.
    let holder_reports = crate::holders::HolderReports::default();
    if is_node {
        tracker.spawn(crate::upper::follow(
            config.subscriptions.clone(),
            config.node.code.to_string(),
            upper.clone(),
            crate::upper::Reporting {
                catalog: catalog.clone(),
                shares: config.shares.clone(),
                reports: holder_reports.clone(),
            },
            shutdown.clone(),
        ));
    }
    // Subscriptions past their validity end within seconds.
    if is_node {
        let (catalog, auditor, shutdown) = (catalog.clone(), auditor.clone(), shutdown.clone());
        tracker.spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
                if let Err(e) = crate::api::expire(&catalog, &auditor).await {
                    tracing::debug!(error = %e, "expiry check failed");
                }
            }
        });
    }

    // Subscriptions to upper nodes, applied to this node's databases.
    let health = crate::subscribe::SubscriptionHealth::new(readiness.clone());
    let subscriptions = if is_node {
        config.subscriptions.clone()
    } else {
        Vec::new()
    };
    // Cascading ones (sink `kafka`) start with the feeds, once this node's
    // bus and registry are ready.
    let (cascading, databases): (Vec<_>, Vec<_>) = subscriptions
        .iter()
        .cloned()
        .partition(|s| matches!(s.sink, crate::config::SinkConfig::Kafka(_)));
    // Internal topics, retried until they exist or the node stops.
    {
        let settings = settings.clone();
        let readiness = readiness.clone();
        let shutdown = shutdown.clone();
        let embedded_admin = embedded.map(EmbeddedBroker::admin);
        let registry = registry.clone();
        let feeds = config.feeds.clone();
        let shares = config.shares.clone();
        let (catalog_d, auditor_d, upper_d) = (catalog.clone(), auditor.clone(), upper.clone());
        let (catalog_f, statuses_f) = (catalog.clone(), feed_statuses.clone());
        let admission_f = std::sync::Arc::new(admission.clone());
        let node_code = config.node.code.to_string();
        let standards = Arc::new(config.standards.clone());
        let publisher = publisher.clone();
        let metrics = metrics.clone();
        let feed_tracker = tracker.clone();
        let cascade_health = health.clone();
        let (partitions, rf) = (config.kafka.partitions, config.kafka.replication_factor);
        tracker.spawn(async move {
            let specs = [
                TopicSpec::compacted(topics::catalog(), 1, rf),
                TopicSpec::compacted(topics::offsets(), partitions, rf),
                TopicSpec::kept(topics::audit(), 1, rf),
                TopicSpec::compacted(topics::schemas(), 1, rf),
                TopicSpec::compacted(crate::domain::topics::subscribers(), 1, rf),
            ];
            // Start-up waits for Kafka: tried again soon, at most every 30 s.
            let mut restarts = crate::restart::Restarts::new(crate::restart::Policy {
                first: Duration::from_millis(200),
                max: Duration::from_secs(30),
                ..crate::restart::Policy::DEFAULT
            });
            loop {
                let admin = match &embedded_admin {
                    Some(a) => Ok(TopicAdmin::Embedded(a.clone())),
                    None => TopicAdmin::new(&settings),
                };
                let attempt = async {
                    match admin {
                        Ok(admin) => admin.ensure(&specs).await,
                        Err(e) => Err(e),
                    }
                };
                let outcome = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    outcome = attempt => outcome,
                };
                match outcome {
                    Ok(created) => {
                        if !created.is_empty() {
                            tracing::info!(topics = ?created, "created internal topics");
                        }
                        readiness.set(CHECK_TOPICS, CheckState::Ok);
                        loop {
                            match registry.caught_up().await {
                                Ok(()) => {
                                    readiness.set(CHECK_REGISTRY, CheckState::Ok);
                                    crate::standards::register(&registry, &standards).await;
                                    let ctx = FeedContext {
                                        node: node_code,
                                        publisher,
                                        settings: settings.clone(),
                                        registry,
                                        admin: Arc::new(match &embedded_admin {
                                            Some(a) => TopicAdmin::Embedded(a.clone()),
                                            None => match TopicAdmin::new(&settings) {
                                                Ok(a) => a,
                                                Err(e) => {
                                                    tracing::error!(error = %e, "cannot start feeds");
                                                    return;
                                                }
                                            },
                                        }),
                                        partitions,
                                        replication_factor: rf,
                                        metrics,
                                        standards,
                                    };
                                    feed_tracker.spawn(crate::feeds::manage(
                                        feeds,
                                        is_node.then_some((catalog_f, admission_f)),
                                        ctx.clone(),
                                        statuses_f,
                                        shutdown.clone(),
                                    ));
                                    if !is_node {
                                        return;
                                    }
                                    for sub in cascading {
                                        feed_tracker.spawn(crate::subscribe::supervise(
                                            sub,
                                            ctx.metrics.clone(),
                                            cascade_health.clone(),
                                            Some(ctx.clone()),
                                            shutdown.clone(),
                                        ));
                                    }
                                    feed_tracker.spawn(crate::distributor::supervise(
                                        shares,
                                        catalog_d,
                                        auditor_d,
                                        upper_d,
                                        ctx.clone(),
                                        shutdown.clone(),
                                    ));
                                    return;
                                }
                                Err(e) => {
                                    use crate::restart::Kind;
                                    let retry = restarts.failed(e.kind());
                                    readiness.set(CHECK_REGISTRY, CheckState::Failing(e.to_string()));
                                    if !crate::restart::pause(retry.wait, &shutdown).await {
                                        return;
                                    }
                                }
                            }
                        }
                    }
                    Err(e) => {
                        use crate::restart::Kind;
                        let retry = restarts.failed(e.kind());
                        tracing::warn!(error = %e, kind = retry.label(), retry_in = ?retry.wait, "cannot create internal topics yet");
                        readiness.set(CHECK_TOPICS, CheckState::Failing(e.to_string()));
                        if !crate::restart::pause(retry.wait, &shutdown).await {
                            return;
                        }
                    }
                }
            }
        });
    }

    // Kafka reachability behind /readyz and the broker gauge.
    {
        let settings = settings.clone();
        let readiness = readiness.clone();
        let metrics = metrics.clone();
        let shutdown = shutdown.clone();
        let interval = Duration::from_millis(config.runtime.readiness_interval_ms.max(100));
        tracker.spawn(async move {
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
        });
    }

    for sub in databases {
        tracker.spawn(crate::subscribe::supervise(
            sub,
            metrics.clone(),
            health.clone(),
            None,
            shutdown.clone(),
        ));
    }
    if subscriptions.is_empty() {
        readiness.set(crate::subscribe::CHECK_SUBSCRIPTIONS, CheckState::Ok);
    }

    let lag_board = crate::lag::LagBoard::default();
    if is_node {
        readiness.register(crate::lag::CHECK_STATUSES);
        let catalog = catalog.clone();
        let shares: Vec<(String, String)> = config
            .shares
            .iter()
            .map(|s| (s.subscriber.to_string(), s.dataset.clone()))
            .collect();
        let served: Arc<
            dyn Fn() -> futures::future::BoxFuture<'static, crate::lag::Served> + Send + Sync,
        > = Arc::new(move || {
            let catalog = catalog.clone();
            let shares = shares.clone();
            Box::pin(async move {
                let mut out = shares;
                let state = catalog.state().await;
                for s in state.subscriptions.values() {
                    if s.state == crate::catalog::SubscriptionState::Active
                        && !out
                            .iter()
                            .any(|(n, d)| *n == s.subscriber && *d == s.dataset)
                    {
                        out.push((s.subscriber.clone(), s.dataset.clone()));
                    }
                }
                out.sort();
                out
            })
        });
        tracker.spawn(crate::lag::monitor(
            crate::lag::MonitorContext {
                node: config.node.code.to_string(),
                settings: settings.clone(),
                served,
                feeds: feed_statuses.clone(),
                metrics: metrics.clone(),
                window: Duration::from_secs(config.runtime.lag_window_secs.max(4)),
                readiness: readiness.clone(),
            },
            lag_board.clone(),
            shutdown.clone(),
        ));
    }

    let http_state = HttpState {
        metrics: metrics.clone(),
        readiness: readiness.clone(),
        auth: crate::auth::Authenticator::new(&config.auth.tokens, catalog.clone()),
    };
    let metrics_addr = match metrics_listener {
        Some(l) => {
            let addr = l.local_addr().map_err(NodeError::Http)?;
            tracker.spawn(http::serve(
                l,
                http::ops_router(http_state.clone()),
                shutdown.clone(),
            ));
            Some(addr)
        }
        None => None,
    };
    // The registry takes the API's tokens: reads for any principal, writes
    // for admin (the node's own feeds and distributor write in-process).
    let registry_auth = http_state.auth.clone();
    let mut router =
        http::router(http_state).merge(crate::registry::router(registry.clone(), registry_auth));
    if is_node {
        router = router.merge(crate::api::router(
            crate::api::ApiState::new(
                catalog,
                auditor,
                &config.auth.tokens,
                config.node.clone(),
                feed_statuses,
                publisher.clone(),
                registry,
            )
            .with_lag(lag_board)
            .with_metrics(metrics.clone())
            .with_standards(config.standards.clone())
            .with_feeds(admission.clone(), &config.feeds)
            .with_cascaded(config.cascaded_datasets())
            .with_config_shares(config.shares.clone())
            .with_upper(upper.clone())
            .with_holder_reports(holder_reports.clone()),
        ));
        // The operators' dashboard at `/` (its data comes from /api).
        router = router.merge(crate::dashboard::router());
    }
    let http_task = tracker.spawn(http::serve(listener, router, shutdown.clone()));
    tracker.close();

    let running = Running {
        http_addr,
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
/// `/healthz` and `/readyz`, until `shutdown` is cancelled.
pub async fn run_subscriber(
    config: crate::config::Config,
    shutdown: CancellationToken,
    on_started: impl FnOnce(std::net::SocketAddr, Option<std::net::SocketAddr>),
) -> Result<(), NodeError> {
    let metrics = Metrics::new();
    let readiness = Readiness::default();
    let health = crate::subscribe::SubscriptionHealth::new(readiness.clone());
    let listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .map_err(|source| NodeError::Bind {
            addr: config.http.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| NodeError::Bind {
        addr: config.http.listen,
        source,
    })?;
    let tracker = tokio_util::task::TaskTracker::new();
    for sub in config.subscriptions.clone() {
        tracker.spawn(crate::subscribe::supervise(
            sub,
            metrics.clone(),
            health.clone(),
            None,
            shutdown.clone(),
        ));
    }
    let http_state = crate::http::HttpState {
        metrics: metrics.clone(),
        readiness,
        auth: crate::auth::Authenticator::configured_only(&config.auth.tokens),
    };
    let metrics_addr = match config.http.metrics_listen {
        Some(at) => {
            let l = tokio::net::TcpListener::bind(at)
                .await
                .map_err(|source| NodeError::Bind { addr: at, source })?;
            let bound = l
                .local_addr()
                .map_err(|source| NodeError::Bind { addr: at, source })?;
            tracker.spawn(crate::http::serve(
                l,
                crate::http::ops_router(http_state.clone()),
                shutdown.clone(),
            ));
            Some(bound)
        }
        None => None,
    };
    let router = crate::http::router(http_state);
    let http_task = tracker.spawn(crate::http::serve(listener, router, shutdown.clone()));
    tracker.close();
    tracing::info!(
        http = %addr,
        subscriptions = config.subscriptions.len(),
        version = crate::VERSION,
        "backflow subscriber started"
    );
    on_started(addr, metrics_addr);
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
