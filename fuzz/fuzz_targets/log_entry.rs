//! A transparency log entry: the canonical bytes stored in the log (`LogEntry::parse`) and the
//! JSON form `imgctl log append --entry FILE` reads (`LogEntry::from_json`). Each round-trips.
#![no_main]

use imgctl_tlog::LogEntry;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(e) = LogEntry::parse(data) {
        assert_eq!(e.encode(), data);
        assert_eq!(LogEntry::from_json(&e.to_json()).as_ref(), Ok(&e));
    }
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        if let Ok(e) = LogEntry::from_json(&v) {
            assert_eq!(LogEntry::parse(&e.encode()).as_ref(), Ok(&e));
        }
    }
});
