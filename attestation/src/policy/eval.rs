//! Evaluation of a DCAP-verified quote against a [`Policy`]: TCB first, then the TD.
//! Every check runs and is reported, so a rejected quote shows everything to fix at once.
use crate::quote::ParsedQuote;
use crate::tcb::{PlatformFlag, TcbStatus};
use crate::verify::DcapVerified;

use super::{HexBytes, Policy};

/// The quote breaks the policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyViolation {
    /// TCB status not in `tcb.allowed_statuses`.
    #[error("TCB status {status} is not allowed (allowed: {})", join(allowed))]
    TcbStatusNotAllowed {
        /// The quote's status.
        status: TcbStatus,
        /// The policy's list.
        allowed: Vec<TcbStatus>,
    },
    /// The TCB level lists a rejected advisory.
    #[error("rejected advisories apply to this platform: {}", ids.join(", "))]
    AdvisoryRejected {
        /// The rejected ids that apply.
        ids: Vec<String>,
    },
    /// Collateral evaluation data number below the minimum.
    #[error("TCB evaluation data number {actual} is below the minimum {min}")]
    TcbEvalDataNumberTooLow {
        /// Policy minimum.
        min: u32,
        /// Collateral's number.
        actual: u32,
    },
    /// A platform flag is set that the policy does not allow.
    #[error(
        "platform flag {flag} is set, but the policy does not allow it (allow_{flag} = false)"
    )]
    PlatformFlagNotAllowed {
        /// The flag.
        flag: PlatformFlag,
    },
    /// FMSPC not in `tcb.allowed_fmspcs`.
    #[error("FMSPC {actual} is not allowed (allowed: {})", allowed.join(", "))]
    FmspcNotAllowed {
        /// The platform's FMSPC (hex).
        actual: String,
        /// The policy's list (hex).
        allowed: Vec<String>,
    },
    /// Collateral older than `tcb.max_collateral_age_secs`.
    #[error("collateral is {age_secs} s old, policy allows {max_secs} s")]
    CollateralTooOld {
        /// Age at verification time.
        age_secs: u64,
        /// Policy maximum.
        max_secs: u64,
    },
    /// A TUD ("TD under debug") bit is set in the TD attributes (DEBUG, or a profiling or
    /// reserved debug bit) and the policy does not allow debug TDs.
    #[error("TD is a debug TD (TD attributes {attributes}, TUD bits {tud:#010b} set; none may be), policy has allow_debug = false")]
    DebugTd {
        /// TD attributes (hex).
        attributes: String,
        /// The TUD byte (bits 0-7 of the TD attributes).
        tud: u8,
    },
    /// TD attributes differ under the mask.
    #[error("TD attributes {actual} do not match {expected} under mask {mask}")]
    AttributesMismatch {
        /// Expected (hex).
        expected: String,
        /// Mask (hex).
        mask: String,
        /// Actual (hex).
        actual: String,
    },
    /// XFAM differs under the mask.
    #[error("XFAM {actual} does not match {expected} under mask {mask}")]
    XfamMismatch {
        /// Expected (hex).
        expected: String,
        /// Mask (hex).
        mask: String,
        /// Actual (hex).
        actual: String,
    },
    /// MR_SEAM not in `td.mr_seam`.
    #[error("TDX module MR_SEAM {actual} is not in the allow list")]
    MrSeamNotAllowed {
        /// Actual (hex).
        actual: String,
    },
    /// TEE_TCB_SVN below `td.min_tee_tcb_svn`.
    #[error("TEE_TCB_SVN {actual} is below the minimum {min} at byte {index}")]
    TeeTcbSvnTooLow {
        /// Policy minimum (hex).
        min: String,
        /// Actual (hex).
        actual: String,
        /// First byte below.
        index: usize,
    },
    /// No profile matches the TD's measurements.
    #[error("no measurement profile matches: {}", mismatches.join("; "))]
    NoProfileMatched {
        /// Per profile, the first field that differs, with expected and actual values.
        mismatches: Vec<String>,
    },
}

impl PolicyViolation {
    /// The name of the check that failed (as in the appraisal's check list).
    pub fn check_name(&self) -> &'static str {
        match self {
            PolicyViolation::TcbStatusNotAllowed { .. } => "tcb_status",
            PolicyViolation::AdvisoryRejected { .. } => "advisories",
            PolicyViolation::TcbEvalDataNumberTooLow { .. } => "tcb_eval_data_number",
            PolicyViolation::PlatformFlagNotAllowed { .. } => "platform_flags",
            PolicyViolation::FmspcNotAllowed { .. } => "fmspc",
            PolicyViolation::CollateralTooOld { .. } => "collateral_age",
            PolicyViolation::DebugTd { .. } => "debug",
            PolicyViolation::AttributesMismatch { .. } => "td_attributes",
            PolicyViolation::XfamMismatch { .. } => "xfam",
            PolicyViolation::MrSeamNotAllowed { .. } => "mr_seam",
            PolicyViolation::TeeTcbSvnTooLow { .. } => "tee_tcb_svn",
            PolicyViolation::NoProfileMatched { .. } => "measurements",
        }
    }
}

fn join(statuses: &[TcbStatus]) -> String {
    statuses
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// One policy check: its name and either a pass detail or the violation.
pub type PolicyCheck = (&'static str, Result<String, PolicyViolation>);

/// Runs every policy check on a verified quote, in architecture.md §4.2 order.
pub fn evaluate(
    policy: &Policy,
    quote: &ParsedQuote,
    dcap: &DcapVerified,
    now: u64,
) -> Vec<PolicyCheck> {
    let tcb = &policy.tcb;
    let mut checks: Vec<PolicyCheck> = Vec::with_capacity(12);

    checks.push((
        "tcb_status",
        if tcb.allowed_statuses.contains(&dcap.tcb_status) {
            Ok(format!(
                "{} (allowed: {})",
                dcap.tcb_status,
                join(&tcb.allowed_statuses)
            ))
        } else {
            Err(PolicyViolation::TcbStatusNotAllowed {
                status: dcap.tcb_status,
                allowed: tcb.allowed_statuses.clone(),
            })
        },
    ));

    let rejected: Vec<String> = dcap
        .advisory_ids
        .iter()
        .filter(|id| {
            tcb.rejected_advisories
                .iter()
                .any(|r| r.eq_ignore_ascii_case(id))
        })
        .cloned()
        .collect();
    checks.push((
        "advisories",
        if rejected.is_empty() {
            Ok(if dcap.advisory_ids.is_empty() {
                "no advisories".to_owned()
            } else {
                format!(
                    "{} (none rejected by the policy)",
                    dcap.advisory_ids.join(", ")
                )
            })
        } else {
            Err(PolicyViolation::AdvisoryRejected { ids: rejected })
        },
    ));

    checks.push((
        "tcb_eval_data_number",
        match tcb.min_tcb_eval_data_number {
            Some(min) if dcap.tcb_eval_data_number < min => {
                Err(PolicyViolation::TcbEvalDataNumberTooLow {
                    min,
                    actual: dcap.tcb_eval_data_number,
                })
            }
            Some(min) => Ok(format!("{} (min {min})", dcap.tcb_eval_data_number)),
            None => Ok(format!("{} (no minimum)", dcap.tcb_eval_data_number)),
        },
    ));

    let flags = [
        (PlatformFlag::DynamicPlatform, tcb.allow_dynamic_platform),
        (PlatformFlag::CachedKeys, tcb.allow_cached_keys),
        (PlatformFlag::Smt, tcb.allow_smt),
    ];
    let refused = flags
        .iter()
        .find(|(flag, allowed)| !allowed && dcap.platform.get(*flag) == Some(true));
    checks.push((
        "platform_flags",
        match refused {
            Some((flag, _)) => Err(PolicyViolation::PlatformFlagNotAllowed { flag: *flag }),
            None => Ok(flags
                .iter()
                .map(|(flag, _)| format!("{flag}={}", show_flag(dcap.platform.get(*flag))))
                .collect::<Vec<_>>()
                .join(" ")),
        },
    ));

    let fmspc = hex::encode_upper(dcap.fmspc);
    checks.push((
        "fmspc",
        if tcb.allowed_fmspcs.is_empty() {
            Ok(format!("{fmspc} (any allowed)"))
        } else if tcb.allowed_fmspcs.iter().any(|f| f.0 == dcap.fmspc) {
            Ok(format!("{fmspc} (in allow list)"))
        } else {
            Err(PolicyViolation::FmspcNotAllowed {
                actual: fmspc,
                allowed: tcb
                    .allowed_fmspcs
                    .iter()
                    .map(|f| hex::encode_upper(f.0))
                    .collect(),
            })
        },
    ));

    let age_secs = now.saturating_sub(dcap.collateral_issued_at);
    checks.push((
        "collateral_age",
        match tcb.max_collateral_age_secs {
            max_secs if age_secs > max_secs => {
                Err(PolicyViolation::CollateralTooOld { age_secs, max_secs })
            }
            max_secs => Ok(format!("{age_secs} s (max {max_secs} s)")),
        },
    ));

    let m = &quote.measurements;
    let td = &policy.td;
    // Every TUD bit, not only DEBUG. The DCAP step runs with dcap-qvl's debug check off (so
    // that the policy reports it), which also turns off its check of bits 4-6 (profiling);
    // dcap-qvl refuses the reserved bits 1-3 and 7 itself. Checking the whole byte here
    // covers all of them whatever dcap-qvl does.
    let tud = m.tud();
    checks.push((
        "debug",
        match (tud != 0, td.allow_debug) {
            (true, false) => Err(PolicyViolation::DebugTd {
                attributes: hex::encode(m.td_attributes),
                tud,
            }),
            (true, true) => Ok(format!(
                "debug TD (TUD bits {tud:#010b}), allowed by the policy (allow_debug = true)"
            )),
            (false, _) => Ok("not a debug TD (no TUD bit set)".to_owned()),
        },
    ));

    checks.push((
        "td_attributes",
        masked(
            "attributes",
            &m.td_attributes,
            td.attributes.as_ref(),
            td.attributes_mask.as_ref(),
        )
        .map_err(
            |(expected, mask, actual)| PolicyViolation::AttributesMismatch {
                expected,
                mask,
                actual,
            },
        ),
    ));
    checks.push((
        "xfam",
        masked("xfam", &m.xfam, td.xfam.as_ref(), td.xfam_mask.as_ref()).map_err(
            |(expected, mask, actual)| PolicyViolation::XfamMismatch {
                expected,
                mask,
                actual,
            },
        ),
    ));

    checks.push((
        "mr_seam",
        if td.mr_seam.is_empty() {
            Ok("any TDX module (no allow list)".to_owned())
        } else if td.mr_seam.iter().any(|s| s.0 == m.mr_seam) {
            Ok(format!("{} (in allow list)", hex::encode(m.mr_seam)))
        } else {
            Err(PolicyViolation::MrSeamNotAllowed {
                actual: hex::encode(m.mr_seam),
            })
        },
    ));

    checks.push((
        "tee_tcb_svn",
        match &td.min_tee_tcb_svn {
            None => Ok(format!("{} (no minimum)", hex::encode(m.tee_tcb_svn))),
            Some(min) => match min
                .0
                .iter()
                .zip(m.tee_tcb_svn.iter())
                .position(|(lo, v)| v < lo)
            {
                Some(index) => Err(PolicyViolation::TeeTcbSvnTooLow {
                    min: min.to_string(),
                    actual: hex::encode(m.tee_tcb_svn),
                    index,
                }),
                None => Ok(format!("{} (min {min})", hex::encode(m.tee_tcb_svn))),
            },
        },
    ));

    checks.push(("measurements", match_profiles(policy, quote)));
    checks
}

fn show_flag(v: Option<bool>) -> &'static str {
    match v {
        Some(true) => "true",
        Some(false) => "false",
        None => "undefined",
    }
}

type MaskMismatch = (String, String, String);

fn masked(
    what: &str,
    actual: &[u8; 8],
    expected: Option<&HexBytes<8>>,
    mask: Option<&HexBytes<8>>,
) -> Result<String, MaskMismatch> {
    let Some(expected) = expected else {
        return Ok(format!("{what} {} (not pinned)", hex::encode(actual)));
    };
    let mask = mask.map(|m| m.0).unwrap_or([0xff; 8]);
    let ok = (0..8).all(|i| actual[i] & mask[i] == expected.0[i] & mask[i]);
    if ok {
        Ok(format!(
            "{what} {} matches {expected} under mask {}",
            hex::encode(actual),
            hex::encode(mask)
        ))
    } else {
        Err((expected.to_string(), hex::encode(mask), hex::encode(actual)))
    }
}

/// The first profile of `policy` that `quote`'s measurements match.
pub fn matching_profile<'p>(policy: &'p Policy, quote: &ParsedQuote) -> Option<&'p super::Profile> {
    policy
        .td
        .profiles
        .iter()
        .find(|profile| profile_mismatch(profile, quote).is_none())
}

/// The first pinned field of `profile` that differs from the quote, described.
fn profile_mismatch(profile: &super::Profile, quote: &ParsedQuote) -> Option<String> {
    let m = &quote.measurements;
    let actual: [&[u8; 48]; 8] = [
        &m.mr_td,
        &m.rtmr[0],
        &m.rtmr[1],
        &m.rtmr[2],
        &m.rtmr[3],
        &m.mr_config_id,
        &m.mr_owner,
        &m.mr_owner_config,
    ];
    profile.fields().iter().zip(actual.iter()).find_map(
        |((name, expected), value)| match expected {
            Some(e) if e.0 != **value => Some(format!(
                "profile {:?}: {name} expected {e}, actual {}",
                profile.label,
                hex::encode(value)
            )),
            _ => None,
        },
    )
}

fn match_profiles(policy: &Policy, quote: &ParsedQuote) -> Result<String, PolicyViolation> {
    if let Some(profile) = matching_profile(policy, quote) {
        let pinned: Vec<&str> = profile
            .fields()
            .iter()
            .filter(|(_, v)| v.is_some())
            .map(|(n, _)| *n)
            .collect();
        return Ok(format!(
            "profile {:?} matches ({})",
            profile.label,
            pinned.join(", ")
        ));
    }
    Err(PolicyViolation::NoProfileMatched {
        mismatches: policy
            .td
            .profiles
            .iter()
            .filter_map(|profile| profile_mismatch(profile, quote))
            .collect(),
    })
}
