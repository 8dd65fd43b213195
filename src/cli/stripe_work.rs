//! What `backfill`, `reconcile`, `refetch` and `connect` share: every write must go through one
//! writer, so the work is handed to the server that holds the database (over its control endpoint,
//! `stripe_api::control`) with its progress drawn here; when no server runs, the command takes the
//! database lock and does the work itself with a writer of its own. Progress: a bar per phase on a
//! terminal, nothing otherwise.

use std::sync::Arc;

use super::progress::{Bars, Unit};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::forward::Routes;
use crate::ops::Progress;
use crate::periodic::Stop;
use crate::service;
use crate::store::writer::{Writer, WriterConfig};
use crate::store::{self, Lock};
use crate::stripe_api::control::Remote;
use crate::stripe_api::work::{self, Report, Work};
use crate::stripe_api::StripeApi;

/// Does `work`: in the running server if there is one, else here.
pub fn perform(config: &Config, work: &Work) -> Result<Report> {
    work.check()?;
    let database = &config.database.path;
    match Lock::acquire(database) {
        Ok(lock) => alone(config, work, lock),
        Err(Error::Locked { holder, .. }) => {
            let remote = Remote::find(database, &holder)?;
            eprintln!("handing the work to the running server ({holder})");
            let mut bars = Bars::new(Unit::Count);
            let report = remote.run(work, |views| bars.show(views));
            bars.finish();
            report
        }
        Err(e) => Err(e),
    }
}

/// No server runs: the lock is ours, and so is the writer.
fn alone(config: &Config, work: &Work, lock: Lock) -> Result<Report> {
    let key = config.stripe.api_key().ok_or_else(|| Error::Config {
        path: config.file.clone(),
        msg: format!(
            "no Stripe API key: set the environment variable {} (named by [stripe] api_key_env) to a restricted key",
            config.stripe.api_key_env
        ),
    })?;
    let conn = store::open_writer(&config.database.path)?;
    let writer = Writer::start(
        conn,
        WriterConfig {
            queue_capacity: 64,
            max_batch: 64,
        },
    )?;
    let routes = Arc::new(Routes::from_config(&config.forward));
    let effects = Arc::new(service::effects(config, routes));
    let api = StripeApi::new(config, key, writer.handle(), effects);
    let result = work.claim(&api).and_then(|busy| {
        let mut bars = Bars::new(Unit::Count);
        let report = work::run(&api, work, &busy, &mut bars, &Stop::default());
        bars.finish();
        report
    });
    drop(api);
    writer.stop();
    drop(lock);
    result
}
