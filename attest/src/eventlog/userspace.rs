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
//!
//! This is the one reader and writer of the format: the recorder (`imgctl measure`) builds
//! [`UserspaceRecord`]s and encodes them with [`UserspaceRecord::to_json_seq`]; the verifier and
//! the auditor read them back with [`UserspaceLog::parse`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::eventlog::replay::PcrValues;
use crate::{Error, ParseError};
use imgctl_measure::bank::{Digest, HashAlg, Pcr};

/// The JSON-SEQ record separator.
pub const RS: u8 = 0x1e;
/// Largest record accepted (systemd's records are a few hundred bytes; login records carry a
/// user record and can be a few KiB).
pub const MAX_RECORD: usize = 1 << 20;
/// Largest log accepted (systemd's logs of a whole boot are a few KiB).
pub const MAX_LOG: usize = 64 << 20;

/// Where and when a record is made (the parts that come from the running system).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// `/proc/sys/kernel/random/boot_id` without dashes.
    pub boot_id: String,
    /// CLOCK_BOOTTIME in microseconds.
    pub timestamp_usec: u64,
}

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
    /// `content.string` as logged: the bytes hashed, for records of other writers; for
    /// systemd's (`content_type` `systemd`) their C-escaped form ([`systemd_cescape`]: systemd
    /// logs `cescape()` of what it measured), see [`UserspaceRecord::measured_string`].
    pub string: Option<String>,
    /// `content.bootId`.
    pub boot_id: Option<String>,
    /// `content.timestamp`: CLOCK_BOOTTIME in microseconds.
    pub timestamp: Option<u64>,
}

impl UserspaceRecord {
    /// A record measuring `string` into `pcr` in `banks`, as systemd-pcrextend writes it
    /// (`content_type` `systemd`; position 0 until it is parsed from a log).
    pub fn new(
        pcr: u32,
        banks: &[HashAlg],
        string: String,
        event_type: &str,
        origin: &Origin,
    ) -> Result<Self, Error> {
        let digests = banks
            .iter()
            .map(|b| Ok((*b, b.hash(string.as_bytes())?)))
            .collect::<Result<Vec<_>, Error>>()?;
        Ok(UserspaceRecord {
            index: 0,
            offset: 0,
            pcr: Some(pcr),
            nv_index_name: None,
            digests,
            content_type: Some("systemd".into()),
            event_type: Some(event_type.into()),
            string: Some(systemd_cescape(string.as_bytes())),
            boot_id: Some(origin.boot_id.clone()),
            timestamp: Some(origin.timestamp_usec),
        })
    }

    /// A pcrphase record (`eventType` `phase`, PCR 11).
    pub fn phase(word: &str, banks: &[HashAlg], origin: &Origin) -> Result<Self, Error> {
        let path: imgctl_measure::PhasePath = word.parse()?;
        if path.words().len() != 1 {
            return Err(Error::InvalidInput(format!(
                "phase word {word:?} must be a single word"
            )));
        }
        Self::new(
            imgctl_measure::pcr11::PCR_KERNEL_IMAGE,
            banks,
            word.to_owned(),
            "phase",
            origin,
        )
    }

    /// The JSON-SEQ encoding systemd writes: `RS`, compact JSON with systemd's key order, `LF`.
    pub fn to_json_seq(&self) -> Vec<u8> {
        let out = OutRecord {
            pcr: self.pcr,
            digests: self
                .digests
                .iter()
                .map(|(b, d)| RawDigest {
                    hash_alg: b.to_string(),
                    digest: d.to_hex(),
                })
                .collect(),
            content_type: self.content_type.as_deref(),
            content: OutContent {
                nv_index_name: self.nv_index_name.as_deref(),
                string: self.string.as_deref(),
                boot_id: self.boot_id.as_deref(),
                timestamp: self.timestamp,
                event_type: self.event_type.as_deref(),
            },
        };
        let mut bytes = vec![RS];
        // Strings, integers and vectors of them always serialise.
        bytes.extend_from_slice(&serde_json::to_vec(&out).unwrap_or_default());
        bytes.push(b'\n');
        bytes
    }

    pub fn digest(&self, bank: HashAlg) -> Option<&Digest> {
        self.digests
            .iter()
            .find(|(b, _)| *b == bank)
            .map(|(_, d)| d)
    }

    /// Is this record's digest meant to be `H_bank(string)`? Not for systemd's secret-keyed
    /// events ([`imgctl_measure::record::DIGEST_NOT_OF_STRING`]: the volume key's HMAC).
    pub fn digest_is_of_string(&self) -> bool {
        self.string.is_some()
            && !self
                .event_type
                .as_deref()
                .is_some_and(|t| imgctl_measure::record::DIGEST_NOT_OF_STRING.contains(&t))
    }

    /// The bytes the writer measured: `content.string` unescaped for systemd's records
    /// ([`systemd_cunescape`]), as logged for others. `None` without a string, or for a
    /// systemd record whose string is no C-escaped text (it cannot be what systemd wrote).
    pub fn measured_bytes(&self) -> Option<Vec<u8>> {
        let s = self.string.as_deref()?;
        if self.content_type.as_deref() == Some("systemd") {
            systemd_cunescape(s)
        } else {
            Some(s.as_bytes().to_vec())
        }
    }

    /// [`Self::measured_bytes`] as text (`None` if not UTF-8).
    pub fn measured_string(&self) -> Option<String> {
        String::from_utf8(self.measured_bytes()?).ok()
    }

    /// Banks whose logged digest is not `H_bank(measured bytes)`, where it should be
    /// ([`Self::digest_is_of_string`]): a record altered after it was written. A systemd
    /// record whose string does not unescape mismatches in every bank.
    pub fn digest_mismatches(&self) -> Vec<HashAlg> {
        if !self.digest_is_of_string() {
            return Vec::new();
        }
        let measured = self.measured_bytes();
        self.digests
            .iter()
            .filter(|(b, d)| match &measured {
                Some(m) => b.hash(m).is_ok_and(|h| &h != d),
                None => true,
            })
            .map(|(b, _)| *b)
            .collect()
    }
}

/// systemd's `cescape()` (src/basic/escape.c), which systemd applies to what it measured before
/// it logs it as `content.string`: `\a \b \f \n \r \t \v \\ \" \'` for those bytes, `\xNN`
/// (lower-case hex) for any other byte below 0x20 or from 0x7f, the byte itself otherwise.
pub fn systemd_cescape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &c in bytes {
        let esc = match c {
            0x07 => "\\a",
            0x08 => "\\b",
            0x0c => "\\f",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x0b => "\\v",
            b'\\' => "\\\\",
            b'"' => "\\\"",
            b'\'' => "\\'",
            0x20..=0x7e => {
                out.push(char::from(c));
                continue;
            }
            _ => {
                out.push_str(&format!("\\x{c:02x}"));
                continue;
            }
        };
        out.push_str(esc);
    }
    out
}

/// The inverse of [`systemd_cescape`]: `None` for text it never writes (a lone or unknown
/// escape, a raw byte it would have escaped).
pub fn systemd_cunescape(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c != b'\\' {
            if !(0x20..=0x7e).contains(&c) || c == b'"' || c == b'\'' {
                return None;
            }
            out.push(c);
            i += 1;
            continue;
        }
        let e = *b.get(i + 1)?;
        let (byte, len) = match e {
            b'a' => (0x07, 2),
            b'b' => (0x08, 2),
            b'f' => (0x0c, 2),
            b'n' => (b'\n', 2),
            b'r' => (b'\r', 2),
            b't' => (b'\t', 2),
            b'v' => (0x0b, 2),
            b'\\' => (b'\\', 2),
            b'"' => (b'"', 2),
            b'\'' => (b'\'', 2),
            b'x' => {
                let hex = b.get(i + 2..i + 4)?;
                if !hex.iter().all(|h| matches!(h, b'0'..=b'9' | b'a'..=b'f')) {
                    return None;
                }
                let v = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
                // systemd writes these itself, or by name (`\\a` … `\\v`).
                if (0x20..=0x7e).contains(&v) || (0x07..=0x0d).contains(&v) {
                    return None;
                }
                (v, 4)
            }
            _ => return None,
        };
        out.push(byte);
        i += len;
    }
    Some(out)
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

#[derive(Serialize)]
struct OutRecord<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pcr: Option<u32>,
    digests: Vec<RawDigest>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content_type: Option<&'a str>,
    content: OutContent<'a>,
}

#[derive(Serialize)]
struct OutContent<'a> {
    #[serde(rename = "nvIndexName", skip_serializing_if = "Option::is_none")]
    nv_index_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    string: Option<&'a str>,
    #[serde(rename = "bootId", skip_serializing_if = "Option::is_none")]
    boot_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timestamp: Option<u64>,
    #[serde(rename = "eventType", skip_serializing_if = "Option::is_none")]
    event_type: Option<&'a str>,
}

#[derive(Deserialize, Serialize)]
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
        if data.len() > MAX_LOG {
            return Err(ParseError::new(
                0,
                "userspace log",
                format!("log of {} bytes exceeds {MAX_LOG}", data.len()),
            ));
        }
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
            // that died.
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
        boot_id: field("bootId"),
        timestamp: raw.content.get("timestamp").and_then(|v| v.as_u64()),
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
    fn a_last_record_without_its_newline_is_truncated() {
        let mut log = phase_record("sysinit");
        log.pop();
        let err = UserspaceLog::parse(&log).unwrap_err();
        assert!(err.message.contains("truncated"), "{err}");
    }

    fn origin() -> Origin {
        Origin {
            boot_id: "0123456789abcdef0123456789abcdef".into(),
            timestamp_usec: 1234,
        }
    }

    #[test]
    fn phase_record_has_systemds_shape_and_digest() {
        let r = UserspaceRecord::phase("enter-initrd", &[HashAlg::SHA256], &origin()).unwrap();
        let text = String::from_utf8(r.to_json_seq()).unwrap();
        // sha256("enter-initrd"), the digest pcrphase extends (reference §2.1, E1).
        assert_eq!(
            text,
            format!(
                "\u{1e}{{\"pcr\":11,\"digests\":[{{\"hashAlg\":\"sha256\",\"digest\":\"{}\"}}],\"content_type\":\"systemd\",\"content\":{{\"string\":\"enter-initrd\",\"bootId\":\"0123456789abcdef0123456789abcdef\",\"timestamp\":1234,\"eventType\":\"phase\"}}}}\n",
                HashAlg::SHA256.hash(b"enter-initrd").unwrap()
            )
        );
        assert!(UserspaceRecord::phase("a:b", &[HashAlg::SHA256], &origin()).is_err());
    }

    #[test]
    fn records_the_recorder_writes_parse_back_equal() {
        let o = origin();
        let a = UserspaceRecord::phase("ready", &HashAlg::ALL, &o).unwrap();
        let b = UserspaceRecord::new(15, &[HashAlg::SHA1], "x".into(), "imgctl", &o).unwrap();
        let mut bytes = a.to_json_seq();
        bytes.extend(b.to_json_seq());
        let log = UserspaceLog::parse(&bytes).unwrap();
        assert_eq!(log.records[0], a);
        let second = &log.records[1];
        assert_eq!((second.index, second.offset), (1, a.to_json_seq().len()));
        assert_eq!(
            UserspaceRecord {
                index: 0,
                offset: 0,
                ..second.clone()
            },
            b
        );
        // Encoding what was parsed gives the same bytes.
        let again: Vec<u8> = log.records.iter().flat_map(|r| r.to_json_seq()).collect();
        assert_eq!(again, bytes);
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

    /// A record systemd-pcrextend 257 wrote in a real boot of recipes/os (the image's PAM hook,
    /// a root login on the serial console): systemd logs `cescape()` of what it measured, so
    /// the string's quotes are `\"`; the digests are those of the unescaped string, and the
    /// break-glass claim is read from it.
    #[test]
    fn systemd_logs_the_measured_string_c_escaped() {
        const LOGGED: &str = r#"{"pcr":15,"digests":[{"hashAlg":"sha1","digest":"958f9a03b008365a52a9b420624a7b0913d3b642"},{"hashAlg":"sha256","digest":"3c8fa35150e3ce70664cbcf267404e75828556c3ed63573ef7efaa5fea2f0e53"},{"hashAlg":"sha384","digest":"e8a3fa38efd93938e6e780833054dd15f9a95f26fc5c50ee444142f35afca7c37fcd97975304910a9f161ffba1ab0750"},{"hashAlg":"sha512","digest":"6cf241f6c65b619b3384a7ea29e402ef0f008738ca325d09267be0cdc160c21f3e4525a78e58b559902334ffc9cef881a683e5304f8d8e373cfc584858708d9b"}],"content_type":"systemd","content":{"string":"break-glass:{\\\"actor\\\":\\\"root\\\",\\\"kind\\\":\\\"console-login\\\",\\\"reason\\\":\\\"root login on /dev/ttyS0\\\",\\\"time\\\":\\\"2026-12-08T01:56:36Z\\\"}","bootId":"f13bbf8c4c0246578e86ed361f247a8b","timestamp":58793695,"eventType":"phase"}}"#;
        let mut data = vec![RS];
        data.extend_from_slice(LOGGED.as_bytes());
        data.push(b'\n');
        let log = UserspaceLog::parse(&data).unwrap();
        let r = &log.records[0];
        assert!(r
            .string
            .as_deref()
            .unwrap()
            .contains(r#"{\"actor\":\"root\""#));
        let measured = r.measured_string().unwrap();
        assert!(measured.starts_with(r#"break-glass:{"actor":"root","kind":"console-login""#));
        assert_eq!(
            r.digest(HashAlg::SHA256).unwrap().to_hex(),
            HashAlg::SHA256.hash(measured.as_bytes()).unwrap().to_hex()
        );
        assert!(r.digest_mismatches().is_empty());
        let bg = crate::userspace_record::BreakGlass::from_record(r)
            .unwrap()
            .unwrap();
        assert_eq!(bg.kind, "console-login");
        // Our writer gives the same bytes back for the same measurement.
        let again = UserspaceRecord::new(
            15,
            &[
                HashAlg::SHA1,
                HashAlg::SHA256,
                HashAlg::SHA384,
                HashAlg::SHA512,
            ],
            measured,
            "phase",
            &Origin {
                boot_id: r.boot_id.clone().unwrap(),
                timestamp_usec: r.timestamp.unwrap(),
            },
        )
        .unwrap();
        assert_eq!(again.to_json_seq(), data);
        // An escape systemd never writes is no measured string: every bank mismatches.
        let mut odd = r.clone();
        odd.string = Some("break-glass:\\q".into());
        assert_eq!(odd.measured_bytes(), None);
        assert_eq!(odd.digest_mismatches().len(), 4);
    }
}

#[cfg(test)]
mod cescape_properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Every byte string survives systemd's escaping and back; the escaped form is
        /// printable ASCII; unescaping arbitrary text never panics.
        #[test]
        fn cescape_round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..64), text in ".{0,64}") {
            let e = systemd_cescape(&bytes);
            prop_assert!(e.bytes().all(|b| (0x20..0x7f).contains(&b)));
            prop_assert_eq!(systemd_cunescape(&e), Some(bytes));
            if let Some(b) = systemd_cunescape(&text) {
                prop_assert_eq!(systemd_cescape(&b), text);
            }
        }
    }
}
