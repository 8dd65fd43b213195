//! Re-deriving the mirror from the ground truth: the events ledger, then the states fetched from
//! Stripe's API (`fetched`, rule 5), re-applied after the events.
//!
//! Everything here runs on a connection that may write: inside a writer closure ([`crate::store::writer::WriterHandle::run`])
//! while serving, or on the writer connection of a CLI command that holds the database lock. Events
//! are re-applied in arrival order (`seq`), which reproduces the decisions the writer took live;
//! because the projection converges under any order, the resulting mirror is the same either way.

use rusqlite::{params, Connection, OptionalExtension};

use super::{apply, fetched, input, Decision};
use crate::error::{Error, Result};
use crate::event::envelope;
use crate::time::now_ms;

/// Applies one stored event (its body as stored, its `seq`) and records the decision. A pruned
/// event (empty body, see `retention`) cannot be re-applied: it is skipped and keeps the decision
/// it was given when it arrived (retention never prunes the event an object's state comes from).
fn apply_stored(conn: &Connection, seq: i64, body: &[u8], now: i64) -> Result<Option<Decision>> {
    if body.is_empty() {
        return Ok(None);
    }
    let decision = match envelope::parse(body) {
        Ok(env) => apply(conn, &input(&env, body, seq), now)
            .map_err(|e| Error::sqlite(format!("project event {}", env.id), e))?,
        // A body that does not parse cannot be projected (the webhook refuses such bodies).
        Err(_) => Decision::NoObject,
    };
    conn.prepare_cached("UPDATE events SET decision = ?2 WHERE seq = ?1")
        .and_then(|mut s| s.execute(params![seq, decision.as_str()]))
        .map_err(|e| Error::sqlite("record decision", e))?;
    Ok(Some(decision))
}

/// Re-applies one stored event to the mirror and returns its decision. Idempotent: an event whose
/// state the mirror already holds changes nothing.
pub fn replay_event(conn: &Connection, event_id: &str) -> Result<Decision> {
    let row: Option<(i64, Vec<u8>)> = conn
        .query_row(
            "SELECT seq, body FROM events WHERE id = ?1",
            [event_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(|e| Error::sqlite("read event", e))?;
    let (seq, body) = row.ok_or_else(|| Error::NotFound {
        what: format!("replay {event_id}: no such event"),
    })?;
    match apply_stored(conn, seq, &body, now_ms())? {
        Some(decision) => Ok(decision),
        None => Err(Error::Pruned {
            event_id: event_id.to_owned(),
        }),
    }
}

/// Forgets one object and re-derives it from every event about it (and its fetched state);
/// returns how many events.
pub fn rebuild_object(conn: &Connection, object_id: &str) -> Result<usize> {
    conn.execute("DELETE FROM object_rows WHERE id = ?1", [object_id])
        .map_err(|e| Error::sqlite("forget object", e))?;
    let rows: Vec<(i64, Vec<u8>)> = {
        let mut stmt = conn
            .prepare("SELECT seq, body FROM events WHERE object_id = ?1 ORDER BY seq")
            .map_err(|e| Error::sqlite("read object events", e))?;
        let rows = stmt
            .query_map([object_id], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(|e| Error::sqlite("read object events", e))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(|e| Error::sqlite("read object events", e))?
    };
    let now = now_ms();
    for (seq, body) in &rows {
        apply_stored(conn, *seq, body, now)?;
    }
    fetched::reapply(conn, Some(object_id), now)
        .map_err(|e| Error::sqlite("re-apply fetched state", e))?;
    Ok(rows.len())
}

/// What a full rebuild did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RebuildStats {
    pub events: u64,
    pub objects: u64,
}

/// Empties the mirror and re-applies every event in arrival order, then every fetched state,
/// calling `progress(done, total)`
/// now and then. `commit_every` events, the transaction is committed and a new one begun, so a
/// large ledger neither holds one giant transaction nor loses all work if interrupted (running the
/// rebuild again finishes it). `conn` must not be inside a transaction.
pub fn rebuild_all(
    conn: &Connection,
    commit_every: u64,
    mut progress: impl FnMut(u64, u64),
) -> Result<RebuildStats> {
    let total: u64 = conn
        .query_row("SELECT COUNT(*) FROM events", [], |r| r.get::<_, i64>(0))
        .map_err(|e| Error::sqlite("count events", e))? as u64;
    let now = now_ms();
    let mut stats = RebuildStats::default();
    let mut after = i64::MIN;
    let mut tx = conn
        .unchecked_transaction()
        .map_err(|e| Error::sqlite("begin rebuild", e))?;
    tx.execute("DELETE FROM object_rows", [])
        .map_err(|e| Error::sqlite("empty objects", e))?;
    progress(0, total);
    loop {
        let batch: Vec<(i64, Vec<u8>)> = {
            let mut stmt = tx
                .prepare_cached(
                    "SELECT seq, body FROM events WHERE seq > ?1 ORDER BY seq LIMIT 1000",
                )
                .map_err(|e| Error::sqlite("read events", e))?;
            let rows = stmt
                .query_map([after], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(|e| Error::sqlite("read events", e))?;
            rows.collect::<rusqlite::Result<_>>()
                .map_err(|e| Error::sqlite("read events", e))?
        };
        let Some(last) = batch.last() else { break };
        after = last.0;
        for (seq, body) in &batch {
            apply_stored(&tx, *seq, body, now)?;
            stats.events += 1;
            if stats.events % commit_every.max(1) == 0 {
                tx.commit()
                    .map_err(|e| Error::sqlite("commit rebuild", e))?;
                tx = conn
                    .unchecked_transaction()
                    .map_err(|e| Error::sqlite("begin rebuild", e))?;
            }
        }
        progress(stats.events, total);
    }
    fetched::reapply(&tx, None, now).map_err(|e| Error::sqlite("re-apply fetched states", e))?;
    stats.objects = tx
        .query_row("SELECT COUNT(*) FROM objects", [], |r| r.get::<_, i64>(0))
        .map_err(|e| Error::sqlite("count objects", e))? as u64;
    tx.commit()
        .map_err(|e| Error::sqlite("commit rebuild", e))?;
    Ok(stats)
}

/// How the stored mirror compares with a fresh rebuild from `events`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MirrorCheck {
    pub objects: u64,
    /// Object ids whose stored row differs from (or is missing in) the rebuild, first few only.
    pub differing: Vec<String>,
    /// How many differ in all.
    pub differing_count: u64,
}

/// Rebuilds the mirror inside a savepoint, compares it with what was stored, and rolls the
/// rebuild back: a report that changes nothing. Needs a connection that may write (the lock held).
pub fn verify_mirror(conn: &Connection) -> Result<MirrorCheck> {
    let sql = |e| Error::sqlite("verify mirror", e);
    conn.execute_batch(
        "SAVEPOINT verify_mirror;
         CREATE TEMP TABLE mirror_before AS
             SELECT id, type, data, deleted, k_created, event_id, uncertain, source FROM objects;",
    )
    .map_err(sql)?;
    let result = (|| -> Result<MirrorCheck> {
        conn.execute("DELETE FROM object_rows", []).map_err(sql)?;
        let rows: Vec<(i64, Vec<u8>)> = {
            let mut stmt = conn
                .prepare("SELECT seq, body FROM events ORDER BY seq")
                .map_err(sql)?;
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(sql)?;
            rows.collect::<rusqlite::Result<_>>().map_err(sql)?
        };
        let now = now_ms();
        for (seq, body) in &rows {
            apply_stored(conn, *seq, body, now)?;
        }
        fetched::reapply(conn, None, now).map_err(sql)?;
        let cols = "id, type, data, deleted, k_created, event_id, uncertain, source";
        let diff_sql = format!(
            "SELECT id FROM (SELECT * FROM temp.mirror_before EXCEPT SELECT {cols} FROM main.objects)
             UNION
             SELECT id FROM (SELECT {cols} FROM main.objects EXCEPT SELECT * FROM temp.mirror_before)
             ORDER BY id"
        );
        let mut stmt = conn.prepare(&diff_sql).map_err(sql)?;
        let ids: Vec<String> = stmt
            .query_map([], |r| r.get(0))
            .map_err(sql)?
            .collect::<rusqlite::Result<_>>()
            .map_err(sql)?;
        let objects: i64 = conn
            .query_row("SELECT COUNT(*) FROM temp.mirror_before", [], |r| r.get(0))
            .map_err(sql)?;
        Ok(MirrorCheck {
            objects: objects as u64,
            differing_count: ids.len() as u64,
            differing: ids.into_iter().take(10).collect(),
        })
    })();
    conn.execute_batch("ROLLBACK TO verify_mirror; RELEASE verify_mirror; DROP TABLE IF EXISTS temp.mirror_before;")
        .map_err(sql)?;
    result
}
