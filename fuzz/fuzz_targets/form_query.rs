//! `cargo +nightly fuzz run form_query`: the body is `stripe_inbox::testkit::fuzz::form_query`, which the
//! corpus replay test also runs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| stripe_inbox::testkit::fuzz::form_query(data));
