//! A transparency log of measurements, in the formats the C2SP ecosystem speaks.
//!
//! Everything here is pure: functions of bytes and values. The file store that writes a log
//! folder crash-safely lives in the `imgctl-tlog-store` crate.
//!
//! | module | what | spec |
//! |---|---|---|
//! | [`merkle`] | leaf/node hashing, roots, inclusion and consistency proofs | RFC 6962 §2.1, edge rules of transparency-dev/merkle `proof/verify.go` |
//! | [`note`] | signed notes, Ed25519 keys, key IDs, vkeys, witness cosignatures | C2SP signed-note, tlog-cosignature |
//! | [`checkpoint`] | the checkpoint note body and its verification | C2SP tlog-checkpoint |
//! | [`tiles`] | tile paths, hash tiles, entry bundles, the right edge of a tiled tree | C2SP tlog-tiles |
//! | [`proof`] | the offline proof bundle (`.tlog-proof`) | C2SP tlog-proof |
//! | [`entry`] | imgctl's canonical log entry for an artifact | this crate (versioned) |
//!
//! A log entry's leaf hash is `SHA-256(0x00 ‖ entry bytes)`; the tree is the RFC 6962 tree over
//! the entries in append order; the log publishes signed checkpoints (origin, size, root) and
//! the tree as tiles, so any tlog-tiles client can compute proofs itself.

pub mod checkpoint;
pub mod entry;
pub mod merkle;
pub mod note;
pub mod proof;
pub mod tiles;

pub use checkpoint::Checkpoint;
pub use entry::{ArtifactKind, LogEntry};
pub use merkle::{Hash, MemTree, NodeSource};
pub use note::{NoteSigner, NoteVerifier};
pub use proof::TlogProof;
pub use tiles::{Edge, TileId};

use crate::ParseError;

/// Errors of the transparency-log code: each says what failed and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// A proof has the wrong shape for the sizes it claims (length, indices).
    #[error("invalid proof: {0}")]
    Proof(String),
    /// A recomputed root differs from the one claimed.
    #[error("{what}: computed root {computed} does not match {expected}")]
    RootMismatch {
        what: String,
        computed: String,
        expected: String,
    },
    /// A signed note, key or signature problem.
    #[error("signed note: {0}")]
    Note(String),
    /// A checkpoint body problem.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// A tile or entry bundle that is malformed or inconsistent.
    #[error("{path}: {message}")]
    Tile { path: String, message: String },
    /// A log entry that does not follow the canonical encoding.
    #[error("log entry: {0}")]
    Entry(String),
    /// The log went backwards or forked.
    #[error("log consistency: {0}")]
    Consistency(String),
    /// Whatever supplies tiles or nodes failed (missing file, HTTP error ...).
    #[error("{0}")]
    Source(String),
}

/// Standard base64 (RFC 4648 §4), which every C2SP format uses.
pub(crate) fn b64_encode(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// Strict standard base64: padding required, no whitespace, canonical trailing bits.
pub(crate) fn b64_decode(s: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).ok()
}
