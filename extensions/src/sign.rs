//! I/O: reads the signing key and certificate and signs root hashes with them, in Rust.
//!
//! [`load_key`] is where every imgctl command gets a private key: a key file (PEM or DER,
//! encrypted PKCS#8 with a passphrase), or a key on a PKCS#11 token named by a `pkcs11:` URI
//! ([`imgctl_pkcs11`]). Both give an [`imgctl_measure::keys::SigningKey`].
//!
//! The signature is what the kernel's dm-verity `root_hash_sig_key_desc` and systemd expect: a
//! DER PKCS#7 SignedData, detached, over the root hash's lowercase hex string (no newline),
//! SHA-256, no signed attributes (so that it is deterministic for RSA keys and carries no
//! signing time), the signer certificate included ([`crate::pkcs7::sign_detached`]). For RSA
//! keys the bytes equal systemd-repart 252's (`PKCS7_sign()`) and `openssl smime -sign -binary
//! -noattr -md sha256 -outform DER`'s. No program is run and nothing ever prompts: an encrypted
//! PKCS#8 key is decrypted with the passphrase the caller gives ([`Signer::with_passphrase`]),
//! or refused with a message naming it.

use std::path::{Path, PathBuf};

use crate::pkcs7::{key_matches, sign_detached, Cert};
use crate::Error;
use imgctl_measure::keys::SigningKey;

/// A checked signing identity: the key belongs to the certificate.
#[derive(Debug, Clone)]
pub struct Signer {
    key: SigningKey,
    cert: Cert,
    /// The certificate, DER.
    pub cert_der: Vec<u8>,
}

fn read(path: &Path) -> Result<Vec<u8>, Error> {
    imgctl_fsio::read_bounded(path, imgctl_fsio::caps::KEY, "a key or certificate")
        .map_err(Error::from)
}

/// Reads the certificates of a PEM bundle or DER file.
pub fn read_certificates(path: &Path) -> Result<Vec<Cert>, Error> {
    Cert::parse_all(&read(path)?).map_err(|e| Error::Signing {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

fn first_certificate(cert: &Path) -> Result<Cert, Error> {
    read_certificates(cert)?
        .into_iter()
        .next()
        .ok_or_else(|| Error::Signing {
            path: cert.to_owned(),
            message: "no certificate".into(),
        })
}

/// Reads every certificate of `path`, or of each `*.pem`, `*.crt`, `*.cer` and `*.der` file of
/// the folder `path` (sorted by name).
pub fn read_trust_anchors(path: &Path) -> Result<Vec<Cert>, Error> {
    if !path.is_dir() {
        return read_certificates(path);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| Error::io(path, "reading folder", e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .and_then(|x| x.to_str())
                .is_some_and(|x| ["pem", "crt", "cer", "der"].contains(&x))
        })
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in &files {
        out.extend(read_certificates(f)?);
    }
    if out.is_empty() {
        return Err(Error::Signing {
            path: path.to_owned(),
            message: "the folder holds no *.pem, *.crt, *.cer or *.der certificate".into(),
        });
    }
    Ok(out)
}

/// Whether `key` (a `--key` argument or a recipe's `signing.key`) is a PKCS#11 URI rather than
/// a file.
pub fn is_pkcs11(key: &Path) -> bool {
    key.to_str().is_some_and(imgctl_pkcs11::is_pkcs11_uri)
}

/// `key` for messages: a PKCS#11 URI without its PIN, or the file's path.
pub fn key_display(key: &Path) -> String {
    match key.to_str().filter(|k| imgctl_pkcs11::is_pkcs11_uri(k)) {
        Some(uri) => imgctl_pkcs11::Pkcs11Uri::parse(uri)
            .map(|u| u.redacted())
            .unwrap_or_else(|_| "a PKCS#11 URI".into()),
        None => key.display().to_string(),
    }
}

/// The private key `key` names: a `pkcs11:` URI (opened on its token through `pkcs11_module`
/// or the URI's module-path; `passphrase` is not used) or a key file (PEM or DER PKCS#8,
/// decrypted with `passphrase` when encrypted). Errors name the file or the URI.
pub fn load_key(
    key: &Path,
    passphrase: Option<&[u8]>,
    pkcs11_module: Option<&Path>,
) -> Result<SigningKey, Error> {
    if let Some(uri) = key.to_str().filter(|k| imgctl_pkcs11::is_pkcs11_uri(k)) {
        return Ok(imgctl_pkcs11::open(uri, pkcs11_module)?);
    }
    let signing_error = |message: String| Error::Signing {
        path: key.to_owned(),
        message,
    };
    let raw = read(key)?;
    let plain = imgctl_measure::keys::decrypt_pem(&raw, passphrase)
        .map_err(|e| signing_error(e.to_string()))?;
    SigningKey::parse(&plain).map_err(|e| signing_error(e.to_string()))
}

impl Signer {
    /// Checks that `key` and `cert` exist, parse, and hold the same public key.
    pub fn new(key: &Path, cert: &Path) -> Result<Signer, Error> {
        Signer::with_passphrase(key, cert, None)
    }

    /// [`Signer::new`] for any key [`load_key`] reads: a key file (with its `passphrase`) or
    /// a PKCS#11 URI.
    pub fn open(
        key: &Path,
        cert: &Path,
        passphrase: Option<&[u8]>,
        pkcs11_module: Option<&Path>,
    ) -> Result<Signer, Error> {
        let first = first_certificate(cert)?;
        let signing_key = load_key(key, passphrase, pkcs11_module)?;
        Signer::from_key(signing_key, key, first, cert)
    }

    fn from_key(
        signing_key: SigningKey,
        key: &Path,
        first: Cert,
        cert: &Path,
    ) -> Result<Signer, Error> {
        if !key_matches(&signing_key, &first) {
            return Err(Error::KeyCertMismatch {
                // A URI is named without its PIN.
                key: match &signing_key {
                    SigningKey::External(k) => PathBuf::from(k.describe()),
                    _ => key.to_owned(),
                },
                cert: cert.to_owned(),
            });
        }
        Ok(Signer {
            key: signing_key,
            cert_der: first.der.clone(),
            cert: first,
        })
    }

    /// [`Signer::new`] for a key that may be encrypted (PKCS#8), decrypted with `passphrase`
    /// by [`imgctl_measure::keys::decrypt_pem`].
    pub fn with_passphrase(
        key: &Path,
        cert: &Path,
        passphrase: Option<&[u8]>,
    ) -> Result<Signer, Error> {
        Signer::open(key, cert, passphrase, None)
    }

    /// SHA-256 of the certificate's DER: the signature partition's `certificateFingerprint`.
    pub fn certificate_fingerprint(&self) -> [u8; 32] {
        self.cert.fingerprint()
    }

    /// The PE image `data` with an Authenticode signature by this key added
    /// ([`crate::authenticode::sign_pe`]).
    pub fn sign_pe(
        &self,
        data: &[u8],
        existing: imgctl_measure::authenticode_sign::ExistingSignatures,
    ) -> Result<Vec<u8>, Error> {
        Ok(crate::authenticode::sign_pe(
            data, &self.key, &self.cert, existing,
        )?)
    }

    /// DER PKCS#7 detached signature over `content`.
    pub fn sign(&self, content: &[u8]) -> Result<Vec<u8>, Error> {
        sign_detached(&self.key, &self.cert, content).map_err(|e| Error::Unsupported(e.to_string()))
    }
}

impl imgctl_measure::authenticode_sign::AuthenticodeSigner for Signer {
    fn sign_pe(&self, pe: &[u8]) -> Result<Vec<u8>, String> {
        Signer::sign_pe(
            self,
            pe,
            imgctl_measure::authenticode_sign::ExistingSignatures::Append,
        )
        .map_err(|e| e.to_string())
    }

    fn sign_indirect_data(&self, indirect_data: &[u8]) -> Result<Vec<u8>, String> {
        crate::pkcs7::sign_authenticode(
            &self.key,
            &self.cert,
            crate::pkcs7::SPC_INDIRECT_DATA,
            indirect_data,
        )
        .map_err(|e| e.to_string())
    }
}
