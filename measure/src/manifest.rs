//! `manifest.json`, the record of one `imgctl build`: what went in (recipe, stub, inputs, with
//! their digests), what came out (the UKI, its sections with offsets and digests in every bank,
//! its Authenticode hash and its kernel's), which stub semantics the prediction used, and the
//! PCR 11 predictions in `systemd-measure calculate --json` shape.
//!
//! One type, written by the builder and read by the verifier with the same serde derive, so the
//! two cannot drift apart. Reading is strict: the `format` must be [`MANIFEST_FORMAT`], unknown
//! keys are errors, and stub semantics has exactly one spelling ([`StubSemantics::name`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::pcr11::STUB_VERSIONS;
use crate::predict::PcrValue;
use crate::{Error, StubSemantics};

/// Manifest format identifier; bump on incompatible changes.
pub const MANIFEST_FORMAT: &str = "imgctl-manifest/1";

/// Digests of one byte string in every bank, keyed by bank name (`sha256` …), lowercase hex.
pub type Digests = BTreeMap<String, String>;

/// PCR predictions in `systemd-measure calculate --json` shape: bank name → values.
pub type PcrsJson = BTreeMap<String, Vec<PcrValue>>;

/// One input or output file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRecord {
    pub role: String,
    pub path: String,
    pub size: u64,
    pub digests: Digests,
}

/// One PE section of the UKI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SectionRecord {
    pub name: String,
    /// File offset of the raw data.
    pub offset: u32,
    pub virtual_address: u32,
    pub virtual_size: u32,
    pub size_of_raw_data: u32,
    /// Whether the stub measures this section into PCR 11.
    pub measured: bool,
    /// Digests of the `virtual_size` bytes the stub measures.
    pub digests: Digests,
}

/// The stub the UKI was built on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StubRecord {
    pub path: String,
    pub sdmagic: Option<String>,
    /// The semantics the prediction used (detected from `.sdmagic` or chosen with `--stub`).
    pub semantics: StubSemantics,
}

/// The UKI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UkiRecord {
    pub file: String,
    pub size: u64,
    pub digests: Digests,
    /// The Authenticode hash per bank: what firmware extends into PCR 4 when it loads the UKI.
    pub authenticode: Digests,
    /// The Authenticode hash of the `.linux` kernel image, when it is a PE: stubs start it with
    /// LoadImage, so firmware measures it into PCR 4 too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_authenticode: Option<Digests>,
    pub stub: StubRecord,
    pub sections: Vec<SectionRecord>,
}

/// An extra predicted event (PCR 12/13 `EV_IPL` and the like) the verifier accepts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventRecord {
    pub pcr: u32,
    pub digests: Digests,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    pub name: String,
    pub version: String,
    pub builder: String,
    pub source_date_epoch: u64,
    pub recipe: FileRecord,
    pub inputs: Vec<FileRecord>,
    pub uki: UkiRecord,
    pub initrd: Option<FileRecord>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<EventRecord>,
    /// PCR 11 predictions, as in pcrs.json.
    pub pcrs: PcrsJson,
}

impl Serialize for StubSemantics {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for StubSemantics {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        // "upstream" is how manifests and log entries named the newest list before the version
        // table; it is read, never written.
        if s == "upstream" {
            return Ok(StubSemantics::Systemd258);
        }
        STUB_VERSIONS
            .iter()
            .find(|v| v.name == s)
            .map(|v| v.semantics)
            .ok_or_else(|| {
                let names: Vec<&str> = STUB_VERSIONS.iter().map(|v| v.name).collect();
                serde::de::Error::custom(format!(
                    "stub semantics {s:?} is not one of {}",
                    names.join(", ")
                ))
            })
    }
}

#[derive(Deserialize)]
struct FormatOnly {
    format: Option<serde_json::Value>,
}

impl Manifest {
    /// Reads a manifest; `file` names it in errors. The format is checked first, so a
    /// `pcrs.json` or another JSON object says so rather than which key it lacks.
    pub fn from_json(file: &str, data: &[u8]) -> Result<Manifest, Error> {
        let head: FormatOnly = serde_json::from_slice(data)
            .map_err(|e| Error::InvalidInput(format!("{file}: not a manifest: {e}")))?;
        match head.format {
            Some(serde_json::Value::String(f)) if f == MANIFEST_FORMAT => {}
            Some(f) => {
                return Err(Error::InvalidInput(format!(
                    "{file}: manifest format {f}, expected {MANIFEST_FORMAT:?}"
                )))
            }
            None => {
                return Err(Error::InvalidInput(format!(
                    "{file}: not a manifest (no \"format\": {MANIFEST_FORMAT:?})"
                )))
            }
        }
        serde_json::from_slice(data)
            .map_err(|e| Error::InvalidInput(format!("{file}: manifest: {e}")))
    }

    /// The JSON form, pretty-printed with a final newline (what `imgctl build` writes).
    pub fn to_json_bytes(&self) -> Vec<u8> {
        // Strings, integers, maps with string keys and vectors always serialise.
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }
}

/// A small, valid manifest, for the tests of the crates that read manifests.
#[cfg(any(test, feature = "testing"))]
pub fn sample() -> Manifest {
    let file = |role: &str| FileRecord {
        role: role.into(),
        path: format!("{role}.bin"),
        size: 3,
        digests: [("sha256".to_string(), "00".repeat(32))].into(),
    };
    Manifest {
        format: MANIFEST_FORMAT.into(),
        name: "demo".into(),
        version: "1.10".into(),
        builder: "imgctl-builder 0".into(),
        source_date_epoch: 1,
        recipe: file("recipe"),
        inputs: vec![file("stub")],
        uki: UkiRecord {
            file: "demo.efi".into(),
            size: 9,
            digests: Digests::new(),
            authenticode: Digests::new(),
            kernel_authenticode: None,
            stub: StubRecord {
                path: "linuxx64.efi.stub".into(),
                sdmagic: Some("#### LoaderInfo: systemd-stub 252 ####".into()),
                semantics: StubSemantics::Systemd252,
            },
            sections: vec![],
        },
        initrd: None,
        events: vec![],
        pcrs: PcrsJson::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_builder_writes_the_verifier_reads_back_equal() {
        let m = sample();
        let bytes = m.to_json_bytes();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.contains("\"semantics\": \"systemd-252\""), "{text}");
        assert_eq!(Manifest::from_json("m", &bytes).unwrap(), m);
    }

    #[test]
    fn unknown_keys_other_formats_and_other_spellings_are_errors() {
        let mut v: serde_json::Value = serde_json::to_value(sample()).unwrap();
        v["extra"] = 1.into();
        let e = Manifest::from_json("m.json", v.to_string().as_bytes()).unwrap_err();
        assert!(
            e.to_string().contains("m.json") && e.to_string().contains("extra"),
            "{e}"
        );
        let mut v: serde_json::Value = serde_json::to_value(sample()).unwrap();
        for bad in ["systemd252", "252", "upstream-2520", "Upstream"] {
            v["uki"]["stub"]["semantics"] = bad.into();
            assert!(
                Manifest::from_json("m", v.to_string().as_bytes()).is_err(),
                "{bad}"
            );
        }
        let pcrs = br#"{"sha256":[{"phase":"","pcr":11,"hash":"00"}]}"#;
        let e = Manifest::from_json("pcrs.json", pcrs)
            .unwrap_err()
            .to_string();
        assert!(e.contains("pcrs.json: not a manifest"), "{e}");
        let e = Manifest::from_json("m", br#"{"format":"imgctl-manifest/2"}"#).unwrap_err();
        assert!(e.to_string().contains("imgctl-manifest/2"), "{e}");
    }
}
