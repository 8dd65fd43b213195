//! `export`: stored events as JSON Lines on stdout, for `jq`, a warehouse loader or another tool.
//!
//! Each line is one event exactly as Stripe sent it, with nothing added (no envelope) and only
//! its insignificant whitespace removed: Stripe pretty-prints its bodies, and a JSON Lines record
//! must fit on one line. Keys keep their order and numbers their spelling, so a line is the body
//! byte for byte minus spaces and line breaks outside strings (a JSON string cannot hold a raw line
//! break, so none is lost). Lines come in arrival order (`seq`). Events whose body retention has
//! pruned have nothing to export: they are skipped and counted.
//!
//! Read-only, and fine while `serve` runs: a read-only connection reads pages of [`PAGE`] events,
//! each in its own short read transaction, so a long export never holds back the server's WAL
//! checkpoints.

use std::io::Write;

use rusqlite::types::Value;
use rusqlite::Connection;

use crate::error::{Error, Result};

/// Events read per query.
pub const PAGE: i64 = 1000;

/// Which events to export. Times are unix seconds and compare with the event's own `created`.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    /// Only events created at or after this.
    pub since: Option<i64>,
    /// Only events created before this.
    pub until: Option<i64>,
    /// Only events whose type matches one of these globs (`*` any run, `?` one character).
    pub types: Vec<String>,
}

/// What an export wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Exported {
    pub events: u64,
    /// Matching events skipped because retention emptied their body.
    pub pruned: u64,
}

/// Writes every event matching `filter` to `out`, one JSON document per line.
pub fn export(conn: &Connection, filter: &Filter, out: &mut dyn Write) -> Result<Exported> {
    let mut sql = String::from(
        "SELECT seq, body FROM events WHERE seq > ?1
           AND (?2 IS NULL OR created >= ?2) AND (?3 IS NULL OR created < ?3)",
    );
    if !filter.types.is_empty() {
        let globs: Vec<String> = (0..filter.types.len())
            .map(|i| format!("type GLOB ?{}", i + 4))
            .collect();
        sql.push_str(&format!(" AND ({})", globs.join(" OR ")));
    }
    sql.push_str(&format!(" ORDER BY seq LIMIT {PAGE}"));
    let read = |e| Error::sqlite("read events", e);
    let mut stmt = conn.prepare(&sql).map_err(read)?;
    let mut done = Exported::default();
    let mut after = 0i64;
    loop {
        let mut params = vec![
            Value::Integer(after),
            filter.since.map_or(Value::Null, Value::Integer),
            filter.until.map_or(Value::Null, Value::Integer),
        ];
        params.extend(filter.types.iter().cloned().map(Value::Text));
        // One page per statement: each is its own short read transaction.
        let page: Vec<(i64, Vec<u8>)> = stmt
            .query_map(rusqlite::params_from_iter(params), |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .and_then(|rows| rows.collect())
            .map_err(read)?;
        let Some(last) = page.last() else {
            return Ok(done);
        };
        after = last.0;
        for (_, body) in &page {
            if body.is_empty() {
                done.pruned += 1;
                continue;
            }
            let mut line = minify(body);
            line.push(b'\n');
            out.write_all(&line)
                .map_err(|e| Error::io("write to standard output", e))?;
            done.events += 1;
        }
    }
}

/// Removes the whitespace outside strings from a JSON document, keeping every other byte.
pub fn minify(json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(json.len());
    let (mut in_string, mut escaped) = (false, false);
    for &b in json {
        if in_string {
            out.push(b);
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if !matches!(b, b' ' | b'\n' | b'\r' | b'\t') {
            in_string = b == b'"';
            out.push(b);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minify_keeps_strings_and_drops_the_rest() {
        for (input, expected) in [
            ("{ \"a\" : 1 }", "{\"a\":1}"),
            (
                "{\n  \"a b\": \"x y\\n\",\n  \"c\": [1, 2.50, -3e5]\n}",
                "{\"a b\":\"x y\\n\",\"c\":[1,2.50,-3e5]}",
            ),
            (
                r#"{"q": "say \"hi \" ", "e": "\\", "z": " "}"#,
                r#"{"q":"say \"hi \" ","e":"\\","z":" "}"#,
            ),
            (
                "{\"u\": \"caf\u{e9} \u{1F600}\"}",
                "{\"u\":\"caf\u{e9} \u{1F600}\"}",
            ),
        ] {
            let out = minify(input.as_bytes());
            assert_eq!(String::from_utf8(out.clone()).unwrap(), expected);
            let a: serde_json::Value = serde_json::from_str(input).unwrap();
            let b: serde_json::Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(a, b);
        }
    }
}
