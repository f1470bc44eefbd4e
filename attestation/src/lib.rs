//! `tessera-attestation`: everything needed to decide whether a TDX quote comes from a
//! trust domain running the measured image a policy allows, bound to a given peer key.
//!
//! IO contract: verification and policy evaluation read no clock and no network; time
//! (`now`) and collateral are always passed in. Only the configfs-tsm quote provider
//! touches the file system.
#![forbid(unsafe_code)]
