//! Tests of the TDVF metadata layout: GUID byte order and block fields.
use super::*;

#[test]
fn guid_constants_are_in_on_disk_order() {
    assert_eq!(
        hex::encode(METADATA_OFFSET_GUID),
        "35657ae44a989847865e4685a7bf8ec2"
    );
    assert_eq!(
        hex::encode(TABLE_FOOTER_GUID),
        "de82b596b21ff745baeaa366c55a082d"
    );
}

#[test]
fn blocks_have_the_name_then_the_gpa_at_16() {
    let add = page_add_block(0xffe0_1000);
    assert_eq!(&add[..16], b"MEM.PAGE.ADD\0\0\0\0");
    assert_eq!(&add[16..24], &0xffe0_1000u64.to_le_bytes());
    assert!(add[24..].iter().all(|&b| b == 0));
    let ext = mr_extend_block(0x100);
    assert_eq!(&ext[..16], b"MR.EXTEND\0\0\0\0\0\0\0");
    assert_eq!(&ext[16..24], &0x100u64.to_le_bytes());
    assert!(ext[24..].iter().all(|&b| b == 0));
}
