//! `imgctl verify`: did this machine boot what we published? Exit 0 only on accept.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::output::outln;
use anyhow::Context;
use imgctl_attest::eventlog::{EventLog, UserspaceLog};
use imgctl_attest::published::{self, PublishedLog, Trust};
use imgctl_attest::quote::{parse_quote_json, AkPublic, Attest, Signature};
use imgctl_attest::verify::{self, Policy, QuoteEvidence, References, Severity, Verdict};
use imgctl_fsio::caps;

/// Verify a machine's event logs (and TPM quote) against a policy and the published references.
///
/// Exit status: 0 accept; 1 reject; 2 usage; 3 unreadable evidence or policy.
///
/// Example: imgctl verify --eventlog binary_bios_measurements --userspace-log tpm2-measure.log --quote quote.json --ak ak.pub --nonce 0011 --policy policy.yaml
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The firmware event log (binary_bios_measurements).
    #[arg(long)]
    eventlog: PathBuf,
    /// systemd's userspace log (/run/log/systemd/tpm2-measure.log).
    #[arg(long)]
    userspace_log: Option<PathBuf>,
    /// The quote: JSON {"quote": b64/hex TPMS_ATTEST, "signature": b64/hex TPMT_SIGNATURE}
    /// (go-attestation's {"Quote":{"Quote","Signature"}} also), or the raw attest with --signature.
    #[arg(long, requires_all = ["ak"])]
    quote: Option<PathBuf>,
    /// TPMT_SIGNATURE file, when --quote is the raw attest (tpm2_quote -m / -s).
    #[arg(long, requires = "quote")]
    signature: Option<PathBuf>,
    /// The attestation key: TPM2B_PUBLIC, TPMT_PUBLIC or PEM public key.
    #[arg(long, requires = "quote")]
    ak: Option<PathBuf>,
    /// The nonce the verifier sent (hex; empty when none).
    #[arg(long, default_value = "", requires = "quote")]
    nonce: String,
    /// The verification policy (YAML or JSON).
    #[arg(long)]
    policy: PathBuf,
    /// A transparency log (folder or http(s) URL): every artifact record it holds (v2 entries)
    /// is a reference, read only after the entries hash to its checkpoint signed by --vkey. An
    /// event that matches none is rejected as "not published".
    #[arg(
        long,
        value_name = "DIR|URL",
        requires = "vkey",
        conflicts_with = "proof"
    )]
    log: Option<String>,
    /// Offline instead of --log: a `.tlog-proof` file (as `build --log` writes beside each
    /// artifact) whose entry, inclusion proof and checkpoint signed by --vkey make it a
    /// reference; repeatable.
    #[arg(long, value_name = "FILE", requires = "vkey")]
    proof: Vec<PathBuf>,
    /// The log's verifier key (or @FILE), with --log or --proof.
    #[arg(long, value_name = "KEY")]
    vkey: Option<String>,
    /// With --log: remembers the last checkpoint seen per log origin in this JSON file
    /// (written atomically) and rejects a checkpoint not consistent with it (split view).
    #[arg(long, value_name = "FILE", requires = "log")]
    state: Option<PathBuf>,
    /// With --log or --proof: a C2SP tlog-policy file; the log's checkpoint must be cosigned
    /// by a quorum of its witnesses (and the --vkey log must be one it lists, if it lists any).
    #[arg(long, value_name = "FILE", requires = "vkey")]
    witness_policy: Option<PathBuf>,
    /// Print the verdict as JSON.
    #[arg(long)]
    json: bool,
}

/// Checks the log's checkpoint against the one `state` remembers for its origin, then
/// remembers the new one.
fn check_state(state: &Path, log: &PublishedLog, trust: &Trust) -> anyhow::Result<()> {
    let mut seen: std::collections::BTreeMap<String, String> = match std::fs::metadata(state) {
        Ok(_) => serde_json::from_slice(&read(state, caps::POLICY, "a verifier state file")?)
            .with_context(|| format!("{}: not a verifier state file", state.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Default::default(),
        Err(e) => return Err(e).with_context(|| state.display().to_string()),
    };
    let origin = &log.checkpoint().origin;
    if let Some(old) = seen.get(origin) {
        log.check_extends(old.as_bytes(), trust).map_err(|e| {
            anyhow::anyhow!(
                "the log {origin}: checkpoint inconsistent with the checkpoint seen before \
                 (state {}): {e}",
                state.display()
            )
        })?;
    }
    seen.insert(origin.clone(), log.note().to_owned());
    let mut bytes = serde_json::to_vec_pretty(&seen)?;
    bytes.push(b'\n');
    imgctl_fsio::write_atomic(state, &bytes, &[])?;
    Ok(())
}

/// The log's key (`--vkey`) and the witness policy file, when one is given.
fn load_trust(vkey: &str, witness: Option<&Path>) -> anyhow::Result<Trust> {
    let vkey = crate::cmd::log::key_arg(vkey)?;
    let policy = match witness {
        Some(path) => Some((
            path.display().to_string(),
            read(
                path,
                imgctl_tlog::policy::MAX_POLICY_LEN as u64,
                "a witness policy",
            )?,
        )),
        None => None,
    };
    Trust::new(
        &vkey,
        policy.as_ref().map(|(n, b)| (n.as_str(), b.as_slice())),
    )
    .context("--vkey")
}

/// Adds every artifact record of the log to the references. The entries are read through the
/// tile client and must hash to the root of the checkpoint the key signed (and the witness
/// quorum cosigned).
fn load_log_references(
    src: &str,
    trust: &Trust,
    state: Option<&Path>,
    refs: &mut References,
) -> anyhow::Result<()> {
    let tiles = imgctl_tlog::client::open(src)?;
    let log = PublishedLog::read(tiles.as_ref(), trust)?;
    if let Some(state) = state {
        check_state(state, &log, trust)?;
    }
    log.add_references(refs);
    Ok(())
}

/// Adds the record each `.tlog-proof` carries, once its inclusion proof leads to a checkpoint
/// the trust policy accepts (offline verification: no log is read).
fn load_proof_references(
    proofs: &[PathBuf],
    trust: &Trust,
    refs: &mut References,
) -> anyhow::Result<()> {
    for p in proofs {
        let data = read(p, caps::ENTRY, "a .tlog-proof")?;
        published::add_proof(&p.display().to_string(), &data, trust, refs)?;
    }
    let names: Vec<String> = proofs.iter().map(|p| p.display().to_string()).collect();
    refs.published_in = Some(format!("the proofs {}", names.join(", ")));
    Ok(())
}

fn read(p: &Path, cap: u64, what: &'static str) -> anyhow::Result<Vec<u8>> {
    // fsio's message already includes its cause: keep the one line from repeating it.
    imgctl_fsio::read_bounded(p, cap, what).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Loads a policy and every reference file it names (paths relative to the policy).
pub fn load_policy(path: &Path) -> anyhow::Result<(Policy, References)> {
    let data = read(path, caps::POLICY, "a policy")?;
    let text = String::from_utf8(data)
        .map_err(|_| anyhow::anyhow!("policy {}: not UTF-8", path.display()))?;
    let policy = Policy::parse(&text).with_context(|| format!("policy {}", path.display()))?;
    let mut refs =
        References::from_policy(&policy).with_context(|| format!("policy {}", path.display()))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    for f in &policy.pcrs_json {
        let p = dir.join(f);
        let data = read(&p, caps::POLICY, "a pcrs.json")?;
        refs.pcr11.extend(
            verify::parse_pcrs_json(f, &data)
                .with_context(|| format!("policy {}: pcrs_json", path.display()))?,
        );
    }
    for f in &policy.manifests {
        let p = dir.join(f);
        let data = read(&p, caps::POLICY, "a manifest")?;
        refs.artifacts.push(
            verify::parse_manifest(f, &data)
                .with_context(|| format!("policy {}: manifests", path.display()))?,
        );
    }
    Ok((policy, refs))
}

fn load_quote(q: &Path, sig: Option<&Path>) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    let data = read(q, caps::QUOTE, "a quote")?;
    match sig {
        Some(s) => Ok((data, read(s, caps::QUOTE, "a signature")?)),
        None => parse_quote_json(&data).with_context(|| format!("quote {}", q.display())),
    }
}

/// Everything read from disk, parsed: any failure here is exit 3 (unreadable evidence).
struct Loaded {
    policy: Policy,
    refs: References,
    log: EventLog,
    userspace: Option<UserspaceLog>,
    quote: Option<(Vec<u8>, Signature, AkPublic, Vec<u8>)>,
}

fn load(args: &Args) -> anyhow::Result<Loaded> {
    let (policy, mut refs) = load_policy(&args.policy)?;
    match &args.vkey {
        Some(vkey) => {
            let trust = load_trust(vkey, args.witness_policy.as_deref())?;
            match &args.log {
                Some(src) => load_log_references(src, &trust, args.state.as_deref(), &mut refs)?,
                None if !args.proof.is_empty() => {
                    load_proof_references(&args.proof, &trust, &mut refs)?
                }
                None => anyhow::bail!("--vkey needs --log or --proof"),
            }
        }
        None if args.log.is_some() || !args.proof.is_empty() => {
            anyhow::bail!("--log and --proof need --vkey")
        }
        None => {}
    }
    let el = &args.eventlog;
    let log = EventLog::parse(&read(el, caps::EVENT_LOG, "an event log")?)
        .with_context(|| format!("parsing event log {}", el.display()))?;
    let userspace = match &args.userspace_log {
        Some(p) => Some(
            UserspaceLog::parse(&read(p, caps::USERSPACE_LOG, "a userspace log")?)
                .with_context(|| format!("parsing userspace log {}", p.display()))?,
        ),
        None => None,
    };
    let quote = match &args.quote {
        Some(q) => {
            let ak = args.ak.as_deref().context("--quote needs --ak")?;
            let nonce = hex::decode(&args.nonce)
                .with_context(|| format!("--nonce {:?} is not hex", args.nonce))?;
            let (attest, sig) = load_quote(q, args.signature.as_deref())?;
            let sig_name = args.signature.as_deref().unwrap_or(q);
            Attest::parse(&attest).with_context(|| format!("parsing quote {}", q.display()))?;
            let sig = Signature::parse(&sig)
                .with_context(|| format!("parsing signature {}", sig_name.display()))?;
            let ak_key = AkPublic::parse(&read(ak, caps::KEY, "an attestation key")?)
                .with_context(|| format!("parsing attestation key {}", ak.display()))?;
            Some((attest, sig, ak_key, nonce))
        }
        None => None,
    };
    Ok(Loaded {
        policy,
        refs,
        log,
        userspace,
        quote,
    })
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let l = match load(&args) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("imgctl: error: {}", crate::output::render_error(&e));
            return Ok(ExitCode::from(3));
        }
    };
    let quote = l
        .quote
        .as_ref()
        .map(|(attest, signature, ak, nonce)| QuoteEvidence {
            attest,
            signature,
            ak,
            nonce,
        });
    let verdict = verify::verify(&l.policy, &l.refs, &l.log, l.userspace.as_ref(), quote);
    // The verdict is the exit code: a closed or full stdout must not turn it into another one.
    if let Err(e) = print_verdict(&verdict, args.json) {
        match e.downcast_ref::<crate::output::StdoutError>() {
            Some(s) if s.is_closed_pipe() => {}
            _ => eprintln!("imgctl: error: {}", crate::output::render_error(&e)),
        }
    }
    Ok(if verdict.accepted {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn print_verdict(v: &Verdict, json: bool) -> anyhow::Result<()> {
    if json {
        outln!("{}", serde_json::to_string_pretty(v)?);
        return Ok(());
    }
    outln!("{}", if v.accepted { "ACCEPT" } else { "REJECT" });
    for q in &v.quirks {
        outln!("  quirk {} (PCR {}): {}", q.id, q.pcr, q.detail);
    }
    for (i, f) in v.findings.iter().enumerate() {
        let lead = if i == 0 && f.severity == Severity::Reject {
            "first divergence"
        } else if f.severity == Severity::Reject {
            "reject"
        } else {
            "note"
        };
        outln!("  {lead}: [{}] {}", f.kind, f.message);
        let mut at = Vec::new();
        if let Some(p) = f.pcr {
            at.push(format!("PCR {p}"));
        }
        if let Some(i) = f.index {
            at.push(format!("{} record {i}", f.source));
        }
        if let Some(t) = &f.event_type {
            at.push(t.clone());
        }
        if !at.is_empty() {
            outln!("      at: {}", at.join(", "));
        }
        if let Some(d) = &f.digest {
            outln!("      digest: {d}");
        }
        if let Some(d) = &f.description {
            outln!("      description: {d}");
        }
        if let Some(e) = &f.expected {
            outln!("      expected: {e}");
        }
        if let Some(a) = &f.artifact {
            outln!("      artifact: {a}");
        }
    }
    print_pcr_table(&v.pcrs)?;
    for c in &v.checked {
        eprintln!("checked: {c}");
    }
    Ok(())
}

/// The predicted-vs-measured table: one line per PCR of the policy and bank, the values cut
/// to 16 hex digits (`--json` has them whole).
fn print_pcr_table(rows: &[verify::PcrRow]) -> anyhow::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let short = |v: &Option<String>| match v {
        Some(h) => format!("{}…", &h[..h.len().min(16)]),
        None => "(none)".to_owned(),
    };
    outln!();
    outln!(
        "  {:>3}  {:<6}  {:<17}  {:<17}  {:<9}  {:>6}  predicted from",
        "PCR",
        "bank",
        "predicted",
        "measured",
        "verdict",
        "events"
    );
    for r in rows {
        let events = if r.events == 0 {
            "none".to_owned()
        } else {
            r.events.to_string()
        };
        outln!(
            "  {:>3}  {:<6}  {:<17}  {:<17}  {:<9}  {:>6}  {}{}",
            r.pcr,
            r.bank.to_string(),
            short(&r.predicted),
            short(&r.measured),
            r.verdict,
            events,
            r.predicted_from,
            if r.measured_from == "replay" {
                ""
            } else {
                "; measured: replay = quote"
            }
        );
    }
    Ok(())
}
