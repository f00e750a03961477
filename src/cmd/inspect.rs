//! `imgctl inspect`: what is inside a UKI.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::output::outln;
use anyhow::Context;
use imgctl_measure::{HashAlg, Uki};
use serde::Serialize;

/// Show a UKI's sections (offset, sizes, sha256), the stub it was built from, its
/// os-release, command line and kernel release, its Authenticode hash in every bank (what
/// firmware extends into PCR 4), and each Secure Boot signature: signer, issuer, serial,
/// digest algorithm and whether it verifies over this image.
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
struct SignatureInfo {
    offset: usize,
    subject: Option<String>,
    issuer: Option<String>,
    serial: Option<String>,
    digest_algorithm: Option<String>,
    /// The image hash the signature carries.
    signed_digest: Option<String>,
    /// The signature is valid and over this image's Authenticode hash.
    verifies: bool,
    /// Why it does not, when it does not.
    problem: Option<String>,
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
    /// The Authenticode hash (what firmware extends into PCR 4) per bank.
    authenticode: Vec<(String, String)>,
    signatures: Vec<SignatureInfo>,
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
    let authenticode = imgctl_measure::authenticode::authenticode_digests(&uki.pe, &HashAlg::ALL)
        .with_context(|| args.uki.display().to_string())?
        .into_iter()
        .zip(HashAlg::ALL)
        .map(|(d, b)| (b.to_string(), d.to_hex()))
        .collect();
    // A certificate table that cannot be read is reported, not fatal: inspect shows why.
    let signatures = match imgctl_extensions::authenticode::pe_signatures(&data) {
        Err(e) => vec![SignatureInfo {
            offset: 0,
            subject: None,
            issuer: None,
            serial: None,
            digest_algorithm: None,
            signed_digest: None,
            verifies: false,
            problem: Some(format!("unreadable certificate table: {e}")),
        }],
        Ok(list) => list
            .into_iter()
            .map(|p| {
                let problem = p.problem();
                let s = p.signature.as_ref().ok();
                SignatureInfo {
                    offset: p.offset,
                    subject: s.map(|s| s.subject.clone()),
                    issuer: s.map(|s| s.issuer.clone()),
                    serial: s.map(|s| s.serial.clone()),
                    digest_algorithm: s.map(|s| s.digest_algorithm.clone()),
                    signed_digest: s.map(|s| hex::encode(&s.image_digest)),
                    verifies: problem.is_none(),
                    problem,
                }
            })
            .collect(),
    };
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
        authenticode,
        signatures,
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
    outln!("\nauthenticode (PCR 4):");
    for (bank, hex) in &report.authenticode {
        outln!("  {bank:<7} {hex}");
    }
    for (i, s) in report.signatures.iter().enumerate() {
        outln!(
            "signature {} (offset {:#x}): {}",
            i + 1,
            s.offset,
            match &s.problem {
                None => "verifies over this image".to_owned(),
                Some(p) => format!("DOES NOT VERIFY: {p}"),
            }
        );
        if let Some(subject) = &s.subject {
            outln!("  subject: {subject}");
            outln!("  issuer:  {}", s.issuer.as_deref().unwrap_or(""));
            outln!("  serial:  {}", s.serial.as_deref().unwrap_or(""));
            outln!(
                "  digest:  {} {}",
                s.digest_algorithm.as_deref().unwrap_or(""),
                s.signed_digest.as_deref().unwrap_or("")
            );
        }
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
