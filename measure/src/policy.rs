//! TPM 2.0 policy digests computed in software, and the TPM form of a signing key's public
//! half (`TPMT_PUBLIC`, its Name) — what systemd binds a disk key to when it enrols a signed
//! PCR policy.
//!
//! Policy digests are SHA-256, start as 32 zero bytes, and are updated per TPM 2.0 Part 3:
//! - **PolicyPCR** (§23.7): `new = H(old ‖ TPM_CC_PolicyPCR ‖ TPML_PCR_SELECTION ‖ H(values))`,
//!   `values` the selected PCRs' values concatenated in selection order;
//! - **PolicyAuthorize** (§23.16): the digest is first reset to zeros, then
//!   `d = H(0…0 ‖ TPM_CC_PolicyAuthorize ‖ keyName)` and `new = H(d ‖ policyRef)`.
//!
//! The key template is the one systemd's `tpm2_tpm2b_public_from_openssl_pkey()` builds from a
//! PEM key (src/shared/tpm2-util.c): `nameAlg` SHA-256, `objectAttributes` DECRYPT |
//! SIGN_ENCRYPT | USERWITHAUTH, empty authPolicy, symmetric and scheme `TPM_ALG_NULL`; RSA with
//! `keyBits` = modulus bits and the exponent as is (65537 is not folded to 0); ECC with the
//! curve, `kdf` NULL and the X/Y coordinates. This template reproduces the Names in systemd's
//! test-tpm2.c (`tpm2b_public_from_openssl_pkey`) and the Name tpm2-tools' `tpm2_loadexternal`
//! reports for the same key and attributes (tests below). All integers are big-endian.

use sha2::{Digest as _, Sha256};

use crate::bank::{Digest, HashAlg};
use crate::Error;

/// `TPM_CC_PolicyPCR`.
pub const TPM_CC_POLICY_PCR: u32 = 0x0000_017F;
/// `TPM_CC_PolicyAuthorize`.
pub const TPM_CC_POLICY_AUTHORIZE: u32 = 0x0000_016A;
use crate::tpm_wire::{put_pcr_selection_list, put_tpm2b};
pub use crate::tpm_wire::{
    TPM_ALG_ECC, TPM_ALG_NULL, TPM_ALG_RSA, TPM_ALG_SHA256, TPM_ECC_NIST_P256,
};
/// `TPMA_OBJECT` bits systemd sets on a loaded external public key.
pub const TPMA_OBJECT_USERWITHAUTH: u32 = 0x0000_0040;
pub const TPMA_OBJECT_DECRYPT: u32 = 0x0002_0000;
pub const TPMA_OBJECT_SIGN_ENCRYPT: u32 = 0x0004_0000;

/// A SHA-256 policy digest.
pub type PolicyDigest = [u8; 32];

/// The policy digest a fresh session starts with.
pub const EMPTY_POLICY: PolicyDigest = [0; 32];

/// A set of PCR indexes (0–23) in one bank.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PcrSelection {
    pub bank: HashAlg,
    mask: u32,
}

impl PcrSelection {
    /// Selects `pcrs` in `bank`; indexes above 23 are refused (PC Client TPMs have 24 PCRs,
    /// and systemd always marshals a 3-byte select bitmap).
    pub fn new(bank: HashAlg, pcrs: &[u32]) -> Result<Self, Error> {
        let mut mask = 0u32;
        for &p in pcrs {
            if p > 23 {
                return Err(Error::InvalidInput(format!(
                    "PCR index {p} out of range 0–23"
                )));
            }
            mask |= 1 << p;
        }
        Ok(PcrSelection { bank, mask })
    }

    /// The selected indexes, ascending (the order the TPM concatenates their values in).
    pub fn pcrs(&self) -> Vec<u32> {
        (0..24).filter(|i| self.mask & (1 << i) != 0).collect()
    }

    pub fn mask(&self) -> u32 {
        self.mask
    }

    /// `TPML_PCR_SELECTION` with this one `TPMS_PCR_SELECTION`: `count=1 ‖ hash ‖
    /// sizeofSelect=3 ‖ pcrSelect[3]` (bit i of byte i/8 selects PCR i).
    pub fn marshal(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(10);
        // The mask holds PCRs 0–23 only (checked in `new`), so this cannot fail.
        let _ = put_pcr_selection_list(&mut out, &[(self.bank, self.mask)]);
        out
    }
}

fn sha256(parts: &[&[u8]]) -> PolicyDigest {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// `TPM2_PolicyPCR` applied to `old`: binds the session to `values`, the values of the selected
/// PCRs in ascending index order, each of the bank's digest size.
pub fn policy_pcr(
    old: &PolicyDigest,
    selection: &PcrSelection,
    values: &[Digest],
) -> Result<PolicyDigest, Error> {
    let pcrs = selection.pcrs();
    if pcrs.len() != values.len() {
        return Err(Error::InvalidInput(format!(
            "PolicyPCR selects {} PCRs but {} values were given",
            pcrs.len(),
            values.len()
        )));
    }
    let size = selection.bank.digest_size();
    let mut h = Sha256::new();
    for v in values {
        if Some(v.0.len()) != size {
            return Err(Error::InvalidInput(format!(
                "PCR value {v} has {} bytes, the {} bank has {size:?}",
                v.0.len(),
                selection.bank
            )));
        }
        h.update(&v.0);
    }
    let pcr_digest: [u8; 32] = h.finalize().into();
    Ok(sha256(&[
        old,
        &TPM_CC_POLICY_PCR.to_be_bytes(),
        &selection.marshal(),
        &pcr_digest,
    ]))
}

/// `TPM2_PolicyAuthorize`: resets the digest and binds it to the signing key's Name and
/// `policy_ref` (systemd uses an empty one).
pub fn policy_authorize(key_name: &[u8], policy_ref: &[u8]) -> PolicyDigest {
    let d = sha256(&[
        &EMPTY_POLICY,
        &TPM_CC_POLICY_AUTHORIZE.to_be_bytes(),
        key_name,
    ]);
    sha256(&[&d, policy_ref])
}

/// A public key as the TPM sees it (the key that signs PCR policies).
#[derive(Clone, PartialEq, Eq)]
pub enum TpmPublicKey {
    /// Big-endian modulus without leading zeros, and the public exponent.
    Rsa { n: Vec<u8>, e: u32 },
    /// NIST P-256 affine coordinates, 32 bytes each.
    EccP256 { x: [u8; 32], y: [u8; 32] },
}

impl std::fmt::Debug for TpmPublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TpmPublicKey::Rsa { n, e } => write!(f, "Rsa({} bits, e={e})", n.len() * 8),
            TpmPublicKey::EccP256 { x, .. } => write!(f, "EccP256(x={})", hex::encode(x)),
        }
    }
}

impl TpmPublicKey {
    /// The marshalled `TPMT_PUBLIC` in systemd's template (see the module doc).
    ///
    /// A key whose modulus does not fit a TPM2B (no RSA key does: the TPM's limit is far lower)
    /// marshals to nothing, so its Name matches no TPM's and nothing verifies with it.
    pub fn tpmt_public(&self) -> Vec<u8> {
        self.try_tpmt_public().unwrap_or_default()
    }

    fn try_tpmt_public(&self) -> Result<Vec<u8>, crate::tpm_wire::TooLong> {
        let attrs = TPMA_OBJECT_DECRYPT | TPMA_OBJECT_SIGN_ENCRYPT | TPMA_OBJECT_USERWITHAUTH;
        let mut out = Vec::with_capacity(300);
        let ty = match self {
            TpmPublicKey::Rsa { .. } => TPM_ALG_RSA,
            TpmPublicKey::EccP256 { .. } => TPM_ALG_ECC,
        };
        out.extend_from_slice(&ty.to_be_bytes());
        out.extend_from_slice(&TPM_ALG_SHA256.to_be_bytes());
        out.extend_from_slice(&attrs.to_be_bytes());
        put_tpm2b(&mut out, &[], "authPolicy")?;
        out.extend_from_slice(&TPM_ALG_NULL.to_be_bytes()); // symmetric
        out.extend_from_slice(&TPM_ALG_NULL.to_be_bytes()); // scheme
        match self {
            TpmPublicKey::Rsa { n, e } => {
                out.extend_from_slice(&((n.len() * 8) as u16).to_be_bytes());
                out.extend_from_slice(&e.to_be_bytes());
                put_tpm2b(&mut out, n, "TPM2B_PUBLIC_KEY_RSA")?;
            }
            TpmPublicKey::EccP256 { x, y } => {
                out.extend_from_slice(&TPM_ECC_NIST_P256.to_be_bytes());
                out.extend_from_slice(&TPM_ALG_NULL.to_be_bytes()); // kdf
                put_tpm2b(&mut out, x, "TPMS_ECC_POINT.x")?;
                put_tpm2b(&mut out, y, "TPMS_ECC_POINT.y")?;
            }
        }
        Ok(out)
    }

    /// `TPM2B_PUBLIC`: the `TPMT_PUBLIC` with a 16-bit size in front.
    pub fn tpm2b_public(&self) -> Vec<u8> {
        let t = self.tpmt_public();
        let mut out = Vec::with_capacity(t.len() + 2);
        // A TPMT_PUBLIC is a few hundred bytes.
        let _ = put_tpm2b(&mut out, &t, "TPM2B_PUBLIC");
        out
    }

    /// The key's Name: `nameAlg ‖ H_nameAlg(TPMT_PUBLIC)` (TPM 2.0 Part 1 §16).
    pub fn name(&self) -> Vec<u8> {
        let mut out = TPM_ALG_SHA256.to_be_bytes().to_vec();
        out.extend_from_slice(&sha256(&[&self.tpmt_public()]));
        out
    }

    /// The `pkfp` of a `.pcrsig` entry: SHA-256 of OpenSSL's `i2d_PublicKey()` — the DER
    /// PKCS#1 `RSAPublicKey` for RSA, the uncompressed point `04 ‖ X ‖ Y` for EC.
    pub fn fingerprint(&self) -> [u8; 32] {
        match self {
            TpmPublicKey::Rsa { n, e } => sha256(&[&rsa_public_key_der(n, *e)]),
            TpmPublicKey::EccP256 { x, y } => sha256(&[&[4], x, y]),
        }
    }

    /// `PolicyAuthorize` with this key and an empty policyRef, from a fresh session: the
    /// policy a secret is sealed to so that any PCR policy this key signs unlocks it.
    pub fn authorize_policy(&self) -> PolicyDigest {
        policy_authorize(&self.name(), &[])
    }
}

/// DER `RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }` (RFC 8017 A.1.1).
pub fn rsa_public_key_der(n: &[u8], e: u32) -> Vec<u8> {
    fn len(out: &mut Vec<u8>, n: usize) {
        if n < 0x80 {
            out.push(n as u8);
        } else {
            let b = n.to_be_bytes();
            let skip = b.iter().take_while(|&&x| x == 0).count();
            out.push(0x80 | (b.len() - skip) as u8);
            out.extend_from_slice(&b[skip..]);
        }
    }
    fn integer(out: &mut Vec<u8>, be: &[u8]) {
        let be = &be[be.iter().take_while(|&&x| x == 0).count()..];
        let pad = be.first().is_none_or(|&b| b & 0x80 != 0);
        out.push(0x02);
        len(out, be.len() + usize::from(pad));
        if pad {
            out.push(0);
        }
        out.extend_from_slice(be);
    }
    let mut body = Vec::with_capacity(n.len() + 16);
    integer(&mut body, n);
    integer(&mut body, &e.to_be_bytes());
    let mut out = vec![0x30];
    len(&mut out, body.len());
    out.extend_from_slice(&body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    /// tpm2-tools 5.4 `tpm2_createpolicy --policy-pcr -l BANK:11 -f F` with F = H_bank("x"),
    /// run against swtpm 0.7.1.
    #[test]
    fn policy_pcr_matches_tpm2_createpolicy() {
        for (bank, want) in [
            (
                HashAlg::SHA1,
                "7e9978cb4ddf25294ab3d2df3ebc6441134da9b16ece88b9df590ac9fbcfa9c4",
            ),
            (
                HashAlg::SHA256,
                "237037b8bf7e61d2b373c71904446f3959a9cbe640f29970cce640172770d99c",
            ),
        ] {
            let sel = PcrSelection::new(bank, &[11]).unwrap();
            let v = bank.hash(b"x").unwrap();
            assert_eq!(
                hex::encode(policy_pcr(&EMPTY_POLICY, &sel, &[v]).unwrap()),
                want
            );
        }
    }

    /// ../shared/reference/systemd.md §9 E2: Debian's systemd-measure 252 `pol` for
    /// `--linux=A --osrel=ID=test\n --phase=enter-initrd --bank=sha256`.
    #[test]
    fn policy_pcr_matches_systemd_measure_sign() {
        use crate::predict::{predict_pcr11, MeasuredSection};
        let s = [
            MeasuredSection {
                name: ".linux",
                data: b"A",
            },
            MeasuredSection {
                name: ".osrel",
                data: b"ID=test\n",
            },
        ];
        let phase = "enter-initrd".parse().unwrap();
        let p = predict_pcr11(
            crate::StubSemantics::Systemd252,
            &s,
            &[HashAlg::SHA256],
            &[phase],
        )
        .unwrap();
        let sel = PcrSelection::new(HashAlg::SHA256, &[11]).unwrap();
        let pol = policy_pcr(&EMPTY_POLICY, &sel, &[p.banks[0].1[0].1.clone()]).unwrap();
        assert_eq!(
            hex::encode(pol),
            "1fac3285d3c8404a128bc9f1b4085565ecd81af549bfede2fb53582b0c39590b"
        );
    }

    #[test]
    fn pcr_selection_marshals_like_the_tpm() {
        let sel = PcrSelection::new(HashAlg::SHA256, &[11]).unwrap();
        assert_eq!(hex::encode(sel.marshal()), "00000001000b03000800");
        let sel = PcrSelection::new(HashAlg::SHA1, &[0, 7, 23]).unwrap();
        assert_eq!(hex::encode(sel.marshal()), "00000001000403810080");
        assert!(PcrSelection::new(HashAlg::SHA1, &[24]).is_err());
    }

    /// systemd test-tpm2.c `calculate_policy_authorize`: PolicyAuthorize over the key whose
    /// Name `calculate_pubkey_name` gives (RSA vector), applied twice (it resets).
    #[test]
    fn policy_authorize_matches_systemd_vector() {
        let name = h("000be78f74a470dd92e979ca067cdb2293a35f075e8560b436bd2ccea5da21486a07");
        assert_eq!(
            hex::encode(policy_authorize(&name, &[])),
            "95213a3784eaab04f427bc7e8851c2f1df0903be8e42428ec25dcefd907baff1"
        );
    }

    /// systemd test-tpm2.c `tpm2b_public_from_openssl_pkey`: Name and fingerprint of keys
    /// converted from PEM with systemd's template.
    #[test]
    fn names_and_fingerprints_match_systemd_vectors() {
        let ecc = TpmPublicKey::EccP256 {
            x: h("ae39c4b812ec225f6b869870caf5cd3e18f88c19cf0d79f22742bd532acd81de")
                .try_into()
                .unwrap(),
            y: h("92e40e764fea12bed9028fa66b9788571b7c004145e9a01952fad1eab51a8be5")
                .try_into()
                .unwrap(),
        };
        assert_eq!(
            hex::encode(ecc.name()),
            "000b5c127e4dbaf8fb7bac641e8db25a84a48db876ca7ee3bd317ae1a4554ff72f17"
        );
        assert_eq!(
            hex::encode(ecc.fingerprint()),
            "cd3373293b62a52b48c12100e80ea9bfd806266ce76893a5ec31cb128052d97c"
        );
        let n = "c9596e41f2ae550a988d9a828decefe8d2685de2eca29febbd2b9f734c3b89330eb1580052d6d04d13d342b5edf69792cc2a510e0702c5e9234c00d6af2d0a998c63cfae30963a7417d63cd217239242bb600337d137cb1477a5fbbbad06ca70a811739fef197d856c4822bdb13a68d656bb9d219036d416a3a0c9ea5459de382699739a4c54c0684d090bea455c1b150eab2617677cebfd4d42a26e6504d159745c893a4d5f9bc8cbfeef925663854891971bcd60e374a5c76f489efa36d2270f3d073e8c19f2964438cfc910e6316b32c98dd23a0e4e51c98e71d99c88ecfb558f4592ac144e322a3e80b7951330b8e15dddf3567c0d0f153772e26d0d37a5";
        let rsa = TpmPublicKey::Rsa {
            n: h(n),
            e: 0x10005,
        };
        assert_eq!(
            hex::encode(rsa.name()),
            "000beb8974d36d8cf58fdc87460dda00319e10c94c1b9f222ac9ce29d1c4776246cc"
        );
        assert_eq!(
            hex::encode(rsa.fingerprint()),
            "c8ca80a687d5972e1d961aaa2cfde2ff2e7a20d85e3ea0382804e70e013d65af"
        );
    }

    #[test]
    fn rsa_public_key_der_encodes_lengths_and_sign_padding() {
        // SEQUENCE { INTEGER 0x00ff (padded), INTEGER 3 }
        assert_eq!(
            hex::encode(rsa_public_key_der(&[0xff], 3)),
            "3007020200ff020103"
        );
        let long = rsa_public_key_der(&[0x7f; 256], 65537);
        assert_eq!(&long[..4], &[0x30, 0x82, 0x01, 0x09]);
    }
}
