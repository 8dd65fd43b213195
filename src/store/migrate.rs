//! Migrations: `schema.sql` is an append-only ledger of numbered steps (`-- step N: summary`);
//! `PRAGMA user_version` records the last one applied. Each pending step runs in its own
//! transaction with the version bump, and a database from a newer build is refused before anything
//! touches it. Also the integrity check that `check`, `backup` and `restore` share.

use std::path::Path;

use rusqlite::Connection;

use crate::error::{Error, Result};

/// The migration ledger, embedded at build time.
pub const SCHEMA: &str = include_str!("../../schema.sql");

/// The numbered steps of `schema.sql`: (number, summary, SQL).
pub fn steps() -> Vec<(i64, &'static str, &'static str)> {
    let mut steps = Vec::new();
    let mut rest = SCHEMA;
    while let Some(at) = rest.find("\n-- step ") {
        let after = &rest[at + "\n-- step ".len()..];
        let line_end = after.find('\n').unwrap_or(after.len());
        let (number, summary) = after[..line_end]
            .split_once(':')
            .unwrap_or((&after[..line_end], ""));
        let body_start = (line_end + 1).min(after.len());
        let next = after[body_start..]
            .find("\n-- step ")
            .map_or(after.len(), |n| body_start + n);
        let number = number.trim().parse().unwrap_or(-1);
        steps.push((number, summary.trim(), &after[body_start..next]));
        rest = &after[next..];
    }
    steps
}

/// The schema version this build knows (the last step's number).
pub fn known_version() -> i64 {
    steps().last().map_or(0, |s| s.0)
}

/// The database's schema version (`PRAGMA user_version`).
pub fn schema_version(conn: &Connection) -> Result<i64> {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| Error::sqlite("read schema version", e))
}

/// Applies every step of `schema.sql` newer than the database's `user_version`, one transaction
/// each. Refuses a database from a newer build.
pub fn migrate(conn: &Connection, path: &Path) -> Result<()> {
    let found = schema_version(conn)?;
    let known = known_version();
    if found > known {
        return Err(Error::SchemaTooNew {
            path: path.to_path_buf(),
            found,
            known,
        });
    }
    for (number, summary, sql) in steps().into_iter().filter(|s| s.0 > found) {
        let what = || format!("migrate {} to step {number} ({summary})", path.display());
        let tx = conn
            .unchecked_transaction()
            .map_err(|e| Error::sqlite(what(), e))?;
        tx.execute_batch(sql)
            .map_err(|e| Error::sqlite(what(), e))?;
        tx.pragma_update(None, "user_version", number)
            .map_err(|e| Error::sqlite(what(), e))?;
        tx.commit().map_err(|e| Error::sqlite(what(), e))?;
        log::info!(
            "migrated database={} step={number} summary={summary:?}",
            path.display()
        );
    }
    Ok(())
}

/// `PRAGMA integrity_check`: an empty list means the file is sound.
pub fn integrity_problems(conn: &Connection) -> Result<Vec<String>> {
    let mut stmt = conn
        .prepare("PRAGMA integrity_check")
        .map_err(|e| Error::sqlite("integrity check", e))?;
    let rows = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .map_err(|e| Error::sqlite("integrity check", e))?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(|e| Error::sqlite("integrity check", e))?;
    Ok(rows.into_iter().filter(|r| r != "ok").collect())
}
