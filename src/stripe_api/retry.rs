//! When a call to Stripe's API is sent again, and how long to wait first: the policy of Stripe's
//! official libraries (stripe-facts.md §3), written as two pure functions the client applies.
//!
//! In order, first match wins:
//! 1. no answer (connection refused, reset or dropped, timeout, a broken response): retry, except
//!    for failures a retry cannot fix (TLS, a malformed URL);
//! 2. a 2xx: done;
//! 3. `Stripe-Should-Retry: true|false`: Stripe's own advice, over every status heuristic;
//! 4. `Idempotent-Replayed: true` on an error: this is the answer Stripe saved for the key, and
//!    every retry with that key would get it again, so stop (the caller decides whether a new
//!    logical request, with a new key, is in order);
//! 5. 409 (`idempotency_key_in_use` and other conflicts; nothing is saved for them): retry;
//! 6. 429 with `code: lock_timeout` (an object lock, not a rate limit): retry;
//! 7. any other 429 is rate limiting: the shared limiter slows down, and the request is retried
//!    on a budget of its own ([`RATE_LIMITED_RETRIES`]) so that a long backfill slows down
//!    instead of failing;
//! 8. 5xx: retry;
//! 9. anything else (400, 401, 402, 403, 404, a redirect): fail at once.
//!
//! Retries of kinds 1, 3, 5, 6 and 8 are bounded by `max_network_retries`. The wait before retry
//! `n` (0 for the first) is `min(0.5 * 2^n, 5)` s times a jitter factor in [0.5, 1), at least
//! 0.5 s: stripe-node's formula. `Retry-After` is not used (stripe-node and stripe-python removed
//! it as unused).

use std::time::Duration;

/// Retries of a rate-limited request (429 without `lock_timeout`), apart from
/// `max_network_retries`: with the backoff capped at 5 s, about 45 s of waiting in all.
pub const RATE_LIMITED_RETRIES: u32 = 10;

/// What one attempt gave, as far as the policy needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt<'a> {
    /// An HTTP answer.
    Answer {
        status: u16,
        /// The `Stripe-Should-Retry` header, if present.
        should_retry: Option<bool>,
        /// `Idempotent-Replayed: true`.
        replayed: bool,
        /// `error.code` of the body, if any.
        code: Option<&'a str>,
    },
    /// No answer. `retryable` is false for failures a retry cannot fix.
    NoAnswer { retryable: bool },
}

/// What to do after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Done,
    /// Retry, within `max_network_retries`.
    Retry,
    /// Rate-limited: slow down and retry, within [`RATE_LIMITED_RETRIES`].
    RetryRateLimited,
    Fail,
}

/// The policy (see the module doc).
pub fn verdict(attempt: &Attempt) -> Verdict {
    let (status, should_retry, replayed, code) = match *attempt {
        Attempt::NoAnswer { retryable: true } => return Verdict::Retry,
        Attempt::NoAnswer { retryable: false } => return Verdict::Fail,
        Attempt::Answer {
            status,
            should_retry,
            replayed,
            code,
        } => (status, should_retry, replayed, code),
    };
    if (200..300).contains(&status) {
        return Verdict::Done;
    }
    let limited = rate_limited(attempt);
    match should_retry {
        Some(true) if limited => return Verdict::RetryRateLimited,
        Some(true) => return Verdict::Retry,
        Some(false) => return Verdict::Fail,
        None => {}
    }
    if replayed {
        return Verdict::Fail;
    }
    match status {
        409 => Verdict::Retry,
        429 if code == Some("lock_timeout") => Verdict::Retry,
        429 => Verdict::RetryRateLimited,
        500.. => Verdict::Retry,
        _ => Verdict::Fail,
    }
}

/// Whether the answer is rate limiting, which slows the shared limiter down whatever else is
/// decided: a 429 that is not an object lock (`lock_timeout`).
pub fn rate_limited(attempt: &Attempt) -> bool {
    matches!(attempt, Attempt::Answer { status: 429, code, .. } if *code != Some("lock_timeout"))
}

/// The wait before retry `n` (0 for the first): `min(0.5 * 2^n, 5)` units, times `0.5 + jitter / 2`
/// (`jitter` in [0, 1)), at least half a unit. A unit is a second except in tests.
pub fn backoff(n: u32, jitter: f64, unit: Duration) -> Duration {
    let base = (0.5 * 2f64.powi(n.min(16) as i32)).min(5.0);
    let secs = (base * (0.5 + jitter.clamp(0.0, 1.0) / 2.0)).max(0.5);
    unit.mul_f64(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, should_retry: Option<bool>, code: Option<&str>) -> Verdict {
        verdict(&Attempt::Answer {
            status,
            should_retry,
            replayed: false,
            code,
        })
    }

    #[test]
    fn the_official_libraries_policy() {
        use Verdict::*;
        for (status, header, code, want) in [
            (200, None, None, Done),
            (201, Some(false), None, Done),
            (400, None, Some("resource_missing"), Fail),
            (401, None, None, Fail),
            (402, None, Some("card_declined"), Fail),
            (404, None, Some("resource_missing"), Fail),
            (409, None, Some("idempotency_key_in_use"), Retry),
            (429, None, Some("lock_timeout"), Retry),
            (429, None, Some("rate_limit"), RetryRateLimited),
            (429, None, None, RetryRateLimited),
            (500, None, None, Retry),
            (503, None, None, Retry),
            (302, None, None, Fail),
            // The header overrides the status heuristics, both ways.
            (500, Some(false), None, Fail),
            (409, Some(false), None, Fail),
            (400, Some(true), None, Retry),
            (429, Some(true), None, RetryRateLimited),
            (429, Some(false), Some("lock_timeout"), Fail),
        ] {
            assert_eq!(
                answer(status, header, code),
                want,
                "{status} {header:?} {code:?}"
            );
        }
        assert_eq!(verdict(&Attempt::NoAnswer { retryable: true }), Retry);
        assert_eq!(verdict(&Attempt::NoAnswer { retryable: false }), Fail);
        // A replayed error is the key's final answer.
        let replayed = Attempt::Answer {
            status: 500,
            should_retry: None,
            replayed: true,
            code: None,
        };
        assert_eq!(verdict(&replayed), Fail);
        assert!(rate_limited(&Attempt::Answer {
            status: 429,
            should_retry: Some(false),
            replayed: false,
            code: None
        }));
        assert!(!rate_limited(&Attempt::Answer {
            status: 429,
            should_retry: None,
            replayed: false,
            code: Some("lock_timeout")
        }));
    }

    #[test]
    fn backoff_doubles_to_five_seconds_with_jitter() {
        let s = Duration::from_secs(1);
        let at = |n, j| backoff(n, j, s).as_secs_f64();
        // The floor holds the first retry at 0.5 s.
        assert_eq!((at(0, 0.0), at(0, 0.99)), (0.5, 0.5));
        assert_eq!(at(1, 0.0), 0.5);
        assert!((at(1, 0.999) - 0.9995).abs() < 1e-9);
        assert_eq!((at(2, 0.0), at(3, 0.0)), (1.0, 2.0));
        assert_eq!((at(4, 0.0), at(30, 0.0)), (2.5, 2.5));
        assert!(at(30, 0.999) < 5.0 && at(30, 0.999) > 4.99);
        assert_eq!(
            backoff(3, 0.0, Duration::from_millis(2)),
            Duration::from_millis(4)
        );
    }
}
