//! The reads of the mirror that the admin pages, the read API and the CLI share: one object's row,
//! the history of events about an object, and the quick consistency check. Reads only; any
//! connection will do (a pooled reader, a read-only one, the writer's).

use rusqlite::{Connection, OptionalExtension, Row};

use crate::error::{Error, Result};

/// The object types with a typed view in `schema.sql` (object type, view): the types the mirror
/// holds in full, which `backfill` lists.
pub const TYPED_VIEWS: &[(&str, &str)] = &[
    ("product", "products"),
    ("price", "prices"),
    ("customer", "customers"),
    ("subscription", "subscriptions"),
    ("invoice", "invoices"),
    ("payment_intent", "payment_intents"),
    ("charge", "charges"),
    ("refund", "refunds"),
    ("checkout.session", "checkout_sessions"),
];

/// The columns of [`ObjectRow`], in the order [`ObjectRow::from_row`] reads them: for a query of
/// one's own (the API's filtered list) that wants whole rows.
pub const OBJECT_COLUMNS: &str = "id, type, account, livemode, data, k_created, source, event_id, \
                                  deleted, deleted_at, uncertain, first_seen, updated_at";

/// One mirrored object, as `objects` holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectRow {
    pub id: String,
    pub object_type: String,
    pub account: Option<String>,
    pub livemode: Option<bool>,
    /// The object's JSON as of the event (or fetch) that won.
    pub data: String,
    /// The second of the state held (`None` for a placeholder left by a delete stub).
    pub k_created: Option<i64>,
    /// `event` or `refetch`.
    pub source: String,
    /// The event whose state is held.
    pub event_id: Option<String>,
    pub deleted: bool,
    pub deleted_at: Option<i64>,
    pub uncertain: bool,
    /// Unix ms.
    pub first_seen: i64,
    /// Unix ms.
    pub updated_at: i64,
}

impl ObjectRow {
    /// Reads a row selected with [`OBJECT_COLUMNS`].
    pub fn from_row(r: &Row) -> rusqlite::Result<ObjectRow> {
        Ok(ObjectRow {
            id: r.get(0)?,
            object_type: r.get(1)?,
            account: r.get(2)?,
            livemode: r.get(3)?,
            data: r.get(4)?,
            k_created: r.get(5)?,
            source: r.get(6)?,
            event_id: r.get(7)?,
            deleted: r.get(8)?,
            deleted_at: r.get(9)?,
            uncertain: r.get(10)?,
            first_seen: r.get(11)?,
            updated_at: r.get(12)?,
        })
    }
}

/// The mirrored object `id`, if there is one.
pub fn object(conn: &Connection, id: &str) -> Result<Option<ObjectRow>> {
    conn.prepare_cached(&format!(
        "SELECT {OBJECT_COLUMNS} FROM objects WHERE id = ?1"
    ))
    .and_then(|mut stmt| stmt.query_row([id], ObjectRow::from_row).optional())
    .map_err(|e| Error::sqlite(format!("read object {id}"), e))
}

/// The columns of [`EventRow`], in the order [`EventRow::from_row`] reads them.
pub const EVENT_COLUMNS: &str =
    "seq, id, type, created, received_at, deliveries, object_id, decision";

/// One stored event, as lists show it (without its body).
#[derive(Debug, Clone, PartialEq)]
pub struct EventRow {
    pub seq: i64,
    pub id: String,
    pub event_type: String,
    /// `event.created`, unix seconds.
    pub created: i64,
    /// Unix ms of the first delivery.
    pub received_at: i64,
    pub deliveries: i64,
    pub object_id: Option<String>,
    /// As stored (`None`: not projected yet).
    pub decision: Option<String>,
}

impl EventRow {
    /// Reads a row selected with [`EVENT_COLUMNS`] (and possibly more columns after them).
    pub fn from_row(r: &Row) -> rusqlite::Result<EventRow> {
        Ok(EventRow {
            seq: r.get(0)?,
            id: r.get(1)?,
            event_type: r.get(2)?,
            created: r.get(3)?,
            received_at: r.get(4)?,
            deliveries: r.get(5)?,
            object_id: r.get(6)?,
            decision: r.get(7)?,
        })
    }
}

/// Which end of an object's history to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// By event time, then arrival: the story as it happened.
    OldestFirst,
    /// The most recent first.
    NewestFirst,
}

/// The stored events about `object_id` (through the `events_object` index), at most `limit`.
pub fn history(
    conn: &Connection,
    object_id: &str,
    order: Order,
    limit: usize,
) -> Result<Vec<EventRow>> {
    let dir = match order {
        Order::OldestFirst => "ASC",
        Order::NewestFirst => "DESC",
    };
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM events INDEXED BY events_object WHERE object_id = ?1
         ORDER BY created {dir}, seq {dir} LIMIT ?2"
    );
    let what = || format!("read the events about {object_id}");
    let mut stmt = conn
        .prepare_cached(&sql)
        .map_err(|e| Error::sqlite(what(), e))?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = stmt
        .query_map(rusqlite::params![object_id, limit], EventRow::from_row)
        .map_err(|e| Error::sqlite(what(), e))?;
    rows.collect::<rusqlite::Result<_>>()
        .map_err(|e| Error::sqlite(what(), e))
}

/// A quick structural check of the mirror: the problems found, none when it is sound.
///
/// `check`, `backup` (on the copy) and `restore` (on the input) call this on the database they
/// verify. It reads only; `check` also compares the mirror with a full rebuild
/// ([`super::replay::verify_mirror`]), which re-projects every event and would make a backup take
/// minutes.
pub fn mirror_problems(conn: &Connection) -> Result<Vec<String>> {
    // Every mirrored object names the stored event whose state it holds.
    let orphans: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM objects o WHERE o.event_id IS NOT NULL
             AND NOT EXISTS (SELECT 1 FROM events e WHERE e.id = o.event_id)",
            [],
            |r| r.get(0),
        )
        .map_err(|e| Error::sqlite("check the mirror's events", e))?;
    Ok(if orphans == 0 {
        Vec::new()
    } else {
        vec![format!(
            "{orphans} mirrored objects name an event that is not stored"
        )]
    })
}
