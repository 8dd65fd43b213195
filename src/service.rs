//! `serve`: starting the whole service in order, and stopping it without losing what was answered.
//!
//! Start: read the secrets (the webhook's and every forwarding destination's), take the database
//! lock, open and migrate the writer connection (before any port is bound, so a bad database never
//! accepts traffic), open the read pool, start the writer, bind the webhook and admin listeners (the
//! admin listener also answers the Stripe client's control endpoint, whose token file is written
//! once it is bound), then start retention, the Stripe client's schedules (with an API key: the
//! refetch worker, reconcile, resync) and forwarding. Stop: stop accepting, let requests in flight
//! finish and be answered, stop the Stripe client's work, stop forwarding (no new claims; attempts
//! under way finish and their outcomes are written), let the
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
use crate::stripe_api::control::Control;
use crate::stripe_api::schedule::Schedules;
use crate::stripe_api::StripeApi;

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
    stripe: StripeParts,
    lock: Lock,
    database: PathBuf,
}

/// The Stripe client's parts of a running service.
struct StripeParts {
    api: Option<Arc<StripeApi>>,
    control: Arc<Control>,
    control_file: PathBuf,
    schedules: Schedules,
}

/// What storing a new event also does, from the config and the forwarding routes: the same for
/// the webhook, for events `reconcile` stores, and for a CLI command that stores them alone (its
/// deliveries wait for the server's forwarder).
pub fn effects(config: &Config, forward: Arc<Routes>) -> Effects {
    Effects {
        forward,
        refetch_uncertain: config.stripe.refetch_uncertain && config.stripe.api_key().is_some(),
    }
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
            store::set_autocheckpoint(&conn, 40 << 20)?;
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
            writer.handle(),
        )?;
        let counters = Arc::new(Counters::default());
        let effects = Arc::new(effects(config, routes.clone()));
        let (stripe_api, control) = match stripe_parts(config, &writer, &effects) {
            Ok(parts) => parts,
            Err(e) => {
                checkpointer.stop();
                writer.stop();
                return Err(e);
            }
        };

        let endpoint = Arc::new(Endpoint {
            path: config.webhook.path.clone(),
            secrets,
            tolerance_secs: config.webhook.tolerance_secs as i64,
            writer: writer.handle(),
            effects,
            counters: counters.clone(),
            tie_ahead: Default::default(),
        });
        let (webhook_proxies, admin_proxies) = config.trusted_proxies();
        let webhook_config = ServerConfig {
            name: "webhook",
            max_body_bytes: config.webhook.max_body_bytes,
            max_connections: config.webhook.max_connections,
            max_connections_per_addr: config.webhook.max_connections_per_addr,
            trusted_proxies: webhook_proxies,
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
        let auth = match Auth::new(
            admin_password.as_deref(),
            config.admin.open_on_loopback,
            config.admin.cookie_secure,
        ) {
            Ok(auth) => auth,
            Err(e) => {
                webhook.shutdown(Duration::from_secs(1));
                checkpointer.stop();
                writer.stop();
                return Err(e);
            }
        };
        let login_link = auth.take_login_link_token();
        let admin_state = Arc::new(Admin {
            api,
            pool,
            writer: writer.handle(),
            counters,
            auth,
            database: database.clone(),
            forward: routes.clone(),
            refetch: stripe_api.is_some(),
        });
        let admin_config = ServerConfig {
            name: "admin",
            max_body_bytes: 64 * 1024,
            max_connections: 64,
            max_connections_per_addr: config.admin.max_connections_per_addr,
            trusted_proxies: admin_proxies,
            ..ServerConfig::default()
        };
        let control_routes = control.clone();
        let admin = match Server::bind(
            &config.admin.listen,
            admin_config,
            Arc::new(move |req| match control_routes.handle(&req) {
                Some(response) => response,
                None => admin_state.handle(req),
            }),
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
        let control_file = match control.write_file(&database, admin.local_addr()) {
            Ok(path) => path,
            Err(e) => {
                webhook.shutdown(Duration::from_secs(1));
                admin.shutdown(Duration::from_secs(1));
                checkpointer.stop();
                writer.stop();
                return Err(e);
            }
        };
        // Issue 13: the pages are closed without a password unless the owner opted in; the one
        // way in then is this link, which goes to the log once and nowhere else.
        match (&login_link, config.admin.open_on_loopback) {
            (Some(token), _) => log::warn!(
                "no admin password (set {}): the admin pages are closed; open this one-time link to log in: http://{}/login?token={token}",
                config.admin.password_env,
                admin.local_addr()
            ),
            (None, true) if admin_password.is_none() => log::warn!(
                "no admin password and [admin] open_on_loopback = true: the admin pages are open to whoever reaches {}",
                admin.local_addr()
            ),
            _ => {}
        }
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
                let _ = std::fs::remove_file(&control_file);
                checkpointer.stop();
                writer.stop();
                return Err(e);
            }
        };
        let schedules = match &stripe_api {
            Some(api) => Schedules::start(api, &config.stripe),
            None => Ok(Schedules::none()),
        };
        let schedules = match schedules {
            Ok(schedules) => schedules,
            Err(e) => {
                webhook.shutdown(Duration::from_secs(1));
                admin.shutdown(Duration::from_secs(1));
                let _ = std::fs::remove_file(&control_file);
                retention.stop();
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
                    let _ = std::fs::remove_file(&control_file);
                    schedules.stop();
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
            stripe: StripeParts {
                api: stripe_api,
                control,
                control_file,
                schedules,
            },
            lock,
            database,
        })
    }

    /// The Stripe client's work, when an API key is configured (for tests).
    pub fn stripe(&self) -> Option<&Arc<StripeApi>> {
        self.stripe.api.as_ref()
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
        let _ = std::fs::remove_file(&self.stripe.control_file);
        // Background work ends at its next step (a backfill keeps its cursor).
        self.stripe.control.stop();
        self.stripe.schedules.stop();
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

/// The Stripe client (with an API key) and the control endpoint (always: without a key it
/// answers that the server has none). Says once when the client is off.
fn stripe_parts(
    config: &Config,
    writer: &Writer,
    effects: &Arc<Effects>,
) -> Result<(Option<Arc<StripeApi>>, Arc<Control>)> {
    let api = match config.stripe.api_key() {
        Some(key) => {
            log::info!(
                "stripe API on: api_base={} requests_per_sec={} reconcile_every={} resync_every={} refetch_uncertain={}",
                config.stripe.base(),
                config.stripe.requests_per_sec,
                config.stripe.reconcile_every,
                config.stripe.resync_every,
                config.stripe.refetch_uncertain
            );
            Some(Arc::new(StripeApi::new(
                config,
                key,
                writer.handle(),
                effects.clone(),
            )))
        }
        None => {
            log::info!(
                "stripe API off: set the environment variable {} to an API key to turn on backfill, reconcile, refetch and connect",
                config.stripe.api_key_env
            );
            None
        }
    };
    let control = Arc::new(Control::new(api.clone())?);
    Ok((api, control))
}
