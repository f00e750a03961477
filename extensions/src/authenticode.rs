//! Authenticode signatures of PE images (Secure Boot): signing as sbsign does, reproducibly.
//! Pure: bytes in, bytes out. The PE side (certificate table, padding, CheckSum, the
//! `SpcIndirectDataContent`) is `imgctl_measure::authenticode_sign`; the PKCS#7 SignedData is
//! [`crate::pkcs7::sign_authenticode`].

use imgctl_measure::authenticode_sign::{ExistingSignatures, SignError, Unsigned};

use crate::pkcs7::{sign_authenticode, Cert, Pkcs7Error, SigningKey, SPC_INDIRECT_DATA};

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
