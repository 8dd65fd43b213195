//! What an attempt's result means and when the next one goes: the outcome classes, the backoff
//! schedule, `Retry-After`, and the retry budget. Pure: the clock and the random draw are passed in.
//!
//! # Outcome classes (issue 9)
//! - **2xx**: done.
//! - **408, 409, 425, 429, 5xx**, timeouts and connection errors: retried. A 409 is what a shop's
//!   handler answers when it lost a race with the shop's own checkout code (Medusa's
//!   `payment_intent.succeeded`); retried promptly, it succeeds.
//! - **Any other 4xx**: dead at once: the app says the request itself is wrong, and sending it
//!   again unchanged cannot help (`redeliver` does, once the app is fixed).
//! - **1xx and 3xx** (the issue is silent): retried, as Stripe treats every non-2xx answer as a
//!   failure and retries it; redirects are never followed, because a POST body must not be sent
//!   somewhere else unasked.
//!
//! # Backoff
//! After failed attempt `n` (1, 2, ...) the wait is drawn uniformly from `[min, ceiling]`, where
//! `ceiling = min(max_backoff, min_backoff · 2^(n-1))`: full jitter above a floor, so the first
//! retry comes after exactly `min_backoff_ms` (what the key's name promises) and later ones spread
//! out instead of arriving in step. A `Retry-After` the app sends (seconds or an HTTP date) replaces
//! the draw, held within `[min_backoff, max_backoff]` so that `Retry-After: 0` cannot make a hot
//! loop. A delivery is dead once `retry_for` has passed since it was queued (or redelivered); the
//! last retry is moved forward to that moment rather than dropped.
//!
//! # A destination that is down
//! Each delivery keeps its own schedule, but a destination that fails [`FAILS_TO_PAUSE`] attempts
//! in a row with no answer, a 5xx, 429 or 408 is paused as a whole ([`Health`]): one attempt at a
//! time, spaced by its own backoff (at most [`MAX_PAUSE_MS`]), until one is answered. Without it, an
//! app that is down would be asked for every waiting object at once, over and over, each attempt an
//! outcome for the writer to commit beside the webhooks.

/// What one attempt's result asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Done,
    Retry,
    Dead,
}

impl Class {
    /// The text stored in `delivery_attempts.outcome`.
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Done => "done",
            Class::Retry => "retry",
            Class::Dead => "dead",
        }
    }

    pub fn parse(text: &str) -> Option<Class> {
        [Class::Done, Class::Retry, Class::Dead]
            .into_iter()
            .find(|c| c.as_str() == text)
    }
}

/// The class of an HTTP answer's status.
pub fn class_of_status(status: u16) -> Class {
    match status {
        200..=299 => Class::Done,
        408 | 409 | 425 | 429 => Class::Retry,
        400..=499 => Class::Dead,
        _ => Class::Retry,
    }
}

/// A destination's retry settings, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub min_backoff_ms: i64,
    pub max_backoff_ms: i64,
    pub retry_for_ms: i64,
}

impl Policy {
    pub fn of(f: &crate::config::forward::Forward) -> Policy {
        let ms = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        Policy {
            min_backoff_ms: ms(f.min_backoff_ms),
            max_backoff_ms: ms(f.max_backoff_secs).saturating_mul(1000),
            retry_for_ms: f.retry_for_ms(),
        }
    }

    /// The wait after failed attempt `attempt` (1-based), with `random` as the jitter's draw.
    pub fn backoff_ms(&self, attempt: i64, random: u64) -> i64 {
        let floor = self.min_backoff_ms.min(self.max_backoff_ms);
        let doublings = u32::try_from((attempt - 1).clamp(0, 62)).unwrap_or(62);
        let ceiling = self
            .min_backoff_ms
            .saturating_mul(1i64 << doublings)
            .min(self.max_backoff_ms)
            .max(floor);
        let span = (ceiling - floor) as u64 + 1;
        floor + (random % span) as i64
    }

    /// When failed attempt `attempt` is followed by another, or `None` when the delivery is dead
    /// (its budget, counted from `retry_from_ms`, has passed). `retry_after_ms` is the app's
    /// `Retry-After`, as a wait from `now_ms`.
    pub fn next_attempt(
        &self,
        attempt: i64,
        now_ms: i64,
        retry_from_ms: i64,
        retry_after_ms: Option<i64>,
        random: u64,
    ) -> Option<i64> {
        let deadline = retry_from_ms.saturating_add(self.retry_for_ms);
        if now_ms >= deadline {
            return None;
        }
        let wait = match retry_after_ms {
            Some(ms) => ms.clamp(
                self.min_backoff_ms.min(self.max_backoff_ms),
                self.max_backoff_ms,
            ),
            None => self.backoff_ms(attempt, random),
        };
        Some(now_ms.saturating_add(wait).min(deadline))
    }
}

/// Past this many failed attempts in a row across a destination (no answer, 5xx, 429 or 408: the
/// app is down or overloaded, whichever delivery it is), the destination is paused: one attempt at
/// a time, spaced by its backoff, until one is answered.
pub const FAILS_TO_PAUSE: u32 = 5;
/// The longest pause between two probes of a paused destination: an app that comes back is
/// noticed within this, however long it was down.
pub const MAX_PAUSE_MS: i64 = 30_000;

/// Whether a destination as a whole is answering (a circuit breaker). Each delivery keeps its own
/// schedule; this only keeps a dead destination from being asked for every waiting object at
/// once, again and again, which would cost the writer an outcome per attempt for nothing.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    /// Failed attempts in a row.
    pub failing: u32,
    /// Paused: no attempt before this (unix ms), then one probe.
    pub paused_until: Option<i64>,
    /// The probe is under way.
    pub probing: bool,
}

/// A change of a destination's health worth a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Paused { wait_ms: i64 },
    Resumed,
}

impl Health {
    /// How many deliveries may be claimed now, with `free` idle senders and `in_flight` attempts
    /// under way.
    pub fn allowance(&self, now_ms: i64, free: usize, in_flight: u64) -> usize {
        match self.paused_until {
            None => free,
            Some(t) if now_ms >= t && in_flight == 0 && !self.probing => free.min(1),
            Some(_) => 0,
        }
    }

    /// When a paused destination may be probed (`None`: not paused, or probing).
    pub fn resume_at(&self) -> Option<i64> {
        self.paused_until.filter(|_| !self.probing)
    }

    /// A claim went out while paused: that is the probe.
    pub fn probe_started(&mut self) {
        if self.paused_until.is_some() {
            self.probing = true;
        }
    }

    /// Records one attempt's answer (`None`: none came).
    pub fn record(
        &mut self,
        status: Option<u16>,
        now_ms: i64,
        policy: &Policy,
        random: u64,
    ) -> Option<Change> {
        let trouble = status.is_none_or(|s| s >= 500 || s == 429 || s == 408);
        if !trouble {
            let was_paused = self.paused_until.is_some();
            *self = Health::default();
            return was_paused.then_some(Change::Resumed);
        }
        self.failing = self.failing.saturating_add(1);
        self.probing = false;
        if self.failing < FAILS_TO_PAUSE {
            return None;
        }
        let wait_ms = policy
            .backoff_ms(i64::from(self.failing - FAILS_TO_PAUSE + 1), random)
            .min(MAX_PAUSE_MS);
        let first = self.paused_until.is_none();
        self.paused_until = Some(now_ms.saturating_add(wait_ms));
        first.then_some(Change::Paused { wait_ms })
    }
}

/// A `Retry-After` value as a wait in milliseconds from `now_ms`: delay-seconds (`120`) or an
/// HTTP date in any of the three forms RFC 9110 says to accept (`Sun, 06 Nov 1994 08:49:37 GMT`,
/// `Sunday, 06-Nov-94 08:49:37 GMT`, `Sun Nov  6 08:49:37 1994`). A date in the past is a wait of
/// 0; anything else is `None` (and the backoff decides).
pub fn parse_retry_after(value: &str, now_ms: i64) -> Option<i64> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return value.parse::<i64>().ok().map(|s| s.saturating_mul(1000));
    }
    let secs = parse_http_date(value)?;
    Some((secs.saturating_mul(1000) - now_ms).max(0))
}

/// An HTTP date to unix seconds.
fn parse_http_date(text: &str) -> Option<i64> {
    let parts: Vec<&str> = text
        .split(|c: char| c.is_ascii_whitespace() || c == ',' || c == '-')
        .filter(|p| !p.is_empty())
        .collect();
    // Drop the weekday; asctime puts the month next, the others the day.
    let (day, month, year, clock) = match parts.as_slice() {
        [_, month, day, clock, year] if month.chars().all(|c| c.is_ascii_alphabetic()) => {
            (*day, *month, *year, *clock)
        }
        [_, day, month, year, clock, zone] if zone.eq_ignore_ascii_case("GMT") => {
            (*day, *month, *year, *clock)
        }
        _ => return None,
    };
    const MONTHS: [&str; 12] = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    let month = MONTHS.iter().position(|m| m.eq_ignore_ascii_case(month))? + 1;
    let day: u32 = day.parse().ok()?;
    let mut year: u32 = year.parse().ok()?;
    if year < 100 {
        // RFC 850's two-digit year (RFC 9110 §5.6.7: read it as the nearest past century's).
        year += if year >= 70 { 1900 } else { 2000 };
    }
    if !(clock.len() == 8 && clock.as_bytes()[2] == b':' && clock.as_bytes()[5] == b':') {
        return None;
    }
    crate::time::parse_rfc3339(&format!("{year:04}-{month:02}-{day:02}T{clock}Z"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: Policy = Policy {
        min_backoff_ms: 1000,
        max_backoff_ms: 3_600_000,
        retry_for_ms: 3 * 86_400_000,
    };

    #[test]
    fn outcome_classes() {
        for status in [200, 201, 202, 204, 299] {
            assert_eq!(class_of_status(status), Class::Done, "{status}");
        }
        for status in [
            408, 409, 425, 429, 500, 502, 503, 504, 599, 301, 302, 304, 100,
        ] {
            assert_eq!(class_of_status(status), Class::Retry, "{status}");
        }
        for status in [400, 401, 403, 404, 405, 410, 413, 422, 426, 451, 499] {
            assert_eq!(class_of_status(status), Class::Dead, "{status}");
        }
        for class in [Class::Done, Class::Retry, Class::Dead] {
            assert_eq!(Class::parse(class.as_str()), Some(class));
        }
    }

    #[test]
    fn backoff_doubles_its_ceiling_with_full_jitter_above_the_floor() {
        // The first retry waits exactly min_backoff.
        for random in [0, 1, 12345, u64::MAX] {
            assert_eq!(POLICY.backoff_ms(1, random), 1000);
        }
        // Attempt n draws from [1 s, 2^(n-1) s]; the draw spans the whole range.
        for (attempt, ceiling) in [(2, 2000), (3, 4000), (5, 16_000), (12, 2_048_000)] {
            let draws: Vec<i64> = (0..2000u64)
                .map(|r| POLICY.backoff_ms(attempt, r.wrapping_mul(0x9E37_79B9_7F4A_7C15)))
                .collect();
            assert!(
                draws.iter().all(|d| (1000..=ceiling).contains(d)),
                "{attempt}"
            );
            assert_eq!(POLICY.backoff_ms(attempt, 0), 1000);
            assert_eq!(POLICY.backoff_ms(attempt, (ceiling - 1000) as u64), ceiling);
            let mean = draws.iter().sum::<i64>() / draws.len() as i64;
            let mid = (1000 + ceiling) / 2;
            assert!(
                (mean - mid).abs() < (ceiling - 1000) / 10 + 1,
                "{attempt}: mean {mean}"
            );
        }
        // Capped by max_backoff, also far out (no overflow).
        for attempt in [13, 40, 63, 64, 1000, i64::MAX] {
            assert!(POLICY.backoff_ms(attempt, u64::MAX / 3 * 2 + 7) <= 3_600_000);
            assert_eq!(POLICY.backoff_ms(attempt, 3_599_000), 3_600_000);
        }
        // A floor above the cap is held to the cap.
        let odd = Policy {
            min_backoff_ms: 5000,
            max_backoff_ms: 2000,
            retry_for_ms: 1,
        };
        assert_eq!(odd.backoff_ms(3, 99), 2000);
    }

    #[test]
    fn retry_after_is_honoured_within_the_bounds_and_the_budget_ends_in_dead() {
        let now = 1_700_000_000_000;
        // The app's Retry-After replaces the draw, held within [min, max].
        assert_eq!(
            POLICY.next_attempt(1, now, now, Some(30_000), 0),
            Some(now + 30_000)
        );
        assert_eq!(
            POLICY.next_attempt(9, now, now, Some(0), 0),
            Some(now + 1000)
        );
        assert_eq!(
            POLICY.next_attempt(1, now, now, Some(86_400_000), 0),
            Some(now + 3_600_000)
        );
        // Without one, the backoff.
        assert_eq!(POLICY.next_attempt(1, now, now, None, 7), Some(now + 1000));
        // Near the end of the budget the last retry is moved to its end; after it, dead.
        let from = now - 3 * 86_400_000 + 500;
        assert_eq!(POLICY.next_attempt(20, now, from, None, 5), Some(now + 500));
        assert_eq!(POLICY.next_attempt(21, now + 500, from, None, 5), None);
        assert_eq!(
            POLICY.next_attempt(1, now, now - 4 * 86_400_000, Some(1), 0),
            None
        );
    }

    #[test]
    fn a_destination_that_keeps_failing_is_probed_one_attempt_at_a_time() {
        let p = Policy {
            min_backoff_ms: 100,
            max_backoff_ms: 3_600_000,
            retry_for_ms: 1,
        };
        let mut h = Health::default();
        assert_eq!(h.allowance(0, 8, 3), 8);
        // Answers that are not trouble keep it healthy: a 409 or a 400 means the app is up.
        for status in [Some(409), Some(400), Some(200)] {
            assert_eq!(h.record(status, 0, &p, 0), None);
        }
        assert_eq!(h.failing, 0);
        // Four failures in a row: still at full speed; the fifth pauses it.
        for status in [None, Some(503), Some(429), Some(408)] {
            assert_eq!(h.record(status, 0, &p, 0), None);
            assert_eq!(h.allowance(0, 8, 0), 8);
        }
        assert_eq!(
            h.record(None, 1000, &p, 0),
            Some(Change::Paused { wait_ms: 100 })
        );
        assert_eq!(h.allowance(1050, 8, 0), 0, "paused");
        assert_eq!(h.resume_at(), Some(1100));
        assert_eq!(
            h.allowance(1100, 8, 2),
            0,
            "not while attempts are under way"
        );
        assert_eq!(h.allowance(1100, 8, 0), 1, "one probe");
        h.probe_started();
        assert_eq!((h.allowance(1200, 8, 0), h.resume_at()), (0, None));
        // The probe fails: a longer pause, no new log line.
        assert_eq!(h.record(Some(502), 1300, &p, 99), None);
        // Backoff of "attempt 2" above the pause: 100 ms + the draw (99) within [100, 200].
        assert_eq!(h.paused_until, Some(1300 + 199));
        // Far out, the pause stays under MAX_PAUSE_MS.
        h.failing = 60;
        h.record(None, 0, &p, u64::MAX);
        assert_eq!(h.paused_until, Some(MAX_PAUSE_MS));
        // An answer: back to full speed.
        assert_eq!(h.record(Some(200), 5000, &p, 0), Some(Change::Resumed));
        assert_eq!(h.allowance(5000, 8, 0), 8);
    }

    #[test]
    fn retry_after_values() {
        let now = 784_111_777_000; // Sun, 06 Nov 1994 08:49:37 GMT
        for (value, want) in [
            ("120", Some(120_000)),
            (" 5 ", Some(5_000)),
            ("0", Some(0)),
            ("Sun, 06 Nov 1994 08:51:37 GMT", Some(120_000)),
            ("Sunday, 06-Nov-94 08:50:37 GMT", Some(60_000)),
            ("Sun Nov  6 08:49:47 1994", Some(10_000)),
            ("Sun, 06 Nov 1994 08:00:00 GMT", Some(0)),
            ("-5", None),
            ("1.5", None),
            ("soon", None),
            ("", None),
            ("Sun, 06 Foo 1994 08:51:37 GMT", None),
            ("Sun, 06 Nov 1994 08:51 GMT", None),
        ] {
            assert_eq!(parse_retry_after(value, now), want, "{value:?}");
        }
    }
}
