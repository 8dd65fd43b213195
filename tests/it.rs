//! The one integration-test binary: real servers on free loopback ports, temp dirs, no network.

mod support;

mod backup;
mod cli;
mod crash;
mod webhook;
