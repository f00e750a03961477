//! The report the demo initrd (`recipes/demo/initrd/init`) prints on the serial console: the
//! PCR values the booted guest read from the kernel, and the firmware event log it saw.
//!
//! The console is untrusted text with firmware and kernel output mixed in, so each marker is
//! recognised wherever it starts in a line, and everything else is ignored. Line protocol:
//!
//! | line | meaning |
//! |---|---|
//! | `IMGCTL-DEMO: init reached` | the initrd's /init ran |
//! | `IMGCTL-CMDLINE <text>` | the demo initrd's `/proc/cmdline` (the command line the stub passed, addons included): read by tests/systemd257.rs, not parsed here |
//! | `IMGCTL-PCR <bank> <index> <HEX>` | PCR `index` in `bank` (sha1, sha256, …), as read from `/sys/class/tpm/tpm0/pcr-<bank>/<index>` (the kernel prints upper-case hex) |
//! | `IMGCTL-EVENTLOG-BEGIN` … `IMGCTL-EVENTLOG-END` | `binary_bios_measurements` in base64 (RFC 4648, standard alphabet), any line wrapping |
//! | `IMGCTL-USERLOG-BEGIN` … `IMGCTL-USERLOG-END` | systemd's userspace log `/run/log/systemd/tpm2-measure.log` in base64, likewise (an OS image's capture unit) |
//! | `IMGCTL-OS: uptime <seconds>` | the guest's uptime when its capture unit ran (`/proc/uptime`) |
//! | `IMGCTL-VAR <key> <value>` | an OS image's encrypted /var (mount, dm target, LUKS UUID and metadata, unlock journal, first-boot marker): read by tests/os.rs, not parsed here |
//! | `IMGCTL-SYSEXT journal <base64>` | an OS image's extension activation (the journal of imgctl-sysext-esp.service and systemd-sysext.service), for diagnosis: not parsed here |
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
pub const MARK_USERLOG_BEGIN: &str = "IMGCTL-USERLOG-BEGIN";
pub const MARK_USERLOG_END: &str = "IMGCTL-USERLOG-END";
pub const MARK_UPTIME: &str = "IMGCTL-OS: uptime ";

/// The largest base64 block accepted (either log), in characters: a firmware log of a real
/// machine is well under 1 MiB, systemd's userspace log a few KiB.
pub const MAX_BLOCK_CHARS: usize = 16 << 20;

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
    /// systemd's userspace measurement log (`tpm2-measure.log`, JSON-SEQ), if printed.
    pub userspace_log: Option<Vec<u8>>,
    /// The guest's uptime in milliseconds when it reported, if printed.
    pub uptime_ms: Option<u64>,
}

/// Which base64 block a line belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    EventLog,
    UserLog,
}

impl Block {
    fn end(self) -> &'static str {
        match self {
            Block::EventLog => MARK_EVENTLOG_END,
            Block::UserLog => MARK_USERLOG_END,
        }
    }
    fn begin(self) -> &'static str {
        match self {
            Block::EventLog => MARK_EVENTLOG_BEGIN,
            Block::UserLog => MARK_USERLOG_BEGIN,
        }
    }
    fn what(self) -> &'static str {
        match self {
            Block::EventLog => "event log",
            Block::UserLog => "userspace log",
        }
    }
}

impl GuestReport {
    /// Parses the whole console output of a boot.
    pub fn parse(console: &[u8]) -> Result<Self, ParseError> {
        let mut report = GuestReport::default();
        let mut block: Option<(Block, usize, String)> = None;
        let mut offset = 0usize;
        for raw in console.split(|&b| b == b'\n') {
            let line_offset = offset;
            offset += raw.len() + 1;
            let line = String::from_utf8_lossy(raw);
            let line = line.trim_end_matches(['\r', ' ', '\t']);

            if let Some((kind, start, text)) = block.as_mut() {
                if line.contains(kind.end()) {
                    let (kind, start, text) = (*kind, *start, std::mem::take(text));
                    block = None;
                    report.set_block(kind, start, &text)?;
                } else {
                    let piece = line.trim();
                    if text.len() + piece.len() > MAX_BLOCK_CHARS {
                        return Err(ParseError::new(
                            *start,
                            kind.what(),
                            format!("longer than {MAX_BLOCK_CHARS} base64 characters"),
                        ));
                    }
                    text.push_str(piece);
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
            } else if let Some(kind) = [Block::EventLog, Block::UserLog]
                .into_iter()
                .find(|k| line.contains(k.begin()))
            {
                let seen = match kind {
                    Block::EventLog => report.event_log.is_some(),
                    Block::UserLog => report.userspace_log.is_some(),
                };
                if seen {
                    return Err(ParseError::new(
                        line_offset,
                        kind.what(),
                        format!("a second {} block", kind.what()),
                    ));
                }
                block = Some((kind, line_offset, String::new()));
            } else if let Some(at) = line.find(MARK_UPTIME) {
                let v = line[at + MARK_UPTIME.len()..].trim();
                // `/proc/uptime` prints seconds with two decimals.
                let ms = v
                    .parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && (0.0..1e9).contains(s))
                    .map(|s| (s * 1000.0).round() as u64)
                    .ok_or_else(|| {
                        ParseError::new(
                            line_offset + at,
                            "uptime line",
                            format!("{v:?} is not a number of seconds"),
                        )
                    })?;
                report.uptime_ms = Some(ms);
            } else if line.contains(MARK_INIT) {
                report.init_reached = true;
            } else if line.contains(MARK_DONE) {
                report.done = true;
            }
        }
        if let Some((kind, start, _)) = block {
            return Err(ParseError::new(
                start,
                kind.what(),
                format!(
                    "{} without {}: the output was cut off",
                    kind.begin(),
                    kind.end()
                ),
            ));
        }
        Ok(report)
    }

    fn set_block(&mut self, kind: Block, offset: usize, text: &str) -> Result<(), ParseError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|e| ParseError::new(offset, kind.what(), format!("bad base64: {e}")))?;
        match kind {
            Block::EventLog => self.event_log = Some(bytes),
            Block::UserLog => self.userspace_log = Some(bytes),
        }
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
IMGCTL-USERLOG-BEGIN\r\n\
HnsicGNyIjoxNX0K\r\n\
IMGCTL-USERLOG-END\r\n\
IMGCTL-OS: uptime 61.25\r\n\
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
        assert_eq!(r.userspace_log.as_deref(), Some(&b"\x1e{\"pcr\":15}\n"[..]));
        assert_eq!(r.uptime_ms, Some(61_250));
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
    fn a_cut_off_or_repeated_userspace_log_is_an_error() {
        let cut = &SAMPLE[..SAMPLE.find("IMGCTL-USERLOG-END").unwrap()];
        let e = GuestReport::parse(cut.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("userspace log"), "{e}");
        assert!(e.to_string().contains("cut off"), "{e}");
        let twice = format!("{SAMPLE}{MARK_USERLOG_BEGIN}\nAA==\n{MARK_USERLOG_END}\n");
        let e = GuestReport::parse(twice.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("second userspace log"), "{e}");
        let bad = format!("{MARK_USERLOG_BEGIN}\n!!\n{MARK_USERLOG_END}\n");
        assert!(GuestReport::parse(bad.as_bytes()).is_err());
    }

    #[test]
    fn a_bad_uptime_is_an_error() {
        for v in ["x", "-1", "inf", "NaN", "1e12"] {
            let line = format!("{MARK_UPTIME}{v}\n");
            assert!(GuestReport::parse(line.as_bytes()).is_err(), "{v:?}");
        }
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
            ulog in proptest::collection::vec(any::<u8>(), 0..300),
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
            text += &format!("{MARK_EVENTLOG_END}\r\n{MARK_USERLOG_BEGIN}\r\n");
            let b64 = base64::engine::general_purpose::STANDARD.encode(&ulog);
            for chunk in b64.as_bytes().chunks(76) {
                text += &format!("{}\r\n", String::from_utf8_lossy(chunk));
            }
            text += &format!("{MARK_USERLOG_END}\r\n{MARK_DONE}\r\n{noise}");
            let r = GuestReport::parse(text.as_bytes()).unwrap();
            prop_assert!(r.done && r.init_reached);
            prop_assert_eq!(r.event_log.as_deref(), Some(&log[..]));
            prop_assert_eq!(r.userspace_log.as_deref(), Some(&ulog[..]));
            let got: BTreeMap<u32, Vec<u8>> = r.pcrs.get(&HashAlg::SHA256).cloned().unwrap_or_default()
                .into_iter().map(|(i, d)| (i, d.0)).collect();
            let want: BTreeMap<u32, Vec<u8>> = values.into_iter().map(|(i, v)| (i, v.to_vec())).collect();
            prop_assert_eq!(got, want);
        }
    }
}
