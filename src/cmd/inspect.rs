//! `imgctl inspect`: what is inside a UKI.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::output::outln;
use anyhow::Context;
use imgctl_measure::{HashAlg, Uki};
use serde::Serialize;

/// Show a UKI's sections (offset, sizes, sha256), the stub it was built from, and its
/// os-release, command line and kernel release.
///
/// Example: imgctl inspect images/demo/demo.efi --json
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The UKI (.efi).
    uki: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct SectionInfo {
    name: String,
    offset: u32,
    virtual_address: u32,
    virtual_size: u32,
    size_of_raw_data: u32,
    measured: bool,
    sha256: String,
}

#[derive(Debug, Serialize)]
struct Report {
    file: String,
    size: usize,
    machine: String,
    stub: Option<String>,
    stub_version: Option<String>,
    stub_sbat: Option<String>,
    semantics: String,
    profiles: usize,
    signed: bool,
    sections: Vec<SectionInfo>,
    os_release: Option<String>,
    cmdline: Option<String>,
    uname: Option<String>,
    sbat: Option<String>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let data =
        imgctl_fsio::read_bounded(args.uki.as_ref(), crate::uki_input::MAX_INPUT, "a PE image")?;
    let uki = Uki::parse(&data)
        .with_context(|| format!("{}: not a valid PE image", args.uki.display()))?;
    let id = uki.identity();
    let semantics = id.semantics();
    let text = |name: &str| {
        uki.pe
            .section(name)
            .and_then(|s| uki.pe.memory_data(s).ok())
            .map(|d| {
                let end = d.iter().position(|&b| b == 0).unwrap_or(d.len());
                String::from_utf8_lossy(&d[..end]).into_owned()
            })
    };
    let sections = uki
        .pe
        .sections
        .iter()
        .map(|s| {
            Ok(SectionInfo {
                name: s.name.clone(),
                offset: s.pointer_to_raw_data,
                virtual_address: s.virtual_address,
                virtual_size: s.virtual_size,
                size_of_raw_data: s.size_of_raw_data,
                measured: semantics.measured_sections().any(|m| m == s.name),
                sha256: HashAlg::SHA256.hash(&uki.pe.memory_data(s)?)?.to_hex(),
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let report = Report {
        file: args.uki.display().to_string(),
        size: data.len(),
        machine: match uki.pe.machine {
            0x8664 => "x86-64".to_owned(),
            0xaa64 => "arm64".to_owned(),
            0x014c => "x86".to_owned(),
            m => format!("{m:#06x}"),
        },
        stub: id.name.clone(),
        stub_version: id.version.clone(),
        stub_sbat: id.sbat_component.clone(),
        semantics: semantics.name().to_owned(),
        profiles: uki.profile_count(),
        signed: uki.pe.is_signed(),
        sections,
        os_release: text(".osrel"),
        cmdline: text(".cmdline"),
        uname: text(".uname"),
        sbat: text(".sbat"),
    };
    if args.json {
        crate::output::print_json(&report)?;
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "{} ({} bytes, {}, {})",
        report.file,
        report.size,
        report.machine,
        if report.signed { "signed" } else { "unsigned" }
    );
    outln!(
        "stub: {} {} (measures as {})",
        report.stub.as_deref().unwrap_or("unknown"),
        report.stub_version.as_deref().unwrap_or(""),
        report.semantics
    );
    if report.profiles > 0 {
        outln!("profiles: {}", report.profiles);
    }
    outln!(
        "\n{:<9} {:>10} {:>10} {:>10} {:>10} {:<4} sha256",
        "section",
        "offset",
        "vaddr",
        "vsize",
        "rawsize",
        "pcr"
    );
    for s in &report.sections {
        outln!(
            "{:<9} {:>#10x} {:>#10x} {:>10} {:>10} {:<4} {}",
            s.name,
            s.offset,
            s.virtual_address,
            s.virtual_size,
            s.size_of_raw_data,
            if s.measured { "11" } else { "-" },
            s.sha256
        );
    }
    for (label, v) in [
        ("os-release", &report.os_release),
        ("cmdline", &report.cmdline),
        ("uname", &report.uname),
    ] {
        if let Some(v) = v {
            outln!("\n{label}:\n{}", v.trim_end());
        }
    }
    Ok(ExitCode::SUCCESS)
}
