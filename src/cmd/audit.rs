//! `imgctl audit`: list every break-glass event in systemd's userspace log and check the log
//! against the PCRs it extended (docs/break-glass.md).

use std::path::PathBuf;
use std::process::ExitCode;

use crate::output::outln;
use anyhow::Context;
use imgctl_attest::audit;
use imgctl_attest::eventlog::{self, EventLog, PcrValues, UserspaceLog};
use imgctl_fsio::caps;

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

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let load = || -> anyhow::Result<_> {
        let path = &args.userspace_log;
        let data = imgctl_fsio::read_bounded(path, caps::USERSPACE_LOG, "a userspace log")
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let log =
            UserspaceLog::parse(&data).with_context(|| format!("parsing {}", path.display()))?;
        let firmware = match &args.eventlog {
            Some(p) => {
                let d = imgctl_fsio::read_bounded(p, caps::EVENT_LOG, "an event log")
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                eventlog::replay(
                    &EventLog::parse(&d).with_context(|| format!("parsing {}", p.display()))?,
                )
                .values
            }
            None => PcrValues::new(),
        };
        let pcrs = match &args.pcrs {
            Some(p) => Some(
                eventlog::pcr_values_from_json(
                    &imgctl_fsio::read_bounded(p, caps::POLICY, "a PCR values file")
                        .map_err(|e| anyhow::anyhow!("{e}"))?,
                )
                .with_context(|| format!("--pcrs {}", p.display()))?,
            ),
            None => None,
        };
        Ok((log, firmware, pcrs))
    };
    let (log, firmware, pcrs) = match load() {
        Ok(x) => x,
        Err(e) => {
            eprintln!("imgctl: error: {}", crate::output::render_error(&e));
            return Ok(ExitCode::from(3));
        }
    };
    #[cfg(unix)]
    let dirty = {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(&args.userspace_log).is_ok_and(|m| m.permissions().mode() & 0o1000 != 0)
    };
    #[cfg(not(unix))]
    let dirty = false;
    let report = audit::audit(&log, &firmware, pcrs.as_ref(), dirty);
    if args.json {
        let out = serde_json::json!({"break_glass": report.break_glass, "consistent": report.consistent,
            "problems": report.problems, "checked": report.checked, "verdict": report.verdict});
        outln!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        outln!("{} break-glass event(s)", report.break_glass.len());
        for e in &report.break_glass {
            outln!("  {e}");
        }
        for p in &report.problems {
            outln!("  problem: {p}");
        }
    }
    Ok(match report.verdict {
        audit::AuditVerdict::Inconsistent => ExitCode::from(4),
        audit::AuditVerdict::BreakGlass => ExitCode::from(1),
        audit::AuditVerdict::Clean => ExitCode::SUCCESS,
    })
}
