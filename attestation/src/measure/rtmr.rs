//! RTMR arithmetic and RTMR2: the command line as the firmware passes it, then the initrd.
//!
//! Every RTMR starts at 48 zero bytes at TD creation, and each event extends it as
//! `RTMR = SHA-384(RTMR ‖ event digest)`. Only the event digests matter, not the event log
//! text: a register is the fold of its digests in order.
//!
//! RTMR2 (PCR 8-15 in the firmware's TPM mapping) of a direct kernel boot holds two
//! events, in this order: the kernel's load options, which OVMF builds from QEMU's
//! `-append` string and, when QEMU was given an initrd, the suffix ` initrd=initrd`, hashed
//! as UTF-16LE with a two-byte NUL terminator; then the SHA-384 of the initrd file. A boot
//! without an initrd has only the first event. Checked against an independent value (a
//! live Kata TDX quote, `tests/vectors/measure/`) for the command-line event; the initrd
//! event's digest and position follow dstack-mr and tinfoil's tdx-measure, and no
//! independent vector here covers them.
use ring::digest;

use super::{Digest48, MeasuredEvent, RtmrLog};

/// Longest command line accepted, in bytes (Linux on x86 keeps at most 2048; anything this
/// long is a mistake, not a command line).
pub const CMDLINE_LEN_MAX: usize = 64 * 1024;

/// What OVMF appends to the command line when QEMU passed an initrd.
pub const INITRD_SUFFIX: &str = " initrd=initrd";

/// A command line that QEMU and OVMF cannot pass as given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CmdlineError {
    /// QEMU passes the command line as a C string: a NUL byte would cut it short.
    #[error("kernel command line has a NUL character at byte {offset}: QEMU would cut it there")]
    Nul {
        /// Byte offset of the first NUL.
        offset: usize,
    },
    /// Longer than [`CMDLINE_LEN_MAX`].
    #[error("kernel command line is {len} bytes, at most {CMDLINE_LEN_MAX} accepted")]
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
}

/// SHA-384 of `bytes`.
pub fn sha384(bytes: &[u8]) -> Digest48 {
    let mut out = [0u8; 48];
    out.copy_from_slice(digest::digest(&digest::SHA384, bytes).as_ref());
    out
}

/// One extension: `SHA-384(old ‖ digest)`.
pub fn extend(old: &Digest48, event_digest: &Digest48) -> Digest48 {
    let mut ctx = digest::Context::new(&digest::SHA384);
    ctx.update(old);
    ctx.update(event_digest);
    let mut out = [0u8; 48];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// The register after extending 48 zero bytes with each digest in order.
pub fn replay<'a>(digests: impl IntoIterator<Item = &'a Digest48>) -> Digest48 {
    digests.into_iter().fold([0u8; 48], |mr, d| extend(&mr, d))
}

/// The command line the kernel receives from OVMF: QEMU's `-append` string, plus
/// [`INITRD_SUFFIX`] when there is an initrd.
pub fn firmware_cmdline(cmdline: &str, has_initrd: bool) -> Result<String, CmdlineError> {
    if let Some(offset) = cmdline.bytes().position(|b| b == 0) {
        return Err(CmdlineError::Nul { offset });
    }
    if cmdline.len() > CMDLINE_LEN_MAX {
        return Err(CmdlineError::TooLong { len: cmdline.len() });
    }
    let mut out = cmdline.to_owned();
    if has_initrd {
        out.push_str(INITRD_SUFFIX);
    }
    Ok(out)
}

/// Digest of the load-options event: SHA-384 of the UTF-16LE command line followed by a
/// two-byte NUL.
pub fn cmdline_event_digest(firmware_cmdline: &str) -> Digest48 {
    let mut utf16: Vec<u8> = firmware_cmdline
        .encode_utf16()
        .flat_map(u16::to_le_bytes)
        .collect();
    utf16.extend_from_slice(&[0, 0]);
    sha384(&utf16)
}

/// The RTMR2 events of a direct kernel boot with QEMU's `-append cmdline` and, if given,
/// `-initrd` (its bytes).
pub fn rtmr2_log(cmdline: &str, initrd: Option<&[u8]>) -> Result<RtmrLog, CmdlineError> {
    let passed = firmware_cmdline(cmdline, initrd.is_some())?;
    let mut events = vec![MeasuredEvent {
        what: format!(
            "kernel command line as OVMF passes it (UTF-16LE, NUL-terminated): {passed:?}"
        ),
        digest: cmdline_event_digest(&passed),
    }];
    if let Some(initrd) = initrd {
        events.push(MeasuredEvent {
            what: format!("initrd: SHA-384 of its {} bytes", initrd.len()),
            digest: sha384(initrd),
        });
    }
    Ok(RtmrLog { events })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extend_is_sha384_of_the_concatenation() {
        let d = sha384(b"event");
        let mut cat = vec![0u8; 48];
        cat.extend_from_slice(&d);
        assert_eq!(extend(&[0; 48], &d), sha384(&cat));
        assert_eq!(replay([&d]), sha384(&cat));
        assert_eq!(replay(std::iter::empty()), [0u8; 48]);
    }

    #[test]
    fn the_initrd_suffix_is_added_only_with_an_initrd() {
        assert_eq!(firmware_cmdline("ro", false).unwrap(), "ro");
        assert_eq!(firmware_cmdline("ro", true).unwrap(), "ro initrd=initrd");
        assert_eq!(
            firmware_cmdline("a\0b", false),
            Err(CmdlineError::Nul { offset: 1 })
        );
    }

    #[test]
    fn the_cmdline_event_hashes_utf16le_with_a_two_byte_nul() {
        assert_eq!(cmdline_event_digest("ab"), sha384(b"a\0b\0\0\0"));
        assert_ne!(cmdline_event_digest("ab"), sha384(b"a\0b\0"));
    }

    #[test]
    fn rtmr2_has_the_initrd_event_second() {
        let log = rtmr2_log("console=hvc0", Some(b"initrd bytes")).unwrap();
        assert_eq!(log.events.len(), 2);
        assert_eq!(
            log.events[0].digest,
            cmdline_event_digest("console=hvc0 initrd=initrd")
        );
        assert_eq!(log.events[1].digest, sha384(b"initrd bytes"));
        let without = rtmr2_log("console=hvc0", None).unwrap();
        assert_eq!(without.events.len(), 1);
        assert_ne!(log.value(), without.value());
    }
}
