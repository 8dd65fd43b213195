//! # stripe-inbox: architecture
//!
//! One binary, one SQLite file, one writer. Stripe POSTs events; each is verified, stored durably
//! exactly once, and answered 2xx only after COMMIT returned. This comment is the map of the code;
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
//!                                                   transaction, INSERT (or count a duplicate
//!                                                   delivery), COMMIT (WAL, synchronous=FULL)
//!                      5. 200 after COMMIT ◀──────── reply to every waiter
//!                         503 + Retry-After when the writer cannot take it
//! admin listener ─▶ admin::Admin (/healthz) ── reads through db::ReadPool (query_only)
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
//! - [`writer`]: the writer thread, [`writer::WriterHandle`], group commit, [`writer::Stats`].
//! - [`db`]: opens connections (writer, read pool, read-only), migrations from `schema.sql`, the
//!   `<db>.lock` file lock, integrity checks.
//! - [`backup`]: `backup` (online backup API, one snapshot, no lock), the copying and checking it
//!   shares with `restore`, and the mirror-consistency hook.
//! - [`restore`]: `restore` (lock, checks, `<db>.tmp`, old file kept as `<db>.before-restore`).
//! - [`retention`]: emptying old events' bodies through the writer in small windows; `prune`, and
//!   the [`retention::Scheduler`] `serve` runs daily.
//! - [`export`]: events as JSON Lines, read-only.
//! - [`admin`]: the admin listener's handlers (`/healthz`).
//! - [`testevent`]: realistic events from Stripe's example objects (`src/fixtures/`).
//! - [`time`]: now, RFC 3339 parsing, UTC formatting.
//!
//! ## Invariants
//!
//! - Only the writer thread writes. Nothing else opens a writable connection: `db.rs` is the only
//!   module allowed to call `Connection::open*` (clippy `disallowed-methods`), readers are
//!   `query_only`, and `serve` holds `<db>.lock` so a second server refuses to start. A command
//!   writes only while it holds that lock (`restore`, `prune`); `backup` and `export` only read.
//! - A 2xx to Stripe means the event's transaction has committed with `synchronous=FULL`. Any
//!   storage trouble answers 503 with `Retry-After`, never 2xx.
//! - A rejected request (signature, body, method, path, size) writes nothing.
//! - `events` is ground truth: the raw body bytes exactly as received, one row per event id;
//!   repeated deliveries only increment `deliveries`.
//! - `signature`, `envelope` and `time` are pure: no I/O, the clock is passed in.
//! - Schema changes are appended as numbered steps to `schema.sql`, never edited; a database from a
//!   newer build is refused.

#![forbid(unsafe_code)]

pub mod admin;
pub mod backup;
pub mod cli;
pub mod config;
pub mod db;
pub mod envelope;
pub mod error;
pub mod export;
pub mod http;
pub mod restore;
pub mod retention;
pub mod service;
pub mod signature;
pub mod testevent;
pub mod time;
pub mod webhook;
pub mod writer;
