//! Command-line front ends. `anyhow` is allowed here and only here.
pub mod attest;
pub mod bench;
pub mod demo;
pub mod kv;
pub mod metrics;
pub mod node;
pub mod sim;
pub mod status;
