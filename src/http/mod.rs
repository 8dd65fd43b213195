//! A small HTTP/1.1 server core on `std::net`, used by the webhook and admin listeners.
//!
//! # What it owns
//! Accepting TCP connections; reading requests (the head is parsed by `httparse`, bodies framed
//! by `Content-Length` or `Transfer-Encoding: chunked` are read here); keep-alive and pipelining;
//! `Expect: 100-continue`; writing responses; timeouts; the bound on open connections; one log
//! line per request; and a graceful shutdown. Routing and everything else belongs to the
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
//! the handler, so no connection ever waits behind another one and none is left unread. The
//! number of open connections is an atomic counter, raised by the acceptor before it spawns the
//! thread and lowered when that thread ends. A panicking handler is caught and answered 500.
//!
//! # Timeouts
//! - Between requests the socket is read with a short (250 ms) read timeout in a loop, so that
//!   shutdown and `idle_timeout` are noticed; a connection idle for `idle_timeout` is closed
//!   without a word.
//! - Once the first byte of a request has arrived, its head and body must all arrive within
//!   `request_timeout`, or it is answered 408 and closed (a slowloris is cut off).
//! - Writes time out after 10 s. After a response that closes the connection, unread bytes from
//!   the client are drained for at most 1 s, so the close does not reset the connection before
//!   the client has read the answer.
//!
//! # Connection bound
//! When `max_connections` are open, the acceptor answers a new connection itself with `503`,
//! `Retry-After: 1` and `Connection: close` and closes it: the client hears back at once
//! instead of waiting in a queue.
//!
//! # Shutdown
//! [`Server::shutdown`] stops the acceptor (woken by a connection to our own address), closes
//! connections idle between requests, lets a request that is being read or handled finish and
//! answers it with `Connection: close`, then waits for the open-connection counter to reach 0,
//! for at most the grace period. Dropping a [`Server`] also stops accepting, without waiting.

mod connection;
mod server;
mod wire;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

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
/// Write timeout of a connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
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
    /// As received (names in their original case), values trimmed.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub remote: SocketAddr,
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
    /// Keep-alive idle between requests. Defaults to 15 s.
    pub idle_timeout: Duration,
    /// Whole request (head + body) once its first byte arrived. Defaults to 10 s.
    pub request_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            name: "http",
            max_body_bytes: 1024 * 1024,
            max_connections: 512,
            idle_timeout: Duration::from_secs(15),
            request_timeout: Duration::from_secs(10),
        }
    }
}

pub(super) struct Shared {
    pub(super) config: ServerConfig,
    pub(super) handler: Handler,
    pub(super) stopping: AtomicBool,
    pub(super) open: AtomicUsize,
    pub(super) lock: Mutex<()>,
    pub(super) all_closed: Condvar,
}

/// `{name} {method} {path} status={status} ms={ms:.2} peer={peer} {extra}`.
pub(super) fn log_line(
    name: &str,
    method: &str,
    path: &str,
    status: u16,
    elapsed: Duration,
    peer: SocketAddr,
    extra: &str,
) -> String {
    let ms = elapsed.as_secs_f64() * 1000.0;
    let mut line = format!("{name} {method} {path} status={status} ms={ms:.2} peer={peer}");
    if !extra.is_empty() {
        line.push(' ');
        line.push_str(extra);
    }
    line
}
