//! `stripe-inbox redeliver`.

use super::options::{self, flag, valued};
use crate::error::Result;
use crate::forward::redeliver::{alone, Which};
use crate::forward::Routes;

pub const USAGE: &str = "\
usage: stripe-inbox redeliver [--config PATH] [--destination NAME] EVENT_ID
       stripe-inbox redeliver [--config PATH] [--destination NAME] --dead

Puts deliveries back to pending, due at once and with a fresh retry budget ([[forward]]
retry_for): every done or dead delivery of EVENT_ID, or every dead delivery (--dead), to every
destination or to NAME only. They go out when the server runs, in order per object. With
--destination, an event that has no delivery to NAME gets one: that is how an event stored before
the destination was configured is sent to it.

It writes, so it needs the database to itself and refuses while `serve` runs: the running server's
admin page does the same (Deliveries: \"Retry all dead deliveries\"; an event's page: Retry).

  --dead               every dead delivery instead of one event's
  --destination NAME   only deliveries to this [[forward]] name
";

pub fn run(parser: lexopt::Parser) -> Result<()> {
    let own = [flag("dead"), valued("destination")];
    let Some(opts) = options::parse(parser, USAGE, &own, 1)? else {
        return Ok(());
    };
    let which = match (opts.args.first(), opts.flag("dead")) {
        (Some(id), false) => Which::Event(
            id.to_str()
                .ok_or_else(|| opts.usage("EVENT_ID must be text"))?
                .to_string(),
        ),
        (None, true) => Which::Dead,
        (Some(_), true) => return Err(opts.usage("give EVENT_ID or --dead, not both")),
        (None, false) => return Err(opts.usage("redeliver needs EVENT_ID or --dead")),
    };
    let config = opts.load_config()?;
    let destination = opts.get("destination");
    if let Some(name) = destination {
        if !config.forward.iter().any(|f| f.name == name) {
            return Err(opts.usage(format!(
                "--destination {name:?}: no [[forward]] block has this name"
            )));
        }
    }
    let routes = Routes::from_config(&config.forward);
    let done = alone(&config.database.path, routes, &which, destination)?;
    let target = destination.map_or(String::new(), |d| format!(" to {d}"));
    match which {
        Which::Event(id) => println!(
            "{id}: {} deliveries{target} back to pending{}",
            done.requeued,
            if done.created > 0 {
                format!(", {} new (the event had none{target})", done.created)
            } else {
                String::new()
            }
        ),
        Which::Dead | Which::Delivery(_) => {
            println!("{} dead deliveries{target} back to pending", done.requeued)
        }
    }
    Ok(())
}
