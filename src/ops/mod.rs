//! Operations on the database file as a whole: [`backup`] while serving, [`restore`] with the
//! server stopped, [`retention`] (pruning old bodies, in `serve` and by hand), [`export`] as
//! JSON Lines, and [`audit`] (what `check` warns about). Each returns a report of what it did and reports progress on long work through a
//! [`Progress`]; none prints, reads arguments or exits: the CLI does those. They may use the
//! mirror's queries, the store and the leaves.

pub mod audit;
pub mod backup;
pub mod copy;
pub mod export;
pub mod restore;
pub mod retention;

/// How a long operation tells whoever runs it how far it has come: the CLI draws a bar on a
/// terminal; elsewhere `()` ignores it.
pub trait Progress {
    /// `done` of `total` units (bytes, events) are done.
    fn step(&mut self, _done: u64, _total: u64) {}
    /// A phase begins (`checking the copy`).
    fn note(&mut self, _what: &str) {}
    /// The stepped part is over.
    fn finish(&mut self) {}
}

/// No progress is shown.
impl Progress for () {}
