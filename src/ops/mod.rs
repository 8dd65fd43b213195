//! Operations.

pub mod backup;
pub mod export;
pub mod restore;
pub mod retention;
