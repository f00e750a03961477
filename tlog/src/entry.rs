//! imgctl's log entry: one canonical encoding of what we built and what it will measure.
//!
//! Version 1 is UTF-8 text, one field per line, every line ending in `\n`:
//!
//! ```text
//! imgctl.dev/log-entry/v1
//! kind <uki|sysext|confext|policy>
//! name <token>
//! version <token>
//! digest <bank> <hex>                  one per bank, sorted by TPM_ALG_ID, at least one
//! pcr <index> <bank> <phase> <hex>     predicted values, sorted by (index, TPM_ALG_ID, phase)
//! recipe <bank> <hex>                  digest of the recipe the artifact was built from
//! builder <token>                      e.g. imgctl/0.1.0
//! ```
//!
//! `<token>` is 1 to 255 bytes of UTF-8 without whitespace or control characters; `<bank>` is
//! `sha1`, `sha256`, `sha384` or `sha512` and every hex value is lower-case with the bank's
//! digest length; `<phase>` is a pcrphase path (`enter-initrd:leave-initrd`), the empty path
//! written `:`. Same entry, same bytes: [`LogEntry::new`] sorts, and [`LogEntry::parse`] accepts
//! only bytes that re-encode identically. A later format gets a new first line.
//!
//! Version 2 (`imgctl.dev/log-entry/v2`) is the canonical encoding of
//! [`imgctl_measure::record::ArtifactRecord`], written and read by that module; [`Entry`] reads
//! either version.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::Error;
use imgctl_measure::bank::{Digest, HashAlg};
use imgctl_measure::predict::PhasePath;
use imgctl_measure::record::ArtifactRecord;

/// The first line of a version-1 entry.
pub const ENTRY_V1: &str = "imgctl.dev/log-entry/v1";

/// What kind of artifact an entry describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArtifactKind {
    Uki,
    Sysext,
    Confext,
    Policy,
}

impl ArtifactKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ArtifactKind::Uki => "uki",
            ArtifactKind::Sysext => "sysext",
            ArtifactKind::Confext => "confext",
            ArtifactKind::Policy => "policy",
        }
    }
}

impl fmt::Display for ArtifactKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ArtifactKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Ok(match s {
            "uki" => ArtifactKind::Uki,
            "sysext" => ArtifactKind::Sysext,
            "confext" => ArtifactKind::Confext,
            "policy" => ArtifactKind::Policy,
            _ => {
                return Err(Error::Entry(format!(
                    "kind {s:?} is not uki, sysext, confext or policy"
                )))
            }
        })
    }
}

/// One predicted PCR value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PredictedPcr {
    pub pcr: u32,
    pub bank: HashAlg,
    pub phase: PhasePath,
    pub value: Digest,
}

/// A log entry for one artifact. Construct with [`LogEntry::new`] (validates and sorts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    kind: ArtifactKind,
    name: String,
    version: String,
    digests: Vec<(HashAlg, Digest)>,
    pcrs: Vec<PredictedPcr>,
    recipe: (HashAlg, Digest),
    builder: String,
}

fn check_token(what: &str, s: &str) -> Result<(), Error> {
    if s.is_empty() || s.len() > 255 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Error::Entry(format!(
            "{what} {s:?} must be 1-255 bytes without whitespace or control characters"
        )));
    }
    Ok(())
}

fn check_digest(what: &str, bank: HashAlg, d: &Digest) -> Result<(), Error> {
    match bank.digest_size() {
        Some(n) if n == d.0.len() => Ok(()),
        Some(n) => Err(Error::Entry(format!(
            "{what}: {bank} digest has {} bytes, expected {n}",
            d.0.len()
        ))),
        None => Err(Error::Entry(format!(
            "{what}: bank {bank} is not supported"
        ))),
    }
}

fn phase_token(p: &PhasePath) -> String {
    if p.is_empty() {
        ":".to_owned()
    } else {
        p.to_string()
    }
}

impl LogEntry {
    /// Validates and canonicalises (sorts) an entry. Duplicate banks or PCR keys are errors.
    pub fn new(
        kind: ArtifactKind,
        name: &str,
        version: &str,
        mut digests: Vec<(HashAlg, Digest)>,
        mut pcrs: Vec<PredictedPcr>,
        recipe: (HashAlg, Digest),
        builder: &str,
    ) -> Result<LogEntry, Error> {
        check_token("name", name)?;
        check_token("version", version)?;
        check_token("builder", builder)?;
        if digests.is_empty() {
            return Err(Error::Entry("no artifact digest".into()));
        }
        digests.sort_by_key(|(a, _)| *a);
        for w in digests.windows(2) {
            if w[0].0 == w[1].0 {
                return Err(Error::Entry(format!("two digests in bank {}", w[0].0)));
            }
        }
        for (a, d) in &digests {
            check_digest("artifact digest", *a, d)?;
        }
        pcrs.sort_by(|a, b| {
            (a.pcr, a.bank, a.phase.to_string()).cmp(&(b.pcr, b.bank, b.phase.to_string()))
        });
        for w in pcrs.windows(2) {
            if (w[0].pcr, w[0].bank, &w[0].phase) == (w[1].pcr, w[1].bank, &w[1].phase) {
                return Err(Error::Entry(format!(
                    "two predictions for PCR {} {} phase {:?}",
                    w[0].pcr,
                    w[0].bank,
                    w[0].phase.to_string()
                )));
            }
        }
        for p in &pcrs {
            if p.pcr > 23 {
                return Err(Error::Entry(format!("PCR index {} is above 23", p.pcr)));
            }
            check_digest(&format!("PCR {}", p.pcr), p.bank, &p.value)?;
        }
        check_digest("recipe digest", recipe.0, &recipe.1)?;
        Ok(LogEntry {
            kind,
            name: name.to_owned(),
            version: version.to_owned(),
            digests,
            pcrs,
            recipe,
            builder: builder.to_owned(),
        })
    }

    pub fn kind(&self) -> ArtifactKind {
        self.kind
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn version(&self) -> &str {
        &self.version
    }
    pub fn digests(&self) -> &[(HashAlg, Digest)] {
        &self.digests
    }
    pub fn pcrs(&self) -> &[PredictedPcr] {
        &self.pcrs
    }
    pub fn recipe(&self) -> &(HashAlg, Digest) {
        &self.recipe
    }
    pub fn builder(&self) -> &str {
        &self.builder
    }

    /// The canonical bytes that go into the log.
    pub fn encode(&self) -> Vec<u8> {
        let mut s = format!(
            "{ENTRY_V1}\nkind {}\nname {}\nversion {}\n",
            self.kind, self.name, self.version
        );
        for (a, d) in &self.digests {
            s.push_str(&format!("digest {a} {d}\n"));
        }
        for p in &self.pcrs {
            s.push_str(&format!(
                "pcr {} {} {} {}\n",
                p.pcr,
                p.bank,
                phase_token(&p.phase),
                p.value
            ));
        }
        s.push_str(&format!(
            "recipe {} {}\nbuilder {}\n",
            self.recipe.0, self.recipe.1, self.builder
        ));
        s.into_bytes()
    }

    /// Parses an entry; only the canonical encoding is accepted.
    pub fn parse(bytes: &[u8]) -> Result<LogEntry, Error> {
        let s = std::str::from_utf8(bytes)
            .map_err(|e| Error::Entry(format!("not UTF-8 at offset {}", e.valid_up_to())))?;
        let body = s
            .strip_suffix('\n')
            .ok_or_else(|| Error::Entry("does not end with a newline".into()))?;
        let mut lines = body.split('\n').enumerate().peekable();
        let bad = |n: usize, m: &str| Error::Entry(format!("line {}: {m}", n + 1));
        match lines.next() {
            Some((_, ENTRY_V1)) => {}
            _ => return Err(Error::Entry(format!("first line is not {ENTRY_V1}"))),
        }
        let mut field = |key: &str| -> Result<(usize, String), Error> {
            let (n, l) = lines
                .next()
                .ok_or_else(|| Error::Entry(format!("missing {key} line")))?;
            let v = l
                .strip_prefix(key)
                .and_then(|r| r.strip_prefix(' '))
                .ok_or_else(|| bad(n, &format!("expected {key}")))?;
            Ok((n, v.to_owned()))
        };
        let kind: ArtifactKind = field("kind")?.1.parse()?;
        let name = field("name")?.1;
        let version = field("version")?.1;
        let mut rest: Vec<(usize, &str)> = body.split('\n').enumerate().skip(4).collect();
        let mut digests = Vec::new();
        let mut pcrs = Vec::new();
        let mut recipe = None;
        let mut builder = None;
        for (n, l) in rest.drain(..) {
            let parts: Vec<&str> = l.split(' ').collect();
            let hexval = |h: &str| -> Result<Digest, Error> {
                if h.bytes().any(|b| b.is_ascii_uppercase()) {
                    return Err(bad(n, "hex must be lower-case"));
                }
                hex::decode(h)
                    .map(Digest)
                    .map_err(|_| bad(n, "invalid hex"))
            };
            let bank = |b: &str| -> Result<HashAlg, Error> {
                HashAlg::from_str(b).map_err(|e| bad(n, &e.to_string()))
            };
            match parts.as_slice() {
                ["digest", b, h] => digests.push((bank(b)?, hexval(h)?)),
                ["pcr", i, b, p, h] => pcrs.push(PredictedPcr {
                    pcr: i.parse().map_err(|_| bad(n, "PCR index"))?,
                    bank: bank(b)?,
                    phase: p.parse().map_err(|_| bad(n, "phase"))?,
                    value: hexval(h)?,
                }),
                ["recipe", b, h] if recipe.is_none() => recipe = Some((bank(b)?, hexval(h)?)),
                ["builder", b] if builder.is_none() => builder = Some((*b).to_owned()),
                _ => return Err(bad(n, "unexpected line")),
            }
        }
        let e = LogEntry::new(
            kind,
            &name,
            &version,
            digests,
            pcrs,
            recipe.ok_or_else(|| Error::Entry("missing recipe line".into()))?,
            builder
                .as_deref()
                .ok_or_else(|| Error::Entry("missing builder line".into()))?,
        )?;
        if e.encode() != bytes {
            return Err(Error::Entry(
                "not in canonical form (field order, sorting or spelling)".into(),
            ));
        }
        Ok(e)
    }

    /// The JSON form (`imgctl log append --entry FILE` reads it; `log show` prints it).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "kind": self.kind,
            "name": self.name,
            "version": self.version,
            "digests": self.digests.iter().map(|(a, d)| (a.to_string(), serde_json::Value::from(d.to_hex()))).collect::<serde_json::Map<_, _>>(),
            "pcrs": self.pcrs.iter().map(|p| serde_json::json!({
                "pcr": p.pcr, "bank": p.bank.to_string(), "phase": phase_token(&p.phase), "value": p.value.to_hex()
            })).collect::<Vec<_>>(),
            "recipe": format!("{}:{}", self.recipe.0, self.recipe.1),
            "builder": self.builder,
        })
    }

    /// Reads the JSON form written by [`LogEntry::to_json`].
    pub fn from_json(v: &serde_json::Value) -> Result<LogEntry, Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct J {
            kind: ArtifactKind,
            name: String,
            version: String,
            digests: std::collections::BTreeMap<String, String>,
            #[serde(default)]
            pcrs: Vec<JP>,
            recipe: String,
            builder: String,
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct JP {
            pcr: u32,
            bank: String,
            phase: String,
            value: String,
        }
        let e = |m: String| Error::Entry(m);
        let j: J = serde_json::from_value(v.clone()).map_err(|x| e(x.to_string()))?;
        let bank = |b: &str| HashAlg::from_str(b).map_err(|x| e(x.to_string()));
        let hx = |h: &str| {
            hex::decode(h)
                .map(Digest)
                .map_err(|_| e(format!("invalid hex {h:?}")))
        };
        let digests = j
            .digests
            .iter()
            .map(|(b, h)| Ok((bank(b)?, hx(h)?)))
            .collect::<Result<Vec<_>, Error>>()?;
        let pcrs = j
            .pcrs
            .iter()
            .map(|p| {
                Ok(PredictedPcr {
                    pcr: p.pcr,
                    bank: bank(&p.bank)?,
                    phase: p
                        .phase
                        .parse()
                        .map_err(|x: imgctl_measure::Error| e(x.to_string()))?,
                    value: hx(&p.value)?,
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let (rb, rh) = j
            .recipe
            .split_once(':')
            .ok_or_else(|| e("recipe must be <bank>:<hex>".into()))?;
        LogEntry::new(
            j.kind,
            &j.name,
            &j.version,
            digests,
            pcrs,
            (bank(rb)?, hx(rh)?),
            &j.builder,
        )
    }
}

/// A log entry of either version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    V1(LogEntry),
    V2(Box<ArtifactRecord>),
}

impl Entry {
    /// Parses an entry by its first line; only canonical encodings are accepted.
    pub fn parse(bytes: &[u8]) -> Result<Entry, Error> {
        if ArtifactRecord::is_entry(bytes) {
            ArtifactRecord::parse_entry(bytes)
                .map(|r| Entry::V2(Box::new(r)))
                .map_err(|e| Error::Entry(e.to_string()))
        } else {
            LogEntry::parse(bytes).map(Entry::V1)
        }
    }

    /// The canonical bytes.
    pub fn encode(&self) -> Result<Vec<u8>, Error> {
        match self {
            Entry::V1(e) => Ok(e.encode()),
            Entry::V2(r) => r.encode_entry().map_err(|e| Error::Entry(e.to_string())),
        }
    }

    /// `uki`, `sysext`, `confext`, `policy` or `addon`.
    pub fn kind(&self) -> &'static str {
        match self {
            Entry::V1(e) => e.kind().as_str(),
            Entry::V2(r) => r.kind.as_str(),
        }
    }
    pub fn name(&self) -> &str {
        match self {
            Entry::V1(e) => e.name(),
            Entry::V2(r) => &r.name,
        }
    }
    pub fn version(&self) -> &str {
        match self {
            Entry::V1(e) => e.version(),
            Entry::V2(r) => &r.version,
        }
    }

    /// Who built it (the record's `builder`).
    pub fn builder(&self) -> &str {
        match self {
            Entry::V1(e) => e.builder(),
            Entry::V2(r) => &r.builder,
        }
    }

    /// The artifact's digests as `(what, algorithm, hex)`: v1's digests, or each file's.
    pub fn digest_list(&self) -> Vec<(String, String, String)> {
        match self {
            Entry::V1(e) => e
                .digests()
                .iter()
                .map(|(alg, d)| ("artifact".to_owned(), alg.to_string(), hex::encode(&d.0)))
                .collect(),
            Entry::V2(r) => r
                .files
                .iter()
                .flat_map(|f| {
                    f.digests
                        .iter()
                        .map(|(alg, d)| (format!("{} {}", f.role, f.path), alg.clone(), d.clone()))
                })
                .collect(),
        }
    }

    /// The JSON form: v1's [`LogEntry::to_json`], or the record's JSON form.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Entry::V1(e) => e.to_json(),
            Entry::V2(r) => serde_json::to_value(r).unwrap_or(serde_json::Value::Null),
        }
    }

    /// Reads either JSON form: an artifact record (or old manifest) by its `format`, else v1.
    pub fn from_json(v: &serde_json::Value) -> Result<Entry, Error> {
        if v.get("format").is_some() {
            let bytes = serde_json::to_vec(v).map_err(|e| Error::Entry(e.to_string()))?;
            ArtifactRecord::from_json("entry", &bytes)
                .map(|r| Entry::V2(Box::new(r)))
                .map_err(|e| Error::Entry(e.to_string()))
        } else {
            LogEntry::from_json(v).map(Entry::V1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> LogEntry {
        let d = |alg: HashAlg, b: u8| Digest(vec![b; alg.digest_size().unwrap_or(0)]);
        LogEntry::new(
            ArtifactKind::Uki,
            "demo",
            "1.0",
            vec![
                (HashAlg::SHA384, d(HashAlg::SHA384, 2)),
                (HashAlg::SHA256, d(HashAlg::SHA256, 1)),
            ],
            vec![
                PredictedPcr {
                    pcr: 11,
                    bank: HashAlg::SHA256,
                    phase: "enter-initrd".parse().unwrap(),
                    value: d(HashAlg::SHA256, 4),
                },
                PredictedPcr {
                    pcr: 11,
                    bank: HashAlg::SHA256,
                    phase: PhasePath::default(),
                    value: d(HashAlg::SHA256, 3),
                },
            ],
            (HashAlg::SHA256, d(HashAlg::SHA256, 5)),
            "imgctl/0.1.0",
        )
        .unwrap()
    }

    #[test]
    fn encoding_is_canonical_and_round_trips() {
        let e = sample();
        let bytes = e.encode();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(
            text.starts_with(
                "imgctl.dev/log-entry/v1\nkind uki\nname demo\nversion 1.0\ndigest sha256 0101"
            ),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "pcr 11 sha256 : {}\npcr 11 sha256 enter-initrd",
                "03".repeat(32)
            )),
            "{text}"
        );
        assert_eq!(LogEntry::parse(&bytes).unwrap(), e);
        assert_eq!(LogEntry::from_json(&e.to_json()).unwrap(), e);
        // Reordered lines, upper-case hex, trailing data: all rejected.
        let swapped = text.replacen("digest sha256", "digest sha999", 1);
        assert!(LogEntry::parse(swapped.as_bytes()).is_err());
        assert!(LogEntry::parse(text.to_uppercase().as_bytes()).is_err());
        assert!(LogEntry::parse(format!("{text}x\n").as_bytes()).is_err());
        let lines: Vec<&str> = text.lines().collect();
        let mut reordered = lines.clone();
        reordered.swap(4, 5);
        assert!(LogEntry::parse((reordered.join("\n") + "\n").as_bytes()).is_err());
    }

    #[test]
    fn both_versions_read_through_entry() {
        let v1 = sample();
        let e = Entry::parse(&v1.encode()).unwrap();
        assert_eq!(e, Entry::V1(v1.clone()));
        assert_eq!(e.kind(), "uki");
        assert_eq!(Entry::from_json(&e.to_json()).unwrap(), e);
        let r = imgctl_measure::record::sample();
        let bytes = r.encode_entry().unwrap();
        let e = Entry::parse(&bytes).unwrap();
        assert_eq!(e, Entry::V2(Box::new(r)));
        assert_eq!(e.encode().unwrap(), bytes);
        assert_eq!((e.kind(), e.name(), e.version()), ("uki", "demo", "1.10"));
        assert_eq!(Entry::from_json(&e.to_json()).unwrap(), e);
        // A broken v2 entry is a v2 error, not a v1 fallback.
        let mut bad = bytes.clone();
        bad.pop();
        let err = Entry::parse(&bad).unwrap_err().to_string();
        assert!(err.contains("newline"), "{err}");
    }

    proptest! {
        #[test]
        fn parser_accepts_only_what_it_would_write(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            if let Ok(e) = LogEntry::parse(&bytes) {
                prop_assert_eq!(e.encode(), bytes);
            }
        }
    }
}
