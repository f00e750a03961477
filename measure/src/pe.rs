//! Reading PE/COFF images (PE32 and PE32+), as far as UKIs, stubs and Authenticode need.
//!
//! Layout per the Microsoft PE/COFF specification: DOS header (`e_lfanew` at 0x3c), `PE\0\0`,
//! the 20-byte COFF file header, the optional header (PE32 magic 0x10b, PE32+ 0x20b) with its
//! data directories, then 40-byte section headers. Every offset and size read from the file is
//! checked before use; nothing here panics on malformed input.

use std::borrow::Cow;

use crate::reader::Reader;
use crate::ParseError;

/// `IMAGE_SUBSYSTEM_EFI_APPLICATION`.
pub const SUBSYSTEM_EFI_APPLICATION: u16 = 10;
/// PE32 optional header magic.
pub const MAGIC_PE32: u16 = 0x10b;
/// PE32+ optional header magic.
pub const MAGIC_PE32_PLUS: u16 = 0x20b;
/// Index of the Certificate Table (attribute certificates) data directory.
pub const DIR_SECURITY: usize = 4;
/// Index of the base relocation table data directory.
pub const DIR_BASERELOC: usize = 5;
/// Index of the debug directory.
pub const DIR_DEBUG: usize = 6;
/// Size of one section header.
pub const SECTION_HEADER_SIZE: usize = 40;
/// Size of the COFF file header.
pub const COFF_HEADER_SIZE: usize = 20;

/// Section characteristics flags used by UKIs.
pub const IMAGE_SCN_CNT_CODE: u32 = 0x0000_0020;
pub const IMAGE_SCN_CNT_INITIALIZED_DATA: u32 = 0x0000_0040;
pub const IMAGE_SCN_MEM_READ: u32 = 0x4000_0000;

/// A data directory entry (RVA, or file offset for the certificate table, and size).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DataDirectory {
    pub virtual_address: u32,
    pub size: u32,
}

/// One section header, with the file offset of the header itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// The name bytes up to the first NUL (at most 8).
    pub name: String,
    pub virtual_size: u32,
    pub virtual_address: u32,
    pub size_of_raw_data: u32,
    pub pointer_to_raw_data: u32,
    pub characteristics: u32,
    /// File offset of this section's 40-byte header.
    pub header_offset: usize,
}

/// A parsed PE image borrowing the file's bytes.
#[derive(Debug, Clone)]
pub struct PeFile<'a> {
    pub data: &'a [u8],
    /// File offset of the `PE\0\0` signature.
    pub pe_offset: usize,
    pub machine: u16,
    pub number_of_sections: u16,
    pub pointer_to_symbol_table: u32,
    pub number_of_symbols: u32,
    pub size_of_optional_header: u16,
    pub characteristics: u16,
    pub magic: u16,
    pub size_of_initialized_data: u32,
    pub section_alignment: u32,
    pub file_alignment: u32,
    pub size_of_image: u32,
    pub size_of_headers: u32,
    pub subsystem: u16,
    pub data_directories: Vec<DataDirectory>,
    pub sections: Vec<Section>,
    /// File offset of the optional header.
    pub optional_header_offset: usize,
    /// File offset of the data directory array.
    pub data_directories_offset: usize,
}

/// Field offsets within the optional header that are common to PE32 and PE32+.
pub mod opt {
    pub const SIZE_OF_INITIALIZED_DATA: usize = 8;
    pub const SECTION_ALIGNMENT: usize = 32;
    pub const FILE_ALIGNMENT: usize = 36;
    pub const SIZE_OF_IMAGE: usize = 56;
    pub const SIZE_OF_HEADERS: usize = 60;
    pub const CHECKSUM: usize = 64;
    pub const SUBSYSTEM: usize = 68;
}

/// Field offsets within the COFF file header (relative to the `PE\0\0` signature).
pub mod coff {
    pub const NUMBER_OF_SECTIONS: usize = 4 + 2;
    pub const TIME_DATE_STAMP: usize = 4 + 4;
    pub const POINTER_TO_SYMBOL_TABLE: usize = 4 + 8;
    pub const NUMBER_OF_SYMBOLS: usize = 4 + 12;
    pub const CHARACTERISTICS: usize = 4 + 18;
}

/// Largest zero fill past a section's raw data we materialise (a kernel's SizeOfImage beyond
/// its file size is tens of MiB).
pub const MAX_ZERO_FILL: usize = 256 << 20;

/// Upper bound on sections: the COFF limit is 96 for images; anything larger is hostile.
const MAX_SECTIONS: u16 = 96;

impl<'a> PeFile<'a> {
    /// Parses the headers and section table of a PE image.
    pub fn parse(data: &'a [u8]) -> Result<Self, ParseError> {
        Self::parse_with_len(data, data.len() as u64)
    }

    /// The section table of a PE file of `file_len` bytes from its first bytes `head` (which
    /// must hold the headers and the section table): for a reader that streams the sections'
    /// contents from the file instead of holding it. Checked as [`PeFile::parse`] checks it,
    /// every section's raw data against `file_len`.
    pub fn section_table(head: &[u8], file_len: u64) -> Result<Vec<Section>, ParseError> {
        if (head.len() as u64) > file_len {
            return Err(ParseError::new(
                0,
                "file length",
                format!(
                    "{} bytes of headers read from a file of {file_len} bytes",
                    head.len()
                ),
            ));
        }
        Ok(PeFile::parse_with_len(head, file_len)?.sections)
    }

    fn parse_with_len(data: &'a [u8], file_len: u64) -> Result<Self, ParseError> {
        let mut r = Reader::new(data);
        let mz = r.array::<2>("DOS header magic")?;
        if &mz != b"MZ" {
            return Err(ParseError::new(
                0,
                "DOS header magic",
                "not a PE file (no \"MZ\" at offset 0)",
            ));
        }
        r.skip(0x3c - 2, "DOS header")?;
        let pe_offset = r.u32_le("e_lfanew")? as usize;
        let mut r = Reader::at(
            data.get(pe_offset..).ok_or_else(|| {
                ParseError::new(
                    0x3c,
                    "e_lfanew",
                    format!("PE header offset {pe_offset:#x} is past the end of the file"),
                )
            })?,
            pe_offset,
        );
        if r.array::<4>("PE signature")? != *b"PE\0\0" {
            return Err(ParseError::new(
                pe_offset,
                "PE signature",
                "not a PE file (no \"PE\\0\\0\" signature)",
            ));
        }
        let machine = r.u16_le("Machine")?;
        let number_of_sections = r.u16_le("NumberOfSections")?;
        if number_of_sections > MAX_SECTIONS {
            return Err(ParseError::new(
                pe_offset + coff::NUMBER_OF_SECTIONS,
                "NumberOfSections",
                format!(
                    "{number_of_sections} sections is more than the PE limit of {MAX_SECTIONS}"
                ),
            ));
        }
        let _time_date_stamp = r.u32_le("TimeDateStamp")?;
        let pointer_to_symbol_table = r.u32_le("PointerToSymbolTable")?;
        let number_of_symbols = r.u32_le("NumberOfSymbols")?;
        let size_of_optional_header = r.u16_le("SizeOfOptionalHeader")?;
        let characteristics = r.u16_le("Characteristics")?;

        let optional_header_offset = r.offset();
        let mut o = r.sub(size_of_optional_header as usize, "optional header")?;
        let magic = o.u16_le("optional header Magic")?;
        let (dirs_at, count_at) = match magic {
            MAGIC_PE32_PLUS => (112, 108),
            MAGIC_PE32 => (96, 92),
            m => {
                return Err(ParseError::new(
                    optional_header_offset,
                    "optional header Magic",
                    format!("unknown magic {m:#06x} (expected 0x10b PE32 or 0x20b PE32+)"),
                ))
            }
        };
        let field = |off: usize, what: &'static str| -> Result<u32, ParseError> {
            let mut f = o.clone();
            f.skip(off - 2, what)?;
            f.u32_le(what)
        };
        let size_of_initialized_data =
            field(opt::SIZE_OF_INITIALIZED_DATA, "SizeOfInitializedData")?;
        let section_alignment = field(opt::SECTION_ALIGNMENT, "SectionAlignment")?;
        let file_alignment = field(opt::FILE_ALIGNMENT, "FileAlignment")?;
        let size_of_image = field(opt::SIZE_OF_IMAGE, "SizeOfImage")?;
        let size_of_headers = field(opt::SIZE_OF_HEADERS, "SizeOfHeaders")?;
        let subsystem = (field(opt::SUBSYSTEM, "Subsystem")? & 0xffff) as u16;
        let number_of_rva_and_sizes = field(count_at, "NumberOfRvaAndSizes")?;
        let data_directories_offset = optional_header_offset + dirs_at;
        let mut d = o.clone();
        d.skip(dirs_at - 2, "optional header")?;
        let max_dirs = d.remaining() / 8;
        if number_of_rva_and_sizes as usize > max_dirs {
            return Err(ParseError::new(
                data_directories_offset,
                "NumberOfRvaAndSizes",
                format!(
                    "{number_of_rva_and_sizes} data directories do not fit in the optional header"
                ),
            ));
        }
        let mut data_directories = Vec::with_capacity(number_of_rva_and_sizes as usize);
        for _ in 0..number_of_rva_and_sizes {
            data_directories.push(DataDirectory {
                virtual_address: d.u32_le("data directory RVA")?,
                size: d.u32_le("data directory size")?,
            });
        }
        if !file_alignment.is_power_of_two() || !section_alignment.is_power_of_two() {
            return Err(ParseError::new(
                optional_header_offset + opt::FILE_ALIGNMENT,
                "FileAlignment",
                format!("alignments must be powers of two (file {file_alignment:#x}, section {section_alignment:#x})"),
            ));
        }

        let mut sections = Vec::with_capacity(number_of_sections as usize);
        for i in 0..number_of_sections {
            let header_offset = r.offset();
            let raw_name = r.array::<8>("section name")?;
            let name_len = raw_name.iter().position(|&b| b == 0).unwrap_or(8);
            let name = String::from_utf8_lossy(&raw_name[..name_len]).into_owned();
            let virtual_size = r.u32_le("VirtualSize")?;
            let virtual_address = r.u32_le("VirtualAddress")?;
            let size_of_raw_data = r.u32_le("SizeOfRawData")?;
            let pointer_to_raw_data = r.u32_le("PointerToRawData")?;
            r.skip(12, "section relocation/line number fields")?;
            let characteristics = r.u32_le("section Characteristics")?;
            let end = pointer_to_raw_data as u64 + size_of_raw_data as u64;
            if size_of_raw_data > 0 && end > file_len {
                return Err(ParseError::new(
                    header_offset,
                    "section header",
                    format!(
                        "section {i} ({name:?}) raw data {pointer_to_raw_data:#x}+{size_of_raw_data:#x} runs past the end of the file ({file_len:#x} bytes)"
                    ),
                ));
            }
            sections.push(Section {
                name,
                virtual_size,
                virtual_address,
                size_of_raw_data,
                pointer_to_raw_data,
                characteristics,
                header_offset,
            });
        }
        Ok(PeFile {
            data,
            pe_offset,
            machine,
            number_of_sections,
            pointer_to_symbol_table,
            number_of_symbols,
            size_of_optional_header,
            characteristics,
            magic,
            size_of_initialized_data,
            section_alignment,
            file_alignment,
            size_of_image,
            size_of_headers,
            subsystem,
            data_directories,
            sections,
            optional_header_offset,
            data_directories_offset,
        })
    }

    /// File offset of the CheckSum field.
    pub fn checksum_offset(&self) -> usize {
        self.optional_header_offset + opt::CHECKSUM
    }

    /// File offset just past the section table.
    pub fn section_table_end(&self) -> usize {
        self.optional_header_offset
            + self.size_of_optional_header as usize
            + self.sections.len() * SECTION_HEADER_SIZE
    }

    pub fn data_directory(&self, index: usize) -> Option<DataDirectory> {
        self.data_directories.get(index).copied()
    }

    /// Whether the image carries an Authenticode signature (a non-empty certificate table).
    pub fn is_signed(&self) -> bool {
        // The certificate table (its "VirtualAddress" is a file offset) must lie inside the file
        // and start with a well-formed WIN_CERTIFICATE: dwLength within the table, wRevision
        // 0x0200, wCertificateType WIN_CERT_TYPE_PKCS_SIGNED_DATA (2). Anything else is not a
        // signature, whatever the directory says.
        let Some(d) = self.data_directory(DIR_SECURITY) else {
            return false;
        };
        let (start, size) = (d.virtual_address as usize, d.size as usize);
        if start == 0 || size < 8 {
            return false;
        }
        let Some(table) = start
            .checked_add(size)
            .and_then(|end| self.data.get(start..end))
        else {
            return false;
        };
        let (Some(len), Some(rev), Some(kind)) = (
            table
                .get(0..4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize),
            table.get(4..6).map(|b| u16::from_le_bytes([b[0], b[1]])),
            table.get(6..8).map(|b| u16::from_le_bytes([b[0], b[1]])),
        ) else {
            return false;
        };
        (9..=size).contains(&len) && rev == 0x0200 && kind == 2
    }

    /// The first section with that name.
    pub fn section(&self, name: &str) -> Option<&Section> {
        self.sections.iter().find(|s| s.name == name)
    }

    /// The section's raw bytes on disk (`SizeOfRawData` from `PointerToRawData`).
    pub fn raw_data(&self, s: &Section) -> &'a [u8] {
        // In bounds for every section `parse` returned (checked there); empty for a section
        // without raw data, whatever its PointerToRawData says.
        let start = s.pointer_to_raw_data as usize;
        self.data
            .get(start..start.saturating_add(s.size_of_raw_data as usize))
            .filter(|_| s.size_of_raw_data > 0)
            .unwrap_or_default()
    }

    /// The section's bytes as the firmware loads them: `VirtualSize` bytes, zero-filled past
    /// the raw data. This is exactly what systemd-stub measures. A section whose zero fill
    /// would exceed [`MAX_ZERO_FILL`] is refused rather than allocated.
    pub fn memory_data(&self, s: &Section) -> Result<Cow<'a, [u8]>, ParseError> {
        let raw = self.raw_data(s);
        let vsize = s.virtual_size as usize;
        if vsize <= raw.len() {
            return Ok(Cow::Borrowed(&raw[..vsize]));
        }
        s.memory_extent()?; // the zero fill's bound
        let mut v = raw.to_vec();
        v.resize(vsize, 0);
        Ok(Cow::Owned(v))
    }
}

/// Where the bytes the firmware loads for a section come from ([`Section::memory_extent`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryExtent {
    /// File offset of the first byte.
    pub offset: u64,
    /// Bytes taken from the file there.
    pub file_bytes: u64,
    /// Zero bytes after them (`VirtualSize` past the raw data).
    pub zeros: u64,
}

impl MemoryExtent {
    /// `VirtualSize`: the number of bytes measured.
    pub fn len(&self) -> u64 {
        self.file_bytes + self.zeros
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Section {
    /// The section's in-memory bytes ([`PeFile::memory_data`]) as a file range and a zero fill:
    /// `VirtualSize` bytes, the raw data first. A zero fill beyond [`MAX_ZERO_FILL`] is refused.
    pub fn memory_extent(&self) -> Result<MemoryExtent, ParseError> {
        let raw = if self.size_of_raw_data > 0 {
            u64::from(self.size_of_raw_data)
        } else {
            0
        };
        let vsize = u64::from(self.virtual_size);
        let file_bytes = vsize.min(raw);
        let zeros = vsize - file_bytes;
        if zeros > MAX_ZERO_FILL as u64 {
            return Err(ParseError::new(
                self.header_offset + 8,
                "VirtualSize",
                format!(
                    "section {:?} has VirtualSize {vsize:#x} but only {raw:#x} bytes of data; refusing to zero-fill more than {MAX_ZERO_FILL:#x} bytes",
                    self.name
                ),
            ));
        }
        Ok(MemoryExtent {
            offset: u64::from(self.pointer_to_raw_data),
            file_bytes,
            zeros,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `pe` fuzz target: a section with no raw data and a PointerToRawData past
    /// the end of the file.
    #[test]
    fn empty_section_with_wild_pointer_has_no_data() {
        let stub = std::fs::read("/usr/lib/systemd/boot/efi/linuxx64.efi.stub");
        let Ok(mut data) = stub else { return };
        let pe = PeFile::parse(&data).unwrap();
        let h = pe.sections[0].header_offset;
        data[h + 16..h + 20].copy_from_slice(&0u32.to_le_bytes());
        data[h + 20..h + 24].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
        let pe = PeFile::parse(&data).unwrap();
        assert!(pe.raw_data(&pe.sections[0]).is_empty());
    }

    /// A PE32+ image with one section `.linux` of `raw` bytes at 0x200 whose VirtualSize is
    /// `vsize`, built by hand (headers per the PE/COFF specification).
    fn one_section_pe(raw: usize, vsize: u32) -> Vec<u8> {
        let mut d = vec![0u8; 0x200 + raw];
        d[..2].copy_from_slice(b"MZ");
        d[0x3c..0x40].copy_from_slice(&0x40u32.to_le_bytes());
        d[0x40..0x44].copy_from_slice(b"PE\0\0");
        d[0x44..0x46].copy_from_slice(&0x8664u16.to_le_bytes());
        d[0x46..0x48].copy_from_slice(&1u16.to_le_bytes());
        d[0x54..0x56].copy_from_slice(&240u16.to_le_bytes()); // SizeOfOptionalHeader
        let o = 0x58;
        d[o..o + 2].copy_from_slice(&MAGIC_PE32_PLUS.to_le_bytes());
        d[o + 32..o + 36].copy_from_slice(&0x1000u32.to_le_bytes());
        d[o + 36..o + 40].copy_from_slice(&0x200u32.to_le_bytes());
        d[o + 108..o + 112].copy_from_slice(&16u32.to_le_bytes());
        let h = o + 240;
        d[h..h + 6].copy_from_slice(b".linux");
        d[h + 8..h + 12].copy_from_slice(&vsize.to_le_bytes());
        d[h + 12..h + 16].copy_from_slice(&0x1000u32.to_le_bytes());
        d[h + 16..h + 20].copy_from_slice(&(raw as u32).to_le_bytes());
        d[h + 20..h + 24].copy_from_slice(&0x200u32.to_le_bytes());
        for (i, b) in d[0x200..].iter_mut().enumerate() {
            *b = (i % 251) as u8 + 1;
        }
        d
    }

    #[test]
    fn the_section_table_from_the_head_equals_the_whole_files() {
        let d = one_section_pe(0x600, 0x500);
        let whole = PeFile::parse(&d).unwrap();
        let table = PeFile::section_table(&d[..0x200], d.len() as u64).unwrap();
        assert_eq!(table, whole.sections);
        let e = table[0].memory_extent().unwrap();
        assert_eq!((e.offset, e.file_bytes, e.zeros), (0x200, 0x500, 0));
        assert_eq!(whole.memory_data(&table[0]).unwrap(), &d[0x200..0x700]);
        // A file shorter than the section table says is refused, as the whole file is.
        let e = PeFile::section_table(&d[..0x200], 0x7ff).unwrap_err();
        assert!(e.to_string().contains("runs past the end"), "{e}");
        assert!(PeFile::section_table(&d[..0x200], 0x100).is_err());
    }

    #[test]
    fn the_memory_extent_zero_fills_past_the_raw_data_within_the_bound() {
        let d = one_section_pe(0x200, 0x2345);
        let pe = PeFile::parse(&d).unwrap();
        let e = pe.sections[0].memory_extent().unwrap();
        assert_eq!((e.file_bytes, e.zeros, e.len()), (0x200, 0x2145, 0x2345));
        let mem = pe.memory_data(&pe.sections[0]).unwrap();
        assert_eq!(&mem[..0x200], &d[0x200..]);
        assert!(mem[0x200..].iter().all(|b| *b == 0) && mem.len() == 0x2345);
        let huge = one_section_pe(0x200, u32::MAX);
        let pe = PeFile::parse(&huge).unwrap();
        assert!(pe.sections[0].memory_extent().is_err());
        assert!(pe.memory_data(&pe.sections[0]).is_err());
    }

    #[test]
    fn rejects_non_pe_with_a_clear_reason() {
        let e = PeFile::parse(b"\x7fELF....").unwrap_err();
        assert!(e.to_string().contains("not a PE file"), "{e}");
        let e = PeFile::parse(b"MZ").unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
        let mut d = vec![0u8; 0x40];
        d[..2].copy_from_slice(b"MZ");
        d[0x3c..0x40].copy_from_slice(&0x1000u32.to_le_bytes());
        let e = PeFile::parse(&d).unwrap_err();
        assert!(e.to_string().contains("past the end"), "{e}");
    }
}
