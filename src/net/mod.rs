//! The network layer (architecture.md §5): the iroh endpoint every node binds, the ALPNs of our
//! protocols, and the framed postcard codec they all speak.
//!
//! **IO contract.** This module moves bytes and enforces limits (frame size, version,
//! timeouts); it never interprets what a frame means to a group. It contacts nothing but
//! the addresses it is given: relays, public address lookup, the port mapper and net-report
//! probes are off unless the operator configures a relay.
pub mod announce;
pub(crate) mod budget;
pub(crate) mod endpoint;
pub(crate) mod frame;

pub use budget::{
    accept_within, AcceptFailure, Budget, BudgetPermit, OverBudget, ServingBudget, Source,
};
pub use endpoint::{
    advertised_addrs, bound_addr, local_endpoint, random_secret, EndpointError, Listen, ALPN_BOND,
    ALPN_CLIENT, ALPN_DISCOVERY,
};
pub use frame::{
    encode_message, read_frame, read_frame_limited, read_message, read_message_limited,
    write_frame, write_message, FrameError, FRAME_BYTES_MAX, WIRE_VERSION,
};
