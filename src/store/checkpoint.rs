//! The checkpointer: WAL checkpoints beside the writer, from a `query_only` connection of its own.
//!
//! Measured: a checkpoint that runs inside one of the writer's commits sets the writer's tail
//! latency. So a thread copies committed WAL pages into the database file every 250 ms (a PASSIVE
//! checkpoint, which never blocks the writer), and once the WAL is large and fully copied a RESTART
//! checkpoint lets the next transaction write the WAL from its beginning again.
//!
//! A RESTART holds the writer back while it runs, and what it costs is mostly the fsync of the
//! database file: under load a PASSIVE checkpoint never finds the WAL fully copied at its end, so
//! it leaves the pages it copied unsynced, and the RESTART had to flush all of them (10-25 ms,
//! measured at 3,000 events/s: the fixed-rate p99). So before a RESTART the checkpointer fsyncs
//! the database file itself and copies what arrived meanwhile, twice, writing each copy's pages
//! back in ranges before the next sync, all beside the writer, and the RESTART is left with a few
//! frames and a small fsync. The writer runs that RESTART itself,
//! between two batches ([`WriterHandle::restart_wal`]): run here, it first had to win the write
//! lock from a writer that holds it almost always under load, polling every 250 µs (measured at
//! saturation: 10-37 ms, median of a run), and all that was committed meanwhile was left for it
//! to copy and flush while the writer waited.
//!
//! After every checkpoint that found frames, the pages it copied are written back to the disk a
//! range at a time ([`super::writeback`]), so that a commit's flush of the WAL never queues behind
//! all of them at once (measured: that queue, not the RESTART's pause, was the fixed-rate p99);
//! the more it copied, the more ranges (64 at 3,000 events/s, about 256 at saturation).

use std::fs::File;
use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;

use super::open::{open_checkpointer, page_size, wal_frames};
use super::writeback;
use super::writer::WriterHandle;
use crate::error::Result;
use crate::periodic::Periodic;

/// A thread that runs `PRAGMA wal_checkpoint(PASSIVE)` every 250 ms on a connection of its
/// own, so that copying WAL pages into the database file happens beside the writer's commits
/// instead of inside one of them (measured: that checkpoint set the writer's tail latency).
///
/// Its connection is `query_only`: it cannot write a row. A checkpoint only copies pages that the
/// writer has already committed; SQLite refuses to checkpoint from a read-only-opened connection,
/// which is why this one is opened read-write and then locked down.
pub struct Checkpointer {
    thread: Periodic,
}

impl Checkpointer {
    /// Starts checkpointing `path`, the database `writer` writes, every `interval`; a zero
    /// interval starts nothing (`[database] checkpoint_interval_ms = 0`, for Litestream), leaving
    /// the writer's autocheckpoint fallback.
    pub fn start(path: &Path, interval: Duration, writer: WriterHandle) -> Result<Checkpointer> {
        if interval.is_zero() {
            return Ok(Checkpointer {
                thread: Periodic::none(),
            });
        }
        let conn = open_checkpointer(path)?;
        let restart = Restart {
            frames: wal_frames(&conn, RESTART_BYTES)?,
            slack: wal_frames(&conn, RESTART_SLACK_BYTES)?,
        };
        let frame_bytes = page_size(&conn)? as u64;
        // Read-only is enough for fsync, which flushes the file, not the descriptor.
        let file = File::open(path)
            .map_err(|e| crate::error::Error::io(format!("open {}", path.display()), e))?;
        let mut write_back = WriteBack::On { after: (0, 0) };
        let thread = Periodic::start("checkpoint", interval, move |_| {
            checkpoint_once(&conn, &file, &writer, restart, frame_bytes, &mut write_back);
            interval
        })?;
        Ok(Checkpointer { thread })
    }

    /// Stops the thread and closes its connection.
    pub fn stop(self) {
        self.thread.stop();
    }
}

/// The WAL size past which the checkpointer makes the writer start the WAL afresh: 32 MiB, about
/// twice a second at 3,000 events/s of 3.2 KB (20 RESTARTs in 11.7 s, 2026-12-06: a commit of
/// one event is ~22 frames of 1 KiB). Since the copied pages are written back range by range
/// after every checkpoint, each RESTART has little to flush, and fewer pauses shorten the tail
/// (p99 at 3,000/s, 3-6 alternating rounds: 3.4-3.8 ms at 32 MiB, 3.5-4.2 at 24, 4.0-5.2 at 8;
/// 128 MiB later gave no gain over 32 in 4 rounds; README). The WAL file stays under `journal_size_limit` (64 MiB), so it is reused in
/// place rather than truncated and grown again.
const RESTART_BYTES: i64 = 32 << 20;
/// How much of that WAL may still be uncopied when the checkpointer decides to restart.
const RESTART_SLACK_BYTES: i64 = 1 << 20;

/// Whether the checkpointer writes copied pages back ([`writeback`]): on, with the WAL's
/// `(frames, frames copied)` after the last time (an idle server has nothing new to write; both
/// zero once the WAL has started over), or off for good after an error.
#[derive(Clone, Copy, PartialEq, Eq)]
enum WriteBack {
    On { after: (i64, i64) },
    Off,
}

/// [`RESTART_BYTES`] and [`RESTART_SLACK_BYTES`] in frames of the database's page size.
#[derive(Clone, Copy)]
struct Restart {
    frames: i64,
    slack: i64,
}

/// One round of the checkpointer: a passive checkpoint, which never blocks the writer. Under steady
/// load the writer appends while it runs, so the WAL is never found fully copied at the start of a
/// write transaction and never starts over; once it passes [`RESTART_BYTES`] with everything
/// already copied, the database file is synced and what arrived meanwhile is copied (twice, beside
/// the writer), and then the writer runs a RESTART checkpoint between two batches (copying only the
/// last few frames, plus a small fsync) so that its next transaction writes the WAL from its
/// beginning again.
///
/// Whenever the checkpoint found frames it had not found before, the copied pages are then written
/// back range by range, in more ranges the more frames it copied since the last pass
/// ([`writeback::chunks_for`]; `write_back`, turned off for good by the first error: some file
/// systems refuse `sync_file_range`, and the syncs alone keep every guarantee).
fn checkpoint_once(
    conn: &Connection,
    file: &File,
    writer: &WriterHandle,
    restart: Restart,
    frame_bytes: u64,
    write_back: &mut WriteBack,
) {
    let run = |mode: &str| -> rusqlite::Result<(i64, i64, i64)> {
        conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
    };
    let passive = run("PASSIVE");
    if let (WriteBack::On { after }, Ok((_, log, copied))) = (*write_back, &passive) {
        if *log > 0 && after != (*log, *copied) {
            // Frames copied since the last pass; after a restart the counts start from zero.
            let (log_before, copied_before) = after;
            let new = if *log >= log_before && *copied >= copied_before {
                copied - copied_before
            } else {
                *copied
            };
            let new_bytes = (new.max(0) as u64).saturating_mul(frame_bytes);
            *write_back = match writeback::write_back(file, new_bytes) {
                Ok(()) => WriteBack::On {
                    after: (*log, *copied),
                },
                Err(e) => {
                    log::warn!(
                        "writing checkpointed pages back in ranges: {e}; leaving it to the syncs"
                    );
                    WriteBack::Off
                }
            };
        }
    }
    match passive {
        Ok((0, log, copied)) if log > restart.frames && copied >= log - restart.slack => {
            // Twice: what arrives during the first sync is copied and synced by the second, and
            // the writer's RESTART copies and flushes only what arrived during that (measured at
            // saturation, the RESTART's time on the writer, medians of a run: 9.2-9.7 ms after
            // one round, 4.1-4.4 after two, 2.9-3.0 after three; p99.9 18.4-18.6, 13.0-13.8,
            // 13.5-15.3 ms).
            // Each copy's pages are written back in ranges before the next sync, as after every
            // checkpoint: left dirty, the sync (and the RESTART's own) sent them to the disk at
            // once, ahead of the commits' flushes (measured at 3,000 events/s, 2 alternating
            // rounds: the syncs' time 6-7 ms a run instead of 126-129, p99 2.6-2.7 ms instead of
            // 3.5-4.2; README, "Written back before the syncs").
            for _ in 0..2 {
                if let Err(e) = file.sync_data() {
                    log::debug!("sync before restart: {e}");
                }
                if let Err(e) = run("PASSIVE") {
                    log::debug!("passive checkpoint before restart: {e}");
                }
                if *write_back != WriteBack::Off {
                    if let Err(e) = writeback::write_back(file, 0) {
                        log::warn!(
                            "writing checkpointed pages back in ranges: {e}; leaving it to the syncs"
                        );
                        *write_back = WriteBack::Off;
                    }
                }
            }
            match writer.restart_wal() {
                // The WAL starts over: the next pass counts the frames copied from its start.
                Ok(true) => {
                    if let WriteBack::On { after } = write_back {
                        *after = (0, 0);
                    }
                }
                Ok(false) => {}
                Err(e) => log::debug!("restart checkpoint: {e}"),
            }
        }
        Ok(_) => {}
        Err(e) => log::debug!("passive checkpoint: {e}"),
    }
}
