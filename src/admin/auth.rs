//! Who may use the admin pages: the password, the one-time login link, sessions, CSRF tokens and
//! the login limits.
//!
//! # Decisions
//! - **Closed unless the owner says otherwise.** No request header decides who may see the pages
//!   (a reverse proxy in front sends whatever it likes: nginx's bare `proxy_pass` sends none of
//!   the headers a guard could look for). There are three ways in ([`Mode`]):
//!   - **a password** (from the environment variable `[admin] password_env` names): every page
//!     but `/login`, `/healthz`, `/metrics` and `/admin.css` needs a session from the login form;
//!   - **no password, the one-time login link** (the default without a password): at start,
//!     `serve` logs `http://<admin listen>/login?token=<32 random bytes, hex>` once, and nowhere
//!     else. Opening it gives a session (12 hours) and a redirect to `/` without the token. The
//!     token works once (or not at all after a restart) and is compared in constant time; only
//!     its SHA-256 is kept after it was handed to the log;
//!   - **no password, open on loopback**, only when the owner opted in with `[admin]
//!     open_on_loopback = true`: the pages answer without a session. The config refuses it off
//!     loopback and together with `trusted_proxies` (a proxy in front would publish them). A
//!     request whose `Host` is not a loopback name is still refused: a web page that makes its
//!     own name resolve to 127.0.0.1 (DNS rebinding) sends its own name as `Host`.
//! - **The password is only kept hashed.** At start it is hashed with Argon2id (19 MiB, 2 passes,
//!   RustCrypto's `argon2`, OWASP's minimum) under a random salt; a login attempt is hashed the same
//!   way and compared in constant time. One hash runs at a time (memory stays bounded), which also
//!   bounds guessing to about 20 passwords a second however many addresses try.
//! - **Login limits that cannot lock the owner out**: per client address only (the real client
//!   behind a trusted proxy; an IPv6 client by its /64), never a shared bucket. Five attempts are
//!   free; after that each further attempt waits 15 s, doubled after every failure up to 15 min.
//!   A success, or an hour without attempts, forgets the address. The table is bounded: when it
//!   is full the addresses quiet the longest are forgotten first, so filling it can only give an
//!   attacker's old addresses their attempts back, never keep a new address out.
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
use crate::http::{limit_key, Request};

/// How long a session lasts after login.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at once; the oldest goes first.
const MAX_SESSIONS: usize = 256;
/// Client addresses the login limiter remembers.
const MAX_LIMITED_ADDRS: usize = 4096;
/// Login attempts an address may make before it has to wait.
const FREE_ATTEMPTS: u32 = 5;
/// The wait after the free attempts, doubled after each further failure...
const FIRST_WAIT: Duration = Duration::from_secs(15);
/// ... up to this.
const MAX_WAIT: Duration = Duration::from_secs(15 * 60);
/// An address without attempts for this long is forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(3600);

type HmacSha256 = Hmac<Sha256>;

/// How the admin lets people in (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Password,
    LoginLink,
    OpenOnLoopback,
}

/// The admin's authentication state, shared by every admin connection thread.
pub struct Auth {
    mode: Mode,
    password: Option<Hashed>,
    /// The login link's token until `serve` has logged it (then `None`).
    link_token: Mutex<Option<String>>,
    /// SHA-256 of the login link's token until it is used.
    link: Mutex<Option<[u8; 32]>>,
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
    /// Open mode refuses this request (its `Host` is not a loopback name); says why.
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
    /// Hashes `password` (when there is one) and draws the keys. Without a password, the mode is
    /// open on loopback when `open_on_loopback`, else the one-time login link (whose token
    /// [`Auth::take_login_link_token`] hands out once). Slow by design (one KDF run).
    pub fn new(
        password: Option<&str>,
        open_on_loopback: bool,
        cookie_secure: bool,
    ) -> Result<Auth> {
        let mode = match (password, open_on_loopback) {
            (Some(_), _) => Mode::Password,
            (None, true) => Mode::OpenOnLoopback,
            (None, false) => Mode::LoginLink,
        };
        let password = match password {
            Some(p) => {
                let salt: [u8; 16] = random_bytes()?;
                let hash = kdf(p, &salt)?;
                Some(Hashed { salt, hash })
            }
            None => None,
        };
        let (link_token, link) = if mode == Mode::LoginLink {
            let token = to_hex(&random_bytes::<32>()?);
            let hash = digest(&token);
            (Some(token), Some(hash))
        } else {
            (None, None)
        };
        Ok(Auth {
            mode,
            password,
            link_token: Mutex::new(link_token),
            link: Mutex::new(link),
            key: random_bytes()?,
            secure: cookie_secure,
            sessions: Mutex::new(HashMap::new()),
            limiter: Mutex::new(Limiter::default()),
            kdf: Mutex::new(()),
        })
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Whether the pages are open without a session (the owner opted in).
    pub fn is_open(&self) -> bool {
        self.mode == Mode::OpenOnLoopback
    }

    /// The login link's token, the first time this is called in login-link mode; `None` after
    /// (and in the other modes). `serve` logs it once.
    pub fn take_login_link_token(&self) -> Option<String> {
        self.link_token
            .lock()
            .expect("admin login link lock poisoned")
            .take()
    }

    /// Opens a session for the one-time login link's `token` (returns its `Set-Cookie`); `None`
    /// when the token is wrong, used already, or there is no link.
    pub fn login_with_link(&self, token: &str, now: Instant) -> Option<String> {
        let mut link = self.link.lock().expect("admin login link lock poisoned");
        let expected = (*link)?;
        if !crypto::ct_eq(&digest(token), &expected) {
            return None;
        }
        *link = None;
        drop(link);
        self.new_session(now)
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

    /// Checks a password from `client` (limited first, then hashed) and opens a session.
    pub fn login(&self, client: IpAddr, password: &str, now: Instant) -> Login {
        let Some(stored) = &self.password else {
            return Login::Wrong;
        };
        let key = limit_key(client);
        let wait = self
            .limiter
            .lock()
            .expect("admin rate limiter lock poisoned")
            .begin(key, now);
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
        self.limiter
            .lock()
            .expect("admin rate limiter lock poisoned")
            .forget(key);
        match self.new_session(now) {
            Some(cookie) => Login::Ok(cookie),
            None => Login::Wrong,
        }
    }

    /// A new session: its `Set-Cookie` (None when the random source fails).
    fn new_session(&self, now: Instant) -> Option<String> {
        let id = match random_bytes::<32>() {
            Ok(b) => to_hex(&b),
            Err(e) => {
                log::error!("admin session: {e}");
                return None;
            }
        };
        let mut sessions = self.sessions.lock().expect("admin sessions lock poisoned");
        sessions.retain(|_, expires| *expires > now);
        if sessions.len() >= MAX_SESSIONS {
            if let Some(oldest) = sessions.iter().min_by_key(|(_, e)| **e).map(|(k, _)| *k) {
                sessions.remove(&oldest);
            }
        }
        sessions.insert(digest(&id), now + SESSION_TTL);
        Some(self.cookie(self.session_cookie_name(), &id, Some(SESSION_TTL.as_secs())))
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

/// Why open mode refuses a request, if it does: a `Host` that is not a loopback name is another
/// site's page that resolved its name to 127.0.0.1 (DNS rebinding). Not a proxy check: a proxy
/// may send any `Host`; the config keeps open mode away from proxies instead.
fn open_mode_refusal(req: &Request) -> Option<&'static str> {
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

/// Failed login attempts per client address, with a growing wait (see the module doc).
#[derive(Default)]
struct Limiter {
    addrs: HashMap<IpAddr, Attempts>,
}

#[derive(Clone, Copy)]
struct Attempts {
    /// Attempts since the last success (or since it was forgotten).
    count: u32,
    last: Instant,
}

impl Attempts {
    /// How long after `last` the next attempt may come.
    fn wait(&self) -> Duration {
        if self.count < FREE_ATTEMPTS {
            return Duration::ZERO;
        }
        let doublings = (self.count - FREE_ATTEMPTS).min(16);
        FIRST_WAIT.saturating_mul(1 << doublings).min(MAX_WAIT)
    }
}

impl Limiter {
    /// Counts an attempt from `key` unless it must wait: then the seconds left. The attempt is
    /// counted before the password is checked, so attempts sent at once cannot all pass.
    fn begin(&mut self, key: IpAddr, now: Instant) -> Option<u64> {
        if let Some(a) = self.addrs.get(&key) {
            if now.saturating_duration_since(a.last) >= FORGET_AFTER {
                self.addrs.remove(&key);
            }
        }
        if let Some(a) = self.addrs.get(&key) {
            let allowed = a.last + a.wait();
            if now < allowed {
                let left = allowed.saturating_duration_since(now);
                return Some(left.as_secs_f64().ceil().max(1.0) as u64);
            }
        }
        if !self.addrs.contains_key(&key) && self.addrs.len() >= MAX_LIMITED_ADDRS {
            self.make_room(now);
        }
        let a = self.addrs.entry(key).or_insert(Attempts {
            count: 0,
            last: now,
        });
        a.count += 1;
        a.last = now;
        None
    }

    fn forget(&mut self, key: IpAddr) {
        self.addrs.remove(&key);
    }

    /// Forgets the addresses quiet for an hour, and if that is not enough, the quarter quiet the
    /// longest.
    fn make_room(&mut self, now: Instant) {
        self.addrs
            .retain(|_, a| now.saturating_duration_since(a.last) < FORGET_AFTER);
        if self.addrs.len() >= MAX_LIMITED_ADDRS {
            let mut by_age: Vec<(Instant, IpAddr)> =
                self.addrs.iter().map(|(k, a)| (a.last, *k)).collect();
            by_age.sort_unstable();
            for (_, key) in by_age.iter().take(MAX_LIMITED_ADDRS / 4) {
                self.addrs.remove(key);
            }
        }
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
        let auth = Auth::new(Some("correct horse"), false, false).unwrap();
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
        let auth = Auth::new(Some("pw"), false, true).unwrap();
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
    fn open_mode_only_answers_loopback_names() {
        let auth = Auth::new(None, true, false).unwrap();
        assert_eq!(auth.mode(), Mode::OpenOnLoopback);
        assert_eq!(auth.take_login_link_token(), None);
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
        // No header heuristic: what a proxy would add changes nothing (the config keeps open mode
        // away from proxies instead).
        let proxied = request(&[("Host", "localhost"), ("X-Forwarded-For", "1.2.3.4")]);
        assert!(matches!(auth.check(&proxied, now), Access::Granted(_)));
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

    /// Issue 13, case 2: without a password and without the opt-in, nothing is open, whatever
    /// the request says: only the one-time link gives a session.
    #[test]
    fn without_a_password_only_the_login_link_lets_in() {
        let auth = Auth::new(None, false, false).unwrap();
        assert_eq!(auth.mode(), Mode::LoginLink);
        let now = Instant::now();
        // What nginx's bare proxy_pass sends (Host 127.0.0.1:8081, no proxy header), a browser,
        // or a request with any of the headers the old guard did not know: all need a session.
        for headers in [
            vec![("Host", "127.0.0.1:8081"), ("User-Agent", "Mozilla/5.0")],
            vec![("Host", "localhost"), ("Via", "1.1 proxy")],
            vec![("Host", "localhost"), ("X-Forwarded-Proto", "https")],
            vec![("Host", "localhost"), ("X-Client-IP", "1.2.3.4")],
            vec![("Host", "localhost"), ("True-Client-IP", "1.2.3.4")],
            vec![("Host", "localhost"), ("CF-Connecting-IP", "1.2.3.4")],
            vec![],
        ] {
            assert!(
                matches!(auth.check(&request(&headers), now), Access::Login),
                "{headers:?}"
            );
        }
        let token = auth.take_login_link_token().unwrap();
        assert_eq!(token.len(), 64);
        assert_eq!(auth.take_login_link_token(), None, "handed out once");
        assert_eq!(auth.login_with_link(&"0".repeat(64), now), None);
        assert_eq!(auth.login_with_link("", now), None);
        let set = auth.login_with_link(&token, now).expect("the link logs in");
        assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict"));
        let with = request(&[("Cookie", &cookie_pair(&set))]);
        let Access::Granted(viewer) = auth.check(&with, now) else {
            panic!("the link's session is not accepted")
        };
        assert!(viewer.logged_in);
        assert_eq!(auth.login_with_link(&token, now), None, "single use");
        // No password to log in with.
        let ip = "127.0.0.1".parse().unwrap();
        assert!(matches!(auth.login(ip, "", now), Login::Wrong));
    }

    /// Issue 13, case 3: five wrong logins each from eight addresses used to drain a shared
    /// bucket; now each address waits on its own, and a fresh address logs in.
    #[test]
    fn login_limits_are_per_address_with_backoff() {
        let mut limiter = Limiter::default();
        let now = Instant::now();
        let at = |s: u64| now + Duration::from_secs(s);
        for i in 0..8 {
            let addr: IpAddr = format!("10.0.0.{i}").parse().unwrap();
            for _ in 0..FREE_ATTEMPTS {
                assert_eq!(limiter.begin(addr, now), None);
            }
            assert_eq!(limiter.begin(addr, now), Some(15), "the sixth waits");
        }
        let fresh: IpAddr = "10.0.1.1".parse().unwrap();
        assert_eq!(limiter.begin(fresh, now), None);
        // The wait doubles after each further failure, up to 15 minutes.
        let a: IpAddr = "10.0.0.0".parse().unwrap();
        assert_eq!(limiter.begin(a, at(15)), None);
        assert_eq!(limiter.begin(a, at(16)), Some(29));
        assert_eq!(limiter.begin(a, at(45)), None);
        assert_eq!(limiter.begin(a, at(46)), Some(59));
        let mut t = 45;
        for _ in 0..20 {
            t += 15 * 60;
            assert_eq!(limiter.begin(a, at(t)), None);
        }
        assert_eq!(limiter.begin(a, at(t + 1)), Some(15 * 60 - 1));
        // A success forgets the address; so does an hour of quiet.
        limiter.forget(a);
        assert_eq!(limiter.begin(a, at(t + 1)), None);
        let b: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(limiter.begin(b, at(3600)), None);
        // A full table forgets the quietest addresses, never refusing a new one.
        let mut many = Limiter::default();
        for i in 0..MAX_LIMITED_ADDRS as u32 + 10 {
            let addr = IpAddr::from(std::net::Ipv4Addr::from(0x0b00_0000 + i));
            assert_eq!(many.begin(addr, now), None);
        }
        assert!(many.addrs.len() <= MAX_LIMITED_ADDRS);
    }

    #[test]
    fn logins_count_by_client_and_succeed_after_failures_elsewhere() {
        let auth = Auth::new(Some("correct horse battery"), false, false).unwrap();
        let now = Instant::now();
        // Two addresses here (each wrong login is a 50 ms hash); the integration test does eight.
        for i in 0..2 {
            let ip: IpAddr = format!("203.0.113.{i}").parse().unwrap();
            for _ in 0..5 {
                assert!(matches!(auth.login(ip, "guess", now), Login::Wrong));
            }
            assert!(matches!(
                auth.login(ip, "correct horse battery", now),
                Login::Limited(15)
            ));
        }
        let fresh: IpAddr = "198.51.100.1".parse().unwrap();
        assert!(matches!(
            auth.login(fresh, "correct horse battery", now),
            Login::Ok(_)
        ));
        // An IPv6 client is one client across its /64.
        for i in 0..5 {
            let ip: IpAddr = format!("2001:db8::{i}").parse().unwrap();
            assert!(matches!(auth.login(ip, "guess", now), Login::Wrong));
        }
        let same_64: IpAddr = "2001:db8::ffff".parse().unwrap();
        assert!(matches!(
            auth.login(same_64, "guess", now),
            Login::Limited(_)
        ));
    }

    #[test]
    fn constant_time_compare() {
        assert!(ct_eq("abc", "abc"));
        assert!(!ct_eq("abc", "abd"));
        assert!(!ct_eq("abc", "ab"));
    }
}
