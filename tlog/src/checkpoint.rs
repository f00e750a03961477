//! C2SP tlog-checkpoint: the signed tree head of a log.
//!
//! The note text is `<origin>\n<tree size>\n<base64 root>\n` followed by optional non-empty
//! extension lines. The origin is non-empty; the size is ASCII decimal without leading zeros;
//! the root is the standard base64 of the 32-byte RFC 6962 root. A checkpoint is accepted when
//! the log's Ed25519 key signed it (C2SP signed-note rules, unknown signatures ignored) and,
//! its cosignatures meet the witness quorum ([`Policy::quorum`], C2SP tlog-policy).

use std::collections::BTreeSet;

use super::merkle::{verify_consistency, Hash};
use super::note::{self, NoteSigner, NoteVerifier};
use super::policy::{Quorum, TrustPolicy};
use super::{b64_decode, b64_encode, Error};

/// A checkpoint body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
    pub extensions: Vec<String>,
}

impl Checkpoint {
    /// The note text (with its final newline).
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            b64_encode(&self.root)
        );
        for e in &self.extensions {
            s.push_str(e);
            s.push('\n');
        }
        s
    }

    /// Parses a checkpoint note text strictly.
    pub fn parse_text(text: &str) -> Result<Checkpoint, Error> {
        let body = text
            .strip_suffix('\n')
            .ok_or_else(|| Error::Checkpoint("text does not end with a newline".into()))?;
        let mut lines = body.split('\n');
        let origin = lines.next().unwrap_or_default();
        if origin.is_empty() {
            return Err(Error::Checkpoint("empty origin line".into()));
        }
        let size_s = lines
            .next()
            .ok_or_else(|| Error::Checkpoint("missing tree size line".into()))?;
        if size_s.is_empty()
            || !size_s.bytes().all(|b| b.is_ascii_digit())
            || (size_s.len() > 1 && size_s.starts_with('0'))
        {
            return Err(Error::Checkpoint(format!(
                "tree size {size_s:?} is not a decimal without leading zeros"
            )));
        }
        let size: u64 = size_s
            .parse()
            .map_err(|_| Error::Checkpoint(format!("tree size {size_s:?} overflows")))?;
        let root_s = lines
            .next()
            .ok_or_else(|| Error::Checkpoint("missing root hash line".into()))?;
        let root: Hash = b64_decode(root_s)
            .and_then(|r| r.try_into().ok())
            .ok_or_else(|| {
                Error::Checkpoint(format!("root hash {root_s:?} is not base64 of 32 bytes"))
            })?;
        let extensions: Vec<String> = lines.map(str::to_owned).collect();
        if extensions.iter().any(String::is_empty) {
            return Err(Error::Checkpoint("empty extension line".into()));
        }
        Ok(Checkpoint {
            origin: origin.to_owned(),
            size,
            root,
            extensions,
        })
    }

    /// The signed checkpoint note, signed by the log key.
    pub fn sign(&self, log: &NoteSigner) -> Result<String, Error> {
        note::sign(&self.to_text(), &[log], 0)
    }
}

/// Which signatures a checkpoint needs to be accepted.
#[derive(Debug, Clone)]
pub struct Policy<'a> {
    /// The log's key (type 0x01).
    pub log: &'a NoteVerifier,
    /// The origin to accept; `None` means the log key's name.
    pub origin: Option<&'a str>,
    /// Witness keys (cosignature/v1 or Ed25519).
    pub witnesses: &'a [NoteVerifier],
    /// Which cosignatures of `witnesses` are needed (indices into it).
    pub quorum: Quorum,
}

impl<'a> Policy<'a> {
    /// Only the log's signature, origin = the log key's name.
    pub fn log_only(log: &'a NoteVerifier) -> Self {
        Policy {
            log,
            origin: None,
            witnesses: &[],
            quorum: Quorum::None,
        }
    }

    /// The checkpoint rule of a tlog-policy file for the log named `origin`: that log's key,
    /// the policy's witnesses and quorum. `None` when the policy lists no such log.
    pub fn from_trust(
        trust: &'a TrustPolicy,
        witnesses: &'a [NoteVerifier],
        origin: &str,
    ) -> Option<Self> {
        let log = trust.log_for(origin)?;
        Some(Policy {
            log: &log.key,
            origin: None,
            witnesses,
            quorum: trust.quorum.clone(),
        })
    }
}

/// A checkpoint whose signatures satisfied a [`Policy`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedCheckpoint {
    pub checkpoint: Checkpoint,
    /// Witnesses that cosigned, with their timestamps.
    pub cosigned_by: Vec<(String, Option<u64>)>,
}

/// Verifies a signed checkpoint under `policy`.
pub fn verify(bytes: &[u8], policy: &Policy<'_>) -> Result<VerifiedCheckpoint, Error> {
    let mut known: Vec<&NoteVerifier> = vec![policy.log];
    known.extend(policy.witnesses.iter());
    let opened = note::open(bytes, &known).map_err(|e| match e {
        Error::Note(m) => Error::Checkpoint(format!(
            "not accepted with log key {}+{:08x}: {m}",
            policy.log.name, policy.log.key_id
        )),
        e => e,
    })?;
    if !opened.signed_by(policy.log) {
        return Err(Error::Checkpoint(format!(
            "not signed by the log key {}+{:08x} (only by witnesses)",
            policy.log.name, policy.log.key_id
        )));
    }
    let checkpoint = Checkpoint::parse_text(&opened.text)?;
    let want_origin = policy.origin.unwrap_or(&policy.log.name);
    if checkpoint.origin != want_origin {
        return Err(Error::Checkpoint(format!(
            "origin {:?} is not the expected {want_origin:?}",
            checkpoint.origin
        )));
    }
    let cosigned_by: Vec<(String, Option<u64>)> = opened
        .verified_by
        .iter()
        .filter(|(v, _)| policy.witnesses.contains(v))
        .map(|(v, ts)| (v.name.clone(), *ts))
        .collect();
    let cosigned: BTreeSet<usize> = policy
        .witnesses
        .iter()
        .enumerate()
        .filter(|(_, w)| opened.signed_by(w))
        .map(|(i, _)| i)
        .collect();
    if !policy.quorum.satisfied_by(&cosigned) {
        let names: Vec<String> = policy.witnesses.iter().map(|w| w.name.clone()).collect();
        let by: Vec<&str> = cosigned_by.iter().map(|(n, _)| n.as_str()).collect();
        return Err(Error::Checkpoint(format!(
            "the witness quorum is not met: cosigned by {} ({}), the quorum needs {}",
            by.len(),
            if by.is_empty() {
                "none".to_owned()
            } else {
                by.join(", ")
            },
            policy.quorum.describe(&names)
        )));
    }
    Ok(VerifiedCheckpoint {
        checkpoint,
        cosigned_by,
    })
}

/// Checks that `new` extends `old` (same origin, not smaller, consistency proof valid).
pub fn check_consistency<P: AsRef<[u8]>>(
    old: &Checkpoint,
    new: &Checkpoint,
    proof: &[P],
) -> Result<(), Error> {
    if old.origin != new.origin {
        return Err(Error::Consistency(format!(
            "checkpoints are from different logs ({:?} and {:?})",
            old.origin, new.origin
        )));
    }
    if new.size < old.size {
        return Err(Error::Consistency(format!(
            "the log went backwards: new checkpoint has size {}, an earlier one had {}",
            new.size, old.size
        )));
    }
    if old.size == new.size {
        if old.root != new.root {
            return Err(Error::Consistency(format!(
                "two different roots for tree size {}: the log forked or rewrote history",
                old.size
            )));
        }
        return Ok(());
    }
    if old.size == 0 {
        // Every tree extends the empty tree (C2SP tlog-witness: empty proof accepted).
        return Ok(());
    }
    verify_consistency(old.size, new.size, proof, &old.root, &new.root).map_err(|e| {
        Error::Consistency(format!(
            "size {} is not an extension of size {} (history was rewritten?): {e}",
            new.size, old.size
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::note::VerifierKind;

    #[test]
    fn spec_example_body_parses_and_round_trips() {
        let text =
            "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n";
        let c = Checkpoint::parse_text(text).unwrap();
        assert_eq!(c.origin, "example.com/behind-the-sofa");
        assert_eq!(c.size, 20852163);
        assert_eq!(c.to_text(), text);
        for bad in [
            "o\n01\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n",
            "o\n1\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2=\n",
            "\n1\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n",
            "o\n1\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n\n",
            "o\n1\n",
        ] {
            assert!(Checkpoint::parse_text(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn policy_requires_log_key_origin_and_witnesses() {
        let log = NoteSigner::from_seed("example.com/log", VerifierKind::Ed25519, [1; 32]).unwrap();
        let w = NoteSigner::from_seed("w.example", VerifierKind::CosignatureV1, [2; 32]).unwrap();
        let c = Checkpoint {
            origin: "example.com/log".into(),
            size: 3,
            root: [5; 32],
            extensions: vec![],
        };
        let signed = note::sign(&c.to_text(), &[&log, &w], 1700000000).unwrap();
        let wv = [w.verifier().clone()];
        let p = Policy {
            log: log.verifier(),
            origin: None,
            witnesses: &wv,
            quorum: Quorum::threshold(1, 1),
        };
        let v = verify(signed.as_bytes(), &p).unwrap();
        assert_eq!(v.checkpoint, c);
        assert_eq!(
            v.cosigned_by,
            vec![("w.example".to_owned(), Some(1700000000))]
        );
        let only_log = c.sign(&log).unwrap();
        assert!(verify(only_log.as_bytes(), &p)
            .unwrap_err()
            .to_string()
            .contains("quorum is not met"));
        let other =
            NoteSigner::from_seed("example.com/log", VerifierKind::Ed25519, [3; 32]).unwrap();
        let forged = c.sign(&other).unwrap();
        let err = verify(forged.as_bytes(), &Policy::log_only(log.verifier())).unwrap_err();
        assert!(
            err.to_string().contains("no signature from a known key"),
            "{err}"
        );
    }
}
