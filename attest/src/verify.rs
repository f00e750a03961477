//! The verifier: given a machine's evidence (firmware event log, systemd's userspace log, an
//! optional quote already checked against the replay) and the references of what we built
//! (`pcrs.json`, `manifest.json`), decide whether the machine booted what was published, and
//! say why not: the first event that diverged, what was expected, which artifact.
//!
//! What is checked (each a [`Finding`]; any `reject` finding rejects):
//! - the firmware log's structure ([`crate::eventlog::lint`]): payload-bound digests, separators;
//! - every systemd-stub event (PCR 11 `EV_IPL` section pairs, `EV_EVENT_TAG` in PCRs 11–13,
//!   PCR 12/13 `EV_IPL`) matches a reference: a manifest section in canonical order, or a
//!   manifest `events` entry; unknown ones are reported by PCR, index, type, digest and
//!   description;
//! - every `EV_EFI_BOOT_SERVICES_APPLICATION` in PCR 4 matches an Authenticode reference when the
//!   policy asks for PCR 4;
//! - with references from a transparency log, a booted UKI that carries a signed PCR policy
//!   (`.pcrsig`) has that policy published: a record naming the UKI (its own, or a policy
//!   record with its Authenticode hash) that authorises the UKI's PCR 11 predictions;
//! - every userspace record: pcrphase words are known words whose digest is `H(word)`, and PCR
//!   11 after each equals the `pcrs.json`/manifest value for that phase path where one is given;
//!   break-glass records reject unless the policy allows them; altered records reject;
//! - every userspace record in a PCR of the policy that the booted OS image's record expects
//!   (`userspace_events`, PCR 15: machine ID by its form, file systems by their strings) is
//!   one it expects, once, none missing, its digests the hashes of its string; the image that
//!   booted is the one whose UKI sections the stub measured;
//! - the policy's PCRs equal its golden values (`expected`) and the references' PCR 11.
//!
//! The verdict also carries the predicted-vs-measured table ([`PcrRow`]): per policy PCR and
//! bank, what the references predict, what the evidence replays to (and whether a verified
//! quote covers it), and the verdict for that PCR.
//!
//! The policy (YAML or JSON; unknown keys, banks other than sha1/sha256/sha384/sha512, PCRs
//! outside 0–23, malformed or wrong-sized hex, and golden values for a PCR or bank the policy
//! does not check are errors naming the key):
//! ```yaml
//! pcrs: [0, 2, 4, 7, 11]          # required: PCRs that must match a reference, in every bank
//! banks: [sha256]                 # banks to check (default: those the log carries and a
//!                                 # reference gives)
//! pcrs_json: [demo.pcrs.json]     # systemd-measure calculate --json output (imgctl predict-pcrs --json)
//! manifests: [demo.manifest.json] # imgctl build manifests (format imgctl-manifest/1, required)
//! expected: {sha256: {"0": "…"}}  # golden values for PCRs without a finer reference
//! allow_break_glass: false
//! allow_lint_findings: false      # accept logs with known firmware blemishes
//! require_quote: false            # true: reject unless a verified quote is given
//! ```
//! A verdict accepts only when nothing rejects **and** every (bank, PCR) of `pcrs` × banks was
//! compared with a reference: a golden value; for PCR 11 a prediction of a phase path reached
//! by known pcrphase words; for PCR 4 every EFI application matching an artifact's
//! Authenticode hash (other PCR 4 events only separators and EFI actions). With a quote, each
//! of those (bank, PCR) pairs must be in the quote's selection. Findings come in evidence
//! order: firmware log, userspace log (by index), PCR values, quote, policy; `findings[0]` is
//! the first divergence.
//! File paths are resolved by the caller (the CLI), relative to the policy file.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::eventlog::describe::{tagged_event, text};
use crate::eventlog::lint;
use crate::eventlog::replay::{replay, PcrValues, Quirk};
use crate::eventlog::tcg::{Event, EventLog};
use crate::eventlog::types::EventType;
use crate::eventlog::userspace::UserspaceLog;
use crate::quote::{verify_quote, AkPublic, Signature};
use crate::Error;
use imgctl_measure::bank::{Digest, HashAlg, Pcr, PcrIndex};
use imgctl_measure::pcr11::{name_bytes, StubSemantics, PCR_KERNEL_IMAGE, PHASE_WORDS};

pub use imgctl_measure::manifest::MANIFEST_FORMAT;
use imgctl_measure::manifest::{Manifest, PcrsJson};
use imgctl_measure::record::UserspaceEventRecord;

/// A verification policy. Parse it with [`Policy::parse`], which also checks it: unknown keys,
/// unknown banks, PCR indices outside 0–23, malformed or wrong-sized golden values, golden
/// values for PCRs or banks the policy does not check, and an empty `pcrs` are errors naming
/// the key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// PCRs that must match a reference, in every bank checked.
    #[serde(default)]
    pub pcrs: BTreeSet<PcrIndex>,
    /// Banks to check; empty: every bank the log carries and a reference gives.
    #[serde(default)]
    pub banks: Vec<HashAlg>,
    #[serde(default)]
    pub pcrs_json: Vec<String>,
    #[serde(default)]
    pub manifests: Vec<String>,
    /// Golden values: bank → PCR → hex.
    #[serde(default)]
    pub expected: BTreeMap<HashAlg, BTreeMap<PcrIndex, String>>,
    #[serde(default)]
    pub allow_break_glass: bool,
    #[serde(default)]
    pub allow_lint_findings: bool,
    /// Reject unless a quote was given and verified, covering every (bank, PCR) checked.
    #[serde(default)]
    pub require_quote: bool,
}

impl Policy {
    /// Parses and checks a policy in YAML (JSON is YAML).
    pub fn parse(text: &str) -> Result<Self, Error> {
        let p: Policy =
            serde_yaml::from_str(text).map_err(|e| Error::InvalidInput(format!("{e}")))?;
        p.check()?;
        Ok(p)
    }

    /// The checks [`Policy::parse`] makes, for policies built in code.
    pub fn check(&self) -> Result<(), Error> {
        let bad = |m: String| Err(Error::InvalidInput(m));
        if self.pcrs.is_empty() {
            return bad("pcrs: empty or missing: a policy must name the PCRs it checks".into());
        }
        let mut seen = BTreeSet::new();
        for b in &self.banks {
            if !seen.insert(*b) {
                return bad(format!("banks: {b} listed twice"));
            }
        }
        for (bank, pcrs) in &self.expected {
            if !self.banks.is_empty() && !self.banks.contains(bank) {
                return bad(format!(
                    "expected.{bank}: bank {bank} is not in banks, so these values would not be checked"
                ));
            }
            for (pcr, hex) in pcrs {
                if !self.pcrs.contains(pcr) {
                    return bad(format!(
                        "expected.{bank}.{pcr}: PCR {pcr} is not in pcrs, so this value would not be checked"
                    ));
                }
                decode_digest(*bank, hex)
                    .map_err(|e| Error::InvalidInput(format!("expected.{bank}.{pcr}: {e}")))?;
            }
        }
        Ok(())
    }
}

/// Decodes a hex digest of `bank`, checking its length.
fn decode_digest(bank: HashAlg, hex: &str) -> Result<Digest, String> {
    let d = hex::decode(hex).map_err(|e| format!("{bank} digest {hex:?} is not hex: {e}"))?;
    match bank.digest_size() {
        Some(n) if n == d.len() => Ok(Digest(d)),
        Some(n) => Err(format!(
            "{bank} digest has {} bytes, a {bank} digest has {n}",
            d.len()
        )),
        None => Err(format!("bank {bank} is not supported")),
    }
}

/// The volume name systemd's veritysetup generator gives the dm-verity device of `usrhash=`:
/// an activation record (`verity:usr:<root hash>:…`) with it is the booted OS image's `/usr`,
/// checked against that image's published record, never resolved to an extension.
pub const USR_VERITY_VOLUME: &str = "usr";

/// One reference PCR 11 value: after the stub and the words of `phase`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhaseValue {
    pub phase: Vec<String>,
    pub bank: HashAlg,
    pub value: Digest,
    pub artifact: String,
}

/// A measured section of a built UKI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SectionRef {
    pub name: String,
    pub digests: BTreeMap<HashAlg, Digest>,
}

/// Any other event a build predicts (cmdline, addons, …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRef {
    pub pcr: u32,
    pub digests: BTreeMap<HashAlg, Digest>,
    pub description: Option<String>,
}

/// One artifact's references.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Artifact {
    pub name: String,
    pub semantics: Option<StubSemantics>,
    pub sections: Vec<SectionRef>,
    pub authenticode: BTreeMap<HashAlg, Digest>,
    /// Authenticode of the kernel inside the UKI, which the stub loads with LoadImage.
    pub kernel_authenticode: BTreeMap<HashAlg, Digest>,
    pub events: Vec<EventRef>,
    pub pcr11: Vec<PhaseValue>,
    /// What the booted system's userspace records (an OS image's PCR 15 records).
    pub userspace: Vec<UserspaceEventRecord>,
    /// An extension image's dm-verity root hash (lower-case hex): what its activation record
    /// (`verity:<name>:<root hash>:…` in the userspace log) resolves to.
    pub root_hash: Option<String>,
    /// The UKI carries a signed PCR policy (a `.pcrsig` section).
    pub carries_pcrsig: bool,
    /// A signed PCR policy this record publishes: the UKI's own (its record states what its
    /// `.pcrsig` signs) or one of its own (`sign-pcrs --log`, naming its UKI by Authenticode).
    pub policy: Option<PolicyRef>,
    /// A signed extension image's signers as its activation record names them (the published
    /// record's `verity_signers`).
    pub verity_signers: Option<String>,
}

/// A published signed PCR policy.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PolicyRef {
    /// SHA-256 of the signing key as `.pcrsig` names it (`pkfp`), lower-case hex.
    pub key_fingerprint: String,
    /// The Authenticode hash per bank of the UKI that carries it (PCR 4 shows it).
    pub uki_authenticode: BTreeMap<HashAlg, Digest>,
    /// The PCR 11 values it authorises.
    pub signs: Vec<PhaseValue>,
}

impl PolicyRef {
    /// Does the policy authorise the value `values` holds for each (bank, phase path) it signs
    /// (and share one at least)? Phase paths it does not sign (`:`, right after the stub,
    /// which pcrs.json has and systemd-measure does not sign) are not its concern.
    fn authorises(&self, values: &[PhaseValue]) -> bool {
        let paths: BTreeSet<(HashAlg, &[String])> = self
            .signs
            .iter()
            .map(|v| (v.bank, v.phase.as_slice()))
            .collect();
        let mine: Vec<&PhaseValue> = values
            .iter()
            .filter(|v| paths.contains(&(v.bank, v.phase.as_slice())))
            .collect();
        !mine.is_empty()
            && mine.iter().all(|v| {
                self.signs
                    .iter()
                    .any(|s| s.bank == v.bank && s.phase == v.phase && s.value == v.value)
            })
    }
}

/// The [`PolicyRef`] of a record's policy; `uki_authenticode` when the record is the UKI's own.
fn policy_from(
    file: &str,
    name: &str,
    p: &imgctl_measure::record::PolicyRecord,
    uki_authenticode: &BTreeMap<HashAlg, Digest>,
) -> Result<PolicyRef, Error> {
    let own = digests(file, "policy.uki_authenticode", &p.uki_authenticode)?;
    Ok(PolicyRef {
        key_fingerprint: p.key_fingerprint_sha256.clone(),
        uki_authenticode: if own.is_empty() {
            uki_authenticode.clone()
        } else {
            own
        },
        signs: pcrs_from(name, p.signs.clone())?,
    })
}

/// `{bank: hex}` digests of `what` in the manifest `file`; errors name all three.
fn digests(
    file: &str,
    what: &str,
    map: &BTreeMap<String, String>,
) -> Result<BTreeMap<HashAlg, Digest>, Error> {
    map.iter()
        .map(|(b, h)| {
            let bad = |m: String| Error::InvalidInput(format!("{file}: {what}: {m}"));
            let bank: HashAlg = b.parse().map_err(|e| bad(format!("{e}")))?;
            Ok((bank, decode_digest(bank, h).map_err(bad)?))
        })
        .collect()
}

/// Reads `systemd-measure calculate --json` output (`imgctl predict-pcrs --json`).
pub fn parse_pcrs_json(name: &str, data: &[u8]) -> Result<Vec<PhaseValue>, Error> {
    let v: PcrsJson = serde_json::from_slice(data)
        .map_err(|e| Error::InvalidInput(format!("{name}: not a pcrs.json: {e}")))?;
    pcrs_from(name, v)
}

fn pcrs_from(name: &str, v: PcrsJson) -> Result<Vec<PhaseValue>, Error> {
    let mut out = Vec::new();
    for (bank, list) in v {
        let bank: HashAlg = bank
            .parse()
            .map_err(|e| Error::InvalidInput(format!("{name}: {e}")))?;
        for e in list.into_iter().filter(|e| e.pcr == PCR_KERNEL_IMAGE) {
            out.push(PhaseValue {
                phase: e
                    .phase
                    .split(':')
                    .filter(|w| !w.is_empty())
                    .map(str::to_owned)
                    .collect(),
                bank,
                value: decode_digest(bank, &e.hash).map_err(|m| {
                    Error::InvalidInput(format!("{name}: PCR {} phase {:?}: {m}", e.pcr, e.phase))
                })?,
                artifact: name.to_owned(),
            });
        }
    }
    Ok(out)
}

/// Reads an `imgctl build` manifest.json (the artifact record, `imgctl-record/2`, or the old
/// `imgctl-manifest/1`): the UKI's measured sections and Authenticode hash, its PCR 11
/// predictions, and optional extra predicted `events`.
pub fn parse_manifest(file: &str, data: &[u8]) -> Result<Artifact, Error> {
    use imgctl_measure::record::ArtifactRecord;
    // An old manifest is a reference even without the UKI file's digest (which nothing
    // measures); a record must pass the record checks.
    let r = match Manifest::from_json(file, data) {
        Ok(m) => ArtifactRecord::from_manifest(&m),
        Err(_) => ArtifactRecord::from_json(file, data)?,
    };
    artifact_from_record(file, &r)?.ok_or_else(|| {
        Error::InvalidInput(format!(
            "{file}: a {} record gives no UKI references",
            r.kind
        ))
    })
}

/// The references an artifact record gives (`file` names where it came from in errors): a
/// UKI's or addon's measured sections, Authenticode hashes, stub semantics, PCR 11
/// predictions and events; `None` for a record without PE facts (extensions, policies).
pub fn artifact_from_record(
    file: &str,
    r: &imgctl_measure::record::ArtifactRecord,
) -> Result<Option<Artifact>, Error> {
    let Some(u) = &r.uki else {
        // An extension's predicted stub events (PCR 12/13) are references too, and so is a
        // signed policy that names its UKI.
        let policy = match &r.policy {
            Some(p) if !p.uki_authenticode.is_empty() => {
                Some(policy_from(file, &r.name, p, &BTreeMap::new())?)
            }
            _ => None,
        };
        if r.events.is_empty()
            && r.userspace_events.is_empty()
            && r.extension.is_none()
            && policy.is_none()
        {
            return Ok(None);
        }
        let mut a = Artifact {
            name: format!("{} {} {}", r.kind, r.name, r.version),
            policy,
            ..Artifact::default()
        };
        a.events = events_from(file, r)?;
        a.userspace = r.userspace_events.clone();
        a.root_hash = r
            .extension
            .as_ref()
            .map(|x| x.root_hash.to_ascii_lowercase());
        a.verity_signers = r.extension.as_ref().and_then(|x| x.verity_signers.clone());
        return Ok(Some(a));
    };
    let mut a = Artifact {
        name: format!("{} ({})", u.file, r.name),
        ..Artifact::default()
    };
    a.authenticode = digests(file, "uki.authenticode", &u.authenticode)?;
    a.kernel_authenticode = digests(
        file,
        "uki.kernel_authenticode",
        &u.kernel_authenticode.clone().unwrap_or_default(),
    )?;
    a.semantics = Some(u.stub.semantics);
    for s in u.sections.iter().filter(|s| s.measured) {
        a.sections.push(SectionRef {
            name: s.name.clone(),
            digests: digests(file, &format!("section {}", s.name), &s.digests)?,
        });
    }
    a.events = events_from(file, r)?;
    a.userspace = r.userspace_events.clone();
    a.pcr11 = pcrs_from(&a.name, r.pcrs.clone())?;
    a.carries_pcrsig = u.sections.iter().any(|s| s.name == ".pcrsig");
    a.policy = match &r.policy {
        Some(p) => Some(policy_from(file, &a.name, p, &a.authenticode)?),
        None => None,
    };
    Ok(Some(a))
}

fn events_from(
    file: &str,
    r: &imgctl_measure::record::ArtifactRecord,
) -> Result<Vec<EventRef>, Error> {
    r.events
        .iter()
        .map(|e| {
            Ok(EventRef {
                pcr: e.pcr,
                digests: digests(file, &format!("event for PCR {}", e.pcr), &e.digests)?,
                description: e.description.clone(),
            })
        })
        .collect()
}

/// Everything the verifier compares against.
#[derive(Debug, Clone, Default)]
pub struct References {
    pub artifacts: Vec<Artifact>,
    /// PCR 11 values from pcrs.json files.
    pub pcr11: Vec<PhaseValue>,
    /// Golden PCR values.
    pub expected: PcrValues,
    /// Where the artifacts were published (a transparency log or its proofs), when they come
    /// from one: an event that matches none of them is reported as "not published" there.
    pub published_in: Option<String>,
}

impl References {
    /// Builds references from a policy's `expected` values plus loaded files.
    pub fn from_policy(policy: &Policy) -> Result<Self, Error> {
        let mut expected = PcrValues::new();
        for (bank, pcrs) in &policy.expected {
            for (pcr, hex) in pcrs {
                let d = decode_digest(*bank, hex)
                    .map_err(|e| Error::InvalidInput(format!("expected.{bank}.{pcr}: {e}")))?;
                expected.entry(*bank).or_default().insert(pcr.get(), d);
            }
        }
        Ok(References {
            expected,
            ..References::default()
        })
    }

    /// The banks some reference gives a value for.
    fn banks(&self) -> BTreeSet<HashAlg> {
        let mut b: BTreeSet<HashAlg> = self.expected.keys().copied().collect();
        b.extend(self.all_pcr11().map(|v| v.bank));
        for a in &self.artifacts {
            b.extend(a.authenticode.keys().copied());
            b.extend(a.sections.iter().flat_map(|s| s.digests.keys().copied()));
        }
        b
    }

    fn all_pcr11(&self) -> impl Iterator<Item = &PhaseValue> {
        self.pcr11
            .iter()
            .chain(self.artifacts.iter().flat_map(|a| a.pcr11.iter()))
    }
}

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Reject,
    Note,
}

/// One observation of the verifier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub severity: Severity,
    /// A stable identifier: `unknown-event`, `section-order`, `pcr-mismatch`, …
    pub kind: &'static str,
    /// `firmware-log`, `userspace-log` or `pcrs`.
    pub source: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pcr: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub artifact: Option<String>,
}

impl Finding {
    fn new(severity: Severity, kind: &'static str, source: &'static str, message: String) -> Self {
        Finding {
            severity,
            kind,
            source,
            pcr: None,
            index: None,
            event_type: None,
            digest: None,
            description: None,
            message,
            expected: None,
            artifact: None,
        }
    }

    fn at_event(mut self, e: &Event, bank: Option<HashAlg>) -> Self {
        self.pcr = Some(e.pcr);
        self.index = Some(e.index);
        self.event_type = Some(e.event_type.to_string());
        let d = bank
            .and_then(|b| e.digest(b))
            .or_else(|| e.digests.first().map(|(_, d)| d));
        self.digest = d.map(Digest::to_hex);
        self.description = Some(crate::eventlog::describe(e));
        self
    }
}

/// A rejecting finding about the quote.
pub fn quote_finding(message: String) -> Finding {
    Finding::new(Severity::Reject, "quote", "quote", message)
}

/// The verifier's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub accepted: bool,
    /// Every finding, rejects first in evidence order; `findings[0]` is the first divergence.
    pub findings: Vec<Finding>,
    pub quirks: Vec<Quirk>,
    /// What was compared, for the record (e.g. "PCR 11 sha256 = pcrs.json phase enter-initrd").
    pub checked: Vec<String>,
    /// Predicted against measured, for each PCR of the policy in each bank checked.
    pub pcrs: Vec<PcrRow>,
}

/// One row of the predicted-vs-measured table: a PCR of the policy in one bank.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PcrRow {
    pub pcr: u32,
    pub bank: HashAlg,
    /// The value the references predict (hex), if they predict one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub predicted: Option<String>,
    /// Where the prediction comes from (or why there is none).
    pub predicted_from: String,
    /// The value the evidence shows: the replay of the firmware and userspace logs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub measured: Option<String>,
    /// `replay`, or `replay = quote` when a verified quote covers this PCR (its digest
    /// was checked against the replay).
    pub measured_from: &'static str,
    /// How many events (firmware and userspace) extended it; 0: it holds its reset value.
    pub events: usize,
    /// `match` (checked, nothing rejected, predicted = measured), `mismatch` (a rejection
    /// names this PCR, or predicted ≠ measured) or `unchecked` (no reference checks it).
    pub verdict: &'static str,
}

/// The PCR values the evidence implies: the firmware replay with the userspace log on top.
pub fn combined_pcrs(log: &EventLog, userspace: Option<&UserspaceLog>) -> (PcrValues, Vec<Quirk>) {
    let r = replay(log);
    let values = match userspace {
        Some(u) => u.replay_onto(&r.values),
        None => r.values.clone(),
    };
    (values, r.quirks)
}

/// A quote to check: the TPMS_ATTEST bytes, its signature, the attestation key and the nonce
/// the verifier sent. The quote's PCR digest is checked against the evidence's replay.
#[derive(Debug, Clone, Copy)]
pub struct QuoteEvidence<'a> {
    pub attest: &'a [u8],
    pub signature: &'a Signature,
    pub ak: &'a AkPublic,
    pub nonce: &'a [u8],
}

/// Verifies the evidence against the policy and references. The verdict accepts only when no
/// finding rejects and every (bank, PCR) of the policy was compared with a reference (and,
/// with a quote, is covered by it): a policy under which nothing was checked never accepts.
pub fn verify(
    policy: &Policy,
    refs: &References,
    log: &EventLog,
    userspace: Option<&UserspaceLog>,
    quote: Option<QuoteEvidence<'_>>,
) -> Verdict {
    let mut f = Vec::new();
    let mut checked = Vec::new();
    // (bank, PCR) pairs whose final value was compared with a reference.
    let mut covered: BTreeSet<(HashAlg, u32)> = BTreeSet::new();
    let banks: Vec<HashAlg> = if policy.banks.is_empty() {
        let given = refs.banks();
        log.banks()
            .into_iter()
            .filter(|b| b.is_supported() && given.contains(b))
            .collect()
    } else {
        policy.banks.clone()
    };
    let sev_lint = if policy.allow_lint_findings {
        Severity::Note
    } else {
        Severity::Reject
    };
    for l in lint::lint(log) {
        let e = log.events.get(l.event);
        let mut x = Finding::new(sev_lint, l.kind, "firmware-log", l.message);
        if let Some(e) = e {
            x = x.at_event(e, banks.first().copied());
        }
        f.push(x);
    }
    let booted = check_stub_events(refs, log, &banks, &mut f, &mut checked);
    if policy.pcrs.iter().any(|p| p.get() == 4)
        && refs.artifacts.iter().any(|a| !a.authenticode.is_empty())
    {
        check_pcr4(refs, log, &banks, &mut f, &mut checked, &mut covered);
    }
    check_signed_policy(refs, log, booted, &banks, &mut f, &mut checked);
    for pcr in [12, 13] {
        if policy.pcrs.iter().any(|p| p.get() == pcr) {
            cover_stub_pcr(refs, log, &banks, pcr, &mut checked, &mut covered);
        }
    }
    let (r, quirks) = {
        let r = replay(log);
        (r.values.clone(), r.quirks)
    };
    // Without a userspace log PCR 11 is checked right after the stub (phase path ":").
    let empty = UserspaceLog::default();
    let pcr11_final = check_userspace(
        policy,
        refs,
        &r,
        userspace.unwrap_or(&empty),
        &banks,
        &mut f,
        &mut checked,
    );
    covered.extend(pcr11_final.into_iter().map(|b| (b, PCR_KERNEL_IMAGE)));
    let mut predicted = Predicted::new();
    check_userspace_records(
        policy,
        refs,
        booted,
        log,
        userspace.unwrap_or(&empty),
        &banks,
        &mut f,
        &mut checked,
        &mut covered,
        &mut predicted,
    );
    let (values, _) = combined_pcrs(log, userspace);
    let value_of = |bank: HashAlg, pcr: u32| {
        values
            .get(&bank)
            .and_then(|m| m.get(&pcr))
            .cloned()
            .or_else(|| crate::eventlog::replay::reset_value(bank, pcr))
    };
    for pcr in policy.pcrs.iter().map(|p| p.get()) {
        for bank in &banks {
            let got = value_of(*bank, pcr);
            if let Some(want) = refs.expected.get(bank).and_then(|m| m.get(&pcr)) {
                checked.push(format!("PCR {pcr} {bank} = policy expected value"));
                covered.insert((*bank, pcr));
                if got.as_ref() != Some(want) {
                    let mut x = Finding::new(
                        Severity::Reject,
                        "pcr-mismatch",
                        "pcrs",
                        format!(
                            "PCR {pcr} ({bank}) replays to {} but the policy expects {}",
                            got.as_ref().map_or("nothing".into(), Digest::to_hex),
                            want.to_hex()
                        ),
                    );
                    x.pcr = Some(pcr);
                    x.expected = Some(want.to_hex());
                    f.push(x);
                }
            }
        }
    }
    if banks.is_empty() {
        f.push(Finding::new(
            Severity::Reject,
            "nothing-checked",
            "policy",
            "no bank to check: no reference gives a value in a bank the log carries".into(),
        ));
    }
    for pcr in policy.pcrs.iter().map(|p| p.get()) {
        for bank in &banks {
            if !covered.contains(&(*bank, pcr)) {
                let mut x = Finding::new(
                    Severity::Reject,
                    "unchecked-pcr",
                    "policy",
                    format!(
                        "PCR {pcr} ({bank}) is in the policy but no reference checks it (no expected value{})",
                        if pcr == PCR_KERNEL_IMAGE {
                            ", no PCR 11 prediction for the final phase path"
                        } else if pcr == 4 {
                            ", not every PCR 4 event matched an artifact"
                        } else {
                            ""
                        }
                    ),
                );
                x.pcr = Some(pcr);
                f.push(x);
            }
        }
    }
    let mut quoted: BTreeSet<(HashAlg, u32)> = BTreeSet::new();
    match quote {
        Some(q) => match verify_quote(q.attest, q.signature, q.ak, q.nonce, value_of) {
            Ok(vq) => {
                quoted.extend(vq.pcrs.iter().map(|(b, i, _)| (*b, *i)));
                checked.push(format!(
                    "quote: signature, magic, type, nonce, PCR digest over {} PCRs",
                    vq.pcrs.len()
                ));
                for pcr in policy.pcrs.iter().map(|p| p.get()) {
                    for bank in &banks {
                        if !vq.pcrs.iter().any(|(b, i, _)| b == bank && *i == pcr) {
                            let mut x = quote_finding(format!(
                                    "the quote does not cover PCR {pcr} in bank {bank}, which the policy checks"
                                ));
                            x.pcr = Some(pcr);
                            f.push(x);
                        }
                    }
                }
            }
            Err(e) => f.push(quote_finding(format!("quote: {e}"))),
        },
        None if policy.require_quote => f.push(quote_finding(
            "the policy requires a quote (require_quote) and none was given".into(),
        )),
        None => {}
    }
    // Rejects first, each group in evidence order: the firmware log, the userspace log (each by
    // event index), the PCR values, the quote, then what the policy left unchecked.
    let rank = |x: &Finding| {
        (
            x.severity != Severity::Reject,
            match x.source {
                "firmware-log" => 0,
                "userspace-log" => 1,
                "pcrs" => 2,
                "quote" => 3,
                _ => 4,
            },
            x.index.unwrap_or(usize::MAX),
        )
    };
    if let Some(log) = &refs.published_in {
        for x in f.iter_mut().filter(|x| is_unpublished(x)) {
            x.message = format!("not published in {log}: {}", x.message);
        }
    }
    f.sort_by_key(rank);
    let pcrs = pcr_table(
        policy,
        refs,
        log,
        userspace.unwrap_or(&empty),
        &banks,
        &predicted,
        &f,
        &covered,
        &quoted,
        &value_of,
    );
    Verdict {
        accepted: !f.iter().any(|x| x.severity == Severity::Reject) && !covered.is_empty(),
        findings: f,
        quirks,
        checked,
        pcrs,
    }
}

/// The predicted-vs-measured rows: for each PCR of the policy and each bank, the prediction
/// (the policy's golden value; PCR 11: the published prediction of the phase path the log
/// reached; PCR 4: the logged separators and actions with each application's published
/// Authenticode hash; PCR 12/13: the published stub events; userspace PCRs: the records the
/// booted image expects), the measured value, and the verdict.
#[allow(clippy::too_many_arguments)] // reason: the verifier's shared state, as check_pcr4
fn pcr_table(
    policy: &Policy,
    refs: &References,
    log: &EventLog,
    u: &UserspaceLog,
    banks: &[HashAlg],
    predicted: &Predicted,
    f: &[Finding],
    covered: &BTreeSet<(HashAlg, u32)>,
    quoted: &BTreeSet<(HashAlg, u32)>,
    value_of: &dyn Fn(HashAlg, u32) -> Option<Digest>,
) -> Vec<PcrRow> {
    let path: Vec<String> = u
        .records
        .iter()
        .filter(|r| r.pcr == Some(PCR_KERNEL_IMAGE))
        .map(|r| r.string.clone().unwrap_or_default())
        .collect();
    let mut rows = Vec::new();
    for pcr in policy.pcrs.iter().map(|p| p.get()) {
        let events = log.events.iter().filter(|e| e.pcr == pcr).count()
            + u.records.iter().filter(|r| r.pcr == Some(pcr)).count();
        let rejected = f.iter().any(|x| {
            x.severity == Severity::Reject && x.pcr == Some(pcr) && x.kind != "unchecked-pcr"
        });
        for b in banks {
            let measured = value_of(*b, pcr);
            let (pred, from) = if let Some(v) = refs.expected.get(b).and_then(|m| m.get(&pcr)) {
                (Some(v.clone()), "policy expected value".to_owned())
            } else if let Some((v, from)) = predicted.get(&(*b, pcr)) {
                (v.clone(), from.clone())
            } else {
                match pcr {
                    PCR_KERNEL_IMAGE => predict_pcr11(refs, *b, &path, measured.as_ref()),
                    4 => predict_pcr4(refs, log, *b),
                    12 | 13 => predict_stub_pcr(refs, log, *b, pcr),
                    _ => (None, "no reference predicts it".to_owned()),
                }
            };
            let verdict = if rejected || (pred.is_some() && pred != measured) {
                "mismatch"
            } else if covered.contains(&(*b, pcr)) && pred.is_some() {
                "match"
            } else {
                "unchecked"
            };
            rows.push(PcrRow {
                pcr,
                bank: *b,
                predicted: pred.as_ref().map(Digest::to_hex),
                predicted_from: from,
                measured: measured.as_ref().map(Digest::to_hex),
                measured_from: if quoted.contains(&(*b, pcr)) {
                    "replay = quote"
                } else {
                    "replay"
                },
                events,
                verdict,
            });
        }
    }
    rows
}

/// PCR 11: the published prediction for the phase path the userspace log reached (the one
/// equal to the measured value when several artifacts predict that path).
fn predict_pcr11(
    refs: &References,
    bank: HashAlg,
    path: &[String],
    measured: Option<&Digest>,
) -> (Option<Digest>, String) {
    let all: Vec<&PhaseValue> = refs
        .all_pcr11()
        .filter(|v| v.bank == bank && v.phase == path)
        .collect();
    let label = if path.is_empty() {
        ":".to_owned()
    } else {
        path.join(":")
    };
    match all
        .iter()
        .find(|v| Some(&v.value) == measured)
        .or(all.first())
    {
        Some(v) => (
            Some(v.value.clone()),
            format!("{}, phase path {label}", v.artifact),
        ),
        None => (
            None,
            format!("no published prediction for phase path {label}"),
        ),
    }
}

/// Extends the PCR's reset value with each event's predicted digest; `None` as soon as an
/// event has none.
fn replay_predicted<'a>(
    bank: HashAlg,
    pcr: u32,
    events: impl Iterator<Item = Option<&'a Digest>>,
) -> Option<Digest> {
    let mut p = Pcr::with_value(bank, crate::eventlog::replay::reset_value(bank, pcr)?).ok()?;
    for d in events {
        p.extend(d?);
    }
    Some(p.value().clone())
}

/// PCR 4: each EFI application's published Authenticode hash (UKI or its kernel), the
/// separators and EFI actions as logged (the lint binds their digests to their data).
fn predict_pcr4(refs: &References, log: &EventLog, bank: HashAlg) -> (Option<Digest>, String) {
    let events = log.events.iter().filter(|e| e.pcr == 4).map(|e| {
        if e.event_type == EventType::EV_EFI_BOOT_SERVICES_APPLICATION {
            let d = e.digest(bank)?;
            refs.artifacts.iter().find_map(|a| {
                [&a.authenticode, &a.kernel_authenticode]
                    .into_iter()
                    .find_map(|m| m.get(&bank).filter(|p| *p == d))
            })
        } else if matches!(
            e.event_type,
            EventType::EV_SEPARATOR | EventType::EV_EFI_ACTION
        ) {
            e.digest(bank)
        } else {
            None
        }
    });
    match replay_predicted(bank, 4, events) {
        Some(v) => (Some(v), "published Authenticode hashes".to_owned()),
        None => (
            None,
            "an event matches no published Authenticode hash".to_owned(),
        ),
    }
}

/// PCR 12/13: every event a published stub event (a sidecar the build predicted).
fn predict_stub_pcr(
    refs: &References,
    log: &EventLog,
    bank: HashAlg,
    pcr: u32,
) -> (Option<Digest>, String) {
    let n = log.events.iter().filter(|e| e.pcr == pcr).count();
    let events = log.events.iter().filter(|e| e.pcr == pcr).map(|e| {
        let d = e.digest(bank)?;
        (e.event_type == EventType::EV_IPL)
            .then(|| {
                refs.artifacts.iter().find_map(|a| {
                    a.events
                        .iter()
                        .find_map(|r| r.digests.get(&bank).filter(|p| r.pcr == pcr && *p == d))
                })
            })
            .flatten()
    });
    match replay_predicted(bank, pcr, events) {
        Some(v) if n == 0 => (Some(v), "no events: the reset value".to_owned()),
        Some(v) => (Some(v), "published stub events".to_owned()),
        None => (None, "an event matches no published artifact".to_owned()),
    }
}

/// Predicted PCR values by (bank, PCR), with where each came from; `None`: no prediction.
type Predicted = BTreeMap<(HashAlg, u32), (Option<Digest>, String)>;

/// The `<signers>` of an activation record `v` against the extension `a` its root hash
/// resolved to. Signers are logged only when the kernel verified the root hash signature
/// (systemd main's veritysetup and dissection); they must then be exactly the published
/// signature's (its certificate's issuer and serial, as systemd names them), and an image
/// published unsigned cannot have any. No signers on a signed image: the kernel did not verify
/// the signature (no trusted key; systemd falls back to an unsigned activation), which is said
/// (`Ok` holds that note), not rejected: the root hash alone binds the content.
fn check_verity_signers(
    v: &crate::userspace_record::VerityRecord,
    a: &Artifact,
) -> Result<String, String> {
    let logged: Vec<String> = v.signers.iter().map(|(s, i)| format!("{s}/{i}")).collect();
    let logged = logged.join(",");
    match (logged.is_empty(), &a.verity_signers) {
        (true, None) => Ok(String::new()),
        (true, Some(_)) => Ok(
            "; no kernel-verified signature (the published image is signed; the kernel did not verify it)"
                .into(),
        ),
        (false, Some(p)) if *p == logged => {
            Ok(format!("; signature verified by the kernel, signers {logged} as published"))
        }
        (false, Some(p)) => Err(format!(
            "signed by {logged}, not by the published signature's signers {p}"
        )),
        (false, None) => Err(format!(
            "signed by {logged}, but the published image is unsigned"
        )),
    }
}

/// The userspace records of the PCRs a published OS image predicts (PCR 15: machine ID, file
/// systems), when the policy checks them: every record in such a PCR must be one the booted
/// image's record expects (its exact string, or for the machine ID its form), each expected
/// record must be there once, and its digest in every bank must be the hash of its string.
/// Then the PCR's final value, the replay of those records, is checked in that bank.
/// Which image booted is the one whose UKI the stub measured ([`check_stub_events`]); when
/// none did (the boot is rejected anyway), or the booted UKI's record expects no userspace
/// records (a UKI built on its own, booting an OS image's disk), every referenced image's
/// expectations are tried.
#[allow(clippy::too_many_arguments)] // reason: the verifier's shared state, as check_pcr4
fn check_userspace_records(
    policy: &Policy,
    refs: &References,
    booted: Option<usize>,
    log: &EventLog,
    u: &UserspaceLog,
    banks: &[HashAlg],
    f: &mut Vec<Finding>,
    checked: &mut Vec<String>,
    covered: &mut BTreeSet<(HashAlg, u32)>,
    predicted: &mut Predicted,
) {
    let candidates: Vec<&Artifact> = match booted.map(|i| &refs.artifacts[i]) {
        Some(a) if !a.userspace.is_empty() => vec![a],
        Some(_) | None => refs
            .artifacts
            .iter()
            .filter(|a| !a.userspace.is_empty())
            .collect(),
    };
    let pcrs: BTreeSet<u32> = candidates
        .iter()
        .flat_map(|a| a.userspace.iter().map(|e| e.pcr))
        .filter(|p| policy.pcrs.iter().any(|q| q.get() == *p))
        .collect();
    for pcr in pcrs {
        let before = f.iter().filter(|x| x.severity == Severity::Reject).count();
        let expectations: Vec<(&Artifact, &UserspaceEventRecord)> = candidates
            .iter()
            .flat_map(|a| a.userspace.iter().map(move |e| (*a, e)))
            .filter(|(_, e)| e.pcr == pcr)
            .collect();
        let names: Vec<&str> = candidates.iter().map(|a| a.name.as_str()).collect();
        let names = names.join(" or ");
        let mut used = vec![false; expectations.len()];
        let mut accounted = Vec::new();
        let mut unmatched = 0usize;
        // What this boot's records bound the placeholders to (one machine ID, one LUKS UUID).
        let mut bindings = BTreeMap::new();
        for r in u.records.iter().filter(|r| r.pcr == Some(pcr)) {
            if policy.allow_break_glass && crate::breakglass::from_record(r).is_some() {
                accounted.push(r); // judged (and allowed) by the break-glass rule
                continue;
            }
            let et = r.event_type.as_deref().unwrap_or("");
            let st = r.string.as_deref().unwrap_or("");
            // A dm-verity activation: the booted image's own (its /usr, the exact record its
            // published record expects), else an extension's, whose root hash must be a
            // referenced (published) extension's.
            if let Some(v) = crate::userspace_record::VerityRecord::from_record(r) {
                let expected = expectations
                    .iter()
                    .enumerate()
                    .position(|(i, (_, e))| !used[i] && e.event_type == et && e.string == st);
                if let (Some(i), Ok(v)) = (expected, &v) {
                    used[i] = true;
                    checked.push(format!(
                        "record {}: verity volume {} activated with root hash {}, as {} expects",
                        r.index, v.name, v.root_hash, expectations[i].0.name
                    ));
                    accounted.push(r);
                    continue;
                }
                let why = match v {
                    // The image's own volume (systemd's veritysetup names the device of
                    // usrhash= `usr`) with a root hash the booted image does not expect.
                    Ok(v) if v.name == USR_VERITY_VOLUME => format!(
                        "record {} in PCR {pcr}: /usr (verity volume {}) activated with root hash {}, which no {} OS image ({names}) has",
                        r.index,
                        v.name,
                        v.root_hash,
                        if refs.published_in.is_some() { "published" } else { "referenced" }
                    ),
                    Ok(v) => match refs
                        .artifacts
                        .iter()
                        .find(|a| a.root_hash.as_deref() == Some(v.root_hash.as_str()))
                    {
                        Some(a) => match check_verity_signers(&v, a) {
                            Ok(how) => {
                                checked.push(format!(
                                    "record {}: extension image {} activated with root hash {}, that of {}{how}",
                                    r.index, v.name, v.root_hash, a.name
                                ));
                                accounted.push(r);
                                continue;
                            }
                            Err(why) => format!(
                                "record {} in PCR {pcr}: extension image {} activated with root hash {} (that of {}) {why}",
                                r.index, v.name, v.root_hash, a.name
                            ),
                        },
                        None => format!(
                            "record {} in PCR {pcr}: extension image {} activated with root hash {}, which no {} extension has",
                            r.index,
                            v.name,
                            v.root_hash,
                            if refs.published_in.is_some() { "published" } else { "referenced" }
                        ),
                    },
                    Err(e) => format!("record {} in PCR {pcr}: malformed activation record {e}", r.index),
                };
                unmatched += 1;
                let mut x = Finding::new(Severity::Reject, "unknown-event", "userspace-log", why);
                x.pcr = Some(pcr);
                x.index = Some(r.index);
                x.event_type = r.event_type.clone();
                x.description = r.string.clone();
                x.digest = banks.first().and_then(|b| r.digest(*b)).map(Digest::to_hex);
                f.push(x);
                continue;
            }
            let hit = expectations.iter().enumerate().position(|(i, (_, e))| {
                !used[i]
                    && r.string.is_some()
                    && e.event_type == et
                    && imgctl_measure::record::userspace_template_matches(
                        &e.string,
                        st,
                        &mut bindings,
                    )
            });
            match hit {
                Some(i) => {
                    used[i] = true;
                    accounted.push(r);
                }
                None => {
                    unmatched += 1;
                    let mut x = Finding::new(
                        Severity::Reject,
                        "unknown-event",
                        "userspace-log",
                        format!(
                            "record {} in PCR {pcr} ({et}) {st:?} is no record {names} expects",
                            r.index
                        ),
                    );
                    x.pcr = Some(pcr);
                    x.index = Some(r.index);
                    x.event_type = r.event_type.clone();
                    x.description = r.string.clone();
                    x.digest = banks.first().and_then(|b| r.digest(*b)).map(Digest::to_hex);
                    x.artifact = Some(names.clone());
                    f.push(x);
                }
            }
        }
        for ((a, e), _) in expectations.iter().zip(&used).filter(|(_, u)| !**u) {
            let what = e.string.clone();
            let mut x = Finding::new(
                Severity::Reject,
                "missing-event",
                "userspace-log",
                format!(
                    "PCR {pcr}: {} expects {what:?}, which the userspace log does not hold",
                    a.name
                ),
            );
            x.pcr = Some(pcr);
            x.artifact = Some(a.name.clone());
            x.expected = Some(what);
            f.push(x);
        }
        let firmware_events = log.events.iter().filter(|e| e.pcr == pcr).count();
        let clean = f.iter().filter(|x| x.severity == Severity::Reject).count() == before;
        for b in banks {
            // The prediction: the expected records' strings hashed in this bank, in log order.
            let mut p = crate::eventlog::replay::reset_value(*b, pcr)
                .and_then(|v| Pcr::with_value(*b, v).ok());
            let mut bound = firmware_events == 0 && unmatched == 0;
            for r in &accounted {
                // A secret-keyed record (the volume key's HMAC) counts with its logged digest:
                // its string was matched, its digest only the machine can compute.
                let h = if r.digest_is_of_string() {
                    r.string.as_deref().and_then(|s| b.hash(s.as_bytes()).ok())
                } else {
                    r.digest(*b).cloned()
                };
                bound &= h.is_some() && h.as_ref() == r.digest(*b);
                match (&mut p, h) {
                    (Some(p), Some(h)) => p.extend(&h),
                    _ => p = None,
                }
            }
            let value = if bound {
                p.map(|p| p.value().clone())
            } else {
                None
            };
            predicted.insert(
                (*b, pcr),
                (value, format!("the userspace records {names} expects")),
            );
            if clean && bound {
                checked.push(format!(
                    "PCR {pcr} {b}: {} userspace record(s), each one {names} expects",
                    accounted.len()
                ));
                covered.insert((*b, pcr));
            }
        }
    }
}

/// A rejection of a firmware-log event that no artifact explains: with references from a
/// transparency log, that event's artifact was not published.
fn is_unpublished(x: &Finding) -> bool {
    let firmware = x.source == "firmware-log"
        && matches!(
            x.kind,
            "unknown-event" | "section-digest" | "section-order" | "unpublished-policy"
        );
    // A userspace record outside PCR 11 (whose words are pcrphase's, not an artifact's) that
    // no published image expects.
    let userspace =
        x.source == "userspace-log" && x.kind == "unknown-event" && x.pcr != Some(PCR_KERNEL_IMAGE);
    x.severity == Severity::Reject && x.index.is_some() && (firmware || userspace)
}

fn utf16_of(data: &[u8]) -> Option<String> {
    text(data)
}

/// Is this an event systemd-stub (or sd-boot) makes?
fn is_stub_event(e: &Event) -> bool {
    matches!(
        (e.pcr, e.event_type),
        (11, EventType::EV_IPL) | (12, EventType::EV_IPL) | (13, EventType::EV_IPL)
    ) || (e.event_type == EventType::EV_EVENT_TAG && (11..=13).contains(&e.pcr))
}

fn matches_ref(e: &Event, digests: &BTreeMap<HashAlg, Digest>, banks: &[HashAlg]) -> bool {
    let common: Vec<_> = banks
        .iter()
        .filter(|b| digests.contains_key(b) && e.digest(**b).is_some())
        .collect();
    !common.is_empty() && common.iter().all(|b| e.digest(**b) == digests.get(b))
}

fn check_stub_events(
    refs: &References,
    log: &EventLog,
    banks: &[HashAlg],
    f: &mut Vec<Finding>,
    checked: &mut Vec<String>,
) -> Option<usize> {
    let stub: Vec<&Event> = log.events.iter().filter(|e| is_stub_event(e)).collect();
    let pcr11: Vec<&Event> = stub
        .iter()
        .copied()
        .filter(|e| e.pcr == PCR_KERNEL_IMAGE && e.event_type == EventType::EV_IPL)
        .collect();
    // Which artifact explains the PCR 11 section events? The first whose sections all match.
    let mut explained: BTreeSet<usize> = BTreeSet::new();
    let mut best: Option<(usize, Vec<Finding>, BTreeSet<usize>)> = None;
    for (i, a) in refs.artifacts.iter().enumerate() {
        if a.sections.is_empty() {
            continue;
        }
        let (errs, ok) = match_sections(a, &pcr11, banks);
        let better = best.as_ref().is_none_or(|(_, e, _)| errs.len() < e.len());
        if better {
            best = Some((i, errs, ok));
        }
    }
    // The artifact that booted: the one whose sections the stub measured, all of them.
    let mut booted = None;
    if let Some((i, errs, ok)) = best {
        checked.push(format!(
            "PCR 11 stub section events against {}",
            refs.artifacts[i].name
        ));
        if errs.is_empty() {
            booted = Some(i);
        }
        explained.extend(ok);
        f.extend(errs);
    }
    for e in stub {
        if explained.contains(&e.index) {
            continue;
        }
        if e.pcr == PCR_KERNEL_IMAGE
            && e.event_type == EventType::EV_IPL
            && refs.artifacts.iter().any(|a| !a.sections.is_empty())
        {
            continue; // already reported by match_sections
        }
        let hit = refs.artifacts.iter().find(|a| {
            a.events
                .iter()
                .any(|r| r.pcr == e.pcr && matches_ref(e, &r.digests, banks))
        });
        if let Some(a) = hit {
            checked.push(format!(
                "event {} (PCR {}) against {}",
                e.index, e.pcr, a.name
            ));
            continue;
        }
        let mut x = Finding::new(
            Severity::Reject,
            "unknown-event",
            "firmware-log",
            format!(
                "event {} in PCR {} ({}) matches no reference",
                e.index, e.pcr, e.event_type
            ),
        )
        .at_event(e, banks.first().copied());
        if let Some((id, _)) = (e.event_type == EventType::EV_EVENT_TAG)
            .then(|| tagged_event(&e.data))
            .flatten()
        {
            x.message.push_str(&format!(" (tag {id:#010x})"));
        }
        f.push(x);
    }
    booted
}

/// Matches the PCR 11 EV_IPL events against an artifact's sections: pairs (name, content) in
/// the stub's canonical order, names hashed as ASCII with one NUL, content as built.
const DTBAUTO: &str = ".dtbauto";

fn match_sections(
    a: &Artifact,
    events: &[&Event],
    banks: &[HashAlg],
) -> (Vec<Finding>, BTreeSet<usize>) {
    let semantics = a.semantics.unwrap_or(StubSemantics::LATEST);
    // A 257+ stub measures at most one `.dtbauto`, the one the machine selected, or none: that
    // slot is taken only when the log names it, and its content may be any published one.
    let selects_dtb = semantics.knows(DTBAUTO);
    let expected: Vec<&SectionRef> = semantics
        .measured_sections()
        .filter_map(|n| a.sections.iter().find(|s| s.name == n))
        .collect();
    let mut errs = Vec::new();
    let mut ok = BTreeSet::new();
    let mut it = events.iter().peekable();
    for (i, want) in expected.iter().enumerate() {
        if selects_dtb && want.name == DTBAUTO {
            let named = it
                .peek()
                .is_some_and(|e| utf16_of(&e.data).unwrap_or_default() == DTBAUTO);
            if !named {
                continue;
            }
        }
        let (Some(name_ev), content_ev) = (it.next(), it.next()) else {
            errs.push(Finding {
                artifact: Some(a.name.clone()),
                expected: Some(format!("section {} (event pair {i})", want.name)),
                ..Finding::new(
                    Severity::Reject,
                    "missing-event",
                    "firmware-log",
                    format!(
                        "PCR 11 ends before the stub measured section {} of {}",
                        want.name, a.name
                    ),
                )
            });
            break;
        };
        let (buf, n) = name_bytes(&want.name);
        let name_ok = banks
            .iter()
            .filter(|b| name_ev.digest(**b).is_some())
            .all(|b| b.hash(&buf[..n]).ok().as_ref() == name_ev.digest(*b));
        let desc = utf16_of(&name_ev.data).unwrap_or_default();
        if !name_ok || desc != want.name {
            let what = if name_ok { "description" } else { "digest" };
            errs.push(Finding {
                artifact: Some(a.name.clone()),
                expected: Some(format!("section name event for {} (H(\"{}\\0\"))", want.name, want.name)),
                ..Finding::new(Severity::Reject, "section-order", "firmware-log", format!("event {} should name section {} (canonical order of {}), but its {what} does not", name_ev.index, want.name, semantics.name())).at_event(name_ev, banks.first().copied())
            });
            return (errs, ok);
        }
        ok.insert(name_ev.index);
        let Some(content_ev) = content_ev else {
            errs.push(Finding {
                artifact: Some(a.name.clone()),
                ..Finding::new(
                    Severity::Reject,
                    "missing-event",
                    "firmware-log",
                    format!(
                        "section {} has a name event but no content event",
                        want.name
                    ),
                )
            });
            return (errs, ok);
        };
        let cdesc = utf16_of(&content_ev.data).unwrap_or_default();
        let published =
            |r: &&SectionRef| r.name == want.name && matches_ref(content_ev, &r.digests, banks);
        let content_ok = if want.name == DTBAUTO {
            a.sections.iter().any(|r| published(&r))
        } else {
            matches_ref(content_ev, &want.digests, banks)
        };
        if !content_ok || cdesc != want.name {
            let exp = banks
                .iter()
                .find_map(|b| want.digests.get(b).map(|d| format!("{b} {d}")));
            errs.push(Finding {
                artifact: Some(a.name.clone()),
                expected: exp,
                ..Finding::new(
                    Severity::Reject,
                    "section-digest",
                    "firmware-log",
                    format!(
                        "event {}: content of section {} is not the one built",
                        content_ev.index, want.name
                    ),
                )
                .at_event(content_ev, banks.first().copied())
            });
            return (errs, ok);
        }
        ok.insert(content_ev.index);
    }
    for extra in it {
        errs.push(Finding {
            artifact: Some(a.name.clone()),
            ..Finding::new(
                Severity::Reject,
                "unknown-event",
                "firmware-log",
                format!(
                    "event {} in PCR 11 after the last section of {}",
                    extra.index, a.name
                ),
            )
            .at_event(extra, banks.first().copied())
        });
    }
    (errs, ok)
}

/// PCR 12 or 13 counts as checked in a bank when every event in it is a stub measurement
/// (EV_IPL) whose digest in that bank is a reference's predicted event for that PCR (an
/// extension or credential that was published), or when nothing was measured into it.
fn cover_stub_pcr(
    refs: &References,
    log: &EventLog,
    banks: &[HashAlg],
    pcr: u32,
    checked: &mut Vec<String>,
    covered: &mut BTreeSet<(HashAlg, u32)>,
) {
    let events: Vec<&Event> = log.events.iter().filter(|e| e.pcr == pcr).collect();
    for b in banks {
        let all = events.iter().all(|e| {
            e.event_type == EventType::EV_IPL
                && e.digest(*b).is_some_and(|d| {
                    refs.artifacts.iter().any(|a| {
                        a.events
                            .iter()
                            .any(|r| r.pcr == pcr && r.digests.get(b) == Some(d))
                    })
                })
        });
        if all {
            checked.push(if events.is_empty() {
                format!("PCR {pcr} {b}: nothing measured")
            } else {
                format!("PCR {pcr} {b}: {} published stub event(s)", events.len())
            });
            covered.insert((*b, pcr));
        }
    }
}

/// PCR 4 counts as checked in a bank when every EFI application in it matched an artifact and
/// its other events are separators and EFI actions, whose digests the lint binds to their data.
fn check_pcr4(
    refs: &References,
    log: &EventLog,
    banks: &[HashAlg],
    f: &mut Vec<Finding>,
    checked: &mut Vec<String>,
    covered: &mut BTreeSet<(HashAlg, u32)>,
) {
    let before = f.len();
    let others_bound = log.events.iter().filter(|e| e.pcr == 4).all(|e| {
        matches!(
            e.event_type,
            EventType::EV_EFI_BOOT_SERVICES_APPLICATION
                | EventType::EV_SEPARATOR
                | EventType::EV_EFI_ACTION
        )
    });
    let apps: Vec<&Event> = log
        .events
        .iter()
        .filter(|e| e.pcr == 4 && e.event_type == EventType::EV_EFI_BOOT_SERVICES_APPLICATION)
        .collect();
    for e in apps {
        let uki = refs
            .artifacts
            .iter()
            .find(|a| matches_ref(e, &a.authenticode, banks));
        let kernel = refs.artifacts.iter().find(|a| {
            !a.kernel_authenticode.is_empty() && matches_ref(e, &a.kernel_authenticode, banks)
        });
        match (uki, kernel) {
            (Some(a), _) => checked.push(format!("PCR 4 event {} = Authenticode of {}", e.index, a.name)),
            (None, Some(a)) => checked.push(format!(
                "PCR 4 event {} = Authenticode of the .linux kernel in {}",
                e.index, a.name
            )),
            (None, None) => f.push(Finding::new(Severity::Reject, "unknown-event", "firmware-log", format!("event {}: an EFI application was loaded whose Authenticode hash matches no artifact", e.index)).at_event(e, banks.first().copied())),
        }
    }
    if others_bound && f.len() == before {
        for b in banks {
            // Every application's digest in this very bank is an artifact's Authenticode hash.
            let every_app_matched = log
                .events
                .iter()
                .filter(|e| {
                    e.pcr == 4 && e.event_type == EventType::EV_EFI_BOOT_SERVICES_APPLICATION
                })
                .all(|e| {
                    e.digest(*b).is_some_and(|d| {
                        refs.artifacts.iter().any(|a| {
                            a.authenticode.get(b) == Some(d)
                                || a.kernel_authenticode.get(b) == Some(d)
                        })
                    })
                });
            if every_app_matched {
                covered.insert((*b, 4));
            }
        }
    }
}

/// Equal in every bank both have, and they have one at least.
fn same_digests(a: &BTreeMap<HashAlg, Digest>, b: &BTreeMap<HashAlg, Digest>) -> bool {
    let common: Vec<&HashAlg> = a.keys().filter(|k| b.contains_key(k)).collect();
    !common.is_empty() && common.iter().all(|k| a.get(k) == b.get(k))
}

/// With references from a transparency log, the signed PCR policy of a booted UKI is an
/// artifact too: a UKI that carries `.pcrsig` and booted (its sections explain PCR 11, or PCR
/// 4 shows its Authenticode hash, which covers `.pcrsig`) needs a published record of that
/// policy (the UKI's own record, or one of its own from `sign-pcrs --log`) naming this UKI and
/// authorising every PCR 11 value the UKI's record predicts. Otherwise the key signed
/// something the log does not show: "not published", or a policy that does not sign this UKI.
fn check_signed_policy(
    refs: &References,
    log: &EventLog,
    booted: Option<usize>,
    banks: &[HashAlg],
    f: &mut Vec<Finding>,
    checked: &mut Vec<String>,
) {
    if refs.published_in.is_none() {
        return;
    }
    let apps: Vec<&Event> = log
        .events
        .iter()
        .filter(|e| e.pcr == 4 && e.event_type == EventType::EV_EFI_BOOT_SERVICES_APPLICATION)
        .collect();
    let first_stub_event = log
        .events
        .iter()
        .find(|e| e.pcr == PCR_KERNEL_IMAGE && e.event_type == EventType::EV_IPL);
    for (i, a) in refs.artifacts.iter().enumerate() {
        if !a.carries_pcrsig {
            continue;
        }
        let app = apps
            .iter()
            .copied()
            .find(|e| matches_ref(e, &a.authenticode, banks));
        let Some(event) = app.or(first_stub_event.filter(|_| booted == Some(i))) else {
            continue;
        };
        let published: Vec<(&Artifact, &PolicyRef)> = refs
            .artifacts
            .iter()
            .filter_map(|p| p.policy.as_ref().map(|r| (p, r)))
            .filter(|(_, r)| same_digests(&r.uki_authenticode, &a.authenticode))
            .collect();
        if let Some((p, r)) = published.iter().find(|(_, r)| r.authorises(&a.pcr11)) {
            checked.push(format!(
                "the signed PCR policy (.pcrsig) of {} = published in {} (key {})",
                a.name, p.name, r.key_fingerprint
            ));
            continue;
        }
        let x = match published.first() {
            None => Finding::new(
                Severity::Reject,
                "unpublished-policy",
                "firmware-log",
                format!(
                    "event {}: {} carries a signed PCR policy (.pcrsig) that no record states (its key and the PCR 11 values it signs)",
                    event.index, a.name
                ),
            ),
            Some((p, _)) => Finding::new(
                Severity::Reject,
                "policy-mismatch",
                "firmware-log",
                format!(
                    "event {}: the signed PCR policy published in {} for {} does not authorise the UKI's own PCR 11 predictions",
                    event.index, p.name, a.name
                ),
            ),
        };
        f.push(Finding {
            artifact: Some(a.name.clone()),
            ..x.at_event(event, banks.first().copied())
        });
    }
}

fn check_userspace(
    policy: &Policy,
    refs: &References,
    firmware: &PcrValues,
    u: &UserspaceLog,
    banks: &[HashAlg],
    f: &mut Vec<Finding>,
    checked: &mut Vec<String>,
) -> Vec<HashAlg> {
    let mut pcr11: BTreeMap<HashAlg, Option<Pcr>> = banks
        .iter()
        .map(|b| {
            (
                *b,
                firmware
                    .get(b)
                    .and_then(|m| m.get(&PCR_KERNEL_IMAGE))
                    .cloned()
                    .and_then(|v| Pcr::with_value(*b, v).ok()),
            )
        })
        .collect();
    let mut path: Vec<String> = Vec::new();
    let check_path = |path: &[String],
                      pcr11: &BTreeMap<HashAlg, Option<Pcr>>,
                      f: &mut Vec<Finding>,
                      checked: &mut Vec<String>,
                      at: Option<usize>|
     -> Vec<HashAlg> {
        let mut done = Vec::new();
        for (bank, p) in pcr11 {
            let Some(p) = p else { continue };
            let refs_for: Vec<&PhaseValue> = refs
                .all_pcr11()
                .filter(|v| v.bank == *bank && v.phase == path)
                .collect();
            if refs_for.is_empty() {
                continue;
            }
            let label = if path.is_empty() {
                ":".to_owned()
            } else {
                path.join(":")
            };
            checked.push(format!("PCR 11 {bank} after phase path {label}"));
            done.push(*bank);
            if !refs_for.iter().any(|v| &v.value == p.value()) {
                let mut x = Finding::new(Severity::Reject, "pcr-mismatch", if at.is_some() { "userspace-log" } else { "firmware-log" }, format!("PCR 11 ({bank}) after phase path {label:?} is {}, which no reference predicts", p.value()));
                x.pcr = Some(PCR_KERNEL_IMAGE);
                x.index = at;
                x.expected = Some(
                    refs_for
                        .iter()
                        .map(|v| format!("{} ({})", v.value, v.artifact))
                        .collect::<Vec<_>>()
                        .join(" or "),
                );
                x.artifact = refs_for.first().map(|v| v.artifact.clone());
                f.push(x);
            }
        }
        done
    };
    // A bank's final PCR 11 is checked when some phase path was compared with a prediction in
    // it and every later PCR 11 record is a known phase word whose digest is H(word) (anything
    // else rejects): the final value follows from the checked one.
    let mut ever: BTreeSet<HashAlg> = check_path(&path, &pcr11, f, checked, None)
        .into_iter()
        .collect();
    for r in &u.records {
        let base = |sev, kind, msg: String| {
            let mut x = Finding::new(sev, kind, "userspace-log", msg);
            x.pcr = r.pcr;
            x.index = Some(r.index);
            x.event_type = r.event_type.clone();
            x.description = r.string.clone();
            x.digest = banks.first().and_then(|b| r.digest(*b)).map(Digest::to_hex);
            x
        };
        let bad = r.digest_mismatches();
        if !bad.is_empty() {
            f.push(base(
                Severity::Reject,
                "altered-record",
                format!(
                    "record {}: logged digest is not the hash of its string ({})",
                    r.index,
                    bad.iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(",")
                ),
            ));
        }
        if let Some(bg) = crate::breakglass::from_record(r) {
            let sev = if policy.allow_break_glass {
                Severity::Note
            } else {
                Severity::Reject
            };
            let msg = match bg {
                Ok(b) => format!(
                    "break-glass: {} by {} at {}: {}",
                    b.kind, b.actor, b.time, b.reason
                ),
                Err(e) => format!("break-glass record {}: {e}", r.index),
            };
            f.push(base(sev, "break-glass", msg));
        }
        if r.pcr == Some(PCR_KERNEL_IMAGE) {
            let word = r.string.clone().unwrap_or_default();
            if r.event_type.as_deref() != Some("phase") || !PHASE_WORDS.contains(&word.as_str()) {
                f.push(base(
                    Severity::Reject,
                    "unknown-event",
                    format!(
                        "record {}: PCR 11 extended with {word:?}, not a pcrphase word",
                        r.index
                    ),
                ));
            }
            for (bank, p) in pcr11.iter_mut() {
                match (p.as_mut(), r.digest(*bank)) {
                    (Some(p), Some(d)) => p.extend(d),
                    (Some(_), None) => *p = None,
                    _ => {}
                }
            }
            path.push(word);
            ever.extend(check_path(&path, &pcr11, f, checked, Some(r.index)));
        }
    }
    ever.into_iter()
        .filter(|b| pcr11.get(b).is_some_and(Option::is_some))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Verifies a userspace log of `records` (numbered in order) against `refs` with a policy
    /// of PCR 15 alone in `banks` and an empty firmware log.
    fn verify_pcr15(
        refs: &References,
        banks: &[HashAlg],
        records: Vec<crate::eventlog::userspace::UserspaceRecord>,
    ) -> Verdict {
        let policy = Policy {
            pcrs: [PcrIndex::new(15).unwrap()].into(),
            banks: banks.to_vec(),
            ..Policy::default()
        };
        let log = EventLog {
            format: crate::eventlog::tcg::LogFormat::CryptoAgile,
            spec_id: None,
            header_pcr: 0,
            events: Vec::new(),
        };
        let mut u = UserspaceLog { records };
        for (i, r) in u.records.iter_mut().enumerate() {
            r.index = i;
        }
        verify(&policy, refs, &log, Some(&u), None)
    }

    /// A userspace-log record of `event_type` with `string` in PCR 15, in `banks`, of one boot.
    fn pcr15_record(
        banks: &[HashAlg],
        event_type: &str,
        string: &str,
    ) -> crate::eventlog::userspace::UserspaceRecord {
        let origin = crate::eventlog::userspace::Origin {
            boot_id: "0".repeat(32),
            timestamp_usec: 1,
        };
        crate::eventlog::userspace::UserspaceRecord::new(
            15,
            banks,
            string.into(),
            event_type,
            &origin,
        )
        .unwrap()
    }

    /// SHA-256 PCR 15 after extending the hash of each string, computed with ring (not the
    /// code under test).
    fn sha256_replay(strings: &[&str]) -> String {
        let sha256 = |b: &[u8]| {
            ring::digest::digest(&ring::digest::SHA256, b)
                .as_ref()
                .to_vec()
        };
        let mut pcr = vec![0u8; 32];
        for s in strings {
            pcr = sha256(&[pcr, sha256(s.as_bytes())].concat());
        }
        hex::encode(pcr)
    }

    /// An OS image's record expects its machine ID (by form) and its file systems (by string)
    /// in PCR 15: exactly those records accept, with PCR 15's prediction equal to a replay
    /// computed here with ring; an unexpected, malformed, repeated or missing record rejects,
    /// named.
    #[test]
    fn pcr15_holds_exactly_the_records_the_published_image_expects() {
        use crate::eventlog::userspace::UserspaceRecord;
        let banks = [HashAlg::SHA1, HashAlg::SHA256];
        let fs = "file-system:/usr:erofs:0992bb15-3efb-47e9-9412-b9717d626a16::::";
        let id = "machine-id:bdc32cd1ac874eaaa9229c647a0df9dd";
        let rec = |t: &str, s: &str| pcr15_record(&banks, t, s);
        let expect = |t: &str, s: &str| UserspaceEventRecord {
            pcr: 15,
            event_type: t.into(),
            string: s.into(),
        };
        let refs = References {
            artifacts: vec![Artifact {
                name: "os.efi (os)".into(),
                userspace: vec![
                    expect("machine-id", "machine-id:{machine-id}"),
                    expect("filesystem", fs),
                ],
                ..Artifact::default()
            }],
            ..References::default()
        };
        let run = |records: Vec<UserspaceRecord>| verify_pcr15(&refs, &banks, records);
        let v = run(vec![rec("machine-id", id), rec("filesystem", fs)]);
        assert!(v.accepted, "{v:#?}");
        let row = v.pcrs.iter().find(|r| r.bank == HashAlg::SHA256).unwrap();
        assert_eq!(
            row.predicted.as_deref(),
            Some(sha256_replay(&[id, fs]).as_str())
        );
        assert_eq!(row.measured, row.predicted);
        assert_eq!((row.verdict, row.events), ("match", 2));

        let kinds = |v: &Verdict| -> Vec<&str> {
            v.findings
                .iter()
                .filter(|f| f.kind != "unchecked-pcr")
                .map(|f| f.kind)
                .collect()
        };
        // Another file system, an upper-case machine ID, the machine ID twice, none at all.
        let other = fs.replace("0992", "1992");
        let v = run(vec![rec("machine-id", id), rec("filesystem", &other)]);
        assert!(!v.accepted);
        assert_eq!(kinds(&v), ["unknown-event", "missing-event"], "{v:#?}");
        assert!(v.findings[0].message.contains(&other), "{v:#?}");
        assert_eq!(v.findings[0].index, Some(1));
        let v = run(vec![
            rec("machine-id", &id.to_uppercase()),
            rec("filesystem", fs),
        ]);
        assert_eq!(kinds(&v), ["unknown-event", "missing-event"], "{v:#?}");
        let v = run(vec![
            rec("machine-id", id),
            rec("machine-id", id),
            rec("filesystem", fs),
        ]);
        assert_eq!(kinds(&v), ["unknown-event"], "{v:#?}");
        let v = run(vec![rec("machine-id", id)]);
        assert_eq!(kinds(&v), ["missing-event"], "{v:#?}");
        assert!(v.findings[0].message.contains(fs), "{v:#?}");
        // A record whose digest is not the hash of its string leaves PCR 15 unchecked.
        let mut altered = rec("filesystem", fs);
        altered.digests[1].1 = HashAlg::SHA256.hash(b"x").unwrap();
        let v = run(vec![rec("machine-id", id), altered]);
        assert!(!v.accepted);
        assert!(v
            .pcrs
            .iter()
            .any(|r| r.bank == HashAlg::SHA256 && r.verdict == "mismatch"));
    }

    /// An extension activated on the running OS (`verity:<name>:<root hash>:` in PCR 15) is
    /// accepted when its root hash is a referenced extension's, counted in PCR 15's
    /// prediction (a replay computed here with ring); another root hash rejects naming the
    /// image, the root hash and the record, as "not published" with references from a log.
    #[test]
    fn an_activated_extension_resolves_to_a_referenced_root_hash_or_rejects() {
        use crate::eventlog::userspace::UserspaceRecord;
        let banks = [HashAlg::SHA256];
        let id = "machine-id:bdc32cd1ac874eaaa9229c647a0df9dd";
        let hash = "4a7c1e1b1a0c2b0e9f8d7c6b5a4938271605f4e3d2c1b0a99887766554433221";
        let act = format!("verity:demo-sysext:{hash}:");
        let rec = |t: &str, s: &str| pcr15_record(&banks, t, s);
        let os = Artifact {
            name: "os.efi (os)".into(),
            userspace: vec![UserspaceEventRecord {
                pcr: 15,
                event_type: "machine-id".into(),
                string: "machine-id:{machine-id}".into(),
            }],
            ..Artifact::default()
        };
        let sysext = Artifact {
            name: "sysext demo-sysext 1.0".into(),
            root_hash: Some(hash.into()),
            ..Artifact::default()
        };
        let run =
            |refs: &References, records: Vec<UserspaceRecord>| verify_pcr15(refs, &banks, records);
        let with = References {
            artifacts: vec![os.clone(), sysext],
            ..References::default()
        };
        let v = run(&with, vec![rec("machine-id", id), rec("pcrextend", &act)]);
        assert!(v.accepted, "{v:#?}");
        let row = v.pcrs.iter().find(|r| r.pcr == 15).unwrap();
        assert_eq!(
            row.predicted.as_deref(),
            Some(sha256_replay(&[id, act.as_str()]).as_str())
        );
        assert_eq!(row.verdict, "match");

        let without = References {
            artifacts: vec![os],
            published_in: Some("the log".into()),
            ..References::default()
        };
        let v = run(
            &without,
            vec![rec("machine-id", id), rec("pcrextend", &act)],
        );
        assert!(!v.accepted);
        let x = v
            .findings
            .iter()
            .find(|f| f.kind == "unknown-event")
            .expect("a rejection");
        assert_eq!(x.index, Some(1));
        for part in ["not published", "demo-sysext", hash, "record 1"] {
            assert!(x.message.contains(part), "{part}: {}", x.message);
        }
        // A malformed activation record rejects too.
        let bad = format!("verity:demo-sysext:{}:", hash.to_uppercase());
        let v = run(&with, vec![rec("machine-id", id), rec("pcrextend", &bad)]);
        assert!(!v.accepted, "{v:#?}");
    }

    /// A signed extension's activation record names its signers only when the kernel verified
    /// the signature: the published signers accept (said so), others or signers on an image
    /// published unsigned reject naming both; no signers on a signed image accept with the note
    /// that the kernel did not verify it.
    #[test]
    fn activation_signers_must_be_the_published_signatures() {
        let banks = [HashAlg::SHA256];
        let hash = "4a7c1e1b1a0c2b0e9f8d7c6b5a4938271605f4e3d2c1b0a99887766554433221";
        let published = "0214aa/MA8xDTALBgNVBAMMBHRlc3Q=";
        let other = "020101/MA8xDTALBgNVBAMMBHRlc3Q=";
        let rec = |t: &str, s: &str| pcr15_record(&banks, t, s);
        let os = Artifact {
            name: "os.efi (os)".into(),
            userspace: vec![],
            ..Artifact::default()
        };
        let refs = |signers: Option<&str>| References {
            artifacts: vec![
                Artifact {
                    userspace: vec![UserspaceEventRecord {
                        pcr: 15,
                        event_type: "machine-id".into(),
                        string: "machine-id:{machine-id}".into(),
                    }],
                    ..os.clone()
                },
                Artifact {
                    name: "sysext demo-sysext 1".into(),
                    root_hash: Some(hash.into()),
                    verity_signers: signers.map(str::to_owned),
                    ..Artifact::default()
                },
            ],
            published_in: Some("the log".into()),
            ..References::default()
        };
        let id = "machine-id:bdc32cd1ac874eaaa9229c647a0df9dd";
        let run = |refs: &References, signers: &str| {
            verify_pcr15(
                refs,
                &banks,
                vec![
                    rec("machine-id", id),
                    rec("phase", &format!("verity:demo-sysext:{hash}:{signers}")),
                ],
            )
        };
        let checked = |v: &Verdict| v.checked.join("\n");
        let v = run(&refs(Some(published)), published);
        assert!(v.accepted, "{v:#?}");
        assert!(checked(&v).contains("verified by the kernel"), "{v:#?}");
        let v = run(&refs(Some(published)), "");
        assert!(v.accepted, "{v:#?}");
        assert!(
            checked(&v).contains("no kernel-verified signature"),
            "{v:#?}"
        );
        for (signers, logged, what) in [
            (Some(published), other, "not by the published"),
            (None, published, "published image is unsigned"),
        ] {
            let v = run(&refs(signers), logged);
            assert!(!v.accepted, "{v:#?}");
            assert!(
                v.findings.iter().any(|f| f.kind == "unknown-event"
                    && f.message.contains(what)
                    && f.message.contains(logged)),
                "{what}: {v:#?}"
            );
        }
    }

    /// The booted OS image's `/usr` activation (`verity:usr:<root hash>:`, the record the
    /// image's published record expects) is accepted and counted in PCR 15's prediction; with
    /// another root hash it is rejected as a `/usr` of no published OS image (never resolved
    /// to an extension, even one with that root hash), naming the record and the root hash,
    /// and the expected record is reported missing; without it, missing.
    #[test]
    fn the_usr_activation_resolves_to_the_booted_images_usr_root_hash_or_rejects() {
        let banks = [HashAlg::SHA256];
        let usr = "66".repeat(32);
        let other = "77".repeat(32);
        let act = format!("verity:usr:{usr}:");
        let bad = format!("verity:usr:{other}:");
        let rec = |t: &str, s: &str| pcr15_record(&banks, t, s);
        let os = Artifact {
            name: "os.efi (os)".into(),
            userspace: vec![UserspaceEventRecord {
                pcr: 15,
                event_type: "phase".into(),
                string: act.clone(),
            }],
            ..Artifact::default()
        };
        // An extension that happens to have the other root hash does not make it /usr's.
        let sysext = Artifact {
            name: "sysext usr 1".into(),
            root_hash: Some(other.clone()),
            ..Artifact::default()
        };
        let refs = References {
            artifacts: vec![os, sysext],
            published_in: Some("the log".into()),
            ..References::default()
        };
        let v = verify_pcr15(&refs, &banks, vec![rec("phase", &act)]);
        assert!(v.accepted, "{v:#?}");
        let row = v.pcrs.iter().find(|r| r.pcr == 15).unwrap();
        assert_eq!(
            row.predicted.as_deref(),
            Some(sha256_replay(&[act.as_str()]).as_str())
        );
        assert_eq!(row.verdict, "match");
        let v = verify_pcr15(&refs, &banks, vec![rec("phase", &bad)]);
        assert!(!v.accepted);
        let kinds: Vec<&str> = v
            .findings
            .iter()
            .filter(|f| f.severity == Severity::Reject && f.kind != "unchecked-pcr")
            .map(|f| f.kind)
            .collect();
        assert_eq!(kinds, ["unknown-event", "missing-event"], "{v:#?}");
        let x = &v.findings[0];
        assert_eq!(x.index, Some(0));
        for part in ["not published", "/usr", &other, "record 0", "os.efi (os)"] {
            assert!(x.message.contains(part), "{part}: {}", x.message);
        }
        let v = verify_pcr15(&refs, &banks, vec![]);
        assert!(!v.accepted);
        assert!(
            v.findings
                .iter()
                .any(|f| f.kind == "missing-event" && f.message.contains(&act)),
            "{v:#?}"
        );
    }

    /// The 257 stub measures the `.dtbauto` the machine selected, or none: the verifier takes
    /// either, matches a selected one against every published `.dtbauto`, and rejects content
    /// that was not published.
    #[test]
    fn a_dtbauto_slot_is_taken_only_when_the_log_names_it() {
        let b = HashAlg::SHA256;
        let sref = |name: &str, data: &[u8]| SectionRef {
            name: name.into(),
            digests: [(b, b.hash(data).unwrap())].into_iter().collect(),
        };
        let artifact = Artifact {
            name: "u".into(),
            semantics: Some(StubSemantics::Systemd257),
            sections: vec![
                sref(".linux", b"kernel"),
                sref(".dtbauto", b"dtb-a"),
                sref(".dtbauto", b"dtb-b"),
            ],
            authenticode: BTreeMap::new(),
            kernel_authenticode: BTreeMap::new(),
            events: Vec::new(),
            ..Artifact::default()
        };
        let pair = |i: usize, name: &str, data: &[u8]| {
            let utf16: Vec<u8> = name
                .encode_utf16()
                .chain([0])
                .flat_map(u16::to_le_bytes)
                .collect();
            let (buf, n) = name_bytes(name);
            let ev = |index: usize, d: &[u8]| Event {
                index,
                offset: 0,
                pcr: 11,
                event_type: EventType::EV_IPL,
                digests: vec![(b, b.hash(d).unwrap())],
                data: utf16.clone(),
            };
            [ev(i, &buf[..n]), ev(i + 1, data)]
        };
        let check = |events: Vec<Event>| {
            let refs: Vec<&Event> = events.iter().collect();
            match_sections(&artifact, &refs, &[b]).0
        };
        let linux = pair(0, ".linux", b"kernel");
        assert!(check(linux.to_vec()).is_empty(), "none selected");
        let with_b: Vec<Event> = linux
            .iter()
            .cloned()
            .chain(pair(2, ".dtbauto", b"dtb-b"))
            .collect();
        assert!(check(with_b).is_empty(), "the second .dtbauto selected");
        let stranger: Vec<Event> = linux
            .iter()
            .cloned()
            .chain(pair(2, ".dtbauto", b"dtb-x"))
            .collect();
        let f = check(stranger);
        assert_eq!(f.first().map(|f| f.kind), Some("section-digest"), "{f:?}");
        // Before 257 a stub does not know .dtbauto: the event is one too many.
        let mut old = artifact.clone();
        old.semantics = Some(StubSemantics::Systemd256);
        let events: Vec<Event> = linux
            .iter()
            .cloned()
            .chain(pair(2, ".dtbauto", b"dtb-a"))
            .collect();
        let refs: Vec<&Event> = events.iter().collect();
        assert!(!match_sections(&old, &refs, &[b]).0.is_empty());
    }

    /// A booted UKI carrying `.pcrsig` (PCR 4 shows its Authenticode hash) needs its policy
    /// published with references from a log: the UKI's own record stating it, or a policy
    /// record naming it by Authenticode hash; a policy for another UKI, or one that does not
    /// sign the UKI's PCR 11, rejects; local references are not held to it.
    #[test]
    fn a_booted_uki_signed_policy_must_be_published_and_sign_its_pcr11() {
        let b = HashAlg::SHA256;
        let d = |x: &[u8]| b.hash(x).unwrap();
        let at = |phase: &[&str], v: &[u8]| PhaseValue {
            phase: phase.iter().map(|w| w.to_string()).collect(),
            bank: b,
            value: d(v),
            artifact: "x".into(),
        };
        let value = |v: &[u8]| at(&["enter-initrd"], v);
        let policy = |uki: &[u8], signs: &[u8]| PolicyRef {
            key_fingerprint: "ab".repeat(32),
            uki_authenticode: [(b, d(uki))].into(),
            signs: vec![value(signs)],
        };
        let uki = Artifact {
            name: "demo.efi (demo)".into(),
            authenticode: [(b, d(b"uki"))].into(),
            // Right after the stub (":"), which no policy signs, and after enter-initrd.
            pcr11: vec![at(&[], b"stub"), value(b"pcr11")],
            carries_pcrsig: true,
            ..Artifact::default()
        };
        let log = EventLog {
            format: crate::eventlog::tcg::LogFormat::CryptoAgile,
            spec_id: None,
            header_pcr: 0,
            events: vec![Event {
                index: 7,
                offset: 0,
                pcr: 4,
                event_type: EventType::EV_EFI_BOOT_SERVICES_APPLICATION,
                digests: vec![(b, d(b"uki"))],
                data: Vec::new(),
            }],
        };
        let run = |artifacts: Vec<Artifact>, published: bool| {
            let refs = References {
                artifacts,
                published_in: published.then(|| "the log L (2 entries)".to_string()),
                ..References::default()
            };
            let (mut f, mut checked) = (Vec::new(), Vec::new());
            check_signed_policy(&refs, &log, None, &[b], &mut f, &mut checked);
            (f, checked)
        };
        let kinds = |f: &[Finding]| f.iter().map(|x| x.kind).collect::<Vec<_>>();
        // Not published: the UKI's record says nothing of its policy.
        let (f, _) = run(vec![uki.clone()], true);
        assert_eq!(kinds(&f), ["unpublished-policy"]);
        assert!(
            is_unpublished(&f[0]) && f[0].message.contains("event 7"),
            "{f:?}"
        );
        // Local references: not checked.
        assert!(run(vec![uki.clone()], false).0.is_empty());
        // The UKI's own record states it.
        let own = Artifact {
            policy: Some(policy(b"uki", b"pcr11")),
            ..uki.clone()
        };
        let (f, checked) = run(vec![own], true);
        assert!(f.is_empty(), "{f:?}");
        assert!(checked[0].contains(&"ab".repeat(32)), "{checked:?}");
        // A policy record of its own, for this UKI.
        let record = |p: PolicyRef| Artifact {
            name: "policy demo 1".into(),
            policy: Some(p),
            ..Artifact::default()
        };
        let (f, _) = run(vec![uki.clone(), record(policy(b"uki", b"pcr11"))], true);
        assert!(f.is_empty(), "{f:?}");
        // For another UKI: not this one's.
        let (f, _) = run(vec![uki.clone(), record(policy(b"other", b"pcr11"))], true);
        assert_eq!(kinds(&f), ["unpublished-policy"]);
        // For this UKI, signing something else.
        let (f, _) = run(vec![uki.clone(), record(policy(b"uki", b"else"))], true);
        assert_eq!(kinds(&f), ["policy-mismatch"]);
        // A UKI without .pcrsig needs nothing.
        let plain = Artifact {
            carries_pcrsig: false,
            ..uki
        };
        assert!(run(vec![plain], true).0.is_empty());
    }

    fn manifest(semantics: &str) -> Vec<u8> {
        let mut m = serde_json::to_value(imgctl_measure::manifest::sample()).unwrap();
        m["uki"]["stub"]["semantics"] = semantics.into();
        m.to_string().into_bytes()
    }

    /// Defect H28: stub semantics was chosen by `contains("252")`, so "upstream-2520" meant
    /// systemd 252 and a typo meant upstream. Only the builder's spelling is read.
    #[test]
    fn stub_semantics_is_read_by_its_one_spelling() {
        let a = parse_manifest("m", &manifest("systemd-252")).unwrap();
        assert_eq!(a.semantics, Some(StubSemantics::Systemd252));
        let a = parse_manifest("m", &manifest("systemd-257")).unwrap();
        assert_eq!(a.semantics, Some(StubSemantics::Systemd257));
        // Manifests written before the version table said "upstream" for the newest list.
        let a = parse_manifest("m", &manifest("upstream")).unwrap();
        assert_eq!(a.semantics, Some(StubSemantics::Systemd258));
        for bad in [
            "systemd252",
            "252",
            "upstream-2520",
            "Upstream",
            "systemd-255",
        ] {
            let e = parse_manifest("m", &manifest(bad)).unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
    }

    /// Defect E21: a bad digest in a manifest names the manifest, the field and the bank.
    #[test]
    fn manifest_digest_errors_name_the_file_field_and_bank() {
        let mut m = serde_json::to_value(imgctl_measure::manifest::sample()).unwrap();
        m["uki"]["authenticode"] = serde_json::json!({"sha256": "zz"});
        let e = parse_manifest("demo.manifest.json", m.to_string().as_bytes()).unwrap_err();
        let e = e.to_string();
        assert!(
            e.contains("demo.manifest.json: uki.authenticode: sha256 digest \"zz\" is not hex"),
            "{e}"
        );
        let mut m = serde_json::to_value(imgctl_measure::manifest::sample()).unwrap();
        m["uki"]["sections"] = serde_json::json!([{
            "name": ".linux", "offset": 1024, "virtual_address": 4096, "virtual_size": 3,
            "size_of_raw_data": 512, "measured": true, "digests": {"sha1": "abc"}
        }]);
        let e = parse_manifest("m.json", m.to_string().as_bytes()).unwrap_err();
        let e = e.to_string();
        assert!(
            e.contains("m.json: section .linux: sha1 digest \"abc\" is not hex"),
            "{e}"
        );
    }

    /// Defect A6: a pcrs.json given as a manifest was read as an empty manifest.
    #[test]
    fn a_pcrs_json_is_not_a_manifest() {
        let pcrs = br#"{"sha256": [{"pcr": 11, "hash": "00"}]}"#;
        assert!(parse_manifest("pcrs.json", pcrs).is_err());
        assert!(parse_pcrs_json("m", &manifest("upstream")).is_err());
    }

    #[test]
    fn policy_keys_and_values_are_checked() {
        assert!(Policy::parse("pcrs: [0]\nbanks: [sha256]").is_ok());
        for (bad, key) in [
            ("pcrs: [0]\nbnks: [sha256]", "bnks"),
            ("pcrs: [0]\nbanks: [md5]", "md5"),
            ("pcrs: [0, 24]", "24"),
            ("pcrs: []", "pcrs"),
            (
                "pcrs: [0]\nexpected: {sha256: {0: zz}}",
                "expected.sha256.0",
            ),
            (
                "pcrs: [0]\nexpected: {sha256: {1: '00'}}",
                "expected.sha256.1",
            ),
        ] {
            let e = Policy::parse(bad).unwrap_err().to_string();
            assert!(e.contains(key), "{bad}: {e}");
        }
    }
}
