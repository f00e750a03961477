//! `imgctl sign-pcrs`: the `.pcrsig` JSON for a UKI, as `systemd-measure sign` writes it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use imgctl_measure::keys::{SigningKey, VerifyingKey};
use imgctl_measure::pcr11::DEFAULT_PHASE_PATHS;
use imgctl_measure::{pcrsig, HashAlg, PhasePath};

use crate::output::out;
use crate::uki_input::{load_uki, DtbArgs, SemanticsArg};

/// Sign the PCR 11 values a UKI will produce, per bank and boot phase: the `.pcrsig` JSON that
/// `systemd-measure sign` writes and ukify embeds, computed in software (no TPM needed).
///
/// Keys: PEM RSA or ECDSA P-256 (PKCS#8 as `openssl genpkey` writes, PKCS#1, SEC1), or a key on
/// a PKCS#11 token named by a `pkcs11:` URI (RFC 7512) with --pkcs11-module.
///
/// Example: imgctl sign-pcrs images/demo/demo.efi --private-key pcr-priv.pem -o demo.pcrsig
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A UKI (.efi) or a recipe (.yaml), which is assembled in memory.
    input: PathBuf,
    /// PEM private key that signs the policies, or a PKCS#11 URI
    /// (`pkcs11:token=T;object=K?pin-source=FILE`).
    #[arg(long, value_name = "FILE|URI")]
    private_key: PathBuf,
    #[command(flatten)]
    pkcs11: Pkcs11Args,
    /// PEM public key; must be the private key's public half (checked). Default: derived.
    #[arg(long, value_name = "FILE")]
    public_key: Option<PathBuf>,
    /// Boot phase path to sign for (pcrphase words joined by ':'); repeat for several.
    /// Default: systemd-measure's four paths, enter-initrd … ready.
    #[arg(long = "phase", value_name = "PATH")]
    phases: Vec<String>,
    /// PCR bank; repeat for several. Default: sha1, sha256, sha384, sha512.
    #[arg(long = "bank", value_name = "BANK")]
    banks: Vec<HashAlg>,
    /// Profile of a multi-profile UKI to sign for.
    #[arg(long, default_value_t = 0)]
    profile: u32,
    /// Which stub's measurement rules to apply: `auto` (from the stub's .sdmagic) or the
    /// systemd version of the stub (252, 254, 256, 257, 258; `systemd-257` also).
    #[arg(long, default_value = "auto", value_name = "VERSION")]
    stub_semantics: SemanticsArg,
    #[command(flatten)]
    dtb: DtbArgs,
    /// Write the JSON here (atomically) instead of stdout.
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Also write a copy of the UKI with the signature added as its .pcrsig section (the JSON
    /// alone, spaced as ukify embeds it; not for multi-profile UKIs). .pcrsig is not measured: PCR 11 stays what was signed,
    /// which is checked before anything is written. Put the public key in .pcrpkey when
    /// building (recipe `pcrpkey:`) so systemd finds it.
    #[arg(long, value_name = "FILE")]
    embed: Option<PathBuf>,
    /// The private key's passphrase (the first line of FILE), for an encrypted PKCS#8 key.
    /// Without it imgctl asks on the terminal, and only when stdin is one.
    #[arg(long, value_name = "FILE")]
    key_passphrase_file: Option<PathBuf>,
    /// Append the policy's artifact record (the key's fingerprint, the PCR 11 values it signs,
    /// the digests of the .pcrsig JSON and of the UKI) to this transparency log and write its
    /// inclusion proof as FILE.tlog-proof beside the -o FILE (which it requires).
    #[arg(long, value_name = "DIR", requires_all = ["log_key", "output"])]
    log: Option<PathBuf>,
    /// The log's signing key (with --log).
    #[arg(long, value_name = "KEY", requires = "log")]
    log_key: Option<PathBuf>,
}

/// The PKCS#11 module for keys given as `pkcs11:` URIs.
#[derive(Debug, Clone, clap::Args)]
pub struct Pkcs11Args {
    /// The PKCS#11 library (module) holding keys given as `pkcs11:` URIs, e.g.
    /// /usr/lib/softhsm/libsofthsm2.so; or module-path= in the URI. There is no default.
    #[arg(long, value_name = "PATH")]
    pub pkcs11_module: Option<PathBuf>,
}

/// Reads a private key: a key file (PEM or DER; an encrypted one is decrypted with
/// `passphrase`) or a `pkcs11:` URI opened through `module`, naming the file or URI (never its
/// PIN) in errors.
pub fn read_signing_key(
    path: &Path,
    passphrase: Option<&[u8]>,
    module: Option<&Path>,
) -> anyhow::Result<SigningKey> {
    Ok(imgctl_extensions::sign::load_key(path, passphrase, module)?)
}

/// The passphrase for the private key `key`: the first line of `file` (as OpenSSL's `-passin
/// file:` reads it) when given; else, when `key` is an encrypted PKCS#8 PEM and stdin is a
/// terminal, asked for on the terminal; else none (an encrypted key then fails with a message
/// naming --key-passphrase-file). Never prompts when stdin is not a terminal.
pub fn key_passphrase(key: &Path, file: Option<&Path>) -> anyhow::Result<Option<Vec<u8>>> {
    use std::io::IsTerminal;
    if imgctl_extensions::sign::is_pkcs11(key) {
        // A token key has a PIN (in its URI), not a passphrase.
        return Ok(None);
    }
    if file.is_some() {
        return read_passphrase(file);
    }
    if !std::io::stdin().is_terminal() {
        return Ok(None);
    }
    let raw = imgctl_fsio::read_bounded(key, imgctl_fsio::caps::KEY, "a key")?;
    let marker = b"-----BEGIN ENCRYPTED PRIVATE KEY-----";
    if !raw.windows(marker.len()).any(|w| w == marker) {
        return Ok(None);
    }
    let p = rpassword::prompt_password(format!("Passphrase for {}: ", key.display()))
        .with_context(|| format!("reading the passphrase of {}", key.display()))?;
    Ok(Some(p.into_bytes()))
}

/// The passphrase of `--key-passphrase-file FILE`: the file's first line. Never prompts.
pub fn read_passphrase(path: Option<&Path>) -> anyhow::Result<Option<Vec<u8>>> {
    let Some(path) = path else {
        return Ok(None);
    };
    let raw = imgctl_fsio::read_bounded(path, 64 << 10, "a passphrase file")?;
    let line = raw.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.is_empty() {
        anyhow::bail!("{}: the passphrase file is empty", path.display());
    }
    Ok(Some(line.to_vec()))
}

/// Reads a PEM public key (or the public half of a private key), naming the file in errors.
pub fn read_verifying_key(path: &Path) -> anyhow::Result<VerifyingKey> {
    let pem = imgctl_fsio::read_bounded(path, imgctl_fsio::caps::KEY, "a key")?;
    VerifyingKey::from_pem(&pem).with_context(|| format!("{}", path.display()))
}

/// Writes one output atomically through imgctl-fsio: never over a device, FIFO, socket,
/// symlink or folder, never over one of `inputs`.
pub fn write_atomically(path: &Path, data: &[u8], inputs: &[&Path]) -> anyhow::Result<()> {
    Ok(imgctl_fsio::write_atomic(path, data, inputs)?)
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let passphrase = key_passphrase(&args.private_key, args.key_passphrase_file.as_deref())?;
    let key = read_signing_key(
        &args.private_key,
        passphrase.as_deref(),
        args.pkcs11.pkcs11_module.as_deref(),
    )?;
    let public = match &args.public_key {
        Some(p) => Some(read_verifying_key(p)?.tpm()),
        None => None,
    };
    // Every output is checked before the work and written in one transaction.
    let mut outputs = imgctl_fsio::Transaction::with_inputs(
        [
            Some(&args.input),
            Some(&args.private_key),
            args.public_key.as_ref(),
        ]
        .into_iter()
        .flatten(),
    );
    for p in [&args.embed, &args.output].into_iter().flatten() {
        outputs.check(p)?;
    }
    // The log and its key are checked before any work.
    let log = match (&args.log, &args.log_key) {
        (Some(dir), Some(k)) => Some(crate::cmd::log::ArtifactLog::check(dir, k)?),
        _ => None,
    };
    let data = load_uki(&args.input)?;
    let (uki, semantics, sections) =
        crate::uki_input::measured_sections(&args.input, &data, args.stub_semantics, args.profile)?;
    if args.embed.is_some() && uki.pe.section(".profile").is_some() {
        anyhow::bail!(
            "{}: a multi-profile UKI needs one .pcrsig per profile, each after its profile's sections; build it with `imgctl build --pcr-private-key` instead of --embed",
            args.input.display()
        );
    }
    let banks = if args.banks.is_empty() {
        HashAlg::ALL.to_vec()
    } else {
        let mut b = args.banks.clone();
        b.sort();
        b.dedup();
        b
    };
    let defaults = DEFAULT_PHASE_PATHS
        .iter()
        .map(|p| p.parse())
        .collect::<Result<Vec<PhasePath>, _>>()?;
    let phases = crate::uki_input::phase_paths(&args.phases, defaults)?;
    // A UKI with .dtbauto sections measures differently per machine: unless the machine is
    // named, every case is signed (systemd picks the entry whose policy matches the TPM).
    let rows = args
        .dtb
        .predict(&args.input, semantics, &sections, &banks, &phases)?;
    let mut doc = pcrsig::PcrSignature::default();
    for (_, prediction) in &rows {
        doc.append(
            pcrsig::sign(&key, public.as_ref(), prediction).with_context(|| {
                format!(
                    "signing with {}{}",
                    imgctl_extensions::sign::key_display(&args.private_key),
                    args.public_key
                        .as_ref()
                        .map(|p| format!(" / {}", p.display()))
                        .unwrap_or_default()
                )
            })?,
        );
    }
    let mut text = doc.to_json();
    // The UKI that carries the policy: the input with .pcrsig embedded, or the input.
    let embedded = match &args.embed {
        Some(path) => {
            let signed = imgctl_builder::build::append_pcrsig(&data, &doc)
                .with_context(|| format!("embedding .pcrsig into {}", args.input.display()))?;
            if uki.pe.section(".pcrpkey").is_none() {
                eprintln!(
                    "imgctl: warning: {} has no .pcrpkey section; systemd needs the public key \
                     (recipe `pcrpkey:`) to use the signature",
                    args.input.display()
                );
            }
            Some((path, signed))
        }
        None => None,
    };
    text.push('\n');
    let record = match (&log, &args.output) {
        (Some(_), Some(path)) => {
            let name = args
                .input
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("uki");
            let carrier = embedded.as_ref().map_or(data.as_slice(), |(_, b)| b);
            let pe = imgctl_measure::pe::PeFile::parse(carrier)
                .with_context(|| format!("reading {}", args.input.display()))?;
            let authenticode = imgctl_measure::authenticode::authenticode_digests(&pe, &banks)?;
            let predictions: Vec<&imgctl_measure::Prediction> =
                rows.iter().map(|(_, p)| p).collect();
            Some((
                imgctl_measure::record::ArtifactRecord::for_policy(
                    name,
                    carrier,
                    banks
                        .iter()
                        .zip(&authenticode)
                        .map(|(b, d)| (b.to_string(), d.to_hex()))
                        .collect(),
                    text.as_bytes(),
                    imgctl_measure::record::PolicyRecord::new(
                        &key.public().fingerprint(),
                        &predictions,
                    ),
                    &format!("imgctl/{}", env!("CARGO_PKG_VERSION")),
                )?,
                path,
            ))
        }
        _ => None,
    };
    if let Some((path, signed)) = &embedded {
        outputs.add(path, signed)?;
    }
    if let Some(path) = &args.output {
        outputs.add(path, text.as_bytes())?;
    }
    outputs.commit()?;
    if let (Some(l), Some((record, path))) = (&log, record) {
        let mut proof = path.clone().into_os_string();
        proof.push(".tlog-proof");
        let proof = PathBuf::from(proof);
        let index = l
            .publish(&record, &proof)
            .with_context(|| format!("logging the policy {} (it is written)", path.display()))?;
        eprintln!("imgctl: logged entry {index}, proof {}", proof.display());
    }
    if args.output.is_none() {
        out!("{text}");
    }
    Ok(ExitCode::SUCCESS)
}
