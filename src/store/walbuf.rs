//! The writer's WAL writes, gathered: a VFS over the platform's own that holds what SQLite writes
//! to a WAL file and hands a commit to the kernel in one `pwrite`.
//!
//! Measured at 3,000 events/s (README, "Gathered WAL writes"): SQLite writes each WAL frame as two
//! writes (its 24-byte header, then the page), so a commit of about one event made 45 `pwrite`
//! calls (22 frames of 1 KiB), a quarter of the writer's samples in a profile. Gathered, a commit
//! is 1.1 calls, and the writer's CPU per event fell from 120-130 µs to 99-105 µs.
//!
//! Why this keeps every guarantee:
//! - A commit is handed over as soon as its last frame is written (a commit frame is the only
//!   one whose header carries a database size), which is before SQLite syncs the WAL and before
//!   it publishes the commit in the WAL index: no other connection or process can be told of
//!   frames that are not in the file, whatever the `synchronous` setting, and with the writer's
//!   `synchronous=FULL` the sync that follows makes them durable before any 2xx.
//! - Every call that could observe the file (read, size, truncate, sync, file control, close)
//!   first writes out what is held, so SQLite's own view of the file is never stale. A write
//!   inside the held range patches it; any other write that does not extend it writes the held
//!   bytes first, so writes reach the file in the order SQLite made them.
//! - What is held and never synced was never committed: losing it in a crash is what losing an
//!   unsynced write in the page cache would be, and WAL recovery ignores it the same way.
//!
//! Every other file (the database, its shared memory, temporary files) is opened by the platform's
//! VFS itself, with its own methods: this VFS never sees their calls.

#![allow(unsafe_code)]

use std::ffi::{c_int, c_void, CStr};
use std::ptr;
use std::sync::OnceLock;

use rusqlite::ffi;

/// The name the writer's connection opens its database with.
pub const VFS_NAME: &CStr = c"stripe-inbox-walbuf";

/// A WAL file's header and a frame's header, in bytes (SQLite's file format).
const WAL_HEADER_BYTES: i64 = 32;
const FRAME_HEADER_BYTES: usize = 24;

/// The most held before it is written out regardless; a commit of a large batch at saturation
/// is about 150 KB of frames.
const HOLD_MAX: usize = 1 << 20;
/// The most handed to the platform VFS in one write: SQLite's unix VFS masks a write's length to
/// 17 bits (`seekAndWriteFd`), so one of 128 KiB or more would be cut short.
const WRITE_MAX: usize = 64 << 10;

/// Registers the VFS (once per process) and returns whether it is available. If the platform has
/// no default VFS or registration fails, the writer opens the database the ordinary way.
pub fn register() -> bool {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    *REGISTERED.get_or_init(|| {
        // SAFETY: sqlite3_vfs_find and sqlite3_vfs_register are thread-safe in SQLite's default
        // (serialized) build; the struct registered is leaked, so it lives as long as the process.
        unsafe {
            let real = ffi::sqlite3_vfs_find(ptr::null());
            if real.is_null() {
                return false;
            }
            let mut vfs: ffi::sqlite3_vfs = *real;
            vfs.pNext = ptr::null_mut();
            vfs.zName = VFS_NAME.as_ptr();
            vfs.szOsFile = (std::mem::size_of::<WalFile>() + (*real).szOsFile as usize) as c_int;
            vfs.xOpen = Some(open);
            let _ = REAL.set(RealVfs(real));
            let vfs = Box::leak(Box::new(vfs));
            ffi::sqlite3_vfs_register(vfs, 0) == ffi::SQLITE_OK
        }
    })
}

/// The platform VFS this one wraps.
struct RealVfs(*mut ffi::sqlite3_vfs);
// SAFETY: a registered VFS is immutable and shared by every connection in the process.
unsafe impl Send for RealVfs {}
unsafe impl Sync for RealVfs {}

static REAL: OnceLock<RealVfs> = OnceLock::new();

/// A WAL file as this VFS opens it: SQLite's header, the platform's file (placed right after this
/// struct in the same allocation) and the writes held for it.
#[repr(C)]
struct WalFile {
    base: ffi::sqlite3_file,
    real: *mut ffi::sqlite3_file,
    held: Vec<u8>,
    /// The file offset of `held[0]`.
    held_at: i64,
    /// Whether the last write held was a commit frame's header: the write of its page completes
    /// the commit, which is then written out at once.
    commit_header_held: bool,
}

impl WalFile {
    /// The platform file's methods.
    unsafe fn methods(&self) -> &ffi::sqlite3_io_methods {
        &*(*self.real).pMethods
    }

    /// Holds `data`, SQLite's write at `offset`: patched into what is held, appended to it, or, when
    /// it is neither, held afresh once what was held is written out.
    unsafe fn hold(&mut self, data: &[u8], offset: i64) -> c_int {
        let held_end = self.held_at + self.held.len() as i64;
        if !self.held.is_empty() {
            if offset >= self.held_at && offset + data.len() as i64 <= held_end {
                let at = (offset - self.held_at) as usize;
                self.held[at..at + data.len()].copy_from_slice(data);
                return ffi::SQLITE_OK;
            }
            if offset == held_end && self.held.len() + data.len() <= HOLD_MAX {
                self.held.extend_from_slice(data);
                return ffi::SQLITE_OK;
            }
            let rc = self.write_out();
            if rc != ffi::SQLITE_OK {
                return rc;
            }
        }
        // A frame is at most a 64 KiB page and its header, so one write never holds much more.
        self.held_at = offset;
        self.held.extend_from_slice(data);
        ffi::SQLITE_OK
    }

    /// Writes out what is held. On failure nothing stays held: SQLite rolls the transaction back
    /// and writes its frames again.
    unsafe fn write_out(&mut self) -> c_int {
        let write = self.methods().xWrite.expect("a VFS file has xWrite");
        let mut rc = ffi::SQLITE_OK;
        let mut at = self.held_at;
        for chunk in self.held.chunks(WRITE_MAX) {
            rc = write(self.real, chunk.as_ptr().cast(), chunk.len() as c_int, at);
            #[cfg(test)]
            tests::WRITES.with(|w| w.set(w.get() + 1));
            if rc != ffi::SQLITE_OK {
                break;
            }
            at += chunk.len() as i64;
        }
        self.held.clear();
        rc
    }
}

unsafe extern "C" fn open(
    _vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let real = REAL.get().expect("registered before use").0;
    let real_open = (*real).xOpen.expect("a VFS has xOpen");
    if flags & ffi::SQLITE_OPEN_WAL == 0 {
        // The allocation is at least the platform's size: its file lives there unwrapped.
        return real_open(real, name, file, flags, out_flags);
    }
    let inner = file
        .cast::<u8>()
        .add(std::mem::size_of::<WalFile>())
        .cast::<ffi::sqlite3_file>();
    let rc = real_open(real, name, inner, flags, out_flags);
    if rc != ffi::SQLITE_OK {
        if !(*inner).pMethods.is_null() {
            if let Some(close) = (*(*inner).pMethods).xClose {
                close(inner);
            }
        }
        (*file).pMethods = ptr::null();
        return rc;
    }
    ptr::write(
        file.cast::<WalFile>(),
        WalFile {
            base: ffi::sqlite3_file { pMethods: &METHODS },
            real: inner,
            held: Vec::new(),
            held_at: 0,
            commit_header_held: false,
        },
    );
    ffi::SQLITE_OK
}

unsafe fn wal<'a>(file: *mut ffi::sqlite3_file) -> &'a mut WalFile {
    &mut *file.cast::<WalFile>()
}

/// The WAL file with nothing held: what was held is written out first (or the error doing so).
unsafe fn written_out<'a>(file: *mut ffi::sqlite3_file) -> Result<&'a mut WalFile, c_int> {
    let f = wal(file);
    match f.write_out() {
        ffi::SQLITE_OK => Ok(f),
        rc => Err(rc),
    }
}

unsafe extern "C" fn close(file: *mut ffi::sqlite3_file) -> c_int {
    let f = wal(file);
    let written = f.write_out();
    let closed = match f.methods().xClose {
        Some(close) => close(f.real),
        None => ffi::SQLITE_OK,
    };
    ptr::drop_in_place(&mut f.held);
    if written != ffi::SQLITE_OK {
        written
    } else {
        closed
    }
}

unsafe extern "C" fn read(
    file: *mut ffi::sqlite3_file,
    buf: *mut c_void,
    amount: c_int,
    offset: i64,
) -> c_int {
    match written_out(file) {
        Ok(f) => f.methods().xRead.expect("a VFS file has xRead")(f.real, buf, amount, offset),
        Err(rc) => rc,
    }
}

unsafe extern "C" fn write(
    file: *mut ffi::sqlite3_file,
    buf: *const c_void,
    amount: c_int,
    offset: i64,
) -> c_int {
    let f = wal(file);
    let data = std::slice::from_raw_parts(buf.cast::<u8>(), amount.max(0) as usize);
    let ends_commit = std::mem::take(&mut f.commit_header_held);
    let rc = f.hold(data, offset);
    if rc != ffi::SQLITE_OK {
        return rc;
    }
    // A frame header is the only 24-byte write SQLite makes to a WAL; bytes 4..8 are the
    // database size after a commit, zero in every frame but a commit's.
    if data.len() == FRAME_HEADER_BYTES && offset >= WAL_HEADER_BYTES && data[4..8] != [0; 4] {
        f.commit_header_held = true;
    } else if ends_commit {
        // The page after a commit frame's header: the commit is whole, hand it over now.
        return f.write_out();
    }
    ffi::SQLITE_OK
}

unsafe extern "C" fn truncate(file: *mut ffi::sqlite3_file, size: i64) -> c_int {
    match written_out(file) {
        Ok(f) => f.methods().xTruncate.expect("a VFS file has xTruncate")(f.real, size),
        Err(rc) => rc,
    }
}

unsafe extern "C" fn sync(file: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
    match written_out(file) {
        Ok(f) => f.methods().xSync.expect("a VFS file has xSync")(f.real, flags),
        Err(rc) => rc,
    }
}

unsafe extern "C" fn file_size(file: *mut ffi::sqlite3_file, size: *mut i64) -> c_int {
    match written_out(file) {
        Ok(f) => f.methods().xFileSize.expect("a VFS file has xFileSize")(f.real, size),
        Err(rc) => rc,
    }
}

unsafe extern "C" fn lock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    let f = wal(file);
    f.methods().xLock.expect("a VFS file has xLock")(f.real, level)
}

unsafe extern "C" fn unlock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    let f = wal(file);
    f.methods().xUnlock.expect("a VFS file has xUnlock")(f.real, level)
}

unsafe extern "C" fn check_reserved_lock(file: *mut ffi::sqlite3_file, out: *mut c_int) -> c_int {
    let f = wal(file);
    f.methods()
        .xCheckReservedLock
        .expect("a VFS file has xCheckReservedLock")(f.real, out)
}

unsafe extern "C" fn file_control(
    file: *mut ffi::sqlite3_file,
    op: c_int,
    arg: *mut c_void,
) -> c_int {
    match written_out(file) {
        Ok(f) => match f.methods().xFileControl {
            Some(control) => control(f.real, op, arg),
            None => ffi::SQLITE_NOTFOUND,
        },
        Err(rc) => rc,
    }
}

unsafe extern "C" fn sector_size(file: *mut ffi::sqlite3_file) -> c_int {
    let f = wal(file);
    match f.methods().xSectorSize {
        Some(size) => size(f.real),
        None => 4096,
    }
}

unsafe extern "C" fn device_characteristics(file: *mut ffi::sqlite3_file) -> c_int {
    let f = wal(file);
    match f.methods().xDeviceCharacteristics {
        Some(chars) => chars(f.real),
        None => 0,
    }
}

/// Version 1 methods: a WAL file has no shared memory and is never memory-mapped, so SQLite
/// never asks it for the later versions' calls.
static METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 1,
    xClose: Some(close),
    xRead: Some(read),
    xWrite: Some(write),
    xTruncate: Some(truncate),
    xSync: Some(sync),
    xFileSize: Some(file_size),
    xLock: Some(lock),
    xUnlock: Some(unlock),
    xCheckReservedLock: Some(check_reserved_lock),
    xFileControl: Some(file_control),
    xSectorSize: Some(sector_size),
    xDeviceCharacteristics: Some(device_characteristics),
    xShmMap: None,
    xShmLock: None,
    xShmBarrier: None,
    xShmUnmap: None,
    xFetch: None,
    xUnfetch: None,
};

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::path::{Path, PathBuf};

    use rusqlite::Connection;

    use crate::store::{integrity_problems, open_read_only, open_writer};
    use crate::testkit::TempDir;

    thread_local! {
        /// Writes handed to the platform VFS by WAL files on this thread.
        pub static WRITES: Cell<u64> = const { Cell::new(0) };
    }

    fn writes() -> u64 {
        WRITES.with(|w| w.get())
    }

    /// A new database opened as the writer opens it, with a table `t (k, v)` to fill.
    fn writer_with_scratch_table() -> (TempDir, PathBuf, Connection) {
        let dir = TempDir::new("walbuf");
        let db = dir.path().join("w.db");
        let conn = open_writer(&db).unwrap();
        conn.execute_batch("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB);")
            .unwrap();
        (dir, db, conn)
    }

    /// Inserts `rows` rows of `bytes` random bytes, keys from `first`, in one transaction, and
    /// returns how many writes the VFS handed to the platform for it.
    fn commit_rows(conn: &Connection, first: i64, rows: i64, bytes: i64) -> u64 {
        let before = writes();
        let tx = conn.unchecked_transaction().unwrap();
        for k in first..first + rows {
            tx.execute(
                "INSERT INTO t (k, v) VALUES (?1, randomblob(?2))",
                [k, bytes],
            )
            .unwrap();
        }
        tx.commit().unwrap();
        writes() - before
    }

    fn wal_len(db: &Path) -> u64 {
        std::fs::metadata(crate::store::with_suffix(db, "-wal"))
            .unwrap()
            .len()
    }

    #[test]
    fn a_commit_is_one_write_and_is_in_the_file_when_it_returns() {
        let (_dir, db, conn) = writer_with_scratch_table();
        let reader = open_read_only(&db).unwrap();
        for round in 0..20i64 {
            let wal_before = wal_len(&db);
            // 40 rows of 600 bytes: dozens of 1 KiB frames, each written by SQLite as two writes.
            let written = commit_rows(&conn, round * 100, 40, 600);
            assert_eq!(written, 1, "round {round}: one write per commit");
            let wal_after = wal_len(&db);
            assert!(
                wal_after >= wal_before + 24 * 1024 || wal_after < wal_before,
                "round {round}: the frames are in the WAL file ({wal_before} -> {wal_after})"
            );
            let seen: i64 = reader
                .query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
                .unwrap();
            assert_eq!(seen, (round + 1) * 40, "another connection sees the commit");
        }
    }

    #[test]
    fn a_commit_is_handed_over_before_it_is_published_even_without_a_sync() {
        // With synchronous=OFF SQLite never syncs the WAL: the commit frame alone must make the
        // VFS write out, or the reader would be told of frames that are not in the file.
        let (_dir, db, conn) = writer_with_scratch_table();
        conn.execute_batch("PRAGMA synchronous=OFF;").unwrap();
        let reader = open_read_only(&db).unwrap();
        for round in 1..=20i64 {
            let written = commit_rows(&conn, round * 100, 30, 700);
            assert_eq!(written, 1, "round {round}: one write per commit");
            let (n, bytes): (i64, i64) = reader
                .query_row("SELECT COUNT(*), SUM(length(v)) FROM t", [], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .unwrap();
            assert_eq!((n, bytes), (round * 30, round * 30 * 700));
        }
        assert!(integrity_problems(&reader).unwrap().is_empty());
    }

    #[test]
    fn a_commit_past_the_platform_write_limit_is_whole() {
        // The unix VFS cuts a write of 128 KiB or more short (a 17-bit length); a commit of
        // several MiB must still be written whole, in pieces.
        let (_dir, db, conn) = writer_with_scratch_table();
        for size in [131_072 - 24, 131_072, 262_144, 3 << 20] {
            conn.execute("INSERT INTO t (v) VALUES (randomblob(?1))", [size])
                .unwrap();
        }
        let reader = open_read_only(&db).unwrap();
        let sizes: Vec<i64> = reader
            .prepare("SELECT length(v) FROM t ORDER BY k")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(sizes, [131_048, 131_072, 262_144, 3 << 20]);
        assert!(integrity_problems(&reader).unwrap().is_empty());
    }

    #[test]
    fn a_transaction_reads_its_own_spilled_pages_and_a_rollback_leaves_no_trace() {
        let (_dir, db, conn) = writer_with_scratch_table();
        conn.execute("INSERT INTO t (k, v) VALUES (0, 'kept')", [])
            .unwrap();
        // A 64-page cache: this transaction spills frames into the WAL before it commits, then
        // reads them back, then is rolled back.
        conn.execute_batch("PRAGMA cache_size=64;").unwrap();
        let tx = conn.unchecked_transaction().unwrap();
        for i in 1..=2000 {
            tx.execute("INSERT INTO t (k, v) VALUES (?1, randomblob(300))", [i])
                .unwrap();
        }
        let (n, sum): (i64, i64) = tx
            .query_row("SELECT COUNT(*), SUM(length(v)) FROM t", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!((n, sum), (2001, 4 + 2000 * 300));
        tx.rollback().unwrap();
        // The next transaction writes over the rolled-back frames.
        conn.execute("INSERT INTO t (k, v) VALUES (1, 'after')", [])
            .unwrap();
        drop(conn);
        let reader = open_read_only(&db).unwrap();
        let rows: Vec<(i64, String)> = reader
            .prepare("SELECT k, CAST(v AS TEXT) FROM t ORDER BY k")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(rows, [(0, "kept".to_string()), (1, "after".to_string())]);
        assert!(integrity_problems(&reader).unwrap().is_empty());
    }

    #[test]
    fn the_wal_starts_over_after_a_restart_checkpoint() {
        let (_dir, db, conn) = writer_with_scratch_table();
        for round in 0..5i64 {
            for i in 0..50 {
                conn.execute(
                    "INSERT INTO t (k, v) VALUES (?1, randomblob(500))",
                    [round * 1000 + i],
                )
                .unwrap();
            }
            let busy: i64 = conn
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
                .unwrap();
            assert_eq!(busy, 0);
            assert_eq!(wal_len(&db), 0, "round {round}: the WAL was truncated");
        }
        drop(conn);
        let reader = open_read_only(&db).unwrap();
        let n: i64 = reader
            .query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 250);
        assert!(integrity_problems(&reader).unwrap().is_empty());
    }
}
