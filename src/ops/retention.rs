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
//! condition again inside the writer's transaction. It deletes each due row and inserts it again
//! with an empty body, because a row that merely shrinks gives no page back (see
//! `prune_window`). The writer is held a few milliseconds at a
//! time, so webhook commits wait behind at most one window. Then `PRAGMA incremental_vacuum` (new
//! databases are created with `auto_vacuum=INCREMENTAL`) gives the freed pages back to the file
//! system, also in small steps ([`SERVE_VACUUM_PAGES`] pages, about 16 ms of the writer, while a
//! server runs).
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
use rusqlite::types::Value;
use rusqlite::{params, Connection};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::store::writer::{Writer, WriterConfig, WriterHandle};
use crate::store::{self, Lock};
use crate::time;

/// Rows looked at per writer task (about 1 MB of bodies at 2 KB each).
pub const WINDOW: i64 = 500;
/// Pause between steps when a server is taking webhooks meanwhile.
pub const SERVE_PAUSE: Duration = Duration::from_millis(10);
/// Pages freed per incremental-vacuum task while a server runs. Moving a page costs about 0.25 ms
/// (measured on a 4 GB file: 726,000 pages in 200 s), so a task holds the writer about 16 ms.
pub const SERVE_VACUUM_PAGES: u32 = 64;
/// How long a pass keeps retrying while the writer's queue is full.
const BUSY_RETRY_FOR: Duration = Duration::from_secs(30);

/// Conditions on an `events` row, in SQL, under which its body must be kept whatever its age.
///
/// - The mirror: the event whose state an object holds now (its newest state), found through the
///   object's primary key, so no extra index is needed.
///
/// Forwarding, when it comes, adds the events a pending delivery still has to send, e.g.
/// `EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = events.id AND d.state <> 'done')`.
/// Each condition is checked both when a window is surveyed and inside the writer's transaction
/// that prunes it.
pub const PROTECTED: &[&str] =
    &["EXISTS (SELECT 1 FROM objects o WHERE o.id = events.object_id AND o.event_id = events.id)"];

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
    /// Pages freed per incremental-vacuum task.
    pub vacuum_pages: u32,
}

impl Pace<'_> {
    /// No pause, never stopped: for `prune`, which has the database to itself.
    pub const FULL_SPEED: Pace<'static> = Pace {
        pause: Duration::ZERO,
        stopped: &never,
        vacuum_pages: 2000,
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
    let reader = store::open_read_only(database)?;
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
    if let Some(reason) = cannot_move_rows(&reader)? {
        log::warn!("retention: {reason}; emptying bodies in place, which gives no space back");
    }
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
///
/// An `UPDATE` that shrinks a row leaves its page as it was: SQLite merges underfull pages when a
/// row is deleted, not when one shrinks, and new events are appended at the end of the table, so
/// the room inside old pages would never be used again, nor given back. So each due row is
/// deleted and inserted again, same rowid and every column the same except `body`; the delete lets
/// SQLite merge the emptied pages and put them on the free list for the vacuum. Deleting a row
/// would fire triggers and `ON DELETE` actions, though, so while any trigger is defined on
/// `events`, or any foreign key references it, this falls back to the `UPDATE` (the bodies are
/// still emptied, but the file stops shrinking) and logs why.
fn prune_window(conn: &Connection, lo: i64, hi: i64, cutoff_ms: i64) -> Result<(u64, u64)> {
    let what = |e| Error::sqlite(format!("prune event bodies in rows {lo}..{hi}"), e);
    let due = due("?3");
    let window = params![lo, hi, cutoff_ms];
    if cannot_move_rows(conn)?.is_some() {
        let bytes: i64 = conn
            .prepare_cached(&format!(
                "SELECT COALESCE(SUM(length(body)), 0) FROM events
                 WHERE rowid > ?1 AND rowid <= ?2 AND {due}"
            ))
            .and_then(|mut s| s.query_row(window, |r| r.get(0)))
            .map_err(what)?;
        let n = conn
            .prepare_cached(&format!(
                "UPDATE events SET body = x'' WHERE rowid > ?1 AND rowid <= ?2 AND {due}"
            ))
            .and_then(|mut s| s.execute(window))
            .map_err(what)?;
        return Ok((n as u64, bytes as u64));
    }

    // Read the due rows, every column but the body, which becomes empty.
    let columns = columns(conn)?;
    let list = columns
        .iter()
        .map(|c| format!("\"{}\"", c.replace('"', "\"\"")))
        .collect::<Vec<_>>();
    let select = list
        .iter()
        .zip(&columns)
        .map(|(quoted, name)| {
            if name == "body" {
                "x''"
            } else {
                quoted.as_str()
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    let mut bytes = 0u64;
    let rows: Vec<Vec<Value>> = conn
        .prepare_cached(&format!(
            "SELECT length(body), rowid, {select} FROM events
             WHERE rowid > ?1 AND rowid <= ?2 AND {due}"
        ))
        .and_then(|mut s| {
            s.query_map(window, |r| {
                bytes += r.get::<_, i64>(0)? as u64;
                (1..=columns.len() + 1)
                    .map(|i| r.get::<_, Value>(i))
                    .collect()
            })?
            .collect()
        })
        .map_err(what)?;

    // Delete them, then put them back where they were.
    conn.prepare_cached(&format!(
        "DELETE FROM events WHERE rowid > ?1 AND rowid <= ?2 AND {due}"
    ))
    .and_then(|mut s| s.execute(window))
    .map_err(what)?;
    let placeholders = (1..=columns.len() + 1)
        .map(|i| format!("?{i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut insert = conn
        .prepare_cached(&format!(
            "INSERT INTO events (rowid, {}) VALUES ({placeholders})",
            list.join(", ")
        ))
        .map_err(what)?;
    for row in &rows {
        insert
            .execute(rusqlite::params_from_iter(row))
            .map_err(what)?;
    }
    Ok((rows.len() as u64, bytes))
}

/// Why rows of `events` cannot be deleted and inserted again without side effects, if they cannot.
fn cannot_move_rows(conn: &Connection) -> Result<Option<String>> {
    let (triggers, references): (i64, i64) = conn
        .query_row(
            "SELECT (SELECT COUNT(*) FROM sqlite_schema WHERE type = 'trigger' AND tbl_name = 'events'),
                    (SELECT COUNT(*) FROM sqlite_schema AS s, pragma_foreign_key_list(s.name) AS f
                     WHERE s.type = 'table' AND f.\"table\" = 'events')",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(|e| Error::sqlite("look for triggers and references on events", e))?;
    Ok(match (triggers, references) {
        (0, 0) => None,
        _ => Some(format!(
            "events has {triggers} trigger(s) and {references} foreign key(s) pointing at it"
        )),
    })
}

/// The stored (not generated) columns of `events`, in order.
fn columns(conn: &Connection) -> Result<Vec<String>> {
    let sql = |e| Error::sqlite("list the columns of events", e);
    conn.prepare_cached(
        "SELECT name FROM pragma_table_xinfo('events') WHERE hidden = 0 ORDER BY cid",
    )
    .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
    .map_err(sql)
}

/// Gives free pages back to the file system through `writer`, `pace.vacuum_pages` per task, and
/// returns how many. Does nothing on a database without `auto_vacuum=INCREMENTAL` (made before
/// that was the default): its free pages are reused by new events instead.
pub fn vacuum(writer: &WriterHandle, pace: &Pace) -> Result<u64> {
    let mut freed = 0;
    let pages = pace.vacuum_pages.max(1);
    while !(pace.stopped)() {
        let (before, after) = on_writer(writer, pace, move |conn| {
            let count = |conn: &Connection| {
                conn.query_row("PRAGMA freelist_count", [], |r| r.get::<_, i64>(0))
                    .map_err(|e| Error::sqlite("count free pages", e))
            };
            let before = count(conn)?;
            if before > 0 {
                // The pragma frees one page per step: step it to the end.
                let sql = |e| Error::sqlite("incremental vacuum", e);
                let mut stmt = conn
                    .prepare(&format!("PRAGMA incremental_vacuum({pages})"))
                    .map_err(sql)?;
                let mut rows = stmt.query([]).map_err(sql)?;
                while rows.next().map_err(sql)?.is_some() {}
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
            vacuum_pages: SERVE_VACUUM_PAGES,
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
        let (n, bytes) = survey(&store::open_read_only(database)?, cutoff_ms)?;
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
    let conn = store::open_writer(database)?;
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
    let mut pruned_in = Duration::ZERO;
    let result =
        prune(database, &writer.handle(), cutoff_ms, &Pace::FULL_SPEED).and_then(|mut report| {
            pruned_in = started.elapsed();
            report.pages_freed = vacuum(&writer.handle(), &Pace::FULL_SPEED)?;
            Ok(report)
        });
    // Closing the last connection checkpoints the WAL, which is when the file shrinks.
    writer.stop();
    drop(lock);
    let report = result?;
    println!(
        "pruned {} event bodies ({}) received before {before} in {:.1} s; gave back {} pages; \
         file {} -> {} in {:.1} s in all",
        report.pruned,
        crate::cli::human_bytes(report.bytes),
        pruned_in.as_secs_f64(),
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

    /// A database at a fresh path with `n` events of 2,000-byte bodies (a row fits in a page, so
    /// only merging pages can free any), the first `old` of them received 100 days ago.
    fn database(tag: &str, n: i64, old: i64) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "stripe-inbox-retention-{tag}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("r.db");
        let conn = store::open_writer(&path).unwrap();
        let now = time::now_ms();
        for i in 1..=n {
            let received = if i <= old {
                now - 100 * 86_400_000
            } else {
                now
            };
            let body = format!("{{\"id\":\"evt_{i}\",\"pad\":\"{}\"}}", "x".repeat(1970));
            conn.execute(
                "INSERT INTO events (id, seq, type, created, livemode, object_id, body,
                    received_at, last_received_at, deliveries)
                 VALUES (?1, ?2, 'invoice.paid', ?2, 1, 'in_1', ?3, ?4, ?4, 2)",
                params![format!("evt_{i}"), i, body, received],
            )
            .unwrap();
        }
        path
    }

    /// rowid, id, seq, created, livemode, received_at, deliveries.
    type Row = (i64, String, i64, i64, Option<i64>, i64, i64);

    /// Every column but `body`, by rowid.
    fn rows(path: &Path) -> Vec<Row> {
        let conn = store::open_read_only(path).unwrap();
        let mut stmt = conn
            .prepare(
                "SELECT rowid, id, seq, created, livemode, received_at, deliveries FROM events
                 ORDER BY rowid",
            )
            .unwrap();
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                ))
            })
            .unwrap()
            .collect::<rusqlite::Result<Vec<_>>>()
            .unwrap();
        rows
    }

    /// One pass and a vacuum through a writer of its own; what it did and how many commits.
    fn run(path: &Path) -> (Report, u64) {
        let writer = Writer::start(
            store::open_writer(path).unwrap(),
            WriterConfig {
                queue_capacity: 4,
                max_batch: 4,
            },
        )
        .unwrap();
        let cutoff = time::now_ms() - 90 * 86_400_000;
        let mut report = prune(path, &writer.handle(), cutoff, &Pace::FULL_SPEED).unwrap();
        report.pages_freed = vacuum(&writer.handle(), &Pace::FULL_SPEED).unwrap();
        let commits = writer
            .handle()
            .stats()
            .commits
            .load(std::sync::atomic::Ordering::Relaxed);
        writer.stop();
        (report, commits)
    }

    fn bodies(path: &Path) -> Vec<usize> {
        let conn = store::open_read_only(path).unwrap();
        let mut stmt = conn
            .prepare("SELECT length(body) FROM events ORDER BY rowid")
            .unwrap();
        let lengths = stmt
            .query_map([], |r| r.get::<_, i64>(0))
            .unwrap()
            .map(|l| l.unwrap() as usize)
            .collect();
        lengths
    }

    #[test]
    fn pruning_gives_pages_back_and_keeps_every_other_column() {
        let path = database("pages", 1200, 1000);
        let before = rows(&path);
        let size_before = std::fs::metadata(&path).unwrap().len();
        let (report, commits) = run(&path);
        assert_eq!(report.pruned, 1000);
        assert!(
            commits < 10,
            "{commits} commits: windows of rows, vacuum in big steps"
        );
        assert!(report.bytes > 1000 * 1990, "{report:?}");
        assert!(report.pages_freed > 500, "{report:?}");
        assert!(std::fs::metadata(&path).unwrap().len() < size_before / 2);
        assert_eq!(rows(&path), before, "rows, rowids and columns stay");
        let lengths = bodies(&path);
        assert!(lengths[..1000].iter().all(|l| *l == 0));
        assert!(lengths[1000..].iter().all(|l| *l > 1990));
        let conn = store::open_read_only(&path).unwrap();
        assert!(store::integrity_problems(&conn).unwrap().is_empty());
        assert_eq!(
            run(&path).0,
            Report::default(),
            "a second pass finds nothing"
        );
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn with_a_trigger_on_events_bodies_are_emptied_in_place() {
        let path = database("trigger", 300, 200);
        store::open_writer(&path)
            .unwrap()
            .execute_batch(
                "CREATE TABLE deleted (id TEXT);
                 CREATE TRIGGER events_deleted AFTER DELETE ON events
                 BEGIN INSERT INTO deleted VALUES (old.id); END;",
            )
            .unwrap();
        let before = rows(&path);
        let (report, _) = run(&path);
        assert_eq!((report.pruned, report.pages_freed), (200, 0));
        assert_eq!(rows(&path), before);
        assert!(bodies(&path)[..200].iter().all(|l| *l == 0));
        let fired: i64 = store::open_read_only(&path)
            .unwrap()
            .query_row("SELECT COUNT(*) FROM deleted", [], |r| r.get(0))
            .unwrap();
        assert_eq!(fired, 0, "no row was deleted");
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn due_condition_names_every_protection() {
        let sql = due("?3");
        assert!(sql.starts_with("received_at < ?3 AND length(body) > 0"));
        assert_eq!(sql.matches("AND NOT (").count(), PROTECTED.len());
    }
}
