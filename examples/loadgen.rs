//! Benchmark load generator for `stripe-inbox`.
//!
//! Starts the server binary on free loopback ports with a throwaway config and database, drives it
//! with signed Stripe-style webhook events over keep-alive HTTP/1.1 connections, then stops it with
//! SIGTERM and prints throughput, latency percentiles, memory and group-commit figures.
//!
//! ```text
//! cargo build --release
//! cargo run --release --example loadgen -- [--bin target/release/stripe-inbox] [--connections 32]
//!     [--duration 10] [--rate EVENTS_PER_SEC] [--body-bytes 2000] [--keep DIR]
//! ```
//!
//! With `--forward fast|slow|down` the server also forwards every event to a `[[forward]]`
//! destination at its defaults (settle 2 s, 8 in flight): an app this process runs that answers
//! 200 at once (`fast`; after the load, the run waits until the app has every event and prints the
//! events/s forwarded), one that takes 500 ms per answer (`slow`), or a port nothing listens on
//! (`down`); the ingest figures are then what the webhook path gives beside that destination.
//!
//! Without `--rate` every connection sends its next request as soon as the previous answer
//! arrives (saturation, closed loop). With `--rate` the total rate is split over the connections
//! and requests are scheduled at fixed intervals (open loop); latency is measured from the
//! scheduled send time, so a server that falls behind shows it in the percentiles.
//!
//! Linux only (reads `/proc/<pid>/status`, stops the server with `kill -TERM`).

use std::collections::hash_map::RandomState;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::hash::{BuildHasher, Hasher};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{self, Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

const IO_TIMEOUT: Duration = Duration::from_secs(10);
const HEALTH_TIMEOUT: Duration = Duration::from_secs(10);
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);
const WEBHOOK_PATH: &str = "/webhooks/stripe";
const DEFAULT_SERVER_LOG: &str = "warn,stripe_inbox::store::writer=info";
/// A fixed-rate connection idle longer than this is reopened before its next request, so the
/// server's keep-alive idle timeout (15 s by default) never closes it under our feet.
const MAX_IDLE: Duration = Duration::from_secs(10);
/// Events in a row that update the same object (per event type).
/// Distinct objects each client thread cycles through per event kind: large enough that an object
/// comes round again only seconds later, so its next event has a newer `created` second.
const OBJECTS_PER_THREAD: u64 = 2000;

const USAGE: &str = "\
usage: loadgen [--bin PATH] [--connections N] [--duration SECS] [--rate EVENTS_PER_SEC]
               [--body-bytes N] [--same-second N] [--forward fast|slow|down] [--keep DIR]
               [--db FILE] [--server-log FILTER]

  --bin PATH          server binary (default: target/release/stripe-inbox; build it first)
  --connections N     client connections, one thread each (default 32)
  --duration SECS     length of the measured run (default 10)
  --rate N            total events/s, fixed-rate open loop (default: saturation, closed loop)
  --body-bytes N      approximate request body size (default 2000)
  --same-second N     events per object visit, all in one second with different data: N > 1
                      makes every visit an undecidable same-second tie, the mirror's worst
                      case (default 1: each event finds its object at an older second)
  --forward MODE      also forward every event to a [[forward]] destination at its defaults:
                      fast (an app here that answers 200 at once; the run then waits for it to
                      have every event and prints the events/s forwarded), slow (500 ms per
                      answer), down (nothing listens), or queue (rows only: settle_ms is an
                      hour, nothing is sent during the run); default: no forwarding
  --keep DIR          keep the config, database and server logs in DIR (created; must not
                      exist or be empty) instead of a temporary directory that is removed
  --db FILE           run on this database instead of a new one (for example one made by
                      `examples/filldb`, to measure ingest as the file grows); it is written to
                      and kept, and the row check counts the rows it held before
  --server-log FILTER RUST_LOG for the server (default warn,stripe_inbox::store::writer=info)
";

// ---------------------------------------------------------------------------------------------
// Command line

struct Args {
    bin: PathBuf,
    connections: usize,
    duration: Duration,
    rate: Option<f64>,
    same_second: u64,
    body_bytes: usize,
    keep: Option<PathBuf>,
    db: Option<PathBuf>,
    server_log: String,
    forward: Option<ForwardMode>,
}

/// What the forwarding destination of `--forward` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ForwardMode {
    Fast,
    Slow,
    Down,
    /// Rows only: the destination settles for an hour, so nothing is sent during the run (what
    /// queueing costs the event's transaction, apart from sending).
    Queue,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        bin: PathBuf::from("target/release/stripe-inbox"),
        connections: 32,
        duration: Duration::from_secs(10),
        rate: None,
        same_second: 1,
        body_bytes: 2000,
        keep: None,
        db: None,
        server_log: DEFAULT_SERVER_LOG.to_string(),
        forward: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        if arg == "-h" || arg == "--help" {
            print!("{USAGE}");
            process::exit(0);
        }
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = || -> Result<String, String> {
            match &inline {
                Some(v) => Ok(v.clone()),
                None => it.next().ok_or_else(|| format!("{flag} needs a value")),
            }
        };
        match flag.as_str() {
            "--bin" => args.bin = PathBuf::from(value()?),
            "--connections" => {
                args.connections = parse_num(&flag, &value()?)?;
                if args.connections == 0 {
                    return Err("--connections must be at least 1".into());
                }
            }
            "--duration" => {
                let secs: f64 = parse_num(&flag, &value()?)?;
                if !(secs > 0.0 && secs.is_finite()) {
                    return Err("--duration must be positive".into());
                }
                args.duration = Duration::from_secs_f64(secs);
            }
            "--rate" => {
                let rate: f64 = parse_num(&flag, &value()?)?;
                if !(rate > 0.0 && rate.is_finite()) {
                    return Err("--rate must be positive".into());
                }
                args.rate = Some(rate);
            }
            "--body-bytes" => args.body_bytes = parse_num(&flag, &value()?)?,
            "--same-second" => {
                args.same_second = parse_num(&flag, &value()?)?;
                if args.same_second == 0 {
                    return Err("--same-second must be at least 1".into());
                }
            }
            "--keep" => args.keep = Some(PathBuf::from(value()?)),
            "--db" => args.db = Some(PathBuf::from(value()?)),
            "--server-log" => args.server_log = value()?,
            "--forward" => {
                args.forward = match value()?.as_str() {
                    "fast" => Some(ForwardMode::Fast),
                    "slow" => Some(ForwardMode::Slow),
                    "down" => Some(ForwardMode::Down),
                    "queue" => Some(ForwardMode::Queue),
                    "none" => None,
                    other => {
                        return Err(format!(
                            "--forward {other:?}: expected fast, slow, down or queue"
                        ))
                    }
                }
            }
            _ => return Err(format!("unknown argument {arg:?}")),
        }
    }
    Ok(args)
}

fn parse_num<T: std::str::FromStr>(flag: &str, s: &str) -> Result<T, String> {
    s.parse()
        .map_err(|_| format!("{flag}: not a valid number: {s:?}"))
}

// ---------------------------------------------------------------------------------------------
// Small helpers

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// 64 random bits from the standard library's per-process random hash keys.
fn random_u64(salt: u64) -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u64(salt);
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(process::id());
    h.finish()
}

const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

fn random_base62(len: usize) -> String {
    let mut out = String::with_capacity(len);
    let mut bits = 0u64;
    let mut left = 0;
    for i in 0..len {
        if left == 0 {
            bits = random_u64(i as u64);
            left = 10; // 10 digits of 6 bits each out of 64 bits
        }
        out.push(BASE62[(bits % 62) as usize] as char);
        bits >>= 6;
        left -= 1;
    }
    out
}

fn hex_into(out: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(HEX[(b >> 4) as usize]);
        out.push(HEX[(b & 15) as usize]);
    }
}

/// A TOML basic string. JSON string escapes are valid TOML escapes.
fn toml_str(s: &str) -> String {
    serde_json::to_string(s).expect("string serialises")
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

// ---------------------------------------------------------------------------------------------
// Minimal HTTP/1.1 client: keep-alive, Content-Length or chunked responses.

struct HttpConn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    last_used: Instant,
}

struct HttpResponse {
    status: u16,
    body: Vec<u8>,
    reusable: bool,
}

impl HttpConn {
    fn connect(addr: SocketAddr) -> io::Result<HttpConn> {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        let writer = stream.try_clone()?;
        Ok(HttpConn {
            reader: BufReader::with_capacity(16 * 1024, stream),
            writer,
            last_used: Instant::now(),
        })
    }

    /// Sends one complete request (head and body in `request`) and reads the whole response.
    fn round_trip(&mut self, request: &[u8], head_only: bool) -> io::Result<HttpResponse> {
        self.writer.write_all(request)?;
        let resp = self.read_response(head_only);
        self.last_used = Instant::now();
        resp
    }

    fn read_line(&mut self, line: &mut String) -> io::Result<()> {
        line.clear();
        let n = self.reader.read_line(line)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed by the server",
            ));
        }
        if line.len() > 64 * 1024 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
        }
        Ok(())
    }

    fn read_response(&mut self, head_only: bool) -> io::Result<HttpResponse> {
        let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
        let mut line = String::new();
        loop {
            self.read_line(&mut line)?;
            let status_line = line.trim_end().to_string();
            let mut parts = status_line.splitn(3, ' ');
            let version = parts.next().unwrap_or("");
            let status: u16 = parts
                .next()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| bad(format!("bad status line {status_line:?}")))?;
            if !version.starts_with("HTTP/1.") {
                return Err(bad(format!("bad status line {status_line:?}")));
            }
            let mut reusable = version == "HTTP/1.1";
            let mut content_length: Option<u64> = None;
            let mut chunked = false;
            loop {
                self.read_line(&mut line)?;
                let h = line.trim_end();
                if h.is_empty() {
                    break;
                }
                let Some((name, value)) = h.split_once(':') else {
                    return Err(bad(format!("bad header line {h:?}")));
                };
                let value = value.trim();
                if name.eq_ignore_ascii_case("content-length") {
                    content_length = Some(
                        value
                            .parse()
                            .map_err(|_| bad(format!("bad Content-Length {value:?}")))?,
                    );
                } else if name.eq_ignore_ascii_case("transfer-encoding") {
                    chunked = value.to_ascii_lowercase().contains("chunked");
                } else if name.eq_ignore_ascii_case("connection") {
                    let v = value.to_ascii_lowercase();
                    if v.contains("close") {
                        reusable = false;
                    } else if v.contains("keep-alive") {
                        reusable = true;
                    }
                }
            }
            if (100..200).contains(&status) {
                continue; // interim response; the real one follows
            }
            let mut body = Vec::new();
            if head_only || status == 204 || status == 304 {
                // no body
            } else if chunked {
                self.read_chunked(&mut body)?;
            } else if let Some(len) = content_length {
                (&mut self.reader).take(len).read_to_end(&mut body)?;
                if (body.len() as u64) < len {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "response body cut short",
                    ));
                }
            } else {
                // Body delimited by connection close.
                self.reader.read_to_end(&mut body)?;
                reusable = false;
            }
            return Ok(HttpResponse {
                status,
                body,
                reusable,
            });
        }
    }

    fn read_chunked(&mut self, body: &mut Vec<u8>) -> io::Result<()> {
        let mut line = String::new();
        loop {
            self.read_line(&mut line)?;
            let size_text = line.trim_end().split(';').next().unwrap_or("").trim();
            let size = u64::from_str_radix(size_text, 16).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad chunk size {size_text:?}"),
                )
            })?;
            if size == 0 {
                // Trailers, then the empty line.
                loop {
                    self.read_line(&mut line)?;
                    if line.trim_end().is_empty() {
                        return Ok(());
                    }
                }
            }
            let before = body.len();
            (&mut self.reader).take(size).read_to_end(body)?;
            if ((body.len() - before) as u64) < size {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "chunk cut short",
                ));
            }
            self.read_line(&mut line)?; // CRLF after the chunk
        }
    }
}

fn http_get_status(addr: SocketAddr, path: &str) -> io::Result<u16> {
    let mut conn = HttpConn::connect(addr)?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    Ok(conn.round_trip(req.as_bytes(), false)?.status)
}

// ---------------------------------------------------------------------------------------------
// Event bodies: a JSON template per event type, serialised once, filled in per request.

#[derive(Clone, Copy)]
enum Var {
    EventId,
    ObjectId,
    CustomerId,
    RequestId,
    /// Numbers are written without quotes.
    Created,
    Amount,
}

enum Seg {
    Lit(Vec<u8>),
    Var(Var),
}

struct Template {
    segs: Vec<Seg>,
    id_prefix: &'static str,
}

const VARS: &[(&str, Var, bool)] = &[
    ("EVT", Var::EventId, false),
    ("OBJ", Var::ObjectId, false),
    ("CUS", Var::CustomerId, false),
    ("REQ", Var::RequestId, false),
    ("CREATED", Var::Created, true),
    ("AMOUNT", Var::Amount, true),
];

fn ph(name: &str) -> String {
    format!("@@{name}@@")
}

impl Template {
    fn compile(json: &str, id_prefix: &'static str) -> Template {
        let mut segs = Vec::new();
        let mut rest = json;
        while let Some(start) = rest.find("@@") {
            let after = &rest[start + 2..];
            let end = after.find("@@").expect("unterminated placeholder");
            let name = &after[..end];
            let &(_, var, numeric) = VARS
                .iter()
                .find(|(n, _, _)| *n == name)
                .unwrap_or_else(|| panic!("unknown placeholder {name}"));
            let mut lit_end = start;
            let mut next = start + 2 + end + 2;
            if numeric {
                // Drop the quotes around a numeric placeholder.
                assert!(rest[..start].ends_with('"') && rest[next..].starts_with('"'));
                lit_end -= 1;
                next += 1;
            }
            segs.push(Seg::Lit(rest.as_bytes()[..lit_end].to_vec()));
            segs.push(Seg::Var(var));
            rest = &rest[next..];
        }
        segs.push(Seg::Lit(rest.as_bytes().to_vec()));
        Template { segs, id_prefix }
    }
}

struct EventGen {
    templates: Vec<Template>,
    run_tag: String,
    thread: usize,
    seq: u64,
    same_second: u64,
}

impl EventGen {
    fn new(body_bytes: usize, run_tag: &str, thread: usize, same_second: u64) -> EventGen {
        EventGen {
            same_second,
            templates: build_templates(body_bytes, run_tag),
            run_tag: run_tag.to_string(),
            thread,
            seq: 0,
        }
    }

    /// Appends the next event's JSON to `out`.
    fn next_into(&mut self, out: &mut Vec<u8>) {
        let seq = self.seq;
        self.seq += 1;
        let kinds = self.templates.len() as u64;
        let t = &self.templates[(seq % kinds) as usize];
        // Objects are visited in a ring; each visit sends `same_second` events in a row (so in
        // one second, with different amounts: a tie nothing can decide, the projection's worst
        // case), and the ring is long enough that the next visit lands in a later second.
        let obj = (seq / kinds / self.same_second) % OBJECTS_PER_THREAD;
        let now = unix_now();
        for seg in &t.segs {
            match seg {
                Seg::Lit(b) => out.extend_from_slice(b),
                Seg::Var(v) => {
                    let _ = match v {
                        Var::EventId => {
                            write!(out, "evt_{}{:03}{:011}", self.run_tag, self.thread, seq)
                        }
                        Var::ObjectId => write!(
                            out,
                            "{}_{}{:03}{:09}",
                            t.id_prefix, self.run_tag, self.thread, obj
                        ),
                        Var::CustomerId => {
                            write!(out, "cus_{}{:03}{:09}", self.run_tag, self.thread, obj)
                        }
                        Var::RequestId => {
                            write!(out, "req_{}{:03}{:07}", self.run_tag, self.thread, seq)
                        }
                        Var::Created => write!(out, "{now}"),
                        Var::Amount => write!(out, "{}", 500 + (seq * 7919) % 100_000),
                    };
                }
            }
        }
    }
}

fn customer_event() -> serde_json::Value {
    serde_json::json!({
        "id": ph("EVT"),
        "object": "event",
        "api_version": "2024-06-20",
        "created": ph("CREATED"),
        "data": {
            "object": {
                "id": ph("OBJ"),
                "object": "customer",
                "address": {
                    "city": "San Francisco",
                    "country": "US",
                    "line1": "510 Townsend St",
                    "line2": null,
                    "postal_code": "94103",
                    "state": "CA"
                },
                "balance": ph("AMOUNT"),
                "created": 1_680_000_000,
                "currency": "usd",
                "default_source": null,
                "delinquent": false,
                "description": "Load test customer",
                "discount": null,
                "email": "jenny.rosen@example.com",
                "invoice_prefix": "7F3A9B2C",
                "invoice_settings": {
                    "custom_fields": null,
                    "default_payment_method": "pm_1PgaftB7WZ01zgkWm3waTcFp",
                    "footer": null,
                    "rendering_options": null
                },
                "livemode": false,
                "metadata": {"plan_tier": "pro", "crm_id": "crm_0042"},
                "name": "Jenny Rosen",
                "next_invoice_sequence": 7,
                "phone": "+14155550123",
                "preferred_locales": ["en"],
                "shipping": null,
                "tax_exempt": "none",
                "test_clock": null
            },
            "previous_attributes": {"balance": 0, "email": "jenny@example.com"}
        },
        "livemode": false,
        "pending_webhooks": 1,
        "request": {"id": ph("REQ"), "idempotency_key": "5c5d0c8c-8d7e-4a4e-9b1e-2f3a4b5c6d7e"},
        "type": "customer.updated"
    })
}

fn invoice_event() -> serde_json::Value {
    serde_json::json!({
        "id": ph("EVT"),
        "object": "event",
        "api_version": "2024-06-20",
        "created": ph("CREATED"),
        "data": {
            "object": {
                "id": ph("OBJ"),
                "object": "invoice",
                "account_country": "US",
                "account_name": "Acme, Inc.",
                "amount_due": ph("AMOUNT"),
                "amount_paid": ph("AMOUNT"),
                "amount_remaining": 0,
                "attempt_count": 1,
                "attempted": true,
                "billing_reason": "subscription_cycle",
                "collection_method": "charge_automatically",
                "created": 1_680_000_000,
                "currency": "usd",
                "customer": ph("CUS"),
                "customer_email": "jenny.rosen@example.com",
                "customer_name": "Jenny Rosen",
                "hosted_invoice_url": "https://invoice.stripe.com/i/acct_1Nv0FGQ9RKHgCVdK/test_YWNjdF8x",
                "lines": {
                    "object": "list",
                    "data": [{
                        "id": "il_1PgafuB7WZ01zgkWQ0P5t1x9",
                        "object": "line_item",
                        "amount": ph("AMOUNT"),
                        "currency": "usd",
                        "description": "1 x Pro plan (at $20.00 / month)",
                        "period": {"end": 1_682_592_000, "start": 1_680_000_000},
                        "quantity": 1,
                        "type": "subscription"
                    }],
                    "has_more": false,
                    "total_count": 1,
                    "url": "/v1/invoices/in_1PgafuB7WZ01zgkW/lines"
                },
                "livemode": false,
                "metadata": {},
                "number": "7F3A9B2C-0007",
                "paid": true,
                "period_end": 1_682_592_000,
                "period_start": 1_680_000_000,
                "status": "paid",
                "subscription": "sub_1PgafuB7WZ01zgkWd4Jq2Zx1",
                "subtotal": ph("AMOUNT"),
                "total": ph("AMOUNT")
            }
        },
        "livemode": false,
        "pending_webhooks": 1,
        "request": {"id": null, "idempotency_key": null},
        "type": "invoice.paid"
    })
}

fn payment_intent_event() -> serde_json::Value {
    serde_json::json!({
        "id": ph("EVT"),
        "object": "event",
        "api_version": "2024-06-20",
        "created": ph("CREATED"),
        "data": {
            "object": {
                "id": ph("OBJ"),
                "object": "payment_intent",
                "amount": ph("AMOUNT"),
                "amount_capturable": 0,
                "amount_received": ph("AMOUNT"),
                "automatic_payment_methods": {"allow_redirects": "always", "enabled": true},
                "capture_method": "automatic",
                "client_secret": "pi_secret_redacted",
                "confirmation_method": "automatic",
                "created": 1_680_000_000,
                "currency": "usd",
                "customer": ph("CUS"),
                "description": "Subscription update",
                "last_payment_error": null,
                "latest_charge": "ch_1PgafuB7WZ01zgkWXYmPNZs8",
                "livemode": false,
                "metadata": {"order_id": "6735"},
                "payment_method": "pm_1PgaftB7WZ01zgkWm3waTcFp",
                "payment_method_types": ["card"],
                "receipt_email": "jenny.rosen@example.com",
                "setup_future_usage": null,
                "status": "succeeded"
            }
        },
        "livemode": false,
        "pending_webhooks": 1,
        "request": {"id": ph("REQ"), "idempotency_key": "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d"},
        "type": "payment_intent.succeeded"
    })
}

/// Builds the templates, padding each object's metadata so a body is about `body_bytes` long.
fn build_templates(body_bytes: usize, run_tag: &str) -> Vec<Template> {
    type MakeEvent = fn() -> serde_json::Value;
    let kinds: [(MakeEvent, &'static str); 3] = [
        (customer_event, "cus"),
        (invoice_event, "in"),
        (payment_intent_event, "pi"),
    ];
    kinds
        .iter()
        .map(|&(make, prefix)| {
            let value = make();
            let base = Template::compile(&serde_json::to_string(&value).unwrap(), prefix);
            let mut probe = EventGen {
                templates: vec![base],
                run_tag: run_tag.to_string(),
                thread: 0,
                seq: 0,
                same_second: 1,
            };
            let mut sample = Vec::new();
            probe.next_into(&mut sample);
            // `,"notes":"..."` costs 11 bytes besides the text.
            let pad = body_bytes.saturating_sub(sample.len() + 11);
            if pad == 0 {
                return probe.templates.pop().unwrap();
            }
            let mut value = value;
            let filler =
                "Customer requested annual invoicing; follow up with finance before renewal. ";
            let notes: String = filler.chars().cycle().take(pad).collect();
            value["data"]["object"]["metadata"]["notes"] = serde_json::Value::String(notes);
            Template::compile(&serde_json::to_string(&value).unwrap(), prefix)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Client threads

struct ClientCfg {
    addr: SocketAddr,
    path: String,
    mac: HmacSha256,
    start: Instant,
    end: Instant,
    /// Per-connection interval between scheduled sends (fixed-rate mode).
    interval: Option<Duration>,
    connections: usize,
}

#[derive(Default)]
struct ClientResult {
    /// Latency of each 200 answer, in microseconds.
    latencies_us: Vec<u64>,
    sent: u64,
    ok: u64,
    non200: u64,
    statuses: BTreeMap<u16, u64>,
    errors: u64,
    reconnects: u64,
    body_bytes: u64,
    behind_schedule: u64,
    first_error: Option<String>,
    first_non200: Option<String>,
    finished: Option<Instant>,
}

/// Builds a complete signed POST request for the event body in `body`.
fn build_request(out: &mut Vec<u8>, cfg: &ClientCfg, body: &[u8]) {
    let t = unix_now();
    let mut mac = cfg.mac.clone();
    let ts = t.to_string();
    mac.update(ts.as_bytes());
    mac.update(b".");
    mac.update(body);
    let sig = mac.finalize().into_bytes();
    out.clear();
    let _ = write!(
        out,
        "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: Stripe/1.0 (+https://stripe.com/docs/webhooks)\r\n\
         Accept: */*; q=0.5, application/xml\r\nCache-Control: no-cache\r\n\
         Content-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n\
         Stripe-Signature: t={},v1=",
        cfg.path,
        cfg.addr,
        body.len(),
        ts
    );
    hex_into(out, &sig);
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body);
}

fn run_client(cfg: &ClientCfg, mut gen: EventGen) -> ClientResult {
    let mut res = ClientResult::default();
    let mut conn: Option<HttpConn> = None;
    let mut body = Vec::with_capacity(4096);
    let mut request = Vec::with_capacity(4096);
    let idx = gen.thread;
    let mut k: u64 = 0;
    loop {
        // When is this request due?
        let scheduled = match cfg.interval {
            None => {
                if Instant::now() >= cfg.end {
                    break;
                }
                None
            }
            Some(iv) => {
                // Stagger the connections evenly over one interval.
                let phase = iv.mul_f64(idx as f64 / cfg.connections as f64);
                let due = cfg.start + phase + iv.mul_f64(k as f64);
                if due >= cfg.end {
                    break;
                }
                let now = Instant::now();
                if now >= cfg.end {
                    // Behind schedule at the end: count the slots never sent.
                    let left = (cfg.end - due).as_secs_f64() / iv.as_secs_f64();
                    res.behind_schedule += left.ceil() as u64;
                    break;
                }
                if due > now {
                    thread::sleep(due - now);
                }
                k += 1;
                Some(due)
            }
        };

        if let Some(c) = &conn {
            if c.last_used.elapsed() > MAX_IDLE {
                conn = None;
            }
        }
        if conn.is_none() {
            match HttpConn::connect(cfg.addr) {
                Ok(c) => {
                    if res.sent > 0 {
                        res.reconnects += 1;
                    }
                    conn = Some(c);
                }
                Err(e) => {
                    res.errors += 1;
                    res.first_error
                        .get_or_insert_with(|| format!("connect: {e}"));
                    thread::sleep(Duration::from_millis(20));
                    continue;
                }
            }
        }
        let c = conn.as_mut().expect("connected above");

        body.clear();
        gen.next_into(&mut body);
        build_request(&mut request, cfg, &body);
        let sent_at = Instant::now();
        res.sent += 1;
        res.body_bytes += body.len() as u64;
        match c.round_trip(&request, false) {
            Ok(resp) => {
                let done = Instant::now();
                *res.statuses.entry(resp.status).or_default() += 1;
                if resp.status == 200 {
                    res.ok += 1;
                    let lat = done - scheduled.unwrap_or(sent_at);
                    res.latencies_us.push(lat.as_micros() as u64);
                } else {
                    res.non200 += 1;
                    res.first_non200.get_or_insert_with(|| {
                        let text = String::from_utf8_lossy(&resp.body);
                        format!(
                            "{} {}",
                            resp.status,
                            text.chars().take(200).collect::<String>()
                        )
                    });
                }
                if !resp.reusable {
                    conn = None;
                }
            }
            Err(e) => {
                res.errors += 1;
                res.first_error
                    .get_or_insert_with(|| format!("request: {e}"));
                conn = None;
            }
        }
    }
    res.finished = Some(Instant::now());
    res
}

// ---------------------------------------------------------------------------------------------
// Work directory and server process

const CONFIG_FILE: &str = "loadgen.toml";
const DB_FILE: &str = "loadgen.db";
const STDERR_FILE: &str = "server.stderr.log";
const STDOUT_FILE: &str = "server.stdout.log";

struct WorkDir {
    path: PathBuf,
    keep: bool,
}

impl WorkDir {
    /// `--keep DIR` (created, must be empty) or a fresh directory under the system temp dir.
    fn create(keep: &Option<PathBuf>) -> io::Result<WorkDir> {
        if let Some(dir) = keep {
            fs::create_dir_all(dir)?;
            if fs::read_dir(dir)?.next().is_some() {
                return Err(io::Error::other(format!(
                    "--keep {}: directory is not empty",
                    dir.display()
                )));
            }
            return Ok(WorkDir {
                path: dir.canonicalize()?,
                keep: true,
            });
        }
        let base = std::env::temp_dir();
        for attempt in 0..100u64 {
            let path = base.join(format!(
                "stripe-inbox-loadgen-{}-{}",
                process::id(),
                random_u64(attempt) % 1_000_000_000
            ));
            match fs::create_dir(&path) {
                Ok(()) => return Ok(WorkDir { path, keep: false }),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::other("cannot create a temporary directory"))
    }

    fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    fn finish(self) {
        if self.keep {
            println!("  kept              {}", self.path.display());
        } else if let Err(e) = fs::remove_dir_all(&self.path) {
            eprintln!("loadgen: remove {}: {e}", self.path.display());
        }
    }
}

/// The server under test. Dropping it kills the process if it is still running.
struct Server {
    child: Child,
    pid: u32,
    webhook: SocketAddr,
    admin: SocketAddr,
    secret: String,
}

impl Server {
    /// Writes the config into `dir` and starts `bin serve --config ...`.
    fn start(
        bin: &Path,
        dir: &WorkDir,
        args: &Args,
        forward: Option<&ForwardApp>,
    ) -> Result<Server, String> {
        // Free loopback ports: hold both at once so they differ, then let them go.
        let ports = (|| -> io::Result<_> {
            let a = TcpListener::bind("127.0.0.1:0")?;
            let b = TcpListener::bind("127.0.0.1:0")?;
            Ok((a.local_addr()?, b.local_addr()?))
        })();
        let (webhook, admin) = ports.map_err(|e| format!("cannot bind a loopback port: {e}"))?;
        let secret = format!("whsec_{}", random_base62(32));
        let config = format!(
            "# Written by the stripe-inbox load generator.\n\
             [database]\npath = {db}\n\n\
             [webhook]\nlisten = {webhook}\npath = {path}\nsecrets = [{secret}]\n\
             tolerance_secs = 300\nmax_body_bytes = {max_body}\nmax_connections = {max_conns}\n\
             max_connections_per_addr = {max_conns}\n\n\
             [admin]\nlisten = {admin}\n{forward}",
            db = toml_str(&db_path(args, dir).to_string_lossy()),
            webhook = toml_str(&webhook.to_string()),
            path = toml_str(WEBHOOK_PATH),
            secret = toml_str(&secret),
            max_body = (args.body_bytes * 4).max(1 << 20),
            max_conns = (args.connections * 2).max(512),
            admin = toml_str(&admin.to_string()),
            forward = forward
                .map(|app| {
                    format!(
                        "\n[[forward]]\nname = \"bench\"\nurl = {}\nsecret = {}\n{}",
                        toml_str(&app.url),
                        toml_str(FORWARD_SECRET),
                        if app.mode == ForwardMode::Queue {
                            "settle_ms = 3600000\n"
                        } else {
                            ""
                        }
                    )
                })
                .unwrap_or_default(),
        );
        let config_path = dir.file(CONFIG_FILE);
        fs::write(&config_path, config)
            .map_err(|e| format!("write {}: {e}", config_path.display()))?;
        let create = |name| File::create(dir.file(name)).map_err(|e| format!("create {name}: {e}"));
        let child = Command::new(bin)
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .current_dir(&dir.path)
            .env("RUST_LOG", &args.server_log)
            .env_remove("STRIPE_WEBHOOK_SECRET")
            .stdin(Stdio::null())
            .stdout(create(STDOUT_FILE)?)
            .stderr(create(STDERR_FILE)?)
            .spawn()
            .map_err(|e| format!("start {}: {e}", bin.display()))?;
        Ok(Server {
            pid: child.id(),
            child,
            webhook,
            admin,
            secret,
        })
    }

    /// Polls `GET /healthz` until it answers 200. Returns how long that took.
    fn wait_ready(&mut self) -> Result<Duration, String> {
        let boot = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("server exited during start-up: {status}"));
            }
            if let Ok(200) = http_get_status(self.admin, "/healthz") {
                return Ok(boot.elapsed());
            }
            if boot.elapsed() > HEALTH_TIMEOUT {
                return Err(format!(
                    "GET http://{}/healthz did not answer 200 within {} s",
                    self.admin,
                    HEALTH_TIMEOUT.as_secs()
                ));
            }
            thread::sleep(Duration::from_millis(25));
        }
    }

    /// Sends SIGTERM and waits for the exit (SIGKILL after 30 s). Returns how it ended.
    fn stop(&mut self) -> String {
        if let Ok(Some(status)) = self.child.try_wait() {
            return format!("{status}, on its own during the run (see its log above)");
        }
        let term_at = Instant::now();
        let kill_ok = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    return format!(
                        "{status}, {:.2} s after SIGTERM",
                        term_at.elapsed().as_secs_f64()
                    )
                }
                Ok(None) if kill_ok && term_at.elapsed() < EXIT_TIMEOUT => {
                    thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = self.child.kill();
                    let status = self.child.wait();
                    return format!(
                        "did not exit within {} s of SIGTERM{}; killed ({status:?})",
                        EXIT_TIMEOUT.as_secs(),
                        if kill_ok { "" } else { " (kill -TERM failed)" }
                    );
                }
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn read_status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Samples VmRSS every 100 ms on a thread; `stop` returns the peak in KiB.
struct RssSampler {
    stop: Arc<AtomicBool>,
    handle: thread::JoinHandle<u64>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = thread::spawn(move || {
            let mut peak = 0u64;
            while !flag.load(Ordering::Relaxed) {
                if let Some(kib) = read_status_kib(pid, "VmRSS") {
                    peak = peak.max(kib);
                }
                thread::sleep(Duration::from_millis(100));
            }
            peak
        });
        RssSampler { stop, handle }
    }

    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or(0)
    }
}

fn print_server_log(path: &Path) {
    let Ok(text) = fs::read_to_string(path) else {
        return;
    };
    eprintln!(
        "---- server stderr ({}, last 60 lines) ----",
        path.display()
    );
    let lines: Vec<&str> = text.lines().collect();
    for l in &lines[lines.len().saturating_sub(60)..] {
        eprintln!("{l}");
    }
    eprintln!("---- end of server stderr ----");
}

/// Parses `key=value` fields after `writer stats:` in the server's log.
fn parse_writer_stats(log: &str) -> Option<(String, BTreeMap<String, String>)> {
    let line = log.lines().rev().find(|l| l.contains("writer stats:"))?;
    let rest = &line[line.find("writer stats:")?..];
    let fields = rest["writer stats:".len()..]
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter_map(|f| f.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Some((rest.trim().to_string(), fields))
}

/// `--db FILE`, or a new database in the work directory.
fn db_path(args: &Args, dir: &WorkDir) -> PathBuf {
    args.db.clone().unwrap_or_else(|| dir.file(DB_FILE))
}

/// The database's pages in use (its file and WAL, less free pages) per stored event, and the
/// mean raw body length.
#[allow(clippy::disallowed_methods)]
fn disk_per_event(db: &Path) -> Result<(f64, f64), String> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| format!("open {}: {e}", db.display()))?;
    let query = |sql: &str| -> Result<f64, String> {
        conn.query_row(sql, [], |r| r.get::<_, f64>(0))
            .map_err(|e| format!("{sql}: {e}"))
    };
    let (rows, body) = (
        query("SELECT count(*) FROM events")?,
        query("SELECT total(length(body)) FROM events")?,
    );
    let used = (query("PRAGMA page_count")? - query("PRAGMA freelist_count")?)
        * query("PRAGMA page_size")?;
    if rows == 0.0 {
        return Err("no events stored".into());
    }
    Ok((used / rows, body / rows))
}

#[allow(clippy::disallowed_methods)]
fn count_event_rows(db: &Path) -> Result<u64, String> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| format!("open {}: {e}", db.display()))?;
    conn.query_row("SELECT count(*) FROM events", [], |r| r.get::<_, i64>(0))
        .map(|n| n as u64)
        .map_err(|e| format!("SELECT count(*) FROM events: {e}"))
}

// ---------------------------------------------------------------------------------------------
// The forwarding destination (--forward)

/// The secret of the `[[forward]]` block (the app does not verify: it only counts).
const FORWARD_SECRET: &str = "whsec_loadgen_forward_destination";

/// The app of `--forward`: counts what it gets, answers 200 at once or after 500 ms; or, `down`, a
/// loopback port nothing listens on.
struct ForwardApp {
    mode: ForwardMode,
    url: String,
    _server: Option<stripe_inbox::http::Server>,
    received: Arc<std::sync::atomic::AtomicU64>,
    first_last: Arc<std::sync::Mutex<(Option<Instant>, Option<Instant>)>>,
}

impl ForwardApp {
    fn start(mode: ForwardMode) -> Result<ForwardApp, String> {
        use stripe_inbox::http::{Response, Server as HttpServer, ServerConfig};
        let received = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let first_last = Arc::new(std::sync::Mutex::new((None, None)));
        if matches!(mode, ForwardMode::Down | ForwardMode::Queue) {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(|e| format!("cannot bind a loopback port: {e}"))?;
            return Ok(ForwardApp {
                mode,
                url: format!("http://{port}/hook"),
                _server: None,
                received,
                first_last,
            });
        }
        let (count, times) = (received.clone(), first_last.clone());
        let server = HttpServer::bind(
            "127.0.0.1:0",
            ServerConfig {
                name: "forward-app",
                max_connections: 256,
                ..ServerConfig::default()
            },
            Arc::new(move |_req| {
                if mode == ForwardMode::Slow {
                    thread::sleep(Duration::from_millis(500));
                }
                count.fetch_add(1, Ordering::Relaxed);
                let now = Instant::now();
                let mut t = times.lock().unwrap_or_else(|e| e.into_inner());
                t.0.get_or_insert(now);
                t.1 = Some(now);
                Response::json(200, "{}")
            }),
        )
        .map_err(|e| format!("start the forwarding app: {e}"))?;
        Ok(ForwardApp {
            mode,
            url: format!("http://{}/hook", server.local_addr()),
            _server: Some(server),
            received,
            first_last,
        })
    }

    fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// The forwarding lines of the report (the server has stopped: the table is final).
    fn report(&self, start: Instant, run_ended: Instant, db: &Path) -> String {
        let received = self.received();
        let (first, last) = *self.first_last.lock().unwrap_or_else(|e| e.into_inner());
        let states = (|| -> Result<String, String> {
            let conn = stripe_inbox::store::open_read_only(db).map_err(|e| e.to_string())?;
            let mut stmt = conn
                .prepare(
                    "SELECT state, COUNT(*), SUM(attempts) FROM deliveries GROUP BY state ORDER BY state",
                )
                .map_err(|e| e.to_string())?;
            let rows = stmt
                .query_map([], |r| {
                    Ok(format!(
                        "{} {} ({} attempts)",
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?
                    ))
                })
                .map_err(|e| e.to_string())?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(|e| e.to_string())?;
            Ok(rows.join(", "))
        })()
        .unwrap_or_else(|e| format!("cannot read deliveries: {e}"));
        let mut o = String::new();
        let mode = match self.mode {
            ForwardMode::Fast => "fast app (200 at once)",
            ForwardMode::Slow => "slow app (500 ms per answer)",
            ForwardMode::Down => "down (nothing listens)",
            ForwardMode::Queue => "rows only (settle_ms = 1 h: nothing sent)",
        };
        let _ = writeln!(o, "  {:<18}{mode}, {}", "forwarding to", self.url);
        let _ = writeln!(o, "  {:<18}{received} requests answered", "app received");
        if let (ForwardMode::Fast, Some(first), Some(last)) = (self.mode, first, last) {
            let span = last.duration_since(first).as_secs_f64().max(1e-3);
            let _ = writeln!(
                o,
                "  {:<18}{:.1} events/s (first to last delivery, {span:.2} s); the last one {:.2} s after the load ended (settle is 2 s)",
                "forwarded",
                received as f64 / span,
                last.saturating_duration_since(run_ended).as_secs_f64()
            );
            let _ = writeln!(
                o,
                "  {:<18}{:.2} s after the load began",
                "first delivery",
                first.saturating_duration_since(start).as_secs_f64()
            );
        }
        let _ = writeln!(o, "  {:<18}{states}", "deliveries");
        o
    }
}

// ---------------------------------------------------------------------------------------------
// The run

/// Sends one event and requires a 200: a wrong signature, path or config would otherwise fail
/// every request of the run.
fn preflight(cfg: &ClientCfg, mut gen: EventGen) -> Result<(), String> {
    let mut body = Vec::new();
    gen.next_into(&mut body);
    let mut request = Vec::new();
    build_request(&mut request, cfg, &body);
    match HttpConn::connect(cfg.addr).and_then(|mut c| c.round_trip(&request, false)) {
        Ok(r) if r.status == 200 => Ok(()),
        Ok(r) => Err(format!(
            "preflight event answered {} {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        )),
        Err(e) => Err(format!("preflight event failed: {e}")),
    }
}

/// Runs the client threads; returns their merged results and the wall time of the run.
fn run_clients(cfg: ClientCfg, args: &Args, run_tag: &str) -> (Totals, Duration) {
    let cfg = Arc::new(cfg);
    let handles: Vec<_> = (0..args.connections)
        .map(|i| {
            let cfg = cfg.clone();
            let gen = EventGen::new(args.body_bytes, run_tag, i, args.same_second);
            thread::Builder::new()
                .name(format!("client-{i}"))
                .spawn(move || {
                    let now = Instant::now();
                    if cfg.start > now {
                        thread::sleep(cfg.start - now);
                    }
                    run_client(&cfg, gen)
                })
                .expect("spawn client thread")
        })
        .collect();
    let mut totals = Totals::default();
    // A fixed-rate run lasts the whole duration even if its last request was answered early.
    let mut finished = cfg.end;
    for h in handles {
        let r = h.join().expect("client thread panicked");
        finished = finished.max(r.finished.unwrap_or(finished));
        totals.add(r);
    }
    totals.latencies_us.sort_unstable();
    (totals, finished.saturating_duration_since(cfg.start))
}

#[derive(Default)]
struct Totals {
    /// Sorted after the merge.
    latencies_us: Vec<u64>,
    sent: u64,
    ok: u64,
    non200: u64,
    statuses: BTreeMap<u16, u64>,
    errors: u64,
    reconnects: u64,
    body_bytes: u64,
    behind_schedule: u64,
    first_error: Option<String>,
    first_non200: Option<String>,
}

impl Totals {
    fn add(&mut self, r: ClientResult) {
        self.latencies_us.extend_from_slice(&r.latencies_us);
        self.sent += r.sent;
        self.ok += r.ok;
        self.non200 += r.non200;
        self.errors += r.errors;
        self.reconnects += r.reconnects;
        self.body_bytes += r.body_bytes;
        self.behind_schedule += r.behind_schedule;
        for (s, n) in r.statuses {
            *self.statuses.entry(s).or_default() += n;
        }
        self.first_error = self.first_error.take().or(r.first_error);
        self.first_non200 = self.first_non200.take().or(r.first_non200);
    }
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    // Nearest rank.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1000.0
}

struct Report<'a> {
    args: &'a Args,
    bin: &'a Path,
    ready_after: Duration,
    wall: Duration,
    totals: &'a Totals,
    peak_rss_kib: u64,
    hwm_kib: Option<u64>,
    writer_stats: Option<(String, BTreeMap<String, String>)>,
    /// Rows in `events` before the run (`--db`), else 0.
    rows_before: u64,
    db_rows: Result<u64, String>,
    /// Bytes on disk per stored event and the mean raw body, on a database the run started empty.
    disk: Result<(f64, f64), String>,
    exit: String,
    warn_lines: usize,
    forward: Option<String>,
}

impl Report<'_> {
    /// Rows the database must hold: those it had, the run's 200 answers and the preflight event.
    fn expected_rows(&self) -> u64 {
        self.rows_before + self.totals.ok + 1
    }

    fn healthy(&self) -> bool {
        self.totals.non200 == 0
            && self.totals.errors == 0
            && !matches!(self.db_rows, Ok(rows) if rows != self.expected_rows())
    }

    fn render(&self) -> String {
        let (args, t) = (self.args, self.totals);
        let secs = self.wall.as_secs_f64();
        let lat = &t.latencies_us;
        let mut o = String::new();
        let mut line = |label: &str, value: String| {
            let _ = writeln!(o, "  {label:<18}{value}");
        };
        line(
            "server",
            format!(
                "{} (ready in {} ms)",
                self.bin.display(),
                self.ready_after.as_millis()
            ),
        );
        line(
            "mode",
            match args.rate {
                None => "saturation (closed loop)".to_string(),
                Some(r) => {
                    format!("fixed rate {r} events/s (open loop, latency from scheduled send)")
                }
            },
        );
        line("connections", args.connections.to_string());
        line(
            "duration",
            format!("{:.2} s (wall {secs:.3} s)", args.duration.as_secs_f64()),
        );
        line(
            "body",
            format!(
                "{} bytes mean (asked ~{})",
                t.body_bytes.checked_div(t.sent).unwrap_or(0),
                args.body_bytes
            ),
        );
        line("events sent", format!("{} (+1 preflight)", t.sent));
        line("200 answers", t.ok.to_string());
        line("events/s", format!("{:.1}", t.ok as f64 / secs));
        line(
            "latency ms",
            format!(
                "p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  (200 answers only)",
                percentile(lat, 50.0),
                percentile(lat, 90.0),
                percentile(lat, 99.0),
                percentile(lat, 99.9),
                percentile(lat, 100.0)
            ),
        );
        line("non-200", t.non200.to_string());
        if t.non200 > 0 {
            let codes: Vec<String> = t
                .statuses
                .iter()
                .filter(|(s, _)| **s != 200)
                .map(|(s, n)| format!("{s}: {n}"))
                .collect();
            line(
                "",
                format!(
                    "{} (first: {})",
                    codes.join(", "),
                    t.first_non200.as_deref().unwrap_or("")
                ),
            );
        }
        line("errors", t.errors.to_string());
        if let Some(e) = &t.first_error {
            line("", format!("first: {e}"));
        }
        line("reconnects", t.reconnects.to_string());
        if args.rate.is_some() {
            line(
                "behind schedule",
                format!(
                    "{} requests due before the end were never sent",
                    t.behind_schedule
                ),
            );
        }
        line(
            "peak RSS",
            format!(
                "{:.1} MiB (VmRSS every 100 ms); VmHWM {}",
                mib(self.peak_rss_kib),
                self.hwm_kib
                    .map_or("n/a".to_string(), |k| format!("{:.1} MiB", mib(k)))
            ),
        );
        let field = |k: &str| -> Option<u64> { self.writer_stats.as_ref()?.1.get(k)?.parse().ok() };
        let (commits, jobs) = (field("commits"), field("jobs"));
        line(
            "writer",
            match &self.writer_stats {
                Some((text, _)) => text.clone(),
                None => "n/a (no `writer stats:` line in the server log)".to_string(),
            },
        );
        line(
            "commits",
            commits.map_or("n/a".to_string(), |c| {
                format!("{c} ({:.1}/s)", c as f64 / secs)
            }),
        );
        line(
            "jobs/commit",
            match (commits, jobs) {
                (Some(c), Some(j)) if c > 0 => {
                    format!(
                        "{:.1} (mean; a stored event is one job)",
                        j as f64 / c as f64
                    )
                }
                _ => "n/a".to_string(),
            },
        );
        let expected = self.expected_rows();
        line(
            "durability",
            match &self.db_rows {
                Ok(rows) if *rows == expected => {
                    format!("OK: {rows} rows in events = {expected} answers 200 (incl. preflight)")
                }
                Ok(rows) => format!(
                    "MISMATCH: {rows} rows in events, {expected} answers 200 (incl. preflight){}",
                    if t.errors > 0 {
                        "; requests that failed may still have been committed"
                    } else {
                        ""
                    }
                ),
                Err(e) => format!("not checked: {e}"),
            },
        );
        line(
            "disk per event",
            match self.disk {
                Ok((per_event, body)) => format!(
                    "{per_event:.0} bytes (events, mirror, deliveries and indexes) = {:.2}x the raw body ({body:.0} bytes mean)",
                    per_event / body
                ),
                Err(ref e) => e.clone(),
            },
        );
        line("server exit", self.exit.clone());
        line(
            "server warnings",
            format!("{} WARN/ERROR log lines", self.warn_lines),
        );
        if let Some(f) = &self.forward {
            o.push_str(f);
        }
        format!("stripe-inbox load test\n{o}")
    }
}

/// Starts the server, drives it, stops it and prints the figures. `Ok(false)`: the run
/// completed but was not clean (non-200 answers, errors or missing rows).
fn run(args: &Args, bin: &Path, dir: &WorkDir) -> Result<bool, String> {
    let app = match args.forward {
        Some(mode) => Some(ForwardApp::start(mode)?),
        None => None,
    };
    let db = db_path(args, dir);
    let rows_before = if db.exists() {
        count_event_rows(&db)?
    } else {
        0
    };
    let mut server = Server::start(bin, dir, args, app.as_ref())?;
    let ready_after = server.wait_ready()?;
    let run_tag = random_base62(6);
    let client_cfg = |start: Instant, end: Instant| ClientCfg {
        addr: server.webhook,
        path: WEBHOOK_PATH.to_string(),
        mac: HmacSha256::new_from_slice(server.secret.as_bytes())
            .expect("HMAC takes any key length"),
        start,
        end,
        interval: args
            .rate
            .map(|rate| Duration::from_secs_f64(args.connections as f64 / rate)),
        connections: args.connections,
    };
    let now = Instant::now();
    preflight(
        &client_cfg(now, now),
        // A thread index no client uses, so its ids are unique too.
        EventGen::new(
            args.body_bytes,
            &run_tag,
            args.connections,
            args.same_second,
        ),
    )?;

    let sampler = RssSampler::start(server.pid);
    let start = Instant::now() + Duration::from_millis(20);
    let (totals, wall) = run_clients(client_cfg(start, start + args.duration), args, &run_tag);
    let hwm_kib = read_status_kib(server.pid, "VmHWM");
    let peak_rss_kib = sampler.stop();
    if let Ok(Some(_)) = server.child.try_wait() {
        eprintln!("loadgen: the server exited on its own during the run");
        print_server_log(&dir.file(STDERR_FILE));
    }
    let run_ended = Instant::now();
    // A fast app: wait until it has every stored event, to see the forwarding rate.
    if let (Some(app), Ok(rows)) = (&app, count_event_rows(&db)) {
        if app.mode == ForwardMode::Fast {
            let deadline = Instant::now() + Duration::from_secs(180);
            while app.received() < rows && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(50));
            }
        }
    }
    let exit = server.stop();
    let forward = app.map(|app| app.report(start, run_ended, &db));

    let log = fs::read_to_string(dir.file(STDERR_FILE)).unwrap_or_default();
    let report = Report {
        args,
        bin,
        ready_after,
        wall,
        totals: &totals,
        peak_rss_kib,
        hwm_kib,
        writer_stats: parse_writer_stats(&log),
        rows_before,
        db_rows: count_event_rows(&db),
        disk: if rows_before == 0 {
            disk_per_event(&db)
        } else {
            Err("not measured on a database that held rows before the run".into())
        },
        exit,
        warn_lines: log
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .count(),
        forward,
    };
    print!("{}", report.render());
    Ok(report.healthy())
}

fn main() {
    let args = parse_args().unwrap_or_else(|e| {
        eprintln!("loadgen: {e}\n\n{USAGE}");
        process::exit(2);
    });
    let bin = args.bin.canonicalize().unwrap_or_else(|e| {
        eprintln!(
            "loadgen: server binary {}: {e} (build it first: cargo build --release)",
            args.bin.display()
        );
        process::exit(2);
    });
    let dir = WorkDir::create(&args.keep).unwrap_or_else(|e| {
        eprintln!("loadgen: {e}");
        process::exit(1);
    });
    let code = match run(&args, &bin, &dir) {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            // The server has been stopped (dropped) by now; its log is still there.
            eprintln!("loadgen: {e}");
            print_server_log(&dir.file(STDERR_FILE));
            1
        }
    };
    dir.finish();
    process::exit(code);
}
