//! The artifact record: one versioned type for what imgctl built and what it will measure, for
//! every kind of artifact (UKI, sysext, confext, signed PCR policy, addon).
//!
//! One module writes and reads both forms, so they cannot drift apart:
//! - the JSON form ([`ArtifactRecord::to_json_bytes`], pretty-printed, `"format":
//!   "imgctl-record/2"`); [`ArtifactRecord::from_json`] also reads the old `manifest.json`
//!   (`imgctl-manifest/1`) and converts it;
//! - the canonical log-entry encoding ([`ArtifactRecord::encode_entry`]): the line
//!   `imgctl.dev/log-entry/v2`, then the compact JSON form, then `\n`. Same record, same bytes
//!   (struct fields in declaration order, maps sorted); [`ArtifactRecord::parse_entry`] accepts
//!   only bytes that re-encode identically.
//!
//! Every digest is lower-case hex of its bank's length, keyed by bank name (`sha1`, `sha256`,
//! `sha384`, `sha512`); unknown keys are errors; a record without a file digest is an error.

use std::collections::BTreeMap;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::bank::HashAlg;
use crate::manifest::{
    Digests, EventRecord, FileRecord, Manifest, PcrsJson, UkiRecord, MANIFEST_FORMAT,
};
use crate::Error;

/// The JSON form's `format`.
pub const RECORD_FORMAT: &str = "imgctl-record/2";
/// The first line of a version-2 log entry.
pub const ENTRY_V2: &str = "imgctl.dev/log-entry/v2";
/// The largest record accepted (JSON form or log entry).
pub const MAX_RECORD_BYTES: usize = 4 << 20;

/// What kind of artifact a record describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordKind {
    Uki,
    Sysext,
    Confext,
    Policy,
    Addon,
}

impl RecordKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Uki => "uki",
            RecordKind::Sysext => "sysext",
            RecordKind::Confext => "confext",
            RecordKind::Policy => "policy",
            RecordKind::Addon => "addon",
        }
    }
}

impl std::fmt::Display for RecordKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One partition of an extension or OS image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionRecord {
    /// `data`, `verity` or `signature`.
    pub role: String,
    /// The GPT partition type GUID (lower-case, hyphenated).
    pub type_uuid: String,
    /// The partition's own GUID (for data and verity: the root hash halves).
    pub uuid: String,
}

/// What an extension (sysext/confext) or OS image adds to the record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtensionRecord {
    /// The dm-verity root hash (sha256, hex): what systemd-sysext logs when it activates it.
    pub root_hash: String,
    pub partitions: Vec<PartitionRecord>,
    /// SHA-256 of the DER certificate the root-hash signature verifies with, if signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature_certificate_sha256: Option<String>,
    /// The signature's signers as systemd main's `verity` NvPCR record names them when the
    /// kernel verified it (`<serial DER hex>/<issuer DER base64>`, `,`-separated), if signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verity_signers: Option<String>,
}

/// What a signed PCR policy (`.pcrsig`) adds to the record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRecord {
    /// The key's fingerprint as `.pcrsig` names it (`pkfp`): SHA-256 of OpenSSL's
    /// `i2d_PublicKey` (DER PKCS#1 `RSAPublicKey` for RSA, `04 ‖ X ‖ Y` for P-256).
    pub key_fingerprint_sha256: String,
    /// What it signs: per bank, the PCR values (per phase) the signatures authorise.
    pub signs: PcrsJson,
    /// A policy record of its own (`imgctl sign-pcrs --log`): the Authenticode hash, per bank,
    /// of the UKI that carries it, which PCR 4 shows when that UKI boots. Empty in a UKI's own
    /// record, whose `uki` facts say which UKI it is.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub uki_authenticode: Digests,
}

impl PolicyRecord {
    /// The policy of key `key_fingerprint` (systemd's `pkfp`) signing the PCR 11 values of
    /// `signs` (every `.dtbauto` case merged, duplicates dropped).
    pub fn new(key_fingerprint: &[u8; 32], signs: &[&crate::Prediction]) -> PolicyRecord {
        let mut merged = PcrsJson::new();
        for p in signs {
            for (bank, values) in p.to_pcrs_json() {
                let row = merged.entry(bank).or_default();
                for v in values {
                    if !row.contains(&v) {
                        row.push(v);
                    }
                }
            }
        }
        PolicyRecord {
            key_fingerprint_sha256: hex::encode(key_fingerprint),
            signs: merged,
            uki_authenticode: Digests::new(),
        }
    }
}

/// What only the booted machine knows, as placeholders an expected userspace string may hold:
/// `{machine-id}` (systemd-pcrmachine's ID, made at first boot: 32 lower-case hex digits) and
/// `{luks-uuid}` (the UUID systemd-repart gives an encrypted volume at first boot: a lower-case
/// 8-4-4-4-12 UUID). Within one boot a placeholder stands for one value everywhere.
pub const USERSPACE_PLACEHOLDERS: &[&str] = &["{machine-id}", "{luks-uuid}"];

/// systemd's userspace event types whose digest is not the hash of their string:
/// systemd-cryptsetup's `volume-key` record (`cryptsetup:<name>:<uuid>`) is extended with an
/// HMAC keyed by the volume key, which only the machine can compute.
pub const DIGEST_NOT_OF_STRING: &[&str] = &["volume-key"];

/// Does `value` have the form of `placeholder` (one of [`USERSPACE_PLACEHOLDERS`])?
fn placeholder_form_ok(placeholder: &str, value: &str) -> bool {
    let hex = |s: &str| s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    match placeholder {
        "{machine-id}" => value.len() == 32 && hex(value),
        "{luks-uuid}" => {
            let parts: Vec<&str> = value.split('-').collect();
            parts.iter().map(|p| p.len()).eq([8, 4, 4, 4, 12]) && parts.iter().all(|p| hex(p))
        }
        _ => false,
    }
}

/// The length of the values of `placeholder`.
fn placeholder_len(placeholder: &str) -> usize {
    match placeholder {
        "{machine-id}" => 32,
        _ => 36,
    }
}

/// Does the logged string `s` match the expected `template` (literal text and
/// [`USERSPACE_PLACEHOLDERS`])? Each placeholder's value must have its form and agree with
/// `bindings` (what the same boot's earlier records bound it to); on a match the new
/// bindings are added, otherwise `bindings` is left unchanged.
pub fn userspace_template_matches(
    template: &str,
    s: &str,
    bindings: &mut BTreeMap<String, String>,
) -> bool {
    let mut new = bindings.clone();
    let (mut t, mut s) = (template, s);
    loop {
        let next = USERSPACE_PLACEHOLDERS
            .iter()
            .filter_map(|p| t.find(p).map(|i| (i, *p)))
            .min();
        let Some((i, p)) = next else {
            if t != s {
                return false;
            }
            break;
        };
        let Some(rest) = s.strip_prefix(&t[..i]) else {
            return false;
        };
        let n = placeholder_len(p);
        let Some(value) = rest.get(..n) else {
            return false;
        };
        if !placeholder_form_ok(p, value) || new.get(p).is_some_and(|v| v != value) {
            return false;
        }
        new.insert(p.to_owned(), value.to_owned());
        (t, s) = (&t[i + p.len()..], &rest[n..]);
    }
    *bindings = new;
    true
}

/// A record the booted image's systemd extends into a PCR from userspace (PCR 15 on an OS
/// image: systemd-pcrmachine's machine ID, systemd-pcrfs' file systems, systemd-cryptsetup's
/// volume key, the image's unlock-mechanism record), as the image predicts it. Its digest in a
/// bank is that bank's hash of the string the record carries in the userspace log (except
/// for [`DIGEST_NOT_OF_STRING`]), so the string is the prediction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserspaceEventRecord {
    pub pcr: u32,
    /// systemd's `eventType` in `/run/log/systemd/tpm2-measure.log` (`filesystem`,
    /// `machine-id`, `volume-key`, `phase`, …).
    pub event_type: String,
    /// The exact string, with [`USERSPACE_PLACEHOLDERS`] where only the booted machine knows
    /// the value ([`userspace_template_matches`]).
    pub string: String,
}

/// The record of one artifact. Construct, then [`ArtifactRecord::check`] (the readers do).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactRecord {
    pub format: String,
    pub kind: RecordKind,
    pub name: String,
    pub version: String,
    pub builder: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_date_epoch: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipe: Option<FileRecord>,
    /// The artifact's files (role `uki`, `image`, `pcrsig`, `initrd`, …) and inputs, each with
    /// its digest in every bank where it is a measurement (sha256 at least).
    pub files: Vec<FileRecord>,
    /// UKI and addon facts: Authenticode hashes (PCR 4) of it and its kernel, the stub and its
    /// semantics, every section with its digests in every bank.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uki: Option<UkiRecord>,
    /// PCR 11 per phase, per bank (`systemd-measure calculate --json` shape).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pcrs: PcrsJson,
    /// Other predicted events: the PCR 12/13 sidecar measurements and the like.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<EventRecord>,
    /// OS images: what the booted system's userspace records (PCR 15), each once per boot.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub userspace_events: Vec<UserspaceEventRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extension: Option<ExtensionRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyRecord>,
}

fn bad(m: String) -> Error {
    Error::InvalidInput(m)
}

/// `<serial hex>/<issuer base64>[,…]`: lower-case hex, standard base64, 1 to 32 signers.
fn check_verity_signers(v: &str) -> Result<(), Error> {
    let list: Vec<&str> = v.split(',').collect();
    let ok = list.len() <= 32
        && list.iter().all(|one| {
            one.split_once('/').is_some_and(|(serial, issuer)| {
                !serial.is_empty()
                    && serial.len() % 2 == 0
                    && serial
                        .bytes()
                        .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
                    && !issuer.is_empty()
                    && issuer
                        .bytes()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'='))
            })
        });
    if ok {
        Ok(())
    } else {
        Err(bad(format!(
            "verity signers {v:?} are not <serial hex>/<issuer base64>[,...] (1 to 32)"
        )))
    }
}

fn check_hex(what: &str, len: usize, h: &str) -> Result<(), Error> {
    if h.len() != 2 * len
        || !h
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(bad(format!(
            "{what}: {h:?} is not {len} bytes of lower-case hex"
        )));
    }
    Ok(())
}

fn check_digests(what: &str, d: &Digests) -> Result<(), Error> {
    for (bank, h) in d {
        let alg = HashAlg::from_str(bank).map_err(|e| bad(format!("{what}: {e}")))?;
        let n = alg
            .digest_size()
            .ok_or_else(|| bad(format!("{what}: bank {bank} is not supported")))?;
        check_hex(&format!("{what} {bank}"), n, h)?;
    }
    Ok(())
}

fn check_pcrs(what: &str, p: &PcrsJson) -> Result<(), Error> {
    for (bank, values) in p {
        let alg = HashAlg::from_str(bank).map_err(|e| bad(format!("{what}: {e}")))?;
        let n = alg
            .digest_size()
            .ok_or_else(|| bad(format!("{what}: bank {bank} is not supported")))?;
        for v in values {
            if v.pcr > 23 {
                return Err(bad(format!("{what}: PCR index {} is above 23", v.pcr)));
            }
            check_hex(&format!("{what} PCR {} {bank}", v.pcr), n, &v.hash)?;
            v.phase
                .parse::<crate::PhasePath>()
                .map_err(|e| bad(format!("{what}: phase {:?}: {e}", v.phase)))?;
        }
    }
    Ok(())
}

fn check_token(what: &str, s: &str) -> Result<(), Error> {
    if s.is_empty() || s.len() > 255 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad(format!(
            "{what} {s:?} must be 1-255 bytes without whitespace or control characters"
        )));
    }
    Ok(())
}

impl ArtifactRecord {
    /// Checks what serde cannot: the format, tokens, every digest's bank and length, a sha256
    /// file digest, the parts each kind needs.
    pub fn check(&self) -> Result<(), Error> {
        if self.format != RECORD_FORMAT {
            return Err(bad(format!(
                "record format {:?}, expected {RECORD_FORMAT:?}",
                self.format
            )));
        }
        check_token("name", &self.name)?;
        check_token("version", &self.version)?;
        if self.builder.is_empty() || self.builder.len() > 255 {
            return Err(bad("builder must be 1-255 bytes".into()));
        }
        if self.files.is_empty() {
            return Err(bad("record names no file".into()));
        }
        for f in self.files.iter().chain(self.recipe.iter()) {
            check_digests(&format!("file {}", f.role), &f.digests)?;
            if !f.digests.contains_key("sha256") {
                return Err(bad(format!("file {} has no sha256 digest", f.role)));
            }
        }
        if let Some(u) = &self.uki {
            check_digests("uki", &u.digests)?;
            check_digests("uki authenticode", &u.authenticode)?;
            if let Some(k) = &u.kernel_authenticode {
                check_digests("kernel authenticode", k)?;
            }
            for s in &u.sections {
                check_digests(&format!("section {}", s.name), &s.digests)?;
            }
        }
        check_pcrs("pcrs", &self.pcrs)?;
        for e in &self.events {
            if e.pcr > 23 {
                return Err(bad(format!("event PCR index {} is above 23", e.pcr)));
            }
            check_digests(&format!("PCR {} event", e.pcr), &e.digests)?;
        }
        for u in &self.userspace_events {
            let what = format!("userspace event {:?} in PCR {}", u.event_type, u.pcr);
            if u.pcr > 23 {
                return Err(bad(format!("{what}: PCR index above 23")));
            }
            check_token("userspace event type", &u.event_type)?;
            let s = &u.string;
            if s.is_empty() || s.len() > 4096 || s.chars().any(char::is_control) {
                return Err(bad(format!(
                    "{what}: string must be 1-4096 bytes without control characters"
                )));
            }
        }
        if let Some(x) = &self.extension {
            check_hex("root hash", 32, &x.root_hash)?;
            if let Some(c) = &x.signature_certificate_sha256 {
                check_hex("signature certificate", 32, c)?;
            }
            if let Some(v) = &x.verity_signers {
                check_verity_signers(v)?;
            }
        }
        if let Some(p) = &self.policy {
            check_hex("policy key fingerprint", 32, &p.key_fingerprint_sha256)?;
            check_pcrs("policy", &p.signs)?;
            check_digests("policy uki_authenticode", &p.uki_authenticode)?;
        }
        let need = |ok: bool, what: &str| {
            if ok {
                Ok(())
            } else {
                Err(bad(format!("a {} record needs {what}", self.kind)))
            }
        };
        match self.kind {
            RecordKind::Uki | RecordKind::Addon => need(self.uki.is_some(), "its PE facts (uki)"),
            RecordKind::Sysext | RecordKind::Confext => {
                need(self.extension.is_some(), "its root hash (extension)")
            }
            RecordKind::Policy => need(self.policy.is_some(), "what it signs (policy)"),
        }
    }

    /// The record of an `imgctl build` as the old manifest described it.
    pub fn from_manifest(m: &Manifest) -> ArtifactRecord {
        let mut files = vec![FileRecord {
            role: "uki".into(),
            path: m.uki.file.clone(),
            size: m.uki.size,
            digests: m.uki.digests.clone(),
        }];
        files.extend(m.initrd.iter().cloned());
        files.extend(m.inputs.iter().cloned());
        ArtifactRecord {
            format: RECORD_FORMAT.into(),
            kind: RecordKind::Uki,
            name: m.name.clone(),
            version: m.version.clone(),
            builder: m.builder.clone(),
            source_date_epoch: Some(m.source_date_epoch),
            recipe: Some(m.recipe.clone()),
            files,
            uki: Some(m.uki.clone()),
            pcrs: m.pcrs.clone(),
            events: m.events.clone(),
            userspace_events: Vec::new(),
            extension: None,
            policy: None,
        }
    }

    /// Reads the JSON form, or an old `manifest.json` (converted); `file` names it in errors.
    pub fn from_json(file: &str, data: &[u8]) -> Result<ArtifactRecord, Error> {
        if data.len() > MAX_RECORD_BYTES {
            return Err(bad(format!(
                "{file}: record is larger than {MAX_RECORD_BYTES} bytes"
            )));
        }
        #[derive(Deserialize)]
        struct FormatOnly {
            format: Option<serde_json::Value>,
        }
        let head: FormatOnly = serde_json::from_slice(data)
            .map_err(|e| bad(format!("{file}: not an artifact record: {e}")))?;
        let r = match head.format {
            Some(serde_json::Value::String(f)) if f == MANIFEST_FORMAT => {
                ArtifactRecord::from_manifest(&Manifest::from_json(file, data)?)
            }
            Some(serde_json::Value::String(f)) if f == RECORD_FORMAT => {
                serde_json::from_slice(data)
                    .map_err(|e| bad(format!("{file}: artifact record: {e}")))?
            }
            Some(f) => {
                return Err(bad(format!(
                    "{file}: format {f}, expected {RECORD_FORMAT:?} or {MANIFEST_FORMAT:?}"
                )))
            }
            None => {
                return Err(bad(format!(
                    "{file}: not an artifact record (no \"format\": {RECORD_FORMAT:?})"
                )))
            }
        };
        r.check().map_err(|e| bad(format!("{file}: {e}")))?;
        Ok(r)
    }

    /// The JSON form, pretty-printed with a final newline.
    pub fn to_json_bytes(&self) -> Vec<u8> {
        // Strings, integers, maps with string keys and vectors always serialise.
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }

    /// The canonical log-entry bytes (checked first: a record that does not pass
    /// [`ArtifactRecord::check`] is never encoded).
    pub fn encode_entry(&self) -> Result<Vec<u8>, Error> {
        self.check()?;
        let mut v = format!("{ENTRY_V2}\n").into_bytes();
        v.extend(serde_json::to_vec(self).map_err(|e| bad(format!("record: {e}")))?);
        v.push(b'\n');
        if v.len() > MAX_RECORD_BYTES {
            return Err(bad(format!(
                "record is larger than {MAX_RECORD_BYTES} bytes"
            )));
        }
        Ok(v)
    }

    /// Whether these bytes claim to be a version-2 entry (its first line).
    pub fn is_entry(bytes: &[u8]) -> bool {
        bytes.starts_with(format!("{ENTRY_V2}\n").as_bytes())
    }

    /// Parses a version-2 log entry; only the canonical encoding is accepted.
    pub fn parse_entry(bytes: &[u8]) -> Result<ArtifactRecord, Error> {
        if bytes.len() > MAX_RECORD_BYTES {
            return Err(bad(format!(
                "entry is larger than {MAX_RECORD_BYTES} bytes"
            )));
        }
        let body = bytes
            .strip_prefix(format!("{ENTRY_V2}\n").as_bytes())
            .ok_or_else(|| bad(format!("first line is not {ENTRY_V2}")))?;
        let json = body
            .strip_suffix(b"\n")
            .ok_or_else(|| bad("does not end with a newline".into()))?;
        let r: ArtifactRecord =
            serde_json::from_slice(json).map_err(|e| bad(format!("entry record: {e}")))?;
        if r.encode_entry()? != bytes {
            return Err(bad(
                "entry is not in canonical form (compact JSON, field order, sorted maps)".into(),
            ));
        }
        Ok(r)
    }

    /// The record of a signed PCR policy of its own (`.pcrsig` JSON `pcrsig`, for the UKI
    /// `uki` named `uki_name`, whose Authenticode hash per bank is `uki_authenticode`): its
    /// and the UKI's sha256, the key's fingerprint (systemd's `pkfp`) and the PCR 11 values it
    /// authorises. The version is the first 16 hex digits of the UKI's sha256, so two policies
    /// for two builds of one UKI name differ.
    pub fn for_policy(
        uki_name: &str,
        uki: &[u8],
        uki_authenticode: Digests,
        pcrsig: &[u8],
        policy: PolicyRecord,
        builder: &str,
    ) -> Result<ArtifactRecord, Error> {
        let sha = |b: &[u8]| hex::encode(ring::digest::digest(&ring::digest::SHA256, b));
        let uki_sha = sha(uki);
        let file = |role: &str, path: &str, b: &[u8]| FileRecord {
            role: role.into(),
            path: path.into(),
            size: b.len() as u64,
            digests: [("sha256".to_string(), sha(b))].into(),
        };
        let r = ArtifactRecord {
            format: RECORD_FORMAT.into(),
            kind: RecordKind::Policy,
            name: uki_name.into(),
            version: uki_sha[..16].to_owned(),
            builder: builder.into(),
            source_date_epoch: None,
            recipe: None,
            files: vec![
                file("pcrsig", &format!("{uki_name}.pcrsig"), pcrsig),
                file("uki", &format!("{uki_name}.efi"), uki),
            ],
            uki: None,
            pcrs: Default::default(),
            events: vec![],
            userspace_events: vec![],
            extension: None,
            policy: Some(PolicyRecord {
                uki_authenticode,
                ..policy
            }),
        };
        r.check()?;
        Ok(r)
    }

    /// The file with this role, if any.
    pub fn file(&self, role: &str) -> Option<&FileRecord> {
        self.files.iter().find(|f| f.role == role)
    }
}

/// A small valid UKI record, for the tests of the crates that read records.
#[cfg(any(test, feature = "testing"))]
pub fn sample() -> ArtifactRecord {
    let mut m = crate::manifest::sample();
    m.uki.digests = [("sha256".to_string(), "11".repeat(32))].into();
    m.uki.authenticode = [
        ("sha1".to_string(), "22".repeat(20)),
        ("sha256".to_string(), "33".repeat(32)),
    ]
    .into();
    m.pcrs = [(
        "sha256".to_string(),
        vec![crate::predict::PcrValue {
            phase: "enter-initrd".into(),
            pcr: 11,
            hash: "44".repeat(32),
        }],
    )]
    .into();
    ArtifactRecord::from_manifest(&m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn extension() -> ArtifactRecord {
        let mut r = sample();
        r.kind = RecordKind::Sysext;
        r.uki = None;
        r.pcrs.clear();
        r.files = vec![FileRecord {
            role: "image".into(),
            path: "tools.raw".into(),
            size: 4096,
            digests: [("sha256".to_string(), "55".repeat(32))].into(),
        }];
        r.extension = Some(ExtensionRecord {
            root_hash: "66".repeat(32),
            partitions: vec![PartitionRecord {
                role: "data".into(),
                type_uuid: "8484680c-9521-48c6-9c11-b0720656f69e".into(),
                uuid: "66666666-6666-6666-6666-666666666666".into(),
            }],
            signature_certificate_sha256: Some("77".repeat(32)),
            verity_signers: Some("020101/MA8xDTALBgNVBAMMBHRlc3Q=".into()),
        });
        r.events = vec![EventRecord {
            pcr: 13,
            digests: [("sha256".to_string(), "88".repeat(32))].into(),
            description: Some("tools.raw".into()),
        }];
        r
    }

    #[test]
    fn json_and_entry_forms_round_trip() {
        for r in [sample(), extension()] {
            r.check().unwrap();
            let j = r.to_json_bytes();
            assert_eq!(ArtifactRecord::from_json("r.json", &j).unwrap(), r);
            let e = r.encode_entry().unwrap();
            assert!(e.starts_with(b"imgctl.dev/log-entry/v2\n{\"format\":\"imgctl-record/2\""));
            assert!(ArtifactRecord::is_entry(&e));
            assert_eq!(ArtifactRecord::parse_entry(&e).unwrap(), r);
        }
    }

    /// An OS image's expected userspace records round-trip in both forms and are checked.
    #[test]
    fn userspace_event_expectations_round_trip_and_are_checked() {
        let mut r = sample();
        let fs = "file-system:/usr:erofs:0992bb15-3efb-47e9-9412-b9717d626a16::::";
        r.userspace_events = vec![
            UserspaceEventRecord {
                pcr: 15,
                event_type: "machine-id".into(),
                string: "machine-id:{machine-id}".into(),
            },
            UserspaceEventRecord {
                pcr: 15,
                event_type: "filesystem".into(),
                string: fs.into(),
            },
        ];
        let e = r.encode_entry().unwrap();
        let text = String::from_utf8(e.clone()).unwrap();
        assert!(
            text.contains(&format!(
                "\"userspace_events\":[{{\"pcr\":15,\"event_type\":\"machine-id\",\"string\":\"machine-id:{{machine-id}}\"}},{{\"pcr\":15,\"event_type\":\"filesystem\",\"string\":\"{fs}\"}}]"
            )),
            "{text}"
        );
        assert_eq!(ArtifactRecord::parse_entry(&e).unwrap(), r);
        assert_eq!(
            ArtifactRecord::from_json("r", &r.to_json_bytes()).unwrap(),
            r
        );
        // Records without the field encode as before.
        assert!(!String::from_utf8(sample().encode_entry().unwrap())
            .unwrap()
            .contains("userspace_events"));
        for (t, s, err) in [
            ("file system", "x", "userspace event type"),
            ("filesystem", "", "1-4096 bytes"),
            ("filesystem", "a\nb", "control"),
        ] {
            let mut bad = r.clone();
            bad.userspace_events[1].event_type = t.into();
            bad.userspace_events[1].string = s.into();
            let e = bad.check().unwrap_err().to_string();
            assert!(e.contains(err), "{t} {s:?}: {e}");
        }
        let mut bad = r.clone();
        bad.userspace_events[0].pcr = 24;
        assert!(bad.check().unwrap_err().to_string().contains("above 23"));
    }

    /// Placeholders match values of their form only, and one value per boot.
    #[test]
    fn userspace_templates_bind_each_placeholder_once() {
        let id = "0123456789abcdef0123456789abcdef";
        let uuid = "3f2a1b4c-5d6e-4f70-8a9b-0c1d2e3f4a5b";
        let mut b = BTreeMap::new();
        assert!(userspace_template_matches(
            "machine-id:{machine-id}",
            &format!("machine-id:{id}"),
            &mut b
        ));
        for bad in [
            "machine-id:0123456789ABCDEF0123456789abcdef",
            "machine-id:0123456789abcdef0123456789abcde",
            "machine-id:0123456789abcdef0123456789abcdef0",
            "machine-id:",
        ] {
            assert!(
                !userspace_template_matches("machine-id:{machine-id}", bad, &mut b.clone()),
                "{bad}"
            );
        }
        assert!(userspace_template_matches(
            "cryptsetup:var:{luks-uuid}",
            &format!("cryptsetup:var:{uuid}"),
            &mut b
        ));
        assert!(userspace_template_matches(
            "cryptsetup-keyslot:var:{luks-uuid}:tpm2:0",
            &format!("cryptsetup-keyslot:var:{uuid}:tpm2:0"),
            &mut b
        ));
        let before = b.clone();
        let other = "3f2a1b4c-5d6e-4f70-8a9b-0c1d2e3f4a5c";
        assert!(!userspace_template_matches(
            "cryptsetup-keyslot:var:{luks-uuid}:tpm2:0",
            &format!("cryptsetup-keyslot:var:{other}:tpm2:0"),
            &mut b
        ));
        assert!(!userspace_template_matches(
            "cryptsetup-keyslot:var:{luks-uuid}:tpm2:0",
            &format!("cryptsetup-keyslot:var:{uuid}:recovery:1"),
            &mut b
        ));
        assert_eq!(b, before);
        assert!(userspace_template_matches(
            "file-system:/usr",
            "file-system:/usr",
            &mut b
        ));
        assert!(!userspace_template_matches(
            "file-system:/usr",
            "file-system:/us",
            &mut b
        ));
    }

    #[test]
    fn old_manifests_still_read() {
        let mut m = crate::manifest::sample();
        let j = m.to_json_bytes();
        let e = ArtifactRecord::from_json("manifest.json", &j).unwrap_err();
        assert!(e.to_string().contains("file uki has no sha256"), "{e}");
        m.uki.digests = [("sha256".to_string(), "11".repeat(32))].into();
        let r = ArtifactRecord::from_json("manifest.json", &m.to_json_bytes()).unwrap();
        assert_eq!(r.kind, RecordKind::Uki);
        assert_eq!(r.uki.as_ref(), Some(&m.uki));
        assert_eq!(r.file("uki").unwrap().path, "demo.efi");
        assert_eq!(r.recipe.as_ref(), Some(&m.recipe));
    }

    #[test]
    fn non_canonical_or_invalid_entries_are_rejected() {
        let r = sample();
        let e = String::from_utf8(r.encode_entry().unwrap()).unwrap();
        // Pretty JSON, a trailing space, upper-case hex, an unknown key, a wrong length.
        let pretty = format!(
            "{ENTRY_V2}\n{}\n",
            String::from_utf8(serde_json::to_vec_pretty(&r).unwrap()).unwrap()
        );
        assert!(ArtifactRecord::parse_entry(pretty.as_bytes()).is_err());
        assert!(ArtifactRecord::parse_entry(format!("{} \n", e.trim_end()).as_bytes()).is_err());
        let upper = e.replace(&"11".repeat(32), &"AA".repeat(32));
        let err = ArtifactRecord::parse_entry(upper.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("lower-case hex"), "{err}");
        let unknown = e.replacen("{\"format\"", "{\"x\":1,\"format\"", 1);
        assert!(ArtifactRecord::parse_entry(unknown.as_bytes()).is_err());
        let short = e.replace(&"11".repeat(32), "11");
        assert!(ArtifactRecord::parse_entry(short.as_bytes()).is_err());
        // A kind without its part.
        let mut p = sample();
        p.kind = RecordKind::Policy;
        let err = p.encode_entry().unwrap_err().to_string();
        assert!(err.contains("policy record needs"), "{err}");
        // No sha256 file digest.
        let mut n = sample();
        n.files[0].digests = [("sha1".to_string(), "00".repeat(20))].into();
        assert!(n.encode_entry().unwrap_err().to_string().contains("sha256"));
        // The v1 first line is not v2.
        assert!(!ArtifactRecord::is_entry(b"imgctl.dev/log-entry/v1\n"));
    }

    proptest! {
        #[test]
        fn parser_accepts_only_what_it_would_write(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let mut b = format!("{ENTRY_V2}\n").into_bytes();
            b.extend(bytes);
            if let Ok(r) = ArtifactRecord::parse_entry(&b) {
                prop_assert_eq!(r.encode_entry().unwrap(), b);
            }
        }

        #[test]
        fn mutated_entries_parse_canonically_or_not_at_all(i in 0usize..2000, byte in any::<u8>()) {
            let mut b = sample().encode_entry().unwrap();
            let i = i % b.len();
            b[i] = byte;
            if let Ok(r) = ArtifactRecord::parse_entry(&b) {
                prop_assert_eq!(r.encode_entry().unwrap(), b);
            }
        }
    }
}
