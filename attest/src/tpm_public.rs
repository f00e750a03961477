//! `TPMT_PUBLIC` (TPM 2.0 Library Part 2 §12.2.4), the one parser of a TPM object's public
//! area: the attestation key a quote is checked with ([`crate::quote::AkPublic`] is its key),
//! and for enrolment the endorsement key (the key `imgctl-service`'s credential encrypts to),
//! with the object's Name (Part 1 §16: `nameAlg || H_nameAlg(TPMT_PUBLIC)`).
//!
//! ```text
//! TPMT_PUBLIC: u16 type | u16 nameAlg | u32 objectAttributes | TPM2B authPolicy | parameters | unique
//!   RSA parameters: TPMT_SYM_DEF_OBJECT {u16 alg [u16 keyBits u16 mode]} | TPMT_RSA_SCHEME
//!     {u16 scheme [u16 hashAlg]} | u16 keyBits | u32 exponent;  unique: TPM2B modulus
//!   ECC parameters: TPMT_SYM_DEF_OBJECT | TPMT_ECC_SCHEME {u16 scheme [u16 hashAlg [u16 count]]}
//!     | u16 curveID | TPMT_KDF_SCHEME {u16 scheme [u16 hashAlg]};  unique: TPM2B x | TPM2B y
//! ```

use crate::quote::{AkPublic, TPM_ALG_ECC, TPM_ALG_ECDAA, TPM_ALG_NULL, TPM_ALG_RSA};
use imgctl_measure::bank::HashAlg;
use imgctl_measure::reader::Reader;
use imgctl_measure::tpm_wire::read_tpm2b;
use imgctl_measure::ParseError;

/// `TPM_ALG_AES`.
pub const TPM_ALG_AES: u16 = 0x0006;
/// `TPM_ALG_CFB`.
pub const TPM_ALG_CFB: u16 = 0x0043;

/// `TPMA_OBJECT` bits (Part 2 §8.3).
pub mod attr {
    pub const FIXED_TPM: u32 = 1 << 1;
    pub const FIXED_PARENT: u32 = 1 << 4;
    pub const SENSITIVE_DATA_ORIGIN: u32 = 1 << 5;
    pub const RESTRICTED: u32 = 1 << 16;
    pub const DECRYPT: u32 = 1 << 17;
    pub const SIGN_ENCRYPT: u32 = 1 << 18;
}

/// The symmetric algorithm of a storage key (its `TPMT_SYM_DEF_OBJECT`), when not null.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SymDef {
    pub algorithm: u16,
    pub key_bits: u16,
    pub mode: u16,
}

/// A parsed `TPMT_PUBLIC`, with the exact bytes it was parsed from and its Name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TpmPublic {
    pub name_alg: HashAlg,
    pub attributes: u32,
    pub symmetric: Option<SymDef>,
    pub key: AkPublic,
    /// The marshalled `TPMT_PUBLIC`.
    pub bytes: Vec<u8>,
    /// `nameAlg || H_nameAlg(TPMT_PUBLIC)`.
    pub name: Vec<u8>,
}

/// The largest `TPMT_PUBLIC` accepted (a TPM2B_PUBLIC is at most a few hundred bytes for
/// RSA-4096; this bounds every allocation sized by the input).
pub const MAX_PUBLIC: usize = 1024;

impl TpmPublic {
    /// Parses a `TPMT_PUBLIC`, or a `TPM2B_PUBLIC` (size-prefixed, as tpm2-tools writes
    /// `ek.pub`/`ak.pub`); nothing may follow it.
    pub fn parse(data: &[u8]) -> Result<TpmPublic, ParseError> {
        if data.len() > MAX_PUBLIC {
            return Err(ParseError::new(
                0,
                "TPMT_PUBLIC",
                format!("{} bytes, more than {MAX_PUBLIC}", data.len()),
            ));
        }
        // A TPMT_PUBLIC starts with its type (0x0001 RSA, 0x0023 ECC); a TPM2B_PUBLIC with a
        // size that equals the rest of the data.
        let bare = match data {
            [a, b, rest @ ..] => usize::from(u16::from_be_bytes([*a, *b])) != rest.len(),
            _ => true,
        };
        let body = if bare {
            data
        } else {
            let mut r = Reader::new(data);
            let body = read_tpm2b(&mut r, "TPM2B_PUBLIC")?;
            r.expect_end("TPM2B_PUBLIC")?;
            body
        };
        let mut r = Reader::new(body);
        let key_type = r.u16_be("TPMT_PUBLIC.type")?;
        let name_alg = HashAlg(r.u16_be("TPMT_PUBLIC.nameAlg")?);
        let attributes = r.u32_be("TPMT_PUBLIC.objectAttributes")?;
        read_tpm2b(&mut r, "TPMT_PUBLIC.authPolicy")?;
        let sym_alg = r.u16_be("TPMT_SYM_DEF_OBJECT.algorithm")?;
        let symmetric = if sym_alg == TPM_ALG_NULL {
            None
        } else {
            Some(SymDef {
                algorithm: sym_alg,
                key_bits: r.u16_be("TPMT_SYM_DEF_OBJECT.keyBits")?,
                mode: r.u16_be("TPMT_SYM_DEF_OBJECT.mode")?,
            })
        };
        let key = match key_type {
            TPM_ALG_RSA => {
                if r.u16_be("TPMT_RSA_SCHEME.scheme")? != TPM_ALG_NULL {
                    r.skip(2, "TPMT_RSA_SCHEME.hashAlg")?;
                }
                let _bits = r.u16_be("TPMS_RSA_PARMS.keyBits")?;
                let exp = match r.u32_be("TPMS_RSA_PARMS.exponent")? {
                    0 => 65537,
                    e => e,
                };
                let n = read_tpm2b(&mut r, "TPM2B_PUBLIC_KEY_RSA")?.to_vec();
                let e = exp.to_be_bytes();
                let first = e.iter().position(|b| *b != 0).unwrap_or(3);
                AkPublic::Rsa {
                    n,
                    e: e.get(first..).unwrap_or_default().to_vec(),
                }
            }
            TPM_ALG_ECC => {
                let scheme = r.u16_be("TPMT_ECC_SCHEME.scheme")?;
                if scheme != TPM_ALG_NULL {
                    r.skip(2, "TPMT_ECC_SCHEME.hashAlg")?;
                    if scheme == TPM_ALG_ECDAA {
                        r.skip(2, "TPMS_SCHEME_ECDAA.count")?;
                    }
                }
                let curve = r.u16_be("TPMS_ECC_PARMS.curveID")?;
                if r.u16_be("TPMT_KDF_SCHEME.scheme")? != TPM_ALG_NULL {
                    r.skip(2, "TPMT_KDF_SCHEME.hashAlg")?;
                }
                let x = read_tpm2b(&mut r, "TPMS_ECC_POINT.x")?.to_vec();
                let y = read_tpm2b(&mut r, "TPMS_ECC_POINT.y")?.to_vec();
                AkPublic::Ecc { curve, x, y }
            }
            other => {
                return Err(ParseError::new(
                    0,
                    "TPMT_PUBLIC.type",
                    format!("key type {other:#06x} is neither RSA nor ECC"),
                ))
            }
        };
        r.expect_end("TPMT_PUBLIC")?;
        let digest = name_alg.hash(body).map_err(|e| {
            ParseError::new(2, "TPMT_PUBLIC.nameAlg", format!("name algorithm: {e}"))
        })?;
        let mut name = name_alg.0.to_be_bytes().to_vec();
        name.extend_from_slice(digest.as_bytes());
        Ok(TpmPublic {
            name_alg,
            attributes,
            symmetric,
            key,
            bytes: body.to_vec(),
            name,
        })
    }

    fn has(&self, bits: u32) -> bool {
        self.attributes & bits == bits
    }

    /// An endorsement key credentials can be made for: an RSA restricted decryption key whose
    /// seed protection is AES-CFB (the TCG EK Credential Profile's templates).
    pub fn check_ek(&self) -> Result<(), String> {
        match &self.key {
            AkPublic::Rsa { .. } => {}
            AkPublic::Ecc { curve, .. } if *curve == crate::quote::TPM_ECC_NIST_P256 => {}
            AkPublic::Ecc { curve, .. } => {
                return Err(format!(
                    "the EK's ECC curve {curve:#06x} is not supported (RSA and NIST P-256 EKs are)"
                ))
            }
        }
        if !self.has(attr::FIXED_TPM | attr::RESTRICTED | attr::DECRYPT)
            || self.has(attr::SIGN_ENCRYPT)
        {
            return Err(format!(
                "the EK's objectAttributes {:#010x} are not those of a restricted decryption key fixed to its TPM",
                self.attributes
            ));
        }
        match self.symmetric {
            Some(SymDef {
                algorithm: TPM_ALG_AES,
                key_bits: 128 | 192 | 256,
                mode: TPM_ALG_CFB,
            }) => Ok(()),
            other => Err(format!(
                "the EK's symmetric algorithm {other:?} is not AES-CFB"
            )),
        }
    }

    /// An attestation key: a restricted signing key fixed to its TPM, made inside it. Only
    /// such a key cannot sign a forged TPMS_ATTEST; credential activation proves it shares a
    /// TPM with the EK but not what kind of key it is, so the verifier checks the attributes.
    pub fn check_ak(&self) -> Result<(), String> {
        let need = attr::FIXED_TPM
            | attr::FIXED_PARENT
            | attr::SENSITIVE_DATA_ORIGIN
            | attr::RESTRICTED
            | attr::SIGN_ENCRYPT;
        if !self.has(need) || self.has(attr::DECRYPT) {
            return Err(format!(
                "the AK's objectAttributes {:#010x} are not those of a restricted signing key made in and fixed to its TPM",
                self.attributes
            ));
        }
        Ok(())
    }
}
