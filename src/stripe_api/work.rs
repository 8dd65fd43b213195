//! What the CLI can ask for ([`Work`]) and what it gets back ([`Report`]), the same whether a
//! running server does the work (over the control endpoint) or the command does it alone: one
//! [`run`] for both, so the two paths cannot drift apart.

use serde::{Deserialize, Serialize};

use super::backfill::{self, BackfillReport};
use super::catalog;
use super::connect::{self, ConnectReport};
use super::reconcile::{self, ReconcileReport, Window};
use super::refetch::{self, RefetchReport};
use super::{Busy, Exclusive, StripeApi};
use crate::error::{Error, Result};
use crate::ops::Progress;
use crate::periodic::Stop;
use crate::time::now_ms;

/// One piece of work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "work", rename_all = "snake_case")]
pub enum Work {
    /// `backfill [--type ...] [--restart]`: object types (empty: every backfilled type).
    Backfill { types: Vec<String>, restart: bool },
    /// `reconcile [--since ...]`.
    Reconcile { window: Window },
    /// `refetch ID...`.
    Refetch { ids: Vec<String> },
    /// `connect --url ... [--events ...]`.
    Connect {
        url: String,
        events: Option<Vec<String>>,
    },
}

/// What it did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "report", rename_all = "snake_case")]
pub enum Report {
    Backfill(BackfillReport),
    Reconcile(ReconcileReport),
    Refetch(RefetchReport),
    Connect(ConnectReport),
}

impl Work {
    /// Checks the work before it starts, so that a mistake is a usage error at once.
    pub fn check(&self) -> Result<()> {
        match self {
            Work::Backfill { types, .. } => {
                for t in types {
                    if catalog::by_type(t).is_none_or(|k| !catalog::backfilled().contains(&k)) {
                        return Err(Error::usage(
                            format!("--type {t:?}: not a backfilled type"),
                            "stripe-inbox backfill --help",
                        ));
                    }
                }
                Ok(())
            }
            Work::Refetch { ids } if ids.is_empty() => Err(Error::usage(
                "refetch needs at least one ID",
                "stripe-inbox refetch --help",
            )),
            _ => Ok(()),
        }
    }

    /// Claims what must run alone: one backfill, one reconcile, one connect at a time.
    pub fn claim(&self, api: &StripeApi) -> Result<Busy> {
        match self {
            Work::Backfill { .. } => api.busy(Exclusive::Backfill),
            Work::Reconcile { .. } => api.busy(Exclusive::Reconcile),
            Work::Connect { .. } => api.busy(Exclusive::Connect),
            Work::Refetch { .. } => Ok(Busy::none()),
        }
    }
}

/// Does `work`, which `_busy` (from [`Work::claim`]) holds the right to.
pub fn run(
    api: &StripeApi,
    work: &Work,
    _busy: &Busy,
    progress: &mut dyn Progress,
    stop: &Stop,
) -> Result<Report> {
    work.check()?;
    Ok(match work {
        Work::Backfill { types, restart } => {
            let kinds: Vec<_> = if types.is_empty() {
                catalog::backfilled()
            } else {
                types.iter().filter_map(|t| catalog::by_type(t)).collect()
            };
            Report::Backfill(backfill::run(api, &kinds, *restart, progress, stop)?)
        }
        Work::Reconcile { window } => {
            Report::Reconcile(reconcile::run(api, *window, now_ms(), progress, stop)?)
        }
        Work::Refetch { ids } => Report::Refetch(refetch::refetch_ids(api, ids, progress, stop)?),
        Work::Connect { url, events } => {
            Report::Connect(connect::run(api, url, events.clone(), progress)?)
        }
    })
}
