//! What every admin page is given: the shared state of the admin listener ([`Admin`]) and the
//! response helpers every page uses. Pages depend on this, never on the router.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use crate::admin::api::Api;
use crate::admin::auth::{Auth, Viewer};
use crate::admin::html::{self, Frame};
use crate::forward::Routes;
use crate::http::Response;
use crate::ingest::endpoint::Counters;
use crate::store::writer::WriterHandle;
use crate::store::ReadPool;

/// The policy every HTML page is sent with: no script of any kind, styles only from this origin's
/// stylesheet, no framing, forms only back to this origin.
pub const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
                       frame-ancestors 'none'; base-uri 'none'";

/// What the admin handlers share.
pub struct Admin {
    pub pool: ReadPool,
    pub writer: WriterHandle,
    pub counters: Arc<Counters>,
    pub api: Api,
    pub auth: Auth,
    /// The database file, for its size on the dashboard and in `/metrics`.
    pub database: PathBuf,
    /// The forwarding destinations and their counters (Deliveries page, dashboard, `/metrics`).
    pub forward: Arc<Routes>,
    /// A Stripe API key is configured: objects can be fetched again (the Refetch button).
    pub refetch: bool,
}

/// An HTML answer with the headers every page gets.
pub fn page_response(status: u16, body: String) -> Response {
    Response::html(status, body)
        .with_header("Content-Security-Policy", CSP)
        .with_header("X-Content-Type-Options", "nosniff")
        .with_header("X-Frame-Options", "DENY")
        .with_header("Referrer-Policy", "no-referrer")
        .with_header("Cache-Control", "no-store")
}

/// `303 See Other` to a path on this listener.
pub fn redirect(location: &str) -> Response {
    Response::new(303)
        .with_header("Location", location)
        .with_header("Cache-Control", "no-store")
}

/// A whole admin page in the frame (navigation with `active` marked, the viewer's CSRF token for
/// the logout form), sent with the headers every page gets.
pub fn page(viewer: &Viewer, active: &'static str, title: &str, body: &str) -> Response {
    let frame = Frame {
        csrf: &viewer.csrf,
        logged_in: viewer.logged_in,
        active,
    };
    page_response(200, html::page(title, &frame, body))
}

/// The line at the foot of a list page that says how long it took to build.
pub fn built_in(body: &mut String, started: Instant) {
    let _ = write!(
        body,
        "<p class=\"muted\">Built in {:.1} ms.</p>",
        started.elapsed().as_secs_f64() * 1000.0
    );
}
