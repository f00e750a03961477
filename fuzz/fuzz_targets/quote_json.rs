//! A quote file (`{"quote", "signature"}` or go-attestation's `{"Quote": {…}}`) as
//! `imgctl verify --quote` reads it, then the blobs as the verifier parses them.
#![no_main]

use imgctl_attest::quote::{parse_quote_json, Attest, Signature};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((attest, signature)) = parse_quote_json(data) {
        let _ = Attest::parse(&attest);
        let _ = Signature::parse(&signature);
    }
});
