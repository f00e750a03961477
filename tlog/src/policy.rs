//! C2SP tlog-policy: which logs and witnesses a verifier trusts, and the quorum of witness
//! cosignatures a checkpoint needs.
//!
//! The file is line based (`\n`), items separated by ASCII spaces and tabs; empty lines and
//! lines starting with `#` (after optional whitespace) are ignored:
//!
//! ```text
//! log <vkey> [<url>]
//! witness <name> <vkey> [<url>]
//! group <name> all|any|<k> <member>...
//! quorum <name>|none
//! ```
//!
//! A group or the quorum may only name witnesses and groups defined on earlier lines; a name is a
//! member of one group at most once; `1 <= k <= n`; exactly one quorum line; no two logs and no
//! two witnesses share a public key. The only control characters allowed are tab and newline.
//! Names are opaque octet strings (here: the UTF-8 text as given). A checkpoint is valid under
//! the policy when one of the logs signed it and the cosignatures of the witnesses that verify
//! satisfy the quorum ([`Quorum::satisfied_by`]).

use std::collections::BTreeSet;
use std::fmt;

use crate::note::{NoteVerifier, VerifierKind};
use crate::Error;

/// Largest policy file read (the spec recommends supporting at least 32 logs, witnesses and
/// groups; a vkey line is under 200 bytes).
pub const MAX_POLICY_LEN: usize = 64 * 1024;
/// At most this many logs, witnesses and groups each.
pub const MAX_ITEMS: usize = 64;

/// A witness the policy knows: its policy-local name, its cosignature key and where it
/// accepts `add-checkpoint` requests (the tlog-witness submission prefix), if given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyWitness {
    pub name: String,
    pub key: NoteVerifier,
    pub url: Option<String>,
}

/// A log the policy knows; its key name is its origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyLog {
    pub key: NoteVerifier,
    pub url: Option<String>,
}

/// The rule a set of cosigning witnesses must meet. Leaves are indices into the policy's
/// witness list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Quorum {
    /// No cosignature needed.
    None,
    /// This witness must have cosigned.
    Witness(usize),
    /// At least `k` of the members must be satisfied.
    Group {
        name: String,
        k: usize,
        members: Vec<Quorum>,
    },
}

impl Quorum {
    /// `k` of the first `n` witnesses (the flat form of `--witness … --min-witnesses k`).
    pub fn threshold(k: usize, n: usize) -> Quorum {
        if k == 0 || n == 0 {
            return Quorum::None;
        }
        Quorum::Group {
            name: format!("{k} of {n}"),
            k,
            members: (0..n).map(Quorum::Witness).collect(),
        }
    }

    /// Whether the witnesses at the indices in `cosigned` satisfy the rule.
    pub fn satisfied_by(&self, cosigned: &BTreeSet<usize>) -> bool {
        match self {
            Quorum::None => true,
            Quorum::Witness(i) => cosigned.contains(i),
            Quorum::Group { k, members, .. } => {
                members.iter().filter(|m| m.satisfied_by(cosigned)).count() >= *k
            }
        }
    }

    /// Whether the rule needs no cosignature at all.
    pub fn is_none(&self) -> bool {
        matches!(self, Quorum::None)
    }

    /// The rule in words, naming witnesses by `names`.
    pub fn describe(&self, names: &[String]) -> String {
        match self {
            Quorum::None => "no cosignature".into(),
            Quorum::Witness(i) => names.get(*i).cloned().unwrap_or_else(|| format!("#{i}")),
            Quorum::Group { name, k, members } => {
                let inner: Vec<String> = members.iter().map(|m| m.describe(names)).collect();
                format!("{name}: {k} of ({})", inner.join(", "))
            }
        }
    }
}

/// A parsed tlog-policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustPolicy {
    pub logs: Vec<PolicyLog>,
    pub witnesses: Vec<PolicyWitness>,
    pub quorum: Quorum,
}

#[derive(Debug, Clone)]
enum Named {
    Witness(usize),
    Group(Quorum),
}

fn err(line: usize, msg: impl fmt::Display) -> Error {
    Error::Policy(format!("line {line}: {msg}"))
}

fn optional_url(line: usize, url: Option<&str>) -> Result<Option<String>, Error> {
    match url {
        None => Ok(None),
        Some(u) if u.starts_with("http://") || u.starts_with("https://") => Ok(Some(u.to_owned())),
        Some(u) => Err(err(
            line,
            format!("{u:?} is not an http:// or https:// URL"),
        )),
    }
}

impl TrustPolicy {
    /// Parses a policy file (C2SP tlog-policy).
    pub fn parse(bytes: &[u8]) -> Result<TrustPolicy, Error> {
        if bytes.len() > MAX_POLICY_LEN {
            return Err(Error::Policy(format!(
                "{} bytes is above the {MAX_POLICY_LEN}-byte limit",
                bytes.len()
            )));
        }
        if let Some(pos) = bytes
            .iter()
            .position(|&b| b < 0x20 && b != b'\t' && b != b'\n' || b == 0x7f)
        {
            return Err(Error::Policy(format!(
                "control character {:#04x} at byte {pos} (only tab and newline are allowed)",
                bytes[pos]
            )));
        }
        let text =
            std::str::from_utf8(bytes).map_err(|e| Error::Policy(format!("not UTF-8: {e}")))?;
        let mut logs: Vec<PolicyLog> = Vec::new();
        let mut witnesses: Vec<PolicyWitness> = Vec::new();
        let mut names: Vec<(String, Named)> = Vec::new();
        let mut groups = 0usize;
        let mut quorum: Option<Quorum> = None;
        for (i, raw) in text.split('\n').enumerate() {
            let n = i + 1;
            let line = raw.trim_matches([' ', '\t']);
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let words: Vec<&str> = line.split([' ', '\t']).filter(|w| !w.is_empty()).collect();
            let lookup = |name: &str, names: &[(String, Named)]| {
                names
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| v.clone())
            };
            match words.as_slice() {
                ["log", vkey, rest @ ..] if rest.len() <= 1 => {
                    let key = NoteVerifier::parse_vkey(vkey).map_err(|e| err(n, e))?;
                    if key.kind != VerifierKind::Ed25519 {
                        return Err(err(n, "a log key must be an Ed25519 note key (type 0x01)"));
                    }
                    if logs.iter().any(|l| l.key.public_key == key.public_key) {
                        return Err(err(n, format!("duplicate log key {}", key.name)));
                    }
                    if logs.len() == MAX_ITEMS {
                        return Err(err(n, format!("more than {MAX_ITEMS} logs")));
                    }
                    logs.push(PolicyLog {
                        key,
                        url: optional_url(n, rest.first().copied())?,
                    });
                }
                ["witness", name, vkey, rest @ ..] if rest.len() <= 1 => {
                    if *name == "none" || lookup(name, &names).is_some() {
                        return Err(err(n, format!("name {name:?} is already defined")));
                    }
                    let key = NoteVerifier::parse_vkey(vkey).map_err(|e| err(n, e))?;
                    if key.kind != VerifierKind::CosignatureV1 {
                        return Err(err(
                            n,
                            "a witness key must be a cosignature/v1 key (type 0x04)",
                        ));
                    }
                    if witnesses.iter().any(|w| w.key.public_key == key.public_key) {
                        return Err(err(n, format!("duplicate witness key for {name}")));
                    }
                    if witnesses.len() == MAX_ITEMS {
                        return Err(err(n, format!("more than {MAX_ITEMS} witnesses")));
                    }
                    names.push((name.to_string(), Named::Witness(witnesses.len())));
                    witnesses.push(PolicyWitness {
                        name: name.to_string(),
                        key,
                        url: optional_url(n, rest.first().copied())?,
                    });
                }
                ["group", name, threshold, members @ ..] if !members.is_empty() => {
                    if *name == "none" || lookup(name, &names).is_some() {
                        return Err(err(n, format!("name {name:?} is already defined")));
                    }
                    if groups == MAX_ITEMS {
                        return Err(err(n, format!("more than {MAX_ITEMS} groups")));
                    }
                    let mut seen = BTreeSet::new();
                    let mut rules = Vec::new();
                    for m in members {
                        if !seen.insert(*m) {
                            return Err(err(n, format!("{m:?} is listed twice in group {name}")));
                        }
                        rules.push(match lookup(m, &names) {
                            Some(Named::Witness(i)) => Quorum::Witness(i),
                            Some(Named::Group(q)) => q,
                            None => {
                                return Err(err(
                                    n,
                                    format!("{m:?} is not a witness or group defined above"),
                                ))
                            }
                        });
                    }
                    let k = match *threshold {
                        "all" => rules.len(),
                        "any" => 1,
                        t => {
                            let k = (!t.starts_with('0') && t.bytes().all(|b| b.is_ascii_digit()))
                                .then(|| t.parse::<usize>().ok())
                                .flatten()
                                .ok_or_else(|| {
                                    err(n, format!("threshold {t:?} is not all, any or a number"))
                                })?;
                            if k > rules.len() {
                                return Err(err(
                                    n,
                                    format!("threshold {k} is above the {} members", rules.len()),
                                ));
                            }
                            k
                        }
                    };
                    groups += 1;
                    names.push((
                        name.to_string(),
                        Named::Group(Quorum::Group {
                            name: name.to_string(),
                            k,
                            members: rules,
                        }),
                    ));
                }
                ["quorum", name] => {
                    if quorum.is_some() {
                        return Err(err(n, "a second quorum line"));
                    }
                    quorum = Some(match (*name, lookup(name, &names)) {
                        ("none", _) => Quorum::None,
                        (_, Some(Named::Witness(i))) => Quorum::Witness(i),
                        (_, Some(Named::Group(q))) => q,
                        (_, None) => {
                            return Err(err(
                                n,
                                format!("{name:?} is not a witness or group defined above"),
                            ))
                        }
                    });
                }
                [kw, ..] => {
                    return Err(err(
                        n,
                        format!(
                            "{:?} is not a valid policy line (log, witness, group, quorum)",
                            kw
                        ),
                    ))
                }
                [] => {}
            }
        }
        let quorum = quorum.ok_or_else(|| Error::Policy("no quorum line".into()))?;
        Ok(TrustPolicy {
            logs,
            witnesses,
            quorum,
        })
    }

    /// The witness keys, in policy order (what [`Quorum::Witness`] indexes).
    pub fn witness_keys(&self) -> Vec<NoteVerifier> {
        self.witnesses.iter().map(|w| w.key.clone()).collect()
    }

    /// The log whose key name is `origin`.
    pub fn log_for(&self, origin: &str) -> Option<&PolicyLog> {
        self.logs.iter().find(|l| l.key.name == origin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::note::NoteSigner;

    fn wkey(name: &str, seed: u8) -> String {
        NoteSigner::from_seed(name, VerifierKind::CosignatureV1, [seed; 32])
            .unwrap()
            .verifier()
            .vkey()
    }
    fn lkey(name: &str) -> String {
        NoteSigner::from_seed(name, VerifierKind::Ed25519, [9; 32])
            .unwrap()
            .verifier()
            .vkey()
    }

    fn spec_example() -> String {
        let mut s = format!("# example\nlog {}\n\n", lkey("example.com/log"));
        for (i, w) in ["X1", "X2", "X3", "Y1", "Y2", "Y3"].iter().enumerate() {
            s += &format!(
                "  witness\t{w} {} https://{w}.example/\n",
                wkey(w, i as u8 + 1)
            );
        }
        s += "group X-witnesses 2 X1 X2 X3\ngroup Y-witnesses any Y1 Y2 Y3\n";
        s += "group X-and-Y all X-witnesses Y-witnesses\nquorum X-and-Y\n";
        s
    }

    #[test]
    fn the_specs_two_level_example_needs_two_x_and_one_y() {
        let p = TrustPolicy::parse(spec_example().as_bytes()).unwrap();
        assert_eq!(p.logs.len(), 1);
        assert_eq!(p.witnesses.len(), 6);
        assert_eq!(p.witnesses[2].url.as_deref(), Some("https://X3.example/"));
        let set = |v: &[usize]| v.iter().copied().collect::<BTreeSet<_>>();
        assert!(p.quorum.satisfied_by(&set(&[0, 1, 3])));
        assert!(p.quorum.satisfied_by(&set(&[0, 2, 5])));
        assert!(!p.quorum.satisfied_by(&set(&[0, 3, 4, 5])), "one X only");
        assert!(!p.quorum.satisfied_by(&set(&[0, 1, 2])), "no Y");
        assert!(!p.quorum.satisfied_by(&set(&[])));
    }

    #[test]
    fn quorum_none_and_a_single_witness() {
        let p = TrustPolicy::parse(b"quorum none\n").unwrap();
        assert!(p.quorum.is_none() && p.quorum.satisfied_by(&BTreeSet::new()));
        let p = TrustPolicy::parse(format!("witness w {}\nquorum w\n", wkey("w", 1)).as_bytes())
            .unwrap();
        assert_eq!(p.quorum, Quorum::Witness(0));
    }

    #[test]
    fn threshold_is_k_of_n() {
        let q = Quorum::threshold(2, 3);
        assert!(q.satisfied_by(&[0, 2].into()));
        assert!(!q.satisfied_by(&[1].into()));
        assert_eq!(Quorum::threshold(0, 3), Quorum::None);
    }

    #[test]
    fn malformed_policies_are_errors_naming_the_line() {
        let w1 = wkey("w1", 1);
        let w2 = wkey("w2", 2);
        let cases: Vec<(String, &str)> = vec![
            ("".into(), "no quorum line"),
            (
                "quorum none\nquorum none\n".into(),
                "line 2: a second quorum",
            ),
            (
                "quorum w\n".into(),
                "line 1: \"w\" is not a witness or group",
            ),
            (
                format!("group g 1 w\nwitness w {w1}\nquorum g\n"),
                "line 1: \"w\"",
            ),
            (
                format!("witness w {w1}\nwitness w {w2}\nquorum w\n"),
                "line 2: name \"w\" is already",
            ),
            (
                format!("witness a {w1}\nwitness b {w1}\nquorum a\n"),
                "duplicate witness key",
            ),
            (
                format!("witness a {w1}\ngroup g 2 a\nquorum g\n"),
                "threshold 2 is above",
            ),
            (
                format!("witness a {w1}\ngroup g 0 a\nquorum g\n"),
                "threshold \"0\"",
            ),
            (
                format!("witness a {w1}\ngroup g 1 a a\nquorum g\n"),
                "listed twice",
            ),
            (
                format!("witness a {w1}\ngroup g 1\nquorum g\n"),
                "not a valid policy line",
            ),
            (
                format!("witness none {w1}\nquorum none\n"),
                "already defined",
            ),
            (
                format!("log {w1}\nquorum none\n"),
                "must be an Ed25519 note key",
            ),
            (
                format!("witness a {}\nquorum a\n", lkey("l")),
                "must be a cosignature/v1 key",
            ),
            (format!("witness a {w1} ftp://x\nquorum a\n"), "not an http"),
            ("logs x\nquorum none\n".into(), "\"logs\" is not a valid"),
            ("quorum none\r\n".into(), "control character 0x0d"),
        ];
        for (text, want) in cases {
            let e = TrustPolicy::parse(text.as_bytes()).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e} (wanted {want:?})");
        }
        let big = vec![b'#'; MAX_POLICY_LEN + 1];
        assert!(TrustPolicy::parse(&big).is_err());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = TrustPolicy::parse(&bytes);
        }
    }
}
