//! Following a one-partition log topic (the catalog, the schemas): every
//! record from the first, in order, handed to its owner's [`Apply`], and
//! the offset applied published ([`Applied`]), so a writer can wait until
//! its own record is applied here and a reader until what the topic held
//! when it asked is.
//!
//! Guarantees: records are applied one at a time, in offset order, each
//! once per process; a read that fails is retried after half a second (the
//! follower never stops before shutdown); [`Applied`] only grows.

use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{ConsumedRecord, Consumer, KafkaError, Watermarks};

/// What the owner of a followed topic does with each record.
pub trait Apply: Send {
    /// Applies one record (a record the owner refuses is its own business:
    /// it is still counted as applied).
    fn apply(&mut self, record: ConsumedRecord) -> impl std::future::Future<Output = ()> + Send;
}

/// The offset of the last applied record (-1: none yet).
#[derive(Debug)]
pub struct Applied(watch::Sender<i64>);

impl Default for Applied {
    fn default() -> Self {
        Self(watch::channel(-1).0)
    }
}

/// Why a wait for [`Applied`] ended without the offset applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotApplied {
    /// Not within the time given.
    TimedOut,
    /// The follower stopped (shutdown).
    Stopped,
}

impl Applied {
    /// Waits until `offset` is applied, at most `timeout`.
    pub async fn wait_for(&self, offset: i64, timeout: Duration) -> Result<(), NotApplied> {
        let mut rx = self.0.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|a| *a >= offset))
            .await
            .map_err(|_| NotApplied::TimedOut)?
            .map_err(|_| NotApplied::Stopped)?;
        Ok(())
    }

    /// The offset the topic's end had when asked (`watermarks`' high
    /// watermark of partition 0, less one): what [`Applied::wait_for`]
    /// waits for to have read everything written before.
    pub async fn end_of(watermarks: &Watermarks, topic: &str) -> Result<i64, KafkaError> {
        Ok(watermarks.high(topic, 0).await? - 1)
    }

    fn set(&self, offset: i64) {
        self.0.send_replace(offset);
    }
}

/// Reads `consumer` (on the topic named `what`, for messages) until
/// `shutdown`, handing each record to `apply` and then publishing its
/// offset in `applied`.
pub async fn follow<A: Apply>(
    consumer: Consumer,
    what: &'static str,
    applied: &Applied,
    mut apply: A,
    shutdown: CancellationToken,
) {
    loop {
        let record = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = consumer.recv() => r,
        };
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(topic = what, error = %e, "reading a followed topic failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
                continue;
            }
        };
        let offset = record.offset;
        apply.apply(record).await;
        applied.set(offset);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_wait_ends_when_the_offset_is_applied_or_the_time_is_up() {
        let applied = std::sync::Arc::new(Applied::default());
        assert_eq!(
            applied.wait_for(0, Duration::from_millis(20)).await,
            Err(NotApplied::TimedOut)
        );
        assert_eq!(
            applied.wait_for(-1, Duration::from_millis(20)).await,
            Ok(())
        );
        let a = applied.clone();
        let waiter = tokio::spawn(async move { a.wait_for(3, Duration::from_secs(5)).await });
        applied.set(2);
        applied.set(3);
        assert_eq!(waiter.await.unwrap(), Ok(()));
    }
}
