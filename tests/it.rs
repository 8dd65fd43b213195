//! The one integration-test binary: real servers on free loopback ports, temp dirs, no network.

mod support;

mod admin;
mod backup;
mod browser;
mod cli;
mod crash;
mod deploy;
mod forward;
mod fuzz_corpus;
mod mirror;
mod security;
mod stripe_api;
mod webhook;
