//! One connection: reading with timeouts (idle before a request, a whole request once it has
//! begun), driving the [`Framer`] over what arrives, serving requests in sequence (keep-alive,
//! pipelining, `Expect: 100-continue`), the client address behind a trusted proxy, the handler
//! call with its panic caught, writing answers within the connection's write budget, and one log
//! line per request.

use std::fmt::Write as _;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::peers::{client_addr, is_trusted, limit_key};
use super::registry::Ticket;
use super::wire::{
    encode, has_token, header_values, leading_empty_lines, reason, ConnectionHeader, Fail, Framer,
    Framing, Message, Step,
};
use super::{
    log_line, Request, Response, Shared, CONTINUE, LINGER, LINGER_MAX_BYTES, LINGER_STOPPING, POLL,
    READ_CHUNK,
};

/// One connection's socket and the bytes read from it but not consumed yet.
pub(super) struct Conn {
    pub(super) stream: TcpStream,
    pub(super) buf: Vec<u8>,
    pub(super) pos: usize,
    pub(super) read_timeout: Option<Duration>,
    pub(super) write_timeout: Option<Duration>,
    /// Time spent so far waiting for the client to take our answers.
    pub(super) write_waited: Duration,
}

pub(super) enum ReadOutcome {
    Data,
    Eof,
    TimedOut,
    Failed(io::Error),
}

/// What to do with the connection after a request.
pub(super) enum Next {
    KeepAlive,
    Close,
    Drop,
}

impl Conn {
    pub(super) fn new(stream: TcpStream) -> Conn {
        Conn {
            stream,
            buf: Vec::new(),
            pos: 0,
            read_timeout: None,
            write_timeout: None,
            write_waited: Duration::ZERO,
        }
    }

    pub(super) fn data(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    pub(super) fn consume(&mut self, n: usize) {
        self.pos += n;
        debug_assert!(self.pos <= self.buf.len());
        if self.pos >= self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
    }

    /// One read that returns some bytes, unless `until` passes first.
    pub(super) fn read_more(&mut self, until: Instant) -> ReadOutcome {
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
    pub(super) fn fill(&mut self, deadline: Instant) -> Result<(), Fail> {
        match self.read_more(deadline) {
            ReadOutcome::Data => Ok(()),
            ReadOutcome::TimedOut => Err(Fail::Answer(408, "request_timeout")),
            ReadOutcome::Eof => Err(Fail::Gone("closed by client".to_string())),
            ReadOutcome::Failed(e) => Err(Fail::Gone(e.to_string())),
        }
    }

    /// Writes all of `bytes`. Time spent waiting for the client to make room (the socket did
    /// not take the bytes at once) is charged to the connection; past `budget` in total the
    /// write fails with `TimedOut`.
    pub(super) fn send(&mut self, bytes: &[u8], budget: Duration) -> io::Result<()> {
        let started = Instant::now();
        let mut rest = bytes;
        let mut waiting = false;
        while !rest.is_empty() {
            let spent = if waiting {
                self.write_waited + started.elapsed()
            } else {
                self.write_waited
            };
            let left = budget.saturating_sub(spent);
            if left.is_zero() {
                self.write_waited = budget;
                return Err(io::Error::new(
                    ErrorKind::TimedOut,
                    "the client did not read its answers within the write budget",
                ));
            }
            let wait = Duration::from_millis(left.as_millis() as u64 + 1).min(POLL);
            if self.write_timeout != Some(wait) {
                self.stream.set_write_timeout(Some(wait))?;
                self.write_timeout = Some(wait);
            }
            match self.stream.write(rest) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => {
                    waiting |= n < rest.len();
                    rest = &rest[n..];
                }
                Err(e) if is_retry(&e) => waiting = true,
                Err(e) => return Err(e),
            }
        }
        if waiting {
            self.write_waited += started.elapsed();
        }
        Ok(())
    }

    /// Waits for the first byte of the next request. False when the connection should be
    /// closed silently: idle timeout, shutdown, closed to make room, or the client left.
    pub(super) fn wait_for_request(&mut self, shared: &Shared, ticket: &Ticket) -> bool {
        let idle_until = Instant::now() + shared.config.idle_timeout;
        loop {
            let stray = leading_empty_lines(self.data());
            self.consume(stray);
            if !self.data().is_empty() {
                return true;
            }
            if shared.stopping.load(Ordering::SeqCst) || ticket.closed() {
                return false;
            }
            match self.read_more(idle_until.min(Instant::now() + POLL)) {
                ReadOutcome::Data => {}
                ReadOutcome::TimedOut if Instant::now() < idle_until => {}
                ReadOutcome::TimedOut | ReadOutcome::Eof | ReadOutcome::Failed(_) => return false,
            }
        }
    }

    /// Half-closes, then drains what the client still sends (bounded, and only until the
    /// registry wants the slot), then drops the socket.
    pub(super) fn close(mut self, linger: Duration, ticket: &Ticket) {
        let _ = self.stream.shutdown(Shutdown::Write);
        let until = Instant::now() + linger;
        let mut drained = 0;
        while drained < LINGER_MAX_BYTES && !ticket.closed() {
            self.buf.clear();
            self.pos = 0;
            match self.read_more(until) {
                ReadOutcome::Data => drained += self.buf.len(),
                _ => break,
            }
        }
    }
}

pub(super) fn is_retry(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
    )
}

pub(super) fn serve_connection(
    shared: &Shared,
    stream: TcpStream,
    peer: SocketAddr,
    ticket: &Ticket,
) {
    let _ = stream.set_nodelay(true);
    let mut conn = Conn::new(stream);
    let proxied = is_trusted(&shared.config.trusted_proxies, peer.ip());
    while conn.wait_for_request(shared, ticket) {
        if !shared.registry.busy(ticket) {
            return;
        }
        let started = Instant::now();
        match serve_request(shared, &mut conn, peer, proxied, ticket, started) {
            Next::KeepAlive => shared.registry.idle(ticket, Instant::now(), proxied),
            Next::Close => {
                let linger = if shared.stopping.load(Ordering::SeqCst) {
                    LINGER_STOPPING
                } else {
                    LINGER
                };
                // Its last answer is written: lingering holds nothing the client needs, so the
                // slot may be taken for a new connection like an idle one's.
                shared.registry.idle(ticket, Instant::now(), proxied);
                conn.close(linger, ticket);
                return;
            }
            Next::Drop => return,
        }
    }
}

/// Who sent a request: for the log line and the handler.
struct Sender {
    peer: SocketAddr,
    client: IpAddr,
}

/// Reads one request (its first byte is buffered), handles it and writes the response.
fn serve_request(
    shared: &Shared,
    conn: &mut Conn,
    peer: SocketAddr,
    proxied: bool,
    ticket: &Ticket,
    started: Instant,
) -> Next {
    let deadline = started + shared.config.request_timeout;
    let mut from = Sender {
        peer,
        client: peer.ip().to_canonical(),
    };
    let mut framer = Framer::new(shared.config.max_body_bytes);
    let message = loop {
        let (used, step) = framer.advance(conn.data());
        conn.consume(used);
        let fail = match step {
            Ok(Step::Done(message)) => break message,
            Ok(Step::More) => match conn.fill(deadline) {
                Ok(()) => continue,
                Err(fail) => fail,
            },
            Ok(Step::Head) => match head_ready(shared, conn, &framer, proxied, ticket, &mut from) {
                Ok(()) => continue,
                Err(fail) => fail,
            },
            Err(fail) => fail,
        };
        let (method, path) = framer.request_line().unwrap_or(("-", "-"));
        let (method, path) = (method.to_string(), path.to_string());
        return failed(shared, conn, &from, started, &method, &path, fail);
    };
    respond(shared, conn, &from, started, message)
}

/// The head is in: find the client behind a trusted proxy and count the connection under it, and
/// answer `Expect: 100-continue` when the client still waits for it.
fn head_ready(
    shared: &Shared,
    conn: &mut Conn,
    framer: &Framer,
    proxied: bool,
    ticket: &Ticket,
    from: &mut Sender,
) -> Result<(), Fail> {
    let Some((head, framing)) = framer.head() else {
        return Ok(());
    };
    if proxied {
        let forwarded = header_values(&head.headers, "x-forwarded-for");
        from.client = client_addr(from.peer.ip(), forwarded, &shared.config.trusted_proxies);
        if !shared.registry.attribute(ticket, limit_key(from.client)) {
            return Err(Fail::Answer(503, "max_connections_per_addr"));
        }
    }
    let expects_continue = head.minor >= 1
        && head
            .get("expect")
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
    // Only when the client is still waiting: none of the body arrived yet.
    if expects_continue && framing != Framing::Empty && conn.data().is_empty() {
        conn.send(CONTINUE, shared.config.write_timeout)
            .map_err(|e| Fail::Gone(e.to_string()))?;
    }
    Ok(())
}

/// Runs the handler on a whole request and writes its answer.
fn respond(
    shared: &Shared,
    conn: &mut Conn,
    from: &Sender,
    started: Instant,
    message: Message,
) -> Next {
    let name = shared.config.name;
    let Message { head, body } = message;
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
        remote: from.peer,
        client: from.client,
    };
    let peer = from.peer;
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
    let written = conn.send(&wire, shared.config.write_timeout);
    log_request(
        name,
        &method,
        &path,
        response.status,
        started,
        from,
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
    from: &Sender,
    started: Instant,
    method: &str,
    path: &str,
    fail: Fail,
) -> Next {
    let name = shared.config.name;
    match fail {
        Fail::Gone(why) => {
            log::debug!(
                "{name} {method} {path} peer={} connection ended mid-request: {why}",
                from.peer
            );
            Next::Drop
        }
        Fail::Answer(status, why) => {
            let body = format!("{}\n", reason(status).to_ascii_lowercase());
            let mut response = Response::text(status, body).with_log(format!("error={why}"));
            if status == 503 {
                response = response.with_header("Retry-After", "1");
            }
            let wire = encode(&response, ConnectionHeader::Close, false);
            let written = conn.send(&wire, shared.config.write_timeout);
            log_request(
                name,
                method,
                path,
                status,
                started,
                from,
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
    from: &Sender,
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
        log_line(
            name,
            method,
            path,
            status,
            started.elapsed(),
            from.peer,
            from.client,
            &extra
        )
    );
}
