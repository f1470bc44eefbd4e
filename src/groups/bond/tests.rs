//! Refusal counters: keyed by kind, labelled with stable names.
use super::*;

const EVERY_REFUSAL: [Refusal; 9] = [
    Refusal::Malformed,
    Refusal::WrongGroup,
    Refusal::BadProof,
    Refusal::BadTicket,
    Refusal::Timeout,
    Refusal::TicketExpired,
    Refusal::RefusedByPeer,
    Refusal::Busy,
    Refusal::OtherIncarnation,
];

/// Labels are what metrics and `tessera status` show: the variant's name, one per kind.
#[test]
fn every_refusal_has_its_own_label_its_debug_name() {
    let labels: BTreeSet<&str> = EVERY_REFUSAL.iter().map(|r| r.label()).collect();
    assert_eq!(labels.len(), EVERY_REFUSAL.len(), "labels are distinct");
    for refusal in EVERY_REFUSAL {
        assert_eq!(refusal.label(), format!("{refusal:?}"), "stable label");
        assert_eq!(refusal.to_string(), refusal.label());
    }
}

#[test]
fn refusals_are_counted_by_kind_whatever_their_detail() {
    let mut stats = BondStats::default();
    for detail in ["expired", "wrong measurement"] {
        stats.record(RefusalRecord {
            peer: NodeId(7),
            reason: Refusal::BadTicket,
            detail: detail.into(),
        });
    }
    stats.count(Refusal::Busy);
    assert_eq!(
        stats.refused,
        BTreeMap::from([(Refusal::BadTicket, 2), (Refusal::Busy, 1)])
    );
    assert_eq!(stats.refused_total(), 3);
    assert_eq!(stats.recent_refusals.len(), 2, "only records are kept");
}
