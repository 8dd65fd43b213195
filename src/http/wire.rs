//! The wire format: framing a byte stream into requests, and encoding a response.
//!
//! [`Framer`] is the one place that decides where a request starts and ends: its head (parsed
//! by `httparse`, then held to the stricter rules below), how its body is delimited
//! (`Content-Length` or `Transfer-Encoding: chunked`) and its chunks and trailers. It is pure: it
//! is handed the bytes that have arrived and says how many it consumed and what it found, so the
//! connection drives it from a socket and the fuzzers ([`super::frame_for_fuzzing`]) from a buffer
//! through the same code.
//!
//! Framing is where a front end and this server could read one stream differently (request
//! smuggling), so every ambiguity is refused rather than guessed:
//! - lines end in CRLF only, in the head, the chunk lines and the trailers: a bare LF or CR is 400
//!   (RFC 9112 §2.2 lets a recipient accept a bare LF; a front end that does not would frame the
//!   stream differently);
//! - a chunk extension holds no control bytes (NUL, CR, LF, other CTLs): 400;
//! - `Content-Length` together with `Transfer-Encoding`, lengths that disagree, a coding other
//!   than `chunked` alone: 400 / 501; an HTTP/1.0 request with `Transfer-Encoding` is 400 and
//!   closed (RFC 9112 §6.1: its framing is faulty);
//! - an HTTP/1.1 request without `Host`, any request with two, or a `Host` that is not a host:
//!   400 (RFC 9112 §3.2);
//! - the target is origin-form (`/path?query`), absolute-form (`http://host/path`, RFC 9112
//!   §3.2.2: a server must accept it; its authority then replaces `Host`) or `*` for `OPTIONS`;
//!   anything else is 400, and a target (or an unfinished request line) over [`MAX_TARGET`]
//!   bytes is 414.

use std::fmt::Write as _;

use super::{Response, MAX_CHUNK_LINE, MAX_HEADERS, MAX_HEAD_BYTES};

/// Longest request target (longer → 414).
pub(super) const MAX_TARGET: usize = 8 * 1024;
/// Longest request line: the target, a method and the version (longer and unfinished → 414).
const MAX_REQUEST_LINE: usize = MAX_TARGET + 64;

/// A parsed request head.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Head {
    pub(super) method: String,
    /// The target's path; for an absolute-form target, its path (`/` when empty).
    pub(super) path: String,
    /// Raw text after '?', "" when none.
    pub(super) query: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub(super) minor: u8,
    /// As received, values trimmed; an absolute-form target's authority replaces `Host`'s value.
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

/// Why a request could not be served.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Fail {
    /// Answer with this status (and an `error=` log field), then close.
    Answer(u16, &'static str),
    /// The client went away or the socket failed: close without a word.
    Gone(String),
}

/// How a request's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Framing {
    Empty,
    Length(usize),
    Chunked,
}

/// Empty lines before a request are not a request (RFC 9112 §2.2): how many bytes of them lead
/// `data`.
pub(super) fn leading_empty_lines(data: &[u8]) -> usize {
    let mut n = 0;
    while data[n..].starts_with(b"\r\n") {
        n += 2;
    }
    n
}

/// What [`Framer::advance`] found.
#[derive(Debug)]
pub(super) enum Step {
    /// Nothing more can be done without more bytes.
    More,
    /// The head of the current request is complete and its framing known (said once per
    /// request, before its body is read): [`Framer::head`] has it. The connection answers
    /// `Expect: 100-continue` and checks its client here.
    Head,
    /// A whole request.
    Done(Message),
}

/// A whole request.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Message {
    pub(super) head: Head,
    pub(super) body: Vec<u8>,
}

/// Frames requests out of the bytes of one connection, one after another.
pub(super) struct Framer {
    max_body: usize,
    state: State,
    /// The current request's method and path, for the log line of a request that fails.
    started: Option<(String, String)>,
}

enum State {
    /// Waiting for (the rest of) a head.
    Head,
    /// The head is parsed; reading the body.
    Body {
        head: Head,
        framing: Framing,
        body: Vec<u8>,
        chunk: Chunk,
    },
}

/// Where a chunked body's reading is.
#[derive(Debug, Clone, Copy)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data: this many bytes left.
    Data(usize),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// In the trailer section: bytes and field lines seen so far.
    Trailers { bytes: usize, fields: usize },
}

impl Framer {
    pub(super) fn new(max_body: usize) -> Framer {
        Framer {
            max_body,
            state: State::Head,
            started: None,
        }
    }

    /// The method and path of the request whose head was parsed last (until the next head).
    pub(super) fn request_line(&self) -> Option<(&str, &str)> {
        self.started
            .as_ref()
            .map(|(method, path)| (method.as_str(), path.as_str()))
    }

    /// The current request's head, once [`Step::Head`] was said and until [`Step::Done`].
    pub(super) fn head(&self) -> Option<(&Head, Framing)> {
        match &self.state {
            State::Head => None,
            State::Body { head, framing, .. } => Some((head, *framing)),
        }
    }

    /// Frames what it can from `data` (the bytes that arrived and were not consumed yet).
    /// Returns how many bytes it consumed (the caller drops them) and what it found. After an
    /// error the framer must not be used again: the connection closes.
    pub(super) fn advance(&mut self, data: &[u8]) -> (usize, Result<Step, Fail>) {
        // The state is taken out and put back unless the request is done (or failed).
        match std::mem::replace(&mut self.state, State::Head) {
            State::Head => {
                let skip = leading_empty_lines(data);
                let (head, len) = match parse_head(&data[skip..]) {
                    Ok(Some(parsed)) => parsed,
                    Ok(None) => return (skip, Ok(Step::More)),
                    Err(fail) => return (skip, Err(fail)),
                };
                let used = skip + len;
                self.started = Some((head.method.clone(), head.path.clone()));
                let framing = match framing(&head, self.max_body) {
                    Ok(framing) => framing,
                    Err(fail) => return (used, Err(fail)),
                };
                let capacity = match framing {
                    Framing::Length(n) => n.min(64 * 1024),
                    _ => 0,
                };
                self.state = State::Body {
                    head,
                    framing,
                    body: Vec::with_capacity(capacity),
                    chunk: Chunk::Size,
                };
                (used, Ok(Step::Head))
            }
            State::Body {
                head,
                framing,
                mut body,
                mut chunk,
            } => {
                let (used, done) = match framing {
                    Framing::Empty => (0, true),
                    Framing::Length(n) => {
                        let k = (n - body.len()).min(data.len());
                        body.extend_from_slice(&data[..k]);
                        (k, body.len() == n)
                    }
                    Framing::Chunked => {
                        match read_chunked(&mut chunk, data, &mut body, self.max_body) {
                            Ok(read) => read,
                            Err(fail) => return (0, Err(fail)),
                        }
                    }
                };
                if done {
                    return (used, Ok(Step::Done(Message { head, body })));
                }
                self.state = State::Body {
                    head,
                    framing,
                    body,
                    chunk,
                };
                (used, Ok(Step::More))
            }
        }
    }
}

/// Parses a complete head at the start of `data`: `None` while it is incomplete.
fn parse_head(data: &[u8]) -> Result<Option<(Head, usize)>, Fail> {
    let line_ended = data.iter().take(MAX_REQUEST_LINE + 1).any(|&b| b == b'\n');
    if !line_ended && data.len() > MAX_REQUEST_LINE {
        return Err(Fail::Answer(414, "request_line_too_long"));
    }
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut slots);
    let len = match parsed.parse(data) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if data.len() >= MAX_HEAD_BYTES => {
            return Err(Fail::Answer(431, "head_too_large"))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Fail::Answer(431, "too_many_headers")),
        Err(_) => return Err(Fail::Answer(400, "malformed_head")),
    };
    if len > MAX_HEAD_BYTES {
        return Err(Fail::Answer(431, "head_too_large"));
    }
    if !crlf_only(&data[..len]) {
        return Err(Fail::Answer(400, "bare_lf"));
    }
    let target = parsed.path.unwrap_or("");
    if target.len() > MAX_TARGET {
        return Err(Fail::Answer(414, "target_too_long"));
    }
    let method = parsed.method.unwrap_or("");
    let minor = parsed.version.unwrap_or(1);
    let mut headers: Vec<(String, String)> = parsed
        .headers
        .iter()
        .map(|h| {
            let value = String::from_utf8_lossy(h.value).trim().to_string();
            (h.name.to_string(), value)
        })
        .collect();
    let hosts = header_values(&headers, "host").count();
    if hosts > 1 {
        return Err(Fail::Answer(400, "repeated_host"));
    }
    if hosts == 0 && minor >= 1 {
        return Err(Fail::Answer(400, "missing_host"));
    }
    if header_values(&headers, "host").any(|h| !is_authority(h)) {
        return Err(Fail::Answer(400, "bad_host"));
    }
    let (path, query, authority) = split_target(method, target)?;
    if let Some(authority) = authority {
        for (name, value) in headers.iter_mut() {
            if name.eq_ignore_ascii_case("host") {
                *value = authority.to_string();
            }
        }
    }
    let head = Head {
        method: method.to_string(),
        path: path.to_string(),
        query: query.to_string(),
        minor,
        headers,
    };
    Ok(Some((head, len)))
}

/// Every LF is preceded by a CR and every CR followed by an LF.
fn crlf_only(head: &[u8]) -> bool {
    head.iter().enumerate().all(|(i, &b)| match b {
        b'\n' => i > 0 && head[i - 1] == b'\r',
        b'\r' => head.get(i + 1) == Some(&b'\n'),
        _ => true,
    })
}

/// (path, query, the authority of an absolute-form target).
fn split_target<'t>(
    method: &str,
    target: &'t str,
) -> Result<(&'t str, &'t str, Option<&'t str>), Fail> {
    let bad = Fail::Answer(400, "bad_target");
    if target.starts_with('/') {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        return Ok((path, query, None));
    }
    if target == "*" {
        return if method == "OPTIONS" {
            Ok(("*", "", None))
        } else {
            Err(bad)
        };
    }
    let scheme_end = target.find("://").ok_or(bad.clone())?;
    let scheme = &target[..scheme_end];
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Err(bad);
    }
    let rest = &target[scheme_end + 3..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    // An empty host, or userinfo (`user@host`, RFC 9110 §4.2.4: treat it as an error).
    if authority.is_empty() || !is_authority(authority) {
        return Err(bad);
    }
    let rest = &rest[authority_end..];
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    Ok((
        if path.is_empty() { "/" } else { path },
        query,
        Some(authority),
    ))
}

/// `uri-host [":" port]` as far as its characters go (RFC 3986 reg-name, IP literals, port):
/// no spaces, slashes, `@` or controls.
fn is_authority(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%:[]".contains(&b))
}

pub(super) fn framing(head: &Head, max: usize) -> Result<Framing, Fail> {
    if head.get("transfer-encoding").is_some() {
        if head.get("content-length").is_some() {
            return Err(Fail::Answer(400, "length_and_transfer_encoding"));
        }
        if head.minor == 0 {
            return Err(Fail::Answer(400, "http10_transfer_encoding"));
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

/// Reads what it can of a chunked body from `data` into `body`: (bytes consumed, finished).
fn read_chunked(
    chunk: &mut Chunk,
    data: &[u8],
    body: &mut Vec<u8>,
    max: usize,
) -> Result<(usize, bool), Fail> {
    let mut used = 0;
    loop {
        let rest = &data[used..];
        match *chunk {
            Chunk::Size => {
                let Some(line) = crlf_line(rest, MAX_CHUNK_LINE, (400, "chunk_line_too_long"))?
                else {
                    return Ok((used, false));
                };
                used += line.len() + 2;
                let size = chunk_size(line)?;
                if size == 0 {
                    *chunk = Chunk::Trailers {
                        bytes: 0,
                        fields: 0,
                    };
                } else if size > (max - body.len()) as u64 {
                    return Err(Fail::Answer(413, "body_too_large"));
                } else {
                    *chunk = Chunk::Data(size as usize);
                }
            }
            Chunk::Data(left) => {
                let k = left.min(rest.len());
                body.extend_from_slice(&rest[..k]);
                used += k;
                if k < left {
                    *chunk = Chunk::Data(left - k);
                    return Ok((used, false));
                }
                *chunk = Chunk::DataEnd;
            }
            Chunk::DataEnd => {
                if rest.len() < 2 {
                    // A wrong first byte is wrong already.
                    if rest.first().is_some_and(|&b| b != b'\r') {
                        return Err(Fail::Answer(400, "bad_chunk"));
                    }
                    return Ok((used, false));
                }
                if &rest[..2] != b"\r\n" {
                    return Err(Fail::Answer(400, "bad_chunk"));
                }
                used += 2;
                *chunk = Chunk::Size;
            }
            Chunk::Trailers { bytes, fields } => {
                let left = MAX_HEAD_BYTES.saturating_sub(bytes);
                let Some(line) = crlf_line(rest, left, (431, "trailers_too_large"))? else {
                    return Ok((used, false));
                };
                used += line.len() + 2;
                if line.is_empty() {
                    return Ok((used, true));
                }
                if fields + 1 > MAX_HEADERS {
                    return Err(Fail::Answer(431, "too_many_trailers"));
                }
                if !is_field_line(line) {
                    return Err(Fail::Answer(400, "bad_trailer"));
                }
                *chunk = Chunk::Trailers {
                    bytes: bytes + line.len() + 2,
                    fields: fields + 1,
                };
            }
        }
    }
}

/// The line at the start of `data` without its CRLF, `None` while incomplete. A line must end in
/// CRLF (a bare LF is 400) and be at most `max` bytes with its CRLF (`too_long` otherwise: 400
/// for a chunk line, 431 for the trailers).
fn crlf_line<'d>(
    data: &'d [u8],
    max: usize,
    too_long: (u16, &'static str),
) -> Result<Option<&'d [u8]>, Fail> {
    match data.iter().take(max).position(|&b| b == b'\n') {
        Some(0) => Err(Fail::Answer(400, "bare_lf")),
        Some(i) if data[i - 1] != b'\r' => Err(Fail::Answer(400, "bare_lf")),
        Some(i) => Ok(Some(&data[..i - 1])),
        None if data.len() >= max => Err(Fail::Answer(too_long.0, too_long.1)),
        None => Ok(None),
    }
}

/// `chunk-size [ chunk-ext ]` (RFC 9112 §7.1): hex digits, then nothing or extensions that start
/// with `;` (after optional whitespace) and hold no control byte.
fn chunk_size(line: &[u8]) -> Result<u64, Fail> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(Fail::Answer(400, "bad_chunk_size"));
    }
    let mut size: u64 = 0;
    for &b in &line[..digits] {
        let d = (b as char).to_digit(16).unwrap_or(0);
        size = size
            .checked_mul(16)
            .and_then(|s| s.checked_add(u64::from(d)))
            .ok_or(Fail::Answer(400, "bad_chunk_size"))?;
    }
    let ext = &line[digits..];
    let ws = ext.iter().take_while(|b| matches!(b, b' ' | b'\t')).count();
    let ok = ext.is_empty()
        || (ext.get(ws) == Some(&b';')
            && ext.iter().all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f)));
    if !ok {
        return Err(Fail::Answer(400, "bad_chunk_extension"));
    }
    Ok(size)
}

/// `field-name ":" OWS field-value OWS` with a token name and no control byte but HTAB in the
/// value (RFC 9110 §5).
fn is_field_line(line: &[u8]) -> bool {
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return false;
    };
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    !name.is_empty()
        && name.iter().all(|&b| is_tchar(b))
        && value
            .iter()
            .all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
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
