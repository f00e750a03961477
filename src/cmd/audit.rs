//! `imgctl audit`: list every break-glass event in systemd's userspace log and check the log
//! against the PCRs it extended (docs/break-glass.md).

use std::path::PathBuf;
use std::process::ExitCode;

use crate::output::outln;
use anyhow::Context;
use imgctl_measure::bank::{Digest, HashAlg};
use imgctl_measure::breakglass;
use imgctl_measure::eventlog::{self, EventLog, PcrValues, UserspaceLog};

/// List break-glass events (debug shells, emergency logins, recovery-key unlocks) and check the
/// userspace log replays to the PCRs, so a removed or altered record is itself reported.
///
/// Exit status: 0 no break-glass event and the log is consistent; 1 break-glass event(s) found;
/// 4 the log is inconsistent (altered or missing records, or left dirty by a writer); 3 unreadable
/// input.
///
/// Example: imgctl audit --userspace-log /run/log/systemd/tpm2-measure.log --pcrs pcrs.json --json
#[derive(Debug, clap::Args)]
pub struct Args {
    /// systemd's userspace log (/run/log/systemd/tpm2-measure.log).
    #[arg(long)]
    userspace_log: PathBuf,
    /// The firmware event log: its replay is the starting point of PCRs it also covers.
    #[arg(long)]
    eventlog: Option<PathBuf>,
    /// The PCR values the TPM reports, as {"<bank>": {"<pcr>": "<hex>"}} (the shape
    /// `imgctl eventlog replay --json` prints); without it a removed record cannot be detected.
    #[arg(long)]
    pcrs: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn parse_pcrs(data: &[u8]) -> anyhow::Result<PcrValues> {
    let raw: std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>> =
        serde_json::from_slice(data).context("--pcrs is not {\"bank\": {\"pcr\": \"hex\"}}")?;
    let mut out = PcrValues::new();
    for (b, m) in raw {
        let bank: HashAlg = b.parse()?;
        for (p, h) in m {
            out.entry(bank)
                .or_default()
                .insert(p.parse().context("PCR index")?, Digest(hex::decode(h)?));
        }
    }
    Ok(out)
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let load = || -> anyhow::Result<_> {
        let path = &args.userspace_log;
        let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let log =
            UserspaceLog::parse(&data).with_context(|| format!("parsing {}", path.display()))?;
        let firmware = match &args.eventlog {
            Some(p) => {
                let d = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
                eventlog::replay(
                    &EventLog::parse(&d).with_context(|| format!("parsing {}", p.display()))?,
                )
                .values
            }
            None => PcrValues::new(),
        };
        let pcrs = match &args.pcrs {
            Some(p) => Some(parse_pcrs(
                &std::fs::read(p).with_context(|| format!("reading {}", p.display()))?,
            )?),
            None => None,
        };
        Ok((log, firmware, pcrs))
    };
    let (log, firmware, pcrs) = match load() {
        Ok(x) => x,
        Err(e) => {
            eprintln!("imgctl: error: {e:#}");
            return Ok(ExitCode::from(3));
        }
    };
    let mut events = Vec::new();
    let mut problems = Vec::new();
    for r in &log.records {
        if let Some(bg) = breakglass::from_record(r) {
            let ts = r.content.get("timestamp").cloned().unwrap_or_default();
            events.push(match bg {
                Ok(b) => serde_json::json!({"record": r.index, "pcr": r.pcr, "actor": b.actor, "kind": b.kind, "reason": b.reason, "time": b.time, "bootId": r.content.get("bootId"), "timestamp": ts}),
                Err(e) => serde_json::json!({"record": r.index, "pcr": r.pcr, "error": e}),
            });
        }
        let bad = r.digest_mismatches();
        if !bad.is_empty() && r.event_type.as_deref() != Some("volume-key") {
            problems.push(format!("record {} ({}): logged digest is not the hash of its string in {} — altered after it was written", r.index, r.string.as_deref().unwrap_or(""), bad.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")));
        }
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(m) = std::fs::metadata(&args.userspace_log) {
            if m.permissions().mode() & 0o1000 != 0 {
                problems.push("the log's sticky bit is set: a writer died between extending and appending, the log is incomplete".into());
            }
        }
    }
    let replayed = log.replay_onto(&firmware);
    let mut checked = Vec::new();
    match &pcrs {
        Some(actual) => {
            let pcrs_in_log: std::collections::BTreeSet<u32> = log
                .records
                .iter()
                .filter_map(|r| r.pcr)
                .chain([breakglass::PCR])
                .collect();
            for (bank, m) in actual {
                for pcr in &pcrs_in_log {
                    let Some(want) = m.get(pcr) else { continue };
                    let got = replayed
                        .get(bank)
                        .and_then(|x| x.get(pcr))
                        .cloned()
                        .or_else(|| eventlog::replay::reset_value(*bank, *pcr));
                    checked.push(format!("PCR {pcr} {bank}"));
                    if got.as_ref() != Some(want) {
                        problems.push(format!("PCR {pcr} ({bank}) is {want} but the log replays to {} — a record is missing or altered", got.map_or("nothing".into(), |d| d.to_hex())));
                    }
                }
            }
        }
        None => problems.push("no --pcrs given: a removed record cannot be detected".into()),
    }
    let consistent = problems.iter().all(|p| p.starts_with("no --pcrs"));
    if args.json {
        let out = serde_json::json!({"break_glass": events, "consistent": consistent, "problems": problems, "checked": checked});
        outln!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        outln!("{} break-glass event(s)", events.len());
        for e in &events {
            outln!("  {e}");
        }
        for p in &problems {
            outln!("  problem: {p}");
        }
    }
    Ok(if !events.is_empty() {
        ExitCode::from(1)
    } else if !consistent {
        ExitCode::from(4)
    } else {
        ExitCode::SUCCESS
    })
}
