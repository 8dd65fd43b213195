//! The writer thread: the one read-write connection, group commit, and replies after COMMIT.
//!
//! HTTP worker threads (and, later, the forwarder, the Stripe API client and admin actions) never
//! write; they send a message to this thread and wait for its answer. The thread takes whatever is
//! queued (up to `max_batch`), applies it all in ONE transaction, commits (WAL, `synchronous=FULL`,
//! so COMMIT returns only when the WAL is on disk), and only then answers every waiter. Many
//! requests thus share one fsync, which makes throughput almost independent of the disk's speed.
//! Under load (the previous commit under 5 ms ago) it waits up to 250 µs for more before it
//! begins, since events that share a commit share the pages it writes.
//!
//! Each message runs inside its own SAVEPOINT, so one bad message fails alone; a failed COMMIT fails
//! the whole batch and every waiter hears so (the HTTP layer turns that into 503: Stripe retries).
//! The queue is bounded: when it is full, callers get [`Error::Unavailable`] at once rather than
//! piling up threads.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};

use crate::admin::metrics::{Histogram, BATCH_BOUNDS, COMMIT_MICROS_BOUNDS};
use crate::error::{Error, Result};
use crate::event::envelope::Envelope;
use crate::{mirror::project, mirror::replay};

/// A commit less than this long ago means the writer is under load.
const BUSY_WINDOW: Duration = Duration::from_millis(5);

/// How long a writer under load waits for more events before it commits. Measured at a fixed
/// 3,000 events/s (examples/loadgen.rs): without it nearly every event had a commit of its own,
/// the server wrote about 60 KB to disk per 2 KB event, and fsync stalls of 100+ ms set a p99 of
/// 90-135 ms; with 250 µs the p99 was 20 ms. Idle, events are committed at once.
const LINGER: Duration = Duration::from_micros(250);

/// Where an event came from (stored in `events.source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Webhook,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Webhook => "webhook",
        }
    }
}

/// A verified event on its way to disk.
#[derive(Debug)]
pub struct Ingest {
    pub envelope: Envelope,
    /// The raw body exactly as received.
    pub body: Vec<u8>,
    pub secret_index: Option<usize>,
    /// Unix milliseconds when the request arrived.
    pub received_at_ms: i64,
    pub source: Source,
}

/// What happened to an ingested event, known only after COMMIT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A new row, at this arrival sequence number.
    Stored { seq: i64 },
    /// The id was known; `deliveries` is the new delivery count.
    Duplicate { deliveries: i64 },
}

/// A unit of work other than an event: runs on the writer inside the batch's transaction.
/// It receives the writer connection with a transaction (and a savepoint for it) open.
pub type Task = Box<dyn FnOnce(&Connection) -> Result<()> + Send>;

enum Msg {
    Ingest(Box<Ingest>, SyncSender<Result<Outcome>>),
    Task(Task, SyncSender<Result<()>>),
    Stop,
}

/// Counters the writer keeps; read by the admin listener and logged at exit.
#[derive(Debug)]
pub struct Stats {
    pub commits: AtomicU64,
    pub events: AtomicU64,
    pub duplicates: AtomicU64,
    pub failed: AtomicU64,
    pub max_batch: AtomicU64,
    /// Messages sent but not yet taken by the writer.
    pub queued: AtomicUsize,
    /// Total microseconds spent in COMMIT.
    pub commit_micros: AtomicU64,
    /// The longest COMMIT, in microseconds.
    pub commit_micros_max: AtomicU64,
    /// COMMITs that took over 5 ms (a slow disk, or a checkpoint inside the commit).
    pub slow_commits: AtomicU64,
    /// How long each COMMIT took, in microseconds (for `/metrics`).
    pub commit_latency: Histogram<12>,
    /// Messages per committed transaction (for `/metrics`).
    pub batch_size: Histogram<10>,
}

impl Default for Stats {
    fn default() -> Stats {
        Stats {
            commits: AtomicU64::new(0),
            events: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            max_batch: AtomicU64::new(0),
            queued: AtomicUsize::new(0),
            commit_micros: AtomicU64::new(0),
            commit_micros_max: AtomicU64::new(0),
            slow_commits: AtomicU64::new(0),
            commit_latency: Histogram::new(COMMIT_MICROS_BOUNDS),
            batch_size: Histogram::new(BATCH_BOUNDS),
        }
    }
}

/// Settings for [`Writer::start`].
#[derive(Debug, Clone, Copy)]
pub struct WriterConfig {
    pub queue_capacity: usize,
    pub max_batch: usize,
}

/// The running writer thread.
pub struct Writer {
    handle: WriterHandle,
    thread: Option<JoinHandle<()>>,
}

/// A cheap, cloneable way to hand work to the writer.
#[derive(Clone)]
pub struct WriterHandle {
    tx: SyncSender<Msg>,
    stats: Arc<Stats>,
}

impl Writer {
    /// Starts the writer thread on `conn`, which must be the migrated writer connection.
    pub fn start(conn: Connection, config: WriterConfig) -> Result<Writer> {
        let next_seq: i64 = conn
            .query_row("SELECT COALESCE(MAX(seq), 0) + 1 FROM events", [], |r| {
                r.get(0)
            })
            .map_err(|e| Error::sqlite("read next event sequence", e))?;
        let (tx, rx) = mpsc::sync_channel(config.queue_capacity);
        let stats = Arc::new(Stats::default());
        let mut state = State {
            conn,
            next_seq,
            max_batch: config.max_batch.max(1),
            stats: stats.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("writer".into())
            .spawn(move || state.run(rx))
            .map_err(|e| Error::io("spawn writer thread", e))?;
        Ok(Writer {
            handle: WriterHandle { tx, stats },
            thread: Some(thread),
        })
    }

    pub fn handle(&self) -> WriterHandle {
        self.handle.clone()
    }

    /// Finishes everything queued before this call, commits it, and ends the thread.
    pub fn stop(mut self) {
        // A blocking send: the queue may be full, and Stop must come after what is already in it.
        let _ = self.handle.tx.send(Msg::Stop);
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                log::error!("writer thread panicked");
            }
        }
        let s = &self.handle.stats;
        log::info!(
            "writer stats: commits={} events={} duplicates={} failed={} max_batch={} commit_ms_total={} \
             commit_ms_max={:.1} slow_commits={}",
            s.commits.load(Ordering::Relaxed),
            s.events.load(Ordering::Relaxed),
            s.duplicates.load(Ordering::Relaxed),
            s.failed.load(Ordering::Relaxed),
            s.max_batch.load(Ordering::Relaxed),
            s.commit_micros.load(Ordering::Relaxed) / 1000,
            s.commit_micros_max.load(Ordering::Relaxed) as f64 / 1000.0,
            s.slow_commits.load(Ordering::Relaxed),
        );
    }
}

impl WriterHandle {
    /// Stores an event and waits until it is committed. Fails with [`Error::Unavailable`] when the
    /// queue is full or the writer is gone, and with the database error when the write failed.
    pub fn ingest(&self, ingest: Ingest) -> Result<Outcome> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.send(Msg::Ingest(Box::new(ingest), reply))?;
        answer
            .recv()
            .map_err(|_| Error::Unavailable("writer stopped before answering".into()))?
    }

    /// Runs `task` inside a writer transaction and waits for its COMMIT.
    pub fn run(&self, task: Task) -> Result<()> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.send(Msg::Task(task, reply))?;
        answer
            .recv()
            .map_err(|_| Error::Unavailable("writer stopped before answering".into()))?
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    fn send(&self, msg: Msg) -> Result<()> {
        self.stats.queued.fetch_add(1, Ordering::Relaxed);
        match self.tx.try_send(msg) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.stats.queued.fetch_sub(1, Ordering::Relaxed);
                Err(Error::Unavailable(match e {
                    TrySendError::Full(_) => "queue full".into(),
                    TrySendError::Disconnected(_) => "writer stopped".into(),
                }))
            }
        }
    }
}

/// What the writer thread owns.
struct State {
    conn: Connection,
    next_seq: i64,
    max_batch: usize,
    stats: Arc<Stats>,
}

/// A message's result, kept until COMMIT decides whether it stands.
enum Pending {
    Ingest(SyncSender<Result<Outcome>>, Result<Outcome>),
    Task(SyncSender<Result<()>>, Result<()>),
}

impl State {
    fn run(&mut self, rx: Receiver<Msg>) {
        let mut batch = Vec::with_capacity(self.max_batch);
        let mut stop = false;
        let mut last_commit = Instant::now() - BUSY_WINDOW;
        while !stop {
            // Wait for the first message, then take whatever else is already queued.
            match rx.recv() {
                Ok(msg) => batch.push(msg),
                Err(_) => break,
            }
            // Under load (the last commit was moments ago), wait a little for company: every
            // commit writes each page it touched in full, so events that share a commit share
            // pages, and the disk sees a fraction of the bytes. Idle, commit at once.
            let linger = if last_commit.elapsed() < BUSY_WINDOW {
                LINGER
            } else {
                Duration::ZERO
            };
            let until = Instant::now() + linger;
            while batch.len() < self.max_batch {
                let left = until.saturating_duration_since(Instant::now());
                let next = if left.is_zero() {
                    rx.try_recv().ok()
                } else {
                    rx.recv_timeout(left).ok()
                };
                match next {
                    Some(msg) => {
                        let stop = matches!(msg, Msg::Stop);
                        batch.push(msg);
                        if stop {
                            break;
                        }
                    }
                    None => break,
                }
            }
            last_commit = Instant::now();
            self.stats.queued.fetch_sub(
                batch.iter().filter(|m| !matches!(m, Msg::Stop)).count(),
                Ordering::Relaxed,
            );
            if batch.iter().any(|m| matches!(m, Msg::Stop)) {
                stop = true;
            }
            self.commit_batch(&mut batch);
        }
    }

    fn commit_batch(&mut self, batch: &mut Vec<Msg>) {
        let mut pending = Vec::with_capacity(batch.len());
        let result = self.apply_batch(batch, &mut pending);
        // If the transaction could not even begin, the messages are still in the batch: they fail.
        for msg in batch.drain(..) {
            match msg {
                Msg::Ingest(_, reply) => pending.push(Pending::Ingest(
                    reply,
                    Err(Error::Unavailable(String::new())),
                )),
                Msg::Task(_, reply) => {
                    pending.push(Pending::Task(reply, Err(Error::Unavailable(String::new()))))
                }
                Msg::Stop => {}
            }
        }
        let ok = match result {
            Ok(n) if n > 0 => {
                self.stats.commits.fetch_add(1, Ordering::Relaxed);
                self.stats.max_batch.fetch_max(n as u64, Ordering::Relaxed);
                true
            }
            Ok(_) => true,
            Err(ref e) => {
                log::error!(
                    "writer commit failed: {e}; {} request(s) answered unavailable",
                    pending.len()
                );
                if !self.conn.is_autocommit() {
                    let _ = self.conn.execute_batch("ROLLBACK");
                }
                false
            }
        };
        // Answer every waiter, now that the outcome is durable (or known to have failed).
        for p in pending {
            match p {
                Pending::Ingest(reply, outcome) => {
                    let outcome = if ok {
                        outcome
                    } else {
                        Err(Error::Unavailable("database write failed".into()))
                    };
                    match &outcome {
                        Ok(Outcome::Stored { .. }) => {
                            self.stats.events.fetch_add(1, Ordering::Relaxed)
                        }
                        Ok(Outcome::Duplicate { .. }) => {
                            self.stats.duplicates.fetch_add(1, Ordering::Relaxed)
                        }
                        Err(_) => self.stats.failed.fetch_add(1, Ordering::Relaxed),
                    };
                    let _ = reply.send(outcome);
                }
                Pending::Task(reply, outcome) => {
                    let outcome = if ok {
                        outcome
                    } else {
                        Err(Error::Unavailable("database write failed".into()))
                    };
                    let _ = reply.send(outcome);
                }
            }
        }
    }

    /// Applies every message in one transaction and commits; returns how many messages it held.
    fn apply_batch(&mut self, batch: &mut Vec<Msg>, pending: &mut Vec<Pending>) -> Result<usize> {
        let count = batch.iter().filter(|m| !matches!(m, Msg::Stop)).count();
        if count == 0 {
            batch.clear();
            return Ok(0);
        }
        let mut tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| Error::sqlite("begin write transaction", e))?;
        for msg in batch.drain(..) {
            match msg {
                Msg::Ingest(ingest, reply) => {
                    let next_seq = &mut self.next_seq;
                    let mut outcome =
                        in_savepoint(&mut tx, |sp| store_event(sp, &ingest, next_seq, true));
                    if let Err(e) = outcome {
                        // Store it without the mirror: if that works, the projection was at fault,
                        // and the event (the ground truth) must not be lost for it.
                        outcome =
                            in_savepoint(&mut tx, |sp| store_event(sp, &ingest, next_seq, false));
                        match &outcome {
                            Ok(_) => log::error!(
                                "project event={}: {e}; stored with decision projection_failed",
                                ingest.envelope.id
                            ),
                            Err(e) => log::error!("store event={}: {e}", ingest.envelope.id),
                        }
                    }
                    pending.push(Pending::Ingest(reply, outcome));
                }
                Msg::Task(task, reply) => {
                    let outcome = in_savepoint(&mut tx, |sp| task(sp));
                    pending.push(Pending::Task(reply, outcome));
                }
                Msg::Stop => {}
            }
        }
        let started = Instant::now();
        tx.commit().map_err(|e| Error::sqlite("commit", e))?;
        let micros = started.elapsed().as_micros() as u64;
        self.stats
            .commit_micros
            .fetch_add(micros, Ordering::Relaxed);
        self.stats
            .commit_micros_max
            .fetch_max(micros, Ordering::Relaxed);
        if micros > 5_000 {
            self.stats.slow_commits.fetch_add(1, Ordering::Relaxed);
        }
        self.stats.commit_latency.observe(micros);
        self.stats.batch_size.observe(count as u64);
        Ok(count)
    }
}

/// Runs `f` in a savepoint of `tx`: its writes stay if it succeeds and vanish if it fails.
fn in_savepoint<T>(tx: &mut Transaction, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
    let sp = tx.savepoint().map_err(|e| Error::sqlite("savepoint", e))?;
    let result = f(&sp);
    match result {
        Ok(value) => {
            sp.commit()
                .map_err(|e| Error::sqlite("release savepoint", e))?;
            Ok(value)
        }
        Err(e) => {
            // Dropping the savepoint rolls it back.
            drop(sp);
            Err(e)
        }
    }
}

/// Inserts the raw event and applies it to the mirror, or counts a repeated delivery of a known id.
///
/// With `project` false the mirror is left alone and the decision is `projection_failed`; the
/// caller uses that, in a fresh savepoint, only after the projection failed.
fn store_event(
    conn: &Connection,
    ingest: &Ingest,
    next_seq: &mut i64,
    project: bool,
) -> Result<Outcome> {
    let env = &ingest.envelope;

    // A known id is a repeated delivery: count it, change nothing else.
    let deliveries: Option<i64> = conn
        .prepare_cached(
            "UPDATE events SET deliveries = deliveries + 1, last_received_at = ?2
             WHERE id = ?1 RETURNING deliveries",
        )
        .and_then(|mut stmt| {
            stmt.query_row(params![env.id, ingest.received_at_ms], |r| r.get(0))
                .optional()
        })
        .map_err(|e| Error::sqlite(format!("count delivery of {}", env.id), e))?;
    if let Some(deliveries) = deliveries {
        return Ok(Outcome::Duplicate { deliveries });
    }

    // Apply it to the mirror.
    let seq = *next_seq;
    let decision = if project {
        let input = replay::input(env, &ingest.body, seq);
        project::apply(conn, &input, ingest.received_at_ms)
            .map_err(|e| Error::sqlite(format!("project event {}", env.id), e))?
            .as_str()
    } else {
        "projection_failed"
    };

    // Insert the raw event.
    let row = NewEvent {
        envelope: env,
        body: &ingest.body,
        seq,
        received_at_ms: ingest.received_at_ms,
        last_received_at_ms: ingest.received_at_ms,
        deliveries: 1,
        secret_index: ingest.secret_index,
        source: ingest.source,
        decision,
    };
    insert_event(conn, &row).map_err(|e| Error::sqlite(format!("insert event {}", env.id), e))?;
    *next_seq += 1;
    Ok(Outcome::Stored { seq })
}

/// A new row of `events`: the envelope's columns, the raw body and the bookkeeping.
pub struct NewEvent<'a> {
    pub envelope: &'a Envelope,
    pub body: &'a [u8],
    pub seq: i64,
    pub received_at_ms: i64,
    pub last_received_at_ms: i64,
    pub deliveries: i64,
    pub secret_index: Option<usize>,
    pub source: Source,
    pub decision: &'a str,
}

/// Inserts one event row. The writer's statement, shared with the benchmarks that fill a
/// database in bulk, so that they write exactly what the writer writes.
pub fn insert_event(conn: &Connection, row: &NewEvent) -> rusqlite::Result<()> {
    let env = row.envelope;
    conn.prepare_cached(
        "INSERT INTO events (id, seq, type, created, livemode, account, api_version, object_id,
            object_type, request_id, idempotency_key, thin, body, received_at, last_received_at,
            deliveries, secret_index, source, decision)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)",
    )?
    .execute(params![
        env.id,
        row.seq,
        env.event_type,
        env.created,
        env.livemode,
        env.account,
        env.api_version,
        env.object_id,
        env.object_type,
        env.request_id,
        env.idempotency_key,
        env.thin,
        row.body,
        row.received_at_ms,
        row.last_received_at_ms,
        row.deliveries,
        row.secret_index.map(|i| i as i64),
        row.source.as_str(),
        row.decision,
    ])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{event::envelope, event::testevent, store};

    fn ingest(event_type: &str) -> Ingest {
        let body =
            serde_json::to_vec(&testevent::build(event_type, 1_700_000_000).unwrap()).unwrap();
        Ingest {
            envelope: envelope::parse(&body).unwrap(),
            body,
            secret_index: Some(0),
            received_at_ms: 1,
            source: Source::Webhook,
        }
    }

    fn start(tag: &str) -> (Writer, std::path::PathBuf) {
        let dir =
            std::env::temp_dir().join(format!("stripe-inbox-writer-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("w.db");
        let conn = store::open_writer(&path).unwrap();
        (
            Writer::start(
                conn,
                WriterConfig {
                    queue_capacity: 16,
                    max_batch: 8,
                },
            )
            .unwrap(),
            dir,
        )
    }

    #[test]
    fn stores_counts_duplicates_and_numbers_arrivals() {
        let (writer, dir) = start("dup");
        let handle = writer.handle();
        let first = ingest("customer.created");
        let again = Ingest {
            envelope: first.envelope.clone(),
            body: first.body.clone(),
            ..ingest("customer.created")
        };
        assert_eq!(handle.ingest(first).unwrap(), Outcome::Stored { seq: 1 });
        assert_eq!(
            handle.ingest(again).unwrap(),
            Outcome::Duplicate { deliveries: 2 }
        );
        assert_eq!(
            handle.ingest(ingest("invoice.paid")).unwrap(),
            Outcome::Stored { seq: 2 }
        );
        assert_eq!(handle.stats().events.load(Ordering::Relaxed), 2);
        assert_eq!(handle.stats().duplicates.load(Ordering::Relaxed), 1);
        writer.stop();
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_transaction_that_cannot_begin_fails_its_waiters_instead_of_hanging() {
        let (writer, dir) = start("begin");
        let handle = writer.handle();
        // query_only makes BEGIN IMMEDIATE fail for every later batch.
        handle
            .run(Box::new(|conn| {
                conn.execute_batch("PRAGMA query_only = ON")
                    .map_err(|e| Error::sqlite("x", e))
            }))
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let h = handle.clone();
        std::thread::spawn(move || tx.send(h.ingest(ingest("charge.succeeded"))).unwrap());
        let outcome = rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("the waiter must be answered");
        assert!(matches!(outcome, Err(Error::Unavailable(_))), "{outcome:?}");
        writer.stop();
        let _ = std::fs::remove_dir_all(dir);
    }
}
