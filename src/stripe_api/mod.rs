//! Calls to Stripe's API, and what the inbox does with the answers: a mirror equal to what Stripe's
//! API returns, and calls retried the right way.
//!
//! What it owns:
//! - [`client`]: the one HTTP client (ureq): headers, the pinned `Stripe-Version`, retries
//!   ([`retry`]), idempotency keys, errors, and the rate limit shared by every caller in the
//!   process ([`limiter`]);
//! - [`catalog`]: which object types it fetches and lists, and where;
//! - [`backfill`]: every object of the typed-view types through Stripe's lists, applied as fetched
//!   state, resumable per type, then a sweep of mirrored objects the lists left out;
//! - [`reconcile`]: `/v1/events` read newest first, every event the database lacks stored through
//!   the one store path (`ingest::store::store_event`) with `source = 'reconcile'`;
//! - [`refetch`]: the refetch queue (`refetch_jobs`, leases through the writer, coalesced per
//!   object) and its worker, and `refetch ID...`;
//! - [`connect`]: creating the webhook endpoint, the one write the inbox makes in Stripe;
//! - [`work`]: what the CLI can ask for and what it gets back; [`control`]: the authenticated local
//!   endpoint through which a CLI command hands that work to a running server; [`schedule`]: what
//!   `serve` runs on its own; [`status`]: the last runs and API errors, for the dashboard.
//!
//! What it may use: the mirror (rule 5: `mirror::fetched`), `ingest::store` (reconcile stores
//! events the way the webhook does), the store (the writer for every write, read-only connections
//! for reads), `ops::Progress`, `periodic`, `http` (the control routes), and the leaves. It never
//! prints or reads arguments (the CLI does), and it knows nothing of the admin pages.
//!
//! Every write goes through the one writer ([`crate::store::writer::WriterHandle`]): `serve`'s, or
//! the writer of a CLI command that holds the database lock because no server runs.

pub mod backfill;
pub mod catalog;
pub mod client;
pub mod connect;
pub mod control;
pub mod limiter;
pub mod reconcile;
pub mod refetch;
pub mod retry;
pub mod schedule;
pub mod status;
pub mod work;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::ingest::store::Effects;
use crate::store::writer::WriterHandle;
use client::{Client, Settings};

/// Everything the Stripe work needs; one per process, shared.
pub struct StripeApi {
    pub client: Client,
    /// Every write goes through it.
    pub writer: WriterHandle,
    /// For read-only connections.
    pub database: PathBuf,
    /// What storing an event also does: the webhook's own, so that events `reconcile` stores are
    /// forwarded and refetched like delivered ones.
    pub effects: Arc<Effects>,
    /// `[stripe] refetch_uncertain`: queue a refetch when a fetched state meets a same-second tie
    /// that falls to the last arrival.
    pub refetch_uncertain: bool,
    /// Event type patterns the configured destinations forward (`[[forward]] events`,
    /// `payment_intent.*`), which the webhook endpoint `connect` creates must also be subscribed
    /// to (see `connect::enabled_events`).
    pub destination_patterns: Vec<String>,
    /// `[webhook] secrets_env`, for `connect`'s "where to put the secret".
    pub secrets_env: String,
    /// Who takes leases on refetch jobs (`<pid>-<n>`).
    pub owner: String,
    backfilling: Arc<AtomicBool>,
    reconciling: Arc<AtomicBool>,
    connecting: Arc<AtomicBool>,
}

impl StripeApi {
    /// The Stripe client for `config`, with API key `key`, writing through `writer`.
    pub fn new(
        config: &Config,
        key: String,
        writer: WriterHandle,
        effects: Arc<Effects>,
    ) -> StripeApi {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let settings = Settings::from_config(&config.stripe, key);
        StripeApi {
            client: Client::with_error_log(settings, writer.clone()),
            writer,
            database: config.database.path.clone(),
            effects,
            refetch_uncertain: config.stripe.refetch_uncertain,
            destination_patterns: config
                .forward
                .iter()
                .flat_map(|f| f.events.iter().cloned())
                .collect(),
            secrets_env: config.webhook.secrets_env.clone(),
            owner: format!(
                "{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ),
            backfilling: Arc::new(AtomicBool::new(false)),
            reconciling: Arc::new(AtomicBool::new(false)),
            connecting: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Claims the right to run `what` (one backfill, one reconcile, one connect at a time in a
    /// process); refused while one runs.
    pub(crate) fn busy(&self, what: Exclusive) -> Result<Busy> {
        let flag = match what {
            Exclusive::Backfill => &self.backfilling,
            Exclusive::Reconcile => &self.reconciling,
            Exclusive::Connect => &self.connecting,
        };
        if flag.swap(true, Ordering::AcqRel) {
            return Err(Error::refused(
                format!("a {} is already running", what.as_str()),
                "wait for it to finish (the server's log and admin page show it), then try again",
            ));
        }
        Ok(Busy(Some(flag.clone())))
    }
}

/// Work of which one runs at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exclusive {
    Backfill,
    Reconcile,
    Connect,
}

impl Exclusive {
    fn as_str(self) -> &'static str {
        match self {
            Exclusive::Backfill => "backfill",
            Exclusive::Reconcile => "reconcile",
            Exclusive::Connect => "connect",
        }
    }
}

/// Held while exclusive work runs; released when dropped.
pub struct Busy(Option<Arc<AtomicBool>>);

impl Busy {
    /// For work that may run beside itself (refetch).
    pub fn none() -> Busy {
        Busy(None)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if let Some(flag) = &self.0 {
            flag.store(false, Ordering::Release);
        }
    }
}
