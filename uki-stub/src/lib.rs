//! The build step of imgctl-stub, the Rust UEFI stub in `uki-stub/efi/`.
//!
//! The EFI program is a `no_std` static library for the ordinary host target (no extra rustup
//! target, no rust-src): compiled with `-C relocation-model=pic -C no-redzone=yes` and fat LTO,
//! linked by `ld` into a shared object with a gnu-efi style script (`efi/elf_x86_64_efi.lds`),
//! and turned into a PE32+ EFI application here:
//!
//! - [`elf_to_pe`]: every allocated ELF section below the dynamic tables becomes a PE section
//!   at the same RVA; each `R_X86_64_RELATIVE` becomes a PE `IMAGE_REL_BASED_DIR64` base
//!   relocation with the target written as `ImageBase + addend`. Any other relocation type, or
//!   any PLT relocation, is an error: the firmware's loader applies base relocations only.
//! - [`check_red_zone`]: x86-64 firmware interrupts run on the stack of the code they
//!   interrupt, so nothing may live below `%rsp`; the disassembly must show no negative
//!   `%rsp` offset (precompiled `core` could use the red zone; fat LTO recompiles it).
//! - [`build`]: runs cargo, ld and objdump, the checks and the conversion. No timestamps:
//!   the PE `TimeDateStamp` is 0, paths are remapped, so two builds give the same bytes.
//!
//! Only this crate is a workspace member; `cargo build`/`cargo test` never compile the EFI
//! program with host flags.

use std::path::{Path, PathBuf};
use std::process::Command;

use object::read::elf::{ElfFile64, FileHeader, SectionHeader};
use object::write::pe::{NtHeaders, Writer};
use object::{elf, pe, Endianness, Object, ObjectSection};

/// Errors of the stub build.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading the stub ELF: {0}")]
    Elf(#[from] object::Error),
    #[error("writing the stub PE: {0}")]
    Pe(object::write::Error),
    #[error("stub ELF: {0}")]
    Layout(String),
    #[error("stub ELF has relocation type {r_type} at {offset:#x}; only R_X86_64_RELATIVE (8) can become a PE base relocation")]
    Relocation { r_type: u32, offset: u64 },
    #[error("red zone use in the stub: `{0}` (compile with -C no-redzone=yes and fat LTO)")]
    RedZone(String),
    #[error("{what} failed: {detail}")]
    Tool { what: String, detail: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The preferred load address written into the PE header; the firmware relocates anyway.
pub const IMAGE_BASE: u64 = 0x1_4000_0000;
const SECTION_ALIGNMENT: u32 = 0x1000;
const FILE_ALIGNMENT: u32 = 0x200;
/// Raw size reserved for `.sbat`, so that `imgctl build` can merge the UKI's SBAT lines into it
/// in place (as ukify does) while `VirtualSize` stays the stub's own text.
pub const SBAT_RESERVE: u32 = 0x1000;

/// Sections copied into the PE, in address order, with their PE characteristics.
const SECTIONS: &[(&str, u32)] = &[
    (
        ".text",
        pe::IMAGE_SCN_CNT_CODE | pe::IMAGE_SCN_MEM_EXECUTE | pe::IMAGE_SCN_MEM_READ,
    ),
    (
        ".rodata",
        pe::IMAGE_SCN_CNT_INITIALIZED_DATA | pe::IMAGE_SCN_MEM_READ,
    ),
    (
        ".data",
        pe::IMAGE_SCN_CNT_INITIALIZED_DATA | pe::IMAGE_SCN_MEM_READ | pe::IMAGE_SCN_MEM_WRITE,
    ),
    (
        ".sbat",
        pe::IMAGE_SCN_CNT_INITIALIZED_DATA | pe::IMAGE_SCN_MEM_READ,
    ),
    (
        ".sdmagic",
        pe::IMAGE_SCN_CNT_INITIALIZED_DATA | pe::IMAGE_SCN_MEM_READ,
    ),
];

/// Statistics of a conversion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeInfo {
    pub relocations: usize,
    pub entry_rva: u32,
}

/// Converts the linked stub (an x86-64 ELF shared object laid out by `elf_x86_64_efi.lds`)
/// into a PE32+ EFI application.
pub fn elf_to_pe(elf_bytes: &[u8]) -> Result<(Vec<u8>, PeInfo), Error> {
    let elf = ElfFile64::<Endianness>::parse(elf_bytes)?;
    let endian = elf.endian();
    if elf.elf_header().e_machine(endian) != elf::EM_X86_64 {
        return Err(Error::Layout("not an x86-64 ELF".into()));
    }

    // The allocated sections we copy, with their bytes (relocation targets patched below).
    let mut sections: Vec<(&str, u32, u64, Vec<u8>)> = Vec::new();
    for &(name, characteristics) in SECTIONS {
        let s = elf
            .section_by_name(name)
            .ok_or_else(|| Error::Layout(format!("no {name} section")))?;
        let data = s.data()?.to_vec();
        if data.len() as u64 != s.size() {
            return Err(Error::Layout(format!("{name} is not PROGBITS")));
        }
        sections.push((name, characteristics, s.address(), data));
    }

    // Relocations: .rela.dyn must hold R_X86_64_RELATIVE only; no other relocation section.
    let mut relocs = Vec::new();
    for s in elf.elf_section_table().iter() {
        let sh_type = s.sh_type(endian);
        let name = elf
            .elf_section_table()
            .section_name(endian, s)
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .unwrap_or_default();
        if sh_type == elf::SHT_REL {
            return Err(Error::Layout(format!("REL section {name} (expected RELA)")));
        }
        if sh_type != elf::SHT_RELA {
            continue;
        }
        if name != ".rela.dyn" {
            return Err(Error::Layout(format!(
                "unexpected relocation section {name}"
            )));
        }
        let data = s.data(endian, elf_bytes)?;
        for (i, r) in data.chunks(24).enumerate() {
            let [o, info, a] = [0, 8, 16].map(|at| {
                r.get(at..at + 8)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_le_bytes)
            });
            let (Some(offset), Some(info), Some(addend)) = (o, info, a) else {
                return Err(Error::Layout(format!("truncated .rela.dyn entry {i}")));
            };
            let r_type = (info & 0xffff_ffff) as u32;
            if r_type != elf::R_X86_64_RELATIVE {
                return Err(Error::Relocation { r_type, offset });
            }
            relocs.push((offset, addend));
        }
    }
    for &(offset, addend) in &relocs {
        let target = IMAGE_BASE
            .checked_add(addend)
            .ok_or_else(|| Error::Layout(format!("relocation addend {addend:#x} overflows")))?;
        let (_, _, addr, data) = sections
            .iter_mut()
            .find(|(_, _, addr, data)| offset >= *addr && offset + 8 <= *addr + data.len() as u64)
            .ok_or_else(|| {
                Error::Layout(format!(
                    "relocation at {offset:#x} outside the copied sections"
                ))
            })?;
        let at = (offset - *addr) as usize;
        data[at..at + 8].copy_from_slice(&target.to_le_bytes());
    }

    let entry = elf.entry();
    let entry_rva = u32::try_from(entry).map_err(|_| Error::Layout("entry beyond 4 GiB".into()))?;

    // Write the PE: headers, sections at their ELF addresses, then .reloc.
    let mut out = Vec::new();
    let mut w = Writer::new(true, SECTION_ALIGNMENT, FILE_ALIGNMENT, &mut out);
    w.reserve_dos_header_and_stub();
    w.reserve_nt_headers(pe::IMAGE_NUMBEROF_DIRECTORY_ENTRIES);
    w.reserve_section_headers(sections.len() as u16 + 1);
    let mut ranges = Vec::new();
    for (name, characteristics, addr, data) in &sections {
        let mut raw_name = [0u8; 8];
        raw_name[..name.len()].copy_from_slice(name.as_bytes());
        let vsize = data.len() as u32;
        let raw = if *name == ".sbat" {
            vsize.max(SBAT_RESERVE)
        } else {
            vsize
        };
        let range = w.reserve_section(raw_name, *characteristics, vsize, raw);
        if range.virtual_address as u64 != *addr {
            return Err(Error::Layout(format!(
                "{name} at {addr:#x} but the PE places it at {:#x}: keep each section on its own page in the link script",
                range.virtual_address
            )));
        }
        ranges.push(range);
    }
    let mut sorted: Vec<u32> = relocs.iter().map(|&(o, _)| o as u32).collect();
    sorted.sort_unstable();
    for va in &sorted {
        w.add_reloc(*va, pe::IMAGE_REL_BASED_DIR64);
    }
    w.reserve_reloc_section();

    w.write_dos_header_and_stub().map_err(Error::Pe)?;
    w.write_nt_headers(NtHeaders {
        machine: pe::IMAGE_FILE_MACHINE_AMD64,
        time_date_stamp: 0,
        characteristics: pe::IMAGE_FILE_EXECUTABLE_IMAGE
            | pe::IMAGE_FILE_LARGE_ADDRESS_AWARE
            | pe::IMAGE_FILE_LINE_NUMS_STRIPPED
            | pe::IMAGE_FILE_LOCAL_SYMS_STRIPPED
            | pe::IMAGE_FILE_DEBUG_STRIPPED,
        major_linker_version: 0,
        minor_linker_version: 0,
        address_of_entry_point: entry_rva,
        image_base: IMAGE_BASE,
        major_operating_system_version: 0,
        minor_operating_system_version: 0,
        major_image_version: 0,
        minor_image_version: 0,
        major_subsystem_version: 0,
        minor_subsystem_version: 0,
        subsystem: pe::IMAGE_SUBSYSTEM_EFI_APPLICATION,
        dll_characteristics: pe::IMAGE_DLLCHARACTERISTICS_HIGH_ENTROPY_VA
            | pe::IMAGE_DLLCHARACTERISTICS_DYNAMIC_BASE
            | pe::IMAGE_DLLCHARACTERISTICS_NX_COMPAT,
        size_of_stack_reserve: 0,
        size_of_stack_commit: 0,
        size_of_heap_reserve: 0,
        size_of_heap_commit: 0,
    });
    w.write_section_headers();
    for ((_, _, _, data), range) in sections.iter().zip(&ranges) {
        let mut padded = data.clone();
        padded.resize(range.file_size as usize, 0);
        w.write_section(range.file_offset, &padded);
    }
    w.write_reloc_section();
    drop(w);
    Ok((
        out,
        PeInfo {
            relocations: sorted.len(),
            entry_rva,
        },
    ))
}

/// Checks `objdump -d` output for stack accesses below `%rsp` (the red zone).
pub fn check_red_zone(disassembly: &str) -> Result<(), Error> {
    for line in disassembly.lines() {
        if let Some(i) = line.find("(%rsp") {
            let before = &line[..i];
            let disp = before.rsplit([' ', ',', '\t']).next().unwrap_or("");
            if disp.starts_with('-') {
                return Err(Error::RedZone(line.trim().to_owned()));
            }
        }
    }
    Ok(())
}

/// What a stub build produced.
#[derive(Debug, Clone)]
pub struct Built {
    pub path: PathBuf,
    pub size: usize,
    pub info: PeInfo,
}

fn tool(cmd: &mut Command, what: &str) -> Result<Vec<u8>, Error> {
    let out = cmd.output().map_err(|e| Error::Tool {
        what: what.to_owned(),
        detail: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(Error::Tool {
            what: what.to_owned(),
            detail: format!("{}\n{}", out.status, String::from_utf8_lossy(&out.stderr)),
        });
    }
    Ok(out.stdout)
}

/// Builds the stub from the repository at `repo` into `out` (a `.efi` file): cargo (release,
/// own target dir `target/uki-stub/build`), ld, the red-zone and relocation checks, and the
/// conversion.
pub fn build(repo: &Path, out: &Path) -> Result<Built, Error> {
    build_in(repo, &repo.join("target/uki-stub/build"), out)
}

/// [`build`] with the EFI program's cargo target dir at `target_dir`.
pub fn build_in(repo: &Path, target_dir: &Path, out: &Path) -> Result<Built, Error> {
    let efi = repo.join("uki-stub/efi");
    let flags = [
        "-Crelocation-model=pic".to_owned(),
        "-Cno-redzone=yes".to_owned(),
        "-Cpanic=abort".to_owned(),
        "-Clto=fat".to_owned(),
        "-Cdebuginfo=0".to_owned(),
        format!("--remap-path-prefix={}=/imgctl", repo.display()),
    ]
    .join("\x1f");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    tool(
        Command::new(cargo)
            .args(["build", "--release", "--locked", "--manifest-path"])
            .arg(efi.join("Cargo.toml"))
            .arg("--target-dir")
            .arg(target_dir)
            .env("CARGO_ENCODED_RUSTFLAGS", flags)
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_BUILD_RUSTFLAGS")
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("RUSTC_WORKSPACE_WRAPPER")
            .env_remove("RUSTC_WRAPPER"),
        "cargo build of uki-stub/efi",
    )?;
    let lib = target_dir.join("release/libimgctl_stub_efi.a");
    let so = target_dir.join("imgctl-stub.so");
    tool(
        Command::new("ld")
            .args([
                "-shared",
                "-Bsymbolic",
                "-nostdlib",
                "--no-undefined",
                "--gc-sections",
                "--build-id=none",
                "-z",
                "norelro",
                "-z",
                "max-page-size=0x1000",
                "-u",
                "efi_main",
                "-T",
            ])
            .arg(efi.join("elf_x86_64_efi.lds"))
            .arg("--version-script")
            .arg(efi.join("version.map"))
            .arg("-o")
            .arg(&so)
            .arg(&lib),
        "ld (link the stub)",
    )?;
    let dis = tool(
        Command::new("objdump")
            .args(["-d", "--no-show-raw-insn"])
            .arg(&so),
        "objdump -d",
    )?;
    check_red_zone(&String::from_utf8_lossy(&dis))?;
    let elf = std::fs::read(&so).map_err(|source| Error::Io {
        path: so.clone(),
        source,
    })?;
    let (pe, info) = elf_to_pe(&elf)?;
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.to_owned(),
            source,
        })?;
    }
    std::fs::write(out, &pe).map_err(|source| Error::Io {
        path: out.to_owned(),
        source,
    })?;
    Ok(Built {
        path: out.to_owned(),
        size: pe.len(),
        info,
    })
}

/// Where `scripts/build-stub.sh` puts the stub, relative to the repository.
pub const DEFAULT_OUTPUT: &str = "target/uki-stub/imgctl-stub.efi";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn red_zone_accesses_are_found() {
        let ok = "  401000:\tmov    %rax,0x8(%rsp)\n  401004:\tlea    0x10(%rsp),%rdi\n";
        assert!(check_red_zone(ok).is_ok());
        let bad = "  401000:\tmov    %rax,-0x8(%rsp)\n";
        assert!(matches!(check_red_zone(bad), Err(Error::RedZone(_))));
        let bad2 = "  401000:\tmovups -0x28(%rsp),%xmm0\n";
        assert!(check_red_zone(bad2).is_err());
    }

    #[test]
    fn non_elf_input_is_an_error() {
        assert!(elf_to_pe(b"MZ not an elf").is_err());
    }
}
