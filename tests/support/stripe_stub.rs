//! A local stub of Stripe's API for the tests: a small HTTP server on a free loopback port that
//! answers like Stripe does for what the inbox asks (lists with `limit` / `starting_after` /
//! `has_more`, `status=all` for subscriptions, retrieve with `deleted: true` or 404
//! `resource_missing`, `/v1/events` newest first with `created[gte]`, webhook endpoints with
//! Stripe's idempotency: a key seen before gets the saved answer again with
//! `Idempotent-Replayed: true`), records every request with its headers, and is scripted per test
//! with faults (an answer of choice, or a connection dropped before or after the work is done).
//!
//! One request per connection (`Connection: close`), a thread per connection.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// One request as the stub received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// Decoded query parameters, in order.
    pub query: Vec<(String, String)>,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub at: Instant,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What a scripted fault does to a request.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer this instead, doing nothing else.
    Answer {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
    /// Close the connection without reading on or answering (nothing done).
    Drop,
    /// Do the work (create the endpoint, save the idempotency key), then close without answering:
    /// the answer is lost.
    DropAfterWork,
}

impl Fault {
    /// An answer with Stripe's error body.
    pub fn error(status: u16, error_type: &str, code: &str, headers: &[(&str, &str)]) -> Fault {
        Fault::Answer {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            body: json!({"error": {"type": error_type, "code": code,
                "message": format!("stub says {code}")}})
            .to_string(),
        }
    }
}

/// Decides, per request, whether a fault applies: (the request, how many requests came before it)
/// → a fault or `None`.
pub type Hook = Box<dyn FnMut(&Recorded, usize) -> Option<Fault> + Send>;

/// What the stub knows: Stripe's side of the account.
#[derive(Default)]
pub struct Account {
    /// Objects by collection (`customers`, `checkout/sessions`), newest first.
    pub objects: BTreeMap<String, Vec<Value>>,
    /// Ids that are gone: a deleted customer's GET answers its stub, the others 404.
    pub gone: Vec<String>,
    /// Events, newest first.
    pub events: Vec<Value>,
    pub endpoints: Vec<Value>,
    /// Idempotency key → the saved answer (status, body).
    pub keys: HashMap<String, (u16, String)>,
    /// Objects per list page at most (Stripe: `limit`, at most 100).
    pub page_size: usize,
}

struct State {
    account: Account,
    requests: Vec<Recorded>,
    hooks: Vec<Hook>,
}

/// The running stub.
pub struct Stub {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

impl Stub {
    pub fn start(account: Account) -> Stub {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            account: Account {
                page_size: if account.page_size == 0 {
                    100
                } else {
                    account.page_size
                },
                ..account
            },
            requests: Vec::new(),
            hooks: Vec::new(),
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (state.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let s = s.clone();
                std::thread::spawn(move || serve(conn, &s));
            }
        });
        Stub { addr, state, stop }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Adds a fault hook (hooks are asked in order; the first fault wins).
    pub fn hook(&self, hook: impl FnMut(&Recorded, usize) -> Option<Fault> + Send + 'static) {
        self.state.lock().unwrap().hooks.push(Box::new(hook));
    }

    /// Removes every hook.
    pub fn heal(&self) {
        self.state.lock().unwrap().hooks.clear();
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Changes Stripe's side.
    pub fn with_account<T>(&self, f: impl FnOnce(&mut Account) -> T) -> T {
        f(&mut self.state.lock().unwrap().account)
    }
}

impl Drop for Stub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve(mut conn: TcpStream, state: &Mutex<State>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let Some(req) = read_request(&mut conn) else {
        return;
    };
    let fault = {
        let mut s = state.lock().unwrap();
        let n = s.requests.len();
        s.requests.push(req.clone());
        let mut fault = None;
        for hook in &mut s.hooks {
            if let Some(f) = hook(&req, n) {
                fault = Some(f);
                break;
            }
        }
        fault
    };
    let (status, headers, body) = match fault {
        Some(Fault::Drop) => return,
        Some(Fault::Answer {
            status,
            headers,
            body,
        }) => (status, headers, body),
        Some(Fault::DropAfterWork) => {
            let _ = answer(&req, &mut state.lock().unwrap().account);
            return;
        }
        None => answer(&req, &mut state.lock().unwrap().account),
    };
    let mut head = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\nRequest-Id: req_stub{}\r\n",
        body.len(),
        state.lock().unwrap().requests.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = conn.write_all(head.as_bytes());
    let _ = conn.write_all(body.as_bytes());
    let _ = conn.flush();
}

fn read_request(conn: &mut TcpStream) -> Option<Recorded> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = conn.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, target) = (first.next()?.to_owned(), first.next()?.to_owned());
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + 4 + len {
        let n = conn.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&buf[head_end + 4..head_end + 4 + len]).to_string();
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    Some(Recorded {
        method,
        path: decode(path),
        query: form(query),
        headers,
        body,
        at: Instant::now(),
    })
}

/// `a=1&b=%20` → pairs, decoded.
pub fn form(text: &str) -> Vec<(String, String)> {
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let s = s.replace('+', " ");
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).to_string()
}

fn error(
    status: u16,
    error_type: &str,
    code: &str,
    message: &str,
) -> (u16, Vec<(String, String)>, String) {
    (
        status,
        Vec::new(),
        json!({"error": {"type": error_type, "code": code, "message": message}}).to_string(),
    )
}

/// Stripe's answer to `req`.
fn answer(req: &Recorded, a: &mut Account) -> (u16, Vec<(String, String)>, String) {
    let Some(rest) = req.path.strip_prefix("/v1/") else {
        return error(
            404,
            "invalid_request_error",
            "resource_missing",
            "no such path",
        );
    };
    if req
        .header("Authorization")
        .is_none_or(|v| !v.starts_with("Bearer "))
    {
        return error(401, "invalid_request_error", "api_key_missing", "no key");
    }
    match (req.method.as_str(), rest) {
        ("POST", "webhook_endpoints") => {
            if let Some(key) = req.header("Idempotency-Key") {
                if let Some((status, body)) = a.keys.get(key) {
                    return (
                        *status,
                        vec![("Idempotent-Replayed".into(), "true".into())],
                        body.clone(),
                    );
                }
            }
            let params = form(&req.body);
            let url = params
                .iter()
                .find(|(k, _)| k == "url")
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            let events: Vec<String> = params
                .iter()
                .filter(|(k, _)| k.starts_with("enabled_events"))
                .map(|(_, v)| v.clone())
                .collect();
            let n = a.endpoints.len() + 1;
            let mut endpoint = stripe_inbox::event::testevent::fixture("webhook_endpoint").unwrap();
            endpoint["id"] = json!(format!("we_stub{n}"));
            endpoint["url"] = json!(url);
            endpoint["enabled_events"] = json!(events);
            endpoint["api_version"] = json!(params
                .iter()
                .find(|(k, _)| k == "api_version")
                .map(|(_, v)| v.clone()));
            a.endpoints.insert(0, endpoint.clone());
            endpoint["secret"] = json!(format!("whsec_stub_secret_{n}"));
            let body = serde_json::to_string_pretty(&endpoint).unwrap();
            if let Some(key) = req.header("Idempotency-Key") {
                a.keys.insert(key.to_owned(), (200, body.clone()));
            }
            (200, Vec::new(), body)
        }
        ("GET", "webhook_endpoints") => list(req, a.endpoints.clone(), a.page_size),
        ("GET", "events") => {
            let since: i64 = req
                .param("created[gte]")
                .and_then(|v| v.parse().ok())
                .unwrap_or(i64::MIN);
            let events: Vec<Value> = a
                .events
                .iter()
                .filter(|e| e["created"].as_i64().unwrap_or(0) >= since)
                .cloned()
                .collect();
            list(req, events, a.page_size)
        }
        ("GET", _) => {
            // A collection, or one object of it.
            let collection = stripe_inbox::stripe_api::catalog::KINDS
                .iter()
                .any(|k| k.collection == rest);
            if let Some(objects) = a.objects.get(rest).or(collection.then_some(&Vec::new())) {
                let mut objects = objects.clone();
                if rest == "subscriptions" && req.param("status") != Some("all") {
                    // Stripe leaves canceled subscriptions out unless asked for status=all.
                    objects.retain(|o| o["status"] != "canceled");
                }
                return list(req, objects, a.page_size);
            }
            let (collection, id) = rest.rsplit_once('/').unwrap_or(("", rest));
            if a.gone.iter().any(|g| g == id) {
                if collection == "customers" {
                    return (
                        200,
                        Vec::new(),
                        json!({"id": id, "object": "customer", "deleted": true}).to_string(),
                    );
                }
                return error(
                    404,
                    "invalid_request_error",
                    "resource_missing",
                    &format!("No such object: '{id}'"),
                );
            }
            match a
                .objects
                .get(collection)
                .and_then(|all| all.iter().find(|o| o["id"] == id))
            {
                Some(o) => (200, Vec::new(), serde_json::to_string_pretty(o).unwrap()),
                None => error(
                    404,
                    "invalid_request_error",
                    "resource_missing",
                    &format!("No such object: '{id}'"),
                ),
            }
        }
        _ => error(
            404,
            "invalid_request_error",
            "resource_missing",
            "unknown route",
        ),
    }
}

/// One page of `all` (newest first) after `starting_after`, pretty-printed as Stripe does.
fn list(req: &Recorded, all: Vec<Value>, page_size: usize) -> (u16, Vec<(String, String)>, String) {
    let limit: usize = req
        .param("limit")
        .and_then(|v| v.parse().ok())
        .unwrap_or(10)
        .clamp(1, 100)
        .min(page_size);
    let start = match req.param("starting_after") {
        Some(after) => match all.iter().position(|o| o["id"] == after) {
            Some(i) => i + 1,
            None => {
                return error(
                    400,
                    "invalid_request_error",
                    "resource_missing",
                    &format!("No such object: '{after}'"),
                )
            }
        },
        None => 0,
    };
    let page: Vec<Value> = all.iter().skip(start).take(limit).cloned().collect();
    let has_more = start + page.len() < all.len();
    let body = json!({"object": "list", "data": page, "has_more": has_more, "url": req.path});
    (
        200,
        Vec::new(),
        serde_json::to_string_pretty(&body).unwrap(),
    )
}

/// `n` customers made from Stripe's example customer: `cus_stub0000`, ... (newest first:
/// `created` falls with the index).
pub fn customers(n: usize, created: i64) -> Vec<Value> {
    let base = stripe_inbox::event::testevent::fixture("customer").unwrap();
    (0..n)
        .map(|i| {
            let mut c = base.clone();
            c["id"] = json!(format!("cus_stub{i:04}"));
            c["email"] = json!(format!("customer{i}@example.com"));
            c["name"] = json!(format!("Customer {i}"));
            c["created"] = json!(created - i as i64);
            c
        })
        .collect()
}
