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
    held: watch::Receiver<bool>,
    _task: tokio_util::task::AbortOnDropHandle<()>,
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
        let (tx, held) = watch::channel(false);
        let (topic, group) = (topic.to_owned(), group.to_owned());
        let task = tokio::spawn(async move {
            loop {
                // Polling serves the group protocol (assignments,
                // revocations); the topic holds no records.
                tokio::select! {
                    r = consumer.recv() => {
                        if let Err(e) = r {
                            tracing::warn!(group = %group, error = %e, "lease group member error");
                            tokio::time::sleep(CHECK_EVERY).await;
                        }
                    }
                    _ = tokio::time::sleep(CHECK_EVERY) => {}
                }
                let holds = consumer.holds(&topic, 0);
                tx.send_if_modified(|was| {
                    let changed = *was != holds;
                    *was = holds;
                    changed
                });
                if tx.is_closed() {
                    break;
                }
            }
            consumer.close_in_background();
        });
        Ok(Self {
            held,
            _task: tokio_util::task::AbortOnDropHandle::new(task),
        })
    }

    /// Whether this process holds the lease now.
    pub fn held(&self) -> bool {
        *self.held.borrow()
    }

    /// Waits until this process holds the lease.
    pub async fn acquired(&mut self) {
        let _ = self.held.wait_for(|held| *held).await;
    }

    /// Waits until this process no longer holds the lease.
    pub async fn lost(&mut self) {
        let _ = self.held.wait_for(|held| !*held).await;
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
            _ = lease.acquired() => {}
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
