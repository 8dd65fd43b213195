//! `stripe-inbox replay --rebuild`.

use std::time::Instant;

use super::options::{self, flag};
use super::progress::{Bar, Unit};
use crate::error::{Error, Result};
use crate::mirror::replay;
use crate::ops::Progress;
use crate::store::{self, Lock};

pub const USAGE: &str = "\
usage: stripe-inbox replay --rebuild [--config PATH]

Empties the mirror (the objects table) and re-applies every stored event in arrival order, as the
server did when they arrived, recording each event's decision again, then every state last fetched
from Stripe's API (table fetched). Events and fetched states are the ground truth, so this is
always safe; it commits every 10,000 events, and an interrupted rebuild is finished by running it
again. Needs the database to itself: stop `serve` first.
";

pub fn run(parser: lexopt::Parser) -> Result<()> {
    let Some(opts) = options::parse(parser, USAGE, &[flag("rebuild")], 0)? else {
        return Ok(());
    };
    if !opts.flag("rebuild") {
        return Err(Error::usage(
            "replay needs --rebuild",
            "stripe-inbox replay --rebuild",
        ));
    }
    let config = opts.load_config()?;
    let database = &config.database.path;
    if !database.exists() {
        return Err(Error::NoDatabase {
            path: database.clone(),
        });
    }
    let _lock = Lock::acquire(database)?;
    let conn = store::open_writer(database)?;
    let started = Instant::now();
    let mut bar = Bar::new("rebuilding mirror", Unit::Count);
    let stats = replay::rebuild_all(&conn, 10_000, |done, total| bar.step(done, total))?;
    bar.finish();
    println!(
        "rebuilt the mirror from {} events: {} objects in {:.1} s",
        stats.events,
        stats.objects,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
