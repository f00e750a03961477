//! `imgctl verify`: did this machine boot what we published? Exit 0 only on accept.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::output::outln;
use anyhow::{bail, Context};
use base64::Engine as _;
use imgctl_measure::eventlog::{EventLog, UserspaceLog};
use imgctl_measure::quote::{verify_quote, AkPublic, Signature};
use imgctl_measure::verify::{self, Finding, Policy, References, Severity, Verdict};

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
    /// Print the verdict as JSON.
    #[arg(long)]
    json: bool,
}

fn read(p: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(p).with_context(|| format!("reading {}", p.display()))
}

/// Loads a policy and every reference file it names (paths relative to the policy).
pub fn load_policy(path: &Path) -> anyhow::Result<(Policy, References)> {
    let text = String::from_utf8(read(path)?).context("policy is not UTF-8")?;
    let policy = Policy::parse(&text).with_context(|| format!("policy {}", path.display()))?;
    let mut refs = References::from_policy(&policy)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    for f in &policy.pcrs_json {
        let p = dir.join(f);
        refs.pcr11.extend(verify::parse_pcrs_json(f, &read(&p)?)?);
    }
    for f in &policy.manifests {
        let p = dir.join(f);
        refs.artifacts.push(verify::parse_manifest(f, &read(&p)?)?);
    }
    Ok((policy, refs))
}

fn decode_blob(v: &serde_json::Value) -> anyhow::Result<Vec<u8>> {
    let s = v.as_str().context("expected a string")?;
    hex::decode(s)
        .or_else(|_| base64::engine::general_purpose::STANDARD.decode(s))
        .context("neither hex nor base64")
}

fn load_quote(q: &Path, sig: Option<&Path>) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    let data = read(q)?;
    if let Some(s) = sig {
        return Ok((data, read(s)?));
    }
    let j: serde_json::Value = serde_json::from_slice(&data)
        .context("--quote without --signature must be JSON with quote and signature")?;
    let (qv, sv) = match j.get("Quote") {
        Some(inner) => (&inner["Quote"], &inner["Signature"]),
        None => (&j["quote"], &j["signature"]),
    };
    Ok((
        decode_blob(qv).context("quote")?,
        decode_blob(sv).context("signature")?,
    ))
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (policy, refs) = match load_policy(&args.policy) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("imgctl: error: {e:#}");
            return Ok(ExitCode::from(3));
        }
    };
    let log = EventLog::parse(&read(&args.eventlog)?)
        .with_context(|| format!("parsing {}", args.eventlog.display()));
    let log = match log {
        Ok(l) => l,
        Err(e) => {
            eprintln!("imgctl: error: {e:#}");
            return Ok(ExitCode::from(3));
        }
    };
    let userspace = match &args.userspace_log {
        Some(p) => Some(
            UserspaceLog::parse(&read(p)?).with_context(|| format!("parsing {}", p.display()))?,
        ),
        None => None,
    };
    let mut verdict = verify::verify(&policy, &refs, &log, userspace.as_ref());
    if let Some(q) = &args.quote {
        let Some(ak) = &args.ak else {
            bail!("--quote needs --ak")
        };
        let nonce = hex::decode(&args.nonce).context("--nonce is not hex")?;
        let (attest, sig) = load_quote(q, args.signature.as_deref())?;
        let (values, _) = verify::combined_pcrs(&log, userspace.as_ref());
        let result = Signature::parse(&sig)
            .map_err(Into::into)
            .and_then(|s| Ok((s, AkPublic::parse(&read(ak)?)?)))
            .and_then(|(s, k): (Signature, AkPublic)| {
                verify_quote(&attest, &s, &k, &nonce, |bank, pcr| {
                    values
                        .get(&bank)
                        .and_then(|m| m.get(&pcr))
                        .cloned()
                        .or_else(|| imgctl_measure::eventlog::replay::reset_value(bank, pcr))
                })
                .map_err(anyhow::Error::from)
            });
        match result {
            Ok(vq) => {
                verdict.checked.push(format!(
                    "quote: signature, magic, type, nonce, PCR digest over {} PCRs",
                    vq.pcrs.len()
                ));
                for p in &policy.pcrs {
                    if !vq.pcrs.iter().any(|(_, i, _)| i == p) {
                        verdict.findings.push(quote_finding(format!(
                            "the quote does not cover PCR {p}, which the policy names"
                        )));
                    }
                }
            }
            Err(e) => verdict.findings.insert(0, quote_finding(format!("{e:#}"))),
        }
        verdict.accepted = !verdict
            .findings
            .iter()
            .any(|f| f.severity == Severity::Reject);
    }
    // The verdict is the exit code: a closed or full stdout must not turn it into another one.
    if let Err(e) = print_verdict(&verdict, args.json) {
        match e.downcast_ref::<crate::output::StdoutError>() {
            Some(s) if s.is_closed_pipe() => {}
            _ => eprintln!("imgctl: error: {e:#}"),
        }
    }
    Ok(if verdict.accepted {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn quote_finding(message: String) -> Finding {
    verify::quote_finding(message)
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
    for c in &v.checked {
        eprintln!("checked: {c}");
    }
    Ok(())
}
