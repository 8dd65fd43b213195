//! Copying a database into a new self-contained file and checking it: what `backup` and `restore`
//! share. Both produce one file in rollback-journal mode, with no `-wal` beside it, that can be
//! copied anywhere as it is; `serve` puts it back into WAL mode when it opens it.

use std::fs::{self, File};
use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::backup::{Backup, StepResult};
use rusqlite::Connection;

use super::Progress;
use crate::error::{Error, Result};
use crate::mirror::queries::mirror_problems;
use crate::store::{self, with_suffix};

/// How much a backup step copies (in whole pages of the database's size).
pub const STEP_BYTES: u64 = 4 << 20;
/// How much is copied between flushes to disk. Left to the kernel, gigabytes of dirty pages are
/// written back at once and the server's commit fsyncs wait behind them (measured: stalls of 1.2 s
/// on a 4 GB copy); flushing every 64 MiB cut the longest stall to 130 ms, every 8 MiB to 70 ms,
/// at no cost in copy speed.
pub const SYNC_EVERY: u64 = 8 << 20;
/// How long a step may keep finding the source busy before the copy gives up.
const BUSY_GIVE_UP: Duration = Duration::from_secs(30);

/// How thoroughly a copy is checked before it is trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// `PRAGMA integrity_check`: every page, every index entry.
    Full,
    /// `PRAGMA quick_check`: the same without matching indexes to their tables; for a copy of a
    /// file that was itself just checked in full.
    Quick,
}

/// What a checked copy holds.
pub struct Facts {
    pub bytes: u64,
    pub events: i64,
    pub schema_version: i64,
}

/// Copies the database `src` is connected to (within its open read transaction, if any) into a
/// new file `tmp`, in steps, pausing `pause` between them. Returns the connection to the copy.
pub fn copy_to(
    src: &Connection,
    tmp: &Path,
    pause: Option<Duration>,
    progress: &mut dyn Progress,
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
    let step_pages = (STEP_BYTES / page_size) as i32;
    let flusher = File::open(tmp).map_err(|e| Error::io(format!("open {}", tmp.display()), e))?;
    {
        let backup = Backup::new(src, &mut dst).map_err(what)?;
        let mut flushed_pages = 0u64;
        let mut busy_since: Option<Instant> = None;
        loop {
            let step = backup.step(step_pages).map_err(what)?;
            let p = backup.progress();
            let total = p.pagecount.max(0) as u64;
            let done = total.saturating_sub(p.remaining.max(0) as u64);
            progress.step(done * page_size, total * page_size);
            match step {
                StepResult::Done => break,
                StepResult::More => busy_since = None,
                _ => {
                    // Busy or locked: another connection is recovering the WAL, or similar.
                    let since = *busy_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > BUSY_GIVE_UP {
                        return Err(Error::Timeout {
                            what: format!(
                                "write copy {}: the database stayed busy for {}s",
                                tmp.display(),
                                BUSY_GIVE_UP.as_secs()
                            ),
                        });
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
pub fn seal(dst: Connection, tmp: &Path, check: Check) -> Result<Facts> {
    let what = |e| Error::sqlite(format!("finish copy {}", tmp.display()), e);
    // The copied header says WAL; make the copy a single file that needs nothing beside it.
    let mode: String = dst
        .query_row("PRAGMA journal_mode=DELETE", [], |r| r.get(0))
        .map_err(what)?;
    if !mode.eq_ignore_ascii_case("delete") {
        return Err(Error::Damaged {
            path: tmp.to_path_buf(),
            msg: format!("finish copy: journal mode stayed {mode}"),
        });
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
pub fn inspect(conn: &Connection, path: &Path, check: Check) -> Result<Facts> {
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
        return Err(Error::Damaged {
            path: path.to_path_buf(),
            msg: format!(
                "PRAGMA {pragma} found {} problem(s), first: {}",
                problems.len(),
                problems[0]
            ),
        });
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
        return Err(Error::Damaged {
            path: path.to_path_buf(),
            msg: format!(
                "the mirror disagrees with a rebuild from the events: {}",
                mirror.join("; ")
            ),
        });
    }
    Ok(Facts {
        bytes: 0,
        events,
        schema_version,
    })
}

/// Removes a copy in progress and whatever SQLite may have put beside it.
pub fn remove_copy(tmp: &Path) {
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
pub fn sync_dir(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(format!("fsync directory {}", dir.display()), e))
}
