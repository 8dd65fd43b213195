//! `stripe-inbox check`.

use super::options;
use crate::error::{Error, Result};
use crate::forward::views;
use crate::mirror::{queries, replay};
use crate::ops::audit;
use crate::store::{self, Lock};
use crate::{format, time};

pub const USAGE: &str = "\
usage: stripe-inbox check [--config PATH]

Validates the config (keys, addresses, that a signing secret is set, without printing it), then
opens the database, applies pending migrations, runs PRAGMA integrity_check and prints what it
found. While a server holds the database it checks read-only and migrates nothing.
Also shows each [[forward]] destination (a missing signing secret is a problem) and its
deliveries. Exits 1 when anything is wrong. Also warns (without failing) about what is unsafe in
production: a public admin without cookie_secure, a database on tmpfs, a public webhook at the
default path, no backups (no Litestream, no `backup` in two days); and about dead deliveries and
deliveries waiting for a destination the config no longer has.
";

pub fn run(parser: lexopt::Parser) -> Result<()> {
    let Some(opts) = options::parse(parser, USAGE, &[], 0)? else {
        return Ok(());
    };
    let config = opts.load_config()?;
    let mut problems = Vec::new();

    // The config.
    println!("config {}: ok", opts.config.display());
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
        Ok(None) if config.admin.open_on_loopback => println!(
            "  admin password: none; open_on_loopback = true, so the pages are open to whoever reaches the loopback address"
        ),
        Ok(None) => println!(
            "  admin password: none; the pages are closed but for the one-time login link serve logs at start"
        ),
        Err(e) => {
            println!("  admin password: none or too short, and the listener is not loopback");
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
    for f in &config.forward {
        let secret = match (&f.secret, f.signing_secret(&opts.config)) {
            (_, Err(e)) => {
                problems.push(e.to_string());
                "none".to_string()
            }
            (Some(_), Ok(_)) => "set (in the file)".to_string(),
            (None, Ok(_)) => format!("set (from ${})", f.secret_env),
        };
        println!(
            "  forward {:?}: {} for {}; signing secret {secret}",
            f.name,
            f.url,
            f.events.join(", ")
        );
    }

    // The database: migrated and compared with a rebuild when we may write, else read-only.
    let database = &config.database.path;
    println!("database {}:", database.display());
    let known = store::known_version();
    let (conn, lock) = match Lock::acquire(database) {
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
    let mirror = match lock {
        Some(_) => Some(replay::verify_mirror(&conn)?),
        None => None,
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
    for p in queries::mirror_problems(&conn)? {
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
    let (size, _) = store::file_sizes(database);
    println!(
        "  events: {events} ({deliveries} deliveries), file size {}",
        format::bytes(size)
    );
    if let Some(ms) = newest {
        let age = (time::now_ms() - ms) / 1000;
        println!(
            "  newest event received {} ({} ago)",
            time::format_utc(ms / 1000),
            format::age(age)
        );
    }
    match mirror {
        Some(m) if m.differing_count == 0 => {
            println!(
                "  mirror: {} objects, the same as a rebuild from the events and fetched states",
                m.objects
            )
        }
        Some(m) => {
            println!(
                "  mirror: {} of {} objects differ from a rebuild from the events and fetched states: {}",
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
    let configured: Vec<&str> = config.forward.iter().map(|f| f.name.as_str()).collect();
    let mut warnings = audit::warnings(&config);
    for c in views::counts(&conn, &configured)? {
        let oldest = c.oldest_waiting_ms.map_or(String::new(), |ms| {
            format!(
                ", the oldest waiting {}",
                format::age((time::now_ms() - ms) / 1000)
            )
        });
        let gone = !configured.contains(&c.destination.as_str());
        println!(
            "  forwarding to {:?}: {} pending, {} in flight, {} dead{oldest}{}",
            c.destination,
            c.pending,
            c.in_flight,
            c.dead,
            if gone {
                " (no longer in the config)"
            } else {
                ""
            }
        );
        if gone && c.pending + c.in_flight > 0 {
            warnings.push(format!(
                "{} deliveries wait for {:?}, which the config no longer has: serve marks them dead at start",
                c.pending + c.in_flight,
                c.destination
            ));
        }
        if c.dead > 0 && gone {
            warnings.push(format!(
                "{} dead deliveries to {:?}, which the config no longer has: put its [[forward]] block back to retry them there",
                c.dead, c.destination
            ));
        } else if c.dead > 0 {
            warnings.push(format!(
                "{} dead deliveries to {:?}: see them with `stripe-inbox deliveries --state dead --destination {}` or on the admin's Deliveries page, which can retry them",
                c.dead, c.destination, c.destination
            ));
        }
    }
    // Production hazards and deliveries that need a look: reported, but not problems.
    for warning in warnings {
        println!("warning: {warning}");
    }
    if problems.is_empty() {
        println!("all good");
        Ok(())
    } else {
        Err(Error::Problems(problems))
    }
}
