//! The admin listener: the pages a shop owner reads when a customer writes "I paid but my account
//! says unpaid", the read API for the shop's app, `/healthz` and `/metrics`.
//!
//! - [`router`]: routes, access (public routes, login, sessions), the headers every answer gets;
//!   it is the only module that knows every page.
//! - [`context`]: the state every page is given ([`context::Admin`]) and the response helpers.
//!   Pages depend on it, never on the router.
//! - Pages: [`dashboard`], [`events`] (its search: [`event_search`]), [`objects`].
//! - [`auth`] (password, sessions, CSRF, login limits), [`html`] (escaping, frame, stylesheet,
//!   JSON viewer, chart), [`form`] (query strings, forms, cookies), [`metrics`] (Prometheus text),
//!   [`api`] (the bearer-token read API over the mirror).
//!
//! The admin only reads, through the `query_only` pool; its actions (replay, rebuild) are writer
//! closures. May use the mirror's queries, the store, the ingest counters and the leaves.

pub mod api;
pub mod auth;
pub mod context;
pub mod dashboard;
pub mod deliveries;
pub mod event_search;
pub mod events;
pub mod form;
pub mod html;
pub mod metrics;
pub mod objects;
pub mod router;
pub mod stripe_panel;
