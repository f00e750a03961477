//! The binary TCG PC Client firmware event log (PFP §10.2): legacy SHA-1 `TCG_PCR_EVENT` records,
//! or, after a `Spec ID Event03` header, crypto-agile `TCG_PCR_EVENT2` records.
//!
//! Layouts (little-endian; ../shared/reference/tlog-eventlog.md §B1):
//! - `TCG_PCR_EVENT`: `u32 pcrIndex | u32 eventType | u8 digest[20] | u32 eventDataSize | event[]`.
//! - `TCG_PCR_EVENT2`: `u32 PCRIndex | u32 EventType | u32 DigestCount | {u16 AlgorithmId |
//!   digest[size]}×DigestCount | u32 EventSize | Event[]`, the digest sizes taken only from the
//!   Spec ID event's algorithm table (an algorithm absent from it is an error, as in
//!   go-attestation).
//!
//! Memory is bounded by the input: every length is checked against the bytes that remain
//! before anything is sliced, and nothing is allocated ahead of the bytes it describes.

use crate::eventlog::types::EventType;
use crate::ParseError;
use imgctl_measure::bank::{Digest, HashAlg};
use imgctl_measure::reader::Reader;

/// `"Spec ID Event03\0"`.
pub const SPEC_ID_SIGNATURE: &[u8; 16] = b"Spec ID Event03\0";
/// The highest PCR index a PC Client TPM has (PCRs 0–23).
pub const MAX_PCR: u32 = 23;
/// `"StartupLocality\0"`, the prefix of the PCR 0 EV_NO_ACTION that sets PCR 0's initial value.
pub const STARTUP_LOCALITY_SIGNATURE: &[u8; 16] = b"StartupLocality\0";

/// Which record format the log uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// SHA-1 only `TCG_PCR_EVENT` records (no Spec ID Event03 header).
    Legacy,
    /// `TCG_PCR_EVENT2` records after a Spec ID Event03 header.
    CryptoAgile,
}

/// The `TCG_EfiSpecIDEvent` header of a crypto-agile log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecIdEvent {
    pub platform_class: u32,
    pub spec_version_minor: u8,
    pub spec_version_major: u8,
    pub spec_errata: u8,
    pub uintn_size: u8,
    /// `(algorithmId, digestSize)` in table order.
    pub algorithms: Vec<(HashAlg, u16)>,
    pub vendor_info: Vec<u8>,
}

impl SpecIdEvent {
    fn parse(r: &mut Reader<'_>) -> Result<Self, ParseError> {
        let sig = r.take(16, "SpecIdEvent.signature")?;
        if sig != SPEC_ID_SIGNATURE {
            return Err(ParseError::new(
                r.offset() - 16,
                "SpecIdEvent.signature",
                "not \"Spec ID Event03\"",
            ));
        }
        let platform_class = r.u32_le("SpecIdEvent.platformClass")?;
        let spec_version_minor = r.u8("SpecIdEvent.specVersionMinor")?;
        let spec_version_major = r.u8("SpecIdEvent.specVersionMajor")?;
        let spec_errata = r.u8("SpecIdEvent.specErrata")?;
        let uintn_size = r.u8("SpecIdEvent.uintnSize")?;
        let at = r.offset();
        let n = r.u32_le("SpecIdEvent.numberOfAlgorithms")?;
        // Each entry takes 4 bytes: refuse counts the data cannot hold before allocating.
        if (n as usize).saturating_mul(4) > r.remaining() {
            return Err(ParseError::new(
                at,
                "SpecIdEvent.numberOfAlgorithms",
                format!("{n} algorithms do not fit in {} bytes", r.remaining()),
            ));
        }
        let mut algorithms = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let at = r.offset();
            let alg = HashAlg(r.u16_le("SpecIdEvent.algorithmId")?);
            let size = r.u16_le("SpecIdEvent.digestSize")?;
            if let Some(expected) = alg.digest_size() {
                if expected != usize::from(size) {
                    return Err(ParseError::new(
                        at,
                        "SpecIdEvent.digestSize",
                        format!("{alg} digest size {size}, expected {expected}"),
                    ));
                }
            }
            if algorithms.iter().any(|(a, _)| *a == alg) {
                return Err(ParseError::new(
                    at,
                    "SpecIdEvent.algorithmId",
                    format!("{alg} listed twice"),
                ));
            }
            algorithms.push((alg, size));
        }
        let vsize = r.u8("SpecIdEvent.vendorInfoSize")?;
        let vendor_info = r
            .take(usize::from(vsize), "SpecIdEvent.vendorInfo")?
            .to_vec();
        r.expect_end("SpecIdEvent (after vendorInfo)")?;
        Ok(SpecIdEvent {
            platform_class,
            spec_version_minor,
            spec_version_major,
            spec_errata,
            uintn_size,
            algorithms,
            vendor_info,
        })
    }

    fn digest_size(&self, alg: HashAlg) -> Option<usize> {
        self.algorithms
            .iter()
            .find(|(a, _)| *a == alg)
            .map(|(_, s)| usize::from(*s))
    }
}

/// One measurement record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Position among the log's events, 0-based (the Spec ID header is not an event).
    pub index: usize,
    /// Byte offset of the record in the log.
    pub offset: usize,
    pub pcr: u32,
    pub event_type: EventType,
    /// One digest per bank, in log order.
    pub digests: Vec<(HashAlg, Digest)>,
    /// The event data (`Event[]`).
    pub data: Vec<u8>,
}

impl Event {
    /// This event's digest in `bank`.
    pub fn digest(&self, bank: HashAlg) -> Option<&Digest> {
        self.digests
            .iter()
            .find(|(b, _)| *b == bank)
            .map(|(_, d)| d)
    }

    /// `Some(locality)` if this is a StartupLocality EV_NO_ACTION event (PCR 0, 17 bytes).
    pub fn startup_locality(&self) -> Option<u8> {
        if self.event_type != EventType::EV_NO_ACTION || self.pcr != 0 || self.data.len() != 17 {
            return None;
        }
        let (sig, loc) = self.data.split_at(16);
        (sig == STARTUP_LOCALITY_SIGNATURE).then(|| loc.first().copied())?
    }
}

/// A parsed firmware event log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventLog {
    pub format: LogFormat,
    /// The crypto-agile header, if any.
    pub spec_id: Option<SpecIdEvent>,
    /// The PCR index of the header record: 0 in TPM logs; a confidential-computing event log
    /// (TDX CCEL) carries a measurement-register index there.
    pub header_pcr: u32,
    pub events: Vec<Event>,
}

impl EventLog {
    /// Parses a whole log. Fails on the first malformed record, naming its offset.
    pub fn parse(data: &[u8]) -> Result<Self, ParseError> {
        let mut r = Reader::new(data);
        if r.is_empty() {
            return Err(ParseError::new(0, "event log", "empty input"));
        }
        let first = parse_legacy(&mut r, 0)?;
        let header_pcr = first.pcr;
        let spec_id = if first.event_type == EventType::EV_NO_ACTION
            && first.data.starts_with(SPEC_ID_SIGNATURE)
        {
            let base = first.offset + 32;
            Some(SpecIdEvent::parse(&mut Reader::at(&first.data, base))?)
        } else {
            None
        };
        let mut events = Vec::new();
        match &spec_id {
            None => {
                events.push(first);
                while !r.is_empty() {
                    events.push(parse_legacy(&mut r, events.len())?);
                }
            }
            Some(spec) => {
                while !r.is_empty() {
                    events.push(parse_agile(&mut r, spec, events.len())?);
                }
            }
        }
        Ok(EventLog {
            format: if spec_id.is_some() {
                LogFormat::CryptoAgile
            } else {
                LogFormat::Legacy
            },
            spec_id,
            header_pcr,
            events,
        })
    }

    /// The banks this log carries digests for, in header order (legacy logs: SHA-1).
    pub fn banks(&self) -> Vec<HashAlg> {
        match &self.spec_id {
            Some(s) => s.algorithms.iter().map(|(a, _)| *a).collect(),
            None => vec![HashAlg::SHA1],
        }
    }

    /// Whether this is a confidential-computing event log (header not in PCR 0).
    pub fn is_cc_log(&self) -> bool {
        self.spec_id.is_some() && self.header_pcr != 0
    }

    /// The locality of the StartupLocality event, if the log has one.
    pub fn startup_locality(&self) -> Option<u8> {
        self.events.iter().find_map(Event::startup_locality)
    }
}

fn parse_legacy(r: &mut Reader<'_>, index: usize) -> Result<Event, ParseError> {
    let offset = r.offset();
    let pcr = r.u32_le("TCG_PCR_EVENT.pcrIndex")?;
    let event_type = EventType(r.u32_le("TCG_PCR_EVENT.eventType")?);
    let digest = Digest(r.take(20, "TCG_PCR_EVENT.digest")?.to_vec());
    let size = r.u32_le("TCG_PCR_EVENT.eventDataSize")?;
    let data = take_event_data(r, size, "TCG_PCR_EVENT.event", index)?;
    checked(Event {
        index,
        offset,
        pcr,
        event_type,
        digests: vec![(HashAlg::SHA1, digest)],
        data,
    })
}

/// Rejects records no firmware writes: a PCR index outside 0–23 on an event that extends
/// (it would be replayed into a PCR that does not exist; EV_NO_ACTION events are never extended
/// and real logs carry them in PCR 0xffffffff, e.g. go-attestation's option_rom_eventlog), and an all-zero record (event type 0, zero
/// digests, no data), which is zero padding or an empty buffer, not a measurement: 64 KiB of
/// zeros is not a 2,048-event log.
fn checked(e: Event) -> Result<Event, ParseError> {
    if e.pcr > MAX_PCR && e.event_type != EventType::EV_NO_ACTION {
        return Err(ParseError::new(
            e.offset,
            "PCRIndex",
            format!(
                "event {}: PCR index {:#x} is outside 0–{MAX_PCR}",
                e.index, e.pcr
            ),
        ));
    }
    if e.event_type == EventType::EV_PREBOOT_CERT
        && e.data.is_empty()
        && e.digests.iter().all(|(_, d)| d.0.iter().all(|b| *b == 0))
    {
        return Err(ParseError::new(
            e.offset,
            "event record",
            format!(
                "event {}: an all-zero record (type 0, zero digest, no data) is padding, not an event",
                e.index
            ),
        ));
    }
    Ok(e)
}

fn parse_agile(r: &mut Reader<'_>, spec: &SpecIdEvent, index: usize) -> Result<Event, ParseError> {
    let offset = r.offset();
    let pcr = r.u32_le("TCG_PCR_EVENT2.PCRIndex")?;
    let event_type = EventType(r.u32_le("TCG_PCR_EVENT2.EventType")?);
    let at = r.offset();
    let count = r.u32_le("TCG_PCR_EVENT2.DigestCount")?;
    if count as usize > spec.algorithms.len() {
        return Err(ParseError::new(
            at,
            "TCG_PCR_EVENT2.DigestCount",
            format!(
                "event {index}: {count} digests, but the Spec ID event lists {} algorithms",
                spec.algorithms.len()
            ),
        ));
    }
    let mut digests = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let at = r.offset();
        let alg = HashAlg(r.u16_le("TCG_PCR_EVENT2.AlgorithmId")?);
        let size = spec.digest_size(alg).ok_or_else(|| {
            ParseError::new(
                at,
                "TCG_PCR_EVENT2.AlgorithmId",
                format!("event {index}: algorithm {alg} is not in the Spec ID event"),
            )
        })?;
        if digests.iter().any(|(a, _)| *a == alg) {
            return Err(ParseError::new(
                at,
                "TCG_PCR_EVENT2.AlgorithmId",
                format!("event {index}: two {alg} digests"),
            ));
        }
        digests.push((alg, Digest(r.take(size, "TCG_PCR_EVENT2.Digest")?.to_vec())));
    }
    let size = r.u32_le("TCG_PCR_EVENT2.EventSize")?;
    let data = take_event_data(r, size, "TCG_PCR_EVENT2.Event", index)?;
    checked(Event {
        index,
        offset,
        pcr,
        event_type,
        digests,
        data,
    })
}

fn take_event_data(
    r: &mut Reader<'_>,
    size: u32,
    what: &'static str,
    index: usize,
) -> Result<Vec<u8>, ParseError> {
    let size = size as usize;
    if size > r.remaining() {
        return Err(ParseError::new(
            r.offset(),
            what,
            format!(
                "event {index}: event size {size} exceeds the {} bytes left in the log",
                r.remaining()
            ),
        ));
    }
    Ok(r.take(size, what)?.to_vec())
}

/// Encodes an event as a `TCG_PCR_EVENT2` record (for tests and tools building logs).
pub fn encode_agile(
    pcr: u32,
    event_type: EventType,
    digests: &[(HashAlg, Digest)],
    data: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&pcr.to_le_bytes());
    out.extend_from_slice(&event_type.0.to_le_bytes());
    out.extend_from_slice(&(digests.len() as u32).to_le_bytes());
    for (alg, d) in digests {
        out.extend_from_slice(&alg.0.to_le_bytes());
        out.extend_from_slice(d.as_bytes());
    }
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(data);
    out
}

/// Encodes a crypto-agile log header (a legacy EV_NO_ACTION carrying a Spec ID Event03).
pub fn encode_spec_id_header(banks: &[HashAlg]) -> Vec<u8> {
    let mut spec = Vec::new();
    spec.extend_from_slice(SPEC_ID_SIGNATURE);
    spec.extend_from_slice(&0u32.to_le_bytes());
    spec.extend_from_slice(&[0, 2, 0, 2]);
    spec.extend_from_slice(&(banks.len() as u32).to_le_bytes());
    for b in banks {
        spec.extend_from_slice(&b.0.to_le_bytes());
        spec.extend_from_slice(&(b.digest_size().unwrap_or(0) as u16).to_le_bytes());
    }
    spec.push(0);
    let mut out = Vec::new();
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&EventType::EV_NO_ACTION.0.to_le_bytes());
    out.extend_from_slice(&[0u8; 20]);
    out.extend_from_slice(&(spec.len() as u32).to_le_bytes());
    out.extend_from_slice(&spec);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_event_size_is_refused_with_offset() {
        let mut log = encode_spec_id_header(&[HashAlg::SHA256]);
        let start = log.len();
        let mut ev = encode_agile(
            0,
            EventType::EV_POST_CODE,
            &[(HashAlg::SHA256, Digest(vec![0; 32]))],
            b"",
        );
        let n = ev.len();
        ev[n - 4..].copy_from_slice(&u32::MAX.to_le_bytes());
        log.extend_from_slice(&ev);
        let err = EventLog::parse(&log).unwrap_err();
        assert_eq!(err.offset, start + n);
        assert!(err.message.contains("exceeds"), "{err}");
    }

    #[test]
    fn unknown_algorithm_in_an_event_is_an_error() {
        let mut log = encode_spec_id_header(&[HashAlg::SHA256]);
        log.extend(encode_agile(
            0,
            EventType::EV_POST_CODE,
            &[(HashAlg::SHA1, Digest(vec![0; 20]))],
            b"",
        ));
        let err = EventLog::parse(&log).unwrap_err();
        assert!(err.message.contains("not in the Spec ID"), "{err}");
    }

    #[test]
    fn round_trip_of_an_encoded_log() {
        let mut log = encode_spec_id_header(&[HashAlg::SHA1, HashAlg::SHA256]);
        let d = [
            (HashAlg::SHA1, Digest(vec![1; 20])),
            (HashAlg::SHA256, Digest(vec![2; 32])),
        ];
        log.extend(encode_agile(4, EventType::EV_SEPARATOR, &d, &[0; 4]));
        let parsed = EventLog::parse(&log).unwrap();
        assert_eq!(parsed.format, LogFormat::CryptoAgile);
        assert_eq!(parsed.banks(), vec![HashAlg::SHA1, HashAlg::SHA256]);
        assert_eq!(parsed.events.len(), 1);
        assert_eq!(parsed.events[0].digests, d.to_vec());
        assert_eq!(
            parsed.events[0].offset,
            log.len() - 4 - 4 - 4 - 4 - 2 - 20 - 2 - 32 - 4
        );
    }

    #[test]
    fn a_pcr_index_outside_0_to_23_is_an_error_not_replayed() {
        for pcr in [24, 0xffff_fff0] {
            let mut log = encode_spec_id_header(&[HashAlg::SHA256]);
            log.extend(encode_agile(
                pcr,
                EventType::EV_POST_CODE,
                &[(HashAlg::SHA256, Digest(vec![1; 32]))],
                b"x",
            ));
            let err = EventLog::parse(&log).unwrap_err();
            assert!(err.message.contains("outside 0–23"), "{err}");
            // The legacy format too.
            let mut legacy = Vec::new();
            legacy.extend_from_slice(&pcr.to_le_bytes());
            legacy.extend_from_slice(&EventType::EV_POST_CODE.0.to_le_bytes());
            legacy.extend_from_slice(&[1; 20]);
            legacy.extend_from_slice(&0u32.to_le_bytes());
            assert!(EventLog::parse(&legacy).is_err());
        }
        // EV_NO_ACTION is never extended: real logs put it in PCR 0xffffffff.
        let mut log = encode_spec_id_header(&[HashAlg::SHA256]);
        log.extend(encode_agile(
            u32::MAX,
            EventType::EV_NO_ACTION,
            &[(HashAlg::SHA256, Digest(vec![0; 32]))],
            b"x",
        ));
        let parsed = EventLog::parse(&log).unwrap();
        assert!(crate::eventlog::replay(&parsed)
            .values
            .values()
            .all(|m| m.is_empty()));
    }

    #[test]
    fn zeros_are_not_an_event_log() {
        let err = EventLog::parse(&vec![0u8; 64 << 10]).unwrap_err();
        assert!(err.message.contains("all-zero record"), "{err}");
        let mut log = encode_spec_id_header(&[HashAlg::SHA256]);
        log.extend(vec![0u8; 4096]);
        assert!(EventLog::parse(&log).is_err());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            if let Ok(log) = EventLog::parse(&data) {
                for e in &log.events {
                    let _ = crate::eventlog::describe(e);
                }
                let _ = crate::eventlog::replay(&log);
            }
            let _ = crate::eventlog::UserspaceLog::parse(&data);
            let _ = crate::quote::Attest::parse(&data);
            let _ = crate::quote::Signature::parse(&data);
            let _ = crate::quote::AkPublic::parse(&data);
        }

        #[test]
        fn every_truncation_of_a_valid_log_is_an_error_inside_it(
            n in 1usize..6,
            cut in 0usize..1000,
        ) {
            let mut log = encode_spec_id_header(&[HashAlg::SHA1, HashAlg::SHA256]);
            for i in 0..n {
                let d = [
                    (HashAlg::SHA1, Digest(vec![i as u8; 20])),
                    (HashAlg::SHA256, Digest(vec![i as u8; 32])),
                ];
                log.extend(encode_agile(i as u32, EventType::EV_POST_CODE, &d, b"data"));
            }
            let whole = EventLog::parse(&log).unwrap();
            proptest::prop_assert_eq!(whole.events.len(), n);
            let cut = cut % log.len();
            // Cutting at a record boundary leaves a shorter valid log; anywhere else is an error
            // whose offset lies within the input.
            match EventLog::parse(&log[..cut]) {
                Ok(l) => proptest::prop_assert!(l.events.len() < n),
                Err(e) => proptest::prop_assert!(e.offset <= cut),
            }
        }
    }
}
