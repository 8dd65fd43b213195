//! # stripe-inbox: architecture
//!
//! One binary, one SQLite file, one writer. Stripe POSTs events; each is verified, stored durably
//! exactly once, applied to a mirror of Stripe objects that converges under any delivery order, and
//! answered 2xx only after COMMIT returned. This comment is the map of the code;
//! `../shared/docs/design.md` is the design it follows. Keep both true when modules move.
//!
//! ## Bird's-eye flow
//!
//! ```text
//! Stripe ─POST─▶ http::Server (one thread per connection, bounded, timeouts)
//!                 └▶ webhook::Endpoint::handle
//!                      1. route + method
//!                      2. signature::verify   (every v1 × every secret, constant time, tolerance)
//!                      3. envelope::parse     (id, type, created, account, object id/type, ...)
//!                      4. WriterHandle::ingest ──▶ writer thread (the ONE read-write connection)
//!                                                   group commit: take what is queued, one
//!                                                   transaction; per event a savepoint: count a
//!                                                   duplicate delivery, or project::apply to the
//!                                                   mirror + INSERT with its decision;
//!                                                   COMMIT (WAL, synchronous=FULL)
//!                      5. 200 after COMMIT ◀──────── reply to every waiter
//!                         503 + Retry-After when the writer cannot take it
//! admin listener ─▶ admin::Admin: auth (session or loopback), then a page ── reads through
//!                   db::ReadPool (query_only); replay / rebuild go to the writer as a Task;
//!                   /api/ ─▶ api::Api (/api/objects)
//! db::Checkpointer: WAL checkpoints every 250 ms beside the writer (query_only connection)
//! CLI replay --rebuild / object / check ─▶ replay (re-derive the mirror from events)
//! ```
//!
//! ## Code map (in reading order)
//!
//! - `main.rs`: `fn main() -> ExitCode` around [`cli::run`]; prints `error:` and `try:`.
//! - [`cli`]: argv → `run_serve`, `run_check`, `run_send_test_event`, each with its usage text.
//! - [`config`]: [`config::Config`] from TOML (unknown keys are errors); secrets from the env var.
//! - [`error`]: the one [`error::Error`] enum and [`error::Result`].
//! - [`service`]: [`service::Service`] starts the parts in order and stops them without loss.
//! - [`http`]: the HTTP/1.1 server core ([`http::Server`], [`http::Request`], [`http::Response`]).
//! - [`webhook`]: [`webhook::Endpoint`], the webhook route: verify, parse, ingest, answer.
//! - [`signature`]: Stripe-Signature parsing, verification and signing. Pure.
//! - [`envelope`]: the event envelope parser ([`envelope::Envelope`]). Pure.
//! - [`writer`]: the writer thread, [`writer::WriterHandle`], group commit, [`writer::Stats`];
//!   [`writer::insert_event`] is the one statement that adds an `events` row (the benches share it).
//! - [`db`]: opens every connection (writer, read pool, read-only, the checkpointer's, a backup's
//!   copy target, a locked database for restore), migrations from `schema.sql`, the `<db>.lock`
//!   file lock, integrity checks, and the [`db::Checkpointer`] (passive every 250 ms, RESTART once
//!   the WAL is large and fully copied).
//! - [`project`]: the projection rules: one event → `objects` ([`project::apply`], decisions,
//!   ordering key, same-second tie-breaks). SQL through the writer's transaction, no other I/O.
//! - [`project_streams`]: realistic lifecycle streams from Stripe's fixtures, the mirror dump, used
//!   by the property tests and the integration tests.
//! - [`replay`]: re-derive one event, one object or the whole mirror from `events`; verify it.
//! - [`admin`]: the admin listener: routes, access, security headers, `/healthz`, `/metrics`,
//!   `/api/` to [`api`]. Its pages: [`admin_dashboard`], [`admin_events`] (list, event, replay;
//!   the search is [`event_search`]: index walks within a budget), [`admin_objects`] (browse,
//!   search, object, rebuild); [`auth`] (password, sessions, CSRF, login rate limit); [`html`]
//!   (escaping, frame, stylesheet, JSON viewer, SVG chart); [`form`] (query strings, forms,
//!   cookies); [`metrics`] (Prometheus text, the writer's histograms).
//! - [`api`]: the bearer-token read API over the mirror.
//! - [`backup`]: `backup` (online backup API, one snapshot, no lock), the copying and checking it
//!   shares with `restore`, and the mirror-consistency hook.
//! - [`restore`]: `restore` (lock, checks, `<db>.tmp`, old file kept as `<db>.before-restore`).
//! - [`retention`]: emptying old events' bodies through the writer in small windows; `prune`, and
//!   the [`retention::Scheduler`] `serve` runs daily.
//! - [`export`]: events as JSON Lines, read-only.
//! - [`testevent`]: realistic events from Stripe's example objects (`src/fixtures/`).
//! - [`time`]: now, RFC 3339 parsing, UTC formatting.
//!
//! ## Invariants
//!
//! - Only the writer thread writes. `db.rs` is the only module allowed to call `Connection::open*`
//!   (clippy `disallowed-methods`); readers are `query_only`; the checkpointer's connection is
//!   `query_only` too (it copies committed WAL pages into the file, SQLite refuses that to a
//!   read-only-opened connection); `serve` holds `<db>.lock` so a second server refuses to start.
//!   A command writes only while it holds that lock (`replay --rebuild`, `check`'s migration and
//!   mirror comparison, `restore`, `prune`); `backup` and `export` only read.
//! - Pruned events keep their row with an empty `body`; a real body is never empty.
//! - A 2xx to Stripe means the event's transaction has committed with `synchronous=FULL`. Any
//!   storage trouble answers 503 with `Retry-After`, never 2xx.
//! - A rejected request (signature, body, method, path, size) writes nothing.
//! - `events` is ground truth: the raw body bytes exactly as received, one row per event id;
//!   repeated deliveries only increment `deliveries`.
//! - `objects` is derived state: `replay --rebuild` re-creates it from `events`, and the projection
//!   converges to the same mirror for any delivery order and duplicates (the property test). A
//!   projection error never loses an event: it is stored with decision `projection_failed`.
//! - `signature`, `envelope`, `time`, `html` and `form` are pure: no I/O, the clock is passed in.
//! - The admin never writes except through the writer; every value it shows is HTML-escaped; every
//!   POST it takes carries a CSRF token; without a password it answers only on loopback.
//! - Schema changes are appended as numbered steps to `schema.sql`, never edited; a database from a
//!   newer build is refused.

#![forbid(unsafe_code)]

pub mod admin;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod error;
pub mod event;
pub mod format;
pub mod histogram;
pub mod http;
pub mod ingest;
pub mod mirror;
pub mod ops;
pub mod periodic;
pub mod service;
pub mod store;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
pub mod time;
