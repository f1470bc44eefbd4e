//! `tessera-attestation`: everything needed to decide whether a TDX quote comes from a
//! trust domain running the measured image a policy allows, bound to a given peer key.
//!
//! IO contract: verification and policy evaluation read no clock and no network; time
//! (`now`, Unix seconds) and collateral are always passed in. Only the configfs-tsm quote
//! provider touches the file system.
//!
//! The pipeline ([`verify`], architecture.md §4.2), each step a named check in an [`Appraisal`]:
//! 1. [`quote::parse_quote`]: v4/v5 quotes with TD 1.0/1.5 bodies; SGX quotes refused.
//! 2. [`verify::verify_dcap`]: collateral validity windows at `now`, then dcap-qvl with the
//!    policy's trust root (PCK chain, CRLs, QE identity, signatures, TCB level). No policy.
//! 3. [`freshness`] (stateful verifiers only, [`verify_fresh`]): the collateral is no older
//!    than the newest the verifier has accepted for the same platform model, QE identity
//!    or CA; an accepted verdict raises that watermark.
//! 4. [`policy`]: TCB status, advisories, platform flags, FMSPC, collateral age (30 days
//!    unless the policy says otherwise), then the TD (debug bit, attributes, XFAM,
//!    MR_SEAM, measurement profiles).
//! 5. [`binding`]: report data = SHA-512 over the claims, peer key, network, claims age.
//!
//! Untrusted bytes never cause a panic: parsing and verification return errors.
//!
//! Collateral for this platform's own quotes is described, not fetched, by [`pccs`]: the
//! PCCS / PCS v4 API paths and how answers become [`Collateral`].
//!
//! Apart from the pipeline, [`measure`] computes offline what an image will measure (MRTD,
//! RTMR1, RTMR2) so that a policy can pin it (architecture.md §4.5).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod binding;
pub mod cache;
pub mod freshness;
pub mod measure;
pub mod pccs;
pub mod pipeline;
pub mod policy;
pub mod provider;
pub mod quote;
pub mod tcb;
pub mod verify;

pub use binding::{BindingContext, BindingError, Claims};
pub use cache::VerificationCache;
pub use freshness::{CollateralFreshness, CollateralWatermark, FreshnessError};
pub use pipeline::{
    appraise, appraise_fresh, validator_digest, verify, verify_fresh, Appraisal, Binding,
    CheckOutcome, VerifiedQuote, VerifyError,
};
pub use policy::{Policy, PolicyError, TrustRoot};
pub use provider::{ProviderError, ProviderKind, Quote, QuoteProvider};
pub use quote::{Measurements, ParseError, ParsedQuote};
pub use tcb::{PlatformFlags, TcbStatus};
pub use verify::{Collateral, CollateralError, DcapCheck, DcapVerified};
