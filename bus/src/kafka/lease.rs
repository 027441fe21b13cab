//! A lease on a unit of work that one process at a time must run (a feed),
//! built on Kafka's group protocol.
//!
//! Every process that could run the unit joins a consumer group of its own
//! (`<prefix>lease.<node>.<unit>`) on the single-partition topic
//! `<prefix>_leases`, which nobody writes: the group coordinator assigns
//! that one partition to exactly one live member, and that member holds the
//! lease. A member that dies stops heartbeating and loses the partition to
//! another after `kafka.session_timeout_ms`; a member that is only slow
//! (paused past its session) loses it the same way and is told so when it
//! polls again.
//!
//! The assignment is cooperative-sticky: a member joining (a pod added or
//! restarted) leaves the lease with its holder; it moves only when the
//! holder is gone.
//!
//! Members are static (`group.instance.id` = the process's `kafka.replica`):
//! a process restarted under the same name gets its partition back at once,
//! without waiting for its old session to expire or moving the lease to
//! another process meanwhile.
//!
//! The lease decides who runs the unit; it does not make two runs safe.
//! That is the unit's transactional id: a process that still believes it
//! holds a lease it lost is fenced by the brokers as soon as its successor
//! registers the id, so nothing it writes afterwards becomes visible.

use std::time::Duration;

use tokio::sync::watch;

use super::{Consumer, KafkaError, KafkaSettings};

/// How often the holder checks whether it still holds the lease.
const CHECK_EVERY: Duration = Duration::from_millis(500);

/// This process's membership in one lease group. Dropping it leaves.
pub struct Lease {
    held: watch::Receiver<Holding>,
    _task: tokio_util::task::AbortOnDropHandle<()>,
}

/// Whether this process holds the lease.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Holding {
    Yes,
    No,
    /// Never again: the membership ended with a fatal error (another
    /// process joined under the same `kafka.replica`, which fences this
    /// one); the reason says what to fix.
    Ended(String),
}

impl Lease {
    /// Joins `group` on `topic` (one partition) as static member
    /// `instance`.
    pub fn join(
        settings: &KafkaSettings,
        group: &str,
        topic: &str,
        instance: &str,
    ) -> Result<Self, KafkaError> {
        let consumer = Consumer::lease_member(settings, group, topic, instance)?;
        let (tx, held) = watch::channel(Holding::No);
        let (topic, group, instance) = (topic.to_owned(), group.to_owned(), instance.to_owned());
        let task = tokio::spawn(async move {
            loop {
                // Polling serves the group protocol (assignments,
                // revocations); the topic holds no records.
                tokio::select! {
                    r = consumer.recv() => {
                        if let Err(e) = r {
                            if let Some((code, reason)) = consumer.fatal() {
                                let why = ended(&instance, code, &reason);
                                tracing::error!(group = %group, "{why}");
                                tx.send_replace(Holding::Ended(why));
                                // Whoever waits learns it; the consumer
                                // receives nothing more.
                                tx.closed().await;
                                break;
                            }
                            tracing::warn!(group = %group, error = %e, "lease group member error");
                            tokio::time::sleep(CHECK_EVERY).await;
                        }
                    }
                    _ = tokio::time::sleep(CHECK_EVERY) => {}
                }
                let holds = if consumer.holds(&topic, 0) {
                    Holding::Yes
                } else {
                    Holding::No
                };
                tx.send_if_modified(|was| {
                    let changed = *was != holds;
                    *was = holds;
                    changed
                });
                if tx.is_closed() {
                    break;
                }
            }
        });
        Ok(Self {
            held,
            _task: tokio_util::task::AbortOnDropHandle::new(task),
        })
    }

    /// Whether this process holds the lease now.
    pub fn held(&self) -> bool {
        *self.held.borrow() == Holding::Yes
    }

    /// Waits until this process holds the lease: `Ok`, or `Err` with the
    /// reason when its membership ended for good (nothing is held then,
    /// and waiting longer is pointless).
    pub async fn acquired(&mut self) -> Result<(), String> {
        match self
            .held
            .wait_for(|h| *h != Holding::No)
            .await
            .map(|h| h.clone())
        {
            Ok(Holding::Yes) => Ok(()),
            Ok(Holding::Ended(why)) => Err(why),
            Ok(Holding::No) | Err(_) => Err("the lease's membership stopped".to_owned()),
        }
    }

    /// Waits until this process no longer holds the lease.
    pub async fn lost(&mut self) {
        let _ = self.held.wait_for(|h| *h != Holding::Yes).await;
    }
}

/// What a lease member's fatal error means, for the operator.
fn ended(instance: &str, code: rdkafka::types::RDKafkaErrorCode, reason: &str) -> String {
    if code == rdkafka::types::RDKafkaErrorCode::FencedInstanceId {
        format!(
            "another process joined this lease group under the same kafka.replica \"{instance}\" and fenced this one, which runs nothing the lease guards until it is restarted: give each process serving the node its own kafka.replica (e.g. the pod name)"
        )
    } else {
        format!("the lease group membership ended with a fatal Kafka error ({code}: {reason}); this process runs nothing the lease guards until it is restarted")
    }
}

/// Runs `work` only while this process holds the lease of `group` (on
/// `topic`, as static member `instance`), until `shutdown`: `work` gets a
/// token that is cancelled when the lease goes to another process, and is
/// started again when it comes back. Returns when `shutdown` is cancelled
/// or `work` ends by itself.
pub async fn run_leased<F, Fut>(
    settings: &KafkaSettings,
    group: &str,
    topic: &str,
    instance: &str,
    shutdown: tokio_util::sync::CancellationToken,
    mut work: F,
) where
    F: FnMut(tokio_util::sync::CancellationToken) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut lease = match Lease::join(settings, group, topic, instance) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(group, error = %e, "cannot join the lease group; the work it guards does not run in this process");
            return;
        }
    };
    loop {
        if !lease.held() {
            tracing::info!(group, "another process holds the lease; standing by");
        }
        tokio::select! {
            acquired = lease.acquired() => {
                if let Err(why) = acquired {
                    tracing::error!(group, "{why}");
                    shutdown.cancelled().await;
                    return;
                }
            }
            _ = shutdown.cancelled() => return,
        }
        tracing::info!(group, "holding the lease: running");
        let stop = shutdown.child_token();
        let run = work(stop.clone());
        tokio::pin!(run);
        tokio::select! {
            _ = &mut run => return,
            _ = lease.lost() => {
                tracing::warn!(group, "the lease went to another process; stopping here");
                stop.cancel();
                run.await;
            }
        }
    }
}
