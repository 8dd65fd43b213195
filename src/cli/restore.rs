//! `stripe-inbox restore`.

use std::path::PathBuf;

use super::options::{self, flag};
use super::progress::{Bar, Unit};
use crate::error::Result;
use crate::ops::restore::restore;
use crate::{format, store};

pub const USAGE: &str = "\
usage: stripe-inbox restore [--config PATH] [--force] IN

Puts the backup IN in place of the database. Stop the server first: restore refuses while one runs.
IN must pass PRAGMA integrity_check and come from this build or an older one (the server migrates
an older one when it starts). The current database, if any, is kept whole as
<database>.before-restore (its WAL folded in first); nothing is overwritten without --force, and a
failure at any step leaves the database as it was.

  --force    replace an existing database (it is still kept as <database>.before-restore)
";

pub fn run(parser: lexopt::Parser) -> Result<()> {
    let Some(opts) = options::parse(parser, USAGE, &[flag("force")], 1)? else {
        return Ok(());
    };
    let input = PathBuf::from(
        opts.args
            .first()
            .ok_or_else(|| opts.usage("restore needs IN, a backup file"))?,
    );
    let config = opts.load_config()?;
    let database = &config.database.path;
    let report = restore(
        database,
        &input,
        opts.flag("force"),
        &mut Bar::new("restore", Unit::Bytes),
    )?;
    println!(
        "restored {} into {}: {}, {} events, schema version {} (this build knows {}), in {:.1} s",
        input.display(),
        database.display(),
        format::bytes(report.bytes),
        report.events,
        report.schema_version,
        store::known_version(),
        report.total.as_secs_f64()
    );
    if let Some(previous) = report.previous {
        println!("the previous database is kept as {}", previous.display());
    }
    println!("start the server again when ready (systemctl start stripe-inbox)");
    Ok(())
}
