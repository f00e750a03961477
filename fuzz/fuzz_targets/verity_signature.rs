//! The verity signature partition reader (NUL-padded JSON) `imgctl ext inspect` runs.
#![no_main]

use imgctl_extensions::sigpart::VeritySignature;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(sig) = VeritySignature::parse(data) {
        let again = VeritySignature::parse(&sig.to_partition()).expect("written partition parses");
        assert_eq!(again, sig);
    }
});
