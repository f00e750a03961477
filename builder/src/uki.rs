//! Unified Kernel Image assembly: the stub plus new PE sections, placed as ukify places them.
//!
//! Algorithm (systemd's ukify `pe_add_sections()`, ../shared/reference/systemd.md §5.1):
//! 1. Strip the COFF symbol table that gnu-efi stubs carry at the end of the file.
//! 2. Keep the stub's sections, each at a file offset aligned to `FileAlignment`.
//! 3. Append each new section after the last one: file offset and raw size rounded up to
//!    `FileAlignment`, virtual address rounded up to `SectionAlignment`, `VirtualSize` = the
//!    content length, so the stub measures exactly the content.
//!    A section the stub already has (`.sbat`) is replaced in place, as ukify does, when the
//!    new content fits in its raw data and before the next section's address.
//!    A merged `.sbat` that does not fit (a distribution's SBAT with several vendor lines; ukify
//!    257 refuses with "Not enough space in existing section .sbat") replaces the stub's
//!    section: that one is dropped and the new `.sbat` is appended like the other new sections.
//!    Its old address range stays unused; nothing refers to `.sbat` by address (shim and the
//!    stub look it up by name).
//! 4. Update `NumberOfSections`, `SizeOfInitializedData`, `SizeOfImage`; zero `CheckSum`.
//!
//! Where the stub's header has no room for the new section headers (ukify refuses then), the
//! headers are re-laid: `SizeOfHeaders` grows by whole file-alignment units and every section's
//! raw data moves down; RVAs never change, so the loaded image is the same. This is allowed
//! only while the headers stay below the first section's RVA.
//!
//! [`layout`] places everything and builds the headers and the stub's sections in memory; new
//! sections may be given as bytes or as a length whose content the caller streams when
//! [`Layout::write`] gets there (a 1 GiB initrd is never in memory). [`assemble`] does both in
//! memory. Pure: bytes in, bytes out (any writer).

use crate::hashing::CountingWriter;
use std::io::Write;
use std::ops::Range;
use std::path::Path;

use imgctl_measure::pe::{
    coff, opt, PeFile, DIR_DEBUG, IMAGE_SCN_CNT_CODE, IMAGE_SCN_CNT_INITIALIZED_DATA,
    IMAGE_SCN_MEM_READ, SECTION_HEADER_SIZE, SUBSYSTEM_EFI_APPLICATION,
};

use crate::Error;

/// `IMAGE_FILE_LOCAL_SYMS_STRIPPED` in the COFF characteristics.
const LOCAL_SYMS_STRIPPED: u16 = 0x0008;

/// A section to add to the stub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSection {
    /// At most 8 bytes, e.g. `.linux`.
    pub name: String,
    pub data: Vec<u8>,
}

/// A new section's content: bytes, or a length whose bytes the caller writes when the image is
/// written ([`Layout::write`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Content<'a> {
    Bytes(&'a [u8]),
    Streamed(u64),
}

impl Content<'_> {
    pub fn len(&self) -> u64 {
        match self {
            Content::Bytes(b) => b.len() as u64,
            Content::Streamed(n) => *n,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A section to add, by reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SectionInput<'a> {
    /// At most 8 bytes, e.g. `.linux`.
    pub name: &'a str,
    pub content: Content<'a>,
}

/// Where a section's bytes in the image come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The stub's section with this index, unchanged: its memory image is the stub's.
    Stub(usize),
    /// The input with this index (appended, or replacing the stub's section of that name):
    /// its memory image is exactly the input's content (`VirtualSize` = content length).
    Input(usize),
}

/// One section of the assembled image, as its header says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacedSection {
    pub name: String,
    pub virtual_size: u32,
    pub virtual_address: u32,
    pub size_of_raw_data: u32,
    pub pointer_to_raw_data: u32,
    pub characteristics: u32,
    pub origin: Origin,
}

/// A UKI laid out, not yet written: the headers and the stub's sections are in `head` (file
/// offsets from 0), the new sections follow it back to back in file order.
#[derive(Debug)]
pub struct Layout<'a> {
    head: Vec<u8>,
    /// (input index, content, PointerToRawData, SizeOfRawData), in file order.
    tail: Vec<(usize, Content<'a>, u64, u64)>,
    sections: Vec<PlacedSection>,
    size: u64,
    size_of_headers: u64,
    excluded: Vec<Range<usize>>,
}

fn round_up(v: u64, align: u64) -> u64 {
    v.div_ceil(align) * align
}

fn err(msg: impl Into<String>) -> Error {
    Error::Stub(msg.into())
}

/// A section's raw data while laying out: the stub's (or a replacement) in memory, or a new
/// section's content, padded to its `SizeOfRawData`.
enum Data<'a> {
    Owned(Vec<u8>),
    New(usize, Content<'a>),
}

struct OutSection<'a> {
    name: [u8; 8],
    virtual_size: u32,
    virtual_address: u32,
    size_of_raw_data: u32,
    pointer_to_raw_data: u32,
    /// The 16 bytes from PointerToRelocations to NumberOfLinenumbers, kept from the stub.
    reloc_fields: [u8; 12],
    characteristics: u32,
    data: Data<'a>,
    origin: Origin,
}

impl OutSection<'_> {
    /// End of the section in memory. A zero VirtualSize means "the raw size" to loaders.
    fn virtual_end(&self) -> u64 {
        let size = if self.virtual_size == 0 {
            self.size_of_raw_data
        } else {
            self.virtual_size
        };
        self.virtual_address as u64 + size as u64
    }

    fn data_len(&self) -> u64 {
        match &self.data {
            Data::Owned(v) => v.len() as u64,
            Data::New(..) => self.size_of_raw_data as u64,
        }
    }
}

/// Checks that `stub` is a PE we can build a UKI from: an unsigned EFI application.
pub fn check_stub(stub: &PeFile<'_>) -> Result<(), Error> {
    if stub.subsystem != SUBSYSTEM_EFI_APPLICATION {
        return Err(err(format!(
            "not an EFI application (PE subsystem {} instead of {SUBSYSTEM_EFI_APPLICATION})",
            stub.subsystem
        )));
    }
    if stub.file_alignment > 0x10000 || stub.section_alignment < stub.file_alignment {
        return Err(err(format!(
            "unusable alignments (FileAlignment {:#x}, SectionAlignment {:#x}): the PE specification wants FileAlignment of at most 64 KiB and not above SectionAlignment",
            stub.file_alignment, stub.section_alignment
        )));
    }
    if stub.size_of_headers as usize > stub.data.len()
        || stub.section_table_end() > stub.size_of_headers as usize
    {
        return Err(err(format!(
            "SizeOfHeaders {:#x} does not cover the section table (ends at {:#x}) within the file ({:#x} bytes)",
            stub.size_of_headers,
            stub.section_table_end(),
            stub.data.len()
        )));
    }
    if stub.is_signed() {
        return Err(err(
            "the stub carries an Authenticode signature; build from an unsigned stub and sign the UKI afterwards",
        ));
    }
    Ok(())
}

/// PE machine type of x86-64 images.
const MACHINE_X86_64: u16 = 0x8664;

/// A name for a PE machine type, for messages.
fn machine_name(machine: u16) -> String {
    match machine {
        0xaa64 => "arm64".into(),
        0x014c => "32-bit x86".into(),
        0x01c2 | 0x01c4 => "32-bit ARM".into(),
        0x5064 => "riscv64".into(),
        0x6264 => "loongarch64".into(),
        other => format!("machine {other:#06x}"),
    }
}

/// Sections a UKI carries and a bare stub does not (`.sbat` and `.sdmagic` are the stub's own).
fn is_uki_payload(name: &str) -> bool {
    name != ".sbat"
        && (imgctl_measure::StubSemantics::LATEST.knows(name)
            || name == imgctl_measure::pcr11::PCRSIG)
}

/// Checks that `stub` is what a UKI is built on: an x86-64 systemd-stub or imgctl-stub
/// (`.sdmagic` names it), not systemd-boot, an addon stub, a stub for another architecture or a
/// finished UKI (whose stale `.linux`/`.cmdline`/`.uname` would be kept or shadowed).
pub fn check_stub_identity(stub: &PeFile<'_>) -> Result<(), Error> {
    if stub.machine != MACHINE_X86_64 {
        return Err(err(format!(
            "is an {} EFI image; imgctl builds x86-64 UKIs (give linuxx64.efi.stub)",
            machine_name(stub.machine)
        )));
    }
    let identity = imgctl_measure::Uki { pe: stub.clone() }.identity();
    match identity.name.as_deref() {
        Some("systemd-stub" | "imgctl-stub") => {}
        Some(other) => {
            return Err(err(format!(
                "is {other} (.sdmagic {:?}), not a UKI stub; give systemd-stub (linuxx64.efi.stub) or imgctl-stub",
                identity.sdmagic.unwrap_or_default()
            )))
        }
        None => {
            return Err(err(
                "has no .sdmagic naming systemd-stub or imgctl-stub; it is not a UKI stub",
            ))
        }
    }
    let payload: Vec<&str> = stub
        .sections
        .iter()
        .map(|s| s.name.as_str())
        .filter(|n| is_uki_payload(n))
        .collect();
    if !payload.is_empty() {
        return Err(err(format!(
            "is already a UKI (it has {}); build from the bare stub (linuxx64.efi.stub)",
            payload.join(", ")
        )));
    }
    Ok(())
}

/// Builds a UKI in memory: `stub` with `sections` added in the given order.
pub fn assemble(stub_bytes: &[u8], sections: &[NewSection]) -> Result<Vec<u8>, Error> {
    let inputs: Vec<SectionInput<'_>> = sections
        .iter()
        .map(|s| SectionInput {
            name: &s.name,
            content: Content::Bytes(&s.data),
        })
        .collect();
    let layout = layout(stub_bytes, &inputs)?;
    let mut out = Vec::with_capacity(usize::try_from(layout.size()).unwrap_or(0));
    layout.write(&mut out, Path::new("(memory)"), &mut |i, _| {
        Err(Error::InvalidInput(format!("section {i} has no content")))
    })?;
    Ok(out)
}

/// Lays out a UKI: `stub` with `sections` added in the given order (see the module
/// documentation). Nothing is written yet.
pub fn layout<'a>(stub_bytes: &[u8], sections: &[SectionInput<'a>]) -> Result<Layout<'a>, Error> {
    let stub = PeFile::parse(stub_bytes).map_err(|e| err(format!("not a valid PE image: {e}")))?;
    check_stub(&stub)?;
    let falign = stub.file_alignment as u64;
    let salign = stub.section_alignment as u64;
    for s in sections {
        if s.name.is_empty() || s.name.len() > 8 || !s.name.is_ascii() {
            return Err(Error::InvalidInput(format!(
                "section name {:?} must be 1 to 8 ASCII bytes",
                s.name
            )));
        }
    }

    // Everything the stub has that we keep: its sections' raw data. The symbol table and any
    // gap between sections are dropped.
    let mut out_sections: Vec<OutSection<'a>> = Vec::new();
    for (index, s) in stub.sections.iter().enumerate() {
        let mut name = [0u8; 8];
        let raw_hdr = &stub_bytes[s.header_offset..s.header_offset + SECTION_HEADER_SIZE];
        name.copy_from_slice(&raw_hdr[..8]);
        let mut reloc_fields = [0u8; 12];
        reloc_fields.copy_from_slice(&raw_hdr[24..36]);
        out_sections.push(OutSection {
            name,
            virtual_size: s.virtual_size,
            virtual_address: s.virtual_address,
            size_of_raw_data: s.size_of_raw_data,
            pointer_to_raw_data: s.pointer_to_raw_data,
            reloc_fields,
            characteristics: s.characteristics,
            data: Data::Owned(stub.raw_data(s).to_vec()),
            origin: Origin::Stub(index),
        });
    }
    let data_end = stub
        .sections
        .iter()
        .map(|s| s.pointer_to_raw_data as u64 + s.size_of_raw_data as u64)
        .max()
        .unwrap_or(stub.size_of_headers as u64);
    let symtab = stub.pointer_to_symbol_table as u64;
    if symtab != 0 && symtab < data_end {
        return Err(err(format!(
            "COFF symbol table at {symtab:#x} lies inside the section data; cannot strip it"
        )));
    }
    let trailing_end = if symtab != 0 {
        symtab
    } else {
        stub_bytes.len() as u64
    };
    if trailing_end > round_up(data_end, falign) {
        return Err(err(format!(
            "{} bytes of unknown data follow the last section",
            trailing_end - data_end
        )));
    }

    // A merged SBAT longer than the stub's .sbat has room for (ukify refuses: "Not enough space
    // in existing section"): the stub's section goes and the new one is appended like any
    // other. Nothing refers to .sbat by address: shim and the stub find it by name.
    for new in sections.iter().filter(|n| n.name == ".sbat") {
        if let Some((i, room)) = in_place_room(&out_sections, new.name) {
            if new.content.len() > room {
                out_sections.remove(i);
            }
        }
    }

    // In-place replacements (sections the stub already has) and appended sections.
    let mut added_initialized = 0u64;
    let original_count = out_sections.len();
    for (index, new) in sections.iter().enumerate() {
        if let Some((i, room)) = in_place_room(&out_sections[..original_count], new.name) {
            let len = new.content.len();
            if len > room {
                return Err(err(format!(
                    "the stub's {} section has room for {room} bytes, not {len}",
                    new.name
                )));
            }
            let s = &mut out_sections[i];
            let Content::Bytes(bytes) = new.content else {
                return Err(Error::InvalidInput(format!(
                    "section {} replaces the stub's and must be given in memory",
                    new.name
                )));
            };
            let mut data = bytes.to_vec();
            data.resize(s.size_of_raw_data as usize, 0);
            s.data = Data::Owned(data);
            s.virtual_size = len as u32;
            s.origin = Origin::Input(index);
            continue;
        }
        let end_va = out_sections
            .iter()
            .map(OutSection::virtual_end)
            .max()
            .unwrap_or(0);
        let va = round_up(end_va, salign);
        let vsize = new.content.len();
        let raw_size = round_up(vsize, falign);
        if va + raw_size > u32::MAX as u64 || vsize == 0 {
            return Err(Error::InvalidInput(format!(
                "section {} ({vsize} bytes) cannot be placed in a PE image",
                new.name
            )));
        }
        let mut name = [0u8; 8];
        name[..new.name.len()].copy_from_slice(new.name.as_bytes());
        let characteristics = IMAGE_SCN_MEM_READ
            | if new.name == ".linux" {
                IMAGE_SCN_CNT_CODE
            } else {
                IMAGE_SCN_CNT_INITIALIZED_DATA
            };
        out_sections.push(OutSection {
            name,
            virtual_size: vsize as u32,
            virtual_address: va as u32,
            size_of_raw_data: raw_size as u32,
            pointer_to_raw_data: 0,
            reloc_fields: [0; 12],
            characteristics,
            data: Data::New(index, new.content),
            origin: Origin::Input(index),
        });
        added_initialized += vsize;
    }

    // Header room: grow SizeOfHeaders if the new section table does not fit.
    let table_start = stub.optional_header_offset + stub.size_of_optional_header as usize;
    let table_end = (table_start + out_sections.len() * SECTION_HEADER_SIZE) as u64;
    let mut size_of_headers = round_up(stub.size_of_headers as u64, falign);
    if table_end > size_of_headers {
        size_of_headers = round_up(table_end, falign);
        let first_va = out_sections
            .iter()
            .map(|s| s.virtual_address as u64)
            .min()
            .unwrap_or(u64::MAX);
        if size_of_headers > first_va {
            return Err(err(format!(
                "no room for {} section headers: the headers would need {size_of_headers:#x} bytes but the first section starts at RVA {first_va:#x}",
                out_sections.len()
            )));
        }
    }

    // Lay out raw data: stub sections in their original file order, then new ones.
    let mut order: Vec<usize> = (0..out_sections.len()).collect();
    order.sort_by_key(|&i| {
        let s = &out_sections[i];
        (i >= original_count, s.pointer_to_raw_data)
    });
    let mut cursor = size_of_headers;
    let mut head_end = size_of_headers;
    let mut moves: Vec<(u32, u32, u32)> = Vec::new(); // (old ptr, old size, new ptr)
    let mut tail = Vec::new();
    for &i in &order {
        let s = &mut out_sections[i];
        if s.data_len() == 0 {
            s.pointer_to_raw_data = 0;
            continue;
        }
        if let Data::Owned(v) = &mut s.data {
            v.resize(round_up(v.len() as u64, falign) as usize, 0);
        }
        let new_ptr = round_up(cursor, falign);
        if i < original_count {
            moves.push((s.pointer_to_raw_data, s.size_of_raw_data, new_ptr as u32));
        }
        s.pointer_to_raw_data = new_ptr as u32;
        s.size_of_raw_data = s.data_len() as u32;
        cursor = new_ptr + s.data_len();
        match s.data {
            Data::Owned(_) => head_end = cursor,
            Data::New(input, content) => tail.push((input, content, new_ptr, s.data_len())),
        }
    }
    if cursor > u32::MAX as u64 {
        return Err(Error::InvalidInput(
            "the UKI would be larger than 4 GiB".into(),
        ));
    }
    if tail.first().is_some_and(|t| t.2 < head_end) {
        return Err(err("a new section would precede the stub's sections"));
    }

    // Headers and the stub's sections: copy the stub's headers, then patch.
    let mut out = vec![0u8; head_end as usize];
    let keep = (stub.size_of_headers as usize)
        .min(table_start)
        .min(stub_bytes.len());
    out[..keep].copy_from_slice(&stub_bytes[..keep]);
    let pe_off = stub.pe_offset;
    let opt_off = stub.optional_header_offset;
    put_u16(
        &mut out,
        pe_off + coff::NUMBER_OF_SECTIONS,
        out_sections.len() as u16,
    );
    if symtab != 0 {
        put_u32(&mut out, pe_off + coff::POINTER_TO_SYMBOL_TABLE, 0);
        put_u32(&mut out, pe_off + coff::NUMBER_OF_SYMBOLS, 0);
        put_u16(
            &mut out,
            pe_off + coff::CHARACTERISTICS,
            stub.characteristics | LOCAL_SYMS_STRIPPED,
        );
    }
    let init = (stub.size_of_initialized_data as u64 + added_initialized).min(u32::MAX as u64);
    put_u32(
        &mut out,
        opt_off + opt::SIZE_OF_INITIALIZED_DATA,
        init as u32,
    );
    let image_end = out_sections
        .iter()
        .map(OutSection::virtual_end)
        .max()
        .unwrap_or(0);
    put_u32(
        &mut out,
        opt_off + opt::SIZE_OF_IMAGE,
        round_up(image_end, salign) as u32,
    );
    put_u32(
        &mut out,
        opt_off + opt::SIZE_OF_HEADERS,
        size_of_headers as u32,
    );
    put_u32(&mut out, opt_off + opt::CHECKSUM, 0);
    for (i, s) in out_sections.iter().enumerate() {
        let h = table_start + i * SECTION_HEADER_SIZE;
        out[h..h + 8].copy_from_slice(&s.name);
        put_u32(&mut out, h + 8, s.virtual_size);
        put_u32(&mut out, h + 12, s.virtual_address);
        put_u32(&mut out, h + 16, s.size_of_raw_data);
        put_u32(&mut out, h + 20, s.pointer_to_raw_data);
        out[h + 24..h + 36].copy_from_slice(&s.reloc_fields);
        put_u32(&mut out, h + 36, s.characteristics);
        if let Data::Owned(data) = &s.data {
            let p = s.pointer_to_raw_data as usize;
            out[p..p + data.len()].copy_from_slice(data);
        }
    }
    relocate_debug_directory(&stub, &mut out, &moves)?;
    let excluded = imgctl_measure::authenticode::excluded_header_fields(&stub)
        .map_err(|e| err(format!("not a valid PE image: {e}")))?;
    let placed = out_sections
        .iter()
        .map(|s| PlacedSection {
            name: section_name(&s.name).to_owned(),
            virtual_size: s.virtual_size,
            virtual_address: s.virtual_address,
            size_of_raw_data: s.size_of_raw_data,
            pointer_to_raw_data: s.pointer_to_raw_data,
            characteristics: s.characteristics,
            origin: s.origin,
        })
        .collect();
    Ok(Layout {
        head: out,
        tail,
        sections: placed,
        size: cursor,
        size_of_headers,
        excluded,
    })
}

impl Layout<'_> {
    /// The section table of the image, in header order.
    pub fn sections(&self) -> &[PlacedSection] {
        &self.sections
    }

    /// The size of the image file.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The file ranges the Authenticode image hash leaves out. Everything else is hashed, in
    /// file order: the layout has the section data back to back from `SizeOfHeaders` to the
    /// end of the file, no certificate table and nothing after the last section, so the hash
    /// is the file's bytes minus these ranges.
    pub fn authenticode_excluded(&self) -> Vec<Range<u64>> {
        self.excluded
            .iter()
            .map(|r| r.start as u64..r.end as u64)
            .filter(|r| r.end <= self.size_of_headers)
            .collect()
    }

    /// Writes the image to `w` (named `out` in errors). `stream(i, w)` is called for each
    /// [`Content::Streamed`] input `i`, in file order, and must write exactly its length.
    pub fn write<W: Write>(
        &self,
        w: &mut W,
        out: &Path,
        stream: &mut dyn FnMut(usize, &mut dyn Write) -> Result<(), Error>,
    ) -> Result<(), Error> {
        const ZEROS: [u8; 4096] = [0; 4096];
        let werr = |e| Error::io(out, "writing", e);
        let zeros = |w: &mut W, mut n: u64| -> Result<(), Error> {
            while n > 0 {
                let k = n.min(ZEROS.len() as u64) as usize;
                w.write_all(&ZEROS[..k]).map_err(werr)?;
                n -= k as u64;
            }
            Ok(())
        };
        w.write_all(&self.head).map_err(werr)?;
        let mut at = self.head.len() as u64;
        for &(input, content, ptr, raw) in &self.tail {
            zeros(w, ptr - at)?;
            match content {
                Content::Bytes(b) => w.write_all(b).map_err(werr)?,
                Content::Streamed(len) => {
                    let mut counted = CountingWriter {
                        inner: &mut *w,
                        count: 0,
                    };
                    stream(input, &mut counted)?;
                    if counted.count != len {
                        return Err(Error::InvalidInput(format!(
                            "section {input} of {}: {} bytes were written instead of {len}",
                            out.display(),
                            counted.count
                        )));
                    }
                }
            }
            zeros(w, raw - content.len())?;
            at = ptr + raw;
        }
        zeros(w, self.size - at)
    }
}

/// Where a section named `name` of the stub can take new content in place: its index and the
/// bytes that fit both in its raw data and in memory before the next section's address (the
/// 252 stub's .sbat has 0x200 raw bytes but .sdmagic starts 0x100 bytes after it).
fn in_place_room(stub_sections: &[OutSection], name: &str) -> Option<(usize, u64)> {
    let i = stub_sections
        .iter()
        .position(|s| section_name(&s.name) == name)?;
    let s = &stub_sections[i];
    let next_va = stub_sections
        .iter()
        .map(|o| o.virtual_address as u64)
        .filter(|&va| va > s.virtual_address as u64)
        .min()
        .unwrap_or(u64::MAX);
    let room = (s.size_of_raw_data as u64).min(next_va - s.virtual_address as u64);
    Some((i, room))
}

/// Debug directory entries hold file offsets (`PointerToRawData`); move them with their section.
fn relocate_debug_directory(
    stub: &PeFile<'_>,
    out: &mut [u8],
    moves: &[(u32, u32, u32)],
) -> Result<(), Error> {
    let Some(dir) = stub.data_directory(DIR_DEBUG).filter(|d| d.size != 0) else {
        return Ok(());
    };
    if moves.iter().all(|(old, _, new)| old == new) {
        return Ok(());
    }
    // Find the directory's file offset through the section that holds its RVA.
    let holder = stub
        .sections
        .iter()
        .find(|s| {
            dir.virtual_address >= s.virtual_address
                && (dir.virtual_address as u64 + dir.size as u64)
                    <= s.virtual_address as u64 + s.size_of_raw_data as u64
        })
        .ok_or_else(|| err("the debug directory lies outside every section"))?;
    let shift = |old: u32| -> Option<u32> {
        moves
            .iter()
            .find(|(o, size, _)| old >= *o && old < o + size)
            .map(|(o, _, n)| old - o + n)
    };
    let dir_old = holder.pointer_to_raw_data + (dir.virtual_address - holder.virtual_address);
    let dir_new =
        shift(dir_old).ok_or_else(|| err("cannot relocate the debug directory"))? as usize;
    for i in 0..(dir.size as usize / 28) {
        let field = dir_new + i * 28 + 24;
        let old = u32::from_le_bytes(
            out.get(field..field + 4)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| err("debug directory entry out of bounds"))?,
        );
        if old != 0 {
            if let Some(new) = shift(old) {
                put_u32(out, field, new);
            }
        }
    }
    Ok(())
}

fn section_name(raw: &[u8; 8]) -> &str {
    let n = raw.iter().position(|&b| b == 0).unwrap_or(8);
    std::str::from_utf8(&raw[..n]).unwrap_or("")
}

fn put_u16(buf: &mut [u8], at: usize, v: u16) {
    buf[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn put_u32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// The `.sbat` header line every SBAT section starts with.
pub const SBAT_HEADER: &str =
    "sbat,1,SBAT Version,sbat,1,https://github.com/rhboot/shim/blob/main/SBAT.md";
/// ukify's default UKI line when the recipe gives none.
pub const SBAT_UKI_DEFAULT: &str =
    "uki,1,UKI,uki,1,https://uapi-group.org/specifications/specs/unified_kernel_image/";

/// Merges SBAT texts as ukify's `merge_sbat()` does: one header line, then every non-header
/// line of the stub's, the kernel's and the recipe's SBAT data, then `\n\0`.
pub fn merge_sbat(parts: &[&[u8]]) -> Vec<u8> {
    let mut lines: Vec<String> = Vec::new();
    for part in parts {
        let end = part.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        let text = String::from_utf8_lossy(&part[..end]);
        lines.extend(
            text.lines()
                .filter(|l| !l.trim().is_empty() && !l.starts_with("sbat,"))
                .map(str::to_owned),
        );
    }
    let mut out = String::from(SBAT_HEADER);
    out.push('\n');
    out.push_str(&lines.join("\n"));
    out.push_str("\n\0");
    out.into_bytes()
}

/// Reads the `.sbat` section of a PE image as the stub will see it.
pub fn pe_sbat(pe: &PeFile<'_>) -> Option<Vec<u8>> {
    pe.section(".sbat")
        .and_then(|s| pe.memory_data(s).ok())
        .map(|d| d.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sbat_merge_keeps_one_header_and_ends_in_newline_nul() {
        let stub = b"sbat,1,SBAT Version,sbat,1,https://x\nsystemd-stub,1,The systemd Developers,systemd,252,https://systemd.io/\n\0\0";
        let merged = merge_sbat(&[stub, SBAT_UKI_DEFAULT.as_bytes()]);
        let text = String::from_utf8(merged).unwrap();
        assert_eq!(text.matches("sbat,1,SBAT Version").count(), 1);
        assert!(text.starts_with(SBAT_HEADER));
        assert!(text.contains("\nsystemd-stub,1,"));
        assert!(text.ends_with("unified_kernel_image/\n\0"));
    }

    #[test]
    fn a_non_pe_stub_is_refused() {
        let e = assemble(b"not a pe", &[]).unwrap_err();
        assert!(e.to_string().contains("not a valid PE image"), "{e}");
    }
}
