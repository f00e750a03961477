//! PKCS#11 keys for imgctl: a private key on a token (an HSM, a smart card, SoftHSM), named by
//! an RFC 7512 URI ([`uri`]), signs through the maintained `cryptoki` crate; nothing here
//! formats a signature. [`open`] returns an [`imgctl_measure::keys::SigningKey`], so every
//! signing path (Authenticode, `.pcrsig`, extension root hashes) takes a token key exactly as
//! it takes a key file.
//!
//! The module (the PKCS#11 library) is named by the caller (`--pkcs11-module PATH`) or by the
//! URI's `module-path`; there is no default. The PIN comes from `pin-value` or `pin-source`.
//! The token is chosen by `token`, `manufacturer`, `serial`, `model` and `slot-id`: exactly one
//! token must match; the key by `object` (its label) and `id`: exactly one private key must
//! match. Mechanisms: `CKM_RSA_PKCS` over the DigestInfo (RSASSA-PKCS1-v1_5, so the signature
//! equals the key file's byte for byte) and `CKM_ECDSA` (P-256). Every signature the token
//! returns is verified with its public key before it is used
//! ([`imgctl_measure::keys::SigningKey::sign_digest`]).

pub mod uri;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use imgctl_measure::keys::{ExternalKey, RawSignRequest, SigningKey, VerifyingKey};

pub use uri::{is_pkcs11_uri, Pkcs11Uri, UriError};

/// DER of the OID `prime256v1` (1.2.840.10045.3.1.7), as `CKA_EC_PARAMS` holds it.
const P256_PARAMS: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// Why a PKCS#11 key could not be used. Every message names the key (its URI without the PIN).
#[derive(Debug, thiserror::Error)]
pub enum Pkcs11Error {
    #[error("{uri}: {source}")]
    Uri { uri: String, source: UriError },
    #[error("{0}: no PKCS#11 module named: give --pkcs11-module PATH or module-path= in the URI")]
    NoModule(String),
    #[error("{uri}: --pkcs11-module {option} and the URI's module-path={in_uri} differ")]
    TwoModules {
        uri: String,
        option: PathBuf,
        in_uri: PathBuf,
    },
    #[error("{uri}: cannot load the PKCS#11 module {module}: {message}")]
    Module {
        uri: String,
        module: PathBuf,
        message: String,
    },
    #[error("{uri}: wrong PIN (the token refused it: CKR_PIN_INCORRECT)")]
    WrongPin { uri: String },
    #[error("{uri}: the token needs a PIN: give pin-value= or pin-source=FILE in the URI")]
    NoPin { uri: String },
    #[error("{uri}: {what}")]
    Select { uri: String, what: String },
    #[error("{uri}: {what}: {source}")]
    Token {
        uri: String,
        what: &'static str,
        source: CkError,
    },
    #[error("{uri}: the PIN file {path}: {message}")]
    PinSource {
        uri: String,
        path: PathBuf,
        message: String,
    },
}

/// A private key on a PKCS#11 token, with the session that uses it.
pub struct TokenKey {
    uri: String,
    public: VerifyingKey,
    key: ObjectHandle,
    session: Mutex<Session>,
    // Kept alive (and finalized last) while the session is in use.
    _context: Pkcs11,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenKey({})", self.uri)
    }
}

impl ExternalKey for TokenKey {
    fn describe(&self) -> String {
        self.uri.clone()
    }

    fn public(&self) -> &VerifyingKey {
        &self.public
    }

    fn sign_raw(&self, request: RawSignRequest<'_>) -> Result<Vec<u8>, String> {
        let (mechanism, data) = match request {
            RawSignRequest::RsaPkcs1 { digest_info } => (Mechanism::RsaPkcs, digest_info),
            RawSignRequest::Ecdsa { digest } => (Mechanism::Ecdsa, digest),
        };
        let session = self
            .session
            .lock()
            .map_err(|_| "the PKCS#11 session is unusable (a signer panicked)".to_owned())?;
        session
            .sign(&mechanism, self.key, data)
            .map_err(|e| format!("the token could not sign: {e}"))
    }
}

/// Opens the key `uri_text` names: loads the module (`module`, else the URI's module-path),
/// finds the one matching token, logs in with the URI's PIN, finds the one matching private
/// key and reads its public half.
pub fn open(uri_text: &str, module: Option<&Path>) -> Result<SigningKey, Pkcs11Error> {
    Ok(SigningKey::External(Arc::new(open_token_key(
        uri_text, module,
    )?)))
}

/// [`open`], as the token key itself.
pub fn open_token_key(uri_text: &str, module: Option<&Path>) -> Result<TokenKey, Pkcs11Error> {
    let uri = Pkcs11Uri::parse(uri_text).map_err(|source| Pkcs11Error::Uri {
        uri: redact_raw(uri_text),
        source,
    })?;
    let name = uri.redacted();
    let module = match (module, uri.module_path.as_deref().map(Path::new)) {
        (Some(a), Some(b)) if a != b => {
            return Err(Pkcs11Error::TwoModules {
                uri: name,
                option: a.to_owned(),
                in_uri: b.to_owned(),
            })
        }
        (Some(m), _) | (None, Some(m)) => m.to_owned(),
        (None, None) => return Err(Pkcs11Error::NoModule(name)),
    };
    let module_error = |message: String| Pkcs11Error::Module {
        uri: name.clone(),
        module: module.clone(),
        message,
    };
    if !module.is_file() {
        return Err(module_error("no such file".into()));
    }
    let pin = read_pin(&uri, &name)?;
    let token_err = |what: &'static str| {
        let uri = name.clone();
        move |source: CkError| Pkcs11Error::Token { uri, what, source }
    };
    let context = context_for(&module).map_err(module_error)?;
    let slot = find_slot(&context, &uri, &name)?;
    let info = context
        .get_token_info(slot)
        .map_err(token_err("reading the token's information"))?;
    let session = context
        .open_ro_session(slot)
        .map_err(token_err("opening a session"))?;
    match (&pin, info.login_required()) {
        (Some(pin), _) => match session.login(UserType::User, Some(pin)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(CkError::Pkcs11(RvError::PinIncorrect | RvError::PinLenRange, _)) => {
                return Err(Pkcs11Error::WrongPin { uri: name })
            }
            Err(e) => return Err(token_err("logging in")(e)),
        },
        (None, true) => return Err(Pkcs11Error::NoPin { uri: name }),
        (None, false) => {}
    }
    let mut template = vec![Attribute::Class(ObjectClass::PRIVATE_KEY)];
    if let Some(label) = &uri.object {
        template.push(Attribute::Label(label.as_bytes().to_vec()));
    }
    if let Some(id) = &uri.id {
        template.push(Attribute::Id(id.clone()));
    }
    let keys = session
        .find_objects(&template)
        .map_err(token_err("searching for the private key"))?;
    let key = match keys.as_slice() {
        [one] => *one,
        [] => {
            return Err(Pkcs11Error::Select {
                uri: name,
                what: "no private key on the token matches object=/id= (a missing object, or a wrong PIN that hid it)".into(),
            })
        }
        many => {
            return Err(Pkcs11Error::Select {
                uri: name,
                what: format!("{} private keys match: add id= or object= to name one", many.len()),
            })
        }
    };
    let public = public_key(&session, key, &uri, &name)?;
    Ok(TokenKey {
        uri: name,
        public,
        key,
        session: Mutex::new(session),
        _context: context,
    })
}

/// The one initialized context of `module` in this process: a module is initialized once
/// (`C_Initialize` a second time fails), and every key on it (e.g. `build`'s Secure Boot and
/// PCR keys) shares it.
fn context_for(module: &Path) -> Result<Pkcs11, String> {
    static CONTEXTS: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    let mut contexts = CONTEXTS
        .get_or_init(Default::default)
        .lock()
        .map_err(|_| "the PKCS#11 module table is unusable (a loader panicked)".to_owned())?;
    if let Some(c) = contexts.get(module) {
        return Ok(c.clone());
    }
    let context = Pkcs11::new(module).map_err(|e| one_line(&e))?;
    context
        .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .map_err(|e| format!("C_Initialize failed: {}", one_line(&e)))?;
    contexts.insert(module.to_owned(), context.clone());
    Ok(context)
}

/// The URI for messages when it could not be parsed: everything before the first PIN.
fn redact_raw(text: &str) -> String {
    match text.find("pin-value") {
        Some(i) => format!("{}…", &text[..i]),
        None => text.to_owned(),
    }
}

fn one_line(e: &impl std::fmt::Display) -> String {
    e.to_string().replace('\n', " ")
}

/// The PIN: `pin-value`, or the first line of the `pin-source` file.
fn read_pin(uri: &Pkcs11Uri, name: &str) -> Result<Option<AuthPin>, Pkcs11Error> {
    if let Some(v) = &uri.pin_value {
        return Ok(Some(AuthPin::from(v.clone())));
    }
    let Some(source) = &uri.pin_source else {
        return Ok(None);
    };
    let path = PathBuf::from(source.strip_prefix("file:").unwrap_or(source));
    let error = |message: String| Pkcs11Error::PinSource {
        uri: name.to_owned(),
        path: path.clone(),
        message,
    };
    let raw = imgctl_fsio::read_bounded(&path, 64 << 10, "a PIN file")
        .map_err(|e| error(one_line(&e)))?;
    let line = raw.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.is_empty() {
        return Err(error("the first line is empty".into()));
    }
    let pin = String::from_utf8(line.to_vec()).map_err(|_| error("the PIN is not UTF-8".into()))?;
    Ok(Some(AuthPin::from(pin)))
}

/// The one slot whose token matches the URI's token attributes.
fn find_slot(
    context: &Pkcs11,
    uri: &Pkcs11Uri,
    name: &str,
) -> Result<cryptoki::slot::Slot, Pkcs11Error> {
    let slots = context
        .get_slots_with_initialized_token()
        .map_err(|source| Pkcs11Error::Token {
            uri: name.to_owned(),
            what: "listing the slots",
            source,
        })?;
    let eq =
        |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have.trim_end());
    let mut found = Vec::new();
    for slot in slots {
        if uri.slot_id.is_some_and(|id| id != slot.id()) {
            continue;
        }
        let Ok(info) = context.get_token_info(slot) else {
            continue;
        };
        if eq(&uri.token, info.label())
            && eq(&uri.manufacturer, info.manufacturer_id())
            && eq(&uri.serial, info.serial_number())
            && eq(&uri.model, info.model())
        {
            found.push(slot);
        }
    }
    match found.as_slice() {
        [one] => Ok(*one),
        [] => Err(Pkcs11Error::Select {
            uri: name.to_owned(),
            what: "no initialized token of the module matches token=/serial=/manufacturer=/model=/slot-id=".into(),
        }),
        many => Err(Pkcs11Error::Select {
            uri: name.to_owned(),
            what: format!("{} tokens match: add token= or serial= to name one", many.len()),
        }),
    }
}

/// The public half of `key`: RSA from the private key's modulus and exponent, P-256 from the
/// matching public key object's `CKA_EC_POINT` (a private key object does not carry it).
fn public_key(
    session: &Session,
    key: ObjectHandle,
    uri: &Pkcs11Uri,
    name: &str,
) -> Result<VerifyingKey, Pkcs11Error> {
    let select = |what: String| Pkcs11Error::Select {
        uri: name.to_owned(),
        what,
    };
    let token_err = |what: &'static str| {
        move |source: CkError| Pkcs11Error::Token {
            uri: name.to_owned(),
            what,
            source,
        }
    };
    let attrs = session
        .get_attributes(key, &[AttributeType::KeyType, AttributeType::Id])
        .map_err(token_err("reading the key's type"))?;
    let mut key_type = None;
    let mut id = None;
    for a in attrs {
        match a {
            Attribute::KeyType(t) => key_type = Some(t),
            Attribute::Id(i) => id = Some(i),
            _ => {}
        }
    }
    match key_type {
        Some(t) if t == KeyType::RSA => {
            let attrs = session
                .get_attributes(
                    key,
                    &[AttributeType::Modulus, AttributeType::PublicExponent],
                )
                .map_err(token_err("reading the RSA key's modulus"))?;
            let (mut n, mut e) = (None, None);
            for a in attrs {
                match a {
                    Attribute::Modulus(m) => n = Some(m),
                    Attribute::PublicExponent(x) => e = Some(x),
                    _ => {}
                }
            }
            let (Some(n), Some(e)) = (n, e) else {
                return Err(select(
                    "the RSA private key does not show its modulus and public exponent".into(),
                ));
            };
            rsa::RsaPublicKey::new(
                rsa::BigUint::from_bytes_be(&n),
                rsa::BigUint::from_bytes_be(&e),
            )
            .map(VerifyingKey::Rsa)
            .map_err(|e| select(format!("the token's RSA public key is unusable: {e}")))
        }
        Some(t) if t == KeyType::EC => {
            let mut template = vec![
                Attribute::Class(ObjectClass::PUBLIC_KEY),
                Attribute::KeyType(KeyType::EC),
            ];
            match (&id, &uri.object) {
                (Some(id), _) if !id.is_empty() => template.push(Attribute::Id(id.clone())),
                (_, Some(label)) => template.push(Attribute::Label(label.as_bytes().to_vec())),
                _ => {
                    return Err(select(
                        "the EC key has neither a CKA_ID nor a label to find its public key by"
                            .into(),
                    ))
                }
            }
            let found = session
                .find_objects(&template)
                .map_err(token_err("searching for the EC public key"))?;
            let [public] = found.as_slice() else {
                return Err(select(format!(
                    "{} EC public key objects match the private key's id (exactly one is needed to read its public point)",
                    found.len()
                )));
            };
            let attrs = session
                .get_attributes(*public, &[AttributeType::EcParams, AttributeType::EcPoint])
                .map_err(token_err("reading the EC public key"))?;
            let (mut params, mut point) = (None, None);
            for a in attrs {
                match a {
                    Attribute::EcParams(p) => params = Some(p),
                    Attribute::EcPoint(p) => point = Some(p),
                    _ => {}
                }
            }
            if params.as_deref() != Some(&P256_PARAMS[..]) {
                return Err(select(
                    "the EC key is not on P-256 (imgctl signs with RSA or ECDSA P-256 keys)".into(),
                ));
            }
            let point =
                point.ok_or_else(|| select("the EC public key has no CKA_EC_POINT".into()))?;
            // CKA_EC_POINT is a DER OCTET STRING around the SEC1 point; some tokens give it raw.
            let sec1 = match point.as_slice() {
                [0x04, 0x41, rest @ ..] if rest.len() == 0x41 => rest,
                raw => raw,
            };
            p256::PublicKey::from_sec1_bytes(sec1)
                .map(VerifyingKey::EccP256)
                .map_err(|e| select(format!("the token's EC public point is unusable: {e}")))
        }
        _ => Err(select(
            "the key is neither RSA nor EC (imgctl signs with RSA or ECDSA P-256 keys)".into(),
        )),
    }
}
