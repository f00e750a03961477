#![no_main]
//! TPMT_PUBLIC (EK/AK of an enrolment) and tpm2-tools credential files; MakeCredential for
//! whatever EK parses.
use imgctl_service::credential::{make_credential, CredentialFile};
use imgctl_attest::tpm_public::TpmPublic;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = CredentialFile::parse(data);
    if let Ok(k) = TpmPublic::parse(data) {
        let _ = k.check_ak();
        let name = k.name.clone();
        let _ = make_credential(&k, &name, b"secret");
    }
});
