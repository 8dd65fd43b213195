//! The fuzzers' corpus, replayed: every file under `fuzz/corpus/<target>/` goes through the
//! same function its cargo-fuzz target runs (`stripe_inbox::testkit::fuzz`), so an input that once
//! broke a parser (the files named `issue13-*` and `crash-*`) keeps being tried by `cargo test`.
//! The corpus is minimised (`cargo fuzz cmin`), so this takes a second or two.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::Instant;

use stripe_inbox::testkit::fuzz::TARGETS;

#[test]
fn every_corpus_file_replays_through_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let started = Instant::now();
    let mut total = 0;
    for (name, run) in TARGETS {
        let dir = root.join(name);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.unwrap().path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{name}: no corpus");
        for file in &files {
            let data = std::fs::read(file).unwrap();
            if catch_unwind(AssertUnwindSafe(|| run(&data))).is_err() {
                panic!(
                    "{name}: {} fails (replay: cargo +nightly fuzz run {name} {})",
                    file.display(),
                    file.display()
                );
            }
        }
        total += files.len();
    }
    println!(
        "fuzz corpus: {total} files in {} targets replayed in {:.2} s",
        TARGETS.len(),
        started.elapsed().as_secs_f64()
    );
}
