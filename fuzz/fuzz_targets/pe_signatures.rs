//! Authenticode as `imgctl inspect` and `imgctl sign-pe` read it: the certificate table, each
//! WIN_CERTIFICATE's PKCS#7 SignedData and SpcIndirectDataContent, and preparing the image
//! for signing (--replace and --append) with a signature attached.
#![no_main]

use imgctl_measure::authenticode_sign::{ExistingSignatures, Unsigned};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = imgctl_extensions::authenticode::pe_signatures(data);
    let _ = imgctl_extensions::pkcs7::read_authenticode(data);
    for mode in [ExistingSignatures::Replace, ExistingSignatures::Append] {
        if let Ok(u) = Unsigned::new(data, mode) {
            let _ = u.indirect_data();
            let _ = u.attach(&[b"0\x00"]);
        }
    }
});
