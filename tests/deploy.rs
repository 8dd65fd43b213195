//! The deployment of docs/deploy/, run: Litestream replicating and restoring the database, nginx
//! and Caddy in front of `serve`, and the systemd units. Each test reads the documented files
//! from the repository and replaces only ports and paths (each replacement is listed where it is
//! made, and fails the test if the documented text is no longer there):
//!
//! - `config.toml`: the database path `/var/lib/stripe-inbox/stripe-inbox.db` and the listeners
//!   `127.0.0.1:8080` / `127.0.0.1:8081` become a temp file and free loopback ports (three tests
//!   change more, and say so: `checkpoint_interval_ms` for a comparison run, `password_env` to a
//!   variable no one sets, for the admin without a password, and for the Stripe client and
//!   forwarding an `api_base` line for the local API stub and the commented `[[forward]]` block
//!   uncommented, its `url` the local app);
//! - `litestream.yml`: the same database path, and the replica `s3://my-shop-backups/stripe-inbox`
//!   becomes a `file://` directory in the temp dir;
//! - `nginx.conf`: `listen 80` / `listen 443` become free loopback ports (the `[::]` lines go: the
//!   test host may have no IPv6), the certificate paths a self-signed certificate for both names,
//!   certbot's webroot `/var/www/html` a temp dir, and the upstreams the ports of `serve`;
//! - `Caddyfile`: the upstreams become the ports of `serve`; a global options block put in front
//!   moves Caddy to free loopback ports and has it issue the certificates from its own local CA;
//! - the units: the binary path in `ExecStart` becomes the built one;
//! - the commands of README.md and litestream.md that the tests run word for word (restore,
//!   check, send-test-event, backfill): the paths under `/etc`, `/var/lib` and `/tmp` become temp
//!   files, `runuser -u stripe-inbox --` is left out (the tests run as whoever runs them),
//!   `stripe-inbox` and `litestream` are found through `PATH`, and send-test-event's
//!   `https://shop.example.com/webhooks/stripe` becomes the webhook listener (the test that runs
//!   it has no proxy; the proxy tests send through the proxy with curl).
//!
//! Clients other than the proxy come from 127.0.0.2 and 127.0.0.3 (curl `--interface`, or a
//! socket bound there), so that the log and the login limits can tell them from the proxy's
//! 127.0.0.1.
//!
//! The proxies are reached over real TLS with curl, as a browser would: it resolves
//! `shop.example.com` and `admin.shop.example.com` to 127.0.0.1 and trusts only the test's CA, and
//! it sends a `Secure` cookie back only over https. So `cookie_secure = true` is tested as it is
//! used, with no header faked.
//!
//! Each test is named after the tool it runs; without the tool it prints a line with "skip" and
//! the install command, and passes. `.ci/run` installs every tool, so in CI none skips.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use stripe_inbox::{store, time};

use crate::support::forward;
use crate::support::security::call_from;
use crate::support::stripe_stub::{customers, Account, Stub};
use crate::support::tools::{
    self, deploy_doc, find_all, post_signed, stripe_signature, substitute, Browser, Daemon, Inbox,
    Tool, PASSWORD,
};
use crate::support::{event, event_id, free_addr, TempDir};

/// The documented database path, webhook and admin listeners.
const DOC_DB: &str = "/var/lib/stripe-inbox/stripe-inbox.db";
const DOC_WEBHOOK: &str = "127.0.0.1:8080";
const DOC_ADMIN: &str = "127.0.0.1:8081";
const DOC_REPLICA: &str = "s3://my-shop-backups/stripe-inbox";
const SHOP: &str = "shop.example.com";

/// Commands of docs/deploy/ that the tests run as they are written there (as root, so without
/// `runuser -u stripe-inbox --`), with the paths replaced by [`Machine::run_documented`].
const LITESTREAM_RESTORE: &str = "sh -c 'set -a; . /etc/litestream.env; exec litestream restore \
    -config /etc/litestream.yml -o /tmp/stripe-inbox-restored.db \
    /var/lib/stripe-inbox/stripe-inbox.db'";
const INBOX_RESTORE: &str = "runuser -u stripe-inbox -- stripe-inbox restore --config \
    /etc/stripe-inbox/config.toml /tmp/stripe-inbox-restored.db";
const INBOX_CHECK: &str = "runuser -u stripe-inbox -- sh -c 'set -a; . \
    /etc/stripe-inbox/secrets.env; exec stripe-inbox check --config /etc/stripe-inbox/config.toml'";
const INBOX_BACKFILL: &str = "runuser -u stripe-inbox -- sh -c 'set -a; . \
    /etc/stripe-inbox/secrets.env; exec stripe-inbox backfill --config \
    /etc/stripe-inbox/config.toml'";
const SEND_TEST_EVENT: &str = "runuser -u stripe-inbox -- sh -c 'set -a; . \
    /etc/stripe-inbox/secrets.env; exec stripe-inbox send-test-event --config \
    /etc/stripe-inbox/config.toml --url https://shop.example.com/webhooks/stripe'";

/// A stand-in for a server's file system in a temp dir: the documented paths of the config, the
/// secrets (`secrets.env`, written as docs/deploy/README.md writes it), the database, Litestream's
/// config and credentials, and a `bin` directory in front of `PATH` with `stripe-inbox` and
/// `litestream` in it.
struct Machine {
    /// Documented text → what it is here (paths, and a URL for a test that has no proxy).
    paths: Vec<(&'static str, String)>,
    bin: PathBuf,
    secrets: PathBuf,
}

impl Machine {
    fn new(dir: &Path, config: &Path, db: &Path, litestream: Option<(&Path, &Path)>) -> Machine {
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::os::unix::fs::symlink(tools::BIN, bin.join("stripe-inbox")).unwrap();
        let secrets = dir.join("secrets.env");
        let text: String = tools::secrets_env()
            .iter()
            .filter(|(k, _)| *k != "RUST_LOG")
            .map(|(k, v)| format!("{k}={v}\n"))
            .collect();
        std::fs::write(&secrets, text).unwrap();
        let show = |p: &Path| p.display().to_string();
        let mut paths = vec![
            ("/etc/stripe-inbox/config.toml", show(config)),
            ("/etc/stripe-inbox/secrets.env", show(&secrets)),
            (DOC_DB, show(db)),
            (
                "/tmp/stripe-inbox-restored.db",
                show(&dir.join("stripe-inbox-restored.db")),
            ),
        ];
        if let Some((litestream, yml)) = litestream {
            std::os::unix::fs::symlink(litestream, bin.join("litestream")).unwrap();
            let env = dir.join("litestream.env");
            std::fs::write(&env, "LITESTREAM_ACCESS_KEY_ID=unused-by-file-replicas\n").unwrap();
            paths.push(("/etc/litestream.yml", show(yml)));
            paths.push(("/etc/litestream.env", show(&env)));
        }
        Machine {
            paths,
            bin,
            secrets,
        }
    }

    /// Adds `KEY=value` lines to secrets.env, each one that docs/deploy/README.md writes there.
    fn add_secrets(&self, pairs: &[(&str, &str)]) {
        let readme = deploy_doc("README.md");
        let mut text = std::fs::read_to_string(&self.secrets).unwrap();
        for (k, v) in pairs {
            assert!(
                readme.contains(&format!("echo \"{k}=")),
                "docs/deploy/README.md no longer writes {k} into secrets.env"
            );
            text.push_str(&format!("{k}={v}\n"));
        }
        std::fs::write(&self.secrets, text).unwrap();
    }

    /// Runs `line`, which `doc` must contain word for word, with `sh -c`, the paths replaced.
    fn run_documented(&self, doc: &str, line: &str) -> std::process::Output {
        let text = deploy_doc(doc);
        assert!(
            text.contains(line),
            "docs/deploy/{doc} no longer says: {line}"
        );
        let line = line.trim_start_matches("runuser -u stripe-inbox -- ");
        let pairs: Vec<(&str, &str)> = self
            .paths
            .iter()
            .filter(|(from, _)| line.contains(from))
            .map(|(from, to)| (*from, to.as_str()))
            .collect();
        let line = substitute(doc, line, &pairs);
        Command::new("sh")
            .args(["-c", &line])
            .env("PATH", format!("{}:/usr/bin:/bin", self.bin.display()))
            .output()
            .unwrap()
    }
}
const ADMIN_HOST: &str = "admin.shop.example.com";

/// docs/deploy/config.toml with its database at `db` and its listeners on `webhook` / `admin`.
fn production_config(db: &Path, webhook: &str, admin: &str) -> String {
    substitute(
        "config.toml",
        &deploy_doc("config.toml"),
        &[
            (DOC_DB, &db.display().to_string()),
            (DOC_WEBHOOK, webhook),
            (DOC_ADMIN, admin),
        ],
    )
}

/// `serve` on docs/deploy/config.toml in `dir` (database `dir/stripe-inbox.db`), on free ports;
/// `edit` changes the config text first (for a comparison run).
fn start_production(dir: &Path, edit: impl Fn(String) -> String) -> Inbox {
    let db = dir.join("stripe-inbox.db");
    let (webhook, admin) = (free_addr(), free_addr());
    let text = edit(production_config(&db, &webhook, &admin));
    Inbox::start(dir, &text, &webhook, &admin, &db)
}

/// Signed events posted by `clients` threads until stopped (each waiting `pause` between its
/// requests, or none); what was answered 200, when (unix ms, taken after the whole answer
/// arrived), and how long each answer took (ms).
struct Load {
    stop: Arc<AtomicBool>,
    answered: Arc<Mutex<Vec<(String, i64)>>>,
    latencies: Arc<Mutex<Vec<i64>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(addr: &str, clients: usize) -> Load {
        Load::paced(addr, clients, Duration::ZERO)
    }

    fn paced(addr: &str, clients: usize, pause: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let answered: Arc<Mutex<Vec<(String, i64)>>> = Arc::default();
        let latencies: Arc<Mutex<Vec<i64>>> = Arc::default();
        let threads = (0..clients)
            .map(|i| {
                let (stop, answered, latencies, addr) = (
                    stop.clone(),
                    answered.clone(),
                    latencies.clone(),
                    addr.to_string(),
                );
                std::thread::spawn(move || {
                    let types = [
                        "invoice.paid",
                        "customer.updated",
                        "payment_intent.succeeded",
                    ];
                    let mut n = i;
                    while !stop.load(Ordering::Relaxed) {
                        let body = event(types[n % types.len()]);
                        n += 1;
                        let sent = Instant::now();
                        match post_signed(&addr, &body) {
                            Some(200) => {
                                let ms = sent.elapsed().as_millis() as i64;
                                latencies.lock().unwrap().push(ms);
                                let id = event_id(&body);
                                answered.lock().unwrap().push((id, time::now_ms()));
                            }
                            Some(status) => panic!("answer {status}"),
                            // Killed mid-request: not an answer.
                            None => std::thread::sleep(Duration::from_millis(5)),
                        }
                        std::thread::sleep(pause);
                    }
                })
            })
            .collect();
        Load {
            stop,
            answered,
            latencies,
            threads,
        }
    }

    /// What was answered, and the latencies, sorted.
    fn stop(self) -> (Vec<(String, i64)>, Vec<i64>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        let answered = self.answered.lock().unwrap().clone();
        let mut latencies = self.latencies.lock().unwrap().clone();
        latencies.sort_unstable();
        (answered, latencies)
    }
}

/// Posts `n` events one after another; their ids and answer times.
fn post_events(addr: &str, n: usize) -> Vec<(String, i64)> {
    (0..n)
        .map(|_| {
            let body = event("charge.refunded");
            assert_eq!(post_signed(addr, &body), Some(200));
            (event_id(&body), time::now_ms())
        })
        .collect()
}

/// An LTX file of a replica's level 0, from its header (the format of superfly/ltx).
#[derive(Debug, Clone)]
struct Ltx {
    max_txid: u64,
    /// When Litestream read the WAL for it (unix ms).
    timestamp: i64,
    /// When it landed in the replica (unix ms).
    uploaded: i64,
}

fn replica_l0(replica: &Path) -> Vec<Ltx> {
    let dir = replica.join("ltx/0");
    let mut files: Vec<Ltx> = std::fs::read_dir(&dir)
        .map(|rd| rd.flatten().collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.path().extension().is_some_and(|x| x == "ltx"))
        .filter_map(|e| {
            let bytes = std::fs::read(e.path()).ok()?;
            if bytes.len() < 100 || &bytes[..4] != b"LTX1" {
                return None;
            }
            let be64 = |at: usize| u64::from_be_bytes(bytes[at..at + 8].try_into().unwrap());
            let uploaded = e
                .metadata()
                .ok()?
                .modified()
                .ok()?
                .duration_since(SystemTime::UNIX_EPOCH)
                .ok()?
                .as_millis() as i64;
            Some(Ltx {
                max_txid: be64(24),
                timestamp: be64(32) as i64,
                uploaded,
            })
        })
        .collect();
    files.sort_by_key(|f| f.max_txid);
    files
}

/// docs/deploy/litestream.yml for `db` and a `file://` replica in `replica`, written into `dir`.
fn litestream_config(dir: &Path, db: &Path, replica: &Path) -> PathBuf {
    let yml = substitute(
        "litestream.yml",
        &deploy_doc("litestream.yml"),
        &[
            (DOC_DB, &db.display().to_string()),
            (DOC_REPLICA, &format!("file://{}", replica.display())),
        ],
    );
    let config = dir.join("litestream.yml");
    std::fs::write(&config, yml).unwrap();
    config
}

/// `litestream replicate -config CONFIG` at debug level (so that its log says which syncs were
/// full snapshots), logging beside the config.
fn start_litestream(litestream: &Path, config: &Path) -> Daemon {
    let mut cmd = Command::new(litestream);
    cmd.args(["replicate", "-log-level", "debug", "-config"])
        .arg(config);
    let dir = config.parent().unwrap();
    let log = dir.join(format!(
        "litestream-{}.log",
        std::fs::read_dir(dir).unwrap().count()
    ));
    Daemon::spawn("litestream replicate", cmd, &log)
}

/// The syncs Litestream logged as full snapshots (`msg=sync ... snap=true`), with their reason.
fn snapshot_syncs(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("msg=sync ") && l.contains("snap=true"))
        .map(String::from)
        .collect()
}

/// Waits until the replica holds a level-0 file read after `after_ms` (the last answer, when
/// nothing is written after it), then two more sync intervals, for a sync that had read the WAL
/// just before the last commit to be followed by the one that has it.
fn wait_replicated(replica: &Path, after_ms: i64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while replica_l0(replica)
        .last()
        .is_none_or(|f| f.timestamp <= after_ms)
    {
        assert!(Instant::now() < deadline, "never replicated: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(2500));
}

/// `litestream restore -config CONFIG -o OUT DB`, as docs/deploy/litestream.md does it on a new
/// machine: the database the config names, from its replica, into `out`.
fn litestream_restore(litestream: &Path, config: &Path, db: &Path, out: &Path) {
    let output = Command::new(litestream)
        .args(["restore", "-config"])
        .arg(config)
        .arg("-o")
        .arg(out)
        .arg(db)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "litestream restore: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The ids of the events in a database.
fn stored_ids(db: &Path) -> HashMap<String, i64> {
    let conn = store::open_read_only(db).unwrap();
    let mut stmt = conn.prepare("SELECT id, seq FROM events").unwrap();
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    rows
}

/// Percentile `p` (0-100) of sorted values.
fn pct(sorted: &[i64], p: usize) -> i64 {
    sorted[(sorted.len() - 1) * p / 100]
}

/// The whole round trip of docs/deploy/litestream.md: `serve` and `litestream replicate` on the
/// documented files under load, both SIGKILLed at once (the machine is lost), `litestream
/// restore` on a new machine, `stripe-inbox restore` and `check` there, then `serve` and
/// Litestream again on the restored file, into the same replica, and a second restore that holds
/// the new events too.
#[test]
fn litestream_round_trip_keeps_every_event_answered_before_its_last_sync() {
    let test = "litestream_round_trip";
    let Some([litestream]) = find_all(test, [Tool::litestream()]) else {
        return;
    };
    let started = Instant::now();
    let old = TempDir::new("ls-old");
    let replica = old.path().join("replica");
    let mut inbox = start_production(old.path(), |c| c);
    let ls_config = litestream_config(old.path(), &inbox.db, &replica);
    let mut ls = start_litestream(&litestream, &ls_config);

    // Load for a while, then lose the machine: both die at the same moment.
    let load = Load::start(&inbox.webhook, 4);
    std::thread::sleep(Duration::from_secs(8));
    ls.kill();
    let killed_at = time::now_ms();
    inbox.daemon.kill();
    let (answered, _) = load.stop();
    let log = ls.log();

    // What the replica holds: its newest level-0 file says when Litestream last read the WAL.
    let files = replica_l0(&replica);
    let last = files.last().expect("the replica has no files").clone();
    // An event's lag: from its answer to the upload of the first file read after it.
    let mut lags: Vec<i64> = answered
        .iter()
        .filter_map(|(_, at)| Some(files.iter().find(|f| f.timestamp >= *at)?.uploaded - at))
        .collect();
    lags.sort_unstable();

    // A new machine: restore as documented, then let stripe-inbox check the file and put it
    // in place.
    // A new machine: the commands of docs/deploy/litestream.md ("Getting it back"), with its
    // config, secrets and Litestream config in place.
    // Under the build directory rather than the system's temp dir, which may be a tmpfs: `check`
    // would rightly warn about a database there, and this test wants the production setup's
    // warnings, not the test machine's.
    let new = TempDir::new_in(Path::new(env!("CARGO_TARGET_TMPDIR")), "ls-new");
    let db2 = new.path().join("stripe-inbox.db");
    let ls_config2 = litestream_config(new.path(), &db2, &replica);
    let (webhook2, admin2) = (free_addr(), free_addr());
    let config2 = new.path().join("config.toml");
    std::fs::write(&config2, production_config(&db2, &webhook2, &admin2)).unwrap();
    let machine = Machine::new(new.path(), &config2, &db2, Some((&litestream, &ls_config2)));
    let restored = new.path().join("stripe-inbox-restored.db");
    for line in [LITESTREAM_RESTORE, INBOX_RESTORE, INBOX_CHECK] {
        let out = machine.run_documented("litestream.md", line);
        assert!(
            out.status.success(),
            "{line}\n{}",
            crate::support::process::text(&out)
        );
    }
    assert!(restored.exists());
    let out = machine.run_documented("litestream.md", INBOX_CHECK);
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("integrity: ok"), "{printed}");
    assert!(
        printed.contains("the same as a rebuild from the events") && printed.contains("all good"),
        "{printed}"
    );
    // Litestream has not run on this machine yet, and no backup was made here: the one warning.
    let warnings: Vec<&str> = printed
        .lines()
        .filter(|l| l.starts_with("warning:"))
        .collect();
    assert!(
        warnings.len() == 1 && warnings[0].starts_with("warning: no backups"),
        "{printed}"
    );

    // Every event answered 200 before Litestream's last read of the WAL is there; the ones
    // answered in the last MARGIN ms before it may or may not be (the read and the timestamp are
    // not one instant); whatever is there is exactly what the old database held, a prefix of it.
    const MARGIN: i64 = 250;
    let restored_ids = stored_ids(&db2);
    let original_ids = stored_ids(&inbox.db);
    let missing: Vec<&(String, i64)> = answered
        .iter()
        .filter(|(id, at)| *at < last.timestamp - MARGIN && !restored_ids.contains_key(id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} events answered before the replica's last sync are not restored: {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    let max_seq = restored_ids.values().copied().max().unwrap_or(0);
    for (id, seq) in &restored_ids {
        assert_eq!(original_ids.get(id), Some(seq), "{id} as in the original");
    }
    let prefix = original_ids.values().filter(|s| **s <= max_seq).count();
    assert_eq!(restored_ids.len(), prefix, "the restore is a prefix");
    let lost = answered
        .iter()
        .filter(|(id, _)| !restored_ids.contains_key(id))
        .count();

    // The new machine serves, and replicates on into the same replica.
    let mut inbox2 = Inbox::start(
        new.path(),
        &production_config(&db2, &webhook2, &admin2),
        &webhook2,
        &admin2,
        &db2,
    );
    let mut ls2 = start_litestream(&litestream, &ls_config2);
    let later = post_events(&inbox2.webhook, 20);
    wait_replicated(
        &replica,
        later.last().unwrap().1,
        "the new machine's events",
    );
    ls2.kill();
    inbox2.daemon.kill();
    // Now that Litestream replicates the database, the documented setup passes `check` without
    // a single warning.
    let out = machine.run_documented("README.md", INBOX_CHECK);
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && printed.contains("all good") && !printed.contains("warning:"),
        "{}",
        crate::support::process::text(&out)
    );
    let third = TempDir::new("ls-third");
    let restored3 = third.path().join("restored.db");
    litestream_restore(&litestream, &ls_config2, &db2, &restored3);
    let ids3 = stored_ids(&restored3);
    for (id, _) in &later {
        assert!(ids3.contains_key(id), "{id} from the new machine");
    }
    assert!(restored_ids.keys().all(|id| ids3.contains_key(id)));
    let resnapshots = snapshot_syncs(&ls2.log()).len();

    println!(
        "litestream: {} events answered in 8 s, {} in the restore, {lost} answered but lost \
         (answered after the replica's last sync); replica {} ms behind at the kill; \
         an answered event reached the replica after p50 {} ms, p99 {} ms, max {} ms \
         ({} level-0 files); full snapshots: {} on the old machine, \
         {resnapshots} on the new one (its first sync); {:.1} s",
        answered.len(),
        restored_ids.len(),
        killed_at - last.timestamp,
        pct(&lags, 50),
        pct(&lags, 99),
        lags.last().unwrap(),
        files.len(),
        snapshot_syncs(&log).len(),
        started.elapsed().as_secs_f64()
    );
}

/// With the documented `checkpoint_interval_ms = 0`, Litestream does every checkpoint and never
/// has to take a second full snapshot: its first sync is the only one with `snap=true`, however
/// many checkpoints it ran. The same load with stripe-inbox's own checkpointer on (the default,
/// 250 ms) is run after it, and what Litestream did then is reported.
#[test]
fn litestream_needs_no_new_snapshot_with_our_checkpointer_off() {
    let test = "litestream_checkpoints";
    let Some([litestream]) = find_all(test, [Tool::litestream()]) else {
        return;
    };
    let started = Instant::now();
    let mut report = Vec::new();
    for interval in ["0", "250"] {
        let dir = TempDir::new("ls-ckpt");
        let replica = dir.path().join("replica");
        let inbox = start_production(dir.path(), |c| {
            c.replace(
                "checkpoint_interval_ms = 0",
                &format!("checkpoint_interval_ms = {interval}"),
            )
        });
        let config = litestream_config(dir.path(), &inbox.db, &replica);
        let mut ls = start_litestream(&litestream, &config);
        // A burst that grows the WAL past the point where our checkpointer tries a RESTART
        // (8,192 frames), then a shop's trickle, during which it would.
        let load = Load::start(&inbox.webhook, 4);
        std::thread::sleep(Duration::from_secs(8));
        let (mut answered, burst) = load.stop();
        let wal_after_burst = std::fs::metadata(inbox.db.with_extension("db-wal"))
            .map(|m| m.len())
            .unwrap_or(0);
        let load = Load::paced(&inbox.webhook, 2, Duration::from_millis(50));
        std::thread::sleep(Duration::from_secs(4));
        let (trickled, trickle) = load.stop();
        answered.extend(trickled);
        let last = answered.iter().map(|(_, at)| *at).max().unwrap();
        wait_replicated(&replica, last, "the last events");
        ls.signal("TERM");
        ls.wait_for(Duration::from_secs(10));
        let log = ls.log();
        let snapshots = snapshot_syncs(&log);
        let checkpoints = log
            .lines()
            .filter(|l| l.contains("msg=checkpoint "))
            .count();
        report.push(format!(
            "checkpoint_interval_ms = {interval}: {} events; WAL file {} KiB after the burst; \
             {checkpoints} Litestream checkpoints, {} full snapshot(s); latency in the burst \
             p50 {} ms, p99 {} ms, max {} ms; in the trickle p50 {} ms, p99 {} ms, max {} ms{}",
            answered.len(),
            wal_after_burst / 1024,
            snapshots.len(),
            pct(&burst, 50),
            pct(&burst, 99),
            burst.last().unwrap(),
            pct(&trickle, 50),
            pct(&trickle, 99),
            trickle.last().unwrap(),
            snapshots
                .iter()
                .skip(1)
                .map(|l| format!("\n    {l}"))
                .collect::<String>()
        ));
        if interval == "0" {
            assert!(
                checkpoints > 0,
                "Litestream never checkpointed; the test proves nothing:\n{log}"
            );
            assert_eq!(
                snapshots.len(),
                1,
                "only the first sync may be a full snapshot:\n{}",
                snapshots.join("\n")
            );
            assert!(
                snapshots[0].contains("txid=0000000000000001"),
                "{snapshots:?}"
            );
        }
        drop(inbox);
    }
    println!(
        "litestream checkpoints ({:.1} s):\n  {}",
        started.elapsed().as_secs_f64(),
        report.join("\n  ")
    );
}

/// The production config, or (`password` false) the same with the admin password's variable
/// empty, as on a machine where no one has set it.
fn without_password(config: String, password: bool) -> String {
    if password {
        return config;
    }
    substitute(
        "config.toml",
        &config,
        &[(
            "password_env = \"STRIPE_INBOX_ADMIN_PASSWORD\"",
            "password_env = \"STRIPE_INBOX_TEST_UNSET_PASSWORD\"",
        )],
    )
}

/// `serve` on the production config, a proxy in front, and curl as the browser.
struct Stack {
    dir: TempDir,
    inbox: Inbox,
    _proxy: Daemon,
    browser: Browser,
    /// The proxy's plain-http port (the documented port 80).
    http: u16,
}

impl Stack {
    fn nginx(test: &str, password: bool) -> Option<Stack> {
        let [nginx, curl, openssl] =
            find_all(test, [Tool::nginx(), Tool::curl(), Tool::openssl()])?;
        let dir = TempDir::new("nginx");
        let inbox = start_production(dir.path(), |c| without_password(c, password));
        let (cert, key) = tools::self_signed(&openssl, dir.path(), &[SHOP, ADMIN_HOST]);
        let (http, https) = (free_addr(), free_addr());
        // certbot's webroot, with a challenge in it.
        let www = dir.path().join("www");
        let challenge = www.join(".well-known/acme-challenge");
        std::fs::create_dir_all(&challenge).unwrap();
        std::fs::write(challenge.join("token-1"), "token-1.key").unwrap();
        let conf = substitute(
            "nginx.conf",
            &deploy_doc("nginx.conf"),
            &[
                ("    listen [::]:80;\n", ""),
                ("    listen [::]:443 ssl http2;\n", ""),
                ("listen 80;", &format!("listen {http};")),
                (
                    "listen 443 ssl http2;",
                    &format!("listen {https} ssl http2;"),
                ),
                (
                    "/etc/letsencrypt/live/shop.example.com/fullchain.pem",
                    &cert.display().to_string(),
                ),
                (
                    "/etc/letsencrypt/live/shop.example.com/privkey.pem",
                    &key.display().to_string(),
                ),
                ("root /var/www/html;", &format!("root {};", www.display())),
                (
                    "server 127.0.0.1:8080;",
                    &format!("server {};", inbox.webhook),
                ),
                (
                    "server 127.0.0.1:8081;",
                    &format!("server {};", inbox.admin),
                ),
            ],
        );
        let proxy = tools::nginx(&nginx, dir.path(), &conf, &https);
        let browser = Browser::new(
            &curl,
            dir.path(),
            tools::port(&https),
            &cert,
            &[SHOP, ADMIN_HOST],
        );
        Some(Stack {
            dir,
            inbox,
            _proxy: proxy,
            browser,
            http: tools::port(&http),
        })
    }

    fn caddy(test: &str, password: bool) -> Option<Stack> {
        let [caddy, curl] = find_all(test, [Tool::caddy(), Tool::curl()])?;
        let dir = TempDir::new("caddy");
        let inbox = start_production(dir.path(), |c| without_password(c, password));
        let file = substitute(
            "Caddyfile",
            &deploy_doc("Caddyfile"),
            &[
                (
                    "reverse_proxy 127.0.0.1:8080",
                    &format!("reverse_proxy {}", inbox.webhook),
                ),
                (
                    "reverse_proxy 127.0.0.1:8081",
                    &format!("reverse_proxy {}", inbox.admin),
                ),
            ],
        );
        let (http, https) = (tools::port(&free_addr()), tools::port(&free_addr()));
        let (proxy, ca) = tools::caddy(&caddy, dir.path(), &file, (http, https), 2);
        let browser = Browser::new(&curl, dir.path(), https, &ca, &[SHOP, ADMIN_HOST]);
        Some(Stack {
            dir,
            inbox,
            _proxy: proxy,
            browser,
            http,
        })
    }

    /// Plain http on both names is redirected to https.
    fn redirects_http(&mut self) {
        for host in [SHOP, ADMIN_HOST] {
            let url = format!("http://{host}:{}/webhooks/stripe", self.http);
            let resolve = format!("{host}:{}:127.0.0.1", self.http);
            let reply = self.browser.fetch(&url, &["--resolve", &resolve]);
            assert!(matches!(reply.status, 301 | 308), "{url}: {reply:?}");
            let to = reply.header("location").unwrap_or_default();
            assert!(to.starts_with(&format!("https://{host}")), "{url} -> {to}");
        }
    }

    /// How many webhook requests `serve` logged.
    fn webhook_requests(&self) -> usize {
        self.inbox.log().matches("webhook POST").count()
    }
}

/// A realistic event whose bytes a proxy could be tempted to touch: CRLF and tab whitespace,
/// non-ASCII text, a trailing newline, 600 KB of padding (under the 1 MiB limit).
fn awkward_event() -> Vec<u8> {
    let mut event: serde_json::Value = serde_json::from_slice(&event("customer.updated")).unwrap();
    event["data"]["object"]["name"] = "Zoë Müller — 東京 🙂".into();
    event["data"]["object"]["metadata"] = serde_json::json!({ "padding": "x".repeat(600_000) });
    let text = serde_json::to_string_pretty(&event).unwrap();
    format!("{}\r\n", text.replacen("\n", "\r\n\t", 3)).into_bytes()
}

/// A signed event through the proxy is answered 200 and stored byte for byte; without its
/// signature header it is refused; other paths never reach stripe-inbox.
fn webhook_through_proxy(stack: &mut Stack) {
    let body = awkward_event();
    let sig = format!("Stripe-Signature: {}", stripe_signature(&body));
    let json = "Content-Type: application/json; charset=utf-8".to_string();
    let reply = stack.browser.post(
        SHOP,
        "/webhooks/stripe",
        &body,
        &[sig.clone(), json.clone()],
    );
    assert_eq!(reply.status, 200, "{reply:?}\n{}", stack.inbox.log());
    assert!(
        reply.text().contains("\"received\":true"),
        "{}",
        reply.text()
    );
    let conn = store::open_read_only(&stack.inbox.db).unwrap();
    let stored: Vec<u8> = conn
        .query_row(
            "SELECT body FROM events WHERE id = ?1",
            [event_id(&body)],
            |r| r.get(0),
        )
        .unwrap();
    assert!(stored == body, "the stored body differs from the one sent");

    // The same body again is a duplicate; without the header, a 400.
    let again = stack
        .browser
        .post(SHOP, "/webhooks/stripe", &body, &[sig, json.clone()]);
    assert_eq!(again.status, 200);
    assert!(again.text().contains("duplicate"), "{}", again.text());
    let unsigned = stack.browser.post(SHOP, "/webhooks/stripe", &body, &[json]);
    assert_eq!(unsigned.status, 400, "{unsigned:?}");

    // Only the webhook path is passed on.
    let before = stack.webhook_requests();
    for path in ["/", "/webhooks/stripe/x", "/metrics", "/healthz"] {
        assert_eq!(stack.browser.https(SHOP, path, &[]).status, 404, "{path}");
    }
    assert_eq!(stack.webhook_requests(), before);
    assert_eq!(crate::support::event_count(&stack.inbox.db), 1);
}

/// A signed 2 MiB body is answered 413 and nothing is stored: sent with its length (as curl
/// does, waiting for "100 Continue"; and without waiting), and chunked. Returns whether
/// stripe-inbox saw any of these requests (false: the proxy answered every one).
fn big_body_through_proxy(stack: &mut Stack) -> bool {
    let mut body = event("invoice.paid");
    let pad = vec![b' '; 2 * 1024 * 1024 - body.len()];
    body.splice(1..1, pad);
    let sig = format!("Stripe-Signature: {}", stripe_signature(&body));
    let before = stack.webhook_requests();
    for extra in [
        "Expect: 100-continue",
        "Expect:",
        "Transfer-Encoding: chunked",
    ] {
        let headers = [sig.clone(), extra.to_string()];
        let reply = stack
            .browser
            .post(SHOP, "/webhooks/stripe", &body, &headers);
        assert_eq!(
            reply.status,
            413,
            "{extra}: {reply:?}\n{}",
            stack.inbox.log()
        );
    }
    assert_eq!(crate::support::event_count(&stack.inbox.db), 0);
    stack.webhook_requests() > before
}

/// The admin site through the proxy: anonymous → login page; log in with the password; the
/// session and CSRF cookies are `Secure` and `__Host-`; the dashboard shows; log out.
fn admin_through_proxy(stack: &mut Stack) {
    let b = &mut stack.browser;
    let first = b.https(ADMIN_HOST, "/", &[]);
    assert_eq!(first.status, 303, "{first:?}\n{}", stack.inbox.log());
    assert_eq!(first.header("location").as_deref(), Some("/login"));
    let form = b.https(ADMIN_HOST, "/login", &[]);
    assert_eq!(form.status, 200, "{form:?}");
    let token = csrf(&form.text());
    let wrong = b.https(
        ADMIN_HOST,
        "/login",
        &[
            "--data-urlencode",
            &format!("csrf_token={token}"),
            "--data-urlencode",
            "password=not it",
        ],
    );
    assert_eq!(wrong.status, 401, "{wrong:?}");
    let token = csrf(&wrong.text());
    let login = b.https(
        ADMIN_HOST,
        "/login",
        &[
            "--data-urlencode",
            &format!("csrf_token={token}"),
            "--data-urlencode",
            &format!("password={PASSWORD}"),
        ],
    );
    assert_eq!(login.status, 303, "{login:?}\n{}", stack.inbox.log());
    let set = login.headers("set-cookie");
    let session = set
        .iter()
        .find(|c| c.starts_with("__Host-stripe_inbox_session="))
        .unwrap_or_else(|| panic!("no __Host- session cookie: {set:?}"));
    assert!(
        session.contains("; Secure") && session.contains("HttpOnly"),
        "{session}"
    );
    let jar = b.cookies();
    assert!(
        jar.iter()
            .any(|(n, secure)| n == "__Host-stripe_inbox_session" && *secure),
        "curl keeps the session as a Secure cookie: {jar:?}"
    );
    let page = b.https(ADMIN_HOST, "/", &[]);
    assert_eq!(page.status, 200, "{page:?}");
    assert!(page.text().contains("Log out"), "{}", page.text());
    assert!(b.https(ADMIN_HOST, "/events", &[]).status == 200);
    let token = csrf(&page.text());
    let out = b.https(
        ADMIN_HOST,
        "/logout",
        &["--data-urlencode", &format!("csrf_token={token}")],
    );
    assert_eq!(out.status, 303);
    assert_eq!(b.https(ADMIN_HOST, "/", &[]).status, 303);
    loopback_only_endpoints_stay_on_loopback(stack);
    // The admin listener answered through the proxy, and logged the login.
    assert!(stack.inbox.log().contains("login"), "{}", stack.inbox.log());
}

/// Without a password, the admin site of the proxy is harmless: stripe-inbox answers no page
/// without the one-time login link's session (issue 13: no header decides), and `/healthz` and
/// `/metrics`, which need no login, are not passed on at all.
fn admin_without_password_through_proxy(stack: &mut Stack) {
    for path in ["/", "/events", "/objects"] {
        let reply = stack.browser.https(ADMIN_HOST, path, &[]);
        assert_eq!(reply.status, 303, "{path}: {reply:?}");
        assert_eq!(
            reply.header("location").as_deref(),
            Some("/login"),
            "{path}"
        );
    }
    let login = stack.browser.https(ADMIN_HOST, "/login", &[]);
    assert!(
        login.text().contains("one-time login link"),
        "{}",
        login.text()
    );
    loopback_only_endpoints_stay_on_loopback(stack);
}

/// `/healthz`, `/metrics` and the Stripe client's control endpoint (`/control/`) get a 404 from
/// the proxy, and never reach stripe-inbox.
fn loopback_only_endpoints_stay_on_loopback(stack: &mut Stack) {
    let requests = |stack: &Stack| {
        let log = stack.inbox.log();
        log.matches("admin GET ").count() + log.matches("admin POST ").count()
    };
    let before = requests(stack);
    for path in ["/healthz", "/metrics", "/metrics?x=1", "/control/jobs/1"] {
        let reply = stack.browser.https(ADMIN_HOST, path, &[]);
        assert_eq!(reply.status, 404, "{path}: {reply:?}");
    }
    // Over HTTP/1.1, as the CLI speaks: over HTTP/2 Caddy answers before it reads the body and
    // then resets the stream, which curl reports as an error instead of the 404.
    let work = stack.browser.https(
        ADMIN_HOST,
        "/control/work",
        &[
            "--http1.1",
            "-H",
            "Authorization: Bearer x",
            "--data-binary",
            "{}",
        ],
    );
    assert_eq!(work.status, 404, "{work:?}");
    assert_eq!(requests(stack), before);
}

/// The clients of the real-client tests, each on a loopback address of its own, and the address
/// a client writes into `X-Forwarded-For` to pass for someone else.
const CLIENT: &str = "127.0.0.2";
const OTHER_CLIENT: &str = "127.0.0.3";
const FORGED: &str = "203.0.113.9";

/// The first line of `serve`'s log that contains `needle`, waiting for it (a request's line is
/// written just after its answer is sent).
fn wait_log_line(inbox: &Inbox, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(line) = inbox.log().lines().find(|l| l.contains(needle)) {
            return line.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no log line with {needle}:\n{}",
            inbox.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The documented `trusted_proxies` (the proxy on this machine, 127.0.0.1) make the log and the
/// limits see the real client behind the proxy, and only behind it:
/// - a signed event from 127.0.0.2 through the proxy is logged with `peer=127.0.0.1:...
///   client=127.0.0.2`, and so is one that carries a forged `X-Forwarded-For: 203.0.113.9` (the
///   proxy replaces the header, and the client is read from its right end anyway);
/// - the same forged header sent straight to stripe-inbox from 127.0.0.2 is ignored: the line
///   names the peer 127.0.0.2 and no other client, and 203.0.113.9 appears nowhere in the log;
/// - five wrong admin passwords from 127.0.0.2 through the proxy make its sixth attempt wait
///   (429, also when it forges the header to pass for another client), while 127.0.0.3 behind the
///   same proxy is not held back: its wrong password is a plain 401 and the right one logs it in.
///   Without `trusted_proxies` both would count as 127.0.0.1, and the owner would be locked out.
fn real_client_through_proxy(stack: &mut Stack) {
    let mut client = stack.browser.bound_to(CLIENT);
    let client_is = format!(" client={CLIENT} ");
    for forged in [None, Some(FORGED)] {
        let body = event("invoice.paid");
        let mut headers = vec![format!("Stripe-Signature: {}", stripe_signature(&body))];
        headers.extend(forged.map(|ip| format!("X-Forwarded-For: {ip}")));
        let reply = client.post(SHOP, "/webhooks/stripe", &body, &headers);
        assert_eq!(reply.status, 200, "{reply:?}\n{}", stack.inbox.log());
        let line = wait_log_line(&stack.inbox, &format!("event={}", event_id(&body)));
        assert!(
            line.contains(" peer=127.0.0.1:") && line.contains(&client_is),
            "forged {forged:?}: {line}"
        );
    }
    let body = event("invoice.paid");
    let sig = stripe_signature(&body);
    let request = crate::support::request(
        "POST",
        "/webhooks/stripe",
        &body,
        &[("Stripe-Signature", &sig), ("X-Forwarded-For", FORGED)],
        true,
    );
    let reply = call_from(CLIENT, stack.inbox.webhook.parse().unwrap(), &request);
    assert_eq!(reply.status, 200, "{reply:?}");
    let line = wait_log_line(&stack.inbox, &format!("event={}", event_id(&body)));
    assert!(
        line.contains(&format!(" peer={CLIENT}:")) && !line.contains("client="),
        "straight to stripe-inbox: {line}"
    );

    // The login limits, per real client.
    let login = |b: &mut Browser, token: &str, password: &str, forge: bool| {
        let mut args = vec![
            "--data-urlencode".to_string(),
            format!("csrf_token={token}"),
            "--data-urlencode".to_string(),
            format!("password={password}"),
        ];
        if forge {
            args.extend(["-H".to_string(), format!("X-Forwarded-For: {FORGED}")]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        b.https(ADMIN_HOST, "/login", &args)
    };
    let mut token = csrf(&client.https(ADMIN_HOST, "/login", &[]).text());
    for attempt in 1..=6 {
        let reply = login(&mut client, &token, "not it", attempt == 6);
        let expected = if attempt <= 5 { 401 } else { 429 };
        assert_eq!(reply.status, expected, "attempt {attempt}: {reply:?}");
        token = csrf(&reply.text());
    }
    let mut other = stack.browser.bound_to(OTHER_CLIENT);
    let token = csrf(&other.https(ADMIN_HOST, "/login", &[]).text());
    let wrong = login(&mut other, &token, "not it either", false);
    assert_eq!(
        wrong.status, 401,
        "{OTHER_CLIENT} is not held back: {wrong:?}"
    );
    let ok = login(&mut other, &csrf(&wrong.text()), PASSWORD, false);
    assert_eq!(ok.status, 303, "{ok:?}\n{}", stack.inbox.log());
    wait_log_line(
        &stack.inbox,
        &format!("admin login ok client={OTHER_CLIENT}"),
    );
    let log = stack.inbox.log();
    assert_eq!(
        log.matches(&format!("admin login failed client={CLIENT}\n"))
            .count(),
        5,
        "{log}"
    );
    assert!(
        log.contains(&format!("admin login rate-limited client={CLIENT}\n")),
        "{log}"
    );
    assert!(
        !log.contains(FORGED),
        "the forged address was believed:\n{log}"
    );
}

/// The CSRF token in a page's forms.
fn csrf(html: &str) -> String {
    let key = "name=\"csrf_token\" value=\"";
    let at = html
        .find(key)
        .unwrap_or_else(|| panic!("no csrf field in {html}"));
    let rest = &html[at + key.len()..];
    rest[..rest.find('"').unwrap()].to_string()
}

#[test]
fn nginx_passes_signed_events_byte_exact() {
    let Some(mut stack) = Stack::nginx("nginx_passes_signed_events_byte_exact", true) else {
        return;
    };
    webhook_through_proxy(&mut stack);
    stack.redirects_http();
    // certbot's renewals get their challenge on plain http, not a redirect.
    let url = format!(
        "http://{SHOP}:{}/.well-known/acme-challenge/token-1",
        stack.http
    );
    let resolve = format!("{SHOP}:{}:127.0.0.1", stack.http);
    let reply = stack.browser.fetch(&url, &["--resolve", &resolve]);
    assert_eq!((reply.status, reply.text().as_str()), (200, "token-1.key"));
    let log = std::fs::read_to_string(stack.dir.path().join("nginx-access.log")).unwrap();
    assert!(
        log.contains("POST /webhooks/stripe HTTP/1.1\" 200"),
        "{log}"
    );
}

#[test]
fn nginx_refuses_a_2mb_body_with_413_itself() {
    let Some(mut stack) = Stack::nginx("nginx_refuses_a_2mb_body_with_413_itself", true) else {
        return;
    };
    assert!(
        !big_body_through_proxy(&mut stack),
        "nginx answers, not stripe-inbox"
    );
}

#[test]
fn nginx_admin_login_with_password_and_secure_cookie() {
    let Some(mut stack) = Stack::nginx("nginx_admin_login_with_password_and_secure_cookie", true)
    else {
        return;
    };
    admin_through_proxy(&mut stack);
}

#[test]
fn nginx_admin_without_password_is_refused() {
    let Some(mut stack) = Stack::nginx("nginx_admin_without_password_is_refused", false) else {
        return;
    };
    admin_without_password_through_proxy(&mut stack);
}

#[test]
fn caddy_admin_without_password_is_refused() {
    let Some(mut stack) = Stack::caddy("caddy_admin_without_password_is_refused", false) else {
        return;
    };
    admin_without_password_through_proxy(&mut stack);
}

#[test]
fn caddy_passes_signed_events_byte_exact() {
    let Some(mut stack) = Stack::caddy("caddy_passes_signed_events_byte_exact", true) else {
        return;
    };
    webhook_through_proxy(&mut stack);
    stack.redirects_http();
}

#[test]
fn caddy_refuses_a_2mb_body_with_413_itself() {
    let Some(mut stack) = Stack::caddy("caddy_refuses_a_2mb_body_with_413_itself", true) else {
        return;
    };
    assert!(
        !big_body_through_proxy(&mut stack),
        "caddy answers, not stripe-inbox"
    );
}

#[test]
fn caddy_admin_login_with_password_and_secure_cookie() {
    let Some(mut stack) = Stack::caddy("caddy_admin_login_with_password_and_secure_cookie", true)
    else {
        return;
    };
    admin_through_proxy(&mut stack);
}

#[test]
fn nginx_logs_the_real_client_address_when_trusted() {
    let Some(mut stack) = Stack::nginx("nginx_logs_the_real_client_address_when_trusted", true)
    else {
        return;
    };
    real_client_through_proxy(&mut stack);
}

#[test]
fn caddy_logs_the_real_client_address_when_trusted() {
    let Some(mut stack) = Stack::caddy("caddy_logs_the_real_client_address_when_trusted", true)
    else {
        return;
    };
    real_client_through_proxy(&mut stack);
}

/// Reads `Key=value` lines of a unit's `[Service]` section (the last value of a key wins, as
/// for every key these tests read).
fn unit_settings(unit: &str) -> HashMap<String, String> {
    let mut in_service = false;
    let mut out = HashMap::new();
    for line in unit.lines().map(str::trim) {
        if line.starts_with('[') {
            in_service = line == "[Service]";
        } else if in_service && !line.starts_with('#') {
            if let Some((k, v)) = line.split_once('=') {
                out.insert(k.trim().to_string(), v.trim().to_string());
            }
        }
    }
    out
}

/// Whether systemd is PID 1 here (it is not in a container like CI's).
fn systemd_is_pid1() -> bool {
    std::fs::read_to_string("/proc/1/comm").is_ok_and(|c| c.trim() == "systemd")
}

/// Both units pass `systemd-analyze verify` without a single warning (an unknown or misspelt
/// option, a bad value, a missing binary: each is a warning), with the binary each names present;
/// each has the settings docs/deploy/README.md promises; and `systemd-analyze security` rates
/// the sandbox they add up to.
#[test]
fn systemd_units_verify_cleanly_with_their_hardening() {
    let test = "systemd_units_verify";
    let Some([analyze]) = find_all(test, [Tool::systemd_analyze()]) else {
        return;
    };
    let started = Instant::now();
    let dir = TempDir::new("systemd");
    // The binaries the units name: the built one, and Litestream if it is installed (verify only
    // needs an executable there).
    let litestream = Tool::litestream()
        .locate()
        .unwrap_or_else(|| PathBuf::from(tools::BIN));
    let units = [
        (
            "stripe-inbox.service",
            "/usr/local/bin/stripe-inbox",
            PathBuf::from(tools::BIN),
        ),
        (
            "litestream.service",
            "/usr/local/bin/litestream",
            litestream,
        ),
    ];
    let hardening = [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectControlGroups=yes",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "RestrictNamespaces=yes",
        "SystemCallFilter=@system-service",
        "CapabilityBoundingSet=",
        "User=stripe-inbox",
        "Restart=on-failure",
        "ReadWritePaths=/var/lib/stripe-inbox",
    ];
    let mut report = Vec::new();
    for (name, bin, real) in units {
        let doc = deploy_doc(name);
        for line in hardening {
            assert!(doc.lines().any(|l| l.trim() == line), "{name} lacks {line}");
        }
        let settings = unit_settings(&doc);
        assert!(settings.contains_key("TimeoutStopSec"), "{name}");
        assert!(settings.contains_key("EnvironmentFile"), "{name}");
        // The documented database's directory is writable: the database, its -wal and -shm, the
        // lock, the control file and the backups' record all sit there.
        let state = Path::new(DOC_DB).parent().unwrap().to_str().unwrap();
        assert!(
            settings["ReadWritePaths"]
                .split_whitespace()
                .any(|p| p == state),
            "{name}: {state} is not writable"
        );
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            substitute(name, &doc, &[(bin, &real.display().to_string())]),
        )
        .unwrap();
        let out = Command::new(&analyze)
            .arg("verify")
            .arg(&path)
            .output()
            .unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && said.trim().is_empty(),
            "verify {name}:\n{said}"
        );

        // Every hardening option is one that systemd evaluates, and they add up to an exposure
        // of at most 2.0 ("OK"; 10 is an unsandboxed service).
        let out = Command::new(&analyze)
            .args(["security", "--offline=true", "--threshold=20"])
            .arg(&path)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "security {name}:\n{text}");
        let level = text
            .lines()
            .find(|l| l.contains("Overall exposure level"))
            .unwrap_or_default()
            .to_string();
        for setting in [
            "NoNewPrivileges=",
            "ProtectSystem=",
            "ProtectHome=",
            "PrivateTmp=",
            "PrivateDevices=",
            "RestrictNamespaces=~",
            "CapabilityBoundingSet=~CAP_SYS_ADMIN",
        ] {
            assert!(
                text.lines().any(|l| l.contains('✓') && l.contains(setting)),
                "{name}: systemd does not count {setting} as set:\n{text}"
            );
        }
        // And what the sandbox must leave open, as systemd reads it: internet sockets and the
        // host's network, for the outgoing connections (Stripe's API and forwarding from
        // stripe-inbox, the replica's store from Litestream).
        for open in [
            "RestrictAddressFamilies=~AF_(INET|INET6)",
            "PrivateNetwork=",
            "IPAddressDeny=",
        ] {
            assert!(
                text.lines()
                    .any(|l| l.trim_start().starts_with(&format!("✗ {open} "))),
                "{name}: the sandbox closes {open}, and outgoing connections with it:\n{text}"
            );
        }
        let level = level
            .rsplit(':')
            .next()
            .unwrap_or_default()
            .trim()
            .to_string();
        report.push(format!("{name} exposure {level}"));
    }
    println!(
        "systemd: both units verify cleanly; {}; systemd is {}PID 1 here ({:.1} s)",
        report.join("; "),
        if systemd_is_pid1() { "" } else { "not " },
        started.elapsed().as_secs_f64()
    );
}

/// The unit's ExecStart line, run as systemd would run it: with its `Environment=` and the
/// variables of its EnvironmentFile (the machine's secrets.env, read as systemd reads it:
/// `KEY=VALUE` lines) and nothing else, on the config at `config`.
fn exec_start(
    settings: &HashMap<String, String>,
    machine: &Machine,
    config: &Path,
    log: &Path,
) -> Daemon {
    assert_eq!(settings["EnvironmentFile"], "/etc/stripe-inbox/secrets.env");
    let exec = substitute(
        "stripe-inbox.service",
        &settings["ExecStart"],
        &[
            ("/usr/local/bin/stripe-inbox", tools::BIN),
            ("/etc/stripe-inbox/config.toml", config.to_str().unwrap()),
        ],
    );
    let argv: Vec<&str> = exec.split_whitespace().collect();
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..])
        .env_clear()
        .env("PATH", "/usr/bin:/bin");
    if let Some((k, v)) = settings.get("Environment").and_then(|e| e.split_once('=')) {
        cmd.env(k, v);
    }
    for line in std::fs::read_to_string(&machine.secrets).unwrap().lines() {
        let (k, v) = line.split_once('=').unwrap();
        cmd.env(k, v);
    }
    Daemon::spawn("ExecStart", cmd, log)
}

/// The unit's ExecStart line, run as systemd would (its Environment= and the EnvironmentFile's
/// variables, the documented config with temporary paths), under load; then the unit's
/// KillSignal. The server must exit 0 within TimeoutStopSec with every answered event stored. Run
/// directly, since systemd is not PID 1 in a container like this one (`systemd-analyze verify`
/// above checks the unit itself).
#[test]
fn systemd_exec_start_stops_on_kill_signal_within_timeout_losing_nothing() {
    let test = "systemd_exec_start";
    let Some([_analyze]) = find_all(test, [Tool::systemd_analyze()]) else {
        return;
    };
    let settings = unit_settings(&deploy_doc("stripe-inbox.service"));
    let dir = TempDir::new("systemd-exec");
    let db = dir.path().join("stripe-inbox.db");
    let (webhook, admin) = (free_addr(), free_addr());
    let config = dir.path().join("config.toml");
    std::fs::write(&config, production_config(&db, &webhook, &admin)).unwrap();
    let machine = Machine::new(dir.path(), &config, &db, None);
    let mut server = exec_start(&settings, &machine, &config, &dir.path().join("exec.log"));
    server.wait_listening(&webhook);
    server.wait_listening(&admin);

    let load = Load::start(&webhook, 8);
    std::thread::sleep(Duration::from_millis(1500));
    let signal = settings["KillSignal"].trim_start_matches("SIG").to_string();
    let timeout: u64 = settings["TimeoutStopSec"].parse().unwrap();
    let sent = Instant::now();
    server.signal(&signal);
    let status = server.wait_for(Duration::from_secs(timeout));
    let stopped = sent.elapsed();
    let (answered, _) = load.stop();
    let status = status.unwrap_or_else(|| {
        panic!(
            "still running {timeout} s after SIG{signal}:\n{}",
            server.log()
        )
    });
    assert!(
        status.success(),
        "exit {status} on SIG{signal}:\n{}",
        server.log()
    );
    assert!(answered.len() > 50, "only {} answered", answered.len());
    let ids = stored_ids(&db);
    let lost = answered
        .iter()
        .filter(|(id, _)| !ids.contains_key(id))
        .count();
    assert_eq!(
        lost,
        0,
        "{lost} of {} answered events are not stored",
        answered.len()
    );
    // The check of docs/deploy/README.md, with the same secrets file.
    let out = machine.run_documented("README.md", INBOX_CHECK);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("all good"),
        "{}",
        crate::support::process::text(&out)
    );
    println!(
        "systemd: ExecStart under load, SIG{signal}: exit 0 after {} ms (TimeoutStopSec={timeout}), \
         {} answered events all stored; systemd is {}PID 1 here",
        stopped.as_millis(),
        answered.len(),
        if systemd_is_pid1() { "" } else { "not " },
    );
}

/// The command of stripe-inbox.cron's line (after its five time fields and the user, which must
/// be the service's), with the documented binary, config and backup directory replaced.
fn cron_command(config: &Path, backups: &Path) -> String {
    let cron = deploy_doc("stripe-inbox.cron");
    let line = cron
        .lines()
        .rfind(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .expect("stripe-inbox.cron has no line");
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields[5], "stripe-inbox", "{line}");
    substitute(
        "stripe-inbox.cron",
        &fields[6..].join(" "),
        &[
            ("/usr/local/bin/stripe-inbox", tools::BIN),
            ("/etc/stripe-inbox/config.toml", config.to_str().unwrap()),
            ("/var/backups/stripe-inbox", backups.to_str().unwrap()),
        ],
    )
}

/// docs/deploy/config.toml's `[[forward]]` block uncommented, its destination at `url`.
fn with_forwarding(config: &str, url: &str) -> String {
    let at = config
        .find("# [[forward]]\n")
        .expect("docs/deploy/config.toml no longer has a [[forward]] block to uncomment");
    let block: String = config[at..]
        .lines()
        .map(|l| format!("{}\n", l.strip_prefix("# ").unwrap_or(l)))
        .collect();
    let block = substitute(
        "config.toml",
        &block,
        &[("http://127.0.0.1:3000/stripe/webhook", url)],
    );
    format!("{}{block}", &config[..at])
}

/// The documented setup with what is optional in it turned on: `STRIPE_API_KEY` and
/// `APP_WEBHOOK_SECRET` in secrets.env (written as docs/deploy/README.md writes them), the
/// config's `[[forward]]` block uncommented, run through the unit's ExecStart line. Stripe's API
/// is a local stub (the one more line: `[stripe] api_base`), the app a local one that verifies
/// every request with Stripe's Python library. Shows that the control file is written beside the database
/// (in the unit's writable state directory) for the service's user only, that the documented
/// `send-test-event` (to the webhook listener: no proxy here) and a signed event are forwarded to
/// the app signed with the secret from secrets.env, that the documented `backfill` hands its work
/// to the server, which asks the API with the key from the EnvironmentFile and mirrors the stub's
/// customers, that `check` warns about no backups until the nightly cron line has run (in cron's
/// bare environment, without the secrets) and about nothing after, and that the server still
/// stops cleanly on the unit's KillSignal, removing the control file.
#[test]
fn systemd_exec_start_runs_the_stripe_client_and_forwarding_as_documented() {
    let started = Instant::now();
    let stub = Stub::start(Account {
        objects: std::collections::BTreeMap::from([(
            "customers".into(),
            customers(12, 1_700_000_000),
        )]),
        ..Account::default()
    });
    let app = forward::App::start(forward::always_ok());
    let settings = unit_settings(&deploy_doc("stripe-inbox.service"));
    // Under the build directory, not a temp dir that may be a tmpfs (see the Litestream test).
    let dir = TempDir::new_in(Path::new(env!("CARGO_TARGET_TMPDIR")), "systemd-api");
    let db = dir.path().join("stripe-inbox.db");
    let (webhook, admin) = (free_addr(), free_addr());
    let config = dir.path().join("config.toml");
    let text = substitute(
        "config.toml",
        &production_config(&db, &webhook, &admin),
        &[(
            "api_key_env = \"STRIPE_API_KEY\"\n",
            &format!(
                "api_key_env = \"STRIPE_API_KEY\"\napi_base = \"{}\"\n",
                stub.base()
            ),
        )],
    );
    std::fs::write(&config, with_forwarding(&text, &app.url())).unwrap();
    let mut machine = Machine::new(dir.path(), &config, &db, None);
    const KEY: &str = "rk_test_deploy0123456789";
    machine.add_secrets(&[
        ("STRIPE_API_KEY", KEY),
        ("APP_WEBHOOK_SECRET", forward::APP_SECRET),
    ]);
    machine.paths.push((
        "https://shop.example.com/webhooks/stripe",
        format!("http://{webhook}/webhooks/stripe"),
    ));
    let mut server = exec_start(&settings, &machine, &config, &dir.path().join("exec.log"));
    server.wait_listening(&webhook);
    server.wait_listening(&admin);

    let control = dir.path().join("stripe-inbox.db.control");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&control)
            .unwrap_or_else(|e| panic!("{}: {e}", control.display()))
            .permissions(),
    );
    assert_eq!(
        mode & 0o777,
        0o600,
        "only the service's user reads the token"
    );

    // Events, forwarded to the app.
    let out = machine.run_documented("README.md", SEND_TEST_EVENT);
    let said = crate::support::process::text(&out);
    assert!(out.status.success() && said.contains("-> 200"), "{said}");
    let body = event("invoice.paid");
    assert_eq!(post_signed(&webhook, &body), Some(200));
    app.wait_until("both events", Duration::from_secs(20), |seen| {
        seen.iter().filter(|s| s.status == 200).count() >= 2
    });
    let seen = app.seen();
    forward::assert_all_verified(&seen);
    assert!(seen.iter().any(|s| s.event_id == event_id(&body)));

    // The documented backfill, handed to the running server.
    let out = machine.run_documented("README.md", INBOX_BACKFILL);
    let said = crate::support::process::text(&out);
    assert!(out.status.success(), "{said}\n{}", server.log());
    assert!(
        said.contains("handing the work to the running server") && said.contains("12 fetched"),
        "{said}"
    );
    let conn = store::open_read_only(&db).unwrap();
    let backfilled: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM objects WHERE source = 'backfill'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(backfilled, 12);
    // With the key from secrets.env, the one in the server's environment (the command's own is
    // not used: the server does the work).
    let bearer = format!("Bearer {KEY}");
    let requests = stub.requests();
    assert!(
        !requests.is_empty()
            && requests
                .iter()
                .all(|r| r.header("Authorization") == Some(bearer.as_str())),
        "{requests:?}"
    );

    // The nightly backup, as cron runs stripe-inbox.cron's line: as the service's user, in cron's
    // bare environment (no secrets.env). `check` warns that there are no backups before it (no
    // Litestream in this test), and about nothing after it.
    let warnings = |machine: &Machine| {
        let out = machine.run_documented("README.md", INBOX_CHECK);
        let said = crate::support::process::text(&out);
        assert!(out.status.success() && said.contains("all good"), "{said}");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("warning:"))
            .map(String::from)
            .collect::<Vec<_>>()
    };
    let before = warnings(&machine);
    assert!(
        before.len() == 1 && before[0].starts_with("warning: no backups"),
        "{before:?}"
    );
    let backups = dir.path().join("backups");
    std::fs::create_dir(&backups).unwrap();
    let cron = cron_command(&config, &backups);
    let out = Command::new("sh")
        .args(["-c", &cron])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{cron}\n{}",
        crate::support::process::text(&out)
    );
    assert_eq!(std::fs::read_dir(&backups).unwrap().count(), 1);
    let after = warnings(&machine);
    assert!(after.is_empty(), "{after:?}");

    let signal = settings["KillSignal"].trim_start_matches("SIG").to_string();
    server.signal(&signal);
    let timeout: u64 = settings["TimeoutStopSec"].parse().unwrap();
    let status = server.wait_for(Duration::from_secs(timeout));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        server.log()
    );
    assert!(!control.exists(), "the control file is removed at the stop");
    println!(
        "systemd: ExecStart with the API key and forwarding: {} requests to the API stub, {} \
         forwarded and verified{}, 12 customers backfilled through the control file ({:.1} s)",
        stub.requests().len(),
        seen.len(),
        if forward::verifying() {
            " by stripe-python"
        } else {
            " (NOT by stripe-python: not installed)"
        },
        started.elapsed().as_secs_f64()
    );
}
