//! systemd's userspace measurement log, `/run/log/systemd/tpm2-measure.log`.
//!
//! A JSON-SEQ stream (RFC 7464): each record is `0x1E`, a JSON object, `\n`. The objects follow
//! TCG CEL-JSON without `recnum` (systemd-pcrphase(8); ../shared/reference/systemd.md §4.1):
//!
//! ```json
//! {"pcr":11,"digests":[{"hashAlg":"sha256","digest":"<hex>"}],"content_type":"systemd",
//!  "content":{"string":"enter-initrd","bootId":"<hex>","timestamp":4061113,"eventType":"phase"}}
//! ```
//!
//! systemd extends each bank with `H_bank(string)` (or an HMAC for secret-keyed events, whose
//! digest cannot be recomputed from the log). Records for NvPCRs carry `nvIndexName` in
//! `content`; they are parsed and kept apart from PCR replay.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::bank::{Digest, HashAlg, Pcr};
use crate::eventlog::replay::PcrValues;
use crate::ParseError;

/// The JSON-SEQ record separator.
pub const RS: u8 = 0x1e;
/// Largest record accepted (systemd's records are a few hundred bytes; login records carry a
/// user record and can be a few KiB).
pub const MAX_RECORD: usize = 1 << 20;

/// One record of the userspace log.
#[derive(Debug, Clone, PartialEq)]
pub struct UserspaceRecord {
    /// Position in the log, 0-based.
    pub index: usize,
    /// Byte offset of the record's RS.
    pub offset: usize,
    /// The PCR extended, for PCR records.
    pub pcr: Option<u32>,
    /// The NvPCR's name, for NvPCR records.
    pub nv_index_name: Option<String>,
    pub digests: Vec<(HashAlg, Digest)>,
    pub content_type: Option<String>,
    /// `content.eventType`.
    pub event_type: Option<String>,
    /// `content.string`: the bytes systemd hashed.
    pub string: Option<String>,
    /// The whole `content` object as logged.
    pub content: serde_json::Value,
}

impl UserspaceRecord {
    pub fn digest(&self, bank: HashAlg) -> Option<&Digest> {
        self.digests
            .iter()
            .find(|(b, _)| *b == bank)
            .map(|(_, d)| d)
    }

    /// Banks whose logged digest is not `H_bank(string)` (a record altered after it was
    /// written, or a secret-keyed event whose digest is an HMAC).
    pub fn digest_mismatches(&self) -> Vec<HashAlg> {
        let Some(s) = &self.string else {
            return Vec::new();
        };
        self.digests
            .iter()
            .filter(|(b, d)| b.hash(s.as_bytes()).is_ok_and(|h| &h != d))
            .map(|(b, _)| *b)
            .collect()
    }
}

#[derive(Deserialize)]
struct RawRecord {
    pcr: Option<u32>,
    #[serde(default)]
    digests: Vec<RawDigest>,
    content_type: Option<String>,
    #[serde(default)]
    content: serde_json::Value,
}

#[derive(Deserialize)]
struct RawDigest {
    #[serde(rename = "hashAlg")]
    hash_alg: String,
    digest: String,
}

/// A parsed userspace log.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct UserspaceLog {
    pub records: Vec<UserspaceRecord>,
}

impl UserspaceLog {
    /// Parses a JSON-SEQ log. Empty input is an empty log (no userspace measurement yet).
    pub fn parse(data: &[u8]) -> Result<Self, ParseError> {
        let mut records = Vec::new();
        let mut pos = 0;
        // Leading whitespace before the first RS is tolerated; anything else is not JSON-SEQ.
        while pos < data.len() && data[pos].is_ascii_whitespace() {
            pos += 1;
        }
        while pos < data.len() {
            if data[pos] != RS {
                return Err(ParseError::new(
                    pos,
                    "JSON-SEQ record separator",
                    format!("expected 0x1e, found {:#04x}", data[pos]),
                ));
            }
            let start = pos;
            let end = data[pos + 1..]
                .iter()
                .position(|b| *b == RS)
                .map_or(data.len(), |p| pos + 1 + p);
            let body = &data[pos + 1..end];
            if body.len() > MAX_RECORD {
                return Err(ParseError::new(
                    start,
                    "userspace log record",
                    format!("record of {} bytes exceeds {MAX_RECORD}", body.len()),
                ));
            }
            let record = parse_record(body, start, records.len())?;
            // systemd writes RS, JSON, LF: a record without its LF was cut short by a writer
            // that died (the same rule as the recorder's parser, userspace_record::parse_log).
            if !body.ends_with(b"\n") {
                return Err(ParseError::new(
                    start,
                    "userspace log record",
                    format!(
                        "record {} is truncated (no trailing newline)",
                        records.len()
                    ),
                ));
            }
            records.push(record);
            pos = end;
        }
        Ok(UserspaceLog { records })
    }

    /// Replays the PCR records (NvPCR records are skipped) in every bank they carry, starting
    /// from zero.
    pub fn replay(&self) -> PcrValues {
        self.replay_onto(&PcrValues::new())
    }

    /// Replays the PCR records on top of `start` (e.g. the firmware log's replay, for PCR 11
    /// whose stub events come first), starting absent PCRs from zero.
    pub fn replay_onto(&self, start: &PcrValues) -> PcrValues {
        let mut pcrs: BTreeMap<(HashAlg, u32), Pcr> = BTreeMap::new();
        for r in &self.records {
            let Some(index) = r.pcr else { continue };
            for (bank, d) in &r.digests {
                let p = match pcrs.entry((*bank, index)) {
                    std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
                    std::collections::btree_map::Entry::Vacant(v) => {
                        let init = start
                            .get(bank)
                            .and_then(|m| m.get(&index))
                            .cloned()
                            .map(|x| Pcr::with_value(*bank, x))
                            .unwrap_or_else(|| Pcr::reset(*bank));
                        match init {
                            Ok(p) => v.insert(p),
                            Err(_) => continue,
                        }
                    }
                };
                p.extend(d);
            }
        }
        let mut out = start.clone();
        for ((bank, index), p) in pcrs {
            out.entry(bank)
                .or_default()
                .insert(index, p.value().clone());
        }
        out
    }
}

fn parse_record(body: &[u8], offset: usize, index: usize) -> Result<UserspaceRecord, ParseError> {
    let raw: RawRecord = serde_json::from_slice(body).map_err(|e| {
        ParseError::new(
            offset + 1,
            "userspace log record JSON",
            format!("record {index}: {e}"),
        )
    })?;
    let mut digests = Vec::with_capacity(raw.digests.len());
    for d in raw.digests {
        let bank: HashAlg = d.hash_alg.parse().map_err(|e| {
            ParseError::new(offset, "digests[].hashAlg", format!("record {index}: {e}"))
        })?;
        let bytes = hex::decode(&d.digest).map_err(|e| {
            ParseError::new(offset, "digests[].digest", format!("record {index}: {e}"))
        })?;
        if Some(bytes.len()) != bank.digest_size() {
            return Err(ParseError::new(
                offset,
                "digests[].digest",
                format!("record {index}: {bank} digest of {} bytes", bytes.len()),
            ));
        }
        if digests.iter().any(|(b, _)| *b == bank) {
            return Err(ParseError::new(
                offset,
                "digests[].hashAlg",
                format!("record {index}: two {bank} digests"),
            ));
        }
        digests.push((bank, Digest(bytes)));
    }
    let field = |k: &str| {
        raw.content
            .get(k)
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    let nv_index_name = field("nvIndexName");
    if raw.pcr.is_none() && nv_index_name.is_none() {
        return Err(ParseError::new(
            offset,
            "pcr",
            format!("record {index}: neither \"pcr\" nor content.nvIndexName"),
        ));
    }
    Ok(UserspaceRecord {
        index,
        offset,
        pcr: raw.pcr,
        nv_index_name,
        digests,
        content_type: raw.content_type,
        event_type: field("eventType"),
        string: field("string"),
        content: raw.content,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phase_record(word: &str) -> Vec<u8> {
        let d = HashAlg::SHA256.hash(word.as_bytes()).unwrap();
        let mut out = vec![RS];
        out.extend_from_slice(
            format!(
                r#"{{"pcr":11,"digests":[{{"hashAlg":"sha256","digest":"{d}"}}],"content_type":"systemd","content":{{"string":"{word}","bootId":"00","timestamp":1,"eventType":"phase"}}}}"#
            )
            .as_bytes(),
        );
        out.push(b'\n');
        out
    }

    #[test]
    fn phase_words_replay_like_systemd_measure() {
        // ../shared/reference/systemd.md §9 E1: after `.linux\0`, "A" the PCR is 0a7ff1…;
        // enter-initrd gives 2ccb64….
        let mut start = PcrValues::new();
        start.entry(HashAlg::SHA256).or_default().insert(
            11,
            Digest(
                hex::decode("0a7ff16282ca19a55360c6e428cad84a2965eeaf5bbe24010ca598c2fbe5d92a")
                    .unwrap(),
            ),
        );
        let log = UserspaceLog::parse(&phase_record("enter-initrd")).unwrap();
        assert_eq!(log.records[0].event_type.as_deref(), Some("phase"));
        assert!(log.records[0].digest_mismatches().is_empty());
        let v = log.replay_onto(&start);
        assert_eq!(
            v[&HashAlg::SHA256][&11].to_hex(),
            "2ccb64e2494a299a47994c804f7937bb5cbef8a849f2ca2d43d64f7c73e262c7"
        );
    }

    #[test]
    fn a_last_record_without_its_newline_is_truncated_in_both_parsers() {
        let mut log = phase_record("sysinit");
        log.pop();
        let err = UserspaceLog::parse(&log).unwrap_err();
        assert!(err.message.contains("truncated"), "{err}");
        assert!(crate::userspace_record::parse_log(&log).is_err());
    }

    #[test]
    fn garbage_between_records_is_reported_at_its_offset() {
        let mut log = phase_record("sysinit");
        let n = log.len();
        log.extend_from_slice(b"xx");
        // "xx" follows the record body; it becomes part of it and breaks the JSON.
        let err = UserspaceLog::parse(&log).unwrap_err();
        assert_eq!(err.offset, 1);
        let err = UserspaceLog::parse(b"{}").unwrap_err();
        assert_eq!(err.offset, 0);
        assert!(n > 0);
    }
}
