//! `measure`: MRTD and RTMR2 against the independent values of tests/vectors/measure/ (see
//! its README), RTMR1's PE hash and QEMU setup-header patch against values worked out by
//! hand on a synthetic kernel, and malformed inputs of every kind giving errors.
use tessera_attestation::measure::kernel::{
    authenticode_sha384, qemu_patch_setup_header, rtmr1_log, QEMU_ACPI_DATA_SIZE,
};
use tessera_attestation::measure::rtmr::{extend, rtmr2_log, sha384};
use tessera_attestation::measure::tdvf::{mrtd, SectionProblem, TdvfMetadata};
use tessera_attestation::measure::{
    measure_image, DirectBoot, ImageInputs, KernelError, KernelHeader, MeasureError, PageOrder,
    TdvfError,
};

const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/vectors/measure/");
/// gce-tcb-verifier's "clean TDX example measurement" (README: single pass).
const MRTD_SINGLE_PASS: &str = "6e540be4917f24f74cc3292b59803d06dc7c38eb4a3c1fd6be9c735ba74bb7a23e25f98da94779d17508b243e4fb582b";
/// The same firmware, each section's PAGE.ADDs before its MR.EXTENDs (README: two pass).
const MRTD_TWO_PASS: &str = "e9f135ce5bcbb476142fc01fe5f4e6e674562a1593d8780f1109526a69c38affce8f941187a21133ed62f65e7017783c";
/// RTMR2 of a live Kata TDX quote for rtmr2_cmdline_no_initrd.txt.
const RTMR2_KATA: &str = "b595f9f179d8b699d1420000d36c1fba82e9853545e719caa6ddbb82fa2041a23b4459876af4a253a1c20c5956529b9a";
const GIB: u64 = 1 << 30;

fn firmware() -> Vec<u8> {
    std::fs::read(format!("{VECTORS}synthetic_tdvf_2MiB.fd")).unwrap()
}

fn kata_cmdline() -> String {
    std::fs::read_to_string(format!("{VECTORS}rtmr2_cmdline_no_initrd.txt")).unwrap()
}

/// Offset of the TDVF descriptor in the vector firmware (0x200000 - 0x1ffef0).
const DESCRIPTOR: usize = 0x110;

// --- MRTD ---------------------------------------------------------------------------------

#[test]
fn mrtd_single_pass_matches_the_published_value() {
    let m = mrtd(&firmware(), PageOrder::SinglePass).unwrap();
    assert_eq!(hex::encode(m.value), MRTD_SINGLE_PASS);
    assert_eq!(m.sections, 6);
    // All six sections are added (BFV 0x1e0000, CFV 0x20000, TEMP_MEM and TD_HOB 0x10000 +
    // 0x2000 + 0x2000 + 0x6000 bytes); only the BFV has EXTENDMR.
    assert_eq!(m.pages_added, (0x20_0000 + 0x1_a000) / 4096);
    assert_eq!(m.chunks_extended, 0x1e_0000 / 256);
}

#[test]
fn mrtd_two_pass_matches_the_independent_value() {
    let m = mrtd(&firmware(), PageOrder::TwoPass).unwrap();
    assert_eq!(hex::encode(m.value), MRTD_TWO_PASS);
}

#[test]
fn mrtd_changes_with_a_measured_byte_but_not_with_an_unmeasured_one() {
    // The CFV (data offset 0) is added without EXTENDMR: its bytes are not measured.
    let mut fw = firmware();
    fw[0x1000] ^= 1;
    assert_eq!(
        hex::encode(mrtd(&fw, PageOrder::SinglePass).unwrap().value),
        MRTD_SINGLE_PASS
    );
    // The BFV runs to the end of the image: its last bytes (the reset vector) are measured too.
    let mut fw = firmware();
    let last = fw.len() - 1;
    fw[last] ^= 1;
    assert_ne!(
        hex::encode(mrtd(&fw, PageOrder::SinglePass).unwrap().value),
        MRTD_SINGLE_PASS
    );
}

#[test]
fn metadata_is_found_through_the_guid_table() {
    let meta = TdvfMetadata::parse(&firmware()).unwrap();
    assert_eq!(meta.offset, DESCRIPTOR);
    assert_eq!(meta.sections[0].memory_address, 0xffe2_0000);
    assert_eq!(meta.sections[1].memory_data_size, 0x2_0000);
}

#[test]
fn truncated_firmware_of_any_length_is_an_error() {
    let fw = firmware();
    let lengths = (0..4096)
        .chain((4096..fw.len()).step_by(997))
        .chain(fw.len() - 4096..fw.len());
    for len in lengths {
        // Cut at the end (loses the GUID table) and at the start (keeps it, loses the data).
        assert!(
            mrtd(&fw[..len], PageOrder::SinglePass).is_err(),
            "prefix {len}"
        );
        assert!(
            mrtd(&fw[fw.len() - len..], PageOrder::SinglePass).is_err(),
            "suffix {len}"
        );
    }
}

#[test]
fn garbage_firmware_is_an_error() {
    let mut rng = XorShift(0x5eed);
    for len in [0, 1, 31, 32, 50, 64, 4096, 65_536] {
        for _ in 0..50 {
            let bytes = rng.bytes(len);
            assert!(mrtd(&bytes, PageOrder::SinglePass).is_err());
        }
    }
    let err = mrtd(&[0u8; 4096], PageOrder::SinglePass).unwrap_err();
    assert_eq!(err, TdvfError::NoGuidTable { offset: 4096 - 48 });
}

#[test]
fn every_byte_of_the_metadata_and_guid_table_can_be_corrupted_without_a_panic() {
    let fw = firmware();
    let metadata = DESCRIPTOR..DESCRIPTOR + 16 + 6 * 32;
    let table = fw.len() - 32 - 84..fw.len() - 32;
    for at in metadata.chain(table) {
        for value in [0x00, 0xff, 0x80] {
            let mut bad = fw.clone();
            bad[at] = value;
            // Either an error or an MRTD: never a panic.
            let _ = mrtd(&bad, PageOrder::SinglePass);
        }
    }
}

#[test]
fn malformed_metadata_fields_are_named() {
    let fw = firmware();
    let with = |at: usize, bytes: &[u8]| {
        let mut bad = fw.clone();
        bad[at..at + bytes.len()].copy_from_slice(bytes);
        mrtd(&bad, PageOrder::SinglePass).unwrap_err()
    };
    assert_eq!(
        with(DESCRIPTOR, b"TDVX"),
        TdvfError::Signature {
            offset: DESCRIPTOR,
            found: *b"TDVX"
        }
    );
    assert_eq!(
        with(DESCRIPTOR + 8, &2u32.to_le_bytes()),
        TdvfError::Version {
            offset: DESCRIPTOR,
            found: 2
        }
    );
    assert_eq!(
        with(DESCRIPTOR + 12, &1000u32.to_le_bytes()),
        TdvfError::TooManySections { count: 1000 }
    );
    // Section 2's attributes: an unknown bit.
    let section2 = DESCRIPTOR + 16 + 2 * 32;
    assert_eq!(
        with(section2 + 28, &4u32.to_le_bytes()),
        TdvfError::Section {
            index: 2,
            offset: section2,
            problem: SectionProblem::UnknownAttributes(4)
        }
    );
    // Section 2 is TEMP_MEM: EXTENDMR on it cannot be computed from the image.
    assert!(matches!(
        with(section2 + 28, &1u32.to_le_bytes()),
        TdvfError::Section {
            index: 2,
            problem: SectionProblem::ExtendNotFromImage(_),
            ..
        }
    ));
    // Section 3's address: not page aligned.
    let section3 = DESCRIPTOR + 16 + 3 * 32;
    assert_eq!(
        with(section3 + 8, &0x80_b100u64.to_le_bytes()),
        TdvfError::Section {
            index: 3,
            offset: section3,
            problem: SectionProblem::AddressNotAligned(0x80_b100)
        }
    );
    // Section 0 (BFV) claims more memory than the image holds past its data offset.
    let section0 = DESCRIPTOR + 16;
    assert!(matches!(
        with(section0 + 16, &0x1f_0000u64.to_le_bytes()),
        TdvfError::Section {
            index: 0,
            problem: SectionProblem::DataPastEnd { .. },
            ..
        }
    ));
    // A huge TEMP_MEM section: refused before any hashing.
    assert_eq!(
        with(section2 + 16, &(1u64 << 40).to_le_bytes()),
        TdvfError::TooManyPages
    );
    // The metadata offset entry points past the start of the image.
    // The GUID table, read backwards from the footer: entries 00f771de and dc886566 (22
    // bytes each), then the TDX metadata offset entry, whose data is its first 4 bytes.
    let table_end = fw.len() - 32 - 18;
    let tdx_entry = table_end - 3 * 22;
    assert_eq!(
        with(tdx_entry, &0x30_0000u32.to_le_bytes()),
        TdvfError::MetadataOffset {
            from_end: 0x30_0000,
            image_len: fw.len()
        }
    );
}

// --- RTMR2 --------------------------------------------------------------------------------

#[test]
fn rtmr2_of_the_kata_command_line_matches_the_live_quote() {
    let log = rtmr2_log(&kata_cmdline(), None).unwrap();
    assert_eq!(log.events.len(), 1);
    assert_eq!(hex::encode(log.value()), RTMR2_KATA);
}

#[test]
fn rtmr2_differs_with_an_initrd_or_a_trailing_newline() {
    let cmdline = kata_cmdline();
    let with_initrd = rtmr2_log(&cmdline, Some(b"x")).unwrap();
    assert_ne!(hex::encode(with_initrd.value()), RTMR2_KATA);
    let newline = rtmr2_log(&format!("{cmdline}\n"), None).unwrap();
    assert_ne!(hex::encode(newline.value()), RTMR2_KATA);
    // With an initrd: the command line event includes " initrd=initrd", then the initrd.
    let by_hand = extend(
        &extend(
            &[0; 48],
            &sha384(
                &format!("{cmdline} initrd=initrd\0")
                    .encode_utf16()
                    .flat_map(u16::to_le_bytes)
                    .collect::<Vec<u8>>(),
            ),
        ),
        &sha384(b"x"),
    );
    assert_eq!(with_initrd.value(), by_hand);
}

// --- RTMR1: a synthetic kernel ------------------------------------------------------------

/// Layout of the synthetic kernel: a PE32+ image with a Linux setup header, as a bzImage
/// with an EFI stub is laid out.
mod layout {
    pub const PE: usize = 0x40;
    pub const OPTIONAL: usize = PE + 24;
    pub const CHECKSUM: usize = OPTIONAL + 64; // 0x98
    pub const SECURITY_DIR: usize = OPTIONAL + 112 + 4 * 8; // 0xe8
    pub const SECTION_TABLE: usize = OPTIONAL + 240; // 0x148
    pub const SIZE_OF_HEADERS: usize = 0x400;
    /// Section ".text" (first in the table) and ".setup" (second, earlier in the file).
    pub const TEXT: std::ops::Range<usize> = 0x600..0xe00;
    pub const SETUP: std::ops::Range<usize> = 0x400..0x600;
    /// Bytes after the sections that are not the certificate table.
    pub const EXTRA: std::ops::Range<usize> = 0xe00..0xf00;
    pub const CERT: std::ops::Range<usize> = 0xf00..0xf80;
    pub const LEN: usize = 0xf80;
}

fn synthetic_kernel() -> Vec<u8> {
    use layout::*;
    let mut k: Vec<u8> = (0..LEN).map(|i| (i * 7 % 251) as u8).collect();
    let put = |k: &mut Vec<u8>, at: usize, bytes: &[u8]| {
        k[at..at + bytes.len()].copy_from_slice(bytes);
    };
    put(&mut k, 0, b"MZ");
    put(&mut k, 0x3c, &(PE as u32).to_le_bytes());
    put(&mut k, PE, b"PE\0\0");
    put(&mut k, PE + 4, &0x8664u16.to_le_bytes()); // machine
    put(&mut k, PE + 6, &3u16.to_le_bytes()); // sections
    put(&mut k, PE + 20, &240u16.to_le_bytes()); // SizeOfOptionalHeader
    put(&mut k, OPTIONAL, &0x20bu16.to_le_bytes());
    put(
        &mut k,
        OPTIONAL + 60,
        &(SIZE_OF_HEADERS as u32).to_le_bytes(),
    );
    put(&mut k, OPTIONAL + 108, &16u32.to_le_bytes()); // NumberOfRvaAndSizes
    put(&mut k, SECURITY_DIR, &(CERT.start as u32).to_le_bytes());
    put(&mut k, SECURITY_DIR + 4, &(CERT.len() as u32).to_le_bytes());
    let section = |k: &mut Vec<u8>, index: usize, name: &[u8; 8], range: std::ops::Range<usize>| {
        let at = SECTION_TABLE + 40 * index;
        k[at..at + 40].fill(0);
        k[at..at + 8].copy_from_slice(name);
        k[at + 16..at + 20].copy_from_slice(&(range.len() as u32).to_le_bytes());
        k[at + 20..at + 24].copy_from_slice(&(range.start as u32).to_le_bytes());
    };
    section(&mut k, 0, b".text\0\0\0", TEXT);
    section(&mut k, 1, b".setup\0\0", SETUP);
    section(&mut k, 2, b".bss\0\0\0\0", 0x50..0x50); // no raw data: not hashed
                                                     // Linux setup header: setup_sects 1 (a 1 KiB setup part), protocol 2.15, LOADED_HIGH,
                                                     // initrd_addr_max 0x7fffffff, xloadflags KERNEL_64 | CAN_BE_LOADED_ABOVE_4G.
    k[0x1f1] = 1;
    put(&mut k, 0x202, b"HdrS");
    put(&mut k, 0x206, &0x020fu16.to_le_bytes());
    k[0x210] = 0;
    k[0x211] = 0x01;
    put(&mut k, 0x218, &[0; 8]);
    put(&mut k, 0x224, &[0; 8]);
    put(&mut k, 0x22c, &0x7fff_ffffu32.to_le_bytes());
    put(&mut k, 0x236, &0x0003u16.to_le_bytes());
    k
}

/// The Authenticode hash by hand: everything but the checksum field, the security
/// directory entry and the certificate table, with the sections in file order.
fn hash_by_hand(k: &[u8]) -> [u8; 48] {
    use layout::*;
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&k[..CHECKSUM]);
    bytes.extend_from_slice(&k[CHECKSUM + 4..SECURITY_DIR]);
    bytes.extend_from_slice(&k[SECURITY_DIR + 8..SIZE_OF_HEADERS]);
    bytes.extend_from_slice(&k[SETUP]);
    bytes.extend_from_slice(&k[TEXT]);
    bytes.extend_from_slice(&k[EXTRA]);
    sha384(&bytes)
}

#[test]
fn authenticode_hash_covers_the_ranges_worked_out_by_hand() {
    let k = synthetic_kernel();
    assert_eq!(authenticode_sha384(&k).unwrap(), hash_by_hand(&k));
}

#[test]
fn authenticode_hash_skips_the_checksum_and_certificate_but_not_code() {
    let base = authenticode_sha384(&synthetic_kernel()).unwrap();
    let flipped = |at: usize| {
        let mut k = synthetic_kernel();
        k[at] ^= 0x55;
        authenticode_sha384(&k).unwrap()
    };
    assert_eq!(flipped(layout::CHECKSUM + 1), base);
    assert_eq!(flipped(layout::CERT.start + 3), base);
    assert_ne!(flipped(layout::TEXT.start + 9), base);
    assert_ne!(flipped(layout::EXTRA.start), base);
    assert_ne!(flipped(0x100), base);
}

#[test]
fn qemu_patches_the_setup_header_as_worked_out_by_hand() {
    let k = synthetic_kernel();
    let initrd_len = 1_000_000u32;
    let boot = DirectBoot {
        memory_bytes: 2 * GIB,
        initrd_len: Some(u64::from(initrd_len)),
        cmdline: "console=hvc0",
    };
    let p = qemu_patch_setup_header(&k, &boot).unwrap();
    let u32_at = |at: usize| u32::from_le_bytes(p[at..at + 4].try_into().unwrap());
    assert_eq!(p[0x210], 0xb0, "type_of_loader: QEMU");
    assert_eq!(p[0x211], 0x81, "loadflags: LOADED_HIGH | CAN_USE_HEAP");
    assert_eq!(&p[0x224..0x226], &0xfe00u16.to_le_bytes(), "heap_end_ptr");
    assert_eq!(u32_at(0x228), 0x2_0000, "cmd_line_ptr");
    // initrd_max: below 4 GiB (2 GiB) less the ACPI data, less one.
    let initrd_max = (2 * GIB - QEMU_ACPI_DATA_SIZE - 1) as u32;
    assert_eq!(
        u32_at(0x218),
        (initrd_max - initrd_len) & !4095,
        "ramdisk_image"
    );
    assert_eq!(u32_at(0x21c), initrd_len, "ramdisk_size");
    // Nothing else changes.
    for (i, (a, b)) in k.iter().zip(&p).enumerate() {
        if !(0x210..0x212).contains(&i) && !(0x218..0x22c).contains(&i) {
            assert_eq!(a, b, "byte {i:#x}");
        }
    }
    assert_eq!(p.len(), k.len());
    // The hash is over the patched bytes.
    assert_eq!(authenticode_sha384(&p).unwrap(), hash_by_hand(&p));
    assert_ne!(
        authenticode_sha384(&p).unwrap(),
        authenticode_sha384(&k).unwrap()
    );
}

#[test]
fn rtmr1_depends_on_the_initrd_size_and_memory_as_qemu_places_the_initrd() {
    let k = synthetic_kernel();
    let rtmr1 = |memory_bytes: u64, initrd_len: Option<u64>| {
        let boot = DirectBoot {
            memory_bytes,
            initrd_len,
            cmdline: "ro",
        };
        rtmr1_log(&k, &boot, KernelHeader::QemuPatched)
            .unwrap()
            .value()
    };
    let base = rtmr1(2 * GIB, Some(1_000_000));
    // Same page-aligned address and same size: same value.
    assert_eq!(rtmr1(2 * GIB, Some(1_000_000)), base);
    // 2.75 GiB and more: QEMU splits low memory at 2 GiB, as for 2 GiB.
    assert_eq!(rtmr1(4 * GIB, Some(1_000_000)), base);
    assert_eq!(rtmr1(0xb000_0000, Some(1_000_000)), base);
    // Between: the initrd moves.
    assert_ne!(rtmr1(0xa000_0000, Some(1_000_000)), base);
    assert_ne!(rtmr1(2 * GIB, Some(1_000_001)), base);
    assert_ne!(rtmr1(2 * GIB, None), base);
    // Without the patch: the file as it is, whatever the memory.
    let as_file = |memory_bytes| {
        let boot = DirectBoot {
            memory_bytes,
            initrd_len: Some(5),
            cmdline: "ro",
        };
        rtmr1_log(&k, &boot, KernelHeader::AsFile).unwrap()
    };
    assert_eq!(as_file(GIB), as_file(2 * GIB));
    assert_eq!(as_file(GIB).events[0].digest, hash_by_hand(&k));
    assert_eq!(as_file(GIB).events.len(), 5);
    assert_eq!(
        as_file(GIB).events[2].digest,
        sha384(&[0, 0, 0, 0]),
        "the separator is the third event"
    );
}

#[test]
fn an_initrd_that_does_not_fit_below_initrd_max_is_refused() {
    let k = synthetic_kernel();
    let boot = DirectBoot {
        memory_bytes: 256 << 20,
        initrd_len: Some(300 << 20),
        cmdline: "",
    };
    assert!(matches!(
        qemu_patch_setup_header(&k, &boot),
        Err(KernelError::InitrdTooLarge { .. })
    ));
    let boot = DirectBoot {
        memory_bytes: 0x1000,
        initrd_len: None,
        cmdline: "",
    };
    assert!(matches!(
        qemu_patch_setup_header(&k, &boot),
        Err(KernelError::MemoryTooSmall { .. })
    ));
}

#[test]
fn a_kernel_that_is_not_a_pe_is_refused_naming_what_is_wrong() {
    // An ELF file.
    let mut elf = vec![0u8; 8192];
    elf[..4].copy_from_slice(b"\x7fELF");
    let err = authenticode_sha384(&elf).unwrap_err();
    assert_eq!(err, KernelError::NoDosMagic { found: *b"\x7fE" });
    assert!(err.to_string().contains("not a PE image"), "{err}");
    // Through the QEMU patch, it has no Linux setup header either.
    let boot = DirectBoot {
        memory_bytes: 2 * GIB,
        initrd_len: None,
        cmdline: "",
    };
    assert!(matches!(
        rtmr1_log(&elf, &boot, KernelHeader::QemuPatched),
        Err(KernelError::NoSetupHeader { .. })
    ));
    // A DOS header whose e_lfanew points at something that is not "PE\0\0".
    let mut k = synthetic_kernel();
    k[layout::PE] = b'X';
    let err = authenticode_sha384(&k).unwrap_err();
    assert_eq!(
        err,
        KernelError::NoPeSignature {
            offset: 0x40,
            found: *b"XE\0\0"
        }
    );
    assert!(err.to_string().contains("0x40"), "{err}");
    // A section past the end.
    let mut k = synthetic_kernel();
    let text = layout::SECTION_TABLE;
    k[text + 16..text + 20].copy_from_slice(&0x10_0000u32.to_le_bytes());
    assert!(matches!(
        authenticode_sha384(&k),
        Err(KernelError::SectionPastEnd { index: 0, .. })
    ));
    // A certificate table larger than what follows the sections.
    let mut k = synthetic_kernel();
    k[layout::SECURITY_DIR..layout::SECURITY_DIR + 4].copy_from_slice(&0xde0u32.to_le_bytes());
    k[layout::SECURITY_DIR + 4..layout::SECURITY_DIR + 8].copy_from_slice(&0x1a0u32.to_le_bytes());
    assert_eq!(
        authenticode_sha384(&k),
        Err(KernelError::CertificateTableTooLarge {
            size: 0x1a0,
            trailing: 0x180
        })
    );
}

#[test]
fn truncated_or_garbage_kernels_are_errors() {
    let k = synthetic_kernel();
    let boot = DirectBoot {
        memory_bytes: 2 * GIB,
        initrd_len: Some(4096),
        cmdline: "",
    };
    // Every cut loses the certificate table's end or more: each is refused.
    for len in 0..k.len() {
        for header in [KernelHeader::QemuPatched, KernelHeader::AsFile] {
            assert!(
                rtmr1_log(&k[..len], &boot, header).is_err(),
                "length {len}, {header:?}"
            );
        }
    }
    let mut rng = XorShift(0xbad);
    for len in [0, 2, 64, 0x240, 4096, 65_536] {
        for _ in 0..50 {
            let mut bytes = rng.bytes(len);
            assert!(authenticode_sha384(&bytes).is_err());
            // Make it look like a PE and a bzImage so the deeper checks run on garbage.
            if len >= 0x240 {
                bytes[..2].copy_from_slice(b"MZ");
                bytes[0x202..0x206].copy_from_slice(b"HdrS");
                let pe = rng.next() as usize % len;
                bytes[0x3c..0x40].copy_from_slice(&(pe as u32).to_le_bytes());
                if pe + 4 <= len {
                    bytes[pe..pe + 4].copy_from_slice(b"PE\0\0");
                }
            }
            let _ = rtmr1_log(&bytes, &boot, KernelHeader::QemuPatched);
            let _ = rtmr1_log(&bytes, &boot, KernelHeader::AsFile);
        }
    }
}

// --- The whole image ----------------------------------------------------------------------

#[test]
fn measure_image_combines_the_three_registers() {
    let fw = firmware();
    let k = synthetic_kernel();
    let inputs = ImageInputs {
        firmware: &fw,
        kernel: &k,
        initrd: None,
        cmdline: &kata_cmdline(),
        memory_bytes: 2 * GIB,
        page_order: PageOrder::SinglePass,
        kernel_header: KernelHeader::QemuPatched,
    };
    let m = measure_image(&inputs).unwrap();
    assert_eq!(hex::encode(m.mr_td.value), MRTD_SINGLE_PASS);
    assert_eq!(hex::encode(m.rtmr2.value()), RTMR2_KATA);
    assert_eq!(m.rtmr1.events.len(), 5);

    let empty: &[u8] = &[];
    let err = measure_image(&ImageInputs {
        initrd: Some(empty),
        ..inputs
    })
    .unwrap_err();
    assert_eq!(err, MeasureError::EmptyInitrd);
    let err = measure_image(&ImageInputs {
        firmware: &fw[..1000],
        ..inputs
    })
    .unwrap_err();
    assert!(err.to_string().starts_with("firmware: "), "{err}");
    let err = measure_image(&ImageInputs {
        kernel: &fw,
        ..inputs
    })
    .unwrap_err();
    assert!(err.to_string().starts_with("kernel: "), "{err}");
}

/// A small deterministic generator for garbage inputs.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}
