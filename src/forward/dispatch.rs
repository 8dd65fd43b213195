//! The forwarding threads: per destination one dispatcher and `max_in_flight` senders.
//!
//! The dispatcher sleeps until something may be due (the earliest head a claim saw, a new
//! delivery's settle time the store path signals, a sender's freed slot), then claims due heads
//! through the writer, as many as it has free senders (at most [`CLAIM_BATCH`] at a time), and
//! hands each to a free sender. Each sender owns one slot, and its lease owner is this process's
//! random id and that slot. A sender reads the event's body on its own read-only connection, signs
//! and POSTs it ([`super::sender`]), classifies the answer ([`super::schedule`]) and writes the
//! outcome through the writer, which releases the lease: on success, on every error, and when the
//! POST panics (caught). A destination that keeps failing is paused as a whole and probed one
//! attempt at a time ([`Health`]) until it answers again. Nothing here writes but through the writer, and a claim or an outcome is a
//! few rows, so forwarding never holds the writer long whatever the app does.
//!
//! Shutdown ([`Forwarder::stop`]): the dispatchers stop claiming; each sender finishes the attempt
//! it has (bounded by the destination's `timeout_secs`) and writes its outcome; then the threads
//! end. The caller stops the writer after that, so those outcomes are committed.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension};

use crate::config::forward::Forward;
use crate::crypto;
use crate::error::{Error, Result};
use crate::forward::lease::{claim, finish, Claimed, Outcome};
use crate::forward::queue::retire_unconfigured;
use crate::forward::route::{Route, Routes};
use crate::forward::schedule::{
    class_of_status, parse_retry_after, Change, Class, Health, Policy, FAILS_TO_PAUSE,
};
use crate::forward::sender::{headers, Answer, Sender};
use crate::forward::views;
use crate::store;
use crate::store::writer::WriterHandle;
use crate::time::now_ms;

/// The most deliveries one claim takes.
pub const CLAIM_BATCH: usize = 32;
/// A lease lasts the attempt's time limit plus this: long enough for the outcome to reach the
/// writer after the attempt timed out, short enough that a killed process holds no object long.
pub const LEASE_MARGIN_MS: i64 = 2_000;
/// How often the dispatcher counts its destination's rows for the `/metrics` gauges.
const GAUGES_EVERY_MS: i64 = 5_000;
/// How long a sender keeps trying to write an outcome while the writer is busy or failing, before
/// it leaves the lease to expire (the delivery is then attempted again: at least once).
const OUTCOME_RETRY_FOR: Duration = Duration::from_secs(30);

/// One attempt, as a destination sends it: the body and headers to an answer. A seam for tests;
/// in `serve` it is [`Sender::post`].
pub type SendFn = Arc<dyn Fn(&[u8], &[(&'static str, String)]) -> Answer + Send + Sync>;

/// A destination ready to start: its config, its secret, and how it sends.
pub struct Destination {
    pub config: Forward,
    pub secret: String,
    pub send: SendFn,
}

/// The running forwarding threads.
pub struct Forwarder {
    routes: Arc<Routes>,
    threads: Vec<JoinHandle<()>>,
}

/// What a destination's threads share.
struct Ctx {
    routes: Arc<Routes>,
    /// Index of this destination in `routes`.
    index: usize,
    config: Forward,
    secret: String,
    send: SendFn,
    policy: Policy,
    writer: WriterHandle,
    database: PathBuf,
    /// This process's lease-owner prefix.
    process: String,
    /// Slots whose sender is idle.
    free: Mutex<Vec<usize>>,
    /// Whether the destination as a whole answers (paused after failures in a row).
    health: Mutex<Health>,
}

impl Ctx {
    fn route(&self) -> &Route {
        &self.routes.list[self.index]
    }

    fn lease_ms(&self) -> i64 {
        i64::try_from(self.config.timeout_secs)
            .unwrap_or(i64::MAX / 2000)
            .saturating_mul(1000)
            .saturating_add(LEASE_MARGIN_MS)
    }
}

/// The destinations of these `[[forward]]` blocks, each with its secret (read now: `serve` reads
/// every secret before it takes the database) and a [`Sender`]. `file` is the config file, for
/// error messages.
pub fn destinations(config: &[Forward], file: &Path) -> Result<Vec<Destination>> {
    let mut out = Vec::with_capacity(config.len());
    for f in config {
        let secret = f.signing_secret(file)?;
        let sender = Sender::new(&f.url, Duration::from_secs(f.timeout_secs));
        out.push(Destination {
            config: f.clone(),
            secret,
            send: Arc::new(move |body: &[u8], h: &[(&'static str, String)]| sender.post(body, h)),
        });
    }
    Ok(out)
}

impl Forwarder {
    /// Starts the threads of these destinations (none: no threads); each must have a route of
    /// its name.
    pub fn start(
        routes: Arc<Routes>,
        destinations: Vec<Destination>,
        writer: WriterHandle,
        database: &Path,
    ) -> Result<Forwarder> {
        let configured: Vec<String> = destinations.iter().map(|d| d.config.name.clone()).collect();
        let retired = writer.run(move |conn| retire_unconfigured(conn, &configured, now_ms()))?;
        for (destination, n) in retired {
            log::warn!(
                "forward destination={destination}: {n} deliveries were waiting for it and it is \
                 no longer in the config; marked dead (to send them there, put its [[forward]] \
                 block back and retry the dead ones on the admin's Deliveries page; an event's \
                 page can send it to another destination)"
            );
        }
        let process = crypto::to_hex(&crypto::random_bytes::<6>()?);
        let mut forwarder = Forwarder {
            routes: routes.clone(),
            threads: Vec::new(),
        };
        for d in destinations {
            let Some(index) = routes.list.iter().position(|r| r.name == d.config.name) else {
                return Err(Error::NotFound {
                    what: format!("forward destination {}: no route", d.config.name),
                });
            };
            let slots = d.config.max_in_flight;
            let url = d.config.url.clone();
            let ctx = Arc::new(Ctx {
                routes: routes.clone(),
                index,
                policy: Policy::of(&d.config),
                config: d.config,
                secret: d.secret,
                send: d.send,
                writer: writer.clone(),
                database: database.to_path_buf(),
                process: process.clone(),
                free: Mutex::new((0..slots).rev().collect()),
                health: Mutex::new(Health::default()),
            });
            let name = ctx.config.name.clone();
            let mut jobs = Vec::with_capacity(slots);
            for slot in 0..slots {
                let (tx, rx) = mpsc::sync_channel::<Claimed>(1);
                jobs.push(tx);
                let ctx = ctx.clone();
                let thread = std::thread::Builder::new()
                    .name(format!("forward-{name}-{slot}"))
                    .stack_size(512 * 1024)
                    .spawn(move || sender_loop(&ctx, slot, rx))
                    .map_err(|e| Error::io("spawn forward sender thread", e))?;
                forwarder.threads.push(thread);
            }
            let thread = std::thread::Builder::new()
                .name(format!("forward-{name}"))
                .spawn(move || dispatcher_loop(&ctx, jobs))
                .map_err(|e| Error::io("spawn forward dispatcher thread", e))?;
            forwarder.threads.push(thread);
            log::info!(
                "forwarding destination={name} url={} events={:?} max_in_flight={slots}",
                without_userinfo(&url),
                routes.list[index].patterns,
            );
        }
        Ok(forwarder)
    }

    /// Stops claiming, lets every attempt under way finish (each within its destination's time
    /// limit) and write its outcome, and ends the threads.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        for route in &self.routes.list {
            route.signal.stop();
        }
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                log::error!("a forwarding thread panicked");
            }
        }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.halt();
    }
}

/// `url` without a `user:password@` part, for the log.
fn without_userinfo(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let host_end = rest.find('/').unwrap_or(rest.len());
            match rest[..host_end].rfind('@') {
                Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
                None => url.to_string(),
            }
        }
        None => url.to_string(),
    }
}

/// The dispatcher: claim what is due for the free senders, then sleep until something may be.
fn dispatcher_loop(ctx: &Ctx, jobs: Vec<SyncSender<Claimed>>) {
    let route = ctx.route();
    let name = ctx.config.name.clone();
    let mut next_due = i64::MIN;
    let mut gauges_at = i64::MIN;
    let mut reader: Option<Connection> = None;
    loop {
        if route.signal.stopped() {
            break;
        }
        let now = now_ms();
        if now >= gauges_at {
            refresh_gauges(ctx, &mut reader);
            gauges_at = now.saturating_add(GAUGES_EVERY_MS);
        }
        let free: Vec<usize> = ctx.free.lock().expect("forward slots poisoned").clone();
        let in_flight = route.stats.in_flight.load(Ordering::Relaxed);
        let allowed = ctx
            .health
            .lock()
            .expect("forward health poisoned")
            .allowance(now, free.len(), in_flight);
        if allowed > 0 && next_due <= now {
            let take = allowed.min(CLAIM_BATCH);
            // The slots used last are at the end: take from there, so idle senders stay idle.
            let slots: Vec<usize> = free[free.len() - take..].iter().rev().copied().collect();
            let owners: Vec<String> = slots
                .iter()
                .map(|s| format!("{}.{s}", ctx.process))
                .collect();
            let destination = name.clone();
            let lease_ms = ctx.lease_ms();
            match ctx
                .writer
                .run(move |conn| claim(conn, &destination, &owners, now, lease_ms))
            {
                Ok(c) => {
                    let full = c.claimed.len() == take;
                    if !c.claimed.is_empty() {
                        ctx.health
                            .lock()
                            .expect("forward health poisoned")
                            .probe_started();
                    }
                    for (job, slot) in c.claimed.into_iter().zip(&slots) {
                        ctx.free
                            .lock()
                            .expect("forward slots poisoned")
                            .retain(|s| s != slot);
                        route.stats.in_flight.fetch_add(1, Ordering::Relaxed);
                        if jobs[*slot].send(job).is_err() {
                            log::error!("forward destination={name}: sender {slot} is gone");
                        }
                    }
                    if full {
                        next_due = now;
                        continue;
                    }
                    next_due = c.next_due.unwrap_or(i64::MAX);
                }
                Err(e) => {
                    log::warn!("forward destination={name}: claim: {e}; trying again in 1 s");
                    next_due = now.saturating_add(1000);
                }
            }
        }
        // Asleep until the next due time (only if a sender is free to take it), the gauges, a
        // poke or stop.
        let idle = !ctx.free.lock().expect("forward slots poisoned").is_empty();
        let resume = ctx
            .health
            .lock()
            .expect("forward health poisoned")
            .resume_at();
        let until = match (idle, resume) {
            (false, _) => gauges_at,
            (true, None) => next_due.min(gauges_at),
            // Paused: the next due time counts only once the pause is over.
            (true, Some(at)) => next_due.max(at).min(gauges_at),
        };
        let woke = route.signal.wait(until, now_ms);
        if woke.stop {
            break;
        }
        if woke.poked || woke.due {
            next_due = next_due.min(now_ms());
        }
    }
    // Dropping `jobs` ends each sender once it has finished what it holds.
    drop(jobs);
}

/// Refreshes the pending and dead gauges (a few index ranges on a read-only connection).
fn refresh_gauges(ctx: &Ctx, reader: &mut Option<Connection>) {
    if reader.is_none() {
        match store::open_read_only(&ctx.database) {
            Ok(conn) => *reader = Some(conn),
            Err(e) => {
                log::debug!("forward: gauges: {e}");
                return;
            }
        }
    }
    let Some(conn) = reader.as_ref() else { return };
    let route = ctx.route();
    match views::counts_of(conn, &route.name) {
        Ok(c) => {
            let stats = &route.stats;
            stats
                .pending
                .store(c.pending.max(0) as u64, Ordering::Relaxed);
            stats
                .dead_rows
                .store(c.dead.max(0) as u64, Ordering::Relaxed);
            stats
                .oldest_pending_ms
                .store(c.oldest_waiting_ms.unwrap_or(0), Ordering::Relaxed);
        }
        Err(e) => log::debug!("forward: gauges: {e}"),
    }
}

/// A sender: one slot, one attempt at a time.
fn sender_loop(ctx: &Ctx, slot: usize, jobs: Receiver<Claimed>) {
    let mut reader: Option<Connection> = None;
    while let Ok(job) = jobs.recv() {
        let outcome = attempt(ctx, &mut reader, &job);
        let stats = &ctx.route().stats;
        stats.latency.observe(outcome.latency_ms.max(0) as u64);
        match outcome.class {
            Class::Done => stats.done.fetch_add(1, Ordering::Relaxed),
            Class::Retry => stats.retried.fetch_add(1, Ordering::Relaxed),
            Class::Dead => stats.dead.fetch_add(1, Ordering::Relaxed),
        };
        log_outcome(ctx, &job, &outcome);
        let random = u64::from_le_bytes(crypto::random_bytes::<8>().unwrap_or([3; 8]));
        let change = ctx.health.lock().expect("forward health poisoned").record(
            outcome.status,
            now_ms(),
            &ctx.policy,
            random,
        );
        match change {
            Some(Change::Paused { wait_ms }) => log::warn!(
                "forward destination={}: {} attempts in a row failed (last: {}); sending one at a \
                 time until it answers, next in {:.1} s",
                ctx.config.name,
                FAILS_TO_PAUSE,
                outcome.error.as_deref().unwrap_or("no answer"),
                wait_ms as f64 / 1000.0
            ),
            Some(Change::Resumed) => log::info!(
                "forward destination={}: answering again; back to {} at a time",
                ctx.config.name,
                ctx.config.max_in_flight
            ),
            None => {}
        }
        store_outcome(ctx, outcome);
        stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        ctx.free.lock().expect("forward slots poisoned").push(slot);
        ctx.route().signal.poke();
    }
}

/// One attempt of one claimed delivery, to its outcome. Never panics: a panic in the POST is
/// caught and is a failed attempt like any other.
fn attempt(ctx: &Ctx, reader: &mut Option<Connection>, job: &Claimed) -> Outcome {
    let started_at = now_ms();
    let clock = Instant::now();
    let answer = match read_event(ctx, reader, &job.event_id) {
        Err(e) => Answer {
            status: None,
            retry_after: None,
            error: Some(format!("read the event: {e}")),
        },
        Ok(None) => return dead(job, started_at, "the event is no longer stored"),
        Ok(Some((body, _))) if body.is_empty() => {
            return dead(job, started_at, "the event's body was pruned by retention")
        }
        Ok(Some((body, decision))) => {
            let h = headers(
                &body,
                &ctx.secret,
                now_ms().div_euclid(1000),
                job.attempt,
                decision.as_deref().unwrap_or("none"),
                &job.event_id,
            );
            let send = &ctx.send;
            match catch_unwind(AssertUnwindSafe(|| send(&body, &h))) {
                Ok(answer) => answer,
                Err(panic) => Answer {
                    status: None,
                    retry_after: None,
                    error: Some(format!("sender panicked: {}", panic_text(&panic))),
                },
            }
        }
    };
    let latency_ms = clock.elapsed().as_millis().min(i64::MAX as u128) as i64;
    let now = now_ms();
    let mut class = answer.status.map_or(Class::Retry, class_of_status);
    let mut error = answer.error;
    let mut retry_at = None;
    if class == Class::Retry {
        let retry_after = answer
            .retry_after
            .as_deref()
            .and_then(|v| parse_retry_after(v, now));
        let random = u64::from_le_bytes(crypto::random_bytes::<8>().unwrap_or([7; 8]));
        retry_at = ctx
            .policy
            .next_attempt(job.attempt, now, job.retry_from, retry_after, random);
        if retry_at.is_none() {
            class = Class::Dead;
            error = Some(format!(
                "{}; retried for {}, giving up",
                error.as_deref().unwrap_or("failed"),
                ctx.config.retry_for
            ));
        }
    }
    Outcome {
        id: job.id,
        owner: job.owner.clone(),
        attempt: job.attempt,
        started_at,
        latency_ms,
        status: answer.status,
        error,
        class,
        retry_at,
    }
}

fn dead(job: &Claimed, started_at: i64, why: &str) -> Outcome {
    Outcome {
        id: job.id,
        owner: job.owner.clone(),
        attempt: job.attempt,
        started_at,
        latency_ms: 0,
        status: None,
        error: Some(why.to_string()),
        class: Class::Dead,
        retry_at: None,
    }
}

/// The event's body and decision, on this sender's read-only connection.
fn read_event(
    ctx: &Ctx,
    reader: &mut Option<Connection>,
    event_id: &str,
) -> Result<Option<(Vec<u8>, Option<String>)>> {
    if reader.is_none() {
        *reader = Some(store::open_read_only(&ctx.database)?);
    }
    let Some(conn) = reader.as_ref() else {
        return Err(Error::Unavailable("no read connection".into()));
    };
    conn.prepare_cached("SELECT body, decision FROM events WHERE id = ?1")
        .and_then(|mut s| {
            s.query_row([event_id], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })
        .map_err(|e| Error::sqlite(format!("read event {event_id}"), e))
}

/// Writes an outcome through the writer, trying again while it is busy or failing.
fn store_outcome(ctx: &Ctx, outcome: Outcome) {
    let deadline = Instant::now() + OUTCOME_RETRY_FOR;
    let mut pause = Duration::from_millis(20);
    loop {
        let o = outcome.clone();
        match ctx.writer.run(move |conn| finish(conn, &o, now_ms())) {
            Ok(true) => return,
            Ok(false) => {
                log::warn!(
                    "forward destination={} delivery={} attempt={}: the lease had expired and the \
                     delivery was claimed again; this attempt is recorded, the row left to its holder",
                    ctx.config.name,
                    outcome.id,
                    outcome.attempt
                );
                return;
            }
            Err(e) if Instant::now() < deadline => {
                log::debug!("forward: write outcome: {e}; trying again");
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            Err(e) => {
                log::error!(
                    "forward destination={} delivery={}: write outcome: {e}; the lease expires \
                     and the delivery is attempted again",
                    ctx.config.name,
                    outcome.id
                );
                return;
            }
        }
    }
}

fn log_outcome(ctx: &Ctx, job: &Claimed, o: &Outcome) {
    let status = o.status.map_or("-".to_string(), |s| s.to_string());
    let line = format!(
        "forward destination={} event={} attempt={} status={status} outcome={} ms={}",
        ctx.config.name,
        job.event_id,
        job.attempt,
        o.class.as_str(),
        o.latency_ms
    );
    match o.class {
        Class::Done => log::debug!("{line}"),
        Class::Retry => log::info!("{line} error={:?}", o.error.as_deref().unwrap_or("")),
        Class::Dead => log::warn!("{line} error={:?}", o.error.as_deref().unwrap_or("")),
    }
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{envelope, testevent};
    use crate::forward::route::Stats;
    use crate::ingest::store::{store_event, Effects, Ingest, Source};
    use crate::store::writer::{Writer, WriterConfig};
    use crate::testkit::TempDir;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn a_panicking_sender_releases_its_lease_and_the_delivery_is_retried() {
        let dir = TempDir::new("forward-panic");
        let db = dir.path().join("p.db");
        let writer = Writer::start(
            store::open_writer(&db).unwrap(),
            WriterConfig {
                queue_capacity: 64,
                max_batch: 16,
            },
        )
        .unwrap();
        let config = Forward {
            name: "app".into(),
            url: "http://127.0.0.1:9/".into(),
            secret: Some("whsec_x".into()),
            settle_ms: 0,
            min_backoff_ms: 20,
            ..Forward::default()
        };
        let routes = Arc::new(Routes::from_config(std::slice::from_ref(&config)));
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let send: SendFn = Arc::new(move |_body: &[u8], h: &[(&'static str, String)]| {
            assert!(h.iter().any(|(n, _)| *n == "Stripe-Signature"));
            if counted.fetch_add(1, Ordering::SeqCst) == 0 {
                panic!("boom");
            }
            Answer {
                status: Some(204),
                retry_after: None,
                error: None,
            }
        });
        let forwarder = Forwarder::start(
            routes.clone(),
            vec![Destination {
                config,
                secret: "whsec_x".into(),
                send,
            }],
            writer.handle(),
            &db,
        )
        .unwrap();
        let body =
            serde_json::to_vec(&testevent::build("customer.updated", 1_700_000_000).unwrap())
                .unwrap();
        let ingest = Ingest {
            envelope: envelope::parse(&body).unwrap(),
            body,
            secret_index: Some(0),
            received_at_ms: now_ms(),
            source: Source::Webhook,
        };
        let effects = Effects {
            forward: routes.clone(),
            ..Effects::default()
        };
        writer
            .handle()
            .run(move |conn| store_event(conn, &ingest, &effects))
            .unwrap();
        let reader = store::open_read_only(&db).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let state: String = reader
                .query_row("SELECT state FROM deliveries", [], |r| r.get(0))
                .unwrap();
            if state == "done" {
                break;
            }
            assert!(Instant::now() < deadline, "still {state}");
            std::thread::sleep(Duration::from_millis(10));
        }
        forwarder.stop();
        let attempts: Vec<(i64, String, Option<String>)> = reader
            .prepare("SELECT attempt, outcome, error FROM delivery_attempts ORDER BY attempt")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(attempts.len(), 2, "{attempts:?}");
        assert_eq!((attempts[0].0, attempts[0].1.as_str()), (1, "retry"));
        assert_eq!(attempts[0].2.as_deref(), Some("sender panicked: boom"));
        assert_eq!((attempts[1].0, attempts[1].1.as_str()), (2, "done"));
        let stats = &routes.list[0].stats;
        assert_eq!(
            (Stats::load(&stats.retried), Stats::load(&stats.done)),
            (1, 1)
        );
        assert_eq!(Stats::load(&stats.in_flight), 0);
        writer.stop();
    }

    #[test]
    fn the_log_never_shows_credentials_in_a_url() {
        assert_eq!(
            without_userinfo("https://u:p@shop.example/hook"),
            "https://shop.example/hook"
        );
        assert_eq!(
            without_userinfo("http://127.0.0.1:3000/a@b"),
            "http://127.0.0.1:3000/a@b"
        );
        assert_eq!(without_userinfo("http://x/"), "http://x/");
    }
}
