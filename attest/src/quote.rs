//! TPM 2.0 quotes: `TPMS_ATTEST` (in a `TPM2B_ATTEST` or bare), its `TPMT_SIGNATURE`, the
//! attestation key's public area, and the checks a verifier makes.
//!
//! Layouts (TPM 2.0 Library Part 2, big-endian; ../shared/reference/tlog-eventlog.md §B5):
//! ```text
//! TPMS_ATTEST: u32 magic (0xff544347) | u16 type (0x8018 quote) | TPM2B_NAME qualifiedSigner
//!   | TPM2B_DATA extraData | TPMS_CLOCK_INFO {u64 clock, u32 resetCount, u32 restartCount,
//!   u8 safe} | u64 firmwareVersion | TPMS_QUOTE_INFO {TPML_PCR_SELECTION, TPM2B_DIGEST}
//! TPMT_SIGNATURE: u16 sigAlg | u16 hash | RSASSA/RSAPSS: TPM2B sig | ECDSA: TPM2B r, TPM2B s
//! ```
//! Checks, as tpm2_checkquote and go-tpm-tools make them: the signature over the attest bytes
//! with the AK, magic, type, `extraData == nonce`, and `pcrDigest == H_sig(selected PCR values,
//! in selection order)`. Signatures are verified with ring: RSASSA-PKCS1-v1_5 (SHA-1 for
//! legacy quotes, SHA-256/384/512), RSA-PSS (salt = digest length), ECDSA P-256/P-384.

use ring::signature::{self, UnparsedPublicKey};

use crate::ParseError;
use imgctl_measure::bank::{Digest, HashAlg};
use imgctl_measure::reader::Reader;

pub const TPM_GENERATED_VALUE: u32 = 0xff54_4347;
pub const TPM_ST_ATTEST_QUOTE: u16 = 0x8018;
use imgctl_measure::tpm_wire::{read_pcr_selection_list, read_tpm2b as tpm2b};
pub use imgctl_measure::tpm_wire::{
    TPM_ALG_ECC, TPM_ALG_ECDAA, TPM_ALG_ECDSA, TPM_ALG_NULL, TPM_ALG_RSA, TPM_ALG_RSAPSS,
    TPM_ALG_RSASSA, TPM_ECC_NIST_P256, TPM_ECC_NIST_P384,
};

/// Why a quote was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuoteError {
    #[error("malformed {0}")]
    Parse(#[from] ParseError),
    #[error("magic is {0:#010x}, not TPM_GENERATED_VALUE 0xff544347 (not made by a TPM)")]
    Magic(u32),
    #[error("attestation type is {0:#06x}, not TPM_ST_ATTEST_QUOTE 0x8018")]
    NotAQuote(u16),
    #[error("nonce mismatch: quote carries extraData {found}, expected {expected}")]
    Nonce { expected: String, found: String },
    #[error("signature does not verify with the AK ({0})")]
    Signature(String),
    #[error("unsupported {0}")]
    Unsupported(String),
    #[error("PCR {pcr} ({bank}) is selected by the quote but has no replayed value")]
    MissingPcr { bank: HashAlg, pcr: u32 },
    #[error("quoted PCR digest {quoted} differs from the digest {computed} of the replayed PCRs")]
    PcrDigest { quoted: String, computed: String },
}

/// A quote file that is not `{"quote": …, "signature": …}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct QuoteFileError(String);

/// A quote and its signature in one JSON file: `{"quote": TPMS_ATTEST, "signature":
/// TPMT_SIGNATURE}` (what `imgctl tpm quote --json` and Keylime-style verifiers exchange) or
/// go-attestation's `{"Quote": {"Quote": …, "Signature": …}}`; each blob hex or base64.
/// Returns the attest and signature bytes, not yet parsed.
pub fn parse_quote_json(data: &[u8]) -> Result<(Vec<u8>, Vec<u8>), QuoteFileError> {
    let j: serde_json::Value = serde_json::from_slice(data).map_err(|e| {
        QuoteFileError(format!(
            "not JSON with \"quote\" and \"signature\" (give the raw attest with --signature): {e}"
        ))
    })?;
    let (q, s) = match j.get("Quote") {
        Some(inner) => (inner.get("Quote"), inner.get("Signature")),
        None => (j.get("quote"), j.get("signature")),
    };
    Ok((blob("quote", q)?, blob("signature", s)?))
}

fn blob(what: &str, v: Option<&serde_json::Value>) -> Result<Vec<u8>, QuoteFileError> {
    use base64::Engine as _;
    let s = v
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| QuoteFileError(format!("{what}: missing, or not a string")))?;
    hex::decode(s)
        .or_else(|_| base64::engine::general_purpose::STANDARD.decode(s))
        .map_err(|_| QuoteFileError(format!("{what}: neither hex nor base64")))
}

/// `TPMS_ATTEST`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attest {
    pub magic: u32,
    pub attest_type: u16,
    pub qualified_signer: Vec<u8>,
    pub extra_data: Vec<u8>,
    pub clock: u64,
    pub reset_count: u32,
    pub restart_count: u32,
    pub safe: u8,
    pub firmware_version: u64,
    /// `TPMS_QUOTE_INFO`, for quotes.
    pub quote: Option<QuoteInfo>,
}

/// `TPMS_QUOTE_INFO`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuoteInfo {
    /// Selected PCRs per bank, in selection order and ascending PCR order.
    pub selections: Vec<(HashAlg, Vec<u32>)>,
    pub pcr_digest: Vec<u8>,
}

impl Attest {
    /// Parses a `TPM2B_ATTEST` (size-prefixed) or bare `TPMS_ATTEST`; returns the attest and
    /// the exact bytes the TPM signed.
    pub fn parse(data: &[u8]) -> Result<(Attest, &[u8]), ParseError> {
        let body = match data.get(..4) {
            Some(m) if m == TPM_GENERATED_VALUE.to_be_bytes() => data,
            _ => {
                let mut r = Reader::new(data);
                let body = tpm2b(&mut r, "TPM2B_ATTEST")?;
                r.expect_end("TPM2B_ATTEST")?;
                body
            }
        };
        let base = data.len() - body.len();
        let mut r = Reader::at(body, base);
        let magic = r.u32_be("TPMS_ATTEST.magic")?;
        let attest_type = r.u16_be("TPMS_ATTEST.type")?;
        let qualified_signer = tpm2b(&mut r, "TPMS_ATTEST.qualifiedSigner")?.to_vec();
        let extra_data = tpm2b(&mut r, "TPMS_ATTEST.extraData")?.to_vec();
        let clock = r.u64_be("TPMS_CLOCK_INFO.clock")?;
        let reset_count = r.u32_be("TPMS_CLOCK_INFO.resetCount")?;
        let restart_count = r.u32_be("TPMS_CLOCK_INFO.restartCount")?;
        let safe = r.u8("TPMS_CLOCK_INFO.safe")?;
        let firmware_version = r.u64_be("TPMS_ATTEST.firmwareVersion")?;
        let quote = if attest_type == TPM_ST_ATTEST_QUOTE {
            let selections = read_pcr_selection_list(&mut r)?;
            let pcr_digest = tpm2b(&mut r, "TPMS_QUOTE_INFO.pcrDigest")?.to_vec();
            r.expect_end("TPMS_ATTEST")?;
            Some(QuoteInfo {
                selections,
                pcr_digest,
            })
        } else {
            None
        };
        Ok((
            Attest {
                magic,
                attest_type,
                qualified_signer,
                extra_data,
                clock,
                reset_count,
                restart_count,
                safe,
                firmware_version,
                quote,
            },
            body,
        ))
    }
}

/// `TPMT_SIGNATURE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signature {
    Rsassa {
        hash: HashAlg,
        sig: Vec<u8>,
    },
    Rsapss {
        hash: HashAlg,
        sig: Vec<u8>,
    },
    Ecdsa {
        hash: HashAlg,
        r: Vec<u8>,
        s: Vec<u8>,
    },
}

impl Signature {
    pub fn parse(data: &[u8]) -> Result<Signature, ParseError> {
        let mut r = Reader::new(data);
        let alg = r.u16_be("TPMT_SIGNATURE.sigAlg")?;
        let hash = HashAlg(r.u16_be("TPMT_SIGNATURE.hash")?);
        let sig = match alg {
            TPM_ALG_RSASSA => Signature::Rsassa {
                hash,
                sig: tpm2b(&mut r, "TPMS_SIGNATURE_RSA.sig")?.to_vec(),
            },
            TPM_ALG_RSAPSS => Signature::Rsapss {
                hash,
                sig: tpm2b(&mut r, "TPMS_SIGNATURE_RSA.sig")?.to_vec(),
            },
            TPM_ALG_ECDSA => Signature::Ecdsa {
                hash,
                r: tpm2b(&mut r, "TPMS_SIGNATURE_ECC.signatureR")?.to_vec(),
                s: tpm2b(&mut r, "TPMS_SIGNATURE_ECC.signatureS")?.to_vec(),
            },
            other => {
                return Err(ParseError::new(
                    0,
                    "TPMT_SIGNATURE.sigAlg",
                    format!("unsupported signature algorithm {other:#06x}"),
                ))
            }
        };
        r.expect_end("TPMT_SIGNATURE")?;
        Ok(sig)
    }

    pub fn hash(&self) -> HashAlg {
        match self {
            Signature::Rsassa { hash, .. }
            | Signature::Rsapss { hash, .. }
            | Signature::Ecdsa { hash, .. } => *hash,
        }
    }
}

/// An attestation key's public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AkPublic {
    /// Modulus and public exponent, big-endian.
    Rsa { n: Vec<u8>, e: Vec<u8> },
    /// Curve (`TPM_ECC_NIST_P256`/`P384`) and the affine coordinates.
    Ecc { curve: u16, x: Vec<u8>, y: Vec<u8> },
}

impl AkPublic {
    /// Reads a public key from a `TPM2B_PUBLIC`, a `TPMT_PUBLIC`, or a PEM/DER
    /// SubjectPublicKeyInfo.
    pub fn parse(data: &[u8]) -> Result<AkPublic, ParseError> {
        if let Some(der) = pem_body(data) {
            return parse_spki(&der?);
        }
        if data.first() == Some(&0x30) {
            return parse_spki(data);
        }
        // A TPMT_PUBLIC or TPM2B_PUBLIC: the one parser of public areas.
        crate::tpm_public::TpmPublic::parse(data).map(|p| p.key)
    }
}

fn pem_body(data: &[u8]) -> Option<Result<Vec<u8>, ParseError>> {
    let text = std::str::from_utf8(data).ok()?;
    let start = text.find("-----BEGIN ")?;
    Some(
        match spki::der::pem::decode_vec(text[start..].trim_end().as_bytes()) {
            Ok(("PUBLIC KEY", der)) => Ok(der),
            Ok((label, _)) => Err(ParseError::new(
                start,
                "PEM",
                format!("a {label:?} PEM block, not a PUBLIC KEY"),
            )),
            Err(e) => Err(ParseError::new(start, "PEM", e.to_string())),
        },
    )
}

const OID_RSA: spki::ObjectIdentifier = spki::ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const OID_EC: spki::ObjectIdentifier = spki::ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const OID_P256: spki::ObjectIdentifier = spki::ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const OID_P384: spki::ObjectIdentifier = spki::ObjectIdentifier::new_unwrap("1.3.132.0.34");

/// A DER SubjectPublicKeyInfo (RFC 5280 §4.1.2.7), RSA (RFC 8017) or EC P-256/P-384 (RFC 5480).
fn parse_spki(data: &[u8]) -> Result<AkPublic, ParseError> {
    use spki::der::Decode as _;
    let bad =
        |what: &'static str, e: &dyn std::fmt::Display| ParseError::new(0, what, e.to_string());
    let info = spki::SubjectPublicKeyInfoRef::from_der(data)
        .map_err(|e| bad("SubjectPublicKeyInfo", &e))?;
    let key = info
        .subject_public_key
        .as_bytes()
        .ok_or_else(|| bad("subjectPublicKey", &"not a whole number of bytes"))?;
    if info.algorithm.oid == OID_RSA {
        let k = pkcs1::RsaPublicKey::from_der(key).map_err(|e| bad("RSAPublicKey", &e))?;
        return Ok(AkPublic::Rsa {
            n: k.modulus.as_bytes().to_vec(),
            e: k.public_exponent.as_bytes().to_vec(),
        });
    }
    if info.algorithm.oid == OID_EC {
        let curve_oid = info
            .algorithm
            .parameters_oid()
            .map_err(|e| bad("namedCurve", &e))?;
        let (curve, size) = match curve_oid {
            c if c == OID_P256 => (TPM_ECC_NIST_P256, 32),
            c if c == OID_P384 => (TPM_ECC_NIST_P384, 48),
            c => return Err(bad("namedCurve", &format!("{c} is not P-256 or P-384"))),
        };
        return match key {
            [4, point @ ..] if point.len() == 2 * size => Ok(AkPublic::Ecc {
                curve,
                x: point[..size].to_vec(),
                y: point[size..].to_vec(),
            }),
            _ => Err(bad("subjectPublicKey", &"not an uncompressed point")),
        };
    }
    Err(bad(
        "algorithm",
        &format!(
            "{} is neither an RSA nor an EC public key",
            info.algorithm.oid
        ),
    ))
}

/// Verifies `sig` over `msg` with `ak`.
pub fn verify_signature(ak: &AkPublic, sig: &Signature, msg: &[u8]) -> Result<(), QuoteError> {
    let bad = |_| QuoteError::Signature("the signature does not match".into());
    match (ak, sig) {
        (AkPublic::Rsa { n, e }, Signature::Rsassa { hash, sig: bytes })
        | (AkPublic::Rsa { n, e }, Signature::Rsapss { hash, sig: bytes }) => {
            let pss = matches!(sig, Signature::Rsapss { .. });
            let params: &signature::RsaParameters = match (pss, *hash) {
                (false, HashAlg::SHA1) => &signature::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
                (false, HashAlg::SHA256) => &signature::RSA_PKCS1_2048_8192_SHA256,
                (false, HashAlg::SHA384) => &signature::RSA_PKCS1_2048_8192_SHA384,
                (false, HashAlg::SHA512) => &signature::RSA_PKCS1_2048_8192_SHA512,
                (true, HashAlg::SHA256) => &signature::RSA_PSS_2048_8192_SHA256,
                (true, HashAlg::SHA384) => &signature::RSA_PSS_2048_8192_SHA384,
                (true, HashAlg::SHA512) => &signature::RSA_PSS_2048_8192_SHA512,
                (_, h) => {
                    return Err(QuoteError::Unsupported(format!(
                        "RSA{} signature with {h}",
                        if pss { "-PSS" } else { "SSA" }
                    )))
                }
            };
            signature::RsaPublicKeyComponents { n, e }
                .verify(params, msg, bytes)
                .map_err(bad)
        }
        (AkPublic::Ecc { curve, x, y }, Signature::Ecdsa { hash, r, s }) => {
            let alg: &signature::EcdsaVerificationAlgorithm = match (*curve, *hash) {
                (TPM_ECC_NIST_P256, HashAlg::SHA256) => &signature::ECDSA_P256_SHA256_ASN1,
                (TPM_ECC_NIST_P256, HashAlg::SHA384) => &signature::ECDSA_P256_SHA384_ASN1,
                (TPM_ECC_NIST_P384, HashAlg::SHA256) => &signature::ECDSA_P384_SHA256_ASN1,
                (TPM_ECC_NIST_P384, HashAlg::SHA384) => &signature::ECDSA_P384_SHA384_ASN1,
                (c, h) => {
                    return Err(QuoteError::Unsupported(format!(
                        "ECDSA on curve {c:#06x} with {h}"
                    )))
                }
            };
            let size = if *curve == TPM_ECC_NIST_P256 { 32 } else { 48 };
            let mut point = vec![4u8];
            point.extend(left_pad(x, size)?);
            point.extend(left_pad(y, size)?);
            // TPMS_SIGNATURE_ECDSA carries r and s as big-endian integers; ring takes the DER
            // `ECDSA-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER }` (RFC 5480 §2.2.3).
            let der = ecdsa_sig_der(r, s)?;
            UnparsedPublicKey::new(alg, &point)
                .verify(msg, &der)
                .map_err(bad)
        }
        _ => Err(QuoteError::Signature(
            "the AK's key type does not match the signature algorithm".into(),
        )),
    }
}

fn left_pad(v: &[u8], size: usize) -> Result<Vec<u8>, QuoteError> {
    let v = &v[v.iter().position(|b| *b != 0).unwrap_or(v.len())..];
    if v.len() > size {
        return Err(QuoteError::Signature(
            "EC coordinate longer than the curve".into(),
        ));
    }
    let mut out = vec![0; size - v.len()];
    out.extend_from_slice(v);
    Ok(out)
}

fn ecdsa_sig_der(r: &[u8], s: &[u8]) -> Result<Vec<u8>, QuoteError> {
    use spki::der::Encode as _;
    let int = |v| {
        spki::der::asn1::UintRef::new(v)
            .map_err(|e| QuoteError::Signature(format!("ECDSA r/s: {e}")))
    };
    [int(r)?, int(s)?]
        .to_der()
        .map_err(|e| QuoteError::Signature(format!("ECDSA r/s: {e}")))
}

/// A quote that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedQuote {
    pub attest: Attest,
    /// The PCR values the quote covers, per bank, in selection order.
    pub pcrs: Vec<(HashAlg, u32, Digest)>,
}

/// Checks a quote: signature with `ak`, magic, type, nonce, and that the quoted PCR digest is
/// the digest of `pcr_value(bank, pcr)` over the selection (the replayed PCRs).
pub fn verify_quote(
    attest_bytes: &[u8],
    sig: &Signature,
    ak: &AkPublic,
    nonce: &[u8],
    pcr_value: impl Fn(HashAlg, u32) -> Option<Digest>,
) -> Result<VerifiedQuote, QuoteError> {
    let (attest, signed) = Attest::parse(attest_bytes)?;
    verify_signature(ak, sig, signed)?;
    if attest.magic != TPM_GENERATED_VALUE {
        return Err(QuoteError::Magic(attest.magic));
    }
    let Some(info) = &attest.quote else {
        return Err(QuoteError::NotAQuote(attest.attest_type));
    };
    // Nonces and PCR digests are public values: a plain comparison is enough.
    if attest.extra_data != nonce {
        return Err(QuoteError::Nonce {
            expected: hex::encode(nonce),
            found: hex::encode(&attest.extra_data),
        });
    }
    let mut h = sig
        .hash()
        .hasher()
        .map_err(|e| QuoteError::Unsupported(e.to_string()))?;
    let mut pcrs = Vec::new();
    for (bank, list) in &info.selections {
        for pcr in list {
            let v = pcr_value(*bank, *pcr).ok_or(QuoteError::MissingPcr {
                bank: *bank,
                pcr: *pcr,
            })?;
            h.update(v.as_bytes());
            pcrs.push((*bank, *pcr, v));
        }
    }
    let computed = h.finish();
    if computed.as_bytes() != info.pcr_digest.as_slice() {
        return Err(QuoteError::PcrDigest {
            quoted: hex::encode(&info.pcr_digest),
            computed: computed.to_hex(),
        });
    }
    Ok(VerifiedQuote {
        attest: attest.clone(),
        pcrs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_json_reads_both_shapes_and_both_encodings_and_names_what_is_wrong() {
        let ours = br#"{"quote": "00ff", "signature": "AAE="}"#;
        assert_eq!(parse_quote_json(ours).unwrap(), (vec![0, 0xff], vec![0, 1]));
        let go = br#"{"Quote": {"Quote": "AQI=", "Signature": "0304"}}"#;
        assert_eq!(parse_quote_json(go).unwrap(), (vec![1, 2], vec![3, 4]));
        for (bad, want) in [
            (&b"\x00\x01"[..], "not JSON"),
            (br#"{"quote": "00"}"#, "signature: missing"),
            (
                br#"{"quote": 5, "signature": "00"}"#,
                "quote: missing, or not a string",
            ),
            (
                br#"{"quote": "*", "signature": "00"}"#,
                "quote: neither hex nor base64",
            ),
        ] {
            let e = parse_quote_json(bad).unwrap_err().to_string();
            assert!(e.contains(want), "{e} lacks {want}");
        }
    }
}
