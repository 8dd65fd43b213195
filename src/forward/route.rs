//! The destinations as the rest of the service sees them: [`Routes`], built once from the
//! `[[forward]]` blocks and shared (in an `Arc`) by the writer's store path (which events get a
//! delivery to whom), the dispatcher threads (when to look for due work) and the admin (counters
//! for `/metrics` and the dashboard). It holds no secret: the signing secrets stay with the
//! senders.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use crate::config::forward::{Forward, Stale};
use crate::event::types;
use crate::histogram::Histogram;
use crate::mirror::Decision;

/// Upper bounds (ms) of the attempt-latency buckets: 5 ms .. 30 s.
pub const LATENCY_MS_BOUNDS: [u64; 12] = [
    5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000,
];

/// Every destination, in config order.
#[derive(Debug, Default)]
pub struct Routes {
    pub list: Vec<Route>,
}

/// One destination: what it takes, and what it has done since start.
#[derive(Debug)]
pub struct Route {
    pub name: String,
    /// The `events` patterns (`event::types::matches`).
    pub patterns: Vec<String>,
    pub stale: Stale,
    pub settle_ms: i64,
    pub stats: Stats,
    /// Tells this destination's dispatcher that work may be due sooner than it planned.
    pub signal: Signal,
}

impl Routes {
    /// The routes of these `[[forward]]` blocks (validated by the config already).
    pub fn from_config(list: &[Forward]) -> Routes {
        Routes {
            list: list
                .iter()
                .map(|f| Route {
                    name: f.name.clone(),
                    patterns: f.events.clone(),
                    stale: f.stale,
                    settle_ms: f.settle_ms.min(i64::MAX as u64) as i64,
                    stats: Stats::default(),
                    signal: Signal::default(),
                })
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn get(&self, name: &str) -> Option<&Route> {
        self.list.iter().find(|r| r.name == name)
    }
}

impl Route {
    /// Whether an event of this type, with this decision of the mirror, is forwarded here.
    pub fn wants(&self, event_type: &str, decision: Decision) -> bool {
        if self.stale == Stale::Skip && decision == Decision::Stale {
            return false;
        }
        self.patterns.iter().any(|p| types::matches(p, event_type))
    }
}

/// What a destination did since start (for `/metrics`), and the gauges its dispatcher refreshes
/// from the table now and then (so that a scrape never queries the database).
#[derive(Debug)]
pub struct Stats {
    /// Attempts answered 2xx (each ends its delivery `done`).
    pub done: AtomicU64,
    /// Attempts that failed and were scheduled again.
    pub retried: AtomicU64,
    /// Attempts that ended their delivery `dead` (a 4xx, or past `retry_for`).
    pub dead: AtomicU64,
    /// How long each attempt took, in milliseconds.
    pub latency: Histogram<12>,
    /// Attempts under way now.
    pub in_flight: AtomicU64,
    /// Rows `pending` (or leased by a process that is gone), as last counted.
    pub pending: AtomicU64,
    /// Rows `dead`, as last counted.
    pub dead_rows: AtomicU64,
    /// Unix ms of the oldest pending row's arrival, as last read (0: none).
    pub oldest_pending_ms: AtomicI64,
}

impl Default for Stats {
    fn default() -> Stats {
        Stats {
            done: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            dead: AtomicU64::new(0),
            latency: Histogram::new(LATENCY_MS_BOUNDS),
            in_flight: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            dead_rows: AtomicU64::new(0),
            oldest_pending_ms: AtomicI64::new(0),
        }
    }
}

impl Stats {
    pub fn load(a: &AtomicU64) -> u64 {
        a.load(Ordering::Relaxed)
    }
}

/// A dispatcher's alarm clock: the store path moves it earlier when it queues a delivery, a sender
/// rings it when it frees a slot, shutdown rings it for good.
#[derive(Debug, Default)]
pub struct Signal {
    state: Mutex<Alarm>,
    wake: Condvar,
}

#[derive(Debug, Default)]
struct Alarm {
    /// The earliest unix ms some new delivery becomes due.
    soonest: Option<i64>,
    /// A slot was freed or something changed: look again now.
    now: bool,
    stop: bool,
}

/// Why [`Signal::wait`] returned (several may hold; none: the time asked for came).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Wake {
    pub stop: bool,
    /// Someone asked to look again now.
    pub poked: bool,
    /// A new delivery's due time has come.
    pub due: bool,
}

impl Signal {
    /// A delivery becomes due at `at_ms`.
    pub fn due_at(&self, at_ms: i64) {
        let mut s = self.state.lock().expect("forward signal poisoned");
        if s.soonest.is_none_or(|t| at_ms < t) {
            s.soonest = Some(at_ms);
            self.wake.notify_all();
        }
    }

    /// Look again at once.
    pub fn poke(&self) {
        self.state.lock().expect("forward signal poisoned").now = true;
        self.wake.notify_all();
    }

    /// Stop for good.
    pub fn stop(&self) {
        self.state.lock().expect("forward signal poisoned").stop = true;
        self.wake.notify_all();
    }

    pub fn stopped(&self) -> bool {
        self.state.lock().expect("forward signal poisoned").stop
    }

    /// Waits until `until_ms` (unix ms, by `now_ms`), a poke, a new due time that has come, or
    /// stop, and says which (clearing the poke and the due time it reports).
    pub fn wait(&self, until_ms: i64, now_ms: impl Fn() -> i64) -> Wake {
        let mut s = self.state.lock().expect("forward signal poisoned");
        loop {
            let now = now_ms();
            let due = s.soonest.is_some_and(|t| t <= now);
            if s.stop || s.now || due || now >= until_ms {
                let wake = Wake {
                    stop: s.stop,
                    poked: s.now,
                    due,
                };
                s.now = false;
                if due {
                    s.soonest = None;
                }
                return wake;
            }
            let deadline = s.soonest.map_or(until_ms, |t| t.min(until_ms));
            let wait = Duration::from_millis((deadline - now).clamp(1, 60_000) as u64);
            s = self
                .wake
                .wait_timeout(s, wait)
                .expect("forward signal poisoned")
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(patterns: &[&str], stale: Stale) -> Route {
        Routes::from_config(&[Forward {
            name: "app".into(),
            url: "http://x/".into(),
            secret: Some("whsec_x".into()),
            events: patterns.iter().map(|p| p.to_string()).collect(),
            stale,
            ..Forward::default()
        }])
        .list
        .remove(0)
    }

    #[test]
    fn patterns_select_event_types() {
        let r = route(
            &[
                "payment_intent.*",
                "customer.subscription.*",
                "invoice.paid",
            ],
            Stale::Forward,
        );
        for (event_type, want) in [
            ("payment_intent.succeeded", true),
            ("payment_intent.payment_failed", true),
            ("customer.subscription.deleted", true),
            ("customer.updated", false),
            ("invoice.paid", true),
            ("invoice.payment_succeeded", false),
            ("payment_intents.x", false),
        ] {
            assert_eq!(r.wants(event_type, Decision::Applied), want, "{event_type}");
        }
        assert!(route(&["*"], Stale::Forward)
            .wants("v1.billing.meter.no_meter_found", Decision::NoObject));
    }

    #[test]
    fn stale_skip_drops_only_stale_events() {
        let skip = route(&["*"], Stale::Skip);
        assert!(!skip.wants("customer.updated", Decision::Stale));
        for d in Decision::ALL.into_iter().filter(|d| *d != Decision::Stale) {
            assert!(skip.wants("customer.updated", d), "{d:?}");
        }
        assert!(route(&["*"], Stale::Forward).wants("customer.updated", Decision::Stale));
    }

    #[test]
    fn the_alarm_wakes_for_a_sooner_due_time_a_poke_or_stop() {
        let signal = std::sync::Arc::new(Signal::default());
        let clock = || crate::time::now_ms();
        // Nothing: waits until the deadline.
        let t0 = clock();
        let woke = signal.wait(t0 + 30, clock);
        assert!(clock() - t0 >= 30);
        assert_eq!(woke, Wake::default());
        // A due time already past wakes at once and is cleared; one in the future wakes then.
        signal.due_at(t0);
        assert!(signal.wait(clock() + 10_000, clock).due);
        let t1 = clock();
        signal.due_at(t1 + 40);
        assert!(signal.wait(t1 + 10_000, clock).due);
        assert!(clock() - t1 >= 40 && clock() - t1 < 5_000);
        // A poke from another thread.
        let s = signal.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            s.poke();
        });
        let t2 = clock();
        assert!(signal.wait(t2 + 10_000, clock).poked);
        assert!(clock() - t2 < 5_000);
        t.join().unwrap();
        signal.stop();
        assert!(signal.wait(clock() + 10_000, clock).stop);
        assert!(signal.stopped());
    }
}
