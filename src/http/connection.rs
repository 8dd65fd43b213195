//! One connection: reading with timeouts (idle between requests, a whole request once it has
//! begun), serving its requests in sequence (keep-alive, pipelining, `Expect: 100-continue`), the
//! handler call with its panic caught, writing the answer, and one log line per request.

use std::fmt::Write as _;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::wire::{
    encode, framing, has_token, parse_head, reason, ConnectionHeader, Fail, Framing, Head,
};
use super::{
    log_line, Request, Response, Shared, CONTINUE, LINGER, LINGER_MAX_BYTES, LINGER_STOPPING,
    MAX_CHUNK_LINE, MAX_HEADERS, MAX_HEAD_BYTES, POLL, READ_CHUNK, WRITE_TIMEOUT,
};

/// One connection's socket and the bytes read from it but not consumed yet.
pub(super) struct Conn {
    pub(super) stream: TcpStream,
    pub(super) buf: Vec<u8>,
    pub(super) pos: usize,
    pub(super) read_timeout: Option<Duration>,
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

    /// Moves exactly `n` more bytes into `out`, reading as needed.
    pub(super) fn take_into(
        &mut self,
        out: &mut Vec<u8>,
        n: usize,
        deadline: Instant,
    ) -> Result<(), Fail> {
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
    pub(super) fn wait_for_request(&mut self, shared: &Shared) -> bool {
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
    pub(super) fn close(mut self, linger: Duration) {
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

pub(super) fn read_head(conn: &mut Conn, deadline: Instant) -> Result<Head, Fail> {
    loop {
        if let Some((head, len)) = parse_head(conn.data())? {
            conn.consume(len);
            return Ok(head);
        }
        conn.fill(deadline)?;
    }
}

pub(super) fn read_body(
    conn: &mut Conn,
    head: &Head,
    max: usize,
    deadline: Instant,
) -> Result<Vec<u8>, Fail> {
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

pub(super) fn read_chunked(
    conn: &mut Conn,
    max: usize,
    deadline: Instant,
) -> Result<Vec<u8>, Fail> {
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

pub(super) fn is_retry(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
    )
}

pub(super) fn serve_connection(shared: &Shared, stream: TcpStream, peer: SocketAddr) {
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
pub(super) fn serve_request(
    shared: &Shared,
    conn: &mut Conn,
    peer: SocketAddr,
    started: Instant,
) -> Next {
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
pub(super) fn failed(
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
pub(super) fn log_request(
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
