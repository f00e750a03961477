#![no_main]
//! systemd's userspace measurement log (JSON-SEQ), the one parser the recorder, the verifier and
//! the auditor share: parse, replay every bank, unescape systemd's strings, read break-glass claims and unlock-mechanism records, and re-encode records
//! (what was parsed encodes to a log that parses to the same records).
use imgctl_attest::eventlog::UserspaceLog;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(log) = UserspaceLog::parse(data) {
        let _ = log.replay();
        let mut again = Vec::new();
        for r in &log.records {
            let _ = r.digest_mismatches();
            // systemd's C-escaped strings: what unescapes escapes back to the same text.
            if let Some(s) = r.string.as_deref() {
                if let Some(b) = imgctl_attest::eventlog::userspace::systemd_cunescape(s) {
                    assert_eq!(imgctl_attest::eventlog::userspace::systemd_cescape(&b), s);
                }
            }
            let _ = imgctl_attest::breakglass::from_record(r);
            // Unlock-mechanism records: what parses re-encodes to the same string.
            if let Some(Ok(k)) = imgctl_attest::keyslot::from_record(r) {
                let s = k.string();
                assert_eq!(
                    imgctl_attest::keyslot::KeyslotRecord::parse(&s),
                    Some(Ok(k))
                );
            }
            // Extension-activation records: what parses re-encodes to the same string.
            if let Some(Ok(v)) = imgctl_attest::userspace_record::VerityRecord::from_record(r) {
                let s = v.string();
                assert_eq!(
                    imgctl_attest::userspace_record::VerityRecord::parse(&s),
                    Some(Ok(v))
                );
            }
            again.extend(r.to_json_seq());
        }
        let back = UserspaceLog::parse(&again).expect("own output parses");
        let key = |l: &UserspaceLog| {
            l.records
                .iter()
                .map(|r| {
                    (
                        r.pcr,
                        r.nv_index_name.clone(),
                        r.digests.clone(),
                        r.content_type.clone(),
                        r.event_type.clone(),
                        r.string.clone(),
                        r.boot_id.clone(),
                        r.timestamp,
                    )
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(key(&back), key(&log));
    }
});
