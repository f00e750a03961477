//! Endorsement key certificates (TCG EK Credential Profile for TPM 2.0, §3: an X.509 v3
//! certificate the TPM's manufacturer issues for its EK, kept in NV index 0x01c00002 for the
//! RSA-2048 EK) checked against the CAs the service is configured with.
//!
//! Every certificate of `ek_ca_files` is a trust anchor; each must be a CA (basicConstraints
//! cA, and keyCertSign when it has a keyUsage). Real EK certificates are issued by a
//! manufacturer's intermediate CA: certificates of `ek_intermediate_files` are not anchors
//! but links, each accepted at load only when it is a CA whose chain (through other
//! intermediates, at most [`MAX_CHAIN`] deep) leads to an anchor, every signature verified;
//! it then issues EK certificates while it and every link above it is valid. (Listing an
//! intermediate among the anchors instead trusts it alone: the operator's choice.)
//! An EK certificate is accepted only when
//! - it parses as DER X.509 (nothing after it, at most [`MAX_CERT`] bytes);
//! - a configured CA whose subject is its issuer (by DER or by RFC 4514 text) signed it (RSA PKCS#1 v1.5 with SHA-256/384/
//!   512, or ECDSA P-256/P-384 with SHA-256/384; anything else is refused, not skipped);
//! - it is valid now (notBefore ≤ now ≤ notAfter), and so is its issuer's chain when the
//!   issuer is an intermediate;
//! - its subjectPublicKey is the presented EK's public key.
//!
//! Pure: the caller reads the files.

use der::{Decode as _, Encode as _};
use imgctl_attest::quote::AkPublic;
use imgctl_attest::tpm_public::TpmPublic;
use ring::signature::{self, UnparsedPublicKey};
use x509_cert::ext::pkix::{BasicConstraints, KeyUsage, KeyUsages};
use x509_cert::Certificate;

/// The largest EK certificate accepted (real ones are 1-2 KiB).
pub const MAX_CERT: usize = 8192;

/// The most intermediates between an EK certificate and an anchor.
pub const MAX_CHAIN: usize = 4;

const SHA256_RSA: &str = "1.2.840.113549.1.1.11";
const SHA384_RSA: &str = "1.2.840.113549.1.1.12";
const SHA512_RSA: &str = "1.2.840.113549.1.1.13";
const ECDSA_SHA256: &str = "1.2.840.10045.4.3.2";
const ECDSA_SHA384: &str = "1.2.840.10045.4.3.3";
const RSA_KEY: &str = "1.2.840.113549.1.1.1";
const EC_KEY: &str = "1.2.840.10045.2.1";
const P256: &str = "1.2.840.10045.3.1.7";
const P384: &str = "1.3.132.0.34";

/// Why an EK certificate or a CA is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EkCertError {
    #[error("{0}: not a DER X.509 certificate: {1}")]
    Parse(String, String),
    #[error("{0}: {1} bytes, more than {MAX_CERT}")]
    Size(String, usize),
    #[error("{0}: not a CA certificate ({1})")]
    NotCa(String, String),
    #[error("EK certificate issued by {0}: no configured CA has that name")]
    UnknownIssuer(String),
    #[error("EK certificate: the signature does not verify with the key of the configured CA {0}")]
    Signature(String),
    #[error("EK certificate: {0} is not supported")]
    Unsupported(String),
    #[error("EK certificate: not valid now (valid from {0} to {1})")]
    Time(String, String),
    #[error("EK certificate: its public key is not the presented EK")]
    KeyMismatch,
    #[error("{0}: the intermediate CA {1} is not issued by a configured CA ({2})")]
    Unchained(String, String, String),
    #[error("EK certificate: its issuer {0} is not valid now (its chain is valid from {1} to {2}, Unix time)")]
    IssuerTime(String, u64, u64),
}

/// A configured CA: the file it came from, its subject (DER), its key.
#[derive(Debug, Clone)]
struct Ca {
    file: String,
    subject: Vec<u8>,
    subject_text: String,
    key_alg: String,
    curve: Option<String>,
    key: Vec<u8>,
    /// For an intermediate: when it and every link above it are valid (Unix seconds).
    window: Option<(u64, u64)>,
}

/// The parts of a certificate a signature check needs.
struct Signed {
    issuer: Vec<u8>,
    issuer_text: String,
    tbs: Vec<u8>,
    signature: Vec<u8>,
    algorithm: String,
}

impl Signed {
    fn of(what: &str, c: &Certificate) -> Result<Signed, EkCertError> {
        let bad = |e: der::Error| EkCertError::Parse(what.to_owned(), e.to_string());
        Ok(Signed {
            issuer: c.tbs_certificate.issuer.to_der().map_err(bad)?,
            issuer_text: c.tbs_certificate.issuer.to_string(),
            tbs: c.tbs_certificate.to_der().map_err(bad)?,
            signature: c.signature.raw_bytes().to_vec(),
            algorithm: c.signature_algorithm.oid.to_string(),
        })
    }
}

fn validity(c: &Certificate) -> (u64, u64) {
    let v = &c.tbs_certificate.validity;
    (
        v.not_before.to_unix_duration().as_secs(),
        v.not_after.to_unix_duration().as_secs(),
    )
}

/// The CA of `cas` that signed `s`: its subject is `s`'s issuer and its key verifies.
fn signer<'a>(cas: &'a [Ca], s: &Signed) -> Result<&'a Ca, EkCertError> {
    // Names match by their DER, or, as RFC 5280 §7.1 compares them after normalising the
    // string types (certtool writes PrintableString where openssl writes UTF8String), by
    // their RFC 4514 text; the signature decides.
    let mut candidates = cas
        .iter()
        .filter(|c| c.subject == s.issuer || c.subject_text == s.issuer_text)
        .peekable();
    if candidates.peek().is_none() {
        return Err(EkCertError::UnknownIssuer(s.issuer_text.clone()));
    }
    let mut last = None;
    for ca in candidates {
        let alg: &'static dyn signature::VerificationAlgorithm = match (
            ca.key_alg.as_str(),
            ca.curve.as_deref(),
            s.algorithm.as_str(),
        ) {
            (RSA_KEY, _, SHA256_RSA) => &signature::RSA_PKCS1_2048_8192_SHA256,
            (RSA_KEY, _, SHA384_RSA) => &signature::RSA_PKCS1_2048_8192_SHA384,
            (RSA_KEY, _, SHA512_RSA) => &signature::RSA_PKCS1_2048_8192_SHA512,
            (EC_KEY, Some(P256), ECDSA_SHA256) => &signature::ECDSA_P256_SHA256_ASN1,
            (EC_KEY, Some(P256), ECDSA_SHA384) => &signature::ECDSA_P256_SHA384_ASN1,
            (EC_KEY, Some(P384), ECDSA_SHA256) => &signature::ECDSA_P384_SHA256_ASN1,
            (EC_KEY, Some(P384), ECDSA_SHA384) => &signature::ECDSA_P384_SHA384_ASN1,
            (k, c, a) => {
                last = Some(EkCertError::Unsupported(format!(
                    "signature algorithm {a} with a CA key {k} {}",
                    c.unwrap_or("")
                )));
                continue;
            }
        };
        match UnparsedPublicKey::new(alg, &ca.key).verify(&s.tbs, &s.signature) {
            Ok(()) => return Ok(ca),
            Err(_) => {
                last = Some(EkCertError::Signature(format!(
                    "{} ({})",
                    ca.subject_text, ca.file
                )))
            }
        }
    }
    Err(last.unwrap_or_else(|| EkCertError::UnknownIssuer(s.issuer_text.clone())))
}

/// The configured CAs (trust anchors for EK certificates).
#[derive(Debug, Clone, Default)]
pub struct EkCas {
    cas: Vec<Ca>,
}

fn pem_or_der(file: &str, data: &[u8]) -> Result<Vec<Certificate>, EkCertError> {
    let bad = |e: &dyn std::fmt::Display| EkCertError::Parse(file.to_owned(), e.to_string());
    if data.first() == Some(&0x30) {
        Ok(vec![Certificate::from_der(data).map_err(|e| bad(&e))?])
    } else {
        Certificate::load_pem_chain(data).map_err(|e| bad(&e))
    }
}

impl EkCas {
    /// The CA certificates of `files` ((name, contents): PEM, one or more certificates, or
    /// DER); each must be a CA.
    pub fn parse(files: &[(String, Vec<u8>)]) -> Result<EkCas, EkCertError> {
        Self::parse_chained(files, &[])
    }

    /// Anchors from `files` and intermediates from `intermediates` (same formats): each
    /// intermediate must be a CA issued, through at most [`MAX_CHAIN`] intermediates, by an
    /// anchor (every signature verified here, validity at each use).
    pub fn parse_chained(
        files: &[(String, Vec<u8>)],
        intermediates: &[(String, Vec<u8>)],
    ) -> Result<EkCas, EkCertError> {
        let mut cas = Self::parse_cas(files)?
            .into_iter()
            .map(|(ca, _)| ca)
            .collect::<Vec<_>>();
        let mut pending = Self::parse_cas(intermediates)?;
        for _ in 0..MAX_CHAIN {
            let mut rest = Vec::new();
            for (mut ca, cert) in pending {
                let s = Signed::of(&ca.file, &cert)?;
                match signer(&cas, &s) {
                    Ok(parent) => {
                        let (from, to) = validity(&cert);
                        let (pf, pt) = parent.window.unwrap_or((0, u64::MAX));
                        ca.window = Some((from.max(pf), to.min(pt)));
                        cas.push(ca);
                    }
                    Err(e) => rest.push((ca, cert, e)),
                }
            }
            if rest.is_empty() {
                return Ok(EkCas { cas });
            }
            pending = rest.into_iter().map(|(ca, cert, _)| (ca, cert)).collect();
        }
        match pending.first() {
            None => Ok(EkCas { cas }),
            Some((ca, cert)) => {
                let why =
                    match Signed::of(&ca.file, cert).and_then(|s| signer(&cas, &s).map(|_| ())) {
                        Err(e) => e.to_string(),
                        Ok(()) => format!("more than {MAX_CHAIN} intermediates deep"),
                    };
                Err(EkCertError::Unchained(
                    ca.file.clone(),
                    ca.subject_text.clone(),
                    why,
                ))
            }
        }
    }

    fn parse_cas(files: &[(String, Vec<u8>)]) -> Result<Vec<(Ca, Certificate)>, EkCertError> {
        let mut cas = Vec::new();
        for (file, data) in files {
            let certs = pem_or_der(file, data)?;
            if certs.is_empty() {
                return Err(EkCertError::Parse(file.clone(), "no certificate".into()));
            }
            for c in certs {
                let not_ca = |why: &str| EkCertError::NotCa(file.clone(), why.to_owned());
                let bc = c
                    .tbs_certificate
                    .get::<BasicConstraints>()
                    .map_err(|e| EkCertError::Parse(file.clone(), e.to_string()))?;
                if !bc.is_some_and(|(_, b)| b.ca) {
                    return Err(not_ca("no basicConstraints cA"));
                }
                let ku = c
                    .tbs_certificate
                    .get::<KeyUsage>()
                    .map_err(|e| EkCertError::Parse(file.clone(), e.to_string()))?;
                if ku.is_some_and(|(_, k)| !k.0.contains(KeyUsages::KeyCertSign)) {
                    return Err(not_ca("keyUsage without keyCertSign"));
                }
                let spki = &c.tbs_certificate.subject_public_key_info;
                let ca = Ca {
                    file: file.clone(),
                    subject: c
                        .tbs_certificate
                        .subject
                        .to_der()
                        .map_err(|e| EkCertError::Parse(file.clone(), e.to_string()))?,
                    subject_text: c.tbs_certificate.subject.to_string(),
                    key_alg: spki.algorithm.oid.to_string(),
                    curve: spki
                        .algorithm
                        .parameters
                        .as_ref()
                        .and_then(|p| p.decode_as::<der::asn1::ObjectIdentifier>().ok())
                        .map(|o| o.to_string()),
                    key: spki.subject_public_key.raw_bytes().to_vec(),
                    window: None,
                };
                cas.push((ca, c));
            }
        }
        Ok(cas)
    }

    pub fn is_empty(&self) -> bool {
        self.cas.is_empty()
    }

    /// Checks the DER EK certificate `der` for the EK `ek` at Unix time `now`.
    pub fn check(&self, der: &[u8], ek: &TpmPublic, now: i64) -> Result<(), EkCertError> {
        const WHAT: &str = "EK certificate";
        if der.len() > MAX_CERT {
            return Err(EkCertError::Size(WHAT.into(), der.len()));
        }
        let cert = Certificate::from_der(der)
            .map_err(|e| EkCertError::Parse(WHAT.into(), e.to_string()))?;
        let tbs = &cert.tbs_certificate;
        let ca = signer(&self.cas, &Signed::of(WHAT, &cert)?)?;
        let now_u = u64::try_from(now).unwrap_or(0);
        if let Some((from, to)) = ca.window {
            if now_u < from || now_u > to {
                return Err(EkCertError::IssuerTime(ca.subject_text.clone(), from, to));
            }
        }
        let from = tbs.validity.not_before.to_unix_duration().as_secs();
        let to = tbs.validity.not_after.to_unix_duration().as_secs();
        if now_u < from || now_u > to {
            return Err(EkCertError::Time(
                tbs.validity.not_before.to_string(),
                tbs.validity.not_after.to_string(),
            ));
        }
        let spki = tbs
            .subject_public_key_info
            .to_der()
            .map_err(|e| EkCertError::Parse(WHAT.into(), e.to_string()))?;
        let key = AkPublic::parse(&spki).map_err(|_| {
            EkCertError::Unsupported("a subjectPublicKey that is neither RSA nor EC".into())
        })?;
        if !same_key(&key, &ek.key) {
            return Err(EkCertError::KeyMismatch);
        }
        Ok(())
    }
}

fn strip(v: &[u8]) -> &[u8] {
    &v[v.iter().position(|b| *b != 0).unwrap_or(v.len())..]
}

fn same_key(a: &AkPublic, b: &AkPublic) -> bool {
    match (a, b) {
        (AkPublic::Rsa { n: n1, e: e1 }, AkPublic::Rsa { n: n2, e: e2 }) => {
            strip(n1) == strip(n2) && strip(e1) == strip(e2)
        }
        (
            AkPublic::Ecc {
                curve: c1,
                x: x1,
                y: y1,
            },
            AkPublic::Ecc {
                curve: c2,
                x: x2,
                y: y2,
            },
        ) => c1 == c2 && strip(x1) == strip(x2) && strip(y1) == strip(y2),
        _ => false,
    }
}
