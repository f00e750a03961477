//! `imgctl eventlog show|replay`: list and replay a TCG firmware event log.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::output::outln;
use anyhow::Context;
use imgctl_attest::eventlog::{self, describe, EventLog};

/// List or replay a TCG PC Client firmware event log (binary_bios_measurements).
///
/// Example: imgctl eventlog show /sys/kernel/security/tpm0/binary_bios_measurements
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// List every event: PCR, type, digests per bank, decoded description.
    Show {
        /// The binary event log.
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Replay the log to PCR values in every bank it carries.
    Replay {
        /// The binary event log.
        file: PathBuf,
        /// Print {"<bank>": {"<pcr>": "<hex>"}} (the default output is text).
        #[arg(long)]
        json: bool,
    },
}

/// Reads and parses an event log file, naming the file in errors.
pub fn load(file: &std::path::Path) -> anyhow::Result<EventLog> {
    let data = imgctl_fsio::read_bounded(file, imgctl_fsio::caps::EVENT_LOG, "an event log")
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    EventLog::parse(&data).with_context(|| format!("parsing event log {}", file.display()))
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.action {
        Action::Show { file, json } => show(&load(&file)?, json),
        Action::Replay { file, json } => {
            let log = load(&file)?;
            let r = eventlog::replay(&log);
            for q in &r.quirks {
                eprintln!("imgctl: quirk {} (PCR {}): {}", q.id, q.pcr, q.detail);
            }
            for (bank, pcr, why) in &r.unreplayable {
                eprintln!("imgctl: PCR {pcr} ({bank}) not replayed: {why}");
            }
            if json {
                outln!(
                    "{}",
                    serde_json::to_string_pretty(&eventlog::PcrValuesJson(&r.values))?
                );
            } else {
                for (bank, pcrs) in &r.values {
                    for (pcr, d) in pcrs {
                        outln!("{bank} {pcr:2} {d}");
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn show(log: &EventLog, json: bool) -> anyhow::Result<ExitCode> {
    if json {
        let events: Vec<serde_json::Value> = log
            .events
            .iter()
            .map(|e| {
                let digests: serde_json::Map<String, serde_json::Value> = e
                    .digests
                    .iter()
                    .map(|(b, d)| (b.to_string(), d.to_hex().into()))
                    .collect();
                serde_json::json!({
                    "index": e.index,
                    "offset": e.offset,
                    "pcr": e.pcr,
                    "type": e.event_type.to_string(),
                    "type_value": e.event_type.0,
                    "digests": digests,
                    "description": describe(e),
                    "data": hex::encode(&e.data),
                })
            })
            .collect();
        let banks: Vec<String> = log.banks().iter().map(ToString::to_string).collect();
        let out = serde_json::json!({
            "format": format!("{:?}", log.format),
            "banks": banks,
            "startup_locality": log.startup_locality(),
            "findings": eventlog::lint::lint(log),
            "events": events,
        });
        outln!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    for f in eventlog::lint::lint(log) {
        eprintln!("WARN: {}", f.message);
    }
    outln!(
        "# {:?} log, banks {}",
        log.format,
        log.banks()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    );
    for e in &log.events {
        outln!(
            "{:3} PCR {:2} {} @{:#x}",
            e.index,
            e.pcr,
            e.event_type,
            e.offset
        );
        for (b, d) in &e.digests {
            outln!("      {b}: {d}");
        }
        let desc = describe(e);
        if !desc.is_empty() {
            outln!("      {desc}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
