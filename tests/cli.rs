//! The real binary: start-up errors, the single-server lock, send-test-event, graceful shutdown under
//! load, and bursts of connections.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use stripe_inbox::store;

use crate::support::{self, config_text, event, event_id, free_addr, TempDir};

const BIN: &str = env!("CARGO_BIN_EXE_stripe-inbox");

/// A `stripe-inbox serve` child process on free ports.
struct Served {
    child: Child,
    addr: SocketAddr,
    config: std::path::PathBuf,
    db: std::path::PathBuf,
    _dir: TempDir,
}

impl Served {
    fn start() -> Served {
        let dir = TempDir::new("bin");
        let (webhook, admin) = (free_addr(), free_addr());
        let config = dir.path().join("config.toml");
        std::fs::write(&config, config_text(dir.path(), &webhook, &admin, "")).unwrap();
        let log = std::fs::File::create(dir.path().join("serve.log")).unwrap();
        let child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let served = Served {
            child,
            addr: webhook.parse().unwrap(),
            config,
            db: dir.path().join("inbox.db"),
            _dir: dir,
        };
        served.wait_ready(admin.parse().unwrap());
        served
    }

    fn wait_ready(&self, admin: SocketAddr) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if TcpStream::connect(admin).is_ok() && TcpStream::connect(self.addr).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("server did not start");
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        self.child.wait().unwrap()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(args: &[&str], config: Option<&std::path::Path>) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("STRIPE_WEBHOOK_SECRET")
        .env("RUST_LOG", "warn");
    if let Some(config) = config {
        cmd.arg("--config").arg(config);
    }
    cmd.output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[test]
fn usage_errors_exit_2_and_config_errors_exit_1() {
    let out = run(&["nonsense"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("error: unknown command"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("try: stripe-inbox --help"));
    assert_eq!(run(&["serve", "--help"], None).status.code(), Some(0));

    let dir = TempDir::new("cfg");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[webhook]\nsecret = \"whsec_x\"\n").unwrap();
    let out = run(&["serve"], Some(&bad));
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("bad.toml") && err.contains("secret"), "{err}");

    let no_secret = dir.path().join("nosecret.toml");
    std::fs::write(
        &no_secret,
        format!(
            "[database]\npath = \"{}\"\n",
            dir.path().join("x.db").display()
        ),
    )
    .unwrap();
    let out = run(&["serve"], Some(&no_secret));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no webhook signing secret"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("STRIPE_WEBHOOK_SECRET"));
    assert!(
        !dir.path().join("x.db").exists(),
        "nothing is created before the config is valid"
    );
}

#[test]
fn second_server_is_refused_and_tools_work_beside_the_first() {
    let mut served = Served::start();
    let out = run(&["serve"], Some(&served.config));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("already served by stripe-inbox pid"),
        "{}",
        stderr(&out)
    );

    let out = run(
        &["send-test-event", "--type", "checkout.session.completed"],
        Some(&served.config),
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("-> 200"), "{printed}");

    let out = run(&["check"], Some(&served.config));
    let printed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{printed}{}", stderr(&out));
    assert!(
        printed.contains("integrity: ok") && printed.contains("events: 1"),
        "{printed}"
    );
    assert!(printed.contains("read-only"), "{printed}");

    assert!(served.terminate().success());
    // With the server gone, check takes the lock and may migrate.
    let out = run(&["check"], Some(&served.config));
    assert_eq!(out.status.code(), Some(0));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("read-only"));
}

#[test]
fn shutdown_under_load_loses_nothing_that_was_answered() {
    let mut served = Served::start();
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(Mutex::new(Vec::new()));
    let addr = served.addr;
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (stop, answered) = (stop.clone(), answered.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let body = event("payment_intent.succeeded");
                    let request = support::signed_request(&body, true);
                    let Ok(mut stream) = TcpStream::connect(addr) else {
                        continue;
                    };
                    stream
                        .set_read_timeout(Some(Duration::from_secs(15)))
                        .unwrap();
                    if stream.write_all(&request).is_err() {
                        continue;
                    }
                    // A connection reset or close during shutdown is not an answer.
                    let reply = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        support::read_reply(&mut stream)
                    }));
                    if let Ok(reply) = reply {
                        if reply.status == 200 {
                            answered.lock().unwrap().push(event_id(&body));
                        }
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    let status = served.terminate();
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    assert!(status.success(), "serve exits 0 on SIGTERM: {status:?}");
    let answered = answered.lock().unwrap();
    assert!(answered.len() > 50, "only {} answered", answered.len());
    let conn = store::open_read_only(&served.db).unwrap();
    let mut missing = 0;
    for id in answered.iter() {
        let n: i64 = conn
            .query_row("SELECT COUNT(*) FROM events WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .unwrap();
        missing += (n != 1) as usize;
    }
    assert_eq!(
        missing,
        0,
        "{missing} of {} answered events are not stored",
        answered.len()
    );
    assert!(store::integrity_problems(&conn).unwrap().is_empty());
}

/// tiny_http 0.12 left connections of a burst unread; our server must answer every one promptly,
/// even with idle and half-sent connections open beside them.
#[test]
fn bursts_of_connections_are_all_answered_within_a_second() {
    let served = Served::start();
    let addr = served.addr;
    for round in 0..5 {
        // Connections that say nothing, and ones that stall mid-head.
        let mut idle: Vec<TcpStream> = (0..16).map(|_| TcpStream::connect(addr).unwrap()).collect();
        for _ in 0..4 {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(b"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nContent-Le")
                .unwrap();
            idle.push(s);
        }
        let barrier = Arc::new(Barrier::new(64));
        let threads: Vec<_> = (0..64)
            .map(|_| {
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    let body = event("charge.succeeded");
                    let request = support::signed_request(&body, false);
                    barrier.wait();
                    let sent = Instant::now();
                    let mut stream = TcpStream::connect(addr).unwrap();
                    stream
                        .set_read_timeout(Some(Duration::from_secs(3)))
                        .unwrap();
                    stream.write_all(&request).unwrap();
                    let reply = support::read_reply(&mut stream);
                    (reply.status, sent.elapsed())
                })
            })
            .collect();
        let results: Vec<(u16, Duration)> =
            threads.into_iter().map(|t| t.join().unwrap()).collect();
        let slowest = results.iter().map(|r| r.1).max().unwrap();
        assert!(
            results.iter().all(|r| r.0 == 200),
            "round {round}: {results:?}"
        );
        assert!(
            slowest < Duration::from_secs(1),
            "round {round}: slowest answer took {slowest:?}"
        );
        drop(idle);
    }
    assert_eq!(support::event_count(&served.db), 5 * 64);
}

/// `check` warns (and still exits 0) about what is unsafe in production: here a database on
/// tmpfs, and no backups until `stripe-inbox backup` has run.
#[test]
fn check_warns_about_a_database_on_tmpfs_and_about_no_backups() {
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        TempDir::new_in(shm, "check-tmpfs")
    } else {
        eprintln!("skip: no /dev/shm (tmpfs) here; only the no-backups warning is checked");
        TempDir::new("check-tmpfs")
    };
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        config_text(dir.path(), "127.0.0.1:0", "127.0.0.1:0", ""),
    )
    .unwrap();
    let out = run(&["check"], Some(&config));
    let printed = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(
        out.status.code(),
        Some(0),
        "warnings do not fail check: {printed}"
    );
    assert!(printed.contains("all good"), "{printed}");
    if shm.is_dir() {
        assert!(
            printed.contains("warning: database") && printed.contains("tmpfs"),
            "{printed}"
        );
    }
    assert!(printed.contains("warning: no backups"), "{printed}");

    let backup = run(
        &["backup", dir.path().join("copy.db").to_str().unwrap()],
        Some(&config),
    );
    assert_eq!(backup.status.code(), Some(0), "{}", stderr(&backup));
    let printed = String::from_utf8_lossy(&run(&["check"], Some(&config)).stdout).to_string();
    assert!(
        !printed.contains("warning: no backups"),
        "a backup just ran: {printed}"
    );
}

/// `check` shows each `[[forward]]` destination: a missing signing secret is a problem (exit 1),
/// and dead deliveries or deliveries left for a destination the config no longer has are warned
/// about (exit 0).
#[test]
fn check_shows_forward_destinations_and_their_deliveries() {
    let dir = TempDir::new("check-forward");
    let config = dir.path().join("config.toml");
    // One [[forward]] block "app", its secret given by `secret`.
    let write_config = |secret: &str| {
        let forward =
            format!("\n[[forward]]\nname = \"app\"\nurl = \"http://127.0.0.1:9/hook\"\n{secret}\n");
        let text = config_text(dir.path(), "127.0.0.1:0", "127.0.0.1:0", &forward);
        std::fs::write(&config, text).unwrap();
    };
    write_config("secret_env = \"STRIPE_INBOX_IT_UNSET_FORWARD_SECRET\"");
    let out = run(&["check"], Some(&config));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no signing secret")
            && stderr(&out).contains("STRIPE_INBOX_IT_UNSET_FORWARD_SECRET"),
        "{}",
        stderr(&out)
    );

    write_config("secret = \"whsec_app\"");
    let out = run(&["check"], Some(&config));
    let printed = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(0), "{printed}{}", stderr(&out));
    assert!(
        printed.contains(
            "forward \"app\": http://127.0.0.1:9/hook for *; signing secret set (in the file)"
        ) && printed.contains("forwarding to \"app\": 0 pending, 0 in flight, 0 dead"),
        "{printed}"
    );
    assert!(!printed.contains("dead deliveries"), "{printed}");

    // One dead delivery to "app", one waiting for "old", which no block names.
    let conn = store::open_writer(&dir.path().join("inbox.db")).unwrap();
    conn.execute_batch(
        "INSERT INTO deliveries (event_id, destination, lane, k_created, k_seq, state, created_at,
                                 retry_from, next_attempt_at)
         VALUES ('evt_1', 'app', 'cus_1', 1, 1, 'dead', 1, 1, 1),
                ('evt_1', 'old', 'cus_1', 1, 1, 'pending', 1, 1, 1);",
    )
    .unwrap();
    drop(conn);
    let out = run(&["check"], Some(&config));
    let printed = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(0), "warnings only: {printed}");
    assert!(
        printed.contains("warning: 1 dead deliveries to \"app\"")
            && printed.contains("forwarding to \"old\": 1 pending, 0 in flight, 0 dead")
            && printed.contains("(no longer in the config)")
            && printed.contains("warning: 1 deliveries wait for \"old\""),
        "{printed}"
    );
}
