//! `imgctl predict-pcrs`: PCR 11 per boot phase, in every bank.

use std::path::PathBuf;
use std::process::ExitCode;

use imgctl_measure::uki::DtbCandidate;
use imgctl_measure::{HashAlg, PhasePath};

use crate::output::outln;
use crate::uki_input::{load_uki, DtbArgs, SemanticsArg};

/// Predict the PCR 11 values a machine shows when it boots a UKI with systemd-stub: right
/// after the stub (the empty boot path ":") and after each systemd-pcrphase step.
///
/// The JSON output has the shape `systemd-measure calculate --json` prints. A UKI with
/// `.dtbauto` sections (systemd 257+) measures differently per machine: without `--dtb-match`,
/// `--hwids` or `--no-dtb` there is one prediction per `.dtbauto` the stub may select and one
/// for none, labelled (JSON: `{"candidates": [{"dtbauto": null | {"index", "compatible"}, "pcrs": …}]}`).
///
/// Example: imgctl predict-pcrs images/demo/demo.efi --bank sha256 --phase enter-initrd --json
///
/// Example: imgctl predict-pcrs board.efi --hwids /sys/firmware/dmi/tables/DMI
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
    /// Profile of a multi-profile UKI to predict for. N != 0 on a 257+ stub also predicts PCR
    /// 12 after the profile tag.
    #[arg(long, default_value_t = 0)]
    profile: u32,
    /// The profile is booted through systemd-boot 257 (its `uki.efi@ID` entry), which passes
    /// `@N` and measures it into PCR 12 before the stub's profile tag.
    #[arg(long, requires = "profile")]
    via_systemd_boot: bool,
    /// Which stub's measurement rules to apply: `auto` (from the stub's .sdmagic) or the
    /// systemd version of the stub (252, 254, 256, 257, 258; `systemd-257` also).
    #[arg(long, default_value = "auto", value_name = "VERSION")]
    stub_semantics: SemanticsArg,
    #[command(flatten)]
    dtb: DtbArgs,
    /// Which PCR: 11 (default; the stub's measurements) or 7 (the Secure Boot policy, as
    /// OVMF measures it booting this signed UKI, or any UKI when the variable store does not
    /// enforce Secure Boot; needs --firmware-vars).
    #[arg(long, default_value_t = 11, value_parser = clap::value_parser!(u32).range(7..=11))]
    pcr: u32,
    /// The firmware's variable store (an EDK2 raw varstore such as OVMF_VARS_4M.fd, e.g. the
    /// one `imgctl vm --enroll` boots with): PCR 7 is predicted from its SecureBoot, PK, KEK,
    /// db and dbx and the db entry that vouches for the UKI's signer.
    #[arg(long, value_name = "FILE")]
    firmware_vars: Option<PathBuf>,
    /// Print JSON (systemd-measure's shape) instead of text.
    #[arg(long)]
    json: bool,
}

/// `--pcr 7`: `{"<bank>": {"7": "<hex>"}}` (the shape of `vm --capture`'s pcrs.json) or text.
fn predict_pcr7(args: &Args) -> anyhow::Result<ExitCode> {
    use anyhow::Context;
    use imgctl_measure::secureboot::{pcr7_events_trusting, VarStore};
    let Some(vars_path) = &args.firmware_vars else {
        anyhow::bail!("--pcr 7 needs --firmware-vars FILE (the firmware's variable store)");
    };
    let raw = imgctl_fsio::read_bounded(vars_path, 64 << 20, "a firmware variable store")?;
    let store = VarStore::parse(&raw).with_context(|| vars_path.display().to_string())?;
    let data = load_uki(&args.input)?;
    if !store.secure_boot() {
        // Nothing is verified, so the UKI's signature does not matter.
        let events = imgctl_measure::secureboot::pcr7_events_without_secure_boot(&store)
            .with_context(|| vars_path.display().to_string())?;
        return print_pcr7(args, &events);
    }
    let signatures = imgctl_extensions::authenticode::pe_signatures(&data)
        .with_context(|| args.input.display().to_string())?;
    let signer = signatures
        .iter()
        .find(|s| s.problem().is_none())
        .and_then(|s| s.signature.as_ref().ok())
        .with_context(|| {
            format!(
                "{}: no valid Authenticode signature, so Secure Boot firmware would refuse it",
                args.input.display()
            )
        })?;
    // The authority: the db certificate that is the signer's, or the CA that issued it.
    let issued = |ca: &[u8]| imgctl_extensions::pkcs7::issued_by(&signer.certificate_der, ca);
    let events =
        pcr7_events_trusting(&store, &signer.certificate_der, &issued).with_context(|| {
            format!(
                "predicting PCR 7 for {} with {}",
                args.input.display(),
                vars_path.display()
            )
        })?;
    print_pcr7(args, &events)
}

fn print_pcr7(
    args: &Args,
    events: &[imgctl_measure::secureboot::Pcr7Event],
) -> anyhow::Result<ExitCode> {
    use imgctl_measure::secureboot::replay_pcr7;
    let banks = if args.banks.is_empty() {
        HashAlg::ALL.to_vec()
    } else {
        args.banks.clone()
    };
    let mut out = serde_json::Map::new();
    for bank in &banks {
        let v = replay_pcr7(events, *bank)?;
        out.insert(bank.to_string(), serde_json::json!({ "7": v.to_hex() }));
    }
    if args.json {
        crate::output::print_json(&serde_json::Value::Object(out))?;
    } else {
        for e in events {
            outln!("# {}", e.kind);
        }
        for bank in &banks {
            outln!("7:{bank}={}", replay_pcr7(events, *bank)?);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match (args.pcr, &args.firmware_vars) {
        (7, _) => return predict_pcr7(&args),
        (11, None) => {}
        (11, Some(_)) => anyhow::bail!("--firmware-vars is for --pcr 7"),
        (n, _) => anyhow::bail!("PCR {n} is not predicted (7 or 11)"),
    }
    let banks = if args.banks.is_empty() {
        HashAlg::ALL.to_vec()
    } else {
        args.banks.clone()
    };
    let phases = crate::uki_input::phase_paths(&args.phases, PhasePath::defaults())?;
    // Which .dtbauto the stub selects depends on the machine: one prediction per candidate
    // (and "none") unless the machine is named. A UKI file is streamed; a recipe (or a file
    // whose headers the streamed reader does not take) is read whole.
    let streamed = crate::uki_input::predict_streamed(
        &args.input,
        args.stub_semantics,
        args.profile,
        &args.dtb,
        &banks,
        &phases,
    )?;
    let (semantics, names, rows) = match streamed {
        Some(p) => (p.semantics, p.section_names, p.rows),
        None => {
            let data = load_uki(&args.input)?;
            let (_uki, semantics, sections) = crate::uki_input::measured_sections(
                &args.input,
                &data,
                args.stub_semantics,
                args.profile,
            )?;
            let rows = args
                .dtb
                .predict(&args.input, semantics, &sections, &banks, &phases)?;
            let names = sections.into_iter().map(|(n, _)| n).collect();
            (semantics, names, rows)
        }
    };
    if !names.iter().any(|n| n == ".linux") {
        eprintln!(
            "imgctl: warning: {} has no .linux section; is it a UKI?",
            args.input.display()
        );
    }
    // Profile N != 0 on a 257+ stub: the profile tag in PCR 12 (before anything else there).
    let pcr12 = imgctl_measure::predict::profile_pcr12(
        semantics,
        args.profile,
        args.via_systemd_boot,
        &banks,
    )?;
    let label = |c: &Option<DtbCandidate>| match c {
        None => "none selected".to_owned(),
        Some(c) => format!(".dtbauto #{} ({})", c.index, c.compatible),
    };
    // systemd-measure's shape: per bank a list of {pcr, hash, phase}; PCR 12 joins it.
    let with_pcr12 = |mut v: serde_json::Value| {
        for (bank, _, value) in pcr12.iter().flatten() {
            if let Some(list) = v.get_mut(bank.to_string()).and_then(|l| l.as_array_mut()) {
                list.push(serde_json::json!({"pcr": 12, "hash": value.to_hex()}));
            }
        }
        v
    };
    if args.json {
        if rows.len() == 1 {
            crate::output::print_json(&with_pcr12(rows[0].1.to_json()))?;
        } else {
            let list: Vec<serde_json::Value> = rows
                .iter()
                .map(|(c, p)| {
                    serde_json::json!({
                        "dtbauto": c.as_ref().map(|c| serde_json::json!({
                            "index": c.index, "compatible": c.compatible})),
                        "pcrs": with_pcr12(p.to_json()),
                    })
                })
                .collect();
            crate::output::print_json(&serde_json::json!({ "candidates": list }))?;
        }
    } else {
        outln!("# stub semantics: {}", semantics.name());
        if let Some(selected) = args.dtb.selection() {
            outln!("# devicetree (--hwids): {selected}");
        }
        if let Some(values) = &pcr12 {
            outln!(
                "# PCR[12] after the profile {} tag (EV_EVENT_TAG {:#x})",
                args.profile,
                imgctl_measure::predict::PROFILE_EVENT_TAG_ID
            );
            for (bank, _, value) in values {
                outln!("12:{bank}={value}");
            }
        }
        for (c, prediction) in &rows {
            if rows.len() > 1 {
                outln!("# devicetree: {}", label(c));
            }
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
    }
    Ok(ExitCode::SUCCESS)
}
