//! Tests of `tessera measure`'s parsing and printing: memory sizes and truncation.
use super::*;

#[test]
fn memory_sizes_read_as_qemu_reads_them() {
    assert_eq!(parse_memory("2G").unwrap(), 2 << 30);
    assert_eq!(parse_memory("2048").unwrap(), 2 << 30);
    assert_eq!(parse_memory("2048M").unwrap(), 2 << 30);
    assert_eq!(parse_memory("512k").unwrap(), 512 << 10);
    assert_eq!(parse_memory("1T").unwrap(), 1 << 40);
    for bad in ["", "G", "0", "2.5G", "2X", "-1G", "99999999999T"] {
        assert!(parse_memory(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn sizes_print_in_their_largest_exact_unit() {
    assert_eq!(human_bytes(2 << 30), "2 GiB");
    assert_eq!(human_bytes(3 << 29), "1536 MiB");
    assert_eq!(human_bytes(1000), "1000 bytes");
}

#[test]
fn truncation_keeps_whole_characters() {
    assert_eq!(truncate("héllo".to_owned(), 2), "h");
    assert_eq!(truncate("abc".to_owned(), 10), "abc");
}
