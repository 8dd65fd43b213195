//! Test support.

pub mod streams;
