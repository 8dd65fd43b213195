//! The TOML configuration: its shape, its defaults and its validation.
//!
//! `config.example.toml` shows every key at its default and a test parses it. Unknown keys are
//! errors naming the key and the file, because a misspelt key silently falling back to a default is
//! how a shop ends up rejecting its own webhooks. Secrets are read from the environment variable
//! the file names; they never need to be written into the file, and this module never logs them.

pub mod forward;
pub mod stripe;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};

/// Where the config is looked for when `--config` is not given and `$STRIPE_INBOX_CONFIG` is unset.
pub const DEFAULT_PATH: &str = "stripe-inbox.toml";
/// The environment variable that may name the config file.
pub const PATH_ENV: &str = "STRIPE_INBOX_CONFIG";
/// The webhook path when `[webhook] path` is not set.
pub const DEFAULT_WEBHOOK_PATH: &str = "/webhooks/stripe";
/// The shortest admin password allowed on a listener that is not loopback (after trimming).
pub const MIN_PUBLIC_PASSWORD: usize = 12;

/// The whole configuration, after loading and resolving relative paths.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The file this was loaded from (empty for [`Config::default`]).
    #[serde(skip)]
    pub file: PathBuf,
    pub database: Database,
    pub retention: Retention,
    pub webhook: Webhook,
    pub admin: Admin,
    pub api: Api,
    /// `[[forward]]` blocks: where events are forwarded ([`forward::Forward`]). Defaults to none.
    pub forward: Vec<forward::Forward>,
    pub stripe: stripe::Stripe,
}

/// `[api]`: the read API on the admin listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Api {
    /// Environment variable holding the API's bearer token; unset or empty turns the API off.
    /// Defaults to `STRIPE_INBOX_API_TOKEN`.
    pub token_env: String,
}

impl Default for Api {
    fn default() -> Api {
        Api {
            token_env: "STRIPE_INBOX_API_TOKEN".into(),
        }
    }
}

impl Api {
    /// The token, if the variable is set and not empty.
    pub fn token(&self) -> Option<String> {
        if self.token_env.is_empty() {
            return None;
        }
        std::env::var(&self.token_env)
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
    }
}

/// `[database]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Database {
    /// The SQLite file, relative to the config file's directory. Defaults to `stripe-inbox.db`.
    pub path: PathBuf,
    /// Requests that may wait for the writer before new ones get 503. Defaults to 4096.
    pub queue_capacity: usize,
    /// The most events committed in one transaction. Defaults to 512.
    pub max_batch: usize,
    /// Milliseconds between the passive WAL checkpoints run beside the writer; 0 turns them off
    /// (when Litestream replicates the file, it checkpoints). Defaults to 250.
    pub checkpoint_interval_ms: u64,
}

/// `[webhook]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Webhook {
    /// Address of the webhook listener. Defaults to `127.0.0.1:8080`.
    pub listen: String,
    /// The one path that takes events. Defaults to `/webhooks/stripe`.
    pub path: String,
    /// Endpoint signing secrets written in the file. Defaults to none.
    pub secrets: Vec<String>,
    /// Environment variable with more secrets, comma-separated. Defaults to `STRIPE_WEBHOOK_SECRET`.
    pub secrets_env: String,
    /// Allowed distance of the signature timestamp from now, both ways. Defaults to 300.
    pub tolerance_secs: u64,
    /// Larger bodies are refused with 413 unread. Defaults to 1 MiB.
    pub max_body_bytes: usize,
    /// Open connections at once; more get 503. Defaults to 512.
    pub max_connections: usize,
    /// Seconds an idle keep-alive connection stays open. Defaults to 15.
    pub idle_timeout_secs: u64,
    // Issue 13 (the listeners against a hostile client):
    /// Open connections counted under one client address (an IPv6 client by its /64); past it
    /// that address's longest-idle connection is closed, or the new one gets 503. Stripe sends
    /// from about 15 addresses. Defaults to 128.
    pub max_connections_per_addr: usize,
    /// Addresses or CIDR blocks of the proxies in front (`["127.0.0.1", "::1"]` for Caddy or
    /// nginx on the same machine): only from them is `X-Forwarded-For` believed, to find the
    /// client the per-address limit counts. Defaults to none.
    pub trusted_proxies: Vec<String>,
}

/// `[retention]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retention {
    /// Days after which an event's raw body is emptied (its row stays); 0 keeps bodies forever.
    /// `serve` applies it shortly after start and then daily. Defaults to 0.
    pub body_days: u32,
}

/// `[admin]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Admin {
    /// Address of the admin listener. Defaults to `127.0.0.1:8081`.
    pub listen: String,
    /// Environment variable holding the admin password; unset or empty means no password, which is
    /// only allowed on a loopback `listen`. Defaults to `STRIPE_INBOX_ADMIN_PASSWORD`.
    pub password_env: String,
    /// Mark the session cookie `Secure` (HTTPS only, behind a TLS proxy). Defaults to false.
    pub cookie_secure: bool,
    // Issue 13 (who may use the admin, the listener against a hostile client):
    /// Without a password, serve the pages to anyone who reaches the loopback listener, instead
    /// of only to whoever opens the one-time login link `serve` logs. Only on a loopback `listen`
    /// and without `trusted_proxies`. Defaults to false.
    pub open_on_loopback: bool,
    /// Open connections counted under one client address (of 64 in all). Defaults to 32.
    pub max_connections_per_addr: usize,
    /// Addresses or CIDR blocks of the proxies in front of the admin listener; only from them is
    /// `X-Forwarded-For` believed (the login limits then count by the real client). Defaults to
    /// none.
    pub trusted_proxies: Vec<String>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            file: PathBuf::new(),
            database: Database::default(),
            retention: Retention::default(),
            webhook: Webhook::default(),
            admin: Admin::default(),
            api: Api::default(),
            forward: Vec::new(),
            stripe: stripe::Stripe::default(),
        }
    }
}

impl Default for Database {
    fn default() -> Database {
        Database {
            path: PathBuf::from("stripe-inbox.db"),
            queue_capacity: 4096,
            max_batch: 512,
            checkpoint_interval_ms: 250,
        }
    }
}

impl Default for Webhook {
    fn default() -> Webhook {
        Webhook {
            listen: "127.0.0.1:8080".into(),
            path: DEFAULT_WEBHOOK_PATH.into(),
            secrets: Vec::new(),
            secrets_env: "STRIPE_WEBHOOK_SECRET".into(),
            tolerance_secs: 300,
            max_body_bytes: 1024 * 1024,
            max_connections: 512,
            idle_timeout_secs: 15,
            max_connections_per_addr: 128,
            trusted_proxies: Vec::new(),
        }
    }
}

impl Default for Admin {
    fn default() -> Admin {
        Admin {
            listen: "127.0.0.1:8081".into(),
            password_env: "STRIPE_INBOX_ADMIN_PASSWORD".into(),
            cookie_secure: false,
            open_on_loopback: false,
            max_connections_per_addr: 32,
            trusted_proxies: Vec::new(),
        }
    }
}

impl Config {
    /// Which file to load: `--config`, else `$STRIPE_INBOX_CONFIG`, else `./stripe-inbox.toml`.
    pub fn locate(flag: Option<PathBuf>) -> PathBuf {
        flag.or_else(|| {
            std::env::var_os(PATH_ENV)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PATH))
    }

    /// Reads, parses and validates a config file, and resolves the database path against it.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|err| Error::Config {
            path: path.to_path_buf(),
            msg: format!("cannot read: {err}"),
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates config text as if it came from `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Config> {
        let err = |msg: String| Error::Config {
            path: path.to_path_buf(),
            msg,
        };
        let mut config: Config = toml::from_str(text).map_err(|e| err(one_line(&e.to_string())))?;
        config.file = path.to_path_buf();
        if config.database.path.is_relative() {
            let dir = path.parent().unwrap_or(Path::new(""));
            config.database.path = dir.join(&config.database.path);
        }
        config.validate().map_err(err)?;
        Ok(config)
    }

    fn validate(&self) -> std::result::Result<(), String> {
        parse_addr("[webhook] listen", &self.webhook.listen)?;
        parse_addr("[admin] listen", &self.admin.listen)?;
        if !self.webhook.path.starts_with('/') {
            return Err(format!(
                "[webhook] path must start with '/', got {:?}",
                self.webhook.path
            ));
        }
        if self.webhook.max_body_bytes == 0 || self.webhook.max_connections == 0 {
            return Err("[webhook] max_body_bytes and max_connections must be above 0".into());
        }
        if self.database.queue_capacity == 0 || self.database.max_batch == 0 {
            return Err("[database] queue_capacity and max_batch must be above 0".into());
        }
        forward::validate(&self.forward)?;
        self.stripe.validate()?;
        self.validate_listeners()?;
        for (i, s) in self.webhook.secrets.iter().enumerate() {
            if s.trim() != s || s.is_empty() {
                return Err(format!(
                    "[webhook] secrets[{i}] is empty or has leading/trailing whitespace"
                ));
            }
        }
        Ok(())
    }

    /// Every webhook signing secret: those in the file, then those in `secrets_env`. The index of a
    /// secret in this list is what `events.secret_index` records. Fails when there is none.
    pub fn webhook_secrets(&self) -> Result<Vec<String>> {
        let mut all = self.webhook.secrets.clone();
        if !self.webhook.secrets_env.is_empty() {
            if let Ok(value) = std::env::var(&self.webhook.secrets_env) {
                all.extend(
                    value
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(String::from),
                );
            }
        }
        if all.is_empty() {
            let var = if self.webhook.secrets_env.is_empty() {
                String::new()
            } else {
                format!(" or the environment variable {}", self.webhook.secrets_env)
            };
            return Err(Error::Config {
                path: self.file.clone(),
                msg: format!("no webhook signing secret: set [webhook] secrets{var} to the endpoint's whsec_... secret"),
            });
        }
        for s in &all {
            if !s.starts_with("whsec_") {
                log::warn!(
                    "a webhook secret does not start with whsec_; Stripe's endpoint secrets do"
                );
            }
        }
        Ok(all)
    }

    /// Issue 13: the per-address limits, the trusted proxies and `open_on_loopback`.
    fn validate_listeners(&self) -> std::result::Result<(), String> {
        for (table, per_addr, proxies) in [
            (
                "webhook",
                self.webhook.max_connections_per_addr,
                &self.webhook.trusted_proxies,
            ),
            (
                "admin",
                self.admin.max_connections_per_addr,
                &self.admin.trusted_proxies,
            ),
        ] {
            if per_addr == 0 {
                return Err(format!(
                    "[{table}] max_connections_per_addr must be above 0"
                ));
            }
            crate::http::parse_trusted(proxies)
                .map_err(|e| format!("[{table}] trusted_proxies: {e}"))?;
        }
        if self.admin.open_on_loopback {
            let loopback = parse_addr("", &self.admin.listen).is_ok_and(|a| a.ip().is_loopback());
            if !loopback {
                return Err(format!(
                    "[admin] open_on_loopback = true needs a loopback listen address, not {:?}",
                    self.admin.listen
                ));
            }
            if !self.admin.trusted_proxies.is_empty() {
                return Err("[admin] open_on_loopback = true cannot be used with trusted_proxies: a proxy in front would publish the open pages; set a password instead".into());
            }
        }
        Ok(())
    }

    /// The trusted proxies of `[webhook]` and `[admin]`, parsed (validation already did).
    pub fn trusted_proxies(&self) -> (Vec<crate::http::Cidr>, Vec<crate::http::Cidr>) {
        // validate() parsed both lists, so these cannot fail for a loaded config.
        let parse = |list: &[String]| crate::http::parse_trusted(list).unwrap_or_default();
        (
            parse(&self.webhook.trusted_proxies),
            parse(&self.admin.trusted_proxies),
        )
    }

    /// The admin password from the variable `[admin] password_env` names, if set and not blank.
    /// Fails when there is none and the admin listener is not on a loopback address (the pages
    /// would be open to the network), and when there it is shorter than
    /// [`MIN_PUBLIC_PASSWORD`] characters (after trimming).
    pub fn admin_password(&self) -> Result<Option<String>> {
        let password = Some(self.admin.password_env.as_str())
            .filter(|name| !name.is_empty())
            .and_then(|name| std::env::var(name).ok())
            .filter(|p| !p.trim().is_empty());
        let loopback = parse_addr("", &self.admin.listen).is_ok_and(|a| a.ip().is_loopback());
        let short = password
            .as_ref()
            .is_some_and(|p| p.trim().chars().count() < MIN_PUBLIC_PASSWORD);
        if short && !loopback {
            return Err(Error::Config {
                path: self.file.clone(),
                msg: format!(
                    "[admin] listen = {:?} is not a loopback address, so the admin password (from {}) must be at least {MIN_PUBLIC_PASSWORD} characters",
                    self.admin.listen, self.admin.password_env
                ),
            });
        }
        if password.is_none() && !loopback {
            return Err(Error::Config {
                path: self.file.clone(),
                msg: format!(
                    "[admin] listen = {:?} is not a loopback address and there is no admin password: set the environment variable {} (named by [admin] password_env), or listen on 127.0.0.1",
                    self.admin.listen,
                    if self.admin.password_env.is_empty() { "STRIPE_INBOX_ADMIN_PASSWORD" } else { &self.admin.password_env }
                ),
            });
        }
        Ok(password)
    }

    /// The webhook listener's address.
    pub fn webhook_addr(&self) -> SocketAddr {
        // validate() already parsed it, so this cannot fail for a loaded config.
        parse_addr("", &self.webhook.listen)
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 8080)))
    }

    /// The idle keep-alive timeout.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.webhook.idle_timeout_secs.max(1))
    }
}

fn parse_addr(key: &str, value: &str) -> std::result::Result<SocketAddr, String> {
    value
        .parse()
        .map_err(|_| format!("{key} = {value:?} is not an address like 127.0.0.1:8080"))
}

/// toml's errors span several lines with a source excerpt; keep the log and terminal to one line
/// that still names the key and line.
fn one_line(msg: &str) -> String {
    msg.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('|'))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_file_parses_to_the_defaults() {
        let text = include_str!("../../config.example.toml");
        let config = Config::parse(text, Path::new("/etc/stripe-inbox/config.toml")).unwrap();
        assert_eq!(
            config.database.path,
            Path::new("/etc/stripe-inbox/stripe-inbox.db")
        );
        assert_eq!(config.webhook.listen, "127.0.0.1:8080");
        assert_eq!(config.webhook.path, "/webhooks/stripe");
        assert_eq!(config.webhook.secrets_env, "STRIPE_WEBHOOK_SECRET");
        assert_eq!(config.webhook.tolerance_secs, 300);
        assert_eq!(config.webhook.max_body_bytes, 1_048_576);
        assert_eq!(config.admin.listen, "127.0.0.1:8081");
        assert_eq!(config.admin.password_env, "STRIPE_INBOX_ADMIN_PASSWORD");
        assert!(!config.admin.cookie_secure);
        assert!(!config.admin.open_on_loopback);
        assert_eq!(config.admin.max_connections_per_addr, 32);
        assert!(config.admin.trusted_proxies.is_empty());
        assert_eq!(config.webhook.max_connections_per_addr, 128);
        assert!(config.webhook.trusted_proxies.is_empty());
        assert_eq!(config.database.checkpoint_interval_ms, 250);
        assert_eq!(config.retention.body_days, 0);
        assert!(
            config.forward.is_empty(),
            "no forwarding unless a block is uncommented"
        );
        assert_eq!(config.stripe, stripe::Stripe::default());
    }

    #[test]
    fn every_example_key_uncommented_still_parses() {
        // The example shows keys commented out at their defaults; uncommenting them all must give a
        // valid file with the same values, which proves each shown key exists and is spelt right.
        let text: String = include_str!("../../config.example.toml")
            .lines()
            .map(|l| {
                if l.starts_with("# ") && (l.contains(" = ") || l.starts_with("# [[")) {
                    &l[2..]
                } else {
                    l
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        let config = Config::parse(&text, Path::new("c.toml")).unwrap();
        let default = Config::default();
        assert_eq!(
            config.webhook.max_connections,
            default.webhook.max_connections
        );
        assert_eq!(config.database.max_batch, default.database.max_batch);
        assert_eq!(
            config.database.checkpoint_interval_ms,
            default.database.checkpoint_interval_ms
        );
        assert_eq!(config.retention.body_days, default.retention.body_days);
        assert_eq!(config.database.path, Path::new("stripe-inbox.db"));
        // The [[forward]] block: every key it shows but the three it must fill in is at its default.
        let shown = &config.forward[0];
        assert_eq!(
            *shown,
            forward::Forward {
                name: "app".into(),
                url: "http://127.0.0.1:3000/stripe/webhook".into(),
                secret_env: "APP_WEBHOOK_SECRET".into(),
                ..forward::Forward::default()
            }
        );
        assert_eq!(config.stripe, default.stripe);
    }

    #[test]
    fn unknown_key_names_key_and_file() {
        let err =
            Config::parse("[webhook]\nsecret = \"x\"\n", Path::new("/x/inbox.toml")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("/x/inbox.toml"), "{msg}");
        assert!(msg.contains("secret"), "{msg}");
        let err = Config::parse("[databse]\n", Path::new("a.toml")).unwrap_err();
        assert!(err.to_string().contains("databse"), "{err}");
    }

    #[test]
    fn bad_values_are_refused() {
        for (text, needle) in [
            ("[webhook]\nlisten = \"localhost\"\n", "[webhook] listen"),
            ("[webhook]\npath = \"hooks\"\n", "must start with '/'"),
            ("[webhook]\nsecrets = [\"whsec_a \"]\n", "whitespace"),
            ("[webhook]\ntolerance_secs = -1\n", "tolerance_secs"),
            ("[database]\nmax_batch = 0\n", "max_batch"),
        ] {
            let err = Config::parse(text, Path::new("c.toml"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{text:?} gave {err}");
        }
    }

    #[test]
    fn secrets_merge_file_and_env() {
        let var = "STRIPE_INBOX_TEST_SECRETS_MERGE";
        let text = format!("[webhook]\nsecrets = [\"whsec_file\"]\nsecrets_env = \"{var}\"\n");
        let config = Config::parse(&text, Path::new("c.toml")).unwrap();
        std::env::set_var(var, " whsec_a , whsec_b,,");
        assert_eq!(
            config.webhook_secrets().unwrap(),
            ["whsec_file", "whsec_a", "whsec_b"]
        );
        std::env::remove_var(var);
        assert_eq!(config.webhook_secrets().unwrap(), ["whsec_file"]);
    }

    #[test]
    fn admin_without_password_only_on_loopback() {
        let var = "STRIPE_INBOX_TEST_ADMIN_PW_UNSET";
        for (listen, ok) in [
            ("127.0.0.1:8081", true),
            ("[::1]:8081", true),
            ("0.0.0.0:8081", false),
            ("192.168.1.5:8081", false),
        ] {
            let text = format!("[admin]\nlisten = \"{listen}\"\npassword_env = \"{var}\"\n");
            let config = Config::parse(&text, Path::new("c.toml")).unwrap();
            match config.admin_password() {
                Ok(None) => assert!(ok, "{listen} allowed without a password"),
                Ok(Some(_)) => panic!("no password was set"),
                Err(e) => {
                    assert!(!ok, "{listen}: {e}");
                    assert!(e.to_string().contains(var), "{e}");
                }
            }
        }
        let var = "STRIPE_INBOX_TEST_ADMIN_PW_SET";
        std::env::set_var(var, "s3cret long enough");
        let text = format!("[admin]\nlisten = \"0.0.0.0:8081\"\npassword_env = \"{var}\"\n");
        let config = Config::parse(&text, Path::new("c.toml")).unwrap();
        assert_eq!(
            config.admin_password().unwrap().as_deref(),
            Some("s3cret long enough")
        );
        std::env::remove_var(var);
    }

    /// Issue 13, case 6: a password of one space was accepted on a public address.
    #[test]
    fn public_admin_needs_a_password_of_twelve_characters() {
        let var = "STRIPE_INBOX_TEST_ADMIN_PW_SHORT";
        for (password, public_ok, loopback) in [
            (" ", false, None),
            ("            ", false, None),
            ("short pass", false, Some("short pass")),
            ("  eleven char  ", false, Some("  eleven char  ")),
            ("twelve chars", true, Some("twelve chars")),
            ("zwölf zeichn", true, Some("zwölf zeichn")),
        ] {
            std::env::set_var(var, password);
            for (listen, want) in [("0.0.0.0:8081", public_ok), ("127.0.0.1:8081", true)] {
                let text = format!("[admin]\nlisten = \"{listen}\"\npassword_env = \"{var}\"\n");
                let config = Config::parse(&text, Path::new("c.toml")).unwrap();
                let got = config.admin_password();
                assert_eq!(got.is_ok(), want, "{password:?} on {listen}: {got:?}");
                if listen.starts_with("127") {
                    assert_eq!(got.unwrap().as_deref(), loopback, "{password:?}");
                }
            }
        }
        std::env::remove_var(var);
    }

    #[test]
    fn listener_keys_are_checked() {
        let ok = "[webhook]\ntrusted_proxies = [\"127.0.0.1\", \"10.0.0.0/8\", \"::1\"]\n\
                  [admin]\ntrusted_proxies = [\"fd00::/8\"]\nmax_connections_per_addr = 4\n";
        let config = Config::parse(ok, Path::new("c.toml")).unwrap();
        let (webhook, admin) = config.trusted_proxies();
        assert_eq!((webhook.len(), admin.len()), (3, 1));
        assert_eq!(config.admin.max_connections_per_addr, 4);
        for (text, needle) in [
            (
                "[webhook]\ntrusted_proxies = [\"nginx\"]\n",
                "[webhook] trusted_proxies",
            ),
            (
                "[admin]\ntrusted_proxies = [\"10.0.0.0/40\"]\n",
                "[admin] trusted_proxies",
            ),
            (
                "[webhook]\nmax_connections_per_addr = 0\n",
                "max_connections_per_addr",
            ),
            (
                "[admin]\nlisten = \"0.0.0.0:8081\"\nopen_on_loopback = true\n",
                "needs a loopback listen",
            ),
            (
                "[admin]\nopen_on_loopback = true\ntrusted_proxies = [\"127.0.0.1\"]\n",
                "cannot be used with trusted_proxies",
            ),
        ] {
            let err = Config::parse(text, Path::new("c.toml"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{text:?} gave {err}");
        }
    }

    #[test]
    fn missing_secret_is_a_clear_error() {
        let text = "[webhook]\nsecrets_env = \"STRIPE_INBOX_TEST_UNSET_VAR\"\n";
        let config = Config::parse(text, Path::new("c.toml")).unwrap();
        let msg = config.webhook_secrets().unwrap_err().to_string();
        assert!(msg.contains("no webhook signing secret"), "{msg}");
        assert!(msg.contains("STRIPE_INBOX_TEST_UNSET_VAR"), "{msg}");
    }
}
