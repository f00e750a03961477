//! PCR values (`{"<bank>": {"<pcr>": "<hex>"}}`) as `imgctl audit --pcrs` reads them: whatever
//! parses has digests of its bank's size and writes back to the same values.
#![no_main]

use imgctl_attest::eventlog::{pcr_values_from_json, PcrValuesJson};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(values) = pcr_values_from_json(data) {
        for (bank, pcrs) in &values {
            for (pcr, d) in pcrs {
                assert!(*pcr <= 23);
                assert_eq!(Some(d.as_bytes().len()), bank.digest_size());
            }
        }
        let text = serde_json::to_vec(&PcrValuesJson(&values)).unwrap();
        assert_eq!(pcr_values_from_json(&text).unwrap(), values);
    }
});
