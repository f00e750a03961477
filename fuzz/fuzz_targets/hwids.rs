//! The `.hwids` section (`imgctl_measure::hwids::decode`) and ukify's hwid JSON files
//! (`parse_json`), then encoding what was read.
#![no_main]

use imgctl_measure::hwids;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(records) = hwids::decode(data) {
        for r in &records {
            let _ = hwids::format_uuid(&r.chid);
        }
    }
    if let Ok(device) = hwids::parse_json("fuzz.json", data) {
        let _ = hwids::encode(&[device]);
    }
});
