//! What a Stripe event is (placeholder doc, rewritten below).

pub mod envelope;
pub mod signature;
pub mod testevent;
pub mod types;
