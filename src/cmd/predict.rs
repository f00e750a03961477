//! `imgctl predict-pcrs`: PCR 11 per boot phase, in every bank.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use imgctl_measure::uki::as_measured;
use imgctl_measure::{predict_pcr11, HashAlg, PhasePath};

use crate::output::outln;
use crate::uki_input::{load_uki, SemanticsArg};

/// Predict the PCR 11 values a machine shows when it boots a UKI with systemd-stub: right
/// after the stub (the empty boot path ":") and after each systemd-pcrphase step.
///
/// The JSON output has the shape `systemd-measure calculate --json` prints.
///
/// Example: imgctl predict-pcrs images/demo/demo.efi --bank sha256 --phase enter-initrd --json
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A UKI (.efi) or a recipe (.yaml), which is assembled in memory.
    input: PathBuf,
    /// PCR bank; repeat for several. Default: sha1, sha256, sha384, sha512.
    #[arg(long = "bank", value_name = "BANK")]
    banks: Vec<HashAlg>,
    /// Boot phase path (pcrphase words joined by ':'; ':' is right after the stub); repeat for
    /// several. Default: ':' and systemd-measure's four default paths.
    #[arg(long = "phase", value_name = "PATH")]
    phases: Vec<String>,
    /// Profile of a multi-profile UKI to predict for.
    #[arg(long, default_value_t = 0)]
    profile: u32,
    /// Which stub's measurement rules to apply: `auto` (from the stub's .sdmagic) or the
    /// systemd version of the stub (252, 254, 256, 257, 258; `systemd-257` also).
    #[arg(long, default_value = "auto", value_name = "VERSION")]
    stub_semantics: SemanticsArg,
    /// Print JSON (systemd-measure's shape) instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let data = load_uki(&args.input)?;
    let (_uki, semantics, sections) =
        crate::uki_input::measured_sections(&args.input, &data, args.stub_semantics, args.profile)?;
    if !sections.iter().any(|(n, _)| n == ".linux") {
        eprintln!(
            "imgctl: warning: {} has no .linux section; is it a UKI?",
            args.input.display()
        );
    }
    let banks = if args.banks.is_empty() {
        HashAlg::ALL.to_vec()
    } else {
        args.banks.clone()
    };
    let phases = crate::uki_input::phase_paths(&args.phases, PhasePath::defaults())?;
    let prediction = crate::output::with_spinner("hashing sections", || {
        predict_pcr11(semantics, &as_measured(&sections), &banks, &phases)
    })
    .with_context(|| args.input.display().to_string())?;
    if args.json {
        crate::output::print_json(&prediction.to_json())?;
    } else {
        outln!("# stub semantics: {}", semantics.name());
        for phase in &phases {
            let label = if phase.is_empty() {
                ":".to_owned()
            } else {
                phase.to_string()
            };
            outln!("# PCR[11] phase <{label}>");
            for bank in &banks {
                if let Some(d) = prediction.get(*bank, phase) {
                    outln!("11:{bank}={d}");
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
