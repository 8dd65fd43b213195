//! `/metrics` in the Prometheus text format.
//!
//! Everything here reads counters that are already in memory (the webhook's [`Counters`], the
//! writer's [`Stats`], each forwarding destination's counters and the gauges its dispatcher
//! refreshes every few seconds) plus the database file sizes: a scrape never queries the database, so it
//! costs the same on a 10 GB file as on an empty one. Counters start at zero with the process, as
//! Prometheus expects (`rate()` handles restarts).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::forward::route::Stats as ForwardStats;
use crate::forward::Routes;
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

/// The forwarding families, one series per destination (names are `[A-Za-z0-9._-]`, so they need
/// no escaping in a label).
pub fn render_forward(out: &mut String, routes: &Routes) {
    if routes.is_empty() {
        return;
    }
    let load = ForwardStats::load;
    let _ = writeln!(
        out,
        "# HELP stripe_inbox_forward_attempts_total Forwarding attempts by destination and outcome (done and dead end a delivery, retry schedules another attempt).\n\
         # TYPE stripe_inbox_forward_attempts_total counter"
    );
    for r in &routes.list {
        for (outcome, value) in [
            ("done", load(&r.stats.done)),
            ("retry", load(&r.stats.retried)),
            ("dead", load(&r.stats.dead)),
        ] {
            let _ = writeln!(
                out,
                "stripe_inbox_forward_attempts_total{{destination=\"{}\",outcome=\"{outcome}\"}} {value}",
                r.name
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP stripe_inbox_forward_attempt_seconds How long each forwarding attempt took, by destination.\n\
         # TYPE stripe_inbox_forward_attempt_seconds histogram"
    );
    for r in &routes.list {
        r.stats.latency.render_samples(
            out,
            "stripe_inbox_forward_attempt_seconds",
            1e3,
            &format!("destination=\"{}\"", r.name),
        );
    }
    let now_ms = crate::time::now_ms();
    for (name, help, value) in [
        (
            "stripe_inbox_forward_pending",
            "Deliveries waiting to be sent, by destination (counted every few seconds).",
            &(|s: &ForwardStats| load(&s.pending) as f64) as &dyn Fn(&ForwardStats) -> f64,
        ),
        (
            "stripe_inbox_forward_in_flight",
            "Forwarding attempts under way, by destination.",
            &|s: &ForwardStats| load(&s.in_flight) as f64,
        ),
        (
            "stripe_inbox_forward_dead",
            "Dead-lettered deliveries, by destination (counted every few seconds).",
            &|s: &ForwardStats| load(&s.dead_rows) as f64,
        ),
        (
            "stripe_inbox_forward_oldest_pending_seconds",
            "Age of the oldest delivery not yet done, by destination (0: none).",
            &|s: &ForwardStats| match s.oldest_pending_ms.load(Ordering::Relaxed) {
                0 => 0.0,
                at => ((now_ms - at).max(0) / 1000) as f64,
            },
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for r in &routes.list {
            let _ = writeln!(
                out,
                "{name}{{destination=\"{}\"}} {}",
                r.name,
                value(&r.stats)
            );
        }
    }
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
        let mut text = text;
        let routes = Routes::from_config(&[crate::config::forward::Forward {
            name: "app".into(),
            url: "http://x/".into(),
            secret: Some("whsec_x".into()),
            ..Default::default()
        }]);
        let app = &routes.list[0].stats;
        app.done.fetch_add(4, Ordering::Relaxed);
        app.retried.fetch_add(1, Ordering::Relaxed);
        app.latency.observe(30);
        app.pending.store(6, Ordering::Relaxed);
        app.dead_rows.store(2, Ordering::Relaxed);
        render_forward(&mut text, &routes);
        for line in [
            "stripe_inbox_forward_attempts_total{destination=\"app\",outcome=\"done\"} 4\n",
            "stripe_inbox_forward_attempts_total{destination=\"app\",outcome=\"retry\"} 1\n",
            "stripe_inbox_forward_attempt_seconds_bucket{destination=\"app\",le=\"0.05\"} 1\n",
            "stripe_inbox_forward_attempt_seconds_bucket{destination=\"app\",le=\"0.025\"} 0\n",
            "stripe_inbox_forward_attempt_seconds_count{destination=\"app\"} 1\n",
            "stripe_inbox_forward_pending{destination=\"app\"} 6\n",
            "stripe_inbox_forward_dead{destination=\"app\"} 2\n",
            "stripe_inbox_forward_oldest_pending_seconds{destination=\"app\"} 0\n",
        ] {
            assert!(text.contains(line), "{line}");
        }
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
