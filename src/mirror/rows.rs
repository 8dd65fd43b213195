//! The SQL of the projection: the stored row as decisions need it, the row one write sets, and
//! the statements that read and write `object_rows` (the table behind the `objects` view), and
//! read a tied second's other events and the fetched state of that second.
//!
//! A state that is one stored event's `data.object` is written as a reference to that text in the
//! event's body ([`BodySpan`]), not as a copy; only a state with no event body (a fetched one) is
//! written inline. The `objects` view puts the text back together for every reader.

use std::borrow::Cow;
use std::cell::OnceCell;
use std::sync::Arc;

use rusqlite::types::ValueRef;
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value;

use super::candidate::{Candidate, Parsed, Text, MAX_TIE_EVENTS};
use super::json_span::BodySpan;
use super::lifecycle::Rank;
use super::shape::{livemode, Input, Kind, Shape};
use super::tie_cache;

/// The stored row, as far as decisions need it. Its data is read only when a decision needs it
/// (a tie, or an event of the stored second): most events only compare seconds.
pub(super) struct Stored {
    /// The inline data, when the row has no body reference.
    inline: Option<String>,
    /// Where the data lies in an event body.
    pub(super) body: Option<BodySpan>,
    text: OnceCell<String>,
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
    /// The stored state's exact JSON text (read from the event body it refers to, once; from the
    /// writer's tie cache when it holds that event).
    pub(super) fn data(&self, conn: &Connection) -> rusqlite::Result<&str> {
        if let Some(text) = self.text.get() {
            return Ok(text);
        }
        let text = match (&self.inline, self.body) {
            (Some(inline), _) => inline.clone(),
            (None, Some(at)) => {
                let cached = self
                    .event_id
                    .as_deref()
                    .and_then(|id| tie_cache::body_text(at.seq, id, at.start, at.len));
                match cached {
                    Some(text) => text,
                    None => conn
                        .prepare_cached(
                            "SELECT CAST(substr(body, ?2 + 1, ?3) AS TEXT) FROM events WHERE seq = ?1",
                        )?
                        .query_row(params![at.seq, at.start as i64, at.len as i64], |r| {
                            r.get::<_, String>(0)
                        })?,
                }
            }
            (None, None) => String::new(),
        };
        Ok(self.text.get_or_init(|| text))
    }

    /// The stored state as a tie candidate, for when its event is not in `events`.
    pub(super) fn candidate(
        &self,
        conn: &Connection,
        otype: &str,
    ) -> rusqlite::Result<Option<Candidate<'static>>> {
        let text = self.data(conn)?.to_owned();
        let Ok(data) = serde_json::from_str::<Value>(&text) else {
            return Ok(None);
        };
        // At its own second a delete always wins, so a tombstone of this second holds its state.
        let kind = match (self.deleted_at, self.k_created) {
            (Some(d), Some(k)) if d == k => Kind::Deleted,
            _ => Kind::Other,
        };
        Ok(Some(Candidate {
            event_id: self.event_id.clone(),
            seq: self.k_seq.unwrap_or(0),
            kind,
            rank: Rank::of(otype, "", kind, &data),
            data: Cow::Owned(data),
            text: Text::Object(Cow::Owned(text)),
            span: self.body,
            prev: None,
            account: self.account.clone(),
            livemode: self.livemode,
            source: self.source.clone(),
            fetched: self.is_fetched(),
        }))
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
    /// The state's exact JSON text.
    pub(super) data: &'r str,
    /// Where `data` lies in an event body: written as this reference instead of a copy.
    pub(super) at: Option<BodySpan>,
    pub(super) k_created: Option<i64>,
    pub(super) k_rank: Option<i64>,
    pub(super) k_seq: Option<i64>,
    pub(super) source: &'r str,
    pub(super) event_id: Option<&'r str>,
    pub(super) uncertain: bool,
    /// The state's indexed keys, read from its parsed form (not by scanning `data` again).
    pub(super) keys: Keys,
}

/// The keys `object_rows` indexes for finding a state: its top-level `customer` (an id string)
/// and its `email`, lower-cased.
#[derive(Debug, Default)]
pub(super) struct Keys {
    customer: Option<String>,
    email: Option<String>,
}

impl Keys {
    pub(super) fn of(data: &Value) -> Keys {
        let text = |key| data.get(key).and_then(Value::as_str);
        Keys {
            customer: text("customer").map(str::to_owned),
            email: text("email").map(str::to_lowercase),
        }
    }
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
            at: input
                .object_span
                .filter(|(s, e)| e - s == raw.len())
                .map(|(start, end)| BodySpan {
                    seq: input.seq,
                    start,
                    len: end - start,
                }),
            k_created: Some(input.created),
            k_rank: Rank::of(shape.otype, input.event_type, shape.kind, object).status(),
            k_seq: Some(input.seq),
            source: "event",
            event_id: Some(input.event_id),
            uncertain: false,
            keys: Keys::of(object),
        }
    }
}

pub(super) fn load(conn: &Connection, id: &str) -> rusqlite::Result<Option<Stored>> {
    let mut stmt = conn.prepare_cached(
        "SELECT data, body_seq, data_start, data_len, k_created, k_seq, source, event_id, deleted,
                deleted_at, uncertain, account, livemode
         FROM object_rows WHERE id = ?1",
    )?;
    stmt.query_row([id], |r| {
        let body = match (
            r.get::<_, Option<i64>>(1)?,
            r.get::<_, Option<i64>>(2)?,
            r.get::<_, Option<i64>>(3)?,
        ) {
            (Some(seq), Some(start), Some(len)) => Some(BodySpan {
                seq,
                start: usize::try_from(start).unwrap_or(0),
                len: usize::try_from(len).unwrap_or(0),
            }),
            _ => None,
        };
        Ok(Stored {
            inline: r.get(0)?,
            body,
            text: OnceCell::new(),
            k_created: r.get(4)?,
            k_seq: r.get(5)?,
            source: r.get(6)?,
            event_id: r.get(7)?,
            deleted: r.get(8)?,
            deleted_at: r.get(9)?,
            uncertain: r.get(10)?,
            account: r.get(11)?,
            livemode: r.get(12)?,
        })
    })
    .optional()
}

/// Every other stored event about `object_id` created in `second`, parsed for a tie (read from
/// the writer's tie cache where it can be); `None` when there are more than [`MAX_TIE_EVENTS`]
/// (then none is read).
pub(super) fn load_group(
    conn: &Connection,
    object_id: &str,
    second: i64,
    except_event: &str,
) -> rusqlite::Result<Option<Vec<Arc<Parsed>>>> {
    // `length()` of a BLOB comes from the record header: the bodies themselves are read only for
    // the events the cache does not hold. The limit is written out, not bound: SQLite prepares a
    // statement again whenever a bound LIMIT is bound (measured: every run), which was a tenth of
    // the writer's time in a same-second burst.
    const _: () = assert!(MAX_TIE_EVENTS + 1 == 101);
    let mut stmt = conn.prepare_cached(
        "SELECT rowid, seq, id, type, length(body) FROM events
         WHERE object_id = ?1 AND created = ?2 AND id <> ?3 LIMIT 101",
    )?;
    let rows = stmt
        .query_map(params![object_id, second, except_event], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, i64>(4)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    if rows.len() > MAX_TIE_EVENTS {
        return Ok(None);
    }
    let mut body = conn.prepare_cached("SELECT body FROM events WHERE rowid = ?1")?;
    let mut out = Vec::with_capacity(rows.len());
    for (rowid, seq, id, event_type, len) in rows {
        let len = usize::try_from(len).unwrap_or(0);
        if let Some(hit) = tie_cache::get(seq, &id, len) {
            out.push(hit);
            continue;
        }
        let bytes = body.query_row([rowid], |r| {
            Ok(match r.get_ref(0)? {
                ValueRef::Blob(b) | ValueRef::Text(b) => b.to_vec(),
                _ => Vec::new(),
            })
        })?;
        let parsed = Arc::new(Parsed::new(seq, id, &event_type, bytes, object_id));
        tie_cache::put(&parsed);
        out.push(parsed);
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
        "INSERT INTO object_rows (id, type, account, livemode, data, body_seq, data_start, data_len,
                                  customer, email, k_created, k_rank, k_seq, source, event_id,
                                  uncertain, deleted, deleted_at, first_seen, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16,
                 ?17 IS NOT NULL, ?17, ?18, ?18)",
    )?;
    let (inline, seq, start, len, customer, email) = stored_form(row);
    stmt.execute(params![
        id,
        row.otype,
        row.account,
        row.livemode,
        inline,
        seq,
        start,
        len,
        customer,
        email,
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

/// Replaces the state; `delete_at` (a delete event's second) sets the sticky tombstone. The type
/// is not written again (an id never changes type), which spares its index a rewrite.
pub(super) fn update(
    conn: &Connection,
    id: &str,
    row: &Row,
    delete_at: Option<i64>,
    now_ms: i64,
) -> rusqlite::Result<()> {
    let (inline, seq, start, len, customer, email) = stored_form(row);
    // SQLite rewrites an index entry whenever its column is assigned, even to the value it
    // holds; most updates keep the customer and the email, so they leave those indexes alone
    // (measured on 2,000 random updates of a table with both indexes: 1,790 WAL frames against
    // 3,844 when they were assigned).
    let keys_unchanged = conn
        .prepare_cached("SELECT customer IS ?2 AND email IS ?3 FROM object_rows WHERE id = ?1")?
        .query_row(params![id, customer, email], |r| r.get::<_, bool>(0))
        .optional()?
        .unwrap_or(false);
    let mut stmt = conn.prepare_cached(if keys_unchanged {
        "UPDATE object_rows SET account = ?2, livemode = ?3, data = ?4, body_seq = ?5,
                data_start = ?6, data_len = ?7, k_created = ?10,
                k_rank = ?11, k_seq = ?12, source = ?13, event_id = ?14, uncertain = ?15,
                deleted = CASE WHEN ?16 IS NULL THEN deleted ELSE 1 END,
                deleted_at = CASE WHEN ?16 IS NULL OR deleted_at >= ?16 THEN deleted_at ELSE ?16 END,
                updated_at = ?17
         WHERE id = ?1"
    } else {
        "UPDATE object_rows SET account = ?2, livemode = ?3, data = ?4, body_seq = ?5,
                data_start = ?6, data_len = ?7, customer = ?8, email = ?9, k_created = ?10,
                k_rank = ?11, k_seq = ?12, source = ?13, event_id = ?14, uncertain = ?15,
                deleted = CASE WHEN ?16 IS NULL THEN deleted ELSE 1 END,
                deleted_at = CASE WHEN ?16 IS NULL OR deleted_at >= ?16 THEN deleted_at ELSE ?16 END,
                updated_at = ?17
         WHERE id = ?1"
    })?;
    stmt.execute(params![
        id,
        row.account,
        row.livemode,
        inline,
        seq,
        start,
        len,
        customer,
        email,
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

/// How a row's state is stored: inline data or a body reference, and the indexed keys.
type StoredForm<'r> = (
    Option<&'r str>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<&'r str>,
    Option<&'r str>,
);

fn stored_form<'r>(row: &'r Row<'r>) -> StoredForm<'r> {
    let customer = row.keys.customer.as_deref();
    let email = row.keys.email.as_deref();
    match row.at {
        Some(at) => (
            None,
            Some(at.seq),
            i64::try_from(at.start).ok(),
            i64::try_from(at.len).ok(),
            customer,
            email,
        ),
        None => (Some(row.data), None, None, None, customer, email),
    }
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
        "UPDATE object_rows SET deleted = 1,
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
        span: None,
        prev: None,
        account,
        livemode,
        source: via,
        fetched: true,
    }))
}
