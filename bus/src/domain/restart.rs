//! One restart policy for every loop that runs a component again after it
//! failed: feeds, subscriptions, the distributor and its backfills, the
//! node's start-up steps.
//!
//! The error's kind decides, never the loop:
//! - **transient** (a connection lost, a broker or registry unavailable):
//!   tried again after 1 s, doubling to a minute; a run that stayed up for
//!   a healthy minute starts the backoff over, so a failure a day does not
//!   wait as long as the tenth failure in a row;
//! - **definite** (a wrong password, a missing privilege or database, an
//!   incompatible schema): it fails again until someone changes something,
//!   so it is not retried in a loop; the component shows FAILED with the
//!   message and its fix, and is tried again once a minute, so it resumes
//!   by itself once fixed (a pause, a restart request or a configuration
//!   change acts at once);
//! - **bad record**: dead-lettered where it is read; one that reaches a
//!   restart loop was not, and is treated as definite (running again would
//!   meet the same record).
//!
//! Waits use tokio's clock, so tests can run the policy in paused time.

use std::time::Duration;

pub use backflow_connectors::ErrorKind;

/// An error that says whether running again may help.
pub trait Kind {
    /// Its kind.
    fn kind(&self) -> ErrorKind;
}

impl Kind for backflow_connectors::ConnectorError {
    fn kind(&self) -> ErrorKind {
        self.kind
    }
}

/// The label of a kind in metrics and logs.
pub fn label(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Transient => "transient",
        ErrorKind::Definite => "definite",
        ErrorKind::BadRecord => "bad_record",
    }
}

/// How long to wait before running again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// The first wait after a transient failure.
    pub first: Duration,
    /// The longest wait, and the wait after a definite failure.
    pub max: Duration,
    /// How long a run must stay up for its failure to start the backoff
    /// over.
    pub healthy: Duration,
}

impl Policy {
    /// 1 s doubling to a minute; a healthy minute starts over.
    pub const DEFAULT: Policy = Policy {
        first: Duration::from_secs(1),
        max: Duration::from_secs(60),
        healthy: Duration::from_secs(60),
    };
}

impl Default for Policy {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// One component's restarts under a [`Policy`].
#[derive(Debug)]
pub struct Restarts {
    policy: Policy,
    /// The wait after the next transient failure.
    next: Duration,
    started: tokio::time::Instant,
}

/// What to do after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// The wait before running again.
    pub wait: Duration,
    /// The failure's kind (bad record counted as definite).
    pub kind: ErrorKind,
}

impl Retry {
    /// Whether the failure waits for a fix (tried once a minute meanwhile).
    pub fn needs_fix(&self) -> bool {
        self.kind != ErrorKind::Transient
    }

    /// The kind's label for metrics and logs.
    pub fn label(&self) -> &'static str {
        label(self.kind)
    }

    /// What an operator reads after the error: when it is tried again.
    pub fn describe(&self) -> String {
        if self.needs_fix() {
            format!(
                "needs a fix: tried again every {} s until it is fixed",
                self.wait.as_secs()
            )
        } else {
            format!("retrying in {} s", self.wait.as_secs().max(1))
        }
    }
}

impl Restarts {
    /// No failure yet.
    pub fn new(policy: Policy) -> Self {
        Self {
            policy,
            next: policy.first,
            started: tokio::time::Instant::now(),
        }
    }

    /// A run starts now; how it ended is told to the [`Attempt`], which
    /// is the only way to count a failure, so no loop can count one for a
    /// run it did not begin (and measure its healthy stretch from the
    /// wrong start).
    pub fn begin(&mut self) -> Attempt<'_> {
        self.started = tokio::time::Instant::now();
        Attempt(self)
    }
}

/// One run of a component, from [`Restarts::begin`] to its verdict. A run
/// stopped by shutdown is just dropped.
#[must_use = "a run ends with ended_well() or failed()"]
pub struct Attempt<'a>(&'a mut Restarts);

impl Attempt<'_> {
    /// The run ended without an error (a configuration change, a
    /// reassignment): the next failure starts the backoff over.
    pub fn ended_well(self) {
        self.0.next = self.0.policy.first;
    }

    /// The run failed with an error of `kind`: how long to wait before
    /// the next.
    pub fn failed(self, kind: ErrorKind) -> Retry {
        let r = self.0;
        if r.started.elapsed() >= r.policy.healthy {
            r.next = r.policy.first;
        }
        match kind {
            ErrorKind::Transient => {
                let wait = r.next;
                r.next = (r.next * 2).min(r.policy.max);
                Retry { wait, kind }
            }
            ErrorKind::Definite | ErrorKind::BadRecord => Retry {
                wait: r.policy.max,
                kind: ErrorKind::Definite,
            },
        }
    }
}

/// Waits `wait`, or until `stop`; false when stopped.
pub async fn pause(wait: Duration, stop: &tokio_util::sync::CancellationToken) -> bool {
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(wait) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waits(restarts: &mut Restarts, kind: ErrorKind, n: usize) -> Vec<u64> {
        (0..n)
            .map(|_| restarts.begin().failed(kind).wait.as_secs())
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_transient_failure_backs_off_and_a_definite_one_waits_for_a_fix() {
        let mut r = Restarts::new(Policy::DEFAULT);
        assert_eq!(
            waits(&mut r, ErrorKind::Transient, 8),
            [1, 2, 4, 8, 16, 32, 60, 60]
        );
        let mut r = Restarts::new(Policy::DEFAULT);
        assert_eq!(waits(&mut r, ErrorKind::Definite, 3), [60, 60, 60]);
        let retry = r.begin().failed(ErrorKind::BadRecord);
        assert_eq!(retry.kind, ErrorKind::Definite);
        assert!(retry.describe().contains("until it is fixed"), "{retry:?}");
        assert_eq!(
            r.begin().failed(ErrorKind::Transient).describe(),
            "retrying in 1 s"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_healthy_minute_or_a_clean_end_starts_the_backoff_over() {
        let mut r = Restarts::new(Policy::DEFAULT);
        assert_eq!(waits(&mut r, ErrorKind::Transient, 4), [1, 2, 4, 8]);
        let run = r.begin();
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(run.failed(ErrorKind::Transient).wait.as_secs(), 16);
        let run = r.begin();
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(run.failed(ErrorKind::Transient).wait.as_secs(), 1);
        assert_eq!(waits(&mut r, ErrorKind::Transient, 2), [2, 4]);
        r.begin().ended_well();
        assert_eq!(waits(&mut r, ErrorKind::Transient, 1), [1]);
    }

    /// A loop as the components run it, each run failing after a second:
    /// in two minutes a definite error is tried twice, a transient one
    /// seven times.
    #[tokio::test(start_paused = true)]
    async fn a_definite_error_is_not_retried_in_a_loop_and_a_transient_one_is() {
        async fn attempts_in_two_minutes(kind: ErrorKind) -> usize {
            let stop = tokio_util::sync::CancellationToken::new();
            let until = tokio::time::Instant::now() + Duration::from_secs(120);
            let mut restarts = Restarts::new(Policy {
                max: Duration::from_secs(60),
                ..Policy::DEFAULT
            });
            let mut attempts = 0;
            while tokio::time::Instant::now() < until {
                let run = restarts.begin();
                attempts += 1;
                // The run fails after a second.
                tokio::time::sleep(Duration::from_secs(1)).await;
                let retry = run.failed(kind);
                assert!(pause(retry.wait, &stop).await);
            }
            attempts
        }
        assert_eq!(attempts_in_two_minutes(ErrorKind::Definite).await, 2);
        assert_eq!(attempts_in_two_minutes(ErrorKind::Transient).await, 7);
        // A stop ends a wait at once.
        let stop = tokio_util::sync::CancellationToken::new();
        stop.cancel();
        assert!(!pause(Duration::from_secs(3600), &stop).await);
    }
}
