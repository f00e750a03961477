//! Break-glass records: how a human overriding the normal, measured state of a machine (a
//! debug shell, an emergency login, a recovery-key unlock) is measured and logged, so that an
//! auditor can find it later. Shared by the recording side (`imgctl measure break-glass`) and
//! the auditor (`imgctl audit`): both build and read the record with this module, so the
//! two cannot disagree. Documented for operators in docs/break-glass.md.
//!
//! A break-glass event is one userspace measurement, made the way systemd makes its own
//! (../shared/reference/systemd.md §2, §4.1):
//! - **PCR 15** ([`PCR`]), extended in every active bank with `H_bank(string)`. PCR 15 cannot be
//!   reset without a reboot (unlike PCR 16 and 23), and secrets sealed to PCR 15's boot-time
//!   value stop unsealing until the next boot: breaking glass is visible to every policy that
//!   looks at PCR 15.
//! - `string` = `"break-glass:"` followed by the canonical JSON (keys sorted, no whitespace) of
//!   `{"actor":…,"kind":…,"reason":…,"time":…}`; `time` is RFC 3339 UTC given by the caller.
//! - the record appended to `/run/log/systemd/tpm2-measure.log` (JSON-SEQ, CEL-JSON-like) is
//!   `{"pcr":15,"digests":[{"hashAlg":…,"digest":…}…],"content_type":"imgctl","content":{
//!   "string":…,"bootId":…,"timestamp":…,"eventType":"break-glass"}}`.

use serde::{Deserialize, Serialize};

use crate::bank::{Digest, HashAlg};
use crate::eventlog::userspace::{UserspaceRecord, RS};
use crate::Error;

/// The PCR break-glass events are measured into.
pub const PCR: u32 = 15;
/// `content.eventType` of a break-glass record.
pub const EVENT_TYPE: &str = "break-glass";
/// `content_type` of a break-glass record.
pub const CONTENT_TYPE: &str = "imgctl";
/// Prefix of the measured string.
pub const PREFIX: &str = "break-glass:";

/// What happened, by whom, when and why. Field order is the canonical (sorted) key order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakGlass {
    /// Who broke the glass (user name, ticket holder, key id).
    pub actor: String,
    /// What kind of override, e.g. `debug-shell`, `emergency-login`, `recovery-key`.
    pub kind: String,
    /// Why, in the actor's words (ticket reference welcome).
    pub reason: String,
    /// When, RFC 3339 UTC (e.g. `2026-11-23T01:02:03Z`).
    pub time: String,
}

impl BreakGlass {
    /// A record with every field non-empty and free of control characters.
    pub fn new(actor: &str, kind: &str, reason: &str, time: &str) -> Result<Self, Error> {
        for (name, v) in [
            ("actor", actor),
            ("kind", kind),
            ("reason", reason),
            ("time", time),
        ] {
            if v.is_empty() || v.chars().any(char::is_control) {
                return Err(Error::InvalidInput(format!(
                    "break-glass {name} must be non-empty text without control characters"
                )));
            }
        }
        Ok(BreakGlass {
            actor: actor.into(),
            kind: kind.into(),
            reason: reason.into(),
            time: time.into(),
        })
    }

    /// The measured string: `break-glass:{"actor":…,"kind":…,"reason":…,"time":…}`.
    pub fn measured_string(&self) -> String {
        // Serialising a struct of strings cannot fail; the field order is the sorted key order.
        format!(
            "{PREFIX}{}",
            serde_json::to_string(self).unwrap_or_default()
        )
    }

    /// The bytes hashed into every bank (the UTF-8 measured string, no NUL).
    pub fn measured_bytes(&self) -> Vec<u8> {
        self.measured_string().into_bytes()
    }

    /// The digest to extend PCR 15 with in each bank.
    pub fn digests(&self, banks: &[HashAlg]) -> Result<Vec<(HashAlg, Digest)>, Error> {
        let data = self.measured_bytes();
        banks.iter().map(|b| Ok((*b, b.hash(&data)?))).collect()
    }

    /// The JSON-SEQ record (RS, JSON, newline) to append to the userspace log.
    pub fn log_record(
        &self,
        banks: &[HashAlg],
        boot_id: &str,
        timestamp_usec: u64,
    ) -> Result<Vec<u8>, Error> {
        let digests: Vec<serde_json::Value> = self
            .digests(banks)?
            .into_iter()
            .map(|(b, d)| serde_json::json!({"hashAlg": b.to_string(), "digest": d.to_hex()}))
            .collect();
        let record = serde_json::json!({
            "pcr": PCR,
            "digests": digests,
            "content_type": CONTENT_TYPE,
            "content": {
                "string": self.measured_string(),
                "bootId": boot_id,
                "timestamp": timestamp_usec,
                "eventType": EVENT_TYPE,
            }
        });
        let mut out = vec![RS];
        out.extend_from_slice(record.to_string().as_bytes());
        out.push(b'\n');
        Ok(out)
    }

    /// Reads a break-glass event back from a userspace log record: `None` if the record is not
    /// one, `Err` if it claims to be one but its string does not decode.
    pub fn from_record(r: &UserspaceRecord) -> Option<Result<Self, String>> {
        let by_type = r.event_type.as_deref() == Some(EVENT_TYPE);
        let by_string = r.string.as_deref().is_some_and(|s| s.starts_with(PREFIX));
        if !by_type && !by_string {
            return None;
        }
        let s = r.string.as_deref().unwrap_or_default();
        Some(match s.strip_prefix(PREFIX) {
            Some(json) => serde_json::from_str(json).map_err(|e| format!("undecodable: {e}")),
            None => Err("eventType break-glass without a break-glass: string".into()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eventlog::UserspaceLog;

    #[test]
    fn record_round_trips_through_the_userspace_log_parser() {
        let bg = BreakGlass::new(
            "alice",
            "debug-shell",
            "INC-42 \"disk\"",
            "2026-11-23T01:02:03Z",
        )
        .unwrap();
        assert_eq!(
            bg.measured_string(),
            r#"break-glass:{"actor":"alice","kind":"debug-shell","reason":"INC-42 \"disk\"","time":"2026-11-23T01:02:03Z"}"#
        );
        let rec = bg
            .log_record(&[HashAlg::SHA256, HashAlg::SHA1], "b00t", 7)
            .unwrap();
        let log = UserspaceLog::parse(&rec).unwrap();
        let r = &log.records[0];
        assert_eq!(r.pcr, Some(PCR));
        assert!(r.digest_mismatches().is_empty());
        assert_eq!(BreakGlass::from_record(r), Some(Ok(bg)));
    }

    #[test]
    fn control_characters_are_refused() {
        assert!(BreakGlass::new("a\nb", "k", "r", "t").is_err());
        assert!(BreakGlass::new("a", "", "r", "t").is_err());
    }
}
