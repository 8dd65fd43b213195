//! `stripe-inbox object ID`.

use super::options;
use crate::error::{Error, Result};
use crate::mirror::queries::{self, Order};
use crate::store;
use crate::time;

pub const USAGE: &str = "\
usage: stripe-inbox object [--config PATH] ID

Prints the mirrored state of a Stripe object (cus_..., sub_..., in_..., pi_...) and the history of
every stored event about it, oldest first, with the decision the mirror took for each. Read-only;
works while `serve` runs.
";

pub fn run(parser: lexopt::Parser) -> Result<()> {
    let Some(opts) = options::parse(parser, USAGE, &[], 1)? else {
        return Ok(());
    };
    let id = match opts.args.first() {
        Some(id) => id
            .to_str()
            .ok_or_else(|| opts.usage("ID must be text"))?
            .to_string(),
        None => return Err(opts.usage("object needs an ID")),
    };
    let config = opts.load_config()?;
    let conn = store::open_read_only(&config.database.path)?;

    // The state.
    let object = queries::object(&conn, &id)?;
    match &object {
        Some(o) => {
            let mut flags = Vec::new();
            if o.deleted {
                flags.push("deleted");
            }
            if o.uncertain {
                flags.push("UNCERTAIN: a same-second tie fell to the last arrival");
            }
            println!(
                "{id} ({}){}",
                o.object_type,
                if flags.is_empty() {
                    String::new()
                } else {
                    format!(" [{}]", flags.join("; "))
                }
            );
            match &o.event_id {
                Some(event) => println!(
                    "state from event {event} at {}",
                    time::format_utc(o.updated_at / 1000)
                ),
                // Fetched from Stripe's API (refetch, backfill): k_created is when.
                None => println!(
                    "state from {} (fetched at {})",
                    o.source,
                    o.k_created.map(time::format_utc).unwrap_or_default()
                ),
            }
            let pretty = serde_json::from_str::<serde_json::Value>(&o.data)
                .and_then(|v| serde_json::to_string_pretty(&v))
                .unwrap_or_else(|_| o.data.clone());
            println!("{pretty}");
        }
        None => println!("{id}: not in the mirror"),
    }

    // The history.
    let holder = object.as_ref().and_then(|o| o.event_id.as_deref());
    let rows = queries::history(&conn, &id, Order::OldestFirst, usize::MAX)?;
    println!(
        "\nhistory ({} events, by created then arrival):",
        rows.len()
    );
    println!(
        "  {:<21} {:<6} {:<30} {:<36} {:>4}  decision",
        "created (UTC)", "seq", "event", "type", "dlv"
    );
    for e in &rows {
        let mark = if holder == Some(e.id.as_str()) {
            "  <- mirror"
        } else {
            ""
        };
        println!(
            "  {:<21} {:<6} {:<30} {:<36} {:>4}  {}{mark}",
            time::format_utc(e.created),
            e.seq,
            e.id,
            e.event_type,
            e.deliveries,
            e.decision.as_deref().unwrap_or("-"),
        );
    }
    if object.is_none() && rows.is_empty() {
        return Err(Error::NotFound {
            what: format!("object {id}: no such object and no events about it"),
        });
    }
    Ok(())
}
