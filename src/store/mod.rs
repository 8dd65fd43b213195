//! The only place that opens SQLite: the one writer connection, the read-only pool, migrations, the
//! lock that keeps a second server off the file, and integrity checks.
//!
//! The writer connection runs in WAL mode with `synchronous=FULL`, because a 2xx to Stripe promises
//! the event survives a power cut. Readers are `query_only` connections from an r2d2 pool; they can
//! never write, whatever a bug elsewhere asks of them. Migrations come from `schema.sql`, split on
//! its `-- step N:` markers, each applied in its own transaction with `PRAGMA user_version`, and a
//! database from a newer build is refused before anything touches it.

#![allow(clippy::disallowed_methods)] // This module is the one allowed to open connections.

pub mod writer;

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::error::{Error, Result};

/// The read-only connection pool handed to the admin pages and the read API.
pub type ReadPool = r2d2::Pool<r2d2_sqlite::SqliteConnectionManager>;

/// The migration ledger, embedded at build time.
pub const SCHEMA: &str = include_str!("../../schema.sql");

/// How long a connection waits for a lock before SQLite gives up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The numbered steps of `schema.sql`: (number, summary, SQL).
pub fn steps() -> Vec<(i64, &'static str, &'static str)> {
    let mut steps = Vec::new();
    let mut rest = SCHEMA;
    while let Some(at) = rest.find("\n-- step ") {
        let after = &rest[at + "\n-- step ".len()..];
        let line_end = after.find('\n').unwrap_or(after.len());
        let (number, summary) = after[..line_end]
            .split_once(':')
            .unwrap_or((&after[..line_end], ""));
        let body_start = (line_end + 1).min(after.len());
        let next = after[body_start..]
            .find("\n-- step ")
            .map_or(after.len(), |n| body_start + n);
        let number = number.trim().parse().unwrap_or(-1);
        steps.push((number, summary.trim(), &after[body_start..next]));
        rest = &after[next..];
    }
    steps
}

/// The schema version this build knows (the last step's number).
pub fn known_version() -> i64 {
    steps().last().map_or(0, |s| s.0)
}

/// Opens the writer connection, creating the file if needed, and migrates it to the latest step.
/// Call only from the code that owns the writer thread (or a command holding [`Lock`]).
pub fn open_writer(path: &Path) -> Result<Connection> {
    let what = || format!("open database {}", path.display());
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("create directory {}", dir.display()), e))?;
    }
    let conn = Connection::open(path).map_err(|e| Error::sqlite(what(), e))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| Error::sqlite(what(), e))?;
    // Only possible while the file is still empty: lets `prune` give space back with an
    // incremental vacuum instead of a full VACUUM that would stall the writer.
    conn.execute_batch("PRAGMA auto_vacuum=INCREMENTAL;")
        .map_err(|e| Error::sqlite(what(), e))?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .map_err(|e| Error::sqlite(what(), e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error::Other(format!(
            "{}: journal_mode is {mode}, WAL is required",
            what()
        )));
    }
    // The checkpointer thread moves WAL pages into the file; the writer checkpoints only as a
    // fallback when the WAL passes ~400 MB, and a WAL that grew is cut back to 64 MiB after reset.
    // Savepoint journals stay in memory, and an 8 MiB page cache spares the writer re-reads.
    conn.execute_batch(
        "PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON; PRAGMA wal_autocheckpoint=100000;
         PRAGMA journal_size_limit=67108864; PRAGMA temp_store=MEMORY; PRAGMA cache_size=-8192;",
    )
    .map_err(|e| Error::sqlite(what(), e))?;
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
        return Err(Error::Other(format!(
            "{}: the lock held is {}, not this database's",
            what(),
            lock.path().display()
        )));
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

/// A thread that runs `PRAGMA wal_checkpoint(PASSIVE)` every 250 ms on a connection of its
/// own, so that copying WAL pages into the database file happens beside the writer's commits
/// instead of inside one of them (measured: that checkpoint set the writer's tail latency).
///
/// Its connection is `query_only`: it cannot write a row. A checkpoint only copies pages that the
/// writer has already committed; SQLite refuses to checkpoint from a read-only-opened connection,
/// which is why this one is opened read-write and then locked down.
pub struct Checkpointer {
    stop: std::sync::Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts checkpointing `path` every `interval`; a zero interval starts nothing (`[database]
    /// checkpoint_interval_ms = 0`, for Litestream), leaving the writer's autocheckpoint fallback.
    pub fn start(path: &Path, interval: Duration) -> Result<Checkpointer> {
        let stop = std::sync::Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
        if interval.is_zero() {
            return Ok(Checkpointer { stop, thread: None });
        }
        let conn = open_checkpointer(path)?;
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("checkpoint".into())
            .spawn(move || {
                let (lock, cvar) = &*flag;
                let mut stopped = lock.lock().expect("checkpointer lock poisoned");
                while !*stopped {
                    stopped = cvar
                        .wait_timeout(stopped, interval)
                        .expect("checkpointer lock poisoned")
                        .0;
                    checkpoint_once(&conn);
                }
            })
            .map_err(|e| Error::io("spawn checkpoint thread", e))?;
        Ok(Checkpointer {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the thread and closes its connection.
    pub fn stop(mut self) {
        *self.stop.0.lock().expect("checkpointer lock poisoned") = true;
        self.stop.1.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Sets the writer connection's own WAL autocheckpoint threshold, in frames.
pub fn set_autocheckpoint(conn: &Connection, frames: i64) -> Result<()> {
    conn.pragma_update(None, "wal_autocheckpoint", frames)
        .map_err(|e| Error::sqlite("set wal_autocheckpoint", e))
}

/// WAL frames (4 KiB pages) past which the checkpointer makes the writer start the WAL afresh.
const RESTART_FRAMES: i64 = 8192;

/// One round of the checkpointer: a passive checkpoint, which never blocks the writer. Under steady
/// load the writer appends while it runs, so the WAL is never found fully copied at the start of a
/// write transaction and never starts over; once it passes [`RESTART_FRAMES`] with everything
/// already copied, a RESTART checkpoint briefly holds the writer back (copying only what arrived
/// since, plus one fsync) so that the next transaction writes the WAL from its beginning again.
fn checkpoint_once(conn: &Connection) {
    let run = |mode: &str| -> rusqlite::Result<(i64, i64, i64)> {
        conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
    };
    match run("PASSIVE") {
        Ok((0, log, copied)) if log > RESTART_FRAMES && copied >= log - 256 => {
            if let Err(e) = run("RESTART") {
                log::debug!("restart checkpoint: {e}");
            }
        }
        Ok(_) => {}
        Err(e) => log::debug!("passive checkpoint: {e}"),
    }
}

/// Opens a connection that can run `PRAGMA wal_checkpoint` and nothing else that writes: opened
/// read-write (SQLite refuses to checkpoint from a read-only-opened connection), then `query_only`.
/// A checkpoint only copies pages the writer has already committed. Used by [`Checkpointer`], and
/// by `backup` to fold in, itself, the WAL that grew while it held its snapshot.
pub fn open_checkpointer(path: &Path) -> Result<Connection> {
    let what = || format!("open checkpoint connection to {}", path.display());
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| Error::sqlite(what(), e))?;
    conn.busy_timeout(Duration::from_millis(100))
        .map_err(|e| Error::sqlite(what(), e))?;
    conn.execute_batch("PRAGMA query_only=ON;")
        .map_err(|e| Error::sqlite(what(), e))?;
    Ok(conn)
}

/// The database's schema version (`PRAGMA user_version`).
pub fn schema_version(conn: &Connection) -> Result<i64> {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| Error::sqlite("read schema version", e))
}

/// Applies every step of `schema.sql` newer than the database's `user_version`, one transaction
/// each. Refuses a database from a newer build.
pub fn migrate(conn: &Connection, path: &Path) -> Result<()> {
    let found = schema_version(conn)?;
    let known = known_version();
    if found > known {
        return Err(Error::SchemaTooNew {
            path: path.to_path_buf(),
            found,
            known,
        });
    }
    for (number, summary, sql) in steps().into_iter().filter(|s| s.0 > found) {
        let what = || format!("migrate {} to step {number} ({summary})", path.display());
        let tx = conn
            .unchecked_transaction()
            .map_err(|e| Error::sqlite(what(), e))?;
        tx.execute_batch(sql)
            .map_err(|e| Error::sqlite(what(), e))?;
        tx.pragma_update(None, "user_version", number)
            .map_err(|e| Error::sqlite(what(), e))?;
        tx.commit().map_err(|e| Error::sqlite(what(), e))?;
        log::info!(
            "migrated database={} step={number} summary={summary:?}",
            path.display()
        );
    }
    Ok(())
}

/// `PRAGMA integrity_check`: an empty list means the file is sound.
pub fn integrity_problems(conn: &Connection) -> Result<Vec<String>> {
    let mut stmt = conn
        .prepare("PRAGMA integrity_check")
        .map_err(|e| Error::sqlite("integrity check", e))?;
    let rows = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .map_err(|e| Error::sqlite("integrity check", e))?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(|e| Error::sqlite("integrity check", e))?;
    Ok(rows.into_iter().filter(|r| r != "ok").collect())
}

/// An advisory lock on `<database>.lock`, held by `serve` (and by commands that write) for as long as
/// the value lives, so that a second server refuses to start instead of racing the first.
#[derive(Debug)]
pub struct Lock {
    _file: File,
    path: PathBuf,
}

impl Lock {
    /// Takes the lock or says who holds it.
    pub fn acquire(database: &Path) -> Result<Lock> {
        // Through symlinks and `..`: two paths to one file must meet at one lock.
        let path = lock_path(&resolve(database));
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::io(format!("create directory {}", dir.display()), e))?;
        }
        let mut file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(format!("open lock file {}", path.display()), e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let holder = if holder.is_empty() {
                    "another process".to_string()
                } else {
                    holder.to_string()
                };
                return Err(Error::Locked {
                    path: database.to_path_buf(),
                    holder,
                });
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(Error::io(format!("lock {}", path.display()), e));
            }
        }
        // Record who holds it, for the next one's error message.
        let me = format!("stripe-inbox pid {}", std::process::id());
        let _ = file.set_len(0);
        let _ = file.rewind();
        let _ = file.write_all(me.as_bytes());
        Ok(Lock { _file: file, path })
    }

    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether some process holds the lock on `database` right now (without taking it).
    pub fn held(database: &Path) -> Option<String> {
        match Lock::acquire(database) {
            Err(Error::Locked { holder, .. }) => Some(holder),
            _ => None,
        }
    }
}

/// The database's real path, through symlinks, also when the file does not exist yet (its
/// directory is resolved then); the path as given when not even the directory exists.
pub fn resolve(database: &Path) -> PathBuf {
    if let Ok(real) = database.canonicalize() {
        return real;
    }
    let dir = match database.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    match (dir.canonicalize(), database.file_name()) {
        (Ok(dir), Some(name)) => dir.join(name),
        _ => database.to_path_buf(),
    }
}

/// `stripe-inbox.db` → `stripe-inbox.db.lock`.
pub fn lock_path(database: &Path) -> PathBuf {
    let mut name = database.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_numbered_without_gaps() {
        let steps = steps();
        assert!(!steps.is_empty());
        for (i, (number, summary, sql)) in steps.iter().enumerate() {
            assert_eq!(*number, i as i64 + 1, "step numbers must run 1..N");
            assert!(!summary.is_empty(), "step {number} needs a summary");
            assert!(sql.contains(';'), "step {number} is empty");
        }
    }

    #[test]
    fn migrate_from_empty_then_again_is_a_no_op() {
        let dir = tempdir();
        let path = dir.join("m.db");
        let conn = open_writer(&path).unwrap();
        assert_eq!(schema_version(&conn).unwrap(), known_version());
        let auto_vacuum: i64 = conn
            .query_row("PRAGMA auto_vacuum", [], |r| r.get(0))
            .unwrap();
        assert_eq!(auto_vacuum, 2, "a new database has incremental auto_vacuum");
        drop(conn);
        let conn = open_writer(&path).unwrap();
        assert_eq!(schema_version(&conn).unwrap(), known_version());
        assert!(integrity_problems(&conn).unwrap().is_empty());
    }

    #[test]
    fn newer_database_is_refused() {
        let dir = tempdir();
        let path = dir.join("new.db");
        let conn = open_writer(&path).unwrap();
        conn.pragma_update(None, "user_version", known_version() + 1)
            .unwrap();
        drop(conn);
        match open_writer(&path) {
            Err(Error::SchemaTooNew { found, known, .. }) => assert_eq!(found, known + 1),
            other => panic!("expected SchemaTooNew, got {other:?}"),
        }
    }

    #[test]
    fn lock_is_exclusive_and_names_holder() {
        let dir = tempdir();
        let path = dir.join("l.db");
        let first = Lock::acquire(&path).unwrap();
        let err = Lock::acquire(&path).unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        assert!(Lock::held(&path).is_some());
        drop(first);
        assert!(Lock::held(&path).is_none());
        Lock::acquire(&path).unwrap();
    }

    #[test]
    fn lock_meets_through_a_symlinked_directory() {
        let dir = tempdir();
        std::fs::create_dir(dir.join("real")).unwrap();
        std::os::unix::fs::symlink(dir.join("real"), dir.join("link")).unwrap();
        let _first = Lock::acquire(&dir.join("real/s.db")).unwrap();
        assert!(matches!(
            Lock::acquire(&dir.join("link/s.db")),
            Err(Error::Locked { .. })
        ));
        assert!(matches!(
            Lock::acquire(&dir.join("link/../real/s.db")),
            Err(Error::Locked { .. })
        ));
    }

    #[test]
    fn readers_cannot_write() {
        let dir = tempdir();
        let path = dir.join("r.db");
        let _writer = open_writer(&path).unwrap();
        let pool = read_pool(&path, 2).unwrap();
        let conn = pool.get().unwrap();
        assert!(conn.execute("DELETE FROM events", []).is_err());
        let ro = open_read_only(&path).unwrap();
        assert!(ro.execute("DELETE FROM events", []).is_err());
    }

    pub(crate) fn tempdir() -> PathBuf {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("stripe-inbox-db-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
