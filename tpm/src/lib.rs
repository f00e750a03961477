//! # imgctl-tpm
//!
//! The one place imgctl talks to a TPM (through tss-esapi and the tpm2-tss ESAPI library):
//! reading and extending PCRs, quoting them with an attestation key, and sealing a secret to a
//! *signed* PCR policy that the TPM checks at unseal time.
//!
//! Everything that can be computed without a TPM (policy digests, key Names, `.pcrsig`
//! lookup, signature encodings) lives in `imgctl-measure`; this crate only drives commands.
//!
//! Sealing follows systemd-cryptenroll's `--tpm2-public-key` scheme:
//! - the sealed object's authPolicy is `PolicyAuthorize(key)` (optionally followed by a
//!   literal `PolicyPCR` over other PCRs' current values);
//! - to unseal, a policy session runs `PolicyPCR` on PCR 11 (the TPM fills in the current
//!   value), reads the session digest, finds the `.pcrsig` entry whose `pol` equals it, has the
//!   TPM verify that entry's signature (`TPM2_VerifySignature` → ticket) and runs
//!   `PolicyAuthorize` with the ticket. A PCR 11 value that nobody signed has no entry, and a
//!   forged entry gets no ticket.
//!
//! The storage parent is an ECC P-256 restricted decryption primary key (AES-128-CFB) in the
//! owner hierarchy, recreated on demand (same seed, same template, same key). Quotes are
//! signed by a restricted ECDSA P-256 primary key in the endorsement hierarchy. Unsealing uses
//! an unsalted policy session: the secret crosses the TPM bus in the clear (systemd salts its
//! session with the SRK; not done here yet).

use std::convert::TryFrom;

use base64::Engine as _;
use std::str::FromStr;

use imgctl_measure::bank::{Digest, HashAlg};
use imgctl_measure::pcrsig::PcrSignature;
use imgctl_measure::policy::{PcrSelection as PolicyPcrSelection, TpmPublicKey};
use serde::{Deserialize, Serialize};
use tss_esapi::attributes::{ObjectAttributesBuilder, SessionAttributesBuilder};
use tss_esapi::constants::{CapabilityType, SessionType};
use tss_esapi::handles::{KeyHandle, ObjectHandle, PcrHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    CapabilityData, Digest as TssDigest, DigestValues, EccPoint, EccScheme, HashScheme,
    KeyedHashScheme, Nonce, PcrSelectionList, PcrSlot, Private, Public, PublicBuilder,
    PublicEccParametersBuilder, PublicKeyedHashParameters, SensitiveData, Signature,
    SignatureScheme, SymmetricDefinition, SymmetricDefinitionObject,
};
use tss_esapi::traits::{Marshall, UnMarshall};
use tss_esapi::{Context, TctiNameConf};

/// The TCTI systemd uses when none is given: the kernel's resource manager device.
pub const DEFAULT_TCTI: &str = "device:/dev/tpmrm0";
/// The largest secret [`Tpm::seal`] takes: the data of a sealed keyed-hash object is at most
/// MAX_SYM_DATA = 128 bytes (TPM 2.0 Part 2, TPM2B_SENSITIVE_DATA; swtpm's value).
pub const MAX_SECRET: usize = 128;
/// The longest nonce [`Tpm::quote`] takes: the qualifying data is a TPM2B_DATA of at most
/// sizeof(TPMU_HA) = 64 bytes (TPM 2.0 Part 2, TPM2B_DATA).
pub const MAX_NONCE: usize = 64;

/// What went wrong talking to the TPM.
#[derive(Debug, thiserror::Error)]
pub enum TpmError {
    #[error("invalid TCTI {tcti:?}: {reason} (examples: device:/dev/tpmrm0, swtpm:host=127.0.0.1,port=2321, mssim:host=…,port=…)")]
    Tcti { tcti: String, reason: String },
    #[error("cannot reach the TPM through {tcti:?} (no such device, nothing listening, or not a TPM): {source}")]
    Connect {
        tcti: String,
        source: tss_esapi::Error,
    },
    #[error("TPM2_{op} failed: {source}")]
    Command {
        op: &'static str,
        source: tss_esapi::Error,
    },
    #[error("the TPM is in dictionary-attack lockout ({op}): {source}")]
    Lockout {
        op: &'static str,
        source: tss_esapi::Error,
    },
    #[error(transparent)]
    Measure(#[from] imgctl_measure::Error),
    #[error(transparent)]
    Key(#[from] imgctl_measure::keys::KeyError),
    #[error("{0}")]
    Policy(String),
    #[error("malformed sealed blob: {0}")]
    Blob(String),
}

type Result<T> = std::result::Result<T, TpmError>;

/// The NV index of the RSA-2048 EK certificate (TCG EK Credential Profile 2.0, the low range).
pub const EK_CERT_NV_INDEX_RSA2048: u32 = 0x01c0_0002;

/// The largest EK certificate read from NV (TPM NV indices are far smaller in practice).
pub const MAX_EK_CERT: usize = 16 * 1024;

fn cmd(op: &'static str) -> impl FnOnce(tss_esapi::Error) -> TpmError {
    move |source| {
        // TPM_RC_LOCKOUT (0x921): the dictionary-attack logic refuses authorisations.
        let locked = matches!(
            source,
            tss_esapi::Error::Tss2Error(rc)
                if rc.kind() == Some(tss_esapi::constants::Tss2ResponseCodeKind::Lockout)
        );
        if locked {
            TpmError::Lockout { op, source }
        } else {
            TpmError::Command { op, source }
        }
    }
}

/// A bank as tss-esapi names it.
pub fn hashing_algorithm(bank: HashAlg) -> Result<HashingAlgorithm> {
    Ok(match bank {
        HashAlg::SHA1 => HashingAlgorithm::Sha1,
        HashAlg::SHA256 => HashingAlgorithm::Sha256,
        HashAlg::SHA384 => HashingAlgorithm::Sha384,
        HashAlg::SHA512 => HashingAlgorithm::Sha512,
        other => return Err(TpmError::Policy(format!("bank {other} is not supported"))),
    })
}

fn bank_of(alg: HashingAlgorithm) -> Option<HashAlg> {
    Some(match alg {
        HashingAlgorithm::Sha1 => HashAlg::SHA1,
        HashingAlgorithm::Sha256 => HashAlg::SHA256,
        HashingAlgorithm::Sha384 => HashAlg::SHA384,
        HashingAlgorithm::Sha512 => HashAlg::SHA512,
        _ => return None,
    })
}

fn selection(banks: &[(HashAlg, Vec<u32>)]) -> Result<PcrSelectionList> {
    let mut b = PcrSelectionList::builder();
    for (bank, pcrs) in banks {
        let slots = pcrs
            .iter()
            .map(|&p| {
                if p > 23 {
                    return Err(TpmError::Policy(format!("PCR {p} out of range 0–23")));
                }
                PcrSlot::try_from(1u32 << p).map_err(cmd("PCR_Read"))
            })
            .collect::<Result<Vec<_>>>()?;
        b = b.with_selection(hashing_algorithm(*bank)?, &slots);
    }
    b.build().map_err(cmd("PCR_Read"))
}

fn pcr_handle(pcr: u32) -> Result<PcrHandle> {
    if pcr > 23 {
        return Err(TpmError::Policy(format!("PCR {pcr} out of range 0–23")));
    }
    // ESYS_TR_PCR0..31 are the values 0..31.
    PcrHandle::try_from(ObjectHandle::from(pcr)).map_err(cmd("PCR_Extend"))
}

/// PCR values per bank, each bank's PCRs ascending.
pub type PcrValues = Vec<(HashAlg, Vec<(u32, Digest)>)>;

/// A quote and what a verifier needs to check it.
#[derive(Debug, Clone)]
pub struct Quote {
    /// `TPMS_ATTEST` as signed (what `tpm2_quote -m` writes and `tpm2_checkquote -m` reads).
    pub attest: Vec<u8>,
    /// `TPMT_SIGNATURE` (what `tpm2_quote -s` writes with the default `tss` format).
    pub signature: Vec<u8>,
    /// The attestation key's `TPMT_PUBLIC`.
    pub ak_public: Vec<u8>,
    /// The attestation key in TPM form (convert with `VerifyingKey::from_tpm` for PEM).
    pub ak: TpmPublicKey,
    /// The quoted PCR values, per bank, as read right after the quote.
    pub pcrs: PcrValues,
}

/// A secret sealed to a signed PCR policy; serialised as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedBlob {
    /// `TPM2B_PUBLIC` of the sealed object, base64.
    pub public: String,
    /// `TPM2B_PRIVATE` of the sealed object, base64.
    pub private: String,
    /// The authPolicy the object was created with, hex.
    pub policy: String,
    /// Fingerprint of the key whose signed PCR 11 policies unlock it (`pkfp`), hex.
    pub pkfp: String,
    /// The key's `TPMT_PUBLIC` in systemd's template, base64 (so unseal needs no key file).
    pub key: String,
    /// PCRs bound by a literal `PolicyPCR` after `PolicyAuthorize`, and their bank.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub literal_pcrs: Vec<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub literal_bank: Option<String>,
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

fn tpm2b(data: &[u8], what: &'static str) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(data.len() + 2);
    imgctl_measure::tpm_wire::put_tpm2b(&mut out, data, what)
        .map_err(|e| TpmError::Blob(e.to_string()))?;
    Ok(out)
}

fn untpm2b<'a>(data: &'a [u8], what: &'static str) -> Result<&'a [u8]> {
    imgctl_measure::tpm_wire::unwrap_tpm2b(data, what)
        .map_err(|e| TpmError::Blob(format!("{what}: {e}")))
}

/// A connection to a TPM.
#[derive(Debug)]
pub struct Tpm {
    ctx: Context,
}

impl Tpm {
    /// Connects through a TCTI string (`device:/dev/tpmrm0`, `swtpm:host=…,port=…`, …).
    pub fn open(tcti: &str) -> Result<Tpm> {
        let conf = TctiNameConf::from_str(tcti).map_err(|e| TpmError::Tcti {
            tcti: tcti.to_owned(),
            reason: e.to_string(),
        })?;
        let ctx = Context::new(conf).map_err(|source| TpmError::Connect {
            tcti: tcti.to_owned(),
            source,
        })?;
        let mut tpm = Tpm { ctx };
        // A TCTI that loads is not yet a TPM that answers: ask it something.
        tpm.active_banks().map_err(|e| match e {
            TpmError::Command { source, .. } => TpmError::Connect {
                tcti: tcti.to_owned(),
                source,
            },
            other => other,
        })?;
        Ok(tpm)
    }

    /// Banks with at least one PCR allocated, that imgctl can compute (sha1…sha512).
    pub fn active_banks(&mut self) -> Result<Vec<HashAlg>> {
        let (data, _) = self
            .ctx
            .get_capability(CapabilityType::AssignedPcr, 0, 1)
            .map_err(cmd("GetCapability"))?;
        let CapabilityData::AssignedPcr(list) = data else {
            return Err(TpmError::Policy("TPM returned no PCR allocation".into()));
        };
        let mut banks: Vec<HashAlg> = list
            .get_selections()
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| bank_of(s.hashing_algorithm()))
            .collect();
        banks.sort();
        Ok(banks)
    }

    /// Reads PCRs, per bank, ascending.
    pub fn read_pcrs(&mut self, banks: &[(HashAlg, Vec<u32>)]) -> Result<PcrValues> {
        let list = selection(banks)?;
        let data =
            tss_esapi::abstraction::pcr::read_all(&mut self.ctx, list).map_err(cmd("PCR_Read"))?;
        let mut out = Vec::new();
        for (bank, pcrs) in banks {
            let pb = data
                .pcr_bank(hashing_algorithm(*bank)?)
                .ok_or_else(|| TpmError::Policy(format!("the TPM has no {bank} bank")))?;
            let mut values = Vec::new();
            let mut sorted = pcrs.clone();
            sorted.sort_unstable();
            sorted.dedup();
            for p in sorted {
                let slot = PcrSlot::try_from(1u32 << p).map_err(cmd("PCR_Read"))?;
                let d = pb
                    .get_digest(slot)
                    .ok_or_else(|| TpmError::Policy(format!("PCR {p} missing in {bank}")))?;
                values.push((p, Digest(d.value().to_vec())));
            }
            out.push((*bank, values));
        }
        Ok(out)
    }

    /// `TPM2_PCR_Extend` of one PCR with one digest per bank, in a single command (as
    /// systemd's `tpm2_extend_bytes()` does).
    pub fn extend(&mut self, pcr: u32, digests: &[(HashAlg, Digest)]) -> Result<()> {
        let handle = pcr_handle(pcr)?;
        let mut values = DigestValues::new();
        for (bank, d) in digests {
            let digest = TssDigest::try_from(d.0.clone()).map_err(cmd("PCR_Extend"))?;
            values.set(hashing_algorithm(*bank)?, digest);
        }
        self.ctx
            .execute_with_nullauth_session(|c| c.pcr_extend(handle, values))
            .map_err(cmd("PCR_Extend"))
    }

    fn ecc_primary(&mut self, restricted_signing: bool) -> Result<KeyHandle> {
        let attrs = ObjectAttributesBuilder::new()
            .with_fixed_tpm(true)
            .with_fixed_parent(true)
            .with_sensitive_data_origin(true)
            .with_user_with_auth(true)
            .with_restricted(true)
            .with_decrypt(!restricted_signing)
            .with_sign_encrypt(restricted_signing)
            .build()
            .map_err(cmd("CreatePrimary"))?;
        let params = if restricted_signing {
            PublicEccParametersBuilder::new()
                .with_ecc_scheme(EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256)))
                .with_curve(EccCurve::NistP256)
                .with_is_signing_key(true)
                .with_is_decryption_key(false)
                .with_restricted(true)
                .with_symmetric(SymmetricDefinitionObject::Null)
                .with_key_derivation_function_scheme(
                    tss_esapi::structures::KeyDerivationFunctionScheme::Null,
                )
                .build()
        } else {
            PublicEccParametersBuilder::new_restricted_decryption_key(
                SymmetricDefinitionObject::AES_128_CFB,
                EccCurve::NistP256,
            )
            .build()
        }
        .map_err(cmd("CreatePrimary"))?;
        let public = PublicBuilder::new()
            .with_public_algorithm(PublicAlgorithm::Ecc)
            .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
            .with_object_attributes(attrs)
            .with_ecc_parameters(params)
            .with_ecc_unique_identifier(EccPoint::default())
            .build()
            .map_err(cmd("CreatePrimary"))?;
        let hierarchy = if restricted_signing {
            Hierarchy::Endorsement
        } else {
            Hierarchy::Owner
        };
        self.ctx
            .execute_with_nullauth_session(|c| {
                c.create_primary(hierarchy, public, None, None, None, None)
            })
            .map(|r| r.key_handle)
            .map_err(cmd("CreatePrimary"))
    }

    /// Quotes PCRs with a fresh restricted ECDSA P-256 attestation key (a primary key in the
    /// endorsement hierarchy, so the same TPM gives the same AK), over `nonce`.
    pub fn quote(&mut self, nonce: &[u8], banks: &[(HashAlg, Vec<u32>)]) -> Result<Quote> {
        let list = selection(banks)?;
        let ak = self.ecc_primary(true)?;
        let data = tss_esapi::structures::Data::try_from(nonce.to_vec()).map_err(|_| {
            TpmError::Policy(format!(
                "nonce of {} bytes is too long for the TPM (at most {MAX_NONCE})",
                nonce.len()
            ))
        })?;
        let result = self.ctx.execute_with_nullauth_session(|c| {
            c.quote(
                ak,
                data,
                SignatureScheme::EcDsa {
                    hash_scheme: HashScheme::new(HashingAlgorithm::Sha256),
                },
                list,
            )
        });
        let (public, _, _) = self.ctx.read_public(ak).map_err(cmd("ReadPublic"))?;
        let _ = self.ctx.flush_context(ak.into());
        let (attest, signature) = result.map_err(cmd("Quote"))?;
        let ak_key = tpm_public_key(&public)?;
        Ok(Quote {
            attest: attest.marshall().map_err(cmd("Quote"))?,
            signature: signature.marshall().map_err(cmd("Quote"))?,
            ak_public: public.marshall().map_err(cmd("Quote"))?,
            ak: ak_key,
            pcrs: self.read_pcrs(banks)?,
        })
    }

    /// The endorsement key from the TCG default RSA-2048 template (EK Credential Profile,
    /// template L-1; swtpm's and most TPMs' EK), recreated from the endorsement seed.
    fn rsa_ek(&mut self) -> Result<KeyHandle> {
        tss_esapi::abstraction::ek::create_ek_object_2(
            &mut self.ctx,
            tss_esapi::abstraction::AsymmetricAlgorithmSelection::Rsa(
                tss_esapi::interface_types::key_bits::RsaKeyBits::Rsa2048,
            ),
            None,
        )
        .map_err(cmd("CreatePrimary"))
    }

    fn public_of(&mut self, key: KeyHandle) -> Result<Vec<u8>> {
        let r = self.ctx.read_public(key);
        let _ = self.ctx.flush_context(key.into());
        let (public, _, _) = r.map_err(cmd("ReadPublic"))?;
        public.marshall().map_err(cmd("ReadPublic"))
    }

    /// The RSA-2048 endorsement key's `TPMT_PUBLIC`: the machine's identity for enrolment.
    pub fn ek_public(&mut self) -> Result<Vec<u8>> {
        let ek = self.rsa_ek()?;
        self.public_of(ek)
    }

    /// The RSA-2048 EK's certificate (DER) as the manufacturer stored it in NV index
    /// [`EK_CERT_NV_INDEX_RSA2048`] (TCG EK Credential Profile), read with owner authorisation;
    /// `None` when the TPM has no such index. An index larger than [`MAX_EK_CERT`] is refused
    /// before it is read.
    pub fn ek_certificate(&mut self) -> Result<Option<Vec<u8>>> {
        use tss_esapi::abstraction::nv;
        use tss_esapi::handles::NvIndexTpmHandle;
        use tss_esapi::interface_types::resource_handles::NvAuth;
        let handle = NvIndexTpmHandle::new(EK_CERT_NV_INDEX_RSA2048).map_err(cmd("NV index"))?;
        let indices = nv::list(&mut self.ctx).map_err(cmd("GetCapability(NV indices)"))?;
        let Some((public, _)) = indices.iter().find(|(p, _)| p.nv_index() == handle) else {
            return Ok(None);
        };
        if public.data_size() > MAX_EK_CERT {
            return Err(TpmError::Policy(format!(
                "the EK certificate in NV index {EK_CERT_NV_INDEX_RSA2048:#010x} is {} bytes, more than {MAX_EK_CERT}",
                public.data_size()
            )));
        }
        let cert = self
            .ctx
            .execute_with_nullauth_session(|ctx| nv::read_full(ctx, NvAuth::Owner, handle))
            .map_err(cmd("NV_Read of the EK certificate"))?;
        Ok(Some(cert))
    }

    /// The `TPMT_PUBLIC` of the attestation key [`Tpm::quote`] signs with.
    pub fn ak_public(&mut self) -> Result<Vec<u8>> {
        let ak = self.ecc_primary(true)?;
        self.public_of(ak)
    }

    /// `TPM2_ActivateCredential` with the attestation key of [`Tpm::quote`] as the activated
    /// object and the RSA EK as the key that opens the seed (authorised by
    /// `PolicySecret(TPM_RH_ENDORSEMENT)`, the EK template's policy). `id_object` and
    /// `encrypted_secret` are the TPM2B buffers' contents (without their size). Returns the
    /// credential; fails when it was not made for this EK and this AK's Name.
    pub fn activate_credential(
        &mut self,
        id_object: &[u8],
        encrypted_secret: &[u8],
    ) -> Result<Vec<u8>> {
        let id = tss_esapi::structures::IdObject::try_from(id_object.to_vec())
            .map_err(cmd("ActivateCredential"))?;
        let secret = tss_esapi::structures::EncryptedSecret::try_from(encrypted_secret.to_vec())
            .map_err(cmd("ActivateCredential"))?;
        let ak = self.ecc_primary(true)?;
        let ek = match self.rsa_ek() {
            Ok(ek) => ek,
            Err(e) => {
                let _ = self.ctx.flush_context(ak.into());
                return Err(e);
            }
        };
        let result = self.activate_with(ak, ek, id, secret);
        let _ = self.ctx.flush_context(ak.into());
        let _ = self.ctx.flush_context(ek.into());
        result
    }

    fn activate_with(
        &mut self,
        ak: KeyHandle,
        ek: KeyHandle,
        id: tss_esapi::structures::IdObject,
        secret: tss_esapi::structures::EncryptedSecret,
    ) -> Result<Vec<u8>> {
        let session = self.start_policy_session()?;
        let policy = PolicySession::try_from(session).map_err(cmd("StartAuthSession"))?;
        let out = self
            .ctx
            .execute_with_nullauth_session(|c| {
                c.policy_secret(
                    policy,
                    tss_esapi::handles::AuthHandle::Endorsement,
                    Nonce::default(),
                    TssDigest::default(),
                    Nonce::default(),
                    None,
                )
            })
            .map_err(cmd("PolicySecret"))
            .and_then(|_| {
                self.ctx
                    .execute_with_sessions(
                        (Some(AuthSession::Password), Some(session), None),
                        |c| c.activate_credential(ak, ek, id, secret),
                    )
                    .map_err(cmd("ActivateCredential"))
            });
        let _ = self
            .ctx
            .flush_context(tss_esapi::handles::SessionHandle::from(session).into());
        Ok(out?.value().to_vec())
    }

    /// An unbound, unsalted SHA-256 policy session (AES-128-CFB parameter encryption).
    fn start_policy_session(&mut self) -> Result<AuthSession> {
        self.ctx
            .start_auth_session(
                None,
                None,
                None,
                SessionType::Policy,
                SymmetricDefinition::AES_128_CFB,
                HashingAlgorithm::Sha256,
            )
            .map_err(cmd("StartAuthSession"))?
            .ok_or_else(|| TpmError::Policy("the TPM returned no session".into()))
    }

    fn policy_session(&mut self) -> Result<PolicySession> {
        let session = self.start_policy_session()?;
        let (attrs, mask) = SessionAttributesBuilder::new()
            .with_decrypt(true)
            .with_encrypt(true)
            .build();
        self.ctx
            .tr_sess_set_attributes(session, attrs, mask)
            .map_err(cmd("StartAuthSession"))?;
        PolicySession::try_from(session).map_err(cmd("StartAuthSession"))
    }

    /// Seals `secret` so that it unseals only through a PCR 11 policy signed by `key`
    /// (and, if `literal` is given, only while those PCRs keep their current values).
    pub fn seal(
        &mut self,
        secret: &[u8],
        key: &TpmPublicKey,
        literal: Option<(HashAlg, Vec<u32>)>,
    ) -> Result<SealedBlob> {
        let mut policy = key.authorize_policy();
        if let Some((bank, pcrs)) = &literal {
            let values = self.read_pcrs(&[(*bank, pcrs.clone())])?;
            let digests: Vec<Digest> = values
                .into_iter()
                .flat_map(|(_, v)| v.into_iter().map(|(_, d)| d))
                .collect();
            let sel = PolicyPcrSelection::new(*bank, pcrs)?;
            policy = imgctl_measure::policy::policy_pcr(&policy, &sel, &digests)?;
        }
        let attrs = ObjectAttributesBuilder::new()
            .with_fixed_tpm(true)
            .with_fixed_parent(true)
            .build()
            .map_err(cmd("Create"))?;
        let public = PublicBuilder::new()
            .with_public_algorithm(PublicAlgorithm::KeyedHash)
            .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
            .with_object_attributes(attrs)
            .with_auth_policy(TssDigest::try_from(policy.to_vec()).map_err(cmd("Create"))?)
            .with_keyed_hash_parameters(PublicKeyedHashParameters::new(KeyedHashScheme::Null))
            .with_keyed_hash_unique_identifier(TssDigest::default())
            .build()
            .map_err(cmd("Create"))?;
        let data = SensitiveData::try_from(secret.to_vec()).map_err(|_| {
            TpmError::Policy(format!(
                "secret of {} bytes is too long to seal (at most {MAX_SECRET})",
                secret.len()
            ))
        })?;
        let parent = self.ecc_primary(false)?;
        let created = self.ctx.execute_with_nullauth_session(|c| {
            c.create(parent, public, None, Some(data), None, None)
        });
        let _ = self.ctx.flush_context(parent.into());
        let created = created.map_err(cmd("Create"))?;
        let out_public = created.out_public.marshall().map_err(cmd("Create"))?;
        Ok(SealedBlob {
            public: b64().encode(tpm2b(&out_public, "TPM2B_PUBLIC")?),
            private: b64().encode(tpm2b(created.out_private.value(), "TPM2B_PRIVATE")?),
            policy: hex::encode(policy),
            pkfp: hex::encode(key.fingerprint()),
            key: b64().encode(key.tpmt_public()),
            literal_pcrs: literal.as_ref().map(|(_, p)| p.clone()).unwrap_or_default(),
            literal_bank: literal.map(|(b, _)| b.to_string()),
        })
    }

    /// Unseals with the signed policy for the current PCR 11 value in `bank` (see the crate
    /// doc). Fails, naming the reason, when no `.pcrsig` entry matches or the TPM refuses.
    pub fn unseal(
        &mut self,
        blob: &SealedBlob,
        key: &TpmPublicKey,
        pcrsig: &PcrSignature,
        bank: HashAlg,
    ) -> Result<Vec<u8>> {
        if hex::encode(key.fingerprint()) != blob.pkfp.to_ascii_lowercase() {
            return Err(TpmError::Policy(format!(
                "the secret was sealed to key {} but the given key is {}",
                blob.pkfp,
                hex::encode(key.fingerprint())
            )));
        }
        let b64d = |s: &str, what: &str| {
            b64()
                .decode(s)
                .map_err(|e| TpmError::Blob(format!("{what}: {e}")))
        };
        let public = Public::unmarshall(untpm2b(&b64d(&blob.public, "public")?, "public")?)
            .map_err(|e| TpmError::Blob(format!("public: {e}")))?;
        let private =
            Private::try_from(untpm2b(&b64d(&blob.private, "private")?, "private")?.to_vec())
                .map_err(|e| TpmError::Blob(format!("private: {e}")))?;

        let session = self.policy_session()?;
        let result = self.unseal_in(session, &public, private, key, pcrsig, bank, blob);
        let handle = tss_esapi::handles::SessionHandle::from(session);
        let _ = self.ctx.flush_context(ObjectHandle::from(handle));
        result
    }

    #[allow(clippy::too_many_arguments)]
    fn unseal_in(
        &mut self,
        session: PolicySession,
        public: &Public,
        private: Private,
        key: &TpmPublicKey,
        pcrsig: &PcrSignature,
        bank: HashAlg,
        blob: &SealedBlob,
    ) -> Result<Vec<u8>> {
        let pcr11 = selection(&[(bank, vec![11])])?;
        self.ctx
            .policy_pcr(session, TssDigest::default(), pcr11)
            .map_err(cmd("PolicyPCR"))?;
        let approved = self
            .ctx
            .policy_get_digest(session)
            .map_err(cmd("PolicyGetDigest"))?;
        let approved: [u8; 32] = approved
            .value()
            .try_into()
            .map_err(|_| TpmError::Policy("policy digest is not SHA-256 sized".into()))?;
        let fp = key.fingerprint();
        let entry = pcrsig.find(bank, &approved, &fp).ok_or_else(|| {
            TpmError::Policy(format!(
                "no .pcrsig entry in bank {bank} signed by key {} matches the current PCR 11 \
                 (policy {}): this PCR 11 value was not signed",
                hex::encode(fp),
                hex::encode(approved)
            ))
        })?;
        let sig = entry.signature()?;
        let tpmt_sig = imgctl_measure::keys::tpmt_signature(key, bank, &sig)?;
        let signature = Signature::unmarshall(&tpmt_sig).map_err(cmd("VerifySignature"))?;

        let ext = Public::unmarshall(&key.tpmt_public()).map_err(cmd("LoadExternal"))?;
        let key_handle = self
            .ctx
            .execute_without_session(|c| c.load_external_public(ext, Hierarchy::Owner))
            .map_err(cmd("LoadExternal"))?;
        let ahash = bank.hash(&approved).map_err(imgctl_measure::Error::from)?;
        let ticket = self.ctx.execute_without_session(|c| {
            c.verify_signature(key_handle, TssDigest::try_from(ahash.0.clone())?, signature)
        });
        let name = self.ctx.tr_get_name(key_handle.into());
        let _ = self.ctx.flush_context(key_handle.into());
        let ticket = ticket.map_err(cmd("VerifySignature"))?;
        let name = name.map_err(cmd("TR_GetName"))?;
        if name.value() != key.name().as_slice() {
            return Err(TpmError::Policy(format!(
                "the TPM computed Name {} for the key, imgctl {}",
                hex::encode(name.value()),
                hex::encode(key.name())
            )));
        }
        self.ctx
            .policy_authorize(
                session,
                TssDigest::try_from(approved.to_vec()).map_err(cmd("PolicyAuthorize"))?,
                Nonce::default(),
                &name,
                ticket,
            )
            .map_err(cmd("PolicyAuthorize"))?;
        if !blob.literal_pcrs.is_empty() {
            let lb: HashAlg = blob
                .literal_bank
                .as_deref()
                .unwrap_or("sha256")
                .parse()
                .map_err(|e| TpmError::Blob(format!("literal_bank: {e}")))?;
            let sel = selection(&[(lb, blob.literal_pcrs.clone())])?;
            self.ctx
                .policy_pcr(session, TssDigest::default(), sel)
                .map_err(cmd("PolicyPCR"))?;
        }

        let parent = self.ecc_primary(false)?;
        let loaded = self
            .ctx
            .execute_with_nullauth_session(|c| c.load(parent, private, public.clone()));
        let _ = self.ctx.flush_context(parent.into());
        let object = loaded.map_err(cmd("Load"))?;
        let out = self
            .ctx
            .execute_with_session(Some(AuthSession::from(session)), |c| {
                c.unseal(object.into())
            });
        let _ = self.ctx.flush_context(object.into());
        Ok(out.map_err(cmd("Unseal"))?.value().to_vec())
    }
}

/// The TPM form of a key the TPM returned.
pub fn tpm_public_key(public: &Public) -> Result<TpmPublicKey> {
    match public {
        Public::Ecc { unique, .. } => {
            let x: [u8; 32] = unique
                .x()
                .value()
                .try_into()
                .map_err(|_| TpmError::Policy("ECC key is not P-256".into()))?;
            let y: [u8; 32] = unique
                .y()
                .value()
                .try_into()
                .map_err(|_| TpmError::Policy("ECC key is not P-256".into()))?;
            Ok(TpmPublicKey::EccP256 { x, y })
        }
        Public::Rsa {
            unique, parameters, ..
        } => {
            let e = match parameters.exponent().value() {
                0 => 65537,
                e => e,
            };
            Ok(TpmPublicKey::Rsa {
                n: unique.value().to_vec(),
                e,
            })
        }
        _ => Err(TpmError::Policy("not an RSA or ECC key".into())),
    }
}

/// The key a blob was sealed to (recorded in it as `TPMT_PUBLIC`).
pub fn blob_key(blob: &SealedBlob) -> Result<TpmPublicKey> {
    let bytes = b64()
        .decode(&blob.key)
        .map_err(|e| TpmError::Blob(format!("key: {e}")))?;
    let public = Public::unmarshall(&bytes).map_err(|e| TpmError::Blob(format!("key: {e}")))?;
    let key = tpm_public_key(&public)?;
    if hex::encode(key.fingerprint()) != blob.pkfp.to_ascii_lowercase() {
        return Err(TpmError::Blob("key does not match pkfp".into()));
    }
    Ok(key)
}
