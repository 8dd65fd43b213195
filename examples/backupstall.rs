//! How long does a backup stall ingest? Starts `serve` on an existing database, sends signed events
//! at a fixed rate over keep-alive connections, runs `stripe-inbox backup` in the middle, and prints
//! the latency of the requests sent before, during and after the backup.
//!
//! ```text
//! cargo build --release
//! cargo run --release --example filldb -- --events 1000000 /tmp/big.db
//! cargo run --release --example backupstall -- --db /tmp/big.db [--rate 200] [--connections 8]
//!     [--before 5] [--after 3] [--bin target/release/stripe-inbox] [--without-backup SECS]
//! ```
//!
//! `--without-backup SECS` idles for SECS where the backup would run: the same load and windows
//! with no backup, to see what the machine does on its own. `BACKUPSTALL_TIMELINE=1` also prints
//! the slowest request of every second.
//!
//! Open loop: each request has a scheduled send time and its latency counts from then, so a server
//! that falls behind shows it. The database gets the events it is sent; use a scratch copy. Linux
//! only (stops the server with `kill -TERM`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use stripe_inbox::{event::signature, event::testevent, time};

const SECRET: &str = "whsec_backupstall";

struct Args {
    bin: PathBuf,
    db: PathBuf,
    rate: f64,
    connections: usize,
    before: f64,
    after: f64,
    without_backup: Option<f64>,
}

/// One request: when it was due (seconds since the start), its latency and its status.
struct Sample {
    due: f64,
    latency: Duration,
    status: u16,
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("backupstall: {e}; try --help");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("backupstall: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        bin: PathBuf::from("target/release/stripe-inbox"),
        db: PathBuf::new(),
        rate: 200.0,
        connections: 8,
        before: 5.0,
        after: 3.0,
        without_backup: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--bin" => args.bin = PathBuf::from(value()?),
            "--db" => args.db = PathBuf::from(value()?),
            "--rate" => args.rate = value()?.parse().map_err(|_| "--rate: a number")?,
            "--connections" => {
                args.connections = value()?.parse().map_err(|_| "--connections: a number")?
            }
            "--before" => args.before = value()?.parse().map_err(|_| "--before: seconds")?,
            "--after" => args.after = value()?.parse().map_err(|_| "--after: seconds")?,
            "--without-backup" => {
                args.without_backup =
                    Some(value()?.parse().map_err(|_| "--without-backup: seconds")?)
            }
            "-h" | "--help" => {
                println!(
                    "usage: backupstall --db PATH [--rate N] [--connections N] [--before S] \
                     [--after S] [--bin PATH] [--without-backup S]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if args.db.as_os_str().is_empty() {
        return Err("--db is required".into());
    }
    if args.rate <= 0.0 || args.connections == 0 {
        return Err("--rate and --connections must be above 0".into());
    }
    Ok(args)
}

fn free_addr() -> Result<SocketAddr, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    listener.local_addr().map_err(|e| e.to_string())
}

fn run(args: &Args) -> Result<(), String> {
    let db = args
        .db
        .canonicalize()
        .map_err(|e| format!("{}: {e}", args.db.display()))?;
    let dir = std::env::temp_dir().join(format!("stripe-inbox-backupstall-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let (webhook, admin) = (free_addr()?, free_addr()?);
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[database]\npath = {:?}\n[webhook]\nlisten = \"{webhook}\"\nsecrets = [\"{SECRET}\"]\n\
             secrets_env = \"\"\n[admin]\nlisten = \"{admin}\"\n",
            db.display().to_string()
        ),
    )
    .map_err(|e| e.to_string())?;
    let log = std::fs::File::create(dir.join("serve.log")).map_err(|e| e.to_string())?;
    let mut server = Command::new(&args.bin)
        .args(["serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn,stripe_inbox::store::writer=info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("start {}: {e}", args.bin.display()))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(webhook).is_err() || TcpStream::connect(admin).is_err() {
        if Instant::now() > deadline {
            let _ = server.kill();
            return Err("the server did not start".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    // Fixed-rate load on keep-alive connections.
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let interval = Duration::from_secs_f64(args.connections as f64 / args.rate);
    let clients: Vec<_> = (0..args.connections)
        .map(|k| {
            let stop = stop.clone();
            let offset = interval.mul_f64(k as f64 / args.connections as f64);
            std::thread::spawn(move || client(webhook, start + offset, interval, &stop, start))
        })
        .collect();

    // The backup, in the middle.
    std::thread::sleep(Duration::from_secs_f64(args.before));
    let out = dir.join("backup.db");
    let began = start.elapsed().as_secs_f64();
    let backup = match args.without_backup {
        Some(secs) => {
            std::thread::sleep(Duration::from_secs_f64(secs));
            Command::new("true").output()
        }
        None => Command::new(&args.bin)
            .args(["backup", "--config"])
            .arg(&config)
            .arg(&out)
            .output(),
    }
    .map_err(|e| format!("run backup: {e}"))?;
    let ended = start.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs_f64(args.after));
    stop.store(true, Ordering::Relaxed);
    let mut samples: Vec<Sample> = Vec::new();
    for c in clients {
        samples.extend(c.join().map_err(|_| "a client panicked")?);
    }
    let _ = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status();
    let _ = server.wait();
    let _ = std::fs::remove_file(&out);
    // The writer's own figures (its longest COMMIT shows a checkpoint run inside a commit).
    let log = std::fs::read_to_string(dir.join("serve.log")).unwrap_or_default();
    if let Some(stats) = log.lines().find(|l| l.contains("writer stats")) {
        println!(
            "server: {}",
            stats.split("writer stats: ").nth(1).unwrap_or(stats)
        );
    }

    println!(
        "backup: {}",
        String::from_utf8_lossy(&backup.stdout).trim_end()
    );
    if !backup.status.success() {
        println!("backup failed: {}", String::from_utf8_lossy(&backup.stderr));
    }
    println!(
        "load: {} events/s on {} keep-alive connections; latency from the scheduled send time",
        args.rate, args.connections
    );
    report("before the backup", &samples, 1.0, began);
    report("during the backup", &samples, began, ended);
    report("after the backup", &samples, ended, f64::MAX);
    if std::env::var_os("BACKUPSTALL_TIMELINE").is_some() {
        // The slowest request due in each second, relative to the backup's start.
        let mut worst = std::collections::BTreeMap::new();
        for s in &samples {
            let second = (s.due - began).floor() as i64;
            let ms = s.latency.as_secs_f64() * 1000.0;
            let slot = worst.entry(second).or_insert(0.0f64);
            *slot = slot.max(ms);
        }
        let line: Vec<String> = worst.iter().map(|(s, ms)| format!("{s}:{ms:.0}")).collect();
        println!(
            "slowest per second (second since backup start: ms): {}",
            line.join(" ")
        );
    }
    let failed = samples.iter().filter(|s| s.status != 200).count();
    println!("answers other than 200: {failed}");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn report(label: &str, samples: &[Sample], from: f64, to: f64) {
    let mut ms: Vec<f64> = samples
        .iter()
        .filter(|s| s.due >= from && s.due < to)
        .map(|s| s.latency.as_secs_f64() * 1000.0)
        .collect();
    if ms.is_empty() {
        println!("{label}: no requests");
        return;
    }
    ms.sort_by(f64::total_cmp);
    let pct = |p: f64| ms[((ms.len() as f64 * p) as usize).min(ms.len() - 1)];
    println!(
        "{label:<18} {:>6} requests  p50 {:>6.2} ms  p99 {:>7.2} ms  p99.9 {:>7.2} ms  max {:>7.2} ms",
        ms.len(),
        pct(0.5),
        pct(0.99),
        pct(0.999),
        ms[ms.len() - 1]
    );
}

fn client(
    addr: SocketAddr,
    first: Instant,
    interval: Duration,
    stop: &AtomicBool,
    start: Instant,
) -> Vec<Sample> {
    let types = [
        "payment_intent.succeeded",
        "invoice.paid",
        "customer.updated",
    ];
    let mut samples = Vec::new();
    let mut conn: Option<TcpStream> = None;
    let mut due = first;
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let body = testevent::build(types[n % types.len()], time::now_ms() / 1000)
            .and_then(|e| serde_json::to_vec_pretty(&e).ok())
            .unwrap_or_default();
        let status = send(&mut conn, addr, &body).unwrap_or(0);
        samples.push(Sample {
            due: (due - start).as_secs_f64(),
            latency: due.elapsed(),
            status,
        });
        n += 1;
        due += interval;
    }
    samples
}

/// POSTs `body` on the kept-alive connection (opening one if needed); the status.
fn send(conn: &mut Option<TcpStream>, addr: SocketAddr, body: &[u8]) -> Option<u16> {
    let sig = signature::sign(body, SECRET, time::now_ms() / 1000);
    let mut request = format!(
        "POST /webhooks/stripe HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Stripe-Signature: {sig}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    for _ in 0..2 {
        if conn.is_none() {
            let stream = TcpStream::connect(addr).ok()?;
            stream
                .set_read_timeout(Some(Duration::from_secs(60)))
                .ok()?;
            stream.set_nodelay(true).ok()?;
            *conn = Some(stream);
        }
        let stream = conn.as_mut()?;
        match stream
            .write_all(&request)
            .ok()
            .and_then(|()| read_answer(stream))
        {
            Some(status) => return Some(status),
            None => *conn = None,
        }
    }
    None
}

fn read_answer(stream: &mut TcpStream) -> Option<u16> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end]).ok()?;
            let status = head.split_whitespace().nth(1)?.parse().ok()?;
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .and_then(|v| v.trim().parse().ok())
                })
                .unwrap_or(0);
            while buf.len() < end + 4 + length {
                let n = stream.read(&mut chunk).ok().filter(|n| *n > 0)?;
                buf.extend_from_slice(&chunk[..n]);
            }
            return Some(status);
        }
        let n = stream.read(&mut chunk).ok().filter(|n| *n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
    }
}
