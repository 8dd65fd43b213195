//! The checkpointer: WAL checkpoints beside the writer, from a `query_only` connection of its own.
//!
//! Measured: a checkpoint that runs inside one of the writer's commits sets the writer's tail
//! latency. So a thread copies committed WAL pages into the database file every 250 ms (a PASSIVE
//! checkpoint, which never blocks the writer), and once the WAL is large and fully copied a RESTART
//! checkpoint lets the next transaction write the WAL from its beginning again.

use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;

use super::open::open_checkpointer;
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
    /// Starts checkpointing `path` every `interval`; a zero interval starts nothing (`[database]
    /// checkpoint_interval_ms = 0`, for Litestream), leaving the writer's autocheckpoint fallback.
    pub fn start(path: &Path, interval: Duration) -> Result<Checkpointer> {
        if interval.is_zero() {
            return Ok(Checkpointer {
                thread: Periodic::none(),
            });
        }
        let conn = open_checkpointer(path)?;
        let thread = Periodic::start("checkpoint", interval, move |_| {
            checkpoint_once(&conn);
            interval
        })?;
        Ok(Checkpointer { thread })
    }

    /// Stops the thread and closes its connection.
    pub fn stop(self) {
        self.thread.stop();
    }
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
