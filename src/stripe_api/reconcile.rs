//! `reconcile`: the events Stripe has but the inbox does not (lost while the server was down for
//! longer than Stripe retries, or never delivered), from `GET /v1/events`.
//!
//! Stripe lists events newest first and keeps 30 days of them, so the window is at most 30 days.
//! Each page is stored in one writer task: every event whose id the database lacks goes through the
//! one store path (`store_event`, with the webhook's `Effects`, so it is projected, forwarded and
//! refetched like a delivered one) with `source = 'reconcile'`; an id the database has is left
//! alone (it is not a repeated delivery). The raw body stored is the event's JSON as the API
//! returned it (rendered in the event's own API version, as Stripe keeps it).
//!
//! What `serve` covers on its own (once at start-up, then every `reconcile_every`): from the
//! high-water mark (`stripe_cursors` `reconcile`: the second up to which the list was last read in
//! full) or, before the first complete pass, from the newest stored event; minus [`OVERLAP_SECS`], for
//! events that become listable a moment after their `created`. A pass that reads its whole window
//! and began at or before the mark moves the mark to the second it began.

use std::collections::BTreeMap;
use std::time::Instant;

use rusqlite::OptionalExtension;
use serde::{Deserialize, Serialize};

use super::client::Call;
use super::status::{run_finished, run_started};
use super::StripeApi;
use crate::error::{Error, Result};
use crate::event::envelope;
use crate::ingest::store::{store_event, Ingest, Outcome, Source};
use crate::ops::Progress;
use crate::periodic::Stop;
use crate::store;
use crate::time::{format_utc, now_ms};

/// How far back Stripe keeps events.
pub const RETENTION_SECS: i64 = 30 * 86_400;
/// How far before the mark (or the newest stored event) a pass begins.
pub const OVERLAP_SECS: i64 = 300;

/// Which window to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Window {
    /// Events created at or after this unix second (at most 30 days back).
    Since(i64),
    /// From the mark, or the newest stored event (see the module doc); `None` when the database
    /// has neither (a new install: nothing to catch up with).
    Auto,
}

/// What a pass found.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReconcileReport {
    /// The window's start, unix seconds (`None`: nothing to cover).
    pub since: Option<i64>,
    /// Events Stripe listed.
    pub listed: u64,
    /// Of those, the ones the database lacked, now stored, by type.
    pub stored: u64,
    pub stored_by_type: BTreeMap<String, u64>,
    /// Listed events that could not be read as events (skipped).
    pub unreadable: u64,
    pub pages: u64,
    pub seconds: f64,
    /// The whole window was read (not stopped half-way).
    pub complete: bool,
    /// The high-water mark after the pass, unix seconds.
    pub mark: Option<i64>,
}

impl ReconcileReport {
    /// One line for the dashboard and the log.
    pub fn summary(&self) -> String {
        let Some(since) = self.since else {
            return "nothing to cover: no stored event yet".into();
        };
        let types: Vec<String> = self
            .stored_by_type
            .iter()
            .map(|(t, n)| format!("{t} x{n}"))
            .collect();
        format!(
            "{} events listed since {}, {} missing and now stored{}{}",
            self.listed,
            format_utc(since),
            self.stored,
            if types.is_empty() {
                String::new()
            } else {
                format!(" ({})", types.join(", "))
            },
            if self.complete { "" } else { "; stopped early" }
        )
    }
}

/// Runs one pass over `window`, with `clock_ms` (unix ms) as now: the 30 days and the mark are
/// counted from it.
pub fn run(
    api: &StripeApi,
    window: Window,
    clock_ms: i64,
    progress: &mut dyn Progress,
    stop: &Stop,
) -> Result<ReconcileReport> {
    let started = Instant::now();
    let now_s = clock_ms.div_euclid(1000);
    run_started(&api.writer, "reconcile", now_ms())?;
    let result = pass(api, window, now_s, progress, stop);
    let (ok, summary) = match &result {
        Ok(r) => (
            true,
            ReconcileReport {
                seconds: started.elapsed().as_secs_f64(),
                ..r.clone()
            }
            .summary(),
        ),
        Err(e) => (false, format!("failed: {e}")),
    };
    log::info!("stripe: reconcile {summary}");
    run_finished(&api.writer, "reconcile", now_ms(), ok, summary)?;
    result.map(|r| ReconcileReport {
        seconds: started.elapsed().as_secs_f64(),
        ..r
    })
}

fn pass(
    api: &StripeApi,
    window: Window,
    now_s: i64,
    progress: &mut dyn Progress,
    stop: &Stop,
) -> Result<ReconcileReport> {
    let reader = store::open_read_only(&api.database)?;
    let sql = |e| Error::sqlite("read where reconcile stands", e);
    let mark: Option<i64> = reader
        .query_row(
            "SELECT mark FROM stripe_cursors WHERE name = 'reconcile'",
            [],
            |r| r.get(0),
        )
        .optional()
        .map_err(sql)?
        .flatten();
    let newest: Option<i64> = reader
        .query_row("SELECT MAX(created) FROM events", [], |r| r.get(0))
        .map_err(sql)?;
    drop(reader);
    let since = match window {
        Window::Since(s) => Some(s),
        Window::Auto => mark.or(newest).map(|s| s - OVERLAP_SECS),
    };
    let mut report = ReconcileReport {
        mark,
        ..ReconcileReport::default()
    };
    let Some(since) = since else {
        // A new install: nothing missed yet. Reading starts from here next time.
        save_mark(api, now_s)?;
        report.mark = Some(now_s);
        report.complete = true;
        return Ok(report);
    };
    let since = since.max(now_s - RETENTION_SECS);
    report.since = Some(since);

    progress.note("events");
    let call = Call::get("/v1/events").param("created[gte]", since.to_string());
    let mut after: Option<String> = None;
    loop {
        if stop.is_set() {
            return Ok(report);
        }
        let page = api.client.list(&call, after.as_deref())?;
        report.pages += 1;
        report.listed += page.data.len() as u64;
        let bodies: Vec<Vec<u8>> = page
            .data
            .iter()
            .map(|raw| raw.get().as_bytes().to_vec())
            .collect();
        after = bodies
            .last()
            .and_then(|b| envelope::parse(b).ok())
            .map(|e| e.id)
            .or(after);
        let effects = api.effects.clone();
        let (stored, unreadable) = api.writer.run(move |conn| {
            let mut stored: Vec<String> = Vec::new();
            let mut unreadable = 0u64;
            // Oldest first within the page, as they happened.
            for body in bodies.into_iter().rev() {
                let Ok(env) = envelope::parse(&body) else {
                    unreadable += 1;
                    continue;
                };
                let known: bool = conn
                    .prepare_cached("SELECT EXISTS (SELECT 1 FROM events WHERE id = ?1)")
                    .and_then(|mut s| s.query_row([&env.id], |r| r.get(0)))
                    .map_err(|e| Error::sqlite(format!("look up event {}", env.id), e))?;
                if known {
                    continue;
                }
                let event_type = env.event_type.clone();
                let ingest = Ingest {
                    envelope: env,
                    body,
                    secret_index: None,
                    received_at_ms: now_ms(),
                    source: Source::Reconcile,
                };
                if let Outcome::Stored { .. } = store_event(conn, &ingest, &effects)? {
                    stored.push(event_type);
                }
            }
            Ok((stored, unreadable))
        })?;
        report.unreadable += unreadable;
        report.stored += stored.len() as u64;
        for t in stored {
            *report.stored_by_type.entry(t).or_default() += 1;
        }
        progress.step(report.listed, 0);
        // An empty page that claims more would ask for the same page forever.
        if !page.has_more || page.data.is_empty() {
            break;
        }
    }
    progress.finish();
    report.complete = true;
    // The window reached back to the mark (or, before the first mark, to the newest stored
    // event): everything up to the start of this pass is known.
    if mark.or(newest).is_none_or(|m| since <= m) {
        save_mark(api, now_s)?;
        report.mark = Some(now_s);
    }
    Ok(report)
}

fn save_mark(api: &StripeApi, mark: i64) -> Result<()> {
    api.writer.run(move |conn| {
        conn.execute(
            "INSERT INTO stripe_cursors (name, mark, done, updated_at)
             VALUES ('reconcile', ?1, 1, ?2)
             ON CONFLICT (name) DO UPDATE SET mark = max(coalesce(mark, 0), excluded.mark),
                 updated_at = excluded.updated_at",
            rusqlite::params![mark, now_ms()],
        )
        .map_err(|e| Error::sqlite("save the reconcile mark", e))?;
        Ok(())
    })
}
