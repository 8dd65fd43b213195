//! The mirror.

pub mod project;
pub mod replay;
