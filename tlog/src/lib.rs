//! # imgctl-tlog
//!
//! A transparency log of measurements, in the formats the C2SP ecosystem speaks, and the store
//! that keeps one on disk.
//!
//! The format modules are pure (functions of bytes and values); the two modules that do I/O say
//! so: [`store`] (the crash-safe folder) and [`client`] (reading a log from a folder or over
//! HTTP).
//!
//! | module | what | spec |
//! |---|---|---|
//! | [`merkle`] | leaf/node hashing, roots, inclusion and consistency proofs | RFC 6962 §2.1, edge rules of transparency-dev/merkle `proof/verify.go` |
//! | [`note`] | signed notes, Ed25519 keys, key IDs, vkeys, witness cosignatures | C2SP signed-note, tlog-cosignature |
//! | [`policy`] | which logs and witnesses are trusted, and the quorum of cosignatures | C2SP tlog-policy |
//! | [`checkpoint`] | the checkpoint note body and its verification | C2SP tlog-checkpoint |
//! | [`tiles`] | tile paths, hash tiles, entry bundles, the right edge of a tiled tree | C2SP tlog-tiles |
//! | [`proof`] | the offline proof bundle (`.tlog-proof`) | C2SP tlog-proof |
//! | [`witness`] | the add-checkpoint request, the witness's checks and state, cosignatures | C2SP tlog-witness |
//! | [`entry`] | imgctl's canonical log entry for an artifact | this crate (versioned) |
//! | [`store`] | I/O: the log folder, appends, proofs from the folder | C2SP tlog-tiles on disk |
//! | [`client`] | I/O: tiles from a folder or over HTTP, verified reads | C2SP tlog-tiles |
//!
//! A log entry's leaf hash is `SHA-256(0x00 ‖ entry bytes)`; the tree is the RFC 6962 tree over
//! the entries in append order; the log publishes signed checkpoints (origin, size, root) and
//! the tree as tiles, so any tlog-tiles client can compute proofs itself.
//!
//! ## The store
//!
//! Folder layout:
//!
//! ```text
//! DIR/checkpoint                    signed checkpoint (the commit point)
//! DIR/tile/<L>/<N>[.p/<W>]          hash tiles
//! DIR/tile/entries/<N>[.p/<W>]      entry bundles
//! DIR/.imgctl-log/vkey              the log's verifier key
//! DIR/.imgctl-log/lock              appenders hold an exclusive flock on it
//! DIR/.imgctl-log/pending           intent of an append in progress (for cleanup)
//! ```
//!
//! Durability protocol of one (batched) append, under the lock:
//! 1. compute the new tiles and bundles from the right edge of the tree (pure);
//! 2. record the intent (old size, new size, paths to write) in `pending`;
//! 3. write every tile to a temporary name, fsync it, rename it into place; then fsync every
//!    folder that gained a name (new folders: their parents too);
//! 4. sign the new checkpoint, write it the same way, fsync `DIR`: **this rename is the commit**;
//!    entries are acknowledged only after it returns;
//! 5. delete partial tiles whose full tile now exists (the spec allows it) and the intent.
//!
//! A crash before step 4 leaves the old checkpoint, whose tiles were never touched (an append
//! only writes tiles the old tree does not have); the next appender reads the intent and
//! deletes what the dead one wrote. A crash after it leaves the new state. Either way the
//! published checkpoint and the tiles it names agree.

#![forbid(unsafe_code)]

pub mod checkpoint;
pub mod client;
pub mod entry;
pub mod merkle;
pub mod note;
pub mod policy;
pub mod proof;
pub mod store;
pub mod tiles;
pub mod witness;

pub use checkpoint::Checkpoint;
pub use entry::{ArtifactKind, Entry, LogEntry};
pub use merkle::{Hash, MemTree, NodeSource};
pub use note::{NoteSigner, NoteVerifier};
pub use policy::{Quorum, TrustPolicy};
pub use proof::TlogProof;
pub use tiles::{Edge, TileId};

pub use client::{FolderTiles, HttpTiles, TileFetch};
pub use store::{append_entries, check_writable, init, Appender, LogReader};

use imgctl_measure::ParseError;

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
    /// A trust policy file (C2SP tlog-policy) that is malformed.
    #[error("witness policy: {0}")]
    Policy(String),
    /// A tlog-witness request or response that is malformed.
    #[error("witness protocol: {0}")]
    Witness(String),
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

/// Errors of the store and the clients: I/O, HTTP, and the format errors they meet.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tlog(#[from] Error),
    #[error("{0}")]
    Log(String),
    #[error(transparent)]
    Fs(#[from] imgctl_fsio::Error),
    #[error("HTTP {url}: {message}")]
    Http { url: String, message: String },
}

pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}
