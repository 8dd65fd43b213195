//! `cargo +nightly fuzz run envelope`: the body is `stripe_inbox::testkit::fuzz::envelope`, which the
//! corpus replay test also runs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| stripe_inbox::testkit::fuzz::envelope(data));
