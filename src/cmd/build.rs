//! `imgctl build`: recipe → UKI, initrd, pcrs.json, manifest.json.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use imgctl_builder::build::{build, BuildOptions};
use imgctl_builder::recipe::Recipe;
use imgctl_measure::{HashAlg, PhasePath};

use crate::output::outln;
use crate::uki_input::SemanticsArg;

/// Build the UKI a recipe describes, with its initrd, predicted PCRs (pcrs.json) and a
/// manifest of every input and section with digests in every bank. Files are written
/// atomically into DIR (default images/NAME/); a failed build leaves nothing behind.
/// SOURCE_DATE_EPOCH (default 0) sets every embedded timestamp: same inputs, same bytes.
///
/// Example: imgctl build recipes/demo.yaml -o images/demo
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The recipe (YAML).
    recipe: PathBuf,
    /// Output folder. Default: images/NAME.
    #[arg(short, long, value_name = "DIR")]
    output: Option<PathBuf>,
    /// Stub semantics for pcrs.json.
    #[arg(long, value_enum, default_value_t)]
    stub_semantics: SemanticsArg,
    /// Sign the predicted PCR 11 values with this private key (PEM: RSA-2048 or ECDSA P-256)
    /// and embed .pcrsig, plus .pcrpkey when the recipe names none, as ukify does.
    #[arg(long, value_name = "FILE")]
    pcr_private_key: Option<PathBuf>,
    /// Append the UKI's entry to this transparency log (see `imgctl log init`) and write its
    /// inclusion proof next to the UKI as NAME.efi.tlog-proof.
    #[arg(long, value_name = "DIR", requires = "log_key")]
    log: Option<PathBuf>,
    /// The log's signing key (with --log).
    #[arg(long, value_name = "FILE")]
    log_key: Option<PathBuf>,
    /// Print the manifest as JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let recipe = Recipe::load(&args.recipe)?;
    let out_dir = args
        .output
        .clone()
        .unwrap_or_else(|| PathBuf::from("images").join(&recipe.name));
    let mut opts = BuildOptions::new(out_dir, crate::output::source_date_epoch()?);
    opts.semantics = match args.stub_semantics {
        SemanticsArg::Auto => None,
        SemanticsArg::Systemd252 => Some(imgctl_measure::StubSemantics::Systemd252),
        SemanticsArg::Upstream => Some(imgctl_measure::StubSemantics::Upstream),
    };
    if let Some(k) = &args.pcr_private_key {
        let pem = std::fs::read(k).with_context(|| format!("reading {}", k.display()))?;
        opts.pcr_key = Some(
            imgctl_measure::keys::SigningKey::from_pem(&pem)
                .with_context(|| format!("PCR signing key {}", k.display()))?,
        );
    }
    let out = crate::output::with_spinner("building", || build(&recipe, &opts))
        .with_context(|| format!("building {}", args.recipe.display()))?;
    let proof = match (&args.log, &args.log_key) {
        (Some(dir), Some(key)) => Some(log_build(&out, dir, key)?),
        _ => None,
    };
    if args.json {
        crate::output::print_json(&out.manifest)?;
        return Ok(ExitCode::SUCCESS);
    }
    outln!("built {} {}", recipe.name, recipe.version);
    outln!(
        "  uki       {} ({} bytes)",
        out.uki.display(),
        out.manifest.uki.size
    );
    if let Some(i) = &out.initrd {
        outln!("  initrd    {}", i.display());
    }
    outln!("  pcrs      {}", out.pcrs.display());
    outln!("  manifest  {}", out.manifest_path.display());
    outln!(
        "  stub      {} ({})",
        out.manifest
            .uki
            .stub
            .sdmagic
            .as_deref()
            .unwrap_or("unknown"),
        out.manifest.uki.stub.semantics
    );
    if let Some((path, index)) = &proof {
        outln!("  logged    entry {index}, proof {}", path.display());
    }
    if let Some(v) = out.prediction.get(HashAlg::SHA256, &PhasePath::default()) {
        outln!("  PCR 11 sha256 after the stub: {v}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Appends the build's entry to the log and writes the proof beside the UKI.
fn log_build(
    out: &imgctl_builder::build::BuildOutput,
    dir: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<(PathBuf, u64)> {
    let entry = imgctl_builder::build::log_entry(out)?;
    let signer = crate::cmd::log::load_signer(key)?;
    let proofs = imgctl_tlog_store::append_entries(dir, signer, &[entry.encode()])
        .with_context(|| format!("appending to the log {}", dir.display()))?;
    let proof = proofs
        .into_iter()
        .next()
        .context("the log returned no proof")?;
    let name = format!(
        "{}.tlog-proof",
        out.uki
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("uki")
    );
    let parent = out.uki.parent().unwrap_or(std::path::Path::new("."));
    let mut stage = imgctl_builder::output::Stage::new(parent)?;
    let path = stage.add(&name, proof.to_text().as_bytes())?;
    stage.commit()?;
    Ok((path, proof.index))
}
