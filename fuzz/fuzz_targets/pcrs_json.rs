//! `pcrs.json` (`systemd-measure calculate --json`, `imgctl predict-pcrs --json`) as
//! `imgctl verify` reads it from a policy's references.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(values) = imgctl_attest::verify::parse_pcrs_json("pcrs.json", data) {
        for v in &values {
            assert_eq!(Some(v.value.as_bytes().len()), v.bank.digest_size());
        }
    }
});
