//! The mock quote provider: byte-valid v4 TDX quotes and matching collateral from a test
//! PKI built in code (see [`pki`]), so that the *same* dcap-qvl verification accepts them
//! when the policy trusts the mock root (`trust_root = "mock"`) — and rejects them under
//! Intel's root.
//!
//! Every field is a knob ([`MockConfig`]), including the bad cases: debug TD, other
//! measurements, any TCB status, revoked PCK, stale collateral, wrong report data and a
//! corrupted signature; and the issue date, evaluation data number or CRL number of each
//! collateral item, for the freshness watermark and age limit. Deterministic: one seed and config give the same bytes.
//!
//! Facts of the DCAP format honoured here (architecture.md §4.1): quote = header (48 B) ‖ TD report
//! ‖ signature data; the attestation key signs header ‖ body; certification data type 6
//! holds the QE report, its PCK signature, QE auth data and type 5 data (PEM chain: PCK
//! leaf, PCK CA, root); QE report data = SHA-256(attestation key ‖ QE auth data) ‖ 0^32.
mod pki;

use std::sync::OnceLock;

use dcap_qvl::quote::{
    AuthData, AuthDataV4, CertificationData, Data, EnclaveReport, Header,
    QEReportCertificationData, Quote as DcapQuote, Report, TDReport10,
};
use dcap_qvl::QuoteCollateralV3;
use parity_scale_codec::Encode;

use super::{ProviderError, ProviderKind, Quote, QuoteProvider};
use crate::quote::{ATTESTATION_KEY_TYPE_ECDSA_P256, TEE_TYPE_TDX};
use crate::tcb::{PlatformFlags, TcbStatus};
use crate::verify::format_unix;
use pki::{MockKey, MockPki, PckPlatform};

/// Seed of the default mock PKI, the one `trust_root = "mock"` trusts.
pub const MOCK_DEFAULT_SEED: [u8; 32] = *b"tessera mock pki seed, not intel";
/// Default start of the mock collateral's validity: 2026-01-01T00:00:00Z.
pub const MOCK_COLLATERAL_ISSUED_AT: u64 = 1_767_225_600;
/// Default validity of mock collateral (30 days, like Intel's).
pub const MOCK_COLLATERAL_VALIDITY_SECS: u64 = 30 * 86_400;
/// Default TD attributes: SEPT_VE_DISABLE set, not debug (as the real up-to-date vector).
pub const MOCK_TD_ATTRIBUTES: [u8; 8] = [0, 0, 0, 0x10, 0, 0, 0, 0];
/// Default XFAM (as the real up-to-date vector).
pub const MOCK_XFAM: [u8; 8] = [0xe7, 0x02, 0x06, 0, 0, 0, 0, 0];
/// Default FMSPC of the mock platform ("TESS").
pub const MOCK_FMSPC: [u8; 6] = [0x54, 0x45, 0x53, 0x53, 0x00, 0x00];
/// QE identity values of the mock quoting enclave.
const QE_MR_SIGNER: [u8; 32] = [0x7e; 32];
const QE_ISV_PROD_ID: u16 = 2;
const QE_ISV_SVN: u16 = 4;
const QE_ATTRIBUTES: [u8; 16] = [0x11, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

/// The root certificate (DER) of the default mock PKI, built at first use.
pub fn mock_root_der() -> &'static [u8] {
    static ROOT: OnceLock<Vec<u8>> = OnceLock::new();
    // Building the default root cannot fail with our fixed parameters; an empty root
    // would make every verification under it fail, never pass.
    ROOT.get_or_init(|| pki::root_der(&MOCK_DEFAULT_SEED).unwrap_or_default())
}

/// The default mock measurements: SHA-384 of a label per register, so they look like
/// real digests and are easy to recompute. `policies/mock.toml` pins them.
pub fn default_measurement(register: &str) -> [u8; 48] {
    let digest = ring::digest::digest(
        &ring::digest::SHA384,
        format!("tessera/mock/{register}").as_bytes(),
    );
    let mut out = [0u8; 48];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Everything the mock puts into a quote and its collateral.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MockConfig {
    /// Seed of the PKI. Only [`MOCK_DEFAULT_SEED`] chains to the root `trust_root = "mock"` trusts.
    pub seed: [u8; 32],
    /// MRTD.
    pub mr_td: [u8; 48],
    /// RTMR0..3.
    pub rtmr: [[u8; 48]; 4],
    /// MRCONFIGID.
    pub mr_config_id: [u8; 48],
    /// MROWNER.
    pub mr_owner: [u8; 48],
    /// MROWNERCONFIG.
    pub mr_owner_config: [u8; 48],
    /// MR_SEAM.
    pub mr_seam: [u8; 48],
    /// TD attributes (bit 0 = DEBUG).
    pub td_attributes: [u8; 8],
    /// XFAM.
    pub xfam: [u8; 8],
    /// TEE_TCB_SVN (byte 0 module SVN, byte 1 module major version).
    pub tee_tcb_svn: [u8; 16],
    /// TCB status the collateral gives this platform's TCB level. TCB Info levels can carry
    /// UpToDate, SWHardeningNeeded, ConfigurationNeeded, ConfigurationAndSWHardeningNeeded,
    /// OutOfDate, OutOfDateConfigurationNeeded and Revoked; the TDRelaunchAdvised statuses
    /// arise only from a TD 1.5 quote's second TCB, which the mock (v4, TD 1.0) does not
    /// make, so dcap-qvl rejects them as unknown in a TCB level.
    pub tcb_status: TcbStatus,
    /// Advisories listed on that level.
    pub advisory_ids: Vec<String>,
    /// FMSPC.
    pub fmspc: [u8; 6],
    /// PCK platform flags.
    pub platform: PlatformFlags,
    /// TCB evaluation data number of the collateral.
    pub tcb_eval_data_number: u32,
    /// Start of the collateral validity (Unix seconds).
    pub collateral_issued_at: u64,
    /// Length of the collateral validity (of every dated item, from its own issue date).
    pub collateral_validity_secs: u64,
    /// issueDate of the TCB Info, when not `collateral_issued_at`.
    pub tcb_info_issued_at: Option<u64>,
    /// issueDate of the QE Identity, when not `collateral_issued_at`.
    pub qe_identity_issued_at: Option<u64>,
    /// TCB evaluation data number of the QE Identity, when not `tcb_eval_data_number`.
    pub qe_identity_eval_data_number: Option<u32>,
    /// thisUpdate of the PCK CRL, when not `collateral_issued_at`.
    pub pck_crl_this_update: Option<u64>,
    /// thisUpdate of the root CA CRL, when not `collateral_issued_at`.
    pub root_ca_crl_this_update: Option<u64>,
    /// CRL number of the PCK CRL.
    pub pck_crl_number: u64,
    /// CRL number of the root CA CRL.
    pub root_ca_crl_number: u64,
    /// Put the PCK leaf on the PCK CRL.
    pub revoke_pck: bool,
    /// Serial number of the PCK leaf (another serial is another platform's PCK).
    pub pck_serial: u64,
    /// Serials of other platforms' PCK leaves that the PCK CRL revokes.
    pub revoked_pck_serials: Vec<u64>,
    /// Flip a bit of the quote signature.
    pub corrupt_signature: bool,
    /// Put other report data into the quote than asked for (signed correctly).
    pub wrong_report_data: bool,
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            seed: MOCK_DEFAULT_SEED,
            mr_td: default_measurement("mr_td"),
            rtmr: [
                default_measurement("rtmr0"),
                default_measurement("rtmr1"),
                default_measurement("rtmr2"),
                [0; 48],
            ],
            mr_config_id: [0; 48],
            mr_owner: [0; 48],
            mr_owner_config: [0; 48],
            mr_seam: default_measurement("mr_seam"),
            td_attributes: MOCK_TD_ATTRIBUTES,
            xfam: MOCK_XFAM,
            tee_tcb_svn: [6, 1, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            tcb_status: TcbStatus::UpToDate,
            advisory_ids: Vec::new(),
            fmspc: MOCK_FMSPC,
            platform: PlatformFlags {
                dynamic_platform: Some(false),
                cached_keys: Some(false),
                smt_enabled: Some(false),
            },
            tcb_eval_data_number: 17,
            collateral_issued_at: MOCK_COLLATERAL_ISSUED_AT,
            collateral_validity_secs: MOCK_COLLATERAL_VALIDITY_SECS,
            tcb_info_issued_at: None,
            qe_identity_issued_at: None,
            qe_identity_eval_data_number: None,
            pck_crl_this_update: None,
            root_ca_crl_this_update: None,
            pck_crl_number: 1,
            root_ca_crl_number: 1,
            revoke_pck: false,
            pck_serial: 4,
            revoked_pck_serials: Vec::new(),
            corrupt_signature: false,
            wrong_report_data: false,
        }
    }
}

impl MockConfig {
    /// A time inside the collateral window (one day after issue).
    pub fn valid_now(&self) -> u64 {
        self.collateral_issued_at.saturating_add(86_400)
    }

    /// Knob: a debug TD.
    pub fn debug(mut self) -> Self {
        self.td_attributes[0] |= 0x01;
        self
    }

    /// Knob: another MRTD.
    pub fn with_mr_td(mut self, mr_td: [u8; 48]) -> Self {
        self.mr_td = mr_td;
        self
    }

    /// Knob: another RTMR `index` (0..=3).
    pub fn with_rtmr(mut self, index: usize, value: [u8; 48]) -> Self {
        if let Some(r) = self.rtmr.get_mut(index) {
            *r = value;
        }
        self
    }

    /// Knob: the TCB status (and advisories) the collateral gives this platform.
    pub fn with_tcb_status(mut self, status: TcbStatus, advisory_ids: &[&str]) -> Self {
        self.tcb_status = status;
        self.advisory_ids = advisory_ids.iter().map(|s| (*s).to_owned()).collect();
        self
    }

    /// Knob: the PCK certificate is revoked.
    pub fn revoked_pck(mut self) -> Self {
        self.revoke_pck = true;
        self
    }

    /// Knob: collateral issued 60 days before the default window, so it has expired at
    /// [`MockConfig::valid_now`] of the default config.
    pub fn stale_collateral(mut self) -> Self {
        self.collateral_issued_at = self.collateral_issued_at.saturating_sub(60 * 86_400);
        self
    }

    /// Knob: TCB Info and QE Identity of evaluation data number `number`, issued at
    /// `issued_at` (a TCB recovery raises the number; a reissue only the date).
    pub fn with_eval(mut self, number: u32, issued_at: u64) -> Self {
        self.tcb_eval_data_number = number;
        self.tcb_info_issued_at = Some(issued_at);
        self.qe_identity_issued_at = Some(issued_at);
        self
    }

    /// Knob: the PCK CRL has CRL number `number` and thisUpdate `this_update`.
    pub fn with_pck_crl(mut self, number: u64, this_update: u64) -> Self {
        self.pck_crl_number = number;
        self.pck_crl_this_update = Some(this_update);
        self
    }

    /// issueDate of the TCB Info.
    pub fn tcb_info_issue_date(&self) -> u64 {
        self.tcb_info_issued_at.unwrap_or(self.collateral_issued_at)
    }

    /// issueDate of the QE Identity.
    pub fn qe_identity_issue_date(&self) -> u64 {
        self.qe_identity_issued_at
            .unwrap_or(self.collateral_issued_at)
    }

    /// thisUpdate of the PCK CRL.
    pub fn pck_crl_this_update(&self) -> u64 {
        self.pck_crl_this_update
            .unwrap_or(self.collateral_issued_at)
    }

    /// thisUpdate of the root CA CRL.
    pub fn root_ca_crl_this_update(&self) -> u64 {
        self.root_ca_crl_this_update
            .unwrap_or(self.collateral_issued_at)
    }

    /// Knob: report data in the quote differs from the requested one.
    pub fn wrong_report_data(mut self) -> Self {
        self.wrong_report_data = true;
        self
    }

    /// Knob: the quote signature is corrupted.
    pub fn corrupt_signature(mut self) -> Self {
        self.corrupt_signature = true;
        self
    }

    /// Knob: PCK platform flags.
    pub fn with_platform(mut self, platform: PlatformFlags) -> Self {
        self.platform = platform;
        self
    }
}

/// The mock provider.
pub struct MockProvider {
    config: MockConfig,
    pki: MockPki,
    attestation_key: MockKey,
}

impl std::fmt::Debug for MockProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockProvider")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl MockProvider {
    /// Builds the PKI for `config`.
    pub fn new(config: MockConfig) -> Result<MockProvider, ProviderError> {
        let pki = MockPki::build(&config.seed, &platform(&config))?;
        let attestation_key = MockKey::derive(&config.seed, "attestation-key");
        Ok(MockProvider {
            config,
            pki,
            attestation_key,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &MockConfig {
        &self.config
    }

    /// DER of this PKI's root certificate.
    pub fn root_der(&self) -> &[u8] {
        &self.pki.root_der
    }

    /// Collateral matching the quotes of this provider.
    pub fn collateral(&self) -> Result<crate::verify::Collateral, ProviderError> {
        let c = &self.config;
        // A CRL's window as rcgen takes it: thisUpdate and nextUpdate, signed seconds.
        let window = |this_update: u64| -> Result<(i64, i64), ProviderError> {
            let next_update = this_update.saturating_add(c.collateral_validity_secs);
            let signed = |t: u64| i64::try_from(t).map_err(|e| ProviderError::Mock(e.to_string()));
            Ok((signed(this_update)?, signed(next_update)?))
        };
        let (root_this, root_next) = window(c.root_ca_crl_this_update())?;
        let (pck_this, pck_next) = window(c.pck_crl_this_update())?;
        let tcb_info = tcb_info_json(c);
        let qe_identity = qe_identity_json(c);
        let signer_chain = format!("{}{}", self.pki.tcb_pem, self.pki.root_pem);
        Ok(crate::verify::Collateral::from_dcap(QuoteCollateralV3 {
            pck_crl_issuer_chain: format!("{}{}", self.pki.pck_ca_pem, self.pki.root_pem),
            root_ca_crl: self
                .pki
                .root_crl(root_this, root_next, c.root_ca_crl_number)?,
            pck_crl: self.pki.pck_crl(
                pck_this,
                pck_next,
                c.pck_crl_number,
                c.revoke_pck,
                &c.revoked_pck_serials,
            )?,
            tcb_info_issuer_chain: signer_chain.clone(),
            tcb_info_signature: self.pki.tcb_key.sign_raw(tcb_info.as_bytes()).to_vec(),
            tcb_info,
            qe_identity_issuer_chain: signer_chain,
            qe_identity_signature: self.pki.tcb_key.sign_raw(qe_identity.as_bytes()).to_vec(),
            qe_identity,
            pck_certificate_chain: None,
        }))
    }

    fn build_quote(&self, report_data: &[u8; 64]) -> Vec<u8> {
        let c = &self.config;
        let header = Header {
            version: 4,
            attestation_key_type: ATTESTATION_KEY_TYPE_ECDSA_P256,
            tee_type: TEE_TYPE_TDX,
            qe_svn: QE_ISV_SVN,
            pce_svn: PCE_SVN,
            qe_vendor_id: dcap_qvl::INTEL_QE_VENDOR_ID,
            user_data: [0; 20],
        };
        let mut quoted_report_data = *report_data;
        if c.wrong_report_data {
            quoted_report_data[0] ^= 0xff;
        }
        let report = TDReport10 {
            tee_tcb_svn: c.tee_tcb_svn,
            mr_seam: c.mr_seam,
            mr_signer_seam: [0; 48],
            seam_attributes: [0; 8],
            td_attributes: c.td_attributes,
            xfam: c.xfam,
            mr_td: c.mr_td,
            mr_config_id: c.mr_config_id,
            mr_owner: c.mr_owner,
            mr_owner_config: c.mr_owner_config,
            rt_mr0: c.rtmr[0],
            rt_mr1: c.rtmr[1],
            rt_mr2: c.rtmr[2],
            rt_mr3: c.rtmr[3],
            report_data: quoted_report_data,
        };
        let mut signed = header.encode();
        report.encode_to(&mut signed);
        let mut signature = self.attestation_key.sign_raw(&signed);
        if c.corrupt_signature {
            signature[0] ^= 0x01;
        }

        let attestation_key = self.attestation_key.raw_public();
        let qe_auth_data =
            ring::digest::digest(&ring::digest::SHA256, b"tessera/mock/qe-auth-data");
        let qe_auth_data = qe_auth_data.as_ref().to_vec();
        let mut qe_report_data = [0u8; 64];
        let qe_hash = ring::digest::digest(
            &ring::digest::SHA256,
            &[attestation_key.as_slice(), &qe_auth_data].concat(),
        );
        qe_report_data[..32].copy_from_slice(qe_hash.as_ref());
        let qe_report = EnclaveReport {
            cpu_svn: CPU_SVN,
            misc_select: 0,
            reserved1: [0; 28],
            attributes: QE_ATTRIBUTES,
            mr_enclave: [0x3e; 32],
            reserved2: [0; 32],
            mr_signer: QE_MR_SIGNER,
            reserved3: [0; 96],
            isv_prod_id: QE_ISV_PROD_ID,
            isv_svn: QE_ISV_SVN,
            reserved4: [0; 60],
            report_data: qe_report_data,
        };
        let mut qe_report_bytes = [0u8; 384];
        let encoded = qe_report.encode();
        if encoded.len() == qe_report_bytes.len() {
            qe_report_bytes.copy_from_slice(&encoded);
        }
        let qe_report_signature = self.pki.pck_key.sign_raw(&qe_report_bytes);
        let pem_chain = format!(
            "{}{}{}",
            self.pki.pck_pem, self.pki.pck_ca_pem, self.pki.root_pem
        );

        let quote = DcapQuote {
            header,
            report: Report::TD10(report),
            auth_data: AuthData::V4(AuthDataV4 {
                ecdsa_signature: signature,
                ecdsa_attestation_key: attestation_key,
                certification_data: CertificationData {
                    cert_type: 6,
                    body: Data::new(Vec::new()),
                },
                qe_report_data: QEReportCertificationData {
                    qe_report: qe_report_bytes,
                    qe_report_signature,
                    qe_auth_data: Data::new(qe_auth_data),
                    certification_data: CertificationData {
                        cert_type: 5,
                        body: Data::new(pem_chain.into_bytes()),
                    },
                },
            }),
        };
        quote.encode()
    }
}

impl QuoteProvider for MockProvider {
    fn quote(&self, report_data: &[u8; 64]) -> Result<Quote, ProviderError> {
        Ok(Quote::from_bytes(self.build_quote(report_data)))
    }

    fn kind(&self) -> ProviderKind {
        ProviderKind::Mock
    }
}

/// The mock platform's SGX TCB (CPUSVN) and PCE SVN.
const CPU_SVN: [u8; 16] = [2, 2, 2, 2, 3, 1, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0];
const PCE_SVN: u16 = 11;

fn platform(c: &MockConfig) -> PckPlatform {
    PckPlatform {
        serial: c.pck_serial,
        fmspc: c.fmspc,
        cpu_svn: CPU_SVN,
        pce_svn: PCE_SVN,
        pce_id: [0, 0],
        flags: c.platform,
    }
}

fn components(svns: &[u8]) -> Vec<serde_json::Value> {
    svns.iter()
        .map(|svn| serde_json::json!({ "svn": svn }))
        .collect()
}

/// TCB Info v3 for TDX: the platform's level with the configured status, then an older
/// OutOfDate level, and a TDX module identity for the module version in TEE_TCB_SVN.
fn tcb_info_json(c: &MockConfig) -> String {
    let level_date = format_unix(c.collateral_issued_at.saturating_sub(90 * 86_400));
    let zeros48 = "0".repeat(96);
    let older: Vec<u8> = CPU_SVN.iter().map(|s| s.saturating_sub(1)).collect();
    let module_id = format!("TDX_{:02X}", c.tee_tcb_svn[1]);
    let info = serde_json::json!({
        "id": "TDX",
        "version": 3,
        "issueDate": format_unix(c.tcb_info_issue_date()),
        "nextUpdate": format_unix(c.tcb_info_issue_date().saturating_add(c.collateral_validity_secs)),
        "fmspc": hex::encode_upper(c.fmspc),
        "pceId": "0000",
        "tcbType": 0,
        "tcbEvaluationDataNumber": c.tcb_eval_data_number,
        "tdxModule": { "mrsigner": zeros48, "attributes": "0000000000000000", "attributesMask": "FFFFFFFFFFFFFFFF" },
        "tdxModuleIdentities": [{
            "id": module_id,
            "mrsigner": zeros48,
            "attributes": "0000000000000000",
            "attributesMask": "FFFFFFFFFFFFFFFF",
            "tcbLevels": [{ "tcb": { "isvsvn": c.tee_tcb_svn[0] }, "tcbDate": level_date, "tcbStatus": "UpToDate" }]
        }],
        "tcbLevels": [
            {
                "tcb": { "sgxtcbcomponents": components(&CPU_SVN), "pcesvn": PCE_SVN, "tdxtcbcomponents": components(&c.tee_tcb_svn) },
                "tcbDate": level_date,
                "tcbStatus": c.tcb_status.as_str(),
                "advisoryIDs": c.advisory_ids,
            },
            {
                "tcb": { "sgxtcbcomponents": components(&older), "pcesvn": PCE_SVN.saturating_sub(1), "tdxtcbcomponents": components(&[0; 16]) },
                "tcbDate": "2018-01-04T00:00:00Z",
                "tcbStatus": "OutOfDate",
                "advisoryIDs": ["INTEL-SA-00106"],
            }
        ]
    });
    info.to_string()
}

fn qe_identity_json(c: &MockConfig) -> String {
    let identity = serde_json::json!({
        "id": "TD_QE",
        "version": 2,
        "issueDate": format_unix(c.qe_identity_issue_date()),
        "nextUpdate": format_unix(c.qe_identity_issue_date().saturating_add(c.collateral_validity_secs)),
        "tcbEvaluationDataNumber": c.qe_identity_eval_data_number.unwrap_or(c.tcb_eval_data_number),
        "miscselect": "00000000",
        "miscselectMask": "FFFFFFFF",
        "attributes": hex::encode_upper(QE_ATTRIBUTES),
        "attributesMask": "FBFFFFFFFFFFFFFF0000000000000000",
        "mrsigner": hex::encode_upper(QE_MR_SIGNER),
        "isvprodid": QE_ISV_PROD_ID,
        "tcbLevels": [{ "tcb": { "isvsvn": QE_ISV_SVN }, "tcbDate": format_unix(c.collateral_issued_at.saturating_sub(90 * 86_400)), "tcbStatus": "UpToDate" }]
    });
    identity.to_string()
}
