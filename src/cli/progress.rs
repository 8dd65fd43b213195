//! The one progress bar: on stderr when it is a terminal, silent otherwise (cron, pipes, tests).
//! Counts events (`replay --rebuild`), objects of unknown total (`backfill`: Stripe's lists do not
//! say how long they are) or bytes (`backup`, `restore`), at most ten redraws a second. [`Bars`] is
//! a bar per phase (per object type of a backfill), also for work a server does for the command.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use crate::format;
use crate::ops::Progress;
use crate::stripe_api::control::BarView;

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
    label: String,
    unit: Unit,
    on: bool,
    started: Instant,
    last: Option<Instant>,
    /// A count of unknown total not drawn yet (drawn at the latest by `finish`).
    pending: Option<u64>,
}

impl Bar {
    /// A bar that draws only when stderr is a terminal.
    pub fn new(label: impl Into<String>, unit: Unit) -> Bar {
        Bar {
            label: label.into(),
            unit,
            on: std::io::stderr().is_terminal(),
            started: Instant::now(),
            last: None,
            pending: None,
        }
    }
}

impl Progress for Bar {
    fn step(&mut self, done: u64, total: u64) {
        let recent = self
            .last
            .is_some_and(|t| t.elapsed() < Duration::from_millis(100));
        if !self.on || (recent && (done < total || total == 0)) {
            self.pending = (total == 0).then_some(done);
            return;
        }
        self.last = Some(Instant::now());
        self.pending = None;
        if total == 0 {
            // No total (a list of unknown length): the count and the time.
            eprint!(
                "\r{} {} {:.1} s   ",
                self.label,
                format::thousands(done as i64),
                self.started.elapsed().as_secs_f64()
            );
            return;
        }
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
        if let Some(done) = self.pending.take() {
            self.last = None;
            self.step(done, 0);
        }
        if self.on && self.last.take().is_some() {
            eprintln!();
        }
    }
}

/// A bar per phase: each `note` closes the current bar and starts one labelled with the phase.
pub struct Bars {
    unit: Unit,
    current: Option<Bar>,
    /// Bars started so far (for [`Bars::show`]).
    started: usize,
}

impl Bars {
    pub fn new(unit: Unit) -> Bars {
        Bars {
            unit,
            current: None,
            started: 0,
        }
    }

    /// Draws the bars of work a server does for this command, as its control endpoint reports
    /// them (a list that only grows): new bars are started, the current one is advanced.
    pub fn show(&mut self, views: &[BarView]) {
        for (i, v) in views.iter().enumerate() {
            if i + 1 < self.started {
                continue;
            }
            if i >= self.started {
                self.note(&v.label);
            }
            self.step(v.done, v.total);
            if v.finished {
                self.finish();
            }
        }
    }
}

impl Progress for Bars {
    fn step(&mut self, done: u64, total: u64) {
        if let Some(bar) = &mut self.current {
            bar.step(done, total);
        }
    }

    fn note(&mut self, what: &str) {
        self.finish();
        self.current = Some(Bar::new(what, self.unit));
        self.started += 1;
    }

    fn finish(&mut self) {
        if let Some(mut bar) = self.current.take() {
            bar.finish();
        }
    }
}
