//! Running feeds, as Kafka Connect runs connectors: feeds declared in the
//! configuration file run for the life of the process; feeds registered
//! through the API (`backflow._catalog`) are started, paused, resumed,
//! restarted and removed at runtime, without restarting the process. Each
//! feed reports RUNNING, PAUSED or FAILED (with the error) at `/api/feeds`.
//!
//! Several processes may serve one node with the same feeds: each feed runs
//! in the one holding its lease ([`crate::kafka::lease`]) and is STANDBY in
//! the others, which take it over (from its committed position) within
//! `kafka.session_timeout_ms` of its holder's death.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use backflow_connectors::SourceGauges;

use crate::source::config::FeedConfig;
use crate::source::feed::FeedContext;
use crate::state::catalog::Catalog;

/// Where a feed is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum FeedState {
    /// Started, not yet up for a while.
    Starting,
    /// Up.
    Running,
    /// Stopped by its owner until resumed.
    Paused,
    /// Stopped by an error; tried again as its kind says.
    Failed,
    /// Another process serving the node runs it (it holds the feed's
    /// lease); this one takes over when that one stops.
    Standby,
}

impl FeedState {
    /// The state as the API and the lag board show it.
    pub fn as_str(self) -> &'static str {
        match self {
            FeedState::Starting => "STARTING",
            FeedState::Running => "RUNNING",
            FeedState::Paused => "PAUSED",
            FeedState::Failed => "FAILED",
            FeedState::Standby => "STANDBY",
        }
    }
}

/// What a feed is doing.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FeedStatus {
    /// Where it is in its life.
    pub state: FeedState,
    /// The last error, when FAILED (what happened and how to fix it).
    pub error: Option<String>,
    /// `config` (declared in the file) or `api`.
    pub origin: &'static str,
    /// Restarts after errors since the feed was started.
    pub failures: u64,
    /// The initial snapshot's progress while one is read (rows done,
    /// estimated, rows/s, ETA).
    pub snapshot: Option<backflow_connectors::SnapshotStatus>,
}

/// Statuses of every feed of the process. Cheap to clone.
#[derive(Clone, Default)]
pub struct FeedStatuses {
    statuses: Arc<Mutex<BTreeMap<String, FeedStatus>>>,
    /// The running sources' live figures, by feed.
    gauges: Arc<Mutex<HashMap<String, Arc<SourceGauges>>>>,
}

impl FeedStatuses {
    fn set_gauges(&self, name: &str, gauges: Option<Arc<SourceGauges>>) {
        let mut map = self.gauges.lock().expect("gauges lock");
        match gauges {
            Some(g) => map.insert(name.to_owned(), g),
            None => map.remove(name),
        };
    }

    fn set(&self, name: &str, f: impl FnOnce(&mut FeedStatus)) {
        let mut map = self.statuses.lock().expect("status lock");
        if let Some(s) = map.get_mut(name) {
            f(s);
        }
    }

    fn insert(&self, name: &str, status: FeedStatus) {
        self.statuses
            .lock()
            .expect("status lock")
            .insert(name.to_owned(), status);
    }

    fn remove(&self, name: &str) {
        self.statuses.lock().expect("status lock").remove(name);
        self.set_gauges(name, None);
    }

    /// A copy of every status, with snapshot progress as of now.
    pub fn snapshot(&self) -> BTreeMap<String, FeedStatus> {
        let mut all = self.statuses.lock().expect("status lock").clone();
        let gauges = self.gauges.lock().expect("gauges lock");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or_default();
        for (name, status) in &mut all {
            status.snapshot = gauges.get(name).and_then(|g| g.snapshot(now));
        }
        all
    }

    /// Whether a feed of this name is declared in the configuration file.
    pub fn is_config(&self, name: &str) -> bool {
        self.snapshot()
            .get(name)
            .is_some_and(|s| s.origin == "config")
    }
}

/// Why a feed could not be reset for a new snapshot.
#[derive(Debug, thiserror::Error)]
pub enum ResnapshotError {
    /// The replication slot could not be dropped.
    #[error(transparent)]
    Slot(#[from] backflow_connectors::ConnectorError),
    /// The recorded position could not be forgotten.
    #[error("forgetting the recorded position: {0}")]
    Kafka(#[from] crate::kafka::KafkaError),
}

/// Makes a feed's next start a first start: drops its replication slot and
/// forgets its recorded position, so it reads its tables again, then
/// streams. The feed must not be running. Returns whether a slot existed.
pub async fn resnapshot(
    feed: &FeedConfig,
    publisher: &crate::kafka::Publisher,
) -> Result<bool, ResnapshotError> {
    let dropped = match feed {
        FeedConfig::Postgres(c) => backflow_connectors::postgres::drop_slot(c).await?,
        // The binlog and polled tables keep nothing for the feed.
        FeedConfig::Mysql(_) | FeedConfig::Poll(_) => false,
    };
    crate::state::offsets::clear(publisher, feed.name()).await?;
    tracing::warn!(
        feed = %feed.name(),
        slot_dropped = dropped,
        "re-snapshot requested: the feed reads its tables again, then streams"
    );
    Ok(dropped)
}

/// Runs a feed, restarting it after errors until `stop`, as
/// [`crate::domain::restart`] decides from their kind: a transient error with
/// backoff, a definite one (wrong password, missing database or
/// privilege) once a minute, FAILED with the fix meanwhile.
async fn supervise(
    feed: FeedConfig,
    ctx: FeedContext,
    statuses: FeedStatuses,
    stop: CancellationToken,
) {
    let name = feed.name().to_owned();
    // Series at zero from the start, so rates and alerts see the first one.
    ctx.metrics.source_rejected.with_label_values(&[&name]);
    for kind in ["transient", "definite"] {
        ctx.metrics
            .source_restarts
            .with_label_values(&[&name, kind]);
    }
    let mut restarts =
        crate::domain::restart::Restarts::new(crate::domain::restart::Policy::DEFAULT);
    let mut lease = if ctx.leases {
        match crate::kafka::lease::Lease::join(
            &ctx.settings,
            &crate::domain::topics::feed_lease(&ctx.node, &name),
            crate::domain::topics::leases(),
            &ctx.replica,
        ) {
            Ok(l) => Some(l),
            Err(e) => {
                statuses.set(&name, |s| {
                    s.state = FeedState::Failed;
                    s.error = Some(format!("cannot join the feed's lease group: {e}"));
                });
                return;
            }
        }
    } else {
        None
    };
    loop {
        let source: Box<dyn backflow_connectors::Source> = match &feed {
            FeedConfig::Postgres(c) => Box::new(
                backflow_connectors::postgres::PostgresSource::new(c.clone(), ctx.node.clone()),
            ),
            FeedConfig::Mysql(c) => Box::new(backflow_connectors::mysql::MysqlSource::new(
                c.clone(),
                ctx.node.clone(),
            )),
            FeedConfig::Poll(c) => Box::new(backflow_connectors::poll::PollSource::new(
                c.clone(),
                ctx.node.clone(),
            )),
        };
        statuses.set_gauges(&name, source.gauges());
        // Only the holder of the feed's lease runs it.
        if let Some(lease) = lease.as_mut() {
            if !lease.held() {
                statuses.set(&name, |s| {
                    s.state = FeedState::Standby;
                    s.error = None;
                });
                tracing::info!(feed = %name, "another process runs this feed; standing by");
                tokio::select! {
                    acquired = lease.acquired() => {
                        if let Err(why) = acquired {
                            statuses.set(&name, |s| {
                                s.state = FeedState::Failed;
                                s.error = Some(why);
                            });
                            stop.cancelled().await;
                            return;
                        }
                    }
                    _ = stop.cancelled() => return,
                }
                tracing::info!(feed = %name, "took the feed's lease over");
            }
        }
        statuses.set(&name, |s| {
            if s.error.is_none() || s.state == FeedState::Standby {
                s.state = FeedState::Running;
                s.error = None;
            }
        });
        let run_stop = stop.child_token();
        let run = crate::source::feed::run(&name, source, ctx.clone(), run_stop.clone());
        tokio::pin!(run);
        let attempt = restarts.begin();
        // A feed that stays up for a while is RUNNING again; one whose
        // lease went to another process stops.
        let mut lost = false;
        let outcome = loop {
            tokio::select! {
                r = &mut run => break r,
                _ = tokio::time::sleep(Duration::from_secs(10)) => {
                    statuses.set(&name, |s| { s.state = FeedState::Running; s.error = None; });
                }
                _ = async { lease.as_mut().expect("guarded").lost().await }, if lease.is_some() && !lost => {
                    tracing::warn!(feed = %name, "the feed's lease went to another process; stopping it here");
                    lost = true;
                    run_stop.cancel();
                }
            }
        };
        if lost && !stop.is_cancelled() {
            attempt.ended_well();
            continue;
        }
        let e = match outcome {
            Ok(()) => return,
            Err(e) => e,
        };
        use crate::domain::restart::Kind;
        let retry = attempt.failed(e.kind());
        crate::events::feed_failed(&ctx.metrics, &name, &retry, &e);
        statuses.set(&name, |s| {
            s.state = FeedState::Failed;
            s.error = Some(if retry.needs_fix() {
                format!("{e} (tried again once a minute until fixed; pause the feed to stop it)")
            } else {
                format!("{e} (retrying in {} s)", retry.wait.as_secs())
            });
            s.failures += 1;
        });
        if !crate::domain::restart::pause(retry.wait, &stop).await {
            return;
        }
    }
}

struct Running {
    signature: String,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// Runs the configured feeds, and the catalog's feeds (when given) as they
/// come, change and go, until shutdown.
pub async fn manage(
    config_feeds: Vec<FeedConfig>,
    catalog: Option<(Catalog, std::sync::Arc<crate::admission::FeedAdmission>)>,
    ctx: FeedContext,
    statuses: FeedStatuses,
    shutdown: CancellationToken,
) {
    let mut tasks = Vec::new();
    for feed in config_feeds {
        statuses.insert(
            feed.name(),
            FeedStatus {
                state: FeedState::Starting,
                error: None,
                origin: "config",
                failures: 0,
                snapshot: None,
            },
        );
        tasks.push(tokio::spawn(supervise(
            feed,
            ctx.clone(),
            statuses.clone(),
            shutdown.clone(),
        )));
    }
    let Some((catalog, admission)) = catalog else {
        // Configured feeds only (`backflow source`).
        for t in tasks {
            let _ = t.await;
        }
        return;
    };
    let mut changes = catalog.changes();
    let mut running: HashMap<String, Running> = HashMap::new();
    loop {
        let _ = catalog.caught_up().await;
        let desired: Vec<crate::state::catalog::FeedRecord> = catalog
            .state()
            .await
            .feeds
            .values()
            .filter(|f| !f.deleted && !statuses.is_config(&f.name))
            .cloned()
            .collect();
        // Stop what is gone, paused or changed.
        let keep: HashMap<&str, String> = desired
            .iter()
            .filter(|f| !f.paused)
            .map(|f| (f.name.as_str(), f.signature()))
            .collect();
        let stale: Vec<String> = running
            .iter()
            .filter(|(name, r)| keep.get(name.as_str()) != Some(&r.signature))
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            let r = running.remove(&name).expect("listed above");
            r.stop.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(15), r.task).await;
            tracing::info!(feed = %name, "feed stopped");
            statuses.remove(&name);
        }
        // Feeds that never started (bad settings) and are now gone.
        for (name, status) in statuses.snapshot() {
            if status.origin == "api" && !desired.iter().any(|f| f.name == name) {
                statuses.remove(&name);
            }
        }
        for f in &desired {
            if f.paused {
                statuses.insert(
                    &f.name,
                    FeedStatus {
                        state: FeedState::Paused,
                        error: None,
                        origin: "api",
                        failures: 0,
                        snapshot: None,
                    },
                );
                continue;
            }
            if running.contains_key(&f.name) {
                continue;
            }
            let mut status = FeedStatus {
                state: FeedState::Starting,
                error: None,
                origin: "api",
                failures: 0,
                snapshot: None,
            };
            // Checked again as it runs: a record may have been written
            // around the API, or the admin's rules may have changed.
            let feed = admission
                .admit_record(f)
                .map_err(|e| e.to_string())
                .and_then(|feed| Ok((feed, f.standards()?)));
            match feed {
                Ok((feed, standards)) => {
                    statuses.insert(&f.name, status);
                    let stop = shutdown.child_token();
                    let mut fctx = ctx.clone();
                    if !standards.is_empty() {
                        // The feed's own standards; the file's for other
                        // datasets.
                        let mut all = standards;
                        all.extend(
                            ctx.standards
                                .iter()
                                .filter(|s| !all.iter().any(|a| a.dataset == s.dataset))
                                .cloned()
                                .collect::<Vec<_>>(),
                        );
                        fctx.standards = std::sync::Arc::new(all);
                    }
                    let task = tokio::spawn(supervise(feed, fctx, statuses.clone(), stop.clone()));
                    tracing::info!(feed = %f.name, "feed started");
                    running.insert(
                        f.name.clone(),
                        Running {
                            signature: f.signature(),
                            stop,
                            task,
                        },
                    );
                }
                Err(e) => {
                    status.state = FeedState::Failed;
                    status.error = Some(e);
                    statuses.insert(&f.name, status);
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            c = changes.changed() => if c.is_err() { break },
        }
    }
    for (_, r) in running {
        let _ = r.task.await;
    }
    for t in tasks {
        let _ = t.await;
    }
}
