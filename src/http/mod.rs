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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::sync::Barrier;

    /// How long a test client waits for any one read.
    const CLIENT_WAIT: Duration = Duration::from_secs(3);

    fn init_logs() {
        let _ = env_logger::builder().is_test(true).try_init();
    }

    /// Echoes what it got (the body itself only when short); `/panic` panics.
    fn echo() -> Handler {
        Arc::new(|req: Request| {
            if req.path == "/panic" {
                panic!("test panic");
            }
            let body = if req.body.len() <= 64 {
                String::from_utf8_lossy(&req.body).into_owned()
            } else {
                "…".to_string()
            };
            Response::text(
                200,
                format!(
                    "{} {} q={} len={} x-test={} n={} body={body}",
                    req.method,
                    req.path,
                    req.query,
                    req.body.len(),
                    req.header("x-test").unwrap_or("-"),
                    req.header_count("X-TEST"),
                ),
            )
            .with_log(format!("len={}", req.body.len()))
        })
    }

    fn config() -> ServerConfig {
        ServerConfig {
            name: "test",
            ..ServerConfig::default()
        }
    }

    fn start(config: ServerConfig) -> Server {
        init_logs();
        Server::bind("127.0.0.1:0", config, echo()).expect("bind")
    }

    fn get(path: &str) -> String {
        format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n")
    }

    fn post(path: &str, body: &str) -> String {
        format!(
            "POST {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    fn wait_until(what: &str, limit: Duration, cond: impl Fn() -> bool) {
        let end = Instant::now() + limit;
        while !cond() {
            assert!(Instant::now() < end, "timed out waiting for {what}");
            thread::sleep(Duration::from_millis(10));
        }
    }

    struct Resp {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Resp {
        fn header(&self, name: &str) -> Option<&str> {
            header_values(&self.headers, name).next()
        }

        fn text(&self) -> String {
            String::from_utf8_lossy(&self.body).into_owned()
        }
    }

    /// A raw HTTP/1.1 client that keeps the bytes read past one response.
    struct Client {
        stream: TcpStream,
        buf: Vec<u8>,
    }

    impl Client {
        fn connect(addr: SocketAddr) -> Client {
            let stream = TcpStream::connect(addr).expect("connect");
            stream.set_read_timeout(Some(CLIENT_WAIT)).unwrap();
            stream.set_nodelay(true).unwrap();
            Client {
                stream,
                buf: Vec::new(),
            }
        }

        fn send(&mut self, bytes: impl AsRef<[u8]>) {
            self.stream.write_all(bytes.as_ref()).expect("send");
        }

        fn call(&mut self, bytes: impl AsRef<[u8]>) -> Resp {
            self.send(bytes);
            self.response()
        }

        fn response(&mut self) -> Resp {
            self.read_response(false).expect("response")
        }

        fn fill(&mut self) -> io::Result<()> {
            let mut chunk = [0u8; 8192];
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
            Ok(())
        }

        fn read_response(&mut self, head_only: bool) -> io::Result<Resp> {
            loop {
                let mut slots = [httparse::EMPTY_HEADER; 64];
                let mut parsed = httparse::Response::new(&mut slots);
                let status = parsed
                    .parse(&self.buf)
                    .map_err(|e| io::Error::other(e.to_string()))?;
                if let httparse::Status::Complete(len) = status {
                    let status = parsed.code.unwrap_or(0);
                    let headers: Vec<(String, String)> = parsed
                        .headers
                        .iter()
                        .map(|h| {
                            let value = String::from_utf8_lossy(h.value).into_owned();
                            (h.name.to_string(), value)
                        })
                        .collect();
                    self.buf.drain(..len);
                    let body_len = if head_only || matches!(status, 100..=199 | 204 | 304) {
                        0
                    } else {
                        header_values(&headers, "content-length")
                            .next()
                            .and_then(|v| v.parse().ok())
                            .ok_or_else(|| io::Error::other("no content-length"))?
                    };
                    while self.buf.len() < body_len {
                        self.fill()?;
                    }
                    let body = self.buf.drain(..body_len).collect();
                    return Ok(Resp {
                        status,
                        headers,
                        body,
                    });
                }
                self.fill()?;
            }
        }

        /// The server closed the connection (EOF or reset) without sending anything more.
        fn expect_closed(&mut self) {
            assert!(self.buf.is_empty(), "unread bytes: {:?}", self.buf);
            let mut chunk = [0u8; 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => {}
                Ok(n) => panic!(
                    "expected close, got {:?}",
                    String::from_utf8_lossy(&chunk[..n])
                ),
                Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
                Err(e) => panic!("expected close, got {e}"),
            }
        }
    }

    #[test]
    fn keep_alive_round_trips_on_one_stream() {
        let server = start(config());
        let mut client = Client::connect(server.local_addr());
        let cases: &[(&str, String, &str)] = &[
            (
                "get with query",
                get("/a?x=1&y=%20"),
                "GET /a q=x=1&y=%20 len=0 x-test=- n=0 body=",
            ),
            (
                "post",
                post("/b", "hello"),
                "POST /b q= len=5 x-test=- n=0 body=hello",
            ),
            (
                "headers trimmed and counted",
                "POST /c HTTP/1.1\r\nHost: t\r\nX-Test:   padded  \r\nx-test: two\r\n\
                 Content-Length: 3\r\n\r\nabc"
                    .to_string(),
                "POST /c q= len=3 x-test=padded n=2 body=abc",
            ),
            (
                "stray CRLF before the request",
                format!("\r\n{}", get("/d")),
                "GET /d q= len=0 x-test=- n=0 body=",
            ),
            (
                "repeated equal lengths",
                "POST /e HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nxyz".to_string(),
                "POST /e q= len=3 x-test=- n=0 body=xyz",
            ),
            (
                "chunked with extension and trailer",
                "POST /f HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
                 5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: x\r\n\r\n"
                    .to_string(),
                "POST /f q= len=11 x-test=- n=0 body=hello world",
            ),
            (
                "chunked, empty",
                "POST /g HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n0\r\n\r\n".to_string(),
                "POST /g q= len=0 x-test=- n=0 body=",
            ),
            (
                "HTTP/1.0 asking for keep-alive",
                "GET /h HTTP/1.0\r\nConnection: keep-alive\r\n\r\n".to_string(),
                "GET /h q= len=0 x-test=- n=0 body=",
            ),
        ];
        for (name, request, body) in cases {
            let resp = client.call(request);
            assert_eq!(resp.status, 200, "{name}");
            assert_eq!(resp.text(), *body, "{name}");
            let connection = if name.starts_with("HTTP/1.0") {
                Some("keep-alive")
            } else {
                None
            };
            assert_eq!(resp.header("connection"), connection, "{name}");
            assert_eq!(
                resp.header("content-type"),
                Some("text/plain; charset=utf-8")
            );
        }
        // HEAD: the length of the body that a GET would get, and no body.
        client.send("HEAD /i HTTP/1.1\r\n\r\n");
        let resp = client.read_response(true).unwrap();
        assert_eq!(resp.status, 200);
        let expected = "HEAD /i q= len=0 x-test=- n=0 body=".len().to_string();
        assert_eq!(resp.header("content-length"), Some(expected.as_str()));
        assert_eq!(client.call(get("/j")).status, 200);
        assert_eq!(server.open_connections(), 1);
        drop(client);
        assert!(server.shutdown(Duration::from_secs(2)));
    }

    #[test]
    fn pipelined_requests_in_one_write() {
        let server = start(config());
        let mut client = Client::connect(server.local_addr());
        client.send(format!(
            "{}{}GET /3 HTTP/1.1\r\nConnection: close\r\n\r\n",
            get("/1"),
            post("/2", "abc")
        ));
        let first = client.response();
        assert_eq!(first.text(), "GET /1 q= len=0 x-test=- n=0 body=");
        assert_eq!(first.header("connection"), None);
        let second = client.response();
        assert_eq!(second.text(), "POST /2 q= len=3 x-test=- n=0 body=abc");
        let third = client.response();
        assert_eq!(third.text(), "GET /3 q= len=0 x-test=- n=0 body=");
        assert_eq!(third.header("connection"), Some("close"));
        client.expect_closed();
    }

    #[test]
    fn bad_requests_are_answered_and_closed() {
        let server = start(ServerConfig {
            max_body_bytes: 64,
            ..config()
        });
        let big_header = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(20 * 1024));
        let many_headers = format!(
            "GET / HTTP/1.1\r\n{}\r\n",
            (0..70).map(|i| format!("X-{i}: v\r\n")).collect::<String>()
        );
        let chunked = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let cases: Vec<(&str, String, u16)> = vec![
            ("garbage", "GARBAGE\r\n\r\n".into(), 400),
            (
                "bad header line",
                "GET / HTTP/1.1\r\nBad Header\r\n\r\n".into(),
                400,
            ),
            ("unknown version", "GET / HTTP/2.0\r\n\r\n".into(), 400),
            (
                "length not a number",
                "POST / HTTP/1.1\r\nContent-Length: abc\r\n\r\n".into(),
                400,
            ),
            (
                "negative length",
                "POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n".into(),
                400,
            ),
            (
                "conflicting lengths",
                "POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd".into(),
                400,
            ),
            (
                "conflicting length list",
                "POST / HTTP/1.1\r\nContent-Length: 3, 4\r\n\r\n".into(),
                400,
            ),
            (
                "length and chunked",
                "POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n".into(),
                400,
            ),
            (
                "gzip",
                "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n".into(),
                501,
            ),
            (
                "gzip, chunked",
                "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n".into(),
                501,
            ),
            // Only the head is sent: the answer must not wait for the body.
            (
                "length over limit",
                "POST / HTTP/1.1\r\nContent-Length: 1000000\r\n\r\n".into(),
                413,
            ),
            (
                "length over limit with expect",
                "POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 65\r\n\r\n".into(),
                413,
            ),
            ("one chunk over limit", format!("{chunked}41\r\n"), 413),
            (
                "chunks adding up past limit",
                format!("{chunked}20\r\n{0}\r\n20\r\n{0}\r\n1\r\n", "x".repeat(32)),
                413,
            ),
            ("bad chunk size", format!("{chunked}zz\r\n"), 400),
            ("missing chunk size", format!("{chunked}\r\n"), 400),
            (
                "chunk without CRLF",
                format!("{chunked}3\r\nabcX\r\n0\r\n\r\n"),
                400,
            ),
            ("head too large", big_header, 431),
            ("too many headers", many_headers, 431),
        ];
        for (name, request, status) in cases {
            let mut client = Client::connect(server.local_addr());
            client.send(request);
            let resp = client.response();
            assert_eq!(resp.status, status, "{name}: {}", resp.text());
            assert_eq!(resp.header("connection"), Some("close"), "{name}");
            client.expect_closed();
        }
        assert!(server.shutdown(Duration::from_secs(2)));
    }

    #[test]
    fn expect_continue_gets_the_interim_answer() {
        let server = start(config());
        let mut client = Client::connect(server.local_addr());
        let cases = [
            (
                "content-length",
                "Content-Length: 2000",
                "a".repeat(2000),
                2000,
            ),
            (
                "chunked",
                "Transfer-Encoding: chunked",
                format!("7d0\r\n{}\r\n0\r\n\r\n", "b".repeat(2000)),
                2000,
            ),
        ];
        for (name, framing, body, len) in cases {
            client.send(format!(
                "POST /e HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n{framing}\r\n\r\n"
            ));
            assert_eq!(client.response().status, 100, "{name}");
            let resp = client.call(body);
            assert_eq!(resp.status, 200, "{name}");
            assert!(resp.text().contains(&format!("len={len} ")), "{name}");
        }
    }

    #[test]
    fn connection_close_and_http10_close() {
        let server = start(config());
        let cases = [
            ("HTTP/1.0", "GET /x HTTP/1.0\r\n\r\n"),
            (
                "Connection: close",
                "GET /x HTTP/1.1\r\nConnection: close\r\n\r\n",
            ),
            (
                "close among tokens",
                "GET /x HTTP/1.1\r\nConnection: TE, Close\r\n\r\n",
            ),
        ];
        for (name, request) in cases {
            let mut client = Client::connect(server.local_addr());
            let resp = client.call(request);
            assert_eq!(resp.status, 200, "{name}");
            assert_eq!(resp.header("connection"), Some("close"), "{name}");
            client.expect_closed();
        }
    }

    /// Sends `bytes` one every 100 ms on a clone of the stream until stopped.
    fn trickle(client: &Client, bytes: &[u8]) -> (Arc<AtomicBool>, JoinHandle<()>) {
        let mut writer = client.stream.try_clone().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (bytes, flag) = (bytes.to_vec(), Arc::clone(&stop));
        let handle = thread::spawn(move || {
            for b in bytes {
                if flag.load(Ordering::SeqCst) || writer.write_all(&[b]).is_err() {
                    return;
                }
                thread::sleep(Duration::from_millis(100));
            }
        });
        (stop, handle)
    }

    #[test]
    fn slowloris_gets_408() {
        let timeout = Duration::from_millis(400);
        let server = start(ServerConfig {
            request_timeout: timeout,
            ..config()
        });
        let cases: [(&str, &str, &str); 2] = [
            (
                "head trickled",
                "",
                "POST /slow HTTP/1.1\r\nHost: test\r\nContent-Length: 3\r\n\r\nabc",
            ),
            (
                "body trickled",
                "POST /slow HTTP/1.1\r\nContent-Length: 30\r\n\r\n",
                "0123456789012345678901234567890",
            ),
        ];
        for (name, head, trickled) in cases {
            let mut client = Client::connect(server.local_addr());
            let started = Instant::now();
            client.send(head);
            let (stop, trickler) = trickle(&client, trickled.as_bytes());
            let resp = client.response();
            let elapsed = started.elapsed();
            stop.store(true, Ordering::SeqCst);
            trickler.join().unwrap();
            assert_eq!(resp.status, 408, "{name}");
            assert_eq!(resp.header("connection"), Some("close"), "{name}");
            assert!(
                elapsed >= timeout - Duration::from_millis(50),
                "{name}: {elapsed:?}"
            );
            assert!(
                elapsed < timeout + Duration::from_millis(500),
                "{name}: {elapsed:?}"
            );
        }
    }

    #[test]
    fn idle_keep_alive_is_closed_silently() {
        let idle = Duration::from_millis(300);
        let server = start(ServerConfig {
            idle_timeout: idle,
            ..config()
        });
        let mut after_request = Client::connect(server.local_addr());
        assert_eq!(after_request.call(get("/")).status, 200);
        let mut never_sent = Client::connect(server.local_addr());
        let started = Instant::now();
        for client in [&mut after_request, &mut never_sent] {
            client.expect_closed();
            let elapsed = started.elapsed();
            assert!(elapsed >= idle - Duration::from_millis(50), "{elapsed:?}");
            assert!(elapsed < idle + Duration::from_millis(500), "{elapsed:?}");
        }
        wait_until("connections to end", Duration::from_secs(1), || {
            server.open_connections() == 0
        });
    }

    #[test]
    fn max_connections_answers_503_at_once() {
        let server = start(ServerConfig {
            max_connections: 2,
            ..config()
        });
        let addr = server.local_addr();
        let mut first = Client::connect(addr);
        let mut second = Client::connect(addr);
        assert_eq!(first.call(get("/1")).status, 200);
        assert_eq!(second.call(get("/2")).status, 200);
        assert_eq!(server.open_connections(), 2);

        let started = Instant::now();
        let mut third = Client::connect(addr);
        let resp = third.response();
        assert!(started.elapsed() < Duration::from_millis(500));
        assert_eq!(resp.status, 503);
        assert_eq!(resp.header("retry-after"), Some("1"));
        assert_eq!(resp.header("connection"), Some("close"));
        third.expect_closed();
        assert_eq!(server.open_connections(), 2);

        drop(first);
        wait_until("a slot to free", Duration::from_secs(1), || {
            server.open_connections() == 1
        });
        let mut fourth = Client::connect(addr);
        assert_eq!(fourth.call(get("/4")).status, 200);
        assert_eq!(second.call(get("/2")).status, 200);
    }

    #[test]
    fn handler_panic_is_500_and_serving_goes_on() {
        let server = start(config());
        let mut client = Client::connect(server.local_addr());
        let resp = client.call(get("/panic"));
        assert_eq!(resp.status, 500);
        assert_eq!(client.call(get("/after")).status, 200);
        let mut other = Client::connect(server.local_addr());
        assert_eq!(other.call(get("/panic")).status, 500);
        assert_eq!(other.call(get("/other")).status, 200);
    }

    #[test]
    fn shutdown_finishes_the_request_in_the_handler() {
        init_logs();
        let (entered_tx, entered) = mpsc::channel::<()>();
        let entered_tx = Mutex::new(entered_tx);
        let handler: Handler = Arc::new(move |req: Request| {
            if req.path == "/slow" {
                let _ = entered_tx.lock().unwrap().send(());
                thread::sleep(Duration::from_millis(300));
            }
            Response::text(200, "done")
        });
        let server = Server::bind("127.0.0.1:0", config(), handler).unwrap();
        let addr = server.local_addr();
        let mut idle = Client::connect(addr);
        assert_eq!(idle.call(get("/")).status, 200);
        let mut busy = Client::connect(addr);
        busy.send(get("/slow"));
        entered.recv_timeout(Duration::from_secs(2)).unwrap();

        let started = Instant::now();
        let stopper = thread::spawn(move || server.shutdown(Duration::from_secs(3)));
        let resp = busy.response();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.text(), "done");
        assert_eq!(resp.header("connection"), Some("close"));
        busy.expect_closed();
        drop(busy);
        idle.expect_closed();
        assert!(stopper.join().unwrap());
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(TcpStream::connect(addr).is_err(), "still accepting");
    }

    #[test]
    fn shutdown_gives_up_after_grace() {
        init_logs();
        let (entered_tx, entered) = mpsc::channel::<()>();
        let entered_tx = Mutex::new(entered_tx);
        let handler: Handler = Arc::new(move |_req: Request| {
            let _ = entered_tx.lock().unwrap().send(());
            thread::sleep(Duration::from_millis(1500));
            Response::new(204)
        });
        let server = Server::bind("127.0.0.1:0", config(), handler).unwrap();
        let mut client = Client::connect(server.local_addr());
        client.send(get("/slow"));
        entered.recv_timeout(Duration::from_secs(2)).unwrap();
        let started = Instant::now();
        assert!(!server.shutdown(Duration::from_millis(100)));
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(100) && elapsed < Duration::from_secs(1));
    }

    #[test]
    fn shutdown_wakes_a_wildcard_listener() {
        init_logs();
        for bind in ["0.0.0.0:0", "[::]:0"] {
            let server = match Server::bind(bind, config(), echo()) {
                Ok(server) => server,
                Err(e) => {
                    eprintln!("skipping {bind}: {e}");
                    continue;
                }
            };
            let mut client = Client::connect(wake_addr(server.local_addr()));
            assert_eq!(client.call(get("/")).status, 200);
            drop(client);
            let started = Instant::now();
            assert!(server.shutdown(Duration::from_secs(2)), "{bind}");
            assert!(started.elapsed() < Duration::from_secs(1), "{bind}");
        }
    }

    /// 5 rounds of 64 connections opened at once, each sending one POST, next to 16 idle
    /// connections and 4 that stall half-way through their head: every POST is answered
    /// within 1 s.
    #[test]
    fn burst_of_connections_is_answered_promptly() {
        let server = start(config());
        let addr = server.local_addr();
        for round in 0..5 {
            let idle: Vec<TcpStream> = (0..16).map(|_| TcpStream::connect(addr).unwrap()).collect();
            let stalled: Vec<TcpStream> = (0..4)
                .map(|_| {
                    let mut stream = TcpStream::connect(addr).unwrap();
                    stream
                        .write_all(b"POST /stalled HTTP/1.1\r\nHost: te")
                        .unwrap();
                    stream
                })
                .collect();
            let barrier = Arc::new(Barrier::new(64));
            let clients: Vec<_> = (0..64)
                .map(|i| {
                    let barrier = Arc::clone(&barrier);
                    thread::Builder::new()
                        .stack_size(256 * 1024)
                        .spawn(move || {
                            barrier.wait();
                            let sent = Instant::now();
                            let mut client = Client::connect(addr);
                            client.send(post("/burst", &"x".repeat(i)));
                            let resp = client.read_response(false);
                            (resp, sent.elapsed())
                        })
                        .unwrap()
                })
                .collect();
            for (i, client) in clients.into_iter().enumerate() {
                let (resp, elapsed) = client.join().unwrap();
                let resp = resp.unwrap_or_else(|e| panic!("round {round} client {i}: {e}"));
                assert_eq!(resp.status, 200, "round {round} client {i}");
                assert!(resp.text().contains(&format!(" len={i} ")));
                assert!(
                    elapsed < Duration::from_secs(1),
                    "round {round} client {i}: {elapsed:?}"
                );
            }
            drop(idle);
            drop(stalled);
        }
        let mut client = Client::connect(addr);
        assert_eq!(client.call(get("/after")).status, 200);
        drop(client);
        wait_until("connections to end", Duration::from_secs(3), || {
            server.open_connections() == 0
        });
        assert!(server.shutdown(Duration::from_secs(2)));
    }

    #[test]
    fn log_line_format() {
        let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let elapsed = Duration::from_micros(1234);
        assert_eq!(
            log_line(
                "webhook",
                "POST",
                "/x",
                200,
                elapsed,
                peer,
                "event=evt_1 dup=0"
            ),
            "webhook POST /x status=200 ms=1.23 peer=127.0.0.1:9 event=evt_1 dup=0"
        );
        let peer: SocketAddr = "[::1]:9".parse().unwrap();
        assert_eq!(
            log_line("admin", "-", "-", 503, Duration::ZERO, peer, ""),
            "admin - - status=503 ms=0.00 peer=[::1]:9"
        );
    }

    #[test]
    fn builders_and_header_lookup() {
        let cases = [
            (Response::text(200, "t"), "text/plain; charset=utf-8"),
            (Response::json(201, "{}"), "application/json"),
            (Response::html(404, "<p>"), "text/html; charset=utf-8"),
        ];
        for (resp, content_type) in &cases {
            assert_eq!(
                resp.headers,
                vec![("Content-Type".to_string(), content_type.to_string())]
            );
        }
        let resp = Response::new(204)
            .with_log("a=1")
            .with_log("b=2")
            .with_header("X-A", "b");
        assert_eq!(resp.log, "a=1 b=2");
        assert!(resp.body.is_empty());

        let req = Request {
            method: "GET".into(),
            path: "/".into(),
            query: String::new(),
            headers: vec![
                ("Stripe-Signature".into(), "one".into()),
                ("stripe-signature".into(), "two".into()),
            ],
            body: Vec::new(),
            remote: "127.0.0.1:1".parse().unwrap(),
        };
        assert_eq!(req.header("STRIPE-SIGNATURE"), Some("one"));
        assert_eq!(req.header_count("Stripe-Signature"), 2);
        assert_eq!(req.header("missing"), None);
        assert_eq!(req.header_count("missing"), 0);

        let defaults = ServerConfig::default();
        assert_eq!(defaults.max_body_bytes, 1024 * 1024);
        assert_eq!(defaults.max_connections, 512);
        assert_eq!(defaults.idle_timeout, Duration::from_secs(15));
        assert_eq!(defaults.request_timeout, Duration::from_secs(10));
    }

    #[test]
    fn encode_owns_framing_headers() {
        let resp = Response::text(200, "hi")
            .with_header("Content-Length", "99")
            .with_header("Transfer-Encoding", "chunked")
            .with_header("X-Evil", "a\r\nSet-Cookie: b")
            .with_header("Bad Name", "v")
            .with_header("X-Ok", "fine");
        let wire = String::from_utf8(encode(&resp, ConnectionHeader::Close, false)).unwrap();
        assert_eq!(
            wire,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nX-Ok: fine\r\n\
             Content-Length: 2\r\nConnection: close\r\n\r\nhi"
        );
        let wire = String::from_utf8(encode(&Response::new(204), ConnectionHeader::None, false));
        assert_eq!(wire.unwrap(), "HTTP/1.1 204 No Content\r\n\r\n");
        let wire = encode(&Response::text(299, "x"), ConnectionHeader::KeepAlive, true);
        assert_eq!(
            String::from_utf8(wire).unwrap(),
            "HTTP/1.1 299 \r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 1\r\n\
             Connection: keep-alive\r\n\r\n"
        );
        assert_eq!(
            wake_addr("0.0.0.0:80".parse().unwrap()),
            "127.0.0.1:80".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            wake_addr("[::]:80".parse().unwrap()),
            "[::1]:80".parse::<SocketAddr>().unwrap()
        );
    }
}
