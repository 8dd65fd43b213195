//! The soak command: 200 seeded rounds of the real binary under load, each ended by SIGKILL at a
//! random moment (some while it starts), then every event answered 2xx present exactly once,
//! every event ever sent present after redelivery, and the mirror equal to a rebuild from the
//! events, checked in-process and again by `stripe-inbox check`. The rounds are the crash test's
//! (`tests/crash.rs`, 30 rounds in `cargo test`), run for longer. Not in CI: it takes minutes.
//!
//! ```sh
//! cargo build --release && cargo run --release --example soak -- [--rounds 200] [--seed 13]
//! ```
//!
//! The seed fixes the schedule (kill delays, start-up kills, event types); thread interleaving
//! still varies. Prints the figures the README quotes.

#[allow(dead_code, unused_imports)]
#[path = "../tests/crash.rs"]
mod crash;
#[path = "../tests/support/mod.rs"]
mod support;

use std::process::ExitCode;

use support::process::{bin, run, text, Rng};
use support::TempDir;

fn main() -> ExitCode {
    let mut rounds = 200;
    let mut seed = 13;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().and_then(|v| v.parse().ok());
        match (arg.as_str(), value) {
            ("--rounds", Some(n)) => rounds = n as usize,
            ("--seed", Some(n)) => seed = n,
            _ => {
                eprintln!("usage: soak [--rounds N] [--seed N]");
                return ExitCode::from(2);
            }
        }
    }
    if !bin().exists() {
        eprintln!(
            "error: {} is not built\ntry: cargo build --release",
            bin().display()
        );
        return ExitCode::FAILURE;
    }
    println!("soak: {rounds} rounds, seed {seed} (replay with --seed {seed})");
    let dir = TempDir::new("soak");
    let figures = crash::sigkill_rounds(dir.path(), rounds, &mut Rng::new(seed));
    let check = run(&["check"], &dir.path().join("config.toml"));
    let report = String::from_utf8_lossy(&check.stdout);
    if !check.status.success() || !report.contains("the same as a rebuild") {
        eprintln!(
            "error: stripe-inbox check after the soak:\n{}",
            text(&check)
        );
        return ExitCode::FAILURE;
    }
    let mirror = report
        .lines()
        .find(|l| l.contains("the same as a rebuild"))
        .unwrap_or("")
        .trim();
    println!("soak: {}", figures.summary());
    println!("soak: every answered event stored once; stripe-inbox check: {mirror}");
    ExitCode::SUCCESS
}
