//! `imgctl ext build` and `imgctl ext inspect`: system and configuration extension images.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::output::outln;
use anyhow::Context;
use imgctl_extensions::pipeline::{build, inspect_file, BuildOptions};
use imgctl_extensions::ExtensionSpec;

/// System (sysext) and configuration (confext) extension images: erofs/squashfs + dm-verity +
/// signed root hash, in a GPT disk image that systemd-sysext/-confext and systemd-dissect accept.
///
/// Example: imgctl ext build recipes/demo-sysext.yaml && imgctl ext inspect images/demo-sysext/demo-sysext.raw
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: ExtCommand,
}

#[derive(Debug, clap::Subcommand)]
enum ExtCommand {
    Build(BuildArgs),
    Inspect(InspectArgs),
    Verity(VerityArgs),
    PredictPcrs(PredictArgs),
}

/// Predict what systemd-stub measures for files placed next to a UKI (`<uki>.efi.extra.d/`):
/// the joined command line of PE addons (*.addon.efi here and --global-addon in
/// loader/addons/, PCR 12, systemd 256 and later) and their devicetrees (257), then the
/// sidecar cpios it builds from credentials (*.cred, PCR 12), extension images (*.raw, PCR 13)
/// and, from systemd 256, configuration extensions (*.confext.raw, PCR 12), then the addons'
/// microcode (in reverse order) and initrds (257), in the stub's order. The PCR values
/// assume nothing else was measured into PCR 12 (no passed command line or profile) and PCR 13.
///
/// Example: imgctl ext predict-pcrs images/demo-sysext/demo-sysext.raw --stub-semantics systemd-252 --json
#[derive(Debug, clap::Args)]
struct PredictArgs {
    /// The .raw, .cred and .addon.efi files, named as they will be on the ESP.
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// A PE addon in ESP/loader/addons/ (applies to every UKI); repeatable.
    #[arg(long = "global-addon", value_name = "FILE")]
    global_addons: Vec<PathBuf>,
    /// The UKI the files go beside: the stub skips an addon whose .uname differs from its
    /// .uname (an addon with .uname is refused without it).
    #[arg(long, value_name = "UKI")]
    uki: Option<PathBuf>,
    /// The systemd version of the stub that will boot them: 252 (Debian 12), 257 (Debian 13), …
    #[arg(
        long = "stub-semantics",
        default_value = "systemd-252",
        value_name = "VERSION"
    )]
    semantics: crate::uki_input::SemanticsArg,
    /// PCR bank; repeat for several. Default: sha1, sha256, sha384, sha512.
    #[arg(long = "bank", value_name = "BANK")]
    banks: Vec<imgctl_measure::HashAlg>,
    /// Print JSON on stdout.
    #[arg(long)]
    json: bool,
}

/// Compute a dm-verity hash tree like `veritysetup format DATA HASH`: superblock plus tree,
/// SHA-256, hashed in parallel on all cores. Prints the root hash.
///
/// Example: imgctl ext verity data.img data.verity --salt 0011 --uuid 11111111-2222-3333-4444-555555555555
#[derive(Debug, clap::Args)]
struct VerityArgs {
    /// The data device (only whole blocks are covered, as with veritysetup).
    data: PathBuf,
    /// Where to write the superblock and hash tree.
    hash: PathBuf,
    /// Salt as hex ("-" for none).
    #[arg(long)]
    salt: String,
    /// Superblock UUID.
    #[arg(long)]
    uuid: String,
    /// Data and hash block size.
    #[arg(long, default_value_t = 4096)]
    block_size: u32,
    /// Print JSON on stdout.
    #[arg(long)]
    json: bool,
}

/// Build an extension image from an extension recipe (YAML). Writes NAME.raw (confext:
/// NAME.confext.raw) and manifest.json atomically into DIR (default images/NAME); a failed build
/// leaves nothing behind. SOURCE_DATE_EPOCH (default 0) fixes every timestamp.
///
/// Example: SOURCE_DATE_EPOCH=1700000000 imgctl ext build recipes/demo-sysext.yaml -o out/
#[derive(Debug, clap::Args)]
struct BuildArgs {
    /// The extension recipe.
    recipe: PathBuf,
    /// Output folder. Default: images/NAME.
    #[arg(short, long, value_name = "DIR")]
    output: Option<PathBuf>,
    /// Print the manifest as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Append the image's artifact record (sha256, root hash, partition UUIDs, signing
    /// certificate) to this transparency log and write its inclusion proof beside the image as
    /// NAME.raw.tlog-proof.
    #[arg(long, value_name = "DIR", requires = "log_key")]
    log: Option<PathBuf>,
    /// The log's signing key (with --log).
    #[arg(long, value_name = "KEY", requires = "log")]
    log_key: Option<PathBuf>,
    /// For a recipe whose `signing.key` is a `pkcs11:` URI.
    #[command(flatten)]
    pkcs11: crate::cmd::sign_pcrs::Pkcs11Args,
}

/// Show an extension image's partitions, verity superblock and signature, checked against each
/// other; --verify recomputes the hash tree over the data partition.
///
/// Example: imgctl ext inspect images/demo-sysext/demo-sysext.raw --verify --json
#[derive(Debug, clap::Args)]
struct InspectArgs {
    /// The disk image.
    image: PathBuf,
    /// Recompute the dm-verity tree and compare it with the hash partition, the partition UUIDs
    /// and the signature's rootHash, and verify the PKCS#7 signature over it. Fails closed.
    #[arg(long)]
    verify: bool,
    /// With --verify: the signer must be this certificate (PEM/DER), or one in this folder.
    /// Without it a valid signature is reported as not checked against any trust anchor.
    #[arg(long, value_name = "CERT.pem|DIR", requires = "verify")]
    certificate: Option<PathBuf>,
    /// Print JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        ExtCommand::Build(a) => run_build(a),
        ExtCommand::Inspect(a) => run_inspect(a),
        ExtCommand::Verity(a) => run_verity(a),
        ExtCommand::PredictPcrs(a) => run_predict(a),
    }
}

fn run_build(args: BuildArgs) -> anyhow::Result<ExitCode> {
    let ext = ExtensionSpec::load(&args.recipe)?;
    let out_dir = args
        .output
        .unwrap_or_else(|| PathBuf::from("images").join(ext.name.as_str()));
    imgctl_fsio::check_output_dir(&out_dir)?;
    // The log and its key are checked before the build: a wrong key writes nothing.
    let log = match (&args.log, &args.log_key) {
        (Some(dir), Some(key)) => Some(crate::cmd::log::ArtifactLog::check(dir, key)?),
        _ => None,
    };
    let opts = BuildOptions {
        out_dir,
        source_date_epoch: crate::output::source_date_epoch()?,
        pkcs11_module: args.pkcs11.pkcs11_module.clone(),
    };
    let out = crate::output::with_spinner("building extension", || build(&ext, &opts))
        .with_context(|| format!("building {}", args.recipe.display()))?;
    let logged = match &log {
        Some(l) => {
            let mut record = out.manifest.record()?;
            record.events = imgctl_extensions::pipeline::alone_beside_uki_events(&out.image)?;
            let mut proof = out.image.clone().into_os_string();
            proof.push(".tlog-proof");
            let proof = PathBuf::from(proof);
            let index = l.publish(&record, &proof).with_context(|| {
                format!("logging the image {} (it is built)", out.image.display())
            })?;
            Some((index, proof))
        }
        None => None,
    };
    if args.json {
        crate::output::print_json(&out.manifest)?;
        return Ok(ExitCode::SUCCESS);
    }
    let m = &out.manifest;
    outln!(
        "built {} {} {} ({})",
        m.kind,
        m.name,
        m.version,
        m.filesystem_name()
    );
    outln!("  image      {} ({} bytes)", out.image.display(), m.size);
    outln!("  sha256     {}", m.sha256);
    outln!("  root hash  {}", m.verity.root_hash);
    outln!(
        "  signed     {}",
        if m.verity.signed { "yes" } else { "no" }
    );
    outln!("  files      {}", m.files.len());
    outln!("  manifest   {}", out.manifest_path.display());
    if let Some((index, proof)) = logged {
        outln!("  logged     entry {index}, proof {}", proof.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn run_inspect(args: InspectArgs) -> anyhow::Result<ExitCode> {
    let trusted = match &args.certificate {
        Some(c) => Some(imgctl_extensions::sign::read_trust_anchors(c)?),
        None => None,
    };
    let (insp, check) = inspect_file(&args.image, args.verify, trusted.as_deref())?;
    // Fail closed: with --verify, only a verification that ran and passed is ok.
    let ok = insp.problems.is_empty() && (!args.verify || check.as_ref().is_some_and(|c| c.ok));
    if args.json {
        crate::output::print_json(&serde_json::json!({
            "image": args.image,
            "inspection": insp,
            "verify": check,
            "ok": ok,
        }))?;
    } else {
        outln!("disk {}", insp.disk_uuid);
        for p in &insp.partitions {
            outln!(
                "  {:<16} {} uuid {} offset {} size {} label {:?}",
                p.designator.unwrap_or("?"),
                p.architecture.unwrap_or("?"),
                p.uuid,
                p.offset,
                p.size,
                p.label
            );
        }
        if let Some(v) = &insp.verity {
            outln!(
                "verity {} type {} blocks {}×{} uuid {} salt {}",
                v.hash_algorithm,
                v.hash_type,
                v.data_blocks,
                v.data_block_size,
                v.uuid,
                v.salt
            );
        }
        if let Some(s) = &insp.signature {
            outln!(
                "signature root hash {} ({} bytes PKCS#7)",
                s.root_hash,
                s.signature_size
            );
        }
        if let Some(c) = &check {
            outln!(
                "recomputed root hash {}: hash partition {}, partition UUIDs {}",
                c.root_hash.as_deref().unwrap_or("(not computed)"),
                if c.hash_partition_matches {
                    "matches"
                } else {
                    "DIFFERS"
                },
                if c.partition_uuids_match {
                    "match"
                } else {
                    "DIFFER"
                },
            );
            match (c.signature, &c.signer) {
                ("valid", Some(who)) if c.signer_trusted => {
                    outln!("signature valid, signed by {who} (a given certificate)")
                }
                ("valid", Some(who)) => outln!(
                    "signature valid, signed by {who}; the signer is NOT checked against any trust anchor (give --certificate)"
                ),
                (state, _) => outln!("signature {state}"),
            }
            for f in &c.failures {
                eprintln!("imgctl: verify failed: {f}");
            }
        } else {
            for p in &insp.problems {
                eprintln!("imgctl: problem: {p}");
            }
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn run_verity(args: VerityArgs) -> anyhow::Result<ExitCode> {
    let salt = if args.salt == "-" {
        Vec::new()
    } else {
        hex::decode(&args.salt).with_context(|| format!("--salt {:?} is not hex", args.salt))?
    };
    let uuid: imgctl_extensions::Guid = args.uuid.parse()?;
    let params = imgctl_extensions::VerityParams::with_block_sizes(
        &salt,
        uuid.0,
        args.block_size,
        args.block_size,
    )?;
    let tree = crate::output::with_spinner("hashing the data device", || {
        imgctl_extensions::pipeline::write_verity(&args.data, &args.hash, params)
    })?;
    if args.json {
        crate::output::print_json(&serde_json::json!({
            "root_hash": tree.root_hash_hex(),
            "data_blocks": tree.superblock.data_blocks,
            "hash_device_size": tree.hash_device.len(),
        }))?;
    } else {
        outln!("{}", tree.root_hash_hex());
    }
    Ok(ExitCode::SUCCESS)
}

fn run_predict(args: PredictArgs) -> anyhow::Result<ExitCode> {
    use imgctl_measure::HashAlg;
    let semantics = args.semantics.explicit("an extension image")?;
    let banks = if args.banks.is_empty() {
        HashAlg::ALL.to_vec()
    } else {
        args.banks
    };
    let mut addons = imgctl_extensions::pipeline::Addons {
        global: args.global_addons.clone(),
        ..Default::default()
    };
    if let Some(path) = &args.uki {
        let data = crate::uki_input::load_uki(path)?;
        let uki = imgctl_measure::Uki::parse(&data)
            .with_context(|| format!("{}: not a PE image", path.display()))?;
        addons.uki_known = true;
        addons.uki_uname = match uki.pe.section(".uname") {
            Some(s) => Some(
                uki.pe
                    .memory_data(s)
                    .with_context(|| format!("{}: .uname", path.display()))?
                    .into_owned(),
            ),
            None => None,
        };
    }
    let m =
        imgctl_extensions::pipeline::predict_beside_uki(semantics, &args.images, &addons, &banks)?;
    if m.is_empty() {
        eprintln!(
            "imgctl: none of these files would be picked up by the stub; nothing is measured"
        );
    }
    if args.json {
        crate::output::print_json(&m)?;
        return Ok(ExitCode::SUCCESS);
    }
    for s in &m {
        outln!("PCR {} \"{}\": {}", s.pcr, s.description, s.files.join(" "));
        for b in &s.banks {
            outln!(
                "  {:<7} event {}  pcr {}",
                b.bank,
                b.event_digest,
                b.pcr_value
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
