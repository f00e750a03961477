//! References published in a transparency log: the verifier's half of the locked loop.
//!
//! An artifact is a reference only once it is in the log: its record (a version-2 entry,
//! `imgctl-record/2`) must hash, with every other entry, to the root of a checkpoint the log's
//! key signed (and, with a C2SP tlog-policy, a quorum of witnesses cosigned), or come with a
//! `.tlog-proof` leading to such a checkpoint. An event that matches none of them is then
//! reported as "not published" by [`crate::verify`].
//!
//! [`PublishedLog`] keeps a log's entries as of the checkpoint it last verified, so that a
//! verifier that checks many machines against one log (`imgctl serve`) reads the log once and
//! afterwards only its checkpoint and, when the log grew, the new entries, after checking that
//! the new checkpoint extends the old one (RFC 6962 consistency proof from the log's tiles).
//! [`PublishedLog::check_extends`] checks a checkpoint remembered elsewhere (a state file, a
//! database) against the view: a log that shows two histories is a split view.
//!
//! Nothing here opens a file or a socket: the log's resources come through
//! [`imgctl_tlog::TileFetch`], which the caller opens (a folder or an HTTP(S) URL), and files
//! (a vkey, a witness policy, proofs) are passed as bytes.

use imgctl_tlog::checkpoint::{self, Checkpoint, Policy};
use imgctl_tlog::client::fetch_tile;
use imgctl_tlog::merkle::consistency_proof;
use imgctl_tlog::tiles::{TileId, TileKind, TileNodes};
use imgctl_tlog::{MemTree, NoteVerifier, TileFetch};

use crate::verify::{self, Artifact, References};

/// Why published references could not be established.
#[derive(Debug, thiserror::Error)]
pub enum PublishedError {
    /// A log key or witness policy that is malformed or does not fit together.
    #[error("{0}")]
    Trust(String),
    /// The log could not be read or its contents are not what its checkpoint signs.
    #[error("the log {source_name}: {message}")]
    Log {
        source_name: String,
        message: String,
    },
    /// The log shows a history that is not an extension of one verified before: it forked,
    /// rewrote history or went backwards.
    #[error("the log {origin}: split view: {message}")]
    SplitView { origin: String, message: String },
    /// The checkpoint remembered is newer than the log's current one: read the log again
    /// (another verifier saw it grow); if it stays behind, the log went backwards.
    #[error("the log {origin}: its checkpoint (size {have}) is older than one verified before (size {seen})")]
    Behind {
        origin: String,
        have: u64,
        seen: u64,
    },
    /// A `.tlog-proof` that is malformed or does not verify.
    #[error("{file}: {message}")]
    Proof { file: String, message: String },
    /// A log entry whose artifact record is not a usable reference.
    #[error(transparent)]
    Record(#[from] crate::Error),
}

/// The log's key and, with a witness policy, the witnesses and quorum its checkpoints need.
#[derive(Debug, Clone)]
pub struct Trust {
    key: NoteVerifier,
    witnesses: Vec<NoteVerifier>,
    quorum: Option<imgctl_tlog::Quorum>,
}

impl Trust {
    /// The log key `vkey` (C2SP signed-note verifier key) and optionally a C2SP tlog-policy
    /// (`(name for messages, bytes)`) whose witness quorum must cosign; a policy that lists
    /// logs must list this key.
    pub fn new(vkey: &str, witness_policy: Option<(&str, &[u8])>) -> Result<Trust, PublishedError> {
        let key = NoteVerifier::parse_vkey(vkey.trim())
            .map_err(|e| PublishedError::Trust(format!("the log's vkey: {e}")))?;
        let Some((name, bytes)) = witness_policy else {
            return Ok(Trust {
                key,
                witnesses: Vec::new(),
                quorum: None,
            });
        };
        let t = imgctl_tlog::TrustPolicy::parse(bytes)
            .map_err(|e| PublishedError::Trust(format!("{name}: {e}")))?;
        if !t.logs.is_empty() && !t.logs.iter().any(|l| l.key == key) {
            return Err(PublishedError::Trust(format!(
                "{name}: the policy does not list the log key {}",
                key.vkey()
            )));
        }
        Ok(Trust {
            key,
            witnesses: t.witness_keys(),
            quorum: Some(t.quorum.clone()),
        })
    }

    /// What a checkpoint of the log needs to be accepted.
    pub fn policy(&self) -> Policy<'_> {
        let mut policy = Policy::log_only(&self.key);
        if let Some(q) = &self.quorum {
            policy.witnesses = &self.witnesses;
            policy.quorum = q.clone();
        }
        policy
    }
}

/// The artifact an entry records, when it is a version-2 artifact record that carries
/// digests to check events against; entries of other formats (v1, raw) are not references.
pub fn entry_artifact(name: &str, entry: &[u8]) -> Result<Option<Artifact>, PublishedError> {
    match imgctl_tlog::Entry::parse(entry) {
        Ok(imgctl_tlog::Entry::V2(r)) => Ok(verify::artifact_from_record(name, &r)?),
        _ => Ok(None),
    }
}

/// Adds the record a `.tlog-proof` (`data`, named `file` in messages) carries to `refs`, once
/// its inclusion proof leads to a checkpoint `trust` accepts (offline: no log is read).
pub fn add_proof(
    file: &str,
    data: &[u8],
    trust: &Trust,
    refs: &mut References,
) -> Result<(), PublishedError> {
    let bad = |message: String| PublishedError::Proof {
        file: file.to_owned(),
        message,
    };
    let proof = imgctl_tlog::TlogProof::parse(data).map_err(|e| bad(e.to_string()))?;
    let entry = proof.extra.as_deref().ok_or_else(|| {
        bad("the proof carries no entry (no `extra` line): give the log instead".into())
    })?;
    let vc = proof
        .verify(entry, &trust.policy())
        .map_err(|e| bad(e.to_string()))?;
    let name = format!(
        "{file} (entry {} of {} at size {})",
        proof.index, vc.checkpoint.origin, vc.checkpoint.size
    );
    if let Some(a) = entry_artifact(&name, entry)? {
        refs.artifacts.push(a);
    }
    Ok(())
}

/// The most entries a [`PublishedLog`] holds.
pub const MAX_ENTRIES: u64 = imgctl_tlog::client::MAX_READ_ENTRIES;

/// A log's references as of the checkpoint last verified: the checkpoint, the Merkle tree of
/// every entry (to check older checkpoints against) and the artifacts the entries record.
#[derive(Debug, Clone)]
pub struct PublishedLog {
    source: String,
    checkpoint: Checkpoint,
    note: String,
    tree: MemTree,
    artifacts: Vec<Artifact>,
}

impl PublishedLog {
    /// Reads the whole log as of its current checkpoint (verified under `trust`); the entries
    /// must hash to the checkpoint's root.
    pub fn read(src: &dyn TileFetch, trust: &Trust) -> Result<PublishedLog, PublishedError> {
        let (checkpoint, note) = current(src, trust)?;
        let mut log = PublishedLog {
            source: src.describe(),
            checkpoint: Checkpoint {
                origin: checkpoint.origin.clone(),
                size: 0,
                root: imgctl_tlog::merkle::empty_root(),
                extensions: Vec::new(),
            },
            note: String::new(),
            tree: MemTree::new(),
            artifacts: Vec::new(),
        };
        log.extend_to(src, checkpoint, note)?;
        Ok(log)
    }

    /// Reads the log's current checkpoint and, when the log grew, checks that it extends the
    /// one held (consistency proof from the tiles) and reads only the new entries. A log that
    /// went backwards or shows another history is [`PublishedError::SplitView`]; on any error
    /// the view is left as it was. Returns whether the view changed.
    pub fn refresh(&mut self, src: &dyn TileFetch, trust: &Trust) -> Result<bool, PublishedError> {
        let (new, note) = current(src, trust)?;
        let old = &self.checkpoint;
        if new.size == old.size && new.root == old.root && new.origin == old.origin {
            // The same tree; the note may carry other cosignatures.
            self.note = note;
            return Ok(false);
        }
        let split = |e: imgctl_tlog::Error| {
            PublishedError::SplitView {
            origin: old.origin.clone(),
            message: format!(
                "the checkpoint of size {} is not consistent with the one of size {} verified before: {e}",
                new.size, old.size
            ),
        }
        };
        let proof = if new.size > old.size && old.size > 0 {
            let mut nodes = TileNodes::new(new.size, imgctl_tlog::client::tile_fetcher(src));
            consistency_proof(&mut nodes, old.size, new.size).map_err(|e| self.log_error(e))?
        } else {
            Vec::new()
        };
        checkpoint::check_consistency(old, &new, &proof).map_err(split)?;
        self.extend_to(src, new, note)?;
        Ok(true)
    }

    fn log_error(&self, e: impl std::fmt::Display) -> PublishedError {
        PublishedError::Log {
            source_name: self.source.clone(),
            message: e.to_string(),
        }
    }

    /// Reads the entries from the held size to `new.size` and moves the view to `new` once
    /// the whole tree has `new`'s root.
    fn extend_to(
        &mut self,
        src: &dyn TileFetch,
        new: Checkpoint,
        note: String,
    ) -> Result<(), PublishedError> {
        if new.size > MAX_ENTRIES {
            return Err(self.log_error(format!(
                "{} entries, more than the {MAX_ENTRIES} read",
                new.size
            )));
        }
        let from = self.tree.size();
        let mut tree = self.tree.clone();
        let mut artifacts = Vec::new();
        for t in from / 256..new.size.div_ceil(256) {
            let id =
                TileId::for_size(TileKind::Entries, t, new.size).map_err(|e| self.log_error(e))?;
            let bundle = fetch_tile(src, &id).map_err(|e| self.log_error(e))?;
            let entries =
                imgctl_tlog::tiles::parse_bundle(&id, &bundle).map_err(|e| self.log_error(e))?;
            for (i, e) in (t * 256..).zip(entries) {
                if i < from {
                    continue;
                }
                tree.push(e);
                if let Some(a) = entry_artifact(&format!("{} entry {i}", self.source), e)? {
                    artifacts.push(a);
                }
            }
        }
        if tree.size() != new.size || tree.root() != new.root {
            return Err(self.log_error(format!(
                "the entries do not hash to the checkpoint's root (size {})",
                new.size
            )));
        }
        self.tree = tree;
        self.artifacts.extend(artifacts);
        self.checkpoint = new;
        self.note = note;
        Ok(())
    }

    /// Checks that the checkpoint `older` (a signed note verified under `trust`, e.g. the
    /// last one a verifier stored) is a state of this view's log: same origin and, at its
    /// size, the same root. A newer one is [`PublishedError::Behind`].
    pub fn check_extends(&self, older: &[u8], trust: &Trust) -> Result<(), PublishedError> {
        let origin = self.checkpoint.origin.clone();
        let old = checkpoint::verify(older, &trust.policy())
            .map_err(|e| PublishedError::Trust(format!("the checkpoint verified before: {e}")))?
            .checkpoint;
        if old.origin != origin {
            return Err(PublishedError::SplitView {
                origin,
                message: format!(
                    "the checkpoint verified before is of the log {}",
                    old.origin
                ),
            });
        }
        if old.size > self.checkpoint.size {
            return Err(PublishedError::Behind {
                origin,
                have: self.checkpoint.size,
                seen: old.size,
            });
        }
        let root = self.tree.root_at(old.size).map_err(|e| self.log_error(e))?;
        if root != old.root {
            return Err(PublishedError::SplitView {
                origin,
                message: format!(
                    "the log's tree at size {} (now size {}) does not have the root of the checkpoint verified before: it forked or rewrote history",
                    old.size, self.checkpoint.size
                ),
            });
        }
        Ok(())
    }

    /// Adds the artifacts of the log to `refs` and names the log as where they were published.
    pub fn add_references(&self, refs: &mut References) {
        refs.artifacts.extend(self.artifacts.iter().cloned());
        let n = if self.checkpoint.size == 1 {
            "entry"
        } else {
            "entries"
        };
        refs.published_in = Some(format!(
            "the log {} ({} {n})",
            self.source, self.checkpoint.size
        ));
    }

    /// The checkpoint the view is as of.
    pub fn checkpoint(&self) -> &Checkpoint {
        &self.checkpoint
    }

    /// The signed note of that checkpoint, as the log served it.
    pub fn note(&self) -> &str {
        &self.note
    }
}

/// The log's current checkpoint, verified under `trust`, and its note text.
fn current(src: &dyn TileFetch, trust: &Trust) -> Result<(Checkpoint, String), PublishedError> {
    let log = |message: String| PublishedError::Log {
        source_name: src.describe(),
        message,
    };
    let (vc, bytes) = imgctl_tlog::client::fetch_checkpoint(src, &trust.policy())
        .map_err(|e| log(e.to_string()))?;
    let note = String::from_utf8(bytes).map_err(|_| log("the checkpoint is not UTF-8".into()))?;
    Ok((vc.checkpoint, note))
}

#[cfg(test)]
mod tests {
    use super::*;
    use imgctl_tlog::note::VerifierKind;
    use imgctl_tlog::tiles::Edge;
    use imgctl_tlog::NoteSigner;
    use proptest::prelude::*;
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    /// A log served from memory, counting the resources read.
    #[derive(Default)]
    struct MemLog {
        files: BTreeMap<String, Vec<u8>>,
        reads: RefCell<Vec<String>>,
    }

    impl TileFetch for MemLog {
        fn get(&self, path: &str) -> Result<Option<Vec<u8>>, imgctl_tlog::StoreError> {
            self.reads.borrow_mut().push(path.to_owned());
            Ok(self.files.get(path).cloned())
        }
        fn describe(&self) -> String {
            "mem".into()
        }
    }

    fn key() -> NoteSigner {
        NoteSigner::from_seed("example.org/log", VerifierKind::Ed25519, [7; 32]).unwrap()
    }

    fn trust() -> Trust {
        Trust::new(&key().verifier().vkey(), None).unwrap()
    }

    /// Appends `entries` to `log` (tiles and a checkpoint signed by the test key).
    fn append(log: &mut MemLog, edge: &mut Edge, entries: &[Vec<u8>]) -> String {
        for (id, bytes) in edge.append(entries).unwrap() {
            log.files.insert(id.path(), bytes);
        }
        let note = Checkpoint {
            origin: "example.org/log".into(),
            size: edge.size(),
            root: edge.root(),
            extensions: Vec::new(),
        }
        .sign(&key())
        .unwrap();
        log.files
            .insert("checkpoint".into(), note.clone().into_bytes());
        note
    }

    fn entries(tag: u8, from: u64, to: u64) -> Vec<Vec<u8>> {
        (from..to)
            .map(|i| format!("{tag} {i}").into_bytes())
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Reading a log at size a and refreshing it at size b holds what reading it at b
        /// does, reads no entry bundle before a's last one, and any checkpoint of it up to b
        /// extends the view; a fork at any index below a is a split view, both for the
        /// refresh and for a fresh read checked against a's checkpoint.
        #[test]
        fn refresh_equals_a_fresh_read_and_a_fork_is_a_split_view(
            a in 1u64..600, grow in 0u64..600, fork_at in 0u64..600,
        ) {
            let b = a + grow;
            let fork_at = fork_at % a;
            let (mut log, mut edge) = (MemLog::default(), Edge::empty());
            let note_a = append(&mut log, &mut edge, &entries(0, 0, a));
            let mut view = PublishedLog::read(&log, &trust()).unwrap();
            let note_b = append(&mut log, &mut edge, &entries(0, a, b));
            log.reads.borrow_mut().clear();
            prop_assert_eq!(view.refresh(&log, &trust()).unwrap(), b > a);
            let first_bundle = format!("tile/entries/{}", imgctl_tlog::tiles::index_path(a / 256));
            for r in log.reads.borrow().iter().filter(|r| r.starts_with("tile/entries/")) {
                prop_assert!(r.as_str() >= first_bundle.as_str(), "read {} again", r);
            }
            let fresh = PublishedLog::read(&log, &trust()).unwrap();
            prop_assert_eq!(view.checkpoint(), fresh.checkpoint());
            prop_assert_eq!(view.note(), note_b.as_str());
            view.check_extends(note_a.as_bytes(), &trust()).unwrap();
            fresh.check_extends(note_a.as_bytes(), &trust()).unwrap();

            // Same key and origin, another entry at fork_at, as long as b.
            let (mut forked, mut fedge) = (MemLog::default(), Edge::empty());
            let mut es = entries(0, 0, b);
            es[fork_at as usize] = b"forked".to_vec();
            append(&mut forked, &mut fedge, &es);
            let before = view.checkpoint().clone();
            let is_split = |e: PublishedError| matches!(e, PublishedError::SplitView { .. });
            prop_assert!(is_split(view.refresh(&forked, &trust()).unwrap_err()));
            prop_assert_eq!(view.checkpoint(), &before);
            let fork_view = PublishedLog::read(&forked, &trust()).unwrap();
            prop_assert!(is_split(fork_view.check_extends(note_a.as_bytes(), &trust()).unwrap_err()));
            // A log that went backwards: behind what was verified.
            if b > a {
                let e = fresh_at(a).check_extends(note_b.as_bytes(), &trust()).unwrap_err();
                prop_assert!(matches!(e, PublishedError::Behind { .. }), "{e}");
            }
        }
    }

    fn fresh_at(n: u64) -> PublishedLog {
        let (mut log, mut edge) = (MemLog::default(), Edge::empty());
        append(&mut log, &mut edge, &entries(0, 0, n));
        PublishedLog::read(&log, &trust()).unwrap()
    }

    #[test]
    fn a_checkpoint_under_another_key_is_no_reference() {
        let (mut log, mut edge) = (MemLog::default(), Edge::empty());
        append(&mut log, &mut edge, &entries(0, 0, 3));
        let other =
            NoteSigner::from_seed("example.org/log", VerifierKind::Ed25519, [8; 32]).unwrap();
        let t = Trust::new(&other.verifier().vkey(), None).unwrap();
        let e = PublishedLog::read(&log, &t).unwrap_err();
        assert!(matches!(e, PublishedError::Log { .. }), "{e}");
        assert!(Trust::new("not a vkey", None).is_err());
    }
}
