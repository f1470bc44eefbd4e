//! tessera: confidential replicated groups for Intel TDX.
//!
//! Nodes prove what they run with a TDX quote bound to their peer key; peers that pass a
//! measurement policy bond into a group, and the group replicates a state machine with Raft.
//!
//! Module map (arrows point one way, see architecture.md §2; `tests/architecture.rs` checks the
//! module graph has no cycle):
//! - [`raft`]: the sans-IO consensus core. No IO, no clock, no ambient randomness.
//! - [`clock`]: the node's wall clock as a function (a leaf).
//! - [`machine`]: the [`machine::StateMachine`] trait and the built-in key-value store.
//! - [`storage`]: the log/hard-state [`storage::Storage`] trait, the in-memory store and the
//!   conformance suite every store must pass.
//! - [`sim`]: the deterministic simulator that drives the very same core under faults.
//! - [`lincheck`]: the linearizability checker the simulator's client histories go through.
//! - [`net`]: the iroh endpoint (nothing public contacted) and the framed postcard codec.
//! - [`tickets`]: ticket validators (TDX, mock TDX, any-of) and cached admission.
//! - [`collateral`]: this node's own DCAP collateral: a file, or a PCCS refreshed on a
//!   schedule, verified before it replaces the bundle tickets carry.
//! - `cluster` (feature `mock-attestation`): mock-attested members in one process over
//!   loopback iroh, the fixture behind the demo, the benchmark and the tests.
//! - [`discovery`]: signed peer entries and the bounded catalog of them.
//! - [`group_id`]: group identity: the secret key and the public id derived from everything
//!   members must agree on. A leaf: it uses only the core's configuration.
//! - [`groups`]: bonds over iroh, the worker that drives the core and the async
//!   [`groups::Group`] handle.
//! - [`client`]: the client protocol over iroh (`tessera kv`, `tessera status`) and the node
//!   side that serves it, with client keys checked against an allow list.
//! - [`config`]: the `node.toml` schema of `tessera node`, validated with errors that name
//!   the field.
//!
//! Feature `mock-attestation` (off by default, on in test builds) brings the mock quote
//! provider, its test PKI and the mock trust root: `MockTdxValidator`, `LocalCluster`,
//! `attestation = "mock"`. Production builds leave it off and refuse those settings.
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]
pub mod client;
pub mod clock;
#[cfg(feature = "mock-attestation")]
pub mod cluster;
pub mod collateral;
pub mod config;
pub mod discovery;
pub mod group_id;
pub mod groups;
pub mod lincheck;
pub mod machine;
pub mod net;
pub mod probe;
pub mod raft;
pub mod sim;
pub mod storage;
pub mod tickets;
