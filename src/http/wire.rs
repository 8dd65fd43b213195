//! The wire format: parsing a request head (with `httparse`), deciding how its body is framed
//! (`Content-Length` or `Transfer-Encoding: chunked`) and reading it, and encoding a response.
//! Framing is where a front end and this server could read one stream differently, so every
//! ambiguity is refused rather than guessed.

use std::fmt::Write as _;
use std::io::Write;
use std::time::Instant;

use super::connection::{Conn, Fail};
use super::{Response, CONTINUE, MAX_CHUNK_LINE, MAX_HEADERS, MAX_HEAD_BYTES};

/// A parsed request head.
pub(super) struct Head {
    pub(super) method: String,
    pub(super) path: String,
    pub(super) query: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub(super) minor: u8,
    pub(super) headers: Vec<(String, String)>,
}

impl Head {
    pub(super) fn get(&self, name: &str) -> Option<&str> {
        header_values(&self.headers, name).next()
    }

    pub(super) fn keep_alive(&self) -> bool {
        if has_token(&self.headers, "connection", "close") {
            false
        } else {
            self.minor >= 1 || has_token(&self.headers, "connection", "keep-alive")
        }
    }
}

pub(super) fn header_values<'a, 'n>(
    headers: &'a [(String, String)],
    name: &'n str,
) -> impl Iterator<Item = &'a str> + use<'a, 'n> {
    headers
        .iter()
        .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Whether a comma-separated header (all its occurrences) holds `token`.
pub(super) fn has_token(headers: &[(String, String)], name: &str, token: &str) -> bool {
    header_values(headers, name)
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Parses a complete head at the start of `data`: `None` while it is incomplete.
pub(super) fn parse_head(data: &[u8]) -> Result<Option<(Head, usize)>, Fail> {
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

pub(super) fn read_head(conn: &mut Conn, deadline: Instant) -> Result<Head, Fail> {
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
pub(super) enum Framing {
    Empty,
    Length(usize),
    Chunked,
}

pub(super) fn framing(head: &Head, max: usize) -> Result<Framing, Fail> {
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

/// The `Connection` header the server adds.
#[derive(Clone, Copy)]
pub(super) enum ConnectionHeader {
    None,
    Close,
    /// For an HTTP/1.0 client that asked to keep the connection.
    KeepAlive,
}

/// Status line, headers and body in one buffer.
pub(super) fn encode(
    response: &Response,
    connection: ConnectionHeader,
    head_only: bool,
) -> Vec<u8> {
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

pub(super) fn reason(status: u16) -> &'static str {
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
