//! The one client of Stripe's API: every request the inbox makes goes through [`Client::send`].
//!
//! What every request carries: `Authorization: Bearer <key>`, the pinned [`STRIPE_VERSION`], a
//! `User-Agent` naming stripe-inbox, `Stripe-Account` for an object of a connected account, and on
//! POST (and only on POST: GET is idempotent by definition, so a key there means nothing) an
//! `Idempotency-Key`: one per logical request, chosen before the first attempt and sent unchanged
//! with every retry, so that a request whose answer was lost cannot be executed twice. A caller
//! that must survive its own crash (`connect`) chooses the key itself and stores it first.
//!
//! Requests go only to `api_base` + a path this crate builds (`/v1/...`, ids percent-encoded):
//! redirects are not followed, no proxy from the environment is used, and no URL from an answer
//! is ever requested. The timeout is `[stripe] timeout_secs` for the whole request. Retries follow
//! [`super::retry`]; every attempt first waits for a slot of the shared [`Limiter`], and a
//! rate-limited answer slows that limiter down for everyone.
//!
//! A failure is [`Error::Stripe`] with what Stripe said (status, type, code, message, request id);
//! the key is never part of an error, a log line or `Debug` output (a message that echoes it has
//! it masked). The last failures are also written to `stripe_errors` for the dashboard when the
//! client has a writer ([`Client::with_error_log`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::limiter::{Limiter, LimiterStats};
use super::retry::{backoff, rate_limited, verdict, Attempt, Verdict, RATE_LIMITED_RETRIES};
use crate::config::stripe::{key_livemode, Stripe};
use crate::crypto;
use crate::error::{Error, Result, StripeError};
use crate::store::writer::WriterHandle;
use crate::time::now_ms;

/// The API version every request asks for, and the version `connect` gives the webhook endpoint,
/// so that fetched objects and webhook payloads are rendered alike.
pub const STRIPE_VERSION: &str = "2025-09-30.clover";

/// Sent as `User-Agent`.
pub const USER_AGENT: &str = concat!("stripe-inbox/", env!("CARGO_PKG_VERSION"));

/// The largest answer read (a list page of 100 objects is well under this).
const MAX_ANSWER_BYTES: u64 = 64 * 1024 * 1024;

/// How many failures `stripe_errors` keeps.
const ERRORS_KEPT: i64 = 100;

/// GET or POST: the only methods the inbox uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
}

impl Method {
    fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
        }
    }
}

/// One logical request.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: Method,
    /// `/v1/...`, built by this crate (see [`path`]).
    pub path: String,
    /// The query of a GET, the form of a POST.
    pub params: Vec<(String, String)>,
    /// A connected account to act on (`Stripe-Account`).
    pub account: Option<String>,
    /// The key of a POST; `None` makes one for this call. Ignored on GET.
    pub idempotency_key: Option<String>,
}

impl Call {
    pub fn get(path: impl Into<String>) -> Call {
        Call {
            method: Method::Get,
            path: path.into(),
            params: Vec::new(),
            account: None,
            idempotency_key: None,
        }
    }

    pub fn post(path: impl Into<String>, form: Vec<(String, String)>) -> Call {
        Call {
            params: form,
            method: Method::Post,
            ..Call::get(path)
        }
    }

    pub fn param(mut self, name: &str, value: impl Into<String>) -> Call {
        self.params.push((name.to_owned(), value.into()));
        self
    }
}

/// A 2xx answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: String,
    pub request_id: Option<String>,
    /// `Idempotent-Replayed: true`: Stripe's saved answer to an earlier attempt with this key.
    pub replayed: bool,
    /// Unix ms when the first attempt was sent: the state in the answer is at least that new.
    pub began_ms: i64,
    pub attempts: u32,
}

/// One page of a list endpoint.
#[derive(Debug)]
pub struct Page {
    /// Each object's exact JSON text.
    pub data: Vec<Box<RawValue>>,
    pub has_more: bool,
    pub began_ms: i64,
}

/// Counts since the client was made.
#[derive(Debug, Default)]
pub struct Counts {
    /// Attempts sent.
    pub requests: AtomicU64,
    /// Attempts that were retries.
    pub retries: AtomicU64,
    /// Rate-limited answers.
    pub rate_limited: AtomicU64,
}

/// How the client is set up (from `[stripe]`).
#[derive(Clone)]
pub struct Settings {
    pub api_base: String,
    pub api_key: String,
    pub timeout: Duration,
    pub max_network_retries: u32,
    pub requests_per_sec: u32,
    pub backoff_unit: Duration,
}

impl Settings {
    /// The settings of `[stripe]` with `key`.
    pub fn from_config(stripe: &Stripe, key: String) -> Settings {
        Settings {
            api_base: stripe.base().to_owned(),
            api_key: key,
            timeout: stripe.timeout(),
            max_network_retries: stripe.max_network_retries,
            requests_per_sec: stripe.requests_per_sec,
            backoff_unit: stripe.backoff_unit,
        }
    }
}

/// The client; cheap to clone, and every clone shares the limiter and the counts.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    agent: ureq::Agent,
    base: String,
    key: String,
    max_retries: u32,
    unit: Duration,
    limiter: Limiter,
    counts: Counts,
    errors: Option<WriterHandle>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.inner.base)
            .field("key", &"[redacted]")
            .finish()
    }
}

impl Client {
    pub fn new(settings: Settings) -> Client {
        Client::build(settings, None)
    }

    /// A client that also records its failures in `stripe_errors`, through `writer`.
    pub fn with_error_log(settings: Settings, writer: WriterHandle) -> Client {
        Client::build(settings, Some(writer))
    }

    fn build(s: Settings, errors: Option<WriterHandle>) -> Client {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(s.timeout))
            // Only api_base: a redirect is answered as such, and no proxy is taken from the
            // environment.
            .max_redirects(0)
            .proxy(None)
            .user_agent(USER_AGENT)
            .build()
            .into();
        Client {
            inner: Arc::new(Inner {
                agent,
                base: s.api_base.trim_end_matches('/').to_owned(),
                key: s.api_key,
                max_retries: s.max_network_retries,
                unit: s.backoff_unit,
                limiter: Limiter::new(s.requests_per_sec, s.backoff_unit),
                counts: Counts::default(),
                errors,
            }),
        }
    }

    /// Test or live mode, from the key's prefix (`None` when it does not say).
    pub fn livemode(&self) -> Option<bool> {
        key_livemode(&self.inner.key)
    }

    pub fn counts(&self) -> &Counts {
        &self.inner.counts
    }

    pub fn limiter(&self) -> LimiterStats {
        self.inner.limiter.stats()
    }

    /// A GET of `path`.
    pub fn get(&self, path: &str, account: Option<&str>) -> Result<Answer> {
        let mut call = Call::get(path);
        call.account = account.map(str::to_owned);
        self.send(&call)
    }

    /// One page of the list at `path` (`limit=100`, after `starting_after`).
    pub fn list(&self, call: &Call, starting_after: Option<&str>) -> Result<Page> {
        let mut call = call.clone().param("limit", "100");
        if let Some(after) = starting_after {
            call = call.param("starting_after", after);
        }
        let answer = self.send(&call)?;
        #[derive(Deserialize)]
        struct List {
            data: Vec<Box<RawValue>>,
            has_more: bool,
        }
        let list: List = serde_json::from_str(&answer.body).map_err(|e| Error::Json {
            what: format!("read the list answer of GET {}", call.path),
            err: e,
        })?;
        Ok(Page {
            data: list.data,
            has_more: list.has_more,
            began_ms: answer.began_ms,
        })
    }

    /// Sends one logical request, retrying as [`super::retry`] says; a 2xx answer, or the error.
    pub fn send(&self, call: &Call) -> Result<Answer> {
        let inner = &self.inner;
        let request = format!("{} {}", call.method.as_str(), call.path);
        if !call.path.starts_with("/v1/") {
            return Err(self.fail(StripeError {
                request,
                status: None,
                error_type: None,
                code: None,
                message: "not an API path".into(),
                request_id: None,
                attempts: 0,
            }));
        }
        // One key for the logical request, the same for every attempt; never on a GET.
        let key = match call.method {
            Method::Post => Some(match &call.idempotency_key {
                Some(k) => k.clone(),
                None => new_idempotency_key()?,
            }),
            Method::Get => None,
        };
        let url = format!("{}{}", inner.base, call.path);
        let (mut network, mut limited, mut attempts) = (0u32, 0u32, 0u32);
        let mut began_ms = None;
        loop {
            inner.limiter.wait();
            began_ms.get_or_insert_with(now_ms);
            attempts += 1;
            inner.counts.requests.fetch_add(1, Ordering::Relaxed);
            if attempts > 1 {
                inner.counts.retries.fetch_add(1, Ordering::Relaxed);
            }
            let outcome = self.attempt(&url, call, key.as_deref());
            let seen = match &outcome {
                Outcome::Answered(a) => Attempt::Answer {
                    status: a.status,
                    should_retry: a.should_retry,
                    replayed: a.replayed,
                    code: a.error.as_ref().and_then(|e| e.code.as_deref()),
                },
                Outcome::NoAnswer { retryable, .. } => Attempt::NoAnswer {
                    retryable: *retryable,
                },
            };
            if rate_limited(&seen) {
                inner.counts.rate_limited.fetch_add(1, Ordering::Relaxed);
                inner.limiter.slow_down();
            }
            let verdict = verdict(&seen);
            let outcome = match outcome {
                Outcome::Answered(a) if verdict == Verdict::Done => {
                    inner.limiter.succeeded();
                    return Ok(Answer {
                        status: a.status,
                        body: a.body,
                        request_id: a.request_id,
                        replayed: a.replayed,
                        began_ms: began_ms.unwrap_or_else(now_ms),
                        attempts,
                    });
                }
                other => other,
            };
            let wait = match verdict {
                Verdict::Retry if network < inner.max_retries => {
                    network += 1;
                    Some(backoff(network - 1, jitter(), inner.unit))
                }
                Verdict::RetryRateLimited if limited < RATE_LIMITED_RETRIES => {
                    limited += 1;
                    Some(backoff(limited - 1, jitter(), inner.unit))
                }
                _ => None,
            };
            match wait {
                Some(wait) => {
                    log::info!(
                        "stripe: retrying {request} in {} ms ({})",
                        wait.as_millis(),
                        outcome.describe()
                    );
                    std::thread::sleep(wait);
                }
                None => return Err(self.fail(outcome.into_error(request, attempts, &inner.key))),
            }
        }
    }

    /// One attempt.
    fn attempt(&self, url: &str, call: &Call, key: Option<&str>) -> Outcome {
        let inner = &self.inner;
        let auth = format!("Bearer {}", inner.key);
        let result = match call.method {
            Method::Get => {
                let mut req = inner
                    .agent
                    .get(url)
                    .header("Authorization", &auth)
                    .header("Stripe-Version", STRIPE_VERSION)
                    .header("Accept", "application/json");
                if let Some(account) = &call.account {
                    req = req.header("Stripe-Account", account);
                }
                for (k, v) in &call.params {
                    req = req.query(k, v);
                }
                req.call()
            }
            Method::Post => {
                let mut req = inner
                    .agent
                    .post(url)
                    .header("Authorization", &auth)
                    .header("Stripe-Version", STRIPE_VERSION)
                    .header("Accept", "application/json");
                if let Some(account) = &call.account {
                    req = req.header("Stripe-Account", account);
                }
                if let Some(key) = key {
                    req = req.header("Idempotency-Key", key);
                }
                req.send_form(call.params.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            }
        };
        let mut response = match result {
            Ok(r) => r,
            Err(e) => {
                let retryable = matches!(
                    e,
                    ureq::Error::Io(_)
                        | ureq::Error::Timeout(_)
                        | ureq::Error::ConnectionFailed
                        | ureq::Error::HostNotFound
                        | ureq::Error::Protocol(_)
                );
                return Outcome::NoAnswer {
                    retryable,
                    msg: e.to_string(),
                };
            }
        };
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let status = response.status().as_u16();
        let should_retry = header("stripe-should-retry").and_then(|v| match v.as_str() {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        });
        let replayed = header("idempotent-replayed").is_some_and(|v| v == "true");
        let request_id = header("request-id");
        // A body that breaks off is no answer: the request may or may not have been executed.
        let body = match response
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER_BYTES)
            .read_to_string()
        {
            Ok(body) => body,
            Err(e) => {
                return Outcome::NoAnswer {
                    retryable: true,
                    msg: format!("read the answer: {e}"),
                }
            }
        };
        let error = (!(200..300).contains(&status)).then(|| ErrorBody::parse(&body));
        Outcome::Answered(Answered {
            status,
            should_retry,
            replayed,
            request_id,
            body,
            error,
        })
    }

    /// Logs a failure and records it for the dashboard.
    fn fail(&self, e: StripeError) -> Error {
        log::warn!("stripe: {e}");
        if let Some(writer) = &self.inner.errors {
            let row = e.clone();
            let recorded = writer.run(move |conn| {
                conn.execute(
                    "INSERT INTO stripe_errors (at, request, status, type, code, message,
                         request_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    rusqlite::params![
                        now_ms(),
                        row.request,
                        row.status,
                        row.error_type,
                        row.code,
                        row.message,
                        row.request_id
                    ],
                )
                .and_then(|_| {
                    conn.execute(
                        "DELETE FROM stripe_errors WHERE id <= (SELECT MAX(id) FROM stripe_errors) - ?1",
                        [ERRORS_KEPT],
                    )
                })
                .map_err(|e| Error::sqlite("record a stripe error", e))?;
                Ok(())
            });
            if let Err(err) = recorded {
                log::warn!("stripe: could not record the error for the dashboard: {err}");
            }
        }
        Error::Stripe(Box::new(e))
    }
}

/// What one attempt gave.
enum Outcome {
    Answered(Answered),
    NoAnswer { retryable: bool, msg: String },
}

struct Answered {
    status: u16,
    should_retry: Option<bool>,
    replayed: bool,
    request_id: Option<String>,
    body: String,
    error: Option<ErrorBody>,
}

/// `{"error": {"type", "code", "message"}}`.
#[derive(Debug, Default, Deserialize)]
struct ErrorBody {
    #[serde(rename = "type")]
    error_type: Option<String>,
    code: Option<String>,
    message: Option<String>,
}

impl ErrorBody {
    fn parse(body: &str) -> ErrorBody {
        #[derive(Deserialize)]
        struct Wrapper {
            error: ErrorBody,
        }
        serde_json::from_str::<Wrapper>(body)
            .map(|w| w.error)
            .unwrap_or_default()
    }
}

impl Outcome {
    fn describe(&self) -> String {
        match self {
            Outcome::Answered(a) => {
                let code = a.error.as_ref().and_then(|e| e.code.as_deref());
                format!(
                    "answered {}{}",
                    a.status,
                    code.map_or(String::new(), |c| format!(" {c}"))
                )
            }
            Outcome::NoAnswer { msg, .. } => format!("no answer: {msg}"),
        }
    }

    fn into_error(self, request: String, attempts: u32, key: &str) -> StripeError {
        match self {
            Outcome::Answered(a) => {
                let e = a.error.unwrap_or_default();
                let message = e.message.unwrap_or_else(|| match a.status {
                    300..=399 => "a redirect, which is not followed".to_owned(),
                    _ => format!("HTTP {}", a.status),
                });
                StripeError {
                    request,
                    status: Some(a.status),
                    error_type: e.error_type,
                    code: e.code,
                    message: mask(&message, key),
                    request_id: a.request_id,
                    attempts,
                }
            }
            Outcome::NoAnswer { msg, .. } => StripeError {
                request,
                status: None,
                error_type: None,
                code: None,
                message: mask(&msg, key),
                request_id: None,
                attempts,
            },
        }
    }
}

/// `text` with any occurrence of the key masked as Stripe masks it (`sk_test_...1234`).
fn mask(text: &str, key: &str) -> String {
    if key.len() < 8 || !text.contains(key) {
        return text.to_owned();
    }
    let prefix: String = key.split('_').take(2).collect::<Vec<_>>().join("_");
    let tail = &key[key.len() - 4..];
    text.replace(key, &format!("{prefix}_...{tail}"))
}

/// A random factor in [0, 1) for the backoff's jitter.
fn jitter() -> f64 {
    let bytes: [u8; 4] = crypto::random_bytes().unwrap_or([0x80, 0, 0, 0]);
    f64::from(u32::from_le_bytes(bytes)) / (f64::from(u32::MAX) + 1.0)
}

/// A fresh idempotency key: `stripe-inbox-` and a version-4 UUID (Stripe allows 255 characters).
pub fn new_idempotency_key() -> Result<String> {
    let mut b: [u8; 16] = crypto::random_bytes()?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex = crypto::to_hex(&b);
    Ok(format!(
        "stripe-inbox-{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    ))
}

/// An API path with each id segment percent-encoded: `path(&["v1", "customers", id])`.
pub fn path(segments: &[&str]) -> String {
    let mut out = String::new();
    for segment in segments {
        out.push('/');
        for b in segment.bytes() {
            // Dots too: a segment `..` must never become a path step.
            if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-') {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_paths_and_masks() {
        let a = new_idempotency_key().unwrap();
        let b = new_idempotency_key().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with("stripe-inbox-") && a.len() == 13 + 36, "{a}");
        assert_eq!(&a[13 + 14..13 + 15], "4", "version 4: {a}");
        assert_eq!(
            path(&["v1", "customers", "cus_1/../x?y"]),
            "/v1/customers/cus_1%2F%2E%2E%2Fx%3Fy"
        );
        assert_eq!(
            mask(
                "Invalid API Key provided: sk_test_abcdefgh1234",
                "sk_test_abcdefgh1234"
            ),
            "Invalid API Key provided: sk_test_...1234"
        );
        let client = Client::new(Settings {
            api_base: "http://127.0.0.1:1".into(),
            api_key: "sk_test_secret".into(),
            timeout: Duration::from_secs(1),
            max_network_retries: 0,
            requests_per_sec: 10,
            backoff_unit: Duration::from_millis(1),
        });
        assert!(!format!("{client:?}").contains("secret"));
        assert_eq!(client.livemode(), Some(false));
    }
}
