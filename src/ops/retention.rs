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

use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::types::Value;
use rusqlite::{params, Connection};

use crate::error::{Error, Result};
use crate::periodic::{Periodic, Stop};
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
/// - Forwarding: an event with a delivery that is not `done` (pending, in flight, or dead and so
///   perhaps redelivered), found through the deliveries' `(k_seq, destination)` key (`k_seq` is
///   the event's `seq`).
///
/// Each condition is checked both when a window is surveyed and inside the writer's transaction
/// that prunes it.
pub const PROTECTED: &[&str] = &[
    "EXISTS (SELECT 1 FROM object_rows o WHERE o.id = events.object_id AND o.event_id = events.id)",
    "EXISTS (SELECT 1 FROM deliveries d WHERE d.k_seq = events.seq AND d.state <> 'done')",
];

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
        log::warn!(
            "retention: {reason}; emptying bodies in place, which gives back only what they held \
             on overflow pages"
        );
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
/// still emptied, but only the overflow pages of bodies larger than a page are given back: most
/// of a 2 KB body with the 1 KiB pages of a new database, nothing of it with 4 KiB pages) and logs
/// why.
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

/// Runs `f` on the writer and returns its value once it has committed. Retries for a while when
/// the writer's queue is full (webhooks come first).
fn on_writer<T: Send + 'static>(
    writer: &WriterHandle,
    pace: &Pace,
    f: impl Fn(&Connection) -> Result<T> + Send + Sync + Clone + 'static,
) -> Result<T> {
    let started = Instant::now();
    loop {
        match writer.run(f.clone()) {
            Err(Error::Busy) if started.elapsed() < BUSY_RETRY_FOR && !(pace.stopped)() => {
                std::thread::sleep(Duration::from_millis(100));
            }
            outcome => return outcome,
        }
    }
}

/// Applies `[retention] body_days` inside `serve`: a thread that runs a pass (then a vacuum)
/// shortly after start and then every day, and stops promptly with the service.
pub struct Scheduler {
    thread: Periodic,
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
        if body_days == 0 {
            return Ok(Scheduler {
                thread: Periodic::none(),
            });
        }
        let database = database.to_path_buf();
        let thread = Periodic::start("retention", first_after, move |stop| {
            run_pass(&database, &writer, body_days, every, stop)
        })?;
        log::info!(
            "retention: event bodies older than {body_days} days are pruned daily, first in {}s",
            first_after.as_secs()
        );
        Ok(Scheduler { thread })
    }

    /// Ends the thread (a pass under way stops after its current window).
    pub fn stop(self) {
        self.thread.stop();
    }
}

/// One scheduled pass; returns the wait before the next one.
fn run_pass(
    database: &Path,
    writer: &WriterHandle,
    body_days: u32,
    every: Duration,
    stop: &Stop,
) -> Duration {
    let started = Instant::now();
    let cutoff_ms = time::now_ms() - i64::from(body_days) * 86_400_000;
    let stopped = || stop.is_set();
    let pace = Pace {
        pause: SERVE_PAUSE,
        stopped: &stopped,
        vacuum_pages: SERVE_VACUUM_PAGES,
    };
    let result = prune(database, writer, cutoff_ms, &pace).and_then(|mut report| {
        report.pages_freed = vacuum(writer, &pace)?;
        Ok(report)
    });
    match result {
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
    }
}

/// What [`prune_alone`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AloneReport {
    pub report: Report,
    /// How long emptying the bodies took (the vacuum comes after).
    pub pruned_in: Duration,
    /// The whole run.
    pub total: Duration,
    /// The database file plus its WAL, before and after.
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// The file was created with incremental auto-vacuum (so it can shrink).
    pub incremental_vacuum: bool,
}

/// `prune` with no server running: takes the lock, runs a writer of its own (every write still
/// goes through one writer), prunes everything received before `cutoff_ms` at full speed, gives
/// the space back, and stops the writer (closing the last connection checkpoints the WAL, which is
/// when the file shrinks). Refuses while a server holds the database.
pub fn prune_alone(database: &Path, cutoff_ms: i64) -> Result<AloneReport> {
    if !database.exists() {
        return Err(Error::NoDatabase {
            path: database.to_path_buf(),
        });
    }
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
    let on_disk = || {
        let (db, wal) = store::file_sizes(database);
        db + wal
    };
    let bytes_before = on_disk();
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
    writer.stop();
    drop(lock);
    Ok(AloneReport {
        report: result?,
        pruned_in,
        total: started.elapsed(),
        bytes_before,
        bytes_after: on_disk(),
        incremental_vacuum: auto_vacuum == 2,
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::event::envelope;
    use crate::ingest::store::{store_event, Effects, Ingest, Source};
    use crate::testkit::TempDir;

    /// A database in a fresh temp dir with `n` events of about 2,000 bytes (a row fits in a
    /// page, so only merging pages can free any), stored through the one store path, each
    /// delivered twice; the first `old` of them received 100 days ago.
    fn database(tag: &str, n: i64, old: i64) -> (TempDir, PathBuf) {
        let dir = TempDir::new(&format!("retention-{tag}"));
        let path = dir.path().join("r.db");
        let conn = store::open_writer(&path).unwrap();
        let now = time::now_ms();
        for i in 1..=n {
            let received = if i <= old {
                now - 100 * 86_400_000
            } else {
                now
            };
            let body = format!(
                "{{\"id\":\"evt_{i}\",\"object\":\"event\",\"type\":\"invoice.paid\",\"created\":{i},\
                 \"livemode\":true,\"data\":{{\"object\":{{\"id\":\"in_1\",\"object\":\"invoice\",\
                 \"pad\":\"{}\"}}}}}}",
                "x".repeat(1860)
            )
            .into_bytes();
            let ingest = Ingest {
                envelope: envelope::parse(&body).unwrap(),
                body,
                secret_index: Some(0),
                received_at_ms: received,
                source: Source::Webhook,
            };
            store_event(&conn, &ingest, &Effects::default()).unwrap();
            store_event(&conn, &ingest, &Effects::default()).unwrap();
        }
        (dir, path)
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
        let (_dir, path) = database("pages", 1200, 1000);
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
    }

    #[test]
    fn with_a_trigger_on_events_bodies_are_emptied_in_place() {
        let (_dir, path) = database("trigger", 300, 200);
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
        assert_eq!(report.pruned, 200);
        // The rows stay on their pages; only the overflow pages of the 2 KB bodies (1 KiB pages)
        // go to the free list, about two per body.
        assert!((200..=450).contains(&report.pages_freed), "{report:?}");
        assert_eq!(rows(&path), before);
        assert!(bodies(&path)[..200].iter().all(|l| *l == 0));
        let fired: i64 = store::open_read_only(&path)
            .unwrap()
            .query_row("SELECT COUNT(*) FROM deleted", [], |r| r.get(0))
            .unwrap();
        assert_eq!(fired, 0, "no row was deleted");
    }

    #[test]
    fn due_condition_names_every_protection() {
        let sql = due("?3");
        assert!(sql.starts_with("received_at < ?3 AND length(body) > 0"));
        assert_eq!(sql.matches("AND NOT (").count(), PROTECTED.len());
    }
}
