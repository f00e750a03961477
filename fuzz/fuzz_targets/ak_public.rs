//! The attestation key `imgctl verify --ak FILE` reads: TPM2B_PUBLIC, TPMT_PUBLIC, or a PEM/DER
//! SubjectPublicKeyInfo.
#![no_main]

use imgctl_attest::quote::AkPublic;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = AkPublic::parse(data);
});
