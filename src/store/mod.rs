//! Storage: the SQLite file and everything that touches it directly.
//!
//! What it owns: opening connections ([`open`], the only module allowed to), the migration
//! ledger ([`migrate`](mod@migrate)), the `<db>.lock` file lock ([`lock`]), the WAL checkpointer
//! beside the writer ([`checkpoint`]) with its range-by-range writeback of the copied pages
//! ([`writeback`], one of the crate's two unsafe places: one `sync_file_range` call), the VFS
//! through which the writer's connection writes its WAL, a commit in one write (`walbuf`, the
//! other: SQLite's C interface), and the writer thread, the one read-write connection of a
//! running server ([`writer`]). What it does not know: what an event, an object or a delivery
//! is; the modules above hand the writer closures over a transaction.
//!
//! It may use only the leaf modules (`error`, `periodic`, `histogram`).

pub mod checkpoint;
pub mod lock;
pub mod migrate;
pub mod open;
mod walbuf;
pub mod writeback;
pub mod writer;

pub use checkpoint::Checkpointer;
pub use lock::{lock_path, resolve, Lock};
pub use migrate::{integrity_problems, known_version, migrate, schema_version, steps, SCHEMA};
use std::path::{Path, PathBuf};

/// `x.db` + `-wal` → `x.db-wal`: the names of the files kept beside a database (`-wal`, `-shm`,
/// `.lock`, a copy's `.tmp`, `.before-restore`).
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// The sizes in bytes of the database file and of its `-wal` (0 for a file that is not there).
pub fn file_sizes(database: &Path) -> (u64, u64) {
    let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    (size(database), size(&with_suffix(database, "-wal")))
}

pub use open::{
    open_checkpointer, open_copy_target, open_locked, open_memory, open_read_only, open_writer,
    read_pool, set_autocheckpoint, wal_frames, ReadPool, NEW_PAGE_SIZE,
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use crate::testkit::TempDir;

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
        let dir = TempDir::new("store");
        let path = dir.path().join("m.db");
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
    fn a_new_database_gets_small_pages_and_an_old_one_keeps_its_own() {
        let dir = TempDir::new("store");
        let page_size = |conn: &rusqlite::Connection| -> i64 {
            conn.query_row("PRAGMA page_size", [], |r| r.get(0))
                .unwrap()
        };
        let new = open_writer(&dir.path().join("new.db")).unwrap();
        assert_eq!(page_size(&new), NEW_PAGE_SIZE);
        assert_eq!(
            wal_frames(&new, 8 << 20).unwrap(),
            (8 << 20) / NEW_PAGE_SIZE
        );

        // A file made with 4 KiB pages (every database before this page size) stays as it was,
        // and thresholds given in bytes become a quarter as many frames.
        let old_path = dir.path().join("old.db");
        {
            let c = open_copy_target(&old_path).unwrap();
            c.execute_batch("PRAGMA page_size=4096; CREATE TABLE t(x); DROP TABLE t;")
                .unwrap();
        }
        let old = open_writer(&old_path).unwrap();
        assert_eq!(page_size(&old), 4096);
        assert_eq!(schema_version(&old).unwrap(), known_version());
        assert_eq!(wal_frames(&old, 8 << 20).unwrap(), 2048);
        let autocheckpoint: i64 = old
            .query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0))
            .unwrap();
        assert_eq!(autocheckpoint, (400 << 20) / 4096);
    }

    #[test]
    fn newer_database_is_refused() {
        let dir = TempDir::new("store");
        let path = dir.path().join("new.db");
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
        let dir = TempDir::new("store");
        let path = dir.path().join("l.db");
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
        let dir = TempDir::new("store");
        std::fs::create_dir(dir.path().join("real")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("real"), dir.path().join("link")).unwrap();
        let _first = Lock::acquire(&dir.path().join("real/s.db")).unwrap();
        assert!(matches!(
            Lock::acquire(&dir.path().join("link/s.db")),
            Err(Error::Locked { .. })
        ));
        assert!(matches!(
            Lock::acquire(&dir.path().join("link/../real/s.db")),
            Err(Error::Locked { .. })
        ));
    }

    #[test]
    fn readers_cannot_write() {
        let dir = TempDir::new("store");
        let path = dir.path().join("r.db");
        let _writer = open_writer(&path).unwrap();
        let pool = read_pool(&path, 2).unwrap();
        let conn = pool.get().unwrap();
        assert!(conn.execute("DELETE FROM events", []).is_err());
        let ro = open_read_only(&path).unwrap();
        assert!(ro.execute("DELETE FROM events", []).is_err());
    }
}
