//! The collateral freshness watermark (architecture.md §13): the newest signature-checked collateral
//! a verifier has seen, and the refusal of anything older.
//!
//! Each peer supplies its own collateral, and DCAP accepts every item until its nextUpdate,
//! weeks later. A platform whose PCK certificate was revoked can keep presenting the CRL
//! from before the revocation; a platform downgraded by a TCB recovery can keep presenting
//! the TCB Info that still called it UpToDate. A verifier that has seen newer collateral
//! knows better, so [`CollateralWatermark`] remembers the newest of each piece:
//!
//! - per platform model (FMSPC), the TCB Info, ordered by tcbEvaluationDataNumber, then
//!   issueDate;
//! - per QE identity (its `id`, e.g. `TD_QE`), the QE Identity, in the same order. Intel
//!   issues one QE Identity for every platform, so it is not kept per FMSPC: one platform
//!   presenting an older one than another is exactly the rollback this refuses;
//! - per CRL issuer (the root CA, the PCK Platform CA, the PCK Processor CA), the CRL,
//!   ordered by CRL number when both have one, else by thisUpdate.
//!
//! Collateral older than the newest seen for the same FMSPC, QE identity or CA is refused
//! with a [`FreshnessError`] naming the piece, what was presented and the newest seen.
//!
//! Who may raise it: only collateral of an *accepted* verdict. [`CollateralFreshness`] can
//! be made only inside this crate, by DCAP verification once every signature over the
//! collateral has been checked to the trusted root (`verify::verify_dcap`), and the
//! pipeline raises the watermark only when the whole verdict passed
//! (`pipeline::appraise_fresh`). So a forged item with a far-future date or number, or the
//! collateral of a quote the policy refuses, never moves it.
//!
//! Limits: at most [`WATERMARK_FMSPCS_MAX`] platform models, [`WATERMARK_QE_IDS_MAX`] QE
//! identities and [`WATERMARK_CAS_MAX`] CRL issuers; a full map forgets the entry least
//! recently raised or met by an accepted verdict. Forgetting errs on the side of
//! acceptance (older collateral for that key passes again, down to the policy's age limit),
//! which is why only accepted verdicts can fill the maps.
//!
//! IO contract: no clock, no IO. One mutex inside, so a validator shares one watermark
//! between the threads that verify.
use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, MutexGuard};

use serde::Deserialize;
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

use crate::verify::{format_unix, parse_rfc3339_utc, Collateral, CollateralError};

/// Most platform models (FMSPCs) whose newest TCB Info a watermark remembers. Real
/// deployments have a handful.
pub const WATERMARK_FMSPCS_MAX: usize = 256;
/// Most QE identities (`TD_QE`, and `QE` for SGX) a watermark remembers.
pub const WATERMARK_QE_IDS_MAX: usize = 16;
/// Most CRL issuers a watermark remembers (Intel has three: root, Platform and Processor CA).
pub const WATERMARK_CAS_MAX: usize = 16;
/// How long after a newer item was published (its issueDate or thisUpdate) older ones are
/// still accepted. Intel reissues CRLs and TCB Info on its own schedule, and honest members
/// fetch them at different times (every `collateral_refresh_secs`, hours apart): refusing
/// older collateral at once would split a healthy group at every reissue until the last
/// member refreshed. A day is well beyond any refresh interval; it is also the longest a
/// revoked or downgraded platform can keep showing its old collateral to a verifier that
/// has seen the new one.
pub const ROLLBACK_GRACE_SECS: u64 = 24 * 3600;
/// Longest QE identity id or CA name kept, in bytes (Intel's are under 40).
pub const WATERMARK_NAME_LEN_MAX: usize = 128;

/// A piece of collateral the watermark orders.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CollateralPiece {
    /// The TCB Info of a platform model.
    TcbInfo,
    /// The QE Identity.
    QeIdentity,
    /// The PCK CRL (issued by the PCK Platform or Processor CA).
    PckCrl,
    /// The root CA CRL.
    RootCaCrl,
}

impl fmt::Display for CollateralPiece {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The same names as the collateral validity items, so reports read alike.
        f.write_str(match self {
            CollateralPiece::TcbInfo => "TCB Info",
            CollateralPiece::QeIdentity => "QE Identity",
            CollateralPiece::PckCrl => "PCK CRL",
            CollateralPiece::RootCaCrl => "root CA CRL",
        })
    }
}

/// Where a TCB Info or QE Identity stands in Intel's sequence. Ordered by evaluation data
/// number, then issue date (the field order): Intel raises the number at a TCB recovery
/// and reissues between recoveries with a later date.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EvalStamp {
    /// tcbEvaluationDataNumber.
    pub eval_data_number: u32,
    /// issueDate (Unix seconds).
    pub issued_at: u64,
}

impl fmt::Display for EvalStamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "evaluation data number {} issued {}",
            self.eval_data_number,
            format_unix(self.issued_at)
        )
    }
}

/// Where a CRL stands in its issuer's sequence: by CRL number when both CRLs compared have
/// one (RFC 5280 §5.2.3: it increases with every CRL of an issuer), else by thisUpdate.
/// Equal numbers fall back to thisUpdate too, so a re-signed CRL cannot go back in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CrlStamp {
    /// The CRL number extension, when present.
    pub number: Option<u64>,
    /// thisUpdate (Unix seconds).
    pub this_update: u64,
}

impl CrlStamp {
    /// Whether `self` comes before `other` in the issuer's sequence.
    pub fn is_older_than(&self, other: &CrlStamp) -> bool {
        match (self.number, other.number) {
            (Some(mine), Some(theirs)) if mine != theirs => mine < theirs,
            _ => self.this_update < other.this_update,
        }
    }
}

impl fmt::Display for CrlStamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.number {
            Some(n) => write!(f, "CRL number {n}, ")?,
            None => f.write_str("no CRL number, ")?,
        }
        write!(f, "thisUpdate {}", format_unix(self.this_update))
    }
}

/// Collateral older than the newest this verifier has already accepted for the same
/// platform model, QE identity or CA: from before a revocation or a TCB recovery.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FreshnessError {
    /// The TCB Info is older than the newest seen for its FMSPC.
    #[error("TCB Info for FMSPC {fmspc} is older than the newest this verifier has seen for that platform model: presented {presented}, newest {newest}, published more than a day ago (collateral from before a TCB recovery or reissue)")]
    TcbInfoOlder {
        /// FMSPC (hex, upper case).
        fmspc: String,
        /// What the peer presented.
        presented: EvalStamp,
        /// The newest seen.
        newest: EvalStamp,
    },
    /// The QE Identity is older than the newest seen with its id.
    #[error("QE Identity {id} is older than the newest this verifier has seen: presented {presented}, newest {newest}, published more than a day ago (collateral from before a TCB recovery or reissue)")]
    QeIdentityOlder {
        /// The QE Identity's id (`TD_QE`).
        id: String,
        /// What the peer presented.
        presented: EvalStamp,
        /// The newest seen.
        newest: EvalStamp,
    },
    /// A CRL is older than the newest seen from its issuer.
    #[error("{piece} of CA {issuer:?} is older than the newest this verifier has seen from that CA: presented {presented}, newest {newest}, published more than a day ago (a CRL from before a revocation)")]
    CrlOlder {
        /// Which CRL of the collateral.
        piece: CollateralPiece,
        /// Common name of the CRL issuer.
        issuer: String,
        /// What the peer presented.
        presented: CrlStamp,
        /// The newest seen.
        newest: CrlStamp,
    },
}

impl FreshnessError {
    /// The piece of collateral that is too old.
    pub fn piece(&self) -> CollateralPiece {
        match self {
            FreshnessError::TcbInfoOlder { .. } => CollateralPiece::TcbInfo,
            FreshnessError::QeIdentityOlder { .. } => CollateralPiece::QeIdentity,
            FreshnessError::CrlOlder { piece, .. } => *piece,
        }
    }
}

/// One CRL of the collateral: who issued it and where it stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrlFreshness {
    /// SHA-256 of the issuer's DER-encoded name: the key of the issuer's sequence.
    issuer_key: [u8; 32],
    /// The issuer's common name, for messages.
    issuer: String,
    stamp: CrlStamp,
}

impl CrlFreshness {
    /// The issuer's common name.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Where the CRL stands in its issuer's sequence.
    pub fn stamp(&self) -> CrlStamp {
        self.stamp
    }
}

/// What the watermark compares of one signature-checked collateral. Made only inside this
/// crate, by DCAP verification after every signature check passed, so holding one is proof
/// that the dates and numbers in it were signed by the trusted root's PKI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CollateralFreshness {
    fmspc: [u8; 6],
    tcb_info: EvalStamp,
    qe_identity_id: String,
    qe_identity: EvalStamp,
    pck_crl: CrlFreshness,
    root_ca_crl: CrlFreshness,
}

impl CollateralFreshness {
    /// Reads the stamps of `collateral`, for a platform of model `fmspc` (from its PCK
    /// certificate; DCAP has checked that the TCB Info is for the same FMSPC).
    ///
    /// Only for collateral whose signatures DCAP has verified: dcap-qvl checks the TCB Info
    /// and QE Identity signatures and the root CA CRL against the trusted root, and, with
    /// revocation status required for every certificate of the PCK chain, uses the PCK
    /// CRL only if it is issued by the PCK leaf's CA and verifies its signature with that
    /// CA's key.
    pub(crate) fn from_verified(
        collateral: &Collateral,
        fmspc: [u8; 6],
    ) -> Result<CollateralFreshness, CollateralError> {
        let c = collateral.as_dcap();
        let (_, tcb_info) = eval_stamp("TCB Info", &c.tcb_info)?;
        let (qe_identity_id, qe_identity) = eval_stamp("QE Identity", &c.qe_identity)?;
        Ok(CollateralFreshness {
            fmspc,
            tcb_info,
            qe_identity_id: qe_identity_id.unwrap_or_default(),
            qe_identity,
            pck_crl: crl_freshness("PCK CRL", &c.pck_crl)?,
            root_ca_crl: crl_freshness("root CA CRL", &c.root_ca_crl)?,
        })
    }

    /// FMSPC of the platform.
    pub fn fmspc(&self) -> [u8; 6] {
        self.fmspc
    }

    /// The TCB Info's place.
    pub fn tcb_info(&self) -> EvalStamp {
        self.tcb_info
    }

    /// The QE Identity's id (`TD_QE`).
    pub fn qe_identity_id(&self) -> &str {
        &self.qe_identity_id
    }

    /// The QE Identity's place.
    pub fn qe_identity(&self) -> EvalStamp {
        self.qe_identity
    }

    /// The PCK CRL.
    pub fn pck_crl(&self) -> &CrlFreshness {
        &self.pck_crl
    }

    /// The root CA CRL.
    pub fn root_ca_crl(&self) -> &CrlFreshness {
        &self.root_ca_crl
    }

    /// Refuses `self` if any piece is older than the same piece of `current` (same FMSPC,
    /// QE identity or CA), in exactly the order a [`CollateralWatermark`] uses: a node that
    /// replaces its own collateral must never replace it with some its peers would refuse
    /// once they have seen the current one.
    pub fn check_not_older_than(
        &self,
        current: &CollateralFreshness,
    ) -> Result<(), FreshnessError> {
        // A one-platform watermark holding only `current`: the ordering is the watermark's
        // own, not a copy of it. Raising an empty watermark cannot fail.
        // Strict: no grace (a time past every grace window), since this node chooses
        // between two bundles it holds, and should never step back.
        let watermark = CollateralWatermark::new(1);
        watermark.check_and_raise(current, u64::MAX)?;
        watermark.check(self, u64::MAX)
    }

    /// One line for reports.
    pub fn describe(&self) -> String {
        format!(
            "TCB Info for FMSPC {} {}; QE Identity {}; PCK CRL {}; root CA CRL {}",
            hex::encode_upper(self.fmspc),
            self.tcb_info,
            self.qe_identity,
            self.pck_crl.stamp,
            self.root_ca_crl.stamp
        )
    }

    /// The CRLs with the piece each one is.
    fn crls(&self) -> [(CollateralPiece, &CrlFreshness); 2] {
        [
            (CollateralPiece::PckCrl, &self.pck_crl),
            (CollateralPiece::RootCaCrl, &self.root_ca_crl),
        ]
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Sequenced {
    #[serde(default)]
    id: Option<String>,
    issue_date: String,
    tcb_evaluation_data_number: u32,
}

fn malformed(item: &str, detail: impl fmt::Display) -> CollateralError {
    CollateralError::Malformed {
        item: item.to_owned(),
        detail: detail.to_string(),
    }
}

fn eval_stamp(item: &str, json: &str) -> Result<(Option<String>, EvalStamp), CollateralError> {
    let s: Sequenced = serde_json::from_str(json).map_err(|e| malformed(item, e))?;
    let issued_at = parse_rfc3339_utc(&s.issue_date)
        .ok_or_else(|| malformed(item, format!("bad issueDate {:?}", s.issue_date)))?;
    if s.id
        .as_ref()
        .is_some_and(|id| id.len() > WATERMARK_NAME_LEN_MAX)
    {
        return Err(malformed(
            item,
            format!("id longer than {WATERMARK_NAME_LEN_MAX} bytes"),
        ));
    }
    Ok((
        s.id,
        EvalStamp {
            eval_data_number: s.tcb_evaluation_data_number,
            issued_at,
        },
    ))
}

fn crl_freshness(item: &str, der: &[u8]) -> Result<CrlFreshness, CollateralError> {
    let (_, crl) = CertificateRevocationList::from_der(der).map_err(|e| malformed(item, e))?;
    let issuer_key = ring::digest::digest(&ring::digest::SHA256, crl.issuer().as_raw());
    let mut key = [0u8; 32];
    key.copy_from_slice(issuer_key.as_ref());
    let issuer: String = crl
        .issuer()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or("?")
        .chars()
        .take(WATERMARK_NAME_LEN_MAX)
        .collect();
    let this_update = u64::try_from(crl.last_update().timestamp())
        .map_err(|_| malformed(item, "thisUpdate before 1970"))?;
    let number = match crl.crl_number() {
        None => None,
        Some(n) => {
            // dcap-qvl already refuses CRL numbers above u32; u64 leaves room.
            let bytes = n.to_bytes_be();
            if bytes.len() > 8 {
                return Err(malformed(item, "CRL number longer than 8 bytes"));
            }
            Some(bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
        }
    };
    Ok(CrlFreshness {
        issuer_key: key,
        issuer,
        stamp: CrlStamp {
            number,
            this_update,
        },
    })
}

/// One remembered newest item, and when it was last raised or met (for eviction).
#[derive(Clone, Debug)]
struct Entry<S> {
    newest: S,
    used_seq: u64,
}

#[derive(Clone, Debug)]
struct CrlEntry {
    issuer: String,
    newest: CrlStamp,
    used_seq: u64,
}

#[derive(Debug, Default)]
struct State {
    tcb_info: HashMap<[u8; 6], Entry<EvalStamp>>,
    qe_identity: HashMap<String, Entry<EvalStamp>>,
    crls: HashMap<[u8; 32], CrlEntry>,
    /// Counts admissions, ordering entries by last use.
    seq: u64,
    /// Counts raises: changes that may withdraw an earlier verdict.
    generation: u64,
}

/// The newest signature-checked collateral a verifier has seen, per platform model, QE
/// identity and CRL issuer (see the module doc). Shared by reference: every method takes
/// `&self` and locks one mutex.
#[derive(Debug)]
pub struct CollateralWatermark {
    state: Mutex<State>,
    fmspcs_max: usize,
}

impl Default for CollateralWatermark {
    fn default() -> Self {
        CollateralWatermark::new(WATERMARK_FMSPCS_MAX)
    }
}

impl CollateralWatermark {
    /// A watermark remembering at most `fmspcs_max` platform models (at least one).
    pub fn new(fmspcs_max: usize) -> CollateralWatermark {
        CollateralWatermark {
            state: Mutex::new(State::default()),
            fmspcs_max: fmspcs_max.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update below leaves the maps consistent at each step, so the state of a
        // thread that panicked while holding the lock is still a valid watermark.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Refuses `freshness` at `now` (Unix seconds) if any piece is older than the newest
    /// seen for its key and that newest was published [`ROLLBACK_GRACE_SECS`] or more
    /// before `now`. Does not raise the watermark.
    pub fn check(&self, freshness: &CollateralFreshness, now: u64) -> Result<(), FreshnessError> {
        check_locked(&self.lock(), freshness, now)
    }

    /// Checks `freshness` and, if no piece is older, raises every piece that is newer than
    /// the newest seen, in one step under the lock (so two verdicts racing cannot both be
    /// judged against the watermark from before the other). Call only for an accepted
    /// verdict.
    pub fn check_and_raise(
        &self,
        freshness: &CollateralFreshness,
        now: u64,
    ) -> Result<(), FreshnessError> {
        let mut state = self.lock();
        check_locked(&state, freshness, now)?;
        state.seq = state.seq.wrapping_add(1);
        let seq = state.seq;
        let mut raised = false;

        let fmspc_full = state.tcb_info.len() >= self.fmspcs_max;
        raised |= raise(
            &mut state.tcb_info,
            freshness.fmspc,
            freshness.tcb_info,
            seq,
            fmspc_full,
        );
        debug_assert!(state.tcb_info.len() <= self.fmspcs_max);

        let qe_full = state.qe_identity.len() >= WATERMARK_QE_IDS_MAX;
        raised |= raise(
            &mut state.qe_identity,
            freshness.qe_identity_id.clone(),
            freshness.qe_identity,
            seq,
            qe_full,
        );
        debug_assert!(state.qe_identity.len() <= WATERMARK_QE_IDS_MAX);

        for (_, crl) in freshness.crls() {
            let full = state.crls.len() >= WATERMARK_CAS_MAX;
            match state.crls.get_mut(&crl.issuer_key) {
                Some(entry) => {
                    entry.used_seq = seq;
                    if entry.newest.is_older_than(&crl.stamp) {
                        entry.newest = crl.stamp;
                        raised = true;
                    }
                }
                None => {
                    if full {
                        evict_oldest(&mut state.crls, |e| e.used_seq);
                    }
                    state.crls.insert(
                        crl.issuer_key,
                        CrlEntry {
                            issuer: crl.issuer.clone(),
                            newest: crl.stamp,
                            used_seq: seq,
                        },
                    );
                    raised = true;
                }
            }
        }
        debug_assert!(state.crls.len() <= WATERMARK_CAS_MAX);

        if raised {
            state.generation = state.generation.wrapping_add(1);
        }
        // After the raise, the collateral just admitted still passes its own check.
        debug_assert!(check_locked(&state, freshness, now).is_ok());
        Ok(())
    }

    /// Grows whenever the watermark rises, that is whenever a verdict given before may no
    /// longer hold. A cache of verdicts compares it to decide whether to re-verify.
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Number of platform models remembered.
    pub fn fmspcs_tracked(&self) -> usize {
        self.lock().tcb_info.len()
    }

    /// The bound on platform models remembered.
    pub fn fmspcs_max(&self) -> usize {
        self.fmspcs_max
    }

    /// The newest TCB Info seen for `fmspc`, if it is remembered.
    pub fn newest_tcb_info(&self, fmspc: [u8; 6]) -> Option<EvalStamp> {
        self.lock().tcb_info.get(&fmspc).map(|e| e.newest)
    }
}

/// Whether something published at `published_at` binds at `now`: its grace is over.
fn binding(published_at: u64, now: u64) -> bool {
    now >= published_at.saturating_add(ROLLBACK_GRACE_SECS)
}

fn check_locked(state: &State, f: &CollateralFreshness, now: u64) -> Result<(), FreshnessError> {
    if let Some(entry) = state.tcb_info.get(&f.fmspc) {
        if f.tcb_info < entry.newest && binding(entry.newest.issued_at, now) {
            return Err(FreshnessError::TcbInfoOlder {
                fmspc: hex::encode_upper(f.fmspc),
                presented: f.tcb_info,
                newest: entry.newest,
            });
        }
    }
    if let Some(entry) = state.qe_identity.get(&f.qe_identity_id) {
        if f.qe_identity < entry.newest && binding(entry.newest.issued_at, now) {
            return Err(FreshnessError::QeIdentityOlder {
                id: f.qe_identity_id.clone(),
                presented: f.qe_identity,
                newest: entry.newest,
            });
        }
    }
    for (piece, crl) in f.crls() {
        if let Some(entry) = state.crls.get(&crl.issuer_key) {
            if crl.stamp.is_older_than(&entry.newest) && binding(entry.newest.this_update, now) {
                return Err(FreshnessError::CrlOlder {
                    piece,
                    issuer: entry.issuer.clone(),
                    presented: crl.stamp,
                    newest: entry.newest,
                });
            }
        }
    }
    Ok(())
}

/// Raises `map[key]` to `stamp` if it is newer (or absent), marking it used at `seq`;
/// evicts the least recently used entry first when a new key meets a `full` map. Returns
/// whether the newest changed.
fn raise<K: std::hash::Hash + Eq + Clone, S: Ord + Copy>(
    map: &mut HashMap<K, Entry<S>>,
    key: K,
    stamp: S,
    seq: u64,
    full: bool,
) -> bool {
    match map.get_mut(&key) {
        Some(entry) => {
            entry.used_seq = seq;
            if entry.newest < stamp {
                entry.newest = stamp;
                true
            } else {
                false
            }
        }
        None => {
            if full {
                evict_oldest(map, |e| e.used_seq);
            }
            map.insert(
                key,
                Entry {
                    newest: stamp,
                    used_seq: seq,
                },
            );
            true
        }
    }
}

fn evict_oldest<K: std::hash::Hash + Eq + Clone, V>(
    map: &mut HashMap<K, V>,
    used_seq: impl Fn(&V) -> u64,
) {
    let oldest = map
        .iter()
        .min_by_key(|(_, v)| used_seq(v))
        .map(|(k, _)| k.clone());
    if let Some(k) = oldest {
        map.remove(&k);
    }
}

#[cfg(test)]
mod tests;
