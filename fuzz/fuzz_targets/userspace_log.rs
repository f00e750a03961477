#![no_main]
//! systemd's userspace measurement log (JSON-SEQ): parse, replay every bank, read break-glass
//! claims, and re-encode records.

use imgctl_measure::bank::HashAlg;
use imgctl_measure::userspace_record::{parse_log, replay, BreakGlass};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(records) = parse_log(data) {
        for bank in HashAlg::ALL {
            if let Ok(zero) = bank.zero() {
                let _ = replay(&records, 15, bank, zero);
            }
        }
        let mut again = Vec::new();
        for r in &records {
            let _ = BreakGlass::from_record(r);
            again.extend(r.to_json_seq());
        }
        assert_eq!(parse_log(&again).expect("own output parses"), records);
    }
});
