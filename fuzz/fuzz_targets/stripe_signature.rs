//! `cargo +nightly fuzz run stripe_signature`: the body is `stripe_inbox::testkit::fuzz::stripe_signature`, which the
//! corpus replay test also runs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| stripe_inbox::testkit::fuzz::stripe_signature(data));
