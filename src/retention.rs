//! Retention: emptying the raw bodies of old events, so that the file stops growing without bound.
//!
//! A pruned event keeps its row (id, type, created, object, received times, delivery count,
//! decision); only `body` becomes the empty blob. A real body is never empty (the webhook refuses
//! anything that is not an event), so `length(body) = 0` is the mark and no schema step is needed.
//! `export` skips pruned events; `replay` and the admin pages must read an empty body as "pruned".
//! A rebuild cannot re-derive anything from a pruned event, which is why events that the mirror or
//! a pending delivery still needs are never pruned (see [`PROTECTED`]).
//!
//! Every write goes through the writer ([`WriterHandle::run`]): `serve` runs a [`Scheduler`] (once
//! shortly after start, then daily), and `stripe-inbox prune` starts a writer of its own while it
//! holds the database lock. The table is walked in windows of [`WINDOW`] consecutive rows: a
//! read-only connection reads the window first (which warms the page cache and says whether
//! anything in it is due), then one small writer task empties what is due, checking every
//! condition again inside the writer's transaction. The writer is held a few milliseconds at a
//! time, so webhook commits wait behind at most one window. Then `PRAGMA incremental_vacuum` (new
//! databases are created with `auto_vacuum=INCREMENTAL`) gives the freed pages back to the file
//! system, also in small steps.
//!
//! Age is `received_at`, when this inbox stored the event. It grows with the rowid, so a pass
//! walks from the oldest row and stops at the first window whose oldest event is too young. Each
//! pass re-reads the already pruned rows (small once their bodies are gone); that is the price of
//! needing no schema change, and it is paid once a day in the background.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use lexopt::prelude::*;
use rusqlite::{params, Connection};

use crate::config::Config;
use crate::db::{self, Lock};
use crate::error::{Error, Result};
use crate::time;
use crate::writer::{Writer, WriterConfig, WriterHandle};

/// Rows looked at per writer task (about 1 MB of bodies at 2 KB each).
pub const WINDOW: i64 = 500;
/// Pages freed per incremental-vacuum task (4 MB at 4 KiB pages).
const VACUUM_PAGES: i64 = 1000;
/// Pause between windows when a server is taking webhooks meanwhile.
pub const SERVE_PAUSE: Duration = Duration::from_millis(10);
/// How long a pass keeps retrying while the writer's queue is full.
const BUSY_RETRY_FOR: Duration = Duration::from_secs(30);

/// Conditions on an `events` row, in SQL, under which its body must be kept whatever its age.
///
/// Hooks, for the modules that will need old bodies:
/// - the mirror: the event whose state an object holds now (its newest state), e.g.
///   `EXISTS (SELECT 1 FROM objects o WHERE o.event_id = events.id)`;
/// - forwarding: an event a pending delivery still has to send, e.g.
///   `EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = events.id AND d.state <> 'done')`.
///
/// Neither table exists yet, so nothing is protected beyond age. Each condition is checked both
/// when a window is surveyed and inside the writer's transaction that prunes it.
pub const PROTECTED: &[&str] = &[];

/// What a pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// Event bodies emptied.
    pub pruned: u64,
    /// Bytes of body emptied.
    pub bytes: u64,
    /// Pages the incremental vacuum gave back.
    pub pages_freed: u64,
}

/// How a pass runs: the pause between steps, and a question asked between steps that ends the
/// pass early (a server shutting down).
pub struct Pace<'a> {
    pub pause: Duration,
    pub stopped: &'a dyn Fn() -> bool,
}

impl Pace<'_> {
    /// No pause, never stopped: for `prune`, which has the database to itself.
    pub const FULL_SPEED: Pace<'static> = Pace {
        pause: Duration::ZERO,
        stopped: &never,
    };
}

fn never() -> bool {
    false
}

/// The SQL condition for "this row's body is due": old enough (`cutoff` names the parameter that
/// holds the cutoff in unix ms), not pruned yet, not protected.
fn due(cutoff: &str) -> String {
    let mut sql = format!("received_at < {cutoff} AND length(body) > 0");
    for condition in PROTECTED {
        sql.push_str(" AND NOT (");
        sql.push_str(condition);
        sql.push(')');
    }
    sql
}

/// Counts the bodies that a pass with this cutoff would empty, and their bytes. Read-only.
pub fn survey(conn: &Connection, cutoff_ms: i64) -> Result<(u64, u64)> {
    let sql = format!(
        "SELECT COUNT(*), COALESCE(SUM(length(body)), 0) FROM events
         WHERE {}",
        due("?1")
    );
    let (n, bytes): (i64, i64) = conn
        .query_row(&sql, [cutoff_ms], |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(|e| Error::sqlite("survey prunable events", e))?;
    Ok((n as u64, bytes as u64))
}

/// Empties, through `writer`, the body of every due event received before `cutoff_ms`.
pub fn prune(
    database: &Path,
    writer: &WriterHandle,
    cutoff_ms: i64,
    pace: &Pace,
) -> Result<Report> {
    let reader = db::open_read_only(database)?;
    let sql = |e| Error::sqlite("survey events for retention", e);
    let last: i64 = reader
        .query_row("SELECT COALESCE(MAX(rowid), 0) FROM events", [], |r| {
            r.get(0)
        })
        .map_err(sql)?;
    let mut survey = reader
        .prepare(&format!(
            "SELECT MIN(received_at), COALESCE(SUM({}), 0) FROM events
             WHERE rowid > ?1 AND rowid <= ?2",
            due("?3")
        ))
        .map_err(sql)?;
    let mut report = Report::default();
    let mut lo = 0;
    while lo < last && !(pace.stopped)() {
        let hi = lo + WINDOW;
        // Read the window first: cheap for the writer afterwards, and often nothing is due.
        let (oldest, due): (Option<i64>, i64) = survey
            .query_row(params![lo, hi, cutoff_ms], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(sql)?;
        if oldest.is_some_and(|t| t >= cutoff_ms) {
            break;
        }
        if due > 0 {
            let (n, bytes) = on_writer(writer, pace, move |conn| {
                prune_window(conn, lo, hi, cutoff_ms)
            })?;
            report.pruned += n;
            report.bytes += bytes;
        }
        lo = hi;
        if !pace.pause.is_zero() {
            std::thread::sleep(pace.pause);
        }
    }
    Ok(report)
}

/// Runs on the writer: empties the due bodies among rows `lo < rowid <= hi`.
fn prune_window(conn: &Connection, lo: i64, hi: i64, cutoff_ms: i64) -> Result<(u64, u64)> {
    let what = |e| Error::sqlite(format!("prune event bodies in rows {lo}..{hi}"), e);
    let due = due("?3");
    let bytes: i64 = conn
        .prepare_cached(&format!(
            "SELECT COALESCE(SUM(length(body)), 0) FROM events
             WHERE rowid > ?1 AND rowid <= ?2 AND {due}"
        ))
        .and_then(|mut s| s.query_row(params![lo, hi, cutoff_ms], |r| r.get(0)))
        .map_err(what)?;
    let n = conn
        .prepare_cached(&format!(
            "UPDATE events SET body = x'' WHERE rowid > ?1 AND rowid <= ?2 AND {due}"
        ))
        .and_then(|mut s| s.execute(params![lo, hi, cutoff_ms]))
        .map_err(what)?;
    Ok((n as u64, bytes as u64))
}

/// Gives free pages back to the file system through `writer`, [`VACUUM_PAGES`] per task, and
/// returns how many. Does nothing on a database without `auto_vacuum=INCREMENTAL` (made before
/// that was the default): its free pages are reused by new events instead.
pub fn vacuum(writer: &WriterHandle, pace: &Pace) -> Result<u64> {
    let mut freed = 0;
    while !(pace.stopped)() {
        let (before, after) = on_writer(writer, pace, |conn| {
            let count = |conn: &Connection| {
                conn.query_row("PRAGMA freelist_count", [], |r| r.get::<_, i64>(0))
                    .map_err(|e| Error::sqlite("count free pages", e))
            };
            let before = count(conn)?;
            if before > 0 {
                conn.execute_batch(&format!("PRAGMA incremental_vacuum({VACUUM_PAGES})"))
                    .map_err(|e| Error::sqlite("incremental vacuum", e))?;
            }
            Ok((before, count(conn)?))
        })?;
        freed += (before - after).max(0) as u64;
        if after == 0 || after >= before {
            break;
        }
        if !pace.pause.is_zero() {
            std::thread::sleep(pace.pause);
        }
    }
    Ok(freed)
}

/// Runs `f` as a writer task and returns its value once it has committed. Retries for a while
/// when the writer's queue is full (webhooks come first).
fn on_writer<T: Send + 'static>(
    writer: &WriterHandle,
    pace: &Pace,
    f: impl Fn(&Connection) -> Result<T> + Send + Sync + Clone + 'static,
) -> Result<T> {
    let started = Instant::now();
    loop {
        let (tx, rx) = mpsc::channel();
        let task = f.clone();
        let outcome = writer.run(Box::new(move |conn| {
            let value = task(conn)?;
            let _ = tx.send(value);
            Ok(())
        }));
        match outcome {
            Ok(()) => {
                return rx
                    .try_recv()
                    .map_err(|_| Error::Other("retention task left no result".into()))
            }
            Err(Error::Unavailable(why))
                if why == "queue full"
                    && started.elapsed() < BUSY_RETRY_FOR
                    && !(pace.stopped)() =>
            {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Applies `[retention] body_days` inside `serve`: a thread that runs a pass (then a vacuum)
/// shortly after start and then every day, and stops promptly with the service.
pub struct Scheduler {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Scheduler {
    /// Starts the thread; with `body_days` 0 it starts nothing.
    pub fn start(
        database: &Path,
        writer: WriterHandle,
        body_days: u32,
        first_after: Duration,
        every: Duration,
    ) -> Result<Scheduler> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        if body_days == 0 {
            return Ok(Scheduler { stop, thread: None });
        }
        let flag = stop.clone();
        let database = database.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("retention".into())
            .spawn(move || scheduler_loop(&database, &writer, body_days, first_after, every, &flag))
            .map_err(|e| Error::io("spawn retention thread", e))?;
        log::info!(
            "retention: event bodies older than {body_days} days are pruned daily, first in {}s",
            first_after.as_secs()
        );
        Ok(Scheduler {
            stop,
            thread: Some(thread),
        })
    }

    /// Ends the thread (a pass under way stops after its current window).
    pub fn stop(mut self) {
        *self.stop.0.lock().expect("retention lock poisoned") = true;
        self.stop.1.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn scheduler_loop(
    database: &Path,
    writer: &WriterHandle,
    body_days: u32,
    first_after: Duration,
    every: Duration,
    stop: &(Mutex<bool>, Condvar),
) {
    let (lock, cvar) = stop;
    let stopped = || *lock.lock().expect("retention lock poisoned");
    let mut wait = first_after;
    loop {
        let guard = lock.lock().expect("retention lock poisoned");
        let (guard, _) = cvar
            .wait_timeout_while(guard, wait, |stop| !*stop)
            .expect("retention lock poisoned");
        if *guard {
            return;
        }
        drop(guard);
        let started = Instant::now();
        let cutoff_ms = time::now_ms() - i64::from(body_days) * 86_400_000;
        let pace = Pace {
            pause: SERVE_PAUSE,
            stopped: &stopped,
        };
        let result = prune(database, writer, cutoff_ms, &pace).and_then(|mut report| {
            report.pages_freed = vacuum(writer, &pace)?;
            Ok(report)
        });
        wait = match result {
            Ok(r) => {
                log::info!(
                    "retention: pruned={} bytes={} pages_freed={} older_than_days={body_days} ms={}",
                    r.pruned,
                    r.bytes,
                    r.pages_freed,
                    started.elapsed().as_millis()
                );
                every
            }
            Err(e) => {
                log::error!("retention: {e}; trying again in an hour");
                every.min(Duration::from_secs(3600))
            }
        };
    }
}

/// Parses an age like `90d`, `12w` or `36h` into milliseconds.
pub fn parse_age(text: &str) -> Option<i64> {
    let text = text.trim();
    let unit = text.chars().last()?;
    let number: i64 = text[..text.len() - unit.len_utf8()].parse().ok()?;
    let ms = match unit {
        'h' => 3_600_000,
        'd' => 86_400_000,
        'w' => 7 * 86_400_000,
        _ => return None,
    };
    number.checked_mul(ms).filter(|ms| *ms >= 0)
}

const PRUNE_USAGE: &str = "\
usage: stripe-inbox prune [--config PATH] [--older-than AGE] [--dry-run]

Empties the raw body of every event received more than AGE ago (90d, 12w, 36h; at least 1d;
default: [retention] body_days). The event's row stays: id, type, times, object and delivery count.
Events the mirror or a pending delivery still needs are kept whole. Then gives the freed space back
to the file system (incremental vacuum) and prints what it did.

It writes, so it needs the database to itself and refuses while `serve` runs: a running server
applies [retention] body_days itself, shortly after start and then once a day.

  --older-than AGE   prune bodies older than AGE: a number and h, d or w
  --dry-run          only count what would be pruned (read-only; works while serving)
";

/// `stripe-inbox prune`.
pub fn run_prune(mut parser: lexopt::Parser) -> Result<()> {
    let hint = || "stripe-inbox prune --help".to_string();
    let usage = |e: lexopt::Error| Error::usage(e.to_string(), hint());
    let (mut config, mut older_than, mut dry_run) = (None, None, false);
    while let Some(arg) = parser.next().map_err(usage)? {
        match arg {
            Long("config") | Short('c') => {
                config = Some(PathBuf::from(parser.value().map_err(usage)?))
            }
            Long("older-than") => {
                older_than = Some(parser.value().map_err(usage)?.string().map_err(usage)?)
            }
            Long("dry-run") => dry_run = true,
            Long("help") | Short('h') => {
                print!("{PRUNE_USAGE}");
                return Ok(());
            }
            other => return Err(Error::usage(other.unexpected().to_string(), hint())),
        }
    }
    let config = Config::load(&Config::locate(config))?;
    let age_ms = match older_than {
        Some(text) => parse_age(&text).ok_or_else(|| {
            Error::usage(
                format!("--older-than {text:?}: expected a number and h, d or w, like 90d"),
                hint(),
            )
        })?,
        None if config.retention.body_days > 0 => {
            i64::from(config.retention.body_days) * 86_400_000
        }
        None => {
            return Err(Error::usage(
                "nothing to prune: [retention] body_days is 0 (keep forever)",
                "stripe-inbox prune --older-than 90d, or set [retention] body_days",
            ))
        }
    };
    if age_ms < 86_400_000 {
        return Err(Error::usage("--older-than must be at least 1d", hint()));
    }
    let database = &config.database.path;
    if !database.exists() {
        return Err(Error::Other(format!(
            "database {}: no such file",
            database.display()
        )));
    }
    let cutoff_ms = time::now_ms() - age_ms;
    let before = time::format_utc(cutoff_ms / 1000);
    if dry_run {
        let (n, bytes) = survey(&db::open_read_only(database)?, cutoff_ms)?;
        println!(
            "would prune {n} event bodies ({}) received before {before}",
            crate::cli::human_bytes(bytes)
        );
        return Ok(());
    }

    // Take the database: the writes below go through a writer of our own, as in `serve`.
    let lock = match Lock::acquire(database) {
        Ok(lock) => lock,
        Err(Error::Locked { holder, .. }) => {
            return Err(Error::refused(
                format!(
                    "database {}: {holder} is serving it, and prune writes",
                    database.display()
                ),
                "the running server applies [retention] body_days itself, shortly after start \
                 and then daily: set it in the config and restart the server; or stop it first",
            ))
        }
        Err(e) => return Err(e),
    };
    let size_before = file_size(database);
    let started = Instant::now();
    let conn = db::open_writer(database)?;
    let auto_vacuum: i64 = conn
        .query_row("PRAGMA auto_vacuum", [], |r| r.get(0))
        .map_err(|e| Error::sqlite("read auto_vacuum", e))?;
    let writer = Writer::start(
        conn,
        WriterConfig {
            queue_capacity: 16,
            max_batch: 16,
        },
    )?;
    let result =
        prune(database, &writer.handle(), cutoff_ms, &Pace::FULL_SPEED).and_then(|mut report| {
            report.pages_freed = vacuum(&writer.handle(), &Pace::FULL_SPEED)?;
            Ok(report)
        });
    // Closing the last connection checkpoints the WAL, which is when the file shrinks.
    writer.stop();
    drop(lock);
    let report = result?;
    println!(
        "pruned {} event bodies ({}) received before {before}; gave back {} pages; \
         file {} -> {} in {:.1} s",
        report.pruned,
        crate::cli::human_bytes(report.bytes),
        report.pages_freed,
        crate::cli::human_bytes(size_before),
        crate::cli::human_bytes(file_size(database)),
        started.elapsed().as_secs_f64()
    );
    if auto_vacuum != 2 && report.pruned > 0 {
        println!(
            "note: this database was created without incremental auto-vacuum, so the file does \
             not shrink; new events reuse the space. A one-time `sqlite3 {} 'PRAGMA \
             auto_vacuum=INCREMENTAL; VACUUM'` with the server stopped changes that.",
            database.display()
        );
    }
    Ok(())
}

/// The database file plus its WAL, in bytes.
fn file_size(database: &Path) -> u64 {
    let mut wal = database.as_os_str().to_owned();
    wal.push("-wal");
    [database.to_path_buf(), PathBuf::from(wal)]
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages() {
        assert_eq!(parse_age("90d"), Some(90 * 86_400_000));
        assert_eq!(parse_age("2w"), Some(14 * 86_400_000));
        assert_eq!(parse_age("36h"), Some(36 * 3_600_000));
        for bad in [
            "",
            "d",
            "90",
            "90 days",
            "-1d",
            "1.5d",
            "99999999999999999w",
        ] {
            assert_eq!(parse_age(bad), None, "{bad}");
        }
    }

    #[test]
    fn due_condition_names_every_protection() {
        let sql = due("?3");
        assert!(sql.starts_with("received_at < ?3 AND length(body) > 0"));
        assert_eq!(sql.matches("AND NOT (").count(), PROTECTED.len());
    }
}
