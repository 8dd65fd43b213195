//! Forwarding test support: a shop's app on a loopback port that records every request it gets
//! (what, when, with which headers, how many at once per object), answers as the test scripts it,
//! and has every request verified by Stripe's own Python library (`verify_stripe.py`); the
//! `[[forward]]` config pointing at it; events about chosen objects; the deliveries table.
//!
//! The verifier is stripe-python's `stripe.Webhook.construct_event`, found through
//! `$STRIPE_INBOX_PYTHON`, then `~/.cache/stripe-inbox/venv/bin/python`, then `python3` (whichever
//! imports `stripe`). Without it the tests still run and check everything else, and say loudly that
//! the requests were not verified; `.ci/run` installs it, so CI never runs without.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;
use stripe_inbox::http::{Request, Response, Server, ServerConfig};
use stripe_inbox::{crypto, event::testevent, store};

use super::{TempDir, TestApp, OPEN_ADMIN};

/// The secret the app verifies with (the destination's `secret`).
pub const APP_SECRET: &str = "whsec_app_secret_for_forwarding_tests";
/// The app's webhook path.
pub const APP_PATH: &str = "/stripe/webhook";
/// How to install the verifier.
pub const INSTALL: &str = "python3 -m venv ~/.cache/stripe-inbox/venv && \
                           ~/.cache/stripe-inbox/venv/bin/pip install stripe";

/// One request the app got.
#[derive(Debug, Clone)]
pub struct Seen {
    pub event_id: String,
    pub event_type: String,
    /// `data.object.id`.
    pub object_id: Option<String>,
    /// `Stripe-Inbox-Attempt`.
    pub attempt: u32,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub started: Instant,
    pub ended: Instant,
    /// What the app answered.
    pub status: u16,
    /// stripe-python's verdict: `Some(Ok(event id))`, `Some(Err(why))`, or `None` (no verifier).
    pub verified: Option<Result<String, String>>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What the app is about to answer, as its script sees it.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub event_id: String,
    pub event_type: String,
    pub object_id: Option<String>,
    pub attempt: u32,
    /// Requests for this event the app answered before.
    pub earlier: usize,
}

/// The app's answer: a status after a pause, maybe with `Retry-After`.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub sleep: Duration,
    pub retry_after: Option<String>,
}

impl Answer {
    pub fn status(status: u16) -> Answer {
        Answer {
            status,
            sleep: Duration::ZERO,
            retry_after: None,
        }
    }

    pub fn ok() -> Answer {
        Answer::status(200)
    }

    pub fn after(mut self, sleep: Duration) -> Answer {
        self.sleep = sleep;
        self
    }
}

pub type Script = Arc<dyn Fn(&Incoming) -> Answer + Send + Sync>;

/// A script that answers `200` at once.
pub fn always_ok() -> Script {
    Arc::new(|_| Answer::ok())
}

struct State {
    seen: Mutex<Vec<Seen>>,
    live: Mutex<HashMap<String, usize>>,
    live_total: AtomicUsize,
    max_per_object: AtomicUsize,
    max_total: AtomicUsize,
    script: Mutex<Script>,
}

/// The shop's app.
pub struct App {
    server: Option<Server>,
    pub addr: SocketAddr,
    state: Arc<State>,
}

impl App {
    /// On a free port.
    pub fn start(script: Script) -> App {
        App::start_on("127.0.0.1:0".parse().unwrap(), script)
    }

    /// On `addr` (an app that comes up where the inbox already sends).
    pub fn start_on(addr: SocketAddr, script: Script) -> App {
        warn_once_without_verifier();
        let state = Arc::new(State {
            seen: Mutex::new(Vec::new()),
            live: Mutex::new(HashMap::new()),
            live_total: AtomicUsize::new(0),
            max_per_object: AtomicUsize::new(0),
            max_total: AtomicUsize::new(0),
            script: Mutex::new(script),
        });
        let handler_state = state.clone();
        let config = ServerConfig {
            name: "test-app",
            max_connections: 256,
            ..ServerConfig::default()
        };
        // A port just released may linger a moment.
        let deadline = Instant::now() + Duration::from_secs(10);
        let server = loop {
            let s = handler_state.clone();
            match Server::bind(addr, config.clone(), Arc::new(move |req| handle(&s, req))) {
                Ok(server) => break server,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("test app: bind {addr}: {e}; again");
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("test app: bind {addr}: {e}"),
            }
        };
        App {
            addr: server.local_addr(),
            server: Some(server),
            state,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}{APP_PATH}", self.addr)
    }

    pub fn set_script(&self, script: Script) {
        *self.state.script.lock().unwrap() = script;
    }

    /// Every request so far, in the order they began.
    pub fn seen(&self) -> Vec<Seen> {
        let mut seen = self.state.seen.lock().unwrap().clone();
        seen.sort_by_key(|s| s.started);
        seen
    }

    /// Waits (generously) until `cond` holds of what the app has seen.
    pub fn wait_until(&self, what: &str, timeout: Duration, cond: impl Fn(&[Seen]) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            if cond(&self.seen()) {
                return;
            }
            if Instant::now() > deadline {
                let seen: Vec<String> = self
                    .seen()
                    .iter()
                    .map(|s| {
                        format!(
                            "{} {} #{} -> {}",
                            s.event_id, s.event_type, s.attempt, s.status
                        )
                    })
                    .collect();
                panic!(
                    "timed out waiting for {what}; the app saw:\n{}",
                    seen.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The most requests about one object the app was handling at once.
    pub fn max_in_flight_per_object(&self) -> usize {
        self.state.max_per_object.load(Ordering::SeqCst)
    }

    /// Requests the app is handling now.
    pub fn in_flight_now(&self) -> usize {
        self.state.live_total.load(Ordering::SeqCst)
    }

    /// The most requests the app was handling at once.
    pub fn max_in_flight(&self) -> usize {
        self.state.max_total.load(Ordering::SeqCst)
    }

    /// Stops listening (requests under way are answered first).
    pub fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown(Duration::from_secs(5));
        }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.stop();
    }
}

fn handle(state: &State, req: Request) -> Response {
    let started = Instant::now();
    let v: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
    let event_id = v["id"].as_str().unwrap_or("").to_string();
    let event_type = v["type"].as_str().unwrap_or("").to_string();
    let object_id = v["data"]["object"]["id"].as_str().map(str::to_string);
    let attempt = req
        .header("stripe-inbox-attempt")
        .and_then(|a| a.parse().ok())
        .unwrap_or(0);
    let lane = object_id.clone().unwrap_or_else(|| event_id.clone());

    // Count what is in flight, per object and in all.
    {
        let mut live = state.live.lock().unwrap();
        let n = live.entry(lane.clone()).or_insert(0);
        *n += 1;
        state.max_per_object.fetch_max(*n, Ordering::SeqCst);
    }
    let total = state.live_total.fetch_add(1, Ordering::SeqCst) + 1;
    state.max_total.fetch_max(total, Ordering::SeqCst);

    // Verify as a shop's handler does, with Stripe's own library.
    let verified = verify(
        &req.body,
        req.header("stripe-signature").unwrap_or(""),
        APP_SECRET,
    );

    let earlier = state
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.event_id == event_id)
        .count();
    let script = state.script.lock().unwrap().clone();
    let answer = script(&Incoming {
        event_id: event_id.clone(),
        event_type: event_type.clone(),
        object_id: object_id.clone(),
        attempt,
        earlier,
    });
    std::thread::sleep(answer.sleep);

    state.live_total.fetch_sub(1, Ordering::SeqCst);
    *state.live.lock().unwrap().get_mut(&lane).unwrap() -= 1;
    state.seen.lock().unwrap().push(Seen {
        event_id,
        event_type,
        object_id,
        attempt,
        headers: req.headers.clone(),
        body: req.body.clone(),
        started,
        ended: Instant::now(),
        status: answer.status,
        verified,
    });
    let mut response = Response::json(answer.status, "{}");
    if let Some(r) = &answer.retry_after {
        response = response.with_header("Retry-After", r);
    }
    response
}

struct Verifier {
    _child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

static VERIFIER: OnceLock<Option<Mutex<Verifier>>> = OnceLock::new();

/// A Python that can `import stripe`, if there is one.
pub fn python_with_stripe() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os("STRIPE_INBOX_PYTHON").filter(|p| !p.is_empty()) {
        candidates.push(PathBuf::from(p));
    }
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(Path::new(&home).join(".cache/stripe-inbox/venv/bin/python"));
    }
    candidates.push(PathBuf::from("python3"));
    candidates.into_iter().find(|python| {
        Command::new(python)
            .args(["-c", "import stripe"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

fn verifier() -> Option<&'static Mutex<Verifier>> {
    VERIFIER
        .get_or_init(|| {
            let python = python_with_stripe()?;
            let script = concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/support/verify_stripe.py"
            );
            let mut child = Command::new(&python)
                .arg(script)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .ok()?;
            let stdin = child.stdin.take()?;
            let mut stdout = BufReader::new(child.stdout.take()?);
            let mut ready = String::new();
            stdout.read_line(&mut ready).ok()?;
            assert!(ready.contains("\"ready\": true"), "verifier: {ready}");
            Some(Mutex::new(Verifier {
                _child: child,
                stdin,
                stdout,
            }))
        })
        .as_ref()
}

/// stripe-python's verdict on one request (`None` without a verifier).
pub fn verify(body: &[u8], signature: &str, secret: &str) -> Option<Result<String, String>> {
    let mut v = verifier()?.lock().unwrap();
    let line = serde_json::json!({
        "body": crypto::to_hex(body),
        "sig": signature,
        "secret": secret,
    })
    .to_string();
    writeln!(v.stdin, "{line}").unwrap();
    v.stdin.flush().unwrap();
    let mut answer = String::new();
    v.stdout.read_line(&mut answer).unwrap();
    let a: Value = serde_json::from_str(&answer).unwrap();
    Some(if a["ok"] == true {
        Ok(a["id"].as_str().unwrap_or("").to_string())
    } else {
        Err(a["error"].as_str().unwrap_or("?").to_string())
    })
}

/// Whether forwarded requests are verified by stripe-python in this run.
pub fn verifying() -> bool {
    verifier().is_some()
}

fn warn_once_without_verifier() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if !verifying() {
            eprintln!(
                "\n\n*** forwarding tests: stripe-python is not installed, so forwarded requests are NOT ***\n\
                 *** verified by Stripe's own library (everything else is still checked).            ***\n\
                 *** install it: {INSTALL}  (.ci/run does)\n"
            );
        }
    });
}

/// Asserts that stripe-python accepted every request the app saw (when it is installed).
pub fn assert_all_verified(seen: &[Seen]) {
    for s in seen {
        match &s.verified {
            Some(Ok(id)) => assert_eq!(id, &s.event_id, "stripe-python parsed another event"),
            Some(Err(why)) => panic!(
                "stripe-python refused {} (attempt {}): {why}",
                s.event_id, s.attempt
            ),
            None => {}
        }
    }
}

/// A `[[forward]]` block to `url` with the test secret and `extra` keys.
pub fn forward_block(url: &str, extra: &str) -> String {
    format!("[[forward]]\nname = \"app\"\nurl = \"{url}\"\nsecret = \"{APP_SECRET}\"\n{extra}\n")
}

/// The inbox in this process, forwarding with `block` (see [`forward_block`]).
pub fn inbox(block: &str) -> TestApp {
    inbox_in(TempDir::new("forward"), block)
}

/// [`inbox`] on a directory prepared beforehand.
pub fn inbox_in(dir: TempDir, block: &str) -> TestApp {
    TestApp::start_in(dir, "", &format!("{OPEN_ADMIN}\n\n{block}"))
}

/// A realistic event of `event_type` about `object_id`, created at `created`.
pub fn event_about(event_type: &str, object_id: &str, created: i64) -> Vec<u8> {
    let mut event = testevent::build(event_type, created).unwrap();
    event["data"]["object"]["id"] = object_id.into();
    serde_json::to_vec_pretty(&event).unwrap()
}

/// A delivery row as the tests look at it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub id: i64,
    pub event_id: String,
    pub state: String,
    pub attempts: i64,
    pub last_status: Option<i64>,
    pub lease_owner: Option<String>,
}

/// Every delivery in the database at `db`, in id order.
pub fn deliveries(db: &Path) -> Vec<Delivery> {
    let conn = store::open_read_only(db).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT id, event_id, state, attempts, last_status, lease_owner FROM deliveries
             ORDER BY id",
        )
        .unwrap();
    let rows = stmt
        .query_map([], |r| {
            Ok(Delivery {
                id: r.get(0)?,
                event_id: r.get(1)?,
                state: r.get(2)?,
                attempts: r.get(3)?,
                last_status: r.get(4)?,
                lease_owner: r.get(5)?,
            })
        })
        .unwrap()
        .collect::<rusqlite::Result<Vec<_>>>()
        .unwrap();
    rows
}

/// Waits (generously) until `cond` holds of the deliveries.
pub fn wait_for_deliveries(
    db: &Path,
    what: &str,
    timeout: Duration,
    cond: impl Fn(&[Delivery]) -> bool,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let rows = deliveries(db);
        if cond(&rows) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {rows:#?}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Every attempt of the delivery of `event_id`: (attempt, status, outcome, error).
pub fn attempts(db: &Path, event_id: &str) -> Vec<(i64, Option<i64>, String, Option<String>)> {
    let conn = store::open_read_only(db).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT a.attempt, a.status, a.outcome, a.error FROM delivery_attempts a
             JOIN deliveries d ON d.id = a.delivery_id WHERE d.event_id = ?1 ORDER BY a.attempt",
        )
        .unwrap();
    let rows = stmt
        .query_map([event_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .unwrap()
        .collect::<rusqlite::Result<Vec<_>>>()
        .unwrap();
    rows
}

/// The order in which the app first got each event about `object_id` (by start time).
pub fn order_of(seen: &[Seen], object_id: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in seen
        .iter()
        .filter(|s| s.object_id.as_deref() == Some(object_id))
    {
        if !out.contains(&s.event_id) {
            out.push(s.event_id.clone());
        }
    }
    out
}
