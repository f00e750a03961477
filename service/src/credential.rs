//! `TPM2_MakeCredential` without a TPM (TPM 2.0 Library Part 1 §24 "Credential Protection",
//! Part 3 §12.6; KDFa from Part 1 §11.4.10.2), for an RSA or an ECC (NIST P-256) endorsement
//! key:
//!
//! ```text
//! RSA EK:
//! seed            = random, |H_nameAlg(EK)| bytes
//! encryptedSecret = RSA-OAEP(EK, seed; hash = EK nameAlg, label = "IDENTITY\0")
//! ECC EK (Part 1 Annex C.6.1, one-pass Diffie-Hellman, C(1, 1, ECC CDH)):
//! (de, Qe)        = a fresh ephemeral key pair on the EK's curve
//! Z               = x-coordinate of de · Q_EK
//! seed            = KDFe(nameAlg, Z, "IDENTITY\0", Qe.x, Q_EK.x, 8 · |H_nameAlg|)
//! encryptedSecret = TPMS_ECC_POINT Qe (TPM2B x, TPM2B y)
//! both:
//! symKey          = KDFa(nameAlg, seed, "STORAGE", Name(AK), "", EK symmetric keyBits)
//! encIdentity     = AES-CFB(symKey, IV = 0, TPM2B_DIGEST(credential))
//! hmacKey         = KDFa(nameAlg, seed, "INTEGRITY", "", "", 8 * |H_nameAlg|)
//! outerHMAC       = HMAC_nameAlg(hmacKey, encIdentity || Name(AK))
//! credentialBlob  = TPM2B_ID_OBJECT(TPM2B_DIGEST(outerHMAC) || encIdentity)
//! ```
//! `TPM2_ActivateCredential` on the TPM holding that EK and an object with that Name returns
//! the credential; any other TPM, or any other Name, fails the HMAC. [`activate_credential`]
//! is the same in software, for a TPM stand-in whose EK private key is in memory
//! ([`crate::soft_tpm`]): it runs the construction above backwards (Part 3 §12.5.1: decrypt
//! the seed, check the HMAC before anything else, then decrypt the identity), through the
//! same KDFa, HMAC and AES-CFB as MakeCredential.
//!
//! [`CredentialFile`] is tpm2-tools' file format for the pair (`tpm2_makecredential -o`,
//! `tpm2_activatecredential -i`): magic `0xBADCC0DE`, version 1 (both u32 big-endian), then the
//! TPM2B_ID_OBJECT and the TPM2B_ENCRYPTED_SECRET.

use aes::cipher::{AsyncStreamCipher, KeyIvInit};
use hmac::{Mac, SimpleHmac};
use imgctl_attest::quote::AkPublic;
use imgctl_measure::bank::HashAlg;
use imgctl_measure::reader::Reader;
use imgctl_measure::tpm_wire::read_tpm2b;
use imgctl_measure::ParseError;
use rsa::{BigUint, Oaep, RsaPublicKey};

use imgctl_attest::tpm_public::TpmPublic;

/// The label of the seed's OAEP encryption, with its terminating zero (Part 1 §24.4).
const IDENTITY: &[u8] = b"IDENTITY\0";
/// tpm2-tools' credential file magic and version.
pub const CREDENTIAL_MAGIC: u32 = 0xBADC_C0DE;
pub const CREDENTIAL_VERSION: u32 = 1;

/// Why a credential cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    #[error("endorsement key: {0}")]
    Ek(String),
    #[error("credential of {0} bytes: it must be 1 to {1} bytes (a TPM2B_DIGEST of the EK's name algorithm)")]
    Size(usize, usize),
    #[error("object Name of {0} bytes is not nameAlg || digest")]
    Name(usize),
    #[error("RSA-OAEP encryption of the seed: {0}")]
    Rsa(String),
    #[error("credential: {0}")]
    Malformed(String),
    #[error(
        "credential: the integrity check failed (it was not made for this EK and this object Name)"
    )]
    Integrity,
}

/// The two outputs of MakeCredential, each with its TPM2B size prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// `TPM2B_ID_OBJECT`.
    pub id_object: Vec<u8>,
    /// `TPM2B_ENCRYPTED_SECRET`.
    pub encrypted_secret: Vec<u8>,
}

/// `KDFe(hash, Z, use, partyUInfo, partyVInfo, bits)` (Part 1 §11.4.10.3, the SP 800-56A
/// concatenation KDF): `H([i]_32 || Z || use || 0 || partyUInfo || partyVInfo)` for i = 1, 2,
/// …, concatenated and cut to `bits / 8` bytes.
pub fn kdfe(
    hash: HashAlg,
    z: &[u8],
    label: &str,
    party_u: &[u8],
    party_v: &[u8],
    bits: u32,
) -> Result<Vec<u8>, CredentialError> {
    let want = usize::try_from(bits / 8).unwrap_or(usize::MAX);
    let mut out = Vec::with_capacity(want);
    let mut i: u32 = 1;
    while out.len() < want {
        let mut data = i.to_be_bytes().to_vec();
        data.extend_from_slice(z);
        data.extend_from_slice(label.as_bytes());
        data.push(0);
        data.extend_from_slice(party_u);
        data.extend_from_slice(party_v);
        let d = hash
            .hash(&data)
            .map_err(|e| CredentialError::Ek(format!("KDFe: {e}")))?;
        out.extend_from_slice(d.as_bytes());
        i += 1;
    }
    out.truncate(want);
    Ok(out)
}

/// The seed and the `TPMS_ECC_POINT` of an ephemeral P-256 key whose ECDH with the EK's
/// public point derives it (Part 1 Annex C.6.1).
fn ecc_seed(
    hash: HashAlg,
    x: &[u8],
    y: &[u8],
    size: usize,
) -> Result<(Vec<u8>, Vec<u8>), CredentialError> {
    use ring::agreement;
    let bad = |m: &str| CredentialError::Ek(format!("ECDH with the EK: {m}"));
    let pad = |v: &[u8]| -> Result<Vec<u8>, CredentialError> {
        let v = &v[v.iter().position(|b| *b != 0).unwrap_or(v.len())..];
        if v.len() > 32 {
            return Err(bad("a coordinate longer than 32 bytes"));
        }
        let mut p = vec![0u8; 32 - v.len()];
        p.extend_from_slice(v);
        Ok(p)
    };
    let (ek_x, ek_y) = (pad(x)?, pad(y)?);
    let mut peer = vec![4u8];
    peer.extend_from_slice(&ek_x);
    peer.extend_from_slice(&ek_y);
    let rng = ring::rand::SystemRandom::new();
    let eph = agreement::EphemeralPrivateKey::generate(&agreement::ECDH_P256, &rng)
        .map_err(|_| bad("no randomness from the system"))?;
    let public = eph
        .compute_public_key()
        .map_err(|_| bad("ephemeral public key"))?;
    let q = public.as_ref();
    let (qx, qy) = (
        q.get(1..33).unwrap_or_default(),
        q.get(33..65).unwrap_or_default(),
    );
    // An EK point that is not on the curve is refused here by ring.
    let z = agreement::agree_ephemeral(
        eph,
        &agreement::UnparsedPublicKey::new(&agreement::ECDH_P256, &peer),
        |z| z.to_vec(),
    )
    .map_err(|_| bad("the EK's point is not on P-256"))?;
    let seed = kdfe(hash, &z, "IDENTITY", qx, &ek_x, 8 * size as u32)?;
    let mut point = tpm2b(qx);
    point.extend_from_slice(&tpm2b(qy));
    Ok((seed, point))
}

/// `KDFa(hash, key, label, contextU, contextV, bits)` (Part 1 §11.4.10.2, counter mode with
/// HMAC): `HMAC(key, [i]_32 || label || 0 || contextU || contextV || [bits]_32)` for i = 1, 2, …,
/// truncated to `bits`.
pub fn kdfa(
    hash: HashAlg,
    key: &[u8],
    label: &str,
    context_u: &[u8],
    context_v: &[u8],
    bits: u32,
) -> Result<Vec<u8>, CredentialError> {
    let bytes = usize::try_from(bits.div_ceil(8)).map_err(|_| CredentialError::Size(0, 0))?;
    let mut out = Vec::with_capacity(bytes);
    let mut counter: u32 = 1;
    while out.len() < bytes {
        let mut msg = counter.to_be_bytes().to_vec();
        msg.extend_from_slice(label.as_bytes());
        msg.push(0);
        msg.extend_from_slice(context_u);
        msg.extend_from_slice(context_v);
        msg.extend_from_slice(&bits.to_be_bytes());
        out.extend(hmac(hash, key, &[&msg])?);
        counter += 1;
    }
    out.truncate(bytes);
    Ok(out)
}

fn hmac(hash: HashAlg, key: &[u8], parts: &[&[u8]]) -> Result<Vec<u8>, CredentialError> {
    fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        // HMAC takes keys of any length.
        let mut m = <M as hmac::digest::KeyInit>::new_from_slice(key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts every key length"));
        for p in parts {
            m.update(p);
        }
        m.finalize().into_bytes().to_vec()
    }
    Ok(match hash {
        HashAlg::SHA1 => run::<SimpleHmac<sha1::Sha1>>(key, parts),
        HashAlg::SHA256 => run::<SimpleHmac<sha2::Sha256>>(key, parts),
        HashAlg::SHA384 => run::<SimpleHmac<sha2::Sha384>>(key, parts),
        HashAlg::SHA512 => run::<SimpleHmac<sha2::Sha512>>(key, parts),
        other => {
            return Err(CredentialError::Ek(format!(
                "name algorithm {other} is not supported"
            )))
        }
    })
}

fn hmac_verify(
    hash: HashAlg,
    key: &[u8],
    parts: &[&[u8]],
    tag: &[u8],
) -> Result<bool, CredentialError> {
    fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], parts: &[&[u8]], tag: &[u8]) -> bool {
        let mut m = <M as hmac::digest::KeyInit>::new_from_slice(key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts every key length"));
        for p in parts {
            m.update(p);
        }
        // Constant time.
        m.verify_slice(tag).is_ok()
    }
    Ok(match hash {
        HashAlg::SHA1 => run::<SimpleHmac<sha1::Sha1>>(key, parts, tag),
        HashAlg::SHA256 => run::<SimpleHmac<sha2::Sha256>>(key, parts, tag),
        HashAlg::SHA384 => run::<SimpleHmac<sha2::Sha384>>(key, parts, tag),
        HashAlg::SHA512 => run::<SimpleHmac<sha2::Sha512>>(key, parts, tag),
        other => {
            return Err(CredentialError::Ek(format!(
                "name algorithm {other} is not supported"
            )))
        }
    })
}

fn oaep(hash: HashAlg) -> Result<Oaep, CredentialError> {
    let label = String::from_utf8_lossy(IDENTITY).into_owned();
    Ok(match hash {
        HashAlg::SHA1 => Oaep::new_with_label::<sha1::Sha1, _>(label),
        HashAlg::SHA256 => Oaep::new_with_label::<sha2::Sha256, _>(label),
        HashAlg::SHA384 => Oaep::new_with_label::<sha2::Sha384, _>(label),
        HashAlg::SHA512 => Oaep::new_with_label::<sha2::Sha512, _>(label),
        other => {
            return Err(CredentialError::Ek(format!(
                "name algorithm {other} is not supported"
            )))
        }
    })
}

fn tpm2b(data: &[u8]) -> Vec<u8> {
    // Callers bound every input far below 64 KiB.
    let len = u16::try_from(data.len()).unwrap_or(u16::MAX);
    let mut out = len.to_be_bytes().to_vec();
    out.extend_from_slice(data);
    out
}

/// MakeCredential with a random seed.
pub fn make_credential(
    ek: &TpmPublic,
    object_name: &[u8],
    credential: &[u8],
) -> Result<Credential, CredentialError> {
    let size = ek.name_alg.digest_size().ok_or_else(|| {
        CredentialError::Ek(format!("name algorithm {} is not supported", ek.name_alg))
    })?;
    if let AkPublic::Ecc { curve, x, y } = &ek.key {
        ek.check_ek().map_err(CredentialError::Ek)?;
        if *curve != imgctl_attest::quote::TPM_ECC_NIST_P256 {
            return Err(CredentialError::Ek(format!(
                "ECC curve {curve:#06x} (only NIST P-256 EKs are supported)"
            )));
        }
        let (seed, point) = ecc_seed(ek.name_alg, x, y, size)?;
        let mut c = wrap(ek, object_name, credential, &seed)?;
        c.encrypted_secret = tpm2b(&point);
        return Ok(c);
    }
    let mut seed = vec![0u8; size];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed)
        .map_err(|_| CredentialError::Rsa("no randomness from the system".into()))?;
    make_credential_with_seed(
        ek,
        object_name,
        credential,
        &seed,
        &mut rsa::rand_core::OsRng,
    )
}

/// MakeCredential with a given seed (and the RNG of the OAEP padding): for tests that fix it.
pub fn make_credential_with_seed(
    ek: &TpmPublic,
    object_name: &[u8],
    credential: &[u8],
    seed: &[u8],
    rng: &mut impl rsa::rand_core::CryptoRngCore,
) -> Result<Credential, CredentialError> {
    let AkPublic::Rsa { n, e } = &ek.key else {
        return Err(CredentialError::Ek("not an RSA storage key".into()));
    };
    let mut c = wrap(ek, object_name, credential, seed)?;
    let key = RsaPublicKey::new(BigUint::from_bytes_be(n), BigUint::from_bytes_be(e))
        .map_err(|e| CredentialError::Rsa(e.to_string()))?;
    let encrypted_seed = key
        .encrypt(rng, oaep(ek.name_alg)?, seed)
        .map_err(|e| CredentialError::Rsa(e.to_string()))?;
    c.encrypted_secret = tpm2b(&encrypted_seed);
    Ok(c)
}

/// The credential blob for `seed` (everything but the seed's encryption to the EK, left
/// empty).
fn wrap(
    ek: &TpmPublic,
    object_name: &[u8],
    credential: &[u8],
    seed: &[u8],
) -> Result<Credential, CredentialError> {
    ek.check_ek().map_err(CredentialError::Ek)?;
    let hash = ek.name_alg;
    let size = hash
        .digest_size()
        .ok_or_else(|| CredentialError::Ek(format!("name algorithm {hash} is not supported")))?;
    if credential.is_empty() || credential.len() > size {
        return Err(CredentialError::Size(credential.len(), size));
    }
    let name_ok = object_name
        .get(..2)
        .map(|a| HashAlg(u16::from_be_bytes([a[0], a[1]])))
        .and_then(|a| a.digest_size())
        .is_some_and(|n| n + 2 == object_name.len());
    if !name_ok {
        return Err(CredentialError::Name(object_name.len()));
    }
    let Some(sym) = ek.symmetric else {
        return Err(CredentialError::Ek(
            "not a storage key (no symmetric algorithm)".into(),
        ));
    };

    let sym_key = kdfa(
        hash,
        seed,
        "STORAGE",
        object_name,
        &[],
        u32::from(sym.key_bits),
    )?;
    let mut enc_identity = tpm2b(credential);
    aes_cfb(&sym_key, &mut enc_identity, true)?;
    let hmac_key = kdfa(hash, seed, "INTEGRITY", &[], &[], 8 * size as u32)?;
    let outer = hmac(hash, &hmac_key, &[&enc_identity, object_name])?;
    let mut id = tpm2b(&outer);
    id.extend_from_slice(&enc_identity);
    Ok(Credential {
        id_object: tpm2b(&id),
        encrypted_secret: Vec::new(),
    })
}

/// AES-CFB with a zero IV (Part 1 §24.4: the IV of the identity's encryption is zero), in
/// place.
fn aes_cfb(key: &[u8], data: &mut [u8], encrypt: bool) -> Result<(), CredentialError> {
    let iv = [0u8; 16];
    let bad = |e: aes::cipher::InvalidLength| CredentialError::Ek(e.to_string());
    match (key.len(), encrypt) {
        (16, true) => cfb_mode::Encryptor::<aes::Aes128>::new_from_slices(key, &iv)
            .map_err(bad)?
            .encrypt(data),
        (24, true) => cfb_mode::Encryptor::<aes::Aes192>::new_from_slices(key, &iv)
            .map_err(bad)?
            .encrypt(data),
        (32, true) => cfb_mode::Encryptor::<aes::Aes256>::new_from_slices(key, &iv)
            .map_err(bad)?
            .encrypt(data),
        (16, false) => cfb_mode::Decryptor::<aes::Aes128>::new_from_slices(key, &iv)
            .map_err(bad)?
            .decrypt(data),
        (24, false) => cfb_mode::Decryptor::<aes::Aes192>::new_from_slices(key, &iv)
            .map_err(bad)?
            .decrypt(data),
        (32, false) => cfb_mode::Decryptor::<aes::Aes256>::new_from_slices(key, &iv)
            .map_err(bad)?
            .decrypt(data),
        (n, _) => return Err(CredentialError::Ek(format!("AES key of {n} bytes"))),
    }
    Ok(())
}

/// `TPM2_ActivateCredential` in software: the credential `cred` opened with the private key
/// `ek_key` of the EK `ek` for the object Name `object_name`. Fails, naming why, when the
/// credential was made for another EK or another Name (the HMAC), or is malformed; nothing is
/// decrypted before the integrity check passes.
pub fn activate_credential(
    ek: &TpmPublic,
    ek_key: &rsa::RsaPrivateKey,
    object_name: &[u8],
    cred: &Credential,
) -> Result<Vec<u8>, CredentialError> {
    ek.check_ek().map_err(CredentialError::Ek)?;
    let hash = ek.name_alg;
    let size = hash
        .digest_size()
        .ok_or_else(|| CredentialError::Ek(format!("name algorithm {hash} is not supported")))?;
    let (AkPublic::Rsa { n, e }, Some(sym)) = (&ek.key, ek.symmetric) else {
        return Err(CredentialError::Ek("not an RSA storage key".into()));
    };
    {
        use rsa::traits::PublicKeyParts as _;
        if ek_key.n() != &BigUint::from_bytes_be(n) || ek_key.e() != &BigUint::from_bytes_be(e) {
            return Err(CredentialError::Ek(
                "the private key is not the EK's".into(),
            ));
        }
    }
    let malformed = |e: ParseError| CredentialError::Malformed(e.to_string());
    let mut r = Reader::new(&cred.encrypted_secret);
    let encrypted_seed = read_tpm2b(&mut r, "TPM2B_ENCRYPTED_SECRET").map_err(malformed)?;
    r.expect_end("TPM2B_ENCRYPTED_SECRET").map_err(malformed)?;
    let mut r = Reader::new(&cred.id_object);
    let id = read_tpm2b(&mut r, "TPM2B_ID_OBJECT").map_err(malformed)?;
    r.expect_end("TPM2B_ID_OBJECT").map_err(malformed)?;
    let mut r = Reader::new(id);
    let outer = read_tpm2b(&mut r, "TPMS_ID_OBJECT.integrityHMAC").map_err(malformed)?;
    let enc_identity = r.rest();
    if outer.len() != size || enc_identity.len() < 2 {
        return Err(CredentialError::Malformed(format!(
            "TPMS_ID_OBJECT: integrityHMAC of {} bytes (want {size}), encIdentity of {}",
            outer.len(),
            enc_identity.len()
        )));
    }
    // A wrong EK gives a wrong (or no) seed; a wrong Name, a wrong HMAC: both are the one
    // integrity failure the TPM reports.
    let seed = ek_key
        .decrypt(oaep(hash)?, encrypted_seed)
        .map_err(|_| CredentialError::Integrity)?;
    let hmac_key = kdfa(hash, &seed, "INTEGRITY", &[], &[], 8 * size as u32)?;
    if !hmac_verify(hash, &hmac_key, &[enc_identity, object_name], outer)? {
        return Err(CredentialError::Integrity);
    }
    let sym_key = kdfa(
        hash,
        &seed,
        "STORAGE",
        object_name,
        &[],
        u32::from(sym.key_bits),
    )?;
    let mut plain = enc_identity.to_vec();
    aes_cfb(&sym_key, &mut plain, false)?;
    let mut r = Reader::new(&plain);
    let credential = read_tpm2b(&mut r, "TPM2B_DIGEST credential").map_err(malformed)?;
    r.expect_end("encIdentity").map_err(malformed)?;
    if credential.is_empty() || credential.len() > size {
        return Err(CredentialError::Size(credential.len(), size));
    }
    Ok(credential.to_vec())
}

/// tpm2-tools' credential file (what `tpm2_makecredential -o` writes and
/// `tpm2_activatecredential -i` reads).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialFile(pub Credential);

impl CredentialFile {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = CREDENTIAL_MAGIC.to_be_bytes().to_vec();
        out.extend_from_slice(&CREDENTIAL_VERSION.to_be_bytes());
        out.extend_from_slice(&self.0.id_object);
        out.extend_from_slice(&self.0.encrypted_secret);
        out
    }

    pub fn parse(data: &[u8]) -> Result<CredentialFile, ParseError> {
        let mut r = Reader::new(data);
        let magic = r.u32_be("credential file magic")?;
        if magic != CREDENTIAL_MAGIC {
            return Err(ParseError::new(
                0,
                "credential file magic",
                format!("{magic:#010x}, not 0xbadcc0de"),
            ));
        }
        let version = r.u32_be("credential file version")?;
        if version != CREDENTIAL_VERSION {
            return Err(ParseError::new(
                4,
                "credential file version",
                format!("{version}, not 1"),
            ));
        }
        let id = read_tpm2b(&mut r, "TPM2B_ID_OBJECT")?;
        let secret = read_tpm2b(&mut r, "TPM2B_ENCRYPTED_SECRET")?;
        r.expect_end("credential file")?;
        Ok(CredentialFile(Credential {
            id_object: tpm2b(id),
            encrypted_secret: tpm2b(secret),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// KDFa of Part 1 §11.4.10.2 has no published vector; SP 800-108 counter-mode HMAC is what
    /// it is, so check the construction against a by-hand HMAC of its one block.
    #[test]
    fn kdfa_is_counter_mode_hmac_with_a_zero_after_the_label() {
        let key = b"seed";
        let got = kdfa(HashAlg::SHA256, key, "STORAGE", b"name", &[], 128).unwrap();
        let mut msg = 1u32.to_be_bytes().to_vec();
        msg.extend_from_slice(b"STORAGE\0name");
        msg.extend_from_slice(&128u32.to_be_bytes());
        let want = ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key), &msg);
        assert_eq!(got, want.as_ref()[..16]);
        let long = kdfa(HashAlg::SHA256, key, "INTEGRITY", &[], &[], 384).unwrap();
        assert_eq!(long.len(), 48);
    }

    #[test]
    fn credential_file_round_trips_and_names_what_is_wrong() {
        let f = CredentialFile(Credential {
            id_object: vec![0, 2, 1, 2],
            encrypted_secret: vec![0, 1, 9],
        });
        let bytes = f.encode();
        assert_eq!(CredentialFile::parse(&bytes).unwrap(), f);
        let mut bad = bytes.clone();
        bad[0] = 0;
        assert!(CredentialFile::parse(&bad)
            .unwrap_err()
            .to_string()
            .contains("magic"));
        let mut long = bytes;
        long.push(0);
        assert!(CredentialFile::parse(&long).is_err());
    }
}
