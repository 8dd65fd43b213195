//! A small HTTP/1.1 server core on `std::net`, used by the webhook and admin listeners.
//!
//! # What it owns
//! Accepting TCP connections; framing requests (`wire::Framer`: the head parsed by `httparse`
//! and held to stricter rules, bodies framed by `Content-Length` or `Transfer-Encoding: chunked`);
//! keep-alive and pipelining; `Expect: 100-continue`; writing responses; timeouts; the bounds on
//! open connections, overall and per client address; who the client is behind a trusted proxy;
//! one log line per request; and a graceful shutdown. Routing and everything else belongs to the
//! [`Handler`]: it gets a complete [`Request`] and returns a [`Response`].
//!
//! # Why not tiny_http
//! tiny_http 0.12 hands accepted connections to a task pool that strands them in bursts (a
//! thread that was notified still counts as waiting, so new connections queue behind busy
//! threads), and an idle keep-alive connection holds a pool thread forever: there is no idle
//! timeout, and its accepted sockets cannot be reached to set one.
//!
//! # Threading model
//! One acceptor thread (`{name}-accept`) blocks in `accept()`. Every accepted connection gets a
//! thread of its own (`{name}-conn`, 512 KiB stack) that serves its requests in sequence and runs
//! the handler, so no connection ever waits behind another one and none is left unread. A
//! panicking handler is caught and answered 500.
//!
//! # Holding against a hostile client
//! The webhook listener faces the internet; one address must not be able to keep genuine
//! senders out (issue 13). Every way a connection can hold a slot is bounded:
//! - **Per address**: at most `max_connections_per_addr` connections count under one client
//!   address (an IPv6 client by its /64); at the limit the address's own longest-idle
//!   connection is closed for its new one, else the new one is refused (503).
//! - **Overall**: at `max_connections`, the longest-idle connection (waiting for a request, of any
//!   address) is closed to make room; only when none is idle is a new connection refused with
//!   `503`, `Retry-After: 1` and `Connection: close`, answered by the acceptor at once.
//! - **Idle**: waiting for a request (before the first one or between them) lasts at most
//!   `idle_timeout`; then the connection is closed without a word.
//! - **Slow senders**: once the first byte of a request has arrived, its head and body must all
//!   arrive within `request_timeout`, or it is answered 408 and closed (a slowloris is cut off).
//! - **Slow readers**: a connection may keep its answers waiting for the client to read them for
//!   at most `write_timeout` in total over its life (a write that the socket takes at once costs
//!   nothing); past that the connection is dropped. This bounds one slow answer and a client that
//!   pipelines requests and reads the answers a few bytes at a time alike.
//! - **Behind a proxy**: the client address is the TCP peer, unless the peer is in
//!   `trusted_proxies`; then it is the address `X-Forwarded-For` names (see `peers`). A
//!   trusted proxy's connection counts under the client whose request it carries.
//!
//! Log lines of refused connections are throttled to one a second per listener.
//!
//! After a response that closes the connection, unread bytes from the client are drained for at
//! most 1 s, so the close does not reset the connection before the client has read the answer.
//!
//! # Shutdown
//! [`Server::shutdown`] stops the acceptor (woken by a connection to our own address), closes
//! connections idle between requests, lets a request that is being read or handled finish and
//! answers it with `Connection: close`, then waits for the connection threads to end, for at
//! most the grace period. Dropping a [`Server`] also stops accepting, without waiting.

mod connection;
mod peers;
mod registry;
mod server;
mod wire;

#[cfg(test)]
mod tests;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

pub use peers::{limit_key, parse_trusted, Cidr};
pub use server::Server;
use wire::header_values;

/// Most headers a request head may carry (more → 431).
const MAX_HEADERS: usize = 64;
/// Largest request head, and largest chunked trailer section (larger → 431).
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Longest chunk-size line, extensions included (longer → 400).
const MAX_CHUNK_LINE: usize = 4 * 1024;
/// Read timeout of one blocking read: how often shutdown and the idle timeout are looked at.
const POLL: Duration = Duration::from_millis(250);
/// Write timeout of the acceptor's 503 answer.
const REJECT_WRITE_TIMEOUT: Duration = Duration::from_millis(200);
/// How long unread client bytes are drained after a response that closes the connection.
const LINGER: Duration = Duration::from_secs(1);
/// The same while shutting down.
const LINGER_STOPPING: Duration = Duration::from_millis(100);
/// Most bytes drained while lingering.
const LINGER_MAX_BYTES: usize = 1024 * 1024;
/// Stack of the acceptor and connection threads.
const THREAD_STACK: usize = 512 * 1024;
/// Bytes asked for by one read.
const READ_CHUNK: usize = 8 * 1024;
/// Interim answer to `Expect: 100-continue`.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// A complete request, body included.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    /// Request target without the query; percent-encoding left as is.
    pub path: String,
    /// Raw text after '?', "" when none.
    pub query: String,
    /// As received (names in their original case), values trimmed; an absolute-form target's
    /// authority replaces the value of `Host` (RFC 9112 §3.2.2).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The TCP peer.
    pub remote: SocketAddr,
    /// The client: the peer's address, or behind a trusted proxy the address its
    /// `X-Forwarded-For` names. What per-client limits (connections, logins) count by.
    pub client: IpAddr,
}

impl Request {
    /// The first header called `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header_values(&self.headers, name).next()
    }

    /// How many times a header called `name` occurs (ASCII case-insensitive).
    pub fn header_count(&self, name: &str) -> usize {
        header_values(&self.headers, name).count()
    }

    /// The token of an `Authorization: Bearer <token>` header: the scheme in any case (RFC 9110
    /// §11.1), the token as sent (RFC 6750's token68 has no spaces).
    pub fn bearer(&self) -> Option<&str> {
        bearer(self.header("authorization")?)
    }
}

fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once([' ', '\t'])?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// A response. The server adds `Content-Length` and, when needed, `Connection`: any
/// `Content-Length`, `Transfer-Encoding` or `Connection` header set here is not sent as is
/// (a `Connection: close` here makes the server close the connection after this response).
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Extra `key=value` fields the server appends to its one log line for this request.
    pub log: String,
}

impl Response {
    pub fn new(status: u16) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            log: String::new(),
        }
    }

    /// A `text/plain; charset=utf-8` response.
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response::with_body(status, "text/plain; charset=utf-8", body.into())
    }

    /// An `application/json` response.
    pub fn json(status: u16, body: impl Into<String>) -> Response {
        Response::with_body(status, "application/json", body.into())
    }

    /// A JSON error answer, `{"error":"..."}`: what the webhook and the read API send for every
    /// refusal.
    pub fn json_error(status: u16, msg: &str) -> Response {
        Response::json(status, serde_json::json!({ "error": msg }).to_string())
    }

    /// A `text/html; charset=utf-8` response.
    pub fn html(status: u16, body: impl Into<String>) -> Response {
        Response::with_body(status, "text/html; charset=utf-8", body.into())
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Response {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Appends `key=value` fields to this request's log line (space separated).
    pub fn with_log(mut self, fields: impl Into<String>) -> Response {
        let fields = fields.into();
        if !self.log.is_empty() && !fields.is_empty() {
            self.log.push(' ');
        }
        self.log.push_str(&fields);
        self
    }

    fn with_body(status: u16, content_type: &str, body: String) -> Response {
        Response {
            body: body.into_bytes(),
            ..Response::new(status)
        }
        .with_header("Content-Type", content_type)
    }
}

/// Called on the connection's thread for every request.
pub type Handler = Arc<dyn Fn(Request) -> Response + Send + Sync>;

#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// "webhook" or "admin": thread names and the log line prefix.
    pub name: &'static str,
    /// Largest request body. Defaults to 1 MiB.
    pub max_body_bytes: usize,
    /// Open connections at once. Defaults to 512.
    pub max_connections: usize,
    /// Open connections counted under one client address (an IPv6 client by its /64).
    /// Defaults to 128.
    pub max_connections_per_addr: usize,
    /// Peers whose `X-Forwarded-For` is believed. Defaults to none.
    pub trusted_proxies: Vec<Cidr>,
    /// Waiting for a request, before the first one or between them. Defaults to 15 s.
    pub idle_timeout: Duration,
    /// Whole request (head + body) once its first byte arrived. Defaults to 10 s.
    pub request_timeout: Duration,
    /// Time a connection may keep its answers waiting for the client to read them, in total over
    /// its life. Defaults to 10 s.
    pub write_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            name: "http",
            max_body_bytes: 1024 * 1024,
            max_connections: 512,
            max_connections_per_addr: 128,
            trusted_proxies: Vec::new(),
            idle_timeout: Duration::from_secs(15),
            request_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
        }
    }
}

pub(super) struct Shared {
    pub(super) config: ServerConfig,
    pub(super) handler: Handler,
    pub(super) stopping: AtomicBool,
    /// Connection threads running (what shutdown waits for).
    pub(super) open: AtomicUsize,
    /// Connections admitted, by address (what the limits count).
    registry: registry::Registry,
    pub(super) lock: Mutex<()>,
    pub(super) all_closed: Condvar,
    reject_log: server::Throttle,
}

/// `{name} {method} {path} status={status} ms={ms:.2} peer={peer}[ client={client}] {extra}`:
/// `client=` when the client is not the peer (behind a trusted proxy).
#[allow(clippy::too_many_arguments)]
pub(super) fn log_line(
    name: &str,
    method: &str,
    path: &str,
    status: u16,
    elapsed: Duration,
    peer: SocketAddr,
    client: IpAddr,
    extra: &str,
) -> String {
    let ms = elapsed.as_secs_f64() * 1000.0;
    let mut line = format!("{name} {method} {path} status={status} ms={ms:.2} peer={peer}");
    if client != peer.ip().to_canonical() {
        line.push_str(&format!(" client={client}"));
    }
    if !extra.is_empty() {
        line.push(' ');
        line.push_str(extra);
    }
    line
}

/// What [`frame_for_fuzzing`] found in a byte stream.
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq)]
pub enum Framed {
    /// A whole request: method, path, query, HTTP/1.x minor version, headers, body, and whether
    /// the connection would stay open after it.
    Request {
        method: String,
        path: String,
        query: String,
        minor: u8,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        keep_alive: bool,
    },
    /// The stream is refused with this status (and reason, as logged); the connection closes.
    Refused(u16, &'static str),
    /// The stream ends inside a request.
    Incomplete,
}

/// For the fuzzers and the corpus replay test: frames `data` into requests exactly as a
/// connection does (the same [`wire::Framer`]), without a socket. The bytes arrive in pieces cut
/// at the offsets in `cuts` (sorted or not, out of range ignored), as reads from a socket would
/// deliver them; the answer must not depend on where the cuts are.
#[doc(hidden)]
pub fn frame_for_fuzzing(data: &[u8], max_body: usize, cuts: &[usize]) -> Vec<Framed> {
    let mut cuts: Vec<usize> = cuts.iter().copied().filter(|c| *c < data.len()).collect();
    cuts.push(data.len());
    cuts.sort_unstable();
    let mut out = Vec::new();
    let mut framer = wire::Framer::new(max_body);
    let (mut start, mut cut) = (0, 0);
    loop {
        let available = &data[start..cuts[cut]];
        let (used, step) = framer.advance(available);
        start += used;
        match step {
            Err(wire::Fail::Answer(status, why)) => {
                out.push(Framed::Refused(status, why));
                return out;
            }
            Err(wire::Fail::Gone(_)) => return out,
            Ok(wire::Step::Head) => {}
            Ok(wire::Step::Done(message)) => {
                let keep_alive = message.head.keep_alive();
                out.push(Framed::Request {
                    method: message.head.method,
                    path: message.head.path,
                    query: message.head.query,
                    minor: message.head.minor,
                    headers: message.head.headers,
                    body: message.body,
                    keep_alive,
                });
                if !keep_alive {
                    return out;
                }
            }
            Ok(wire::Step::More) => {
                if cut + 1 < cuts.len() {
                    cut += 1;
                } else {
                    if start < data.len() {
                        out.push(Framed::Incomplete);
                    }
                    return out;
                }
            }
        }
    }
}
