//! The verification policy `imgctl verify --policy` reads (YAML, or JSON which is YAML).
#![no_main]

use imgctl_attest::verify::Policy;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Policy::parse(text);
    }
});
