//! `[[forward]]`: the destinations events are forwarded to (the shop's app), one block each.
//!
//! Exactly the keys of issue 9, unknown keys are errors (as everywhere), names are unique. A
//! destination's signing secret is read from the environment variable `secret_env` names, or
//! written in the file as `secret` (one of the two, never both); it is read when `serve` starts,
//! never logged, and never stored in the database. A leaf beside `config`: it may use only
//! `error` and `time`.

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::time;

/// `[[forward]]`: one destination.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Forward {
    /// Unique name, shown on the admin page and stored in `deliveries.destination`: letters,
    /// digits, `-`, `_` and `.`. Required.
    pub name: String,
    /// Where events are POSTed (`http://` or `https://`). Required.
    pub url: String,
    /// Environment variable holding the `whsec_...` secret the app verifies with. Defaults to
    /// none (then `secret` must be set).
    pub secret_env: String,
    /// The secret written in the file, instead of `secret_env`. Defaults to none.
    pub secret: Option<String>,
    /// Event type patterns (`*` matches any run of characters: `payment_intent.*`,
    /// `customer.subscription.*`, `invoice.paid`). Defaults to `["*"]`.
    pub events: Vec<String>,
    /// How long each event is held after it arrived before it may be sent, so that events that
    /// arrive close together leave in order. Defaults to 2000.
    pub settle_ms: u64,
    /// Time limit of one attempt, from connecting to reading the whole answer. Defaults to 10.
    pub timeout_secs: u64,
    /// The first retry's delay; the ceiling doubles with every attempt (full jitter above this
    /// floor), capped by `max_backoff_secs`. Defaults to 1000.
    pub min_backoff_ms: u64,
    /// The longest wait between two attempts, also for a `Retry-After` the app sends. Defaults
    /// to 3600.
    pub max_backoff_secs: u64,
    /// How long a delivery is retried (from the event's arrival, or from a redeliver) before it is
    /// dead-lettered, like Stripe's 3 days: a number and `s`, `m`, `h`, `d` or `w`. Defaults to
    /// `3d`.
    pub retry_for: String,
    /// Deliveries to this destination in flight at once (at most one per object, always).
    /// Defaults to 8.
    pub max_in_flight: usize,
    /// `forward` sends events the mirror judged stale too; `skip` does not (they get no delivery).
    /// Defaults to `forward`.
    pub stale: Stale,
}

/// What `[[forward]] stale` says to do with an event the mirror judged `stale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stale {
    /// Send it like any other (the app decides).
    Forward,
    /// Do not send it: no delivery is made for it.
    Skip,
}

impl Default for Forward {
    fn default() -> Forward {
        Forward {
            name: String::new(),
            url: String::new(),
            secret_env: String::new(),
            secret: None,
            events: vec!["*".into()],
            settle_ms: 2000,
            timeout_secs: 10,
            min_backoff_ms: 1000,
            max_backoff_secs: 3600,
            retry_for: "3d".into(),
            max_in_flight: 8,
            stale: Stale::Forward,
        }
    }
}

impl Forward {
    /// `retry_for` in milliseconds (validated when the config was parsed).
    pub fn retry_for_ms(&self) -> i64 {
        time::parse_duration_ms(&self.retry_for).unwrap_or(3 * 86_400_000)
    }

    /// The signing secret: `secret`, or the value of the variable `secret_env` names. Fails when
    /// neither gives one (`file` is the config file, for the message).
    pub fn signing_secret(&self, file: &Path) -> Result<String> {
        let err = |msg: String| Error::Config {
            path: file.to_path_buf(),
            msg,
        };
        let secret = match &self.secret {
            Some(s) => s.clone(),
            None => std::env::var(&self.secret_env)
                .map(|v| v.trim().to_string())
                .unwrap_or_default(),
        };
        if secret.is_empty() {
            return Err(err(format!(
                "[[forward]] {:?}: no signing secret: set the environment variable {} to the whsec_... secret the app verifies with",
                self.name, self.secret_env
            )));
        }
        if !secret.starts_with("whsec_") {
            log::warn!(
                "forward destination={}: the signing secret does not start with whsec_; the app's Stripe library accepts any string, but Stripe's own secrets do",
                self.name
            );
        }
        Ok(secret)
    }
}

/// Checks every `[[forward]]` block: what `Config::parse` reports as a config error.
pub fn validate(list: &[Forward]) -> std::result::Result<(), String> {
    for (i, f) in list.iter().enumerate() {
        let at = if f.name.is_empty() {
            format!("[[forward]] #{}", i + 1)
        } else {
            format!("[[forward]] {:?}", f.name)
        };
        if f.name.is_empty() {
            return Err(format!("{at}: name is required"));
        }
        if !f
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            || f.name.len() > 64
        {
            return Err(format!(
                "{at}: name may hold only letters, digits, '-', '_' and '.' (at most 64)"
            ));
        }
        if list[..i].iter().any(|other| other.name == f.name) {
            return Err(format!(
                "{at}: the name is used twice; names must be unique"
            ));
        }
        let scheme_ok = ["http://", "https://"].iter().any(|s| {
            f.url
                .get(..s.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(s))
                && f.url.len() > s.len()
        });
        if !scheme_ok || f.url.contains(char::is_whitespace) {
            return Err(format!(
                "{at}: url = {:?} is not an http:// or https:// URL",
                f.url
            ));
        }
        match (&f.secret, f.secret_env.is_empty()) {
            (Some(_), false) => {
                return Err(format!(
                    "{at}: set secret_env or secret, not both"
                ))
            }
            (None, true) => {
                return Err(format!(
                    "{at}: secret_env (the environment variable holding the app's whsec_... secret) or secret is required"
                ))
            }
            (Some(s), true) if s.trim() != s || s.is_empty() => {
                return Err(format!(
                    "{at}: secret is empty or has leading/trailing whitespace"
                ))
            }
            _ => {}
        }
        if f.events.is_empty() || f.events.iter().any(|p| p.trim().is_empty()) {
            return Err(format!(
                "{at}: events must list at least one pattern, none empty (\"*\" for every event)"
            ));
        }
        if f.timeout_secs == 0 || f.max_in_flight == 0 || f.min_backoff_ms == 0 {
            return Err(format!(
                "{at}: timeout_secs, max_in_flight and min_backoff_ms must be above 0"
            ));
        }
        if f.max_backoff_secs == 0 {
            return Err(format!("{at}: max_backoff_secs must be above 0"));
        }
        if time::parse_duration_ms(&f.retry_for).is_none_or(|ms| ms <= 0) {
            return Err(format!(
                "{at}: retry_for = {:?}: expected a number and s, m, h, d or w, like 3d",
                f.retry_for
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    fn parse(blocks: &str) -> std::result::Result<Config, String> {
        Config::parse(blocks, Path::new("f.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn a_block_with_the_required_keys_gets_every_default() {
        let config = parse(
            "[[forward]]\nname = \"app\"\nurl = \"http://127.0.0.1:3000/hook\"\nsecret_env = \"APP_SECRET\"\n",
        )
        .unwrap();
        let f = &config.forward[0];
        assert_eq!(
            *f,
            Forward {
                name: "app".into(),
                url: "http://127.0.0.1:3000/hook".into(),
                secret_env: "APP_SECRET".into(),
                ..Forward::default()
            }
        );
        assert_eq!(f.retry_for_ms(), 3 * 86_400_000);
        assert_eq!(f.stale, Stale::Forward);
    }

    #[test]
    fn several_blocks_and_every_key() {
        let config = parse(
            "[[forward]]\nname = \"app\"\nurl = \"https://shop.example/hook\"\nsecret = \"whsec_x\"\n\
             events = [\"payment_intent.*\", \"invoice.paid\"]\nsettle_ms = 0\ntimeout_secs = 3\n\
             min_backoff_ms = 50\nmax_backoff_secs = 2\nretry_for = \"1h\"\nmax_in_flight = 2\nstale = \"skip\"\n\
             [[forward]]\nname = \"crm\"\nurl = \"http://10.0.0.2/x\"\nsecret_env = \"CRM\"\n",
        )
        .unwrap();
        assert_eq!(config.forward.len(), 2);
        let f = &config.forward[0];
        assert_eq!(f.events, ["payment_intent.*", "invoice.paid"]);
        assert_eq!((f.settle_ms, f.timeout_secs, f.min_backoff_ms), (0, 3, 50));
        assert_eq!((f.max_backoff_secs, f.max_in_flight), (2, 2));
        assert_eq!(f.retry_for_ms(), 3_600_000);
        assert_eq!(f.stale, Stale::Skip);
        assert_eq!(f.signing_secret(Path::new("f.toml")).unwrap(), "whsec_x");
        assert_eq!(config.forward[1].name, "crm");
    }

    #[test]
    fn mistakes_are_refused_with_the_block_named() {
        let ok = "url = \"http://127.0.0.1:1/x\"\nsecret_env = \"S\"\n";
        for (text, needle) in [
            (format!("[[forward]]\n{ok}"), "name is required"),
            (
                format!("[[forward]]\nname = \"a b\"\n{ok}"),
                "letters, digits",
            ),
            (
                format!("[[forward]]\nname = \"app\"\n{ok}[[forward]]\nname = \"app\"\n{ok}"),
                "used twice",
            ),
            (
                "[[forward]]\nname = \"app\"\nurl = \"ftp://x\"\nsecret_env = \"S\"\n".into(),
                "not an http",
            ),
            (
                "[[forward]]\nname = \"app\"\nurl = \"http://x/\"\n".into(),
                "secret_env",
            ),
            (
                format!("[[forward]]\nname = \"app\"\n{ok}secret = \"whsec_a\"\n"),
                "not both",
            ),
            (
                format!("[[forward]]\nname = \"app\"\n{ok}events = []\n"),
                "at least one pattern",
            ),
            (
                format!("[[forward]]\nname = \"app\"\n{ok}retry_for = \"3 days\"\n"),
                "retry_for",
            ),
            (
                format!("[[forward]]\nname = \"app\"\n{ok}max_in_flight = 0\n"),
                "above 0",
            ),
            (
                format!("[[forward]]\nname = \"app\"\n{ok}stale = \"drop\"\n"),
                "stale",
            ),
            (
                format!("[[forward]]\nname = \"app\"\n{ok}secrets_env = \"S\"\n"),
                "secrets_env",
            ),
        ] {
            let err = parse(&text).unwrap_err();
            assert!(err.contains(needle), "{text:?} gave {err}");
        }
    }

    #[test]
    fn the_secret_comes_from_the_variable_at_start() {
        let var = "STRIPE_INBOX_TEST_FORWARD_SECRET";
        let f = Forward {
            name: "app".into(),
            url: "http://x/".into(),
            secret_env: var.into(),
            ..Forward::default()
        };
        std::env::remove_var(var);
        let err = f
            .signing_secret(Path::new("f.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(var) && err.contains("app"), "{err}");
        std::env::set_var(var, " whsec_from_env ");
        assert_eq!(
            f.signing_secret(Path::new("f.toml")).unwrap(),
            "whsec_from_env"
        );
        std::env::remove_var(var);
    }
}
