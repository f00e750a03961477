//! TPMT_SIGNATURE (`imgctl verify --signature FILE`, `tpm2_quote -s`), alone and against a
//! TPMS_ATTEST taken from the same input.
#![no_main]

use imgctl_attest::quote::{Attest, Signature};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Signature::parse(data);
    if let Ok((_attest, rest)) = Attest::parse(data) {
        let _ = Signature::parse(rest);
    }
});
