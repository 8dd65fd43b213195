//! Test support: a service on free loopback ports in a temp dir, a raw HTTP client, signing.

#![allow(dead_code)]

pub mod forward;
pub mod process;
pub mod security;
pub mod stripe_stub;
pub mod tools;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use stripe_inbox::config::Config;
use stripe_inbox::ingest::store::{store_event, Effects, Ingest, Source};
use stripe_inbox::service::Service;
use stripe_inbox::{event::signature, event::testevent, store, time};

pub const SECRET: &str = "whsec_test_secret_for_integration";

pub use stripe_inbox::testkit::TempDir;

/// The `[admin]` keys of a test service without a password: the pages open on loopback (the
/// owner's opt-in; without it they would be closed but for the one-time login link).
pub const OPEN_ADMIN: &str = "password_env = \"\"\nopen_on_loopback = true";

/// Config text for a service in `dir` on free ports (port 0 in-process; real ports for binaries).
/// The admin has no password and is open on loopback ([`OPEN_ADMIN`]).
pub fn config_text(dir: &Path, webhook: &str, admin: &str, extra: &str) -> String {
    config_text_admin(dir, webhook, admin, extra, OPEN_ADMIN)
}

/// [`config_text`] with `admin_extra` in the `[admin]` table.
pub fn config_text_admin(
    dir: &Path,
    webhook: &str,
    admin: &str,
    extra: &str,
    admin_extra: &str,
) -> String {
    format!(
        "[database]\npath = \"{}\"\n{extra}\n[webhook]\nlisten = \"{webhook}\"\nsecrets = [\"{SECRET}\"]\nsecrets_env = \"\"\n\n[admin]\nlisten = \"{admin}\"\n{admin_extra}\n",
        dir.join("inbox.db").display()
    )
}

/// The variable that holds [`ADMIN_PASSWORD`] for tests that start the admin with a password.
pub const ADMIN_PASSWORD_ENV: &str = "STRIPE_INBOX_IT_ADMIN_PASSWORD";
pub const ADMIN_PASSWORD: &str = "correct horse battery staple";

/// Sets [`ADMIN_PASSWORD_ENV`] once for the whole test process (before any service reads it).
pub fn set_admin_password_env() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| std::env::set_var(ADMIN_PASSWORD_ENV, ADMIN_PASSWORD));
}

/// A free loopback port (bound, read, released), never the same twice in one test process: a
/// port just released may come back from the next bind, and a test that asks for a webhook and
/// an admin port once got the same one for both ("Address already in use" at start).
pub fn free_addr() -> String {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    loop {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        if GIVEN.lock().unwrap().insert(addr.port()) {
            return addr.to_string();
        }
    }
}

/// The service running in this process.
pub struct TestApp {
    pub dir: TempDir,
    pub config: Config,
    pub service: Option<Service>,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
}

impl TestApp {
    pub fn start() -> TestApp {
        TestApp::start_with("")
    }

    /// `database_extra` is appended to the `[database]` table (e.g. `queue_capacity = 1`).
    pub fn start_with(database_extra: &str) -> TestApp {
        TestApp::start_in(TempDir::new("app"), database_extra, OPEN_ADMIN)
    }

    /// A service whose admin listener asks for [`ADMIN_PASSWORD`].
    pub fn start_with_admin_password() -> TestApp {
        set_admin_password_env();
        let admin = format!("password_env = \"{ADMIN_PASSWORD_ENV}\"");
        TestApp::start_in(TempDir::new("app"), "", &admin)
    }

    /// A service on a database prepared in `dir` beforehand.
    pub fn start_in(dir: TempDir, database_extra: &str, admin_extra: &str) -> TestApp {
        let text = config_text_admin(
            dir.path(),
            "127.0.0.1:0",
            "127.0.0.1:0",
            database_extra,
            admin_extra,
        );
        TestApp::start_on(dir, &text)
    }

    /// A service on this config text (written to `dir/config.toml`).
    pub fn start_on(dir: TempDir, text: &str) -> TestApp {
        let path = dir.path().join("config.toml");
        std::fs::write(&path, text).unwrap();
        let config = Config::load(&path).unwrap();
        let service = Service::start(&config).unwrap();
        let addr = service.webhook_addr();
        let admin = service.admin_addr();
        TestApp {
            dir,
            config,
            service: Some(service),
            addr,
            admin,
        }
    }

    pub fn db_path(&self) -> PathBuf {
        self.config.database.path.clone()
    }

    pub fn stop(&mut self) {
        if let Some(service) = self.service.take() {
            service.shutdown();
        }
    }

    /// POSTs `body` to the webhook path with these extra header lines.
    pub fn post(&self, body: &[u8], headers: &[(&str, &str)]) -> Reply {
        post(self.addr, "/webhooks/stripe", body, headers)
    }

    /// POSTs a correctly signed body.
    pub fn post_signed(&self, body: &[u8]) -> Reply {
        let sig = signature::sign(body, SECRET, time::now_ms() / 1000);
        self.post(body, &[("Stripe-Signature", &sig)])
    }

    pub fn event_count(&self) -> i64 {
        event_count(&self.db_path())
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn event_count(db: &Path) -> i64 {
    let conn = store::open_read_only(db).unwrap();
    conn.query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))
        .unwrap()
}

/// An answer from the server.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

/// Sends one raw request on a new connection and reads the whole answer (`Connection: close`).
pub fn raw(addr: SocketAddr, request: &[u8]) -> Reply {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request).unwrap();
    read_reply(&mut stream)
}

/// Reads one response (head + Content-Length body) from a stream.
pub fn read_reply(stream: &mut TcpStream) -> Reply {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let n = stream.read(&mut chunk).unwrap();
                assert!(n > 0, "connection closed mid-body");
                buf.extend_from_slice(&chunk[..n]);
            }
            let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
            let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).to_string();
            return Reply { status, head, body };
        }
        let n = stream.read(&mut chunk).unwrap();
        assert!(
            n > 0,
            "connection closed before a response: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A POST with `Connection: close`.
pub fn post(addr: SocketAddr, path: &str, body: &[u8], headers: &[(&str, &str)]) -> Reply {
    raw(addr, &request("POST", path, body, headers, true))
}

/// Builds request bytes.
pub fn request(
    method: &str,
    path: &str,
    body: &[u8],
    headers: &[(&str, &str)],
    close: bool,
) -> Vec<u8> {
    let mut out = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
    );
    for (n, v) in headers {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    if close {
        out.push_str("Connection: close\r\n");
    }
    out.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// A request that POSTs `body` to the webhook path, signed now with [`SECRET`].
pub fn signed_request(body: &[u8], close: bool) -> Vec<u8> {
    let sig = signature::sign(body, SECRET, time::now_ms() / 1000);
    request(
        "POST",
        "/webhooks/stripe",
        body,
        &[("Stripe-Signature", &sig)],
        close,
    )
}

/// A realistic event body of `event_type` created now.
pub fn event(event_type: &str) -> Vec<u8> {
    let event = testevent::build(event_type, time::now_ms() / 1000).unwrap();
    serde_json::to_vec_pretty(&event).unwrap()
}

/// The `id` of an event body.
pub fn event_id(body: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap();
    v["id"].as_str().unwrap().to_string()
}

/// Writes `n` realistic events about `customers` customers, arrived over the last `hours` hours
/// (more by day than by night), into the database at `db` through the one store path, as the
/// writer stores them. For a service started on the file after.
pub fn prefill(db: &Path, n: usize, customers: usize, hours: i64) {
    const TYPES: &[&str] = &[
        "customer.created",
        "checkout.session.completed",
        "customer.subscription.created",
        "invoice.created",
        "invoice.finalized",
        "payment_intent.created",
        "payment_intent.succeeded",
        "charge.succeeded",
        "invoice.paid",
        "customer.subscription.updated",
        "customer.updated",
        "invoice.payment_failed",
        "charge.refunded",
        "customer.subscription.deleted",
    ];
    let conn = store::open_writer(db).unwrap();
    let now_ms = time::now_ms();
    let start_ms = now_ms - hours * 3_600_000;
    // Arrival times: a daily curve, sorted.
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut rand = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut times: Vec<i64> = Vec::with_capacity(n);
    while times.len() < n {
        let t = start_ms + (rand() % (hours as u64 * 3_600_000)) as i64;
        let hour = (t / 3_600_000) % 24;
        let weight = 1.0 + (((hour as f64 - 14.0) / 24.0) * std::f64::consts::TAU).cos();
        if (rand() % 1000) as f64 / 500.0 < weight {
            times.push(t);
        }
    }
    times.sort_unstable();
    let tx = conn.unchecked_transaction().unwrap();
    let names = [
        "Ada Lovelace",
        "Grace Hopper",
        "Alan Turing",
        "Zoë Müller",
        "José Núñez",
    ];
    let mut previous: Option<(usize, &str, i64)> = None;
    for (i, at) in times.into_iter().enumerate() {
        let mut c = (rand() as usize) % customers.max(1);
        let mut t = TYPES[(rand() as usize) % TYPES.len()];
        // Most arrive within seconds; a few were delayed for minutes (older than what the
        // mirror holds by then), and some share their second with the previous event.
        let created = match rand() % 100 {
            0..=5 => at / 1000 - 60 - (rand() % 900) as i64,
            _ => at / 1000 - (rand() % 3) as i64,
        };
        // Now and then a second update to the same object in the same second, with other data
        // and nothing to order them by: a tie the mirror settles by arrival (flagged uncertain).
        let tie = match previous {
            Some((pc, pt, pcreated)) if rand() % 100 < 3 && pt.ends_with(".updated") => {
                (c, t) = (pc, pt);
                Some(pcreated)
            }
            _ => None,
        };
        let created = tie.unwrap_or(created);
        previous = Some((c, t, created));
        let mut event = testevent::build(t, created).unwrap();
        let object = &mut event["data"]["object"];
        let kind = object["object"].as_str().unwrap_or("").to_string();
        let prefix = object["id"]
            .as_str()
            .and_then(|id| id.split('_').next())
            .unwrap_or("obj")
            .to_string();
        let cus = format!("cus_Shop{c:06}");
        if kind == "customer" {
            object["id"] = cus.clone().into();
            object["email"] = format!("customer{c}@example.com").into();
            object["name"] = names[c % names.len()].into();
            object["metadata"] = serde_json::json!({ "user_id": format!("u{c}") });
        } else {
            object["id"] = format!("{prefix}_Shop{c:06}").into();
            object["customer"] = cus.into();
        }
        if tie.is_some() {
            object["metadata"] = serde_json::json!({ "note": format!("edit {i}") });
            if let Some(data) = event["data"].as_object_mut() {
                data.remove("previous_attributes");
            }
        }
        let body = serde_json::to_vec_pretty(&event).unwrap();
        let ingest = Ingest {
            envelope: stripe_inbox::event::envelope::parse(&body).unwrap(),
            body,
            secret_index: Some(0),
            received_at_ms: at,
            source: Source::Webhook,
        };
        store_event(&tx, &ingest, &Effects::default()).unwrap();
        // One event in forty was delivered twice.
        if rand() % 40 == 0 {
            store_event(&tx, &ingest, &Effects::default()).unwrap();
        }
    }
    tx.commit().unwrap();
}
