//! Offline measurement of a TD image (architecture.md §4.5): the MRTD, RTMR1 and RTMR2 a TDX guest
//! will report when QEMU boots it with a TDVF (TDX OVMF) firmware by direct kernel boot
//! (`-bios F -kernel K -initrd I -append C`), computed from the files alone, without TDX
//! hardware, so a policy can pin them before the image ever runs.
//!
//! It owns the arithmetic of the three registers the image decides:
//! - [`tdvf`]: MRTD, from the firmware's TDVF metadata (the pages QEMU adds to the TD and the
//!   ones it measures), in either page order ([`PageOrder`]);
//! - [`kernel`]: RTMR1, the kernel's Authenticode-style PE hash after QEMU's setup-header
//!   patch (which makes it depend on the initrd's size and the memory size), then the EFI
//!   boot events OVMF logs;
//! - [`rtmr`]: the RTMR extend rule, and RTMR2: the command line as OVMF passes it, then the
//!   initrd.
//!
//! Not here: RTMR0 (firmware configuration: ACPI tables, memory map, CPU count, boot
//! variables) depends on the host's QEMU and machine shape. It is not computed from ACPI
//! tables; a policy takes it from the quote of a real boot of the same image on the same
//! host shape (`tessera measure --rtmr0-from-quote`) or leaves it open. RTMR3 is zero at
//! boot. MRCONFIGID, MROWNER and MROWNERCONFIG are set by the host at launch, not by the
//! image.
//!
//! IO contract: bytes in, digests out. No file system, clock or randomness: the caller
//! reads the files. Firmware, kernel, initrd and command line are untrusted input; a
//! malformed one is a typed error that names the offset or field at fault, never a panic.
//!
//! Verified against independent values (`tests/vectors/measure/`): MRTD in both page orders
//! and the command-line event of RTMR2. Not independently verified: RTMR1 (the PE hash and
//! the setup-header patch are checked against hand-computed byte ranges and QEMU's
//! arithmetic, on synthetic images) and RTMR2's initrd event.
pub mod kernel;
pub mod rtmr;
pub mod tdvf;

pub use kernel::{DirectBoot, KernelError, KernelHeader};
pub use rtmr::CmdlineError;
pub use tdvf::{Mrtd, PageOrder, TdvfError};

/// A SHA-384 digest or a 48-byte measurement register.
pub type Digest48 = [u8; 48];

/// One event extended into an RTMR.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeasuredEvent {
    /// What it measures, for people.
    pub what: String,
    /// The digest extended.
    pub digest: Digest48,
}

/// The events of one RTMR, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RtmrLog {
    /// Events in extension order.
    pub events: Vec<MeasuredEvent>,
}

impl RtmrLog {
    /// The register: 48 zero bytes extended with each event's digest.
    pub fn value(&self) -> Digest48 {
        rtmr::replay(self.events.iter().map(|e| &e.digest))
    }
}

/// What the measured boot is made of.
#[derive(Clone, Copy, Debug)]
pub struct ImageInputs<'a> {
    /// The TDVF firmware image (`-bios`).
    pub firmware: &'a [u8],
    /// The kernel (`-kernel`), a bzImage with an EFI stub.
    pub kernel: &'a [u8],
    /// The initrd (`-initrd`), if any.
    pub initrd: Option<&'a [u8]>,
    /// The command line (`-append`), without OVMF's ` initrd=initrd`.
    pub cmdline: &'a str,
    /// Guest memory (`-m`), bytes.
    pub memory_bytes: u64,
    /// The VMM's page order for MRTD.
    pub page_order: PageOrder,
    /// Whether the firmware sees QEMU's patched setup header.
    pub kernel_header: KernelHeader,
}

/// The registers the image decides, with their event logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageMeasurements {
    /// MRTD and what went into it.
    pub mr_td: Mrtd,
    /// RTMR1 (kernel).
    pub rtmr1: RtmrLog,
    /// RTMR2 (command line, initrd).
    pub rtmr2: RtmrLog,
}

/// An image that cannot be measured, by the input at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MeasureError {
    /// The firmware.
    #[error("firmware: {0}")]
    Firmware(#[from] TdvfError),
    /// The kernel (or the boot parameters its setup-header patch depends on).
    #[error("kernel: {0}")]
    Kernel(#[from] KernelError),
    /// The command line.
    #[error("command line: {0}")]
    Cmdline(#[from] CmdlineError),
    /// An empty initrd: QEMU would pass none, so the firmware would not add ` initrd=initrd`
    /// and nothing would be measured for it. Give no initrd instead.
    #[error("initrd: the file is empty (QEMU would pass no initrd; omit it)")]
    EmptyInitrd,
    /// Larger than [`kernel::INITRD_LEN_MAX`].
    #[error("initrd: {len} bytes, at most {} accepted", kernel::INITRD_LEN_MAX)]
    InitrdTooLong {
        /// Its length.
        len: u64,
    },
}

/// MRTD, RTMR1 and RTMR2 of a direct kernel boot of `inputs`.
pub fn measure_image(inputs: &ImageInputs) -> Result<ImageMeasurements, MeasureError> {
    let initrd_len = match inputs.initrd {
        Some([]) => return Err(MeasureError::EmptyInitrd),
        Some(bytes) if bytes.len() as u64 > kernel::INITRD_LEN_MAX => {
            return Err(MeasureError::InitrdTooLong {
                len: bytes.len() as u64,
            })
        }
        Some(bytes) => Some(bytes.len() as u64),
        None => None,
    };
    let rtmr2 = rtmr::rtmr2_log(inputs.cmdline, inputs.initrd)?;
    let mr_td = tdvf::mrtd(inputs.firmware, inputs.page_order)?;
    let boot = DirectBoot {
        memory_bytes: inputs.memory_bytes,
        initrd_len,
        cmdline: inputs.cmdline,
    };
    let rtmr1 = kernel::rtmr1_log(inputs.kernel, &boot, inputs.kernel_header)?;
    Ok(ImageMeasurements {
        mr_td,
        rtmr1,
        rtmr2,
    })
}

pub(crate) fn read_array<const N: usize>(bytes: &[u8], at: usize) -> Option<[u8; N]> {
    bytes.get(at..at.checked_add(N)?)?.try_into().ok()
}

pub(crate) fn read_u16(bytes: &[u8], at: usize) -> Option<u16> {
    read_array(bytes, at).map(u16::from_le_bytes)
}

pub(crate) fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    read_array(bytes, at).map(u32::from_le_bytes)
}

pub(crate) fn read_u64(bytes: &[u8], at: usize) -> Option<u64> {
    read_array(bytes, at).map(u64::from_le_bytes)
}
