//! The real binary as a child process: `serve` on a directory that outlives it (so it can be
//! killed and started again on the same database), commands run beside it, and a client that never
//! panics when the server dies mid-request.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use stripe_inbox::{event::signature, time};

use super::{config_text, free_addr, SECRET};

/// The binary. Cargo names it for the integration tests; an example that includes this module
/// (`examples/soak.rs`) finds it in its own profile directory (`target/<profile>/`), next to
/// `examples/`.
pub fn bin() -> PathBuf {
    match option_env!("CARGO_BIN_EXE_stripe-inbox") {
        Some(path) => PathBuf::from(path),
        None => std::env::current_exe()
            .ok()
            .and_then(|exe| Some(exe.parent()?.parent()?.join("stripe-inbox")))
            .unwrap_or_else(|| PathBuf::from("stripe-inbox")),
    }
}

/// A `stripe-inbox serve` child on `dir/inbox.db`, on fresh free ports.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub config: PathBuf,
    pub db: PathBuf,
    log: Arc<Mutex<Vec<u8>>>,
}

impl Server {
    /// Starts `serve` and waits until both listeners accept. `database_extra` is appended to the
    /// `[database]` table of the config, `top` is added at the end of the file (e.g. a
    /// `[retention]` table).
    pub fn start(dir: &Path, database_extra: &str, top: &str) -> Server {
        let server = Server::spawn(dir, database_extra, top, &[]);
        server.wait_ready();
        server
    }

    /// Starts `serve` behind `prefix` (a command that execs the rest of its arguments, like
    /// `prlimit ...`) without waiting for it to listen.
    pub fn spawn(dir: &Path, database_extra: &str, top: &str, prefix: &[&str]) -> Server {
        let (webhook, admin) = (free_addr(), free_addr());
        let text = format!(
            "{}{top}\n",
            config_text(dir, &webhook, &admin, database_extra)
        );
        Server::spawn_on(dir, &text, (&webhook, &admin), prefix, "warn")
    }

    /// Starts `serve` on this config text (whose listeners are `listen`), logging at `rust_log`,
    /// without waiting for it to listen.
    pub fn spawn_on(
        dir: &Path,
        text: &str,
        listen: (&str, &str),
        prefix: &[&str],
        rust_log: &str,
    ) -> Server {
        let config = dir.join("config.toml");
        std::fs::write(&config, text).unwrap();
        let mut cmd = match prefix.split_first() {
            Some((first, rest)) => {
                let mut cmd = Command::new(first);
                cmd.args(rest).arg(bin());
                cmd
            }
            None => Command::new(bin()),
        };
        let mut child = cmd
            .args(["serve", "--config"])
            .arg(&config)
            .env("RUST_LOG", rust_log)
            .env_remove("STRIPE_WEBHOOK_SECRET")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Drain stderr into memory: a pipe, not a file, so a file-size limit never touches it.
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Server {
            child,
            addr: listen.0.parse().unwrap(),
            admin: listen.1.parse().unwrap(),
            config,
            db: dir.join("inbox.db"),
            log,
        }
    }

    /// Waits until both listeners accept connections; panics with the log if the server exits.
    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if TcpStream::connect(self.admin).is_ok() && TcpStream::connect(self.addr).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("server did not start; log:\n{}", self.log());
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, and reap it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, and wait for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        self.child.wait().unwrap()
    }

    /// What the server wrote to stderr so far.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&self.log.lock().unwrap()).to_string()
    }

    /// Runs a command of the binary with this server's config.
    pub fn run(&self, args: &[&str]) -> Output {
        run(args, &self.config)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `stripe-inbox ARGS --config CONFIG`.
pub fn run(args: &[&str], config: &Path) -> Output {
    Command::new(bin())
        .args(args)
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .env_remove("STRIPE_WEBHOOK_SECRET")
        .output()
        .unwrap()
}

/// stdout and stderr of a command, for assertion messages.
pub fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// POSTs a freshly signed `body` on a new connection; the status, or `None` when the connection
/// failed or closed before a whole answer (a server killed mid-request).
pub fn try_post(addr: SocketAddr, body: &[u8]) -> Option<u16> {
    let sig = signature::sign(body, SECRET, time::now_ms() / 1000);
    let request = super::request(
        "POST",
        "/webhooks/stripe",
        body,
        &[("Stripe-Signature", &sig)],
        true,
    );
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    stream.write_all(&request).ok()?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).ok()?;
    let head_end = answer.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&answer[..head_end]).ok()?;
    let status: u16 = head.split_whitespace().nth(1)?.parse().ok()?;
    // A whole answer only: `Connection: close` means the body runs to the end of the stream.
    let length: usize = head.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("content-length:")
            .and_then(|v| v.trim().parse().ok())
    })?;
    (answer.len() >= head_end + 4 + length).then_some(status)
}

/// A small seeded random generator (xorshift64*), so that a failing run can be replayed.
pub struct Rng(u64);

impl Rng {
    /// Seeded from `var` if set, else from the clock; prints the seed and how to replay it.
    pub fn from_env(var: &str, test: &str) -> Rng {
        let seed = std::env::var(var)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| time::now_ms() as u64 ^ u64::from(std::process::id()));
        println!("{test}: seed {seed} (replay with {var}={seed})");
        Rng::new(seed)
    }

    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo).max(1)
    }
}
