//! `stripe-inbox deliveries`.

use super::options::{self, valued};
use crate::error::{Error, Result};
use crate::forward::views::{self, Filter};
use crate::forward::State;
use crate::{format, store, time};

pub const USAGE: &str = "\
usage: stripe-inbox deliveries [--config PATH] [--state STATE] [--destination NAME] [--limit N]
                               [--before ID]

Lists the deliveries of events to the [[forward]] destinations (the shop's app): first each
destination's counts (pending, in flight, dead, and how long the oldest one has waited), then the
deliveries themselves, newest first, with their state, attempts and last answer. Read-only; works
while `serve` runs. `stripe-inbox redeliver` puts done or dead ones back to pending.

  --state STATE        only pending, in_flight, done or dead deliveries
  --destination NAME   only deliveries to this [[forward]] name
  --limit N            at most N deliveries (default 50)
  --before ID          only deliveries older than ID (the first column): the next page
";

pub fn run(parser: lexopt::Parser) -> Result<()> {
    let own = [
        valued("state"),
        valued("destination"),
        valued("limit"),
        valued("before"),
    ];
    let Some(opts) = options::parse(parser, USAGE, &own, 0)? else {
        return Ok(());
    };
    let state = match opts.get("state") {
        Some(text) => Some(State::parse(text).ok_or_else(|| {
            opts.usage(format!(
                "--state {text:?}: expected pending, in_flight, done or dead"
            ))
        })?),
        None => None,
    };
    let number =
        |name: &str, default: i64| -> Result<i64> {
            match opts.get(name) {
                Some(text) => text.parse::<i64>().ok().filter(|n| *n > 0).ok_or_else(|| {
                    opts.usage(format!("--{name} {text:?}: expected a number above 0"))
                }),
                None => Ok(default),
            }
        };
    let limit = number("limit", 50)? as usize;
    let before = opts
        .get("before")
        .map(|_| number("before", 0))
        .transpose()?;
    let config = opts.load_config()?;
    let database = &config.database.path;
    if !database.exists() {
        return Err(Error::NoDatabase {
            path: database.clone(),
        });
    }
    let conn = store::open_read_only(database)?;
    let names: Vec<&str> = config.forward.iter().map(|f| f.name.as_str()).collect();
    let now = time::now_ms();

    // The counts.
    let counts = views::counts(&conn, &names)?;
    if counts.is_empty() {
        println!("no [[forward]] destination is configured and nothing was ever forwarded");
        return Ok(());
    }
    println!(
        "{:<20} {:>9} {:>9} {:>9}  oldest waiting",
        "destination", "pending", "in flight", "dead"
    );
    for c in &counts {
        let configured = if names.contains(&c.destination.as_str()) {
            ""
        } else {
            "  (no longer configured)"
        };
        println!(
            "{:<20} {:>9} {:>9} {:>9}  {}{configured}",
            c.destination,
            c.pending,
            c.in_flight,
            c.dead,
            c.oldest_waiting_ms
                .map(|t| format!("{} ago", format::age((now - t) / 1000)))
                .unwrap_or_else(|| "-".into()),
        );
    }

    // The deliveries.
    let filter = Filter {
        destination: opts.get("destination").map(str::to_string),
        state,
        before,
    };
    let (rows, more) = views::list(&conn, &views::narrow(&filter, &counts), limit)?;
    println!();
    if rows.is_empty() {
        println!("no deliveries match");
        return Ok(());
    }
    println!(
        "{:>8}  {:<21} {:<12} {:<9} {:>4}  {:<30} {:<32} last answer",
        "id", "arrived (UTC)", "destination", "state", "att", "event", "type"
    );
    for r in &rows {
        let last = match (&r.last_error, r.last_status) {
            (Some(e), _) => e.clone(),
            (None, Some(s)) => s.to_string(),
            (None, None) => "-".into(),
        };
        println!(
            "{:>8}  {:<21} {:<12} {:<9} {:>4}  {:<30} {:<32} {last}",
            r.id,
            time::format_utc(r.created_at.div_euclid(1000)),
            r.destination,
            r.state,
            r.attempts,
            r.event_id,
            r.event_type.as_deref().unwrap_or("-"),
        );
    }
    if let (true, Some(last)) = (more, rows.last()) {
        println!("(more: --before {})", last.id);
    }
    Ok(())
}
