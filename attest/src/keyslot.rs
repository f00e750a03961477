//! The unlock-mechanism record of an encrypted volume, in the format systemd 259 writes to its
//! `cryptsetup` NvPCR (`tpm2-measure-keyslot-nvpcr=`, ../shared/reference/systemd-257-and-later.md):
//!
//! `cryptsetup-keyslot:<name>:<LUKS UUID>:<mechanism>:<slot>`
//!
//! `<name>` is the mapping's name with `:` (and `\`, and anything unprintable) escaped as
//! `\xNN`; `<mechanism>` says what opened the key slot (`tpm2`, `fido2`, `pkcs11` for a
//! hardware token; `recovery`, `passphrase`, … otherwise). systemd 257 measures the volume key
//! (the same whichever slot opened it) but not the mechanism; an image may record it in this
//! format (PCR 15 or an NvPCR), so a TPM unlock and a recovery-key unlock can be told apart.
//!
//! For the auditor a volume opened by anything but a hardware-bound token is a break-glass
//! event (fail closed: an unknown mechanism is one too), and a record that claims the prefix
//! but does not parse is reported, not skipped.

use serde::Serialize;

use crate::eventlog::userspace::UserspaceRecord;

/// Prefix of the measured string.
pub const PREFIX: &str = "cryptsetup-keyslot:";
/// The mechanisms that are a hardware-bound token: an unlock by one of them is routine.
pub const TOKEN_MECHANISMS: &[&str] = &["tpm2", "fido2", "pkcs11"];

/// A parsed unlock-mechanism record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyslotRecord {
    /// The mapping's name, unescaped.
    pub volume: String,
    pub uuid: String,
    pub mechanism: String,
    pub slot: u32,
}

impl KeyslotRecord {
    /// Parses `cryptsetup-keyslot:<name>:<uuid>:<mechanism>:<slot>`; `None` without the prefix.
    pub fn parse(s: &str) -> Option<Result<KeyslotRecord, String>> {
        let rest = s.strip_prefix(PREFIX)?;
        Some(Self::parse_fields(rest).map_err(|why| format!("{s:?}: {why}")))
    }

    fn parse_fields(rest: &str) -> Result<KeyslotRecord, String> {
        let fields: Vec<&str> = rest.split(':').collect();
        let [name, uuid, mechanism, slot] = fields[..] else {
            return Err(format!(
                "expected <name>:<uuid>:<mechanism>:<slot> after {PREFIX}, found {} field(s)",
                fields.len()
            ));
        };
        let volume = unescape(name)?;
        if volume.is_empty() {
            return Err("the volume name is empty".into());
        }
        let is_uuid = uuid.len() == 36
            && uuid.char_indices().all(|(i, c)| {
                if matches!(i, 8 | 13 | 18 | 23) {
                    c == '-'
                } else {
                    c.is_ascii_hexdigit()
                }
            });
        if !is_uuid {
            return Err(format!("{uuid:?} is not a LUKS UUID"));
        }
        if mechanism.is_empty()
            || !mechanism
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(format!("{mechanism:?} is not a mechanism name"));
        }
        if slot.is_empty() || slot.len() > 3 || !slot.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("{slot:?} is not a key slot number"));
        }
        Ok(KeyslotRecord {
            volume,
            uuid: uuid.to_ascii_lowercase(),
            mechanism: mechanism.to_owned(),
            slot: slot
                .parse()
                .map_err(|_| format!("{slot:?} is not a key slot number"))?,
        })
    }

    /// Whether this unlock is break-glass: anything but a hardware-bound token.
    pub fn is_break_glass(&self) -> bool {
        !TOKEN_MECHANISMS.contains(&self.mechanism.as_str())
    }

    /// The measured string (the name escaped as systemd's `xescape(name, ":")`).
    pub fn string(&self) -> String {
        format!(
            "{PREFIX}{}:{}:{}:{}",
            escape(&self.volume),
            self.uuid,
            self.mechanism,
            self.slot
        )
    }
}

/// Reads an unlock-mechanism record from a userspace log record: `None` if its string does not
/// start with [`PREFIX`].
pub fn from_record(r: &UserspaceRecord) -> Option<Result<KeyslotRecord, String>> {
    KeyslotRecord::parse(r.string.as_deref()?)
}

/// systemd's `xescape(s, ":")`: `:`, `\` and bytes outside printable ASCII as `\xNN`.
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b == b':' || b == b'\\' || !(0x20..0x7f).contains(&b) {
            out.push_str(&format!("\\x{b:02x}"));
        } else {
            out.push(char::from(b));
        }
    }
    out
}

/// The inverse of [`escape`]; the result must be UTF-8.
pub(crate) fn unescape(s: &str) -> Result<String, String> {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            let hex = b
                .get(i + 1..i + 4)
                .filter(|h| h[0] == b'x')
                .and_then(|h| std::str::from_utf8(&h[1..]).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad escape in the name {s:?}"))?;
            out.push(hex);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("the name {s:?} is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_parse_round_trip_and_classify() {
        let s = "cryptsetup-keyslot:var:08a4b5bd-a0d3-4b2a-931b-efd7c5c09f1b:tpm2:0";
        let k = KeyslotRecord::parse(s).unwrap().unwrap();
        assert_eq!(k.volume, "var");
        assert_eq!(k.mechanism, "tpm2");
        assert_eq!(k.slot, 0);
        assert!(!k.is_break_glass());
        assert_eq!(k.string(), s);
        let r = KeyslotRecord::parse(&s.replace(":tpm2:0", ":recovery:1"))
            .unwrap()
            .unwrap();
        assert!(r.is_break_glass());
        let odd = KeyslotRecord {
            volume: "a:b\\c".into(),
            ..k.clone()
        };
        assert!(odd.string().contains("a\\x3ab\\x5cc"));
        assert_eq!(KeyslotRecord::parse(&odd.string()).unwrap().unwrap(), odd);
        let unknown = KeyslotRecord::parse(&s.replace(":tpm2:", ":magic:"))
            .unwrap()
            .unwrap();
        assert!(unknown.is_break_glass(), "fail closed");
    }

    #[test]
    fn malformed_records_are_errors_and_others_are_not_records() {
        assert_eq!(KeyslotRecord::parse("cryptsetup:var:x"), None);
        for bad in [
            "cryptsetup-keyslot:",
            "cryptsetup-keyslot:var:not-a-uuid:tpm2:0",
            "cryptsetup-keyslot:var:08a4b5bd-a0d3-4b2a-931b-efd7c5c09f1b:tpm2:x",
            "cryptsetup-keyslot:var:08a4b5bd-a0d3-4b2a-931b-efd7c5c09f1b:tpm2:0:extra",
            "cryptsetup-keyslot::08a4b5bd-a0d3-4b2a-931b-efd7c5c09f1b:tpm2:0",
            "cryptsetup-keyslot:v\\x:08a4b5bd-a0d3-4b2a-931b-efd7c5c09f1b:tpm2:0",
            "cryptsetup-keyslot:var:08a4b5bd-a0d3-4b2a-931b-efd7c5c09f1b:TPM2:0",
        ] {
            assert!(matches!(KeyslotRecord::parse(bad), Some(Err(_))), "{bad}");
        }
    }
}
