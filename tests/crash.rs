//! Crash safety of the real binary: SIGKILL at random moments under concurrent load, and a full
//! disk. In both, every event answered 2xx must be in the database exactly once afterwards, and the
//! file must pass `PRAGMA integrity_check`.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use stripe_inbox::store;

use crate::support::process::{try_post, Rng, Server};
use crate::support::{event, event_id, TempDir};

/// Event types the clients send, so that rows differ in type and object.
const TYPES: [&str; 4] = [
    "payment_intent.succeeded",
    "invoice.paid",
    "customer.updated",
    "charge.refunded",
];

/// Checks that a database is whole and that its events agree with themselves: integrity, one row
/// per id and per seq, each row's id the id in its body, the crate's structural mirror check
/// ([`stripe_inbox::mirror::queries::mirror_problems`]) and, when no server holds the file, that the mirror equals a
/// rebuild from the events ([`stripe_inbox::mirror::replay::verify_mirror`]).
pub fn assert_mirror_consistent(db: &Path) {
    let conn = store::open_read_only(db).unwrap();
    let problems = store::integrity_problems(&conn).unwrap();
    assert!(problems.is_empty(), "integrity_check: {problems:?}");
    let (rows, ids, seqs): (i64, i64, i64) = conn
        .query_row(
            "SELECT COUNT(*), COUNT(DISTINCT id), COUNT(DISTINCT seq) FROM events",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!((rows, seqs), (ids, ids), "ids and seqs are unique");
    let mut stmt = conn
        .prepare("SELECT id, body FROM events WHERE length(body) > 0")
        .unwrap();
    let rows = stmt
        .query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
        })
        .unwrap();
    for row in rows {
        let (id, body) = row.unwrap();
        assert_eq!(event_id(&body), id, "the row's id is its body's id");
    }
    let mirror = stripe_inbox::mirror::queries::mirror_problems(&conn).unwrap();
    assert!(mirror.is_empty(), "mirror: {mirror:?}");
    // When no server holds it, the mirror must equal a rebuild from the events.
    if let Ok(lock) = store::Lock::acquire(db) {
        let conn = store::open_locked(db, &lock).unwrap();
        let check = stripe_inbox::mirror::replay::verify_mirror(&conn).unwrap();
        assert_eq!(
            check.differing_count, 0,
            "mirror differs from a rebuild: {:?}",
            check.differing
        );
    }
}

/// How many rows hold `id`.
fn stored(conn: &rusqlite::Connection, id: &str) -> i64 {
    conn.query_row("SELECT COUNT(*) FROM events WHERE id = ?1", [id], |r| {
        r.get(0)
    })
    .unwrap()
}

/// Rounds of: start the server (sometimes killed while it starts), six clients sending events,
/// SIGKILL after a random delay. Events not answered 2xx are delivered again in later rounds, as
/// Stripe does. The seed fixes the schedule (kill delays, start-up kills, event types); thread
/// interleaving still varies between runs.
#[test]
fn sigkill_at_random_moments_loses_nothing_that_was_answered() {
    let dir = TempDir::new("crash");
    let mut rng = Rng::from_env("STRIPE_INBOX_CRASH_SEED", "crash");
    let figures = sigkill_rounds(dir.path(), 30, &mut rng);
    assert!(figures.answered > 200, "only {} answered", figures.answered);
    println!("crash: {}", figures.summary());
}

/// What [`sigkill_rounds`] did.
#[derive(Debug)]
pub struct Figures {
    pub rounds: usize,
    pub kills_in_startup: usize,
    /// Distinct events answered 2xx.
    pub answered: usize,
    /// Of those, answered more than once (a redelivery after a kill).
    pub redelivered: usize,
    /// Rows in `events` at the end (every event ever sent, once).
    pub stored: usize,
    pub seconds: f64,
}

impl Figures {
    pub fn summary(&self) -> String {
        format!(
            "{} rounds ({} killed in start-up), {} events stored, {} answered, {} answered more \
             than once after a kill, {:.1} s",
            self.rounds,
            self.kills_in_startup,
            self.stored,
            self.answered,
            self.redelivered,
            self.seconds
        )
    }
}

/// `rounds` rounds of load and SIGKILL on the database in `dir`, then the redeliveries and a
/// clean stop; asserts that every event answered 2xx is stored exactly once, that every event
/// ever sent is stored after redelivery, and that the mirror is consistent and equal to a rebuild.
/// Shared with the soak command (`examples/soak.rs`, 200 rounds).
pub fn sigkill_rounds(dir: &Path, rounds: usize, rng: &mut Rng) -> Figures {
    const CLIENTS: u64 = 6;
    let started = Instant::now();
    let answered: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let sent: Arc<Mutex<HashSet<String>>> = Arc::default();
    let pending: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let mut kills_in_startup = 0;
    for round in 0..rounds {
        let mut server = Server::spawn(dir, "", "", &[]);
        if round > 0 && rng.range(0, 4) == 0 {
            // Killed while opening, migrating or binding.
            let delay = rng.range(0, 40);
            std::thread::sleep(Duration::from_millis(delay));
            server.kill();
            kills_in_startup += 1;
            println!("round {round}: killed {delay} ms into start-up");
            continue;
        }
        server.wait_ready();
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..CLIENTS)
            .map(|_| {
                let mut pick = Rng::new(rng.next());
                let (stop, answered, sent, pending) = (
                    stop.clone(),
                    answered.clone(),
                    sent.clone(),
                    pending.clone(),
                );
                let addr = server.addr;
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let redelivery = pending.lock().unwrap().pop();
                        let body = redelivery.unwrap_or_else(|| {
                            event(TYPES[pick.range(0, TYPES.len() as u64) as usize])
                        });
                        let id = event_id(&body);
                        sent.lock().unwrap().insert(id.clone());
                        match try_post(addr, &body) {
                            Some(200) => *answered.lock().unwrap().entry(id).or_default() += 1,
                            Some(status) if status != 503 => panic!("answer {status} for {id}"),
                            _ => {
                                pending.lock().unwrap().push(body);
                                // The server is gone or busy: do not spin.
                                std::thread::sleep(Duration::from_millis(5));
                            }
                        }
                    }
                })
            })
            .collect();
        let delay = rng.range(20, 700);
        std::thread::sleep(Duration::from_millis(delay));
        server.kill();
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            c.join().unwrap();
        }
        println!(
            "round {round}: killed after {delay} ms of load; {} answered so far, {} waiting for \
             redelivery",
            answered.lock().unwrap().len(),
            pending.lock().unwrap().len()
        );
    }

    // A last start: deliver what was never answered (Stripe's retries), then stop cleanly.
    let mut server = Server::start(dir, "", "");
    let pending = std::mem::take(&mut *pending.lock().unwrap());
    for body in &pending {
        assert_eq!(try_post(server.addr, body), Some(200), "{}", server.log());
    }
    assert!(server.terminate().success(), "{}", server.log());

    assert_mirror_consistent(&server.db);
    let conn = store::open_read_only(&server.db).unwrap();
    let answered = answered.lock().unwrap();
    let lost: Vec<_> = answered
        .keys()
        .filter(|id| stored(&conn, id) != 1)
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} events answered 2xx are not stored exactly once: {:?}",
        lost.len(),
        answered.len(),
        &lost[..lost.len().min(5)]
    );
    // After redelivery, every event ever sent is stored, once.
    let rows: i64 = conn
        .query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows as usize, sent.lock().unwrap().len());
    let redelivered = answered.values().filter(|n| **n > 1).count();
    Figures {
        rounds,
        kills_in_startup,
        answered: answered.len(),
        redelivered,
        stored: rows as usize,
        seconds: started.elapsed().as_secs_f64(),
    }
}

/// A full disk, made without root and without a mount: the server runs under a file-size limit
/// (`RLIMIT_FSIZE`, set with util-linux `prlimit`), so every write past the limit fails with
/// EFBIG, as a write to a full disk fails with ENOSPC. SIGXFSZ is ignored first (by `sh`, and an
/// ignored signal stays ignored across exec), or the kernel would kill the server at the first
/// such write instead of failing it. Raising the limit of the running process with `prlimit --pid`
/// is the space coming back.
#[test]
fn full_disk_answers_503_then_recovers_with_nothing_lost() {
    if Command::new("prlimit").arg("--version").output().is_err() {
        println!("skipped: util-linux prlimit is not installed, so no file-size limit can be set");
        return;
    }
    const LIMIT: &str = "1048576";
    let dir = TempDir::new("full");
    let wrapper = format!("trap '' XFSZ; exec prlimit --fsize={LIMIT}: -- \"$@\"");
    let mut server = Server::spawn(dir.path(), "", "", &["sh", "-c", &wrapper, "sh"]);
    server.wait_ready();

    // Fill the disk: new events, one after another, until 30 in a row are refused.
    let mut stored_ids = Vec::new();
    let mut refused = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut in_a_row = 0;
    while in_a_row < 30 {
        assert!(
            Instant::now() < deadline,
            "never filled up: {}",
            server.log()
        );
        let body = event(TYPES[stored_ids.len() % TYPES.len()]);
        match try_post(server.addr, &body) {
            Some(200) => {
                stored_ids.push(event_id(&body));
                in_a_row = 0;
            }
            Some(503) => {
                refused.push(body);
                in_a_row += 1;
            }
            other => panic!("answer {other:?} while filling: {}", server.log()),
        }
    }
    // While it is full, redeliveries and new events are refused. The limit is per file, so a WAL
    // that the checkpointer has just started over can make room for a commit now and then: such an
    // answer must be a real 200, whose event is then stored like any other.
    let mut refused_again = 0;
    let mut retry = refused.split_off(0);
    retry.push(event("invoice.paid"));
    for body in retry {
        match try_post(server.addr, &body) {
            Some(503) => {
                refused_again += 1;
                refused.push(body);
            }
            Some(200) => stored_ids.push(event_id(&body)),
            other => panic!("answer {other:?} while full: {}", server.log()),
        }
    }
    // How many: it depends on when the checkpointer last let the WAL start over.
    println!("while full: {refused_again} of 31 refused, the rest stored");
    let log = server.log();
    let reported = ["database or disk is full", "disk I/O error"]
        .into_iter()
        .filter(|m| log.contains(m))
        .collect::<Vec<_>>();
    assert!(!reported.is_empty(), "no storage error in the log: {log}");
    println!(
        "full disk: {} events stored, then 503s; SQLite reported: {reported:?}",
        stored_ids.len()
    );

    // Space comes back: the running server takes every redelivery, without a restart.
    let status = Command::new("prlimit")
        .args(["--pid", &server.pid().to_string(), "--fsize=unlimited:"])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    for body in &refused {
        loop {
            match try_post(server.addr, body) {
                Some(200) => break,
                Some(503) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                other => panic!("answer {other:?} after space returned: {}", server.log()),
            }
        }
        stored_ids.push(event_id(body));
    }
    for _ in 0..20 {
        let body = event("charge.refunded");
        assert_eq!(try_post(server.addr, &body), Some(200));
        stored_ids.push(event_id(&body));
    }
    assert!(server.terminate().success(), "{}", server.log());

    assert_mirror_consistent(&server.db);
    let conn = store::open_read_only(&server.db).unwrap();
    for id in &stored_ids {
        assert_eq!(stored(&conn, id), 1, "{id}");
    }
    let rows: i64 = conn
        .query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows as usize, stored_ids.len());
}
