//! backflow's schema registry: the Confluent Schema Registry REST API,
//! served by every node, stored in Kafka.
//!
//! # Storage and how writes are ordered
//!
//! The registry is the state reached by applying the records of the
//! single-partition compacted topic `backflow._schemas` in offset order
//! ([`state::RegistryState::apply`]). Every node process replays the topic
//! from the start and keeps following it, so all nodes on one broker hold the
//! same state; a restarted node rebuilds the same ids and versions.
//!
//! A write is optimistic: the node catches up with the log, decides (id =
//! highest id + 1 unless the schema already has one, version = subject's next
//! version), checks compatibility, appends a `register` proposal and waits
//! until it has applied the log up to its own record. The log's order is the
//! tie-breaker: a proposal that conflicts with an earlier record (its id was
//! taken by another schema, its version by another proposal) is rejected by
//! every node alike, and the proposer retries from the new state. Each
//! record has its own key (proposer + sequence), so compaction never drops
//! a record that decided something; nothing is ever tombstoned, so ids are
//! never reused, even after a permanent delete.
//!
//! Reads are served from the local state (like Confluent's followers, they
//! may trail a write made on another node by the time it takes to replicate).

pub mod compat;
pub mod state;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use apache_avro::Schema;
use tokio::sync::{RwLock, RwLockReadGuard};
use tokio_util::sync::CancellationToken;

pub use compat::Level;
pub use state::{LogRecord, RegistryState, VersionSel};

use crate::domain::topics;
use crate::kafka::{Consumer, KafkaError, KafkaSettings, OutgoingRecord, Publisher, Watermarks};

/// How many times a write retries after losing a race to another node.
const MAX_ATTEMPTS: u32 = 12;

/// An error the registry API reports, with Confluent's error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RegistryError {
    /// HTTP status.
    pub status: u16,
    /// Confluent error code (e.g. 40401).
    pub code: u32,
    /// What went wrong.
    pub message: String,
}

impl RegistryError {
    pub(crate) fn new(status: u16, code: u32, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
    pub(crate) fn subject_not_found(subject: &str) -> Self {
        Self::new(404, 40401, format!("Subject '{subject}' not found."))
    }
    pub(crate) fn version_not_found(subject: &str, version: &str) -> Self {
        Self::new(
            404,
            40402,
            format!("Version {version} not found for subject '{subject}'."),
        )
    }
    pub(crate) fn schema_not_found() -> Self {
        Self::new(404, 40403, "Schema not found")
    }
    /// Whether asking again cannot help (the schema or the request is
    /// refused as it is), as opposed to a store that is not reachable now.
    pub fn is_definite(&self) -> bool {
        (400..500).contains(&self.status)
    }
    pub(crate) fn invalid_schema(reason: impl std::fmt::Display) -> Self {
        Self::new(422, 42201, format!("Invalid schema: {reason}"))
    }
    fn store(e: impl std::fmt::Display) -> Self {
        Self::new(500, 50001, format!("Error in the backing Kafka store: {e}"))
    }
    fn timeout(what: &str) -> Self {
        Self::new(
            500,
            50002,
            format!("Operation timed out while {what}; is Kafka reachable?"),
        )
    }

    /// What a lookup the state could not answer is, as the REST API says it.
    pub(crate) fn lookup(m: state::Missing, subject: &str, version: &str) -> Self {
        match m {
            state::Missing::Subject => Self::subject_not_found(subject),
            state::Missing::Version => Self::version_not_found(subject, version),
        }
    }
}

/// A registry backed by `backflow._schemas`. Cheap to clone.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    state: RwLock<RegistryState>,
    /// Offset of the last applied record.
    applied: crate::kafka::follow::Applied,
    publisher: Publisher,
    watermarks: Watermarks,
    /// Serializes this process's writes; other nodes are ordered by the log.
    writer: tokio::sync::Mutex<()>,
    proposer: String,
    seq: AtomicU64,
    timeout: Duration,
}

impl Registry {
    /// Starts following `backflow._schemas` (which must exist). The
    /// registry is usable at once; [`Registry::caught_up`] tells when it has
    /// replayed what the topic held at start.
    pub fn start(
        settings: &KafkaSettings,
        publisher: Publisher,
        proposer: String,
        shutdown: CancellationToken,
    ) -> Result<(Self, tokio::task::JoinHandle<()>), KafkaError> {
        let consumer = Consumer::follow(settings, topics::schemas(), 0)?;
        let inner = Arc::new(Inner {
            state: RwLock::new(RegistryState::default()),
            applied: Default::default(),
            publisher,
            watermarks: Watermarks::new(settings)?,
            writer: tokio::sync::Mutex::new(()),
            proposer,
            seq: AtomicU64::new(0),
            timeout: settings.request_timeout.max(Duration::from_secs(5)),
        });
        let follower = tokio::spawn(follow(inner.clone(), consumer, shutdown));
        Ok((Self { inner }, follower))
    }

    /// Read access to the current state.
    pub async fn state(&self) -> RwLockReadGuard<'_, RegistryState> {
        self.inner.state.read().await
    }

    /// The schema with this id, waiting once for the registry to catch up
    /// when the id is not known yet (a record may arrive before its
    /// schema's record is read back).
    pub async fn schema_by_id(&self, id: u32) -> Option<std::sync::Arc<apache_avro::Schema>> {
        if let Some(e) = self.state().await.schema(id) {
            return Some(e.schema.clone());
        }
        let _ = self.caught_up().await;
        self.state().await.schema(id).map(|e| e.schema.clone())
    }

    /// Waits until every record written before this call is applied.
    pub async fn caught_up(&self) -> Result<(), RegistryError> {
        let end = crate::kafka::follow::Applied::end_of(&self.inner.watermarks, topics::schemas())
            .await
            .map_err(RegistryError::store)?;
        self.wait_applied(end, "reading the schemas topic").await
    }

    async fn wait_applied(&self, offset: i64, what: &str) -> Result<(), RegistryError> {
        use crate::kafka::follow::NotApplied;
        self.inner
            .applied
            .wait_for(offset, self.inner.timeout)
            .await
            .map_err(|e| match e {
                NotApplied::TimedOut => RegistryError::timeout(what),
                NotApplied::Stopped => RegistryError::store("the schemas follower stopped"),
            })
    }

    /// Appends a record and waits until this node has applied it.
    async fn append(&self, record: &LogRecord) -> Result<(), RegistryError> {
        let n = self.inner.seq.fetch_add(1, Ordering::Relaxed);
        let key = format!("{}:{n}", self.inner.proposer);
        let value = serde_json::to_vec(record).expect("log records serialize");
        let delivered = self
            .inner
            .publisher
            .send(OutgoingRecord::new(
                topics::schemas(),
                key.as_bytes(),
                &value,
            ))
            .await
            .map_err(RegistryError::store)?;
        self.wait_applied(delivered.offset, "applying a schema write")
            .await
    }

    /// Parses a schema text as the API receives it.
    pub fn parse(text: &str) -> Result<Schema, RegistryError> {
        Schema::parse_str(text).map_err(RegistryError::invalid_schema)
    }

    /// Registers `schema` under `subject`; returns its id. Idempotent: a
    /// schema the subject already has returns the existing id.
    pub async fn register(&self, subject: &str, schema: &Schema) -> Result<u32, RegistryError> {
        let text = state::normalize(schema);
        let _writing = self.inner.writer.lock().await;
        for attempt in 0..MAX_ATTEMPTS {
            if attempt > 0 {
                // Two nodes that lost to each other would otherwise propose
                // the same next id again in lockstep: back off a random,
                // growing while so one of them gets ahead.
                let ceiling = 20u64 << attempt.min(6);
                let pause = rand_below(ceiling);
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
            self.caught_up().await?;
            let (version, id) = {
                let st = self.state().await;
                if let Some((_, id)) = st.find(subject, &text) {
                    return Ok(id);
                }
                let history = st.history(subject);
                let refs: Vec<(u32, &Schema)> =
                    history.iter().map(|(v, s)| (*v, s.as_ref())).collect();
                let level = st.level(Some(subject));
                let reasons = compat::check(level, schema, &refs);
                if !reasons.is_empty() {
                    return Err(RegistryError::new(
                        409,
                        409,
                        format!(
                            "Schema being registered is incompatible with an earlier schema for subject \"{subject}\" ({level}): {}",
                            reasons.join("; ")
                        ),
                    ));
                }
                (
                    st.next_version(subject),
                    st.id_of(&text).unwrap_or_else(|| st.next_id()),
                )
            };
            let record = LogRecord::Register {
                subject: subject.to_owned(),
                version,
                id,
                schema: text.clone(),
            };
            self.append(&record).await?;
            if let Some((_, got)) = self.state().await.find(subject, &text) {
                return Ok(got);
            }
            tracing::debug!(
                subject,
                "schema proposal lost a race with another node; retrying"
            );
        }
        Err(RegistryError::new(
            500,
            50001,
            format!("could not register a schema under '{subject}': {MAX_ATTEMPTS} proposals in a row lost to concurrent registrations on other nodes (each took the schema id or version this node proposed); retry the request"),
        ))
    }

    /// Deletes one version; returns the version number.
    pub async fn delete_version(
        &self,
        subject: &str,
        sel: VersionSel,
        permanent: bool,
    ) -> Result<u32, RegistryError> {
        let _writing = self.inner.writer.lock().await;
        self.caught_up().await?;
        let label = match sel {
            VersionSel::Latest => "latest".to_owned(),
            VersionSel::Number(n) => n.to_string(),
        };
        let version = {
            let st = self.state().await;
            // Soft-deleted versions are looked up too, so that deleting one
            // again says so (40406) instead of "not found".
            let (version, _) = st
                .version(subject, sel, true)
                .map_err(|m| RegistryError::lookup(m, subject, &label))?;
            if permanent && st.is_soft_deleted(subject, version) == Some(false) {
                return Err(RegistryError::new(
                    404,
                    40407,
                    format!("Subject '{subject}' Version {version} was not deleted first before being permanently deleted"),
                ));
            }
            if !permanent && st.is_soft_deleted(subject, version) == Some(true) {
                return Err(RegistryError::new(
                    404,
                    40406,
                    format!("Subject '{subject}' Version {version} was soft deleted. Set permanent=true to delete permanently"),
                ));
            }
            version
        };
        self.append(&LogRecord::DeleteVersion {
            subject: subject.to_owned(),
            version,
            permanent,
        })
        .await?;
        Ok(version)
    }

    /// Deletes a subject; returns the versions deleted.
    pub async fn delete_subject(
        &self,
        subject: &str,
        permanent: bool,
    ) -> Result<Vec<u32>, RegistryError> {
        let _writing = self.inner.writer.lock().await;
        self.caught_up().await?;
        let versions = {
            let st = self.state().await;
            let all = st
                .versions(subject, true)
                .map_err(|m| RegistryError::lookup(m, subject, ""))?;
            let live = st.versions(subject, false).unwrap_or_default();
            match (permanent, live.is_empty()) {
                (true, false) => {
                    return Err(RegistryError::new(
                        404,
                        40405,
                        format!("Subject '{subject}' was not deleted first before being permanently deleted"),
                    ))
                }
                (false, true) => {
                    return Err(RegistryError::new(
                        404,
                        40404,
                        format!("Subject '{subject}' was soft deleted.Set permanent=true to delete permanently"),
                    ))
                }
                (true, true) => all,
                (false, false) => live,
            }
        };
        self.append(&LogRecord::DeleteSubject {
            subject: subject.to_owned(),
            permanent,
        })
        .await?;
        Ok(versions)
    }

    /// Sets the global (`None`) or a subject's compatibility level; `None`
    /// level clears a subject's own setting.
    pub async fn set_level(
        &self,
        subject: Option<&str>,
        level: Option<Level>,
    ) -> Result<(), RegistryError> {
        let _writing = self.inner.writer.lock().await;
        self.append(&LogRecord::Config {
            subject: subject.map(str::to_owned),
            compatibility: level,
        })
        .await
    }
}

/// A random number below `n` (n > 0), good enough for retry jitter.
fn rand_below(n: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.finish() % n
}

/// Applies `backflow._schemas` records as they arrive.
async fn follow(inner: Arc<Inner>, consumer: Consumer, shutdown: CancellationToken) {
    let follower = Follower(inner.clone());
    crate::kafka::follow::follow(
        consumer,
        topics::schemas(),
        &inner.applied,
        follower,
        shutdown,
    )
    .await;
}

/// The registry's side of following its topic: each log record applied to
/// the state, or skipped (a refused proposal, an unreadable record).
struct Follower(Arc<Inner>);

impl crate::kafka::follow::Apply for Follower {
    async fn apply(&mut self, record: crate::kafka::ConsumedRecord) {
        let Some(payload) = &record.payload else {
            return;
        };
        match serde_json::from_slice::<LogRecord>(payload) {
            Ok(entry) => {
                if let Err(reason) = self.0.state.write().await.apply(&entry) {
                    tracing::debug!(offset = record.offset, %reason, "schemas log record rejected");
                }
            }
            Err(e) => tracing::warn!(
                offset = record.offset,
                error = %e,
                "skipping unreadable record in the schemas topic"
            ),
        }
    }
}

impl crate::domain::restart::Kind for RegistryError {
    /// The registry's 5xx codes are its own trouble (transient); 4xx codes
    /// refuse the schema or the request (definite).
    fn kind(&self) -> crate::domain::restart::ErrorKind {
        if self.code >= 50000 {
            crate::domain::restart::ErrorKind::Transient
        } else {
            crate::domain::restart::ErrorKind::Definite
        }
    }
}
