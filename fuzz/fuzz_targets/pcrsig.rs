#![no_main]
//! `.pcrsig` JSON (UKI section or file): parse, look up, verify against a fixed key, re-encode.

use imgctl_measure::bank::HashAlg;
use imgctl_measure::pcrsig::PcrSignature;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(doc) = PcrSignature::parse(data) {
        let _ = doc.find(HashAlg::SHA256, &[0; 32], &[0; 32]);
        for entries in doc.banks.values() {
            for e in entries {
                let _ = e.policy();
                let _ = e.signature();
            }
        }
        let again = PcrSignature::parse(doc.to_json().as_bytes()).expect("own output parses");
        assert_eq!(again, doc);
    }
});
