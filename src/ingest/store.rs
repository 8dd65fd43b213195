//! The one function that stores an event: [`store_event`]. Every way an event enters the database
//! goes through it: the webhook (inside a writer closure), the bulk fills of the benchmarks and
//! the tests (on a locked writer connection), and the property tests of the mirror.
//!
//! In one transaction: a known id is a repeated delivery and only counts it; a new one is applied
//! to the mirror, inserted with the decision the mirror took, and queued for forwarding to every
//! destination that wants it (`Effects::forward`). A projection that fails
//! (a bug, a body the rules choke on) is rolled back alone, and the event is stored anyway with
//! decision `projection_failed`: the event is the ground truth and must never be lost for the
//! mirror's sake. The webhook runs it [`Guard::Unguarded`] first ([`store_event_with`]): then a
//! failing projection fails the call, the writer rolls the batch back and runs it again guarded,
//! and the rule above applies; what is committed is the same either way. `retention` re-inserts
//! pruned rows with a statement of its own, because it moves whole existing rows (rowid included)
//! rather than storing new events.

use std::sync::Arc;

use rusqlite::{params, Connection};

use crate::error::{Error, Result};
use crate::event::envelope::Envelope;
use crate::forward::queue::{enqueue, NewEvent};
use crate::forward::Routes;
use crate::mirror::fetched::{request_refetch, Reason, RefetchRequest};
use crate::mirror::{self, Decision, TieRule};
use crate::store::writer::{nested, Guard};

/// Where an event came from (stored in `events.source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Delivered by Stripe to the webhook endpoint.
    Webhook,
    /// Found by `reconcile` in Stripe's `/v1/events` list: the webhook never brought it.
    Reconcile,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Webhook => "webhook",
            Source::Reconcile => "reconcile",
        }
    }
}

/// An event on its way to disk.
#[derive(Debug, Clone)]
pub struct Ingest {
    pub envelope: Envelope,
    /// The raw body exactly as received.
    pub body: Vec<u8>,
    /// Which configured signing secret matched (`None` when none was checked).
    pub secret_index: Option<usize>,
    /// Unix milliseconds when it arrived.
    pub received_at_ms: i64,
    pub source: Source,
}

/// What storing a new event also does in the same transaction, beyond the mirror. `serve` sets it
/// up once from the config and hands it to every store; `Effects::default()` does nothing more,
/// which is what the bulk fills and most tests want. (The Stripe client's refetches hang off this
/// too.)
#[derive(Debug, Clone, Default)]
pub struct Effects {
    /// Forwarding: a delivery row for each destination that wants the event (no routes: none).
    pub forward: Arc<Routes>,
    /// When the mirror could not order an object's same-second events (`tie_resolved:last_arrival`,
    /// the row is `uncertain`), queue a refetch of the object (`refetch_jobs`, coalesced per
    /// object), due once that second is over. On when a Stripe API key is configured and
    /// `[stripe] refetch_uncertain` is true.
    pub refetch_uncertain: bool,
}

/// What storing an event did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A new row, at this arrival sequence number, with the mirror's decision.
    Stored { seq: i64, decision: Decision },
    /// The id was known; `deliveries` is the new delivery count.
    Duplicate { deliveries: i64 },
}

/// Stores one event on `conn`, which must be inside a transaction (a writer closure, or a bulk
/// fill holding the database lock). See the module doc for what it does.
pub fn store_event(conn: &Connection, event: &Ingest, effects: &Effects) -> Result<Outcome> {
    store_event_with(conn, event, effects, Guard::Guarded)
}

/// [`store_event`] as a [`WriterHandle::run_retryable`](crate::store::writer::WriterHandle::run_retryable)
/// closure runs it: [`Guard::Unguarded`] applies the mirror without the savepoint that would keep
/// a failing projection's writes apart, and fails instead (the writer then rolls back and runs it
/// again guarded, which stores the event with decision `projection_failed`).
pub fn store_event_with(
    conn: &Connection,
    event: &Ingest,
    effects: &Effects,
    guard: Guard,
) -> Result<Outcome> {
    let env = &event.envelope;

    // A known id is a repeated delivery: count it, change nothing else. (Not `RETURNING`: SQLite
    // builds a temporary b-tree for it on every run, found in the writer's profile; the count is
    // read back only for a repeat.)
    let count = |e| Error::sqlite(format!("count delivery of {}", env.id), e);
    let repeated = conn
        .prepare_cached(
            "UPDATE events SET deliveries = deliveries + 1, last_received_at = ?2 WHERE id = ?1",
        )
        .and_then(|mut stmt| stmt.execute(params![env.id, event.received_at_ms]))
        .map_err(count)?;
    if repeated > 0 {
        let deliveries = conn
            .prepare_cached("SELECT deliveries FROM events WHERE id = ?1")
            .and_then(|mut stmt| stmt.query_row([&env.id], |r| r.get(0)))
            .map_err(count)?;
        return Ok(Outcome::Duplicate { deliveries });
    }

    // Apply it to the mirror, in a savepoint of its own: if the projection fails, only its
    // writes are undone, and the event is stored regardless.
    let seq: i64 = conn
        .prepare_cached("SELECT COALESCE(MAX(seq), 0) + 1 FROM events")
        .and_then(|mut stmt| stmt.query_row([], |r| r.get(0)))
        .map_err(|e| Error::sqlite("read next event sequence", e))?;
    let input = mirror::input(env, &event.body, seq);
    let project = || {
        mirror::apply(conn, &input, event.received_at_ms)
            .map_err(|e| Error::sqlite(format!("project event {}", env.id), e))
    };
    let projected = match guard {
        Guard::Unguarded => Ok(project()?),
        Guard::Guarded => nested(conn, "project", project),
    };
    let decision = match projected {
        Ok(decision) => decision,
        Err(e) => {
            log::error!(
                "project event={}: {e}; stored with decision projection_failed",
                env.id
            );
            Decision::ProjectionFailed
        }
    };

    // Insert the raw event.
    conn.prepare_cached(
        "INSERT INTO events (id, seq, type, created, livemode, account, api_version, object_id,
            object_type, request_id, idempotency_key, thin, body, received_at, last_received_at,
            deliveries, secret_index, source, decision)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?14, 1, ?15, ?16, ?17)",
    )
    .and_then(|mut stmt| {
        stmt.execute(params![
            env.id,
            seq,
            env.event_type,
            env.created,
            env.livemode,
            env.account,
            env.api_version,
            env.object_id,
            env.object_type,
            env.request_id,
            env.idempotency_key,
            env.thin,
            event.body,
            event.received_at_ms,
            event.secret_index.map(|i| i as i64),
            event.source.as_str(),
            decision.as_str(),
        ])
    })
    .map_err(|e| Error::sqlite(format!("insert event {}", env.id), e))?;

    // Queue its deliveries to the app(s), in the same transaction: no event without them.
    if !effects.forward.is_empty() {
        enqueue(
            conn,
            &effects.forward,
            &NewEvent {
                event_id: &env.id,
                event_type: &env.event_type,
                object_id: env.object_id.as_deref(),
                created: env.created,
                seq,
                decision,
                received_at_ms: event.received_at_ms,
            },
        )?;
    }

    // An object whose second fell to the last arrival is fetched from Stripe, after that second.
    if effects.refetch_uncertain && decision == Decision::TieResolved(TieRule::LastArrival) {
        if let (Some(object_id), Some(object_type)) = (&env.object_id, &env.object_type) {
            let request = RefetchRequest {
                object_id,
                object_type,
                account: env.account.as_deref(),
                reason: Reason::Uncertain,
                not_before_ms: (env.created + 1) * 1000,
                now_ms: event.received_at_ms,
            };
            request_refetch(conn, &request)
                .map_err(|e| Error::sqlite(format!("queue refetch of {object_id}"), e))?;
        }
    }
    Ok(Outcome::Stored { seq, decision })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{envelope, testevent};
    use crate::store;

    fn ingest(event_type: &str, received_at_ms: i64) -> Ingest {
        let body =
            serde_json::to_vec(&testevent::build(event_type, 1_700_000_000).unwrap()).unwrap();
        Ingest {
            envelope: envelope::parse(&body).unwrap(),
            body,
            secret_index: Some(0),
            received_at_ms,
            source: Source::Webhook,
        }
    }

    #[test]
    fn stores_counts_duplicates_and_numbers_arrivals() {
        let conn = store::open_memory().unwrap();
        let first = ingest("customer.created", 1);
        let again = Ingest {
            received_at_ms: 2,
            ..first.clone()
        };
        assert_eq!(
            store_event(&conn, &first, &Effects::default()).unwrap(),
            Outcome::Stored {
                seq: 1,
                decision: Decision::Applied
            }
        );
        assert_eq!(
            store_event(&conn, &again, &Effects::default()).unwrap(),
            Outcome::Duplicate { deliveries: 2 }
        );
        assert!(matches!(
            store_event(&conn, &ingest("invoice.paid", 3), &Effects::default()).unwrap(),
            Outcome::Stored { seq: 2, .. }
        ));
        let (body, last, source): (Vec<u8>, i64, String) = conn
            .query_row(
                "SELECT body, last_received_at, source FROM events WHERE id = ?1",
                [&first.envelope.id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!(body, first.body, "the raw body, byte for byte");
        assert_eq!((last, source.as_str()), (2, "webhook"));
    }

    /// Stores a `customer.updated` of the fixture customer at one second, with `name` and
    /// (when `prev`) `previous_attributes` that follow no stored state.
    fn store_edit(conn: &Connection, name: &str, prev: bool, at: i64, effects: &Effects) {
        let mut event = testevent::build("customer.updated", 1_700_000_000).unwrap();
        event["data"]["object"]["name"] = name.into();
        if prev {
            event["data"]["previous_attributes"] = serde_json::json!({"name": "Z"});
        }
        let body = serde_json::to_vec(&event).unwrap();
        let ingest = Ingest {
            envelope: envelope::parse(&body).unwrap(),
            body,
            secret_index: None,
            received_at_ms: at,
            source: Source::Reconcile,
        };
        store_event(conn, &ingest, effects).unwrap();
    }

    #[test]
    fn an_uncertain_object_is_queued_for_a_refetch_once() {
        let conn = store::open_memory().unwrap();
        let effects = Effects {
            refetch_uncertain: true,
            ..Effects::default()
        };
        // Three edits of one customer in one second, none following another: each is decided by
        // arrival, and the three requests coalesce into one job, due after that second.
        for (i, name) in ["A", "B", "C"].into_iter().enumerate() {
            store_edit(&conn, name, true, i as i64, &effects);
        }
        let jobs: Vec<(String, String, i64, i64)> = conn
            .prepare("SELECT object_id, reason, not_before, requests FROM refetch_jobs")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        let id = testevent::fixture("customer").unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(
            jobs,
            [(id, "uncertain".to_owned(), 1_700_000_001_000, 2)],
            "the first edit was applied; the two ties made one job"
        );
        // Without the effect, nothing is queued.
        let conn = store::open_memory().unwrap();
        for (i, name) in ["A", "B"].into_iter().enumerate() {
            store_edit(&conn, name, false, i as i64, &Effects::default());
        }
        let n: i64 = conn
            .query_row("SELECT COUNT(*) FROM refetch_jobs", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0);
        let decision: String = conn
            .query_row(
                "SELECT decision FROM events ORDER BY seq DESC LIMIT 1",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(
            decision, "tie_resolved:last_arrival",
            "although it was uncertain"
        );
    }

    #[test]
    fn a_failing_projection_still_stores_the_event() {
        let conn = store::open_memory().unwrap();
        // The projection writes `objects`; make every write there fail.
        conn.execute_batch(
            "CREATE TRIGGER no_objects BEFORE INSERT ON object_rows
             BEGIN SELECT RAISE(ABORT, 'objects refused'); END;",
        )
        .unwrap();
        let event = ingest("customer.created", 1);
        assert_eq!(
            store_event(&conn, &event, &Effects::default()).unwrap(),
            Outcome::Stored {
                seq: 1,
                decision: Decision::ProjectionFailed
            }
        );
        let decision: String = conn
            .query_row("SELECT decision FROM events", [], |r| r.get(0))
            .unwrap();
        assert_eq!(decision, "projection_failed");
    }
}
