//! `stripe-inbox refetch`.

use super::options;
use super::stripe_work::perform;
use crate::error::{Error, Result};
use crate::stripe_api::work::{Report, Work};

pub const USAGE: &str = "\
usage: stripe-inbox refetch [--config PATH] ID...

Fetches each object (cus_..., sub_..., in_..., pi_...) from Stripe's API and applies it as state
fetched at the second the request began: it wins over every older event. An object the API says is
deleted (or does not know) is marked deleted. One fetch at a time per object: an object whose fetch
is already under way (the server refetches uncertain objects by itself) is left to it.

With a server running on the database, the server does the work; otherwise this command opens the
database itself under the lock. Needs an API key with read access to the objects' types.
";

pub fn run(parser: lexopt::Parser) -> Result<()> {
    let Some(opts) = options::parse(parser, USAGE, &[], 1000)? else {
        return Ok(());
    };
    let mut ids = Vec::new();
    for arg in &opts.args {
        let id = arg.to_str().ok_or_else(|| opts.usage("IDs must be text"))?;
        ids.push(id.to_owned());
    }
    if ids.is_empty() {
        return Err(opts.usage("refetch needs at least one ID"));
    }
    let config = opts.load_config()?;
    let Report::Refetch(report) = perform(&config, &Work::Refetch { ids })? else {
        return Err(Error::Http {
            what: "refetch".into(),
            msg: "the server answered another kind of report".into(),
        });
    };
    let mut failed = 0;
    for o in &report.objects {
        failed += usize::from(o.outcome.starts_with("failed"));
        println!(
            "{} {}: {}{}",
            o.id,
            o.object_type,
            o.outcome,
            if o.changed {
                " (the mirror changed)"
            } else {
                ""
            }
        );
    }
    println!(
        "refetch: {} objects, {} requests in {:.1} s",
        report.objects.len(),
        report.requests,
        report.seconds
    );
    if failed > 0 {
        return Err(Error::Http {
            what: "refetch".into(),
            msg: format!("{failed} of {} objects failed", report.objects.len()),
        });
    }
    Ok(())
}
