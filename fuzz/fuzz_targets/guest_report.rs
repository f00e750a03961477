//! The guest's console report (the demo initrd's, an OS image's capture unit): arbitrary
//! serial output must parse or fail, never panic; what parses must be consistent (digest sizes
//! match their bank; a captured userspace log goes through the one userspace-log parser
//! without panicking).
#![no_main]

use imgctl_attest::guest_report::GuestReport;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(report) = GuestReport::parse(data) {
        for (bank, values) in &report.pcrs {
            for digest in values.values() {
                assert_eq!(Some(digest.as_bytes().len()), bank.digest_size());
            }
        }
        // What `vm --capture` writes as pcrs.json reads back to the same values.
        let text = serde_json::to_vec(&imgctl_attest::eventlog::PcrValuesJson(&report.pcrs)).unwrap();
        assert_eq!(imgctl_attest::eventlog::pcr_values_from_json(&text).unwrap(), report.pcrs);
        // What `vm --capture` writes as tpm2-measure.log is what `verify --userspace-log` reads.
        if let Some(log) = &report.userspace_log {
            if let Ok(parsed) = imgctl_attest::eventlog::userspace::UserspaceLog::parse(log) {
                let _ = parsed.replay();
            }
        }
    }
});
