//! Redeliver: putting deliveries back to `pending` through a writer, in batches ([`through`], what
//! the admin's buttons run on the server's writer), and `stripe-inbox redeliver` ([`alone`]), which
//! does the same with a writer of its own while it holds the database lock. While a server holds
//! the lock, `alone` refuses and says to use the admin page: the CLI does not reach into a running
//! server (that would need a write API on the admin listener, with credentials for the CLI, for an
//! action the admin page already offers).

use std::path::Path;

use crate::error::{Error, Result};
use crate::forward::queue::{redeliver_dead, redeliver_event, redeliver_one, Redelivered};
use crate::forward::route::Routes;
use crate::store::writer::{Writer, WriterConfig, WriterHandle};
use crate::store::{self, Lock};
use crate::time::now_ms;

/// Dead deliveries put back per writer task.
pub const BATCH: i64 = 500;

/// What to put back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Which {
    /// The done and dead deliveries of one event (with a destination: also a new row if the event
    /// has none to it).
    Event(String),
    /// Every dead delivery.
    Dead,
    /// One delivery (by `deliveries.id`), if it is done or dead.
    Delivery(i64),
}

/// Puts back `which` (to `destination` only, if given) through `writer`, a batch per task, and
/// wakes the dispatchers of `routes` so that it goes out at once.
pub fn through(
    writer: &WriterHandle,
    routes: &std::sync::Arc<Routes>,
    which: &Which,
    destination: Option<&str>,
) -> Result<Redelivered> {
    let destination = destination.map(str::to_string);
    let done = put_back(writer, routes, which, destination)?;
    for route in &routes.list {
        route.signal.poke();
    }
    Ok(done)
}

fn put_back(
    writer: &WriterHandle,
    routes: &std::sync::Arc<Routes>,
    which: &Which,
    destination: Option<String>,
) -> Result<Redelivered> {
    match which {
        Which::Delivery(id) => {
            let id = *id;
            let done = writer.run(move |conn| redeliver_one(conn, id, now_ms()))?;
            Ok(Redelivered {
                requeued: u64::from(done),
                created: 0,
            })
        }
        Which::Event(id) => {
            let (id, routes) = (id.clone(), routes.clone());
            writer.run(move |conn| {
                redeliver_event(conn, &routes, &id, destination.as_deref(), now_ms())
            })
        }
        Which::Dead => {
            let mut total = Redelivered::default();
            loop {
                let dest = destination.clone();
                let n = writer
                    .run(move |conn| redeliver_dead(conn, dest.as_deref(), BATCH, now_ms()))?;
                total.requeued += n;
                if n < BATCH as u64 {
                    return Ok(total);
                }
            }
        }
    }
}

/// `stripe-inbox redeliver`: takes the database lock (refusing while a server holds it), starts a
/// writer of its own, puts back `which`, and stops.
pub fn alone(
    database: &Path,
    routes: Routes,
    which: &Which,
    destination: Option<&str>,
) -> Result<Redelivered> {
    if !database.exists() {
        return Err(Error::NoDatabase {
            path: database.to_path_buf(),
        });
    }
    let lock =
        match Lock::acquire(database) {
            Ok(lock) => lock,
            Err(Error::Locked { holder, .. }) => return Err(Error::refused(
                format!(
                    "database {}: {holder} is serving it, and redeliver writes",
                    database.display()
                ),
                "use the running server's admin page: Deliveries → \"Retry all dead deliveries\", \
                 or an event's page → Retry (it does the same through the server's writer); or \
                 stop the server first",
            )),
            Err(e) => return Err(e),
        };
    let writer = Writer::start(
        store::open_writer(database)?,
        WriterConfig {
            queue_capacity: 16,
            max_batch: 16,
        },
    )?;
    let result = through(
        &writer.handle(),
        &std::sync::Arc::new(routes),
        which,
        destination,
    );
    writer.stop();
    drop(lock);
    result
}
