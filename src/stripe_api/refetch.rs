//! Fetching single objects again: the worker of the refetch queue (`refetch_jobs`), which `serve`
//! runs every half second, and `stripe-inbox refetch ID...` (and the admin's Refetch button, which
//! only queues).
//!
//! The queue holds one job per object (`mirror::fetched::request_refetch` coalesces requests), so
//! a burst of uncertain events about one object gives one GET. A job is taken with a lease (owner,
//! expiry, [`LEASE_MS`]) through the writer, so one fetch at most is in flight per object, also
//! across processes; a crashed worker's lease simply expires. When the fetch is applied the job is
//! deleted, unless it was requested again while in flight (then it runs once more). A failed
//! fetch releases its lease at once and waits before its next attempt (1 s, doubling, at most an
//! hour); after [`MAX_ATTEMPTS`] the job is dropped and the failure stays in `stripe_errors`.
//!
//! A GET answered `deleted: true`, or 404 `resource_missing`, means the object is gone; anything
//! else is the object's state, stamped with the second the GET began (rule 5).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::catalog::{self, Kind};
use super::StripeApi;
use crate::error::{Error, Result};
use crate::mirror::fetched::{
    apply_fetched, request_refetch, Applied, Fetched, Found, Outcome, Reason, RefetchRequest, Via,
};
use crate::ops::Progress;
use crate::periodic::Stop;
use crate::store;
use crate::time::now_ms;

/// How long a taken job is someone's.
pub const LEASE_MS: i64 = 60_000;
/// Attempts before a job is dropped.
pub const MAX_ATTEMPTS: i64 = 8;

/// What happened to one object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refetched {
    pub id: String,
    pub object_type: String,
    /// `new`, `replaced`, `stale` (a newer event holds it), `tie`, `gone`, `superseded`, `queued`
    /// (another fetch of it was in flight) or `failed: ...`.
    pub outcome: String,
    /// The mirror's data or deleted flag changed.
    pub changed: bool,
}

/// What `refetch ID...` did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RefetchReport {
    pub objects: Vec<Refetched>,
    pub requests: u64,
    pub seconds: f64,
}

/// A taken job.
#[derive(Debug, Clone)]
struct Job {
    object_id: String,
    object_type: String,
    account: Option<String>,
}

/// GETs one object and applies what it says, as fetched by `via`.
pub fn fetch_one(
    api: &StripeApi,
    id: &str,
    kind: &Kind,
    account: Option<&str>,
    via: Via,
) -> Result<Applied> {
    let before = now_ms();
    let (began_ms, found) = match api.client.get(&kind.retrieve_path(id), account) {
        Ok(answer) => {
            let object: Value = serde_json::from_str(&answer.body).map_err(|e| Error::Json {
                what: format!("read the answer to GET {}", kind.retrieve_path(id)),
                err: e,
            })?;
            if object.get("id").and_then(Value::as_str) != Some(id) {
                return Err(Error::Json {
                    what: format!(
                        "GET {}: the answer is not about {id}",
                        kind.retrieve_path(id)
                    ),
                    err: serde::de::Error::custom("id differs"),
                });
            }
            let gone = object.get("deleted").and_then(Value::as_bool) == Some(true);
            (answer.began_ms, (!gone).then_some((answer.body, object)))
        }
        Err(Error::Stripe(e)) if e.is(404, "resource_missing") => (before, None),
        Err(e) => return Err(e),
    };
    apply(api, id, kind.object_type, account, began_ms, via, found)
}

/// Applies one fetched object (or its absence) through the writer, and queues another fetch when
/// it met a same-second tie that fell to the last arrival.
fn apply(
    api: &StripeApi,
    id: &str,
    object_type: &str,
    account: Option<&str>,
    began_ms: i64,
    via: Via,
    found: Option<(String, Value)>,
) -> Result<Applied> {
    let (id, object_type, account) = (
        id.to_owned(),
        object_type.to_owned(),
        account.map(str::to_owned),
    );
    let livemode = api.client.livemode();
    let requeue = api.refetch_uncertain;
    api.writer.run(move |conn| {
        let what = |e| Error::sqlite(format!("apply the fetched state of {id}"), e);
        let f = Fetched {
            object_id: &id,
            object_type: &object_type,
            account: account.as_deref(),
            livemode,
            began_ms,
            via,
            found: match &found {
                Some((raw, object)) => Found::Object { raw, object },
                None => Found::Gone,
            },
        };
        let applied = apply_fetched(conn, &f, now_ms()).map_err(what)?;
        if applied.uncertain && requeue {
            let request = RefetchRequest {
                object_id: &id,
                object_type: &object_type,
                account: account.as_deref(),
                reason: Reason::Uncertain,
                not_before_ms: (began_ms.div_euclid(1000) + 1) * 1000,
                now_ms: now_ms(),
            };
            request_refetch(conn, &request).map_err(what)?;
        }
        Ok(applied)
    })
}

/// One pass of the queue's worker: takes up to `limit` due jobs and fetches them; returns how many
/// were taken (0: nothing was due).
pub fn work_queue(api: &StripeApi, limit: usize, stop: &Stop) -> Result<usize> {
    let jobs = claim(api, None, limit)?;
    for job in &jobs {
        if stop.is_set() {
            release(api, job)?;
            continue;
        }
        let Some(kind) =
            catalog::by_type(&job.object_type).or_else(|| catalog::by_id(&job.object_id))
        else {
            // Nothing to GET (a discount, a tax id): no retry can help.
            log::info!(
                "stripe: not refetching {}: no API path is known for objects of type {}",
                job.object_id,
                job.object_type
            );
            drop_job(api, job)?;
            continue;
        };
        let result = fetch_one(
            api,
            &job.object_id,
            kind,
            job.account.as_deref(),
            Via::Refetch,
        );
        finish(api, job, result.as_ref().err())?;
    }
    Ok(jobs.len())
}

/// `stripe-inbox refetch ID...`: queues the objects, then fetches each itself, unless a fetch of
/// it is in flight elsewhere (it will be applied there).
pub fn refetch_ids(
    api: &StripeApi,
    ids: &[String],
    progress: &mut dyn Progress,
    stop: &Stop,
) -> Result<RefetchReport> {
    let started = std::time::Instant::now();
    let requests_before = api
        .client
        .counts()
        .requests
        .load(std::sync::atomic::Ordering::Relaxed);
    let reader = store::open_read_only(&api.database)?;
    let mut report = RefetchReport::default();
    let mut known = Vec::new();
    for id in ids {
        let mirrored: Option<(String, Option<String>)> = reader
            .query_row(
                "SELECT type, account FROM objects WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map(Some)
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(None),
                e => Err(e),
            })
            .map_err(|e| Error::sqlite(format!("read object {id}"), e))?;
        let kind = match &mirrored {
            Some((t, _)) => catalog::by_type(t),
            None => catalog::by_id(id),
        };
        match kind {
            Some(kind) => known.push((id.clone(), kind, mirrored.and_then(|m| m.1))),
            None => report.objects.push(Refetched {
                id: id.clone(),
                object_type: String::new(),
                outcome: "failed: not mirrored, and its id names no type this inbox can fetch"
                    .into(),
                changed: false,
            }),
        }
    }
    drop(reader);
    // Queue them all first: a burst of requests for one object stays one job.
    let queued: Vec<(String, String, Option<String>)> = known
        .iter()
        .map(|(id, kind, account)| (id.clone(), kind.object_type.to_owned(), account.clone()))
        .collect();
    api.writer.run(move |conn| {
        let now = now_ms();
        for (id, object_type, account) in &queued {
            let request = RefetchRequest {
                object_id: id,
                object_type,
                account: account.as_deref(),
                reason: Reason::Operator,
                not_before_ms: now,
                now_ms: now,
            };
            request_refetch(conn, &request)
                .map_err(|e| Error::sqlite(format!("queue refetch of {id}"), e))?;
        }
        Ok(())
    })?;
    progress.note("refetching");
    let total = known.len() as u64;
    for (n, (id, kind, _)) in known.iter().enumerate() {
        progress.step(n as u64, total);
        if stop.is_set() {
            break;
        }
        let mut line = Refetched {
            id: id.clone(),
            object_type: kind.object_type.to_owned(),
            outcome: "queued".into(),
            changed: false,
        };
        if let Some(job) = claim(api, Some(id), 1)?.pop() {
            let result = fetch_one(api, id, kind, job.account.as_deref(), Via::Refetch);
            finish(api, &job, result.as_ref().err())?;
            match result {
                Ok(applied) => {
                    line.outcome = outcome_name(applied.outcome).into();
                    line.changed = applied.changed;
                }
                Err(e) => line.outcome = format!("failed: {e}"),
            }
        }
        report.objects.push(line);
    }
    progress.step(total, total);
    progress.finish();
    report.requests = api
        .client
        .counts()
        .requests
        .load(std::sync::atomic::Ordering::Relaxed)
        - requests_before;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// The word a report uses for an outcome.
pub fn outcome_name(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::New => "new",
        Outcome::Replaced => "replaced",
        Outcome::Stale => "stale",
        Outcome::Tie(_) => "tie",
        Outcome::Gone => "gone",
        Outcome::Superseded => "superseded",
    }
}

/// Takes due jobs (or the one for `only`, due or not) with a lease.
fn claim(api: &StripeApi, only: Option<&str>, limit: usize) -> Result<Vec<Job>> {
    let owner = api.owner.clone();
    let only = only.map(str::to_owned);
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    api.writer.run(move |conn| {
        let now = now_ms();
        let mut stmt = conn
            .prepare_cached(
                "UPDATE refetch_jobs SET lease_owner = ?1, lease_until = ?2 + ?3,
                        claimed = requests, attempts = attempts + 1
                 WHERE object_id IN (
                     SELECT object_id FROM refetch_jobs
                     WHERE (lease_until IS NULL OR lease_until < ?2)
                       AND (object_id = ?4 OR (?4 IS NULL AND not_before <= ?2))
                     ORDER BY not_before LIMIT ?5)
                 RETURNING object_id, type, account",
            )
            .map_err(|e| Error::sqlite("take refetch jobs", e))?;
        let jobs = stmt
            .query_map(rusqlite::params![owner, now, LEASE_MS, only, limit], |r| {
                Ok(Job {
                    object_id: r.get(0)?,
                    object_type: r.get(1)?,
                    account: r.get(2)?,
                })
            })
            .map_err(|e| Error::sqlite("take refetch jobs", e))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| Error::sqlite("take refetch jobs", e))?;
        Ok(jobs)
    })
}

/// Ends a job: done (deleted, unless requested again meanwhile), or failed (retried later).
fn finish(api: &StripeApi, job: &Job, failure: Option<&Error>) -> Result<()> {
    let owner = api.owner.clone();
    let id = job.object_id.clone();
    let failure = failure.map(|e| e.to_string());
    api.writer.run(move |conn| {
        let what = |e| Error::sqlite(format!("finish the refetch of {id}"), e);
        match failure {
            None => {
                conn.execute(
                    "DELETE FROM refetch_jobs
                     WHERE object_id = ?1 AND lease_owner = ?2 AND requests = claimed",
                    rusqlite::params![id, owner],
                )
                .map_err(what)?;
                conn.execute(
                    "UPDATE refetch_jobs SET lease_owner = NULL, lease_until = NULL
                     WHERE object_id = ?1 AND lease_owner = ?2",
                    rusqlite::params![id, owner],
                )
                .map_err(what)?;
            }
            Some(msg) => {
                let dropped = conn
                    .execute(
                        "DELETE FROM refetch_jobs
                         WHERE object_id = ?1 AND lease_owner = ?2 AND attempts >= ?3",
                        rusqlite::params![id, owner, MAX_ATTEMPTS],
                    )
                    .map_err(what)?;
                if dropped > 0 {
                    log::error!(
                        "stripe: refetch of {id} given up after {MAX_ATTEMPTS} attempts: {msg}"
                    );
                }
                conn.execute(
                    "UPDATE refetch_jobs SET lease_owner = NULL, lease_until = NULL,
                         last_error = ?3,
                         not_before = ?4 + min(3600000, 1000 * (1 << min(attempts, 12)))
                     WHERE object_id = ?1 AND lease_owner = ?2",
                    rusqlite::params![id, owner, msg, now_ms()],
                )
                .map_err(what)?;
            }
        }
        Ok(())
    })
}

/// Deletes a taken job that cannot be done.
fn drop_job(api: &StripeApi, job: &Job) -> Result<()> {
    let owner = api.owner.clone();
    let id = job.object_id.clone();
    api.writer.run(move |conn| {
        conn.execute(
            "DELETE FROM refetch_jobs WHERE object_id = ?1 AND lease_owner = ?2",
            rusqlite::params![id, owner],
        )
        .map_err(|e| Error::sqlite(format!("drop the refetch of {id}"), e))?;
        Ok(())
    })
}

/// Gives a taken job back untouched (shutting down).
fn release(api: &StripeApi, job: &Job) -> Result<()> {
    let owner = api.owner.clone();
    let id = job.object_id.clone();
    api.writer.run(move |conn| {
        conn.execute(
            "UPDATE refetch_jobs SET lease_owner = NULL, lease_until = NULL,
                 attempts = max(attempts - 1, 0)
             WHERE object_id = ?1 AND lease_owner = ?2",
            rusqlite::params![id, owner],
        )
        .map_err(|e| Error::sqlite(format!("release the refetch of {id}"), e))?;
        Ok(())
    })
}
