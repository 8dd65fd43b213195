//! Finding events for the admin's list: filters in, one page of rows out, fast on a large ledger.
//!
//! A page never counts or sorts the whole table. It walks one index newest first, chosen by the
//! filters: the object's events (`events_object`), one walk per matching type (`events_type_seq`)
//! or decision (`events_decision_seq`), or `seq` itself. The remaining filters (the time range,
//! the body text, the other columns) are tested row by row, within a [`Budget`] of rows and time
//! per page. When a walk stops at its budget before the page is full, the page says how far back
//! it looked and links to the next stretch: a search in the bodies of a million events is done in
//! steps of at most [`SCAN_BUDGET`] (measured: about 10 µs a row for 6 KB bodies, so the time
//! bound usually ends a step first) instead of one long stall. A time range is first turned
//! into a `seq` range through the `events_received` index. Patterns (`invoice.*`) are expanded
//! against the values present, found by skipping through their index.
//!
//! Walks are merged by `seq`, and a page only shows rows down to the point every walk has
//! reached, so pages are exact: no row is skipped or shown twice between pages.
//!
//! Reads only; knows nothing of HTTP or HTML.

use rusqlite::types::Value;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension};

use crate::admin::form::Form;
use crate::admin::html::url_encode;
use crate::error::{Error, Result};
use crate::event::types;
use crate::mirror::queries::{EventRow, EVENT_COLUMNS};
use crate::mirror::Decision;
use crate::time::{self, format_utc};

/// Rows per page.
pub const PAGE: usize = 50;
/// How much row-by-row testing one page may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Rows examined, over all walks.
    pub rows: usize,
    /// Time spent walking. Checked every 64 rows; each walk still examines at least a page's
    /// worth of rows, so that every page makes progress.
    pub time: std::time::Duration,
}

/// The budget of an admin page: 20,000 rows or 60 ms, whichever comes first.
pub const SCAN_BUDGET: Budget = Budget {
    rows: 20_000,
    time: std::time::Duration::from_millis(60),
};
/// A bound on distinct values (types, decisions) a pattern is expanded against.
const MAX_DISTINCT: usize = 2_000;
/// The slack allowed between arrival order (`seq`) and arrival time (`received_at`) when a time
/// range is turned into a `seq` range: events are numbered by the writer a moment after they
/// arrive, so concurrent ones may swap by a few milliseconds; 5 s is far more than that.
const ARRIVAL_SLACK_MS: i64 = 5_000;

/// The list filters, from the query string.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    /// An event type, or a pattern with `*` (`invoice.*`, `*.deleted`).
    pub event_type: Option<String>,
    pub object: Option<String>,
    /// A decision, a pattern with `*` (`tie_resolved:*`), or `pending` (not projected).
    pub decision: Option<String>,
    /// Text to find in the raw body (case-sensitive, bytes).
    pub text: Option<String>,
    /// Arrival time range, unix ms: `from` inclusive, `to` exclusive.
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    /// Keyset cursor: only events with a smaller `seq`.
    pub before: Option<i64>,
}

impl Filter {
    /// Reads `type`, `object`, `decision`, `q`, `from`, `to` (`YYYY-MM-DDTHH:MM[:SS]`, UTC) and
    /// `before`. Unusable values are dropped.
    pub fn from_query(form: &Form) -> Filter {
        Filter {
            event_type: form.get("type").map(String::from),
            object: form.get("object").map(String::from),
            decision: form.get("decision").map(String::from),
            text: form.get("q").map(String::from),
            from_ms: form.get("from").and_then(parse_time),
            to_ms: form.get("to").and_then(parse_time),
            before: form.get("before").and_then(|v| v.parse().ok()),
        }
    }

    /// The query string for these filters with another cursor.
    pub fn query(&self, before: Option<i64>) -> String {
        let mut parts = Vec::new();
        let mut add = |k: &str, v: &str| parts.push(format!("{k}={}", url_encode(v)));
        if let Some(v) = &self.event_type {
            add("type", v);
        }
        if let Some(v) = &self.object {
            add("object", v);
        }
        if let Some(v) = &self.decision {
            add("decision", v);
        }
        if let Some(v) = &self.text {
            add("q", v);
        }
        if let Some(v) = self.from_ms {
            add("from", &input_time(v));
        }
        if let Some(v) = self.to_ms {
            add("to", &input_time(v));
        }
        if let Some(v) = before {
            add("before", &v.to_string());
        }
        parts.join("&")
    }

    pub fn is_filtered(&self) -> bool {
        self.event_type.is_some()
            || self.object.is_some()
            || self.decision.is_some()
            || self.text.is_some()
            || self.from_ms.is_some()
            || self.to_ms.is_some()
    }
}

/// A `from=`/`to=` value (`2026-01-02T03:04` as a `datetime-local` input sends it, UTC) in unix ms.
fn parse_time(s: &str) -> Option<i64> {
    time::parse_when(s).map(|secs| secs * 1000)
}

/// The `datetime-local` value of unix ms (UTC).
pub fn input_time(ms: i64) -> String {
    format_utc(ms.div_euclid(1000))[..16].replace(' ', "T")
}

/// A page of results.
#[derive(Debug, Clone, Default)]
pub struct Found {
    pub rows: Vec<EventRow>,
    /// The cursor (`before`) of the next page, when there may be more.
    pub next: Option<i64>,
    /// The walk stopped at its budget: the next page continues the search further back.
    pub limited: bool,
    /// Rows examined.
    pub scanned: usize,
}

/// Which index a page walks.
enum Drive {
    Object(String),
    /// One walk per value of the column (`None` is SQL NULL).
    Values(&'static str, &'static str, Vec<Option<String>>),
    Seq,
}

/// Finds a page of events, newest first.
pub fn find(conn: &Connection, filter: &Filter, budget: Budget) -> Result<Found> {
    let deadline = std::time::Instant::now() + budget.time;
    let sql_err = |e| Error::sqlite("list events", e);
    // Turn the time range into a seq range.
    let mut lo = 1i64;
    let mut hi = filter.before.map_or(i64::MAX, |b| b - 1);
    if let Some(from) = filter.from_ms {
        match first_seq_at(conn, from)? {
            Some(seq) => lo = lo.max(seq),
            None => return Ok(Found::default()),
        }
    }
    if let Some(to) = filter.to_ms {
        match last_seq_before(conn, to)? {
            Some(seq) => hi = hi.min(seq),
            None => return Ok(Found::default()),
        }
    }
    if lo > hi {
        return Ok(Found::default());
    }

    // Expand patterns into the values present in the ledger.
    let types = match &filter.event_type {
        Some(p) if p.contains('*') => Some(
            distinct(conn, "type")?
                .into_iter()
                .filter(|t| types::matches(p, t))
                .map(Some)
                .collect::<Vec<_>>(),
        ),
        Some(t) => Some(vec![Some(t.clone())]),
        None => None,
    };
    let decisions = match filter.decision.as_deref() {
        Some("pending") => Some(vec![None]),
        Some(p) if p.contains('*') => Some(
            distinct(conn, "decision")?
                .into_iter()
                .filter(|d| types::matches(p, d))
                .map(Some)
                .collect::<Vec<_>>(),
        ),
        Some(d) => Some(vec![Some(d.to_string())]),
        None => None,
    };

    // Choose the walk: the object's events, else the rarer of decision and type, else seq.
    let drive = if let Some(object) = &filter.object {
        Drive::Object(object.clone())
    } else if let Some(d) = decisions
        .as_ref()
        .filter(|d| types.is_none() || !d.contains(&Some(Decision::Applied.as_str().to_string())))
    {
        Drive::Values("decision", "events_decision_seq", d.clone())
    } else if let Some(t) = &types {
        Drive::Values("type", "events_type_seq", t.clone())
    } else if let Some(d) = &decisions {
        Drive::Values("decision", "events_decision_seq", d.clone())
    } else {
        Drive::Seq
    };

    // The tests each row must pass beyond the walk's own.
    let mut cond = Vec::new();
    let mut cond_params: Vec<Value> = Vec::new();
    let driven = |col: &str| matches!(&drive, Drive::Values(c, _, _) if *c == col);
    if let (Some(types), false) = (&types, driven("type")) {
        cond.push(in_list("type", types, &mut cond_params));
    }
    if let (Some(decisions), false) = (&decisions, driven("decision")) {
        cond.push(in_list("decision", decisions, &mut cond_params));
    }
    if let (Some(object), false) = (&filter.object, matches!(drive, Drive::Object(_))) {
        cond.push("object_id = ?".into());
        cond_params.push(Value::Text(object.clone()));
    }
    if let Some(from) = filter.from_ms {
        cond.push("received_at >= ?".into());
        cond_params.push(Value::Integer(from));
    }
    if let Some(to) = filter.to_ms {
        cond.push("received_at < ?".into());
        cond_params.push(Value::Integer(to));
    }
    if let Some(text) = &filter.text {
        cond.push("instr(body, ?) > 0".into());
        cond_params.push(Value::Blob(text.as_bytes().to_vec()));
    }
    let hit = if cond.is_empty() {
        "1".to_string()
    } else {
        format!("({})", cond.join(" AND "))
    };

    // The walks.
    let walks: Vec<(String, Vec<Value>)> = match &drive {
        Drive::Object(object) => vec![(
            format!(
                "SELECT seq, {hit} FROM events INDEXED BY events_object
                 WHERE object_id = ? AND seq BETWEEN ? AND ? ORDER BY seq DESC"
            ),
            vec![Value::Text(object.clone())],
        )],
        Drive::Values(col, index, values) => values
            .iter()
            .map(|v| {
                let (test, value) = match v {
                    Some(v) => (format!("{col} = ?"), Value::Text(v.clone())),
                    None => (format!("{col} IS ?"), Value::Null),
                };
                (
                    format!(
                        "SELECT seq, {hit} FROM events INDEXED BY {index}
                         WHERE {test} AND seq BETWEEN ? AND ? ORDER BY seq DESC"
                    ),
                    vec![value],
                )
            })
            .collect(),
        Drive::Seq => vec![(
            format!("SELECT seq, {hit} FROM events WHERE seq BETWEEN ? AND ? ORDER BY seq DESC"),
            vec![],
        )],
    };
    let per_walk = (budget.rows / walks.len().max(1)).max(PAGE);
    let mut hits: Vec<i64> = Vec::new();
    // Every walk has looked at all rows with seq >= floor (i64::MIN: it reached the end).
    let mut floor = i64::MIN;
    let mut limited_floor = i64::MIN;
    let mut scanned = 0;
    for (sql, first) in walks {
        // The hit expression's parameters come first in the SQL text, then the walk's own.
        let mut values = cond_params.clone();
        values.extend(first);
        values.push(Value::Integer(lo));
        values.push(Value::Integer(hi));
        let mut stmt = conn.prepare_cached(&sql).map_err(sql_err)?;
        let mut rows = stmt.query(params_from_iter(values)).map_err(sql_err)?;
        let (mut found, mut looked) = (0, 0);
        while let Some(row) = rows.next().map_err(sql_err)? {
            let seq: i64 = row.get(0).map_err(sql_err)?;
            let is_hit = row
                .get::<_, Option<bool>>(1)
                .map_err(sql_err)?
                .unwrap_or(false);
            looked += 1;
            if is_hit {
                hits.push(seq);
                found += 1;
                if found > PAGE {
                    floor = floor.max(seq);
                    break;
                }
            }
            let out_of_time =
                looked >= PAGE && looked % 64 == 0 && std::time::Instant::now() >= deadline;
            if looked >= per_walk || out_of_time {
                floor = floor.max(seq);
                limited_floor = limited_floor.max(seq);
                break;
            }
        }
        scanned += looked;
    }
    hits.retain(|s| *s >= floor);
    hits.sort_unstable_by(|a, b| b.cmp(a));
    hits.dedup();
    let (next, limited) = if hits.len() > PAGE {
        hits.truncate(PAGE);
        (hits.last().copied(), false)
    } else if floor > i64::MIN {
        // Fewer than a page down to where a walk stopped at its budget: continue from there.
        (Some(floor), limited_floor > i64::MIN)
    } else {
        (None, false)
    };
    let rows = rows_by_seq(conn, &hits)?;
    Ok(Found {
        rows,
        next,
        limited,
        scanned,
    })
}

/// `col IN (?, ..)`, with `IS NULL` for a `None`.
fn in_list(col: &str, values: &[Option<String>], params: &mut Vec<Value>) -> String {
    let texts: Vec<&String> = values.iter().flatten().collect();
    let mut parts = Vec::new();
    if !texts.is_empty() {
        parts.push(format!("{col} IN ({})", vec!["?"; texts.len()].join(", ")));
        params.extend(texts.into_iter().map(|t| Value::Text(t.clone())));
    }
    if values.iter().any(Option::is_none) {
        parts.push(format!("{col} IS NULL"));
    }
    if parts.is_empty() {
        "0".into()
    } else {
        format!("({})", parts.join(" OR "))
    }
}

/// The rows of these seqs, newest first.
fn rows_by_seq(conn: &Connection, seqs: &[i64]) -> Result<Vec<EventRow>> {
    if seqs.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE seq IN ({}) ORDER BY seq DESC",
        vec!["?"; seqs.len()].join(", ")
    );
    let mut stmt = conn
        .prepare(&sql)
        .map_err(|e| Error::sqlite("read events", e))?;
    let rows = stmt
        .query_map(params_from_iter(seqs), EventRow::from_row)
        .map_err(|e| Error::sqlite("read events", e))?;
    rows.collect::<rusqlite::Result<_>>()
        .map_err(|e| Error::sqlite("read events", e))
}

/// The smallest seq of the events that arrived at or after `ms`.
fn first_seq_at(conn: &Connection, ms: i64) -> Result<Option<i64>> {
    let err = |e| Error::sqlite("find events by time", e);
    let near: Option<i64> = conn
        .query_row(
            "SELECT MIN(seq) FROM events WHERE received_at >= ?1 AND received_at < ?2",
            params![ms, ms + ARRIVAL_SLACK_MS],
            |r| r.get(0),
        )
        .map_err(err)?;
    if near.is_some() {
        return Ok(near);
    }
    conn.query_row(
        "SELECT seq FROM events WHERE received_at >= ?1 ORDER BY received_at LIMIT 1",
        [ms],
        |r| r.get(0),
    )
    .optional()
    .map_err(err)
}

/// The largest seq of the events that arrived before `ms`.
fn last_seq_before(conn: &Connection, ms: i64) -> Result<Option<i64>> {
    let err = |e| Error::sqlite("find events by time", e);
    let near: Option<i64> = conn
        .query_row(
            "SELECT MAX(seq) FROM events WHERE received_at < ?1 AND received_at >= ?2",
            params![ms, ms - ARRIVAL_SLACK_MS],
            |r| r.get(0),
        )
        .map_err(err)?;
    if near.is_some() {
        return Ok(near);
    }
    conn.query_row(
        "SELECT seq FROM events WHERE received_at < ?1 ORDER BY received_at DESC LIMIT 1",
        [ms],
        |r| r.get(0),
    )
    .optional()
    .map_err(err)
}

/// The distinct non-NULL values of an indexed column, by skipping through its index (one seek
/// per value, not a scan).
pub fn distinct(conn: &Connection, col: &'static str) -> Result<Vec<String>> {
    let sql = format!(
        "WITH RECURSIVE v(x) AS (
             SELECT MIN({col}) FROM events
             UNION ALL
             SELECT (SELECT MIN({col}) FROM events WHERE {col} > v.x) FROM v WHERE v.x IS NOT NULL
         )
         SELECT x FROM v WHERE x IS NOT NULL LIMIT {MAX_DISTINCT}"
    );
    let mut stmt = conn
        .prepare_cached(&sql)
        .map_err(|e| Error::sqlite(format!("list distinct {col}"), e))?;
    let rows = stmt
        .query_map([], |r| r.get(0))
        .map_err(|e| Error::sqlite(format!("list distinct {col}"), e))?;
    rows.collect::<rusqlite::Result<_>>()
        .map_err(|e| Error::sqlite(format!("list distinct {col}"), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_round_trip_through_the_query() {
        let form = Form::parse(
            "type=invoice.*&object=cus_1&decision=pending&q=a%40b.c&from=2026-01-02T03:04&to=2026-01-03T00:00&before=99",
        );
        let f = Filter::from_query(&form);
        assert_eq!(f.event_type.as_deref(), Some("invoice.*"));
        assert_eq!(f.text.as_deref(), Some("a@b.c"));
        assert_eq!(
            f.from_ms,
            Some(time::parse_rfc3339("2026-01-02T03:04:00Z").unwrap() * 1000)
        );
        assert_eq!(f.before, Some(99));
        let again = Filter::from_query(&Form::parse(&f.query(Some(99))));
        assert_eq!(again, f);
        assert_eq!(
            Filter::from_query(&Form::parse("from=yesterday")).from_ms,
            None
        );
    }
}
