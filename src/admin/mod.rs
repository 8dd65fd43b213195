//! The admin listener.

pub mod api;
pub mod auth;
pub mod context;
pub mod dashboard;
pub mod event_search;
pub mod events;
pub mod form;
pub mod html;
pub mod metrics;
pub mod objects;
pub mod router;
