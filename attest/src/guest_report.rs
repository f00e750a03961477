//! The report the demo initrd (`recipes/demo/initrd/init`) prints on the serial console: the
//! PCR values the booted guest read from the kernel, and the firmware event log it saw.
//!
//! The console is untrusted text with firmware and kernel output mixed in, so each marker is
//! recognised wherever it starts in a line, and everything else is ignored. Line protocol:
//!
//! | line | meaning |
//! |---|---|
//! | `IMGCTL-DEMO: init reached` | the initrd's /init ran |
//! | `IMGCTL-PCR <bank> <index> <HEX>` | PCR `index` in `bank` (sha1, sha256, …), as read from `/sys/class/tpm/tpm0/pcr-<bank>/<index>` (the kernel prints upper-case hex) |
//! | `IMGCTL-EVENTLOG-BEGIN` … `IMGCTL-EVENTLOG-END` | `binary_bios_measurements` in base64 (RFC 4648, standard alphabet), any line wrapping |
//! | `IMGCTL-DEMO: done` | the report is complete; the guest powers off next |

use std::collections::BTreeMap;

use base64::Engine;

use crate::ParseError;
use imgctl_measure::bank::{Digest, HashAlg};

pub const MARK_INIT: &str = "IMGCTL-DEMO: init reached";
pub const MARK_DONE: &str = "IMGCTL-DEMO: done";
pub const MARK_PCR: &str = "IMGCTL-PCR ";
pub const MARK_EVENTLOG_BEGIN: &str = "IMGCTL-EVENTLOG-BEGIN";
pub const MARK_EVENTLOG_END: &str = "IMGCTL-EVENTLOG-END";

/// Highest PCR index a TPM 2.0 PC Client platform has.
pub const MAX_PCR_INDEX: u32 = 23;

/// What the guest reported.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestReport {
    pub init_reached: bool,
    pub done: bool,
    /// PCR values per bank and index.
    pub pcrs: BTreeMap<HashAlg, BTreeMap<u32, Digest>>,
    /// The firmware event log (TCG binary format), if the guest printed one.
    pub event_log: Option<Vec<u8>>,
}

impl GuestReport {
    /// Parses the whole console output of a boot.
    pub fn parse(console: &[u8]) -> Result<Self, ParseError> {
        let mut report = GuestReport::default();
        let mut log: Option<(usize, String)> = None;
        let mut offset = 0usize;
        for raw in console.split(|&b| b == b'\n') {
            let line_offset = offset;
            offset += raw.len() + 1;
            let line = String::from_utf8_lossy(raw);
            let line = line.trim_end_matches(['\r', ' ', '\t']);

            if let Some((_, text)) = log.as_mut() {
                if line.contains(MARK_EVENTLOG_END) {
                    if let Some((start, text)) = log.take() {
                        report.set_event_log(start, &text)?;
                    }
                } else {
                    text.push_str(line.trim());
                }
                continue;
            }
            if let Some(at) = line.find(MARK_PCR) {
                let (bank, index, digest) =
                    parse_pcr_line(&line[at + MARK_PCR.len()..], line_offset + at)?;
                let entry = report.pcrs.entry(bank).or_default();
                if let Some(old) = entry.get(&index) {
                    if *old != digest {
                        return Err(ParseError::new(
                            line_offset + at,
                            "PCR line",
                            format!("PCR {index} in {bank} reported twice with different values"),
                        ));
                    }
                }
                entry.insert(index, digest);
            } else if line.contains(MARK_EVENTLOG_BEGIN) {
                if report.event_log.is_some() {
                    return Err(ParseError::new(
                        line_offset,
                        "event log",
                        "a second event log block",
                    ));
                }
                log = Some((line_offset, String::new()));
            } else if line.contains(MARK_INIT) {
                report.init_reached = true;
            } else if line.contains(MARK_DONE) {
                report.done = true;
            }
        }
        if let Some((start, _)) = log {
            return Err(ParseError::new(
                start,
                "event log",
                format!(
                    "{MARK_EVENTLOG_BEGIN} without {MARK_EVENTLOG_END}: the output was cut off"
                ),
            ));
        }
        Ok(report)
    }

    fn set_event_log(&mut self, offset: usize, text: &str) -> Result<(), ParseError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|e| ParseError::new(offset, "event log", format!("bad base64: {e}")))?;
        self.event_log = Some(bytes);
        Ok(())
    }

    /// A PCR value the guest read.
    pub fn pcr(&self, bank: HashAlg, index: u32) -> Option<&Digest> {
        self.pcrs.get(&bank)?.get(&index)
    }
}

/// `<bank> <index> <HEX>` after the `IMGCTL-PCR ` marker.
fn parse_pcr_line(rest: &str, offset: usize) -> Result<(HashAlg, u32, Digest), ParseError> {
    let err = |m: String| ParseError::new(offset, "PCR line", m);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let [bank, index, value] = fields[..] else {
        return Err(err(format!(
            "expected `{MARK_PCR}<bank> <index> <hex>`, got {rest:?}"
        )));
    };
    let bank: HashAlg = bank.parse().map_err(|e| err(format!("{e}")))?;
    let index: u32 = index
        .parse()
        .ok()
        .filter(|i| *i <= MAX_PCR_INDEX)
        .ok_or_else(|| err(format!("PCR index {index:?} is not 0..={MAX_PCR_INDEX}")))?;
    let bytes = hex::decode(value).map_err(|e| err(format!("PCR value {value:?}: {e}")))?;
    let size = bank.digest_size().unwrap_or(0);
    if bytes.len() != size {
        return Err(err(format!(
            "PCR {index} in {bank} has {} bytes, a {bank} digest has {size}",
            bytes.len()
        )));
    }
    Ok((bank, index, Digest(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SAMPLE: &str = "\x1b[2J\x1b[01;01HBdsDxe: loading Boot0001\r\n\
[    1.0] kernel noise\r\n\
IMGCTL-DEMO: init reached\r\n\
IMGCTL-PCR sha1 0 9672F6662BCCF526F11E8442382262CB796EB11A\r\n\
IMGCTL-PCR sha256 11 F9BE52A1F48A59A23DE71D6BBBEA89DA503242E8FC853282D11623D344940C9F\r\n\
IMGCTL-EVENTLOG-BEGIN\r\n\
AAEC\r\n\
AwQF\r\n\
IMGCTL-EVENTLOG-END\r\n\
IMGCTL-DEMO: done\r\n\
[    3.8] reboot: Power down\r\n";

    #[test]
    fn parses_a_complete_report() {
        let r = GuestReport::parse(SAMPLE.as_bytes()).unwrap();
        assert!(r.init_reached && r.done);
        assert_eq!(
            r.pcr(HashAlg::SHA1, 0).unwrap().to_hex(),
            "9672f6662bccf526f11e8442382262cb796eb11a"
        );
        assert_eq!(r.event_log.as_deref(), Some(&[0u8, 1, 2, 3, 4, 5][..]));
        let json = serde_json::to_value(crate::eventlog::PcrValuesJson(&r.pcrs)).unwrap();
        assert_eq!(
            json["sha256"]["11"],
            "f9be52a1f48a59a23de71d6bbbea89da503242e8fc853282d11623d344940c9f"
        );
    }

    #[test]
    fn a_cut_off_event_log_is_an_error() {
        let cut = &SAMPLE[..SAMPLE.find("IMGCTL-EVENTLOG-END").unwrap()];
        let e = GuestReport::parse(cut.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("cut off"), "{e}");
    }

    #[test]
    fn a_digest_of_the_wrong_size_is_an_error() {
        let e = GuestReport::parse(b"IMGCTL-PCR sha256 0 ABCD\n").unwrap_err();
        assert!(e.to_string().contains("has 2 bytes"), "{e}");
        assert!(GuestReport::parse(b"IMGCTL-PCR sha1 24 00\n").is_err());
        assert!(GuestReport::parse(b"IMGCTL-PCR md5 0 00\n").is_err());
    }

    #[test]
    fn conflicting_values_are_an_error() {
        let two = format!(
            "IMGCTL-PCR sha1 0 {}\nIMGCTL-PCR sha1 0 {}\n",
            "00".repeat(20),
            "11".repeat(20)
        );
        assert!(GuestReport::parse(two.as_bytes()).is_err());
    }

    #[test]
    fn no_markers_is_an_empty_report() {
        let r = GuestReport::parse(b"Shell> \r\n").unwrap();
        assert_eq!(r, GuestReport::default());
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = GuestReport::parse(&bytes);
        }

        #[test]
        fn round_trips_pcrs_and_log(
            values in proptest::collection::btree_map(0u32..=23, any::<[u8; 32]>(), 0..24),
            log in proptest::collection::vec(any::<u8>(), 0..300),
            noise in "[a-z \\[\\]0-9.]{0,40}",
        ) {
            let mut text = format!("{noise}\r\n{MARK_INIT}\r\n");
            for (i, v) in &values {
                text += &format!("{MARK_PCR}sha256 {i} {}\r\n", hex::encode_upper(v));
            }
            text += &format!("{MARK_EVENTLOG_BEGIN}\r\n");
            let b64 = base64::engine::general_purpose::STANDARD.encode(&log);
            for chunk in b64.as_bytes().chunks(76) {
                text += &format!("{}\r\n", String::from_utf8_lossy(chunk));
            }
            text += &format!("{MARK_EVENTLOG_END}\r\n{MARK_DONE}\r\n{noise}");
            let r = GuestReport::parse(text.as_bytes()).unwrap();
            prop_assert!(r.done && r.init_reached);
            prop_assert_eq!(r.event_log.as_deref(), Some(&log[..]));
            let got: BTreeMap<u32, Vec<u8>> = r.pcrs.get(&HashAlg::SHA256).cloned().unwrap_or_default()
                .into_iter().map(|(i, d)| (i, d.0)).collect();
            let want: BTreeMap<u32, Vec<u8>> = values.into_iter().map(|(i, v)| (i, v.to_vec())).collect();
            prop_assert_eq!(got, want);
        }
    }
}
