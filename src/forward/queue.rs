//! The `deliveries` table as a queue: making the rows for a new event (in the transaction that
//! stores it), the order within a lane, which row heads it, and putting rows back to `pending`
//! (redeliver, the admin's retry, and the one-event back-fill). SQL on a connection that is inside
//! a transaction (a writer closure, or a command that holds the database lock); no other I/O.
//!
//! # Lanes and order
//! A *lane* is what leaves one at a time and in order: the event's object, or the event alone when
//! it names none. Within a lane (per destination) rows leave in ordering-key order:
//! `(k_created, k_tie, k_seq)`, the event's `created` second, then the mirror's own order of the
//! states of that second ([`crate::mirror::order_of_second`], recomputed for the lane's waiting rows
//! whenever another event of the same object and second arrives), then arrival. The first
//! `pending` or `in_flight` row of a lane is its *head* (`head = 1`, kept by [`relead`] whenever
//! a lane's rows change); only a head may be claimed, so a delivery waiting for its retry holds
//! back the later ones of its object and no other. `done` and `dead` rows are out of the lane:
//! a dead-lettered delivery does not block what follows it.

use rusqlite::{params, Connection, OptionalExtension};

use crate::error::{Error, Result};
use crate::forward::route::Routes;
use crate::mirror::{order_of_second, Decision, SecondEvent};

/// Beyond this many events about one object in one second, their order is not computed: they
/// leave in arrival order (the mirror's own bound on a tied second, for the same reason).
const MAX_TIE_EVENTS: i64 = 100;

/// The SQL test for a row that is in its lane (waiting or under way). Written out the same way in
/// every statement, because SQLite uses a partial index only for a query that repeats its
/// condition.
pub const ACTIVE: &str = "state IN ('pending', 'in_flight')";

/// A delivery's state (`deliveries.state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Waiting: for its settle delay, its retry, or the row before it in its lane.
    Pending,
    /// Claimed by a sender under a lease (or by a process that died: due again once it expires).
    InFlight,
    /// The app answered 2xx, and that is committed.
    Done,
    /// Dead-lettered: a 4xx other than 408/409/425/429, or retried past `retry_for`.
    Dead,
}

impl State {
    pub const ALL: [State; 4] = [State::Pending, State::InFlight, State::Done, State::Dead];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::InFlight => "in_flight",
            State::Done => "done",
            State::Dead => "dead",
        }
    }

    pub fn parse(text: &str) -> Option<State> {
        State::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// A new event, as [`enqueue`] needs it.
#[derive(Debug, Clone, Copy)]
pub struct NewEvent<'a> {
    pub event_id: &'a str,
    pub event_type: &'a str,
    pub object_id: Option<&'a str>,
    pub created: i64,
    pub seq: i64,
    pub decision: Decision,
    pub received_at_ms: i64,
}

/// The lane of an event: its object, or the event itself.
pub fn lane<'a>(object_id: Option<&'a str>, event_id: &'a str) -> &'a str {
    object_id.filter(|o| !o.is_empty()).unwrap_or(event_id)
}

/// Makes the deliveries of a new event, one per destination that wants it, due after that
/// destination's settle delay, and tells each destination's dispatcher when. Runs in the
/// transaction that stores the event (`store_event`), after its `events` row is in.
pub fn enqueue(conn: &Connection, routes: &Routes, ev: &NewEvent) -> Result<()> {
    let sql = |e| Error::sqlite(format!("queue deliveries of {}", ev.event_id), e);
    let lane = lane(ev.object_id, ev.event_id);
    let mut ties: Option<Vec<(i64, i64)>> = None;
    for route in routes
        .list
        .iter()
        .filter(|r| r.wants(ev.event_type, ev.decision))
    {
        let due = ev.received_at_ms.saturating_add(route.settle_ms);
        // Usually the lane is empty (its object's earlier deliveries are done): the new row heads
        // it, and there is nothing to order.
        let alone = !lane_busy(conn, &route.name, lane)?;
        conn.prepare_cached(
            "INSERT INTO deliveries (event_id, destination, object_id, lane, k_created, k_seq,
                 created_at, retry_from, next_attempt_at, head)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, ?8, ?9)",
        )
        .and_then(|mut s| {
            s.execute(params![
                ev.event_id,
                route.name,
                ev.object_id,
                lane,
                ev.created,
                ev.seq,
                ev.received_at_ms,
                due,
                alone
            ])
        })
        .map_err(sql)?;
        if !alone {
            // Other waiting rows of this object in the same second: order them as the mirror does.
            if ev.object_id.is_some()
                && same_second_waiting(conn, &route.name, lane, ev.created)? > 1
            {
                if ties.is_none() {
                    ties = Some(tie_order(conn, lane, ev.created)?);
                }
                for (seq, tie) in ties.iter().flatten() {
                    conn.prepare_cached(&format!(
                        "UPDATE deliveries SET k_tie = ?1
                         WHERE k_seq = ?2 AND destination = ?3 AND {ACTIVE} AND k_tie <> ?1"
                    ))
                    .and_then(|mut s| s.execute(params![tie, seq, route.name]))
                    .map_err(sql)?;
                }
            }
            relead(conn, &route.name, lane)?;
        }
        route.signal.due_at(due);
    }
    Ok(())
}

/// Whether a lane has a waiting or under-way row.
fn lane_busy(conn: &Connection, destination: &str, lane: &str) -> Result<bool> {
    conn.prepare_cached(&format!(
        "SELECT 1 FROM deliveries WHERE destination = ?1 AND lane = ?2 AND {ACTIVE} LIMIT 1"
    ))
    .and_then(|mut s| {
        s.query_row(params![destination, lane], |_| Ok(()))
            .optional()
    })
    .map(|found| found.is_some())
    .map_err(|e| Error::sqlite("look at a lane", e))
}

/// Waiting rows of a lane in one second.
fn same_second_waiting(
    conn: &Connection,
    destination: &str,
    lane: &str,
    second: i64,
) -> Result<i64> {
    conn.prepare_cached(&format!(
        "SELECT COUNT(*) FROM deliveries
         WHERE destination = ?1 AND lane = ?2 AND {ACTIVE} AND k_created = ?3"
    ))
    .and_then(|mut s| s.query_row(params![destination, lane, second], |r| r.get(0)))
    .map_err(|e| Error::sqlite("count a lane's second", e))
}

/// The mirror's order of every stored event about `object_id` in `second`: (the event's `seq`,
/// position). Empty when there are too many to order (they then go by arrival).
pub fn tie_order(conn: &Connection, object_id: &str, second: i64) -> Result<Vec<(i64, i64)>> {
    let sql = |e| Error::sqlite(format!("order the events of {object_id} at {second}"), e);
    // A literal limit: a bound one makes SQLite prepare the statement again on every run.
    const _: () = assert!(MAX_TIE_EVENTS + 1 == 101);
    let rows: Vec<(String, String, i64, Vec<u8>)> = conn
        .prepare_cached(
            "SELECT id, type, seq, body FROM events WHERE object_id = ?1 AND created = ?2 LIMIT 101",
        )
        .and_then(|mut s| {
            s.query_map(params![object_id, second], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })?
            .collect()
        })
        .map_err(sql)?;
    if rows.len() as i64 > MAX_TIE_EVENTS {
        return Ok(Vec::new());
    }
    let events: Vec<SecondEvent> = rows
        .iter()
        .map(|(id, event_type, seq, body)| SecondEvent {
            event_id: id,
            event_type,
            seq: *seq,
            body,
        })
        .collect();
    Ok(order_of_second(object_id, &events)
        .into_iter()
        .enumerate()
        .map(|(position, i)| (rows[i].2, position as i64))
        .collect())
}

/// Marks the first waiting or under-way row of a lane as its head, and no other. Touches at most
/// the old head and the new one.
pub fn relead(conn: &Connection, destination: &str, lane: &str) -> Result<()> {
    let sql = |e| Error::sqlite(format!("find the head of lane {lane} to {destination}"), e);
    let head: Option<i64> = conn
        .prepare_cached(&format!(
            "SELECT id FROM deliveries WHERE destination = ?1 AND lane = ?2 AND {ACTIVE}
             ORDER BY k_created, k_tie, k_seq LIMIT 1"
        ))
        .and_then(|mut s| {
            s.query_row(params![destination, lane], |r| r.get(0))
                .optional()
        })
        .map_err(sql)?;
    conn.prepare_cached(&format!(
        "UPDATE deliveries SET head = 0
         WHERE destination = ?1 AND lane = ?2 AND {ACTIVE} AND head = 1 AND id IS NOT ?3"
    ))
    .and_then(|mut s| s.execute(params![destination, lane, head]))
    .map_err(sql)?;
    if let Some(id) = head {
        conn.prepare_cached("UPDATE deliveries SET head = 1 WHERE id = ?1 AND head = 0")
            .and_then(|mut s| s.execute([id]))
            .map_err(sql)?;
    }
    Ok(())
}

/// Why a delivery whose destination left the config is dead (shown on the admin page).
pub const NOT_CONFIGURED: &str = "destination no longer in the config";

/// Deliveries waiting for (or under way to) a destination that is not in `configured` any more
/// are never sent: marks them `dead`, so that they show as such, a redeliver can send them to a
/// destination that is configured, and putting the block back and retrying brings them back.
/// Returns how many per destination.
pub fn retire_unconfigured(
    conn: &Connection,
    configured: &[String],
    now_ms: i64,
) -> Result<Vec<(String, i64)>> {
    let sql = |e| Error::sqlite("retire deliveries of removed destinations", e);
    let configured = serde_json::to_string(configured).expect("a list of strings is JSON");
    let not_configured = "destination NOT IN (SELECT value FROM json_each(?1))";
    let counts: Vec<(String, i64)> = conn
        .prepare(&format!(
            "SELECT destination, count(*) FROM deliveries
             WHERE {ACTIVE} AND {not_configured} GROUP BY destination ORDER BY destination"
        ))
        .and_then(|mut s| {
            s.query_map([&configured], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect()
        })
        .map_err(sql)?;
    if !counts.is_empty() {
        conn.execute(
            &format!(
                "UPDATE deliveries SET state = 'dead', head = 0, next_attempt_at = ?2,
                     last_error = ?3, lease_owner = NULL, lease_expires_at = NULL
                 WHERE {ACTIVE} AND {not_configured}"
            ),
            params![configured, now_ms, NOT_CONFIGURED],
        )
        .map_err(sql)?;
    }
    Ok(counts)
}

/// What a redeliver did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Redelivered {
    /// Rows put back to `pending`.
    pub requeued: u64,
    /// Rows made for a destination the event had none for (a back-fill asked for by name).
    pub created: u64,
}

/// Puts the `done` and `dead` deliveries of one event back to `pending`, due now and with a fresh
/// retry budget (of every destination, or of `destination` only). Rows pending or in flight are
/// left as they are (they are on their way). With a `destination` the event has no row for, a
/// row is made (a back-fill of one event for a destination added later). Fails with `NotFound`
/// when there is no such event.
pub fn redeliver_event(
    conn: &Connection,
    routes: &Routes,
    event_id: &str,
    destination: Option<&str>,
    now_ms: i64,
) -> Result<Redelivered> {
    let sql = |e| Error::sqlite(format!("redeliver {event_id}"), e);
    let event: Option<(String, Option<String>, i64, i64)> = conn
        .prepare_cached("SELECT type, object_id, created, seq FROM events WHERE id = ?1")
        .and_then(|mut s| {
            s.query_row([event_id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .optional()
        })
        .map_err(sql)?;
    let Some((_, object_id, created, seq)) = event else {
        return Err(Error::NotFound {
            what: format!("event {event_id}: no such event"),
        });
    };
    let mut done = Redelivered {
        requeued: requeue_found(
            conn,
            "SELECT id, destination, lane FROM deliveries
             WHERE k_seq = ?1 AND (?2 IS NULL OR destination = ?2) AND state IN ('done', 'dead')",
            params![seq, destination],
            now_ms,
        )?,
        created: 0,
    };
    if let Some(dest) = destination {
        let exists: bool = conn
            .prepare_cached("SELECT 1 FROM deliveries WHERE k_seq = ?1 AND destination = ?2")
            .and_then(|mut s| s.query_row(params![seq, dest], |_| Ok(())).optional())
            .map_err(sql)?
            .is_some();
        if !exists {
            if routes.get(dest).is_none() {
                return Err(Error::NotFound {
                    what: format!("destination {dest:?}: no [[forward]] block has this name"),
                });
            }
            let lane = lane(object_id.as_deref(), event_id);
            conn.prepare_cached(
                "INSERT INTO deliveries (event_id, destination, object_id, lane, k_created, k_seq,
                     created_at, retry_from, next_attempt_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, ?7)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    event_id, dest, object_id, lane, created, seq, now_ms
                ])
            })
            .map_err(sql)?;
            relead(conn, dest, lane)?;
            done.created += 1;
        }
    }
    Ok(done)
}

/// Puts one delivery back to `pending` if it is `done` or `dead`; false when it is not (no such
/// row, or it is already waiting or under way).
pub fn redeliver_one(conn: &Connection, id: i64, now_ms: i64) -> Result<bool> {
    let n = requeue_found(
        conn,
        "SELECT id, destination, lane FROM deliveries WHERE id = ?1 AND state IN ('done', 'dead')",
        [id],
        now_ms,
    )?;
    Ok(n == 1)
}

/// Puts up to `limit` dead deliveries (of one destination, or all) back to `pending`; returns how
/// many. Callers repeat it until it returns less than `limit`, so that the writer is never held
/// long, however many there are.
pub fn redeliver_dead(
    conn: &Connection,
    destination: Option<&str>,
    limit: i64,
    now_ms: i64,
) -> Result<u64> {
    requeue_found(
        conn,
        "SELECT id, destination, lane FROM deliveries
         WHERE state = 'dead' AND (?1 IS NULL OR destination = ?1) ORDER BY id LIMIT ?2",
        params![destination, limit],
        now_ms,
    )
}

/// Puts back to `pending` every row `select` finds (a query of `id, destination, lane`), and
/// re-leads each of their lanes; returns how many.
fn requeue_found(
    conn: &Connection,
    select: &str,
    args: impl rusqlite::Params,
    now_ms: i64,
) -> Result<u64> {
    let sql = |e| Error::sqlite("find deliveries to put back", e);
    let rows: Vec<(i64, String, String)> = conn
        .prepare_cached(select)
        .and_then(|mut s| {
            s.query_map(args, |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect()
        })
        .map_err(sql)?;
    for (id, dest, lane) in &rows {
        requeue(conn, *id, now_ms)?;
        relead(conn, dest, lane)?;
    }
    Ok(rows.len() as u64)
}

fn requeue(conn: &Connection, id: i64, now_ms: i64) -> Result<()> {
    conn.prepare_cached(
        "UPDATE deliveries SET state = 'pending', next_attempt_at = ?2, retry_from = ?2,
             lease_owner = NULL, lease_expires_at = NULL, delivered_at = NULL
         WHERE id = ?1",
    )
    .and_then(|mut s| s.execute(params![id, now_ms]))
    .map_err(|e| Error::sqlite(format!("requeue delivery {id}"), e))?;
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::forward::{Forward, Stale};
    use crate::store;

    pub(crate) fn routes(names: &[&str], settle_ms: u64) -> Routes {
        Routes::from_config(
            &names
                .iter()
                .map(|n| Forward {
                    name: n.to_string(),
                    url: "http://127.0.0.1:9/".into(),
                    secret: Some("whsec_x".into()),
                    settle_ms,
                    stale: Stale::Skip,
                    ..Forward::default()
                })
                .collect::<Vec<_>>(),
        )
    }

    /// Stores a minimal event row and queues it, as `store_event` does.
    pub(crate) fn add(
        conn: &Connection,
        routes: &Routes,
        id: &str,
        object: Option<&str>,
        created: i64,
        at_ms: i64,
    ) {
        add_typed(
            conn,
            routes,
            id,
            "customer.updated",
            object,
            created,
            at_ms,
            Decision::Applied,
            None,
        )
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn add_typed(
        conn: &Connection,
        routes: &Routes,
        id: &str,
        event_type: &str,
        object: Option<&str>,
        created: i64,
        at_ms: i64,
        decision: Decision,
        body: Option<serde_json::Value>,
    ) {
        let seq: i64 = conn
            .query_row("SELECT COALESCE(MAX(seq), 0) + 1 FROM events", [], |r| {
                r.get(0)
            })
            .unwrap();
        let body = body.unwrap_or_else(|| serde_json::json!({ "id": id, "type": event_type }));
        conn.execute(
            "INSERT INTO events (id, seq, type, created, object_id, body, received_at, last_received_at, decision)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, ?8)",
            params![id, seq, event_type, created, object, serde_json::to_vec(&body).unwrap(), at_ms, decision.as_str()],
        )
        .unwrap();
        enqueue(
            conn,
            routes,
            &NewEvent {
                event_id: id,
                event_type,
                object_id: object,
                created,
                seq,
                decision,
                received_at_ms: at_ms,
            },
        )
        .unwrap();
    }

    /// `(event_id, state, head)` of a destination's rows, in id order.
    pub(crate) fn rows(conn: &Connection, dest: &str) -> Vec<(String, String, bool)> {
        conn.prepare(
            "SELECT event_id, state, head FROM deliveries WHERE destination = ?1 ORDER BY id",
        )
        .unwrap()
        .query_map([dest], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
    }

    fn heads(conn: &Connection, dest: &str) -> Vec<String> {
        rows(conn, dest)
            .into_iter()
            .filter(|r| r.2)
            .map(|r| r.0)
            .collect()
    }

    #[test]
    fn rows_of_a_destination_gone_from_the_config_are_dead_and_can_come_back() {
        let conn = store::open_memory().unwrap();
        let routes = routes(&["app", "old"], 0);
        add(&conn, &routes, "evt_1", Some("cus_1"), 100, 1_000);
        add(&conn, &routes, "evt_2", Some("cus_1"), 101, 1_000);
        conn.execute(
            "UPDATE deliveries SET state = 'done', head = 0 WHERE event_id = 'evt_1' AND destination = 'old'",
            [],
        )
        .unwrap();
        relead(&conn, "old", "cus_1").unwrap();

        let retired = retire_unconfigured(&conn, &["app".to_string()], 5_000).unwrap();
        assert_eq!(retired, [("old".to_string(), 1)]);
        let dead = |id: &str| ("evt_".to_string() + id, "dead".to_string(), false);
        let done = ("evt_1".to_string(), "done".to_string(), false);
        assert_eq!(rows(&conn, "old"), [done.clone(), dead("2")]);
        let error: String = conn
            .query_row(
                "SELECT last_error FROM deliveries WHERE destination = 'old' AND state = 'dead'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(error, NOT_CONFIGURED);
        // The configured destination is untouched, and a second start finds nothing to do.
        assert_eq!(
            rows(&conn, "app")
                .iter()
                .filter(|r| r.1 == "pending")
                .count(),
            2
        );
        assert!(retire_unconfigured(&conn, &["app".to_string()], 6_000)
            .unwrap()
            .is_empty());
        // With no destination configured at all, every waiting row is retired.
        assert_eq!(
            retire_unconfigured(&conn, &[], 7_000).unwrap(),
            [("app".to_string(), 2)]
        );
        // The block is back: a retry of the dead rows sends them there again.
        redeliver_dead(&conn, Some("old"), 100, 8_000).unwrap();
        assert_eq!(rows(&conn, "old")[1].1, "pending");
    }

    #[test]
    fn one_row_per_destination_that_wants_it_and_stale_skip() {
        let conn = store::open_memory().unwrap();
        let mut routes = routes(&["app", "crm"], 2000);
        routes.list[1].patterns = vec!["invoice.*".into()];
        add(&conn, &routes, "evt_1", Some("cus_1"), 100, 1_000);
        assert_eq!(rows(&conn, "app").len(), 1);
        assert!(rows(&conn, "crm").is_empty(), "crm takes invoices only");
        let due: i64 = conn
            .query_row("SELECT next_attempt_at FROM deliveries", [], |r| r.get(0))
            .unwrap();
        assert_eq!(due, 3_000, "due after the settle delay");
        // stale = "skip": a stale event gets no row.
        add_typed(
            &conn,
            &routes,
            "evt_2",
            "customer.updated",
            Some("cus_1"),
            50,
            2_000,
            Decision::Stale,
            None,
        );
        assert_eq!(rows(&conn, "app").len(), 1);
    }

    #[test]
    fn the_head_is_the_first_waiting_row_of_each_lane() {
        let conn = store::open_memory().unwrap();
        let routes = routes(&["app"], 0);
        add(&conn, &routes, "evt_b2", Some("cus_b"), 102, 1);
        add(&conn, &routes, "evt_a1", Some("cus_a"), 101, 2);
        add(&conn, &routes, "evt_b1", Some("cus_b"), 101, 3); // older, arrived later
        add(&conn, &routes, "evt_none1", None, 100, 4); // no object: a lane of its own
        add(&conn, &routes, "evt_none2", None, 99, 5);
        assert_eq!(
            heads(&conn, "app"),
            ["evt_a1", "evt_b1", "evt_none1", "evt_none2"]
        );
        // Done and dead rows leave the lane; the next becomes head.
        conn.execute(
            "UPDATE deliveries SET state = 'dead', head = 0 WHERE event_id = 'evt_b1'",
            [],
        )
        .unwrap();
        relead(&conn, "app", "cus_b").unwrap();
        assert_eq!(
            heads(&conn, "app"),
            ["evt_b2", "evt_a1", "evt_none1", "evt_none2"]
        );
    }

    #[test]
    fn a_second_is_ordered_as_the_mirror_orders_it() {
        let conn = store::open_memory().unwrap();
        let routes = routes(&["app"], 0);
        let pi = |status: &str, t: &str| {
            Some(serde_json::json!({ "id": "x", "type": t, "created": 100,
                "data": { "object": { "id": "pi_1", "object": "payment_intent", "status": status } } }))
        };
        // Arrival: succeeded, created, processing, all in second 100.
        for (id, t, status) in [
            ("evt_s", "payment_intent.succeeded", "succeeded"),
            ("evt_c", "payment_intent.created", "requires_payment_method"),
            ("evt_p", "payment_intent.processing", "processing"),
        ] {
            add_typed(
                &conn,
                &routes,
                id,
                t,
                Some("pi_1"),
                100,
                1,
                Decision::Applied,
                pi(status, t),
            );
        }
        let order: Vec<String> = conn
            .prepare("SELECT event_id FROM deliveries ORDER BY k_created, k_tie, k_seq")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(order, ["evt_c", "evt_p", "evt_s"]);
        assert_eq!(heads(&conn, "app"), ["evt_c"]);
    }

    #[test]
    fn retention_keeps_the_body_of_an_event_a_delivery_still_needs() {
        let conn = store::open_memory().unwrap();
        let r = routes(&["app"], 0);
        add(&conn, &r, "evt_sent", Some("cus_1"), 100, 1);
        add(&conn, &r, "evt_waiting", Some("cus_2"), 100, 2);
        add(&conn, &r, "evt_dead", Some("cus_3"), 100, 3);
        conn.execute_batch(
            "UPDATE deliveries SET state = 'done', head = 0 WHERE k_seq = 1;
             UPDATE deliveries SET state = 'dead', head = 0 WHERE k_seq = 3;",
        )
        .unwrap();
        // All three are old enough; only the one whose delivery is done may lose its body.
        let (due, _) = crate::ops::retention::survey(&conn, 1_000).unwrap();
        assert_eq!(due, 1);
    }

    #[test]
    fn redeliver_requeues_done_and_dead_and_back_fills_one_event() {
        let conn = store::open_memory().unwrap();
        let two = routes(&["app", "crm"], 0);
        let one = routes(&["app"], 0);
        add(&conn, &one, "evt_1", Some("cus_1"), 100, 1);
        add(&conn, &one, "evt_2", Some("cus_1"), 101, 2);
        conn.execute(
            "UPDATE deliveries SET state = 'dead', head = 0 WHERE event_id = 'evt_1'",
            [],
        )
        .unwrap();
        relead(&conn, "app", "cus_1").unwrap();
        assert_eq!(heads(&conn, "app"), ["evt_2"]);
        // Back to pending: it heads its lane again, due now.
        let r = redeliver_event(&conn, &two, "evt_1", None, 500).unwrap();
        assert_eq!(
            r,
            Redelivered {
                requeued: 1,
                created: 0
            }
        );
        assert_eq!(heads(&conn, "app"), ["evt_1"]);
        // Pending rows are left alone.
        assert_eq!(
            redeliver_event(&conn, &two, "evt_1", None, 600)
                .unwrap()
                .requeued,
            0
        );
        // A destination added later: one event back-filled by name.
        let r = redeliver_event(&conn, &two, "evt_2", Some("crm"), 700).unwrap();
        assert_eq!(
            r,
            Redelivered {
                requeued: 0,
                created: 1
            }
        );
        assert_eq!(heads(&conn, "crm"), ["evt_2"]);
        assert!(matches!(
            redeliver_event(&conn, &two, "evt_2", Some("nope"), 700),
            Err(Error::NotFound { .. })
        ));
        assert!(matches!(
            redeliver_event(&conn, &two, "evt_missing", None, 700),
            Err(Error::NotFound { .. })
        ));
        // All dead ones, in batches.
        conn.execute("UPDATE deliveries SET state = 'dead', head = 0", [])
            .unwrap();
        assert_eq!(redeliver_dead(&conn, Some("app"), 1, 800).unwrap(), 1);
        assert_eq!(redeliver_dead(&conn, None, 10, 800).unwrap(), 2);
        assert_eq!(redeliver_dead(&conn, None, 10, 800).unwrap(), 0);
        assert_eq!(heads(&conn, "app"), ["evt_1"]);
        assert!(!redeliver_one(&conn, 1, 900).unwrap(), "already pending");
    }
}
