//! `[stripe]`: the Stripe API client's settings (`stripe_api`): where the key is, where the API is,
//! how calls are timed, retried and paced, and what runs on a schedule. Without a key everything
//! here is off. The key itself is read from the environment variable the file names, never from
//! the file, and never logged.

use std::time::Duration;

use serde::Deserialize;

use crate::time::parse_duration_ms;

/// `[stripe]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Stripe {
    /// Environment variable holding the secret or restricted API key (`rk_...`, `sk_...`); unset or
    /// empty turns the Stripe client off. Defaults to `STRIPE_API_KEY`.
    pub api_key_env: String,
    /// Where Stripe's API is: `https://`, or `http://` on a loopback address (a local stub in
    /// tests). Requests never go anywhere else. Defaults to `https://api.stripe.com`.
    pub api_base: String,
    /// Seconds one request may take, connecting and reading included. Defaults to 30.
    pub timeout_secs: u64,
    /// Retries of a request that failed in a way worth retrying, as the official libraries do.
    /// Defaults to 2.
    pub max_network_retries: u32,
    /// Requests per second this process sends at most, all callers together; a rate-limited answer
    /// (429) slows it down for a while. Defaults to 20.
    pub requests_per_sec: u32,
    /// Fetch an object from the API when no rule could order its same-second events. Defaults to
    /// true.
    pub refetch_uncertain: bool,
    /// How often `serve` reads `/v1/events` for events the webhook never brought (it also does at
    /// start-up); `off` turns it off. Defaults to `1h`.
    pub reconcile_every: String,
    /// How often `serve` runs a full backfill; `off` turns it off. Defaults to `off`.
    pub resync_every: String,
    /// What one second of the retry backoff (`min(0.5 * 2^n, 5)` s) and of the rate limiter's
    /// pause after a 429 lasts. Not a key of the file: tests shrink it. Defaults to 1 s.
    #[serde(skip)]
    pub backoff_unit: Duration,
}

impl Default for Stripe {
    fn default() -> Stripe {
        Stripe {
            api_key_env: "STRIPE_API_KEY".into(),
            api_base: "https://api.stripe.com".into(),
            timeout_secs: 30,
            max_network_retries: 2,
            requests_per_sec: 20,
            refetch_uncertain: true,
            reconcile_every: "1h".into(),
            resync_every: "off".into(),
            backoff_unit: Duration::from_secs(1),
        }
    }
}

impl Stripe {
    /// The API key, if the variable is set and not empty.
    pub fn api_key(&self) -> Option<String> {
        if self.api_key_env.is_empty() {
            return None;
        }
        std::env::var(&self.api_key_env)
            .ok()
            .map(|k| k.trim().to_string())
            .filter(|k| !k.is_empty())
    }

    /// The request timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs.max(1))
    }

    /// How often to reconcile; `None` when off.
    pub fn reconcile_every(&self) -> Option<Duration> {
        schedule(&self.reconcile_every).ok().flatten()
    }

    /// How often to backfill; `None` when off.
    pub fn resync_every(&self) -> Option<Duration> {
        schedule(&self.resync_every).ok().flatten()
    }

    /// `api_base` without a trailing slash.
    pub fn base(&self) -> &str {
        self.api_base.trim_end_matches('/')
    }

    pub(super) fn validate(&self) -> Result<(), String> {
        check_base(self.base())?;
        if self.timeout_secs == 0 || self.requests_per_sec == 0 {
            return Err("[stripe] timeout_secs and requests_per_sec must be above 0".into());
        }
        if self.max_network_retries > 10 {
            return Err(format!(
                "[stripe] max_network_retries = {} is more than 10",
                self.max_network_retries
            ));
        }
        for (key, value) in [
            ("reconcile_every", &self.reconcile_every),
            ("resync_every", &self.resync_every),
        ] {
            schedule(value).map_err(|e| format!("[stripe] {key} = {value:?}: {e}"))?;
        }
        Ok(())
    }
}

/// Whether an API key is for live mode (`sk_live_...`, `rk_live_...`), test mode, or unknown.
pub fn key_livemode(key: &str) -> Option<bool> {
    let mode = key.split('_').nth(1)?;
    match mode {
        "live" => Some(true),
        "test" => Some(false),
        _ => None,
    }
}

/// `off`, or a duration like `1h`.
fn schedule(value: &str) -> Result<Option<Duration>, String> {
    if value.trim() == "off" {
        return Ok(None);
    }
    match parse_duration_ms(value) {
        Some(ms) if ms > 0 => Ok(Some(Duration::from_millis(ms as u64))),
        _ => Err("expected \"off\" or a number and s, m, h, d or w, like 1h".into()),
    }
}

/// `https://host[:port]`, or `http://` to a loopback host: the key travels in every request.
fn check_base(base: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("[stripe] api_base = {base:?}: {why}"));
    let (scheme, rest) = match base.split_once("://") {
        Some(parts) => parts,
        None => return bad("expected https://host"),
    };
    let host_port = rest.split('/').next().unwrap_or("");
    if host_port.is_empty() || rest.contains(['?', '#', '@']) {
        return bad("expected https://host");
    }
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host_port.split(':').next().unwrap_or(""),
    };
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match scheme {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        "http" => bad("http:// only to a loopback address (the API key would cross the network in clear text)"),
        _ => bad("expected https://host"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bases_schedules_and_modes() {
        for (base, ok) in [
            ("https://api.stripe.com", true),
            ("https://api.stripe.com/", true),
            ("http://127.0.0.1:12111", true),
            ("http://localhost:12111", true),
            ("http://[::1]:12111", true),
            ("http://api.stripe.com", false),
            ("http://10.0.0.1", false),
            ("ftp://api.stripe.com", false),
            ("api.stripe.com", false),
            ("https://user@api.stripe.com", false),
        ] {
            let s = Stripe {
                api_base: base.into(),
                ..Stripe::default()
            };
            assert_eq!(s.validate().is_ok(), ok, "{base}: {:?}", s.validate());
        }
        let s = Stripe::default();
        assert_eq!(s.reconcile_every(), Some(Duration::from_secs(3600)));
        assert_eq!(s.resync_every(), None);
        let bad = Stripe {
            resync_every: "daily".into(),
            ..Stripe::default()
        };
        assert!(bad.validate().unwrap_err().contains("resync_every"));
        assert_eq!(key_livemode("rk_live_abc"), Some(true));
        assert_eq!(key_livemode("sk_test_abc"), Some(false));
        assert_eq!(key_livemode("whatever"), None);
    }
}
