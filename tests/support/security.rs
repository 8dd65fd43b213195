//! Support for the hostile-client tests (`tests/security.rs`): a service with keys of our own in
//! its `[webhook]` and `[admin]` tables, connections from a chosen loopback alias (127.0.0.2 as
//! the attacker, 127.0.0.3 as the genuine sender: Linux routes all of 127/8 to lo), attackers that
//! run in the background until dropped, and a genuine sender that times its answers.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::process::Server;
use super::{event, free_addr, read_reply, signed_request, Reply, TempDir, TestApp, SECRET};

/// The variable holding [`API_TOKEN`] for the services started here.
pub const API_TOKEN_ENV: &str = "STRIPE_INBOX_IT_SECURITY_API_TOKEN";
pub const API_TOKEN: &str = "security-test-token-0123456789";

/// Config text: the usual test service, with `webhook` and `admin` added to those tables and
/// `top` at the end.
pub fn config(dir: &std::path::Path, listen: (&str, &str), webhook: &str, admin: &str) -> String {
    format!(
        "[database]\npath = \"{}\"\n\n[webhook]\nlisten = \"{}\"\nsecrets = [\"{SECRET}\"]\nsecrets_env = \"\"\n{webhook}\n\n[admin]\nlisten = \"{}\"\n{admin}\n\n[api]\ntoken_env = \"{API_TOKEN_ENV}\"\n",
        dir.join("inbox.db").display(),
        listen.0,
        listen.1,
    )
}

/// A service in this process on free ports, with these keys in `[webhook]` and `[admin]`.
pub fn start(webhook: &str, admin: &str) -> TestApp {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| std::env::set_var(API_TOKEN_ENV, API_TOKEN));
    let dir = TempDir::new("security");
    let text = config(dir.path(), ("127.0.0.1:0", "127.0.0.1:0"), webhook, admin);
    TestApp::start_on(dir, &text)
}

/// A TCP connection from `src` to `addr`.
pub fn connect_from(src: &str, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(&SocketAddr::new(src.parse().unwrap(), 0).into())?;
    socket.connect(&addr.into())?;
    Ok(socket.into())
}

/// Sends `bytes` from `src` on a new connection and reads one answer.
pub fn call_from(src: &str, addr: SocketAddr, bytes: &[u8]) -> Reply {
    let mut stream = connect_from(src, addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(bytes).unwrap();
    read_reply(&mut stream)
}

/// A signed webhook request for `body` (with `Connection: close`).
pub fn signed(body: &[u8]) -> Vec<u8> {
    signed_request(body, true)
}

/// What an attacking connection does once connected.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    /// Nothing: an idle connection, opened again as soon as it is closed.
    Idle,
    /// A request head one byte every 100 ms, opened again when closed.
    Trickle,
    /// Thousands of pipelined requests, then reads 64 bytes every 50 ms.
    SlowReader,
}

/// `n` connections from one address doing `kind` until dropped.
pub struct Attack {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// Connections the attacker has opened (accepted by the kernel; the server may refuse them).
    pub opened: Arc<AtomicU64>,
}

impl Attack {
    pub fn start(src: &'static str, addr: SocketAddr, kind: Kind, n: usize, path: &str) -> Attack {
        let stop = Arc::new(AtomicBool::new(false));
        let opened = Arc::new(AtomicU64::new(0));
        let pipelined: Arc<Vec<u8>> = Arc::new(
            (0..5000)
                .flat_map(|_| format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes())
                .collect(),
        );
        let threads = (0..n)
            .map(|_| {
                let (stop, opened, pipelined) = (stop.clone(), opened.clone(), pipelined.clone());
                std::thread::Builder::new()
                    .stack_size(128 * 1024)
                    .spawn(move || {
                        while !stop.load(Ordering::SeqCst) {
                            let Ok(stream) = connect_from(src, addr) else {
                                std::thread::sleep(Duration::from_millis(5));
                                continue;
                            };
                            opened.fetch_add(1, Ordering::SeqCst);
                            hold(stream, kind, &stop, &pipelined);
                            // An attacker on another machine would not slow ours; here it shares
                            // the cores with the server, so it pauses a moment before it reopens.
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    })
                    .unwrap()
            })
            .collect();
        Attack {
            stop,
            threads,
            opened,
        }
    }
}

impl Drop for Attack {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Keeps one attacking connection busy until the server closes it or the attack stops.
fn hold(mut stream: TcpStream, kind: Kind, stop: &AtomicBool, pipelined: &Arc<Vec<u8>>) {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(50)));
    let head = b"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n";
    if let Kind::SlowReader = kind {
        let mut writer = stream.try_clone().unwrap();
        let pipelined = Arc::clone(pipelined);
        // Written from a thread of its own: the server stops reading when its answers pile up.
        std::thread::spawn(move || {
            let _ = writer.write_all(&pipelined);
        });
    }
    let mut sent = 0;
    let mut buf = [0u8; 64];
    while !stop.load(Ordering::SeqCst) {
        if let Kind::Trickle = kind {
            if stream.write_all(&head[sent % head.len()..][..1]).is_err() {
                return;
            }
            sent += 1;
        }
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
        if let Kind::Trickle = kind {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Posts `n` genuine signed events from `src`, one at a time, each on a new connection: every
/// one must be answered 200 within a second. Returns the slowest answer.
pub fn genuine_events(src: &str, addr: SocketAddr, n: usize) -> Duration {
    let mut slowest = Duration::ZERO;
    for i in 0..n {
        let body = event("payment_intent.succeeded");
        let started = Instant::now();
        let reply = call_from(src, addr, &signed(&body));
        let took = started.elapsed();
        assert_eq!(reply.status, 200, "genuine event {i}: {reply:?}");
        assert!(
            took < Duration::from_secs(1),
            "genuine event {i} took {took:?}"
        );
        slowest = slowest.max(took);
        std::thread::sleep(Duration::from_millis(50));
    }
    slowest
}

/// `stripe-inbox serve` as a child process (logging at info) with these keys in `[admin]`.
pub fn serve(dir: &TempDir, admin: &str) -> Server {
    let (webhook, admin_addr) = (free_addr(), free_addr());
    let text = config(dir.path(), (&webhook, &admin_addr), "", admin);
    let server = Server::spawn_on(dir.path(), &text, (&webhook, &admin_addr), &[], "info");
    server.wait_ready();
    server
}
