//! A transparency log entry: the canonical bytes stored in the log (`LogEntry::parse` for v1,
//! `Entry::parse` for v1 and the v2 artifact record) and the JSON forms `imgctl log append
//! --entry FILE` reads (`LogEntry::from_json`, `Entry::from_json`). Each round-trips.
#![no_main]

use imgctl_tlog::{Entry, LogEntry};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(e) = LogEntry::parse(data) {
        assert_eq!(e.encode(), data);
        assert_eq!(LogEntry::from_json(&e.to_json()).as_ref(), Ok(&e));
    }
    if let Ok(e) = Entry::parse(data) {
        assert_eq!(e.encode().ok().as_deref(), Some(data));
        assert_eq!(Entry::from_json(&e.to_json()).ok().as_ref(), Some(&e));
    }
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        if let Ok(e) = LogEntry::from_json(&v) {
            assert_eq!(LogEntry::parse(&e.encode()).as_ref(), Ok(&e));
        }
        if let Ok(e) = Entry::from_json(&v) {
            let bytes = e.encode().expect("a read record encodes");
            assert_eq!(Entry::parse(&bytes).ok().as_ref(), Some(&e));
        }
    }
});
