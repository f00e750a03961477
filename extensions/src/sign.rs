//! I/O: signs the root hash with openssl.
//!
//! The signature is what the kernel's dm-verity `root_hash_sig_key_desc` and systemd expect: a
//! DER PKCS#7 SignedData, detached, over the root hash's lowercase hex string (no newline),
//! SHA-256, no signed attributes (so that it is deterministic for RSA keys and carries no
//! signing time), the signer certificate included:
//! `openssl smime -sign -binary -noattr -md sha256 -outform DER -signer CERT -inkey KEY`.
//! `smime` goes through OpenSSL's PKCS7 API like systemd-repart's `PKCS7_sign()`, and gives the
//! same bytes as repart 252 (the digest AlgorithmIdentifier carries NULL parameters; `openssl
//! cms` omits them, which verifies the same but differs by bytes).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::mkfs::run;
use crate::Error;

/// A checked signing identity: the key belongs to the certificate.
#[derive(Debug, Clone)]
pub struct Signer {
    openssl: PathBuf,
    key: PathBuf,
    cert: PathBuf,
    /// The certificate, DER.
    pub cert_der: Vec<u8>,
}

fn public_key(openssl: &Path, args: &[&str], file: &Path) -> Result<Vec<u8>, Error> {
    if !file.is_file() {
        return Err(Error::io(
            file,
            "reading",
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        ));
    }
    run(Command::new(openssl).args(args).arg(file), None)
}

impl Signer {
    /// Checks that `key` and `cert` exist, parse, and hold the same public key.
    pub fn new(openssl: &Path, key: &Path, cert: &Path) -> Result<Signer, Error> {
        let from_cert = public_key(openssl, &["x509", "-noout", "-pubkey", "-in"], cert)?;
        let from_key = public_key(openssl, &["pkey", "-pubout", "-in"], key)?;
        if from_cert != from_key {
            return Err(Error::KeyCertMismatch {
                key: key.to_owned(),
                cert: cert.to_owned(),
            });
        }
        let cert_der = run(
            Command::new(openssl)
                .args(["x509", "-outform", "DER", "-in"])
                .arg(cert),
            None,
        )?;
        Ok(Signer {
            openssl: openssl.to_owned(),
            key: key.to_owned(),
            cert: cert.to_owned(),
            cert_der,
        })
    }

    /// SHA-256 of the certificate's DER: the signature partition's `certificateFingerprint`.
    pub fn certificate_fingerprint(&self) -> [u8; 32] {
        let d = ring::digest::digest(&ring::digest::SHA256, &self.cert_der);
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        out
    }

    /// DER PKCS#7 detached signature over `content`.
    pub fn sign(&self, content: &[u8]) -> Result<Vec<u8>, Error> {
        run(
            Command::new(&self.openssl)
                .args(["smime", "-sign", "-binary", "-noattr"])
                .args(["-md", "sha256", "-outform", "DER", "-signer"])
                .arg(&self.cert)
                .arg("-inkey")
                .arg(&self.key),
            Some(content),
        )
    }
}
