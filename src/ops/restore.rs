//! `restore`: putting a backup in place of the database, never losing the one it replaces.
//!
//! A restore writes, so it takes the database lock and refuses while a server runs. It checks the
//! backup before touching anything, writes the copy beside the database as `<db>.tmp`, keeps the
//! database it replaces whole as `<db>.before-restore` (its WAL folded in first), and never leaves
//! an old `-wal` next to the restored file, which SQLite would otherwise apply to it. [`restore`]
//! numbers its steps and says what a failure at each leaves behind: always the database as it was.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::copy::{copy_to, inspect, remove_copy, seal, sync_dir, Check};
use super::Progress;
use crate::error::{Error, Result};
use crate::store::{self, with_suffix, Lock};

/// What a finished restore did.
#[derive(Debug)]
pub struct RestoreReport {
    pub bytes: u64,
    pub events: i64,
    pub schema_version: i64,
    /// Where the database that was replaced went, if there was one.
    pub previous: Option<PathBuf>,
    pub total: Duration,
}

/// Puts the backup `input` in place of the database at `database`.
///
/// 1. Refuses when `input` is missing or is the database itself. Nothing is changed.
/// 2. Takes `<db>.lock`, and refuses while a server (or another command) holds it.
/// 3. Refuses when the database exists and `force` is not given; when `<db>.before-restore` (or its
///    `-wal`/`-shm`) exists, since it would be overwritten; and when a `<db>-wal` lies there
///    without its database, since SQLite would apply it to the restored file.
/// 4. Checks `input`: a SQLite file, `PRAGMA integrity_check` clean, a schema version this build
///    knows (a newer one is refused), an `events` table, [`mirror_problems`](crate::mirror::queries::mirror_problems). Nothing is written
///    before this passes.
/// 5. Copies `input` into `<db>.tmp` (a stale one is removed first) as one self-contained file,
///    runs `PRAGMA quick_check` on the copy and fsyncs it. On failure `<db>.tmp` is removed and the
///    database is untouched.
/// 6. If the database exists: `PRAGMA wal_checkpoint(TRUNCATE)` on it through a read-write
///    connection (the lock keeps every stripe-inbox writer away), which folds its `-wal` into the
///    file, then `journal_mode=DELETE`, which makes it one self-contained file (`serve` turns WAL
///    back on if it is ever put back); closing it removes the `-wal` and `-shm`. If another
///    process (a `sqlite3` shell) still reads it, the checkpoint is busy and restore stops:
///    `<db>.tmp` is removed, and the database has only had committed pages copied into place,
///    which changes nothing it holds.
/// 7. Renames the database to `<db>.before-restore`, with any `-wal`/`-shm` still beside it (a
///    damaged file may refuse the checkpoint) renamed the same way, so that it stays a database
///    that opens with everything it held. On failure whatever was moved is moved back and
///    `<db>.tmp` is removed.
/// 8. Checks that no `-wal` or `-shm` is left next to the database path, renames `<db>.tmp` to the
///    database and fsyncs the directory. On failure the previous files are moved back from
///    `<db>.before-restore*` and `<db>.tmp` is removed.
///
/// The lock is held until the end, so a server started meanwhile waits for none of this: it
/// refuses to start until the restore is done.
pub fn restore(
    database: &Path,
    input: &Path,
    force: bool,
    progress: &mut dyn Progress,
) -> Result<RestoreReport> {
    let started = Instant::now();
    // Work on the real file: renaming onto a symlink would replace the link, not the database.
    let database = &store::resolve(database);
    // 1. The input.
    if !input.is_file() {
        return Err(Error::refused(
            format!("restore from {}: no such file", input.display()),
            "give the path of a file written by `stripe-inbox backup`",
        ));
    }
    if store::resolve(input) == store::resolve(database) {
        return Err(Error::refused(
            format!(
                "restore from {}: that is the database itself",
                input.display()
            ),
            "give the path of a backup",
        ));
    }

    // 2. The lock (its file is created, with the directory, if missing).
    let lock = Lock::acquire(database)?;

    // 3. What is in the way.
    let exists = database.exists();
    if exists && !force {
        return Err(Error::refused(
            format!(
                "restore into {}: a database is there already",
                database.display()
            ),
            "add --force to replace it (it is kept as <database>.before-restore)",
        ));
    }
    let previous = with_suffix(database, ".before-restore");
    for path in [
        previous.clone(),
        with_suffix(&previous, "-wal"),
        with_suffix(&previous, "-shm"),
    ] {
        if path.exists() {
            return Err(Error::refused(
                format!(
                    "restore into {}: {} exists and would be overwritten",
                    database.display(),
                    path.display()
                ),
                "move the earlier restore's leftovers somewhere safe, or delete them",
            ));
        }
    }
    let wal = with_suffix(database, "-wal");
    if !exists && wal.exists() {
        return Err(Error::refused(
            format!(
                "restore into {}: {} lies there without its database, and SQLite would apply it \
                 to the restored file",
                database.display(),
                wal.display()
            ),
            "move that -wal file away (it may hold the last writes of the missing database)",
        ));
    }

    // 4. The input must be sound and ours.
    let src = store::open_read_only(input)?;
    let input_facts = inspect(&src, input, Check::Full).map_err(|e| match e {
        e @ Error::SchemaTooNew { .. } => e,
        e => Error::refused(
            format!("restore from {}: {e}", input.display()),
            "give a file written by `stripe-inbox backup`, or check the file with \
             `sqlite3 FILE 'PRAGMA integrity_check'`",
        ),
    })?;

    // 5. Copy it next to the database.
    let tmp = with_suffix(database, ".tmp");
    let facts = (|| {
        let dst = copy_to(&src, &tmp, None, progress)?;
        progress.finish();
        seal(dst, &tmp, Check::Quick)
    })();
    drop(src);
    let facts = match facts {
        Ok(facts) => facts,
        Err(e) => {
            remove_copy(&tmp);
            return Err(e);
        }
    };
    debug_assert_eq!(facts.events, input_facts.events);

    // 6. Fold the old database's WAL into it.
    if exists {
        if let Err(e) = checkpoint_truncate(database, &lock) {
            if matches!(e, Error::Refused { .. }) {
                remove_copy(&tmp);
                return Err(e);
            }
            log::warn!(
                "restore: could not fold the WAL into {} ({e}); moving its -wal and -shm along \
                 with it",
                database.display()
            );
        }
    }

    // 7. Move the old database aside, with whatever is still beside it.
    let mut moved: Vec<(PathBuf, PathBuf)> = Vec::new();
    let trio = |base: &Path| {
        [
            base.to_path_buf(),
            with_suffix(base, "-wal"),
            with_suffix(base, "-shm"),
        ]
    };
    let step7 = (|| {
        for (from, to) in trio(database).into_iter().zip(trio(&previous)) {
            if from.exists() {
                fs::rename(&from, &to).map_err(|e| {
                    Error::io(format!("rename {} to {}", from.display(), to.display()), e)
                })?;
                moved.push((from, to));
            }
        }
        Ok(())
    })();

    // 8. Put the copy in place, with nothing stale beside it.
    let step8 = step7.and_then(|()| {
        for stale in [with_suffix(database, "-wal"), with_suffix(database, "-shm")] {
            if stale.exists() {
                return Err(Error::refused(
                    format!(
                        "restore into {}: {} appeared meanwhile",
                        database.display(),
                        stale.display()
                    ),
                    "is something else using the database? stop it, then restore again",
                ));
            }
        }
        fs::rename(&tmp, database).map_err(|e| {
            Error::io(
                format!("rename {} to {}", tmp.display(), database.display()),
                e,
            )
        })?;
        sync_dir(database)
    });
    if let Err(e) = step8 {
        // Undo: the previous files go back where they were.
        for (from, to) in moved.iter().rev() {
            if let Err(undo) = fs::rename(to, from) {
                log::error!(
                    "restore: could not move {} back to {}: {undo}",
                    to.display(),
                    from.display()
                );
            }
        }
        remove_copy(&tmp);
        return Err(e);
    }
    drop(lock);
    Ok(RestoreReport {
        bytes: facts.bytes,
        events: facts.events,
        schema_version: facts.schema_version,
        previous: exists.then_some(previous),
        total: started.elapsed(),
    })
}

/// Folds the WAL of the (locked) database into its file and closes it.
fn checkpoint_truncate(database: &Path, lock: &Lock) -> Result<()> {
    let conn = store::open_locked(database, lock)?;
    let (busy, _, _): (i64, i64, i64) = conn
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .map_err(|e| Error::sqlite(format!("checkpoint {}", database.display()), e))?;
    if busy == 0 {
        // Make it one self-contained file too, so that opening it later leaves nothing beside it.
        conn.query_row("PRAGMA journal_mode=DELETE", [], |_| Ok(()))
            .map_err(|e| Error::sqlite(format!("leave WAL mode on {}", database.display()), e))?;
    } else {
        return Err(Error::refused(
            format!(
                "restore into {}: another process has the database open, so its WAL cannot be \
                 folded in before it is moved",
                database.display()
            ),
            "close it (a sqlite3 shell? `fuser` names it) and run restore again",
        ));
    }
    conn.close()
        .map_err(|(_, e)| Error::sqlite(format!("close {}", database.display()), e))
}
