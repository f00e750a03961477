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

use crate::bank::{Digest, HashAlg};
use crate::reader::Reader;
use crate::ParseError;

pub const TPM_GENERATED_VALUE: u32 = 0xff54_4347;
pub const TPM_ST_ATTEST_QUOTE: u16 = 0x8018;
pub const TPM_ALG_RSA: u16 = 0x0001;
pub const TPM_ALG_NULL: u16 = 0x0010;
pub const TPM_ALG_RSASSA: u16 = 0x0014;
pub const TPM_ALG_RSAPSS: u16 = 0x0016;
pub const TPM_ALG_ECDSA: u16 = 0x0018;
pub const TPM_ALG_ECDAA: u16 = 0x001a;
pub const TPM_ALG_ECC: u16 = 0x0023;
pub const TPM_ECC_NIST_P256: u16 = 0x0003;
pub const TPM_ECC_NIST_P384: u16 = 0x0004;

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

fn tpm2b<'a>(r: &mut Reader<'a>, what: &'static str) -> Result<&'a [u8], ParseError> {
    let n = r.u16_be(what)?;
    r.take(usize::from(n), what)
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
            let at = r.offset();
            let count = r.u32_be("TPML_PCR_SELECTION.count")?;
            if count as usize > r.remaining() / 3 {
                return Err(ParseError::new(
                    at,
                    "TPML_PCR_SELECTION.count",
                    format!("{count} selections cannot fit"),
                ));
            }
            let mut selections = Vec::with_capacity(count as usize);
            for _ in 0..count {
                let bank = HashAlg(r.u16_be("TPMS_PCR_SELECTION.hash")?);
                let n = r.u8("TPMS_PCR_SELECTION.sizeofSelect")?;
                let bits = r.take(usize::from(n), "TPMS_PCR_SELECTION.pcrSelect")?;
                let pcrs = bits
                    .iter()
                    .enumerate()
                    .flat_map(|(i, b)| {
                        (0..8)
                            .filter(move |j| b & (1 << j) != 0)
                            .map(move |j| (i * 8 + j) as u32)
                    })
                    .collect();
                selections.push((bank, pcrs));
            }
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
            return parse_spki(&der);
        }
        if data.first() == Some(&0x30) {
            return parse_spki(data);
        }
        // TPMT_PUBLIC starts with its type (RSA 0x0001 / ECC 0x0023); a TPM2B_PUBLIC with its
        // size. Try the bare form first when the type matches and it parses to the end.
        if let Ok(k) = parse_tpmt_public(&mut Reader::new(data), true) {
            return Ok(k);
        }
        let mut r = Reader::new(data);
        let inner = r.sub(
            usize::from(r.clone().u16_be("TPM2B_PUBLIC.size")?) + 2,
            "TPM2B_PUBLIC",
        )?;
        r.expect_end("TPM2B_PUBLIC")?;
        let mut inner = inner;
        inner.skip(2, "TPM2B_PUBLIC.size")?;
        parse_tpmt_public(&mut inner, true)
    }
}

fn parse_tpmt_public(r: &mut Reader<'_>, to_end: bool) -> Result<AkPublic, ParseError> {
    let at = r.offset();
    let key_type = r.u16_be("TPMT_PUBLIC.type")?;
    let _name_alg = r.u16_be("TPMT_PUBLIC.nameAlg")?;
    let _attributes = r.u32_be("TPMT_PUBLIC.objectAttributes")?;
    tpm2b(r, "TPMT_PUBLIC.authPolicy")?;
    // TPMT_SYM_DEF_OBJECT
    if r.u16_be("symmetric.algorithm")? != TPM_ALG_NULL {
        r.skip(4, "symmetric.keyBits/mode")?;
    }
    let key = match key_type {
        TPM_ALG_RSA => {
            if r.u16_be("TPMT_RSA_SCHEME.scheme")? != TPM_ALG_NULL {
                r.skip(2, "TPMT_RSA_SCHEME.hashAlg")?;
            }
            let _bits = r.u16_be("TPMS_RSA_PARMS.keyBits")?;
            let exp = r.u32_be("TPMS_RSA_PARMS.exponent")?;
            let exp = if exp == 0 { 65537 } else { exp };
            let n = tpm2b(r, "TPM2B_PUBLIC_KEY_RSA")?.to_vec();
            let e = exp.to_be_bytes();
            let first = e.iter().position(|b| *b != 0).unwrap_or(3);
            AkPublic::Rsa {
                n,
                e: e[first..].to_vec(),
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
            let x = tpm2b(r, "TPMS_ECC_POINT.x")?.to_vec();
            let y = tpm2b(r, "TPMS_ECC_POINT.y")?.to_vec();
            AkPublic::Ecc { curve, x, y }
        }
        other => {
            return Err(ParseError::new(
                at,
                "TPMT_PUBLIC.type",
                format!("key type {other:#06x} is neither RSA nor ECC"),
            ))
        }
    };
    if to_end {
        r.expect_end("TPMT_PUBLIC")?;
    }
    Ok(key)
}

fn pem_body(data: &[u8]) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let text = std::str::from_utf8(data).ok()?;
    let start = text.find("-----BEGIN PUBLIC KEY-----")?;
    let rest = &text[start + 26..];
    let end = rest.find("-----END PUBLIC KEY-----")?;
    let b64: String = rest[..end].chars().filter(|c| !c.is_whitespace()).collect();
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

/// Reads one DER TLV; returns (tag, contents).
fn der<'a>(r: &mut Reader<'a>, what: &'static str) -> Result<(u8, &'a [u8]), ParseError> {
    let tag = r.u8(what)?;
    let first = r.u8(what)?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return Err(ParseError::new(r.offset(), what, "unsupported DER length"));
        }
        r.take(n, what)?
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
    };
    Ok((tag, r.take(len, what)?))
}

const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_EC: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];

fn parse_spki(data: &[u8]) -> Result<AkPublic, ParseError> {
    let mut r = Reader::new(data);
    let (_, spki) = der(&mut r, "SubjectPublicKeyInfo")?;
    let mut s = Reader::new(spki);
    let (_, alg) = der(&mut s, "AlgorithmIdentifier")?;
    let (_, bits) = der(&mut s, "subjectPublicKey")?;
    let mut a = Reader::new(alg);
    let (_, oid) = der(&mut a, "algorithm")?;
    let key = bits.get(1..).unwrap_or_default(); // skip the unused-bits byte
    if oid == OID_RSA {
        let mut k = Reader::new(key);
        let (_, seq) = der(&mut k, "RSAPublicKey")?;
        let mut k = Reader::new(seq);
        let (_, n) = der(&mut k, "modulus")?;
        let (_, e) = der(&mut k, "publicExponent")?;
        let strip = |v: &[u8]| {
            v.iter()
                .position(|b| *b != 0)
                .map_or(vec![], |p| v[p..].to_vec())
        };
        return Ok(AkPublic::Rsa {
            n: strip(n),
            e: strip(e),
        });
    }
    if oid == OID_EC {
        let (_, curve_oid) = der(&mut a, "namedCurve")?;
        let (curve, size) = match curve_oid {
            c if c == OID_P256 => (TPM_ECC_NIST_P256, 32),
            c if c == OID_P384 => (TPM_ECC_NIST_P384, 48),
            _ => return Err(ParseError::new(0, "namedCurve", "not P-256 or P-384")),
        };
        if key.len() != 1 + 2 * size || key.first() != Some(&4) {
            return Err(ParseError::new(
                0,
                "subjectPublicKey",
                "not an uncompressed point",
            ));
        }
        return Ok(AkPublic::Ecc {
            curve,
            x: key[1..1 + size].to_vec(),
            y: key[1 + size..].to_vec(),
        });
    }
    Err(ParseError::new(
        0,
        "algorithm",
        "neither RSA nor EC public key",
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
            UnparsedPublicKey::new(alg, &point)
                .verify(msg, &ecdsa_der(r, s))
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

/// DER `ECDSA-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER }` from raw big-endian r and s.
fn ecdsa_der(r: &[u8], s: &[u8]) -> Vec<u8> {
    fn int(v: &[u8]) -> Vec<u8> {
        let v = &v[v
            .iter()
            .position(|b| *b != 0)
            .unwrap_or(v.len().saturating_sub(1))..];
        let mut body = Vec::with_capacity(v.len() + 1);
        if v.first().is_none_or(|b| b & 0x80 != 0) {
            body.push(0);
        }
        body.extend_from_slice(v);
        let mut out = vec![0x02];
        push_len(&mut out, body.len());
        out.extend(body);
        out
    }
    fn push_len(out: &mut Vec<u8>, n: usize) {
        if n < 0x80 {
            out.push(n as u8);
        } else {
            out.push(0x81);
            out.push(n as u8);
        }
    }
    let body = [int(r), int(s)].concat();
    let mut out = vec![0x30];
    push_len(&mut out, body.len());
    out.extend(body);
    out
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
