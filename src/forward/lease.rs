//! Leases: claiming due deliveries and writing an attempt's outcome, as writer closures.
//!
//! A claim takes the due heads of one destination's lanes (see [`super::queue`]) whose lane has no
//! live lease, marks each `in_flight` under a lease (`lease_owner`, `lease_expires_at`), counts the
//! attempt, and returns them; it commits before anything is sent. An in-flight row's
//! `next_attempt_at` is its lease's expiry, so a row whose process died is simply due again once
//! the lease runs out, through the same index as every pending row, and no lane is ever blocked
//! longer than that. The outcome ([`finish`]) records the attempt, moves the row on (`done`,
//! `dead`, or `pending` until its retry) and releases the lease in one step; it changes the row
//! only while the lease is still this sender's, so a late outcome never overwrites a newer claim.
//! Both are small: a claim touches a handful of rows, so the writer is never held long.

use rusqlite::{params, Connection, OptionalExtension};

use crate::error::{Error, Result};
use crate::forward::queue::{relead, ACTIVE};
use crate::forward::schedule::Class;

/// A delivery claimed for one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    pub id: i64,
    pub event_id: String,
    pub object_id: Option<String>,
    /// This attempt's number (1 for the first).
    pub attempt: i64,
    /// When its retry budget started (unix ms).
    pub retry_from: i64,
    pub owner: String,
    pub lease_expires_at: i64,
}

/// What a claim returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claim {
    pub claimed: Vec<Claimed>,
    /// The earliest time a head not yet due becomes due (unix ms), if any.
    pub next_due: Option<i64>,
}

/// Claims up to `owners.len()` due deliveries of `destination`, the i-th under lease owner
/// `owners[i]`, leased until `now_ms + lease_ms`. Oldest due first.
pub fn claim(
    conn: &Connection,
    destination: &str,
    owners: &[String],
    now_ms: i64,
    lease_ms: i64,
) -> Result<Claim> {
    let sql = |e| Error::sqlite(format!("claim deliveries to {destination}"), e);
    // The due heads, through `deliveries_due`; a lane is skipped while any of its rows is under a
    // live lease (a row that arrived during an attempt may head the lane and must still wait).
    let due: Vec<i64> = conn
        .prepare_cached(&due_heads_sql())
        .and_then(|mut s| {
            s.query_map(params![destination, now_ms, owners.len() as i64], |r| {
                r.get(0)
            })?
            .collect()
        })
        .map_err(sql)?;
    let expires = now_ms.saturating_add(lease_ms);
    let mut claimed = Vec::with_capacity(due.len());
    for (id, owner) in due.into_iter().zip(owners) {
        let row = conn
            .prepare_cached(
                "UPDATE deliveries SET state = 'in_flight', attempts = attempts + 1,
                     lease_owner = ?2, lease_expires_at = ?3, next_attempt_at = ?3
                 WHERE id = ?1
                 RETURNING event_id, object_id, attempts, retry_from",
            )
            .and_then(|mut s| {
                s.query_row(params![id, owner, expires], |r| {
                    Ok(Claimed {
                        id,
                        event_id: r.get(0)?,
                        object_id: r.get(1)?,
                        attempt: r.get(2)?,
                        retry_from: r.get(3)?,
                        owner: owner.clone(),
                        lease_expires_at: expires,
                    })
                })
            })
            .map_err(sql)?;
        claimed.push(row);
    }
    let next_due: Option<i64> = conn
        .prepare_cached(
            "SELECT MIN(next_attempt_at) FROM deliveries
             WHERE destination = ?1 AND head = 1 AND next_attempt_at > ?2",
        )
        .and_then(|mut s| s.query_row(params![destination, now_ms], |r| r.get(0)))
        .map_err(sql)?;
    Ok(Claim { claimed, next_due })
}

/// The due heads of destination `?1` at `?2` whose lane has no live lease, oldest due first, at
/// most `?3`.
fn due_heads_sql() -> String {
    format!(
        "SELECT d.id FROM deliveries d
         WHERE d.destination = ?1 AND d.head = 1 AND d.next_attempt_at <= ?2
           AND NOT EXISTS (
               SELECT 1 FROM deliveries o
               WHERE o.destination = d.destination AND o.lane = d.lane AND o.{ACTIVE}
                 AND o.state = 'in_flight' AND o.next_attempt_at > ?2)
         ORDER BY d.next_attempt_at, d.id LIMIT ?3"
    )
}

/// One attempt's outcome, as [`finish`] writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub id: i64,
    pub owner: String,
    pub attempt: i64,
    /// Unix ms the attempt began, and how long it took.
    pub started_at: i64,
    pub latency_ms: i64,
    /// The HTTP status, when there was an answer.
    pub status: Option<u16>,
    /// A short reason (never a secret); `None` for a 2xx.
    pub error: Option<String>,
    pub class: Class,
    /// For [`Class::Retry`]: when the next attempt goes.
    pub retry_at: Option<i64>,
}

/// Records an attempt and moves its delivery on, releasing the lease. Returns false when the
/// lease was no longer this sender's (it expired and the row was claimed again): the attempt is
/// still recorded, the row is left to its new holder.
pub fn finish(conn: &Connection, o: &Outcome, now_ms: i64) -> Result<bool> {
    let sql = |e| {
        Error::sqlite(
            format!("record attempt {} of delivery {}", o.attempt, o.id),
            e,
        )
    };
    conn.prepare_cached(
        "INSERT OR REPLACE INTO delivery_attempts
             (delivery_id, attempt, started_at, latency_ms, status, outcome, error)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .and_then(|mut s| {
        s.execute(params![
            o.id,
            o.attempt,
            o.started_at,
            o.latency_ms,
            o.status,
            o.class.as_str(),
            o.error
        ])
    })
    .map_err(sql)?;
    let (state, next) = match o.class {
        Class::Done => ("done", now_ms),
        Class::Dead => ("dead", now_ms),
        Class::Retry => ("pending", o.retry_at.unwrap_or(now_ms)),
    };
    let moved: Option<(String, String)> = conn
        .prepare_cached(
            "UPDATE deliveries SET state = ?3, next_attempt_at = ?4, last_status = ?5,
                 last_error = ?6, lease_owner = NULL, lease_expires_at = NULL,
                 delivered_at = CASE WHEN ?3 = 'done' THEN ?7 ELSE delivered_at END,
                 head = CASE WHEN ?3 = 'pending' THEN head ELSE 0 END
             WHERE id = ?1 AND lease_owner = ?2 AND state = 'in_flight'
             RETURNING destination, lane",
        )
        .and_then(|mut s| {
            s.query_row(
                params![o.id, o.owner, state, next, o.status, o.error, now_ms],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
        })
        .map_err(sql)?;
    match moved {
        Some((destination, lane)) => {
            if o.class != Class::Retry {
                relead(conn, &destination, &lane)?;
            }
            Ok(true)
        }
        None => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::queue::tests::{add, routes, rows};
    use crate::store;

    fn owners(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("p.{i}")).collect()
    }

    fn ids(c: &Claim) -> Vec<&str> {
        c.claimed.iter().map(|c| c.event_id.as_str()).collect()
    }

    fn outcome(c: &Claimed, class: Class, retry_at: Option<i64>) -> Outcome {
        Outcome {
            id: c.id,
            owner: c.owner.clone(),
            attempt: c.attempt,
            started_at: 0,
            latency_ms: 3,
            status: Some(match class {
                Class::Done => 200,
                Class::Retry => 503,
                Class::Dead => 400,
            }),
            error: None,
            class,
            retry_at,
        }
    }

    #[test]
    fn the_next_due_delivery_per_object_one_at_a_time() {
        let conn = store::open_memory().unwrap();
        let r = routes(&["app"], 1000);
        // Two objects, two events each, plus one event about nothing; arrivals at 0..4 ms.
        add(&conn, &r, "evt_a2", Some("cus_a"), 102, 0);
        add(&conn, &r, "evt_a1", Some("cus_a"), 101, 1);
        add(&conn, &r, "evt_b1", Some("cus_b"), 101, 2);
        add(&conn, &r, "evt_b2", Some("cus_b"), 105, 3);
        add(&conn, &r, "evt_n", None, 100, 4);
        // Nothing is due before the settle delay; it says when something is.
        let c = claim(&conn, "app", &owners(8), 999, 5000).unwrap();
        assert!(c.claimed.is_empty());
        assert_eq!(
            c.next_due,
            Some(1001),
            "evt_a1 arrived at 1 ms, settles 1 s"
        );
        // Then one per lane, the oldest of each, however many slots there are.
        let c = claim(&conn, "app", &owners(8), 2000, 5000).unwrap();
        assert_eq!(ids(&c), ["evt_a1", "evt_b1", "evt_n"]);
        assert_eq!(c.claimed[0].attempt, 1);
        assert_eq!(c.claimed[0].owner, "p.0");
        // With the lanes under lease, nothing more, even for a later arrival in the same lane.
        add(&conn, &r, "evt_a0", Some("cus_a"), 90, 5);
        assert!(claim(&conn, "app", &owners(8), 2000, 5000)
            .unwrap()
            .claimed
            .is_empty());
        // evt_a1 done: the lane's next is the late, older evt_a0; evt_b1 fails and waits for its
        // retry, holding back evt_b2 but not cus_a.
        let a1 = c.claimed[0].clone();
        let b1 = c.claimed[1].clone();
        assert!(finish(&conn, &outcome(&a1, Class::Done, None), 2100).unwrap());
        assert!(finish(&conn, &outcome(&b1, Class::Retry, Some(9000)), 2100).unwrap());
        let c = claim(&conn, "app", &owners(8), 2200, 5000).unwrap();
        assert_eq!(ids(&c), ["evt_a0"]);
        assert_eq!(
            c.next_due,
            Some(7000),
            "the other live lease (evt_n) runs out first"
        );
        assert!(finish(&conn, &outcome(&c.claimed[0], Class::Done, None), 2300).unwrap());
        // At 9000: cus_a's last row (due since 1000), evt_n again (its sender never answered and
        // its lease ran out at 7000) and evt_b1's retry, oldest due first; evt_b2 still waits.
        let c = claim(&conn, "app", &owners(8), 9000, 5000).unwrap();
        assert_eq!(ids(&c), ["evt_a2", "evt_n", "evt_b1"]);
        assert_eq!((c.claimed[1].attempt, c.claimed[2].attempt), (2, 2));
        let c = Claim {
            claimed: vec![c.claimed[2].clone()],
            next_due: None,
        };
        // Dead does not block the lane.
        assert!(finish(&conn, &outcome(&c.claimed[0], Class::Dead, None), 9100).unwrap());
        let c = claim(&conn, "app", &owners(8), 9200, 5000).unwrap();
        assert_eq!(ids(&c), ["evt_b2"]);
        let states: Vec<(String, String)> =
            rows(&conn, "app").into_iter().map(|r| (r.0, r.1)).collect();
        assert!(
            states.contains(&("evt_b1".into(), "dead".into())),
            "{states:?}"
        );
        assert!(
            states.contains(&("evt_a1".into(), "done".into())),
            "{states:?}"
        );
    }

    #[test]
    fn an_expired_lease_is_due_again_and_a_late_outcome_changes_nothing() {
        let conn = store::open_memory().unwrap();
        let r = routes(&["app"], 0);
        add(&conn, &r, "evt_1", Some("cus_1"), 100, 0);
        let first = claim(&conn, "app", &owners(1), 10, 1000)
            .unwrap()
            .claimed
            .remove(0);
        assert!(claim(&conn, "app", &owners(1), 1009, 1000)
            .unwrap()
            .claimed
            .is_empty());
        // The process died: at expiry the row is claimed again, attempt 2, by someone else.
        let again = claim(&conn, "app", &["q.0".to_string()], 1010, 1000)
            .unwrap()
            .claimed
            .remove(0);
        assert_eq!((again.attempt, again.owner.as_str()), (2, "q.0"));
        // The first sender's late answer is recorded as its attempt but moves nothing.
        assert!(!finish(&conn, &outcome(&first, Class::Done, None), 1100).unwrap());
        assert_eq!(rows(&conn, "app")[0].1, "in_flight");
        assert!(finish(&conn, &outcome(&again, Class::Done, None), 1200).unwrap());
        let (state, owner, attempts): (String, Option<String>, i64) = conn
            .query_row(
                "SELECT state, lease_owner, (SELECT COUNT(*) FROM delivery_attempts) FROM deliveries",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!((state.as_str(), owner, attempts), ("done", None, 2));
    }

    #[test]
    fn claims_and_heads_use_their_indexes() {
        let conn = store::open_memory().unwrap();
        let plan = |sql: &str| -> String {
            conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .unwrap()
                .query_map(params!["app", 0i64, 8i64], |r| r.get::<_, String>(3))
                .unwrap()
                .collect::<rusqlite::Result<Vec<_>>>()
                .unwrap()
                .join("\n")
        };
        let due = plan(&due_heads_sql());
        // The heads by due time; the live-lease test probes a lane's rows or the (few) rows in
        // flight, whichever the planner prefers: never a scan.
        assert!(due.contains("deliveries_due"), "{due}");
        assert!(!due.contains("SCAN"), "{due}");
        let head = plan(&format!(
            "SELECT id FROM deliveries WHERE destination = ?1 AND lane = ?2 AND {ACTIVE}
             ORDER BY k_created, k_tie, k_seq LIMIT ?3"
        ));
        assert!(
            head.contains("deliveries_lane") && !head.contains("TEMP B-TREE"),
            "{head}"
        );
    }
}
