//! The listener: binding, the acceptor thread, admission (the registry's limits; a refused
//! connection is answered 503 by the acceptor), a thread per connection, and graceful shutdown.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{
    IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs,
};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::connection::serve_connection;
use super::peers::{is_trusted, limit_key};
use super::registry::{Registry, Ticket};
use super::wire::{encode, ConnectionHeader};
use super::{
    log_line, Handler, Response, ServerConfig, Shared, READ_CHUNK, REJECT_WRITE_TIMEOUT,
    THREAD_STACK,
};

/// A running server: the acceptor thread and its connection threads.
pub struct Server {
    pub(super) shared: Arc<Shared>,
    pub(super) addr: SocketAddr,
    pub(super) acceptor: Option<JoinHandle<()>>,
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
            registry: Registry::new(config.max_connections, config.max_connections_per_addr),
            config,
            handler,
            stopping: AtomicBool::new(false),
            open: AtomicUsize::new(0),
            lock: Mutex::new(()),
            all_closed: Condvar::new(),
            reject_log: Throttle::new(),
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

    /// Connection threads running (a connection closed to make room counts until its thread
    /// has noticed, within a poll).
    pub fn open_connections(&self) -> usize {
        self.shared.open.load(Ordering::SeqCst)
    }

    /// Connections admitted and counted by the limits.
    pub fn admitted_connections(&self) -> usize {
        self.shared.registry.len()
    }

    /// Sets the stop flag, wakes the acceptor by connecting to it, and waits for it to exit.
    pub(super) fn stop_accepting(&mut self) {
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
pub(super) fn wake_addr(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

pub(super) fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
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

/// Lowers the thread counter and leaves the registry when the connection thread ends (or fails
/// to start).
pub(super) struct ConnGuard(Arc<Shared>, Ticket);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.registry.remove(&self.1);
        self.0.open.fetch_sub(1, Ordering::SeqCst);
        let _guard = self.0.lock.lock().unwrap_or_else(PoisonError::into_inner);
        self.0.all_closed.notify_all();
    }
}

pub(super) fn admit(shared: &Arc<Shared>, stream: TcpStream, peer: SocketAddr) {
    // A trusted proxy's connection counts under the clients it carries, not under the proxy.
    let key =
        (!is_trusted(&shared.config.trusted_proxies, peer.ip())).then(|| limit_key(peer.ip()));
    let ticket = match shared.registry.admit(key, Instant::now()) {
        Ok(ticket) => ticket,
        Err(limit) => {
            reject_busy(shared, stream, peer, limit);
            return;
        }
    };
    shared.open.fetch_add(1, Ordering::SeqCst);
    let guard = ConnGuard(Arc::clone(shared), ticket);
    let spawned = thread::Builder::new()
        .name(format!("{}-conn", shared.config.name))
        .stack_size(THREAD_STACK)
        .spawn(move || {
            let guard = guard;
            serve_connection(&guard.0, stream, peer, &guard.1);
        });
    // On failure the closure, and with it the stream and the guard, is dropped.
    if let Err(e) = spawned {
        log::error!(
            "{} could not start a connection thread for {peer}: {e}",
            shared.config.name
        );
    }
}

/// The acceptor's own answer when a limit refuses a connection.
pub(super) fn reject_busy(shared: &Shared, mut stream: TcpStream, peer: SocketAddr, limit: &str) {
    let started = Instant::now();
    let body = match limit {
        "max_connections_per_addr" => "server busy: too many connections from your address\n",
        _ => "server busy\n",
    };
    let response = Response::text(503, body).with_header("Retry-After", "1");
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
    // One hostile address can make thousands of these a second: log one a second at most.
    let Some(suppressed) = shared.reject_log.allow(Instant::now()) else {
        return;
    };
    let mut extra = format!("error={limit} open={}", shared.registry.len());
    if written.is_err() {
        extra.push_str(" write=failed");
    }
    if suppressed > 0 {
        extra.push_str(&format!(" suppressed={suppressed}"));
    }
    log::warn!(
        "{}",
        log_line(
            shared.config.name,
            "-",
            "-",
            503,
            started.elapsed(),
            peer,
            peer.ip().to_canonical(),
            &extra
        )
    );
}

/// At most one log line a second; counts the lines it held back.
pub(super) struct Throttle {
    started: Instant,
    /// Milliseconds after `started` of the last line logged, plus one (0: none yet).
    last_ms: AtomicU64,
    held: AtomicU64,
}

impl Throttle {
    pub(super) fn new() -> Throttle {
        Throttle {
            started: Instant::now(),
            last_ms: AtomicU64::new(0),
            held: AtomicU64::new(0),
        }
    }

    /// `Some(lines held back since the last one)` when this line may be logged.
    pub(super) fn allow(&self, now: Instant) -> Option<u64> {
        let now_ms = now.saturating_duration_since(self.started).as_millis() as u64 + 1;
        let last = self.last_ms.load(Ordering::SeqCst);
        if last != 0 && now_ms < last + 1000 {
            self.held.fetch_add(1, Ordering::SeqCst);
            return None;
        }
        if self
            .last_ms
            .compare_exchange(last, now_ms, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            self.held.fetch_add(1, Ordering::SeqCst);
            return None;
        }
        Some(self.held.swap(0, Ordering::SeqCst))
    }
}
