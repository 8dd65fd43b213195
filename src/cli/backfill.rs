//! `stripe-inbox backfill`.

use super::options::{self, flag, valued};
use super::stripe_work::perform;
use crate::error::{Error, Result};
use crate::format::thousands;
use crate::stripe_api::catalog;
use crate::stripe_api::work::{Report, Work};

pub const USAGE: &str = "\
usage: stripe-inbox backfill [--config PATH] [--type TYPE,...] [--restart]

Lists every object of the mirrored types through Stripe's list endpoints (limit=100, newest first)
and applies each as state fetched from Stripe's API, stamped with the second its page was asked
for: it wins over every older event and loses to newer ones. Then it fetches, one by one, the
mirrored objects the lists left out (Stripe's lists omit deleted objects): those gone are marked
deleted. Afterwards the mirror equals what Stripe's API returns, also for objects whose last change
sent no event.

Resumable: each type keeps a cursor, so an interrupted run goes on where it stopped; --restart
starts every type over. Prints what it fetched, what changed, the requests and the time.

With a server running on the database, the server does the work (every write goes through its one
writer) and this command shows its progress; otherwise it opens the database itself under the
lock. Needs an API key with read access to the types listed.

  --type TYPE,...   only these types: product, price, customer, subscription, invoice,
                    payment_intent, charge, refund, checkout.session (default: all, in this order)
  --restart         forget the cursors and start over
";

pub fn run(parser: lexopt::Parser) -> Result<()> {
    let Some(opts) = options::parse(parser, USAGE, &[valued("type"), flag("restart")], 0)? else {
        return Ok(());
    };
    let mut types = Vec::new();
    for name in opts.all("type").flat_map(|v| v.split(',')) {
        let name = name.trim();
        if name.is_empty() {
            continue;
        }
        let kind = catalog::parse_backfilled(name)
            .ok_or_else(|| opts.usage(format!("--type {name:?}: not a backfilled type")))?;
        types.push(kind.object_type.to_owned());
    }
    let config = opts.load_config()?;
    let work = Work::Backfill {
        types,
        restart: opts.flag("restart"),
    };
    let Report::Backfill(report) = perform(&config, &work)? else {
        return Err(Error::Http {
            what: "backfill".into(),
            msg: "the server answered another kind of report".into(),
        });
    };
    for t in &report.types {
        let mut notes = Vec::new();
        if t.resumed {
            notes.push("resumed");
        }
        if t.restarted {
            notes.push("cursor unknown to Stripe, started over");
        }
        if !t.complete {
            notes.push("not finished");
        }
        let failed = format!("{} Stripe would not show, see the log", t.failed);
        if t.failed > 0 {
            notes.push(&failed);
        }
        println!(
            "{:<17} {:>9} fetched {:>7} changed {:>9} unchanged {:>6} swept ({} gone){}",
            t.object_type,
            thousands(t.fetched as i64),
            thousands(t.changed as i64),
            thousands(t.unchanged as i64),
            thousands(t.swept as i64),
            t.gone,
            if notes.is_empty() {
                String::new()
            } else {
                format!("  [{}]", notes.join(", "))
            }
        );
    }
    let sum = |f: fn(&crate::stripe_api::backfill::TypeReport) -> u64| {
        thousands(report.types.iter().map(f).sum::<u64>() as i64)
    };
    println!(
        "backfill: {} fetched, {} changed, {} unchanged; {} requests ({} rate-limited, slowest {:.1}/s) in {:.1} s",
        sum(|t| t.fetched),
        sum(|t| t.changed),
        sum(|t| t.unchanged),
        thousands(report.requests as i64),
        report.rate_limited,
        report.slowest_rate,
        report.seconds
    );
    if report.interrupted {
        println!("backfill: interrupted; run it again to go on from the cursors");
    }
    Ok(())
}
