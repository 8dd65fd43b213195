//! The one progress bar: on stderr when it is a terminal, silent otherwise (cron, pipes, tests).
//! Counts events (`replay --rebuild`) or bytes (`backup`, `restore`), at most ten redraws a second.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use crate::format;
use crate::ops::Progress;

/// What the bar counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Things: `1200/5000 3.1 s`.
    Count,
    /// Bytes: `12.0 MiB of 40.0 MiB, 180 MB/s`.
    Bytes,
}

/// A progress bar on stderr.
pub struct Bar {
    label: &'static str,
    unit: Unit,
    on: bool,
    started: Instant,
    last: Option<Instant>,
}

impl Bar {
    /// A bar that draws only when stderr is a terminal.
    pub fn new(label: &'static str, unit: Unit) -> Bar {
        Bar {
            label,
            unit,
            on: std::io::stderr().is_terminal(),
            started: Instant::now(),
            last: None,
        }
    }
}

impl Progress for Bar {
    fn step(&mut self, done: u64, total: u64) {
        let recent = self
            .last
            .is_some_and(|t| t.elapsed() < Duration::from_millis(100));
        if !self.on || (recent && done < total) {
            return;
        }
        self.last = Some(Instant::now());
        let pct = (done * 100).checked_div(total).unwrap_or(100).min(100);
        let filled = (pct / 4) as usize;
        let secs = self.started.elapsed().as_secs_f64();
        let tail = match self.unit {
            Unit::Count => format!("{done}/{total} {secs:.1} s "),
            Unit::Bytes => format!(
                "{} of {}, {:.0} MB/s   ",
                format::bytes(done),
                format::bytes(total),
                done as f64 / 1e6 / secs.max(0.001)
            ),
        };
        eprint!(
            "\r{} [{}{}] {pct:>3}% {tail}",
            self.label,
            "#".repeat(filled),
            " ".repeat(25 - filled),
        );
    }

    fn note(&mut self, what: &str) {
        if self.on {
            eprintln!("{}: {what}...", self.label);
        }
    }

    fn finish(&mut self) {
        if self.on && self.last.take().is_some() {
            eprintln!();
        }
    }
}
