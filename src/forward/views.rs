//! The deliveries as people look at them: the list by destination and state (newest first,
//! keyset-paginated), one event's deliveries with every attempt, and the counts the dashboard,
//! `/metrics` and `stripe-inbox deliveries` show. Read-only queries, each an index range
//! (`deliveries_state`, the `(k_seq, destination)` key, the attempts' primary key), never a
//! scan of the table; shared by the admin pages and the CLI so that both say the same thing.

use rusqlite::{params, Connection};

use crate::error::{Error, Result};
use crate::forward::queue::State;

/// One delivery, as a list row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub id: i64,
    pub event_id: String,
    /// The event's type (`None` if the event row is gone).
    pub event_type: Option<String>,
    pub destination: String,
    pub object_id: Option<String>,
    pub state: String,
    pub attempts: i64,
    pub next_attempt_at: i64,
    pub last_status: Option<i64>,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub delivered_at: Option<i64>,
    pub lease_owner: Option<String>,
}

/// One attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub attempt: i64,
    pub started_at: i64,
    pub latency_ms: i64,
    pub status: Option<i64>,
    pub outcome: String,
    pub error: Option<String>,
}

/// What a list shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub destination: Option<String>,
    pub state: Option<State>,
    /// Rows older than this id (keyset pagination, newest first).
    pub before: Option<i64>,
}

const COLUMNS: &str = "d.id, d.event_id, e.type, d.destination, d.object_id, d.state, d.attempts,
    d.next_attempt_at, d.last_status, d.last_error, d.created_at, d.delivered_at, d.lease_owner";

fn row(r: &rusqlite::Row) -> rusqlite::Result<Row> {
    Ok(Row {
        id: r.get(0)?,
        event_id: r.get(1)?,
        event_type: r.get(2)?,
        destination: r.get(3)?,
        object_id: r.get(4)?,
        state: r.get(5)?,
        attempts: r.get(6)?,
        next_attempt_at: r.get(7)?,
        last_status: r.get(8)?,
        last_error: r.get(9)?,
        created_at: r.get(10)?,
        delivered_at: r.get(11)?,
        lease_owner: r.get(12)?,
    })
}

/// Up to `limit` deliveries, newest first, and whether there are older ones.
///
/// With a state, the walk is `deliveries_state` (state, destination, id); `done` without a
/// destination (almost every row) walks the table backwards instead, as does no state at all.
pub fn list(conn: &Connection, filter: &Filter, limit: usize) -> Result<(Vec<Row>, bool)> {
    // The state is our own constant, written into the SQL so that the planner sees it.
    let state = filter.state.map(|s| s.as_str());
    let by_index = match (state, &filter.destination) {
        (Some("done"), None) | (None, _) => false,
        (Some(_), _) => true,
    };
    let state_term = match state {
        Some(s) if by_index => format!("d.state = '{s}'"),
        // `+` keeps the planner off the state index where the table walk is the faster way.
        Some(s) => format!("+d.state = '{s}'"),
        None => "1".to_string(),
    };
    let destination_term = if filter.destination.is_some() {
        "d.destination = ?1"
    } else {
        "?1 IS NULL"
    };
    let sql = format!(
        "SELECT {COLUMNS} FROM deliveries d LEFT JOIN events e ON e.id = d.event_id
         WHERE {state_term} AND {destination_term} AND d.id < ?2
         ORDER BY d.id DESC LIMIT ?3"
    );
    let mut rows: Vec<Row> = conn
        .prepare_cached(&sql)
        .and_then(|mut s| {
            s.query_map(
                params![
                    filter.destination,
                    filter.before.unwrap_or(i64::MAX),
                    (limit + 1) as i64
                ],
                row,
            )?
            .collect()
        })
        .map_err(|e| Error::sqlite("list deliveries", e))?;
    let more = rows.len() > limit;
    rows.truncate(limit);
    Ok((rows, more))
}

/// The same filter, with the destination filled in when the state is pending, in flight or dead
/// and only one destination has rows in that state (as `counts` says): then the list is one range
/// of `deliveries_state` instead of a sort of every row in that state.
pub fn narrow(filter: &Filter, counts: &[Counts]) -> Filter {
    let mut out = filter.clone();
    if out.destination.is_some() {
        return out;
    }
    let n = |c: &Counts| match filter.state {
        Some(State::Pending) => c.pending,
        Some(State::InFlight) => c.in_flight,
        Some(State::Dead) => c.dead,
        _ => 0,
    };
    let mut with = counts.iter().filter(|c| n(c) > 0);
    if let (Some(only), None) = (with.next(), with.next()) {
        out.destination = Some(only.destination.clone());
    }
    out
}

/// One event's deliveries, each with every attempt (oldest first).
pub fn for_event(conn: &Connection, event_id: &str) -> Result<Vec<(Row, Vec<Attempt>)>> {
    let sql = |e| Error::sqlite(format!("read the deliveries of {event_id}"), e);
    let rows: Vec<Row> = conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM deliveries d LEFT JOIN events e ON e.id = d.event_id
             WHERE d.k_seq = (SELECT seq FROM events WHERE id = ?1) ORDER BY d.destination"
        ))
        .and_then(|mut s| s.query_map([event_id], row)?.collect())
        .map_err(sql)?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let attempts = attempts(conn, r.id)?;
        out.push((r, attempts));
    }
    Ok(out)
}

/// Every attempt of one delivery, oldest first.
pub fn attempts(conn: &Connection, delivery_id: i64) -> Result<Vec<Attempt>> {
    conn.prepare_cached(
        "SELECT attempt, started_at, latency_ms, status, outcome, error FROM delivery_attempts
         WHERE delivery_id = ?1 ORDER BY attempt",
    )
    .and_then(|mut s| {
        s.query_map([delivery_id], |r| {
            Ok(Attempt {
                attempt: r.get(0)?,
                started_at: r.get(1)?,
                latency_ms: r.get(2)?,
                status: r.get(3)?,
                outcome: r.get(4)?,
                error: r.get(5)?,
            })
        })?
        .collect()
    })
    .map_err(|e| Error::sqlite(format!("read the attempts of delivery {delivery_id}"), e))
}

/// How one destination's deliveries stand.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    pub destination: String,
    pub pending: i64,
    pub in_flight: i64,
    pub dead: i64,
    /// Arrival (unix ms) of the oldest delivery not done yet (pending or in flight).
    pub oldest_waiting_ms: Option<i64>,
}

/// The counts of every destination that has rows (and of `also`, the configured ones, even
/// without rows), by name. Each figure is a range of `deliveries_state`.
pub fn counts(conn: &Connection, also: &[&str]) -> Result<Vec<Counts>> {
    let sql = |e| Error::sqlite("count deliveries", e);
    let mut names: Vec<String> = also.iter().map(|s| s.to_string()).collect();
    let found: Vec<String> = conn
        .prepare_cached(
            "SELECT DISTINCT destination FROM deliveries
             WHERE state IN ('pending', 'in_flight', 'dead')",
        )
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .map_err(sql)?;
    for n in found {
        if !names.contains(&n) {
            names.push(n);
        }
    }
    names.iter().map(|name| counts_of(conn, name)).collect()
}

/// One destination's counts: a few ranges of `deliveries_state`.
pub fn counts_of(conn: &Connection, destination: &str) -> Result<Counts> {
    let sql = |e| Error::sqlite(format!("count deliveries to {destination}"), e);
    let count = |state: &str| -> Result<i64> {
        conn.prepare_cached(&format!(
            "SELECT COUNT(*) FROM deliveries WHERE state = '{state}' AND destination = ?1"
        ))
        .and_then(|mut s| s.query_row([destination], |r| r.get(0)))
        .map_err(sql)
    };
    // The oldest row of a state is its first in id order (ids grow with arrival).
    let oldest = |state: &str| -> Result<Option<i64>> {
        conn.prepare_cached(&format!(
            "SELECT MIN(created_at) FROM (SELECT created_at FROM deliveries
             WHERE state = '{state}' AND destination = ?1 ORDER BY id LIMIT 1)"
        ))
        .and_then(|mut s| s.query_row([destination], |r| r.get(0)))
        .map_err(sql)
    };
    Ok(Counts {
        destination: destination.to_string(),
        pending: count("pending")?,
        in_flight: count("in_flight")?,
        dead: count("dead")?,
        oldest_waiting_ms: [oldest("pending")?, oldest("in_flight")?]
            .into_iter()
            .flatten()
            .min(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::queue::tests::{add, routes};
    use crate::store;

    #[test]
    fn lists_newest_first_by_state_and_destination_with_keyset_pages() {
        let conn = store::open_memory().unwrap();
        let r = routes(&["app", "crm"], 0);
        for i in 0..7 {
            add(
                &conn,
                &r,
                &format!("evt_{i}"),
                Some(&format!("cus_{i}")),
                100 + i,
                i,
            );
        }
        conn.execute(
            "UPDATE deliveries SET state = 'dead', head = 0 WHERE id % 3 = 0",
            [],
        )
        .unwrap();
        let all = Filter::default();
        let (page, more) = list(&conn, &all, 5).unwrap();
        assert!(more);
        assert_eq!(
            page.iter().map(|r| r.id).collect::<Vec<_>>(),
            [14, 13, 12, 11, 10]
        );
        let (rest, more) = list(
            &conn,
            &Filter {
                before: Some(10),
                ..all.clone()
            },
            50,
        )
        .unwrap();
        assert!(!more);
        assert_eq!(rest.len(), 9);
        let dead_app = Filter {
            destination: Some("app".into()),
            state: Some(State::Dead),
            before: None,
        };
        let (dead, _) = list(&conn, &dead_app, 50).unwrap();
        assert!(dead
            .iter()
            .all(|r| r.state == "dead" && r.destination == "app"));
        assert_eq!(dead.iter().map(|r| r.id).collect::<Vec<_>>(), [9, 3]);
        assert_eq!(dead[0].event_type.as_deref(), Some("customer.updated"));
        let done = Filter {
            state: Some(State::Done),
            ..Filter::default()
        };
        assert!(list(&conn, &done, 50).unwrap().0.is_empty());

        // Dead rows of one destination only: the list needs no sort.
        let dead_any = Filter {
            state: Some(State::Dead),
            ..Filter::default()
        };
        let both = counts(&conn, &["app"]).unwrap();
        assert_eq!(
            narrow(&dead_any, &both).destination,
            None,
            "crm has dead rows too"
        );
        let app_only: Vec<Counts> = both
            .into_iter()
            .filter(|c| c.destination == "app")
            .collect();
        assert_eq!(
            narrow(&dead_any, &app_only).destination.as_deref(),
            Some("app")
        );
        assert_eq!(narrow(&done, &app_only).destination, None);

        let c = counts(&conn, &["app", "unused"]).unwrap();
        let app = c.iter().find(|c| c.destination == "app").unwrap();
        assert_eq!((app.pending, app.in_flight, app.dead), (5, 0, 2));
        assert_eq!(app.oldest_waiting_ms, Some(0));
        let unused = c.iter().find(|c| c.destination == "unused").unwrap();
        assert_eq!(
            (unused.pending, unused.dead, unused.oldest_waiting_ms),
            (0, 0, None)
        );
        assert_eq!(c.len(), 3, "crm has rows though not asked for");
    }

    #[test]
    fn the_list_and_counts_walk_indexes() {
        let conn = store::open_memory().unwrap();
        let plan = |sql: &str| -> String {
            conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .unwrap()
                .query_map(params!["app"], |r| r.get::<_, String>(3))
                .unwrap()
                .collect::<rusqlite::Result<Vec<_>>>()
                .unwrap()
                .join("\n")
        };
        let p = plan(
            "SELECT id FROM deliveries d WHERE d.state = 'dead' AND d.destination = ?1
             AND d.id < 99 ORDER BY d.id DESC LIMIT 51",
        );
        assert!(
            p.contains("deliveries_state") && !p.contains("TEMP B-TREE"),
            "{p}"
        );
        let p =
            plan("SELECT COUNT(*) FROM deliveries WHERE state = 'pending' AND destination = ?1");
        assert!(p.contains("COVERING INDEX deliveries_state"), "{p}");
    }
}
