//! `imgctl build`: recipe → UKI, initrd, pcrs.json, manifest.json.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use imgctl_builder::build::{build_staged, BuildOptions, Stage};
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
    /// Stub semantics for pcrs.json: `auto` (from the stub's .sdmagic) or the systemd version
    /// of the stub that will boot it (252, 254, 256, 257, 258; `systemd-257` also).
    #[arg(long, default_value = "auto", value_name = "VERSION")]
    stub_semantics: SemanticsArg,
    /// Sign the predicted PCR 11 values with this private key (PEM: RSA-2048 or ECDSA P-256,
    /// or a `pkcs11:` URI) and embed .pcrsig, plus .pcrpkey when the recipe names none, as
    /// ukify does.
    #[arg(long, value_name = "FILE|URI")]
    pcr_private_key: Option<PathBuf>,
    /// Sign the UKI for Secure Boot with this private key (PEM, the db key, or a `pkcs11:`
    /// URI), last, after .pcrsig is embedded, as ukify does; sbverify and osslsigncode accept
    /// the result.
    #[arg(long, value_name = "FILE|URI", requires = "secureboot_certificate")]
    secureboot_key: Option<PathBuf>,
    /// The Secure Boot key's X.509 certificate (PEM or DER); must hold its public key.
    #[arg(long, value_name = "FILE", requires = "secureboot_key")]
    secureboot_certificate: Option<PathBuf>,
    /// Also sign the kernel before it is embedded (first; this changes PCR 11, which is
    /// predicted over the signed kernel). An already signed kernel keeps its signatures.
    #[arg(long, requires = "secureboot_key")]
    sign_kernel: bool,
    #[command(flatten)]
    pkcs11: crate::cmd::sign_pcrs::Pkcs11Args,
    /// The passphrase (the first line of FILE) of an encrypted --pcr-private-key or
    /// --secureboot-key (PKCS#8).
    #[arg(long, value_name = "FILE")]
    key_passphrase_file: Option<PathBuf>,
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
    /// `kind: os` recipes: the folder of cached OS trees (made by mmdebstrap, one per suite,
    /// mirror and package set).
    #[arg(long, value_name = "DIR", default_value = imgctl_builder::os_image::DEFAULT_CACHE)]
    cache: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let text = imgctl_fsio::read_bounded(&args.recipe, imgctl_fsio::caps::POLICY, "a recipe")?;
    match imgctl_builder::os_recipe::recipe_kind(&text).as_deref() {
        None => {}
        Some("os") => return run_os(args, text),
        Some("addon") => return run_addon(args, text),
        Some(k @ ("sysext" | "confext")) => anyhow::bail!(
            "{}: kind: {k} is an extension recipe: build it with `imgctl ext build`",
            args.recipe.display()
        ),
        Some(k) => anyhow::bail!(
            "{}: kind: {k} is not a recipe kind `imgctl build` knows (os, addon, or none for a UKI)",
            args.recipe.display()
        ),
    }
    let recipe = Recipe::parse(&args.recipe, text)?;
    let out_dir = output_dir(&args, &recipe.name)?;
    let mut opts = BuildOptions::new(out_dir, crate::output::source_date_epoch()?);
    opts.semantics = args.stub_semantics.fixed();
    let passphrase_file = args.key_passphrase_file.as_deref();
    opts.pcr_key = pcr_signing_key(&args)?;
    if let (Some(k), Some(c)) = (&args.secureboot_key, &args.secureboot_certificate) {
        let passphrase = crate::cmd::sign_pcrs::key_passphrase(k, passphrase_file)?;
        let signer = imgctl_extensions::sign::Signer::open(
            k,
            c,
            passphrase.as_deref(),
            args.pkcs11.pkcs11_module.as_deref(),
        )?;
        opts.secure_boot = Some(imgctl_builder::build::SecureBootSigning {
            signer: std::sync::Arc::new(signer),
            sign_kernel: args.sign_kernel,
        });
    }
    // Everything that can be checked is checked before anything is committed: the log folder
    // and its key first (a wrong key or a missing log fails here, with nothing written).
    let log = match (&args.log, &args.log_key) {
        (Some(dir), Some(key)) => {
            let signer = crate::cmd::log::load_signer(key)?;
            imgctl_tlog::check_writable(dir, &signer)
                .with_context(|| format!("the log {} with {}", dir.display(), key.display()))?;
            Some((dir.as_path(), key.as_path()))
        }
        _ => None,
    };
    let (out, mut stage) = crate::output::with_spinner("building", || build_staged(&recipe, &opts))
        .with_context(|| format!("building {}", args.recipe.display()))?;
    for p in [
        &args.pcr_private_key,
        &args.log_key,
        &args.secureboot_key,
        &args.secureboot_certificate,
    ]
    .into_iter()
    .flatten()
    {
        stage.add_input(p);
    }
    let proof = match log {
        Some((dir, key)) => Some(log_and_commit(&out, stage, dir, key)?),
        None => {
            stage.commit()?;
            None
        }
    };
    if args.json {
        crate::output::print_json(&out.record)?;
        return Ok(ExitCode::SUCCESS);
    }
    let uki = out
        .uki_record()
        .context("the build's record has no UKI facts")?;
    outln!("built {} {}", recipe.name, recipe.version);
    outln!("  uki       {} ({} bytes)", out.uki.display(), uki.size);
    if let Some(i) = &out.initrd {
        outln!("  initrd    {}", i.display());
    }
    outln!("  pcrs      {}", out.pcrs.display());
    outln!("  manifest  {}", out.manifest_path.display());
    outln!(
        "  stub      {} ({})",
        uki.stub.sdmagic.as_deref().unwrap_or("unknown"),
        uki.stub.semantics.name()
    );
    if let Some((path, index)) = &proof {
        outln!("  logged    entry {index}, proof {}", path.display());
    }
    if let Some(v) = out.prediction.get(HashAlg::SHA256, &PhasePath::default()) {
        outln!("  PCR 11 sha256 after the stub: {v}");
    }
    Ok(ExitCode::SUCCESS)
}

/// The `--pcr-private-key` of a build (kind: uki and kind: os alike), read once here.
fn pcr_signing_key(args: &Args) -> anyhow::Result<Option<imgctl_measure::keys::SigningKey>> {
    let Some(k) = &args.pcr_private_key else {
        return Ok(None);
    };
    let passphrase = crate::cmd::sign_pcrs::key_passphrase(k, args.key_passphrase_file.as_deref())?;
    Ok(Some(
        crate::cmd::sign_pcrs::read_signing_key(
            k,
            passphrase.as_deref(),
            args.pkcs11.pkcs11_module.as_deref(),
        )
        .context("PCR signing key")?,
    ))
}

/// Appends the build's entry to the log, writes the proof beside the UKI and commits every
/// output.
///
/// Order, and why: the log append cannot be undone (the log is append-only and others may
/// already have seen the new checkpoint), so it is the point of no return and comes after
/// everything that can fail without cost: the log and key were checked before the build, the
/// outputs are staged and their names checked, the log is reopened (lock, key, tiles) and the
/// proof's name is checked. After the append the outputs are committed whatever happens to the
/// proof, because the log now says this UKI was built; a failure from there on keeps the entry
/// (it is in the log) and says how to recover: `imgctl log prove` rewrites the proof, and the
/// build is reproducible, so a rebuild gives the logged bytes. The append and the commit run as
/// one critical section: SIGINT/SIGTERM wait for both rather than cut between them.
fn log_and_commit(
    out: &imgctl_builder::build::BuildOutput,
    mut stage: Stage,
    dir: &Path,
    key: &Path,
) -> anyhow::Result<(PathBuf, u64)> {
    let entry = out.record.encode_entry()?;
    let name = format!(
        "{}.tlog-proof",
        out.uki
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("uki")
    );
    stage.check(&name)?;
    let signer = crate::cmd::log::load_signer(key)?;
    let mut log = imgctl_tlog::Appender::open(dir, signer)
        .with_context(|| format!("opening the log {} with {}", dir.display(), key.display()))?;
    let _critical = imgctl_fsio::critical_section();
    let appended = log
        .append(&[entry])
        .with_context(|| format!("appending to the log {}", dir.display()))?;
    let index = appended.first_index;
    // Past the point of no return.
    let staged_proof = log
        .prove(index)
        .map_err(anyhow::Error::from)
        .and_then(|p| Ok(stage.add(&name, p.to_text().as_bytes())?));
    let proof_path = stage.dir().join(&name);
    stage.commit().with_context(|| {
        format!(
            "the entry is in the log {} at index {index}, but the outputs were not written; \
             rebuild (same inputs, same bytes) and run `imgctl log prove {} --index {index}`",
            dir.display(),
            dir.display()
        )
    })?;
    staged_proof.with_context(|| {
        format!(
            "the entry is in the log {} at index {index} and the outputs are written, but not \
             the proof {}: run `imgctl log prove {} --index {index} --out {}`",
            dir.display(),
            proof_path.display(),
            dir.display(),
            proof_path.display()
        )
    })?;
    Ok((proof_path, index))
}

/// `--log DIR --log-key KEY` of an artifact build, checked before the build: a wrong key
/// writes nothing.
fn artifact_log(args: &Args) -> anyhow::Result<Option<crate::cmd::log::ArtifactLog>> {
    Ok(match (&args.log, &args.log_key) {
        (Some(dir), Some(key)) => Some(crate::cmd::log::ArtifactLog::check(dir, key)?),
        _ => None,
    })
}

/// `-o DIR`, default images/NAME, checked before the build.
fn output_dir(args: &Args, name: &str) -> anyhow::Result<PathBuf> {
    let out_dir = args
        .output
        .clone()
        .unwrap_or_else(|| PathBuf::from("images").join(name));
    imgctl_fsio::check_output_dir(&out_dir)?;
    Ok(out_dir)
}

/// Appends `record` to the log and writes its proof beside `file` as FILE.tlog-proof (the
/// artifact is already committed). Returns the entry's index and the proof's path.
fn publish_beside(
    log: &crate::cmd::log::ArtifactLog,
    record: &imgctl_measure::record::ArtifactRecord,
    file: &Path,
    what: &str,
) -> anyhow::Result<(u64, PathBuf)> {
    let mut proof = file.to_owned().into_os_string();
    proof.push(".tlog-proof");
    let proof = PathBuf::from(proof);
    let index = log
        .publish(record, &proof)
        .with_context(|| format!("logging {what} {} (it is built)", file.display()))?;
    Ok((index, proof))
}

/// `kind: addon`: a systemd-stub PE addon (NAME.addon.efi) and its manifest.json; with
/// `--log`, its artifact record is appended and the proof written beside it.
fn run_addon(args: Args, text: Vec<u8>) -> anyhow::Result<ExitCode> {
    use imgctl_builder::addon::{build_addon_staged, AddonRecipe};
    if args.pcr_private_key.is_some() || args.secureboot_key.is_some() {
        anyhow::bail!(
            "{}: kind: addon is built unsigned (--pcr-private-key and --secureboot-key are for UKIs)",
            args.recipe.display()
        );
    }
    let log = artifact_log(&args)?;
    let recipe = AddonRecipe::parse(&args.recipe, text)?;
    let out_dir = output_dir(&args, &recipe.name)?;
    let (out, mut stage) =
        build_addon_staged(&recipe, &out_dir, crate::output::source_date_epoch()?)
            .with_context(|| format!("building {}", args.recipe.display()))?;
    if let Some(k) = &args.log_key {
        stage.add_input(k);
    }
    stage.commit()?;
    let logged = match &log {
        Some(l) => Some(publish_beside(l, &out.record, &out.addon, "the addon")?),
        None => None,
    };
    if args.json {
        crate::output::print_json(&out.record)?;
        return Ok(ExitCode::SUCCESS);
    }
    outln!("built {} {} (addon)", recipe.name, recipe.version);
    outln!("  addon     {}", out.addon.display());
    outln!("  manifest  {}", out.manifest_path.display());
    if let Some((index, proof)) = &logged {
        outln!("  logged    entry {index}, proof {}", proof.display());
    }
    for e in &out.record.events {
        outln!(
            "  PCR {} event (alone beside a UKI): {}",
            e.pcr,
            e.description.as_deref().unwrap_or("")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `kind: os`: the OS tree (cached), the disk image, its UKI, pcrs.json and manifest.json.
fn run_os(args: Args, text: Vec<u8>) -> anyhow::Result<ExitCode> {
    use imgctl_builder::os_image::{build_os_staged, OsBuildOptions};
    use imgctl_builder::os_recipe::OsRecipe;
    if args.secureboot_key.is_some() {
        anyhow::bail!(
            "{}: --secureboot-key is not supported for kind: os yet",
            args.recipe.display()
        );
    }
    let log = artifact_log(&args)?;
    let recipe = OsRecipe::parse(&args.recipe, text)?;
    let out_dir = output_dir(&args, &recipe.name)?;
    let mut uki = BuildOptions::new(out_dir, crate::output::source_date_epoch()?);
    uki.semantics = args.stub_semantics.fixed();
    uki.pcr_key = pcr_signing_key(&args)?;
    let opts = OsBuildOptions {
        uki,
        cache: args.cache.clone(),
    };
    let started = std::time::Instant::now();
    let (out, mut stage) =
        crate::output::with_spinner("building the OS image", || build_os_staged(&recipe, &opts))
            .with_context(|| format!("building {}", args.recipe.display()))?;
    for p in [&args.pcr_private_key, &args.log_key].into_iter().flatten() {
        stage.add_input(p);
    }
    stage.commit()?;
    let logged = match &log {
        Some(l) => Some(publish_beside(
            l,
            &os_record(&out)?,
            &out.image,
            "the OS image",
        )?),
        None => None,
    };
    if args.json {
        crate::output::print_json(&out.record)?;
        return Ok(ExitCode::SUCCESS);
    }
    outln!("built {} {} (OS image)", recipe.name, recipe.version);
    outln!(
        "  tree      {} ({})",
        out.tree.root.display(),
        if out.tree.made { "made now" } else { "cached" }
    );
    outln!("  kernel    {}", out.tree.kernel_release);
    outln!(
        "  image     {} ({} bytes)",
        out.image.display(),
        out.record.size
    );
    outln!("  uki       {}", out.uki.uki.display());
    outln!("  pcrs      {}", out.uki.pcrs.display());
    outln!("  manifest  {}", out.uki.manifest_path.display());
    outln!("  usrhash   {}", out.record.usr_root_hash);
    if let Some((index, proof)) = &logged {
        outln!("  logged    entry {index}, proof {}", proof.display());
    }
    outln!("  time      {:.1} s", started.elapsed().as_secs_f64());
    if let Some(v) = out
        .uki
        .prediction
        .get(HashAlg::SHA256, &PhasePath::default())
    {
        outln!("  PCR 11 sha256 after the stub: {v}");
    }
    Ok(ExitCode::SUCCESS)
}

/// The log record of an OS image: its UKI's record (PE facts, sections, PCR 11 per phase) with
/// the disk image as a file (sha256 of the committed bytes) and the `/usr` dm-verity root hash
/// and partitions as its verity facts, and the PCR 15 records the booted system makes (machine
/// ID, file systems), so the log holds what boots, what `/usr` is and what userspace measures.
fn os_record(
    out: &imgctl_builder::os_image::OsBuildOutput,
) -> anyhow::Result<imgctl_measure::record::ArtifactRecord> {
    use imgctl_measure::manifest::FileRecord;
    use imgctl_measure::record::{ExtensionRecord, PartitionRecord};
    let mut record = out.uki.record.clone();
    let mut f = std::fs::File::open(&out.image)
        .with_context(|| format!("opening {}", out.image.display()))?;
    let mut h = HashAlg::SHA256.hasher()?;
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = std::io::Read::read(&mut f, &mut buf)
            .with_context(|| format!("reading {}", out.image.display()))?;
        if n == 0 {
            break;
        }
        size += n as u64;
        h.update(&buf[..n]);
    }
    record.files.push(FileRecord {
        role: "image".into(),
        path: out.record.image.clone(),
        size,
        digests: [("sha256".to_owned(), h.finish().to_hex())].into(),
    });
    let partitions = out
        .record
        .partitions
        .iter()
        .filter_map(|p| {
            let role = match p.designator {
                "usr" => "data",
                "usr-verity" => "verity",
                _ => return None,
            };
            Some(PartitionRecord {
                role: role.into(),
                type_uuid: p.type_uuid.to_string(),
                uuid: p.uuid.to_string(),
            })
        })
        .collect();
    record.extension = Some(ExtensionRecord {
        root_hash: out.record.usr_root_hash.clone(),
        partitions,
        signature_certificate_sha256: None,
        verity_signers: None,
    });
    record.userspace_events = out.record.userspace_events();
    record.check()?;
    Ok(record)
}
