//! RTMR1: the kernel as OVMF measures it in a QEMU direct kernel boot.
//!
//! Two steps. First, what the firmware reads is not quite the kernel file: QEMU
//! (`x86_load_linux`) patches the Linux setup header of a bzImage before it hands the
//! setup part to the firmware over fw_cfg ([`qemu_patch_setup_header`]). The patch writes
//! the loader type, the heap end, the command line address, the `vga=` mode if the command
//! line has one, and, with an initrd, the initrd address and size. The initrd address is the
//! highest page-aligned address below `initrd_max` that holds it, and `initrd_max` depends
//! on the memory below 4 GiB (q35: all of it up to 2 GiB, or 2 GiB when the guest has
//! 2.75 GiB or more) less QEMU's ACPI data: so RTMR1 depends on the initrd's size and the
//! memory size, not only on the kernel. QEMU versions that leave the header alone for
//! confidential guests, or firmware that reads QEMU's unpatched copy (`etc/boot/kernel`),
//! measure the file as it is: [`KernelHeader::AsFile`].
//!
//! Second, the hash: the PE/COFF Authenticode-style SHA-384 of EDK2's measured boot
//! (`MeasurePeImageAndExtend`, PE/COFF specification appendix A): the headers up to
//! `SizeOfHeaders` without the checksum field and the certificate-table directory entry,
//! then each section's raw data sorted by file offset, then any bytes after the last
//! section except the certificate table's size at the end. No padding is added (dstack-mr
//! pads the hashed data to a multiple of 8 bytes; for kernels whose size is a multiple of 8,
//! as bzImages and signed kernels are, both agree).
//!
//! RTMR1 then receives, after the kernel's digest, the EFI events OVMF logs to PCR 4 and
//! its separator before the kernel runs: the `EV_EFI_ACTION` "Calling EFI Application from
//! Boot Option", the `EV_SEPARATOR` (four zero bytes), and the `EV_EFI_ACTION`s "Exit Boot
//! Services Invocation" and "Exit Boot Services Returned with Success" (digests over the
//! ASCII text, no NUL), as dstack-mr and tinfoil's tdx-measure list them.
//!
//! NOT independently checked: no published RTMR1 of a known kernel is in
//! `tests/vectors/measure/`. The tests check the hash against byte ranges computed by hand
//! on a synthetic PE, and the patch against QEMU's arithmetic done by hand. Compare with a
//! real boot (`tessera measure --rtmr0-from-quote` reports whether RTMR1 matches the quote).
use std::ops::Range;

use ring::digest;

use super::rtmr::sha384;
use super::{read_array, read_u16, read_u32, Digest48, MeasuredEvent, RtmrLog};

/// QEMU's ACPI data size of the pc and q35 machine types (`acpi_data_size`, 0x20000 +
/// 0x8000 since QEMU 2.x): the top of low memory QEMU keeps out of the initrd's way.
pub const QEMU_ACPI_DATA_SIZE: u64 = 0x28000;
/// Largest initrd accepted (QEMU stores its size in 32 bits, and it must fit below 4 GiB).
pub const INITRD_LEN_MAX: u64 = u32::MAX as u64;

const SETUP_SECTS: usize = 0x1f1;
const VID_MODE: usize = 0x1fa;
const HEADER_MAGIC: usize = 0x202;
const PROTOCOL_VERSION: usize = 0x206;
const TYPE_OF_LOADER: usize = 0x210;
const LOADFLAGS: usize = 0x211;
const RAMDISK_IMAGE: usize = 0x218;
const RAMDISK_SIZE: usize = 0x21c;
const HEAP_END_PTR: usize = 0x224;
const CMD_LINE_PTR: usize = 0x228;
const INITRD_ADDR_MAX: usize = 0x22c;
const XLOADFLAGS: usize = 0x236;
const OLD_CMDLINE_MAGIC: usize = 0x20;
const OLD_CMDLINE_OFFSET: usize = 0x22;
/// loadflags: the protected-mode kernel is loaded at 1 MiB.
const LOADED_HIGH: u8 = 0x01;
/// loadflags: the loader set heap_end_ptr.
const CAN_USE_HEAP: u8 = 0x80;
/// xloadflags: the initrd may be anywhere below 4 GiB (and above).
const XLF_CAN_BE_LOADED_ABOVE_4G: u16 = 1 << 1;
/// QEMU's loader id (high nibble 0xB, revision 0).
const QEMU_LOADER_TYPE: u8 = 0xb0;

/// Whether the firmware sees the kernel with QEMU's setup-header patch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelHeader {
    /// QEMU patched the setup header ([`qemu_patch_setup_header`]).
    QemuPatched,
    /// The file as it is.
    AsFile,
}

impl KernelHeader {
    /// A short name for reports.
    pub fn as_str(self) -> &'static str {
        match self {
            KernelHeader::QemuPatched => "qemu-patched",
            KernelHeader::AsFile => "as-file",
        }
    }
}

/// The QEMU direct-boot parameters the setup-header patch depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirectBoot<'a> {
    /// Guest memory (`-m`), bytes.
    pub memory_bytes: u64,
    /// Length of the `-initrd` file, if any.
    pub initrd_len: Option<u64>,
    /// The `-append` string (without OVMF's ` initrd=initrd`).
    pub cmdline: &'a str,
}

/// A kernel that cannot be measured, naming the offset or field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KernelError {
    /// The image ends before a field it needs.
    #[error("kernel is {len} bytes: too short for {field} at offset {offset:#x}")]
    Truncated {
        /// The field.
        field: &'static str,
        /// Its offset.
        offset: u64,
        /// Image length.
        len: usize,
    },
    /// No "MZ" at offset 0.
    #[error(
        "kernel is not a PE image: expected the DOS magic \"MZ\" at offset 0, found {found:02x?}"
    )]
    NoDosMagic {
        /// The two bytes found.
        found: [u8; 2],
    },
    /// No "PE\0\0" where `e_lfanew` points.
    #[error("kernel is not a PE image: expected \"PE\\0\\0\" at offset {offset:#x} (e_lfanew), found {found:02x?}")]
    NoPeSignature {
        /// The offset e_lfanew gives.
        offset: u64,
        /// The four bytes found.
        found: [u8; 4],
    },
    /// Neither PE32 nor PE32+.
    #[error("PE optional header magic {magic:#06x} at offset {offset:#x} is neither PE32 (0x10b) nor PE32+ (0x20b)")]
    OptionalHeaderMagic {
        /// Offset of the magic.
        offset: u64,
        /// Magic found.
        magic: u16,
    },
    /// More than 16 data directories.
    #[error("PE NumberOfRvaAndSizes is {count}, at most 16")]
    TooManyDataDirectories {
        /// Declared count.
        count: u32,
    },
    /// SizeOfOptionalHeader disagrees with the data directory count.
    #[error(
        "PE SizeOfOptionalHeader is {declared} but {directories} data directories need {expected}"
    )]
    OptionalHeaderSize {
        /// Declared size.
        declared: u16,
        /// NumberOfRvaAndSizes.
        directories: u32,
        /// The size they need.
        expected: u64,
    },
    /// SizeOfHeaders does not hold the section table, or runs past the image.
    #[error("PE SizeOfHeaders {size_of_headers:#x} must cover the section table (ending at {table_end:#x}) and fit the {len}-byte image")]
    SizeOfHeaders {
        /// Declared SizeOfHeaders.
        size_of_headers: u32,
        /// End of the section table.
        table_end: u64,
        /// Image length.
        len: usize,
    },
    /// A section's raw data runs past the image.
    #[error("PE section {index}: raw data {offset:#x} + {size:#x} runs past the end of the {len}-byte image")]
    SectionPastEnd {
        /// Section index in the table.
        index: u16,
        /// PointerToRawData.
        offset: u32,
        /// SizeOfRawData.
        size: u32,
        /// Image length.
        len: usize,
    },
    /// The certificate table runs past the image.
    #[error(
        "PE certificate table {offset:#x} + {size:#x} runs past the end of the {len}-byte image"
    )]
    CertificateTablePastEnd {
        /// Its file offset.
        offset: u32,
        /// Its size.
        size: u32,
        /// Image length.
        len: usize,
    },
    /// More certificate table than bytes after the sections.
    #[error("PE certificate table of {size} bytes is larger than the {trailing} bytes after the last section")]
    CertificateTableTooLarge {
        /// Its size.
        size: u32,
        /// Bytes after the hashed sections.
        trailing: u64,
    },
    /// No Linux setup header: QEMU would not load it as a bzImage.
    #[error("kernel has no Linux setup header (\"HdrS\" at offset 0x202, found {found:02x?}): not a bzImage QEMU boots this way")]
    NoSetupHeader {
        /// The four bytes found.
        found: [u8; 4],
    },
    /// Boot protocol before 2.00 cannot take an initrd.
    #[error(
        "Linux boot protocol {version:#06x} is older than 2.00: QEMU cannot pass it an initrd"
    )]
    ProtocolTooOldForInitrd {
        /// Protocol version.
        version: u16,
    },
    /// setup_sects says the setup part is longer than the file.
    #[error("setup_sects {setup_sects} gives a {setup_len}-byte setup part, longer than the {len}-byte kernel")]
    SetupPastEnd {
        /// setup_sects (0 means 4).
        setup_sects: u8,
        /// Setup length it gives.
        setup_len: u64,
        /// Image length.
        len: usize,
    },
    /// The memory leaves no room below 4 GiB.
    #[error("{memory_bytes} bytes of memory leave no room for QEMU's {QEMU_ACPI_DATA_SIZE:#x} bytes of ACPI data")]
    MemoryTooSmall {
        /// Guest memory.
        memory_bytes: u64,
    },
    /// The initrd does not fit below initrd_max (QEMU refuses to start).
    #[error("initrd of {initrd_len} bytes does not fit below initrd_max {initrd_max:#x} (memory {memory_bytes} bytes): QEMU refuses it")]
    InitrdTooLarge {
        /// Initrd length.
        initrd_len: u64,
        /// The limit QEMU computes.
        initrd_max: u32,
        /// Guest memory.
        memory_bytes: u64,
    },
    /// A `vga=` value QEMU does not parse (QEMU refuses to start).
    #[error("command line has vga={value:?}, which QEMU refuses (normal, ext, ask or a number)")]
    VgaParameter {
        /// The text after `vga=`, up to the next space.
        value: String,
    },
}

/// The q35 machine's memory below 4 GiB for `memory_bytes` of RAM (`pc_q35_init`: the
/// split is at 2 GiB when RAM reaches 2.75 GiB, else at 2.75 GiB).
pub fn q35_below_4g_mem_size(memory_bytes: u64) -> u64 {
    let lowmem = if memory_bytes >= 0xb000_0000 {
        0x8000_0000
    } else {
        0xb000_0000
    };
    memory_bytes.min(lowmem)
}

/// The kernel file with the setup-header fields QEMU's `x86_load_linux` writes for a
/// direct boot with `boot`. Fields outside the setup header are untouched.
pub fn qemu_patch_setup_header(kernel: &[u8], boot: &DirectBoot) -> Result<Vec<u8>, KernelError> {
    let found: [u8; 4] = read_array(kernel, HEADER_MAGIC).ok_or(KernelError::Truncated {
        field: "the Linux setup header",
        offset: HEADER_MAGIC as u64,
        len: kernel.len(),
    })?;
    if &found != b"HdrS" {
        return Err(KernelError::NoSetupHeader { found });
    }
    let protocol = read_u16(kernel, PROTOCOL_VERSION).ok_or(KernelError::Truncated {
        field: "the boot protocol version",
        offset: PROTOCOL_VERSION as u64,
        len: kernel.len(),
    })?;
    // QEMU hands the firmware `setup_len` bytes of setup (patched) and the rest: the setup
    // part must be in the file, and it holds every field patched below.
    let setup_sects = kernel.get(SETUP_SECTS).copied().unwrap_or(0);
    let setup_len = (u64::from(if setup_sects == 0 { 4 } else { setup_sects }) + 1) * 512;
    if setup_len > kernel.len() as u64 {
        return Err(KernelError::SetupPastEnd {
            setup_sects,
            setup_len,
            len: kernel.len(),
        });
    }
    let mut out = kernel.to_vec();
    let loadflags = out.get(LOADFLAGS).copied().unwrap_or(0);
    // QEMU computes addresses in 64 bits and stores the low 16 or 32: wrapping arithmetic
    // on u32 gives the same stored bytes.
    let cmdline_size = ((boot.cmdline.len() + 16) & !15) as u32;
    let low_cmdline_addr = 0x9a000u32.wrapping_sub(cmdline_size);
    let (real_addr, cmdline_addr): (u32, u32) = if protocol < 0x200 || loadflags & LOADED_HIGH == 0
    {
        // A "low" kernel (zImage).
        (0x90000, low_cmdline_addr)
    } else if protocol < 0x202 {
        // High but before 2.02.
        (0x90000, low_cmdline_addr)
    } else {
        (0x10000, 0x20000)
    };
    let mut initrd_max: u32 =
        if protocol >= 0x20c && le_u16(&out, XLOADFLAGS) & XLF_CAN_BE_LOADED_ABOVE_4G != 0 {
            u32::MAX
        } else if protocol >= 0x203 {
            le_u32(&out, INITRD_ADDR_MAX)
        } else {
            0x37ff_ffff
        };
    let below_4g = q35_below_4g_mem_size(boot.memory_bytes);
    let usable = below_4g
        .checked_sub(QEMU_ACPI_DATA_SIZE)
        .filter(|&u| u > 0)
        .ok_or(KernelError::MemoryTooSmall {
            memory_bytes: boot.memory_bytes,
        })?;
    if u64::from(initrd_max) >= usable {
        // `usable` is at most 2.75 GiB: the cast is exact.
        initrd_max = (usable - 1) as u32;
    }
    if protocol >= 0x202 {
        put(&mut out, CMD_LINE_PTR, &cmdline_addr.to_le_bytes());
    } else {
        put(&mut out, OLD_CMDLINE_MAGIC, &0xa33fu16.to_le_bytes());
        put(
            &mut out,
            OLD_CMDLINE_OFFSET,
            &(cmdline_addr.wrapping_sub(real_addr) as u16).to_le_bytes(),
        );
    }
    if let Some(mode) = vga_mode(boot.cmdline)? {
        put(&mut out, VID_MODE, &mode.to_le_bytes());
    }
    if protocol >= 0x200 {
        put(&mut out, TYPE_OF_LOADER, &[QEMU_LOADER_TYPE]);
    }
    if protocol >= 0x201 {
        put(&mut out, LOADFLAGS, &[loadflags | CAN_USE_HEAP]);
        let heap_end = cmdline_addr.wrapping_sub(real_addr).wrapping_sub(0x200) as u16;
        put(&mut out, HEAP_END_PTR, &heap_end.to_le_bytes());
    }
    if let Some(initrd_len) = boot.initrd_len {
        if protocol < 0x200 {
            return Err(KernelError::ProtocolTooOldForInitrd { version: protocol });
        }
        if initrd_len >= u64::from(initrd_max) {
            return Err(KernelError::InitrdTooLarge {
                initrd_len,
                initrd_max,
                memory_bytes: boot.memory_bytes,
            });
        }
        // initrd_len < initrd_max <= u32::MAX: the cast is exact.
        let initrd_len = initrd_len as u32;
        let initrd_addr = (initrd_max - initrd_len) & !4095;
        put(&mut out, RAMDISK_IMAGE, &initrd_addr.to_le_bytes());
        put(&mut out, RAMDISK_SIZE, &initrd_len.to_le_bytes());
    }
    Ok(out)
}

/// QEMU's reading of the first `vga=` in the command line (`strstr`, so it also matches
/// inside a longer word), as the 16-bit video mode it stores.
fn vga_mode(cmdline: &str) -> Result<Option<u16>, KernelError> {
    let Some(at) = cmdline.find("vga=") else {
        return Ok(None);
    };
    let rest = &cmdline[at + 4..];
    let value = rest.split(' ').next().unwrap_or("");
    for (name, mode) in [("normal", 0xffff), ("ext", 0xfffe), ("ask", 0xfffd)] {
        if rest.starts_with(name) {
            return Ok(Some(mode));
        }
    }
    let bad = || KernelError::VgaParameter {
        value: value.to_owned(),
    };
    let (digits, radix) = if let Some(hex) = value
        .strip_prefix("0x")
        .or_else(|| value.strip_prefix("0X"))
    {
        (hex, 16)
    } else if value.len() > 1 && value.starts_with('0') {
        (&value[1..], 8)
    } else {
        (value, 10)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return Err(bad());
    }
    let mode = u32::from_str_radix(digits, radix).map_err(|_| bad())?;
    Ok(Some(mode as u16))
}

fn le_u16(bytes: &[u8], at: usize) -> u16 {
    read_u16(bytes, at).unwrap_or(0)
}

fn le_u32(bytes: &[u8], at: usize) -> u32 {
    read_u32(bytes, at).unwrap_or(0)
}

/// Writes `value` at `at`. Callers only write inside the setup part, whose length was checked.
fn put(out: &mut [u8], at: usize, value: &[u8]) {
    if let Some(dst) = out.get_mut(at..at + value.len()) {
        dst.copy_from_slice(value);
    }
}

/// The byte ranges of `image` that its Authenticode-style hash covers, in hashing order.
pub fn authenticode_ranges(image: &[u8]) -> Result<Vec<Range<usize>>, KernelError> {
    let len = image.len();
    let truncated = |field: &'static str, offset: usize| KernelError::Truncated {
        field,
        offset: offset as u64,
        len,
    };
    let dos: [u8; 2] = read_array(image, 0).ok_or(truncated("the DOS header", 0))?;
    if &dos != b"MZ" {
        return Err(KernelError::NoDosMagic { found: dos });
    }
    let pe = read_u32(image, 0x3c).ok_or(truncated("e_lfanew", 0x3c))? as usize;
    let signature: [u8; 4] = read_array(image, pe).ok_or(truncated("the PE signature", pe))?;
    if &signature != b"PE\0\0" {
        return Err(KernelError::NoPeSignature {
            offset: pe as u64,
            found: signature,
        });
    }
    let coff = pe + 4;
    let sections = read_u16(image, coff + 2).ok_or(truncated("NumberOfSections", coff + 2))?;
    let optional_len =
        read_u16(image, coff + 16).ok_or(truncated("SizeOfOptionalHeader", coff + 16))?;
    let optional = coff + 20;
    let magic = read_u16(image, optional).ok_or(truncated("the optional header", optional))?;
    let (rva_count_at, directories_at) = match magic {
        0x10b => (optional + 92, optional + 96),
        0x20b => (optional + 108, optional + 112),
        _ => {
            return Err(KernelError::OptionalHeaderMagic {
                offset: optional as u64,
                magic,
            })
        }
    };
    let checksum_at = optional + 64;
    let size_of_headers =
        read_u32(image, optional + 60).ok_or(truncated("SizeOfHeaders", optional + 60))?;
    let directories =
        read_u32(image, rva_count_at).ok_or(truncated("NumberOfRvaAndSizes", rva_count_at))?;
    if directories > 16 {
        return Err(KernelError::TooManyDataDirectories { count: directories });
    }
    let expected = (directories_at - optional) as u64 + 8 * u64::from(directories);
    if u64::from(optional_len) != expected {
        return Err(KernelError::OptionalHeaderSize {
            declared: optional_len,
            directories,
            expected,
        });
    }
    let table = optional + usize::from(optional_len);
    let table_end = table + 40 * usize::from(sections);
    let headers_end = size_of_headers as usize;
    if headers_end < table_end || headers_end > len {
        return Err(KernelError::SizeOfHeaders {
            size_of_headers,
            table_end: table_end as u64,
            len,
        });
    }
    // Security directory (index 4): the certificate table.
    let security_at = directories_at + 4 * 8;
    let (cert_offset, cert_size) = if directories > 4 {
        (le_u32(image, security_at), le_u32(image, security_at + 4))
    } else {
        (0, 0)
    };
    if cert_size != 0 && u64::from(cert_offset) + u64::from(cert_size) > len as u64 {
        return Err(KernelError::CertificateTablePastEnd {
            offset: cert_offset,
            size: cert_size,
            len,
        });
    }

    // The optional header (at least 96 bytes, checked above) holds the checksum and the
    // directories, and the section table after it ends within SizeOfHeaders: the header
    // ranges below are in order and inside the image.
    let mut ranges = Vec::with_capacity(4 + usize::from(sections));
    ranges.push(0..checksum_at);
    if directories > 4 {
        ranges.push(checksum_at + 4..security_at);
        ranges.push(security_at + 8..headers_end);
    } else {
        ranges.push(checksum_at + 4..headers_end);
    }
    let mut raw: Vec<(u32, u32, u16)> = Vec::with_capacity(usize::from(sections));
    for index in 0..sections {
        let at = table + 40 * usize::from(index);
        let size = le_u32(image, at + 16);
        let offset = le_u32(image, at + 20);
        if size == 0 {
            continue;
        }
        if u64::from(offset) + u64::from(size) > len as u64 {
            return Err(KernelError::SectionPastEnd {
                index,
                offset,
                size,
                len,
            });
        }
        raw.push((offset, size, index));
    }
    // Stable: sections at the same offset keep their table order, as in EDK2.
    raw.sort_by_key(|&(offset, _, _)| offset);
    let mut hashed = u64::from(size_of_headers);
    for (offset, size, _) in raw {
        ranges.push(offset as usize..offset as usize + size as usize);
        hashed += u64::from(size);
    }
    let len64 = len as u64;
    if len64 > hashed {
        let cert = u64::from(cert_size);
        if len64 > hashed + cert {
            // hashed < len - cert <= len: both fit usize.
            ranges.push(hashed as usize..(len64 - cert) as usize);
        } else if len64 < hashed + cert {
            return Err(KernelError::CertificateTableTooLarge {
                size: cert_size,
                trailing: len64 - hashed,
            });
        }
    }
    Ok(ranges)
}

/// The Authenticode-style SHA-384 of a PE image, as EDK2 measures it.
pub fn authenticode_sha384(image: &[u8]) -> Result<Digest48, KernelError> {
    let mut ctx = digest::Context::new(&digest::SHA384);
    for range in authenticode_ranges(image)? {
        // authenticode_ranges only returns ranges inside the image.
        if let Some(bytes) = image.get(range) {
            ctx.update(bytes);
        }
    }
    let mut out = [0u8; 48];
    out.copy_from_slice(ctx.finish().as_ref());
    Ok(out)
}

/// The EFI events OVMF extends RTMR1 with after the kernel image, in order.
pub const OVMF_RTMR1_EVENTS: [(&str, &[u8]); 4] = [
    (
        "EV_EFI_ACTION \"Calling EFI Application from Boot Option\"",
        b"Calling EFI Application from Boot Option",
    ),
    ("EV_SEPARATOR (4 zero bytes)", &[0, 0, 0, 0]),
    (
        "EV_EFI_ACTION \"Exit Boot Services Invocation\"",
        b"Exit Boot Services Invocation",
    ),
    (
        "EV_EFI_ACTION \"Exit Boot Services Returned with Success\"",
        b"Exit Boot Services Returned with Success",
    ),
];

/// The RTMR1 events of a direct boot of `kernel`.
pub fn rtmr1_log(
    kernel: &[u8],
    boot: &DirectBoot,
    header: KernelHeader,
) -> Result<RtmrLog, KernelError> {
    let (digest, what) = match header {
        KernelHeader::QemuPatched => (
            authenticode_sha384(&qemu_patch_setup_header(kernel, boot)?)?,
            format!(
                "kernel (EV_EFI_BOOT_SERVICES_APPLICATION): Authenticode SHA-384 after QEMU's setup-header patch (memory {} bytes, initrd {})",
                boot.memory_bytes,
                boot.initrd_len
                    .map_or("none".to_owned(), |n| format!("{n} bytes"))
            ),
        ),
        KernelHeader::AsFile => (
            authenticode_sha384(kernel)?,
            "kernel (EV_EFI_BOOT_SERVICES_APPLICATION): Authenticode SHA-384 of the file as it is"
                .to_owned(),
        ),
    };
    let mut events = vec![MeasuredEvent { what, digest }];
    events.extend(OVMF_RTMR1_EVENTS.iter().map(|(what, data)| MeasuredEvent {
        what: (*what).to_owned(),
        digest: sha384(data),
    }));
    Ok(RtmrLog { events })
}

#[cfg(test)]
mod tests;
