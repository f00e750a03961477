#![no_main]
//! TPMS_ATTEST, TPMT_SIGNATURE and AK public key parsers, and quote verification.
use imgctl_attest::quote::{verify_quote, AkPublic, Attest, Signature};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Attest::parse(data);
    let _ = Signature::parse(data);
    let _ = AkPublic::parse(data);
    // Split the input into attest | signature | key and run the whole check.
    if data.len() > 4 {
        let a = usize::from(data[0]) % data.len();
        let b = a + (usize::from(data[1]) % (data.len() - a));
        let (q, rest) = data.split_at(a);
        let (s, k) = rest.split_at(b - a);
        if let (Ok(sig), Ok(ak)) = (Signature::parse(s), AkPublic::parse(k)) {
            let _ = verify_quote(q, &sig, &ak, b"", |bank, _| bank.zero().ok());
        }
    }
});
