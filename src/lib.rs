//! # stripe-inbox: architecture
//!
//! One binary, one SQLite file, one writer. Stripe POSTs events; each is verified, stored durably
//! exactly once, applied to a mirror of Stripe objects that converges under any delivery order, and
//! answered 2xx only after COMMIT returned. This comment is the map of the code: the flow, the code
//! map in reading order, and the invariants. `docs/architecture.md` is the design it follows (who
//! uses it, the tables, the projection rules in full, forwarding, the Stripe API). Keep both true
//! when modules move.
//!
//! ## Bird's-eye flow
//!
//! ```text
//! Stripe ─POST─▶ http::Server (a thread per connection, bounded overall and per address, timeouts)
//!                 └▶ ingest::endpoint::Endpoint::handle
//!                      1. route + method
//!                      2. event::signature::verify (every v1 × every secret, constant time)
//!                      3. event::envelope::parse  (id, type, created, account, the span of
//!                         data.object and the few members the mirror reads outside a tie;
//!                         the whole object too when ingest::tie_ahead expects a tie)
//!                      4. WriterHandle::run_retryable(store_event_with) ──▶ the writer
//!                                                   thread (the ONE read-write connection):
//!                                                   group commit, one transaction; retryable
//!                                                   closures unguarded (rerun guarded if one
//!                                                   fails), a savepoint per other closure;
//!                                                   ingest::store::store_event counts a duplicate
//!                                                   or projects (mirror::apply), inserts, and
//!                                                   queues a `deliveries` row per [[forward]]
//!                                                   destination that wants it (forward::queue)
//!                                                   and a refetch of an object left uncertain;
//!                                                   COMMIT (WAL, synchronous=FULL)
//!                      5. 200 after COMMIT ◀──────── the closure's value comes back
//!                         503 + Retry-After when the writer cannot take it
//! admin listener ─▶ admin::router: public routes, access, then a page (admin::dashboard, events,
//!                   objects) given admin::context::Admin; reads through store::ReadPool
//!                   (query_only); replay / rebuild are writer closures; /api/ ─▶ admin::api
//! forward::Forwarder, per destination a dispatcher + max_in_flight senders: claim due lane heads
//!                   under a lease (writer closure) ─▶ POST the stored bytes, signed for the app
//!                   (ureq) ─▶ the outcome, releasing the lease (writer closure)
//! store::Checkpointer: WAL checkpoints every 250 ms beside the writer (query_only connection),
//!                   the copied pages written back range by range (store::writeback); the
//!                   RESTART that starts a large WAL afresh runs on the writer, between batches
//! ops::retention::Scheduler: old bodies emptied daily, in small writer closures
//! stripe_api (with an API key): schedule (refetch worker, reconcile, resync) ─▶ client (ureq,
//!                   retries, shared rate limit) ─▶ Stripe; answers applied as fetched state
//!                   (mirror::fetched) or stored events (store_event) in writer closures;
//!                   /control/ on the admin listener takes work from the CLI
//! CLI (cli::run) ─▶ one file per subcommand; writes only under <db>.lock with a writer of its
//!                   own (replay --rebuild, prune, restore, check's migration); backfill,
//!                   reconcile, refetch and connect hand their work to a running server instead
//! ```
//!
//! ## Code map (in reading order)
//!
//! Leaves, used by everything above them:
//! - `main.rs`: `fn main() -> ExitCode` around [`cli::run`]; prints `error:` and `try:`. Sets the
//!   allocator (jemalloc with small per-thread caches: 8 freed blocks per size class up to 1 KiB,
//!   so the writer rarely takes an arena lock and 256 connection threads stay small).
//! - [`error`]: the one [`error::Error`] enum (a variant per case a caller tells apart) and
//!   [`error::Result`].
//! - [`config`]: [`config::Config`] from TOML (unknown keys are errors); secrets from env vars.
//! - [`time`]: the clock, RFC 3339, the times and durations people type, UTC formatting.
//! - [`format`](mod@format) (bytes, ages, thousands), [`crypto`] (constant-time compare, random bytes, hex),
//!   [`histogram`] (lock-free, Prometheus text), [`periodic`] (a background loop that stops
//!   promptly).
//! - [`event`]: what a Stripe event is: [`event::envelope`], [`event::signature`] (verify and sign),
//!   [`event::types`] (event type → object type, type patterns), [`event::testevent`].
//! - [`http`]: the HTTP/1.1 core: [`http::Server`] (`server.rs`), one connection's life
//!   (`connection.rs`: timeouts, the write budget), the wire format (`wire.rs`: the one framing
//!   path, strict, pure, fuzzed through [`http::frame_for_fuzzing`]), the connections per address
//!   and idle eviction (`registry.rs`), trusted proxies and the client behind them (`peers.rs`);
//!   [`http::Request`], [`http::Response`].
//!
//! Storage:
//! - [`store`]: opening connections ([`store::open`], the only module allowed to; it sets the
//!   pragmas and a new file's page size, [`store::NEW_PAGE_SIZE`]), migrations from
//!   `schema.sql` ([`store::migrate`](mod@store::migrate)), the `<db>.lock` ([`store::lock`]), the
//!   [`store::Checkpointer`] (with [`store::writeback`], which writes the pages a checkpoint
//!   copied back to the disk in 64 to 256 waited-for ranges, more when it copied more), the VFS
//!   through which the writer's connection writes its WAL (`store::walbuf`: a commit's frames
//!   gathered into one write, handed over before SQLite syncs or publishes it), and the
//!   writer thread ([`store::writer`]): group commit and
//!   [`store::writer::WriterHandle::run`], which returns a closure's value after COMMIT
//!   (`run_retryable` for a closure that may run twice, which spares its savepoint); a second
//!   thread, `writer-answers`, wakes the waiters of each committed batch of more than one.
//!
//! The mirror:
//! - [`mirror`]: the projection rules (its module doc is the spec): [`mirror::apply`] for one
//!   event, the [`mirror::Decision`] it records, same-second ties (`ties.rs`, over the candidates
//!   of `candidate.rs`, ranked by `lifecycle.rs`; the writer thread keeps the events it parsed
//!   for ties in `tie_cache.rs`, and takes the stored row's state text from them when it can;
//!   a `tie-cache-free` thread frees what it lets go), the SQL (`rows.rs`), state fetched from
//!   Stripe's API and the refetch queue ([`mirror::fetched`], rule 5), [`mirror::replay`]
//!   (re-derive one event, one object or everything; verify), and [`mirror::queries`], the reads
//!   the admin, the API and the CLI share.
//!
//! What uses the mirror and the store:
//! - [`ingest`]: [`ingest::endpoint`] (the webhook route), [`ingest::tie_ahead`] (its guess that
//!   an event will meet a same-second tie, so that it parses the whole object beside the writer)
//!   and [`ingest::store::store_event`], the one function that stores an event.
//! - [`forward`]: forwarding to the shop's app (its module doc lists its files): `queue` makes the
//!   `deliveries` rows in the event's transaction (through `ingest::store::Effects`) and keeps each
//!   lane (object) in the mirror's order; `lease` claims due lane heads and writes outcomes as
//!   writer closures; `sender` POSTs; `schedule` classifies answers and spaces retries; `dispatch`
//!   runs the threads ([`forward::Forwarder`]); `redeliver`; `views` for the admin and the CLI.
//! - [`admin`]: the admin listener (its module doc lists the pages).
//! - [`ops`]: [`ops::backup`], [`ops::restore`] (sharing [`ops::copy`]), [`ops::retention`],
//!   [`ops::export`]; each returns a report and never prints.
//! - [`stripe_api`]: calls to Stripe's API: the client ([`stripe_api::client`], with
//!   [`stripe_api::retry`] and the shared [`stripe_api::limiter`]), [`stripe_api::backfill`],
//!   [`stripe_api::reconcile`], [`stripe_api::refetch`], [`stripe_api::connect`], the control
//!   endpoint a CLI command hands its work to ([`stripe_api::control`], [`stripe_api::work`]), what
//!   `serve` runs on a schedule ([`stripe_api::schedule`]); each returns a report and never prints.
//! - [`service`]: [`service::Service`] starts the parts in order and stops them without loss.
//! - [`cli`]: argv → one subcommand file each, [`cli::options`] (the one parser),
//!   [`cli::progress`] (the one progress bar).
//! - `testkit` (tests and the `testkit` feature only, never in the release binary): the event
//!   streams of the mirror's property tests, a temp dir removed on drop, and the fuzz targets'
//!   bodies (`testkit::fuzz`, run by `fuzz/` and by the corpus replay in `cargo test`).
//!
//! Dependencies point one way: cli → service → ingest / admin / ops / forward / stripe_api → mirror
//! → store → leaves (ingest and admin use forward; forward uses neither; stripe_api uses ingest's
//! store path and ops' progress; admin shows stripe_api's status).
//!
//! ## Invariants
//!
//! - Only the writer thread writes while a server runs. `store::open` is the only module allowed
//!   to call `Connection::open*` (clippy `disallowed-methods`); readers are `query_only`; the
//!   checkpointer's connection is `query_only` too (it copies committed WAL pages into the file;
//!   SQLite refuses that to a read-only-opened connection), and the RESTART it asks for runs on
//!   the writer's connection; `serve` holds `<db>.lock` so a second
//!   server refuses to start. A command writes only while it holds that lock (`replay --rebuild`,
//!   `check`'s migration and mirror comparison, `restore`, `prune`); `backup` and `export` only
//!   read. `backfill`, `reconcile`, `refetch` and `connect` hand their work to the server holding
//!   the lock (over `/control/` with the token of `<db>.control`, mode 0600, loopback only), or
//!   take the lock themselves.
//! - Every new event enters the database through [`ingest::store::store_event`]; retention's
//!   re-insert of a pruned row (`ops::retention`) is the one other statement that adds an `events`
//!   row, and it moves an existing row rather than storing an event.
//! - A 2xx to Stripe means the event's transaction has committed with `synchronous=FULL`. Any
//!   storage trouble answers 503 with `Retry-After`, never 2xx.
//! - A rejected request (signature, body, method, path, size) writes nothing.
//! - `events` is ground truth: the raw body bytes exactly as received, one row per event id;
//!   repeated deliveries only increment `deliveries`. Pruned events keep their row with an empty
//!   `body`; a real body is never empty.
//! - `objects` is derived state: `replay --rebuild` re-creates it from `events` and `fetched`
//!   (what Stripe's API returned, ground truth too), and the projection converges to the same
//!   mirror for any delivery order and duplicates (the property tests, which go through
//!   `store_event`; one also drops events and backfills). A projection error never loses an event:
//!   it is stored with decision `projection_failed`.
//! - Requests to Stripe go only to `[stripe] api_base` (no redirects, no proxy from the
//!   environment); a POST carries one idempotency key for all its retries, a GET never one; no
//!   error or log line carries the API key.
//! - `event`, `mirror`'s rules, `admin::html`, `admin::form`, `format` and `time` (but for
//!   [`time::now_ms`]) are pure: no I/O, the clock is passed in.
//! - The admin never writes except through the writer; every value it shows is HTML-escaped; every
//!   POST it takes carries a CSRF token; without a password its pages need the one-time login
//!   link's session, unless the owner set `open_on_loopback` (loopback only, no proxies). No
//!   request header decides who may see a page.
//! - `X-Forwarded-For` is believed only from a peer in `trusted_proxies`; the client address it
//!   gives ([`http::Request::client`]) is what the per-address limits and the login limits count.
//! - Every parser of outside input is total (no panic on any bytes) and has a fuzz target
//!   (`fuzz/`); the corpus is replayed by `cargo test`.
//! - Schema changes are appended as numbered steps to `schema.sql`, never edited; a database from a
//!   newer build is refused.
//! - A delivery to the app exists only for a stored event (one transaction; a repeated delivery
//!   from Stripe makes none). Per (destination, object) at most one is in flight under a live lease,
//!   and only the lane's head is claimed; a delivery is `done` only after the app's 2xx was
//!   committed. Retention never empties the body of an event whose delivery is not `done`.
//! - No unsafe code but two audited places: `sync_file_range` in [`store::writeback`], which only
//!   starts and awaits writeback of pages already in the page cache (it promises no durability),
//!   and the WAL-gathering VFS in `store::walbuf` (SQLite's C interface), only for the writer's
//!   connection: a commit is written out as soon as its commit frame is whole, before SQLite
//!   syncs or publishes it, and every sync, read, size, truncate, file control and close of the
//!   WAL writes out what is held first, so no reader and no answer depends on bytes still held.

#![deny(unsafe_code)]

pub mod admin;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod error;
pub mod event;
pub mod format;
pub mod forward;
pub mod histogram;
pub mod http;
pub mod ingest;
pub mod mirror;
pub mod ops;
pub mod periodic;
pub mod service;
pub mod store;
pub mod stripe_api;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
pub mod time;
