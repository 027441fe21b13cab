//! Named internal events. Each one writes its log line and counts its
//! metric in one call, with the same bounded labels (feed and subscription
//! names, error kinds; never row values or credentials), so an operator's
//! alert on a counter and the log line that explains it cannot drift
//! apart, and no call site can do one and forget the other.

use std::fmt::Display;

use crate::domain::restart::Retry;
use crate::metrics::Metrics;

/// A feed's run failed; it runs again after `retry.wait`.
/// `backflow_source_restarts_total{feed, kind}` and an ERROR line.
pub fn feed_failed(metrics: &Metrics, feed: &str, retry: &Retry, error: &dyn Display) {
    metrics
        .source_restarts
        .with_label_values(&[feed, retry.label()])
        .inc();
    tracing::error!(feed = %feed, error = %error, kind = retry.label(), retry_in = ?retry.wait, "feed failed");
}

/// A subscription's run failed; it runs again after `retry.wait`.
/// `backflow_subscribe_errors_total{subscription, kind}` and an ERROR line.
pub fn subscription_failed(
    metrics: &Metrics,
    subscription: &str,
    retry: &Retry,
    error: &dyn Display,
) {
    metrics
        .subscribe_errors
        .with_label_values(&[subscription, retry.label()])
        .inc();
    tracing::error!(subscription = %subscription, error = %error, kind = retry.label(), retry_in = ?retry.wait, "subscription failed");
}

/// A record a subscription could not apply went to its dead-letter topic.
/// `backflow_subscribe_dead_letters_total{subscription}`,
/// `backflow_subscribe_errors_total{subscription, kind="bad_record"}` and
/// a WARN line naming where the record came from and went.
pub fn subscription_dead_lettered(
    metrics: &Metrics,
    subscription: &str,
    from: (&str, i32, i64),
    reason: &dyn Display,
    dead_letter_topic: &str,
) {
    metrics
        .subscribe_dead_letters
        .with_label_values(&[subscription])
        .inc();
    metrics
        .subscribe_errors
        .with_label_values(&[subscription, "bad_record"])
        .inc();
    let (topic, partition, offset) = from;
    tracing::warn!(
        subscription = %subscription,
        topic = %topic,
        partition,
        offset,
        %reason,
        dlq = %dead_letter_topic,
        "record sent to the dead-letter topic"
    );
}

/// The distributor's run failed (`subscription`: a backfill's, else the
/// shared run's); it runs again after `retry.wait`.
/// `backflow_distributor_restarts_total` and an ERROR line.
pub fn distributor_failed(
    metrics: &Metrics,
    subscription: Option<&str>,
    retry: &Retry,
    error: &dyn Display,
) {
    metrics.distributor_restarts.inc();
    match subscription {
        Some(id) => {
            tracing::error!(subscription = %id, error = %error, kind = retry.label(), retry_in = ?retry.wait, "backfill failed")
        }
        None => {
            tracing::error!(error = %error, kind = retry.label(), retry_in = ?retry.wait, "distributor failed")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::restart::{ErrorKind, Policy, Restarts};

    fn line(metrics: &Metrics, name: &str) -> String {
        let text = metrics.render();
        text.lines()
            .filter(|l| l.starts_with(name))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn each_event_counts_under_its_bounded_labels() {
        let metrics = Metrics::new();
        let retry = Restarts::new(Policy::DEFAULT)
            .begin()
            .failed(ErrorKind::Definite);
        feed_failed(&metrics, "gongan-pg", &retry, &"boom");
        subscription_failed(&metrics, "xihu", &retry, &"boom");
        subscription_dead_lettered(&metrics, "xihu", ("t", 0, 7), &"bad", "dlq");
        distributor_failed(&metrics, Some("330106:ga.people"), &retry, &"boom");
        distributor_failed(&metrics, None, &retry, &"boom");
        assert!(line(&metrics, "backflow_source_restarts_total")
            .contains(r#"{feed="gongan-pg",kind="definite"} 1"#));
        let errors = line(&metrics, "backflow_subscribe_errors_total");
        assert!(
            errors.contains(r#"kind="definite",subscription="xihu"} 1"#),
            "{errors}"
        );
        assert!(
            errors.contains(r#"kind="bad_record",subscription="xihu"} 1"#),
            "{errors}"
        );
        assert!(line(&metrics, "backflow_subscribe_dead_letters_total")
            .contains(r#"{subscription="xihu"} 1"#));
        assert!(line(&metrics, "backflow_distributor_restarts_total").ends_with(" 2"));
    }
}
