//! The command line: argv → one `run_*` function per subcommand, each with its usage text beside it.
//!
//! Arguments are parsed with `lexopt` (correct `--opt=value` / `--opt value` handling and non-UTF-8
//! paths without a macro framework). Every command takes `--help`. Usage errors carry a `try:` hint
//! and exit 2; runtime errors exit 1.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Instant;

use lexopt::prelude::*;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::service::Service;
use crate::store::{self, Lock};
use crate::{event::signature, event::testevent, mirror::replay, time};

use rusqlite::OptionalExtension;

const USAGE: &str = "\
stripe-inbox: a durable, verified inbox and mirror for Stripe webhooks

usage: stripe-inbox <command> [options]

commands:
  serve             receive webhooks and serve the admin listener
  check             validate the config and check the database
  backup OUT        copy the database consistently while the server runs
  restore IN        put a backup in place of the database (server stopped)
  prune             empty the bodies of old events ([retention] body_days)
  export            write events as JSON Lines to stdout
  send-test-event   build a realistic event, sign it and POST it (a local `stripe trigger`)
  replay --rebuild  rebuild the whole mirror from the stored events
  object ID         show a mirrored object and every event that touched it, with decisions

Every command takes --config PATH (default: $STRIPE_INBOX_CONFIG, else ./stripe-inbox.toml)
and --help. Logging: RUST_LOG=debug|info|warn (default info).
";

/// Runs the command line (without the program name).
pub fn run(args: impl IntoIterator<Item = OsString>) -> Result<()> {
    let mut parser = lexopt::Parser::from_args(args);
    let command = match parser.next().map_err(usage)? {
        Some(Value(cmd)) => cmd.string().map_err(usage)?,
        Some(Long("help") | Short('h')) => {
            print!("{USAGE}");
            return Ok(());
        }
        Some(Long("version") | Short('V')) => {
            println!("stripe-inbox {}", env!("CARGO_PKG_VERSION"));
            return Ok(());
        }
        Some(other) => {
            return Err(Error::usage(
                other.unexpected().to_string(),
                "stripe-inbox --help",
            ))
        }
        None => return Err(Error::usage("no command given", "stripe-inbox --help")),
    };
    match command.as_str() {
        "serve" => run_serve(parser),
        "check" => run_check(parser),
        "backup" => crate::ops::backup::run_backup(parser),
        "restore" => crate::ops::restore::run_restore(parser),
        "prune" => crate::ops::retention::run_prune(parser),
        "export" => crate::ops::export::run_export(parser),
        "send-test-event" => run_send_test_event(parser),
        "replay" => run_replay(parser),
        "object" => run_object(parser),
        "help" => {
            print!("{USAGE}");
            Ok(())
        }
        other => Err(Error::usage(
            format!("unknown command {other:?}"),
            "stripe-inbox --help",
        )),
    }
}

fn usage(err: lexopt::Error) -> Error {
    Error::usage(err.to_string(), "stripe-inbox --help")
}

/// What a command was given: the config path and the values of its own options.
struct Options {
    config: PathBuf,
    values: Vec<(&'static str, String)>,
}

impl Options {
    fn get(&self, name: &str) -> Option<&str> {
        self.values
            .iter()
            .rev()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses `--config` and `--help`, which every command takes, plus the options in `own` (long
/// name, short letter, whether it takes a value; a flag is recorded with the value "true").
/// Returns `Ok(None)` after printing help.
fn parse_options(
    mut parser: lexopt::Parser,
    help: &str,
    own: &[(&'static str, char, bool)],
) -> Result<Option<Options>> {
    let command = help.split_whitespace().nth(2).unwrap_or("");
    let hint = || format!("stripe-inbox {command} --help");
    let mut config = None;
    let mut values = Vec::new();
    while let Some(arg) = parser.next().map_err(usage)? {
        let found = match &arg {
            Long("config") | Short('c') => Some(("config", true)),
            Long("help") | Short('h') => {
                print!("{help}");
                return Ok(None);
            }
            Long(long) => own.iter().find(|(n, _, _)| n == long).map(|o| (o.0, o.2)),
            Short(short) => own.iter().find(|(_, c, _)| c == short).map(|o| (o.0, o.2)),
            Value(_) => None,
        };
        let Some((name, takes_value)) = found else {
            return Err(Error::usage(arg.unexpected().to_string(), hint()));
        };
        if !takes_value {
            values.push((name, "true".to_string()));
            continue;
        }
        let value = parser
            .value()
            .map_err(|e| Error::usage(e.to_string(), hint()))?;
        if name == "config" {
            config = Some(PathBuf::from(value));
        } else {
            let value = value
                .string()
                .map_err(|e| Error::usage(e.to_string(), hint()))?;
            values.push((name, value));
        }
    }
    Ok(Some(Options {
        config: Config::locate(config),
        values,
    }))
}

const SERVE_USAGE: &str = "\
usage: stripe-inbox serve [--config PATH]

Receives Stripe webhooks on [webhook] listen + path, verifies and stores each event durably before
answering 2xx, and serves the admin page, /healthz and /metrics on [admin] listen (with the
password from the variable [admin] password_env names; without one, loopback only). Stops cleanly
on SIGTERM or Ctrl-C: requests in flight are answered and everything answered is on disk.
";

fn run_serve(parser: lexopt::Parser) -> Result<()> {
    let Some(opts) = parse_options(parser, SERVE_USAGE, &[])? else {
        return Ok(());
    };
    let config = Config::load(&opts.config)?;
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .map_err(|e| Error::io("install signal handlers", e))?;
    let service = Service::start(&config)?;
    if let Some(signal) = signals.forever().next() {
        log::info!("received signal {signal}");
    }
    service.shutdown();
    Ok(())
}

const CHECK_USAGE: &str = "\
usage: stripe-inbox check [--config PATH]

Validates the config (keys, addresses, that a signing secret is set, without printing it), then
opens the database, applies pending migrations, runs PRAGMA integrity_check and prints what it
found. While a server holds the database it checks read-only and migrates nothing.
Exits 1 when anything is wrong.
";

fn run_check(parser: lexopt::Parser) -> Result<()> {
    let Some(opts) = parse_options(parser, CHECK_USAGE, &[])? else {
        return Ok(());
    };
    let path = opts.config;
    let config = Config::load(&path)?;
    let mut problems = Vec::new();
    println!("config {}: ok", path.display());
    println!(
        "  webhook: http://{}{}",
        config.webhook.listen, config.webhook.path
    );
    println!("  admin:   http://{}/", config.admin.listen);
    match config.admin_password() {
        Ok(Some(_)) => println!(
            "  admin password: set (from ${})",
            config.admin.password_env
        ),
        Ok(None) => println!("  admin password: none (the page is open on loopback only)"),
        Err(e) => {
            println!("  admin password: none, and the listener is not loopback");
            problems.push(e.to_string());
        }
    }
    match config.webhook_secrets() {
        Ok(secrets) => println!(
            "  signing secrets: {} ({} in the file, the rest from ${})",
            secrets.len(),
            config.webhook.secrets.len(),
            config.webhook.secrets_env
        ),
        Err(e) => {
            println!("  signing secrets: none");
            problems.push(e.to_string());
        }
    }

    let database = &config.database.path;
    println!("database {}:", database.display());
    let known = store::known_version();
    let (conn, _lock) = match Lock::acquire(database) {
        Ok(lock) => {
            let before = if database.exists() {
                store::schema_version(&store::open_read_only(database)?)?
            } else {
                0
            };
            let conn = store::open_writer(database)?;
            let after = store::schema_version(&conn)?;
            println!(
                "  schema version {after} (this build knows {known}); migrated {} step(s)",
                after - before
            );
            (conn, Some(lock))
        }
        Err(Error::Locked { holder, .. }) => {
            let conn = store::open_read_only(database)?;
            let found = store::schema_version(&conn)?;
            println!("  held by {holder}: checking read-only, nothing migrated");
            println!("  schema version {found} (this build knows {known})");
            if found > known {
                problems.push(format!(
                    "schema version {found} is newer than this build ({known})"
                ));
            }
            (conn, None)
        }
        Err(e) => return Err(e),
    };
    let integrity = store::integrity_problems(&conn)?;
    let mirror = if _lock.is_some() {
        Some(replay::verify_mirror(&conn)?)
    } else {
        None
    };
    if integrity.is_empty() {
        println!("  integrity: ok");
    } else {
        println!("  integrity: {} problem(s)", integrity.len());
        for p in integrity.iter().take(10) {
            println!("    {p}");
        }
        problems.push("integrity_check found problems".into());
    }
    // Hook: the mirror must agree with a rebuild from the events (see backup::mirror_problems).
    for p in crate::ops::backup::mirror_problems(&conn)? {
        println!("  mirror: {p}");
        problems.push(format!("mirror: {p}"));
    }
    let (events, deliveries, newest): (i64, i64, Option<i64>) = conn
        .query_row(
            "SELECT COUNT(*), COALESCE(SUM(deliveries), 0), MAX(received_at) FROM events",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .map_err(|e| Error::sqlite("count events", e))?;
    let size = std::fs::metadata(database).map(|m| m.len()).unwrap_or(0);
    println!(
        "  events: {events} ({deliveries} deliveries), file size {}",
        human_bytes(size)
    );
    if let Some(ms) = newest {
        let age = (time::now_ms() - ms) / 1000;
        println!(
            "  newest event received {} ({} ago)",
            time::format_utc(ms / 1000),
            human_age(age)
        );
    }
    match mirror {
        Some(m) if m.differing_count == 0 => {
            println!(
                "  mirror: {} objects, the same as a rebuild from the events",
                m.objects
            )
        }
        Some(m) => {
            println!(
                "  mirror: {} of {} objects differ from a rebuild from the events: {}",
                m.differing_count,
                m.objects,
                m.differing.join(", ")
            );
            problems.push(
                "the mirror differs from a rebuild (fix: stripe-inbox replay --rebuild)".into(),
            );
        }
        None => println!("  mirror: not compared with a rebuild while a server holds the database"),
    }
    if problems.is_empty() {
        println!("all good");
        Ok(())
    } else {
        Err(Error::Other(format!(
            "check found {} problem(s): {}",
            problems.len(),
            problems.join("; ")
        )))
    }
}

const SEND_TEST_EVENT_USAGE: &str = "\
usage: stripe-inbox send-test-event [--config PATH] [--type TYPE] [--url URL]

Builds a realistic event from Stripe's example objects, signs it with the first configured secret
(the Stripe-Signature header Stripe would send) and POSTs it: the local equivalent of
`stripe trigger`. Prints the answer; exits 1 unless it is 2xx.

  --type TYPE   the event type (default payment_intent.succeeded); --type list shows them all
  --url URL     where to send it (default http://<[webhook] listen><[webhook] path>)
";

fn run_send_test_event(parser: lexopt::Parser) -> Result<()> {
    let Some(opts) = parse_options(
        parser,
        SEND_TEST_EVENT_USAGE,
        &[("type", 't', true), ("url", 'u', true)],
    )?
    else {
        return Ok(());
    };
    let event_type = opts
        .get("type")
        .unwrap_or(testevent::KNOWN_TYPES[0])
        .to_string();
    let url = opts.get("url").map(String::from);
    if event_type == "list" {
        for t in testevent::KNOWN_TYPES {
            println!("{t}");
        }
        return Ok(());
    }
    let path = opts.config;
    let config = Config::load(&path)?;
    let secret = config.webhook_secrets()?.remove(0);
    let now = time::now_ms() / 1000;
    let event = testevent::build(&event_type, now).ok_or_else(|| {
        Error::usage(
            format!("no test event for type {event_type:?}"),
            "stripe-inbox send-test-event --type list",
        )
    })?;
    let body = serde_json::to_vec_pretty(&event)
        .map_err(|e| Error::Other(format!("encode event: {e}")))?;
    let url = url.unwrap_or_else(|| {
        let listen = config
            .webhook
            .listen
            .replace("0.0.0.0", "127.0.0.1")
            .replace("[::]", "[::1]");
        format!("http://{listen}{}", config.webhook.path)
    });
    let header = signature::sign(&body, &secret, now);

    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(30)))
        .build()
        .into();
    let started = Instant::now();
    let mut response = agent
        .post(&url)
        .header("Content-Type", "application/json; charset=utf-8")
        .header("User-Agent", "stripe-inbox send-test-event")
        .header("Stripe-Signature", &header)
        .send(&body[..])
        .map_err(|e| Error::Other(format!("POST {url}: {e}")))?;
    let status = response.status().as_u16();
    let answer = response.body_mut().read_to_string().unwrap_or_default();
    println!(
        "POST {url} {} {event_type} -> {status} in {:.1} ms: {}",
        event["id"].as_str().unwrap_or(""),
        started.elapsed().as_secs_f64() * 1000.0,
        answer.trim()
    );
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(Error::Other(format!("POST {url}: answered {status}")))
    }
}

const REPLAY_USAGE: &str = "\
usage: stripe-inbox replay --rebuild [--config PATH]

Empties the mirror (the objects table) and re-applies every stored event in arrival order, as the
server did when they arrived, recording each event's decision again. Events are the ground truth,
so this is always safe; it commits every 10,000 events, and an interrupted rebuild is finished by
running it again. Needs the database to itself: stop `serve` first.
";

fn run_replay(parser: lexopt::Parser) -> Result<()> {
    let Some(opts) = parse_options(parser, REPLAY_USAGE, &[("rebuild", 'r', false)])? else {
        return Ok(());
    };
    if opts.get("rebuild").is_none() {
        return Err(Error::usage(
            "replay needs --rebuild",
            "stripe-inbox replay --rebuild",
        ));
    }
    let config = Config::load(&opts.config)?;
    let database = &config.database.path;
    if !database.exists() {
        return Err(Error::Other(format!(
            "database {}: no such file",
            database.display()
        )));
    }
    let _lock = Lock::acquire(database)?;
    let conn = store::open_writer(database)?;
    let started = Instant::now();
    let mut bar = Progress::new("rebuilding mirror");
    let stats = replay::rebuild_all(&conn, 10_000, |done, total| bar.update(done, total))?;
    bar.finish();
    println!(
        "rebuilt the mirror from {} events: {} objects in {:.1} s",
        stats.events,
        stats.objects,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

const OBJECT_USAGE: &str = "\
usage: stripe-inbox object [--config PATH] ID

Prints the mirrored state of a Stripe object (cus_..., sub_..., in_..., pi_...) and the history of
every stored event about it, oldest first, with the decision the mirror took for each. Read-only;
works while `serve` runs.
";

fn run_object(mut parser: lexopt::Parser) -> Result<()> {
    let mut config = None;
    let mut id = None;
    let hint = || "stripe-inbox object --help".to_string();
    while let Some(arg) = parser.next().map_err(usage)? {
        match arg {
            Long("config") | Short('c') => {
                config = Some(PathBuf::from(parser.value().map_err(usage)?))
            }
            Long("help") | Short('h') => {
                print!("{OBJECT_USAGE}");
                return Ok(());
            }
            Value(v) if id.is_none() => id = Some(v.string().map_err(usage)?),
            other => return Err(Error::usage(other.unexpected().to_string(), hint())),
        }
    }
    let id = id.ok_or_else(|| Error::usage("object needs an ID", hint()))?;
    let config = Config::load(&Config::locate(config))?;
    let conn = store::open_read_only(&config.database.path)?;
    let sql = |e| Error::sqlite("read object", e);
    let object: Option<(String, bool, bool, Option<String>, i64, String)> = conn
        .query_row(
            "SELECT type, deleted, uncertain, event_id, updated_at, data FROM objects WHERE id = ?1",
            [&id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)),
        )
        .optional()
        .map_err(sql)?;
    let mut holder = None;
    match &object {
        Some((kind, deleted, uncertain, event_id, updated_at, data)) => {
            let mut flags = Vec::new();
            if *deleted {
                flags.push("deleted");
            }
            if *uncertain {
                flags.push("UNCERTAIN: a same-second tie fell to the last arrival");
            }
            println!(
                "{id} ({kind}){}",
                if flags.is_empty() {
                    String::new()
                } else {
                    format!(" [{}]", flags.join("; "))
                }
            );
            println!(
                "state from event {} at {}",
                event_id.as_deref().unwrap_or("-"),
                time::format_utc(updated_at / 1000)
            );
            let pretty = serde_json::from_str::<serde_json::Value>(data)
                .and_then(|v| serde_json::to_string_pretty(&v))
                .unwrap_or_else(|_| data.clone());
            println!("{pretty}");
            holder = event_id.clone();
        }
        None => println!("{id}: not in the mirror"),
    }
    let mut stmt = conn
        .prepare(
            "SELECT seq, id, type, created, deliveries, COALESCE(decision, '-') FROM events
             WHERE object_id = ?1 ORDER BY created, seq",
        )
        .map_err(sql)?;
    let rows = stmt
        .query_map([&id], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, String>(5)?,
            ))
        })
        .map_err(sql)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(sql)?;
    println!(
        "\nhistory ({} events, by created then arrival):",
        rows.len()
    );
    println!(
        "  {:<21} {:<6} {:<30} {:<36} {:>4}  decision",
        "created (UTC)", "seq", "event", "type", "dlv"
    );
    for (seq, event_id, kind, created, deliveries, decision) in &rows {
        let mark = if holder.as_deref() == Some(event_id.as_str()) {
            "  <- mirror"
        } else {
            ""
        };
        println!(
            "  {:<21} {:<6} {:<30} {:<36} {:>4}  {decision}{mark}",
            time::format_utc(*created),
            seq,
            event_id,
            kind,
            deliveries
        );
    }
    if object.is_none() && rows.is_empty() {
        return Err(Error::Other(format!(
            "object {id}: no such object and no events about it"
        )));
    }
    Ok(())
}

/// A progress bar on stderr when it is a terminal; silent otherwise (cron, pipes, tests).
pub struct Progress {
    label: &'static str,
    tty: bool,
    started: Instant,
    last: Option<Instant>,
}

impl Progress {
    pub fn new(label: &'static str) -> Progress {
        use std::io::IsTerminal;
        Progress {
            label,
            tty: std::io::stderr().is_terminal(),
            started: Instant::now(),
            last: None,
        }
    }

    pub fn update(&mut self, done: u64, total: u64) {
        if !self.tty || self.last.is_some_and(|t| t.elapsed().as_millis() < 100) && done < total {
            return;
        }
        self.last = Some(Instant::now());
        let pct = (done * 100).checked_div(total).unwrap_or(100).min(100);
        let filled = (pct / 4) as usize;
        eprint!(
            "\r{} [{}{}] {pct:>3}% {done}/{total} {:.1} s ",
            self.label,
            "#".repeat(filled),
            " ".repeat(25 - filled),
            self.started.elapsed().as_secs_f64()
        );
    }

    pub fn finish(&mut self) {
        if self.tty && self.last.is_some() {
            eprintln!();
        }
    }
}

pub(crate) fn human_bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

fn human_age(secs: i64) -> String {
    match secs {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h", s / 3600),
        s => format!("{} days", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn usage_errors_exit_2_with_a_hint() {
        for list in [
            &[][..],
            &["frobnicate"],
            &["serve", "--bogus"],
            &["check", "extra"],
            &["serve", "--config"],
            &["backup"],
            &["backup", "--keep", "0", "dir"],
            &["backup", "a", "b"],
            &["restore"],
            &["restore", "--bogus", "x"],
            &["prune", "--older-than"],
            &["export", "--since", "yesterday"],
        ] {
            let err = run(args(list)).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{list:?}: {err}");
            assert!(err.hint().unwrap().contains("--help"), "{list:?}");
        }
    }

    #[test]
    fn help_everywhere() {
        for list in [
            &["--help"][..],
            &["serve", "--help"],
            &["check", "-h"],
            &["send-test-event", "--help"],
            &["backup", "--help"],
            &["restore", "--help"],
            &["prune", "--help"],
            &["export", "--help"],
            &["help"],
        ] {
            run(args(list)).unwrap();
        }
    }

    #[test]
    fn human_units() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 << 20), "3.0 MiB");
        assert_eq!(human_age(90), "90 s");
        assert_eq!(human_age(3 * 86_400), "3 days");
    }
}
