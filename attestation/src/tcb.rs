//! TCB vocabulary of our API: a typed [`TcbStatus`] (not dcap-qvl's string) and the PCK
//! platform flags.
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// TCB status of a platform after DCAP appraisal (Intel's names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TcbStatus {
    /// The platform is patched to the latest TCB level.
    UpToDate,
    /// Patched, but software hardening (mitigations in the TD) is needed.
    SWHardeningNeeded,
    /// Patched, but platform configuration is needed.
    ConfigurationNeeded,
    /// Both of the above.
    ConfigurationAndSWHardeningNeeded,
    /// The platform misses security patches.
    OutOfDate,
    /// Out of date and needs configuration.
    OutOfDateConfigurationNeeded,
    /// A TD-preserving module update happened; relaunch the TD to get its benefit.
    TDRelaunchAdvised,
    /// Relaunch advised and configuration needed.
    TDRelaunchAdvisedConfigurationNeeded,
    /// The platform's keys are revoked. Never acceptable (dcap-qvl rejects it outright).
    Revoked,
}

impl TcbStatus {
    /// Every status, in a fixed order.
    pub const ALL: [TcbStatus; 9] = [
        TcbStatus::UpToDate,
        TcbStatus::SWHardeningNeeded,
        TcbStatus::ConfigurationNeeded,
        TcbStatus::ConfigurationAndSWHardeningNeeded,
        TcbStatus::OutOfDate,
        TcbStatus::OutOfDateConfigurationNeeded,
        TcbStatus::TDRelaunchAdvised,
        TcbStatus::TDRelaunchAdvisedConfigurationNeeded,
        TcbStatus::Revoked,
    ];

    /// Intel's name of the status.
    pub fn as_str(self) -> &'static str {
        match self {
            TcbStatus::UpToDate => "UpToDate",
            TcbStatus::SWHardeningNeeded => "SWHardeningNeeded",
            TcbStatus::ConfigurationNeeded => "ConfigurationNeeded",
            TcbStatus::ConfigurationAndSWHardeningNeeded => "ConfigurationAndSWHardeningNeeded",
            TcbStatus::OutOfDate => "OutOfDate",
            TcbStatus::OutOfDateConfigurationNeeded => "OutOfDateConfigurationNeeded",
            TcbStatus::TDRelaunchAdvised => "TDRelaunchAdvised",
            TcbStatus::TDRelaunchAdvisedConfigurationNeeded => {
                "TDRelaunchAdvisedConfigurationNeeded"
            }
            TcbStatus::Revoked => "Revoked",
        }
    }

    pub(crate) fn from_dcap(status: dcap_qvl::TcbStatus) -> TcbStatus {
        use dcap_qvl::TcbStatus as D;
        match status {
            D::UpToDate => TcbStatus::UpToDate,
            D::SWHardeningNeeded => TcbStatus::SWHardeningNeeded,
            D::ConfigurationNeeded => TcbStatus::ConfigurationNeeded,
            D::ConfigurationAndSWHardeningNeeded => TcbStatus::ConfigurationAndSWHardeningNeeded,
            D::OutOfDate => TcbStatus::OutOfDate,
            D::OutOfDateConfigurationNeeded => TcbStatus::OutOfDateConfigurationNeeded,
            D::TDRelaunchAdvised => TcbStatus::TDRelaunchAdvised,
            D::TDRelaunchAdvisedConfigurationNeeded => {
                TcbStatus::TDRelaunchAdvisedConfigurationNeeded
            }
            D::Revoked => TcbStatus::Revoked,
        }
    }
}

impl fmt::Display for TcbStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no TCB status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown TCB status {0:?} (expected one of UpToDate, SWHardeningNeeded, ConfigurationNeeded, ConfigurationAndSWHardeningNeeded, OutOfDate, OutOfDateConfigurationNeeded, TDRelaunchAdvised, TDRelaunchAdvisedConfigurationNeeded)")]
pub struct UnknownTcbStatus(pub String);

impl FromStr for TcbStatus {
    type Err = UnknownTcbStatus;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TcbStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| UnknownTcbStatus(s.to_owned()))
    }
}

/// A PCK platform flag the policy can allow or refuse.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PlatformFlag {
    /// The platform can add or replace packages (multi-package platform in dynamic mode).
    DynamicPlatform,
    /// Platform root keys are cached by Intel's registration service.
    CachedKeys,
    /// Hyper-threading (SMT) is enabled.
    Smt,
}

impl PlatformFlag {
    /// Name used in reports and in the policy (`allow_<name>`).
    pub fn as_str(self) -> &'static str {
        match self {
            PlatformFlag::DynamicPlatform => "dynamic_platform",
            PlatformFlag::CachedKeys => "cached_keys",
            PlatformFlag::Smt => "smt",
        }
    }
}

impl fmt::Display for PlatformFlag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The platform flags carried by the PCK certificate. `None`: the certificate does not
/// say (PCK certificates issued by the Processor CA carry no flags).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PlatformFlags {
    /// Dynamic platform.
    pub dynamic_platform: Option<bool>,
    /// Cached keys.
    pub cached_keys: Option<bool>,
    /// SMT enabled.
    pub smt_enabled: Option<bool>,
}

impl PlatformFlags {
    pub(crate) fn from_dcap(pck: &dcap_qvl::PckIdentity) -> PlatformFlags {
        fn flag(f: dcap_qvl::PckCertFlag) -> Option<bool> {
            match f {
                dcap_qvl::PckCertFlag::True => Some(true),
                dcap_qvl::PckCertFlag::False => Some(false),
                dcap_qvl::PckCertFlag::Undefined => None,
            }
        }
        PlatformFlags {
            dynamic_platform: flag(pck.dynamic_platform),
            cached_keys: flag(pck.cached_keys),
            smt_enabled: flag(pck.smt_enabled),
        }
    }

    /// The value of one flag.
    pub fn get(&self, flag: PlatformFlag) -> Option<bool> {
        match flag {
            PlatformFlag::DynamicPlatform => self.dynamic_platform,
            PlatformFlag::CachedKeys => self.cached_keys,
            PlatformFlag::Smt => self.smt_enabled,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_names_round_trip() {
        for status in TcbStatus::ALL {
            assert_eq!(status.as_str().parse::<TcbStatus>(), Ok(status));
        }
        assert!("uptodate".parse::<TcbStatus>().is_err());
        assert!("".parse::<TcbStatus>().is_err());
    }
}
