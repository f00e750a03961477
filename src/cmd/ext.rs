//! `imgctl ext build` and `imgctl ext inspect`: system and configuration extension images.

use std::path::PathBuf;
use std::process::ExitCode;

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
}

/// Show an extension image's partitions, verity superblock and signature, checked against each
/// other; --verify recomputes the hash tree over the data partition.
///
/// Example: imgctl ext inspect images/demo-sysext/demo-sysext.raw --verify --json
#[derive(Debug, clap::Args)]
struct InspectArgs {
    /// The disk image.
    image: PathBuf,
    /// Recompute the dm-verity tree and compare it with the hash partition and the signature.
    #[arg(long)]
    verify: bool,
    /// Print JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        ExtCommand::Build(a) => run_build(a),
        ExtCommand::Inspect(a) => run_inspect(a),
    }
}

fn run_build(args: BuildArgs) -> anyhow::Result<ExitCode> {
    let ext = ExtensionSpec::load(&args.recipe)?;
    let out_dir = args
        .output
        .unwrap_or_else(|| PathBuf::from("images").join(ext.name.as_str()));
    let opts = BuildOptions {
        out_dir,
        source_date_epoch: crate::output::source_date_epoch()?,
    };
    let out = crate::output::with_spinner("building extension", || build(&ext, &opts))
        .with_context(|| format!("building {}", args.recipe.display()))?;
    if args.json {
        crate::output::print_json(&out.manifest)?;
        return Ok(ExitCode::SUCCESS);
    }
    let m = &out.manifest;
    println!(
        "built {} {} {} ({})",
        m.kind,
        m.name,
        m.version,
        m.filesystem_name()
    );
    println!("  image      {} ({} bytes)", out.image.display(), m.size);
    println!("  sha256     {}", m.sha256);
    println!("  root hash  {}", m.verity.root_hash);
    println!(
        "  signed     {}",
        if m.verity.signed { "yes" } else { "no" }
    );
    println!("  files      {}", m.files.len());
    println!("  manifest   {}", out.manifest_path.display());
    Ok(ExitCode::SUCCESS)
}

fn run_inspect(args: InspectArgs) -> anyhow::Result<ExitCode> {
    let (insp, check) = inspect_file(&args.image, args.verify)?;
    let ok = insp.problems.is_empty()
        && check
            .as_ref()
            .is_none_or(|c| c.hash_partition_matches && c.matches_signature != Some(false));
    if args.json {
        crate::output::print_json(&serde_json::json!({
            "image": args.image,
            "inspection": insp,
            "verify": check,
            "ok": ok,
        }))?;
    } else {
        println!("disk {}", insp.disk_uuid);
        for p in &insp.partitions {
            println!(
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
            println!(
                "verity {} type {} blocks {}×{} uuid {} salt {}",
                v.hash_algorithm, v.hash_type, v.data_blocks, v.data_block_size, v.uuid, v.salt
            );
        }
        if let Some(s) = &insp.signature {
            println!(
                "signature root hash {} ({} bytes PKCS#7)",
                s.root_hash, s.signature_size
            );
        }
        if let Some(c) = &check {
            println!(
                "recomputed root hash {}: hash partition {}, signature {}",
                c.root_hash,
                if c.hash_partition_matches {
                    "matches"
                } else {
                    "DIFFERS"
                },
                match c.matches_signature {
                    None => "absent",
                    Some(true) => "matches",
                    Some(false) => "DIFFERS",
                }
            );
        }
        for p in &insp.problems {
            eprintln!("imgctl: problem: {p}");
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
