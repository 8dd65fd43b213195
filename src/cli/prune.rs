//! `stripe-inbox prune`.

use super::options::{self, flag, valued};
use crate::error::{Error, Result};
use crate::ops::retention::{prune_alone, survey};
use crate::{format, store, time};

pub const USAGE: &str = "\
usage: stripe-inbox prune [--config PATH] [--older-than AGE] [--dry-run]

Empties the raw body of every event received more than AGE ago (90d, 12w, 36h; at least 1d;
default: [retention] body_days). The event's row stays: id, type, times, object and delivery count.
Events the mirror or a pending delivery still needs are kept whole. Then gives the freed space back
to the file system (incremental vacuum) and prints what it did.

It writes, so it needs the database to itself and refuses while `serve` runs: a running server
applies [retention] body_days itself, shortly after start and then once a day.

  --older-than AGE   prune bodies older than AGE: a number and h, d or w
  --dry-run          only count what would be pruned (read-only; works while serving)
";

pub fn run(parser: lexopt::Parser) -> Result<()> {
    let Some(opts) = options::parse(parser, USAGE, &[valued("older-than"), flag("dry-run")], 0)?
    else {
        return Ok(());
    };
    let config = opts.load_config()?;
    let age_ms = match opts.get("older-than") {
        Some(text) => time::parse_duration_ms(text).ok_or_else(|| {
            opts.usage(format!(
                "--older-than {text:?}: expected a number and h, d or w, like 90d"
            ))
        })?,
        None if config.retention.body_days > 0 => {
            i64::from(config.retention.body_days) * 86_400_000
        }
        None => {
            return Err(Error::usage(
                "nothing to prune: [retention] body_days is 0 (keep forever)",
                "stripe-inbox prune --older-than 90d, or set [retention] body_days",
            ))
        }
    };
    if age_ms < 86_400_000 {
        return Err(opts.usage("--older-than must be at least 1d"));
    }
    let database = &config.database.path;
    let cutoff_ms = time::now_ms() - age_ms;
    let before = time::format_utc(cutoff_ms / 1000);
    if opts.flag("dry-run") {
        if !database.exists() {
            return Err(Error::NoDatabase {
                path: database.clone(),
            });
        }
        let (n, bytes) = survey(&store::open_read_only(database)?, cutoff_ms)?;
        println!(
            "would prune {n} event bodies ({}) received before {before}",
            format::bytes(bytes)
        );
        return Ok(());
    }
    let done = prune_alone(database, cutoff_ms)?;
    println!(
        "pruned {} event bodies ({}) received before {before} in {:.1} s; gave back {} pages; \
         file {} -> {} in {:.1} s in all",
        done.report.pruned,
        format::bytes(done.report.bytes),
        done.pruned_in.as_secs_f64(),
        done.report.pages_freed,
        format::bytes(done.bytes_before),
        format::bytes(done.bytes_after),
        done.total.as_secs_f64()
    );
    if !done.incremental_vacuum && done.report.pruned > 0 {
        println!(
            "note: this database was created without incremental auto-vacuum, so the file does \
             not shrink; new events reuse the space. A one-time `sqlite3 {} 'PRAGMA \
             auto_vacuum=INCREMENTAL; VACUUM'` with the server stopped changes that.",
            database.display()
        );
    }
    Ok(())
}
