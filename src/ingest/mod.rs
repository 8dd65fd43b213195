//! Ingest.

pub mod endpoint;
