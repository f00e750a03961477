//! Authenticode signatures of PE images (Secure Boot): signing as sbsign does, reproducibly.
//! Pure: bytes in, bytes out. The PE side (certificate table, padding, CheckSum, the
//! `SpcIndirectDataContent`) is `imgctl_measure::authenticode_sign`; the PKCS#7 SignedData is
//! [`crate::pkcs7::sign_authenticode`].

use imgctl_measure::authenticode_sign::{ExistingSignatures, SignError, Unsigned};

use crate::pkcs7::{sign_authenticode, Cert, Pkcs7Error, SPC_INDIRECT_DATA};
use imgctl_measure::keys::SigningKey;

/// What went wrong signing a PE image.
#[derive(Debug, thiserror::Error)]
pub enum AuthenticodeError {
    #[error(transparent)]
    Image(#[from] SignError),
    #[error(transparent)]
    Pkcs7(#[from] Pkcs7Error),
}

/// Signs the PE image `data` with `key` and its certificate `cert`: the SHA-256 Authenticode
/// hash of the image (padded to 8 bytes, without any certificate table) in an
/// `SpcIndirectDataContent`, signed, in a new `WIN_CERTIFICATE` after the ones `existing`
/// keeps. Same inputs, same bytes.
pub fn sign_pe(
    data: &[u8],
    key: &SigningKey,
    cert: &Cert,
    existing: ExistingSignatures,
) -> Result<Vec<u8>, AuthenticodeError> {
    let unsigned = Unsigned::new(data, existing)?;
    let content = unsigned.indirect_data()?;
    let signature = sign_authenticode(key, cert, SPC_INDIRECT_DATA, &content)?;
    Ok(unsigned.attach(&[&signature])?)
}

/// One `WIN_CERTIFICATE` of a signed image, read and checked.
#[derive(Debug, Clone)]
pub struct PeSignature {
    /// File offset of the entry.
    pub offset: usize,
    /// The signature, or why it could not be read.
    pub signature: Result<crate::pkcs7::AuthenticodeSignature, String>,
    /// Whether the image hash it carries is this image's Authenticode hash in its algorithm.
    pub image_hash_matches: bool,
}

impl PeSignature {
    /// Why this signature does not vouch for this image, or `None` when it does (signature
    /// valid and over this image's hash; whether the signer is trusted is another question).
    pub fn problem(&self) -> Option<String> {
        match &self.signature {
            Err(e) => Some(e.clone()),
            Ok(s) => match &s.verified {
                Err(e) => Some(e.clone()),
                Ok(()) if !self.image_hash_matches => Some(
                    "the image hash it signs is not this image's (modified after signing)".into(),
                ),
                Ok(()) => None,
            },
        }
    }
}

/// Every signature of the PE image `data`, each checked against the image's Authenticode
/// hash. Empty for an unsigned image; an error only for a malformed image or table.
pub fn pe_signatures(data: &[u8]) -> Result<Vec<PeSignature>, AuthenticodeError> {
    use imgctl_measure::authenticode::authenticode_digests;
    use imgctl_measure::authenticode_sign::{certificate_table, WIN_CERT_TYPE_PKCS_SIGNED_DATA};
    use imgctl_measure::{HashAlg, PeFile};
    let pe = PeFile::parse(data).map_err(SignError::from)?;
    let table = certificate_table(&pe).map_err(SignError::from)?;
    let mut out = Vec::new();
    for entry in table {
        let signature = if entry.certificate_type != WIN_CERT_TYPE_PKCS_SIGNED_DATA {
            Err(format!(
                "WIN_CERTIFICATE type {:#06x} is not PKCS#7 SignedData",
                entry.certificate_type
            ))
        } else {
            // Some signers (osslsigncode) count the alignment padding in dwLength: the DER
            // may be followed by up to 7 zero bytes, and nothing else.
            match der_length(entry.certificate) {
                Some(n)
                    if entry.certificate.len() - n < 8
                        && entry.certificate[n..].iter().all(|&b| b == 0) =>
                {
                    crate::pkcs7::read_authenticode(&entry.certificate[..n])
                        .map_err(|e| e.to_string())
                }
                _ => Err("bCertificate is not one DER SignedData (and zero padding)".into()),
            }
        };
        let image_hash_matches = match &signature {
            Ok(s) => {
                let alg = match s.digest_algorithm.as_str() {
                    "sha1" => Some(HashAlg::SHA1),
                    "sha256" => Some(HashAlg::SHA256),
                    "sha384" => Some(HashAlg::SHA384),
                    "sha512" => Some(HashAlg::SHA512),
                    _ => None,
                };
                match alg {
                    Some(a) => authenticode_digests(&pe, &[a])
                        .map_err(SignError::from)?
                        .first()
                        .is_some_and(|d| d.as_bytes() == s.image_digest.as_slice()),
                    None => false,
                }
            }
            Err(_) => false,
        };
        out.push(PeSignature {
            offset: entry.offset,
            signature,
            image_hash_matches,
        });
    }
    Ok(out)
}

/// The length of the DER SEQUENCE at the start of `b` (tag and length included), if it fits.
fn der_length(b: &[u8]) -> Option<usize> {
    if *b.first()? != 0x30 {
        return None;
    }
    let first = *b.get(1)? as usize;
    let (len, hdr) = if first < 0x80 {
        (first, 2)
    } else {
        let n = first - 0x80;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | *b.get(2 + i)? as usize;
        }
        (len, 2 + n)
    };
    let total = hdr.checked_add(len)?;
    (total <= b.len()).then_some(total)
}
