//! `backfill`: every object of the types the mirror holds in full
//! ([`super::catalog::backfilled`]), through Stripe's list endpoints, applied as fetched state
//! (rule 5), so that the mirror equals what the API returns, also for objects whose last change
//! sent no event (or whose event was lost).
//!
//! Per type, in steps:
//! 1. Read the type's cursor (`stripe_cursors`, `backfill:<type>`). A pass that was interrupted is
//!    resumed after the last id it applied, with its counts so far; `--restart`, or a finished
//!    pass, starts a new one, remembering when it began.
//! 2. Page through the list, newest first (`limit=100`, `starting_after`). Each page is applied in
//!    one writer task together with the cursor's advance, so an interruption at any point loses
//!    nothing and repeats nothing. A cursor id Stripe no longer knows (400 `resource_missing`: the
//!    object was deleted meanwhile) restarts the type once.
//! 3. Sweep: deleted objects never appear in lists, so a mirrored object of the type (of this
//!    key's mode and account) that the pass neither listed nor saw an event about since it began
//!    is fetched by id: gone (404, `deleted: true`) marks it deleted; otherwise it is applied.
//! 4. Mark the pass finished.
//!
//! Each object's state is stamped with the second its page's request began, so an event that
//! happened after that moment still wins, and a late event from before it is stale.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use super::catalog::Kind;
use super::refetch::{fetch_one, outcome_name};
use super::status::{run_finished, run_started};
use super::StripeApi;
use crate::error::{Error, Result};
use crate::mirror::fetched::{
    apply_fetched, request_refetch, Fetched, Found, Outcome, Reason, RefetchRequest, Via,
};
use crate::ops::Progress;
use crate::periodic::Stop;
use crate::store;
use crate::time::now_ms;

/// What a pass over one type did (so far, when resumed: the counts carry over).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypeReport {
    pub object_type: String,
    /// Objects the lists returned.
    pub fetched: u64,
    /// Of those (and of the swept), the ones whose mirrored data or deleted flag changed.
    pub changed: u64,
    pub unchanged: u64,
    /// Mirrored objects the lists left out, fetched one by one.
    pub swept: u64,
    /// Of the swept, those gone from Stripe.
    pub gone: u64,
    /// Of the swept, those Stripe refused to show (a 4xx other than 404): left as they were.
    pub failed: u64,
    /// Pages requested in this run.
    pub pages: u64,
    /// This run went on from an interrupted pass.
    pub resumed: bool,
    /// The cursor's id was unknown to Stripe, so the type started over.
    pub restarted: bool,
    /// The pass is finished.
    pub complete: bool,
}

/// What `backfill` did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BackfillReport {
    pub types: Vec<TypeReport>,
    /// Requests sent in this run (retries included).
    pub requests: u64,
    /// Rate-limited answers in this run.
    pub rate_limited: u64,
    /// The limiter's lowest rate, requests per second.
    pub slowest_rate: f64,
    pub seconds: f64,
    /// Stopped before the end (the server shut down); run it again to go on.
    pub interrupted: bool,
}

impl BackfillReport {
    /// One line for the dashboard and the log.
    pub fn summary(&self) -> String {
        let sum = |f: fn(&TypeReport) -> u64| self.types.iter().map(f).sum::<u64>();
        format!(
            "{} types: {} fetched, {} changed, {} unchanged, {} swept ({} gone); {} requests in {:.1} s{}",
            self.types.len(),
            sum(|t| t.fetched),
            sum(|t| t.changed),
            sum(|t| t.unchanged),
            sum(|t| t.swept),
            sum(|t| t.gone),
            self.requests,
            self.seconds,
            if self.interrupted { ", interrupted" } else { "" }
        )
    }
}

/// The counts of one type's pass so far, kept in its cursor.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct Counts {
    fetched: u64,
    changed: u64,
    unchanged: u64,
}

/// Runs a backfill of `kinds` (see the module doc).
pub fn run(
    api: &StripeApi,
    kinds: &[&Kind],
    restart: bool,
    progress: &mut dyn Progress,
    stop: &Stop,
) -> Result<BackfillReport> {
    let started = Instant::now();
    let started_ms = now_ms();
    let counts = api.client.counts();
    let (requests0, limited0) = (
        counts.requests.load(Ordering::Relaxed),
        counts.rate_limited.load(Ordering::Relaxed),
    );
    run_started(&api.writer, "backfill", started_ms)?;
    let mut report = BackfillReport::default();
    let result = (|| -> Result<()> {
        for kind in kinds {
            if stop.is_set() {
                report.interrupted = true;
                break;
            }
            progress.note(kind.object_type);
            let t = backfill_type(api, kind, restart, progress, stop);
            progress.finish();
            let t = t?;
            report.interrupted |= !t.complete;
            report.types.push(t);
        }
        Ok(())
    })();
    report.requests = counts.requests.load(Ordering::Relaxed) - requests0;
    report.rate_limited = counts.rate_limited.load(Ordering::Relaxed) - limited0;
    report.slowest_rate = api.client.limiter().lowest;
    report.seconds = started.elapsed().as_secs_f64();
    let (ok, summary) = match &result {
        Ok(()) => (true, report.summary()),
        Err(e) => (false, format!("failed: {e}")),
    };
    log::info!("stripe: backfill {summary}");
    run_finished(&api.writer, "backfill", started_ms, ok, summary)?;
    result.map(|()| report)
}

fn backfill_type(
    api: &StripeApi,
    kind: &Kind,
    restart: bool,
    progress: &mut dyn Progress,
    stop: &Stop,
) -> Result<TypeReport> {
    // 1. The cursor.
    let name = format!("backfill:{}", kind.object_type);
    let reader = store::open_read_only(&api.database)?;
    let cursor = reader
        .query_row(
            "SELECT position, mark, counts, done FROM stripe_cursors WHERE name = ?1",
            [&name],
            |r| {
                Ok((
                    r.get::<_, Option<String>>(0)?,
                    r.get::<_, Option<i64>>(1)?,
                    (r.get::<_, Option<String>>(2)?, r.get::<_, bool>(3)?),
                ))
            },
        )
        .map(Some)
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            e => Err(e),
        })
        .map_err(|e| Error::sqlite(format!("read the cursor {name}"), e))?;
    drop(reader);
    let mut report = TypeReport {
        object_type: kind.object_type.to_owned(),
        ..TypeReport::default()
    };
    let (mut position, mut pass_ms, mut counts) = match cursor {
        Some((position, Some(mark), (counts, false))) if !restart => {
            report.resumed = true;
            let counts = counts
                .and_then(|c| serde_json::from_str::<Counts>(&c).ok())
                .unwrap_or_default();
            (position, mark, counts)
        }
        _ => (None, now_ms(), Counts::default()),
    };
    save_cursor(api, &name, None, pass_ms, &counts, false)?;

    // 2. The pages.
    let call = kind.list_call();
    loop {
        if stop.is_set() {
            return Ok(with_counts(report, &counts));
        }
        let page = match api.client.list(&call, position.as_deref()) {
            Err(Error::Stripe(e))
                if e.is(400, "resource_missing") && position.is_some() && !report.restarted =>
            {
                log::warn!(
                    "stripe: backfill {}: Stripe no longer knows the cursor {}; starting the type over",
                    kind.object_type,
                    position.as_deref().unwrap_or("")
                );
                report.restarted = true;
                position = None;
                pass_ms = now_ms();
                counts = Counts::default();
                save_cursor(api, &name, None, pass_ms, &counts, false)?;
                continue;
            }
            other => other?,
        };
        report.pages += 1;
        // An empty page that claims more would ask for the same page forever.
        let page_was_empty = page.data.is_empty();
        position = page.data.last().and_then(|raw| object_id(raw)).or(position);
        let cursor = Cursor {
            name: name.clone(),
            position: position.clone(),
            pass_ms,
            counts,
        };
        counts = apply_page(api, kind, page.data, page.began_ms, cursor)?;
        progress.step(counts.fetched, 0);
        if !page.has_more || page_was_empty {
            break;
        }
    }

    // 3. The sweep.
    let report = sweep(api, kind, pass_ms, with_counts(report, &counts), stop)?;
    if stop.is_set() {
        return Ok(report);
    }

    // 4. Done.
    counts.changed = report.changed;
    counts.unchanged = report.unchanged;
    save_cursor(api, &name, None, pass_ms, &counts, true)?;
    Ok(TypeReport {
        complete: true,
        ..report
    })
}

fn with_counts(report: TypeReport, counts: &Counts) -> TypeReport {
    TypeReport {
        fetched: counts.fetched,
        changed: counts.changed,
        unchanged: counts.unchanged,
        ..report
    }
}

/// The `id` of a listed object.
fn object_id(raw: &RawValue) -> Option<String> {
    #[derive(Deserialize)]
    struct Id {
        id: String,
    }
    serde_json::from_str::<Id>(raw.get()).ok().map(|i| i.id)
}

/// Where a pass stands, as `stripe_cursors` keeps it.
struct Cursor {
    name: String,
    /// The last id applied.
    position: Option<String>,
    pass_ms: i64,
    counts: Counts,
}

/// Applies one page and advances the cursor past it, in one writer task; returns the pass's
/// counts after the page.
fn apply_page(
    api: &StripeApi,
    kind: &Kind,
    data: Vec<Box<RawValue>>,
    began_ms: i64,
    cursor: Cursor,
) -> Result<Counts> {
    let object_type = kind.object_type.to_owned();
    let livemode = api.client.livemode();
    let requeue = api.refetch_uncertain;
    api.writer.run(move |conn| {
        let mut counts = cursor.counts;
        let now = now_ms();
        for raw in &data {
            let text = raw.get();
            let object: Value = serde_json::from_str(text).map_err(|e| Error::Json {
                what: format!("read a listed {object_type}"),
                err: e,
            })?;
            let Some(id) = object.get("id").and_then(Value::as_str) else {
                continue;
            };
            let f = Fetched {
                object_id: id,
                object_type: &object_type,
                account: None,
                livemode,
                began_ms,
                via: Via::Backfill,
                found: Found::Object {
                    raw: text,
                    object: &object,
                },
            };
            let applied = apply_fetched(conn, &f, now)
                .map_err(|e| Error::sqlite(format!("apply the listed state of {id}"), e))?;
            counts.fetched += 1;
            if applied.changed {
                counts.changed += 1;
            } else {
                counts.unchanged += 1;
            }
            if applied.uncertain && requeue {
                let request = RefetchRequest {
                    object_id: id,
                    object_type: &object_type,
                    account: None,
                    reason: Reason::Uncertain,
                    not_before_ms: (began_ms.div_euclid(1000) + 1) * 1000,
                    now_ms: now,
                };
                request_refetch(conn, &request)
                    .map_err(|e| Error::sqlite(format!("queue refetch of {id}"), e))?;
            }
        }
        let saved = Cursor { counts, ..cursor };
        write_cursor(conn, &saved, false)?;
        Ok(saved.counts)
    })
}

/// Fetches, one by one, the mirrored objects of `kind` that the pass begun at `pass_ms` did not
/// list and no event since touched: the lists leave deleted objects out.
fn sweep(
    api: &StripeApi,
    kind: &Kind,
    pass_ms: i64,
    mut report: TypeReport,
    stop: &Stop,
) -> Result<TypeReport> {
    let reader = store::open_read_only(&api.database)?;
    let ids: Vec<String> = {
        let mut stmt = reader
            .prepare(
                "SELECT o.id FROM objects o LEFT JOIN fetched f ON f.object_id = o.id
                 WHERE o.type = ?1 AND o.deleted = 0 AND o.account IS NULL
                   AND (o.livemode IS NULL OR ?2 IS NULL OR o.livemode = ?2)
                   AND (o.source <> 'event' OR o.k_created < ?3 / 1000)
                   AND (f.began_ms IS NULL OR f.began_ms < ?3)
                 ORDER BY o.id",
            )
            .map_err(|e| Error::sqlite("find objects the lists left out", e))?;
        let rows = stmt
            .query_map(
                rusqlite::params![kind.object_type, api.client.livemode(), pass_ms],
                |r| r.get(0),
            )
            .map_err(|e| Error::sqlite("find objects the lists left out", e))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(|e| Error::sqlite("find objects the lists left out", e))?
    };
    drop(reader);
    let mut by_outcome: BTreeMap<&str, u64> = BTreeMap::new();
    for id in &ids {
        if stop.is_set() {
            break;
        }
        let applied = match fetch_one(api, id, kind, None, Via::Backfill) {
            Ok(applied) => applied,
            // One object Stripe will not show is no reason to stop; no answer, a 429 or a 5xx is.
            Err(Error::Stripe(e))
                if e.status
                    .is_some_and(|s| (400..500).contains(&s) && s != 429) =>
            {
                log::warn!("stripe: backfill {}: sweeping {id}: {e}", kind.object_type);
                report.failed += 1;
                continue;
            }
            Err(e) => return Err(e),
        };
        report.swept += 1;
        if applied.outcome == Outcome::Gone {
            report.gone += 1;
        }
        if applied.changed {
            report.changed += 1;
        } else {
            report.unchanged += 1;
        }
        *by_outcome.entry(outcome_name(applied.outcome)).or_default() += 1;
    }
    if !ids.is_empty() {
        log::info!(
            "stripe: backfill {}: swept {} mirrored objects the lists left out: {by_outcome:?}",
            kind.object_type,
            report.swept
        );
    }
    Ok(report)
}

fn save_cursor(
    api: &StripeApi,
    name: &str,
    position: Option<&str>,
    pass_ms: i64,
    counts: &Counts,
    done: bool,
) -> Result<()> {
    let cursor = Cursor {
        name: name.to_owned(),
        position: position.map(str::to_owned),
        pass_ms,
        counts: *counts,
    };
    api.writer
        .run(move |conn| write_cursor(conn, &cursor, done))
}

fn write_cursor(conn: &rusqlite::Connection, cursor: &Cursor, done: bool) -> Result<()> {
    let counts = serde_json::to_string(&cursor.counts).map_err(|e| Error::Json {
        what: "encode backfill counts".into(),
        err: e,
    })?;
    conn.execute(
        "INSERT INTO stripe_cursors (name, position, mark, counts, done, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (name) DO UPDATE SET position = excluded.position,
             mark = excluded.mark, counts = excluded.counts, done = excluded.done,
             updated_at = excluded.updated_at",
        rusqlite::params![
            cursor.name,
            cursor.position,
            cursor.pass_ms,
            counts,
            done,
            now_ms()
        ],
    )
    .map_err(|e| Error::sqlite(format!("save the cursor {}", cursor.name), e))?;
    Ok(())
}
