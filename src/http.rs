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

use std::fmt::Write as _;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{
    IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs,
};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

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

/// A running server: the acceptor thread and its connection threads.
pub struct Server {
    shared: Arc<Shared>,
    addr: SocketAddr,
    acceptor: Option<JoinHandle<()>>,
}

struct Shared {
    config: ServerConfig,
    handler: Handler,
    stopping: AtomicBool,
    open: AtomicUsize,
    lock: Mutex<()>,
    all_closed: Condvar,
}

impl Server {
    /// Binds (a `&str` like "127.0.0.1:0" or a SocketAddr) and starts the acceptor thread.
    pub fn bind(
        addr: impl ToSocketAddrs,
        config: ServerConfig,
        handler: Handler,
    ) -> io::Result<Server> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            config,
            handler,
            stopping: AtomicBool::new(false),
            open: AtomicUsize::new(0),
            lock: Mutex::new(()),
            all_closed: Condvar::new(),
        });
        let acceptor_shared = Arc::clone(&shared);
        let acceptor = thread::Builder::new()
            .name(format!("{}-accept", shared.config.name))
            .stack_size(THREAD_STACK)
            .spawn(move || accept_loop(listener, acceptor_shared))?;
        log::info!("{} listening on {addr}", shared.config.name);
        Ok(Server {
            shared,
            addr,
            acceptor: Some(acceptor),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop accepting; connections idle between requests are closed; a request being read or
    /// handled is finished and answered (with `Connection: close`). Returns once every
    /// connection thread has ended, or after `grace` has passed (returns false then).
    pub fn shutdown(mut self, grace: Duration) -> bool {
        let deadline = Instant::now() + grace;
        self.stop_accepting();
        let shared = &self.shared;
        let mut guard = shared.lock.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            let open = shared.open.load(Ordering::SeqCst);
            if open == 0 {
                log::info!("{} stopped", shared.config.name);
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                log::warn!(
                    "{} shutdown: {open} connections still open after {grace:?}",
                    shared.config.name
                );
                return false;
            }
            guard = shared
                .all_closed
                .wait_timeout(guard, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    pub fn open_connections(&self) -> usize {
        self.shared.open.load(Ordering::SeqCst)
    }

    /// Sets the stop flag, wakes the acceptor by connecting to it, and waits for it to exit.
    fn stop_accepting(&mut self) {
        if self.shared.stopping.swap(true, Ordering::SeqCst) {
            return;
        }
        let acceptor = self.acceptor.take();
        match TcpStream::connect_timeout(&wake_addr(self.addr), Duration::from_secs(1)) {
            Ok(_) => {
                if let Some(acceptor) = acceptor {
                    let _ = acceptor.join();
                }
            }
            // The acceptor drops whatever it accepts from now on; leave it blocked.
            Err(e) => log::warn!(
                "{} could not wake the acceptor: {e}",
                self.shared.config.name
            ),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop_accepting();
    }
}

/// Where to connect to reach a listener bound to `addr` (unspecified → loopback).
fn wake_addr(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let accepted = listener.accept();
        if shared.stopping.load(Ordering::SeqCst) {
            break;
        }
        match accepted {
            Ok((stream, peer)) => admit(&shared, stream, peer),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::ConnectionAborted | ErrorKind::Interrupted
                ) => {}
            Err(e) => {
                // E.g. out of file descriptors: don't spin.
                log::warn!("{} accept failed: {e}", shared.config.name);
                thread::sleep(Duration::from_millis(20));
            }
        }
    }
    log::debug!("{} acceptor stopped", shared.config.name);
}

/// Lowers the open-connection counter when the connection thread ends (or fails to start).
struct ConnGuard(Arc<Shared>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
        let _guard = self.0.lock.lock().unwrap_or_else(PoisonError::into_inner);
        self.0.all_closed.notify_all();
    }
}

fn admit(shared: &Arc<Shared>, stream: TcpStream, peer: SocketAddr) {
    // Only this thread raises the counter, so it cannot pass the bound between load and add.
    let open = shared.open.load(Ordering::SeqCst);
    if open >= shared.config.max_connections {
        reject_busy(&shared.config, stream, peer, open);
        return;
    }
    shared.open.fetch_add(1, Ordering::SeqCst);
    let guard = ConnGuard(Arc::clone(shared));
    let spawned = thread::Builder::new()
        .name(format!("{}-conn", shared.config.name))
        .stack_size(THREAD_STACK)
        .spawn(move || {
            let guard = guard;
            serve_connection(&guard.0, stream, peer);
        });
    // On failure the closure, and with it the stream and the guard, is dropped.
    if let Err(e) = spawned {
        log::error!(
            "{} could not start a connection thread for {peer}: {e}",
            shared.config.name
        );
    }
}

/// The acceptor's own answer when `max_connections` are open.
fn reject_busy(config: &ServerConfig, mut stream: TcpStream, peer: SocketAddr, open: usize) {
    let started = Instant::now();
    let response = Response::text(503, "server busy\n").with_header("Retry-After", "1");
    let wire = encode(&response, ConnectionHeader::Close, false);
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(Some(REJECT_WRITE_TIMEOUT));
    let written = stream.write_all(&wire);
    let _ = stream.shutdown(Shutdown::Write);
    // Read what already arrived, without waiting, so that closing does not reset the connection.
    if stream.set_nonblocking(true).is_ok() {
        let mut chunk = [0u8; READ_CHUNK];
        for _ in 0..8 {
            match stream.read(&mut chunk) {
                Ok(n) if n > 0 => {}
                _ => break,
            }
        }
    }
    let mut extra = format!("error=max_connections open={open}");
    if written.is_err() {
        extra.push_str(" write=failed");
    }
    log::warn!(
        "{}",
        log_line(config.name, "-", "-", 503, started.elapsed(), peer, &extra)
    );
}

/// One connection's socket and the bytes read from it but not consumed yet.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    pos: usize,
    read_timeout: Option<Duration>,
}

enum ReadOutcome {
    Data,
    Eof,
    TimedOut,
    Failed(io::Error),
}

/// Why a request could not be served.
enum Fail {
    /// Answer with this status (and an `error=` log field), then close.
    Answer(u16, &'static str),
    /// The client went away or the socket failed: close without a word.
    Gone(String),
}

/// What to do with the connection after a request.
enum Next {
    KeepAlive,
    Close,
    Drop,
}

impl Conn {
    fn data(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    fn consume(&mut self, n: usize) {
        self.pos += n;
        debug_assert!(self.pos <= self.buf.len());
        if self.pos >= self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
    }

    /// One read that returns some bytes, unless `until` passes first.
    fn read_more(&mut self, until: Instant) -> ReadOutcome {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        let mut chunk = [0u8; READ_CHUNK];
        loop {
            let now = Instant::now();
            if now >= until {
                return ReadOutcome::TimedOut;
            }
            // Whole milliseconds, so that the socket option changes rarely.
            let left = Duration::from_millis((until - now).as_millis() as u64 + 1);
            let wait = left.min(POLL);
            if self.read_timeout != Some(wait) {
                if let Err(e) = self.stream.set_read_timeout(Some(wait)) {
                    return ReadOutcome::Failed(e);
                }
                self.read_timeout = Some(wait);
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => return ReadOutcome::Eof,
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return ReadOutcome::Data;
                }
                Err(e) if is_retry(&e) => {}
                Err(e) => return ReadOutcome::Failed(e),
            }
        }
    }

    /// Reads more of a request that must be complete by `deadline`.
    fn fill(&mut self, deadline: Instant) -> Result<(), Fail> {
        match self.read_more(deadline) {
            ReadOutcome::Data => Ok(()),
            ReadOutcome::TimedOut => Err(Fail::Answer(408, "request_timeout")),
            ReadOutcome::Eof => Err(Fail::Gone("closed by client".to_string())),
            ReadOutcome::Failed(e) => Err(Fail::Gone(e.to_string())),
        }
    }

    /// Moves exactly `n` more bytes into `out`, reading as needed.
    fn take_into(&mut self, out: &mut Vec<u8>, n: usize, deadline: Instant) -> Result<(), Fail> {
        let mut left = n;
        loop {
            let k = left.min(self.buf.len() - self.pos);
            out.extend_from_slice(&self.buf[self.pos..self.pos + k]);
            self.consume(k);
            left -= k;
            if left == 0 {
                return Ok(());
            }
            self.fill(deadline)?;
        }
    }

    /// Waits for the first byte of the next request. False when the connection should be
    /// closed silently: idle timeout, shutdown, or the client left.
    fn wait_for_request(&mut self, shared: &Shared) -> bool {
        let idle_until = Instant::now() + shared.config.idle_timeout;
        loop {
            // Stray CRLFs between requests are not a request (RFC 9112 §2.2).
            let stray = self
                .data()
                .iter()
                .take_while(|b| matches!(b, b'\r' | b'\n'))
                .count();
            self.consume(stray);
            if !self.data().is_empty() {
                return true;
            }
            if shared.stopping.load(Ordering::SeqCst) {
                return false;
            }
            match self.read_more(idle_until.min(Instant::now() + POLL)) {
                ReadOutcome::Data => {}
                ReadOutcome::TimedOut if Instant::now() < idle_until => {}
                ReadOutcome::TimedOut | ReadOutcome::Eof | ReadOutcome::Failed(_) => return false,
            }
        }
    }

    /// Half-closes, then drains what the client still sends (bounded), then drops the socket.
    fn close(mut self, linger: Duration) {
        let _ = self.stream.shutdown(Shutdown::Write);
        let until = Instant::now() + linger;
        let mut drained = 0;
        while drained < LINGER_MAX_BYTES {
            self.buf.clear();
            self.pos = 0;
            match self.read_more(until) {
                ReadOutcome::Data => drained += self.buf.len(),
                _ => break,
            }
        }
    }
}

fn is_retry(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
    )
}

fn serve_connection(shared: &Shared, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    if let Err(e) = stream.set_write_timeout(Some(WRITE_TIMEOUT)) {
        log::debug!(
            "{} {peer}: cannot set write timeout: {e}",
            shared.config.name
        );
        return;
    }
    let mut conn = Conn {
        stream,
        buf: Vec::new(),
        pos: 0,
        read_timeout: None,
    };
    while conn.wait_for_request(shared) {
        let started = Instant::now();
        match serve_request(shared, &mut conn, peer, started) {
            Next::KeepAlive => {}
            Next::Close => {
                let linger = if shared.stopping.load(Ordering::SeqCst) {
                    LINGER_STOPPING
                } else {
                    LINGER
                };
                conn.close(linger);
                return;
            }
            Next::Drop => return,
        }
    }
}

/// Reads one request (its first byte is buffered), handles it and writes the response.
fn serve_request(shared: &Shared, conn: &mut Conn, peer: SocketAddr, started: Instant) -> Next {
    let name = shared.config.name;
    let deadline = started + shared.config.request_timeout;
    let head = match read_head(conn, deadline) {
        Ok(head) => head,
        Err(fail) => return failed(shared, conn, peer, started, "-", "-", fail),
    };
    let body = match read_body(conn, &head, shared.config.max_body_bytes, deadline) {
        Ok(body) => body,
        Err(fail) => return failed(shared, conn, peer, started, &head.method, &head.path, fail),
    };
    let keep_alive = head.keep_alive();
    let http10 = head.minor == 0;
    let method = head.method.clone();
    let path = head.path.clone();
    let request = Request {
        method: head.method,
        path: head.path,
        query: head.query,
        headers: head.headers,
        body,
        remote: peer,
    };
    let handler = &shared.handler;
    let mut response = match catch_unwind(AssertUnwindSafe(|| handler(request))) {
        Ok(response) => response,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("(no message)");
            log::error!("{name} {method} {path} peer={peer} handler panicked: {what}");
            Response::text(500, "internal server error\n").with_log("error=handler_panic")
        }
    };
    if !(200..=999).contains(&response.status) {
        log::error!(
            "{name} {method} {path} peer={peer} handler returned status {}",
            response.status
        );
        response = Response::text(500, "internal server error\n").with_log("error=bad_status");
    }
    let close = !keep_alive
        || shared.stopping.load(Ordering::SeqCst)
        || has_token(&response.headers, "connection", "close");
    let connection = match (close, http10) {
        (true, _) => ConnectionHeader::Close,
        (false, true) => ConnectionHeader::KeepAlive,
        (false, false) => ConnectionHeader::None,
    };
    let wire = encode(&response, connection, method == "HEAD");
    let written = conn.stream.write_all(&wire);
    log_request(
        name,
        &method,
        &path,
        response.status,
        started,
        peer,
        &response.log,
        &written,
    );
    match (written, close) {
        (Err(_), _) => Next::Drop,
        (Ok(()), true) => Next::Close,
        (Ok(()), false) => Next::KeepAlive,
    }
}

/// Answers a request that could not be read (or drops the connection when the client left).
fn failed(
    shared: &Shared,
    conn: &mut Conn,
    peer: SocketAddr,
    started: Instant,
    method: &str,
    path: &str,
    fail: Fail,
) -> Next {
    let name = shared.config.name;
    match fail {
        Fail::Gone(why) => {
            log::debug!("{name} {method} {path} peer={peer} connection ended mid-request: {why}");
            Next::Drop
        }
        Fail::Answer(status, why) => {
            let body = format!("{}\n", reason(status).to_ascii_lowercase());
            let response = Response::text(status, body).with_log(format!("error={why}"));
            let wire = encode(&response, ConnectionHeader::Close, false);
            let written = conn.stream.write_all(&wire);
            log_request(
                name,
                method,
                path,
                status,
                started,
                peer,
                &response.log,
                &written,
            );
            match written {
                Ok(()) => Next::Close,
                Err(_) => Next::Drop,
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn log_request(
    name: &str,
    method: &str,
    path: &str,
    status: u16,
    started: Instant,
    peer: SocketAddr,
    extra: &str,
    written: &io::Result<()>,
) {
    let mut extra = extra.to_string();
    if let Err(e) = written {
        if !extra.is_empty() {
            extra.push(' ');
        }
        let _ = write!(extra, "write=failed({:?})", e.kind());
    }
    log::info!(
        "{}",
        log_line(name, method, path, status, started.elapsed(), peer, &extra)
    );
}

/// `{name} {method} {path} status={status} ms={ms:.2} peer={peer} {extra}`.
fn log_line(
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

/// A parsed request head.
struct Head {
    method: String,
    path: String,
    query: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    minor: u8,
    headers: Vec<(String, String)>,
}

impl Head {
    fn get(&self, name: &str) -> Option<&str> {
        header_values(&self.headers, name).next()
    }

    fn keep_alive(&self) -> bool {
        if has_token(&self.headers, "connection", "close") {
            false
        } else {
            self.minor >= 1 || has_token(&self.headers, "connection", "keep-alive")
        }
    }
}

fn header_values<'a, 'n>(
    headers: &'a [(String, String)],
    name: &'n str,
) -> impl Iterator<Item = &'a str> + use<'a, 'n> {
    headers
        .iter()
        .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Whether a comma-separated header (all its occurrences) holds `token`.
fn has_token(headers: &[(String, String)], name: &str, token: &str) -> bool {
    header_values(headers, name)
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Parses a complete head at the start of `data`: `None` while it is incomplete.
fn parse_head(data: &[u8]) -> Result<Option<(Head, usize)>, Fail> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut slots);
    match parsed.parse(data) {
        Ok(httparse::Status::Complete(len)) => {
            if len > MAX_HEAD_BYTES {
                return Err(Fail::Answer(431, "head_too_large"));
            }
            let target = parsed.path.unwrap_or("");
            let (path, query) = target.split_once('?').unwrap_or((target, ""));
            let headers = parsed
                .headers
                .iter()
                .map(|h| {
                    let value = String::from_utf8_lossy(h.value).trim().to_string();
                    (h.name.to_string(), value)
                })
                .collect();
            let head = Head {
                method: parsed.method.unwrap_or("").to_string(),
                path: path.to_string(),
                query: query.to_string(),
                minor: parsed.version.unwrap_or(1),
                headers,
            };
            Ok(Some((head, len)))
        }
        Ok(httparse::Status::Partial) if data.len() >= MAX_HEAD_BYTES => {
            Err(Fail::Answer(431, "head_too_large"))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(Fail::Answer(431, "too_many_headers")),
        Err(_) => Err(Fail::Answer(400, "malformed_head")),
    }
}

fn read_head(conn: &mut Conn, deadline: Instant) -> Result<Head, Fail> {
    loop {
        if let Some((head, len)) = parse_head(conn.data())? {
            conn.consume(len);
            return Ok(head);
        }
        conn.fill(deadline)?;
    }
}

/// How a request's body is delimited.
#[derive(Debug, PartialEq)]
enum Framing {
    Empty,
    Length(usize),
    Chunked,
}

fn framing(head: &Head, max: usize) -> Result<Framing, Fail> {
    if head.get("transfer-encoding").is_some() {
        if head.get("content-length").is_some() {
            return Err(Fail::Answer(400, "length_and_transfer_encoding"));
        }
        let mut codings = header_values(&head.headers, "transfer-encoding")
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|c| !c.is_empty());
        return match (codings.next(), codings.next()) {
            (Some(c), None) if c.eq_ignore_ascii_case("chunked") => Ok(Framing::Chunked),
            _ => Err(Fail::Answer(501, "transfer_encoding")),
        };
    }
    let mut length: Option<u64> = None;
    for value in header_values(&head.headers, "content-length").flat_map(|v| v.split(',')) {
        let value = value.trim();
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Fail::Answer(400, "bad_content_length"));
        }
        let n = value.bytes().fold(0u64, |n, b| {
            n.saturating_mul(10).saturating_add(u64::from(b - b'0'))
        });
        match length {
            Some(prev) if prev != n => return Err(Fail::Answer(400, "conflicting_content_length")),
            _ => length = Some(n),
        }
    }
    match length {
        None | Some(0) => Ok(Framing::Empty),
        Some(n) if n > max as u64 => Err(Fail::Answer(413, "body_too_large")),
        Some(n) => Ok(Framing::Length(n as usize)),
    }
}

fn read_body(conn: &mut Conn, head: &Head, max: usize, deadline: Instant) -> Result<Vec<u8>, Fail> {
    let framing = framing(head, max)?;
    let expects_continue = head.minor >= 1
        && head
            .get("expect")
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
    // Only when the client is still waiting: none of the body arrived yet.
    if expects_continue && framing != Framing::Empty && conn.data().is_empty() {
        conn.stream
            .write_all(CONTINUE)
            .map_err(|e| Fail::Gone(e.to_string()))?;
    }
    match framing {
        Framing::Empty => Ok(Vec::new()),
        Framing::Length(n) => {
            let mut body = Vec::with_capacity(n);
            conn.take_into(&mut body, n, deadline)?;
            Ok(body)
        }
        Framing::Chunked => read_chunked(conn, max, deadline),
    }
}

fn read_chunked(conn: &mut Conn, max: usize, deadline: Instant) -> Result<Vec<u8>, Fail> {
    let mut body = Vec::new();
    loop {
        let size = loop {
            let data = conn.data();
            if data.first().is_some_and(|b| !b.is_ascii_hexdigit()) {
                return Err(Fail::Answer(400, "bad_chunk_size"));
            }
            match httparse::parse_chunk_size(data) {
                Ok(httparse::Status::Complete((used, size))) => {
                    conn.consume(used);
                    break size;
                }
                Ok(httparse::Status::Partial) if data.len() > MAX_CHUNK_LINE => {
                    return Err(Fail::Answer(400, "chunk_line_too_long"));
                }
                Ok(httparse::Status::Partial) => conn.fill(deadline)?,
                Err(_) => return Err(Fail::Answer(400, "bad_chunk_size")),
            }
        };
        if size == 0 {
            break;
        }
        if size > (max - body.len()) as u64 {
            return Err(Fail::Answer(413, "body_too_large"));
        }
        conn.take_into(&mut body, size as usize, deadline)?;
        while conn.data().len() < 2 {
            conn.fill(deadline)?;
        }
        if &conn.data()[..2] != b"\r\n" {
            return Err(Fail::Answer(400, "bad_chunk"));
        }
        conn.consume(2);
    }
    // The trailer section, ignored, up to its empty line.
    loop {
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let data = conn.data();
        let parsed = match httparse::parse_headers(data, &mut slots) {
            Ok(httparse::Status::Complete((used, _))) => Some(used),
            Ok(httparse::Status::Partial) if data.len() >= MAX_HEAD_BYTES => {
                return Err(Fail::Answer(431, "trailers_too_large"));
            }
            Ok(httparse::Status::Partial) => None,
            Err(httparse::Error::TooManyHeaders) => {
                return Err(Fail::Answer(431, "too_many_trailers"));
            }
            Err(_) => return Err(Fail::Answer(400, "bad_trailer")),
        };
        match parsed {
            Some(used) => {
                conn.consume(used);
                return Ok(body);
            }
            None => conn.fill(deadline)?,
        }
    }
}

/// The `Connection` header the server adds.
#[derive(Clone, Copy)]
enum ConnectionHeader {
    None,
    Close,
    /// For an HTTP/1.0 client that asked to keep the connection.
    KeepAlive,
}

/// Status line, headers and body in one buffer.
fn encode(response: &Response, connection: ConnectionHeader, head_only: bool) -> Vec<u8> {
    let bodyless = matches!(response.status, 100..=199 | 204 | 304);
    let mut head = String::with_capacity(256);
    let _ = write!(
        head,
        "HTTP/1.1 {} {}\r\n",
        response.status,
        reason(response.status)
    );
    for (name, value) in &response.headers {
        if ["content-length", "transfer-encoding", "connection"]
            .iter()
            .any(|managed| name.eq_ignore_ascii_case(managed))
        {
            continue;
        }
        let name_ok = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b':' && b != b'"');
        let value_ok = !value.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0));
        if !name_ok || !value_ok {
            log::warn!("dropping invalid response header {:?}", name.escape_debug());
            continue;
        }
        let _ = write!(head, "{name}: {value}\r\n");
    }
    if !bodyless {
        let _ = write!(head, "Content-Length: {}\r\n", response.body.len());
    }
    match connection {
        ConnectionHeader::None => {}
        ConnectionHeader::Close => head.push_str("Connection: close\r\n"),
        ConnectionHeader::KeepAlive => head.push_str("Connection: keep-alive\r\n"),
    }
    head.push_str("\r\n");
    let mut wire = head.into_bytes();
    if !head_only && !bodyless {
        wire.extend_from_slice(&response.body);
    }
    wire
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        417 => "Expectation Failed",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}
