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
/// string does not decode to the canonical encoding. The rule is
/// [`crate::userspace_record::break_glass_claim`], shared with the recorder's parser.
pub fn from_record(r: &UserspaceRecord) -> Option<Result<BreakGlass, String>> {
    BreakGlass::from_record(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eventlog::UserspaceLog;
    use crate::userspace_record::Origin;
    use imgctl_measure::bank::HashAlg;

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

#[cfg(test)]
mod one_rule {
    use super::*;
    use crate::eventlog::UserspaceLog;
    use crate::userspace_record::Origin;
    use imgctl_measure::bank::HashAlg;

    /// Defect H27: the recorder's parser found break-glass by type only, the verifier's by type
    /// or prefix. There is one parser and one rule now: a record is break-glass by type or by
    /// prefix, and valid only in canonical form.
    #[test]
    fn break_glass_is_found_by_type_or_prefix_and_checked() {
        let o = Origin {
            boot_id: "0".into(),
            timestamp_usec: 1,
        };
        let bg = BreakGlass::new("alice", "debug-shell", "why", 0).unwrap();
        let records = [
            bg.record(PCR, &[HashAlg::SHA256], &o).unwrap(),
            // The type hidden: still a break-glass record.
            UserspaceRecord::new(PCR, &[HashAlg::SHA256], bg.string(), "imgctl", &o).unwrap(),
            // The type without the encoding: a broken claim.
            UserspaceRecord::new(PCR, &[HashAlg::SHA256], "x".into(), EVENT_TYPE, &o).unwrap(),
            UserspaceRecord::phase("ready", &[HashAlg::SHA256], &o).unwrap(),
        ];
        let bytes: Vec<u8> = records
            .iter()
            .flat_map(UserspaceRecord::to_json_seq)
            .collect();
        let parsed = UserspaceLog::parse(&bytes).unwrap();
        let found: Vec<_> = parsed
            .records
            .iter()
            .map(|r| from_record(r).map(|x| x.is_ok()))
            .collect();
        assert_eq!(found, vec![Some(true), Some(true), Some(false), None]);
    }
}
