//! The HTTP core's tests: real sockets on loopback, raw bytes in, raw bytes out.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Barrier, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::server::wake_addr;
use super::wire::{encode, ConnectionHeader};
use super::*;

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
