#![no_main]
//! systemd's userspace (CEL-JSON-like) log parser, replay and break-glass decoding.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(log) = imgctl_measure::eventlog::UserspaceLog::parse(data) {
        let _ = log.replay();
        for r in &log.records {
            let _ = r.digest_mismatches();
            let _ = imgctl_measure::breakglass::from_record(r);
        }
    }
});
