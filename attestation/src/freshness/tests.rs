//! Tests of the collateral freshness watermark: how stamps order, older collateral refused
//! once the newer is old enough, the FMSPC bound.
use super::*;

/// A time past every grace window: the watermark binds at once.
const LATE: u64 = u64::MAX;

const DAY: u64 = 86_400;
const T: u64 = 1_767_225_600;

fn crl(issuer: u8, number: Option<u64>, this_update: u64) -> CrlFreshness {
    CrlFreshness {
        issuer_key: [issuer; 32],
        issuer: format!("CA {issuer}"),
        stamp: CrlStamp {
            number,
            this_update,
        },
    }
}

fn freshness(fmspc: u8, eval: u32, issued_at: u64) -> CollateralFreshness {
    CollateralFreshness {
        fmspc: [fmspc; 6],
        tcb_info: EvalStamp {
            eval_data_number: eval,
            issued_at,
        },
        qe_identity_id: "TD_QE".to_owned(),
        qe_identity: EvalStamp {
            eval_data_number: 17,
            issued_at: T,
        },
        pck_crl: crl(1, Some(1), T),
        root_ca_crl: crl(2, Some(1), T),
    }
}

#[test]
fn eval_stamps_order_by_number_then_date() {
    let at = |n, d| EvalStamp {
        eval_data_number: n,
        issued_at: d,
    };
    assert!(at(17, T) < at(17, T + 1));
    assert!(at(17, T + 100 * DAY) < at(18, T));
    assert_eq!(at(17, T).cmp(&at(17, T)), std::cmp::Ordering::Equal);
}

#[test]
fn crl_stamps_order_by_number_when_both_have_one_else_by_this_update() {
    let s = |number, this_update| CrlStamp {
        number,
        this_update,
    };
    // The number decides, even against thisUpdate.
    assert!(s(Some(4), T + DAY).is_older_than(&s(Some(5), T)));
    assert!(!s(Some(5), T).is_older_than(&s(Some(4), T + DAY)));
    // Equal numbers, or a number missing on either side: thisUpdate decides.
    assert!(s(Some(5), T).is_older_than(&s(Some(5), T + 1)));
    assert!(s(None, T).is_older_than(&s(Some(1), T + 1)));
    assert!(s(Some(9), T).is_older_than(&s(None, T + 1)));
    // Equal is not older, either way.
    assert!(!s(Some(5), T).is_older_than(&s(Some(5), T)));
    assert!(!s(None, T).is_older_than(&s(None, T)));
}

/// Honest members fetch a reissue at different times: older collateral passes until the
/// newer one has been out for the grace window, and is refused from then on.
#[test]
fn older_collateral_is_refused_only_once_the_newer_is_a_day_old() {
    let w = CollateralWatermark::default();
    w.check_and_raise(&freshness(1, 18, T), T).unwrap();
    let older = freshness(1, 17, T - DAY);
    assert_eq!(
        w.check(&older, T + 3600),
        Ok(()),
        "an hour after the reissue"
    );
    assert_eq!(
        w.check_and_raise(&older, T + ROLLBACK_GRACE_SECS - 1),
        Ok(()),
        "the last second of the grace window"
    );
    assert_eq!(
        w.newest_tcb_info([1; 6]).map(|e| e.eval_data_number),
        Some(18),
        "accepting older collateral in the window never lowers the watermark"
    );
    let err = w.check(&older, T + ROLLBACK_GRACE_SECS).unwrap_err();
    assert_eq!(err.piece(), CollateralPiece::TcbInfo);
    assert!(err.to_string().contains("more than a day ago"), "{err}");
}

#[test]
fn older_tcb_info_is_refused_after_newer_and_equal_passes() {
    let w = CollateralWatermark::default();
    w.check_and_raise(&freshness(1, 18, T), LATE).unwrap();
    assert_eq!(w.generation(), 1);
    // Same again: passes and raises nothing.
    w.check_and_raise(&freshness(1, 18, T), LATE).unwrap();
    assert_eq!(w.generation(), 1);
    let err = w.check(&freshness(1, 18, T - 1), LATE).unwrap_err();
    assert_eq!(err.piece(), CollateralPiece::TcbInfo);
    let err = w
        .check_and_raise(&freshness(1, 17, T + DAY), LATE)
        .unwrap_err();
    assert_eq!(
        err,
        FreshnessError::TcbInfoOlder {
            fmspc: "010101010101".to_owned(),
            presented: EvalStamp {
                eval_data_number: 17,
                issued_at: T + DAY
            },
            newest: EvalStamp {
                eval_data_number: 18,
                issued_at: T
            },
        }
    );
    // A refused admission leaves the watermark as it was.
    assert_eq!(w.generation(), 1);
    assert_eq!(
        w.newest_tcb_info([1; 6]).map(|s| s.eval_data_number),
        Some(18)
    );
}

#[test]
fn an_older_crl_from_the_same_ca_is_refused_and_other_cas_are_independent() {
    let w = CollateralWatermark::default();
    let mut newer = freshness(1, 17, T);
    newer.pck_crl = crl(1, Some(7), T);
    w.check_and_raise(&newer, LATE).unwrap();
    let mut older = freshness(1, 17, T);
    older.pck_crl = crl(1, Some(6), T + DAY);
    match w.check(&older, LATE).unwrap_err() {
        FreshnessError::CrlOlder {
            piece,
            issuer,
            presented,
            newest,
        } => {
            assert_eq!(piece, CollateralPiece::PckCrl);
            assert_eq!(issuer, "CA 1");
            assert_eq!(presented.number, Some(6));
            assert_eq!(newest.number, Some(7));
        }
        other => panic!("{other:?}"),
    }
    // Another PCK CA (the Processor CA) has its own sequence.
    older.pck_crl = crl(3, Some(1), T);
    w.check_and_raise(&older, LATE).unwrap();
}

#[test]
fn replacing_collateral_refuses_any_older_piece_and_accepts_equal_or_newer() {
    let current = freshness(1, 18, T);
    current.check_not_older_than(&current).unwrap();
    freshness(1, 18, T + 1)
        .check_not_older_than(&current)
        .unwrap();
    freshness(1, 19, T - DAY)
        .check_not_older_than(&current)
        .unwrap();
    let e = freshness(1, 17, T + DAY)
        .check_not_older_than(&current)
        .unwrap_err();
    assert_eq!(e.piece(), CollateralPiece::TcbInfo);
    let mut older_crl = freshness(1, 18, T);
    older_crl.root_ca_crl = crl(2, Some(0), T);
    let e = older_crl.check_not_older_than(&current).unwrap_err();
    assert_eq!(e.piece(), CollateralPiece::RootCaCrl);
}

#[test]
fn the_least_recently_used_fmspc_is_forgotten_at_the_bound() {
    let w = CollateralWatermark::new(2);
    w.check_and_raise(&freshness(1, 18, T), LATE).unwrap();
    w.check_and_raise(&freshness(2, 18, T), LATE).unwrap();
    // FMSPC 1 is met again, so FMSPC 2 is now the least recently used.
    w.check_and_raise(&freshness(1, 18, T), LATE).unwrap();
    w.check_and_raise(&freshness(3, 18, T), LATE).unwrap();
    assert_eq!(w.fmspcs_tracked(), 2);
    assert!(w.newest_tcb_info([2; 6]).is_none());
    assert!(w.check(&freshness(1, 17, T), LATE).is_err());
    // Forgotten: older collateral for it passes again (the documented cost of the bound).
    assert!(w.check(&freshness(2, 17, T), LATE).is_ok());
}
