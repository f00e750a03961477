//! Structural checks of a firmware log that replay alone does not make: events whose digest
//! must be the hash of their data but is not (tpm2_eventlog warns "Event N's digest does not
//! match its payload"), duplicate and malformed separators (go-eventlog
//! internal/eventparse; Keylime `EvSeperatorTest`; ../shared/reference/tlog-eventlog.md §B3–B4).

use serde::Serialize;

use crate::eventlog::tcg::{Event, EventLog};
use crate::eventlog::types::EventType;

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// `digest-mismatch`, `duplicate-separator` or `separator-data`.
    pub kind: &'static str,
    pub event: usize,
    pub pcr: u32,
    pub message: String,
}

/// The byte strings one of which the event's digest must be the hash of, where the event data
/// determines it: the same event types and rules tpm2-tools' `verify_digests()` uses
/// (EV_S_CRTM_VERSION, EV_SEPARATOR, EV_EFI_VARIABLE_DRIVER_CONFIG, EV_EFI_GPT_EVENT: the
/// data; GRUB's PCR 8 EV_IPL: the text after the first space, without or with its NUL; PCR 12
/// EV_IPL: the data), plus EV_EFI_ACTION (PFP: the hash of the action string).
pub fn payload_candidates(event: &Event) -> Vec<&[u8]> {
    let d = event.data.as_slice();
    match event.event_type {
        EventType::EV_S_CRTM_VERSION
        | EventType::EV_SEPARATOR
        | EventType::EV_EFI_VARIABLE_DRIVER_CONFIG
        | EventType::EV_EFI_GPT_EVENT
        | EventType::EV_EFI_ACTION => vec![d],
        // A passed or addon command line: the data is what was hashed. Not so for the stub's
        // sidecar archives, whose data only names the archive.
        EventType::EV_IPL if event.pcr == 12 && !is_sidecar_archive(event) => vec![d],
        EventType::EV_IPL if event.pcr == 8 => match d.iter().position(|b| *b == b' ') {
            Some(sp) if d.last() == Some(&0) && sp + 1 < d.len() => {
                vec![&d[sp + 1..d.len() - 1], &d[sp + 1..]]
            }
            _ => vec![d],
        },
        _ => Vec::new(),
    }
}

/// An EV_IPL event of systemd-stub for a sidecar cpio archive (credentials, extensions).
fn is_sidecar_archive(event: &Event) -> bool {
    crate::eventlog::describe::utf16_string(&event.data).is_some_and(|s| {
        imgctl_measure::pcr11::SIDECAR_ARCHIVES
            .iter()
            .any(|(name, pcr)| *name == s && *pcr == event.pcr)
    })
}

/// Banks in which `event`'s digest is none of the hashes its data determines.
pub fn digest_mismatches(event: &Event) -> Vec<imgctl_measure::bank::HashAlg> {
    let candidates = payload_candidates(event);
    if candidates.is_empty() {
        return Vec::new();
    }
    event
        .digests
        .iter()
        .filter(|(b, d)| {
            b.is_supported() && !candidates.iter().any(|c| b.hash(c).is_ok_and(|h| &h == d))
        })
        .map(|(b, _)| *b)
        .collect()
}

/// Runs every check over the log.
pub fn lint(log: &EventLog) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut separators: Vec<u32> = Vec::new();
    for e in &log.events {
        let bad = digest_mismatches(e);
        if !bad.is_empty() {
            out.push(Finding {
                kind: "digest-mismatch",
                event: e.index,
                pcr: e.pcr,
                message: format!(
                    "event {}'s {} digest does not match its payload ({})",
                    e.index,
                    e.event_type,
                    bad.iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(",")
                ),
            });
        }
        if e.event_type == EventType::EV_SEPARATOR {
            // In a confidential-computing log (MR-indexed), several PCRs map to one register,
            // so one register legitimately sees several separators.
            if !log.is_cc_log() && separators.contains(&e.pcr) {
                out.push(Finding {
                    kind: "duplicate-separator",
                    event: e.index,
                    pcr: e.pcr,
                    message: format!("duplicate separator in PCR {} at event {}", e.pcr, e.index),
                });
            }
            separators.push(e.pcr);
            // Keylime checks PCRs 0–7; Windows logs separators with other data in PCR 12–14.
            if e.pcr <= 7 && e.data != [0; 4] && e.data != [0xff; 4] {
                out.push(Finding {
                    kind: "separator-data",
                    event: e.index,
                    pcr: e.pcr,
                    message: format!(
                        "separator at event {} carries {} instead of 00000000 or ffffffff",
                        e.index,
                        hex::encode(&e.data)
                    ),
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use imgctl_measure::bank::HashAlg;

    fn utf16(s: &str) -> Vec<u8> {
        s.encode_utf16()
            .chain([0])
            .flat_map(u16::to_le_bytes)
            .collect()
    }

    fn pcr12(data: Vec<u8>, hashed: &[u8]) -> Event {
        Event {
            index: 0,
            offset: 0,
            pcr: 12,
            event_type: EventType::EV_IPL,
            digests: vec![(HashAlg::SHA256, HashAlg::SHA256.hash(hashed).unwrap())],
            data,
        }
    }

    #[test]
    fn pcr12_command_lines_are_bound_to_their_data_and_sidecar_archives_are_not() {
        let cmdline = utf16("console=ttyS0");
        assert!(digest_mismatches(&pcr12(cmdline.clone(), &cmdline)).is_empty());
        assert_eq!(
            digest_mismatches(&pcr12(cmdline, b"other")),
            [HashAlg::SHA256]
        );
        // The stub's credential and confext archives: data names them, digest hashes the cpio.
        for name in ["Credentials initrd", "Configuration extension initrd"] {
            assert!(digest_mismatches(&pcr12(utf16(name), b"070701...")).is_empty());
        }
        // A sysext archive's name is not one of PCR 12's.
        assert_eq!(
            digest_mismatches(&pcr12(utf16("System extension initrd"), b"cpio")),
            [HashAlg::SHA256]
        );
    }
}
