//! `/metrics` in the Prometheus text format.
//!
//! Everything here reads counters that are already in memory (the webhook's [`Counters`], the
//! writer's [`Stats`]) plus the database file sizes: a scrape never queries the database, so it
//! costs the same on a 10 GB file as on an empty one. Counters start at zero with the process, as
//! Prometheus expects (`rate()` handles restarts).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::ingest::endpoint::Counters;
use crate::store::writer::Stats;

/// What `/metrics` reports beside the counters.
#[derive(Debug, Clone, Default)]
pub struct Gauges {
    /// The database file plus its WAL, in bytes.
    pub database_bytes: u64,
    pub wal_bytes: u64,
    pub admin_sessions: u64,
}

/// The whole `/metrics` body.
pub fn render(counters: &Counters, stats: &Stats, gauges: &Gauges) -> String {
    let mut out = String::with_capacity(4096);
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);

    let _ = writeln!(
        out,
        "# HELP stripe_inbox_webhook_requests_total Webhook requests answered, by outcome.\n\
         # TYPE stripe_inbox_webhook_requests_total counter"
    );
    for (outcome, value) in [
        ("stored", load(&counters.stored)),
        ("duplicate", load(&counters.duplicate)),
        ("signature_failed", load(&counters.signature_failed)),
        ("bad_request", load(&counters.bad_request)),
        ("unavailable", load(&counters.unavailable)),
    ] {
        let _ = writeln!(
            out,
            "stripe_inbox_webhook_requests_total{{outcome=\"{outcome}\"}} {value}"
        );
    }
    counter(
        &mut out,
        "stripe_inbox_signature_failures_total",
        "Webhook requests refused because of their Stripe-Signature.",
        load(&counters.signature_failed),
    );
    let last = load(&counters.last_stored_at);
    gauge(
        &mut out,
        "stripe_inbox_last_event_stored_timestamp_seconds",
        "Unix time of the newest stored event since start (0: none yet).",
        last as f64,
    );
    gauge(
        &mut out,
        "stripe_inbox_writer_queue_depth",
        "Messages waiting for the writer thread.",
        stats.queued.load(Ordering::Relaxed) as f64,
    );
    counter(
        &mut out,
        "stripe_inbox_writer_commits_total",
        "Transactions the writer committed.",
        load(&stats.commits),
    );
    counter(
        &mut out,
        "stripe_inbox_writer_events_total",
        "New events the writer stored.",
        load(&counters.stored),
    );
    counter(
        &mut out,
        "stripe_inbox_writer_duplicates_total",
        "Repeated deliveries the writer counted.",
        load(&counters.duplicate),
    );
    counter(
        &mut out,
        "stripe_inbox_writer_failed_total",
        "Events the writer could not store (answered 503).",
        load(&counters.write_failed),
    );
    stats.batch_size.render(
        &mut out,
        "stripe_inbox_writer_batch_size",
        "Messages per committed transaction (group commit).",
        1.0,
    );
    stats.commit_latency.render(
        &mut out,
        "stripe_inbox_writer_commit_seconds",
        "Time COMMIT took (the fsync of the WAL).",
        1e6,
    );
    gauge(
        &mut out,
        "stripe_inbox_database_bytes",
        "Size of the database file.",
        gauges.database_bytes as f64,
    );
    gauge(
        &mut out,
        "stripe_inbox_database_wal_bytes",
        "Size of the write-ahead log.",
        gauges.wal_bytes as f64,
    );
    gauge(
        &mut out,
        "stripe_inbox_admin_sessions",
        "Admin sessions open.",
        gauges.admin_sessions as f64,
    );
    out
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
    );
}

fn gauge(out: &mut String, name: &str, help: &str, value: f64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_is_prometheus_text() {
        let counters = Counters::default();
        counters.stored.fetch_add(3, Ordering::Relaxed);
        counters.signature_failed.fetch_add(2, Ordering::Relaxed);
        let stats = Stats::default();
        stats.commit_latency.observe(1_500);
        stats.batch_size.observe(7);
        let text = render(&counters, &stats, &Gauges::default());
        assert!(text.contains("stripe_inbox_webhook_requests_total{outcome=\"stored\"} 3\n"));
        assert!(text.contains("stripe_inbox_signature_failures_total 2\n"));
        assert!(text.contains("stripe_inbox_writer_commit_seconds_bucket{le=\"0.002\"} 1\n"));
        assert!(text.contains("stripe_inbox_writer_commit_seconds_bucket{le=\"0.001\"} 0\n"));
        assert!(text.contains("stripe_inbox_writer_batch_size_bucket{le=\"8\"} 1\n"));
        assert!(text.contains("stripe_inbox_writer_queue_depth 0\n"));
        // Every sample line is `name{labels} number`, every family has HELP and TYPE.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
            let family = name.split('{').next().unwrap();
            let base = family
                .trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count");
            assert!(
                text.contains(&format!("# TYPE {family} "))
                    || text.contains(&format!("# TYPE {base} ")),
                "{line}"
            );
        }
    }
}
