//! The command line: argv → one subcommand, each in a file of its own with its usage text beside
//! its `run` function. [`options`] is the one parser they share; [`progress`] the one progress bar.
//! Every command takes `--config` and `--help`. Usage errors carry a `try:` hint and exit 2;
//! runtime errors exit 1 (`main` prints both). Only this module prints and reads arguments.

mod backfill;
mod backup;
mod check;
mod connect;
mod deliveries;
mod export;
mod object;
pub mod options;
pub mod progress;
mod prune;
mod reconcile;
mod redeliver;
mod refetch;
mod replay;
mod restore;
mod send_test_event;
mod serve;
mod stripe_work;

use std::ffi::OsString;

use lexopt::prelude::*;

use crate::error::{Error, Result};

const USAGE: &str = "\
stripe-inbox: a durable, verified inbox and mirror for Stripe webhooks

usage: stripe-inbox <command> [options]

commands:
  serve             receive webhooks and serve the admin listener
  check             validate the config and check the database
  backup OUT        copy the database consistently while the server runs
  restore IN        put a backup in place of the database (server stopped)
  prune             empty the bodies of old events ([retention] body_days)
  export            write events as JSON Lines to stdout
  send-test-event   build a realistic event, sign it and POST it (a local `stripe trigger`)
  replay --rebuild  rebuild the whole mirror from the stored events
  object ID         show a mirrored object and every event that touched it, with decisions
  deliveries        list the deliveries to the [[forward]] destinations (the shop's app)
  redeliver ID      put one event's deliveries (or --dead: every dead one) back to pending
  backfill          fetch every object of the mirrored types from Stripe's API (resumable)
  reconcile         store the events Stripe lists that the webhook never brought
  refetch ID...     fetch objects from Stripe's API into the mirror
  connect --url URL create the webhook endpoint in Stripe and print its signing secret

Every command takes --config PATH (default: $STRIPE_INBOX_CONFIG, else ./stripe-inbox.toml)
and --help. Logging: RUST_LOG=debug|info|warn (default info).
";

/// Runs the command line (without the program name).
pub fn run(args: impl IntoIterator<Item = OsString>) -> Result<()> {
    let mut parser = lexopt::Parser::from_args(args);
    let usage = |e: lexopt::Error| Error::usage(e.to_string(), "stripe-inbox --help");
    let command = match parser.next().map_err(usage)? {
        Some(Value(cmd)) => cmd.string().map_err(usage)?,
        Some(Long("help") | Short('h')) => {
            print!("{USAGE}");
            return Ok(());
        }
        Some(Long("version") | Short('V')) => {
            println!("stripe-inbox {}", env!("CARGO_PKG_VERSION"));
            return Ok(());
        }
        Some(other) => {
            return Err(Error::usage(
                other.unexpected().to_string(),
                "stripe-inbox --help",
            ))
        }
        None => return Err(Error::usage("no command given", "stripe-inbox --help")),
    };
    match command.as_str() {
        "serve" => serve::run(parser),
        "check" => check::run(parser),
        "backup" => backup::run(parser),
        "restore" => restore::run(parser),
        "prune" => prune::run(parser),
        "export" => export::run(parser),
        "send-test-event" => send_test_event::run(parser),
        "replay" => replay::run(parser),
        "object" => object::run(parser),
        "deliveries" => deliveries::run(parser),
        "redeliver" => redeliver::run(parser),
        "backfill" => backfill::run(parser),
        "reconcile" => reconcile::run(parser),
        "refetch" => refetch::run(parser),
        "connect" => connect::run(parser),
        "help" => {
            print!("{USAGE}");
            Ok(())
        }
        other => Err(Error::usage(
            format!("unknown command {other:?}"),
            "stripe-inbox --help",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn usage_errors_exit_2_with_a_hint() {
        for list in [
            &[][..],
            &["frobnicate"],
            &["serve", "--bogus"],
            &["check", "extra"],
            &["serve", "--config"],
            &["backup"],
            &["backup", "--keep", "0", "dir"],
            &["backup", "a", "b"],
            &["restore"],
            &["restore", "--bogus", "x"],
            &["prune", "--older-than"],
            &["export", "--since", "yesterday"],
            &["object"],
            &["object", "a", "b"],
            &["deliveries", "--state", "lost"],
            &["deliveries", "--limit", "0"],
            &["deliveries", "extra"],
            &["redeliver"],
            &["redeliver", "evt_1", "--dead"],
            &["redeliver", "a", "b"],
            &["backfill", "--type", "coupon"],
            &["backfill", "extra"],
            &["reconcile", "--since", "60d"],
            &["reconcile", "--since", "soon"],
            &["refetch"],
            &["connect"],
        ] {
            let err = run(args(list)).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{list:?}: {err}");
            assert!(err.hint().unwrap().contains("--help"), "{list:?}");
        }
    }

    #[test]
    fn help_everywhere() {
        for list in [
            &["--help"][..],
            &["serve", "--help"],
            &["check", "-h"],
            &["send-test-event", "--help"],
            &["backup", "--help"],
            &["restore", "--help"],
            &["prune", "--help"],
            &["export", "--help"],
            &["replay", "--help"],
            &["object", "--help"],
            &["deliveries", "--help"],
            &["redeliver", "--help"],
            &["backfill", "--help"],
            &["reconcile", "--help"],
            &["refetch", "--help"],
            &["connect", "--help"],
            &["help"],
        ] {
            run(args(list)).unwrap();
        }
    }
}
