//! Rules 1-3 and 5 of the projection for one event: find the object an event carries, compare its
//! second with the stored one, and write the winner; a tie in the same second goes to [`super::ties`].
//! Runs inside the writer's open transaction: it never opens a connection, never commits and does
//! no other I/O.

use std::borrow::Cow;

use rusqlite::Connection;
use serde_json::Value;

use super::rows::{insert, load, mark_deleted, update, Row};
use super::ties::tie;
use super::Decision;
use crate::event::envelope::Envelope;
use crate::event::types::object_type_for_event;

/// One new event, as the writer thread hands it over.
pub struct Input<'a> {
    pub event_id: &'a str,
    /// For example `customer.subscription.updated`.
    pub event_type: &'a str,
    /// `event.created`, unix seconds.
    pub created: i64,
    /// Arrival order of this event in the events table (strictly increasing).
    pub seq: i64,
    pub account: Option<&'a str>,
    pub livemode: Option<bool>,
    /// `object == "v2.core.event"`: never projected.
    pub thin: bool,
    /// `event.data.object`, parsed.
    pub object: Option<&'a Value>,
    /// The exact JSON text of `event.data.object` (stored in `objects.data`); when `None`, the
    /// parsed object is serialised again ([`data_object_raw`] finds it in a body).
    pub object_raw: Option<&'a str>,
    pub previous_attributes: Option<&'a Value>,
}

/// Builds the projection's input for an event: its envelope, its raw body and its arrival `seq`.
pub fn input<'a>(env: &'a Envelope, body: &'a [u8], seq: i64) -> Input<'a> {
    Input {
        event_id: &env.id,
        event_type: &env.event_type,
        created: env.created,
        seq,
        account: env.account.as_deref(),
        livemode: env.livemode,
        thin: env.thin,
        object: env.object.as_ref(),
        object_raw: env.object_text(body),
        previous_attributes: env.previous_attributes.as_ref(),
    }
}

/// Applies one new event to `objects` and says what it did.
///
/// `conn` is the writer's open transaction; `now_ms` stamps `first_seen` and `updated_at`.
pub fn apply(conn: &Connection, input: &Input, now_ms: i64) -> rusqlite::Result<Decision> {
    // Find the object the event is about.
    let Some(object) = input.object.filter(|_| !input.thin) else {
        return Ok(Decision::NoObject);
    };
    let Some(shape) = classify(input.event_type, object) else {
        return Ok(Decision::NoObject);
    };
    let stored = load(conn, shape.id)?;
    let created = input.created;
    let delete_at = (shape.kind == Kind::Deleted).then_some(created);

    // A delete stub carries no state: it only marks the row deleted, or leaves a placeholder
    // (no `k_created`) that any real state replaces.
    if shape.stub {
        match &stored {
            Some(s) => mark_deleted(conn, shape.id, s, created, now_ms)?,
            None => {
                let raw = raw_text(input, object);
                let row = Row {
                    k_created: None,
                    k_rank: None,
                    ..Row::of_event(input, &shape, object, &raw)
                };
                insert(conn, shape.id, &row, delete_at, now_ms)?;
            }
        }
        return Ok(Decision::Tombstoned);
    }
    let applied = match shape.kind {
        Kind::Deleted => Decision::Tombstoned,
        _ => Decision::Applied,
    };

    // Decide by the second; only a tie needs the other events of that second.
    let Some(stored) = stored else {
        let raw = raw_text(input, object);
        insert(
            conn,
            shape.id,
            &Row::of_event(input, &shape, object, &raw),
            delete_at,
            now_ms,
        )?;
        return Ok(applied);
    };
    match stored.k_created {
        Some(k) if created < k => Ok(match shape.kind {
            Kind::Deleted => {
                mark_deleted(conn, shape.id, &stored, created, now_ms)?;
                Decision::Tombstoned
            }
            _ if stored.deleted => Decision::DeletedIgnored,
            Kind::Created => Decision::CreatedIgnored,
            Kind::Other => Decision::Stale,
        }),
        Some(k) if created == k => {
            // The mirrored state again (invoice.paid beside invoice.payment_succeeded, a resent
            // test event): it joins that state, which can only grow stronger, so only a delete or
            // an uncertain row needs the whole second decided again. Bursts stay cheap.
            let raw = raw_text(input, object);
            if shape.kind != Kind::Deleted && !stored.uncertain && *raw == *stored.data {
                if stored
                    .event_id
                    .as_deref()
                    .is_none_or(|id| input.event_id < id)
                {
                    let row = Row::of_event(input, &shape, object, &raw);
                    update(conn, shape.id, &row, None, now_ms)?;
                }
                return Ok(match shape.kind {
                    Kind::Created => Decision::CreatedIgnored,
                    _ => Decision::Unchanged,
                });
            }
            tie(conn, input, object, &shape, &stored, now_ms)
        }
        _ => {
            let raw = raw_text(input, object);
            update(
                conn,
                shape.id,
                &Row::of_event(input, &shape, object, &raw),
                delete_at,
                now_ms,
            )?;
            Ok(applied)
        }
    }
}

/// How an event type relates to its object's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Created,
    Deleted,
    Other,
}

impl Kind {
    pub(super) fn of(event_type: &str) -> Kind {
        if event_type.ends_with(".created") {
            Kind::Created
        } else if event_type.ends_with(".deleted") {
            Kind::Deleted
        } else {
            Kind::Other
        }
    }
}

/// What an event says about its object, before any state is compared.
pub(super) struct Shape<'v> {
    pub(super) id: &'v str,
    pub(super) otype: &'v str,
    pub(super) kind: Kind,
    /// `deleted: true`: a stub without state, accepted on delete events only.
    pub(super) stub: bool,
}

pub(super) fn classify<'v>(event_type: &'v str, object: &'v Value) -> Option<Shape<'v>> {
    let obj = object.as_object()?;
    let id = obj.get("id")?.as_str().filter(|id| !id.is_empty())?;
    let otype = match obj.get("object").and_then(Value::as_str) {
        Some(t) => t,
        None => object_type_for_event(event_type)?,
    };
    let kind = Kind::of(event_type);
    let stub = obj.get("deleted").and_then(Value::as_bool) == Some(true);
    if stub && kind != Kind::Deleted {
        return None;
    }
    Some(Shape {
        id,
        otype,
        kind,
        stub,
    })
}

pub(super) fn raw_text<'a>(input: &Input<'a>, object: &Value) -> Cow<'a, str> {
    match input.object_raw {
        Some(raw) => Cow::Borrowed(raw),
        None => Cow::Owned(object.to_string()),
    }
}

pub(super) fn livemode(event: Option<bool>, object: &Value) -> Option<bool> {
    event.or_else(|| object.get("livemode").and_then(Value::as_bool))
}
