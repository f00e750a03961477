#![no_main]
//! EK certificates (imgctl serve's enrolment with `ek_ca_files`): any bytes as the certificate
//! and as a CA file, checked against a fixed EK; an error or a verdict, never a panic.
use imgctl_attest::tpm_public::TpmPublic;
use imgctl_service::ek_cert::EkCas;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = EkCas::parse(&[("ca.pem".to_owned(), data.to_vec())]);
    // A minimal RSA EK public area (TCG template L-1 shape, 1-byte modulus): parse it once.
    let mut ek = vec![0x00, 0x01, 0x00, 0x0b, 0x00, 0x03, 0x00, 0xb2, 0x00, 0x00];
    ek.extend_from_slice(&[0x00, 0x06, 0x00, 0x80, 0x00, 0x43, 0x00, 0x10, 0x08, 0x00]);
    ek.extend_from_slice(&[0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0xff]);
    if let Ok(ek) = TpmPublic::parse(&ek) {
        let _ = EkCas::default().check(data, &ek, 0);
    }
});
