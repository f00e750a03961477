#![no_main]
//! EK certificates (imgctl serve's enrolment with `ek_ca_files`, `ek_intermediate_files`): any
//! bytes as the certificate, as a CA file and as a root and intermediate pair, checked against
//! a fixed EK; an error or a verdict, never a panic.
use imgctl_attest::tpm_public::TpmPublic;
use imgctl_service::ek_cert::EkCas;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = EkCas::parse(&[("ca.pem".to_owned(), data.to_vec())]);
    // Split in two: a root file and an intermediate file, the chain built between them.
    let (root, intermediate) = data.split_at(data.len() / 2);
    let _ = EkCas::parse_chained(
        &[("root.pem".to_owned(), root.to_vec())],
        &[("intermediate.pem".to_owned(), intermediate.to_vec())],
    );
    // A minimal RSA EK public area (TCG template L-1 shape, 1-byte modulus): parse it once.
    let mut ek = vec![0x00, 0x01, 0x00, 0x0b, 0x00, 0x03, 0x00, 0xb2, 0x00, 0x00];
    ek.extend_from_slice(&[0x00, 0x06, 0x00, 0x80, 0x00, 0x43, 0x00, 0x10, 0x08, 0x00]);
    ek.extend_from_slice(&[0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0xff]);
    if let Ok(ek) = TpmPublic::parse(&ek) {
        let _ = EkCas::default().check(data, &ek, 0);
    }
});
