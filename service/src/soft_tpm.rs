//! A TPM stand-in in software, for load runs and tests: an RSA-2048 EK from the TCG default
//! template (EK Credential Profile, template L-1), an ECDSA P-256 AK with the attributes of
//! `imgctl-tpm`'s AK, [`crate::credential::activate_credential`] for enrolment and released
//! secrets, and quotes (`TPMS_ATTEST` signed by the AK) over PCR values the caller gives,
//! such as a recorded boot's event log replayed. Its keys live in process memory, so it proves
//! nothing about a machine: the service cannot tell it from a TPM, which is what lets one host
//! simulate a fleet through the real API. Pure: no file, process or TPM I/O.
//!
//! ```text
//! TPMS_ATTEST (Part 2 §10.12.12): u32 magic 0xff544347 | u16 type 0x8018 (ATTEST_QUOTE)
//!   | TPM2B_NAME qualifiedSigner | TPM2B_DATA extraData (the nonce)
//!   | TPMS_CLOCK_INFO {u64 clock, u32 resetCount, u32 restartCount, u8 safe}
//!   | u64 firmwareVersion | TPMS_QUOTE_INFO {TPML_PCR_SELECTION, TPM2B_DIGEST pcrDigest}
//! TPMT_SIGNATURE (ECDSA): u16 0x0018 | u16 hashAlg | TPM2B r | TPM2B s
//! ```

use imgctl_attest::quote::{TPM_ALG_ECC, TPM_ALG_NULL, TPM_ALG_RSA, TPM_ECC_NIST_P256};
use imgctl_attest::tpm_public::{attr, TpmPublic, TPM_ALG_AES, TPM_ALG_CFB};
use imgctl_measure::bank::{Digest, HashAlg};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING};

use crate::credential::{activate_credential, Credential, CredentialError};

const TPM_ALG_ECDSA: u16 = 0x0018;
const TPM_ALG_SHA256: u16 = 0x000b;
const TPM_ST_ATTEST_QUOTE: u16 = 0x8018;
const TPM_GENERATED_VALUE: u32 = 0xff54_4347;
/// `TPMA_OBJECT` bits beyond those `imgctl_attest` names.
const USER_WITH_AUTH: u32 = 1 << 6;
const ADMIN_WITH_POLICY: u32 = 1 << 7;
/// `PolicySecret(TPM_RH_ENDORSEMENT)`: the authPolicy of the TCG default EK templates.
const EK_POLICY: [u8; 32] = [
    0x83, 0x71, 0x97, 0x67, 0x44, 0x84, 0xb3, 0xf8, 0x1a, 0x90, 0xcc, 0x8d, 0x46, 0xa5, 0xd7, 0x24,
    0xfd, 0x52, 0xd7, 0x6e, 0x06, 0x52, 0x0b, 0x64, 0xf2, 0xa1, 0xda, 0x1b, 0x33, 0x14, 0x69, 0xaa,
];

/// Why the stand-in could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum SoftTpmError {
    #[error("software TPM: {0}")]
    Key(String),
    #[error("software TPM: PCR {pcr} of {bank} has no value to quote")]
    MissingPcr { bank: HashAlg, pcr: u32 },
    #[error("software TPM: {0}")]
    Too(&'static str),
    #[error(transparent)]
    Credential(#[from] CredentialError),
}

/// A software EK and AK.
pub struct SoftTpm {
    ek_key: rsa::RsaPrivateKey,
    ek: TpmPublic,
    ak_key: EcdsaKeyPair,
    ak: TpmPublic,
    clock: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for SoftTpm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SoftTpm(EK {})", hex::encode(&self.ek.name))
    }
}

fn put2b(out: &mut Vec<u8>, data: &[u8]) -> Result<(), SoftTpmError> {
    let n = u16::try_from(data.len()).map_err(|_| SoftTpmError::Too("a TPM2B over 64 KiB"))?;
    out.extend_from_slice(&n.to_be_bytes());
    out.extend_from_slice(data);
    Ok(())
}

fn left_pad(v: &[u8], size: usize) -> Vec<u8> {
    let v = &v[v.iter().position(|b| *b != 0).unwrap_or(v.len())..];
    let mut out = vec![0; size.saturating_sub(v.len())];
    out.extend_from_slice(v);
    out
}

/// The EK's `TPMT_PUBLIC` (template L-1: RSA-2048, SHA-256, AES-128-CFB, restricted decrypt,
/// PolicySecret(endorsement)).
fn ek_public(modulus: &[u8]) -> Result<Vec<u8>, SoftTpmError> {
    let mut p = Vec::new();
    p.extend_from_slice(&TPM_ALG_RSA.to_be_bytes());
    p.extend_from_slice(&TPM_ALG_SHA256.to_be_bytes());
    let a = attr::FIXED_TPM
        | attr::FIXED_PARENT
        | attr::SENSITIVE_DATA_ORIGIN
        | ADMIN_WITH_POLICY
        | attr::RESTRICTED
        | attr::DECRYPT;
    p.extend_from_slice(&a.to_be_bytes());
    put2b(&mut p, &EK_POLICY)?;
    for v in [TPM_ALG_AES, 128, TPM_ALG_CFB, TPM_ALG_NULL, 2048] {
        p.extend_from_slice(&v.to_be_bytes());
    }
    p.extend_from_slice(&0u32.to_be_bytes()); // exponent: the default 65537
    put2b(&mut p, &left_pad(modulus, 256))?;
    Ok(p)
}

/// The AK's `TPMT_PUBLIC` (ECDSA P-256 with SHA-256, restricted signing, fixed to its TPM).
fn ak_public(x: &[u8], y: &[u8]) -> Result<Vec<u8>, SoftTpmError> {
    let mut p = Vec::new();
    p.extend_from_slice(&TPM_ALG_ECC.to_be_bytes());
    p.extend_from_slice(&TPM_ALG_SHA256.to_be_bytes());
    let a = attr::FIXED_TPM
        | attr::FIXED_PARENT
        | attr::SENSITIVE_DATA_ORIGIN
        | USER_WITH_AUTH
        | attr::RESTRICTED
        | attr::SIGN_ENCRYPT;
    p.extend_from_slice(&a.to_be_bytes());
    put2b(&mut p, &[])?;
    for v in [
        TPM_ALG_NULL,
        TPM_ALG_ECDSA,
        TPM_ALG_SHA256,
        TPM_ECC_NIST_P256,
        TPM_ALG_NULL,
    ] {
        p.extend_from_slice(&v.to_be_bytes());
    }
    put2b(&mut p, x)?;
    put2b(&mut p, y)?;
    Ok(p)
}

impl SoftTpm {
    /// A new machine: a fresh RSA-2048 EK and a fresh P-256 AK.
    pub fn new() -> Result<SoftTpm, SoftTpmError> {
        use rsa::traits::PublicKeyParts as _;
        let key = |e: &dyn std::fmt::Display| SoftTpmError::Key(e.to_string());
        let ek_key =
            rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).map_err(|e| key(&e))?;
        let ek = TpmPublic::parse(&ek_public(&ek_key.n().to_bytes_be())?).map_err(|e| key(&e))?;
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|e| key(&e))?;
        let ak_key =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
                .map_err(|e| key(&e))?;
        // ring's public key is the uncompressed point 04 || x || y.
        let point = ak_key.public_key().as_ref();
        let (x, y) = point
            .get(1..33)
            .zip(point.get(33..65))
            .ok_or_else(|| SoftTpmError::Key("P-256 public key of an unexpected size".into()))?;
        let ak = TpmPublic::parse(&ak_public(x, y)?).map_err(|e| key(&e))?;
        Ok(SoftTpm {
            ek_key,
            ek,
            ak_key,
            ak,
            clock: std::sync::atomic::AtomicU64::new(1000),
        })
    }

    /// The EK's `TPMT_PUBLIC`.
    pub fn ek_public(&self) -> &[u8] {
        &self.ek.bytes
    }

    /// The AK's `TPMT_PUBLIC`.
    pub fn ak_public(&self) -> &[u8] {
        &self.ak.bytes
    }

    /// `nameAlg || H(TPMT_PUBLIC)` of the EK: the machine id is its hex.
    pub fn ek_name(&self) -> &[u8] {
        &self.ek.name
    }

    pub fn ak_name(&self) -> &[u8] {
        &self.ak.name
    }

    /// The EK's private key: a stand-in has nothing to protect, and tests give it to a real
    /// TPM (tpm2_import) to run the TPM's ActivateCredential on the same credential.
    pub fn ek_private_key(&self) -> &rsa::RsaPrivateKey {
        &self.ek_key
    }

    /// The EK's private key as PKCS#1 PEM (what `tpm2_import -G rsa -i` reads).
    pub fn ek_private_pem(&self) -> Result<String, SoftTpmError> {
        use rsa::pkcs1::EncodeRsaPrivateKey as _;
        self.ek_key
            .to_pkcs1_pem(rsa::pkcs8::LineEnding::LF)
            .map(|p| p.to_string())
            .map_err(|e| SoftTpmError::Key(e.to_string()))
    }

    /// The EK's parsed public area.
    pub fn ek(&self) -> &TpmPublic {
        &self.ek
    }

    /// `TPM2_ActivateCredential` with this EK for this AK's Name.
    pub fn activate_credential(&self, cred: &Credential) -> Result<Vec<u8>, SoftTpmError> {
        Ok(activate_credential(
            &self.ek,
            &self.ek_key,
            &self.ak.name,
            cred,
        )?)
    }

    /// A quote by the AK over `nonce` and the PCRs `selection` selects (SHA-256 banks and
    /// others; PCRs 0-23), whose values `pcr` gives: returns (`TPMS_ATTEST`, `TPMT_SIGNATURE`).
    pub fn quote(
        &self,
        nonce: &[u8],
        selection: &[(HashAlg, Vec<u32>)],
        pcr: impl Fn(HashAlg, u32) -> Option<Digest>,
    ) -> Result<(Vec<u8>, Vec<u8>), SoftTpmError> {
        if nonce.len() > 64 {
            return Err(SoftTpmError::Too("a nonce over 64 bytes"));
        }
        let mut a = TPM_GENERATED_VALUE.to_be_bytes().to_vec();
        a.extend_from_slice(&TPM_ST_ATTEST_QUOTE.to_be_bytes());
        put2b(&mut a, &self.ak.name)?;
        put2b(&mut a, nonce)?;
        let clock = self
            .clock
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        a.extend_from_slice(&clock.to_be_bytes());
        a.extend_from_slice(&1u32.to_be_bytes()); // resetCount
        a.extend_from_slice(&0u32.to_be_bytes()); // restartCount
        a.push(1); // safe
        a.extend_from_slice(&0x2023_0101_0000_0000u64.to_be_bytes()); // firmwareVersion
        let count = u32::try_from(selection.len()).map_err(|_| SoftTpmError::Too("banks"))?;
        a.extend_from_slice(&count.to_be_bytes());
        let mut values = Vec::new();
        for (bank, pcrs) in selection {
            let mut bits = [0u8; 3];
            let mut sorted = pcrs.clone();
            sorted.sort_unstable();
            sorted.dedup();
            for &p in &sorted {
                let byte = bits
                    .get_mut((p / 8) as usize)
                    .ok_or(SoftTpmError::Too("a PCR above 23"))?;
                *byte |= 1 << (p % 8);
                let v = pcr(*bank, p).ok_or(SoftTpmError::MissingPcr {
                    bank: *bank,
                    pcr: p,
                })?;
                values.extend_from_slice(v.as_bytes());
            }
            a.extend_from_slice(&bank.0.to_be_bytes());
            a.push(3);
            a.extend_from_slice(&bits);
        }
        // pcrDigest: H_signScheme of the selected PCRs' values in selection order.
        put2b(
            &mut a,
            ring::digest::digest(&ring::digest::SHA256, &values).as_ref(),
        )?;
        let sig = self
            .ak_key
            .sign(&SystemRandom::new(), &a)
            .map_err(|e| SoftTpmError::Key(e.to_string()))?;
        let (r, s) = sig.as_ref().split_at(32);
        let mut t = TPM_ALG_ECDSA.to_be_bytes().to_vec();
        t.extend_from_slice(&TPM_ALG_SHA256.to_be_bytes());
        put2b(&mut t, r)?;
        put2b(&mut t, s)?;
        Ok((a, t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credential::make_credential;
    use imgctl_attest::quote::{verify_quote, Signature};

    #[test]
    fn its_keys_pass_the_services_checks_and_its_quotes_verify() {
        let t = SoftTpm::new().unwrap();
        let ek = TpmPublic::parse(t.ek_public()).unwrap();
        ek.check_ek().unwrap();
        let ak = TpmPublic::parse(t.ak_public()).unwrap();
        ak.check_ak().unwrap();
        let value = |_: HashAlg, p: u32| Some(Digest(vec![u8::try_from(p).unwrap(); 32]));
        let sel = [(HashAlg::SHA256, vec![7, 0, 11])];
        let (attest, sig) = t.quote(b"nonce", &sel, value).unwrap();
        let sig = Signature::parse(&sig).unwrap();
        let q = verify_quote(&attest, &sig, &ak.key, b"nonce", value).unwrap();
        assert_eq!(q.pcrs.len(), 3);
        assert_eq!(q.attest.qualified_signer, ak.name);
        assert!(verify_quote(&attest, &sig, &ak.key, b"other", value).is_err());
        let other = |_: HashAlg, _: u32| Some(Digest(vec![9; 32]));
        assert!(verify_quote(&attest, &sig, &ak.key, b"nonce", other).is_err());
    }

    #[test]
    fn activate_opens_what_make_credential_made_for_it_only() {
        let a = SoftTpm::new().unwrap();
        let b = SoftTpm::new().unwrap();
        let ek = TpmPublic::parse(a.ek_public()).unwrap();
        let cred = make_credential(&ek, a.ak_name(), b"0123456789").unwrap();
        assert_eq!(a.activate_credential(&cred).unwrap(), b"0123456789");
        // Another TPM (another EK private key); another Name; a flipped bit.
        assert!(b.activate_credential(&cred).is_err());
        let other = make_credential(&ek, b.ak_name(), b"0123456789").unwrap();
        assert!(matches!(
            a.activate_credential(&other),
            Err(SoftTpmError::Credential(CredentialError::Integrity))
        ));
        for i in 2..cred.id_object.len() {
            let mut bad = cred.clone();
            bad.id_object[i] ^= 1;
            assert!(a.activate_credential(&bad).is_err(), "byte {i}");
        }
        let mut short = cred.clone();
        short.id_object.truncate(10);
        assert!(a.activate_credential(&short).is_err());
    }
}
