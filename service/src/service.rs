//! The service's decisions: enrolment by credential activation, challenges, verdicts and key
//! release. Each request is one call here on typed values ([`crate::api`]); state lives only
//! in the [`Store`].

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use imgctl_attest::eventlog::{EventLog, UserspaceLog};
use imgctl_attest::quote::Signature;
use imgctl_attest::verify::{self, Policy, QuoteEvidence, References};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::api::{
    self, ActivateRequest, ChallengeRequest, ChallengeResponse, EnrolRequest, EnrolResponse,
    EvidenceRequest, EvidenceResponse, Release,
};
use crate::credential::{make_credential, CredentialFile};
use crate::ek_cert::EkCas;
use crate::store::{CheckpointAdvance, Lost, Machine, NewVerdict, NonceUse, Store, StoreError};
use imgctl_attest::published::{PublishedError, PublishedLog, Trust};
use imgctl_attest::tpm_public::TpmPublic;
use std::sync::{Arc, Mutex};

/// The largest secret released: a credential is a TPM2B_DIGEST, at most the size of the EK's
/// name-algorithm digest (32 bytes for the default SHA-256 EK).
pub const MAX_SECRET: usize = 32;

/// `imgctl serve --config FILE` (YAML; paths relative to the file):
/// ```yaml
/// listen: 127.0.0.1:8080
/// database: state.db            # SQLite file, created with its schema on first start, or a
///                               # PostgreSQL connection string (host=/run/postgresql dbname=imgctl)
/// nonce_ttl_seconds: 60         # how long a challenge may be answered
/// enrol_ttl_seconds: 300        # how long an enrolment credential may be activated
/// ek_ca_files: [tpm-ca.pem]     # optional: CAs of EK certificates; when listed, a machine
///                               # enrols only with an EK certificate one of them issued
/// ek_intermediate_files: [i.pem] # optional: intermediate CAs, each issued (through at most 4
///                               # links) by an ek_ca_files root; they issue EK certificates
/// tls:                          # optional: serve HTTPS (rustls) with this certificate chain and key
///   certificate: server.pem     # PEM: the server's certificate first, then intermediates
///   key: server.key             # PEM: PKCS#8, PKCS#1 or SEC1 private key
/// verdict_log: {dir: verdicts, key: verdicts.key}  # optional: append each verdict's record to
///                               # this `imgctl log init` log (durable attestation)
/// log:                          # optional: the transparency log the references are published in
///   source: log                 # a log folder or an http(s):// URL serving its tiles
///   vkey: log.vkey              # its verifier key, or a file holding it
///   witness_policy: trust.txt   # optional: a C2SP tlog-policy whose witness quorum must cosign
/// policy:                       # the policy every enrolled machine is checked against
///   name: demo
///   version: 1
///   file: demo.policy.yaml      # an `imgctl verify` policy (its files relative to it)
///   checkpoint: log/checkpoint  # optional, without `log`: a checkpoint recorded in verdicts
///   secrets:                    # released only on ACCEPT, to the attesting TPM alone
///     - {name: disk-key, file: disk.key}
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub listen: String,
    /// A SQLite file (relative to the configuration), or a PostgreSQL connection string
    /// (`postgresql://…`, or `host=… dbname=…`).
    pub database: String,
    #[serde(default = "default_nonce_ttl")]
    pub nonce_ttl_seconds: u32,
    #[serde(default = "default_enrol_ttl")]
    pub enrol_ttl_seconds: u32,
    /// CA certificates (PEM or DER, relative to the configuration) that issue EK certificates.
    #[serde(default)]
    pub ek_ca_files: Vec<PathBuf>,
    /// Intermediate CA certificates (PEM or DER) between `ek_ca_files` and EK certificates:
    /// links of a chain, checked up to a root at start, not trust anchors themselves.
    #[serde(default)]
    pub ek_intermediate_files: Vec<PathBuf>,
    /// The transparency log whose artifact records are the references: at each evidence its
    /// current checkpoint is read, checked against the last one stored in the database (a
    /// log that shows another history is refused as a split view), and the evidence verified
    /// against its records (an event none matches is "not published"); the verdict stores
    /// that checkpoint.
    #[serde(default)]
    pub log: Option<LogConfig>,
    /// Serve HTTPS with this certificate and key.
    #[serde(default)]
    pub tls: Option<TlsFiles>,
    /// Append every verdict's record to this transparency log (an `imgctl log init` folder,
    /// and its signing key).
    #[serde(default)]
    pub verdict_log: Option<VerdictLogFiles>,
    pub policy: PolicyConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerdictLogFiles {
    pub dir: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub certificate: PathBuf,
    pub key: PathBuf,
}

/// A rustls server configuration (ring provider, TLS 1.2 and 1.3) from PEM files.
fn tls_config(
    cert_name: &str,
    cert_pem: &[u8],
    key_name: &str,
    key_pem: &[u8],
) -> Result<Arc<tokio_rustls::rustls::ServerConfig>, String> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls;
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{cert_name}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{cert_name}: no PEM certificate"));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("{key_name}: {e}"))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| format!("{cert_name} with {key_name}: {e}"))?;
    Ok(Arc::new(config))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// A log folder (relative to the configuration) or an `http://`/`https://` URL.
    pub source: String,
    /// The log's verifier key (C2SP signed-note vkey), or a file holding it.
    pub vkey: String,
    #[serde(default)]
    pub witness_policy: Option<PathBuf>,
}

fn default_nonce_ttl() -> u32 {
    60
}
fn default_enrol_ttl() -> u32 {
    300
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    pub name: String,
    pub version: i64,
    pub file: PathBuf,
    #[serde(default)]
    pub checkpoint: Option<PathBuf>,
    #[serde(default)]
    pub secrets: Vec<SecretConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretConfig {
    pub name: String,
    pub file: PathBuf,
}

/// A configuration problem, naming the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: {message}")]
    Invalid { file: String, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A loaded, checked configuration.
#[derive(Debug)]
pub struct Config {
    pub listen: String,
    pub database: String,
    pub nonce_ttl: i64,
    pub enrol_ttl: i64,
    pub policy_name: String,
    pub policy_version: i64,
    pub policy: Policy,
    pub references: References,
    pub checkpoint: Option<String>,
    pub secrets: Vec<(String, Vec<u8>)>,
    /// Trust anchors of EK certificates; empty: EK certificates are not required (nor read).
    pub ek_cas: EkCas,
    /// The transparency log of the references: where it is and whom to trust.
    pub log: Option<(String, Trust)>,
    /// HTTPS: the server's certificate and key, loaded.
    pub tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    /// The verdict log's folder and signing key.
    pub verdict_log: Option<(PathBuf, SigningKey)>,
}

/// A log's private key (the `imgctl log init` key file's text), checked at load; its Debug
/// form does not show it.
#[derive(Clone)]
pub struct SigningKey(String);

impl SigningKey {
    fn signer(&self) -> Result<imgctl_tlog::NoteSigner, imgctl_tlog::Error> {
        imgctl_tlog::NoteSigner::parse_skey(&self.0)
    }
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(..)")
    }
}

const MAX_CONFIG_FILE: u64 = 64 << 20;

fn read_bounded(path: &Path, what: &str) -> Result<Vec<u8>, ConfigError> {
    use std::io::Read as _;
    let bad = |message: String| ConfigError::Invalid {
        file: path.display().to_string(),
        message,
    };
    let f = std::fs::File::open(path).map_err(|e| bad(format!("{what}: {e}")))?;
    let mut out = Vec::new();
    f.take(MAX_CONFIG_FILE + 1)
        .read_to_end(&mut out)
        .map_err(|e| bad(format!("{what}: {e}")))?;
    if out.len() as u64 > MAX_CONFIG_FILE {
        return Err(bad(format!("{what}: larger than {MAX_CONFIG_FILE} bytes")));
    }
    Ok(out)
}

impl Config {
    /// Reads the configuration and every file it names; any problem is an error naming it.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let bad = |message: String| ConfigError::Invalid {
            file: file.clone(),
            message,
        };
        let text = read_bounded(path, "configuration")?;
        let c: ConfigFile = serde_yaml::from_slice(&text).map_err(|e| bad(e.to_string()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let policy_path = base.join(&c.policy.file);
        let ptext = String::from_utf8(read_bounded(&policy_path, "policy")?)
            .map_err(|_| bad(format!("policy.file {}: not UTF-8", policy_path.display())))?;
        let pbad = |e: &dyn std::fmt::Display| ConfigError::Invalid {
            file: policy_path.display().to_string(),
            message: e.to_string(),
        };
        let policy = Policy::parse(&ptext).map_err(|e| pbad(&e))?;
        let mut references = References::from_policy(&policy).map_err(|e| pbad(&e))?;
        let pbase = policy_path.parent().unwrap_or(Path::new("."));
        for f in &policy.pcrs_json {
            let data = read_bounded(&pbase.join(f), "pcrs_json")?;
            references
                .pcr11
                .extend(verify::parse_pcrs_json(f, &data).map_err(|e| pbad(&e))?);
        }
        for f in &policy.manifests {
            let data = read_bounded(&pbase.join(f), "manifest")?;
            references
                .artifacts
                .push(verify::parse_manifest(f, &data).map_err(|e| pbad(&e))?);
        }
        let checkpoint = match &c.policy.checkpoint {
            Some(p) => Some(
                String::from_utf8(read_bounded(&base.join(p), "checkpoint")?)
                    .map_err(|_| bad("policy.checkpoint: not UTF-8".into()))?,
            ),
            None => None,
        };
        let mut secrets = Vec::new();
        for s in &c.policy.secrets {
            let data = read_bounded(&base.join(&s.file), "secret")?;
            if data.is_empty() || data.len() > MAX_SECRET {
                return Err(bad(format!(
                    "policy.secrets {}: {} bytes; a released secret is 1 to {MAX_SECRET} bytes",
                    s.name,
                    data.len()
                )));
            }
            if secrets.iter().any(|(n, _)| n == &s.name) {
                return Err(bad(format!("policy.secrets: {} listed twice", s.name)));
            }
            secrets.push((s.name.clone(), data));
        }
        let read_all =
            |files: &[PathBuf], what: &str| -> Result<Vec<(String, Vec<u8>)>, ConfigError> {
                files
                    .iter()
                    .map(|f| {
                        let p = base.join(f);
                        Ok((p.display().to_string(), read_bounded(&p, what)?))
                    })
                    .collect()
            };
        let ca_files = read_all(&c.ek_ca_files, "ek_ca_files")?;
        let intermediates = read_all(&c.ek_intermediate_files, "ek_intermediate_files")?;
        if ca_files.is_empty() && !intermediates.is_empty() {
            return Err(bad(
                "ek_intermediate_files needs ek_ca_files: the roots they chain to".into(),
            ));
        }
        let ek_cas = EkCas::parse_chained(&ca_files, &intermediates)
            .map_err(|e| bad(format!("ek_ca_files: {e}")))?;
        let log = match &c.log {
            Some(l) => {
                if c.policy.checkpoint.is_some() {
                    return Err(bad(
                        "policy.checkpoint and log: the checkpoint of a verdict is the log's"
                            .into(),
                    ));
                }
                let vkey = match imgctl_tlog::NoteVerifier::parse_vkey(l.vkey.trim()) {
                    Ok(_) => l.vkey.clone(),
                    Err(_) => String::from_utf8(read_bounded(&base.join(&l.vkey), "log.vkey")?)
                        .map_err(|_| bad(format!("log.vkey {}: not UTF-8", l.vkey)))?,
                };
                let wp = match &l.witness_policy {
                    Some(p) => {
                        let p = base.join(p);
                        Some((
                            p.display().to_string(),
                            read_bounded(&p, "log.witness_policy")?,
                        ))
                    }
                    None => None,
                };
                let trust = Trust::new(&vkey, wp.as_ref().map(|(n, b)| (n.as_str(), b.as_slice())))
                    .map_err(|e| bad(format!("log: {e}")))?;
                let source = if l.source.starts_with("http://") || l.source.starts_with("https://")
                {
                    l.source.clone()
                } else {
                    base.join(&l.source).display().to_string()
                };
                Some((source, trust))
            }
            None => None,
        };
        let tls = match &c.tls {
            Some(t) => {
                let (cp, kp) = (base.join(&t.certificate), base.join(&t.key));
                let (cn, kn) = (cp.display().to_string(), kp.display().to_string());
                Some(
                    tls_config(
                        &cn,
                        &read_bounded(&cp, "tls.certificate")?,
                        &kn,
                        &read_bounded(&kp, "tls.key")?,
                    )
                    .map_err(|e| bad(format!("tls: {e}")))?,
                )
            }
            None => None,
        };
        let verdict_log = match &c.verdict_log {
            Some(v) => {
                let (dir, kp) = (base.join(&v.dir), base.join(&v.key));
                let skey = String::from_utf8(read_bounded(&kp, "verdict_log.key")?)
                    .map_err(|_| bad(format!("verdict_log.key {}: not UTF-8", kp.display())))?;
                let signer = imgctl_tlog::NoteSigner::parse_skey(skey.trim())
                    .map_err(|e| bad(format!("verdict_log.key {}: {e}", kp.display())))?;
                imgctl_tlog::check_writable(&dir, &signer)
                    .map_err(|e| bad(format!("verdict_log.dir {}: {e}", dir.display())))?;
                Some((dir, SigningKey(skey.trim().to_owned())))
            }
            None => None,
        };
        if c.nonce_ttl_seconds == 0 || c.enrol_ttl_seconds == 0 {
            return Err(bad(
                "nonce_ttl_seconds and enrol_ttl_seconds must be positive".into(),
            ));
        }
        Ok(Config {
            listen: c.listen,
            database: if crate::store::is_postgres(&c.database) {
                c.database
            } else {
                base.join(&c.database).display().to_string()
            },
            nonce_ttl: i64::from(c.nonce_ttl_seconds),
            enrol_ttl: i64::from(c.enrol_ttl_seconds),
            policy_name: c.policy.name,
            policy_version: c.policy.version,
            policy,
            references,
            checkpoint,
            secrets,
            ek_cas,
            log,
            tls,
            verdict_log,
        })
    }
}

/// A refusal: HTTP status, a stable kind for machines and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct Refusal {
    pub status: u16,
    pub kind: &'static str,
    pub message: String,
}

fn refuse(status: u16, kind: &'static str, message: impl Into<String>) -> Refusal {
    Refusal {
        status,
        kind,
        message: message.into(),
    }
}

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Self {
        refuse(500, "internal", e.to_string())
    }
}

impl From<api::BodyError> for Refusal {
    fn from(e: api::BodyError) -> Self {
        refuse(400, "bad-request", e.0)
    }
}

fn nonce_refusal(why: NonceUse) -> Refusal {
    match why {
        NonceUse::Unknown => refuse(
            403,
            "nonce-unknown",
            "the nonce was not issued by this service",
        ),
        NonceUse::OtherMachine => refuse(
            403,
            "nonce-other-machine",
            "the nonce was issued to another machine",
        ),
        NonceUse::Used => refuse(403, "nonce-used", "the nonce was already answered (replay)"),
        NonceUse::Expired => refuse(
            403,
            "nonce-expired",
            "the nonce expired before it was answered",
        ),
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn random(n: usize) -> Result<Vec<u8>, Refusal> {
    let mut v = vec![0u8; n];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut v)
        .map_err(|_| refuse(500, "internal", "no randomness from the system"))?;
    Ok(v)
}

/// The references a verdict is checked against and, with a log, the checkpoint they are as
/// of and the one stored before.
struct View {
    refs: Arc<References>,
    checkpoint: Option<String>,
    log: Option<LogCheck>,
}

struct LogCheck {
    origin: String,
    stored: Option<String>,
    size: i64,
}

/// The transparency log of the references, read once and then refreshed at each evidence
/// (its checkpoint, and only the new entries when it grew). The lock orders refreshes of this
/// process's copy; the state that decides (the last checkpoint verified) is in the store.
struct Published {
    tiles: Box<dyn imgctl_tlog::TileFetch + Send + Sync>,
    trust: Trust,
    view: Mutex<Option<(PublishedLog, Arc<References>)>>,
}

impl std::fmt::Debug for Published {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Published({})", self.tiles.describe())
    }
}

fn log_refusal(e: PublishedError) -> Refusal {
    match e {
        PublishedError::SplitView { .. } | PublishedError::Behind { .. } => {
            refuse(502, "log-split-view", e.to_string())
        }
        e => refuse(503, "log-unavailable", e.to_string()),
    }
}

impl Published {
    /// The log's references as of its current checkpoint, checked against the checkpoint
    /// `store` holds for it. A stored checkpoint newer than the log's (another replica saw
    /// it grow meanwhile) makes one more read; still newer, the log went backwards.
    fn view(&self, store: &Store, policy_refs: &References) -> Result<View, Refusal> {
        let mut guard = self.view.lock().unwrap_or_else(|e| e.into_inner());
        for attempt in 0..2 {
            let (log, refs) = match guard.take() {
                None => {
                    let log = PublishedLog::read(self.tiles.as_ref(), &self.trust)
                        .map_err(log_refusal)?;
                    let mut refs = policy_refs.clone();
                    log.add_references(&mut refs);
                    (log, Arc::new(refs))
                }
                Some((mut log, refs)) => match log.refresh(self.tiles.as_ref(), &self.trust) {
                    Ok(false) => (log, refs),
                    Ok(true) => {
                        let mut refs = policy_refs.clone();
                        log.add_references(&mut refs);
                        (log, Arc::new(refs))
                    }
                    Err(e) => {
                        // The copy stays as it was: a later read must still extend it.
                        *guard = Some((log, refs));
                        return Err(log_refusal(e));
                    }
                },
            };
            let origin = log.checkpoint().origin.clone();
            let stored = store.log_checkpoint(&origin)?;
            let checked = match &stored {
                Some(old) => log.check_extends(old.as_bytes(), &self.trust),
                None => Ok(()),
            };
            let view = View {
                refs: refs.clone(),
                checkpoint: Some(log.note().to_owned()),
                log: Some(LogCheck {
                    origin,
                    stored,
                    size: i64::try_from(log.checkpoint().size).unwrap_or(i64::MAX),
                }),
            };
            *guard = Some((log, refs));
            match checked {
                Ok(()) => return Ok(view),
                Err(PublishedError::Behind { .. }) if attempt == 0 => continue,
                Err(e) => return Err(log_refusal(e)),
            }
        }
        Err(refuse(503, "log-unavailable", "the log could not be read"))
    }
}

/// The service: configuration and store. Shared by every request without a lock (`&self`):
/// the store is a pool and every state change one transaction in it.
#[derive(Debug)]
pub struct Service {
    pub config: Config,
    pub store: Store,
    references: Arc<References>,
    published: Option<Published>,
}

/// How many times a verdict is checked again when another request moved the stored log
/// checkpoint between the check and the store.
const CHECKPOINT_RETRIES: usize = 4;

impl Service {
    pub fn open(config: Config) -> Result<Service, ConfigError> {
        let store = Store::open(&config.database)?;
        let published = match &config.log {
            Some((source, trust)) => Some(Published {
                tiles: imgctl_tlog::client::open(source).map_err(|e| ConfigError::Invalid {
                    file: source.clone(),
                    message: e.to_string(),
                })?,
                trust: trust.clone(),
                view: Mutex::new(None),
            }),
            None => None,
        };
        Ok(Service {
            references: Arc::new(config.references.clone()),
            config,
            store,
            published,
        })
    }

    /// The references of a verdict now: the policy's, and the log's as of its checkpoint.
    fn view(&self) -> Result<View, Refusal> {
        match &self.published {
            Some(p) => p.view(&self.store, &self.config.references),
            None => Ok(View {
                refs: self.references.clone(),
                checkpoint: self.config.checkpoint.clone(),
                log: None,
            }),
        }
    }

    /// Enrolment, step 1: checks the EK (and its certificate, when CAs are configured) and AK
    /// and answers a credential (a fresh random secret
    /// made to the EK for the AK's Name) that only the TPM holding both can activate.
    pub fn enrol(&self, req: &EnrolRequest) -> Result<EnrolResponse, Refusal> {
        let ek = TpmPublic::parse(&req.ek_public)
            .map_err(|e| refuse(400, "bad-ek", format!("ek_public: {e}")))?;
        ek.check_ek().map_err(|e| refuse(400, "bad-ek", e))?;
        // With CAs configured, only an EK a configured CA certified enrols.
        if !self.config.ek_cas.is_empty() {
            let cert = req.ek_certificate.as_deref().ok_or_else(|| {
                refuse(
                    403,
                    "ek-certificate-required",
                    "this service enrols only EKs with a certificate from its configured CAs",
                )
            })?;
            self.config
                .ek_cas
                .check(cert, &ek, now())
                .map_err(|e| refuse(403, "ek-certificate-refused", e.to_string()))?;
        }
        let ak = TpmPublic::parse(&req.ak_public)
            .map_err(|e| refuse(400, "bad-ak", format!("ak_public: {e}")))?;
        ak.check_ak().map_err(|e| refuse(400, "bad-ak", e))?;
        let secret = random(32)?;
        let cred = make_credential(&ek, &ak.name, &secret)
            .map_err(|e| refuse(400, "bad-ek", e.to_string()))?;
        let id = hex::encode(&ek.name);
        let expires_at = now() + self.config.enrol_ttl;
        let m = Machine {
            id: id.clone(),
            ek_public: ek.bytes.clone(),
            ak_public: ak.bytes.clone(),
            ak_name: ak.name.clone(),
            policy: self.config.policy_name.clone(),
            state: "pending".into(),
            activation_sha256: hex::encode(Sha256::digest(&secret)),
            activation_expires: expires_at,
        };
        if !self.store.enrol(&m, now())? {
            return Err(refuse(
                409,
                "already-enrolled",
                format!("machine {id} is enrolled and active; its AK is not replaced"),
            ));
        }
        Ok(EnrolResponse {
            machine: id,
            credential: api::encode(&CredentialFile(cred).encode()),
            expires_at,
        })
    }

    /// Enrolment, step 2: the AK is trusted only if the machine returns the credential's
    /// secret before it expires. One attempt: a wrong secret fails the enrolment.
    pub fn activate(&self, req: &ActivateRequest) -> Result<(), Refusal> {
        let m = self.machine(&req.machine)?;
        if m.state != "pending" {
            return Err(refuse(
                409,
                "not-pending",
                format!(
                    "machine {} is {}, not waiting for activation",
                    m.id, m.state
                ),
            ));
        }
        let expired = now() >= m.activation_expires;
        // Digests of a secret: comparing them leaks nothing useful about the secret.
        let ok = !expired && hex::encode(Sha256::digest(&req.secret)) == m.activation_sha256;
        self.store.finish_activation(&m.id, ok)?;
        match (ok, expired) {
            (true, _) => Ok(()),
            (false, true) => Err(refuse(403, "activation-expired", "the enrolment credential expired; enrol again")),
            (false, false) => Err(refuse(
                403,
                "activation-failed",
                "the secret does not match the credential: the AK is not on the TPM of that EK; enrol again",
            )),
        }
    }

    fn machine(&self, id: &str) -> Result<Machine, Refusal> {
        self.store.machine(id)?.ok_or_else(|| {
            refuse(
                404,
                "unknown-machine",
                format!("no machine {id} is enrolled"),
            )
        })
    }

    fn active_machine(&self, id: &str) -> Result<Machine, Refusal> {
        let m = self.machine(id)?;
        if m.state != "active" {
            return Err(refuse(
                403,
                "ak-not-activated",
                format!(
                    "machine {id}'s AK is {} (credential activation has not succeeded)",
                    m.state
                ),
            ));
        }
        Ok(m)
    }

    /// A fresh 32-byte nonce for an enrolled machine, single use, expiring.
    pub fn challenge(&self, req: &ChallengeRequest) -> Result<ChallengeResponse, Refusal> {
        let m = self.active_machine(&req.machine)?;
        let nonce = random(32)?;
        let expires_at = now() + self.config.nonce_ttl;
        self.store.add_nonce(&nonce, &m.id, expires_at)?;
        Ok(ChallengeResponse {
            nonce: hex::encode(nonce),
            expires_at,
        })
    }

    /// Evidence: consumes the nonce, verifies the quote (with the enrolled AK, over the
    /// nonce) and the logs against the policy, stores the verdict, and on ACCEPT releases the
    /// policy's secrets, each MakeCredential'd to the machine's EK for its AK's Name.
    pub fn evidence(
        &self,
        req: &EvidenceRequest,
        body: &[u8],
    ) -> Result<EvidenceResponse, Refusal> {
        let m = self.active_machine(&req.machine)?;
        // A nonce that cannot be consumed is refused before the work of verifying; the one
        // that decides is the conditional consume in the verdict's transaction below.
        if let Some(why) = self.store.nonce_state(&req.nonce, &m.id, now())? {
            return Err(nonce_refusal(why));
        }
        let evidence_sha256 = hex::encode(Sha256::digest(body));
        for _ in 0..CHECKPOINT_RETRIES {
            let view = self.view()?;
            if let Some(r) = self.judge(&m, req, &evidence_sha256, &view)? {
                return Ok(r);
            }
        }
        Err(refuse(
            503,
            "log-busy",
            "the log checkpoint stored kept moving while this evidence was checked; try again",
        ))
    }

    /// Verifies the evidence against `view` and stores the verdict (and the log checkpoint
    /// it was checked against); `None` when the stored checkpoint moved meanwhile.
    fn judge(
        &self,
        m: &Machine,
        req: &EvidenceRequest,
        evidence_sha256: &str,
        view: &View,
    ) -> Result<Option<EvidenceResponse>, Refusal> {
        let verdict = self.verify(m, req, &view.refs);
        let (accepted, findings) = match &verdict {
            Ok(v) => (v.accepted, serde_json::to_value(v).unwrap_or_default()),
            Err(e) => (
                false,
                serde_json::json!({"accepted": false, "findings": [{"kind": "malformed-evidence", "message": e}]}),
            ),
        };
        let mut releases = Vec::new();
        if accepted {
            let ek = TpmPublic::parse(&m.ek_public)
                .map_err(|e| refuse(500, "internal", e.to_string()))?;
            for (name, secret) in &self.config.secrets {
                let cred = make_credential(&ek, &m.ak_name, secret)
                    .map_err(|e| refuse(500, "internal", e.to_string()))?;
                releases.push(Release {
                    name: name.clone(),
                    credential: api::encode(&CredentialFile(cred).encode()),
                });
            }
        }
        let names: Vec<String> = releases.iter().map(|r| r.name.clone()).collect();
        let findings_text = findings.to_string();
        let verdict_id = match self.store.add_verdict(&NewVerdict {
            machine: &m.id,
            nonce: &req.nonce,
            accepted,
            evidence_sha256,
            policy: &self.config.policy_name,
            policy_version: self.config.policy_version,
            log_checkpoint: view.checkpoint.as_deref(),
            findings: &findings_text,
            releases: &names,
            now: now(),
            advance: match (&view.log, &view.checkpoint) {
                (Some(l), Some(note)) => Some(CheckpointAdvance {
                    origin: &l.origin,
                    old: l.stored.as_deref(),
                    note,
                    size: l.size,
                }),
                _ => None,
            },
        })? {
            Ok(id) => id,
            Err(Lost::Checkpoint) => return Ok(None),
            Err(Lost::Nonce(why)) => return Err(nonce_refusal(why)),
        };
        // Durable attestation: the stored verdict's record in the verdict log. A verdict
        // that cannot be logged is not answered (its releases stay on record, undelivered).
        let verdict_log_index = match &self.config.verdict_log {
            Some((dir, key)) => {
                let record = api::VerdictRecord {
                    accepted,
                    evidence_sha256: evidence_sha256.to_owned(),
                    format: api::VerdictRecord::FORMAT.to_owned(),
                    log_checkpoint: view.checkpoint.clone(),
                    machine: m.id.clone(),
                    nonce: hex::encode(&req.nonce),
                    policy: self.config.policy_name.clone(),
                    policy_version: self.config.policy_version,
                    verdict: verdict_id,
                };
                let appended = key
                    .signer()
                    .map_err(imgctl_tlog::StoreError::from)
                    .and_then(|signer| imgctl_tlog::Appender::open(dir, signer))
                    .and_then(|mut a| a.append(&[record.encode()]))
                    .map_err(|e| {
                        refuse(
                            500,
                            "verdict-log-failed",
                            format!(
                                "verdict {verdict_id} is stored but not in the verdict log: {e}"
                            ),
                        )
                    })?;
                Some(appended.first_index)
            }
            None => None,
        };
        Ok(Some(EvidenceResponse {
            verdict_id,
            accepted,
            evidence_sha256: evidence_sha256.to_owned(),
            policy: self.config.policy_name.clone(),
            policy_version: self.config.policy_version,
            log_checkpoint: view.checkpoint.clone(),
            findings,
            releases,
            verdict_log_index,
        }))
    }

    fn verify(
        &self,
        m: &Machine,
        req: &EvidenceRequest,
        refs: &References,
    ) -> Result<verify::Verdict, String> {
        let ak = TpmPublic::parse(&m.ak_public).map_err(|e| format!("enrolled AK: {e}"))?;
        let log = EventLog::parse(&req.event_log).map_err(|e| format!("event_log: {e}"))?;
        let userspace = req
            .userspace_log
            .as_deref()
            .map(UserspaceLog::parse)
            .transpose()
            .map_err(|e| format!("userspace_log: {e}"))?;
        let signature = Signature::parse(&req.signature).map_err(|e| format!("signature: {e}"))?;
        let mut policy = self.config.policy.clone();
        // A service verdict always rests on a quote by the enrolled AK over the nonce.
        policy.require_quote = true;
        Ok(verify::verify(
            &policy,
            refs,
            &log,
            userspace.as_ref(),
            Some(QuoteEvidence {
                attest: &req.quote,
                signature: &signature,
                ak: &ak.key,
                nonce: &req.nonce,
            }),
        ))
    }
}
