//! `imgctl log ...`: the transparency log of measurements (C2SP tlog-tiles folder).

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::output::{out, outln};
use anyhow::{bail, Context};
use imgctl_tlog::checkpoint::{self, Checkpoint, Policy};
use imgctl_tlog::client::{self, TileFetch};
use imgctl_tlog::note::{NoteSigner, NoteVerifier, VerifierKind};
use imgctl_tlog::{Appender, LogReader};
use imgctl_tlog::{Entry, TlogProof};
use serde_json::json;

/// Manage and check a transparency log of measurements.
///
/// Example: imgctl log init ./log --key log.key --origin example.com/imgctl-log
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: LogCommand,
}

#[derive(Debug, clap::Subcommand)]
enum LogCommand {
    Init(InitArgs),
    Append(AppendArgs),
    Checkpoint(CheckpointArgs),
    Prove(ProveArgs),
    Verify(VerifyArgs),
    Consistency(ConsistencyArgs),
    Show(ShowArgs),
    Witness(crate::cmd::witness::WitnessArgs),
    Monitor(MonitorArgs),
}

/// Create an empty log; generates the Ed25519 key if KEY does not exist.
///
/// Example: imgctl log init ./log --key log.key --origin example.com/imgctl-log
#[derive(Debug, clap::Args)]
struct InitArgs {
    dir: PathBuf,
    /// Signer key file (PRIVATE+KEY+... as golang.org/x/mod/sumdb/note writes it).
    #[arg(long)]
    key: PathBuf,
    /// Origin (and key name) for a new key, e.g. example.com/imgctl-log.
    #[arg(long)]
    origin: Option<String>,
    #[arg(long)]
    json: bool,
}

/// Append entries durably; prints their indices (and writes .tlog-proof files with --proof-dir).
///
/// Example: imgctl log append ./log --key log.key --entry uki.entry.json --proof-dir out/
#[derive(Debug, clap::Args)]
struct AppendArgs {
    dir: PathBuf,
    #[arg(long)]
    key: PathBuf,
    /// A log entry as JSON: an artifact record (`"format": "imgctl-record/2"`, or an old
    /// manifest.json, stored as a version-2 entry) or a version-1 entry (kind, name, version,
    /// digests, pcrs, recipe, builder); repeatable.
    #[arg(long)]
    entry: Vec<PathBuf>,
    /// A file whose bytes are appended as-is; repeatable.
    #[arg(long)]
    raw: Vec<PathBuf>,
    /// Read entries from stdin, one per line, and acknowledge each batch on stdout as
    /// `ack <first index> <count> <tree size>` once it is durable. `--stdin` (`=json`): each
    /// line is a JSON log entry as `--entry` takes, stored in its canonical form; a line that
    /// is not one stops the run before its batch is appended. `--stdin=raw`: each line's bytes
    /// are stored as given.
    #[arg(
        long,
        value_enum,
        value_name = "FORMAT",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "json",
        conflicts_with_all = ["entry", "raw"]
    )]
    stdin: Option<StdinFormat>,
    /// With --stdin: lines per durable batch.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Write <index>.tlog-proof files here.
    #[arg(long)]
    proof_dir: Option<PathBuf>,
    /// A C2SP tlog-policy file: after the append, its witnesses (`witness` lines with a URL)
    /// are asked to cosign the new checkpoint, which is published with their cosignatures
    /// (and the proofs carry them). A witness that fails is reported; the entries stay.
    #[arg(long)]
    witness_policy: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

/// What `log append --stdin` reads: one entry per line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum StdinFormat {
    /// A JSON log entry per line, the format `--entry` takes.
    Json,
    /// Each line's bytes as they are.
    Raw,
}

/// Print the log's current checkpoint (verified with the log's key); with --witness-policy,
/// first collect cosignatures from the policy's witnesses (tlog-witness add-checkpoint) and
/// publish the checkpoint with them.
///
/// Example: imgctl log checkpoint ./log --key log.key --witness-policy witnesses.policy
#[derive(Debug, clap::Args)]
struct CheckpointArgs {
    dir: PathBuf,
    /// The log's signer key (needed with --witness-policy: publishing takes the log's lock).
    #[arg(long, requires = "witness_policy")]
    key: Option<PathBuf>,
    /// A C2SP tlog-policy file whose `witness <name> <vkey> <url>` lines are asked to cosign.
    #[arg(long, requires = "key")]
    witness_policy: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

/// Write a C2SP tlog-proof for an entry against the current checkpoint.
///
/// Example: imgctl log prove ./log --index 3 > entry3.tlog-proof
#[derive(Debug, clap::Args)]
struct ProveArgs {
    dir: PathBuf,
    #[arg(long)]
    index: u64,
    /// Write the proof here instead of stdout.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Trust settings shared by verify and consistency.
#[derive(Debug, clap::Args)]
struct TrustArgs {
    /// The log's verifier key (name+id+key), or @FILE to read it from a file.
    #[arg(long, required_unless_present = "witness_policy")]
    vkey: Option<String>,
    /// A witness verifier key (cosignature/v1); repeatable; @FILE allowed.
    #[arg(long, conflicts_with = "witness_policy")]
    witness: Vec<String>,
    /// How many witnesses must have cosigned (default: all given).
    #[arg(long, conflicts_with = "witness_policy")]
    min_witnesses: Option<usize>,
    /// A C2SP tlog-policy file: the logs and witnesses trusted and the quorum of cosignatures
    /// a checkpoint needs. With --vkey, that log must be one the policy lists.
    #[arg(long)]
    witness_policy: Option<PathBuf>,
}

/// Check that an entry is in the log: from a .tlog-proof, or from the log's tiles
/// (a folder or http:// URL); or audit a whole log folder.
///
/// Example: imgctl log verify --vkey @log.vkey --proof uki.tlog-proof --entry uki.entry
#[derive(Debug, clap::Args)]
struct VerifyArgs {
    #[command(flatten)]
    trust: TrustArgs,
    /// A .tlog-proof file.
    #[arg(long)]
    proof: Option<PathBuf>,
    /// The entry bytes (default with --proof: the proof's extra data).
    #[arg(long)]
    entry: Option<PathBuf>,
    /// A log folder or http:// URL to compute the proof from.
    #[arg(long)]
    log: Option<String>,
    /// With --log: the entry's index.
    #[arg(long)]
    index: Option<u64>,
    /// With --log (a folder): recompute every tile from the entries.
    #[arg(long)]
    audit: bool,
    #[arg(long)]
    json: bool,
}

/// Check that the log's current checkpoint is consistent with an older one.
///
/// Example: imgctl log consistency --vkey @log.vkey --old trusted.checkpoint --log http://127.0.0.1:8080/
#[derive(Debug, clap::Args)]
struct ConsistencyArgs {
    #[command(flatten)]
    trust: TrustArgs,
    /// The older checkpoint, trusted earlier.
    #[arg(long)]
    old: PathBuf,
    /// A log folder or http:// URL.
    #[arg(long)]
    log: Option<String>,
    /// Instead of --log: the newer checkpoint file (needs --proof-dir-less check: same size only).
    #[arg(long)]
    new: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

/// Follow a log: check that its checkpoint is consistent with the last one seen (--state) and
/// print every entry added since (kind, name, version, builder, digests).
///
/// Example: imgctl log monitor https://log.example/ --vkey @log.vkey --state seen.checkpoint --follow
#[derive(Debug, clap::Args)]
struct MonitorArgs {
    /// A log folder or http(s):// URL.
    log: String,
    /// The log's verifier key, or @FILE.
    #[arg(long)]
    vkey: String,
    /// The last checkpoint seen (signed note), read and replaced atomically; without it every
    /// entry is new each run.
    #[arg(long)]
    state: Option<PathBuf>,
    /// Keep checking every --interval seconds.
    #[arg(long)]
    follow: bool,
    #[arg(long, default_value_t = 60, requires = "follow")]
    interval: u64,
    /// One JSON object per line: each new entry, then the checkpoint.
    #[arg(long)]
    json: bool,
}

/// Show the log's checkpoint and entries.
///
/// Example: imgctl log show ./log --index 0 --json
#[derive(Debug, clap::Args)]
struct ShowArgs {
    dir: PathBuf,
    /// Only this entry.
    #[arg(long)]
    index: Option<u64>,
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        LogCommand::Init(a) => init(a),
        LogCommand::Append(a) => append(a),
        LogCommand::Checkpoint(a) => show_checkpoint(a),
        LogCommand::Prove(a) => prove(a),
        LogCommand::Verify(a) => verify(a),
        LogCommand::Consistency(a) => consistency(a),
        LogCommand::Show(a) => show(a),
        LogCommand::Witness(a) => crate::cmd::witness::run(a),
        LogCommand::Monitor(a) => monitor(a),
    }
}

/// Reads a signer key file.
pub fn load_signer(path: &Path) -> anyhow::Result<NoteSigner> {
    let s = String::from_utf8(imgctl_fsio::read_bounded(
        path,
        imgctl_fsio::caps::KEY,
        "a key",
    )?)
    .with_context(|| format!("key {} is not UTF-8", path.display()))?;
    NoteSigner::parse_skey(s.trim()).with_context(|| format!("key {}", path.display()))
}

fn init(a: InitArgs) -> anyhow::Result<ExitCode> {
    // Checked before a key is created: a log folder that cannot be one fails with nothing made.
    match std::fs::symlink_metadata(&a.dir) {
        Ok(m) if !m.is_dir() => bail!("{}: not a folder", a.dir.display()),
        Ok(_) if a.dir.join("checkpoint").exists() => {
            bail!(
                "{}: already holds a log (checkpoint exists)",
                a.dir.display()
            )
        }
        _ => {}
    }
    let mut keys = imgctl_fsio::Transaction::new();
    let signer = if a.key.exists() {
        let s = load_signer(&a.key)?;
        if let Some(o) = &a.origin {
            if o != s.name() {
                bail!("--origin {o} differs from the key's name {}", s.name());
            }
        }
        s
    } else {
        let origin = a
            .origin
            .as_deref()
            .context("--origin is needed to create a new key")?;
        let s = NoteSigner::generate(origin, VerifierKind::Ed25519)?;
        keys.add_new_secret(&a.key, format!("{}\n", s.skey()).as_bytes())?;
        keys.add(
            &a.key.with_extension("vkey"),
            format!("{}\n", s.verifier().vkey()).as_bytes(),
        )?;
        s
    };
    // The log first, then the key: if the log cannot be made, no key is left either.
    let created_key = keys.paths().next().is_some();
    let signed = imgctl_tlog::init(&a.dir, &signer)
        .with_context(|| format!("creating the log {}", a.dir.display()))?;
    keys.commit()?;
    if created_key {
        eprintln!(
            "imgctl: created key {} (verifier key beside it, .vkey)",
            a.key.display()
        );
    }
    if a.json {
        outln!(
            "{}",
            json!({"origin": signer.name(), "vkey": signer.verifier().vkey(), "checkpoint": signed})
        );
    } else {
        outln!("{}", signer.verifier().vkey());
    }
    Ok(ExitCode::SUCCESS)
}

fn read_entry_json(p: &Path) -> anyhow::Result<Vec<u8>> {
    let data = imgctl_fsio::read_bounded(p, imgctl_fsio::caps::ENTRY, "a log input")?;
    entry_from_json(&data).with_context(|| p.display().to_string())
}

/// A log entry in the JSON form `--entry` and `--stdin` take, canonically encoded.
fn entry_from_json(data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let v: serde_json::Value = serde_json::from_slice(data).context("not JSON")?;
    Ok(Entry::from_json(&v)?.encode()?)
}

fn append(a: AppendArgs) -> anyhow::Result<ExitCode> {
    // The proof folder is checked before anything is appended.
    if let Some(d) = &a.proof_dir {
        match std::fs::metadata(d) {
            Ok(m) if !m.is_dir() => bail!("--proof-dir {}: not a folder", d.display()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::create_dir_all(d)
                .with_context(|| format!("creating --proof-dir {}", d.display()))?,
            Err(e) => bail!("--proof-dir {}: {e}", d.display()),
        }
    }
    let signer = load_signer(&a.key)?;
    let mut log = Appender::open(&a.dir, signer)
        .with_context(|| format!("opening log {}", a.dir.display()))?;
    if let Some(format) = a.stdin {
        let stdin = std::io::stdin();
        let mut batch: Vec<Vec<u8>> = Vec::new();
        let mut lines = stdin.lock().lines();
        let mut number = 0u64;
        loop {
            let line = lines.next().transpose().context("reading stdin")?;
            let done = line.is_none();
            if let Some(l) = line {
                number += 1;
                batch.push(match format {
                    StdinFormat::Raw => l.into_bytes(),
                    StdinFormat::Json => entry_from_json(l.as_bytes()).with_context(|| {
                        format!(
                            "stdin line {number}: not a log entry (nothing of this batch was \
                             appended; --stdin=raw stores lines as given)"
                        )
                    })?,
                });
            }
            if batch.len() >= a.batch.max(1) || (done && !batch.is_empty()) {
                let r = log.append(&batch)?;
                outln!(
                    "ack {} {} {}",
                    r.first_index,
                    batch.len(),
                    r.checkpoint.size
                );
                batch.clear();
            }
            if done {
                break;
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut entries = Vec::new();
    for p in &a.entry {
        entries.push(read_entry_json(p)?);
    }
    for p in &a.raw {
        entries.push(imgctl_fsio::read_bounded(
            p.as_ref(),
            imgctl_fsio::caps::ENTRY,
            "a log input",
        )?);
    }
    if entries.is_empty() {
        bail!("nothing to append: give --entry, --raw or --stdin");
    }
    let first = log.size();
    let indices: Vec<u64> = (0..entries.len() as u64).map(|i| first + i).collect();
    let inputs: Vec<&Path> = a.entry.iter().chain(&a.raw).map(PathBuf::as_path).collect();
    let mut proofs = imgctl_fsio::Transaction::with_inputs(inputs);
    if let Some(d) = &a.proof_dir {
        for &i in &indices {
            proofs.check(&d.join(format!("{i}.tlog-proof")))?;
        }
    }
    let witnesses = a
        .witness_policy
        .as_deref()
        .map(policy_witnesses)
        .transpose()?;
    // The append is the point of no return; the proofs can be rewritten with `log prove`.
    let mut r = log.append(&entries)?;
    if let Some(w) = &witnesses {
        // The entries are durable already; a witness that fails is reported, not fatal.
        match collect_cosignatures(&mut log, w) {
            Ok(_) => r.signed_checkpoint = log.signed_checkpoint().to_owned(),
            Err(e) => eprintln!(
                "imgctl: warning: the entries are in the log, but the cosigned checkpoint was \
                 not published: {} (`imgctl log checkpoint --witness-policy` retries)",
                crate::output::render_error(&e)
            ),
        }
    }
    if let Some(d) = &a.proof_dir {
        let written = (|| -> anyhow::Result<()> {
            for &i in &indices {
                let p = log.prove(i)?;
                proofs.add(&d.join(format!("{i}.tlog-proof")), p.to_text().as_bytes())?;
            }
            Ok(proofs.commit()?)
        })();
        written.with_context(|| {
            format!(
                "entries {first}..{} are in the log {}, but their proofs were not written to {} \
                 (`imgctl log prove` writes them)",
                first + entries.len() as u64 - 1,
                a.dir.display(),
                d.display()
            )
        })?;
    }
    if a.json {
        outln!(
            "{}",
            json!({"indices": indices, "size": r.checkpoint.size, "checkpoint": r.signed_checkpoint})
        );
    } else {
        for i in indices {
            outln!("{i}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn checkpoint_json(c: &Checkpoint) -> serde_json::Value {
    json!({"origin": c.origin, "size": c.size, "root": hex::encode(c.root)})
}

/// The witnesses of a tlog-policy file that give a URL (those are asked to cosign).
fn policy_witnesses(path: &Path) -> anyhow::Result<Vec<imgctl_tlog::policy::PolicyWitness>> {
    let bytes = imgctl_fsio::read_bounded(
        path,
        imgctl_tlog::policy::MAX_POLICY_LEN as u64,
        "a witness policy",
    )?;
    let t = imgctl_tlog::TrustPolicy::parse(&bytes).with_context(|| path.display().to_string())?;
    let with_url: Vec<_> = t
        .witnesses
        .into_iter()
        .filter(|w| w.url.is_some())
        .collect();
    if with_url.is_empty() {
        bail!(
            "{}: no `witness <name> <vkey> <url>` line gives a URL to ask",
            path.display()
        );
    }
    Ok(with_url)
}

/// Asks each witness to cosign the log's current checkpoint (C2SP tlog-witness, handling 409
/// by retrying from the size it names) and publishes the checkpoint with every cosignature
/// that verified. Returns the witnesses that did not cosign; each is reported on stderr.
fn collect_cosignatures(
    log: &mut Appender,
    witnesses: &[imgctl_tlog::policy::PolicyWitness],
) -> anyhow::Result<Vec<String>> {
    let signed = log.signed_checkpoint().to_owned();
    let size = log.size();
    let mut sigs = Vec::new();
    let mut failed = Vec::new();
    for w in witnesses {
        let Some(url) = &w.url else { continue };
        let got = client::collect_cosignature(url, &w.key, signed.as_bytes(), size, |a, b| {
            log.consistency(a, b)
        });
        match got {
            Ok(s) => {
                eprintln!("imgctl: witness {} cosigned size {size}", w.name);
                sigs.extend(s)
            }
            Err(e) => {
                eprintln!(
                    "imgctl: WARNING: witness {} ({url}) did not cosign the checkpoint at size \
                     {size}: {e}",
                    w.name
                );
                failed.push(w.name.clone());
            }
        }
    }
    log.add_cosignatures(&sigs)
        .context("publishing the cosigned checkpoint")?;
    Ok(failed)
}

fn show_checkpoint(a: CheckpointArgs) -> anyhow::Result<ExitCode> {
    if let (Some(key), Some(policy)) = (&a.key, &a.witness_policy) {
        let witnesses = policy_witnesses(policy)?;
        let signer = load_signer(key)?;
        let mut log = Appender::open(&a.dir, signer)
            .with_context(|| format!("opening log {}", a.dir.display()))?;
        let failed = collect_cosignatures(&mut log, &witnesses)?;
        if a.json {
            outln!(
                "{}",
                json!({"checkpoint": checkpoint_json(log.checkpoint()), "note": log.signed_checkpoint(), "failed_witnesses": failed})
            );
        } else {
            out!("{}", log.signed_checkpoint());
        }
        if !failed.is_empty() {
            eprintln!(
                "imgctl: error: {} of {} witnesses did not cosign: {}",
                failed.len(),
                witnesses.len(),
                failed.join(", ")
            );
            return Ok(ExitCode::FAILURE);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let r = LogReader::open(&a.dir)?;
    let (c, signed) = r.checkpoint()?;
    if a.json {
        outln!("{}", checkpoint_json(&c));
    } else {
        out!("{signed}");
    }
    Ok(ExitCode::SUCCESS)
}

fn prove(a: ProveArgs) -> anyhow::Result<ExitCode> {
    let r = LogReader::open(&a.dir)?;
    let p = r.prove(a.index)?;
    match a.out {
        Some(o) => imgctl_fsio::write_atomic(&o, p.to_text().as_bytes(), &[])?,
        None => out!("{}", p.to_text()),
    }
    Ok(ExitCode::SUCCESS)
}

pub fn key_arg(s: &str) -> anyhow::Result<String> {
    match s.strip_prefix('@') {
        Some(f) => Ok(String::from_utf8(imgctl_fsio::read_bounded(
            Path::new(f),
            imgctl_fsio::caps::KEY,
            "a key",
        )?)
        .with_context(|| format!("{f} is not UTF-8"))?
        .trim()
        .to_owned()),
        None => Ok(s.to_owned()),
    }
}

struct Trust {
    log: NoteVerifier,
    witnesses: Vec<NoteVerifier>,
    quorum: imgctl_tlog::Quorum,
}

impl Trust {
    fn new(t: &TrustArgs) -> anyhow::Result<Trust> {
        let vkey = t
            .vkey
            .as_deref()
            .map(|v| NoteVerifier::parse_vkey(&key_arg(v)?).context("--vkey"))
            .transpose()?;
        if let Some(path) = &t.witness_policy {
            let bytes = imgctl_fsio::read_bounded(
                path,
                imgctl_tlog::policy::MAX_POLICY_LEN as u64,
                "a witness policy",
            )?;
            let trust = imgctl_tlog::TrustPolicy::parse(&bytes)
                .with_context(|| format!("{}", path.display()))?;
            let log = match vkey {
                Some(v) if trust.logs.is_empty() || trust.logs.iter().any(|l| l.key == v) => v,
                Some(v) => anyhow::bail!(
                    "{}: the policy does not list the log key {}",
                    path.display(),
                    v.vkey()
                ),
                None => match trust.logs.as_slice() {
                    [one] => one.key.clone(),
                    [] => anyhow::bail!("{}: the policy lists no log; give --vkey", path.display()),
                    _ => anyhow::bail!(
                        "{}: the policy lists several logs; say which with --vkey",
                        path.display()
                    ),
                },
            };
            return Ok(Trust {
                log,
                witnesses: trust.witness_keys(),
                quorum: trust.quorum,
            });
        }
        let log = vkey.context("--vkey is required without --witness-policy")?;
        let witnesses = t
            .witness
            .iter()
            .map(|w| NoteVerifier::parse_vkey(&key_arg(w)?).context("--witness"))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let min = t.min_witnesses.unwrap_or(witnesses.len());
        Ok(Trust {
            log,
            quorum: imgctl_tlog::Quorum::threshold(min, witnesses.len()),
            witnesses,
        })
    }
    fn policy(&self) -> Policy<'_> {
        Policy {
            log: &self.log,
            origin: None,
            witnesses: &self.witnesses,
            quorum: self.quorum.clone(),
        }
    }
}

fn source(s: &str) -> anyhow::Result<Box<dyn TileFetch + Send + Sync>> {
    Ok(imgctl_tlog::client::open(s)?)
}

/// Prints a verdict; the exit code is the verdict's even when stdout is closed or full.
fn verdict(json_out: bool, ok: bool, value: serde_json::Value, text: &str) -> ExitCode {
    let shown = if json_out {
        crate::output::write_stdout(format_args!("{value}\n"))
    } else {
        crate::output::write_stdout(format_args!("{text}\n"))
    };
    if let Err(e) = shown {
        if !e.is_closed_pipe() {
            eprintln!("imgctl: error: {e}");
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn verify(a: VerifyArgs) -> anyhow::Result<ExitCode> {
    let trust = Trust::new(&a.trust)?;
    let policy = trust.policy();
    let entry = a
        .entry
        .as_ref()
        .map(|p| imgctl_fsio::read_bounded(p, imgctl_fsio::caps::ENTRY, "a log entry"))
        .transpose()?;
    let result: anyhow::Result<(Checkpoint, Option<u64>, String)> = (|| {
        if let Some(p) = &a.proof {
            let proof = TlogProof::parse(&imgctl_fsio::read_bounded(
                p.as_ref(),
                imgctl_fsio::caps::ENTRY,
                "a log input",
            )?)?;
            let e = match (&entry, &proof.extra) {
                (Some(e), _) => e.clone(),
                (None, Some(x)) => x.clone(),
                (None, None) => bail!("the proof carries no entry: give --entry"),
            };
            let vc = proof.verify(&e, &policy)?;
            return Ok((
                vc.checkpoint,
                Some(proof.index),
                "entry is in the log".into(),
            ));
        }
        let src = source(a.log.as_deref().context("give --proof or --log")?)?;
        if a.audit {
            let dir = a.log.as_deref().unwrap_or_default();
            let (vc, _) = client::fetch_checkpoint(src.as_ref(), &policy)?;
            let c = vc.checkpoint;
            let report =
                imgctl_tlog::tiles::audit(c.size, &c.root, client::tile_fetcher(src.as_ref()))
                    .with_context(|| format!("auditing {dir}"))?;
            return Ok((
                c,
                None,
                format!(
                    "log verified: {} entries, {} tiles, {} bundles",
                    report.entries, report.tiles, report.bundles
                ),
            ));
        }
        let index = a.index.context("--log needs --index")?;
        let e = entry.clone().context("--log needs --entry")?;
        let c = client::check_entry_in_log(src.as_ref(), &policy, &e, index)?;
        Ok((c, Some(index), "entry is in the log".into()))
    })();
    Ok(match result {
        Ok((c, index, msg)) => verdict(
            a.json,
            true,
            json!({"verified": true, "index": index, "checkpoint": checkpoint_json(&c)}),
            &format!("OK: {msg} ({} at size {})", c.origin, c.size),
        ),
        Err(e) => {
            eprintln!(
                "imgctl: verification failed: {}",
                crate::output::render_error(&e)
            );
            verdict(
                a.json,
                false,
                json!({"verified": false, "error": crate::output::render_error(&e)}),
                "FAIL",
            )
        }
    })
}

fn consistency(a: ConsistencyArgs) -> anyhow::Result<ExitCode> {
    let trust = Trust::new(&a.trust)?;
    let policy = trust.policy();
    let old_bytes =
        imgctl_fsio::read_bounded(a.old.as_ref(), imgctl_fsio::caps::ENTRY, "a log input")?;
    let result: anyhow::Result<(Checkpoint, Checkpoint)> = (|| {
        let old = checkpoint::verify(&old_bytes, &policy)
            .context("old checkpoint")?
            .checkpoint;
        if let Some(n) = &a.new {
            let new_bytes =
                imgctl_fsio::read_bounded(n.as_ref(), imgctl_fsio::caps::ENTRY, "a log input")?;
            let src = a.log.as_deref().map(source).transpose()?;
            return client::check_checkpoints_consistency(
                src.as_deref().map(|s| s as &dyn TileFetch),
                &policy,
                &old_bytes,
                &new_bytes,
            )
            .with_context(|| format!("{} against {}", n.display(), a.old.display()));
        }
        let src = source(a.log.as_deref().context("give --log or --new")?)?;
        let new = client::check_log_consistency(src.as_ref(), &policy, &old_bytes)?;
        Ok((old, new))
    })();
    Ok(match result {
        Ok((old, new)) => verdict(
            a.json,
            true,
            json!({"consistent": true, "old": checkpoint_json(&old), "new": checkpoint_json(&new)}),
            &format!("OK: size {} extends size {}", new.size, old.size),
        ),
        Err(e) => {
            eprintln!(
                "imgctl: consistency check failed: {}",
                crate::output::render_error(&e)
            );
            verdict(
                a.json,
                false,
                json!({"consistent": false, "error": crate::output::render_error(&e)}),
                "FAIL",
            )
        }
    })
}

fn entry_view(bytes: &[u8]) -> serde_json::Value {
    match Entry::parse(bytes) {
        Ok(e) => e.to_json(),
        Err(_) => json!({"raw": String::from_utf8_lossy(bytes)}),
    }
}

fn show(a: ShowArgs) -> anyhow::Result<ExitCode> {
    let r = LogReader::open(&a.dir)?;
    let (c, _) = r.checkpoint()?;
    let indices: Vec<u64> = match a.index {
        Some(i) => vec![i],
        None => (0..c.size).collect(),
    };
    let mut entries = Vec::new();
    for i in indices {
        entries.push((i, r.entry(i, c.size)?));
    }
    if a.json {
        let list: Vec<serde_json::Value> = entries
            .iter()
            .map(|(i, e)| json!({"index": i, "entry": entry_view(e)}))
            .collect();
        outln!(
            "{}",
            json!({"checkpoint": checkpoint_json(&c), "vkey": r.vkey().vkey(), "entries": list})
        );
    } else {
        outln!(
            "origin {}\nsize {}\nroot {}\nvkey {}",
            c.origin,
            c.size,
            hex::encode(c.root),
            r.vkey().vkey()
        );
        for (i, e) in entries {
            match Entry::parse(&e) {
                Ok(le) => outln!("{i}\t{} {} {}", le.kind(), le.name(), le.version()),
                Err(_) => outln!("{i}\t{}", String::from_utf8_lossy(&e).escape_debug()),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn monitor(a: MonitorArgs) -> anyhow::Result<ExitCode> {
    let vkey = NoteVerifier::parse_vkey(&key_arg(&a.vkey)?).context("--vkey")?;
    let policy = Policy::log_only(&vkey);
    let src = source(&a.log)?;
    let mut seen: Option<Vec<u8>> = match &a.state {
        Some(p) if p.exists() => Some(imgctl_fsio::read_bounded(
            p,
            imgctl_fsio::caps::ENTRY,
            "a monitor state (checkpoint)",
        )?),
        _ => None,
    };
    loop {
        let round: anyhow::Result<Vec<u8>> = (|| {
            let (c, note, entries) = client::read_all_entries(src.as_ref(), &policy)?;
            let from = match &seen {
                Some(old) => {
                    let (old, _) = client::check_checkpoints_consistency(
                        Some(src.as_ref()),
                        &policy,
                        old,
                        &note,
                    )
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "{}: checkpoint inconsistent with the checkpoint seen before{}: {e}",
                            a.log,
                            a.state
                                .as_ref()
                                .map(|p| format!(" (state {})", p.display()))
                                .unwrap_or_default()
                        )
                    })?;
                    old.size
                }
                None => 0,
            };
            for (i, e) in entries.iter().enumerate().skip(from as usize) {
                print_monitored(a.json, i as u64, e)?;
            }
            if a.json {
                outln!(
                    "{}",
                    json!({"checkpoint": checkpoint_json(&c), "new_entries": c.size - from})
                );
            } else {
                outln!(
                    "checkpoint {} size {} root {} ({} new)",
                    c.origin,
                    c.size,
                    hex::encode(c.root),
                    c.size - from
                );
            }
            if let Some(p) = &a.state {
                imgctl_fsio::write_atomic(p, &note, &[])?;
            }
            Ok(note)
        })();
        match round {
            Ok(note) => seen = Some(note),
            Err(e) => {
                eprintln!("imgctl: monitor: {}", crate::output::render_error(&e));
                return Ok(ExitCode::FAILURE);
            }
        }
        if !a.follow {
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(std::time::Duration::from_secs(a.interval.max(1)));
    }
}

fn print_monitored(json_out: bool, index: u64, bytes: &[u8]) -> anyhow::Result<()> {
    match Entry::parse(bytes) {
        Ok(e) if json_out => outln!("{}", json!({"index": index, "entry": e.to_json()})),
        Ok(e) => {
            outln!(
                "{index}\t{} {} {} builder={}",
                e.kind(),
                e.name(),
                e.version(),
                e.builder()
            );
            for (what, alg, hex) in e.digest_list() {
                outln!("  {what} {alg}:{hex}");
            }
            // A signed PCR policy (its own record, or the one a UKI carries): whose key signed
            // how many PCR 11 values, so a key holder sees every use of the key.
            if let Entry::V2(r) = &e {
                if let Some(p) = &r.policy {
                    let values: usize = p.signs.values().map(Vec::len).sum();
                    let banks: Vec<&str> = p.signs.keys().map(String::as_str).collect();
                    outln!(
                        "  signed PCR policy: key sha256:{} signs {values} PCR 11 values ({})",
                        p.key_fingerprint_sha256,
                        banks.join(", ")
                    );
                }
            }
        }
        Err(_) if json_out => outln!(
            "{}",
            json!({"index": index, "raw": String::from_utf8_lossy(bytes)})
        ),
        Err(_) => outln!(
            "{index}\t(not an imgctl entry) {}",
            String::from_utf8_lossy(bytes).escape_debug()
        ),
    }
    Ok(())
}

/// `--log DIR --log-key KEY` of the build commands that log an artifact once its outputs are
/// committed (`ext build`, `sign-pcrs`): checked before any work by [`ArtifactLog::check`],
/// then [`ArtifactLog::publish`] appends the record and writes its `.tlog-proof`.
pub struct ArtifactLog {
    dir: PathBuf,
    key: PathBuf,
}

impl ArtifactLog {
    /// Opens nothing yet; fails if the folder is not a log writable with this key.
    pub fn check(dir: &Path, key: &Path) -> anyhow::Result<ArtifactLog> {
        let signer = load_signer(key)?;
        imgctl_tlog::check_writable(dir, &signer)
            .with_context(|| format!("the log {} with {}", dir.display(), key.display()))?;
        Ok(ArtifactLog {
            dir: dir.to_owned(),
            key: key.to_owned(),
        })
    }

    /// Appends the record as a version-2 entry and writes its inclusion proof to `proof`
    /// (atomically). Returns the entry's index.
    pub fn publish(
        &self,
        record: &imgctl_measure::record::ArtifactRecord,
        proof: &Path,
    ) -> anyhow::Result<u64> {
        let entry = record.encode_entry()?;
        let (dir, key) = (&self.dir, &self.key);
        let signer = load_signer(key)?;
        let mut log = imgctl_tlog::Appender::open(dir, signer)
            .with_context(|| format!("opening the log {} with {}", dir.display(), key.display()))?;
        let _critical = imgctl_fsio::critical_section();
        let index = log
            .append(&[entry])
            .with_context(|| format!("appending to the log {}", dir.display()))?
            .first_index;
        log.prove(index)
            .map_err(anyhow::Error::from)
            .and_then(|p| {
                Ok(imgctl_fsio::write_atomic(
                    proof,
                    p.to_text().as_bytes(),
                    &[],
                )?)
            })
            .with_context(|| {
                format!(
                    "the entry is in the log {} at index {index}, but the proof {} was not \
                     written: run `imgctl log prove {} --index {index} --out {}`",
                    dir.display(),
                    proof.display(),
                    dir.display(),
                    proof.display()
                )
            })?;
        Ok(index)
    }
}
