#![no_main]
//! TPMT_PUBLIC (EK/AK of an enrolment) and tpm2-tools credential files; MakeCredential for
//! whatever EK parses; the software ActivateCredential (soft_tpm) on whatever file parses.
use imgctl_attest::tpm_public::TpmPublic;
use imgctl_service::credential::{make_credential, CredentialFile};
use imgctl_service::soft_tpm::SoftTpm;
use libfuzzer_sys::fuzz_target;

/// One software TPM for the whole run (an RSA-2048 key generation per input would be slow).
static SOFT: std::sync::OnceLock<Option<SoftTpm>> = std::sync::OnceLock::new();

fuzz_target!(|data: &[u8]| {
    if let Ok(f) = CredentialFile::parse(data) {
        if let Some(t) = SOFT.get_or_init(|| SoftTpm::new().ok()) {
            let _ = t.activate_credential(&f.0);
        }
    }
    if let Ok(k) = TpmPublic::parse(data) {
        let _ = k.check_ak();
        let name = k.name.clone();
        let _ = make_credential(&k, &name, b"secret");
    }
});
