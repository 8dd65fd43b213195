//! `cargo +nightly fuzz run http_framing`: the body is `stripe_inbox::testkit::fuzz::http_framing`, which the
//! corpus replay test also runs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| stripe_inbox::testkit::fuzz::http_framing(data));
