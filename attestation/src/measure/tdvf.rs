//! MRTD from a TDVF (TDX-capable OVMF) image: the metadata that says which pages QEMU adds
//! to the TD before it starts, and the hash the TDX module builds while it adds them.
//!
//! Finding the metadata: OVMF ends with a GUID table read backwards from the end of the
//! image. The last 32 bytes are the reset vector area; just before them is the table
//! footer GUID `96b582de-1fb2-45f7-baea-a366c55a082d`, preceded by the table's total length
//! (u16, footer entry included). Each entry, read backwards, is `data ‖ u16 length ‖ GUID`,
//! the length covering all three. The entry with GUID
//! `e47a6535-984a-4798-865e-4685a7bf8ec2` holds a u32: the metadata's distance from the end
//! of the image. The metadata is the descriptor `"TDVF" ‖ u32 length ‖ u32 version (1) ‖
//! u32 section count` followed by 32-byte sections `u32 data offset ‖ u32 raw size ‖
//! u64 guest physical address ‖ u64 memory size ‖ u32 type ‖ u32 attributes`.
//!
//! Measuring: for each section in metadata order, each 4 KiB page of its memory range is
//! added with TDH.MEM.PAGE.ADD, which extends MRTD by a 128-byte block `"MEM.PAGE.ADD"`
//! (zero padded to 16 bytes) ‖ GPA (u64 LE) ‖ 104 zero bytes, unless the section has the
//! PAGE.AUG attribute (its pages are accepted later by the guest and not measured). Pages of
//! a section with the EXTENDMR attribute are also measured with TDH.MR.EXTEND, in 256-byte
//! chunks: a 128-byte block `"MR.EXTEND"` (zero padded to 16) ‖ chunk GPA ‖ zeros, then the
//! 256 bytes of the chunk. MRTD is the SHA-384 of all these blocks in order ([`PageOrder`]
//! says which order). EXTENDMR is only accepted on sections whose memory is copied from the
//! image (BFV, CFV): QEMU takes their page contents from the image at the data offset.
//!
//! Checked against independent values: MRTD of `tests/vectors/measure/synthetic_tdvf_2MiB.fd`
//! in both orders (README there).
use ring::digest;

use super::{read_array, read_u16, read_u32, read_u64, Digest48};

/// Page size of TDH.MEM.PAGE.ADD.
pub const PAGE_LEN: u64 = 4096;
/// Granularity of TDH.MR.EXTEND.
pub const EXTEND_CHUNK_LEN: usize = 256;
/// Most sections accepted in the metadata (OVMF has fewer than ten).
pub const SECTIONS_MAX: u32 = 64;
/// Most pages measured over all sections (1 GiB): bounds the work on a hostile image.
pub const MEASURED_PAGES_MAX: u64 = 1 << 18;
/// Bytes after the OVMF GUID table footer (the reset vector area).
const BYTES_AFTER_TABLE_FOOTER: usize = 32;
/// An entry's u16 length and GUID.
const ENTRY_TAIL_LEN: usize = 18;
/// `96b582de-1fb2-45f7-baea-a366c55a082d` in its on-disk (mixed-endian) form.
pub const TABLE_FOOTER_GUID: [u8; 16] = guid_bytes(
    0x96b5_82de,
    0x1fb2,
    0x45f7,
    [0xba, 0xea, 0xa3, 0x66, 0xc5, 0x5a, 0x08, 0x2d],
);
/// `e47a6535-984a-4798-865e-4685a7bf8ec2`: the TDX metadata offset entry.
pub const METADATA_OFFSET_GUID: [u8; 16] = guid_bytes(
    0xe47a_6535,
    0x984a,
    0x4798,
    [0x86, 0x5e, 0x46, 0x85, 0xa7, 0xbf, 0x8e, 0xc2],
);
const DESCRIPTOR_LEN: usize = 16;
const SECTION_LEN: usize = 32;
/// Section attribute: measure the contents with TDH.MR.EXTEND.
pub const ATTRIBUTE_EXTENDMR: u32 = 0x1;
/// Section attribute: the pages are added later by the guest (TDH.MEM.PAGE.AUG), unmeasured.
pub const ATTRIBUTE_PAGE_AUG: u32 = 0x2;

const fn guid_bytes(a: u32, b: u16, c: u16, d: [u8; 8]) -> [u8; 16] {
    let a = a.to_le_bytes();
    let b = b.to_le_bytes();
    let c = c.to_le_bytes();
    [
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5], d[6],
        d[7],
    ]
}

/// In which order the pages of a section are added and extended. Both give the same pages
/// and chunks; the VMM's (QEMU and KVM versions) order decides MRTD.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageOrder {
    /// Each page is added, then its chunks are extended, page after page, in metadata order
    /// (the order of Google's gce-tcb-verifier reference value).
    SinglePass,
    /// For each section in metadata order: all its pages are added, then all its chunks are
    /// extended (dstack-mr's "two pass").
    TwoPass,
}

impl PageOrder {
    /// A short name for reports.
    pub fn as_str(self) -> &'static str {
        match self {
            PageOrder::SinglePass => "single-pass",
            PageOrder::TwoPass => "two-pass",
        }
    }
}

/// The kind of memory a section describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SectionType {
    /// Boot firmware volume (code), copied from the image.
    Bfv,
    /// Configuration firmware volume (UEFI variables), copied from the image.
    Cfv,
    /// The TD HOB, built by the VMM.
    TdHob,
    /// Temporary memory, zero.
    TempMem,
}

impl SectionType {
    fn from_u32(value: u32) -> Option<SectionType> {
        match value {
            0 => Some(SectionType::Bfv),
            1 => Some(SectionType::Cfv),
            2 => Some(SectionType::TdHob),
            3 => Some(SectionType::TempMem),
            _ => None,
        }
    }

    fn copied_from_image(self) -> bool {
        matches!(self, SectionType::Bfv | SectionType::Cfv)
    }
}

/// One validated section of the TDVF metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Section {
    /// Offset of its data in the image.
    pub data_offset: u32,
    /// Bytes of data in the image.
    pub raw_data_size: u32,
    /// Guest physical address (page aligned).
    pub memory_address: u64,
    /// Bytes of guest memory (page aligned).
    pub memory_data_size: u64,
    /// Kind of memory.
    pub kind: SectionType,
    /// Attribute bits ([`ATTRIBUTE_EXTENDMR`], [`ATTRIBUTE_PAGE_AUG`]).
    pub attributes: u32,
}

impl Section {
    fn pages(&self) -> u64 {
        self.memory_data_size / PAGE_LEN
    }
    fn added(&self) -> bool {
        self.attributes & ATTRIBUTE_PAGE_AUG == 0
    }
    fn extended(&self) -> bool {
        self.attributes & ATTRIBUTE_EXTENDMR != 0
    }
}

/// What is wrong with a section (see [`TdvfError::Section`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SectionProblem {
    /// A type other than BFV (0), CFV (1), TD_HOB (2), TEMP_MEM (3).
    #[error("type {0} is not one QEMU loads (BFV 0, CFV 1, TD_HOB 2, TEMP_MEM 3)")]
    UnknownType(u32),
    /// Attribute bits other than EXTENDMR and PAGE.AUG.
    #[error("unknown attribute bits {0:#x}")]
    UnknownAttributes(u32),
    /// Both EXTENDMR and PAGE.AUG: a page cannot be extended without being added.
    #[error("both EXTENDMR and PAGE.AUG are set")]
    ExtendAndAug,
    /// EXTENDMR on memory that does not come from the image.
    #[error("EXTENDMR on a {0:?} section, whose contents are not in the image")]
    ExtendNotFromImage(SectionType),
    /// The memory address is not page aligned.
    #[error("memory address {0:#x} is not 4 KiB aligned")]
    AddressNotAligned(u64),
    /// The memory size is not a multiple of the page size.
    #[error("memory size {0:#x} is not a multiple of 4 KiB")]
    SizeNotAligned(u64),
    /// The memory range wraps around the address space.
    #[error("memory range {address:#x} + {size:#x} overflows")]
    AddressOverflow {
        /// Memory address.
        address: u64,
        /// Memory size.
        size: u64,
    },
    /// More raw data than memory.
    #[error("raw data size {raw:#x} is larger than the memory size {memory:#x}")]
    RawLargerThanMemory {
        /// Raw data size.
        raw: u32,
        /// Memory size.
        memory: u64,
    },
    /// A BFV or CFV without data, or a TD_HOB / TEMP_MEM with data.
    #[error("raw data size {raw:#x} does not suit a {kind:?} section")]
    RawSizeForType {
        /// Raw data size.
        raw: u32,
        /// Section type.
        kind: SectionType,
    },
    /// The section's bytes in the image (raw data, or the whole memory size when measured
    /// with EXTENDMR) run past the end of the image.
    #[error("image bytes {offset:#x} + {len:#x} run past the end of the {image_len}-byte image")]
    DataPastEnd {
        /// Data offset.
        offset: u64,
        /// Bytes needed from there.
        len: u64,
        /// Image length.
        image_len: usize,
    },
}

/// A firmware image whose TDVF metadata cannot be found or is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TdvfError {
    /// Too short to hold the GUID table footer.
    #[error("firmware image is {len} bytes: too short for an OVMF GUID table")]
    TooShort {
        /// Image length.
        len: usize,
    },
    /// No OVMF GUID table footer where it belongs.
    #[error("no OVMF GUID table: expected the footer GUID 96b582de-1fb2-45f7-baea-a366c55a082d at offset {offset:#x}")]
    NoGuidTable {
        /// Where the footer GUID was expected.
        offset: usize,
    },
    /// The table's total length does not fit the image.
    #[error("OVMF GUID table length {len} (at offset {offset:#x}) does not fit the image")]
    GuidTableLength {
        /// Offset of the length field.
        offset: usize,
        /// Declared length.
        len: u16,
    },
    /// An entry's length is shorter than its own tail or longer than the rest of the table.
    #[error("OVMF GUID table entry ending at offset {end:#x} declares length {len}, which does not fit the table")]
    GuidEntryLength {
        /// Offset (in the image) just past the entry.
        end: usize,
        /// Declared length.
        len: u16,
    },
    /// No TDX metadata offset entry in the table: not a TDX firmware.
    #[error("no TDX metadata offset entry (GUID e47a6535-984a-4798-865e-4685a7bf8ec2) in the OVMF GUID table: not a TDVF image")]
    NoMetadataOffset,
    /// The metadata offset entry holds fewer than 4 bytes.
    #[error("TDX metadata offset entry holds {len} bytes, expected 4")]
    MetadataOffsetEntryLength {
        /// Its data length.
        len: usize,
    },
    /// The metadata offset points outside the image.
    #[error(
        "TDVF metadata offset {from_end:#x} from the end does not fit the {image_len}-byte image"
    )]
    MetadataOffset {
        /// Distance from the end of the image.
        from_end: u32,
        /// Image length.
        image_len: usize,
    },
    /// The descriptor does not start with "TDVF".
    #[error("TDVF descriptor at offset {offset:#x}: signature {found:02x?}, expected \"TDVF\"")]
    Signature {
        /// Descriptor offset.
        offset: usize,
        /// The four bytes found.
        found: [u8; 4],
    },
    /// A descriptor version other than 1.
    #[error("TDVF descriptor at offset {offset:#x}: version {found}, only 1 is known")]
    Version {
        /// Descriptor offset.
        offset: usize,
        /// Version found.
        found: u32,
    },
    /// More sections than [`SECTIONS_MAX`].
    #[error("TDVF descriptor declares {count} sections, at most {SECTIONS_MAX} accepted")]
    TooManySections {
        /// Declared count.
        count: u32,
    },
    /// The descriptor's length does not cover its sections, or the sections run past the
    /// end of the image.
    #[error("TDVF descriptor at offset {offset:#x}: length {declared} for {count} sections (needs {needed}) in a {image_len}-byte image")]
    DescriptorLength {
        /// Descriptor offset.
        offset: usize,
        /// Declared length.
        declared: u32,
        /// Section count.
        count: u32,
        /// Bytes the descriptor and its sections need.
        needed: u64,
        /// Image length.
        image_len: usize,
    },
    /// A malformed section.
    #[error("TDVF section {index} (at offset {offset:#x}): {problem}")]
    Section {
        /// Index in metadata order.
        index: u32,
        /// Offset of its entry in the image.
        offset: usize,
        /// What is wrong.
        problem: SectionProblem,
    },
    /// The sections measure more than [`MEASURED_PAGES_MAX`] pages.
    #[error("TDVF sections measure more than {MEASURED_PAGES_MAX} pages")]
    TooManyPages,
}

/// The validated TDVF metadata of an image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TdvfMetadata {
    /// Offset of the descriptor in the image.
    pub offset: usize,
    /// Sections in metadata order.
    pub sections: Vec<Section>,
}

/// MRTD with what went into it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mrtd {
    /// The register.
    pub value: Digest48,
    /// Sections in the metadata.
    pub sections: usize,
    /// Pages added (TDH.MEM.PAGE.ADD).
    pub pages_added: u64,
    /// 256-byte chunks extended (TDH.MR.EXTEND).
    pub chunks_extended: u64,
}

impl TdvfMetadata {
    /// Finds and validates the TDVF metadata of `image`.
    pub fn parse(image: &[u8]) -> Result<TdvfMetadata, TdvfError> {
        let data = metadata_offset_entry(image)?;
        let from_end =
            read_u32(data, 0).ok_or(TdvfError::MetadataOffsetEntryLength { len: data.len() })?;
        let offset = image
            .len()
            .checked_sub(from_end as usize)
            .filter(|&o| o < image.len())
            .ok_or(TdvfError::MetadataOffset {
                from_end,
                image_len: image.len(),
            })?;
        let truncated = |declared: u32, count: u32, needed: u64| TdvfError::DescriptorLength {
            offset,
            declared,
            count,
            needed,
            image_len: image.len(),
        };
        let signature: [u8; 4] = read_array(image, offset).ok_or(truncated(0, 0, 16))?;
        if &signature != b"TDVF" {
            return Err(TdvfError::Signature {
                offset,
                found: signature,
            });
        }
        let declared = read_u32(image, offset + 4).ok_or(truncated(0, 0, 16))?;
        let version = read_u32(image, offset + 8).ok_or(truncated(declared, 0, 16))?;
        if version != 1 {
            return Err(TdvfError::Version {
                offset,
                found: version,
            });
        }
        let count = read_u32(image, offset + 12).ok_or(truncated(declared, 0, 16))?;
        if count > SECTIONS_MAX {
            return Err(TdvfError::TooManySections { count });
        }
        let needed = DESCRIPTOR_LEN as u64 + SECTION_LEN as u64 * u64::from(count);
        if u64::from(declared) < needed || offset as u64 + needed > image.len() as u64 {
            return Err(truncated(declared, count, needed));
        }
        let mut sections = Vec::with_capacity(count as usize);
        let mut pages = 0u64;
        for index in 0..count {
            let at = offset + DESCRIPTOR_LEN + SECTION_LEN * index as usize;
            let section = parse_section(image, at).map_err(|problem| TdvfError::Section {
                index,
                offset: at,
                problem,
            })?;
            if section.added() {
                pages += section.pages();
            }
            if pages > MEASURED_PAGES_MAX {
                return Err(TdvfError::TooManyPages);
            }
            sections.push(section);
        }
        Ok(TdvfMetadata { offset, sections })
    }

    /// MRTD of `image` (the image these metadata were parsed from) in `order`.
    pub fn mrtd(&self, image: &[u8], order: PageOrder) -> Result<Mrtd, TdvfError> {
        let mut ctx = digest::Context::new(&digest::SHA384);
        let mut pages_added = 0u64;
        let mut chunks_extended = 0u64;
        for (index, s) in self.sections.iter().enumerate() {
            let add = |ctx: &mut digest::Context, page: u64| {
                ctx.update(&page_add_block(s.memory_address + page * PAGE_LEN));
            };
            let extend = |ctx: &mut digest::Context, page: u64| -> Result<(), TdvfError> {
                let at = s.data_offset as u64 + page * PAGE_LEN;
                let bytes = usize::try_from(at)
                    .ok()
                    .and_then(|at| image.get(at..at.checked_add(PAGE_LEN as usize)?))
                    .ok_or(TdvfError::Section {
                        index: index as u32,
                        offset: self.offset + DESCRIPTOR_LEN + SECTION_LEN * index,
                        problem: SectionProblem::DataPastEnd {
                            offset: at,
                            len: PAGE_LEN,
                            image_len: image.len(),
                        },
                    })?;
                extend_page(ctx, s.memory_address + page * PAGE_LEN, bytes);
                Ok(())
            };
            match order {
                PageOrder::SinglePass => {
                    for page in 0..s.pages() {
                        if s.added() {
                            add(&mut ctx, page);
                        }
                        if s.extended() {
                            extend(&mut ctx, page)?;
                        }
                    }
                }
                PageOrder::TwoPass => {
                    if s.added() {
                        for page in 0..s.pages() {
                            add(&mut ctx, page);
                        }
                    }
                    if s.extended() {
                        for page in 0..s.pages() {
                            extend(&mut ctx, page)?;
                        }
                    }
                }
            }
            if s.added() {
                pages_added += s.pages();
            }
            if s.extended() {
                chunks_extended += s.pages() * (PAGE_LEN / EXTEND_CHUNK_LEN as u64);
            }
        }
        let mut value = [0u8; 48];
        value.copy_from_slice(ctx.finish().as_ref());
        Ok(Mrtd {
            value,
            sections: self.sections.len(),
            pages_added,
            chunks_extended,
        })
    }
}

/// MRTD of a TDVF image in `order`.
pub fn mrtd(image: &[u8], order: PageOrder) -> Result<Mrtd, TdvfError> {
    TdvfMetadata::parse(image)?.mrtd(image, order)
}

/// The 128-byte block TDH.MEM.PAGE.ADD extends MRTD with.
pub fn page_add_block(gpa: u64) -> [u8; 128] {
    let mut block = [0u8; 128];
    block[..12].copy_from_slice(b"MEM.PAGE.ADD");
    block[16..24].copy_from_slice(&gpa.to_le_bytes());
    block
}

/// The 128-byte block TDH.MR.EXTEND extends MRTD with before the chunk's 256 bytes.
pub fn mr_extend_block(gpa: u64) -> [u8; 128] {
    let mut block = [0u8; 128];
    block[..9].copy_from_slice(b"MR.EXTEND");
    block[16..24].copy_from_slice(&gpa.to_le_bytes());
    block
}

fn extend_page(ctx: &mut digest::Context, gpa: u64, page: &[u8]) {
    for (i, chunk) in page.chunks_exact(EXTEND_CHUNK_LEN).enumerate() {
        ctx.update(&mr_extend_block(gpa + (i * EXTEND_CHUNK_LEN) as u64));
        ctx.update(chunk);
    }
}

/// The data of the TDX metadata offset entry of the OVMF GUID table.
fn metadata_offset_entry(image: &[u8]) -> Result<&[u8], TdvfError> {
    let footer_end = image
        .len()
        .checked_sub(BYTES_AFTER_TABLE_FOOTER)
        .filter(|&end| end >= ENTRY_TAIL_LEN)
        .ok_or(TdvfError::TooShort { len: image.len() })?;
    let guid_at = footer_end - 16;
    if read_array::<16>(image, guid_at) != Some(TABLE_FOOTER_GUID) {
        return Err(TdvfError::NoGuidTable { offset: guid_at });
    }
    let len_at = footer_end - ENTRY_TAIL_LEN;
    let table_len = read_u16(image, len_at).ok_or(TdvfError::TooShort { len: image.len() })?;
    // The declared length covers the footer entry; the other entries precede it.
    let table_start = (table_len as usize)
        .checked_sub(ENTRY_TAIL_LEN)
        .and_then(|entries_len| len_at.checked_sub(entries_len))
        .ok_or(TdvfError::GuidTableLength {
            offset: len_at,
            len: table_len,
        })?;
    let mut end = len_at;
    while end - table_start >= ENTRY_TAIL_LEN {
        let guid =
            read_array::<16>(image, end - 16).ok_or(TdvfError::TooShort { len: image.len() })?;
        let len = read_u16(image, end - ENTRY_TAIL_LEN)
            .ok_or(TdvfError::TooShort { len: image.len() })?;
        let entry_len = len as usize;
        if entry_len < ENTRY_TAIL_LEN || entry_len > end - table_start {
            return Err(TdvfError::GuidEntryLength { end, len });
        }
        if guid == METADATA_OFFSET_GUID {
            return Ok(&image[end - entry_len..end - ENTRY_TAIL_LEN]);
        }
        end -= entry_len;
    }
    Err(TdvfError::NoMetadataOffset)
}

fn parse_section(image: &[u8], at: usize) -> Result<Section, SectionProblem> {
    // The descriptor check made sure the 32 bytes are in the image.
    let field = |o: usize| read_u32(image, at + o).unwrap_or(0);
    let field64 = |o: usize| read_u64(image, at + o).unwrap_or(0);
    let data_offset = field(0);
    let raw_data_size = field(4);
    let memory_address = field64(8);
    let memory_data_size = field64(16);
    let type_code = field(24);
    let attributes = field(28);
    let kind = SectionType::from_u32(type_code).ok_or(SectionProblem::UnknownType(type_code))?;
    if attributes & !(ATTRIBUTE_EXTENDMR | ATTRIBUTE_PAGE_AUG) != 0 {
        return Err(SectionProblem::UnknownAttributes(attributes));
    }
    let section = Section {
        data_offset,
        raw_data_size,
        memory_address,
        memory_data_size,
        kind,
        attributes,
    };
    if section.extended() && !section.added() {
        return Err(SectionProblem::ExtendAndAug);
    }
    if section.extended() && !kind.copied_from_image() {
        return Err(SectionProblem::ExtendNotFromImage(kind));
    }
    if memory_address % PAGE_LEN != 0 {
        return Err(SectionProblem::AddressNotAligned(memory_address));
    }
    if memory_data_size % PAGE_LEN != 0 {
        return Err(SectionProblem::SizeNotAligned(memory_data_size));
    }
    if memory_address.checked_add(memory_data_size).is_none() {
        return Err(SectionProblem::AddressOverflow {
            address: memory_address,
            size: memory_data_size,
        });
    }
    if u64::from(raw_data_size) > memory_data_size {
        return Err(SectionProblem::RawLargerThanMemory {
            raw: raw_data_size,
            memory: memory_data_size,
        });
    }
    if kind.copied_from_image() != (raw_data_size > 0) {
        return Err(SectionProblem::RawSizeForType {
            raw: raw_data_size,
            kind,
        });
    }
    // What QEMU reads from the image: the raw data, and for a measured section the whole
    // memory size (QEMU maps a BFV/CFV section's memory onto the image at the data offset).
    let needed = if section.extended() {
        memory_data_size
    } else {
        u64::from(raw_data_size)
    };
    if u64::from(data_offset) + needed > image.len() as u64 {
        return Err(SectionProblem::DataPastEnd {
            offset: u64::from(data_offset),
            len: needed,
            image_len: image.len(),
        });
    }
    Ok(section)
}

#[cfg(test)]
mod tests;
