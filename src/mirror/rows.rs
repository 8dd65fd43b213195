//! The SQL of the projection: the stored row as decisions need it, the row one write sets, and
//! the statements that read and write `objects` (and read a tied second's other events, and the
//! fetched state of that second).

use std::borrow::Cow;

use rusqlite::types::ValueRef;
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value;

use super::candidate::{candidate_from_body, Candidate, Text, MAX_TIE_EVENTS};
use super::lifecycle::Rank;
use super::shape::{livemode, Input, Kind, Shape};

/// The stored row, as far as decisions need it.
pub(super) struct Stored {
    pub(super) data: String,
    pub(super) k_created: Option<i64>,
    pub(super) k_seq: Option<i64>,
    pub(super) source: String,
    pub(super) event_id: Option<String>,
    pub(super) deleted: bool,
    pub(super) deleted_at: Option<i64>,
    pub(super) uncertain: bool,
    pub(super) account: Option<String>,
    pub(super) livemode: Option<bool>,
}

impl Stored {
    /// The stored state as a tie candidate, for when its event is not in `events`.
    pub(super) fn candidate(&self, otype: &str) -> Option<Candidate<'static>> {
        let data: Value = serde_json::from_str(&self.data).ok()?;
        // At its own second a delete always wins, so a tombstone of this second holds its state.
        let kind = match (self.deleted_at, self.k_created) {
            (Some(d), Some(k)) if d == k => Kind::Deleted,
            _ => Kind::Other,
        };
        Some(Candidate {
            event_id: self.event_id.clone(),
            seq: self.k_seq.unwrap_or(0),
            kind,
            rank: Rank::of(otype, "", kind, &data),
            data: Cow::Owned(data),
            text: Text::Object(Cow::Owned(self.data.clone())),
            prev: None,
            account: self.account.clone(),
            livemode: self.livemode,
            source: self.source.clone(),
            fetched: self.is_fetched(),
        })
    }

    /// The state came from Stripe's API (rule 5), not from an event.
    pub(super) fn is_fetched(&self) -> bool {
        self.source != "event"
    }
}

/// The columns one write sets.
pub(super) struct Row<'r> {
    pub(super) otype: &'r str,
    pub(super) account: Option<&'r str>,
    pub(super) livemode: Option<bool>,
    pub(super) data: &'r str,
    pub(super) k_created: Option<i64>,
    pub(super) k_rank: Option<i64>,
    pub(super) k_seq: Option<i64>,
    pub(super) source: &'r str,
    pub(super) event_id: Option<&'r str>,
    pub(super) uncertain: bool,
}

impl<'r> Row<'r> {
    /// The row that mirrors the event being applied.
    pub(super) fn of_event(
        input: &Input<'r>,
        shape: &Shape<'r>,
        object: &Value,
        raw: &'r str,
    ) -> Row<'r> {
        Row {
            otype: shape.otype,
            account: input.account,
            livemode: livemode(input.livemode, object),
            data: raw,
            k_created: Some(input.created),
            k_rank: Rank::of(shape.otype, input.event_type, shape.kind, object).status(),
            k_seq: Some(input.seq),
            source: "event",
            event_id: Some(input.event_id),
            uncertain: false,
        }
    }
}

pub(super) fn load(conn: &Connection, id: &str) -> rusqlite::Result<Option<Stored>> {
    let mut stmt = conn.prepare_cached(
        "SELECT data, k_created, k_seq, source, event_id, deleted, deleted_at, uncertain,
                account, livemode
         FROM objects WHERE id = ?1",
    )?;
    stmt.query_row([id], |r| {
        Ok(Stored {
            data: r.get(0)?,
            k_created: r.get(1)?,
            k_seq: r.get(2)?,
            source: r.get(3)?,
            event_id: r.get(4)?,
            deleted: r.get(5)?,
            deleted_at: r.get(6)?,
            uncertain: r.get(7)?,
            account: r.get(8)?,
            livemode: r.get(9)?,
        })
    })
    .optional()
}

/// Every other stored event about `object_id` created in `second`, as tie candidates; `None`
/// when there are more than [`MAX_TIE_EVENTS`] (then none is parsed).
pub(super) fn load_group(
    conn: &Connection,
    object_id: &str,
    second: i64,
    except_event: &str,
    otype: &str,
) -> rusqlite::Result<Option<Vec<Candidate<'static>>>> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, id, type, body FROM events
         WHERE object_id = ?1 AND created = ?2 AND id <> ?3 LIMIT ?4",
    )?;
    let limit = i64::try_from(MAX_TIE_EVENTS + 1).unwrap_or(i64::MAX);
    let rows = stmt
        .query_map(params![object_id, second, except_event, limit], |r| {
            let body = match r.get_ref(3)? {
                ValueRef::Blob(b) | ValueRef::Text(b) => b.to_vec(),
                _ => Vec::new(),
            };
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                body,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    if rows.len() > MAX_TIE_EVENTS {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(rows.len());
    for (seq, id, event_type, body) in rows {
        match candidate_from_body(seq, &id, &event_type, body, object_id, Some(otype)) {
            Some(c) => out.push(c),
            None => log::debug!("project: tie skips event event_id={id} object_id={object_id}"),
        }
    }
    Ok(Some(out))
}

pub(super) fn insert(
    conn: &Connection,
    id: &str,
    row: &Row,
    delete_at: Option<i64>,
    now_ms: i64,
) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO objects (id, type, account, livemode, data, k_created, k_rank, k_seq, source,
                              event_id, uncertain, deleted, deleted_at, first_seen, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12 IS NOT NULL, ?12, ?13, ?13)",
    )?;
    stmt.execute(params![
        id,
        row.otype,
        row.account,
        row.livemode,
        row.data,
        row.k_created,
        row.k_rank,
        row.k_seq,
        row.source,
        row.event_id,
        row.uncertain,
        delete_at,
        now_ms
    ])?;
    Ok(())
}

/// Replaces the state; `delete_at` (a delete event's second) sets the sticky tombstone.
pub(super) fn update(
    conn: &Connection,
    id: &str,
    row: &Row,
    delete_at: Option<i64>,
    now_ms: i64,
) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached(
        "UPDATE objects SET type = ?2, account = ?3, livemode = ?4, data = ?5, k_created = ?6,
                k_rank = ?7, k_seq = ?8, source = ?9, event_id = ?10, uncertain = ?11,
                deleted = CASE WHEN ?12 IS NULL THEN deleted ELSE 1 END,
                deleted_at = CASE WHEN ?12 IS NULL OR deleted_at >= ?12 THEN deleted_at ELSE ?12 END,
                updated_at = ?13
         WHERE id = ?1",
    )?;
    stmt.execute(params![
        id,
        row.otype,
        row.account,
        row.livemode,
        row.data,
        row.k_created,
        row.k_rank,
        row.k_seq,
        row.source,
        row.event_id,
        row.uncertain,
        delete_at,
        now_ms
    ])?;
    Ok(())
}

/// Sets the sticky tombstone without touching the state.
pub(super) fn mark_deleted(
    conn: &Connection,
    id: &str,
    stored: &Stored,
    at: i64,
    now_ms: i64,
) -> rusqlite::Result<()> {
    if stored.deleted && stored.deleted_at.is_some_and(|d| d >= at) {
        return Ok(());
    }
    let mut stmt = conn.prepare_cached(
        "UPDATE objects SET deleted = 1,
                deleted_at = CASE WHEN deleted_at >= ?2 THEN deleted_at ELSE ?2 END,
                updated_at = ?3
         WHERE id = ?1",
    )?;
    stmt.execute(params![id, at, now_ms])?;
    Ok(())
}

/// The fetched state of `object_id` whose fetch began in `second`, as a tie candidate.
pub(super) fn fetched_candidate(
    conn: &Connection,
    object_id: &str,
    second: i64,
    otype: &str,
) -> rusqlite::Result<Option<Candidate<'static>>> {
    let row = conn
        .prepare_cached(
            "SELECT after_seq, via, data, account, livemode FROM fetched
             WHERE object_id = ?1 AND data IS NOT NULL
               AND began_ms >= ?2 * 1000 AND began_ms < (?2 + 1) * 1000",
        )?
        .query_row(params![object_id, second], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                (r.get::<_, Option<String>>(3)?, r.get::<_, Option<bool>>(4)?),
            ))
        })
        .optional()?;
    let Some((seq, via, text, (account, livemode))) = row else {
        return Ok(None);
    };
    let Ok(data) = serde_json::from_str::<Value>(&text) else {
        return Ok(None);
    };
    Ok(Some(Candidate {
        event_id: None,
        seq,
        kind: Kind::Other,
        rank: Rank::of(otype, "", Kind::Other, &data),
        data: Cow::Owned(data),
        text: Text::Object(Cow::Owned(text)),
        prev: None,
        account,
        livemode,
        source: via,
        fetched: true,
    }))
}
