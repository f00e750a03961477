//! Replay of a firmware event log to PCR values, in every bank the log carries.
//!
//! Rules (../shared/reference/tlog-eventlog.md §B1, §B3; go-attestation attest/eventlog.go,
//! tpm2-tools lib/tpm2_eventlog.c):
//! - `PCR := H(PCR || digest)` for every event but EV_NO_ACTION, which is never extended.
//! - PCR 0 starts as `00…00‖locality` when a StartupLocality EV_NO_ACTION is present, or
//!   `00…04` when an EV_EFI_HCRTM_EVENT is (which then overrides StartupLocality).
//! - PCRs 17–22 (DRTM) reset to all-ones; a PCR with no event keeps its reset value.
//! - A bank an event has no digest for cannot be replayed for that PCR (reported, not guessed).
//! - Known firmware quirks are applied only when they make the replay match the values it is
//!   checked against, and are named when they apply: the missing ExitBootServices EV_EFI_ACTION
//!   events in PCR 5 (go-attestation attest/eventlog_workarounds.go).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::eventlog::tcg::{Event, EventLog};
use crate::eventlog::types::EventType;
use imgctl_measure::bank::{Digest, HashAlg, Pcr};

/// PCR values per bank and index.
pub type PcrValues = BTreeMap<HashAlg, BTreeMap<u32, Digest>>;

/// A firmware quirk the replay took into account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Quirk {
    /// A stable identifier, e.g. `startup-locality`.
    pub id: &'static str,
    pub pcr: u32,
    pub detail: String,
}

/// The result of a replay.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Replay {
    /// Replayed values of every PCR that has at least one extending event, per bank.
    pub values: PcrValues,
    pub quirks: Vec<Quirk>,
    /// (bank, PCR) pairs that could not be replayed, with why.
    pub unreplayable: Vec<(HashAlg, u32, String)>,
    /// Banks of the log that we cannot compute (e.g. SM3).
    pub unsupported_banks: Vec<HashAlg>,
}

impl Replay {
    /// The value of `pcr` in `bank`: the replayed one, or the reset value when no event
    /// extended it. `None` when the bank is unsupported or the PCR could not be replayed.
    pub fn value(&self, bank: HashAlg, pcr: u32) -> Option<Digest> {
        if self
            .unreplayable
            .iter()
            .any(|(b, p, _)| *b == bank && *p == pcr)
        {
            return None;
        }
        match self.values.get(&bank).and_then(|m| m.get(&pcr)) {
            Some(d) => Some(d.clone()),
            None => reset_value(bank, pcr),
        }
    }
}

/// Most values a PCR values file may hold: every PCR of the four banks.
const MAX_PCR_VALUES: usize = 4 * 24;

/// What is wrong with a PCR values file.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PcrValuesError {
    #[error("not {{\"<bank>\": {{\"<pcr>\": \"<hex>\"}}}}: {0}")]
    Shape(String),
    #[error(transparent)]
    Bank(#[from] imgctl_measure::bank::UnknownBankName),
    #[error("{bank}: {source}")]
    Index {
        bank: HashAlg,
        source: imgctl_measure::bank::InvalidPcrIndex,
    },
    #[error("{bank} PCR {pcr}: {value:?} is not hex")]
    Hex {
        bank: HashAlg,
        pcr: u32,
        value: String,
    },
    #[error("{bank} PCR {pcr}: {len} bytes, not a {bank} digest")]
    Length { bank: HashAlg, pcr: u32, len: usize },
    #[error("more than {MAX_PCR_VALUES} PCR values")]
    TooMany,
}

/// PCR values as JSON, `{"<bank>": {"<pcr>": "<hex>"}}` with lower-case hex and the PCRs in
/// numeric order: the one form `eventlog replay --json`, `vm --capture`'s pcrs.json and
/// `audit --pcrs` share. Serialise it directly (a `serde_json::Value` would sort "10" before "2").
#[derive(Debug, Clone, Copy)]
pub struct PcrValuesJson<'a>(pub &'a PcrValues);

impl Serialize for PcrValuesJson<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        struct Bank<'a>(&'a BTreeMap<u32, Digest>);
        impl Serialize for Bank<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_map(self.0.iter().map(|(p, d)| (p.to_string(), d.to_hex())))
            }
        }
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (bank, pcrs) in self.0 {
            m.serialize_entry(&bank.to_string(), &Bank(pcrs))?;
        }
        m.end()
    }
}

/// Reads the form [`PcrValuesJson`] writes, strictly: known banks, PCRs 0–23, digests of
/// the bank's size; anything else is an error naming the bank and PCR.
pub fn pcr_values_from_json(data: &[u8]) -> Result<PcrValues, PcrValuesError> {
    let raw: BTreeMap<String, BTreeMap<String, String>> =
        serde_json::from_slice(data).map_err(|e| PcrValuesError::Shape(e.to_string()))?;
    if raw.values().map(BTreeMap::len).sum::<usize>() > MAX_PCR_VALUES {
        return Err(PcrValuesError::TooMany);
    }
    let mut out = PcrValues::new();
    for (name, pcrs) in raw {
        let bank: HashAlg = name.parse()?;
        for (index, value) in pcrs {
            let pcr = index
                .parse::<imgctl_measure::bank::PcrIndex>()
                .map_err(|source| PcrValuesError::Index { bank, source })?
                .get();
            let bytes = hex::decode(&value).map_err(|_| PcrValuesError::Hex {
                bank,
                pcr,
                value: value.clone(),
            })?;
            if Some(bytes.len()) != bank.digest_size() {
                return Err(PcrValuesError::Length {
                    bank,
                    pcr,
                    len: bytes.len(),
                });
            }
            out.entry(bank).or_default().insert(pcr, Digest(bytes));
        }
    }
    Ok(out)
}

/// The TPM reset value of a PCR: all-ones for the DRTM PCRs 17–22, else zeros.
pub fn reset_value(bank: HashAlg, pcr: u32) -> Option<Digest> {
    let n = bank.digest_size()?;
    Some(Digest(vec![
        if (17..=22).contains(&pcr) { 0xff } else { 0 };
        n
    ]))
}

/// The initial value of PCR `pcr` for this log (PCR 0 depends on the locality / H-CRTM).
fn initial_value(log_events: &[Event], bank: HashAlg, pcr: u32) -> Option<(Digest, Option<Quirk>)> {
    let mut value = reset_value(bank, pcr)?;
    if pcr != 0 {
        return Some((value, None));
    }
    let hcrtm = log_events
        .iter()
        .any(|e| e.pcr == 0 && e.event_type == EventType::EV_EFI_HCRTM_EVENT);
    let (last, quirk) = if hcrtm {
        (
            4,
            Some(Quirk {
                id: "h-crtm",
                pcr: 0,
                detail: "EV_EFI_HCRTM_EVENT present: PCR 0 starts as 00…04".into(),
            }),
        )
    } else if let Some(loc) = log_events.iter().find_map(Event::startup_locality) {
        (
            loc,
            Some(Quirk {
                id: "startup-locality",
                pcr: 0,
                detail: format!("StartupLocality {loc}: PCR 0 starts as 00…{loc:02x}"),
            }),
        )
    } else {
        (0, None)
    };
    if let Some(b) = value.0.last_mut() {
        *b = last;
    }
    Some((value, quirk))
}

/// Replays the log's events in every bank it carries.
pub fn replay(log: &EventLog) -> Replay {
    replay_events(&log.banks(), &log.events)
}

/// Replays `events` in `banks`.
pub fn replay_events(banks: &[HashAlg], events: &[Event]) -> Replay {
    let mut out = Replay::default();
    for &bank in banks {
        if !bank.is_supported() {
            out.unsupported_banks.push(bank);
            continue;
        }
        let mut pcrs: BTreeMap<u32, Pcr> = BTreeMap::new();
        let mut broken: BTreeMap<u32, String> = BTreeMap::new();
        for e in events
            .iter()
            .filter(|e| e.event_type != EventType::EV_NO_ACTION)
        {
            if broken.contains_key(&e.pcr) {
                continue;
            }
            let Some(d) = e.digest(bank) else {
                broken.insert(e.pcr, format!("event {} has no {bank} digest", e.index));
                pcrs.remove(&e.pcr);
                continue;
            };
            let pcr = match pcrs.entry(e.pcr) {
                std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::btree_map::Entry::Vacant(v) => {
                    let Some((init, quirk)) = initial_value(events, bank, e.pcr) else {
                        continue;
                    };
                    if let Some(q) = quirk {
                        if !out.quirks.contains(&q) {
                            out.quirks.push(q);
                        }
                    }
                    match Pcr::with_value(bank, init) {
                        Ok(p) => v.insert(p),
                        Err(_) => continue,
                    }
                }
            };
            pcr.extend(d);
        }
        out.values.insert(
            bank,
            pcrs.into_iter()
                .map(|(i, p)| (i, p.value().clone()))
                .collect(),
        );
        out.unreplayable
            .extend(broken.into_iter().map(|(p, why)| (bank, p, why)));
    }
    out
}

/// Strings of the EV_EFI_ACTION events some firmware fails to log in PCR 5.
pub const EBS_INVOCATION: &str = "Exit Boot Services Invocation";
pub const EBS_SUCCESS: &str = "Exit Boot Services Returned with Success";
pub const EBS_FAILURE: &str = "Exit Boot Services Returned with Failure";

/// go-attestation's workarounds, tried in this order on PCR 5.
const EBS_WORKAROUNDS: &[(&str, &[&str])] = &[
    ("EBS Invocation + Success", &[EBS_INVOCATION, EBS_SUCCESS]),
    ("EBS Invocation + Failure", &[EBS_INVOCATION, EBS_FAILURE]),
    (
        "EBS Invocation + Failure + Success",
        &[EBS_INVOCATION, EBS_FAILURE, EBS_SUCCESS],
    ),
];

/// Replays the log and, where a PCR disagrees with `expected`, tries the known firmware
/// quirks; a quirk is kept (and named) only if it makes that PCR match in every bank given.
pub fn replay_against(log: &EventLog, expected: &PcrValues) -> Replay {
    let mut out = replay(log);
    let pcr5_differs = expected.iter().any(|(bank, pcrs)| {
        pcrs.get(&5)
            .is_some_and(|want| out.value(*bank, 5).as_ref() != Some(want))
    });
    if !pcr5_differs {
        return out;
    }
    for (id, actions) in EBS_WORKAROUNDS {
        let mut events = log.events.clone();
        for a in *actions {
            events.push(synthetic_action(&log.banks(), events.len(), 5, a));
        }
        let alt = replay_events(&log.banks(), &events);
        let matches = expected.iter().all(|(bank, pcrs)| {
            pcrs.get(&5)
                .is_none_or(|want| alt.value(*bank, 5).as_ref() == Some(want))
        });
        if matches {
            for (bank, pcrs) in alt.values {
                if let (Some(v), Some(target)) = (pcrs.get(&5), out.values.get_mut(&bank)) {
                    target.insert(5, v.clone());
                }
            }
            out.quirks.push(Quirk {
                id: "ebs-events-missing",
                pcr: 5,
                detail: format!(
                    "firmware omitted the ExitBootServices EV_EFI_ACTION events; replayed with \
                     go-attestation's workaround \"{id}\""
                ),
            });
            break;
        }
    }
    out
}

fn synthetic_action(banks: &[HashAlg], index: usize, pcr: u32, text: &str) -> Event {
    Event {
        index,
        offset: usize::MAX,
        pcr,
        event_type: EventType::EV_EFI_ACTION,
        digests: banks
            .iter()
            .filter_map(|b| b.hash(text.as_bytes()).ok().map(|d| (*b, d)))
            .collect(),
        data: text.as_bytes().to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn pcr_values_json_is_strict_and_names_the_bank_and_pcr() {
        let ok = br#"{"sha1": {"0": "0000000000000000000000000000000000000000"}}"#;
        assert_eq!(pcr_values_from_json(ok).unwrap()[&HashAlg::SHA1].len(), 1);
        for (bad, want) in [
            (&br#"{"sha-256": {}}"#[..], "unknown PCR bank \"sha-256\""),
            (br#"{"sha1": {"24": "00"}}"#, "PCR index \"24\""),
            (br#"{"sha1": {"7": "zz"}}"#, "sha1 PCR 7: \"zz\" is not hex"),
            (br#"{"sha256": {"11": "0000"}}"#, "sha256 PCR 11: 2 bytes"),
            (br#"{"sha1": {"0": 5}}"#, "not {\"<bank>\""),
            (b"[]", "not {\"<bank>\""),
        ] {
            let e = pcr_values_from_json(bad).unwrap_err().to_string();
            assert!(e.contains(want), "{e} lacks {want}");
        }
    }

    #[test]
    fn pcr_values_json_lists_pcrs_in_numeric_order() {
        let mut v = PcrValues::new();
        for pcr in [10, 2, 0] {
            v.entry(HashAlg::SHA1)
                .or_default()
                .insert(pcr, Digest(vec![pcr as u8; 20]));
        }
        let text = serde_json::to_string(&PcrValuesJson(&v)).unwrap();
        let (a, b, c) = (
            text.find("\"0\"").unwrap(),
            text.find("\"2\"").unwrap(),
            text.find("\"10\"").unwrap(),
        );
        assert!(a < b && b < c, "{text}");
    }

    proptest! {
        #[test]
        fn pcr_values_json_round_trips(
            entries in proptest::collection::vec((0usize..4, 0u32..24, any::<u8>()), 0..40)
        ) {
            let mut v = PcrValues::new();
            for (b, pcr, fill) in entries {
                let bank = HashAlg::ALL[b];
                let n = bank.digest_size().unwrap();
                v.entry(bank).or_default().insert(pcr, Digest(vec![fill; n]));
            }
            let text = serde_json::to_vec(&PcrValuesJson(&v)).unwrap();
            prop_assert_eq!(pcr_values_from_json(&text).unwrap(), v);
        }
    }
}
