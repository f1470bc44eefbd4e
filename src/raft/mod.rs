//! The consensus core: Raft as a pure state machine.
//!
//! **IO contract.** This module performs no IO, reads no clock and draws no randomness
//! except from a seeded generator its driver injects. It never blocks and never spawns.
//! Everything it wants done comes out of [`Raft::ready`] as data; everything that happens
//! to it goes in through [`Raft::step`]. The groups worker (over iroh bonds and real
//! storage) and the simulator (virtual network, virtual disk) are two drivers of the very
//! same code. See [`ready`] for the order a driver must follow.
//!
//! **Safety rules** (architecture.md §7.2; these depart from the reference runtime on purpose):
//! quorum is a strict majority of the voters of the latest configuration entry in the log,
//! committed or not; a leader commits only entries of its own term by counting and starts
//! its term with a no-op; term and vote are durable before any vote or append
//! acknowledgement leaves the node (`persisted_messages`); the leader counts its own log
//! only once durable; pre-vote and check-quorum are on; one membership change at a time,
//! and only after the leader committed an entry of its term.
//!
//! **Performance shape.** Proposals made between two `ready` calls become one append to
//! storage (group commit) and, per follower, as few messages as the limits allow; appends
//! to a follower in `Replicate` state are pipelined up to `max_inflight_messages`.
mod config;
mod election;
mod error;
mod leader;
mod log;
mod membership;
mod message;
mod node;
mod progress;
pub mod ready;
mod replication;
mod rng;
mod types;

#[cfg(test)]
mod tests;

pub use config::{ConfigError, RaftConfig};
pub use error::{
    BootstrapError, DriverMisuse, NewRaftError, PeerError, RecoveryError, SafetyViolation,
    StepError,
};
pub use membership::{MemberRole, Membership, MembershipChange, MembershipError};
pub use message::{Message, MessageBody};
pub use node::{InitialState, Raft};
pub use ready::{Event, Input, ReadState, Ready, Rejection, Role};
pub use rng::SplitMix64;
pub use types::{
    Entry, EntryPayload, HardState, Incarnation, Index, NodeId, Snapshot, SnapshotMeta, Term,
};
