//! The client-side rate limit: one [`Limiter`] per process, shared by every caller through the one
//! client (`serve` makes one; a CLI command that works alone makes one), so that
//! backfill, reconcile and refetch together stay below `requests_per_sec`.
//!
//! It hands out evenly spaced slots (`1 / rate` apart). A rate-limited answer (429 without
//! `lock_timeout`) halves the rate (down to [`MIN_RATE`]) and pauses every caller for a unit (a
//! second); each success then raises it again by a fiftieth of the configured rate, so a long
//! backfill that meets 429s slows down, recovers slowly, and finishes.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The slowest the limiter goes, in requests per second.
pub const MIN_RATE: f64 = 1.0;

/// What the limiter has done, for reports and tests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LimiterStats {
    /// The rate now, requests per second.
    pub rate: f64,
    /// The lowest it went.
    pub lowest: f64,
    /// How many rate-limited answers slowed it down.
    pub slowdowns: u64,
}

/// A shared pacer of requests.
#[derive(Debug)]
pub struct Limiter {
    /// The configured rate: the most it goes.
    cap: f64,
    unit: Duration,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    rate: f64,
    next: Instant,
    stats: LimiterStats,
}

impl Limiter {
    /// A limiter at `per_sec` requests per second; `unit` is what a second of pause lasts.
    pub fn new(per_sec: u32, unit: Duration) -> Limiter {
        let cap = f64::from(per_sec.max(1));
        Limiter {
            cap,
            unit,
            state: Mutex::new(State {
                rate: cap,
                next: Instant::now(),
                stats: LimiterStats {
                    rate: cap,
                    lowest: cap,
                    slowdowns: 0,
                },
            }),
        }
    }

    /// Waits for the next free slot.
    pub fn wait(&self) {
        let (slot, now) = {
            let mut s = self.state.lock().expect("limiter poisoned");
            let now = Instant::now();
            let slot = s.next.max(now);
            s.next = slot + Duration::from_secs_f64(1.0 / s.rate);
            (slot, now)
        };
        if slot > now {
            std::thread::sleep(slot - now);
        }
    }

    /// A rate-limited answer: halve the rate and pause everyone for a unit.
    pub fn slow_down(&self) {
        let mut s = self.state.lock().expect("limiter poisoned");
        s.rate = (s.rate / 2.0).max(MIN_RATE);
        s.next = s.next.max(Instant::now() + self.unit);
        s.stats.slowdowns += 1;
        s.stats.lowest = s.stats.lowest.min(s.rate);
        s.stats.rate = s.rate;
        log::warn!(
            "stripe: rate-limited; slowing down to {:.1} requests/s",
            s.rate
        );
    }

    /// A request went through: recover a little.
    pub fn succeeded(&self) {
        let mut s = self.state.lock().expect("limiter poisoned");
        if s.rate < self.cap {
            s.rate = (s.rate + self.cap / 50.0).min(self.cap);
            s.stats.rate = s.rate;
        }
    }

    pub fn stats(&self) -> LimiterStats {
        self.state.lock().expect("limiter poisoned").stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spaces_requests_and_slows_down_after_a_429() {
        let limiter = Limiter::new(200, Duration::from_millis(20));
        let started = Instant::now();
        for _ in 0..11 {
            limiter.wait();
        }
        // Ten gaps of 5 ms.
        assert!(started.elapsed() >= Duration::from_millis(50));
        limiter.slow_down();
        limiter.slow_down();
        let stats = limiter.stats();
        assert_eq!((stats.rate, stats.lowest, stats.slowdowns), (50.0, 50.0, 2));
        // The pause and the slower pace: the next two slots are 20 ms away, then 20 ms apart.
        let started = Instant::now();
        limiter.wait();
        limiter.wait();
        assert!(started.elapsed() >= Duration::from_millis(35));
        for _ in 0..100 {
            limiter.succeeded();
        }
        let stats = limiter.stats();
        assert_eq!((stats.rate, stats.lowest), (200.0, 50.0), "recovered");
        for _ in 0..20 {
            limiter.slow_down();
        }
        assert_eq!(limiter.stats().rate, MIN_RATE);
    }
}
