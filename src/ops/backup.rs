//! `backup`: a consistent copy of the live database while the server runs, and the copying and
//! checking that `restore` shares.
//!
//! A backup reads the database through a read-only connection of its own and takes no lock, so
//! `serve` keeps running and keeps answering. It copies one snapshot: it opens a read transaction
//! first and holds it to the end. In WAL mode a reader never blocks the writer, and a held snapshot
//! also keeps SQLite's online backup from starting over each time the server commits (which it
//! otherwise does, and under steady traffic would never finish). The copy is made in steps of
//! [`STEP_PAGES`] pages with a short pause between them, flushed to disk every [`SYNC_EVERY`]
//! bytes rather than in one go at the end, checked, and only then renamed into place. While a
//! backup runs the server's checkpoints cannot pass its snapshot, so the `-wal` file grows by what
//! is written meanwhile; the backup folds it in itself as soon as the copy is done, from a
//! `query_only` connection. Left to the server, the writer's fallback checkpoint did it inside a
//! commit, and that was the longest ingest stall a backup caused (90-210 ms on a 4 GB copy at
//! 200 events/s; 40 ms since).
//!
//! `restore` (in `restore.rs`) shares the copying and checking below: both produce one
//! self-contained file in rollback-journal mode, with no `-wal` beside it, that can
//! be copied anywhere as it is; `serve` puts it back into WAL mode when it opens it.

use std::fs::{self, File};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lexopt::prelude::*;
use rusqlite::backup::{Backup, StepResult};
use rusqlite::Connection;

use crate::cli::human_bytes;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::store;
use crate::time;

/// Pages copied per backup step: 4 MiB at the default 4 KiB page size.
pub const STEP_PAGES: i32 = 1024;
/// The pause between steps, so the server's writer and the disk get their turn.
pub const STEP_PAUSE: Duration = Duration::from_millis(2);
/// How much is copied between flushes to disk. Left to the kernel, gigabytes of dirty pages are
/// written back at once and the server's commit fsyncs wait behind them (measured: stalls of 1.2 s
/// on a 4 GB copy); flushing every 64 MiB cut the longest stall to 130 ms, every 8 MiB to 70 ms,
/// at no cost in copy speed.
pub const SYNC_EVERY: u64 = 8 << 20;
/// How long a step may keep finding the source busy before the copy gives up.
const BUSY_GIVE_UP: Duration = Duration::from_secs(30);

/// What a finished backup holds.
#[derive(Debug)]
pub struct BackupReport {
    pub path: PathBuf,
    pub bytes: u64,
    pub events: i64,
    pub schema_version: i64,
    /// Time spent copying pages.
    pub copy: Duration,
    /// Time spent in `PRAGMA integrity_check` on the copy.
    pub check: Duration,
    pub total: Duration,
}

/// How thoroughly a copy is checked before it is trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Check {
    /// `PRAGMA integrity_check`: every page, every index entry.
    Full,
    /// `PRAGMA quick_check`: the same without matching indexes to their tables; for a copy of a
    /// file that was itself just checked in full.
    Quick,
}

/// How [`backup`] runs.
#[derive(Debug, Clone, Copy)]
pub struct BackupOptions {
    /// Replace `out` if it exists.
    pub force: bool,
    /// Draw a progress bar when stderr is a terminal.
    pub progress: bool,
    /// Checkpoint the live database right after the copy (not when Litestream does the
    /// checkpoints: `[database] checkpoint_interval_ms = 0`).
    pub checkpoint: bool,
}

/// Copies the database at `database` to `out`, consistently, while a server may be writing to it.
///
/// 1. Refuses when `database` is missing, when `out` is the database itself, and when `out` exists
///    (unless `force`). Nothing is written.
/// 2. Opens `database` read-only, takes no lock, and starts a read transaction: the copy is of
///    this snapshot, whatever the server commits meanwhile.
/// 3. Copies it into `out.tmp` (a stale one is removed first) with SQLite's online backup API,
///    [`STEP_PAGES`] at a time with [`STEP_PAUSE`] between steps, flushing every [`SYNC_EVERY`].
///    Then ends the snapshot and, if `opts.checkpoint`, runs a passive checkpoint of the live
///    database (best effort: it only copies pages the server has committed, and a failure only
///    leaves that to the server).
/// 4. Makes the copy one self-contained file, runs `PRAGMA integrity_check` on it and reads its
///    schema version and event count (and asks [`mirror_problems`]).
/// 5. fsyncs it, renames it to `out` and fsyncs the directory.
///
/// A failure in steps 2 to 5 removes `out.tmp`; `out` is never left half-written, and the live
/// database is only ever read.
pub fn backup(database: &Path, out: &Path, opts: &BackupOptions) -> Result<BackupReport> {
    let started = Instant::now();
    // 1. Refuse what would lose something.
    if !database.is_file() {
        return Err(Error::Other(format!(
            "database {}: no such file",
            database.display()
        )));
    }
    if store::resolve(out) == store::resolve(database) {
        return Err(Error::refused(
            format!("backup {}: that is the live database itself", out.display()),
            "give another file, or a directory: stripe-inbox backup --keep 7 /var/backups/stripe-inbox",
        ));
    }
    if out.exists() && !opts.force {
        return Err(Error::refused(
            format!("backup {}: file exists", out.display()),
            "add --force to replace it, or back up into a directory with --keep N",
        ));
    }
    let tmp = with_suffix(out, ".tmp");

    // 2. Open the source and pin one snapshot of it.
    let src = store::open_read_only(database)?;
    let snapshot = |e| Error::sqlite(format!("read database {}", database.display()), e);
    src.execute_batch("BEGIN").map_err(snapshot)?;
    src.query_row("SELECT COUNT(*) FROM sqlite_schema", [], |r| {
        r.get::<_, i64>(0)
    })
    .map_err(snapshot)?;

    // Opened now, so that the checkpoint follows the end of the snapshot at once.
    let checkpointer = opts
        .checkpoint
        .then(|| store::open_checkpointer(database).ok())
        .flatten();
    let result = (|| {
        // 3. Copy it.
        let mut progress = Progress::new("backup", opts.progress);
        let copy_started = Instant::now();
        let dst = copy_to(&src, &tmp, Some(STEP_PAUSE), &mut progress)?;
        let copy = copy_started.elapsed();
        progress.finish();
        // The snapshot is no longer needed. The WAL grew behind it; fold it in from here, at
        // once, so that the server's writer does not do it inside one of its commits.
        let _ = src.execute_batch("COMMIT");
        if let Some(conn) = &checkpointer {
            if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                log::debug!("backup: checkpoint after the copy: {e}");
            }
        }

        // 4. Check the copy.
        let check_started = Instant::now();
        progress.note("checking the copy (PRAGMA integrity_check)");
        let facts = seal(dst, &tmp, Check::Full)?;
        let check = check_started.elapsed();

        // 5. Put it in place.
        fs::rename(&tmp, out)
            .map_err(|e| Error::io(format!("rename {} to {}", tmp.display(), out.display()), e))?;
        sync_dir(out)?;
        Ok(BackupReport {
            path: out.to_path_buf(),
            bytes: facts.bytes,
            events: facts.events,
            schema_version: facts.schema_version,
            copy,
            check,
            total: started.elapsed(),
        })
    })();
    if result.is_err() {
        remove_copy(&tmp);
    }
    result
}

/// A quick structural check of the mirror: the problems found, none when it is sound.
///
/// `check`, `backup` (on the copy) and `restore` (on the input) call this on the database they
/// verify. It reads only; `check` also compares the mirror with a full rebuild.
pub fn mirror_problems(conn: &Connection) -> Result<Vec<String>> {
    // Every mirrored object names the stored event whose state it holds. (The full comparison
    // with a rebuild, `replay::verify_mirror`, re-projects every event: `check` runs it, a
    // backup would take minutes for it.)
    let orphans: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM objects o WHERE o.event_id IS NOT NULL
             AND NOT EXISTS (SELECT 1 FROM events e WHERE e.id = o.event_id)",
            [],
            |r| r.get(0),
        )
        .map_err(|e| Error::sqlite("check the mirror's events", e))?;
    Ok(if orphans == 0 {
        Vec::new()
    } else {
        vec![format!(
            "{orphans} mirrored objects name an event that is not stored"
        )]
    })
}

/// What a checked copy holds.
pub(crate) struct Facts {
    pub bytes: u64,
    pub events: i64,
    pub schema_version: i64,
}

/// Copies the database `src` is connected to (within its open read transaction, if any) into a
/// new file `tmp`, in steps, pausing `pause` between them. Returns the connection to the copy.
pub(crate) fn copy_to(
    src: &Connection,
    tmp: &Path,
    pause: Option<Duration>,
    progress: &mut Progress,
) -> Result<Connection> {
    remove_copy(tmp);
    let mut dst = store::open_copy_target(tmp)?;
    let what = |e| Error::sqlite(format!("write copy {}", tmp.display()), e);
    // The copy is not trusted until it is checked and fsynced, so it needs no journal of its own.
    dst.query_row("PRAGMA journal_mode=OFF", [], |_| Ok(()))
        .map_err(what)?;
    dst.execute_batch("PRAGMA synchronous=OFF").map_err(what)?;
    let page_size: i64 = src
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .map_err(|e| Error::sqlite("read page size", e))?;
    let page_size = page_size.max(512) as u64;
    let flusher = File::open(tmp).map_err(|e| Error::io(format!("open {}", tmp.display()), e))?;
    {
        let backup = Backup::new(src, &mut dst).map_err(what)?;
        let mut flushed_pages = 0u64;
        let mut busy_since: Option<Instant> = None;
        loop {
            let step = backup.step(STEP_PAGES).map_err(what)?;
            let p = backup.progress();
            let total = p.pagecount.max(0) as u64;
            let done = total.saturating_sub(p.remaining.max(0) as u64);
            progress.update(done * page_size, total * page_size);
            match step {
                StepResult::Done => break,
                StepResult::More => busy_since = None,
                _ => {
                    // Busy or locked: another connection is recovering the WAL, or similar.
                    let since = *busy_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > BUSY_GIVE_UP {
                        return Err(Error::Other(format!(
                            "write copy {}: the database stayed busy for {}s",
                            tmp.display(),
                            BUSY_GIVE_UP.as_secs()
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
            }
            if (done - flushed_pages.min(done)) * page_size >= SYNC_EVERY {
                flusher
                    .sync_data()
                    .map_err(|e| Error::io(format!("flush {}", tmp.display()), e))?;
                flushed_pages = done;
            }
            if let Some(pause) = pause {
                std::thread::sleep(pause);
            }
        }
    }
    Ok(dst)
}

/// Turns a fresh copy into a checked, durable, self-contained file: rollback-journal mode (so no
/// `-wal` is needed beside it), checked, closed and fsynced.
pub(crate) fn seal(dst: Connection, tmp: &Path, check: Check) -> Result<Facts> {
    let what = |e| Error::sqlite(format!("finish copy {}", tmp.display()), e);
    // The copied header says WAL; make the copy a single file that needs nothing beside it.
    let mode: String = dst
        .query_row("PRAGMA journal_mode=DELETE", [], |r| r.get(0))
        .map_err(what)?;
    if !mode.eq_ignore_ascii_case("delete") {
        return Err(Error::Other(format!(
            "finish copy {}: journal mode stayed {mode}",
            tmp.display()
        )));
    }
    let facts = inspect(&dst, tmp, check)?;
    dst.close().map_err(|(_, e)| what(e))?;
    File::open(tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(format!("fsync {}", tmp.display()), e))?;
    Ok(Facts {
        bytes: fs::metadata(tmp).map(|m| m.len()).unwrap_or(0),
        ..facts
    })
}

/// Checks a database file and reads what it holds: integrity, schema version, events.
pub(crate) fn inspect(conn: &Connection, path: &Path, check: Check) -> Result<Facts> {
    let pragma = match check {
        Check::Full => "integrity_check",
        Check::Quick => "quick_check",
    };
    let problems = if check == Check::Full {
        store::integrity_problems(conn)?
    } else {
        let mut stmt = conn
            .prepare("PRAGMA quick_check")
            .map_err(|e| Error::sqlite("quick check", e))?;
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(|e| Error::sqlite("quick check", e))?;
        rows.into_iter().filter(|r| r != "ok").collect()
    };
    if !problems.is_empty() {
        return Err(Error::Other(format!(
            "{}: PRAGMA {pragma} found {} problem(s), first: {}",
            path.display(),
            problems.len(),
            problems[0]
        )));
    }
    let schema_version = store::schema_version(conn)?;
    let known = store::known_version();
    if schema_version > known {
        return Err(Error::SchemaTooNew {
            path: path.to_path_buf(),
            found: schema_version,
            known,
        });
    }
    let events: i64 = conn
        .query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))
        .map_err(|e| {
            Error::sqlite(
                format!("{}: not a stripe-inbox database", path.display()),
                e,
            )
        })?;
    let mirror = mirror_problems(conn)?;
    if !mirror.is_empty() {
        return Err(Error::Other(format!(
            "{}: the mirror disagrees with a rebuild from the events: {}",
            path.display(),
            mirror.join("; ")
        )));
    }
    Ok(Facts {
        bytes: 0,
        events,
        schema_version,
    })
}

/// `x.db` + `.tmp` → `x.db.tmp`.
pub(crate) fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Removes a copy in progress and whatever SQLite may have put beside it.
pub(crate) fn remove_copy(tmp: &Path) {
    for path in [
        tmp.to_path_buf(),
        with_suffix(tmp, "-journal"),
        with_suffix(tmp, "-wal"),
        with_suffix(tmp, "-shm"),
    ] {
        let _ = fs::remove_file(path);
    }
}

/// fsyncs the directory holding `path`, so that a rename in it is durable.
pub(crate) fn sync_dir(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(format!("fsync directory {}", dir.display()), e))
}

/// `stripe-inbox-20260131-040000.db` for unix seconds (UTC).
pub fn backup_name(secs: i64, n: u32) -> String {
    let t = time::format_utc(secs); // 2026-01-31 04:00:00Z
    let stamp = format!(
        "{}{}{}-{}{}{}",
        &t[0..4],
        &t[5..7],
        &t[8..10],
        &t[11..13],
        &t[14..16],
        &t[17..19]
    );
    if n <= 1 {
        format!("stripe-inbox-{stamp}.db")
    } else {
        format!("stripe-inbox-{stamp}-{n}.db")
    }
}

/// The (stamp, sequence number) of a name [`backup_name`] made; `None` for any other file.
fn parse_backup_name(name: &str) -> Option<(String, u32)> {
    let rest = name.strip_prefix("stripe-inbox-")?.strip_suffix(".db")?;
    let (stamp, n) = match rest.get(15..) {
        Some("") => (rest, 1),
        Some(tail) => (&rest[..15], tail.strip_prefix('-')?.parse().ok()?),
        None => return None,
    };
    let ok = stamp.len() == 15
        && stamp
            .char_indices()
            .all(|(i, c)| if i == 8 { c == '-' } else { c.is_ascii_digit() });
    ok.then(|| (stamp.to_string(), n))
}

/// Deletes all but the `keep` newest backups that [`backup_name`] named in `dir`; returns them.
/// Other files in the directory are never touched.
pub fn rotate(dir: &Path, keep: usize) -> Result<Vec<PathBuf>> {
    let entries = fs::read_dir(dir).map_err(|e| Error::io(format!("list {}", dir.display()), e))?;
    let mut found: Vec<((String, u32), PathBuf)> = entries
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let key = parse_backup_name(entry.file_name().to_str()?)?;
            entry
                .file_type()
                .ok()
                .filter(|t| t.is_file())
                .map(|_| (key, entry.path()))
        })
        .collect();
    found.sort();
    let excess = found.len().saturating_sub(keep);
    let mut removed = Vec::new();
    for (_, path) in found.into_iter().take(excess) {
        fs::remove_file(&path)
            .map_err(|e| Error::io(format!("remove old backup {}", path.display()), e))?;
        removed.push(path);
    }
    Ok(removed)
}

/// A progress bar on stderr when it is a terminal; silent otherwise (cron, pipes, tests).
pub(crate) struct Progress {
    label: &'static str,
    on: bool,
    started: Instant,
    last: Option<Instant>,
}

impl Progress {
    pub(crate) fn new(label: &'static str, wanted: bool) -> Progress {
        Progress {
            label,
            on: wanted && std::io::stderr().is_terminal(),
            started: Instant::now(),
            last: None,
        }
    }

    pub(crate) fn update(&mut self, done: u64, total: u64) {
        if !self.on
            || self
                .last
                .is_some_and(|t| t.elapsed() < Duration::from_millis(100))
        {
            return;
        }
        self.last = Some(Instant::now());
        let pct = (done * 100).checked_div(total).unwrap_or(100).min(100);
        let filled = (pct / 4) as usize;
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        eprint!(
            "\r{} [{}{}] {pct:>3}% {} of {}, {:.0} MB/s   ",
            self.label,
            "#".repeat(filled),
            " ".repeat(25 - filled),
            human_bytes(done),
            human_bytes(total),
            done as f64 / 1e6 / secs
        );
    }

    /// A line saying what happens next, on the terminal only.
    pub(crate) fn note(&self, what: &str) {
        if self.on {
            eprintln!("{}: {what}...", self.label);
        }
    }

    pub(crate) fn finish(&mut self) {
        if self.on && self.last.is_some() {
            eprintln!();
        }
    }
}

const BACKUP_USAGE: &str = "\
usage: stripe-inbox backup [--config PATH] [--keep N] [--force] OUT

Copies the database to OUT while `serve` keeps running (SQLite's online backup of one consistent
snapshot; the server is never stopped or locked out), checks the copy with PRAGMA integrity_check,
fsyncs it and only then renames it into place. Prints its size, event count and the time taken.
The copy is a single self-contained SQLite file: copy it anywhere, open it with sqlite3, or give it
to `stripe-inbox restore`.

  OUT        a file (refused if it exists, unless --force), or a directory: the copy is then named
             stripe-inbox-YYYYmmdd-HHMMSS.db (UTC)
  --keep N   OUT is a directory (created if missing); after the backup, delete all but the N newest
             stripe-inbox-*.db copies in it (nothing else in it is touched). For cron:
             15 3 * * *  stripe-inbox backup --config /etc/stripe-inbox.toml --keep 14 /var/backups/stripe-inbox
  --force    replace OUT if it is an existing file
";

/// `stripe-inbox backup`.
pub fn run_backup(mut parser: lexopt::Parser) -> Result<()> {
    let hint = || "stripe-inbox backup --help".to_string();
    let usage = |e: lexopt::Error| Error::usage(e.to_string(), hint());
    let (mut config, mut keep, mut force, mut out) = (None, None, false, None);
    while let Some(arg) = parser.next().map_err(usage)? {
        match arg {
            Long("config") | Short('c') => {
                config = Some(PathBuf::from(parser.value().map_err(usage)?))
            }
            Long("keep") => {
                let n: usize = parser.value().map_err(usage)?.parse().map_err(usage)?;
                if n == 0 {
                    return Err(Error::usage("--keep must be at least 1", hint()));
                }
                keep = Some(n);
            }
            Long("force") => force = true,
            Long("help") | Short('h') => {
                print!("{BACKUP_USAGE}");
                return Ok(());
            }
            Value(v) if out.is_none() => out = Some(PathBuf::from(v)),
            other => return Err(Error::usage(other.unexpected().to_string(), hint())),
        }
    }
    let out = out.ok_or_else(|| Error::usage("backup needs OUT, a file or directory", hint()))?;
    let config = Config::load(&Config::locate(config))?;
    let database = &config.database.path;

    // A directory target gets a dated name; --keep makes OUT a directory.
    let into_dir = keep.is_some() || out.is_dir();
    let target = if into_dir {
        if out.exists() && !out.is_dir() {
            return Err(Error::usage(
                format!("--keep needs a directory, and {} is a file", out.display()),
                hint(),
            ));
        }
        fs::create_dir_all(&out)
            .map_err(|e| Error::io(format!("create directory {}", out.display()), e))?;
        let now = time::now_ms() / 1000;
        (1..)
            .map(|n| out.join(backup_name(now, n)))
            .find(|p| !p.exists() && !with_suffix(p, ".tmp").exists())
            .unwrap_or_else(|| out.join(backup_name(now, 1)))
    } else {
        out.clone()
    };
    let opts = BackupOptions {
        force: force && !into_dir,
        progress: true,
        checkpoint: config.database.checkpoint_interval_ms > 0,
    };
    let report = backup(database, &target, &opts)?;
    let copy_secs = report.copy.as_secs_f64().max(0.001);
    println!(
        "backed up {} to {}: {}, {} events, schema version {}, in {:.1} s (copy {:.1} s at \
         {:.0} MB/s, integrity_check {:.1} s)",
        database.display(),
        report.path.display(),
        human_bytes(report.bytes),
        report.events,
        report.schema_version,
        report.total.as_secs_f64(),
        copy_secs,
        report.bytes as f64 / 1e6 / copy_secs,
        report.check.as_secs_f64()
    );
    if let Some(keep) = keep {
        for old in rotate(&out, keep)? {
            println!("removed old backup {}", old.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_names_sort_and_parse() {
        let a = backup_name(1_759_590_812, 1);
        assert_eq!(a, "stripe-inbox-20251004-151332.db");
        assert_eq!(parse_backup_name(&a), Some(("20251004-151332".into(), 1)));
        let b = backup_name(1_759_590_812, 2);
        assert_eq!(b, "stripe-inbox-20251004-151332-2.db");
        assert_eq!(parse_backup_name(&b), Some(("20251004-151332".into(), 2)));
        for other in [
            "stripe-inbox.db",
            "stripe-inbox-2025-10-04.db",
            "stripe-inbox-20251004-151332.db.tmp",
            "stripe-inbox-20251004x151332.db",
            "stripe-inbox-20251004-151332-x.db",
            "notes.txt",
        ] {
            assert_eq!(parse_backup_name(other), None, "{other}");
        }
    }

    #[test]
    fn rotate_keeps_the_newest_and_nothing_else_is_touched() {
        let dir = std::env::temp_dir().join(format!("stripe-inbox-rotate-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let names = [
            backup_name(1_000_000_000, 1),
            backup_name(1_000_000_000, 2),
            backup_name(1_000_000_060, 1),
            backup_name(1_000_086_400, 1),
            "stripe-inbox.db".to_string(),
            "keep-me.db".to_string(),
        ];
        for n in &names {
            fs::write(dir.join(n), b"x").unwrap();
        }
        let removed = rotate(&dir, 2).unwrap();
        let removed: Vec<_> = removed
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap().to_string())
            .collect();
        // Oldest first, by time and then by sequence number.
        assert_eq!(removed, [names[0].clone(), names[1].clone()]);
        for n in &names[2..] {
            assert!(dir.join(n).exists(), "{n}");
        }
        fs::remove_dir_all(&dir).unwrap();
    }
}
