//! What `serve` runs on its own when it has an API key, each on a [`Periodic`] thread that stops
//! promptly at shutdown:
//! - the refetch queue's worker, every half second (at once again while jobs are due);
//! - `reconcile` once at start-up and then every `reconcile_every`, covering the time since the
//!   high-water mark (or the newest stored event);
//! - a full `backfill` every `resync_every` (counted from the end of the last one, so a restart
//!   does not start one), unless `off`.
//!
//! A scheduled run that finds the same work already running (started by a CLI command through the
//! control endpoint) skips its turn.

use std::sync::Arc;
use std::time::Duration;

use rusqlite::OptionalExtension;

use super::reconcile::Window;
use super::work::{self, Work};
use super::{refetch, StripeApi};
use crate::config::stripe::Stripe;
use crate::error::Result;
use crate::periodic::Periodic;
use crate::store;
use crate::time::now_ms;

/// How often the refetch worker looks for due jobs.
pub const REFETCH_POLL: Duration = Duration::from_millis(500);
/// Jobs the worker takes at once.
const REFETCH_BATCH: usize = 20;

/// The running schedules.
pub struct Schedules(Vec<Periodic>);

impl Schedules {
    /// Nothing runs (no API key).
    pub fn none() -> Schedules {
        Schedules(Vec::new())
    }

    /// Starts the schedules of `config` for `api`.
    pub fn start(api: &Arc<StripeApi>, config: &Stripe) -> Result<Schedules> {
        let mut all = Vec::new();
        let worker = api.clone();
        all.push(Periodic::start(
            "stripe-refetch",
            REFETCH_POLL,
            move |stop| match refetch::work_queue(&worker, REFETCH_BATCH, stop) {
                Ok(0) => REFETCH_POLL,
                Ok(_) => Duration::ZERO,
                Err(e) => {
                    log::warn!("stripe: refetch worker: {e}");
                    Duration::from_secs(5)
                }
            },
        )?);
        if let Some(every) = config.reconcile_every() {
            let api = api.clone();
            all.push(Periodic::start(
                "stripe-reconcile",
                Duration::ZERO,
                move |stop| {
                    scheduled(
                        &api,
                        &Work::Reconcile {
                            window: Window::Auto,
                        },
                        stop,
                    );
                    every
                },
            )?);
        }
        if let Some(every) = config.resync_every() {
            let first = first_resync(api, every);
            let api = api.clone();
            all.push(Periodic::start("stripe-resync", first, move |stop| {
                let work = Work::Backfill {
                    types: Vec::new(),
                    restart: false,
                };
                scheduled(&api, &work, stop);
                every
            })?);
        }
        Ok(Schedules(all))
    }

    /// Stops every schedule (a run under way ends at its next step).
    pub fn stop(self) {
        for p in self.0 {
            p.stop();
        }
    }
}

fn scheduled(api: &StripeApi, work: &Work, stop: &crate::periodic::Stop) {
    let busy = match work.claim(api) {
        Ok(busy) => busy,
        Err(e) => {
            log::info!("stripe: scheduled run skipped: {e}");
            return;
        }
    };
    if let Err(e) = work::run(api, work, &busy, &mut (), stop) {
        log::warn!("stripe: scheduled run failed: {e}");
    }
}

/// The wait before the first scheduled backfill: what is left of `every` since the last one ended.
fn first_resync(api: &StripeApi, every: Duration) -> Duration {
    let last: Option<i64> = store::open_read_only(&api.database).ok().and_then(|conn| {
        conn.query_row(
            "SELECT finished_at FROM stripe_runs WHERE kind = 'backfill' AND ok = 1",
            [],
            |r| r.get(0),
        )
        .optional()
        .ok()
        .flatten()
        .flatten()
    });
    match last {
        Some(at) => {
            let due = at + every.as_millis() as i64 - now_ms();
            Duration::from_millis(due.max(0) as u64)
        }
        None => Duration::ZERO,
    }
}
