//! `backup`, `restore`, `prune`, `export` and `[retention]`, through the real binary where a shop
//! owner would use them: a backup under load, a restore round trip, every refusal, retention
//! through the writer.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use stripe_inbox::ingest::store::{store_event, Effects, Ingest, Source};
use stripe_inbox::ops::retention::Scheduler;
use stripe_inbox::{ops::export, store};

use crate::crash::assert_mirror_consistent;
use crate::support::process::{text, try_post, Server};
use crate::support::{event, event_id, TempDir, TestApp};

/// Writes `n` realistic events into a database no server holds (a test standing in for history),
/// through the one store path, in one transaction; returns their ids.
fn fill(database: &Path, n: usize) -> Vec<String> {
    let _lock = store::Lock::acquire(database).unwrap();
    let conn = store::open_writer(database).unwrap();
    let tx = conn.unchecked_transaction().unwrap();
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let body = event(["invoice.paid", "customer.updated", "charge.refunded"][i % 3]);
        let ingest = Ingest {
            envelope: stripe_inbox::event::envelope::parse(&body).unwrap(),
            body,
            secret_index: Some(0),
            received_at_ms: stripe_inbox::time::now_ms(),
            source: Source::Webhook,
        };
        store_event(&tx, &ingest, &Effects::default()).unwrap();
        ids.push(ingest.envelope.id);
    }
    tx.commit().unwrap();
    ids
}

fn count(database: &Path) -> i64 {
    crate::support::event_count(database)
}

fn has(conn: &rusqlite::Connection, id: &str) -> bool {
    conn.query_row("SELECT COUNT(*) FROM events WHERE id = ?1", [id], |r| {
        r.get::<_, i64>(0)
    })
    .unwrap()
        == 1
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Clients that POST events until stopped and record each 2xx with its time.
struct Load {
    stop: Arc<AtomicBool>,
    answered: Arc<Mutex<Vec<(String, Instant)>>>,
    other: Arc<Mutex<Vec<Option<u16>>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(server: &Server, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let answered: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
        let other: Arc<Mutex<Vec<Option<u16>>>> = Arc::default();
        let threads = (0..clients)
            .map(|_| {
                let (stop, answered, other) = (stop.clone(), answered.clone(), other.clone());
                let addr = server.addr;
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let body = event("payment_intent.succeeded");
                        match try_post(addr, &body) {
                            Some(200) => answered
                                .lock()
                                .unwrap()
                                .push((event_id(&body), Instant::now())),
                            status => other.lock().unwrap().push(status),
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            answered,
            other,
            threads,
        }
    }

    fn answered_before(&self, t: Instant) -> Vec<String> {
        let answered = self.answered.lock().unwrap();
        answered
            .iter()
            .filter(|(_, at)| *at < t)
            .map(|(id, _)| id.clone())
            .collect()
    }

    fn stop(self) -> (usize, Vec<Option<u16>>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        let n = self.answered.lock().unwrap().len();
        let other = self.other.lock().unwrap().clone();
        (n, other)
    }
}

#[test]
fn backup_under_load_is_consistent_and_holds_everything_answered_before_it() {
    let dir = TempDir::new("bk-load");
    // History enough for the copy to take several steps (about 12 MB).
    let history = fill(&dir.path().join("inbox.db"), 3000);
    let server = Server::start(dir.path(), "", "");
    let load = Load::start(&server, 4);
    std::thread::sleep(Duration::from_millis(400));

    let began = Instant::now();
    let out = dir.path().join("copy.db");
    let run = server.run(&["backup", out.to_str().unwrap()]);
    let took = began.elapsed();
    std::thread::sleep(Duration::from_millis(200));
    let answered_before = load.answered_before(began);
    let answered_during = load.answered.lock().unwrap().len() - answered_before.len();
    let (_, other) = load.stop();

    assert!(run.status.success(), "{}", text(&run));
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        stdout.contains("events") && stdout.contains("MiB"),
        "{stdout}"
    );
    assert!(
        other.is_empty(),
        "answers other than 200 under backup: {other:?}"
    );
    assert!(answered_before.len() > 10, "{}", answered_before.len());
    assert!(answered_during > 0, "ingest went on during the backup");
    println!(
        "backup took {took:?}; {} answered before it, {answered_during} during/after",
        answered_before.len()
    );

    // Consistent, and holding everything answered before it began.
    assert_mirror_consistent(&out);
    let copy = store::open_read_only(&out).unwrap();
    for id in history.iter().chain(&answered_before) {
        assert!(has(&copy, id), "{id} answered before the backup is missing");
    }
    // One self-contained file: rollback-journal mode, nothing beside it.
    let header = std::fs::read(&out).unwrap();
    assert_eq!((header[18], header[19]), (1, 1), "not in WAL mode");
    for suffix in ["-wal", "-shm", ".tmp"] {
        assert!(!sibling(&out, suffix).exists(), "{suffix} left behind");
    }
}

#[test]
fn backup_into_a_directory_rotates_and_refuses_to_overwrite() {
    let dir = TempDir::new("bk-keep");
    let server = Server::start(dir.path(), "", "");
    for _ in 0..5 {
        assert_eq!(try_post(server.addr, &event("invoice.paid")), Some(200));
    }
    let backups = dir.path().join("backups");
    std::fs::create_dir(&backups).unwrap();
    std::fs::write(backups.join("notes.txt"), "mine").unwrap();
    for _ in 0..4 {
        let run = server.run(&["backup", "--keep", "2", backups.to_str().unwrap()]);
        assert!(run.status.success(), "{}", text(&run));
    }
    let mut names: Vec<String> = std::fs::read_dir(&backups)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names.len(), 3, "{names:?}");
    assert_eq!(names.remove(0), "notes.txt", "other files are left alone");
    for name in &names {
        assert!(name.starts_with("stripe-inbox-") && name.ends_with(".db"));
        assert_eq!(count(&backups.join(name)), 5);
    }

    // A file target that exists, the live database itself, a missing OUT.
    let file = backups.join(&names[0]);
    let run = server.run(&["backup", file.to_str().unwrap()]);
    assert_eq!(run.status.code(), Some(1), "{}", text(&run));
    assert!(text(&run).contains("file exists") && text(&run).contains("--force"));
    let run = server.run(&["backup", "--force", file.to_str().unwrap()]);
    assert!(run.status.success(), "{}", text(&run));
    let run = server.run(&["backup", "--force", server.db.to_str().unwrap()]);
    assert_eq!(run.status.code(), Some(1), "{}", text(&run));
    assert!(
        text(&run).contains("live database itself"),
        "{}",
        text(&run)
    );
    let run = server.run(&["backup"]);
    assert_eq!(run.status.code(), Some(2), "{}", text(&run));
    let run = server.run(&["backup", "--keep", "2", file.to_str().unwrap()]);
    assert_eq!(run.status.code(), Some(2), "{}", text(&run));
}

#[test]
fn restore_round_trip_keeps_the_old_file_whole_and_no_stale_wal() {
    let dir = TempDir::new("restore");
    // No checkpointer: the events sent after the backup stay in the -wal file, so the restore must
    // fold them into the old file before moving it.
    let mut server = Server::start(dir.path(), "checkpoint_interval_ms = 0", "");
    let mut before = Vec::new();
    for _ in 0..20 {
        let body = event("invoice.paid");
        assert_eq!(try_post(server.addr, &body), Some(200));
        before.push(event_id(&body));
    }
    let backup = dir.path().join("b.db");
    let run = server.run(&["backup", backup.to_str().unwrap()]);
    assert!(run.status.success(), "{}", text(&run));
    for _ in 0..10 {
        assert_eq!(try_post(server.addr, &event("charge.refunded")), Some(200));
    }
    server.kill();
    let wal = sibling(&server.db, "-wal");
    assert!(
        std::fs::metadata(&wal).unwrap().len() > 0,
        "the WAL holds data"
    );

    let run = server.run(&["restore", "--force", backup.to_str().unwrap()]);
    assert!(run.status.success(), "{}", text(&run));
    assert!(text(&run).contains("20 events"), "{}", text(&run));
    assert!(text(&run).contains("before-restore"), "{}", text(&run));
    assert!(!wal.exists() && !sibling(&server.db, "-shm").exists());
    assert!(!sibling(&server.db, ".tmp").exists());
    assert_eq!(count(&server.db), 20);
    // The old file is whole: its WAL was folded in, nothing is beside it.
    let previous = sibling(&server.db, ".before-restore");
    assert_eq!(count(&previous), 30);
    assert!(!sibling(&previous, "-wal").exists());
    assert_mirror_consistent(&previous);

    // The shop runs on the restored file.
    let mut server = Server::start(dir.path(), "", "");
    assert_eq!(try_post(server.addr, &event("invoice.paid")), Some(200));
    let run = server.run(&["check"]);
    assert!(text(&run).contains("events: 21"), "{}", text(&run));
    assert!(server.terminate().success());
    assert_mirror_consistent(&server.db);
    let conn = store::open_read_only(&server.db).unwrap();
    assert!(before.iter().all(|id| has(&conn, id)));
}

#[test]
fn restore_refuses_and_then_nothing_has_changed() {
    let dir = TempDir::new("refuse");
    let mut server = Server::start(dir.path(), "", "");
    for _ in 0..20 {
        assert_eq!(try_post(server.addr, &event("invoice.paid")), Some(200));
    }
    let good = dir.path().join("good.db");
    assert!(server
        .run(&["backup", good.to_str().unwrap()])
        .status
        .success());
    let p = |path: &Path| path.to_str().unwrap().to_string();

    // While the server runs.
    let run = server.run(&["restore", "--force", &p(&good)]);
    assert_eq!(run.status.code(), Some(1));
    assert!(text(&run).contains("already served by"), "{}", text(&run));
    assert!(server.terminate().success());

    // Bad inputs.
    let garbage = dir.path().join("garbage.db");
    std::fs::write(&garbage, vec![0x5a; 64 * 1024]).unwrap();
    let corrupt = dir.path().join("corrupt.db");
    let mut bytes = std::fs::read(&good).unwrap();
    assert!(bytes.len() > 12 * 4096);
    for b in &mut bytes[3 * 4096..10 * 4096] {
        *b = 0xab;
    }
    std::fs::write(&corrupt, bytes).unwrap();
    let newer = dir.path().join("newer.db");
    std::fs::copy(&good, &newer).unwrap();
    {
        let conn = store::open_writer(&newer).unwrap();
        conn.pragma_update(None, "user_version", store::known_version() + 1)
            .unwrap();
    }
    let foreign = dir.path().join("foreign.db");
    store::open_copy_target(&foreign)
        .unwrap()
        .execute_batch("CREATE TABLE notes (text TEXT)")
        .unwrap();

    let unchanged = std::fs::read(&server.db).unwrap();
    let cases: [(&str, Vec<String>, &str); 7] = [
        ("no --force", vec![p(&good)], "a database is there already"),
        (
            "missing",
            vec![p(&dir.path().join("nope.db"))],
            "no such file",
        ),
        ("itself", vec![p(&server.db)], "the database itself"),
        ("garbage", vec![p(&garbage)], "not a database"),
        ("corrupt", vec![p(&corrupt)], "restore from"),
        ("newer", vec![p(&newer)], "newer than this build"),
        ("foreign", vec![p(&foreign)], "not a stripe-inbox database"),
    ];
    for (name, args, needle) in cases {
        let mut full = vec!["restore"];
        if name != "no --force" {
            full.push("--force");
        }
        full.extend(args.iter().map(String::as_str));
        let run = server.run(&full);
        assert_eq!(run.status.code(), Some(1), "{name}: {}", text(&run));
        assert!(text(&run).contains(needle), "{name}: {}", text(&run));
        assert_eq!(std::fs::read(&server.db).unwrap(), unchanged, "{name}");
        for suffix in [".tmp", ".before-restore"] {
            assert!(!sibling(&server.db, suffix).exists(), "{name}: {suffix}");
        }
    }

    // A leftover of an earlier restore is never overwritten.
    let previous = sibling(&server.db, ".before-restore");
    std::fs::write(&previous, "an earlier restore's file").unwrap();
    let run = server.run(&["restore", "--force", &p(&good)]);
    assert_eq!(run.status.code(), Some(1));
    assert!(
        text(&run).contains("would be overwritten"),
        "{}",
        text(&run)
    );
    assert_eq!(std::fs::read(&server.db).unwrap(), unchanged);
    assert_eq!(
        std::fs::read_to_string(&previous).unwrap(),
        "an earlier restore's file"
    );

    // Into an empty place, no --force is needed.
    let fresh = TempDir::new("restore-fresh");
    let config = fresh.path().join("config.toml");
    std::fs::write(
        &config,
        crate::support::config_text(fresh.path(), "127.0.0.1:0", "127.0.0.1:0", ""),
    )
    .unwrap();
    let run = crate::support::process::run(&["restore", &p(&good)], &config);
    assert!(run.status.success(), "{}", text(&run));
    assert_eq!(count(&fresh.path().join("inbox.db")), 20);
}

#[test]
fn prune_refuses_while_serving_then_empties_only_old_bodies() {
    let dir = TempDir::new("prune");
    let mut server = Server::start(dir.path(), "", "");
    let mut bodies = HashMap::new();
    for i in 0..60 {
        let body = event(if i % 2 == 0 {
            "invoice.paid"
        } else {
            "customer.updated"
        });
        assert_eq!(try_post(server.addr, &body), Some(200));
        bodies.insert(event_id(&body), body);
    }
    let run = server.run(&["prune", "--older-than", "90d", "--dry-run"]);
    assert!(run.status.success(), "{}", text(&run));
    assert!(text(&run).contains("would prune 0"), "{}", text(&run));
    let run = server.run(&["prune", "--older-than", "90d"]);
    assert_eq!(run.status.code(), Some(1));
    assert!(
        text(&run).contains("applies [retention] body_days itself"),
        "{}",
        text(&run)
    );
    let run = server.run(&["prune", "--older-than", "1h"]);
    assert_eq!(run.status.code(), Some(2), "{}", text(&run));
    assert!(server.terminate().success());

    // Make the first 40 a hundred days old (the test stands in for time passing).
    {
        let _lock = store::Lock::acquire(&server.db).unwrap();
        let conn = store::open_writer(&server.db).unwrap();
        conn.execute(
            "UPDATE events SET received_at = received_at - 100 * 86400000 WHERE seq <= 40",
            [],
        )
        .unwrap();
    }
    // The events whose state the mirror holds are kept whatever their age.
    let protected: HashSet<String> = {
        let conn = store::open_read_only(&server.db).unwrap();
        let mut stmt = conn
            .prepare("SELECT event_id FROM objects o JOIN events e ON e.id = o.event_id WHERE e.seq <= 40")
            .unwrap();
        let ids = stmt
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        ids
    };
    let size = |p: &Path| std::fs::metadata(p).unwrap().len();
    let size_before = size(&server.db);
    let run = server.run(&["prune", "--older-than", "90d"]);
    assert!(run.status.success(), "{}", text(&run));
    assert!(
        text(&run).contains(&format!("pruned {} event bodies", 40 - protected.len())),
        "{} protected: {}",
        protected.len(),
        text(&run)
    );
    assert!(
        size(&server.db) < size_before,
        "{} -> {}",
        size_before,
        size(&server.db)
    );
    let run = server.run(&["prune", "--older-than", "90d"]);
    assert!(
        text(&run).contains("pruned 0 event bodies"),
        "{}",
        text(&run)
    );

    let conn = store::open_read_only(&server.db).unwrap();
    let mut stmt = conn.prepare("SELECT id, seq, body FROM events").unwrap();
    let rows: Vec<(String, i64, Vec<u8>)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(rows.len(), 60, "rows stay");
    for (id, seq, body) in rows {
        if seq <= 40 && !protected.contains(&id) {
            assert!(body.is_empty(), "{id} was pruned");
        } else {
            assert_eq!(body, bodies[&id], "{id} is untouched");
        }
    }
    let free: i64 = conn
        .query_row("PRAGMA freelist_count", [], |r| r.get(0))
        .unwrap();
    assert_eq!(free, 0, "the space went back to the file system");
    assert_mirror_consistent(&server.db);

    let run = server.run(&["export"]);
    assert_eq!(
        String::from_utf8_lossy(&run.stdout).lines().count(),
        20 + protected.len()
    );
    assert!(
        text(&run).contains(&format!("{} more skipped", 40 - protected.len())),
        "{}",
        text(&run)
    );
}

#[test]
fn serve_prunes_through_its_writer_while_taking_webhooks() {
    let mut app = TestApp::start();
    let mut ids = Vec::new();
    for _ in 0..30 {
        let body = event("invoice.paid");
        assert_eq!(app.post_signed(&body).status, 200);
        ids.push(event_id(&body));
    }
    let writer = app.service.as_ref().unwrap().writer();
    writer
        .run(|conn| {
            conn.execute(
                "UPDATE events SET received_at = received_at - 100 * 86400000 WHERE seq <= 20",
                [],
            )
            .map(|_| ())
            .map_err(|e| stripe_inbox::error::Error::sqlite("age events", e))
        })
        .unwrap();
    // The event whose state the mirror holds stays, whatever its age.
    let protected: i64 = store::open_read_only(&app.db_path())
        .unwrap()
        .query_row(
            "SELECT COUNT(*) FROM objects o JOIN events e ON e.id = o.event_id WHERE e.seq <= 20",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let scheduler = Scheduler::start(
        &app.db_path(),
        writer,
        90,
        Duration::ZERO,
        Duration::from_secs(3600),
    )
    .unwrap();
    for _ in 0..10 {
        assert_eq!(app.post_signed(&event("charge.refunded")).status, 200);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let pruned = || {
        store::open_read_only(&app.db_path())
            .unwrap()
            .query_row(
                "SELECT COUNT(*) FROM events WHERE length(body) = 0",
                [],
                |r| r.get::<_, i64>(0),
            )
            .unwrap()
    };
    while pruned() < 20 - protected {
        assert!(Instant::now() < deadline, "retention did not run");
        std::thread::sleep(Duration::from_millis(50));
    }
    scheduler.stop();
    assert_eq!(pruned(), 20 - protected);
    assert_eq!(app.event_count(), 40);

    // A service with [retention] set stops promptly while its first pass is still ahead.
    app.stop();
    let mut app = TestApp::start_with("[retention]\nbody_days = 90");
    let stopping = Instant::now();
    app.stop();
    assert!(stopping.elapsed() < Duration::from_secs(5));
}

#[test]
fn export_writes_each_event_as_one_json_line_while_serving() {
    let dir = TempDir::new("export");
    let server = Server::start(dir.path(), "", "");
    let mut bodies = HashMap::new();
    for i in 0..10 {
        let body = event(if i < 5 {
            "invoice.paid"
        } else {
            "charge.refunded"
        });
        assert_eq!(try_post(server.addr, &body), Some(200));
        bodies.insert(event_id(&body), body);
    }
    let lines = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["export"];
        all.extend_from_slice(args);
        let run = server.run(&all);
        assert!(run.status.success(), "{}", text(&run));
        String::from_utf8(run.stdout)
            .unwrap()
            .lines()
            .map(String::from)
            .collect()
    };
    let all = lines(&[]);
    assert_eq!(all.len(), 10);
    for line in &all {
        let id = event_id(line.as_bytes());
        // The body as received, minus whitespace between tokens, and nothing else.
        assert_eq!(line.as_bytes(), export::minify(&bodies[&id]));
        let a: serde_json::Value = serde_json::from_str(line).unwrap();
        let b: serde_json::Value = serde_json::from_slice(&bodies[&id]).unwrap();
        assert_eq!(a, b);
    }
    let invoices = lines(&["--type", "invoice.*"]);
    assert_eq!(invoices.len(), 5);
    assert!(invoices
        .iter()
        .all(|l| l.contains("\"type\":\"invoice.paid\"")));
    assert_eq!(lines(&["--type", "invoice.*,*.refunded"]).len(), 10);
    assert_eq!(lines(&["--type", "customer.*"]).len(), 0);
    assert_eq!(lines(&["--since", "2100-01-01"]).len(), 0);
    assert_eq!(lines(&["--until", "2000-01-01"]).len(), 0);
    assert_eq!(
        lines(&["--since", "2000-01-01T00:00:00Z", "--until", "4102444800"]).len(),
        10
    );
}

#[test]
fn checkpoint_interval_zero_leaves_checkpoints_to_someone_else() {
    for (ms, moves_pages) in [(0, false), (100, true)] {
        let app = TestApp::start_with(&format!("checkpoint_interval_ms = {ms}"));
        let size = || std::fs::metadata(app.db_path()).unwrap().len();
        let at_start = size();
        for _ in 0..30 {
            assert_eq!(app.post_signed(&event("invoice.paid")).status, 200);
        }
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(
            size() > at_start,
            moves_pages,
            "checkpoint_interval_ms = {ms}"
        );
    }
}
