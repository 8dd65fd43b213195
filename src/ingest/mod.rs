//! Ingest: the webhook endpoint ([`endpoint`]: route, verify, parse, hand to the writer, answer
//! only after COMMIT) and the one function that stores an event ([`store`]: dedup, projection,
//! insert, and whatever else storing an event does in the same transaction), and [`tie_ahead`],
//! the endpoint's guess that an event will meet a same-second tie.
//!
//! May use the mirror, the store, `event` and `http`; nothing here opens a connection: the
//! endpoint runs `store_event` inside a writer closure.

pub mod endpoint;
pub mod store;
pub mod tie_ahead;
