//! What a Stripe event is, independent of what we do with it: the envelope parser ([`envelope`]),
//! Stripe's signature scheme ([`signature`]: verify what Stripe sends, sign what we forward),
//! event type names and patterns ([`types`]) and realistic sample events built from Stripe's own
//! example objects ([`testevent`], the local `stripe trigger`).
//!
//! A leaf, below the mirror (which re-parses stored bodies) and the ingest (which verifies and
//! parses what arrives): it uses only `time` and `crypto`, does no I/O and keeps no state.

pub mod envelope;
pub mod signature;
pub mod testevent;
pub mod types;
