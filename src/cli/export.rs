//! `stripe-inbox export`.

use std::io::{BufWriter, Write};

use super::options::{self, Opt};
use crate::error::{Error, Result};
use crate::ops::export::{export, Filter};
use crate::{store, time};

pub const USAGE: &str = "\
usage: stripe-inbox export [--config PATH] [--since T] [--until T] [--type PATTERN]

Writes stored events to standard output as JSON Lines, in arrival order. Each line is one event
exactly as Stripe sent it, with nothing added and only the whitespace between JSON tokens removed:
  stripe-inbox export --type 'invoice.*' --since 2026-01-01 | jq -r '.data.object.id'
Read-only; works while `serve` runs. Events whose body retention pruned are skipped (counted on
standard error).

  --since T        only events created at or after T: RFC 3339, a date (midnight UTC), or unix seconds
  --until T        only events created before T
  --type PATTERN   only these event types; * matches any run of characters (invoice.*, *.succeeded);
                   repeat it or separate patterns with commas for several
";

const OPTIONS: &[Opt] = &[
    options::valued("since"),
    options::valued("until"),
    Opt {
        long: "type",
        short: Some('t'),
        value: true,
    },
];

pub fn run(parser: lexopt::Parser) -> Result<()> {
    let Some(opts) = options::parse(parser, USAGE, OPTIONS, 0)? else {
        return Ok(());
    };
    let when = |flag: &str| -> Result<Option<i64>> {
        opts.get(flag)
            .map(|text| {
                time::parse_when(text).ok_or_else(|| {
                    opts.usage(format!(
                        "--{flag} {text:?}: expected 2026-01-31, 2026-01-31T12:00:00Z or unix seconds"
                    ))
                })
            })
            .transpose()
    };
    let filter = Filter {
        since: when("since")?,
        until: when("until")?,
        types: opts
            .all("type")
            .flat_map(|text| text.split(','))
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(String::from)
            .collect(),
    };
    let config = opts.load_config()?;
    let database = &config.database.path;
    if !database.is_file() {
        return Err(Error::NoDatabase {
            path: database.clone(),
        });
    }
    let conn = store::open_read_only(database)?;
    let stdout = std::io::stdout();
    let mut out = BufWriter::with_capacity(256 * 1024, stdout.lock());
    let result = export(&conn, &filter, &mut out).and_then(|done| {
        out.flush()
            .map_err(|e| Error::io("write to standard output", e))?;
        Ok(done)
    });
    match result {
        Ok(done) => {
            eprintln!(
                "exported {} events{}",
                done.events,
                if done.pruned > 0 {
                    format!(" ({} more skipped: body pruned by retention)", done.pruned)
                } else {
                    String::new()
                }
            );
            Ok(())
        }
        // `export | head` closes the pipe early: that is the reader's choice, not a failure.
        Err(Error::Io { err, .. }) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(e),
    }
}
