//! Tests of the QEMU values the kernel measurement depends on: the q35 memory split and VGA settings.
use super::*;

#[test]
fn q35_splits_low_memory_as_qemu_does() {
    assert_eq!(q35_below_4g_mem_size(1 << 30), 1 << 30);
    assert_eq!(q35_below_4g_mem_size(2 << 30), 2 << 30);
    assert_eq!(q35_below_4g_mem_size(0xafff_f000), 0xafff_f000);
    assert_eq!(q35_below_4g_mem_size(0xb000_0000), 0x8000_0000);
    assert_eq!(q35_below_4g_mem_size(16 << 30), 0x8000_0000);
}

#[test]
fn vga_values_parse_as_qemu_reads_them() {
    assert_eq!(vga_mode("ro quiet").unwrap(), None);
    assert_eq!(vga_mode("vga=normal").unwrap(), Some(0xffff));
    assert_eq!(vga_mode("a vga=ext b").unwrap(), Some(0xfffe));
    assert_eq!(vga_mode("vga=ask").unwrap(), Some(0xfffd));
    assert_eq!(vga_mode("vga=0x317 ro").unwrap(), Some(0x317));
    assert_eq!(vga_mode("vga=017").unwrap(), Some(0o17));
    assert_eq!(vga_mode("vga=791").unwrap(), Some(791));
    assert_eq!(vga_mode("novga=1").unwrap(), Some(1));
    assert!(matches!(
        vga_mode("vga=foo"),
        Err(KernelError::VgaParameter { value }) if value == "foo"
    ));
    assert!(vga_mode("vga=").is_err());
    assert!(vga_mode("vga=0x").is_err());
}
