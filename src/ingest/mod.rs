//! Ingest.

pub mod endpoint;
pub mod store;
