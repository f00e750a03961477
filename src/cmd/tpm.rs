//! `imgctl tpm …`: read and extend PCRs, quote, seal and unseal through a TPM.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use imgctl_attest::eventlog::{PcrValues, PcrValuesJson};
use imgctl_measure::bank::PcrIndex;
use imgctl_measure::keys::VerifyingKey;
use imgctl_measure::pcrsig::PcrSignature;
use imgctl_measure::{HashAlg, PeFile};
use imgctl_tpm::{SealedBlob, Tpm, DEFAULT_TCTI};
use serde_json::json;

use crate::cmd::sign_pcrs::{read_verifying_key, write_atomically};
use crate::output::outln;

/// Talk to a TPM: read and extend PCRs, quote them, seal a secret to a signed PCR policy.
///
/// Every argument and input (PCR indices 0–23, the nonce, the secret, keys, blobs, output
/// paths) is checked before the TPM is opened.
///
/// Example: imgctl tpm --tcti swtpm:host=127.0.0.1,port=2321 pcrs --bank sha256 --pcr 11
#[derive(Debug, clap::Args)]
pub struct Args {
    /// TCTI: device:/dev/tpmrm0 (default), swtpm:host=127.0.0.1,port=P (swtpm's TCP server),
    /// mssim:host=…,port=…, tabrmd:.
    #[arg(long, global = true, default_value = DEFAULT_TCTI, env = "IMGCTL_TCTI")]
    pub tcti: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    Pcrs(PcrsArgs),
    Extend(ExtendArgs),
    Quote(QuoteArgs),
    Seal(SealArgs),
    Unseal(UnsealArgs),
}

/// Print PCR values.
///
/// Example: imgctl tpm pcrs --bank sha256 --pcr 11 --json
#[derive(Debug, clap::Args)]
struct PcrsArgs {
    /// Bank; repeat for several. Default: every active bank.
    #[arg(long = "bank", value_name = "BANK")]
    banks: Vec<HashAlg>,
    /// PCR index (0–23); repeat for several. Default: 0–23.
    #[arg(long = "pcr", value_name = "N")]
    pcrs: Vec<PcrIndex>,
    /// JSON output: {"sha256": {"11": "<hex>", …}, …}.
    #[arg(long)]
    json: bool,
}

/// Extend a PCR with H(data) in every active bank (no log record; see `imgctl measure`).
///
/// Example: imgctl tpm extend --pcr 11 --string enter-initrd
#[derive(Debug, clap::Args)]
struct ExtendArgs {
    /// PCR index, 0–23.
    #[arg(long, value_name = "N")]
    pcr: PcrIndex,
    /// The bytes to measure (UTF-8, no trailing NUL), like systemd-pcrextend.
    #[arg(
        long,
        value_name = "TEXT",
        required_unless_present = "file",
        conflicts_with = "file"
    )]
    string: Option<String>,
    /// Measure a file's bytes instead (e.g. a UKI section's content).
    #[arg(long, value_name = "FILE")]
    file: Option<PathBuf>,
    /// Bank; repeat for several. Default: every active bank.
    #[arg(long = "bank", value_name = "BANK")]
    banks: Vec<HashAlg>,
}

/// Quote PCRs with an attestation key (restricted ECDSA P-256, endorsement hierarchy).
///
/// Writes into DIR: quote.msg (TPMS_ATTEST, as tpm2_quote -m), quote.attest (TPM2B_ATTEST),
/// quote.sig (TPMT_SIGNATURE, as tpm2_quote -s), ak.pub (TPM2B_PUBLIC), pcrs.json; and the AK
/// public key as PEM to --ak-out. Check with: tpm2_checkquote -u AK.pem -m quote.msg
/// -s quote.sig -q NONCE.
///
/// Example: imgctl tpm quote --nonce 00112233 --ak-out ak.pem -o quote/
#[derive(Debug, clap::Args)]
struct QuoteArgs {
    /// Qualifying data (the verifier's nonce), hex, at most 64 bytes.
    #[arg(long, value_name = "HEX")]
    nonce: String,
    /// Where to write the attestation key's public key (PEM).
    #[arg(long, value_name = "FILE")]
    ak_out: PathBuf,
    /// Output directory.
    #[arg(short, long, value_name = "DIR")]
    out: PathBuf,
    /// Bank to quote; repeat for several. Default: sha256.
    #[arg(long = "bank", value_name = "BANK")]
    banks: Vec<HashAlg>,
    /// PCR to quote (0–23); repeat for several. Default: 0–15.
    #[arg(long = "pcr", value_name = "N")]
    pcrs: Vec<PcrIndex>,
    /// Print a JSON summary.
    #[arg(long)]
    json: bool,
}

/// Seal a secret (at most 128 bytes) so that only PCR 11 values signed by a key unseal it.
///
/// Example: imgctl tpm seal --public-key pcr-pub.pem --secret-file key.bin -o disk.sealed
#[derive(Debug, clap::Args)]
struct SealArgs {
    /// PEM public key whose signed PCR policies (.pcrsig) will unlock the secret.
    #[arg(long, value_name = "FILE")]
    public_key: PathBuf,
    /// The secret; default: read from stdin.
    #[arg(long, value_name = "FILE")]
    secret_file: Option<PathBuf>,
    /// Also bind to the current values of these PCRs (literal PolicyPCR); repeat.
    #[arg(long = "pcr-lock", value_name = "N")]
    lock_pcrs: Vec<PcrIndex>,
    /// Bank of --pcr-lock.
    #[arg(long, default_value = "sha256", value_name = "BANK")]
    lock_bank: HashAlg,
    /// Sealed blob output (JSON).
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,
}

/// Unseal a secret with the .pcrsig entry that matches the current PCR 11.
///
/// Example: imgctl tpm unseal disk.sealed --pcrsig demo.efi -o key.bin
#[derive(Debug, clap::Args)]
struct UnsealArgs {
    /// Sealed blob from `imgctl tpm seal`.
    blob: PathBuf,
    /// The signed policies: a .pcrsig JSON file, or a UKI carrying a .pcrsig section.
    #[arg(long, value_name = "FILE")]
    pcrsig: PathBuf,
    /// PEM public key; default: the key recorded in the blob.
    #[arg(long, value_name = "FILE")]
    public_key: Option<PathBuf>,
    /// Bank whose PCR 11 the policy checks.
    #[arg(long, default_value = "sha256", value_name = "BANK")]
    bank: HashAlg,
    /// Write the secret here (atomically) instead of stdout.
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
}

/// Connects to the TPM. tpm2-tss logs its own errors to stderr unless told otherwise; imgctl
/// reports them itself, so the library is silenced unless `TSS2_LOG` is set.
pub fn open(tcti: &str) -> anyhow::Result<Tpm> {
    if std::env::var_os("TSS2_LOG").is_none() {
        std::env::set_var("TSS2_LOG", "all+NONE");
    }
    Ok(Tpm::open(tcti)?)
}

fn banks_or_active(tpm: &mut Tpm, banks: &[HashAlg]) -> anyhow::Result<Vec<HashAlg>> {
    if banks.is_empty() {
        Ok(tpm.active_banks()?)
    } else {
        Ok(banks.to_vec())
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let tcti = args.tcti;
    match args.command {
        Command::Pcrs(a) => pcrs(&tcti, a),
        Command::Extend(a) => extend(&tcti, a),
        Command::Quote(a) => quote(&tcti, a),
        Command::Seal(a) => seal(&tcti, a),
        Command::Unseal(a) => unseal(&tcti, a),
    }
}

/// PCR indices as the TPM layer takes them; `default` when none are given.
fn indices(pcrs: &[PcrIndex], default: std::ops::Range<u32>) -> Vec<u32> {
    if pcrs.is_empty() {
        default.collect()
    } else {
        pcrs.iter().map(|p| p.get()).collect()
    }
}

fn pcrs(tcti: &str, a: PcrsArgs) -> anyhow::Result<ExitCode> {
    let pcrs = indices(&a.pcrs, 0..PcrIndex::MAX + 1);
    let mut tpm = open(tcti)?;
    let banks = banks_or_active(&mut tpm, &a.banks)?;
    let sel: Vec<(HashAlg, Vec<u32>)> = banks.iter().map(|b| (*b, pcrs.clone())).collect();
    let values = tpm.read_pcrs(&sel)?;
    if a.json {
        let mut out = serde_json::Map::new();
        for (bank, vals) in &values {
            let m: serde_json::Map<String, serde_json::Value> = vals
                .iter()
                .map(|(p, d)| (p.to_string(), json!(d.to_hex())))
                .collect();
            out.insert(bank.to_string(), serde_json::Value::Object(m));
        }
        crate::output::print_json(&out)?;
    } else {
        for (bank, vals) in &values {
            for (p, d) in vals {
                outln!("{p}:{bank}={d}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn extend(tcti: &str, a: ExtendArgs) -> anyhow::Result<ExitCode> {
    let data = match (&a.string, &a.file) {
        (Some(s), _) => s.as_bytes().to_vec(),
        (None, Some(f)) => {
            imgctl_fsio::read_bounded(f.as_ref(), imgctl_fsio::caps::QUOTE, "a TPM object")?
        }
        (None, None) => bail!("give --string or --file"),
    };
    let mut tpm = open(tcti)?;
    let banks = banks_or_active(&mut tpm, &a.banks)?;
    let digests = banks
        .iter()
        .map(|b| Ok((*b, b.hash(&data)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    tpm.extend(a.pcr.get(), &digests)
        .with_context(|| format!("extending PCR {}", a.pcr))?;
    Ok(ExitCode::SUCCESS)
}

fn quote(tcti: &str, a: QuoteArgs) -> anyhow::Result<ExitCode> {
    let nonce =
        hex::decode(a.nonce.trim()).with_context(|| format!("--nonce {:?} is not hex", a.nonce))?;
    if nonce.len() > imgctl_tpm::MAX_NONCE {
        bail!(
            "--nonce is {} bytes; a TPM takes at most {} (TPM2B_DATA)",
            nonce.len(),
            imgctl_tpm::MAX_NONCE
        );
    }
    let banks = if a.banks.is_empty() {
        vec![HashAlg::SHA256]
    } else {
        a.banks.clone()
    };
    let pcrs = indices(&a.pcrs, 0..16);
    // Every output is checked before the TPM is opened.
    imgctl_fsio::check_output_dir(&a.out).context("-o")?;
    let mut outputs = imgctl_fsio::Transaction::new();
    for name in QUOTE_FILES {
        outputs.check(&a.out.join(name))?;
    }
    outputs.check(&a.ak_out)?;
    let mut tpm = open(tcti)?;
    let sel: Vec<(HashAlg, Vec<u32>)> = banks.iter().map(|b| (*b, pcrs.clone())).collect();
    let q = tpm.quote(&nonce, &sel)?;
    let ak_pem = VerifyingKey::from_tpm(&q.ak)?.to_pem()?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let size_prefixed = |b: &[u8]| {
        let mut v = (b.len() as u16).to_be_bytes().to_vec();
        v.extend_from_slice(b);
        v
    };
    let values: PcrValues = q
        .pcrs
        .iter()
        .map(|(bank, vals)| (*bank, vals.iter().cloned().collect()))
        .collect();
    let pcr_json = PcrValuesJson(&values);
    let files: [(&str, Vec<u8>); 5] = [
        (QUOTE_FILES[0], q.attest.clone()),
        (QUOTE_FILES[1], size_prefixed(&q.attest)),
        (QUOTE_FILES[2], q.signature.clone()),
        (QUOTE_FILES[3], size_prefixed(&q.ak_public)),
        (
            QUOTE_FILES[4],
            serde_json::to_vec_pretty(&pcr_json).context("encoding PCR values")?,
        ),
    ];
    for (name, data) in &files {
        outputs.add(&a.out.join(name), data)?;
    }
    outputs.add(&a.ak_out, ak_pem.as_bytes())?;
    outputs.commit()?;
    if a.json {
        crate::output::print_json(&json!({
            "nonce": hex::encode(&nonce),
            "ak_name": hex::encode(q.ak.name()),
            "dir": a.out,
            "pcrs": pcr_json,
        }))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// What `tpm quote` writes into its folder.
const QUOTE_FILES: [&str; 5] = [
    "quote.msg",
    "quote.attest",
    "quote.sig",
    "ak.pub",
    "pcrs.json",
];

fn seal(tcti: &str, a: SealArgs) -> anyhow::Result<ExitCode> {
    let key = read_verifying_key(&a.public_key)?.tpm();
    let max = imgctl_tpm::MAX_SECRET as u64;
    let (secret, source) = match &a.secret_file {
        Some(p) => (
            imgctl_fsio::read_bounded(p.as_ref(), max, "a sealed secret (TPM2B_SENSITIVE_DATA)")?,
            p.display().to_string(),
        ),
        None => (
            imgctl_fsio::read_stream_bounded(
                std::io::stdin().lock(),
                Path::new("stdin"),
                max,
                "a sealed secret (TPM2B_SENSITIVE_DATA)",
            )?,
            "stdin".to_owned(),
        ),
    };
    if secret.is_empty() {
        bail!("{source}: the secret is empty");
    }
    let inputs: Vec<&Path> = [Some(&a.public_key), a.secret_file.as_ref()]
        .into_iter()
        .flatten()
        .map(PathBuf::as_path)
        .collect();
    imgctl_fsio::check_output(&a.output, &inputs)?;
    let mut tpm = open(tcti)?;
    let literal = (!a.lock_pcrs.is_empty())
        .then(|| (a.lock_bank, a.lock_pcrs.iter().map(|p| p.get()).collect()));
    let blob = tpm.seal(&secret, &key, literal)?;
    let text = serde_json::to_vec_pretty(&blob).context("encoding the sealed blob")?;
    write_atomically(&a.output, &text, &inputs)?;
    Ok(ExitCode::SUCCESS)
}

/// `.pcrsig` from a JSON file or from a UKI's `.pcrsig` section.
pub fn read_pcrsig(path: &Path) -> anyhow::Result<PcrSignature> {
    let data = imgctl_fsio::read_bounded(path, imgctl_fsio::caps::QUOTE, "a TPM object")?;
    let json = if data.starts_with(b"MZ") {
        let pe = PeFile::parse(&data).with_context(|| format!("{}", path.display()))?;
        let s = pe
            .section(".pcrsig")
            .with_context(|| format!("{}: the UKI has no .pcrsig section", path.display()))?;
        pe.memory_data(s)
            .with_context(|| format!("{}: .pcrsig section", path.display()))?
            .into_owned()
    } else {
        data
    };
    PcrSignature::parse(&json).with_context(|| format!("{}", path.display()))
}

fn unseal(tcti: &str, a: UnsealArgs) -> anyhow::Result<ExitCode> {
    let text =
        imgctl_fsio::read_bounded(a.blob.as_ref(), imgctl_fsio::caps::QUOTE, "a TPM object")?;
    let blob: SealedBlob = serde_json::from_slice(&text).with_context(|| {
        format!(
            "{}: not a sealed blob from imgctl tpm seal",
            a.blob.display()
        )
    })?;
    let pcrsig = read_pcrsig(&a.pcrsig)?;
    let key = match &a.public_key {
        Some(p) => read_verifying_key(p)?.tpm(),
        None => imgctl_tpm::blob_key(&blob)?,
    };
    let inputs: Vec<&Path> = [Some(&a.blob), Some(&a.pcrsig), a.public_key.as_ref()]
        .into_iter()
        .flatten()
        .map(PathBuf::as_path)
        .collect();
    if let Some(p) = &a.output {
        imgctl_fsio::check_output(p, &inputs)?;
    }
    let mut tpm = open(tcti)?;
    let secret = tpm
        .unseal(&blob, &key, &pcrsig, a.bank)
        .with_context(|| format!("unsealing {}", a.blob.display()))?;
    match &a.output {
        Some(p) => {
            let mut t = imgctl_fsio::Transaction::with_inputs(inputs);
            t.add_secret(p, &secret)?;
            t.commit()?;
        }
        None => crate::output::write_bytes(&secret)?,
    }
    Ok(ExitCode::SUCCESS)
}
