//! The wire format: parsing a request head (with `httparse`), deciding how its body is framed
//! (`Content-Length` or `Transfer-Encoding: chunked`) and reading it, and encoding a response.
//! Framing is where a front end and this server could read one stream differently, so every
//! ambiguity is refused rather than guessed.

use std::fmt::Write as _;

use super::{Response, MAX_HEADERS, MAX_HEAD_BYTES};

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

/// Why a request could not be served.
pub(super) enum Fail {
    /// Answer with this status (and an `error=` log field), then close.
    Answer(u16, &'static str),
    /// The client went away or the socket failed: close without a word.
    Gone(String),
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
