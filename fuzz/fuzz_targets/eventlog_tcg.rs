#![no_main]
//! The TCG firmware event log parser, descriptions, lint and replay: never panic.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(log) = imgctl_attest::eventlog::EventLog::parse(data) {
        for e in &log.events {
            let _ = imgctl_attest::eventlog::describe(e);
        }
        let _ = imgctl_attest::eventlog::lint::lint(&log);
        let _ = imgctl_attest::eventlog::replay(&log);
    }
});
