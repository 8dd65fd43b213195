//! `stripe-inbox reconcile`.

use super::options::{self, valued};
use super::stripe_work::perform;
use crate::error::{Error, Result};
use crate::stripe_api::reconcile::Window;
use crate::stripe_api::work::{Report, Work};
use crate::time;

pub const USAGE: &str = "\
usage: stripe-inbox reconcile [--config PATH] [--since AGE]

Reads Stripe's list of events (GET /v1/events, newest first; Stripe keeps 30 days of them) and
stores every event the database lacks, with source = 'reconcile', through the same path as a
delivered webhook (dedup, mirror, forwarding). Prints what it found. `serve` does this by itself at
start-up and every [stripe] reconcile_every.

With a server running on the database, the server does the work and this command shows its
progress; otherwise it opens the database itself under the lock. Needs an API key with read access
to Events (and to the objects, for refetches).

  --since AGE   events of the last AGE (72h, 7d; at most 30d). Default: since the last complete
                reconcile, or the newest stored event, like the server's schedule (on a database
                with neither, nothing: it only notes that events are known from now on)
";

pub fn run(parser: lexopt::Parser) -> Result<()> {
    let Some(opts) = options::parse(parser, USAGE, &[valued("since")], 0)? else {
        return Ok(());
    };
    let window = match opts.get("since") {
        Some(text) => {
            let ms = time::parse_duration_ms(text)
                .filter(|ms| *ms > 0)
                .ok_or_else(|| {
                    opts.usage(format!(
                        "--since {text:?}: expected a number and h, d or w, like 72h"
                    ))
                })?;
            if ms > 30 * 86_400_000 {
                return Err(opts.usage("--since: Stripe keeps 30 days of events, at most 30d"));
            }
            Window::Since((time::now_ms() - ms) / 1000)
        }
        None => Window::Auto,
    };
    let config = opts.load_config()?;
    let Report::Reconcile(report) = perform(&config, &Work::Reconcile { window })? else {
        return Err(Error::Http {
            what: "reconcile".into(),
            msg: "the server answered another kind of report".into(),
        });
    };
    println!("reconcile: {}", report.summary());
    if report.unreadable > 0 {
        println!(
            "reconcile: {} listed events could not be read as events and were skipped",
            report.unreadable
        );
    }
    println!(
        "reconcile: {} pages in {:.1} s{}",
        report.pages,
        report.seconds,
        match report.mark {
            Some(mark) => format!(
                "; events are known in full up to {}",
                time::format_utc(mark)
            ),
            None => String::new(),
        }
    );
    Ok(())
}
