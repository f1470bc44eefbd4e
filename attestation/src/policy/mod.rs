//! Measurement policies (`policies/*.toml`, architecture.md §4.3): schema, validation, canonical
//! digest, and evaluation of a DCAP-verified quote against the policy.
//!
//! A policy is data. Unknown keys are errors, hex fields have fixed lengths, and the digest
//! is computed over a normalized form (defaults filled in, sets sorted, hex lowercase), so
//! formatting and key order never change it. The digest is the validator signature that
//! enters the group id: any change of what is accepted changes it.
mod eval;
mod hex;

pub use eval::{evaluate, matching_profile, PolicyCheck, PolicyViolation};
pub use hex::HexBytes;

use serde::{Deserialize, Serialize};

use crate::tcb::TcbStatus;

/// Largest policy file accepted, in bytes.
pub const POLICY_LEN_MAX: usize = 256 * 1024;
/// Most `[[td.profiles]]` entries.
pub const PROFILES_MAX: usize = 256;
/// Most entries in any list of the policy (advisories, FMSPCs, MR_SEAMs).
pub const LIST_LEN_MAX: usize = 1024;
/// Longest name or label.
pub const LABEL_LEN_MAX: usize = 256;
/// Longest `binding.max_quote_age_secs` (7 days).
pub const QUOTE_AGE_SECS_MAX: u64 = 7 * 86_400;
/// `tcb.max_collateral_age_secs` of a policy that omits it (30 days).
pub const DEFAULT_COLLATERAL_AGE_SECS: u64 = 30 * 86_400;
/// Domain tag of the canonical digest.
pub const DIGEST_DOMAIN: &[u8] = b"tessera/policy/v1\0";

/// Which root certificate DCAP chains must end at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrustRoot {
    /// Intel SGX Root CA (production). Built in.
    Intel,
    /// The mock provider's test root. Only for tests and the demo.
    Mock,
}

impl std::fmt::Display for TrustRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TrustRoot::Intel => "intel",
            TrustRoot::Mock => "mock",
        })
    }
}

/// A measurement policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Human label.
    pub name: String,
    /// Bumped on every change.
    pub version: u32,
    /// Root of trust for the DCAP chains.
    pub trust_root: TrustRoot,
    /// Platform (TCB) requirements.
    #[serde(default)]
    pub tcb: TcbPolicy,
    /// Trust domain requirements.
    pub td: TdPolicy,
    /// Binding requirements.
    #[serde(default)]
    pub binding: BindingPolicy,
}

/// Requirements on the platform's TCB, from DCAP.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcbPolicy {
    /// Acceptable TCB statuses. Default: `["UpToDate"]`. `Revoked` is never acceptable.
    #[serde(default = "default_statuses")]
    pub allowed_statuses: Vec<TcbStatus>,
    /// Advisory ids (`INTEL-SA-…`) that reject a quote whose TCB level lists them.
    #[serde(default)]
    pub rejected_advisories: Vec<String>,
    /// Minimum TCB evaluation data number of the collateral.
    #[serde(default)]
    pub min_tcb_eval_data_number: Option<u32>,
    /// Accept platforms that can add packages (dynamic platform flag). Default false.
    #[serde(default)]
    pub allow_dynamic_platform: bool,
    /// Accept platforms whose keys are cached by Intel. Default false.
    #[serde(default)]
    pub allow_cached_keys: bool,
    /// Accept platforms with SMT (hyper-threading) enabled. Default false.
    #[serde(default)]
    pub allow_smt: bool,
    /// Acceptable FMSPCs (platform model); empty accepts any.
    #[serde(default)]
    pub allowed_fmspcs: Vec<HexBytes<6>>,
    /// Maximum age of the collateral at verification time, in seconds: of the oldest of the
    /// TCB Info (issueDate), the QE Identity (issueDate) and the PCK CRL (thisUpdate); not
    /// the root CA CRL, which Intel reissues about yearly. Default
    /// [`DEFAULT_COLLATERAL_AGE_SECS`] (30 days, Intel's reissue period): a DCAP item is
    /// otherwise good until its nextUpdate, and a peer could keep showing one from before
    /// a revocation or a TCB recovery. At least 1; there is no "off".
    #[serde(default = "default_collateral_age")]
    pub max_collateral_age_secs: u64,
}

impl Default for TcbPolicy {
    fn default() -> Self {
        TcbPolicy {
            allowed_statuses: default_statuses(),
            rejected_advisories: Vec::new(),
            min_tcb_eval_data_number: None,
            allow_dynamic_platform: false,
            allow_cached_keys: false,
            allow_smt: false,
            allowed_fmspcs: Vec::new(),
            max_collateral_age_secs: default_collateral_age(),
        }
    }
}

fn default_collateral_age() -> u64 {
    DEFAULT_COLLATERAL_AGE_SECS
}

fn default_statuses() -> Vec<TcbStatus> {
    vec![TcbStatus::UpToDate]
}

/// Requirements on the trust domain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TdPolicy {
    /// Accept a TD with the DEBUG attribute (its memory is readable by the host). Default false.
    #[serde(default)]
    pub allow_debug: bool,
    /// Expected TD attributes under `attributes_mask`.
    #[serde(default)]
    pub attributes: Option<HexBytes<8>>,
    /// Mask for `attributes` (default all ones when `attributes` is given).
    #[serde(default)]
    pub attributes_mask: Option<HexBytes<8>>,
    /// Expected XFAM under `xfam_mask`.
    #[serde(default)]
    pub xfam: Option<HexBytes<8>>,
    /// Mask for `xfam` (default all ones when `xfam` is given).
    #[serde(default)]
    pub xfam_mask: Option<HexBytes<8>>,
    /// Allowed TDX module measurements (MR_SEAM); empty accepts any.
    #[serde(default)]
    pub mr_seam: Vec<HexBytes<48>>,
    /// Minimum TEE_TCB_SVN, compared byte by byte.
    #[serde(default)]
    pub min_tee_tcb_svn: Option<HexBytes<16>>,
    /// Measurement profiles; the TD must match at least one.
    #[serde(default)]
    pub profiles: Vec<Profile>,
}

/// One acceptable set of measurements. An absent field accepts any value, except `mr_td`,
/// which every profile must pin ([`Policy::validate`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Human label (image release, host shape).
    pub label: String,
    /// MRTD (firmware).
    #[serde(default)]
    pub mr_td: Option<HexBytes<48>>,
    /// RTMR0 (firmware configuration; host-shape dependent).
    #[serde(default)]
    pub rtmr0: Option<HexBytes<48>>,
    /// RTMR1 (kernel).
    #[serde(default)]
    pub rtmr1: Option<HexBytes<48>>,
    /// RTMR2 (kernel command line and initrd).
    #[serde(default)]
    pub rtmr2: Option<HexBytes<48>>,
    /// RTMR3 (runtime, application).
    #[serde(default)]
    pub rtmr3: Option<HexBytes<48>>,
    /// MRCONFIGID.
    #[serde(default)]
    pub mr_config_id: Option<HexBytes<48>>,
    /// MROWNER.
    #[serde(default)]
    pub mr_owner: Option<HexBytes<48>>,
    /// MROWNERCONFIG.
    #[serde(default)]
    pub mr_owner_config: Option<HexBytes<48>>,
}

impl Profile {
    /// The pinned fields, by name.
    pub fn fields(&self) -> [(&'static str, Option<&HexBytes<48>>); 8] {
        [
            ("mr_td", self.mr_td.as_ref()),
            ("rtmr0", self.rtmr0.as_ref()),
            ("rtmr1", self.rtmr1.as_ref()),
            ("rtmr2", self.rtmr2.as_ref()),
            ("rtmr3", self.rtmr3.as_ref()),
            ("mr_config_id", self.mr_config_id.as_ref()),
            ("mr_owner", self.mr_owner.as_ref()),
            ("mr_owner_config", self.mr_owner_config.as_ref()),
        ]
    }
}

/// Requirements on the binding of the quote to a peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindingPolicy {
    /// How old the claims' `issued_at` may be. Default 600 s.
    #[serde(default = "default_quote_age")]
    pub max_quote_age_secs: u64,
}

impl Default for BindingPolicy {
    fn default() -> Self {
        BindingPolicy {
            max_quote_age_secs: default_quote_age(),
        }
    }
}

fn default_quote_age() -> u64 {
    600
}

/// A policy file is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// Not valid TOML, an unknown key, a wrong type or a bad hex length.
    #[error("policy does not parse: {0}")]
    Syntax(String),
    /// A value breaks a rule.
    #[error("policy field {field}: {reason}")]
    Invalid {
        /// Which field.
        field: String,
        /// Which rule.
        reason: String,
    },
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> PolicyError {
    PolicyError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

impl Policy {
    /// Parses, validates and normalizes a policy file.
    pub fn from_toml_str(text: &str) -> Result<Policy, PolicyError> {
        if text.len() > POLICY_LEN_MAX {
            return Err(invalid(
                "(file)",
                format!("{} bytes, at most {POLICY_LEN_MAX}", text.len()),
            ));
        }
        let policy: Policy =
            toml::from_str(text).map_err(|e| PolicyError::Syntax(e.to_string()))?;
        policy.validate()?;
        Ok(policy.normalized())
    }

    /// Checks the rules that the schema alone cannot express.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.name.trim().is_empty() || self.name.len() > LABEL_LEN_MAX {
            return Err(invalid(
                "name",
                format!("must be 1..={LABEL_LEN_MAX} bytes"),
            ));
        }
        let tcb = &self.tcb;
        if tcb.allowed_statuses.is_empty() {
            return Err(invalid(
                "tcb.allowed_statuses",
                "must list at least one status",
            ));
        }
        if tcb.allowed_statuses.contains(&TcbStatus::Revoked) {
            return Err(invalid(
                "tcb.allowed_statuses",
                "Revoked is never acceptable",
            ));
        }
        for (field, len) in [
            ("tcb.rejected_advisories", tcb.rejected_advisories.len()),
            ("tcb.allowed_fmspcs", tcb.allowed_fmspcs.len()),
            ("td.mr_seam", self.td.mr_seam.len()),
        ] {
            if len > LIST_LEN_MAX {
                return Err(invalid(
                    field,
                    format!("{len} entries, at most {LIST_LEN_MAX}"),
                ));
            }
        }
        if tcb.rejected_advisories.iter().any(|a| a.trim().is_empty()) {
            return Err(invalid("tcb.rejected_advisories", "empty advisory id"));
        }
        let td = &self.td;
        if td.attributes_mask.is_some() && td.attributes.is_none() {
            return Err(invalid("td.attributes_mask", "given without td.attributes"));
        }
        if td.xfam_mask.is_some() && td.xfam.is_none() {
            return Err(invalid("td.xfam_mask", "given without td.xfam"));
        }
        if td.profiles.is_empty() {
            return Err(invalid(
                "td.profiles",
                "at least one [[td.profiles]] entry is required",
            ));
        }
        if td.profiles.len() > PROFILES_MAX {
            return Err(invalid(
                "td.profiles",
                format!("{} entries, at most {PROFILES_MAX}", td.profiles.len()),
            ));
        }
        for (i, profile) in td.profiles.iter().enumerate() {
            if profile.label.len() > LABEL_LEN_MAX {
                return Err(invalid(
                    format!("td.profiles[{i}].label"),
                    format!("at most {LABEL_LEN_MAX} bytes"),
                ));
            }
            // MRTD is the one register the host can neither choose nor fake: the TDX module
            // measures the initial image into it. MRCONFIGID, MROWNER and MROWNERCONFIG are
            // whatever the host passed at TD creation, and the RTMRs are extended by the
            // very firmware MRTD measures: a profile without mr_td accepts any image the
            // host likes to boot with those values.
            if profile.mr_td.is_none() {
                let pinned: Vec<&str> = profile
                    .fields()
                    .iter()
                    .filter(|(_, v)| v.is_some())
                    .map(|(name, _)| *name)
                    .collect();
                let reason = if pinned.is_empty() {
                    "pins no measurement: give at least mr_td".to_owned()
                } else {
                    format!(
                        "pins {} but not mr_td: without it any image matches, since the \
                         host chooses mr_config_id, mr_owner and mr_owner_config and a \
                         TD's own firmware extends the RTMRs; give mr_td",
                        pinned.join(", ")
                    )
                };
                return Err(invalid(format!("td.profiles[{i}].mr_td"), reason));
            }
        }
        if tcb.max_collateral_age_secs == 0 {
            return Err(invalid(
                "tcb.max_collateral_age_secs",
                "must be at least 1 (0 would refuse all collateral)",
            ));
        }
        let age = self.binding.max_quote_age_secs;
        if age == 0 || age > QUOTE_AGE_SECS_MAX {
            return Err(invalid(
                "binding.max_quote_age_secs",
                format!("must be 1..={QUOTE_AGE_SECS_MAX}"),
            ));
        }
        Ok(())
    }

    /// The normalized form: defaults filled in, sets sorted and deduplicated.
    pub fn normalized(&self) -> Policy {
        let mut p = self.clone();
        p.tcb.allowed_statuses.sort();
        p.tcb.allowed_statuses.dedup();
        for a in &mut p.tcb.rejected_advisories {
            *a = a.trim().to_ascii_uppercase();
        }
        p.tcb.rejected_advisories.sort();
        p.tcb.rejected_advisories.dedup();
        p.tcb.allowed_fmspcs.sort();
        p.tcb.allowed_fmspcs.dedup();
        p.td.mr_seam.sort();
        p.td.mr_seam.dedup();
        if p.td.attributes.is_some() && p.td.attributes_mask.is_none() {
            p.td.attributes_mask = Some(HexBytes([0xff; 8]));
        }
        if p.td.xfam.is_some() && p.td.xfam_mask.is_none() {
            p.td.xfam_mask = Some(HexBytes([0xff; 8]));
        }
        p.td.profiles
            .sort_by_cached_key(|profile| serde_json::to_vec(profile).unwrap_or_default());
        p.td.profiles.dedup();
        p
    }

    /// SHA-256 over the domain tag and the JSON of the normalized form.
    pub fn digest(&self) -> [u8; 32] {
        let normalized = self.normalized();
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(DIGEST_DOMAIN);
        ctx.update(&serde_json::to_vec(&normalized).unwrap_or_default());
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        out
    }

    /// The digest as lowercase hex.
    pub fn digest_hex(&self) -> String {
        ::hex::encode(self.digest())
    }
}

#[cfg(test)]
mod tests;
