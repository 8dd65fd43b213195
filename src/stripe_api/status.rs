//! What the dashboard shows of the Stripe client: the last backfill and reconcile (when, and what
//! they found, as one line), the API errors (`stripe_errors`, written by the client), and the
//! refetch queue. Written through the writer by the work itself; read from any connection.

use rusqlite::{params, Connection, OptionalExtension};

use crate::error::{Error, Result, StripeError};
use crate::store::writer::WriterHandle;
use crate::time::now_ms;

/// One run of backfill or reconcile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// Unix ms.
    pub started_at: i64,
    /// Unix ms; `None` while it runs (or if the process stopped in the middle).
    pub finished_at: Option<i64>,
    pub ok: Option<bool>,
    /// What it found, or why it failed.
    pub summary: String,
}

/// One failed API call, as `stripe_errors` keeps it (without its attempts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// Unix ms.
    pub at: i64,
    pub error: StripeError,
}

/// Everything the dashboard shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    pub backfill: Option<Run>,
    pub reconcile: Option<Run>,
    /// The newest first.
    pub errors: Vec<ApiError>,
    /// Objects waiting to be fetched again.
    pub refetch_queued: i64,
    /// Unix seconds up to which `/v1/events` was last read in full.
    pub reconcile_mark: Option<i64>,
}

/// Records that `kind` (`backfill`, `reconcile`) began.
pub fn run_started(writer: &WriterHandle, kind: &'static str, started_ms: i64) -> Result<()> {
    writer.run(move |conn| {
        conn.execute(
            "INSERT INTO stripe_runs (kind, started_at, finished_at, ok, summary)
             VALUES (?1, ?2, NULL, NULL, 'running')
             ON CONFLICT (kind) DO UPDATE SET started_at = excluded.started_at,
                 finished_at = NULL, ok = NULL, summary = excluded.summary",
            params![kind, started_ms],
        )
        .map_err(|e| Error::sqlite(format!("record the start of {kind}"), e))?;
        Ok(())
    })
}

/// Records how `kind` ended.
pub fn run_finished(
    writer: &WriterHandle,
    kind: &'static str,
    started_ms: i64,
    ok: bool,
    summary: String,
) -> Result<()> {
    writer.run(move |conn| {
        conn.execute(
            "INSERT INTO stripe_runs (kind, started_at, finished_at, ok, summary)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (kind) DO UPDATE SET started_at = excluded.started_at,
                 finished_at = excluded.finished_at, ok = excluded.ok, summary = excluded.summary",
            params![kind, started_ms, now_ms(), ok, summary],
        )
        .map_err(|e| Error::sqlite(format!("record the end of {kind}"), e))?;
        Ok(())
    })
}

/// Reads the status, with at most `errors` API errors.
pub fn read(conn: &Connection, errors: usize) -> Result<Status> {
    let sql = |what: &'static str| move |e| Error::sqlite(format!("stripe status: {what}"), e);
    let run = |kind: &str| -> Result<Option<Run>> {
        conn.query_row(
            "SELECT started_at, finished_at, ok, summary FROM stripe_runs WHERE kind = ?1",
            [kind],
            |r| {
                Ok(Run {
                    started_at: r.get(0)?,
                    finished_at: r.get(1)?,
                    ok: r.get(2)?,
                    summary: r.get(3)?,
                })
            },
        )
        .optional()
        .map_err(sql("runs"))
    };
    let mut stmt = conn
        .prepare(
            "SELECT at, request, status, type, code, message, request_id FROM stripe_errors
             ORDER BY id DESC LIMIT ?1",
        )
        .map_err(sql("errors"))?;
    let limit = i64::try_from(errors).unwrap_or(i64::MAX);
    let errors = stmt
        .query_map([limit], |r| {
            Ok(ApiError {
                at: r.get(0)?,
                error: StripeError {
                    request: r.get(1)?,
                    status: r.get(2)?,
                    error_type: r.get(3)?,
                    code: r.get(4)?,
                    message: r.get(5)?,
                    request_id: r.get(6)?,
                    attempts: 0,
                },
            })
        })
        .map_err(sql("errors"))?
        .collect::<rusqlite::Result<_>>()
        .map_err(sql("errors"))?;
    Ok(Status {
        backfill: run("backfill")?,
        reconcile: run("reconcile")?,
        errors,
        refetch_queued: conn
            .query_row("SELECT COUNT(*) FROM refetch_jobs", [], |r| r.get(0))
            .map_err(sql("refetch queue"))?,
        reconcile_mark: conn
            .query_row(
                "SELECT mark FROM stripe_cursors WHERE name = 'reconcile'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql("reconcile mark"))?
            .flatten(),
    })
}
