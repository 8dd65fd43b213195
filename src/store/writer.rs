//! The writer thread: the one read-write connection, group commit, and answers after COMMIT.
//!
//! Nothing else in a running server writes. HTTP worker threads, admin actions, retention (and
//! forwarding and the Stripe client) hand the writer a closure with [`WriterHandle::run`] and wait
//! for its result. The thread takes whatever is queued (up to `max_batch`), runs each closure in a
//! SAVEPOINT of ONE transaction, commits (WAL, `synchronous=FULL`, so COMMIT returns only when the
//! WAL is on disk), and only then hands every waiter its result (from a second thread, so that
//! the next batch begins while the waiters wake; the one waiter of a batch of one it wakes
//! itself). Many requests thus share one fsync, which makes throughput almost independent of the
//! disk's speed: what arrives during one commit is the next batch. No batch waits for more work
//! than is queued. Between two batches it also runs the WAL's RESTART checkpoint when the
//! checkpointer asks ([`WriterHandle::restart_wal`]).
//!
//! A closure that fails has its savepoint rolled back and fails alone; a failed COMMIT fails the
//! whole batch and every waiter hears [`Error::Unavailable`] (the webhook turns that into 503, so
//! Stripe retries).
//!
//! A savepoint is not free: SQLite copies every page a closure first touches inside one (a dozen
//! 4 KiB pages for a stored event, one per B-tree) so that it could roll back. Closures that can
//! run twice ([`WriterHandle::run_retryable`], what the webhook uses) therefore run first without
//! one, straight in the transaction, [`Guard::Unguarded`]. When none fails, that is all. When one
//! fails, the writer rolls the transaction back, begins again, and runs every one of them again,
//! each in its own savepoint, [`Guard::Guarded`], exactly as [`WriterHandle::run`] would have: the
//! outcome is the same, only the failure costs twice. The queue is bounded: when it is full, callers get [`Error::Busy`] at once
//! rather than piling up threads.
//!
//! The writer knows nothing of events or objects: what a closure does is its own business. It
//! only tells its closures, through [`rollbacks`], that they run on the writer thread and how often
//! work there was undone, for what they keep between batches (the mirror's tie cache).

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use rusqlite::{Connection, Transaction, TransactionBehavior};

use crate::error::{Error, Result};
use crate::histogram::Histogram;

/// Upper bounds (µs) of the commit-latency buckets: 250 µs .. 1 s.
pub const COMMIT_MICROS_BOUNDS: [u64; 12] = [
    250, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
];
/// Upper bounds of the batch-size buckets (closures per commit).
pub const BATCH_BOUNDS: [u64; 10] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512];

/// Counters the writer keeps; read by the admin listener and logged at exit.
#[derive(Debug)]
pub struct Stats {
    pub commits: AtomicU64,
    /// Closures run (whatever they did).
    pub jobs: AtomicU64,
    /// Closures that failed, or whose batch failed to commit.
    pub failed: AtomicU64,
    pub max_batch: AtomicU64,
    /// Closures sent but not yet taken by the writer.
    pub queued: AtomicUsize,
    /// Total microseconds spent in COMMIT.
    pub commit_micros: AtomicU64,
    /// The longest COMMIT, in microseconds.
    pub commit_micros_max: AtomicU64,
    /// COMMITs that took over 5 ms (a slow disk, or a checkpoint inside the commit).
    pub slow_commits: AtomicU64,
    /// Batches rolled back and run again guarded, because an unguarded closure failed.
    pub reruns: AtomicU64,
    /// How long each COMMIT took, in microseconds (for `/metrics`).
    pub commit_latency: Histogram<12>,
    /// Closures per committed transaction (for `/metrics`).
    pub batch_size: Histogram<10>,
}

impl Default for Stats {
    fn default() -> Stats {
        Stats {
            commits: AtomicU64::new(0),
            jobs: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            max_batch: AtomicU64::new(0),
            queued: AtomicUsize::new(0),
            commit_micros: AtomicU64::new(0),
            commit_micros_max: AtomicU64::new(0),
            slow_commits: AtomicU64::new(0),
            reruns: AtomicU64::new(0),
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

/// A closure's result on its way to its waiter, sent once COMMIT has decided whether it stands.
type Deliver = Box<dyn FnOnce(Result<()>) + Send>;

/// A closure as the writer runs it: it returns whether it succeeded (its savepoint stays) and how
/// to hand its result over once the batch's fate is known.
type Job = Box<dyn FnOnce(&Connection) -> (bool, Deliver) + Send>;

/// A closure that may run twice: unguarded first, then guarded if the batch has to run again.
type Retryable = Box<dyn FnMut(&Connection, Guard) -> (bool, Deliver) + Send>;

/// How a [`WriterHandle::run_retryable`] closure is being run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guard {
    /// Straight in the batch's transaction, with no savepoint of its own. If it fails, nothing
    /// it wrote stays (the writer rolls the whole transaction back) and it runs again, guarded. It
    /// may therefore fail rather than handle a failure it would handle guarded.
    Unguarded,
    /// In a savepoint of its own, as [`WriterHandle::run`] runs a closure: a failure rolls back
    /// its savepoint and is its waiter's answer.
    Guarded,
}

enum Msg {
    Job(Job),
    Retryable(Retryable),
    /// Start the WAL afresh, between two transactions ([`WriterHandle::restart_wal`]).
    RestartWal(SyncSender<Result<bool>>),
    Stop,
}

/// The running writer thread.
pub struct Writer {
    handle: WriterHandle,
    thread: Option<JoinHandle<()>>,
    answers: Option<JoinHandle<()>>,
}

thread_local! {
    /// On the writer thread, how many times work there was rolled back; `None` elsewhere.
    static ROLLBACKS: Cell<Option<u64>> = const { Cell::new(None) };
}

/// `Some(n)` on the writer thread, where `n` counts the transactions and savepoints rolled back
/// so far (a row a closure read may be gone, and its `seq` given to another event, once `n`
/// moves on); `None` on every other thread. For closures that keep what they read between
/// batches.
pub fn rollbacks() -> Option<u64> {
    ROLLBACKS.with(Cell::get)
}

fn count_rollback() {
    ROLLBACKS.with(|n| n.set(n.get().map(|n| n + 1)));
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
        let (tx, rx) = mpsc::sync_channel(config.queue_capacity);
        let stats = Arc::new(Stats::default());
        // Waking each waiter is a futex call: 7% of the writer's CPU at saturation, done on the
        // writer's core while the next batch waited. A thread of its own wakes them (measured
        // against answering inline, alternating: p99 lower in 7 of 9 rounds, at saturation and
        // at 3,000 events/s, and the same events/s). Without it, the writer answers itself; it
        // always answers a batch of one (`commit_batch`).
        let (to_answers, answer_rx) = mpsc::sync_channel::<Vec<(Deliver, bool)>>(64);
        let answers = std::thread::Builder::new()
            .name("writer-answers".into())
            .spawn(move || {
                while let Ok(batch) = answer_rx.recv() {
                    answer(batch);
                }
            })
            .map_err(|e| log::warn!("writer answers inline: {e}"))
            .ok();
        let mut state = State {
            conn,
            max_batch: config.max_batch.max(1),
            stats: stats.clone(),
            answers: answers.is_some().then_some(to_answers),
        };
        let thread = std::thread::Builder::new()
            .name("writer".into())
            .spawn(move || {
                ROLLBACKS.with(|n| n.set(Some(0)));
                state.run(rx)
            })
            .map_err(|e| Error::io("spawn writer thread", e))?;
        Ok(Writer {
            handle: WriterHandle { tx, stats },
            thread: Some(thread),
            answers,
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
        // The writer's end dropped the answers' sender: every answer is out when this returns.
        if let Some(answers) = self.answers.take() {
            let _ = answers.join();
        }
        let s = &self.handle.stats;
        log::info!(
            "writer stats: commits={} jobs={} failed={} max_batch={} commit_ms_total={} \
             commit_ms_max={:.1} slow_commits={} reruns={}",
            s.commits.load(Ordering::Relaxed),
            s.jobs.load(Ordering::Relaxed),
            s.failed.load(Ordering::Relaxed),
            s.max_batch.load(Ordering::Relaxed),
            s.commit_micros.load(Ordering::Relaxed) / 1000,
            s.commit_micros_max.load(Ordering::Relaxed) as f64 / 1000.0,
            s.slow_commits.load(Ordering::Relaxed),
            s.reruns.load(Ordering::Relaxed),
        );
    }
}

impl WriterHandle {
    /// Runs `f` on the writer thread, inside a savepoint of the batch's transaction, and returns its
    /// result once that transaction has committed (durably: `synchronous=FULL`).
    ///
    /// When `f` fails, its savepoint is rolled back and its error returned; nothing it wrote stays.
    /// Fails with [`Error::Busy`] when the queue is full, and with [`Error::Unavailable`] when the
    /// writer is gone or the batch could not begin or commit (then nothing of `f` stays either).
    pub fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let (reply, answer) = mpsc::sync_channel::<Result<T>>(1);
        let job: Job = Box::new(move |conn| delivery(reply, f(conn)));
        self.send(Msg::Job(job))?;
        wait(&answer)
    }

    /// Like [`run`](Self::run), for a closure that can run twice and touches nothing outside
    /// `conn`: the writer runs it [`Guard::Unguarded`] first, which spares the savepoint, and
    /// runs it again [`Guard::Guarded`] (after rolling back the whole batch) if it or another
    /// unguarded closure of its batch fails. Its waiter hears only the result that was committed.
    pub fn run_retryable<T, F>(&self, mut f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnMut(&Connection, Guard) -> Result<T> + Send + 'static,
    {
        let (reply, answer) = mpsc::sync_channel::<Result<T>>(1);
        let job: Retryable = Box::new(move |conn, guard| delivery(reply.clone(), f(conn, guard)));
        self.send(Msg::Retryable(job))?;
        wait(&answer)
    }

    /// Has the writer run `PRAGMA wal_checkpoint(RESTART)` on its own connection, after the batch
    /// it is in and before the next, so that the next transaction writes the WAL from its
    /// beginning (the checkpointer asks, once it has copied nearly all of the WAL beside the
    /// writer). Returns whether it will be (false: a reader still used the WAL, which then goes
    /// on growing until a later restart).
    ///
    /// Run on the writer, the RESTART never waits for the write lock: from another connection it
    /// had to win that lock from a writer that under load holds it all but a few microseconds
    /// between commits, and what the writer committed during that wait was left for the RESTART
    /// to copy and flush while the writer waited.
    pub fn restart_wal(&self) -> Result<bool> {
        let (reply, answer) = mpsc::sync_channel::<Result<bool>>(1);
        self.send(Msg::RestartWal(reply))?;
        wait(&answer)
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
                Err(match e {
                    TrySendError::Full(_) => Error::Busy,
                    TrySendError::Disconnected(_) => Error::Unavailable("writer stopped".into()),
                })
            }
        }
    }
}

/// What the writer thread owns.
struct State {
    conn: Connection,
    max_batch: usize,
    stats: Arc<Stats>,
    /// To the thread that hands waiters their results; `None`: the writer does it.
    answers: Option<SyncSender<Vec<(Deliver, bool)>>>,
}

impl State {
    fn run(&mut self, rx: Receiver<Msg>) {
        let mut batch = Batch {
            jobs: Vec::with_capacity(self.max_batch),
            retryables: Vec::with_capacity(self.max_batch),
        };
        let mut stop = false;
        while !stop {
            // Wait for the first message, then take whatever else is already queued, and commit:
            // what arrived during the last commit shares this one. Waiting longer for company
            // (250 µs under load, until 2026-12-04) wrote 17% fewer bytes per event at 3,000
            // events/s, but now that pages are 1 KiB and the checkpointer writes back in ranges
            // the bytes no longer set the tail, and the wait did: without it p50 0.41-0.46 ms
            // against 0.81-0.85 and p99 3.1-3.7 against 3.7-4.3 (3,000/s, alternating rounds;
            // README), saturation the same.
            //
            // A WAL restart ends the batch: it runs after that batch's commit.
            let mut restart = None;
            match rx.recv() {
                Ok(Msg::Stop) | Err(_) => break,
                Ok(Msg::RestartWal(reply)) => restart = Some(reply),
                Ok(msg) => batch.push(msg),
            }
            while restart.is_none() && batch.len() < self.max_batch {
                match rx.try_recv() {
                    Ok(Msg::Stop) => {
                        stop = true;
                        break;
                    }
                    Ok(Msg::RestartWal(reply)) => restart = Some(reply),
                    Ok(msg) => batch.push(msg),
                    Err(_) => break,
                }
            }
            let taken = batch.len() + usize::from(restart.is_some());
            self.stats.queued.fetch_sub(taken, Ordering::Relaxed);
            if batch.len() > 0 {
                self.commit_batch(&mut batch);
            }
            if let Some(reply) = restart {
                let _ = reply.send(super::open::restart_wal(&self.conn));
            }
        }
    }

    /// Runs every closure of the batch in one transaction, commits, and delivers every result.
    fn commit_batch(&mut self, batch: &mut Batch) {
        let count = batch.len();
        let mut delivers = Vec::with_capacity(count);
        let committed = self.apply_batch(batch, &mut delivers);
        // Closures that never ran (the transaction could not even begin): their waiters fail.
        for _ in delivers.len()..count {
            self.stats.failed.fetch_add(1, Ordering::Relaxed);
        }
        // Dropped here, before any waiter hears its result: what a closure holds is freed on
        // this thread now, and what it handed back is freed by its waiter.
        batch.jobs.clear();
        batch.retryables.clear();
        match &committed {
            Ok(()) => {
                self.stats.commits.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .max_batch
                    .fetch_max(count as u64, Ordering::Relaxed);
            }
            Err(e) => {
                log::error!(
                    "writer commit failed: {e}; {} request(s) answered unavailable",
                    delivers.len()
                );
                count_rollback();
                if !self.conn.is_autocommit() {
                    let _ = self.conn.execute_batch("ROLLBACK");
                }
            }
        }
        // Hand every waiter its result, now that it is durable (or known to be lost).
        let mut results = Vec::with_capacity(delivers.len());
        for (ok, deliver) in delivers {
            self.stats.jobs.fetch_add(1, Ordering::Relaxed);
            if !ok || committed.is_err() {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
            }
            results.push((deliver, committed.is_ok()));
        }
        // One waiter the writer wakes itself: handing it over is a wake-up more than waking it
        // (3,000 events/s, where most batches hold one: p99 2.6-3.2 ms against 3.0-3.5 in 6
        // alternating rounds; saturation, where batches hold about 16, the same).
        match &self.answers {
            Some(to_answers) if results.len() > 1 => {
                if let Err(mpsc::SendError(results)) = to_answers.send(results) {
                    answer(results);
                }
            }
            _ => answer(results),
        }
    }

    /// Runs the batch in one transaction and commits: the retryable closures first, unguarded
    /// (and all of them again, guarded, in a new transaction if one fails), then every other
    /// closure in its own savepoint.
    fn apply_batch(
        &mut self,
        batch: &mut Batch,
        delivers: &mut Vec<(bool, Deliver)>,
    ) -> Result<()> {
        let mut tx = begin(&mut self.conn)?;
        let mut unguarded = Vec::with_capacity(batch.retryables.len());
        for job in batch.retryables.iter_mut() {
            let (ok, deliver) = job(&tx, Guard::Unguarded);
            if !ok {
                break;
            }
            unguarded.push((ok, deliver));
        }
        if unguarded.len() == batch.retryables.len() {
            delivers.append(&mut unguarded);
        } else {
            // Those results are never delivered: the batch runs again from its start.
            drop(unguarded);
            self.stats.reruns.fetch_add(1, Ordering::Relaxed);
            count_rollback();
            tx.finish()
                .map_err(|e| Error::sqlite("roll back for a guarded rerun", e))?;
            tx = begin(&mut self.conn)?;
            for job in batch.retryables.iter_mut() {
                delivers.push(in_savepoint(&mut tx, |conn| job(conn, Guard::Guarded))?);
            }
        }
        for job in batch.jobs.drain(..) {
            delivers.push(in_savepoint(&mut tx, job)?);
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
        self.stats.batch_size.observe(delivers.len() as u64);
        Ok(())
    }
}

fn begin(conn: &mut Connection) -> Result<Transaction<'_>> {
    conn.transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| Error::sqlite("begin write transaction", e))
}

/// What a closure's run leaves for the writer: whether it succeeded, and how its waiter hears
/// `result` once the batch's fate is known.
fn delivery<T: Send + 'static>(reply: SyncSender<Result<T>>, result: Result<T>) -> (bool, Deliver) {
    let ok = result.is_ok();
    let deliver: Deliver = Box::new(move |committed| {
        let _ = reply.send(committed.and(result));
    });
    (ok, deliver)
}

/// A waiter's side: the closure's result once its batch committed (or failed).
fn wait<T>(answer: &Receiver<Result<T>>) -> Result<T> {
    answer
        .recv()
        .map_err(|_| Error::Unavailable("writer stopped before answering".into()))?
}

/// Hands each waiter its closure's result: `true` when the batch committed.
fn answer(results: Vec<(Deliver, bool)>) {
    for (deliver, committed) in results {
        deliver(if committed {
            Ok(())
        } else {
            Err(Error::Unavailable("database write failed".into()))
        });
    }
}

/// The closures one transaction runs.
struct Batch {
    jobs: Vec<Job>,
    retryables: Vec<Retryable>,
}

impl Batch {
    fn len(&self) -> usize {
        self.jobs.len() + self.retryables.len()
    }

    fn push(&mut self, msg: Msg) {
        match msg {
            Msg::Job(job) => self.jobs.push(job),
            Msg::Retryable(job) => self.retryables.push(job),
            Msg::RestartWal(_) | Msg::Stop => {}
        }
    }
}

/// Runs `job` in a savepoint of `tx`: its writes stay if it succeeds and vanish if it fails.
/// Fails only when the savepoint itself cannot be made or released (then the batch fails).
fn in_savepoint(
    tx: &mut Transaction,
    job: impl FnOnce(&Connection) -> (bool, Deliver),
) -> Result<(bool, Deliver)> {
    let sp = tx.savepoint().map_err(|e| Error::sqlite("savepoint", e))?;
    let (ok, deliver) = job(&sp);
    if ok {
        sp.commit()
            .map_err(|e| Error::sqlite("release savepoint", e))?;
    }
    // Otherwise dropping the savepoint rolls it back.
    if !ok {
        count_rollback();
    }
    Ok((ok, deliver))
}

/// Runs `f` in a nested savepoint named `name` on a connection that is already inside a
/// transaction (a writer closure): what `f` wrote stays if it succeeds and is rolled back if it
/// fails, while the enclosing work goes on. For a step that may fail without failing its caller.
pub fn nested<T>(conn: &Connection, name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    // Prepared once per connection: this runs for every stored event.
    let run = |sql: &str| {
        conn.prepare_cached(sql)
            .and_then(|mut stmt| stmt.execute([]))
            .map(|_| ())
    };
    run(&format!("SAVEPOINT {name}")).map_err(|e| Error::sqlite(format!("savepoint {name}"), e))?;
    let result = f();
    let end = match result {
        Ok(_) => run(&format!("RELEASE {name}")),
        Err(_) => {
            count_rollback();
            run(&format!("ROLLBACK TO {name}")).and_then(|()| run(&format!("RELEASE {name}")))
        }
    };
    end.map_err(|e| Error::sqlite(format!("end savepoint {name}"), e))?;
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store;
    use crate::testkit::TempDir;

    fn start(dir: &TempDir) -> Writer {
        let conn = store::open_writer(&dir.path().join("w.db")).unwrap();
        Writer::start(
            conn,
            WriterConfig {
                queue_capacity: 16,
                max_batch: 8,
            },
        )
        .unwrap()
    }

    fn count(conn: &Connection) -> i64 {
        conn.query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn run_returns_the_closures_result_after_commit_and_a_failure_leaves_nothing() {
        let dir = TempDir::new("writer-run");
        let writer = start(&dir);
        let handle = writer.handle();
        handle
            .run(|conn| {
                conn.execute_batch("CREATE TABLE t (x INTEGER)")
                    .map_err(|e| Error::sqlite("create", e))
            })
            .unwrap();
        let n: i64 = handle
            .run(|conn| {
                conn.execute("INSERT INTO t VALUES (1), (2)", [])
                    .map_err(|e| Error::sqlite("insert", e))?;
                Ok(count(conn))
            })
            .unwrap();
        assert_eq!(n, 2, "the closure's value comes back");
        let failed = handle.run(|conn| -> Result<()> {
            conn.execute("INSERT INTO t VALUES (3)", [])
                .map_err(|e| Error::sqlite("insert", e))?;
            Err(Error::Unavailable("on purpose".into()))
        });
        assert!(matches!(failed, Err(Error::Unavailable(_))), "{failed:?}");
        assert_eq!(
            handle.run(|conn| Ok(count(conn))).unwrap(),
            2,
            "rolled back"
        );
        assert_eq!(handle.stats().failed.load(Ordering::Relaxed), 1);
        writer.stop();
    }

    /// Queues `n` retryable inserts of 1..=n into `t` while the writer is held, so that all of
    /// them share one batch; `fail` is the value whose closure fails while unguarded (or always).
    /// Returns each closure's answer and how each was run.
    fn one_batch_of_retryables(
        handle: &WriterHandle,
        n: i64,
        fail: Option<(i64, bool)>,
    ) -> (Vec<Result<i64>>, Vec<Vec<Guard>>) {
        let (hold, held) = std::sync::mpsc::channel::<()>();
        let (started, running) = std::sync::mpsc::channel::<()>();
        let h = handle.clone();
        let holder = std::thread::spawn(move || {
            h.run(move |_| {
                started.send(()).unwrap();
                held.recv().unwrap();
                Ok(())
            })
        });
        running.recv().unwrap();
        let runs: Vec<Arc<std::sync::Mutex<Vec<Guard>>>> = (0..n).map(|_| Arc::default()).collect();
        let waiters: Vec<_> = (1..=n)
            .map(|x| {
                let h = handle.clone();
                let seen = runs[(x - 1) as usize].clone();
                let waiter = std::thread::spawn(move || {
                    h.run_retryable(move |conn, guard| {
                        seen.lock().unwrap().push(guard);
                        conn.execute("INSERT INTO t VALUES (?1)", [x])
                            .map_err(|e| Error::sqlite("insert", e))?;
                        match fail {
                            Some((v, always))
                                if v == x && (always || guard == Guard::Unguarded) =>
                            {
                                Err(Error::Unavailable("on purpose".into()))
                            }
                            _ => Ok(x),
                        }
                    })
                });
                // One at a time into the queue, so that the batch keeps their order.
                let deadline = Instant::now() + std::time::Duration::from_secs(10);
                while handle.stats().queued.load(Ordering::Relaxed) < x as usize {
                    assert!(Instant::now() < deadline, "closure {x} never queued");
                    std::thread::yield_now();
                }
                waiter
            })
            .collect();
        hold.send(()).unwrap();
        holder.join().unwrap().unwrap();
        let answers = waiters.into_iter().map(|w| w.join().unwrap()).collect();
        let runs = runs.iter().map(|r| r.lock().unwrap().clone()).collect();
        (answers, runs)
    }

    fn values(handle: &WriterHandle) -> Vec<i64> {
        handle
            .run(|conn| {
                let mut stmt = conn.prepare("SELECT x FROM t ORDER BY x").unwrap();
                let rows = stmt.query_map([], |r| r.get(0)).unwrap();
                Ok(rows.map(|r| r.unwrap()).collect())
            })
            .unwrap()
    }

    fn create_t(handle: &WriterHandle) {
        handle
            .run(|conn| {
                conn.execute_batch("CREATE TABLE t (x INTEGER)")
                    .map_err(|e| Error::sqlite("create", e))
            })
            .unwrap();
    }

    /// `(frames in the WAL, frames copied)` after a passive checkpoint from `checkpointer`.
    fn wal(checkpointer: &Connection) -> (i64, i64) {
        checkpointer
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((r.get(1)?, r.get(2)?))
            })
            .unwrap()
    }

    #[test]
    fn restart_wal_starts_the_wal_afresh_unless_a_reader_still_uses_it() {
        let dir = TempDir::new("writer-restart");
        let writer = start(&dir);
        let handle = writer.handle();
        create_t(&handle);
        let insert = |rows: i64| {
            handle
                .run(move |conn| {
                    for x in 0..rows {
                        conn.execute("INSERT INTO t VALUES (?1)", [x])
                            .map_err(|e| Error::sqlite("insert", e))?;
                    }
                    Ok(())
                })
                .unwrap()
        };
        for _ in 0..20 {
            insert(50);
        }
        // A reader whose snapshot is in the WAL keeps it: the restart gives up and says so, and
        // the WAL goes on growing.
        let reader = store::open_read_only(&dir.path().join("w.db")).unwrap();
        reader.execute_batch("BEGIN").unwrap();
        assert_eq!(count(&reader), 1000);
        assert!(!handle.restart_wal().unwrap(), "a reader used the WAL");
        insert(1);
        let checkpointer = store::open_checkpointer(&dir.path().join("w.db")).unwrap();
        let (frames, copied) = wal(&checkpointer);
        assert!(
            copied >= 20 && frames > copied,
            "past the reader's snapshot: {frames} frames, {copied} copied"
        );

        // Without it, the restart copies what is left (the frame just written, too), and the next
        // transaction writes the WAL from its beginning.
        reader.execute_batch("COMMIT").unwrap();
        insert(1);
        assert!(handle.restart_wal().unwrap());
        insert(1);
        let (after, _) = wal(&checkpointer);
        assert!(
            after < 10,
            "{after} frames after the restart, {frames} before"
        );
        assert_eq!(values(&handle).len(), 1003, "nothing was lost");
        writer.stop();
    }

    #[test]
    fn retryable_closures_run_once_unguarded_when_none_fails() {
        let dir = TempDir::new("writer-retryable");
        let writer = start(&dir);
        let handle = writer.handle();
        create_t(&handle);
        let (answers, runs) = one_batch_of_retryables(&handle, 3, None);
        assert_eq!(
            answers.into_iter().map(|a| a.unwrap()).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert!(runs.iter().all(|r| r == &[Guard::Unguarded]), "{runs:?}");
        assert_eq!(values(&handle), [1, 2, 3]);
        assert_eq!(handle.stats().reruns.load(Ordering::Relaxed), 0);
        writer.stop();
    }

    #[test]
    fn an_unguarded_failure_reruns_the_batch_guarded_and_nothing_is_written_twice() {
        let dir = TempDir::new("writer-rerun");
        let writer = start(&dir);
        let handle = writer.handle();
        create_t(&handle);
        // 2 fails only unguarded (as a projection does, which guarded stores the event anyway):
        // everything succeeds on the rerun, and the first run's writes are gone.
        let (answers, runs) = one_batch_of_retryables(&handle, 3, Some((2, false)));
        assert_eq!(
            answers.into_iter().map(|a| a.unwrap()).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert_eq!(
            runs,
            [
                vec![Guard::Unguarded, Guard::Guarded],
                vec![Guard::Unguarded, Guard::Guarded],
                vec![Guard::Guarded],
            ],
            "the closures after the failing one run only guarded"
        );
        assert_eq!(values(&handle), [1, 2, 3], "each insert committed once");
        assert_eq!(handle.stats().reruns.load(Ordering::Relaxed), 1);

        // 5 fails guarded too: it fails alone, as with `run`, and its insert is rolled back.
        let (answers, _) = one_batch_of_retryables(&handle, 6, Some((5, true)));
        assert!(
            matches!(answers[4], Err(Error::Unavailable(_))),
            "{:?}",
            answers[4]
        );
        assert_eq!(values(&handle), [1, 1, 2, 2, 3, 3, 4, 6]);
        assert_eq!(handle.stats().reruns.load(Ordering::Relaxed), 2);
        writer.stop();
    }

    #[test]
    fn nested_savepoint_keeps_the_enclosing_work() {
        let dir = TempDir::new("writer-nested");
        let writer = start(&dir);
        let handle = writer.handle();
        let n = handle
            .run(|conn| {
                conn.execute_batch("CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (1);")
                    .map_err(|e| Error::sqlite("create", e))?;
                let inner = nested(conn, "inner", || -> Result<()> {
                    conn.execute("INSERT INTO t VALUES (2)", [])
                        .map_err(|e| Error::sqlite("insert", e))?;
                    Err(Error::Unavailable("inner fails".into()))
                });
                assert!(inner.is_err());
                Ok(count(conn))
            })
            .unwrap();
        assert_eq!(n, 1, "the inner insert was rolled back, the outer one kept");
        writer.stop();
    }

    #[test]
    fn a_transaction_that_cannot_begin_fails_its_waiters_instead_of_hanging() {
        let dir = TempDir::new("writer-begin");
        let writer = start(&dir);
        let handle = writer.handle();
        // query_only makes BEGIN IMMEDIATE fail for every later batch.
        handle
            .run(|conn| {
                conn.execute_batch("PRAGMA query_only = ON")
                    .map_err(|e| Error::sqlite("x", e))
            })
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let h = handle.clone();
        std::thread::spawn(move || tx.send(h.run(|_| Ok(()))).unwrap());
        let outcome = rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("the waiter must be answered");
        assert!(matches!(outcome, Err(Error::Unavailable(_))), "{outcome:?}");
        writer.stop();
    }
}
