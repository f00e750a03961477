//! Key generation for a maintainer, as `ukify genkey` makes them: a Secure Boot signing key
//! with its self-signed X.509 certificate, and the PCR policy key pair `.pcrsig`/`.pcrpkey`
//! use. Pure but for the operating system's random numbers (`getrandom`); nothing is written
//! here.
//!
//! Certificates: X.509 v3, RSA-2048, sha256WithRSAEncryption, a random positive 128-bit
//! serial, `CN=<common name>` as subject and issuer, valid from now for the given days,
//! basicConstraints CA:FALSE (critical, as ukify writes it), keyUsage digitalSignature and
//! nonRepudiation, subject and authority key identifiers.

use std::time::Duration;

use der::asn1::{SetOfVec, Utf8StringRef};
use der::{Any, Encode, EncodePem};
use pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use rand_core::{OsRng, RngCore};
use x509_cert::attr::AttributeTypeAndValue;
use x509_cert::builder::{Builder, CertificateBuilder, Profile};
use x509_cert::name::{Name, RdnSequence, RelativeDistinguishedName};
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::SubjectPublicKeyInfoOwned;
use x509_cert::time::Validity;

/// RSA modulus size of every key made here (what UEFI firmware verifies).
pub const RSA_BITS: usize = 2048;

/// `commonName` (2.5.4.3).
const CN: der::asn1::ObjectIdentifier = der::asn1::ObjectIdentifier::new_unwrap("2.5.4.3");

/// What went wrong making a key.
#[derive(Debug, thiserror::Error)]
pub enum KeygenError {
    #[error("invalid common name {0:?}: it must be 1 to 64 characters without control characters")]
    CommonName(String),
    #[error("generating an RSA-{RSA_BITS} key: {0}")]
    Rsa(String),
    #[error("encoding: {0}")]
    Encoding(String),
}

fn enc(e: impl std::fmt::Display) -> KeygenError {
    KeygenError::Encoding(e.to_string())
}

/// A private key (PKCS#8 PEM) and its public half.
#[derive(Debug, Clone)]
pub struct KeyPair {
    /// `-----BEGIN PRIVATE KEY-----` (PKCS#8), as `openssl genpkey` writes.
    pub private_pem: String,
    /// `-----BEGIN PUBLIC KEY-----` (SubjectPublicKeyInfo), as `.pcrpkey` holds it.
    pub public_pem: String,
}

/// A signing key and its self-signed certificate.
#[derive(Debug, Clone)]
pub struct Identity {
    pub key: KeyPair,
    /// `-----BEGIN CERTIFICATE-----`.
    pub certificate_pem: String,
    /// The certificate, DER (what firmware variables such as db hold).
    pub certificate_der: Vec<u8>,
}

/// A fresh RSA-2048 key pair.
pub fn rsa_key_pair() -> Result<(rsa::RsaPrivateKey, KeyPair), KeygenError> {
    let key = rsa::RsaPrivateKey::new(&mut OsRng, RSA_BITS)
        .map_err(|e| KeygenError::Rsa(e.to_string()))?;
    let private_pem = key.to_pkcs8_pem(LineEnding::LF).map_err(enc)?.to_string();
    let public_pem = key
        .to_public_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(enc)?;
    Ok((
        key,
        KeyPair {
            private_pem,
            public_pem,
        },
    ))
}

fn common_name(cn: &str) -> Result<Name, KeygenError> {
    if cn.is_empty() || cn.chars().count() > 64 || cn.chars().any(char::is_control) {
        return Err(KeygenError::CommonName(cn.into()));
    }
    let value = Any::encode_from(&Utf8StringRef::new(cn).map_err(enc)?).map_err(enc)?;
    let mut rdn = SetOfVec::new();
    rdn.insert(AttributeTypeAndValue { oid: CN, value })
        .map_err(enc)?;
    Ok(RdnSequence(vec![RelativeDistinguishedName(rdn)]))
}

/// A fresh RSA-2048 key and a self-signed certificate for `CN=<cn>`, valid for `days` days
/// from now.
pub fn self_signed(cn: &str, days: u32) -> Result<Identity, KeygenError> {
    let subject = common_name(cn)?;
    let (key, pair) = rsa_key_pair()?;
    let mut serial = [0u8; 16];
    OsRng.fill_bytes(&mut serial);
    serial[0] = (serial[0] & 0x7f) | 0x40; // positive, 16 bytes long
    let serial = SerialNumber::new(&serial).map_err(enc)?;
    let validity =
        Validity::from_now(Duration::from_secs(u64::from(days) * 86_400)).map_err(enc)?;
    let signer = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(key.clone());
    let spki = SubjectPublicKeyInfoOwned::from_key(key.to_public_key()).map_err(enc)?;
    let builder = CertificateBuilder::new(
        Profile::Leaf {
            issuer: subject.clone(),
            enable_key_agreement: false,
            enable_key_encipherment: false,
        },
        serial,
        validity,
        subject,
        spki,
        &signer,
    )
    .map_err(enc)?;
    let cert = builder.build::<rsa::pkcs1v15::Signature>().map_err(enc)?;
    Ok(Identity {
        key: pair,
        certificate_pem: cert.to_pem(LineEnding::LF).map_err(enc)?,
        certificate_der: cert.to_der().map_err(enc)?,
    })
}
