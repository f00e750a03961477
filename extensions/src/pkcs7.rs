//! PKCS#7 / CMS SignedData (RFC 2315, RFC 5652) for dm-verity root hash signatures: signing the
//! way systemd-repart 252 does and verifying the way the kernel and `systemd-veritysetup` do.
//! Pure: bytes in, bytes out.
//!
//! What is signed: the root hash's lowercase hex string, exactly as the signature partition's
//! `rootHash` holds it (no newline), detached (the SignedData carries no content). Signing
//! reproduces OpenSSL's `PKCS7_sign(cert, key, NULL, data, PKCS7_DETACHED | PKCS7_BINARY |
//! PKCS7_NOATTR)`, which is what repart calls and `openssl smime -sign -binary -noattr -md sha256`
//! produces, byte for byte for RSA keys:
//!
//! ```text
//! ContentInfo { signedData, SignedData {
//!   version 1, digestAlgorithms { sha256 NULL }, contentInfo { data } (no content),
//!   certificates [0] { signer }, signerInfos { SignerInfo {
//!     version 1, issuerAndSerialNumber, digestAlgorithm sha256 NULL,
//!     digestEncryptionAlgorithm rsaEncryption NULL (P-256: ecdsa-with-SHA256),
//!     encryptedDigest } } } }
//! ```
//!
//! Verification accepts that shape and CMS with signed attributes (`openssl cms -sign`'s
//! default: content-type and message-digest attributes, the signature over their DER), one
//! signer, SHA-256/384/512, RSA PKCS#1 v1.5 or ECDSA P-256. Anything else is refused, never
//! skipped.

use cms::cert::x509::spki::AlgorithmIdentifierOwned;
use cms::cert::x509::Certificate;
use cms::cert::{CertificateChoices, IssuerAndSerialNumber};
use cms::content_info::{CmsVersion, ContentInfo};
use cms::signed_data::{
    CertificateSet, EncapsulatedContentInfo, SignedData, SignerIdentifier, SignerInfo, SignerInfos,
};
use der::asn1::{ObjectIdentifier as Oid, OctetString, SetOfVec};
use der::{Any, Decode, Encode};
use imgctl_measure::keys::{SigningKey, VerifyingKey};
use p256::ecdsa::signature::hazmat::PrehashVerifier;
use rsa::traits::PublicKeyParts;
use sha2::Digest;

/// What went wrong; every message says what was expected.
#[derive(Debug, thiserror::Error)]
pub enum Pkcs7Error {
    #[error("not a PKCS#7 SignedData: {0}")]
    Malformed(String),
    #[error("unsupported PKCS#7: {0}")]
    Unsupported(String),
    #[error("the signature does not verify over root hash {content:?}{hint}")]
    BadSignature { content: String, hint: &'static str },
    #[error("signed by {signer}, which is not {trusted}")]
    Untrusted { signer: String, trusted: String },
    #[error("{0}")]
    Key(String),
}

mod oid {
    use der::asn1::ObjectIdentifier as Oid;
    pub const DATA: Oid = Oid::new_unwrap("1.2.840.113549.1.7.1");
    pub const SIGNED_DATA: Oid = Oid::new_unwrap("1.2.840.113549.1.7.2");
    pub const CONTENT_TYPE: Oid = Oid::new_unwrap("1.2.840.113549.1.9.3");
    pub const MESSAGE_DIGEST: Oid = Oid::new_unwrap("1.2.840.113549.1.9.4");
    pub const SHA256: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.2.1");
    pub const SHA384: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.2.2");
    pub const SHA512: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.2.3");
    pub const RSA: Oid = Oid::new_unwrap("1.2.840.113549.1.1.1");
    pub const SHA256_RSA: Oid = Oid::new_unwrap("1.2.840.113549.1.1.11");
    pub const SHA384_RSA: Oid = Oid::new_unwrap("1.2.840.113549.1.1.12");
    pub const SHA512_RSA: Oid = Oid::new_unwrap("1.2.840.113549.1.1.13");
    pub const EC_PUBLIC_KEY: Oid = Oid::new_unwrap("1.2.840.10045.2.1");
    pub const P256: Oid = Oid::new_unwrap("1.2.840.10045.3.1.7");
    pub const ECDSA_SHA256: Oid = Oid::new_unwrap("1.2.840.10045.4.3.2");
    pub const ECDSA_SHA384: Oid = Oid::new_unwrap("1.2.840.10045.4.3.3");
    pub const ECDSA_SHA512: Oid = Oid::new_unwrap("1.2.840.10045.4.3.4");
    pub const SUBJECT_KEY_ID: Oid = Oid::new_unwrap("2.5.29.14");
    /// Authenticode's `SPC_INDIRECT_DATA_OBJID`.
    pub const SPC_INDIRECT_DATA: Oid = Oid::new_unwrap("1.3.6.1.4.1.311.2.1.4");
}

/// Authenticode's `SPC_INDIRECT_DATA_OBJID` (1.3.6.1.4.1.311.2.1.4).
pub const SPC_INDIRECT_DATA: Oid = oid::SPC_INDIRECT_DATA;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hash {
    Sha256,
    Sha384,
    Sha512,
}

impl Hash {
    fn from_oid(o: &Oid) -> Option<Hash> {
        match *o {
            oid::SHA256 => Some(Hash::Sha256),
            oid::SHA384 => Some(Hash::Sha384),
            oid::SHA512 => Some(Hash::Sha512),
            _ => None,
        }
    }
    fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            Hash::Sha256 => sha2::Sha256::digest(data).to_vec(),
            Hash::Sha384 => sha2::Sha384::digest(data).to_vec(),
            Hash::Sha512 => sha2::Sha512::digest(data).to_vec(),
        }
    }
    fn rsa_padding(self) -> rsa::Pkcs1v15Sign {
        match self {
            Hash::Sha256 => rsa::Pkcs1v15Sign::new::<sha2::Sha256>(),
            Hash::Sha384 => rsa::Pkcs1v15Sign::new::<sha2::Sha384>(),
            Hash::Sha512 => rsa::Pkcs1v15Sign::new::<sha2::Sha512>(),
        }
    }
}

fn der_err(what: &str) -> impl Fn(der::Error) -> Pkcs7Error + '_ {
    move |e| Pkcs7Error::Malformed(format!("{what}: {e}"))
}

/// A certificate, kept with its exact DER (the fingerprint is over those bytes).
#[derive(Debug, Clone)]
pub struct Cert {
    pub der: Vec<u8>,
    cert: Certificate,
}

impl Cert {
    pub fn from_der(der: &[u8]) -> Result<Cert, Pkcs7Error> {
        let cert = Certificate::from_der(der).map_err(der_err("X.509 certificate"))?;
        Ok(Cert {
            der: der.to_vec(),
            cert,
        })
    }

    /// Every certificate in a PEM bundle, or the one certificate of a DER file.
    pub fn parse_all(bytes: &[u8]) -> Result<Vec<Cert>, Pkcs7Error> {
        if !bytes.starts_with(b"-----BEGIN") && !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
            return Ok(vec![Cert::from_der(bytes)?]);
        }
        let text = std::str::from_utf8(bytes)
            .map_err(|_| Pkcs7Error::Malformed("PEM file is not UTF-8".into()))?;
        let mut out = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("-----BEGIN ") {
            let block = &rest[start..];
            let end_marker = "-----END ";
            let Some(e) = block.find(end_marker) else {
                return Err(Pkcs7Error::Malformed(
                    "PEM block without an END line".into(),
                ));
            };
            let after = &block[e + end_marker.len()..];
            let close = after.find("-----").map_or(after.len(), |i| i + 5);
            let len = e + end_marker.len() + close;
            let (label, der) = der::pem::decode_vec(&block.as_bytes()[..len])
                .map_err(|e| Pkcs7Error::Malformed(format!("PEM: {e}")))?;
            if label == "CERTIFICATE" {
                out.push(Cert::from_der(&der)?);
            }
            rest = &block[len..];
        }
        if out.is_empty() {
            return Err(Pkcs7Error::Malformed(
                "no CERTIFICATE block in the PEM file".into(),
            ));
        }
        Ok(out)
    }

    /// SHA-256 of the DER: the signature partition's `certificateFingerprint`.
    pub fn fingerprint(&self) -> [u8; 32] {
        sha2::Sha256::digest(&self.der).into()
    }

    pub fn subject(&self) -> String {
        self.cert.tbs_certificate.subject.to_string()
    }

    fn issuer_and_serial(&self) -> IssuerAndSerialNumber {
        IssuerAndSerialNumber {
            issuer: self.cert.tbs_certificate.issuer.clone(),
            serial_number: self.cert.tbs_certificate.serial_number.clone(),
        }
    }

    fn is(&self, sid: &SignerIdentifier) -> bool {
        match sid {
            SignerIdentifier::IssuerAndSerialNumber(ias) => *ias == self.issuer_and_serial(),
            SignerIdentifier::SubjectKeyIdentifier(ski) => self
                .cert
                .tbs_certificate
                .extensions
                .iter()
                .flatten()
                .filter(|e| e.extn_id == oid::SUBJECT_KEY_ID)
                .any(|e| {
                    OctetString::from_der(e.extn_value.as_bytes())
                        .is_ok_and(|v| v.as_bytes() == ski.0.as_bytes())
                }),
        }
    }

    fn public_key(&self) -> Result<PublicKey, Pkcs7Error> {
        let spki = &self.cert.tbs_certificate.subject_public_key_info;
        let bits = spki.subject_public_key.raw_bytes();
        match spki.algorithm.oid {
            oid::RSA => {
                let k = rsa::pkcs1::DecodeRsaPublicKey::from_pkcs1_der(bits)
                    .map_err(|e| Pkcs7Error::Malformed(format!("RSA public key: {e}")))?;
                Ok(PublicKey::Rsa(k))
            }
            oid::EC_PUBLIC_KEY => {
                let curve = spki
                    .algorithm
                    .parameters
                    .as_ref()
                    .and_then(|p| p.decode_as::<Oid>().ok());
                if curve != Some(oid::P256) {
                    return Err(Pkcs7Error::Unsupported(format!(
                        "EC key on curve {curve:?}; only P-256 is supported"
                    )));
                }
                let k = p256::ecdsa::VerifyingKey::from_sec1_bytes(bits)
                    .map_err(|e| Pkcs7Error::Malformed(format!("P-256 public key: {e}")))?;
                Ok(PublicKey::P256(k))
            }
            other => Err(Pkcs7Error::Unsupported(format!(
                "certificate key algorithm {other}"
            ))),
        }
    }
}

/// Whether the certificate `issuer_der` issued `child_der`: the child's issuer is the issuer's
/// subject and the child's signature (RSA PKCS#1 v1.5 or ECDSA P-256 with SHA-256/384/512)
/// verifies with the issuer's public key. Validity dates and extensions are not looked at (UEFI
/// firmware does not either). Anything unparsable is `false`.
pub fn issued_by(child_der: &[u8], issuer_der: &[u8]) -> bool {
    let (Ok(child), Ok(issuer)) = (Cert::from_der(child_der), Cert::from_der(issuer_der)) else {
        return false;
    };
    if child.cert.tbs_certificate.issuer != issuer.cert.tbs_certificate.subject {
        return false;
    }
    let Ok(tbs) = child.cert.tbs_certificate.to_der() else {
        return false;
    };
    let sig = child.cert.signature.raw_bytes();
    let (hash, ecdsa) = match child.cert.signature_algorithm.oid {
        oid::SHA256_RSA => (Hash::Sha256, false),
        oid::SHA384_RSA => (Hash::Sha384, false),
        oid::SHA512_RSA => (Hash::Sha512, false),
        oid::ECDSA_SHA256 => (Hash::Sha256, true),
        oid::ECDSA_SHA384 => (Hash::Sha384, true),
        oid::ECDSA_SHA512 => (Hash::Sha512, true),
        _ => return false,
    };
    let digest = hash.digest(&tbs);
    match issuer.public_key() {
        Ok(PublicKey::Rsa(k)) if !ecdsa => k.verify(hash.rsa_padding(), &digest, sig).is_ok(),
        Ok(PublicKey::P256(k)) if ecdsa => {
            use p256::ecdsa::signature::hazmat::PrehashVerifier;
            p256::ecdsa::Signature::from_der(sig)
                .is_ok_and(|s| k.verify_prehash(&digest, &s).is_ok())
        }
        _ => false,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PublicKey {
    Rsa(rsa::RsaPublicKey),
    P256(p256::ecdsa::VerifyingKey),
}

/// Whether `cert` holds `key`'s public key.
pub fn key_matches(key: &SigningKey, cert: &Cert) -> bool {
    let Ok(public) = cert.public_key() else {
        return false;
    };
    let public = match public {
        PublicKey::Rsa(k) => VerifyingKey::Rsa(k),
        PublicKey::P256(k) => VerifyingKey::EccP256(p256::PublicKey::from(k)),
    };
    public == key.verifying_key()
}

fn alg(oid: Oid, null_params: bool) -> AlgorithmIdentifierOwned {
    AlgorithmIdentifierOwned {
        oid,
        parameters: null_params.then(Any::null),
    }
}

/// Signs a SHA-256 digest: RSASSA-PKCS1-v1_5 (algorithm `rsaEncryption NULL`, as OpenSSL's
/// PKCS#7 writes it) or deterministic ECDSA P-256 (RFC 6979, `ecdsa-with-SHA256`).
fn sign_sha256_digest(
    key: &SigningKey,
    digest: &[u8],
) -> Result<(AlgorithmIdentifierOwned, Vec<u8>), Pkcs7Error> {
    let algorithm = match key.verifying_key() {
        VerifyingKey::Rsa(_) => alg(oid::RSA, true),
        VerifyingKey::EccP256(_) => alg(oid::ECDSA_SHA256, false),
    };
    let signature = key
        .sign_digest(imgctl_measure::HashAlg::SHA256, digest)
        .map_err(|e| Pkcs7Error::Key(e.to_string()))?;
    Ok((algorithm, signature))
}

/// A detached PKCS#7 signature over `content`, as `PKCS7_sign(.., PKCS7_DETACHED |
/// PKCS7_BINARY | PKCS7_NOATTR)` makes it with SHA-256.
pub fn sign_detached(key: &SigningKey, cert: &Cert, content: &[u8]) -> Result<Vec<u8>, Pkcs7Error> {
    if !key_matches(key, cert) {
        return Err(Pkcs7Error::Key(
            "the private key does not match the certificate".into(),
        ));
    }
    let (sig_alg, signature) = sign_sha256_digest(key, &Hash::Sha256.digest(content))?;
    signed_data(cert, None, sig_alg, signature, oid::DATA, None)
}

/// The `SignedData` in a DER `ContentInfo`, whose signed content is of `econtent_type`.
fn signed_data_of(der: &[u8], econtent_type: Oid, what: &str) -> Result<SignedData, Pkcs7Error> {
    let ci = ContentInfo::from_der(der).map_err(der_err("ContentInfo"))?;
    if ci.content_type != oid::SIGNED_DATA {
        return Err(Pkcs7Error::Malformed(format!(
            "content type {} is not signedData",
            ci.content_type
        )));
    }
    let sd: SignedData = ci.content.decode_as().map_err(der_err("SignedData"))?;
    if sd.encap_content_info.econtent_type != econtent_type {
        return Err(Pkcs7Error::Unsupported(format!(
            "signed content type {} is not {what}",
            sd.encap_content_info.econtent_type
        )));
    }
    Ok(sd)
}

/// DER `ContentInfo` of a `SignedData` with one SHA-256 signer (`cert`, by issuer and serial),
/// its certificate, and `econtent` (`None`: detached) of `econtent_type`.
fn signed_data(
    cert: &Cert,
    signed_attrs: Option<cms::signed_data::SignedAttributes>,
    signature_algorithm: AlgorithmIdentifierOwned,
    signature: Vec<u8>,
    econtent_type: Oid,
    econtent: Option<Any>,
) -> Result<Vec<u8>, Pkcs7Error> {
    let enc = |e: der::Error| Pkcs7Error::Malformed(format!("encoding: {e}"));
    let signer = SignerInfo {
        version: CmsVersion::V1,
        sid: SignerIdentifier::IssuerAndSerialNumber(cert.issuer_and_serial()),
        digest_alg: alg(oid::SHA256, true),
        signed_attrs,
        signature_algorithm,
        signature: OctetString::new(signature).map_err(enc)?,
        unsigned_attrs: None,
    };
    let mut digests = SetOfVec::new();
    digests.insert(alg(oid::SHA256, true)).map_err(enc)?;
    let mut certs = SetOfVec::new();
    certs
        .insert(CertificateChoices::Certificate(cert.cert.clone()))
        .map_err(enc)?;
    let mut signers = SetOfVec::new();
    signers.insert(signer).map_err(enc)?;
    let sd = SignedData {
        version: CmsVersion::V1,
        digest_algorithms: digests,
        encap_content_info: EncapsulatedContentInfo {
            econtent_type,
            econtent,
        },
        certificates: Some(CertificateSet(certs)),
        crls: None,
        signer_infos: SignerInfos(signers),
    };
    let ci = ContentInfo {
        content_type: oid::SIGNED_DATA,
        content: Any::encode_from(&sd).map_err(enc)?,
    };
    ci.to_der().map_err(enc)
}

/// Who signed, after the signature verified.
#[derive(Debug, Clone)]
pub struct Signer {
    pub subject: String,
    pub fingerprint: [u8; 32],
    /// The signer is one of the trusted certificates given to [`verify_detached`].
    pub trusted: bool,
}

/// Verifies a detached PKCS#7/CMS signature over `content`. With `trusted`, the signer must be
/// one of those certificates; without, the certificate carried in the signature is used and
/// [`Signer::trusted`] is false (valid, but nobody vouched for the signer).
pub fn verify_detached(
    der: &[u8],
    content: &[u8],
    trusted: Option<&[Cert]>,
) -> Result<Signer, Pkcs7Error> {
    let sd = signed_data_of(der, oid::DATA, "data")?;
    let eci = &sd.encap_content_info;
    if let Some(inner) = &eci.econtent {
        // Not detached: the embedded content must be exactly what we verify.
        let os: OctetString = inner.decode_as().map_err(der_err("embedded content"))?;
        if os.as_bytes() != content {
            return Err(Pkcs7Error::BadSignature {
                content: String::from_utf8_lossy(content).into_owned(),
                hint: " (it embeds different content)",
            });
        }
    }
    let signers: Vec<&SignerInfo> = sd.signer_infos.0.iter().collect();
    let [si] = signers.as_slice() else {
        return Err(Pkcs7Error::Unsupported(format!(
            "{} signers; a root hash signature has exactly one",
            signers.len()
        )));
    };
    let hash = Hash::from_oid(&si.digest_alg.oid).ok_or_else(|| {
        Pkcs7Error::Unsupported(format!("digest algorithm {}", si.digest_alg.oid))
    })?;
    let digest = hash.digest(content);
    let message_digest = match &si.signed_attrs {
        None => digest,
        Some(attrs) => {
            let one = |o: Oid, what: &str| -> Result<&Any, Pkcs7Error> {
                let mut it = attrs.iter().filter(|a| a.oid == o);
                match (it.next(), it.next()) {
                    (Some(a), None) if a.values.len() == 1 => a
                        .values
                        .get(0)
                        .ok_or_else(|| Pkcs7Error::Malformed(format!("{what} without a value"))),
                    _ => Err(Pkcs7Error::Malformed(format!(
                        "signed attributes need exactly one {what}"
                    ))),
                }
            };
            let ct: Oid = one(oid::CONTENT_TYPE, "content-type")?
                .decode_as()
                .map_err(der_err("content-type attribute"))?;
            if ct != oid::DATA {
                return Err(Pkcs7Error::Unsupported(format!(
                    "signed content-type attribute {ct}"
                )));
            }
            let md: OctetString = one(oid::MESSAGE_DIGEST, "message-digest")?
                .decode_as()
                .map_err(der_err("message-digest attribute"))?;
            if md.as_bytes() != digest.as_slice() {
                return Err(Pkcs7Error::BadSignature {
                    content: String::from_utf8_lossy(content).into_owned(),
                    hint: " (its message digest is of other content)",
                });
            }
            hash.digest(&attrs.to_der().map_err(der_err("signed attributes"))?)
        }
    };
    let embedded: Vec<Cert> = sd
        .certificates
        .iter()
        .flat_map(|s| s.0.iter())
        .filter_map(|c| match c {
            CertificateChoices::Certificate(c) => c.to_der().ok(),
            CertificateChoices::Other(_) => None,
        })
        .filter_map(|d| Cert::from_der(&d).ok())
        .collect();
    let pool: &[Cert] = trusted.unwrap_or(&embedded);
    let Some(cert) = pool.iter().find(|c| c.is(&si.sid)) else {
        let signer = embedded.iter().find(|c| c.is(&si.sid)).map_or_else(
            || "a certificate the signature does not carry".into(),
            Cert::subject,
        );
        return Err(match trusted {
            Some(t) => Pkcs7Error::Untrusted {
                signer,
                trusted: format!(
                    "any of the {} given certificate(s) ({})",
                    t.len(),
                    t.iter().map(Cert::subject).collect::<Vec<_>>().join("; ")
                ),
            },
            None => Pkcs7Error::Malformed(
                "the signer's certificate is not in the signature (give --certificate)".into(),
            ),
        });
    };
    let sig = si.signature.as_bytes();
    let bad = || Pkcs7Error::BadSignature {
        content: String::from_utf8_lossy(content).into_owned(),
        hint: "",
    };
    match (cert.public_key()?, si.signature_algorithm.oid) {
        (PublicKey::Rsa(k), o) => {
            let implied = match o {
                oid::RSA => None,
                oid::SHA256_RSA => Some(Hash::Sha256),
                oid::SHA384_RSA => Some(Hash::Sha384),
                oid::SHA512_RSA => Some(Hash::Sha512),
                other => {
                    return Err(Pkcs7Error::Unsupported(format!(
                        "signature algorithm {other} for an RSA key"
                    )))
                }
            };
            if implied.is_some_and(|h| h != hash) {
                return Err(Pkcs7Error::Unsupported(
                    "signature and digest algorithms name different hashes".into(),
                ));
            }
            if sig.len() != k.size() {
                return Err(bad());
            }
            k.verify(hash.rsa_padding(), &message_digest, sig)
                .map_err(|_| bad())?;
        }
        (PublicKey::P256(k), o) => {
            if ![
                oid::ECDSA_SHA256,
                oid::ECDSA_SHA384,
                oid::ECDSA_SHA512,
                oid::EC_PUBLIC_KEY,
            ]
            .contains(&o)
            {
                return Err(Pkcs7Error::Unsupported(format!(
                    "signature algorithm {o} for a P-256 key"
                )));
            }
            let s = p256::ecdsa::Signature::from_der(sig).map_err(|_| bad())?;
            k.verify_prehash(&message_digest, &s).map_err(|_| bad())?;
        }
    }
    Ok(Signer {
        subject: cert.subject(),
        fingerprint: cert.fingerprint(),
        trusted: trusted.is_some(),
    })
}

/// An Authenticode PKCS#7 SignedData over `content` (the DER of an `SpcIndirectDataContent`,
/// `content_type` its OID), the way sbsign 0.9.4 makes it, less what would make it
/// irreproducible or mean nothing to firmware:
///
/// ```text
/// ContentInfo { signedData, SignedData {
///   version 1, digestAlgorithms { sha256 NULL },
///   contentInfo { content_type, [0] content },
///   certificates [0] { signer }, signerInfos { SignerInfo {
///     version 1, issuerAndSerialNumber, digestAlgorithm sha256 NULL,
///     authenticatedAttributes [0] { contentType content_type,
///                                   messageDigest SHA-256(content octets of content) },
///     digestEncryptionAlgorithm rsaEncryption NULL (P-256: ecdsa-with-SHA256),
///     encryptedDigest } } } }
/// ```
///
/// sbsign also writes `signingTime` (the clock: never the same bytes twice) and
/// `SMIMECapabilities` (S/MIME cipher preferences, meaningless for a boot image); we write
/// neither. Authenticode's message digest is over the content's octets without the outer
/// SEQUENCE tag and length.
pub fn sign_authenticode(
    key: &SigningKey,
    cert: &Cert,
    content_type: Oid,
    content: &[u8],
) -> Result<Vec<u8>, Pkcs7Error> {
    use cms::cert::x509::attr::{Attribute, AttributeValue};
    if !key_matches(key, cert) {
        return Err(Pkcs7Error::Key(
            "the private key does not match the certificate".into(),
        ));
    }
    let enc = |e: der::Error| Pkcs7Error::Malformed(format!("encoding: {e}"));
    let octets = imgctl_measure::authenticode_sign::indirect_data_content_octets(content)
        .ok_or_else(|| {
            Pkcs7Error::Malformed("the signed content is not one DER SEQUENCE".into())
        })?;
    let attribute = |oid: Oid, value: AttributeValue| -> Result<Attribute, Pkcs7Error> {
        let mut values = SetOfVec::new();
        values.insert(value).map_err(enc)?;
        Ok(Attribute { oid, values })
    };
    let mut attrs = SetOfVec::new();
    attrs
        .insert(attribute(
            oid::CONTENT_TYPE,
            Any::encode_from(&content_type).map_err(enc)?,
        )?)
        .map_err(enc)?;
    attrs
        .insert(attribute(
            oid::MESSAGE_DIGEST,
            Any::encode_from(&OctetString::new(Hash::Sha256.digest(octets)).map_err(enc)?)
                .map_err(enc)?,
        )?)
        .map_err(enc)?;
    let signed = Hash::Sha256.digest(&attrs.to_der().map_err(enc)?);
    let (sig_alg, signature) = sign_sha256_digest(key, &signed)?;
    signed_data(
        cert,
        Some(attrs),
        sig_alg,
        signature,
        content_type,
        Some(Any::from_der(content).map_err(der_err("signed content"))?),
    )
}

#[derive(der::Sequence)]
struct SpcAttributeTypeAndOptionalValue {
    value_type: Oid,
    value: Option<Any>,
}

#[derive(der::Sequence)]
struct DigestInfo {
    digest_algorithm: AlgorithmIdentifierOwned,
    digest: OctetString,
}

#[derive(der::Sequence)]
struct SpcIndirectDataContent {
    data: SpcAttributeTypeAndOptionalValue,
    message_digest: DigestInfo,
}

/// What an Authenticode signature says, and whether its PKCS#7 signature verifies.
#[derive(Debug, Clone)]
pub struct AuthenticodeSignature {
    pub subject: String,
    pub issuer: String,
    /// The signer certificate's serial number, upper-case hex, as the integer (DER's leading
    /// 0x00 sign byte dropped, as `openssl x509 -serial` prints it).
    pub serial: String,
    /// The image hash algorithm of the `SpcIndirectDataContent` (`sha1`, `sha256`, …).
    pub digest_algorithm: String,
    /// The image hash the signature carries.
    pub image_digest: Vec<u8>,
    /// The signer's certificate, DER.
    pub certificate_der: Vec<u8>,
    /// `Ok` when the SignedData verifies with the certificate it carries (over the
    /// `SpcIndirectDataContent`); else why not.
    pub verified: Result<(), String>,
}

fn hash_name(o: &Oid) -> String {
    match *o {
        oid::SHA256 => "sha256".into(),
        oid::SHA384 => "sha384".into(),
        oid::SHA512 => "sha512".into(),
        o if o == Oid::new_unwrap("1.3.14.3.2.26") => "sha1".into(),
        o => o.to_string(),
    }
}

/// Reads an Authenticode PKCS#7 SignedData (a `WIN_CERTIFICATE`'s `bCertificate`) and checks
/// its signature: one signer, found by issuer and serial among the carried certificates,
/// signed attributes with contentType `SPC_INDIRECT_DATA` and a messageDigest over the
/// content octets, RSA PKCS#1 v1.5 or ECDSA P-256 over their DER. Whether the carried image
/// hash is the image's is the caller's check; whether the signer is trusted too.
pub fn read_authenticode(der: &[u8]) -> Result<AuthenticodeSignature, Pkcs7Error> {
    let sd = signed_data_of(der, oid::SPC_INDIRECT_DATA, "SpcIndirectDataContent")?;
    let eci = &sd.encap_content_info;
    let content = eci
        .econtent
        .as_ref()
        .ok_or_else(|| Pkcs7Error::Malformed("no SpcIndirectDataContent".into()))?
        .to_der()
        .map_err(der_err("SpcIndirectDataContent"))?;
    let idc =
        SpcIndirectDataContent::from_der(&content).map_err(der_err("SpcIndirectDataContent"))?;
    let octets = imgctl_measure::authenticode_sign::indirect_data_content_octets(&content)
        .ok_or_else(|| Pkcs7Error::Malformed("SpcIndirectDataContent length".into()))?;
    let signers: Vec<&SignerInfo> = sd.signer_infos.0.iter().collect();
    let [si] = signers.as_slice() else {
        return Err(Pkcs7Error::Unsupported(format!(
            "{} signers; Authenticode has exactly one",
            signers.len()
        )));
    };
    let embedded: Vec<Cert> = sd
        .certificates
        .iter()
        .flat_map(|s| s.0.iter())
        .filter_map(|c| match c {
            CertificateChoices::Certificate(c) => c.to_der().ok(),
            CertificateChoices::Other(_) => None,
        })
        .filter_map(|d| Cert::from_der(&d).ok())
        .collect();
    let cert = embedded.iter().find(|c| c.is(&si.sid)).ok_or_else(|| {
        Pkcs7Error::Malformed("the signer's certificate is not in the signature".into())
    })?;
    let verified = verify_signer_info(si, cert, octets);
    Ok(AuthenticodeSignature {
        subject: cert.subject(),
        issuer: cert.cert.tbs_certificate.issuer.to_string(),
        serial: serial_hex(cert.cert.tbs_certificate.serial_number.as_bytes()),
        digest_algorithm: hash_name(&idc.message_digest.digest_algorithm.oid),
        image_digest: idc.message_digest.digest.as_bytes().to_vec(),
        certificate_der: cert.der.clone(),
        verified,
    })
}

fn verify_signer_info(si: &SignerInfo, cert: &Cert, octets: &[u8]) -> Result<(), String> {
    let hash = Hash::from_oid(&si.digest_alg.oid).ok_or_else(|| {
        format!(
            "unsupported digest algorithm {}",
            hash_name(&si.digest_alg.oid)
        )
    })?;
    let attrs = si
        .signed_attrs
        .as_ref()
        .ok_or("no signed attributes (Authenticode requires them)")?;
    let one = |o: Oid, what: &str| -> Result<Any, String> {
        let mut it = attrs.iter().filter(|a| a.oid == o);
        match (it.next(), it.next()) {
            (Some(a), None) if a.values.len() == 1 => a
                .values
                .get(0)
                .cloned()
                .ok_or_else(|| format!("{what} without a value")),
            _ => Err(format!("signed attributes need exactly one {what}")),
        }
    };
    let ct: Oid = one(oid::CONTENT_TYPE, "contentType")?
        .decode_as()
        .map_err(|e| format!("contentType: {e}"))?;
    if ct != oid::SPC_INDIRECT_DATA {
        return Err(format!(
            "signed contentType {ct} is not SpcIndirectDataContent"
        ));
    }
    let md: OctetString = one(oid::MESSAGE_DIGEST, "messageDigest")?
        .decode_as()
        .map_err(|e| format!("messageDigest: {e}"))?;
    if md.as_bytes() != hash.digest(octets).as_slice() {
        return Err("the messageDigest is not of the SpcIndirectDataContent".into());
    }
    let signed = hash.digest(&attrs.to_der().map_err(|e| e.to_string())?);
    let sig = si.signature.as_bytes();
    let bad = || "the signature does not verify with the signer's certificate".to_string();
    match cert.public_key().map_err(|e| e.to_string())? {
        PublicKey::Rsa(k) => {
            if sig.len() != k.size() {
                return Err(bad());
            }
            k.verify(hash.rsa_padding(), &signed, sig)
                .map_err(|_| bad())
        }
        PublicKey::P256(k) => {
            let s = p256::ecdsa::Signature::from_der(sig).map_err(|_| bad())?;
            k.verify_prehash(&signed, &s).map_err(|_| bad())
        }
    }
}

/// At most this many signers are named, as systemd's `pkcs7_extract_signers()` allows.
pub const VERITY_SIGNERS_MAX: usize = 32;

/// The `<signers>` field of systemd's `verity` NvPCR record for a root hash signature `der`
/// (systemd main, src/shared/pcrextend-util.c `pcrextend_verity_word()` over
/// src/shared/pkcs7-util.c `pkcs7_extract_signers()`): for each SignerInfo, in order, the
/// lower-case hex of its serial number's whole DER INTEGER (`i2d_ASN1_INTEGER`: tag, length
/// and content) and the standard, padded base64 of its issuer Name's DER (`i2d_X509_NAME`),
/// joined by `/`; signers joined by `,`. A signer named by subject key identifier (systemd
/// reads only issuer and serial), none, or more than [`VERITY_SIGNERS_MAX`] is an error.
pub fn verity_signers(der: &[u8]) -> Result<String, Pkcs7Error> {
    use base64::Engine;
    let sd = signed_data_of(der, oid::DATA, "data")?;
    let n = sd.signer_infos.0.len();
    if n == 0 || n > VERITY_SIGNERS_MAX {
        return Err(Pkcs7Error::Unsupported(format!(
            "{n} signers; systemd names 1 to {VERITY_SIGNERS_MAX}"
        )));
    }
    let mut out = Vec::with_capacity(n);
    for si in sd.signer_infos.0.iter() {
        let SignerIdentifier::IssuerAndSerialNumber(ias) = &si.sid else {
            return Err(Pkcs7Error::Unsupported(
                "a signer named by subject key identifier (systemd names issuer and serial)".into(),
            ));
        };
        let serial = ias
            .serial_number
            .to_der()
            .map_err(der_err("serial number"))?;
        let issuer = ias.issuer.to_der().map_err(der_err("issuer"))?;
        out.push(format!(
            "{}/{}",
            hex::encode(serial),
            base64::engine::general_purpose::STANDARD.encode(issuer)
        ));
    }
    Ok(out.join(","))
}

/// A DER INTEGER's content octets of a (positive) serial as upper-case hex of the integer: the
/// leading zero bytes DER adds for the sign are dropped, one digit pair is kept.
fn serial_hex(der: &[u8]) -> String {
    let start = der
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(der.len().saturating_sub(1));
    hex::encode_upper(&der[start..])
}

#[cfg(test)]
mod serial_tests {
    #[test]
    fn a_serial_prints_as_openssl_prints_it() {
        assert_eq!(super::serial_hex(&[0x00, 0x92, 0xe2]), "92E2");
        assert_eq!(super::serial_hex(&[0x01, 0x00]), "0100");
        assert_eq!(super::serial_hex(&[0x00]), "00");
    }
}
