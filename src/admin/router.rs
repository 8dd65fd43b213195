//! The admin listener: routing, access control, the response headers every page gets, and the
//! public endpoints (`/healthz`, `/metrics`, `/admin.css`, `/login`).
//!
//! The pages themselves live in `dashboard`, `events` and `objects` and get the state they need
//! from `context`; their HTML helpers are in `html`; who may see them is `auth`'s business. The
//! admin only reads, through the `query_only` pool; its two actions (replay one event, rebuild one
//! object) are writer closures, like everything that writes.
//!
//! # Routes
//! | route | who |
//! | --- | --- |
//! | `GET /healthz`, `GET /metrics`, `GET /admin.css` | anyone who reaches the listener |
//! | `/api/...` (the read API, `api.rs`) | its own bearer token |
//! | `GET /login`, `POST /login` | anyone (limited per client, CSRF-checked) |
//! | `GET /login?token=...` | whoever has the one-time login link (no password set) |
//! | `POST /logout` | a session, with its CSRF token |
//! | `GET /`, `/events`, `/events/{id}`, `/objects`, `/objects/{id}`, `/deliveries` | a session (or open mode) |
//! | `POST /events/{id}/replay`, `POST /objects/{id}/rebuild`, `POST /objects/{id}/refetch`, `POST /events/{id}/forward`, `POST /deliveries/{id}/retry`, `POST /deliveries/retry-dead` | the same, with the CSRF token |
//! | `/control/...` (the Stripe client's control endpoint, answered before this router) | its own token, loopback only |
//!
//! Every HTML answer carries a `Content-Security-Policy` that allows no script at all and styles
//! only from `/admin.css`, `X-Frame-Options: DENY`, `Referrer-Policy: no-referrer`, `nosniff`, and
//! `Cache-Control: no-store`. A failed query is logged with its cause; the browser gets a generic
//! 500 page.

use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::admin::auth::{Access, Login, Mode, Viewer};
use crate::admin::context::{page_response, redirect, Admin};
use crate::admin::form::{decode_path, Form};
use crate::admin::{dashboard, deliveries, events, html, metrics, objects, stripe_panel};
use crate::error::Result;
use crate::http::{Request, Response};
use crate::store;

impl Admin {
    /// Handles one request on the admin listener.
    pub fn handle(&self, req: Request) -> Response {
        if req.path.starts_with("/api/") {
            return self.api.handle(&req);
        }
        let method = req.method.as_str();
        let get = matches!(method, "GET" | "HEAD");
        // The public routes.
        match req.path.as_str() {
            "/healthz" if get => return self.healthz(),
            "/metrics" if get => return self.metrics(),
            "/admin.css" if get => {
                return Response::new(200)
                    .with_header("Content-Type", "text/css; charset=utf-8")
                    .with_header("Cache-Control", "max-age=300")
                    .with_header("X-Content-Type-Options", "nosniff")
                    .with_body_text(html::CSS);
            }
            "/login" if get => return self.login_form(&req, None),
            "/login" if method == "POST" => return self.login(&req),
            "/healthz" | "/metrics" | "/admin.css" => {
                return Response::json_error(405, "method not allowed").with_header("Allow", "GET")
            }
            "/login" => {
                return Response::json_error(405, "method not allowed")
                    .with_header("Allow", "GET, POST")
            }
            _ => {}
        }

        // Everything else needs a session (or open mode).
        let viewer = match self.auth.check(&req, Instant::now()) {
            Access::Granted(viewer) => viewer,
            Access::Login if get => return redirect("/login").with_log("admin=login_required"),
            Access::Login => {
                return page_response(
                    403,
                    html::message_page("Not logged in", "Log in first, then try again."),
                )
                .with_log("admin=login_required")
            }
            Access::Refused(why) => {
                return page_response(403, html::message_page("Refused", why))
                    .with_log("admin=refused_open_mode")
            }
        };
        let result = self.route(&req, &viewer);
        let mut response = match result {
            Ok(response) => response,
            Err(e) => {
                log::error!("admin {} {}: {e}", req.method, req.path);
                page_response(
                    500,
                    html::message_page(
                        "Something went wrong",
                        "The page could not be built; the server log says why.",
                    ),
                )
            }
        };
        if let Some(cookie) = &viewer.set_cookie {
            response = response.with_header("Set-Cookie", cookie);
        }
        response
    }

    /// The pages behind the login.
    fn route(&self, req: &Request, viewer: &Viewer) -> Result<Response> {
        let get = matches!(req.method.as_str(), "GET" | "HEAD");
        let post = req.method == "POST";
        let segments: Vec<&str> = req.path.trim_end_matches('/').split('/').skip(1).collect();
        Ok(match segments.as_slice() {
            [] | [""] if get => dashboard::page(self, viewer)?,
            ["logout"] if post => self.logout(req, viewer),
            ["events"] if get => events::list(self, req, viewer)?,
            ["events", id] if get => events::show(self, req, viewer, &decode_path(id))?,
            ["events", id, "replay"] if post => match self.checked_form(req, viewer) {
                Ok(_) => events::replay(self, &decode_path(id))?,
                Err(refused) => refused,
            },
            ["events", id, "forward"] if post => match self.checked_form(req, viewer) {
                Ok(form) => deliveries::forward_event(self, &decode_path(id), &form)?,
                Err(refused) => refused,
            },
            ["deliveries"] if get => deliveries::list(self, req, viewer)?,
            ["deliveries", "retry-dead"] if post => match self.checked_form(req, viewer) {
                Ok(form) => deliveries::retry_dead(self, &form)?,
                Err(refused) => refused,
            },
            ["deliveries", id, "retry"] if post => match self.checked_form(req, viewer) {
                Ok(_) => deliveries::retry_one(self, id)?,
                Err(refused) => refused,
            },
            ["objects"] if get => objects::list(self, req, viewer)?,
            ["objects", id] if get => objects::show(self, req, viewer, &decode_path(id))?,
            ["objects", id, "rebuild"] if post => match self.checked_form(req, viewer) {
                Ok(_) => objects::rebuild(self, &decode_path(id))?,
                Err(refused) => refused,
            },
            ["objects", id, "refetch"] if post => match self.checked_form(req, viewer) {
                Ok(_) => stripe_panel::refetch(self, &decode_path(id))?,
                Err(refused) => refused,
            },
            [] | [""] | ["events" | "objects" | "deliveries"] | ["events" | "objects", _] => {
                Response::json_error(405, "method not allowed").with_header("Allow", "GET")
            }
            ["logout"]
            | ["events" | "objects", _, "replay" | "rebuild" | "forward" | "refetch"]
            | ["deliveries", "retry-dead"]
            | ["deliveries", _, "retry"] => {
                Response::json_error(405, "method not allowed").with_header("Allow", "POST")
            }
            _ => page_response(
                404,
                html::message_page("Not found", "There is no such page."),
            ),
        })
    }

    /// The form of a POST whose CSRF token is right, or the 403 answer.
    fn checked_form(&self, req: &Request, viewer: &Viewer) -> std::result::Result<Form, Response> {
        let form = Form::parse_body(&req.body);
        if self.auth.csrf_ok(req, &form, viewer) {
            Ok(form)
        } else {
            Err(csrf_refused())
        }
    }

    fn login_form(&self, req: &Request, message: Option<&str>) -> Response {
        match self.auth.mode() {
            Mode::OpenOnLoopback => return redirect("/"),
            Mode::LoginLink => return self.login_link(req),
            Mode::Password => {}
        }
        let (token, set_cookie) = self.auth.login_token(req);
        let mut response = page_response(200, html::login_page(&token, message));
        if let Some(cookie) = set_cookie {
            response = response.with_header("Set-Cookie", &cookie);
        }
        response
    }

    /// `GET /login` without a password: the one-time link's `token` gives a session and a
    /// redirect to a URL without it; without a (valid) token, a page that says where the link is.
    fn login_link(&self, req: &Request) -> Response {
        let token = Form::parse(&req.query).get("token").map(str::to_string);
        if let Some(token) = token {
            if let Some(cookie) = self.auth.login_with_link(&token, Instant::now()) {
                log::info!("admin login ok (one-time link) client={}", req.client);
                return redirect("/")
                    .with_header("Set-Cookie", &cookie)
                    .with_header("Referrer-Policy", "no-referrer")
                    .with_log("admin=login_link");
            }
            log::warn!("admin login link refused client={}", req.client);
            return page_response(
                403,
                html::message_page(
                    "This login link does not work",
                    "A login link works once, and only until stripe-inbox restarts. Restart serve for a new one (it is in the log), or set an admin password ([admin] password_env).",
                ),
            )
            .with_log("admin=login_link_refused");
        }
        page_response(
            200,
            html::message_page(
                "Log in",
                "No admin password is set, so the pages are closed. Open the one-time login link that serve wrote to its log when it started (http://…/login?token=…), or set a password ([admin] password_env).",
            ),
        )
    }

    fn login(&self, req: &Request) -> Response {
        match self.auth.mode() {
            Mode::OpenOnLoopback => return redirect("/"),
            Mode::LoginLink => return redirect("/login"),
            Mode::Password => {}
        }
        let form = Form::parse_body(&req.body);
        if !self.auth.login_csrf_ok(req, &form) {
            return csrf_refused();
        }
        let password = form.raw("password").unwrap_or("");
        match self.auth.login(req.client, password, Instant::now()) {
            Login::Ok(cookie) => {
                log::info!("admin login ok client={}", req.client);
                redirect("/")
                    .with_header("Set-Cookie", &cookie)
                    .with_log("admin=login_ok")
            }
            Login::Wrong => {
                log::warn!("admin login failed client={}", req.client);
                let mut response = self.login_form(req, Some("Wrong password."));
                response.status = 401;
                response.with_log("admin=login_failed")
            }
            Login::Limited(wait) => {
                log::warn!("admin login rate-limited client={}", req.client);
                let (token, _) = self.auth.login_token(req);
                page_response(
                    429,
                    html::login_page(
                        &token,
                        Some(&format!(
                            "Too many attempts: wait {wait} s before trying again."
                        )),
                    ),
                )
                .with_header("Retry-After", &wait.to_string())
                .with_log("admin=login_limited")
            }
        }
    }

    fn logout(&self, req: &Request, viewer: &Viewer) -> Response {
        if let Err(refused) = self.checked_form(req, viewer) {
            return refused;
        }
        let target = if self.auth.is_open() { "/" } else { "/login" };
        redirect(target).with_header("Set-Cookie", &self.auth.logout(req))
    }

    /// Liveness plus a database read: 200 when a read connection can query the events table.
    fn healthz(&self) -> Response {
        let check = self.pool.get().map_err(|e| e.to_string()).and_then(|conn| {
            conn.query_row(
                "SELECT COUNT(*) FROM (SELECT 1 FROM events LIMIT 1)",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map_err(|e| e.to_string())
        });
        let queued = self.writer.stats().queued.load(Ordering::Relaxed);
        let stored = self.counters.stored.load(Ordering::Relaxed);
        match check {
            Ok(_) => Response::json(
                200,
                format!("{{\"status\":\"ok\",\"database\":\"ok\",\"writer_queue\":{queued},\"stored_since_start\":{stored}}}"),
            ),
            Err(e) => {
                log::error!("healthz: database check failed: {e}");
                Response::json(503, "{\"status\":\"error\",\"database\":\"unavailable\"}")
            }
        }
    }

    fn metrics(&self) -> Response {
        let gauges = metrics::Gauges {
            database_bytes: store::file_sizes(&self.database).0,
            wal_bytes: store::file_sizes(&self.database).1,
            admin_sessions: self.auth.session_count() as u64,
        };
        Response::new(200)
            .with_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            .with_body_text(&{
                let mut text = metrics::render(&self.counters, self.writer.stats(), &gauges);
                metrics::render_forward(&mut text, &self.forward);
                text
            })
    }
}

fn csrf_refused() -> Response {
    page_response(
        403,
        html::message_page(
            "Refused",
            "This form has expired or was not sent from this page. Reload the page and try again.",
        ),
    )
    .with_log("admin=csrf_refused")
}

trait WithBodyText {
    fn with_body_text(self, body: &str) -> Response;
}

impl WithBodyText for Response {
    fn with_body_text(mut self, body: &str) -> Response {
        self.body = body.as_bytes().to_vec();
        self
    }
}
