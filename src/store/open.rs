//! Opening connections: the one writer connection, the read-only pool, read-only and in-memory
//! connections, a copy target, a locked maintenance connection and the checkpointer's. This file is
//! the only place in the crate that may call `Connection::open*` (clippy `disallowed-methods`).
//!
//! The writer connection runs in WAL mode with `synchronous=FULL`, because a 2xx to Stripe promises
//! the event survives a power cut; it is migrated before anyone uses it. Readers are `query_only`:
//! they can never write, whatever a bug elsewhere asks of them. Connection pragmas live here, at
//! open time, never in `schema.sql`.

#![allow(clippy::disallowed_methods)] // This module is the one allowed to open connections.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::lock::{lock_path, resolve, Lock};
use super::migrate::migrate;
use crate::error::{Error, Result};

/// The read-only connection pool handed to the admin pages and the read API.
pub type ReadPool = r2d2::Pool<r2d2_sqlite::SqliteConnectionManager>;

/// The page size of a database this service creates (an existing file keeps its own: SQLite
/// changes it only by a full VACUUM outside WAL mode). SQLite keeps a row on one page when it fits,
/// so with 4 KiB pages a 2.1 KB event filled a page alone, 2.25x its body on disk; with 1 KiB pages
/// what does not fit goes to full overflow pages (1.31x). And a commit writes every page it touched
/// in full to the WAL: the three indexes keyed by random ids dirty a page each per event, 1 KiB
/// now instead of 4 (README, Performance).
pub const NEW_PAGE_SIZE: i64 = 1024;

/// The WAL size at which the writer checkpoints by itself, a fallback: the checkpointer keeps the
/// WAL far smaller.
const AUTOCHECKPOINT_BYTES: i64 = 400 << 20;

/// How long a connection waits for a lock before SQLite gives up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How often the writer and the checkpointer look again at a lock the other holds. SQLite's own
/// busy timeout sleeps 1, 2, 5, 10 ... up to 100 ms between tries, so the writer could sleep on
/// for tens of milliseconds after a checkpoint had long let go (measured: that set the p99 at a
/// fixed 3,000 events/s). Polling every 250 µs costs nothing while nobody waits.
const BUSY_POLL: Duration = Duration::from_micros(250);

/// The writer's busy handler: retry every [`BUSY_POLL`] for [`BUSY_TIMEOUT`] in all.
fn writer_busy(tries: i32) -> bool {
    std::thread::sleep(BUSY_POLL);
    i64::from(tries) < (BUSY_TIMEOUT.as_micros() / BUSY_POLL.as_micros()) as i64
}

/// The checkpointer's: the same polling, for at most 100 ms (it tries again next round).
fn checkpointer_busy(tries: i32) -> bool {
    std::thread::sleep(BUSY_POLL);
    tries < 400
}

/// The busy handler of the writer's WAL restart: a reader still in the WAL may hold the writer
/// back for 5 ms at most; then the WAL goes on growing, and the next restart tries again.
fn restart_busy(tries: i32) -> bool {
    std::thread::sleep(BUSY_POLL);
    tries < 20
}

/// Runs `PRAGMA wal_checkpoint(RESTART)` on the writer's connection `conn`, between transactions,
/// and returns whether the next transaction writes the WAL from its beginning (false: a reader
/// still used it, or another checkpoint was running). For
/// [`super::writer::WriterHandle::restart_wal`].
pub(super) fn restart_wal(conn: &Connection) -> Result<bool> {
    let what = "restart the WAL";
    conn.busy_handler(Some(restart_busy))
        .map_err(|e| Error::sqlite(what, e))?;
    let busy = conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |r| r.get::<_, i64>(0));
    conn.busy_handler(Some(writer_busy))
        .map_err(|e| Error::sqlite(what, e))?;
    Ok(busy.map_err(|e| Error::sqlite(what, e))? == 0)
}

/// Opens the writer connection, creating the file if needed, and migrates it to the latest step.
/// Call only from the code that owns the writer thread (or a command holding [`Lock`]).
pub fn open_writer(path: &Path) -> Result<Connection> {
    let what = || format!("open database {}", path.display());
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("create directory {}", dir.display()), e))?;
    }
    // The writer's WAL writes are gathered into one write per commit ([`super::walbuf`]).
    let conn = if super::walbuf::register() {
        Connection::open_with_flags_and_vfs(path, OpenFlags::default(), super::walbuf::VFS_NAME)
    } else {
        Connection::open(path)
    }
    .map_err(|e| Error::sqlite(what(), e))?;
    conn.busy_handler(Some(writer_busy))
        .map_err(|e| Error::sqlite(what(), e))?;
    // Both only take effect while the file is still empty. The page size: see [`NEW_PAGE_SIZE`].
    // Incremental auto-vacuum lets `prune` give space back without a full VACUUM that would stall
    // the writer.
    conn.execute_batch(&format!(
        "PRAGMA page_size={NEW_PAGE_SIZE}; PRAGMA auto_vacuum=INCREMENTAL;"
    ))
    .map_err(|e| Error::sqlite(what(), e))?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .map_err(|e| Error::sqlite(what(), e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error::Damaged {
            path: path.to_path_buf(),
            msg: format!("journal_mode is {mode}, WAL is required"),
        });
    }
    // The checkpointer thread moves WAL pages into the file; the writer checkpoints only as a
    // fallback when the WAL passes [`AUTOCHECKPOINT_BYTES`], and a WAL that grew is cut back to
    // 64 MiB after reset. Savepoint journals stay in memory, and a 4 MiB page cache spares the
    // writer re-reads (8 MiB measured no faster, on an empty file or one of 5,000,000 events, and
    // cost 5 MiB of RSS: README, "ranges by what was copied").
    conn.execute_batch(
        "PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON; PRAGMA journal_size_limit=67108864;
         PRAGMA temp_store=MEMORY; PRAGMA cache_size=-4096;",
    )
    .map_err(|e| Error::sqlite(what(), e))?;
    set_autocheckpoint(&conn, AUTOCHECKPOINT_BYTES)?;
    migrate(&conn, path)?;
    Ok(conn)
}

/// Opens a read-only connection (for `check` while a server holds the database, and tools).
pub fn open_read_only(path: &Path) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| Error::sqlite(format!("open database {} read-only", path.display()), e))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| Error::sqlite("set busy timeout", e))?;
    conn.execute_batch("PRAGMA query_only=ON;")
        .map_err(|e| Error::sqlite("set query_only", e))?;
    Ok(conn)
}

/// An in-memory database with the whole schema, for tests and benchmarks of the projection.
pub fn open_memory() -> Result<Connection> {
    let conn =
        Connection::open_in_memory().map_err(|e| Error::sqlite("open in-memory database", e))?;
    migrate(&conn, Path::new(":memory:"))?;
    Ok(conn)
}

/// Opens a file that receives a copy of a database (a backup's `OUT.tmp`, a restore's
/// `<db>.tmp`): read-write, created if missing, nothing migrated. Never the live database, whose one
/// writer is the writer thread: callers pass a path of their own making.
pub fn open_copy_target(path: &Path) -> Result<Connection> {
    let what = || format!("open copy {}", path.display());
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| Error::sqlite(what(), e))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| Error::sqlite(what(), e))?;
    Ok(conn)
}

/// Opens an existing database read-write without migrating it, for maintenance by a command that
/// holds `lock` (so no server is writing): restore checkpoints the old file through it before
/// moving it away. Fails unless `lock` is the lock of `path`.
pub fn open_locked(path: &Path, lock: &Lock) -> Result<Connection> {
    let what = || format!("open database {}", path.display());
    if lock.path() != lock_path(&resolve(path)) {
        return Err(Error::refused(
            format!(
                "{}: the lock held is {}, not this database's",
                what(),
                lock.path().display()
            ),
            "",
        ));
    }
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| Error::sqlite(what(), e))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| Error::sqlite(what(), e))?;
    Ok(conn)
}

/// A pool of `query_only` connections for readers.
pub fn read_pool(path: &Path, size: u32) -> Result<ReadPool> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    let manager = r2d2_sqlite::SqliteConnectionManager::file(path)
        .with_flags(flags)
        .with_init(|c| {
            c.busy_timeout(BUSY_TIMEOUT)?;
            c.execute_batch("PRAGMA query_only=ON;")
        });
    Ok(r2d2::Pool::builder()
        .max_size(size)
        .connection_timeout(Duration::from_secs(5))
        .build(manager)?)
}

/// Sets the writer connection's own WAL autocheckpoint threshold to about `bytes` of WAL.
pub fn set_autocheckpoint(conn: &Connection, bytes: i64) -> Result<()> {
    let frames = wal_frames(conn, bytes)?;
    conn.pragma_update(None, "wal_autocheckpoint", frames)
        .map_err(|e| Error::sqlite("set wal_autocheckpoint", e))
}

/// How many WAL frames (one page each) make `bytes` in `conn`'s database, at least one.
pub fn wal_frames(conn: &Connection, bytes: i64) -> Result<i64> {
    Ok((bytes / page_size(conn)?).max(1))
}

/// The page size of `conn`'s database (at least 512, SQLite's smallest), the bytes one WAL
/// frame carries.
pub fn page_size(conn: &Connection) -> Result<i64> {
    let page_size: i64 = conn
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .map_err(|e| Error::sqlite("read page size", e))?;
    Ok(page_size.max(512))
}

/// Opens a connection that can run `PRAGMA wal_checkpoint` and nothing else that writes: opened
/// read-write (SQLite refuses to checkpoint from a read-only-opened connection), then `query_only`.
/// A checkpoint only copies pages the writer has already committed. Used by [`super::Checkpointer`], and
/// by `backup` to fold in, itself, the WAL that grew while it held its snapshot.
pub fn open_checkpointer(path: &Path) -> Result<Connection> {
    let what = || format!("open checkpoint connection to {}", path.display());
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| Error::sqlite(what(), e))?;
    conn.busy_handler(Some(checkpointer_busy))
        .map_err(|e| Error::sqlite(what(), e))?;
    conn.execute_batch("PRAGMA query_only=ON;")
        .map_err(|e| Error::sqlite(what(), e))?;
    Ok(conn)
}
