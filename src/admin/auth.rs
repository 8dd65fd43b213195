//! Who may use the admin pages: the password, sessions, CSRF tokens and the login rate limit.
//!
//! # Decisions
//! - **Password or loopback.** With a password (from the environment variable `[admin]
//!   password_env` names), every page but `/login`, `/healthz`, `/metrics` and `/admin.css` needs a
//!   session. Without one, the pages are open, like many local tools, but only on a loopback
//!   listener (the config refuses any other address) and only to requests whose `Host` is a
//!   loopback name and that carry no proxy header: that stops a web page from reaching them by
//!   DNS rebinding, and a reverse proxy from publishing them by mistake. Reach them over an SSH
//!   tunnel (`ssh -L 8081:127.0.0.1:8081 shop`), or set a password.
//! - **The password is only kept hashed.** At start it is hashed with Argon2id (19 MiB, 2 passes,
//!   RustCrypto's `argon2`, OWASP's minimum) under a random salt; a login attempt is hashed the same
//!   way and compared in constant time. One hash runs at a time (memory stays bounded).
//! - **Login is rate-limited** before any hashing: 5 attempts per minute per client address (a
//!   burst of 5), and 30 per minute overall (behind a proxy every client shares one address).
//! - **Sessions** are 32 random bytes (`getrandom`) in a cookie `HttpOnly; SameSite=Strict;
//!   Path=/` (plus `Secure` and the `__Host-` prefix with `cookie_secure = true`), valid for 12 hours.
//!   The server keeps only their SHA-256, in memory: a restart logs everyone out.
//! - **CSRF**: every POST (login and logout included) carries `csrf_token`, an HMAC-SHA256 under a
//!   per-process random key of the session id (or, before login and on open pages, of a random
//!   `HttpOnly; SameSite=Strict` cookie): the signed double-submit pattern. A POST whose
//!   `Sec-Fetch-Site` says another site sent it is refused whatever its token.
//!
//! Nothing here logs a password, a session id or a token.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use crate::admin::form::{cookie, Form};
use crate::crypto::{self, random_bytes, to_hex};
use crate::error::{Error, Result};
use crate::http::Request;

/// How long a session lasts after login.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at once; the oldest goes first.
const MAX_SESSIONS: usize = 256;
/// Client addresses the rate limiter remembers.
const MAX_LIMITED_ADDRS: usize = 4096;
/// Per client address: a burst of 5 attempts, then one every 12 s (5 a minute).
const PER_ADDR: (f64, f64) = (5.0, 12.0);
/// Overall: a burst of 30, then one every 2 s (30 a minute).
const OVERALL: (f64, f64) = (30.0, 2.0);

type HmacSha256 = Hmac<Sha256>;

/// The admin's authentication state, shared by every admin connection thread.
pub struct Auth {
    password: Option<Hashed>,
    key: [u8; 32],
    secure: bool,
    sessions: Mutex<HashMap<[u8; 32], Instant>>,
    limiter: Mutex<Limiter>,
    kdf: Mutex<()>,
}

struct Hashed {
    salt: [u8; 16],
    hash: [u8; 32],
}

/// Whether a request may see the pages.
#[derive(Debug)]
pub enum Access {
    Granted(Viewer),
    /// No valid session: send the viewer to `/login`.
    Login,
    /// Open mode refuses this request (not a loopback `Host`, or a proxy header); says why.
    Refused(&'static str),
}

/// A viewer allowed in: whether through a session, the CSRF token for their forms, and a cookie
/// to set when the CSRF cookie was missing.
#[derive(Debug, Clone)]
pub struct Viewer {
    pub logged_in: bool,
    pub csrf: String,
    pub set_cookie: Option<String>,
}

/// What a login attempt gave.
#[derive(Debug)]
pub enum Login {
    /// The `Set-Cookie` value of the new session.
    Ok(String),
    Wrong,
    /// Too many attempts: try again after this many seconds.
    Limited(u64),
}

impl Auth {
    /// Hashes `password` (when there is one) and draws the keys. Slow by design (one KDF run).
    pub fn new(password: Option<&str>, cookie_secure: bool) -> Result<Auth> {
        let password = match password {
            Some(p) => {
                let salt: [u8; 16] = random_bytes()?;
                let hash = kdf(p, &salt)?;
                Some(Hashed { salt, hash })
            }
            None => None,
        };
        Ok(Auth {
            password,
            key: random_bytes()?,
            secure: cookie_secure,
            sessions: Mutex::new(HashMap::new()),
            limiter: Mutex::new(Limiter::default()),
            kdf: Mutex::new(()),
        })
    }

    /// Whether the pages are open (no password configured).
    pub fn is_open(&self) -> bool {
        self.password.is_none()
    }

    /// Decides whether `req` may see a page.
    pub fn check(&self, req: &Request, now: Instant) -> Access {
        if self.is_open() {
            if let Some(why) = open_mode_refusal(req) {
                return Access::Refused(why);
            }
            let (binding, set_cookie) = self.csrf_cookie(req);
            return Access::Granted(Viewer {
                logged_in: false,
                csrf: self.token(&format!("c:{binding}")),
                set_cookie,
            });
        }
        match self.session_of(req, now) {
            Some(id) => Access::Granted(Viewer {
                logged_in: true,
                csrf: self.token(&format!("s:{id}")),
                set_cookie: None,
            }),
            None => Access::Login,
        }
    }

    /// The CSRF token for the login form, and the cookie it is bound to when it must be set.
    pub fn login_token(&self, req: &Request) -> (String, Option<String>) {
        let (binding, set_cookie) = self.csrf_cookie(req);
        (self.token(&format!("c:{binding}")), set_cookie)
    }

    /// Whether a POST's form carries the right token for `viewer` and no browser says it came
    /// from another site.
    pub fn csrf_ok(&self, req: &Request, form: &Form, viewer: &Viewer) -> bool {
        !cross_site(req)
            && form
                .get("csrf_token")
                .is_some_and(|t| ct_eq(t, &viewer.csrf))
    }

    /// Whether a login POST carries the token of the login form.
    pub fn login_csrf_ok(&self, req: &Request, form: &Form) -> bool {
        let Some(binding) = cookie(&req.headers, self.csrf_cookie_name()) else {
            return false;
        };
        let expected = self.token(&format!("c:{binding}"));
        !cross_site(req) && form.get("csrf_token").is_some_and(|t| ct_eq(t, &expected))
    }

    /// Checks a password (rate-limited first, then hashed) and opens a session.
    pub fn login(&self, peer: IpAddr, password: &str, now: Instant) -> Login {
        let Some(stored) = &self.password else {
            return Login::Wrong;
        };
        let wait = self
            .limiter
            .lock()
            .expect("admin rate limiter lock poisoned")
            .take(peer, now);
        if let Some(wait) = wait {
            return Login::Limited(wait);
        }
        let candidate = {
            let _one_at_a_time = self.kdf.lock().expect("admin kdf lock poisoned");
            match kdf(password, &stored.salt) {
                Ok(hash) => hash,
                Err(e) => {
                    log::error!("admin login: {e}");
                    return Login::Wrong;
                }
            }
        };
        if !crypto::ct_eq(&candidate, &stored.hash) {
            return Login::Wrong;
        }
        let Ok(id) = random_bytes::<32>().map(|b| to_hex(&b)) else {
            return Login::Wrong;
        };
        let mut sessions = self.sessions.lock().expect("admin sessions lock poisoned");
        sessions.retain(|_, expires| *expires > now);
        if sessions.len() >= MAX_SESSIONS {
            if let Some(oldest) = sessions.iter().min_by_key(|(_, e)| **e).map(|(k, _)| *k) {
                sessions.remove(&oldest);
            }
        }
        sessions.insert(digest(&id), now + SESSION_TTL);
        Login::Ok(self.cookie(self.session_cookie_name(), &id, Some(SESSION_TTL.as_secs())))
    }

    /// Ends the request's session; returns the `Set-Cookie` that clears it.
    pub fn logout(&self, req: &Request) -> String {
        if let Some(id) = cookie(&req.headers, self.session_cookie_name()) {
            self.sessions
                .lock()
                .expect("admin sessions lock poisoned")
                .remove(&digest(id));
        }
        self.cookie(self.session_cookie_name(), "", Some(0))
    }

    /// How many sessions are open (for tests and the dashboard).
    pub fn session_count(&self) -> usize {
        self.sessions
            .lock()
            .expect("admin sessions lock poisoned")
            .len()
    }

    fn session_of(&self, req: &Request, now: Instant) -> Option<String> {
        let id = cookie(&req.headers, self.session_cookie_name())?;
        if id.len() != 64 {
            return None;
        }
        let sessions = self.sessions.lock().expect("admin sessions lock poisoned");
        let expires = sessions.get(&digest(id))?;
        (*expires > now).then(|| id.to_string())
    }

    /// The request's CSRF cookie, or a new one with the `Set-Cookie` that sets it.
    fn csrf_cookie(&self, req: &Request) -> (String, Option<String>) {
        match cookie(&req.headers, self.csrf_cookie_name()) {
            Some(v) if v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()) => {
                (v.to_string(), None)
            }
            _ => {
                // The random source failing is not expected; a token of zeros still works but
                // is guessable, so log it loudly.
                let v = random_bytes::<32>()
                    .map(|b| to_hex(&b))
                    .unwrap_or_else(|e| {
                        log::error!("admin csrf cookie: {e}");
                        "0".repeat(64)
                    });
                let set = self.cookie(self.csrf_cookie_name(), &v, None);
                (v, Some(set))
            }
        }
    }

    fn token(&self, binding: &str) -> String {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(b"stripe-inbox csrf\0");
        mac.update(binding.as_bytes());
        to_hex(&mac.finalize().into_bytes())
    }

    fn session_cookie_name(&self) -> &'static str {
        if self.secure {
            "__Host-stripe_inbox_session"
        } else {
            "stripe_inbox_session"
        }
    }

    fn csrf_cookie_name(&self) -> &'static str {
        if self.secure {
            "__Host-stripe_inbox_csrf"
        } else {
            "stripe_inbox_csrf"
        }
    }

    fn cookie(&self, name: &str, value: &str, max_age: Option<u64>) -> String {
        let mut c = format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict");
        if let Some(age) = max_age {
            c.push_str(&format!("; Max-Age={age}"));
        }
        if self.secure {
            c.push_str("; Secure");
        }
        c
    }
}

/// Why open mode refuses a request, if it does.
fn open_mode_refusal(req: &Request) -> Option<&'static str> {
    for h in [
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-real-ip",
    ] {
        if req.header(h).is_some() {
            return Some("the admin page has no password, so it does not answer through a proxy: set the password ([admin] password_env) to put it behind one");
        }
    }
    match req.header("host") {
        None => None,
        Some(host) if is_loopback_host(host) => None,
        Some(_) => Some("the admin page has no password, so it only answers to http://127.0.0.1, http://[::1] or http://localhost (an SSH tunnel works): set the password ([admin] password_env) to use another name"),
    }
}

/// `localhost`, `*.localhost`, `127.x.x.x` or `[::1]`, with or without a port.
fn is_loopback_host(host: &str) -> bool {
    let host = host.trim().to_ascii_lowercase();
    let name = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((ip, port)) if port.is_empty() || port.starts_with(':') => ip.to_string(),
            _ => return false,
        }
    } else {
        host.split(':').next().unwrap_or("").to_string()
    };
    let name = name.trim_end_matches('.');
    name == "localhost"
        || name.ends_with(".localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `Sec-Fetch-Site: cross-site` or `same-site` (another origin sent this).
fn cross_site(req: &Request) -> bool {
    matches!(
        req.header("sec-fetch-site")
            .map(|v| v.to_ascii_lowercase())
            .as_deref(),
        Some("cross-site" | "same-site")
    )
}

fn kdf(password: &str, salt: &[u8]) -> Result<[u8; 32]> {
    let mut out = [0u8; 32];
    argon2::Argon2::default()
        .hash_password_into(password.as_bytes(), salt, &mut out)
        .map_err(|e| Error::Crypto(format!("hash admin password: {e}")))?;
    Ok(out)
}

fn digest(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

/// Compares two strings in time that depends only on their lengths.
fn ct_eq(a: &str, b: &str) -> bool {
    crypto::ct_eq(a.as_bytes(), b.as_bytes())
}

/// Token buckets: per client address and overall.
#[derive(Default)]
struct Limiter {
    addrs: HashMap<IpAddr, Bucket>,
    overall: Option<Bucket>,
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// Refills at one token per `every` seconds up to `burst`, then takes one if it can; else
    /// says how many seconds until one is there.
    fn take(&mut self, (burst, every): (f64, f64), now: Instant) -> Option<u64> {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed / every).min(burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            None
        } else {
            Some(((1.0 - self.tokens) * every).ceil().max(1.0) as u64)
        }
    }
}

impl Limiter {
    fn take(&mut self, addr: IpAddr, now: Instant) -> Option<u64> {
        if self.addrs.len() >= MAX_LIMITED_ADDRS {
            // Forget addresses whose bucket is full again.
            self.addrs.retain(|_, b| {
                now.saturating_duration_since(b.at).as_secs_f64() < PER_ADDR.0 * PER_ADDR.1
            });
        }
        let fresh = |burst: f64| Bucket {
            tokens: burst,
            at: now,
        };
        let addr_bucket = self.addrs.entry(addr).or_insert_with(|| fresh(PER_ADDR.0));
        let mut probe = *addr_bucket;
        if let Some(wait) = probe.take(PER_ADDR, now) {
            return Some(wait);
        }
        let overall = self.overall.get_or_insert_with(|| fresh(OVERALL.0));
        if let Some(wait) = overall.take(OVERALL, now) {
            return Some(wait);
        }
        *addr_bucket = probe;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&str, &str)]) -> Request {
        Request {
            method: "GET".into(),
            path: "/".into(),
            query: String::new(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            body: Vec::new(),
            remote: "127.0.0.1:5000".parse().unwrap(),
            client: "127.0.0.1".parse().unwrap(),
        }
    }

    fn cookie_pair(set_cookie: &str) -> String {
        set_cookie.split(';').next().unwrap().to_string()
    }

    #[test]
    fn password_mode_needs_a_session_and_binds_csrf_to_it() {
        let auth = Auth::new(Some("correct horse"), false).unwrap();
        let now = Instant::now();
        assert!(matches!(auth.check(&request(&[]), now), Access::Login));
        let ip = "127.0.0.1".parse().unwrap();
        assert!(matches!(auth.login(ip, "wrong", now), Login::Wrong));
        let Login::Ok(set) = auth.login(ip, "correct horse", now) else {
            panic!("login refused")
        };
        assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict"));
        assert!(!set.contains("Secure"));
        let with = request(&[("Cookie", &cookie_pair(&set))]);
        let Access::Granted(viewer) = auth.check(&with, now) else {
            panic!("session not accepted")
        };
        assert!(viewer.logged_in);
        let good = Form::parse(&format!("csrf_token={}", viewer.csrf));
        assert!(auth.csrf_ok(&with, &good, &viewer));
        assert!(!auth.csrf_ok(&with, &Form::parse("csrf_token=00"), &viewer));
        assert!(!auth.csrf_ok(&with, &Form::default(), &viewer));
        // A browser saying another site sent it is refused even with the right token.
        let mut cross = with.clone();
        cross
            .headers
            .push(("Sec-Fetch-Site".into(), "cross-site".into()));
        assert!(!auth.csrf_ok(&cross, &good, &viewer));
        // The session expires; a forged or unknown id is not a session.
        assert!(matches!(
            auth.check(&with, now + SESSION_TTL),
            Access::Login
        ));
        let forged = request(&[(
            "Cookie",
            &format!("stripe_inbox_session={}", "a".repeat(64)),
        )]);
        assert!(matches!(auth.check(&forged, now), Access::Login));
        // Logout forgets it.
        let clear = auth.logout(&with);
        assert!(clear.contains("Max-Age=0"));
        assert!(matches!(auth.check(&with, now), Access::Login));
    }

    #[test]
    fn login_form_token_is_bound_to_its_cookie() {
        let auth = Auth::new(Some("pw"), true).unwrap();
        let (token, set) = auth.login_token(&request(&[]));
        let set = set.unwrap();
        assert!(set.starts_with("__Host-stripe_inbox_csrf="), "{set}");
        assert!(set.contains("; Secure"));
        let form = Form::parse(&format!("csrf_token={token}&password=pw"));
        let with = request(&[("Cookie", &cookie_pair(&set))]);
        assert!(auth.login_csrf_ok(&with, &form));
        assert!(!auth.login_csrf_ok(&request(&[]), &form), "no cookie");
        let other = request(&[(
            "Cookie",
            &format!("__Host-stripe_inbox_csrf={}", "b".repeat(64)),
        )]);
        assert!(!auth.login_csrf_ok(&other, &form), "another cookie");
        // The same cookie gives the same token (a form stays valid across reloads).
        let (again, none) = auth.login_token(&with);
        assert_eq!(again, token);
        assert!(none.is_none());
    }

    #[test]
    fn open_mode_only_answers_loopback_names_without_proxies() {
        let auth = Auth::new(None, false).unwrap();
        let now = Instant::now();
        for host in [
            "127.0.0.1:8081",
            "localhost:8081",
            "[::1]:8081",
            "LOCALHOST",
            "admin.localhost:1",
        ] {
            let Access::Granted(v) = auth.check(&request(&[("Host", host)]), now) else {
                panic!("{host} refused")
            };
            assert!(!v.logged_in);
            assert!(v.set_cookie.is_some());
        }
        for host in [
            "evil.example",
            "127.0.0.1.evil.example",
            "[::1]x",
            "10.0.0.1:8081",
        ] {
            assert!(
                matches!(
                    auth.check(&request(&[("Host", host)]), now),
                    Access::Refused(_)
                ),
                "{host}"
            );
        }
        let proxied = request(&[("Host", "localhost"), ("X-Forwarded-For", "1.2.3.4")]);
        assert!(matches!(auth.check(&proxied, now), Access::Refused(_)));
        // POSTs still need the token bound to the cookie.
        let Access::Granted(v) = auth.check(&request(&[("Host", "localhost")]), now) else {
            panic!()
        };
        let with = request(&[
            ("Host", "localhost"),
            ("Cookie", &cookie_pair(v.set_cookie.as_ref().unwrap())),
        ]);
        let Access::Granted(v2) = auth.check(&with, now) else {
            panic!()
        };
        assert_eq!(v.csrf, v2.csrf);
        assert!(auth.csrf_ok(&with, &Form::parse(&format!("csrf_token={}", v2.csrf)), &v2));
        assert!(!auth.csrf_ok(&with, &Form::parse("csrf_token=x"), &v2));
        assert!(matches!(
            auth.login("127.0.0.1".parse().unwrap(), "", now),
            Login::Wrong
        ));
    }

    #[test]
    fn login_is_rate_limited_per_address_and_overall() {
        let mut limiter = Limiter::default();
        let now = Instant::now();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..5 {
            assert_eq!(limiter.take(a, now), None);
        }
        assert_eq!(limiter.take(a, now), Some(12));
        assert_eq!(limiter.take(a, now + Duration::from_secs(12)), None);
        // Other addresses share the overall budget of 30.
        let mut refused = 0;
        for i in 0..40u8 {
            let b: IpAddr = format!("10.0.1.{i}").parse().unwrap();
            if limiter.take(b, now + Duration::from_secs(12)).is_some() {
                refused += 1;
            }
        }
        // 30 - 6 (a's) + 5 refilled in 12 s, capped at 30, less a's sixth: 29 left for 40 others.
        assert_eq!(refused, 11);
    }

    #[test]
    fn constant_time_compare() {
        assert!(ct_eq("abc", "abc"));
        assert!(!ct_eq("abc", "abd"));
        assert!(!ct_eq("abc", "ab"));
    }
}
