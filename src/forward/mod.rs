//! Forwarding to the shop's app: every event a `[[forward]]` destination wants is POSTed to it,
//! exactly as Stripe sent it and signed for the app, in order per object, one at a time per object,
//! retried with backoff until it lands or its budget runs out, never lost and never two in flight
//! for the same object, across threads and restarts. Delivery is at least once; the app dedups on
//! the event id (which rides along as `Idempotency-Key`).
//!
//! # What it owns
//! The `deliveries` and `delivery_attempts` tables (schema step 4) and everything that reads or
//! writes them, split by noun:
//! - [`route`]: the destinations as the store path, the dispatchers and the admin share them
//!   ([`Routes`]: names, patterns, `stale`, settle delay, counters, the dispatcher's alarm).
//! - [`queue`]: the rows as a queue: made in the transaction that stores the event (called from
//!   `ingest::store::store_event` through its `Effects`), lanes and their order (the mirror's own
//!   order within a second), heads, redeliver, and at start the rows of destinations gone from
//!   the config marked dead.
//! - [`schedule`]: what an answer means (outcome classes) and when the next attempt goes
//!   (exponential backoff with full jitter, `Retry-After`, `retry_for`). Pure.
//! - [`lease`]: claims and outcomes, as writer closures.
//! - [`sender`]: the signed POST over `ureq`.
//! - [`dispatch`]: the threads ([`Forwarder`]): per destination a dispatcher and its senders.
//! - [`redeliver`]: putting deliveries back to `pending` in batches through a writer (the admin's
//!   buttons), or alone under the database lock (`stripe-inbox redeliver`).
//! - [`views`]: the queries the admin's Deliveries page, the event page, the dashboard, `/metrics`
//!   and `stripe-inbox deliveries` show.
//!
//! # What it may use
//! `mirror` (the decision enum, the order of a second), `store` (the writer, read-only
//! connections), `config`, `event` (patterns, signing), `crypto`, `time`, `histogram`, `error`.
//! Never `ingest`, `admin`, `ops` or `cli` (they use it); it prints nothing and reads no argv.
//!
//! # Invariants
//! - A delivery row exists only for an event that is stored: both are written in one transaction,
//!   and a repeated delivery from Stripe makes none.
//! - Only the writer writes these tables (claims, outcomes, redeliver are writer closures, or run
//!   by a command that holds the database lock); a row is sent only after its claim committed, and
//!   `done` only after the app's 2xx was committed.
//! - Per (destination, lane) at most one row is `in_flight` under a live lease; only a lane's head
//!   is claimed. An expired lease is due again, so a dead process blocks a lane at most for
//!   `timeout_secs` + [`dispatch::LEASE_MARGIN_MS`].
//! - Retention keeps the body of every event whose delivery is not `done` (`ops::retention`).

pub mod dispatch;
pub mod lease;
pub mod queue;
pub mod redeliver;
pub mod route;
pub mod schedule;
pub mod sender;
pub mod views;

pub use dispatch::Forwarder;
pub use queue::State;
pub use route::Routes;
