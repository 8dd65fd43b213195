//! `stripe-inbox backup`.

use std::fs;
use std::path::PathBuf;

use super::options::{self, flag, valued};
use super::progress::{Bar, Unit};
use crate::error::{Error, Result};
use crate::ops::backup::{backup, dated_target, rotate, BackupOptions};
use crate::{format, time};

pub const USAGE: &str = "\
usage: stripe-inbox backup [--config PATH] [--keep N] [--force] OUT

Copies the database to OUT while `serve` keeps running (SQLite's online backup of one consistent
snapshot; the server is never stopped or locked out), checks the copy with PRAGMA integrity_check,
fsyncs it and only then renames it into place. Prints its size, event count and the time taken.
The copy is a single self-contained SQLite file: copy it anywhere, open it with sqlite3, or give it
to `stripe-inbox restore`.

  OUT        a file (refused if it exists, unless --force), or a directory: the copy is then named
             stripe-inbox-YYYYmmdd-HHMMSS.db (UTC)
  --keep N   OUT is a directory (created if missing); after the backup, delete all but the N newest
             stripe-inbox-*.db copies in it (nothing else in it is touched). For cron:
             15 3 * * *  stripe-inbox backup --config /etc/stripe-inbox.toml --keep 14 /var/backups/stripe-inbox
  --force    replace OUT if it is an existing file
";

pub fn run(parser: lexopt::Parser) -> Result<()> {
    let Some(opts) = options::parse(parser, USAGE, &[valued("keep"), flag("force")], 1)? else {
        return Ok(());
    };
    let keep = match opts.get("keep") {
        Some(text) => match text.parse::<usize>() {
            Ok(n) if n >= 1 => Some(n),
            _ => return Err(opts.usage("--keep must be at least 1")),
        },
        None => None,
    };
    let out = PathBuf::from(
        opts.args
            .first()
            .ok_or_else(|| opts.usage("backup needs OUT, a file or directory"))?,
    );
    let config = opts.load_config()?;
    let database = &config.database.path;

    // A directory target gets a dated name; --keep makes OUT a directory.
    let into_dir = keep.is_some() || out.is_dir();
    let target = if into_dir {
        if out.exists() && !out.is_dir() {
            return Err(opts.usage(format!(
                "--keep needs a directory, and {} is a file",
                out.display()
            )));
        }
        fs::create_dir_all(&out)
            .map_err(|e| Error::io(format!("create directory {}", out.display()), e))?;
        dated_target(&out, time::now_ms() / 1000)
    } else {
        out.clone()
    };
    let backup_opts = BackupOptions {
        force: opts.flag("force") && !into_dir,
        checkpoint: config.database.checkpoint_interval_ms > 0,
    };
    let report = backup(
        database,
        &target,
        &backup_opts,
        &mut Bar::new("backup", Unit::Bytes),
    )?;
    let copy_secs = report.copy.as_secs_f64().max(0.001);
    println!(
        "backed up {} to {}: {}, {} events, schema version {}, in {:.1} s (copy {:.1} s at \
         {:.0} MB/s, integrity_check {:.1} s)",
        database.display(),
        report.path.display(),
        format::bytes(report.bytes),
        report.events,
        report.schema_version,
        report.total.as_secs_f64(),
        copy_secs,
        report.bytes as f64 / 1e6 / copy_secs,
        report.check.as_secs_f64()
    );
    if let Some(keep) = keep {
        for old in rotate(&out, keep)? {
            println!("removed old backup {}", old.display());
        }
    }
    Ok(())
}
