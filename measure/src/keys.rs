//! Keys that sign PCR policies: reading PEM files, signing and verifying the way
//! `systemd-measure sign` does, and the TPM view of the public half.
//!
//! Accepted private keys: PKCS#8 (`BEGIN PRIVATE KEY`, what `openssl genpkey` writes), PKCS#1
//! RSA (`BEGIN RSA PRIVATE KEY`) and SEC1 EC (`BEGIN EC PRIVATE KEY`). Accepted public keys:
//! SubjectPublicKeyInfo (`BEGIN PUBLIC KEY`, what `openssl pkey -pubout` and ukify's `.pcrpkey`
//! hold) and PKCS#1 (`BEGIN RSA PUBLIC KEY`). Key types: RSA (any size the TPM takes; systemd's
//! man page uses 2048) and ECDSA on NIST P-256. Anything else is refused by name.
//!
//! Signatures follow systemd's `digest_and_sign()`: the message (a `.pcrsig` `pol`) is hashed
//! with the PCR bank's algorithm, then RSASSA-PKCS1-v1_5 (deterministic, so our output equals
//! systemd-measure's byte for byte) or ECDSA with a DER-encoded `Ecdsa-Sig-Value` (randomised).
//! Verified on this machine: Debian's systemd-measure 252 signs the sha1 bank's entries with
//! SHA-1, sha256 with SHA-256, and so on.

use p256::ecdsa::signature::hazmat::{PrehashSigner, PrehashVerifier};
use rsa::pkcs1::{DecodeRsaPrivateKey, DecodeRsaPublicKey};
use rsa::pkcs8::der::pem;
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePublicKey, LineEnding};
use rsa::traits::PublicKeyParts;

use crate::bank::HashAlg;
use crate::policy::TpmPublicKey;

/// `rsaEncryption`.
const OID_RSA: &str = "1.2.840.113549.1.1.1";
/// `id-ecPublicKey`.
const OID_EC: &str = "1.2.840.10045.2.1";
/// `prime256v1` / NIST P-256.
const OID_P256: &str = "1.2.840.10045.3.1.7";

/// Why a key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("not a PEM file: {0}")]
    Pem(String),
    #[error("PEM label {0:?} is not a key imgctl reads (expected PRIVATE KEY, RSA PRIVATE KEY, EC PRIVATE KEY, PUBLIC KEY or RSA PUBLIC KEY)")]
    Label(String),
    #[error("unsupported key type: {0} (imgctl signs PCR policies with RSA or ECDSA P-256 keys, like systemd)")]
    Unsupported(String),
    #[error("malformed {what}: {message}")]
    Malformed { what: &'static str, message: String },
    #[error("cannot sign or verify with {0} (banks: sha1, sha256, sha384, sha512)")]
    Bank(HashAlg),
    #[error("signing failed: {0}")]
    Sign(String),
    #[error("the public key does not match the private key (it is not the public half of the private key)")]
    Mismatch,
    #[error("the private key is encrypted: give its passphrase with --key-passphrase-file FILE")]
    Encrypted,
    #[error("cannot decrypt the private key: {0}")]
    Decrypt(String),
}

/// The one place imgctl decrypts a key: `text` (a PEM file) with its `ENCRYPTED PRIVATE KEY`
/// block (PKCS#8 `EncryptedPrivateKeyInfo`, PBES2 with PBKDF2 or scrypt and AES, what
/// `openssl genpkey -aes-256-cbc` and `openssl pkcs8 -topk8` write) decrypted with
/// `passphrase` into a `PRIVATE KEY` PEM; any other PEM unchanged. An encrypted key without a
/// passphrase, a wrong passphrase, or OpenSSL's legacy `Proc-Type: 4,ENCRYPTED` PEM is an
/// error. Nothing here prompts: the passphrase comes from the caller.
pub fn decrypt_pem<'a>(
    text: &'a [u8],
    passphrase: Option<&[u8]>,
) -> Result<std::borrow::Cow<'a, [u8]>, KeyError> {
    use pkcs8::der::Decode;
    if find(text, b"Proc-Type: 4,ENCRYPTED").is_some() {
        return Err(KeyError::Unsupported(
            "legacy OpenSSL-encrypted PEM (Proc-Type: 4,ENCRYPTED); convert it to PKCS#8: \
             openssl pkcs8 -topk8 -v2 aes-256-cbc -in K -out K.p8"
                .into(),
        ));
    }
    if find(text, b"-----BEGIN ENCRYPTED PRIVATE KEY-----").is_none() {
        return Ok(std::borrow::Cow::Borrowed(text));
    }
    let passphrase = passphrase.ok_or(KeyError::Encrypted)?;
    let (_, der) = decode_pem(text)?;
    let info = pkcs8::EncryptedPrivateKeyInfo::from_der(&der)
        .map_err(|e| malformed("PKCS#8 EncryptedPrivateKeyInfo", e))?;
    let plain = info.decrypt(passphrase).map_err(|e| {
        KeyError::Decrypt(format!("{e} (wrong passphrase, or an unsupported cipher)"))
    })?;
    let pem = pem::encode_string("PRIVATE KEY", pem::LineEnding::LF, plain.as_bytes())
        .map_err(|e| KeyError::Pem(e.to_string()))?;
    Ok(std::borrow::Cow::Owned(pem.into_bytes()))
}

fn malformed(what: &'static str, e: impl std::fmt::Display) -> KeyError {
    KeyError::Malformed {
        what,
        message: e.to_string(),
    }
}

/// The raw operation a key held outside imgctl (a PKCS#11 token) is asked to perform; the
/// framing around it (DigestInfo, DER `Ecdsa-Sig-Value`) is done here, so that a token and a
/// key file give the same signatures (byte for byte with RSA).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawSignRequest<'a> {
    /// RSASSA-PKCS1-v1_5 over this DER `DigestInfo` (PKCS#11 `CKM_RSA_PKCS`); the answer is
    /// the signature, as long as the modulus.
    RsaPkcs1 { digest_info: &'a [u8] },
    /// ECDSA over this digest (PKCS#11 `CKM_ECDSA`); the answer is `r ‖ s`, 32 bytes each.
    Ecdsa { digest: &'a [u8] },
}

/// A private key held outside imgctl: it never leaves its device, which signs what
/// [`RawSignRequest`] asks. Implemented by the `imgctl-pkcs11` crate (PKCS#11 tokens).
pub trait ExternalKey: Send + Sync {
    /// The key in messages (a PKCS#11 URI without its PIN).
    fn describe(&self) -> String;
    /// The public half, read from the device.
    fn public(&self) -> &VerifyingKey;
    /// Performs `request` with the private key.
    fn sign_raw(&self, request: RawSignRequest<'_>) -> Result<Vec<u8>, String>;
}

/// A private key that signs: PCR policies (`.pcrsig`), Authenticode and root-hash PKCS#7
/// signatures all go through [`SigningKey::sign_digest`], whichever kind of key it is.
#[derive(Clone)]
pub enum SigningKey {
    Rsa(Box<rsa::RsaPrivateKey>),
    EccP256(p256::ecdsa::SigningKey),
    /// A key on a device (PKCS#11); every signature it returns is verified with its public
    /// half before it is used.
    External(std::sync::Arc<dyn ExternalKey>),
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SigningKey::External(k) => write!(f, "SigningKey({})", k.describe()),
            _ => write!(f, "SigningKey({:?})", self.public()),
        }
    }
}

/// A public key that verifies PCR policy signatures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyingKey {
    Rsa(rsa::RsaPublicKey),
    EccP256(p256::PublicKey),
}

fn decode_pem(text: &[u8]) -> Result<(String, Vec<u8>), KeyError> {
    let (label, der) =
        pem::decode_vec(trim_to_pem(text)).map_err(|e| KeyError::Pem(e.to_string()))?;
    Ok((label.to_owned(), der))
}

/// Skips anything before the first `-----BEGIN` (openssl tolerates leading text, e.g. the
/// parameter block `openssl genpkey -genparam` writes) and after the matching END line.
fn trim_to_pem(text: &[u8]) -> &[u8] {
    let start = find(text, b"-----BEGIN ").unwrap_or(0);
    let text = &text[start..];
    match find(text, b"-----END ") {
        Some(end) => {
            let after = &text[end..];
            let line_end = after
                .iter()
                .position(|&b| b == b'\n')
                .map_or(text.len(), |p| end + p + 1);
            &text[..line_end]
        }
        None => text,
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn check_ec_curve(params: Option<String>) -> Result<(), KeyError> {
    match params.as_deref() {
        Some(OID_P256) => Ok(()),
        Some(other) => Err(KeyError::Unsupported(format!(
            "EC key on curve OID {other} (only P-256, {OID_P256})"
        ))),
        None => Err(KeyError::Unsupported("EC key without a named curve".into())),
    }
}

fn unsupported_oid(oid: &str) -> KeyError {
    let name = match oid {
        "1.3.101.112" => " (Ed25519)",
        "1.3.101.113" => " (Ed448)",
        "1.2.840.10040.4.1" => " (DSA)",
        "1.2.840.113549.1.1.10" => " (RSASSA-PSS key)",
        _ => "",
    };
    KeyError::Unsupported(format!("key algorithm OID {oid}{name}"))
}

impl SigningKey {
    /// Reads a PEM private key (see the module doc for the accepted forms).
    pub fn from_pem(text: &[u8]) -> Result<Self, KeyError> {
        let (label, der) = decode_pem(text)?;
        match label.as_str() {
            "PRIVATE KEY" => {
                let info = rsa::pkcs8::PrivateKeyInfo::try_from(der.as_slice())
                    .map_err(|e| malformed("PKCS#8 private key", e))?;
                let oid = info.algorithm.oid.to_string();
                match oid.as_str() {
                    OID_RSA => rsa::RsaPrivateKey::from_pkcs8_der(&der)
                        .map(|k| SigningKey::Rsa(Box::new(k)))
                        .map_err(|e| malformed("PKCS#8 RSA private key", e)),
                    OID_EC => {
                        check_ec_curve(
                            info.algorithm.parameters_oid().ok().map(|o| o.to_string()),
                        )?;
                        p256::ecdsa::SigningKey::from_pkcs8_der(&der)
                            .map(SigningKey::EccP256)
                            .map_err(|e| malformed("PKCS#8 EC private key", e))
                    }
                    other => Err(unsupported_oid(other)),
                }
            }
            "RSA PRIVATE KEY" => rsa::RsaPrivateKey::from_pkcs1_der(&der)
                .map(|k| SigningKey::Rsa(Box::new(k)))
                .map_err(|e| malformed("PKCS#1 RSA private key", e)),
            "EC PRIVATE KEY" => p256::SecretKey::from_sec1_der(&der)
                .map(|k| SigningKey::EccP256(k.into()))
                .map_err(|e| {
                    KeyError::Unsupported(format!("SEC1 EC key that is not a P-256 key ({e})"))
                }),
            "ENCRYPTED PRIVATE KEY" => Err(KeyError::Encrypted),
            _ => Err(KeyError::Label(label)),
        }
    }

    /// Reads a private key file's bytes: any PEM form [`SigningKey::from_pem`] reads, or a DER
    /// PKCS#8 `PrivateKeyInfo` (what `openssl pkcs8 -topk8 -nocrypt -outform DER` writes).
    pub fn parse(bytes: &[u8]) -> Result<Self, KeyError> {
        if find(bytes, b"-----BEGIN ").is_some() {
            return SigningKey::from_pem(bytes);
        }
        let pem = pem::encode_string("PRIVATE KEY", pem::LineEnding::LF, bytes)
            .map_err(|e| KeyError::Pem(e.to_string()))?;
        SigningKey::from_pem(pem.as_bytes()).map_err(|e| match e {
            KeyError::Malformed { message, .. } => KeyError::Malformed {
                what: "DER PKCS#8 private key",
                message,
            },
            other => other,
        })
    }

    /// The public half.
    pub fn verifying_key(&self) -> VerifyingKey {
        match self {
            SigningKey::Rsa(k) => VerifyingKey::Rsa(k.to_public_key()),
            SigningKey::EccP256(k) => {
                VerifyingKey::EccP256(p256::PublicKey::from(k.verifying_key()))
            }
            SigningKey::External(k) => k.public().clone(),
        }
    }

    /// The public half as the TPM sees it.
    pub fn public(&self) -> TpmPublicKey {
        self.verifying_key().tpm()
    }

    /// Signs `H_bank(message)` (see the module doc).
    pub fn sign(&self, bank: HashAlg, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        let digest = bank.hash(message).map_err(|_| KeyError::Bank(bank))?;
        self.sign_digest(bank, digest.as_bytes())
    }

    /// Signs a digest already computed with `bank`'s hash: RSASSA-PKCS1-v1_5 (the DigestInfo
    /// of `bank` around `digest`), or ECDSA P-256 (RFC 6979, deterministic) as a DER
    /// `Ecdsa-Sig-Value`. This is what every imgctl signature comes down to: `.pcrsig`
    /// entries, Authenticode and root-hash PKCS#7 `SignerInfo`s.
    pub fn sign_digest(&self, bank: HashAlg, digest: &[u8]) -> Result<Vec<u8>, KeyError> {
        if Some(digest.len()) != bank.digest_size() {
            return Err(KeyError::Sign(format!(
                "a {bank} digest is not {} bytes long",
                digest.len()
            )));
        }
        match self {
            SigningKey::Rsa(k) => k
                .sign(pkcs1v15(bank)?, digest)
                .map_err(|e| KeyError::Sign(e.to_string())),
            SigningKey::EccP256(k) => {
                let sig: p256::ecdsa::Signature = k
                    .sign_prehash(digest)
                    .map_err(|e| KeyError::Sign(e.to_string()))?;
                Ok(sig.to_der().as_bytes().to_vec())
            }
            SigningKey::External(k) => sign_external(k.as_ref(), bank, digest),
        }
    }
}

/// The DER `DigestInfo` that RSASSA-PKCS1-v1_5 signs: `bank`'s prefix, then `digest`.
pub fn digest_info(bank: HashAlg, digest: &[u8]) -> Result<Vec<u8>, KeyError> {
    let scheme = pkcs1v15(bank)?;
    let mut out = scheme.prefix.to_vec();
    out.extend_from_slice(digest);
    Ok(out)
}

/// Signs through an [`ExternalKey`] and checks the result with its public half, so that a
/// device that signs with another key, or returns garbage, is an error and never a signature.
fn sign_external(key: &dyn ExternalKey, bank: HashAlg, digest: &[u8]) -> Result<Vec<u8>, KeyError> {
    let fail = |m: String| KeyError::Sign(format!("{}: {m}", key.describe()));
    match key.public() {
        VerifyingKey::Rsa(public) => {
            let info = digest_info(bank, digest)?;
            let sig = key
                .sign_raw(RawSignRequest::RsaPkcs1 { digest_info: &info })
                .map_err(fail)?;
            public.verify(pkcs1v15(bank)?, digest, &sig).map_err(|_| {
                fail("the signature it returned does not verify with its public key".into())
            })?;
            Ok(sig)
        }
        VerifyingKey::EccP256(public) => {
            let raw = key
                .sign_raw(RawSignRequest::Ecdsa { digest })
                .map_err(fail)?;
            let sig = p256::ecdsa::Signature::from_slice(&raw)
                .map_err(|e| fail(format!("not an ECDSA P-256 r||s signature ({e})")))?;
            p256::ecdsa::VerifyingKey::from(public)
                .verify_prehash(digest, &sig)
                .map_err(|_| {
                    fail("the signature it returned does not verify with its public key".into())
                })?;
            Ok(sig.to_der().as_bytes().to_vec())
        }
    }
}

fn pkcs1v15(bank: HashAlg) -> Result<rsa::Pkcs1v15Sign, KeyError> {
    Ok(match bank {
        HashAlg::SHA1 => rsa::Pkcs1v15Sign::new::<sha1::Sha1>(),
        HashAlg::SHA256 => rsa::Pkcs1v15Sign::new::<sha2::Sha256>(),
        HashAlg::SHA384 => rsa::Pkcs1v15Sign::new::<sha2::Sha384>(),
        HashAlg::SHA512 => rsa::Pkcs1v15Sign::new::<sha2::Sha512>(),
        other => return Err(KeyError::Bank(other)),
    })
}

impl VerifyingKey {
    /// Reads a PEM public key (SPKI or PKCS#1), or the public half of a PEM private key.
    pub fn from_pem(text: &[u8]) -> Result<Self, KeyError> {
        let (label, der) = decode_pem(text)?;
        match label.as_str() {
            "PUBLIC KEY" => {
                let spki = rsa::pkcs8::spki::SubjectPublicKeyInfoRef::try_from(der.as_slice())
                    .map_err(|e| malformed("SubjectPublicKeyInfo", e))?;
                let oid = spki.algorithm.oid.to_string();
                match oid.as_str() {
                    OID_RSA => rsa::RsaPublicKey::from_public_key_der(&der)
                        .map(VerifyingKey::Rsa)
                        .map_err(|e| malformed("RSA public key", e)),
                    OID_EC => {
                        check_ec_curve(
                            spki.algorithm.parameters_oid().ok().map(|o| o.to_string()),
                        )?;
                        p256::PublicKey::from_public_key_der(&der)
                            .map(VerifyingKey::EccP256)
                            .map_err(|e| malformed("EC public key", e))
                    }
                    other => Err(unsupported_oid(other)),
                }
            }
            "RSA PUBLIC KEY" => rsa::RsaPublicKey::from_pkcs1_der(&der)
                .map(VerifyingKey::Rsa)
                .map_err(|e| malformed("PKCS#1 RSA public key", e)),
            _ => SigningKey::from_pem(text).map(|k| k.verifying_key()),
        }
    }

    /// Builds the key from its TPM form (e.g. an attestation key the TPM returned).
    pub fn from_tpm(key: &TpmPublicKey) -> Result<Self, KeyError> {
        match key {
            TpmPublicKey::Rsa { n, e } => {
                rsa::RsaPublicKey::new(rsa::BigUint::from_bytes_be(n), rsa::BigUint::from(*e))
                    .map(VerifyingKey::Rsa)
                    .map_err(|e| malformed("RSA public key", e))
            }
            TpmPublicKey::EccP256 { x, y } => {
                let mut sec1 = Vec::with_capacity(65);
                sec1.push(4);
                sec1.extend_from_slice(x);
                sec1.extend_from_slice(y);
                p256::PublicKey::from_sec1_bytes(&sec1)
                    .map(VerifyingKey::EccP256)
                    .map_err(|e| malformed("EC public key", e))
            }
        }
    }

    /// The key as the TPM sees it.
    pub fn tpm(&self) -> TpmPublicKey {
        match self {
            VerifyingKey::Rsa(k) => {
                let e = k.e().to_bytes_be();
                let e = e.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
                TpmPublicKey::Rsa {
                    n: k.n().to_bytes_be(),
                    // Exponents that do not fit TPMS_RSA_PARMS' u32 never come from openssl.
                    e: u32::try_from(e).unwrap_or(u32::MAX),
                }
            }
            VerifyingKey::EccP256(k) => {
                use p256::elliptic_curve::sec1::ToEncodedPoint;
                let p = k.to_encoded_point(false);
                let mut x = [0u8; 32];
                let mut y = [0u8; 32];
                if let (Some(px), Some(py)) = (p.x(), p.y()) {
                    x.copy_from_slice(px);
                    y.copy_from_slice(py);
                }
                TpmPublicKey::EccP256 { x, y }
            }
        }
    }

    /// SubjectPublicKeyInfo PEM (`BEGIN PUBLIC KEY`), as ukify writes `.pcrpkey`.
    pub fn to_pem(&self) -> Result<String, KeyError> {
        match self {
            VerifyingKey::Rsa(k) => k.to_public_key_pem(LineEnding::LF),
            VerifyingKey::EccP256(k) => k.to_public_key_pem(LineEnding::LF),
        }
        .map_err(|e| malformed("public key", e))
    }

    /// Checks a signature made by [`SigningKey::sign`].
    pub fn verify(&self, bank: HashAlg, message: &[u8], signature: &[u8]) -> bool {
        let Ok(digest) = bank.hash(message) else {
            return false;
        };
        match self {
            VerifyingKey::Rsa(k) => {
                pkcs1v15(bank).is_ok_and(|s| k.verify(s, digest.as_bytes(), signature).is_ok())
            }
            VerifyingKey::EccP256(k) => {
                p256::ecdsa::Signature::from_der(signature).is_ok_and(|sig| {
                    p256::ecdsa::VerifyingKey::from(k)
                        .verify_prehash(digest.as_bytes(), &sig)
                        .is_ok()
                })
            }
        }
    }
}

/// Splits a DER `Ecdsa-Sig-Value` into big-endian `r` and `s` of 32 bytes each, as
/// `TPMS_SIGNATURE_ECDSA` carries them.
pub fn ecdsa_der_to_rs(signature: &[u8]) -> Result<([u8; 32], [u8; 32]), KeyError> {
    let sig = p256::ecdsa::Signature::from_der(signature)
        .map_err(|e| malformed("ECDSA P-256 signature", e))?;
    let (r, s) = sig.split_bytes();
    Ok((r.into(), s.into()))
}

pub use crate::tpm_wire::{TPM_ALG_ECDSA, TPM_ALG_RSASSA};

/// A `.pcrsig` signature as the marshalled `TPMT_SIGNATURE` that `TPM2_VerifySignature`
/// takes: `sigAlg ‖ hash ‖ TPM2B sig` (RSASSA) or `sigAlg ‖ hash ‖ TPM2B r ‖ TPM2B s` (ECDSA).
pub fn tpmt_signature(
    key: &TpmPublicKey,
    bank: HashAlg,
    signature: &[u8],
) -> Result<Vec<u8>, KeyError> {
    if !bank.is_supported() {
        return Err(KeyError::Bank(bank));
    }
    let mut out = Vec::with_capacity(signature.len() + 8);
    let push_tpm2b = |out: &mut Vec<u8>, b: &[u8]| -> Result<(), KeyError> {
        crate::tpm_wire::put_tpm2b(out, b, "signature").map_err(|e| malformed("signature", e))
    };
    match key {
        TpmPublicKey::Rsa { .. } => {
            out.extend_from_slice(&TPM_ALG_RSASSA.to_be_bytes());
            out.extend_from_slice(&bank.0.to_be_bytes());
            push_tpm2b(&mut out, signature)?;
        }
        TpmPublicKey::EccP256 { .. } => {
            let (r, s) = ecdsa_der_to_rs(signature)?;
            out.extend_from_slice(&TPM_ALG_ECDSA.to_be_bytes());
            out.extend_from_slice(&bank.0.to_be_bytes());
            push_tpm2b(&mut out, &r)?;
            push_tpm2b(&mut out, &s)?;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// systemd test-tpm2.c `tpm2b_public_from_openssl_pkey`, "standard RSA key".
    const SYSTEMD_RSA_PEM: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAyV9CIPe/PXR3zCocxpE0
jWRbTl5hXXDCkG/XKy7Km/D9XIB3KsOZ1CjY77Uq7/gCY61pix8iuRujsA4dP1e8
Y4E3lhUm7J3+dsvkboKdU2CbmRIL/fubwqiLMXzAg3BWRxtr4TuED53Rz764UFPd
0zp0KhwR1Ib0DLgw/4NgVo1AFv3xxKMdxwMEh5ggkss082c2pl5JPN2XvwBotNkM
TqRltZJ55RDCapinqS3Ew7fudlNsXQ5wFvlt27zv74KXQeampLYC07XOga0LglSk
yuGtXkjPT/sUBTJpStaWigMZoqKtyV4cQZXCkJRhDYaLGXvsPB3hzvmVqcnkGeNT
ewIDAQAB
-----END PUBLIC KEY-----
";
    /// systemd test-tpm2.c, "standard ECC key".
    const SYSTEMD_ECC_PEM: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAErjnEuBLsIl9rhphwyvXNPhj4jBnP
DXnyJ0K9UyrNgd6S5A52T+oSvtkCj6Zrl4hXG3wAQUXpoBlS+tHqtRqL5Q==
-----END PUBLIC KEY-----
";
    /// A key generated with `openssl genpkey -algorithm RSA`; `tpm2_loadexternal -G rsa -a
    /// "decrypt|sign|userwithauth"` (tpm2-tools 5.4, swtpm) printed its Name below, and
    /// `tpm2_policyauthorize` with an approved policy the PolicyAuthorize digest.
    const TOOLS_RSA_PEM: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAyZmcmQ0aC7dlZf+Hmc1b
Z7brufq84BR/3cFqEYizmuLD3KMnX6T4jMaY76sBh+IkYooiRz6R33ZKVdPBW9wU
o2z794d3aMyTRx1G/u/w46r/36bbxx1GnLAkfK+TDGLicOL0vtwTxajyN21rBKU4
8ycctrNyadlTV0PC5F8KpErdihF/CHtfxxO+QA2NAqlijKrkO4VmRiJqUR135txs
eTNAvmuULtTPrS6z5Z9wMXxR7tfnnU+BlSbNdU6W1eL4wBH+HRaG1Lbjn1qkigkS
LCx58nHAZ73i3X9Mo/tOa5k/DAGf7MVJDObF11ufTS2iiVBv6j76S7UXEKtCXNv4
PQIDAQAB
-----END PUBLIC KEY-----
";
    const TOOLS_ECC_PEM: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEcem9wV+/FpiBTDa6DIU92QrJ3ga7
gAqGHaS5C8w5kVyEUD50KvJF7KDQ46/4ES+ej2v7tFp7HN3PxZJ2LeH7/w==
-----END PUBLIC KEY-----
";

    fn tpm(pem: &str) -> TpmPublicKey {
        VerifyingKey::from_pem(pem.as_bytes()).unwrap().tpm()
    }

    #[test]
    fn pem_keys_convert_like_systemd() {
        let rsa = tpm(SYSTEMD_RSA_PEM);
        assert_eq!(
            hex::encode(rsa.name()),
            "000be1bd75c7976e7a30e9e82223b81a9eff0d42c30618e588db592ed5da94455e81"
        );
        assert_eq!(
            hex::encode(rsa.fingerprint()),
            "d9186d13a7fd5b3644cee05448f49ad3574e82a2942ff93cf89598d36cca78a9"
        );
        let ecc = tpm(SYSTEMD_ECC_PEM);
        assert_eq!(
            hex::encode(ecc.name()),
            "000b5c127e4dbaf8fb7bac641e8db25a84a48db876ca7ee3bd317ae1a4554ff72f17"
        );
    }

    #[test]
    fn names_and_authorize_policy_match_tpm2_tools() {
        let rsa = tpm(TOOLS_RSA_PEM);
        assert_eq!(
            hex::encode(rsa.name()),
            "000b8645b31e70c3d64a67352b1681f19f2313ec1e9c131bde2adbff65c843fe2a6e"
        );
        assert_eq!(
            hex::encode(rsa.authorize_policy()),
            "df8ec368401881d02e950f1745d8b6aa85974dc272dd677b6e92d1040c596701"
        );
        // Fingerprint printed by systemd-measure 252 (`pkfp`) for this key.
        assert_eq!(
            hex::encode(rsa.fingerprint()),
            "ed5a254fc382a2f08a10d8c32265892323d362b4a9a7dcb224575fd4d968ef87"
        );
        assert_eq!(
            hex::encode(tpm(TOOLS_ECC_PEM).name()),
            "000b16fbc8a8e65267a5bb4ebec5dbf3704fd1bf614d1bf3971847d3c41f582e77de"
        );
    }

    #[test]
    fn pem_round_trips_and_tpm_form_converts_back() {
        for pem in [SYSTEMD_RSA_PEM, SYSTEMD_ECC_PEM] {
            let k = VerifyingKey::from_pem(pem.as_bytes()).unwrap();
            assert_eq!(k.to_pem().unwrap(), pem);
            assert_eq!(VerifyingKey::from_tpm(&k.tpm()).unwrap(), k);
        }
    }

    #[test]
    fn unsupported_and_broken_keys_are_named() {
        // `openssl genpkey -algorithm ED25519`
        let ed = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEINGDmXEl6PEHXfZQCZypEtIRL8Phnen3ZdHMcdOChlKl
-----END PRIVATE KEY-----
";
        let e = SigningKey::from_pem(ed.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("Ed25519"), "{e}");
        // `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-384`
        let p384 = "-----BEGIN PRIVATE KEY-----
MIG2AgEAMBAGByqGSM49AgEGBSuBBAAiBIGeMIGbAgEBBDBEgFz38sVgkBOmpCky
+0ospkZ5zPEVGop1f8OTHq1Jv5C+ECBP9Ka27+kbC1anYPuhZANiAARYgLUfs0vZ
41LQM89GPAFdu6F9ebejP2r5h83wzPkNM3Z0xJfrxbNbT121QWGG/S7AOUjlxMTY
ASv+9NnK+QwhfdNfj02zUvgn/++LxRtz3M6AOir80msj3GuL6m5y6I8=
-----END PRIVATE KEY-----
";
        let e = SigningKey::from_pem(p384.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("1.3.132.0.34"), "{e}");
        let e = SigningKey::from_pem(b"hello").unwrap_err();
        assert!(e.to_string().contains("PEM"), "{e}");
        let e =
            SigningKey::from_pem(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
                .unwrap_err();
        assert!(e.to_string().contains("CERTIFICATE"), "{e}");
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn pem_readers_never_panic(data in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = SigningKey::from_pem(&data);
            let _ = VerifyingKey::from_pem(&data);
            let mut framed = b"-----BEGIN PUBLIC KEY-----\n".to_vec();
            framed.extend(base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &data).into_bytes());
            framed.extend_from_slice(b"\n-----END PUBLIC KEY-----\n");
            let _ = VerifyingKey::from_pem(&framed);
        }
    }
}
