//! `stripe-inbox connect`.

use super::options::{self, valued};
use super::stripe_work::perform;
use crate::error::{Error, Result};
use crate::stripe_api::work::{Report, Work};

pub const USAGE: &str = "\
usage: stripe-inbox connect [--config PATH] --url URL [--events TYPE,...]

Creates the webhook endpoint in Stripe that sends events to URL (POST /v1/webhook_endpoints),
subscribed to the event types the mirror needs (and the configured destinations forward), with the
API version this build pins. Prints the endpoint's signing secret, which Stripe shows only once,
and where to put it.

It refuses when Stripe already has an endpoint for URL. This is the one write stripe-inbox makes in
Stripe, and it is safe to repeat: the idempotency key is chosen once and stored before the first
attempt, every retry sends the same key, and running the command again after a lost answer sends
it again too, so Stripe replays its answer (secret included) instead of creating a second endpoint.

An http:// URL is accepted with a warning: Stripe delivers to those in test mode only.

With a server running on the database, the server does the work; otherwise this command opens the
database itself under the lock. Needs an API key with write access to Webhook Endpoints.

  --url URL          where Stripe is to send events, e.g. https://shop.example/webhooks/stripe
  --events TYPE,...  these event types instead (exact names, or * for all)
";

pub fn run(parser: lexopt::Parser) -> Result<()> {
    let Some(opts) = options::parse(parser, USAGE, &[valued("url"), valued("events")], 0)? else {
        return Ok(());
    };
    let url = opts
        .get("url")
        .ok_or_else(|| opts.usage("connect needs --url"))?
        .to_owned();
    let events: Vec<String> = opts
        .all("events")
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(str::to_owned)
        .collect();
    let config = opts.load_config()?;
    let work = Work::Connect {
        url,
        events: (!events.is_empty()).then_some(events),
    };
    let Report::Connect(report) = perform(&config, &work)? else {
        return Err(Error::Http {
            what: "connect".into(),
            msg: "the server answered another kind of report".into(),
        });
    };
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    println!(
        "created webhook endpoint {} for {} ({} event types, API version {})",
        report.endpoint_id,
        report.url,
        report.events.len(),
        report.api_version
    );
    if report.replayed {
        println!(
            "(Stripe replayed its answer to an earlier attempt whose answer was lost: no second endpoint was created)"
        );
    }
    println!("signing secret: {}", report.secret);
    let var = if report.secrets_env.is_empty() {
        "STRIPE_WEBHOOK_SECRET".to_owned()
    } else {
        report.secrets_env.clone()
    };
    println!(
        "Put it where the server reads its secrets: the environment variable {var} (named by \
         [webhook] secrets_env; several secrets are comma-separated), or [webhook] secrets in the \
         config, then restart `stripe-inbox serve`. Stripe shows this secret only once."
    );
    Ok(())
}
