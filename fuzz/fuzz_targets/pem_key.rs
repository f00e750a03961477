#![no_main]
//! PEM keys (private and public) as `sign-pcrs`, `tpm seal` and `tpm unseal` read them.

use imgctl_measure::keys::{SigningKey, VerifyingKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(k) = VerifyingKey::from_pem(data) {
        let t = k.tpm();
        let _ = t.name();
        let _ = t.fingerprint();
        let _ = VerifyingKey::from_tpm(&t);
    }
    if let Ok(k) = SigningKey::from_pem(data) {
        let _ = k.public().tpmt_public();
    }
});
