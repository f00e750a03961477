//! Break-glass events as the verifier and the auditor read them.
//!
//! The record itself — PCR 15, `eventType` `break-glass`, the measured string
//! `break-glass:` + canonical JSON of `{"actor","kind","reason","time"}` — is defined once, in
//! [`crate::userspace_record::BreakGlass`], which the recorder (`imgctl measure break-glass`)
//! writes with; this module only adapts it to the verifier's parsed userspace log
//! ([`crate::eventlog::UserspaceRecord`]), so recorder and auditor share one encoding.
//! Documented for operators in docs/break-glass.md.

use crate::eventlog::userspace::UserspaceRecord;

pub use crate::userspace_record::{BreakGlass, BREAK_GLASS as EVENT_TYPE, BREAK_GLASS_PCR as PCR};

/// Prefix of the measured string.
pub const PREFIX: &str = "break-glass:";

/// Reads a break-glass claim from a userspace log record: `None` if the record is not one
/// (neither its `eventType` nor its string says so), `Err` if it claims to be one but its
/// string does not decode to the canonical encoding.
pub fn from_record(r: &UserspaceRecord) -> Option<Result<BreakGlass, String>> {
    let by_type = r.event_type.as_deref() == Some(EVENT_TYPE);
    let by_string = r.string.as_deref().is_some_and(|s| s.starts_with(PREFIX));
    if !by_type && !by_string {
        return None;
    }
    let s = r.string.as_deref().unwrap_or_default();
    Some(match s.strip_prefix(PREFIX) {
        Some(json) => serde_json::from_str::<BreakGlass>(json)
            .map_err(|e| format!("undecodable: {e}"))
            .and_then(|b| {
                if b.string() == s {
                    Ok(b)
                } else {
                    Err("not in canonical form".into())
                }
            }),
        None => Err("eventType break-glass without a break-glass: string".into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bank::HashAlg;
    use crate::eventlog::UserspaceLog;
    use crate::userspace_record::Origin;

    #[test]
    fn the_recorders_record_is_read_back_by_the_verifiers_parser() {
        let bg = BreakGlass::new("alice", "debug-shell", "INC-42 \"disk\"", 1_795_395_723).unwrap();
        assert_eq!(
            bg.string(),
            r#"break-glass:{"actor":"alice","kind":"debug-shell","reason":"INC-42 \"disk\"","time":"2026-11-23T01:02:03Z"}"#
        );
        let origin = Origin {
            boot_id: "b00t".into(),
            timestamp_usec: 7,
        };
        let rec = bg
            .record(PCR, &[HashAlg::SHA256, HashAlg::SHA1], &origin)
            .unwrap()
            .to_json_seq();
        let log = UserspaceLog::parse(&rec).unwrap();
        let r = &log.records[0];
        assert_eq!(r.pcr, Some(PCR));
        assert!(r.digest_mismatches().is_empty());
        assert_eq!(from_record(r), Some(Ok(bg)));
    }
}
