//! The mock's test PKI, deterministic from a seed: keys are derived from the seed and every
//! signature is RFC 6979 (no randomness), so the same seed and config give the same bytes.
//!
//! Shape (mirrors Intel's): root CA → PCK platform CA → PCK leaf (with the SGX extension
//! OID 1.2.840.113741.1.13.1); root CA → TCB signer (signs TCB Info and QE Identity).
//! The root depends on the seed only, so every config of one seed chains to one root.
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey as P256SigningKey};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CustomExtension,
    DistinguishedName, DnType, IsCa, Issuer, KeyIdMethod, KeyUsagePurpose, PublicKeyData,
    RevokedCertParams, SerialNumber, SignatureAlgorithm, SigningKey,
};
use yasna::models::ObjectIdentifier;

use crate::provider::ProviderError;
use crate::tcb::PlatformFlags;

/// OID arc of Intel's SGX extension in PCK certificates.
pub const SGX_EXTENSION_OID: [u64; 7] = [1, 2, 840, 113741, 1, 13, 1];

/// Certificates are valid from 2020-01-01 ...
const CERT_NOT_BEFORE: i64 = 1_577_836_800;
/// ... to 2060-01-01.
const CERT_NOT_AFTER: i64 = 2_840_140_800;

/// A P-256 key derived from the seed.
pub(crate) struct MockKey {
    key: P256SigningKey,
    /// SEC1 uncompressed point (65 bytes).
    public_sec1: Vec<u8>,
}

impl MockKey {
    pub(crate) fn derive(seed: &[u8; 32], label: &str) -> MockKey {
        let mut counter: u32 = 0;
        loop {
            let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
            ctx.update(b"tessera/mock-key/v1");
            ctx.update(seed);
            ctx.update(label.as_bytes());
            ctx.update(&counter.to_le_bytes());
            // A digest is a valid scalar except with probability ~2^-32; retry if not.
            if let Ok(key) = P256SigningKey::from_slice(ctx.finish().as_ref()) {
                let public_sec1 = key
                    .verifying_key()
                    .to_encoded_point(false)
                    .as_bytes()
                    .to_vec();
                return MockKey { key, public_sec1 };
            }
            counter = counter.wrapping_add(1);
        }
    }

    /// Raw `r ‖ s` ECDSA-SHA256 signature, as DCAP structures carry them.
    pub(crate) fn sign_raw(&self, msg: &[u8]) -> [u8; 64] {
        let signature: Signature = self.key.sign(msg);
        let mut out = [0u8; 64];
        out.copy_from_slice(&signature.to_bytes());
        out
    }

    /// Public key as `x ‖ y` (64 bytes), as the quote carries the attestation key.
    pub(crate) fn raw_public(&self) -> [u8; 64] {
        let mut out = [0u8; 64];
        if let Some(xy) = self.public_sec1.get(1..65) {
            out.copy_from_slice(xy);
        }
        out
    }
}

impl PublicKeyData for MockKey {
    fn der_bytes(&self) -> &[u8] {
        &self.public_sec1
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

impl SigningKey for MockKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        let signature: Signature = self.key.sign(msg);
        Ok(signature.to_der().as_bytes().to_vec())
    }
}

/// Platform values carried by the PCK leaf.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PckPlatform {
    /// Serial number of the PCK leaf.
    pub serial: u64,
    pub fmspc: [u8; 6],
    pub cpu_svn: [u8; 16],
    pub pce_svn: u16,
    pub pce_id: [u8; 2],
    pub flags: PlatformFlags,
}

/// The certificates and keys of one mock platform.
pub(crate) struct MockPki {
    pub root_key: MockKey,
    pub root_params: CertificateParams,
    pub root_der: Vec<u8>,
    pub root_pem: String,
    pub pck_ca_key: MockKey,
    pub pck_ca_params: CertificateParams,
    pub pck_ca_pem: String,
    pub pck_key: MockKey,
    pub pck_pem: String,
    pub pck_serial: SerialNumber,
    pub tcb_key: MockKey,
    pub tcb_pem: String,
}

fn err(e: impl std::fmt::Display) -> ProviderError {
    ProviderError::Mock(e.to_string())
}

fn date(unix: i64) -> Result<time::OffsetDateTime, ProviderError> {
    time::OffsetDateTime::from_unix_timestamp(unix).map_err(err)
}

fn key_id(key: &MockKey) -> KeyIdMethod {
    let digest = ring::digest::digest(&ring::digest::SHA256, &key.subject_public_key_info());
    KeyIdMethod::PreSpecified(digest.as_ref().get(..20).unwrap_or_default().to_vec())
}

fn params(
    cn: &str,
    key: &MockKey,
    serial: u64,
    is_ca: IsCa,
) -> Result<CertificateParams, ProviderError> {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn.push(DnType::OrganizationName, "tessera mock (NOT INTEL)");
    dn.push(DnType::CountryName, "ZZ");
    p.distinguished_name = dn;
    p.not_before = date(CERT_NOT_BEFORE)?;
    p.not_after = date(CERT_NOT_AFTER)?;
    p.serial_number = Some(SerialNumber::from(serial));
    p.key_identifier_method = key_id(key);
    p.key_usages = match is_ca {
        IsCa::Ca(_) => vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign],
        _ => vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::ContentCommitment,
        ],
    };
    p.is_ca = is_ca;
    Ok(p)
}

/// Root certificate of a seed (depends on nothing else).
fn root(seed: &[u8; 32]) -> Result<(MockKey, CertificateParams, Vec<u8>, String), ProviderError> {
    let key = MockKey::derive(seed, "root");
    let params = params(
        "Tessera Mock SGX Root CA",
        &key,
        1,
        IsCa::Ca(BasicConstraints::Unconstrained),
    )?;
    let cert = params.self_signed(&key).map_err(err)?;
    Ok((key, params, cert.der().to_vec(), cert.pem()))
}

/// DER of the root certificate of `seed`.
pub(crate) fn root_der(seed: &[u8; 32]) -> Result<Vec<u8>, ProviderError> {
    root(seed).map(|(_, _, der, _)| der)
}

impl MockPki {
    pub(crate) fn build(seed: &[u8; 32], platform: &PckPlatform) -> Result<MockPki, ProviderError> {
        let (root_key, root_params, root_der, root_pem) = root(seed)?;
        let root_issuer = Issuer::from_params(&root_params, &root_key);

        let pck_ca_key = MockKey::derive(seed, "pck-ca");
        let mut pck_ca_params = params(
            "Tessera Mock SGX PCK Platform CA",
            &pck_ca_key,
            2,
            IsCa::Ca(BasicConstraints::Constrained(0)),
        )?;
        pck_ca_params.use_authority_key_identifier_extension = true;
        let pck_ca_pem = pck_ca_params
            .signed_by(&pck_ca_key, &root_issuer)
            .map_err(err)?
            .pem();

        let tcb_key = MockKey::derive(seed, "tcb-signer");
        let mut tcb_params = params(
            "Tessera Mock SGX TCB Signing",
            &tcb_key,
            3,
            IsCa::ExplicitNoCa,
        )?;
        tcb_params.use_authority_key_identifier_extension = true;
        let tcb_pem = tcb_params
            .signed_by(&tcb_key, &root_issuer)
            .map_err(err)?
            .pem();

        let pck_key = MockKey::derive(seed, "pck-leaf");
        let pck_serial = SerialNumber::from(platform.serial);
        let mut pck_params = params(
            "Tessera Mock SGX PCK Certificate",
            &pck_key,
            platform.serial,
            IsCa::ExplicitNoCa,
        )?;
        pck_params.use_authority_key_identifier_extension = true;
        pck_params
            .custom_extensions
            .push(CustomExtension::from_oid_content(
                &SGX_EXTENSION_OID,
                sgx_extension(seed, platform),
            ));
        let pck_ca_issuer = Issuer::from_params(&pck_ca_params, &pck_ca_key);
        let pck_pem = pck_params
            .signed_by(&pck_key, &pck_ca_issuer)
            .map_err(err)?
            .pem();

        Ok(MockPki {
            root_key,
            root_params,
            root_der,
            root_pem,
            pck_ca_key,
            pck_ca_params,
            pck_ca_pem,
            pck_key,
            pck_pem,
            pck_serial,
            tcb_key,
            tcb_pem,
        })
    }

    /// Root CA CRL number `number` (revokes nothing) valid from `this_update` to
    /// `next_update`.
    pub(crate) fn root_crl(
        &self,
        this_update: i64,
        next_update: i64,
        number: u64,
    ) -> Result<Vec<u8>, ProviderError> {
        let issuer = Issuer::from_params(&self.root_params, &self.root_key);
        crl(
            &issuer,
            key_id(&self.root_key),
            this_update,
            next_update,
            number,
            Vec::new(),
        )
    }

    /// PCK CRL number `number`, revoking this platform's PCK leaf when `revoke_pck` and the
    /// PCK leaves of other platforms with serials `other_serials`.
    pub(crate) fn pck_crl(
        &self,
        this_update: i64,
        next_update: i64,
        number: u64,
        revoke_pck: bool,
        other_serials: &[u64],
    ) -> Result<Vec<u8>, ProviderError> {
        let issuer = Issuer::from_params(&self.pck_ca_params, &self.pck_ca_key);
        let own = revoke_pck.then(|| self.pck_serial.clone());
        let revoked = own
            .into_iter()
            .chain(other_serials.iter().map(|s| SerialNumber::from(*s)))
            .map(|serial_number| {
                Ok(RevokedCertParams {
                    serial_number,
                    revocation_time: date(this_update)?,
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
            })
            .collect::<Result<Vec<_>, ProviderError>>()?;
        crl(
            &issuer,
            key_id(&self.pck_ca_key),
            this_update,
            next_update,
            number,
            revoked,
        )
    }
}

fn crl(
    issuer: &Issuer<'_, &MockKey>,
    key_identifier_method: KeyIdMethod,
    this_update: i64,
    next_update: i64,
    number: u64,
    revoked_certs: Vec<RevokedCertParams>,
) -> Result<Vec<u8>, ProviderError> {
    let params = CertificateRevocationListParams {
        this_update: date(this_update)?,
        next_update: date(next_update)?,
        crl_number: SerialNumber::from(number),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method,
    };
    Ok(params.signed_by(issuer).map_err(err)?.der().to_vec())
}

fn sgx_oid(tail: &[u64]) -> ObjectIdentifier {
    let mut arcs = SGX_EXTENSION_OID.to_vec();
    arcs.extend_from_slice(tail);
    ObjectIdentifier::from_slice(&arcs)
}

/// The SGX extension (Intel's PCK certificate profile): PPID, TCB (16 SGX components,
/// PCESVN, CPUSVN), PCE-ID, FMSPC, SGX type, platform instance id and configuration flags.
fn sgx_extension(seed: &[u8; 32], platform: &PckPlatform) -> Vec<u8> {
    let ppid = ring::digest::digest(&ring::digest::SHA256, &[seed.as_slice(), b"ppid"].concat());
    let instance = ring::digest::digest(
        &ring::digest::SHA256,
        &[seed.as_slice(), b"instance"].concat(),
    );
    yasna::construct_der(|w| {
        w.write_sequence(|w| {
            w.next().write_sequence(|w| {
                w.next().write_oid(&sgx_oid(&[1]));
                w.next()
                    .write_bytes(ppid.as_ref().get(..16).unwrap_or_default());
            });
            w.next().write_sequence(|w| {
                w.next().write_oid(&sgx_oid(&[2]));
                w.next().write_sequence(|w| {
                    for (i, svn) in (1u64..).zip(platform.cpu_svn.iter()) {
                        w.next().write_sequence(|w| {
                            w.next().write_oid(&sgx_oid(&[2, i]));
                            w.next().write_u8(*svn);
                        });
                    }
                    w.next().write_sequence(|w| {
                        w.next().write_oid(&sgx_oid(&[2, 17]));
                        w.next().write_u16(platform.pce_svn);
                    });
                    w.next().write_sequence(|w| {
                        w.next().write_oid(&sgx_oid(&[2, 18]));
                        w.next().write_bytes(&platform.cpu_svn);
                    });
                });
            });
            w.next().write_sequence(|w| {
                w.next().write_oid(&sgx_oid(&[3]));
                w.next().write_bytes(&platform.pce_id);
            });
            w.next().write_sequence(|w| {
                w.next().write_oid(&sgx_oid(&[4]));
                w.next().write_bytes(&platform.fmspc);
            });
            w.next().write_sequence(|w| {
                w.next().write_oid(&sgx_oid(&[5]));
                w.next().write_enum(1); // Scalable
            });
            w.next().write_sequence(|w| {
                w.next().write_oid(&sgx_oid(&[6]));
                w.next()
                    .write_bytes(instance.as_ref().get(..16).unwrap_or_default());
            });
            w.next().write_sequence(|w| {
                w.next().write_oid(&sgx_oid(&[7]));
                w.next().write_sequence(|w| {
                    for (arc, value) in [
                        (1, platform.flags.dynamic_platform),
                        (2, platform.flags.cached_keys),
                        (3, platform.flags.smt_enabled),
                    ] {
                        if let Some(value) = value {
                            w.next().write_sequence(|w| {
                                w.next().write_oid(&sgx_oid(&[7, arc]));
                                w.next().write_bool(value);
                            });
                        }
                    }
                });
            });
        });
    })
}
