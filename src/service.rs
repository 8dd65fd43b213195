//! `serve`: starting the whole service in order, and stopping it without losing what was answered.
//!
//! Start: read the secrets (the webhook's and every forwarding destination's), take the database
//! lock, open and migrate the writer connection (before any port is bound, so a bad database never
//! accepts traffic), open the read pool, start the writer, bind the webhook and admin listeners,
//! then start forwarding. Stop: stop accepting, let requests in flight finish and be answered, stop
//! forwarding (no new claims; attempts under way finish and their outcomes are written), let the
//! writer commit what is queued, close the database.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::admin::api::Api;
use crate::admin::auth::Auth;
use crate::admin::context::Admin;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::forward::{self, Forwarder, Routes};
use crate::http::{Server, ServerConfig};
use crate::ingest::endpoint::{Counters, Endpoint};
use crate::ingest::store::Effects;
use crate::ops::retention::Scheduler;
use crate::store::writer::{Writer, WriterConfig};
use crate::store::{self, Checkpointer, Lock};

/// How long shutdown waits for requests in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// When `[retention]` first runs after start (after the burst of retries a restart brings), and
/// how often after that.
const RETENTION_FIRST: Duration = Duration::from_secs(60);
const RETENTION_EVERY: Duration = Duration::from_secs(24 * 3600);

/// The running service.
pub struct Service {
    webhook: Server,
    admin: Server,
    writer: Writer,
    checkpointer: Checkpointer,
    retention: Scheduler,
    forwarder: Forwarder,
    routes: Arc<Routes>,
    lock: Lock,
    database: PathBuf,
}

impl Service {
    /// Starts everything; returns once both listeners accept connections.
    pub fn start(config: &Config) -> Result<Service> {
        let secrets = config.webhook_secrets()?;
        let admin_password = config.admin_password()?;
        let routes = Arc::new(Routes::from_config(&config.forward));
        let destinations = forward::dispatch::destinations(&config.forward, &config.file)?;
        let database = config.database.path.clone();
        let lock = Lock::acquire(&database)?;
        let conn = store::open_writer(&database)?;
        if config.database.checkpoint_interval_ms == 0 {
            // No checkpointer (Litestream checkpoints): the writer's own fallback comes sooner,
            // at about 40 MB of WAL, as config.example.toml and docs/deploy/litestream.md say.
            store::set_autocheckpoint(&conn, 10_000)?;
        }
        let pool = store::read_pool(&database, 4)?;
        let writer = Writer::start(
            conn,
            WriterConfig {
                queue_capacity: config.database.queue_capacity,
                max_batch: config.database.max_batch,
            },
        )?;
        let checkpointer = Checkpointer::start(
            &database,
            Duration::from_millis(config.database.checkpoint_interval_ms),
        )?;
        let counters = Arc::new(Counters::default());

        let endpoint = Arc::new(Endpoint {
            path: config.webhook.path.clone(),
            secrets,
            tolerance_secs: config.webhook.tolerance_secs as i64,
            writer: writer.handle(),
            effects: Arc::new(Effects {
                forward: routes.clone(),
                refetch_uncertain: false,
            }),
            counters: counters.clone(),
        });
        let webhook_config = ServerConfig {
            name: "webhook",
            max_body_bytes: config.webhook.max_body_bytes,
            max_connections: config.webhook.max_connections,
            idle_timeout: config.idle_timeout(),
            ..ServerConfig::default()
        };
        let webhook = Server::bind(
            &config.webhook.listen,
            webhook_config,
            Arc::new(move |req| endpoint.handle(req)),
        )
        .map_err(|e| Error::io(format!("listen on {} (webhook)", config.webhook.listen), e))?;

        let api = Api {
            pool: pool.clone(),
            token: config.api.token(),
        };
        if api.token.is_none() {
            log::info!(
                "read API off: set the environment variable {} to a token to turn it on",
                config.api.token_env
            );
        }
        if admin_password.is_none() {
            log::warn!(
                "no admin password (set {}): the admin page is open to whoever reaches {}",
                config.admin.password_env,
                config.admin.listen
            );
        }
        let auth = match Auth::new(admin_password.as_deref(), config.admin.cookie_secure) {
            Ok(auth) => auth,
            Err(e) => {
                webhook.shutdown(Duration::from_secs(1));
                checkpointer.stop();
                writer.stop();
                return Err(e);
            }
        };
        let admin_state = Arc::new(Admin {
            api,
            pool,
            writer: writer.handle(),
            counters,
            auth,
            database: database.clone(),
            forward: routes.clone(),
        });
        let admin_config = ServerConfig {
            name: "admin",
            max_body_bytes: 64 * 1024,
            max_connections: 64,
            ..ServerConfig::default()
        };
        let admin = match Server::bind(
            &config.admin.listen,
            admin_config,
            Arc::new(move |req| admin_state.handle(req)),
        ) {
            Ok(server) => server,
            Err(e) => {
                webhook.shutdown(Duration::from_secs(1));
                checkpointer.stop();
                writer.stop();
                return Err(Error::io(
                    format!("listen on {} (admin)", config.admin.listen),
                    e,
                ));
            }
        };
        let retention = match Scheduler::start(
            &database,
            writer.handle(),
            config.retention.body_days,
            RETENTION_FIRST,
            RETENTION_EVERY,
        ) {
            Ok(retention) => retention,
            Err(e) => {
                webhook.shutdown(Duration::from_secs(1));
                admin.shutdown(Duration::from_secs(1));
                checkpointer.stop();
                writer.stop();
                return Err(e);
            }
        };
        // Forwarding last: nothing after it can fail, and it needs the writer until it stops.
        let forwarder =
            match Forwarder::start(routes.clone(), destinations, writer.handle(), &database) {
                Ok(forwarder) => forwarder,
                Err(e) => {
                    webhook.shutdown(Duration::from_secs(1));
                    admin.shutdown(Duration::from_secs(1));
                    retention.stop();
                    checkpointer.stop();
                    writer.stop();
                    return Err(e);
                }
            };
        log::info!(
            "listening webhook=http://{}{} admin=http://{}/ database={} lock={}",
            webhook.local_addr(),
            config.webhook.path,
            admin.local_addr(),
            database.display(),
            lock.path().display(),
        );
        Ok(Service {
            webhook,
            admin,
            writer,
            checkpointer,
            retention,
            forwarder,
            routes,
            lock,
            database,
        })
    }

    pub fn webhook_addr(&self) -> SocketAddr {
        self.webhook.local_addr()
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.local_addr()
    }

    /// A handle on the writer, for work that must go through it (and for tests).
    pub fn writer(&self) -> crate::store::writer::WriterHandle {
        self.writer.handle()
    }

    /// The forwarding destinations (their counters, and the alarms that wake their dispatchers).
    pub fn forward_routes(&self) -> Arc<Routes> {
        self.routes.clone()
    }

    /// Stops accepting, answers what is in flight, commits what is queued, closes the database.
    pub fn shutdown(self) {
        log::info!("shutting down: no new connections; finishing requests in flight");
        if !self.webhook.shutdown(SHUTDOWN_GRACE) {
            log::warn!("webhook connections still open after {SHUTDOWN_GRACE:?}; closing anyway");
        }
        self.admin.shutdown(Duration::from_secs(2));
        // The admin handler (and its read pool) went with the admin server; the writer commits
        // whatever is still queued, then its connection, the last one, closes and checkpoints.
        self.retention.stop();
        // Forwarding before the writer: attempts under way finish (within their time limit) and
        // their outcomes are committed by the writer below.
        self.forwarder.stop();
        self.checkpointer.stop();
        self.writer.stop();
        log::info!("stopped database={}", self.database.display());
        drop(self.lock);
    }
}
