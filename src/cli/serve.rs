//! `stripe-inbox serve`.

use super::options;
use crate::error::{Error, Result};
use crate::service::Service;

pub const USAGE: &str = "\
usage: stripe-inbox serve [--config PATH]

Receives Stripe webhooks on [webhook] listen + path, verifies and stores each event durably before
answering 2xx, and serves the admin page, /healthz and /metrics on [admin] listen (with the
password from the variable [admin] password_env names; without one, loopback only). Stops cleanly
on SIGTERM or Ctrl-C: requests in flight are answered and everything answered is on disk.
";

pub fn run(parser: lexopt::Parser) -> Result<()> {
    let Some(opts) = options::parse(parser, USAGE, &[], 0)? else {
        return Ok(());
    };
    let config = opts.load_config()?;
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .map_err(|e| Error::io("install signal handlers", e))?;
    let service = Service::start(&config)?;
    if let Some(signal) = signals.forever().next() {
        log::info!("received signal {signal}");
    }
    service.shutdown();
    Ok(())
}
