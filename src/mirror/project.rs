//! Rules 1-3 and 5 of the projection for one event: find the object an event carries, compare its
//! second with the stored one, and write the winner; a tie in the same second goes to
//! `ties.rs`.
//! Runs inside the writer's open transaction: it never opens a connection, never commits and does
//! no other I/O.

use rusqlite::Connection;

use super::rows::{insert, load, mark_deleted, update, Row};
use super::shape::{classify, raw_text, whole_object, Input, Kind};
use super::ties::tie;
use super::Decision;

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
            Kind::Other | Kind::Final => Decision::Stale,
        }),
        Some(k) if created == k => {
            // The mirrored state again (invoice.paid beside invoice.payment_succeeded, a resent
            // test event): it joins that state, which can only grow stronger, so only a delete or
            // an uncertain row needs the whole second decided again. Bursts stay cheap.
            let raw = raw_text(input, object);
            if shape.kind != Kind::Deleted && !stored.uncertain && *raw == *stored.data(conn)? {
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
            tie(
                conn,
                input,
                whole_object(input, object),
                &shape,
                &stored,
                now_ms,
            )
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
