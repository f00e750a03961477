//! The break-glass auditor: lists every break-glass record of systemd's userspace log (and every
//! encrypted volume opened by other than a hardware-bound token, [`crate::keyslot`]) and checks
//! that the log replays to the PCR values the TPM reports, so a removed or altered record is
//! itself reported (docs/break-glass.md).
//!
//! Verdict order: an inconsistent log (a record whose digest is not the hash of its string, a
//! replay that does not give the reported PCRs, a log left dirty by a writer) is
//! [`AuditVerdict::Inconsistent`] whatever the records say, because a tampered log's claims,
//! break-glass ones included, cannot be believed; only a consistent log's break-glass records
//! are [`AuditVerdict::BreakGlass`].
//!
//! Pure: the caller reads the files and the log's mode bits.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::eventlog::replay::{reset_value, PcrValues};
use crate::eventlog::UserspaceLog;

/// The auditor's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuditVerdict {
    /// Consistent, no break-glass record (exit 0).
    Clean,
    /// Consistent, with break-glass records (exit 1).
    BreakGlass,
    /// Altered, missing or half-written records (exit 4).
    Inconsistent,
}

/// What the auditor found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditReport {
    pub break_glass: Vec<serde_json::Value>,
    pub consistent: bool,
    pub problems: Vec<String>,
    pub checked: Vec<String>,
    pub verdict: AuditVerdict,
}

/// Audits `log`. `firmware`: the firmware log's replay (the start of PCRs it also covers);
/// `reported`: the TPM's PCR values (without them a removed record cannot be detected, which is
/// noted, not counted as inconsistent); `dirty`: the log's sticky bit was set.
pub fn audit(
    log: &UserspaceLog,
    firmware: &PcrValues,
    reported: Option<&PcrValues>,
    dirty: bool,
) -> AuditReport {
    let mut events = Vec::new();
    let mut problems = Vec::new();
    let mut notes = Vec::new();
    for r in &log.records {
        if let Some(bg) = crate::breakglass::from_record(r) {
            events.push(match bg {
                Ok(b) => serde_json::json!({"record": r.index, "pcr": r.pcr, "actor": b.actor,
                    "kind": b.kind, "reason": b.reason, "time": b.time,
                    "bootId": r.boot_id, "timestamp": r.timestamp}),
                Err(e) => serde_json::json!({"record": r.index, "pcr": r.pcr, "error": e}),
            });
        }
        // An encrypted volume opened by anything but a hardware-bound token (a recovery key, a
        // passphrase, an unknown mechanism) is break-glass; a malformed claim is reported too.
        match crate::keyslot::from_record(r) {
            Some(Ok(k)) if k.is_break_glass() => events.push(serde_json::json!({
                "record": r.index, "pcr": r.pcr, "kind": "volume-unlock", "volume": k.volume,
                "uuid": k.uuid, "mechanism": k.mechanism, "slot": k.slot,
                "bootId": r.boot_id, "timestamp": r.timestamp})),
            Some(Err(e)) => {
                events.push(serde_json::json!({"record": r.index, "pcr": r.pcr, "error": e}))
            }
            Some(Ok(_)) | None => {}
        }
        let bad = r.digest_mismatches();
        if !bad.is_empty() {
            problems.push(format!(
                "record {} ({}): logged digest is not the hash of its string in {} — altered after it was written",
                r.index,
                r.string.as_deref().unwrap_or(""),
                bad.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
            ));
        }
    }
    if dirty {
        problems.push("the log's sticky bit is set: a writer died between extending and appending, the log is incomplete".into());
    }
    let replayed = log.replay_onto(firmware);
    let mut checked = Vec::new();
    match reported {
        Some(actual) => {
            let pcrs_in_log: BTreeSet<u32> = log
                .records
                .iter()
                .filter_map(|r| r.pcr)
                .chain([crate::breakglass::PCR])
                .collect();
            for (bank, m) in actual {
                for pcr in &pcrs_in_log {
                    let Some(want) = m.get(pcr) else { continue };
                    let got = replayed
                        .get(bank)
                        .and_then(|x| x.get(pcr))
                        .cloned()
                        .or_else(|| reset_value(*bank, *pcr));
                    checked.push(format!("PCR {pcr} {bank}"));
                    if got.as_ref() != Some(want) {
                        problems.push(format!(
                            "PCR {pcr} ({bank}) is {want} but the log replays to {} — a record is missing or altered",
                            got.map_or("nothing".into(), |d| d.to_hex())
                        ));
                    }
                }
            }
        }
        None => notes.push("no --pcrs given: a removed record cannot be detected".to_owned()),
    }
    let consistent = problems.is_empty();
    let verdict = if !consistent {
        AuditVerdict::Inconsistent
    } else if !events.is_empty() {
        AuditVerdict::BreakGlass
    } else {
        AuditVerdict::Clean
    };
    problems.extend(notes);
    AuditReport {
        break_glass: events,
        consistent,
        problems,
        checked,
        verdict,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::userspace_record::{BreakGlass, Origin};
    use imgctl_measure::bank::HashAlg;

    fn log(actor: &str) -> Vec<u8> {
        let o = Origin {
            boot_id: "0".into(),
            timestamp_usec: 1,
        };
        BreakGlass::new(actor, "debug-shell", "why", 0)
            .unwrap()
            .record(15, &[HashAlg::SHA256], &o)
            .unwrap()
            .to_json_seq()
    }

    #[test]
    fn a_recovery_key_unlock_is_break_glass_and_a_tpm_unlock_is_not() {
        let o = Origin {
            boot_id: "0".into(),
            timestamp_usec: 1,
        };
        let rec = |mechanism: &str, slot: u32| {
            crate::eventlog::userspace::UserspaceRecord::new(
                15,
                &[HashAlg::SHA256],
                format!("cryptsetup-keyslot:var:08a4b5bd-a0d3-4b2a-931b-efd7c5c09f1b:{mechanism}:{slot}"),
                "phase",
                &o,
            )
            .unwrap()
            .to_json_seq()
        };
        let tpm = UserspaceLog::parse(&rec("tpm2", 0)).unwrap();
        let r = audit(&tpm, &PcrValues::new(), Some(&tpm.replay()), false);
        assert_eq!(r.verdict, AuditVerdict::Clean, "{r:?}");
        let recovery = UserspaceLog::parse(&rec("recovery", 1)).unwrap();
        let r = audit(
            &recovery,
            &PcrValues::new(),
            Some(&recovery.replay()),
            false,
        );
        assert_eq!(r.verdict, AuditVerdict::BreakGlass, "{r:?}");
        assert_eq!(r.break_glass[0]["kind"], "volume-unlock");
        assert_eq!(r.break_glass[0]["mechanism"], "recovery");
        assert_eq!(r.break_glass[0]["volume"], "var");
        // The mechanism rewritten in place: the digest gives it away.
        let text = String::from_utf8(rec("tpm2", 0))
            .unwrap()
            .replace(":tpm2:", ":tpm3:");
        let edited = UserspaceLog::parse(text.as_bytes()).unwrap();
        let r = audit(&edited, &PcrValues::new(), None, false);
        assert_eq!(r.verdict, AuditVerdict::Inconsistent, "{r:?}");
    }

    #[test]
    fn an_altered_break_glass_record_is_inconsistent_not_break_glass() {
        let clean = UserspaceLog::parse(&log("alice")).unwrap();
        let r = audit(&clean, &PcrValues::new(), None, false);
        assert_eq!(r.verdict, AuditVerdict::BreakGlass);
        // The actor edited in place, digests kept.
        let text = String::from_utf8(log("alice"))
            .unwrap()
            .replace("alice", "bobby");
        let edited = UserspaceLog::parse(text.as_bytes()).unwrap();
        let r = audit(&edited, &PcrValues::new(), None, false);
        assert_eq!(r.verdict, AuditVerdict::Inconsistent, "{r:?}");
        // The actor changed and digests recomputed: the replay gives it away.
        let reported = clean.replay();
        let forged = UserspaceLog::parse(&log("bobby")).unwrap();
        let r = audit(&forged, &PcrValues::new(), Some(&reported), false);
        assert_eq!(r.verdict, AuditVerdict::Inconsistent, "{r:?}");
        let r = audit(&clean, &PcrValues::new(), Some(&reported), true);
        assert_eq!(r.verdict, AuditVerdict::Inconsistent);
    }
}
